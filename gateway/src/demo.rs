//! `tianzhong demo`: an MQTT broker, a simulated fleet and the gateway, in one process, with
//! nothing external.
//!
//! 1. An embedded broker (rumqttd) listens on loopback wherever the scenario's MQTT buses
//!    expect one.
//! 2. The fleet of the scenario (the simulator crate: real firmware logic on simulated
//!    sensors) starts its Modbus TCP listeners, Modbus RTU lines on pseudo-terminals and MQTT
//!    clients.
//! 3. A gateway configuration is written for that fleet ([`gateway_toml`]): one bus per RTU
//!    line and TCP endpoint, every node as a Tianzhong profile device, the MQTT source on the
//!    broker, the local store under the data directory and, when asked, InfluxDB. It is saved
//!    as `gateway.toml` in the data directory and started through the same path as
//!    `tianzhong run`.
//! 4. A status line every few seconds says how many nodes answer, readings per second, the
//!    nodes' own (fail-safe) alarm levels and the alarms the gateway's engine has raised.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use tianzhong_protocol::AlarmLevel;
use tianzhong_simulator::clock::SimClock;
use tianzhong_simulator::fleet::Fleet;
use tianzhong_simulator::spec::{BusKind, FleetSpec};
use tianzhong_simulator::transport::{self, Transport};
use tracing::info;

use crate::gateway::Gateway;

/// The scenario the demo runs when given none: a chemical plant with a gas leak, on all three
/// transports.
pub const DEFAULT_SCENARIO: &str = include_str!("../../simulator/scenarios/chemical-plant.toml");

/// How to run the demo.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// Scenario file; the built-in chemical plant when `None`.
    pub scenario: Option<PathBuf>,
    /// Simulated seconds per real second.
    pub speed: f64,
    /// Stop after this many real seconds (run until Ctrl-C when `None`).
    pub duration: Option<Duration>,
    /// Where the local store and the generated configuration go.
    pub data_dir: PathBuf,
    /// Where `/metrics` is served.
    pub http_listen: SocketAddr,
    /// An InfluxDB to write to as well: `(url, org, bucket)`; the token from
    /// `TIANZHONG_INFLUXDB_TOKEN`.
    pub influxdb: Option<(String, String, String)>,
}

