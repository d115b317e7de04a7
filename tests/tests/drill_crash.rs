//! Fault drills for crashes and the upstream broker (issue 7), against the `tianzhong` binary
//! run as a child process on a data directory of its own, its durable outbox on:
//!
//! 1. **SIGKILL**: 1,000 simulated MQTT nodes publish telemetry (QoS 1) to mosquitto, once a
//!    second each (about 2,670 readings/s); the gateway subscribes and writes to
//!    VictoriaMetrics and to an upstream mosquitto. It is SIGKILLed 10 times at random moments
//!    (a seeded generator; the seed is printed, `TIANZHONG_DRILL_SEED` replays it) and started
//!    again each time on the same data directory. Then the nodes stop, the gateway drains,
//!    and every reading the nodes published once the gateway had subscribed must be in both
//!    sinks, exactly as sampled, and no reading twice in different copies.
//! 2. **Upstream broker**: the upstream mosquitto (with persistence, and a subscriber with a
//!    persistent session, so that the broker itself loses nothing) is stopped for a while and
//!    started again; a few nodes drop their connections meanwhile (their wills and new online
//!    status reach the gateway during the outage). VictoriaMetrics must get every reading
//!    published during the outage before the broker is back, and upstream every reading
//!    exactly once per (node, seq) after it is.
//!
//! **Copies.** The outbox delivers at least once: a batch written but not yet confirmed when
//! the gateway died is written again after the restart, and an MQTT message stored but not yet
//! acknowledged when it died is delivered again by the broker. Sinks are meant to be
//! idempotent: InfluxDB's point identity is series + timestamp, an upstream consumer drops a
//! repeated (node, seq). VictoriaMetrics, without `-dedup.minScrapeInterval=1ms` (as here),
//! keeps each copy, so its export shows them: the drills count them ("replayed") and require
//! every copy of a reading to be identical — same series, timestamp, value and flag — so that
//! either identity collapses them into exactly one. A reading held in copies that differ is a
//! duplicate no sink collapses, and fails the drill.
//!
//! **Brokers.** mosquitto keeps at most `max_inflight_messages` (default 20) QoS 1 messages
//! unacknowledged per client; the gateway acknowledges a message only once its readings are
//! committed to the outbox (a group commit every `fsync_interval_ms`, 20 ms), so 20 in flight
//! would cap the source near 20 messages per commit. The drills raise it to 1,000 on both
//! brokers (`MosquittoOptions`); `max_queued_messages` is 100,000. (mosquitto 2.0.11 holds to
//! the in-flight limit only loosely: after a reconnect it sends everything still
//! unacknowledged again on top of it.) In the SIGKILL drill the field broker logs every packet,
//! and the drill counts, per connection of the gateway's source, the messages sent new, sent
//! again and acknowledged — what each kill left unacknowledged.
//!
//! `TIANZHONG_SOAK=1` runs the long variants (40 kills with up to 20 s between them, and
//! 1,000 nodes with a 5-minute upstream outage). The gateway's log is kept in the drill's
//! directory and its tail printed on failure; `RUST_LOG` is passed to it.
//!
//! Needs `/usr/sbin/mosquitto` and `/usr/bin/victoria-metrics` (see `services`); builds the
//! gateway binary with cargo unless `TIANZHONG_BIN` names one (see `drill`).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure};
use tianzhong_simulator::fault::{Fault, ScheduledFault, Target};
use tianzhong_tests::check::{self, Collector, Key, Truth};
use tianzhong_tests::drill::{self, Account, GatewayProcess, Rng, Subscriber};
use tianzhong_tests::fleet::{FleetBuilder, GatewaySettings, SITE, SimFleet};
use tianzhong_tests::gateway::{init_logs, sum};
use tianzhong_tests::services::{Mosquitto, MosquittoOptions, TempDir, VictoriaMetrics, free_port};

/// The drills take turns: each loads the machine on its own.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Longest wait for anything that takes seconds on an idle machine.
const PATIENCE: Duration = Duration::from_secs(90);

/// How often a running gateway's metrics are read.
const SCRAPE: Duration = Duration::from_millis(100);

/// The brokers' settings: see the module documentation.
fn broker_options(persistence: bool) -> MosquittoOptions {
    MosquittoOptions {
        max_inflight_messages: 1000,
        max_queued_messages: 100_000,
        persistence,
        log_all: false,
    }
}

