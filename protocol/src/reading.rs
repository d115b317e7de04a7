//! Readings and their quality.
//!
//! A [`Reading`] is one value of one channel of one node at one time, in the canonical unit of
//! its [`Quantity`], with a [`Quality`] and the node's sequence number.
//!
//! [`Quality`] maps one-to-one onto the data flags of HJ 212-2017, so a reading can travel to
//! an environmental platform and back without losing what was known about it:
//!
//! | quality | level | HJ 212 flag | meaning |
//! |---|---|---|---|
//! | [`Quality::Good`] | good | `N` | normal |
//! | [`UncertainReason::OutOfRange`] | uncertain | `T` | over the measuring range (the true value is at least this) |
//! | [`UncertainReason::ManuallySet`] | uncertain | `S` | set by hand |
//! | [`UncertainReason::Maintenance`] | uncertain | `M` | the instrument is under maintenance |
//! | [`BadReason::Calibrating`] | bad | `C` | calibration in progress: the sensor sees span gas, not the site |
//! | [`BadReason::SensorFault`] | bad | `D` | instrument fault |
//! | [`BadReason::CommunicationFailure`] | bad | `B` | the value could not be fetched |
//! | [`BadReason::Stopped`] | bad | `F` | the channel or the monitored process is stopped |
//!
//! Uncertain values are still evaluated against alarm thresholds — an over-range gas reading
//! is the most urgent reading there is — while bad values raise a fault alarm instead.

use core::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::id::NodeId;
use crate::quantity::Quantity;

/// Milliseconds since the Unix epoch, UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// Milliseconds since the Unix epoch.
    pub const fn millis(self) -> u64 {
        self.0
    }
}

/// The index of a channel on its node (0-based, as in the node profile's channel block).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ChannelId(pub u16);

impl fmt::Display for ChannelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ch{}", self.0)
    }
}

/// Broad quality class of a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum QualityLevel {
    /// Measured normally.
    Good,
    /// A value, but one to use with care.
    Uncertain,
    /// Not a measurement of the site; must not be used as one.
    Bad,
}

/// Why a value is uncertain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UncertainReason {
    /// Outside the quantity's valid range or the instrument's measuring range (HJ 212 `T`).
    OutOfRange,
    /// Entered or overridden by hand (HJ 212 `S`).
    ManuallySet,
    /// The instrument is under maintenance (HJ 212 `M`).
    Maintenance,
}

/// Why a value is bad.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BadReason {
    /// The sensor reports or shows a fault (HJ 212 `D`).
    SensorFault,
    /// Calibration in progress (HJ 212 `C`).
    Calibrating,
    /// The value could not be fetched from the device (HJ 212 `B`).
    CommunicationFailure,
    /// The channel, or the process it monitors, is stopped (HJ 212 `F`).
    Stopped,
}

/// Quality of a reading. See the [module documentation](self) for the HJ 212 mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Quality {
    /// Measured normally.
    #[default]
    Good,
    /// A value to use with care.
    Uncertain(UncertainReason),
    /// Not a valid measurement.
    Bad(BadReason),
}

/// All eight qualities, in HJ 212 flag order `N F M S D C T B`.
pub const ALL_QUALITIES: [Quality; 8] = [
    Quality::Good,
    Quality::Bad(BadReason::Stopped),
    Quality::Uncertain(UncertainReason::Maintenance),
    Quality::Uncertain(UncertainReason::ManuallySet),
    Quality::Bad(BadReason::SensorFault),
    Quality::Bad(BadReason::Calibrating),
    Quality::Uncertain(UncertainReason::OutOfRange),
    Quality::Bad(BadReason::CommunicationFailure),
];

/// A character that is not one of HJ 212's data flags `N F M S D C T B`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownFlag(pub char);

impl fmt::Display for UnknownFlag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} is not an HJ 212 data flag (one of N F M S D C T B)",
            self.0
        )
    }
}

#[cfg(feature = "std")]
impl std::error::Error for UnknownFlag {}

impl Quality {
    /// Good, uncertain or bad.
    pub const fn level(self) -> QualityLevel {
        match self {
            Quality::Good => QualityLevel::Good,
            Quality::Uncertain(_) => QualityLevel::Uncertain,
            Quality::Bad(_) => QualityLevel::Bad,
        }
    }

    /// The HJ 212-2017 data flag.
    pub const fn hj212_flag(self) -> char {
        match self {
            Quality::Good => 'N',
            Quality::Bad(BadReason::Stopped) => 'F',
            Quality::Uncertain(UncertainReason::Maintenance) => 'M',
            Quality::Uncertain(UncertainReason::ManuallySet) => 'S',
            Quality::Bad(BadReason::SensorFault) => 'D',
            Quality::Bad(BadReason::Calibrating) => 'C',
            Quality::Uncertain(UncertainReason::OutOfRange) => 'T',
            Quality::Bad(BadReason::CommunicationFailure) => 'B',
        }
    }

    /// The quality an HJ 212-2017 data flag stands for. Flags are upper case in the standard;
    /// lower case is accepted because some data loggers send it.
    pub fn from_hj212_flag(flag: char) -> Result<Quality, UnknownFlag> {
        ALL_QUALITIES
            .iter()
            .copied()
            .find(|q| q.hj212_flag() == flag.to_ascii_uppercase())
            .ok_or(UnknownFlag(flag))
    }

