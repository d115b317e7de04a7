//! Threshold rules changed at run time: validated, versioned, saved, audited, and applied to
//! the running alarm engine without a restart and without losing alarm state.
//!
//! A change names the version it was made against (`base_version`); if the rules moved on
//! since, it is refused (409), so two engineers editing at once cannot overwrite each other
//! unknowingly. A change is applied in this order, and stops at the first step that fails:
//!
//! 1. build the new rule set (the one in force with the change, version + 1) and validate it;
//! 2. save it to `alarm-rules.json` (atomically: written aside, synced, renamed);
//! 3. install it in the engine ([`AlarmEngine::replace_rules`]); alarms keep their state and
//!    are re-evaluated against the new set points, and the transitions that causes are
//!    published like any other;
//! 4. audit it: who, when, the rule before and after, and why.
//!
//! So a refused change changes nothing, and an applied change survives a restart. Node
//! groups and poll intervals are not in the file: they come from the configuration at every
//! start.
//!
//! [`AlarmEngine::replace_rules`]: crate::alarm::AlarmEngine::replace_rules

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tianzhong_protocol::NodeId;

use crate::alarm::wire::{RuleDoc, RuleSetDoc, WireError};
use crate::alarm::{
    AlarmEvent, AqiTable, ReplaceError, RuleSet, ThresholdRule, Transition, default_rules,
};
use crate::auth::{Principal, Users};
use crate::pipeline::{SharedEngine, unix_ms};

/// The rules file under the data directory.
pub const FILE_NAME: &str = "alarm-rules.json";

/// Audit actions of rule changes.
pub const AUDIT_ACTIONS: [&str; 3] = ["rules.update", "rules.add", "rules.delete"];

/// The rule set to start with: the saved one if there is one, else the shipped defaults;
/// either way told the configuration's node groups and poll intervals, and validated.
pub fn initial_rules(
    data_dir: &Path,
    nodes: impl IntoIterator<Item = (NodeId, Option<String>, Option<u64>)>,
) -> Result<RuleSet, String> {
    let path = data_dir.join(FILE_NAME);
    let (mut rules, from) = match RuleSetDoc::load(&path).map_err(|e| e.to_string())? {
        Some(doc) => (
            doc.to_rules()
                .map_err(|e| format!("{}: {e}", path.display()))?,
            path.display().to_string(),
        ),
        None => (
            default_rules(AqiTable::default()),
            "the shipped defaults".to_owned(),
        ),
    };
    for (node, group, poll_ms) in nodes {
        rules = rules.with_node(node, group.as_deref(), poll_ms);
    }
    rules
        .validate()
        .map_err(|e| format!("alarm rules from {from} are invalid:\n{e}"))?;
    Ok(rules)
}

/// What went wrong with a change; each maps to one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// The change was made against an older version (409).
    #[error(
        "the rules are at version {current}, not {base}: someone changed them since you loaded them; reload and try again"
    )]
    Conflict {
        /// In force.
        current: u64,
        /// What the change was made against.
        base: u64,
    },
    /// No rule of that name (404).
    #[error("no rule named `{0}`")]
    Unknown(String),
    /// A rule of that name already exists (409).
    #[error("a rule named `{0}` already exists")]
    Exists(String),
    /// The change makes an invalid rule set, or the rule cannot be read (400).
    #[error("{0}")]
    Invalid(String),
    /// Alarms are off in this gateway (404).
    #[error("alarms are disabled in this gateway's configuration")]
    Disabled,
    /// Saving or auditing failed (500).
    #[error("{0}")]
    Storage(String),
}

/// What a change did.
#[derive(Debug)]
pub struct Applied {
    /// The new version.
    pub version: u64,
    /// Transitions caused by re-evaluating alarms under the new rules.
    pub transitions: Vec<Transition>,
}

/// One change, as the history shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Change {
    /// Version it made.
    pub version: u64,
    /// When, ms since the Unix epoch.
    pub at: i64,
    /// Who.
    pub user: String,
    /// `update`, `add` or `delete`.
    pub action: String,
    /// The rule's name.
    pub rule: String,
    /// Before (none for an add).
    pub old: Option<serde_json::Value>,
    /// After (none for a delete).
    pub new: Option<serde_json::Value>,
    /// Why.
    pub reason: String,
}

/// The kinds of change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Edit {
    /// Replace a rule (its name may change with it).
    Update,
    /// Add a rule.
    Add,
    /// Remove a rule.
    Delete,
}

impl Edit {
    fn action(self) -> &'static str {
        match self {
            Edit::Update => AUDIT_ACTIONS[0],
            Edit::Add => AUDIT_ACTIONS[1],
            Edit::Delete => AUDIT_ACTIONS[2],
        }
    }
}

/// Applies rule changes. One change at a time: the engine's lock is held from the version
/// check to the install, so a change is never built on rules that are replaced meanwhile.
#[derive(Clone)]
pub struct Thresholds {
    engine: SharedEngine,
    path: PathBuf,
    users: Arc<Mutex<Users>>,
}

