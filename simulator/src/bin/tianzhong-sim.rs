//! `tianzhong-sim`: runs a simulated sensor fleet.
//!
//! ```text
//! tianzhong-sim run simulator/scenarios/chemical-plant.toml --seed 7 --speed 10
//! tianzhong-sim check simulator/scenarios/mine.toml
//! tianzhong-sim bench --nodes 10000 --seconds 20 --transport step
//! ```

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use tianzhong_protocol::{NodeId, Quantity, SiteId};
use tianzhong_simulator::bench::{BenchReport, measure, process_usage};
use tianzhong_simulator::clock::SimClock;
use tianzhong_simulator::control::{self, Control};
use tianzhong_simulator::fleet::Fleet;
use tianzhong_simulator::node::{ChannelSpec, NodeSpec};
use tianzhong_simulator::scenario;
use tianzhong_simulator::signal::Component;
use tianzhong_simulator::spec::{BusKind, BusSpec, FleetSpec};
use tianzhong_simulator::transport::{self, Transport, modbus_tcp};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "tianzhong-sim",
    version,
    about = "Tianzhong simulated sensor fleet"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs a scenario: the fleet, its transports and the control interface.
    Run {
        /// The scenario file.
        scenario: PathBuf,
        /// Seed for every random signal; overrides the scenario's.
        #[arg(long)]
        seed: Option<u64>,
        /// Simulated seconds per real second.
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
        /// Stop after this many simulated seconds (default: run until interrupted).
        #[arg(long)]
        duration: Option<u64>,
        /// Address of the HTTP control interface (loopback only; port 0 picks a free one).
        #[arg(long, default_value = "127.0.0.1:0")]
        control: SocketAddr,
        /// Write the sample log (ground truth) as CSV to this file at the end.
        #[arg(long)]
        truth: Option<PathBuf>,
    },
    /// Reads and checks a scenario, and builds its nodes, without running it.
    Check {
        /// The scenario file.
        scenario: PathBuf,
    },
    /// Measures nodes served per core at 1 Hz and memory per node.
    Bench {
        /// Nodes in the fleet.
        #[arg(long, default_value_t = 10_000)]
        nodes: usize,
        /// Real seconds to measure.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// What the nodes do besides sampling.
        #[arg(long, value_enum, default_value_t = BenchTransport::Step)]
        transport: BenchTransport,
    },
    /// Serves a benchmark fleet of gas detectors over Modbus TCP (247 units behind each
    /// listener) until stdin closes, for the gateway's benchmark to poll. Prints one line per
    /// listener, `ADDRESS UNITS`, then `READY`.
    #[command(hide = true)]
    BenchServe {
        /// Nodes in the fleet.
        #[arg(long)]
        nodes: usize,
        /// Channels per node, 1 to 8 (combustible gas, H2S, O2, CO, repeated).
        #[arg(long, default_value_t = 3)]
        channels: usize,
        /// Simulated seconds per real second: nodes sample once a simulated second.
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
    },
    /// The benchmark's load generator (run by `bench` as a separate process).
    #[command(hide = true)]
    BenchLoad {
        /// Listener addresses.
        #[arg(long, value_delimiter = ',')]
        addrs: Vec<SocketAddr>,
        /// Units behind each listener, polled 1..=units.
        #[arg(long)]
        units: Vec<u8>,
        /// Seconds to poll.
        #[arg(long)]
        seconds: u64,
    },
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum BenchTransport {
    /// Sampling only: the node cores and drivers, no network.
    Step,
    /// Sampling, and every node polled once a second over Modbus TCP by a load generator in
    /// another process (247 units behind each listener, as behind serial-to-Ethernet gateways).
    ModbusTcp,
    /// Sampling, and every node its own MQTT client publishing once a second to a mosquitto
    /// the benchmark starts (raise `ulimit -n` above the node count first).
    Mqtt,
}

/// A fleet of gas detectors (combustible gas, H2S, oxygen), each channel sampled once a second
/// as the firmware's factory configuration does for gas.
fn bench_fleet(nodes: usize, buses: &[BusSpec]) -> FleetSpec {
    bench_fleet_with(nodes, 3, buses)
}