/// (node, seq) of every telemetry message the broker acknowledged at or after `from` simulated
/// ms (and before `to`, when given).
fn published(sim: &SimFleet, from: u64, to: Option<u64>) -> HashSet<(String, u32)> {
    sim.fleet
        .truth
        .published()
        .into_iter()
        .filter(|d| d.time_ms >= from && to.is_none_or(|to| d.time_ms < to))
        .map(|d| (d.node.to_string(), d.seq))
        .collect()
}

/// What one gateway process did, as its metrics told.
#[derive(Debug, Default)]
struct Life {
    run: usize,
    /// Age at which it is to be killed (`None`: the last run).
    planned: Option<Duration>,
    /// Pause after the kill before the next start.
    downtime: Duration,
    /// Age when `/metrics` first answered.
    serving_s: Option<f64>,
    /// Age when its MQTT source was connected.
    connected_s: Option<f64>,
    /// Age when it first wrote to VictoriaMetrics: forwarding resumed.
    first_write_s: Option<f64>,
    /// Age when upstream first acknowledged a message from it.
    first_upstream_s: Option<f64>,
    /// Age at the kill.
    lived_s: f64,
    /// Simulated ms at the kill.
    killed_at: Option<u64>,
    /// Its counters at the last scrape.
    received: f64,
    duplicates_dropped: f64,
    written: f64,
    upstream_acked: f64,
}

impl Life {
    fn observe(&mut self, age: f64, text: &str) {
        self.serving_s.get_or_insert(age);
        if sum(text, "tianzhong_mqtt_connected", &[("client", "source")]) >= 1.0 {
            self.connected_s.get_or_insert(age);
        }
        self.received = sum(text, "tianzhong_readings_received_total", &[]);
        self.duplicates_dropped = sum(
            text,
            "tianzhong_readings_dropped_total",
            &[("reason", "duplicate")],
        );
        self.written = sum(
            text,
            "tianzhong_sink_points_total",
            &[("sink", "influxdb"), ("result", "written")],
        );
        self.upstream_acked = sum(
            text,
            "tianzhong_sink_points_total",
            &[("sink", "upstream_mqtt"), ("result", "acknowledged")],
        );
        if self.written > 0.0 {
            self.first_write_s.get_or_insert(age);
        }
        if self.upstream_acked > 0.0 {
            self.first_upstream_s.get_or_insert(age);
        }
    }

    fn row(&self) -> String {
        let s = |v: Option<f64>| v.map_or("    -".to_owned(), |v| format!("{v:5.2}"));
        format!(
            "{:>3} | {:>6.2} | {:>5.2} | {} | {} | {} | {} | {:>8} | {:>6} | {:>8} | {:>8}",
            self.run,
            self.lived_s,
            self.downtime.as_secs_f64(),
            s(self.serving_s),
            s(self.connected_s),
            s(self.first_write_s),
            s(self.first_upstream_s),
            self.received as u64,
            self.duplicates_dropped as u64,
            self.written as u64,
            self.upstream_acked as u64,
        )
    }
}

const LIFE_HEADER: &str = "run | lived s | down s | /metrics s | source s | first write s | \
                           first upstream s | received | dup dropped | written | upstream acked";

/// Reads the gateway's metrics every [`SCRAPE`] until `done` holds for the life so far or it
/// is `until` old (`None`: `PATIENCE`, and then it is an error); fails if the process exits.
async fn watch(
    gw: &mut GatewayProcess,
    life: &mut Life,
    until: Option<Duration>,
    log: &Path,
    done: impl Fn(&Life) -> bool,
) -> anyhow::Result<()> {
    loop {
        if let Some(status) = gw.exited() {
            bail!(
                "gateway run {} exited by itself ({status}) at {:.2} s; its log ends:\n{}",
                life.run,
                gw.age().as_secs_f64(),
                drill::log_tail(log, 40)
            );
        }
        if let Some(text) = gw.metrics().await {
            life.observe(gw.age().as_secs_f64(), &text);
        }
        if done(life) {
            return Ok(());
        }
        let age = gw.age();
        match until {
            Some(until) if age >= until => return Ok(()),
            Some(until) => tokio::time::sleep(SCRAPE.min(until - age)).await,
            None if age > PATIENCE => bail!(
                "gateway run {} did not get going within {PATIENCE:?}: {life:?}; its log ends:\n{}",
                life.run,
                drill::log_tail(log, 40)
            ),
            None => tokio::time::sleep(SCRAPE).await,
        }
    }
}

