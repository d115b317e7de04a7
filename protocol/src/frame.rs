//! The binary uplink frame, for nodes that push readings over a byte stream (a radio link, a
//! serial line, or an MQTT `frame` topic).
//!
//! # Layout
//!
//! | part | bytes | content |
//! |---|---|---|
//! | version | 1 | [`FRAME_VERSION`] |
//! | body | variable | [`UplinkFrame`] serialised with postcard |
//! | check | 4 | CRC-32C over version and body, little-endian |
//!
//! The three parts are COBS-encoded, so the frame holds no zero byte, and a single `0x00`
//! ends it: a receiver that joins a stream mid-frame resynchronises at the next zero.
//!
//! postcard is compact (varints, enum variants by index) and has a stable, documented wire
//! format; the version byte sits outside it so that a future body can change shape without
//! ambiguity. Enum variants are encoded by declaration index: new quantities are only ever
//! appended.

use core::fmt;

use serde::{Deserialize, Serialize};

use crate::crc::FRAME;
use crate::id::NodeId;
use crate::quantity::Quantity;
use crate::reading::{ChannelId, Quality, Reading, Timestamp};

/// Version of the frame layout, the first decoded byte.
pub const FRAME_VERSION: u8 = 1;

/// Most readings one frame carries.
pub const MAX_FRAME_READINGS: usize = 16;

/// Largest body before COBS: version, worst-case postcard body, CRC.
const MAX_RAW_LEN: usize = 1
    + (1 + crate::id::MAX_ID_LEN)       // node id: length varint + bytes
    + 1                                  // reading count varint
    + MAX_FRAME_READINGS * (3 + 3 + 8 + 10 + 5 + 2) // channel, quantity, value, ts, seq, flag
    + 4;

/// Largest encoded frame, including the terminating zero. A buffer this long always suffices
/// for [`UplinkFrame::encode`].
pub const MAX_FRAME_LEN: usize = cobs::max_encoding_length(MAX_RAW_LEN) + 1;

/// One reading inside a frame; the node is the frame's.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct FrameReading {
    /// Channel.
    pub channel: ChannelId,
    /// Quantity.
    pub quantity: Quantity,
    /// Value in the quantity's canonical unit.
    pub value: f64,
    /// Sample time.
    pub timestamp: Timestamp,
    /// Sample sequence number.
    pub seq: u32,
    /// Quality.
    pub quality: Quality,
}

/// Readings of one node, as sent in one frame.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UplinkFrame {
    /// The sending node.
    pub node: NodeId,
    /// Its readings, possibly of several samples (a node that buffered while its link was
    /// down sends them oldest first).
    pub readings: heapless::Vec<FrameReading, MAX_FRAME_READINGS>,
}

