//! `tianzhong flash`: sends a signed firmware image to one node over Modbus, as function 21
//! write file record in chunks with a CRC-32C each, and function 20 read file record for the
//! node's status; the node's side is `tianzhong_firmware::update::modbus_files`.
//!
//! The transfer resumes: the node keeps the image's chunks and its place in flash, so a flash
//! that was cut (link down, gateway stopped, node reset) and is started again goes on from the
//! chunk the node asks for. After a timeout the gateway reads the node's status and continues
//! from there; a chunk whose reply was lost is not sent again.
//!
//! | step | request | file |
//! |---|---|---|
//! | offer | 21 | `0xF000`: header, SHA-256, chunk size |
//! | where to start | 20 | `0xF003`: status, next chunk |
//! | each chunk | 21 | `0xF001`, record = chunk index: bytes and CRC-32C |
//! | finish | 21 | `0xF002`: the node checks size, hash, signature, hardware and security counter, and stages the image |
//!
//! Over Modbus TCP the requests go through tokio-modbus. Over Modbus RTU they do not:
//! tokio-modbus frames the replies of functions 20 and 21 by what has arrived (it does not know
//! their length fields), so a reply split across two reads of the serial port is misread. RTU
//! links use the gateway's own master ([`crate::rtu_master`]), which frames replies by length.
//!
//! # Streaming over RTU
//!
//! A function 21 reply echoes the request, so per-chunk writes can use at most about 40 % of
//! an RTU line for the image (38 % measured with 128-byte chunks at 115200 baud). Over RTU the
//! image is therefore streamed by default ([`RtuMode::Stream`]): writes to the broadcast
//! address, which get no reply, carry the image to the stream file, and after every window
//! the gateway reads the status to learn the next chunk the node wants, going back to it if
//! frames were lost (go-back-N):
//!
//! | step | request | address | file |
//! |---|---|---|---|
//! | offer | 21 | the node | `0xF000`: header, SHA-256, chunk size |
//! | where to start | 20 | the node | `0xF003`: status, next chunk |
//! | each window of `window` writes | 21 | 0, broadcast | `0xF004`, record = offset / 32: session tag (SHA-256 bytes 0–1), up to 224 bytes of the image, their CRC-32C |
//! | after each window | 20 | the node | `0xF003`: next chunk wanted; the stream goes on from there |
//! | finish | 21 | the node | `0xF002`, as above |
//!
//! A node that is not receiving, or receiving another image (another tag), ignores the stream
//! (`tianzhong_firmware::update::modbus_files`, "Streaming"). A node whose firmware has no
//! stream file makes no progress: after two windows without any the transfer goes on with
//! per-chunk writes ([`RtuMode::Plain`]), which stay the mode for Modbus TCP.

use std::borrow::Cow;
use std::fmt;
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use tianzhong_protocol::crc::FRAME as CRC32C;
use tianzhong_protocol::image::{FileError, HEADER_LEN, ImageFile};
use tokio_modbus::client::{Client, Context};
use tokio_modbus::{Request, Response, Slave};

use crate::config::{Link, Parity, StopBits};
use crate::probe::ProbeTarget;
use crate::rtu_master::{FileMaster, RtuError, RtuMaster, SerialLine};

