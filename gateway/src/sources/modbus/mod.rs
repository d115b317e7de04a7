//! The Modbus source.

pub mod plan;
pub mod scheduler;
