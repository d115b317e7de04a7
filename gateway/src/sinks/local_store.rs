//! The local store: every forwarded reading kept in SQLite under the data directory, so a
//! gateway with no network still has its recent history (for the console's trends and for
//! an engineer on site), and the demo needs no database.
//!
//! Two tables: `reading(site, node, channel, quantity, unit, ts_ms, value, quality, seq)`,
//! indexed by `(node, channel, ts_ms)`, and `alarm_transition(at_ms, site, node, channel,
//! condition, state, level, cause, value, json)`, the alarm history. Each batch is one transaction; WAL mode with
//! `synchronous=NORMAL` lets readers (the console, `sqlite3` on site) look while it writes,
//! and costs one fsync per checkpoint rather than per batch. Readings older than the
//! retention are deleted once a minute.
//!
//! Fed from the durable outbox, it confirms each group of batches once its transaction has
//! committed. Writes are idempotent — a reading is identified by `(node, channel, ts_ms,
//! seq)` and a transition by `(at_ms, node, channel, condition, state, cause)`, both unique
//! indexes, with `INSERT OR IGNORE` — so batches replayed after a crash are not stored twice.
//! SQLite runs on a blocking thread, since its calls block.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{Connection, params};
use tokio::sync::mpsc;
use tracing::{error, info};

use crate::alarm::AlarmEvent;
use crate::metrics::Metrics;
use crate::pipeline::{Acker, Delivery, Output, Record};

/// Name of this sink in metrics and logs.
pub const SINK: &str = "local_store";

/// The database file under the data directory.
pub const FILE_NAME: &str = "readings.sqlite";

/// Opens (creating if needed) the store at `path`.
pub fn open(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS reading (
             site     TEXT    NOT NULL,
             node     TEXT    NOT NULL,
             channel  INTEGER NOT NULL,
             quantity TEXT    NOT NULL,
             unit     TEXT    NOT NULL,
             ts_ms    INTEGER NOT NULL,
             value    REAL    NOT NULL,
             quality  TEXT    NOT NULL,
             seq      INTEGER NOT NULL
         );
         CREATE UNIQUE INDEX IF NOT EXISTS reading_identity ON reading (node, channel, ts_ms, seq);
         CREATE TABLE IF NOT EXISTS alarm_transition (
             at_ms     INTEGER NOT NULL,
             site      TEXT,
             node      TEXT    NOT NULL,
             channel   INTEGER NOT NULL,
             condition TEXT    NOT NULL,
             state     TEXT    NOT NULL,
             level     TEXT    NOT NULL,
             cause     TEXT    NOT NULL,
             value     REAL,
             json      TEXT    NOT NULL
         );
         CREATE UNIQUE INDEX IF NOT EXISTS alarm_identity
             ON alarm_transition (at_ms, node, channel, condition, state, cause);",
    )?;
    Ok(conn)
}

fn insert_alarms(conn: &mut Connection, groups: &[Arc<[AlarmEvent]>]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut stmt = tx.prepare_cached(
            "INSERT OR IGNORE INTO alarm_transition
                 (at_ms, site, node, channel, condition, state, level, cause, value, json)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )?;
        for e in groups.iter().flat_map(|g| g.iter()) {
            let t = &e.transition;
            stmt.execute(params![
                t.at_ms as i64,
                e.site.as_ref().map(|s| s.as_str()),
                t.key.node.as_str(),
                t.key.channel.0,
                t.key.condition.key(),
                t.to.key(),
                t.level.key(),
                crate::alarm::event::cause_parts(&t.cause).0,
                t.value.is_finite().then_some(t.value),
                e.to_json().to_string(),
            ])?;
        }
    }
    tx.commit()
}

/// One transaction for the whole group: the confirmation covers all of it.
fn insert(conn: &mut Connection, groups: &[Arc<[Record]>]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut stmt = tx.prepare_cached(
            "INSERT OR IGNORE INTO reading (site, node, channel, quantity, unit, ts_ms, value, quality, seq)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?;
        let mut flag = [0u8; 4];
        for r in groups.iter().flat_map(|g| g.iter()) {
            let q = &r.reading;
            stmt.execute(params![
                r.site.as_str(),
                q.node.as_str(),
                q.channel.0,
                q.quantity.key(),
                q.quantity.canonical_unit().symbol(),
                q.timestamp.millis() as i64,
                q.value,
                q.quality.hj212_flag().encode_utf8(&mut flag) as &str,
                q.seq,
            ])?;
        }
    }
    tx.commit()
}

/// Runs the sink until its channel closes.
pub async fn run(
    path: PathBuf,
    retention: Duration,
    mut input: mpsc::Receiver<Delivery>,
    acker: Acker,
    metrics: Arc<Metrics>,
) {
    let opened = {
        let path = path.clone();
        tokio::task::spawn_blocking(move || open(&path)).await
    };
    let mut conn = match opened {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            error!(path = %path.display(), "local store cannot be opened: {e}");
            return;
        }
        Err(e) => {
            error!("local store task failed: {e}");
            return;
        }
    };
    info!(path = %path.display(), retention_h = retention.as_secs() / 3600, "local store open");
    let mut last_prune = std::time::Instant::now();
    // Gathers what arrived while the last transaction ran, so a busy pipeline commits in
    // large transactions.
    let mut pending: Vec<Arc<[Record]>> = Vec::new();
    let mut alarms: Vec<Arc<[AlarmEvent]>> = Vec::new();
    while let Some(first) = input.recv().await {
        let mut next = Some(first);
        let mut newest = None;
        while let Some(d) = next.take() {
            newest = d.batch.or(newest);
            match d.output {
                Output::Readings(r) => pending.push(r),
                Output::Alarms(a) => alarms.push(a),
                Output::Status(_) => {}
            }
            if pending.len() < 256 {
                next = input.try_recv().ok();
            }
        }
        if pending.is_empty() && alarms.is_empty() {
            acker.done(newest);
            continue;
        }
        let batches = std::mem::take(&mut pending);
        let alarm_batches = std::mem::take(&mut alarms);
        let prune = last_prune.elapsed() >= Duration::from_secs(60);
        if prune {
            last_prune = std::time::Instant::now();
        }
        // A failed write (disk full, say) is retried, not given up: the batches stay
        // unconfirmed in the outbox meanwhile, and the first retry that succeeds confirms them.
        let mut retry = Duration::from_millis(200);
        loop {
            let (b, a) = (batches.clone(), alarm_batches.clone());
            let result = tokio::task::spawn_blocking(move || {
                let r = (|| {
                    insert(&mut conn, &b)?;
                    insert_alarms(&mut conn, &a)?;
                    if prune {
                        let cutoff =
                            crate::pipeline::unix_ms().saturating_sub(retention.as_millis() as u64);
                        conn.execute("DELETE FROM reading WHERE ts_ms < ?1", [cutoff as i64])?;
                    }
                    Ok::<_, rusqlite::Error>(b.iter().map(|b| b.len() as u64).sum::<u64>())
                })();
                (conn, r)
            })
            .await;
            match result {
                Ok((c, Ok(n))) => {
                    conn = c;
                    metrics.sink_points(SINK, "written", n);
                    acker.done(newest);
                    break;
                }
                Ok((c, Err(e))) => {
                    conn = c;
                    metrics.sink_error(SINK, "sqlite");
                    error!(path = %path.display(), "local store write failed: {e}; retrying in {retry:?}");
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(Duration::from_secs(10));
                }
                Err(e) => {
                    error!("local store task failed: {e}");
                    return;
                }
            }
        }
    }
    info!("local store closed");
}
