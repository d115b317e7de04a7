//! The per-bus poll scheduler on a simulated bus in simulated time: a dead device among live
//! ones, staggering, retries and quarantine, recovery, a saturated bus, and random buses.
//!
//! The simulated bus holds one request at a time: a request occupies it for the device's
//! answer time, or for the whole timeout when the device is silent, and the scheduler is only
//! asked again once the outcome is reported, as the gateway's bus task will do.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use proptest::prelude::*;
use tianzhong_gateway::sources::modbus::scheduler::{
    BusScheduler, DeviceId, Disposition, EXCEPTION_GATEWAY_TARGET_FAILED, Next, Outcome, PollKind,
    ReportError, SchedulerConfig, SchedulerError,
};

const TIMEOUT_MS: u64 = 1000;
/// A read of a few dozen registers at 9600 baud, turnaround and t3.5 silence included.
const GOOD_LATENCY_MS: u64 = 20;
const SECOND: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Event {
    /// When the request was sent.
    at: u64,
    device: DeviceId,
    kind: PollKind,
    outcome: Outcome,
}

/// Runs the bus from `start` until `end_ms`; `device` answers each request with how long it
/// holds the bus and the outcome. Returns every request, in order.
fn simulate(
    bus: &mut BusScheduler,
    start: u64,
    end_ms: u64,
    mut device: impl FnMut(DeviceId, PollKind, u64) -> (u64, Outcome),
) -> Vec<Event> {
    let mut now = start;
    let mut events = Vec::new();
    while now < end_ms {
        match bus.next(now) {
            Next::Poll { device: id, kind } => {
                let (busy, outcome) = device(id, kind, now);
                events.push(Event {
                    at: now,
                    device: id,
                    kind,
                    outcome,
                });
                now += busy;
                bus.report(id, outcome, now).expect("the polled device");
            }
            Next::Idle { until_ms } => now = until_ms,
            Next::Busy { device } => panic!("{device} still in flight after its report"),
        }
    }
    events
}

fn good() -> (u64, Outcome) {
    (
        GOOD_LATENCY_MS,
        Outcome::Ok {
            latency_ms: GOOD_LATENCY_MS,
        },
    )
}

fn dead() -> (u64, Outcome) {
    (TIMEOUT_MS, Outcome::Timeout)
}

fn ten_devices(interval: Duration) -> Vec<(DeviceId, Duration)> {
    (1..=10).map(|n| (DeviceId(n), interval)).collect()
}

/// Requests answered with data, per device.
fn answers(events: &[Event]) -> HashMap<DeviceId, u64> {
    let mut answered = HashMap::new();
    for e in events {
        if matches!(e.outcome, Outcome::Ok { .. }) {
            *answered.entry(e.device).or_insert(0) += 1;
        }
    }
    answered
}

