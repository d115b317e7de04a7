//! Assembling a gateway from its configuration and running it.
//!
//! [`Gateway::start`] wires the pipeline — one task per Modbus bus, the MQTT source, the
//! ingestion stage and one task per sink — and returns at once; [`Gateway::shutdown`] stops
//! the sources, lets the ingestion stage drain and waits for every sink to flush.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tianzhong_protocol::NodeId;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::info;

use crate::alarm::AlarmEngine;
use crate::auth::Users;
use crate::config::Config;
use crate::metrics::{DeviceCounters, DeviceRow, DeviceTable, Metrics};
use crate::outbox::{Outbox, OutboxConfig};
use crate::pipeline::{Acker, Delivery, Ingest};
use crate::sinks::influx::writer::{Writer, WriterConfig};
use crate::sinks::{alarm_audit, influx, local_store, upstream_mqtt};
use crate::sources::modbus::bus::BusTask;
use crate::sources::mqtt;
use crate::transforms::Transforms;

/// A running gateway.
pub struct Gateway {
    metrics: Arc<Metrics>,
    first_run_secret: Option<String>,
    http_addr: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    sources: Vec<JoinHandle<()>>,
    ingest: JoinHandle<()>,
    sinks: Vec<JoinHandle<()>>,
    http: Option<JoinHandle<()>>,
    outbox: Option<Arc<Outbox>>,
    engine: Option<crate::pipeline::SharedEngine>,
    accounts: Arc<crate::pipeline::Accounts>,
}

/// What a reloaded gateway takes over from the one it replaces: the alarm engine (every
/// alarm's state, the rules changed at run time) and the completeness accounts. The outbox is
/// on disk and needs no carrying.
#[derive(Default)]
pub struct Carried {
    /// The alarm engine.
    pub engine: Option<crate::pipeline::SharedEngine>,
    /// The accounts.
    pub accounts: Option<Arc<crate::pipeline::Accounts>>,
}

/// The outbox's file under the data directory.
pub const OUTBOX_FILE: &str = "outbox.sqlite";

impl Gateway {
    /// Starts everything the configuration describes.
    pub async fn start(config: Config) -> anyhow::Result<Gateway> {
        Gateway::start_carrying(config, Carried::default()).await
    }

