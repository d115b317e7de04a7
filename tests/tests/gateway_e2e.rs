//! The gateway end to end: simulated fleets (Modbus TCP behind one listener, Modbus RTU on
//! pseudo-terminals, MQTT nodes publishing to mosquitto) → the gateway, in-process →
//! VictoriaMetrics (InfluxDB line protocol on `/api/v2/write`) and an upstream mosquitto,
//! checked against the simulator's ground truth; and how the gateway copes with a dead RTU node,
//! a broker restart and malformed input.
//!
//! Every test starts its own mosquitto and VictoriaMetrics on free loopback ports (see
//! `tianzhong_tests::services`); the tests take turns, so that timing-sensitive figures are
//! not measured while another test loads the machine.
//!
//! Needs `/usr/sbin/mosquitto` (Debian `mosquitto`) and `/usr/bin/victoria-metrics` (Debian
//! `victoria-metrics`). `RUST_LOG=tianzhong_gateway=info` shows the gateway's log.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use rumqttc::{AsyncClient, MqttOptions, QoS};
use tianzhong_gateway::metrics::Metrics;
use tianzhong_simulator::fault::{Fault, ScheduledFault, Target};
use tianzhong_tests::check::{self, Collector, Truth};
use tianzhong_tests::fleet::{FleetBuilder, GatewaySettings, SITE, SimFleet};
use tianzhong_tests::gateway::{self as gw, init_logs, wait_until};
use tianzhong_tests::services::{Mosquitto, TempDir, VictoriaMetrics};

/// The tests take turns (see the module documentation).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Longest wait for anything that should happen within seconds on an idle machine.
const PATIENCE: Duration = Duration::from_secs(45);

fn metric(metrics: &Metrics, name: &str, labels: &[(&str, &str)]) -> f64 {
    gw::sum(&metrics.render(), name, labels)
}

/// (node, seq) of every Modbus read served and MQTT message published within `[from, to]`
/// simulated ms (all of them without bounds).
fn deliveries(sim: &SimFleet, window: Option<(u64, u64)>) -> HashSet<(String, u32)> {
    let truth = &sim.fleet.truth;
    truth
        .served()
        .into_iter()
        .chain(truth.published())
        .filter(|d| window.is_none_or(|(from, to)| (from..=to).contains(&d.time_ms)))
        .map(|d| (d.node.to_string(), d.seq))
        .collect()
}

