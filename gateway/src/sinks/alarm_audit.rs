//! The alarm audit log: every alarm transition, one JSON object per line (see
//! [`AlarmEvent`](crate::alarm::AlarmEvent)), appended to `alarm-audit.jsonl` under the data
//! directory and synced to disk after each batch, so an alarm raised at the edge is on record
//! even if the gateway loses power a moment later. Append-only: nothing here rewrites or
//! deletes a line; rotate it with logrotate's `copytruncate`.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::mpsc;
use tracing::{error, info};

use crate::metrics::Metrics;
use crate::pipeline::Output;

/// Name of this sink in metrics and logs.
pub const SINK: &str = "alarm_audit";

/// The log file under the data directory.
pub const FILE_NAME: &str = "alarm-audit.jsonl";

/// Runs the sink until its channel closes.
pub async fn run(path: PathBuf, mut input: mpsc::Receiver<Output>, metrics: Arc<Metrics>) {
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
    while let Some(output) = input.recv().await {
        let Output::Alarms(events) = output else {
            continue;
        };
        let mut text = String::new();
        for e in events.iter() {
            text.push_str(&e.to_json().to_string());
            text.push('\n');
        }
        let n = events.len() as u64;
        let written = tokio::task::block_in_place(|| {
            file.write_all(text.as_bytes())?;
            file.sync_data()
        });
        match written {
            Ok(()) => metrics.sink_points(SINK, "written", n),
            Err(e) => {
                metrics.sink_error(SINK, "io");
                error!(path = %path.display(), "alarm audit log write failed: {e}");
            }
        }
    }
}
