//! MQTT clients publishing telemetry and status.
//!
//! Every node of an MQTT bus is its own MQTT 3.1.1 client, as a directly connected field device
//! would be: client id = node id, clean session, a [keep-alive](KEEP_ALIVE) of a few seconds, and
//! the last will [`NodeStatus::last_will`] retained on `tianzhong/v1/{site}/{node}/status`.
//!
//! # What a node publishes
//!
//! | when | topic | payload | QoS, retained |
//! |---|---|---|---|
//! | on every connect | `…/status` | [`NodeStatus`], online, with firmware version, uptime and highest local alarm from the node core | 1, retained |
//! | each publishing instant | `…/telemetry` | [`Telemetry`] of one sample round: its `seq`, `ts` = the round's Unix ms | 1, no |
//! | a channel's local alarm level changes | `…/alarm` | [`AlarmEvent`] | 1, no |
//! | the node leaves gracefully | `…/status` | [`NodeStatus`], offline, with `ts` | 1, retained |
//! | each message on its `…/fwupdate` topic | `…/fwstatus` | [`UpdateReport`] from the firmware's MQTT update handler | 1, no |
//!
//! # Firmware updates
//!
//! On every connect a node subscribes to its `…/fwupdate` topic at QoS 1 and hands each message
//! to [`VirtualNode::mqtt_update`](crate::node::VirtualNode::mqtt_update): the firmware's own
//! MQTT update handler over the node's simulated power-cut flash, shared with the Modbus update
//! files ([`crate::update`]). The report goes back on `…/fwstatus`. When a finish has staged an
//! image the node resets: it sends DISCONNECT once the report is acknowledged (so no will),
//! reconnects at once and publishes its online status with the version it now runs. The new
//! image is on trial until the gateway's confirm message arrives. A power cut
//! ([`Fault::UpdatePowerCut`]) resets the node without a report and without DISCONNECT.
//!
//! **Publishing instants.** A node publishes the first sample round taken at or after each
//! multiple of the bus's `publish_every_s` simulated seconds — that is, its latest sample every
//! `publish_every_s` seconds, and every round when the sampling interval is at least that long
//! (or when `publish_every_s` is 0). The telemetry is built from the round itself rather than
//! from the node's current registers: the fleet may already have stepped the node further by
//! the time its round is published, and the payload must carry that round's values under that
//! round's `seq`. It holds the channels sampled in that round, exactly as
//! [`VirtualNode::telemetry`](crate::node::VirtualNode::telemetry) would render them, serialised
//! by [`Telemetry::to_json`].
//!
//! **Ground truth.** A telemetry message is logged with
//! [`GroundTruth::record_published`](crate::truth::GroundTruth::record_published) when the broker
//! acknowledges it (PUBACK), so the published log holds what the broker accepted, not what the
//! node merely tried to send.
//!
//! **Offline.** Rounds sampled while a node is not connected are not published (nor queued for
//! later): a node without a connection has nowhere to send them. They are counted in
//! [`MqttStats::skipped_offline`]. Alarm changes are not lost: a change is reported by the first
//! round published after it.
//!
//! **Reconnecting.** After a lost connection or a refused connect a node retries for ever, with
//! a backoff doubling from 250 ms to 5 s (jittered per node, so that a fleet does not hammer a
//! restarted broker in lockstep), and publishes its online status again on every connect.
//!
//! # Faults
//!
//! Faults are looked up at each round's simulated time, so a node notices a fault — and its end
//! — at its next sample round, as a node woken by its sampling timer would.
//!
//! | fault | effect |
//! |---|---|
//! | [`Fault::MqttDisconnect`] | the node publishes its offline status (retained), sends DISCONNECT once the broker has acknowledged it, and stays off while the fault lasts; the broker does not publish the will after a DISCONNECT |
//! | [`Fault::DropConnection`] | at each round while active the node closes its socket without DISCONNECT (the round is lost): the broker publishes the last will; the node reconnects after the backoff |
//! | [`Fault::MalformedPayload`] | instead of telemetry the node publishes, in turn, truncated JSON, the payload with `"v":2`, and a reading whose value is `1e999` (not finite) — all refused by [`Telemetry::from_json`]; counted in [`MqttStats::malformed_sent`] |
//! | [`Fault::ClockSkew`] | every `ts` the node sends (telemetry, status, alarms) is off by `offset_ms` |
//!
//! # Memory
//!
//! Each client is a [`Connection`] of [`mqtt_client`], driven by its node's task. It holds the
//! socket, a read buffer of a few dozen bytes, the packet ids of the messages awaiting PUBACK
//! (16 at most), and a write buffer only while the socket has not taken a message at once (one
//! packet of at most about 1.1 KiB). rumqttc, which the transport used before, fixed 24 KiB of
//! buffers per connection and could not be told otherwise.
//!
//! Measured by the test `memory_per_connected_mqtt_node` (resident set size, debug build): a
//! connected client adds about 3.4–3.8 KB to the 4.2–4.7 KB of its virtual node, where rumqttc
//! took 29 KB. The example `mqtt_fleet_bench` (release build) runs 10 000 nodes on one local
//! mosquitto, each publishing every second: 92 MB resident for the whole simulator (3.1 KB a
//! client), against 415 MB with rumqttc.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tianzhong_firmware::modbus::RegisterBank;
use tianzhong_protocol::payload::{
    AlarmEvent, NodeStatus, PAYLOAD_VERSION, PayloadError, Telemetry, TelemetryValue,
};
use tianzhong_protocol::registers::widen_f32;
use tianzhong_protocol::topic::{MAX_TOPIC_LEN, Topic, TopicKind};
use tianzhong_protocol::update::{MAX_REPORT_LEN, MAX_REQUEST_LEN, UpdateReport};
use tianzhong_protocol::{AlarmLevel, ChannelId, NodeId, Quality, Quantity, SiteId};
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::clock::SimMs;
use crate::fault::Fault;
use crate::fleet::{Fleet, NodeRound};
use crate::node::Round;
use crate::spec::{BusKind, BusSpec};
use crate::transport::mqtt_client::{self, Connection, Event, QoS, Will};

