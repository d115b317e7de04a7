//! The wire of one bus: a tokio-modbus client over TCP or a serial line, opened lazily and
//! dropped after anything that could leave it out of step.
//!
//! The async client has no timeout and, on a serial line, no notion of a reply arriving after
//! one: a late answer to a timed-out request would sit in the port's buffer and be read as the
//! answer to the next. So after a timeout or garbage the connection is dropped; the serial
//! port is reopened after a silence and its input buffer flushed, the TCP connection remade.
//!
//! The client also hides what it receives: its RTU decoder skips bytes that fail the CRC and
//! waits on, so garbage on the line ends as a timeout. [`Counted`] counts the bytes that
//! arrive, which tells a silent device (a true timeout) from one that answered with garbage.
//!
//! On a serial line the port is shared with the gateway's own RTU master
//! ([`crate::rtu_master`]), which carries the file-record requests of a firmware transfer the
//! bus task lends the line to ([`super::lend`]): tokio-modbus cannot frame their replies, and
//! the port cannot be opened twice (it is locked). Both ends are used by the bus task only,
//! one request at a time, so they never interleave on the wire; a failure on either drops
//! both, and the port is reopened and flushed as above.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_modbus::client::{Context, Reader};
use tokio_modbus::prelude::{Slave, SlaveContext};
use tokio_serial::SerialPortBuilderExt;

use super::lend::FileRequest;
use super::plan::ReadRequest;
use super::scheduler::Outcome;
use crate::config::{Link, Parity, StopBits};
use crate::rtu_master::{RtuError, RtuMaster, SerialLine};
use tianzhong_protocol::registers::RegisterTable;

/// An I/O stream that counts the bytes read from it.
#[derive(Debug)]
pub struct Counted<T> {
    inner: T,
    received: Arc<AtomicU64>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        self.received.fetch_add(n as u64, Relaxed);
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A serial port shared by the bus's tokio-modbus client and its RTU master. The lock is
/// never contended: the bus task uses one end at a time; it only lets both ends own the port.
#[derive(Clone, Debug)]
pub struct SharedPort(Arc<std::sync::Mutex<tokio_serial::SerialStream>>);

impl SharedPort {
    fn with<R>(&self, f: impl FnOnce(Pin<&mut tokio_serial::SerialStream>) -> R) -> R {
        let mut port = self.0.lock().unwrap_or_else(|e| e.into_inner());
        f(Pin::new(&mut port))
    }
}

impl AsyncRead for SharedPort {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.with(|p| p.poll_read(cx, buf))
    }
}

impl AsyncWrite for SharedPort {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.with(|p| p.poll_write(cx, buf))
    }
    /// A serial port's flush is `tcdrain`, which blocks until the frame has left the UART:
    /// 280 ms for a 256-byte frame at 9600 baud. It is kept (on a pseudo-terminal it is also
    /// what keeps frames apart when the other end reads late), but on a multi-threaded runtime
    /// it is waited out with the worker's other tasks handed to another thread, so a transfer's
    /// frames do not stall the gateway.
    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        use tokio::runtime::{Handle, RuntimeFlavor};
        let multi =
            Handle::try_current().is_ok_and(|h| h.runtime_flavor() == RuntimeFlavor::MultiThread);
        if multi {
            tokio::task::block_in_place(|| self.with(|p| p.poll_flush(cx)))
        } else {
            self.with(|p| p.poll_flush(cx))
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        self.with(|p| p.poll_shutdown(cx))
    }
}

/// How one read ended, in more detail than the scheduler needs.
#[derive(Debug)]
pub enum ReadResult {
    /// Registers.
    Data(Vec<u16>),
    /// A Modbus exception.
    Exception(u8),
    /// No answer in time.
    Timeout,
    /// An answer that is not one: bytes failing the CRC, a wrong unit, function or length.
    Malformed(String),
    /// The link itself failed: connection refused or reset, serial port gone.
    LinkError(String),
}

impl ReadResult {
    /// The scheduler's view. A link error counts as no answer.
    pub fn outcome(&self, latency: Duration) -> Outcome {
        match self {
            ReadResult::Data(_) => Outcome::Ok {
                latency_ms: latency.as_millis() as u64,
            },
            ReadResult::Exception(code) => Outcome::Exception(*code),
            ReadResult::Timeout | ReadResult::LinkError(_) => Outcome::Timeout,
            ReadResult::Malformed(_) => Outcome::Malformed,
        }
    }
}

/// One bus's connection.
pub struct BusLink {
    link: Link,
    timeout: Duration,
    context: Option<Context>,
    received: Arc<AtomicU64>,
    /// On a serial line, the RTU master on the same port, for lent file-record requests.
    files: Option<RtuMaster<SerialLine<SharedPort>>>,
    /// Whether the last frame on the line was tokio-modbus's, which keeps no t3.5 after a
    /// reply: the RTU master then keeps it before its own frame.
    polled_last: bool,
}

impl BusLink {
    /// A link, not yet opened.
    pub fn new(link: Link, timeout: Duration) -> BusLink {
        BusLink {
            link,
            timeout,
            context: None,
            received: Arc::default(),
            files: None,
            polled_last: false,
        }
    }

    /// Where the link goes, for logs.
    pub fn endpoint(&self) -> String {
        match &self.link {
            Link::Tcp { address } => address.clone(),
            Link::Rtu { device, .. } => device.display().to_string(),
        }
    }