#[test]
fn a_dead_device_costs_its_nine_neighbours_under_ten_percent_of_their_poll_rate() {
    const HOUR_MS: u64 = 3_600_000;
    let devices = ten_devices(SECOND);
    let neighbours: Vec<DeviceId> = (2..=10).map(DeviceId).collect();
    let rate = |events: &[Event]| {
        let answered = answers(events);
        let total: u64 = neighbours.iter().map(|d| answered[d]).sum();
        total as f64 / neighbours.len() as f64 / (HOUR_MS as f64 / 1000.0)
    };

    let mut healthy = BusScheduler::new(SchedulerConfig::default(), &devices, 0).unwrap();
    let all_good = simulate(&mut healthy, 0, HOUR_MS, |_, _, _| good());

    let mut with_dead = BusScheduler::new(SchedulerConfig::default(), &devices, 0).unwrap();
    let one_dead = simulate(&mut with_dead, 0, HOUR_MS, |d, _, _| {
        if d == DeviceId(1) { dead() } else { good() }
    });

    let (rate_healthy, rate_dead) = (rate(&all_good), rate(&one_dead));
    let dead_stats = with_dead.stats(DeviceId(1)).unwrap();
    let dead_bus_ms = dead_stats.polls * TIMEOUT_MS;
    println!(
        "neighbours' poll rate over a simulated hour: {rate_healthy:.4}/s with no dead device, \
         {rate_dead:.4}/s with device 1 dead ({:.2} % lower); the dead device was asked {} \
         times ({} probes), {} s of bus time",
        100.0 * (1.0 - rate_dead / rate_healthy),
        dead_stats.polls,
        dead_stats.probes,
        dead_bus_ms / 1000,
    );
    // With no dead device every neighbour gets its full second-by-second rate.
    assert!((rate_healthy - 1.0).abs() < 0.001, "{rate_healthy}");
    assert!(
        rate_dead >= 0.9 * rate_healthy,
        "{rate_dead} against {rate_healthy}"
    );
    assert!(dead_stats.quarantined);
    assert_eq!(dead_stats.successes, 0);
    assert_eq!(dead_stats.quarantine_backoff_ms, 300_000);
    // Without quarantine the dead device would take two timeouts a second, more than the
    // whole bus; with it, it takes a minute or so of the hour.
    assert!(dead_bus_ms < 60_000, "{dead_bus_ms} ms");
}

#[test]
fn first_polls_are_spread_over_the_interval() {
    let mut bus =
        BusScheduler::new(SchedulerConfig::default(), &ten_devices(SECOND), 5_000).unwrap();
    let events = simulate(&mut bus, 5_000, 6_000, |_, _, _| good());
    let firsts: Vec<(u64, u32)> = events.iter().map(|e| (e.at, e.device.0)).collect();
    assert_eq!(
        firsts,
        (0..10)
            .map(|i| (5_000 + 100 * i, i as u32 + 1))
            .collect::<Vec<_>>()
    );

    // Each device's grid keeps its phase: the bus sees one request every 100 ms, never a
    // burst of ten.
    let mut bus = BusScheduler::new(SchedulerConfig::default(), &ten_devices(SECOND), 0).unwrap();
    let events = simulate(&mut bus, 0, 60_000, |_, _, _| good());
    assert_eq!(events.len(), 600);
    assert!(events.windows(2).all(|w| w[1].at - w[0].at == 100));

    // Devices with different intervals each start within their own interval.
    let devices = [
        (DeviceId(7), Duration::from_secs(4)),
        (DeviceId(8), Duration::from_secs(60)),
        (DeviceId(9), Duration::from_millis(400)),
        (DeviceId(3), Duration::from_secs(2)),
    ];
    let mut bus = BusScheduler::new(SchedulerConfig::default(), &devices, 0).unwrap();
    let events = simulate(&mut bus, 0, 60_000, |_, _, _| good());
    let first = |d: u32| {
        events
            .iter()
            .find(|e| e.device == DeviceId(d))
            .map(|e| e.at)
    };
    assert_eq!(
        [first(7), first(8), first(9), first(3)],
        [Some(0), Some(15_000), Some(200), Some(1_500)]
    );
}

fn quarantine_config() -> SchedulerConfig {
    SchedulerConfig {
        timeout: Duration::from_millis(TIMEOUT_MS),
        retries: 1,
        backoff_base: Duration::from_millis(100),
        quarantine_after: 2,
        quarantine_max: Duration::from_secs(10),
    }
}

