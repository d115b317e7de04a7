//! Register maps: how a device exposes its channels as Modbus registers, and the one place
//! where raw registers become [`Reading`]s.
//!
//! A [`RegisterMap`] is data, not code: it is loaded from the gateway's configuration for
//! third-party devices, and built by [`profile`] for Tianzhong nodes. Each [`ChannelMap`] says
//! which table and address hold a channel, how the registers encode the number
//! ([`DataType`], [`WordOrder`], scale and offset) and what quantity and unit it is.
//!
//! Decoding goes raw registers → raw number ([`decode_raw`]) → `raw × scale + offset` in the
//! device's unit → the quantity's canonical unit ([`to_canonical`]) → a
//! range-checked [`Reading`].

pub mod profile;

use core::fmt;

use serde::{Deserialize, Serialize};

use crate::convert::{ReferenceConditions, to_canonical};
use crate::id::NodeId;
use crate::quantity::Quantity;
use crate::reading::{ChannelId, Quality, Reading, Timestamp, UnknownFlag};
use crate::unit::{ConversionError, Unit};

/// Most registers one FC03/FC04 request may read (Modbus application protocol 6.3/6.4).
pub const MAX_READ_REGISTERS: u16 = 125;

/// Most channels one register map describes.
pub const MAX_MAP_CHANNELS: usize = 64;

/// The Modbus table a register lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegisterTable {
    /// Input registers, read with function code 04.
    Input,
    /// Holding registers, read with function code 03.
    Holding,
}

impl RegisterTable {
    /// The Modbus function code that reads this table.
    pub const fn read_function_code(self) -> u8 {
        match self {
            RegisterTable::Input => 0x04,
            RegisterTable::Holding => 0x03,
        }
    }
}

/// How a number is stored in registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataType {
    /// Unsigned 16-bit integer, one register.
    U16,
    /// Signed (two's complement) 16-bit integer, one register.
    I16,
    /// Unsigned 32-bit integer, two registers.
    U32,
    /// Signed 32-bit integer, two registers.
    I32,
    /// IEEE 754 single-precision float, two registers.
    F32,
}

impl DataType {
    /// How many 16-bit registers a value of this type occupies.
    pub const fn registers(self) -> u16 {
        match self {
            DataType::U16 | DataType::I16 => 1,
            DataType::U32 | DataType::I32 | DataType::F32 => 2,
        }
    }
}

/// Order of the bytes of a value across its registers, naming the most significant byte `A`
/// and the least significant `D`, as the bytes appear on the wire.
///
/// | order | registers of 0x42F6E979 (f32 123.456) | devices |
/// |---|---|---|
/// | `ABCD` | `42F6 E979` | big-endian: the Modbus default |
/// | `CDAB` | `E979 42F6` | word-swapped: many PLCs and meters |
/// | `BADC` | `F642 79E9` | byte-swapped within each word |
/// | `DCBA` | `79E9 F642` | little-endian |
///
/// For a one-register value only the byte order within the register matters: `ABCD` and
/// `CDAB` read it big-endian, `BADC` and `DCBA` byte-swapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum WordOrder {
    /// Big-endian.
    #[default]
    ABCD,
    /// Words swapped.
    CDAB,
    /// Bytes swapped within each word.
    BADC,
    /// Little-endian.
    DCBA,
}

