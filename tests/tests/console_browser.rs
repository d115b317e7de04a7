//! The operator console in a real browser: headless Chromium driven over WebDriver
//! (fantoccini → chromedriver), against a gateway fed by MQTT telemetry this test publishes
//! itself, so that every value and alarm is deterministic.
//!
//! 1. The admin (the first run's one-time password) creates an operator, an engineer and a
//!    viewer over the API.
//! 2. The operator signs in in the browser. With the alarm page open, gas detector `gas-01`
//!    steps from 4 to 62.5 %LEL, above the shipped red set point (50 %LEL, GB/T 50493): the
//!    red alarm appears in the page through the live stream, without a reload. The operator
//!    acknowledges it with a comment in the page's form; `GET /api/alarms` says
//!    `active_acked`.
//! 3. The engineer signs in and edits the combustible-gas rule in the threshold editor: a red
//!    set point below yellow is refused with the gateway's message (400); a save over a
//!    version someone else changed meanwhile is refused as a conflict (409); after reloading,
//!    the red set point 45 is saved, and `GET /api/rules` has it, one version later. The node
//!    page shows the trend and health.
//! 4. The viewer signs in: with a second, unacknowledged red alarm listed, its Acknowledge
//!    button is disabled with a tooltip saying why; a direct `POST /api/alarms/ack` with the
//!    viewer's token gets 403 and changes nothing. Switching to Chinese shows Chinese labels,
//!    including the API's quantity label.
//! 5. The operator opens "where the data went": with the telemetry paused until the counts
//!    settle, the leak detector's row shows the samples, missing samples, readings stored and
//!    delivered to the local store that `GET /api/completeness` reports; dead letters are
//!    for engineers, so the operator sees a note saying so. Then the same page in Chinese.
//!
//! Screenshots of each step go to `target/test-artifacts/console/` (or `$TIANZHONG_ARTIFACTS`).
//! Needs `/usr/bin/chromium`, `/usr/bin/chromedriver` and `/usr/sbin/mosquitto` (Debian
//! packages `chromium`, `chromium-driver`, `mosquitto`); fails, naming them, when missing.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use rumqttc::{AsyncClient, MqttOptions, QoS};
use serde_json::{Value, json};
use tianzhong_tests::browser::{ChromeDriver, artifacts_dir};
use tianzhong_tests::fleet::unix_ms;
use tianzhong_tests::services::{Mosquitto, TempDir, free_port};

const SITE: &str = "plant-a";
/// The detector whose gas leaks.
const LEAK: &str = "gas-01";
/// A second detector, alarmed later, left unacknowledged for the viewer.
const SECOND: &str = "gas-02";
/// Polling budget for anything the page or the gateway has to do.
const WAIT: Duration = Duration::from_secs(30);
/// Above the shipped red set point of combustible gas (50 %LEL).
const LEAK_LEL: f64 = 62.5;
/// The red set point the engineer sets.
const NEW_RED: f64 = 45.0;

const OPERATOR: (&str, &str) = ("duty-operator", "operator password 1");
const ENGINEER: (&str, &str) = ("eng-li", "engineer password 1");
const VIEWER: (&str, &str) = ("duty-viewer", "viewer password 1");

/// The gateway's JSON API, as the test (not the page) calls it.
struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut r = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            r = r.header("authorization", format!("Bearer {t}"));
        }
        if let Some(b) = body {
            r = r
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let response = r.send().await.unwrap_or_else(|e| panic!("{path}: {e}"));
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn login(&self, (user, password): (&str, &str)) -> String {
        let (status, body) = self
            .call(
                "POST",
                "/api/login",
                None,
                Some(json!({"user": user, "password": password})),
            )
            .await;
        assert_eq!(status, 200, "login {user}: {body}");
        body["token"].as_str().expect("a token").to_owned()
    }

    /// The alarm of `node`, channel 0, threshold, from `GET /api/alarms`.
    async fn threshold_alarm(&self, token: &str, node: &str) -> Option<Value> {
        let (status, body) = self.call("GET", "/api/alarms", Some(token), None).await;
        assert_eq!(status, 200, "{body}");
        body["alarms"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["node"] == node && a["ch"] == 0 && a["condition"] == "threshold")
            .cloned()
    }
}

