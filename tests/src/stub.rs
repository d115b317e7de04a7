//! What the fault drills (`tests/drill_sinks.rs`, `tests/drill_disk.rs`) need beyond the
//! end-to-end harness:
//!
//! | item | what |
//! |---|---|
//! | [`HttpStub`] | a loopback HTTP/1.1 server standing in for InfluxDB's `/api/v2/write`: scripted answers (503/429 with `Retry-After`, 500, a hang), 400 for any body holding a poison marker, 204 otherwise — or forwarding to a real server as a tap; it can go down (connection refused) and come back on the same port; it records every request, its body and its answer |
//! | [`parse_line_protocol`], [`readings_of`] | the recorded bodies back into points, and points into readings keyed like [`check`](crate::check) keys them |
//! | [`VmProcess`] | a VictoriaMetrics that can be stopped (SIGTERM) and started again on the same port and data directory — [`services::VictoriaMetrics`](crate::services::VictoriaMetrics) removes its data when dropped, so it cannot show a backlog replayed into the data written before an outage |
//! | [`DrillFleet`] | a simulated fleet like [`fleet::FleetBuilder`](crate::fleet::FleetBuilder)'s, on a clock **faster than real time** whose simulated 0 lies far enough in the past that every timestamp stays behind the wall clock, with nodes of any channels, and the gateway configuration for it (outbox bound, fsync interval, skew) |
//! | [`TmpfsMount`] | a size-limited tmpfs mounted over a temporary directory (root only), unmounted when dropped |

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt::Write as _;
use std::net::{SocketAddr, TcpStream as StdTcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use tianzhong_protocol::{NodeId, Quantity, SiteId};
use tianzhong_simulator::clock::SimClock;
use tianzhong_simulator::fault::ScheduledFault;
use tianzhong_simulator::fleet::Fleet;
use tianzhong_simulator::node::{ChannelSpec, NodeSpec};
use tianzhong_simulator::signal::Component;
use tianzhong_simulator::spec::{BusKind, BusSpec, FleetSpec};
use tianzhong_simulator::transport::{self, Transport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::{AbortHandle, JoinHandle};

use crate::check::{Key, Observed};
use crate::fleet::{PROFILES, SITE, unix_ms};
use crate::services::{ExportedSeries, TempDir, free_port};

// ---------------------------------------------------------------------------------------------
// The HTTP stub
// ---------------------------------------------------------------------------------------------

/// One scripted answer.
#[derive(Clone, Debug)]
pub enum Reply {
    /// This status, with these extra headers and body.
    Status(u16, Vec<(String, String)>, String),
    /// Read the request and never answer; the connection is held until the client drops it.
    Hang,
}

impl Reply {
    /// A status with a `Retry-After` of `seconds`.
    pub fn retry_after(code: u16, seconds: u64) -> Reply {
        Reply::Status(
            code,
            vec![("Retry-After".into(), seconds.to_string())],
            format!("{{\"code\":\"unavailable\",\"message\":\"scripted {code}\"}}"),
        )
    }

    /// A bare status.
    pub fn status(code: u16) -> Reply {
        Reply::Status(
            code,
            Vec::new(),
            format!("{{\"code\":\"scripted\",\"message\":\"scripted {code}\"}}"),
        )
    }
}

/// One request as the stub received it, and what it answered.
#[derive(Clone, Debug)]
pub struct Request {
    /// When its head was read.
    pub at: Instant,
    /// Path and query.
    pub target: String,
    /// The body (line protocol).
    pub body: String,
    /// The status answered; `None` when the stub hung (or the forward failed without one).
    pub status: Option<u16>,
}

impl Request {
    /// Whether it was answered 2xx (the points are stored).
    pub fn accepted(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

#[derive(Default)]
struct StubState {
    script: VecDeque<Reply>,
    poison: Option<String>,
    forward: Option<String>,
    log: Vec<Request>,
}

/// A loopback InfluxDB write endpoint that misbehaves on cue (see the module docs).
///
/// What it answers, in order of precedence: the next scripted [`Reply`] while any is left;
/// 400 when the body contains the poison marker; the forwarded server's answer when it
/// forwards; 204 otherwise. HTTP/1.1 with keep-alive, as reqwest uses it.
pub struct HttpStub {
    port: u16,
    state: Arc<Mutex<StubState>>,
    accept: Mutex<Option<JoinHandle<()>>>,
    conns: Arc<Mutex<Vec<AbortHandle>>>,
    http: reqwest::Client,
}

impl HttpStub {
    /// Starts the stub on a free loopback port, up.
    pub async fn start() -> anyhow::Result<HttpStub> {
        let stub = HttpStub {
            port: free_port(),
            state: Arc::default(),
            accept: Mutex::new(None),
            conns: Arc::default(),
            http: reqwest::Client::new(),
        };
        stub.up().await?;
        Ok(stub)
    }

    /// Its base URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, StubState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends answers to the script.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.state().script.extend(replies);
    }

    /// Scripted answers not yet used.
    pub fn script_left(&self) -> usize {
        self.state().script.len()
    }

    /// Answers 400 to every body that contains `marker`.
    pub fn poison(&self, marker: &str) {
        self.state().poison = Some(marker.to_owned());
    }

    /// Forwards every request (not scripted, not poisoned) to `base_url` and answers what it
    /// answered.
    pub fn forward_to(&self, base_url: &str) {
        self.state().forward = Some(base_url.to_owned());
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Request> {
        self.state().log.clone()
    }

    /// Requests so far.
    pub fn request_count(&self) -> usize {
        self.state().log.len()
    }

    /// Points in accepted requests so far (lines of their bodies).
    pub fn accepted_points(&self) -> usize {
        self.state()
            .log
            .iter()
            .filter(|r| r.accepted())
            .map(|r| r.body.lines().filter(|l| !l.trim().is_empty()).count())
            .sum()
    }

    /// Whether it listens.
    pub fn is_up(&self) -> bool {
        self.accept
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// Stops listening and closes every connection: clients get "connection refused", as from
    /// a stopped server.
    pub fn down(&self) {
        if let Some(task) = self.accept.lock().unwrap_or_else(|e| e.into_inner()).take() {
            task.abort();
        }
        for c in self
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            c.abort();
        }
        // The listener is dropped with the aborted task; wait until the port refuses.
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + Duration::from_secs(10);
        while StdTcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok()
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Listens again on the same port.
    pub async fn up(&self) -> anyhow::Result<()> {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + Duration::from_secs(30);
        let listener = loop {
            let socket = TcpSocket::new_v4()?;
            socket.set_reuseaddr(true)?;
            match socket.bind(addr).and_then(|()| socket.listen(128)) {
                Ok(l) => break l,
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e).context(format!("binding the stub to {addr}")),
            }
        };
        let state = Arc::clone(&self.state);
        let conns = Arc::clone(&self.conns);
        let http = self.http.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    return;
                };
                let handle = tokio::spawn(serve(socket, Arc::clone(&state), http.clone()));
                let mut conns = conns.lock().unwrap_or_else(|e| e.into_inner());
                conns.retain(|c| !c.is_finished());
                conns.push(handle.abort_handle());
            }
        });
        *self.accept.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
        Ok(())
    }
}

