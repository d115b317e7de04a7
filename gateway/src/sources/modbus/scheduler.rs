//! Per-bus poll scheduling.
//!
//! A bus — one RS-485 line, or one Modbus TCP endpoint with its units behind it — carries one
//! request at a time, so every device on it competes for the same time. A healthy device at
//! 9600 baud answers in some 20 ms; a dead one costs the whole request timeout, typically a
//! second, on every attempt. Polled like the others, one dead device on a ten-device line
//! polled every second would eat the whole line. [`BusScheduler`] decides who gets the bus
//! next so that does not happen:
//!
//! - each device is polled on a fixed grid of its own interval, and the grids of a bus are
//!   **staggered**: device `i` of `n` starts at `i/n` of its interval, so a bus does not burst
//!   at start and stays smooth afterwards;
//! - a poll that **fails** (timeout, garbage, or a Modbus gateway saying the unit behind it
//!   did not answer; see [`Outcome::is_failure`]) is retried up to
//!   [`SchedulerConfig::retries`] times, after [`SchedulerConfig::backoff_base`], doubled for
//!   each further retry;
//! - a device whose polls fail [`SchedulerConfig::quarantine_after`] times in a row is
//!   **quarantined**: it is sent one probe request (no retries) after its poll interval, and
//!   after every failed probe the wait doubles, up to [`SchedulerConfig::quarantine_max`] (or
//!   the interval, if longer). A dead device therefore costs the bus one timeout per backoff
//!   period and its neighbours keep their rate;
//! - the first answer returns a device to normal at once, on its next grid slot;
//! - among devices that are due, the one due earliest goes first and equal due times go in
//!   turn, so a saturated bus (more work than time) slows every device alike rather than
//!   starving any.
//!
//! The scheduler is sans-IO: it never reads a clock or touches a port. The caller passes the
//! time in milliseconds on a monotonic clock of its choosing, asks [`BusScheduler::next`] what
//! to do, performs the request under [`SchedulerConfig::timeout`] (the async Modbus client has
//! no timeout of its own) and hands the result to [`BusScheduler::report`]:
//!
//! ```
//! use std::time::Duration;
//! use tianzhong_gateway::sources::modbus::scheduler::{
//!     BusScheduler, DeviceId, Next, Outcome, SchedulerConfig,
//! };
//!
//! let second = Duration::from_secs(1);
//! let devices = [(DeviceId(1), second), (DeviceId(2), second)];
//! let mut bus = BusScheduler::new(SchedulerConfig::default(), &devices, 0).unwrap();
//! let mut now = 0;
//! let mut answered = 0;
//! while now < 10_000 {
//!     match bus.next(now) {
//!         Next::Poll { device, .. } => {
//!             now += 20; // the request, under `bus.config().timeout`
//!             bus.report(device, Outcome::Ok { latency_ms: 20 }, now).unwrap();
//!             answered += 1;
//!         }
//!         Next::Idle { until_ms } => now = until_ms,
//!         Next::Busy { .. } => unreachable!("every poll is reported before asking again"),
//!     }
//! }
//! assert_eq!(answered, 20);
//! assert_eq!(bus.stats(DeviceId(2)).unwrap().successes, 10);
//! ```
//!
//! A [`Next::Poll`] grants the bus for one poll of the device: the reads of its [`ReadPlan`]
//! in turn, each under the timeout, stopping at the first that fails, whose outcome is the
//! one reported (an answer reports the whole poll's time as its latency). Stopping there is
//! what keeps a quarantined device's probe to one timeout. An exception 02 goes to the
//! planner as well; the scheduler counts it as an answer (the device is alive) and does not
//! retry it.
//!
//! [`ReadPlan`]: super::plan::ReadPlan

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fmt;
use std::time::Duration;

/// A device on a bus, as the caller numbers it (an index into its configuration, or the
/// Modbus unit ID on a serial line). Unique within one scheduler.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId(pub u32);

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "device {}", self.0)
    }
}

/// Most retries per poll [`SchedulerConfig::validate`] accepts: every retry of a dead device
/// costs a full timeout, and beyond a few the doubling backoff would outlast the poll
/// interval anyway.
pub const MAX_RETRIES: u32 = 8;

