//! The trailer: TLVs behind the payload that carry the proof, after MCUboot's TLV area.
//!
//! # Layout (little-endian)
//!
//! | offset | bytes | content |
//! |---|---|---|
//! | 0 | 4 | magic `TZTL` |
//! | 4 | 2 | trailer length in bytes, these 8 included ([`TRAILER_LEN`]) |
//! | 6 | 2 | reserved, 0 |
//! | 8 | … | TLVs, back to back |
//!
//! Each TLV:
//!
//! | offset | bytes | content |
//! |---|---|---|
//! | 0 | 1 | type |
//! | 1 | 1 | reserved, 0 |
//! | 2 | 2 | value length |
//! | 4 | length | value |
//!
//! | type | value | length |
//! |---|---|---|
//! | [`TLV_KEY_HASH`] `0x01` | SHA-256 of the signer's public key (MCUboot's `KEYHASH`) | 32 |
//! | [`TLV_SHA256`] `0x10` | SHA-256 of header and payload | 32 |
//! | [`TLV_ED25519`] `0x24` | ed25519 signature of that digest (MCUboot's `ED25519` type) | 64 |
//!
//! Each type appears exactly once. An unknown type is refused rather than skipped: a node
//! must not run an image whose trailer says something it cannot check. The encoder writes
//! them in the order of the table, which gives every trailer the same [`TRAILER_LEN`].

use core::fmt;

use super::signature::{DIGEST_LEN, Digest, KeyHash, SIGNATURE_LEN};

/// The first four bytes of a trailer.
pub const MAGIC: [u8; 4] = *b"TZTL";
/// TLV type: SHA-256 of the signing public key.
pub const TLV_KEY_HASH: u8 = 0x01;
/// TLV type: SHA-256 of header and payload.
pub const TLV_SHA256: u8 = 0x10;
/// TLV type: ed25519 signature.
pub const TLV_ED25519: u8 = 0x24;

const INFO_LEN: usize = 8;
const TLV_HEAD: usize = 4;

/// Bytes of a trailer: the info block and the three TLVs.
pub const TRAILER_LEN: usize = INFO_LEN + 2 * (TLV_HEAD + DIGEST_LEN) + TLV_HEAD + SIGNATURE_LEN;

/// A parsed trailer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trailer {
    /// SHA-256 of the public key the signer says it used.
    pub key_hash: KeyHash,
    /// SHA-256 of header and payload.
    pub digest: Digest,
    /// ed25519 signature of `digest`.
    pub signature: [u8; SIGNATURE_LEN],
}

/// Why bytes are not a valid trailer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrailerError {
    /// Fewer bytes than the trailer needs.
    TooShort {
        /// Bytes needed.
        needed: usize,
        /// Bytes given.
        len: usize,
    },
    /// The first four bytes are not `TZTL`.
    BadMagic {
        /// What they are.
        found: [u8; 4],
    },
    /// The trailer length field is not [`TRAILER_LEN`].
    BadLength {
        /// The length field.
        found: u16,
    },
    /// A reserved byte is not zero.
    ReservedNotZero {
        /// Offset of the byte in the trailer.
        offset: usize,
    },
    /// A TLV runs past the end of the trailer.
    TlvOverrun {
        /// Offset of the TLV in the trailer.
        offset: usize,
    },
    /// A TLV type this format does not define.
    UnknownTlv {
        /// The type.
        tlv_type: u8,
        /// Offset of the TLV in the trailer.
        offset: usize,
    },
    /// A TLV whose length is wrong for its type.
    BadTlvLength {
        /// The type.
        tlv_type: u8,
        /// The length it gives.
        len: u16,
    },
    /// A TLV type that appears twice.
    DuplicateTlv {
        /// The type.
        tlv_type: u8,
    },
    /// A required TLV is missing.
    MissingTlv {
        /// The type.
        tlv_type: u8,
    },
}

