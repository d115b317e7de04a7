//! The ingestion stage's transforms, applied in this order to every batch:
//!
//! | step | module | what |
//! |---|---|---|
//! | 1 | [`dedup`] | a reading whose (node, channel, seq) was already forwarded is dropped (counted), before any work is spent on it |
//! | 2 | [`timestamp`] | device time kept when within the allowed skew, else the gateway's time of receipt (counted) |
//! | 3 | [`calibrate`] | per-channel `value × scale + offset`, in the canonical unit |
//! | 4 | [`range`] | a value outside the quantity's valid range is kept and flagged `Uncertain(OutOfRange)` |
//!
//! Register decoding and unit normalisation happen earlier, where the bytes are understood:
//! the Modbus source decodes through the protocol crate's register map, the MQTT source
//! through its payload and frame types, and both convert to the quantity's canonical unit
//! there, so every [`Record`] entering here already holds a canonical value.

pub mod calibrate;
pub mod dedup;
pub mod range;
pub mod timestamp;

use crate::config::{Calibration, PipelineSettings};
use crate::metrics::{Metrics, ReasonLabels};
use crate::pipeline::Record;

/// The transforms of one ingestion stage.
#[derive(Debug)]
pub struct Transforms {
    timestamp: timestamp::TimestampRule,
    calibrate: calibrate::Calibrations,
    dedup: dedup::Dedup,
}

/// What one pass changed, for counting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Device timestamps replaced for skew.
    pub restamped: u64,
    /// Readings flagged out of range.
    pub out_of_range: u64,
    /// Duplicates dropped.
    pub duplicates: u64,
}

impl Transforms {
    /// Transforms configured by `settings` and `calibrations`.
    pub fn new(settings: &PipelineSettings, calibrations: &[Calibration]) -> Transforms {
        Transforms {
            timestamp: timestamp::TimestampRule::new(settings.max_skew),
            calibrate: calibrate::Calibrations::new(calibrations),
            dedup: dedup::Dedup::new(settings.dedup_window),
        }
    }

    /// Runs every step over `batch` in place and counts what changed in `metrics`.
    pub fn apply(&mut self, batch: &mut Vec<Record>, metrics: &Metrics) -> Counts {
        let mut counts = Counts::default();
        let before = batch.len();
        batch.retain(|r| self.dedup.admit(r));
        counts.duplicates = (before - batch.len()) as u64;
        for r in batch.iter_mut() {
            if self.timestamp.apply(r) {
                counts.restamped += 1;
            }
            self.calibrate.apply(r);
            if range::apply(r) {
                counts.out_of_range += 1;
            }
        }
        for (reason, n, family) in [
            ("clock_skew", counts.restamped, &metrics.readings_flagged),
            (
                "out_of_range",
                counts.out_of_range,
                &metrics.readings_flagged,
            ),
            ("duplicate", counts.duplicates, &metrics.readings_dropped),
        ] {
            if n > 0 {
                family
                    .get_or_create(&ReasonLabels {
                        reason: reason.to_owned(),
                    })
                    .inc_by(n);
            }
        }
        counts
    }
}
