//! The outbox's storage thread: owns the SQLite connection, commits groups, serves reads,
//! keeps cursors, and enforces the byte bound. Everything here runs on one dedicated thread;
//! the [`Outbox`](super::Outbox) handle talks to it over a channel.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OptionalExtension, Transaction, params};
use tokio::sync::{oneshot, watch};
use tracing::{error, warn};

use super::codec::{self, RawReadings};
use super::{
    BatchId, DeadLetter, Drop as DropCount, DropReason, Error, OutboxConfig, OutboxStats, SinkStats,
};

/// Bytes charged per stored batch beyond its payload: row header, index cell and page slack,
/// measured as (file size − payload) / rows on a 1 GB store of 100-record batches.
pub const ROW_OVERHEAD: u64 = 64;

/// How often the filesystem's free space is looked at (a `statvfs`, some microseconds).
const SPACE_CHECK: Duration = Duration::from_millis(250);

/// Accounted bytes per byte of file the outbox's pages take (row headers and page slack):
/// 1.18 measured with 100-reading batches, 1.01 with 1 000-reading ones (module docs).
const FILE_PER_ACCOUNTED: f64 = 1.2;

/// How much a downsampling or dropping round reads at a time, bounding its memory (the
/// window's bytes plus, when downsampling, 24 bytes per reading in it).
const CHUNK_BYTES: u64 = 4 << 20;

/// Encoding buffers of committed readings batches, handed back to the appenders so that the
/// next batches are encoded into memory already owned rather than freshly allocated (see
/// "Memory" in the [module docs](super)).
pub(super) struct Recycler {
    /// The spare buffers (emptied) and the sum of their capacities.
    spare: Mutex<(Vec<Vec<u8>>, usize)>,
    /// The most capacity kept spare; beyond it, buffers are freed.
    limit: usize,
}

impl Recycler {
    pub fn new(limit: usize) -> Recycler {
        Recycler {
            spare: Mutex::new((Vec::new(), 0)),
            limit,
        }
    }

    /// A spare buffer (empty, perhaps with capacity), or a new one.
    pub fn take(&self) -> Vec<u8> {
        let mut spare = self.spare.lock().unwrap_or_else(|e| e.into_inner());
        match spare.0.pop() {
            Some(buf) => {
                spare.1 -= buf.capacity();
                buf
            }
            None => Vec::new(),
        }
    }

    /// Keeps `bufs` for [`Recycler::take`], up to the limit.
    pub fn give_back(&self, bufs: impl IntoIterator<Item = Vec<u8>>) {
        let mut spare = self.spare.lock().unwrap_or_else(|e| e.into_inner());
        for mut buf in bufs {
            // Freed once a full pending allowance is spare.
            if spare.1 + buf.capacity() > self.limit {
                continue;
            }
            buf.clear();
            spare.1 += buf.capacity();
            spare.0.push(buf);
        }
    }
}

/// A batch encoded by the caller, waiting for the next group commit.
pub(super) struct Pending {
    pub id: u64,
    pub kind: u8,
    pub n_records: u32,
    pub bytes: Vec<u8>,
}

/// A stored batch as read, before decoding.
pub(super) struct RawBatch {
    pub id: u64,
    pub level: u8,
    pub bytes: Vec<u8>,
}

