//! Working through a campaign's waves (the rules are in the [module documentation](super)).
//!
//! A node is *claimed* — moved from pending to transferring — under the campaigns' lock, and
//! a halt (by the threshold or an engineer) skips the pending nodes under the same lock, so no
//! transfer can start after a halt, however the two race.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tianzhong_protocol::image::ImageFile;
use tokio::task::JoinSet;

use super::state::{NodeState, Status};
use super::{Inner, plan::TargetNode, update};

/// Claims node `seq` of campaign `id` if the campaign is running and the node pending.
fn claim(inner: &Inner, id: u64, seq: usize, total: usize) -> bool {
    let mut map = inner.lock();
    let Some(e) = map.get_mut(&id) else {
        return false;
    };
    if e.campaign.status != Status::Running || e.campaign.nodes[seq].state != NodeState::Pending {
        return false;
    }
    inner.set_node(
        &mut e.campaign,
        seq,
        NodeState::Transferring { done: 0, total },
    );
    true
}

/// A node's progress or end; an end may halt the campaign.
fn record(inner: &Inner, id: u64, seq: usize, state: NodeState) {
    let mut map = inner.lock();
    let Some(e) = map.get_mut(&id) else {
        return;
    };
    let c = &mut e.campaign;
    // A verification's steps after the node's end (none are sent) are ignored.
    if c.nodes[seq].state.finished() {
        return;
    }
    if let (NodeState::Transferring { .. }, NodeState::Transferring { .. }) =
        (&c.nodes[seq].state, &state)
    {
        c.nodes[seq].state = state;
        return;
    }
    let failed = matches!(state, NodeState::Failed { .. });
    inner.set_node(c, seq, state);
    if !failed || c.status != Status::Running {
        return;
    }
    let n = &c.nodes[seq];
    let why = if n.wave == 0 {
        Some(format!(
            "canary node {} (bus {}, unit {}) failed: every canary must update",
            n.node, n.bus, n.unit
        ))
    } else {
        let counts = c.counts();
        c.threshold
            .passed(counts.failed, counts.failed + counts.updated)
    };
    if let Some(why) = why {
        let user = c.run_by.clone();
        inner.halt(c, &user, &why);
    }
}

/// Runs campaign `id` from its current wave until it completes, halts, or the gateway stops.
pub(super) async fn run(inner: Arc<Inner>, id: u64) {
    let mut shutdown = inner.shutdown.clone();
    tokio::select! {
        _ = waves(&inner, id) => {}
        // Stopping drops the tasks in flight; the store still says `running`, and the next
        // start halts the campaign (see the module documentation).
        _ = shutdown.wait_for(|s| *s) => {}
    }
    if let Some(e) = inner.lock().get_mut(&id) {
        e.active = false;
    }
}

