//! The console's firmware campaign page in headless Chromium (WebDriver), against a real
//! gateway that ran a campaign over 12 simulated Modbus TCP nodes, one injected to fail: an
//! engineer sees the campaign and every node's state as the API reports it (English, then
//! Chinese); a viewer sees why the page is not for them. Screenshots go to the console
//! artifacts folder (`target/test-artifacts/console`, or `TIANZHONG_ARTIFACTS`) as
//! `campaign-NN-*.png`.

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use tianzhong_gateway::firmware_cli::{KeyKind, encode_key};
use tianzhong_protocol::image::signature;
use tianzhong_protocol::registers::profile::FirmwareVersion;
use tianzhong_simulator::fault::{Fault, update_failures};
use tianzhong_simulator::update::{SIM_SIGNING_SECRET, sim_image};
use tianzhong_tests::browser::{ChromeDriver, artifacts_dir};
use tianzhong_tests::fleet::{FleetBuilder, GatewaySettings};
use tianzhong_tests::services::TempDir;

const WAIT: Duration = Duration::from_secs(30);

fn tid(id: &str) -> String {
    format!("[data-testid=\"{id}\"]")
}

struct Page {
    c: Client,
    shots: PathBuf,
    step: AtomicU32,
    driver_log: PathBuf,
}

