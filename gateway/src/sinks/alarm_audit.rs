//! The alarm audit log: every alarm transition, one JSON object per line (see
//! [`AlarmEvent`](crate::alarm::AlarmEvent)), appended to `alarm-audit.jsonl` under the data
//! directory and synced to disk after each batch, so an alarm raised at the edge is on record
//! even if the gateway loses power a moment later. Append-only: nothing here rewrites or
//! deletes a line; rotate it with logrotate's `copytruncate`.
//!
//! Fed from the durable outbox, each line also carries its outbox batch (`"batch": N`), and a
//! batch is confirmed once its line is synced. After a crash the outbox replays what was not
//! confirmed; the log skips batches up to the last one it holds, so no transition is written
//! twice.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::mpsc;
use tracing::{error, info};

use crate::metrics::Metrics;
use crate::pipeline::{Acker, Delivery, Output};

/// The outbox batch of the last line in the log, if any carries one: the tail is enough.
fn last_batch(path: &std::path::Path) -> Option<u64> {
    use std::io::{Read as _, Seek as _, SeekFrom};
    let mut f = std::fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)))
        .ok()?;
    let mut tail = String::new();
    f.read_to_string(&mut tail).ok()?;
    tail.lines().rev().find_map(|l| {
        serde_json::from_str::<serde_json::Value>(l)
            .ok()?
            .get("batch")?
            .as_u64()
    })
}

/// Name of this sink in metrics and logs.
pub const SINK: &str = "alarm_audit";

/// The log file under the data directory.
pub const FILE_NAME: &str = "alarm-audit.jsonl";

/// Runs the sink until its channel closes.
pub async fn run(
    path: PathBuf,
    mut input: mpsc::Receiver<Delivery>,
    acker: Acker,
    metrics: Arc<Metrics>,
) {
    let mut written_up_to = last_batch(&path).unwrap_or(0);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path);
    let mut file = match file {
        Ok(f) => f,
        Err(e) => {
            error!(path = %path.display(), "alarm audit log cannot be opened: {e}");
            return;
        }
    };
    info!(path = %path.display(), "alarm audit log open");
    while let Some(delivery) = input.recv().await {
        let Output::Alarms(events) = delivery.output else {
            acker.done(delivery.batch);
            continue;
        };
        if let Some(b) = delivery.batch {
            if b.0 <= written_up_to {
                // Replayed after a crash, and already on record.
                acker.done(delivery.batch);
                continue;
            }
            written_up_to = b.0;
        }
        let mut text = String::new();
        for e in events.iter() {
            let mut v = e.to_json();
            if let Some(b) = delivery.batch {
                v["batch"] = b.0.into();
            }
            text.push_str(&v.to_string());
            text.push('\n');
        }
        let n = events.len() as u64;
        let written = tokio::task::block_in_place(|| {
            file.write_all(text.as_bytes())?;
            file.sync_data()
        });
        match written {
            Ok(()) => {
                metrics.sink_points(SINK, "written", n);
                acker.done(delivery.batch);
            }
            Err(e) => {
                metrics.sink_error(SINK, "io");
                error!(path = %path.display(), "alarm audit log write failed: {e}");
            }
        }
    }
}
