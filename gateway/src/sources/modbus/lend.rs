//! Lending a serial bus's line to firmware transfers while the bus keeps being polled.
//!
//! A Modbus RTU line has one master, and the gateway's bus task ([`super::bus`]) is it: it
//! holds the serial port (locked) for as long as the gateway runs. A firmware transfer to a
//! node on the line — a campaign's ([`crate::campaign::update`]) — therefore does not open the
//! port: it hands its requests, one at a time, to the bus task through a channel
//! ([`BusLine`]), and the bus task carries each **between its polls**. The transfer keeps its
//! own logic (streaming, go-back-N, status reads, resuming: [`crate::flash::flash_rtu`],
//! written once against [`FileMaster`], which [`LentFiles`] implements over the channel and
//! the gateway's own [`RtuMaster`](crate::rtu_master::RtuMaster) implements over a port it
//! opened); the bus task keeps its schedule.
//!
//! # Why single requests, not lent windows
//!
//! The unit lent is one request — one write, one broadcast stream write, one status or
//! register read — rather than the line for a slice of time or a whole window of the stream.
//! A due poll then waits for at most the one request in flight, whatever the transfer's
//! window, so the bound on the other devices' poll periods does not depend on the transfer's
//! settings; and the transfer side stays the same code as with its own port. The price is a
//! hand-over per request (a channel send and a wake-up, tens of microseconds against a
//! stream write's 25 ms at 115200 baud and 280 ms at 9600).
//!
//! # Who gets the line
//!
//! [`turn`] decides, each time the line is free:
//!
//! | poll due | request waiting | turn |
//! |---|---|---|
//! | yes | no | poll |
//! | yes | yes, for less than [`MAX_LENT_WAIT`] | poll |
//! | yes | yes, for [`MAX_LENT_WAIT`] or more | the request |
//! | no | yes | the request |
//! | no | no | wait for the next poll or a request |
//!
//! So polls that are due go first, and a device's poll starts at most one lent request late
//! (plus, as without lending, the polls of other devices due at the same moment): its poll
//! period stays within its interval plus the longest lent request, about one stream write
//! (25 ms at 115200 baud, 280 ms at 9600), or the bus timeout when a transfer's addressed
//! request goes unanswered. A transfer is never starved: on a line so busy that polls are due
//! all the time, it still gets one request per [`MAX_LENT_WAIT`].
//!
//! Lent requests are counted in `tianzhong_modbus_lent_requests_total{bus, result}`, and
//! each failure is logged with the bus, the unit and the file and record range.
//!
//! # Measured
//!
//! `tests/tests/flash_rtu_bus.rs`: five simulated nodes on one paced 38400-baud line, each
//! polled every 500 ms (some 25 ms a poll), three of them updated one after the other with an
//! 8.6 KiB image:
//!
//! | figure | value |
//! |---|---|
//! | one image over the line, polls going on | 4.3–4.4 s, 2 030–2 050 B/s: 58 % of the raw line rate (3 490 B/s), 64 % of what the stream gets with the line to itself (3 170 B/s: 224 bytes per 242-byte frame and its 1.25 ms turnaround) |
//! | longest lent request | 85 ms (a stream write: 71 ms of frame, the turnaround, t3.5 after a poll) |
//! | longest wait of a lent request for the line | 126 ms |
//! | longest gap between two reads of a node not being updated, during the transfers | 527–562 ms (interval 500 ms) |

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use super::link::ReadResult;
use super::plan::ReadRequest;
use crate::config::{Config, Link};
use crate::rtu_master::{FileMaster, RtuError};

/// How long a lent request may wait while polls are due before it goes first.
pub const MAX_LENT_WAIT: Duration = Duration::from_millis(500);

/// Lent requests queued per bus: one transfer runs per bus and has one request out at a time;
/// the room is for a verification read beside it.
const QUEUE: usize = 4;

/// A file-record request of a firmware transfer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileRequest {
    /// Function 21 to `unit`; the reply is the echo.
    Write {
        /// Unit.
        unit: u8,
        /// File number.
        file: u16,
        /// First record.
        record: u16,
        /// Registers written.
        regs: Vec<u16>,
    },
    /// Function 21 to every unit (address 0); no reply.
    Broadcast {
        /// File number.
        file: u16,
        /// First record.
        record: u16,
        /// Registers written.
        regs: Vec<u16>,
    },
    /// Function 20 from `unit`.
    Read {
        /// Unit.
        unit: u8,
        /// File number.
        file: u16,
        /// First record.
        record: u16,
        /// Registers read.
        count: u16,
    },
}

