//! Modbus TCP listeners.
//!
//! A [`BusKind::ModbusTcp`] bus is served in one of two ways:
//!
//! - **per node** (`per_node = true`): one listener per node, on ports counting up from the
//!   bus's `listen` port in the order of [`Fleet::nodes_on_bus`] (port 0 gives every listener an
//!   ephemeral port of its own). Like a real Modbus TCP device, a listener answers whatever unit
//!   ID a request carries, echoing it.
//! - **gateway** (`per_node = false`): one listener with every node of the bus behind it by unit
//!   ID, as behind a serial-to-Ethernet gateway. A unit ID no node has gets exception 0x0B,
//!   "gateway target device failed to respond", which is what such a gateway answers when the
//!   serial device stays silent.
//!
//! The MBAP framing (transaction id, protocol id 0, length, unit id) is written here around
//! [`VirtualNode::modbus`](crate::node::VirtualNode::modbus), the firmware's own PDU handler.
//! tokio-modbus's server is not used because it frames every reply itself: it cannot send a
//! wrong length field, a truncated reply, garbage or a reply under another unit ID, which are
//! the faults this transport exists to inject.
//!
//! A node is locked only while it answers one request, so a slow reply on one connection does
//! not hold up others. A malformed MBAP header (protocol id other than 0, a length below 2 or
//! above 254, the most a 253-byte PDU needs) closes that connection and is counted; the listener
//! goes on.
//!
//! # Faults
//!
//! Looked up per request from [`FaultBoard::active`](crate::fault::FaultBoard::active) for the
//! node and bus at the simulated time of the request:
//!
//! | fault | on Modbus TCP |
//! |---|---|
//! | `drop_connection` | the socket is closed when the request arrives |
//! | `no_reply` | the request is read and never answered (nor executed) |
//! | `slow_reply` | the answer goes out `delay_ms` late |
//! | `exception` | every request is answered with that exception code, and not executed |
//! | `wrong_crc` | TCP has no CRC: the MBAP length field claims one byte more than follows |
//! | `truncated` | only the first half of the reply's bytes are sent |
//! | `garbage` | random bytes as long as the reply, from a stream seeded by the fleet seed, bus and node |
//! | `wrong_unit` | the reply carries another unit ID (`unit % 247 + 1`) |
//!
//! The stats, the fault plan and the per-node garbage streams here are shared with
//! [`modbus_rtu`](super::modbus_rtu), which frames the same answers for a serial line.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{Rng, SeedableRng};
use serde::Serialize;
use tianzhong_firmware::modbus::pdu::{self, Handled, MAX_PDU_LEN, Request, function};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, info, warn};

use crate::fault::Fault;
use crate::fleet::Fleet;
use crate::spec::{BusKind, BusSpec};

/// The MBAP header: transaction id, protocol id, length, unit id.
pub const MBAP_HEADER_LEN: usize = 7;

/// The largest MBAP length field: the unit id and the longest PDU.
pub const MAX_MBAP_LENGTH: u16 = 1 + MAX_PDU_LEN as u16;

/// Exception 0x0B, gateway target device failed to respond: the answer to a unit ID that no
/// node behind a gateway listener has.
pub const GATEWAY_TARGET_FAILED: u8 = 0x0B;

// ---------------------------------------------------------------------------------------------
// Shared with the RTU transport: counters, the fault plan, answering one request.
// ---------------------------------------------------------------------------------------------

/// How often each wire fault changed what a transport did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FaultCounts {
    /// Requests read and not answered.
    pub no_reply: u64,
    /// Replies sent late.
    pub slow_reply: u64,
    /// Requests answered with the injected exception code.
    pub exception: u64,
    /// Replies with a wrong CRC (RTU) or MBAP length (TCP).
    pub wrong_crc: u64,
    /// Replies cut short.
    pub truncated: u64,
    /// Replies replaced by random bytes.
    pub garbage: u64,
    /// Replies under another unit ID.
    pub wrong_unit: u64,
    /// Connections closed on a request (TCP); requests left unanswered for it (RTU).
    pub drop_connection: u64,
}

