//! The durable outbox between sources and sinks: what the gateway accepted is on disk before
//! it is acknowledged, and leaves only when every sink has confirmed it.
//!
//! ```text
//!  ingest ──append──▶ [pending, in memory] ──group commit (fsync)──▶ SQLite `batch`
//!    ▲ durable(ticket)                                                   │ read(sink) from cursor
//!    └── MQTT ack / Modbus "stored"                        sink ──ack(sink, id) / dead_letter
//! ```
//!
//! # Life of a batch
//!
//! | step | call | what happens |
//! |---|---|---|
//! | accept | [`Outbox::append_readings`], [`Outbox::append_alarm`] | encoded on the caller's thread ([`codec`]), given the next [`BatchId`] as its [`Ticket`], queued for the storage thread; waits only if more than `max_pending_bytes` are uncommitted |
//! | make durable | (storage thread) | pending batches are inserted in **one** transaction at most every `fsync_interval` after the first arrived (or once `commit_bytes` are pending), `synchronous=FULL` in WAL mode: the commit's fsync is what makes them durable |
//! | acknowledge | [`Outbox::durable`] | resolves once the ticket's batch is committed: only then may the MQTT source ack the message, or a Modbus reading count as stored |
//! | forward | [`Outbox::read`] | a sink's batches after its cursor, in id order; [`Outbox::wait_beyond`] waits for more |
//! | confirm | [`Outbox::ack`] | moves the sink's cursor (in memory; written with the next commit — a crash before that only replays, and sinks are idempotent) |
//! | reject | [`Outbox::dead_letter`] | copies the batch into `dead_letter` (see [`Outbox::dead_letters`]) and moves the cursor past it when nothing unconfirmed precedes it; an undecodable batch is set aside by `read` itself |
//! | delete | (storage thread) | batches up to the lowest cursor, at most every `purge_interval` (or at once when over the bound) — not per ack |
//!
//! Replay after an outage or a restart is simply reading from the cursor: in id order, which is
//! acceptance order. Delivery is at-least-once (a batch sent but not yet acked is sent again
//! after a crash); sinks are idempotent, so nothing is duplicated downstream.
//!
//! # Storage
//!
//! One SQLite database (rusqlite, bundled), WAL mode. Tables:
//!
//! | table | columns | notes |
//! |---|---|---|
//! | `batch` | `id` (= ticket), `kind` (0 readings, 1 alarm), `level` (1 once downsampled), `created_ms`, `n_records`, `n_bytes`, `bytes` | one row per appended batch, encoded by [`codec`] (34 bytes a reading) |
//! | `cursor` | `sink`, `last_id` | every id up to `last_id` is confirmed by that sink |
//! | `dead_letter` | `sink`, `batch_id`, `reason`, `at_ms`, `bytes` | the newest `dead_letter_keep` |
//! | `drops` | `node`, `reason`, `count` | every reading removed without delivery, per device |
//! | `meta` | `next_id`, `frontier` | ids are never reused, even once every batch is deleted |
//!
//! Sinks are named in [`OutboxConfig::sinks`]. A sink no longer named loses its cursor at open
//! (it would pin the backlog forever); a newly named one starts at the oldest stored batch.
//!
//! ## Why SQLite
//!
//! The spec asked for SQLite unless redb or fjall measured better. Measured on the 2-core
//! development machine with `cargo bench -p tianzhong-gateway --bench outbox` (release,
//! fsync interval 100 ms, durability on), SQLite already meets the targets, so redb and fjall
//! were not added:
//!
//! | measurement | batch size | result | target |
//! |---|---|---|---|
//! | appended + committed readings/s | 100 | 1 370 000 – 1 880 000 | ≥ 300 000 |
//! | appended + committed readings/s | 1 000 | 2 360 000 – 2 400 000 (80 MB/s stored) | ≥ 300 000 |
//! | reopen + first read after SIGKILL, 211 MB backlog (235 MB file) | — | 0.03 – 0.06 s (the 1 GB case, `TIANZHONG_OUTBOX_BENCH_BACKLOG_MB=1024`, not yet run; open reads only the `n_bytes` column) | < 5 s |
//! | RSS while appending (process total, incl. the harness's batches) | — | 48 – 72 MB | < 100 MB |
//! | peak RSS of the process building the 211 MB backlog | — | 115 – 134 MB (**over**; not yet explained: pending is bounded at 16 MiB, SQLite's cache at 8 MiB) | < 100 MB |
//!
//! What made it fast: one row per appended batch (not per reading), a fixed 34-byte record
//! layout with each batch's site and node ids written once, encoding on the caller's thread
//! (so the second core does it while the storage thread commits), prepared statements, and
//! one transaction per group. Reopening reads only the `n_bytes` column to recover the byte
//! count, so it does not grow with the size of the blobs.
//!
//! # Bound and what is given up when full
//!
//! The outbox is bounded by [`OutboxConfig::max_bytes`], accounted as the sum over stored
//! batches of their encoded size plus [`store::ROW_OVERHEAD`] (the file itself is that plus
//! free pages SQLite reuses, plus a WAL kept under 64 MiB). When a commit takes it over the
//! bound, in the same transaction, it sheds down to 95 % of the bound, in this order:
//!
//! | order | what | how | counted in `drops` as |
//! |---|---|---|---|
//! | 0 | batches every sink confirmed | purged at once | (not a drop) |
//! | 1 | routine readings, oldest first | **downsampled once**: across each 8 MiB window of the oldest not-yet-downsampled reading batches, of each (node, channel)'s readings in time order the 1st, (k+1)th, (2k+1)th… are kept (`k` = `downsample_keep_one_in`, default 2: every 2nd) | [`DropReason::Downsampled`] |
//! | 2 | routine readings, oldest first | whole batches dropped (already downsampled ones first, being oldest) | [`DropReason::Full`] |
//! | 3 | alarm transitions, oldest first | only when no routine reading is left | [`DropReason::FullAlarm`] |
//!
//! Every reading removed is counted per node in the same transaction that removes it, so the
//! count is exact across crashes ([`Outbox::drops`], never silent). A batch appended while
//! the outbox is full of alarms may itself be dropped (and counted) at its commit; its ticket
//! still resolves, since the gateway has taken responsibility for it and recorded the loss.
//!
//! # Crash safety and shutdown
//!
//! [`Outbox::durable`] resolves only after the commit containing the batch returned, with
//! `synchronous=FULL`: a SIGKILL (or power cut) after that loses nothing confirmed. A crash
//! loses uncommitted batches — which nobody was told were stored — and cursor moves since the
//! last commit (replayed, harmless). [`Outbox::close`] (or dropping every handle) commits
//! everything pending and checkpoints the WAL.

