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
//! Over Modbus RTU, tokio-modbus frames the replies of functions 20 and 21 by what has arrived
//! (it does not know their length fields), so a reply split across two reads of the serial port
//! is misread; Modbus TCP (directly or through a serial server) has no such limit.

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

/// Chunk size: the largest power of two whose chunk, CRC and sub-request header fit one
/// write-file-record request.
pub const CHUNK: u16 = 128;
const OFFER_FILE: u16 = 0xF000;
const CHUNK_FILE: u16 = 0xF001;
const FINISH_FILE: u16 = 0xF002;
const STATUS_FILE: u16 = 0xF003;
const FINISH_MAGIC: u16 = 0x4649;
/// Status reads after a timeout before giving up.
const STATUS_RETRIES: u32 = 5;

/// The reasons a node gives in its status, by code.
pub fn reason(code: u16) -> &'static str {
    match code {
        1 => "wrong hardware model or revision",
        2 => "security counter lower than the running image's (rollback refused)",
        3 => "image too large for a firmware slot",
        4 => "SHA-256 differs from the trailer's: altered or damaged",
        5 => "signed with a key the node does not trust",
        6 => "signature invalid",
        7 => "malformed header",
        8 => "malformed trailer",
        9 => "chunk size not accepted",
        10 => "an image on trial must be confirmed first",
        11 => "no transfer in progress",
        12 => "chunk out of order",
        13 => "no such chunk",
        14 => "chunk of the wrong length",
        15 => "chunk damaged (CRC)",
        16 => "not every chunk is in",
        17 => "header received differs from the header offered",
        18 => "SHA-256 differs from the one offered",
        19 => "flash failure on the node",
        20 => "the node's update regions do not fit its flash",
        _ => "unknown reason",
    }
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
            } => {
                use tokio_serial::SerialPortBuilderExt;
                let port = tokio_serial::new(device.to_string_lossy(), *baud)
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
                    .map_err(|e| FlashError::Connect(format!("{}: {e}", device.display())))?;
                tokio_modbus::client::rtu::attach_slave(port, slave)
            }
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
    mut progress: impl FnMut(&Progress) -> ControlFlow<()>,
) -> Result<FlashReport, FlashError> {
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

/// `tianzhong flash` arguments.
#[derive(Debug, clap::Args)]
pub struct FlashArgs {
    /// The node's device id in --config.
    #[arg(long, requires = "config", conflicts_with = "tcp")]
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
    /// Request timeout in ms.
    #[arg(long, default_value_t = 2000)]
    pub timeout_ms: u64,
    /// The signed image (`tianzhong firmware sign`).
    pub image: std::path::PathBuf,
}

/// Runs `tianzhong flash`, with a progress bar on standard error.
pub fn run(args: FlashArgs) -> std::process::ExitCode {
    use std::io::Write as _;
    use std::process::ExitCode;
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
                "error: say which node: --node ID --config FILE, or --tcp HOST:PORT --unit N"
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
    let result = runtime.block_on(flash(&target, &image, |p| {
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
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}
