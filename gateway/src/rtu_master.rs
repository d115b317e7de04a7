//! A small Modbus RTU master for the flash path: function 21 write file record (addressed or
//! broadcast) and function 20 read file record, over any [`RtuLine`]; and [`FileMaster`],
//! those requests as the transfer logic sees them, carried by this master or lent by a bus
//! task that keeps polling the line.
//!
//! Hand-written because tokio-modbus's RTU client cannot frame the replies of functions 20
//! and 21: it does not know their length fields, so a reply that arrives split across two
//! reads of the serial port is misread (see [`crate::flash`]). Here a reply is framed by its
//! own length: an exception (function | 0x80) is 5 bytes, a reply to 20 or 21 is
//! address, function, byte count, that many bytes and the CRC, 3 + count + 2. The CRC is the
//! protocol crate's.
//!
//! Line discipline (Modbus over Serial Line V1.02, 2.5.1.1): after every frame on the line the
//! master keeps t3.5 of silence before its next frame, so that every slave sees the frames
//! apart; after a broadcast it keeps a turnaround ([`RtuMaster::turnaround`]) of at least
//! t3.5, since no reply tells it when the slaves are done.

use std::future::Future;
use std::io;
use std::time::{Duration, Instant};

use tianzhong_protocol::crc::{check_rtu_adu, rtu_crc_bytes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Write file record.
pub const WRITE_FILE_RECORD: u8 = 0x15;
/// Read file record.
pub const READ_FILE_RECORD: u8 = 0x14;
/// The broadcast address.
pub const BROADCAST: u8 = 0;

/// t3.5 above 19200 baud, fixed by the serial-line guide.
const FIXED_T3_5: Duration = Duration::from_micros(1_750);

/// t3.5 at `baud`: 3.5 characters of 11 bits, or 1.75 ms above 19200 baud.
pub fn t3_5(baud: u32) -> Duration {
    if baud > 19_200 {
        FIXED_T3_5
    } else {
        Duration::from_nanos(38_500_000_000 / u64::from(baud.max(1)))
    }
}

/// One character's time at `baud`: 11 bits.
pub fn char_time(baud: u32) -> Duration {
    Duration::from_nanos(11_000_000_000 / u64::from(baud.max(1)))
}

/// The default turnaround after a broadcast: t3.5 (1.75 ms above 19200 baud) and 0.25 ms.
///
/// A node executes a write at t3.5 after its last character and programs the chunk (32 words,
/// about 0.5 ms on the STM32F4) while its UART interrupt queues the next frame's characters
/// with their arrival times (the board's main loop), so the gateway need not wait for the
/// programming: the turnaround only has to keep the frames apart, with a margin for the
/// slave's clock and the master's own timing.
pub fn default_turnaround(baud: u32) -> Duration {
    t3_5(baud) + Duration::from_micros(250)
}

/// A serial line as the master sees it: frames out, bytes in, and silence.
pub trait RtuLine: Send {
    /// Transmits one frame; returns once its last character is on the line.
    fn send(&mut self, adu: &[u8]) -> impl Future<Output = io::Result<()>> + Send;
    /// Receives what has arrived into `buf`: the count, or 0 when nothing came within
    /// `timeout`.
    fn recv(
        &mut self,
        buf: &mut [u8],
        timeout: Duration,
    ) -> impl Future<Output = io::Result<usize>> + Send;
    /// Keeps the line silent for `d` after the last frame on it.
    fn silence(&mut self, d: Duration) -> impl Future<Output = ()> + Send;
}

/// A serial port (or anything else that reads and writes bytes) as an [`RtuLine`] in real
/// time. The operating system's buffer takes a frame at once, so the line is reckoned busy
/// until the frame's characters have had their time at `baud`; silences count from then.
#[derive(Debug)]
pub struct SerialLine<T> {
    io: T,
    char_time: Duration,
    busy_until: Instant,
}

impl<T> SerialLine<T> {
    /// `io` at `baud`.
    pub fn new(io: T, baud: u32) -> SerialLine<T> {
        SerialLine {
            io,
            char_time: char_time(baud),
            busy_until: Instant::now(),
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> RtuLine for SerialLine<T> {
    async fn send(&mut self, adu: &[u8]) -> io::Result<()> {
        self.io.write_all(adu).await?;
        self.io.flush().await?;
        let start = self.busy_until.max(Instant::now());
        self.busy_until = start + self.char_time * adu.len() as u32;
        tokio::time::sleep_until(self.busy_until.into()).await;
        Ok(())
    }

    async fn recv(&mut self, buf: &mut [u8], timeout: Duration) -> io::Result<usize> {
        match tokio::time::timeout(timeout, self.io.read(buf)).await {
            Err(_) => Ok(0),
            Ok(Ok(0)) => Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(Ok(n)) => {
                self.busy_until = Instant::now();
                Ok(n)
            }
            Ok(Err(e)) => Err(e),
        }
    }

    async fn silence(&mut self, d: Duration) {
        let until = self.busy_until.max(Instant::now()) + d;
        tokio::time::sleep_until(until.into()).await;
        self.busy_until = until;
    }
}

/// The simulator's RTU line on its virtual clock ([`tianzhong_simulator::rtu_line`]); reply
/// bytes are handed over at most 7 at a time, so the master's framing by length is exercised
/// as with a serial port that splits a reply.
impl RtuLine for tianzhong_simulator::rtu_line::SimRtuLine {
    async fn send(&mut self, adu: &[u8]) -> io::Result<()> {
        tianzhong_simulator::rtu_line::SimRtuLine::send(self, adu);
        Ok(())
    }

    async fn recv(&mut self, buf: &mut [u8], timeout: Duration) -> io::Result<usize> {
        Ok(tianzhong_simulator::rtu_line::SimRtuLine::recv(
            self,
            buf,
            7,
            timeout.as_nanos() as u64,
        ))
    }

    async fn silence(&mut self, d: Duration) {
        tianzhong_simulator::rtu_line::SimRtuLine::silence(self, d.as_nanos() as u64);
    }
}

/// The file-record requests a firmware transfer makes, whoever carries them to the line: the
/// gateway's own [`RtuMaster`] on a port it opened (`tianzhong flash` with the gateway
/// stopped), or the bus task that polls the line and lends it between polls
/// ([`crate::sources::modbus::lend`]). The transfer logic ([`crate::flash::flash_rtu`]) is
/// written once against this.
pub trait FileMaster: Send {
    /// The unit the requests go to (a broadcast goes to every unit).
    fn unit(&self) -> u8;
    /// Function 21 to the unit, one sub-request; the reply must be the echo.
    fn write_file(
        &mut self,
        file: u16,
        record: u16,
        regs: &[u16],
    ) -> impl Future<Output = Result<(), RtuError>> + Send;
    /// Function 21 to the broadcast address: no reply; the turnaround follows.
    fn broadcast_file(
        &mut self,
        file: u16,
        record: u16,
        regs: &[u16],
    ) -> impl Future<Output = Result<(), RtuError>> + Send;
    /// Function 20 from the unit, one sub-request of `count` registers.
    fn read_file(
        &mut self,
        file: u16,
        record: u16,
        count: u16,
    ) -> impl Future<Output = Result<Vec<u16>, RtuError>> + Send;
}

impl<L: RtuLine> FileMaster for RtuMaster<L> {
    fn unit(&self) -> u8 {
        self.unit
    }

    async fn write_file(&mut self, file: u16, record: u16, regs: &[u16]) -> Result<(), RtuError> {
        RtuMaster::write_file(self, file, record, regs).await
    }

    async fn broadcast_file(
        &mut self,
        file: u16,
        record: u16,
        regs: &[u16],
    ) -> Result<(), RtuError> {
        RtuMaster::broadcast_file(self, file, record, regs).await
    }

    async fn read_file(
        &mut self,
        file: u16,
        record: u16,
        count: u16,
    ) -> Result<Vec<u16>, RtuError> {
        RtuMaster::read_file(self, file, record, count).await
    }
}

/// Why a request failed.
#[derive(Debug)]
pub enum RtuError {
    /// No (complete) reply within the timeout.
    Timeout,
    /// The slave answered with this exception code.
    Exception(u8),
    /// A reply that is not one: bad CRC, wrong unit or function, or not the echo.
    Protocol(String),
    /// The line failed.
    Io(io::Error),
}

impl std::fmt::Display for RtuError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RtuError::Timeout => write!(f, "no answer"),
            RtuError::Exception(c) => write!(f, "Modbus exception {c:02X}"),
            RtuError::Protocol(e) => write!(f, "{e}"),
            RtuError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl From<io::Error> for RtuError {
    fn from(e: io::Error) -> Self {
        RtuError::Io(e)
    }
}

/// The RTU master's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MasterStats {
    /// Frames sent, broadcasts included.
    pub frames: u64,
    /// Of them, broadcasts.
    pub broadcasts: u64,
    /// Requests that got no reply in time.
    pub timeouts: u64,
}

/// An RTU master talking to unit `unit` on `line`.
#[derive(Debug)]
pub struct RtuMaster<L> {
    /// The line.
    pub line: L,
    /// The slave's unit address.
    pub unit: u8,
    /// How long to wait for a reply's first byte, and between its bytes.
    pub timeout: Duration,
    /// Silence after a frame before the next: t3.5.
    pub t3_5: Duration,
    /// Silence after a broadcast before the next frame.
    pub turnaround: Duration,
    /// Counters.
    pub stats: MasterStats,
}

/// The sub-request of a write file record: reference type 6, file, record, length, data.
fn write_pdu(file: u16, record: u16, regs: &[u16]) -> Vec<u8> {
    let mut pdu = vec![WRITE_FILE_RECORD, (7 + 2 * regs.len()) as u8, 0x06];
    for v in [file, record, regs.len() as u16].iter().chain(regs) {
        pdu.extend_from_slice(&v.to_be_bytes());
    }
    pdu
}

impl<L: RtuLine> RtuMaster<L> {
    /// A master for `unit` on `line` at `baud`, with the default turnaround.
    pub fn new(line: L, unit: u8, baud: u32, timeout: Duration) -> RtuMaster<L> {
        RtuMaster {
            line,
            unit,
            timeout,
            t3_5: t3_5(baud),
            turnaround: default_turnaround(baud),
            stats: MasterStats::default(),
        }
    }

    async fn send(&mut self, address: u8, pdu: &[u8]) -> Result<(), RtuError> {
        let mut adu = Vec::with_capacity(pdu.len() + 3);
        adu.push(address);
        adu.extend_from_slice(pdu);
        let crc = rtu_crc_bytes(&adu);
        adu.extend_from_slice(&crc);
        if adu.len() > 256 {
            return Err(RtuError::Protocol(format!(
                "a frame of {} bytes",
                adu.len()
            )));
        }
        self.stats.frames += 1;
        self.line.send(&adu).await?;
        Ok(())
    }

    /// Reads one reply to `function` from the unit, framed by its length fields; its PDU.
    async fn reply(&mut self, function: u8) -> Result<Vec<u8>, RtuError> {
        let mut adu = Vec::with_capacity(256);
        let mut buf = [0u8; 256];
        let result = loop {
            // Address, function and (for a normal reply) byte count tell the length.
            let want = match adu.as_slice() {
                [_, f, ..] if f & 0x80 != 0 => 5,
                [_, _, count, ..] => 3 + usize::from(*count) + 2,
                _ => 3,
            };
            if adu.len() >= want {
                break Ok(());
            }
            let n = self
                .line
                .recv(&mut buf[..want - adu.len()], self.timeout)
                .await?;
            if n == 0 {
                break Err(RtuError::Timeout);
            }
            adu.extend_from_slice(&buf[..n]);
        };
        // Whatever happened, the line is the master's again only after t3.5 of silence.
        self.line.silence(self.t3_5).await;
        if let Err(e) = result {
            self.stats.timeouts += 1;
            return Err(e);
        }
        let body = check_rtu_adu(&adu)
            .map_err(|_| RtuError::Protocol(format!("reply with a bad CRC: {adu:02x?}")))?;
        match body {
            [unit, ..] if *unit != self.unit => Err(RtuError::Protocol(format!(
                "reply from unit {unit}, not {}",
                self.unit
            ))),
            [_, f, code] if *f == function | 0x80 => Err(RtuError::Exception(*code)),
            [_, f, pdu @ ..] if *f == function => {
                let mut out = vec![function];
                out.extend_from_slice(pdu);
                Ok(out)
            }
            _ => Err(RtuError::Protocol(format!("reply {adu:02x?}"))),
        }
    }

    /// Function 21 to the unit, one sub-request; the reply must be the echo.
    pub async fn write_file(
        &mut self,
        file: u16,
        record: u16,
        regs: &[u16],
    ) -> Result<(), RtuError> {
        let pdu = write_pdu(file, record, regs);
        self.send(self.unit, &pdu).await?;
        let reply = self.reply(WRITE_FILE_RECORD).await?;
        if reply != pdu {
            return Err(RtuError::Protocol("the write reply is not an echo".into()));
        }
        Ok(())
    }

    /// Function 21 to the broadcast address: no reply; the turnaround follows.
    pub async fn broadcast_file(
        &mut self,
        file: u16,
        record: u16,
        regs: &[u16],
    ) -> Result<(), RtuError> {
        let pdu = write_pdu(file, record, regs);
        self.send(BROADCAST, &pdu).await?;
        self.stats.broadcasts += 1;
        self.line.silence(self.turnaround).await;
        Ok(())
    }

    /// Function 20 from the unit, one sub-request of `count` registers.
    pub async fn read_file(
        &mut self,
        file: u16,
        record: u16,
        count: u16,
    ) -> Result<Vec<u16>, RtuError> {
        let mut pdu = vec![READ_FILE_RECORD, 0x07, 0x06];
        for v in [file, record, count] {
            pdu.extend_from_slice(&v.to_be_bytes());
        }
        self.send(self.unit, &pdu).await?;
        let r = self.reply(READ_FILE_RECORD).await?;
        let n = usize::from(count);
        if r.len() != 4 + 2 * n || r[1..4] != [(2 + 2 * n) as u8, (1 + 2 * n) as u8, 0x06] {
            return Err(RtuError::Protocol(format!("read reply {r:02x?}")));
        }
        Ok(r[4..]
            .chunks(2)
            .map(|p| u16::from_be_bytes([p[0], p[1]]))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reply split into three reads of a byte stream is framed by its length, not by the
    /// reads.
    #[tokio::test]
    async fn a_reply_split_across_reads_is_framed_by_its_length() {
        let (gateway, mut node) = tokio::io::duplex(512);
        let mut master = RtuMaster::new(
            SerialLine::new(gateway, 115_200),
            5,
            115_200,
            Duration::from_secs(1),
        );
        let node_side = tokio::spawn(async move {
            let mut req = [0u8; 64];
            let n = node.read(&mut req).await.unwrap();
            assert_eq!(&req[..3], &[5, READ_FILE_RECORD, 7]);
            assert_eq!(n, 12, "address, function, byte count, 7 bytes, CRC");
            // Status of two registers: 0x0001, 0x0203.
            let mut reply = vec![5, READ_FILE_RECORD, 6, 5, 6, 0x00, 0x01, 0x02, 0x03];
            let crc = rtu_crc_bytes(&reply);
            reply.extend_from_slice(&crc);
            for part in [&reply[..2], &reply[2..6], &reply[6..]] {
                node.write_all(part).await.unwrap();
                node.flush().await.unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            // Then an exception to a write, in one piece.
            let _ = node.read(&mut req).await.unwrap();
            let mut reply = vec![5, WRITE_FILE_RECORD | 0x80, 0x03];
            let crc = rtu_crc_bytes(&reply);
            reply.extend_from_slice(&crc);
            node.write_all(&reply).await.unwrap();
        });
        assert_eq!(
            master.read_file(0xF003, 0, 2).await.unwrap(),
            vec![1, 0x0203]
        );
        assert!(matches!(
            master.write_file(0xF001, 0, &[1, 2]).await,
            Err(RtuError::Exception(3))
        ));
        node_side.await.unwrap();
    }
}
