//! The alarm engine: per-channel state, evaluation of readings, timers and operator actions.
//!
//! Sans-IO: the engine never reads a clock, sleeps or publishes. The caller passes `now_ms`
//! (the gateway's clock, ms since the Unix epoch) into every call and publishes the
//! [`Transition`]s it gets back.
//!
//! - [`AlarmEngine::on_reading`] per reading: one `HashMap` lookup by `(node, channel)`, then a
//!   fixed amount of work on the channel's four alarm slots; the result is a fixed-capacity
//!   [`Transitions`], so steady-state evaluation does not allocate. (The first reading of a
//!   channel inserts its entry and finds its rule by a scan of the rules; the rule's index is
//!   then cached until the rule set is replaced.)
//! - [`AlarmEngine::tick`] periodically (e.g. every second): on- and off-delays that ran out
//!   without a new reading, stale data, shelving that expired. It visits every channel, so it
//!   is O(channels) per call, not per reading.
//!
//! # Readings by quality
//!
//! | quality | threshold, rate of change | bad-quality alarm | stale-data alarm |
//! |---|---|---|---|
//! | good, uncertain | evaluated (an over-range gas reading is the most dangerous one) | cleared | cleared |
//! | bad: sensor fault | held | raised | cleared |
//! | bad: calibrating, stopped | held (calibration gas must not alarm; nor clear one) | cleared | cleared |
//! | bad: communication failure | held | held | not cleared: counts as no reading |
//!
//! Delays: the on-delay applies to every rise of the condition (raise or escalation), the
//! off-delay to every fall (clear or de-escalation), timed from the first reading that
//! differed in that direction; when it runs out the condition takes the latest level. Stale
//! data and bad quality have no delays (stale data is a delay in itself). Rate of change uses
//! the readings' own timestamps; an out-of-order or repeated timestamp is not used for it.

use std::collections::HashMap;

use tianzhong_protocol::{AlarmLevel, BadReason, ChannelId, NodeId, Quality, Quantity, SiteId};

use super::lifecycle::{
    ActionError, AlarmKey, AlarmState, AlarmStatus, Change, Cond, Condition, Operator, Slot,
    Transition,
};
use super::rule::{RuleSet, ThresholdRule, ValidationErrors};
use crate::pipeline::Record;

/// Most transitions one reading can cause: per condition, a shelving that expired and a
/// condition change, or a removal when the channel's rule changed.
pub const MAX_TRANSITIONS_PER_READING: usize = 2 * Condition::ALL.len();

/// The transitions of one reading; fixed capacity, no allocation.
pub type Transitions = heapless::Vec<Transition, MAX_TRANSITIONS_PER_READING>;

/// Why a rule set was not installed.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ReplaceError {
    /// The rule set has mistakes.
    #[error("rule set version {version} is invalid:\n{errors}")]
    Invalid {
        /// Its version.
        version: u64,
        /// The mistakes.
        errors: ValidationErrors,
    },
    /// The version is not higher than the one in force.
    #[error("rule set version {offered} is not newer than version {current} in force")]
    NotNewer {
        /// In force.
        current: u64,
        /// Offered.
        offered: u64,
    },
}

#[derive(Debug)]
struct ChannelState {
    site: SiteId,
    quantity: Quantity,
    /// Index of the rule in force, once resolved.
    rule: Option<usize>,
    resolved: bool,
    /// Latest value of any reading that had one (for transitions).
    last_value: f64,
    /// Latest usable (good or uncertain) value and its timestamp, for rate of change.
    last_usable: Option<(f64, u64)>,
    /// Gateway time of the latest reading that proves the channel talks.
    last_seen_ms: u64,
    slots: [Option<Slot>; 4],
}

/// The gateway's alarm engine. See the [module documentation](super).
#[derive(Debug)]
pub struct AlarmEngine {
    rules: RuleSet,
    channels: HashMap<(NodeId, ChannelId), ChannelState>,
}

/// Collects transitions into a fixed-capacity or growable buffer.
trait Sink {
    fn put(&mut self, t: Transition);
}

