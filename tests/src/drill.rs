//! Fault drills: the gateway as a process of its own (the `tianzhong` binary), so that it can be
//! SIGKILLed and started again on the same data directory; a subscriber that keeps its session
//! across broker restarts; a seeded random source; and the accounting of what a sink holds
//! against the ground truth when replays may have written a reading more than once.
//!
//! # Finding the binary
//!
//! `env!("CARGO_BIN_EXE_tianzhong")` exists only in the gateway's own tests, and a binary found
//! lying in `target/` may be stale (built from other sources, or with another profile), so
//! [`gateway_binary`] asks cargo: it runs `cargo build -p tianzhong-gateway --bin tianzhong
//! --message-format=json` (with `--release` when the tests themselves are a release build),
//! which is a no-op when the binary is fresh, and takes the executable's path from cargo's
//! `compiler-artifact` message — so `CARGO_TARGET_DIR`, a shared target directory and the
//! profile are all cargo's business. `TIANZHONG_BIN=/path/to/tianzhong` skips the build (a CI
//! job that built the binary already, or a drill against an installed gateway).
//!
//! # Environment
//!
//! | variable | effect |
//! |---|---|
//! | `TIANZHONG_SOAK=1` | the drills' long variants |
//! | `TIANZHONG_DRILL_SEED=N` | the seed of the random kill moments (printed by every run, so a failure can be replayed) |
//! | `TIANZHONG_BIN=PATH` | the gateway binary to run instead of building it |
//! | `TIANZHONG_DRILL_KEEP=1` | keeps each drill's gateway log (its path is printed) |
//! | `RUST_LOG` | passed on to the gateway process (default `info`); its log is printed when a drill fails |

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::check::{Comparison, Key, Message, Observed, Truth};
use crate::services::{ExportedSeries, VictoriaMetrics};

/// Set (to anything but `0`) for the long variants of the drills.
pub const SOAK_ENV: &str = "TIANZHONG_SOAK";
/// The seed of a drill's random choices.
pub const SEED_ENV: &str = "TIANZHONG_DRILL_SEED";
/// A gateway binary to run instead of building one.
pub const BIN_ENV: &str = "TIANZHONG_BIN";

/// Whether the long variants were asked for.
pub fn soak() -> bool {
    std::env::var(SOAK_ENV).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// The seed from [`SEED_ENV`], or a new one from the clock.
pub fn seed() -> u64 {
    if let Some(s) = std::env::var(SEED_ENV)
        .ok()
        .and_then(|v| v.trim().parse().ok())
    {
        return s;
    }
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64 ^ u64::from(std::process::id()))
}

/// A small seeded generator (SplitMix64): the same seed gives the same choices.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[lo, hi)`.
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        let unit = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        lo + (hi - lo) * unit
    }

    /// A duration uniform in `[lo, hi)`, whole milliseconds.
    pub fn duration(&mut self, lo: Duration, hi: Duration) -> Duration {
        let ms = self.uniform(lo.as_millis() as f64, hi.as_millis() as f64);
        Duration::from_millis(ms as u64)
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The `tianzhong` binary built from the workspace's sources (see the module documentation):
/// built once per test process, then the same path.
pub fn gateway_binary() -> anyhow::Result<PathBuf> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| build_gateway().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow::anyhow!(e))
}