impl Drop for HttpStub {
    fn drop(&mut self) {
        if let Some(task) = self.accept.lock().unwrap_or_else(|e| e.into_inner()).take() {
            task.abort();
        }
        for c in self
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            c.abort();
        }
    }
}

struct Head {
    target: String,
    close: bool,
    body: String,
}

/// Reads one request from `socket`, with what is left of `buf` from the previous one.
async fn read_request(socket: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Head> {
    let mut chunk = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next()?.to_owned();
    let target = request_line
        .split(' ')
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    let mut length = 0usize;
    let mut close = false;
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
            if name == "content-length" {
                length = value.parse().ok()?;
            } else if name == "connection" && value.eq_ignore_ascii_case("close") {
                close = true;
            }
        }
    }
    let start = head_end + 4;
    while buf.len() < start + length {
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8_lossy(&buf[start..start + length]).into_owned();
    buf.drain(..start + length);
    Some(Head {
        target,
        close,
        body,
    })
}

async fn serve(mut socket: TcpStream, state: Arc<Mutex<StubState>>, http: reqwest::Client) {
    let mut buf = Vec::new();
    loop {
        let Some(head) = read_request(&mut socket, &mut buf).await else {
            return;
        };
        let at = Instant::now();
        let (scripted, poisoned, forward) = {
            let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
            let scripted = s.script.pop_front();
            let poisoned = s
                .poison
                .as_ref()
                .is_some_and(|m| head.body.contains(m.as_str()));
            (scripted, poisoned, s.forward.clone())
        };
        let reply = match (scripted, poisoned, forward) {
            (Some(r), _, _) => r,
            (None, true, _) => Reply::Status(
                400,
                Vec::new(),
                "{\"code\":\"invalid\",\"message\":\"drill: poisoned batch refused\"}".into(),
            ),
            (None, false, Some(base)) => {
                match http
                    .post(format!("{base}{}", head.target))
                    .header("content-type", "text/plain; charset=utf-8")
                    .body(head.body.clone())
                    .send()
                    .await
                {
                    Ok(r) => {
                        let code = r.status().as_u16();
                        let text = r.text().await.unwrap_or_default();
                        Reply::Status(code, Vec::new(), text)
                    }
                    Err(e) => Reply::Status(503, Vec::new(), format!("drill tap: {e}")),
                }
            }
            (None, false, None) => Reply::Status(204, Vec::new(), String::new()),
        };
        let log = |status: Option<u16>| {
            state
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .log
                .push(Request {
                    at,
                    target: head.target.clone(),
                    body: head.body.clone(),
                    status,
                });
        };
        match reply {
            Reply::Status(code, headers, body) => {
                let mut response = format!(
                    "HTTP/1.1 {code} Drill\r\nContent-Length: {}\r\n",
                    body.len()
                );
                if !body.is_empty() {
                    response.push_str("Content-Type: application/json\r\n");
                }
                for (name, value) in headers {
                    let _ = write!(response, "{name}: {value}\r\n");
                }
                response.push_str("\r\n");
                response.push_str(&body);
                // Logged once the answer is out: a connection cut before that (the stub
                // going down) was not answered, and the client will send it again.
                if socket.write_all(response.as_bytes()).await.is_err() {
                    log(None);
                    return;
                }
                log(Some(code));
                if head.close {
                    return;
                }
            }
            Reply::Hang => {
                log(None);
                // Until the client gives up and closes.
                let mut sink = [0u8; 1024];
                while let Ok(n) = socket.read(&mut sink).await {
                    if n == 0 {
                        break;
                    }
                }
                return;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Line protocol back into readings
// ---------------------------------------------------------------------------------------------

/// One line-protocol point.
#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    /// Measurement.
    pub measurement: String,
    /// Tags, unescaped.
    pub tags: BTreeMap<String, String>,
    /// Fields as written: strings unquoted and unescaped, numbers with their suffix.
    pub fields: BTreeMap<String, String>,
    /// Timestamp (ms, as the gateway writes).
    pub ts: i64,
}

impl Point {
    /// A tag, or "".
    pub fn tag(&self, key: &str) -> &str {
        self.tags.get(key).map_or("", String::as_str)
    }

    /// A numeric field (an `i`/`u` suffix dropped).
    pub fn number(&self, key: &str) -> Option<f64> {
        self.fields
            .get(key)?
            .trim_end_matches(['i', 'u'])
            .parse()
            .ok()
    }
}

/// Splits at `sep` outside backslash escapes and (when `quotes`) double-quoted strings.
fn split_unescaped(s: &str, sep: char, quotes: bool, limit: usize) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut escaped, mut quoted) = (0, false, false);
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' => escaped = true,
            '"' if quotes => quoted = !quoted,
            c if c == sep && !quoted && out.len() + 1 < limit => {
                out.push(&s[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Parses a line-protocol body as the gateway writes it (every point with a timestamp).
pub fn parse_line_protocol(body: &str) -> anyhow::Result<Vec<Point>> {
    let mut out = Vec::new();
    for line in body.lines().filter(|l| !l.trim().is_empty()) {
        let parts = split_unescaped(line, ' ', true, usize::MAX);
        ensure!(parts.len() == 3, "not three parts: {line:?}");
        let series = split_unescaped(parts[0], ',', false, usize::MAX);
        let measurement = unescape(series[0]);
        let mut tags = BTreeMap::new();
        for t in &series[1..] {
            let kv = split_unescaped(t, '=', false, 2);
            ensure!(kv.len() == 2, "tag {t:?} in {line:?}");
            tags.insert(unescape(kv[0]), unescape(kv[1]));
        }
        let mut fields = BTreeMap::new();
        for f in split_unescaped(parts[1], ',', true, usize::MAX) {
            let kv = split_unescaped(f, '=', true, 2);
            ensure!(kv.len() == 2, "field {f:?} in {line:?}");
            let value = kv[1];
            let value = match value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
                Some(s) => unescape(s),
                None => value.to_owned(),
            };
            fields.insert(unescape(kv[0]), value);
        }
        let ts = parts[2]
            .parse()
            .with_context(|| format!("timestamp of {line:?}"))?;
        out.push(Point {
            measurement,
            tags,
            fields,
            ts,
        });
    }
    Ok(out)
}

/// Readings among `points` (every measurement but `alarm`), keyed (node, channel, seq), in the
/// order given; and the number of alarm points.
pub fn readings_of<'a>(
    points: impl IntoIterator<Item = &'a Point>,
) -> anyhow::Result<(HashMap<Key, Vec<Observed>>, usize)> {
    let mut readings: HashMap<Key, Vec<Observed>> = HashMap::new();
    let mut alarms = 0;
    for p in points {
        if p.measurement == "alarm" {
            alarms += 1;
            continue;
        }
        let channel: u16 = p
            .tag("channel")
            .strip_prefix("ch")
            .and_then(|c| c.parse().ok())
            .with_context(|| format!("channel tag of {p:?}"))?;
        let seq = p.number("seq").with_context(|| format!("seq of {p:?}"))? as u32;
        readings
            .entry((p.tag("node").to_owned(), channel, seq))
            .or_default()
            .push(Observed {
                site: p.tag("site").to_owned(),
                measurement: p.measurement.clone(),
                unit: p.tag("unit").to_owned(),
                value: p.number("value").unwrap_or(f64::NAN),
                quality: p.fields.get("quality").and_then(|q| q.chars().next()),
                ts: p.ts,
            });
    }
    Ok((readings, alarms))
}

/// Every point of the accepted requests among `requests`, in the order they were accepted.
pub fn accepted_points(requests: &[Request]) -> anyhow::Result<Vec<Point>> {
    let mut out = Vec::new();
    for r in requests.iter().filter(|r| r.accepted()) {
        out.extend(parse_line_protocol(&r.body)?);
    }
    Ok(out)
}

/// For each (node, channel), whether its readings among `points` came with strictly
/// increasing seq: the (node, channel)s that did not, with the first offending pair.
pub fn out_of_order(points: &[Point]) -> Vec<String> {
    let mut last: HashMap<(String, String), u64> = HashMap::new();
    let mut bad = Vec::new();
    for p in points.iter().filter(|p| p.measurement != "alarm") {
        let Some(seq) = p.number("seq") else { continue };
        let key = (p.tag("node").to_owned(), p.tag("channel").to_owned());
        if let Some(prev) = last.insert(key.clone(), seq as u64)
            && prev >= seq as u64
        {
            bad.push(format!("{} {}: seq {prev} then {seq}", key.0, key.1));
        }
    }
    bad
}

// ---------------------------------------------------------------------------------------------
// A VictoriaMetrics that stops and starts
// ---------------------------------------------------------------------------------------------

/// A single-node VictoriaMetrics that can be stopped and started again on the same port and
/// data directory (see the module docs).
pub struct VmProcess {
    port: u16,
    dir: TempDir,
    child: Option<Child>,
    http: reqwest::Client,
}

impl VmProcess {
    /// Starts it on a free loopback port; returns once it listens.
    pub fn start() -> anyhow::Result<VmProcess> {
        ensure!(
            Path::new(crate::services::VICTORIA_METRICS).exists(),
            "{} is missing: apt-get install victoria-metrics",
            crate::services::VICTORIA_METRICS
        );
        let mut vm = VmProcess {
            port: free_port(),
            dir: TempDir::new("tz-drill-vm")?,
            child: None,
            http: reqwest::Client::new(),
        };
        vm.restart()?;
        Ok(vm)
    }

    /// Its base URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("victoria-metrics.log")
    }

    /// Starts it (again); returns once it listens.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        ensure!(self.child.is_none(), "already running");
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + Duration::from_secs(60);
        'spawn: loop {
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.log())?;
            let mut child = Command::new(crate::services::VICTORIA_METRICS)
                .arg("-storageDataPath")
                .arg(self.dir.path().join("data"))
                .arg("-httpListenAddr")
                .arg(addr.to_string())
                .args(["-retentionPeriod", "100y"])
                .arg("-search.latencyOffset=0s")
                .arg("-loggerLevel=WARN")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .context("running victoria-metrics")?;
            while StdTcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
                if let Some(status) = child.try_wait()? {
                    // The port may linger after a stop; try again for a while.
                    if Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(300));
                        continue 'spawn;
                    }
                    bail!(
                        "victoria-metrics exited with {status}; see {}",
                        self.log().display()
                    );
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    bail!("victoria-metrics does not listen on {addr}");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            self.child = Some(child);
            return Ok(());
        }
    }

    /// Stops it as an operator would (SIGTERM: it flushes what it took, then exits); waits for
    /// the exit (SIGKILL after 60 s).
    pub fn stop(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(60);
        while child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("victoria-metrics did not stop within 60 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Every sample of every series, after a flush.
    pub async fn export(&self) -> anyhow::Result<Vec<ExportedSeries>> {
        let r = self
            .http
            .get(format!("{}/internal/force_flush", self.url()))
            .send()
            .await?;
        ensure!(r.status().is_success(), "force_flush: {}", r.status());
        let r = self
            .http
            .post(format!("{}/api/v1/export", self.url()))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("match%5B%5D=%7B__name__%3D~%22.%2B%22%7D")
            .send()
            .await?;
        ensure!(r.status().is_success(), "export: {}", r.status());
        let text = r.text().await?;
        let mut out = Vec::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let v: serde_json::Value = serde_json::from_str(line)?;
            let labels = v["metric"]
                .as_object()
                .context("export line without metric")?
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect();
            let values = v["values"]
                .as_array()
                .context("values")?
                .iter()
                .map(|x| x.as_f64().unwrap_or(f64::NAN))
                .collect();
            let timestamps = v["timestamps"]
                .as_array()
                .context("timestamps")?
                .iter()
                .map(|x| x.as_i64().unwrap_or(i64::MIN))
                .collect();
            out.push(ExportedSeries {
                labels,
                values,
                timestamps,
            });
        }
        Ok(out)
    }

    /// Exports once at least `samples` samples of series named `*_seq` are there, polling
    /// for at most `timeout`; the last export otherwise.
    pub async fn export_when(
        &self,
        samples: usize,
        timeout: Duration,
    ) -> anyhow::Result<Vec<ExportedSeries>> {
        let deadline = Instant::now() + timeout;
        loop {
            let series = self.export().await?;
            let n: usize = series
                .iter()
                .filter(|s| s.name().ends_with("_seq"))
                .map(|s| s.values.len())
                .sum();
            if n >= samples || Instant::now() > deadline {
                return Ok(series);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for VmProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A fleet on fast simulated time
// ---------------------------------------------------------------------------------------------

/// A channel of a node: quantity and its signal.
pub fn channel(quantity: Quantity, signal: Vec<Component>) -> ChannelSpec {
    ChannelSpec {
        quantity,
        signal,
        clamp: Some((0.0, 1000.0)),
        sensor: None,
    }
}

/// The channels of profile `i` of [`PROFILES`] (constant plus noise).
pub fn profile(i: usize) -> Vec<ChannelSpec> {
    PROFILES[i % PROFILES.len()]
        .iter()
        .map(|&(q, value, sigma)| {
            channel(
                q,
                vec![Component::Constant { value }, Component::Noise { sigma }],
            )
        })
        .collect()
}

/// Eight channels: all three profiles together (the most a node has).
pub fn wide() -> Vec<ChannelSpec> {
    (0..PROFILES.len()).flat_map(profile).collect()
}

/// A combustible-gas detector whose gas steps from 2 %LEL to 62 %LEL and back every
/// `period_s` simulated seconds (from `period_s / 2` on): past both GB/T 50493 set points and
/// back, so its alarms are raised and cleared over and over.
pub fn alarming_gas(period_s: f64, until_s: f64) -> Vec<ChannelSpec> {
    let mut signal = vec![
        Component::Constant { value: 2.0 },
        Component::Noise { sigma: 0.2 },
    ];
    let mut at = period_s / 2.0;
    let mut up = true;
    while at < until_s {
        signal.push(Component::Step {
            at_s: at,
            delta: if up { 60.0 } else { -60.0 },
        });
        up = !up;
        at += period_s / 2.0;
    }
    vec![
        channel(Quantity::CombustibleGas, signal),
        channel(
            Quantity::Oxygen,
            vec![
                Component::Constant { value: 20.9 },
                Component::Noise { sigma: 0.05 },
            ],
        ),
    ]
}

/// A fleet being put together (see the module docs).
pub struct DrillFleet {
    dir: TempDir,
    speed: f64,
    buses: Vec<BusSpec>,
    nodes: Vec<NodeSpec>,
    faults: Vec<ScheduledFault>,
}

impl DrillFleet {
    /// An empty fleet whose simulated time runs `speed` times real time.
    pub fn new(speed: f64) -> anyhow::Result<DrillFleet> {
        Ok(DrillFleet {
            dir: TempDir::new("tz-drill-fleet")?,
            speed,
            buses: Vec::new(),
            nodes: Vec::new(),
            faults: Vec::new(),
        })
    }

    /// A Modbus TCP bus, every node behind one listener by unit ID.
    pub fn modbus_tcp(&mut self, bus: &str) {
        self.buses.push(BusSpec {
            name: bus.to_owned(),
            kind: BusKind::ModbusTcp {
                listen: "127.0.0.1:0".parse().expect("address"),
                per_node: false,
            },
        });
    }

    /// An MQTT bus on `broker`, each node publishing every sample round (every simulated
    /// second).
    pub fn mqtt(&mut self, bus: &str, broker: SocketAddr) {
        self.buses.push(BusSpec {
            name: bus.to_owned(),
            kind: BusKind::Mqtt {
                broker,
                publish_every_s: 1,
            },
        });
    }

    /// A node `id` on `bus` with `channels`; its unit is its position on the bus.
    pub fn node(&mut self, bus: &str, id: &str, channels: Vec<ChannelSpec>) -> String {
        let unit = self.nodes.iter().filter(|n| n.bus == bus).count() % 247 + 1;
        self.nodes.push(NodeSpec {
            id: NodeId::new(id).expect("valid node id"),
            site: SiteId::new(SITE).expect("valid site id"),
            bus: bus.to_owned(),
            unit: unit as u8,
            model: "TZ-DRILL".into(),
            channels,
        });
        id.to_owned()
    }

    /// `count` nodes `<bus>-NNN` on `bus`, taking the [`PROFILES`] in turn.
    pub fn nodes(&mut self, bus: &str, count: usize) -> Vec<String> {
        (0..count)
            .map(|i| {
                let p = self.nodes.len();
                self.node(bus, &format!("{bus}-{i:03}"), profile(p))
            })
            .collect()
    }

    /// Schedules a fault (simulated ms).
    pub fn fault(&mut self, fault: ScheduledFault) {
        self.faults.push(fault);
    }

    /// The gateway configuration for this fleet before it starts: for a fleet without Modbus
    /// TCP buses (their ports are known only once started), so that the gateway can subscribe
    /// before the first node publishes.
    pub fn gateway_toml(&self, s: &DrillSettings) -> anyhow::Result<String> {
        ensure!(
            self.buses
                .iter()
                .all(|b| !matches!(b.kind, BusKind::ModbusTcp { .. })),
            "a Modbus TCP bus has no address before the fleet starts"
        );
        Ok(toml_for(&self.buses, &self.nodes, &HashMap::new(), s))
    }

    /// Builds the fleet (keeping every sample as ground truth) on a clock running `speed`
    /// times real time, whose simulated 0 is `speed × horizon` before now, so that no
    /// timestamp within `horizon` of real time is in the future; starts stepping it and its
    /// transports.
    pub async fn start(self, horizon: Duration) -> anyhow::Result<RunningFleet> {
        let spec = FleetSpec {
            name: "drill".into(),
            seed: 20_250_707,
            buses: self.buses,
            nodes: self.nodes,
            faults: self.faults,
            base_dir: self.dir.path().to_owned(),
        };
        let epoch_ms = unix_ms() - (horizon.as_millis() as f64 * self.speed) as u64;
        let fleet = Arc::new(Fleet::build(
            &spec,
            SimClock::new(epoch_ms, self.speed),
            true,
        )?);
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
        Ok(RunningFleet {
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

/// A running drill fleet.
pub struct RunningFleet {
    /// The fleet; `fleet.truth` is the ground truth.
    pub fleet: Arc<Fleet>,
    /// What it was built from.
    pub spec: FleetSpec,
    /// Unix ms of simulated 0.
    pub epoch_ms: u64,
    transports: Vec<Transport>,
    tcp: HashMap<String, SocketAddr>,
    stepper: JoinHandle<()>,
    _dir: TempDir,
}

/// What the drill's gateway configuration says beyond the fleet.
#[derive(Clone, Debug)]
pub struct DrillSettings {
    /// `[gateway] data_dir`.
    pub data_dir: PathBuf,
    /// Every device's poll interval (real seconds).
    pub poll_interval_s: f64,
    /// Every bus's timeout.
    pub timeout_ms: u64,
    /// Every bus's retries.
    pub retries: u32,
    /// `[mqtt_source] broker`.
    pub mqtt_source: Option<SocketAddr>,
    /// `[sink.influxdb] url`, `batch_size`, `flush_interval_ms`.
    pub influxdb: Option<(String, usize, u64)>,
    /// `[sink.upstream_mqtt]` broker and prefix.
    pub upstream: Option<(SocketAddr, String)>,
    /// `[outbox] max_mb`.
    pub outbox_max_mb: Option<f64>,
    /// `[outbox] fsync_interval_ms`.
    pub fsync_interval_ms: Option<u64>,
}

impl DrillSettings {
    /// Polls every 0.5 s, 300 ms timeouts, one retry; nothing else.
    pub fn new(data_dir: &Path) -> DrillSettings {
        DrillSettings {
            data_dir: data_dir.to_owned(),
            poll_interval_s: 0.5,
            timeout_ms: 300,
            retries: 1,
            mqtt_source: None,
            influxdb: None,
            upstream: None,
            outbox_max_mb: None,
            fsync_interval_ms: None,
        }
    }
}

impl RunningFleet {
    /// Simulated time now.
    pub fn now(&self) -> u64 {
        self.fleet.clock.now()
    }

    /// Each node's channel quantities.
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

    /// The MQTT transports' statistics, summed over buses.
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

    /// Stops every transport; the fleet keeps sampling, unseen.
    pub async fn stop_transports(&mut self) {
        for t in self.transports.drain(..) {
            t.shutdown().await;
        }
    }

    /// (node, seq) of every Modbus read served and MQTT message published within `window`
    /// (simulated ms, inclusive), or all.
    pub fn deliveries(&self, window: Option<(u64, u64)>) -> HashSet<(String, u32)> {
        let truth = &self.fleet.truth;
        truth
            .served()
            .into_iter()
            .chain(truth.published())
            .filter(|d| window.is_none_or(|(from, to)| (from..=to).contains(&d.time_ms)))
            .map(|d| (d.node.to_string(), d.seq))
            .collect()
    }

    /// The gateway configuration for this fleet.
    pub fn gateway_toml(&self, s: &DrillSettings) -> String {
        toml_for(&self.spec.buses, &self.spec.nodes, &self.tcp, s)
    }
}

/// The gateway configuration for `buses` and `nodes`, Modbus TCP buses at `tcp`.
fn toml_for(
    buses: &[BusSpec],
    nodes: &[NodeSpec],
    tcp: &HashMap<String, SocketAddr>,
    s: &DrillSettings,
) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "[gateway]\nid = \"gw-drill\"\ndata_dir = \"{}\"\nhttp_listen = \"off\"\n",
        s.data_dir.display()
    );
    // Device clocks run ahead of real time by design (simulated time is sped up, its 0 in
    // the past): keep their timestamps, which identify points in the sink.
    let _ = writeln!(t, "[pipeline]\nmax_skew_s = 31536000\n");
    let _ = writeln!(t, "[sink.local_store]\nenabled = false\n");
    if s.outbox_max_mb.is_some() || s.fsync_interval_ms.is_some() {
        let _ = writeln!(t, "[outbox]");
        if let Some(mb) = s.outbox_max_mb {
            let _ = writeln!(t, "max_mb = {mb}");
        }
        if let Some(ms) = s.fsync_interval_ms {
            let _ = writeln!(t, "fsync_interval_ms = {ms}");
        }
        t.push('\n');
    }
    for bus in buses {
        let BusKind::ModbusTcp { .. } = &bus.kind else {
            continue;
        };
        let _ = writeln!(
            t,
            "[[bus]]\nname = \"{}\"\nkind = \"modbus_tcp\"\naddress = \"{}\"\n\
             timeout_ms = {}\nretries = {}\n",
            bus.name, tcp[&bus.name], s.timeout_ms, s.retries
        );
        for n in nodes.iter().filter(|n| n.bus == bus.name) {
            let quantities: Vec<String> = n
                .channels
                .iter()
                .map(|c| format!("\"{}\"", c.quantity.key()))
                .collect();
            let _ = writeln!(
                t,
                "[[device]]\nid = \"{}\"\nsite = \"{}\"\nbus = \"{}\"\nunit = {}\n\
                 poll_interval_s = {}\nprofile = \"tianzhong\"\nquantities = [{}]\n",
                n.id,
                n.site,
                n.bus,
                n.unit,
                s.poll_interval_s,
                quantities.join(", ")
            );
        }
    }
    if let Some(broker) = s.mqtt_source {
        let _ = writeln!(t, "[mqtt_source]\nbroker = \"{broker}\"\n");
    }
    if let Some((url, batch, flush)) = &s.influxdb {
        let _ = writeln!(
            t,
            "[sink.influxdb]\nurl = \"{url}\"\norg = \"drill\"\nbucket = \"drill\"\n\
             batch_size = {batch}\nflush_interval_ms = {flush}\n"
        );
    }
    if let Some((broker, prefix)) = &s.upstream {
        let _ = writeln!(
            t,
            "[sink.upstream_mqtt]\nbroker = \"{broker}\"\ntopic_prefix = \"{prefix}\"\nqos = 1\n"
        );
    }
    t
}

impl Drop for RunningFleet {
    fn drop(&mut self) {
        self.stepper.abort();
    }
}

// ---------------------------------------------------------------------------------------------
// A small filesystem
// ---------------------------------------------------------------------------------------------

/// A tmpfs of a fixed size mounted over a fresh temporary directory; unmounted (and the
/// directory removed) when dropped. Needs root (CAP_SYS_ADMIN).
pub struct TmpfsMount {
    dir: TempDir,
    mounted: bool,
}

impl TmpfsMount {
    /// Mounts a tmpfs of `mib` MiB; an error when it cannot be mounted (not root, no
    /// `mount`), for the caller to fall back.
    pub fn new(prefix: &str, mib: u64) -> anyhow::Result<TmpfsMount> {
        let dir = TempDir::new(prefix)?;
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={mib}m,mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .output()
            .context("running mount")?;
        ensure!(
            out.status.success(),
            "mount -t tmpfs -o size={mib}m: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(TmpfsMount { dir, mounted: true })
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// (size, available) in bytes, from `df`.
    pub fn usage(&self) -> anyhow::Result<(u64, u64)> {
        let out = Command::new("df")
            .args(["-B1", "--output=size,avail"])
            .arg(self.dir.path())
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text.lines().nth(1).context("df printed no figures")?;
        let mut it = line.split_whitespace().map(|v| v.parse::<u64>());
        match (it.next(), it.next()) {
            (Some(Ok(size)), Some(Ok(avail))) => Ok((size, avail)),
            _ => bail!("df: {line:?}"),
        }
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

/// The size of the outbox's files (database and WAL) under `data_dir`, in bytes.
pub fn outbox_file_bytes(data_dir: &Path) -> u64 {
    let base = data_dir.join(tianzhong_gateway::gateway::OUTBOX_FILE);
    let wal = PathBuf::from(format!("{}-wal", base.display()));
    [base, wal]
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}
