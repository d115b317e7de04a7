//! Checking what reached the sinks against the simulator's ground truth.
//!
//! Both sinks are reduced to the same shape — per (node, channel, seq), what was stored or
//! received — and compared with the samples the fleet took:
//!
//! - **VictoriaMetrics** names each line-protocol field's series `<measurement>_<field>` with
//!   the point's tags as labels; the `value`, `quality_code` and `seq` samples of one reading
//!   share its series labels and timestamp, which is how they are joined.
//! - **Upstream MQTT** carries one telemetry message per (node, seq) under
//!   `<prefix>/tianzhong/v1/<site>/<node>/telemetry`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tianzhong_protocol::Quantity;
use tianzhong_protocol::payload::Telemetry;
use tianzhong_protocol::topic::{Topic, TopicKind};
use tianzhong_simulator::truth::SampleRecord;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::services::ExportedSeries;

/// A reading's identity: node, channel, seq.
pub type Key = (String, u16, u32);

/// One reading as a sink holds it.
#[derive(Clone, Debug, PartialEq)]
pub struct Observed {
    /// `site` tag / topic level.
    pub site: String,
    /// Measurement (quantity key).
    pub measurement: String,
    /// `unit` tag / the reading's unit symbol ("" when absent).
    pub unit: String,
    /// The value.
    pub value: f64,
    /// The HJ 212 flag, when there was one.
    pub quality: Option<char>,
    /// Timestamp, Unix ms (VictoriaMetrics) or the payload's `ts`.
    pub ts: i64,
}

/// What VictoriaMetrics holds, by reading; and series samples that could not be joined.
#[derive(Debug, Default)]
pub struct Stored {
    /// Readings by identity (more than one = a duplicate).
    pub readings: HashMap<Key, Vec<Observed>>,
    /// `<m>_value` samples without a `<m>_seq` at the same labels and time, or the like.
    pub unjoined: Vec<String>,
    /// Samples of the `_seq` series, counted.
    pub seq_samples: usize,
}

#[derive(Default)]
struct Partial {
    value: Option<f64>,
    quality_code: Option<f64>,
    seq: Option<f64>,
}

/// Joins the `value`, `quality_code` and `seq` series of a VictoriaMetrics export into
/// readings. Series of other fields (the string `quality`, which VictoriaMetrics stores as 0)
/// and of other names are ignored.
pub fn stored_readings(series: &[ExportedSeries]) -> Stored {
    let mut parts: BTreeMap<(String, String, String, String, String, i64), Partial> =
        BTreeMap::new();
    let mut out = Stored::default();
    for s in series {
        let name = s.name();
        let (measurement, field) = if let Some(m) = name.strip_suffix("_quality_code") {
            (m, 1)
        } else if let Some(m) = name.strip_suffix("_value") {
            (m, 0)
        } else if let Some(m) = name.strip_suffix("_seq") {
            (m, 2)
        } else {
            continue;
        };
        if field == 2 {
            out.seq_samples += s.values.len();
        }
        for (v, t) in s.values.iter().zip(&s.timestamps) {
            let p = parts
                .entry((
                    measurement.to_owned(),
                    s.label("node").to_owned(),
                    s.label("channel").to_owned(),
                    s.label("site").to_owned(),
                    s.label("unit").to_owned(),
                    *t,
                ))
                .or_default();
            let slot = match field {
                0 => &mut p.value,
                1 => &mut p.quality_code,
                _ => &mut p.seq,
            };
            if slot.replace(*v).is_some() {
                out.unjoined.push(format!(
                    "{name}{{node={},channel={}}} has two samples at {t}",
                    s.label("node"),
                    s.label("channel")
                ));
            }
        }
    }
    for ((measurement, node, channel, site, unit, ts), p) in parts {
        let (Some(value), Some(seq)) = (p.value, p.seq) else {
            out.unjoined.push(format!(
                "{measurement} node={node} channel={channel} at {ts}: value {:?}, seq {:?}",
                p.value, p.seq
            ));
            continue;
        };
        let Some(ch) = channel
            .strip_prefix("ch")
            .and_then(|c| c.parse::<u16>().ok())
        else {
            out.unjoined.push(format!(
                "{measurement} node={node}: channel tag {channel:?}"
            ));
            continue;
        };
        out.readings
            .entry((node, ch, seq as u32))
            .or_default()
            .push(Observed {
                site,
                measurement,
                unit,
                value,
                quality: p
                    .quality_code
                    .and_then(|c| char::from_u32(c as u32).filter(|_| c >= 0.0)),
                ts,
            });
    }
    out
}

