//! Ground truth: every value the fleet's nodes sampled, served over Modbus and published over
//! MQTT, so tests can prove nothing was lost, duplicated or altered between a node and a sink.
//!
//! Three logs:
//!
//! - **samples** — every sample a node took: `node,channel,seq,time_ms,value,quality`. It
//!   depends only on the scenario and the seed (time is simulated milliseconds since start,
//!   values are the f32 the node holds, printed in their shortest exact form), so the same seed
//!   gives a byte-identical log. [`GroundTruth::samples_csv`] renders it.
//! - **served** — each Modbus read that returned a channel, with the sample's seq;
//! - **published** — each MQTT telemetry message a node published, with its seq.
//!
//! The served and published logs depend on when clients poll and on the broker, so they are
//! not part of the deterministic log.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use crate::clock::SimMs;

/// One sample of one channel.
#[derive(Clone, Debug, PartialEq)]
pub struct SampleRecord {
    /// Node id.
    pub node: Arc<str>,
    /// Channel.
    pub channel: u16,
    /// The node's sample sequence number.
    pub seq: u32,
    /// Simulated ms since the scenario's start.
    pub time_ms: SimMs,
    /// The value, as the node's registers hold it.
    pub value: f32,
    /// HJ 212 flag of its quality.
    pub quality: char,
}

/// Something a transport delivered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// Node id.
    pub node: Arc<str>,
    /// The sample sequence number the delivery carried.
    pub seq: u32,
    /// Simulated ms at delivery.
    pub time_ms: SimMs,
}

#[derive(Debug, Default)]
struct Logs {
    samples: Vec<SampleRecord>,
    served: Vec<Delivery>,
    published: Vec<Delivery>,
    sample_count: u64,
}

/// The fleet's ground truth. Cheap to clone; clones share the logs.
#[derive(Clone, Debug)]
pub struct GroundTruth {
    logs: Arc<Mutex<Logs>>,
    keep_samples: bool,
}

impl GroundTruth {
    /// Ground truth that keeps every sample in memory (tests, short runs) or only counts them
    /// (benchmarks and long runs, where a 10 000-node fleet samples 60 000 values a second).
    pub fn new(keep_samples: bool) -> GroundTruth {
        GroundTruth {
            logs: Arc::default(),
            keep_samples,
        }
    }

    fn logs(&self) -> std::sync::MutexGuard<'_, Logs> {
        self.logs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records samples (one node's round).
    pub fn record_samples(&self, records: impl IntoIterator<Item = SampleRecord>) {
        let mut logs = self.logs();
        for r in records {
            logs.sample_count += 1;
            if self.keep_samples {
                logs.samples.push(r);
            }
        }
    }

    /// Records a Modbus read that returned sample `seq` of `node`.
    pub fn record_served(&self, node: Arc<str>, seq: u32, time_ms: SimMs) {
        if self.keep_samples {
            self.logs().served.push(Delivery { node, seq, time_ms });
        }
    }

    /// Records an MQTT telemetry message of sample `seq` of `node`.
    pub fn record_published(&self, node: Arc<str>, seq: u32, time_ms: SimMs) {
        if self.keep_samples {
            self.logs().published.push(Delivery { node, seq, time_ms });
        }
    }

    /// Samples taken so far (kept or not).
    pub fn sample_count(&self) -> u64 {
        self.logs().sample_count
    }

    /// The kept samples.
    pub fn samples(&self) -> Vec<SampleRecord> {
        self.logs().samples.clone()
    }

    /// The served log.
    pub fn served(&self) -> Vec<Delivery> {
        self.logs().served.clone()
    }

    /// The published log.
    pub fn published(&self) -> Vec<Delivery> {
        self.logs().published.clone()
    }

    /// The samples as CSV, sorted by time, node and channel so that the order in which the
    /// fleet happened to step its nodes does not show.
    pub fn samples_csv(&self) -> String {
        let mut samples = self.samples();
        samples
            .sort_by(|a, b| (a.time_ms, &a.node, a.channel).cmp(&(b.time_ms, &b.node, b.channel)));
        let mut out = String::from("node,channel,seq,time_ms,value,quality\n");
        let mut buf = ryu::Buffer::new();
        for s in samples {
            let _ = writeln!(
                out,
                "{},{},{},{},{},{}",
                s.node,
                s.channel,
                s.seq,
                s.time_ms,
                buf.format(s.value),
                s.quality
            );
        }
        out
    }
}
