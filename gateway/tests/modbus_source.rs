//! The Modbus source against a simulated node on Modbus TCP: a register map that reaches past
//! what the device has is split on "illegal data address" until the readable channels are
//! read, and the device is not treated as failing.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use tianzhong_gateway::config;
use tianzhong_gateway::gateway::Gateway;
use tianzhong_simulator::clock::SimClock;
use tianzhong_simulator::fleet::Fleet;
use tianzhong_simulator::scenario;
use tianzhong_simulator::transport::{self, Transport};

const SCENARIO: &str = r#"
[scenario]
name = "split"
seed = 3

[[site]]
id = "lab"
name = "Lab"

[[bus]]
name = "bench"
kind = "modbus_tcp"
listen = "127.0.0.1:0"
per_node = false

[[node]]
id = "one-channel"
site = "lab"
bus = "bench"
unit = 1
model = "TZ-GD100"
[[node.channel]]
quantity = "oxygen"
signal = [{ kind = "constant", value = 20.9 }]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_map_past_the_device_is_split_and_the_readable_channel_still_arrives() {
    let spec = scenario::parse(SCENARIO, Path::new("split.toml")).unwrap();
    let fleet = Arc::new(Fleet::build(&spec, SimClock::new(0, 1.0), false).unwrap());
    let started = transport::start_all(&fleet, 3).await.unwrap();
    let Transport::Tcp(server) = &started[0] else {
        panic!("a TCP bus")
    };
    let addr = server.addrs()[0];
    fleet.step_to(3_000);
    // Channel 0's value and quality are where the profile puts them; "channel 1" is mapped
    // into the block of a second channel the node does not have. With max_gap 8 the plan
    // first reads both in one request, which the node refuses with exception 02.
    let dir = std::env::temp_dir().join(format!("tz-split-{}", std::process::id()));
    let text = format!(
        r#"[gateway]
id = "gw"
data_dir = {dir:?}
http_listen = "off"
[sink.local_store]
enabled = false
[[bus]]
name = "bench"
kind = "modbus_tcp"
address = "{addr}"
max_gap = 8
[[device]]
id = "one-channel"
site = "lab"
bus = "bench"
unit = 1
poll_interval_s = 0.2
[[device.channel]]
channel = 0
quantity = "oxygen"
table = "input"
address = 0x0110
data_type = "f32"
quality_address = 0x0112
[[device.channel]]
channel = 1
quantity = "oxygen"
table = "input"
address = 0x0118
data_type = "f32"
"#,
        dir = dir.display().to_string()
    );
    let c = config::parse(&text, Path::new("split.toml"), &|_| None).unwrap();
    let gateway = Gateway::start(c).await.unwrap();
    let metrics = Arc::clone(gateway.metrics());
    let deadline = Instant::now() + Duration::from_secs(20);
    while metrics.readings_forwarded.get() < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let row = &metrics.devices.rows[0].counters;
    let forwarded = metrics.readings_forwarded.get();
    let (splits, ok, timeouts, malformed) = (
        row.splits.load(Relaxed),
        row.ok.load(Relaxed),
        row.timeouts.load(Relaxed),
        row.malformed.load(Relaxed),
    );
    gateway.shutdown(Duration::from_secs(5)).await;
    for t in started {
        t.shutdown().await;
    }
    // 0x0110..0x011A refused, split into 0x0110..0x0113 and 0x0118..0x011A; the second
    // refused again and dropped as unreadable: two splits, learnt once.
    assert_eq!(splits, 2);
    assert!(
        forwarded >= 3,
        "channel 0 should keep arriving, got {forwarded}"
    );
    assert!(ok >= 3, "polls should succeed once split, ok {ok}");
    assert_eq!(
        (timeouts, malformed),
        (0, 0),
        "an exception 02 is an answer, not a failure"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