/// Why registers could not be decoded into a reading.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum DecodeError {
    /// The slice holds a different number of registers than the data type needs.
    WrongLength {
        /// Registers the data type needs.
        expected: u16,
        /// Registers given.
        got: usize,
    },
    /// A float register pair holds NaN or an infinity (many devices signal a fault this way).
    NotFinite,
    /// The decoded value could not be brought to the quantity's canonical unit.
    Conversion(ConversionError),
    /// The channel's quality register holds something that is not an HJ 212 flag.
    Quality(UnknownFlag),
    /// The channel's registers are not all inside the block that was read.
    OutsideBlock {
        /// First register the channel needs.
        address: u16,
        /// Registers it needs from there.
        count: u16,
    },
    /// A value could not be encoded: it does not fit the data type after scale and offset.
    DoesNotFit,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::WrongLength { expected, got } => {
                write!(f, "data type needs {expected} register(s), got {got}")
            }
            DecodeError::NotFinite => f.write_str("register value is NaN or infinite"),
            DecodeError::Conversion(e) => write!(f, "unit conversion failed: {e}"),
            DecodeError::Quality(e) => write!(f, "quality register: {e}"),
            DecodeError::OutsideBlock { address, count } => write!(
                f,
                "registers {address}..{} are not all in the block read",
                u32::from(*address) + u32::from(*count)
            ),
            DecodeError::DoesNotFit => f.write_str("value does not fit the register data type"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for DecodeError {}

impl From<ConversionError> for DecodeError {
    fn from(e: ConversionError) -> Self {
        DecodeError::Conversion(e)
    }
}

/// Puts the wire bytes of `regs` (each register big-endian, as transmitted) in `ABCD` order.
fn to_abcd(regs: &[u16], order: WordOrder) -> [u8; 4] {
    let mut wire = [0u8; 4];
    for (i, r) in regs.iter().enumerate() {
        wire[2 * i..2 * i + 2].copy_from_slice(&r.to_be_bytes());
    }
    if regs.len() == 1 {
        return match order {
            WordOrder::ABCD | WordOrder::CDAB => [wire[0], wire[1], 0, 0],
            WordOrder::BADC | WordOrder::DCBA => [wire[1], wire[0], 0, 0],
        };
    }
    let [w0, w1, w2, w3] = wire;
    match order {
        WordOrder::ABCD => [w0, w1, w2, w3],
        WordOrder::CDAB => [w2, w3, w0, w1],
        WordOrder::BADC => [w1, w0, w3, w2],
        WordOrder::DCBA => [w3, w2, w1, w0],
    }
}

/// Inverse of [`to_abcd`]: lays `ABCD` bytes out as registers in `order`.
fn from_abcd(abcd: [u8; 4], registers: u16, order: WordOrder, out: &mut [u16]) {
    let [a, b, c, d] = abcd;
    if registers == 1 {
        out[0] = match order {
            WordOrder::ABCD | WordOrder::CDAB => u16::from_be_bytes([a, b]),
            WordOrder::BADC | WordOrder::DCBA => u16::from_be_bytes([b, a]),
        };
        return;
    }
    let wire = match order {
        WordOrder::ABCD => [a, b, c, d],
        WordOrder::CDAB => [c, d, a, b],
        WordOrder::BADC => [b, a, d, c],
        WordOrder::DCBA => [d, c, b, a],
    };
    out[0] = u16::from_be_bytes([wire[0], wire[1]]);
    out[1] = u16::from_be_bytes([wire[2], wire[3]]);
}

/// Decodes the raw number held by `regs` (exactly [`DataType::registers`] of them).
pub fn decode_raw(data_type: DataType, order: WordOrder, regs: &[u16]) -> Result<f64, DecodeError> {
    let expected = data_type.registers();
    if regs.len() != usize::from(expected) {
        return Err(DecodeError::WrongLength {
            expected,
            got: regs.len(),
        });
    }
    let [a, b, c, d] = to_abcd(regs, order);
    let value = match data_type {
        DataType::U16 => f64::from(u16::from_be_bytes([a, b])),
        DataType::I16 => f64::from(i16::from_be_bytes([a, b])),
        DataType::U32 => f64::from(u32::from_be_bytes([a, b, c, d])),
        DataType::I32 => f64::from(i32::from_be_bytes([a, b, c, d])),
        DataType::F32 => {
            let v = f32::from_be_bytes([a, b, c, d]);
            if !v.is_finite() {
                return Err(DecodeError::NotFinite);
            }
            widen_f32(v)
        }
    };
    Ok(value)
}

/// Widens an f32 to the f64 nearest the decimal the device meant: the f32 nearest 3.1 is
/// 3.0999999046…, and `f64::from` would carry that error into every sink and alarm message.
/// The shortest decimal that round-trips the f32 (ryu) is the value the device meant.
pub fn widen_f32(v: f32) -> f64 {
    let mut buf = ryu::Buffer::new();
    buf.format_finite(v).parse().unwrap_or(f64::from(v))
}

/// `raw × scale`, correctly rounded for the decimal scales devices use (0.1, 0.01, …):
/// dividing by 10 rounds once, multiplying by the inexact 0.1 does not (123 × 0.1 =
/// 12.300000000000001, 123 / 10 = 12.3).
fn apply_scale(raw: f64, scale: f64) -> f64 {
    let inverse = 1.0 / scale;
    let rounded = round_half_away(inverse);
    if scale.abs() < 1.0 && (inverse - rounded).abs() < 1e-9 * rounded.abs() {
        raw / rounded
    } else {
        raw * scale
    }
}

/// Encodes a raw number into registers (the inverse of [`decode_raw`]); integers are rounded
/// to nearest. Used by node firmware and the simulator to fill their register images.
pub fn encode_raw(
    data_type: DataType,
    order: WordOrder,
    raw: f64,
    out: &mut [u16],
) -> Result<(), DecodeError> {
    let n = data_type.registers();
    if out.len() != usize::from(n) {
        return Err(DecodeError::WrongLength {
            expected: n,
            got: out.len(),
        });
    }
    if !raw.is_finite() {
        return Err(DecodeError::NotFinite);
    }
    let r = round_half_away(raw);
    let fits = |lo: f64, hi: f64| {
        if (lo..=hi).contains(&r) {
            Ok(())
        } else {
            Err(DecodeError::DoesNotFit)
        }
    };
    // The casts below are exact: each is guarded by a range check of the rounded value.
    let abcd = match data_type {
        DataType::U16 => {
            fits(0.0, f64::from(u16::MAX))?;
            let [a, b] = (r as u16).to_be_bytes();
            [a, b, 0, 0]
        }
        DataType::I16 => {
            fits(f64::from(i16::MIN), f64::from(i16::MAX))?;
            let [a, b] = (r as i16).to_be_bytes();
            [a, b, 0, 0]
        }
        DataType::U32 => {
            fits(0.0, f64::from(u32::MAX))?;
            (r as u32).to_be_bytes()
        }
        DataType::I32 => {
            fits(f64::from(i32::MIN), f64::from(i32::MAX))?;
            (r as i32).to_be_bytes()
        }
        DataType::F32 => {
            let v = raw as f32;
            if !v.is_finite() {
                return Err(DecodeError::DoesNotFit);
            }
            v.to_be_bytes()
        }
    };
    from_abcd(abcd, n, order, out);
    Ok(())
}

// `f64::round` lives in std; this is the same rounding (half away from zero) for no_std.
fn round_half_away(x: f64) -> f64 {
    if x.abs() >= 4.5e15 {
        return x; // every f64 of this magnitude is already an integer
    }
    let t = x as i64 as f64; // truncation toward zero, exact below 2^53
    let frac = x - t;
    if frac >= 0.5 {
        t + 1.0
    } else if frac <= -0.5 {
        t - 1.0
    } else {
        t
    }
}

fn one() -> f64 {
    1.0
}

fn is_one(v: &f64) -> bool {
    *v == 1.0
}

fn is_zero(v: &f64) -> bool {
    *v == 0.0
}

/// Where and how one channel of a device lives in its registers.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChannelMap {
    /// The channel this describes.
    pub channel: ChannelId,
    /// What it measures.
    pub quantity: Quantity,
    /// The unit the device reports in, after scale and offset. Defaults to the quantity's
    /// canonical unit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<Unit>,
    /// Input or holding registers.
    pub table: RegisterTable,
    /// Protocol address (0-based) of the first register.
    pub address: u16,
    /// How the number is stored.
    pub data_type: DataType,
    /// Byte order across registers.
    #[serde(default)]
    pub word_order: WordOrder,
    /// Multiplier applied to the raw number: `value = raw × scale + offset`.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub scale: f64,
    /// Added after scaling.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub offset: f64,
    /// Address (same table) of a register holding the channel's quality as an HJ 212 flag
    /// character code, as the Tianzhong node profile provides. Without one, quality comes
    /// from the range check alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality_address: Option<u16>,
}

