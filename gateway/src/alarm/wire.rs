//! Threshold rules as JSON: the form the API reads and writes and the gateway keeps on disk
//! (`alarm-rules.json` under the data directory), so that rules changed at run time survive a
//! restart.
//!
//! The wire form is kept apart from [`ThresholdRule`] so the engine's types stay free of
//! serde attributes and the JSON can say things in operators' units: delays in seconds, stale
//! time in seconds or poll intervals. Unknown fields are refused, so a misspelt set point is
//! an error, not a level silently left out.
//!
//! ```json
//! {"name": "GB/T 50493 combustible gas", "source": "GB/T 50493-2019 5.5.2",
//!  "selector": {"quantity": "combustible_gas", "site": null, "group": null},
//!  "high": {"blue": null, "yellow": 20, "orange": null, "red": 50},
//!  "low": {"blue": null, "yellow": null, "orange": null, "red": null},
//!  "deadband": 2, "on_delay_s": 0, "off_delay_s": 0, "rate_of_change": null,
//!  "stale_after": {"poll_intervals": 3}, "stale_level": "yellow",
//!  "bad_quality_level": "yellow", "latching": false}
//! ```

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tianzhong_protocol::{AlarmLevel, ChannelId, NodeId, Quantity, SiteId};

use super::rule::{
    Direction, RateOfChange, RuleSet, Selector, SetPoints, StaleAfter, ThresholdRule,
};

/// Set points of one side.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetPointsDoc {
    /// Level IV.
    #[serde(default)]
    pub blue: Option<f64>,
    /// Level III.
    #[serde(default)]
    pub yellow: Option<f64>,
    /// Level II.
    #[serde(default)]
    pub orange: Option<f64>,
    /// Level I.
    #[serde(default)]
    pub red: Option<f64>,
}

/// Which channels a rule applies to: `{"node", "ch"}` for one channel, or `{"quantity"}` with
/// optional `"site"` and `"group"` for a class of channels. One struct rather than an untagged
/// enum, so that a mix of the two gets a message saying so instead of serde's "did not match
/// any variant".
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelectorDoc {
    /// Node id, for one channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Channel number, for one channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ch: Option<u16>,
    /// Quantity key, for a class of channels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantity: Option<Quantity>,
    /// Only at this site.
    #[serde(default)]
    pub site: Option<String>,
    /// Only in this node group.
    #[serde(default)]
    pub group: Option<String>,
}

/// Rate-of-change alarm.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateOfChangeDoc {
    /// Canonical units per minute.
    pub limit_per_min: f64,
    /// `rising`, `falling` or `both`.
    pub direction: DirectionDoc,
    /// Level.
    pub level: AlarmLevel,
}

/// Which way a rate-of-change alarm looks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DirectionDoc {
    /// Rises.
    Rising,
    /// Falls.
    Falling,
    /// Both.
    Both,
}

/// Stale-data time: `{"seconds": 60}` or `{"poll_intervals": 3}`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum StaleDoc {
    /// A fixed time.
    Seconds(f64),
    /// A number of the node's poll intervals.
    PollIntervals(u32),
}

/// A threshold rule on the wire.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleDoc {
    /// Name; identifies the rule in the API.
    pub name: String,
    /// Where the numbers come from.
    #[serde(default)]
    pub source: String,
    /// Which channels.
    pub selector: SelectorDoc,
    /// High-side set points.
    #[serde(default)]
    pub high: SetPointsDoc,
    /// Low-side set points.
    #[serde(default)]
    pub low: SetPointsDoc,
    /// Hysteresis, canonical unit.
    #[serde(default)]
    pub deadband: f64,
    /// On-delay, seconds.
    #[serde(default)]
    pub on_delay_s: f64,
    /// Off-delay, seconds.
    #[serde(default)]
    pub off_delay_s: f64,
    /// Rate of change.
    #[serde(default)]
    pub rate_of_change: Option<RateOfChangeDoc>,
    /// Stale data.
    #[serde(default)]
    pub stale_after: Option<StaleDoc>,
    /// Level of the stale-data alarm.
    #[serde(default = "yellow")]
    pub stale_level: AlarmLevel,
    /// Level of the bad-quality alarm.
    #[serde(default)]
    pub bad_quality_level: Option<AlarmLevel>,
    /// Latching.
    #[serde(default)]
    pub latching: bool,
    /// Canonical unit of the selected quantity, for people; accepted (a client sends back
    /// what it got) and ignored when read.
    #[serde(default)]
    pub unit: Option<String>,
}

