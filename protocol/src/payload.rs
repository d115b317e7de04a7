//! JSON payloads for devices that publish over MQTT directly.
//!
//! Every payload carries `"v": 1`, the payload version; a receiver refuses other versions with
//! [`PayloadError::UnsupportedVersion`] rather than guessing. Unknown fields are ignored so
//! that a newer device can add fields without breaking older gateways. Site and node come from
//! the [topic](crate::topic), not the payload.
//!
//! Parsing and writing use serde-json-core, which works without an allocator, so the same
//! code runs on a node and in the gateway. Examples of each payload are in the crate's
//! `README.md`.

use core::fmt;

use serde::{Deserialize, Serialize};

use crate::alarm::AlarmLevel;
use crate::convert::{ReferenceConditions, to_canonical};
use crate::id::NodeId;
use crate::quantity::Quantity;
use crate::reading::{ChannelId, Quality, Reading, Timestamp};
use crate::unit::{ConversionError, Unit};

/// The payload version this code reads and writes.
pub const PAYLOAD_VERSION: u8 = 1;

/// Most readings in one telemetry payload.
pub const MAX_TELEMETRY_READINGS: usize = 32;

/// One channel's value in a telemetry payload.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct TelemetryValue {
    /// Channel.
    pub ch: ChannelId,
    /// Quantity key, e.g. `"combustible_gas"`.
    pub q: Quantity,
    /// Value in `unit`.
    pub value: f64,
    /// Unit of `value`; the quantity's canonical unit when absent. The receiver converts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<Unit>,
    /// HJ 212 flag; `"N"` (good) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<Quality>,
}

/// Readings a node publishes on `…/telemetry`: one sample of several channels.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Telemetry {
    /// Payload version, [`PAYLOAD_VERSION`].
    pub v: u8,
    /// The node's sample sequence number.
    pub seq: u32,
    /// Sample time in ms since the Unix epoch; absent when the node has no clock, in which
    /// case the receiver stamps its own time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts: Option<u64>,
    /// The values.
    pub readings: heapless::Vec<TelemetryValue, MAX_TELEMETRY_READINGS>,
}

/// A node's status on `…/status`, published retained on connect; the last will is the same
/// payload with `"online": false`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Payload version.
    pub v: u8,
    /// Whether the node is connected.
    pub online: bool,
    /// Time of the status, ms since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts: Option<u64>,
    /// Firmware version, e.g. `"1.4.2"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fw: Option<heapless::String<16>>,
    /// Seconds since boot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uptime_s: Option<u32>,
    /// Highest local alarm level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alarm: Option<AlarmLevel>,
}

/// A local alarm change the node reports on `…/alarm`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AlarmEvent {
    /// Payload version.
    pub v: u8,
    /// Channel.
    pub ch: ChannelId,
    /// Quantity.
    pub q: Quantity,
    /// New local alarm level (`"normal"` when it clears).
    pub level: AlarmLevel,
    /// The value that caused the change, canonical unit.
    pub value: f64,
    /// Time of the change, ms since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts: Option<u64>,
    /// The node's sample sequence number.
    pub seq: u32,
}

/// What a command asks of a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandKind {
    /// Publish status and a fresh sample now.
    Report,
    /// Reset latched alarm outputs.
    ResetLatches,
    /// Reboot.
    Reboot,
    /// Set a channel's sampling interval to `value` seconds.
    SetSampleInterval,
}

/// A command from the gateway on `…/cmd`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeCommand {
    /// Payload version.
    pub v: u8,
    /// Command id, echoed by the node in its acknowledgement.
    pub id: u32,
    /// The command.
    pub cmd: CommandKind,
    /// Channel, for channel commands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ch: Option<ChannelId>,
    /// Argument, for commands that take one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
}

/// Why a payload was refused.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PayloadError {
    /// Not valid JSON for this payload (missing field, wrong type, unknown quantity, …).
    Json(serde_json_core::de::Error),
    /// A `"v"` other than [`PAYLOAD_VERSION`].
    UnsupportedVersion(u8),
    /// A value that cannot be converted to the quantity's canonical unit.
    Conversion {
        /// Index of the reading.
        index: usize,
        /// The conversion error.
        error: ConversionError,
    },
    /// A value that is not finite.
    NotFinite {
        /// Index of the reading.
        index: usize,
    },
    /// The output buffer is too small.
    BufferTooSmall,
}

