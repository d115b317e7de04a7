//! Tianzhong sensor-node firmware, `no_std` and without a heap.
//!
//! # Module map
//!
//! | module | what |
//! |---|---|
//! | [`hal`] | our small hardware traits: ADC channels and pulse counters |
//! | [`drivers`] | sensor drivers, one per file, tested against their datasheets |
//! | [`modbus`] | the Modbus RTU slave: frame assembly, function codes, exceptions |
//! | [`sim`] | simulated sensor hardware (I²C sensors, ADC, pulse counter) for the QEMU board, the simulator and tests |
//! | [`node`] | the sans-IO node core: sampling, calibration, quality, local alarm, register image, configuration |
//! | [`update`] | signed A/B firmware updates: the update receiver, the boot state, the boot decision |
//!
//! The node speaks the profile defined in [`tianzhong_protocol::registers::profile`].
#![no_std]

#[cfg(test)]
extern crate std;

pub mod drivers;
pub mod hal;
pub mod modbus;
pub mod node;
pub mod sim;
pub mod update;
