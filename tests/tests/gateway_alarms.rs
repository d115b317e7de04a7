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

/// The chemical plant's fleet from `start_ms` simulated, at [`SPEED`], and a gateway polling
/// it every simulated second with its API on a free port.
struct Plant {
    fleet: Arc<Fleet>,
    started: Vec<transport::Transport>,
    stepper: tokio::task::JoinHandle<()>,
    gateway: Gateway,
    http: SocketAddr,
    /// Unix ms at simulated `start_ms`.
    t0: u64,
    start_ms: u64,
    admin_password: String,
}

impl Plant {
    async fn start(dir: &Path, start_ms: u64) -> Plant {
        let mut spec = scenario::parse(DEFAULT_SCENARIO, Path::new("chemical-plant.toml")).unwrap();
        for bus in &mut spec.buses {
            match &mut bus.kind {
                BusKind::ModbusTcp { listen, .. } => *listen = "127.0.0.1:0".parse().unwrap(),
                BusKind::ModbusRtu { link, .. } => *link = dir.join("tankfarm.tty"),
                BusKind::Mqtt { broker, .. } => {
                    *broker = free_addr();
                    start_broker(*broker).unwrap();
                }
            }
        }
        let t0 = unix_ms();
        let fleet = Arc::new(
            Fleet::build(&spec, SimClock::starting_at(t0, SPEED, start_ms), true).unwrap(),
        );
        let started = transport::start_all(&fleet, spec.seed).await.unwrap();
        let stepper = tokio::spawn(Arc::clone(&fleet).run(Duration::from_millis(10)));
        let poll = Duration::from_secs_f64(POLL_SIM_MS as f64 / 1000.0 / SPEED);
        let http = free_addr();
        let toml = gateway_toml(&spec, &started, dir, poll, Some(http));
        let config = tianzhong_gateway::config::parse(&toml, &dir.join("gw.toml"), &|_| None)
            .unwrap_or_else(|e| panic!("{e}\n{toml}"));
        let gateway = Gateway::start(config).await.unwrap();
        let admin_password = gateway
            .first_run_secret()
            .expect("a fresh data directory creates the admin")
            .to_owned();
        Plant {
            fleet,
            started,
            stepper,
            gateway,
            http,
            t0,
            start_ms,
            admin_password,
        }
    }

    /// Simulated ms of a gateway timestamp.
    fn sim_ms(&self, unix: u64) -> u64 {
        self.start_ms + ((unix - self.t0) as f64 * SPEED) as u64
    }

