//! `tianzhong-sim`: runs a simulated sensor fleet.
//!
//! ```text
//! tianzhong-sim bench --nodes 10000 --seconds 20 --transport step
//! ```

use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use tianzhong_protocol::{NodeId, Quantity, SiteId};
use tianzhong_simulator::bench::{BenchReport, measure, process_usage};
use tianzhong_simulator::clock::SimClock;
use tianzhong_simulator::fleet::Fleet;
use tianzhong_simulator::node::{ChannelSpec, NodeSpec};
use tianzhong_simulator::signal::Component;
use tianzhong_simulator::spec::{BusKind, BusSpec, FleetSpec};

#[derive(Parser)]
#[command(name = "tianzhong-sim", version, about = "Tianzhong simulated sensor fleet")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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
}

#[derive(Clone, Copy, ValueEnum)]
enum BenchTransport {
    /// Sampling only: the node cores and drivers, no network.
    Step,
}

/// A fleet of gas detectors (combustible gas, H2S, oxygen), each channel sampled once a second
/// as the firmware's factory configuration does for gas.
fn bench_fleet(nodes: usize, bus: BusSpec) -> FleetSpec {
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
            bus: bus.name.clone(),
            unit: (n % 247 + 1) as u8,
            model: "TZ-GAS-3".into(),
            channels: vec![
                channel(Quantity::CombustibleGas, 2.0, 0.3),
                channel(Quantity::H2s, 1.0, 0.2),
                channel(Quantity::Oxygen, 20.9, 0.05),
            ],
        })
        .collect();
    FleetSpec { name: "bench".into(), seed: 1, buses: vec![bus], nodes, faults: vec![], base_dir: ".".into() }
}

fn bench(nodes: usize, seconds: u64, transport: BenchTransport) -> anyhow::Result<BenchReport> {
    let before = process_usage()?;
    match transport {
        BenchTransport::Step => {
            let bus = BusSpec {
                name: "none".into(),
                kind: BusKind::ModbusTcp { listen: "127.0.0.1:0".parse()?, per_node: false },
            };
            let fleet = Fleet::build(&bench_fleet(nodes, bus), SimClock::new(0, 1.0), false)?;
            eprintln!("built {nodes} nodes; stepping at 1 Hz for {seconds} s");
            let start = std::time::Instant::now();
            let (wall_s, cpu_s) = measure(Duration::from_secs(seconds), || {
                fleet.step_to(start.elapsed().as_millis() as u64);
                std::thread::sleep(Duration::from_millis(20));
            });
            let samples = fleet.truth.sample_count();
            let after = process_usage()?;
            Ok(BenchReport {
                label: "step (node cores and drivers only)".into(),
                nodes,
                wall_s,
                cpu_s,
                rss_before: before.rss_bytes,
                rss_after: after.rss_bytes,
                operations_per_s: samples as f64 / wall_s,
            })
        }
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Bench { nodes, seconds, transport } => {
            let report = bench(nodes, seconds, transport)?;
            println!("{report}");
        }
    }
    Ok(())
}