impl FileRequest {
    /// The unit addressed; 0 for a broadcast.
    pub fn unit(&self) -> u8 {
        match self {
            FileRequest::Write { unit, .. } | FileRequest::Read { unit, .. } => *unit,
            FileRequest::Broadcast { .. } => 0,
        }
    }
}

impl fmt::Display for FileRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileRequest::Write {
                unit,
                file,
                record,
                regs,
            } => write!(
                f,
                "write file {file:#06X} records {record}+{} to unit {unit}",
                regs.len()
            ),
            FileRequest::Broadcast { file, record, regs } => write!(
                f,
                "broadcast write file {file:#06X} records {record}+{}",
                regs.len()
            ),
            FileRequest::Read {
                unit,
                file,
                record,
                count,
            } => write!(
                f,
                "read file {file:#06X} records {record}+{count} from unit {unit}"
            ),
        }
    }
}

/// A request handed to a bus task, with where its answer goes.
#[derive(Debug)]
pub enum Lent {
    /// A file-record request: registers read (none for a write).
    File {
        /// The request.
        request: FileRequest,
        /// Its answer.
        done: oneshot::Sender<Result<Vec<u16>, RtuError>>,
    },
    /// A register read (a verification read of the node's identity or status block).
    Read {
        /// Unit.
        unit: u8,
        /// The read.
        request: ReadRequest,
        /// Its answer.
        done: oneshot::Sender<ReadResult>,
    },
}

/// A bus task's lent line: where its requests go. Cheap to clone.
#[derive(Clone, Debug)]
pub struct BusLine {
    bus: Arc<str>,
    tx: mpsc::Sender<Lent>,
    /// One transfer at a time on the line, whichever campaign it belongs to: a campaign's
    /// runner keeps its own to one per bus, and this keeps two campaigns (or a campaign and
    /// `tianzhong flash --user`) from sharing the line's time and each other's stream.
    transfer: Arc<Semaphore>,
}

fn stopped(bus: &str) -> RtuError {
    RtuError::Io(std::io::Error::other(format!(
        "bus {bus}: the bus task has stopped (gateway shutting down)"
    )))
}

impl BusLine {
    /// A line for `bus` and the receiving end its bus task serves.
    pub fn new(bus: &str) -> (BusLine, mpsc::Receiver<Lent>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        (
            BusLine {
                bus: bus.into(),
                tx,
                transfer: Arc::new(Semaphore::new(1)),
            },
            rx,
        )
    }

    /// The bus's name.
    pub fn bus(&self) -> &str {
        &self.bus
    }

    /// The line's one transfer slot, once the transfer before has let it go.
    pub async fn transfer_slot(&self) -> OwnedSemaphorePermit {
        if let Ok(slot) = Arc::clone(&self.transfer).try_acquire_owned() {
            return slot;
        }
        tracing::info!(bus = %self.bus, "a transfer waits for the one in progress on this bus");
        Arc::clone(&self.transfer)
            .acquire_owned()
            .await
            .expect("the semaphore is never closed")
    }

    /// Carries a file-record request between the bus's polls.
    pub async fn file(&self, request: FileRequest) -> Result<Vec<u16>, RtuError> {
        let (done, answer) = oneshot::channel();
        self.tx
            .send(Lent::File { request, done })
            .await
            .map_err(|_| stopped(&self.bus))?;
        answer.await.map_err(|_| stopped(&self.bus))?
    }

    /// Reads registers between the bus's polls.
    pub async fn read(&self, unit: u8, request: ReadRequest) -> ReadResult {
        let (done, answer) = oneshot::channel();
        let lent = Lent::Read {
            unit,
            request,
            done,
        };
        if self.tx.send(lent).await.is_err() {
            return ReadResult::LinkError(stopped(&self.bus).to_string());
        }
        answer
            .await
            .unwrap_or_else(|_| ReadResult::LinkError(stopped(&self.bus).to_string()))
    }
}

/// The file-record requests to one unit, carried by its bus task: what
/// [`crate::flash::flash_rtu`] drives on a line the gateway polls.
#[derive(Clone, Debug)]
pub struct LentFiles {
    /// The bus's line.
    pub line: BusLine,
    /// The node's unit.
    pub unit: u8,
}