/// Why bytes are not a valid frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// No bytes before the terminating zero.
    Empty,
    /// The COBS encoding is broken (a zero inside the frame, or a code byte pointing past its
    /// end).
    Cobs,
    /// Too few bytes for version and CRC.
    TooShort {
        /// Decoded length.
        len: usize,
    },
    /// The CRC does not match: the frame was corrupted.
    Crc {
        /// CRC carried by the frame.
        received: u32,
        /// CRC computed over it.
        computed: u32,
    },
    /// A frame version this code does not read.
    UnsupportedVersion(u8),
    /// The body is not a valid postcard-encoded frame.
    Body(postcard::Error),
    /// Bytes left over after the body.
    TrailingBytes(usize),
    /// A reading's value is NaN or infinite.
    NotFinite {
        /// Index of the reading.
        index: usize,
    },
    /// More bytes than the longest valid frame.
    TooLong {
        /// Encoded length.
        len: usize,
    },
    /// The output buffer is too small.
    BufferTooSmall,
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Empty => f.write_str("empty frame"),
            FrameError::Cobs => f.write_str("invalid COBS encoding"),
            FrameError::TooShort { len } => {
                write!(
                    f,
                    "frame decodes to {len} bytes, too short for version and CRC"
                )
            }
            FrameError::Crc { received, computed } => write!(
                f,
                "frame CRC-32C mismatch: carries 0x{received:08X}, computed 0x{computed:08X}"
            ),
            FrameError::UnsupportedVersion(v) => {
                write!(
                    f,
                    "frame version {v} is not supported (this build reads {FRAME_VERSION})"
                )
            }
            FrameError::Body(e) => write!(f, "frame body: {e}"),
            FrameError::TrailingBytes(n) => write!(f, "{n} unexpected bytes after the frame body"),
            FrameError::NotFinite { index } => write!(f, "reading {index} is NaN or infinite"),
            FrameError::TooLong { len } => {
                write!(
                    f,
                    "frame of {len} bytes is longer than the maximum {MAX_FRAME_LEN}"
                )
            }
            FrameError::BufferTooSmall => f.write_str("output buffer too small for the frame"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for FrameError {}

impl UplinkFrame {
    /// An empty frame for `node`.
    pub fn new(node: NodeId) -> UplinkFrame {
        UplinkFrame {
            node,
            readings: heapless::Vec::new(),
        }
    }

    /// Adds a reading of this frame's node; returns it back when the frame is full.
    pub fn push(&mut self, reading: &Reading) -> Result<(), FrameReading> {
        self.readings.push(FrameReading {
            channel: reading.channel,
            quantity: reading.quantity,
            value: reading.value,
            timestamp: reading.timestamp,
            seq: reading.seq,
            quality: reading.quality,
        })
    }

    /// The frame's readings as [`Reading`]s.
    pub fn readings(&self) -> impl Iterator<Item = Reading> + '_ {
        self.readings.iter().map(|r| Reading {
            node: self.node.clone(),
            channel: r.channel,
            quantity: r.quantity,
            value: r.value,
            timestamp: r.timestamp,
            seq: r.seq,
            quality: r.quality,
        })
    }

    /// Encodes the frame into `out`, terminating zero included; returns the bytes written.
    pub fn encode<'o>(&self, out: &'o mut [u8]) -> Result<&'o [u8], FrameError> {
        if let Some(index) = self.readings.iter().position(|r| !r.value.is_finite()) {
            return Err(FrameError::NotFinite { index });
        }
        let mut raw = [0u8; MAX_RAW_LEN];
        raw[0] = FRAME_VERSION;
        let body_len = postcard::to_slice(self, &mut raw[1..MAX_RAW_LEN - 4])
            .map_err(FrameError::Body)?
            .len();
        let crc = FRAME.checksum(&raw[..1 + body_len]);
        raw[1 + body_len..1 + body_len + 4].copy_from_slice(&crc.to_le_bytes());
        let raw = &raw[..1 + body_len + 4];
        let n = cobs::try_encode(raw, out).map_err(|_| FrameError::BufferTooSmall)?;
        *out.get_mut(n).ok_or(FrameError::BufferTooSmall)? = 0;
        Ok(&out[..=n])
    }

    /// Decodes one frame from `bytes` (with or without its terminating zero).
    pub fn decode(bytes: &[u8]) -> Result<UplinkFrame, FrameError> {
        let bytes = bytes.strip_suffix(&[0]).unwrap_or(bytes);
        if bytes.is_empty() {
            return Err(FrameError::Empty);
        }
        if bytes.len() >= MAX_FRAME_LEN {
            return Err(FrameError::TooLong { len: bytes.len() });
        }
        if bytes.contains(&0) {
            return Err(FrameError::Cobs);
        }
        let mut raw = [0u8; MAX_FRAME_LEN];
        // The length check above means the scratch buffer is always large enough.
        let len = cobs::decode(bytes, &mut raw)
            .map_err(|_| FrameError::Cobs)?
            .frame_size();
        let raw = &raw[..len];
        if len < 5 {
            return Err(FrameError::TooShort { len });
        }
        let (signed, crc) = raw.split_at(len - 4);
        let received = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
        let computed = FRAME.checksum(signed);
        if received != computed {
            return Err(FrameError::Crc { received, computed });
        }
        if signed[0] != FRAME_VERSION {
            return Err(FrameError::UnsupportedVersion(signed[0]));
        }
        let (frame, rest): (UplinkFrame, _) =
            postcard::take_from_bytes(&signed[1..]).map_err(FrameError::Body)?;
        if !rest.is_empty() {
            return Err(FrameError::TrailingBytes(rest.len()));
        }
        if let Some(index) = frame.readings.iter().position(|r| !r.value.is_finite()) {
            return Err(FrameError::NotFinite { index });
        }
        Ok(frame)
    }
}