/// Chunk size: the largest power of two whose chunk, CRC and sub-request header fit one
/// write-file-record request.
pub const CHUNK: u16 = 128;
const OFFER_FILE: u16 = 0xF000;
/// How long an unanswered offer is repeated over RTU: a sector erase on the node (4 s at most
/// on an STM32F405's 128 KiB sectors) with room to spare.
pub const OFFER_PATIENCE: Duration = Duration::from_secs(10);
/// The pause before an unanswered offer is sent again.
const OFFER_PAUSE: Duration = Duration::from_millis(500);
const CHUNK_FILE: u16 = 0xF001;
const FINISH_FILE: u16 = 0xF002;
const STATUS_FILE: u16 = 0xF003;
const STREAM_FILE: u16 = 0xF004;
/// Image bytes per stream write: 224, the most that fits a write request beside the session
/// tag and the CRC-32C (as `modbus_files::STREAM_MAX_BYTES`).
pub const STREAM_BYTES: usize = 224;
/// The stream file's record unit: record = offset / 32.
const STREAM_UNIT: usize = 32;
/// Stream writes between two status reads, at most. A status read costs about 7.3 ms at
/// 115200 baud (request, reply, two silences, the node's latency) against 25.1 ms per write
/// with its turnaround: 32 writes make it 0.9 % of the line, while a lost write costs at most a
/// window (7 KiB, 0.8 s) again, and the window shrinks on a lossy line.
pub const DEFAULT_WINDOW: u32 = 32;
/// The smallest window a lossy line shrinks the stream's window to, and the step it grows by.
const MIN_WINDOW: u32 = 4;
/// Windows in a row without progress before a stream falls back to per-chunk writes.
const STALLED_WINDOWS: u32 = 2;
const FINISH_MAGIC: u16 = 0x4649;
/// Status reads after a timeout before giving up.
const STATUS_RETRIES: u32 = 5;

/// The reason a node gives in its status or report, by code
/// ([`Reason`](tianzhong_protocol::update::Reason), shared by the Modbus status file and the
/// MQTT report).
pub fn reason(code: u16) -> &'static str {
    tianzhong_protocol::update::Reason::from_code(code)
        .map_or("unknown reason", tianzhong_protocol::update::Reason::text)
}

/// Why a flash failed.
#[derive(Debug)]
pub enum FlashError {
    /// The file is not a signed image.
    Image(FileError),
    /// The node could not be reached.
    Connect(String),
    /// The node refused the offer, a chunk or the finished image.
    Refused {
        /// The step.
        step: String,
        /// The node's reason code.
        code: u16,
    },
    /// The node answered with a Modbus exception and gave no reason.
    Exception {
        /// The step.
        step: String,
        /// The exception code.
        code: u8,
    },
    /// No answer, and the status could not be read either.
    Timeout {
        /// The step.
        step: String,
    },
    /// An answer that is not what the protocol says.
    Protocol(String),
    /// The serial port is held by another program: most likely a gateway polling its bus.
    PortBusy {
        /// The port.
        device: String,
    },
    /// Stopped by the caller at this chunk.
    Cancelled {
        /// The next chunk the node wants.
        next_chunk: u32,
    },
}

impl fmt::Display for FlashError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FlashError::Image(e) => write!(f, "not a signed image: {e}"),
            FlashError::Connect(e) => write!(f, "cannot reach the node: {e}"),
            FlashError::Refused { step, code } => {
                write!(
                    f,
                    "{step}: the node refused: {} (reason {code})",
                    reason(*code)
                )
            }
            FlashError::Exception { step, code } => {
                write!(f, "{step}: Modbus exception {code:02X}")
            }
            FlashError::Timeout { step } => write!(f, "{step}: no answer from the node"),
            FlashError::Protocol(e) => write!(f, "unexpected answer: {e}"),
            FlashError::PortBusy { device } => write!(
                f,
                "{device}: the serial port is held by another program, most likely a running \
                 gateway polling this bus"
            ),
            FlashError::Cancelled { next_chunk } => {
                write!(f, "stopped; the node resumes at chunk {next_chunk}")
            }
        }
    }
}

impl std::error::Error for FlashError {}

/// How far a transfer is.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    /// Image bytes the node has.
    pub done: usize,
    /// Image bytes in all.
    pub total: usize,
    /// Bytes sent in this run (a resumed run starts at 0).
    pub sent: usize,
    /// Since this run started.
    pub elapsed: Duration,
}

impl Progress {
    /// Bytes per second sent in this run.
    pub fn rate(&self) -> f64 {
        self.sent as f64 / self.elapsed.as_secs_f64().max(1e-3)
    }

    /// Seconds left at the current rate.
    pub fn eta_s(&self) -> f64 {
        (self.total - self.done) as f64 / self.rate().max(1.0)
    }

