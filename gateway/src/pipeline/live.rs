//! The live view: each channel's latest reading, for the console's overview and node pages,
//! and every ingested batch for live subscribers (the API's server-sent events).
//!
//! Updated by the ingestion stage once per batch under one write lock; a batch is one poll or
//! one message, so it is nearly always one node, whose entry is looked up once per run of
//! readings rather than per reading. Readers take the read lock for one snapshot.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use tianzhong_protocol::{NodeId, SiteId};
use tokio::sync::broadcast;

use super::Record;

/// A subscriber that falls this many batches behind misses the oldest and is told so.
pub const READINGS_CAPACITY: usize = 1024;

/// What the gateway has last heard from one node.
#[derive(Clone, Debug)]
pub struct NodeLatest {
    /// Its site.
    pub site: SiteId,
    /// Gateway time of its latest reading, ms since the Unix epoch.
    pub last_seen_ms: u64,
    /// The latest reading of each channel, by channel number.
    pub channels: BTreeMap<u16, Record>,
}

/// The latest reading of every channel, and the stream of batches.
#[derive(Debug)]
pub struct LiveView {
    nodes: RwLock<HashMap<NodeId, NodeLatest>>,
    readings: broadcast::Sender<Arc<[Record]>>,
}

impl Default for LiveView {
    fn default() -> Self {
        LiveView {
            nodes: RwLock::new(HashMap::new()),
            readings: broadcast::channel(READINGS_CAPACITY).0,
        }
    }
}

impl LiveView {
    /// Takes a batch that passed the transforms.
    pub fn update(&self, batch: &Arc<[Record]>) {
        {
            let mut nodes = self.nodes.write().unwrap_or_else(|e| e.into_inner());
            let mut current: Option<(&NodeId, &mut NodeLatest)> = None;
            for r in batch.iter() {
                let node = &r.reading.node;
                let entry = match current {
                    Some((id, entry)) if id == node => entry,
                    _ => nodes.entry(node.clone()).or_insert_with(|| NodeLatest {
                        site: r.site.clone(),
                        last_seen_ms: 0,
                        channels: BTreeMap::new(),
                    }),
                };
                entry.site.clone_from(&r.site);
                entry.last_seen_ms = entry.last_seen_ms.max(r.received_ms);
                // A replayed or late reading must not hide a newer one.
                match entry.channels.get_mut(&r.reading.channel.0) {
                    Some(old) if old.reading.timestamp > r.reading.timestamp => {}
                    Some(old) => old.clone_from(r),
                    None => {
                        entry.channels.insert(r.reading.channel.0, r.clone());
                    }
                }
                current = Some((node, entry));
            }
        }
        if self.readings.receiver_count() > 0 {
            let _ = self.readings.send(Arc::clone(batch));
        }
    }

    /// A copy of one node's latest readings.
    pub fn node(&self, node: &NodeId) -> Option<NodeLatest> {
        self.nodes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(node)
            .cloned()
    }

    /// A copy of every node's latest readings.
    pub fn snapshot(&self) -> Vec<(NodeId, NodeLatest)> {
        self.nodes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Batches as they are ingested.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<[Record]>> {
        self.readings.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tianzhong_protocol::{ChannelId, Quality, Quantity, Reading, Timestamp};

    fn record(node: &str, ch: u16, value: f64, ts: u64) -> Record {
        Record {
            site: SiteId::new("plant-a").unwrap(),
            reading: Reading::new(
                NodeId::new(node).unwrap(),
                ChannelId(ch),
                Quantity::CombustibleGas,
                value,
                Timestamp(ts),
                1,
                Quality::Good,
            )
            .unwrap(),
            received_ms: ts,
            device_time: false,
        }
    }

    #[test]
    fn keeps_the_newest_reading_per_channel_across_interleaved_nodes() {
        let live = LiveView::default();
        let mut rx = live.subscribe();
        let batch: Arc<[Record]> = vec![
            record("a", 0, 1.0, 10),
            record("b", 0, 2.0, 10),
            record("a", 1, 3.0, 10),
            record("a", 0, 4.0, 20),
        ]
        .into();
        live.update(&batch);
        // An older reading arriving late (a replay) leaves the newer one in place.
        live.update(&vec![record("a", 0, 9.0, 15)].into());
        let a = live.node(&NodeId::new("a").unwrap()).unwrap();
        assert_eq!(a.channels[&0].reading.value, 4.0);
        assert_eq!(a.channels[&1].reading.value, 3.0);
        assert_eq!(a.last_seen_ms, 20);
        assert_eq!(live.snapshot().len(), 2);
        assert_eq!(rx.try_recv().unwrap().len(), 4);
        assert_eq!(rx.try_recv().unwrap().len(), 1);
    }
}
