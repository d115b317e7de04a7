//! Flashing over a simulated Modbus RTU line at 115200 baud, with the gateway's own RTU master:
//! the image streams in broadcast writes to the node's stream file, lost writes are sent again
//! from the chunk the node asks for, and a second node on the bus is left alone.

use std::ops::ControlFlow;
use std::time::Duration;

use tianzhong_gateway::flash::{CHUNK, RtuMode, STREAM_BYTES, flash_rtu};
use tianzhong_gateway::rtu_master::RtuMaster;
use tianzhong_protocol::registers::profile::FirmwareVersion;
use tianzhong_simulator::rtu_line::{LINE_MODEL, LineNode, SimRtuLine};
use tianzhong_simulator::update::sim_image;

const BAUD: u32 = 115_200;
const UNIT: u8 = 3;
const OTHER: u8 = 4;

fn image(payload: usize) -> Vec<u8> {
    sim_image(
        LINE_MODEL,
        FirmwareVersion {
            major: 1,
            minor: 1,
            patch: 0,
        },
        2,
        payload,
    )
}

fn master(nodes: Vec<LineNode>) -> RtuMaster<SimRtuLine> {
    RtuMaster::new(
        SimRtuLine::new(BAUD, nodes),
        UNIT,
        BAUD,
        Duration::from_millis(100),
    )
}

#[tokio::test]
async fn a_stream_with_every_37th_write_lost_stages_the_image_and_counts_the_repeats() {
    let image = image(64 * 1024);
    let mut m = master(vec![LineNode::new(UNIT, BAUD), LineNode::new(OTHER, BAUD)]);
    let other_before = m.line.nodes[1].slot_bytes(1, image.len()).to_vec();
    m.line
        .lose_frames(Box::new(|i, adu| adu[0] == 0 && i % 37 == 36));
    let report = flash_rtu(&mut m, &image, RtuMode::Stream { window: 16 }, |_| {
        ControlFlow::Continue(())
    })
    .await
    .expect("the flash completes");

    // Staged: the finish checked size, SHA-256, signature, hardware and counter.
    let node = &mut m.line.nodes[0];
    let s = node.status();
    assert_eq!((s[0], s[5]), (2, 0), "staged, no refusal: {s:?}");
    assert_eq!(node.slot_bytes(1, image.len()), &image[..]);
    assert_eq!(node.slave.stats().responses, report.status_reads + 3);

    let lost = m.line.stats.frames_lost;
    assert!(lost > 0, "frames were lost");
    assert_eq!(
        report.go_backs as u64, lost,
        "one go-back per window with a loss"
    );
    assert!(report.resent_bytes > 0);
    let distinct = image.len() as u64;
    let streamed = u64::from(report.stream_writes) * STREAM_BYTES as u64;
    // Every stream write but the image's last carries 224 bytes: what was streamed is the image
    // and the resent bytes.
    assert!(streamed >= distinct + report.resent_bytes);
    assert!(streamed < distinct + report.resent_bytes + STREAM_BYTES as u64);
    assert!(!report.fell_back);
    assert_eq!(report.chunk_writes, 0);
    println!(
        "{} writes lost of {}: {} go-backs, {} bytes resent, {} status reads",
        lost, report.stream_writes, report.go_backs, report.resent_bytes, report.status_reads
    );

    // The other node heard every broadcast and did nothing with them.
    let other = &mut m.line.nodes[1];
    assert_eq!(other.status()[..6], [0, 0, 0, 0, 0, 0]);
    assert_eq!(
        u64::from(other.slave.stats().broadcasts) + lost,
        u64::from(report.stream_writes)
    );
    assert_eq!(other.slave.stats().responses, 0);
    assert_eq!(other.slot_bytes(1, image.len()), &other_before[..]);
}

/// A node busy erasing its transfer sector does not answer the offer in time: the offer is
/// repeated (not given up), and the transfer then runs as usual.
#[tokio::test]
async fn an_offer_left_unanswered_while_the_node_erases_is_made_again() {
    let image = image(4 * 1024);
    let mut m = master(vec![LineNode::new(UNIT, BAUD)]);
    // The first two offers (function 21 to the unit, file 0xF000) are lost on the line.
    let mut lost_offers = 0;
    m.line.lose_frames(Box::new(move |_, adu| {
        let offer = adu.len() > 6 && adu[0] == UNIT && adu[1] == 0x15 && adu[4..6] == [0xF0, 0x00];
        if offer && lost_offers < 2 {
            lost_offers += 1;
            return true;
        }
        false
    }));
    flash_rtu(&mut m, &image, RtuMode::Stream { window: 16 }, |_| {
        ControlFlow::Continue(())
    })
    .await
    .expect("the flash completes after the offer is repeated");
    assert_eq!(
        m.line.stats.frames_lost, 2,
        "both lost offers were the repeated ones"
    );
    assert_eq!(m.line.nodes[0].status()[0], 2, "staged");
    assert_eq!(m.line.nodes[0].slot_bytes(1, image.len()), &image[..]);
}