#[test]
fn a_failing_device_is_retried_then_quarantined_with_doubling_backoff_up_to_the_cap() {
    let mut bus = BusScheduler::new(quarantine_config(), &[(DeviceId(1), SECOND)], 0).unwrap();
    let events = simulate(&mut bus, 0, 60_000, |_, _, _| dead());
    let requests: Vec<(u64, PollKind)> = events.iter().map(|e| (e.at, e.kind)).collect();
    let retry = PollKind::Retry { attempt: 1 };
    assert_eq!(
        requests,
        [
            // First poll fails at 1000, retried 100 ms later, fails at 2100; the next poll
            // takes the next slot of the device's grid rather than the missed one.
            (0, PollKind::Scheduled),
            (1_100, retry),
            (3_000, PollKind::Scheduled),
            (4_100, retry),
            // Second failed poll: quarantined, probed one interval after, then 2, 4 and 8 s
            // after each failed probe, then at the 10 s cap.
            (6_100, PollKind::Probe),
            (9_100, PollKind::Probe),
            (14_100, PollKind::Probe),
            (23_100, PollKind::Probe),
            (34_100, PollKind::Probe),
            (45_100, PollKind::Probe),
            (56_100, PollKind::Probe),
        ]
    );
    let stats = bus.stats(DeviceId(1)).unwrap();
    assert!(stats.quarantined);
    assert_eq!(stats.quarantine_backoff_ms, 10_000);
    assert_eq!(stats.consecutive_failures, 11);
    assert_eq!((stats.polls, stats.timeouts), (11, 11));
    assert_eq!((stats.retries, stats.probes), (2, 7));
    assert_eq!(stats.last_seen_ms, None);
}

#[test]
fn report_says_what_happens_next() {
    let mut bus = BusScheduler::new(quarantine_config(), &[(DeviceId(4), SECOND)], 0).unwrap();
    let mut step = |now: u64, outcome: Outcome, done: u64| {
        assert!(matches!(bus.next(now), Next::Poll { device, .. } if device == DeviceId(4)));
        bus.report(DeviceId(4), outcome, done).unwrap()
    };
    assert_eq!(
        step(0, Outcome::Timeout, 1_000),
        Disposition::Retry {
            at_ms: 1_100,
            attempt: 1
        }
    );
    assert_eq!(
        step(1_100, Outcome::Malformed, 1_150),
        Disposition::Done { next_ms: 2_000 }
    );
    assert_eq!(
        step(
            2_000,
            Outcome::Exception(EXCEPTION_GATEWAY_TARGET_FAILED),
            2_010
        ),
        Disposition::Retry {
            at_ms: 2_110,
            attempt: 1
        }
    );
    assert_eq!(
        step(2_110, Outcome::Timeout, 3_110),
        Disposition::Quarantined {
            probe_ms: 4_110,
            backoff_ms: 1_000
        }
    );
    let stats = *bus.stats(DeviceId(4)).unwrap();
    assert_eq!(
        (stats.timeouts, stats.malformed, stats.exceptions),
        (2, 1, 1)
    );
}

#[test]
fn the_first_answer_ends_quarantine_at_once() {
    let mut bus = BusScheduler::new(quarantine_config(), &[(DeviceId(1), SECOND)], 0).unwrap();
    // Dead for the first minute, as above; the probe at 56 100 is the first to be answered.
    let revive_at = 56_000;
    let events = simulate(&mut bus, 0, 70_000, |_, _, now| {
        if now < revive_at { dead() } else { good() }
    });
    let after: Vec<(u64, PollKind)> = events
        .iter()
        .filter(|e| e.at >= revive_at)
        .map(|e| (e.at, e.kind))
        .take(3)
        .collect();
    assert_eq!(
        after,
        [
            (56_100, PollKind::Probe),
            (57_000, PollKind::Scheduled),
            (58_000, PollKind::Scheduled),
        ]
    );
    let stats = bus.stats(DeviceId(1)).unwrap();
    assert!(!stats.quarantined);
    assert_eq!(stats.quarantine_backoff_ms, 0);
    assert_eq!(stats.consecutive_failures, 0);
    assert_eq!(stats.last_latency_ms, Some(GOOD_LATENCY_MS));
    assert_eq!(stats.successes, 14);

    // Back to normal means a new failure is retried, not probed after a backoff.
    assert!(matches!(bus.next(70_000), Next::Poll { .. }));
    assert_eq!(
        bus.report(DeviceId(1), Outcome::Timeout, 71_000),
        Ok(Disposition::Retry {
            at_ms: 71_100,
            attempt: 1
        })
    );
}

