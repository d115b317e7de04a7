//! The InfluxDB sink task: readings are encoded into one line-protocol body as they arrive
//! and written when the body holds `batch_size` points or its oldest point has waited
//! `flush_interval`, whichever comes first.
//!
//! A retryable failure is retried by [`Writer::write`] (backoff, `Retry-After`) while the
//! channel behind the sink fills and holds up the pipeline: nothing is dropped for a slow
//! database. A batch the database refuses (400, 401/403, 404) cannot be retried; it is
//! counted as rejected with its reason and logged. Keeping such batches for inspection is
//! the durable outbox's dead-letter queue.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{error, info, warn};

use super::line_protocol::encode_reading;
use super::writer::{WriteErrorKind, Writer};
use crate::metrics::{Metrics, SinkLabels};
use crate::pipeline::Output;

/// Name of this sink in metrics and logs.
pub const SINK: &str = "influxdb";

/// Runs the sink until its channel closes, then flushes what it holds.
pub async fn run(
    writer: Writer,
    batch_size: usize,
    flush_interval: Duration,
    mut input: mpsc::Receiver<Output>,
    metrics: Arc<Metrics>,
) {
    info!(endpoint = %writer.endpoint(), batch_size, ?flush_interval, "influxdb sink started");
    let mut body = String::with_capacity(batch_size * 160);
    let mut points = 0usize;
    let mut deadline: Option<Instant> = None;
    loop {
        let next = match deadline {
            Some(at) => tokio::select! {
                next = input.recv() => next,
                _ = tokio::time::sleep_until(at) => {
                    flush(&writer, &mut body, &mut points, &metrics).await;
                    deadline = None;
                    continue;
                }
            },
            None => input.recv().await,
        };
        let Some(output) = next else { break };
        let records = match output {
            Output::Readings(records) => records,
            Output::Alarms(events) => {
                for e in events.iter() {
                    if super::line_protocol::encode_alarm(&mut body, e).is_ok() {
                        points += 1;
                    }
                }
                if points > 0 && deadline.is_none() {
                    deadline = Some(Instant::now() + flush_interval);
                }
                continue;
            }
            Output::Status(_) => continue,
        };
        for r in records.iter() {
            match encode_reading(&mut body, &r.site, &r.reading) {
                Ok(()) => points += 1,
                Err(e) => {
                    metrics.sink_points(SINK, "refused", 1);
                    warn!(node = %r.reading.node, site = %r.site, "not writable as line protocol: {e}");
                }
            }
            if points >= batch_size {
                flush(&writer, &mut body, &mut points, &metrics).await;
                deadline = None;
            }
        }
        if points > 0 && deadline.is_none() {
            deadline = Some(Instant::now() + flush_interval);
        }
    }
    flush(&writer, &mut body, &mut points, &metrics).await;
    info!("influxdb sink stopped");
}

async fn flush(writer: &Writer, body: &mut String, points: &mut usize, metrics: &Metrics) {
    if *points == 0 {
        return;
    }
    let n = *points as u64;
    let started = std::time::Instant::now();
    match writer.write(body).await {
        Ok(report) => {
            metrics.sink_points(SINK, "written", n);
            if report.attempts > 1 {
                info!(
                    points = n,
                    attempts = report.attempts,
                    waited_ms = report.waited.as_millis() as u64,
                    "influxdb write succeeded after retrying"
                );
            }
        }
        Err(e) => {
            let kind = match e.kind {
                WriteErrorKind::Malformed => "malformed",
                WriteErrorKind::Auth => "auth",
                WriteErrorKind::TooLarge => "too_large",
                WriteErrorKind::Throttled => "throttled",
                WriteErrorKind::Server => "server",
                WriteErrorKind::Timeout => "timeout",
                WriteErrorKind::Connect => "connect",
                WriteErrorKind::Transport => "transport",
                WriteErrorKind::Rejected => "rejected",
            };
            metrics.sink_error(SINK, kind);
            metrics.sink_points(SINK, "rejected", n);
            error!(points = n, "{e}");
        }
    }
    metrics
        .sink_write_seconds
        .get_or_create(&SinkLabels {
            sink: SINK.to_owned(),
        })
        .observe(started.elapsed().as_secs_f64());
    body.clear();
    *points = 0;
}