/// [`bench_fleet`] with `channels` channels per node (combustible gas, H2S, O2, CO, repeated).
fn bench_fleet_with(nodes: usize, channels: usize, buses: &[BusSpec]) -> FleetSpec {
    let site = SiteId::new("bench").expect("valid id");
    let channel = |q: Quantity, value: f64, sigma: f64| ChannelSpec {
        quantity: q,
        signal: vec![Component::Constant { value }, Component::Noise { sigma }],
        clamp: None,
        sensor: None,
    };
    let nodes = (0..nodes)
        .map(|n| NodeSpec {
            id: NodeId::new(&format!("gas-{n:05}")).expect("valid id"),
            site: site.clone(),
            bus: buses[n / 247].name.clone(),
            unit: (n % 247 + 1) as u8,
            model: "TZ-GAS-3".into(),
            channels: [
                channel(Quantity::CombustibleGas, 2.0, 0.3),
                channel(Quantity::H2s, 1.0, 0.2),
                channel(Quantity::Oxygen, 20.9, 0.05),
                channel(Quantity::Co, 3.0, 0.5),
            ]
            .into_iter()
            .cycle()
            .take(channels)
            .collect(),
        })
        .collect();
    FleetSpec {
        name: "bench".into(),
        seed: 1,
        buses: buses.to_vec(),
        nodes,
        faults: vec![],
        base_dir: ".".into(),
    }
}

/// Modbus TCP listeners for a benchmark fleet: 247 units behind each, as behind
/// serial-to-Ethernet gateways, on ephemeral loopback ports.
fn bench_buses(nodes: usize) -> Vec<BusSpec> {
    (0..nodes.div_ceil(247))
        .map(|b| BusSpec {
            name: format!("bench-{b}"),
            kind: BusKind::ModbusTcp {
                listen: "127.0.0.1:0".parse().expect("address"),
                per_node: false,
            },
        })
        .collect()
}

fn bench(nodes: usize, seconds: u64, transport: BenchTransport) -> anyhow::Result<BenchReport> {
    let before = process_usage()?;
    let buses = bench_buses(nodes);
    let fleet = Arc::new(Fleet::build(
        &bench_fleet(nodes, &buses),
        SimClock::new(0, 1.0),
        false,
    )?);
    let runtime = tokio::runtime::Runtime::new()?;
    let (label, mut load) = match transport {
        BenchTransport::Mqtt => unreachable!("handled by bench::mqtt"),
        BenchTransport::Step => ("step (node cores and drivers only)".to_owned(), None),
        BenchTransport::ModbusTcp => {
            let servers = runtime.block_on(async {
                let mut servers = Vec::new();
                for bus in &buses {
                    servers.push(modbus_tcp::start(Arc::clone(&fleet), bus, 1).await?);
                }
                anyhow::Ok(servers)
            })?;
            let addrs: Vec<String> = servers.iter().map(|s| s.addrs()[0].to_string()).collect();
            let units: Vec<String> = buses
                .iter()
                .map(|b| fleet.nodes_on_bus(&b.name).len().to_string())
                .collect();
            let child = std::process::Command::new(std::env::current_exe()?)
                .args([
                    "bench-load",
                    "--addrs",
                    &addrs.join(","),
                    "--seconds",
                    &seconds.to_string(),
                ])
                .args(units.iter().flat_map(|u| ["--units", u.as_str()]))
                .stdout(std::process::Stdio::piped())
                .spawn()?;
            std::mem::forget(servers);
            (
                "Modbus TCP, every node polled at 1 Hz (status + 3 channels, 34 registers)"
                    .to_owned(),
                Some(child),
            )
        }
    };
    eprintln!("built {nodes} nodes; measuring for {seconds} s");
    let stepper = {
        let fleet = Arc::clone(&fleet);
        runtime.spawn(async move { fleet.run(Duration::from_millis(20)).await })
    };
    let start = std::time::Instant::now();
    let (wall_s, cpu_s) = measure(Duration::from_secs(seconds), || {
        std::thread::sleep(Duration::from_millis(100))
    });
    stepper.abort();
    let after = process_usage()?;
    let operations = match load.take() {
        Some(child) => {
            let out = child.wait_with_output()?;
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse::<f64>()
                .unwrap_or(0.0)
        }
        None => fleet.truth.sample_count() as f64,
    };
    Ok(BenchReport {
        label,
        nodes,
        wall_s,
        cpu_s,
        rss_before: before.rss_bytes,
        rss_after: after.rss_bytes,
        operations_per_s: operations / start.elapsed().as_secs_f64().min(seconds as f64).max(1e-9),
    })
}

