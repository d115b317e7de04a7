//! The pipeline's plumbing: what flows between stages and how stages are connected.
//!
//! ```text
//!  sources ──Event──▶ ingest ─────────────Output──────────▶ sinks
//!  modbus bus tasks     transforms (dedup,           ├─▶ local store (+ alarm history)
//!  mqtt source          timestamps, calibration,     ├─▶ influxdb
//!                       range), alarm engine         ├─▶ upstream mqtt (+ alarm state, events)
//!                                                    └─▶ alarm audit log
//! ```
//!
//! The alarm engine runs in the ingestion stage, on every reading that passed the
//! transforms, and on a one-second tick for what time alone changes (delays, stale data,
//! shelving). Its transitions go to every sink as [`Output::Alarms`], after the readings
//! that caused them.
//!
//! Every connection is a bounded channel of *batches* (one Modbus poll, one MQTT message),
//! never of single readings: at 200 000 readings/s a channel operation per reading would cost
//! more than the work. A full channel makes the stage feeding it wait — backpressure reaches a
//! Modbus bus as a later poll and the MQTT source as unread socket data, which the broker
//! holds — so nothing is dropped between stages. The ingestion stage knows nothing of Modbus
//! or MQTT: [`Ingest`] takes [`Event`]s from any sender, so a later `tianzhong ingest` can feed
//! it from a broker alone.

use std::sync::Arc;

use tianzhong_protocol::payload::NodeStatus;
use tianzhong_protocol::{NodeId, Reading, SiteId};
use tokio::sync::mpsc;

use std::collections::HashMap;
use std::time::Duration;

use crate::alarm::{AlarmEngine, AlarmEvent, AlarmEvents, AlarmState};
use crate::metrics::Metrics;
use crate::transforms::Transforms;

pub mod live;

pub use live::LiveView;

/// The gateway's clock: Unix time in ms, as records and transitions are stamped.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A reading on its way through the gateway.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    /// The site of the node.
    pub site: SiteId,
    /// The reading; its value in the quantity's canonical unit.
    pub reading: Reading,
    /// When the gateway received it, ms since the Unix epoch.
    pub received_ms: u64,
    /// Whether `reading.timestamp` came from the device's clock (and so may be skewed) rather
    /// than the gateway's.
    pub device_time: bool,
}

/// A change in a node's connection, from the source that noticed it.
#[derive(Clone, Debug, PartialEq)]
pub struct StatusEvent {
    /// Site.
    pub site: SiteId,
    /// Node.
    pub node: NodeId,
    /// The status; for a polled device the gateway writes it (online when it answers again,
    /// offline when quarantined).
    pub status: NodeStatus,
}

/// What sources send to the ingestion stage.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// Readings of one poll or one message.
    Readings(Vec<Record>),
    /// A node came or went.
    Status(StatusEvent),
    /// Alarm transitions made outside the stage (operator actions through the API), to be
    /// published, stored and audited like the engine's own.
    Alarms(Vec<AlarmEvent>),
}

/// What the ingestion stage sends to each sink: shared, because every sink gets the same
/// batch.
#[derive(Clone, Debug)]
pub enum Output {
    /// Readings that passed the transforms.
    Readings(Arc<[Record]>),
    /// A node's status.
    Status(Arc<StatusEvent>),
    /// Alarm transitions.
    Alarms(AlarmEvents),
}

/// The alarm engine, shared between the ingestion stage (which feeds it) and the API (which
/// reads it). A plain mutex: the stage holds it for one batch, the API for one snapshot.
pub type SharedEngine = Arc<std::sync::Mutex<AlarmEngine>>;

/// Every alarm transition as it happens, for live subscribers (the API's server-sent events).
/// A subscriber that falls more than this many behind misses the oldest and is told so.
pub const LIVE_CAPACITY: usize = 4096;

/// The sending end sources get.
pub type EventSender = mpsc::Sender<Event>;

/// The ingestion stage: runs the transforms over each batch and hands the survivors to every
/// sink.
pub struct Ingest {
    events: mpsc::Receiver<Event>,
    transforms: Transforms,
    alarms: Option<SharedEngine>,
    live: tokio::sync::broadcast::Sender<Arc<AlarmEvent>>,
    sites: HashMap<tianzhong_protocol::NodeId, SiteId>,
    sinks: Vec<(String, mpsc::Sender<Output>)>,
    metrics: Arc<Metrics>,
    view: Arc<LiveView>,
}

impl Ingest {
    /// An ingestion stage reading `events`.
    pub fn new(
        events: mpsc::Receiver<Event>,
        transforms: Transforms,
        metrics: Arc<Metrics>,
    ) -> Ingest {
        Ingest {
            events,
            transforms,
            alarms: None,
            live: tokio::sync::broadcast::channel(LIVE_CAPACITY).0,
            sites: HashMap::new(),
            sinks: Vec::new(),
            metrics,
            view: Arc::new(LiveView::default()),
        }
    }

