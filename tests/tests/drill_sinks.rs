//! Fault drills against the gateway's sinks (issue 7), each checked against the simulator's
//! ground truth — every reading served or published reaches the sink, exactly once — on
//! simulated time running faster than real time, so that minutes and hours of field time fit
//! in a CI run:
//!
//! | drill | what happens | figures printed |
//! |---|---|---|
//! | VictoriaMetrics outage | VictoriaMetrics is stopped (SIGTERM) for 10 simulated minutes (1 hour with `TIANZHONG_SOAK=1`) while 20 Modbus TCP and 10 MQTT nodes keep reporting at 30×, then started again on the same port and data | peak backlog (points, outbox file), time to the first write and to drain |
//! | InfluxDB stub | an HTTP stub answers 503 and 429 with `Retry-After`, 500, a hang past the writer's timeout, then 204 — and 400 for every body holding one poisoned batch, injected over MQTT | the waits between attempts, the 400s, the dead letter |
//! | flapping device | a Modbus TCP node and an MQTT node go off line for 4 of every 10 simulated minutes for an hour at 60× | offline periods seen upstream, the neighbours' poll rate |
//!
//! The gateway runs in-process ([`tianzhong_tests::gateway::start`]); between it and the
//! database sits [`HttpStub`], as a tap that forwards to VictoriaMetrics (and records the order
//! in which points were written) or as the database itself. The outbox is inspected after
//! shutdown by opening its file with [`Outbox::open`].
//!
//! Needs `/usr/sbin/mosquitto` and `/usr/bin/victoria-metrics`. `RUST_LOG=tianzhong_gateway=info`
//! shows the gateway's log.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use rumqttc::{AsyncClient, MqttOptions, QoS};
use tianzhong_gateway::gateway::OUTBOX_FILE;
use tianzhong_gateway::metrics::Metrics;
use tianzhong_gateway::outbox::codec::{self, Decoded};
use tianzhong_gateway::outbox::{
    DeadLetter, Drop as OutboxDrop, Outbox, OutboxConfig, OutboxStats,
};
use tianzhong_protocol::Quantity;
use tianzhong_protocol::payload::NodeStatus;
use tianzhong_simulator::fault::{Fault, ScheduledFault, Target};
use tianzhong_tests::check::{self, Collector, Comparison, Truth};
use tianzhong_tests::fleet::SITE;
use tianzhong_tests::gateway::{self as gw, init_logs, wait_until};
use tianzhong_tests::services::{Mosquitto, TempDir};
use tianzhong_tests::stub::{
    self, DrillFleet, DrillSettings, HttpStub, Reply, RunningFleet, VmProcess,
};

/// The drills take turns: each loads the machine, and the figures are timings.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Longest wait for what should take seconds on an idle machine.
const PATIENCE: Duration = Duration::from_secs(60);

/// Whether the long variants run (`TIANZHONG_SOAK=1`).
fn soak() -> bool {
    std::env::var("TIANZHONG_SOAK").is_ok_and(|v| !v.is_empty() && v != "0")
}

fn metric(metrics: &Metrics, name: &str, labels: &[(&str, &str)]) -> f64 {
    gw::sum(&metrics.render(), name, labels)
}

/// The InfluxDB sink's accounts, in points.
#[derive(Clone, Copy, Debug, Default)]
struct SinkAccount {
    /// Readings into the outbox plus alarm transitions: every point the sink owes.
    owed: u64,
    /// Written (2xx).
    written: u64,
    /// Dead-lettered or refused by the encoder.
    set_aside: u64,
}

impl SinkAccount {
    fn of(metrics: &Metrics) -> SinkAccount {
        let text = metrics.render();
        let points = |result: &str| {
            gw::sum(
                &text,
                "tianzhong_sink_points_total",
                &[("sink", "influxdb"), ("result", result)],
            ) as u64
        };
        SinkAccount {
            owed: (gw::sum(&text, "tianzhong_readings_forwarded_total", &[])
                + gw::sum(&text, "tianzhong_alarm_transitions_total", &[]))
                as u64,
            written: points("written"),
            set_aside: points("dead_lettered") + points("refused"),
        }
    }

    /// Points accepted and not yet written or set aside.
    fn backlog(&self) -> u64 {
        self.owed.saturating_sub(self.written + self.set_aside)
    }
}

