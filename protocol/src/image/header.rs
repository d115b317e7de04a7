//! The image header: the first [`HEADER_LEN`] bytes of an image.
//!
//! # Layout (little-endian)
//!
//! | offset | bytes | field | rule when parsing |
//! |---|---|---|---|
//! | 0 | 4 | magic `TZFW` | exactly |
//! | 4 | 2 | format version ([`FORMAT_VERSION`]) | exactly |
//! | 6 | 2 | header length: these 64 bytes and zero padding up to the payload | 64, 128, 256, 512 or 1024 |
//! | 8 | 16 | hardware model, ASCII, NUL-padded (as the node profile's model register) | printable ASCII, at least one character, nothing after the first NUL |
//! | 24 | 2 | hardware revision | any |
//! | 26 | 1 | firmware version: major | any |
//! | 27 | 1 | firmware version: minor | any |
//! | 28 | 2 | firmware version: patch | any |
//! | 30 | 2 | reserved | 0 |
//! | 32 | 4 | security counter: an image is refused by a node whose image has a higher one | any |
//! | 36 | 4 | image size: payload bytes between header and trailer | 1 ..= [`MAX_IMAGE_SIZE`] |
//! | 40 | 24 | reserved | all 0 |
//!
//! Reserved bytes must be zero so that a later format version can give them a meaning
//! without an old node misreading them.
//!
//! The padding after the 64 bytes lets the payload start where the processor needs it: a
//! Cortex-M vector table at the start of the payload must be aligned to its size rounded up to
//! a power of two (512 bytes on the STM32F405), so its images use a 512-byte header, as
//! MCUboot's do. The padding is zero and covered by the digest.

use core::fmt;

use crate::registers::profile::{FirmwareVersion, IDENTITY_STRING_LEN, IdentityString};

/// Bytes of the header's fields; the header with its padding is [`ImageHeader::header_len`].
pub const HEADER_LEN: usize = 64;

/// Longest header with padding.
pub const MAX_HEADER_LEN: u16 = 1024;

/// The first four bytes of every image.
pub const MAGIC: [u8; 4] = *b"TZFW";

/// The header layout this crate reads and writes.
pub const FORMAT_VERSION: u16 = 1;

/// Largest payload a header may announce (16 MiB): far above any node's slot, low enough that
/// offsets computed from it never overflow a `u32`.
pub const MAX_IMAGE_SIZE: u32 = 16 * 1024 * 1024;

/// The hardware an image is built for: the node profile's model string and hardware revision.
/// A node refuses an image unless both equal its own.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HardwareId {
    /// Model, e.g. `TZ-GAS-01`: printable ASCII, 1 to 16 characters.
    pub model: IdentityString,
    /// Hardware revision.
    pub revision: u16,
}

impl HardwareId {
    /// A hardware id, or why `model` cannot be one.
    pub fn new(model: &str, revision: u16) -> Result<HardwareId, HeaderError> {
        if model.is_empty() {
            return Err(HeaderError::ModelEmpty);
        }
        if let Some(position) = model.bytes().position(|b| !is_model_byte(b)) {
            return Err(HeaderError::ModelNotPrintableAscii { position });
        }
        let model = IdentityString::try_from(model)
            .map_err(|_| HeaderError::ModelTooLong { len: model.len() })?;
        Ok(HardwareId { model, revision })
    }
}

impl fmt::Display for HardwareId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} rev {}", self.model, self.revision)
    }
}

fn is_model_byte(b: u8) -> bool {
    (0x20..=0x7E).contains(&b)
}

/// A parsed image header.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ImageHeader {
    /// The hardware the image is built for.
    pub hardware: HardwareId,
    /// Firmware version (semantic versioning triple, as in the node profile).
    pub version: FirmwareVersion,
    /// Monotonic anti-rollback counter: raised when an image fixes a security problem, so
    /// that nodes refuse the older, vulnerable images.
    pub security_counter: u32,
    /// Payload bytes.
    pub image_size: u32,
    /// Bytes from the start of the image to the payload: the 64 bytes of fields and zero
    /// padding (64, 128, 256, 512 or 1024).
    pub header_len: u16,
}

fn header_len_ok(len: u16) -> bool {
    len.is_power_of_two() && (HEADER_LEN as u16..=MAX_HEADER_LEN).contains(&len)
}

