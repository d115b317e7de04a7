//! Feeding a sink from the durable outbox, and hearing back what it wrote.
//!
//! One feeder per sink: it reads the sink's batches from the outbox in order, after what it
//! has already sent, and hands them to the sink as [`Delivery`]s. The sink confirms each batch
//! through its [`Acker`] once the batch is written where it goes (a database commit, a
//! broker's PUBACK, a 2xx from InfluxDB) — [`Confirmation::Done`] — or sets it aside as one
//! it can never write ([`Confirmation::Rejected`], a 400 for a malformed batch). The feeder
//! moves the sink's cursor in the outbox accordingly, so a batch is removed only once every
//! sink has confirmed it, and after a restart each sink resumes at its cursor: replay is just
//! reading on. Sinks write idempotently, so the batches sent but not confirmed before a crash
//! are written again without duplicates.
//!
//! A sink that is down (its database unreachable) stops confirming; its feeder stops once the
//! sink's channel is full, and the outbox keeps the backlog (within its bound) while the other
//! sinks go on.

use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tracing::{error, warn};

use super::account::{Accounts, NodeCounts, count_by_node};
use super::{Delivery, Output};
use crate::alarm::AlarmEvent;
use crate::outbox::{BatchId, Entry, Outbox};

/// Batches read from the outbox at a time.
pub const READ_BATCHES: usize = 256;

/// What a sink says about a batch.
#[derive(Clone, Debug, PartialEq)]
pub enum Confirmation {
    /// Written: this batch and every earlier one the sink received.
    Done(BatchId),
    /// Never writable (the sink's reason); set aside as a dead letter.
    Rejected(BatchId, String),
}

/// A sink's way to confirm batches; a sink not fed from the outbox gets [`Acker::none`].
#[derive(Clone, Debug, Default)]
pub struct Acker(Option<mpsc::UnboundedSender<Confirmation>>);

impl Acker {
    /// Confirms nothing (a sink fed directly).
    pub fn none() -> Acker {
        Acker(None)
    }

    /// An acker and the feeder's end of it.
    pub fn channel() -> (Acker, mpsc::UnboundedReceiver<Confirmation>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Acker(Some(tx)), rx)
    }

    /// Batch `id`, and every earlier one, is written.
    pub fn done(&self, id: Option<BatchId>) {
        if let (Some(tx), Some(id)) = (&self.0, id) {
            let _ = tx.send(Confirmation::Done(id));
        }
    }

    /// Batch `id` can never be written.
    pub fn rejected(&self, id: Option<BatchId>, reason: &str) {
        if let (Some(tx), Some(id)) = (&self.0, id) {
            let _ = tx.send(Confirmation::Rejected(id, reason.to_owned()));
        }
    }
}

fn delivery(entry: Entry, id: BatchId) -> Result<Delivery, String> {
    let output = match entry {
        Entry::Readings(records) => Output::Readings(records.into()),
        Entry::Alarm { payload, .. } => {
            let v: serde_json::Value = serde_json::from_slice(&payload)
                .map_err(|e| format!("alarm transition is not JSON: {e}"))?;
            Output::Alarms(Arc::from([AlarmEvent::from_json(&v)?]))
        }
        Entry::Status(status) => Output::Status(Arc::new(status)),
    };
    Ok(Delivery {
        output,
        batch: Some(id),
    })
}

