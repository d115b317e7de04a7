//! Sensirion SHT4x (SHT40, SHT41, SHT43, SHT45) relative humidity and temperature sensor.
//!
//! The SHT4x takes one-byte commands and does not stretch the clock: the host sends a measure
//! command, waits at least the measurement duration (reading earlier is answered with a NACK),
//! then reads six bytes: the temperature word and its CRC, the humidity word and its CRC.
//!
//! Conversion (datasheet "Conversion of Signal Output"):
//! `T = -45 + 175 · S_T / (2^16 − 1)` °C and `RH = -6 + 125 · S_RH / (2^16 − 1)` %RH, with RH
//! cropped to 0..100 %RH as the datasheet advises: the linear formula runs past the physical range
//! at both ends (it spans −6..119 %RH), and outside 0..100 the excess is calibration
//! extrapolation, not humidity.

use core::fmt;

use embedded_hal::delay::DelayNs;
use embedded_hal::i2c::I2c;

use super::sensirion::{self, CrcError, WORD_LEN};

/// The address of the -AD parts (SHT40-AD1B, SHT41, SHT45); -BD parts answer at 0x45, and a few
/// variants at 0x46, so the constructor takes the address.
pub const DEFAULT_ADDRESS: u8 = 0x44;

/// One-byte commands (datasheet "Command Overview").
pub mod command {
    /// Measure T and RH with high precision (high repeatability).
    pub const MEASURE_HIGH: u8 = 0xFD;
    /// Measure T and RH with medium precision.
    pub const MEASURE_MEDIUM: u8 = 0xF6;
    /// Measure T and RH with the lowest precision.
    pub const MEASURE_LOW: u8 = 0xE0;
    /// Read the 32-bit serial number (two words, each with its CRC).
    pub const READ_SERIAL_NUMBER: u8 = 0x89;
    /// Soft reset.
    pub const SOFT_RESET: u8 = 0x94;
}

/// Wait after a soft reset before the next command: the soft-reset time of the datasheet's
/// system timing table (Table 4, at most 1 ms).
pub const SOFT_RESET_US: u32 = 1_000;

/// Wait before reading the serial number. The datasheet gives no duration for this command and
/// an immediate read is NACKed; 10 ms is what Sensirion's own generated C driver
/// (embedded-i2c-sht4x) waits.
pub const SERIAL_NUMBER_US: u32 = 10_000;

/// Measurement repeatability: higher precision is less noisy and takes longer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// High repeatability (command 0xFD).
    High,
    /// Medium repeatability (command 0xF6).
    Medium,
    /// Low repeatability (command 0xE0).
    Low,
}

impl Precision {
    /// The measure command for this precision.
    pub const fn command(self) -> u8 {
        match self {
            Precision::High => command::MEASURE_HIGH,
            Precision::Medium => command::MEASURE_MEDIUM,
            Precision::Low => command::MEASURE_LOW,
        }
    }

    /// The maximum measurement duration in µs (datasheet Table 4, "System timing
    /// specifications": 8.3, 4.5 and 1.7 ms in datasheet v7; earlier versions give 1.6 ms for
    /// low precision). Waiting the maximum rather than the typical time means the read is never
    /// NACKed on a slow part.
    pub const fn max_duration_us(self) -> u32 {
        match self {
            Precision::High => 8_300,
            Precision::Medium => 4_500,
            Precision::Low => 1_700,
        }
    }
}

/// A measurement in physical units.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Measurement {
    /// Temperature in °C.
    pub temperature_c: f32,
    /// Relative humidity in %RH, cropped to 0..100.
    pub humidity_pct: f32,
}

/// A measurement as the sensor sends it: the two 16-bit signal words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawMeasurement {
    /// The temperature signal S_T.
    pub temperature_ticks: u16,
    /// The humidity signal S_RH.
    pub humidity_ticks: u16,
}

