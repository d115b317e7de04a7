//! The InfluxDB sink task: readings are encoded into one line-protocol body as they arrive
//! and written when the body holds `batch_size` points or its oldest point has waited
//! `flush_interval`, whichever comes first.
//!
//! Nothing is given up for a slow or absent database. A retryable failure is retried by
//! [`Writer::write`] (backoff, `Retry-After`), and when its retries run out the body is tried
//! again after a pause, for as long as it takes, while the outbox behind the sink keeps the
//! backlog. A body is confirmed to the outbox (up to its newest batch) only after a 2xx.
//!
//! A 400 says some batch in the body is malformed. The body is then written batch by batch:
//! the good ones pass and are confirmed, and each one refused again is set aside as a dead
//! letter with the database's message, so one poisoned batch neither blocks the queue nor
//! takes good data with it. 401/403 and other refusals (a missing bucket) are configuration
//! faults: the body is retried after a pause until the configuration is fixed. Writes are
//! idempotent — a point's identity is its series and timestamp — so replays do not duplicate.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{error, info, warn};

use super::line_protocol::encode_reading;
use super::writer::{WriteError, WriteErrorKind, Writer};
use crate::metrics::{Metrics, SinkLabels};
use crate::outbox::BatchId;
use crate::pipeline::{Acker, Delivery, Output};

/// The longest pause between attempts at a body the database keeps refusing.
const MAX_PAUSE: Duration = Duration::from_secs(30);

/// A line-protocol body and the outbox batches it holds, each as a range of its lines.
#[derive(Default)]
struct Body {
    text: String,
    points: usize,
    /// (batch, start byte, points) in order; `None` for deliveries not from the outbox.
    batches: Vec<(Option<BatchId>, usize, usize)>,
}

impl Body {
    fn newest(&self) -> Option<BatchId> {
        self.batches.iter().rev().find_map(|b| b.0)
    }

    fn clear(&mut self) {
        self.text.clear();
        self.points = 0;
        self.batches.clear();
    }
}

/// Name of this sink in metrics and logs.
pub const SINK: &str = "influxdb";

/// Runs the sink until its channel closes, then flushes what it holds.
pub async fn run(
    writer: Writer,
    batch_size: usize,
    flush_interval: Duration,
    mut input: mpsc::Receiver<Delivery>,
    acker: Acker,
    metrics: Arc<Metrics>,
) {
    info!(endpoint = %writer.endpoint(), batch_size, ?flush_interval, "influxdb sink started");
    let mut body = Body {
        text: String::with_capacity(batch_size * 160),
        ..Body::default()
    };
    let mut deadline: Option<Instant> = None;
    loop {
        let next = match deadline {
            Some(at) => tokio::select! {
                next = input.recv() => next,
                _ = tokio::time::sleep_until(at) => {
                    flush(&writer, &mut body, &acker, &metrics).await;
                    deadline = None;
                    continue;
                }
            },
            None => input.recv().await,
        };
        let Some(delivery) = next else { break };
        let start = body.text.len();
        let before = body.points;
        match delivery.output {
            Output::Readings(records) => {
                for r in records.iter() {
                    match encode_reading(&mut body.text, &r.site, &r.reading) {
                        Ok(()) => body.points += 1,
                        Err(e) => {
                            metrics.sink_points(SINK, "refused", 1);
                            warn!(node = %r.reading.node, site = %r.site, "not writable as line protocol: {e}");
                        }
                    }
                }
            }
            Output::Alarms(events) => {
                for e in events.iter() {
                    if super::line_protocol::encode_alarm(&mut body.text, e).is_ok() {
                        body.points += 1;
                    }
                }
            }
            Output::Status(_) => {}
        }
        body.batches
            .push((delivery.batch, start, body.points - before));
        if body.points >= batch_size {
            flush(&writer, &mut body, &acker, &metrics).await;
            deadline = None;
        } else if deadline.is_none() {
            deadline = Some(Instant::now() + flush_interval);
        }
    }
    flush(&writer, &mut body, &acker, &metrics).await;
    info!("influxdb sink stopped");
}

fn kind_label(kind: WriteErrorKind) -> &'static str {
    match kind {
        WriteErrorKind::Malformed => "malformed",
        WriteErrorKind::Auth => "auth",
        WriteErrorKind::TooLarge => "too_large",
        WriteErrorKind::Throttled => "throttled",
        WriteErrorKind::Server => "server",
        WriteErrorKind::Timeout => "timeout",
        WriteErrorKind::Connect => "connect",
        WriteErrorKind::Transport => "transport",
        WriteErrorKind::Rejected => "rejected",
    }
}

/// Writes `text` until it is written or refused as malformed (or too large), pausing between
/// rounds of the writer's own retries.
async fn write_until_settled(
    writer: &Writer,
    text: &str,
    points: usize,
    metrics: &Metrics,
) -> Result<(), WriteError> {
    let mut pause = Duration::from_secs(1);
    loop {
        let started = std::time::Instant::now();
        let result = writer.write(text).await;
        metrics
            .sink_write_seconds
            .get_or_create(&SinkLabels {
                sink: SINK.to_owned(),
            })
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(report) => {
                metrics.sink_points(SINK, "written", points as u64);
                if report.attempts > 1 {
                    info!(
                        points,
                        attempts = report.attempts,
                        waited_ms = report.waited.as_millis() as u64,
                        "influxdb write succeeded after retrying"
                    );
                }
                return Ok(());
            }
            Err(e) => {
                metrics.sink_error(SINK, kind_label(e.kind));
                if matches!(e.kind, WriteErrorKind::Malformed | WriteErrorKind::TooLarge) {
                    return Err(e);
                }
                error!(
                    points,
                    "{e}; the points stay in the outbox, next attempt in {pause:?}"
                );
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_PAUSE);
            }
        }
    }
}

async fn flush(writer: &Writer, body: &mut Body, acker: &Acker, metrics: &Metrics) {
    if body.points == 0 {
        acker.done(body.newest());
        body.clear();
        return;
    }
    match write_until_settled(writer, &body.text, body.points, metrics).await {
        Ok(()) => acker.done(body.newest()),
        Err(e) if body.batches.len() == 1 => {
            let (batch, _, points) = body.batches[0];
            metrics.sink_points(SINK, "dead_lettered", points as u64);
            error!(
                points,
                batch = batch.map(|b| b.0),
                "{e}; set aside as a dead letter"
            );
            acker.rejected(batch, &e.to_string());
        }
        Err(e) => {
            warn!(
                points = body.points,
                batches = body.batches.len(),
                "{e}; writing its batches one by one to find the bad ones"
            );
            let ends: Vec<usize> = body
                .batches
                .iter()
                .skip(1)
                .map(|b| b.1)
                .chain([body.text.len()])
                .collect();
            for (&(batch, start, points), &end) in body.batches.iter().zip(&ends) {
                if points > 0 {
                    let text = &body.text[start..end];
                    if let Err(e) = write_until_settled(writer, text, points, metrics).await {
                        metrics.sink_points(SINK, "dead_lettered", points as u64);
                        error!(
                            points,
                            batch = batch.map(|b| b.0),
                            "{e}; set aside as a dead letter"
                        );
                        acker.rejected(batch, &e.to_string());
                        continue;
                    }
                }
                acker.done(batch);
            }
        }
    }
    body.clear();
}
