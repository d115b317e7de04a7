//! Firmware campaigns through the real gateway API (reqwest against a gateway started from
//! configuration text) over 100 simulated Modbus TCP nodes running the firmware's real update
//! receiver, checked against the simulator's ground truth: the version each node actually
//! runs, and whether it was ever sent an update request.
//!
//! - 5 % of the nodes (5, chosen by seed, none a canary) are injected to fail — a damaged
//!   image refused at the finish, a power cut mid-transfer, a rollback after a failed trial
//!   boot. A campaign with `max_failures = 3` halts at the 4th failure, not later; no transfer
//!   starts after the halt; every node's reported state is its real state; the audit trail
//!   has every step. Viewers and operators are refused (403); bad requests get 400/404/409,
//!   are counted, and change nothing.
//! - The same campaign with no injected failure, halted by an engineer in its second wave
//!   and resumed, completes on all 100 nodes; a restarted gateway shows it as it was.
//! - A campaign cut by a gateway stop is shown halted after the restart, its nodes in flight
//!   back to pending, and completes when resumed.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};
use tianzhong_gateway::firmware_cli::{KeyKind, encode_key};
use tianzhong_gateway::gateway::Gateway;
use tianzhong_protocol::image::signature;
use tianzhong_protocol::registers::profile::FirmwareVersion;
use tianzhong_simulator::fault::{Fault, Target, update_failures};
use tianzhong_simulator::update::{SIM_SIGNING_SECRET, sim_image};
use tianzhong_tests::api::{Api, free_addr};
use tianzhong_tests::fleet::{FleetBuilder, GatewaySettings, SimFleet};
use tianzhong_tests::services::TempDir;

/// The two tests run one after the other: each is 100 nodes and a gateway on a 2-core machine.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const NODES: usize = 100;
const CANARY: usize = 5;
const MODEL: &str = "TZ-E2E";
const SEED: u64 = 0x7A_2025;

fn version(minor: u8) -> FirmwareVersion {
    FirmwareVersion {
        major: 1,
        minor,
        patch: 0,
    }
}

struct Bench {
    fleet: SimFleet,
    gateway: Gateway,
    api: Api,
    toml: String,
    ids: Vec<String>,
    eng: String,
    op: String,
    view: String,
    dir: TempDir,
}