impl RawMeasurement {
    /// Converts both words with the datasheet formulas.
    pub fn convert(self) -> Measurement {
        Measurement {
            temperature_c: temperature_c(self.temperature_ticks),
            humidity_pct: humidity_pct(self.humidity_ticks),
        }
    }
}

/// `T = -45 + 175 · S_T / (2^16 − 1)` in °C.
pub fn temperature_c(ticks: u16) -> f32 {
    -45.0 + 175.0 * f32::from(ticks) / 65_535.0
}

/// `RH = -6 + 125 · S_RH / (2^16 − 1)` in %RH, cropped to 0..100.
pub fn humidity_pct(ticks: u16) -> f32 {
    (-6.0 + 125.0 * f32::from(ticks) / 65_535.0).clamp(0.0, 100.0)
}

/// Why an SHT4x transaction failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error<E> {
    /// The I²C bus failed (NACK, arbitration loss, ...).
    I2c(E),
    /// A word of the response failed its CRC.
    Crc(CrcError),
}

impl<E> From<CrcError> for Error<E> {
    fn from(err: CrcError) -> Self {
        Error::Crc(err)
    }
}

impl<E: fmt::Debug> fmt::Display for Error<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::I2c(err) => write!(f, "SHT4x: I2C error: {err:?}"),
            Error::Crc(err) => write!(f, "SHT4x: {err}"),
        }
    }
}

impl<E: fmt::Debug> core::error::Error for Error<E> {}

/// An SHT4x on an I²C bus.
///
/// Owns its bus and delay; pass `&mut bus` / `&mut delay` (both traits are implemented for
/// mutable references) to share them with other drivers.
pub struct Sht4x<I2C, D> {
    i2c: I2C,
    delay: D,
    address: u8,
}

impl<I2C: I2c, D: DelayNs> Sht4x<I2C, D> {
    /// A driver for the sensor at `address` (see [`DEFAULT_ADDRESS`]). Talks to nothing yet.
    pub fn new(i2c: I2C, delay: D, address: u8) -> Self {
        Sht4x {
            i2c,
            delay,
            address,
        }
    }

    /// The sensor's I²C address.
    pub fn address(&self) -> u8 {
        self.address
    }

    /// Gives the bus and the delay back.
    pub fn release(self) -> (I2C, D) {
        (self.i2c, self.delay)
    }

    /// Measures temperature and humidity and converts them.
    pub fn measure(&mut self, precision: Precision) -> Result<Measurement, Error<I2C::Error>> {
        Ok(self.measure_raw(precision)?.convert())
    }

    /// Measures and returns the raw signal words.
    pub fn measure_raw(
        &mut self,
        precision: Precision,
    ) -> Result<RawMeasurement, Error<I2C::Error>> {
        let [temperature_ticks, humidity_ticks] =
            self.command_and_read(precision.command(), precision.max_duration_us())?;
        Ok(RawMeasurement {
            temperature_ticks,
            humidity_ticks,
        })
    }

    /// Reads the 32-bit serial number (first word is the high half).
    pub fn serial_number(&mut self) -> Result<u32, Error<I2C::Error>> {
        let [hi, lo] = self.command_and_read(command::READ_SERIAL_NUMBER, SERIAL_NUMBER_US)?;
        Ok(u32::from(hi) << 16 | u32::from(lo))
    }

    /// Resets the sensor and waits until it accepts commands again.
    pub fn soft_reset(&mut self) -> Result<(), Error<I2C::Error>> {
        self.i2c
            .write(self.address, &[command::SOFT_RESET])
            .map_err(Error::I2c)?;
        self.delay.delay_us(SOFT_RESET_US);
        Ok(())
    }

    fn command_and_read(
        &mut self,
        command: u8,
        wait_us: u32,
    ) -> Result<[u16; 2], Error<I2C::Error>> {
        self.i2c
            .write(self.address, &[command])
            .map_err(Error::I2c)?;
        self.delay.delay_us(wait_us);
        let mut frames = [[0u8; WORD_LEN]; 2];
        self.i2c
            .read(self.address, frames.as_flattened_mut())
            .map_err(Error::I2c)?;
        Ok(sensirion::decode_words(&frames)?)
    }
}

