//! A gas sensor with an analog output read through an [`AdcChannel`]: a catalytic (pellistor)
//! bead pair in a Wheatstone bridge, or an electrochemical cell behind a transimpedance
//! amplifier, with a two-point (zero/span) calibration to %LEL or ppm.
//!
//! # Model
//!
//! Linear: `concentration = (counts − zero_counts) × span_concentration / (span_counts −
//! zero_counts)`, in whatever unit the span gas is given in.
//!
//! - An electrochemical (amperometric) cell's current is its zero (background) current plus a
//!   term proportional to the gas concentration; Alphasense application note AAN 803
//!   ("Correcting for background currents in four electrode toxic gas sensors") removes the zero
//!   current and divides by the sensitivity, which is this formula with the zero and the
//!   sensitivity taken from the two calibration points.
//! - A pellistor bridge's out-of-balance voltage follows the active bead's resistance change,
//!   proportional to the combustible gas concentration (e.g. the Compur gas detector manual's
//!   description of its catalytic sensor). That holds for the calibration gas below 100 %LEL;
//!   other gases need the manufacturer's response factors, applied by the caller.
//!
//! # Faults rather than values
//!
//! A conversion at either ADC rail (0, or full scale `2^bits − 1`) means the signal is outside
//! what the front end can represent: a broken bead or wire (open bridge), a shorted element, or
//! a saturated amplifier. It is [`Error::Fault`], never a concentration: reporting the clamped
//! value would show a plausible number for a dead sensor.
//!
//! Small negative readings are noise around zero and read 0; anything below `-zero_band` is
//! [`Error::BelowZero`]: the zero has drifted (or the sensor was zeroed in gas), and the node
//! must ask for a recalibration instead of reporting "no gas".

use core::fmt;

use crate::hal::AdcChannel;

const BAD_RESOLUTION: &str = "ADC resolution must be 1..=32 bits";

/// The highest code of a `bits`-bit converter, `2^bits − 1`, if the resolution fits a `u32`
/// count.
fn top_code(bits: u8) -> Option<u32> {
    (1..=32)
        .contains(&bits)
        .then(|| ((1u64 << bits) - 1) as u32)
}

/// Conversions averaged for each calibration point: a calibration is stored for months, so it
/// should not inherit the noise of a single conversion.
pub const CALIBRATION_SAMPLES: u32 = 8;

/// Why a calibration was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CalibrationError {
    /// Span and zero counts are equal: the sensor did not respond to the span gas (a dead or
    /// poisoned sensor), and the formula would divide by zero.
    SpanEqualsZero,
    /// The span gas concentration is not a positive, finite number.
    SpanGasNotPositive,
    /// Moving the span point with the zero put it outside the `u32` count range.
    SpanOutOfRange,
}

impl fmt::Display for CalibrationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CalibrationError::SpanEqualsZero => "span reading equals zero reading",
            CalibrationError::SpanGasNotPositive => "span gas concentration must be positive",
            CalibrationError::SpanOutOfRange => "span point out of the count range",
        })
    }
}

/// A validated two-point calibration.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Calibration {
    zero_counts: u32,
    span_counts: u32,
    span_concentration: f32,
}

impl Calibration {
    /// A calibration from the counts read in zero gas and in span gas of `span_concentration`.
    ///
    /// `span_counts` may be below `zero_counts` (a front end whose output falls with gas).
    pub fn new(
        zero_counts: u32,
        span_counts: u32,
        span_concentration: f32,
    ) -> Result<Self, CalibrationError> {
        if span_counts == zero_counts {
            return Err(CalibrationError::SpanEqualsZero);
        }
        if !(span_concentration.is_finite() && span_concentration > 0.0) {
            return Err(CalibrationError::SpanGasNotPositive);
        }
        Ok(Calibration {
            zero_counts,
            span_counts,
            span_concentration,
        })
    }

    /// Counts in zero gas.
    pub fn zero_counts(&self) -> u32 {
        self.zero_counts
    }