#[tokio::test]
async fn plain_chunk_writes_still_work_over_the_rtu_master() {
    let image = image(8 * 1024);
    let mut m = master(vec![LineNode::new(UNIT, BAUD)]);
    let report = flash_rtu(
        &mut m,
        &image,
        RtuMode::Plain,
        |_| ControlFlow::Continue(()),
    )
    .await
    .unwrap();
    assert_eq!(
        report.chunk_writes as usize,
        image.len().div_ceil(usize::from(CHUNK))
    );
    assert_eq!(report.stream_writes, 0);
    assert_eq!(m.line.nodes[0].status()[0], 2);
    assert_eq!(m.line.nodes[0].slot_bytes(1, image.len()), &image[..]);
}

#[tokio::test]
async fn a_stream_that_makes_no_progress_falls_back_to_chunk_writes() {
    // Every broadcast lost, as with a node whose firmware has no stream file.
    let image = image(4 * 1024);
    let mut m = master(vec![LineNode::new(UNIT, BAUD)]);
    m.line.lose_frames(Box::new(|_, adu| adu[0] == 0));
    let report = flash_rtu(&mut m, &image, RtuMode::Stream { window: 8 }, |_| {
        ControlFlow::Continue(())
    })
    .await
    .unwrap();
    assert!(report.fell_back);
    // A window of 8 lost, the halved window of 4 lost: no progress twice.
    assert_eq!(report.stream_writes, 8 + 4);
    assert_eq!(report.go_backs, 2, "both windows went back to chunk 0");
    assert_eq!(
        report.chunk_writes as usize,
        image.len().div_ceil(usize::from(CHUNK))
    );
    assert_eq!(m.line.nodes[0].status()[0], 2);
    assert_eq!(m.line.nodes[0].slot_bytes(1, image.len()), &image[..]);
}

/// `flash` over a simulated fleet's Modbus RTU bus on a pseudo-terminal: the real serial path
/// (tokio-serial, the gateway's RTU master in real time) streams to a virtual node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flash_over_a_pty_rtu_bus_streams_to_the_simulated_node() {
    use std::path::Path;
    use std::sync::Arc;
    use tianzhong_gateway::config::{Link, Parity, StopBits};
    use tianzhong_gateway::flash::flash;
    use tianzhong_gateway::probe::ProbeTarget;
    use tianzhong_simulator::clock::SimClock;
    use tianzhong_simulator::fleet::Fleet;
    use tianzhong_simulator::{scenario, transport};

    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("rtu");
    let toml = format!(
        r#"
[scenario]
name = "flash-rtu"
seed = 7

[[site]]
id = "lab"
name = "Lab bench"

[[bus]]
name = "line"
kind = "modbus_rtu"
link = "{}"
baud = 115200

[[node]]
id = "lab-gas-1"
site = "lab"
bus = "line"
unit = 3
model = "TZ-GD100"
[[node.channel]]
quantity = "combustible_gas"
signal = [{{ kind = "constant", value = 12.5 }}]
"#,
        link.display()
    );
    let spec = scenario::parse(&toml, Path::new("flash-rtu.toml")).unwrap();
    let fleet = Arc::new(Fleet::build(&spec, SimClock::new(0, 1.0), true).unwrap());
    let _transports = transport::start_all(&fleet, 7).await.unwrap();
    fleet.step_to(1_000);
    let target = ProbeTarget {
        link: Link::Rtu {
            device: link.clone(),
            baud: 115_200,
            parity: Parity::None,
            stop_bits: StopBits::One,
        },
        unit: 3,
        timeout: Duration::from_secs(2),
        device: None,
    };
    let image = sim_image(
        "TZ-GD100",
        FirmwareVersion {
            major: 1,
            minor: 2,
            patch: 0,
        },
        2,
        8 * 1024,
    );
    let report = flash(&target, &image, |_| ControlFlow::Continue(()))
        .await
        .expect("the flash completes");
    assert!(report.stream_writes > 0, "{report:?}");
    assert!(!report.fell_back, "the stream made progress: {report:?}");
    assert_eq!(report.chunk_writes, 0, "{report:?}");
    println!("over the pty: {report:?}");
}