impl fmt::Display for TrailerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrailerError::TooShort { needed, len } => {
                write!(f, "trailer needs {needed} bytes, got {len}")
            }
            TrailerError::BadMagic { found } => write!(
                f,
                "no image trailer: magic is {found:02x?}, expected \"TZTL\""
            ),
            TrailerError::BadLength { found } => {
                write!(f, "trailer length field is {found}, expected {TRAILER_LEN}")
            }
            TrailerError::ReservedNotZero { offset } => {
                write!(f, "reserved trailer byte at offset {offset} is not zero")
            }
            TrailerError::TlvOverrun { offset } => {
                write!(
                    f,
                    "TLV at trailer offset {offset} runs past the trailer's end"
                )
            }
            TrailerError::UnknownTlv { tlv_type, offset } => write!(
                f,
                "unknown TLV type 0x{tlv_type:02x} at trailer offset {offset}"
            ),
            TrailerError::BadTlvLength { tlv_type, len } => {
                write!(
                    f,
                    "TLV type 0x{tlv_type:02x} has length {len}, which is wrong for it"
                )
            }
            TrailerError::DuplicateTlv { tlv_type } => {
                write!(f, "TLV type 0x{tlv_type:02x} appears twice")
            }
            TrailerError::MissingTlv { tlv_type } => {
                write!(f, "TLV type 0x{tlv_type:02x} is missing")
            }
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for TrailerError {}

fn expected_len(tlv_type: u8) -> Option<usize> {
    match tlv_type {
        TLV_KEY_HASH | TLV_SHA256 => Some(DIGEST_LEN),
        TLV_ED25519 => Some(SIGNATURE_LEN),
        _ => None,
    }
}

impl Trailer {
    /// Parses the first [`TRAILER_LEN`] bytes of `bytes`; more may follow (the rest of a
    /// flash slot).
    pub fn parse(bytes: &[u8]) -> Result<Trailer, TrailerError> {
        let Some(info) = bytes.get(..INFO_LEN) else {
            return Err(TrailerError::TooShort {
                needed: INFO_LEN,
                len: bytes.len(),
            });
        };
        if info[0..4] != MAGIC {
            return Err(TrailerError::BadMagic {
                found: [info[0], info[1], info[2], info[3]],
            });
        }
        let len = u16::from_le_bytes([info[4], info[5]]);
        if usize::from(len) != TRAILER_LEN {
            return Err(TrailerError::BadLength { found: len });
        }
        if let Some(i) = info[6..8].iter().position(|&r| r != 0) {
            return Err(TrailerError::ReservedNotZero { offset: 6 + i });
        }
        let Some(b) = bytes.get(..TRAILER_LEN) else {
            return Err(TrailerError::TooShort {
                needed: TRAILER_LEN,
                len: bytes.len(),
            });
        };
        let (mut key_hash, mut digest, mut signature) = (None, None, None);
        let mut at = INFO_LEN;
        while at < TRAILER_LEN {
            let Some(head) = b.get(at..at + TLV_HEAD) else {
                return Err(TrailerError::TlvOverrun { offset: at });
            };
            let (tlv_type, value_len) = (head[0], u16::from_le_bytes([head[2], head[3]]));
            let Some(want) = expected_len(tlv_type) else {
                return Err(TrailerError::UnknownTlv {
                    tlv_type,
                    offset: at,
                });
            };
            if head[1] != 0 {
                return Err(TrailerError::ReservedNotZero { offset: at + 1 });
            }
            if usize::from(value_len) != want {
                return Err(TrailerError::BadTlvLength {
                    tlv_type,
                    len: value_len,
                });
            }
            let start = at + TLV_HEAD;
            let Some(value) = b.get(start..start + want) else {
                return Err(TrailerError::TlvOverrun { offset: at });
            };
            let duplicate = match tlv_type {
                TLV_KEY_HASH => key_hash.replace(value).is_some(),
                TLV_SHA256 => digest.replace(value).is_some(),
                _ => signature.replace(value).is_some(),
            };
            if duplicate {
                return Err(TrailerError::DuplicateTlv { tlv_type });
            }
            at = start + want;
        }
        let missing = |tlv_type| TrailerError::MissingTlv { tlv_type };
        let mut out = Trailer {
            key_hash: [0; DIGEST_LEN],
            digest: [0; DIGEST_LEN],
            signature: [0; SIGNATURE_LEN],
        };
        out.key_hash
            .copy_from_slice(key_hash.ok_or(missing(TLV_KEY_HASH))?);
        out.digest
            .copy_from_slice(digest.ok_or(missing(TLV_SHA256))?);
        out.signature
            .copy_from_slice(signature.ok_or(missing(TLV_ED25519))?);
        Ok(out)
    }