fn yellow() -> AlarmLevel {
    AlarmLevel::Yellow
}

/// A rule set on disk.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSetDoc {
    /// Version.
    pub version: u64,
    /// Longest shelving, seconds.
    pub max_shelve_s: f64,
    /// The rules.
    pub rules: Vec<RuleDoc>,
}

/// A wire rule that cannot become a rule.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// A field that does not make sense (the message says which and why).
    #[error("{0}")]
    Field(String),
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a rule set.
    #[error("{path}: {source}")]
    Json {
        /// The file.
        path: String,
        /// Why.
        source: serde_json::Error,
    },
}

fn points_doc(p: &SetPoints) -> SetPointsDoc {
    SetPointsDoc {
        blue: p.blue,
        yellow: p.yellow,
        orange: p.orange,
        red: p.red,
    }
}

fn points(p: &SetPointsDoc) -> SetPoints {
    SetPoints {
        blue: p.blue,
        yellow: p.yellow,
        orange: p.orange,
        red: p.red,
    }
}

fn seconds_to_ms(what: &str, s: f64) -> Result<u64, WireError> {
    // A day is far beyond any sensible delay or stale time; the bound keeps the cast exact.
    if !(s.is_finite() && (0.0..=86_400.0).contains(&s)) {
        return Err(WireError::Field(format!(
            "{what}: {s} is not a number of seconds from 0 to 86400"
        )));
    }
    Ok((s * 1000.0).round() as u64)
}

impl From<&ThresholdRule> for RuleDoc {
    fn from(r: &ThresholdRule) -> RuleDoc {
        let (selector, unit) = match &r.selector {
            Selector::Channel { node, channel } => (
                SelectorDoc {
                    node: Some(node.to_string()),
                    ch: Some(channel.0),
                    ..SelectorDoc::default()
                },
                None,
            ),
            Selector::Class {
                quantity,
                site,
                group,
            } => (
                SelectorDoc {
                    quantity: Some(*quantity),
                    site: site.as_ref().map(|s| s.to_string()),
                    group: group.clone(),
                    ..SelectorDoc::default()
                },
                Some(quantity.canonical_unit().to_string()),
            ),
        };
        RuleDoc {
            name: r.name.clone(),
            source: r.source.clone(),
            selector,
            high: points_doc(&r.high),
            low: points_doc(&r.low),
            deadband: r.deadband,
            on_delay_s: r.on_delay_ms as f64 / 1000.0,
            off_delay_s: r.off_delay_ms as f64 / 1000.0,
            rate_of_change: r.rate_of_change.map(|c| RateOfChangeDoc {
                limit_per_min: c.limit_per_min,
                direction: match c.direction {
                    Direction::Rising => DirectionDoc::Rising,
                    Direction::Falling => DirectionDoc::Falling,
                    Direction::Both => DirectionDoc::Both,
                },
                level: c.level,
            }),
            stale_after: r.stale_after.map(|s| match s {
                StaleAfter::Millis(ms) => StaleDoc::Seconds(ms as f64 / 1000.0),
                StaleAfter::PollIntervals(n) => StaleDoc::PollIntervals(n),
            }),
            stale_level: r.stale_level,
            bad_quality_level: r.bad_quality_level,
            latching: r.latching,
            unit,
        }
    }
}

impl TryFrom<&RuleDoc> for ThresholdRule {
    type Error = WireError;