    /// One progress-bar line: bar, bytes, rate, time left.
    pub fn line(&self) -> String {
        let width = 30;
        let filled = (width * self.done) / self.total.max(1);
        format!(
            "[{}{}] {:>7.1} / {:.1} KiB  {:>6.1} KiB/s  {:>4.0} s left",
            "#".repeat(filled),
            "-".repeat(width - filled),
            self.done as f64 / 1024.0,
            self.total as f64 / 1024.0,
            self.rate() / 1024.0,
            self.eta_s()
        )
    }
}

/// What a finished flash did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlashReport {
    /// Chunks in the image.
    pub chunks: u32,
    /// The chunk this run started at (0 unless resumed).
    pub resumed_at: u32,
    /// Chunk writes sent, repeats included.
    pub chunk_writes: u32,
    /// Timeouts recovered from by reading the status.
    pub recovered_timeouts: u32,
    /// Stream writes sent (broadcast), repeats included; 0 outside a stream.
    pub stream_writes: u32,
    /// Times the stream went back to an earlier chunk because writes were lost.
    pub go_backs: u32,
    /// Image bytes sent more than once in the stream.
    pub resent_bytes: u64,
    /// Status reads made between windows.
    pub status_reads: u32,
    /// The stream made no progress and the transfer went on with per-chunk writes.
    pub fell_back: bool,
}

/// How an image goes over an RTU link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RtuMode {
    /// Broadcast stream writes, `window` of them between status reads.
    Stream {
        /// Writes per window.
        window: u32,
    },
    /// One addressed write per chunk.
    Plain,
}

impl Default for RtuMode {
    fn default() -> Self {
        RtuMode::Stream {
            window: DEFAULT_WINDOW,
        }
    }
}

enum CallError {
    Timeout,
    Exception(u8),
    Io(String),
}

struct Node {
    ctx: Context,
    timeout: Duration,
}

impl Node {
    async fn open(target: &ProbeTarget) -> Result<Node, FlashError> {
        let slave = Slave(target.unit);
        let ctx = match &target.link {
            Link::Tcp { address } => {
                let stream = tokio::time::timeout(
                    target.timeout,
                    tokio::net::TcpStream::connect(address.as_str()),
                )
                .await
                .map_err(|_| FlashError::Connect(format!("{address}: connect timed out")))?
                .map_err(|e| FlashError::Connect(format!("{address}: {e}")))?;
                tokio_modbus::client::tcp::attach_slave(stream, slave)
            }
            Link::Rtu {
                device,
                baud,
                parity,
                stop_bits,
            } => tokio_modbus::client::rtu::attach_slave(
                open_serial(device, *baud, *parity, *stop_bits)?,
                slave,
            ),
        };
        Ok(Node {
            ctx,
            timeout: target.timeout,
        })
    }

    async fn call(&mut self, function: u8, data: Vec<u8>) -> Result<Vec<u8>, CallError> {
        let request = Request::Custom(function, Cow::Owned(data));
        match tokio::time::timeout(self.timeout, self.ctx.call(request)).await {
            Err(_) => Err(CallError::Timeout),
            // tokio-modbus names an exception reply to function 20 or 21 by the standard
            // function code while the request carries it as a custom code, and reports the
            // pair as a mismatch: the exception is inside.
            Ok(Err(tokio_modbus::Error::Protocol(
                tokio_modbus::ProtocolError::FunctionCodeMismatch {
                    result: Err(exception),
                    ..
                },
            ))) if exception.function.value() == function => {
                Err(CallError::Exception(exception.exception.into()))
            }
            Ok(Err(e)) => Err(CallError::Io(e.to_string())),
            Ok(Ok(Err(code))) => Err(CallError::Exception(code.into())),
            Ok(Ok(Ok(Response::Custom(f, bytes)))) if f == function => Ok(bytes.to_vec()),
            Ok(Ok(Ok(other))) => Err(CallError::Io(format!("reply {other:?}"))),
        }
    }