    /// Counts in span gas.
    pub fn span_counts(&self) -> u32 {
        self.span_counts
    }

    /// The span gas concentration (in the unit readings are reported in).
    pub fn span_concentration(&self) -> f32 {
        self.span_concentration
    }

    /// The linear model, unclamped: `(counts − zero) × span_gas / (span − zero)`.
    pub fn concentration(&self, counts: u32) -> f32 {
        // Differences in f64: counts up to 2^32 do not fit an f32 mantissa.
        let delta = f64::from(counts) - f64::from(self.zero_counts);
        let span = f64::from(self.span_counts) - f64::from(self.zero_counts);
        (delta * f64::from(self.span_concentration) / span) as f32
    }

    /// This calibration with a new zero and the sensitivity kept: a fresh-air zero corrects an
    /// offset drift, which moves the span point by the same amount; keeping the old absolute
    /// span counts would silently change the gain.
    fn with_zero(&self, zero_counts: u32) -> Result<Self, CalibrationError> {
        let span =
            i64::from(self.span_counts) + i64::from(zero_counts) - i64::from(self.zero_counts);
        let span_counts = u32::try_from(span).map_err(|_| CalibrationError::SpanOutOfRange)?;
        Calibration::new(zero_counts, span_counts, self.span_concentration)
    }
}

/// Why an ADC channel is a fault rather than a reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The conversion is 0: open bridge or broken wire (on most front ends), or an amplifier
    /// driven into its lower rail.
    LowRail,
    /// The conversion is at (or, from a faulty ADC driver, above) full scale: shorted element or
    /// saturated amplifier.
    HighRail,
}

/// Why a gas reading or calibration failed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Error<E> {
    /// The ADC conversion failed.
    Adc(E),
    /// The conversion sits at an ADC rail: a sensor or wiring fault.
    Fault {
        /// Which rail.
        fault: Fault,
        /// The conversion that showed it.
        counts: u32,
    },
    /// The reading is below `-zero_band`: zero drift, recalibration needed.
    BelowZero {
        /// The (negative) concentration the calibration gives.
        concentration: f32,
    },
    /// A calibration was refused; the previous one stays in force.
    Calibration(CalibrationError),
    /// The driver's configuration is unusable (zero band, ADC resolution).
    InvalidConfig(&'static str),
}

impl<E: fmt::Debug> fmt::Display for Error<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Adc(err) => write!(f, "gas sensor: ADC error: {err:?}"),
            Error::Fault { fault, counts } => {
                write!(f, "gas sensor fault: {fault:?} at {counts} counts")
            }
            Error::BelowZero { concentration } => write!(
                f,
                "gas sensor reads {concentration} below zero: zero drift, recalibrate"
            ),
            Error::Calibration(err) => write!(f, "gas sensor calibration refused: {err}"),
            Error::InvalidConfig(why) => write!(f, "gas sensor: invalid configuration: {why}"),
        }
    }
}

impl<E: fmt::Debug> core::error::Error for Error<E> {}

/// A calibrated analog gas sensor.
pub struct GasAdc<A> {
    adc: A,
    calibration: Calibration,
    zero_band: f32,
}

impl<A: AdcChannel> GasAdc<A> {
    /// A sensor on `adc` with `calibration` (a stored one, or a nominal one from the sensor's
    /// datasheet until the first gas calibration). Readings in `[-zero_band, 0)` read 0.
    pub fn new(adc: A, calibration: Calibration, zero_band: f32) -> Result<Self, Error<A::Error>> {
        if !(zero_band.is_finite() && zero_band >= 0.0) {
            return Err(Error::InvalidConfig("zero band must be finite and >= 0"));
        }
        if top_code(adc.resolution_bits()).is_none() {
            return Err(Error::InvalidConfig(BAD_RESOLUTION));
        }
        Ok(GasAdc {
            adc,
            calibration,
            zero_band,
        })
    }

    /// The calibration in force.
    pub fn calibration(&self) -> Calibration {
        self.calibration
    }

