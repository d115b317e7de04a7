//! What every update transport keeps beside the receiver: the phase a gateway reads back, the
//! last refusal and the transfer's shape. The Modbus files ([`modbus_files`](super::modbus_files))
//! and the MQTT messages ([`mqtt`](super::mqtt)) both drive an [`UpdateSession`], so a
//! refusal reads the same, and a transfer may go on over either after a reset.
//!
//! # Phases
//!
//! | phase | entered on |
//! |---|---|
//! | idle | start, reset |
//! | receiving | an accepted offer; stays while chunks are refused for being damaged, short, out of order or too many, so that the gateway re-sends |
//! | staged | a finish whose checks all passed |
//! | failed | any other refusal (the image, the chunk size, a pending trial, no transfer), or a flash failure |

use embedded_storage::nor_flash::NorFlash;
use tianzhong_protocol::image::signature::SignatureRefusal;
use tianzhong_protocol::image::{HEADER_LEN, Refusal};
pub use tianzhong_protocol::update::Phase;
use tianzhong_protocol::update::Reason;

use super::receiver::{Accepted, ChunkAck, Staged, UpdateError, UpdateReceiver};

/// The reason a gateway is given for an update error.
pub fn reason_of(e: &UpdateError) -> Reason {
    match e {
        UpdateError::Refused(r) => match r {
            Refusal::WrongHardware { .. } => Reason::WrongHardware,
            Refusal::SecurityCounterTooLow { .. } => Reason::SecurityCounterTooLow,
            Refusal::TooLarge { .. } => Reason::TooLarge,
            Refusal::DigestMismatch { .. } => Reason::DigestMismatch,
            Refusal::UnknownKey => Reason::UnknownKey,
            Refusal::Signature(SignatureRefusal::Invalid)
            | Refusal::Signature(SignatureRefusal::MalformedPublicKey)
            | Refusal::Signature(SignatureRefusal::WeakPublicKey) => Reason::BadSignature,
        },
        UpdateError::Header(_) => Reason::MalformedHeader,
        UpdateError::Trailer(_) => Reason::MalformedTrailer,
        UpdateError::BadChunkSize { .. } => Reason::BadChunkSize,
        UpdateError::TrialPending { .. } => Reason::TrialPending,
        UpdateError::NoTransfer => Reason::NoTransfer,
        UpdateError::OutOfOrder { .. } => Reason::OutOfOrder,
        UpdateError::NoSuchChunk { .. } => Reason::NoSuchChunk,
        UpdateError::ChunkLength { .. } => Reason::ChunkLength,
        UpdateError::ChunkCrc { .. } => Reason::ChunkCrc,
        UpdateError::Incomplete { .. } => Reason::Incomplete,
        UpdateError::HeaderMismatch => Reason::HeaderMismatch,
        UpdateError::OfferDigestMismatch => Reason::OfferDigestMismatch,
        UpdateError::Flash(_) => Reason::Flash,
        UpdateError::Layout(_) => Reason::Layout,
    }
}

/// The session's state as a gateway reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionStatus {
    /// The phase.
    pub phase: Phase,
    /// The chunk wanted next: 0 without a transfer, the chunk count once staged (none).
    pub next_chunk: u32,
    /// Chunks in the image of the last accepted offer.
    pub chunks: u32,
    /// Chunk size of the last accepted offer.
    pub chunk_size: u16,
    /// The last refusal's reason code, 0 for none.
    pub reason: u16,
}

/// A receiver, the flash it writes, and what a gateway reads back.
#[derive(Debug)]
pub struct UpdateSession<F> {
    receiver: UpdateReceiver,
    flash: F,
    phase: Phase,
    last_error: Option<UpdateError>,
    chunk_size: u16,
    chunks: u32,
}

impl<F: NorFlash> UpdateSession<F> {
    /// A session over `receiver` and `flash`.
    pub fn new(receiver: UpdateReceiver, flash: F) -> UpdateSession<F> {
        UpdateSession {
            receiver,
            flash,
            phase: Phase::Idle,
            last_error: None,
            chunk_size: 0,
            chunks: 0,
        }
    }

