//! Simulated sensor hardware at the register level, for running the real drivers without the
//! real sensors: in the QEMU board variant, in the simulator and in tests.
//!
//! Each fake answers the bus commands of its datasheet with correctly formed bytes (CRCs
//! included), computed from the physical value it is told to present, so the driver on top
//! does the full conversion.
//!
//! | fake | stands in for |
//! |---|---|
//! | [`SimI2cBus`] | an I²C bus with a [`SimSht4x`] at 0x44 and a [`SimScd4x`] at 0x62 |
//! | [`SimAdc`] | an ADC channel whose counts follow a voltage |
//! | [`SimCounter`] | a hardware pulse counter |
//! | [`SimFlash`] | NOR flash in RAM, erasing to `0xFF` and programming by clearing bits |
//! | [`PowerCutFlash`] | NOR flash in RAM whose power can fail in the middle of any write or erase |

use embedded_hal::i2c::{self, ErrorKind, ErrorType, I2c, NoAcknowledgeSource, Operation};

use crate::drivers::sensirion::crc8;
use crate::hal::{AdcChannel, PulseCounter};

mod power_cut;
pub use power_cut::{PowerCutError, PowerCutFlash};

/// Appends `word` big-endian with its Sensirion CRC-8.
fn push_word(out: &mut heapless::Vec<u8, 9>, word: u16) {
    let [hi, lo] = word.to_be_bytes();
    let _ = out.extend_from_slice(&[hi, lo, crc8(&[hi, lo])]);
}

/// Rounds a non-negative tick count to the nearest integer, clamped to a word.
fn ticks(x: f32) -> u16 {
    let x = x.clamp(0.0, 65535.0);
    (x + 0.5) as u16
}

/// A Sensirion SHT4x presenting a temperature and a humidity.
#[derive(Clone, Debug)]
pub struct SimSht4x {
    /// Temperature in °C.
    pub temperature_c: f32,
    /// Relative humidity in %.
    pub humidity_pct: f32,
    /// Serial number.
    pub serial: u32,
    pending: heapless::Vec<u8, 9>,
}

impl SimSht4x {
    /// A sensor presenting these values.
    pub fn new(temperature_c: f32, humidity_pct: f32) -> SimSht4x {
        SimSht4x {
            temperature_c,
            humidity_pct,
            serial: 0x1234_5678,
            pending: heapless::Vec::new(),
        }
    }

    fn command(&mut self, bytes: &[u8]) -> bool {
        self.pending.clear();
        match bytes {
            // Datasheet 4.5: T = -45 + 175·S/(2^16 − 1), RH = -6 + 125·S/(2^16 − 1), inverted.
            [0xFD] | [0xF6] | [0xE0] => {
                push_word(
                    &mut self.pending,
                    ticks((self.temperature_c + 45.0) * 65535.0 / 175.0),
                );
                push_word(
                    &mut self.pending,
                    ticks((self.humidity_pct + 6.0) * 65535.0 / 125.0),
                );
                true
            }
            [0x89] => {
                push_word(&mut self.pending, (self.serial >> 16) as u16);
                push_word(&mut self.pending, self.serial as u16);
                true
            }
            [0x94] => true,
            _ => false,
        }
    }
}

/// A Sensirion SCD4x in periodic measurement mode.
#[derive(Clone, Debug)]
pub struct SimScd4x {
    /// CO2 in ppm.
    pub co2_ppm: u16,
    /// Temperature in °C.
    pub temperature_c: f32,
    /// Relative humidity in %.
    pub humidity_pct: f32,
    running: bool,
    pending: heapless::Vec<u8, 9>,
}

impl SimScd4x {
    /// A sensor presenting these values once started.
    pub fn new(co2_ppm: u16, temperature_c: f32, humidity_pct: f32) -> SimScd4x {
        SimScd4x {
            co2_ppm,
            temperature_c,
            humidity_pct,
            running: false,
            pending: heapless::Vec::new(),
        }
    }

