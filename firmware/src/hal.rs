//! Small hardware traits of our own, for inputs embedded-hal 1.0 does not cover: ADC channels
//! and pulse counters. Board crates implement them over their HAL; the simulator implements them
//! over its signal models; tests implement them with fixed values.

/// One analog input channel.
pub trait AdcChannel {
    /// The error of a conversion.
    type Error: core::fmt::Debug;

    /// Reference voltage in millivolts that a full-scale reading corresponds to.
    fn reference_mv(&self) -> u32;

    /// Converter resolution in bits (a reading is `0..2^bits`).
    fn resolution_bits(&self) -> u8;

    /// Takes one conversion and returns the raw counts.
    fn read_counts(&mut self) -> Result<u32, Self::Error>;
}

/// A free-running hardware pulse counter (e.g. a timer in external-clock mode, counting the
/// reed switch of a tipping-bucket rain gauge). It wraps at `2^32`.
pub trait PulseCounter {
    /// The error of a read.
    type Error: core::fmt::Debug;

    /// The current count.
    fn count(&mut self) -> Result<u32, Self::Error>;
}