/// Waits until the InfluxDB sink has written (or set aside) every point it owes.
async fn drained(metrics: &Metrics, timeout: Duration) -> bool {
    wait_until(timeout, || SinkAccount::of(metrics).backlog() == 0).await
}

/// Opens the outbox of a stopped gateway (its sinks named as the gateway names them) and
/// reads its stats, dead letters and drop counts.
async fn post_mortem(
    data_dir: &Path,
    sinks: &[&str],
) -> anyhow::Result<(OutboxStats, Vec<DeadLetter>, Vec<OutboxDrop>)> {
    let path = data_dir.join(OUTBOX_FILE);
    let config = OutboxConfig {
        sinks: sinks.iter().map(|s| (*s).to_owned()).collect(),
        ..OutboxConfig::default()
    };
    let outbox = tokio::task::spawn_blocking(move || Outbox::open(&path, config)).await??;
    let stats = outbox.stats().await?;
    let dead = outbox.dead_letters().await?;
    let drops = outbox.drops().await?;
    outbox.close().await?;
    Ok((stats, dead, drops))
}

fn clean(c: &Comparison) -> bool {
    c.missing.is_empty() && c.wrong.is_empty() && c.invented.is_empty() && c.duplicates.is_empty()
}

/// Everything the fleet delivered between `from` and `to` (simulated ms) must be among
/// `held`, once, as sampled; nothing held may be invented.
fn compare(
    sim: &RunningFleet,
    held: &HashMap<check::Key, Vec<check::Observed>>,
    window: (u64, u64),
) -> Comparison {
    let truth = Truth::new(sim.fleet.truth.samples(), sim.quantities(), SITE);
    let required = truth.keys_of(&sim.deliveries(Some(window)));
    truth.compare(held, &required, &sim.deliveries(None), true)
}

