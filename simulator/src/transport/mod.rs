//! How the fleet's nodes are reached.
//!
//! | module | what |
//! |---|---|
//! | [`modbus_tcp`] | Modbus TCP listeners |
//! | [`modbus_rtu`] | Modbus RTU buses on pseudo-terminals |
//! | [`mqtt`] | MQTT clients publishing telemetry and status |

pub mod modbus_rtu;
pub mod modbus_tcp;
pub mod mqtt;
