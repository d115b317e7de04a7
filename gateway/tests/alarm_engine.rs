//! The alarm engine, table-driven: each case is a rule and a list of steps (a reading, a tick or
//! an operator action at a time), each with the transitions it must produce.
//!
//! Covered: every ISA-18.2 life-cycle transition, deadband, on- and off-delays (by reading and
//! by tick), rate of change, stale data, bad quality, shelving and its expiry, out-of-service
//! suppression, latching, escalation, rule replacement keeping state, validation errors, a
//! flapping input, rule selection, and the shipped defaults against the reference tables in
//! `/work/shared/reference`.

use std::collections::HashMap;

use tianzhong_gateway::alarm::{
    Action, ActionError, AlarmEngine, AlarmKey, AlarmState, AqiTable, Cause, Condition, Direction,
    GAS_DETECTOR_GROUP, ReplaceError, RuleError, RuleSet, Selector, Side, StaleAfter,
    ThresholdRule, default_rules, defaults,
};
use tianzhong_gateway::pipeline::Record;
use tianzhong_protocol::{
    AlarmLevel as L, BadReason, ChannelId, NodeId, Quality, Quantity, Reading, SiteId, Timestamp,
    UncertainReason,
};

const N: AlarmState = AlarmState::Normal;
const AU: AlarmState = AlarmState::ActiveUnacked;
const AA: AlarmState = AlarmState::ActiveAcked;
const CU: AlarmState = AlarmState::ClearedUnacked;
const LU: AlarmState = AlarmState::LatchedUnacked;
const LA: AlarmState = AlarmState::LatchedAcked;
const SH: AlarmState = AlarmState::Shelved;
const OOS: AlarmState = AlarmState::OutOfService;

const TH: Condition = Condition::Threshold;
const ROC: Condition = Condition::RateOfChange;
const ST: Condition = Condition::Stale;
const BQ: Condition = Condition::BadQuality;

/// Gateway time at step time 0.
const T0: u64 = 1_764_316_800_000;

const FAULT: Quality = Quality::Bad(BadReason::SensorFault);
const CALIBRATING: Quality = Quality::Bad(BadReason::Calibrating);
const NO_COMMS: Quality = Quality::Bad(BadReason::CommunicationFailure);
const OVER_RANGE: Quality = Quality::Uncertain(UncertainReason::OutOfRange);

fn node() -> NodeId {
    NodeId::new("cp-gas-01").unwrap()
}

fn site() -> SiteId {
    SiteId::new("plant-a").unwrap()
}

fn key(condition: Condition) -> AlarmKey {
    AlarmKey::new(node(), ChannelId(0), condition)
}

fn record_of(node: NodeId, channel: u16, quantity: Quantity, t: u64, v: f64, q: Quality) -> Record {
    let reading = Reading::new(
        node,
        ChannelId(channel),
        quantity,
        v,
        Timestamp(T0 + t),
        (t / 1000) as u32,
        q,
    )
    .unwrap();
    Record {
        site: site(),
        reading,
        received_ms: T0 + t,
        device_time: false,
    }
}

fn record(t: u64, v: f64, q: Quality) -> Record {
    record_of(node(), 0, Quantity::CombustibleGas, t, v, q)
}

/// A step at a time in ms after [`T0`].
#[derive(Clone, Debug)]
enum Step {
    /// A good reading.
    R(u64, f64),
    /// A reading of some quality.
    Q(u64, f64, Quality),
    /// A tick.
    Tick(u64),
    Ack(u64, Condition),
    Shelve(u64, Condition, u64),
    Unshelve(u64, Condition),
    Oos(u64, Condition, bool),
    Reset(u64, Condition),
    /// Replace the rule set with this rule, at this version.
    Replace(u64, u64, Box<ThresholdRule>),
}
use Step::*;

/// An expected transition: condition, from, to, level.
type Tr = (Condition, AlarmState, AlarmState, L);

struct Case {
    name: &'static str,
    rule: ThresholdRule,
    steps: Vec<(Step, Vec<Tr>)>,
}

fn gas_rule() -> ThresholdRule {
    ThresholdRule::new("combustible", Selector::quantity(Quantity::CombustibleGas))
        .high(L::Yellow, 25.0)
        .high(L::Red, 50.0)
}

fn engine_with(rule: ThresholdRule) -> AlarmEngine {
    AlarmEngine::new(RuleSet::new(1, vec![rule]).with_node(node(), None, Some(1_000))).unwrap()
}

/// Runs one step; returns the transitions (checking their common fields on the way).
fn apply(e: &mut AlarmEngine, step: &Step) -> Vec<Tr> {
    let (at, ts) = match step {
        R(t, v) => (
            *t,
            e.on_reading(&record(*t, *v, Quality::Good), T0 + t)
                .to_vec(),
        ),
        Q(t, v, q) => (*t, e.on_reading(&record(*t, *v, *q), T0 + t).to_vec()),
        Tick(t) => (*t, e.tick(T0 + t)),
        Ack(t, c) => (
            *t,
            vec![e.acknowledge(&key(*c), "li", "seen", T0 + t).unwrap()],
        ),
        Shelve(t, c, d) => (
            *t,
            vec![e.shelve(&key(*c), *d, "li", "nuisance", T0 + t).unwrap()],
        ),
        Unshelve(t, c) => (*t, vec![e.unshelve(&key(*c), "li", "", T0 + t).unwrap()]),
        Oos(t, c, out) => (
            *t,
            vec![
                e.set_out_of_service(&key(*c), *out, "li", "maintenance", T0 + t)
                    .unwrap(),
            ],
        ),
        Reset(t, c) => (
            *t,
            vec![e.reset_latch(&key(*c), "li", "reset", T0 + t).unwrap()],
        ),
        Replace(t, version, rule) => {
            let rules =
                RuleSet::new(*version, vec![(**rule).clone()]).with_node(node(), None, Some(1_000));
            (*t, e.replace_rules(rules, T0 + t).unwrap())
        }
    };
    for tr in &ts {
        assert_eq!(tr.at_ms, T0 + at, "{tr:?}");
        assert_eq!(tr.key.node, node());
        assert_eq!(tr.key.channel, ChannelId(0));
        assert_eq!(tr.rules_version, e.rules().version);
        // Only an escalation from one side to the other may keep state and level.
        assert!(
            (tr.from, tr.from_level) != (tr.to, tr.level) || tr.cause == Cause::Escalated,
            "no-op transition {tr:?}"
        );
        // The engine's view agrees with the transition it reported last for the key.
        if tr.cause != Cause::RuleRemoved {
            let status = e.status(&tr.key).unwrap();
            if ts
                .iter()
                .rev()
                .find(|x| x.key == tr.key)
                .is_some_and(|x| std::ptr::eq(x, tr))
            {
                assert_eq!((status.state, status.level), (tr.to, tr.level), "{tr:?}");
                assert_eq!(status.changed_ms, Some(tr.at_ms), "{tr:?}");
            }
        }
    }
    ts.into_iter()
        .map(|t| (t.key.condition, t.from, t.to, t.level))
        .collect()
}