pub(super) enum Cmd {
    Append(Pending),
    Read {
        sink: String,
        /// Read after this id rather than the cursor, when it is beyond the cursor (a sink that
        /// has batches in flight, sent but not yet confirmed).
        after: Option<u64>,
        max: usize,
        reply: oneshot::Sender<Result<Vec<RawBatch>, Error>>,
    },
    Ack {
        sink: String,
        upto: u64,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    DeadLetter {
        sink: String,
        id: u64,
        reason: String,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    DeadLetters(oneshot::Sender<Result<Vec<DeadLetter>, Error>>),
    Drops(oneshot::Sender<Result<Vec<DropCount>, Error>>),
    Stats(oneshot::Sender<Result<OutboxStats, Error>>),
    Flush(oneshot::Sender<Result<(), Error>>),
    Close(oneshot::Sender<Result<(), Error>>),
}

/// What the handle needs from an opened store.
pub(super) struct Opened {
    pub store: Store,
    pub next_id: u64,
}

/// What the bound is enforced on.
#[derive(Clone, Copy)]
struct Acct {
    /// Accounted bytes of live batches (payload + [`ROW_OVERHEAD`] each).
    bytes: u64,
    batches: u64,
    /// Every routine batch with an id up to here has been downsampled (or was considered).
    frontier: u64,
}

/// The storage thread's state.
pub(super) struct Store {
    conn: Connection,
    cfg: OutboxConfig,
    /// Authoritative cursors (last batch id each sink confirmed); written with the next commit.
    cursors: BTreeMap<String, u64>,
    cursors_dirty: bool,
    next_id: u64,
    durable: u64,
    acct: Acct,
    /// Every batch with an id up to here has been purged.
    purged_upto: u64,
    last_purge: Instant,
    pending: Vec<Pending>,
    pending_bytes: usize,
    /// When the oldest uncommitted change (append or ack) arrived.
    first_change: Option<Instant>,
    inflight: Arc<std::sync::atomic::AtomicUsize>,
    recycler: Arc<Recycler>,
    space: Space,
    /// The database's page size, bytes (fixed once the file exists).
    page_size: u64,
    /// The newest batch each sink has been handed by a read. Between its cursor and this,
    /// a sink holds batches it may yet write: the bound never sheds those, or a reading
    /// would be both written and counted as dropped.
    handed: HashMap<String, u64>,
}

/// What the outbox knows of the room it has on disk (see "A disk that fills first" in the
/// [module docs](super)).
struct Space {
    /// The directory holding the database, its WAL and anything else on that filesystem.
    dir: std::path::PathBuf,
    checked: Option<Instant>,
    /// Bytes committed since `checked`.
    written: u64,
    /// The bound in force while the filesystem is short of space, below `max_bytes`.
    bound: Option<u64>,
    /// After a commit failed for want of space: shed to `bound` in a transaction of its own
    /// before the next one inserts anything.
    shed_first: bool,
    /// When the next commit may be tried after a failure, and the wait after the next one.
    retry_at: Option<Instant>,
    backoff: Duration,
    failures: u64,
}

/// Bytes the filesystem holding `dir` has for an unprivileged writer.
fn available(dir: &Path) -> Option<u64> {
    rustix::fs::statvfs(dir)
        .ok()
        .map(|s| s.f_bavail.saturating_mul(s.f_frsize))
}

/// Whether SQLite gave up for want of space: a full disk, or the file's page limit.
fn is_full(e: &Error) -> bool {
    matches!(
        e,
        Error::Sqlite(rusqlite::Error::SqliteFailure(f, _)) if f.code == rusqlite::ErrorCode::DiskFull
    )
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn meta(conn: &Connection, key: &str) -> rusqlite::Result<Option<i64>> {
    conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()
}

fn set_meta(tx: &Transaction<'_>, key: &str, value: u64) -> rusqlite::Result<()> {
    tx.prepare_cached("INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)")?
        .execute(params![key, value as i64])?;
    Ok(())
}

fn add_drop(tx: &Transaction<'_>, node: &str, reason: DropReason, n: u64) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO drops (node, reason, count) VALUES (?1, ?2, ?3)
         ON CONFLICT (node, reason) DO UPDATE SET count = count + excluded.count",
    )?
    .execute(params![node, reason.as_str(), n as i64])?;
    Ok(())
}

impl Store {
    /// Opens (creating) the store and recovers its state.
    pub fn open(
        path: &Path,
        cfg: OutboxConfig,
        inflight: Arc<std::sync::atomic::AtomicUsize>,
        recycler: Arc<Recycler>,
    ) -> Result<Opened, Error> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // FULL: a commit is on disk (WAL fsynced) before `durable` moves, so a power cut —
        // not only a killed process — loses nothing confirmed. Commits are grouped, so this
        // costs one fsync per group, not per batch.
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "journal_size_limit", 64i64 << 20)?;
        conn.pragma_update(None, "cache_size", -8192i64)?;
        if let Some(pages) = cfg.max_file_pages {
            conn.query_row(&format!("PRAGMA max_page_count = {pages}"), [], |_| Ok(()))?;
        }
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS batch (
                 id         INTEGER PRIMARY KEY,
                 kind       INTEGER NOT NULL,
                 level      INTEGER NOT NULL,
                 created_ms INTEGER NOT NULL,
                 n_records  INTEGER NOT NULL,
                 n_bytes    INTEGER NOT NULL,
                 bytes      BLOB    NOT NULL
             );
             CREATE TABLE IF NOT EXISTS cursor (sink TEXT PRIMARY KEY, last_id INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS dead_letter (
                 seq      INTEGER PRIMARY KEY,
                 sink     TEXT    NOT NULL,
                 batch_id INTEGER NOT NULL,
                 reason   TEXT    NOT NULL,
                 at_ms    INTEGER NOT NULL,
                 bytes    BLOB    NOT NULL,
                 UNIQUE (sink, batch_id)
             );
             CREATE TABLE IF NOT EXISTS drops (
                 node   TEXT    NOT NULL,
                 reason TEXT    NOT NULL,
                 count  INTEGER NOT NULL,
                 PRIMARY KEY (node, reason)
             ) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)
                 WITHOUT ROWID;",
        )?;
        let page_size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        let max_id: i64 =
            conn.query_row("SELECT COALESCE(MAX(id), 0) FROM batch", [], |r| r.get(0))?;
        let next_id = (meta(&conn, "next_id")?.unwrap_or(1).max(max_id + 1)) as u64;
        let frontier = meta(&conn, "frontier")?.unwrap_or(0) as u64;
        // The byte count and batch count are kept in `meta` by every commit, so opening does
        // not read the table (with batches small enough to be stored inline, summing
        // `n_bytes` reads every page of the backlog). A database written before they were
        // kept is scanned once.
        let (bytes, batches): (i64, i64) = match (meta(&conn, "bytes")?, meta(&conn, "batches")?) {
            (Some(bytes), Some(batches)) => (bytes, batches),
            _ => conn.query_row(
                "SELECT COALESCE(SUM(n_bytes), 0), COUNT(*) FROM batch",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?,
        };
        let mut stored: HashMap<String, u64> = HashMap::new();
        {
            let mut stmt = conn.prepare("SELECT sink, last_id FROM cursor")?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
            for row in rows {
                let (sink, last) = row?;
                stored.insert(sink, last as u64);
            }
        }
        // Sinks no longer configured lose their cursor (else they would pin the backlog
        // forever); a new sink starts before the oldest stored batch and so gets the backlog.
        let min_id: i64 =
            conn.query_row("SELECT COALESCE(MIN(id), 0) FROM batch", [], |r| r.get(0))?;
        let start = if batches == 0 {
            next_id - 1
        } else {
            min_id as u64 - 1
        };
        let cursors: BTreeMap<String, u64> = cfg
            .sinks
            .iter()
            .map(|s| (s.clone(), stored.get(s).copied().unwrap_or(start)))
            .collect();
        let purged_upto = cursors.values().copied().min().unwrap_or(0).min(start);
        let mut store = Store {
            conn,
            cfg,
            cursors,
            cursors_dirty: true,
            next_id,
            durable: next_id - 1,
            acct: Acct {
                bytes: bytes as u64,
                batches: batches as u64,
                frontier,
            },
            purged_upto,
            last_purge: Instant::now(),
            pending: Vec::new(),
            pending_bytes: 0,
            first_change: None,
            inflight,
            recycler,
            handed: HashMap::new(),
            page_size: page_size as u64,
            space: Space {
                dir: path
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or(Path::new("."))
                    .to_path_buf(),
                checked: None,
                written: 0,
                bound: None,
                shed_first: false,
                retry_at: None,
                backoff: Duration::from_millis(100),
                failures: 0,
            },
        };
        {
            let tx = store.conn.transaction()?;
            tx.execute("DELETE FROM cursor", [])?;
            tx.commit()?;
        }
        store.commit()?;
        Ok(Opened { store, next_id })
    }

