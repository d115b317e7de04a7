//! Prometheus metrics, served at `/metrics`.
//!
//! Pipeline-wide counters are plain `prometheus-client` metrics. The per-device Modbus
//! statistics are not: with 10 000 devices a `Family` per statistic would keep a label set
//! and a metric object per device and statistic (megabytes), so each device has one compact
//! row of atomics in a [`DeviceTable`], and the table renders itself as families when
//! scraped, per device and summed per bus.
//!
//! | metric | labels | what |
//! |---|---|---|
//! | `tianzhong_readings_received_total` | | readings that entered the ingestion stage |
//! | `tianzhong_readings_forwarded_total` | | readings that left it for the sinks |
//! | `tianzhong_readings_dropped_total` | `reason` | `duplicate` (same node, channel, seq) |
//! | `tianzhong_readings_flagged_total` | `reason` | `out_of_range`, `clock_skew` (kept, flagged or restamped) |
//! | `tianzhong_malformed_total` | `source`, `reason` | bad input, refused and counted |
//! | `tianzhong_mqtt_messages_total` | `kind` | messages the MQTT source took, by topic kind |
//! | `tianzhong_mqtt_connected` | `client` | 1 while connected to the broker |
//! | `tianzhong_mqtt_connects_total` | `client` | successful (re)connections |
//! | `tianzhong_alarm_transitions_total` | `state`, `level` | alarm transitions, by the state and level entered |
//! | `tianzhong_alarms_active` | `level` | alarms annunciated (active or latched), by level, refreshed each second |
//! | `tianzhong_sink_points_total` | `sink`, `result` | `written`, `rejected` (refused by the sink, counted) |
//! | `tianzhong_sink_errors_total` | `sink`, `kind` | failed attempts, by kind |
//! | `tianzhong_sink_write_seconds` | `sink` | time per write, retries included |
//! | `tianzhong_campaign_requests_refused_total` | `reason` | firmware campaign requests refused: `bad_request`, `not_found`, `conflict` |
//! | `tianzhong_campaign_nodes_total` | `kind` | campaign nodes that ended: `updated`, `failed`, `skipped` |
//! | `tianzhong_modbus_lent_requests_total` | `bus`, `result` | firmware transfer requests a serial bus carried between its polls ([`crate::sources::modbus::lend`]) |
//! | `tianzhong_modbus_requests_total` | `bus`, `device`, `unit`, `result` | `ok`, `timeout`, `exception`, `malformed`, `error` |
//! | `tianzhong_modbus_request_seconds` | `bus`, `device`, `unit` | latency of answered polls |
//! | `tianzhong_modbus_bus_requests_total` | `bus`, `result` | the same, summed per bus |
//! | `tianzhong_modbus_bus_request_seconds` | `bus` | the same, per bus |
//! | `tianzhong_modbus_device_last_seen_seconds` | `bus`, `device`, `unit` | Unix time of the last answer |
//! | `tianzhong_modbus_device_quarantined` | `bus`, `device`, `unit` | 1 while quarantined |
//! | `tianzhong_modbus_read_splits_total` | `bus`, `device`, `unit` | reads refused with "illegal data address" and split by the plan |
//! | `tianzhong_modbus_device_alarm_level` | `bus`, `device`, `unit` | the node's own highest local alarm (0–4) |

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Upper bounds of the Modbus latency buckets, in seconds: from a TCP answer on the same
/// switch to a slow RTU device at 1200 baud.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Labels of `tianzhong_malformed_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MalformedLabels {
    /// `mqtt`, `modbus`.
    pub source: String,
    /// Short reason, e.g. `json`, `topic`, `frame_crc`, `decode`.
    pub reason: String,
}

/// Labels with a `node` and a `reason`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeReasonLabels {
    /// Node id.
    pub node: String,
    /// Reason.
    pub reason: String,
}

/// Labels with one `sink`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkLabels {
    /// Sink name.
    pub sink: String,
}

/// Labels with a `sink` and a `result` or `kind`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkResultLabels {
    /// Sink name.
    pub sink: String,
    /// Result or error kind.
    pub result: String,
}

/// Labels with a `sink` and a `kind` of failure.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkKindLabels {
    /// Sink name.
    pub sink: String,
    /// Failure kind.
    pub kind: String,
}

/// Labels with a `bus` and a `result`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BusResultLabels {
    /// Bus name.
    pub bus: String,
    /// Result.
    pub result: String,
}

/// Labels with a `reason`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// Reason.
    pub reason: String,
}

