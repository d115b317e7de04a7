//! Firmware-update messages over MQTT: the steps of the Modbus update files (offer, chunks,
//! finish, status) plus the gateway's confirm, as compact binary payloads for nodes that are
//! MQTT clients themselves.
//!
//! The gateway publishes [`UpdateRequest`]s on `tianzhong/v1/{site}/{node}/fwupdate`; the node
//! answers every one of them with an [`UpdateReport`] on `tianzhong/v1/{site}/{node}/fwstatus`
//! (see [`topic`](crate::topic)). Both go at QoS 1, neither retained: a request left on the
//! broker would be replayed to a node that has long moved on.
//!
//! # Why every answer is a full report
//!
//! MQTT gives no request–reply pairing, and a QoS 1 message can arrive twice or, across a
//! reconnect, not at all. So the node never answers "ok" to a single message: it answers with
//! its whole update state, above all the **next chunk it wants**. The gateway keeps a window of
//! chunks in flight and, after a lost message, a timeout or a reconnect, simply goes on from the
//! next chunk of the latest report. A chunk the node already has is acknowledged again without
//! being written; one beyond the next wanted is refused with the index it needs.
//!
//! # Chunk size
//!
//! [`MQTT_CHUNK`], 1024 bytes: the largest chunk the node's update receiver takes. Over Modbus
//! a chunk is 128 bytes because a write-file-record request holds at most 244; an MQTT message
//! has no such bound, and every message costs a fixed header, topic, packet id, a PUBACK and a
//! report, so larger chunks carry more image per round trip. Beyond 1024 the node would need a
//! larger receive buffer (it holds one whole request in RAM) and a chunk would no longer divide
//! the 1 KiB erase sectors of the smallest supported flash. A node that refuses the size
//! ([`Reason::BadChunkSize`]) is offered half of it, down to 128.
//!
//! # Wire format
//!
//! [postcard](https://postcard.jamesmunns.com/wire-format): enum variants by their index as a
//! varint, integers as varints (LEB128; `u8` as one raw byte), byte strings as a varint length
//! and the bytes. Nothing may follow the message. The topic's `v1` level versions the format;
//! new requests are only ever appended, and a node answers one it does not know with
//! [`Reason::MalformedRequest`].
//!
//! ## Requests (gateway → node, `…/fwupdate`)
//!
//! | variant | tag | fields, in order |
//! |---|---|---|
//! | offer | 0 | image header (bytes, 64); SHA-256 of the image (bytes, 32); chunk size (varint `u16`) |
//! | chunk | 1 | index (varint `u32`); CRC-32C of the bytes (varint `u32`); the chunk's bytes (bytes, chunk size, shorter for the last) |
//! | finish | 2 | — : check the image (size, hash, signature, hardware, security counter) and stage it |
//! | status | 3 | — : report only |
//! | confirm | 4 | major (`u8`); minor (`u8`); patch (varint `u16`): the gateway's health check of this running version passed |
//!
//! A chunk of 1024 bytes is at most 1037 bytes on the wire ([`MAX_REQUEST_LEN`]).
//!
//! ## Report (node → gateway, `…/fwstatus`)
//!
//! | field | encoding | meaning |
//! |---|---|---|
//! | answers | varint tag: 0 offer, 1 chunk, 2 finish, 3 status, 4 confirm, 5 malformed request | what the report answers |
//! | phase | varint tag: 0 idle, 1 receiving, 2 staged, 3 failed | as the Modbus status file's phase |
//! | next chunk | varint `u32` | the chunk the node wants next: resume here |
//! | chunks | varint `u32` | chunks in the image being received, 0 when idle |
//! | chunk size | varint `u16` | of the transfer, 0 when idle |
//! | reason | varint `u16` | [`Reason`] code: why the request answered was refused, 0 if it was taken; to a status request, the last refusal |
//! | running | `u8`, `u8`, varint `u16` | the firmware version the node runs |
//! | trial | `u8` 0 or 1 | the running image is on trial, not yet confirmed |
//!
//! At most [`MAX_REPORT_LEN`] bytes.

use core::fmt;

use serde::{Deserialize, Serialize};

