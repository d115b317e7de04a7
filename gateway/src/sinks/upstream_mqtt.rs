//! The upstream MQTT sink: normalised readings and node status to the unified sensing
//! network's broker.
//!
//! | topic | payload | QoS, retained |
//! |---|---|---|
//! | `{prefix}/tianzhong/v1/{site}/{node}/telemetry` | [`Telemetry`]: one sample (one `seq`) of a node, every value in its canonical unit with `unit`, `quality` and `ts` written out | configured (default 1), no |
//! | `{prefix}/tianzhong/v1/{site}/{node}/alarm` | an alarm transition ([`AlarmEvent`](crate::alarm::AlarmEvent) JSON): the event stream | configured, no |
//! | `{prefix}/tianzhong/v1/{site}/{node}/alarm/ch{n}/{condition}` | the same JSON: the alarm's current state | configured, retained |
//! | `{prefix}/tianzhong/v1/{site}/{node}/status` | [`NodeStatus`](tianzhong_protocol::payload::NodeStatus) | configured, retained |
//!
//! The payloads are the protocol crate's, so the platform parses them with the same code as
//! the gateway. Every message carries the node's `seq`, so a consumer can drop a QoS 1
//! redelivery.
//!
//! rumqttc keeps unacknowledged QoS 1 messages and resends them after a reconnect; its request
//! queue is bounded, so a broker that is away holds up this sink and, through its channel, the
//! pipeline — nothing is dropped. The event loop is polled again after every error with a
//! backoff doubling from 100 ms to 10 s, which makes it reconnect.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event as MqttEvent, MqttOptions, Packet, QoS};
use tianzhong_protocol::payload::{PAYLOAD_VERSION, Telemetry, TelemetryValue};
use tianzhong_protocol::topic::{Topic, TopicKind};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::config::UpstreamMqttSink;
use crate::metrics::Metrics;
use crate::pipeline::{Acker, Delivery, Output, Record};
use crate::sources::mqtt::host_port;

/// Name of this sink in metrics and logs.
pub const SINK: &str = "upstream_mqtt";

fn qos(level: u8) -> QoS {
    match level {
        0 => QoS::AtMostOnce,
        2 => QoS::ExactlyOnce,
        _ => QoS::AtLeastOnce,
    }
}

/// The topic of `kind` for a node under `prefix`.
pub fn topic(
    prefix: &str,
    site: &tianzhong_protocol::SiteId,
    node: &tianzhong_protocol::NodeId,
    kind: TopicKind,
) -> String {
    let t = Topic::new(site.clone(), node.clone(), kind).to_heapless();
    if prefix.is_empty() {
        t.as_str().to_owned()
    } else {
        format!("{prefix}/{}", t.as_str())
    }
}

/// Groups consecutive records of the same (site, node, seq) — one poll or message — into
/// one telemetry payload each, at most 32 values (the payload's limit; more are split).
pub fn telemetry_messages(prefix: &str, records: &[Record]) -> Vec<(String, Vec<u8>)> {
    let mut groups: Vec<Vec<&Record>> = Vec::new();
    for r in records {
        match groups.last_mut() {
            Some(g)
                if g[0].site == r.site
                    && g[0].reading.node == r.reading.node
                    && g[0].reading.seq == r.reading.seq =>
            {
                g.push(r)
            }
            _ => groups.push(vec![r]),
        }
    }
    let mut out = Vec::with_capacity(groups.len());
    let mut buf = vec![0u8; 8192];
    for group in groups {
        for chunk in group.chunks(tianzhong_protocol::payload::MAX_TELEMETRY_READINGS) {
            let first = chunk[0];
            let mut t = Telemetry {
                v: PAYLOAD_VERSION,
                seq: first.reading.seq,
                ts: Some(first.reading.timestamp.millis()),
                readings: heapless::Vec::new(),
            };
            for r in chunk {
                let _ = t.readings.push(TelemetryValue {
                    ch: r.reading.channel,
                    q: r.reading.quantity,
                    value: r.reading.value,
                    unit: Some(r.reading.quantity.canonical_unit()),
                    quality: Some(r.reading.quality),
                });
            }
            match t.to_json(&mut buf) {
                Ok(n) => out.push((
                    topic(
                        prefix,
                        &first.site,
                        &first.reading.node,
                        TopicKind::Telemetry,
                    ),
                    buf[..n].to_vec(),
                )),
                Err(e) => warn!(node = %first.reading.node, "telemetry not serialisable: {e}"),
            }
        }
    }
    out
}