/// Labels with a `kind`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// Kind.
    pub kind: String,
}

/// Labels of `tianzhong_alarm_transitions_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransitionLabels {
    /// State entered.
    pub state: String,
    /// Level entered.
    pub level: String,
}

/// Labels with a `level`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LevelLabels {
    /// Alarm level.
    pub level: String,
}

/// Labels with a `client`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClientLabels {
    /// MQTT client role, `source` or `upstream`.
    pub client: String,
}

/// Every metric of one gateway process.
pub struct Metrics {
    registry: Registry,
    /// Readings into the ingestion stage.
    pub readings_received: Counter,
    /// Readings out of it.
    pub readings_forwarded: Counter,
    /// Readings dropped, by reason.
    pub readings_dropped: Family<ReasonLabels, Counter>,
    /// Readings kept but flagged or restamped, by reason.
    pub readings_flagged: Family<ReasonLabels, Counter>,
    /// Bad input, by source and reason.
    pub malformed: Family<MalformedLabels, Counter>,
    /// MQTT messages taken, by topic kind.
    pub mqtt_messages: Family<KindLabels, Counter>,
    /// MQTT connection state per client.
    pub mqtt_connected: Family<ClientLabels, Gauge>,
    /// MQTT connections made per client.
    pub mqtt_connects: Family<ClientLabels, Counter>,
    /// Alarm transitions by state and level entered.
    pub alarm_transitions: Family<TransitionLabels, Counter>,
    /// Annunciated alarms by level.
    pub alarms_active: Family<LevelLabels, Gauge>,
    /// Points per sink and result.
    pub sink_points: Family<SinkResultLabels, Counter>,
    /// Failed sink attempts per sink and kind.
    pub sink_errors: Family<SinkKindLabels, Counter>,
    /// Time per sink write.
    pub sink_write_seconds: Family<SinkLabels, Histogram, fn() -> Histogram>,
    /// Per-device Modbus statistics.
    pub devices: std::sync::Arc<DeviceTable>,
    /// The durable outbox, as last read (bytes, batches, dead letters, readings dropped).
    pub outbox: Family<KindLabels, Gauge>,
    /// Batches each sink has yet to confirm.
    pub outbox_behind: Family<SinkLabels, Gauge>,
    /// Readings dropped when the outbox was full, per node and reason, since it was created.
    pub outbox_dropped: Family<NodeReasonLabels, Gauge>,
    /// Samples nodes made that never reached the gateway (sequence gaps), since it started.
    pub samples_missing: Gauge,
    /// Firmware campaign requests refused, by reason (`bad_request`, `not_found`, `conflict`).
    pub campaign_refused: Family<ReasonLabels, Counter>,
    /// Campaign nodes that ended, by kind (`updated`, `failed`, `skipped`).
    pub campaign_nodes: Family<KindLabels, Counter>,
    /// Requests of firmware transfers a serial bus's task carried between its polls, by bus
    /// and result (`ok`, `timeout`, `exception`, `malformed`, `error`).
    pub lent_requests: Family<BusResultLabels, Counter>,
    /// All of `malformed`, summed (not exported; for status lines and tests).
    pub malformed_sum: Counter,
    /// All of `mqtt_messages`, summed (not exported).
    pub mqtt_messages_sum: Counter,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn write_buckets() -> Histogram {
    Histogram::new([0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0])
}

impl Metrics {
    /// Metrics for a gateway polling `devices`.
    pub fn new(devices: DeviceTable) -> Metrics {
        let mut registry = Registry::with_prefix("tianzhong");
        let m = Metrics {
            readings_received: Counter::default(),
            readings_forwarded: Counter::default(),
            readings_dropped: Family::default(),
            readings_flagged: Family::default(),
            malformed: Family::default(),
            mqtt_messages: Family::default(),
            mqtt_connected: Family::default(),
            mqtt_connects: Family::default(),
            sink_points: Family::default(),
            sink_errors: Family::default(),
            alarm_transitions: Family::default(),
            alarms_active: Family::default(),
            sink_write_seconds: Family::new_with_constructor(write_buckets),
            devices: std::sync::Arc::new(devices),
            outbox: Family::default(),
            outbox_behind: Family::default(),
            outbox_dropped: Family::default(),
            samples_missing: Gauge::default(),
            campaign_refused: Family::default(),
            campaign_nodes: Family::default(),
            lent_requests: Family::default(),
            malformed_sum: Counter::default(),
            mqtt_messages_sum: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "readings_received",
            "Readings that entered the ingestion stage",
            m.readings_received.clone(),
        );
        registry.register(
            "readings_forwarded",
            "Readings that left the ingestion stage for the sinks",
            m.readings_forwarded.clone(),
        );
        registry.register(
            "readings_dropped",
            "Readings dropped by the ingestion stage, by reason",
            m.readings_dropped.clone(),
        );
        registry.register(
            "readings_flagged",
            "Readings kept but flagged or restamped, by reason",
            m.readings_flagged.clone(),
        );
        registry.register(
            "malformed",
            "Bad input refused and counted, by source and reason",
            m.malformed.clone(),
        );
        registry.register(
            "mqtt_messages",
            "MQTT messages taken by the source, by topic kind",
            m.mqtt_messages.clone(),
        );
        registry.register(
            "mqtt_connected",
            "1 while the MQTT client is connected",
            m.mqtt_connected.clone(),
        );
        registry.register(
            "mqtt_connects",
            "MQTT connections made",
            m.mqtt_connects.clone(),
        );
        registry.register(
            "alarm_transitions",
            "Alarm transitions, by the state and level entered",
            m.alarm_transitions.clone(),
        );
        registry.register(
            "alarms_active",
            "Alarms annunciated (active or latched), by level",
            m.alarms_active.clone(),
        );
        registry.register(
            "sink_points",
            "Points per sink and result",
            m.sink_points.clone(),
        );
        registry.register(
            "sink_errors",
            "Failed sink attempts, by kind",
            m.sink_errors.clone(),
        );
        registry.register(
            "sink_write_seconds",
            "Time per sink write, retries included",
            m.sink_write_seconds.clone(),
        );
        registry.register(
            "outbox",
            "The durable outbox: bytes, batches, dead_letters, dropped_readings, bound_bytes (lower than configured while the disk is short of space), commit_failures (kind)",
            m.outbox.clone(),
        );
        registry.register(
            "outbox_behind_batches",
            "Batches each sink has yet to confirm",
            m.outbox_behind.clone(),
        );
        registry.register(
            "outbox_dropped_readings",
            "Readings dropped when the outbox was full, per node and reason, since it was created",
            m.outbox_dropped.clone(),
        );
        registry.register(
            "samples_missing",
            "Samples nodes made that never reached the gateway (sequence gaps) since it started",
            m.samples_missing.clone(),
        );
        registry.register(
            "campaign_requests_refused",
            "Firmware campaign requests refused, by reason: bad_request, not_found, conflict",
            m.campaign_refused.clone(),
        );
        registry.register(
            "campaign_nodes",
            "Nodes of firmware campaigns that ended, by kind: updated, failed, skipped",
            m.campaign_nodes.clone(),
        );
        registry.register(
            "modbus_lent_requests",
            "Firmware transfer requests a serial bus carried between its polls, by bus and \
             result: ok, timeout, exception, malformed, error",
            m.lent_requests.clone(),
        );
        registry.register_collector(Box::new(std::sync::Arc::clone(&m.devices)));
        Metrics { registry, ..m }
    }