impl FileMaster for LentFiles {
    fn unit(&self) -> u8 {
        self.unit
    }

    async fn write_file(&mut self, file: u16, record: u16, regs: &[u16]) -> Result<(), RtuError> {
        let request = FileRequest::Write {
            unit: self.unit,
            file,
            record,
            regs: regs.to_vec(),
        };
        self.line.file(request).await.map(|_| ())
    }

    async fn broadcast_file(
        &mut self,
        file: u16,
        record: u16,
        regs: &[u16],
    ) -> Result<(), RtuError> {
        let request = FileRequest::Broadcast {
            file,
            record,
            regs: regs.to_vec(),
        };
        self.line.file(request).await.map(|_| ())
    }

    async fn read_file(
        &mut self,
        file: u16,
        record: u16,
        count: u16,
    ) -> Result<Vec<u16>, RtuError> {
        let request = FileRequest::Read {
            unit: self.unit,
            file,
            record,
            count,
        };
        self.line.file(request).await
    }
}

/// The lent lines of a gateway's serial buses, by bus name. Cheap to clone; empty when the
/// gateway polls no serial bus (or for a campaign store opened without a gateway).
#[derive(Clone, Debug, Default)]
pub struct BusLines(Arc<HashMap<String, BusLine>>);

impl BusLines {
    /// A line for every Modbus RTU bus of `config` that has devices (the buses a task polls),
    /// and the receiving ends, for [`super::bus::BusTask::lend`].
    pub fn for_config(config: &Config) -> (BusLines, HashMap<String, mpsc::Receiver<Lent>>) {
        let mut lines = HashMap::new();
        let mut receivers = HashMap::new();
        for bus in &config.buses {
            if matches!(bus.link, Link::Rtu { .. })
                && config.devices.iter().any(|d| d.bus == bus.name)
            {
                let (line, rx) = BusLine::new(&bus.name);
                lines.insert(bus.name.clone(), line);
                receivers.insert(bus.name.clone(), rx);
            }
        }
        (BusLines(Arc::new(lines)), receivers)
    }

    /// The line of `bus`, if its task lends one.
    pub fn get(&self, bus: &str) -> Option<&BusLine> {
        self.0.get(bus)
    }
}

/// What a free bus does next ([module documentation](self)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Turn {
    /// Poll the device that is due.
    Poll,
    /// Carry the waiting lent request.
    Lend,
    /// Nothing to do before `until_ms`, unless a lent request comes.
    Wait {
        /// When the next poll is due.
        until_ms: u64,
    },
}

/// Who gets a free bus at `now_ms`: the next poll is due at `poll_due_ms`; a lent request
/// has waited since `lent_since_ms`, if one waits. Times in ms on the bus task's clock.
pub fn turn(now_ms: u64, poll_due_ms: u64, lent_since_ms: Option<u64>) -> Turn {
    let poll_due = poll_due_ms <= now_ms;
    match lent_since_ms {
        Some(since)
            if !poll_due || now_ms.saturating_sub(since) >= MAX_LENT_WAIT.as_millis() as u64 =>
        {
            Turn::Lend
        }
        _ if poll_due => Turn::Poll,
        _ => Turn::Wait {
            until_ms: poll_due_ms,
        },
    }
}

/// The result label of a lent request in `tianzhong_modbus_lent_requests_total`.
pub fn result_label(r: &Result<Vec<u16>, RtuError>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(RtuError::Timeout) => "timeout",
        Err(RtuError::Exception(_)) => "exception",
        Err(RtuError::Protocol(_)) => "malformed",
        Err(RtuError::Io(_)) => "error",
    }
}

#[cfg(test)]
mod tests {
    use super::super::scheduler::{BusScheduler, DeviceId, Next, Outcome, SchedulerConfig};
    use super::*;

    #[test]
    fn due_polls_go_first_and_a_waiting_request_is_not_starved() {
        let wait = MAX_LENT_WAIT.as_millis() as u64;
        assert_eq!(turn(1_000, 1_000, None), Turn::Poll);
        assert_eq!(turn(1_000, 1_500, None), Turn::Wait { until_ms: 1_500 });
        assert_eq!(turn(1_000, 1_500, Some(1_000)), Turn::Lend);
        assert_eq!(turn(1_000, 900, Some(999)), Turn::Poll);
        assert_eq!(turn(1_000, 900, Some(1_000 - wait + 1)), Turn::Poll);
        assert_eq!(turn(1_000, 900, Some(1_000 - wait)), Turn::Lend);
        // A request "from the future" (clock read before it was stamped) is not a wait.
        assert_eq!(turn(1_000, 900, Some(2_000)), Turn::Poll);
    }

