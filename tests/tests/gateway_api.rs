//! The operator API against a running gateway: nodes and their latest values, trends from the
//! local store, the live stream, and threshold rules changed at run time — validated,
//! versioned, audited, applied without losing alarm state, kept across a restart — with every
//! kind of bad request refused with a 4xx and a message, changing nothing. Also checks that
//! the OpenAPI document and the router describe the same operations.
//!
//! Readings come from this test, published to a real MQTT broker (rumqttd, as in the demo)
//! as a combustible-gas detector would, so every value the API shows is one the test chose.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, MqttOptions, QoS};
use serde_json::{Value, json};
use tianzhong_gateway::demo::start_broker;
use tianzhong_gateway::gateway::Gateway;
use tianzhong_tests::fleet::unix_ms;
use tianzhong_tests::services::TempDir;

const NODE: &str = "api-gas-01";
const SITE: &str = "plant-api";
const RULE: &str = "combustible gas";

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
}

fn gateway_toml(data_dir: &Path, broker: SocketAddr, http: SocketAddr) -> String {
    format!(
        r#"[gateway]
id = "gw-api"
data_dir = "{}"
http_listen = "{http}"

[mqtt_source]
broker = "{broker}"
client_id = "gw-api-source-{}"

[alarms]
enabled = true
[alarms.groups]
"gas-detector" = ["{NODE}"]
"#,
        data_dir.display(),
        std::process::id()
    )
}

struct Api {
    http: SocketAddr,
    client: reqwest::Client,
}