impl fmt::Display for PayloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PayloadError::Json(e) => write!(f, "invalid JSON payload: {e}"),
            PayloadError::UnsupportedVersion(v) => write!(
                f,
                "payload version {v} is not supported (this build reads {PAYLOAD_VERSION})"
            ),
            PayloadError::Conversion { index, error } => write!(f, "reading {index}: {error}"),
            PayloadError::NotFinite { index } => write!(f, "reading {index}: value is not finite"),
            PayloadError::BufferTooSmall => f.write_str("output buffer too small"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for PayloadError {}

/// Parses a whole JSON payload (serde-json-core refuses bytes after the value, except
/// whitespace).
fn parse<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, PayloadError> {
    serde_json_core::from_slice::<T>(bytes)
        .map(|(value, _)| value)
        .map_err(PayloadError::Json)
}

fn write<T: Serialize>(value: &T, out: &mut [u8]) -> Result<usize, PayloadError> {
    serde_json_core::to_slice(value, out).map_err(|_| PayloadError::BufferTooSmall)
}

fn check_version(v: u8) -> Result<(), PayloadError> {
    if v == PAYLOAD_VERSION {
        Ok(())
    } else {
        Err(PayloadError::UnsupportedVersion(v))
    }
}

macro_rules! json_payload {
    ($($ty:ident),*) => {$(
        impl $ty {
            /// Parses and checks the version.
            pub fn from_json(bytes: &[u8]) -> Result<$ty, PayloadError> {
                let p: $ty = parse(bytes)?;
                check_version(p.v)?;
                p.check()?;
                Ok(p)
            }

            /// Writes JSON into `out`; returns the bytes written.
            pub fn to_json(&self, out: &mut [u8]) -> Result<usize, PayloadError> {
                self.check()?;
                write(self, out)
            }
        }
    )*};
}

json_payload!(Telemetry, NodeStatus, AlarmEvent, NodeCommand);

impl Telemetry {
    fn check(&self) -> Result<(), PayloadError> {
        match self.readings.iter().position(|r| !r.value.is_finite()) {
            Some(index) => Err(PayloadError::NotFinite { index }),
            None => Ok(()),
        }
    }

    /// The payload's readings, normalised to canonical units and range-checked.
    ///
    /// `received` stamps readings of a node without a clock. A reading whose unit does not
    /// convert yields its error without stopping the others.
    pub fn readings<'a>(
        &'a self,
        node: &'a NodeId,
        received: Timestamp,
        conditions: &'a ReferenceConditions,
    ) -> impl Iterator<Item = Result<Reading, PayloadError>> + 'a {
        let timestamp = self.ts.map(Timestamp).unwrap_or(received);
        self.readings.iter().enumerate().map(move |(index, r)| {
            let unit = r.unit.unwrap_or(r.q.canonical_unit());
            let value = to_canonical(r.q, r.value, unit, conditions)
                .map_err(|error| PayloadError::Conversion { index, error })?;
            let quality =
                Reading::range_checked_quality(r.q, value, r.quality.unwrap_or(Quality::Good));
            Ok(Reading {
                node: node.clone(),
                channel: r.ch,
                quantity: r.q,
                value,
                timestamp,
                seq: self.seq,
                quality,
            })
        })
    }
}

impl NodeStatus {
    fn check(&self) -> Result<(), PayloadError> {
        Ok(())
    }

    /// The last will a node registers on connect: `{"v":1,"online":false}`.
    pub fn last_will() -> NodeStatus {
        NodeStatus {
            v: PAYLOAD_VERSION,
            online: false,
            ts: None,
            fw: None,
            uptime_s: None,
            alarm: None,
        }
    }
}

impl AlarmEvent {
    fn check(&self) -> Result<(), PayloadError> {
        if self.value.is_finite() {
            Ok(())
        } else {
            Err(PayloadError::NotFinite { index: 0 })
        }
    }
}

impl NodeCommand {
    fn check(&self) -> Result<(), PayloadError> {
        match self.value {
            Some(v) if !v.is_finite() => Err(PayloadError::NotFinite { index: 0 }),
            _ => Ok(()),
        }
    }
}
