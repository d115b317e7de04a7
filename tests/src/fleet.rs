//! Simulated fleets for the gateway's end-to-end tests: building a fleet of Modbus TCP, Modbus
//! RTU and MQTT buses programmatically, running it on real time with its transports, and
//! writing the gateway configuration that polls and subscribes to exactly that fleet.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use tianzhong_protocol::{NodeId, Quantity, SiteId};
use tianzhong_simulator::clock::SimClock;
use tianzhong_simulator::fault::ScheduledFault;
use tianzhong_simulator::fleet::Fleet;
use tianzhong_simulator::node::{ChannelSpec, NodeSpec};
use tianzhong_simulator::signal::Component;
use tianzhong_simulator::spec::{BusKind, BusSpec, FleetSpec};
use tianzhong_simulator::transport::{self, Transport};
use tokio::task::JoinHandle;

use crate::services::TempDir;

/// The site every test node belongs to.
pub const SITE: &str = "e2e-site";

/// The channel sets nodes get in turn: gas detectors (gas bridges on the ADC), air-quality
/// analysers (direct) and mine sensors. Every one of these quantities is sampled each second by
/// the firmware's factory configuration.
pub const PROFILES: [&[(Quantity, f64, f64)]; 3] = [
    &[
        (Quantity::CombustibleGas, 2.0, 0.3),
        (Quantity::H2s, 1.0, 0.2),
        (Quantity::Oxygen, 20.9, 0.05),
    ],
    &[
        (Quantity::Pm25, 40.0, 3.0),
        (Quantity::Pm10, 70.0, 5.0),
        (Quantity::No2, 45.0, 2.0),
    ],
    &[(Quantity::Methane, 0.3, 0.05), (Quantity::Co, 5.0, 0.5)],
];

/// Unix time now, in ms.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A fleet description being put together.
#[derive(Debug)]
pub struct FleetBuilder {
    dir: TempDir,
    buses: Vec<BusSpec>,
    nodes: Vec<NodeSpec>,
    faults: Vec<ScheduledFault>,
}

impl FleetBuilder {
    /// An empty fleet; RTU links go into a temporary directory of its own.
    pub fn new() -> anyhow::Result<FleetBuilder> {
        Ok(FleetBuilder {
            dir: TempDir::new("tz-e2e-fleet")?,
            buses: Vec::new(),
            nodes: Vec::new(),
            faults: Vec::new(),
        })
    }

    fn add_nodes(&mut self, bus: &str, count: usize) -> Vec<String> {
        let mut ids = Vec::new();
        for i in 0..count {
            let id = format!("{bus}-{i:03}");
            let profile = PROFILES[(self.nodes.len()) % PROFILES.len()];
            self.nodes.push(NodeSpec {
                id: NodeId::new(&id).expect("valid node id"),
                site: SiteId::new(SITE).expect("valid site id"),
                bus: bus.to_owned(),
                unit: (i % 247 + 1) as u8,
                model: "TZ-E2E".into(),
                channels: profile
                    .iter()
                    .map(|&(quantity, value, sigma)| ChannelSpec {
                        quantity,
                        signal: vec![Component::Constant { value }, Component::Noise { sigma }],
                        clamp: Some((0.0, 1000.0)),
                        sensor: None,
                    })
                    .collect(),
            });
            ids.push(id);
        }
        ids
    }

    /// A Modbus TCP bus of `count` nodes behind one listener (`per_node = false`), by unit ID.
    pub fn modbus_tcp(&mut self, bus: &str, count: usize) -> Vec<String> {
        self.buses.push(BusSpec {
            name: bus.to_owned(),
            kind: BusKind::ModbusTcp {
                listen: "127.0.0.1:0".parse().expect("address"),
                per_node: false,
            },
        });
        self.add_nodes(bus, count)
    }

    /// A Modbus RTU bus of `count` nodes on a pseudo-terminal at 115200 baud, unpaced.
    pub fn modbus_rtu(&mut self, bus: &str, count: usize) -> Vec<String> {
        self.buses.push(BusSpec {
            name: bus.to_owned(),
            kind: BusKind::ModbusRtu {
                link: self.dir.path().join(format!("{bus}.tty")),
                baud: 115_200,
                pace: false,
            },
        });
        self.add_nodes(bus, count)
    }