/// 230 nodes — 100 on two Modbus TCP listeners, 90 on three RTU lines, 40 on MQTT — for some
/// 15 s: every reading served or published in the window is in VictoriaMetrics and upstream,
/// exactly as sampled, once; nothing else is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_of_230_nodes_reaches_victoria_metrics_and_upstream_exactly() -> anyhow::Result<()>
{
    let _serial = SERIAL.lock().await;
    init_logs();
    let started = Instant::now();
    let vm = VictoriaMetrics::start()?;
    let field_broker = Mosquitto::start()?;
    let upstream_broker = Mosquitto::start()?;

    let mut fleet = FleetBuilder::new()?;
    fleet.modbus_tcp("tcp-a", 50);
    fleet.modbus_tcp("tcp-b", 50);
    for bus in ["rtu-1", "rtu-2", "rtu-3"] {
        fleet.modbus_rtu(bus, 30);
    }
    fleet.mqtt("mqtt", field_broker.addr(), 40);
    let mut sim = fleet.start().await?;
    let nodes = sim.spec.nodes.len();
    ensure!(nodes >= 200, "{nodes} nodes");
    ensure!(
        sim.wait_mqtt_connected(PATIENCE).await,
        "MQTT nodes did not connect"
    );

    const PREFIX: &str = "e2e/upstream";
    let collector = Collector::start(upstream_broker.addr(), &format!("{PREFIX}/#")).await?;
    let dir = TempDir::new("tz-e2e-gw")?;
    let settings = GatewaySettings {
        mqtt_source: Some(field_broker.addr()),
        influxdb: Some(vm.url()),
        upstream: Some((upstream_broker.addr(), PREFIX.to_owned())),
        ..GatewaySettings::new(dir.path())
    };
    let toml = sim.gateway_toml(&settings);
    let gateway = gw::start(&toml, &dir.path().join("gateway.toml")).await?;
    let metrics = Arc::clone(gateway.metrics());

    // The window opens once every Modbus device has answered and MQTT telemetry comes in
    // (so the gateway's subscription is in place).
    let ready = wait_until(PATIENCE, || {
        metrics
            .devices
            .rows
            .iter()
            .all(|r| r.counters.ok.load(Relaxed) > 0)
            && metric(
                &metrics,
                "tianzhong_mqtt_messages_total",
                &[("kind", "telemetry")],
            ) > 0.0
    })
    .await;
    ensure!(
        ready,
        "the gateway did not reach every node:\n{}",
        metrics.render()
    );
    let window_start = sim.now();
    tokio::time::sleep(Duration::from_secs(15)).await;

    // Stop the nodes first, then the gateway (which flushes its sinks). A reading served or
    // published in the last moments before the transports stopped may have been cut off on
    // its way (the reply or PUBACK raced the shutdown), so the window closes a margin earlier;
    // what arrived after it is still checked for correctness.
    let stop_at = sim.now();
    sim.stop_transports().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    gateway.shutdown(Duration::from_secs(30)).await;
    let window = (window_start, stop_at - 2_000);

    let written = metric(
        &metrics,
        "tianzhong_sink_points_total",
        &[("sink", "influxdb"), ("result", "written")],
    ) as usize;
    let rejected = metric(
        &metrics,
        "tianzhong_sink_points_total",
        &[("sink", "influxdb"), ("result", "rejected")],
    );
    ensure!(
        rejected == 0.0,
        "VictoriaMetrics rejected {rejected} points"
    );
    let published = metric(
        &metrics,
        "tianzhong_sink_points_total",
        &[("sink", "upstream_mqtt"), ("result", "published")],
    ) as usize;
    let series = vm
        .export_when("_seq", written, Duration::from_secs(60))
        .await?;
    let telemetry_messages = |c: &Collector| {
        c.messages()
            .iter()
            .filter(|(t, _)| t.ends_with("/telemetry"))
            .count()
    };
    wait_until(PATIENCE, || telemetry_messages(&collector) >= published).await;

    let truth = Truth::new(sim.fleet.truth.samples(), sim.quantities(), SITE);
    let required_deliveries = deliveries(&sim, Some(window));
    let required = truth.keys_of(&required_deliveries);
    let delivered = deliveries(&sim, None);
    let nodes_in_window: HashSet<&String> = required_deliveries.iter().map(|(n, _)| n).collect();

    let stored = check::stored_readings(&series);
    let in_vm = truth.compare(&stored.readings, &required, &delivered, true);
    let (upstream, unparsed) = check::upstream_readings(PREFIX, &collector.messages());
    let in_upstream = truth.compare(&upstream, &required, &delivered, false);
    let upstream_copies: usize = upstream.values().map(Vec::len).sum();

    println!(
        "fleet: {nodes} nodes, {} samples taken; window {:.1} s of simulated time; {} Modbus reads \
         served, {} MQTT messages published in it; {} nodes delivered in it",
        truth.samples.len(),
        (window.1 - window.0) as f64 / 1000.0,
        sim.fleet
            .truth
            .served()
            .iter()
            .filter(|d| (window.0..=window.1).contains(&d.time_ms))
            .count(),
        sim.fleet
            .truth
            .published()
            .iter()
            .filter(|d| (window.0..=window.1).contains(&d.time_ms))
            .count(),
        nodes_in_window.len(),
    );
    println!(
        "gateway: {written} points written to VictoriaMetrics, {published} telemetry messages \
         published upstream, {} duplicate readings dropped",
        metrics.dropped("duplicate")
    );
    println!(
        "VictoriaMetrics: {} `_seq` samples, {} readings joined, {} unjoined",
        stored.seq_samples,
        stored.readings.len(),
        stored.unjoined.len()
    );
    println!("{}", in_vm.summary("VictoriaMetrics"));
    println!(
        "upstream: {} messages, {} reading copies, {} unparsed",
        collector.len(),
        upstream_copies,
        unparsed.len()
    );
    println!("{}", in_upstream.summary("upstream MQTT"));
    println!("run time {:.1} s", started.elapsed().as_secs_f64());

    ensure!(
        nodes_in_window.len() == nodes,
        "only {} of {nodes} nodes delivered within the window",
        nodes_in_window.len()
    );
    ensure!(
        in_vm.required >= nodes * 2 * 10,
        "too few readings to compare: {}",
        in_vm.required
    );
    ensure!(
        stored.unjoined.is_empty(),
        "unjoined VictoriaMetrics samples: {:?}",
        &stored.unjoined[..stored.unjoined.len().min(8)]
    );
    ensure!(
        stored.seq_samples == written,
        "VictoriaMetrics holds {} readings, the gateway wrote {written}",
        stored.seq_samples
    );
    for (c, sink) in [(&in_vm, "VictoriaMetrics"), (&in_upstream, "upstream MQTT")] {
        ensure!(
            c.missing.is_empty()
                && c.wrong.is_empty()
                && c.invented.is_empty()
                && c.duplicates.is_empty(),
            "{}",
            c.summary(sink)
        );
    }
    ensure!(
        unparsed.is_empty(),
        "unparsed upstream messages: {unparsed:?}"
    );
    Ok(())
}