    /// Starts with what a predecessor carried over (see [`Gateway::reload`]).
    pub async fn start_carrying(config: Config, carried: Carried) -> anyhow::Result<Gateway> {
        let metrics = Arc::new(Metrics::new(DeviceTable {
            rows: config
                .devices
                .iter()
                .map(|d| DeviceRow {
                    bus: d.bus.clone(),
                    device: d.id.to_string(),
                    unit_label: d.unit.to_string(),
                    counters: DeviceCounters::default(),
                })
                .collect(),
        }));
        let (shutdown, shutdown_rx) = watch::channel(false);
        let queue = config.pipeline.queue_batches;
        let (events, events_rx) = mpsc::channel(queue);
        // Feeders (from the outbox) and sinks; on shutdown both are waited for.
        let mut sinks = Vec::new();
        let mut sink_tasks = Vec::new();
        let mut ingest = Ingest::new(
            events_rx,
            Transforms::new(&config.pipeline, &config.calibrations),
            Arc::clone(&metrics),
        );
        if let Some(accounts) = carried.accounts {
            ingest = ingest.with_accounts(accounts);
        }
        let mut carried_transitions = Vec::new();
        std::fs::create_dir_all(&config.gateway.data_dir).with_context(|| {
            format!(
                "creating data directory {}",
                config.gateway.data_dir.display()
            )
        })?;
        // The durable outbox, with a cursor for each sink the configuration names.
        let mut sink_names: Vec<&str> = Vec::new();
        if config.alarms_enabled {
            sink_names.push(alarm_audit::SINK);
        }
        if config.local_store.is_some() {
            sink_names.push(local_store::SINK);
        }
        if config.influxdb.is_some() {
            sink_names.push(influx::sink::SINK);
        }
        if config.upstream_mqtt.is_some() {
            sink_names.push(upstream_mqtt::SINK);
        }
        let outbox = match &config.outbox {
            Some(settings) => {
                let path = config.gateway.data_dir.join(OUTBOX_FILE);
                let outbox = Outbox::open(
                    &path,
                    OutboxConfig {
                        max_bytes: settings.max_bytes,
                        fsync_interval: settings.fsync_interval,
                        min_free_bytes: settings.min_free_bytes,
                        sinks: sink_names.iter().map(|s| (*s).to_owned()).collect(),
                        ..OutboxConfig::default()
                    },
                )
                .with_context(|| format!("opening the outbox {}", path.display()))?;
                let outbox = Arc::new(outbox);
                ingest = ingest.with_outbox(Arc::clone(&outbox));
                Some(outbox)
            }
            None => None,
        };
        let (ingest_done_tx, ingest_done) = watch::channel(false);
        // Connects a sink: fed from the outbox (with an acker for its confirmations) when
        // there is one, else straight from the ingestion stage.
        let mut attach = |ingest: &mut Ingest, name: &str| -> (mpsc::Receiver<Delivery>, Acker) {
            match &outbox {
                Some(outbox) => {
                    let (rx, tx) = ingest.add_sink_fed(name, queue);
                    let (acker, confirmations) = Acker::channel();
                    sinks.push(tokio::spawn(crate::pipeline::feed::run(
                        Arc::clone(outbox),
                        name.to_owned(),
                        tx,
                        confirmations,
                        ingest_done.clone(),
                        (name != alarm_audit::SINK).then(|| ingest.accounts()),
                    )));
                    (rx, acker)
                }
                None => (ingest.add_sink(name, queue), Acker::none()),
            }
        };
        // Node groups: polled devices and MQTT nodes alike.
        let group_of: HashMap<NodeId, String> = config
            .node_groups
            .iter()
            .flat_map(|(g, nodes)| nodes.iter().map(move |n| (n.clone(), g.clone())))
            .collect();
        let mut shared_engine = None;
        if config.alarms_enabled {
            // The saved rules (changed at run time) or the shipped ones, told each node's
            // group and each polled node's interval, so that stale data can be judged in
            // polls.
            let mut nodes: Vec<(NodeId, Option<String>, Option<u64>)> = config
                .devices
                .iter()
                .map(|d| {
                    (
                        d.id.clone(),
                        group_of.get(&d.id).cloned(),
                        Some(d.poll_interval.as_millis() as u64),
                    )
                })
                .collect();
            for (node, group) in &group_of {
                if !config.devices.iter().any(|d| &d.id == node) {
                    nodes.push((node.clone(), Some(group.clone()), None));
                }
            }
            let engine = match carried.engine {
                // A reload keeps the engine, and with it every alarm's state; only what the
                // configuration says about nodes (groups, poll intervals) changes, as a new
                // rule-set version.
                Some(engine) => {
                    {
                        let mut e = engine.lock().unwrap_or_else(|e| e.into_inner());
                        let mut next = e.rules().clone();
                        next.nodes.clear();
                        for (node, group, poll) in nodes {
                            next = next.with_node(node, group.as_deref(), poll);
                        }
                        next.version += 1;
                        carried_transitions = e
                            .replace_rules(next, crate::pipeline::unix_ms())
                            .map_err(|e| {
                                anyhow::anyhow!("node groups of the new configuration: {e}")
                            })?;
                    }
                    engine
                }
                None => {
                    let rules = crate::thresholds::initial_rules(&config.gateway.data_dir, nodes)
                        .map_err(|e| anyhow::anyhow!(e))?;
                    let engine = AlarmEngine::new(rules)
                        .map_err(|e| anyhow::anyhow!("the alarm rules are invalid: {e}"))?;
                    Arc::new(std::sync::Mutex::new(engine))
                }
            };
            shared_engine = Some(Arc::clone(&engine));
            ingest = ingest.with_shared_alarms(engine);
            let (rx, acker) = attach(&mut ingest, alarm_audit::SINK);
            sink_tasks.push(tokio::spawn(alarm_audit::run(
                config.gateway.data_dir.join(alarm_audit::FILE_NAME),
                rx,
                acker,
                Arc::clone(&metrics),
            )));
        }

        if let Some(store) = &config.local_store {
            let path = config.gateway.data_dir.join(local_store::FILE_NAME);
            let (rx, acker) = attach(&mut ingest, local_store::SINK);
            sink_tasks.push(tokio::spawn(local_store::run(
                path,
                store.retention,
                rx,
                acker,
                Arc::clone(&metrics),
            )));
        }
        if let Some(influx_config) = &config.influxdb {
            let writer =
                Writer::new(WriterConfig::from_sink(influx_config)).context("InfluxDB sink")?;
            let (rx, acker) = attach(&mut ingest, influx::sink::SINK);
            sink_tasks.push(tokio::spawn(influx::sink::run(
                writer,
                influx_config.batch_size,
                influx_config.flush_interval,
                rx,
                acker,
                Arc::clone(&metrics),
            )));
        }
        if let Some(up) = &config.upstream_mqtt {
            let (rx, acker) = attach(&mut ingest, upstream_mqtt::SINK);
            sink_tasks.push(tokio::spawn(upstream_mqtt::run(
                up.clone(),
                rx,
                acker,
                Arc::clone(&metrics),
            )));
        }
        // The caller shows a first run's one-time password (`first_run_secret`); it is not
        // logged, so it does not linger in log files.
        let (users, first_run_secret) =
            Users::open(&config.gateway.data_dir.join("users.sqlite")).context("user store")?;
        let users = Arc::new(std::sync::Mutex::new(users));
        let directory = crate::http::Directory {
            nodes: config
                .devices
                .iter()
                .enumerate()
                .map(|(row, d)| {
                    (
                        d.id.clone(),
                        crate::http::KnownNode {
                            site: d.site.clone(),
                            group: group_of.get(&d.id).cloned(),
                            polled: Some((d.bus.clone(), d.unit, row)),
                        },
                    )
                })
                .collect(),
            groups: group_of,
            store: config
                .local_store
                .as_ref()
                .map(|_| config.gateway.data_dir.join(local_store::FILE_NAME)),
        };
        // Serial buses lend their line to campaigns between polls (sources::modbus::lend).
        let (bus_lines, mut lent) = crate::sources::modbus::lend::BusLines::for_config(&config);
        let campaigns = crate::campaign::Campaigns::open(
            &config,
            Arc::clone(&users),
            Arc::clone(&metrics),
            shutdown_rx.clone(),
            bus_lines,
        )
        .map_err(|e| anyhow::anyhow!(e))?;
        let api = crate::http::ApiState {
            campaigns: Some(campaigns),
            metrics: Arc::clone(&metrics),
            thresholds: shared_engine.as_ref().map(|e| {
                crate::thresholds::Thresholds::new(
                    Arc::clone(e),
                    &config.gateway.data_dir,
                    Arc::clone(&users),
                )
            }),
            engine: shared_engine.clone(),
            live: ingest.live_alarms(),
            view: ingest.live_view(),
            directory: Arc::new(directory),
            accounts: ingest.accounts(),
            outbox: outbox.clone(),
            users,
            events: events.clone(),
            shutdown: shutdown_rx.clone(),
        };
        sinks.extend(sink_tasks);
        if let Some(outbox) = &outbox {
            tokio::spawn(outbox_metrics(
                Arc::clone(outbox),
                Arc::clone(&metrics),
                ingest.accounts(),
                shutdown_rx.clone(),
            ));
        }
        let accounts = ingest.accounts();
        let kept_engine = shared_engine;
        if !carried_transitions.is_empty() {
            let events_of = crate::thresholds::events(carried_transitions, |_| None);
            let _ = events.try_send(crate::pipeline::Event::Alarms(events_of));
        }
        let ingest = tokio::spawn(async move {
            ingest.run().await;
            let _ = ingest_done_tx.send(true);
        });

        let mut sources = Vec::new();
        for bus in &config.buses {
            let mut task = BusTask::new(&config, bus, events.clone(), Arc::clone(&metrics))?;
            if let Some(rx) = lent.remove(&bus.name) {
                task = task.lend(rx);
            }
            sources.push(tokio::spawn(task.run(shutdown_rx.clone())));
        }
        if let Some(m) = &config.mqtt_source {
            sources.push(tokio::spawn(mqtt::run(
                m.clone(),
                events.clone(),
                Arc::clone(&metrics),
                shutdown_rx.clone(),
            )));
        }
        drop(events);

        let (http_addr, http) = match config.gateway.http_listen {
            Some(addr) => {
                let (bound, task) = crate::http::serve(addr, api, shutdown_rx.clone())
                    .await
                    .with_context(|| format!("serving /metrics on {addr}"))?;
                info!("metrics at http://{bound}/metrics");
                (Some(bound), Some(task))
            }
            None => (None, None),
        };
        info!(
            gateway = %config.gateway.id,
            buses = config.buses.len(),
            devices = config.devices.len(),
            mqtt_source = config.mqtt_source.is_some(),
            "gateway started"
        );
        Ok(Gateway {
            metrics,
            first_run_secret,
            http_addr,
            shutdown,
            sources,
            ingest,
            sinks,
            http,
            outbox,
            engine: kept_engine,
            accounts,
        })
    }