impl FaultCounts {
    /// All faults applied, of every kind.
    pub fn total(&self) -> u64 {
        self.no_reply
            + self.slow_reply
            + self.exception
            + self.wrong_crc
            + self.truncated
            + self.garbage
            + self.wrong_unit
            + self.drop_connection
    }
}

/// What a Modbus transport did, as counted so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ModbusCounts {
    /// TCP connections accepted (always 0 on RTU).
    pub connections: u64,
    /// Requests received whole: a valid MBAP header and PDU (TCP), a frame with a good CRC for a
    /// unit on the bus (RTU). Broadcasts are counted in `broadcasts` instead.
    pub requests: u64,
    /// Replies sent, faulty ones included (counted as they are handed to the socket or line).
    pub replies: u64,
    /// Of the replies, exception responses (the nodes' own, injected ones and 0x0B).
    pub exceptions: u64,
    /// RTU broadcasts (unit 0) received with a good CRC.
    pub broadcasts: u64,
    /// Requests for a unit ID no node of the bus has (answered with 0x0B behind a gateway
    /// listener, left unanswered on RTU).
    pub unknown_units: u64,
    /// Malformed input: bad MBAP headers (TCP), frames failing the CRC, cut by a t1.5 gap,
    /// overrunning 256 bytes or lost for not being polled in time (RTU).
    pub malformed: u64,
    /// Wire faults applied.
    pub faults: FaultCounts,
}

/// The counters of one bus's transport, shared with whoever wants to read them.
#[derive(Debug, Default)]
pub struct ModbusStats(Mutex<ModbusCounts>);

impl ModbusStats {
    /// The counters now.
    pub fn snapshot(&self) -> ModbusCounts {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn update(&self, f: impl FnOnce(&mut ModbusCounts)) {
        f(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()));
    }
}

/// The wire faults in force for one request, folded from the active fault list.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct WireFaults {
    pub drop_connection: bool,
    pub no_reply: bool,
    pub delay: Option<Duration>,
    pub exception: Option<u8>,
    pub wrong_crc: bool,
    pub truncated: bool,
    pub garbage: bool,
    pub wrong_unit: bool,
    /// A firmware-update failure, which the node applies to update requests.
    pub update: Option<Fault>,
}

impl WireFaults {
    /// Keeps the faults a transport applies; node faults (stuck values, spikes …) are the
    /// node's business and MQTT faults the MQTT transport's. Of several delays the longest
    /// counts, of several exception codes the first added.
    pub(crate) fn from_active(faults: &[Fault]) -> WireFaults {
        let mut w = WireFaults::default();
        for f in faults {
            match f {
                Fault::NoReply => w.no_reply = true,
                Fault::SlowReply { delay_ms } => {
                    let d = Duration::from_millis(*delay_ms);
                    w.delay = Some(w.delay.map_or(d, |old| old.max(d)));
                }
                Fault::Exception { code } => {
                    w.exception.get_or_insert(*code);
                }
                Fault::WrongCrc => w.wrong_crc = true,
                Fault::Truncated => w.truncated = true,
                Fault::Garbage => w.garbage = true,
                Fault::WrongUnit => w.wrong_unit = true,
                Fault::DropConnection => w.drop_connection = true,
                f if f.is_update_failure() => {
                    w.update.get_or_insert_with(|| f.clone());
                }
                _ => {}
            }
        }
        w
    }

    /// The faults that change the bytes of a reply, after the node (or the injected exception)
    /// has answered: applied in this order by both transports.
    pub(crate) fn mangles_reply(&self) -> bool {
        self.wrong_crc || self.truncated || self.garbage || self.wrong_unit
    }
}

/// The unit ID a `wrong_unit` reply carries: always another one in 1..=247.
pub(crate) fn other_unit(unit: u8) -> u8 {
    unit % 247 + 1
}