impl Sink for Transitions {
    fn put(&mut self, t: Transition) {
        let pushed = self.push(t);
        debug_assert!(
            pushed.is_ok(),
            "more than {MAX_TRANSITIONS_PER_READING} transitions"
        );
    }
}

impl Sink for Vec<Transition> {
    fn put(&mut self, t: Transition) {
        self.push(t);
    }
}

/// The context a channel's transitions are built in.
struct Ctx<'a> {
    node: &'a NodeId,
    channel: ChannelId,
    value: f64,
    now: u64,
    version: u64,
}

impl Ctx<'_> {
    fn emit(&self, out: &mut impl Sink, condition: Condition, change: Option<Change>) {
        if let Some(c) = change {
            out.put(self.transition(condition, c));
        }
    }

    fn transition(&self, condition: Condition, c: Change) -> Transition {
        Transition {
            key: AlarmKey::new(self.node.clone(), self.channel, condition),
            from: c.from,
            to: c.to,
            from_level: c.from_level,
            level: c.level,
            side: c.side,
            value: self.value,
            at_ms: self.now,
            cause: c.cause,
            rules_version: self.version,
        }
    }
}

/// Whether `rule` configures `condition` for `node`.
fn configured(rules: &RuleSet, rule: &ThresholdRule, node: &NodeId, condition: Condition) -> bool {
    match condition {
        Condition::Threshold => rule.has_threshold(),
        Condition::RateOfChange => rule.rate_of_change.is_some(),
        Condition::Stale => rules.stale_after_ms(rule, node).is_some(),
        Condition::BadQuality => rule.bad_quality_level.is_some(),
    }
}

impl ChannelState {
    /// Re-resolves the channel's rule and brings its slots in line: slots whose condition is no
    /// longer configured are removed (reported unless normal), new ones start normal.
    fn resync(&mut self, rules: &RuleSet, ctx: &Ctx<'_>, out: &mut impl Sink) {
        self.rule = rules.resolve(ctx.node, ctx.channel, self.quantity, &self.site);
        self.resolved = true;
        let rule = self.rule.map(|i| &rules.rules[i]);
        for c in Condition::ALL {
            let want = rule.is_some_and(|r| configured(rules, r, ctx.node, c));
            let slot = &mut self.slots[c.index()];
            match (want, slot.is_some()) {
                (true, false) => *slot = Some(Slot::new()),
                (false, true) => {
                    ctx.emit(out, c, slot.take().and_then(|s| s.remove()));
                }
                _ => {}
            }
        }
    }

    /// Ends shelving that ran out by `now`.
    fn expire_shelving(&mut self, ctx: &Ctx<'_>, out: &mut impl Sink) {
        for c in Condition::ALL {
            if let Some(slot) = &mut self.slots[c.index()]
                && slot.shelved_until.is_some_and(|until| ctx.now >= until)
            {
                let key = AlarmKey::new(ctx.node.clone(), ctx.channel, c);
                let change = slot.unshelve(&key, None).ok();
                ctx.emit(out, c, slot.stamped(ctx.now, change));
            }
        }
    }

    /// Sets a condition without delays.
    fn set(
        &mut self,
        c: Condition,
        cond: Cond,
        latching: bool,
        ctx: &Ctx<'_>,
        out: &mut impl Sink,
    ) {
        if let Some(slot) = &mut self.slots[c.index()] {
            let change = slot.set_condition(cond, latching);
            ctx.emit(out, c, slot.stamped(ctx.now, change));
        }
    }

    /// Feeds a condition through the rule's delays.
    fn debounce(
        &mut self,
        c: Condition,
        raw: Cond,
        rule: &ThresholdRule,
        ctx: &Ctx<'_>,
        out: &mut impl Sink,
    ) {
        if let Some(slot) = &mut self.slots[c.index()]
            && let Some(cond) = slot.debounce(raw, ctx.now, rule.on_delay_ms, rule.off_delay_ms)
        {
            let change = slot.set_condition(cond, rule.latching);
            ctx.emit(out, c, slot.stamped(ctx.now, change));
        }
    }

