//! Per-channel calibration: `value × scale + offset` in the quantity's canonical unit, as a
//! field engineer corrects a drifting sensor against a reference gas without touching the
//! node. Uncalibrated channels pass unchanged.

use std::collections::HashMap;

use tianzhong_protocol::NodeId;
use tianzhong_protocol::reading::ChannelId;

use crate::config::Calibration;
use crate::pipeline::Record;

/// The calibrations in force.
#[derive(Debug, Default)]
pub struct Calibrations {
    by_channel: HashMap<(NodeId, ChannelId), (f64, f64)>,
}

impl Calibrations {
    /// Calibrations from the configuration.
    pub fn new(entries: &[Calibration]) -> Calibrations {
        Calibrations {
            by_channel: entries
                .iter()
                .map(|c| ((c.node.clone(), c.channel), (c.scale, c.offset)))
                .collect(),
        }
    }

    /// Applies the channel's calibration, if any.
    pub fn apply(&self, r: &mut Record) {
        if self.by_channel.is_empty() {
            return;
        }
        if let Some((scale, offset)) = self
            .by_channel
            .get(&(r.reading.node.clone(), r.reading.channel))
        {
            let v = r.reading.value * scale + offset;
            // Configuration checks scale and offset are finite; a huge value times a huge
            // scale could still overflow, and a reading is always finite.
            if v.is_finite() {
                r.reading.value = v;
            }
        }
    }
}