fn run(case: &Case) {
    let mut e = engine_with(case.rule.clone());
    for (i, (step, want)) in case.steps.iter().enumerate() {
        let got = apply(&mut e, step);
        assert_eq!(&got, want, "case `{}`, step {i}: {step:?}", case.name);
    }
}

fn run_all(cases: Vec<Case>) {
    for case in &cases {
        run(case);
    }
}

#[test]
fn life_cycle_transitions() {
    run_all(vec![
        Case {
            name: "normal -> active unacked -> active acked -> normal",
            rule: gas_rule(),
            steps: vec![
                (R(0, 10.0), vec![]),
                (R(1_000, 30.0), vec![(TH, N, AU, L::Yellow)]),
                (Ack(2_000, TH), vec![(TH, AU, AA, L::Yellow)]),
                (R(3_000, 10.0), vec![(TH, AA, N, L::Normal)]),
            ],
        },
        Case {
            name: "active unacked -> cleared unacked -> normal by acknowledgement",
            rule: gas_rule(),
            steps: vec![
                (R(0, 30.0), vec![(TH, N, AU, L::Yellow)]),
                (R(1_000, 10.0), vec![(TH, AU, CU, L::Yellow)]),
                (Ack(2_000, TH), vec![(TH, CU, N, L::Normal)]),
            ],
        },
        Case {
            name: "cleared unacked -> active unacked when the condition returns",
            rule: gas_rule(),
            steps: vec![
                (R(0, 60.0), vec![(TH, N, AU, L::Red)]),
                (R(1_000, 10.0), vec![(TH, AU, CU, L::Red)]),
                (R(2_000, 30.0), vec![(TH, CU, AU, L::Yellow)]),
            ],
        },
        Case {
            name: "escalation re-requires acknowledgement; de-escalation does not",
            rule: gas_rule(),
            steps: vec![
                (R(0, 30.0), vec![(TH, N, AU, L::Yellow)]),
                (Ack(500, TH), vec![(TH, AU, AA, L::Yellow)]),
                (R(1_000, 55.0), vec![(TH, AA, AU, L::Red)]),
                (R(2_000, 30.0), vec![(TH, AU, AU, L::Yellow)]),
                (Ack(2_500, TH), vec![(TH, AU, AA, L::Yellow)]),
                (R(3_000, 26.0), vec![]),
                (R(4_000, 51.0), vec![(TH, AA, AU, L::Red)]),
                (R(5_000, 0.0), vec![(TH, AU, CU, L::Red)]),
            ],
        },
        Case {
            name: "an over-range (uncertain) reading is evaluated",
            rule: gas_rule(),
            steps: vec![(Q(0, 120.0, OVER_RANGE), vec![(TH, N, AU, L::Red)])],
        },
    ]);
}

#[test]
fn low_side_alarm_with_deadband() {
    let oxygen = ThresholdRule::new("o2", Selector::quantity(Quantity::CombustibleGas))
        .high(L::Red, 23.5)
        .low(L::Red, 19.5)
        .deadband(0.2);
    let mut e = engine_with(oxygen);
    assert_eq!(apply(&mut e, &R(0, 20.9)), vec![]);
    assert_eq!(apply(&mut e, &R(1_000, 19.5)), vec![(TH, N, AU, L::Red)]);
    assert_eq!(e.status(&key(TH)).unwrap().side, Some(Side::Low));
    assert_eq!(
        apply(&mut e, &R(2_000, 19.7)),
        vec![],
        "held within the deadband"
    );
    assert_eq!(apply(&mut e, &R(3_000, 19.71)), vec![(TH, AU, CU, L::Red)]);
    // Straight from low to high: the side changes, which re-annunciates.
    assert_eq!(apply(&mut e, &R(4_000, 19.0)), vec![(TH, CU, AU, L::Red)]);
    assert_eq!(apply(&mut e, &R(5_000, 24.0)), vec![(TH, AU, AU, L::Red)]);
    assert_eq!(e.status(&key(TH)).unwrap().side, Some(Side::High));
}

#[test]
fn deadband_holds_each_level() {
    run_all(vec![Case {
        name: "deadband 2 on yellow 25 and red 50",
        rule: gas_rule().deadband(2.0),
        steps: vec![
            (R(0, 25.0), vec![(TH, N, AU, L::Yellow)]),
            (R(1_000, 23.0), vec![]),
            (R(2_000, 50.0), vec![(TH, AU, AU, L::Red)]),
            (R(3_000, 48.0), vec![]),
            (R(4_000, 47.9), vec![(TH, AU, AU, L::Yellow)]),
            (R(5_000, 24.0), vec![]),
            (R(6_000, 22.99), vec![(TH, AU, CU, L::Yellow)]),
            // Back up to within the deadband from below: not reached, not held.
            (R(7_000, 24.0), vec![]),
        ],
    }]);
}