    fn command(&mut self, bytes: &[u8]) -> bool {
        self.pending.clear();
        match bytes {
            [0x21, 0xB1] => self.running = true,
            [0x3F, 0x86] => self.running = false,
            // A fresh measurement is always waiting while running (bits 0..10 non-zero).
            [0xE4, 0xB8] => push_word(
                &mut self.pending,
                if self.running { 0x8006 } else { 0x8000 },
            ),
            // Datasheet 3.5.2: T = -45 + 175·word/(2^16 − 1), RH = 100·word/(2^16 − 1),
            // inverted.
            [0xEC, 0x05] if self.running => {
                push_word(&mut self.pending, self.co2_ppm);
                push_word(
                    &mut self.pending,
                    ticks((self.temperature_c + 45.0) * 65535.0 / 175.0),
                );
                push_word(
                    &mut self.pending,
                    ticks(self.humidity_pct * 65535.0 / 100.0),
                );
            }
            [0x36, 0x82] if !self.running => {
                for w in [0xF896, 0x9F07, 0x3BB7] {
                    push_word(&mut self.pending, w);
                }
            }
            _ => return false,
        }
        true
    }
}

/// A bus error of the simulated bus.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SimI2cError(pub ErrorKind);

impl i2c::Error for SimI2cError {
    fn kind(&self) -> ErrorKind {
        self.0
    }
}

/// An I²C bus with the simulated sensors on it. A device that is absent, or a command it does
/// not know, is a NACK, as on a real bus.
#[derive(Clone, Debug, Default)]
pub struct SimI2cBus {
    /// The SHT4x at 0x44, if fitted.
    pub sht4x: Option<SimSht4x>,
    /// The SCD4x at 0x62, if fitted.
    pub scd4x: Option<SimScd4x>,
}

impl ErrorType for SimI2cBus {
    type Error = SimI2cError;
}

impl I2c for SimI2cBus {
    fn transaction(
        &mut self,
        address: u8,
        operations: &mut [Operation<'_>],
    ) -> Result<(), SimI2cError> {
        let nack = |source| SimI2cError(ErrorKind::NoAcknowledge(source));
        for op in operations {
            match (address, op) {
                (0x44, Operation::Write(bytes)) => {
                    let dev = self
                        .sht4x
                        .as_mut()
                        .ok_or(nack(NoAcknowledgeSource::Address))?;
                    if !dev.command(bytes) {
                        return Err(nack(NoAcknowledgeSource::Data));
                    }
                }
                (0x62, Operation::Write(bytes)) => {
                    let dev = self
                        .scd4x
                        .as_mut()
                        .ok_or(nack(NoAcknowledgeSource::Address))?;
                    if !dev.command(bytes) {
                        return Err(nack(NoAcknowledgeSource::Data));
                    }
                }
                (0x44 | 0x62, Operation::Read(buf)) => {
                    let pending = match address {
                        0x44 => self.sht4x.as_mut().map(|d| &mut d.pending),
                        _ => self.scd4x.as_mut().map(|d| &mut d.pending),
                    }
                    .ok_or(nack(NoAcknowledgeSource::Address))?;
                    // Reading more than the sensor has, or with nothing pending, is a NACK.
                    if pending.len() < buf.len() || pending.is_empty() {
                        return Err(nack(NoAcknowledgeSource::Data));
                    }
                    buf.copy_from_slice(&pending[..buf.len()]);
                    pending.clear();
                }
                _ => return Err(nack(NoAcknowledgeSource::Address)),
            }
        }
        Ok(())
    }
}

/// An ADC channel presenting a voltage.
#[derive(Clone, Copy, Debug)]
pub struct SimAdc {
    /// Reference voltage in mV.
    pub reference_mv: u32,
    /// Resolution in bits.
    pub bits: u8,
    /// The input voltage in mV.
    pub input_mv: f32,
}

impl SimAdc {
    /// A 12-bit, 3.3 V converter (the STM32F4's) at `input_mv`.
    pub fn stm32(input_mv: f32) -> SimAdc {
        SimAdc {
            reference_mv: 3300,
            bits: 12,
            input_mv,
        }
    }
}

impl AdcChannel for SimAdc {
    type Error = core::convert::Infallible;

    fn reference_mv(&self) -> u32 {
        self.reference_mv
    }

    fn resolution_bits(&self) -> u8 {
        self.bits
    }

