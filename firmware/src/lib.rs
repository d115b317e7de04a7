//! Tianzhong sensor-node firmware, `no_std` and without a heap.
//!
//! # Module map
//!
//! Nothing is implemented yet; the crate exists so that the workspace, its lints and the
//! embedded build are in place. The node core (drivers, sampling, the local fail-safe alarm,
//! the Modbus RTU slave and the update receiver) lands with its own issue. It speaks the node
//! profile defined in [`tianzhong_protocol::registers::profile`].
#![no_std]
