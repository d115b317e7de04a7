//! Modbus RTU buses on pseudo-terminals.
//!
//! A [`BusKind::ModbusRtu`] bus is one pseudo-terminal: the simulator holds its master end, and
//! a symlink at the bus's `link` points to its slave end (`/dev/pts/N`), the end a Modbus master
//! (the gateway, mbpoll, a test) opens like a serial port. Every node of the bus sits on that
//! one line under its unit ID, as on an RS-485 multidrop line.
//!
//! Received bytes are stamped with their arrival time and fed to the firmware's own
//! [`FrameAssembler`]; a frame is complete after t3.5 of silence ([`RtuTiming::from_baud`]), is
//! checked with the protocol crate's CRC, and goes by its address to the node with that unit
//! ID, whose answer ([`VirtualNode::modbus`](crate::node::VirtualNode::modbus)) is sent back
//! with a CRC. So a reply always follows at least t3.5 of silence after the request. The t1.5
//! rule is not applied ([`RtuTiming::without_inter_char_check`]): a pseudo-terminal hands bytes
//! over whenever the host schedules the reader, so gaps inside a frame say nothing about the
//! line. With `pace`, replies go out at the byte rate of the baud rate, 11 bits per byte, as a
//! UART would send them; without it, at once.
//!
//! As on a serial line, a frame that fails its CRC, is addressed to a unit no node has, or is a
//! broadcast is never answered. A broadcast (unit 0) write is executed by every node of the bus.
//!
//! A pseudo-terminal keeps what nobody read, where a real line loses it: a reply that came too
//! late for its master, or the rest of one a master stopped reading, would be read by the next
//! master that opens the line as the answer to its own request. So the simulator does not hold
//! the slave end open itself: reading the master end then fails (EIO) whenever no master has
//! the line open, and that is when the line is taken to be down. A reply due while the line is
//! down is dropped, and when the last master closes the line, whatever it left unread is
//! flushed (also when the next master opened it before the simulator looked: the hang-up in
//! between still shows). A reply still pending when a new request begins is dropped too: the slave abandons
//! a late answer once the master has moved on. The raw settings survive: the master end keeps
//! the terminal alive between masters.
//!
//! While the line is down the master end is looked at every [`LINE_POLL`] instead of being
//! waited on: tokio's reactor takes a hang-up for a final state, so a hung-up terminal would
//! stay "readable" for ever. A master's first request after opening the line therefore waits
//! up to that long to be read; the rest of the exchange is event-driven.
//!
//! # Faults
//!
//! As on Modbus TCP ([`modbus_tcp`](super::modbus_tcp), which also holds the shared counters),
//! except:
//!
//! | fault | on Modbus RTU |
//! |---|---|
//! | `wrong_crc` | the reply's two CRC bytes are inverted |
//! | `wrong_unit` | the reply carries another unit ID (`unit % 247 + 1`), with a CRC that matches it |
//! | `drop_connection` | a serial line has no connection: the request is not answered |
//! | `truncated` | the first half of the reply's bytes, CRC included in the count |
//! | `garbage` | random bytes as long as the reply |

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read as _, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::pty::{OpenptyResult, openpty};
use nix::sys::termios::{FlushArg, SetArg, cfmakeraw, tcflush, tcgetattr, tcsetattr};
use tianzhong_firmware::modbus::RtuTiming;
use tianzhong_firmware::modbus::frame::{Assembled, Discard, FrameAssembler, MAX_ADU_LEN, Pushed};
use tianzhong_firmware::modbus::pdu::{self, MAX_PDU_LEN};
use tianzhong_firmware::modbus::slave::BROADCAST;
use tianzhong_protocol::crc::{check_rtu_adu, rtu_crc_bytes};
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use super::modbus_tcp::{
    BusNodes, Outcome, RequestSummary, WireFaults, answer, cut_or_scramble, other_unit, stopped,
};
pub use super::modbus_tcp::{FaultCounts, ModbusCounts, ModbusStats};
use crate::fleet::Fleet;
use crate::spec::{BusKind, BusSpec};

