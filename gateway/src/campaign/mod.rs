//! Firmware campaigns over a fleet: one signed image to many Modbus nodes, canary nodes first,
//! then waves, halting when failures pass a threshold; every step audited and each node's
//! state visible in the API (`/api/campaigns`, engineers) and the console.
//!
//! # Module map
//!
//! | module | what |
//! |---|---|
//! | [`plan`] | the request: target nodes (a list, or a selection by model, site, group), waves, threshold, limits |
//! | [`image`] | the image checked before anything is sent: signature under a trusted key, hardware model |
//! | [`state`] | campaign and node states |
//! | [`update`] | one node: look, transfer (`crate::flash`; on a serial bus through its bus task), wait for its reset, read its version |
//! | [`runner`] | the waves: concurrency per bus, the halt threshold, halting and resuming |
//! | [`store`] | `campaigns.sqlite`: campaigns survive a restart |
//!
//! # Rules
//!
//! - **Waves.** Wave 0 is the canary wave; each later wave starts only when the one before
//!   finished and the campaign is still running.
//! - **Canaries** must all update: one failed canary halts the campaign.
//! - **Threshold.** After any node fails, the campaign halts at once if the failures pass the
//!   threshold: more than `max_failures`, or a failed share of finished nodes above
//!   `max_failure_ratio` (judged once 10 nodes finished). Halting starts no new transfer;
//!   transfers in flight finish (a node is never cut off mid-image by the campaign); every
//!   node not started becomes `skipped`.
//! - **Concurrency.** Modbus TCP nodes in parallel, up to `tcp_parallel`. One transfer at a
//!   time per Modbus RTU bus, across campaigns: a serial line has one master, the bus task
//!   that polls it, which carries the transfer's requests between its polls
//!   ([`crate::sources::modbus::lend`]), so the bus's other nodes keep being polled.
//! - **Halt and resume.** An engineer may halt a running campaign (the same as a threshold
//!   halt) and resume a halted one: its skipped nodes become pending again and the waves go on
//!   from where it stopped. A resume may raise the threshold; it is refused (409) while the
//!   failures already pass it.
//! - **Restart.** A campaign found `running` when the gateway starts was cut by the stop: it is
//!   marked halted, its nodes in flight go back to pending, and an engineer resumes it.
//! - **Overlap.** A campaign may not start (or resume) on a node that a running campaign
//!   holds (409).
//!
//! Every step is audited in the user store's audit trail with who and when:
//! `campaign.create`, `campaign.wave`, `campaign.node` (each state change but byte counts),
//! `campaign.halt`, `campaign.resume`, `campaign.complete`; automatic steps are recorded under
//! the user the campaign runs for (its creator, or who resumed it last).

pub mod image;
pub mod plan;
pub mod runner;
pub mod state;
pub mod store;
pub mod update;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use base64::Engine as _;
use tokio::sync::watch;

use crate::auth::{Principal, Users};
use crate::config::Config;
use crate::sources::modbus::lend::BusLines;
use plan::{NewCampaign, PlanError, TargetNode};
use state::{Campaign, CampaignNode, NodeState, Status};

/// Why a campaign request is refused; each maps to one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum CampaignError {
    /// A mistake in the request (400).
    #[error("{0}")]
    Bad(String),
    /// No such campaign or node (404).
    #[error("{0}")]
    NotFound(String),
    /// Not now: the campaign's state does not allow it, or another holds the nodes (409).
    #[error("{0}")]
    Conflict(String),
    /// The store failed (500).
    #[error("{0}")]
    Storage(String),
}

impl From<PlanError> for CampaignError {
    fn from(e: PlanError) -> CampaignError {
        match e {
            PlanError::Bad(m) => CampaignError::Bad(m),
            PlanError::Unknown(m) => CampaignError::NotFound(m),
        }
    }
}

/// Refused campaign requests, by status.
#[derive(Debug, Default)]
pub struct Refused {
    /// 400.
    pub bad_request: AtomicU64,
    /// 404.
    pub not_found: AtomicU64,
    /// 409.
    pub conflict: AtomicU64,
}