impl ChannelMap {
    /// A map entry for `quantity` in its canonical unit, big-endian, unscaled.
    pub const fn new(
        channel: ChannelId,
        quantity: Quantity,
        table: RegisterTable,
        address: u16,
        data_type: DataType,
    ) -> ChannelMap {
        ChannelMap {
            channel,
            quantity,
            unit: None,
            table,
            address,
            data_type,
            word_order: WordOrder::ABCD,
            scale: 1.0,
            offset: 0.0,
            quality_address: None,
        }
    }

    /// The device unit (the canonical one when the map names none).
    pub fn unit(&self) -> Unit {
        self.unit.unwrap_or(self.quantity.canonical_unit())
    }

    /// The registers this channel needs, as `(first address, count)`, including its quality
    /// register.
    pub fn span(&self) -> (u16, u16) {
        let start = self.address;
        let end = u32::from(self.address) + u32::from(self.data_type.registers());
        match self.quality_address {
            Some(q) => {
                let lo = start.min(q);
                let hi = end.max(u32::from(q) + 1);
                (lo, (hi - u32::from(lo)) as u16)
            }
            None => (start, (end - u32::from(start)) as u16),
        }
    }

    /// Decodes this channel's value, in the quantity's canonical unit, from exactly its value
    /// registers.
    pub fn decode_value(
        &self,
        regs: &[u16],
        conditions: &ReferenceConditions,
    ) -> Result<f64, DecodeError> {
        let raw = decode_raw(self.data_type, self.word_order, regs)?;
        let value = apply_scale(raw, self.scale) + self.offset;
        Ok(to_canonical(self.quantity, value, self.unit(), conditions)?)
    }