#[test]
fn on_and_off_delays() {
    run_all(vec![
        Case {
            name: "on-delay: raised only after 3 s above, by reading",
            rule: gas_rule().delays(3_000, 0),
            steps: vec![
                (R(0, 30.0), vec![]),
                (R(1_000, 30.0), vec![]),
                (R(2_999, 30.0), vec![]),
                (R(3_000, 30.0), vec![(TH, N, AU, L::Yellow)]),
            ],
        },
        Case {
            name: "on-delay: by tick, without another reading",
            rule: gas_rule().delays(3_000, 0),
            steps: vec![
                (R(0, 30.0), vec![]),
                (Tick(2_999), vec![]),
                (Tick(3_000), vec![(TH, N, AU, L::Yellow)]),
            ],
        },
        Case {
            name: "on-delay: a short excursion is never annunciated",
            rule: gas_rule().delays(3_000, 0),
            steps: vec![
                (R(0, 30.0), vec![]),
                (R(1_000, 10.0), vec![]),
                (R(2_000, 30.0), vec![]),
                (Tick(4_000), vec![]),
                (Tick(5_000), vec![(TH, N, AU, L::Yellow)]),
            ],
        },
        Case {
            name: "on-delay: escalation delayed too, timed from the first rise, latest level",
            rule: gas_rule().delays(3_000, 0),
            steps: vec![
                (R(0, 30.0), vec![]),
                (R(3_000, 55.0), vec![(TH, N, AU, L::Red)]),
            ],
        },
        Case {
            name: "off-delay: cleared only after 5 s below",
            rule: gas_rule().delays(0, 5_000),
            steps: vec![
                (R(0, 30.0), vec![(TH, N, AU, L::Yellow)]),
                (R(1_000, 10.0), vec![]),
                (Tick(5_999), vec![]),
                (Tick(6_000), vec![(TH, AU, CU, L::Yellow)]),
            ],
        },
        Case {
            name: "off-delay: returning above within the delay cancels it",
            rule: gas_rule().delays(0, 5_000),
            steps: vec![
                (R(0, 30.0), vec![(TH, N, AU, L::Yellow)]),
                (R(1_000, 10.0), vec![]),
                (R(2_000, 30.0), vec![]),
                (R(3_000, 10.0), vec![]),
                (Tick(7_000), vec![]),
                (Tick(8_000), vec![(TH, AU, CU, L::Yellow)]),
            ],
        },
        Case {
            name: "off-delay applies to de-escalation",
            rule: gas_rule().delays(0, 5_000),
            steps: vec![
                (R(0, 60.0), vec![(TH, N, AU, L::Red)]),
                (R(1_000, 30.0), vec![]),
                (R(6_000, 30.0), vec![(TH, AU, AU, L::Yellow)]),
            ],
        },
    ]);
}

#[test]
fn rate_of_change() {
    let rule = gas_rule().rate_of_change(10.0, Direction::Rising, L::Orange);
    run_all(vec![
        Case {
            name: "rising faster than 10 %LEL/min",
            rule: rule.clone(),
            steps: vec![
                (R(0, 0.0), vec![]),
                (R(60_000, 5.0), vec![]),
                (R(90_000, 10.0), vec![(ROC, N, AU, L::Orange)]),
                (R(150_000, 11.0), vec![(ROC, AU, CU, L::Orange)]),
                (Ack(151_000, ROC), vec![(ROC, CU, N, L::Normal)]),
                // Falling fast does not trip a rising-only limit.
                (R(160_000, 0.0), vec![]),
            ],
        },
        Case {
            name: "both directions",
            rule: gas_rule().rate_of_change(10.0, Direction::Both, L::Blue),
            steps: vec![
                (R(0, 20.0), vec![]),
                (R(6_000, 18.0), vec![(ROC, N, AU, L::Blue)]),
                (R(12_000, 18.0), vec![(ROC, AU, CU, L::Blue)]),
            ],
        },
        Case {
            name: "bad readings are skipped; the rate spans the gap",
            rule: rule.clone(),
            steps: vec![
                (R(0, 0.0), vec![]),
                (Q(30_000, 99.0, FAULT), vec![]),
                (R(60_000, 9.0), vec![]),
            ],
        },
    ]);
}

#[test]
fn stale_data_is_a_communication_alarm() {
    run_all(vec![
        Case {
            name: "fixed time",
            rule: gas_rule().stale(StaleAfter::Millis(10_000), L::Yellow),
            steps: vec![
                (R(0, 10.0), vec![]),
                (Tick(9_999), vec![]),
                (Tick(10_000), vec![(ST, N, AU, L::Yellow)]),
                (Tick(20_000), vec![]),
                // A communication-failure reading is no reading.
                (Q(21_000, 0.0, NO_COMMS), vec![]),
                (R(22_000, 10.0), vec![(ST, AU, CU, L::Yellow)]),
                (Ack(23_000, ST), vec![(ST, CU, N, L::Normal)]),
            ],
        },
        Case {
            name: "three poll intervals of 1 s",
            rule: gas_rule().stale(StaleAfter::PollIntervals(3), L::Blue),
            steps: vec![
                (R(0, 10.0), vec![]),
                (Tick(2_000), vec![]),
                (R(2_500, 10.0), vec![]),
                (Tick(5_499), vec![]),
                (Tick(5_500), vec![(ST, N, AU, L::Blue)]),
                (Ack(6_000, ST), vec![(ST, AU, AA, L::Blue)]),
                // A fault reading still proves the channel talks.
                (Q(7_000, 0.0, FAULT), vec![(ST, AA, N, L::Normal)]),
            ],
        },
    ]);
    // Without a known poll interval there is no stale-data alarm.
    let mut e = AlarmEngine::new(RuleSet::new(
        1,
        vec![gas_rule().stale(StaleAfter::PollIntervals(3), L::Blue)],
    ))
    .unwrap();
    e.on_reading(&record(0, 10.0, Quality::Good), T0);
    assert!(e.tick(T0 + 1_000_000).is_empty());
    assert_eq!(e.status(&key(ST)), None);
}

