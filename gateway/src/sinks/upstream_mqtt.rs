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
use crate::pipeline::{Output, Record};
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

/// Runs the sink until its channel closes.
pub async fn run(
    config: UpstreamMqttSink,
    mut input: mpsc::Receiver<Output>,
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
    let driver = tokio::spawn(async move {
        let mut backoff = Duration::from_millis(100);
        let mut connected = false;
        loop {
            match eventloop.poll().await {
                Ok(MqttEvent::Incoming(Packet::ConnAck(_))) => {
                    backoff = Duration::from_millis(100);
                    connected = true;
                    loop_metrics.mqtt_connected("upstream", true);
                    info!(%broker, "upstream MQTT connected");
                }
                Ok(MqttEvent::Incoming(Packet::PubAck(_))) => {
                    loop_metrics.sink_points(SINK, "acknowledged", 1);
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
    'outer: while let Some(output) = input.recv().await {
        match output {
            Output::Readings(records) => {
                for (topic, payload) in telemetry_messages(&config.topic_prefix, &records) {
                    if client.publish(topic, level, false, payload).await.is_err() {
                        break 'outer;
                    }
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
                    metrics.sink_points(SINK, "alarm_published", 1);
                }
            }
            Output::Status(s) => {
                let Ok(n) = s.status.to_json(&mut buf) else {
                    continue;
                };
                let topic = topic(&config.topic_prefix, &s.site, &s.node, TopicKind::Status);
                if client
                    .publish(topic, level, true, buf[..n].to_vec())
                    .await
                    .is_err()
                {
                    break;
                }
            }
        }
    }
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(5), driver).await;
    info!(broker = %config.broker, "upstream MQTT sink stopped");
}
