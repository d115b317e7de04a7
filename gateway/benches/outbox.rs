//! The outbox's benchmark: sustained append rate with durability on, time to resume after a
//! crash with a large backlog, and memory while that backlog builds.
//!
//! `cargo bench -p tianzhong-gateway --bench outbox`. Environment:
//! `TIANZHONG_OUTBOX_BENCH_SECONDS` (per throughput case, default 10),
//! `TIANZHONG_OUTBOX_BENCH_BACKLOG_MB` (default 200; 1024 for the spec's 1 GB case),
//! `TIANZHONG_OUTBOX_BENCH_DIR` (default the system temp dir).
//!
//! | case | what |
//! |---|---|
//! | `append-N` | one producer appending batches of N readings, fsync interval 100 ms, until the last is durable: readings/s, MB/s of payload, RSS |
//! | `backlog` | a child process appends batches of 1 000 readings (no sink acks) until the backlog is built, reports its peak RSS and is killed with SIGKILL; the harness then times `Outbox::open` and the first `read` |

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tianzhong_gateway::outbox::{Outbox, OutboxConfig};
use tianzhong_gateway::pipeline::Record;
use tianzhong_protocol::reading::{ChannelId, Quality, Timestamp};
use tianzhong_protocol::{NodeId, Quantity, Reading, SiteId};

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const CHILD_ENV: &str = "TIANZHONG_OUTBOX_BENCH_CHILD";

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn status_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Batch `b` of `n` readings: one 8-channel node's consecutive samples, as a poll or an MQTT
/// message brings them.
fn batch(b: u64, n: usize) -> Vec<Record> {
    let node = NodeId::new(&format!("gas-{:05}", b % 10_000)).unwrap();
    let site = SiteId::new("plant-1").unwrap();
    (0..n)
        .map(|i| {
            let seq = (b * n as u64 + i as u64 / 8) as u32;
            let ts = 1_700_000_000_000 + seq as u64 * 100;
            Record {
                site: site.clone(),
                reading: Reading {
                    node: node.clone(),
                    channel: ChannelId((i % 8) as u16),
                    quantity: Quantity::ALL[i % 8],
                    value: 20.0 + (i as f64) * 0.1,
                    timestamp: Timestamp(ts),
                    seq,
                    quality: Quality::Good,
                },
                received_ms: ts + 3,
                device_time: false,
            }
        })
        .collect()
}

fn config(max_bytes: u64) -> OutboxConfig {
    OutboxConfig {
        max_bytes,
        fsync_interval: Duration::from_millis(100),
        sinks: vec!["influx".into(), "upstream".into()],
        ..OutboxConfig::default()
    }
}

fn fresh(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    path
}

async fn append_case(dir: &Path, per_batch: usize, seconds: u64) {
    let path = fresh(dir, &format!("append-{per_batch}.sqlite"));
    let ob = Outbox::open(&path, config(8 << 30)).unwrap();
    // A pool of distinct batches, so the encoder sees varied nodes.
    let pool: Vec<Vec<Record>> = (0..64).map(|b| batch(b, per_batch)).collect();
    let start = Instant::now();
    let mut n = 0u64;
    let mut b = 0usize;
    let mut last = None;
    while start.elapsed() < Duration::from_secs(seconds) {
        last = Some(ob.append_readings(&pool[b % pool.len()]).await.unwrap());
        n += per_batch as u64;
        b += 1;
    }
    ob.durable(last.unwrap()).await.unwrap();
    let secs = start.elapsed().as_secs_f64();
    let stats = ob.stats().await.unwrap();
    println!(
        "append-{per_batch:<5} {:>10.0} readings/s durable  ({n} readings in {secs:.1} s, {:.1} MB/s stored, {} batches, RSS {} MB, peak {} MB)",
        n as f64 / secs,
        stats.bytes as f64 / secs / 1e6,
        stats.batches,
        status_kb("VmRSS:") / 1024,
        status_kb("VmHWM:") / 1024,
    );
    ob.close().await.unwrap();
    drop(ob);
    let _ = fresh(dir, &format!("append-{per_batch}.sqlite"));
}

/// The child: builds the backlog, says so, and keeps appending until it is killed.
async fn child(path: &Path, target: u64) {
    let ob = Outbox::open(path, config(target + (256 << 20))).unwrap();
    let pool: Vec<Vec<Record>> = (0..64).map(|b| batch(b, 1000)).collect();
    let mut b = 0usize;
    let start = Instant::now();
    let mut rss_max = 0;
    loop {
        let t = ob.append_readings(&pool[b % pool.len()]).await.unwrap();
        b += 1;
        if b.is_multiple_of(500) {
            ob.durable(t).await.unwrap();
            rss_max = rss_max.max(status_kb("VmRSS:"));
            let stats = ob.stats().await.unwrap();
            if stats.bytes >= target {
                println!(
                    "built {} {} {:.1} {}",
                    stats.bytes,
                    stats.batches,
                    start.elapsed().as_secs_f64(),
                    rss_max / 1024
                );
                break;
            }
        }
    }
    // Still writing when killed, as a crashed gateway would be.
    loop {
        ob.append_readings(&pool[b % pool.len()]).await.unwrap();
        b += 1;
    }
}

async fn backlog_case(dir: &Path, mb: u64) {
    let path = fresh(dir, "backlog.sqlite");
    let mut c = Command::new(std::env::current_exe().unwrap())
        .env(CHILD_ENV, format!("{}|{}", path.display(), mb << 20))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(c.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    c.kill().unwrap(); // SIGKILL
    c.wait().unwrap();
    let f: Vec<&str> = line.split_whitespace().collect();
    let file = std::fs::metadata(&path).map_or(0, |m| m.len());
    let wal = std::fs::metadata(format!("{}-wal", path.display())).map_or(0, |m| m.len());
    let start = Instant::now();
    let ob = Outbox::open(&path, config((mb << 20) + (256 << 20))).unwrap();
    let opened = start.elapsed();
    let first = ob.read("influx", 64).await.unwrap();
    let resumed = start.elapsed();
    println!(
        "backlog    {} MB accounted ({} batches, built in {} s, builder peak RSS {} MB), file {} MB + WAL {} MB: \
         open {:.3} s, first read of {} batches {:.3} s after SIGKILL-recovery start",
        f.get(1).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) >> 20,
        f.get(2).unwrap_or(&"?"),
        f.get(3).unwrap_or(&"?"),
        f.get(4).unwrap_or(&"?"),
        file >> 20,
        wal >> 20,
        opened.as_secs_f64(),
        first.len(),
        resumed.as_secs_f64(),
    );
    println!(
        "backlog    harness RSS after reopen and read: {} MB",
        status_kb("VmRSS:") / 1024
    );
    ob.close().await.unwrap();
    drop(ob);
    let _ = fresh(dir, "backlog.sqlite");
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    if let Ok(arg) = std::env::var(CHILD_ENV) {
        let (path, target) = arg.rsplit_once('|').unwrap();
        rt.block_on(child(Path::new(path), target.parse().unwrap()));
        return;
    }
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let dir = std::env::var("TIANZHONG_OUTBOX_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir());
    let seconds = env("TIANZHONG_OUTBOX_BENCH_SECONDS", 10);
    let mb = env("TIANZHONG_OUTBOX_BENCH_BACKLOG_MB", 200);
    rt.block_on(async {
        for per_batch in [100, 1000] {
            append_case(&dir, per_batch, seconds).await;
        }
        backlog_case(&dir, mb).await;
    });
}
