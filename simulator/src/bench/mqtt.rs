//! The MQTT benchmark: every node its own MQTT client of one local mosquitto, publishing a
//! telemetry message every second; reports this process's resident memory and CPU, and the
//! messages per second the broker acknowledged (`tianzhong-sim bench --transport mqtt`).
//!
//! It starts its own mosquitto (`/usr/sbin/mosquitto`) on a free loopback port with
//! `max_connections -1`; both processes need an open-file limit above the node count, so raise
//! the soft limit first if it is lower (`ulimit -n $(ulimit -Hn)`): the broker inherits it.
//!
//! The nodes are gas detectors of three channels (combustible gas, H2S, oxygen) sampled every
//! second, as in the other benchmarks. The measurement window starts once every node is
//! connected and a few seconds of publishing have passed, so that it sees the steady state
//! rather than 10 000 connects.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::process_usage;
use crate::clock::SimClock;
use crate::fleet::Fleet;
use crate::node::{ChannelSpec, NodeSpec};
use crate::signal::Component;
use crate::spec::{BusKind, BusSpec, FleetSpec};
use crate::transport::mqtt;
use anyhow::{Context, bail};
use tianzhong_protocol::{NodeId, Quantity, SiteId};

const MOSQUITTO: &str = "/usr/sbin/mosquitto";
/// Publishing before the window opens: the first seconds after the last connect still carry
/// the connect burst's retained statuses and allocator growth.
const WARM_UP: Duration = Duration::from_secs(5);
/// File descriptors besides the clients' sockets: the runtime, stdio, the broker's listener.
const SPARE_FDS: u64 = 64;

/// A mosquitto of its own, killed on drop.
struct Broker {
    child: Child,
    dir: PathBuf,
    addr: SocketAddr,
}