/// A drill's gateway: its directory (data, configuration and log inside), the HTTP address
/// it serves metrics on, and its configuration for `sim`'s fleet — MQTT source `broker`,
/// VictoriaMetrics `vm`, upstream `upstream` under `prefix`, the outbox on — written to disk.
fn gateway_files(
    name: &str,
    sim: &SimFleet,
    broker: SocketAddr,
    vm: &VictoriaMetrics,
    upstream: SocketAddr,
    prefix: &str,
) -> anyhow::Result<(TempDir, SocketAddr, std::path::PathBuf, std::path::PathBuf)> {
    let dir = TempDir::new(name)?;
    let http = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let settings = GatewaySettings {
        mqtt_source: Some(broker),
        influxdb: Some(vm.url()),
        upstream: Some((upstream, prefix.to_owned())),
        ..GatewaySettings::new(&dir.path().join("data"))
    };
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        drill::gateway_config(
            &sim.gateway_toml(&settings),
            http,
            "[outbox]\nenabled = true\n",
        ),
    )?;
    let log = dir.path().join("gateway.log");
    Ok((dir, http, config, log))
}

/// Builds (or finds) the gateway binary off the runtime's threads.
async fn binary() -> anyhow::Result<std::path::PathBuf> {
    tokio::task::spawn_blocking(drill::gateway_binary).await?
}