#[test]
fn an_exception_is_an_answer_not_a_failure() {
    let mut bus = BusScheduler::new(quarantine_config(), &[(DeviceId(1), SECOND)], 0).unwrap();
    // Exception 02 (illegal data address) on every request for a minute: the device is
    // alive, so it is neither retried nor quarantined; the read planner deals with the 02.
    let events = simulate(&mut bus, 0, 60_000, |_, _, _| {
        (15, Outcome::Exception(0x02))
    });
    assert_eq!(events.len(), 60);
    assert!(events.iter().all(|e| e.kind == PollKind::Scheduled));
    let stats = bus.stats(DeviceId(1)).unwrap();
    assert_eq!((stats.exceptions, stats.consecutive_failures), (60, 0));
    assert!(!stats.quarantined);
    assert_eq!(stats.last_seen_ms, Some(59_015));
    assert!(!Outcome::Exception(0x02).is_failure());
    assert!(Outcome::Exception(EXCEPTION_GATEWAY_TARGET_FAILED).is_failure());
}

#[test]
fn a_saturated_bus_slows_every_device_alike() {
    // Ten devices every second, each holding the bus 150 ms: 1.5 s of work per second.
    let mut bus = BusScheduler::new(SchedulerConfig::default(), &ten_devices(SECOND), 0).unwrap();
    let events = simulate(&mut bus, 0, 600_000, |_, _, _| {
        (150, Outcome::Ok { latency_ms: 150 })
    });
    let answered = answers(&events);
    let counts: Vec<u64> = (1..=10).map(|n| answered[&DeviceId(n)]).collect();
    let (least, most) = (*counts.iter().min().unwrap(), *counts.iter().max().unwrap());
    // The bus is busy the whole time: 4 000 requests of 150 ms in 600 s.
    assert_eq!(events.len(), 4_000, "{counts:?}");
    assert!(most - least <= 1, "{counts:?}");

    // Twenty devices every 100 ms at 50 ms each (ten times what the bus can do) beside one
    // device every 10 s: the slow device still gets essentially every poll, the fast ones
    // share the rest in turn.
    let mut devices: Vec<(DeviceId, Duration)> = (1..=20)
        .map(|n| (DeviceId(n), Duration::from_millis(100)))
        .collect();
    devices.push((DeviceId(99), Duration::from_secs(10)));
    let mut bus = BusScheduler::new(SchedulerConfig::default(), &devices, 0).unwrap();
    let events = simulate(&mut bus, 0, 600_000, |_, _, _| {
        (50, Outcome::Ok { latency_ms: 50 })
    });
    let answered = answers(&events);
    assert!(answered[&DeviceId(99)] >= 59, "{answered:?}");
    let fast: Vec<u64> = (1..=20).map(|n| answered[&DeviceId(n)]).collect();
    let (least, most) = (*fast.iter().min().unwrap(), *fast.iter().max().unwrap());
    assert!(least >= 500 && most - least <= 1, "{fast:?}");
}

#[test]
fn the_bus_takes_one_request_at_a_time() {
    let devices = [(DeviceId(1), SECOND), (DeviceId(2), SECOND)];
    let mut bus = BusScheduler::new(SchedulerConfig::default(), &devices, 0).unwrap();
    assert_eq!(
        bus.next(0),
        Next::Poll {
            device: DeviceId(1),
            kind: PollKind::Scheduled
        }
    );
    // Device 2 falls due while device 1's request is outstanding; it waits.
    assert_eq!(
        bus.next(900),
        Next::Busy {
            device: DeviceId(1)
        }
    );
    assert_eq!(bus.in_flight(), Some((DeviceId(1), 0)));
    assert_eq!(
        bus.report(DeviceId(2), Outcome::Timeout, 1_000),
        Err(ReportError::NotInFlight(DeviceId(2)))
    );
    assert_eq!(
        bus.report(DeviceId(1), Outcome::Ok { latency_ms: 900 }, 900),
        Ok(Disposition::Done { next_ms: 1_000 })
    );
    assert_eq!(bus.in_flight(), None);
    assert_eq!(
        bus.report(DeviceId(1), Outcome::Ok { latency_ms: 900 }, 900),
        Err(ReportError::NotInFlight(DeviceId(1)))
    );
    assert!(matches!(bus.next(900), Next::Poll { device, .. } if device == DeviceId(2)));
    let stats = bus.stats(DeviceId(1)).unwrap();
    assert_eq!((stats.polls, stats.successes), (1, 1));
    assert_eq!(bus.stats(DeviceId(3)), None);
}