    /// Evaluates the threshold against the latest usable value (rule replacement).
    fn reevaluate_threshold(&mut self, rule: &ThresholdRule, ctx: &Ctx<'_>, out: &mut impl Sink) {
        let Some((value, _)) = self.last_usable else {
            return;
        };
        if let Some(cur) = self.slots[Condition::Threshold.index()]
            .as_ref()
            .map(|s| s.cond)
        {
            let (level, side) = rule.evaluate(value, (cur.level, cur.side));
            self.debounce(Condition::Threshold, Cond::new(level, side), rule, ctx, out);
        }
    }

    /// Timers: delays that ran out, stale data.
    fn timers(
        &mut self,
        rules: &RuleSet,
        rule: &ThresholdRule,
        ctx: &Ctx<'_>,
        out: &mut impl Sink,
    ) {
        for c in [Condition::Threshold, Condition::RateOfChange] {
            if let Some(slot) = &mut self.slots[c.index()]
                && slot.pending.is_some()
                && let Some(cond) = slot.due(ctx.now, rule.on_delay_ms, rule.off_delay_ms)
            {
                let change = slot.set_condition(cond, rule.latching);
                ctx.emit(out, c, slot.stamped(ctx.now, change));
            }
        }
        if let Some(after) = rules.stale_after_ms(rule, ctx.node)
            && ctx.now.saturating_sub(self.last_seen_ms) >= after
        {
            let cond = Cond::new(rule.stale_level, None);
            self.set(Condition::Stale, cond, false, ctx, out);
        }
    }
}

impl AlarmEngine {
    /// An engine running `rules`, with no channels yet.
    pub fn new(rules: RuleSet) -> Result<AlarmEngine, ValidationErrors> {
        rules.validate()?;
        Ok(AlarmEngine {
            rules,
            channels: HashMap::new(),
        })
    }

    /// The rule set in force.
    pub fn rules(&self) -> &RuleSet {
        &self.rules
    }

    /// Evaluates one reading at gateway time `now_ms`.
    pub fn on_reading(&mut self, record: &Record, now_ms: u64) -> Transitions {
        let mut out = Transitions::new();
        let r = &record.reading;
        let rules = &self.rules;
        let ch = self
            .channels
            .entry((r.node.clone(), r.channel))
            .or_insert_with(|| ChannelState {
                site: record.site.clone(),
                quantity: r.quantity,
                rule: None,
                resolved: false,
                last_value: f64::NAN,
                last_usable: None,
                last_seen_ms: now_ms,
                slots: Default::default(),
            });
        let communicates = r.quality != Quality::Bad(BadReason::CommunicationFailure);
        if communicates {
            ch.last_value = r.value;
        }
        let ctx = Ctx {
            node: &r.node,
            channel: r.channel,
            value: ch.last_value,
            now: now_ms,
            version: rules.version,
        };
        if !ch.resolved || ch.quantity != r.quantity || ch.site != record.site {
            ch.quantity = r.quantity;
            ch.site = record.site.clone();
            ch.resync(rules, &ctx, &mut out);
        }
        ch.expire_shelving(&ctx, &mut out);
        if !communicates {
            return out;
        }
        // Kept whether or not a rule applies, so a rule installed later starts from them.
        ch.last_seen_ms = now_ms;
        let ts = r.timestamp.millis();
        let prev_usable = ch.last_usable;
        let usable = !matches!(r.quality, Quality::Bad(_));
        if usable && prev_usable.is_none_or(|(_, prev_ts)| ts > prev_ts) {
            ch.last_usable = Some((r.value, ts));
        }
        let Some(rule) = ch.rule.map(|i| &rules.rules[i]) else {
            return out;
        };
        ch.set(Condition::Stale, Cond::NORMAL, false, &ctx, &mut out);
        let fault = r.quality == Quality::Bad(BadReason::SensorFault);
        if let Some(level) = rule.bad_quality_level {
            let cond = if fault {
                Cond::new(level, None)
            } else {
                Cond::NORMAL
            };
            ch.set(Condition::BadQuality, cond, false, &ctx, &mut out);
        }
        if !usable {
            return out;
        }
        if let Some(cur) = ch.slots[Condition::Threshold.index()]
            .as_ref()
            .map(|s| s.cond)
        {
            let (level, side) = rule.evaluate(r.value, (cur.level, cur.side));
            ch.debounce(
                Condition::Threshold,
                Cond::new(level, side),
                rule,
                &ctx,
                &mut out,
            );
        }
        if let Some(roc) = &rule.rate_of_change
            && let Some((prev, prev_ts)) = prev_usable
            && ts > prev_ts
        {
            let rate = (r.value - prev) / (ts - prev_ts) as f64 * 60_000.0;
            let raw = if roc.breached(rate) {
                Cond::new(roc.level, None)
            } else {
                Cond::NORMAL
            };
            ch.debounce(Condition::RateOfChange, raw, rule, &ctx, &mut out);
        }
        out
    }

