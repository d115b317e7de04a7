//! The control interface over real HTTP on loopback: what it reports matches the fleet, faults
//! added through it change what the nodes do, and bad requests get a 400 that says why.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tianzhong_protocol::{NodeId, Quantity, SiteId};
use tianzhong_simulator::clock::SimClock;
use tianzhong_simulator::control::{self, Control};
use tianzhong_simulator::fleet::Fleet;
use tianzhong_simulator::node::{ChannelSpec, NodeSpec};
use tianzhong_simulator::signal::Component;
use tianzhong_simulator::spec::{BusKind, BusSpec, FleetSpec};

const EPOCH: u64 = 1_764_316_800_000;

fn constant(quantity: Quantity, value: f64) -> ChannelSpec {
    ChannelSpec {
        quantity,
        signal: vec![Component::Constant { value }],
        clamp: None,
        sensor: None,
    }
}

fn node(id: &str, bus: &str, channels: Vec<ChannelSpec>) -> NodeSpec {
    NodeSpec {
        id: NodeId::new(id).unwrap(),
        site: SiteId::new("plant-1").unwrap(),
        bus: bus.into(),
        unit: 7,
        model: "TZ-SIM".into(),
        channels,
    }
}

/// Two nodes on two buses; nothing listens on the buses' addresses, as the control interface
/// only reads the fleet.
fn fleet() -> Arc<Fleet> {
    let spec = FleetSpec {
        name: "control-test".into(),
        seed: 3,
        buses: vec![
            BusSpec {
                name: "field".into(),
                kind: BusKind::ModbusTcp {
                    listen: "127.0.0.1:1502".parse().unwrap(),
                    per_node: false,
                },
            },
            BusSpec {
                name: "air".into(),
                kind: BusKind::Mqtt {
                    broker: "127.0.0.1:1883".parse().unwrap(),
                    publish_every_s: 10,
                },
            },
        ],
        nodes: vec![
            node(
                "n1",
                "field",
                vec![
                    constant(Quantity::AirTemperature, 21.5),
                    constant(Quantity::CombustibleGas, 12.5),
                ],
            ),
            // 30 %LEL trips the factory yellow set point (25 %LEL).
            node(
                "n2",
                "air",
                vec![
                    constant(Quantity::Pm25, 35.0),
                    constant(Quantity::CombustibleGas, 30.0),
                ],
            ),
        ],
        faults: vec![],
        base_dir: PathBuf::from("."),
    };
    Arc::new(Fleet::build(&spec, SimClock::new(EPOCH, 1.0), true).unwrap())
}

struct Api {
    base: String,
    http: reqwest::Client,
    _server: control::Server,
}

impl Api {
    async fn start(fleet: &Arc<Fleet>) -> Api {
        let server = control::serve(
            Control::new(Arc::clone(fleet)),
            "127.0.0.1:0".parse().unwrap(),
        )
        .await
        .unwrap();
        assert!(server.local_addr().ip().is_loopback());
        let http = reqwest::Client::builder()
            // A proxy from the environment must not see loopback requests.
            .no_proxy()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        Api {
            base: format!("http://{}", server.local_addr()),
            http,
            _server: server,
        }
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, response.json().await.unwrap())
    }

    async fn post_fault(&self, body: &str) -> (StatusCode, Value) {
        let response = self
            .http
            .post(format!("{}/faults", self.base))
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        let status = response.status();
        let is_json = response
            .headers()
            .get("content-type")
            .is_some_and(|v| v.to_str().unwrap().starts_with("application/json"));
        assert!(is_json, "POST /faults {body}: every answer is JSON");
        (status, response.json().await.unwrap())
    }

    async fn delete(&self, path: &str) -> (StatusCode, String) {
        let response = self
            .http
            .delete(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        (response.status(), response.text().await.unwrap())
    }

    /// `ch`'s quality flag on `node`.
    async fn quality(&self, node: &str, ch: usize) -> String {
        let (status, view) = self.get(&format!("/nodes/{node}")).await;
        assert_eq!(status, StatusCode::OK);
        view["channels"][ch]["quality"].as_str().unwrap().to_owned()
    }
}