/// How much of a reply a `truncated` fault lets through: the first half, at least one byte.
pub(crate) fn truncated_len(len: usize) -> usize {
    (len / 2).max(1).min(len.saturating_sub(1))
}

/// A node of a bus, as the transports address it.
pub(crate) struct BusNode {
    /// Index in the fleet.
    pub index: usize,
    /// Unit address.
    pub unit: u8,
    /// Node id, for faults and logs.
    pub id: Arc<str>,
    /// The stream `garbage` replies are drawn from.
    garbage: Mutex<ChaCha8Rng>,
}

impl BusNode {
    /// Overwrites `bytes` with the node's next garbage.
    pub(crate) fn fill_garbage(&self, bytes: &mut [u8]) {
        self.garbage
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .fill_bytes(bytes);
    }
}

/// The nodes of one bus.
pub(crate) struct BusNodes {
    pub bus: Arc<str>,
    pub nodes: Vec<BusNode>,
    by_unit: HashMap<u8, usize>,
}

impl BusNodes {
    pub(crate) fn new(fleet: &Fleet, bus: &str, seed: u64) -> BusNodes {
        let mut nodes = Vec::new();
        let mut by_unit = HashMap::new();
        for index in fleet.nodes_on_bus(bus) {
            let (unit, id) = {
                let node = fleet.node(index);
                (node.unit, Arc::clone(&node.id))
            };
            // Each node its own stream, so that one node's garbage does not depend on how often
            // another one was asked.
            let stream =
                crate::signal::stream_seed(&[&seed.to_le_bytes(), bus.as_bytes(), id.as_bytes()]);
            match by_unit.get(&unit) {
                Some(&first) => {
                    let first: &BusNode = &nodes[first];
                    warn!(bus, unit, node = %id, first = %first.id, "two nodes share a unit ID; the first answers")
                }
                None => {
                    by_unit.insert(unit, nodes.len());
                }
            }
            nodes.push(BusNode {
                index,
                unit,
                id,
                garbage: Mutex::new(ChaCha8Rng::seed_from_u64(stream)),
            });
        }
        BusNodes {
            bus: Arc::from(bus),
            nodes,
            by_unit,
        }
    }

    pub(crate) fn by_unit(&self, unit: u8) -> Option<&BusNode> {
        self.by_unit.get(&unit).map(|&i| &self.nodes[i])
    }
}

/// A request PDU for logs: function and register range.
pub(crate) struct RequestSummary<'a>(pub &'a [u8]);

impl fmt::Display for RequestSummary<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let range = |f: &mut fmt::Formatter<'_>, what: &str, address: u16, n: u16| {
            let last = u32::from(address) + u32::from(n).max(1) - 1;
            write!(f, "{what} 0x{address:04X}..=0x{last:04X} ({n} registers)")
        };
        match pdu::parse_request(self.0) {
            Ok(Request::ReadHoldingRegisters { address, quantity }) => {
                range(f, "read holding registers", address, quantity)
            }
            Ok(Request::ReadInputRegisters { address, quantity }) => {
                range(f, "read input registers", address, quantity)
            }
            Ok(Request::WriteSingleRegister { address, value }) => {
                write!(f, "write holding register 0x{address:04X} = 0x{value:04X}")
            }
            Ok(Request::WriteMultipleRegisters { address, values }) => {
                range(f, "write holding registers", address, values.len() as u16)
            }
            Ok(Request::ReadDeviceIdentification { code, object_id }) => {
                write!(
                    f,
                    "read device identification {code:?} from object 0x{object_id:02X}"
                )
            }
            Err(e) => match self.0.first() {
                Some(code) => write!(f, "function 0x{code:02X} ({e:?})"),
                None => write!(f, "an empty PDU"),
            },
        }
    }
}

/// What a node (or the fault standing in for it) made of one request.
pub(crate) enum Outcome {
    /// Close the connection (TCP) or stay silent (RTU), for `drop_connection`.
    Drop,
    /// Stay silent, for `no_reply`.
    Silent,
    /// Send this response PDU (after `delay`, when `slow_reply`).
    Reply { pdu: Vec<u8>, exception: bool },
}

