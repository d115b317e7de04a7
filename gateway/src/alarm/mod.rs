//! The gateway's alarm engine: alarms evaluated at the edge, so they keep working while the
//! uplink to the platform is down.
//!
//! Sans-IO and table-driven: the caller feeds [`Record`](crate::pipeline::Record)s and the
//! time, the engine returns [`Transition`]s to publish and audit. Nothing here reads a clock,
//! sleeps or does I/O.
//!
//! | module | what |
//! |---|---|
//! | [`rule`] | threshold rules, selectors, the versioned and validated [`RuleSet`] |
//! | [`lifecycle`] | one alarm's ISA-18.2 / IEC 62682 life cycle and its [`Transition`]s |
//! | [`engine`] | [`AlarmEngine`]: per-channel state, readings, timers, operator actions |
//! | [`defaults`] | shipped rules from GB/T 50493-2019, the coal-mine rules and HJ 633 |
//! | [`event`] | a transition as published, stored and audited (JSON) |
//! | [`wire`] | threshold rules as JSON, for the API and the rules file |
//!
//! # Use
//!
//! ```
//! use tianzhong_gateway::alarm::{AlarmEngine, AqiTable, default_rules};
//! # use tianzhong_gateway::pipeline::Record;
//! # use tianzhong_protocol::{ChannelId, NodeId, Quality, Quantity, Reading, SiteId, Timestamp};
//! let mut engine = AlarmEngine::new(default_rules(AqiTable::default())).unwrap();
//! # let now = 1_764_316_800_000;
//! # let reading = Reading::new(NodeId::new("cp-gas-01").unwrap(), ChannelId(0),
//! #     Quantity::CombustibleGas, 26.0, Timestamp(now), 1, Quality::Good).unwrap();
//! # let record = Record { site: SiteId::new("plant-a").unwrap(), reading, received_ms: now,
//! #     device_time: false };
//! // In the ingestion stage, per reading:
//! for t in engine.on_reading(&record, now) {
//!     println!("{} {} -> {} ({})", t.key, t.from, t.to, t.level); // publish, audit
//! }
//! // Once a second or so:
//! for t in engine.tick(now + 1_000) { /* publish, audit */ }
//! ```
//!
//! # Decisions
//!
//! - **Identity** is `(node, channel, condition)` ([`AlarmKey`]); a threshold alarm's level
//!   moves within one identity (yellow → red is an escalation, not a new alarm), and an
//!   escalation re-requires acknowledgement.
//! - **Operator actions** apply to one alarm. Shelving is bounded by
//!   [`RuleSet::max_shelve_ms`]; ending shelving or out-of-service brings the alarm back in the
//!   state its condition justifies (active unacknowledged or normal), with latches cleared.
//! - **Latching** applies to threshold and rate-of-change alarms; stale-data and bad-quality
//!   alarms follow their condition.
//! - **Rule replacement** needs a higher version; alarms keep their state where their identity
//!   still exists (see [`AlarmEngine::replace_rules`]).
//! - A channel is known from its first reading on: a channel that never reported has no
//!   stale-data alarm (the source's node status covers devices that never answer).

pub mod defaults;
pub mod engine;
pub mod event;
pub mod lifecycle;
pub mod rule;
pub mod wire;

pub use defaults::{AqiTable, GAS_DETECTOR_GROUP, default_rules};
pub use engine::{AlarmEngine, MAX_TRANSITIONS_PER_READING, ReplaceError, Transitions};
pub use event::{AlarmEvent, AlarmEvents};
pub use lifecycle::{
    Action, ActionError, AlarmKey, AlarmState, AlarmStatus, Cause, Condition, Operator, Side,
    Transition,
};
pub use rule::{
    Direction, NodeInfo, RateOfChange, RuleError, RuleSet, Selector, SetPoints, StaleAfter,
    ThresholdRule, ValidationErrors,
};