    /// Gives the ADC channel back.
    pub fn release(self) -> A {
        self.adc
    }

    /// One conversion, checked against the rails.
    pub fn read_counts(&mut self) -> Result<u32, Error<A::Error>> {
        // Asked every time: the trait lets a channel change its resolution.
        let top =
            top_code(self.adc.resolution_bits()).ok_or(Error::InvalidConfig(BAD_RESOLUTION))?;
        let counts = self.adc.read_counts().map_err(Error::Adc)?;
        if counts == 0 {
            return Err(Error::Fault {
                fault: Fault::LowRail,
                counts,
            });
        }
        if counts >= top {
            return Err(Error::Fault {
                fault: Fault::HighRail,
                counts,
            });
        }
        Ok(counts)
    }

    /// The gas concentration, in the span gas's unit (%LEL or ppm).
    pub fn read(&mut self) -> Result<f32, Error<A::Error>> {
        let counts = self.read_counts()?;
        let concentration = self.calibration.concentration(counts);
        if concentration >= 0.0 {
            Ok(concentration)
        } else if concentration >= -self.zero_band {
            Ok(0.0)
        } else {
            Err(Error::BelowZero { concentration })
        }
    }

    /// Zero calibration: the sensor is in clean air (or zero gas). Averages
    /// [`CALIBRATION_SAMPLES`] conversions; the sensitivity is kept. On error the previous
    /// calibration stays in force.
    pub fn calibrate_zero(&mut self) -> Result<Calibration, Error<A::Error>> {
        let zero = self.average_counts()?;
        self.calibration = self
            .calibration
            .with_zero(zero)
            .map_err(Error::Calibration)?;
        Ok(self.calibration)
    }

    /// Span calibration: the sensor is in span gas of `concentration` (same unit as readings),
    /// after a zero calibration. Averages [`CALIBRATION_SAMPLES`] conversions. On error the
    /// previous calibration stays in force.
    pub fn calibrate_span(&mut self, concentration: f32) -> Result<Calibration, Error<A::Error>> {
        if !(concentration.is_finite() && concentration > 0.0) {
            return Err(Error::Calibration(CalibrationError::SpanGasNotPositive));
        }
        let span = self.average_counts()?;
        self.calibration = Calibration::new(self.calibration.zero_counts, span, concentration)
            .map_err(Error::Calibration)?;
        Ok(self.calibration)
    }

    fn average_counts(&mut self) -> Result<u32, Error<A::Error>> {
        let mut sum = 0u64;
        for _ in 0..CALIBRATION_SAMPLES {
            sum += u64::from(self.read_counts()?);
        }
        let n = u64::from(CALIBRATION_SAMPLES);
        // The mean of u32 values is a u32; rounded to nearest.
        Ok(((sum + n / 2) / n) as u32)
    }
}

#[cfg(test)]
mod tests {
    use std::vec::Vec;

    use super::*;

    /// An ADC returning queued conversions; `Err(())` once the queue is empty is the conversion
    /// error.
    struct FakeAdc {
        bits: u8,
        queue: Vec<u32>,
    }

    impl FakeAdc {
        fn new(bits: u8, readings: &[u32]) -> Self {
            let mut queue = readings.to_vec();
            queue.reverse();
            FakeAdc { bits, queue }
        }
    }

    impl AdcChannel for FakeAdc {
        type Error = ();
        fn reference_mv(&self) -> u32 {
            3300
        }
        fn resolution_bits(&self) -> u8 {
            self.bits
        }
        fn read_counts(&mut self) -> Result<u32, ()> {
            self.queue.pop().ok_or(())
        }
    }

    fn approx(actual: f32, expected: f32) {
        assert!(
            (actual - expected).abs() < 1e-4,
            "{actual} is not {expected}"
        );
    }

    /// Pellistor bridge on a 12-bit ADC: 400 counts in clean air, 2400 counts in 50 %LEL span
    /// gas (40 counts per %LEL).
    fn lel_calibration() -> Calibration {
        Calibration::new(400, 2400, 50.0).unwrap()
    }