/// Publishes each node's telemetry every 500 ms, with the gas value the test sets, unless
/// paused (the sample numbers then resume where they stopped: no gap).
struct Telemetry {
    gas: Arc<Mutex<HashMap<&'static str, f64>>>,
    paused: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Telemetry {
    fn start(broker: std::net::SocketAddr) -> Telemetry {
        let gas = Arc::new(Mutex::new(HashMap::from([(LEAK, 4.0), (SECOND, 3.0)])));
        let mut options = MqttOptions::new("console-test-nodes", "127.0.0.1", broker.port());
        options.set_keep_alive(Duration::from_secs(15));
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        let values = Arc::clone(&gas);
        let paused = Arc::new(AtomicBool::new(false));
        let pause = Arc::clone(&paused);
        let task = tokio::spawn(async move {
            tokio::spawn(async move {
                loop {
                    if eventloop.poll().await.is_err() {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            });
            let mut seq = 0u32;
            loop {
                if pause.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                seq += 1;
                let now = unix_ms();
                let snapshot: Vec<(&str, f64)> = values
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (*k, *v))
                    .collect();
                for (node, lel) in snapshot {
                    let payload = json!({
                        "v": 1, "seq": seq, "ts": now,
                        "readings": [
                            {"ch": 0, "q": "combustible_gas", "value": lel},
                            {"ch": 1, "q": "h2s", "value": 0.4},
                            {"ch": 2, "q": "oxygen", "value": 20.9},
                        ]
                    });
                    let _ = client
                        .publish(
                            format!("tianzhong/v1/{SITE}/{node}/telemetry"),
                            QoS::AtLeastOnce,
                            false,
                            payload.to_string(),
                        )
                        .await;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        Telemetry { gas, paused, task }
    }

    fn set(&self, node: &'static str, lel: f64) {
        self.gas.lock().unwrap().insert(node, lel);
    }

    fn pause(&self, paused: bool) {
        self.paused.store(paused, Ordering::Relaxed);
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `[data-testid="…"]`.
fn tid(id: &str) -> String {
    format!("[data-testid=\"{id}\"]")
}

/// The console's id fragment for parts (as `idPart` in dom.js).
fn id_part(parts: &[&str]) -> String {
    parts
        .iter()
        .map(|p| {
            p.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                        c
                    } else {
                        '_'
                    }
                })
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("-")
}

/// A count as the English console shows it (en-GB digit grouping).
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Collects script errors and content-security-policy violations in `window.__problems`.
const COLLECT_PROBLEMS: &str = "window.__problems = [];
     window.addEventListener('error', (e) => window.__problems.push(`error: ${e.message}`));
     window.addEventListener('unhandledrejection', (e) =>
       window.__problems.push(`rejection: ${e.reason && e.reason.message || e.reason}`));
     document.addEventListener('securitypolicyviolation', (e) =>
       window.__problems.push(`csp: ${e.violatedDirective} ${e.blockedURI}`));";

/// The browser page and where its screenshots go.
struct Page {
    c: Client,
    base: String,
    shots: PathBuf,
    step: AtomicU32,
    driver_log: PathBuf,
}

impl Page {
    /// Saves a screenshot as `NN-name.png` and returns its path.
    async fn shot(&self, name: &str) -> PathBuf {
        let n = self.step.fetch_add(1, Ordering::Relaxed) + 1;
        let path = self.shots.join(format!("{n:02}-{name}.png"));
        match self.c.screenshot().await {
            Ok(png) => {
                std::fs::write(&path, png).unwrap();
                eprintln!("screenshot {}", path.display());
            }
            Err(e) => eprintln!("screenshot {name} failed: {e}"),
        }
        path
    }

    /// Polls `probe` every 200 ms until it gives a value; after [`WAIT`] saves a screenshot and
    /// fails saying what was awaited.
    async fn wait<T, F, Fut>(&self, what: &str, mut probe: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Option<T>>,
    {
        let started = Instant::now();
        loop {
            if let Some(v) = probe().await {
                return v;
            }
            if started.elapsed() > WAIT {
                let shot = self.shot(&format!("FAILED-{}", id_part(&[what]))).await;
                let url = self.c.current_url().await.map(|u| u.to_string());
                panic!(
                    "waited {WAIT:?} for: {what} (page {url:?}; screenshot {}; chromedriver log {})",
                    shot.display(),
                    self.driver_log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The element matching `css` once it is displayed.
    async fn shown(&self, css: &str) -> Element {
        self.wait(&format!("`{css}` shown"), || async {
            let e = self.c.find(Locator::Css(css)).await.ok()?;
            e.is_displayed().await.ok()?.then_some(e)
        })
        .await
    }

    /// The element with `data-testid` = `id` once it is displayed.
    async fn el(&self, id: &str) -> Element {
        self.shown(&tid(id)).await
    }

    /// Whether the element `id` is enabled and its title, read again when the page drew it
    /// anew meanwhile (tables are redrawn whole when alarms are reconciled).
    async fn enabled(&self, id: &str) -> (bool, String) {
        let css = tid(id);
        self.wait(&format!("`{id}` present"), || async {
            let e = self.c.find(Locator::Css(&css)).await.ok()?;
            let enabled = e.is_enabled().await.ok()?;
            let title = e.attr("title").await.ok()?;
            Some((enabled, title.unwrap_or_default()))
        })
        .await
    }

    async fn click(&self, id: &str) {
        self.el(id).await.click().await.unwrap();
    }

    async fn fill(&self, id: &str, text: &str) {
        let e = self.el(id).await;
        e.clear().await.unwrap();
        e.send_keys(text).await.unwrap();
    }

    /// Runs `script` (a function body) in the page.
    async fn js(&self, script: &str) -> Value {
        self.c.execute(script, vec![]).await.unwrap()
    }

    /// An attribute of the element `css`, once it has one.
    async fn attr_of(&self, css: &str, attr: &str) -> Option<String> {
        let e = self.c.find(Locator::Css(css)).await.ok()?;
        e.attr(attr).await.ok()?
    }

    /// Waits until the element `id` shows text for which `ok` holds; returns the text.
    async fn text_where(&self, id: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let css = tid(id);
        self.wait(what, || async {
            let e = self.c.find(Locator::Css(&css)).await.ok()?;
            let t = e.text().await.ok()?;
            ok(&t).then_some(t)
        })
        .await
    }

    async fn go(&self, hash: &str) {
        self.js(&format!("location.hash = {};", json!(hash))).await;
    }

    async fn sign_in(&self, (user, password): (&str, &str)) {
        self.el("login-view").await;
        self.fill("login-user", user).await;
        self.fill("login-password", password).await;
        self.click("login-submit").await;
        self.text_where("current-user", &format!("{user} signed in"), |t| t == user)
            .await;
    }

    async fn sign_out(&self) {
        self.click("logout").await;
        self.el("login-view").await;
    }

    /// The page's count of live events of `kind` received (`readings` or `alarm`).
    async fn events(&self, kind: &str) -> u64 {
        self.js(&format!(
            "return Number(document.body.dataset.{kind}Events || 0);"
        ))
        .await
        .as_u64()
        .unwrap_or(0)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_see_and_acknowledge_a_live_alarm_engineers_edit_thresholds_viewers_only_look() {
    tianzhong_tests::gateway::init_logs();
    // Missing browser packages fail here, naming them.
    let driver = ChromeDriver::start().expect("headless Chromium for the console test");
    let shots = artifacts_dir().unwrap();
    for old in std::fs::read_dir(&shots).unwrap().flatten() {
        if old.path().extension().is_some_and(|e| e == "png") {
            let _ = std::fs::remove_file(old.path());
        }
    }

    let broker = Mosquitto::start().unwrap();
    let dir = TempDir::new("tz-console").unwrap();
    let http_port = free_port();
    let toml = format!(
        "[gateway]\nid = \"gw-console\"\ndata_dir = \"{}\"\nhttp_listen = \"127.0.0.1:{http_port}\"\n\n\
         [mqtt_source]\nbroker = \"{}\"\n\n[sink.local_store]\nenabled = true\n",
        dir.path().join("data").display(),
        broker.addr()
    );
    let gateway = tianzhong_tests::gateway::start(&toml, &dir.path().join("gateway.toml"))
        .await
        .unwrap();
    let base = format!("http://{}", gateway.http_addr().expect("the API listens"));
    let api = Api {
        http: reqwest::Client::new(),
        base: base.clone(),
    };
    let telemetry = Telemetry::start(broker.addr());

    // 1. The admin creates the team.
    let admin_password = gateway
        .first_run_secret()
        .expect("a fresh data directory creates the admin")
        .to_owned();
    let admin = api.login(("admin", &admin_password)).await;
    for ((name, password), role) in [
        (OPERATOR, "operator"),
        (ENGINEER, "engineer"),
        (VIEWER, "viewer"),
    ] {
        let (status, body) = api
            .call(
                "POST",
                "/api/users",
                Some(&admin),
                Some(json!({"name": name, "role": role, "password": password})),
            )
            .await;
        assert_eq!(status, 201, "creating {name}: {body}");
    }
    // Both detectors are known to the gateway before the browser opens.
    let start = Instant::now();
    loop {
        let (status, body) = api.call("GET", "/api/nodes", Some(&admin), None).await;
        let known = status == 200
            && [LEAK, SECOND].iter().all(|n| {
                body.to_string().contains(&format!("\"node\":\"{n}\""))
                    && body["sites"].as_array().is_some_and(|s| !s.is_empty())
            });
        if known {
            break;
        }
        assert!(
            start.elapsed() < WAIT,
            "the gateway does not list the nodes: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let mut caps = driver.capabilities("operator", "en-GB");
    caps.insert("pageLoadStrategy".into(), json!("normal"));
    let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url())
        .await
        .unwrap_or_else(|e| {
            panic!(
                "starting a Chromium session: {e}; see {}",
                driver.log().display()
            )
        });
    let page = Page {
        c: client,
        base: base.clone(),
        shots: shots.clone(),
        step: AtomicU32::new(0),
        driver_log: driver.log(),
    };

    // 2. The operator.
    page.c.goto(&format!("{}/", page.base)).await.unwrap();
    page.el("login-form").await;
    // Script errors and content-security-policy violations from here on are collected.
    page.js(COLLECT_PROBLEMS).await;
    let title = page.c.title().await.unwrap();
    assert_eq!(
        title, "Tianzhong gateway console",
        "English by default (en-GB)"
    );
    page.shot("login").await;
    // A wrong password: the API's refusal is shown, nobody is signed in.
    page.fill("login-user", OPERATOR.0).await;
    page.fill("login-password", "not the password").await;
    page.click("login-submit").await;
    page.text_where("login-error", "the login refusal shown", |t| {
        t.contains("401") && t.contains("wrong user or password")
    })
    .await;
    page.sign_in(OPERATOR).await;
    assert_eq!(
        page.el("current-role").await.text().await.unwrap(),
        "operator"
    );
    // The overview: sites, nodes, channels with values, units and quality; live values.
    let gas_value = id_part(&[LEAK, "0"]);
    page.text_where(
        &format!("value-{gas_value}"),
        "the leak detector's gas value in the overview",
        |t| t == "4",
    )
    .await;
    page.text_where(
        &format!("label-{gas_value}"),
        "the API's English quantity label",
        |t| t == "Combustible gas",
    )
    .await;
    page.wait("the live stream connected", || async {
        let s = page.attr_of(&tid("stream-status"), "data-status").await?;
        (s == "live").then_some(())
    })
    .await;
    page.wait("live readings arriving", || async {
        (page.events("readings").await > 0).then_some(())
    })
    .await;
    page.shot("overview").await;

    // The alarm page is open and quiet; the gas then leaks.
    page.click("tab-alarms").await;
    page.el("alarm-filters").await;
    page.el("alarm-list-empty").await;
    page.js("window.__loadedBeforeTheLeak = true;").await;
    telemetry.set(LEAK, LEAK_LEL);
    let row = format!("alarm-row-{}", id_part(&[LEAK, "0", "threshold"]));
    page.wait("the red alarm in the page, live", || async {
        let level = page.attr_of(&tid(&row), "data-level").await?;
        (level == "red").then_some(())
    })
    .await;
    assert_eq!(
        page.js("return window.__loadedBeforeTheLeak === true;")
            .await,
        json!(true),
        "the page was not reloaded"
    );
    assert!(
        page.events("alarm").await > 0,
        "the alarm came over the live stream"
    );
    assert_eq!(
        page.attr_of(&tid(&row), "data-state").await.as_deref(),
        Some("active_unacked")
    );
    page.text_where("alarm-count", "the unacknowledged count in the tab", |t| {
        t == "1"
    })
    .await;
    page.shot("red-alarm-live").await;

    // Acknowledge in the page: a comment is required.
    let ack = format!("ack-{}", id_part(&[LEAK, "0", "threshold"]));
    assert!(page.enabled(&ack).await.0);
    page.click(&ack).await;
    page.el("action-dialog").await;
    page.click("action-submit").await;
    page.text_where("action-error", "the comment demanded", |t| {
        t.contains("comment")
    })
    .await;
    page.fill("action-comment", "Gas team dispatched to tank farm")
        .await;
    page.shot("acknowledge-form").await;
    page.click("action-submit").await;
    page.wait("the row acknowledged", || async {
        let s = page.attr_of(&tid(&row), "data-state").await?;
        (s == "active_acked").then_some(())
    })
    .await;
    let operator = api.login(OPERATOR).await;
    let listed = api
        .threshold_alarm(&operator, LEAK)
        .await
        .expect("the alarm is listed");
    assert_eq!(
        (listed["state"].as_str(), listed["level"].as_str()),
        (Some("active_acked"), Some("red")),
        "{listed}"
    );
    assert!(!page.enabled(&ack).await.0, "nothing left to acknowledge");
    page.shot("acknowledged").await;
    // The overview turned red live, with the new value.
    page.click("tab-overview").await;
    page.text_where(
        &format!("value-{gas_value}"),
        "the leak's value in the overview",
        |t| t == "62.5",
    )
    .await;
    // Waited for: the overview is drawn again whole when the alarms are reconciled.
    page.wait("the leak's channel red in the overview", || async {
        let level = page
            .attr_of(&tid(&format!("level-{gas_value}")), "data-level")
            .await?;
        (level == "red").then_some(())
    })
    .await;
    page.shot("overview-red").await;
    page.sign_out().await;

    // 3. The engineer edits the combustible-gas threshold.
    page.sign_in(ENGINEER).await;
    let engineer = api.login(ENGINEER).await;
    let (status, rules) = api.call("GET", "/api/rules", Some(&engineer), None).await;
    assert_eq!(status, 200, "{rules}");
    let version = rules["version"].as_u64().expect("a rule set version");
    let rule = rules["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["selector"]["quantity"] == "combustible_gas")
        .unwrap_or_else(|| panic!("a combustible gas rule: {rules}"))
        .clone();
    let name = rule["name"].as_str().unwrap().to_owned();
    assert_eq!(rule["high"]["red"], json!(50.0), "{rule}");
    page.click("tab-rules").await;
    page.text_where("rules-version", "the rule set version", |t| {
        t.contains(&version.to_string())
    })
    .await;
    page.click(&format!("rule-edit-{}", id_part(&[&name])))
        .await;
    page.el("rule-editor").await;
    // Red below yellow on the high side: the gateway's 400 message is shown.
    page.fill("rule-high-red", "20").await;
    page.fill("rule-reason", "commissioning test").await;
    page.click("rule-save").await;
    let refused = page
        .text_where(
            "rule-error",
            "the gateway's validation message shown",
            |t| t.contains("refused") && t.contains("yellow"),
        )
        .await;
    assert_eq!(
        page.attr_of(&tid("rule-error"), "data-kind")
            .await
            .as_deref(),
        Some("invalid")
    );
    page.shot("rule-invalid").await;
    // Someone else changes the rules meanwhile: saving over them is a conflict.
    let mut other = rule.clone();
    other["deadband"] = json!(1.5);
    let (status, body) = api
        .call(
            "PUT",
            &format!("/api/rules/{}", urlencode(&name)),
            Some(&engineer),
            Some(json!({"base_version": version, "rule": other, "reason": "another engineer"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    page.fill("rule-high-red", &NEW_RED.to_string()).await;
    page.click("rule-save").await;
    page.wait("the conflict shown", || async {
        let kind = page.attr_of(&tid("rule-error"), "data-kind").await?;
        (kind == "conflict").then_some(())
    })
    .await;
    page.shot("rule-conflict").await;
    page.click("rule-reload").await;
    page.wait("the editor on the new version", || async {
        let base = page.attr_of(&tid("rule-editor"), "data-base").await?;
        (base == (version + 1).to_string()).then_some(())
    })
    .await;
    page.fill("rule-high-red", &NEW_RED.to_string()).await;
    page.fill(
        "rule-reason",
        "Work order 4711: earlier red warning at the tank farm",
    )
    .await;
    page.click("rule-save").await;
    page.text_where("rule-message", "the save confirmed", |t| {
        t.contains(&(version + 2).to_string())
    })
    .await;
    page.el(&format!("history-{}", version + 2)).await;
    page.shot("rule-saved").await;
    let (_, rules) = api.call("GET", "/api/rules", Some(&engineer), None).await;
    assert_eq!(rules["version"].as_u64(), Some(version + 2), "{rules}");
    let saved = rules["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name.as_str())
        .unwrap();
    assert_eq!(saved["high"]["red"].as_f64(), Some(NEW_RED), "{saved}");
    assert_eq!(saved["high"]["yellow"].as_f64(), Some(25.0), "{saved}");
    assert_eq!(
        saved["deadband"].as_f64(),
        Some(1.5),
        "the reload kept the other change"
    );
    // Dead letters are listed for engineers: none here.
    page.click("tab-data").await;
    page.el("dead-letters-empty").await;
    // The node page: channels, health and the trend of the stored readings.
    page.go(&format!("#/node/{LEAK}")).await;
    page.el("node-view").await;
    page.el("trend-hours")
        .await
        .select_by_value("0.25")
        .await
        .unwrap();
    page.wait("a trend with points", || async {
        let n = page.attr_of(&tid("trend-chart"), "data-points").await?;
        (n.parse::<u32>().ok()? > 0).then_some(())
    })
    .await;
    page.js("document.querySelector('[data-testid=\"trend-chart\"]').scrollIntoView();")
        .await;
    page.el("node-last-seen").await;
    page.text_where("health-source", "the MQTT node's health note", |t| {
        t.contains("MQTT")
    })
    .await;
    page.el("node-stored").await;
    page.shot("node-page").await;
    page.sign_out().await;

    // 4. The viewer, with a second red alarm unacknowledged.
    telemetry.set(SECOND, 70.0);
    let viewer = api.login(VIEWER).await;
    let asked = Instant::now();
    let second = loop {
        if let Some(a) = api.threshold_alarm(&viewer, SECOND).await
            && a["level"] == "red"
        {
            break a;
        }
        assert!(asked.elapsed() < WAIT, "no red alarm at {SECOND}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(second["state"], "active_unacked", "{second}");
    page.sign_in(VIEWER).await;
    page.click("tab-alarms").await;
    let ack2 = format!("ack-{}", id_part(&[SECOND, "0", "threshold"]));
    page.el(&ack2).await;
    let (enabled, why) = page.enabled(&ack2).await;
    assert!(!enabled, "a viewer cannot acknowledge");
    assert!(
        why.contains("operator") && why.contains("viewer"),
        "the tooltip says why: {why:?}"
    );
    // Raised before the viewer signed in, so never seen live: the list still says when.
    let changed = format!("alarm-changed-{}", id_part(&[SECOND, "0", "threshold"]));
    page.text_where(&changed, "when the alarm was raised", |t| {
        t.ends_with(" s ago") || t.ends_with(" min ago")
    })
    .await;
    page.shot("viewer-alarms").await;
    let (status, body) = api
        .call(
            "POST",
            "/api/alarms/ack",
            Some(&viewer),
            Some(json!({"node": SECOND, "ch": 0, "condition": "threshold", "comment": "not mine to ack"})),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(body["error"].is_string(), "{body}");
    let after = api.threshold_alarm(&viewer, SECOND).await.unwrap();
    assert_eq!(after["state"], "active_unacked", "the 403 changed nothing");

    // Chinese.
    page.click("lang-toggle").await;
    page.text_where("tab-overview", "the Chinese tab names", |t| t == "总览")
        .await;
    page.text_where(&ack2, "the Chinese button", |t| t == "确认")
        .await;
    page.shot("viewer-alarms-zh").await;
    page.click("tab-overview").await;
    page.text_where(
        &format!("label-{gas_value}"),
        "the API's Chinese quantity label",
        |t| t == "可燃气体",
    )
    .await;
    assert_eq!(page.c.title().await.unwrap(), "天中网关操作台");
    page.shot("overview-zh").await;
    assert_eq!(
        page.js("return window.__problems;").await,
        json!([]),
        "no script error or policy violation in the page"
    );
    // Remembered across a reload (and the session survives it).
    page.c.refresh().await.unwrap();
    page.text_where("tab-overview", "Chinese after a reload", |t| t == "总览")
        .await;
    page.text_where("current-user", "still signed in after a reload", |t| {
        t == VIEWER.0
    })
    .await;

    // 5. Where the data went, as the operator, in English.
    page.js(COLLECT_PROBLEMS).await;
    page.sign_out().await;
    page.sign_in(OPERATOR).await;
    page.click("lang-toggle").await;
    page.text_where("tab-data", "the English tab name", |t| t == "Data")
        .await;
    page.click("tab-data").await;
    page.el("data-view").await;
    page.el("dead-letters-need-engineer").await;
    // The counts settle once the telemetry pauses: every reading stored is delivered.
    telemetry.pause(true);
    let settling = Instant::now();
    let mut previous = Value::Null;
    let account = loop {
        let (status, body) = api
            .call("GET", "/api/completeness", Some(&operator), None)
            .await;
        assert_eq!(status, 200, "{body}");
        let a = body["nodes"]
            .as_array()
            .and_then(|n| n.iter().find(|a| a["node"] == LEAK))
            .cloned()
            .unwrap_or(Value::Null);
        let stored = &a["stored"];
        if a == previous
            && stored.as_u64().is_some_and(|n| n > 0)
            && a["readings"] == *stored
            && a["delivered"]["local_store"] == *stored
        {
            break a;
        }
        assert!(
            settling.elapsed() < WAIT,
            "{LEAK}'s counts do not settle: {a}"
        );
        previous = a;
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let row = id_part(&[LEAK]);
    for (cell, key) in [
        ("samples", "samples"),
        ("missing", "missing"),
        ("stored", "stored"),
        ("delivered", "delivered"),
    ] {
        let (cell, expected) = if cell == "delivered" {
            (
                format!("delivered-{row}-local_store"),
                account["delivered"]["local_store"].as_u64().unwrap(),
            )
        } else {
            (format!("{cell}-{row}"), account[key].as_u64().unwrap())
        };
        page.wait(
            &format!("the page's `{cell}` = {expected}, as the API says"),
            || async {
                let v = page.attr_of(&tid(&cell), "data-value").await?;
                (v == expected.to_string()).then_some(())
            },
        )
        .await;
        page.text_where(&cell, &format!("`{cell}` showing {expected}"), |t| {
            t.starts_with(&grouped(expected))
        })
        .await;
    }
    let flagged = account["missing"] != 0
        || account["dropped"] != json!({})
        || account["dead_lettered"] != json!({});
    assert_eq!(
        page.attr_of(&tid(&format!("completeness-{row}")), "data-attention")
            .await
            .as_deref(),
        Some(if flagged { "true" } else { "false" }),
        "{account}"
    );
    page.el("sink-local_store").await;
    page.shot("data").await;
    eprintln!("{LEAK}'s account: {account}");
    page.click("lang-toggle").await;
    page.text_where("tab-data", "the Chinese tab name", |t| t == "数据完整性")
        .await;
    page.text_where("dead-letters-need-engineer", "the Chinese note", |t| {
        t.contains("工程师")
    })
    .await;
    page.shot("data-zh").await;
    // The node's own figures on its page.
    page.click(&format!("completeness-link-{row}")).await;
    page.text_where("node-stored", "the node page's stored count", |t| {
        t == grouped(account["stored"].as_u64().unwrap())
    })
    .await;
    page.js("document.querySelector('[data-testid=\"node-completeness\"]').closest('section').scrollIntoView({block: 'center'});")
        .await;
    page.shot("node-data-zh").await;
    telemetry.pause(false);
    assert_eq!(
        page.js("return window.__problems;").await,
        json!([]),
        "no script error or policy violation in the page"
    );

    let _ = page.c.close().await;
    drop(telemetry);
    gateway.shutdown(Duration::from_secs(10)).await;
    eprintln!(
        "refused rule message: {refused}\nscreenshots in {}",
        shots.display()
    );
}

/// Percent-encodes a path segment.
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
