//! Alarms at the edge on the chemical-plant scenario: the flange leak raises yellow, then
//! red, at the detectors whose gas actually crossed the set points, within one poll interval
//! plus 1 s (simulated time) of the simulator crossing them — and nowhere else.
//!
//! The reference is the simulator's ground truth (every sample each node took); the
//! gateway's side is its synced alarm audit log. The scenario is entered at 11:00 simulated,
//! just before the leak reaches 25 %LEL at cp-lel-05 (about 11:48), and runs at 5x until
//! 14:10, past red there (about 13:36).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tianzhong_gateway::demo::{DEFAULT_SCENARIO, gateway_toml, start_broker};
use tianzhong_gateway::gateway::Gateway;
use tianzhong_simulator::clock::SimClock;
use tianzhong_simulator::fleet::Fleet;
use tianzhong_simulator::scenario;
use tianzhong_simulator::spec::BusKind;
use tianzhong_simulator::transport;
use tianzhong_tests::fleet::unix_ms;
use tianzhong_tests::services::TempDir;

const SPEED: f64 = 5.0;
const START_MS: u64 = 11 * 60_000;
const END_MS: u64 = 14 * 60_000 + 10_000;
/// Polled every simulated second.
const POLL_SIM_MS: u64 = 1_000;
/// Set points of combustible gas, %LEL (GB/T 50493-2019 5.5.2, the shipped defaults).
const YELLOW: u32 = 25;
const RED: u32 = 50;

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leak_raises_yellow_then_red_at_the_right_detectors_in_time() {
    let dir = TempDir::new("tz-alarms").unwrap();
    let mut spec = scenario::parse(DEFAULT_SCENARIO, Path::new("chemical-plant.toml")).unwrap();
    for bus in &mut spec.buses {
        match &mut bus.kind {
            BusKind::ModbusTcp { listen, .. } => *listen = "127.0.0.1:0".parse().unwrap(),
            BusKind::ModbusRtu { link, .. } => *link = dir.path().join("tankfarm.tty"),
            BusKind::Mqtt { broker, .. } => {
                *broker = free_addr();
                start_broker(*broker).unwrap();
            }
        }
    }
    let t0 = unix_ms();
    let fleet =
        Arc::new(Fleet::build(&spec, SimClock::starting_at(t0, SPEED, START_MS), true).unwrap());
    let started = transport::start_all(&fleet, spec.seed).await.unwrap();
    let stepper = tokio::spawn(Arc::clone(&fleet).run(Duration::from_millis(10)));
    let poll = Duration::from_secs_f64(POLL_SIM_MS as f64 / 1000.0 / SPEED);
    let http = free_addr();
    let toml = gateway_toml(&spec, &started, dir.path(), poll, Some(http));
    let config = tianzhong_gateway::config::parse(&toml, &dir.path().join("gw.toml"), &|_| None)
        .unwrap_or_else(|e| panic!("{e}\n{toml}"));
    let gateway = Gateway::start(config).await.unwrap();
    let admin_password = gateway
        .first_run_secret()
        .expect("a fresh data directory creates the admin")
        .to_owned();
    let client = reqwest::Client::new();
    let post = |path: &str, token: Option<&str>, body: String| {
        let mut r = client
            .post(format!("http://{http}{path}"))
            .header("content-type", "application/json")
            .body(body);
        if let Some(t) = token {
            r = r.header("authorization", format!("Bearer {t}"));
        }
        r.send()
    };
    let login: serde_json::Value = serde_json::from_str(
        &post(
            "/api/login",
            None,
            format!(r#"{{"user":"admin","password":"{admin_password}"}}"#),
        )
        .await
        .unwrap()
        .text()
        .await
        .unwrap(),
    )
    .unwrap();
    let token = login["token"].as_str().expect("a token").to_owned();
    let sse_token = token.clone();

    // An SSE client, connected before the leak: it must see the red alarm arrive live.
    let sse = tokio::spawn(async move {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let mut s = tokio::net::TcpStream::connect(http).await.unwrap();
        s.write_all(
            format!("GET /api/alarms/stream HTTP/1.1\r\nHost: {http}\r\nAccept: text/event-stream\r\nAuthorization: Bearer {sse_token}\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
        let mut lines = BufReader::new(s).lines();
        let mut events = Vec::new();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(data) = line.strip_prefix("data: ")
                && let Ok(v) = serde_json::from_str::<serde_json::Value>(data)
            {
                let acked = v["node"] == "cp-lel-05" && v["cause"] == "acknowledged";
                events.push(v);
                if acked {
                    break;
                }
            }
        }
        events
    });

    while fleet.stepped_to() < END_MS {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The alarm list, as an operator's console would fetch it.
    let list: serde_json::Value = serde_json::from_str(
        &client
            .get(format!("http://{http}/api/alarms?level=red"))
            .header("authorization", format!("Bearer {token}"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    )
    .unwrap();
    let bad = client
        .get(format!("http://{http}/api/alarms?level=purple"))
        .header("authorization", format!("Bearer {token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status().as_u16(), 400);
    assert!(bad.text().await.unwrap().contains("level `purple`"));

    // Bad requests get a 4xx with a message and change nothing.
    let ack =
        r#"{"node":"cp-lel-05","ch":0,"condition":"threshold","comment":"gas team dispatched"}"#;
    let unauthenticated = post("/api/alarms/ack", None, ack.into()).await.unwrap();
    assert_eq!(unauthenticated.status().as_u16(), 401);
    let wrong_token = post("/api/alarms/ack", Some("not-a-token"), ack.into())
        .await
        .unwrap();
    assert_eq!(wrong_token.status().as_u16(), 401);
    let created = post(
        "/api/users",
        Some(&token),
        r#"{"name":"duty-viewer","role":"viewer","password":"correct horse battery"}"#.into(),
    )
    .await
    .unwrap();
    assert_eq!(created.status().as_u16(), 201);
    let viewer: serde_json::Value = serde_json::from_str(
        &post(
            "/api/login",
            None,
            r#"{"user":"duty-viewer","password":"correct horse battery"}"#.into(),
        )
        .await
        .unwrap()
        .text()
        .await
        .unwrap(),
    )
    .unwrap();
    let viewer_token = viewer["token"].as_str().unwrap();
    let forbidden = post("/api/alarms/ack", Some(viewer_token), ack.into())
        .await
        .unwrap();
    assert_eq!(forbidden.status().as_u16(), 403);
    for (body, status) in [
        (
            r#"{"node":"cp-lel-05","ch":"zero","condition":"threshold","comment":"x"}"#.to_owned(),
            400,
        ),
        (
            r#"{"node":"cp-lel-05","ch":0,"condition":"smoke","comment":"x"}"#.to_owned(),
            400,
        ),
        (
            r#"{"node":"cp-lel-99","ch":0,"condition":"threshold","comment":"x"}"#.to_owned(),
            404,
        ),
        (
            format!(
                r#"{{"node":"cp-lel-05","ch":0,"condition":"threshold","comment":"{}"}}"#,
                "x".repeat(20_000)
            ),
            413,
        ),
    ] {
        let r = post("/api/alarms/ack", Some(&token), body).await.unwrap();
        let code = r.status().as_u16();
        let text = r.text().await.unwrap();
        assert_eq!(code, status, "{text}");
        assert!(text.contains("error"), "{text}");
    }
    // None of that acknowledged anything: the operator does now.
    let acked = post("/api/alarms/ack", Some(&token), ack.into())
        .await
        .unwrap();
    assert_eq!(acked.status().as_u16(), 200);
    let acked: serde_json::Value = serde_json::from_str(&acked.text().await.unwrap()).unwrap();
    assert_eq!(
        (acked["state"].as_str(), acked["user"].as_str()),
        (Some("active_acked"), Some("admin"))
    );
    let sse_events = tokio::time::timeout(Duration::from_secs(10), sse)
        .await
        .expect("the SSE client saw the red alarm")
        .unwrap();
    stepper.abort();
    for t in started {
        t.shutdown().await;
    }
    gateway.shutdown(Duration::from_secs(10)).await;

    // When each detector's gas first reached each set point, in simulated ms.
    let mut crossed: HashMap<(String, u32), u64> = HashMap::new();
    for s in fleet.truth.samples() {
        if s.channel != 0 || !s.node.starts_with("cp-lel-") || s.time_ms < START_MS {
            continue;
        }
        for sp in [YELLOW, RED] {
            if s.value >= sp as f32 {
                let e = crossed.entry((s.node.to_string(), sp)).or_insert(s.time_ms);
                *e = (*e).min(s.time_ms);
            }
        }
    }
    // When the gateway first annunciated each level, in simulated ms.
    let audit = std::fs::read_to_string(dir.path().join("alarm-audit.jsonl")).unwrap();
    let mut raised: HashMap<(String, u32), u64> = HashMap::new();
    for line in audit.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let node = v["node"].as_str().unwrap();
        if v["condition"] != "threshold" || !node.starts_with("cp-lel-") {
            continue;
        }
        let sp = match v["level"].as_str().unwrap() {
            "yellow" => YELLOW,
            "red" => RED,
            _ => continue,
        };
        let at_sim = START_MS + ((v["at"].as_u64().unwrap() - t0) as f64 * SPEED) as u64;
        raised.entry((node.to_owned(), sp)).or_insert(at_sim);
        if sp == RED {
            // Red implies yellow was passed.
            raised.entry((node.to_owned(), YELLOW)).or_insert(at_sim);
        }
    }
    let mut report: Vec<String> = Vec::new();
    for ((node, sp), crossed_at) in &crossed {
        let at = raised.get(&(node.clone(), *sp)).unwrap_or_else(|| {
            panic!("{node} crossed {sp} at {crossed_at} ms but no alarm:\n{audit}")
        });
        let delay = *at as i64 - *crossed_at as i64;
        report.push(format!(
            "{node} {sp} %LEL: crossed at {crossed_at} ms, alarm {delay:+} ms"
        ));
        // Not before the gas got there (one simulated tick of slack for the clock conversion),
        // and within a poll interval plus a second.
        assert!(
            delay >= -100,
            "{node} {sp}: alarm {delay} ms before the crossing"
        );
        assert!(
            delay <= (POLL_SIM_MS + 1_000) as i64,
            "{node} {sp}: alarm {delay} ms after the crossing"
        );
    }
    report.sort();
    eprintln!("{}", report.join("\n"));
    // The leak's detector went yellow, then red.
    assert!(
        crossed.contains_key(&("cp-lel-05".into(), RED)),
        "{report:?}"
    );
    let yellow = raised[&("cp-lel-05".to_owned(), YELLOW)];
    let red = raised[&("cp-lel-05".to_owned(), RED)];
    assert!(yellow < red);
    // The SSE client saw the leak's detector go yellow and then red, as transitions.
    let seen: Vec<(&str, &str, &str)> = sse_events
        .iter()
        .filter(|v| v["node"] == "cp-lel-05" && v["condition"] == "threshold")
        .map(|v| {
            (
                v["level"].as_str().unwrap(),
                v["state"].as_str().unwrap(),
                v["cause"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("yellow", "active_unacked", "raised"),
            ("red", "active_unacked", "escalated"),
            ("red", "active_acked", "acknowledged")
        ],
        "{sse_events:?}"
    );
    // The acknowledgement is in the synced alarm audit log as well, with who and why.
    assert!(
        audit
            .lines()
            .any(|l| l.contains("\"cause\":\"acknowledged\"") && l.contains("gas team dispatched"))
    );
    // The API lists it as a red, unacknowledged threshold alarm.
    let listed = list["alarms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["node"] == "cp-lel-05" && a["condition"] == "threshold")
        .unwrap_or_else(|| panic!("cp-lel-05 not listed: {list}"));
    assert_eq!(
        (listed["level"].as_str(), listed["state"].as_str()),
        (Some("red"), Some("active_unacked"))
    );
    // No detector alarmed whose gas did not cross.
    for key in raised.keys() {
        assert!(
            crossed.contains_key(key),
            "{key:?} alarmed without crossing"
        );
    }
}