    /// One bus on a virtual clock, as the bus task runs it: `devices` polled every
    /// `interval_ms`, each poll taking `poll_ms`, and a transfer that always has its next
    /// request of `lent_ms` ready. Returns each device's poll start times and the number of
    /// lent requests carried.
    fn run_bus(
        devices: u32,
        interval_ms: u64,
        poll_ms: u64,
        lent_ms: u64,
        until_ms: u64,
    ) -> (Vec<Vec<u64>>, u64) {
        let list: Vec<(DeviceId, Duration)> = (0..devices)
            .map(|i| (DeviceId(i), Duration::from_millis(interval_ms)))
            .collect();
        let mut bus = BusScheduler::new(SchedulerConfig::default(), &list, 0).unwrap();
        let mut starts = vec![Vec::new(); devices as usize];
        let (mut now, mut lent, mut since) = (0u64, 0u64, Some(0u64));
        while now < until_ms {
            let due = bus.due_ms().expect("nothing in flight between turns");
            match turn(now, due, since) {
                Turn::Lend => {
                    now += lent_ms;
                    lent += 1;
                    // The transfer hands over its next request as soon as it has the answer.
                    since = Some(now);
                }
                Turn::Poll => match bus.next(now) {
                    Next::Poll { device, .. } => {
                        starts[device.0 as usize].push(now);
                        now += poll_ms;
                        bus.report(
                            device,
                            Outcome::Ok {
                                latency_ms: poll_ms,
                            },
                            now,
                        )
                        .unwrap();
                    }
                    other => panic!("a due poll, not {other:?}"),
                },
                Turn::Wait { until_ms } => now = until_ms,
            }
        }
        (starts, lent)
    }

    #[tokio::test]
    async fn one_transfer_at_a_time_per_line() {
        let (line, _rx) = BusLine::new("b");
        let other = line.clone();
        let first = line.transfer_slot().await;
        let second = tokio::spawn(async move { other.transfer_slot().await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!second.is_finished(), "the second transfer waits");
        drop(first);
        let _second = tokio::time::timeout(Duration::from_secs(1), second)
            .await
            .expect("the second transfer starts once the first is done")
            .unwrap();
    }

    fn longest_gap(starts: &[u64]) -> u64 {
        starts.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0)
    }

    /// Four devices polled every 500 ms (20 ms a poll) on a line that a transfer keeps busy
    /// with 280 ms requests (a stream write at 9600 baud): every device keeps its period
    /// within its interval plus one request, and the transfer gets the rest of the line.
    #[test]
    fn a_transfer_delays_each_poll_by_at_most_one_request() {
        let (starts, lent) = run_bus(4, 500, 20, 280, 60_000);
        for (i, s) in starts.iter().enumerate() {
            let gap = longest_gap(s);
            // The request in flight, and the polls of the others due during it.
            assert!(
                gap <= 500 + 280 + 3 * 20,
                "device {i}: a gap of {gap} ms between polls"
            );
            // On the grid: as many polls as intervals, give or take the last.
            assert!(s.len() >= 119, "device {i}: {} polls in 60 s", s.len());
        }
        // Polls take 4 × 20 ms of every 500 ms (16 %); lent requests get most of the rest.
        let share = lent as f64 * 280.0 / 60_000.0;
        assert!(
            share > 0.7,
            "the transfer had {:.0} % of the line",
            share * 100.0
        );
    }

    /// A saturated line (polls due all the time): the transfer still gets one request per
    /// `MAX_LENT_WAIT`, and the polls go on.
    #[test]
    fn on_a_saturated_line_the_transfer_still_moves() {
        // Ten devices every 100 ms at 20 ms a poll: twice what the line can carry.
        let (starts, lent) = run_bus(10, 100, 20, 100, 10_000);
        let wait = MAX_LENT_WAIT.as_millis() as u64;
        assert!(
            lent + 1 >= 10_000 / (wait + 100 + 20),
            "{lent} lent requests in 10 s"
        );
        assert!(starts.iter().all(|s| s.len() > 10));
    }
}
