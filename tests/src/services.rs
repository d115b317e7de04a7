//! External services the end-to-end tests start for themselves: mosquitto brokers and a
//! VictoriaMetrics server, each on a free loopback port with its own temporary directory, and
//! killed (and its directory removed) when dropped. Nothing has to be running beforehand.
//!
//! | service | binary | Debian package |
//! |---|---|---|
//! | [`Mosquitto`] | `/usr/sbin/mosquitto` | `mosquitto` |
//! | [`VictoriaMetrics`] | `/usr/bin/victoria-metrics` | `victoria-metrics` |

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};

/// The broker.
pub const MOSQUITTO: &str = "/usr/sbin/mosquitto";
/// The time-series database (accepts InfluxDB line protocol on `/api/v2/write`).
pub const VICTORIA_METRICS: &str = "/usr/bin/victoria-metrics";

/// How long a service may take to start listening on a loaded machine.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A free TCP port on loopback (bound and released: another process could take it in between,
/// which on a test machine does not happen in practice).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding an ephemeral loopback port")
}

/// A directory under the system's temporary directory, removed when dropped.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// A new, empty directory whose name starts with `prefix`.
    pub fn new(prefix: &str) -> anyhow::Result<TempDir> {
        static COUNT: AtomicU32 = AtomicU32::new(0);
        let n = COUNT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("{prefix}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(TempDir(dir))
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn require(binary: &str, package: &str) -> anyhow::Result<()> {
    ensure!(
        Path::new(binary).exists(),
        "{binary} is missing: the gateway's end-to-end tests run it; install it with \
         `apt-get install {package}`"
    );
    Ok(())
}

/// Waits until `addr` accepts connections, failing early if `child` exits.
fn wait_listening(
    child: &mut Child,
    addr: SocketAddr,
    what: &str,
    log: &Path,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if let Some(status) = child.try_wait()? {
            bail!("{what} exited with {status}; see {}", log.display());
        }
        if Instant::now() > deadline {
            bail!("{what} does not listen on {addr} after {START_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn kill(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// How a [`Mosquitto`] is configured beyond its listener; [`Default`] is what
/// [`Mosquitto::start`] uses.
#[derive(Clone, Debug)]
pub struct MosquittoOptions {
    /// `max_inflight_messages`: QoS 1 and 2 messages the broker sends each client before it
    /// waits for their acknowledgements (mosquitto's default 20). A subscriber that
    /// acknowledges only once a message is durable (the gateway's MQTT source, waiting for the
    /// outbox's group commit) gets at most this many messages per commit, so drills at
    /// thousands of messages a second raise it.
    pub max_inflight_messages: u16,
    /// `max_queued_messages` per client beyond the in-flight ones (mosquitto's default 1000).
    pub max_queued_messages: u32,
    /// `persistence true` with its database in the broker's directory: sessions,
    /// subscriptions, queued and retained messages are saved when the broker is stopped
    /// ([`Mosquitto::stop`], SIGTERM) and loaded when it starts again. A
    /// [`Mosquitto::kill`] still loses what changed since the last save.
    pub persistence: bool,
    /// `log_type all`: every packet to and from every client in the broker's log (see
    /// [`Mosquitto::log`]), some 5 lines per QoS 1 message relayed; otherwise errors,
    /// warnings and notices (among them "Outgoing messages are being dropped").
    pub log_all: bool,
}

impl Default for MosquittoOptions {
    fn default() -> MosquittoOptions {
        MosquittoOptions {
            max_inflight_messages: 20,
            max_queued_messages: 100_000,
            persistence: false,
            log_all: false,
        }
    }
}

/// A mosquitto broker on a loopback port of its own, by default without persistence (a restart
/// forgets every session and retained message, as a crashed broker without a disk would).
#[derive(Debug)]
pub struct Mosquitto {
    port: u16,
    dir: TempDir,
    child: Option<Child>,
}

impl Mosquitto {
    /// Starts a broker and returns once it listens.
    pub fn start() -> anyhow::Result<Mosquitto> {
        Mosquitto::start_with(&MosquittoOptions::default())
    }

    /// Starts a broker configured by `options` and returns once it listens.
    pub fn start_with(options: &MosquittoOptions) -> anyhow::Result<Mosquitto> {
        require(MOSQUITTO, "mosquitto")?;
        let port = free_port();
        let dir = TempDir::new("tz-e2e-mosquitto")?;
        // Started as root, mosquitto runs as user `mosquitto`: without this it can write
        // neither its log nor its persistence database into the directory.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))?;
        let persistence = if options.persistence {
            // Saved on a clean stop; the autosave only bounds what a kill loses.
            format!(
                "persistence true\npersistence_location {}/\nautosave_interval 1\n",
                dir.path().display()
            )
        } else {
            "persistence false\n".to_owned()
        };
        let log_types = if options.log_all {
            "log_type all\n"
        } else {
            "log_type error\nlog_type warning\nlog_type notice\n"
        };
        let config = format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\n{persistence}\
             max_inflight_messages {}\nmax_queued_messages {}\nlog_dest file {}\n{log_types}",
            options.max_inflight_messages,
            options.max_queued_messages,
            dir.path().join("mosquitto.log").display()
        );
        std::fs::write(dir.path().join("mosquitto.conf"), config)?;
        let mut broker = Mosquitto {
            port,
            dir,
            child: None,
        };
        broker.restart()?;
        Ok(broker)
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Its log file.
    pub fn log(&self) -> PathBuf {
        self.dir.path().join("mosquitto.log")
    }

    /// Starts the broker again on the same port (after [`Mosquitto::kill`] or
    /// [`Mosquitto::stop`]); returns once it listens.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        kill(&mut self.child);
        let mut child = Command::new(MOSQUITTO)
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("running {MOSQUITTO}"))?;
        // The port may linger briefly after a kill; mosquitto then exits, and is started again.
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match wait_listening(&mut child, self.addr(), "mosquitto", &self.log()) {
                Ok(()) => break,
                Err(e) if Instant::now() < deadline && child.try_wait()?.is_some() => {
                    std::thread::sleep(Duration::from_millis(200));
                    child = Command::new(MOSQUITTO)
                        .arg("-c")
                        .arg(self.dir.path().join("mosquitto.conf"))
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .spawn()
                        .with_context(|| format!("running {MOSQUITTO} after: {e}"))?;
                }
                Err(e) => return Err(e),
            }
        }
        self.child = Some(child);
        Ok(())
    }

    /// Kills the broker as a crash would (SIGKILL: no clean shutdown, no wills sent).
    pub fn kill(&mut self) {
        kill(&mut self.child);
    }

    /// Stops the broker as an operator would (SIGTERM): it closes every connection and, with
    /// [`MosquittoOptions::persistence`], saves its state. Waits up to 30 s for it to exit,
    /// then kills it.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + START_TIMEOUT;
        while child.try_wait()?.is_none() {
            if sent.as_ref().map_or(true, |s| !s.success()) || Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("mosquitto did not stop on SIGTERM ({sent:?}); killed");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

/// One series as `/api/v1/export` returns it.
#[derive(Clone, Debug, PartialEq)]
pub struct ExportedSeries {
    /// `__name__` and the other labels.
    pub labels: BTreeMap<String, String>,
    /// The values.
    pub values: Vec<f64>,
    /// Their timestamps, Unix ms.
    pub timestamps: Vec<i64>,
}

impl ExportedSeries {
    /// The metric name.
    pub fn name(&self) -> &str {
        self.labels.get("__name__").map_or("", String::as_str)
    }

    /// A label, or "" when absent.
    pub fn label(&self, key: &str) -> &str {
        self.labels.get(key).map_or("", String::as_str)
    }
}

/// A single-node VictoriaMetrics on a loopback port of its own, storing into a temporary
/// directory. It takes InfluxDB line protocol at `/api/v2/write` and names each field's series
/// `<measurement>_<field>`.
#[derive(Debug)]
pub struct VictoriaMetrics {
    port: u16,
    dir: TempDir,
    child: Option<Child>,
    http: reqwest::Client,
}

impl VictoriaMetrics {
    /// Starts the server and returns once it listens.
    pub fn start() -> anyhow::Result<VictoriaMetrics> {
        require(VICTORIA_METRICS, "victoria-metrics")?;
        let port = free_port();
        let dir = TempDir::new("tz-e2e-vm")?;
        let log = dir.path().join("victoria-metrics.log");
        let mut child = Command::new(VICTORIA_METRICS)
            .arg("-storageDataPath")
            .arg(dir.path().join("data"))
            .arg("-httpListenAddr")
            .arg(format!("127.0.0.1:{port}"))
            // Test data may carry any timestamp the fleet's clock gives it.
            .args(["-retentionPeriod", "100y"])
            // Fresh samples are visible to queries at once rather than after 30 s.
            .arg("-search.latencyOffset=0s")
            .arg("-loggerLevel=WARN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("running {VICTORIA_METRICS}"))?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        if let Err(e) = wait_listening(&mut child, addr, "victoria-metrics", &log) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
        Ok(VictoriaMetrics {
            port,
            dir,
            child: Some(child),
            http: reqwest::Client::new(),
        })
    }

    /// Its base URL, `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Its log file.
    pub fn log(&self) -> PathBuf {
        self.dir.path().join("victoria-metrics.log")
    }

    /// Makes everything ingested so far searchable (`/internal/force_flush`).
    pub async fn force_flush(&self) -> anyhow::Result<()> {
        let r = self
            .http
            .get(format!("{}/internal/force_flush", self.url()))
            .send()
            .await?;
        ensure!(r.status().is_success(), "force_flush: {}", r.status());
        Ok(())
    }

    /// Every sample of every series (`/api/v1/export` of `{__name__=~".+"}`).
    pub async fn export(&self) -> anyhow::Result<Vec<ExportedSeries>> {
        self.export_matching(r#"{__name__=~".+"}"#).await
    }

    /// Every sample of the series `selector` matches (`/api/v1/export`), e.g.
    /// `{__name__=~".+_seq"}`.
    pub async fn export_matching(&self, selector: &str) -> anyhow::Result<Vec<ExportedSeries>> {
        let mut body = String::from("match%5B%5D=");
        for b in selector.bytes() {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                body.push(char::from(b));
            } else {
                body.push_str(&format!("%{b:02X}"));
            }
        }
        let r = self
            .http
            .post(format!("{}/api/v1/export", self.url()))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await?;
        ensure!(r.status().is_success(), "export: {}", r.status());
        let text = r.text().await?;
        let mut out = Vec::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let v: serde_json::Value =
                serde_json::from_str(line).with_context(|| format!("export line {line:?}"))?;
            let labels = v["metric"]
                .as_object()
                .context("export line without metric")?
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect();
            let values = v["values"]
                .as_array()
                .context("export line without values")?
                .iter()
                .map(|x| x.as_f64().unwrap_or(f64::NAN))
                .collect();
            let timestamps = v["timestamps"]
                .as_array()
                .context("export line without timestamps")?
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

    /// Exports once at least `samples` samples of series named `*<suffix>` are stored, polling
    /// (with a flush before each try) for at most `timeout`; the last export otherwise.
    pub async fn export_when(
        &self,
        suffix: &str,
        samples: usize,
        timeout: Duration,
    ) -> anyhow::Result<Vec<ExportedSeries>> {
        let deadline = Instant::now() + timeout;
        loop {
            self.force_flush().await?;
            let series = self.export().await?;
            let n: usize = series
                .iter()
                .filter(|s| s.name().ends_with(suffix))
                .map(|s| s.values.len())
                .sum();
            if n >= samples || Instant::now() > deadline {
                return Ok(series);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for VictoriaMetrics {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}