    /// Time-driven changes at `now_ms`: delays that ran out, stale data, shelving that expired.
    pub fn tick(&mut self, now_ms: u64) -> Vec<Transition> {
        let mut out = Vec::new();
        let rules = &self.rules;
        for ((node, channel), ch) in &mut self.channels {
            let ctx = Ctx {
                node,
                channel: *channel,
                value: ch.last_value,
                now: now_ms,
                version: rules.version,
            };
            ch.expire_shelving(&ctx, &mut out);
            if let Some(rule) = ch.rule.map(|i| &rules.rules[i]) {
                ch.timers(rules, rule, &ctx, &mut out);
            }
        }
        out
    }

    /// Installs a new rule set without losing alarm state: alarms whose identity (node,
    /// channel, condition) still exists keep their state and are re-evaluated against the new
    /// set points with the channel's latest usable value; alarms whose condition the new rules
    /// no longer configure are removed, reported as going to normal ([`Cause::RuleRemoved`]);
    /// newly configured ones start normal.
    ///
    /// [`Cause::RuleRemoved`]: super::Cause::RuleRemoved
    pub fn replace_rules(
        &mut self,
        rules: RuleSet,
        now_ms: u64,
    ) -> Result<Vec<Transition>, ReplaceError> {
        rules.validate().map_err(|errors| ReplaceError::Invalid {
            version: rules.version,
            errors,
        })?;
        if rules.version <= self.rules.version {
            return Err(ReplaceError::NotNewer {
                current: self.rules.version,
                offered: rules.version,
            });
        }
        self.rules = rules;
        let rules = &self.rules;
        let mut out = Vec::new();
        for ((node, channel), ch) in &mut self.channels {
            let ctx = Ctx {
                node,
                channel: *channel,
                value: ch.last_value,
                now: now_ms,
                version: rules.version,
            };
            ch.resync(rules, &ctx, &mut out);
            let Some(rule) = ch.rule.map(|i| &rules.rules[i]) else {
                continue;
            };
            ch.reevaluate_threshold(rule, &ctx, &mut out);
            // A stale or bad-quality alarm that is active takes the new rule's level.
            for (c, level) in [
                (Condition::Stale, Some(rule.stale_level)),
                (Condition::BadQuality, rule.bad_quality_level),
            ] {
                if let (Some(slot), Some(level)) = (&ch.slots[c.index()], level)
                    && slot.cond.active()
                    && slot.cond.level != level
                {
                    ch.set(c, Cond::new(level, None), false, &ctx, &mut out);
                }
            }
            ch.timers(rules, rule, &ctx, &mut out);
        }
        Ok(out)
    }

    /// The state of one alarm.
    pub fn status(&self, key: &AlarmKey) -> Option<AlarmStatus> {
        self.channels.get(&(key.node.clone(), key.channel))?.slots[key.condition.index()]
            .as_ref()
            .map(Slot::status)
    }

