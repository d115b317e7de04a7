//! The control interface: HTTP on loopback and an in-process handle.
//!
//! [`Control`] answers in-process (tests, the fleet runner); [`serve`] puts the same answers on
//! HTTP, on a loopback address only — the interface can switch faults on, and nothing but the
//! local machine may do that.
//!
//! | request | answer |
//! |---|---|
//! | `GET /fleet` | [`FleetSummary`]: nodes, buses, simulated time, samples taken, reads served, messages published, faults |
//! | `GET /nodes/{id}` | [`NodeView`]: the node's channels (value, HJ 212 quality flag, alarm level), status and active faults; 404 for an unknown node |
//! | `GET /truth/samples.csv` | the ground-truth sample log as CSV ([`GroundTruth::samples_csv`](crate::truth::GroundTruth::samples_csv)) |
//! | `GET /faults` | every fault, scheduled or added, as [`FaultEntry`] |
//! | `POST /faults` | adds a fault ([`FaultRequest`]); 201 with its [`FaultEntry`] |
//! | `DELETE /faults/{id}` | removes a fault; 204, or 404 when there is none with that id |
//!
//! A fault request names its target and the fault as in a scenario, with an optional window in
//! simulated seconds (from the start when `from_s` is absent, for ever when `until_s` is):
//!
//! ```json
//! {"target": {"node": "gas-07"}, "fault": {"kind": "sensor_fault", "channel": 1}, "from_s": 60, "until_s": 120}
//! ```
//!
//! Errors are JSON, `{"error": "…"}`, with 400 for a request that cannot be carried out as sent
//! (malformed JSON, an unknown node, bus or channel, an empty window) and 404 for what does not
//! exist.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use tianzhong_firmware::modbus::RegisterBank as _;
use tianzhong_protocol::registers::widen_f32;
use tianzhong_protocol::{AlarmLevel, Quantity};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::clock::SimMs;
use crate::fault::{Fault, ScheduledFault, Target};
use crate::fleet::Fleet;
use crate::spec::BusKind;

/// The in-process control handle.
#[derive(Clone)]
pub struct Control {
    /// The fleet under control.
    pub fleet: Arc<Fleet>,
}

/// A bus, in a [`FleetSummary`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BusSummary {
    /// Name.
    pub name: String,
    /// `modbus_tcp`, `modbus_rtu` or `mqtt`.
    pub kind: &'static str,
    /// Where it is reached: the listening address, the pseudo-terminal's link, or the broker.
    pub address: String,
    /// Nodes on it.
    pub nodes: usize,
}

/// The fleet at a glance.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FleetSummary {
    /// Number of nodes.
    pub nodes: usize,
    /// The buses.
    pub buses: Vec<BusSummary>,
    /// How far the fleet has been stepped, simulated ms.
    pub sim_time_ms: SimMs,
    /// The same instant in Unix ms.
    pub unix_ms: u64,
    /// Samples taken.
    pub samples: u64,
    /// Modbus reads served (logged only when the fleet keeps its sample log).
    pub served: usize,
    /// MQTT telemetry messages acknowledged by the broker (logged as `served`).
    pub published: usize,
    /// Faults on the board, active or not.
    pub faults: usize,
    /// The faults in force at `sim_time_ms`.
    pub active_faults: Vec<FaultEntry>,
}

/// One channel of a node, in a [`NodeView`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ChannelView {
    /// Channel number.
    pub ch: u16,
    /// What it measures.
    pub quantity: Quantity,
    /// The unit of `value` (the quantity's canonical unit).
    pub unit: &'static str,
    /// The latest value.
    pub value: f64,
    /// Its HJ 212 quality flag (`N` good, `D` sensor fault, …).
    pub quality: char,
    /// The quality in words.
    pub quality_text: &'static str,
    /// The channel's local alarm level.
    pub alarm: AlarmLevel,
}

/// One node as it is now.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NodeView {
    /// Node id.
    pub id: String,
    /// Site id.
    pub site: String,
    /// Bus.
    pub bus: String,
    /// Modbus unit address.
    pub unit: u8,
    /// Firmware version.
    pub firmware: Option<String>,
    /// Sequence number of the latest sample round.
    pub seq: u32,
    /// Seconds since the node (re)booted.
    pub uptime_s: u32,
    /// Highest local alarm level.
    pub highest_alarm: AlarmLevel,
    /// The node profile's status flags.
    pub status_flags: u16,
    /// When the node next samples, simulated ms.
    pub next_due_ms: SimMs,
    /// Its channels.
    pub channels: Vec<ChannelView>,
    /// The faults in force for it now.
    pub faults: Vec<Fault>,
}