    async fn run_until(&self, sim_ms: u64) {
        while self.fleet.stepped_to() < sim_ms {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn stop(self) -> Arc<Fleet> {
        self.stepper.abort();
        for t in self.started {
            t.shutdown().await;
        }
        self.gateway.shutdown(Duration::from_secs(10)).await;
        self.fleet
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leak_raises_yellow_then_red_at_the_right_detectors_in_time() {
    let dir = TempDir::new("tz-alarms").unwrap();
    let plant = Plant::start(dir.path(), START_MS).await;
    let (http, t0, admin_password) = (plant.http, plant.t0, plant.admin_password.clone());
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

    plant.run_until(END_MS).await;
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
    let fleet = plant.stop().await;

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

/// Entered at 32:00 simulated, while cp-lel-05 still reads about 54 %LEL and the line has just
/// been isolated, until 37:30, when the gas has fallen below yellow's set point less its
/// deadband.
const CLEAR_START_MS: u64 = 32 * 60_000;
const CLEAR_END_MS: u64 = 37 * 60_000 + 30_000;
/// Deadband of the shipped combustible-gas rule, %LEL.
const DEADBAND: f32 = 1.0;

/// The alarm acknowledged at red de-escalates and clears with its hysteresis as the cloud
/// disperses: it clears within a poll interval plus 1 s of the first sample below the yellow
/// set point less the deadband — not when the gas first dips below the set point itself —
/// and, acknowledged and clear, returns to normal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_acknowledged_alarm_clears_with_its_hysteresis() {
    let dir = TempDir::new("tz-alarms-clear").unwrap();
    let plant = Plant::start(dir.path(), CLEAR_START_MS).await;
    let http = plant.http;
    let client = reqwest::Client::new();
    let login: serde_json::Value = client
        .post(format!("http://{http}/api/login"))
        .header("content-type", "application/json")
        .body(format!(
            r#"{{"user":"admin","password":"{}"}}"#,
            plant.admin_password
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .map(|t| serde_json::from_str(&t).unwrap())
        .unwrap();
    let token = login["token"].as_str().unwrap().to_owned();
    // Acknowledge the red alarm as soon as the gateway has raised it.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let r = client
            .post(format!("http://{http}/api/alarms/ack"))
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {token}"))
            .body(r#"{"node":"cp-lel-05","ch":0,"condition":"threshold","comment":"line isolated, watching it disperse"}"#)
            .send()
            .await
            .unwrap();
        if r.status().as_u16() == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the red alarm was never raised to acknowledge: {}",
            r.text().await.unwrap()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    plant.run_until(CLEAR_END_MS).await;
    let alarms: serde_json::Value = client
        .get(format!("http://{http}/api/alarms?node=cp-lel-05"))
        .header("authorization", format!("Bearer {token}"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .map(|t| serde_json::from_str(&t).unwrap())
        .unwrap();
    let sim = |unix: u64| plant.sim_ms(unix);
    let audit = std::fs::read_to_string(dir.path().join("alarm-audit.jsonl")).unwrap();
    let transitions: Vec<(u64, String, String, String)> = audit
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["node"] == "cp-lel-05" && v["condition"] == "threshold")
        .map(|v| {
            (
                sim(v["at"].as_u64().unwrap()),
                v["cause"].as_str().unwrap().to_owned(),
                v["level"].as_str().unwrap().to_owned(),
                v["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let fleet = plant.stop().await;
    let shown: Vec<(&str, &str, &str)> = transitions
        .iter()
        .map(|(_, c, l, s)| (c.as_str(), l.as_str(), s.as_str()))
        .collect();
    assert_eq!(
        shown,
        [
            ("raised", "red", "active_unacked"),
            ("acknowledged", "red", "active_acked"),
            ("de_escalated", "yellow", "active_acked"),
            ("cleared", "normal", "normal"),
        ],
        "{audit}"
    );
    assert_eq!(alarms["alarms"], serde_json::json!([]), "{alarms}");

    // The detector's samples on the way down, from the simulator's ground truth.
    let samples: Vec<(u64, f32)> = fleet
        .truth
        .samples()
        .into_iter()
        .filter(|s| &*s.node == "cp-lel-05" && s.channel == 0 && s.time_ms >= CLEAR_START_MS)
        .map(|s| (s.time_ms, s.value))
        .collect();
    let yellow = YELLOW as f32;
    let first_below_set_point = samples.iter().find(|(_, v)| *v < yellow).unwrap().0;
    let first_below_deadband = samples
        .iter()
        .find(|(_, v)| *v < yellow - DEADBAND)
        .unwrap()
        .0;
    let cleared_at = transitions[3].0;
    let delay = cleared_at as i64 - first_below_deadband as i64;
    let in_band: Vec<f32> = samples
        .iter()
        .filter(|(t, v)| *t < first_below_deadband && (yellow - DEADBAND..yellow).contains(v))
        .map(|(_, v)| *v)
        .collect();
    eprintln!(
        "cp-lel-05: first below {yellow} at {first_below_set_point} ms, below {} at {first_below_deadband} ms, cleared at {cleared_at} ms ({delay:+} ms); {} samples inside the deadband before that: {in_band:?}",
        yellow - DEADBAND,
        in_band.len()
    );
    assert!(
        delay >= -100,
        "cleared {delay} ms before the gas fell below the deadband"
    );
    assert!(
        delay <= (POLL_SIM_MS + 1_000) as i64,
        "cleared {delay} ms after the gas fell below the deadband"
    );
    // The deadband did something: the gas sat between the set point and the set point less
    // the deadband for a while, and the alarm held.
    assert!(
        cleared_at > first_below_set_point + POLL_SIM_MS + 1_000,
        "cleared at {cleared_at} ms, too close to the first dip below the set point at {first_below_set_point} ms for the deadband to have held it"
    );
}
