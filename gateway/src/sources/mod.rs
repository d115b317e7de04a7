//! Southbound sources.
//!
//! | module | what |
//! |---|---|
//! | [`modbus`] | polling Modbus TCP and RTU buses |
//! | [`mqtt`] | readings nodes publish over MQTT |

pub mod modbus;
pub mod mqtt;
