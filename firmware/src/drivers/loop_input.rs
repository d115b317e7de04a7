//! A 4–20 mA transmitter (water level, pressure, flow) read as the voltage across a shunt
//! resistor through an [`AdcChannel`].
//!
//! `mA = counts × reference_mV / 2^bits / shunt_Ω` (mV / Ω = mA), then the protocol crate's
//! [`loop_current_to_value`] maps it onto the transmitter's range and applies NAMUR NE 43:
//! at or below 3.6 mA and at or above 21 mA the loop carries a failure signal, returned as
//! [`Error::LoopFault`]; between the fault limits and the 4–20 mA span the value is extrapolated
//! and [`LoopReading::span`] says on which side it lies.
//!
//! The constructor requires that the ADC's top code is at or above 21 mA with the given shunt
//! and reference. Otherwise a saturated ADC would show a plausible in-range current for a loop
//! that is signalling a high failure; with it, a saturated conversion always lands in the NE 43
//! high fault band.

use core::fmt;

use tianzhong_protocol::convert::{LoopFault, LoopSpan, NE43_FAULT_HIGH_MA, loop_current_to_value};
use tianzhong_protocol::unit::ConversionError;

use crate::hal::AdcChannel;

const BAD_RESOLUTION: &str = "ADC resolution must be 1..=32 bits";

/// `2^bits` as a float, if the resolution fits a `u32` count.
fn code_count(bits: u8) -> Option<f64> {
    (1..=32).contains(&bits).then(|| (1u64 << bits) as f64)
}

/// A measurement of the loop.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LoopReading {
    /// The process value in the transmitter's range unit (m, kPa, ...).
    pub value: f32,
    /// The loop current in mA.
    pub milliamps: f32,
    /// Whether the current is within 4–20 mA or extrapolated below or above it.
    pub span: LoopSpan,
}

/// Why a loop reading failed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Error<E> {
    /// The ADC conversion failed.
    Adc(E),
    /// The loop current is in an NE 43 failure band: a fault, not a value.
    LoopFault(LoopFault),
    /// The ADC returned more counts than its resolution allows (an ADC driver fault).
    CountsOutOfRange {
        /// The conversion.
        counts: u32,
    },
    /// The protocol crate refused the conversion for another reason (a non-finite current).
    Conversion(ConversionError),
    /// The configuration is unusable.
    InvalidConfig(&'static str),
}

impl<E: fmt::Debug> fmt::Display for Error<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Adc(err) => write!(f, "4-20 mA input: ADC error: {err:?}"),
            Error::LoopFault(fault) => write!(f, "4-20 mA input: {fault}"),
            Error::CountsOutOfRange { counts } => {
                write!(
                    f,
                    "4-20 mA input: {counts} counts exceed the ADC resolution"
                )
            }
            Error::Conversion(err) => write!(f, "4-20 mA input: {err}"),
            Error::InvalidConfig(why) => write!(f, "4-20 mA input: invalid configuration: {why}"),
        }
    }
}

impl<E: fmt::Debug> core::error::Error for Error<E> {}

/// A 4–20 mA input: ADC channel, shunt, and the transmitter's range.
pub struct LoopInput<A> {
    adc: A,
    shunt_ohms: f32,
    range_lo: f32,
    range_hi: f32,
}

impl<A: AdcChannel> LoopInput<A> {
    /// An input on `adc` across `shunt_ohms`, for a transmitter whose 4 mA is `range_lo` and
    /// 20 mA is `range_hi` (a reversed range, `lo > hi`, is allowed).
    pub fn new(
        adc: A,
        shunt_ohms: f32,
        range_lo: f32,
        range_hi: f32,
    ) -> Result<Self, Error<A::Error>> {
        if !(shunt_ohms.is_finite() && shunt_ohms > 0.0) {
            return Err(Error::InvalidConfig("shunt must be positive and finite"));
        }
        if !(range_lo.is_finite() && range_hi.is_finite()) || range_lo == range_hi {
            return Err(Error::InvalidConfig(
                "transmitter range must be finite and not empty",
            ));
        }
        let codes =
            code_count(adc.resolution_bits()).ok_or(Error::InvalidConfig(BAD_RESOLUTION))?;
        let input = LoopInput {
            adc,
            shunt_ohms,
            range_lo,
            range_hi,
        };
        if input.milliamps(codes - 1.0, codes) < NE43_FAULT_HIGH_MA {
            return Err(Error::InvalidConfig(
                "ADC full scale is below 21 mA: a saturated input would hide an NE 43 high fault",
            ));
        }
        Ok(input)
    }