/// Answered polls of every device so far, in configuration order.
fn ok_counts(metrics: &Metrics) -> Vec<u64> {
    metrics
        .devices
        .rows
        .iter()
        .map(|r| r.counters.ok.load(Relaxed))
        .collect()
}

/// Two RTU lines of 8 nodes polled 4 times a second, side by side under the same load; on one
/// of them a node never answers. Its neighbours keep at least 90 % of the poll rate the nodes
/// of the healthy line get.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_rtu_node_costs_its_neighbours_under_a_tenth_of_their_poll_rate()
-> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    init_logs();
    const DEAD: &str = "rtu-dead-007";
    const POLL_S: f64 = 0.25;
    let mut fleet = FleetBuilder::new()?;
    fleet.modbus_rtu("rtu-ok", 8);
    fleet.modbus_rtu("rtu-dead", 8);
    fleet.fault(ScheduledFault {
        fault: Fault::NoReply,
        target: Target::Node(DEAD.into()),
        from_ms: 0,
        until_ms: None,
    });
    let sim = fleet.start().await?;
    let dir = TempDir::new("tz-e2e-gw")?;
    let settings = GatewaySettings {
        poll_interval_s: POLL_S,
        timeout_ms: 250,
        retries: 1,
        ..GatewaySettings::new(dir.path())
    };
    let gateway = gw::start(
        &sim.gateway_toml(&settings),
        &dir.path().join("gateway.toml"),
    )
    .await?;
    let metrics = Arc::clone(gateway.metrics());
    let rows = &metrics.devices.rows;
    let live: Vec<usize> = (0..rows.len())
        .filter(|&i| rows[i].device != DEAD)
        .collect();
    let dead = rows
        .iter()
        .position(|r| r.device == DEAD)
        .context("dead node")?;
    ensure!(
        wait_until(PATIENCE, || live.iter().all(|&i| rows[i]
            .counters
            .ok
            .load(Relaxed)
            > 0))
        .await,
        "not every live node answered:\n{}",
        metrics.render()
    );
    // Let the gateway find the dead node out (two failed polls, then quarantine) before
    // measuring the steady state.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (t0, before) = (Instant::now(), ok_counts(&metrics));
    let timeouts_before = rows[dead].counters.timeouts.load(Relaxed);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (elapsed, after) = (t0.elapsed().as_secs_f64(), ok_counts(&metrics));
    let dead_timeouts = rows[dead].counters.timeouts.load(Relaxed) - timeouts_before;
    let rate = |bus: &str| {
        let polled: Vec<f64> = live
            .iter()
            .filter(|&&i| rows[i].bus == bus)
            .map(|&i| (after[i] - before[i]) as f64 / elapsed)
            .collect();
        let mean = polled.iter().sum::<f64>() / polled.len() as f64;
        let min = polled.iter().copied().fold(f64::INFINITY, f64::min);
        (mean, min, polled.len())
    };
    let (healthy, healthy_min, n_healthy) = rate("rtu-ok");
    let (beside_dead, beside_dead_min, n_beside) = rate("rtu-dead");
    let reduction = 1.0 - beside_dead / healthy;
    gateway.shutdown(Duration::from_secs(10)).await;
    // The exposition carries the same counts under the documented names.
    let text = metrics.render();
    for (i, row) in rows.iter().enumerate() {
        let labels = [("device", row.device.as_str()), ("result", "ok")];
        let rendered = gw::sum(&text, "tianzhong_modbus_requests_total", &labels);
        ensure!(
            rendered == ok_counts(&metrics)[i] as f64,
            "tianzhong_modbus_requests_total{{device=\"{}\",result=\"ok\"}} is {rendered}:\n{text}",
            row.device
        );
    }
    let dead_bus_timeouts = gw::sum(
        &text,
        "tianzhong_modbus_bus_requests_total",
        &[("bus", "rtu-dead"), ("result", "timeout")],
    );
    ensure!(
        dead_bus_timeouts >= 1.0,
        "tianzhong_modbus_bus_requests_total{{bus=\"rtu-dead\",result=\"timeout\"}} is \
         {dead_bus_timeouts}:\n{text}"
    );
    println!(
        "configured {:.2} polls/s per node; over {elapsed:.1} s: healthy line {healthy:.3}/s \
         (mean of {n_healthy}, slowest {healthy_min:.3}), beside the dead node {beside_dead:.3}/s \
         (mean of {n_beside}, slowest {beside_dead_min:.3}); reduction {:.2} %; the dead node \
         cost {dead_timeouts} timeouts in the window, {} in all, {} answers",
        1.0 / POLL_S,
        reduction * 100.0,
        rows[dead].counters.timeouts.load(Relaxed),
        rows[dead].counters.ok.load(Relaxed),
    );
    drop(sim);
    ensure!(
        rows[dead].counters.ok.load(Relaxed) == 0 && rows[dead].counters.timeouts.load(Relaxed) > 0,
        "the dead node answered or was never tried"
    );
    ensure!(
        healthy >= 0.5 / POLL_S,
        "the healthy line is polled at {healthy:.2}/s per node, not near {}",
        1.0 / POLL_S
    );
    ensure!(
        reduction <= 0.10,
        "a dead node cut its neighbours' poll rate by {:.1} % ({beside_dead:.3}/s against \
         {healthy:.3}/s)",
        reduction * 100.0
    );
    Ok(())
}