/// Keep-alive of every node's connection. The broker declares a silent connection dead after
/// 1.5 × this, so a node whose host vanished without closing its socket has its last will
/// published within 7.5 s. A node in turn takes its connection for lost when the broker leaves
/// a PUBACK or PINGRESP owed for this long.
pub const KEEP_ALIVE: Duration = Duration::from_secs(5);

/// First reconnect delay.
pub const BACKOFF_MIN: Duration = Duration::from_millis(250);

/// Longest reconnect delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// QoS 1 messages a node may have unacknowledged. A round publishes at most its telemetry and
/// an alarm change per channel (8 at most), and a connect its status, so this covers the worst
/// round with room for acks that have not come back yet.
const INFLIGHT: usize = 16;

/// Time for the TCP connect and the broker's CONNACK together, as rumqttc allowed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Rounds a node may have waiting before the oldest is dropped: a node task that cannot keep up
/// must not make the simulator grow without bound.
pub const INBOX_LIMIT: usize = 256;

/// Largest payload: telemetry of a node's at most 8 channels, about 100 bytes a reading at
/// worst, and the envelope (checked by a test below).
const PAYLOAD_BUF: usize = 1024;

/// Largest packet a node sends: a PUBLISH of the longest topic and the largest payload.
const MAX_PACKET: usize = 1 + 4 + 2 + MAX_TOPIC_LEN + 2 + PAYLOAD_BUF;

/// Largest message a node takes from the broker (remaining length): a firmware-update request
/// with the longest topic.
const MAX_INCOMING: usize = 2 + MAX_TOPIC_LEN + 2 + MAX_REQUEST_LEN;

/// A snapshot of an MQTT bus's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MqttStats {
    /// Nodes connected now.
    pub connected: usize,
    /// Successful connects, first ones included.
    pub connects: u64,
    /// Successful connects after a node's first.
    pub reconnects: u64,
    /// Connection attempts that failed and connections lost to errors.
    pub connection_errors: u64,
    /// Telemetry messages the broker acknowledged.
    pub published: u64,
    /// Status messages the broker acknowledged.
    pub statuses: u64,
    /// Alarm events the broker acknowledged.
    pub alarms: u64,
    /// Malformed payloads the broker acknowledged ([`Fault::MalformedPayload`]).
    pub malformed_sent: u64,
    /// Connections closed abruptly by [`Fault::DropConnection`].
    pub dropped_connections: u64,
    /// Graceful disconnects for [`Fault::MqttDisconnect`].
    pub disconnects: u64,
    /// Publishing instants that passed while the node was offline.
    pub skipped_offline: u64,
    /// Messages not sent because the client's in-flight window or write buffer was full.
    pub backpressure: u64,
    /// Rounds dropped because a node task fell [`INBOX_LIMIT`] rounds behind.
    pub lagged: u64,
    /// Firmware-update messages taken from `…/fwupdate`.
    pub update_requests: u64,
    /// Of those, payloads that were not update requests (answered as malformed).
    pub update_malformed: u64,
    /// Update reports the broker acknowledged.
    pub update_reports: u64,
    /// Resets after an update request: into a staged image, or after a power cut.
    pub update_resets: u64,
}

#[derive(Default)]
struct Counters {
    connected: AtomicUsize,
    connects: AtomicU64,
    reconnects: AtomicU64,
    connection_errors: AtomicU64,
    published: AtomicU64,
    statuses: AtomicU64,
    alarms: AtomicU64,
    malformed_sent: AtomicU64,
    dropped_connections: AtomicU64,
    disconnects: AtomicU64,
    skipped_offline: AtomicU64,
    backpressure: AtomicU64,
    lagged: AtomicU64,
    update_requests: AtomicU64,
    update_malformed: AtomicU64,
    update_reports: AtomicU64,
    update_resets: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    fn snapshot(&self) -> MqttStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        MqttStats {
            connected: self.connected.load(Ordering::Relaxed),
            connects: get(&self.connects),
            reconnects: get(&self.reconnects),
            connection_errors: get(&self.connection_errors),
            published: get(&self.published),
            statuses: get(&self.statuses),
            alarms: get(&self.alarms),
            malformed_sent: get(&self.malformed_sent),
            dropped_connections: get(&self.dropped_connections),
            disconnects: get(&self.disconnects),
            skipped_offline: get(&self.skipped_offline),
            backpressure: get(&self.backpressure),
            lagged: get(&self.lagged),
            update_requests: get(&self.update_requests),
            update_malformed: get(&self.update_malformed),
            update_reports: get(&self.update_reports),
            update_resets: get(&self.update_resets),
        }
    }
}

