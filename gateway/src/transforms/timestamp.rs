//! Which clock a reading's time comes from.
//!
//! A node with a clock stamps its samples; a node without one (and every Modbus read) gets
//! the gateway's time of receipt. Node clocks drift and reset to 1970 or 2000 after a flat
//! backup battery, and one such node would write its readings decades away from their
//! neighbours in the database. So a device time more than `max_skew` from the gateway's
//! time of receipt is not trusted: the reading is restamped with the receipt time and the
//! restamp is counted (`tianzhong_readings_flagged_total{reason="clock_skew"}`), and logged
//! once per node until its clock comes back within bounds. The value and quality are kept:
//! the measurement is fine, only its clock is not.
//!
//! Readings a node buffered while its link was down legitimately arrive late; `max_skew`
//! must therefore cover the longest buffering a deployment expects (default 5 min).

use std::collections::HashSet;
use std::time::Duration;

use tianzhong_protocol::{NodeId, Timestamp};
use tracing::warn;

use crate::pipeline::Record;

/// The rule and the nodes currently restamped.
#[derive(Debug)]
pub struct TimestampRule {
    max_skew_ms: u64,
    skewed: HashSet<NodeId>,
}

impl TimestampRule {
    /// A rule trusting device clocks within `max_skew` of the gateway's.
    pub fn new(max_skew: Duration) -> TimestampRule {
        TimestampRule {
            max_skew_ms: max_skew.as_millis() as u64,
            skewed: HashSet::new(),
        }
    }

    /// Applies the rule to `r`; true when it was restamped.
    pub fn apply(&mut self, r: &mut Record) -> bool {
        if !r.device_time {
            return false;
        }
        let device = r.reading.timestamp.0;
        if device.abs_diff(r.received_ms) <= self.max_skew_ms {
            if !self.skewed.is_empty() {
                self.skewed.remove(&r.reading.node);
            }
            return false;
        }
        if self.skewed.insert(r.reading.node.clone()) {
            warn!(
                node = %r.reading.node,
                site = %r.site,
                device_ms = device,
                gateway_ms = r.received_ms,
                skew_s = (device as i64 - r.received_ms as i64) / 1000,
                "node clock is off by more than {} s; its readings get the gateway's time",
                self.max_skew_ms / 1000
            );
        }
        r.reading.timestamp = Timestamp(r.received_ms);
        r.device_time = false;
        true
    }
}