/// Answers `request` (a PDU) for `node`, under `faults`: the part both transports share, up to
/// the response PDU. Counts the faults it applies, not the request or the reply.
pub(crate) fn answer(
    fleet: &Fleet,
    bus: &str,
    node: &BusNode,
    unit: u8,
    request: &[u8],
    faults: &WireFaults,
    stats: &ModbusStats,
) -> Outcome {
    let summary = RequestSummary(request);
    if faults.drop_connection {
        stats.update(|c| c.faults.drop_connection += 1);
        debug!(bus, unit, node = %node.id, request = %summary, "fault drop_connection: dropping the request");
        return Outcome::Drop;
    }
    if faults.no_reply {
        stats.update(|c| c.faults.no_reply += 1);
        debug!(bus, unit, node = %node.id, request = %summary, "fault no_reply: not answering");
        return Outcome::Silent;
    }
    let function = request.first().copied().unwrap_or(0);
    if let Some(code) = faults.exception {
        stats.update(|c| c.faults.exception += 1);
        debug!(bus, unit, node = %node.id, request = %summary, code, "fault exception: refusing");
        return Outcome::Reply {
            pdu: vec![function | function::EXCEPTION_FLAG, code],
            exception: true,
        };
    }
    let mut out = [0u8; MAX_PDU_LEN];
    // The node is locked for this one request only.
    let handled = fleet.node(node.index).modbus_faulted(
        request,
        &mut out,
        fleet.clock.now(),
        faults.update.as_slice(),
    );
    match handled {
        Handled::Response(len) => Outcome::Reply {
            pdu: out[..len].to_vec(),
            exception: false,
        },
        Handled::Exception(e) => {
            debug!(bus, unit, node = %node.id, request = %summary, exception = ?e, "node answered with an exception");
            Outcome::Reply {
                pdu: out[..2].to_vec(),
                exception: true,
            }
        }
        Handled::NoRoom => {
            // A MAX_PDU_LEN buffer always holds an exception: this would be a firmware bug.
            warn!(bus, unit, node = %node.id, request = %summary, "node had no room for its answer; not answering");
            Outcome::Silent
        }
    }
}

/// Applies `truncated` and `garbage` to a framed reply; the framing-specific faults (unit,
/// CRC or length) come before.
pub(crate) fn cut_or_scramble(
    adu: &mut Vec<u8>,
    node: &BusNode,
    faults: &WireFaults,
    stats: &ModbusStats,
) {
    if faults.truncated {
        adu.truncate(truncated_len(adu.len()));
        stats.update(|c| c.faults.truncated += 1);
    }
    if faults.garbage {
        node.fill_garbage(adu);
        stats.update(|c| c.faults.garbage += 1);
    }
}

/// Resolves once `stop` says so or its sender is gone.
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

// ---------------------------------------------------------------------------------------------
// Modbus TCP.
// ---------------------------------------------------------------------------------------------

/// A listener of a running Modbus TCP bus.
#[derive(Clone, Debug, PartialEq)]
pub struct TcpListenerInfo {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The fleet indices of the nodes behind it: one per node, all of the bus behind a gateway.
    pub nodes: Vec<usize>,
}

/// A running Modbus TCP bus. Dropping it stops the listeners and their connections, as does
/// [`ModbusTcpServer::shutdown`], which also waits for them.
pub struct ModbusTcpServer {
    bus: String,
    listeners: Vec<TcpListenerInfo>,
    stats: Arc<ModbusStats>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl fmt::Debug for ModbusTcpServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ModbusTcpServer")
            .field("bus", &self.bus)
            .field("listeners", &self.listeners)
            .finish()
    }
}

impl ModbusTcpServer {
    /// The bus name.
    pub fn bus(&self) -> &str {
        &self.bus
    }

    /// The listeners, in the order of [`Fleet::nodes_on_bus`] when one per node.
    pub fn listeners(&self) -> &[TcpListenerInfo] {
        &self.listeners
    }