/// The running clients of one MQTT bus.
///
/// Dropping the handle aborts every client: their sockets close without DISCONNECT, so the
/// broker publishes each node's last will, as when the simulator is killed.
/// [`Handle::shutdown`] instead lets each node publish its offline status and disconnect.
pub struct Handle {
    bus: String,
    nodes: usize,
    counters: Arc<Counters>,
    shutdown: watch::Sender<bool>,
    dispatcher: AbortHandle,
    tasks: JoinSet<()>,
}

impl Handle {
    /// The bus's name.
    pub fn bus(&self) -> &str {
        &self.bus
    }

    /// Number of clients (nodes on the bus).
    pub fn nodes(&self) -> usize {
        self.nodes
    }

    /// The counters now.
    pub fn stats(&self) -> MqttStats {
        self.counters.snapshot()
    }

    /// Waits until every node is connected; false when `timeout` passes first.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.counters.connected.load(Ordering::Relaxed) >= self.nodes {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the clients gracefully: each connected node publishes its offline status and
    /// disconnects. Clients still busy after `timeout` are aborted.
    pub async fn shutdown(mut self, timeout: Duration) {
        self.dispatcher.abort();
        let _ = self.shutdown.send(true);
        let _ = tokio::time::timeout(timeout, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.dispatcher.abort();
        self.tasks.abort_all();
    }
}

/// Starts a client for every node of `bus`, an MQTT bus, and returns once they are started
/// (not connected: see [`Handle::wait_connected`]). Must be called within a tokio runtime.
///
/// Rounds the fleet samples from now on are published; the broker must be on loopback.
pub async fn start(fleet: Arc<Fleet>, bus: BusSpec) -> io::Result<Handle> {
    let BusKind::Mqtt {
        broker,
        publish_every_s,
    } = bus.kind
    else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bus {}: not an MQTT bus", bus.name),
        ));
    };
    if !broker.ip().is_loopback() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "bus {}: broker {broker} is not on loopback; the simulator only connects to a local broker",
                bus.name
            ),
        ));
    }
    let members = fleet.nodes_on_bus(&bus.name);
    let rounds = fleet.subscribe_rounds(&bus.name);
    let now = fleet.stepped_to();
    let counters = Arc::new(Counters::default());
    let context = Arc::new(Context {
        fleet: Arc::clone(&fleet),
        bus: Arc::from(bus.name.as_str()),
        broker,
        publish_every_ms: u64::from(publish_every_s) * 1000,
        counters: Arc::clone(&counters),
    });
    let (shutdown, shutdown_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    // Fleet index → the node's inbox; most fleets put every node on one bus, so a dense table.
    let mut slot_of = vec![None; fleet.len()];
    let mut inboxes = Vec::with_capacity(members.len());
    for (slot, &index) in members.iter().enumerate() {
        let task = NodeTask::new(&context, index, now, shutdown_rx.clone());
        slot_of[index] = Some(slot);
        inboxes.push(Arc::clone(&task.inbox));
        tasks.spawn(task.run());
    }
    let dispatcher = tokio::spawn(dispatch(rounds, slot_of, inboxes, Arc::clone(&counters)));
    info!(
        bus = %bus.name,
        broker = %broker,
        nodes = members.len(),
        publish_every_s,
        "MQTT clients started"
    );
    Ok(Handle {
        bus: bus.name,
        nodes: members.len(),
        counters,
        shutdown,
        dispatcher: dispatcher.abort_handle(),
        tasks,
    })
}

/// Hands each round to its node's task.
async fn dispatch(
    mut rounds: mpsc::UnboundedReceiver<NodeRound>,
    slot_of: Vec<Option<usize>>,
    inboxes: Vec<Arc<Inbox>>,
    counters: Arc<Counters>,
) {
    while let Some((index, round)) = rounds.recv().await {
        if let Some(inbox) = slot_of
            .get(index)
            .copied()
            .flatten()
            .and_then(|s| inboxes.get(s))
        {
            inbox.push(round, &counters);
        }
    }
}

/// Rounds waiting for a node's task. A plain queue and a [`Notify`] rather than a channel: an
/// idle tokio channel holds a block of slots, which ten thousand nodes would pay for.
#[derive(Default)]
struct Inbox {
    rounds: Mutex<VecDeque<Round>>,
    notify: Notify,
}

impl Inbox {
    fn push(&self, round: Round, counters: &Counters) {
        let mut rounds = self.rounds.lock().unwrap_or_else(|e| e.into_inner());
        if rounds.len() >= INBOX_LIMIT {
            rounds.pop_front();
            bump(&counters.lagged);
        }
        rounds.push_back(round);
        drop(rounds);
        self.notify.notify_one();
    }