    /// The trailer's bytes.
    pub fn encode(&self) -> [u8; TRAILER_LEN] {
        let mut b = [0u8; TRAILER_LEN];
        b[0..4].copy_from_slice(&MAGIC);
        b[4..6].copy_from_slice(&(TRAILER_LEN as u16).to_le_bytes());
        let mut at = INFO_LEN;
        for (tlv_type, value) in [
            (TLV_KEY_HASH, &self.key_hash[..]),
            (TLV_SHA256, &self.digest[..]),
            (TLV_ED25519, &self.signature[..]),
        ] {
            b[at] = tlv_type;
            b[at + 2..at + 4].copy_from_slice(&(value.len() as u16).to_le_bytes());
            b[at + TLV_HEAD..at + TLV_HEAD + value.len()].copy_from_slice(value);
            at += TLV_HEAD + value.len();
        }
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Trailer {
        Trailer {
            key_hash: [0x11; 32],
            digest: [0x22; 32],
            signature: [0x33; 64],
        }
    }

    #[test]
    fn hand_checked_bytes() {
        let b = sample().encode();
        assert_eq!(TRAILER_LEN, 148);
        assert_eq!(&b[0..8], b"TZTL\x94\x00\x00\x00");
        assert_eq!(&b[8..12], &[0x01, 0, 32, 0]);
        assert_eq!(&b[44..48], &[0x10, 0, 32, 0]);
        assert_eq!(&b[80..84], &[0x24, 0, 64, 0]);
        assert!(b[12..44].iter().all(|&x| x == 0x11));
        assert!(b[48..80].iter().all(|&x| x == 0x22));
        assert!(b[84..148].iter().all(|&x| x == 0x33));
        assert_eq!(Trailer::parse(&b), Ok(sample()));
    }

    #[test]
    fn tlvs_in_any_order_but_each_once() {
        let good = sample().encode();
        // Swap the two 36-byte TLVs: still valid.
        let mut swapped = good;
        swapped[8..44].copy_from_slice(&good[44..80]);
        swapped[44..80].copy_from_slice(&good[8..44]);
        assert_eq!(Trailer::parse(&swapped), Ok(sample()));
        // Key hash twice, digest missing.
        let mut dup = good;
        dup[44..80].copy_from_slice(&good[8..44]);
        assert_eq!(
            Trailer::parse(&dup),
            Err(TrailerError::DuplicateTlv {
                tlv_type: TLV_KEY_HASH
            })
        );
    }

    #[test]
    fn malformed_refused_with_reason() {
        let good = sample().encode();
        let with = |at: usize, v: u8| {
            let mut b = good;
            b[at] = v;
            Trailer::parse(&b)
        };
        assert_eq!(
            Trailer::parse(&good[..5]),
            Err(TrailerError::TooShort { needed: 8, len: 5 })
        );
        assert_eq!(
            Trailer::parse(&good[..100]),
            Err(TrailerError::TooShort {
                needed: TRAILER_LEN,
                len: 100
            })
        );
        assert_eq!(
            with(3, b'X'),
            Err(TrailerError::BadMagic { found: *b"TZTX" })
        );
        assert_eq!(with(4, 0x95), Err(TrailerError::BadLength { found: 0x95 }));
        assert_eq!(with(7, 1), Err(TrailerError::ReservedNotZero { offset: 7 }));
        assert_eq!(
            with(8, 0x7F),
            Err(TrailerError::UnknownTlv {
                tlv_type: 0x7F,
                offset: 8
            })
        );
        assert_eq!(with(9, 1), Err(TrailerError::ReservedNotZero { offset: 9 }));
        assert_eq!(
            with(10, 31),
            Err(TrailerError::BadTlvLength {
                tlv_type: TLV_KEY_HASH,
                len: 31
            })
        );
        // Every single-byte corruption of the framing either parses the same or is refused;
        // none panics. The values (12..44, 48..80, 84..148) are opaque and always parse.
        for at in 0..TRAILER_LEN {
            for v in [0x00, 0x01, 0x10, 0x24, 0x40, 0x80, 0xFF] {
                let _ = with(at, v);
            }
        }
    }
}
