//! A tipping-bucket rain gauge on a hardware [`PulseCounter`]: each tip of the bucket closes a
//! reed switch once and stands for a fixed depth of rain.
//!
//! Chinese tipping-bucket rain sensors (GB/T 21978.2-2014, "Instrument for precipitation
//! observation — Part 2: Tipping bucket rainfall sensor", which replaced GB/T 11832-2002) are
//! built for 0.1, 0.2 or 0.5 mm per tip; with the standard 200 mm orifice those are buckets of
//! 3.14, 6.28 and 15.7 mL. The depth per tip is configurable, with those three as constants.
//!
//! Each [`RainGauge::read`] reports the rain since the previous read and its mean intensity over
//! that interval. The counter is free-running and wraps at 2^32; tips are the wrapping
//! difference of two counts, which is right as long as fewer than 2^32 tips fall between reads
//! (at 0.1 mm per tip, 429 km of rain). The first read only records the baseline: what the
//! counter held before is rain of unknown time.

use core::fmt;

use crate::hal::PulseCounter;

/// 0.1 mm per tip.
pub const MM_PER_TIP_0_1: f32 = 0.1;
/// 0.2 mm per tip, the most common resolution of meteorological and hydrological gauges.
pub const MM_PER_TIP_0_2: f32 = 0.2;
/// 0.5 mm per tip.
pub const MM_PER_TIP_0_5: f32 = 0.5;

const MS_PER_HOUR: f64 = 3_600_000.0;

/// Rain over one interval between two reads.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rainfall {
    /// Bucket tips counted.
    pub tips: u32,
    /// Rain depth in mm.
    pub amount_mm: f32,
    /// Mean intensity over the interval in mm/h.
    pub intensity_mm_per_h: f32,
    /// Length of the interval in ms.
    pub interval_ms: u64,
}

/// Why a rain gauge read failed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Error<E> {
    /// The pulse counter could not be read.
    Counter(E),
    /// The caller's clock did not advance since the previous read: no intensity can be given.
    /// The baseline is kept, so no tips are lost.
    ZeroInterval,
    /// The caller's clock went backwards (it must be monotonic). The baseline is kept; call
    /// [`RainGauge::reset`] if the clock was restarted on purpose.
    ClockWentBackwards {
        /// Time of the previous read.
        previous_ms: u64,
        /// Time passed now.
        now_ms: u64,
    },
    /// The depth per tip is not positive and finite.
    InvalidConfig(&'static str),
}

impl<E: fmt::Debug> fmt::Display for Error<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Counter(err) => write!(f, "rain gauge: counter error: {err:?}"),
            Error::ZeroInterval => f.write_str("rain gauge: read twice at the same time"),
            Error::ClockWentBackwards {
                previous_ms,
                now_ms,
            } => write!(
                f,
                "rain gauge: clock went backwards from {previous_ms} ms to {now_ms} ms"
            ),
            Error::InvalidConfig(why) => write!(f, "rain gauge: invalid configuration: {why}"),
        }
    }
}

impl<E: fmt::Debug> core::error::Error for Error<E> {}

#[derive(Clone, Copy, Debug)]
struct Baseline {
    count: u32,
    at_ms: u64,
}

/// A tipping-bucket rain gauge.
pub struct RainGauge<P> {
    counter: P,
    mm_per_tip: f32,
    baseline: Option<Baseline>,
}

impl<P: PulseCounter> RainGauge<P> {
    /// A gauge on `counter` whose bucket tips every `mm_per_tip` mm of rain.
    pub fn new(counter: P, mm_per_tip: f32) -> Result<Self, Error<P::Error>> {
        if !(mm_per_tip.is_finite() && mm_per_tip > 0.0) {
            return Err(Error::InvalidConfig(
                "mm per tip must be positive and finite",
            ));
        }
        Ok(RainGauge {
            counter,
            mm_per_tip,
            baseline: None,
        })
    }

    /// The configured depth per tip in mm.
    pub fn mm_per_tip(&self) -> f32 {
        self.mm_per_tip
    }

    /// Forgets the baseline; the next read establishes a new one.
    pub fn reset(&mut self) {
        self.baseline = None;
    }

    /// Gives the counter back.
    pub fn release(self) -> P {
        self.counter
    }