    fn take(&self) -> VecDeque<Round> {
        std::mem::take(&mut *self.rounds.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// What every node task of a bus shares.
struct Context {
    fleet: Arc<Fleet>,
    bus: Arc<str>,
    broker: SocketAddr,
    publish_every_ms: u64,
    counters: Arc<Counters>,
}

/// A message handed to the client, remembered until the broker acknowledges it.
#[derive(Clone, Copy, Debug)]
enum Sent {
    Telemetry { seq: u32, time_ms: SimMs },
    Malformed,
    Alarm,
    Status,
    UpdateReport,
}

/// Why a connection ended.
enum End {
    Shutdown,
    /// Left on purpose (DISCONNECT sent, or connecting given up) for [`Fault::MqttDisconnect`].
    Left,
    /// Closed abruptly for [`Fault::DropConnection`].
    Dropped,
    /// The node reset after an update request; it reconnects at once.
    Reset,
    Failed(mqtt_client::Error),
}

/// The faults of one node at one instant, as far as MQTT is concerned.
#[derive(Default)]
struct Active {
    disconnect: bool,
    drop: bool,
    malformed: bool,
    skew_ms: i64,
}

struct Backoff {
    next: Duration,
    rng: u64,
}

impl Backoff {
    fn new(index: usize) -> Backoff {
        Backoff {
            next: BACKOFF_MIN,
            rng: (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
        }
    }

    fn reset(&mut self) {
        self.next = BACKOFF_MIN;
    }

    /// The next delay, ±25 %.
    fn next(&mut self) -> Duration {
        let base = self.next;
        self.next = (base * 2).min(BACKOFF_MAX);
        // xorshift64: enough to spread a fleet's retries.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let fraction = (self.rng >> 11) as f64 / (1u64 << 53) as f64;
        base.mul_f64(0.75 + 0.5 * fraction)
    }
}

struct NodeTask {
    context: Arc<Context>,
    index: usize,
    id: Arc<str>,
    site: SiteId,
    node: NodeId,
    quantities: Box<[Quantity]>,
    /// The connection, once the broker has accepted it.
    conn: Option<Connection<Sent>>,
    inbox: Arc<Inbox>,
    shutdown: watch::Receiver<bool>,
    backoff: Backoff,
    up: bool,
    ever_connected: bool,
    /// Failed attempts since the last successful connect.
    failures: u32,
    leaving: bool,
    /// Disconnecting to reset into a staged image.
    resetting: bool,
    stopping: bool,
    hold_down: bool,
    skew_ms: i64,
    last_time_ms: SimMs,
    next_publish_ms: SimMs,
    reported_alarms: Box<[AlarmLevel]>,
    malformed: u32,
}

impl NodeTask {
    fn new(
        context: &Arc<Context>,
        index: usize,
        now: SimMs,
        shutdown: watch::Receiver<bool>,
    ) -> NodeTask {
        let node = context.fleet.node(index);
        let quantities: Box<[Quantity]> = (0..node.core().channel_count())
            .filter_map(|ch| node.core().quantity(ch))
            .collect();
        let (id, site, node_id) = (
            Arc::clone(&node.id),
            node.site.clone(),
            node.node_id.clone(),
        );
        drop(node);

        let faults = context.fleet.faults.active(&id, &context.bus, now);
        let active = classify(&faults);
        let channels = quantities.len();
        NodeTask {
            context: Arc::clone(context),
            index,
            id,
            site,
            node: node_id,
            quantities,
            conn: None,
            inbox: Arc::new(Inbox::default()),
            shutdown,
            backoff: Backoff::new(index),
            up: false,
            ever_connected: false,
            failures: 0,
            leaving: false,
            resetting: false,
            stopping: false,
            hold_down: active.disconnect,
            skew_ms: active.skew_ms,
            last_time_ms: now,
            next_publish_ms: 0,
            reported_alarms: vec![AlarmLevel::Normal; channels].into_boxed_slice(),
            malformed: 0,
        }
    }

    async fn run(mut self) {
        loop {
            if self.hold_down && !self.idle(None).await {
                return;
            }
            let end = self.session().await;
            // The socket, unsent bytes and messages awaiting PUBACK go with the connection: its
            // packet ids would otherwise be matched against the next connection's messages.
            self.conn = None;
            self.set_up(false);
            self.leaving = false;
            self.resetting = false;
            // A node that was leaving for good does not come back, however its connection ended.
            if self.stopping {
                return;
            }
            let pause = match end {
                End::Shutdown => return,
                End::Left | End::Reset => continue,
                End::Dropped => self.backoff.next(),
                End::Failed(error) => {
                    bump(&self.context.counters.connection_errors);
                    self.failures = self.failures.saturating_add(1);
                    let pause = self.backoff.next();
                    let retry_in_ms = pause.as_millis() as u64;
                    // One warning per outage: a fleet retrying against a dead broker would
                    // otherwise bury everything else in the log.
                    if self.failures == 1 {
                        warn!(node = %self.id, broker = %self.context.broker, %error, retry_in_ms, "MQTT connection failed; retrying");
                    } else {
                        debug!(node = %self.id, broker = %self.context.broker, %error, retry_in_ms, attempt = self.failures, "MQTT connection still failing");
                    }
                    pause
                }
            };
            if !self.idle(Some(Instant::now() + pause)).await {
                return;
            }
        }
    }

    /// Connects and serves one connection until it ends.
    async fn session(&mut self) -> End {
        let conn = match self.connect().await {
            Ok(conn) => conn,
            Err(end) => return end,
        };
        self.conn = Some(conn);
        self.connected();
        loop {
            tokio::select! {
                biased;
                _ = self.shutdown.changed(), if !self.stopping => {
                    self.stopping = true;
                    if !self.leave() {
                        return End::Shutdown;
                    }
                }
                event = next_event(&mut self.conn) => match event {
                    Ok(Event::Acked(sent)) => self.acknowledged(sent),
                    Ok(Event::Disconnected) => {
                        return if self.stopping {
                            End::Shutdown
                        } else if self.resetting {
                            End::Reset
                        } else {
                            End::Left
                        };
                    }
                    Ok(Event::Subscribed) => {
                        debug!(node = %self.id, topic = %self.topic(TopicKind::FwUpdate), "subscribed");
                    }
                    Ok(Event::SubscribeRefused) => {
                        warn!(node = %self.id, topic = %self.topic(TopicKind::FwUpdate), "the broker refused the subscription; no firmware updates over MQTT");
                    }
                    Ok(Event::Message { topic, payload }) => {
                        if let Some(end) = self.on_update(&topic, &payload) {
                            return end;
                        }
                    }
                    Err(error) => return End::Failed(error),
                },
                () = self.inbox.notify.notified() => {
                    for round in self.inbox.take() {
                        if let Some(end) = self.on_round(&round) {
                            return end;
                        }
                    }
                }
            }
        }
    }

    /// Connects, taking the rounds that come meanwhile as an offline node's: a broker may be
    /// slow to answer, and a fault may call the attempt off.
    async fn connect(&mut self) -> Result<Connection<Sent>, End> {
        // Boxed: the handshake's state is needed only while connecting, and kept inline it
        // would enlarge every node's task for the whole life of its connection.
        let mut connect = Box::pin(connect(
            Arc::clone(&self.id),
            self.topic(TopicKind::Status),
            self.context.broker,
        ));
        loop {
            tokio::select! {
                biased;
                _ = self.shutdown.changed(), if !self.stopping => {
                    self.stopping = true;
                    return Err(End::Shutdown);
                }
                result = &mut connect => return result.map_err(End::Failed),
                () = self.inbox.notify.notified() => {
                    for round in self.inbox.take() {
                        if let Some(end) = self.on_round(&round) {
                            return Err(end);
                        }
                    }
                }
            }
        }
    }

    fn connected(&mut self) {
        self.set_up(true);
        self.backoff.reset();
        self.failures = 0;
        bump(&self.context.counters.connects);
        if self.ever_connected {
            bump(&self.context.counters.reconnects);
        }
        self.ever_connected = true;
        info!(node = %self.id, broker = %self.context.broker, "MQTT connected");
        self.publish_status(true);
        let topic = self.topic(TopicKind::FwUpdate);
        if let Some(Err(error)) = self
            .conn
            .as_mut()
            .map(|c| c.subscribe(&topic, QoS::AtLeastOnce))
        {
            warn!(node = %self.id, %topic, %error, "cannot subscribe; no firmware updates over MQTT");
        }
    }

    /// A message on the node's `fwupdate` topic: the firmware's handler takes it, the report
    /// goes back on `fwstatus`, and the node resets if it must.
    fn on_update(&mut self, topic: &str, payload: &[u8]) -> Option<End> {
        let counters = &self.context.counters;
        bump(&counters.update_requests);
        let faults =
            self.context
                .fleet
                .faults
                .active(&self.id, &self.context.bus, self.last_time_ms);
        let done =
            self.context
                .fleet
                .node(self.index)
                .mqtt_update(payload, self.last_time_ms, &faults);
        if let Some(error) = &done.malformed {
            bump(&self.context.counters.update_malformed);
            warn!(node = %self.id, %topic, %error, "not a firmware-update request; answered as malformed");
        }
        if done.reset {
            bump(&self.context.counters.update_resets);
        }
        let Some(report) = done.report else {
            info!(node = %self.id, "power cut during a firmware update: resetting without a reply");
            return Some(End::Reset);
        };
        self.publish_report(&report);
        if done.reset {
            info!(node = %self.id, version = %report.running, "image staged: resetting into it");
            self.resetting = true;
            if let Some(conn) = self.conn.as_mut() {
                conn.disconnect();
            }
        }
        None
    }

    fn publish_report(&mut self, report: &UpdateReport) {
        let mut out = [0u8; MAX_REPORT_LEN];
        match report.encode(&mut out) {
            Ok(bytes) => {
                let bytes = bytes.to_vec();
                self.publish(TopicKind::FwStatus, &bytes, false, Sent::UpdateReport);
            }
            Err(error) => {
                warn!(node = %self.id, topic = %self.topic(TopicKind::FwStatus), %error, "update report not encodable")
            }
        }
    }

    fn set_up(&mut self, up: bool) {
        if up != self.up {
            if up {
                self.context
                    .counters
                    .connected
                    .fetch_add(1, Ordering::Relaxed);
            } else {
                self.context
                    .counters
                    .connected
                    .fetch_sub(1, Ordering::Relaxed);
            }
            self.up = up;
        }
    }

    /// Waits, taking rounds as an offline node would, until `deadline` has passed and no
    /// [`Fault::MqttDisconnect`] holds the node down. False on shutdown.
    async fn idle(&mut self, mut deadline: Option<Instant>) -> bool {
        loop {
            if deadline.is_none() && !self.hold_down {
                return true;
            }
            let sleep = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now));
            tokio::select! {
                biased;
                _ = self.shutdown.changed() => return false,
                () = self.inbox.notify.notified() => {
                    for round in self.inbox.take() {
                        self.offline_round(&round);
                    }
                }
                () = sleep, if deadline.is_some() => deadline = None,
            }
        }
    }

    fn faults_at(&self, t: SimMs) -> Active {
        classify(
            &self
                .context
                .fleet
                .faults
                .active(&self.id, &self.context.bus, t),
        )
    }

    /// Whether a round at `t` is a publishing instant; moves on to the next one.
    fn take_due(&mut self, t: SimMs) -> bool {
        if t < self.next_publish_ms {
            return false;
        }
        self.next_publish_ms = next_instant(t, self.context.publish_every_ms);
        true
    }

    fn offline_round(&mut self, round: &Round) {
        let active = self.faults_at(round.time_ms);
        self.hold_down = active.disconnect;
        self.skew_ms = active.skew_ms;
        self.last_time_ms = round.time_ms;
        if self.take_due(round.time_ms) {
            bump(&self.context.counters.skipped_offline);
        }
    }

    /// Handles a round; `Some` ends the connection.
    fn on_round(&mut self, round: &Round) -> Option<End> {
        if !self.up || self.leaving {
            self.offline_round(round);
            // A node told to go offline while still connecting gives up connecting.
            return (self.hold_down && !self.up && !self.leaving).then_some(End::Left);
        }
        let active = self.faults_at(round.time_ms);
        self.hold_down = active.disconnect;
        self.skew_ms = active.skew_ms;
        self.last_time_ms = round.time_ms;
        let due = self.take_due(round.time_ms);
        if due && (active.disconnect || active.drop) {
            // The connection goes before this round could be published.
            bump(&self.context.counters.skipped_offline);
        }
        if active.disconnect {
            info!(node = %self.id, "MqttDisconnect fault: publishing offline status and disconnecting");
            bump(&self.context.counters.disconnects);
            return if self.leave() { None } else { Some(End::Left) };
        }
        if active.drop {
            info!(
                node = %self.id,
                broker = %self.context.broker,
                "DropConnection fault: closing the socket without DISCONNECT"
            );
            bump(&self.context.counters.dropped_connections);
            return Some(End::Dropped);
        }
        self.report_alarms(round);
        if due {
            if active.malformed {
                self.publish_malformed(round);
            } else {
                self.publish_telemetry(round);
            }
        }
        None
    }

    /// Publishes the offline status and asks for DISCONNECT once it is acknowledged; false
    /// when the status could not be sent, and the connection had better be dropped so that the
    /// broker publishes the will instead.
    fn leave(&mut self) -> bool {
        self.leaving = true;
        if !self.publish_status(false) {
            return false;
        }
        match self.conn.as_mut() {
            Some(conn) => {
                conn.disconnect();
                true
            }
            None => false,
        }
    }

    /// `t` as the node's clock reads it.
    fn stamp(&self, t: SimMs) -> u64 {
        self.context
            .fleet
            .clock
            .unix_ms(t)
            .saturating_add_signed(self.skew_ms)
    }

    fn topic(&self, kind: TopicKind) -> String {
        Topic::new(self.site.clone(), self.node.clone(), kind).to_string()
    }

    /// Publishes a message at QoS 1; false when it was not sent.
    fn publish(&mut self, kind: TopicKind, payload: &[u8], retain: bool, sent: Sent) -> bool {
        let topic = self.topic(kind);
        // Rounds are published only while connected, so there is always a connection here.
        let Some(conn) = self.conn.as_mut() else {
            return false;
        };
        match conn.publish(&topic, payload, QoS::AtLeastOnce, retain, sent) {
            Ok(()) => true,
            Err(error) => {
                if error.is_backpressure() {
                    bump(&self.context.counters.backpressure);
                }
                warn!(node = %self.id, %topic, %error, "MQTT message not sent");
                false
            }
        }
    }

    fn publish_status(&mut self, online: bool) -> bool {
        let status = if online {
            let node = self.context.fleet.node(self.index);
            let core = node.core();
            let status = core.status();
            NodeStatus {
                v: PAYLOAD_VERSION,
                online: true,
                ts: Some(self.stamp(self.last_time_ms)),
                fw: core
                    .device_identification(0x02)
                    .and_then(|fw| fw.try_into().ok()),
                uptime_s: Some(status.uptime_s),
                alarm: Some(status.highest_alarm),
            }
        } else {
            NodeStatus {
                ts: Some(self.stamp(self.last_time_ms)),
                ..NodeStatus::last_will()
            }
        };
        match json(|out| status.to_json(out)) {
            Ok(payload) => self.publish(TopicKind::Status, &payload, true, Sent::Status),
            Err(error) => {
                warn!(node = %self.id, topic = %self.topic(TopicKind::Status), %error, "status not serialisable");
                false
            }
        }
    }

    /// The round's samples as the node's telemetry payload.
    fn telemetry(&self, round: &Round) -> Telemetry {
        let mut readings = heapless::Vec::new();
        for s in &round.samples {
            let Some(q) = self.quantities.get(usize::from(s.channel)) else {
                continue;
            };
            let _ = readings.push(TelemetryValue {
                ch: ChannelId(s.channel),
                q: *q,
                value: widen_f32(s.value),
                unit: None,
                quality: Quality::from_hj212_flag(s.quality).ok(),
            });
        }
        Telemetry {
            v: PAYLOAD_VERSION,
            seq: round.seq,
            ts: Some(self.stamp(round.time_ms)),
            readings,
        }
    }

    fn publish_telemetry(&mut self, round: &Round) {
        match json(|out| self.telemetry(round).to_json(out)) {
            Ok(payload) => {
                let sent = Sent::Telemetry {
                    seq: round.seq,
                    time_ms: round.time_ms,
                };
                self.publish(TopicKind::Telemetry, &payload, false, sent);
            }
            Err(error) => warn!(
                node = %self.id,
                topic = %self.topic(TopicKind::Telemetry),
                seq = round.seq,
                %error,
                "telemetry not serialisable; round not published"
            ),
        }
    }

    fn publish_malformed(&mut self, round: &Round) {
        let Ok(valid) = json(|out| self.telemetry(round).to_json(out)) else {
            return;
        };
        // serde-json-core writes ASCII, so every byte index is a char boundary.
        let valid = String::from_utf8_lossy(&valid).into_owned();
        let (variant, payload) = match self.malformed % 3 {
            0 => ("truncated JSON", valid[..valid.len() / 2].to_owned()),
            1 => (
                "payload version 2",
                valid.replacen("{\"v\":1,", "{\"v\":2,", 1),
            ),
            _ => ("non-finite value", non_finite_value(&valid)),
        };
        self.malformed = self.malformed.wrapping_add(1);
        debug!(
            node = %self.id,
            topic = %self.topic(TopicKind::Telemetry),
            seq = round.seq,
            variant,
            "MalformedPayload fault: publishing a malformed telemetry payload"
        );
        self.publish(
            TopicKind::Telemetry,
            payload.as_bytes(),
            false,
            Sent::Malformed,
        );
    }

    /// Publishes an [`AlarmEvent`] for each channel whose local alarm level differs from the
    /// one last reported.
    ///
    /// The node core holds only its current alarm state, so this reads it now. When the fleet
    /// has already stepped the node past `round`, the event carries the core's current `seq`
    /// and value and no `ts` (the receiver stamps it), rather than pinning a later state on
    /// this round's time.
    fn report_alarms(&mut self, round: &Round) {
        let mut changes = Vec::new();
        let seq = {
            let node = self.context.fleet.node(self.index);
            let core = node.core();
            for (ch, reported) in self.reported_alarms.iter().enumerate() {
                if let Some((value, _, level)) = core.channel(ch)
                    && level != *reported
                {
                    changes.push((ch, value, level));
                }
            }
            core.seq()
        };
        let ts = (seq == round.seq).then(|| self.stamp(round.time_ms));
        for (ch, value, level) in changes {
            let event = AlarmEvent {
                v: PAYLOAD_VERSION,
                ch: ChannelId(ch as u16),
                q: self.quantities[ch],
                level,
                value: widen_f32(value),
                ts,
                seq,
            };
            match json(|out| event.to_json(out)) {
                Ok(payload) => {
                    if self.publish(TopicKind::Alarm, &payload, false, Sent::Alarm) {
                        info!(node = %self.id, topic = %self.topic(TopicKind::Alarm), ch, ?level, "local alarm change published");
                        self.reported_alarms[ch] = level;
                    }
                }
                Err(error) => warn!(
                    node = %self.id,
                    topic = %self.topic(TopicKind::Alarm),
                    %error,
                    "alarm event not serialisable"
                ),
            }
        }
    }

    fn acknowledged(&self, sent: Sent) {
        let counters = &self.context.counters;
        match sent {
            Sent::Telemetry { seq, time_ms } => {
                bump(&counters.published);
                self.context
                    .fleet
                    .truth
                    .record_published(Arc::clone(&self.id), seq, time_ms);
            }
            Sent::Malformed => bump(&counters.malformed_sent),
            Sent::Alarm => bump(&counters.alarms),
            Sent::Status => bump(&counters.statuses),
            Sent::UpdateReport => bump(&counters.update_reports),
        }
    }
}

/// Connects as node `id`, with its last will retained on `will_topic`.
async fn connect(
    id: Arc<str>,
    will_topic: String,
    broker: SocketAddr,
) -> Result<Connection<Sent>, mqtt_client::Error> {
    let mut will = [0u8; 64];
    let will_len = NodeStatus::last_will()
        .to_json(&mut will)
        .expect("the last will is a fixed, valid payload");
    let options = mqtt_client::Options {
        broker,
        client_id: &id,
        keep_alive: KEEP_ALIVE,
        connect_timeout: CONNECT_TIMEOUT,
        will: Some(Will {
            topic: &will_topic,
            payload: &will[..will_len],
            qos: QoS::AtLeastOnce,
            retain: true,
        }),
        max_packet: MAX_PACKET,
        max_inflight: INFLIGHT,
        max_incoming: MAX_INCOMING,
    };
    Connection::connect(&options).await
}

/// The next event of the connection, if there is one; otherwise waits for ever (the caller's
/// other branches end the wait).
async fn next_event(
    conn: &mut Option<Connection<Sent>>,
) -> Result<Event<Sent>, mqtt_client::Error> {
    match conn {
        Some(conn) => conn.next().await,
        None => std::future::pending().await,
    }
}

/// The publishing instant after one at `t`: the next multiple of `period`, or the next
/// millisecond (every round) when `period` is 0.
fn next_instant(t: SimMs, period: u64) -> SimMs {
    t.checked_div(period).map_or(t + 1, |n| (n + 1) * period)
}

fn classify(faults: &[Fault]) -> Active {
    let mut active = Active::default();
    for fault in faults {
        match fault {
            Fault::MqttDisconnect => active.disconnect = true,
            Fault::DropConnection => active.drop = true,
            Fault::MalformedPayload => active.malformed = true,
            Fault::ClockSkew { offset_ms } => {
                active.skew_ms = active.skew_ms.saturating_add(*offset_ms);
            }
            _ => {}
        }
    }
    active
}

/// Serialises a payload on the stack: the client copies it into the packet at once, so ten
/// thousand nodes need not each hold a buffer for it.
fn json(
    write: impl FnOnce(&mut [u8]) -> Result<usize, PayloadError>,
) -> Result<heapless::Vec<u8, PAYLOAD_BUF>, PayloadError> {
    let mut out = heapless::Vec::new();
    out.resize(PAYLOAD_BUF, 0)
        .expect("PAYLOAD_BUF is the vector's capacity");
    let len = write(&mut out)?;
    out.truncate(len);
    Ok(out)
}

/// `valid` with its first reading's value replaced by a number that overflows to infinity, as
/// firmware printing an unchecked float would send; truncated JSON when it has no reading.
fn non_finite_value(valid: &str) -> String {
    const KEY: &str = "\"value\":";
    let Some(start) = valid.find(KEY).map(|at| at + KEY.len()) else {
        return valid[..valid.len() / 2].to_owned();
    };
    let end = valid[start..]
        .find([',', '}'])
        .map_or(valid.len(), |len| start + len);
    format!("{}1e999{}", &valid[..start], &valid[end..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_non_finite_variant_is_refused_for_its_value() {
        let valid =
            r#"{"v":1,"seq":3,"ts":5,"readings":[{"ch":0,"q":"co2","value":415.0,"quality":"N"}]}"#;
        assert!(Telemetry::from_json(valid.as_bytes()).is_ok());
        let bad = non_finite_value(valid);
        assert_eq!(
            bad,
            r#"{"v":1,"seq":3,"ts":5,"readings":[{"ch":0,"q":"co2","value":1e999,"quality":"N"}]}"#
        );
        assert!(Telemetry::from_json(bad.as_bytes()).is_err());
    }

    #[test]
    fn the_largest_telemetry_fits_the_payload_buffer() {
        // A node's most channels, each with the longest quantity key and a value longer than
        // any widened f32 prints, and the widest seq and ts.
        let longest = Quantity::ALL
            .iter()
            .copied()
            .max_by_key(|q| q.key().len())
            .unwrap();
        let mut readings = heapless::Vec::new();
        for ch in 0..tianzhong_firmware::node::MAX_CHANNELS {
            let reading = TelemetryValue {
                ch: ChannelId(u16::MAX - ch as u16),
                q: longest,
                value: -1.234_567_890_123_456_7e-300,
                unit: None,
                quality: Some(Quality::Bad(tianzhong_protocol::BadReason::SensorFault)),
            };
            readings.push(reading).unwrap();
        }
        let telemetry = Telemetry {
            v: PAYLOAD_VERSION,
            seq: u32::MAX,
            ts: Some(u64::MAX),
            readings,
        };
        let payload = json(|out| telemetry.to_json(out)).expect("fits PAYLOAD_BUF");
        assert!(Telemetry::from_json(&payload).is_ok());
        // The packet: fixed header, topic, packet id and payload.
        let topic = Topic::new(
            SiteId::new(&"s".repeat(32)).unwrap(),
            NodeId::new(&"n".repeat(32)).unwrap(),
            TopicKind::Telemetry,
        )
        .to_string();
        assert!(1 + 2 + 2 + topic.len() + 2 + payload.len() <= MAX_PACKET);
    }

    #[test]
    fn publishing_instants_follow_the_period_grid() {
        // Rounds every second, published every 10 s: the first round at or after each
        // multiple of 10 s, even when rounds do not fall on the multiples.
        let mut next = 0;
        let mut due = Vec::new();
        for t in (0..=35_000).step_by(1000).map(|t| t + 300) {
            if t >= next {
                next = next_instant(t, 10_000);
                due.push(t);
            }
        }
        assert_eq!(due, [300, 10_300, 20_300, 30_300]);
        assert_eq!(next_instant(4_000, 0), 4_001);
    }

    #[test]
    fn backoff_doubles_to_its_ceiling_with_jitter() {
        let mut b = Backoff::new(7);
        let delays: Vec<Duration> = (0..8).map(|_| b.next()).collect();
        assert!(delays[0] >= BACKOFF_MIN.mul_f64(0.75) && delays[0] <= BACKOFF_MIN.mul_f64(1.25));
        assert!(delays.iter().all(|d| *d <= BACKOFF_MAX.mul_f64(1.25)));
        assert!(delays[7] >= BACKOFF_MAX.mul_f64(0.75));
        b.reset();
        assert!(b.next() <= BACKOFF_MIN.mul_f64(1.25));
    }
}
