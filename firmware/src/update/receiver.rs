//! The update receiver: takes an offered image chunk by chunk into the slot the node does not
//! run from, checks it, and stages it for the next boot.
//!
//! Transport-independent: the Modbus file-record functions or an MQTT topic carry the offer
//! and the chunks, and the acknowledgements back. Every call takes the flash, so the receiver
//! holds nothing the flash does not also say: after a reset, [`UpdateReceiver::offer`] of the
//! same image finds the transfer where it stopped.
//!
//! # Chunks
//!
//! The image (header, payload, trailer) is cut into chunks of the offered chunk size: chunk
//! `i` holds bytes `i * size ..` of the image, the last one may be shorter. The chunk size is a
//! power of two from 16 to 1024 that is a multiple of the flash's write unit and divides its
//! erase sector, so a chunk never straddles two sectors. Each chunk carries a CRC-32C
//! (Castagnoli, as the uplink frame) of its bytes. Chunks are taken in order; a chunk already
//! written is acknowledged again without being written (its acknowledgement was lost), one
//! beyond the next expected is refused with the index the receiver needs.
//!
//! # Flash operations, in order
//!
//! | step | operation |
//! |---|---|
//! | offer (new transfer) | append *abandon* to the boot state if the target slot holds a new image; erase the transfer sector; write the manifest |
//! | offer (resume) | if the next chunk's area is written but unrecorded (a cut during its write or its record): append a rewind to the chunk starting its sector |
//! | each chunk | erase the slot's sector if the chunk starts one; write the chunk; append a progress record |
//! | finish | read everything back and check it; append *stage* to the boot state |

use core::fmt;

use embedded_storage::nor_flash::NorFlash;
use tianzhong_protocol::crc::FRAME as CRC32C;
use tianzhong_protocol::image::{
    HEADER_LEN, HeaderError, ImageHeader, Refusal, TRAILER_LEN, TrailerError, check_target,
};
use tianzhong_protocol::registers::profile::FirmwareVersion;

use super::boot_state::BootState;
use super::flash::{self, FlashError};
use super::layout::{FlashLayout, Slot};
use super::transfer::{Manifest, TransferLog};
use super::verify::{self, SlotError, Trust};

/// Smallest chunk size.
pub const MIN_CHUNK: u16 = 16;
/// Largest chunk size.
pub const MAX_CHUNK: u16 = 1024;

/// Why the receiver did not take an offer, a chunk or the finished image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpdateError {
    /// The image is refused: wrong hardware, lower security counter, too large, altered, or
    /// not signed with the node's key.
    Refused(Refusal),
    /// The offered header is malformed.
    Header(HeaderError),
    /// The received trailer is malformed.
    Trailer(TrailerError),
    /// The chunk size is not a power of two in 16..=1024 fitting the flash's write unit and
    /// erase sector.
    BadChunkSize {
        /// The size offered.
        size: u16,
    },
    /// The layout does not fit the flash.
    Layout(super::layout::LayoutError),
    /// The node runs an image on trial: it must be confirmed (or rolled back) before another
    /// update.
    TrialPending {
        /// The trial's slot.
        slot: Slot,
    },
    /// A chunk or finish without an accepted offer.
    NoTransfer,
    /// A chunk past the next one expected.
    OutOfOrder {
        /// The chunk the receiver needs next.
        expected: u32,
        /// The chunk sent.
        got: u32,
    },
    /// A chunk index past the image's last chunk.
    NoSuchChunk {
        /// The index sent.
        index: u32,
        /// Chunks in the image.
        chunks: u32,
    },
    /// A chunk of the wrong length.
    ChunkLength {
        /// The chunk's index.
        index: u32,
        /// Bytes it must have.
        expected: usize,
        /// Bytes it has.
        got: usize,
    },
    /// A chunk whose CRC does not match its bytes: damaged on the way.
    ChunkCrc {
        /// The chunk's index.
        index: u32,
        /// CRC sent.
        received: u32,
        /// CRC of the bytes received.
        computed: u32,
    },
    /// Finish before every chunk is in.
    Incomplete {
        /// Chunks written.
        written: u32,
        /// Chunks in the image.
        chunks: u32,
    },
    /// The header written to the slot differs from the one offered.
    HeaderMismatch,
    /// The image's SHA-256 differs from the one offered.
    OfferDigestMismatch,
    /// A flash operation failed.
    Flash(FlashError),
}