#[test]
fn bad_quality() {
    run_all(vec![
        Case {
            name: "sensor fault raises; a good reading clears",
            rule: gas_rule().bad_quality(L::Yellow),
            steps: vec![
                (R(0, 10.0), vec![]),
                (Q(1_000, 0.0, FAULT), vec![(BQ, N, AU, L::Yellow)]),
                (Q(2_000, 0.0, FAULT), vec![]),
                (R(3_000, 10.0), vec![(BQ, AU, CU, L::Yellow)]),
            ],
        },
        Case {
            name: "a fault while in alarm neither clears the threshold nor raises one",
            rule: gas_rule().bad_quality(L::Yellow),
            steps: vec![
                (R(0, 30.0), vec![(TH, N, AU, L::Yellow)]),
                (Q(1_000, 0.0, FAULT), vec![(BQ, N, AU, L::Yellow)]),
                (Q(2_000, 99.0, FAULT), vec![]),
                (R(3_000, 30.0), vec![(BQ, AU, CU, L::Yellow)]),
            ],
        },
        Case {
            name: "calibration gas does not alarm, and ends a fault",
            rule: gas_rule().bad_quality(L::Yellow),
            steps: vec![
                (Q(0, 0.0, FAULT), vec![(BQ, N, AU, L::Yellow)]),
                (Ack(500, BQ), vec![(BQ, AU, AA, L::Yellow)]),
                (Q(1_000, 60.0, CALIBRATING), vec![(BQ, AA, N, L::Normal)]),
                (R(2_000, 10.0), vec![]),
            ],
        },
    ]);
}

#[test]
fn shelving_and_its_expiry() {
    run_all(vec![
        Case {
            name: "shelved while active, expires while still active: back unacknowledged",
            rule: gas_rule(),
            steps: vec![
                (R(0, 30.0), vec![(TH, N, AU, L::Yellow)]),
                (Ack(500, TH), vec![(TH, AU, AA, L::Yellow)]),
                (Shelve(1_000, TH, 10_000), vec![(TH, AA, SH, L::Yellow)]),
                (R(2_000, 10.0), vec![]),
                (R(3_000, 60.0), vec![]),
                (Tick(10_999), vec![]),
                (Tick(11_000), vec![(TH, SH, AU, L::Red)]),
            ],
        },
        Case {
            name: "expires after the condition cleared: back to normal",
            rule: gas_rule(),
            steps: vec![
                (R(0, 30.0), vec![(TH, N, AU, L::Yellow)]),
                (Shelve(1_000, TH, 10_000), vec![(TH, AU, SH, L::Yellow)]),
                (R(2_000, 10.0), vec![]),
                (Tick(11_000), vec![(TH, SH, N, L::Normal)]),
            ],
        },
        Case {
            name: "expiry noticed by the next reading without a tick",
            rule: gas_rule(),
            steps: vec![
                (R(0, 10.0), vec![]),
                (Shelve(1_000, TH, 5_000), vec![(TH, N, SH, L::Normal)]),
                (
                    R(7_000, 30.0),
                    vec![(TH, SH, N, L::Normal), (TH, N, AU, L::Yellow)],
                ),
            ],
        },
        Case {
            name: "unshelved by an operator",
            rule: gas_rule(),
            steps: vec![
                (R(0, 30.0), vec![(TH, N, AU, L::Yellow)]),
                (Shelve(1_000, TH, 10_000), vec![(TH, AU, SH, L::Yellow)]),
                (Unshelve(2_000, TH), vec![(TH, SH, AU, L::Yellow)]),
                (Tick(20_000), vec![]),
            ],
        },
    ]);
}

#[test]
fn out_of_service_suppresses_everything() {
    run_all(vec![Case {
        name: "out of service while alarms come and go",
        rule: gas_rule(),
        steps: vec![
            (R(0, 30.0), vec![(TH, N, AU, L::Yellow)]),
            (Oos(1_000, TH, true), vec![(TH, AU, OOS, L::Yellow)]),
            (R(2_000, 10.0), vec![]),
            (R(3_000, 60.0), vec![]),
            (Tick(100_000), vec![]),
            (Oos(101_000, TH, false), vec![(TH, OOS, AU, L::Red)]),
            (Oos(102_000, TH, true), vec![(TH, AU, OOS, L::Red)]),
            (R(103_000, 0.0), vec![]),
            (Oos(104_000, TH, false), vec![(TH, OOS, N, L::Normal)]),
        ],
    }]);
}

#[test]
fn latching() {
    let rule = gas_rule().latching(true);
    run_all(vec![
        Case {
            name: "acknowledged, cleared: latched until reset",
            rule: rule.clone(),
            steps: vec![
                (R(0, 30.0), vec![(TH, N, AU, L::Yellow)]),
                (Ack(500, TH), vec![(TH, AU, AA, L::Yellow)]),
                (R(1_000, 10.0), vec![(TH, AA, LA, L::Yellow)]),
                (Reset(2_000, TH), vec![(TH, LA, N, L::Normal)]),
            ],
        },
        Case {
            name: "unacknowledged, cleared: latched unacked, then ack, then reset",
            rule: rule.clone(),
            steps: vec![
                (R(0, 30.0), vec![(TH, N, AU, L::Yellow)]),
                (R(1_000, 10.0), vec![(TH, AU, LU, L::Yellow)]),
                (Ack(2_000, TH), vec![(TH, LU, LA, L::Yellow)]),
                (Reset(3_000, TH), vec![(TH, LA, N, L::Normal)]),
            ],
        },
        Case {
            name: "reset before acknowledgement leaves it cleared unacked",
            rule: rule.clone(),
            steps: vec![
                (R(0, 30.0), vec![(TH, N, AU, L::Yellow)]),
                (R(1_000, 10.0), vec![(TH, AU, LU, L::Yellow)]),
                (Reset(2_000, TH), vec![(TH, LU, CU, L::Yellow)]),
                (Ack(3_000, TH), vec![(TH, CU, N, L::Normal)]),
            ],
        },
        Case {
            name: "holds the highest level; reset while active drops to the condition's",
            rule: rule.clone(),
            steps: vec![
                (R(0, 60.0), vec![(TH, N, AU, L::Red)]),
                (R(1_000, 30.0), vec![]),
                (Ack(1_500, TH), vec![(TH, AU, AA, L::Red)]),
                (R(2_000, 55.0), vec![]),
                (R(2_500, 30.0), vec![]),
                (Reset(3_000, TH), vec![(TH, AA, AA, L::Yellow)]),
                (R(4_000, 10.0), vec![(TH, AA, LA, L::Yellow)]),
                // The condition returns while latched: a new activation.
                (R(5_000, 30.0), vec![(TH, LA, AU, L::Yellow)]),
            ],
        },
    ]);
}