/// A fault on the board.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FaultEntry {
    /// Id, for `DELETE /faults/{id}`.
    pub id: u64,
    /// Its target.
    pub target: Target,
    /// The fault.
    pub fault: Fault,
    /// Start, simulated seconds.
    pub from_s: f64,
    /// End (exclusive), simulated seconds; for ever when absent.
    pub until_s: Option<f64>,
    /// Whether it is in force at the fleet's current simulated time.
    pub active: bool,
}

/// A fault to add.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultRequest {
    /// `{"node": id}` or `{"bus": name}`.
    pub target: Target,
    /// The fault, as in a scenario: `{"kind": "sensor_fault", "channel": 1}`.
    pub fault: Fault,
    /// Start, simulated seconds; the start of the run when absent.
    #[serde(default)]
    pub from_s: Option<f64>,
    /// End (exclusive), simulated seconds; for ever when absent.
    #[serde(default)]
    pub until_s: Option<f64>,
}

/// Why a fault was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ControlError {
    /// The target node does not exist.
    #[error("no node {0:?} in the fleet")]
    UnknownNode(String),
    /// The target bus does not exist.
    #[error("no bus {0:?} in the fleet")]
    UnknownBus(String),
    /// A window bound is negative or not a number.
    #[error("{field} must be a finite number of simulated seconds, at least 0 (got {value})")]
    BadTime {
        /// `from_s` or `until_s`.
        field: &'static str,
        /// What was sent.
        value: f64,
    },
    /// The window is empty.
    #[error("until_s ({until}) must be later than from_s ({from})")]
    EmptyWindow {
        /// Start, s.
        from: f64,
        /// End, s.
        until: f64,
    },
    /// The fault names a channel no targeted node has.
    #[error("channel {channel} does not exist on {target} (it has {channels} channels, 0 to {})", .channels.saturating_sub(1))]
    NoChannel {
        /// The channel.
        channel: u16,
        /// `node …` or `any node of bus …`.
        target: String,
        /// The most channels a targeted node has.
        channels: usize,
    },
    /// A spike value that is not a number.
    #[error("the spike value must be a finite number")]
    NotFinite,
}

fn seconds(ms: SimMs) -> f64 {
    ms as f64 / 1000.0
}

fn millis(field: &'static str, s: f64) -> Result<SimMs, ControlError> {
    if s.is_finite() && s >= 0.0 {
        Ok((s * 1000.0).round() as SimMs)
    } else {
        Err(ControlError::BadTime { field, value: s })
    }
}

impl Control {
    /// A handle on `fleet`.
    pub fn new(fleet: Arc<Fleet>) -> Control {
        Control { fleet }
    }

    fn entry(id: u64, f: ScheduledFault, now: SimMs) -> FaultEntry {
        let active = now >= f.from_ms && f.until_ms.is_none_or(|u| now < u);
        FaultEntry {
            id,
            target: f.target,
            fault: f.fault,
            from_s: seconds(f.from_ms),
            until_s: f.until_ms.map(seconds),
            active,
        }
    }

    /// The fleet at a glance.
    pub fn summary(&self) -> FleetSummary {
        let fleet = &self.fleet;
        let now = fleet.stepped_to();
        let buses = fleet
            .buses
            .iter()
            .map(|b| {
                let (kind, address) = match &b.kind {
                    BusKind::ModbusTcp { listen, .. } => ("modbus_tcp", listen.to_string()),
                    BusKind::ModbusRtu { link, .. } => ("modbus_rtu", link.display().to_string()),
                    BusKind::Mqtt { broker, .. } => ("mqtt", broker.to_string()),
                };
                BusSummary {
                    name: b.name.clone(),
                    kind,
                    address,
                    nodes: fleet.nodes_on_bus(&b.name).len(),
                }
            })
            .collect();
        let faults = fleet.faults.list();
        FleetSummary {
            nodes: fleet.len(),
            buses,
            sim_time_ms: now,
            unix_ms: fleet.clock.unix_ms(now),
            samples: fleet.truth.sample_count(),
            served: fleet.truth.served().len(),
            published: fleet.truth.published().len(),
            faults: faults.len(),
            active_faults: faults
                .into_iter()
                .map(|(id, f)| Control::entry(id, f, now))
                .filter(|e| e.active)
                .collect(),
        }
    }

