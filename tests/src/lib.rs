//! End-to-end tests of the whole Tianzhong chain.
//!
//! # Module map
//!
//! | test | what it runs |
//! |---|---|
//! | `tests/qemu_node.rs` | the STM32F405 firmware under `qemu-system-arm -M netduinoplus2`, polled over Modbus RTU from the host with tokio-modbus |
//!
//! Shared harness code (starting brokers, fleets and gateways) will live in this library as
//! the gateway and simulator arrive.
