//! Threshold rules: what puts a channel into alarm, which channels a rule applies to, and the
//! versioned, validated set of rules the engine runs.
//!
//! A [`ThresholdRule`] holds set points for the four warning levels on the high side and on
//! the low side (oxygen deficiency is a low-side alarm), a deadband, on- and off-delays, and
//! the optional rate-of-change, stale-data and bad-quality alarms of the channels it applies
//! to. Values are in the quantity's canonical unit.
//!
//! # Selection
//!
//! A [`Selector`] picks channels: one exact `(node, channel)`, or every channel of a quantity,
//! optionally narrowed to a site, a node group, or both. The most specific matching rule wins:
//!
//! | selector | specificity |
//! |---|---|
//! | exact node and channel | 4 |
//! | quantity + site + group | 3 |
//! | quantity + group | 2 |
//! | quantity + site | 1 |
//! | quantity | 0 |
//!
//! A node's group comes from [`RuleSet::nodes`]. Two rules with the same selector are refused
//! by [`RuleSet::validate`], and a node has at most one group, so no two rules can tie.

use std::collections::HashMap;
use std::fmt;

use tianzhong_protocol::{AlarmLevel, ChannelId, NodeId, Quantity, SiteId};

use super::lifecycle::Side;

/// Set points for the four warning levels on one side; `None` where a level is not used.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SetPoints {
    /// Level IV.
    pub blue: Option<f64>,
    /// Level III.
    pub yellow: Option<f64>,
    /// Level II.
    pub orange: Option<f64>,
    /// Level I.
    pub red: Option<f64>,
}

/// The four warning levels, least severe first.
pub(crate) const WARNING_LEVELS: [AlarmLevel; 4] = [
    AlarmLevel::Blue,
    AlarmLevel::Yellow,
    AlarmLevel::Orange,
    AlarmLevel::Red,
];

impl SetPoints {
    /// The set point of `level` (none for [`AlarmLevel::Normal`]).
    pub fn get(&self, level: AlarmLevel) -> Option<f64> {
        match level {
            AlarmLevel::Normal => None,
            AlarmLevel::Blue => self.blue,
            AlarmLevel::Yellow => self.yellow,
            AlarmLevel::Orange => self.orange,
            AlarmLevel::Red => self.red,
        }
    }

    /// Sets the set point of `level`; setting [`AlarmLevel::Normal`] does nothing.
    pub fn set(&mut self, level: AlarmLevel, value: Option<f64>) {
        match level {
            AlarmLevel::Normal => {}
            AlarmLevel::Blue => self.blue = value,
            AlarmLevel::Yellow => self.yellow = value,
            AlarmLevel::Orange => self.orange = value,
            AlarmLevel::Red => self.red = value,
        }
    }

    /// The levels that have a set point, least severe first.
    pub fn iter(&self) -> impl Iterator<Item = (AlarmLevel, f64)> + '_ {
        WARNING_LEVELS
            .into_iter()
            .filter_map(|l| self.get(l).map(|v| (l, v)))
    }

    /// Whether no level has a set point.
    pub fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }
}

/// Which channels a rule applies to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Selector {
    /// Exactly one channel of one node, whatever it measures.
    Channel {
        /// The node.
        node: NodeId,
        /// The channel.
        channel: ChannelId,
    },
    /// Every channel measuring `quantity`, optionally only at one site and/or in one node group.
    Class {
        /// The quantity.
        quantity: Quantity,
        /// Only nodes at this site.
        site: Option<SiteId>,
        /// Only nodes in this group (see [`NodeInfo::group`]).
        group: Option<String>,
    },
}

impl Selector {
    /// Every channel of `quantity`.
    pub fn quantity(quantity: Quantity) -> Selector {
        Selector::Class {
            quantity,
            site: None,
            group: None,
        }
    }

    /// Every channel of `quantity` on nodes of `group`.
    pub fn group(quantity: Quantity, group: &str) -> Selector {
        Selector::Class {
            quantity,
            site: None,
            group: Some(group.to_owned()),
        }
    }

    /// One channel.
    pub fn channel(node: NodeId, channel: ChannelId) -> Selector {
        Selector::Channel { node, channel }
    }

    /// How specific the selector is: the highest matching one wins (see the module table).
    pub fn specificity(&self) -> u8 {
        match self {
            Selector::Channel { .. } => 4,
            Selector::Class { site, group, .. } => {
                u8::from(site.is_some()) + 2 * u8::from(group.is_some())
            }
        }
    }