    /// The gateway's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The one-time password of user `admin`, when this start created it (the first run with
    /// this data directory).
    pub fn first_run_secret(&self) -> Option<&str> {
        self.first_run_secret.as_deref()
    }

    /// Where `/metrics` is served, if anywhere.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// Stops the sources, drains the pipeline and waits (at most `grace`) for the sinks to
    /// flush.
    pub async fn shutdown(self, grace: Duration) {
        self.stop(grace).await;
    }

    /// Replaces this gateway with one running `new`, carrying alarm state and accounts over;
    /// the outbox stays on disk in between. Either the new configuration runs or, when it
    /// cannot start (a port taken, a data directory it cannot write), the old one is started
    /// again from `old` and the error returned with it: there is always a gateway running one
    /// whole configuration, never a mix. Both configurations must already be checked (as
    /// [`crate::config::load`] does); while the pipeline restarts, MQTT messages wait
    /// unacknowledged at the broker and Modbus polls pause.
    ///
    /// Returns the running gateway and, when it is the old configuration again, why the new
    /// one did not start; an error only when neither starts.
    pub async fn reload(
        self,
        new: Config,
        old: Config,
        grace: Duration,
    ) -> anyhow::Result<(Gateway, Option<anyhow::Error>)> {
        let carried = self.stop(grace).await;
        let keep = Carried {
            engine: carried.engine.clone(),
            accounts: carried.accounts.clone(),
        };
        match Gateway::start_carrying(new, carried).await {
            Ok(g) => Ok((g, None)),
            Err(e) => {
                tracing::error!("the new configuration did not start ({e:#}); back to the old one");
                match Gateway::start_carrying(old, keep).await {
                    Ok(g) => Ok((g, Some(e))),
                    Err(e2) => Err(anyhow::anyhow!(
                        "neither the new configuration ({e:#}) nor the old one ({e2:#}) starts"
                    )),
                }
            }
        }
    }