/// A received MQTT message: topic and payload.
pub type Message = (String, Vec<u8>);

/// A subscriber on the upstream broker collecting every message under a filter.
pub struct Collector {
    messages: Arc<Mutex<Vec<Message>>>,
    task: JoinHandle<()>,
}

impl Collector {
    /// Connects to `broker`, subscribes to `filter` (QoS 1, again after every reconnect) and
    /// returns once the broker has acknowledged the subscription.
    pub async fn start(broker: SocketAddr, filter: &str) -> anyhow::Result<Collector> {
        let mut options = MqttOptions::new(
            format!("e2e-collector-{}", std::process::id()),
            broker.ip().to_string(),
            broker.port(),
        );
        options.set_keep_alive(Duration::from_secs(30));
        options.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        let messages = Arc::new(Mutex::new(Vec::new()));
        let (subscribed_tx, mut subscribed) = watch::channel(false);
        let task = {
            let messages = Arc::clone(&messages);
            let filter = filter.to_owned();
            tokio::spawn(async move {
                loop {
                    match eventloop.poll().await {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            let _ = client.try_subscribe(filter.as_str(), QoS::AtLeastOnce);
                        }
                        Ok(Event::Incoming(Packet::SubAck(_))) => {
                            let _ = subscribed_tx.send(true);
                        }
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            messages
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .push((p.topic.clone(), p.payload.to_vec()));
                        }
                        Ok(_) => {}
                        Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                    }
                }
            })
        };
        tokio::time::timeout(Duration::from_secs(30), subscribed.wait_for(|s| *s))
            .await
            .context("the upstream broker never acknowledged the collector's subscription")??;
        Ok(Collector { messages, task })
    }

    /// Every message so far: topic and payload.
    pub fn messages(&self) -> Vec<Message> {
        self.messages
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Messages so far.
    pub fn len(&self) -> usize {
        self.messages
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// Whether none has come.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The telemetry readings among `messages` published under `prefix`, by identity; and what
/// did not parse.
pub fn upstream_readings(
    prefix: &str,
    messages: &[Message],
) -> (HashMap<Key, Vec<Observed>>, Vec<String>) {
    let mut readings: HashMap<Key, Vec<Observed>> = HashMap::new();
    let mut bad = Vec::new();
    for (topic, payload) in messages {
        let Some(t) = topic
            .strip_prefix(prefix)
            .and_then(|t| t.strip_prefix('/'))
            .and_then(|t| Topic::parse(t).ok())
        else {
            bad.push(format!("topic {topic}"));
            continue;
        };
        if t.kind != TopicKind::Telemetry {
            continue;
        }
        let telemetry = match Telemetry::from_json(payload) {
            Ok(m) => m,
            Err(e) => {
                bad.push(format!(
                    "{topic}: {e}: {}",
                    String::from_utf8_lossy(payload)
                ));
                continue;
            }
        };
        for r in &telemetry.readings {
            readings
                .entry((t.node.to_string(), r.ch.0, telemetry.seq))
                .or_default()
                .push(Observed {
                    site: t.site.to_string(),
                    measurement: r.q.key().to_owned(),
                    unit: r.unit.map_or(String::new(), |u| u.symbol().to_owned()),
                    value: r.value,
                    quality: r.quality.map(|q| q.hj212_flag()),
                    ts: telemetry.ts.map_or(-1, |t| t as i64),
                });
        }
    }
    (readings, bad)
}

/// The result of comparing a sink with the ground truth.
#[derive(Debug, Default)]
pub struct Comparison {
    /// Readings the sink had to hold.
    pub required: usize,
    /// Of those, how many it holds.
    pub found: usize,
    /// Readings it holds, in all.
    pub held: usize,
    /// Required readings it lacks.
    pub missing: Vec<String>,
    /// Readings whose value, quality, unit, measurement or site differ from the truth.
    pub wrong: Vec<String>,
    /// Readings the truth does not have, or that were never served or published.
    pub invented: Vec<String>,
    /// Readings held more than once.
    pub duplicates: Vec<String>,
}

impl Comparison {
    /// A one-paragraph account with the first few problems of each kind.
    pub fn summary(&self, sink: &str) -> String {
        let mut out = format!(
            "{sink}: {}/{} required readings found, {} held; {} missing, {} wrong, {} invented, \
             {} duplicated",
            self.found,
            self.required,
            self.held,
            self.missing.len(),
            self.wrong.len(),
            self.invented.len(),
            self.duplicates.len(),
        );
        for (what, list) in [
            ("missing", &self.missing),
            ("wrong", &self.wrong),
            ("invented", &self.invented),
            ("duplicated", &self.duplicates),
        ] {
            if !list.is_empty() {
                out.push_str(&format!("\n  {what} (first of {}):", list.len()));
                for line in list.iter().take(8) {
                    out.push_str("\n    ");
                    out.push_str(line);
                }
            }
        }
        out
    }
}

/// The ground truth, indexed for comparisons.
pub struct Truth {
    /// Every sample, by identity.
    pub samples: HashMap<Key, SampleRecord>,
    /// Each node's channel quantities.
    pub quantities: HashMap<String, Vec<Quantity>>,
    /// The site of every node.
    pub site: String,
}

impl Truth {
    /// Indexes `samples`.
    pub fn new(
        samples: Vec<SampleRecord>,
        quantities: HashMap<String, Vec<Quantity>>,
        site: &str,
    ) -> Truth {
        Truth {
            samples: samples
                .into_iter()
                .map(|s| ((s.node.to_string(), s.channel, s.seq), s))
                .collect(),
            quantities,
            site: site.to_owned(),
        }
    }

    /// Every sample key of the (node, seq) pairs in `deliveries`.
    pub fn keys_of(&self, deliveries: &HashSet<(String, u32)>) -> HashSet<Key> {
        self.samples
            .keys()
            .filter(|(node, _, seq)| deliveries.contains(&(node.clone(), *seq)))
            .cloned()
            .collect()
    }

    /// Compares `held` with the truth: every key of `required` must be there; everything held
    /// must be a sample of a (node, seq) in `delivered`, with the sample's value (as f32),
    /// quality flag, the quantity's key and canonical unit and the node's site. When
    /// `unique`, a key held twice is a duplicate; otherwise copies only have to agree.
    pub fn compare(
        &self,
        held: &HashMap<Key, Vec<Observed>>,
        required: &HashSet<Key>,
        delivered: &HashSet<(String, u32)>,
        unique: bool,
    ) -> Comparison {
        let mut c = Comparison {
            required: required.len(),
            held: held.len(),
            ..Comparison::default()
        };
        for (key, observed) in held {
            let (node, ch, seq) = key;
            if unique && observed.len() > 1 {
                c.duplicates
                    .push(format!("{node} ch{ch} seq {seq}: {observed:?}"));
            }
            let Some(sample) = self.samples.get(key) else {
                c.invented.push(format!(
                    "{node} ch{ch} seq {seq}: no such sample: {observed:?}"
                ));
                continue;
            };
            if !delivered.contains(&(node.clone(), *seq)) {
                c.invented.push(format!(
                    "{node} ch{ch} seq {seq}: never served or published: {observed:?}"
                ));
            }
            let quantity = self
                .quantities
                .get(node)
                .and_then(|q| q.get(usize::from(*ch)))
                .copied();
            for o in observed {
                let mut problems = Vec::new();
                if o.value as f32 != sample.value {
                    problems.push(format!("value {} != {}", o.value, sample.value));
                }
                if o.quality != Some(sample.quality) {
                    problems.push(format!("quality {:?} != {:?}", o.quality, sample.quality));
                }
                if o.site != self.site {
                    problems.push(format!("site {:?}", o.site));
                }
                match quantity {
                    Some(q) => {
                        if o.measurement != q.key() {
                            problems.push(format!(
                                "measurement {:?} != {:?}",
                                o.measurement,
                                q.key()
                            ));
                        }
                        let unit = q.canonical_unit().symbol();
                        if o.unit != unit {
                            problems.push(format!("unit {:?} != {unit:?}", o.unit));
                        }
                    }
                    None => problems.push("no such channel".into()),
                }
                if !problems.is_empty() {
                    c.wrong.push(format!(
                        "{node} ch{ch} seq {seq}: {} ({o:?})",
                        problems.join(", ")
                    ));
                }
            }
        }
        let mut missing: Vec<&Key> = required.iter().filter(|k| !held.contains_key(*k)).collect();
        missing.sort();
        c.found = required.len() - missing.len();
        c.missing = missing
            .into_iter()
            .map(|(n, ch, seq)| {
                let t = self.samples.get(&(n.clone(), *ch, *seq)).map(|s| s.time_ms);
                format!("{n} ch{ch} seq {seq} (sampled at sim {t:?} ms)")
            })
            .collect();
        c
    }
}