/// Counts the broker's acknowledgements of what the sink published, as a watermark: every
/// publish up to `acked` (numbered from 1 in the order they were made) is acknowledged.
///
/// rumqttc reports each QoS 1 publish as it goes out with its packet id, and each PUBACK with
/// the same id; publishes go out in the order they were made, and a retransmission after a
/// reconnect reuses its packet id, so the first sighting of an id numbers it. QoS 0 publishes
/// count as done once they have gone out.
#[derive(Default)]
struct Watermark {
    next: u64,
    inflight: std::collections::HashMap<u16, u64>,
    done: std::collections::BTreeSet<u64>,
    acked: u64,
}

impl Watermark {
    fn outgoing(&mut self, pkid: u16) {
        if pkid == 0 {
            self.next += 1;
            self.done.insert(self.next);
        } else if !self.inflight.contains_key(&pkid) {
            self.next += 1;
            self.inflight.insert(pkid, self.next);
            return;
        }
        self.advance();
    }

    fn puback(&mut self, pkid: u16) {
        if let Some(n) = self.inflight.remove(&pkid) {
            self.done.insert(n);
            self.advance();
        }
    }

    fn advance(&mut self) {
        while self.done.remove(&(self.acked + 1)) {
            self.acked += 1;
        }
    }
}