/// Waits until the upstream messages hold every key of `required`, for at most `timeout`;
/// returns how many they hold.
async fn wait_upstream_holds(
    messages: impl Fn() -> Vec<check::Message>,
    prefix: &str,
    required: &HashSet<Key>,
    timeout: Duration,
) -> usize {
    let deadline = Instant::now() + timeout;
    loop {
        let keys = drill::upstream_keys(prefix, &messages());
        let found = required.iter().filter(|k| keys.contains(*k)).count();
        if found == required.len() || Instant::now() > deadline {
            return found;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn log_errors(log: &Path) -> Vec<String> {
    drill::log_grep(log, &[" ERROR ", "panicked", "WARN"], 12)
}

/// Drill 1: SIGKILL the gateway 10 times at random moments under 1,000 MQTT nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_ten_times_under_1000_nodes_the_gateway_loses_and_duplicates_nothing()
-> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    init_logs();
    let started = Instant::now();
    let soak = drill::soak();
    let seed = drill::seed();
    let (kills, uptime, linger) = if soak {
        (40, (0.3, 20.0), Duration::from_secs(60))
    } else {
        (10, (0.3, 6.0), Duration::from_secs(8))
    };
    const NODES: usize = 1000;
    const PREFIX: &str = "drill/upstream";
    println!(
        "drill seed {seed} ({}={seed} replays the kill moments); {kills} kills{}",
        drill::SEED_ENV,
        if soak { " (soak)" } else { "" }
    );
    let mut rng = Rng::new(seed);
    let bin = binary().await?;

    let vm = VictoriaMetrics::start()?;
    // The field broker logs every packet (some 30 MB), so that what it sent the gateway again
    // after each restart can be counted; not in the soak (hundreds of MB).
    let broker = Mosquitto::start_with(&MosquittoOptions {
        log_all: !soak,
        ..broker_options(false)
    })?;
    let upstream = Mosquitto::start_with(&broker_options(false))?;
    let mut fleet = FleetBuilder::new()?;
    fleet.mqtt("mqtt", broker.addr(), NODES);
    let mut sim = fleet.start().await?;
    ensure!(
        sim.wait_mqtt_connected(PATIENCE).await,
        "the {NODES} MQTT nodes did not all connect: {:?}",
        sim.mqtt_stats()
    );
    let collector = Collector::start(upstream.addr(), &format!("{PREFIX}/#")).await?;

    // `_dir` holds the directory until the drill ends.
    let (_dir, http, config, log) = gateway_files(
        "tz-drill-kill",
        &sim,
        broker.addr(),
        &vm,
        upstream.addr(),
        PREFIX,
    )?;
    let setup_s = started.elapsed().as_secs_f64();

    // Run 0 starts the drill: once it forwards, its subscription is in place and every message
    // the broker accepts from then on must end up in the sinks.
    let mut lives: Vec<Life> = Vec::new();
    let mut gw = GatewayProcess::spawn(&bin, &config, &log, http, "run 0")?;
    let mut life = Life::default();
    watch(&mut gw, &mut life, None, &log, |l| {
        l.connected_s.is_some() && l.first_write_s.is_some()
    })
    .await?;
    let window_start = sim.now();
    for run in 0..=kills {
        if run > 0 {
            gw = GatewayProcess::spawn(&bin, &config, &log, http, &format!("run {run}"))?;
            life = Life {
                run,
                ..Life::default()
            };
        }
        if run == kills {
            break;
        }
        let planned = rng.duration(
            Duration::from_secs_f64(uptime.0),
            Duration::from_secs_f64(uptime.1),
        );
        // Run 0 lives its random time on top of getting going.
        let until = if run == 0 {
            gw.age() + planned
        } else {
            planned
        };
        life.planned = Some(until);
        watch(&mut gw, &mut life, Some(until), &log, |_| false).await?;
        life.lived_s = gw.age().as_secs_f64();
        life.killed_at = Some(sim.now());
        let status = gw.kill()?;
        ensure!(
            status.code().is_none(),
            "gateway run {run} had exited before the kill: {status}"
        );
        life.downtime = rng.duration(Duration::ZERO, Duration::from_millis(1500));
        tokio::time::sleep(life.downtime).await;
        lives.push(std::mem::take(&mut life));
    }

    // The last run: forwarding again, then a while of steady state before the nodes stop.
    watch(&mut gw, &mut life, None, &log, |l| {
        l.first_write_s.is_some()
    })
    .await?;
    let until = gw.age() + linger;
    watch(&mut gw, &mut life, Some(until), &log, |_| false).await?;
    let stop_at = sim.now();
    let node_stats = sim.mqtt_stats();
    sim.stop_transports().await;
    let stopped = Instant::now();

    let truth = Truth::new(sim.fleet.truth.samples(), sim.quantities(), SITE);
    let required_messages = published(&sim, window_start, None);
    let required = truth.keys_of(&required_messages);
    let delivered = published(&sim, 0, None);
    let vm_found = drill::wait_vm_holds(&vm, &required, Duration::from_secs(180)).await?;
    let vm_drain_s = stopped.elapsed().as_secs_f64();
    let up_found = wait_upstream_holds(
        || collector.messages(),
        PREFIX,
        &required,
        Duration::from_secs(120),
    )
    .await;
    let up_drain_s = stopped.elapsed().as_secs_f64();
    let until = gw.age();
    watch(&mut gw, &mut life, Some(until), &log, |_| false).await?;
    life.lived_s = gw.age().as_secs_f64();
    let stopping = Instant::now();
    let exit = gw.terminate(Duration::from_secs(60));
    let shutdown_s = stopping.elapsed().as_secs_f64();
    lives.push(life);

    vm.force_flush().await?;
    let series = vm
        .export_matching(r#"{__name__=~".+_(value|seq|quality_code)"}"#)
        .await?;
    let (in_vm, unjoined) = drill::vm_readings(&series);
    let vm_account = Account::of(&truth, &in_vm, &required, &delivered);
    let messages = collector.messages();
    let (upstream_held, unparsed) = check::upstream_readings(PREFIX, &messages);
    let up_account = Account::of(&truth, &upstream_held, &required, &delivered);

    let total_published = sim.fleet.truth.published().len();
    println!(
        "fleet: {NODES} MQTT nodes, {} samples taken; {total_published} telemetry messages \
         published (PUBACKed by mosquitto), {} of them ({} readings) after the gateway first \
         subscribed, over {:.1} s; nodes: {node_stats:?}",
        truth.samples.len(),
        required_messages.len(),
        required.len(),
        (stop_at - window_start) as f64 / 1000.0,
    );
    println!("gateway lives (ages in s from the process's start):\n{LIFE_HEADER}");
    for l in &lives {
        println!("{}", l.row());
    }
    let resumed: Vec<f64> = lives[1..].iter().filter_map(|l| l.first_write_s).collect();
    if !resumed.is_empty() {
        let mut sorted = resumed.clone();
        sorted.sort_by(f64::total_cmp);
        println!(
            "forwarding resumed after {} of {} restarts (the others were killed first): \
             {:.2} s median, {:.2} s at most, from the process's start",
            resumed.len(),
            lives.len() - 1,
            sorted[sorted.len() / 2],
            sorted[sorted.len() - 1]
        );
    }
    println!(
        "drain after the nodes stopped: VictoriaMetrics held {vm_found}/{} readings after \
         {vm_drain_s:.1} s, upstream {up_found}/{} after {up_drain_s:.1} s; clean shutdown \
         {exit:?} in {shutdown_s:.1} s",
        required.len(),
        required.len()
    );
    println!("{}", vm_account.summary("VictoriaMetrics"));
    println!(
        "{}\n  upstream: {} messages, {} unparsed",
        up_account.summary("upstream MQTT"),
        messages.len(),
        unparsed.len()
    );
    let received: f64 = lives.iter().map(|l| l.received).sum();
    println!(
        "the MQTT source received {} readings in all its lives (as last read before each kill), \
         for {} distinct readings held",
        received as u64, vm_account.readings
    );
    let sessions = drill::broker_sessions(&broker.log(), "gw-e2e-source");
    // Without `log_all` (the soak) the log has the connections but not the packets.
    if sessions.iter().any(|s| s.sent > 0) {
        println!(
            "the field broker and the gateway's source, per connection (sent new / sent again / \
             acknowledged / unacknowledged at its end):"
        );
        for (i, s) in sessions.iter().enumerate() {
            println!(
                "  {i:>2}: {:>6} / {:>6} / {:>6} / {:>6}",
                s.sent, s.resent, s.acked, s.unacked_at_end
            );
        }
        let sent: u64 = sessions.iter().map(|s| s.sent).sum();
        let resent: u64 = sessions.iter().map(|s| s.resent).sum();
        println!(
            "  in all: {sent} messages sent, {resent} sent again after a restart ({:.1} %)",
            resent as f64 * 100.0 / sent.max(1) as f64
        );
    }
    let broker_drops = drill::log_grep(&broker.log(), &["dropped"], 5);
    println!("field broker, messages dropped (its log): {broker_drops:?}");
    let kills_at: Vec<u64> = lives.iter().filter_map(|l| l.killed_at).collect();
    println!(
        "VictoriaMetrics copies by when the reading was sampled: {}",
        replay_profile(&truth, &in_vm, &kills_at)
    );
    println!(
        "upstream copies by when the reading was sampled: {}",
        replay_profile(&truth, &upstream_held, &kills_at)
    );
    println!(
        "MQTT source sessions: {:?}",
        drill::log_grep(&log, &["session_present"], 20)
            .iter()
            .map(|l| l.contains("session_present=true"))
            .collect::<Vec<_>>()
    );
    let errors = log_errors(&log);
    if !errors.is_empty() {
        println!("gateway log, warnings and errors (first 12):");
        for e in &errors {
            println!("  {e}");
        }
    }
    drill::keep_log(&log, &format!("sigkill-{seed}"));
    drill::keep_log(&broker.log(), &format!("sigkill-{seed}-broker"));
    println!(
        "drill time {:.1} s (setup {setup_s:.1} s)",
        started.elapsed().as_secs_f64()
    );

    let exit = exit?;
    ensure!(exit.success(), "the last gateway run exited with {exit}");
    ensure!(
        required.len() >= NODES * 2 * 10,
        "too few readings to judge: {}",
        required.len()
    );
    ensure!(
        unjoined.is_empty(),
        "VictoriaMetrics samples that do not join into readings: {:?}",
        &unjoined[..unjoined.len().min(8)]
    );
    ensure!(
        unparsed.is_empty(),
        "upstream messages that do not parse: {:?}",
        &unparsed[..unparsed.len().min(8)]
    );
    ensure!(
        vm_account.exact(),
        "{}\nthe field broker's log on dropping: {broker_drops:?}\ngateway log ends:\n{}",
        vm_account.summary("VictoriaMetrics"),
        drill::log_tail(&log, 30)
    );
    ensure!(
        up_account.exact(),
        "{}\ngateway log ends:\n{}",
        up_account.summary("upstream MQTT"),
        drill::log_tail(&log, 30)
    );
    Ok(())
}

/// Drill 2: the upstream broker stopped for a while and started again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_broker_stopped_and_restarted_gets_every_reading_once_and_victoria_metrics_never_waits()
-> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    init_logs();
    let started = Instant::now();
    let soak = drill::soak();
    let (nodes, outage) = if soak {
        (1000, Duration::from_secs(300))
    } else {
        (200, Duration::from_secs(20))
    };
    const PREFIX: &str = "drill/up";
    /// Readings published this long before the broker came back must already be in
    /// VictoriaMetrics by then (its flush interval, the outbox's commit and a loaded machine).
    const VM_LAG_MS: u64 = 5_000;
    /// Nodes that drop their connection during the outage.
    const CHURN: usize = 5;
    let bin = binary().await?;

    let vm = VictoriaMetrics::start()?;
    let broker = Mosquitto::start_with(&broker_options(false))?;
    let mut upstream = Mosquitto::start_with(&broker_options(true))?;
    let mut fleet = FleetBuilder::new()?;
    let ids = fleet.mqtt("mqtt", broker.addr(), nodes);
    let mut sim = fleet.start().await?;
    ensure!(
        sim.wait_mqtt_connected(PATIENCE).await,
        "the MQTT nodes did not all connect"
    );
    let subscriber = Subscriber::start(
        upstream.addr(),
        &format!("{PREFIX}/#"),
        "drill-upstream-subscriber",
        true,
    )
    .await?;

    // `_dir` holds the directory until the drill ends.
    let (_dir, http, config, log) = gateway_files(
        "tz-drill-upstream",
        &sim,
        broker.addr(),
        &vm,
        upstream.addr(),
        PREFIX,
    )?;
    let mut gw = GatewayProcess::spawn(&bin, &config, &log, http, "drill")?;
    let mut life = Life::default();
    watch(&mut gw, &mut life, None, &log, |l| {
        l.connected_s.is_some() && l.first_write_s.is_some() && l.first_upstream_s.is_some()
    })
    .await?;
    let window_start = sim.now();
    let until = gw.age() + Duration::from_secs(5);
    watch(&mut gw, &mut life, Some(until), &log, |_| false).await?;

    // The outage. A few nodes drop their connections in its middle: the broker publishes
    // their wills and they come back with a new online status, events the gateway forwards
    // upstream while upstream is away.
    let upstream_connected =
        |text: &str| sum(text, "tianzhong_mqtt_connected", &[("client", "upstream")]) >= 1.0;
    let outage_from = sim.now();
    let messages_before = subscriber.len();
    upstream.stop()?;
    let outage_started = Instant::now();
    let churn_from = outage_from + outage.as_millis() as u64 / 4;
    let churned: Vec<_> = ids
        .iter()
        .step_by(nodes / CHURN)
        .take(CHURN)
        .cloned()
        .collect();
    for id in &churned {
        sim.fleet.faults.add(ScheduledFault {
            fault: Fault::DropConnection,
            target: Target::Node(id.clone()),
            from_ms: churn_from,
            until_ms: Some(churn_from + 3_000),
        });
    }
    let mut noticed_s = None;
    let mut vm_counts = Vec::new();
    while outage_started.elapsed() < outage {
        if let Some(status) = gw.exited() {
            bail!(
                "the gateway exited during the outage ({status}); its log ends:\n{}",
                drill::log_tail(&log, 40)
            );
        }
        let mut received = None;
        if let Some(text) = gw.metrics().await {
            if noticed_s.is_none() && !upstream_connected(&text) {
                noticed_s = Some(outage_started.elapsed().as_secs_f64());
            }
            received = Some(sum(&text, "tianzhong_readings_received_total", &[]) as u64);
        }
        vm.force_flush().await?;
        vm_counts.push((
            (outage_started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
            drill::vm_sample_count(&vm, r#"{__name__=~".+_seq"}"#).await?,
            received,
        ));
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    // Before the broker is back: VictoriaMetrics holds what was published during the outage.
    let restart_at = sim.now();
    let outage_required = truth_keys(&sim, outage_from, restart_at - VM_LAG_MS);
    let vm_before_restart = drill::vm_seq_keys(&vm).await?;
    let outage_missing: Vec<&Key> = outage_required
        .iter()
        .filter(|k| !vm_before_restart.contains(*k))
        .collect();
    let churn_stats = sim.mqtt_stats();
    upstream.restart()?;
    let restarted = Instant::now();
    let outage_s = (restart_at - outage_from) as f64 / 1000.0;

    // After it: reconnected, the first message through, the backlog delivered.
    let mut reconnected_s = None;
    let mut first_message_s = None;
    let backlog = truth_keys(&sim, window_start, restart_at);
    let mut caught_up_s = None;
    let mut last_check = Instant::now() - Duration::from_secs(10);
    while restarted.elapsed() < PATIENCE * 2 && caught_up_s.is_none() {
        if let Some(status) = gw.exited() {
            bail!(
                "the gateway exited after the outage ({status}); its log ends:\n{}",
                drill::log_tail(&log, 40)
            );
        }
        if reconnected_s.is_none()
            && let Some(text) = gw.metrics().await
            && upstream_connected(&text)
        {
            reconnected_s = Some(restarted.elapsed().as_secs_f64());
        }
        if first_message_s.is_none() && subscriber.len() > messages_before {
            first_message_s = Some(restarted.elapsed().as_secs_f64());
        }
        if first_message_s.is_some() && last_check.elapsed() >= Duration::from_secs(1) {
            last_check = Instant::now();
            let keys = drill::upstream_keys(PREFIX, &subscriber.messages());
            if backlog.iter().all(|k| keys.contains(k)) {
                caught_up_s = Some(restarted.elapsed().as_secs_f64());
            }
        }
        tokio::time::sleep(SCRAPE).await;
    }
    let until = gw.age() + Duration::from_secs(5);
    watch(&mut gw, &mut life, Some(until), &log, |_| false).await?;

    let stop_at = sim.now();
    sim.stop_transports().await;
    let stopped = Instant::now();
    let truth = Truth::new(sim.fleet.truth.samples(), sim.quantities(), SITE);
    let required_messages = published(&sim, window_start, None);
    let required = truth.keys_of(&required_messages);
    let delivered = published(&sim, 0, None);
    let vm_found = drill::wait_vm_holds(&vm, &required, Duration::from_secs(120)).await?;
    let up_found = wait_upstream_holds(
        || subscriber.messages(),
        PREFIX,
        &required,
        Duration::from_secs(120),
    )
    .await;
    let drain_s = stopped.elapsed().as_secs_f64();
    let exit = gw.terminate(Duration::from_secs(60));

    vm.force_flush().await?;
    let series = vm
        .export_matching(r#"{__name__=~".+_(value|seq|quality_code)"}"#)
        .await?;
    let (in_vm, unjoined) = drill::vm_readings(&series);
    let vm_account = Account::of(&truth, &in_vm, &required, &delivered);
    let messages = subscriber.messages();
    let (upstream_held, unparsed) = check::upstream_readings(PREFIX, &messages);
    let up_account = Account::of(&truth, &upstream_held, &required, &delivered);
    let statuses = messages
        .iter()
        .filter(|(t, _)| t.ends_with("/status"))
        .count();
    // Each churned node went offline and came back while upstream was away: both changes
    // must reach upstream, in that order, once it is back.
    let churn_seen: Vec<(String, Vec<bool>)> = churned
        .iter()
        .map(|id| {
            let suffix = format!("/{id}/status");
            let changes = messages[messages_before.min(messages.len())..]
                .iter()
                .filter(|(t, _)| t.ends_with(&suffix))
                .filter_map(|(_, p)| {
                    serde_json::from_slice::<serde_json::Value>(p).ok()?["online"].as_bool()
                })
                .collect();
            (id.to_string(), changes)
        })
        .collect();
    let churn_missing: Vec<&(String, Vec<bool>)> = churn_seen
        .iter()
        .filter(|(_, changes)| {
            let Some(off) = changes.iter().position(|online| !online) else {
                return true;
            };
            !changes[off..].contains(&true)
        })
        .collect();

    println!(
        "fleet: {nodes} MQTT nodes; {} telemetry messages ({} readings) published from the \
         gateway's start over {:.1} s; {CHURN} nodes dropped their connections during the \
         outage (reconnects so far: {})",
        required_messages.len(),
        required.len(),
        (stop_at - window_start) as f64 / 1000.0,
        churn_stats.iter().map(|s| s.reconnects).sum::<u64>(),
    );
    println!(
        "upstream broker stopped for {outage_s:.1} s; the gateway noticed after {noticed_s:?} s; \
         during the outage (s, VictoriaMetrics `_seq` samples, readings the gateway received): \
         {vm_counts:?}"
    );
    println!(
        "published during the outage up to {VM_LAG_MS} ms before its end: {} readings, {} of \
         them not in VictoriaMetrics before the broker was back",
        outage_required.len(),
        outage_missing.len()
    );
    println!(
        "after the restart: upstream reconnected in {reconnected_s:?} s, first message to the \
         subscriber after {first_message_s:?} s, the backlog ({} readings) delivered after \
         {caught_up_s:?} s; subscriber connects {}",
        backlog.len(),
        subscriber.connects()
    );
    println!(
        "drain after the nodes stopped: {drain_s:.1} s (VictoriaMetrics {vm_found}/{n}, \
         upstream {up_found}/{n}); gateway exit {exit:?}",
        n = required.len()
    );
    println!("{}", vm_account.summary("VictoriaMetrics"));
    println!(
        "{}\n  upstream: {} messages ({statuses} status), {} unparsed",
        up_account.summary("upstream MQTT"),
        messages.len(),
        unparsed.len()
    );
    println!(
        "brokers, messages dropped (their logs): field {:?}, upstream {:?}",
        drill::log_grep(&broker.log(), &["dropped"], 5),
        drill::log_grep(&upstream.log(), &["dropped"], 5)
    );
    let errors = log_errors(&log);
    if !errors.is_empty() {
        println!("gateway log, warnings and errors (first 12):");
        for e in &errors {
            println!("  {e}");
        }
    }
    drill::keep_log(&log, "upstream");
    println!("drill time {:.1} s", started.elapsed().as_secs_f64());

    ensure!(
        noticed_s.is_some(),
        "the gateway never reported the upstream broker gone"
    );
    ensure!(
        outage_missing.is_empty(),
        "VictoriaMetrics waited for the upstream broker: {} of {} readings published during \
         the outage were not stored before it came back, e.g. {:?}; (s, `_seq` samples, readings \
         received) during the outage: {vm_counts:?}\ngateway log ends:\n{}",
        outage_missing.len(),
        outage_required.len(),
        &outage_missing[..outage_missing.len().min(5)],
        drill::log_tail(&log, 30)
    );
    println!(
        "status changes upstream of the churned nodes after the outage began (online?): {churn_seen:?}"
    );
    ensure!(
        churn_missing.is_empty(),
        "the churned nodes' offline-then-online changes did not all reach upstream: {churn_missing:?}"
    );
    ensure!(
        reconnected_s.is_some() && caught_up_s.is_some(),
        "upstream did not recover: reconnected {reconnected_s:?}, caught up {caught_up_s:?}"
    );
    let exit = exit?;
    ensure!(exit.success(), "the gateway exited with {exit}");
    ensure!(
        unjoined.is_empty() && unparsed.is_empty(),
        "unjoined {:?}, unparsed {:?}",
        &unjoined[..unjoined.len().min(5)],
        &unparsed[..unparsed.len().min(5)]
    );
    ensure!(
        vm_account.exact(),
        "{}",
        vm_account.summary("VictoriaMetrics")
    );
    ensure!(
        up_account.exact(),
        "{}",
        up_account.summary("upstream MQTT")
    );
    Ok(())
}

/// How the readings held more than once spread: by number of copies, and by how long before
/// the next kill (simulated time) they were sampled, in seconds.
fn replay_profile(
    truth: &Truth,
    held: &std::collections::HashMap<Key, Vec<check::Observed>>,
    kills_at: &[u64],
) -> String {
    let mut by_copies = std::collections::BTreeMap::<usize, usize>::new();
    let mut by_lead = std::collections::BTreeMap::<u64, usize>::new();
    for (key, copies) in held {
        if copies.len() < 2 {
            continue;
        }
        *by_copies.entry(copies.len()).or_default() += 1;
        if let Some(sample) = truth.samples.get(key) {
            let lead = kills_at
                .iter()
                .filter(|&&k| k >= sample.time_ms)
                .map(|k| (k - sample.time_ms) / 1000)
                .min()
                .unwrap_or(u64::MAX);
            *by_lead.entry(lead.min(99)).or_default() += 1;
        }
    }
    format!(
        "readings by copies {by_copies:?}; by whole seconds sampled before the next kill (99: \
         after the last) {by_lead:?}"
    )
}

/// The reading keys of the messages published in `[from, to)` simulated ms.
fn truth_keys(sim: &SimFleet, from: u64, to: u64) -> HashSet<Key> {
    let messages = published(sim, from, Some(to));
    let mut keys = HashSet::new();
    for s in sim.fleet.truth.samples() {
        if messages.contains(&(s.node.to_string(), s.seq)) {
            keys.insert((s.node.to_string(), s.channel, s.seq));
        }
    }
    keys
}