    /// One node as it is now; `None` when there is no node `id`.
    pub fn node(&self, id: &str) -> Option<NodeView> {
        let index = self.fleet.index_of(id)?;
        let now = self.fleet.stepped_to();
        let node = self.fleet.node(index);
        let core = node.core();
        let status = core.status();
        let channels = (0..core.channel_count())
            .filter_map(|ch| {
                let (value, quality, alarm) = core.channel(ch)?;
                let quantity = core.quantity(ch)?;
                Some(ChannelView {
                    ch: ch as u16,
                    quantity,
                    unit: quantity.canonical_unit().symbol(),
                    value: widen_f32(value),
                    quality: quality.hj212_flag(),
                    quality_text: quality.description(),
                    alarm,
                })
            })
            .collect();
        let view = NodeView {
            id: node.id.to_string(),
            site: node.site.to_string(),
            bus: node.bus.to_string(),
            unit: node.unit,
            firmware: core.device_identification(0x02).map(str::to_owned),
            seq: core.seq(),
            uptime_s: status.uptime_s,
            highest_alarm: status.highest_alarm,
            status_flags: status.flags.0,
            next_due_ms: core.next_due_ms(),
            channels,
            faults: Vec::new(),
        };
        let (id, bus) = (Arc::clone(&node.id), Arc::clone(&node.bus));
        // The fault board has its own lock; do not hold the node's while taking it.
        drop(node);
        Some(NodeView {
            faults: self.fleet.faults.active(&id, &bus, now),
            ..view
        })
    }

    /// The ground-truth sample log as CSV.
    pub fn samples_csv(&self) -> String {
        self.fleet.truth.samples_csv()
    }

    /// Every fault on the board.
    pub fn faults(&self) -> Vec<FaultEntry> {
        let now = self.fleet.stepped_to();
        self.fleet
            .faults
            .list()
            .into_iter()
            .map(|(id, f)| Control::entry(id, f, now))
            .collect()
    }

    /// Checks and adds a fault.
    pub fn add_fault(&self, request: FaultRequest) -> Result<FaultEntry, ControlError> {
        let from_ms = millis("from_s", request.from_s.unwrap_or(0.0))?;
        let until_ms = request.until_s.map(|u| millis("until_s", u)).transpose()?;
        if let Some(until) = until_ms
            && until <= from_ms
        {
            return Err(ControlError::EmptyWindow {
                from: request.from_s.unwrap_or(0.0),
                until: request.until_s.unwrap_or(0.0),
            });
        }
        let (targets, described) = match &request.target {
            Target::Node(id) => {
                let i = self
                    .fleet
                    .index_of(id)
                    .ok_or_else(|| ControlError::UnknownNode(id.clone()))?;
                (vec![i], format!("node {id}"))
            }
            Target::Bus(name) => {
                if !self.fleet.buses.iter().any(|b| &b.name == name) {
                    return Err(ControlError::UnknownBus(name.clone()));
                }
                (
                    self.fleet.nodes_on_bus(name),
                    format!("any node of bus {name}"),
                )
            }
        };
        let channel = match request.fault {
            Fault::StuckValue { channel } | Fault::SensorFault { channel } => channel,
            Fault::Spike { channel, value } => {
                if !value.is_finite() {
                    return Err(ControlError::NotFinite);
                }
                Some(channel)
            }
            _ => None,
        };
        if let Some(channel) = channel {
            let channels = targets
                .iter()
                .map(|&i| self.fleet.node(i).core().channel_count())
                .max()
                .unwrap_or(0);
            if usize::from(channel) >= channels {
                return Err(ControlError::NoChannel {
                    channel,
                    target: described,
                    channels,
                });
            }
        }
        let fault = ScheduledFault {
            fault: request.fault,
            target: request.target,
            from_ms,
            until_ms,
        };
        let id = self.fleet.faults.add(fault.clone());
        info!(id, target = ?fault.target, fault = ?fault.fault, from_ms, until_ms, "fault added");
        Ok(Control::entry(id, fault, self.fleet.stepped_to()))
    }

    /// Removes a fault; false when there is none with this id.
    pub fn clear_fault(&self, id: u64) -> bool {
        let cleared = self.fleet.faults.clear(id);
        if cleared {
            info!(id, "fault cleared");
        }
        cleared
    }
}

