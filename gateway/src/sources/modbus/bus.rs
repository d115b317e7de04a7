//! The task that runs one bus: its polls, and on a serial bus the firmware transfer requests
//! it carries between them ([`super::lend`]).

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use tianzhong_protocol::payload::{NodeStatus, PAYLOAD_VERSION};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use super::device::{Block, PolledDevice, Reads};
use super::lend::{self, Lent, Turn};
use super::link::{BusLink, ReadResult};
use super::plan::{PlanConfig, SplitOutcome};
use super::scheduler::{BusScheduler, DeviceId, Disposition, Next, SchedulerConfig};
use crate::config::{Bus, Config};
use crate::metrics::Metrics;
use crate::pipeline::{Event, EventSender, StatusEvent, unix_ms};

/// One bus, ready to run.
pub struct BusTask {
    bus: Bus,
    scheduler: BusScheduler,
    devices: Vec<PolledDevice>,
    link: BusLink,
    events: EventSender,
    metrics: Arc<Metrics>,
    /// Requests of firmware transfers to carry between polls, on a serial bus.
    lent: Option<mpsc::Receiver<Lent>>,
}

/// What woke a bus task waiting for its next poll.
enum Woken {
    Time,
    Lent(Lent),
    /// Every lent line is gone: nothing will be lent any more.
    Closed,
}

/// Why a bus could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The bus has no devices.
    #[error("bus {0}: no devices")]
    NoDevices(String),
    /// The scheduler refused the settings.
    #[error("bus {bus}: {message}")]
    Settings {
        /// Bus.
        bus: String,
        /// Why.
        message: String,
    },
}

impl BusTask {
    /// The task of `bus`, polling the configuration's devices on it.
    pub fn new(
        config: &Config,
        bus: &Bus,
        events: EventSender,
        metrics: Arc<Metrics>,
    ) -> Result<BusTask, BusError> {
        let plan = PlanConfig {
            max_gap: bus.max_gap,
            ..PlanConfig::default()
        };
        let mut devices = Vec::new();
        for (index, d) in config.devices.iter().enumerate() {
            if d.bus == bus.name {
                devices.push(PolledDevice::new(index, d, plan).map_err(|e| {
                    BusError::Settings {
                        bus: bus.name.clone(),
                        message: format!("device {}: {e}", d.id),
                    }
                })?);
            }
        }
        if devices.is_empty() {
            return Err(BusError::NoDevices(bus.name.clone()));
        }
        let scheduler_config = SchedulerConfig {
            timeout: bus.timeout,
            retries: bus.retries,
            ..SchedulerConfig::default()
        };
        let schedule: Vec<(DeviceId, Duration)> = devices
            .iter()
            .enumerate()
            .map(|(i, d)| (DeviceId(i as u32), d.interval))
            .collect();
        let scheduler =
            BusScheduler::new(scheduler_config, &schedule, 0).map_err(|e| BusError::Settings {
                bus: bus.name.clone(),
                message: e.to_string(),
            })?;
        Ok(BusTask {
            link: BusLink::new(bus.link.clone(), bus.timeout),
            bus: bus.clone(),
            scheduler,
            devices,
            events,
            metrics,
            lent: None,
        })
    }

    /// The task, carrying the requests that come through `lent` between its polls.
    pub fn lend(mut self, lent: mpsc::Receiver<Lent>) -> BusTask {
        self.lent = Some(lent);
        self
    }

