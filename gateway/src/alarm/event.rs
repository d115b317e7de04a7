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
use tianzhong_protocol::{AlarmLevel, ChannelId, NodeId, SiteId};

use super::{AlarmKey, AlarmState, Cause, Condition, Operator, Side, Transition};

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

const STATES: [AlarmState; 8] = [
    AlarmState::Normal,
    AlarmState::ActiveUnacked,
    AlarmState::ActiveAcked,
    AlarmState::ClearedUnacked,
    AlarmState::LatchedUnacked,
    AlarmState::LatchedAcked,
    AlarmState::Shelved,
    AlarmState::OutOfService,
];

impl AlarmEvent {
    /// Reads back what [`AlarmEvent::to_json`] wrote (as the durable outbox stores it).
    pub fn from_json(v: &serde_json::Value) -> Result<AlarmEvent, String> {
        let text = |k: &str| {
            v[k].as_str()
                .ok_or_else(|| format!("alarm event: `{k}` missing or not text"))
        };
        let uint = |k: &str| {
            v[k].as_u64()
                .ok_or_else(|| format!("alarm event: `{k}` missing or not a number"))
        };
        let state = |k: &str| {
            let t = text(k)?;
            STATES
                .into_iter()
                .find(|s| s.key() == t)
                .ok_or_else(|| format!("alarm event: `{k}` {t:?} is not a state"))
        };
        let level = |k: &str| {
            let t = text(k)?;
            AlarmLevel::ALL
                .into_iter()
                .find(|l| l.key() == t)
                .ok_or_else(|| format!("alarm event: `{k}` {t:?} is not a level"))
        };
        let node = NodeId::new(text("node")?).map_err(|e| format!("alarm event: node: {e}"))?;
        let condition = {
            let t = text("condition")?;
            Condition::ALL
                .into_iter()
                .find(|c| c.key() == t)
                .ok_or_else(|| format!("alarm event: condition {t:?}"))?
        };
        let channel = u16::try_from(uint("ch")?).map_err(|e| format!("alarm event: ch: {e}"))?;
        let op =
            || -> Result<Operator, String> { Ok(Operator::new(text("user")?, text("comment")?)) };
        let cause = match text("cause")? {
            "raised" => Cause::Raised,
            "escalated" => Cause::Escalated,
            "de_escalated" => Cause::DeEscalated,
            "cleared" => Cause::Cleared,
            "acknowledged" => Cause::Acknowledged(op()?),
            "shelved" => Cause::Shelved {
                by: op()?,
                until_ms: uint("until")?,
            },
            "unshelved" => Cause::Unshelved(op()?),
            "shelve_expired" => Cause::ShelveExpired,
            "removed_from_service" => Cause::RemovedFromService(op()?),
            "returned_to_service" => Cause::ReturnedToService(op()?),
            "latch_reset" => Cause::LatchReset(op()?),
            "rule_removed" => Cause::RuleRemoved,
            other => return Err(format!("alarm event: cause {other:?}")),
        };
        let side = match v["side"].as_str() {
            None => None,
            Some("high") => Some(Side::High),
            Some("low") => Some(Side::Low),
            Some(other) => return Err(format!("alarm event: side {other:?}")),
        };
        Ok(AlarmEvent {
            site: v["site"]
                .as_str()
                .map(SiteId::new)
                .transpose()
                .map_err(|e| format!("alarm event: site: {e}"))?,
            transition: Transition {
                key: AlarmKey::new(node, ChannelId(channel), condition),
                from: state("from_state")?,
                to: state("state")?,
                from_level: level("from_level")?,
                level: level("level")?,
                side,
                value: v["value"].as_f64().unwrap_or(f64::NAN),
                at_ms: uint("at")?,
                cause,
                rules_version: uint("rules_version")?,
            },
        })
    }
}

/// Events of one batch, shared by the sinks.
pub type AlarmEvents = Arc<[AlarmEvent]>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_cause_reads_back_as_written() {
        let op = Operator::new("duty", "crew sent");
        for cause in [
            Cause::Raised,
            Cause::Escalated,
            Cause::DeEscalated,
            Cause::Cleared,
            Cause::Acknowledged(op.clone()),
            Cause::Shelved {
                by: op.clone(),
                until_ms: 99,
            },
            Cause::Unshelved(op.clone()),
            Cause::ShelveExpired,
            Cause::RemovedFromService(op.clone()),
            Cause::ReturnedToService(op.clone()),
            Cause::LatchReset(op.clone()),
            Cause::RuleRemoved,
        ] {
            let e = AlarmEvent {
                site: Some(SiteId::new("plant-a").unwrap()),
                transition: Transition {
                    key: AlarmKey::new(
                        NodeId::new("gas-01").unwrap(),
                        ChannelId(3),
                        Condition::Threshold,
                    ),
                    from: AlarmState::ActiveUnacked,
                    to: AlarmState::ActiveAcked,
                    from_level: AlarmLevel::Yellow,
                    level: AlarmLevel::Red,
                    side: Some(Side::High),
                    value: 51.5,
                    at_ms: 1_764_316_800_000,
                    cause,
                    rules_version: 4,
                },
            };
            assert_eq!(AlarmEvent::from_json(&e.to_json()).unwrap(), e);
        }
        let mut v = serde_json::json!({"node": "gas-01"});
        assert!(AlarmEvent::from_json(&v).unwrap_err().contains("condition"));
        v["ch"] = 1.into();
        assert!(AlarmEvent::from_json(&v).is_err());
    }
}
