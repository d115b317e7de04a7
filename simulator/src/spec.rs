//! What a fleet is made of, once a scenario file has been read and checked.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::fault::ScheduledFault;
use crate::node::NodeSpec;

/// How the nodes of a bus are reached.
#[derive(Clone, Debug, PartialEq)]
pub enum BusKind {
    /// Modbus TCP. With `per_node` each node listens on its own port, counting up from
    /// `listen`'s; otherwise every node of the bus sits behind the one listener under its unit
    /// ID, as behind a serial-to-Ethernet gateway.
    ModbusTcp {
        /// The (first) listening address; loopback only.
        listen: SocketAddr,
        /// One listener per node.
        per_node: bool,
    },
    /// Modbus RTU on a pseudo-terminal; the bus's end for masters is a symlink at `link`.
    ModbusRtu {
        /// Where to put the symlink to the master's end of the line.
        link: PathBuf,
        /// The line's baud rate (sets t1.5 and t3.5; and the byte rate when `pace`).
        baud: u32,
        /// Whether replies go out at the byte rate of `baud` rather than at once.
        pace: bool,
    },
    /// MQTT: each node connects to the broker and publishes telemetry and status.
    Mqtt {
        /// The broker's address; loopback only.
        broker: SocketAddr,
        /// How often, in simulated seconds, nodes publish their latest sample.
        publish_every_s: u32,
    },
}

/// A bus.
#[derive(Clone, Debug, PartialEq)]
pub struct BusSpec {
    /// Its name, unique in the scenario.
    pub name: String,
    /// Its kind.
    pub kind: BusKind,
}

/// A fleet, ready to build.
#[derive(Clone, Debug)]
pub struct FleetSpec {
    /// Scenario name.
    pub name: String,
    /// The seed every random signal derives from.
    pub seed: u64,
    /// Buses.
    pub buses: Vec<BusSpec>,
    /// Nodes, each on one of the buses.
    pub nodes: Vec<NodeSpec>,
    /// Faults scheduled by the scenario.
    pub faults: Vec<ScheduledFault>,
    /// The scenario file's directory (replay files are relative to it).
    pub base_dir: PathBuf,
}