/// MQTT nodes → mosquitto → the gateway's MQTT source, and the gateway's upstream sink on the
/// same broker. The broker is killed for 5 s and started again on the same port: both of the
/// gateway's clients reconnect and readings flow again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_reconnects_after_mosquitto_restarts() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    init_logs();
    let vm = VictoriaMetrics::start()?;
    let mut broker = Mosquitto::start()?;
    let mut fleet = FleetBuilder::new()?;
    fleet.mqtt("mqtt", broker.addr(), 10);
    let mut sim = fleet.start().await?;
    ensure!(
        sim.wait_mqtt_connected(PATIENCE).await,
        "MQTT nodes did not connect"
    );
    let dir = TempDir::new("tz-e2e-gw")?;
    let settings = GatewaySettings {
        mqtt_source: Some(broker.addr()),
        influxdb: Some(vm.url()),
        upstream: Some((broker.addr(), "e2e/upstream".into())),
        ..GatewaySettings::new(dir.path())
    };
    let gateway = gw::start(
        &sim.gateway_toml(&settings),
        &dir.path().join("gateway.toml"),
    )
    .await?;
    let metrics = Arc::clone(gateway.metrics());
    let connected =
        |client: &str| metric(&metrics, "tianzhong_mqtt_connected", &[("client", client)]) == 1.0;
    let received = || metric(&metrics, "tianzhong_readings_received_total", &[]);
    ensure!(
        wait_until(PATIENCE, || connected("source")
            && connected("upstream")
            && received() > 0.0)
        .await,
        "the gateway never got going:\n{}",
        metrics.render()
    );
    tokio::time::sleep(Duration::from_secs(4)).await;

    let kill_at = sim.now();
    let received_at_kill = received();
    broker.kill();
    let noticed = wait_until(PATIENCE, || !connected("source")).await;
    tokio::time::sleep(
        Duration::from_secs(5).saturating_sub(Duration::from_millis(sim.now() - kill_at)),
    )
    .await;
    let received_during = received() - received_at_kill;

    let restart_at = sim.now();
    broker.restart()?;
    let restarted = Instant::now();
    let received_at_restart = received();
    let source_back = wait_until(Duration::from_secs(15), || connected("source")).await;
    let source_s = restarted.elapsed().as_secs_f64();
    let flowing = wait_until(Duration::from_secs(15), || received() > received_at_restart).await;
    let flowing_s = restarted.elapsed().as_secs_f64();
    let upstream_back = wait_until(Duration::from_secs(15), || connected("upstream")).await;
    let upstream_s = restarted.elapsed().as_secs_f64();
    let resumed_at = sim.now();
    tokio::time::sleep(Duration::from_secs(6)).await;

    let stop_at = sim.now();
    let node_stats = sim.mqtt_stats();
    sim.stop_transports().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    gateway.shutdown(Duration::from_secs(30)).await;
    let written = metric(
        &metrics,
        "tianzhong_sink_points_total",
        &[("sink", "influxdb"), ("result", "written")],
    ) as usize;
    let series = vm
        .export_when("_seq", written, Duration::from_secs(60))
        .await?;
    let stored = check::stored_readings(&series);

    // Readings by the simulated time they were sampled at (MQTT readings carry the node's
    // timestamp): before the kill, while the broker was away, after the restart.
    let phase = |sim_ms: u64| {
        if sim_ms < kill_at {
            0
        } else if sim_ms < restart_at {
            1
        } else {
            2
        }
    };
    let mut in_vm = [0usize; 3];
    for o in stored.readings.values().flatten() {
        in_vm[phase((o.ts as u64).saturating_sub(sim.epoch_ms))] += 1;
    }
    let mut sampled = [0usize; 3];
    for s in sim.fleet.truth.samples() {
        if s.time_ms <= stop_at {
            sampled[phase(s.time_ms)] += 1;
        }
    }
    let mut published = [0usize; 3];
    for d in sim.fleet.truth.published() {
        published[phase(d.time_ms)] += 1;
    }
    // Everything published once the gateway was back (up to a margin before the stop) is
    // stored.
    let truth = Truth::new(sim.fleet.truth.samples(), sim.quantities(), SITE);
    let after_resume = deliveries(&sim, Some((resumed_at, stop_at - 2_000)));
    let comparison = truth.compare(
        &stored.readings,
        &truth.keys_of(&after_resume),
        &deliveries(&sim, None),
        true,
    );
    let connects = metric(
        &metrics,
        "tianzhong_mqtt_connects_total",
        &[("client", "source")],
    );
    println!(
        "broker down for {:.1} s (simulated ms {kill_at}..{restart_at}); disconnect noticed: \
         {noticed}; after the restart the source reconnected in {source_s:.1} s (connects: \
         {connects}), readings flowed again after {flowing_s:.1} s, upstream reconnected in \
         {upstream_s:.1} s",
        (restart_at - kill_at) as f64 / 1000.0
    );
    println!(
        "readings sampled before / during / after the outage: {sampled:?}; telemetry messages \
         published (PUBACKed): {published:?}; readings in VictoriaMetrics: {in_vm:?}; readings \
         the gateway received during the outage: {received_during}"
    );
    println!(
        "{}",
        comparison.summary("VictoriaMetrics after the restart")
    );
    println!("MQTT nodes: {node_stats:?}");
    ensure!(noticed, "the gateway never noticed the broker was gone");
    ensure!(source_back, "the MQTT source did not reconnect within 15 s");
    ensure!(flowing, "readings did not flow again within 15 s");
    ensure!(
        upstream_back,
        "the upstream sink did not reconnect within 15 s"
    );
    ensure!(connects >= 2.0, "the source connected {connects} times");
    ensure!(
        in_vm[0] > 0 && in_vm[2] > 0,
        "readings before/after: {in_vm:?}"
    );
    ensure!(
        comparison.missing.is_empty()
            && comparison.wrong.is_empty()
            && comparison.invented.is_empty()
            && comparison.duplicates.is_empty()
            && comparison.required > 0,
        "{}",
        comparison.summary("VictoriaMetrics after the restart")
    );
    Ok(())
}