    /// Every bound address.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.listeners.iter().map(|l| l.addr).collect()
    }

    /// Where the node with fleet index `node` is reached.
    pub fn addr_of(&self, node: usize) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|l| l.nodes.contains(&node))
            .map(|l| l.addr)
    }

    /// The counters now.
    pub fn stats(&self) -> ModbusCounts {
        self.stats.snapshot()
    }

    /// The live counters, for whoever outlives this handle or reads them elsewhere.
    pub fn stats_handle(&self) -> Arc<ModbusStats> {
        Arc::clone(&self.stats)
    }

    /// Stops accepting, closes every connection and waits until the listeners are gone.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

struct TcpBus {
    fleet: Arc<Fleet>,
    nodes: BusNodes,
    stats: Arc<ModbusStats>,
}

/// Who answers on a listener.
#[derive(Clone, Copy)]
enum Route {
    /// The node at this position of [`BusNodes::nodes`], whatever the unit ID.
    Node(usize),
    /// Every node of the bus, by unit ID.
    Gateway,
}

/// Binds the listeners of `bus`, a [`BusKind::ModbusTcp`] bus of `fleet`, and serves them until
/// the returned handle is shut down or dropped. Returns once every listener is bound. `seed`
/// (the scenario's) seeds the `garbage` fault's bytes. Must run inside a tokio runtime.
pub async fn start(fleet: Arc<Fleet>, bus: &BusSpec, seed: u64) -> io::Result<ModbusTcpServer> {
    let BusKind::ModbusTcp { listen, per_node } = bus.kind else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bus {}: not a Modbus TCP bus: {:?}", bus.name, bus.kind),
        ));
    };
    let nodes = BusNodes::new(&fleet, &bus.name, seed);
    let mut bound = Vec::new();
    if per_node {
        for (k, node) in nodes.nodes.iter().enumerate() {
            let mut addr = listen;
            if listen.port() != 0 {
                let port = u16::try_from(usize::from(listen.port()) + k).map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!(
                            "bus {}: no port left for node {} (unit {}) above {listen}",
                            bus.name, node.id, node.unit
                        ),
                    )
                })?;
                addr.set_port(port);
            }
            let listener = TcpListener::bind(addr).await.map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "bus {}: node {} (unit {}): binding {addr}: {e}",
                        bus.name, node.id, node.unit
                    ),
                )
            })?;
            bound.push((listener, vec![node.index], Route::Node(k)));
        }
        if nodes.nodes.is_empty() {
            warn!(bus = %bus.name, "per-node Modbus TCP bus has no nodes: nothing to listen on");
        }
    } else {
        let listener = TcpListener::bind(listen).await.map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("bus {}: binding gateway listener {listen}: {e}", bus.name),
            )
        })?;
        bound.push((
            listener,
            nodes.nodes.iter().map(|n| n.index).collect(),
            Route::Gateway,
        ));
    }

    let stats = Arc::new(ModbusStats::default());
    let ctx = Arc::new(TcpBus {
        fleet,
        nodes,
        stats: Arc::clone(&stats),
    });
    let (stop, stop_rx) = watch::channel(false);
    let mut listeners = Vec::with_capacity(bound.len());
    let mut tasks = Vec::with_capacity(bound.len());
    for (listener, node_indices, route) in bound {
        let addr = listener.local_addr()?;
        match route {
            Route::Node(k) => {
                let n = &ctx.nodes.nodes[k];
                info!(bus = %bus.name, %addr, node = %n.id, unit = n.unit, "Modbus TCP node listening");
            }
            Route::Gateway => {
                let units: Vec<u8> = ctx.nodes.nodes.iter().map(|n| n.unit).collect();
                info!(bus = %bus.name, %addr, ?units, "Modbus TCP gateway listening");
            }
        }
        listeners.push(TcpListenerInfo {
            addr,
            nodes: node_indices,
        });
        tasks.push(tokio::spawn(accept_loop(
            listener,
            addr,
            Arc::clone(&ctx),
            route,
            stop_rx.clone(),
        )));
    }
    Ok(ModbusTcpServer {
        bus: bus.name.clone(),
        listeners,
        stats,
        stop,
        tasks,
    })
}