/// Polls every unit behind every listener once a second with FC04 (status and three
/// channels); prints the number of good replies.
async fn bench_load(addrs: Vec<SocketAddr>, units: Vec<u8>, seconds: u64) -> anyhow::Result<u64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for (addr, count) in addrs.into_iter().zip(units) {
        tasks.push(tokio::spawn(async move {
            let mut stream = tokio::net::TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            let mut ok = 0u64;
            let mut tid = 0u16;
            let mut second = tokio::time::interval(Duration::from_secs(1));
            let mut reply = [0u8; 260];
            while tokio::time::Instant::now() < deadline {
                second.tick().await;
                for unit in 1..=count {
                    tid = tid.wrapping_add(1);
                    let [t0, t1] = tid.to_be_bytes();
                    stream
                        .write_all(&[t0, t1, 0, 0, 0, 6, unit, 0x04, 0x01, 0x00, 0x00, 34])
                        .await?;
                    stream.read_exact(&mut reply[..7]).await?;
                    let len = usize::from(u16::from_be_bytes([reply[4], reply[5]])) - 1;
                    stream.read_exact(&mut reply[7..7 + len]).await?;
                    if reply[7] == 0x04 && reply[0..2] == [t0, t1] {
                        ok += 1;
                    }
                }
            }
            anyhow::Ok(ok)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    Ok(total)
}

/// One status line: simulated time, counters, alarms.
fn status_line(fleet: &Fleet, transports: &[Transport]) -> String {
    let t = fleet.stepped_to() / 1000;
    let mut levels = [0usize; 5];
    for i in 0..fleet.len() {
        levels[usize::from(fleet.node(i).core().status().highest_alarm.code())] += 1;
    }
    let (mut requests, mut published, mut connected, mut mqtt_nodes) = (0, 0, 0, 0);
    for tr in transports {
        match tr {
            Transport::Tcp(s) => requests += s.stats().requests,
            Transport::Rtu(s) => requests += s.stats().requests,
            Transport::Mqtt(h) => {
                let st = h.stats();
                published += st.published;
                connected += st.connected;
                mqtt_nodes += h.nodes();
            }
        }
    }
    let active: usize = fleet
        .faults
        .list()
        .iter()
        .filter(|(_, f)| {
            fleet.stepped_to() >= f.from_ms && f.until_ms.is_none_or(|u| fleet.stepped_to() < u)
        })
        .count();
    format!(
        "[sim {:02}:{:02}:{:02} x{}] {} nodes | samples {} | modbus requests {} | mqtt {}/{} connected, {} published | faults {} | alarms red {} orange {} yellow {} blue {}",
        t / 3600,
        t / 60 % 60,
        t % 60,
        fleet.clock.speed(),
        fleet.len(),
        fleet.truth.sample_count(),
        requests,
        connected,
        mqtt_nodes,
        published,
        active,
        levels[4],
        levels[3],
        levels[2],
        levels[1]
    )
}

async fn run(
    scenario: PathBuf,
    seed: Option<u64>,
    speed: f64,
    duration: Option<u64>,
    control: SocketAddr,
    truth: Option<PathBuf>,
) -> anyhow::Result<()> {
    let mut spec = scenario::load(&scenario)?;
    if let Some(seed) = seed {
        spec.seed = seed;
    }
    let epoch = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as u64;
    let fleet = Arc::new(Fleet::build(
        &spec,
        SimClock::new(epoch, speed),
        truth.is_some(),
    )?);
    eprintln!(
        "scenario {} (seed {}): {} nodes on {} buses, speed x{speed}",
        spec.name,
        spec.seed,
        fleet.len(),
        spec.buses.len()
    );
    let transports = transport::start_all(&fleet, spec.seed).await?;
    let server = control::serve(Control::new(Arc::clone(&fleet)), control)
        .await
        .with_context(|| format!("control interface on {control}"))?;
    eprintln!("control: http://{}/fleet", server.local_addr());
    tokio::spawn(Arc::clone(&fleet).run(Duration::from_millis(50)));

    // A status line every second; on a terminal it rewrites itself, in a log one line each
    // ten seconds.
    let tty = std::io::stderr().is_terminal();
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    let mut n = 0u64;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = tokio::signal::ctrl_c() => break,
        }
        n += 1;
        let line = status_line(&fleet, &transports);
        if tty {
            eprint!("\r{line}\x1b[K");
        } else if n.is_multiple_of(10) {
            eprintln!("{line}");
        }
        if duration.is_some_and(|d| fleet.stepped_to() >= d * 1000) {
            break;
        }
    }
    eprintln!("\n{}", status_line(&fleet, &transports));
    for t in transports {
        t.shutdown().await;
    }
    let _ = server.shutdown().await;
    if let Some(path) = truth {
        std::fs::write(&path, fleet.truth.samples_csv())
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!(
            "ground truth: {} samples in {}",
            fleet.truth.sample_count(),
            path.display()
        );
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run {
            scenario,
            seed,
            speed,
            duration,
            control,
            truth,
        } => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
                )
                .with_writer(std::io::stderr)
                .init();
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(run(scenario, seed, speed, duration, control, truth))?;
        }
        Command::Check { scenario } => {
            let spec = scenario::load(&scenario)?;
            let fleet = Fleet::build(&spec, SimClock::new(0, 1.0), false)?;
            println!(
                "{}: scenario {} with {} nodes on {} buses and {} scheduled faults is valid",
                scenario.display(),
                spec.name,
                fleet.len(),
                spec.buses.len(),
                spec.faults.len()
            );
        }
        Command::Bench {
            nodes,
            seconds,
            transport,
        } => {
            if transport == BenchTransport::Mqtt {
                tracing_subscriber::fmt()
                    .with_env_filter(
                        EnvFilter::try_from_default_env()
                            .unwrap_or_else(|_| EnvFilter::new("error")),
                    )
                    .with_writer(std::io::stderr)
                    .init();
                tokio::runtime::Runtime::new()?
                    .block_on(tianzhong_simulator::bench::mqtt::run(nodes, seconds))?;
            } else {
                let report = bench(nodes, seconds, transport)?;
                println!("{report}");
            }
        }
        Command::BenchServe {
            nodes,
            channels,
            speed,
        } => {
            anyhow::ensure!((1..=8).contains(&channels), "--channels must be 1 to 8");
            anyhow::ensure!(speed > 0.0, "--speed must be positive");
            let buses = bench_buses(nodes);
            let fleet = Arc::new(Fleet::build(
                &bench_fleet_with(nodes, channels, &buses),
                SimClock::new(
                    SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as u64,
                    speed,
                ),
                false,
            )?);
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(async {
                let mut servers = Vec::new();
                for bus in &buses {
                    let server = modbus_tcp::start(Arc::clone(&fleet), bus, 1).await?;
                    println!(
                        "{} {}",
                        server.addrs()[0],
                        fleet.nodes_on_bus(&bus.name).len()
                    );
                    servers.push(server);
                }
                println!("READY");
                let stepper = tokio::spawn(Arc::clone(&fleet).run(Duration::from_millis(20)));
                // Until the benchmark closes our stdin (or dies, which closes it too).
                let mut sink = Vec::new();
                let _ =
                    tokio::io::AsyncReadExt::read_to_end(&mut tokio::io::stdin(), &mut sink).await;
                stepper.abort();
                anyhow::Ok(())
            })?;
        }
        Command::BenchLoad {
            addrs,
            units,
            seconds,
        } => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            println!("{}", runtime.block_on(bench_load(addrs, units, seconds))?);
        }
    }
    Ok(())
}