/// Garbage on the broker (broken JSON, an unknown payload version, a value of 1e999, a topic
/// outside the scheme, a corrupt frame) and on an RTU line (random bytes, a wrong CRC, a cut
/// reply) is counted and refused; the gateway keeps running and the good nodes' readings keep
/// arriving upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_is_counted_and_refused_while_good_readings_keep_flowing()
-> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    init_logs();
    let broker = Mosquitto::start()?;
    let mut fleet = FleetBuilder::new()?;
    let rtu = fleet.modbus_rtu("rtu", 5);
    let mqtt = fleet.mqtt("mqtt", broker.addr(), 3);
    let bad_modbus = [
        (rtu[0].clone(), Fault::Garbage),
        (rtu[1].clone(), Fault::WrongCrc),
        (rtu[2].clone(), Fault::Truncated),
    ];
    for (node, fault) in &bad_modbus {
        fleet.fault(ScheduledFault {
            fault: fault.clone(),
            target: Target::Node(node.clone()),
            from_ms: 0,
            until_ms: None,
        });
    }
    let bad_mqtt_node = mqtt[2].clone();
    fleet.fault(ScheduledFault {
        fault: Fault::MalformedPayload,
        target: Target::Node(bad_mqtt_node.clone()),
        from_ms: 0,
        until_ms: None,
    });
    let good = [
        rtu[3].clone(),
        rtu[4].clone(),
        mqtt[0].clone(),
        mqtt[1].clone(),
    ];
    let sim = fleet.start().await?;
    ensure!(
        sim.wait_mqtt_connected(PATIENCE).await,
        "MQTT nodes did not connect"
    );
    const PREFIX: &str = "e2e/upstream";
    let collector = Collector::start(broker.addr(), &format!("{PREFIX}/#")).await?;
    let dir = TempDir::new("tz-e2e-gw")?;
    let settings = GatewaySettings {
        poll_interval_s: 0.5,
        timeout_ms: 300,
        retries: 1,
        mqtt_source: Some(broker.addr()),
        upstream: Some((broker.addr(), PREFIX.into())),
        ..GatewaySettings::new(dir.path())
    };
    let gateway = gw::start(
        &sim.gateway_toml(&settings),
        &dir.path().join("gateway.toml"),
    )
    .await?;
    let metrics = Arc::clone(gateway.metrics());
    let upstream_of = |node: &str| {
        collector
            .messages()
            .iter()
            .filter(|(t, _)| t.ends_with(&format!("/{node}/telemetry")))
            .count()
    };
    ensure!(
        wait_until(PATIENCE, || good.iter().all(|n| upstream_of(n) > 0)).await,
        "readings of the good nodes never came through:\n{}",
        metrics.render()
    );

    // Hand-made garbage, each refused for a reason of its own.
    let t = |node: &str, kind: &str| format!("tianzhong/v1/{SITE}/{node}/{kind}");
    let garbage: Vec<(String, Vec<u8>, &str)> = vec![
        (
            t("mqtt-x", "telemetry"),
            br#"{"v":1,"seq":1,"readings":[{"ch":0,"q":"combustible_gas","#.to_vec(),
            "broken JSON",
        ),
        (
            t("mqtt-x", "telemetry"),
            br#"{"v":2,"seq":2,"readings":[{"ch":0,"q":"combustible_gas","value":1.5}]}"#.to_vec(),
            "payload version 2",
        ),
        (
            t("mqtt-x", "telemetry"),
            br#"{"v":1,"seq":3,"readings":[{"ch":0,"q":"combustible_gas","value":1e999}]}"#
                .to_vec(),
            "value 1e999",
        ),
        (
            "tianzhong/v1/bad site/x/telemetry".to_owned(),
            br#"{"v":1,"seq":4,"readings":[{"ch":0,"q":"combustible_gas","value":1.5}]}"#.to_vec(),
            "topic with a space",
        ),
        (
            t("mqtt-x", "frame"),
            vec![0x02, 0x51, 0x07, 0xff, 0x00, 0x13, 0x37, 0x00],
            "corrupt frame",
        ),
    ];
    let mqtt_malformed = || metric(&metrics, "tianzhong_malformed_total", &[("source", "mqtt")]);
    let before_garbage = mqtt_malformed();
    let sent_by_node_before = sim.mqtt_stats()[0].malformed_sent;
    let mut options = MqttOptions::new(
        "e2e-garbage",
        broker.addr().ip().to_string(),
        broker.addr().port(),
    );
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    for (topic, payload, _) in &garbage {
        client
            .publish(topic.as_str(), QoS::AtLeastOnce, false, payload.clone())
            .await?;
    }
    let pump = tokio::spawn(async move {
        let mut acked = 0;
        while acked < 5 {
            match eventloop.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => acked += 1,
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(eventloop)
    });
    let _eventloop = tokio::time::timeout(PATIENCE, pump)
        .await
        .context("the broker did not acknowledge the garbage")???;

    // Every malformed message — ours and the faulty node's — is counted once.
    let counted = wait_until(PATIENCE, || {
        let by_node = sim.mqtt_stats()[0].malformed_sent - sent_by_node_before;
        mqtt_malformed() - before_garbage >= (garbage.len() as u64 + by_node) as f64
    })
    .await;
    let rows = &metrics.devices.rows;
    let row = |node: &str| {
        rows.iter()
            .find(|r| r.device == node)
            .expect("a configured device")
    };
    let modbus_counted = wait_until(PATIENCE, || {
        bad_modbus
            .iter()
            .all(|(n, _)| row(n).counters.malformed.load(Relaxed) > 0)
    })
    .await;

    // Good readings keep coming after all that.
    let good_before: Vec<usize> = good.iter().map(|n| upstream_of(n)).collect();
    let ok_before: Vec<u64> = good[..2]
        .iter()
        .map(|n| row(n).counters.ok.load(Relaxed))
        .collect();
    let flowing = wait_until(PATIENCE, || {
        good.iter()
            .zip(&good_before)
            .all(|(n, before)| upstream_of(n) >= before + 3)
    })
    .await;
    let text = metrics.render();
    let malformed_lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("tianzhong_malformed_total"))
        .collect();
    println!("malformed counters:\n  {}", malformed_lines.join("\n  "));
    for (node, fault) in &bad_modbus {
        let c = &row(node).counters;
        println!(
            "{node} ({fault:?}): ok {}, malformed {}, timeouts {}, errors {}, exceptions {}",
            c.ok.load(Relaxed),
            c.malformed.load(Relaxed),
            c.timeouts.load(Relaxed),
            c.errors.load(Relaxed),
            c.exceptions.load(Relaxed)
        );
    }
    let node_stats = sim.mqtt_stats()[0];
    println!(
        "hand-made garbage: {} messages; {bad_mqtt_node} sent {} malformed payloads; mqtt \
         malformed counted since the garbage: {}",
        garbage.len(),
        node_stats.malformed_sent,
        mqtt_malformed() - before_garbage
    );
    println!(
        "good nodes' upstream telemetry before/after: {good_before:?} -> {:?}; RTU polls \
         answered: {ok_before:?} -> {:?}",
        good.iter().map(|n| upstream_of(n)).collect::<Vec<_>>(),
        good[..2]
            .iter()
            .map(|n| row(n).counters.ok.load(Relaxed))
            .collect::<Vec<_>>()
    );
    let reason = |r: &str| {
        gw::sum(
            &text,
            "tianzhong_malformed_total",
            &[("source", "mqtt"), ("reason", r)],
        )
    };
    let shutdown = tokio::time::timeout(PATIENCE, gateway.shutdown(Duration::from_secs(10)));
    ensure!(shutdown.await.is_ok(), "the gateway did not shut down");
    ensure!(
        counted,
        "not every malformed MQTT message was counted:\n{text}"
    );
    ensure!(
        modbus_counted,
        "not every faulty Modbus node's replies were counted as malformed:\n{text}"
    );
    for r in ["json", "version", "not_finite", "topic", "frame"] {
        ensure!(
            reason(r) >= 1.0,
            "no MQTT message refused for `{r}`:\n{text}"
        );
    }
    for (node, _) in &bad_modbus {
        let labels = [("device", node.as_str()), ("result", "malformed")];
        ensure!(
            gw::sum(&text, "tianzhong_modbus_requests_total", &labels) > 0.0,
            "tianzhong_modbus_requests_total{{device=\"{node}\",result=\"malformed\"}} is 0:\n{text}"
        );
    }
    ensure!(flowing, "good readings stopped arriving upstream");
    ensure!(
        upstream_of(&bad_mqtt_node) == 0,
        "readings of the node sending garbage went upstream"
    );
    for (node, _) in &bad_modbus {
        ensure!(
            upstream_of(node) == 0,
            "readings of {node}, which answers garbage, went upstream"
        );
    }
    Ok(())
}