    /// Function 21 with one sub-request.
    async fn write_file(&mut self, file: u16, record: u16, regs: &[u16]) -> Result<(), CallError> {
        let mut data = vec![(7 + 2 * regs.len()) as u8, 0x06];
        for v in [file, record, regs.len() as u16].iter().chain(regs) {
            data.extend_from_slice(&v.to_be_bytes());
        }
        let reply = self.call(0x15, data.clone()).await?;
        if reply != data {
            return Err(CallError::Io("the write reply is not an echo".into()));
        }
        Ok(())
    }

    /// The node's status: phase, next chunk, chunks, reason.
    async fn status(&mut self) -> Result<(u16, u32, u32, u16), CallError> {
        let mut data = vec![0x07, 0x06];
        for v in [STATUS_FILE, 0, 8] {
            data.extend_from_slice(&v.to_be_bytes());
        }
        let r = self.call(0x14, data).await?;
        if r.len() != 19 || r[..3] != [18, 17, 0x06] {
            return Err(CallError::Io(format!("status reply {r:02x?}")));
        }
        let reg = |i: usize| u16::from_be_bytes([r[3 + 2 * i], r[4 + 2 * i]]);
        Ok((
            reg(0),
            (u32::from(reg(1)) << 16) | u32::from(reg(2)),
            (u32::from(reg(3)) << 16) | u32::from(reg(4)),
            reg(5),
        ))
    }
}

fn open_serial(
    device: &std::path::Path,
    baud: u32,
    parity: Parity,
    stop_bits: StopBits,
) -> Result<tokio_serial::SerialStream, FlashError> {
    use tokio_serial::SerialPortBuilderExt;
    tokio_serial::new(device.to_string_lossy(), baud)
        .data_bits(tokio_serial::DataBits::Eight)
        .parity(match parity {
            Parity::None => tokio_serial::Parity::None,
            Parity::Odd => tokio_serial::Parity::Odd,
            Parity::Even => tokio_serial::Parity::Even,
        })
        .stop_bits(match stop_bits {
            StopBits::One => tokio_serial::StopBits::One,
            StopBits::Two => tokio_serial::StopBits::Two,
        })
        .open_native_async()
        .map_err(|e| {
            // serialport takes an exclusive flock on the port, which a running gateway holds
            // for as long as it polls the bus (root included, unlike TIOCEXCL).
            if e.kind == tokio_serial::ErrorKind::NoDevice && e.description.contains("lock") {
                FlashError::PortBusy {
                    device: device.display().to_string(),
                }
            } else {
                FlashError::Connect(format!("{}: {e}", device.display()))
            }
        })
}

fn regs(bytes: &[u8]) -> Vec<u16> {
    bytes
        .chunks(2)
        .map(|p| u16::from_be_bytes([p[0], *p.get(1).unwrap_or(&0xFF)]))
        .collect()
}

async fn refused(node: &mut Node, step: &str, e: CallError) -> FlashError {
    match e {
        CallError::Timeout => FlashError::Timeout { step: step.into() },
        CallError::Io(e) => FlashError::Protocol(format!("{step}: {e}")),
        CallError::Exception(code) => match node.status().await {
            Ok((_, _, _, reason)) if reason != 0 => FlashError::Refused {
                step: step.into(),
                code: reason,
            },
            _ => FlashError::Exception {
                step: step.into(),
                code,
            },
        },
    }
}

/// Flashes `image` into the node at `target`, calling `progress` after every chunk; the
/// callback stops the transfer by returning `Break` (the node keeps what it has).
pub async fn flash(
    target: &ProbeTarget,
    image: &[u8],
    progress: impl FnMut(&Progress) -> ControlFlow<()>,
) -> Result<FlashReport, FlashError> {
    flash_with(target, image, RtuMode::default(), progress).await
}