impl fmt::Display for UpdateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpdateError::Refused(r) => write!(f, "image refused: {r}"),
            UpdateError::Header(e) => write!(f, "offered header: {e}"),
            UpdateError::Trailer(e) => write!(f, "image trailer: {e}"),
            UpdateError::BadChunkSize { size } => write!(
                f,
                "chunk size {size} must be a power of two in {MIN_CHUNK}..={MAX_CHUNK} fitting the flash"
            ),
            UpdateError::Layout(e) => write!(f, "{e}"),
            UpdateError::TrialPending { slot } => write!(
                f,
                "the image in slot {slot} is on trial: confirm it or let it roll back first"
            ),
            UpdateError::NoTransfer => write!(f, "no transfer in progress: offer an image first"),
            UpdateError::OutOfOrder { expected, got } => {
                write!(f, "chunk {got} out of order: chunk {expected} is next")
            }
            UpdateError::NoSuchChunk { index, chunks } => {
                write!(f, "chunk {index} does not exist: the image has {chunks}")
            }
            UpdateError::ChunkLength {
                index,
                expected,
                got,
            } => write!(f, "chunk {index} has {got} bytes, expected {expected}"),
            UpdateError::ChunkCrc {
                index,
                received,
                computed,
            } => write!(
                f,
                "chunk {index} damaged: CRC 0x{received:08x} sent, 0x{computed:08x} computed"
            ),
            UpdateError::Incomplete { written, chunks } => {
                write!(f, "only {written} of {chunks} chunks written")
            }
            UpdateError::HeaderMismatch => {
                write!(f, "the header received differs from the header offered")
            }
            UpdateError::OfferDigestMismatch => {
                write!(f, "the image's SHA-256 differs from the one offered")
            }
            UpdateError::Flash(e) => write!(f, "{e}"),
        }
    }
}

impl From<FlashError> for UpdateError {
    fn from(e: FlashError) -> UpdateError {
        UpdateError::Flash(e)
    }
}

impl From<SlotError> for UpdateError {
    fn from(e: SlotError) -> UpdateError {
        match e {
            SlotError::Flash(e) => UpdateError::Flash(e),
            SlotError::Header(e) => UpdateError::Header(e),
            SlotError::Trailer(e) => UpdateError::Trailer(e),
            SlotError::Refused(r) => UpdateError::Refused(r),
        }
    }
}

/// An accepted offer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Accepted {
    /// The slot being written.
    pub slot: Slot,
    /// The chunk to send next: 0 for a new transfer, more when resuming.
    pub next_chunk: u32,
    /// Chunks in the image.
    pub chunks: u32,
}

/// A chunk taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkAck {
    /// The chunk to send next (equal to the chunk count when all are in).
    pub next_chunk: u32,
    /// Whether the chunk was already written (a repeat after a lost acknowledgement).
    pub repeat: bool,
}

/// A verified image, staged for the next boot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Staged {
    /// Its slot.
    pub slot: Slot,
    /// Its firmware version.
    pub version: FirmwareVersion,
    /// Its security counter.
    pub security_counter: u32,
}

#[derive(Clone, Copy, Debug)]
struct Transfer {
    log: TransferLog,
    total: u32,
    chunks: u32,
}

/// The update receiver of one node.
#[derive(Clone, Debug)]
pub struct UpdateReceiver {
    layout: FlashLayout,
    trust: Trust,
    transfer: Option<Transfer>,
}

