//! Firmware transfer over Modbus RTU at 115200 baud: the effective payload rate as a fraction
//! of the raw line rate (issue 8: at least 75 %).
//!
//! The gateway's flash path (`flash_rtu`, its own RTU master) sends a signed image of 160 KiB
//! to a node on the simulator's RTU line (`tianzhong_simulator::rtu_line`), which runs the
//! firmware's RTU slave and update files on simulated flash. The line keeps its own clock: every
//! character takes 11 bits / 115200 s in both directions, the master keeps t3.5 (1.75 ms)
//! after every frame and its turnaround after every broadcast, the node replies 0.5 ms after
//! its t3.5. The time reported is that line time, from the offer's first character to the
//! finish's reply, computed from the characters and silences actually exchanged: a
//! millisecond timer cannot pace 95 µs characters, and wall-clock time on a shared machine
//! would measure the machine.
//!
//! Raw line rate: 115200 / 11 = 10,473 bytes/s (8 data bits in 11 on the wire). Payload: the
//! image's bytes, once each.
//!
//! `cargo bench -p tianzhong-gateway --bench flash_line`

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use tianzhong_gateway::flash::{CHUNK, FlashReport, RtuMode, STREAM_BYTES, flash_rtu};
use tianzhong_gateway::rtu_master::RtuMaster;
use tianzhong_protocol::registers::profile::FirmwareVersion;
use tianzhong_simulator::rtu_line::{LINE_MODEL, LineNode, LossFn, SimRtuLine};
use tianzhong_simulator::update::sim_image;

const BAUD: u32 = 115_200;
const UNIT: u8 = 3;
const PAYLOAD: usize = 160 * 1024;
const TARGET: f64 = 0.75;

struct Run {
    report: FlashReport,
    line_s: f64,
    lost: u64,
    chars: (u64, u64),
    turnaround: Duration,
}

fn run(image: &[u8], mode: RtuMode, lose: Option<LossFn>) -> Run {
    let line = SimRtuLine::new(BAUD, vec![LineNode::new(UNIT, BAUD)]);
    let mut master = RtuMaster::new(line, UNIT, BAUD, Duration::from_millis(100));
    if let Some(lose) = lose {
        master.line.lose_frames(lose);
    }
    let turnaround = master.turnaround;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let report = runtime
        .block_on(flash_rtu(&mut master, image, mode, |_| {
            ControlFlow::Continue(())
        }))
        .expect("the flash completes");
    let node = &mut master.line.nodes[0];
    // Not a measurement unless the node has the image: staged after the finish's checks.
    assert_eq!(node.status()[0], 2, "the node staged the image");
    assert_eq!(
        node.slot_bytes(1, image.len()),
        image,
        "slot B holds the image"
    );
    Run {
        report,
        line_s: master.line.now_ns() as f64 / 1e9,
        lost: master.line.stats.frames_lost,
        chars: (
            master.line.stats.chars_sent,
            master.line.stats.chars_received,
        ),
        turnaround,
    }
}

fn main() {
    let image = sim_image(
        LINE_MODEL,
        FirmwareVersion {
            major: 1,
            minor: 1,
            patch: 0,
        },
        2,
        PAYLOAD,
    );
    let raw = f64::from(BAUD) / 11.0;
    let started = Instant::now();
    println!(
        "flash_line: signed image of {} bytes over simulated Modbus RTU at {BAUD} baud \
         (11 bits per character); raw line rate {raw:.0} bytes/s",
        image.len()
    );
    println!(
        "{:<28} {:>6} {:>9} {:>11} {:>7} {:>6} {:>8} {:>10} {:>7}",
        "mode",
        "window",
        "line s",
        "payload B/s",
        "ratio",
        "lost",
        "go-backs",
        "resent B",
        "status"
    );
    let mut headline = None;
    let cases: Vec<(&str, RtuMode, Option<u32>)> = vec![
        ("plain FC21, 128 B chunks", RtuMode::Plain, None),
        ("stream", RtuMode::Stream { window: 8 }, None),
        ("stream", RtuMode::Stream { window: 16 }, None),
        ("stream", RtuMode::Stream { window: 32 }, None),
        ("stream", RtuMode::Stream { window: 64 }, None),
        (
            "stream, every 37th lost",
            RtuMode::Stream { window: 32 },
            Some(37),
        ),
        (
            "stream, every 37th lost",
            RtuMode::Stream { window: 16 },
            Some(37),
        ),
    ];
    let mut turnaround = Duration::ZERO;
    for (name, mode, lose_every) in cases {
        let lose: Option<LossFn> = lose_every.map(|k| {
            let k = u64::from(k);
            Box::new(move |i: u64, adu: &[u8]| adu[0] == 0 && i % k == k - 1) as LossFn
        });
        let r = run(&image, mode, lose);
        turnaround = r.turnaround;
        let rate = image.len() as f64 / r.line_s;
        let ratio = rate / raw;
        let window = match mode {
            RtuMode::Stream { window } => window.to_string(),
            RtuMode::Plain => "-".into(),
        };
        println!(
            "{name:<28} {window:>6} {:>9.2} {rate:>11.0} {:>6.1}% {:>6} {:>8} {:>10} {:>7}",
            r.line_s,
            100.0 * ratio,
            r.lost,
            r.report.go_backs,
            r.report.resent_bytes,
            r.report.status_reads,
        );
        // Line use, as a check on the clock: characters both ways at 11 bits.
        let busy = (r.chars.0 + r.chars.1) as f64 * 11.0 / f64::from(BAUD);
        assert!(busy <= r.line_s, "the line cannot carry more than its rate");
        if mode == (RtuMode::Stream { window: 32 }) && lose_every.is_none() {
            headline = Some(ratio);
        }
    }
    let ratio = headline.expect("the window-32 case ran");
    println!(
        "chunk size {CHUNK} B (node's flash unit of transfer); {STREAM_BYTES} image bytes per \
         stream write; turnaround after a broadcast {} µs; default window 32",
        turnaround.as_micros()
    );
    println!(
        "headline (stream, window 32, no loss): {:.1} % of the raw line rate; target {:.0} %: {}",
        100.0 * ratio,
        100.0 * TARGET,
        if ratio >= TARGET { "met" } else { "NOT met" }
    );
    println!(
        "(wall clock for all cases: {:.3} s)",
        started.elapsed().as_secs_f64()
    );
}