#[test]
fn bad_configurations_are_refused() {
    let ok = SchedulerConfig::default();
    assert_eq!(ok.validate(), Ok(()));
    let cases = [
        (
            SchedulerConfig {
                timeout: Duration::from_micros(500),
                ..ok
            },
            SchedulerError::Timeout(Duration::from_micros(500)),
        ),
        (
            SchedulerConfig { retries: 9, ..ok },
            SchedulerError::Retries(9),
        ),
        (
            SchedulerConfig {
                backoff_base: Duration::ZERO,
                ..ok
            },
            SchedulerError::BackoffBase(Duration::ZERO),
        ),
        (
            SchedulerConfig {
                quarantine_after: 0,
                ..ok
            },
            SchedulerError::QuarantineAfter,
        ),
        (
            SchedulerConfig {
                quarantine_max: Duration::ZERO,
                ..ok
            },
            SchedulerError::QuarantineMax(Duration::ZERO),
        ),
    ];
    for (config, error) in cases {
        assert_eq!(config.validate(), Err(error));
        assert_eq!(
            BusScheduler::new(config, &[(DeviceId(1), SECOND)], 0).unwrap_err(),
            error
        );
        assert!(!error.to_string().is_empty());
    }
    let new = |devices: &[(DeviceId, Duration)]| BusScheduler::new(ok, devices, 0).unwrap_err();
    assert_eq!(new(&[]), SchedulerError::NoDevices);
    assert_eq!(
        new(&[(DeviceId(1), SECOND), (DeviceId(1), SECOND)]),
        SchedulerError::DuplicateDevice(DeviceId(1))
    );
    assert_eq!(
        new(&[(DeviceId(2), Duration::ZERO)]),
        SchedulerError::Interval(DeviceId(2), Duration::ZERO)
    );
    assert_eq!(
        SchedulerError::DuplicateDevice(DeviceId(1)).to_string(),
        "device 1 is listed twice on the bus"
    );
}

#[test]
fn a_cap_shorter_than_the_interval_never_probes_faster_than_the_interval() {
    let config = SchedulerConfig {
        quarantine_max: Duration::from_secs(60),
        ..quarantine_config()
    };
    let interval = Duration::from_secs(600);
    let mut bus = BusScheduler::new(config, &[(DeviceId(1), interval)], 0).unwrap();
    let events = simulate(&mut bus, 0, 6 * 3_600_000, |_, _, _| dead());
    let probes: Vec<u64> = events
        .iter()
        .filter(|e| e.kind == PollKind::Probe)
        .map(|e| e.at)
        .collect();
    assert!(probes.len() > 10);
    assert!(
        probes
            .windows(2)
            .all(|w| w[1] - w[0] == 600_000 + TIMEOUT_MS)
    );
    assert_eq!(
        bus.stats(DeviceId(1)).unwrap().quarantine_backoff_ms,
        600_000
    );
}

/// One simulated answer: which outcome, how long the bus is held, an exception code.
fn answer() -> impl Strategy<Value = (u64, Outcome)> {
    prop_oneof![
        (0u64..300).prop_map(|l| (l, Outcome::Ok { latency_ms: l })),
        (1u64..2_000).prop_map(|t| (t, Outcome::Timeout)),
        (0u64..300, any::<u8>()).prop_map(|(l, c)| (l, Outcome::Exception(c))),
        (0u64..300).prop_map(|l| (l, Outcome::Malformed)),
    ]
}