    /// A reset of the node: the receiver forgets everything the flash does not hold.
    pub fn reset(&mut self) {
        self.receiver = UpdateReceiver::new(*self.receiver.layout(), self.receiver.trust().clone());
        self.phase = Phase::Idle;
        self.last_error = None;
        self.chunk_size = 0;
        self.chunks = 0;
    }

    /// The flash.
    pub fn flash_mut(&mut self) -> &mut F {
        &mut self.flash
    }

    /// The receiver.
    pub fn receiver(&self) -> &UpdateReceiver {
        &self.receiver
    }

    /// Gives back receiver and flash.
    pub fn release(self) -> (UpdateReceiver, F) {
        (self.receiver, self.flash)
    }

    /// The last refusal or failure, with its full reason.
    pub fn last_error(&self) -> Option<&UpdateError> {
        self.last_error.as_ref()
    }

    /// The phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The state a gateway reads.
    pub fn status(&self) -> SessionStatus {
        SessionStatus {
            phase: self.phase,
            next_chunk: match (self.phase, self.receiver.progress()) {
                (_, Some(p)) => p.next_chunk,
                (Phase::Staged, None) => self.chunks,
                (_, None) => 0,
            },
            chunks: self.chunks,
            chunk_size: self.chunk_size,
            reason: self.last_error.as_ref().map_or(0, |e| reason_of(e).code()),
        }
    }

    /// Records a refusal and moves the phase as the table above says.
    fn fail(&mut self, e: UpdateError) -> UpdateError {
        // A chunk refused mid-transfer leaves the transfer going: the status says why, and
        // the phase stays "receiving" so the gateway re-sends.
        let keeps_going = matches!(
            e,
            UpdateError::ChunkCrc { .. }
                | UpdateError::ChunkLength { .. }
                | UpdateError::OutOfOrder { .. }
                | UpdateError::NoSuchChunk { .. }
                | UpdateError::Incomplete { .. }
        ) && self.receiver.progress().is_some();
        if !keeps_going {
            self.phase = Phase::Failed;
        }
        self.last_error = Some(e.clone());
        e
    }

    /// Refuses with `e` without asking the receiver (a request malformed before it).
    pub fn refuse(&mut self, e: UpdateError) -> UpdateError {
        self.fail(e)
    }

    /// An offer: see [`UpdateReceiver::offer`].
    pub fn offer(
        &mut self,
        header: &[u8; HEADER_LEN],
        digest: &[u8; 32],
        chunk_size: u16,
    ) -> Result<Accepted, UpdateError> {
        match self
            .receiver
            .offer(&mut self.flash, header, digest, chunk_size)
        {
            Ok(a) => {
                self.phase = Phase::Receiving;
                self.last_error = None;
                self.chunk_size = chunk_size;
                self.chunks = a.chunks;
                Ok(a)
            }
            Err(e) => Err(self.fail(e)),
        }
    }

    /// A chunk: see [`UpdateReceiver::chunk`].
    pub fn chunk(&mut self, index: u32, data: &[u8], crc: u32) -> Result<ChunkAck, UpdateError> {
        self.receiver
            .chunk(&mut self.flash, index, data, crc)
            .map_err(|e| self.fail(e))
    }

    /// The finish: see [`UpdateReceiver::finish`].
    pub fn finish(&mut self) -> Result<Staged, UpdateError> {
        match self.receiver.finish(&mut self.flash) {
            Ok(s) => {
                self.phase = Phase::Staged;
                self.last_error = None;
                Ok(s)
            }
            Err(e) => Err(self.fail(e)),
        }
    }

    /// Bytes of chunk `index` of the transfer: the chunk size, less for the last chunk.
    pub fn chunk_len(&self, index: u32) -> usize {
        let size = usize::from(self.chunk_size);
        if index + 1 < self.chunks {
            return size;
        }
        self.receiver
            .image_len()
            .map(|total| total as usize - (self.chunks as usize).saturating_sub(1) * size)
            .unwrap_or(size)
    }
}
