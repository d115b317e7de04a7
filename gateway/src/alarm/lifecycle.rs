//! One alarm's life cycle, after ISA-18.2 / IEC 62682, and the transitions it reports.
//!
//! An alarm tracks its *condition* (is the process value beyond a limit, after deadband and
//! delays) separately from its *annunciation* (what the operator sees and must do). The
//! annunciated state follows from the condition and from operator actions:
//!
//! | from | event | to |
//! |---|---|---|
//! | normal | condition raised | active unacknowledged |
//! | active unacknowledged | acknowledged | active acknowledged |
//! | active unacknowledged | condition cleared | cleared unacknowledged (latching: latched unacknowledged) |
//! | active acknowledged | condition cleared | normal (latching: latched acknowledged) |
//! | active acknowledged | escalated (level raised) | active unacknowledged |
//! | active (either) | de-escalated | same state, lower level (latching: no change) |
//! | cleared unacknowledged | acknowledged | normal |
//! | cleared unacknowledged | condition raised again | active unacknowledged |
//! | latched unacknowledged | acknowledged | latched acknowledged |
//! | latched (either) | latch reset | normal if acknowledged, else cleared unacknowledged |
//! | latched (either) | condition raised again | active unacknowledged |
//! | any but out of service | shelved | shelved |
//! | shelved | unshelved or shelving expired | active unacknowledged if the condition holds, else normal |
//! | any | removed from service | out of service |
//! | out of service | returned to service | active unacknowledged if the condition holds, else normal |
//!
//! While shelved or out of service the condition is still tracked (so the alarm comes back in
//! the right state) but no transition is reported for it. An escalation re-requires
//! acknowledgement, as ISA-18.2 practice has it: the operator acknowledged a yellow alarm, not
//! the red one it became. A latching alarm holds the highest level it reached until reset.

use std::fmt;

use tianzhong_protocol::{AlarmLevel, ChannelId, NodeId};

/// What an alarm is about; with the node and channel, its identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Condition {
    /// The value beyond a set point; the alarm's level follows the set point reached.
    Threshold,
    /// The value changing faster than a limit.
    RateOfChange,
    /// No reading for too long: a communication alarm.
    Stale,
    /// The sensor reports a fault.
    BadQuality,
}

impl Condition {
    /// All conditions, in slot order.
    pub const ALL: [Condition; 4] = [
        Condition::Threshold,
        Condition::RateOfChange,
        Condition::Stale,
        Condition::BadQuality,
    ];

    /// Index into a channel's slots.
    pub(crate) const fn index(self) -> usize {
        self as usize
    }

    /// Stable snake_case key.
    pub const fn key(self) -> &'static str {
        match self {
            Condition::Threshold => "threshold",
            Condition::RateOfChange => "rate_of_change",
            Condition::Stale => "stale",
            Condition::BadQuality => "bad_quality",
        }
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key())
    }
}

/// The side of a threshold alarm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// Value at or above a high set point.
    High,
    /// Value at or below a low set point.
    Low,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::High => "high",
            Side::Low => "low",
        })
    }
}

/// An alarm's identity.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AlarmKey {
    /// The node.
    pub node: NodeId,
    /// The channel.
    pub channel: ChannelId,
    /// The condition.
    pub condition: Condition,
}

impl AlarmKey {
    /// Builds a key.
    pub fn new(node: NodeId, channel: ChannelId, condition: Condition) -> AlarmKey {
        AlarmKey {
            node,
            channel,
            condition,
        }
    }
}

impl fmt::Display for AlarmKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.node, self.channel, self.condition)
    }
}

/// An alarm's annunciated state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AlarmState {
    /// Not in alarm, nothing to acknowledge.
    Normal,
    /// In alarm, not yet acknowledged.
    ActiveUnacked,
    /// In alarm, acknowledged.
    ActiveAcked,
    /// Returned to normal before being acknowledged.
    ClearedUnacked,
    /// Latching alarm whose condition cleared, not yet acknowledged.
    LatchedUnacked,
    /// Latching alarm whose condition cleared, acknowledged, awaiting reset.
    LatchedAcked,
    /// Shelved by an operator for a time.
    Shelved,
    /// Removed from service (maintenance).
    OutOfService,
}

impl AlarmState {
    /// Stable snake_case key.
    pub const fn key(self) -> &'static str {
        match self {
            AlarmState::Normal => "normal",
            AlarmState::ActiveUnacked => "active_unacked",
            AlarmState::ActiveAcked => "active_acked",
            AlarmState::ClearedUnacked => "cleared_unacked",
            AlarmState::LatchedUnacked => "latched_unacked",
            AlarmState::LatchedAcked => "latched_acked",
            AlarmState::Shelved => "shelved",
            AlarmState::OutOfService => "out_of_service",
        }
    }
}

