//! Sensor-level faults seen from outside: mbpoll, an independent Modbus master, reads a node
//! over Modbus TCP and sees a spike as an out-of-range value flagged `T`, a failed sensor as
//! the quality flag `D`, and a stuck sensor as a value that stops following its signal.

use std::process::Command;
use std::sync::Arc;

use tianzhong_protocol::registers::profile;
use tianzhong_protocol::{NodeId, Quantity, SiteId};
use tianzhong_simulator::clock::SimClock;
use tianzhong_simulator::fault::{Fault, ScheduledFault, Target};
use tianzhong_simulator::fleet::Fleet;
use tianzhong_simulator::node::{ChannelSpec, NodeSpec};
use tianzhong_simulator::signal::Component;
use tianzhong_simulator::spec::{BusKind, BusSpec, FleetSpec};
use tianzhong_simulator::transport::modbus_tcp;

/// mbpoll once against `port`: `-t 3:float -B` for floats, `-t 3` for words. Returns the
/// values it printed.
fn mbpoll(port: u16, float: bool, address: u16, count: u16) -> Vec<String> {
    let out = Command::new("mbpoll")
        .args([
            "-m",
            "tcp",
            "-p",
            &port.to_string(),
            "-a",
            "1",
            "-1",
            "-o",
            "2",
        ])
        .args(if float {
            ["-t", "3:float", "-B"].as_slice()
        } else {
            ["-t", "3"].as_slice()
        })
        .args([
            "-r",
            &(u32::from(address) + 1).to_string(),
            "-c",
            &count.to_string(),
            "127.0.0.1",
        ])
        .output()
        .expect("mbpoll must be installed (Debian package mbpoll)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "mbpoll failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .filter_map(|l| {
            l.strip_prefix('[')?
                .split_once("]:")
                .map(|(_, v)| v.split_whitespace().next().unwrap_or("").to_owned())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mbpoll_sees_spikes_sensor_faults_and_stuck_values() {
    let bus = BusSpec {
        name: "b".into(),
        kind: BusKind::ModbusTcp {
            listen: "127.0.0.1:0".parse().unwrap(),
            per_node: true,
        },
    };
    let spec = FleetSpec {
        name: "faults".into(),
        seed: 1,
        buses: vec![bus.clone()],
        nodes: vec![NodeSpec {
            id: NodeId::new("n1").unwrap(),
            site: SiteId::new("s").unwrap(),
            bus: "b".into(),
            unit: 1,
            model: "TZ".into(),
            // A gas reading climbing 1 %LEL per simulated second from 5 %LEL.
            channels: vec![ChannelSpec {
                quantity: Quantity::CombustibleGas,
                signal: vec![
                    Component::Constant { value: 5.0 },
                    Component::Ramp {
                        from_s: 0.0,
                        to_s: 1000.0,
                        delta: 1000.0,
                        hold: true,
                    },
                ],
                clamp: None,
                sensor: None,
            }],
        }],
        faults: vec![],
        base_dir: ".".into(),
    };
    let fleet = Arc::new(Fleet::build(&spec, SimClock::new(0, 1.0), true).unwrap());
    let server = modbus_tcp::start(Arc::clone(&fleet), &bus, 1)
        .await
        .unwrap();
    let port = server.addr_of(0).unwrap().port();
    let value = profile::channel_base(0);
    let flag = value + 2;
    let board = fleet.faults.clone();
    let add = |fault: Fault, from_s: u64, until_s: u64| {
        board.add(ScheduledFault {
            fault,
            target: Target::Node("n1".into()),
            from_ms: from_s * 1000,
            until_ms: Some(until_s * 1000),
        })
    };
    let read = move |float: bool, address: u16| {
        tokio::task::spawn_blocking(move || mbpoll(port, float, address, 1).remove(0))
    };

    fleet.step_to(10_000);
    assert_eq!(read(true, value).await.unwrap(), "15", "5 + 10 s of ramp");
    assert_eq!(read(false, flag).await.unwrap(), "78", "quality N");

    // A spike beyond the detector's 100 %LEL range: kept, flagged T (84).
    add(
        Fault::Spike {
            channel: 0,
            value: 110.0,
        },
        11,
        12,
    );
    fleet.step_to(11_000);
    let spiked: f64 = read(true, value).await.unwrap().parse().unwrap();
    assert!((spiked - 110.0).abs() < 0.1, "{spiked}");
    assert_eq!(read(false, flag).await.unwrap(), "84", "quality T");

    // The sensor fails: flagged D (68), the last value held.
    add(Fault::SensorFault { channel: Some(0) }, 12, 13);
    fleet.step_to(12_000);
    assert_eq!(read(false, flag).await.unwrap(), "68", "quality D");

    // Stuck for 5 s: the value stops at the last good one although the ramp goes on.
    add(Fault::StuckValue { channel: Some(0) }, 14, 19);
    fleet.step_to(13_000);
    let before: f64 = read(true, value).await.unwrap().parse().unwrap();
    fleet.step_to(18_000);
    let stuck: f64 = read(true, value).await.unwrap().parse().unwrap();
    assert!((before - 18.0).abs() < 0.1, "{before}");
    assert_eq!(stuck, before, "the value did not follow the ramp");
    fleet.step_to(19_000);
    let after: f64 = read(true, value).await.unwrap().parse().unwrap();
    assert!(
        (after - 24.0).abs() < 0.1,
        "following the ramp again: {after}"
    );
    server.shutdown().await;
}
