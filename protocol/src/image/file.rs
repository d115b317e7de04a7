//! A whole image in memory, as the gateway's tools handle it: parse one, check it, build and
//! sign one.

use core::fmt;

use super::check::{Refusal, check_proof};
use super::header::{HEADER_LEN, HeaderError, ImageHeader};
use super::signature::{self, KEY_LEN};
use super::trailer::{TRAILER_LEN, Trailer, TrailerError};

/// A parsed image: header, payload and trailer, borrowed from the file's bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageFile<'a> {
    /// The header.
    pub header: ImageHeader,
    /// The header's bytes, padding included (what the digest covers, with the payload).
    pub header_bytes: &'a [u8],
    /// The payload.
    pub payload: &'a [u8],
    /// The trailer.
    pub trailer: Trailer,
}

/// Why bytes are not an image file, or an image cannot be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileError {
    /// The header is malformed.
    Header(HeaderError),
    /// The file ends before the header's image size and the trailer.
    Truncated {
        /// Bytes the header implies.
        needed: usize,
        /// Bytes of the file.
        len: usize,
    },
    /// Bytes follow the trailer.
    TrailingBytes {
        /// How many.
        extra: usize,
    },
    /// The trailer is malformed.
    Trailer(TrailerError),
    /// A byte of the header's padding is not zero.
    PaddingNotZero {
        /// Its offset in the image.
        offset: usize,
    },
    /// The output buffer is too small for the image being built.
    BufferTooSmall {
        /// Bytes needed.
        needed: usize,
    },
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileError::Header(e) => write!(f, "header: {e}"),
            FileError::Truncated { needed, len } => write!(
                f,
                "truncated image: header and trailer need {needed} bytes, the file has {len}"
            ),
            FileError::TrailingBytes { extra } => {
                write!(f, "{extra} bytes follow the trailer")
            }
            FileError::Trailer(e) => write!(f, "trailer: {e}"),
            FileError::PaddingNotZero { offset } => {
                write!(f, "header padding byte at offset {offset} is not zero")
            }
            FileError::BufferTooSmall { needed } => {
                write!(f, "the image needs a buffer of {needed} bytes")
            }
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for FileError {}

/// The outcome of checking an image against a public key, part by part.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageCheck {
    /// SHA-256 of header and payload as computed.
    pub computed_digest: signature::Digest,
    /// Whether the trailer's key hash names the key checked against.
    pub key_matches: bool,
    /// The verdict: `Ok` when digest, key and signature all hold.
    pub verdict: Result<(), Refusal>,
}

impl<'a> ImageFile<'a> {
    /// Parses a whole image file.
    pub fn parse(bytes: &'a [u8]) -> Result<ImageFile<'a>, FileError> {
        let header = ImageHeader::parse(bytes).map_err(FileError::Header)?;
        let signed = header.signed_len() as usize;
        let needed = signed + TRAILER_LEN;
        if bytes.len() < needed {
            return Err(FileError::Truncated {
                needed,
                len: bytes.len(),
            });
        }
        if bytes.len() > needed {
            return Err(FileError::TrailingBytes {
                extra: bytes.len() - needed,
            });
        }
        let header_len = usize::from(header.header_len);
        if let Some(i) = bytes[HEADER_LEN..header_len].iter().position(|&b| b != 0) {
            return Err(FileError::PaddingNotZero {
                offset: HEADER_LEN + i,
            });
        }
        let trailer = Trailer::parse(&bytes[signed..]).map_err(FileError::Trailer)?;
        Ok(ImageFile {
            header,
            header_bytes: &bytes[..header_len],
            payload: &bytes[header_len..signed],
            trailer,
        })
    }

    /// SHA-256 of header and payload.
    pub fn digest(&self) -> signature::Digest {
        let mut h = signature::ImageHasher::new();
        h.update(self.header_bytes);
        h.update(self.payload);
        h.finish()
    }

    /// Checks digest, key hash and signature against `public`.
    pub fn check(&self, public: &[u8; KEY_LEN]) -> ImageCheck {
        let computed_digest = self.digest();
        ImageCheck {
            computed_digest,
            key_matches: self.trailer.key_hash == signature::key_hash(public),
            verdict: check_proof(&self.trailer, &computed_digest, public),
        }
    }

    /// Bytes of an image with a header of `header_len` bytes (padding included) and a payload
    /// of `payload_len` bytes.
    pub fn len_for(header_len: u16, payload_len: usize) -> usize {
        usize::from(header_len) + payload_len + TRAILER_LEN
    }

    /// Builds and signs an image of `payload` into `out`, returning its length. The header's
    /// `image_size` is set from the payload; its `header_len` sets the padding.
    pub fn build(
        header: &ImageHeader,
        payload: &[u8],
        secret: &[u8; KEY_LEN],
        out: &mut [u8],
    ) -> Result<usize, FileError> {
        let size = u32::try_from(payload.len())
            .map_err(|_| FileError::Header(HeaderError::BadImageSize { size: u32::MAX }))?;
        let header = ImageHeader {
            image_size: size,
            ..header.clone()
        };
        let header_bytes = header.encode().map_err(FileError::Header)?;
        let header_len = usize::from(header.header_len);
        let signed = header_len + payload.len();
        let needed = Self::len_for(header.header_len, payload.len());
        let Some(out) = out.get_mut(..needed) else {
            return Err(FileError::BufferTooSmall { needed });
        };
        out[..HEADER_LEN].copy_from_slice(&header_bytes);
        out[HEADER_LEN..header_len].fill(0);
        out[header_len..signed].copy_from_slice(payload);
        let digest = signature::sha256(&out[..signed]);
        let trailer = Trailer {
            key_hash: signature::key_hash(&signature::public_key(secret)),
            digest,
            signature: signature::sign(secret, &digest),
        };
        out[signed..].copy_from_slice(&trailer.encode());
        Ok(needed)
    }
}