use crate::image::HEADER_LEN;
use crate::registers::profile::FirmwareVersion;

/// Chunk size the gateway offers over MQTT.
pub const MQTT_CHUNK: u16 = 1024;
/// Smallest chunk size the gateway falls back to when a node refuses a larger one.
pub const MIN_MQTT_CHUNK: u16 = 128;
/// Longest request: a chunk of [`MQTT_CHUNK`] bytes with the widest varints.
pub const MAX_REQUEST_LEN: usize = 1 + 5 + 5 + 2 + MQTT_CHUNK as usize;
/// Longest report.
pub const MAX_REPORT_LEN: usize = 32;

/// A request from the gateway to a node's update receiver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpdateRequest<'a> {
    /// Offers an image: the receiver checks hardware, security counter and size before
    /// erasing anything, and resumes a transfer of the same image where it stopped.
    Offer {
        /// The image's first 64 bytes.
        header: [u8; HEADER_LEN],
        /// The SHA-256 the trailer gives for the image.
        digest: [u8; 32],
        /// Bytes per chunk.
        chunk_size: u16,
    },
    /// One chunk of the image.
    Chunk {
        /// Its index: it holds bytes `index * chunk_size ..` of the image.
        index: u32,
        /// CRC-32C of `data`.
        crc: u32,
        /// The bytes.
        data: &'a [u8],
    },
    /// Every chunk is sent: check the image and stage it for the next boot.
    Finish,
    /// Report the state, nothing else.
    Status,
    /// The gateway's health check of the image now running passed: confirm it.
    Confirm {
        /// The version the gateway checked; a node running another confirms nothing.
        version: FirmwareVersion,
    },
}

/// What a report answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Answers {
    /// An offer.
    Offer,
    /// A chunk.
    Chunk,
    /// A finish.
    Finish,
    /// A status request.
    Status,
    /// A confirm.
    Confirm,
    /// A request the node could not decode.
    Malformed,
}

/// Where a node's update receiver is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// No transfer.
    Idle,
    /// Chunks are being taken.
    Receiving,
    /// The image is checked and staged for the next boot.
    Staged,
    /// The last offer, chunk or finish was refused, or the flash failed.
    Failed,
}

/// A node's answer to any request: its whole update state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UpdateReport {
    /// What this answers.
    pub answers: Answers,
    /// The receiver's phase.
    pub phase: Phase,
    /// The chunk the node wants next.
    pub next_chunk: u32,
    /// Chunks in the image being received (0 when idle).
    pub chunks: u32,
    /// The transfer's chunk size (0 when idle).
    pub chunk_size: u16,
    /// The [`Reason`] code of the request answered, 0 if it was taken; a status request is
    /// answered with the last refusal. A code, not a [`Reason`], so that a gateway still reads
    /// the report of a newer node with reasons it does not know.
    pub reason: u16,
    /// The firmware version running.
    pub running: FirmwareVersion,
    /// Whether the running image is on trial (not yet confirmed).
    pub trial: bool,
}

impl UpdateReport {
    /// The last refusal's reason, if there is one and it is known.
    pub fn reason(&self) -> Option<Reason> {
        Reason::from_code(self.reason)
    }
}