    async fn stop(self, grace: Duration) -> Carried {
        let carried = Carried {
            engine: self.engine.clone(),
            accounts: Some(Arc::clone(&self.accounts)),
        };
        let _ = self.shutdown.send(true);
        let drain = async {
            for s in self.sources {
                let _ = s.await;
            }
            let _ = self.ingest.await;
            for s in self.sinks {
                let _ = s.await;
            }
        };
        if tokio::time::timeout(grace, drain).await.is_err() {
            tracing::warn!(
                "sinks did not finish within {grace:?}; what they did not confirm stays in the outbox"
            );
        }
        if let Some(outbox) = &self.outbox
            && let Err(e) = outbox.close().await
        {
            tracing::error!("closing the outbox: {e}");
        }
        if let Some(h) = self.http {
            let _ = h.await;
        }
        carried
    }
}

/// Reads the outbox's state into the metrics every two seconds (a scrape must not wait on the
/// storage thread).
async fn outbox_metrics(
    outbox: Arc<Outbox>,
    metrics: Arc<Metrics>,
    accounts: Arc<crate::pipeline::Accounts>,
    mut shutdown: watch::Receiver<bool>,
) {
    use crate::metrics::{KindLabels, NodeReasonLabels, SinkLabels};
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let Ok(stats) = outbox.stats().await else {
            return;
        };
        for (kind, v) in [
            ("bytes", stats.bytes),
            ("batches", stats.batches),
            ("dead_letters", stats.dead_letters),
            ("dropped_readings", stats.dropped),
            ("bound_bytes", stats.bound),
            ("commit_failures", stats.commit_failures),
        ] {
            metrics
                .outbox
                .get_or_create(&KindLabels { kind: kind.into() })
                .set(v as i64);
        }
        for s in &stats.sinks {
            metrics
                .outbox_behind
                .get_or_create(&SinkLabels {
                    sink: s.name.clone(),
                })
                .set(s.behind as i64);
        }
        if let Ok(drops) = outbox.drops().await {
            for d in drops {
                metrics
                    .outbox_dropped
                    .get_or_create(&NodeReasonLabels {
                        node: d.node,
                        reason: d.reason.as_str().into(),
                    })
                    .set(d.count as i64);
            }
        }
        metrics.samples_missing.set(accounts.missing_total() as i64);
    }
}