#[test]
fn a_flapping_input_does_not_flood_transitions() {
    let count = |rule: ThresholdRule, signal: &dyn Fn(u64) -> f64| {
        let mut e = engine_with(rule);
        (0..100u64)
            .map(|i| e.on_reading(&record(i * 1_000, signal(i), Quality::Good), T0 + i * 1_000))
            .map(|t| t.len())
            .sum::<usize>()
    };
    // ±1 %LEL around the yellow set point (starting below): without deadband or delay, a
    // transition on every reading after the first; with a 2 %LEL deadband, raised once, held.
    let around = |i: u64| if i.is_multiple_of(2) { 24.0 } else { 26.0 };
    assert_eq!(count(gas_rule(), &around), 99);
    assert_eq!(count(gas_rule().deadband(2.0), &around), 1);
    // Spikes above the set point every third reading, never lasting 3 s: the on-delay keeps
    // them all out.
    let spikes = |i: u64| if i.is_multiple_of(3) { 30.0 } else { 10.0 };
    assert_eq!(count(gas_rule(), &spikes), 67);
    assert_eq!(count(gas_rule().delays(3_000, 0), &spikes), 0);
    // Noise of ±3 around the set point with deadband 2 and an off-delay: at most 2.
    let noisy = |i: u64| 25.0 + 3.0 * (((i * 7919) % 13) as f64 / 6.0 - 1.0);
    let n = count(gas_rule().deadband(2.0).delays(2_000, 5_000), &noisy);
    assert!(n <= 2, "{n} transitions");
}

#[test]
fn rule_replacement_keeps_alarm_state() {
    let acked_yellow = || {
        vec![
            (R(0, 30.0), vec![(TH, N, AU, L::Yellow)]),
            (Ack(500, TH), vec![(TH, AU, AA, L::Yellow)]),
        ]
    };
    let with = |mut steps: Vec<(Step, Vec<Tr>)>, more: Vec<(Step, Vec<Tr>)>| {
        steps.extend(more);
        steps
    };
    run_all(vec![
        Case {
            name: "same identity, new deadband: state and acknowledgement kept",
            rule: gas_rule(),
            steps: with(
                acked_yellow(),
                vec![
                    (
                        Replace(1_000, 2, Box::new(gas_rule().deadband(3.0))),
                        vec![],
                    ),
                    (R(2_000, 23.0), vec![]),
                    (R(3_000, 21.9), vec![(TH, AA, N, L::Normal)]),
                ],
            ),
        },
        Case {
            name: "lowered red set point escalates at once, from the latest value",
            rule: gas_rule(),
            steps: with(
                acked_yellow(),
                vec![(
                    Replace(
                        1_000,
                        2,
                        Box::new(gas_rule().high(L::Orange, 28.0).high(L::Red, 40.0)),
                    ),
                    vec![(TH, AA, AU, L::Orange)],
                )],
            ),
        },
        Case {
            name: "a condition no longer configured is removed, reported as going to normal",
            rule: gas_rule().bad_quality(L::Yellow),
            steps: vec![
                (Q(0, 0.0, FAULT), vec![(BQ, N, AU, L::Yellow)]),
                (
                    Replace(1_000, 2, Box::new(gas_rule())),
                    vec![(BQ, AU, N, L::Normal)],
                ),
                (Q(2_000, 0.0, FAULT), vec![]),
            ],
        },
        Case {
            name: "a newly configured condition starts normal and works",
            rule: gas_rule(),
            steps: vec![
                (R(0, 10.0), vec![]),
                (
                    Replace(
                        1_000,
                        2,
                        Box::new(gas_rule().stale(StaleAfter::Millis(5_000), L::Blue)),
                    ),
                    vec![],
                ),
                (Tick(5_000), vec![(ST, N, AU, L::Blue)]),
            ],
        },
        Case {
            name: "a channel no rule covered: the new rule starts from its latest reading",
            rule: ThresholdRule::new("other", Selector::quantity(Quantity::Pm25)).high(L::Red, 1.0),
            steps: vec![
                (R(0, 30.0), vec![]),
                (R(8_000, 30.0), vec![]),
                (
                    Replace(
                        10_000,
                        2,
                        Box::new(gas_rule().stale(StaleAfter::Millis(5_000), L::Blue)),
                    ),
                    vec![(TH, N, AU, L::Yellow)],
                ),
                (Tick(12_999), vec![]),
                (Tick(13_000), vec![(ST, N, AU, L::Blue)]),
            ],
        },
        Case {
            name: "shelving survives a replacement",
            rule: gas_rule(),
            steps: with(
                acked_yellow(),
                vec![
                    (Shelve(600, TH, 10_000), vec![(TH, AA, SH, L::Yellow)]),
                    (
                        Replace(1_000, 2, Box::new(gas_rule().high(L::Red, 28.0))),
                        vec![],
                    ),
                    (Tick(10_600), vec![(TH, SH, AU, L::Red)]),
                ],
            ),
        },
    ]);
}

#[test]
fn rule_replacement_refusals() {
    let mut e = engine_with(gas_rule());
    e.on_reading(&record(0, 30.0, Quality::Good), T0);
    let same = RuleSet::new(1, vec![gas_rule()]);
    assert_eq!(
        e.replace_rules(same, T0),
        Err(ReplaceError::NotNewer {
            current: 1,
            offered: 1
        })
    );
    let bad = RuleSet::new(2, vec![gas_rule().high(L::Red, 20.0)]);
    let err = e.replace_rules(bad, T0).unwrap_err();
    assert!(
        matches!(err, ReplaceError::Invalid { version: 2, .. }),
        "{err}"
    );
    assert_eq!(e.rules().version, 1);
    assert_eq!(e.status(&key(TH)).unwrap().state, AU, "state untouched");
}