struct Entry {
    campaign: Campaign,
    image: Arc<Vec<u8>>,
    /// Whether a runner is working on it (it may still be finishing in-flight transfers after
    /// a halt).
    active: bool,
}

pub(crate) struct Inner {
    targets: Vec<TargetNode>,
    /// The serial buses' lent lines: transfers to their nodes go through the bus tasks.
    buses: BusLines,
    trusted: Vec<[u8; 32]>,
    users: Arc<Mutex<Users>>,
    store: Mutex<store::Store>,
    campaigns: Mutex<BTreeMap<u64, Entry>>,
    refused: Refused,
    metrics: Arc<crate::metrics::Metrics>,
    shutdown: watch::Receiver<bool>,
}

/// The gateway's campaigns.
#[derive(Clone)]
pub struct Campaigns {
    inner: Arc<Inner>,
}

/// A campaign as the API shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct View {
    /// The campaign.
    #[serde(flatten)]
    pub campaign: Campaign,
    /// Nodes by state.
    pub counts: state::Counts,
    /// Whether transfers or verifications are still in flight (also after a halt).
    pub active: bool,
}

fn now_ms() -> i64 {
    crate::pipeline::unix_ms() as i64
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<u64, Entry>> {
        self.campaigns.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records an audited step; a failing audit is logged, not fatal (the step happened).
    fn audit(
        &self,
        user: &str,
        action: &str,
        target: &str,
        old: Option<&str>,
        new: Option<&str>,
        reason: &str,
    ) {
        let users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = users.audit(user, action, target, old, new, reason) {
            tracing::error!("audit of {action} {target} by {user} failed: {e}");
        }
    }

    fn save_head(&self, c: &Campaign) {
        let store = self.store.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = store.save_head(c) {
            tracing::error!("campaign {}: {e}", c.id);
        }
    }

    fn save_node(&self, id: u64, seq: usize, n: &CampaignNode) {
        let store = self.store.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = store.save_node(id, seq, n) {
            tracing::error!("campaign {id}, node {}: {e}", n.node);
        }
    }

    /// Moves node `seq` of `c` to `state`: saved and audited when the state's kind changes
    /// (a transfer's byte count is only kept in memory). Called with the campaigns locked, so
    /// the audit trail's order is the order of the changes.
    fn set_node(&self, c: &mut Campaign, seq: usize, state: NodeState) {
        let n = &mut c.nodes[seq];
        let old = std::mem::replace(&mut n.state, state);
        if old.key() == n.state.key() {
            return;
        }
        match &n.state {
            NodeState::Transferring { .. } if old == NodeState::Pending => {
                n.started_ms = Some(now_ms());
            }
            s if s.finished() => n.finished_ms = Some(now_ms()),
            _ => {}
        }
        let n = n.clone();
        if matches!(
            n.state,
            NodeState::Updated { .. } | NodeState::Failed { .. } | NodeState::Skipped { .. }
        ) {
            self.metrics
                .campaign_nodes
                .get_or_create(&crate::metrics::KindLabels {
                    kind: n.state.key().into(),
                })
                .inc();
        }
        self.save_node(c.id, seq, &n);
        self.audit(
            &c.run_by,
            "campaign.node",
            &format!("campaign/{}/node/{}", c.id, n.node),
            Some(&old.audit_text()),
            Some(&n.state.audit_text()),
            &format!("wave {}, bus {}, unit {}", n.wave, n.bus, n.unit),
        );
    }

    /// Halts `c`: no transfer starts any more, and every pending node is skipped.
    fn halt(&self, c: &mut Campaign, user: &str, why: &str) {
        c.status = Status::Halted;
        c.halt_reason = Some(why.to_owned());
        c.halted_ms = Some(now_ms());
        self.save_head(c);
        self.audit(
            user,
            "campaign.halt",
            &format!("campaign/{}", c.id),
            Some(Status::Running.key()),
            Some(Status::Halted.key()),
            why,
        );
        tracing::warn!(campaign = c.id, "campaign halted: {why}");
        for seq in 0..c.nodes.len() {
            if c.nodes[seq].state == NodeState::Pending {
                self.set_node(
                    c,
                    seq,
                    NodeState::Skipped {
                        reason: why.to_owned(),
                    },
                );
            }
        }
    }

    fn refuse(&self, e: CampaignError) -> CampaignError {
        let counter = match &e {
            CampaignError::Bad(_) => Some((&self.refused.bad_request, "bad_request")),
            CampaignError::NotFound(_) => Some((&self.refused.not_found, "not_found")),
            CampaignError::Conflict(_) => Some((&self.refused.conflict, "conflict")),
            CampaignError::Storage(_) => None,
        };
        if let Some((c, reason)) = counter {
            self.count_refused(c, reason);
        }
        tracing::info!("campaign request refused: {e}");
        e
    }

    fn count_refused(&self, counter: &AtomicU64, reason: &str) {
        counter.fetch_add(1, Ordering::Relaxed);
        self.metrics
            .campaign_refused
            .get_or_create(&crate::metrics::ReasonLabels {
                reason: reason.into(),
            })
            .inc();
    }

    /// A running campaign other than `except` holding one of `nodes`.
    fn holder(
        map: &BTreeMap<u64, Entry>,
        nodes: &[String],
        except: Option<u64>,
    ) -> Option<(u64, String)> {
        map.values()
            .filter(|e| Some(e.campaign.id) != except)
            .filter(|e| e.campaign.status == Status::Running || e.active)
            .find_map(|e| {
                e.campaign
                    .nodes
                    .iter()
                    .find(|n| nodes.contains(&n.node))
                    .map(|n| (e.campaign.id, n.node.clone()))
            })
    }
}

impl Campaigns {
    /// The campaigns of the gateway configured by `config`: those saved in its data directory,
    /// with any that a stop cut halted (see the module documentation). Transfers to nodes on
    /// a serial bus go through `buses`, the lines its bus task lends.
    pub fn open(
        config: &Config,
        users: Arc<Mutex<Users>>,
        metrics: Arc<crate::metrics::Metrics>,
        shutdown: watch::Receiver<bool>,
        buses: BusLines,
    ) -> Result<Campaigns, String> {
        let store = store::Store::open(&config.gateway.data_dir.join(store::FILE_NAME))?;
        let loaded = store.load()?;
        let inner = Arc::new(Inner {
            targets: TargetNode::from_config(config),
            buses,
            trusted: config.trusted_keys.clone(),
            users,
            store: Mutex::new(store),
            campaigns: Mutex::new(BTreeMap::new()),
            refused: Refused::default(),
            metrics,
            shutdown,
        });
        {
            let mut map = inner.lock();
            for (mut c, image) in loaded {
                if c.status == Status::Running {
                    for seq in 0..c.nodes.len() {
                        if c.nodes[seq].state.in_flight() {
                            inner.set_node(&mut c, seq, NodeState::Pending);
                        }
                    }
                    // No user halted it: the audit trail says so.
                    inner.halt(
                        &mut c,
                        "system",
                        "the gateway stopped while the campaign ran; resume it to go on",
                    );
                }
                map.insert(
                    c.id,
                    Entry {
                        campaign: c,
                        image: Arc::new(image),
                        active: false,
                    },
                );
            }
        }
        Ok(Campaigns { inner })
    }

    /// Refused requests so far.
    pub fn refused(&self) -> &Refused {
        &self.inner.refused
    }

    /// Counts a request refused before it reached the campaigns (a body or an id that does
    /// not parse: 400).
    pub fn count_bad_request(&self) {
        self.inner
            .count_refused(&self.inner.refused.bad_request, "bad_request");
    }

    /// Checks `req` and starts the campaign it describes, for `who`.
    pub fn create(&self, who: &Principal, req: NewCampaign) -> Result<View, CampaignError> {
        self.try_create(who, req).map_err(|e| self.inner.refuse(e))
    }

    fn try_create(&self, who: &Principal, req: NewCampaign) -> Result<View, CampaignError> {
        let inner = &self.inner;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(req.image_base64.trim())
            .map_err(|e| CampaignError::Bad(format!("image_base64: not base64: {e}")))?;
        let info = image::check(&bytes, &inner.trusted).map_err(CampaignError::Bad)?;
        let targets = plan::targets(&inner.targets, &req)?;
        plan::check_links(&targets, &inner.buses)?;
        plan::check_models(&targets, &info.model)?;
        let waves = plan::waves(targets.len(), req.canary, &req.waves)?;
        let (threshold, tcp_parallel, verify_timeout_s) = plan::limits(&req)?;
        let mut map = inner.lock();
        let ids: Vec<String> = targets.iter().map(|t| t.id.clone()).collect();
        if let Some((other, node)) = Inner::holder(&map, &ids, None) {
            return Err(CampaignError::Conflict(format!(
                "campaign {other} is running on node `{node}`; halt it or wait for it to finish"
            )));
        }
        let id = map.keys().next_back().map_or(1, |k| k + 1);
        let mut nodes = Vec::with_capacity(targets.len());
        let mut wave_of = waves
            .iter()
            .enumerate()
            .flat_map(|(w, &n)| std::iter::repeat_n(w, n));
        for t in &targets {
            nodes.push(CampaignNode {
                node: t.id.clone(),
                bus: t.bus.clone(),
                unit: t.unit,
                wave: wave_of.next().unwrap_or(0),
                state: NodeState::Pending,
                started_ms: None,
                finished_ms: None,
            });
        }
        let campaign = Campaign {
            id,
            created_ms: now_ms(),
            created_by: who.user.clone(),
            reason: req.reason.trim().to_owned(),
            run_by: who.user.clone(),
            image: info,
            waves,
            wave: 0,
            threshold,
            tcp_parallel,
            verify_timeout_s,
            status: Status::Running,
            halt_reason: None,
            halted_ms: None,
            nodes,
        };
        inner
            .store
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(&campaign, &bytes)
            .map_err(CampaignError::Storage)?;
        inner.audit(
            &who.user,
            "campaign.create",
            &format!("campaign/{id}"),
            None,
            Some(&format!(
                "image {} {} ({} B, sha256 {}); {} nodes in waves {:?}; threshold {}",
                campaign.image.model,
                campaign.image.version,
                campaign.image.size,
                campaign.image.sha256,
                campaign.nodes.len(),
                campaign.waves,
                serde_json::to_string(&campaign.threshold).unwrap_or_default()
            )),
            &campaign.reason,
        );
        tracing::info!(
            campaign = id,
            user = %who.user,
            nodes = campaign.nodes.len(),
            waves = ?campaign.waves,
            "campaign created: {} {}",
            campaign.image.model,
            campaign.image.version
        );
        map.insert(
            id,
            Entry {
                campaign,
                image: Arc::new(bytes),
                active: true,
            },
        );
        let view = view(&map[&id]);
        drop(map);
        tokio::spawn(runner::run(Arc::clone(inner), id));
        Ok(view)
    }

    /// Every campaign, newest first.
    pub fn list(&self) -> Vec<View> {
        self.inner.lock().values().rev().map(view).collect()
    }

    /// One campaign.
    pub fn get(&self, id: u64) -> Result<View, CampaignError> {
        self.inner
            .lock()
            .get(&id)
            .map(view)
            .ok_or_else(|| self.inner.refuse(not_found(id)))
    }

    /// Halts a running campaign for `who`.
    pub fn halt(&self, who: &Principal, id: u64, reason: &str) -> Result<View, CampaignError> {
        let inner = &self.inner;
        let result = (|| {
            if reason.trim().is_empty() {
                return Err(CampaignError::Bad("reason: say why".into()));
            }
            let mut map = inner.lock();
            let entry = map.get_mut(&id).ok_or_else(|| not_found(id))?;
            if entry.campaign.status != Status::Running {
                return Err(CampaignError::Conflict(format!(
                    "campaign {id} is {}, not running",
                    entry.campaign.status.key()
                )));
            }
            inner.halt(
                &mut entry.campaign,
                &who.user,
                &format!("halted by {}: {}", who.user, reason.trim()),
            );
            Ok(view(entry))
        })();
        result.map_err(|e| inner.refuse(e))
    }

    /// Resumes a halted campaign for `who`, with a new threshold if given.
    pub fn resume(
        &self,
        who: &Principal,
        id: u64,
        reason: &str,
        threshold: Option<state::Threshold>,
    ) -> Result<View, CampaignError> {
        let inner = &self.inner;
        let result = (|| {
            if reason.trim().is_empty() {
                return Err(CampaignError::Bad("reason: say why".into()));
            }
            if let Some(t) = &threshold {
                if t.max_failures.is_none() && t.max_failure_ratio.is_none() {
                    return Err(CampaignError::Bad(
                        "give `max_failures` and/or `max_failure_ratio`, or neither to keep \
                         the campaign's"
                            .into(),
                    ));
                }
                if t.max_failure_ratio
                    .is_some_and(|r| !(0.0..1.0).contains(&r))
                {
                    return Err(CampaignError::Bad(
                        "max_failure_ratio: a fraction from 0 to below 1".into(),
                    ));
                }
            }
            let mut map = inner.lock();
            let nodes: Vec<String> = map
                .get(&id)
                .ok_or_else(|| not_found(id))?
                .campaign
                .nodes
                .iter()
                .map(|n| n.node.clone())
                .collect();
            let holder = Inner::holder(&map, &nodes, Some(id));
            let entry = map.get_mut(&id).ok_or_else(|| not_found(id))?;
            let c = &mut entry.campaign;
            if c.status != Status::Halted {
                return Err(CampaignError::Conflict(format!(
                    "campaign {id} is {}; only a halted campaign resumes",
                    c.status.key()
                )));
            }
            if entry.active {
                return Err(CampaignError::Conflict(format!(
                    "campaign {id} still has transfers in flight from before its halt; \
                     resume it when they finished"
                )));
            }
            if let Some((other, node)) = holder {
                return Err(CampaignError::Conflict(format!(
                    "campaign {other} is running on node `{node}`"
                )));
            }
            let t = threshold.unwrap_or(c.threshold);
            let counts = c.counts();
            if let Some(why) = t.passed(counts.failed, counts.failed + counts.updated) {
                return Err(CampaignError::Conflict(format!(
                    "the failures so far already pass the threshold ({why}); resume with a \
                     higher `max_failures` or `max_failure_ratio`"
                )));
            }
            c.threshold = t;
            c.status = Status::Running;
            c.halt_reason = None;
            c.run_by = who.user.clone();
            inner.save_head(c);
            inner.audit(
                &who.user,
                "campaign.resume",
                &format!("campaign/{id}"),
                Some(Status::Halted.key()),
                Some(&format!(
                    "running; threshold {}",
                    serde_json::to_string(&t).unwrap_or_default()
                )),
                reason.trim(),
            );
            for seq in 0..c.nodes.len() {
                if matches!(c.nodes[seq].state, NodeState::Skipped { .. }) {
                    inner.set_node(c, seq, NodeState::Pending);
                }
            }
            entry.active = true;
            let v = view(entry);
            drop(map);
            tokio::spawn(runner::run(Arc::clone(inner), id));
            Ok(v)
        })();
        result.map_err(|e| inner.refuse(e))
    }

    /// The audit trail of campaign `id`, oldest first.
    pub fn audit(&self, id: u64) -> Result<Vec<crate::auth::AuditDetail>, CampaignError> {
        if !self.inner.lock().contains_key(&id) {
            return Err(self.inner.refuse(not_found(id)));
        }
        let users = self.inner.users.lock().unwrap_or_else(|e| e.into_inner());
        users
            .audit_of_target(&format!("campaign/{id}"))
            .map_err(|e| CampaignError::Storage(e.to_string()))
    }
}

fn not_found(id: u64) -> CampaignError {
    CampaignError::NotFound(format!("no campaign {id}"))
}

fn view(e: &Entry) -> View {
    View {
        counts: e.campaign.counts(),
        campaign: e.campaign.clone(),
        active: e.active,
    }
}