/// [`flash`] with the RTU mode chosen (it applies to RTU links only).
pub async fn flash_with(
    target: &ProbeTarget,
    image: &[u8],
    mode: RtuMode,
    mut progress: impl FnMut(&Progress) -> ControlFlow<()>,
) -> Result<FlashReport, FlashError> {
    if let Link::Rtu {
        device,
        baud,
        parity,
        stop_bits,
    } = &target.link
    {
        let port = open_serial(device, *baud, *parity, *stop_bits)?;
        let mut master = RtuMaster::new(
            SerialLine::new(port, *baud),
            target.unit,
            *baud,
            target.timeout,
        );
        return flash_rtu(&mut master, image, mode, progress).await;
    }
    let parsed = ImageFile::parse(image).map_err(FlashError::Image)?;
    let mut node = Node::open(target).await?;
    let mut offer = regs(&image[..HEADER_LEN]);
    offer.extend(regs(&parsed.trailer.digest));
    offer.push(CHUNK);
    if let Err(e) = node.write_file(OFFER_FILE, 0, &offer).await {
        return Err(refused(&mut node, "offer", e).await);
    }
    let (_, mut next, chunks, _) = match node.status().await {
        Ok(s) => s,
        Err(e) => return Err(refused(&mut node, "status", e).await),
    };
    let expected = image.len().div_ceil(usize::from(CHUNK)) as u32;
    if chunks != expected {
        return Err(FlashError::Protocol(format!(
            "the node counts {chunks} chunks, the image has {expected}"
        )));
    }
    let mut report = FlashReport {
        chunks,
        resumed_at: next,
        chunk_writes: 0,
        recovered_timeouts: 0,
        stream_writes: 0,
        go_backs: 0,
        resent_bytes: 0,
        status_reads: 0,
        fell_back: false,
    };
    let started = Instant::now();
    let mut sent = 0usize;
    while next < chunks {
        let start = next as usize * usize::from(CHUNK);
        let bytes = &image[start..(start + usize::from(CHUNK)).min(image.len())];
        let crc = CRC32C.checksum(bytes);
        let mut data = regs(bytes);
        data.extend([(crc >> 16) as u16, crc as u16]);
        report.chunk_writes += 1;
        match node.write_file(CHUNK_FILE, next as u16, &data).await {
            Ok(()) => {
                next += 1;
                sent += bytes.len();
            }
            Err(CallError::Timeout) => {
                // Ask the node where it is: the chunk may have been written and only its
                // reply lost.
                let mut status = None;
                for _ in 0..STATUS_RETRIES {
                    if let Ok(s) = node.status().await {
                        status = Some(s);
                        break;
                    }
                }
                let Some((_, at, _, _)) = status else {
                    return Err(FlashError::Timeout {
                        step: format!("chunk {next}"),
                    });
                };
                report.recovered_timeouts += 1;
                next = at;
            }
            Err(e) => return Err(refused(&mut node, &format!("chunk {next}"), e).await),
        }
        let p = Progress {
            done: (next as usize * usize::from(CHUNK)).min(image.len()),
            total: image.len(),
            sent,
            elapsed: started.elapsed(),
        };
        if progress(&p).is_break() {
            return Err(FlashError::Cancelled { next_chunk: next });
        }
    }
    if let Err(e) = node.write_file(FINISH_FILE, 0, &[FINISH_MAGIC]).await {
        return Err(refused(&mut node, "finish", e).await);
    }
    Ok(report)
}

/// The node's status over RTU: phase, next chunk, chunks, reason; retried on timeouts.
async fn rtu_status<M: FileMaster>(
    master: &mut M,
    step: &str,
) -> Result<(u16, u32, u32, u16), FlashError> {
    let mut last = RtuError::Timeout;
    for _ in 0..STATUS_RETRIES {
        match master.read_file(STATUS_FILE, 0, 8).await {
            Ok(r) => {
                return Ok((
                    r[0],
                    (u32::from(r[1]) << 16) | u32::from(r[2]),
                    (u32::from(r[3]) << 16) | u32::from(r[4]),
                    r[5],
                ));
            }
            Err(e @ (RtuError::Timeout | RtuError::Protocol(_))) => last = e,
            Err(e) => return Err(rtu_failed(step, e)),
        }
    }
    Err(rtu_failed(step, last))
}