/// Name, setup steps, the action, and the action and state the refusal must name.
type Refusal = (
    &'static str,
    Vec<Step>,
    Box<dyn Fn(&mut AlarmEngine) -> Result<(), ActionError>>,
    Action,
    AlarmState,
);

#[test]
fn operator_actions_refused_where_they_do_not_apply() {
    let cases: Vec<Refusal> = vec![
        (
            "acknowledge a normal alarm",
            vec![R(0, 10.0)],
            Box::new(|e| e.acknowledge(&key(TH), "li", "", T0).map(drop)),
            Action::Acknowledge,
            N,
        ),
        (
            "acknowledge twice",
            vec![R(0, 30.0), Ack(1, TH)],
            Box::new(|e| e.acknowledge(&key(TH), "li", "", T0).map(drop)),
            Action::Acknowledge,
            AA,
        ),
        (
            "unshelve an alarm not shelved",
            vec![R(0, 30.0)],
            Box::new(|e| e.unshelve(&key(TH), "li", "", T0).map(drop)),
            Action::Unshelve,
            AU,
        ),
        (
            "shelve an alarm out of service",
            vec![R(0, 30.0), Oos(1, TH, true)],
            Box::new(|e| e.shelve(&key(TH), 1_000, "li", "", T0).map(drop)),
            Action::Shelve,
            OOS,
        ),
        (
            "return to service an alarm in service",
            vec![R(0, 30.0)],
            Box::new(|e| {
                e.set_out_of_service(&key(TH), false, "li", "", T0)
                    .map(drop)
            }),
            Action::ReturnToService,
            AU,
        ),
        (
            "reset a latch while the condition holds at its level",
            vec![R(0, 30.0)],
            Box::new(|e| e.reset_latch(&key(TH), "li", "", T0).map(drop)),
            Action::ResetLatch,
            AU,
        ),
        (
            "acknowledge a shelved alarm",
            vec![R(0, 30.0), Shelve(1, TH, 1_000)],
            Box::new(|e| e.acknowledge(&key(TH), "li", "", T0).map(drop)),
            Action::Acknowledge,
            SH,
        ),
    ];
    for (name, setup, action, want_action, want_state) in cases {
        let mut e = engine_with(gas_rule().latching(true));
        for s in &setup {
            apply(&mut e, s);
        }
        let before = e.status(&key(TH));
        assert_eq!(
            action(&mut e),
            Err(ActionError::NotAllowed {
                key: key(TH),
                action: want_action,
                state: want_state
            }),
            "{name}"
        );
        assert_eq!(e.status(&key(TH)), before, "{name}: state untouched");
    }

    let mut e = engine_with(gas_rule());
    apply(&mut e, &R(0, 30.0));
    let max = e.rules().max_shelve_ms;
    for d in [0, max + 1] {
        assert!(matches!(
            e.shelve(&key(TH), d, "li", "", T0),
            Err(ActionError::ShelveDuration { .. })
        ));
    }
    // Unknown: a condition the rule does not configure, a channel never seen.
    assert_eq!(
        e.acknowledge(&key(BQ), "li", "", T0),
        Err(ActionError::UnknownAlarm(key(BQ)))
    );
    let other = AlarmKey::new(node(), ChannelId(9), TH);
    assert_eq!(
        e.acknowledge(&other, "li", "", T0),
        Err(ActionError::UnknownAlarm(other.clone()))
    );
}

