//! Tianzhong gateway: polls Modbus nodes, takes MQTT readings, evaluates alarms and forwards
//! readings durably to the unified sensing network.
//!
//! # Module map
//!
//! | module | what |
//! |---|---|
//! | [`config`] | the gateway's TOML configuration, validated up front |
//! | [`sources`] | southbound sources (Modbus read planning and per-bus scheduling so far) |
//! | [`sinks`] | northbound sinks (InfluxDB line protocol so far) |
//!
//! The pipeline, the MQTT source, transforms, the outbox and the console land with their
//! issues, on top of [`tianzhong_protocol`].

pub mod config;
pub mod sinks;
pub mod sources;