    // Linear two-point model (module doc; AAN 803's zero-and-sensitivity form). By hand:
    // (1400 − 400) × 50 / (2400 − 400) = 25 %LEL; the zero point reads 0 and the span point 50.
    #[test]
    fn two_point_linear_model_in_lel() {
        let mut gas =
            GasAdc::new(FakeAdc::new(12, &[1400, 400, 2400]), lel_calibration(), 1.0).unwrap();
        approx(gas.read().unwrap(), 25.0);
        approx(gas.read().unwrap(), 0.0);
        approx(gas.read().unwrap(), 50.0);
    }

    // Electrochemical CO cell behind a transimpedance amplifier, in ppm: zero 800 counts, span
    // 1600 counts at 100 ppm CO. By hand: (1200 − 800) × 100 / 800 = 50 ppm.
    #[test]
    fn two_point_linear_model_in_ppm() {
        let calibration = Calibration::new(800, 1600, 100.0).unwrap();
        let mut gas = GasAdc::new(FakeAdc::new(12, &[1200]), calibration, 2.0).unwrap();
        approx(gas.read().unwrap(), 50.0);
    }

    // A front end whose output falls with gas: zero 3000, span 1000 at 100 ppm. By hand:
    // (2000 − 3000) × 100 / (1000 − 3000) = 50 ppm.
    #[test]
    fn a_falling_output_is_a_valid_calibration() {
        let calibration = Calibration::new(3000, 1000, 100.0).unwrap();
        let mut gas = GasAdc::new(FakeAdc::new(12, &[2000]), calibration, 2.0).unwrap();
        approx(gas.read().unwrap(), 50.0);
    }

    // The two-point model (module doc, AAN 803's zero-and-sensitivity form) divides by
    // span − zero and scales by the span gas: span ≠ zero, and a positive, finite span gas.
    #[test]
    fn invalid_calibrations_are_refused() {
        assert_eq!(
            Calibration::new(400, 400, 50.0),
            Err(CalibrationError::SpanEqualsZero)
        );
        for gas in [0.0, -50.0, f32::NAN, f32::INFINITY] {
            assert_eq!(
                Calibration::new(400, 2400, gas),
                Err(CalibrationError::SpanGasNotPositive)
            );
        }
    }

    // Zero band 1 %LEL: 380 counts is (380 − 400) / 40 = −0.5 %LEL, noise, reads 0; 360 counts
    // is exactly −1 %LEL, still inside; 300 counts is −2.5 %LEL, a zero drift error.
    #[test]
    fn negative_readings_clamp_inside_the_zero_band_and_fail_below_it() {
        let mut gas =
            GasAdc::new(FakeAdc::new(12, &[380, 360, 300]), lel_calibration(), 1.0).unwrap();
        assert_eq!(gas.read().unwrap(), 0.0);
        assert_eq!(gas.read().unwrap(), 0.0);
        match gas.read() {
            Err(Error::BelowZero { concentration }) => approx(concentration, -2.5),
            other => panic!("expected BelowZero, got {other:?}"),
        }
    }

    // Rails of a 12-bit ADC are 0 and 2^12 − 1 = 4095: faults, not values. 1 and 4094 are the
    // nearest conversions that are still readings.
    #[test]
    fn adc_rails_are_sensor_faults() {
        let mut gas = GasAdc::new(
            FakeAdc::new(12, &[0, 4095, 4096, 1, 4094]),
            Calibration::new(1, 4094, 100.0).unwrap(),
            1.0,
        )
        .unwrap();
        assert_eq!(
            gas.read(),
            Err(Error::Fault {
                fault: Fault::LowRail,
                counts: 0
            })
        );
        assert_eq!(
            gas.read(),
            Err(Error::Fault {
                fault: Fault::HighRail,
                counts: 4095
            })
        );
        assert_eq!(
            gas.read(),
            Err(Error::Fault {
                fault: Fault::HighRail,
                counts: 4096
            })
        );
        approx(gas.read().unwrap(), 0.0);
        approx(gas.read().unwrap(), 100.0);
    }

