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

use std::sync::Arc;

use anyhow::Context as _;

use crate::fleet::Fleet;
use crate::spec::BusKind;

/// A started transport, kept until shutdown.
pub enum Transport {
    /// A Modbus TCP bus.
    Tcp(modbus_tcp::ModbusTcpServer),
    /// A Modbus RTU bus.
    Rtu(modbus_rtu::ModbusRtuServer),
    /// An MQTT bus.
    Mqtt(mqtt::Handle),
}

impl Transport {
    /// Stops it (MQTT nodes get 5 s to disconnect cleanly).
    pub async fn shutdown(self) {
        match self {
            Transport::Tcp(s) => s.shutdown().await,
            Transport::Rtu(s) => s.shutdown().await,
            Transport::Mqtt(h) => h.shutdown(std::time::Duration::from_secs(5)).await,
        }
    }
}

/// Starts every bus of the fleet, printing where each can be reached to stderr.
pub async fn start_all(fleet: &Arc<Fleet>, seed: u64) -> anyhow::Result<Vec<Transport>> {
    let mut started = Vec::new();
    for bus in fleet.buses.clone() {
        let nodes = fleet.nodes_on_bus(&bus.name).len();
        let t = match &bus.kind {
            BusKind::ModbusTcp { .. } => {
                let server = modbus_tcp::start(Arc::clone(fleet), &bus, seed)
                    .await
                    .with_context(|| format!("bus {}: Modbus TCP", bus.name))?;
                let addrs: Vec<String> = server.addrs().iter().map(ToString::to_string).collect();
                eprintln!(
                    "bus {}: Modbus TCP, {nodes} nodes on {}",
                    bus.name,
                    addrs.join(" ")
                );
                Transport::Tcp(server)
            }
            BusKind::ModbusRtu { baud, .. } => {
                let server = modbus_rtu::start(Arc::clone(fleet), &bus, seed)
                    .await
                    .with_context(|| format!("bus {}: Modbus RTU", bus.name))?;
                eprintln!(
                    "bus {}: Modbus RTU {baud} baud, {nodes} nodes on {} (-> {})",
                    bus.name,
                    server.link().display(),
                    server.pty().display()
                );
                Transport::Rtu(server)
            }
            BusKind::Mqtt { broker, .. } => {
                let handle = mqtt::start(Arc::clone(fleet), bus.clone())
                    .await
                    .with_context(|| format!("bus {}: MQTT broker {broker}", bus.name))?;
                eprintln!(
                    "bus {}: MQTT, {nodes} nodes publishing to {broker}",
                    bus.name
                );
                Transport::Mqtt(handle)
            }
        };
        started.push(t);
    }
    Ok(started)
}