    fn read_counts(&mut self) -> Result<u32, Self::Error> {
        let full = (1u64 << self.bits) as f32;
        let counts = self.input_mv / self.reference_mv as f32 * full;
        Ok((counts.clamp(0.0, full - 1.0) + 0.5) as u32)
    }
}

/// A pulse counter; tests and simulations add pulses to it.
#[derive(Clone, Copy, Debug, Default)]
pub struct SimCounter {
    /// Pulses counted (wrapping).
    pub count: u32,
}

impl PulseCounter for SimCounter {
    type Error = core::convert::Infallible;

    fn count(&mut self) -> Result<u32, Self::Error> {
        Ok(self.count)
    }
}

/// NOR flash in RAM: erase sets bytes to `0xFF`, a write can only clear bits, as on the chip.
#[derive(Clone, Debug)]
pub struct SimFlash<const N: usize> {
    data: [u8; N],
}

impl<const N: usize> Default for SimFlash<N> {
    fn default() -> Self {
        SimFlash { data: [0xFF; N] }
    }
}

/// An access outside the simulated flash or not aligned to its sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SimFlashError(pub embedded_storage::nor_flash::NorFlashErrorKind);

impl embedded_storage::nor_flash::NorFlashError for SimFlashError {
    fn kind(&self) -> embedded_storage::nor_flash::NorFlashErrorKind {
        self.0
    }
}

impl<const N: usize> embedded_storage::nor_flash::ErrorType for SimFlash<N> {
    type Error = SimFlashError;
}

impl<const N: usize> SimFlash<N> {
    fn range(&self, offset: u32, len: usize) -> Result<core::ops::Range<usize>, SimFlashError> {
        let start = offset as usize;
        match start.checked_add(len) {
            Some(end) if end <= N => Ok(start..end),
            _ => Err(SimFlashError(
                embedded_storage::nor_flash::NorFlashErrorKind::OutOfBounds,
            )),
        }
    }
}

impl<const N: usize> embedded_storage::nor_flash::ReadNorFlash for SimFlash<N> {
    const READ_SIZE: usize = 1;

    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), SimFlashError> {
        let r = self.range(offset, bytes.len())?;
        bytes.copy_from_slice(&self.data[r]);
        Ok(())
    }

    fn capacity(&self) -> usize {
        N
    }
}

impl<const N: usize> embedded_storage::nor_flash::NorFlash for SimFlash<N> {
    const WRITE_SIZE: usize = 1;
    const ERASE_SIZE: usize = 1024;

    fn erase(&mut self, from: u32, to: u32) -> Result<(), SimFlashError> {
        use embedded_storage::nor_flash::NorFlashErrorKind::NotAligned;
        if !from.is_multiple_of(1024) || !to.is_multiple_of(1024) || to < from {
            return Err(SimFlashError(NotAligned));
        }
        let r = self.range(from, (to - from) as usize)?;
        self.data[r].fill(0xFF);
        Ok(())
    }

    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), SimFlashError> {
        let r = self.range(offset, bytes.len())?;
        for (cell, b) in self.data[r].iter_mut().zip(bytes) {
            *cell &= *b;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drivers::{scd4x, sht4x};
    use embedded_hal_mock::eh1::delay::NoopDelay;

    #[test]
    fn real_drivers_read_the_simulated_sensors() {
        let mut bus = SimI2cBus {
            sht4x: Some(SimSht4x::new(21.5, 45.0)),
            scd4x: Some(SimScd4x::new(415, 22.0, 40.0)),
        };
        let m = sht4x::Sht4x::new(&mut bus, NoopDelay, sht4x::DEFAULT_ADDRESS)
            .measure(sht4x::Precision::High)
            .unwrap();
        assert!((m.temperature_c - 21.5).abs() < 0.01 && (m.humidity_pct - 45.0).abs() < 0.01);
        let mut scd = scd4x::Scd4x::new(&mut bus, NoopDelay);
        assert!(scd.read_measurement().is_err(), "not started: NACK");
        scd.start_periodic_measurement().unwrap();
        assert!(scd.data_ready().unwrap());
        let m = scd.read_measurement().unwrap();
        assert_eq!(m.co2_ppm, 415.0);
        assert!((m.temperature_c - 22.0).abs() < 0.01 && (m.humidity_pct - 40.0).abs() < 0.01);
        bus.sht4x = None;
        assert!(
            sht4x::Sht4x::new(&mut bus, NoopDelay, 0x44)
                .measure(sht4x::Precision::Low)
                .is_err()
        );
    }
}