impl Api {
    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<String>,
    ) -> (u16, Value) {
        let url = format!("http://{}{path}", self.http);
        let mut r = self
            .client
            .request(method.parse().unwrap(), url)
            .timeout(Duration::from_secs(20));
        if let Some(t) = token {
            r = r.header("authorization", format!("Bearer {t}"));
        }
        if let Some(b) = body {
            r = r.header("content-type", "application/json").body(b);
        }
        let resp = r.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn get(&self, path: &str, token: &str) -> Value {
        let (status, v) = self.call("GET", path, Some(token), None).await;
        assert_eq!(status, 200, "GET {path}: {v}");
        v
    }

    async fn login(&self, user: &str, password: &str) -> String {
        let (status, v) = self
            .call(
                "POST",
                "/api/login",
                None,
                Some(json!({"user": user, "password": password}).to_string()),
            )
            .await;
        assert_eq!(status, 200, "login {user}: {v}");
        v["token"].as_str().unwrap().to_owned()
    }

    /// Polls `GET path` until `check` holds, or panics after 30 s with the last answer.
    async fn wait_for(
        &self,
        path: &str,
        token: &str,
        what: &str,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let v = self.get(path, token).await;
            if check(&v) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; last {path}: {v}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn publisher(broker: SocketAddr) -> AsyncClient {
    let mut opts = MqttOptions::new(
        format!("api-test-node-{}", std::process::id()),
        broker.ip().to_string(),
        broker.port(),
    );
    opts.set_keep_alive(Duration::from_secs(5));
    let (client, mut events) = AsyncClient::new(opts, 64);
    tokio::spawn(async move { while events.poll().await.is_ok() {} });
    client
}

async fn publish(client: &AsyncClient, seq: u32, value: f64) {
    let payload = json!({
        "v": 1, "seq": seq, "ts": unix_ms(),
        "readings": [{"ch": 0, "q": "combustible_gas", "value": value}]
    });
    client
        .publish(
            format!("tianzhong/v1/{SITE}/{NODE}/telemetry"),
            QoS::AtLeastOnce,
            false,
            payload.to_string(),
        )
        .await
        .unwrap();
}

fn alarm(alarms: &Value) -> Option<&Value> {
    alarms["alarms"]
        .as_array()?
        .iter()
        .find(|a| a["node"] == NODE && a["ch"] == 0 && a["condition"] == "threshold")
}

fn rule(rules: &Value) -> Value {
    rules["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == RULE)
        .unwrap_or_else(|| panic!("no rule `{RULE}` in {rules}"))
        .clone()
}

async fn start(dir: &Path, broker: SocketAddr, http: SocketAddr) -> Gateway {
    let toml = gateway_toml(dir, broker, http);
    tianzhong_tests::gateway::start(&toml, &dir.join("gw.toml"))
        .await
        .unwrap()
}

/// A broker and a gateway on a fresh data directory, with the first-run admin logged in.
async fn fresh(dir: &Path) -> (SocketAddr, SocketAddr, Gateway, Api, String) {
    let broker = free_addr();
    start_broker(broker).unwrap();
    let http = free_addr();
    let gateway = start(dir, broker, http).await;
    let admin_password = gateway.first_run_secret().unwrap().to_owned();
    let api = Api {
        http,
        client: reqwest::Client::new(),
    };
    let admin = api.login("admin", &admin_password).await;
    (broker, http, gateway, api, admin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_change_at_run_time_and_bad_requests_change_nothing() {
    let dir = TempDir::new("tz-api").unwrap();
    let (broker, http, gateway, api, admin) = fresh(dir.path()).await;
    for (name, role) in [("eng", "engineer"), ("op", "operator"), ("view", "viewer")] {
        let (status, v) = api
            .call(
                "POST",
                "/api/users",
                Some(&admin),
                Some(json!({"name": name, "role": role, "password": format!("{name}-long-password")}).to_string()),
            )
            .await;
        assert_eq!(status, 201, "{v}");
    }
    let eng = api.login("eng", "eng-long-password").await;
    let op = api.login("op", "op-long-password").await;
    let view = api.login("view", "view-long-password").await;
    assert_eq!(
        api.get("/api/me", &view).await,
        json!({"user": "view", "role": "viewer"})
    );

    // The node appears with the value the test published, in the canonical unit.
    let node = publisher(broker).await;
    let mut seq = 0;
    let mut send = async |value: f64| {
        seq += 1;
        publish(&node, seq, value).await;
    };
    send(10.0).await;
    let nodes = api
        .wait_for("/api/nodes", &view, "the node's first reading", |v| {
            v.to_string().contains(NODE)
        })
        .await;
    let site = nodes["sites"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["site"] == SITE)
        .unwrap();
    let n = &site["nodes"][0];
    assert_eq!(n["node"], NODE);
    assert_eq!(n["group"], "gas-detector");
    assert_eq!(n["source"], "mqtt");
    assert_eq!(n["channels"][0]["value"], 10.0);
    assert_eq!(n["channels"][0]["unit"], "%LEL");
    assert_eq!(n["channels"][0]["quantity"], "combustible_gas");
    assert_eq!(n["channels"][0]["quality"], "good");
    assert_eq!(n["level"], "normal");

    // 30 %LEL is above the shipped yellow set point (25, GB/T 50493-2019) and below red (50).
    let before_raise = unix_ms();
    send(30.0).await;
    let alarms = api
        .wait_for("/api/alarms", &view, "a yellow alarm", |v| {
            alarm(v).is_some_and(|a| a["level"] == "yellow")
        })
        .await;
    let listed_at = unix_ms();
    assert_eq!(alarm(&alarms).unwrap()["state"], "active_unacked");
    // A client that opens the list after the fact still learns when the alarm was raised.
    let raised_ms = alarm(&alarms).unwrap()["changed_ms"].as_u64();
    assert!(
        raised_ms.is_some_and(|t| (before_raise..=listed_at).contains(&t)),
        "changed_ms {raised_ms:?} outside the raise window {before_raise}..={listed_at}: {alarms}"
    );
    let (status, v) = api
        .call(
            "POST",
            "/api/alarms/ack",
            Some(&op),
            Some(
                json!({"node": NODE, "ch": 0, "condition": "threshold", "comment": "crew sent"})
                    .to_string(),
            ),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let one = api.get(&format!("/api/nodes/{NODE}"), &view).await;
    assert_eq!(one["level"], "yellow");
    assert_eq!(one["channels"][0]["level"], "yellow");
    assert_eq!(one["alarms"][0]["state"], "active_acked");

    // Bad requests: each refused with a 4xx and a message, and the rules stay as they were.
    let rules = api.get("/api/rules", &view).await;
    let version = rules["version"].as_u64().unwrap();
    let original = rule(&rules);
    assert_eq!(original["high"]["yellow"], 25.0);
    assert_eq!(original["high"]["red"], 50.0);
    assert_eq!(original["unit"], "%LEL");
    assert_eq!(rules["groups"]["gas-detector"], json!([NODE]));
    let path = format!(
        "/api/rules/{}",
        RULE.replace(' ', "%20").replace('/', "%2F")
    );
    let change = |rule: Value, base: u64, reason: &str| {
        json!({"base_version": base, "rule": rule, "reason": reason}).to_string()
    };
    let mut misordered = original.clone();
    misordered["high"]["red"] = json!(20.0);
    let mut wrong_type = original.clone();
    wrong_type["high"]["red"] = json!("fifty");
    let mut unknown_field = original.clone();
    unknown_field["high"]["crimson"] = json!(60.0);
    let mut good = original.clone();
    good["deadband"] = json!(3.0);
    /// What, path, token, body, the status wanted, what the message says.
    type Case<'a> = (
        &'a str,
        String,
        Option<&'a str>,
        Option<String>,
        u16,
        &'a str,
    );
    let cases: Vec<Case<'_>> = vec![
        (
            "misordered set points",
            path.clone(),
            Some(&eng),
            Some(change(misordered, version, "test")),
            400,
            "must be above",
        ),
        (
            "a set point of the wrong type",
            path.clone(),
            Some(&eng),
            Some(change(wrong_type, version, "test")),
            400,
            "invalid type",
        ),
        (
            "an unknown field",
            path.clone(),
            Some(&eng),
            Some(change(unknown_field, version, "test")),
            400,
            "crimson",
        ),
        (
            "no reason",
            path.clone(),
            Some(&eng),
            Some(change(good.clone(), version, "  ")),
            400,
            "reason",
        ),
        (
            "an unknown rule",
            "/api/rules/no-such-rule".into(),
            Some(&eng),
            Some(change(good.clone(), version, "test")),
            404,
            "no-such-rule",
        ),
        (
            "an old base version",
            path.clone(),
            Some(&eng),
            Some(change(good.clone(), version - 1, "test")),
            409,
            "version",
        ),
        (
            "no token",
            path.clone(),
            None,
            Some(change(good.clone(), version, "test")),
            401,
            "Authorization",
        ),
        (
            "a wrong token",
            path.clone(),
            Some("forged"),
            Some(change(good.clone(), version, "test")),
            401,
            "token",
        ),
        (
            "an operator",
            path.clone(),
            Some(&op),
            Some(change(good.clone(), version, "test")),
            403,
            "engineer",
        ),
        (
            "a body over 16 KiB",
            path.clone(),
            Some(&eng),
            Some(change(good.clone(), version, &"x".repeat(20_000))),
            413,
            "",
        ),
        (
            "not JSON",
            path.clone(),
            Some(&eng),
            Some("{\"base_version\":".into()),
            400,
            "",
        ),
    ];
    for (what, path, token, body, want, says) in cases {
        let (status, v) = api.call("PUT", &path, token, body).await;
        assert_eq!(status, want, "{what}: {v}");
        let message = v["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: no message in {v}"));
        assert!(
            message.contains(says),
            "{what}: `{message}` does not say `{says}`"
        );
    }
    for (what, path, want) in [
        ("an unknown node", "/api/nodes/no-such-node".to_owned(), 404),
        (
            "a trend without a channel",
            format!("/api/nodes/{NODE}/trend"),
            400,
        ),
        (
            "a trend of too many hours",
            format!("/api/nodes/{NODE}/trend?ch=0&hours=1000"),
            400,
        ),
        (
            "a trend of a channel that never reported",
            format!("/api/nodes/{NODE}/trend?ch=9"),
            404,
        ),
        (
            "a trend with an unknown parameter",
            format!("/api/nodes/{NODE}/trend?ch=0&colour=red"),
            400,
        ),
    ] {
        let (status, v) = api.call("GET", &path, Some(&view), None).await;
        assert_eq!(status, want, "{what}: {v}");
        assert!(v["error"].is_string(), "{what}: {v}");
    }
    let after = api.get("/api/rules", &view).await;
    assert_eq!(
        after["version"], version,
        "a refused change moved the version"
    );
    assert_eq!(rule(&after), original, "a refused change changed the rule");
    assert_eq!(
        api.get("/api/rules/history", &view).await["changes"],
        json!([])
    );

    // A change that leaves the alarm's condition as it is keeps its state (acknowledged).
    let (status, v) = api
        .call(
            "PUT",
            &path,
            Some(&eng),
            Some(change(
                good.clone(),
                version,
                "wider hysteresis for the new sensor",
            )),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["version"], version + 1);
    let alarms = api.get("/api/alarms", &view).await;
    assert_eq!(alarm(&alarms).unwrap()["state"], "active_acked", "{alarms}");
    assert_eq!(alarms["rules_version"], version + 1);

    // Red moved below the value escalates the same alarm at once, which asks for a new
    // acknowledgement; a second change against the old version is refused.
    let mut lower_red = good.clone();
    lower_red["high"]["red"] = json!(28.0);
    let (status, v) = api
        .call(
            "PUT",
            &path,
            Some(&eng),
            Some(change(
                lower_red.clone(),
                version + 1,
                "tank farm: red at 28 %LEL",
            )),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let (status, _) = api
        .call(
            "PUT",
            &path,
            Some(&eng),
            Some(change(good.clone(), version + 1, "stale edit")),
        )
        .await;
    assert_eq!(status, 409);
    let alarms = api.get("/api/alarms", &view).await;
    let a = alarm(&alarms).unwrap();
    assert_eq!(
        (a["level"].as_str(), a["state"].as_str()),
        (Some("red"), Some("active_unacked")),
        "{alarms}"
    );

    // Audited: who, when, old, new, why, newest first.
    let history = api.get("/api/rules/history", &view).await;
    let changes = history["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 2, "{history}");
    assert_eq!(changes[0]["version"], version + 2);
    assert_eq!(changes[0]["user"], "eng");
    assert_eq!(changes[0]["action"], "update");
    assert_eq!(changes[0]["reason"], "tank farm: red at 28 %LEL");
    assert_eq!(changes[0]["old"]["high"]["red"], 50.0);
    assert_eq!(changes[0]["new"]["high"]["red"], 28.0);
    assert_eq!(changes[1]["old"]["deadband"], original["deadband"]);
    let at = changes[0]["at"].as_u64().unwrap();
    assert!(at.abs_diff(unix_ms()) < 120_000, "change time {at}");

    // The live stream carries readings and alarm transitions.
    let mut sse = tokio::net::TcpStream::connect(http).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(
        &mut sse,
        format!("GET /api/stream HTTP/1.1\r\nHost: {http}\r\nAccept: text/event-stream\r\nAuthorization: Bearer {view}\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let reader = tokio::spawn(async move {
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            let text = String::from_utf8_lossy(&seen).to_string();
            if text.contains("event: readings")
                && text.contains("31.5")
                && text.contains("event: alarm")
                && text.contains("\"cleared\"")
            {
                return text;
            }
            match tokio::time::timeout(
                Duration::from_secs(1),
                tokio::io::AsyncReadExt::read(&mut sse, &mut buf),
            )
            .await
            {
                Ok(Ok(0)) => break,
                Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
                _ => {}
            }
        }
        String::from_utf8_lossy(&seen).to_string()
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    send(31.5).await;
    // 31.5 - 3 (deadband) holds red; 20 is below yellow less the deadband: cleared.
    send(20.0).await;
    let text = reader.await.unwrap();
    assert!(
        text.contains("event: readings") && text.contains("31.5"),
        "no reading in the stream:\n{text}"
    );
    assert!(
        text.contains("event: alarm") && text.contains("\"cleared\""),
        "no cleared transition in the stream:\n{text}"
    );

    // The trend holds what was published, from the local store.
    let trend = api
        .wait_for(
            &format!("/api/nodes/{NODE}/trend?ch=0&hours=1"),
            &view,
            "the trend",
            |v| {
                v["points"]
                    .as_array()
                    .is_some_and(|p| p.iter().map(|p| p[4].as_u64().unwrap_or(0)).sum::<u64>() >= 4)
            },
        )
        .await;
    assert_eq!(trend["unit"], "%LEL");
    let points = trend["points"].as_array().unwrap();
    let min = points
        .iter()
        .map(|p| p[2].as_f64().unwrap())
        .fold(f64::MAX, f64::min);
    let max = points
        .iter()
        .map(|p| p[3].as_f64().unwrap())
        .fold(f64::MIN, f64::max);
    assert_eq!((min, max), (10.0, 31.5), "{trend}");

    // Restarted on the same data directory, the gateway keeps the changed rules.
    gateway.shutdown(Duration::from_secs(10)).await;
    let gateway = start(dir.path(), broker, http).await;
    assert!(gateway.first_run_secret().is_none());
    let rules = api.get("/api/rules", &view).await;
    assert_eq!(rules["version"], version + 2);
    assert_eq!(rule(&rules)["high"]["red"], 28.0);
    gateway.shutdown(Duration::from_secs(10)).await;
}

/// Every operation the router serves is in the OpenAPI document and every documented
/// operation is served (a route that does not exist answers 404 with no JSON body, or 405).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_describes_the_routes() {
    let dir = TempDir::new("tz-openapi").unwrap();
    let broker = free_addr();
    start_broker(broker).unwrap();
    let http = free_addr();
    let gateway = start(dir.path(), broker, http).await;
    let api = Api {
        http,
        client: reqwest::Client::new(),
    };
    let (status, doc) = api.call("GET", "/api/openapi.json", None, None).await;
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.1.0");
    let mut documented = Vec::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            documented.push((method.to_uppercase(), path.clone()));
        }
    }
    assert!(documented.len() >= 20, "{documented:?}");
    for (method, path) in &documented {
        let concrete = path.replace("{node}", NODE).replace("{name}", "x");
        let body = (method != "GET").then(|| "{}".to_owned());
        let (status, v) = api.call(method, &concrete, Some("no-token"), body).await;
        let unrouted = status == 405 || (status == 404 && !v.is_object());
        assert!(
            !unrouted,
            "{method} {path} is documented but not served ({status} {v})"
        );
    }
    // The other way round: the router's table in the source, against the document.
    let source: String = include_str!("../../gateway/src/http.rs")
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let mut served = Vec::new();
    for segment in source.split(".route(\"").skip(1) {
        let (path, rest) = segment.split_once('"').unwrap();
        let handlers = rest.split(".route(").next().unwrap();
        for method in ["get", "post", "put", "delete"] {
            if handlers.contains(&format!(",{method}("))
                || handlers.contains(&format!(").{method}("))
            {
                served.push((method.to_uppercase(), path.to_owned()));
            }
        }
    }
    assert!(served.len() >= 20, "{served:?}");
    for op in &served {
        assert!(
            documented.contains(op),
            "{} {} is served but not in the OpenAPI document",
            op.0,
            op.1
        );
    }
    gateway.shutdown(Duration::from_secs(10)).await;
}

/// Completeness accounting: a node's sequence followed from the broker to the local store —
/// a gap in its sample numbers is reported as missing samples, and every stored reading is
/// reported delivered once the sink confirmed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completeness_reports_sequence_gaps_and_deliveries_per_sink() {
    let dir = TempDir::new("tz-complete").unwrap();
    let (broker, http, gateway, api, admin) = fresh(dir.path()).await;
    let node = publisher(broker).await;
    // Samples 1, 2, 3, then 7: 4, 5 and 6 never arrive.
    for seq in [1, 2, 3, 7] {
        publish(&node, seq, 1.0 + f64::from(seq)).await;
    }
    let account = |v: &Value| {
        v["nodes"]
            .as_array()
            .and_then(|n| n.iter().find(|n| n["node"] == NODE))
            .cloned()
            .unwrap_or(Value::Null)
    };
    let v = api
        .wait_for(
            "/api/completeness",
            &admin,
            "four readings delivered to the local store",
            |v| account(v)["delivered"]["local_store"] == 4,
        )
        .await;
    let a = account(&v);
    assert_eq!(a["samples"], 4, "{a}");
    assert_eq!(a["missing"], 3, "{a}");
    assert_eq!(a["readings"], 4, "{a}");
    assert_eq!(a["stored"], 4, "{a}");
    assert_eq!(a["last_seq"], 7, "{a}");
    assert_eq!(a["dropped"], json!({}), "{a}");
    assert_eq!(v["outbox"]["dropped_readings"], 0, "{v}");
    let sinks = v["outbox"]["sinks"].as_array().unwrap();
    assert!(sinks.iter().any(|s| s["sink"] == "local_store"), "{v}");
    // The same gap in the metrics.
    let metrics = api
        .client
        .get(format!("http://{http}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut metrics = metrics;
    while !metrics.contains("tianzhong_samples_missing 3") && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        metrics = api
            .client
            .get(format!("http://{http}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
    }
    assert!(metrics.contains("tianzhong_samples_missing 3"), "{metrics}");
    // Dead letters are for engineers: the admin may look, an unknown token may not.
    let (status, v) = api
        .call("GET", "/api/outbox/dead-letters", Some(&admin), None)
        .await;
    assert_eq!((status, &v["total"]), (200, &json!(0)), "{v}");
    let (status, _) = api
        .call("GET", "/api/outbox/dead-letters", Some("forged"), None)
        .await;
    assert_eq!(status, 401);
    gateway.shutdown(Duration::from_secs(10)).await;
}
