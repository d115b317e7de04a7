//! Durable ingestion throughput: readings/s through the gateway's ingestion stage with the
//! outbox on — each batch transformed (de-duplication, timestamps, range), evaluated by the
//! alarm engine (the shipped rules), committed to the outbox with `synchronous=FULL` and only
//! then acknowledged to its source, then read back by a feeder and confirmed by a sink.
//!
//! `cargo bench -p tianzhong-gateway --bench ingest`. What the sources cost (MQTT parsing,
//! Modbus polling) is measured by the gateway benchmark; this one is the part every reading
//! pays whatever its transport, fed in process by `TIANZHONG_BENCH_SOURCES` tasks (default 16)
//! that each keep 64 batches unacknowledged: 1,024 in all, as one MQTT connection with the
//! broker's in-flight window raised to 1,000 (see deploy/README.md) has. Acknowledgement waits
//! for the group commit (20 ms), so the window, not the CPU, bounds small batches. Cases:
//! batches of 8 readings (one message of an eight-channel node, or one Modbus poll) and of
//! 100 (a concentrator's message).
//!
//! Measured on the 2-core machine (load 3–4 from other builds): 8-reading batches 237,861
//! readings/s acknowledged (0.79 cores, 3.34 CPU s per 10^6), 100-reading batches 347,801 –
//! 471,752/s (1.0 core). Before the ingestion stage coalesced queued batches, 8-reading
//! batches cost 6.17 CPU s per 10^6 readings and peaked at 172,925/s, one core.
//!
//! Environment: `TIANZHONG_BENCH_SECONDS` (measured window per case, default 10).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use tianzhong_gateway::alarm::{AlarmEngine, AqiTable, default_rules};
use tianzhong_gateway::config::PipelineSettings;
use tianzhong_gateway::metrics::{DeviceTable, Metrics};
use tianzhong_gateway::outbox::{Outbox, OutboxConfig};
use tianzhong_gateway::pipeline::{Acker, Event, Ingest, Output, Record, feed};
use tianzhong_gateway::transforms::Transforms;
use tianzhong_protocol::reading::{ChannelId, Timestamp};
use tianzhong_protocol::{NodeId, Quality, Quantity, Reading, SiteId};

const NODES_PER_SOURCE: usize = 2_500;
const IN_FLIGHT: usize = 64;

fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, a)| a);
    let f: Vec<&str> = after.split_whitespace().collect();
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (t(11) + t(12)) / 100.0
}

fn rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

const QUANTITIES: [Quantity; 8] = [
    Quantity::CombustibleGas,
    Quantity::Oxygen,
    Quantity::Co,
    Quantity::H2s,
    Quantity::Temperature,
    Quantity::RelativeHumidity,
    Quantity::Pm25,
    Quantity::Pm10,
];

