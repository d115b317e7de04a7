//! Faults a scenario schedules or a test switches at run time.
//!
//! A fault targets a node or a whole bus, and is active over a window of simulated time (or
//! until cleared). Transports and nodes ask the [`FaultBoard`] which faults apply to them now.

use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

use crate::clock::SimMs;

/// What goes wrong.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Fault {
    /// Requests are read and never answered.
    NoReply,
    /// Replies are sent after a delay (real milliseconds).
    SlowReply {
        /// Delay in real milliseconds.
        delay_ms: u64,
    },
    /// Every request is answered with this Modbus exception code (02, 04, 06, …).
    Exception {
        /// The exception code.
        code: u8,
    },
    /// Replies carry a wrong CRC (RTU) — for TCP, which has no CRC, a wrong MBAP length.
    WrongCrc,
    /// Replies are cut short.
    Truncated,
    /// Replies are random bytes.
    Garbage,
    /// Replies come from another unit ID.
    WrongUnit,
    /// The connection is closed when a request arrives (TCP and MQTT).
    DropConnection,
    /// A channel's value stops changing.
    StuckValue {
        /// The channel; all channels when absent.
        #[serde(default)]
        channel: Option<u16>,
    },
    /// A channel reads an out-of-range spike.
    Spike {
        /// The channel.
        channel: u16,
        /// The value presented to the sensor while the fault is active.
        value: f64,
    },
    /// A channel's sensor fails (bus NACK, ADC at a rail): the node flags it.
    SensorFault {
        /// The channel; all channels when absent.
        #[serde(default)]
        channel: Option<u16>,
    },
    /// The node's clock is off by this much (its MQTT timestamps).
    ClockSkew {
        /// Offset in milliseconds, positive = ahead.
        offset_ms: i64,
    },
    /// The node's MQTT connection drops and stays down while the fault is active.
    MqttDisconnect,
    /// The node publishes malformed payloads instead of telemetry.
    MalformedPayload,
    /// A firmware update fails at the finish: a flash cell of the update slot flips a bit of
    /// the received image, so the node's own check (SHA-256 over the slot) refuses it with
    /// reason 4, and the node keeps running its image.
    UpdateDamaged,
    /// A firmware update never completes: the node loses power at the first flash write of
    /// chunk 8 (or the next chunk after it) every time, resets, and keeps its old image.
    UpdatePowerCut,
    /// A firmware update rolls back: the node stages the image and resets into it on trial,
    /// but the new image crashes before its health check; after the boot policy's trial
    /// attempts the bootloader reverts to the old image, which the node then reports.
    UpdateRollback,
}

impl Fault {
    /// Whether this fault is one of the firmware-update failures (which the node applies to
    /// file-record requests, not the transport to every reply).
    pub fn is_update_failure(&self) -> bool {
        matches!(
            self,
            Fault::UpdateDamaged | Fault::UpdatePowerCut | Fault::UpdateRollback
        )
    }
}

/// Update failures for a deterministic choice of `fraction` of `nodes` (rounded to the nearest
/// whole node), the same for the same `seed`: each chosen node gets `kinds[i % kinds.len()]`
/// in the order chosen, for ever from time 0. Returns the faults; the chosen nodes are their
/// targets. Nodes listed in `exempt` are never chosen (a test keeps its canaries healthy so).
pub fn update_failures(
    seed: u64,
    nodes: &[String],
    fraction: f64,
    kinds: &[Fault],
    exempt: &[String],
) -> Vec<ScheduledFault> {
    let mut pool: Vec<&String> = nodes.iter().filter(|n| !exempt.contains(n)).collect();
    let want = ((nodes.len() as f64 * fraction.clamp(0.0, 1.0)).round() as usize).min(pool.len());
    // A seeded Fisher-Yates shuffle (splitmix64): no dependency on a random crate's stream
    // staying the same between versions.
    let mut state = seed;
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    for i in (1..pool.len()).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        pool.swap(i, j);
    }
    let kinds = if kinds.is_empty() {
        &[Fault::UpdateDamaged][..]
    } else {
        kinds
    };
    pool.into_iter()
        .take(want)
        .enumerate()
        .map(|(i, node)| ScheduledFault {
            fault: kinds[i % kinds.len()].clone(),
            target: Target::Node(node.clone()),
            from_ms: 0,
            until_ms: None,
        })
        .collect()
}

