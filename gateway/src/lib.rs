//! Tianzhong gateway: polls Modbus nodes, takes MQTT readings, evaluates alarms and forwards
//! readings durably to the unified sensing network.
//!
//! # Module map
//!
//! Nothing is implemented yet; sources, transforms, sinks, the outbox and the console land
//! with their own issues, on top of [`tianzhong_protocol`].
