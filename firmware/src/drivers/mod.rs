//! Sensor drivers, one per file, generic over embedded-hal 1.0 and the [`crate::hal`] traits.
//!
//! Each driver owns what it talks through (pass `&mut bus` to share an I²C bus), has a typed
//! `Error<E>` generic over the bus or channel error, reports values as f32 as the register image
//! holds them, and reports a sensor fault as an error, never as a value. Tests check each against
//! its datasheet's commands, CRCs and conversion formulas.
//!
//! # Module map
//!
//! | module | what |
//! |---|---|
//! | [`sensirion`] | Sensirion I²C framing shared by the two below: CRC-8 (0x31, init 0xFF), word+CRC decoding |
//! | [`sht4x`] | Sensirion SHT4x temperature and humidity (I²C) |
//! | [`scd4x`] | Sensirion SCD40/SCD41 CO₂, temperature and humidity (I²C) |
//! | [`gas_adc`] | catalytic (pellistor) or electrochemical gas sensor on an ADC, zero/span calibration to %LEL or ppm |
//! | [`loop_input`] | 4–20 mA transmitter across a shunt on an ADC, NAMUR NE 43 faults |
//! | [`rain_gauge`] | tipping-bucket rain gauge on a pulse counter: amount and intensity |

pub mod gas_adc;
pub mod loop_input;
pub mod rain_gauge;
pub mod scd4x;
pub mod sensirion;
pub mod sht4x;