/// VictoriaMetrics stopped for 10 simulated minutes (an hour with `TIANZHONG_SOAK=1`) while
/// the fleet keeps reporting at 30×: the outbox keeps the backlog, the sink retries, and once
/// VictoriaMetrics is back every reading is there exactly once, written in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn victoria_metrics_stopped_for_simulated_minutes_gets_every_reading_once_in_order()
-> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    init_logs();
    const SPEED: f64 = 30.0;
    let outage = if soak() {
        Duration::from_secs(120)
    } else {
        Duration::from_secs(20)
    };
    let started = Instant::now();
    let mut vm = VmProcess::start()?;
    let tap = HttpStub::start().await?;
    tap.forward_to(&vm.url());
    let broker = Mosquitto::start()?;
    let mut fleet = DrillFleet::new(SPEED)?;
    fleet.modbus_tcp("tcp");
    fleet.nodes("tcp", 20);
    fleet.mqtt("mqtt", broker.addr());
    fleet.nodes("mqtt", 10);
    let mut sim = fleet.start(outage * 4 + Duration::from_secs(600)).await?;
    ensure!(
        sim.wait_mqtt_connected(PATIENCE).await,
        "MQTT nodes did not connect"
    );
    let dir = TempDir::new("tz-drill-vm-gw")?;
    let settings = DrillSettings {
        mqtt_source: Some(broker.addr()),
        influxdb: Some((tap.url(), 5000, 200)),
        ..DrillSettings::new(dir.path())
    };
    let gateway = gw::start(
        &sim.gateway_toml(&settings),
        &dir.path().join("gateway.toml"),
    )
    .await?;
    let metrics = Arc::clone(gateway.metrics());
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
            && tap.accepted_points() > 0
    })
    .await;
    ensure!(
        ready,
        "the gateway did not get going:\n{}",
        metrics.render()
    );
    let window_start = sim.now();
    tokio::time::sleep(Duration::from_secs(5)).await;

    // The outage: the tap goes down with VictoriaMetrics, so the gateway is refused
    // connections as by a stopped server.
    let outage_sim_start = sim.now();
    tap.down();
    vm.stop()?;
    let down_at = Instant::now();
    let written_at_stop = SinkAccount::of(&metrics).written;
    let mut peak_backlog = 0;
    let mut peak_file = 0;
    // The outbox's own figures, as the gateway reads them into its metrics every 2 s.
    let (mut peak_bytes, mut peak_batches, mut peak_behind) = (0.0f64, 0.0f64, 0.0f64);
    while down_at.elapsed() < outage {
        peak_backlog = peak_backlog.max(SinkAccount::of(&metrics).backlog());
        peak_file = peak_file.max(stub::outbox_file_bytes(dir.path()));
        peak_bytes = peak_bytes.max(metric(&metrics, "tianzhong_outbox", &[("kind", "bytes")]));
        peak_batches =
            peak_batches.max(metric(&metrics, "tianzhong_outbox", &[("kind", "batches")]));
        peak_behind = peak_behind.max(metric(
            &metrics,
            "tianzhong_outbox_behind_batches",
            &[("sink", "influxdb")],
        ));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let account_at_restart = SinkAccount::of(&metrics);
    peak_backlog = peak_backlog.max(account_at_restart.backlog());
    let outage_sim = sim.now() - outage_sim_start;
    let written_during = account_at_restart.written - written_at_stop;

    vm.restart()?;
    tap.up().await?;
    let restarted = Instant::now();
    let requests_before = tap.request_count();
    let first_write = wait_until(Duration::from_secs(120), || {
        tap.requests()[requests_before..]
            .iter()
            .any(|r| r.accepted())
    })
    .await;
    let first_write_s = restarted.elapsed().as_secs_f64();
    // Drained: everything owed at the restart is written.
    let drain = wait_until(Duration::from_secs(300), || {
        let a = SinkAccount::of(&metrics);
        a.written + a.set_aside >= account_at_restart.owed
    })
    .await;
    let drain_s = restarted.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(5)).await;

    let stop_at = sim.now();
    sim.stop_transports().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let all_written = drained(&metrics, PATIENCE).await;
    gateway.shutdown(Duration::from_secs(30)).await;
    let account = SinkAccount::of(&metrics);
    let (stats, dead, drops) = post_mortem(dir.path(), &["alarm_audit", "influxdb"]).await?;

    // What was written, in the order it was written (the tap's log), and what VictoriaMetrics
    // holds.
    let requests = tap.requests();
    let points = stub::accepted_points(&requests)?;
    let (tapped, alarm_points) = stub::readings_of(&points)?;
    let disorder = stub::out_of_order(&points);
    let tapped_readings: usize = tapped.values().map(Vec::len).sum();
    let series: Vec<_> = vm
        .export_when(tapped_readings, PATIENCE)
        .await?
        .into_iter()
        .filter(|s| !s.name().starts_with("alarm_"))
        .collect();
    let stored = check::stored_readings(&series);
    let window = (window_start, stop_at - 2_000);
    let in_vm = compare(&sim, &stored.readings, window);
    let at_tap = compare(&sim, &tapped, window);
    let failed_requests = requests.iter().filter(|r| !r.accepted()).count();

    println!(
        "fleet: {} nodes at {SPEED}x; {} samples; window {:.1} simulated minutes; outage \
         {:.1} s real = {:.1} simulated minutes",
        sim.spec.nodes.len(),
        sim.fleet.truth.sample_count(),
        (window.1 - window.0) as f64 / 60_000.0,
        outage.as_secs_f64(),
        outage_sim as f64 / 60_000.0
    );
    println!(
        "outage: {written_during} points written while down; peak backlog {peak_backlog} \
         points; outbox at most {peak_bytes} bytes accounted in {peak_batches} batches, the \
         InfluxDB sink at most {peak_behind} batches behind; outbox files at most {:.2} MB",
        peak_file as f64 / 1e6
    );
    println!(
        "restart: first write {first_write_s:.1} s after VictoriaMetrics was back, backlog of \
         {} points drained {drain_s:.1} s after it; {failed_requests} requests failed in all \
         (none reach a stopped server)",
        account_at_restart.backlog()
    );
    println!(
        "sink: {} points owed, {} written, {} set aside; tap: {} accepted requests, \
         {tapped_readings} readings, {alarm_points} alarm points, {} out of order",
        account.owed,
        account.written,
        account.set_aside,
        requests.iter().filter(|r| r.accepted()).count(),
        disorder.len()
    );
    println!(
        "outbox after shutdown: {} batches, {} bytes accounted, file {} bytes, durable {:?}, \
         sinks {:?}, {} dead letters, drops {drops:?}",
        stats.batches,
        stats.bytes,
        stats.file_bytes,
        stats.durable,
        stats.sinks,
        dead.len()
    );
    println!("{}", in_vm.summary("VictoriaMetrics"));
    println!("{}", at_tap.summary("written (tap)"));
    println!("run time {:.1} s", started.elapsed().as_secs_f64());

    ensure!(
        first_write,
        "nothing was written within 120 s of the restart"
    );
    ensure!(
        drain,
        "the backlog did not drain within 300 s of the restart"
    );
    ensure!(
        all_written,
        "the sink did not catch up after the fleet stopped"
    );
    ensure!(
        peak_backlog > 0 && written_during == 0,
        "no backlog built up"
    );
    ensure!(
        in_vm.required > sim.spec.nodes.len() * 50,
        "too few readings to judge: {}",
        in_vm.required
    );
    ensure!(
        stored.unjoined.is_empty(),
        "unjoined samples: {:?}",
        &stored.unjoined[..stored.unjoined.len().min(8)]
    );
    ensure!(clean(&in_vm), "{}", in_vm.summary("VictoriaMetrics"));
    ensure!(clean(&at_tap), "{}", at_tap.summary("written (tap)"));
    ensure!(
        stored.readings.len() == tapped.len(),
        "VictoriaMetrics holds {} readings, {} were written",
        stored.readings.len(),
        tapped.len()
    );
    ensure!(
        disorder.is_empty(),
        "written out of order: {:?}",
        &disorder[..disorder.len().min(8)]
    );
    ensure!(drops.is_empty(), "readings dropped: {drops:?}");
    ensure!(dead.is_empty(), "dead letters: {}", dead.len());
    ensure!(
        stats.sinks.iter().all(|s| s.acked >= stats.durable),
        "a sink did not confirm everything: {:?} (durable {:?})",
        stats.sinks,
        stats.durable
    );
    Ok(())
}