impl fmt::Display for AlarmState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key())
    }
}

/// Who did an operator action, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operator {
    /// The user.
    pub user: String,
    /// Their comment.
    pub comment: String,
}

impl Operator {
    /// Builds one.
    pub fn new(user: &str, comment: &str) -> Operator {
        Operator {
            user: user.to_owned(),
            comment: comment.to_owned(),
        }
    }
}

/// Why a transition happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cause {
    /// The condition became active.
    Raised,
    /// The level rose (or the side changed) while active.
    Escalated,
    /// The level fell while active.
    DeEscalated,
    /// The condition returned to normal.
    Cleared,
    /// Acknowledged by an operator.
    Acknowledged(Operator),
    /// Shelved by an operator until `until_ms`.
    Shelved {
        /// Who.
        by: Operator,
        /// When shelving ends.
        until_ms: u64,
    },
    /// Unshelved by an operator.
    Unshelved(Operator),
    /// The shelving time ran out.
    ShelveExpired,
    /// Removed from service by an operator.
    RemovedFromService(Operator),
    /// Returned to service by an operator.
    ReturnedToService(Operator),
    /// Latch reset by an operator.
    LatchReset(Operator),
    /// A rule replacement removed the alarm (its condition is no longer configured).
    RuleRemoved,
}

/// A change of an alarm's state or level, for the caller to publish and audit.
#[derive(Clone, Debug, PartialEq)]
pub struct Transition {
    /// The alarm.
    pub key: AlarmKey,
    /// State before.
    pub from: AlarmState,
    /// State after.
    pub to: AlarmState,
    /// Level before.
    pub from_level: AlarmLevel,
    /// Level after: the annunciated level (kept while cleared-unacknowledged or latched so the
    /// operator sees what cleared; normal in [`AlarmState::Normal`]).
    pub level: AlarmLevel,
    /// Side of a threshold alarm.
    pub side: Option<Side>,
    /// The channel's latest value (NaN if it never had one).
    pub value: f64,
    /// When, ms since the Unix epoch (the `now_ms` passed in).
    pub at_ms: u64,
    /// Why.
    pub cause: Cause,
    /// The version of the rule set in force.
    pub rules_version: u64,
}

/// An alarm's current state, for display.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AlarmStatus {
    /// Annunciated state.
    pub state: AlarmState,
    /// Annunciated level.
    pub level: AlarmLevel,
    /// Side of a threshold alarm.
    pub side: Option<Side>,
    /// The condition's level now (after deadband and delays), whatever the state.
    pub condition_level: AlarmLevel,
    /// When shelving ends.
    pub shelved_until_ms: Option<u64>,
    /// When the alarm last changed (its latest transition), if it ever did: what an operator
    /// opening the console after the fact needs, where the live stream only shows new ones.
    pub changed_ms: Option<u64>,
}

/// An operator action, for error messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Acknowledge.
    Acknowledge,
    /// Shelve.
    Shelve,
    /// Unshelve.
    Unshelve,
    /// Remove from service.
    RemoveFromService,
    /// Return to service.
    ReturnToService,
    /// Reset a latch.
    ResetLatch,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Acknowledge => "acknowledge",
            Action::Shelve => "shelve",
            Action::Unshelve => "unshelve",
            Action::RemoveFromService => "remove from service",
            Action::ReturnToService => "return to service",
            Action::ResetLatch => "reset the latch of",
        })
    }
}

/// Why an operator action was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ActionError {
    /// No such alarm: the channel never reported, or its rule has no such condition.
    #[error("no alarm {0}")]
    UnknownAlarm(AlarmKey),
    /// The action does not apply in the alarm's state.
    #[error("cannot {action} alarm {key}: it is {state}")]
    NotAllowed {
        /// The alarm.
        key: AlarmKey,
        /// The action.
        action: Action,
        /// Its state.
        state: AlarmState,
    },
    /// Shelving for zero time or longer than the rule set allows.
    #[error("cannot shelve alarm {key} for {requested_ms} ms: 1 to {max_ms} ms allowed")]
    ShelveDuration {
        /// The alarm.
        key: AlarmKey,
        /// Requested.
        requested_ms: u64,
        /// Allowed.
        max_ms: u64,
    },
}

/// A condition: its level (normal when inactive) and, for thresholds, side.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Cond {
    pub level: AlarmLevel,
    pub side: Option<Side>,
}

impl Cond {
    pub const NORMAL: Cond = Cond {
        level: AlarmLevel::Normal,
        side: None,
    };

    pub fn new(level: AlarmLevel, side: Option<Side>) -> Cond {
        Cond { level, side }
    }