/// How a bus treats slow and failing devices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// How long the caller waits for an answer before reporting [`Outcome::Timeout`]. The
    /// scheduler does not use it; it lives here so that one configuration section holds
    /// everything about how a bus treats a silent device.
    pub timeout: Duration,
    /// Further attempts after a failed request within one poll, 0 to [`MAX_RETRIES`].
    pub retries: u32,
    /// Wait before the first retry; each further retry of the same poll waits twice as long
    /// as the one before.
    pub backoff_base: Duration,
    /// Failed polls in a row (each with its retries used up) after which a device is
    /// quarantined; at least 1.
    pub quarantine_after: u32,
    /// Longest wait between two probes of a quarantined device (a device polled less often
    /// than this is never probed more often than its interval).
    pub quarantine_max: Duration,
}

impl Default for SchedulerConfig {
    /// One retry after 100 ms, quarantine after two failed polls, probes at most 5 minutes
    /// apart, under a 1 s timeout — long enough for an RTU device at 9600 baud reading 125
    /// registers (some 300 ms of frames) plus a slow device's processing.
    fn default() -> Self {
        SchedulerConfig {
            timeout: Duration::from_secs(1),
            retries: 1,
            backoff_base: Duration::from_millis(100),
            quarantine_after: 2,
            quarantine_max: Duration::from_secs(300),
        }
    }
}

impl SchedulerConfig {
    /// Checks every field against the limits its documentation gives.
    pub fn validate(&self) -> Result<(), SchedulerError> {
        if millis(self.timeout) == 0 {
            return Err(SchedulerError::Timeout(self.timeout));
        }
        if self.retries > MAX_RETRIES {
            return Err(SchedulerError::Retries(self.retries));
        }
        if millis(self.backoff_base) == 0 {
            return Err(SchedulerError::BackoffBase(self.backoff_base));
        }
        if self.quarantine_after == 0 {
            return Err(SchedulerError::QuarantineAfter);
        }
        if millis(self.quarantine_max) == 0 {
            return Err(SchedulerError::QuarantineMax(self.quarantine_max));
        }
        Ok(())
    }
}

/// Why a scheduler cannot be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SchedulerError {
    /// [`SchedulerConfig::timeout`] is under 1 ms.
    Timeout(Duration),
    /// [`SchedulerConfig::retries`] is over [`MAX_RETRIES`].
    Retries(u32),
    /// [`SchedulerConfig::backoff_base`] is under 1 ms.
    BackoffBase(Duration),
    /// [`SchedulerConfig::quarantine_after`] is 0.
    QuarantineAfter,
    /// [`SchedulerConfig::quarantine_max`] is under 1 ms.
    QuarantineMax(Duration),
    /// The bus has no devices.
    NoDevices,
    /// A device's poll interval is under 1 ms.
    Interval(DeviceId, Duration),
    /// A device is listed twice.
    DuplicateDevice(DeviceId),
}

impl fmt::Display for SchedulerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SchedulerError::Timeout(d) => write!(f, "timeout is {d:?}; it must be at least 1 ms"),
            SchedulerError::Retries(n) => {
                write!(f, "retries is {n}; at most {MAX_RETRIES} are allowed")
            }
            SchedulerError::BackoffBase(d) => {
                write!(f, "backoff_base is {d:?}; it must be at least 1 ms")
            }
            SchedulerError::QuarantineAfter => {
                write!(
                    f,
                    "quarantine_after is 0; it must be at least 1 failed poll"
                )
            }
            SchedulerError::QuarantineMax(d) => {
                write!(f, "quarantine_max is {d:?}; it must be at least 1 ms")
            }
            SchedulerError::NoDevices => write!(f, "the bus has no devices"),
            SchedulerError::Interval(device, d) => {
                write!(
                    f,
                    "{device} has a poll interval of {d:?}; it must be at least 1 ms"
                )
            }
            SchedulerError::DuplicateDevice(device) => {
                write!(f, "{device} is listed twice on the bus")
            }
        }
    }
}

impl std::error::Error for SchedulerError {}

/// Why a request is being sent; for logs and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PollKind {
    /// The device's regular poll.
    Scheduled,
    /// A retry of a failed request; `attempt` is 1 for the first retry.
    Retry {
        /// Which retry this is, from 1 to [`SchedulerConfig::retries`].
        attempt: u32,
    },
    /// The one request a quarantined device gets per backoff period.
    Probe,
}

/// What the caller should do now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Poll `device` now (its reads in turn, stopping at the first failure), and
    /// [`BusScheduler::report`] the outcome.
    Poll {
        /// The device to ask.
        device: DeviceId,
        /// Why.
        kind: PollKind,
    },
    /// Nothing is due before `until_ms`, which is always later than the `now_ms` asked about.
    Idle {
        /// When to ask again (earlier is harmless).
        until_ms: u64,
    },
    /// A request to `device` is still outstanding; report it before the bus takes another.
    Busy {
        /// The device whose answer is awaited.
        device: DeviceId,
    },
}