    /// A Modbus RTU bus of `count` nodes on a pseudo-terminal at `baud`; with `pace`, the
    /// nodes' replies take their time at that baud rate, as on a real line.
    pub fn modbus_rtu_at(&mut self, bus: &str, count: usize, baud: u32, pace: bool) -> Vec<String> {
        self.buses.push(BusSpec {
            name: bus.to_owned(),
            kind: BusKind::ModbusRtu {
                link: self.dir.path().join(format!("{bus}.tty")),
                baud,
                pace,
            },
        });
        self.add_nodes(bus, count)
    }

    /// An MQTT bus of `count` nodes publishing every sample round to `broker`.
    pub fn mqtt(&mut self, bus: &str, broker: SocketAddr, count: usize) -> Vec<String> {
        self.buses.push(BusSpec {
            name: bus.to_owned(),
            kind: BusKind::Mqtt {
                broker,
                publish_every_s: 1,
            },
        });
        self.add_nodes(bus, count)
    }

    /// Schedules a fault.
    pub fn fault(&mut self, fault: ScheduledFault) {
        self.faults.push(fault);
    }

    /// Builds the fleet (keeping every sample as ground truth) on a clock running at real
    /// speed whose simulated 0 is now, starts stepping it and starts every transport.
    pub async fn start(self) -> anyhow::Result<SimFleet> {
        let spec = FleetSpec {
            name: "gateway-e2e".into(),
            seed: 20_250_101,
            buses: self.buses,
            nodes: self.nodes,
            faults: self.faults,
            base_dir: self.dir.path().to_owned(),
        };
        let epoch_ms = unix_ms();
        let fleet = Arc::new(Fleet::build(&spec, SimClock::new(epoch_ms, 1.0), true)?);
        let stepper = tokio::spawn(Arc::clone(&fleet).run(Duration::from_millis(50)));
        let transports = transport::start_all(&fleet, spec.seed)
            .await
            .context("starting the fleet's transports")?;
        let mut tcp = HashMap::new();
        for t in &transports {
            if let Transport::Tcp(server) = t {
                tcp.insert(server.bus().to_owned(), server.addrs()[0]);
            }
        }
        Ok(SimFleet {
            fleet,
            spec,
            epoch_ms,
            transports,
            tcp,
            stepper,
            _dir: self.dir,
        })
    }
}

/// A running simulated fleet.
pub struct SimFleet {
    /// The fleet; `fleet.truth` is the ground truth.
    pub fleet: Arc<Fleet>,
    /// What it was built from.
    pub spec: FleetSpec,
    /// Unix ms of simulated time 0.
    pub epoch_ms: u64,
    transports: Vec<Transport>,
    tcp: HashMap<String, SocketAddr>,
    stepper: JoinHandle<()>,
    _dir: TempDir,
}

impl SimFleet {
    /// Simulated time now.
    pub fn now(&self) -> u64 {
        self.fleet.clock.now()
    }

    /// The quantities of each node's channels, by node id.
    pub fn quantities(&self) -> HashMap<String, Vec<Quantity>> {
        self.spec
            .nodes
            .iter()
            .map(|n| {
                (
                    n.id.to_string(),
                    n.channels.iter().map(|c| c.quantity).collect(),
                )
            })
            .collect()
    }

    /// Ids of the nodes on `bus`.
    pub fn nodes_on(&self, bus: &str) -> Vec<String> {
        self.spec
            .nodes
            .iter()
            .filter(|n| n.bus == bus)
            .map(|n| n.id.to_string())
            .collect()
    }

    /// The MQTT transports' statistics, summed.
    pub fn mqtt_stats(&self) -> Vec<transport::mqtt::MqttStats> {
        self.transports
            .iter()
            .filter_map(|t| match t {
                Transport::Mqtt(h) => Some(h.stats()),
                _ => None,
            })
            .collect()
    }

    /// Waits until every MQTT node is connected.
    pub async fn wait_mqtt_connected(&self, timeout: Duration) -> bool {
        for t in &self.transports {
            if let Transport::Mqtt(h) = t
                && !h.wait_connected(timeout).await
            {
                return false;
            }
        }
        true
    }

    /// Stops every transport (MQTT nodes disconnect cleanly); the fleet keeps sampling, but
    /// nothing is served or published any more.
    pub async fn stop_transports(&mut self) {
        for t in self.transports.drain(..) {
            t.shutdown().await;
        }
    }