/// A running Modbus RTU bus. Dropping it stops the bus, closes the pseudo-terminal and removes
/// the symlink, as does [`ModbusRtuServer::shutdown`], which also waits for that.
pub struct ModbusRtuServer {
    bus: String,
    link: PathBuf,
    pty: PathBuf,
    stats: Arc<ModbusStats>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl fmt::Debug for ModbusRtuServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ModbusRtuServer")
            .field("bus", &self.bus)
            .field("link", &self.link)
            .field("pty", &self.pty)
            .finish()
    }
}

impl ModbusRtuServer {
    /// The bus name.
    pub fn bus(&self) -> &str {
        &self.bus
    }

    /// The symlink masters open.
    pub fn link(&self) -> &Path {
        &self.link
    }

    /// The slave end of the pseudo-terminal the symlink points to.
    pub fn pty(&self) -> &Path {
        &self.pty
    }

    /// The counters now.
    pub fn stats(&self) -> ModbusCounts {
        self.stats.snapshot()
    }

    /// The live counters, for whoever outlives this handle or reads them elsewhere.
    pub fn stats_handle(&self) -> Arc<ModbusStats> {
        Arc::clone(&self.stats)
    }

    /// Stops the bus and waits until the pseudo-terminal is closed and the symlink removed.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for ModbusRtuServer {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        // The bus task removes the symlink as it stops, but not if the runtime goes first;
        // after `shutdown` it has.
        if self.task.is_some() {
            remove_own_link(&self.link, &self.pty);
        }
    }
}

/// Removes `link` if it still points to `pty`: another bus may have taken the path over since.
fn remove_own_link(link: &Path, pty: &Path) {
    if fs::read_link(link).is_ok_and(|t| t == pty) {
        let _ = fs::remove_file(link);
    }
}

fn nix_err(what: impl fmt::Display) -> impl FnOnce(nix::Error) -> io::Error {
    move |e| io::Error::new(io::Error::from(e).kind(), format!("{what}: {e}"))
}

/// Opens the pseudo-terminal of `bus`, a [`BusKind::ModbusRtu`] bus of `fleet`, points the
/// bus's symlink at it and serves it until the returned handle is shut down or dropped.
/// Returns once masters can open the symlink. `seed` (the scenario's) seeds the `garbage`
/// fault's bytes. Must run inside a tokio runtime.
pub async fn start(fleet: Arc<Fleet>, bus: &BusSpec, seed: u64) -> io::Result<ModbusRtuServer> {
    let BusKind::ModbusRtu { link, baud, pace } = &bus.kind else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bus {}: not a Modbus RTU bus: {:?}", bus.name, bus.kind),
        ));
    };
    let name = &bus.name;
    let OpenptyResult { master, slave } =
        openpty(None, None).map_err(nix_err(format!("bus {name}: openpty")))?;
    // Raw: no echo, no line editing, no CR/LF translation, 8 bits through, or the binary
    // frames would be mangled by the line discipline.
    let mut termios = tcgetattr(&slave).map_err(nix_err(format!("bus {name}: tcgetattr")))?;
    cfmakeraw(&mut termios);
    tcsetattr(&slave, SetArg::TCSANOW, &termios)
        .map_err(nix_err(format!("bus {name}: tcsetattr")))?;
    let pty = nix::unistd::ttyname(&slave).map_err(nix_err(format!("bus {name}: ttyname")))?;
    fcntl(&master, FcntlArg::F_SETFL(OFlag::O_NONBLOCK))
        .map_err(nix_err(format!("bus {name}: O_NONBLOCK")))?;
    // Not kept: see the module doc.
    drop(slave);
    let master = File::from(master);
    place_link(link, &pty).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "bus {name}: symlink {} -> {}: {e}",
                link.display(),
                pty.display()
            ),
        )
    })?;

    let nodes = BusNodes::new(&fleet, name, seed);
    let units: Vec<u8> = nodes.nodes.iter().map(|n| n.unit).collect();
    info!(bus = %name, link = %link.display(), pty = %pty.display(), baud, pace, ?units, "Modbus RTU bus on a pseudo-terminal");
    let stats = Arc::new(ModbusStats::default());
    let timing = RtuTiming::from_baud(*baud).without_inter_char_check();
    let line = RtuLine {
        fleet,
        nodes,
        stats: Arc::clone(&stats),
        timing,
        // 11 bits per character whatever the parity, as the serial-line guide counts them.
        char_time: pace.then(|| Duration::from_nanos(11_000_000_000 / u64::from((*baud).max(1)))),
        epoch: Instant::now(),
        link: link.clone(),
        pty: pty.clone(),
    };
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(line.run(master, stop_rx));
    Ok(ModbusRtuServer {
        bus: name.clone(),
        link: link.clone(),
        pty,
        stats,
        stop,
        task: Some(task),
    })
}

