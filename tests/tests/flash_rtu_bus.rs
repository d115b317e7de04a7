//! A firmware campaign over a Modbus RTU bus that the gateway keeps polling: a running gateway
//! polls five simulated nodes on one paced pseudo-terminal line at 38400 baud every 0.5 s,
//! and a campaign (through the gateway's API) updates two of them. The bus task carries the
//! transfer between its polls (`tianzhong_gateway::sources::modbus::lend`).
//!
//! Checked against the simulator's ground truth:
//!
//! - every targeted node ends updated, running the image's version, as the API reports;
//! - while the images go over, each of the other three nodes keeps being polled: the reads it
//!   served (the simulator's log) are never more than [`MAX_GAP_MS`] apart — 3 poll
//!   periods; the design bound is one period plus one lent request (some 70 ms here);
//! - none of their readings is lost: every sample they served in the window reached the
//!   gateway's sink (an InfluxDB stand-in);
//! - `tianzhong flash` opening the bus's port beside the gateway is refused as busy, and with
//!   `--user` (`tianzhong_gateway::flash_via`) it updates a third node through the gateway.

use std::collections::HashSet;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use serde_json::json;
use std::ops::ControlFlow;

use tianzhong_gateway::firmware_cli::{KeyKind, encode_key};
use tianzhong_gateway::flash::{FlashError, flash};
use tianzhong_gateway::flash_via::flash_through_gateway;
use tianzhong_gateway::probe::ProbeTarget;
use tianzhong_protocol::image::signature;
use tianzhong_protocol::registers::profile::FirmwareVersion;
use tianzhong_simulator::update::{SIM_SIGNING_SECRET, sim_image};
use tianzhong_tests::api::{Api, free_addr};
use tianzhong_tests::fleet::{FleetBuilder, GatewaySettings};
use tianzhong_tests::gateway::wait_until;
use tianzhong_tests::services::TempDir;
use tianzhong_tests::stub::{HttpStub, accepted_points, readings_of};

const BUS: &str = "line";
const BAUD: u32 = 38_400;
const NODES: usize = 5;
const MODEL: &str = "TZ-E2E";
const POLL_MS: u64 = 500;
/// Longest time allowed between two reads of a node that is not being updated.
const MAX_GAP_MS: u64 = 3 * POLL_MS;
/// Image payload: 8 KiB, 37 stream writes of 224 bytes, some 2.6 s of the line at 38400 baud.
const PAYLOAD: usize = 8 * 1024;