fn error_of(body: &Value) -> &str {
    body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error message in {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_and_its_nodes_as_the_interface_reports_them() {
    let fleet = fleet();
    for t in (0..=10_000).step_by(1000) {
        fleet.step_to(t);
    }
    let api = Api::start(&fleet).await;

    let (status, summary) = api.get("/fleet").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(summary["nodes"], 2);
    assert_eq!(
        summary["buses"],
        json!([
            {"name": "field", "kind": "modbus_tcp", "address": "127.0.0.1:1502", "nodes": 1},
            {"name": "air", "kind": "mqtt", "address": "127.0.0.1:1883", "nodes": 1},
        ])
    );
    assert_eq!(summary["sim_time_ms"], 10_000);
    assert_eq!(summary["unix_ms"], EPOCH + 10_000);
    assert_eq!(summary["samples"], fleet.truth.sample_count());
    assert_eq!(summary["samples"], fleet.truth.samples().len() as u64);
    assert_eq!(
        (summary["served"].clone(), summary["published"].clone()),
        (json!(0), json!(0))
    );
    assert_eq!(summary["active_faults"], json!([]));
    // The HTTP answer is the in-process one, serialised.
    let in_process = serde_json::to_value(Control::new(Arc::clone(&fleet)).summary()).unwrap();
    assert_eq!(summary, in_process);

    let (status, n1) = api.get("/nodes/n1").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (n1["id"].clone(), n1["site"].clone(), n1["bus"].clone()),
        (json!("n1"), json!("plant-1"), json!("field"))
    );
    assert_eq!(n1["unit"], 7);
    assert_eq!(n1["firmware"], "1.0.0");
    let latest_seq = fleet
        .truth
        .samples()
        .iter()
        .filter(|s| &*s.node == "n1")
        .map(|s| s.seq)
        .max();
    assert_eq!(n1["seq"], json!(latest_seq));
    let channels = n1["channels"].as_array().unwrap();
    assert_eq!(channels.len(), 2);
    assert_eq!(channels[0]["quantity"], "air_temperature");
    assert!(
        (channels[0]["value"].as_f64().unwrap() - 21.5).abs() < 0.01,
        "{n1}"
    );
    assert_eq!(channels[1]["quantity"], "combustible_gas");
    assert!(
        (channels[1]["value"].as_f64().unwrap() - 12.5).abs() < 0.04,
        "{n1}"
    );
    for ch in channels {
        assert_eq!(
            (ch["quality"].as_str(), ch["alarm"].as_str()),
            (Some("N"), Some("normal")),
            "{ch}"
        );
    }
    assert_eq!(n1["highest_alarm"], "normal");

    let (_, n2) = api.get("/nodes/n2").await;
    assert_eq!(n2["channels"][0]["value"], 35.0);
    assert_eq!(n2["channels"][1]["alarm"], "yellow");
    assert_eq!(n2["highest_alarm"], "yellow");

    let (status, missing) = api.get("/nodes/ghost").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(error_of(&missing).contains("ghost"), "{missing}");
    let (status, nowhere) = api.get("/no/such/thing").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(error_of(&nowhere).contains("/fleet"), "{nowhere}");

    let response = api
        .http
        .get(format!("{}/truth/samples.csv", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    let csv = response.text().await.unwrap();
    assert_eq!(csv, fleet.truth.samples_csv());
    assert!(csv.starts_with("node,channel,seq,time_ms,value,quality\n"));
    assert_eq!(csv.lines().count() as u64, 1 + fleet.truth.sample_count());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fault_added_over_http_changes_what_the_node_does() {
    let fleet = fleet();
    fleet.step_to(5000);
    let api = Api::start(&fleet).await;

    let (status, entry) = api
        .post_fault(
            r#"{"target": {"node": "n1"}, "fault": {"kind": "sensor_fault", "channel": 1}}"#,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{entry}");
    assert_eq!(entry["target"], json!({"node": "n1"}));
    assert_eq!(
        entry["fault"],
        json!({"kind": "sensor_fault", "channel": 1})
    );
    assert_eq!(
        (
            entry["from_s"].clone(),
            entry["until_s"].clone(),
            entry["active"].clone()
        ),
        (json!(0.0), Value::Null, json!(true))
    );
    let id = entry["id"].as_u64().unwrap();

    // In force now, but the node only notices at its next sample.
    let (_, n1) = api.get("/nodes/n1").await;
    assert_eq!(
        n1["faults"],
        json!([{"kind": "sensor_fault", "channel": 1}])
    );
    assert_eq!(api.quality("n1", 1).await, "N");
    fleet.step_to(6000);
    let (_, n1) = api.get("/nodes/n1").await;
    assert_eq!(n1["channels"][1]["quality"], "D", "{n1}");
    assert_eq!(n1["channels"][1]["quality_text"], "bad: sensor fault");
    assert_eq!(
        n1["channels"][0]["quality"], "N",
        "the other channel is unaffected"
    );
    assert_eq!(
        n1["status_flags"].as_u64().unwrap() & 1,
        1,
        "the node's sensor-fault flag"
    );
    assert_eq!(
        api.quality("n2", 1).await,
        "N",
        "another node is unaffected"
    );

    let (_, faults) = api.get("/faults").await;
    assert_eq!(faults, json!([entry]));
    let (_, summary) = api.get("/fleet").await;
    assert_eq!(summary["faults"], 1);
    assert_eq!(summary["active_faults"][0]["id"], id);

    let (status, _) = api.delete(&format!("/faults/{id}")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = api.delete(&format!("/faults/{id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    fleet.step_to(7000);
    assert_eq!(
        api.quality("n1", 1).await,
        "N",
        "the sensor recovers once the fault is cleared"
    );

    // A windowed fault on a bus: a spike on channel 0 of every node of "air", from 8 s to 9 s.
    let (status, spike) = api
        .post_fault(
            r#"{"target": {"bus": "air"}, "fault": {"kind": "spike", "channel": 0, "value": 500.0},
                "from_s": 8, "until_s": 9}"#,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{spike}");
    assert_eq!(spike["active"], false, "not yet at 7 s");
    fleet.step_to(8000);
    let (_, n2) = api.get("/nodes/n2").await;
    assert_eq!(n2["channels"][0]["value"], 500.0, "{n2}");
    assert_eq!(
        n2["faults"],
        json!([{"kind": "spike", "channel": 0, "value": 500.0}])
    );
    fleet.step_to(9000);
    let (_, n2) = api.get("/nodes/n2").await;
    assert_eq!(
        n2["channels"][0]["value"], 35.0,
        "the window has passed: {n2}"
    );
    assert_eq!(n2["faults"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_a_400_that_says_what_was_wrong() {
    let fleet = fleet();
    fleet.step_to(1000);
    let api = Api::start(&fleet).await;

    let cases = [
        ("{not json", "invalid fault request"),
        ("", "empty request body"),
        (
            r#"{"target": {"node": "ghost"}, "fault": {"kind": "no_reply"}}"#,
            "no node \"ghost\"",
        ),
        (
            r#"{"target": {"bus": "nobus"}, "fault": {"kind": "no_reply"}}"#,
            "no bus \"nobus\"",
        ),
        (
            r#"{"target": {"host": "n1"}, "fault": {"kind": "no_reply"}}"#,
            "unknown variant `host`",
        ),
        (
            r#"{"target": {"node": "n1"}, "fault": {"kind": "melt_down"}}"#,
            "unknown variant `melt_down`",
        ),
        (
            r#"{"target": {"node": "n1"}, "fault": {"kind": "spike", "channel": 0}}"#,
            "missing field `value`",
        ),
        (
            r#"{"target": {"node": "n1"}, "fault": {"kind": "sensor_fault", "channel": 7}}"#,
            "channel 7 does not exist on node n1",
        ),
        (
            r#"{"target": {"node": "n1"}, "fault": {"kind": "no_reply"}, "from_s": 10, "until_s": 5}"#,
            "until_s (5) must be later than from_s (10)",
        ),
        (
            r#"{"target": {"node": "n1"}, "fault": {"kind": "no_reply"}, "from_s": -1}"#,
            "from_s must be a finite number",
        ),
        (
            r#"{"target": {"node": "n1"}, "fault": {"kind": "no_reply"}, "colour": "red"}"#,
            "unknown field `colour`",
        ),
        (
            r#"{"fault": {"kind": "no_reply"}}"#,
            "missing field `target`",
        ),
    ];
    for (body, expected) in cases {
        let (status, answer) = api.post_fault(body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body} → {answer}");
        assert!(
            error_of(&answer).contains(expected),
            "{body} → {answer}, expected {expected:?}"
        );
    }

    let (status, body) = api.delete("/faults/abc").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let body: Value = serde_json::from_str(&body).unwrap();
    assert!(
        error_of(&body).contains("\"abc\" is not a number"),
        "{body}"
    );
    let (status, body) = api.delete("/faults/424242").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body.contains("424242"), "{body}");

    // Nothing was added, and the server still answers.
    let (status, faults) = api.get("/faults").await;
    assert_eq!((status, faults), (StatusCode::OK, json!([])));
    assert_eq!(api.quality("n1", 0).await, "N");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_interface_binds_to_loopback_only() {
    let fleet = fleet();
    for addr in ["0.0.0.0:0", "192.0.2.1:0", "[::]:0"] {
        let addr: SocketAddr = addr.parse().unwrap();
        let error = control::serve(Control::new(Arc::clone(&fleet)), addr)
            .await
            .err()
            .unwrap_or_else(|| panic!("{addr} was accepted"));
        assert_eq!(error.kind(), std::io::ErrorKind::InvalidInput);
        assert!(error.to_string().contains("loopback"), "{error}");
    }

    let server = control::serve(
        Control::new(Arc::clone(&fleet)),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let addr = server.local_addr();
    assert_eq!(addr.ip().to_string(), "127.0.0.1");
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let answer = http
        .get(format!("http://{addr}/fleet"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    drop(answer);
    server.shutdown().await.unwrap();
    // Gone once shut down: nothing accepts on its port any more.
    let fresh = reqwest::Client::builder().no_proxy().build().unwrap();
    assert!(
        fresh
            .get(format!("http://{addr}/fleet"))
            .send()
            .await
            .is_err()
    );
}