/// How often the master end is looked at while no master has the line open.
pub const LINE_POLL: Duration = Duration::from_millis(20);

/// Registers the master end with tokio's reactor.
// tokio 1.54 deprecated the safe `AsyncFd::new` as unsound, since nothing stops its caller from
// closing the descriptor behind its back; `register` puts that promise on the caller instead.
#[allow(unsafe_code)]
fn register(master: File) -> io::Result<AsyncFd<File>> {
    // SAFETY: the `File` owns the descriptor and the `AsyncFd` owns the `File`, so the
    // descriptor stays open and the same until the `AsyncFd` is dropped or hands it back.
    unsafe { AsyncFd::register(master) }.map_err(|e| e.into_parts().1)
}

/// Points `link` at `target`, replacing a stale symlink (atomically, by renaming a fresh one
/// over it) but never a file that is not a symlink.
fn place_link(link: &Path, target: &Path) -> io::Result<()> {
    match fs::symlink_metadata(link) {
        Ok(m) if !m.file_type().is_symlink() => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "exists and is not a symlink; not replacing it",
            ));
        }
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    if let Some(parent) = link.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent)?;
    }
    let file_name = link
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = link.with_file_name(format!(".{file_name}.{}.tmp", std::process::id()));
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp)?;
    fs::rename(&tmp, link).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}

/// A reply on its way out.
struct Outgoing {
    bytes: Vec<u8>,
    sent: usize,
    /// When the first byte goes out.
    start: Instant,
    exception: bool,
}

struct RtuLine {
    fleet: Arc<Fleet>,
    nodes: BusNodes,
    stats: Arc<ModbusStats>,
    timing: RtuTiming,
    /// One character's time on the wire when paced.
    char_time: Option<Duration>,
    epoch: Instant,
    link: PathBuf,
    pty: PathBuf,
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

impl RtuLine {
    fn now_us(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_micros() as u64
    }

    fn at_us(&self, us: u64) -> Instant {
        self.epoch + Duration::from_micros(us)
    }

    /// When the next byte of `out` is due.
    fn next_due(&self, out: &Outgoing) -> Instant {
        match self.char_time {
            Some(c) => out.start + c * out.sent as u32,
            None => out.start,
        }
    }

    /// How many of `out`'s bytes are due by `now`.
    fn due_by(&self, out: &Outgoing, now: Instant) -> usize {
        if now < out.start {
            return out.sent;
        }
        match self.char_time {
            Some(c) => {
                let chars = now.duration_since(out.start).as_nanos() / c.as_nanos().max(1);
                (chars as usize).saturating_add(1).min(out.bytes.len())
            }
            None => out.bytes.len(),
        }
    }

