//! The checks that decide whether an image may run on a node, shared by the node's update
//! receiver and bootloader (which read the image from flash) and the gateway's tools (which
//! hold it in memory). Each failed check is a [`Refusal`] that says which and why.

use core::fmt;

use super::header::{HardwareId, ImageHeader};
use super::signature::{self, Digest, KEY_LEN, SignatureRefusal};
use super::trailer::Trailer;

/// Why a node refuses an image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The image is built for other hardware.
    WrongHardware {
        /// The node's hardware.
        node: HardwareId,
        /// The hardware the image is built for.
        image: HardwareId,
    },
    /// The image's security counter is lower than the running image's: a rollback to a
    /// version with a known weakness.
    SecurityCounterTooLow {
        /// The running image's counter.
        current: u32,
        /// The offered image's counter.
        offered: u32,
    },
    /// Header, payload and trailer do not fit in the node's firmware slot.
    TooLarge {
        /// Bytes of the image.
        size: u32,
        /// Bytes a slot holds.
        capacity: u32,
    },
    /// SHA-256 of header and payload differs from the digest in the trailer: the image was
    /// altered or damaged.
    DigestMismatch {
        /// The digest computed over the bytes.
        computed: Digest,
        /// The digest the trailer carries.
        claimed: Digest,
    },
    /// The trailer names a signing key other than the node's.
    UnknownKey,
    /// The signature does not hold.
    Signature(SignatureRefusal),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::WrongHardware { node, image } => write!(
                f,
                "wrong hardware: the image is built for {image}, this node is {node}"
            ),
            Refusal::SecurityCounterTooLow { current, offered } => write!(
                f,
                "security counter {offered} is lower than the running image's {current} (rollback refused)"
            ),
            Refusal::TooLarge { size, capacity } => write!(
                f,
                "image of {size} bytes does not fit a slot of {capacity} bytes"
            ),
            Refusal::DigestMismatch { .. } => write!(
                f,
                "SHA-256 of header and payload differs from the trailer's: the image was altered or damaged"
            ),
            Refusal::UnknownKey => write!(f, "signed with a key this node does not trust"),
            Refusal::Signature(s) => write!(f, "signature refused: {s}"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for Refusal {}

/// Whether `header` is for `node`, is not a rollback below `current_counter`, and fits a slot
/// of `slot_capacity` bytes (header, payload and trailer).
pub fn check_target(
    header: &ImageHeader,
    node: &HardwareId,
    current_counter: u32,
    slot_capacity: u32,
) -> Result<(), Refusal> {
    if header.hardware != *node {
        return Err(Refusal::WrongHardware {
            node: node.clone(),
            image: header.hardware.clone(),
        });
    }
    if header.security_counter < current_counter {
        return Err(Refusal::SecurityCounterTooLow {
            current: current_counter,
            offered: header.security_counter,
        });
    }
    let size = header.signed_len() + super::TRAILER_LEN as u32;
    if size > slot_capacity {
        return Err(Refusal::TooLarge {
            size,
            capacity: slot_capacity,
        });
    }
    Ok(())
}

/// Whether `computed` (the digest of header and payload) is the trailer's, and the trailer's
/// signature of it holds under `public`.
pub fn check_proof(
    trailer: &Trailer,
    computed: &Digest,
    public: &[u8; KEY_LEN],
) -> Result<(), Refusal> {
    if *computed != trailer.digest {
        return Err(Refusal::DigestMismatch {
            computed: *computed,
            claimed: trailer.digest,
        });
    }
    if trailer.key_hash != signature::key_hash(public) {
        return Err(Refusal::UnknownKey);
    }
    signature::verify(public, computed, &trailer.signature).map_err(Refusal::Signature)
}