    /// Counts one piece of bad input.
    pub fn malformed(&self, source: &str, reason: &str) {
        self.malformed_sum.inc();
        self.malformed
            .get_or_create(&MalformedLabels {
                source: source.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Counts `n` points of `sink` with `result`.
    pub fn sink_points(&self, sink: &str, result: &str, n: u64) {
        self.sink_points
            .get_or_create(&SinkResultLabels {
                sink: sink.to_owned(),
                result: result.to_owned(),
            })
            .inc_by(n);
    }

    /// Counts a failed attempt of `sink`.
    pub fn sink_error(&self, sink: &str, kind: &str) {
        self.sink_errors
            .get_or_create(&SinkKindLabels {
                sink: sink.to_owned(),
                kind: kind.to_owned(),
            })
            .inc();
    }

    /// Counts alarm transitions.
    pub fn alarm_transitions(&self, events: &[crate::alarm::AlarmEvent]) {
        for e in events {
            self.alarm_transitions
                .get_or_create(&TransitionLabels {
                    state: e.transition.to.key().to_owned(),
                    level: e.transition.level.key().to_owned(),
                })
                .inc();
        }
    }

    /// Sets the annunciated alarms per level (index = level code, 0 normal … 4 red).
    pub fn alarms_active(&self, by_level: &[i64; 5]) {
        for (code, n) in by_level.iter().enumerate().skip(1) {
            let level = tianzhong_protocol::AlarmLevel::from_code(code as u16)
                .map_or("unknown", |l| l.key());
            self.alarms_active
                .get_or_create(&LevelLabels {
                    level: level.to_owned(),
                })
                .set(*n);
        }
    }

    /// The annunciated alarms at `level`, as last refreshed.
    pub fn active_alarms(&self, level: tianzhong_protocol::AlarmLevel) -> i64 {
        self.alarms_active
            .get_or_create(&LevelLabels {
                level: level.key().to_owned(),
            })
            .get()
    }

    /// Notes that a sink stopped taking batches.
    pub fn sink_gone(&self, sink: &str) {
        self.sink_error(sink, "stopped");
    }

    /// Sets the MQTT connection gauge of `client`.
    pub fn mqtt_connected(&self, client: &str, connected: bool) {
        let labels = ClientLabels {
            client: client.to_owned(),
        };
        self.mqtt_connected
            .get_or_create(&labels)
            .set(i64::from(connected));
        if connected {
            self.mqtt_connects.get_or_create(&labels).inc();
        }
    }

    /// A counter's current value, for tests and the demo's status line.
    pub fn dropped(&self, reason: &str) -> u64 {
        self.readings_dropped
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .get()
    }

    /// Renders the OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096 + 600 * self.devices.rows.len());
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// One polled device's statistics, updated by its bus task, read when scraped.
#[derive(Debug, Default)]
pub struct DeviceCounters {
    /// Answered polls.
    pub ok: AtomicU64,
    /// Polls that timed out.
    pub timeouts: AtomicU64,
    /// Polls answered with an exception.
    pub exceptions: AtomicU64,
    /// Polls answered with something that is not an answer.
    pub malformed: AtomicU64,
    /// Polls that failed on the link itself (connect refused, port gone).
    pub errors: AtomicU64,
    /// Unix ms of the last answer; 0 for never.
    pub last_seen_ms: AtomicU64,
    /// 1 while quarantined.
    pub quarantined: AtomicU64,
    /// Reads refused with "illegal data address" and split (or dropped as unreadable) by the
    /// read plan.
    pub splits: AtomicU64,
    /// The highest local alarm level a Tianzhong node reported in its status block (0
    /// normal … 4 red), as its own fail-safe alarm evaluates it.
    pub alarm_level: AtomicU64,
    /// Latency histogram: counts per bucket of [`LATENCY_BUCKETS`], then `+Inf`.
    pub latency: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    /// Sum of latencies in µs.
    pub latency_sum_us: AtomicU64,
}

impl DeviceCounters {
    /// Records an answered poll that took `latency`.
    pub fn answered(&self, latency: std::time::Duration, now_unix_ms: u64) {
        self.ok.fetch_add(1, Relaxed);
        let s = latency.as_secs_f64();
        let i = LATENCY_BUCKETS
            .iter()
            .position(|b| s <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.latency[i].fetch_add(1, Relaxed);
        self.latency_sum_us
            .fetch_add(latency.as_micros() as u64, Relaxed);
        self.last_seen_ms.store(now_unix_ms, Relaxed);
    }

    fn histogram(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(LATENCY_BUCKETS.len() + 1);
        for (i, c) in self.latency.iter().enumerate() {
            cumulative += c.load(Relaxed);
            let bound = LATENCY_BUCKETS.get(i).copied().unwrap_or(f64::INFINITY);
            buckets.push((bound, cumulative));
        }
        (
            self.latency_sum_us.load(Relaxed) as f64 / 1e6,
            cumulative,
            buckets,
        )
    }
}

/// A device row: its labels and counters.
#[derive(Debug)]
pub struct DeviceRow {
    /// Bus name.
    pub bus: String,
    /// Node id.
    pub device: String,
    /// Unit id, as its label.
    pub unit_label: String,
    /// Counters.
    pub counters: DeviceCounters,
}

/// Every polled device's row, indexed as the configuration lists devices.
#[derive(Debug, Default)]
pub struct DeviceTable {
    /// The rows.
    pub rows: Vec<DeviceRow>,
}

const RESULTS: [&str; 5] = ["ok", "timeout", "exception", "malformed", "error"];

fn results(c: &DeviceCounters) -> [u64; 5] {
    [
        c.ok.load(Relaxed),
        c.timeouts.load(Relaxed),
        c.exceptions.load(Relaxed),
        c.malformed.load(Relaxed),
        c.errors.load(Relaxed),
    ]
}

impl DeviceTable {
    /// One family with a value per device, labelled bus, device and unit.
    fn per_device(
        &self,
        encoder: &mut DescriptorEncoder<'_>,
        name: &str,
        help: &str,
        kind: MetricType,
        value: impl Fn(&DeviceCounters) -> f64,
    ) -> Result<(), fmt::Error> {
        let mut e = encoder.encode_descriptor(name, help, None, kind)?;
        for r in &self.rows {
            let labels = [
                ("bus", r.bus.as_str()),
                ("device", r.device.as_str()),
                ("unit", r.unit_label.as_str()),
            ];
            let v = value(&r.counters);
            match kind {
                MetricType::Counter => ConstCounter::new(v).encode(e.encode_family(&labels)?)?,
                _ => ConstGauge::new(v).encode(e.encode_family(&labels)?)?,
            }
        }
        Ok(())
    }
}

impl Collector for DeviceTable {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
        if self.rows.is_empty() {
            return Ok(());
        }
        {
            let mut e = encoder.encode_descriptor(
                "modbus_requests",
                "Modbus polls per device, by result",
                None,
                MetricType::Counter,
            )?;
            for r in &self.rows {
                for (result, v) in RESULTS.iter().zip(results(&r.counters)) {
                    let labels = [
                        ("bus", r.bus.as_str()),
                        ("device", r.device.as_str()),
                        ("unit", r.unit_label.as_str()),
                        ("result", result),
                    ];
                    ConstCounter::new(v).encode(e.encode_family(&labels)?)?;
                }
            }
        }
        {
            let mut e = encoder.encode_descriptor(
                "modbus_request_seconds",
                "Latency of answered Modbus polls per device",
                None,
                MetricType::Histogram,
            )?;
            for r in &self.rows {
                let labels = [
                    ("bus", r.bus.as_str()),
                    ("device", r.device.as_str()),
                    ("unit", r.unit_label.as_str()),
                ];
                let (sum, count, buckets) = r.counters.histogram();
                e.encode_family(&labels)?
                    .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
            }
        }
        self.per_device(
            &mut encoder,
            "modbus_device_last_seen_seconds",
            "Unix time of the device's last answer (0: never)",
            MetricType::Gauge,
            |c| c.last_seen_ms.load(Relaxed) as f64 / 1000.0,
        )?;
        self.per_device(
            &mut encoder,
            "modbus_device_quarantined",
            "1 while the device is quarantined for not answering",
            MetricType::Gauge,
            |c| c.quarantined.load(Relaxed) as f64,
        )?;
        self.per_device(
            &mut encoder,
            "modbus_device_alarm_level",
            "Highest local alarm level the node reports (0 normal, 1 blue, 2 yellow, 3 orange, 4 red)",
            MetricType::Gauge,
            |c| c.alarm_level.load(Relaxed) as f64,
        )?;
        self.per_device(
            &mut encoder,
            "modbus_read_splits",
            "Reads refused with illegal data address and split by the read plan",
            MetricType::Counter,
            |c| c.splits.load(Relaxed) as f64,
        )?;
        // Per bus: the devices' rows summed, in the order buses first appear.
        let mut buses: Vec<(&str, [u64; 5], DeviceCounters)> = Vec::new();
        for r in &self.rows {
            let i = match buses.iter().position(|(b, ..)| *b == r.bus) {
                Some(i) => i,
                None => {
                    buses.push((&r.bus, [0; 5], DeviceCounters::default()));
                    buses.len() - 1
                }
            };
            let (_, sums, hist) = &mut buses[i];
            for (s, v) in sums.iter_mut().zip(results(&r.counters)) {
                *s += v;
            }
            for (h, c) in hist.latency.iter().zip(&r.counters.latency) {
                h.fetch_add(c.load(Relaxed), Relaxed);
            }
            hist.latency_sum_us
                .fetch_add(r.counters.latency_sum_us.load(Relaxed), Relaxed);
        }
        {
            let mut e = encoder.encode_descriptor(
                "modbus_bus_requests",
                "Modbus polls per bus, by result",
                None,
                MetricType::Counter,
            )?;
            for (bus, sums, _) in &buses {
                for (result, v) in RESULTS.iter().zip(sums) {
                    ConstCounter::new(*v)
                        .encode(e.encode_family(&[("bus", *bus), ("result", result)])?)?;
                }
            }
        }
        let mut e = encoder.encode_descriptor(
            "modbus_bus_request_seconds",
            "Latency of answered Modbus polls per bus",
            None,
            MetricType::Histogram,
        )?;
        for (bus, _, hist) in &buses {
            let (sum, count, buckets) = hist.histogram();
            e.encode_family(&[("bus", *bus)])?
                .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
        }
        Ok(())
    }
}