    async fn open(&mut self) -> io::Result<&mut Context> {
        if self.context.is_none() {
            let received = Arc::new(AtomicU64::new(0));
            let context = match &self.link {
                Link::Tcp { address } => {
                    let addr: SocketAddr = tokio::net::lookup_host(address.as_str())
                        .await?
                        .next()
                        .ok_or_else(|| {
                            io::Error::other(format!("{address} resolves to nothing"))
                        })?;
                    let stream =
                        tokio::time::timeout(self.timeout, tokio::net::TcpStream::connect(addr))
                            .await
                            .map_err(|_| {
                                io::Error::new(io::ErrorKind::TimedOut, "connect timed out")
                            })??;
                    stream.set_nodelay(true)?;
                    tokio_modbus::client::tcp::attach(Counted {
                        inner: stream,
                        received: Arc::clone(&received),
                    })
                }
                Link::Rtu {
                    device,
                    baud,
                    parity,
                    stop_bits,
                } => {
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
                        .map_err(io::Error::other)?;
                    // Whatever a device sent after the last request timed out is not an
                    // answer to the next one.
                    let _ =
                        tokio_serial::SerialPort::clear(&port, tokio_serial::ClearBuffer::Input);
                    let port = SharedPort(Arc::new(std::sync::Mutex::new(port)));
                    self.files = Some(RtuMaster::new(
                        SerialLine::new(port.clone(), *baud),
                        0,
                        *baud,
                        self.timeout,
                    ));
                    self.polled_last = false;
                    tokio_modbus::client::rtu::attach(Counted {
                        inner: port,
                        received: Arc::clone(&received),
                    })
                }
            };
            self.received = received;
            self.context = Some(context);
        }
        Ok(self.context.as_mut().expect("opened above"))
    }

    /// Drops the connection; the next read reopens it. On a serial line, waits a silence
    /// first so that a late answer has finished before the port is flushed.
    pub async fn reset(&mut self) {
        self.files = None;
        if self.context.take().is_some() && matches!(self.link, Link::Rtu { .. }) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Reads `request` from `unit` under the bus timeout.
    pub async fn read(&mut self, unit: u8, request: &ReadRequest) -> ReadResult {
        let timeout = self.timeout;
        if let Err(e) = self.open().await {
            return ReadResult::LinkError(e.to_string());
        }
        let received = Arc::clone(&self.received);
        let before = received.load(Relaxed);
        let context = self.context.as_mut().expect("opened above");
        self.polled_last = true;
        context.set_slave(Slave(unit));
        let call = async {
            match request.table {
                RegisterTable::Input => {
                    context
                        .read_input_registers(request.start, request.count)
                        .await
                }
                RegisterTable::Holding => {
                    context
                        .read_holding_registers(request.start, request.count)
                        .await
                }
            }
        };
        let result = match tokio::time::timeout(timeout, call).await {
            Err(_) => {
                if received.load(Relaxed) > before {
                    ReadResult::Malformed("bytes arrived but no valid answer".into())
                } else {
                    ReadResult::Timeout
                }
            }
            Ok(Ok(Ok(registers))) if registers.len() == usize::from(request.count) => {
                ReadResult::Data(registers)
            }
            Ok(Ok(Ok(registers))) => ReadResult::Malformed(format!(
                "{} registers in the answer, {} asked",
                registers.len(),
                request.count
            )),
            Ok(Ok(Err(exception))) => ReadResult::Exception(u8::from(exception)),
            Ok(Err(tokio_modbus::Error::Protocol(e))) => ReadResult::Malformed(e.to_string()),
            Ok(Err(tokio_modbus::Error::Transport(e)))
                if e.kind() == io::ErrorKind::InvalidData =>
            {
                ReadResult::Malformed(e.to_string())
            }
            Ok(Err(tokio_modbus::Error::Transport(e))) => ReadResult::LinkError(e.to_string()),
        };
        if !matches!(result, ReadResult::Data(_) | ReadResult::Exception(_)) {
            self.reset().await;
        }
        result
    }

    /// Carries one lent file-record request on a serial line, through the RTU master on the
    /// bus's port: registers read, or none for a write. A reply that did not come, or came
    /// damaged, may still be on its way: the port is then dropped and reopened, as after a
    /// failed read.
    pub async fn file_request(&mut self, request: &FileRequest) -> Result<Vec<u16>, RtuError> {
        if !matches!(self.link, Link::Rtu { .. }) {
            return Err(RtuError::Protocol(
                "file-record requests are lent on serial lines only".into(),
            ));
        }
        self.open().await?;
        let after_poll = std::mem::replace(&mut self.polled_last, false);
        let master = self.files.as_mut().expect("a serial line opens its master");
        if after_poll {
            let t3_5 = master.t3_5;
            crate::rtu_master::RtuLine::silence(&mut master.line, t3_5).await;
        }
        let result = match request {
            FileRequest::Write {
                unit,
                file,
                record,
                regs,
            } => {
                master.unit = *unit;
                master
                    .write_file(*file, *record, regs)
                    .await
                    .map(|()| Vec::new())
            }
            FileRequest::Broadcast { file, record, regs } => master
                .broadcast_file(*file, *record, regs)
                .await
                .map(|()| Vec::new()),
            FileRequest::Read {
                unit,
                file,
                record,
                count,
            } => {
                master.unit = *unit;
                master.read_file(*file, *record, *count).await
            }
        };
        if matches!(
            result,
            Err(RtuError::Timeout | RtuError::Protocol(_) | RtuError::Io(_))
        ) {
            self.reset().await;
        }
        result
    }
}
