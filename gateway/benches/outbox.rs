//! The outbox's benchmark, against issue 7's targets: sustained readings/s with durability
//! on, the full cycle append → durable → read → ack, memory while an outage backlog grows to
//! its byte bound, and the time to resume forwarding after a SIGKILL with that backlog.
//!
//! `cargo bench -p tianzhong-gateway --bench outbox [-- CASE…]`, CASE among `append`,
//! `cycle`, `backlog` (default: all; 1 – 1.5 minutes on the 2-core development machine).
//! Environment:
//!
//! | variable | default | what |
//! |---|---|---|
//! | `TIANZHONG_OUTBOX_BENCH_SECONDS` | 10 | length of each `append` and `cycle` case |
//! | `TIANZHONG_OUTBOX_BENCH_BACKLOG_MB` | 1024 | the `backlog` case's byte bound (`max_bytes`, MiB) |
//! | `TIANZHONG_OUTBOX_BENCH_BATCH` | 1000 | readings per batch in the `backlog` case |
//! | `TIANZHONG_OUTBOX_BENCH_DIR` | the system temp dir | where the databases go (deleted after each case; the `backlog` case needs the bound plus ~15 % free) |
//!
//! | case | what | target |
//! |---|---|---|
//! | `append-N` | one producer appending batches of N readings (fsync interval 100 ms) until the last is durable | ≥ 300 000 readings/s |
//! | `cycle-1000` | one producer appending batches of 1 000 readings while one sink reads (64 batches at a time, decoded) and acks; until the sink has acked the last | ≥ 300 000 readings/s delivered |
//! | `backlog` (outage) | a child process appends (no sink acks: the sinks are down) until the backlog reaches its bound and then a quarter of the bound more, so that shedding runs; its RSS sampled every 50 ms | peak RSS < 100 MB, flat (no growth with the backlog) |
//! | `backlog` (resume) | the child is killed with SIGKILL while appending; a new process times `Outbox::open` + the first `read` (64 batches) and exits without closing; then again after the files are evicted from the page cache (`sync` + `dd iflag=nocache`), as after a reboot | < 5 s |

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tianzhong_gateway::outbox::{BatchId, Entry, Outbox, OutboxConfig};
use tianzhong_gateway::pipeline::Record;
use tianzhong_protocol::reading::{ChannelId, Quality, Timestamp};
use tianzhong_protocol::{NodeId, Quantity, Reading, SiteId};

// The daemon's allocator, so that RSS figures are the daemon's.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const CHILD_ENV: &str = "TIANZHONG_OUTBOX_BENCH_CHILD";
const RESUME_ENV: &str = "TIANZHONG_OUTBOX_BENCH_RESUME";

const TARGET_READINGS_PER_S: f64 = 300_000.0;
const TARGET_RESUME_S: f64 = 5.0;
const TARGET_RSS_MB: u64 = 100;
/// RSS may rise this much from the backlog at 20–50 % of the bound to 50–100 % and still count
/// as flat (sampling noise).
const FLAT_SLACK_MB: u64 = 5;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn verdict(pass: bool) -> &'static str {
    if pass { "PASS" } else { "FAIL" }
}

fn status_mb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        / 1024
}

/// What SQLite has allocated (its page cache, statements, …), MB.
#[allow(unsafe_code)]
fn sqlite_mb() -> u64 {
    // SAFETY: takes no arguments; reads SQLite's global memory counter.
    let used = unsafe { rusqlite::ffi::sqlite3_memory_used() };
    used.max(0) as u64 >> 20
}

