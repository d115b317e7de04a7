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

use tianzhong_protocol::payload::NodeStatus;

use crate::pipeline::{Record, StatusEvent};

/// Encoding version written in every batch.
pub const VERSION: u8 = 1;
/// Kind byte of a batch of readings.
pub const KIND_READINGS: u8 = 0;
/// Kind byte of an alarm transition.
pub const KIND_ALARM: u8 = 1;
/// Kind byte of a node's status change (online, offline): kept over routine readings, given
/// up before alarm transitions.
pub const KIND_STATUS: u8 = 2;
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
    // Exactly: a batch's buffer is reused for the next (see the outbox's "Memory" docs), so
    // a short reservation would double its capacity.
    let strings_len: usize = strings.iter().map(|s| 1 + s.len()).sum();
    out.reserve_exact(2 + 2 + strings_len + 4 + records.len() * RECORD_BYTES);
    out.push(VERSION);
    out.push(KIND_READINGS);
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

/// Encodes a node's status change into `out` (cleared first): node, site, then the status as
/// the protocol's JSON (what the node itself would publish).
pub fn encode_status(status: &StatusEvent, out: &mut Vec<u8>) -> Result<(), DecodeError> {
    let mut json = [0u8; 512];
    let n = status
        .status
        .to_json(&mut json)
        .or_else(|e| err(format!("status of {}: {e:?}", status.node)))?;
    out.clear();
    out.reserve(4 + status.node.len() + status.site.len() + n);
    out.push(VERSION);
    out.push(KIND_STATUS);
    out.push(status.node.len() as u8);
    out.extend_from_slice(status.node.as_bytes());
    out.push(status.site.len() as u8);
    out.extend_from_slice(status.site.as_bytes());
    out.extend_from_slice(&json[..n]);
    Ok(())
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
    /// A node's status change.
    Status(StatusEvent),
}