/// How a request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The device answered with data, `latency_ms` after the request was sent.
    Ok {
        /// Request to answer, in ms.
        latency_ms: u64,
    },
    /// No answer within [`SchedulerConfig::timeout`].
    Timeout,
    /// The device answered with a Modbus exception code.
    Exception(u8),
    /// Something came back that is not an answer to the request: bad CRC, wrong unit ID or
    /// function code, a frame too short or too long.
    Malformed,
}

/// Exception 0x0A: a Modbus gateway has no path to the unit.
pub const EXCEPTION_GATEWAY_PATH_UNAVAILABLE: u8 = 0x0A;
/// Exception 0x0B: the unit behind a Modbus gateway did not answer it.
pub const EXCEPTION_GATEWAY_TARGET_FAILED: u8 = 0x0B;

impl Outcome {
    /// Whether the outcome says the device did not answer: a timeout, garbage, or one of the
    /// gateway exceptions ([`EXCEPTION_GATEWAY_PATH_UNAVAILABLE`],
    /// [`EXCEPTION_GATEWAY_TARGET_FAILED`]), which is how a TCP-to-RTU gateway reports a dead
    /// unit behind it. Failures are retried and lead to quarantine. Any other exception is the
    /// device's own answer: it is alive, asking again gets the same answer, and exception 02
    /// is the read planner's business.
    pub const fn is_failure(&self) -> bool {
        match self {
            Outcome::Ok { .. } => false,
            Outcome::Timeout | Outcome::Malformed => true,
            Outcome::Exception(code) => {
                *code == EXCEPTION_GATEWAY_PATH_UNAVAILABLE
                    || *code == EXCEPTION_GATEWAY_TARGET_FAILED
            }
        }
    }
}

/// What [`BusScheduler::report`] decided about the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// The poll is over (answered, or failed without reaching quarantine); the next one is
    /// due at `next_ms`.
    Done {
        /// When the device's next regular poll is due.
        next_ms: u64,
    },
    /// The request failed and will be retried at `at_ms`.
    Retry {
        /// When the retry is due.
        at_ms: u64,
        /// Which retry it will be, from 1.
        attempt: u32,
    },
    /// The device is quarantined (newly, or still after a failed probe); it is probed next at
    /// `probe_ms`, `backoff_ms` from now.
    Quarantined {
        /// When the next probe is due.
        probe_ms: u64,
        /// The current backoff.
        backoff_ms: u64,
    },
}

/// Why a report was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReportError {
    /// No request to this device is outstanding: it was never granted, already reported, or
    /// the device is not on this bus.
    NotInFlight(DeviceId),
}

impl fmt::Display for ReportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReportError::NotInFlight(device) => {
                write!(f, "no request to {device} is outstanding on this bus")
            }
        }
    }
}

impl std::error::Error for ReportError {}

/// One device's counters, for metrics. Counters only grow; the others describe the latest
/// state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceStats {
    /// Polls granted, retries and probes included, however many reads each took.
    pub polls: u64,
    /// Polls answered with data.
    pub successes: u64,
    /// Polls that timed out.
    pub timeouts: u64,
    /// Polls answered with a Modbus exception (gateway exceptions included).
    pub exceptions: u64,
    /// Polls answered with garbage.
    pub malformed: u64,
    /// Retries granted (also counted in `polls`).
    pub retries: u64,
    /// Probes granted while quarantined (also counted in `polls`).
    pub probes: u64,
    /// Failed polls (retries and probes included) since the device last answered.
    pub consecutive_failures: u64,
    /// Whether the device is quarantined.
    pub quarantined: bool,
    /// Current wait between probes while quarantined, 0 otherwise.
    pub quarantine_backoff_ms: u64,
    /// When the device last answered (data or exception), if ever.
    pub last_seen_ms: Option<u64>,
    /// Latency of the last answer with data.
    pub last_latency_ms: Option<u64>,
    /// Longest latency of an answer with data.
    pub max_latency_ms: u64,
    /// Sum of the latencies of all answers with data; with `successes`, the mean.
    pub total_latency_ms: u64,
}

#[derive(Clone, Debug)]
struct Device {
    id: DeviceId,
    interval_ms: u64,
    /// Start of the device's poll grid: its regular polls fall on `phase_ms + k·interval_ms`.
    phase_ms: u64,
    /// What the next grant of this device will be.
    kind: PollKind,
    /// Failed attempts within the current poll.
    attempt: u32,
    /// Polls in a row that failed with their retries used up.
    failed_polls: u32,
    stats: DeviceStats,
}

