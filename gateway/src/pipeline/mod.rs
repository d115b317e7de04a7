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
use crate::outbox::{BatchId, Outbox, Ticket};
use crate::transforms::Transforms;

pub mod account;
pub mod feed;
pub mod live;

pub use account::Accounts;

pub use feed::{Acker, Confirmation};
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
#[derive(Debug)]
pub enum Event {
    /// Readings of one poll or one message.
    Readings(Vec<Record>),
    /// Readings whose source waits to hear they are stored (an MQTT message, acknowledged to
    /// the broker only then): the receipt is sent once the batch is durable in the outbox —
    /// or at once when nothing of it needed storing (all duplicates) or there is no outbox.
    /// It is dropped unsent when the batch could not be stored.
    Acked(Vec<Record>, Receipt),
    /// A node came or went.
    Status(StatusEvent),
    /// Alarm transitions made outside the stage (operator actions through the API), to be
    /// published, stored and audited like the engine's own.
    Alarms(Vec<AlarmEvent>),
}

/// Sent to a source once its batch is stored (see [`Event::Acked`]).
pub type Receipt = tokio::sync::oneshot::Sender<()>;

/// What a sink receives: an output and, when it came through the durable outbox, the batch
/// it belongs to, to confirm through its [`Acker`] once written.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// What to write.
    pub output: Output,
    /// Its outbox batch.
    pub batch: Option<BatchId>,
}