    pub fn durable(&self) -> u64 {
        self.durable
    }

    /// Runs until the handle closes the outbox or every handle is gone, committing whatever
    /// is pending before it returns.
    pub fn run(mut self, rx: Receiver<Cmd>, durable_tx: watch::Sender<u64>) {
        let mut close_reply = None;
        loop {
            let timeout = match (self.first_change, self.space.retry_at) {
                (Some(_), Some(r)) => r.saturating_duration_since(Instant::now()),
                (Some(t), None) => {
                    (t + self.cfg.fsync_interval).saturating_duration_since(Instant::now())
                }
                (None, _) => Duration::from_secs(3600),
            };
            let first = match rx.recv_timeout(timeout) {
                Ok(c) => Some(c),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            // Take everything already queued, so that a busy gateway commits in large groups.
            let mut next = first;
            while let Some(cmd) = next.take() {
                if let Cmd::Close(reply) = cmd {
                    close_reply = Some(reply);
                    break;
                }
                self.handle(cmd, &durable_tx);
                if self.pending_bytes >= self.cfg.commit_bytes {
                    break;
                }
                next = rx.try_recv().ok();
            }
            if close_reply.is_some() {
                break;
            }
            let due = (self
                .first_change
                .is_some_and(|t| t.elapsed() >= self.cfg.fsync_interval)
                || self.pending_bytes >= self.cfg.commit_bytes)
                && self.space.retry_at.is_none_or(|r| Instant::now() >= r);
            if due {
                self.commit_and_notify(&durable_tx);
            }
        }
        // Graceful: everything appended is committed and the WAL folded into the database.
        let result = self.flush(&durable_tx).and_then(|()| {
            self.conn
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
                .map_err(Error::from)
        });
        if let Err(e) = &result {
            error!("outbox: flushing at shutdown failed: {e}");
        }
        drop(self);
        if let Some(reply) = close_reply {
            let _ = reply.send(result);
        }
    }

    fn commit_and_notify(&mut self, durable_tx: &watch::Sender<u64>) {
        match self.commit() {
            Ok(()) => {
                durable_tx.send_replace(self.durable);
            }
            // Kept pending and retried after a backoff; appends wait meanwhile (the MQTT
            // source's messages stay unacknowledged, held by the broker).
            Err(e) => {
                let wait = self.space.backoff;
                self.space.retry_at = Some(Instant::now() + wait);
                self.space.backoff = (wait * 2).min(Duration::from_secs(5));
                if is_full(&e) {
                    error!(dir = %self.space.dir.display(), available = ?available(&self.space.dir),
                        "outbox: commit failed for want of space: {e}; shedding by the policy and retrying in {wait:?}");
                } else {
                    warn!("outbox: commit failed, will retry in {wait:?}: {e}");
                }
            }
        }
    }

    fn flush(&mut self, durable_tx: &watch::Sender<u64>) -> Result<(), Error> {
        self.commit()?;
        durable_tx.send_replace(self.durable);
        Ok(())
    }

    fn handle(&mut self, cmd: Cmd, durable_tx: &watch::Sender<u64>) {
        match cmd {
            Cmd::Append(p) => {
                self.pending_bytes += p.bytes.len();
                self.first_change.get_or_insert_with(Instant::now);
                self.pending.push(p);
            }
            Cmd::Read {
                sink,
                after,
                max,
                reply,
            } => {
                let _ = reply.send(self.read(&sink, after, max));
            }
            Cmd::Ack { sink, upto, reply } => {
                let _ = reply.send(self.ack(&sink, upto));
            }
            Cmd::DeadLetter {
                sink,
                id,
                reason,
                reply,
            } => {
                let _ = reply.send(self.dead_letter(&sink, id, &reason));
            }
            Cmd::DeadLetters(reply) => {
                let _ = reply.send(self.dead_letters());
            }
            Cmd::Drops(reply) => {
                let _ = reply.send(self.drops());
            }
            Cmd::Stats(reply) => {
                let _ = reply.send(self.stats());
            }
            Cmd::Flush(reply) => {
                let _ = reply.send(self.flush(durable_tx));
            }
            Cmd::Close(_) => unreachable!("handled by run"),
        }
    }

    fn cursor(&self, sink: &str) -> Result<u64, Error> {
        self.cursors
            .get(sink)
            .copied()
            .ok_or_else(|| Error::UnknownSink(sink.to_owned()))
    }

    fn read(&mut self, sink: &str, after: Option<u64>, max: usize) -> Result<Vec<RawBatch>, Error> {
        let cursor = self.cursor(sink)?;
        let after = after.map_or(cursor, |a| a.max(cursor));
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, level, bytes FROM batch WHERE id > ?1 ORDER BY id LIMIT ?2",
        )?;
        let recycler = &self.recycler;
        let rows = stmt.query_map(params![after as i64, max as i64], |r| {
            // Copied into a spare buffer, which `Outbox::read` hands back once decoded.
            let mut bytes = recycler.take();
            bytes.extend_from_slice(r.get_ref(2)?.as_blob()?);
            Ok(RawBatch {
                id: r.get::<_, i64>(0)? as u64,
                level: r.get(1)?,
                bytes,
            })
        })?;
        let rows: Vec<RawBatch> = rows.collect::<Result<_, _>>()?;
        if let Some(last) = rows.last() {
            let handed = self.handed.entry(sink.to_owned()).or_default();
            *handed = (*handed).max(last.id);
        }
        Ok(rows)
    }

