//! What a campaign and each of its nodes are doing: the states the API shows, the console
//! draws and the store keeps.

use serde::{Deserialize, Serialize};

/// One node's state in a campaign.
///
/// `pending → transferring → staged → verifying → updated`, or `failed` from any step, or
/// `skipped` when the campaign halted before the node's turn.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum NodeState {
    /// Not started.
    Pending,
    /// The image is being sent.
    Transferring {
        /// Image bytes the node has.
        done: usize,
        /// Image bytes in all.
        total: usize,
    },
    /// The node accepted and staged the image and resets into it.
    Staged,
    /// Waiting for the node to come back and show a version in its identity block.
    Verifying,
    /// The node runs the image's version, confirmed by a read after its reset.
    Updated {
        /// The version it reports.
        version: String,
    },
    /// The update failed; the node runs its old image (or, after a timeout, is not known).
    Failed {
        /// Why: the node's refusal reason, a transport error, a timeout or a rollback.
        reason: String,
    },
    /// The campaign halted before this node's turn; nothing was sent to it.
    Skipped {
        /// Why the campaign halted.
        reason: String,
    },
}

impl NodeState {
    /// The state's name, as the API's `state` field and the audit trail say it.
    pub fn key(&self) -> &'static str {
        match self {
            NodeState::Pending => "pending",
            NodeState::Transferring { .. } => "transferring",
            NodeState::Staged => "staged",
            NodeState::Verifying => "verifying",
            NodeState::Updated { .. } => "updated",
            NodeState::Failed { .. } => "failed",
            NodeState::Skipped { .. } => "skipped",
        }
    }

    /// Whether the node is being worked on (a transfer or a verification in flight).
    pub fn in_flight(&self) -> bool {
        matches!(
            self,
            NodeState::Transferring { .. } | NodeState::Staged | NodeState::Verifying
        )
    }

    /// Whether the node is done in this campaign, one way or the other.
    pub fn finished(&self) -> bool {
        matches!(self, NodeState::Updated { .. } | NodeState::Failed { .. })
    }

    /// The state as the audit trail records it: the name and, for the end states, why.
    pub fn audit_text(&self) -> String {
        match self {
            NodeState::Updated { version } => format!("updated: {version}"),
            NodeState::Failed { reason } => format!("failed: {reason}"),
            NodeState::Skipped { reason } => format!("skipped: {reason}"),
            other => other.key().to_owned(),
        }
    }
}

/// A node of a campaign.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CampaignNode {
    /// Node id.
    pub node: String,
    /// Its bus.
    pub bus: String,
    /// Its unit id.
    pub unit: u8,
    /// Its wave: 0 is the canary wave.
    pub wave: usize,
    /// Its state.
    #[serde(flatten)]
    pub state: NodeState,
    /// When its transfer started, ms since the Unix epoch.
    pub started_ms: Option<i64>,
    /// When it reached `updated` or `failed`.
    pub finished_ms: Option<i64>,
}

/// A campaign's overall status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Waves are being worked through.
    Running,
    /// Stopped (failures passed the threshold, or an engineer halted it): no new transfer
    /// starts; the nodes not reached are skipped. An engineer may resume it.
    Halted,
    /// Every wave ran; each node is updated or failed.
    Completed,
}

impl Status {
    /// Its name.
    pub fn key(self) -> &'static str {
        match self {
            Status::Running => "running",
            Status::Halted => "halted",
            Status::Completed => "completed",
        }
    }
}

/// When a campaign halts for failures.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Threshold {
    /// Halt as soon as more nodes than this failed.
    pub max_failures: Option<usize>,
    /// Halt as soon as failed / finished nodes is above this, once at least
    /// [`RATIO_MIN_FINISHED`] nodes finished (one early failure is not a rate).
    pub max_failure_ratio: Option<f64>,
}

/// Finished nodes before a failure ratio is judged.
pub const RATIO_MIN_FINISHED: usize = 10;