/// The poll scheduler of one bus. See the [module documentation](self).
#[derive(Clone, Debug)]
pub struct BusScheduler {
    config: SchedulerConfig,
    devices: Vec<Device>,
    index: HashMap<DeviceId, usize>,
    /// Every device not in flight, by due time, then by when it was queued: the queue order
    /// breaks ties so that devices due together take turns.
    queue: BinaryHeap<Reverse<(u64, u64, usize)>>,
    sequence: u64,
    /// The device granted the bus, and since when.
    in_flight: Option<(usize, u64)>,
}

impl BusScheduler {
    /// A scheduler for `devices` (each with its poll interval), starting at `now_ms`.
    ///
    /// First polls are staggered in the order given: device `i` of `n` is first due at
    /// `now_ms + i·interval/n`.
    pub fn new(
        config: SchedulerConfig,
        devices: &[(DeviceId, Duration)],
        now_ms: u64,
    ) -> Result<BusScheduler, SchedulerError> {
        config.validate()?;
        if devices.is_empty() {
            return Err(SchedulerError::NoDevices);
        }
        let n = devices.len() as u64;
        let mut scheduler = BusScheduler {
            config,
            devices: Vec::with_capacity(devices.len()),
            index: HashMap::with_capacity(devices.len()),
            queue: BinaryHeap::with_capacity(devices.len()),
            sequence: 0,
            in_flight: None,
        };
        for (i, &(id, interval)) in devices.iter().enumerate() {
            let interval_ms = millis(interval);
            if interval_ms == 0 {
                return Err(SchedulerError::Interval(id, interval));
            }
            if scheduler.index.insert(id, i).is_some() {
                return Err(SchedulerError::DuplicateDevice(id));
            }
            // u128 because interval·i overflows u64 for absurd but valid intervals.
            let offset = (u128::from(interval_ms) * i as u128 / u128::from(n)) as u64;
            let phase_ms = now_ms.saturating_add(offset);
            scheduler.devices.push(Device {
                id,
                interval_ms,
                phase_ms,
                kind: PollKind::Scheduled,
                attempt: 0,
                failed_polls: 0,
                stats: DeviceStats::default(),
            });
            scheduler.enqueue(i, phase_ms);
        }
        Ok(scheduler)
    }

    /// The configuration the scheduler was built with.
    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// When the next poll is due, without granting it; `None` while a request is in flight.
    /// For a caller that shares the bus with other work ([`super::lend`]).
    pub fn due_ms(&self) -> Option<u64> {
        if self.in_flight.is_some() {
            return None;
        }
        self.queue.peek().map(|Reverse((due_ms, _, _))| *due_ms)
    }

    /// What to do at `now_ms`: send a request, wait, or wait for the outstanding one.
    ///
    /// A [`Next::Poll`] hands the bus to the device until its outcome is reported; until then
    /// every call answers [`Next::Busy`].
    pub fn next(&mut self, now_ms: u64) -> Next {
        if let Some((i, _)) = self.in_flight {
            return Next::Busy {
                device: self.devices[i].id,
            };
        }
        // `new` refuses an empty bus and every report requeues its device, so the queue is
        // only ever empty while a request is in flight.
        let Some(&Reverse((due_ms, _, i))) = self.queue.peek() else {
            unreachable!("a bus with no request in flight has every device queued")
        };
        if due_ms > now_ms {
            return Next::Idle { until_ms: due_ms };
        }
        self.queue.pop();
        self.in_flight = Some((i, now_ms));
        let device = &mut self.devices[i];
        device.stats.polls += 1;
        match device.kind {
            PollKind::Scheduled => {}
            PollKind::Retry { .. } => device.stats.retries += 1,
            PollKind::Probe => device.stats.probes += 1,
        }
        Next::Poll {
            device: device.id,
            kind: device.kind,
        }
    }