fn build_gateway() -> anyhow::Result<PathBuf> {
    if let Some(bin) = std::env::var_os(BIN_ENV).filter(|v| !v.is_empty()) {
        let bin = PathBuf::from(bin);
        ensure!(bin.is_file(), "{BIN_ENV}={} is not a file", bin.display());
        return Ok(bin);
    }
    let mut cargo = Command::new(env!("CARGO"));
    cargo
        .arg("build")
        .arg("--manifest-path")
        .arg(workspace_root().join("Cargo.toml"))
        .args([
            "-p",
            "tianzhong-gateway",
            "--bin",
            "tianzhong",
            "--message-format=json-render-diagnostics",
        ])
        .stdin(Stdio::null());
    if !cfg!(debug_assertions) {
        cargo.arg("--release");
    }
    let started = Instant::now();
    let out = cargo
        .output()
        .context("running cargo to build the gateway")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success(),
        "building the gateway failed ({}):\n{}",
        out.status,
        tail(&stderr, 60)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    for line in stdout.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let is_bin = v["reason"] == "compiler-artifact"
            && v["target"]["name"] == "tianzhong"
            && v["target"]["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "bin"));
        if is_bin && let Some(exe) = v["executable"].as_str() {
            println!(
                "gateway binary: {exe} (cargo build took {:.1} s)",
                started.elapsed().as_secs_f64()
            );
            return Ok(PathBuf::from(exe));
        }
    }
    bail!(
        "cargo built no `tianzhong` executable:\n{}",
        tail(&stderr, 30)
    )
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The generated gateway configuration with the API on `http` (for `/metrics`) and `outbox`
/// (a TOML table, e.g. `[outbox]\nenabled = true`) appended.
pub fn gateway_config(toml: &str, http: SocketAddr, outbox: &str) -> String {
    let mut t = toml.replace(
        "http_listen = \"off\"",
        &format!("http_listen = \"{http}\""),
    );
    t.push('\n');
    t.push_str(outbox);
    t.push('\n');
    t
}

/// A gateway running as a child process: `tianzhong run --config FILE`, its stderr and stdout
/// appended to a log file. Killed when dropped.
pub struct GatewayProcess {
    child: Option<Child>,
    spawned: Instant,
    http: SocketAddr,
    client: reqwest::Client,
}

impl GatewayProcess {
    /// Starts `bin run --config config`, appending its output to `log` after a line with
    /// `note`. `http` is where the configuration has it serve `/metrics`.
    pub fn spawn(
        bin: &Path,
        config: &Path,
        log: &Path,
        http: SocketAddr,
        note: &str,
    ) -> anyhow::Result<GatewayProcess> {
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        writeln!(file, "===== {note} =====")?;
        let err = file.try_clone()?;
        let mut cmd = Command::new(bin);
        cmd.arg("run")
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        // Plain text, so that the log can be searched.
        cmd.env("NO_COLOR", "1");
        let child = cmd
            .spawn()
            .with_context(|| format!("running {}", bin.display()))?;
        Ok(GatewayProcess {
            child: Some(child),
            spawned: Instant::now(),
            http,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()?,
        })
    }

    /// How long ago it was started.
    pub fn age(&self) -> Duration {
        self.spawned.elapsed()
    }

    /// Its process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Its exit status, if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// SIGKILL, and reaps it.
    pub fn kill(&mut self) -> anyhow::Result<ExitStatus> {
        let mut child = self
            .child
            .take()
            .context("the gateway was already stopped")?;
        let _ = child.kill();
        Ok(child.wait()?)
    }

    /// SIGTERM (a clean shutdown: the gateway stops its sources and flushes its sinks), and
    /// waits for it to exit; after `timeout` it is killed and this is an error.
    pub fn terminate(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let mut child = self
            .child
            .take()
            .context("the gateway was already stopped")?;
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .context("running kill -TERM")?;
        ensure!(sent.success(), "kill -TERM {} failed", child.id());
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("the gateway did not exit within {timeout:?} of SIGTERM; killed");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Its `/metrics` text; `None` while it does not answer (starting, or gone).
    pub async fn metrics(&self) -> Option<String> {
        let r = self
            .client
            .get(format!("http://{}/metrics", self.http))
            .send()
            .await
            .ok()?;
        if !r.status().is_success() {
            return None;
        }
        r.text().await.ok()
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A subscriber collecting every message under a filter, like [`crate::check::Collector`], but
/// with a client id of its own and, when `persistent`, a persistent session
/// (`clean_session = false`): a broker with persistence keeps its subscription and queues its
/// messages across a restart, so nothing the broker accepted is missed while the subscriber
/// reconnects.
pub struct Subscriber {
    messages: Arc<Mutex<Vec<Message>>>,
    connects: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Subscriber {
    /// Connects to `broker` as `client_id`, subscribes to `filter` (QoS 1, again on every
    /// connect) and returns once the broker has acknowledged the subscription.
    pub async fn start(
        broker: SocketAddr,
        filter: &str,
        client_id: &str,
        persistent: bool,
    ) -> anyhow::Result<Subscriber> {
        let mut options = MqttOptions::new(client_id, broker.ip().to_string(), broker.port());
        options.set_keep_alive(Duration::from_secs(30));
        options.set_clean_session(!persistent);
        options.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        let messages = Arc::new(Mutex::new(Vec::new()));
        let connects = Arc::new(AtomicU64::new(0));
        let (subscribed_tx, mut subscribed) = watch::channel(false);
        let task = {
            let messages = Arc::clone(&messages);
            let connects = Arc::clone(&connects);
            let filter = filter.to_owned();
            tokio::spawn(async move {
                loop {
                    match eventloop.poll().await {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            connects.fetch_add(1, Ordering::Relaxed);
                            let _ = client.try_subscribe(filter.as_str(), QoS::AtLeastOnce);
                        }
                        Ok(Event::Incoming(Packet::SubAck(_))) => {
                            let _ = subscribed_tx.send(true);
                        }
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            messages
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .push((p.topic.clone(), p.payload.to_vec()));
                        }
                        Ok(_) => {}
                        Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
            })
        };
        tokio::time::timeout(Duration::from_secs(30), subscribed.wait_for(|s| *s))
            .await
            .context("the broker never acknowledged the subscription")??;
        Ok(Subscriber {
            messages,
            connects,
            task,
        })
    }

    /// Every message so far.
    pub fn messages(&self) -> Vec<Message> {
        self.messages
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Messages so far.
    pub fn len(&self) -> usize {
        self.messages
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// Whether none has come.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// CONNACKs so far (1 + reconnects).
    pub fn connects(&self) -> u64 {
        self.connects.load(Ordering::Relaxed)
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The readings of a VictoriaMetrics export, every copy kept: the `value`, `quality_code` and
/// `seq` samples of one point share series labels and timestamp, and a point written twice
/// (a replay) has each of them twice there. VictoriaMetrics keeps such copies unless run with
/// `-dedup.minScrapeInterval=1ms`; InfluxDB, whose point identity is series and timestamp,
/// keeps one. Also returns what could not be joined. Alarm series are ignored.
pub fn vm_readings(series: &[ExportedSeries]) -> (HashMap<Key, Vec<Observed>>, Vec<String>) {
    type Point = (String, String, String, String, String, i64);
    let mut parts: BTreeMap<Point, [Vec<f64>; 3]> = BTreeMap::new();
    for s in series {
        let name = s.name();
        let (measurement, field) = if let Some(m) = name.strip_suffix("_quality_code") {
            (m, 1)
        } else if let Some(m) = name.strip_suffix("_value") {
            (m, 0)
        } else if let Some(m) = name.strip_suffix("_seq") {
            (m, 2)
        } else {
            continue;
        };
        if measurement == "alarm" {
            continue;
        }
        for (v, t) in s.values.iter().zip(&s.timestamps) {
            parts
                .entry((
                    measurement.to_owned(),
                    s.label("node").to_owned(),
                    s.label("channel").to_owned(),
                    s.label("site").to_owned(),
                    s.label("unit").to_owned(),
                    *t,
                ))
                .or_default()[field]
                .push(*v);
        }
    }
    let mut readings: HashMap<Key, Vec<Observed>> = HashMap::new();
    let mut unjoined = Vec::new();
    for ((measurement, node, channel, site, unit, ts), [values, qualities, seqs]) in parts {
        let Some(ch) = channel
            .strip_prefix("ch")
            .and_then(|c| c.parse::<u16>().ok())
        else {
            unjoined.push(format!(
                "{measurement} node={node}: channel tag {channel:?}"
            ));
            continue;
        };
        if values.len() != seqs.len() || (!qualities.is_empty() && qualities.len() != seqs.len()) {
            unjoined.push(format!(
                "{measurement} node={node} channel={channel} at {ts}: values {values:?}, seqs \
                 {seqs:?}, quality codes {qualities:?}"
            ));
            continue;
        }
        for (i, (value, seq)) in values.iter().zip(&seqs).enumerate() {
            readings
                .entry((node.clone(), ch, *seq as u32))
                .or_default()
                .push(Observed {
                    site: site.clone(),
                    measurement: measurement.clone(),
                    unit: unit.clone(),
                    value: *value,
                    quality: qualities
                        .get(i)
                        .and_then(|c| char::from_u32(*c as u32).filter(|_| *c >= 0.0)),
                    ts,
                });
        }
    }
    (readings, unjoined)
}

/// What a sink holds against the ground truth, copies counted.
#[derive(Debug, Default)]
pub struct Account {
    /// Missing, wrong and invented readings (each reading judged by all its copies).
    pub comparison: Comparison,
    /// Distinct readings held.
    pub readings: usize,
    /// Copies held in all (a reading written twice counts twice).
    pub copies: usize,
    /// Readings held more than once, every copy identical (same series, timestamp, value,
    /// flag): replays, which an identity of series and timestamp (InfluxDB's) or of node and
    /// seq (an MQTT consumer's) collapses into one.
    pub replayed: usize,
    /// Readings held in copies that differ (another timestamp, value, flag, unit…): true
    /// duplicates, which no idempotent sink collapses.
    pub differing: Vec<String>,
}

impl Account {
    /// Compares `held` with `truth`: every reading of `required` must be there, everything held
    /// must be a sample of a `delivered` (node, seq), exactly as sampled, and all copies of a
    /// reading alike.
    pub fn of(
        truth: &Truth,
        held: &HashMap<Key, Vec<Observed>>,
        required: &HashSet<Key>,
        delivered: &HashSet<(String, u32)>,
    ) -> Account {
        let comparison = truth.compare(held, required, delivered, false);
        let mut a = Account {
            comparison,
            readings: held.len(),
            ..Account::default()
        };
        let mut differing: Vec<(&Key, &Vec<Observed>)> = Vec::new();
        for (key, copies) in held {
            a.copies += copies.len();
            if copies.len() > 1 {
                if copies.iter().all(|c| c == &copies[0]) {
                    a.replayed += 1;
                } else {
                    differing.push((key, copies));
                }
            }
        }
        differing.sort_by(|x, y| x.0.cmp(y.0));
        a.differing = differing
            .into_iter()
            .map(|((node, ch, seq), copies)| format!("{node} ch{ch} seq {seq}: {copies:?}"))
            .collect();
        a
    }

    /// Nothing missing, wrong, invented or held in differing copies.
    pub fn exact(&self) -> bool {
        let c = &self.comparison;
        c.missing.is_empty()
            && c.wrong.is_empty()
            && c.invented.is_empty()
            && self.differing.is_empty()
    }

    /// The comparison's account plus the copies.
    pub fn summary(&self, sink: &str) -> String {
        let mut s = self.comparison.summary(sink);
        s.push_str(&format!(
            "\n  {sink}: {} readings held in {} copies; {} replayed (identical copies, {} extra); \
             {} held in differing copies",
            self.readings,
            self.copies,
            self.replayed,
            self.copies - self.readings,
            self.differing.len()
        ));
        if !self.differing.is_empty() {
            s.push_str(&format!(
                "\n  differing copies (first of {}):",
                self.differing.len()
            ));
            for line in self.differing.iter().take(8) {
                s.push_str("\n    ");
                s.push_str(line);
            }
        }
        s
    }
}

/// The raw samples of the series `selector` matches, over the last day (replayed copies
/// included): `sum(count_over_time(selector[1d]))`, cheap enough to poll.
pub async fn vm_sample_count(vm: &VictoriaMetrics, selector: &str) -> anyhow::Result<u64> {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    let client = CLIENT.get_or_init(reqwest::Client::new);
    let query = format!("sum(count_over_time({selector}[1d]))");
    let r = client
        .post(format!("{}/api/v1/query", vm.url()))
        .form(&[("query", query.as_str())])
        .send()
        .await?;
    ensure!(r.status().is_success(), "query {query}: {}", r.status());
    let v: serde_json::Value = serde_json::from_str(&r.text().await?)?;
    let Some(first) = v["data"]["result"].as_array().and_then(|r| r.first()) else {
        return Ok(0);
    };
    let n = first["value"][1]
        .as_str()
        .and_then(|s| s.parse::<f64>().ok())
        .with_context(|| format!("query {query}: {v}"))?;
    Ok(n as u64)
}

/// The (node, channel, seq) of every `_seq` sample in VictoriaMetrics.
pub async fn vm_seq_keys(vm: &VictoriaMetrics) -> anyhow::Result<HashSet<Key>> {
    vm.force_flush().await?;
    let series = vm.export_matching(r#"{__name__=~".+_seq"}"#).await?;
    let mut keys = HashSet::new();
    for s in series {
        if s.name().starts_with("alarm_") {
            continue;
        }
        let Some(ch) = s
            .label("channel")
            .strip_prefix("ch")
            .and_then(|c| c.parse::<u16>().ok())
        else {
            continue;
        };
        for v in &s.values {
            keys.insert((s.label("node").to_owned(), ch, *v as u32));
        }
    }
    Ok(keys)
}

/// Polls VictoriaMetrics until it holds every key of `required` (by their `_seq` samples), for
/// at most `timeout`; returns how many of them it holds at the end.
pub async fn wait_vm_holds(
    vm: &VictoriaMetrics,
    required: &HashSet<Key>,
    timeout: Duration,
) -> anyhow::Result<usize> {
    let deadline = Instant::now() + timeout;
    loop {
        // The cheap count first: fewer raw samples than readings required cannot be all.
        vm.force_flush().await?;
        let raw = vm_sample_count(vm, r#"{__name__=~".+_seq"}"#).await?;
        let last = Instant::now() > deadline;
        if raw as usize >= required.len() || last {
            let keys = vm_seq_keys(vm).await?;
            let found = required.iter().filter(|k| keys.contains(*k)).count();
            if found == required.len() || last {
                return Ok(found);
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The (node, channel, seq) of every telemetry reading among `messages` under `prefix`.
pub fn upstream_keys(prefix: &str, messages: &[Message]) -> HashSet<Key> {
    crate::check::upstream_readings(prefix, messages)
        .0
        .into_keys()
        .collect()
}

/// What a broker's log (`log_type all`, see `MosquittoOptions::log_all`) tells about one
/// connection of one client: the QoS 1 messages it was sent, new and again, and acknowledged.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BrokerSession {
    /// PUBLISHes sent for the first time (`d0`).
    pub sent: u64,
    /// PUBLISHes sent again (`d1`): unacknowledged when the previous connection ended.
    pub resent: u64,
    /// PUBACKs received.
    pub acked: u64,
    /// Messages sent (in this or an earlier connection) and not acknowledged when this
    /// connection ended.
    pub unacked_at_end: u64,
}

/// Follows `client` through a mosquitto log written with `log_type all`: one entry per
/// connection, in order.
pub fn broker_sessions(log: &Path, client: &str) -> Vec<BrokerSession> {
    let Ok(file) = File::open(log) else {
        return Vec::new();
    };
    use std::io::BufRead as _;
    let connected = format!(" as {client} (");
    let sending = format!("Sending PUBLISH to {client} (d");
    let puback = format!("Received PUBACK from {client} (Mid: ");
    let gone = [
        format!("Client {client} disconnected"),
        format!("Client {client} closed its connection"),
    ];
    let mut sessions: Vec<BrokerSession> = Vec::new();
    let mut outstanding: HashSet<u32> = HashSet::new();
    for line in std::io::BufReader::new(file).lines().map_while(Result::ok) {
        if line.contains(&connected) && line.contains("New client connected") {
            sessions.push(BrokerSession::default());
            continue;
        }
        let Some(s) = sessions.last_mut() else {
            continue;
        };
        if let Some(rest) = line.split_once(&sending).map(|(_, r)| r) {
            // "0, q1, r0, m123, 'topic', …"
            let dup = rest.starts_with('1');
            let mid = rest
                .split(", m")
                .nth(1)
                .and_then(|m| m.split(',').next())
                .and_then(|m| m.parse::<u32>().ok());
            if rest.contains(", q0,") {
                continue;
            }
            if dup {
                s.resent += 1;
            } else {
                s.sent += 1;
            }
            if let Some(mid) = mid {
                outstanding.insert(mid);
            }
        } else if let Some(rest) = line.split_once(&puback).map(|(_, r)| r) {
            s.acked += 1;
            if let Some(mid) = rest.split(',').next().and_then(|m| m.parse::<u32>().ok()) {
                outstanding.remove(&mid);
            }
        } else if gone.iter().any(|g| line.contains(g.as_str())) {
            s.unacked_at_end = outstanding.len() as u64;
        }
    }
    if let Some(s) = sessions.last_mut() {
        s.unacked_at_end = outstanding.len() as u64;
    }
    sessions
}

/// Set to keep each drill's gateway log (copied to the system's temporary directory).
pub const KEEP_ENV: &str = "TIANZHONG_DRILL_KEEP";

/// Copies `log` to `<temp dir>/tianzhong-drill-<name>.log` when [`KEEP_ENV`] is set; returns
/// where.
pub fn keep_log(log: &Path, name: &str) -> Option<PathBuf> {
    std::env::var_os(KEEP_ENV).filter(|v| !v.is_empty() && v != "0")?;
    let kept = std::env::temp_dir().join(format!("tianzhong-drill-{name}.log"));
    std::fs::copy(log, &kept).ok()?;
    println!("gateway log kept at {}", kept.display());
    Some(kept)
}

/// A log file's last `lines` lines, for a failure's message.
pub fn log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => tail(&text, lines),
        Err(e) => format!("({}: {e})", path.display()),
    }
}

/// `line` without ANSI escape sequences (colours).
pub fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters… final byte in '@'..='~'.
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) && c != '[' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Lines of a log file that contain any of `needles` (colours removed), at most `max`.
pub fn log_grep(path: &Path, needles: &[&str], max: usize) -> Vec<String> {
    let Ok(file) = File::open(path) else {
        return Vec::new();
    };
    use std::io::BufRead as _;
    std::io::BufReader::new(file)
        .lines()
        .map_while(Result::ok)
        .map(|l| strip_ansi(&l))
        .filter(|l| needles.iter().any(|n| l.contains(n)))
        .take(max)
        .collect()
}