/// Why a node refused an update step. The codes are the Modbus status file's register 5, with
/// the MQTT-only reasons after them.
///
/// | code | reason |
/// |---|---|
/// | 1 | wrong hardware model or revision |
/// | 2 | security counter lower than the running image's |
/// | 3 | image too large for a slot |
/// | 4 | SHA-256 differs from the trailer's (altered or damaged) |
/// | 5 | signed with a key the node does not trust |
/// | 6 | signature invalid |
/// | 7 | malformed header |
/// | 8 | malformed trailer |
/// | 9 | bad chunk size |
/// | 10 | an image on trial must be confirmed first |
/// | 11 | no transfer in progress |
/// | 12 | chunk out of order |
/// | 13 | no such chunk |
/// | 14 | chunk of the wrong length |
/// | 15 | chunk CRC mismatch |
/// | 16 | finish before every chunk is in |
/// | 17 | header received differs from the header offered |
/// | 18 | SHA-256 differs from the one offered |
/// | 19 | flash failure |
/// | 20 | update regions do not fit the flash |
/// | 21 | a request the node could not decode (MQTT) |
/// | 22 | confirm of another version than the one running (MQTT) |
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Reason {
    /// Wrong hardware model or revision.
    WrongHardware = 1,
    /// Security counter lower than the running image's: a rollback.
    SecurityCounterTooLow = 2,
    /// Too large for a slot.
    TooLarge = 3,
    /// SHA-256 differs from the trailer's.
    DigestMismatch = 4,
    /// Signed with a key the node does not trust.
    UnknownKey = 5,
    /// Signature invalid.
    BadSignature = 6,
    /// Malformed header.
    MalformedHeader = 7,
    /// Malformed trailer.
    MalformedTrailer = 8,
    /// Chunk size not accepted.
    BadChunkSize = 9,
    /// An image on trial must be confirmed first.
    TrialPending = 10,
    /// No transfer in progress.
    NoTransfer = 11,
    /// Chunk out of order.
    OutOfOrder = 12,
    /// No such chunk.
    NoSuchChunk = 13,
    /// Chunk of the wrong length.
    ChunkLength = 14,
    /// Chunk CRC mismatch.
    ChunkCrc = 15,
    /// Finish before every chunk is in.
    Incomplete = 16,
    /// Header received differs from the header offered.
    HeaderMismatch = 17,
    /// SHA-256 differs from the one offered.
    OfferDigestMismatch = 18,
    /// Flash failure.
    Flash = 19,
    /// The update regions do not fit the flash.
    Layout = 20,
    /// A request the node could not decode.
    MalformedRequest = 21,
    /// Confirm of another version than the one running: the trial image did not boot, or
    /// was given up.
    ConfirmOtherVersion = 22,
}

impl Reason {
    /// Every reason, by code.
    pub const ALL: [Reason; 22] = [
        Reason::WrongHardware,
        Reason::SecurityCounterTooLow,
        Reason::TooLarge,
        Reason::DigestMismatch,
        Reason::UnknownKey,
        Reason::BadSignature,
        Reason::MalformedHeader,
        Reason::MalformedTrailer,
        Reason::BadChunkSize,
        Reason::TrialPending,
        Reason::NoTransfer,
        Reason::OutOfOrder,
        Reason::NoSuchChunk,
        Reason::ChunkLength,
        Reason::ChunkCrc,
        Reason::Incomplete,
        Reason::HeaderMismatch,
        Reason::OfferDigestMismatch,
        Reason::Flash,
        Reason::Layout,
        Reason::MalformedRequest,
        Reason::ConfirmOtherVersion,
    ];

    /// Its code.
    pub const fn code(self) -> u16 {
        self as u16
    }

    /// The reason of a code; `None` for 0 and for codes this version does not know.
    pub fn from_code(code: u16) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.code() == code)
    }

    /// For people.
    pub const fn text(self) -> &'static str {
        match self {
            Reason::WrongHardware => "wrong hardware model or revision",
            Reason::SecurityCounterTooLow => {
                "security counter lower than the running image's (rollback refused)"
            }
            Reason::TooLarge => "image too large for a firmware slot",
            Reason::DigestMismatch => "SHA-256 differs from the trailer's: altered or damaged",
            Reason::UnknownKey => "signed with a key the node does not trust",
            Reason::BadSignature => "signature invalid",
            Reason::MalformedHeader => "malformed header",
            Reason::MalformedTrailer => "malformed trailer",
            Reason::BadChunkSize => "chunk size not accepted",
            Reason::TrialPending => "an image on trial must be confirmed first",
            Reason::NoTransfer => "no transfer in progress",
            Reason::OutOfOrder => "chunk out of order",
            Reason::NoSuchChunk => "no such chunk",
            Reason::ChunkLength => "chunk of the wrong length",
            Reason::ChunkCrc => "chunk damaged (CRC)",
            Reason::Incomplete => "not every chunk is in",
            Reason::HeaderMismatch => "header received differs from the header offered",
            Reason::OfferDigestMismatch => "SHA-256 differs from the one offered",
            Reason::Flash => "flash failure on the node",
            Reason::Layout => "the node's update regions do not fit its flash",
            Reason::MalformedRequest => "update request not understood by the node",
            Reason::ConfirmOtherVersion => "the confirm names another version than the one running",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text())
    }
}