    /// Whether the selector picks this channel.
    pub fn matches(
        &self,
        node: &NodeId,
        channel: ChannelId,
        quantity: Quantity,
        site: &SiteId,
        node_group: Option<&str>,
    ) -> bool {
        match self {
            Selector::Channel {
                node: n,
                channel: c,
            } => n == node && *c == channel,
            Selector::Class {
                quantity: q,
                site: s,
                group: g,
            } => {
                *q == quantity
                    && s.as_ref().is_none_or(|s| s == site)
                    && g.as_deref().is_none_or(|g| Some(g) == node_group)
            }
        }
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::Channel { node, channel } => write!(f, "{node}/{channel}"),
            Selector::Class {
                quantity,
                site,
                group,
            } => {
                write!(f, "{quantity}")?;
                if let Some(s) = site {
                    write!(f, " at site {s}")?;
                }
                if let Some(g) = group {
                    write!(f, " in group {g}")?;
                }
                Ok(())
            }
        }
    }
}

/// Which way a rate-of-change alarm looks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Only rises.
    Rising,
    /// Only falls.
    Falling,
    /// Both.
    Both,
}

/// A rate-of-change alarm: the value moved faster than `limit_per_min` canonical units per
/// minute between two consecutive usable readings (measured on the readings' timestamps).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateOfChange {
    /// Limit, in canonical units per minute; > 0.
    pub limit_per_min: f64,
    /// Which way.
    pub direction: Direction,
    /// The level of the alarm.
    pub level: AlarmLevel,
}

impl RateOfChange {
    /// Whether `rate` (units per minute, signed) breaches the limit.
    pub(crate) fn breached(&self, rate: f64) -> bool {
        match self.direction {
            Direction::Rising => rate >= self.limit_per_min,
            Direction::Falling => -rate >= self.limit_per_min,
            Direction::Both => rate.abs() >= self.limit_per_min,
        }
    }
}

/// How long without a reading before a channel's data is stale (a communication alarm).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StaleAfter {
    /// A fixed time.
    Millis(u64),
    /// This many of the node's poll intervals ([`NodeInfo::poll_interval_ms`]); a node without a
    /// known poll interval has no stale-data alarm.
    PollIntervals(u32),
}

/// A threshold rule. Build with [`ThresholdRule::new`] and the builder methods.
#[derive(Clone, Debug, PartialEq)]
pub struct ThresholdRule {
    /// A short name for messages and the audit trail.
    pub name: String,
    /// Where the numbers come from (standard and clause, or who set them).
    pub source: String,
    /// The channels it applies to.
    pub selector: Selector,
    /// High-side set points: alarm at `value >= set point`.
    pub high: SetPoints,
    /// Low-side set points: alarm at `value <= set point`.
    pub low: SetPoints,
    /// Hysteresis in the canonical unit: a high-side level holds while
    /// `value >= set point - deadband` (low side: `value <= set point + deadband`).
    pub deadband: f64,
    /// How long a raised (or escalated) condition must persist before it is annunciated.
    pub on_delay_ms: u64,
    /// How long a cleared (or de-escalated) condition must persist before it is annunciated.
    pub off_delay_ms: u64,
    /// Optional rate-of-change alarm.
    pub rate_of_change: Option<RateOfChange>,
    /// Optional stale-data (communication) alarm.
    pub stale_after: Option<StaleAfter>,
    /// Level of the stale-data alarm.
    pub stale_level: AlarmLevel,
    /// Level of the bad-quality (sensor fault) alarm; `None` for no such alarm.
    pub bad_quality_level: Option<AlarmLevel>,
    /// Whether threshold and rate-of-change alarms latch until reset by an operator.
    pub latching: bool,
}

impl ThresholdRule {
    /// A rule with no set points, no delays, no deadband and no other alarms.
    pub fn new(name: &str, selector: Selector) -> ThresholdRule {
        ThresholdRule {
            name: name.to_owned(),
            source: String::new(),
            selector,
            high: SetPoints::default(),
            low: SetPoints::default(),
            deadband: 0.0,
            on_delay_ms: 0,
            off_delay_ms: 0,
            rate_of_change: None,
            stale_after: None,
            stale_level: AlarmLevel::Yellow,
            bad_quality_level: None,
            latching: false,
        }
    }

    /// Cites the source of the numbers.
    pub fn source(mut self, source: &str) -> Self {
        self.source = source.to_owned();
        self
    }

    /// Sets a high-side set point.
    pub fn high(mut self, level: AlarmLevel, set_point: f64) -> Self {
        self.high.set(level, Some(set_point));
        self
    }