/// What a fault applies to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// One node, by id.
    Node(String),
    /// Every node on a bus, by bus name.
    Bus(String),
}

/// A fault over a window of simulated time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScheduledFault {
    /// What goes wrong.
    pub fault: Fault,
    /// To what.
    pub target: Target,
    /// From this simulated time on.
    pub from_ms: SimMs,
    /// Until this simulated time (exclusive); for ever when absent.
    pub until_ms: Option<SimMs>,
}

impl ScheduledFault {
    fn applies(&self, node: &str, bus: &str, now: SimMs) -> bool {
        let target = match &self.target {
            Target::Node(n) => n == node,
            Target::Bus(b) => b == bus,
        };
        target && now >= self.from_ms && self.until_ms.is_none_or(|u| now < u)
    }
}

/// The faults in force, shared by the fleet, its transports and the control interface.
#[derive(Clone, Debug, Default)]
pub struct FaultBoard {
    faults: Arc<RwLock<Vec<(u64, ScheduledFault)>>>,
    next_id: Arc<std::sync::atomic::AtomicU64>,
}

impl FaultBoard {
    /// Adds a fault; returns its id for [`FaultBoard::clear`].
    pub fn add(&self, fault: ScheduledFault) -> u64 {
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.faults
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push((id, fault));
        id
    }

    /// Removes a fault; false when there is none with this id.
    pub fn clear(&self, id: u64) -> bool {
        let mut faults = self.faults.write().unwrap_or_else(|e| e.into_inner());
        let before = faults.len();
        faults.retain(|(i, _)| *i != id);
        faults.len() != before
    }

    /// Removes every fault.
    pub fn clear_all(&self) {
        self.faults
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Every fault, with its id.
    pub fn list(&self) -> Vec<(u64, ScheduledFault)> {
        self.faults
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The faults that apply to `node` on `bus` at `now`, in the order they were added.
    pub fn active(&self, node: &str, bus: &str, now: SimMs) -> Vec<Fault> {
        self.faults
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(_, f)| f.applies(node, bus, now))
            .map(|(_, f)| f.fault.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_failures_are_a_seeded_choice() {
        let nodes: Vec<String> = (0..100).map(|i| format!("n{i:03}")).collect();
        let exempt: Vec<String> = nodes[..5].to_vec();
        let kinds = [Fault::UpdateDamaged, Fault::UpdateRollback];
        let a = update_failures(7, &nodes, 0.05, &kinds, &exempt);
        assert_eq!(a, update_failures(7, &nodes, 0.05, &kinds, &exempt));
        assert_eq!(a.len(), 5);
        assert_ne!(a, update_failures(8, &nodes, 0.05, &kinds, &exempt));
        let mut targets: Vec<&Target> = a.iter().map(|f| &f.target).collect();
        targets.dedup();
        assert_eq!(targets.len(), 5);
        for f in &a {
            let Target::Node(n) = &f.target else {
                panic!("a node")
            };
            assert!(!exempt.contains(n), "{n} is exempt");
            assert!(f.fault.is_update_failure());
        }
        assert_eq!(a[0].fault, Fault::UpdateDamaged);
        assert_eq!(a[1].fault, Fault::UpdateRollback);
        assert!(update_failures(7, &nodes, 0.0, &kinds, &[]).is_empty());
    }

    #[test]
    fn faults_apply_to_their_target_and_window() {
        let board = FaultBoard::default();
        let id = board.add(ScheduledFault {
            fault: Fault::NoReply,
            target: Target::Bus("bus-1".into()),
            from_ms: 1000,
            until_ms: Some(2000),
        });
        board.add(ScheduledFault {
            fault: Fault::Exception { code: 4 },
            target: Target::Node("n2".into()),
            from_ms: 0,
            until_ms: None,
        });
        assert!(board.active("n1", "bus-1", 999).is_empty());
        assert_eq!(board.active("n1", "bus-1", 1000), [Fault::NoReply]);
        assert!(board.active("n1", "bus-2", 1500).is_empty());
        assert_eq!(
            board.active("n2", "bus-1", 1500),
            [Fault::NoReply, Fault::Exception { code: 4 }]
        );
        assert!(board.active("n1", "bus-1", 2000).is_empty());
        assert!(board.clear(id));
        assert!(!board.clear(id));
        assert_eq!(
            board.active("n2", "bus-1", 1500),
            [Fault::Exception { code: 4 }]
        );
    }
}