async fn accept_loop(
    listener: TcpListener,
    local: SocketAddr,
    ctx: Arc<TcpBus>,
    route: Route,
    mut stop: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = stopped(&mut stop) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    ctx.stats.update(|c| c.connections += 1);
                    debug!(bus = %ctx.nodes.bus, %local, %peer, "connection accepted");
                    connections.spawn(serve_connection(stream, peer, local, Arc::clone(&ctx), route, stop.clone()));
                }
                Err(e) => {
                    // Accept errors such as running out of descriptors persist for a while:
                    // back off instead of spinning, and keep the listener.
                    warn!(bus = %ctx.nodes.bus, %local, error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    connections.shutdown().await;
}

/// Why a connection ends.
enum Closed {
    Peer,
    Io(io::Error),
    Malformed,
    Dropped,
    Stopped,
}

async fn serve_connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    ctx: Arc<TcpBus>,
    route: Route,
    mut stop: watch::Receiver<bool>,
) {
    // Replies are whole ADUs written at once; Nagle would only delay them.
    let _ = stream.set_nodelay(true);
    let closed = tokio::select! {
        _ = stopped(&mut stop) => Closed::Stopped,
        closed = connection_loop(&mut stream, peer, local, &ctx, route) => closed,
    };
    let bus = &*ctx.nodes.bus;
    match closed {
        Closed::Peer => debug!(bus, %local, %peer, "connection closed by the client"),
        Closed::Io(e) => debug!(bus, %local, %peer, error = %e, "connection failed"),
        Closed::Malformed => {}
        Closed::Dropped => debug!(bus, %local, %peer, "connection dropped by fault"),
        Closed::Stopped => debug!(bus, %local, %peer, "connection closed: bus stopping"),
    }
}

async fn connection_loop(
    stream: &mut TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    ctx: &TcpBus,
    route: Route,
) -> Closed {
    let bus = &*ctx.nodes.bus;
    let mut header = [0u8; MBAP_HEADER_LEN];
    let mut body = [0u8; MAX_PDU_LEN];
    loop {
        match stream.read_exact(&mut header).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Closed::Peer,
            Err(e) => return Closed::Io(e),
        }
        let transaction = u16::from_be_bytes([header[0], header[1]]);
        let protocol = u16::from_be_bytes([header[2], header[3]]);
        let length = u16::from_be_bytes([header[4], header[5]]);
        let unit = header[6];
        if protocol != 0 || !(2..=MAX_MBAP_LENGTH).contains(&length) {
            ctx.stats.update(|c| c.malformed += 1);
            warn!(
                bus, %local, %peer, unit, transaction, protocol, length,
                "malformed MBAP header (protocol id must be 0, length 2..={MAX_MBAP_LENGTH}); closing the connection"
            );
            return Closed::Malformed;
        }
        let request = &mut body[..usize::from(length) - 1];
        match stream.read_exact(request).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Closed::Peer,
            Err(e) => return Closed::Io(e),
        }
        let request = &*request;
        ctx.stats.update(|c| c.requests += 1);

        let node = match route {
            Route::Node(k) => Some(&ctx.nodes.nodes[k]),
            Route::Gateway => ctx.nodes.by_unit(unit),
        };
        let (adu, delay, exception) = match node {
            None => {
                ctx.stats.update(|c| c.unknown_units += 1);
                debug!(bus, %local, %peer, unit, request = %RequestSummary(request), "no node with this unit ID behind the gateway: exception 0x0B");
                let function = request[0] | function::EXCEPTION_FLAG;
                (
                    mbap_adu(transaction, unit, &[function, GATEWAY_TARGET_FAILED]),
                    None,
                    true,
                )
            }
            Some(node) => {
                let faults = WireFaults::from_active(&ctx.fleet.faults.active(
                    &node.id,
                    bus,
                    ctx.fleet.clock.now(),
                ));
                match answer(&ctx.fleet, bus, node, unit, request, &faults, &ctx.stats) {
                    Outcome::Drop => return Closed::Dropped,
                    Outcome::Silent => continue,
                    Outcome::Reply { pdu, exception } => {
                        let reply_unit = if faults.wrong_unit {
                            ctx.stats.update(|c| c.faults.wrong_unit += 1);
                            other_unit(unit)
                        } else {
                            unit
                        };
                        let mut adu = mbap_adu(transaction, reply_unit, &pdu);
                        if faults.wrong_crc {
                            // TCP has no CRC; the length field is its integrity check.
                            let wrong = u16::from_be_bytes([adu[4], adu[5]]).wrapping_add(1);
                            adu[4..6].copy_from_slice(&wrong.to_be_bytes());
                            ctx.stats.update(|c| c.faults.wrong_crc += 1);
                        }
                        cut_or_scramble(&mut adu, node, &faults, &ctx.stats);
                        if faults.mangles_reply() {
                            debug!(bus, %local, %peer, unit, node = %node.id, request = %RequestSummary(request), ?faults, "reply mangled by fault");
                        }
                        if let Some(delay) = faults.delay {
                            ctx.stats.update(|c| c.faults.slow_reply += 1);
                            debug!(bus, %local, %peer, unit, node = %node.id, request = %RequestSummary(request), ?delay, "fault slow_reply: answering late");
                        }
                        (adu, faults.delay, exception)
                    }
                }
            }
        };
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        // Counted before it goes out: a client that has read it must find it counted.
        ctx.stats.update(|c| {
            c.replies += 1;
            c.exceptions += u64::from(exception);
        });
        if let Err(e) = stream.write_all(&adu).await {
            return Closed::Io(e);
        }
    }
}

