//! The fleet's sample log depends on the scenario and the seed only — not on how often the
//! host happened to step it, even across scheduled faults.

use tianzhong_protocol::{NodeId, Quantity, SiteId};
use tianzhong_simulator::clock::SimClock;
use tianzhong_simulator::fault::{Fault, ScheduledFault, Target};
use tianzhong_simulator::fleet::Fleet;
use tianzhong_simulator::node::{ChannelSpec, NodeSpec};
use tianzhong_simulator::signal::Component;
use tianzhong_simulator::spec::{BusKind, BusSpec, FleetSpec};

fn spec(seed: u64) -> FleetSpec {
    let bus = BusSpec {
        name: "b".into(),
        kind: BusKind::ModbusTcp {
            listen: "127.0.0.1:0".parse().unwrap(),
            per_node: false,
        },
    };
    let node = |n: u8| NodeSpec {
        id: NodeId::new(&format!("n{n}")).unwrap(),
        site: SiteId::new("s").unwrap(),
        bus: "b".into(),
        unit: n,
        model: "TZ".into(),
        channels: vec![ChannelSpec {
            quantity: Quantity::CombustibleGas,
            signal: vec![
                Component::Constant { value: 10.0 },
                Component::Noise { sigma: 1.0 },
                Component::RandomWalk {
                    step: 0.5,
                    bound: 5.0,
                },
            ],
            clamp: Some((0.0, 100.0)),
            sensor: None,
        }],
    };
    FleetSpec {
        name: "t".into(),
        seed,
        buses: vec![bus],
        nodes: (1..=3).map(node).collect(),
        faults: vec![
            ScheduledFault {
                fault: Fault::SensorFault { channel: None },
                target: Target::Node("n2".into()),
                from_ms: 12_500,
                until_ms: Some(20_500),
            },
            ScheduledFault {
                fault: Fault::StuckValue { channel: None },
                target: Target::Bus("b".into()),
                from_ms: 30_200,
                until_ms: Some(40_000),
            },
        ],
        base_dir: ".".into(),
    }
}

fn run(seed: u64, steps: &[u64]) -> String {
    let fleet = Fleet::build(&spec(seed), SimClock::new(0, 1.0), true).unwrap();
    for t in steps {
        fleet.step_to(*t);
    }
    fleet.truth.samples_csv()
}

#[test]
fn the_sample_log_does_not_depend_on_how_the_fleet_is_stepped() {
    let regular: Vec<u64> = (0..=60).map(|s| s * 1000).collect();
    let mut uneven = Vec::new();
    let mut t = 0;
    for (i, step) in [700u64, 3500, 1300, 9100, 250, 4400]
        .iter()
        .cycle()
        .enumerate()
    {
        t += step;
        if t >= 60_000 || i > 1000 {
            break;
        }
        uneven.push(t);
    }
    uneven.push(60_000);
    let a = run(7, &regular);
    let b = run(7, &uneven);
    assert_eq!(a, b);
    assert!(
        a.lines()
            .any(|l| l.starts_with("n2,0,") && l.ends_with(",D")),
        "the fault shows"
    );
    assert_ne!(a, run(8, &regular), "another seed, another log");
}