/// Runs the sink until its channel closes. Each outbox batch is confirmed once the broker has
/// acknowledged every message made from it (and everything published before them).
pub async fn run(
    config: UpstreamMqttSink,
    mut input: mpsc::Receiver<Delivery>,
    acker: Acker,
    metrics: Arc<Metrics>,
) {
    let (host, port) = match host_port(&config.broker) {
        Ok(hp) => hp,
        Err(e) => {
            warn!(broker = %config.broker, "upstream MQTT sink not started: {e}");
            return;
        }
    };
    let mut options = MqttOptions::new(config.client_id.clone(), host, port);
    options.set_keep_alive(Duration::from_secs(15));
    options.set_clean_session(false);
    options.set_inflight(200);
    let (client, mut eventloop) = AsyncClient::new(options, 1024);
    let broker = config.broker.clone();
    let loop_metrics = Arc::clone(&metrics);
    let (acked_tx, mut acked_rx) = tokio::sync::watch::channel(0u64);
    let driver = tokio::spawn(async move {
        let mut backoff = Duration::from_millis(100);
        let mut connected = false;
        let mut mark = Watermark::default();
        loop {
            match eventloop.poll().await {
                Ok(MqttEvent::Incoming(Packet::ConnAck(_))) => {
                    backoff = Duration::from_millis(100);
                    connected = true;
                    loop_metrics.mqtt_connected("upstream", true);
                    info!(%broker, "upstream MQTT connected");
                }
                Ok(MqttEvent::Incoming(Packet::PubAck(ack))) => {
                    loop_metrics.sink_points(SINK, "acknowledged", 1);
                    mark.puback(ack.pkid);
                    acked_tx.send_replace(mark.acked);
                }
                Ok(MqttEvent::Outgoing(rumqttc::Outgoing::Publish(pkid))) => {
                    mark.outgoing(pkid);
                    acked_tx.send_replace(mark.acked);
                }
                Ok(MqttEvent::Outgoing(rumqttc::Outgoing::Disconnect)) => break,
                Ok(_) => {}
                Err(e) => {
                    if connected {
                        warn!(%broker, "upstream MQTT disconnected: {e}; reconnecting");
                        loop_metrics.mqtt_connected("upstream", false);
                        connected = false;
                    } else {
                        tracing::debug!(%broker, "upstream MQTT cannot connect: {e}");
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
    });
    let level = qos(config.qos);
    let mut buf = vec![0u8; 512];
    // Publishes made so far, and the outbox batches waiting for their last one's PUBACK.
    let mut published = 0u64;
    let mut waiting: std::collections::VecDeque<(u64, crate::outbox::BatchId)> =
        std::collections::VecDeque::new();
    let confirm =
        |acked: u64, waiting: &mut std::collections::VecDeque<(u64, crate::outbox::BatchId)>| {
            let mut newest = None;
            while waiting.front().is_some_and(|(n, _)| *n <= acked) {
                newest = waiting.pop_front().map(|(_, b)| b);
            }
            acker.done(newest);
        };
    'outer: loop {
        let delivery = tokio::select! {
            d = input.recv() => match d {
                Some(d) => d,
                None => break,
            },
            changed = acked_rx.changed() => {
                if changed.is_err() {
                    break;
                }
                let acked = *acked_rx.borrow_and_update();
                confirm(acked, &mut waiting);
                continue;
            }
        };
        match delivery.output {
            Output::Readings(records) => {
                for (topic, payload) in telemetry_messages(&config.topic_prefix, &records) {
                    if client.publish(topic, level, false, payload).await.is_err() {
                        break 'outer;
                    }
                    published += 1;
                    metrics.sink_points(SINK, "published", 1);
                }
            }
            Output::Alarms(events) => {
                for e in events.iter() {
                    let site = e.site.clone().unwrap_or_else(|| {
                        tianzhong_protocol::SiteId::new("unknown").expect("valid id")
                    });
                    let t = &e.transition;
                    let payload = e.to_json().to_string().into_bytes();
                    let stream = topic(&config.topic_prefix, &site, &t.key.node, TopicKind::Alarm);
                    let state = format!("{stream}/{}/{}", t.key.channel, t.key.condition.key());
                    if client
                        .publish(stream, level, false, payload.clone())
                        .await
                        .is_err()
                        || client.publish(state, level, true, payload).await.is_err()
                    {
                        break 'outer;
                    }
                    published += 2;
                    metrics.sink_points(SINK, "alarm_published", 1);
                }
            }
            Output::Status(s) => match s.status.to_json(&mut buf) {
                Ok(n) => {
                    let topic = topic(&config.topic_prefix, &s.site, &s.node, TopicKind::Status);
                    if client
                        .publish(topic, level, true, buf[..n].to_vec())
                        .await
                        .is_err()
                    {
                        break;
                    }
                    published += 1;
                }
                // Confirmed all the same (below): a status that cannot be written never
                // will be, and must not hold up what follows it.
                Err(e) => {
                    metrics.sink_points(SINK, "refused", 1);
                    warn!(node = %s.node, site = %s.site, "status not publishable: {e:?}");
                }
            },
        }
        if let Some(b) = delivery.batch {
            waiting.push_back((published, b));
        }
        let acked = *acked_rx.borrow();
        confirm(acked, &mut waiting);
    }
    // Give the broker a moment to acknowledge what is in flight, so that a clean shutdown
    // does not leave it all to be replayed.
    let drain = async {
        while !waiting.is_empty() {
            if acked_rx.changed().await.is_err() {
                break;
            }
            let acked = *acked_rx.borrow_and_update();
            confirm(acked, &mut waiting);
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), drain).await;
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(5), driver).await;
    info!(broker = %config.broker, "upstream MQTT sink stopped");
}

#[cfg(test)]
mod watermark_tests {
    use super::Watermark;

    #[test]
    fn acknowledgements_out_of_order_and_retransmissions_move_the_mark_once() {
        let mut m = Watermark::default();
        for pkid in [1, 2, 3] {
            m.outgoing(pkid);
        }
        m.puback(2);
        assert_eq!(m.acked, 0, "1 is not acknowledged yet");
        m.outgoing(1); // retransmitted after a reconnect: not a new publish
        m.puback(1);
        assert_eq!(m.acked, 2);
        m.puback(1); // a duplicate PUBACK changes nothing
        m.outgoing(0); // a QoS 0 publish, done when it goes out, but after 3
        assert_eq!(m.acked, 2);
        m.puback(3);
        assert_eq!(m.acked, 4);
        m.outgoing(1); // packet id 1 reused for a new publish once acknowledged
        m.puback(1);
        assert_eq!(m.acked, 5);
    }
}