pub mod codec;
pub mod store;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tianzhong_protocol::NodeId;
use tokio::sync::{oneshot, watch};

use crate::pipeline::Record;
use codec::Decoded;
use store::{Cmd, Pending, Store};

/// A batch's id: its position in acceptance order, never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct BatchId(pub u64);

/// What [`Outbox::append_readings`] returns: the id of the (last) batch it stored; pass it to
/// [`Outbox::durable`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ticket(pub BatchId);

/// What a stored batch holds.
#[derive(Clone, Debug, PartialEq)]
pub enum Entry {
    /// Routine readings.
    Readings(Vec<Record>),
    /// An alarm transition of a node, serialized by the alarm engine; kept over readings.
    Alarm {
        /// The node the alarm is about (drops are counted per node).
        node: NodeId,
        /// Opaque to the outbox.
        payload: Vec<u8>,
    },
}

/// A batch as a sink reads it.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// Its id; ack it (or a later one) once sent.
    pub id: BatchId,
    /// Its contents.
    pub entry: Entry,
    /// Whether some of its readings were downsampled away while the outbox was full.
    pub downsampled: bool,
}

/// Why readings were removed without delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DropReason {
    /// Thinned out to make room (the outbox was full).
    Downsampled,
    /// A routine batch dropped to make room.
    Full,
    /// An alarm transition dropped to make room (no routine reading was left).
    FullAlarm,
    /// An undecodable batch dropped to make room (counted under the node `""`).
    Undecodable,
}