/// Why an update message could not be encoded or decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpdateMessageError {
    /// Not a valid postcard encoding of the message (unknown tag, truncated, bad varint).
    Body(postcard::Error),
    /// Bytes left over after the message.
    TrailingBytes(usize),
    /// An offer whose header is not 64 bytes.
    HeaderLength(usize),
    /// An offer whose SHA-256 is not 32 bytes.
    DigestLength(usize),
    /// A chunk of more than [`MQTT_CHUNK`] bytes, or of none.
    ChunkLength(usize),
    /// The output buffer is too small.
    BufferTooSmall,
}

impl fmt::Display for UpdateMessageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpdateMessageError::Body(e) => write!(f, "update message: {e}"),
            UpdateMessageError::TrailingBytes(n) => {
                write!(f, "{n} unexpected bytes after the update message")
            }
            UpdateMessageError::HeaderLength(n) => {
                write!(f, "offer carries a {n}-byte header, not {HEADER_LEN}")
            }
            UpdateMessageError::DigestLength(n) => {
                write!(f, "offer carries a {n}-byte SHA-256, not 32")
            }
            UpdateMessageError::ChunkLength(n) => {
                write!(f, "chunk of {n} bytes: 1 to {MQTT_CHUNK} allowed")
            }
            UpdateMessageError::BufferTooSmall => {
                f.write_str("output buffer too small for the update message")
            }
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for UpdateMessageError {}

/// The request as postcard sees it: byte strings, whose lengths decoding then checks.
#[derive(Serialize, Deserialize)]
enum WireRequest<'a> {
    Offer {
        header: &'a [u8],
        digest: &'a [u8],
        chunk_size: u16,
    },
    Chunk {
        index: u32,
        crc: u32,
        data: &'a [u8],
    },
    Finish,
    Status,
    Confirm {
        major: u8,
        minor: u8,
        patch: u16,
    },
}

#[derive(Serialize, Deserialize)]
struct WireReport {
    answers: Answers,
    phase: Phase,
    next_chunk: u32,
    chunks: u32,
    chunk_size: u16,
    reason: u16,
    major: u8,
    minor: u8,
    patch: u16,
    trial: bool,
}

fn decode_all<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, UpdateMessageError> {
    let (value, rest) = postcard::take_from_bytes(bytes).map_err(UpdateMessageError::Body)?;
    if !rest.is_empty() {
        return Err(UpdateMessageError::TrailingBytes(rest.len()));
    }
    Ok(value)
}

fn encode_into<'o, T: Serialize>(
    value: &T,
    out: &'o mut [u8],
) -> Result<&'o [u8], UpdateMessageError> {
    match postcard::to_slice(value, out) {
        Ok(written) => Ok(written),
        Err(postcard::Error::SerializeBufferFull) => Err(UpdateMessageError::BufferTooSmall),
        Err(e) => Err(UpdateMessageError::Body(e)),
    }
}

impl<'a> UpdateRequest<'a> {
    /// Decodes a request; the chunk's bytes borrow from `bytes`.
    pub fn decode(bytes: &'a [u8]) -> Result<UpdateRequest<'a>, UpdateMessageError> {
        Ok(match decode_all::<WireRequest<'a>>(bytes)? {
            WireRequest::Offer {
                header,
                digest,
                chunk_size,
            } => UpdateRequest::Offer {
                header: header
                    .try_into()
                    .map_err(|_| UpdateMessageError::HeaderLength(header.len()))?,
                digest: digest
                    .try_into()
                    .map_err(|_| UpdateMessageError::DigestLength(digest.len()))?,
                chunk_size,
            },
            WireRequest::Chunk { index, crc, data } => {
                if data.is_empty() || data.len() > usize::from(MQTT_CHUNK) {
                    return Err(UpdateMessageError::ChunkLength(data.len()));
                }
                UpdateRequest::Chunk { index, crc, data }
            }
            WireRequest::Finish => UpdateRequest::Finish,
            WireRequest::Status => UpdateRequest::Status,
            WireRequest::Confirm {
                major,
                minor,
                patch,
            } => UpdateRequest::Confirm {
                version: FirmwareVersion {
                    major,
                    minor,
                    patch,
                },
            },
        })
    }

