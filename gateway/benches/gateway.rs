//! The gateway's throughput and memory benchmark, against the simulator.
//!
//! `cargo bench -p tianzhong-gateway --bench gateway` (or `./scripts/bench`). Each case runs
//! three processes on this machine, so the simulator's cost is included, as the targets ask:
//!
//! - `tianzhong-sim bench-serve`: a fleet of gas detectors (the real node core) behind Modbus
//!   TCP listeners, 247 units each, as behind serial-to-Ethernet gateways;
//! - `tianzhong run`: the gateway, configured for that fleet, polling every node and writing
//!   every reading to InfluxDB line protocol;
//! - this harness: an InfluxDB stand-in that counts the lines it is sent and answers 204.
//!
//! After a warm-up the harness reads the gateway's `/metrics` and its `/proc` entry at the
//! start and end of a measured window, and reports readings/s (read from devices, and
//! written to the sink), polls/s, CPU seconds per million readings (the gateway process only)
//! and RSS.
//!
//! Environment: `TIANZHONG_BENCH_SECONDS` (measured window, default 20), `TIANZHONG_BENCH_CASES`
//! (comma-separated case names, default all).

use std::io::{BufRead, BufReader, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

struct Case {
    name: &'static str,
    devices: usize,
    channels: usize,
    poll_s: f64,
    speed: f64,
}

const CASES: [Case; 3] = [
    // Throughput: 8-channel nodes (the most a node has) sampling 12 times a second
    // (simulated time at 12x), each polled 10 times a second, so nearly every poll brings a
    // new sample (the de-duplication drops the rest, and `forwarded` counts only new ones).
    Case {
        name: "throughput",
        devices: 2_750,
        channels: 8,
        poll_s: 0.1,
        speed: 12.0,
    },
    // Memory: 1 000 and 10 000 configured gas detectors polled once a second, as deployed.
    Case {
        name: "devices-1000",
        devices: 1_000,
        channels: 3,
        poll_s: 1.0,
        speed: 1.0,
    },
    Case {
        name: "devices-10000",
        devices: 10_000,
        channels: 3,
        poll_s: 1.0,
        speed: 1.0,
    },
];

fn target_dir() -> PathBuf {
    // benches run from target/<profile>/deps/
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .to_path_buf()
}

fn ensure_binaries() -> (PathBuf, PathBuf) {
    let dir = target_dir();
    let gateway = PathBuf::from(env!("CARGO_BIN_EXE_tianzhong"));
    let sim = dir.join("tianzhong-sim");
    let status = Command::new(env!("CARGO"))
        .args([
            "build",
            "--release",
            "--locked",
            "-p",
            "tianzhong-simulator",
            "--bin",
            "tianzhong-sim",
        ])
        .status()
        .expect("cargo build");
    assert!(status.success(), "building tianzhong-sim failed");
    (gateway, sim)
}

/// (utime + stime in seconds, VmRSS bytes, VmHWM bytes) of a process.
fn usage(pid: u32) -> (f64, u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name in parentheses; utime and stime are the 14th and 15th.
    let after = stat.rsplit_once(')').map_or("", |(_, a)| a);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = 100.0; // CLK_TCK on Linux
    let cpu = fields
        .get(11)
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        + fields
            .get(12)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    (cpu / ticks, kb("VmRSS:"), kb("VmHWM:"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Sums the values of metric lines starting with `prefix` (and containing `needle`).
fn metric(text: &str, prefix: &str, needle: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix) && l.contains(needle))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn scrape(addr: SocketAddr) -> String {
    use std::io::Read as _;
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    );
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// An InfluxDB stand-in: counts the lines of every write and answers 204.
fn start_stub(lines: Arc<AtomicU64>) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind stub");
    let addr = listener.local_addr().expect("addr");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    std::thread::spawn(move || {
        runtime.block_on(async move {
            listener.set_nonblocking(true).expect("nonblocking");
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            let app = axum::Router::new().route(
                "/api/v2/write",
                axum::routing::post(move |body: axum::body::Bytes| {
                    let lines = Arc::clone(&lines);
                    async move {
                        let n = body.iter().filter(|b| **b == b'\n').count();
                        lines.fetch_add(n as u64, Relaxed);
                        axum::http::StatusCode::NO_CONTENT
                    }
                }),
            );
            let _ = axum::serve(listener, app).await;
        });
    });
    addr
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run_case(case: &Case, gateway: &Path, sim: &Path, seconds: u64) {
    eprintln!(
        "\n== {}: {} devices x {} channels, polled every {} s, nodes sampling {} times a second",
        case.name, case.devices, case.channels, case.poll_s, case.speed
    );
    let mut sim_child = Command::new(sim)
        .args([
            "bench-serve",
            "--nodes",
            &case.devices.to_string(),
            "--channels",
            &case.channels.to_string(),
            "--speed",
            &case.speed.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start tianzhong-sim");
    let sim_pid = sim_child.id();
    let stdout = sim_child.stdout.take().expect("stdout");
    let sim_child = Killed(sim_child);
    let mut listeners = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("simulator output");
        if line == "READY" {
            break;
        }
        let (addr, units) = line.split_once(' ').expect("ADDRESS UNITS");
        listeners.push((addr.to_owned(), units.parse::<usize>().expect("units")));
    }

    assert!(
        !listeners.is_empty(),
        "tianzhong-sim bench-serve started no listeners (see its error above)"
    );
    let lines = Arc::new(AtomicU64::new(0));
    let stub = start_stub(Arc::clone(&lines));
    let dir = std::env::temp_dir().join(format!("tianzhong-bench-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let quantities = ["combustible_gas", "h2s", "oxygen", "co"]
        .iter()
        .cycle()
        .take(case.channels)
        .map(|q| format!("\"{q}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let mut toml = format!(
        "[gateway]\nid = \"bench\"\ndata_dir = {:?}\nhttp_listen = \"{http}\"\n\n\
         [pipeline]\nqueue_batches = 1024\n\n\
         [sink.local_store]\nenabled = false\n\n\
         [sink.influxdb]\nurl = \"http://{stub}\"\norg = \"bench\"\nbucket = \"bench\"\nbatch_size = 5000\nflush_interval_ms = 1000\n\n",
        dir.display().to_string()
    );
    let mut n = 0;
    for (b, (addr, units)) in listeners.iter().enumerate() {
        toml.push_str(&format!(
            "[[bus]]\nname = \"bench-{b}\"\nkind = \"modbus_tcp\"\naddress = \"{addr}\"\ntimeout_ms = 1000\n\n"
        ));
        for u in 1..=*units {
            toml.push_str(&format!(
                "[[device]]\nid = \"gas-{n:05}\"\nsite = \"bench\"\nbus = \"bench-{b}\"\nunit = {u}\npoll_interval_s = {}\nprofile = \"tianzhong\"\nquantities = [{quantities}]\n\n",
                case.poll_s
            ));
            n += 1;
        }
    }
    let config = dir.join("gateway.toml");
    std::fs::write(&config, toml).expect("write config");
    let gw = Command::new(gateway)
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "error")
        .spawn()
        .expect("start tianzhong");
    let gw_pid = gw.id();
    let gw = Killed(gw);

    // Warm-up: connections made, first polls staggered in, allocator settled.
    std::thread::sleep(Duration::from_secs(8));
    let t0 = Instant::now();
    let m0 = scrape(http);
    let (cpu0, _, _) = usage(gw_pid);
    let (scpu0, _, _) = usage(sim_pid);
    let l0 = lines.load(Relaxed);
    std::thread::sleep(Duration::from_secs(seconds));
    let m1 = scrape(http);
    let (cpu1, rss, hwm) = usage(gw_pid);
    let (scpu1, srss, _) = usage(sim_pid);
    let l1 = lines.load(Relaxed);
    let wall = t0.elapsed().as_secs_f64();

    let d = |name: &str, needle: &str| metric(&m1, name, needle) - metric(&m0, name, needle);
    let received = d("tianzhong_readings_received_total", "");
    let forwarded = d("tianzhong_readings_forwarded_total", "");
    let polls = d("tianzhong_modbus_bus_requests_total", "result=\"ok\"");
    let failed = d("tianzhong_modbus_bus_requests_total", "") - polls;
    let written = (l1 - l0) as f64;
    let cpu = cpu1 - cpu0;
    println!(
        "{:<14} devices {:>6} | readings/s read {:>9.0} forwarded {:>9.0} written {:>9.0} | polls/s {:>8.0} (failed {:.0}) | gateway CPU {:.2} cores, {:.2} CPU s per 10^6 readings | gateway RSS {:.1} MB (peak {:.1} MB) | simulator CPU {:.2} cores, RSS {:.1} MB",
        case.name,
        case.devices,
        received / wall,
        forwarded / wall,
        written / wall,
        polls / wall,
        failed,
        cpu / wall,
        if received > 0.0 {
            cpu / received * 1e6
        } else {
            f64::NAN
        },
        rss as f64 / 1e6,
        hwm as f64 / 1e6,
        (scpu1 - scpu0) / wall,
        srss as f64 / 1e6,
    );
    drop(gw);
    drop(sim_child);
    let _ = std::fs::remove_dir_all(&dir);
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` would pass nothing useful.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let seconds = std::env::var("TIANZHONG_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let wanted = std::env::var("TIANZHONG_BENCH_CASES").ok();
    let (gateway, sim) = ensure_binaries();
    for case in &CASES {
        if wanted
            .as_deref()
            .is_some_and(|w| !w.split(',').any(|c| c == case.name))
        {
            continue;
        }
        run_case(case, &gateway, &sim, seconds);
    }
}