fn rtu_failed(step: &str, e: RtuError) -> FlashError {
    match e {
        RtuError::Timeout => FlashError::Timeout { step: step.into() },
        RtuError::Exception(code) => FlashError::Exception {
            step: step.into(),
            code,
        },
        RtuError::Protocol(e) => FlashError::Protocol(format!("{step}: {e}")),
        RtuError::Io(e) => FlashError::Connect(format!("{step}: {e}")),
    }
}

/// An exception from the node, with the reason its status gives.
async fn rtu_refused<M: FileMaster>(master: &mut M, step: &str, e: RtuError) -> FlashError {
    match e {
        RtuError::Exception(code) => match rtu_status(master, step).await {
            Ok((_, _, _, reason)) if reason != 0 => FlashError::Refused {
                step: step.into(),
                code: reason,
            },
            _ => FlashError::Exception {
                step: step.into(),
                code,
            },
        },
        e => rtu_failed(step, e),
    }
}

/// Flashes `image` into the node `master` talks to over an RTU line, streaming it
/// ([`RtuMode::Stream`]) or chunk by chunk; `progress` is called after every window or chunk.
/// The master is the gateway's own on a port it opened, or the line a bus task lends between
/// its polls ([`crate::sources::modbus::lend`]): the transfer is the same.
pub async fn flash_rtu<M: FileMaster>(
    master: &mut M,
    image: &[u8],
    mode: RtuMode,
    mut progress: impl FnMut(&Progress) -> ControlFlow<()>,
) -> Result<FlashReport, FlashError> {
    let parsed = ImageFile::parse(image).map_err(FlashError::Image)?;
    let digest = parsed.trailer.digest;
    let mut offer = regs(&image[..HEADER_LEN]);
    offer.extend(regs(&digest));
    offer.push(CHUNK);
    // A node erases its transfer sector before it answers an offer: up to 4 s for a 128 KiB
    // sector on an STM32F405, longer than one request's timeout. An unanswered offer is sent
    // again after a pause — the same image's offer resumes what the node recorded instead of
    // erasing again — until OFFER_PATIENCE has passed.
    let offered = Instant::now();
    loop {
        match master.write_file(OFFER_FILE, 0, &offer).await {
            Ok(()) => break,
            Err(RtuError::Timeout) if offered.elapsed() < OFFER_PATIENCE => {
                tracing::info!(
                    unit = master.unit(),
                    file = OFFER_FILE,
                    "offer unanswered (the node may be erasing); offering again"
                );
                tokio::time::sleep(OFFER_PAUSE).await;
            }
            Err(e) => return Err(rtu_refused(master, "offer", e).await),
        }
    }
    let (_, mut next, chunks, _) = rtu_status(master, "status").await?;
    let expected = image.len().div_ceil(usize::from(CHUNK)) as u32;
    if chunks != expected {
        return Err(FlashError::Protocol(format!(
            "the node counts {chunks} chunks, the image has {expected}"
        )));
    }
    let mut report = FlashReport {
        chunks,
        resumed_at: next,
        chunk_writes: 0,
        recovered_timeouts: 0,
        stream_writes: 0,
        go_backs: 0,
        resent_bytes: 0,
        status_reads: 0,
        fell_back: false,
    };
    let started = Instant::now();
    let mut sent = 0usize;
    let chunk = usize::from(CHUNK);
    let progress_at = |next: u32, sent: usize| Progress {
        done: (next as usize * chunk).min(image.len()),
        total: image.len(),
        sent,
        elapsed: started.elapsed(),
    };
    if let RtuMode::Stream { window } = mode {
        let tag = u16::from_be_bytes([digest[0], digest[1]]);
        // The furthest byte sent so far: bytes before it sent again are counted resent.
        let mut reached = next as usize * chunk;
        let mut stalled = 0;
        // The window adapts: halved (down to MIN_WINDOW) after a window that lost writes, since
        // everything sent after a loss is sent again; grown by MIN_WINDOW after a clean one,
        // up to `window`. On a clean line it stays at `window`.
        let max_window = window.max(1);
        let mut current = max_window;
        while next < chunks {
            let mut offset = next as usize * chunk;
            for _ in 0..current {
                if offset >= image.len() {
                    break;
                }
                let bytes = &image[offset..(offset + STREAM_BYTES).min(image.len())];
                let crc = CRC32C.checksum(bytes);
                let mut data = Vec::with_capacity(3 + bytes.len().div_ceil(2));
                data.push(tag);
                data.extend(regs(bytes));
                data.extend([(crc >> 16) as u16, crc as u16]);
                let record = (offset / STREAM_UNIT) as u16;
                if let Err(e) = master.broadcast_file(STREAM_FILE, record, &data).await {
                    return Err(rtu_failed(&format!("stream at byte {offset}"), e));
                }
                report.stream_writes += 1;
                let end = offset + bytes.len();
                report.resent_bytes += (reached.min(end).saturating_sub(offset)) as u64;
                reached = reached.max(end);
                sent += bytes.len();
                offset = end;
            }
            report.status_reads += 1;
            let (phase, at, _, reason) = rtu_status(master, &format!("chunk {next}")).await?;
            if phase == 3 {
                return Err(FlashError::Refused {
                    step: format!("chunk {at}"),
                    code: reason,
                });
            }
            // Short of the whole chunks sent: some writes were lost (the node keeps a chunk's
            // first bytes in RAM only, so a partly sent chunk is not a loss).
            if at < ((offset / chunk) as u32).min(chunks) {
                report.go_backs += 1;
                current = (current / 2).max(MIN_WINDOW.min(max_window));
            } else {
                current = (current + MIN_WINDOW).min(max_window);
            }
            stalled = if at == next { stalled + 1 } else { 0 };
            next = at;
            if progress(&progress_at(next, sent)).is_break() {
                return Err(FlashError::Cancelled { next_chunk: next });
            }
            if stalled >= STALLED_WINDOWS {
                report.fell_back = true;
                break;
            }
        }
    }
    while next < chunks {
        let start = next as usize * chunk;
        let bytes = &image[start..(start + chunk).min(image.len())];
        let crc = CRC32C.checksum(bytes);
        let mut data = regs(bytes);
        data.extend([(crc >> 16) as u16, crc as u16]);
        report.chunk_writes += 1;
        match master.write_file(CHUNK_FILE, next as u16, &data).await {
            Ok(()) => {
                next += 1;
                sent += bytes.len();
            }
            Err(RtuError::Timeout | RtuError::Protocol(_)) => {
                // The chunk may have been written and only its reply lost or damaged.
                let (_, at, _, _) = rtu_status(master, &format!("chunk {next}")).await?;
                report.recovered_timeouts += 1;
                next = at;
            }
            Err(e) => return Err(rtu_refused(master, &format!("chunk {next}"), e).await),
        }
        if progress(&progress_at(next, sent)).is_break() {
            return Err(FlashError::Cancelled { next_chunk: next });
        }
    }
    if let Err(e) = master.write_file(FINISH_FILE, 0, &[FINISH_MAGIC]).await {
        return Err(rtu_refused(master, "finish", e).await);
    }
    Ok(report)
}