    async fn run(self, master: File, mut stop: watch::Receiver<bool>) {
        let bus = Arc::clone(&self.nodes.bus);
        let mut line = Line::Down(master);
        let mut next_look = Instant::now();
        let mut assembler = FrameAssembler::new(self.timing);
        let mut outgoing: Option<Outgoing> = None;
        let mut buf = [0u8; 1024];
        loop {
            let frame_due = assembler.next_deadline().map(|us| self.at_us(us));
            let send_due = outgoing.as_ref().map(|o| self.next_due(o));
            let look_due = matches!(line, Line::Down(_)).then_some(next_look);
            let (read, hung_up_since) = tokio::select! {
                _ = stopped(&mut stop) => break,
                read = line.read_when_up(&mut buf) => read,
                _ = sleep_until(look_due) => {
                    next_look = Instant::now() + LINE_POLL;
                    (line.read_when_down(&mut buf), false)
                }
                _ = sleep_until(frame_due) => {
                    let now = Instant::now();
                    if let Some(frame) = assembler.poll(self.now_us(now)) {
                        outgoing = self.on_frame(frame, now);
                    }
                    continue;
                }
                _ = sleep_until(send_due) => {
                    let Line::Up(fd) = &line else {
                        if let Some(out) = outgoing.take() {
                            debug!(bus = %bus, unsent = out.bytes.len() - out.sent, "line down: reply dropped");
                        }
                        continue;
                    };
                    if let Some(out) = outgoing.as_mut()
                        && let Err(e) = self.send_due(fd, out).await
                    {
                        error!(bus = %bus, pty = %self.pty.display(), error = %e, "writing the pseudo-terminal failed; bus stopped");
                        break;
                    }
                    outgoing.take_if(|o| o.sent == o.bytes.len());
                    continue;
                }
            };
            if hung_up_since && !matches!(read, LineRead::HungUp) {
                // The master that had the line closed it, and another opened it before this
                // read: clear what the first left behind, and register anew, since tokio keeps
                // reporting a hang-up once it has seen one.
                self.line_down(&mut outgoing);
                line = line.down();
            }
            match read {
                LineRead::HungUp => {
                    if let Line::Up(_) = line {
                        self.line_down(&mut outgoing);
                    }
                    line = line.down();
                }
                LineRead::Failed(e) => {
                    error!(bus = %bus, pty = %self.pty.display(), error = %e, "reading the pseudo-terminal failed; bus stopped");
                    break;
                }
                // Bytes, or a master with nothing to say yet: either way the line is up.
                read => {
                    line = match line.up() {
                        Ok(up) => up,
                        Err(e) => {
                            error!(bus = %bus, pty = %self.pty.display(), error = %e, "registering the pseudo-terminal failed; bus stopped");
                            break;
                        }
                    };
                    if let LineRead::Bytes(n) = read {
                        self.receive(&buf[..n], Instant::now(), &mut assembler, &mut outgoing);
                    }
                }
            }
        }
        remove_own_link(&self.link, &self.pty);
        debug!(bus = %bus, link = %self.link.display(), "Modbus RTU bus stopped");
    }

    /// The last master closed the line: nobody is left to hear a reply, and what it left
    /// unread must not greet the next one.
    fn line_down(&self, outgoing: &mut Option<Outgoing>) {
        let bus = &*self.nodes.bus;
        debug!(bus, link = %self.link.display(), "the master that had the line closed it");
        if let Some(out) = outgoing.take() {
            debug!(
                bus,
                unsent = out.bytes.len() - out.sent,
                "line down: reply dropped"
            );
        }
        // A request already on the line is still heard and executed (a broadcast write from a
        // master that did not wait); only its reply has nobody to go to.
        // Flushing needs the slave end; opening it briefly does not bring the line up, as the
        // next read will tell.
        let flushed = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags((OFlag::O_NOCTTY | OFlag::O_NONBLOCK).bits())
            .open(&self.pty)
            .and_then(|slave| tcflush(&slave, FlushArg::TCIFLUSH).map_err(io::Error::from));
        if let Err(e) = flushed {
            warn!(bus, pty = %self.pty.display(), error = %e, "flushing what the last master left unread failed");
        }
    }

    /// Feeds bytes that arrived together at `now` to the assembler.
    fn receive(
        &self,
        bytes: &[u8],
        now: Instant,
        assembler: &mut FrameAssembler,
        outgoing: &mut Option<Outgoing>,
    ) {
        let now_us = self.now_us(now);
        // A frame whose t3.5 passed before these bytes were read is complete: serve it first
        // rather than let them supersede it.
        if assembler.next_deadline().is_some_and(|d| d <= now_us)
            && let Some(frame) = assembler.poll(now_us)
        {
            *outgoing = self.on_frame(frame, now);
        }
        for &b in bytes {
            if !assembler.is_receiving() {
                self.new_request_begins(outgoing);
            }
            if assembler.push(b, now_us) == Pushed::SupersededUnpolled {
                self.stats.update(|c| c.malformed += 1);
                warn!(bus = %self.nodes.bus, "a complete frame was lost: the next one began before it was served");
            }
        }
    }

    /// The master is talking again: a reply still pending is abandoned (see the module doc).
    fn new_request_begins(&self, outgoing: &mut Option<Outgoing>) {
        if let Some(out) = outgoing.take() {
            debug!(
                bus = %self.nodes.bus,
                unsent = out.bytes.len() - out.sent,
                "the master sent a new request before the reply was out; dropping the rest of the reply"
            );
        }
    }