    /// Decodes this channel from a block of registers read from `table` starting at `start`.
    ///
    /// The reading's quality is the device's (when the map has a quality register) downgraded
    /// to out-of-range when the value lies outside the quantity's valid range.
    pub fn decode_from_block(
        &self,
        start: u16,
        block: &[u16],
        context: &DecodeContext<'_>,
    ) -> Result<Reading, DecodeError> {
        let slice = |address: u16, count: u16| -> Result<&[u16], DecodeError> {
            let offset = usize::from(address.wrapping_sub(start));
            if address < start || offset + usize::from(count) > block.len() {
                return Err(DecodeError::OutsideBlock { address, count });
            }
            Ok(&block[offset..offset + usize::from(count)])
        };
        let regs = slice(self.address, self.data_type.registers())?;
        let value = self.decode_value(regs, context.conditions)?;
        let device_quality = match self.quality_address {
            Some(q) => {
                Quality::from_register_code(slice(q, 1)?[0]).map_err(DecodeError::Quality)?
            }
            None => Quality::Good,
        };
        let quality = Reading::range_checked_quality(self.quantity, value, device_quality);
        Ok(Reading {
            node: context.node.clone(),
            channel: self.channel,
            quantity: self.quantity,
            value,
            timestamp: context.timestamp,
            seq: context.seq,
            quality,
        })
    }

    /// Writes `value` (in the quantity's canonical unit) into `out` as this channel's device
    /// would: canonical unit → device unit → `(value − offset) / scale` → registers.
    pub fn encode_value(
        &self,
        value: f64,
        conditions: &ReferenceConditions,
        out: &mut [u16],
    ) -> Result<(), DecodeError> {
        let device = crate::convert::from_canonical(self.quantity, value, self.unit(), conditions)?;
        if self.scale == 0.0 {
            return Err(DecodeError::Conversion(ConversionError::InvalidParameter(
                "scale is zero",
            )));
        }
        encode_raw(
            self.data_type,
            self.word_order,
            (device - self.offset) / self.scale,
            out,
        )
    }
}

/// What a decoded reading needs besides its registers.
#[derive(Clone, Copy, Debug)]
pub struct DecodeContext<'a> {
    /// The node the registers were read from.
    pub node: &'a NodeId,
    /// When they were read (or the device's own sample time).
    pub timestamp: Timestamp,
    /// The sample's sequence number.
    pub seq: u32,
    /// Reference conditions for ppm ↔ mg/m³.
    pub conditions: &'a ReferenceConditions,
}

/// The channels of one device.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RegisterMap {
    /// The channels, in any order.
    pub channels: heapless::Vec<ChannelMap, MAX_MAP_CHANNELS>,
}

/// A map that is not internally consistent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    /// Two entries describe the same channel.
    DuplicateChannel(ChannelId),
    /// Two channels' value registers overlap.
    Overlap(ChannelId, ChannelId),
    /// A channel's registers run past address 65535.
    PastEnd(ChannelId),
    /// More than [`MAX_MAP_CHANNELS`] channels.
    TooManyChannels,
    /// A scale of zero or a non-finite scale or offset.
    BadScale(ChannelId),
    /// The device unit cannot be converted to the quantity's canonical unit.
    IncompatibleUnit(ChannelId),
}