    /// Checks what the JSON alone can tell (ids, times); the rest (set point order, levels)
    /// is [`RuleSet::validate`]'s, which reports every mistake at once.
    fn try_from(d: &RuleDoc) -> Result<ThresholdRule, WireError> {
        let sel = &d.selector;
        let selector = match (&sel.node, sel.ch, sel.quantity) {
            (Some(node), Some(ch), None) => {
                if sel.site.is_some() || sel.group.is_some() {
                    return Err(WireError::Field(
                        "selector: one channel ({node, ch}) takes no site or group".into(),
                    ));
                }
                Selector::Channel {
                    node: NodeId::new(node)
                        .map_err(|e| WireError::Field(format!("selector.node `{node}`: {e}")))?,
                    channel: ChannelId(ch),
                }
            }
            (None, None, Some(quantity)) => Selector::Class {
                quantity,
                site: sel
                    .site
                    .as_deref()
                    .map(|s| {
                        SiteId::new(s)
                            .map_err(|e| WireError::Field(format!("selector.site `{s}`: {e}")))
                    })
                    .transpose()?,
                group: match sel.group.as_deref() {
                    Some("") => {
                        return Err(WireError::Field(
                            "selector.group: empty; leave it null for every group".into(),
                        ));
                    }
                    g => g.map(str::to_owned),
                },
            },
            _ => {
                return Err(WireError::Field(
                    "selector: give either {node, ch} for one channel or {quantity} (with optional \
                     site and group) for a class of channels"
                        .into(),
                ));
            }
        };
        Ok(ThresholdRule {
            name: d.name.clone(),
            source: d.source.clone(),
            selector,
            high: points(&d.high),
            low: points(&d.low),
            deadband: d.deadband,
            on_delay_ms: seconds_to_ms("on_delay_s", d.on_delay_s)?,
            off_delay_ms: seconds_to_ms("off_delay_s", d.off_delay_s)?,
            rate_of_change: d.rate_of_change.map(|c| RateOfChange {
                limit_per_min: c.limit_per_min,
                direction: match c.direction {
                    DirectionDoc::Rising => Direction::Rising,
                    DirectionDoc::Falling => Direction::Falling,
                    DirectionDoc::Both => Direction::Both,
                },
                level: c.level,
            }),
            stale_after: d
                .stale_after
                .map(|s| match s {
                    StaleDoc::Seconds(s) => {
                        seconds_to_ms("stale_after.seconds", s).map(StaleAfter::Millis)
                    }
                    StaleDoc::PollIntervals(n) => Ok(StaleAfter::PollIntervals(n)),
                })
                .transpose()?,
            stale_level: d.stale_level,
            bad_quality_level: d.bad_quality_level,
            latching: d.latching,
        })
    }
}

impl From<&RuleSet> for RuleSetDoc {
    fn from(s: &RuleSet) -> RuleSetDoc {
        RuleSetDoc {
            version: s.version,
            max_shelve_s: s.max_shelve_ms as f64 / 1000.0,
            rules: s.rules.iter().map(RuleDoc::from).collect(),
        }
    }
}

impl RuleSetDoc {
    /// The rule set, with no node information (the caller adds groups and poll intervals,
    /// which come from the configuration, not from this file). Not validated.
    pub fn to_rules(&self) -> Result<RuleSet, WireError> {
        let mut set = RuleSet::new(
            self.version,
            self.rules
                .iter()
                .map(|d| {
                    ThresholdRule::try_from(d)
                        .map_err(|e| WireError::Field(format!("rule `{}`: {e}", d.name)))
                })
                .collect::<Result<_, _>>()?,
        );
        // Up to a week: longer is not shelving, it is taking the alarm out of service.
        if !(self.max_shelve_s.is_finite() && self.max_shelve_s > 0.0)
            || self.max_shelve_s > 7.0 * 86_400.0
        {
            return Err(WireError::Field(format!(
                "max_shelve_s: {} is not a number of seconds from 1 to 604800",
                self.max_shelve_s
            )));
        }
        set.max_shelve_ms = (self.max_shelve_s * 1000.0).round() as u64;
        Ok(set)
    }

