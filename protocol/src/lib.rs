//! The shared vocabulary of Tianzhong: what node firmware, the simulator and the gateway all
//! say to each other. `no_std`, no allocator.
//!
//! # Module map
//!
//! | module | what it defines |
//! |---|---|
//! | [`quantity`] | the quantities the network measures: canonical unit, valid range, resolution, HJ 212 code |
//! | [`unit`](mod@unit) | units of measure and the linear conversions between them |
//! | [`convert`] | conversions that need more than two units: ppm ↔ mg/m³, 4–20 mA loops (NAMUR NE 43), to canonical |
//! | [`id`] | node and site ids, safe as topic levels and tag values |
//! | [`reading`] | [`Reading`], [`Quality`] and its one-to-one mapping onto HJ 212 data flags |
//! | [`alarm`] | [`AlarmLevel`]: normal and the four warning levels, IV blue to I red |
//! | [`registers`] | Modbus register maps, raw-register decoding, and the [Tianzhong node profile](registers::profile) |
//! | [`crc`] | CRC-16/MODBUS and the uplink frame's CRC-32C |
//! | [`frame`] | the versioned binary uplink frame (postcard + CRC + COBS) |
//! | [`topic`] | the versioned MQTT topic scheme `tianzhong/v1/{site}/{node}/{kind}` |
//! | [`payload`] | the JSON payloads of those topics |
//! | [`image`] | signed firmware images: header, TLV trailer, SHA-256 and ed25519 checks |
//! | [`update`] | firmware-update messages over MQTT: offer, chunk, finish, status, confirm, and the node's report |
//!
//! # Features
//!
//! - `std`: `std::error::Error` for every error type.
#![no_std]
#![warn(missing_docs)]

#[cfg(any(test, feature = "std"))]
extern crate std;

pub mod alarm;
pub mod convert;
pub mod crc;
pub mod frame;
pub mod id;
pub mod image;
pub mod payload;
pub mod quantity;
pub mod reading;
pub mod registers;
pub mod topic;
pub mod unit;
pub mod update;

pub use alarm::AlarmLevel;
pub use id::{NodeId, SiteId};
pub use quantity::Quantity;
pub use reading::{
    BadReason, ChannelId, Quality, QualityLevel, Reading, Timestamp, UncertainReason,
};
pub use unit::Unit;