    /// Serves a complete frame; returns the reply to send, if any.
    fn on_frame(&self, frame: Assembled<'_>, now: Instant) -> Option<Outgoing> {
        let bus = &*self.nodes.bus;
        let adu = match frame {
            Assembled::Frame(adu) => adu,
            Assembled::Discarded(why) => {
                self.stats.update(|c| c.malformed += 1);
                let why = match why {
                    Discard::Corrupt => "a silence longer than t1.5 inside it",
                    Discard::Overrun => "more than 256 bytes",
                };
                warn!(bus, "frame discarded: {why}");
                return None;
            }
        };
        let body = match check_rtu_adu(adu) {
            Ok(body) => body,
            Err(e) => {
                self.stats.update(|c| c.malformed += 1);
                warn!(bus, frame = ?Hex(adu), error = %e, "frame fails its CRC; not answered");
                return None;
            }
        };
        // check_rtu_adu leaves at least address and function code.
        let (&unit, request) = body.split_first()?;
        if unit == BROADCAST {
            self.broadcast(request);
            return None;
        }
        let Some(node) = self.nodes.by_unit(unit) else {
            self.stats.update(|c| c.unknown_units += 1);
            debug!(bus, unit, request = %RequestSummary(request), "no node with this unit ID on the line; silence");
            return None;
        };
        self.stats.update(|c| c.requests += 1);
        let faults = WireFaults::from_active(&self.fleet.faults.active(
            &node.id,
            bus,
            self.fleet.clock.now(),
        ));
        let (pdu, exception) =
            match answer(&self.fleet, bus, node, unit, request, &faults, &self.stats) {
                Outcome::Drop | Outcome::Silent => return None,
                Outcome::Reply { pdu, exception } => (pdu, exception),
            };
        let reply_unit = if faults.wrong_unit {
            self.stats.update(|c| c.faults.wrong_unit += 1);
            other_unit(unit)
        } else {
            unit
        };
        let mut reply = Vec::with_capacity(MAX_ADU_LEN);
        reply.push(reply_unit);
        reply.extend_from_slice(&pdu);
        let crc = rtu_crc_bytes(&reply);
        reply.extend_from_slice(&crc);
        if faults.wrong_crc {
            let n = reply.len();
            reply[n - 2] ^= 0xFF;
            reply[n - 1] ^= 0xFF;
            self.stats.update(|c| c.faults.wrong_crc += 1);
        }
        cut_or_scramble(&mut reply, node, &faults, &self.stats);
        if faults.mangles_reply() {
            debug!(bus, unit, node = %node.id, request = %RequestSummary(request), ?faults, "reply mangled by fault");
        }
        let start = match faults.delay {
            Some(delay) => {
                self.stats.update(|c| c.faults.slow_reply += 1);
                debug!(bus, unit, node = %node.id, request = %RequestSummary(request), ?delay, "fault slow_reply: answering late");
                now + delay
            }
            None => now,
        };
        Some(Outgoing {
            bytes: reply,
            sent: 0,
            start,
            exception,
        })
    }

    /// Executes a broadcast write on every node of the line; nobody answers a broadcast, and a
    /// broadcast read is ignored as the firmware's slave ignores it.
    fn broadcast(&self, request: &[u8]) {
        let bus = &*self.nodes.bus;
        self.stats.update(|c| c.broadcasts += 1);
        // Function 21 (write file record) is a write too, as in the firmware's slave: how an
        // image streams to the nodes being updated (file 0xF004).
        let file_write = request.first() == Some(&0x15);
        if !file_write && !pdu::parse_request(request).is_ok_and(|r| r.is_write()) {
            debug!(bus, request = %RequestSummary(request), "broadcast that is not a write; ignored");
            return;
        }
        for node in &self.nodes.nodes {
            let faults = WireFaults::from_active(&self.fleet.faults.active(
                &node.id,
                bus,
                self.fleet.clock.now(),
            ));
            // A node that is silent or refusing everything does not execute it either.
            if faults.drop_connection || faults.no_reply || faults.exception.is_some() {
                self.stats.update(|c| {
                    if faults.drop_connection {
                        c.faults.drop_connection += 1;
                    } else if faults.no_reply {
                        c.faults.no_reply += 1;
                    } else {
                        c.faults.exception += 1;
                    }
                });
                debug!(bus, unit = node.unit, node = %node.id, request = %RequestSummary(request), ?faults, "broadcast not executed: fault");
                continue;
            }
            let mut out = [0u8; MAX_PDU_LEN];
            let handled =
                self.fleet
                    .node(node.index)
                    .modbus(request, &mut out, self.fleet.clock.now());
            debug!(bus, unit = node.unit, node = %node.id, request = %RequestSummary(request), ?handled, "broadcast executed");
        }
    }

