//! The Modbus source.

pub mod plan;