#[cfg(test)]
mod tests {
    use std::vec;

    use embedded_hal::i2c::ErrorKind;
    use embedded_hal_mock::eh1::delay::{CheckedDelay, NoopDelay, Transaction as DelayTransaction};
    use embedded_hal_mock::eh1::i2c::{Mock as I2cMock, Transaction};

    use super::*;

    const ADDR: u8 = DEFAULT_ADDRESS;

    fn approx(actual: f32, expected: f32) {
        assert!(
            (actual - expected).abs() < 1e-4,
            "{actual} is not {expected}"
        );
    }

    // "Conversion of Signal Output", end points: S_T = 0 is -45 °C and S_T = 2^16 - 1 is
    // -45 + 175 = 130 °C.
    #[test]
    fn temperature_end_points_per_conversion_of_signal_output() {
        approx(temperature_c(0x0000), -45.0);
        approx(temperature_c(0xFFFF), 130.0);
    }

    // "Conversion of Signal Output", mid value by hand: 0x6666 = 26214 = 0.4 · 65535, so
    // T = -45 + 175 · 0.4 = 25 °C and RH = -6 + 125 · 0.4 = 44 %RH.
    #[test]
    fn mid_value_0x6666_is_25_c_and_44_pct_per_conversion_of_signal_output() {
        approx(temperature_c(0x6666), 25.0);
        approx(humidity_pct(0x6666), 44.0);
    }

    // "Conversion of Signal Output": the RH formula gives -6 %RH at S_RH = 0 and
    // -6 + 125 = 119 %RH at 0xFFFF; the datasheet advises cropping to 0..100 %RH. The crossing
    // points by hand: RH = 0 at S_RH = 6 · 65535 / 125 = 3145.68, RH = 100 at
    // 106 · 65535 / 125 = 55573.68.
    #[test]
    fn humidity_is_cropped_to_0_100_per_conversion_of_signal_output() {
        assert_eq!(humidity_pct(0x0000), 0.0);
        assert_eq!(humidity_pct(3145), 0.0);
        assert!(humidity_pct(3146) > 0.0);
        assert!(humidity_pct(55573) < 100.0);
        assert_eq!(humidity_pct(55574), 100.0);
        assert_eq!(humidity_pct(0xFFFF), 100.0);
    }

    // "Command Overview" (0xFD, 6-byte response T+CRC, RH+CRC) with Table 4's 8.3 ms maximum
    // high-precision duration. Bytes: 0x6666 with CRC 0x93 (SGP40 datasheet Table 10 prints
    // the same word and CRC), so the reading is 25 °C / 44 %RH as computed above.
    #[test]
    fn high_precision_measurement_per_command_overview_and_table_4() {
        let mut i2c = I2cMock::new(&[
            Transaction::write(ADDR, vec![0xFD]),
            Transaction::read(ADDR, vec![0x66, 0x66, 0x93, 0x66, 0x66, 0x93]),
        ]);
        let mut delay = CheckedDelay::new(&[DelayTransaction::delay_us(8_300)]);
        let mut sensor = Sht4x::new(&mut i2c, &mut delay, ADDR);
        let m = sensor.measure(Precision::High).unwrap();
        approx(m.temperature_c, 25.0);
        approx(m.humidity_pct, 44.0);
        i2c.done();
        delay.done();
    }