    /// Sets a low-side set point.
    pub fn low(mut self, level: AlarmLevel, set_point: f64) -> Self {
        self.low.set(level, Some(set_point));
        self
    }

    /// Sets the deadband.
    pub fn deadband(mut self, deadband: f64) -> Self {
        self.deadband = deadband;
        self
    }

    /// Sets the on- and off-delays.
    pub fn delays(mut self, on_delay_ms: u64, off_delay_ms: u64) -> Self {
        self.on_delay_ms = on_delay_ms;
        self.off_delay_ms = off_delay_ms;
        self
    }

    /// Adds a rate-of-change alarm.
    pub fn rate_of_change(
        mut self,
        limit_per_min: f64,
        direction: Direction,
        level: AlarmLevel,
    ) -> Self {
        self.rate_of_change = Some(RateOfChange {
            limit_per_min,
            direction,
            level,
        });
        self
    }

    /// Adds a stale-data alarm.
    pub fn stale(mut self, after: StaleAfter, level: AlarmLevel) -> Self {
        self.stale_after = Some(after);
        self.stale_level = level;
        self
    }

    /// Adds a bad-quality alarm.
    pub fn bad_quality(mut self, level: AlarmLevel) -> Self {
        self.bad_quality_level = Some(level);
        self
    }

    /// Makes threshold and rate-of-change alarms latching.
    pub fn latching(mut self, latching: bool) -> Self {
        self.latching = latching;
        self
    }

    /// Whether the rule has a threshold alarm at all.
    pub fn has_threshold(&self) -> bool {
        !(self.high.is_empty() && self.low.is_empty())
    }

    /// The threshold condition `value` is in, given the confirmed condition `current` (whose
    /// level is held within the deadband). The more severe side wins; at equal levels the
    /// current side.
    pub(crate) fn evaluate(
        &self,
        value: f64,
        current: (AlarmLevel, Option<Side>),
    ) -> (AlarmLevel, Option<Side>) {
        let side_level = |side: Side, points: &SetPoints| {
            let held_up_to = if current.1 == Some(side) {
                current.0
            } else {
                AlarmLevel::Normal
            };
            let mut level = AlarmLevel::Normal;
            for (l, sp) in points.iter() {
                let (reached, held) = match side {
                    Side::High => (value >= sp, value >= sp - self.deadband),
                    Side::Low => (value <= sp, value <= sp + self.deadband),
                };
                if reached || (held && l <= held_up_to) {
                    level = l;
                }
            }
            level
        };
        let high = side_level(Side::High, &self.high);
        let low = side_level(Side::Low, &self.low);
        match (high, low) {
            (AlarmLevel::Normal, AlarmLevel::Normal) => (AlarmLevel::Normal, None),
            (h, l) if h > l || (h == l && current.1 != Some(Side::Low)) => (h, Some(Side::High)),
            (_, l) => (l, Some(Side::Low)),
        }
    }
}

/// What the rules know about a node beyond its readings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeInfo {
    /// The node's group, for [`Selector::Class`] rules with a group.
    pub group: Option<String>,
    /// How often the node is polled (or reports), for [`StaleAfter::PollIntervals`].
    pub poll_interval_ms: Option<u64>,
}

/// Default longest shelving: 8 hours, one shift.
pub const DEFAULT_MAX_SHELVE_MS: u64 = 8 * 3_600_000;

/// A versioned set of rules. Replace it at run time with
/// [`AlarmEngine::replace_rules`](super::AlarmEngine::replace_rules) and a higher version.
#[derive(Clone, Debug, PartialEq)]
pub struct RuleSet {
    /// Version; each replacement must be higher than the one it replaces.
    pub version: u64,
    /// The rules, in any order.
    pub rules: Vec<ThresholdRule>,
    /// Node groups and poll intervals.
    pub nodes: HashMap<NodeId, NodeInfo>,
    /// Longest an operator may shelve an alarm for.
    pub max_shelve_ms: u64,
}

impl Default for RuleSet {
    fn default() -> Self {
        RuleSet::new(0, Vec::new())
    }
}

impl RuleSet {
    /// A rule set with no node information and the default longest shelving.
    pub fn new(version: u64, rules: Vec<ThresholdRule>) -> RuleSet {
        RuleSet {
            version,
            rules,
            nodes: HashMap::new(),
            max_shelve_ms: DEFAULT_MAX_SHELVE_MS,
        }
    }