/// `tianzhong flash` arguments.
#[derive(Debug, clap::Args)]
pub struct FlashArgs {
    /// The node's device id in --config, or its node id with --mqtt.
    #[arg(long, conflicts_with = "tcp")]
    pub node: Option<String>,
    /// The gateway configuration holding the node.
    #[arg(long)]
    pub config: Option<std::path::PathBuf>,
    /// Or the node's Modbus TCP endpoint, host:port.
    #[arg(long, requires = "unit")]
    pub tcp: Option<String>,
    /// Unit id with --tcp.
    #[arg(long)]
    pub unit: Option<u8>,
    /// Or the MQTT broker, host:port, of a node that is an MQTT client itself (with --node):
    /// the image goes as update messages on `tianzhong/v1/{site}/{node}/fwupdate`.
    #[arg(long, conflicts_with_all = ["config", "tcp"], requires = "node")]
    pub mqtt: Option<String>,
    /// The node's site with --mqtt; taken from the node's retained status when left out.
    // `requires` alone lets this pass beside --config, which --mqtt conflicts with.
    #[arg(long, requires = "mqtt", conflicts_with_all = ["config", "tcp"])]
    pub site: Option<String>,
    /// Over MQTT, chunks in flight beyond the last one the node reported wanting.
    #[arg(long, default_value_t = crate::flash_mqtt::DEFAULT_IN_FLIGHT)]
    pub in_flight: u32,
    /// Over MQTT, leave the new image on trial: run the same command again to confirm it once
    /// your own check of the node has passed (nothing is sent again).
    #[arg(long, requires = "mqtt", conflicts_with_all = ["config", "tcp"])]
    pub no_confirm: bool,
    /// Request timeout in ms.
    #[arg(long, default_value_t = 2000)]
    pub timeout_ms: u64,
    /// Over RTU, send chunk by chunk (function 21 to the node, one reply per chunk) instead of
    /// streaming broadcast writes: for nodes or lines where the stream does not work.
    #[arg(long)]
    pub plain: bool,
    /// Over RTU, stream writes between two status reads.
    #[arg(long, default_value_t = DEFAULT_WINDOW)]
    pub window: u32,
    /// Update the node through the running gateway of --config, as this engineer (a one-node
    /// campaign; the password in TIANZHONG_PASSWORD): for a node on a Modbus RTU bus the
    /// gateway polls, whose serial port it holds.
    #[arg(long, requires_all = ["node", "config"], conflicts_with = "mqtt")]
    pub user: Option<String>,
    /// The signed image (`tianzhong firmware sign`).
    pub image: std::path::PathBuf,
}

