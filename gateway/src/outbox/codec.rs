//! The on-disk encoding of one outbox batch: a hand-rolled fixed layout, little-endian.
//!
//! | part | layout |
//! |---|---|
//! | header | `u8` version (1), `u8` kind (0 readings, 1 alarm) |
//! | readings: strings | `u16` count, then each id as `u8` length + UTF-8 bytes (sites and nodes, each once per batch) |
//! | readings: records | `u32` count, then 34 bytes each (below) |
//! | alarm | `u8` length + node id, then the opaque payload to the end |
//!
//! | record field | bytes |
//! |---|---|
//! | site (string index) | 2 |
//! | node (string index) | 2 |
//! | channel | 2 |
//! | quantity code | 2 |
//! | value (`f64` bits) | 8 |
//! | timestamp ms | 8 |
//! | seq | 4 |
//! | quality (HJ 212 flag, ASCII) | 1 |
//! | received ms − timestamp ms, signed, saturated to ±2³¹ ms; bit 0 of the flags byte below is device time | 4 + 1 |
//!
//! A record's `received_ms` is stored as an offset from its timestamp, saturating: an offset
//! beyond ±24.8 days (a device clock that wrong) is clamped, which loses only that
//! diagnostic. Postcard (not benchmarked here; estimated from its format) would write the site
//! and node strings in every record (about 70 bytes a reading instead of 34) and decodes them into fresh
//! `heapless::String`s each time. Decoding is strict — any inconsistency is a
//! [`DecodeError`], and the outbox sets such a batch aside as a dead letter.

use std::collections::HashMap;

use tianzhong_protocol::reading::{ChannelId, Quality, Timestamp};
use tianzhong_protocol::{NodeId, Quantity, Reading, SiteId};

use crate::pipeline::Record;

/// Encoding version written in every batch.
pub const VERSION: u8 = 1;
/// Kind byte of a batch of readings.
pub const KIND_READINGS: u8 = 0;
/// Kind byte of an alarm transition.
pub const KIND_ALARM: u8 = 1;
/// Bytes per encoded record.
pub const RECORD_BYTES: usize = 34;
/// Most records in one batch: string indices are `u16`, so [`crate::outbox::Outbox::append`]
/// splits larger groups.
pub const MAX_RECORDS: usize = u16::MAX as usize;

/// A stored batch that cannot be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("undecodable outbox batch: {0}")]
pub struct DecodeError(pub String);

fn err<T>(what: impl Into<String>) -> Result<T, DecodeError> {
    Err(DecodeError(what.into()))
}

/// Encodes a batch of at most [`MAX_RECORDS`] readings into `out` (cleared first).
pub fn encode_readings(records: &[Record], out: &mut Vec<u8>) {
    assert!(records.len() <= MAX_RECORDS, "outbox batch too large");
    out.clear();
    out.reserve(16 + records.len() * RECORD_BYTES);
    out.push(VERSION);
    out.push(KIND_READINGS);
    // Sites and nodes repeat within a batch: each is written once and referred to by index.
    // Consecutive records usually share their node, so the last lookup is tried first.
    let mut strings: Vec<&str> = Vec::new();
    let mut map: HashMap<&str, u16> = HashMap::new();
    let mut indices: Vec<(u16, u16)> = Vec::with_capacity(records.len());
    let mut last: [(&str, u16); 2] = [("", u16::MAX); 2];
    for r in records {
        let mut pair = [0u16; 2];
        for (k, s) in [r.site.as_str(), r.reading.node.as_str()]
            .into_iter()
            .enumerate()
        {
            pair[k] = if last[k].0 == s && last[k].1 != u16::MAX {
                last[k].1
            } else {
                let i = *map.entry(s).or_insert_with(|| {
                    strings.push(s);
                    (strings.len() - 1) as u16
                });
                last[k] = (s, i);
                i
            };
        }
        indices.push((pair[0], pair[1]));
    }
    out.extend_from_slice(&(strings.len() as u16).to_le_bytes());
    for s in &strings {
        out.push(s.len() as u8);
        out.extend_from_slice(s.as_bytes());
    }
    out.extend_from_slice(&(records.len() as u32).to_le_bytes());
    for (r, (site, node)) in records.iter().zip(indices) {
        let q = &r.reading;
        out.extend_from_slice(&site.to_le_bytes());
        out.extend_from_slice(&node.to_le_bytes());
        out.extend_from_slice(&q.channel.0.to_le_bytes());
        out.extend_from_slice(&q.quantity.code().to_le_bytes());
        out.extend_from_slice(&q.value.to_bits().to_le_bytes());
        out.extend_from_slice(&q.timestamp.0.to_le_bytes());
        out.extend_from_slice(&q.seq.to_le_bytes());
        out.push(q.quality.hj212_flag() as u8);
        let offset = (r.received_ms as i128 - q.timestamp.0 as i128)
            .clamp(i32::MIN as i128, i32::MAX as i128) as i32;
        out.extend_from_slice(&offset.to_le_bytes());
        out.push(u8::from(r.device_time));
    }
}

