//! An alarm transition as the gateway publishes, stores and audits it.
//!
//! JSON, one object per transition:
//!
//! ```json
//! {"v":1,"site":"plant-b-tankfarm","node":"cp-lel-05","ch":0,"condition":"threshold",
//!  "state":"active_unacked","level":"red","from_state":"active_unacked","from_level":"yellow",
//!  "side":"high","value":51.2,"cause":"escalated","at":1764316800000,"rules_version":1}
//! ```
//!
//! Operator actions add `"user"` and `"comment"`; shelving adds `"until"`.

use std::sync::Arc;

use serde_json::json;
use tianzhong_protocol::SiteId;

use super::{Cause, Transition};

/// A transition and the site of its node.
#[derive(Clone, Debug, PartialEq)]
pub struct AlarmEvent {
    /// The node's site, when known (a node is known from its first reading).
    pub site: Option<SiteId>,
    /// The transition.
    pub transition: Transition,
}

/// The short name of a cause, and its operator and deadline where it has them.
pub fn cause_parts(cause: &Cause) -> (&'static str, Option<(&str, &str)>, Option<u64>) {
    match cause {
        Cause::Raised => ("raised", None, None),
        Cause::Escalated => ("escalated", None, None),
        Cause::DeEscalated => ("de_escalated", None, None),
        Cause::Cleared => ("cleared", None, None),
        Cause::Acknowledged(o) => ("acknowledged", Some((&o.user, &o.comment)), None),
        Cause::Shelved { by, until_ms } => {
            ("shelved", Some((&by.user, &by.comment)), Some(*until_ms))
        }
        Cause::Unshelved(o) => ("unshelved", Some((&o.user, &o.comment)), None),
        Cause::ShelveExpired => ("shelve_expired", None, None),
        Cause::RemovedFromService(o) => ("removed_from_service", Some((&o.user, &o.comment)), None),
        Cause::ReturnedToService(o) => ("returned_to_service", Some((&o.user, &o.comment)), None),
        Cause::LatchReset(o) => ("latch_reset", Some((&o.user, &o.comment)), None),
        Cause::RuleRemoved => ("rule_removed", None, None),
    }
}

impl AlarmEvent {
    /// The JSON form.
    pub fn to_json(&self) -> serde_json::Value {
        let t = &self.transition;
        let (cause, operator, until) = cause_parts(&t.cause);
        let mut v = json!({
            "v": 1,
            "site": self.site.as_ref().map(|s| s.as_str()),
            "node": t.key.node.as_str(),
            "ch": t.key.channel.0,
            "condition": t.key.condition.key(),
            "state": t.to.key(),
            "level": t.level.key(),
            "from_state": t.from.key(),
            "from_level": t.from_level.key(),
            "side": t.side.map(|s| s.to_string()),
            "value": if t.value.is_finite() { Some(t.value) } else { None },
            "cause": cause,
            "at": t.at_ms,
            "rules_version": t.rules_version,
        });
        if let Some((user, comment)) = operator {
            v["user"] = json!(user);
            v["comment"] = json!(comment);
        }
        if let Some(until) = until {
            v["until"] = json!(until);
        }
        v
    }
}

/// Events of one batch, shared by the sinks.
pub type AlarmEvents = Arc<[AlarmEvent]>;