    // `AdcChannel::read_counts` (crate::hal): a failed conversion is the channel's own error,
    // passed through, never a reading.
    #[test]
    fn adc_errors_are_passed_through() {
        let mut gas = GasAdc::new(FakeAdc::new(12, &[]), lel_calibration(), 1.0).unwrap();
        assert_eq!(gas.read(), Err(Error::Adc(())));
    }

    // Fresh-air zero: eight conversions alternating 405/415 average 410, 10 counts of offset
    // drift. The span point moves with it (2400 -> 2410), so 40 counts per %LEL is kept and
    // 1410 counts still reads (1410 − 410) / 40 = 25 %LEL.
    #[test]
    fn calibrate_zero_averages_and_keeps_the_sensitivity() {
        let mut readings = [405, 415].repeat(4);
        readings.push(1410);
        let mut gas = GasAdc::new(FakeAdc::new(12, &readings), lel_calibration(), 1.0).unwrap();
        let calibration = gas.calibrate_zero().unwrap();
        assert_eq!(calibration.zero_counts(), 410);
        assert_eq!(calibration.span_counts(), 2410);
        assert_eq!(calibration.span_concentration(), 50.0);
        approx(gas.read().unwrap(), 25.0);
    }

    // Span calibration with 45 %LEL gas: eight conversions averaging 2200 (2190/2210
    // alternating). New sensitivity (2200 − 400) / 45 = 40 counts per %LEL; 1200 counts then
    // reads (1200 − 400) × 45 / 1800 = 20 %LEL.
    #[test]
    fn calibrate_span_sets_the_gain_from_the_span_gas() {
        let mut readings = [2190, 2210].repeat(4);
        readings.push(1200);
        let mut gas = GasAdc::new(FakeAdc::new(12, &readings), lel_calibration(), 1.0).unwrap();
        let calibration = gas.calibrate_span(45.0).unwrap();
        assert_eq!(calibration.zero_counts(), 400);
        assert_eq!(calibration.span_counts(), 2200);
        assert_eq!(calibration.span_concentration(), 45.0);
        approx(gas.read().unwrap(), 20.0);
    }

    // A sensor that does not respond to span gas (reads its zero) fails the span calibration,
    // and one at a rail fails with the fault; either way the old calibration stays in force.
    #[test]
    fn failed_calibrations_keep_the_previous_one() {
        let mut readings = [400].repeat(8);
        readings.extend([2000, 0]);
        let mut gas = GasAdc::new(FakeAdc::new(12, &readings), lel_calibration(), 1.0).unwrap();
        assert_eq!(
            gas.calibrate_span(50.0),
            Err(Error::Calibration(CalibrationError::SpanEqualsZero))
        );
        assert_eq!(gas.calibration(), lel_calibration());
        assert_eq!(
            gas.calibrate_zero(),
            Err(Error::Fault {
                fault: Fault::LowRail,
                counts: 0
            })
        );
        assert_eq!(gas.calibration(), lel_calibration());
        assert_eq!(
            gas.calibrate_span(0.0),
            Err(Error::Calibration(CalibrationError::SpanGasNotPositive))
        );
    }

    // `AdcChannel::resolution_bits` (crate::hal): readings are `0..2^bits` in a u32, so 0 bits
    // is no converter at all; a negative zero band would turn the clamp into an offset.
    #[test]
    fn invalid_configuration_is_refused() {
        assert!(matches!(
            GasAdc::new(FakeAdc::new(12, &[]), lel_calibration(), -1.0),
            Err(Error::InvalidConfig(_))
        ));
        assert!(matches!(
            GasAdc::new(FakeAdc::new(0, &[]), lel_calibration(), 1.0),
            Err(Error::InvalidConfig(_))
        ));
    }
}