/// Encodes an alarm transition of `node` with its opaque payload into `out` (cleared first).
pub fn encode_alarm(node: &NodeId, payload: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.reserve(3 + node.len() + payload.len());
    out.push(VERSION);
    out.push(KIND_ALARM);
    out.push(node.len() as u8);
    out.extend_from_slice(node.as_bytes());
    out.extend_from_slice(payload);
}

struct Cursor<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        match self.buf.get(self.at..self.at + n) {
            Some(b) => {
                self.at += n;
                Ok(b)
            }
            None => err(format!("truncated at byte {}", self.at)),
        }
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        Ok(self.take(N)?.try_into().expect("length checked"))
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        self.array().map(u16::from_le_bytes)
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        self.array().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        self.array().map(u64::from_le_bytes)
    }
    fn id(&mut self) -> Result<&'a str, DecodeError> {
        let n = self.u8()? as usize;
        std::str::from_utf8(self.take(n)?).or_else(|_| err("id is not UTF-8"))
    }
}

/// A decoded batch.
#[derive(Clone, Debug, PartialEq)]
pub enum Decoded {
    /// Readings.
    Readings(Vec<Record>),
    /// An alarm transition: node and opaque payload.
    Alarm(NodeId, Vec<u8>),
}

/// The kind byte of an encoded batch.
pub fn kind(bytes: &[u8]) -> Result<u8, DecodeError> {
    match bytes {
        [VERSION, k @ (KIND_READINGS | KIND_ALARM), ..] => Ok(*k),
        [VERSION, k, ..] => err(format!("unknown kind {k}")),
        [v, ..] => err(format!("unknown version {v}")),
        [] => err("empty"),
    }
}

/// Decodes a batch.
pub fn decode(bytes: &[u8]) -> Result<Decoded, DecodeError> {
    let kind = kind(bytes)?;
    let mut c = Cursor { buf: bytes, at: 2 };
    if kind == KIND_ALARM {
        let node = NodeId::new(c.id()?).or_else(|e| err(format!("alarm node: {e}")))?;
        return Ok(Decoded::Alarm(node, bytes[c.at..].to_vec()));
    }
    let n_strings = c.u16()? as usize;
    let mut strings = Vec::with_capacity(n_strings);
    for _ in 0..n_strings {
        strings.push(c.id()?);
    }
    // Parsed once each: a batch of 100 readings of one node parses its id once, not 100 times.
    let sites: Vec<Option<SiteId>> = strings.iter().map(|s| SiteId::new(s).ok()).collect();
    let nodes: Vec<Option<NodeId>> = strings.iter().map(|s| NodeId::new(s).ok()).collect();
    let n = c.u32()? as usize;
    if bytes.len() - c.at != n * RECORD_BYTES {
        return err(format!(
            "{n} records need {} bytes, {} follow",
            n * RECORD_BYTES,
            bytes.len() - c.at
        ));
    }
    let mut records = Vec::with_capacity(n);
    for _ in 0..n {
        let site = c.u16()? as usize;
        let node = c.u16()? as usize;
        let site = match sites.get(site) {
            Some(Some(s)) => s.clone(),
            _ => return err(format!("bad site index {site}")),
        };
        let node = match nodes.get(node) {
            Some(Some(s)) => s.clone(),
            _ => return err(format!("bad node index {node}")),
        };
        let channel = ChannelId(c.u16()?);
        let code = c.u16()?;
        let quantity = Quantity::from_code(code)
            .map_or_else(|| err(format!("unknown quantity {code}")), Ok)?;
        let value = f64::from_bits(c.u64()?);
        if !value.is_finite() {
            return err("value not finite");
        }
        let timestamp = c.u64()?;
        let seq = c.u32()?;
        let flag = c.u8()?;
        let quality =
            Quality::from_hj212_flag(char::from(flag)).or_else(|e| err(format!("quality: {e}")))?;
        let offset = i32::from_le_bytes(c.array()?);
        let flags = c.u8()?;
        records.push(Record {
            site,
            reading: Reading {
                node,
                channel,
                quantity,
                value,
                timestamp: Timestamp(timestamp),
                seq,
                quality,
            },
            received_ms: (timestamp as i128 + offset as i128).clamp(0, u64::MAX as i128) as u64,
            device_time: flags & 1 != 0,
        });
    }
    Ok(Decoded::Readings(records))
}

/// The node of every record in an encoded batch, without decoding the rest (for counting
/// drops).
pub fn nodes_of(bytes: &[u8]) -> Result<Vec<NodeId>, DecodeError> {
    Ok(match decode(bytes)? {
        Decoded::Readings(r) => r.into_iter().map(|r| r.reading.node).collect(),
        Decoded::Alarm(node, _) => vec![node],
    })
}
