//! `tianzhong flash` against a simulated node served over Modbus TCP: the node runs the
//! firmware's real update receiver on simulated flash. The flash completes, the node resets
//! into the new image and reports its version in the identity block that `probe` reads; a
//! flash stopped halfway resumes where the node says; a refused image is refused with the
//! node's reason.

use std::ops::ControlFlow;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tianzhong_gateway::config::Link;
use tianzhong_gateway::flash::{FlashError, flash};
use tianzhong_gateway::probe::{ProbeTarget, probe};
use tianzhong_protocol::registers::profile::FirmwareVersion;
use tianzhong_simulator::clock::SimClock;
use tianzhong_simulator::fleet::Fleet;
use tianzhong_simulator::scenario;
use tianzhong_simulator::transport::{self, Transport};
use tianzhong_simulator::update::sim_image;

const SCENARIO: &str = r#"
[scenario]
name = "flash"
seed = 7

[[site]]
id = "lab"
name = "Lab bench"

[[bus]]
name = "bench"
kind = "modbus_tcp"
listen = "127.0.0.1:0"
per_node = false

[[node]]
id = "lab-gas-1"
site = "lab"
bus = "bench"
unit = 3
model = "TZ-GD100"
[[node.channel]]
quantity = "combustible_gas"
signal = [{ kind = "constant", value = 12.5 }]
"#;

fn version(minor: u8) -> FirmwareVersion {
    FirmwareVersion {
        major: 1,
        minor,
        patch: 0,
    }
}

async fn bench() -> (Arc<Fleet>, Vec<Transport>, ProbeTarget) {
    let spec = scenario::parse(SCENARIO, Path::new("flash.toml")).unwrap();
    let fleet = Arc::new(Fleet::build(&spec, SimClock::new(0, 1.0), true).unwrap());
    let started = transport::start_all(&fleet, 7).await.unwrap();
    let Transport::Tcp(server) = &started[0] else {
        panic!("a TCP bus")
    };
    let target = ProbeTarget {
        link: Link::Tcp {
            address: server.addrs()[0].to_string(),
        },
        unit: 3,
        timeout: Duration::from_secs(2),
        device: None,
    };
    fleet.step_to(1_000);
    (fleet, started, target)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flash_a_node_then_it_runs_and_reports_the_new_version() {
    let (fleet, _transports, target) = bench().await;
    let before = probe(target.clone()).await.unwrap();
    assert!(before.contains("firmware 1.0.0"), "{before}");

    let image = sim_image("TZ-GD100", version(1), 2, 6000);
    let mut lines = Vec::new();
    let report = flash(&target, &image, |p| {
        lines.push(p.line());
        ControlFlow::Continue(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(report.chunks as usize, image.len().div_ceil(128));
    assert_eq!((report.resumed_at, report.chunk_writes), (0, report.chunks));
    assert_eq!(lines.len(), report.chunks as usize);
    assert!(
        lines
            .last()
            .unwrap()
            .starts_with(&format!("[{}]", "#".repeat(30)))
    );

    // The node reset into the new image; the probe (the health poll) reads its version.
    let after = probe(target.clone()).await.unwrap();
    assert!(after.contains("firmware 1.1.0"), "{after}");
    let mut node = fleet.node(0);
    assert_eq!(node.firmware_update().version(), version(1));
    assert_eq!(
        node.firmware_update().running.kind,
        tianzhong_simulator::update::BootKind::Confirmed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_flash_resumes_where_the_node_is() {
    let (fleet, _transports, target) = bench().await;
    let image = sim_image("TZ-GD100", version(1), 2, 6000);
    let mut n = 0;
    let stopped = flash(&target, &image, |_| {
        n += 1;
        if n == 20 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })
    .await;
    assert!(
        matches!(stopped, Err(FlashError::Cancelled { next_chunk: 20 })),
        "{stopped:?}"
    );
    let report = flash(&target, &image, |_| ControlFlow::Continue(()))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(report.resumed_at, 20);
    assert_eq!(
        report.chunk_writes,
        report.chunks - 20,
        "no chunk sent twice"
    );
    assert_eq!(fleet.node(0).firmware_update().version(), version(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_image_is_refused_with_the_nodes_reason() {
    let (fleet, _transports, target) = bench().await;
    let image = sim_image("TZ-OTHER", version(1), 2, 600);
    let err = flash(&target, &image, |_| ControlFlow::Continue(()))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "offer: the node refused: wrong hardware model or revision (reason 1)"
    );
    assert_eq!(fleet.node(0).firmware_update().version(), version(0));
    let mut garbage = sim_image("TZ-GD100", version(1), 2, 600);
    garbage.truncate(100);
    assert!(matches!(
        flash(&target, &garbage, |_| ControlFlow::Continue(())).await,
        Err(FlashError::Image(_))
    ));
}

/// The simulator's injected update failures, as `flash` meets them: a damaged image is
/// refused by the node's own check at the finish, a power cut stops the transfer, and a
/// rollback stages the image but the node comes back on the old one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_update_failures_fail_as_the_simulator_says() {
    use tianzhong_simulator::fault::{Fault, ScheduledFault, Target};
    let image = sim_image("TZ-GD100", version(1), 2, 3000);
    for (fault, expect) in [
        (
            Fault::UpdateDamaged,
            Some(
                "finish: the node refused: SHA-256 differs from the trailer's: altered or damaged (reason 4)",
            ),
        ),
        (Fault::UpdatePowerCut, Some("chunk 8")),
        (Fault::UpdateRollback, None),
    ] {
        let (fleet, _transports, target) = bench().await;
        fleet.faults.add(ScheduledFault {
            fault: fault.clone(),
            target: Target::Node("lab-gas-1".into()),
            from_ms: 0,
            until_ms: None,
        });
        let result = flash(&target, &image, |_| ControlFlow::Continue(())).await;
        match expect {
            Some(e) => {
                let err = result.expect_err("the flash fails").to_string();
                assert!(err.contains(e), "{fault:?}: {err}");
            }
            None => {
                result.unwrap_or_else(|e| panic!("{fault:?}: {e}"));
            }
        }
        // Whatever failed, the node runs and reports its factory image.
        let after = probe(target.clone()).await.unwrap();
        assert!(after.contains("firmware 1.0.0"), "{fault:?}: {after}");
        let node = fleet.node(0);
        assert_eq!(node.running_firmware(), version(0), "{fault:?}");
    }
}