impl Thresholds {
    /// Changes saved under `data_dir`, audited in `users`.
    pub fn new(engine: SharedEngine, data_dir: &Path, users: Arc<Mutex<Users>>) -> Thresholds {
        Thresholds {
            engine,
            path: data_dir.join(FILE_NAME),
            users,
        }
    }

    /// The rules in force, as JSON documents, with their version.
    pub fn current(&self) -> (u64, Vec<RuleDoc>, RuleSet) {
        let engine = self.engine.lock().unwrap_or_else(|e| e.into_inner());
        let rules = engine.rules();
        (
            rules.version,
            rules.rules.iter().map(RuleDoc::from).collect(),
            rules.clone(),
        )
    }

    /// Applies one change. `name` is the rule changed (for an update or delete) or added.
    pub fn change(
        &self,
        who: &Principal,
        edit: Edit,
        name: &str,
        base_version: u64,
        doc: Option<&RuleDoc>,
        reason: &str,
    ) -> Result<Applied, ChangeError> {
        let reason = reason.trim();
        if reason.is_empty() {
            return Err(ChangeError::Invalid(
                "reason: say why the thresholds change; it goes in the audit trail".into(),
            ));
        }
        let new_rule = match doc {
            Some(d) => Some(
                ThresholdRule::try_from(d)
                    .map_err(|e: WireError| ChangeError::Invalid(format!("rule: {e}")))?,
            ),
            None => None,
        };
        let mut engine = self.engine.lock().unwrap_or_else(|e| e.into_inner());
        let current = engine.rules();
        if current.version != base_version {
            return Err(ChangeError::Conflict {
                current: current.version,
                base: base_version,
            });
        }
        let mut next = current.clone();
        next.version = current.version + 1;
        let position = next.rules.iter().position(|r| r.name == name);
        let old = position.map(|i| next.rules[i].clone());
        match (edit, position, new_rule.clone()) {
            (Edit::Update, Some(i), Some(rule)) => next.rules[i] = rule,
            (Edit::Delete, Some(i), _) => {
                next.rules.remove(i);
            }
            (Edit::Add, None, Some(rule)) => {
                if rule.name != name {
                    return Err(ChangeError::Invalid(format!(
                        "rule.name `{}` differs from the name added, `{name}`",
                        rule.name
                    )));
                }
                next.rules.push(rule);
            }
            (Edit::Add, Some(_), _) => return Err(ChangeError::Exists(name.to_owned())),
            (Edit::Update | Edit::Delete, None, _) => {
                return Err(ChangeError::Unknown(name.to_owned()));
            }
            (Edit::Update | Edit::Add, _, None) => {
                return Err(ChangeError::Invalid("rule: missing".into()));
            }
        }
        next.validate()
            .map_err(|e| ChangeError::Invalid(e.to_string()))?;
        RuleSetDoc::from(&next)
            .save(&self.path)
            .map_err(|e| ChangeError::Storage(format!("saving the rules: {e}")))?;
        let version = next.version;
        let transitions = engine.replace_rules(next, unix_ms()).map_err(|e| match e {
            ReplaceError::Invalid { errors, .. } => ChangeError::Invalid(errors.to_string()),
            e @ ReplaceError::NotNewer { .. } => ChangeError::Storage(e.to_string()),
        })?;
        drop(engine);
        let json = |r: &ThresholdRule| serde_json::to_string(&RuleDoc::from(r)).ok();
        self.users
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .audit(
                &who.user,
                edit.action(),
                &format!("rule:{name}@v{version}"),
                old.as_ref().and_then(json).as_deref(),
                new_rule.as_ref().and_then(json).as_deref(),
                reason,
            )
            .map_err(|e| ChangeError::Storage(format!("auditing the change: {e}")))?;
        Ok(Applied {
            version,
            transitions,
        })
    }

    /// Rule changes, newest first.
    pub fn history(&self, limit: usize) -> Result<Vec<Change>, String> {
        let rows = self
            .users
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .audit_detail(&AUDIT_ACTIONS, limit)
            .map_err(|e| e.to_string())?;
        Ok(rows
            .into_iter()
            .filter_map(|r| {
                let (rule, version) = r.target.strip_prefix("rule:")?.rsplit_once("@v")?;
                let parse = |s: Option<String>| s.and_then(|s| serde_json::from_str(&s).ok());
                Some(Change {
                    version: version.parse().ok()?,
                    at: r.at_ms,
                    user: r.user,
                    action: r.action.trim_start_matches("rules.").to_owned(),
                    rule: rule.to_owned(),
                    old: parse(r.old),
                    new: parse(r.new),
                    reason: r.reason,
                })
            })
            .collect())
    }
}

/// Alarm events for transitions caused by a rule change.
pub fn events(
    transitions: Vec<Transition>,
    sites: impl Fn(&NodeId) -> Option<tianzhong_protocol::SiteId>,
) -> Vec<AlarmEvent> {
    transitions
        .into_iter()
        .map(|transition| AlarmEvent {
            site: sites(&transition.key.node),
            transition,
        })
        .collect()
}
