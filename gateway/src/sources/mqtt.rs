//! The MQTT source: readings that nodes publish themselves, in the protocol's topic scheme.
//!
//! | topic kind | payload | becomes |
//! |---|---|---|
//! | `…/telemetry` | [`Telemetry`] JSON | records, converted to canonical units |
//! | `…/frame` | [`UplinkFrame`] (COBS, postcard, CRC-32C) | records |
//! | `…/status` | [`NodeStatus`] JSON | a status event |
//! | `…/alarm` | [`AlarmEvent`] JSON | counted (the gateway evaluates alarms itself) |
//!
//! Site and node come from the topic. Anything that does not parse — a topic outside the
//! scheme, broken JSON, an unknown payload version, a non-finite value, a frame failing its
//! CRC or naming another node than its topic — is counted in
//! `tianzhong_malformed_total{source="mqtt",reason=…}` and logged with the topic, and the
//! source goes on with the next message.
//!
//! The connection is kept forever: after any error the event loop is polled again after a
//! backoff doubling from 100 ms to 10 s, which makes rumqttc reconnect; every CONNACK
//! (re)subscribes, so a broker restarted without its session state still delivers.
//! Subscriptions are QoS 1 with a persistent session (`clean_session = false`), so a broker
//! that kept the session redelivers what arrived while the gateway was away; the
//! de-duplication transform drops what was already forwarded.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event as MqttEvent, MqttOptions, Packet, QoS};
use tianzhong_protocol::convert::ReferenceConditions;
use tianzhong_protocol::frame::UplinkFrame;
use tianzhong_protocol::payload::{AlarmEvent, NodeStatus, PayloadError, Telemetry};
use tianzhong_protocol::reading::Timestamp;
use tianzhong_protocol::topic::{Topic, TopicKind};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::MqttSource;
use crate::metrics::{KindLabels, Metrics};
use crate::pipeline::unix_ms;
use crate::pipeline::{Event, EventSender, Record, StatusEvent};

/// Splits `host:port`.
pub fn host_port(address: &str) -> Result<(String, u16), String> {
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| format!("`{address}` is not host:port"))?;
    let port = port
        .parse()
        .map_err(|_| format!("`{address}`: `{port}` is not a port"))?;
    Ok((host.trim_matches(['[', ']']).to_owned(), port))
}

/// What one message became.
#[derive(Debug, PartialEq)]
pub enum Parsed {
    /// Readings.
    Readings(Vec<Record>),
    /// A node status.
    Status(StatusEvent),
    /// Something counted and not forwarded (alarm events, commands).
    Ignored,
}

/// Why a message was refused: the metric's reason label and a description for the log.
#[derive(Debug, PartialEq, Eq)]
pub struct Refused {
    /// Short reason for the metric label.
    pub reason: &'static str,
    /// What was wrong.
    pub message: String,
}

fn refused(reason: &'static str, message: impl Into<String>) -> Refused {
    Refused {
        reason,
        message: message.into(),
    }
}

fn payload_reason(e: &PayloadError) -> &'static str {
    match e {
        PayloadError::Json(_) => "json",
        PayloadError::UnsupportedVersion(_) => "version",
        PayloadError::Conversion { .. } => "unit",
        PayloadError::NotFinite { .. } => "not_finite",
        PayloadError::BufferTooSmall => "too_large",
    }
}

/// Parses one message received at `now_ms`. Pure, so that every kind of bad input is tested
/// without a broker.
pub fn parse(topic: &str, payload: &[u8], now_ms: u64) -> Result<Parsed, Refused> {
    let t = Topic::parse(topic).map_err(|e| refused("topic", format!("{e:?}")))?;
    let conditions = ReferenceConditions::default();
    match t.kind {
        TopicKind::Telemetry => {
            let telemetry = Telemetry::from_json(payload)
                .map_err(|e| refused(payload_reason(&e), format!("telemetry: {e}")))?;
            let device_time = telemetry.ts.is_some();
            let mut records = Vec::with_capacity(telemetry.readings.len());
            for r in telemetry.readings(&t.node, Timestamp(now_ms), &conditions) {
                let reading =
                    r.map_err(|e| refused(payload_reason(&e), format!("telemetry: {e}")))?;
                records.push(Record {
                    site: t.site.clone(),
                    reading,
                    received_ms: now_ms,
                    device_time,
                });
            }
            Ok(Parsed::Readings(records))
        }
        TopicKind::Frame => {
            let frame =
                UplinkFrame::decode(payload).map_err(|e| refused("frame", format!("{e:?}")))?;
            if frame.node != t.node {
                return Err(refused(
                    "frame_node",
                    format!("frame from node {} on the topic of {}", frame.node, t.node),
                ));
            }
            let records = frame
                .readings()
                .map(|reading| Record {
                    site: t.site.clone(),
                    reading,
                    received_ms: now_ms,
                    device_time: true,
                })
                .collect();
            Ok(Parsed::Readings(records))
        }
        TopicKind::Status => {
            let status = NodeStatus::from_json(payload)
                .map_err(|e| refused(payload_reason(&e), format!("status: {e}")))?;
            Ok(Parsed::Status(StatusEvent {
                site: t.site,
                node: t.node,
                status,
            }))
        }
        TopicKind::Alarm => {
            AlarmEvent::from_json(payload)
                .map_err(|e| refused(payload_reason(&e), format!("alarm: {e}")))?;
            Ok(Parsed::Ignored)
        }
        // Commands and firmware updates are the gateway's own traffic or a flash's, not
        // readings; a source subscribed to them by a wide filter passes them by.
        TopicKind::Cmd | TopicKind::FwUpdate | TopicKind::FwStatus => Ok(Parsed::Ignored),
    }
}