    /// The batches sinks hold unconfirmed, as `(after, upto)` id ranges.
    fn held(&self) -> Vec<(u64, u64)> {
        self.cursors
            .iter()
            .filter_map(|(sink, &cursor)| {
                let handed = self.handed.get(sink).copied()?;
                (handed > cursor).then_some((cursor, handed))
            })
            .collect()
    }

    fn ack(&mut self, sink: &str, upto: u64) -> Result<(), Error> {
        let current = self.cursor(sink)?;
        let upto = upto.min(self.durable);
        if upto > current {
            self.cursors.insert(sink.to_owned(), upto);
            self.cursors_dirty = true;
            self.first_change.get_or_insert_with(Instant::now);
        }
        Ok(())
    }

    fn dead_letter(&mut self, sink: &str, id: u64, reason: &str) -> Result<(), Error> {
        let current = self.cursor(sink)?;
        if id <= current {
            return Ok(());
        }
        let tx = self.conn.transaction()?;
        let bytes: Option<Vec<u8>> = tx
            .query_row("SELECT bytes FROM batch WHERE id = ?1", [id as i64], |r| {
                r.get(0)
            })
            .optional()?;
        let Some(bytes) = bytes else {
            // Already gone (dropped when full, or never existed): nothing to set aside.
            return Ok(());
        };
        tx.execute(
            "INSERT OR IGNORE INTO dead_letter (sink, batch_id, reason, at_ms, bytes)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![sink, id as i64, reason, now_ms(), bytes],
        )?;
        // Keep the newest `dead_letter_keep` only.
        tx.execute(
            "DELETE FROM dead_letter WHERE seq <= (SELECT MAX(seq) FROM dead_letter) - ?1",
            [self.cfg.dead_letter_keep as i64],
        )?;
        // The cursor moves past it when nothing unconfirmed lies before it; otherwise the
        // sink's next ack past it will.
        let before: i64 = tx.query_row(
            "SELECT COUNT(*) FROM batch WHERE id > ?1 AND id < ?2",
            params![current as i64, id as i64],
            |r| r.get(0),
        )?;
        if before == 0 {
            tx.execute(
                "INSERT OR REPLACE INTO cursor (sink, last_id) VALUES (?1, ?2)",
                params![sink, id as i64],
            )?;
        }
        tx.commit()?;
        if before == 0 {
            self.cursors.insert(sink.to_owned(), id);
        }
        Ok(())
    }