#[test]
fn transitions_carry_the_operator_and_the_value() {
    let mut e = engine_with(gas_rule());
    let raised = e.on_reading(&record(0, 30.0, Quality::Good), T0);
    assert_eq!(raised[0].value, 30.0);
    assert_eq!(raised[0].cause, Cause::Raised);
    assert_eq!(raised[0].side, Some(Side::High));
    let t = e
        .shelve(&key(TH), 60_000, "wang", "sensor replaced tomorrow", T0 + 1)
        .unwrap();
    match t.cause {
        Cause::Shelved { by, until_ms } => {
            assert_eq!(
                (by.user.as_str(), by.comment.as_str()),
                ("wang", "sensor replaced tomorrow")
            );
            assert_eq!(until_ms, T0 + 60_001);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(t.value, 30.0);
    assert_eq!(e.tick(T0 + 60_001)[0].cause, Cause::ShelveExpired);
    assert_eq!(e.highest_level(), L::Yellow);
}

#[test]
fn validation_reports_every_mistake_clearly() {
    let q = || Selector::quantity(Quantity::CombustibleGas);
    let r = |name| ThresholdRule::new(name, q());
    let cases: Vec<(ThresholdRule, &str)> = vec![
        (
            r("misordered high")
                .high(L::Yellow, 50.0)
                .high(L::Red, 25.0),
            "rule 0 `misordered high`: high side: red set point 25 must be above the yellow set point 50",
        ),
        (
            r("misordered low").low(L::Blue, 18.0).low(L::Orange, 19.5),
            "rule 0 `misordered low`: low side: orange set point 19.5 must be below the blue set point 18",
        ),
        (
            r("equal").high(L::Orange, 25.0).high(L::Red, 25.0),
            "rule 0 `equal`: high side: red set point 25 must be above the orange set point 25",
        ),
        (
            r("overlap").high(L::Red, 19.0).low(L::Red, 19.5),
            "rule 0 `overlap`: the lowest high set point 19 must be above the highest low set point 19.5",
        ),
        (
            r("nan").high(L::Red, f64::NAN),
            "rule 0 `nan`: high red set point is not a finite number",
        ),
        (
            r("deadband").high(L::Red, 1.0).deadband(-0.5),
            "rule 0 `deadband`: deadband -0.5 is negative",
        ),
        (
            r("deadband nan").deadband(f64::INFINITY),
            "rule 0 `deadband nan`: deadband is not a finite number",
        ),
        (
            r("roc").rate_of_change(0.0, Direction::Both, L::Red),
            "rule 0 `roc`: rate-of-change limit 0 must be a positive number",
        ),
        (
            r("roc level").rate_of_change(1.0, Direction::Both, L::Normal),
            "rule 0 `roc level`: the rate-of-change alarm's level must be blue, yellow, orange or red",
        ),
        (
            r("stale").stale(StaleAfter::PollIntervals(0), L::Blue),
            "rule 0 `stale`: stale-data time must be more than zero",
        ),
        (
            r("bad").bad_quality(L::Normal),
            "rule 0 `bad`: the bad-quality alarm's level must be blue, yellow, orange or red",
        ),
    ];
    for (rule, message) in cases {
        let err = RuleSet::new(1, vec![rule]).validate().unwrap_err();
        assert_eq!(err.0.len(), 1, "{err}");
        assert_eq!(err.to_string(), message);
    }

    // Several mistakes at once, all reported, one per line; duplicates named.
    let mut set = RuleSet::new(
        1,
        vec![
            r("a").high(L::Red, 10.0),
            r("b")
                .high(L::Yellow, 10.0)
                .high(L::Orange, 5.0)
                .deadband(-1.0),
        ],
    )
    .with_node(node(), None, Some(0));
    set.max_shelve_ms = 0;
    let err = set.validate().unwrap_err();
    assert_eq!(err.0.len(), 5, "{err}");
    assert!(err.0.contains(&RuleError::ZeroMaxShelve));
    assert!(
        err.0
            .contains(&RuleError::ZeroPollInterval { node: node() })
    );
    assert!(
        err.to_string()
            .contains("rule 1 `b`: selector `combustible_gas` is already used by rule 0")
    );
    assert_eq!(err.to_string().lines().count(), 5);
    assert!(AlarmEngine::new(set).is_err());
}

#[test]
fn the_most_specific_rule_wins() {
    let n2 = NodeId::new("cp-gas-02").unwrap();
    let n3 = NodeId::new("cp-gas-03").unwrap();
    let rules = RuleSet::new(
        1,
        vec![
            ThresholdRule::new("quantity", Selector::quantity(Quantity::CombustibleGas))
                .high(L::Blue, 10.0),
            ThresholdRule::new(
                "site",
                Selector::Class {
                    quantity: Quantity::CombustibleGas,
                    site: Some(site()),
                    group: None,
                },
            )
            .high(L::Yellow, 10.0),
            ThresholdRule::new(
                "group",
                Selector::group(Quantity::CombustibleGas, "tank-farm"),
            )
            .high(L::Orange, 10.0),
            ThresholdRule::new("channel", Selector::channel(node(), ChannelId(0)))
                .high(L::Red, 10.0),
        ],
    )
    .with_node(n2.clone(), Some("tank-farm"), None);
    let mut e = AlarmEngine::new(rules).unwrap();
    let level = |e: &mut AlarmEngine, n: NodeId, site_id: &str| {
        let mut rec = record_of(n, 0, Quantity::CombustibleGas, 0, 20.0, Quality::Good);
        rec.site = SiteId::new(site_id).unwrap();
        e.on_reading(&rec, T0)[0].level
    };
    assert_eq!(level(&mut e, node(), "plant-a"), L::Red, "exact channel");
    assert_eq!(level(&mut e, n2, "plant-a"), L::Orange, "group beats site");
    assert_eq!(
        level(&mut e, n3.clone(), "plant-a"),
        L::Yellow,
        "site beats quantity"
    );
    let mut e2 = AlarmEngine::new(e.rules().clone()).unwrap();
    assert_eq!(level(&mut e2, n3, "plant-b"), L::Blue, "quantity alone");
    // A channel no rule selects has no alarms.
    let rec = record_of(node(), 1, Quantity::Pm25, 0, 1e4, Quality::Good);
    assert!(e.on_reading(&rec, T0).is_empty());
    assert!(e.alarms().all(|(k, _)| k.channel == ChannelId(0)));
}

// ---- shipped defaults against the reference tables ----

/// A reference table, from the copies of `shared/reference` the repository keeps with the
/// protocol crate's vectors (a clone has no `shared/` beside it).
fn reference(file: &str) -> String {
    let path = format!(
        "{}/../protocol/tests/vectors/{file}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Splits a CSV line, honouring double quotes.
fn csv_fields(line: &str) -> Vec<String> {
    let (mut fields, mut cur, mut quoted) = (Vec::new(), String::new(), false);
    for c in line.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => fields.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    fields.push(cur);
    fields
}

/// The numbers in a threshold cell such as `<=25`, `10 / 20`, `>=1.0 / >=1.5 / <1.0`.
fn numbers(cell: &str) -> Vec<f64> {
    cell.split('/')
        .map(|s| s.trim().trim_start_matches(['<', '>', '=']).trim())
        .map(|s| s.parse().unwrap_or_else(|_| panic!("number in {cell:?}")))
        .collect()
}

fn rule_for<'a>(rules: &'a RuleSet, selector: &Selector) -> &'a ThresholdRule {
    rules
        .rules
        .iter()
        .find(|r| &r.selector == selector)
        .unwrap_or_else(|| panic!("no default rule for {selector}"))
}

#[test]
fn gas_defaults_agree_with_the_reference_table() {
    let csv = reference("gas_thresholds.csv");
    let rules = default_rules(AqiTable::default());
    let q = Selector::quantity;
    let g = Selector::group;
    let mut checked = 0;
    for line in csv.lines().filter(|l| !l.starts_with('#')).skip(1) {
        let f = csv_fields(line);
        let (context, gas, level, cell, unit) = (&f[0], &f[1], &f[2], &f[3], &f[4]);
        // (rule, [(side, level, factor from the table's unit to the canonical one)])
        let (rule, expect): (Selector, Vec<(Side, L)>) =
            match (context.as_str(), gas.as_str(), level.as_str()) {
                (c, "combustible", "level1") if c.starts_with("GB/T 50493") => {
                    (q(Quantity::CombustibleGas), vec![(Side::High, L::Yellow)])
                }
                (c, "combustible", "level2") if c.starts_with("GB/T 50493") => {
                    (q(Quantity::CombustibleGas), vec![(Side::High, L::Red)])
                }
                (_, "O2", "over-oxygen") => (q(Quantity::Oxygen), vec![(Side::High, L::Red)]),
                (_, "O2", "deficiency") => (q(Quantity::Oxygen), vec![(Side::Low, L::Red)]),
                (c, gas, "AL/AH") if c.starts_with("GB/T 50493") => {
                    let sel = match gas {
                        "H2S" => q(Quantity::H2s),
                        "CO" => g(Quantity::Co, GAS_DETECTOR_GROUP),
                        "SO2" => g(Quantity::So2, GAS_DETECTOR_GROUP),
                        "NO2" => g(Quantity::No2, GAS_DETECTOR_GROUP),
                        _ => continue, // NH3, Cl2: not quantities of the network
                    };
                    (sel, vec![(Side::High, L::Yellow), (Side::High, L::Red)])
                }
                (c, gas, "alarm/power-off/restore") if c.starts_with("Coal mine") => {
                    let sel = match gas {
                        g if g.contains("T1") => q(Quantity::Methane),
                        g if g.contains("T2") => Selector::group(Quantity::Methane, "coal-t2"),
                        g if g.contains("T3") => Selector::group(Quantity::Methane, "coal-t3"),
                        g if g.contains("T0") => Selector::group(Quantity::Methane, "coal-t0"),
                        g if g.contains("T7") => Selector::group(Quantity::Methane, "coal-t7"),
                        other => panic!("unexpected coal-mine row {other}"),
                    };
                    let n = numbers(cell);
                    let (alarm, power_off, restore) = (n[0], n[1], n[2]);
                    let r = rule_for(&rules, &sel);
                    if alarm == power_off {
                        assert_eq!(
                            r.high.iter().collect::<Vec<_>>(),
                            [(L::Red, alarm)],
                            "{line}"
                        );
                    } else {
                        assert_eq!(
                            r.high.iter().collect::<Vec<_>>(),
                            [(L::Yellow, alarm), (L::Red, power_off)],
                            "{line}"
                        );
                    }
                    // The alarm clears below the restore value (or the alarm value, whichever
                    // is lower): the deadband never holds an alarm past the rules' restore.
                    assert!(alarm - r.deadband >= restore.min(alarm), "{line}");
                    checked += 1;
                    continue;
                }
                _ => continue,
            };
        let factor = match unit.as_str() {
            "%LEL" | "%VOL" => 1.0,
            "mg/m3"
                if matches!(
                    rule,
                    Selector::Class {
                        quantity: Quantity::So2 | Quantity::No2,
                        ..
                    }
                ) =>
            {
                1_000.0
            }
            "mg/m3" => 1.0,
            other => panic!("unit {other} in {line}"),
        };
        let r = rule_for(&rules, &rule);
        for ((side, lvl), v) in expect.into_iter().zip(numbers(cell)) {
            let points = if side == Side::High { &r.high } else { &r.low };
            assert_eq!(points.get(lvl), Some(v * factor), "{line}");
        }
        checked += 1;
    }
    assert_eq!(checked, 13, "rows checked");
    // Units: the factor above is right only if the canonical units are what we assume.
    assert_eq!(Quantity::So2.canonical_unit().to_string(), "µg/m³");
    assert_eq!(Quantity::Co.canonical_unit().to_string(), "mg/m³");
    assert_eq!(Quantity::H2s.canonical_unit().to_string(), "mg/m³");
}

#[test]
fn aqi_defaults_agree_with_the_hj633_table() {
    let csv = reference("aqi_hj633.csv");
    let mut checked = 0;
    for (table, version) in [
        (AqiTable::Hj633_2012, "HJ633-2012"),
        (AqiTable::Hj633_2026, "HJ633-2026"),
    ] {
        let rules = default_rules(table);
        let columns: HashMap<&str, &str> = [
            ("PM2.5", "24h"),
            ("PM10", "24h"),
            ("SO2", "1h"),
            ("NO2", "1h"),
            ("CO", "1h"),
            ("O3", "1h"),
        ]
        .into();
        for line in csv.lines().filter(|l| l.starts_with(version)) {
            let f = csv_fields(line);
            if columns.get(f[1].as_str()) != Some(&f[2].as_str()) {
                continue;
            }
            let quantity = match f[1].as_str() {
                "PM2.5" => Quantity::Pm25,
                "PM10" => Quantity::Pm10,
                "SO2" => Quantity::So2,
                "NO2" => Quantity::No2,
                "CO" => Quantity::Co,
                _ => Quantity::O3,
            };
            // Columns c_iaqi0..c_iaqi500 are fields 4..=11; IAQI 100/150/200/300 are 6..=9.
            let bp = |i: usize| f[i].parse::<f64>().ok();
            let r = rule_for(&rules, &Selector::quantity(quantity));
            let want = [
                (L::Blue, bp(6)),
                (L::Yellow, bp(7)),
                (L::Orange, bp(8)),
                (L::Red, bp(9)),
            ];
            for (level, v) in want {
                assert_eq!(r.high.get(level), v, "{line}: {level}");
            }
            assert!(r.low.is_empty());
            assert_eq!(
                quantity.canonical_unit().to_string(),
                if quantity == Quantity::Co {
                    "mg/m³"
                } else {
                    "µg/m³"
                }
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 12);
    assert_eq!(AqiTable::default(), AqiTable::Hj633_2026);
}

#[test]
fn defaults_drive_the_engine() {
    let rules = default_rules(AqiTable::default()).with_node(node(), None, Some(5_000));
    let mut e = AlarmEngine::new(rules).unwrap();
    let o2 = |t: u64, v: f64| record_of(node(), 2, Quantity::Oxygen, t, v, Quality::Good);
    let t = e.on_reading(&o2(0, 18.0), T0);
    assert_eq!(
        (t[0].to, t[0].level, t[0].side),
        (AU, L::Red, Some(Side::Low))
    );
    // Three poll intervals of 5 s without a reading: the oxygen channel is stale.
    let stale = e.tick(T0 + 15_000);
    assert_eq!(stale.len(), 1);
    assert_eq!((stale[0].key.condition, stale[0].level), (ST, L::Yellow));
    let _ = defaults::DEFAULT_RULES_VERSION;
}
