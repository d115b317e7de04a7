//! Signed firmware images: what the gateway sends a node and what the node's bootloader
//! checks before it runs anything.
//!
//! In the spirit of MCUboot: a fixed header in front of the payload, and a trailer of TLVs
//! (type, length, value) behind it that carries the hash and the signature. The header says
//! what the image is for (hardware model and revision), what it is (firmware version) and how
//! it ranks against older images (the monotonic security counter); the trailer proves it.
//!
//! # Module map
//!
//! | module | what |
//! |---|---|
//! | [`header`] | the 64-byte image header: magic, format version, hardware, firmware version, security counter, size |
//! | [`trailer`] | the TLV trailer: key hash, SHA-256, ed25519 signature |
//! | [`signature`] | the digest, signing and strict verification (sha2 and ed25519-dalek) |
//! | [`check`] | the checks a node applies, each failure a [`Refusal`] with its reason |
//! | [`file`](mod@file) | a whole image in memory: parsing, checking and building one |
//!
//! # Image layout
//!
//! An image file, and the contents of a firmware slot once an image is written to it, are
//! these three parts back to back:
//!
//! | offset | bytes | part |
//! |---|---|---|
//! | 0 | [`HEADER_LEN`] (64) | [`ImageHeader`] |
//! | 64 | `header_len` − 64 | zero padding, so the payload starts aligned (512 bytes for a Cortex-M4 vector table) |
//! | `header_len` | `image_size` | payload: the firmware as linked |
//! | `header_len` + `image_size` | [`TRAILER_LEN`] (148) | [`Trailer`] |
//!
//! The signature is ed25519 (RFC 8032, pure) over the 32-byte SHA-256 digest of header
//! (padding included) and payload, as MCUboot signs the image hash: a node hashes its slot in small pieces straight
//! from flash and then verifies a 32-byte message, so it never holds the image in RAM. The
//! trailer itself is not signed; everything in it is either checked against the signature
//! (the digest) or only a hint (the key hash).
//!
//! Parsing is total: any byte string either parses or yields an error that names what is
//! wrong, and nothing here panics on input.

pub mod check;
pub mod file;
pub mod header;
pub mod signature;
pub mod trailer;

pub use check::{Refusal, check_proof, check_target};
pub use file::{FileError, ImageCheck, ImageFile};
pub use header::{HEADER_LEN, HardwareId, HeaderError, ImageHeader};
pub use signature::{Digest, ImageHasher, KeyHash, SIGNATURE_LEN};
pub use trailer::{TRAILER_LEN, Trailer, TrailerError};