    /// Takes the outcome of the outstanding request to `device`, which ended at `now_ms`, and
    /// frees the bus.
    pub fn report(
        &mut self,
        device: DeviceId,
        outcome: Outcome,
        now_ms: u64,
    ) -> Result<Disposition, ReportError> {
        let i = match self.in_flight {
            Some((i, _)) if self.devices[i].id == device => i,
            _ => return Err(ReportError::NotInFlight(device)),
        };
        self.in_flight = None;
        let retries = self.config.retries;
        let backoff_base = millis(self.config.backoff_base);
        let quarantine_after = self.config.quarantine_after;
        let quarantine_max = millis(self.config.quarantine_max);

        let d = &mut self.devices[i];
        match outcome {
            Outcome::Ok { latency_ms } => {
                d.stats.successes += 1;
                d.stats.last_latency_ms = Some(latency_ms);
                d.stats.max_latency_ms = d.stats.max_latency_ms.max(latency_ms);
                d.stats.total_latency_ms = d.stats.total_latency_ms.saturating_add(latency_ms);
            }
            Outcome::Timeout => d.stats.timeouts += 1,
            Outcome::Exception(_) => d.stats.exceptions += 1,
            Outcome::Malformed => d.stats.malformed += 1,
        }

        let (due_ms, disposition) = if !outcome.is_failure() {
            d.stats.last_seen_ms = Some(now_ms);
            d.stats.consecutive_failures = 0;
            d.stats.quarantined = false;
            d.stats.quarantine_backoff_ms = 0;
            d.attempt = 0;
            d.failed_polls = 0;
            d.kind = PollKind::Scheduled;
            let next_ms = d.next_slot(now_ms);
            (next_ms, Disposition::Done { next_ms })
        } else {
            d.stats.consecutive_failures += 1;
            if d.stats.quarantined {
                // A probe that failed: never poll a device more often than its interval, even
                // when the cap is shorter.
                let cap = quarantine_max.max(d.interval_ms);
                let backoff_ms = d.stats.quarantine_backoff_ms.saturating_mul(2).min(cap);
                d.stats.quarantine_backoff_ms = backoff_ms;
                let probe_ms = now_ms.saturating_add(backoff_ms);
                (
                    probe_ms,
                    Disposition::Quarantined {
                        probe_ms,
                        backoff_ms,
                    },
                )
            } else if d.attempt < retries {
                d.attempt += 1;
                let wait = backoff_base.saturating_mul(1u64 << (d.attempt - 1));
                let at_ms = now_ms.saturating_add(wait);
                d.kind = PollKind::Retry { attempt: d.attempt };
                (
                    at_ms,
                    Disposition::Retry {
                        at_ms,
                        attempt: d.attempt,
                    },
                )
            } else {
                d.attempt = 0;
                d.failed_polls += 1;
                if d.failed_polls >= quarantine_after {
                    let backoff_ms = d.interval_ms;
                    d.stats.quarantined = true;
                    d.stats.quarantine_backoff_ms = backoff_ms;
                    d.kind = PollKind::Probe;
                    let probe_ms = now_ms.saturating_add(backoff_ms);
                    (
                        probe_ms,
                        Disposition::Quarantined {
                            probe_ms,
                            backoff_ms,
                        },
                    )
                } else {
                    d.kind = PollKind::Scheduled;
                    let next_ms = d.next_slot(now_ms);
                    (next_ms, Disposition::Done { next_ms })
                }
            }
        };
        self.enqueue(i, due_ms);
        Ok(disposition)
    }

    /// The outstanding request, if any: the device and when it was granted the bus.
    pub fn in_flight(&self) -> Option<(DeviceId, u64)> {
        self.in_flight.map(|(i, since)| (self.devices[i].id, since))
    }

    /// One device's statistics; `None` if it is not on this bus.
    pub fn stats(&self, device: DeviceId) -> Option<&DeviceStats> {
        self.index.get(&device).map(|&i| &self.devices[i].stats)
    }

    /// Every device on the bus with its statistics, in the order given to [`Self::new`].
    pub fn devices(&self) -> impl ExactSizeIterator<Item = (DeviceId, &DeviceStats)> + '_ {
        self.devices.iter().map(|d| (d.id, &d.stats))
    }

    fn enqueue(&mut self, i: usize, due_ms: u64) {
        self.queue.push(Reverse((due_ms, self.sequence, i)));
        self.sequence += 1;
    }
}

impl Device {
    /// The first slot of the device's grid after `now_ms`. Slots missed while the bus was
    /// busy are skipped rather than caught up, so a late device does not burst.
    fn next_slot(&self, now_ms: u64) -> u64 {
        if now_ms < self.phase_ms {
            return self.phase_ms;
        }
        let slots = (now_ms - self.phase_ms) / self.interval_ms + 1;
        self.phase_ms
            .saturating_add(slots.saturating_mul(self.interval_ms))
    }
}

/// A duration in whole milliseconds, saturating at `u64::MAX`.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