    /// Encodes the request into `out`, returning the bytes written.
    pub fn encode<'o>(&self, out: &'o mut [u8]) -> Result<&'o [u8], UpdateMessageError> {
        let wire = match self {
            UpdateRequest::Offer {
                header,
                digest,
                chunk_size,
            } => WireRequest::Offer {
                header,
                digest,
                chunk_size: *chunk_size,
            },
            UpdateRequest::Chunk { index, crc, data } => {
                if data.is_empty() || data.len() > usize::from(MQTT_CHUNK) {
                    return Err(UpdateMessageError::ChunkLength(data.len()));
                }
                WireRequest::Chunk {
                    index: *index,
                    crc: *crc,
                    data,
                }
            }
            UpdateRequest::Finish => WireRequest::Finish,
            UpdateRequest::Status => WireRequest::Status,
            UpdateRequest::Confirm { version } => WireRequest::Confirm {
                major: version.major,
                minor: version.minor,
                patch: version.patch,
            },
        };
        encode_into(&wire, out)
    }

    /// What a report to this request answers.
    pub fn answers(&self) -> Answers {
        match self {
            UpdateRequest::Offer { .. } => Answers::Offer,
            UpdateRequest::Chunk { .. } => Answers::Chunk,
            UpdateRequest::Finish => Answers::Finish,
            UpdateRequest::Status => Answers::Status,
            UpdateRequest::Confirm { .. } => Answers::Confirm,
        }
    }
}

impl UpdateReport {
    /// Decodes a report.
    pub fn decode(bytes: &[u8]) -> Result<UpdateReport, UpdateMessageError> {
        let w: WireReport = decode_all(bytes)?;
        Ok(UpdateReport {
            answers: w.answers,
            phase: w.phase,
            next_chunk: w.next_chunk,
            chunks: w.chunks,
            chunk_size: w.chunk_size,
            reason: w.reason,
            running: FirmwareVersion {
                major: w.major,
                minor: w.minor,
                patch: w.patch,
            },
            trial: w.trial,
        })
    }