impl DropReason {
    /// The label used in the `drops` table and in metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            DropReason::Downsampled => "downsampled",
            DropReason::Full => "full",
            DropReason::FullAlarm => "full_alarm",
            DropReason::Undecodable => "undecodable",
        }
    }

    fn from_str(s: &str) -> Option<DropReason> {
        [
            DropReason::Downsampled,
            DropReason::Full,
            DropReason::FullAlarm,
            DropReason::Undecodable,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }
}

/// Readings of one node removed for one reason, since the outbox was created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Drop {
    /// The node id.
    pub node: String,
    /// Why.
    pub reason: DropReason,
    /// How many readings (an alarm transition counts as one).
    pub count: u64,
}

/// A batch a sink rejected, kept for inspection.
#[derive(Clone, Debug, PartialEq)]
pub struct DeadLetter {
    /// The sink that rejected it.
    pub sink: String,
    /// The batch.
    pub batch: BatchId,
    /// The sink's reason.
    pub reason: String,
    /// When, ms since the Unix epoch.
    pub at_ms: u64,
    /// The batch as stored ([`codec`]).
    pub bytes: Vec<u8>,
}

/// One sink's position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SinkStats {
    /// The sink.
    pub name: String,
    /// Every batch up to this one is confirmed.
    pub acked: BatchId,
    /// Batch ids between its cursor and the newest durable batch (an upper bound on the
    /// batches it has yet to confirm).
    pub behind: u64,
}

/// The outbox's state, for metrics and the console.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxStats {
    /// Stored batches.
    pub batches: u64,
    /// Accounted bytes (what [`OutboxConfig::max_bytes`] bounds).
    pub bytes: u64,
    /// The database file's pages, in bytes (WAL excluded).
    pub file_bytes: u64,
    /// Of which free pages, reused before the file grows.
    pub free_bytes: u64,
    /// The newest durable batch.
    pub durable: BatchId,
    /// Bytes appended but not yet committed.
    pub pending_bytes: u64,
    /// Every configured sink.
    pub sinks: Vec<SinkStats>,
    /// Dead letters kept.
    pub dead_letters: u64,
    /// Readings dropped in all (see [`Outbox::drops`]).
    pub dropped: u64,
}

/// Outbox settings.
#[derive(Clone, Debug)]
pub struct OutboxConfig {
    /// The bound on stored bytes (see the [module docs](self)). Default 1 GiB.
    pub max_bytes: u64,
    /// The longest a batch waits for its group commit. Default 100 ms. Zero commits whatever
    /// is queued as soon as the storage thread is free.
    pub fsync_interval: Duration,
    /// Commit early once this many bytes are pending. Default 4 MiB.
    pub commit_bytes: usize,
    /// Appends wait (backpressure) while this many bytes are uncommitted. Default 16 MiB
    /// (it bounds the outbox's share of RSS).
    pub max_pending_bytes: usize,
    /// The sinks, each with its own cursor.
    pub sinks: Vec<String>,
    /// When full, routine readings are downsampled to one in this many before any batch is
    /// dropped. Default 2; 1 disables downsampling.
    pub downsample_keep_one_in: u32,
    /// How often confirmed batches are deleted. Default 1 s.
    pub purge_interval: Duration,
    /// How many dead letters are kept (newest). Default 10 000.
    pub dead_letter_keep: u32,
}

impl Default for OutboxConfig {
    fn default() -> OutboxConfig {
        OutboxConfig {
            max_bytes: 1 << 30,
            fsync_interval: Duration::from_millis(100),
            commit_bytes: 4 << 20,
            max_pending_bytes: 16 << 20,
            sinks: Vec::new(),
            downsample_keep_one_in: 2,
            purge_interval: Duration::from_secs(1),
            dead_letter_keep: 10_000,
        }
    }
}

/// Outbox errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// SQLite failed.
    #[error("outbox storage: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The storage thread has stopped (closed, or it panicked).
    #[error("the outbox is closed")]
    Closed,
    /// A sink not in [`OutboxConfig::sinks`].
    #[error("the outbox has no sink named {0:?}")]
    UnknownSink(String),
    /// The storage thread could not be started.
    #[error("outbox thread: {0}")]
    Thread(std::io::Error),
}