/// Publishes `payload` on `topic` at QoS 1 and waits for the broker's PUBACK.
async fn publish(broker: std::net::SocketAddr, topic: &str, payload: String) -> anyhow::Result<()> {
    let mut options = MqttOptions::new("drill-poisoner", broker.ip().to_string(), broker.port());
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(options, 8);
    client
        .publish(topic, QoS::AtLeastOnce, false, payload.into_bytes())
        .await?;
    tokio::time::timeout(PATIENCE, async {
        loop {
            match eventloop.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(anyhow::Error::from(e)),
            }
        }
    })
    .await
    .context("no PUBACK for the poisoned message")??;
    let _ = client.disconnect().await;
    Ok(())
}

/// An InfluxDB stub that answers 503 and 429 with `Retry-After`, a 500 and a hang past the
/// writer's 10 s timeout before it takes anything, and 400 for every body holding a poisoned
/// batch (two readings of a node of our own, injected over MQTT): the waits honour
/// `Retry-After`, the poisoned batch — and only it — ends up as a dead letter in the outbox,
/// every other reading is written exactly once, and the queue goes on behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn influx_stub_errors_are_retried_and_one_poisoned_batch_is_dead_lettered()
-> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    init_logs();
    const SPEED: f64 = 10.0;
    const POISON_NODE: &str = "drill-poison";
    let started = Instant::now();
    let stub = HttpStub::start().await?;
    stub.script([
        Reply::retry_after(503, 2),
        Reply::retry_after(429, 1),
        Reply::status(500),
        Reply::Hang,
    ]);
    let broker = Mosquitto::start()?;
    let mut fleet = DrillFleet::new(SPEED)?;
    fleet.modbus_tcp("tcp");
    fleet.nodes("tcp", 10);
    fleet.mqtt("mqtt", broker.addr());
    fleet.nodes("mqtt", 5);
    let mut sim = fleet.start(Duration::from_secs(900)).await?;
    ensure!(
        sim.wait_mqtt_connected(PATIENCE).await,
        "MQTT nodes did not connect"
    );
    let dir = TempDir::new("tz-drill-stub-gw")?;
    let settings = DrillSettings {
        mqtt_source: Some(broker.addr()),
        influxdb: Some((stub.url(), 5000, 200)),
        ..DrillSettings::new(dir.path())
    };
    let gateway = gw::start(
        &sim.gateway_toml(&settings),
        &dir.path().join("gateway.toml"),
    )
    .await?;
    let metrics = Arc::clone(gateway.metrics());
    let window_start = sim.now();

    // The script: four failures, then the write goes through.
    let through = wait_until(Duration::from_secs(120), || {
        stub.script_left() == 0 && stub.requests().iter().any(|r| r.accepted())
    })
    .await;
    ensure!(
        through,
        "the stub's script was not played through: {:?}",
        stub.requests().iter().map(|r| r.status).collect::<Vec<_>>()
    );
    tokio::time::sleep(Duration::from_secs(3)).await;

    // The poison: one MQTT message of a node of our own, one outbox batch of two readings.
    let marker = format!("node={POISON_NODE},");
    stub.poison(&marker);
    let poison_seq = 7;
    let payload = format!(
        "{{\"v\":1,\"seq\":{poison_seq},\"ts\":{},\"readings\":[\
         {{\"ch\":0,\"q\":\"{}\",\"value\":1.25}},{{\"ch\":1,\"q\":\"{}\",\"value\":0.5}}]}}",
        tianzhong_tests::fleet::unix_ms(),
        Quantity::CombustibleGas.key(),
        Quantity::H2s.key()
    );
    let poisoned_at = Instant::now();
    let poison_sim = sim.now();
    publish(
        broker.addr(),
        &format!("tianzhong/v1/{SITE}/{POISON_NODE}/telemetry"),
        payload,
    )
    .await?;
    let refused = wait_until(PATIENCE, || {
        stub.requests().iter().any(|r| r.status == Some(400))
    })
    .await;
    // Behind it the queue moves on: readings sampled after the poison are written.
    let moved_on = wait_until(PATIENCE, || {
        let requests = stub.requests();
        let Some(last_400) = requests.iter().rposition(|r| r.status == Some(400)) else {
            return false;
        };
        requests[last_400 + 1..]
            .iter()
            .filter(|r| r.accepted())
            .any(|r| {
                stub::parse_line_protocol(&r.body)
                    .map(|points| {
                        points.iter().any(|p| {
                            p.ts >= (sim.epoch_ms + poison_sim) as i64 + 2_000
                                && p.measurement != "alarm"
                        })
                    })
                    .unwrap_or(false)
            })
    })
    .await;
    let moved_on_s = poisoned_at.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(3)).await;

    let stop_at = sim.now();
    sim.stop_transports().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let all_written = drained(&metrics, PATIENCE).await;
    gateway.shutdown(Duration::from_secs(30)).await;
    let account = SinkAccount::of(&metrics);
    let dead_lettered_points = metric(
        &metrics,
        "tianzhong_sink_points_total",
        &[("sink", "influxdb"), ("result", "dead_lettered")],
    ) as u64;
    let (stats, dead, drops) = post_mortem(dir.path(), &["alarm_audit", "influxdb"]).await?;

    let requests = stub.requests();
    let statuses: Vec<Option<u16>> = requests.iter().map(|r| r.status).collect();
    let gap = |i: usize| {
        requests
            .get(i + 1)
            .map_or(0.0, |n| (n.at - requests[i].at).as_secs_f64())
    };
    let four_hundreds: Vec<&stub::Request> =
        requests.iter().filter(|r| r.status == Some(400)).collect();
    let points = stub::accepted_points(&requests)?;
    let (written, alarm_points) = stub::readings_of(&points)?;
    let poison_written = written.keys().filter(|k| k.0 == POISON_NODE).count();
    let window = (window_start, stop_at - 2_000);
    let comparison = compare(&sim, &written, window);
    // The dead letter, decoded.
    let dead_readings: Vec<(String, u16, u32, f64)> = dead
        .iter()
        .filter_map(|d| match codec::decode(&d.bytes) {
            Ok(Decoded::Readings(records)) => Some(records),
            _ => None,
        })
        .flatten()
        .map(|r| {
            (
                r.reading.node.to_string(),
                r.reading.channel.0,
                r.reading.seq,
                r.reading.value,
            )
        })
        .collect();

    println!(
        "stub answers: first {:?} ...; {} requests in all",
        &statuses[..statuses.len().min(8)],
        requests.len()
    );
    println!(
        "waits: after 503 (Retry-After 2) {:.2} s, after 429 (Retry-After 1) {:.2} s, after \
         500 {:.2} s, after the hang {:.2} s",
        gap(0),
        gap(1),
        gap(2),
        gap(3)
    );
    println!(
        "poison: {} requests answered 400 (bodies of {:?} lines); queue moved on {moved_on_s:.1} \
         s after the poison was published; {dead_lettered_points} points dead-lettered",
        four_hundreds.len(),
        four_hundreds
            .iter()
            .map(|r| r.body.lines().count())
            .collect::<Vec<_>>()
    );
    for d in &dead {
        println!(
            "dead letter: sink {}, batch {:?}, reason {:?}, {} bytes",
            d.sink,
            d.batch,
            d.reason,
            d.bytes.len()
        );
    }
    println!("dead-lettered readings: {dead_readings:?}");
    println!(
        "sink: {} owed, {} written, {} set aside; {} readings and {alarm_points} alarm points \
         written; outbox after shutdown: {} batches, sinks {:?}, drops {drops:?}",
        account.owed,
        account.written,
        account.set_aside,
        written.len(),
        stats.batches,
        stats.sinks
    );
    println!("{}", comparison.summary("stub"));
    println!("run time {:.1} s", started.elapsed().as_secs_f64());

    ensure!(
        statuses.len() >= 5 && statuses[..4] == [Some(503), Some(429), Some(500), None],
        "the stub was not asked as scripted: {statuses:?}"
    );
    ensure!(
        gap(0) >= 1.9,
        "retried {:.2} s after a 503 with Retry-After: 2",
        gap(0)
    );
    ensure!(
        gap(1) >= 0.9,
        "retried {:.2} s after a 429 with Retry-After: 1",
        gap(1)
    );
    ensure!(
        gap(3) >= 9.5,
        "the hang was given up after {:.2} s, not the 10 s timeout",
        gap(3)
    );
    ensure!(refused, "the poisoned batch was never sent");
    ensure!(moved_on, "nothing was written after the poisoned batch");
    ensure!(all_written, "the sink did not catch up");
    ensure!(
        four_hundreds
            .last()
            .is_some_and(|r| r.body.lines().all(|l| l.contains(&marker))),
        "the last 400 was not for the poisoned batch alone"
    );
    ensure!(poison_written == 0, "poisoned readings were written");
    ensure!(
        dead.len() == 1 && dead[0].sink == "influxdb",
        "dead letters: {dead:?}"
    );
    let mut expected = vec![
        (POISON_NODE.to_owned(), 0, poison_seq, 1.25),
        (POISON_NODE.to_owned(), 1, poison_seq, 0.5),
    ];
    let mut got = dead_readings.clone();
    got.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    expected.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    ensure!(got == expected, "the dead letter holds {got:?}");
    ensure!(
        dead_lettered_points == 2,
        "{dead_lettered_points} points dead-lettered"
    );
    ensure!(
        comparison.required > sim.spec.nodes.len() * 10,
        "too few readings to judge: {}",
        comparison.required
    );
    ensure!(clean(&comparison), "{}", comparison.summary("stub"));
    ensure!(drops.is_empty(), "drops: {drops:?}");
    Ok(())
}