    pub fn active(self) -> bool {
        self.level.is_alarm()
    }
}

/// What changed, before the engine adds the key, value, time and version.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Change {
    pub from: AlarmState,
    pub to: AlarmState,
    pub from_level: AlarmLevel,
    pub level: AlarmLevel,
    pub side: Option<Side>,
    pub cause: Cause,
}

/// One alarm's state machine.
#[derive(Clone, Debug, Default)]
pub(crate) struct Slot {
    /// Confirmed condition (after deadband and delays).
    pub cond: Cond,
    /// Latest condition before delays.
    pub raw: Cond,
    /// Since when `raw` has differed from `cond`, and whether upwards.
    pub pending: Option<(u64, bool)>,
    /// Annunciated level and side.
    level: AlarmLevel,
    side: Option<Side>,
    acked: bool,
    /// A latching alarm whose condition cleared.
    latched: bool,
    pub shelved_until: Option<u64>,
    oos: bool,
    /// Time of the latest transition.
    pub changed_ms: Option<u64>,
}

impl Slot {
    pub fn new() -> Slot {
        Slot {
            acked: true,
            ..Slot::default()
        }
    }

    pub fn state(&self) -> AlarmState {
        if self.oos {
            AlarmState::OutOfService
        } else if self.shelved_until.is_some() {
            AlarmState::Shelved
        } else if self.cond.active() {
            if self.acked {
                AlarmState::ActiveAcked
            } else {
                AlarmState::ActiveUnacked
            }
        } else if self.latched {
            if self.acked {
                AlarmState::LatchedAcked
            } else {
                AlarmState::LatchedUnacked
            }
        } else if self.acked {
            AlarmState::Normal
        } else {
            AlarmState::ClearedUnacked
        }
    }

    pub fn status(&self) -> AlarmStatus {
        AlarmStatus {
            state: self.state(),
            level: self.level,
            side: self.side,
            condition_level: self.cond.level,
            shelved_until_ms: self.shelved_until,
            changed_ms: self.changed_ms,
        }
    }

    /// Notes `change`, if any, as this alarm's latest transition at `now`.
    pub fn stamped(&mut self, now: u64, change: Option<Change>) -> Option<Change> {
        if change.is_some() {
            self.changed_ms = Some(now);
        }
        change
    }

    fn suppressed(&self) -> bool {
        self.oos || self.shelved_until.is_some()
    }

    fn change(&self, from: AlarmState, from_level: AlarmLevel, cause: Cause) -> Option<Change> {
        let to = self.state();
        // An escalation may change only the side (low to high at the same level).
        let escalated = cause == Cause::Escalated;
        (to != from || self.level != from_level || escalated).then_some(Change {
            from,
            to,
            from_level,
            level: self.level,
            side: self.side,
            cause,
        })
    }

    /// Feeds the latest undelayed condition; returns the confirmed one when it changes, once it
    /// has differed for the on-delay (upwards) or off-delay (downwards).
    pub fn debounce(&mut self, raw: Cond, now: u64, on_delay: u64, off_delay: u64) -> Option<Cond> {
        self.raw = raw;
        self.due(now, on_delay, off_delay)
    }

    /// Whether the pending change is due at `now`.
    pub fn due(&mut self, now: u64, on_delay: u64, off_delay: u64) -> Option<Cond> {
        let raw = self.raw;
        if raw == self.cond {
            self.pending = None;
            return None;
        }
        let up = raw.level > self.cond.level
            || (raw.level == self.cond.level && raw.side != self.cond.side);
        let since = match self.pending {
            Some((since, dir)) if dir == up => since,
            _ => {
                self.pending = Some((now, up));
                now
            }
        };
        let delay = if up { on_delay } else { off_delay };
        (now.saturating_sub(since) >= delay).then(|| {
            self.pending = None;
            raw
        })
    }

    /// Sets the confirmed condition and moves the life cycle accordingly.
    pub fn set_condition(&mut self, new: Cond, latching: bool) -> Option<Change> {
        let old = self.cond;
        if old == new {
            return None;
        }
        let (from, from_level) = (self.state(), self.level);
        self.cond = new;
        self.raw = new;
        self.pending = None;
        if self.suppressed() {
            return None;
        }
        let cause = match (old.active(), new.active()) {
            (false, true) => {
                self.level = if latching && self.latched {
                    self.level.max(new.level)
                } else {
                    new.level
                };
                self.side = new.side;
                self.latched = false;
                self.acked = false;
                Cause::Raised
            }
            (true, true) => {
                if new.level > self.level || new.side != self.side {
                    self.level = new.level;
                    self.side = new.side;
                    self.acked = false;
                    Cause::Escalated
                } else if latching {
                    return None;
                } else {
                    self.level = new.level;
                    Cause::DeEscalated
                }
            }
            (true, false) => {
                if latching {
                    self.latched = true;
                } else if self.acked {
                    self.level = AlarmLevel::Normal;
                    self.side = None;
                }
                Cause::Cleared
            }
            (false, false) => return None,
        };
        self.change(from, from_level, cause)
    }