struct Inner {
    /// The next id and the sender, locked together so that ids reach the storage thread in
    /// order.
    tx: Mutex<(u64, mpsc::Sender<Cmd>)>,
    durable: watch::Receiver<u64>,
    inflight: Arc<AtomicUsize>,
    max_pending: usize,
}

/// A handle to the outbox; cheap to clone. Every method is safe to call from any task.
#[derive(Clone)]
pub struct Outbox {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("durable", &*self.inner.durable.borrow())
            .finish_non_exhaustive()
    }
}

impl Outbox {
    /// Opens (creating) the outbox at `path` and starts its storage thread. Blocking (it may
    /// recover a WAL): call it at startup or from `spawn_blocking`.
    pub fn open(path: &Path, config: OutboxConfig) -> Result<Outbox, Error> {
        let inflight = Arc::new(AtomicUsize::new(0));
        let max_pending = config.max_pending_bytes;
        let opened = Store::open(path, config, inflight.clone())?;
        let (durable_tx, durable_rx) = watch::channel(opened.store.durable());
        let (tx, rx) = mpsc::channel();
        let store = opened.store;
        std::thread::Builder::new()
            .name("outbox".into())
            .spawn(move || store.run(rx, durable_tx))
            .map_err(Error::Thread)?;
        Ok(Outbox {
            inner: Arc::new(Inner {
                tx: Mutex::new((opened.next_id, tx)),
                durable: durable_rx,
                inflight,
                max_pending,
            }),
        })
    }

    async fn room(&self) -> Result<(), Error> {
        loop {
            let mut rx = self.inner.durable.clone();
            rx.mark_unchanged();
            if self.inner.inflight.load(Ordering::Acquire) < self.inner.max_pending {
                return Ok(());
            }
            rx.changed().await.map_err(|_| Error::Closed)?;
        }
    }

    fn enqueue(&self, kind: u8, n_records: u32, bytes: Vec<u8>) -> Result<Ticket, Error> {
        self.inner.inflight.fetch_add(bytes.len(), Ordering::AcqRel);
        let mut guard = self.inner.tx.lock().unwrap_or_else(|e| e.into_inner());
        let id = guard.0;
        guard
            .1
            .send(Cmd::Append(Pending {
                id,
                kind,
                n_records,
                bytes,
            }))
            .map_err(|_| Error::Closed)?;
        guard.0 += 1;
        Ok(Ticket(BatchId(id)))
    }

    /// Accepts readings (split into batches of at most [`codec::MAX_RECORDS`]). Returns once
    /// queued, not once durable: await [`Outbox::durable`] before acknowledging them.
    /// An empty slice stores nothing and returns the newest ticket.
    pub async fn append_readings(&self, records: &[Record]) -> Result<Ticket, Error> {
        let mut ticket = Ticket(BatchId(self.inner.tx.lock().map_or(1, |g| g.0) - 1));
        for part in records.chunks(codec::MAX_RECORDS) {
            let mut bytes = Vec::new();
            codec::encode_readings(part, &mut bytes);
            self.room().await?;
            ticket = self.enqueue(codec::KIND_READINGS, part.len() as u32, bytes)?;
        }
        Ok(ticket)
    }

    /// Accepts an alarm transition of `node` (an opaque payload).
    pub async fn append_alarm(&self, node: &NodeId, payload: &[u8]) -> Result<Ticket, Error> {
        let mut bytes = Vec::new();
        codec::encode_alarm(node, payload, &mut bytes);
        self.room().await?;
        self.enqueue(codec::KIND_ALARM, 1, bytes)
    }

    /// Accepts an [`Entry`].
    pub async fn append(&self, entry: &Entry) -> Result<Ticket, Error> {
        match entry {
            Entry::Readings(r) => self.append_readings(r).await,
            Entry::Alarm { node, payload } => self.append_alarm(node, payload).await,
        }
    }

    /// Resolves once the ticket's batch (and every earlier one) is durable.
    pub async fn durable(&self, ticket: Ticket) -> Result<(), Error> {
        self.wait_beyond(BatchId(ticket.0.0.saturating_sub(1)))
            .await
            .map(|_| ())
    }