    /// Encodes the report into `out`, returning the bytes written.
    pub fn encode<'o>(&self, out: &'o mut [u8]) -> Result<&'o [u8], UpdateMessageError> {
        let wire = WireReport {
            answers: self.answers,
            phase: self.phase,
            next_chunk: self.next_chunk,
            chunks: self.chunks,
            chunk_size: self.chunk_size,
            reason: self.reason,
            major: self.running.major,
            minor: self.running.minor,
            patch: self.running.patch,
            trial: self.trial,
        };
        encode_into(&wire, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crc::FRAME as CRC32C;

    const V: FirmwareVersion = FirmwareVersion {
        major: 1,
        minor: 2,
        patch: 300,
    };

    fn roundtrip(request: &UpdateRequest<'_>) -> usize {
        let mut buf = [0u8; MAX_REQUEST_LEN];
        let len = request.encode(&mut buf).unwrap().len();
        assert_eq!(&UpdateRequest::decode(&buf[..len]).unwrap(), request);
        len
    }

    #[test]
    fn every_request_round_trips() {
        let data = [0xA5u8; MQTT_CHUNK as usize];
        let mut header = [0u8; HEADER_LEN];
        header
            .iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b = i as u8);
        for request in [
            UpdateRequest::Offer {
                header,
                digest: [7; 32],
                chunk_size: MQTT_CHUNK,
            },
            UpdateRequest::Chunk {
                index: 3,
                crc: CRC32C.checksum(&data[..100]),
                data: &data[..100],
            },
            UpdateRequest::Finish,
            UpdateRequest::Status,
            UpdateRequest::Confirm { version: V },
        ] {
            roundtrip(&request);
        }
        // The widest chunk fits the documented bound.
        let widest = UpdateRequest::Chunk {
            index: u32::MAX,
            crc: u32::MAX,
            data: &data,
        };
        assert_eq!(roundtrip(&widest), MAX_REQUEST_LEN);
    }

    #[test]
    fn the_wire_layout_is_the_documented_one() {
        // Chunk: tag 1, index 300 = varint AC 02, CRC 1 = 01, length 2, the bytes.
        let mut buf = [0u8; 16];
        let bytes = UpdateRequest::Chunk {
            index: 300,
            crc: 1,
            data: &[0xDE, 0xAD],
        }
        .encode(&mut buf)
        .unwrap();
        assert_eq!(bytes, [1, 0xAC, 0x02, 0x01, 2, 0xDE, 0xAD]);
        // Confirm 1.2.300: tag 4, 1, 2, varint AC 02.
        let bytes = UpdateRequest::Confirm { version: V }
            .encode(&mut buf)
            .unwrap();
        assert_eq!(bytes, [4, 1, 2, 0xAC, 0x02]);
        let report = UpdateReport {
            answers: Answers::Chunk,
            phase: Phase::Receiving,
            next_chunk: 5,
            chunks: 40,
            chunk_size: 1024,
            reason: Reason::OutOfOrder.code(),
            running: V,
            trial: false,
        };
        let mut buf = [0u8; MAX_REPORT_LEN];
        let bytes = report.encode(&mut buf).unwrap();
        assert_eq!(bytes, [1, 1, 5, 40, 0x80, 0x08, 12, 1, 2, 0xAC, 0x02, 0]);
        assert_eq!(UpdateReport::decode(bytes).unwrap(), report);
        assert_eq!(report.reason(), Some(Reason::OutOfOrder));
    }

    #[test]
    fn bad_requests_are_refused_with_their_reason() {
        // Unknown tag.
        assert!(matches!(
            UpdateRequest::decode(&[9]),
            Err(UpdateMessageError::Body(_))
        ));
        // Empty.
        assert!(matches!(
            UpdateRequest::decode(&[]),
            Err(UpdateMessageError::Body(_))
        ));
        // An offer with a short header.
        assert_eq!(
            UpdateRequest::decode(&[0, 1, 0xFF, 1, 0xEE, 0x10]),
            Err(UpdateMessageError::HeaderLength(1))
        );
        // A chunk whose length runs past the message.
        assert!(matches!(
            UpdateRequest::decode(&[1, 0, 0, 10, 1, 2]),
            Err(UpdateMessageError::Body(_))
        ));
        // An empty chunk.
        assert_eq!(
            UpdateRequest::decode(&[1, 0, 0, 0]),
            Err(UpdateMessageError::ChunkLength(0))
        );
        // Trailing bytes after a finish.
        assert_eq!(
            UpdateRequest::decode(&[2, 0, 0]),
            Err(UpdateMessageError::TrailingBytes(2))
        );
        // A report with an unknown phase.
        assert!(matches!(
            UpdateReport::decode(&[1, 9, 0, 0, 0, 0, 1, 0, 0, 0]),
            Err(UpdateMessageError::Body(_))
        ));
        // Too small a buffer.
        assert_eq!(
            UpdateRequest::Finish.encode(&mut []),
            Err(UpdateMessageError::BufferTooSmall)
        );
    }

    #[test]
    fn reason_codes_are_one_to_one() {
        for (i, r) in Reason::ALL.into_iter().enumerate() {
            assert_eq!(usize::from(r.code()), i + 1);
            assert_eq!(Reason::from_code(r.code()), Some(r));
        }
        assert_eq!(Reason::from_code(0), None);
        assert_eq!(Reason::from_code(23), None);
    }

    proptest::proptest! {
        #[test]
        fn decoding_any_bytes_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..1100)) {
            let _ = UpdateRequest::decode(&bytes);
            let _ = UpdateReport::decode(&bytes);
        }

        #[test]
        fn chunks_round_trip(index: u32, crc: u32, data in proptest::collection::vec(proptest::num::u8::ANY, 1..=MQTT_CHUNK as usize)) {
            let request = UpdateRequest::Chunk { index, crc, data: &data };
            let mut buf = [0u8; MAX_REQUEST_LEN];
            let len = request.encode(&mut buf).unwrap().len();
            proptest::prop_assert_eq!(UpdateRequest::decode(&buf[..len]).unwrap(), request);
        }
    }
}