/// Runs `tianzhong flash`, with a progress bar on standard error.
pub fn run(args: FlashArgs) -> std::process::ExitCode {
    use std::io::Write as _;
    use std::process::ExitCode;
    if args.mqtt.is_some() {
        return crate::flash_mqtt::run(args);
    }
    let target = match (&args.node, &args.config, &args.tcp, args.unit) {
        (Some(node), Some(config), None, _) => match crate::config::load(config) {
            Ok(c) => match ProbeTarget::from_config(&c, node) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            },
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        },
        (None, _, Some(address), Some(unit)) => ProbeTarget {
            link: Link::Tcp {
                address: address.clone(),
            },
            unit,
            timeout: Duration::from_millis(args.timeout_ms),
            device: None,
        },
        _ => {
            eprintln!(
                "error: say which node: --node ID --config FILE, --tcp HOST:PORT --unit N, or \
                 --node ID --mqtt HOST:PORT [--site SITE]"
            );
            return ExitCode::from(2);
        }
    };
    let image = match std::fs::read(&args.image) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: {}: {e}", args.image.display());
            return ExitCode::from(2);
        }
    };
    if let (Some(user), Some(node), Some(config)) = (&args.user, &args.node, &args.config) {
        return crate::flash_via::run(user, node, config, &image);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let mode = if args.plain {
        RtuMode::Plain
    } else {
        RtuMode::Stream {
            window: args.window,
        }
    };
    let result = runtime.block_on(flash_with(&target, &image, mode, |p| {
        eprint!("\r{}", p.line());
        let _ = std::io::stderr().flush();
        ControlFlow::Continue(())
    }));
    eprintln!();
    match result {
        Ok(r) => {
            println!(
                "flashed {} bytes in {} chunks{}; {} timeouts recovered. The node checked the \
                 image and resets into it on trial; it is confirmed once the gateway's next poll \
                 of it succeeds.",
                image.len(),
                r.chunks,
                if r.resumed_at > 0 {
                    format!(" (resumed at chunk {})", r.resumed_at)
                } else {
                    String::new()
                },
                r.recovered_timeouts
            );
            ExitCode::SUCCESS
        }
        Err(e @ FlashError::PortBusy { .. }) => {
            eprintln!("error: {e}");
            if let (Some(node), Some(config)) = (&args.node, &args.config) {
                eprintln!("{}", crate::flash_via::busy_hint(node, config, target.unit));
            }
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}