    fn dead_letters(&self) -> Result<Vec<DeadLetter>, Error> {
        let mut stmt = self
            .conn
            .prepare("SELECT sink, batch_id, reason, at_ms, bytes FROM dead_letter ORDER BY seq")?;
        let rows = stmt.query_map([], |r| {
            Ok(DeadLetter {
                sink: r.get(0)?,
                batch: BatchId(r.get::<_, i64>(1)? as u64),
                reason: r.get(2)?,
                at_ms: r.get::<_, i64>(3)? as u64,
                bytes: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn drops(&self) -> Result<Vec<DropCount>, Error> {
        let mut stmt = self
            .conn
            .prepare("SELECT node, reason, count FROM drops ORDER BY node, reason")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (node, reason, count) = row?;
            out.push(DropCount {
                node,
                reason: DropReason::from_str(&reason).unwrap_or(DropReason::Undecodable),
                count: count as u64,
            });
        }
        Ok(out)
    }

    fn stats(&self) -> Result<OutboxStats, Error> {
        let page_count: i64 = self.conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
        let page_size = self.page_size as i64;
        let free: i64 = self
            .conn
            .query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
        let dead: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM dead_letter", [], |r| r.get(0))?;
        let dropped: i64 =
            self.conn
                .query_row("SELECT COALESCE(SUM(count), 0) FROM drops", [], |r| {
                    r.get(0)
                })?;
        Ok(OutboxStats {
            batches: self.acct.batches,
            bytes: self.acct.bytes,
            file_bytes: (page_count * page_size) as u64,
            free_bytes: (free * page_size) as u64,
            durable: BatchId(self.durable),
            pending_bytes: self.inflight.load(Ordering::Relaxed) as u64,
            sinks: self
                .cursors
                .iter()
                .map(|(name, &acked)| SinkStats {
                    name: name.clone(),
                    acked: BatchId(acked),
                    behind: self.durable.saturating_sub(acked),
                })
                .collect(),
            dead_letters: dead as u64,
            dropped: dropped as u64,
            bound: self.bound(),
            commit_failures: self.space.failures,
        })
    }

    /// The bound in force.
    fn bound(&self) -> u64 {
        self.space
            .bound
            .map_or(self.cfg.max_bytes, |b| b.min(self.cfg.max_bytes))
    }

    /// Bytes the file may still grow by: the filesystem's free space, and what its page
    /// limit leaves when it has one.
    fn room(&self) -> Option<u64> {
        let fs = available(&self.space.dir);
        let limit = self.cfg.max_file_pages.and_then(|max| {
            let pages: i64 = self
                .conn
                .query_row("PRAGMA page_count", [], |r| r.get(0))
                .ok()?;
            Some((max as u64).saturating_sub(pages as u64) * self.page_size)
        });
        match (fs, limit) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// What the stored batches could grow to in the pages the file already has free.
    fn reusable(&self) -> u64 {
        let free: i64 = self
            .conn
            .query_row("PRAGMA freelist_count", [], |r| r.get(0))
            .unwrap_or(0);
        ((free as u64 * self.page_size) as f64 / FILE_PER_ACCOUNTED) as u64
    }

    /// Looks at the free space (at most every [`SPACE_CHECK`]) and sets the bound: below
    /// `min_free`, the outbox may fill only the pages it already has; at half of it, what it
    /// has now is all it keeps; from twice `min_free` (and 1 MiB), the configured bound again.
    fn check_space(&mut self) {
        // Also whenever a quarter of `min_free` may have been written since: a burst must not
        // run through the margin between two looks.
        let written = self.space.written + self.pending_bytes as u64;
        if self
            .space
            .checked
            .is_some_and(|t| t.elapsed() < SPACE_CHECK)
            && written < self.cfg.min_free() / 4
        {
            self.space.written = written;
            return;
        }
        self.space.written = 0;
        self.space.checked = Some(Instant::now());
        let Some(room) = self.room() else {
            return;
        };
        let min_free = self.cfg.min_free();
        let was = self.space.bound;
        // Released with some margin (1 MiB at least), so that a bound lowered after a failed
        // commit is not lifted while the file is still against its limit.
        if room >= (2 * min_free).max(1 << 20) {
            self.space.bound = None;
        } else if room < min_free / 2 {
            let now = self.acct.bytes + self.reusable();
            self.space.bound = Some(was.map_or(now, |b| b.min(now)));
        } else if room < min_free && was.is_none() {
            self.space.bound = Some(self.acct.bytes + self.reusable());
        }
        match (was.is_some(), self.space.bound.is_some()) {
            (false, true) => self.tight_wal(true),
            (true, false) => self.tight_wal(false),
            _ => {}
        }
        match (was, self.space.bound) {
            (None, Some(b)) if b < self.cfg.max_bytes => warn!(
                dir = %self.space.dir.display(), room, min_free,
                "outbox: the filesystem is short of space; bound lowered from {} to {b} bytes",
                self.cfg.max_bytes
            ),
            (Some(_), None) => tracing::info!(
                dir = %self.space.dir.display(), room,
                "outbox: space again; bound back to {} bytes", self.cfg.max_bytes
            ),
            _ => {}
        }
    }

    /// Short of space, the WAL is checkpointed every 256 pages (1 MiB) instead of SQLite's
    /// 1 000, and truncated back to a quarter of `min_free` after each checkpoint instead of
    /// 64 MiB: shedding rewrites whole 4 MiB windows, and a WAL left at its largest would
    /// take the space the bound was lowered to keep.
    fn tight_wal(&self, tight: bool) {
        let (pages, limit) = if tight {
            (256i64, (self.cfg.min_free() / 4).max(1 << 20) as i64)
        } else {
            (1000, 64 << 20)
        };
        let _ = self.conn.pragma_update(None, "wal_autocheckpoint", pages);
        let _ = self.conn.pragma_update(None, "journal_size_limit", limit);
    }

    /// After a commit failed for want of space: a transaction that only removes (confirmed
    /// batches, then by the policy down to the lowered bound less what is pending), so that
    /// the next one inserts into freed pages; then the WAL is truncated when it can be.
    fn make_room(&mut self) -> Result<(), Error> {
        let pending = self.pending_bytes as u64 + self.pending.len() as u64 * ROW_OVERHEAD;
        let target = self.bound().saturating_sub(pending);
        let saved = (self.acct, self.purged_upto);
        let held = self.held();
        let result = (|| {
            let tx = self.conn.transaction()?;
            let min_cursor = self.cursors.values().copied().min().unwrap_or(self.durable);
            if min_cursor > self.purged_upto {
                let (b, n) = purge(&tx, min_cursor)?;
                self.acct.bytes -= b;
                self.acct.batches -= n;
                self.purged_upto = min_cursor;
            }
            if self.acct.bytes > target {
                self.acct
                    .enforce_bound(&tx, &self.cfg, target.max(1), &held)?;
                set_meta(&tx, "frontier", self.acct.frontier)?;
            }
            set_meta(&tx, "bytes", self.acct.bytes)?;
            set_meta(&tx, "batches", self.acct.batches)?;
            tx.commit()?;
            Ok(())
        })();
        if result.is_err() {
            (self.acct, self.purged_upto) = saved;
        }
        let _ = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
        result
    }

    /// One transaction: the pending batches, the cursors, a purge when due and the bound.
    fn commit(&mut self) -> Result<(), Error> {
        self.check_space();
        if self.space.shed_first {
            self.make_room().inspect_err(|_| self.space.failures += 1)?;
            self.space.shed_first = false;
        }
        let saved = (self.acct, self.purged_upto);
        let result = self.commit_inner();
        if let Err(e) = &result {
            (self.acct, self.purged_upto) = saved;
            self.space.failures += 1;
            if is_full(e) {
                // What is stored now, less a quarter, is what fits: the next attempt sheds
                // to it first. Lifted once the filesystem has room again.
                let cap = self.acct.bytes - self.acct.bytes / 4;
                self.space.bound = Some(self.space.bound.map_or(cap, |b| b.min(cap)));
                self.space.checked = Some(Instant::now());
                self.space.shed_first = true;
            }
            return result;
        }
        self.space.retry_at = None;
        self.space.backoff = Duration::from_millis(100);
        if let Some(last) = self.pending.last() {
            self.durable = last.id;
        }
        let n = self.pending_bytes;
        self.recycler.give_back(
            self.pending
                .drain(..)
                .filter(|p| p.kind == codec::KIND_READINGS)
                .map(|p| p.bytes),
        );
        self.pending_bytes = 0;
        self.first_change = None;
        self.cursors_dirty = false;
        self.inflight.fetch_sub(n, Ordering::AcqRel);
        Ok(())
    }

    fn commit_inner(&mut self) -> Result<(), Error> {
        let now = now_ms();
        let bound = self.bound();
        let held = self.held();
        let tx = self.conn.transaction()?;
        let mut next_id = self.next_id;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO batch (id, kind, level, created_ms, n_records, n_bytes, bytes)
                 VALUES (?1, ?2, 0, ?3, ?4, ?5, ?6)",
            )?;
            for p in &self.pending {
                let n_bytes = p.bytes.len() as u64 + ROW_OVERHEAD;
                insert.execute(params![
                    p.id as i64,
                    p.kind,
                    now,
                    p.n_records,
                    n_bytes as i64,
                    p.bytes
                ])?;
                self.acct.bytes += n_bytes;
                self.acct.batches += 1;
                next_id = p.id + 1;
            }
        }
        if self.cursors_dirty {
            let mut up =
                tx.prepare_cached("INSERT OR REPLACE INTO cursor (sink, last_id) VALUES (?1, ?2)")?;
            for (sink, &last) in &self.cursors {
                up.execute(params![sink, last as i64])?;
            }
        }
        let min_cursor = self.cursors.values().copied().min().unwrap_or(self.durable);
        let over = self.acct.bytes > bound;
        if min_cursor > self.purged_upto
            && (over || self.last_purge.elapsed() >= self.cfg.purge_interval)
        {
            let (b, n) = purge(&tx, min_cursor)?;
            self.acct.bytes -= b;
            self.acct.batches -= n;
            self.purged_upto = min_cursor;
            self.last_purge = Instant::now();
        }
        if self.acct.bytes > bound {
            self.acct.enforce_bound(&tx, &self.cfg, bound, &held)?;
            set_meta(&tx, "frontier", self.acct.frontier)?;
        }
        set_meta(&tx, "next_id", next_id)?;
        set_meta(&tx, "bytes", self.acct.bytes)?;
        set_meta(&tx, "batches", self.acct.batches)?;
        tx.commit()?;
        self.next_id = next_id;
        Ok(())
    }
}

/// Deletes every batch up to `upto` (all sinks confirmed them); returns their accounted
/// bytes and their number.
fn purge(tx: &Transaction<'_>, upto: u64) -> Result<(u64, u64), Error> {
    let (b, n): (i64, i64) = tx.query_row(
        "SELECT COALESCE(SUM(n_bytes), 0), COUNT(*) FROM batch WHERE id <= ?1",
        [upto as i64],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    tx.execute("DELETE FROM batch WHERE id <= ?1", [upto as i64])?;
    Ok((b as u64, n as u64))
}

impl Acct {
    /// Brings the accounted bytes down to the low watermark of `bound` (95 %), in the
    /// documented order: downsample the oldest routine readings once, then drop the oldest
    /// routine readings, then status changes, then the oldest alarm transitions. Every
    /// reading removed is counted in `drops`.
    fn enforce_bound(
        &mut self,
        tx: &Transaction<'_>,
        cfg: &OutboxConfig,
        bound: u64,
        held: &[(u64, u64)],
    ) -> Result<(), Error> {
        let low = bound - bound / 20;
        let keep = cfg.downsample_keep_one_in.max(1) as usize;
        // 1. Downsample.
        while keep > 1 && self.bytes > low {
            let chunk = self.chunk(tx, codec::KIND_READINGS, Some(self.frontier), held)?;
            let Some(&(last, _, _)) = chunk.last() else {
                break;
            };
            self.downsample(tx, chunk, keep)?;
            self.frontier = last;
        }
        // 2. Drop routine readings, then 3. status changes, then 4. alarms, oldest first.
        for (kind, reason) in [
            (codec::KIND_READINGS, DropReason::Full),
            (codec::KIND_STATUS, DropReason::FullStatus),
            (codec::KIND_ALARM, DropReason::FullAlarm),
        ] {
            // Status changes and alarm transitions go only once no routine reading is left at
            // all — not even one a sink holds unconfirmed (which cannot be shed): better over
            // the bound for a sink's window than an alarm given up before a routine reading.
            if kind != codec::KIND_READINGS && self.bytes > low {
                let readings_left: bool = tx
                    .prepare_cached("SELECT EXISTS (SELECT 1 FROM batch WHERE kind = ?1)")?
                    .query_row([codec::KIND_READINGS], |r| r.get(0))?;
                if readings_left {
                    break;
                }
            }
            while self.bytes > low {
                let chunk = self.chunk(tx, kind, None, held)?;
                if chunk.is_empty() {
                    break;
                }
                // Keyed by the node id as stored in the chunk: no allocation per reading.
                let mut counts: HashMap<&str, u64> = HashMap::new();
                let mut del = tx.prepare_cached("DELETE FROM batch WHERE id = ?1")?;
                for (id, n_bytes, bytes) in &chunk {
                    if self.bytes <= low {
                        break;
                    }
                    let parsed = if kind == codec::KIND_READINGS {
                        RawReadings::parse(bytes).map(|raw| {
                            for i in 0..raw.len() {
                                *counts.entry(raw.node(i)).or_default() += 1;
                            }
                        })
                    } else {
                        codec::event_node(bytes).map(|node| *counts.entry(node).or_default() += 1)
                    };
                    if parsed.is_err() {
                        *counts.entry("").or_default() += 1;
                    }
                    del.execute([*id as i64])?;
                    self.bytes -= n_bytes;
                    self.batches -= 1;
                }
                for (node, n) in counts {
                    let r = if node.is_empty() {
                        DropReason::Undecodable
                    } else {
                        reason
                    };
                    add_drop(tx, node, r, n)?;
                }
            }
        }
        if self.bytes > bound {
            warn!(
                bytes = self.bytes,
                max = bound,
                "outbox: still over its bound after dropping everything it may"
            );
        }
        Ok(())
    }

    /// The oldest batches of `kind` (level 0 and after `after` when given), outside the
    /// `held` ranges, up to [`CHUNK_BYTES`].
    fn chunk(
        &self,
        tx: &Transaction<'_>,
        kind: u8,
        after: Option<u64>,
        held: &[(u64, u64)],
    ) -> Result<Vec<(u64, u64, Vec<u8>)>, Error> {
        use std::fmt::Write as _;
        let mut sql =
            String::from("SELECT id, n_bytes, bytes FROM batch WHERE id > ?1 AND kind = ?2");
        if after.is_some() {
            sql.push_str(" AND level = 0");
        }
        for (lo, hi) in held {
            let _ = write!(sql, " AND NOT (id > {lo} AND id <= {hi})");
        }
        sql.push_str(" ORDER BY id");
        let mut stmt = tx.prepare_cached(&sql)?;
        let mut rows = stmt.query(params![after.unwrap_or(0) as i64, kind])?;
        let mut out = Vec::new();
        let mut total = 0;
        while let Some(r) = rows.next()? {
            let n_bytes = r.get::<_, i64>(1)? as u64;
            out.push((r.get::<_, i64>(0)? as u64, n_bytes, r.get(2)?));
            total += n_bytes;
            if total >= CHUNK_BYTES {
                break;
            }
        }
        Ok(out)
    }

    /// Keeps one reading in `keep` per (node, channel) across the chunk, in time order (the
    /// first, the `keep+1`th, …), rewriting each batch with its survivors. Works on the
    /// stored bytes ([`RawReadings`]): besides the chunk, it holds 24 bytes per reading.
    fn downsample(
        &mut self,
        tx: &Transaction<'_>,
        chunk: Vec<(u64, u64, Vec<u8>)>,
        keep: usize,
    ) -> Result<(), Error> {
        // Undecodable batches are left as they are: a sink will dead-letter them.
        let parsed: Vec<(u64, u64, RawReadings<'_>)> = chunk
            .iter()
            .filter_map(|(id, n_bytes, bytes)| {
                RawReadings::parse(bytes).ok().map(|r| (*id, *n_bytes, r))
            })
            .collect();
        // Every reading as (series, timestamp, seq, batch index, record index); sorted, each
        // series' readings are together and in time order.
        let mut series: HashMap<(&str, u16), u32> = HashMap::new();
        let mut places: Vec<(u32, u64, u32, u32, u32)> =
            Vec::with_capacity(parsed.iter().map(|(_, _, r)| r.len()).sum());
        for (b, (_, _, raw)) in parsed.iter().enumerate() {
            for i in 0..raw.len() {
                let next = series.len() as u32;
                let s = *series.entry((raw.node(i), raw.channel(i))).or_insert(next);
                places.push((s, raw.timestamp(i), raw.seq(i), b as u32, i as u32));
            }
        }
        drop(series);
        places.sort_unstable();
        let mut dropped: Vec<Vec<bool>> = parsed
            .iter()
            .map(|(_, _, r)| vec![false; r.len()])
            .collect();
        let mut counts: HashMap<&str, u64> = HashMap::new();
        let (mut current, mut k) = (u32::MAX, 0usize);
        for &(s, _, _, b, i) in &places {
            if s != current {
                (current, k) = (s, 0);
            }
            if k % keep != 0 {
                dropped[b as usize][i as usize] = true;
                *counts
                    .entry(parsed[b as usize].2.node(i as usize))
                    .or_default() += 1;
            }
            k += 1;
        }
        drop(places);
        let mut buf = Vec::new();
        let mut update = tx.prepare_cached(
            "UPDATE batch SET level = 1, n_records = ?2, n_bytes = ?3, bytes = ?4 WHERE id = ?1",
        )?;
        let mut delete = tx.prepare_cached("DELETE FROM batch WHERE id = ?1")?;
        for ((id, n_bytes, raw), dropped) in parsed.iter().zip(dropped) {
            let kept = dropped.iter().filter(|&&d| !d).count();
            self.bytes -= n_bytes;
            if kept == 0 {
                delete.execute([*id as i64])?;
                self.batches -= 1;
            } else {
                raw.encode_subset(|i| !dropped[i], &mut buf);
                let new_bytes = buf.len() as u64 + ROW_OVERHEAD;
                update.execute(params![*id as i64, kept as i64, new_bytes as i64, buf])?;
                self.bytes += new_bytes;
            }
        }
        for (node, n) in counts {
            add_drop(tx, node, DropReason::Downsampled, n)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recycler_hands_back_buffers_up_to_its_limit() {
        let r = Recycler::new(100);
        r.give_back([Vec::with_capacity(60), Vec::with_capacity(60)]);
        let buf = r.take();
        assert!(buf.capacity() >= 60 && buf.is_empty());
        // The second was over the limit and freed.
        assert_eq!(r.take().capacity(), 0);
    }
}