impl Delivery {
    /// Not from the outbox: nothing to confirm.
    pub fn direct(output: Output) -> Delivery {
        Delivery {
            output,
            batch: None,
        }
    }
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

/// Most readings the ingestion stage takes as one batch from events already queued (see
/// `Ingest::coalesced`).
pub const COALESCE_READINGS: usize = 1024;

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
    sinks: Vec<(String, mpsc::Sender<Delivery>)>,
    metrics: Arc<Metrics>,
    view: Arc<LiveView>,
    outbox: Option<Arc<Outbox>>,
    receipts: Option<mpsc::UnboundedSender<(Ticket, Receipt)>>,
    accounts: Arc<Accounts>,
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
            outbox: None,
            receipts: None,
            accounts: Arc::new(Accounts::default()),
        }
    }

    /// Keeps counting in `accounts` (a reloaded gateway carries its predecessor's).
    pub fn with_accounts(mut self, accounts: Arc<Accounts>) -> Ingest {
        self.accounts = accounts;
        self
    }

    /// Each node's completeness account.
    pub fn accounts(&self) -> Arc<Accounts> {
        Arc::clone(&self.accounts)
    }

    /// Stores readings and alarm transitions in `outbox` instead of handing them to the sinks:
    /// each sink then reads them from the outbox ([`feed`]), and sources are told when what
    /// they sent is durable. Node status changes go through the outbox too: in order with the
    /// readings around them, and never waiting on a sink that has stalled (a channel to it
    /// full) — which would stop ingestion for every node.
    pub fn with_outbox(mut self, outbox: Arc<Outbox>) -> Ingest {
        let (tx, mut rx) = mpsc::unbounded_channel::<(Ticket, Receipt)>();
        let waiter = Arc::clone(&outbox);
        // Tickets become durable in order, so one task waiting on each in turn tells every
        // source as soon as its batch is stored, and in the order the batches came.
        tokio::spawn(async move {
            while let Some((ticket, receipt)) = rx.recv().await {
                if waiter.durable(ticket).await.is_ok() {
                    let _ = receipt.send(());
                }
            }
        });
        self.outbox = Some(outbox);
        self.receipts = Some(tx);
        self
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

    /// Adds a sink, returning the receiving end it reads from, and the sending end for a
    /// feeder from the outbox (see [`feed::run`]).
    pub fn add_sink(&mut self, name: &str, capacity: usize) -> mpsc::Receiver<Delivery> {
        self.add_sink_fed(name, capacity).0
    }

    /// Adds a sink; also returns a sender for its outbox feeder.
    pub fn add_sink_fed(
        &mut self,
        name: &str,
        capacity: usize,
    ) -> (mpsc::Receiver<Delivery>, mpsc::Sender<Delivery>) {
        let (tx, rx) = mpsc::channel(capacity);
        self.sinks.push((name.to_owned(), tx.clone()));
        (rx, tx)
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
            let mut next = Some(event);
            while let Some(event) = next.take() {
                match event {
                    Event::Readings(batch) => {
                        next = self.coalesced(batch, Vec::new()).await;
                    }
                    Event::Acked(batch, receipt) => {
                        next = self.coalesced(batch, vec![receipt]).await;
                    }
                    Event::Status(status) => self.status(status).await,
                    Event::Alarms(events) => self.publish_alarms(events).await,
                }
            }
        }
        if let Some(outbox) = &self.outbox
            && let Err(e) = outbox.flush().await
        {
            tracing::error!("outbox: the last batches could not be committed: {e}");
        }
    }

    /// Takes `batch` and the readings events already queued behind it (up to
    /// [`COALESCE_READINGS`]) as one batch, so that a stream of small ones (a Modbus poll or
    /// an MQTT message of one node: a few readings each) costs one pass, one outbox batch and
    /// one delivery to each sink rather than one each. Returns the first other event met,
    /// which the caller handles next, so order is kept.
    async fn coalesced(
        &mut self,
        mut batch: Vec<Record>,
        mut receipts: Vec<Receipt>,
    ) -> Option<Event> {
        let mut other = None;
        while batch.len() < COALESCE_READINGS {
            match self.events.try_recv() {
                Ok(Event::Readings(more)) => batch.extend(more),
                Ok(Event::Acked(more, r)) => {
                    batch.extend(more);
                    receipts.push(r);
                }
                Ok(e) => {
                    other = Some(e);
                    break;
                }
                Err(_) => break,
            }
        }
        self.readings(batch, receipts).await;
        other
    }

    async fn readings(&mut self, mut batch: Vec<Record>, receipts: Vec<Receipt>) {
        self.metrics.readings_received.inc_by(batch.len() as u64);
        self.transforms.apply(&mut batch, &self.metrics);
        if batch.is_empty() {
            // Nothing new to store (duplicates, say): the sources may let go at once.
            for r in receipts {
                let _ = r.send(());
            }
            return;
        }
        self.metrics.readings_forwarded.inc_by(batch.len() as u64);
        self.accounts.received(&batch);
        let alarms = self.evaluate(&batch);
        let batch: Arc<[Record]> = batch.into();
        self.view.update(&batch);
        match &self.outbox {
            Some(outbox) => match outbox.append_readings(&batch).await {
                Ok(ticket) => {
                    self.accounts.stored(&account::count_by_node(&batch));
                    if let Some(waiter) = &self.receipts {
                        for r in receipts {
                            let _ = waiter.send((ticket, r));
                        }
                    }
                }
                Err(e) => {
                    // The receipt is dropped unsent: an MQTT message stays unacknowledged
                    // and the broker delivers it again.
                    self.metrics
                        .readings_dropped
                        .get_or_create(&crate::metrics::ReasonLabels {
                            reason: "outbox_error".into(),
                        })
                        .inc_by(batch.len() as u64);
                    tracing::error!(
                        node = %batch[0].reading.node,
                        readings = batch.len(),
                        "outbox: readings not stored: {e}"
                    );
                }
            },
            None => {
                self.send(Delivery::direct(Output::Readings(batch))).await;
                for r in receipts {
                    let _ = r.send(());
                }
            }
        }
        self.publish_alarms(alarms).await;
    }

    async fn status(&self, status: StatusEvent) {
        match &self.outbox {
            Some(outbox) => {
                if let Err(e) = outbox.append_status(&status).await {
                    tracing::error!(node = %status.node, site = %status.site, "outbox: status change not stored: {e}");
                }
            }
            None => {
                self.send(Delivery::direct(Output::Status(Arc::new(status))))
                    .await
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
        match &self.outbox {
            Some(outbox) => {
                for e in &events {
                    let payload = e.to_json().to_string();
                    if let Err(err) = outbox
                        .append_alarm(&e.transition.key.node, payload.as_bytes())
                        .await
                    {
                        tracing::error!(alarm = %e.transition.key, "outbox: alarm transition not stored: {err}");
                    }
                }
            }
            None => {
                self.send(Delivery::direct(Output::Alarms(events.into())))
                    .await
            }
        }
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

    async fn send(&self, delivery: Delivery) {
        for (name, sink) in &self.sinks {
            // A sink that has stopped (it logged why) must not hold up the others.
            if sink.send(delivery.clone()).await.is_err() {
                self.metrics.sink_gone(name);
            }
        }
    }
}