    /// Every alarm the engine knows, in no particular order.
    pub fn alarms(&self) -> impl Iterator<Item = (AlarmKey, AlarmStatus)> + '_ {
        self.channels.iter().flat_map(|((node, channel), ch)| {
            Condition::ALL.into_iter().filter_map(move |c| {
                ch.slots[c.index()]
                    .as_ref()
                    .map(|s| (AlarmKey::new(node.clone(), *channel, c), s.status()))
            })
        })
    }

    fn act(
        &mut self,
        key: &AlarmKey,
        now_ms: u64,
        f: impl FnOnce(&mut Slot, &AlarmKey) -> Result<Change, ActionError>,
    ) -> Result<Transition, ActionError> {
        let unknown = || ActionError::UnknownAlarm(key.clone());
        let ch = self
            .channels
            .get_mut(&(key.node.clone(), key.channel))
            .ok_or_else(unknown)?;
        let slot = ch.slots[key.condition.index()]
            .as_mut()
            .ok_or_else(unknown)?;
        let change = f(slot, key)?;
        slot.changed_ms = Some(now_ms);
        let ctx = Ctx {
            node: &key.node,
            channel: key.channel,
            value: ch.last_value,
            now: now_ms,
            version: self.rules.version,
        };
        Ok(ctx.transition(key.condition, change))
    }

    /// Acknowledges an unacknowledged alarm (active, cleared or latched).
    pub fn acknowledge(
        &mut self,
        key: &AlarmKey,
        user: &str,
        comment: &str,
        now_ms: u64,
    ) -> Result<Transition, ActionError> {
        let by = Operator::new(user, comment);
        self.act(key, now_ms, |s, k| s.acknowledge(k, by))
    }

    /// Shelves an alarm for `duration_ms` (1 ms up to the rule set's
    /// [`max_shelve_ms`](RuleSet::max_shelve_ms)); shelving again sets a new end.
    pub fn shelve(
        &mut self,
        key: &AlarmKey,
        duration_ms: u64,
        user: &str,
        comment: &str,
        now_ms: u64,
    ) -> Result<Transition, ActionError> {
        let max_ms = self.rules.max_shelve_ms;
        if duration_ms == 0 || duration_ms > max_ms {
            return Err(ActionError::ShelveDuration {
                key: key.clone(),
                requested_ms: duration_ms,
                max_ms,
            });
        }
        let by = Operator::new(user, comment);
        let until = now_ms.saturating_add(duration_ms);
        self.act(key, now_ms, |s, k| s.shelve(k, until, by))
    }

    /// Ends shelving before it expires.
    pub fn unshelve(
        &mut self,
        key: &AlarmKey,
        user: &str,
        comment: &str,
        now_ms: u64,
    ) -> Result<Transition, ActionError> {
        let by = Operator::new(user, comment);
        self.act(key, now_ms, |s, k| s.unshelve(k, Some(by)))
    }

    /// Removes an alarm from service (`true`) or returns it (`false`).
    pub fn set_out_of_service(
        &mut self,
        key: &AlarmKey,
        out_of_service: bool,
        user: &str,
        comment: &str,
        now_ms: u64,
    ) -> Result<Transition, ActionError> {
        let by = Operator::new(user, comment);
        self.act(key, now_ms, |s, k| {
            s.set_out_of_service(k, out_of_service, by)
        })
    }

    /// Resets a latching alarm (see the [life cycle](super::lifecycle)).
    pub fn reset_latch(
        &mut self,
        key: &AlarmKey,
        user: &str,
        comment: &str,
        now_ms: u64,
    ) -> Result<Transition, ActionError> {
        let by = Operator::new(user, comment);
        self.act(key, now_ms, |s, k| s.reset_latch(k, by))
    }

    /// The highest annunciated level over all alarms that are not shelved or out of service.
    pub fn highest_level(&self) -> AlarmLevel {
        self.alarms()
            .filter(|(_, s)| !matches!(s.state, AlarmState::Shelved | AlarmState::OutOfService))
            .map(|(_, s)| s.level)
            .max()
            .unwrap_or(AlarmLevel::Normal)
    }
}