    /// Adds (or replaces) a node's group and poll interval.
    pub fn with_node(mut self, node: NodeId, group: Option<&str>, poll_ms: Option<u64>) -> Self {
        self.nodes.insert(
            node,
            NodeInfo {
                group: group.map(str::to_owned),
                poll_interval_ms: poll_ms,
            },
        );
        self
    }

    /// The index of the rule that applies to a channel: the most specific match.
    pub fn resolve(
        &self,
        node: &NodeId,
        channel: ChannelId,
        quantity: Quantity,
        site: &SiteId,
    ) -> Option<usize> {
        let group = self.nodes.get(node).and_then(|n| n.group.as_deref());
        self.rules
            .iter()
            .enumerate()
            .filter(|(_, r)| r.selector.matches(node, channel, quantity, site, group))
            .max_by_key(|(_, r)| r.selector.specificity())
            .map(|(i, _)| i)
    }

    /// The stale-data time of `rule` for `node`, if it has one.
    pub fn stale_after_ms(&self, rule: &ThresholdRule, node: &NodeId) -> Option<u64> {
        match rule.stale_after? {
            StaleAfter::Millis(ms) => Some(ms),
            StaleAfter::PollIntervals(n) => self
                .nodes
                .get(node)
                .and_then(|i| i.poll_interval_ms)
                .map(|p| p.saturating_mul(u64::from(n))),
        }
    }

    /// Checks every rule and reports every mistake, not just the first.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errors = Vec::new();
        if self.max_shelve_ms == 0 {
            errors.push(RuleError::ZeroMaxShelve);
        }
        for (node, info) in &self.nodes {
            if info.poll_interval_ms == Some(0) {
                errors.push(RuleError::ZeroPollInterval { node: node.clone() });
            }
        }
        for (index, rule) in self.rules.iter().enumerate() {
            validate_rule(index, rule, &mut errors);
            if let Some(first) = self.rules[..index]
                .iter()
                .position(|r| r.selector == rule.selector)
            {
                errors.push(RuleError::DuplicateSelector {
                    index,
                    name: rule.name.clone(),
                    first,
                    selector: rule.selector.to_string(),
                });
            }
            // Names identify rules in the API and the audit trail.
            if rule.name.trim().is_empty() {
                errors.push(RuleError::EmptyName { index });
            } else if let Some(first) = self.rules[..index].iter().position(|r| r.name == rule.name)
            {
                errors.push(RuleError::DuplicateName {
                    index,
                    name: rule.name.clone(),
                    first,
                });
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ValidationErrors(errors))
        }
    }
}

fn validate_rule(index: usize, rule: &ThresholdRule, errors: &mut Vec<RuleError>) {
    let name = || rule.name.clone();
    let mut finite = true;
    for (side, points) in [(Side::High, &rule.high), (Side::Low, &rule.low)] {
        for (level, v) in points.iter() {
            if !v.is_finite() {
                finite = false;
                errors.push(RuleError::NotFinite {
                    index,
                    name: name(),
                    what: format!("{side} {level} set point"),
                });
            }
        }
    }
    if !rule.deadband.is_finite() {
        errors.push(RuleError::NotFinite {
            index,
            name: name(),
            what: "deadband".into(),
        });
    } else if rule.deadband < 0.0 {
        errors.push(RuleError::NegativeDeadband {
            index,
            name: name(),
            deadband: rule.deadband,
        });
    }
    if finite {
        for (side, points) in [(Side::High, &rule.high), (Side::Low, &rule.low)] {
            let defined: Vec<_> = points.iter().collect();
            for pair in defined.windows(2) {
                let ((lower, lv), (higher, hv)) = (pair[0], pair[1]);
                let ordered = match side {
                    Side::High => hv > lv,
                    Side::Low => hv < lv,
                };
                if !ordered {
                    errors.push(RuleError::Misordered {
                        index,
                        name: name(),
                        side,
                        lower,
                        lower_value: lv,
                        higher,
                        higher_value: hv,
                    });
                }
            }
        }
        let lowest_high = rule.high.iter().map(|(_, v)| v).reduce(f64::min);
        let highest_low = rule.low.iter().map(|(_, v)| v).reduce(f64::max);
        if let (Some(h), Some(l)) = (lowest_high, highest_low)
            && h <= l
        {
            errors.push(RuleError::SidesOverlap {
                index,
                name: name(),
                lowest_high: h,
                highest_low: l,
            });
        }
    }
    if let Some(roc) = &rule.rate_of_change {
        if !(roc.limit_per_min.is_finite() && roc.limit_per_min > 0.0) {
            errors.push(RuleError::RateLimit {
                index,
                name: name(),
                limit: roc.limit_per_min,
            });
        }
        if !roc.level.is_alarm() {
            errors.push(RuleError::NormalLevel {
                index,
                name: name(),
                what: "rate-of-change",
            });
        }
    }
    if let Some(after) = rule.stale_after {
        if matches!(after, StaleAfter::Millis(0) | StaleAfter::PollIntervals(0)) {
            errors.push(RuleError::ZeroStale {
                index,
                name: name(),
            });
        }
        if !rule.stale_level.is_alarm() {
            errors.push(RuleError::NormalLevel {
                index,
                name: name(),
                what: "stale-data",
            });
        }
    }
    if rule.bad_quality_level == Some(AlarmLevel::Normal) {
        errors.push(RuleError::NormalLevel {
            index,
            name: name(),
            what: "bad-quality",
        });
    }
}