impl UpdateReceiver {
    /// A receiver for the regions of `layout`, taking images `trust` accepts.
    pub fn new(layout: FlashLayout, trust: Trust) -> UpdateReceiver {
        UpdateReceiver {
            layout,
            trust,
            transfer: None,
        }
    }

    /// The layout.
    pub fn layout(&self) -> &FlashLayout {
        &self.layout
    }

    /// What the receiver trusts.
    pub fn trust(&self) -> &Trust {
        &self.trust
    }

    /// Bytes of the image being received (header, payload, trailer).
    pub fn image_len(&self) -> Option<u32> {
        self.transfer.map(|t| t.total)
    }

    /// The transfer in progress: (slot, next chunk, chunks).
    pub fn progress(&self) -> Option<Accepted> {
        self.transfer.map(|t| Accepted {
            slot: t.log.manifest.slot,
            next_chunk: t.log.next_chunk,
            chunks: t.chunks,
        })
    }

    /// Takes an offer: the image's header (its first 64 bytes), its SHA-256 and the chunk size
    /// the sender will use. Refuses, before writing anything, an image for other hardware,
    /// with a lower security counter than the confirmed image's, or too large for a slot.
    pub fn offer<F: NorFlash>(
        &mut self,
        flash: &mut F,
        header: &[u8; HEADER_LEN],
        digest: &[u8; 32],
        chunk_size: u16,
    ) -> Result<Accepted, UpdateError> {
        self.transfer = None;
        self.layout
            .check::<F>(flash.capacity())
            .map_err(UpdateError::Layout)?;
        let offered = ImageHeader::parse(header).map_err(UpdateError::Header)?;
        let size_ok = chunk_size.is_power_of_two()
            && (MIN_CHUNK..=MAX_CHUNK).contains(&chunk_size)
            && usize::from(chunk_size).is_multiple_of(F::WRITE_SIZE)
            && F::ERASE_SIZE.is_multiple_of(usize::from(chunk_size));
        if !size_ok {
            return Err(UpdateError::BadChunkSize { size: chunk_size });
        }
        let mut state = BootState::read(flash, &self.layout)?;
        // The confirmed image's counter is the floor; an unreadable confirmed header gives no
        // floor here, and the bootloader still checks every image it runs.
        let floor = verify::read_header(flash, &self.layout, state.confirmed)
            .map(|h| h.security_counter)
            .unwrap_or(0);
        check_target(&offered, &self.trust.hardware, floor, self.layout.slot_size)
            .map_err(UpdateError::Refused)?;
        let slot = state.confirmed.other();
        if let Some(t) = state.trial
            && t.slot == slot
            && t.attempts > 0
        {
            return Err(UpdateError::TrialPending { slot });
        }
        let manifest = Manifest {
            slot,
            chunk_size,
            header: *header,
            digest: *digest,
        };
        let total = offered.signed_len() + TRAILER_LEN as u32;
        let chunks = total.div_ceil(u32::from(chunk_size));
        let log = match TransferLog::read(flash, &self.layout)? {
            Some(log) if log.manifest == manifest && log.next_chunk <= chunks => {
                self.resume_point(flash, log)?
            }
            _ => {
                // A new image for the slot: whatever the boot state said about it goes first.
                state.abandon(flash, &self.layout, slot)?;
                TransferLog::start(flash, &self.layout, manifest)?
            }
        };
        let transfer = Transfer { log, total, chunks };
        self.transfer = Some(transfer);
        Ok(Accepted {
            slot,
            next_chunk: log.next_chunk,
            chunks,
        })
    }