    /// Evaluates alarms with `engine`.
    pub fn with_alarms(self, engine: AlarmEngine) -> Ingest {
        self.with_shared_alarms(Arc::new(std::sync::Mutex::new(engine)))
    }

    /// Evaluates alarms with an engine shared with others (the API).
    pub fn with_shared_alarms(mut self, engine: SharedEngine) -> Ingest {
        self.alarms = Some(engine);
        self
    }

    /// Live alarm transitions, for subscribers that come and go.
    pub fn live_alarms(&self) -> tokio::sync::broadcast::Sender<Arc<AlarmEvent>> {
        self.live.clone()
    }

    /// Each channel's latest reading and the stream of ingested batches.
    pub fn live_view(&self) -> Arc<LiveView> {
        Arc::clone(&self.view)
    }

    /// Adds a sink, returning the receiving end it reads from.
    pub fn add_sink(&mut self, name: &str, capacity: usize) -> mpsc::Receiver<Output> {
        let (tx, rx) = mpsc::channel(capacity);
        self.sinks.push((name.to_owned(), tx));
        rx
    }

    /// Runs until every source has hung up, then closes the sinks' channels so they flush and
    /// finish.
    pub async fn run(mut self) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let event = tokio::select! {
                e = self.events.recv() => match e {
                    Some(e) => e,
                    None => break,
                },
                _ = tick.tick() => {
                    self.tick().await;
                    continue;
                }
            };
            match event {
                Event::Readings(mut batch) => {
                    self.metrics.readings_received.inc_by(batch.len() as u64);
                    self.transforms.apply(&mut batch, &self.metrics);
                    if batch.is_empty() {
                        continue;
                    }
                    self.metrics.readings_forwarded.inc_by(batch.len() as u64);
                    let alarms = self.evaluate(&batch);
                    let batch: Arc<[Record]> = batch.into();
                    self.view.update(&batch);
                    self.send(Output::Readings(batch)).await;
                    self.publish_alarms(alarms).await;
                }
                Event::Status(status) => self.send(Output::Status(Arc::new(status))).await,
                Event::Alarms(events) => self.publish_alarms(events).await,
            }
        }
    }

    fn evaluate(&mut self, batch: &[Record]) -> Vec<AlarmEvent> {
        let Some(engine) = &self.alarms else {
            return Vec::new();
        };
        let mut engine = engine.lock().unwrap_or_else(|e| e.into_inner());
        let now = unix_ms();
        let mut out = Vec::new();
        for r in batch {
            if !self.sites.contains_key(&r.reading.node) {
                self.sites.insert(r.reading.node.clone(), r.site.clone());
            }
            for transition in engine.on_reading(r, now) {
                out.push(AlarmEvent {
                    site: Some(r.site.clone()),
                    transition,
                });
            }
        }
        out
    }

    /// Counts transitions, tells live subscribers and hands them to every sink.
    async fn publish_alarms(&self, events: Vec<AlarmEvent>) {
        if events.is_empty() {
            return;
        }
        self.metrics.alarm_transitions(&events);
        for e in &events {
            let _ = self.live.send(Arc::new(e.clone()));
        }
        self.send(Output::Alarms(events.into())).await;
    }

    async fn tick(&mut self) {
        let Some((events, active)) = self.tick_engine() else {
            return;
        };
        self.metrics.alarms_active(&active);
        self.publish_alarms(events).await;
    }

    /// The engine's time-driven transitions, and the annunciated alarms per level. Not async:
    /// the engine's lock is never held across an await.
    fn tick_engine(&mut self) -> Option<(Vec<AlarmEvent>, [i64; 5])> {
        let mut engine = self
            .alarms
            .as_ref()?
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let events: Vec<AlarmEvent> = engine
            .tick(unix_ms())
            .into_iter()
            .map(|transition| AlarmEvent {
                site: self.sites.get(&transition.key.node).cloned(),
                transition,
            })
            .collect();
        let mut active = [0i64; 5];
        for (_, status) in engine.alarms() {
            if matches!(
                status.state,
                AlarmState::ActiveUnacked
                    | AlarmState::ActiveAcked
                    | AlarmState::LatchedUnacked
                    | AlarmState::LatchedAcked
            ) {
                active[usize::from(status.level.code()).min(4)] += 1;
            }
        }
        Some((events, active))
    }

    async fn send(&self, output: Output) {
        for (name, sink) in &self.sinks {
            // A sink that has stopped (it logged why) must not hold up the others.
            if sink.send(output.clone()).await.is_err() {
                self.metrics.sink_gone(name);
            }
        }
    }
}
