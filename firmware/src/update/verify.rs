//! Checking the image in a slot straight from flash, in small pieces: header, hardware, size,
//! SHA-256 and signature. The bootloader does this before it runs a slot, the receiver before
//! it stages one.

use core::fmt;

use embedded_storage::nor_flash::NorFlash;
use tianzhong_protocol::image::{
    self, HEADER_LEN, HardwareId, HeaderError, ImageHasher, ImageHeader, Refusal, TRAILER_LEN,
    Trailer, TrailerError,
};

use super::flash::{self, FlashError};
use super::layout::{FlashLayout, Slot};

/// What a node trusts: the public key its images must be signed with, and its own hardware.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trust {
    /// The ed25519 public key of the firmware signer.
    pub public_key: [u8; 32],
    /// This node's hardware model and revision.
    pub hardware: HardwareId,
}

/// Why a slot does not hold a bootable image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SlotError {
    /// Reading the flash failed.
    Flash(FlashError),
    /// The header is malformed (an erased or half-written slot ends up here).
    Header(HeaderError),
    /// The trailer is malformed.
    Trailer(TrailerError),
    /// The image is well-formed but refused.
    Refused(Refusal),
}

impl fmt::Display for SlotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SlotError::Flash(e) => write!(f, "{e}"),
            SlotError::Header(e) => write!(f, "header: {e}"),
            SlotError::Trailer(e) => write!(f, "trailer: {e}"),
            SlotError::Refused(r) => write!(f, "{r}"),
        }
    }
}

impl From<FlashError> for SlotError {
    fn from(e: FlashError) -> SlotError {
        SlotError::Flash(e)
    }
}

/// Reads and parses the header of the image in `slot`.
pub fn read_header<F: NorFlash>(
    flash: &mut F,
    layout: &FlashLayout,
    slot: Slot,
) -> Result<ImageHeader, SlotError> {
    let mut b = [0u8; HEADER_LEN];
    flash::read(flash, layout.slot(slot), &mut b)?;
    ImageHeader::parse(&b).map_err(SlotError::Header)
}

/// SHA-256 of `len` bytes from `offset`, read 256 bytes at a time.
pub fn hash_region<F: NorFlash>(
    flash: &mut F,
    offset: u32,
    len: u32,
) -> Result<[u8; 32], FlashError> {
    let mut hasher = ImageHasher::new();
    let mut buf = [0u8; 256];
    let mut done = 0u32;
    while done < len {
        let n = (len - done).min(buf.len() as u32) as usize;
        flash::read(flash, offset + done, &mut buf[..n])?;
        hasher.update(&buf[..n]);
        done += n as u32;
    }
    Ok(hasher.finish())
}

/// An image that passed every check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    /// Its header.
    pub header: ImageHeader,
    /// SHA-256 of its header and payload.
    pub digest: [u8; 32],
}

/// Checks the image in `slot` completely: header well-formed and for this hardware, no lower
/// security counter than `min_counter`, fits the slot, digest and signature hold.
pub fn verify_slot<F: NorFlash>(
    flash: &mut F,
    layout: &FlashLayout,
    slot: Slot,
    trust: &Trust,
    min_counter: u32,
) -> Result<Verified, SlotError> {
    let header = read_header(flash, layout, slot)?;
    image::check_target(&header, &trust.hardware, min_counter, layout.slot_size)
        .map_err(SlotError::Refused)?;
    let start = layout.slot(slot);
    let signed = header.signed_len();
    let mut t = [0u8; TRAILER_LEN];
    flash::read(flash, start + signed, &mut t)?;
    let trailer = Trailer::parse(&t).map_err(SlotError::Trailer)?;
    let digest = hash_region(flash, start, signed)?;
    image::check_proof(&trailer, &digest, &trust.public_key).map_err(SlotError::Refused)?;
    Ok(Verified { header, digest })
}
