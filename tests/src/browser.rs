//! Headless Chromium for the console's browser tests: a chromedriver started on a free
//! loopback port, the Chromium capabilities a WebDriver client asks it for, and the folder
//! the tests put their screenshots in.
//!
//! | binary | Debian package |
//! |---|---|
//! | [`CHROMIUM`] `/usr/bin/chromium` | `chromium` |
//! | [`CHROMEDRIVER`] `/usr/bin/chromedriver` | `chromium-driver` |
//!
//! The browser runs headless with a fresh profile in a temporary directory and with
//! everything that would reach the internet switched off (no QUIC, sync, component updates,
//! background networking or first-run pages): a test's page talks to 127.0.0.1 only.
//! Missing binaries are an error naming the package, not a skipped test.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use serde_json::json;

use crate::services::{TempDir, free_port};

/// The browser.
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// Its WebDriver server.
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The browser's window size (CSS pixels); screenshots are this size.
pub const WINDOW: (u32, u32) = (1440, 1000);

/// How long chromedriver may take to listen on a loaded machine.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The flags Chromium runs with (besides `--user-data-dir` and the window size).
pub const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--disable-domain-reliability",
    "--disable-client-side-phishing-detection",
    "--disable-features=Translate,OptimizationHints,MediaRouter,DialMediaRouteProvider,AutofillServerCommunication,CertificateTransparencyComponentUpdater",
    "--metrics-recording-only",
    "--password-store=basic",
    "--use-mock-keychain",
];

/// A binary, or an error saying which package installs it.
fn binary(env: &str, default: &str, package: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::var_os(env).map_or_else(|| PathBuf::from(default), PathBuf::from);
    ensure!(
        path.exists(),
        "{} is missing: the console's browser test drives headless Chromium through \
         chromedriver; install it with `apt-get install {package}` (or set {env})",
        path.display()
    );
    Ok(path)
}

/// A chromedriver on a loopback port of its own, with a temporary directory for the browser's
/// profile and logs; killed, with the browsers it started, when dropped.
#[derive(Debug)]
pub struct ChromeDriver {
    port: u16,
    chromium: PathBuf,
    dir: TempDir,
    child: Option<Child>,
}

impl ChromeDriver {
    /// Starts chromedriver and returns once it listens. Fails (naming the Debian packages)
    /// when Chromium or chromedriver is not installed.
    pub fn start() -> anyhow::Result<ChromeDriver> {
        let chromium = binary("TIANZHONG_CHROMIUM", CHROMIUM, "chromium")?;
        let driver = binary("TIANZHONG_CHROMEDRIVER", CHROMEDRIVER, "chromium-driver")?;
        let port = free_port();
        let dir = TempDir::new("tz-chromium")?;
        let log = dir.path().join("chromedriver.log");
        let mut command = Command::new(&driver);
        command
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // Its own process group, so that dropping it also ends the browsers it started.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let mut child = command
            .spawn()
            .with_context(|| format!("running {}", driver.display()))?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + START_TIMEOUT;
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Some(status) = child.try_wait()? {
                bail!("chromedriver exited with {status}; see {}", log.display());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("chromedriver does not listen on {addr} after {START_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(ChromeDriver {
            port,
            chromium,
            dir,
            child: Some(child),
        })
    }

    /// The WebDriver endpoint, `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// chromedriver's log (it includes the browser's console messages).
    pub fn log(&self) -> PathBuf {
        self.dir.path().join("chromedriver.log")
    }

    /// The capabilities of a new session: headless Chromium with a fresh profile in this
    /// driver's temporary directory (one per session: `profile` names it), the flags of
    /// [`CHROMIUM_FLAGS`], the window [`WINDOW`], the browser's language `lang` (e.g. `en-GB`)
    /// and its console messages in the log.
    pub fn capabilities(
        &self,
        profile: &str,
        lang: &str,
    ) -> serde_json::Map<String, serde_json::Value> {
        let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|s| (*s).to_owned()).collect();
        args.push(format!(
            "--user-data-dir={}",
            self.dir.path().join(format!("profile-{profile}")).display()
        ));
        args.push(format!("--window-size={},{}", WINDOW.0, WINDOW.1));
        args.push(format!("--lang={lang}"));
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": self.chromium,
                "args": args,
                "prefs": { "intl.accept_languages": lang },
            },
            "goog:loggingPrefs": { "browser": "ALL" },
        });
        match caps {
            serde_json::Value::Object(m) => m,
            _ => unreachable!("a JSON object"),
        }
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // The whole group: chromedriver and any browser a failed test left open.
            let group = format!("-{}", child.id());
            let _ = Command::new("kill")
                .args(["-TERM", "--", &group])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = Command::new("kill")
                .args(["-KILL", "--", &group])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Where the console tests put their screenshots: `$TIANZHONG_ARTIFACTS` when set, else
/// `<workspace>/target/test-artifacts/console`; created if missing.
pub fn artifacts_dir() -> anyhow::Result<PathBuf> {
    let dir = match std::env::var_os("TIANZHONG_ARTIFACTS") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("the tests crate lives in the workspace")?
            .join("target/test-artifacts/console"),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}