/// An error answer: `{"error": message}` with a status.
#[derive(Debug)]
struct ApiError(StatusCode, String);

impl ApiError {
    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError(StatusCode::BAD_REQUEST, message.into())
    }

    fn not_found(message: impl Into<String>) -> ApiError {
        ApiError(StatusCode::NOT_FOUND, message.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, axum::Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> ApiError {
        ApiError::bad_request(e.to_string())
    }
}

impl From<PathRejection> for ApiError {
    fn from(e: PathRejection) -> ApiError {
        ApiError::bad_request(format!("bad path: {}", e.body_text()))
    }
}

impl From<BytesRejection> for ApiError {
    fn from(e: BytesRejection) -> ApiError {
        ApiError(
            e.status(),
            format!("cannot read the request body: {}", e.body_text()),
        )
    }
}

/// Runs `f` off the async threads: it takes fleet locks that a step of a large fleet holds
/// for a while.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        warn!(error = %e, "control request failed");
        ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("request failed: {e}"),
        )
    })
}

async fn get_fleet(State(control): State<Control>) -> Result<Response, ApiError> {
    let summary = blocking(move || control.summary()).await?;
    Ok(axum::Json(summary).into_response())
}

async fn get_node(
    State(control): State<Control>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(id) = id?;
    let lookup = id.clone();
    match blocking(move || control.node(&lookup)).await? {
        Some(view) => Ok(axum::Json(view).into_response()),
        None => Err(ApiError::not_found(format!("no node {id:?} in the fleet"))),
    }
}

async fn get_samples_csv(State(control): State<Control>) -> Result<Response, ApiError> {
    let csv = blocking(move || control.samples_csv()).await?;
    Ok(([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], csv).into_response())
}

async fn get_faults(State(control): State<Control>) -> Result<Response, ApiError> {
    let faults = blocking(move || control.faults()).await?;
    Ok(axum::Json(faults).into_response())
}

async fn post_fault(
    State(control): State<Control>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "empty request body; expected a JSON fault such as \
             {\"target\":{\"node\":\"n1\"},\"fault\":{\"kind\":\"sensor_fault\",\"channel\":0}}",
        ));
    }
    let request: FaultRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid fault request: {e}")))?;
    let entry = blocking(move || control.add_fault(request)).await??;
    Ok((StatusCode::CREATED, axum::Json(entry)).into_response())
}

async fn delete_fault(
    State(control): State<Control>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(id) = id?;
    let number: u64 = id
        .parse()
        .map_err(|_| ApiError::bad_request(format!("fault id {id:?} is not a number")))?;
    if blocking(move || control.clear_fault(number)).await? {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::not_found(format!("no fault with id {number}")))
    }
}

async fn no_route() -> ApiError {
    ApiError::not_found(
        "no such resource; the control interface serves /fleet, /nodes/{id}, \
         /truth/samples.csv, /faults and /faults/{id}",
    )
}

async fn wrong_method() -> ApiError {
    ApiError(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this resource".into(),
    )
}

/// The HTTP routes, for embedding in another server.
pub fn router(control: Control) -> Router {
    Router::new()
        .route("/fleet", get(get_fleet))
        .route("/nodes/{id}", get(get_node))
        .route("/truth/samples.csv", get(get_samples_csv))
        .route("/faults", get(get_faults).post(post_fault))
        .route("/faults/{id}", axum::routing::delete(delete_fault))
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .with_state(control)
}

/// The running HTTP control server. Dropping it stops the server.
pub struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<io::Result<()>>,
}

impl Server {
    /// The address it listens on (with the port chosen when asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting requests and waits for those in progress to finish.
    pub async fn shutdown(mut self) -> io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match (&mut self.task).await {
            Ok(result) => result,
            Err(e) => Err(io::Error::other(e)),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves the control interface on `addr`, which must be a loopback address; returns once it
/// listens. Must be called within a tokio runtime.
pub async fn serve(control: Control, addr: SocketAddr) -> io::Result<Server> {
    if !addr.ip().is_loopback() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "the control interface listens on loopback only: {addr} is not a loopback address \
                 (use 127.0.0.1 or ::1)"
            ),
        ));
    }
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel::<()>();
    let app = router(control);
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
    });
    info!(%addr, "control interface listening");
    Ok(Server {
        addr,
        stop: Some(stop),
        task,
    })
}