    /// Gives the ADC channel back.
    pub fn release(self) -> A {
        self.adc
    }

    /// Reads the loop and converts it to the process value.
    pub fn read(&mut self) -> Result<LoopReading, Error<A::Error>> {
        // Asked every time: the trait lets a channel change its resolution.
        let codes =
            code_count(self.adc.resolution_bits()).ok_or(Error::InvalidConfig(BAD_RESOLUTION))?;
        let counts = self.adc.read_counts().map_err(Error::Adc)?;
        if f64::from(counts) >= codes {
            return Err(Error::CountsOutOfRange { counts });
        }
        let milliamps = self.milliamps(f64::from(counts), codes);
        let (value, span) = loop_current_to_value(
            milliamps,
            f64::from(self.range_lo),
            f64::from(self.range_hi),
        )
        .map_err(|err| match err {
            ConversionError::LoopFault(fault) => Error::LoopFault(fault),
            other => Error::Conversion(other),
        })?;
        Ok(LoopReading {
            value: value as f32,
            milliamps: milliamps as f32,
            span,
        })
    }

    /// `counts × reference_mV / 2^bits / shunt_Ω` (`codes` is `2^bits`), in f64 because the
    /// protocol's conversion takes f64 and a 32-bit count does not fit an f32 mantissa.
    fn milliamps(&self, counts: f64, codes: f64) -> f64 {
        counts * f64::from(self.adc.reference_mv()) / codes / f64::from(self.shunt_ohms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 12-bit ADC with a 3300 mV reference returning one fixed conversion (or an error).
    struct FixedAdc {
        bits: u8,
        reference_mv: u32,
        counts: Result<u32, ()>,
    }

    impl AdcChannel for FixedAdc {
        type Error = ();
        fn reference_mv(&self) -> u32 {
            self.reference_mv
        }
        fn resolution_bits(&self) -> u8 {
            self.bits
        }
        fn read_counts(&mut self) -> Result<u32, ()> {
            self.counts
        }
    }

    /// 150 Ω shunt, 3300 mV, 12 bits: one count is 3300 / 4096 / 150 = 0.00537109375 mA, and
    /// full scale 4096 counts is 22 mA. Transmitter range 0–10 m of water.
    fn read(counts: u32) -> Result<LoopReading, Error<()>> {
        let adc = FixedAdc {
            bits: 12,
            reference_mv: 3300,
            counts: Ok(counts),
        };
        LoopInput::new(adc, 150.0, 0.0, 10.0).unwrap().read()
    }

    fn approx(actual: f32, expected: f32) {
        assert!(
            (actual - expected).abs() < 1e-4,
            "{actual} is not {expected}"
        );
    }

    // NE 43 measuring band, 4 mA end: 4 mA × 150 Ω = 600 mV = 744.73 counts; the nearest code
    // 745 is 745 × 0.00537109375 = 4.001465 mA, i.e. (0.001465 / 16) × 10 = 0.000916 m.
    #[test]
    fn four_milliamps_is_the_bottom_of_the_range() {
        let reading = read(745).unwrap();
        approx(reading.milliamps, 4.001465);
        approx(reading.value, 0.000916);
        assert_eq!(reading.span, LoopSpan::Within);
    }

    // 12 mA × 150 Ω = 1800 mV = 2234.18 counts; code 2234 is 11.999023 mA, i.e.
    // (7.999023 / 16) × 10 = 4.99939 m.
    #[test]
    fn twelve_milliamps_is_mid_range() {
        let reading = read(2234).unwrap();
        approx(reading.milliamps, 11.999023);
        approx(reading.value, 4.99939);
        assert_eq!(reading.span, LoopSpan::Within);
    }

    // 20 mA × 150 Ω = 3000 mV = 3723.64 counts. Code 3723 is 19.996582 mA (9.997864 m, within
    // the span); code 3724 is 20.001953 mA, just above 20 mA: NE 43's "above span" band,
    // 10.001221 m.
    #[test]
    fn twenty_milliamps_is_the_top_of_the_range() {
        let reading = read(3723).unwrap();
        approx(reading.milliamps, 19.996582);
        approx(reading.value, 9.997864);
        assert_eq!(reading.span, LoopSpan::Within);

        let reading = read(3724).unwrap();
        approx(reading.value, 10.001221);
        assert_eq!(reading.span, LoopSpan::Above);
    }

    // NE 43 low failure band (≤ 3.6 mA): 3.5 mA = 525 mV = 651.64 counts; code 652 is
    // 3.501953 mA, a fault and not a value.
    #[test]
    fn three_and_a_half_milliamps_is_a_low_fault() {
        match read(652) {
            Err(Error::LoopFault(LoopFault::Low { milliamps })) => {
                assert!((milliamps - 3.501953).abs() < 1e-5)
            }
            other => panic!("expected a low loop fault, got {other:?}"),
        }
    }

    // NE 43 high failure band (≥ 21 mA): 22 mA × 150 Ω = 3300 mV is the reference itself, so
    // the ADC saturates at its top code 4095 = 21.994629 mA, still in the fault band.
    #[test]
    fn twenty_two_milliamps_is_a_high_fault() {
        match read(4095) {
            Err(Error::LoopFault(LoopFault::High { milliamps })) => {
                assert!((milliamps - 21.994629).abs() < 1e-5)
            }
            other => panic!("expected a high loop fault, got {other:?}"),
        }
    }

    // NE 43: between 3.6 and 4 mA the value is extrapolated and flagged below span. 3.8 mA =
    // 570 mV = 707.49 counts; code 708 is 3.802734 mA, i.e. (−0.197266 / 16) × 10 = −0.123291 m.
    #[test]
    fn three_point_eight_milliamps_is_below_span() {
        let reading = read(708).unwrap();
        approx(reading.milliamps, 3.802734);
        approx(reading.value, -0.123291);
        assert_eq!(reading.span, LoopSpan::Below);
    }

    // An open loop reads 0 mA: NE 43 low fault.
    #[test]
    fn an_open_loop_is_a_low_fault() {
        assert!(matches!(
            read(0),
            Err(Error::LoopFault(LoopFault::Low { .. }))
        ));
    }

    // `AdcChannel::resolution_bits` (crate::hal): "a reading is 0..2^bits"; 4096 on a 12-bit
    // channel is an ADC driver fault, not 22 mA.
    #[test]
    fn counts_beyond_the_resolution_are_an_error() {
        assert_eq!(read(4096), Err(Error::CountsOutOfRange { counts: 4096 }));
    }

    // `AdcChannel::read_counts` (crate::hal): a failed conversion is the channel's own error.
    #[test]
    fn adc_errors_are_passed_through() {
        let adc = FixedAdc {
            bits: 12,
            reference_mv: 3300,
            counts: Err(()),
        };
        let mut input = LoopInput::new(adc, 150.0, 0.0, 10.0).unwrap();
        assert_eq!(input.read(), Err(Error::Adc(())));
    }

    // 250 Ω on a 3300 mV, 12-bit ADC tops out at 3300 · 4095 / 4096 / 250 = 13.2 mA: everything
    // from 13.2 to 21 mA and beyond would read as the same in-range value. Refused, as are a
    // zero shunt and an empty range.
    #[test]
    fn configurations_that_would_hide_faults_are_refused() {
        let adc = || FixedAdc {
            bits: 12,
            reference_mv: 3300,
            counts: Ok(0),
        };
        assert!(matches!(
            LoopInput::new(adc(), 250.0, 0.0, 10.0),
            Err(Error::InvalidConfig(_))
        ));
        assert!(matches!(
            LoopInput::new(adc(), 0.0, 0.0, 10.0),
            Err(Error::InvalidConfig(_))
        ));
        assert!(matches!(
            LoopInput::new(adc(), 150.0, 5.0, 5.0),
            Err(Error::InvalidConfig(_))
        ));
    }
}