async fn bench(failures: f64) -> (Bench, HashMap<String, Fault>) {
    tianzhong_tests::gateway::init_logs();
    let dir = TempDir::new("tz-campaign").unwrap();
    let mut builder = FleetBuilder::new().unwrap();
    let ids = builder.modbus_tcp("fw", NODES);
    let injected = update_failures(
        SEED,
        &ids,
        failures,
        &[
            Fault::UpdateDamaged,
            Fault::UpdatePowerCut,
            Fault::UpdateRollback,
        ],
        &ids[..CANARY],
    );
    let mut faults = HashMap::new();
    for f in injected {
        let Target::Node(n) = &f.target else {
            unreachable!("update failures target nodes")
        };
        faults.insert(n.clone(), f.fault.clone());
        builder.fault(f);
    }
    let fleet = builder.start().await.unwrap();
    let key = dir.path().join("sim-signing.key.pub");
    std::fs::write(
        &key,
        encode_key(KeyKind::Public, &signature::public_key(&SIM_SIGNING_SECRET)),
    )
    .unwrap();
    let mut settings = GatewaySettings::new(&dir.path().join("data"));
    // Polls every 5 s: the campaign, not the polling, is under test, and the machine is small.
    settings.poll_interval_s = 5.0;
    let http = free_addr();
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
    let admin_password = gateway.first_run_secret().unwrap().to_owned();
    let api = Api::new(http);
    let admin = api.login("admin", &admin_password).await;
    for (name, role) in [("eng", "engineer"), ("op", "operator"), ("view", "viewer")] {
        let (status, v) = api
            .call(
                "POST",
                "/api/users",
                &admin,
                Some(json!({"name": name, "role": role, "password": format!("{name}-long-password")})),
            )
            .await;
        assert_eq!(status, 201, "{v}");
    }
    let eng = api.login("eng", "eng-long-password").await;
    let op = api.login("op", "op-long-password").await;
    let view = api.login("view", "view-long-password").await;
    (
        Bench {
            fleet,
            gateway,
            api,
            toml,
            ids,
            eng,
            op,
            view,
            dir,
        },
        faults,
    )
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The new image: 1.1.0, security counter 2, 21 chunks of 128 bytes.
fn new_image() -> Vec<u8> {
    sim_image(MODEL, version(1), 2, 2000)
}

fn campaign_body(ids: &[String], image: &[u8]) -> Value {
    json!({
        "image_base64": b64(image),
        "nodes": ids,
        "canary": CANARY,
        "waves": [10, 25, "rest"],
        "max_failures": 3,
        "tcp_parallel": 8,
        "verify_timeout_s": 20,
        "reason": "issue 8: fleet campaign drill",
    })
}

/// Each node's state as the API reports it, against what the simulator's node really runs.
fn check_against_truth(
    b: &Bench,
    campaign: &Value,
    faults: &HashMap<String, Fault>,
) -> HashMap<String, String> {
    let mut states = HashMap::new();
    for n in campaign["nodes"].as_array().unwrap() {
        let id = n["node"].as_str().unwrap();
        let state = n["state"].as_str().unwrap();
        let i = b.fleet.fleet.index_of(id).unwrap();
        let node = b.fleet.fleet.node(i);
        let running = node.running_firmware();
        match state {
            "updated" => {
                assert_eq!(running, version(1), "{id} reported updated: {n}");
                assert_eq!(n["version"], "1.1.0", "{n}");
                assert!(!faults.contains_key(id), "{id} was injected to fail: {n}");
            }
            "failed" => {
                assert_eq!(running, version(0), "{id} failed, so runs 1.0.0: {n}");
                let reason = n["reason"].as_str().unwrap();
                let expected = match faults.get(id) {
                    Some(Fault::UpdateDamaged) => "SHA-256 differs from the trailer's",
                    Some(Fault::UpdatePowerCut) => "chunk 8",
                    Some(Fault::UpdateRollback) => "rolled back: the node came back on 1.0.0",
                    other => panic!("{id} failed without an injected fault ({other:?}): {n}"),
                };
                assert!(reason.contains(expected), "{id}: {reason}");
            }
            "skipped" => {
                assert_eq!(running, version(0), "{n}");
                assert!(
                    !node.update_touched(),
                    "{id} is skipped but was sent an update request"
                );
                assert!(n["started_ms"].is_null(), "{n}");
            }
            other => panic!("{id} is left {other} in a settled campaign: {n}"),
        }
        states.insert(id.to_owned(), state.to_owned());
    }
    assert_eq!(states.len(), NODES);
    states
}

/// The most nodes between transfer start and end at once (all on one Modbus TCP bus here).
fn max_in_flight(campaign: &Value) -> usize {
    let mut edges: Vec<(i64, i32)> = Vec::new();
    for n in campaign["nodes"].as_array().unwrap() {
        if let (Some(a), Some(b)) = (n["started_ms"].as_i64(), n["finished_ms"].as_i64()) {
            // An end sorts before a start at the same millisecond: the slot was free again.
            edges.push((a, 1));
            edges.push((b, -1));
        }
    }
    edges.sort();
    let (mut now, mut most) = (0i32, 0i32);
    for (_, d) in edges {
        now += d;
        most = most.max(now);
    }
    most as usize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_with_5_percent_failures_halts_at_its_threshold() {
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    let (b, faults) = bench(0.05).await;
    assert_eq!(faults.len(), 5, "5 % of 100 nodes");
    let image = new_image();
    let body = campaign_body(&b.ids, &image);

    // Viewers and operators may not see or start campaigns.
    for token in [&b.view, &b.op] {
        let (status, v) = b
            .api
            .call("POST", "/api/campaigns", token, Some(body.clone()))
            .await;
        assert_eq!(status, 403, "{v}");
        let (status, _) = b.api.call("GET", "/api/campaigns", token, None).await;
        assert_eq!(status, 403);
    }

    // Bad requests: refused with what is wrong, counted, and nothing starts.
    let mut damaged = image.clone();
    damaged[700] ^= 1;
    let mut bad: Vec<(Value, u16, &str)> = Vec::new();
    let with = |k: &str, v: Value| {
        let mut x = body.clone();
        x[k] = v;
        x
    };
    bad.push((
        with("image_base64", json!("not base64!")),
        400,
        "not base64",
    ));
    bad.push((
        with("image_base64", json!(b64(&damaged))),
        400,
        "altered or damaged",
    ));
    bad.push((
        with(
            "image_base64",
            json!(b64(&sim_image("TZ-OTHER", version(1), 2, 500))),
        ),
        400,
        "is a TZ-E2E; the image is built for TZ-OTHER",
    ));
    bad.push((
        with("image_base64", json!(b64(&image[..300]))),
        400,
        "not a signed image",
    ));
    bad.push((
        with("nodes", json!(["fw-000", "no-such-node"])),
        404,
        "no Modbus node `no-such-node`",
    ));
    bad.push((
        with("nodes", json!(["fw-000", "fw-000"])),
        400,
        "listed twice",
    ));
    bad.push((with("waves", json!([10, 25])), 400, "cover 40 of 100"));
    bad.push((
        with("waves", json!(["rest", 10])),
        400,
        "must be the last wave",
    ));
    bad.push((with("canary", json!(0)), 400, "canary"));
    let mut no_threshold = body.clone();
    no_threshold.as_object_mut().unwrap().remove("max_failures");
    bad.push((no_threshold, 400, "halt threshold"));
    bad.push((json!({"image_base64": "", "surprise": 1}), 400, ""));
    for (req, want, says) in &bad {
        let (status, v) = b
            .api
            .call("POST", "/api/campaigns", &b.eng, Some(req.clone()))
            .await;
        assert_eq!(status, *want, "{v}");
        assert!(v["error"].as_str().unwrap().contains(says), "{v}");
    }
    let (status, v) = b.api.call("GET", "/api/campaigns", &b.eng, None).await;
    assert_eq!(status, 200);
    assert_eq!(v["campaigns"], json!([]), "no campaign from bad requests");
    assert_eq!(v["refused"]["bad_request"], 10, "{v}");
    assert_eq!(v["refused"]["not_found"], 1, "{v}");
    let refused = |reason: &str| {
        tianzhong_tests::gateway::metric(
            &b.gateway,
            "tianzhong_campaign_requests_refused_total",
            &[("reason", reason)],
        )
    };
    assert_eq!((refused("bad_request"), refused("not_found")), (10.0, 1.0));
    for i in 0..NODES {
        assert!(
            !b.fleet.fleet.node(i).update_touched(),
            "a refused campaign sent nothing"
        );
    }

    // The campaign.
    let (status, created) = b
        .api
        .call("POST", "/api/campaigns", &b.eng, Some(body.clone()))
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_u64().unwrap();
    assert_eq!(created["waves"], json!([5, 10, 25, 60]));
    assert_eq!(created["image"]["version"], "1.1.0");
    // The same nodes again while it runs: 409.
    let (status, v) = b
        .api
        .call("POST", "/api/campaigns", &b.eng, Some(body.clone()))
        .await;
    assert_eq!(status, 409, "{v}");
    let (status, _) = b.api.call("GET", "/api/campaigns/999", &b.eng, None).await;
    assert_eq!(status, 404);
    let (status, _) = b.api.call("GET", "/api/campaigns/x", &b.eng, None).await;
    assert_eq!(status, 400);

    let run = Instant::now();
    let c = b
        .api
        .wait_settled(id, &b.eng, Duration::from_secs(100))
        .await;
    let took = run.elapsed();
    assert_eq!(c["status"], "halted", "{}", c["halt_reason"]);
    assert_eq!(
        c["halt_reason"],
        "4 nodes failed, more than max_failures = 3"
    );
    let states = check_against_truth(&b, &c, &faults);
    let count = |s: &str| states.values().filter(|v| *v == s).count();
    let (updated, failed, skipped) = (count("updated"), count("failed"), count("skipped"));
    assert!(failed >= 4, "{failed}");
    assert!(skipped > 0, "the halt skipped the rest");
    assert_eq!(updated + failed + skipped, NODES);
    // Every canary updated; every node that failed was injected to.
    for n in &b.ids[..CANARY] {
        assert_eq!(states[n], "updated");
    }
    for (kind, n) in [
        ("updated", updated),
        ("failed", failed),
        ("skipped", skipped),
    ] {
        let counted = tianzhong_tests::gateway::metric(
            &b.gateway,
            "tianzhong_campaign_nodes_total",
            &[("kind", kind)],
        );
        assert_eq!(counted, n as f64, "{kind}");
    }
    assert_eq!(refused("conflict"), 1.0, "the duplicate campaign");
    let most = max_in_flight(&c);
    assert!(
        (2..=8).contains(&most),
        "transfers at once: {most}, tcp_parallel 8"
    );
    let halted_ms = c["halted_ms"].as_i64().unwrap();
    for n in c["nodes"].as_array().unwrap() {
        if let Some(t) = n["started_ms"].as_i64() {
            assert!(t <= halted_ms, "{} started after the halt", n["node"]);
        }
    }

    // The audit trail: who and when for every step, the halt right after the 4th failure and
    // no transfer started after it.
    let (status, audit) = b
        .api
        .call("GET", &format!("/api/campaigns/{id}/audit"), &b.eng, None)
        .await;
    assert_eq!(status, 200);
    let rows = audit["audit"].as_array().unwrap();
    assert_eq!(rows[0]["action"], "campaign.create");
    assert_eq!(rows[0]["user"], "eng");
    assert!(
        rows.iter()
            .all(|r| r["at"].as_i64().unwrap() > 0 && r["user"] == "eng")
    );
    let halt = rows
        .iter()
        .position(|r| r["action"] == "campaign.halt")
        .expect("a halt in the audit");
    let failed_before = rows[..halt]
        .iter()
        .filter(|r| {
            r["action"] == "campaign.node" && r["new"].as_str().unwrap().starts_with("failed")
        })
        .count();
    assert_eq!(
        failed_before, 4,
        "the campaign halted at the 4th failure, not later"
    );
    assert!(
        !rows[halt..].iter().any(|r| r["new"] == "transferring"),
        "a transfer started after the halt"
    );
    assert!(
        rows[halt + 1..]
            .iter()
            .all(|r| r["action"] == "campaign.node"),
        "no wave started after the halt"
    );
    let waves_started: Vec<&str> = rows
        .iter()
        .filter(|r| r["action"] == "campaign.wave")
        .map(|r| r["target"].as_str().unwrap())
        .collect();
    assert_eq!(waves_started[0], format!("campaign/{id}/wave/0"));
    for n in c["nodes"].as_array().unwrap() {
        let id_n = n["node"].as_str().unwrap();
        let trail: Vec<&str> = rows
            .iter()
            .filter(|r| r["target"] == format!("campaign/{id}/node/{id_n}"))
            .map(|r| r["new"].as_str().unwrap())
            .collect();
        match n["state"].as_str().unwrap() {
            "updated" => assert_eq!(
                trail,
                ["transferring", "staged", "verifying", "updated: 1.1.0"],
                "{id_n}"
            ),
            "failed" => {
                assert_eq!(trail[0], "transferring", "{id_n}");
                assert!(
                    trail.last().unwrap().starts_with("failed: "),
                    "{id_n}: {trail:?}"
                );
            }
            _ => assert_eq!(trail.len(), 1, "{id_n}: {trail:?}"),
        }
    }
    // A halted campaign is not halted twice.
    let (status, _) = b
        .api
        .call(
            "POST",
            &format!("/api/campaigns/{id}/halt"),
            &b.eng,
            Some(json!({"reason": "again"})),
        )
        .await;
    assert_eq!(status, 409);
    // Resuming under the same threshold would halt at once: refused with why.
    let (status, v) = b
        .api
        .call(
            "POST",
            &format!("/api/campaigns/{id}/resume"),
            &b.eng,
            Some(json!({"reason": "go on"})),
        )
        .await;
    assert_eq!(status, 409, "{v}");
    assert!(v["error"].as_str().unwrap().contains("already pass"), "{v}");
    let reasons: Vec<String> = c["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["state"] == "failed")
        .map(|n| {
            format!(
                "{} ({:?}): {}",
                n["node"],
                faults[n["node"].as_str().unwrap()],
                n["reason"]
            )
        })
        .collect();
    println!("failed nodes:\n  {}", reasons.join("\n  "));
    println!(
        "campaign over {NODES} nodes, 5 injected failures: {updated} updated, {failed} failed, {skipped} skipped; at most {most} transfers at once; halted after {:.1} s; {} audit rows; test {:.1} s",
        took.as_secs_f64(),
        rows.len(),
        started.elapsed().as_secs_f64()
    );
    b.gateway.shutdown(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_failures_a_halted_and_resumed_campaign_updates_every_node() {
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    let (b, faults) = bench(0.0).await;
    assert!(faults.is_empty());
    let image = new_image();
    let (status, created) = b
        .api
        .call(
            "POST",
            "/api/campaigns",
            &b.eng,
            Some(campaign_body(&b.ids, &image)),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_u64().unwrap();
    let path = format!("/api/campaigns/{id}");

    // An engineer halts it once the canaries are through (an operator may not).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, v) = b.api.call("GET", &path, &b.eng, None).await;
        if v["counts"]["updated"].as_u64().unwrap() >= CANARY as u64 + 2 {
            break;
        }
        assert!(Instant::now() < deadline, "{}", v["counts"]);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, _) = b
        .api
        .call(
            "POST",
            &format!("{path}/halt"),
            &b.op,
            Some(json!({"reason": "no"})),
        )
        .await;
    assert_eq!(status, 403);
    let (status, v) = b
        .api
        .call(
            "POST",
            &format!("{path}/halt"),
            &b.eng,
            Some(json!({"reason": "shift change"})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let halted = b
        .api
        .wait_settled(id, &b.eng, Duration::from_secs(60))
        .await;
    assert_eq!(halted["status"], "halted");
    assert_eq!(halted["halt_reason"], "halted by eng: shift change");
    let states = check_against_truth(&b, &halted, &faults);
    let skipped = states.values().filter(|s| *s == "skipped").count();
    assert!(skipped > 0, "{}", halted["counts"]);

    let (status, v) = b
        .api
        .call(
            "POST",
            &format!("{path}/resume"),
            &b.eng,
            Some(json!({"reason": "shift back"})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let run = Instant::now();
    let done = b
        .api
        .wait_settled(id, &b.eng, Duration::from_secs(100))
        .await;
    assert_eq!(done["status"], "completed", "{}", done["counts"]);
    let states = check_against_truth(&b, &done, &faults);
    assert!(
        states.values().all(|s| s == "updated"),
        "{}",
        done["counts"]
    );
    assert_eq!(done["counts"]["updated"], NODES);
    let most = max_in_flight(&done);
    assert!(
        (2..=8).contains(&most),
        "transfers at once: {most}, tcp_parallel 8"
    );
    let (_, audit) = b
        .api
        .call("GET", &format!("{path}/audit"), &b.eng, None)
        .await;
    let actions: Vec<&str> = audit["audit"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .filter(|a| *a != "campaign.node")
        .collect();
    assert_eq!(actions.first(), Some(&"campaign.create"));
    assert!(actions.contains(&"campaign.halt") && actions.contains(&"campaign.resume"));
    assert_eq!(actions.last(), Some(&"campaign.complete"));
    assert!(actions.iter().filter(|a| **a == "campaign.wave").count() >= 4);

    // A restarted gateway shows the campaign as it was.
    let Bench {
        fleet,
        gateway,
        api,
        toml,
        eng,
        dir,
        ..
    } = b;
    gateway.shutdown(Duration::from_secs(10)).await;
    let gateway = tianzhong_tests::gateway::start(&toml, &dir.path().join("gw.toml"))
        .await
        .unwrap();
    let (status, again) = api.call("GET", &path, &eng, None).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["status"], "completed");
    assert_eq!(again["nodes"], done["nodes"]);
    println!(
        "campaign over {NODES} nodes without failures: at most {most} transfers at once; resumed run {:.1} s; test {:.1} s",
        run.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    gateway.shutdown(Duration::from_secs(10)).await;
    drop(fleet);
}

/// A gateway stopped in the middle of a campaign: started again on the same data directory,
/// it shows the campaign halted by the stop, the nodes that were in flight back to pending
/// and nothing in flight; resumed, it updates every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_cut_by_a_gateway_stop_is_halted_and_resumes_after_the_restart() {
    let _serial = SERIAL.lock().await;
    let (b, _) = bench(0.0).await;
    let image = new_image();
    let (status, created) = b
        .api
        .call(
            "POST",
            "/api/campaigns",
            &b.eng,
            Some(campaign_body(&b.ids, &image)),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let path = format!("/api/campaigns/{}", created["id"]);
    // Stop once some nodes are through and some are in flight.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, v) = b.api.call("GET", &path, &b.eng, None).await;
        if v["counts"]["updated"].as_u64().unwrap() >= 20
            && v["counts"]["in_flight"].as_u64().unwrap() > 0
        {
            break;
        }
        assert!(Instant::now() < deadline, "{}", v["counts"]);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let Bench {
        fleet,
        gateway,
        api,
        toml,
        eng,
        dir,
        ..
    } = b;
    gateway.shutdown(Duration::from_secs(10)).await;
    let gateway = tianzhong_tests::gateway::start(&toml, &dir.path().join("gw.toml"))
        .await
        .unwrap();
    let (status, after) = api.call("GET", &path, &eng, None).await;
    assert_eq!(status, 200, "{after}");
    assert_eq!(after["status"], "halted");
    assert_eq!(
        after["halt_reason"],
        "the gateway stopped while the campaign ran; resume it to go on"
    );
    assert_eq!(after["counts"]["in_flight"], 0, "{}", after["counts"]);
    let updated_before = after["counts"]["updated"].as_u64().unwrap();
    assert!(updated_before >= 20);
    // Whatever the API says updated, the node runs.
    for n in after["nodes"].as_array().unwrap() {
        if n["state"] == "updated" {
            let i = fleet.fleet.index_of(n["node"].as_str().unwrap()).unwrap();
            assert_eq!(fleet.fleet.node(i).running_firmware(), version(1), "{n}");
        }
    }
    let (status, v) = api
        .call(
            "POST",
            &format!("{path}/resume"),
            &eng,
            Some(json!({"reason": "after the restart"})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let done = api
        .wait_settled(
            created["id"].as_u64().unwrap(),
            &eng,
            Duration::from_secs(100),
        )
        .await;
    assert_eq!(done["status"], "completed", "{}", done["counts"]);
    assert_eq!(done["counts"]["updated"], NODES);
    for i in 0..NODES {
        assert_eq!(fleet.fleet.node(i).running_firmware(), version(1));
    }
    let (_, audit) = api.call("GET", &format!("{path}/audit"), &eng, None).await;
    let rows = audit["audit"].as_array().unwrap();
    let halt = rows
        .iter()
        .find(|r| r["action"] == "campaign.halt")
        .expect("the restart's halt is audited");
    assert_eq!(halt["reason"], after["halt_reason"]);
    assert_eq!(halt["user"], "system", "no user halted it");
    let back_to_pending = rows
        .iter()
        .filter(|r| {
            r["action"] == "campaign.node"
                && r["new"] == "pending"
                && !r["old"].as_str().unwrap().starts_with("skipped")
        })
        .count();
    assert!(
        (1..=8).contains(&back_to_pending),
        "nodes in flight at the stop (at most tcp_parallel) went back to pending: {back_to_pending}"
    );
    println!(
        "campaign cut by a stop after {updated_before} nodes; {back_to_pending} in flight went back to pending; all {NODES} updated after the resume"
    );
    gateway.shutdown(Duration::from_secs(10)).await;
    drop(fleet);
}