impl Broker {
    fn start() -> anyhow::Result<Broker> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let dir = std::env::temp_dir().join(format!("tz-mqtt-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        // The default caps connections per listener far below a fleet's size.
        let config = format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
             max_connections -1\nlog_dest file {}\nlog_type error\nlog_type warning\n",
            dir.join("mosquitto.log").display()
        );
        std::fs::write(dir.join("mosquitto.conf"), config)?;
        let child = Command::new(MOSQUITTO)
            .arg("-c")
            .arg(dir.join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("running {MOSQUITTO}"))?;
        let mut broker = Broker { child, dir, addr };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(addr).is_err() {
            if let Some(status) = broker.child.try_wait()? {
                bail!(
                    "mosquitto exited with {status}; see {}",
                    broker.dir.join("mosquitto.log").display()
                );
            }
            if Instant::now() > deadline {
                bail!("mosquitto does not listen on {addr}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(broker)
    }

    /// CPU seconds and resident bytes of the broker, from its `/proc` entries.
    fn usage(&self) -> Option<(f64, u64)> {
        let pid = self.child.id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
        // USER_HZ is 100 on every Linux ABI; utime and stime are fields 14 and 15.
        let cpu_s = (ticks(11)? + ticks(12)?) as f64 / 100.0;
        let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
        let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
        Some((cpu_s, pages * 4096))
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The soft open-file limit of this process.
fn open_file_limit() -> anyhow::Result<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits")?;
    limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|soft| soft.parse().ok())
        .context("no open-file limit in /proc/self/limits")
}

fn fleet_spec(nodes: usize, broker: SocketAddr) -> FleetSpec {
    let site = SiteId::new("bench").expect("valid id");
    let channel = |q: Quantity, value: f64, sigma: f64| ChannelSpec {
        quantity: q,
        signal: vec![Component::Constant { value }, Component::Noise { sigma }],
        clamp: None,
        sensor: None,
    };
    FleetSpec {
        name: "mqtt-bench".into(),
        seed: 1,
        buses: vec![BusSpec {
            name: "mqtt".into(),
            kind: BusKind::Mqtt {
                broker,
                publish_every_s: 1,
            },
        }],
        nodes: (0..nodes)
            .map(|n| NodeSpec {
                id: NodeId::new(&format!("gas-{n:05}")).expect("valid id"),
                site: site.clone(),
                bus: "mqtt".into(),
                unit: (n % 247 + 1) as u8,
                model: "TZ-GAS-3".into(),
                channels: vec![
                    channel(Quantity::CombustibleGas, 2.0, 0.3),
                    channel(Quantity::H2s, 1.0, 0.2),
                    channel(Quantity::Oxygen, 20.9, 0.05),
                ],
            })
            .collect(),
        faults: vec![],
        base_dir: ".".into(),
    }
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

/// Runs the MQTT benchmark for `nodes` nodes over `seconds` and prints its figures.
pub async fn run(nodes: usize, seconds: u64) -> anyhow::Result<()> {
    let limit = open_file_limit()?;
    if limit < nodes as u64 + SPARE_FDS {
        bail!(
            "the open-file limit is {limit}, too low for {nodes} clients and a broker serving \
             them; raise it with `ulimit -n $(ulimit -Hn)` (or above {}) and run again",
            nodes as u64 + SPARE_FDS
        );
    }
    let broker = Broker::start()?;

    let start_usage = process_usage()?;
    let epoch = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as u64;
    let fleet = Arc::new(Fleet::build(
        &fleet_spec(nodes, broker.addr),
        SimClock::new(epoch, 1.0),
        false,
    )?);
    let built = process_usage()?;
    let handle = mqtt::start(Arc::clone(&fleet), fleet.buses[0].clone()).await?;
    let stepper = tokio::spawn(Arc::clone(&fleet).run(Duration::from_millis(20)));
    let connecting = Instant::now();
    if !handle.wait_connected(Duration::from_secs(300)).await {
        bail!(
            "not every node connected within 300 s: {:?}; see the broker's log in {}",
            handle.stats(),
            broker.dir.display()
        );
    }
    eprintln!(
        "{nodes} nodes connected in {:.1} s; publishing for {} s before measuring {seconds} s",
        connecting.elapsed().as_secs_f64(),
        WARM_UP.as_secs()
    );
    tokio::time::sleep(WARM_UP).await;

    let (before, before_stats) = (process_usage()?, handle.stats());
    let broker_before = broker.usage();
    let window = Instant::now();
    let mut peak_rss = before.rss_bytes;
    while window.elapsed() < Duration::from_secs(seconds) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        peak_rss = peak_rss.max(process_usage()?.rss_bytes);
    }
    let wall_s = window.elapsed().as_secs_f64();
    let (after, after_stats) = (process_usage()?, handle.stats());
    let broker_after = broker.usage();
    stepper.abort();

    let acked = after_stats.published - before_stats.published;
    println!("MQTT fleet at 1 Hz: {nodes} nodes, {wall_s:.1} s measured");
    println!(
        "  simulator RSS {:.1} MB at the end, {:.1} MB peak in the window \
         (process {:.1} MB before the fleet, +{:.1} MB for the nodes, +{:.1} MB for the clients)",
        mb(after.rss_bytes),
        mb(peak_rss),
        mb(start_usage.rss_bytes),
        mb(built.rss_bytes.saturating_sub(start_usage.rss_bytes)),
        mb(after.rss_bytes.saturating_sub(built.rss_bytes)),
    );
    println!(
        "  per node: {:.0} B all in ({:.0} B virtual node, {:.0} B MQTT client)",
        after.rss_bytes.saturating_sub(start_usage.rss_bytes) as f64 / nodes as f64,
        built.rss_bytes.saturating_sub(start_usage.rss_bytes) as f64 / nodes as f64,
        after.rss_bytes.saturating_sub(built.rss_bytes) as f64 / nodes as f64,
    );
    println!(
        "  simulator CPU {:.1} % of one core",
        100.0 * (after.cpu_s - before.cpu_s) / wall_s
    );
    println!(
        "  telemetry acknowledged: {:.0} messages/s ({acked} in the window)",
        acked as f64 / wall_s
    );
    if let (Some((cpu0, _)), Some((cpu1, rss))) = (broker_before, broker_after) {
        println!(
            "  mosquitto: CPU {:.1} % of one core, RSS {:.1} MB",
            100.0 * (cpu1 - cpu0) / wall_s,
            mb(rss)
        );
    }
    println!("  counters at the end: {after_stats:?}");
    handle.shutdown(Duration::from_secs(30)).await;
    Ok(())
}
