//! Southbound sources.

pub mod modbus;