impl Page {
    async fn shot(&self, name: &str) -> PathBuf {
        let n = self.step.fetch_add(1, Ordering::Relaxed) + 1;
        let path = self.shots.join(format!("campaign-{n:02}-{name}.png"));
        match self.c.screenshot().await {
            Ok(png) => {
                std::fs::write(&path, png).unwrap();
                eprintln!("screenshot {}", path.display());
            }
            Err(e) => eprintln!("screenshot {name} failed: {e}"),
        }
        path
    }

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
                let shot = self.shot("FAILED").await;
                panic!(
                    "waited {WAIT:?} for: {what} (screenshot {}; chromedriver log {})",
                    shot.display(),
                    self.driver_log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn el(&self, id: &str) -> Element {
        let css = tid(id);
        self.wait(&format!("`{id}` shown"), || async {
            let e = self.c.find(Locator::Css(&css)).await.ok()?;
            e.is_displayed().await.ok()?.then_some(e)
        })
        .await
    }

    async fn fill(&self, id: &str, text: &str) {
        let e = self.el(id).await;
        e.clear().await.unwrap();
        e.send_keys(text).await.unwrap();
    }

    async fn click(&self, id: &str) {
        self.el(id).await.click().await.unwrap();
    }

    async fn js(&self, script: &str) -> Value {
        self.c.execute(script, vec![]).await.unwrap()
    }

    async fn text_where(&self, css: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
        self.wait(what, || async {
            let e = self.c.find(Locator::Css(css)).await.ok()?;
            let t = e.text().await.ok()?;
            ok(&t).then_some(t)
        })
        .await
    }

    async fn sign_in(&self, user: &str, password: &str) {
        self.el("login-view").await;
        self.fill("login-user", user).await;
        self.fill("login-password", password).await;
        self.click("login-submit").await;
        self.text_where(&tid("current-user"), &format!("{user} signed in"), |t| {
            t == user
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engineers_see_each_nodes_campaign_state_viewers_see_why_not() {
    tianzhong_tests::gateway::init_logs();
    let driver = ChromeDriver::start().expect("headless Chromium for the console test");
    let dir = TempDir::new("tz-campaign-console").unwrap();
    let mut builder = FleetBuilder::new().unwrap();
    let ids = builder.modbus_tcp("fw", 12);
    let injected = update_failures(11, &ids, 1.0 / 12.0, &[Fault::UpdateRollback], &ids[..2]);
    assert_eq!(injected.len(), 1);
    for f in injected {
        builder.fault(f);
    }
    let fleet = builder.start().await.unwrap();
    let key = dir.path().join("sim.key.pub");
    std::fs::write(
        &key,
        encode_key(KeyKind::Public, &signature::public_key(&SIM_SIGNING_SECRET)),
    )
    .unwrap();
    let mut settings = GatewaySettings::new(&dir.path().join("data"));
    settings.poll_interval_s = 5.0;
    let http = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap();
    let toml = format!(
        "{}\n[firmware]\ntrusted_keys = [\"{}\"]\n",
        fleet.gateway_toml(&settings).replace(
            "http_listen = \"off\"",
            &format!("http_listen = \"{http}\"")
        ),
        key.display()
    );
    let gateway = tianzhong_tests::gateway::start(&toml, &dir.path().join("gw.toml"))
        .await
        .unwrap();
    let base = format!("http://{http}");
    let client = reqwest::Client::new();
    let call = async |method: &str, path: &str, token: Option<&str>, body: Value| -> Value {
        let mut r = client
            .request(method.parse().unwrap(), format!("{base}{path}"))
            .header("content-type", "application/json");
        if let Some(t) = token {
            r = r.header("authorization", format!("Bearer {t}"));
        }
        if method != "GET" {
            r = r.body(body.to_string());
        }
        let text = r.send().await.unwrap().text().await.unwrap();
        serde_json::from_str(&text).unwrap()
    };
    let admin_pw = gateway.first_run_secret().unwrap().to_owned();
    let admin = call(
        "POST",
        "/api/login",
        None,
        json!({"user": "admin", "password": admin_pw}),
    )
    .await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    for (name, role) in [("eng", "engineer"), ("view", "viewer")] {
        call(
            "POST",
            "/api/users",
            Some(&admin),
            json!({"name": name, "role": role, "password": format!("{name}-long-password")}),
        )
        .await;
    }
    let eng = call(
        "POST",
        "/api/login",
        None,
        json!({"user": "eng", "password": "eng-long-password"}),
    )
    .await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let image = sim_image(
        "TZ-E2E",
        FirmwareVersion {
            major: 1,
            minor: 1,
            patch: 0,
        },
        2,
        2000,
    );
    let created = call(
        "POST",
        "/api/campaigns",
        Some(&eng),
        json!({
            "image_base64": base64::engine::general_purpose::STANDARD.encode(&image),
            "nodes": ids, "canary": 2, "waves": [4, "rest"], "max_failures": 0,
            "tcp_parallel": 2, "verify_timeout_s": 20, "reason": "console check",
        }),
    )
    .await;
    let id = created["id"]
        .as_u64()
        .unwrap_or_else(|| panic!("{created}"));
    let deadline = Instant::now() + Duration::from_secs(60);
    let campaign = loop {
        let c = call(
            "GET",
            &format!("/api/campaigns/{id}"),
            Some(&eng),
            json!(null),
        )
        .await;
        if c["status"] != "running" && c["active"] == false {
            break c;
        }
        assert!(Instant::now() < deadline, "{}", c["counts"]);
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(campaign["status"], "halted", "{}", campaign["counts"]);

    let shots = artifacts_dir().unwrap();
    let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(driver.capabilities("campaigns", "en-GB"))
        .connect(&driver.url())
        .await
        .unwrap_or_else(|e| panic!("a Chromium session: {e}; see {}", driver.log().display()));
    let page = Page {
        c: client,
        shots,
        step: AtomicU32::new(0),
        driver_log: driver.log(),
    };
    page.c.goto(&format!("{base}/")).await.unwrap();

    // A viewer: the tab is there, the page says why it is not for them.
    page.sign_in("view", "view-long-password").await;
    page.js("location.hash = '#/campaigns';").await;
    let notice = page
        .text_where(
            &tid("campaigns-need-engineer"),
            "the viewer's notice",
            |t| !t.is_empty(),
        )
        .await;
    assert!(
        notice.contains("engineer") && notice.contains("viewer"),
        "{notice}"
    );
    assert!(
        page.c
            .find(Locator::Css(&tid("campaign-nodes")))
            .await
            .is_err(),
        "no node table for a viewer"
    );
    page.shot("viewer").await;
    page.click("logout").await;

    // An engineer: the campaign, then each node's state as the API has it.
    page.sign_in("eng", "eng-long-password").await;
    page.js("location.hash = '#/campaigns';").await;
    page.el(&format!("campaign-{id}")).await;
    page.js(&format!("location.hash = '#/campaigns/{id}';"))
        .await;
    page.el("campaign-nodes").await;
    page.text_where(&tid("campaign-status"), "status halted", |t| t == "halted")
        .await;
    for n in campaign["nodes"].as_array().unwrap() {
        let node = n["node"].as_str().unwrap();
        let css = tid(&format!("campaign-node-{node}"));
        let shown = page
            .wait(&format!("{node}'s row"), || async {
                let e = page.c.find(Locator::Css(&css)).await.ok()?;
                e.attr("data-state").await.ok()?
            })
            .await;
        assert_eq!(shown, n["state"].as_str().unwrap(), "{node}");
    }
    let halt_enabled = page.el("campaign-halt").await.is_enabled().await.unwrap();
    assert!(!halt_enabled, "a halted campaign cannot be halted");
    page.shot("engineer-en").await;

    // In Chinese.
    page.click("lang-toggle").await;
    page.text_where(".campaigns-view h1", "the Chinese title", |t| {
        t == "固件批量升级"
    })
    .await;
    page.text_where(&tid("campaign-status"), "status in Chinese", |t| {
        t == "已停止"
    })
    .await;
    page.shot("engineer-zh").await;
    page.c.close().await.unwrap();
    gateway.shutdown(Duration::from_secs(10)).await;
    drop(fleet);
}