/// One mistake in a rule set.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum RuleError {
    /// A set point or the deadband is NaN or infinite.
    #[error("rule {index} `{name}`: {what} is not a finite number")]
    NotFinite {
        /// Index of the rule.
        index: usize,
        /// Its name.
        name: String,
        /// Which number.
        what: String,
    },
    /// The deadband is negative.
    #[error("rule {index} `{name}`: deadband {deadband} is negative")]
    NegativeDeadband {
        /// Index of the rule.
        index: usize,
        /// Its name.
        name: String,
        /// The deadband.
        deadband: f64,
    },
    /// A more severe level's set point is not beyond a less severe one's on the same side.
    #[error(
        "rule {index} `{name}`: {side} side: {higher} set point {higher_value} must be {} the {lower} set point {lower_value}",
        if *side == Side::High { "above" } else { "below" }
    )]
    Misordered {
        /// Index of the rule.
        index: usize,
        /// Its name.
        name: String,
        /// Which side.
        side: Side,
        /// The less severe level.
        lower: AlarmLevel,
        /// Its set point.
        lower_value: f64,
        /// The more severe level.
        higher: AlarmLevel,
        /// Its set point.
        higher_value: f64,
    },
    /// A high-side set point is at or below a low-side one.
    #[error(
        "rule {index} `{name}`: the lowest high set point {lowest_high} must be above the highest low set point {highest_low}"
    )]
    SidesOverlap {
        /// Index of the rule.
        index: usize,
        /// Its name.
        name: String,
        /// Lowest high-side set point.
        lowest_high: f64,
        /// Highest low-side set point.
        highest_low: f64,
    },
    /// A rate-of-change limit that is not a positive number.
    #[error("rule {index} `{name}`: rate-of-change limit {limit} must be a positive number")]
    RateLimit {
        /// Index of the rule.
        index: usize,
        /// Its name.
        name: String,
        /// The limit.
        limit: f64,
    },
    /// An alarm configured with [`AlarmLevel::Normal`].
    #[error("rule {index} `{name}`: the {what} alarm's level must be blue, yellow, orange or red")]
    NormalLevel {
        /// Index of the rule.
        index: usize,
        /// Its name.
        name: String,
        /// Which alarm.
        what: &'static str,
    },
    /// A stale-data time of zero.
    #[error("rule {index} `{name}`: stale-data time must be more than zero")]
    ZeroStale {
        /// Index of the rule.
        index: usize,
        /// Its name.
        name: String,
    },
    /// Two rules with the same selector.
    #[error("rule {index} `{name}`: selector `{selector}` is already used by rule {first}")]
    DuplicateSelector {
        /// Index of the later rule.
        index: usize,
        /// Its name.
        name: String,
        /// Index of the earlier rule.
        first: usize,
        /// The selector.
        selector: String,
    },
    /// A rule without a name.
    #[error("rule {index}: a rule needs a name")]
    EmptyName {
        /// Index of the rule.
        index: usize,
    },
    /// Two rules with the same name.
    #[error("rule {index} `{name}`: the name is already used by rule {first}")]
    DuplicateName {
        /// Index of the later rule.
        index: usize,
        /// The name.
        name: String,
        /// Index of the earlier rule.
        first: usize,
    },
    /// A node's poll interval of zero.
    #[error("node {node}: poll interval must be more than zero")]
    ZeroPollInterval {
        /// The node.
        node: NodeId,
    },
    /// Longest shelving of zero.
    #[error("longest shelving time must be more than zero")]
    ZeroMaxShelve,
}

/// Every mistake found in a rule set, one per line when displayed.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub struct ValidationErrors(pub Vec<RuleError>);

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}