    /// Rain since the previous read, at `now_ms` on the caller's monotonic clock. `Ok(None)` on
    /// the first read (or the first after [`reset`](Self::reset)), which sets the baseline.
    pub fn read(&mut self, now_ms: u64) -> Result<Option<Rainfall>, Error<P::Error>> {
        let count = self.counter.count().map_err(Error::Counter)?;
        let Some(baseline) = self.baseline else {
            self.baseline = Some(Baseline {
                count,
                at_ms: now_ms,
            });
            return Ok(None);
        };
        if now_ms < baseline.at_ms {
            return Err(Error::ClockWentBackwards {
                previous_ms: baseline.at_ms,
                now_ms,
            });
        }
        let interval_ms = now_ms - baseline.at_ms;
        if interval_ms == 0 {
            return Err(Error::ZeroInterval);
        }
        let tips = count.wrapping_sub(baseline.count);
        self.baseline = Some(Baseline {
            count,
            at_ms: now_ms,
        });
        // f64 for the products: tips up to 2^32 and intervals of days do not fit an f32
        // mantissa, and f32 only at the end.
        let amount_mm = f64::from(tips) * f64::from(self.mm_per_tip);
        let intensity_mm_per_h = amount_mm * MS_PER_HOUR / interval_ms as f64;
        Ok(Some(Rainfall {
            tips,
            amount_mm: amount_mm as f32,
            intensity_mm_per_h: intensity_mm_per_h as f32,
            interval_ms,
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::vec::Vec;

    use super::*;

    /// A counter returning queued counts; `Err(())` once the queue is empty.
    struct FakeCounter {
        queue: Vec<u32>,
    }

    impl FakeCounter {
        fn new(counts: &[u32]) -> Self {
            let mut queue = counts.to_vec();
            queue.reverse();
            FakeCounter { queue }
        }
    }

    impl PulseCounter for FakeCounter {
        type Error = ();
        fn count(&mut self) -> Result<u32, ()> {
            self.queue.pop().ok_or(())
        }
    }

    fn approx(actual: f32, expected: f32) {
        assert!(
            (actual - expected).abs() < 1e-4,
            "{actual} is not {expected}"
        );
    }

    // The tip volumes behind GB/T 21978.2's resolutions: a 200 mm orifice collects
    // π · 100² mm² = 31 415.9 mm² of rain, so 0.1 / 0.2 / 0.5 mm are 3.14 / 6.28 / 15.7 mL,
    // i.e. 3140 / 6280 / 15 700 mm³ to the three figures the hydrology literature quotes for
    // these buckets.
    #[test]
    fn standard_resolutions_match_their_bucket_volumes() {
        let orifice_mm2 = core::f32::consts::PI * 100.0 * 100.0;
        for (mm, quoted_mm3) in [
            (MM_PER_TIP_0_1, 3_140.0),
            (MM_PER_TIP_0_2, 6_280.0),
            (MM_PER_TIP_0_5, 15_700.0),
        ] {
            let volume_mm3: f32 = mm * orifice_mm2;
            assert!((volume_mm3 - quoted_mm3).abs() < 10.0, "{mm} mm");
        }
    }

    // Module contract: the first read is the baseline only, since counts before it are rain of
    // unknown time; afterwards a dry interval is 0 tips, 0 mm, 0 mm/h.
    #[test]
    fn the_first_read_sets_the_baseline() {
        let mut gauge = RainGauge::new(FakeCounter::new(&[1234, 1234]), MM_PER_TIP_0_2).unwrap();
        assert_eq!(gauge.read(0).unwrap(), None);
        let dry = gauge.read(60_000).unwrap().unwrap();
        assert_eq!(dry.tips, 0);
        assert_eq!(dry.amount_mm, 0.0);
        assert_eq!(dry.intensity_mm_per_h, 0.0);
    }

    // GB/T 21978.2 0.2 mm resolution, amount = tips × depth and mean intensity over the
    // interval. 15 tips in 10 minutes: 3.0 mm, and 3.0 mm × 60 / 10 = 18 mm/h.
    #[test]
    fn amount_and_intensity_over_the_interval() {
        let mut gauge = RainGauge::new(FakeCounter::new(&[100, 115]), MM_PER_TIP_0_2).unwrap();
        assert_eq!(gauge.read(1_000).unwrap(), None);
        let rain = gauge.read(601_000).unwrap().unwrap();
        assert_eq!(rain.tips, 15);
        assert_eq!(rain.interval_ms, 600_000);
        approx(rain.amount_mm, 3.0);
        approx(rain.intensity_mm_per_h, 18.0);
    }

    // GB/T 21978.2 0.5 mm resolution; each read covers only the rain since the previous one: 4 tips in
    // 30 minutes is 2 mm, 4 mm/h; then 1 tip in 6 minutes is 0.5 mm, 5 mm/h.
    #[test]
    fn consecutive_reads_cover_consecutive_intervals() {
        let mut gauge = RainGauge::new(FakeCounter::new(&[0, 4, 5]), MM_PER_TIP_0_5).unwrap();
        gauge.read(0).unwrap();
        let first = gauge.read(1_800_000).unwrap().unwrap();
        approx(first.amount_mm, 2.0);
        approx(first.intensity_mm_per_h, 4.0);
        let second = gauge.read(2_160_000).unwrap().unwrap();
        assert_eq!(second.tips, 1);
        approx(second.amount_mm, 0.5);
        approx(second.intensity_mm_per_h, 5.0);
    }

    // `PulseCounter` (crate::hal): "It wraps at 2^32". From 0xFFFF_FFFE to 3 is 2 tips to the wrap and 3 after it,
    // 5 tips; at 0.1 mm that is 0.5 mm, in 1 minute 30 mm/h.
    #[test]
    fn counter_wrap_around_at_2_pow_32() {
        let mut gauge =
            RainGauge::new(FakeCounter::new(&[0xFFFF_FFFE, 3]), MM_PER_TIP_0_1).unwrap();
        gauge.read(5_000).unwrap();
        let rain = gauge.read(65_000).unwrap().unwrap();
        assert_eq!(rain.tips, 5);
        approx(rain.amount_mm, 0.5);
        approx(rain.intensity_mm_per_h, 30.0);
    }

    // Module contract (the caller passes monotonic ms): a clock that stands still or goes
    // backwards gives no intensity; the baseline stays, so
    // the tips are reported by the next good read: 3 tips × 0.2 mm over the full 2 minutes is
    // 0.6 mm, 18 mm/h.
    #[test]
    fn a_non_monotonic_clock_is_an_error_and_loses_no_tips() {
        let mut gauge =
            RainGauge::new(FakeCounter::new(&[10, 12, 12, 13]), MM_PER_TIP_0_2).unwrap();
        gauge.read(60_000).unwrap();
        assert_eq!(gauge.read(60_000), Err(Error::ZeroInterval));
        assert_eq!(
            gauge.read(59_000),
            Err(Error::ClockWentBackwards {
                previous_ms: 60_000,
                now_ms: 59_000
            })
        );
        let rain = gauge.read(180_000).unwrap().unwrap();
        assert_eq!(rain.tips, 3);
        approx(rain.amount_mm, 0.6);
        approx(rain.intensity_mm_per_h, 18.0);
    }

    // Module contract: after `reset` the next read is a baseline again (counts 50 -> 52 over
    // one second: 2 tips).
    #[test]
    fn reset_starts_a_new_baseline() {
        let mut gauge = RainGauge::new(FakeCounter::new(&[0, 50, 52]), MM_PER_TIP_0_2).unwrap();
        gauge.read(0).unwrap();
        gauge.reset();
        assert_eq!(gauge.read(1_000).unwrap(), None);
        assert_eq!(gauge.read(2_000).unwrap().unwrap().tips, 2);
    }

    // `PulseCounter::count` (crate::hal): a failed read is the counter's own error.
    #[test]
    fn counter_errors_are_passed_through() {
        let mut gauge = RainGauge::new(FakeCounter::new(&[]), MM_PER_TIP_0_2).unwrap();
        assert_eq!(gauge.read(0), Err(Error::Counter(())));
    }

    // GB/T 21978.2's resolutions are positive depths per tip; zero, negative or NaN would make
    // every tip read as no rain or negative rain.
    #[test]
    fn a_non_positive_depth_per_tip_is_refused() {
        for mm in [0.0, -0.2, f32::NAN] {
            assert!(matches!(
                RainGauge::new(FakeCounter::new(&[]), mm),
                Err(Error::InvalidConfig(_))
            ));
        }
    }
}