/// Writes the gateway configuration for a fleet whose transports are `started`.
pub fn gateway_toml(
    spec: &FleetSpec,
    started: &[Transport],
    data_dir: &Path,
    poll_interval: Duration,
    http_listen: Option<SocketAddr>,
) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "# Written by `tianzhong demo` for scenario `{}`.\n",
        spec.name
    );
    let _ = writeln!(
        t,
        "[gateway]\nid = \"demo-gateway\"\ndata_dir = {:?}\nhttp_listen = \"{}\"\n",
        data_dir.display().to_string(),
        http_listen.map_or("off".to_owned(), |a| a.to_string())
    );
    let poll = poll_interval.as_secs_f64();
    let quantities = |i: usize| {
        spec.nodes[i]
            .channels
            .iter()
            .map(|c| format!("\"{}\"", c.quantity.key()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut mqtt_brokers = Vec::new();
    for (bus, server) in spec.buses.iter().zip(started) {
        let nodes: Vec<usize> = (0..spec.nodes.len())
            .filter(|i| spec.nodes[*i].bus == bus.name)
            .collect();
        match (&bus.kind, server) {
            (BusKind::ModbusTcp { per_node, .. }, Transport::Tcp(s)) => {
                // A listener per node is an endpoint per node, and so a bus each.
                let endpoints: Vec<(String, SocketAddr, Vec<usize>)> = if *per_node {
                    nodes
                        .iter()
                        .enumerate()
                        .filter_map(|(k, i)| {
                            s.addr_of(k).map(|a| {
                                (format!("{}-{}", bus.name, spec.nodes[*i].id), a, vec![*i])
                            })
                        })
                        .collect()
                } else {
                    s.addrs()
                        .first()
                        .map(|a| vec![(bus.name.clone(), *a, nodes.clone())])
                        .unwrap_or_default()
                };
                for (name, addr, members) in endpoints {
                    let _ = writeln!(
                        t,
                        "[[bus]]\nname = \"{name}\"\nkind = \"modbus_tcp\"\naddress = \"{addr}\"\ntimeout_ms = 500\n"
                    );
                    for i in members {
                        device(&mut t, spec, i, &name, poll, &quantities(i));
                    }
                }
            }
            (BusKind::ModbusRtu { link, baud, .. }, Transport::Rtu(_)) => {
                let _ = writeln!(
                    t,
                    "[[bus]]\nname = \"{}\"\nkind = \"modbus_rtu\"\ndevice = {:?}\nbaud = {baud}\nparity = \"none\"\ntimeout_ms = 500\n",
                    bus.name,
                    link.display().to_string()
                );
                for i in nodes {
                    device(&mut t, spec, i, &bus.name, poll, &quantities(i));
                }
            }
            (BusKind::Mqtt { broker, .. }, _) if !mqtt_brokers.contains(broker) => {
                mqtt_brokers.push(*broker);
            }
            _ => {}
        }
    }
    if let Some(broker) = mqtt_brokers.first() {
        let _ = writeln!(
            t,
            "[mqtt_source]\nbroker = \"{broker}\"\nclient_id = \"demo-gateway-source\"\n"
        );
    }
    t
}

fn device(t: &mut String, spec: &FleetSpec, i: usize, bus: &str, poll: f64, quantities: &str) {
    let n = &spec.nodes[i];
    let _ = writeln!(
        t,
        "[[device]]\nid = \"{}\"\nsite = \"{}\"\nbus = \"{bus}\"\nunit = {}\npoll_interval_s = {poll}\nprofile = \"tianzhong\"\nquantities = [{quantities}]\n",
        n.id, n.site, n.unit
    );
}

/// Starts rumqttd on `addr` on a thread of its own (it runs its own runtime and never
/// returns).
pub fn start_broker(addr: SocketAddr) -> anyhow::Result<()> {
    use std::collections::HashMap;
    // Refuse early and clearly if the port is taken: rumqttd would only log it on its thread.
    std::net::TcpListener::bind(addr)
        .with_context(|| format!("MQTT broker: {addr} is in use (another demo running?)"))?;
    let server = rumqttd::ServerSettings {
        name: format!("demo-{addr}"),
        listen: addr,
        tls: None,
        next_connection_delay_ms: 0,
        connections: rumqttd::ConnectionSettings {
            connection_timeout_ms: 5000,
            max_payload_size: 256 * 1024,
            max_inflight_count: 500,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        },
    };
    let config = rumqttd::Config {
        id: 0,
        router: rumqttd::RouterConfig {
            max_connections: 10_010,
            max_outgoing_packet_count: 1000,
            max_segment_size: 16 * 1024 * 1024,
            max_segment_count: 10,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(HashMap::from([("demo".to_owned(), server)])),
        v5: None,
        ws: None,
        cluster: None,
        console: None,
        bridge: None,
        prometheus: None,
        metrics: None,
    };
    std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(config);
            if let Err(e) = broker.start() {
                tracing::error!("embedded MQTT broker stopped: {e}");
            }
        })?;
    Ok(())
}

async fn wait_listening(addr: SocketAddr) -> bool {
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Runs the demo.
pub async fn run(options: DemoOptions) -> anyhow::Result<()> {
    let spec = match &options.scenario {
        Some(path) => tianzhong_simulator::scenario::load(path)?,
        None => tianzhong_simulator::scenario::parse(
            DEFAULT_SCENARIO,
            Path::new("simulator/scenarios/chemical-plant.toml"),
        )?,
    };
    std::fs::create_dir_all(&options.data_dir)
        .with_context(|| format!("creating {}", options.data_dir.display()))?;
    let data_dir = options.data_dir.canonicalize()?;
    // The demo's users start afresh every run, so the admin's one-time password is printed
    // every time (a real gateway prints it once, on its first run, and never again).
    for f in ["users.sqlite", "users.sqlite-wal", "users.sqlite-shm"] {
        let _ = std::fs::remove_file(data_dir.join(f));
    }

    eprintln!(
        "tianzhong demo: scenario `{}`, {} nodes on {} buses, speed x{}",
        spec.name,
        spec.nodes.len(),
        spec.buses.len(),
        options.speed
    );
    for bus in &spec.buses {
        if let BusKind::Mqtt { broker, .. } = bus.kind {
            start_broker(broker)?;
            anyhow::ensure!(
                wait_listening(broker).await,
                "embedded MQTT broker did not start on {broker}"
            );
            eprintln!("embedded MQTT broker (rumqttd) on mqtt://{broker}");
        }
    }

    let epoch = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as u64;
    let fleet = Arc::new(Fleet::build(
        &spec,
        SimClock::new(epoch, options.speed),
        false,
    )?);
    let started = transport::start_all(&fleet, spec.seed).await?;
    let fleet_task = tokio::spawn(Arc::clone(&fleet).run(Duration::from_millis(50)));

    // Nodes sample once a simulated second; polling at that pace (never faster than 10 Hz)
    // reads every sample.
    let poll = Duration::from_secs_f64((1.0 / options.speed).clamp(0.1, 1.0));
    let mut toml = gateway_toml(&spec, &started, &data_dir, poll, Some(options.http_listen));
    if let Some((url, org, bucket)) = &options.influxdb {
        let _ = writeln!(
            toml,
            "[sink.influxdb]\nurl = \"{url}\"\norg = \"{org}\"\nbucket = \"{bucket}\"\n"
        );
    }
    let config_path = data_dir.join("gateway.toml");
    std::fs::write(&config_path, &toml)?;
    let config = crate::config::parse(&toml, &config_path, &|k| std::env::var(k).ok())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let devices = config.devices.len();
    let gateway = Gateway::start(config).await?;
    let metrics = Arc::clone(gateway.metrics());

    eprintln!("gateway: {devices} polled devices, MQTT source on the embedded broker");
    eprintln!("  configuration   {}", config_path.display());
    eprintln!(
        "  local store     {}  (sqlite3 it: SELECT * FROM reading ORDER BY ts_ms DESC LIMIT 10;)",
        data_dir
            .join(crate::sinks::local_store::FILE_NAME)
            .display()
    );
    if let Some(addr) = gateway.http_addr() {
        eprintln!("  console         http://{addr}/  (log in as admin, below)");
        eprintln!("  metrics         http://{addr}/metrics");
        eprintln!(
            "  API             http://{addr}/api/openapi.json (POST /api/login for a token), live: /api/stream"
        );
    }
    if let Some(secret) = gateway.first_run_secret() {
        eprintln!(
            "  admin           user `admin`, one-time password {secret} (the demo resets its users every run)"
        );
    }
    if options.speed != 1.0 {
        eprintln!(
            "  note            simulated clocks run x{} real time, so MQTT nodes' timestamps run \
             ahead and the gateway restamps them (tianzhong_readings_flagged_total{{reason=\"clock_skew\"}})",
            options.speed
        );
    }
    eprintln!(
        "  alarm audit     {}",
        data_dir
            .join(crate::sinks::alarm_audit::FILE_NAME)
            .display()
    );
    eprintln!("Ctrl-C stops.\n");

    let started_at = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_secs(5));
    ticker.tick().await;
    let mut last = (Instant::now(), 0u64);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = tokio::signal::ctrl_c() => break,
        }
        let forwarded = metrics.readings_forwarded.get();
        let rate = (forwarded - last.1) as f64 / last.0.elapsed().as_secs_f64();
        last = (Instant::now(), forwarded);
        let rows = &metrics.devices.rows;
        let answering = rows
            .iter()
            .filter(|r| {
                r.counters.quarantined.load(Relaxed) == 0 && r.counters.ok.load(Relaxed) > 0
            })
            .count();
        let mut levels = [0usize; 5];
        for r in rows {
            levels[(r.counters.alarm_level.load(Relaxed) as usize).min(4)] += 1;
        }
        let sim_s = fleet.stepped_to() / 1000;
        let line = format!(
            "[sim {:02}:{:02}:{:02}] polled {answering}/{} answering | MQTT messages {} | readings {forwarded} ({rate:.0}/s) | malformed {} | nodes' own alarms: red {} yellow {} | gateway alarms: red {} orange {} yellow {} blue {}",
            sim_s / 3600,
            sim_s / 60 % 60,
            sim_s % 60,
            rows.len(),
            metrics.mqtt_messages_sum.get(),
            metrics.malformed_sum.get(),
            levels[4],
            levels[2],
            metrics.active_alarms(AlarmLevel::Red),
            metrics.active_alarms(AlarmLevel::Orange),
            metrics.active_alarms(AlarmLevel::Yellow),
            metrics.active_alarms(AlarmLevel::Blue),
        );
        eprintln!("{line}");
        info!(target: "demo", "{line}");
        if options.duration.is_some_and(|d| started_at.elapsed() >= d) {
            break;
        }
    }
    eprintln!("stopping: fleet, then gateway (flushing its sinks)");
    fleet_task.abort();
    for t in started {
        t.shutdown().await;
    }
    gateway.shutdown(Duration::from_secs(10)).await;
    eprintln!(
        "done: {} readings forwarded, kept in {}",
        metrics.readings_forwarded.get(),
        data_dir
            .join(crate::sinks::local_store::FILE_NAME)
            .display()
    );
    Ok(())
}