/// Offline periods of `node` in the status messages published upstream, in order: the number
/// of online → offline changes (the first status counted when it is offline).
fn offline_periods(prefix: &str, messages: &[check::Message], node: &str) -> (usize, usize) {
    let suffix = format!("/{node}/status");
    let mut last = None;
    let (mut periods, mut statuses) = (0, 0);
    for (topic, payload) in messages {
        if !(topic.starts_with(prefix) && topic.ends_with(&suffix)) {
            continue;
        }
        let Ok(status) = serde_json::from_slice::<NodeStatus>(payload) else {
            continue;
        };
        statuses += 1;
        if !status.online && last != Some(false) {
            periods += 1;
        }
        last = Some(status.online);
    }
    (periods, statuses)
}

/// A Modbus TCP node and an MQTT node each go off line for 4 of every 10 simulated minutes,
/// six times over an hour of simulated time at 60×; their neighbours share their bus and
/// broker. Every reading each one delivered while on line is written exactly once, so are the
/// neighbours', whose poll rate holds; each offline period shows up as a status change the
/// gateway publishes upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_flapping_for_a_simulated_hour_loses_nothing_it_delivered() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    init_logs();
    const SPEED: f64 = 60.0;
    const PREFIX: &str = "drill/up";
    const TCP_FLAP: &str = "tcp-flap";
    const MQTT_FLAP: &str = "mqtt-flap";
    let (hours, periods) = if soak() { (4u64, 24u64) } else { (1, 6) };
    let started = Instant::now();
    let stub = HttpStub::start().await?;
    let broker = Mosquitto::start()?;
    let mut fleet = DrillFleet::new(SPEED)?;
    fleet.modbus_tcp("tcp");
    let mut tcp = fleet.nodes("tcp", 5);
    tcp.push(fleet.node("tcp", TCP_FLAP, stub::profile(0)));
    fleet.mqtt("mqtt", broker.addr());
    let mut mqtt = fleet.nodes("mqtt", 3);
    mqtt.push(fleet.node("mqtt", MQTT_FLAP, stub::profile(1)));
    let mut sim = fleet.start(Duration::from_secs(hours * 60 + 600)).await?;
    ensure!(
        sim.wait_mqtt_connected(PATIENCE).await,
        "MQTT nodes did not connect"
    );
    let collector = Collector::start(broker.addr(), &format!("{PREFIX}/#")).await?;
    let dir = TempDir::new("tz-drill-flap-gw")?;
    let settings = DrillSettings {
        mqtt_source: Some(broker.addr()),
        influxdb: Some((stub.url(), 5000, 200)),
        upstream: Some((broker.addr(), PREFIX.into())),
        ..DrillSettings::new(dir.path())
    };
    let gateway = gw::start(
        &sim.gateway_toml(&settings),
        &dir.path().join("gateway.toml"),
    )
    .await?;
    let metrics = Arc::clone(gateway.metrics());
    let rows = &metrics.devices.rows;
    let ready = wait_until(PATIENCE, || {
        rows.iter().all(|r| r.counters.ok.load(Relaxed) > 0)
            && offline_periods(PREFIX, &collector.messages(), MQTT_FLAP).1 > 0
    })
    .await;
    ensure!(
        ready,
        "the gateway did not get going:\n{}",
        metrics.render()
    );

    // The flapping, from now on: off line from minute 6 to 10 of every 10.
    let t0 = sim.now();
    let minute = 60_000;
    for k in 0..periods {
        for (fault, node) in [
            (Fault::NoReply, TCP_FLAP),
            (Fault::MqttDisconnect, MQTT_FLAP),
        ] {
            sim.fleet.faults.add(ScheduledFault {
                fault,
                target: Target::Node(node.into()),
                from_ms: t0 + (k * 10 + 6) * minute,
                until_ms: Some(t0 + (k * 10 + 10) * minute),
            });
        }
    }
    let ok_before: Vec<u64> = rows.iter().map(|r| r.counters.ok.load(Relaxed)).collect();
    let real_start = Instant::now();
    let end = t0 + periods * 10 * minute + 2 * minute;
    while sim.now() < end {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let elapsed = real_start.elapsed().as_secs_f64();
    let ok_after: Vec<u64> = rows.iter().map(|r| r.counters.ok.load(Relaxed)).collect();

    let stop_at = sim.now();
    let mqtt_stats = sim.mqtt_stats();
    // The statuses before the fleet stops (stopping takes every node off line once more).
    let messages = collector.messages();
    sim.stop_transports().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let all_written = drained(&metrics, PATIENCE).await;
    let flapper_row = rows
        .iter()
        .find(|r| r.device == TCP_FLAP)
        .context("flapper row")?;
    let flapper_timeouts = flapper_row.counters.timeouts.load(Relaxed);
    gateway.shutdown(Duration::from_secs(30)).await;
    let (_, dead, drops) =
        post_mortem(dir.path(), &["alarm_audit", "influxdb", "upstream_mqtt"]).await?;

    let requests = stub.requests();
    let points = stub::accepted_points(&requests)?;
    let (written, alarm_points) = stub::readings_of(&points)?;
    let disorder = stub::out_of_order(&points);
    let window = (t0, stop_at - 2_000);
    let truth = Truth::new(sim.fleet.truth.samples(), sim.quantities(), SITE);
    let all = sim.deliveries(None);
    let in_window = sim.deliveries(Some(window));
    let of = |nodes: &[&str]| -> HashSet<(String, u32)> {
        in_window
            .iter()
            .filter(|(n, _)| nodes.contains(&n.as_str()))
            .cloned()
            .collect()
    };
    let flappers = of(&[TCP_FLAP, MQTT_FLAP]);
    let neighbours: Vec<&str> = tcp
        .iter()
        .chain(&mqtt)
        .map(String::as_str)
        .filter(|n| *n != TCP_FLAP && *n != MQTT_FLAP)
        .collect();
    let neighbour_deliveries = of(&neighbours);
    let flap_cmp = truth.compare(&written, &truth.keys_of(&flappers), &all, true);
    let neighbour_cmp = truth.compare(&written, &truth.keys_of(&neighbour_deliveries), &all, true);
    let seen: Vec<(&str, usize, usize)> = [TCP_FLAP, MQTT_FLAP]
        .iter()
        .map(|n| {
            let (p, s) = offline_periods(PREFIX, &messages, n);
            (*n, p, s)
        })
        .collect();
    // Answered polls per second of each Modbus neighbour over the hour.
    let rates: Vec<(String, f64)> = rows
        .iter()
        .enumerate()
        .filter(|(_, r)| r.device != TCP_FLAP)
        .map(|(i, r)| {
            (
                r.device.clone(),
                (ok_after[i] - ok_before[i]) as f64 / elapsed,
            )
        })
        .collect();
    let slowest = rates.iter().map(|r| r.1).fold(f64::INFINITY, f64::min);
    let per_node = |node: &str| flappers.iter().filter(|(n, _)| n == node).count();

    println!(
        "{hours} simulated hour(s) at {SPEED}x in {elapsed:.1} s; {periods} offline periods \
         scheduled per flapper"
    );
    println!(
        "deliveries in the window: {TCP_FLAP} {} reads served, {MQTT_FLAP} {} messages \
         published; neighbours {}",
        per_node(TCP_FLAP),
        per_node(MQTT_FLAP),
        neighbour_deliveries.len()
    );
    println!("offline periods published upstream (node, periods, statuses): {seen:?}");
    println!(
        "{TCP_FLAP}: {flapper_timeouts} timeouts; Modbus neighbours' answered polls/s (configured \
         {:.1}): {rates:?}",
        1.0 / settings.poll_interval_s
    );
    println!("MQTT bus: {mqtt_stats:?}");
    println!(
        "written: {} readings, {alarm_points} alarm points, {} out of order; dead letters {}, \
         drops {drops:?}",
        written.len(),
        disorder.len(),
        dead.len()
    );
    println!("{}", flap_cmp.summary("flappers"));
    println!("{}", neighbour_cmp.summary("neighbours"));
    println!("run time {:.1} s", started.elapsed().as_secs_f64());

    ensure!(all_written, "the sink did not catch up");
    ensure!(
        per_node(TCP_FLAP) > 10 && per_node(MQTT_FLAP) > 100,
        "the flappers delivered too little to judge"
    );
    ensure!(clean(&flap_cmp), "{}", flap_cmp.summary("flappers"));
    ensure!(
        clean(&neighbour_cmp),
        "{}",
        neighbour_cmp.summary("neighbours")
    );
    ensure!(
        disorder.is_empty(),
        "written out of order: {:?}",
        &disorder[..disorder.len().min(8)]
    );
    for (node, p, _) in &seen {
        ensure!(
            *p as u64 == periods,
            "{node}: {p} offline periods published upstream, {periods} scheduled"
        );
    }
    ensure!(
        slowest >= 0.8 / settings.poll_interval_s,
        "a neighbour of the flapping node was polled {slowest:.2}/s, configured {:.2}/s",
        1.0 / settings.poll_interval_s
    );
    ensure!(
        drops.is_empty() && dead.is_empty(),
        "drops {drops:?}, dead {dead:?}"
    );
    Ok(())
}