impl Threshold {
    /// Why `failed` failures among `finished` finished nodes pass the threshold, if they do.
    pub fn passed(&self, failed: usize, finished: usize) -> Option<String> {
        if let Some(max) = self.max_failures
            && failed > max
        {
            return Some(format!(
                "{failed} nodes failed, more than max_failures = {max}"
            ));
        }
        if let Some(ratio) = self.max_failure_ratio
            && finished >= RATIO_MIN_FINISHED
            && failed as f64 > ratio * finished as f64
        {
            return Some(format!(
                "{failed} of {finished} finished nodes failed, more than max_failure_ratio = {ratio}"
            ));
        }
        None
    }
}

/// The image a campaign sends, as checked before it started.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    /// Hardware model it is built for.
    pub model: String,
    /// Hardware revision.
    pub revision: u16,
    /// Firmware version, `major.minor.patch`.
    pub version: String,
    /// Security counter.
    pub security_counter: u32,
    /// Bytes.
    pub size: usize,
    /// SHA-256 of header and payload, hex.
    pub sha256: String,
    /// Hash of the key that signed it, hex.
    pub key_hash: String,
}

/// A campaign.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Campaign {
    /// Its id.
    pub id: u64,
    /// When created, ms since the Unix epoch.
    pub created_ms: i64,
    /// Who created it.
    pub created_by: String,
    /// Why, as they said.
    pub reason: String,
    /// Who it runs for now: the creator, or whoever resumed it last.
    pub run_by: String,
    /// The image.
    pub image: ImageInfo,
    /// Nodes per wave, as planned; wave 0 is the canary wave.
    pub waves: Vec<usize>,
    /// The wave being worked on (or the last one, when finished).
    pub wave: usize,
    /// When to halt for failures.
    pub threshold: Threshold,
    /// Transfers at once over Modbus TCP (a Modbus RTU bus has one at a time).
    pub tcp_parallel: usize,
    /// How long a staged node has to come back with the new version, seconds.
    pub verify_timeout_s: f64,
    /// Its status.
    pub status: Status,
    /// Why it halted, when halted.
    pub halt_reason: Option<String>,
    /// When it last halted.
    pub halted_ms: Option<i64>,
    /// The nodes, in the order they are worked on.
    pub nodes: Vec<CampaignNode>,
}

/// Counts of nodes by state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Pending.
    pub pending: usize,
    /// Transferring, staged or verifying.
    pub in_flight: usize,
    /// Updated.
    pub updated: usize,
    /// Failed.
    pub failed: usize,
    /// Skipped.
    pub skipped: usize,
}

impl Campaign {
    /// Nodes by state.
    pub fn counts(&self) -> Counts {
        let mut c = Counts::default();
        for n in &self.nodes {
            match &n.state {
                NodeState::Pending => c.pending += 1,
                NodeState::Updated { .. } => c.updated += 1,
                NodeState::Failed { .. } => c.failed += 1,
                NodeState::Skipped { .. } => c.skipped += 1,
                _ => c.in_flight += 1,
            }
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_threshold_passes_when_failures_exceed_it_not_before() {
        let t = Threshold {
            max_failures: Some(3),
            max_failure_ratio: None,
        };
        assert_eq!(t.passed(3, 50), None);
        assert_eq!(
            t.passed(4, 50).unwrap(),
            "4 nodes failed, more than max_failures = 3"
        );
        let r = Threshold {
            max_failures: None,
            max_failure_ratio: Some(0.1),
        };
        // Too few finished to judge a rate.
        assert_eq!(r.passed(2, 9), None);
        assert_eq!(r.passed(1, 10), None);
        assert!(r.passed(2, 10).is_some());
        assert_eq!(r.passed(10, 100), None);
        assert!(r.passed(11, 100).is_some());
    }

    #[test]
    fn node_states_serialise_with_their_name() {
        let n = CampaignNode {
            node: "n1".into(),
            bus: "b".into(),
            unit: 3,
            wave: 1,
            state: NodeState::Transferring {
                done: 128,
                total: 1024,
            },
            started_ms: Some(1),
            finished_ms: None,
        };
        let v = serde_json::to_value(&n).unwrap();
        assert_eq!(v["state"], "transferring");
        assert_eq!(v["done"], 128);
        let back: CampaignNode = serde_json::from_value(v).unwrap();
        assert_eq!(back, n);
    }
}