impl fmt::Display for MapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MapError::DuplicateChannel(c) => write!(f, "channel {c} is mapped twice"),
            MapError::Overlap(a, b) => write!(f, "registers of {a} and {b} overlap"),
            MapError::PastEnd(c) => write!(f, "registers of {c} run past address 65535"),
            MapError::TooManyChannels => write!(f, "more than {MAX_MAP_CHANNELS} channels"),
            MapError::BadScale(c) => {
                write!(f, "{c}: scale must be non-zero and finite, offset finite")
            }
            MapError::IncompatibleUnit(c) => {
                write!(
                    f,
                    "{c}: unit cannot be converted to the quantity's canonical unit"
                )
            }
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for MapError {}

impl RegisterMap {
    /// Builds a map from entries, checking it.
    pub fn from_channels(channels: &[ChannelMap]) -> Result<RegisterMap, MapError> {
        let channels =
            heapless::Vec::from_slice(channels).map_err(|_| MapError::TooManyChannels)?;
        let map = RegisterMap { channels };
        map.validate()?;
        Ok(map)
    }

    /// Checks that channels are unique, their registers do not overlap or run past the end of
    /// the address space, scales are usable and units convertible.
    pub fn validate(&self) -> Result<(), MapError> {
        let conditions = ReferenceConditions::default();
        for (i, a) in self.channels.iter().enumerate() {
            let end = u32::from(a.address) + u32::from(a.data_type.registers());
            if end > 0x1_0000 {
                return Err(MapError::PastEnd(a.channel));
            }
            if a.scale == 0.0 || !a.scale.is_finite() || !a.offset.is_finite() {
                return Err(MapError::BadScale(a.channel));
            }
            let probe = a.quantity.spec().max;
            if let Err(ConversionError::IncompatibleUnits { .. } | ConversionError::NoMolarMass) =
                to_canonical(a.quantity, probe, a.unit(), &conditions)
            {
                return Err(MapError::IncompatibleUnit(a.channel));
            }
            for b in &self.channels[i + 1..] {
                if a.channel == b.channel {
                    return Err(MapError::DuplicateChannel(a.channel));
                }
                let b_end = u32::from(b.address) + u32::from(b.data_type.registers());
                if a.table == b.table && u32::from(a.address) < b_end && u32::from(b.address) < end
                {
                    return Err(MapError::Overlap(a.channel, b.channel));
                }
            }
        }
        Ok(())
    }

    /// Decodes every channel of `table` whose registers lie wholly inside the block read from
    /// `start`. Channels outside the block are skipped; a channel that fails to decode yields
    /// its error and does not stop the others.
    pub fn decode_block<'a>(
        &'a self,
        table: RegisterTable,
        start: u16,
        block: &'a [u16],
        context: DecodeContext<'a>,
    ) -> impl Iterator<Item = (ChannelId, Result<Reading, DecodeError>)> + 'a {
        let end = u32::from(start) + block.len() as u32;
        self.channels
            .iter()
            .filter(move |c| {
                let (lo, n) = c.span();
                c.table == table && lo >= start && u32::from(lo) + u32::from(n) <= end
            })
            .map(move |c| (c.channel, c.decode_from_block(start, block, &context)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_scales_and_f32_values_come_out_as_the_device_meant_them() {
        assert_eq!(apply_scale(123.0, 0.1), 12.3);
        assert_eq!(apply_scale(-2.0, 0.01), -0.02);
        assert_eq!(apply_scale(7.0, 2.5), 17.5);
        assert_eq!(widen_f32(3.1), 3.1);
        assert_eq!(widen_f32(20.9), 20.9);
        // Widening never changes the f32 the device sent.
        for v in [f32::MAX, f32::MIN_POSITIVE, -1.0e-45, 123.456] {
            assert_eq!(widen_f32(v) as f32, v);
        }
    }

    #[test]
    fn rounding_is_half_away_from_zero() {
        assert_eq!(round_half_away(2.5), 3.0);
        assert_eq!(round_half_away(-2.5), -3.0);
        assert_eq!(round_half_away(2.4999), 2.0);
        assert_eq!(round_half_away(-0.4), 0.0);
        assert_eq!(round_half_away(1.0e17), 1.0e17);
    }
}
