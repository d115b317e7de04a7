//! Alarm evaluation at 100 000 readings/s: latency from a reading entering the ingestion
//! stage to its alarm transition being handed to the sinks (the point where upstream MQTT,
//! InfluxDB, the local store and the audit log each take it).
//!
//! `cargo bench -p tianzhong-gateway --bench alarms`. A feeder sends batches of 100 readings
//! every millisecond from 10 000 combustible-gas detectors (the shipped GB/T 50493 rules);
//! one detector in fifty swings across the 25 and 50 %LEL set points, so some 2 % of readings
//! raise, escalate or clear an alarm. A sink task records, for each batch that produced
//! transitions, the time from the feeder sending it to the transitions arriving.
//!
//! Environment: `TIANZHONG_BENCH_SECONDS` (default 10), `TIANZHONG_BENCH_RATE` (readings/s,
//! default 100 000).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tianzhong_gateway::alarm::{AlarmEngine, AqiTable, default_rules};
use tianzhong_gateway::config::PipelineSettings;
use tianzhong_gateway::metrics::{DeviceTable, Metrics};
use tianzhong_gateway::pipeline::{Event, Ingest, Output, Record};
use tianzhong_gateway::transforms::Transforms;
use tianzhong_protocol::reading::{ChannelId, Timestamp};
use tianzhong_protocol::{NodeId, Quality, Quantity, Reading, SiteId};

const NODES: usize = 10_000;
const BATCH: usize = 100;

fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, a)| a);
    let f: Vec<&str> = after.split_whitespace().collect();
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (t(11) + t(12)) / 100.0
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let seconds: u64 = std::env::var("TIANZHONG_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let rate: usize = std::env::var("TIANZHONG_BENCH_RATE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let metrics = Arc::new(Metrics::new(DeviceTable::default()));
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        let engine = AlarmEngine::new(default_rules(AqiTable::default())).unwrap();
        let mut ingest = Ingest::new(
            rx,
            Transforms::new(&PipelineSettings::default(), &[]),
            Arc::clone(&metrics),
        )
        .with_alarms(engine);
        let mut sink = ingest.add_sink("bench", 1024);
        let ingest = tokio::spawn(ingest.run());

        let nodes: Vec<NodeId> = (0..NODES)
            .map(|n| NodeId::new(&format!("gas-{n:05}")).unwrap())
            .collect();
        let site = SiteId::new("bench").unwrap();
        // When batch k was sent; the batch's first record carries k in its seq high bits.
        let sent: Arc<Mutex<Vec<Instant>>> = Arc::default();
        let latencies: Arc<Mutex<Vec<Duration>>> = Arc::default();
        let transitions = Arc::new(std::sync::atomic::AtomicU64::new(0));

        let collector = {
            let sent = Arc::clone(&sent);
            let latencies = Arc::clone(&latencies);
            let transitions = Arc::clone(&transitions);
            tokio::spawn(async move {
                let mut last_batch = None;
                while let Some(out) = sink.recv().await {
                    match out.output {
                        Output::Readings(r) => last_batch = Some(r[0].reading.seq as usize),
                        Output::Alarms(a) => {
                            let at = Instant::now();
                            transitions
                                .fetch_add(a.len() as u64, std::sync::atomic::Ordering::Relaxed);
                            if let Some(k) = last_batch {
                                let t0 = sent.lock().unwrap()[k];
                                latencies.lock().unwrap().push(at - t0);
                            }
                        }
                        Output::Status(_) => {}
                    }
                }
            })
        };

        let batches_per_s = rate / BATCH;
        let period = Duration::from_secs_f64(1.0 / batches_per_s as f64);
        let total = batches_per_s * seconds as usize;
        let cpu0 = cpu_seconds();
        let started = Instant::now();
        let mut next = started;
        let mut cursor = 0usize;
        for k in 0..total {
            let now_ms = tianzhong_gateway::pipeline::unix_ms();
            let mut batch = Vec::with_capacity(BATCH);
            for _ in 0..BATCH {
                let n = cursor % NODES;
                let round = cursor / NODES;
                cursor += 1;
                // One detector in fifty swings 10 → 30 → 60 → 30 → 10 %LEL, a step per round.
                let value = if n.is_multiple_of(50) {
                    [10.0, 30.0, 60.0, 30.0][round % 4]
                } else {
                    2.0 + (n % 7) as f64 * 0.1
                };
                batch.push(Record {
                    site: site.clone(),
                    reading: Reading::new(
                        nodes[n].clone(),
                        ChannelId(0),
                        Quantity::CombustibleGas,
                        value,
                        Timestamp(now_ms),
                        // Unique per (node, channel); the first record's seq also names its batch.
                        if batch.is_empty() { k as u32 } else { (round * 1_000_000 + k) as u32 },
                        Quality::Good,
                    )
                    .unwrap(),
                    received_ms: now_ms,
                    device_time: false,
                });
            }
            sent.lock().unwrap().push(Instant::now());
            if tx.send(Event::Readings(batch)).await.is_err() {
                break;
            }
            next += period;
            tokio::time::sleep_until(next.into()).await;
        }
        let wall = started.elapsed().as_secs_f64();
        drop(tx);
        ingest.await.unwrap();
        collector.await.unwrap();
        let cpu = cpu_seconds() - cpu0;
        let mut l = latencies.lock().unwrap().clone();
        l.sort();
        let pct = |p: f64| {
            l.get(((l.len() as f64 * p) as usize).min(l.len().saturating_sub(1)))
                .map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
        };
        println!(
            "alarm evaluation: {:.0} readings/s offered for {wall:.1} s, {} forwarded, {} transitions in {} batches | latency reading -> transition at the sinks: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms | process CPU {:.2} cores",
            (total * BATCH) as f64 / wall,
            metrics.readings_forwarded.get(),
            transitions.load(std::sync::atomic::Ordering::Relaxed),
            l.len(),
            pct(0.50),
            pct(0.99),
            l.last().map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0),
            cpu / wall,
        );
    });
}