fn kind_label(topic: &str) -> &'static str {
    match topic.rsplit('/').next() {
        Some("telemetry") => "telemetry",
        Some("frame") => "frame",
        Some("status") => "status",
        Some("alarm") => "alarm",
        Some("cmd") => "cmd",
        Some("fwupdate") => "fwupdate",
        Some("fwstatus") => "fwstatus",
        _ => "other",
    }
}

/// Runs the source until `shutdown` turns true or the pipeline hangs up.
pub async fn run(
    config: MqttSource,
    events: EventSender,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let (host, port) = match host_port(&config.broker) {
        Ok(hp) => hp,
        Err(e) => {
            warn!(broker = %config.broker, "MQTT source not started: {e}");
            return;
        }
    };
    let mut options = MqttOptions::new(config.client_id.clone(), host, port);
    options.set_keep_alive(Duration::from_secs(15));
    options.set_clean_session(false);
    options.set_max_packet_size(256 * 1024, 256 * 1024);
    // A message is acknowledged to the broker only once its readings are durable in the
    // outbox, so a crash before that leaves it with the broker, which delivers it again.
    options.set_manual_acks(true);
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    // Acknowledgements go out in the order the messages came (MQTT 3.1.1 section 4.6), each
    // once its receipt arrives; a message whose readings could not be stored is left
    // unacknowledged for the broker to deliver again.
    let (ack_tx, mut ack_rx) = tokio::sync::mpsc::unbounded_channel::<(
        rumqttc::Publish,
        Option<tokio::sync::oneshot::Receiver<()>>,
    )>();
    let ack_client = client.clone();
    let ack_broker = config.broker.clone();
    let acker = tokio::spawn(async move {
        while let Some((p, stored)) = ack_rx.recv().await {
            if let Some(stored) = stored
                && stored.await.is_err()
            {
                warn!(broker = %ack_broker, topic = %p.topic, "readings not stored; the message is left for the broker to deliver again");
                continue;
            }
            if ack_client.ack(&p).await.is_err() {
                break;
            }
        }
    });
    let mut backoff = Duration::from_millis(100);
    let mut connected = false;
    loop {
        let event = tokio::select! {
            e = eventloop.poll() => e,
            _ = shutdown.changed() => break,
        };
        match event {
            Ok(MqttEvent::Incoming(Packet::ConnAck(ack))) => {
                backoff = Duration::from_millis(100);
                connected = true;
                metrics.mqtt_connected("source", true);
                info!(
                    broker = %config.broker,
                    client_id = %config.client_id,
                    session_present = ack.session_present,
                    "MQTT source connected; subscribing to {:?}",
                    config.topics
                );
                for topic in &config.topics {
                    if let Err(e) = client.try_subscribe(topic.as_str(), QoS::AtLeastOnce) {
                        warn!(broker = %config.broker, %topic, "subscribe failed: {e}");
                    }
                }
            }
            Ok(MqttEvent::Incoming(Packet::Publish(p))) => {
                metrics
                    .mqtt_messages
                    .get_or_create(&KindLabels {
                        kind: kind_label(&p.topic).to_owned(),
                    })
                    .inc();
                metrics.mqtt_messages_sum.inc();
                let event = match parse(&p.topic, &p.payload, unix_ms()) {
                    Ok(Parsed::Readings(records)) if !records.is_empty() => {
                        let (receipt, stored) = tokio::sync::oneshot::channel();
                        let _ = ack_tx.send((p, Some(stored)));
                        Event::Acked(records, receipt)
                    }
                    Ok(Parsed::Status(status)) => {
                        let _ = ack_tx.send((p, None));
                        Event::Status(status)
                    }
                    Ok(_) => {
                        let _ = ack_tx.send((p, None));
                        continue;
                    }
                    Err(r) => {
                        metrics.malformed("mqtt", r.reason);
                        warn!(
                            broker = %config.broker,
                            topic = %p.topic,
                            bytes = p.payload.len(),
                            "refused MQTT message ({}): {}",
                            r.reason,
                            r.message
                        );
                        // Refused for good: acknowledged, or the broker would send it forever.
                        let _ = ack_tx.send((p, None));
                        continue;
                    }
                };
                if events.send(event).await.is_err() {
                    break;
                }
            }
            Ok(_) => {}
            Err(e) => {
                if connected {
                    warn!(broker = %config.broker, "MQTT source disconnected: {e}; reconnecting");
                    metrics.mqtt_connected("source", false);
                    connected = false;
                } else {
                    tracing::debug!(broker = %config.broker, "MQTT source cannot connect: {e}");
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => break,
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
    // What is still unacknowledged stays with the broker, which delivers it again to the
    // next session; the sinks write idempotently, so nothing is stored twice.
    drop(ack_tx);
    acker.abort();
    let _ = client.try_disconnect();
    metrics.mqtt_connected("source", false);
    info!(broker = %config.broker, "MQTT source stopped");
}