/// Batch `k` of source `s`: `size` readings of consecutive nodes' channels, each (node,
/// channel) with its own rising sequence number, values inside every shipped set point.
fn batch(site: &SiteId, nodes: &[NodeId], s: usize, k: usize, size: usize) -> Vec<Record> {
    let now_ms = tianzhong_gateway::pipeline::unix_ms();
    (0..size)
        .map(|i| {
            let slot = k * size + i;
            let ch = slot % 8;
            let n = (slot / 8) % nodes.len();
            let round = slot / (8 * nodes.len());
            let q = QUANTITIES[ch];
            let value = match q {
                Quantity::Oxygen => 20.9,
                Quantity::Temperature => 21.5,
                Quantity::RelativeHumidity => 55.0,
                _ => 1.0 + (n % 5) as f64 * 0.1,
            };
            Record {
                site: site.clone(),
                reading: Reading::new(
                    nodes[n].clone(),
                    ChannelId(ch as u16),
                    q,
                    value,
                    Timestamp(now_ms),
                    (round * 1000 + s) as u32,
                    Quality::Good,
                )
                .unwrap(),
                received_ms: now_ms,
                device_time: false,
            }
        })
        .collect()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let seconds: u64 = std::env::var("TIANZHONG_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let sources: usize = std::env::var("TIANZHONG_BENCH_SOURCES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(16);
    for size in [8, 100] {
        run_case(size, sources, Duration::from_secs(seconds));
    }
}

fn run_case(size: usize, sources: usize, window: Duration) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = std::env::temp_dir().join(format!("tz-bench-ingest-{}-{size}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    runtime.block_on(async {
        let metrics = Arc::new(Metrics::new(DeviceTable::default()));
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        let engine = AlarmEngine::new(default_rules(AqiTable::default())).unwrap();
        // The gateway's own outbox settings: 20 ms group commits, fsync on.
        let outbox = Arc::new(
            Outbox::open(
                &dir.join("outbox.sqlite"),
                OutboxConfig {
                    fsync_interval: Duration::from_millis(20),
                    sinks: vec!["sink".into()],
                    ..OutboxConfig::default()
                },
            )
            .unwrap(),
        );
        let mut ingest = Ingest::new(
            rx,
            Transforms::new(&PipelineSettings::default(), &[]),
            Arc::clone(&metrics),
        )
        .with_alarms(engine)
        .with_outbox(Arc::clone(&outbox));
        let (mut sink_rx, feeder_tx) = ingest.add_sink_fed("sink", 1024);
        let (acker, confirmations) = Acker::channel();
        let (done_tx, done_rx) = tokio::sync::watch::channel(false);
        let feeder = tokio::spawn(feed::run(
            Arc::clone(&outbox),
            "sink".into(),
            feeder_tx,
            confirmations,
            done_rx,
            Some(ingest.accounts()),
        ));
        let ingest = tokio::spawn(ingest.run());
        let confirmed = Arc::new(AtomicU64::new(0));
        let sink = {
            let confirmed = Arc::clone(&confirmed);
            tokio::spawn(async move {
                while let Some(d) = sink_rx.recv().await {
                    if let Output::Readings(r) = &d.output {
                        confirmed.fetch_add(r.len() as u64, Relaxed);
                    }
                    acker.done(d.batch);
                }
            })
        };

        let acknowledged = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let site = SiteId::new("bench").unwrap();
        let mut producers = Vec::new();
        for s in 0..sources {
            let tx = tx.clone();
            let acknowledged = Arc::clone(&acknowledged);
            let stop = Arc::clone(&stop);
            let site = site.clone();
            let nodes: Vec<NodeId> = (0..NODES_PER_SOURCE)
                .map(|n| NodeId::new(&format!("s{s}-n{n:05}")).unwrap())
                .collect();
            producers.push(tokio::spawn(async move {
                let mut waiting: VecDeque<tokio::sync::oneshot::Receiver<()>> = VecDeque::new();
                let mut k = 0;
                while !stop.load(Relaxed) {
                    if waiting.len() >= IN_FLIGHT {
                        let r = waiting.pop_front().unwrap();
                        if r.await.is_err() {
                            panic!("a batch was not stored");
                        }
                        acknowledged.fetch_add(size as u64, Relaxed);
                    }
                    let (receipt, r) = tokio::sync::oneshot::channel();
                    let b = batch(&site, &nodes, s, k, size);
                    k += 1;
                    if tx.send(Event::Acked(b, receipt)).await.is_err() {
                        break;
                    }
                    waiting.push_back(r);
                }
                for r in waiting {
                    if r.await.is_ok() {
                        acknowledged.fetch_add(size as u64, Relaxed);
                    }
                }
            }));
        }
        drop(tx);
        // Warm-up, then the measured window.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (a0, c0, cpu0, t0) = (
            acknowledged.load(Relaxed),
            confirmed.load(Relaxed),
            cpu_seconds(),
            Instant::now(),
        );
        let mut peak_rss = rss_mb();
        while t0.elapsed() < window {
            tokio::time::sleep(Duration::from_millis(250)).await;
            peak_rss = peak_rss.max(rss_mb());
        }
        let (a1, c1, cpu1, wall) = (
            acknowledged.load(Relaxed),
            confirmed.load(Relaxed),
            cpu_seconds(),
            t0.elapsed().as_secs_f64(),
        );
        stop.store(true, Relaxed);
        for p in producers {
            p.await.unwrap();
        }
        ingest.await.unwrap();
        done_tx.send_replace(true);
        feeder.await.unwrap();
        sink.await.unwrap();
        let acked_rate = (a1 - a0) as f64 / wall;
        println!(
            "durable ingestion, batches of {size}: {acked_rate:.0} readings/s acknowledged \
             (durable), {:.0} readings/s confirmed by the sink, over {wall:.1} s | {:.2} cores, \
             {:.2} CPU s per 10^6 readings | RSS {:.1} MB peak | {} forwarded in all",
            (c1 - c0) as f64 / wall,
            (cpu1 - cpu0) / wall,
            (cpu1 - cpu0) / ((a1 - a0) as f64 / 1e6),
            peak_rss,
            metrics.readings_forwarded.get(),
        );
        outbox.close().await.unwrap();
    });
    let _ = std::fs::remove_dir_all(&dir);
}