    /// The newest durable batch.
    pub fn durable_id(&self) -> BatchId {
        BatchId(*self.inner.durable.borrow())
    }

    /// Waits until some batch after `id` is durable; returns the newest durable id. A sink
    /// that read nothing waits here with its cursor.
    pub async fn wait_beyond(&self, id: BatchId) -> Result<BatchId, Error> {
        let mut rx = self.inner.durable.clone();
        let v = rx
            .wait_for(|&d| d > id.0)
            .await
            .map_err(|_| Error::Closed)?;
        Ok(BatchId(*v))
    }

    async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Cmd) -> Result<T, Error> {
        let (reply, rx) = oneshot::channel();
        {
            let guard = self.inner.tx.lock().unwrap_or_else(|e| e.into_inner());
            guard.1.send(make(reply)).map_err(|_| Error::Closed)?;
        }
        rx.await.map_err(|_| Error::Closed)
    }

    /// Up to `max_batches` durable batches after `sink`'s cursor, in order. A batch that does
    /// not decode is dead-lettered for this sink and left out.
    pub async fn read(&self, sink: &str, max_batches: usize) -> Result<Vec<Batch>, Error> {
        self.read_after(sink, None, max_batches).await
    }

    /// Like [`Outbox::read`], but after `after` when that is beyond the sink's cursor: for a
    /// sink with batches in flight (sent, not yet confirmed), which must not be read twice.
    pub async fn read_after(
        &self,
        sink: &str,
        after: Option<BatchId>,
        max_batches: usize,
    ) -> Result<Vec<Batch>, Error> {
        let sink_owned = sink.to_owned();
        let raw = self
            .call(|reply| Cmd::Read {
                sink: sink_owned,
                after: after.map(|a| a.0),
                max: max_batches,
                reply,
            })
            .await??;
        let mut out = Vec::with_capacity(raw.len());
        for b in raw {
            match codec::decode(&b.bytes) {
                Ok(d) => out.push(Batch {
                    id: BatchId(b.id),
                    entry: match d {
                        Decoded::Readings(r) => Entry::Readings(r),
                        Decoded::Alarm(node, payload) => Entry::Alarm { node, payload },
                    },
                    downsampled: b.level > 0,
                }),
                Err(e) => {
                    self.dead_letter(sink, BatchId(b.id), &e.to_string())
                        .await?
                }
            }
        }
        Ok(out)
    }

    /// Confirms, for `sink`, every batch up to `upto` (sent, or dead-lettered).
    pub async fn ack(&self, sink: &str, upto: BatchId) -> Result<(), Error> {
        let sink = sink.to_owned();
        self.call(|reply| Cmd::Ack {
            sink,
            upto: upto.0,
            reply,
        })
        .await?
    }

    /// Sets aside a batch `sink` rejected as malformed, with the sink's reason, so that it
    /// does not block the queue. Committed at once.
    pub async fn dead_letter(&self, sink: &str, batch: BatchId, reason: &str) -> Result<(), Error> {
        let (sink, reason) = (sink.to_owned(), reason.to_owned());
        self.call(|reply| Cmd::DeadLetter {
            sink,
            id: batch.0,
            reason,
            reply,
        })
        .await?
    }

    /// The dead letters kept, oldest first.
    pub async fn dead_letters(&self) -> Result<Vec<DeadLetter>, Error> {
        self.call(Cmd::DeadLetters).await?
    }

    /// Every drop count, by node and reason.
    pub async fn drops(&self) -> Result<Vec<Drop>, Error> {
        self.call(Cmd::Drops).await?
    }

    /// Sizes, cursors and counts.
    pub async fn stats(&self) -> Result<OutboxStats, Error> {
        self.call(Cmd::Stats).await?
    }

    /// Commits everything queued now, without waiting for the interval.
    pub async fn flush(&self) -> Result<(), Error> {
        self.call(Cmd::Flush).await?
    }

    /// Commits everything queued, checkpoints the WAL and stops the storage thread; every
    /// handle fails with [`Error::Closed`] afterwards.
    pub async fn close(&self) -> Result<(), Error> {
        self.call(Cmd::Close).await?
    }
}