    fn refuse(&self, key: &AlarmKey, action: Action) -> ActionError {
        ActionError::NotAllowed {
            key: key.clone(),
            action,
            state: self.state(),
        }
    }

    fn normal_if_clear(&mut self) {
        if self.state() == AlarmState::Normal {
            self.level = AlarmLevel::Normal;
            self.side = None;
        }
    }

    pub fn acknowledge(&mut self, key: &AlarmKey, by: Operator) -> Result<Change, ActionError> {
        let (from, from_level) = (self.state(), self.level);
        match from {
            AlarmState::ActiveUnacked | AlarmState::ClearedUnacked | AlarmState::LatchedUnacked => {
                self.acked = true;
                self.normal_if_clear();
                Ok(self
                    .change(from, from_level, Cause::Acknowledged(by))
                    .expect("acknowledging changes the state"))
            }
            _ => Err(self.refuse(key, Action::Acknowledge)),
        }
    }

    pub fn shelve(
        &mut self,
        key: &AlarmKey,
        until_ms: u64,
        by: Operator,
    ) -> Result<Change, ActionError> {
        let (from, from_level) = (self.state(), self.level);
        if self.oos {
            return Err(self.refuse(key, Action::Shelve));
        }
        self.shelved_until = Some(until_ms);
        Ok(Change {
            from,
            to: AlarmState::Shelved,
            from_level,
            level: self.level,
            side: self.side,
            cause: Cause::Shelved { by, until_ms },
        })
    }

    /// Comes back from shelving or out of service in the state the condition justifies.
    fn restore(&mut self) {
        self.acked = !self.cond.active();
        self.latched = false;
        self.level = self.cond.level;
        self.side = self.cond.side;
    }

    /// Ends shelving, by an operator or (`by` none) because it expired.
    pub fn unshelve(
        &mut self,
        key: &AlarmKey,
        by: Option<Operator>,
    ) -> Result<Change, ActionError> {
        let (from, from_level) = (self.state(), self.level);
        if from != AlarmState::Shelved {
            return Err(self.refuse(key, Action::Unshelve));
        }
        self.shelved_until = None;
        self.restore();
        let cause = by.map_or(Cause::ShelveExpired, Cause::Unshelved);
        Ok(self.change(from, from_level, cause).expect("state changes"))
    }

    pub fn set_out_of_service(
        &mut self,
        key: &AlarmKey,
        out: bool,
        by: Operator,
    ) -> Result<Change, ActionError> {
        let (from, from_level) = (self.state(), self.level);
        if out == self.oos {
            let action = if out {
                Action::RemoveFromService
            } else {
                Action::ReturnToService
            };
            return Err(self.refuse(key, action));
        }
        let cause = if out {
            self.oos = true;
            self.shelved_until = None;
            Cause::RemovedFromService(by)
        } else {
            self.oos = false;
            self.restore();
            Cause::ReturnedToService(by)
        };
        Ok(self.change(from, from_level, cause).expect("state changes"))
    }

    /// Resets a latch: a latched alarm goes to normal (or cleared-unacknowledged if not yet
    /// acknowledged); an active latching alarm holding a higher level than its condition drops
    /// to the condition's level. A reset cannot clear a condition that still holds.
    pub fn reset_latch(&mut self, key: &AlarmKey, by: Operator) -> Result<Change, ActionError> {
        let (from, from_level) = (self.state(), self.level);
        match from {
            AlarmState::LatchedAcked | AlarmState::LatchedUnacked => {
                self.latched = false;
                self.normal_if_clear();
            }
            AlarmState::ActiveAcked | AlarmState::ActiveUnacked if self.level > self.cond.level => {
                self.level = self.cond.level;
                self.side = self.cond.side;
            }
            _ => return Err(self.refuse(key, Action::ResetLatch)),
        }
        Ok(self
            .change(from, from_level, Cause::LatchReset(by))
            .expect("state or level changes"))
    }

    /// Removes the alarm (rule replacement): reports the way to normal unless already there.
    pub fn remove(&self) -> Option<Change> {
        let (from, from_level) = (self.state(), self.level);
        (from != AlarmState::Normal).then_some(Change {
            from,
            to: AlarmState::Normal,
            from_level,
            level: AlarmLevel::Normal,
            side: None,
            cause: Cause::RuleRemoved,
        })
    }
}