/// An MBAP-framed ADU around `pdu`.
fn mbap_adu(transaction: u16, unit: u8, pdu: &[u8]) -> Vec<u8> {
    let mut adu = Vec::with_capacity(MBAP_HEADER_LEN + pdu.len());
    adu.extend_from_slice(&transaction.to_be_bytes());
    adu.extend_from_slice(&0u16.to_be_bytes());
    // A PDU is at most 253 bytes, so the length fits.
    adu.extend_from_slice(&(1 + pdu.len() as u16).to_be_bytes());
    adu.push(unit);
    adu.extend_from_slice(pdu);
    adu
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_faults_fold_the_active_list() {
        let w = WireFaults::from_active(&[
            Fault::SlowReply { delay_ms: 100 },
            Fault::Exception { code: 4 },
            Fault::StuckValue { channel: None },
            Fault::SlowReply { delay_ms: 300 },
            Fault::Exception { code: 6 },
            Fault::WrongUnit,
        ]);
        assert_eq!(w.delay, Some(Duration::from_millis(300)));
        assert_eq!(w.exception, Some(4));
        assert!(w.wrong_unit && w.mangles_reply());
        assert!(!w.no_reply && !w.drop_connection && !w.garbage);
        assert_eq!(
            WireFaults::from_active(&[Fault::MqttDisconnect]),
            WireFaults::default()
        );
    }

    #[test]
    fn other_unit_always_differs_and_stays_addressable() {
        for unit in 0..=255u8 {
            let other = other_unit(unit);
            assert_ne!(other, unit);
            assert!((1..=247).contains(&other), "{unit} -> {other}");
        }
    }

    #[test]
    fn truncation_keeps_something_and_drops_something() {
        for len in 2..300 {
            let kept = truncated_len(len);
            assert!(kept >= 1 && kept < len, "{len} -> {kept}");
        }
    }

    #[test]
    fn mbap_framing() {
        assert_eq!(
            mbap_adu(0x1234, 9, &[0x04, 0x02, 0xAB, 0xCD]),
            [0x12, 0x34, 0, 0, 0, 5, 9, 0x04, 0x02, 0xAB, 0xCD]
        );
    }
}