async fn waves(inner: &Arc<Inner>, id: u64) {
    let Some((image, plan, first)) = inner.lock().get(&id).map(|e| {
        (
            Arc::clone(&e.image),
            e.campaign.waves.len(),
            e.campaign.wave,
        )
    }) else {
        return;
    };
    let parsed = match ImageFile::parse(&image) {
        Ok(p) => p,
        Err(e) => {
            // Checked when the campaign was created and stored as it was: only a damaged
            // store gets here.
            let mut map = inner.lock();
            if let Some(entry) = map.get_mut(&id) {
                inner.halt(
                    &mut entry.campaign,
                    "system",
                    &format!("the stored image does not parse any more: {e}"),
                );
            }
            return;
        }
    };
    let version = parsed.header.version;
    let model = parsed.header.hardware.model.as_str().to_owned();
    let revision = parsed.header.hardware.revision;
    for wave in first..plan {
        let (pending, parallel, verify) = {
            let mut map = inner.lock();
            let Some(e) = map.get_mut(&id) else { return };
            let c = &mut e.campaign;
            if c.status != Status::Running {
                return;
            }
            let pending: Vec<usize> = (0..c.nodes.len())
                .filter(|&s| c.nodes[s].wave == wave && c.nodes[s].state == NodeState::Pending)
                .collect();
            c.wave = wave;
            inner.save_head(c);
            if !pending.is_empty() {
                inner.audit(
                    &c.run_by,
                    "campaign.wave",
                    &format!("campaign/{id}/wave/{wave}"),
                    None,
                    Some(&format!(
                        "started: {} nodes{}",
                        pending.len(),
                        if wave == 0 { " (canary)" } else { "" }
                    )),
                    "",
                );
                tracing::info!(
                    campaign = id,
                    wave,
                    nodes = pending.len(),
                    "campaign wave starts"
                );
            }
            (
                pending,
                c.tcp_parallel,
                Duration::from_secs_f64(c.verify_timeout_s),
            )
        };
        let mut queue: VecDeque<usize> = pending.into();
        let mut busy_rtu: HashSet<String> = HashSet::new();
        let mut tcp = 0usize;
        let mut tasks = JoinSet::new();
        loop {
            // Start what the limits allow, in campaign order.
            while let Some(pos) = queue.iter().position(|&s| {
                let t = target(inner, id, s);
                match t {
                    Some(t) if t.rtu() => !busy_rtu.contains(&t.bus),
                    Some(_) => tcp < parallel,
                    None => true,
                }
            }) {
                let seq = queue.remove(pos).expect("found above");
                let Some(t) = target(inner, id, seq) else {
                    // Resumed after a restart with a configuration that dropped the node.
                    record(
                        inner,
                        id,
                        seq,
                        NodeState::Failed {
                            reason: "the node is no longer in the gateway's configuration".into(),
                        },
                    );
                    continue;
                };
                if !claim(inner, id, seq, image.len()) {
                    // Halted: nothing more starts.
                    queue.clear();
                    break;
                }
                if t.rtu() {
                    busy_rtu.insert(t.bus.clone());
                } else {
                    tcp += 1;
                }
                let (inner2, image2, model2) =
                    (Arc::clone(inner), Arc::clone(&image), model.clone());
                let line = inner.buses.get(&t.bus).cloned();
                tasks.spawn(async move {
                    let result = update::update_node(
                        &t,
                        line,
                        &image2,
                        (&model2, revision),
                        version,
                        verify,
                        |s| record(&inner2, id, seq, s),
                    )
                    .await;
                    (t, seq, result)
                });
            }
            let Some(done) = tasks.join_next().await else {
                break;
            };
            let Ok((t, seq, result)) = done else {
                tracing::error!(campaign = id, "a node's update task panicked");
                continue;
            };
            if t.rtu() {
                busy_rtu.remove(&t.bus);
            } else {
                tcp -= 1;
            }
            let end = match result {
                Ok(version) => NodeState::Updated { version },
                Err(reason) => NodeState::Failed { reason },
            };
            record(inner, id, seq, end);
        }
    }
    let mut map = inner.lock();
    if let Some(e) = map.get_mut(&id)
        && e.campaign.status == Status::Running
    {
        let c = &mut e.campaign;
        c.status = Status::Completed;
        inner.save_head(c);
        let counts = c.counts();
        inner.audit(
            &c.run_by,
            "campaign.complete",
            &format!("campaign/{id}"),
            Some(Status::Running.key()),
            Some(&format!(
                "completed: {} updated, {} failed",
                counts.updated, counts.failed
            )),
            "",
        );
        tracing::info!(
            campaign = id,
            updated = counts.updated,
            failed = counts.failed,
            "campaign completed"
        );
    }
}

/// The configured node behind node `seq` of campaign `id`.
fn target(inner: &Inner, id: u64, seq: usize) -> Option<TargetNode> {
    let map = inner.lock();
    let node = &map.get(&id)?.campaign.nodes.get(seq)?.node;
    inner.targets.iter().find(|t| &t.id == node).cloned()
}