    /// Register encoding in the node profile: the flag's ASCII code (`N` = 0x004E), so a raw
    /// register dump stays readable.
    pub const fn register_code(self) -> u16 {
        self.hj212_flag() as u16
    }

    /// Inverse of [`Quality::register_code`].
    pub fn from_register_code(code: u16) -> Result<Quality, UnknownFlag> {
        let c = u8::try_from(code)
            .map(char::from)
            .unwrap_or(char::REPLACEMENT_CHARACTER);
        Quality::from_hj212_flag(c)
    }

    /// Short English description.
    pub const fn description(self) -> &'static str {
        match self {
            Quality::Good => "good",
            Quality::Uncertain(UncertainReason::OutOfRange) => "uncertain: out of range",
            Quality::Uncertain(UncertainReason::ManuallySet) => "uncertain: manually set",
            Quality::Uncertain(UncertainReason::Maintenance) => "uncertain: maintenance",
            Quality::Bad(BadReason::SensorFault) => "bad: sensor fault",
            Quality::Bad(BadReason::Calibrating) => "bad: calibrating",
            Quality::Bad(BadReason::CommunicationFailure) => "bad: communication failure",
            Quality::Bad(BadReason::Stopped) => "bad: stopped",
        }
    }
}

impl fmt::Display for Quality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.description())
    }
}

// Serialised as the one-letter HJ 212 flag, in JSON ("N") and in binary frames alike.
impl Serialize for Quality {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut buf = [0u8; 4];
        serializer.serialize_str(self.hj212_flag().encode_utf8(&mut buf))
    }
}

impl<'de> Deserialize<'de> for Quality {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FlagVisitor;
        impl Visitor<'_> for FlagVisitor {
            type Value = Quality;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an HJ 212 data flag: one of N F M S D C T B")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Quality, E> {
                let mut chars = v.chars();
                match (chars.next(), chars.next()) {
                    (Some(c), None) => Quality::from_hj212_flag(c).map_err(E::custom),
                    _ => Err(E::invalid_value(de::Unexpected::Str(v), &self)),
                }
            }
            fn visit_char<E: de::Error>(self, v: char) -> Result<Quality, E> {
                Quality::from_hj212_flag(v).map_err(E::custom)
            }
        }
        deserializer.deserialize_str(FlagVisitor)
    }
}

/// A value that is not a finite number; readings never carry NaN or infinities.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotFinite;

impl fmt::Display for NotFinite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("reading value is NaN or infinite")
    }
}

#[cfg(feature = "std")]
impl std::error::Error for NotFinite {}

/// One value of one channel of one node at one time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    /// The node that measured it.
    pub node: NodeId,
    /// The channel on that node.
    pub channel: ChannelId,
    /// What was measured.
    pub quantity: Quantity,
    /// The value, in the quantity's canonical unit. Always finite.
    pub value: f64,
    /// When it was measured.
    pub timestamp: Timestamp,
    /// The node's sequence number for the sample it belongs to; all channels sampled together
    /// share one. `(node, channel, seq)` identifies a reading for de-duplication.
    pub seq: u32,
    /// How far the value can be trusted.
    pub quality: Quality,
}

impl Reading {
    /// Builds a reading, refusing a value that is not finite.
    pub fn new(
        node: NodeId,
        channel: ChannelId,
        quantity: Quantity,
        value: f64,
        timestamp: Timestamp,
        seq: u32,
        quality: Quality,
    ) -> Result<Reading, NotFinite> {
        if !value.is_finite() {
            return Err(NotFinite);
        }
        Ok(Reading {
            node,
            channel,
            quantity,
            value,
            timestamp,
            seq,
            quality,
        })
    }

    /// The quality this reading should carry given its value: an out-of-range value downgrades
    /// `Good` to `Uncertain(OutOfRange)`; a worse quality already set is kept.
    pub fn range_checked_quality(quantity: Quantity, value: f64, quality: Quality) -> Quality {
        if quality == Quality::Good && !quantity.in_range(value) {
            Quality::Uncertain(UncertainReason::OutOfRange)
        } else {
            quality
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hj212_flags_map_one_to_one() {
        let flags: heapless::Vec<char, 8> = ALL_QUALITIES.iter().map(|q| q.hj212_flag()).collect();
        assert_eq!(flags.as_slice(), &['N', 'F', 'M', 'S', 'D', 'C', 'T', 'B']);
        for q in ALL_QUALITIES {
            assert_eq!(Quality::from_hj212_flag(q.hj212_flag()), Ok(q));
            assert_eq!(Quality::from_register_code(q.register_code()), Ok(q));
        }
        assert_eq!(
            Quality::from_hj212_flag('t'),
            Ok(Quality::Uncertain(UncertainReason::OutOfRange))
        );
        assert_eq!(Quality::from_hj212_flag('X'), Err(UnknownFlag('X')));
        assert!(Quality::from_register_code(0x014E).is_err());
    }

    #[test]
    fn levels_are_ordered() {
        assert!(QualityLevel::Good < QualityLevel::Uncertain);
        assert!(QualityLevel::Uncertain < QualityLevel::Bad);
        assert_eq!(
            Quality::Bad(BadReason::Calibrating).level(),
            QualityLevel::Bad
        );
    }
}