/// Why bytes are not a valid header, or a header cannot be encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderError {
    /// Fewer bytes than a header.
    TooShort {
        /// Bytes given.
        len: usize,
    },
    /// The first four bytes are not `TZFW`: not a Tianzhong image.
    BadMagic {
        /// What they are.
        found: [u8; 4],
    },
    /// A format version this build does not read.
    UnsupportedFormatVersion {
        /// The version in the header.
        found: u16,
    },
    /// The header length field is not 64, 128, 256, 512 or 1024.
    BadHeaderLength {
        /// The length in the header.
        found: u16,
    },
    /// The hardware model is empty.
    ModelEmpty,
    /// The hardware model has a byte that is not printable ASCII (or a character after the
    /// NUL padding began).
    ModelNotPrintableAscii {
        /// Index of the byte in the model.
        position: usize,
    },
    /// The hardware model is longer than 16 characters.
    ModelTooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// A reserved byte is not zero.
    ReservedNotZero {
        /// Offset of the byte in the header.
        offset: usize,
    },
    /// The image size is 0 or above [`MAX_IMAGE_SIZE`].
    BadImageSize {
        /// The size in the header.
        size: u32,
    },
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderError::TooShort { len } => {
                write!(f, "image header needs {HEADER_LEN} bytes, got {len}")
            }
            HeaderError::BadMagic { found } => write!(
                f,
                "not a Tianzhong firmware image: magic is {found:02x?}, expected \"TZFW\""
            ),
            HeaderError::UnsupportedFormatVersion { found } => write!(
                f,
                "image format version {found} is not supported (this build reads {FORMAT_VERSION})"
            ),
            HeaderError::BadHeaderLength { found } => write!(
                f,
                "header length field is {found}, expected 64, 128, 256, 512 or 1024"
            ),
            HeaderError::ModelEmpty => write!(f, "hardware model is empty"),
            HeaderError::ModelNotPrintableAscii { position } => {
                write!(f, "hardware model byte {position} is not printable ASCII")
            }
            HeaderError::ModelTooLong { len } => write!(
                f,
                "hardware model is {len} bytes, at most {IDENTITY_STRING_LEN} fit"
            ),
            HeaderError::ReservedNotZero { offset } => {
                write!(f, "reserved header byte at offset {offset} is not zero")
            }
            HeaderError::BadImageSize { size } => {
                write!(f, "image size {size} is outside 1..={MAX_IMAGE_SIZE} bytes")
            }
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for HeaderError {}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

const MODEL: core::ops::Range<usize> = 8..8 + IDENTITY_STRING_LEN;

impl ImageHeader {
    /// Parses the first [`HEADER_LEN`] bytes of `bytes` (more may follow: the payload).
    pub fn parse(bytes: &[u8]) -> Result<ImageHeader, HeaderError> {
        let Some(b) = bytes.get(..HEADER_LEN) else {
            return Err(HeaderError::TooShort { len: bytes.len() });
        };
        if b[0..4] != MAGIC {
            return Err(HeaderError::BadMagic {
                found: [b[0], b[1], b[2], b[3]],
            });
        }
        let format = u16_at(b, 4);
        if format != FORMAT_VERSION {
            return Err(HeaderError::UnsupportedFormatVersion { found: format });
        }
        let header_len = u16_at(b, 6);
        if !header_len_ok(header_len) {
            return Err(HeaderError::BadHeaderLength { found: header_len });
        }
        let model_bytes = &b[MODEL];
        let len = model_bytes
            .iter()
            .position(|&c| c == 0)
            .unwrap_or(model_bytes.len());
        if len == 0 {
            return Err(HeaderError::ModelEmpty);
        }
        if let Some(position) = model_bytes[..len].iter().position(|&c| !is_model_byte(c)) {
            return Err(HeaderError::ModelNotPrintableAscii { position });
        }
        if let Some(extra) = model_bytes[len..].iter().position(|&c| c != 0) {
            return Err(HeaderError::ModelNotPrintableAscii {
                position: len + extra,
            });
        }
        let mut model = IdentityString::new();
        for &c in &model_bytes[..len] {
            // Cannot fail: at most 16 bytes, all ASCII.
            let _ = model.push(char::from(c));
        }
        for offset in (30..32).chain(40..HEADER_LEN) {
            if b[offset] != 0 {
                return Err(HeaderError::ReservedNotZero { offset });
            }
        }
        let image_size = u32_at(b, 36);
        if image_size == 0 || image_size > MAX_IMAGE_SIZE {
            return Err(HeaderError::BadImageSize { size: image_size });
        }
        Ok(ImageHeader {
            hardware: HardwareId {
                model,
                revision: u16_at(b, 24),
            },
            version: FirmwareVersion {
                major: b[26],
                minor: b[27],
                patch: u16_at(b, 28),
            },
            security_counter: u32_at(b, 32),
            image_size,
            header_len,
        })
    }

