//! Configuration reload on SIGHUP, against the real binary: a file with mistakes is refused
//! and the running configuration kept; a good one is applied whole, keeping the alarms'
//! state, the completeness accounts and the outbox.

use std::io::Read as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, MqttOptions, QoS};
use serde_json::{Value, json};

const NODE: &str = "rl-gas-01";

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
}

fn config(dir: &Path, broker: SocketAddr, http: SocketAddr, extra: &str) -> String {
    format!(
        "[gateway]\nid = \"gw-reload\"\ndata_dir = \"{}\"\nhttp_listen = \"{http}\"\n\n\
         [mqtt_source]\nbroker = \"{broker}\"\nclient_id = \"gw-reload-{}\"\n\n{extra}",
        dir.display(),
        std::process::id()
    )
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig}");
}

fn log_of(path: &Path) -> String {
    let mut s = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.read_to_string(&mut s);
    }
    s
}

async fn wait_until(what: &str, log: &Path, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; gateway log:\n{}",
            log_of(log)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

struct Api {
    http: SocketAddr,
    token: String,
    client: reqwest::Client,
}

impl Api {
    async fn get(&self, path: &str) -> Option<Value> {
        let r = self
            .client
            .get(format!("http://{}{path}", self.http))
            .header("authorization", format!("Bearer {}", self.token))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .ok()?;
        serde_json::from_str(&r.text().await.ok()?).ok()
    }

    async fn alarm_state(&self) -> Option<String> {
        let v = self.get("/api/alarms").await?;
        v["alarms"]
            .as_array()?
            .iter()
            .find(|a| a["node"] == NODE)
            .and_then(|a| a["state"].as_str().map(str::to_owned))
    }
}

async fn publish(client: &AsyncClient, seq: u32, value: f64) {
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let payload = json!({"v": 1, "seq": seq, "ts": ts,
        "readings": [{"ch": 0, "q": "combustible_gas", "value": value}]});
    client
        .publish(
            format!("tianzhong/v1/plant-rl/{NODE}/telemetry"),
            QoS::AtLeastOnce,
            false,
            payload.to_string(),
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_refuses_a_bad_file_and_applies_a_good_one_keeping_alarm_state() {
    let dir = std::env::temp_dir().join(format!("tz-reload-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let broker = free_addr();
    tianzhong_gateway::demo::start_broker(broker).unwrap();
    let http = free_addr();
    let file = dir.join("gateway.toml");
    let log = dir.join("gateway.log");
    std::fs::write(&file, config(&dir, broker, http, "")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tianzhong"))
        .args(["run", "--config"])
        .arg(&file)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut password = String::new();
    wait_until("the first-run password", &log, async || {
        if let Some(p) = log_of(&log).split("one-time password ").nth(1) {
            password = p
                .split_whitespace()
                .next()
                .unwrap_or("")
                .trim_end_matches(';')
                .to_owned();
        }
        !password.is_empty()
    })
    .await;
    let client = reqwest::Client::new();
    let mut token = String::new();
    wait_until("a login", &log, async || {
        let Ok(r) = client
            .post(format!("http://{http}/api/login"))
            .header("content-type", "application/json")
            .body(json!({"user": "admin", "password": password}).to_string())
            .send()
            .await
        else {
            return false;
        };
        let v: Value =
            serde_json::from_str(&r.text().await.unwrap_or_default()).unwrap_or_default();
        token = v["token"].as_str().unwrap_or("").to_owned();
        !token.is_empty()
    })
    .await;
    let api = Api {
        http,
        token,
        client: client.clone(),
    };

    // A yellow alarm (30 %LEL is above the shipped 25), acknowledged.
    let mut opts = MqttOptions::new("rl-node", broker.ip().to_string(), broker.port());
    opts.set_keep_alive(Duration::from_secs(5));
    let (node, mut events) = AsyncClient::new(opts, 16);
    tokio::spawn(async move { while events.poll().await.is_ok() {} });
    publish(&node, 1, 30.0).await;
    wait_until("the yellow alarm", &log, async || {
        api.alarm_state().await.as_deref() == Some("active_unacked")
    })
    .await;
    let acked = client
        .post(format!("http://{http}/api/alarms/ack"))
        .header("authorization", format!("Bearer {}", api.token))
        .header("content-type", "application/json")
        .body(
            json!({"node": NODE, "ch": 0, "condition": "threshold", "comment": "seen"}).to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(acked.status().as_u16(), 200);
    let version = api.get("/api/rules").await.unwrap()["version"]
        .as_u64()
        .unwrap();

    // A file with a mistake: refused, the gateway keeps running as it was.
    std::fs::write(&file, config(&dir, broker, http, "[outbox]\nmax_mb = 1\n")).unwrap();
    signal(&child, "-HUP");
    wait_until("the refusal in the log", &log, async || {
        log_of(&log).contains("reload refused")
    })
    .await;
    assert!(child.try_wait().unwrap().is_none(), "the gateway exited");
    assert!(log_of(&log).contains("outbox.max_mb"), "{}", log_of(&log));
    assert_eq!(api.alarm_state().await.as_deref(), Some("active_acked"));

    // A good file with a node group: applied, and the acknowledged alarm is still acknowledged.
    std::fs::write(
        &file,
        config(
            &dir,
            broker,
            http,
            "[alarms.groups]\n\"tank-farm\" = [\"rl-gas-01\"]\n",
        ),
    )
    .unwrap();
    signal(&child, "-HUP");
    wait_until("the new node group in force", &log, async || {
        api.get("/api/rules")
            .await
            .is_some_and(|v| v["groups"]["tank-farm"] == json!([NODE]))
    })
    .await;
    let rules = api.get("/api/rules").await.unwrap();
    assert_eq!(rules["version"], version + 1, "{rules}");
    assert_eq!(api.alarm_state().await.as_deref(), Some("active_acked"));
    // The accounts and the outbox carry on: the second sample is counted after the first.
    publish(&node, 2, 31.0).await;
    wait_until("both samples in the accounts", &log, async || {
        api.get("/api/completeness").await.is_some_and(|v| {
            v["nodes"]
                .as_array()
                .and_then(|n| n.iter().find(|n| n["node"] == NODE).cloned())
                .is_some_and(|n| n["stored"] == 2 && n["samples"] == 2 && n["missing"] == 0)
        })
    })
    .await;
    assert!(log_of(&log).contains("reloaded"), "{}", log_of(&log));

    signal(&child, "-TERM");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the gateway did not stop");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "{status}\n{}", log_of(&log));
    let _ = std::fs::remove_dir_all(&dir);
}