    /// Writes the bytes of `out` that are due.
    async fn send_due(&self, fd: &AsyncFd<File>, out: &mut Outgoing) -> io::Result<()> {
        let end = self.due_by(out, Instant::now());
        if end == out.bytes.len() && out.sent < end {
            // Counted before the last bytes go out: a master that has read them must find the
            // reply counted.
            self.stats.update(|c| {
                c.replies += 1;
                c.exceptions += u64::from(out.exception);
            });
        }
        while out.sent < end {
            let mut guard = fd.writable().await?;
            match guard.try_io(|f| {
                let mut file: &File = f.get_ref();
                file.write(&out.bytes[out.sent..end])
            }) {
                Ok(Ok(n)) => out.sent += n,
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => {}
            }
        }
        Ok(())
    }
}

/// The master end of the pseudo-terminal, by whether a master has the line open.
enum Line {
    /// Nobody has it open: not registered with the reactor (see the module doc), looked at
    /// every [`LINE_POLL`].
    Down(File),
    /// A master has it open: registered, read as bytes arrive.
    Up(AsyncFd<File>),
}

/// What a read of the master end found.
enum LineRead {
    /// Nothing new (readiness was stale).
    Nothing,
    /// This many bytes, at the start of the buffer.
    Bytes(usize),
    /// Nothing to read, but a master has the line open.
    Open,
    /// No master has the line open (EIO, or end of file, which would mean the same).
    HungUp,
    /// Anything else.
    Failed(io::Error),
}

impl LineRead {
    fn from(result: io::Result<usize>) -> LineRead {
        match result {
            Ok(0) => LineRead::HungUp,
            Ok(n) => LineRead::Bytes(n),
            Err(e) if e.raw_os_error() == Some(nix::errno::Errno::EIO as i32) => LineRead::HungUp,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => LineRead::Open,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => LineRead::Nothing,
            Err(e) => LineRead::Failed(e),
        }
    }
}

impl Line {
    /// Waits for bytes while the line is up; never resolves while it is down. Also says
    /// whether the reactor saw a hang-up since the line came up.
    async fn read_when_up(&self, buf: &mut [u8]) -> (LineRead, bool) {
        let Line::Up(fd) = self else {
            return std::future::pending().await;
        };
        let mut guard = match fd.readable().await {
            Ok(guard) => guard,
            Err(e) => return (LineRead::Failed(e), false),
        };
        let hung_up_since = guard.ready().is_read_closed();
        let result = guard.try_io(|f| {
            let mut file: &File = f.get_ref();
            file.read(buf)
        });
        let read = match result {
            // Readiness was stale and has been cleared; wait again.
            Err(_would_block) => LineRead::Nothing,
            Ok(result) => LineRead::from(result),
        };
        (read, hung_up_since)
    }

    /// Looks whether a master has opened the line (or already written to it).
    fn read_when_down(&self, buf: &mut [u8]) -> LineRead {
        match self {
            Line::Down(file) => {
                let mut file: &File = file;
                LineRead::from(file.read(buf))
            }
            Line::Up(_) => LineRead::Nothing,
        }
    }

    fn up(self) -> io::Result<Line> {
        match self {
            Line::Down(file) => register(file).map(Line::Up),
            up => Ok(up),
        }
    }

    fn down(self) -> Line {
        match self {
            Line::Up(fd) => Line::Down(fd.into_inner()),
            down => down,
        }
    }
}

/// Bytes as hex, for logs.
struct Hex<'a>(&'a [u8]);

impl fmt::Debug for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}
