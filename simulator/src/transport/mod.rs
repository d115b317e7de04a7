//! How the fleet's nodes are reached.
//!
//! | module | what |
//! |---|---|
//! | [`modbus_tcp`] | Modbus TCP listeners |
//! | [`modbus_rtu`] | Modbus RTU buses on pseudo-terminals |
//! | [`mqtt`] | MQTT clients publishing telemetry and status |
//! | [`mqtt_client`] | the publish-only MQTT 3.1.1 client each MQTT node runs |

pub mod modbus_rtu;
pub mod modbus_tcp;
pub mod mqtt;
pub mod mqtt_client;