    /// The header's 64 bytes of fields (without padding). Fails only for a header that
    /// [`ImageHeader::parse`] would refuse (an empty or non-ASCII model, an image size or header
    /// length out of range).
    pub fn encode(&self) -> Result<[u8; HEADER_LEN], HeaderError> {
        // Re-check what the public fields allow to be wrong.
        let hardware = HardwareId::new(&self.hardware.model, self.hardware.revision)?;
        if self.image_size == 0 || self.image_size > MAX_IMAGE_SIZE {
            return Err(HeaderError::BadImageSize {
                size: self.image_size,
            });
        }
        if !header_len_ok(self.header_len) {
            return Err(HeaderError::BadHeaderLength {
                found: self.header_len,
            });
        }
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&MAGIC);
        b[4..6].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[6..8].copy_from_slice(&self.header_len.to_le_bytes());
        b[8..8 + hardware.model.len()].copy_from_slice(hardware.model.as_bytes());
        b[24..26].copy_from_slice(&hardware.revision.to_le_bytes());
        b[26] = self.version.major;
        b[27] = self.version.minor;
        b[28..30].copy_from_slice(&self.version.patch.to_le_bytes());
        b[32..36].copy_from_slice(&self.security_counter.to_le_bytes());
        b[36..40].copy_from_slice(&self.image_size.to_le_bytes());
        Ok(b)
    }

    /// Bytes of header (padding included) and payload: what the digest covers, and where the
    /// trailer starts.
    pub fn signed_len(&self) -> u32 {
        // Cannot overflow: both are bounded once parsed or encoded, and clamped here.
        u32::from(self.header_len.min(MAX_HEADER_LEN)) + self.image_size.min(MAX_IMAGE_SIZE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example header of the protocol tests, with every field a distinct value.
    fn sample() -> ImageHeader {
        ImageHeader {
            hardware: HardwareId::new("TZ-GAS-01", 3).unwrap(),
            version: FirmwareVersion {
                major: 1,
                minor: 2,
                patch: 0x0304,
            },
            security_counter: 0x0506_0708,
            image_size: 0x0001_2345,
            header_len: 64,
        }
    }

    #[test]
    fn hand_checked_bytes() {
        // Written out by hand from the layout table, not from the encoder.
        let mut expected = [0u8; HEADER_LEN];
        expected[0..4].copy_from_slice(b"TZFW");
        expected[4..8].copy_from_slice(&[0x01, 0x00, 0x40, 0x00]);
        expected[8..17].copy_from_slice(b"TZ-GAS-01");
        expected[24..26].copy_from_slice(&[0x03, 0x00]);
        expected[26..30].copy_from_slice(&[0x01, 0x02, 0x04, 0x03]);
        expected[32..36].copy_from_slice(&[0x08, 0x07, 0x06, 0x05]);
        expected[36..40].copy_from_slice(&[0x45, 0x23, 0x01, 0x00]);
        assert_eq!(sample().encode().unwrap(), expected);
        assert_eq!(ImageHeader::parse(&expected).unwrap(), sample());
    }

    #[test]
    fn each_field_refused_with_its_reason() {
        let good = sample().encode().unwrap();
        let with = |at: usize, v: u8| {
            let mut b = good;
            b[at] = v;
            ImageHeader::parse(&b)
        };
        assert_eq!(
            ImageHeader::parse(&good[..63]),
            Err(HeaderError::TooShort { len: 63 })
        );
        assert_eq!(
            with(0, b'X'),
            Err(HeaderError::BadMagic { found: *b"XZFW" })
        );
        assert_eq!(
            with(4, 2),
            Err(HeaderError::UnsupportedFormatVersion { found: 2 })
        );
        assert_eq!(
            with(6, 0x41),
            Err(HeaderError::BadHeaderLength { found: 0x41 })
        );
        assert_eq!(
            with(6, 0x20),
            Err(HeaderError::BadHeaderLength { found: 0x20 })
        );
        // 512: the STM32F405's vector-table alignment.
        let mut padded = good;
        padded[6..8].copy_from_slice(&[0x00, 0x02]);
        assert_eq!(ImageHeader::parse(&padded).unwrap().header_len, 512);
        assert_eq!(
            ImageHeader::parse(&padded).unwrap().signed_len(),
            512 + 0x1_2345
        );
        assert_eq!(with(8, 0), Err(HeaderError::ModelEmpty));
        assert_eq!(
            with(9, 0x80),
            Err(HeaderError::ModelNotPrintableAscii { position: 1 })
        );
        // A character after the NUL padding began.
        assert_eq!(
            with(20, b'A'),
            Err(HeaderError::ModelNotPrintableAscii { position: 12 })
        );
        assert_eq!(
            with(31, 1),
            Err(HeaderError::ReservedNotZero { offset: 31 })
        );
        assert_eq!(
            with(63, 1),
            Err(HeaderError::ReservedNotZero { offset: 63 })
        );
        let mut zero = good;
        zero[36..40].fill(0);
        assert_eq!(
            ImageHeader::parse(&zero),
            Err(HeaderError::BadImageSize { size: 0 })
        );
        zero[36..40].copy_from_slice(&(MAX_IMAGE_SIZE + 1).to_le_bytes());
        assert_eq!(
            ImageHeader::parse(&zero),
            Err(HeaderError::BadImageSize {
                size: MAX_IMAGE_SIZE + 1
            })
        );
    }

    #[test]
    fn model_rules_when_building() {
        assert_eq!(HardwareId::new("", 0), Err(HeaderError::ModelEmpty));
        assert_eq!(
            HardwareId::new("天中", 0),
            Err(HeaderError::ModelNotPrintableAscii { position: 0 })
        );
        assert_eq!(
            HardwareId::new("ABCDEFGHIJKLMNOPQ", 0),
            Err(HeaderError::ModelTooLong { len: 17 })
        );
        assert!(HardwareId::new("ABCDEFGHIJKLMNOP", 0).is_ok());
    }
}