    // "Command Overview" medium (0xF6) and low (0xE0) precision, each waited for its Table 4
    // maximum (4.5 ms, 1.7 ms). S_T = 0x0000 (CRC 0x81, SCD4x Table 20) and S_RH = 0xFFFF
    // (CRC 0xAC, SGP40 Table 10): -45 °C, and 119 %RH cropped to 100.
    #[test]
    fn medium_and_low_precision_commands_and_waits_per_table_4() {
        let response = vec![0x00, 0x00, 0x81, 0xFF, 0xFF, 0xAC];
        let mut i2c = I2cMock::new(&[
            Transaction::write(ADDR, vec![0xF6]),
            Transaction::read(ADDR, response.clone()),
            Transaction::write(ADDR, vec![0xE0]),
            Transaction::read(ADDR, response),
        ]);
        let mut delay = CheckedDelay::new(&[
            DelayTransaction::delay_us(4_500),
            DelayTransaction::delay_us(1_700),
        ]);
        let mut sensor = Sht4x::new(&mut i2c, &mut delay, ADDR);
        for precision in [Precision::Medium, Precision::Low] {
            let raw = sensor.measure_raw(precision).unwrap();
            assert_eq!(raw.temperature_ticks, 0x0000);
            assert_eq!(raw.humidity_ticks, 0xFFFF);
            let m = raw.convert();
            approx(m.temperature_c, -45.0);
            assert_eq!(m.humidity_pct, 100.0);
        }
        i2c.done();
        delay.done();
    }

    // "Command Overview": 0x89 returns the serial number as two words with CRCs, high word
    // first. The words reuse CRCs printed in SCD4x Table 24 (0xf896 -> 0x31, 0x9f07 -> 0xc2);
    // 0xF8969F07 = 4_170_620_679 by hand.
    #[test]
    fn serial_number_per_command_overview() {
        let mut i2c = I2cMock::new(&[
            Transaction::write(0x45, vec![0x89]),
            Transaction::read(0x45, vec![0xf8, 0x96, 0x31, 0x9f, 0x07, 0xc2]),
        ]);
        let mut sensor = Sht4x::new(&mut i2c, NoopDelay::new(), 0x45);
        assert_eq!(sensor.address(), 0x45);
        assert_eq!(sensor.serial_number().unwrap(), 4_170_620_679);
        i2c.done();
    }

    // "Command Overview" 0x94 soft reset, then Table 4's soft-reset time before the next
    // command.
    #[test]
    fn soft_reset_per_command_overview_and_table_4() {
        let mut i2c = I2cMock::new(&[Transaction::write(ADDR, vec![0x94])]);
        let mut delay = CheckedDelay::new(&[DelayTransaction::delay_us(1_000)]);
        let mut sensor = Sht4x::new(&mut i2c, &mut delay, ADDR);
        sensor.soft_reset().unwrap();
        i2c.done();
        delay.done();
    }

    // "Checksum Calculation": the humidity word's CRC is corrupted, so the error names word 1
    // and no value is produced.
    #[test]
    fn corrupted_humidity_crc_is_an_error_per_checksum_calculation() {
        let mut i2c = I2cMock::new(&[
            Transaction::write(ADDR, vec![0xFD]),
            Transaction::read(ADDR, vec![0x66, 0x66, 0x93, 0x66, 0x66, 0x92]),
        ]);
        let mut sensor = Sht4x::new(&mut i2c, NoopDelay::new(), ADDR);
        assert_eq!(
            sensor.measure(Precision::High),
            Err(Error::Crc(CrcError {
                word: 1,
                received: 0x92,
                computed: 0x93
            }))
        );
        i2c.done();
    }

    // "I2C communication": a read issued before the measurement finished is NACKed; the bus
    // error reaches the caller unchanged.
    #[test]
    fn a_nack_is_a_bus_error() {
        let mut i2c = I2cMock::new(&[
            Transaction::write(ADDR, vec![0xFD]),
            Transaction::read(ADDR, vec![0; 6]).with_error(ErrorKind::Other),
        ]);
        let mut sensor = Sht4x::new(&mut i2c, NoopDelay::new(), ADDR);
        assert_eq!(
            sensor.measure(Precision::High),
            Err(Error::I2c(ErrorKind::Other))
        );
        i2c.done();
    }
}