proptest! {
    #[test]
    fn random_buses_keep_the_scheduler_honest(
        ids in prop::collection::hash_set(0u32..1_000, 1..12),
        intervals in prop::collection::vec(1u64..5_000, 12),
        retries in 0u32..=3,
        backoff_ms in 1u64..500,
        quarantine_after in 1u32..4,
        quarantine_max_ms in 1u64..20_000,
        answers in prop::collection::vec(answer(), 1..400),
        start in 0u64..1_000_000_000,
    ) {
        let config = SchedulerConfig {
            timeout: Duration::from_secs(2),
            retries,
            backoff_base: Duration::from_millis(backoff_ms),
            quarantine_after,
            quarantine_max: Duration::from_millis(quarantine_max_ms),
        };
        let devices: Vec<(DeviceId, Duration)> = ids
            .iter()
            .zip(&intervals)
            .map(|(&id, &ms)| (DeviceId(id), Duration::from_millis(ms)))
            .collect();
        let interval: HashMap<DeviceId, u64> =
            devices.iter().map(|&(d, i)| (d, i.as_millis() as u64)).collect();
        let known: HashSet<DeviceId> = ids.iter().copied().map(DeviceId).collect();
        let mut bus = BusScheduler::new(config, &devices, start).unwrap();
        // When each device may next be asked, from what `report` said.
        let mut not_before: HashMap<DeviceId, u64> = HashMap::new();
        let mut now = start;
        let mut answers = answers.into_iter();
        loop {
            match bus.next(now) {
                Next::Poll { device, kind } => {
                    prop_assert!(known.contains(&device), "unknown {device}");
                    prop_assert!(now >= not_before.get(&device).copied().unwrap_or(start));
                    // Nothing else gets the bus, and nobody else may report, until this
                    // request is reported.
                    prop_assert_eq!(bus.next(now + 1), Next::Busy { device });
                    for &other in known.iter().filter(|&&d| d != device) {
                        prop_assert_eq!(
                            bus.report(other, Outcome::Timeout, now),
                            Err(ReportError::NotInFlight(other))
                        );
                    }
                    let Some((busy, outcome)) = answers.next() else { break };
                    let quarantined = bus.stats(device).unwrap().quarantined;
                    prop_assert_eq!(kind == PollKind::Probe, quarantined);
                    now += busy;
                    let disposition = bus.report(device, outcome, now).unwrap();
                    let due = match disposition {
                        Disposition::Done { next_ms } => {
                            prop_assert!(next_ms > now && next_ms <= now + interval[&device]);
                            next_ms
                        }
                        Disposition::Retry { at_ms, attempt } => {
                            prop_assert!(outcome.is_failure() && attempt <= retries);
                            at_ms
                        }
                        Disposition::Quarantined { probe_ms, backoff_ms } => {
                            prop_assert!(outcome.is_failure());
                            prop_assert!(backoff_ms >= interval[&device]);
                            prop_assert!(
                                backoff_ms <= quarantine_max_ms.max(interval[&device])
                            );
                            prop_assert_eq!(probe_ms, now + backoff_ms);
                            probe_ms
                        }
                    };
                    prop_assert!(due > now);
                    not_before.insert(device, due);
                }
                Next::Idle { until_ms } => {
                    prop_assert!(until_ms > now, "idle until {until_ms} at {now}");
                    now = until_ms;
                }
                Next::Busy { device } => {
                    prop_assert!(false, "{device} in flight with nothing outstanding");
                }
            }
        }
        for (device, stats) in bus.devices() {
            let ended = stats.successes + stats.timeouts + stats.exceptions + stats.malformed;
            // The request granted when the answers ran out is still outstanding.
            let outstanding = u64::from(bus.in_flight().is_some_and(|(d, _)| d == device));
            prop_assert_eq!(stats.polls, ended + outstanding);
            prop_assert_eq!(stats.quarantined, stats.quarantine_backoff_ms > 0);
        }
    }
}