    /// Polls until `shutdown` turns true or the pipeline hangs up.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let epoch = Instant::now();
        info!(
            bus = %self.bus.name,
            endpoint = %self.link.endpoint(),
            devices = self.devices.len(),
            lends = self.lent.is_some(),
            "polling"
        );
        // A lent request taken off the channel, and since when it waits for the line.
        let mut waiting: Option<(Lent, u64)> = None;
        loop {
            if *shutdown.borrow() {
                break;
            }
            let now_ms = epoch.elapsed().as_millis() as u64;
            if waiting.is_none()
                && let Some(rx) = &mut self.lent
                && let Ok(l) = rx.try_recv()
            {
                waiting = Some((l, now_ms));
            }
            let due_ms = self
                .scheduler
                .due_ms()
                .expect("every poll is reported before the next");
            let next = match lend::turn(now_ms, due_ms, waiting.as_ref().map(|w| w.1)) {
                Turn::Lend => {
                    let (l, since) = waiting.take().expect("a request waits");
                    self.carry(l, now_ms.saturating_sub(since)).await;
                    continue;
                }
                Turn::Wait { until_ms } => Next::Idle { until_ms },
                Turn::Poll => self.scheduler.next(now_ms),
            };
            match next {
                Next::Idle { until_ms } => {
                    let at = epoch + Duration::from_millis(until_ms);
                    let lent = self.lent.as_mut().filter(|_| waiting.is_none());
                    let woken = tokio::select! {
                        _ = tokio::time::sleep_until(at.into()) => Woken::Time,
                        l = async {
                            match lent {
                                Some(rx) => rx.recv().await,
                                None => std::future::pending().await,
                            }
                        } => l.map_or(Woken::Closed, Woken::Lent),
                        _ = shutdown.changed() => Woken::Time,
                    };
                    match woken {
                        Woken::Time => {}
                        Woken::Lent(l) => {
                            waiting = Some((l, epoch.elapsed().as_millis() as u64));
                        }
                        Woken::Closed => self.lent = None,
                    }
                }
                Next::Busy { .. } => unreachable!("every poll is reported before the next"),
                Next::Poll { device, kind } => {
                    let started = Instant::now();
                    let (result, blocks) = self.poll(device.0 as usize).await;
                    let latency = started.elapsed();
                    let done_ms = epoch.elapsed().as_millis() as u64;
                    let outcome = result.outcome(latency);
                    let disposition = self
                        .scheduler
                        .report(device, outcome, done_ms)
                        .expect("the device polled is the one in flight");
                    debug!(bus = %self.bus.name, ?kind, ?outcome, "poll");
                    if !self
                        .finish(device.0 as usize, result, blocks, latency, disposition)
                        .await
                    {
                        break;
                    }
                }
            }
        }
        info!(bus = %self.bus.name, "stopped");
    }

    /// Carries one lent request, which waited `waited_ms` for the line, and answers it.
    async fn carry(&mut self, lent: Lent, waited_ms: u64) {
        let bus = &self.bus.name;
        match lent {
            Lent::File { request, done } => {
                let started = Instant::now();
                let result = self.link.file_request(&request).await;
                let label = lend::result_label(&result);
                self.metrics
                    .lent_requests
                    .get_or_create(&crate::metrics::BusResultLabels {
                        bus: bus.clone(),
                        result: label.into(),
                    })
                    .inc();
                match &result {
                    Ok(_) => debug!(
                        %bus, unit = request.unit(), waited_ms,
                        took_ms = started.elapsed().as_millis() as u64, "lent: {request}"
                    ),
                    Err(e) => warn!(
                        %bus, unit = request.unit(), waited_ms, endpoint = %self.link.endpoint(),
                        "lent: {request}: {e}"
                    ),
                }
                // The transfer may have given up (campaign stopped): nobody to answer.
                let _ = done.send(result);
            }
            Lent::Read {
                unit,
                request,
                done,
            } => {
                let result = self.link.read(unit, &request).await;
                if !matches!(result, ReadResult::Data(_)) {
                    debug!(%bus, unit, waited_ms, "lent read of {request}: {result:?}");
                }
                let _ = done.send(result);
            }
        }
    }

    /// Reads every request of one poll, stopping at the first that fails.
    async fn poll(&mut self, i: usize) -> (ReadResult, Vec<Block>) {
        let requests = self.devices[i].requests();
        let unit = self.devices[i].unit;
        let mut blocks = Vec::with_capacity(requests.len());
        for request in requests {
            match self.link.read(unit, &request).await {
                ReadResult::Data(registers) => blocks.push(Block { request, registers }),
                // "Illegal data address" from a planned device: the read spans registers the
                // device does not have; the plan splits it and the device is alive.
                ReadResult::Exception(0x02) if matches!(self.devices[i].reads, Reads::Plan(_)) => {
                    let d = &mut self.devices[i];
                    self.metrics.devices.rows[d.index]
                        .counters
                        .splits
                        .fetch_add(1, Relaxed);
                    if let Reads::Plan(plan) = &mut d.reads {
                        match plan.on_illegal_address(&request) {
                            SplitOutcome::Split(a, b) => info!(
                                bus = %self.bus.name, unit, device = %d.id,
                                "illegal data address for {request}: split into {a} and {b}"
                            ),
                            SplitOutcome::Unreadable(channels) => warn!(
                                bus = %self.bus.name, unit, device = %d.id,
                                "illegal data address for {request}: channels {channels:?} cannot be read"
                            ),
                            SplitOutcome::NotInPlan => {}
                        }
                    }
                }
                other => {
                    self.log_failure(i, &request, &other);
                    return (other, blocks);
                }
            }
        }
        (ReadResult::Data(Vec::new()), blocks)
    }

    fn log_failure(&self, i: usize, request: &super::plan::ReadRequest, result: &ReadResult) {
        let d = &self.devices[i];
        let (bus, device, unit) = (&self.bus.name, &d.id, d.unit);
        match result {
            ReadResult::Timeout => {
                debug!(%bus, unit, %device, "no answer to {request} within {:?}", self.bus.timeout)
            }
            ReadResult::Exception(code) => {
                debug!(%bus, unit, %device, "exception {code:02X} to {request}")
            }
            ReadResult::Malformed(why) => {
                warn!(%bus, unit, %device, "malformed answer to {request}: {why}")
            }
            ReadResult::LinkError(why) => {
                debug!(%bus, unit, %device, endpoint = %self.link.endpoint(), "link error on {request}: {why}")
            }
            ReadResult::Data(_) => {}
        }
    }

    /// Counts the poll, decodes and forwards its readings, and notes a device coming or
    /// going. False when the pipeline has hung up.
    async fn finish(
        &mut self,
        i: usize,
        result: ReadResult,
        blocks: Vec<Block>,
        latency: Duration,
        disposition: Disposition,
    ) -> bool {
        let now = unix_ms();
        let row = &self.metrics.devices.rows[self.devices[i].index].counters;
        let answered = match &result {
            ReadResult::Data(_) => {
                row.answered(latency, now);
                true
            }
            ReadResult::Exception(_) => {
                row.exceptions.fetch_add(1, Relaxed);
                row.last_seen_ms.store(now, Relaxed);
                true
            }
            ReadResult::Timeout => {
                row.timeouts.fetch_add(1, Relaxed);
                false
            }
            ReadResult::Malformed(_) => {
                row.malformed.fetch_add(1, Relaxed);
                self.metrics.malformed("modbus", "answer");
                false
            }
            ReadResult::LinkError(_) => {
                row.errors.fetch_add(1, Relaxed);
                false
            }
        };
        let quarantined = matches!(disposition, Disposition::Quarantined { .. });
        row.quarantined.store(u64::from(quarantined), Relaxed);

        let mut status = None;
        let d = &mut self.devices[i];
        if answered && d.online != Some(true) {
            if d.online == Some(false) {
                info!(bus = %self.bus.name, unit = d.unit, device = %d.id, "answering again");
            }
            d.online = Some(true);
            status = Some(true);
        } else if quarantined && d.online != Some(false) {
            warn!(
                bus = %self.bus.name, unit = d.unit, device = %d.id,
                "not answering: quarantined, probed with growing backoff so the bus keeps its pace"
            );
            d.online = Some(false);
            status = Some(false);
        }
        if let Some(online) = status {
            let event = Event::Status(StatusEvent {
                site: d.site.clone(),
                node: d.id.clone(),
                status: NodeStatus {
                    v: PAYLOAD_VERSION,
                    online,
                    ts: Some(now),
                    ..NodeStatus::last_will()
                },
            });
            if self.events.send(event).await.is_err() {
                return false;
            }
        }

        if matches!(result, ReadResult::Data(_)) && !blocks.is_empty() {
            let decoded = d.decode(&blocks, now);
            row.alarm_level.store(u64::from(d.alarm.code()), Relaxed);
            for e in &decoded.errors {
                self.metrics.malformed("modbus", "decode");
                warn!(bus = %self.bus.name, unit = d.unit, device = %d.id, "{e}");
            }
            if !decoded.records.is_empty()
                && self
                    .events
                    .send(Event::Readings(decoded.records))
                    .await
                    .is_err()
            {
                return false;
            }
        }
        true
    }
}
