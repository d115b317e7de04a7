//! Completeness accounting: for each node, what it sent, what reached the gateway, what was
//! stored, and what each sink confirmed — so "where did my data go?" has an answer.
//!
//! Nodes number their samples (`seq`, shared by the channels sampled together). The ingestion
//! stage follows each node's sequence: a jump forward by more than one is a gap (samples the
//! node made that never arrived — lost on the way, or not polled in time), a step back is a
//! duplicate or a late arrival, and a step far back a restarted node. Readings then count as
//! stored once in the outbox, and as delivered to a sink once that sink confirmed their batch
//! (see [`feed`](super::feed)), or dead-lettered when it refused them. Drops when the outbox
//! is full are counted by the outbox itself, per node ([`Outbox::drops`]).
//!
//! For one node, at any moment:
//!
//! ```text
//! samples made  ≈ samples received + missing (gaps)
//! readings stored = readings delivered to a sink + its backlog + dead-lettered + dropped when full
//! ```
//!
//! Counts are kept in memory since the gateway started; the outbox's own counts (drops, dead
//! letters, cursors) survive restarts.
//!
//! [`Outbox::drops`]: crate::outbox::Outbox::drops

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use tianzhong_protocol::NodeId;

use super::Record;

/// A step back in a node's sequence further than this is a restart, not a late sample.
pub const RESTART_DISTANCE: u32 = 1000;

/// One node's account.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct NodeAccount {
    /// The newest sample number seen.
    pub last_seq: Option<u32>,
    /// Samples received (distinct sample numbers seen in order).
    pub samples: u64,
    /// Sample numbers skipped: made by the node, never received.
    pub missing: u64,
    /// Readings of a sample that arrived after a later sample (late, or duplicated).
    pub out_of_order: u64,
    /// Times the node's numbering started again.
    pub restarts: u64,
    /// Readings that passed the transforms.
    pub readings: u64,
    /// Readings stored in the outbox.
    pub stored: u64,
    /// Readings each sink confirmed.
    pub delivered: BTreeMap<String, u64>,
    /// Readings each sink refused for good (dead letters).
    pub dead_lettered: BTreeMap<String, u64>,
}

/// Every node's account.
#[derive(Debug, Default)]
pub struct Accounts(Mutex<HashMap<NodeId, NodeAccount>>);

/// Readings per node in a batch, for counting once its fate is known.
pub type NodeCounts = Vec<(NodeId, u64)>;

/// Readings per node, in the order nodes first appear.
pub fn count_by_node(records: &[Record]) -> NodeCounts {
    let mut out: NodeCounts = Vec::new();
    for r in records {
        match out.last_mut() {
            Some((n, c)) if *n == r.reading.node => *c += 1,
            _ => match out.iter_mut().find(|(n, _)| *n == r.reading.node) {
                Some((_, c)) => *c += 1,
                None => out.push((r.reading.node.clone(), 1)),
            },
        }
    }
    out
}

impl Accounts {
    /// A batch that passed the transforms: follows each node's sequence.
    pub fn received(&self, records: &[Record]) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut current: Option<(&NodeId, &mut NodeAccount)> = None;
        for r in records {
            let node = &r.reading.node;
            let a = match current {
                Some((n, a)) if n == node => a,
                _ => map.entry(node.clone()).or_default(),
            };
            a.readings += 1;
            let seq = r.reading.seq;
            match a.last_seq {
                None => {
                    a.samples += 1;
                    a.last_seq = Some(seq);
                }
                Some(last) if seq == last => {}
                Some(last) if seq > last => {
                    a.samples += 1;
                    a.missing += u64::from(seq - last - 1);
                    a.last_seq = Some(seq);
                }
                Some(last) if last - seq > RESTART_DISTANCE => {
                    a.samples += 1;
                    a.restarts += 1;
                    a.last_seq = Some(seq);
                }
                Some(_) => a.out_of_order += 1,
            }
            current = Some((node, a));
        }
    }

    /// Readings stored in the outbox.
    pub fn stored(&self, counts: &NodeCounts) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for (node, n) in counts {
            map.entry(node.clone()).or_default().stored += n;
        }
    }

    /// Readings a sink confirmed (`delivered`) or refused for good.
    pub fn settled(&self, sink: &str, counts: &NodeCounts, delivered: bool) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for (node, n) in counts {
            let a = map.entry(node.clone()).or_default();
            let by_sink = if delivered {
                &mut a.delivered
            } else {
                &mut a.dead_lettered
            };
            *by_sink.entry(sink.to_owned()).or_default() += n;
        }
    }

    /// A copy of every account, by node.
    pub fn snapshot(&self) -> BTreeMap<NodeId, NodeAccount> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Samples missing over every node.
    pub fn missing_total(&self) -> u64 {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|a| a.missing)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tianzhong_protocol::{ChannelId, Quality, Quantity, Reading, SiteId, Timestamp};

    fn sample(node: &str, seq: u32, channels: u16) -> Vec<Record> {
        (0..channels)
            .map(|ch| Record {
                site: SiteId::new("s").unwrap(),
                reading: Reading::new(
                    NodeId::new(node).unwrap(),
                    ChannelId(ch),
                    Quantity::Methane,
                    0.5,
                    Timestamp(u64::from(seq) * 1000),
                    seq,
                    Quality::Good,
                )
                .unwrap(),
                received_ms: 0,
                device_time: false,
            })
            .collect()
    }

    #[test]
    fn gaps_late_samples_and_restarts_are_told_apart() {
        let acc = Accounts::default();
        for seq in [1, 2, 5, 4, 6, 6, 9000, 3] {
            acc.received(&sample("m-1", seq, 2));
        }
        let a = &acc.snapshot()[&NodeId::new("m-1").unwrap()];
        // 1 2 [3 4 missing] 5, 4 late, 6, 6 again, [7..8999 missing] 9000, 3 restart.
        assert_eq!(a.samples, 6);
        assert_eq!(a.missing, 2 + 8993);
        assert_eq!(a.out_of_order, 2);
        assert_eq!(a.restarts, 1);
        assert_eq!(a.readings, 16);
        assert_eq!(a.last_seq, Some(3));
        let batch: Vec<Record> = [sample("a", 1, 2), sample("b", 1, 1), sample("a", 2, 1)].concat();
        let counts = count_by_node(&batch);
        assert_eq!(
            counts,
            vec![
                (NodeId::new("a").unwrap(), 3),
                (NodeId::new("b").unwrap(), 1)
            ]
        );
        acc.stored(&counts);
        acc.settled("influxdb", &counts, true);
        acc.settled("upstream_mqtt", &counts[..1].to_vec(), false);
        let a = &acc.snapshot()[&NodeId::new("a").unwrap()];
        assert_eq!(
            (
                a.stored,
                a.delivered["influxdb"],
                a.dead_lettered["upstream_mqtt"]
            ),
            (3, 3, 3)
        );
    }
}