    /// The gateway configuration polling every Modbus node of this fleet (Tianzhong profile,
    /// every `poll_interval_s`) and, when given, subscribing to the fleet's broker, writing to
    /// VictoriaMetrics and publishing upstream.
    pub fn gateway_toml(&self, settings: &GatewaySettings) -> String {
        let mut t = String::new();
        let data_dir = settings.data_dir.display();
        let _ = writeln!(
            t,
            "[gateway]\nid = \"gw-e2e\"\ndata_dir = \"{data_dir}\"\nhttp_listen = \"off\"\n"
        );
        let _ = writeln!(t, "[sink.local_store]\nenabled = false\n");
        for bus in &self.spec.buses {
            match &bus.kind {
                BusKind::ModbusTcp { .. } => {
                    let _ = writeln!(
                        t,
                        "[[bus]]\nname = \"{}\"\nkind = \"modbus_tcp\"\naddress = \"{}\"\n\
                         timeout_ms = {}\nretries = {}\n",
                        bus.name, self.tcp[&bus.name], settings.timeout_ms, settings.retries
                    );
                }
                BusKind::ModbusRtu { link, baud, .. } => {
                    let _ = writeln!(
                        t,
                        "[[bus]]\nname = \"{}\"\nkind = \"modbus_rtu\"\ndevice = \"{}\"\n\
                         baud = {baud}\nparity = \"none\"\ntimeout_ms = {}\nretries = {}\n",
                        bus.name,
                        link.display(),
                        settings.timeout_ms,
                        settings.retries
                    );
                }
                BusKind::Mqtt { .. } => continue,
            }
            for n in self.spec.nodes.iter().filter(|n| n.bus == bus.name) {
                let quantities: Vec<String> = n
                    .channels
                    .iter()
                    .map(|c| format!("\"{}\"", c.quantity.key()))
                    .collect();
                let _ = writeln!(
                    t,
                    "[[device]]\nid = \"{}\"\nsite = \"{}\"\nbus = \"{}\"\nunit = {}\n\
                     poll_interval_s = {}\nprofile = \"tianzhong\"\nquantities = [{}]\n\
                     model = \"{}\"\n",
                    n.id,
                    n.site,
                    n.bus,
                    n.unit,
                    settings.poll_interval_s,
                    quantities.join(", "),
                    n.model
                );
            }
        }
        if let Some(broker) = settings.mqtt_source {
            let _ = writeln!(t, "[mqtt_source]\nbroker = \"{broker}\"\n");
        }
        if let Some(url) = &settings.influxdb {
            let _ = writeln!(
                t,
                "[sink.influxdb]\nurl = \"{url}\"\norg = \"e2e\"\nbucket = \"e2e\"\n\
                 batch_size = 5000\nflush_interval_ms = 200\n"
            );
        }
        if let Some((broker, prefix)) = &settings.upstream {
            let _ = writeln!(
                t,
                "[sink.upstream_mqtt]\nbroker = \"{broker}\"\ntopic_prefix = \"{prefix}\"\nqos = 1\n"
            );
        }
        t
    }
}

impl Drop for SimFleet {
    fn drop(&mut self) {
        self.stepper.abort();
    }
}

/// What the generated gateway configuration says beyond the fleet itself.
#[derive(Clone, Debug)]
pub struct GatewaySettings {
    /// `[gateway] data_dir` (the local store is disabled; nothing is written there).
    pub data_dir: PathBuf,
    /// Every device's poll interval, in seconds.
    pub poll_interval_s: f64,
    /// Every bus's request timeout.
    pub timeout_ms: u64,
    /// Every bus's retries.
    pub retries: u32,
    /// `[mqtt_source] broker`.
    pub mqtt_source: Option<SocketAddr>,
    /// `[sink.influxdb] url`.
    pub influxdb: Option<String>,
    /// `[sink.upstream_mqtt]` broker and topic prefix.
    pub upstream: Option<(SocketAddr, String)>,
}

impl GatewaySettings {
    /// One poll a second, 1 s timeouts, 2 retries, no MQTT and no sinks.
    pub fn new(data_dir: &Path) -> GatewaySettings {
        GatewaySettings {
            data_dir: data_dir.to_owned(),
            poll_interval_s: 1.0,
            timeout_ms: 1000,
            retries: 2,
            mqtt_source: None,
            influxdb: None,
            upstream: None,
        }
    }
}