    /// Where a recorded transfer goes on: at its next chunk if that chunk's area is still
    /// erased (or starts a sector, which is erased before it is written), else at the start of
    /// that chunk's sector after recording the rewind.
    fn resume_point<F: NorFlash>(
        &self,
        flash: &mut F,
        mut log: TransferLog,
    ) -> Result<TransferLog, UpdateError> {
        let size = u32::from(log.manifest.chunk_size);
        let header = ImageHeader::parse(&log.manifest.header).map_err(UpdateError::Header)?;
        let total = header.signed_len() + TRAILER_LEN as u32;
        let next = log.next_chunk;
        let at = next * size;
        let erase = F::ERASE_SIZE as u32;
        if at >= total || at.is_multiple_of(erase) {
            return Ok(log);
        }
        let len = size.min(total - at);
        let base = self.layout.slot(log.manifest.slot);
        if flash::is_erased(flash, base + at, len)? {
            return Ok(log);
        }
        let sector_start = (at - at % erase) / size;
        if !log.record(flash, &self.layout, sector_start)? {
            // No room to record the rewind: start the transfer over.
            return Ok(TransferLog::start(flash, &self.layout, log.manifest)?);
        }
        Ok(log)
    }

    /// Takes chunk `index` with its CRC-32C.
    pub fn chunk<F: NorFlash>(
        &mut self,
        flash: &mut F,
        index: u32,
        data: &[u8],
        crc: u32,
    ) -> Result<ChunkAck, UpdateError> {
        let Some(t) = self.transfer.as_mut() else {
            return Err(UpdateError::NoTransfer);
        };
        if index >= t.chunks {
            return Err(UpdateError::NoSuchChunk {
                index,
                chunks: t.chunks,
            });
        }
        let size = u32::from(t.log.manifest.chunk_size);
        let at = index * size;
        let expected = size.min(t.total - at) as usize;
        if data.len() != expected {
            return Err(UpdateError::ChunkLength {
                index,
                expected,
                got: data.len(),
            });
        }
        let computed = CRC32C.checksum(data);
        if computed != crc {
            return Err(UpdateError::ChunkCrc {
                index,
                received: crc,
                computed,
            });
        }
        let next = t.log.next_chunk;
        if index < next {
            return Ok(ChunkAck {
                next_chunk: next,
                repeat: true,
            });
        }
        if index > next {
            return Err(UpdateError::OutOfOrder {
                expected: next,
                got: index,
            });
        }
        let base = self.layout.slot(t.log.manifest.slot);
        let erase = F::ERASE_SIZE as u32;
        if at.is_multiple_of(erase) {
            flash::erase(flash, base + at, base + at + erase)?;
        }
        flash::write_padded(flash, base + at, data)?;
        t.log.record(flash, &self.layout, index + 1)?;
        Ok(ChunkAck {
            next_chunk: index + 1,
            repeat: false,
        })
    }

    /// Checks the received image from flash (size, header, SHA-256, key, signature, hardware
    /// and security counter) and stages it for the next boot.
    pub fn finish<F: NorFlash>(&mut self, flash: &mut F) -> Result<Staged, UpdateError> {
        let Some(t) = self.transfer else {
            return Err(UpdateError::NoTransfer);
        };
        if t.log.next_chunk < t.chunks {
            return Err(UpdateError::Incomplete {
                written: t.log.next_chunk,
                chunks: t.chunks,
            });
        }
        let slot = t.log.manifest.slot;
        let mut written = [0u8; HEADER_LEN];
        flash::read(flash, self.layout.slot(slot), &mut written)?;
        if written != t.log.manifest.header {
            return Err(UpdateError::HeaderMismatch);
        }
        let mut state = BootState::read(flash, &self.layout)?;
        let floor = verify::read_header(flash, &self.layout, state.confirmed)
            .map(|h| h.security_counter)
            .unwrap_or(0);
        let verify::Verified { header, digest } =
            verify::verify_slot(flash, &self.layout, slot, &self.trust, floor)?;
        if digest != t.log.manifest.digest {
            return Err(UpdateError::OfferDigestMismatch);
        }
        state.stage(flash, &self.layout, slot)?;
        self.transfer = None;
        Ok(Staged {
            slot,
            version: header.version,
            security_counter: header.security_counter,
        })
    }
}