/// Feeds `sink` from `outbox` until the pipeline has stopped (`ingest_done`) and everything
/// durable was sent, then closes the sink's channel and waits for its last confirmations.
/// Readings it confirms are counted in `accounts`; `None` for a sink that takes no readings
/// (the alarm log), which would otherwise count as delivering them.
pub async fn run(
    outbox: Arc<Outbox>,
    sink: String,
    tx: mpsc::Sender<Delivery>,
    mut confirmations: mpsc::UnboundedReceiver<Confirmation>,
    mut ingest_done: watch::Receiver<bool>,
    accounts: Option<Arc<Accounts>>,
) {
    // Readings per node of each batch sent and not yet confirmed, for the accounts.
    let mut unsettled: std::collections::VecDeque<(BatchId, NodeCounts)> =
        std::collections::VecDeque::new();
    let mut tx = Some(tx);
    // The newest batch handed to the sink; reading goes on after it, not after the cursor,
    // so nothing is sent twice while confirmations lag.
    let mut sent: Option<BatchId> = None;
    let mut queue: std::collections::VecDeque<Delivery> = std::collections::VecDeque::new();
    loop {
        if queue.is_empty() && tx.is_some() {
            // Taken before reading: when the read finds nothing, no batch up to here is left
            // for this sink (confirmed, or shed when the outbox was full), so reading may go
            // on after it.
            let durable = outbox.durable_id();
            match outbox.read_after(&sink, sent, READ_BATCHES).await {
                Ok(batches) if batches.is_empty() => {
                    sent = Some(sent.unwrap_or_default().max(durable));
                }
                Ok(batches) => {
                    for b in batches {
                        sent = Some(b.id);
                        match delivery(b.entry, b.id) {
                            Ok(d) => {
                                if let (Output::Readings(r), Some(_)) = (&d.output, &accounts) {
                                    unsettled.push_back((b.id, count_by_node(r)));
                                }
                                queue.push_back(d);
                            }
                            Err(reason) => {
                                warn!(%sink, batch = b.id.0, "set aside: {reason}");
                                if let Err(e) = outbox.dead_letter(&sink, b.id, &reason).await {
                                    error!(%sink, "outbox: {e}");
                                }
                            }
                        }
                    }
                }
                Err(e) => {
                    error!(%sink, "outbox read failed: {e}; the sink is no longer fed");
                    tx = None;
                }
            }
        }
        let durable = outbox.durable_id();
        let position = sent.unwrap_or_default();
        if queue.is_empty() && *ingest_done.borrow() && durable <= position {
            // Everything stored was sent: let the sink flush and finish.
            tx = None;
        }
        let Some(sender) = tx.clone() else {
            // Closed: collect the last confirmations until the sink hangs up.
            drop(queue);
            while let Some(c) = confirmations.recv().await {
                confirm(&outbox, &sink, c, &mut unsettled, accounts.as_deref()).await;
            }
            return;
        };
        tokio::select! {
            biased;
            c = confirmations.recv() => match c {
                Some(c) => confirm(&outbox, &sink, c, &mut unsettled, accounts.as_deref()).await,
                None => return,
            },
            permit = sender.reserve(), if !queue.is_empty() => match permit {
                Ok(p) => p.send(queue.pop_front().expect("not empty")),
                Err(_) => return,
            },
            more = outbox.wait_beyond(position), if queue.is_empty() => {
                if more.is_err() {
                    tx = None;
                }
                // Batches between the position and the newest durable one may have been
                // dropped (shed when full): reading after the position skips them.
            },
            _ = ingest_done.changed(), if queue.is_empty() && !*ingest_done.borrow() => {}
        }
        drop(sender);
    }
}

async fn confirm(
    outbox: &Outbox,
    sink: &str,
    c: Confirmation,
    unsettled: &mut std::collections::VecDeque<(BatchId, NodeCounts)>,
    accounts: Option<&Accounts>,
) {
    let Some(accounts) = accounts else {
        return settle(outbox, sink, c).await;
    };
    match &c {
        Confirmation::Done(id) => {
            while unsettled.front().is_some_and(|(b, _)| b <= id) {
                if let Some((_, counts)) = unsettled.pop_front() {
                    accounts.settled(sink, &counts, true);
                }
            }
        }
        Confirmation::Rejected(id, _) => {
            if let Some(i) = unsettled.iter().position(|(b, _)| b == id)
                && let Some((_, counts)) = unsettled.remove(i)
            {
                accounts.settled(sink, &counts, false);
            }
        }
    }
    settle(outbox, sink, c).await;
}

async fn settle(outbox: &Outbox, sink: &str, c: Confirmation) {
    let result = match c {
        Confirmation::Done(id) => outbox.ack(sink, id).await,
        Confirmation::Rejected(id, reason) => {
            warn!(%sink, batch = id.0, "batch set aside as a dead letter: {reason}");
            outbox.dead_letter(sink, id, &reason).await
        }
    };
    if let Err(e) = result {
        error!(%sink, "outbox: {e}");
    }
}