/// The longest stretch within `[from, to]` (simulated ms) without a read served, given the
/// sorted times of the reads served.
fn longest_gap(times: &[u64], from: u64, to: u64) -> u64 {
    let mut last = from;
    let mut gap = 0;
    for &t in times.iter().filter(|&&t| t >= from && t <= to) {
        gap = gap.max(t - last);
        last = t;
    }
    gap.max(to - last)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_over_a_polled_rtu_bus_keeps_the_other_nodes_polled() {
    tianzhong_tests::gateway::init_logs();
    let started = Instant::now();
    let dir = TempDir::new("tz-rtu-campaign").unwrap();
    let mut builder = FleetBuilder::new().unwrap();
    let ids = builder.modbus_rtu_at(BUS, NODES, BAUD, true);
    let fleet = builder.start().await.unwrap();
    let sink = HttpStub::start().await.unwrap();

    let key = dir.path().join("sim-signing.key.pub");
    std::fs::write(
        &key,
        encode_key(KeyKind::Public, &signature::public_key(&SIM_SIGNING_SECRET)),
    )
    .unwrap();
    let mut settings = GatewaySettings::new(&dir.path().join("data"));
    settings.poll_interval_s = POLL_MS as f64 / 1000.0;
    // A poll is answered within some 40 ms at 38400 baud, but the simulator answers nothing
    // while a node checks and stages an image (some 0.4 s in a debug build, more on a loaded
    // machine): a poll given up meanwhile would have its reading served by the simulator and
    // dropped as a late reply, a loss that is the test's, not the gateway's. So 1 s.
    settings.timeout_ms = 1000;
    settings.retries = 1;
    settings.influxdb = Some(sink.url());
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
    let metrics = std::sync::Arc::clone(gateway.metrics());
    let api = Api::new(http);
    let admin_password = gateway.first_run_secret().unwrap().to_owned();
    let admin = api.login("admin", &admin_password).await;
    let (status, v) = api
        .call(
            "POST",
            "/api/users",
            &admin,
            Some(json!({"name": "eng", "role": "engineer", "password": "eng-long-password"})),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    let eng = api.login("eng", "eng-long-password").await;
    let polled = wait_until(Duration::from_secs(15), || {
        metrics
            .devices
            .rows
            .iter()
            .all(|r| r.counters.ok.load(Relaxed) > 0)
    })
    .await;
    assert!(polled, "the gateway did not reach every node on the bus");

    // The simulator builds a node's update flash (a signed factory image) on the first
    // file-record request the node sees, and reads nothing from the line meanwhile; a real
    // node has it from the factory. The first stream write, a broadcast, reaches every node at
    // once: that cost would show as a poll gap that is the simulator's, not the gateway's. So
    // each node is asked for its update status once, in-process, before the campaign.
    let warm = Instant::now();
    for id in &ids {
        let mut node = fleet.fleet.node(fleet.fleet.index_of(id).unwrap());
        let mut out = [0u8; 256];
        let status = [0x14, 0x07, 0x06, 0xF0, 0x03, 0, 0, 0, 8];
        let now = fleet.fleet.clock.now();
        node.modbus(&status, &mut out, now);
    }
    let warm = warm.elapsed();

    let targets = [ids[1].clone(), ids[3].clone()];
    let others: Vec<String> = ids
        .iter()
        .filter(|i| !targets.contains(i))
        .cloned()
        .collect();
    let new = FirmwareVersion {
        major: 1,
        minor: 1,
        patch: 0,
    };
    let image = sim_image(MODEL, new, 2, PAYLOAD);
    let body = json!({
        "image_base64": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &image),
        "nodes": targets,
        "canary": 1,
        "waves": ["rest"],
        "max_failures": 0,
        "verify_timeout_s": 20,
        "reason": "RTU campaign while the bus is polled",
    });
    let (status, created) = api.call("POST", "/api/campaigns", &eng, Some(body)).await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_u64().unwrap();

    // Follow the campaign: when each target's transfer ends (it leaves `transferring`).
    let mut transfer_end: Vec<Option<i64>> = vec![None; targets.len()];
    let deadline = Instant::now() + Duration::from_secs(40);
    let done = loop {
        let (status, v) = api
            .call("GET", &format!("/api/campaigns/{id}"), &eng, None)
            .await;
        assert_eq!(status, 200, "{v}");
        let now = tianzhong_tests::fleet::unix_ms() as i64;
        for (i, t) in targets.iter().enumerate() {
            let n = v["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|n| n["node"] == t.as_str())
                .unwrap();
            if transfer_end[i].is_none()
                && n["started_ms"].is_i64()
                && n["state"] != "transferring"
                && n["state"] != "pending"
            {
                transfer_end[i] = Some(now);
            }
        }
        if v["status"] != "running" && v["active"] == false {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "campaign still running after 40 s: {}",
            v["counts"]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(done["status"], "completed", "{done}");

    // Every target updated, as the API says and as the node really runs.
    let mut window = (i64::MAX, i64::MIN);
    let mut transfers = Vec::new();
    for (i, t) in targets.iter().enumerate() {
        let n = done["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["node"] == t.as_str())
            .unwrap();
        assert_eq!(n["state"], "updated", "{n}");
        assert_eq!(n["version"], "1.1.0", "{n}");
        let node = fleet.fleet.node(fleet.fleet.index_of(t).unwrap());
        assert_eq!(node.running_firmware(), new, "{t} runs the image");
        let start = n["started_ms"].as_i64().unwrap();
        let end = transfer_end[i].expect("seen out of `transferring`");
        transfers.push((end - start) as f64 / 1000.0);
        window = (window.0.min(start), window.1.max(end));
    }
    for o in &others {
        let node = fleet.fleet.node(fleet.fleet.index_of(o).unwrap());
        assert_eq!(
            node.running_firmware().minor,
            0,
            "{o} was not targeted and runs its first image"
        );
    }

    // The other nodes' reads while the images went over (simulated ms: the clock runs at real
    // speed from `epoch_ms`).
    let from = (window.0 as u64).saturating_sub(fleet.epoch_ms);
    let to = (window.1 as u64).saturating_sub(fleet.epoch_ms);
    assert!(
        to > from + 2 * POLL_MS,
        "the transfers took {transfers:?} s: too short to say anything about polling"
    );
    let served = fleet.fleet.truth.served();
    let mut gaps = Vec::new();
    for o in &others {
        let mut times: Vec<u64> = served
            .iter()
            .filter(|d| &*d.node == o.as_str())
            .map(|d| d.time_ms)
            .collect();
        times.sort_unstable();
        let gap = longest_gap(&times, from, to);
        gaps.push(gap);
        assert!(
            gap <= MAX_GAP_MS,
            "{o} went {gap} ms without a poll during the transfers ({from}..{to} ms)"
        );
    }

    // `tianzhong flash` against the running gateway: opening the bus's port itself is refused
    // as busy, naming the port; with `--user` the node goes through the gateway.
    let config =
        tianzhong_gateway::config::parse(&toml, &dir.path().join("gw.toml"), &|_| None).unwrap();
    let via_node = ids[4].clone();
    let target = ProbeTarget::from_config(&config, &via_node).unwrap();
    match flash(&target, &image, |_| ControlFlow::Continue(())).await {
        Err(e @ FlashError::PortBusy { .. }) => {
            assert!(e.to_string().contains("line.tty"), "{e}");
        }
        other => panic!("flashing past the gateway: {other:?}"),
    }
    let via_started = Instant::now();
    let mut seen = 0;
    let via = flash_through_gateway(
        http,
        "eng",
        "eng-long-password",
        &via_node,
        &image,
        |done, _| seen = seen.max(done),
    )
    .await
    .expect("the update through the gateway");
    let via_s = via_started.elapsed().as_secs_f64();
    assert_eq!(via.version, "1.1.0");
    assert!(seen > 0, "progress was reported");
    let running = fleet
        .fleet
        .node(fleet.fleet.index_of(&via_node).unwrap())
        .running_firmware();
    assert_eq!(running, new, "{via_node} runs the image");

    // None of their readings lost: every sample served before the stop reached the sink.
    let stop_at = fleet.now();
    let served_before: HashSet<(String, u32)> = served
        .iter()
        .filter(|d| others.iter().any(|o| o.as_str() == &*d.node) && d.time_ms + 1_000 < stop_at)
        .map(|d| (d.node.to_string(), d.seq))
        .collect();
    gateway.shutdown(Duration::from_secs(10)).await;
    let points = accepted_points(&sink.requests()).unwrap();
    let (readings, _) = readings_of(&points).unwrap();
    let arrived: HashSet<(String, u32)> = readings
        .keys()
        .map(|(node, _, seq)| (node.clone(), *seq))
        .collect();
    let lost: Vec<&(String, u32)> = served_before.difference(&arrived).collect();
    assert!(
        lost.is_empty(),
        "{} of {} readings served by the other nodes did not reach the sink: {:?}",
        lost.len(),
        served_before.len(),
        &lost[..lost.len().min(10)]
    );
    let timeouts: u64 = metrics
        .devices
        .rows
        .iter()
        .map(|r| r.counters.timeouts.load(Relaxed))
        .sum();
    let lent = tianzhong_tests::gateway::sum(
        &metrics.render(),
        "tianzhong_modbus_lent_requests_total",
        &[("bus", BUS), ("result", "ok")],
    );
    println!(
        "RTU campaign at {BAUD} baud over a bus polled every {POLL_MS} ms: transfers of {} bytes \
         took {transfers:?} s ({:.0} B/s on average); {lent} lent requests; {timeouts} poll \
         timeouts; the other nodes' \
         longest gaps between polls during the transfers: {gaps:?} ms (bound {MAX_GAP_MS}); \
         {} of their readings checked; simulator's update flash built in {warm:?}; one more \
         node through `tianzhong flash --user` in {via_s:.1} s; test {:.1} s",
        image.len(),
        image.len() as f64 * transfers.len() as f64 / transfers.iter().sum::<f64>(),
        served_before.len(),
        started.elapsed().as_secs_f64()
    );
    drop(fleet);
}
