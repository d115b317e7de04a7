//! `tianzhong probe` against a simulated Tianzhong node served over Modbus TCP: the probe
//! learns the node's channels from its own registers and prints the values the node holds;
//! the node's sample log (the simulator's ground truth) is the reference.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tianzhong_gateway::config::{self, Link};
use tianzhong_gateway::probe::{ProbeTarget, probe};
use tianzhong_simulator::clock::SimClock;
use tianzhong_simulator::fleet::Fleet;
use tianzhong_simulator::scenario;
use tianzhong_simulator::transport::{self, Transport};

const SCENARIO: &str = r#"
[scenario]
name = "probe"
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
signal = [{ kind = "constant", value = 12.5 }, { kind = "noise", sigma = 0.3 }]
[[node.channel]]
quantity = "oxygen"
signal = [{ kind = "constant", value = 20.9 }]
"#;

/// The values the report prints for each quantity key.
fn values(report: &str) -> Vec<(String, f64, String)> {
    report
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // `ch0 combustible_gas 12.31 %LEL quality N (…) [...]`
            (f.len() > 5 && f[0].starts_with("ch") && f[4] == "quality").then(|| {
                (
                    f[1].to_owned(),
                    f[2].parse::<f64>().unwrap(),
                    f[3].to_owned(),
                )
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_reads_a_self_describing_node_and_a_configured_map_alike() {
    let spec = scenario::parse(SCENARIO, Path::new("probe.toml")).unwrap();
    let fleet = Arc::new(Fleet::build(&spec, SimClock::new(0, 1.0), true).unwrap());
    let started = transport::start_all(&fleet, 7).await.unwrap();
    let Transport::Tcp(server) = &started[0] else {
        panic!("a TCP bus")
    };
    let addr = server.addrs()[0];
    // Five simulated seconds of samples; the clock is not running, so the registers hold
    // still while the probe reads them.
    fleet.step_to(5_000);
    let samples = fleet.truth.samples();
    let last = |ch: u16| {
        samples
            .iter()
            .filter(|s| s.channel == ch)
            .max_by_key(|s| s.seq)
            .map(|s| s.value)
            .unwrap()
    };

    let report = probe(ProbeTarget {
        link: Link::Tcp {
            address: addr.to_string(),
        },
        unit: 3,
        timeout: Duration::from_secs(2),
        device: None,
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(report.contains("TZ-GD100"), "{report}");
    let got = values(&report);
    assert_eq!(got.len(), 2, "{report}");
    assert_eq!(got[0].0, "combustible_gas");
    assert_eq!(got[0].1 as f32, last(0), "{report}");
    assert_eq!(got[0].2, "%LEL");
    assert_eq!(
        (got[1].0.as_str(), got[1].1, got[1].2.as_str()),
        ("oxygen", 20.9, "%vol")
    );

    // The same node through a configuration: an inline map of its value registers.
    let text = format!(
        r#"[gateway]
id = "gw"
data_dir = "/tmp"
[[bus]]
name = "bench"
kind = "modbus_tcp"
address = "{addr}"
[[device]]
id = "lab-gas-1"
site = "lab"
bus = "bench"
unit = 3
poll_interval_s = 1
[[device.channel]]
channel = 0
quantity = "combustible_gas"
table = "input"
address = 0x0110
data_type = "f32"
quality_address = 0x0112
"#
    );
    let c = config::parse(&text, Path::new("probe.toml"), &|_| None).unwrap();
    let report = probe(ProbeTarget::from_config(&c, "lab-gas-1").unwrap())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let got = values(&report);
    assert_eq!(got.len(), 1, "{report}");
    assert_eq!(got[0].1 as f32, last(0), "{report}");

    // A unit nobody answers to: the serial server's exception 0B, named with the unit.
    let err = probe(ProbeTarget {
        link: Link::Tcp {
            address: addr.to_string(),
        },
        unit: 9,
        timeout: Duration::from_secs(2),
        device: None,
    })
    .await
    .unwrap_err();
    assert!(
        err.contains("unit 9") && err.contains("exception 0B"),
        "{err}"
    );

    for t in started {
        t.shutdown().await;
    }
}