    /// Reads a rule set file; `None` when there is none.
    pub fn load(path: &Path) -> Result<Option<RuleSetDoc>, WireError> {
        let text = match std::fs::read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(WireError::Io {
                    path: path.display().to_string(),
                    source,
                });
            }
        };
        serde_json::from_slice(&text)
            .map(Some)
            .map_err(|source| WireError::Json {
                path: path.display().to_string(),
                source,
            })
    }

    /// Writes the file atomically: a temporary file, synced, renamed over the old one, so a
    /// crash leaves the old rules or the new ones, never half a file.
    pub fn save(&self, path: &Path) -> Result<(), WireError> {
        let io = |source| WireError::Io {
            path: path.display().to_string(),
            source,
        };
        let tmp = path.with_extension("json.tmp");
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        let text = serde_json::to_vec_pretty(self).map_err(|source| WireError::Json {
            path: path.display().to_string(),
            source,
        })?;
        f.write_all(&text).map_err(io)?;
        f.sync_all().map_err(io)?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(io)?;
        if let Some(dir) = path.parent()
            && let Ok(d) = std::fs::File::open(dir)
        {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alarm::{AqiTable, default_rules};

    #[test]
    fn shipped_rules_survive_the_round_trip() {
        let rules = default_rules(AqiTable::default());
        let doc = RuleSetDoc::from(&rules);
        let text = serde_json::to_string(&doc).unwrap();
        let back: RuleSetDoc = serde_json::from_str(&text).unwrap();
        let again = back.to_rules().unwrap();
        assert_eq!(again.rules, rules.rules);
        assert_eq!(again.version, rules.version);
        assert_eq!(again.max_shelve_ms, rules.max_shelve_ms);
    }

    #[test]
    fn misspelt_and_wrongly_typed_fields_are_refused() {
        let ok = r#"{"name":"x","selector":{"quantity":"methane"},"high":{"red":1.5}}"#;
        let d: RuleDoc = serde_json::from_str(ok).unwrap();
        let r = ThresholdRule::try_from(&d).unwrap();
        assert_eq!(r.high.red, Some(1.5));
        assert_eq!(r.stale_level, AlarmLevel::Yellow);
        for bad in [
            r#"{"name":"x","selector":{"quantity":"methane"},"high":{"crimson":1.5}}"#,
            r#"{"name":"x","selector":{"quantity":"methane"},"high":{"red":"1.5"}}"#,
            r#"{"name":"x","selector":{"quantity":"unobtainium"}}"#,
            r#"{"name":"x","selector":{"node":"gas-01","ch":-1}}"#,
            r#"{"name":"x","selector":{"node":"gas-01","chan":1}}"#,
            r#"{"name":"x","selector":{"quantity":"methane"},"stale_after":{"minutes":3}}"#,
            r#"{"name":"x","selector":{"quantity":"methane"},"colour":"red"}"#,
        ] {
            assert!(serde_json::from_str::<RuleDoc>(bad).is_err(), "{bad}");
        }
        let d: RuleDoc = serde_json::from_str(
            r#"{"name":"x","selector":{"quantity":"methane"},"on_delay_s":-1}"#,
        )
        .unwrap();
        let e = ThresholdRule::try_from(&d).unwrap_err().to_string();
        assert!(e.contains("on_delay_s"), "{e}");
        for mixed in [
            r#"{"name":"x","selector":{"node":"gas-01","ch":1,"quantity":"methane"}}"#,
            r#"{"name":"x","selector":{"node":"gas-01"}}"#,
            r#"{"name":"x","selector":{}}"#,
            r#"{"name":"x","selector":{"node":"gas-01","ch":1,"group":"g"}}"#,
        ] {
            let d: RuleDoc = serde_json::from_str(mixed).unwrap();
            let e = ThresholdRule::try_from(&d).unwrap_err().to_string();
            assert!(e.starts_with("selector"), "{mixed}: {e}");
        }
    }

    #[test]
    fn save_then_load_gives_the_same_rules() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("alarm-rules.json");
        assert!(RuleSetDoc::load(&path).unwrap().is_none());
        let mut rules = default_rules(AqiTable::default());
        rules.version = 7;
        RuleSetDoc::from(&rules).save(&path).unwrap();
        let back = RuleSetDoc::load(&path)
            .unwrap()
            .unwrap()
            .to_rules()
            .unwrap();
        assert_eq!(back.version, 7);
        assert_eq!(back.rules, rules.rules);
        std::fs::write(&path, b"{\"version\":1").unwrap();
        assert!(RuleSetDoc::load(&path).is_err());
    }
}