/// The kind byte of an encoded batch.
pub fn kind(bytes: &[u8]) -> Result<u8, DecodeError> {
    match bytes {
        [VERSION, k @ (KIND_READINGS | KIND_ALARM | KIND_STATUS), ..] => Ok(*k),
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
    if kind == KIND_STATUS {
        let node = NodeId::new(c.id()?).or_else(|e| err(format!("status node: {e}")))?;
        let site = SiteId::new(c.id()?).or_else(|e| err(format!("status site: {e}")))?;
        let status = NodeStatus::from_json(&bytes[c.at..])
            .or_else(|e| err(format!("status of {node}: {e:?}")))?;
        return Ok(Decoded::Status(StatusEvent { site, node, status }));
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

/// The node of an alarm transition or status change, as stored (a valid [`NodeId`]).
pub fn event_node(bytes: &[u8]) -> Result<&str, DecodeError> {
    if kind(bytes)? == KIND_READINGS {
        return err("not an alarm transition or status change");
    }
    let node = Cursor { buf: bytes, at: 2 }.id()?;
    NodeId::new(node).or_else(|e| err(format!("alarm node: {e}")))?;
    Ok(node)
}

/// The node of every record in an encoded batch, without decoding the rest (for counting
/// drops).
pub fn nodes_of(bytes: &[u8]) -> Result<Vec<NodeId>, DecodeError> {
    if kind(bytes)? != KIND_READINGS {
        let node = event_node(bytes)?;
        return Ok(vec![
            NodeId::new(node).or_else(|e| err(format!("node: {e}")))?,
        ]);
    }
    let raw = RawReadings::parse(bytes)?;
    (0..raw.len())
        .map(|i| NodeId::new(raw.node(i)).or_else(|e| err(format!("node: {e}"))))
        .collect()
}

/// A batch of readings read in place: its string table and its records' fields, without
/// building a [`Record`] per reading. The outbox downsamples and counts drops with it, so
/// that what it holds in memory for a window of batches is their bytes, not about four
/// times as much in decoded records.
///
/// [`RawReadings::parse`] checks the layout and that every record's site and node indices
/// name a valid id; it does not check values, quantities or quality flags (a batch wrong in
/// those still fails [`decode`], and a sink sets it aside).
#[derive(Clone, Debug)]
pub struct RawReadings<'a> {
    /// Version, kind and the string table, as stored.
    head: &'a [u8],
    strings: Vec<&'a str>,
    records: &'a [u8],
}

impl<'a> RawReadings<'a> {
    /// Reads a batch of readings in place.
    pub fn parse(bytes: &'a [u8]) -> Result<RawReadings<'a>, DecodeError> {
        if kind(bytes)? != KIND_READINGS {
            return err("not a batch of readings");
        }
        let mut c = Cursor { buf: bytes, at: 2 };
        let n_strings = c.u16()? as usize;
        let mut strings = Vec::with_capacity(n_strings);
        for _ in 0..n_strings {
            strings.push(c.id()?);
        }
        let head = &bytes[..c.at];
        let n = c.u32()? as usize;
        let records = &bytes[c.at..];
        if records.len() != n * RECORD_BYTES {
            return err(format!(
                "{n} records need {} bytes, {} follow",
                n * RECORD_BYTES,
                records.len()
            ));
        }
        // Each string is checked once, as a site or a node, however many records use it.
        let mut valid: Vec<[Option<bool>; 2]> = vec![[None; 2]; n_strings];
        for r in records.chunks_exact(RECORD_BYTES) {
            for (k, what) in [(0, "site"), (1, "node")] {
                let i = u16::from_le_bytes([r[2 * k], r[2 * k + 1]]) as usize;
                let Some(ok) = valid.get_mut(i) else {
                    return err(format!("bad {what} index {i}"));
                };
                let ok = *ok[k].get_or_insert_with(|| match k {
                    0 => SiteId::new(strings[i]).is_ok(),
                    _ => NodeId::new(strings[i]).is_ok(),
                });
                if !ok {
                    return err(format!("bad {what} index {i}"));
                }
            }
        }
        Ok(RawReadings {
            head,
            strings,
            records,
        })
    }

    fn field<const N: usize>(&self, i: usize, at: usize) -> [u8; N] {
        let start = i * RECORD_BYTES + at;
        self.records[start..start + N]
            .try_into()
            .expect("length checked at parse")
    }

    /// How many readings.
    pub fn len(&self) -> usize {
        self.records.len() / RECORD_BYTES
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Reading `i`'s node id (a valid [`NodeId`]).
    pub fn node(&self, i: usize) -> &'a str {
        self.strings[u16::from_le_bytes(self.field(i, 2)) as usize]
    }

    /// Reading `i`'s channel.
    pub fn channel(&self, i: usize) -> u16 {
        u16::from_le_bytes(self.field(i, 4))
    }

    /// Reading `i`'s timestamp, ms.
    pub fn timestamp(&self, i: usize) -> u64 {
        u64::from_le_bytes(self.field(i, 16))
    }

    /// Reading `i`'s sequence number.
    pub fn seq(&self, i: usize) -> u32 {
        u32::from_le_bytes(self.field(i, 24))
    }

    /// Encodes into `out` (cleared first) the batch of the readings `keep` selects, in their
    /// order, as stored (the string table is kept whole).
    pub fn encode_subset(&self, mut keep: impl FnMut(usize) -> bool, out: &mut Vec<u8>) {
        out.clear();
        let kept: Vec<usize> = (0..self.len()).filter(|&i| keep(i)).collect();
        out.reserve_exact(self.head.len() + 4 + kept.len() * RECORD_BYTES);
        out.extend_from_slice(self.head);
        out.extend_from_slice(&(kept.len() as u32).to_le_bytes());
        for i in kept {
            out.extend_from_slice(&self.records[i * RECORD_BYTES..(i + 1) * RECORD_BYTES]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(node: &str, site: &str, channel: u16, seq: u32) -> Record {
        Record {
            site: SiteId::new(site).unwrap(),
            reading: Reading {
                node: NodeId::new(node).unwrap(),
                channel: ChannelId(channel),
                quantity: Quantity::ALL[channel as usize % Quantity::ALL.len()],
                value: seq as f64 * 0.5,
                timestamp: Timestamp(1_700_000_000_000 + seq as u64 * 1000),
                seq,
                quality: Quality::Good,
            },
            received_ms: 1_700_000_000_000 + seq as u64 * 1000 + 7,
            device_time: seq.is_multiple_of(2),
        }
    }

    fn records() -> Vec<Record> {
        (0..40)
            .map(|i| {
                let node = ["n-1", "n-2", "n-3"][i % 3];
                let site = ["s-a", "s-b"][i % 2];
                record(node, site, (i % 4) as u16, i as u32)
            })
            .collect()
    }

    #[test]
    fn readings_are_encoded_into_exactly_the_capacity_reserved() {
        let mut buf = Vec::new();
        encode_readings(&records(), &mut buf);
        assert_eq!(buf.capacity(), buf.len());
        // Reused for a batch of the same shape, it is not reallocated.
        let ptr = buf.as_ptr();
        encode_readings(&records(), &mut buf);
        assert_eq!(buf.as_ptr(), ptr);
    }

    #[test]
    fn raw_readings_read_the_fields_in_place_and_keep_subsets() {
        let records = records();
        let mut buf = Vec::new();
        encode_readings(&records, &mut buf);
        let raw = RawReadings::parse(&buf).unwrap();
        assert_eq!(raw.len(), records.len());
        for (i, r) in records.iter().enumerate() {
            assert_eq!(raw.node(i), r.reading.node.as_str());
            assert_eq!(raw.channel(i), r.reading.channel.0);
            assert_eq!(raw.timestamp(i), r.reading.timestamp.0);
            assert_eq!(raw.seq(i), r.reading.seq);
        }
        let mut subset = Vec::new();
        raw.encode_subset(|i| i % 3 != 1, &mut subset);
        let kept: Vec<Record> = records
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 3 != 1)
            .map(|(_, r)| r.clone())
            .collect();
        assert_eq!(decode(&subset), Ok(Decoded::Readings(kept)));
        raw.encode_subset(|_| false, &mut subset);
        assert_eq!(decode(&subset), Ok(Decoded::Readings(Vec::new())));
        assert_eq!(
            nodes_of(&buf).unwrap(),
            records
                .iter()
                .map(|r| r.reading.node.clone())
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn raw_readings_reject_what_decode_rejects_in_the_layout() {
        let mut buf = Vec::new();
        encode_readings(&records(), &mut buf);
        // Truncated.
        assert!(RawReadings::parse(&buf[..buf.len() - 1]).is_err());
        // A node index beyond the string table (the first record's node index).
        let first = buf.len() - 40 * RECORD_BYTES;
        let mut bad = buf.clone();
        bad[first + 2..first + 4].copy_from_slice(&99u16.to_le_bytes());
        assert!(RawReadings::parse(&bad).is_err());
        assert!(decode(&bad).is_err());
        // An alarm is not a batch of readings, and has its node.
        let mut alarm = Vec::new();
        encode_alarm(&NodeId::new("n-9").unwrap(), b"payload", &mut alarm);
        assert!(RawReadings::parse(&alarm).is_err());
        assert_eq!(event_node(&alarm), Ok("n-9"));
        assert!(event_node(&buf).is_err());
    }

    #[test]
    fn a_status_change_round_trips_and_names_its_node() {
        let status = StatusEvent {
            site: SiteId::new("plant-3").unwrap(),
            node: NodeId::new("cp-lel-05").unwrap(),
            status: NodeStatus {
                ts: Some(1_764_300_000_000),
                fw: Some(heapless::String::try_from("1.4.2").unwrap()),
                uptime_s: Some(3600),
                ..NodeStatus::last_will()
            },
        };
        let mut buf = Vec::new();
        encode_status(&status, &mut buf).unwrap();
        assert_eq!(kind(&buf), Ok(KIND_STATUS));
        assert_eq!(decode(&buf), Ok(Decoded::Status(status.clone())));
        assert_eq!(event_node(&buf), Ok("cp-lel-05"));
        assert_eq!(nodes_of(&buf).unwrap(), vec![status.node.clone()]);
        assert!(RawReadings::parse(&buf).is_err());
        // A status whose JSON was cut short is an error, not a default.
        assert!(decode(&buf[..buf.len() - 2]).is_err());
    }
}