fn file_mb(path: &Path, suffix: &str) -> u64 {
    std::fs::metadata(format!("{}{suffix}", path.display())).map_or(0, |m| m.len()) >> 20
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

fn config(max_bytes: u64, sinks: &[&str]) -> OutboxConfig {
    OutboxConfig {
        max_bytes,
        fsync_interval: Duration::from_millis(100),
        sinks: sinks.iter().map(|s| s.to_string()).collect(),
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

/// Samples VmRSS every 50 ms on its own thread: the peak since the last `take_peak`.
struct RssSampler {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl RssSampler {
    fn start() -> RssSampler {
        let peak = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (peak.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(status_mb("VmRSS:"), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        RssSampler { peak, stop }
    }

    fn take_peak(&self) -> u64 {
        self.peak
            .swap(status_mb("VmRSS:"), Ordering::Relaxed)
            .max(status_mb("VmRSS:"))
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

async fn append_case(dir: &Path, per_batch: usize, seconds: u64) {
    let path = fresh(dir, &format!("append-{per_batch}.sqlite"));
    let ob = Outbox::open(&path, config(8 << 30, &["influx", "upstream"])).unwrap();
    // A pool of distinct batches, so the encoder sees varied nodes.
    let pool: Vec<Vec<Record>> = (0..64).map(|b| batch(b, per_batch)).collect();
    let rss = RssSampler::start();
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
    let rate = n as f64 / secs;
    println!(
        "append-{per_batch:<5} {rate:>10.0} readings/s appended and durable   [{}: target >= {TARGET_READINGS_PER_S:.0}]  \
         ({n} readings in {secs:.1} s, {:.1} MB/s stored, {} batches; RSS peak {} MB, SQLite heap {} MB)",
        verdict(rate >= TARGET_READINGS_PER_S),
        stats.bytes as f64 / secs / 1e6,
        stats.batches,
        rss.take_peak(),
        sqlite_mb(),
    );
    ob.close().await.unwrap();
    drop(ob);
    let _ = fresh(dir, &format!("append-{per_batch}.sqlite"));
}

/// One producer and one sink at once: what reaches the sink, acked, per second.
async fn cycle_case(dir: &Path, seconds: u64) {
    let per_batch = 1000;
    let path = fresh(dir, "cycle.sqlite");
    let ob = Outbox::open(&path, config(1 << 30, &["influx"])).unwrap();
    let pool: Vec<Vec<Record>> = (0..64).map(|b| batch(b, per_batch)).collect();
    let rss = RssSampler::start();
    // The last ticket once the producer has stopped (0 while it runs).
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let sink = {
        let (ob, done) = (ob.clone(), done.clone());
        tokio::spawn(async move {
            let (mut acked, mut delivered, mut reads, mut max_behind) = (BatchId(0), 0u64, 0, 0);
            loop {
                let got = ob.read("influx", 64).await.unwrap();
                let Some(end) = got.last().map(|b| b.id) else {
                    let last = done.load(Ordering::Acquire);
                    if last != 0 && acked.0 >= last {
                        break;
                    }
                    let _ = tokio::time::timeout(Duration::from_millis(100), ob.wait_beyond(acked))
                        .await;
                    continue;
                };
                for b in &got {
                    if let Entry::Readings(r) = &b.entry {
                        delivered += r.len() as u64;
                    }
                }
                ob.ack("influx", end).await.unwrap();
                acked = end;
                reads += 1;
                max_behind = max_behind.max(ob.durable_id().0.saturating_sub(end.0));
            }
            (delivered, reads, max_behind, start.elapsed())
        })
    };
    let mut n = 0u64;
    let mut b = 0usize;
    let mut last = None;
    while start.elapsed() < Duration::from_secs(seconds) {
        last = Some(ob.append_readings(&pool[b % pool.len()]).await.unwrap());
        n += per_batch as u64;
        b += 1;
    }
    let last = last.unwrap();
    ob.durable(last).await.unwrap();
    let appended_secs = start.elapsed().as_secs_f64();
    done.store(last.0.0, Ordering::Release);
    let (delivered, reads, max_behind, took) = sink.await.unwrap();
    let secs = took.as_secs_f64();
    let rate = delivered as f64 / secs;
    println!(
        "cycle-1000 {rate:>10.0} readings/s appended, durable, read and acked by one sink   [{}: target >= {TARGET_READINGS_PER_S:.0}]  \
         ({delivered} of {n} readings in {secs:.1} s; appending alone took {appended_secs:.1} s; {reads} reads; \
         sink at most {max_behind} batches behind; RSS peak {} MB, SQLite heap {} MB)",
        verdict(rate >= TARGET_READINGS_PER_S && delivered == n),
        rss.take_peak(),
        sqlite_mb(),
    );
    ob.close().await.unwrap();
    drop(ob);
    let _ = fresh(dir, "cycle.sqlite");
}

/// The child: a gateway whose sinks are down. Appends until the backlog has reached its
/// bound and a quarter of the bound more has been appended (so that shedding runs), printing
/// a line per tenth of the bound, then `built …`, and keeps appending until it is killed.
async fn child(path: &Path, bound: u64, per_batch: usize) {
    let rss = RssSampler::start();
    let ob = Outbox::open(path, config(bound, &["influx", "upstream"])).unwrap();
    let pool: Vec<Vec<Record>> = (0..64).map(|b| batch(b, per_batch)).collect();
    let per_check = (500_000 / per_batch).max(1);
    let start = Instant::now();
    let (mut b, mut next_mark) = (0usize, bound / 10);
    // (tenths of the bound appended, whether shedding had begun, the peak RSS since the
    // previous line)
    let mut peaks: Vec<(u64, bool, u64)> = Vec::new();
    let mut full_at = None;
    loop {
        let t = ob.append_readings(&pool[b % pool.len()]).await.unwrap();
        b += 1;
        if !b.is_multiple_of(per_check) {
            continue;
        }
        ob.durable(t).await.unwrap();
        let stats = ob.stats().await.unwrap();
        let appended = (b * per_batch) as u64 * 34;
        if stats.dropped > 0 && full_at.is_none() {
            full_at = Some((appended, start.elapsed().as_secs_f64()));
        }
        if appended >= next_mark {
            let peak = rss.take_peak();
            peaks.push((appended * 10 / bound, full_at.is_some(), peak));
            println!(
                "sample {:5.1} s: {:5} MB appended, backlog {:5} MB accounted / file {:5} MB / WAL {:3} MB, \
                 {:9} readings shed; RSS {:3} MB (peak since last line {:3} MB), SQLite heap {} MB",
                start.elapsed().as_secs_f64(),
                appended >> 20,
                stats.bytes >> 20,
                stats.file_bytes >> 20,
                file_mb(path, "-wal"),
                stats.dropped,
                status_mb("VmRSS:"),
                peak,
                sqlite_mb(),
            );
            next_mark += bound / 10;
        }
        if full_at.is_some_and(|(at, _)| appended >= at + bound / 4) {
            let (full_mb, full_s) = full_at.unwrap();
            let peak = |f: &dyn Fn(u64, bool) -> bool| {
                peaks
                    .iter()
                    .filter(|&&(tenth, shed, _)| f(tenth, shed))
                    .map(|&(_, _, p)| p)
                    .max()
                    .unwrap_or(0)
            };
            // Growing: the backlog at 20–50 % of the bound vs 50–100 %; then shedding.
            let early = peak(&|tenth, shed| (2..5).contains(&tenth) && !shed);
            let late = peak(&|tenth, shed| tenth >= 5 && !shed);
            let shedding = peak(&|_, shed| shed);
            println!(
                "built {} {} {:.1} {} {:.1} {} {} {} {}",
                stats.bytes,
                stats.batches,
                start.elapsed().as_secs_f64(),
                full_mb >> 20,
                full_s,
                status_mb("VmHWM:"),
                early,
                late,
                shedding,
            );
            break;
        }
    }
    // Still writing when killed, as a crashed gateway would be.
    loop {
        ob.append_readings(&pool[b % pool.len()]).await.unwrap();
        b += 1;
    }
}

/// Drops `path`'s pages from the page cache (they are written back first), as after a
/// reboot. Returns whether it worked.
fn evict(path: &Path) -> bool {
    let files: Vec<String> = ["", "-wal", "-shm"]
        .iter()
        .map(|s| format!("{}{s}", path.display()))
        .filter(|f| Path::new(f).exists())
        .collect();
    let synced = Command::new("sync")
        .args(&files)
        .status()
        .is_ok_and(|s| s.success());
    synced
        && files.iter().all(|f| {
            Command::new("dd")
                .args([
                    &format!("if={f}"),
                    "iflag=nocache",
                    "count=0",
                    "status=none",
                ])
                .status()
                .is_ok_and(|s| s.success())
        })
}

/// How much of `path` is in the page cache, MB (`fincore`), if known.
fn cached_mb(path: &Path) -> Option<u64> {
    let out = Command::new("fincore")
        .args(["--bytes", "--noheadings", "--output", "RES"])
        .arg(path)
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse::<u64>()
        .ok()
        .map(|b| b >> 20)
}

/// The restarted gateway, in a process of its own: opens the outbox, reads the first batches
/// and exits without closing it (so the next restart finds it as the crash left it).
async fn resume_child(path: &Path, bound: u64) {
    let start = Instant::now();
    let ob = Outbox::open(path, config(bound, &["influx", "upstream"])).unwrap();
    let opened = start.elapsed().as_secs_f64();
    let first = ob.read("influx", 64).await.unwrap();
    let resumed = start.elapsed().as_secs_f64();
    println!(
        "resumed {opened} {resumed} {} {}",
        first.len(),
        status_mb("VmHWM:")
    );
    std::process::exit(0);
}

/// Runs [`resume_child`]: (open s, open + first read s, batches read, peak RSS MB).
fn resume(path: &Path, bound: u64) -> Option<(f64, f64, usize, u64)> {
    let out = Command::new(std::env::current_exe().ok()?)
        .env(RESUME_ENV, format!("{}|{bound}", path.display()))
        .output()
        .ok()?;
    let out = String::from_utf8_lossy(&out.stdout);
    let f: Vec<f64> = out
        .lines()
        .find_map(|l| l.strip_prefix("resumed "))?
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(f64::NAN))
        .collect();
    Some((f[0], f[1], f[2] as usize, f[3] as u64))
}

fn report_resume(what: &str, r: Option<(f64, f64, usize, u64)>) {
    match r {
        Some((opened, resumed, n, rss)) => println!(
            "backlog    resume after SIGKILL, {what}: open {opened:.3} s, open + first read ({n} batches) {resumed:.3} s   [{}: target < {TARGET_RESUME_S} s]  (its RSS peak {rss} MB)",
            verdict(resumed < TARGET_RESUME_S && n > 0),
        ),
        None => {
            println!("backlog    resume after SIGKILL, {what}: FAIL (the process did not report)")
        }
    }
}

async fn backlog_case(dir: &Path, bound_mb: u64, per_batch: usize) {
    let bound = bound_mb << 20;
    let path = fresh(dir, "backlog.sqlite");
    println!(
        "backlog    outage: sinks down, appending batches of {per_batch} readings until the {bound_mb} MiB bound is reached and a quarter more (a child process, killed with SIGKILL afterwards)"
    );
    let mut c = Command::new(std::env::current_exe().unwrap())
        .env(CHILD_ENV, format!("{}|{bound}|{per_batch}", path.display()))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut built = String::new();
    for line in BufReader::new(c.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("sample ") {
            println!("backlog      {rest}");
        } else if line.starts_with("built ") {
            built = line;
            break;
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    c.kill().unwrap(); // SIGKILL
    c.wait().unwrap();
    let f: Vec<f64> = built
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(f64::NAN))
        .collect();
    if f.len() < 9 {
        println!("backlog    FAIL: the child did not report (it printed {built:?})");
        let _ = fresh(dir, "backlog.sqlite");
        return;
    }
    let (hwm, early, late, shedding) = (f[5] as u64, f[6] as u64, f[7] as u64, f[8] as u64);
    println!(
        "backlog    bound reached after {:.0} MB appended in {:.1} s; built: {} MB accounted in {} batches after {:.1} s",
        f[3],
        f[4],
        f[0] as u64 >> 20,
        f[1],
        f[2],
    );
    println!(
        "backlog    outage RSS peak (VmHWM) {hwm} MB   [{}: target < {TARGET_RSS_MB} MB]",
        verdict(hwm < TARGET_RSS_MB),
    );
    println!(
        "backlog    outage RSS peak while the backlog grows: at 20-50 % of the bound {early} MB, at 50-100 % {late} MB   [{}: flat, within {FLAT_SLACK_MB} MB]",
        verdict(late <= early + FLAT_SLACK_MB),
    );
    println!(
        "backlog    outage RSS peak while shedding at the bound: {shedding} MB (one shedding window's working set more)   [{}: target < {TARGET_RSS_MB} MB]",
        verdict(shedding < TARGET_RSS_MB),
    );
    println!(
        "backlog    after SIGKILL: file {} MB + WAL {} MB on disk",
        file_mb(&path, ""),
        file_mb(&path, "-wal"),
    );
    // Each restart is a process that exits without closing, so both find the outbox as a
    // crash leaves it (WAL not checkpointed).
    report_resume("page cache as the crash left it", resume(&path, bound));
    if evict(&path) {
        let cached = cached_mb(&path).map_or("?".into(), |m| m.to_string());
        report_resume(
            &format!(
                "files evicted from the page cache first ({cached} MB left cached), as after a reboot"
            ),
            resume(&path, bound),
        );
    } else {
        println!(
            "backlog    (could not evict the files from the page cache: the cold restart was not measured)"
        );
    }
    let _ = fresh(dir, "backlog.sqlite");
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    if let Ok(arg) = std::env::var(RESUME_ENV) {
        let (path, bound) = arg.rsplit_once('|').unwrap();
        rt.block_on(resume_child(Path::new(path), bound.parse().unwrap()));
        return;
    }
    if let Ok(arg) = std::env::var(CHILD_ENV) {
        let mut parts = arg.rsplitn(3, '|');
        let per_batch = parts.next().unwrap().parse().unwrap();
        let bound = parts.next().unwrap().parse().unwrap();
        let path = PathBuf::from(parts.next().unwrap());
        rt.block_on(child(&path, bound, per_batch));
        return;
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        return;
    }
    let cases: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let run = |case: &str| cases.is_empty() || cases.contains(&case);
    let dir = std::env::var("TIANZHONG_OUTBOX_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir());
    let seconds = env("TIANZHONG_OUTBOX_BENCH_SECONDS", 10);
    let bound_mb = env("TIANZHONG_OUTBOX_BENCH_BACKLOG_MB", 1024);
    let per_batch = env("TIANZHONG_OUTBOX_BENCH_BATCH", 1000) as usize;
    rt.block_on(async {
        if run("append") {
            for per_batch in [100, 1000] {
                append_case(&dir, per_batch, seconds).await;
            }
        }
        if run("cycle") {
            cycle_case(&dir, seconds).await;
        }
        if run("backlog") {
            backlog_case(&dir, bound_mb, per_batch).await;
        }
    });
}
