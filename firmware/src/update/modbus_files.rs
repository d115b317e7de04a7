//! The update receiver behind Modbus file records (function codes 21 and 20): the files a
//! gateway writes an image to and reads the transfer's status from.
//!
//! # Files
//!
//! | file | record | function | registers | content |
//! |---|---|---|---|---|
//! | [`OFFER_FILE`] `0xF000` | 0 | 21 write | 49 | the offer: image header (32 registers, 64 bytes), SHA-256 (16), chunk size in bytes (1) |
//! | [`CHUNK_FILE`] `0xF001` | the chunk's index | 21 write | ⌈len / 2⌉ + 2 | the chunk's bytes (an odd last byte padded with `0xFF`), then its CRC-32C, high word first |
//! | [`FINISH_FILE`] `0xF002` | 0 | 21 write | 1 | [`FINISH_MAGIC`]: check the image and stage it |
//! | [`STATUS_FILE`] `0xF003` | 0 | 20 read | 1..=8 | the status below |
//!
//! Bytes go two to a register, the first in the high byte, as in the node profile's strings.
//! A chunk of 128 bytes is the largest power of two that fits one write request (244 bytes of
//! record data); record numbers stop at 9999, so an image has at most about 9900 chunks.
//!
//! # Status (file `0xF003`, record 0)
//!
//! | register | content |
//! |---|---|
//! | 0 | phase: 0 idle, 1 receiving, 2 staged, 3 refused or failed |
//! | 1–2 | next chunk wanted (u32, high word first) |
//! | 3–4 | chunks in the image |
//! | 5 | reason of the last refusal ([`error_code`]), 0 for none |
//! | 6 | chunk size in bytes |
//! | 7 | reserved, 0 |
//!
//! A refused offer, chunk or finish is answered with exception 03 (04 for a flash failure);
//! the reason is in the status.

use embedded_storage::nor_flash::NorFlash;
use tianzhong_protocol::image::signature::SignatureRefusal;
use tianzhong_protocol::image::{HEADER_LEN, Refusal};

use super::receiver::{UpdateError, UpdateReceiver};
use crate::modbus::Exception;

/// The offer file.
pub const OFFER_FILE: u16 = 0xF000;
/// The chunk file.
pub const CHUNK_FILE: u16 = 0xF001;
/// The finish file.
pub const FINISH_FILE: u16 = 0xF002;
/// The status file.
pub const STATUS_FILE: u16 = 0xF003;
/// What the finish file takes.
pub const FINISH_MAGIC: u16 = 0x4649; // "FI"
/// Registers of an offer.
pub const OFFER_REGISTERS: usize = 49;
/// Registers of the status.
pub const STATUS_REGISTERS: usize = 8;

/// Phases in the status.
pub mod phase {
    /// No transfer.
    pub const IDLE: u16 = 0;
    /// Chunks are being taken.
    pub const RECEIVING: u16 = 1;
    /// The image is checked and staged for the next boot.
    pub const STAGED: u16 = 2;
    /// The last offer, chunk or finish was refused, or the flash failed.
    pub const FAILED: u16 = 3;
}

/// The status code of an update error, as register 5 of the status gives it.
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
pub fn error_code(e: &UpdateError) -> u16 {
    match e {
        UpdateError::Refused(r) => match r {
            Refusal::WrongHardware { .. } => 1,
            Refusal::SecurityCounterTooLow { .. } => 2,
            Refusal::TooLarge { .. } => 3,
            Refusal::DigestMismatch { .. } => 4,
            Refusal::UnknownKey => 5,
            Refusal::Signature(SignatureRefusal::Invalid)
            | Refusal::Signature(SignatureRefusal::MalformedPublicKey)
            | Refusal::Signature(SignatureRefusal::WeakPublicKey) => 6,
        },
        UpdateError::Header(_) => 7,
        UpdateError::Trailer(_) => 8,
        UpdateError::BadChunkSize { .. } => 9,
        UpdateError::TrialPending { .. } => 10,
        UpdateError::NoTransfer => 11,
        UpdateError::OutOfOrder { .. } => 12,
        UpdateError::NoSuchChunk { .. } => 13,
        UpdateError::ChunkLength { .. } => 14,
        UpdateError::ChunkCrc { .. } => 15,
        UpdateError::Incomplete { .. } => 16,
        UpdateError::HeaderMismatch => 17,
        UpdateError::OfferDigestMismatch => 18,
        UpdateError::Flash(_) => 19,
        UpdateError::Layout(_) => 20,
    }
}

/// The update files of a node: its receiver and the flash it writes.
#[derive(Debug)]
pub struct UpdateFiles<F> {
    receiver: UpdateReceiver,
    flash: F,
    phase: u16,
    last_error: Option<UpdateError>,
    chunk_size: u16,
    chunks: u32,
}

fn bytes_of(regs: &[u16], out: &mut [u8]) {
    for (pair, r) in out.chunks_mut(2).zip(regs) {
        let b = r.to_be_bytes();
        pair.copy_from_slice(&b[..pair.len()]);
    }
}

impl<F: NorFlash> UpdateFiles<F> {
    /// The files over `receiver` and `flash`.
    pub fn new(receiver: UpdateReceiver, flash: F) -> UpdateFiles<F> {
        UpdateFiles {
            receiver,
            flash,
            phase: phase::IDLE,
            last_error: None,
            chunk_size: 0,
            chunks: 0,
        }
    }

    /// A reset of the node: the receiver forgets everything the flash does not hold.
    pub fn reset(&mut self) {
        self.receiver = UpdateReceiver::new(*self.receiver.layout(), self.receiver.trust().clone());
        self.phase = phase::IDLE;
        self.last_error = None;
        self.chunk_size = 0;
        self.chunks = 0;
    }

    /// The flash, e.g. for the bootloader's decision after a reset.
    pub fn flash_mut(&mut self) -> &mut F {
        &mut self.flash
    }

    /// Gives back receiver and flash.
    pub fn release(self) -> (UpdateReceiver, F) {
        (self.receiver, self.flash)
    }

    /// The last refusal or failure, with its full reason.
    pub fn last_error(&self) -> Option<&UpdateError> {
        self.last_error.as_ref()
    }

    fn fail(&mut self, e: UpdateError) -> Exception {
        let exception = match e {
            UpdateError::Flash(_) => Exception::ServerDeviceFailure,
            _ => Exception::IllegalDataValue,
        };
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
            self.phase = phase::FAILED;
        }
        self.last_error = Some(e);
        exception
    }

    /// Function code 21 on the update files.
    pub fn write_file_record(
        &mut self,
        file: u16,
        record: u16,
        data: &[u16],
    ) -> Result<(), Exception> {
        match file {
            OFFER_FILE => {
                if record != 0 || data.len() != OFFER_REGISTERS {
                    return Err(Exception::IllegalDataAddress);
                }
                let mut header = [0u8; HEADER_LEN];
                bytes_of(&data[..32], &mut header);
                let mut digest = [0u8; 32];
                bytes_of(&data[32..48], &mut digest);
                let chunk_size = data[48];
                match self
                    .receiver
                    .offer(&mut self.flash, &header, &digest, chunk_size)
                {
                    Ok(a) => {
                        self.phase = phase::RECEIVING;
                        self.last_error = None;
                        self.chunk_size = chunk_size;
                        self.chunks = a.chunks;
                        Ok(())
                    }
                    Err(e) => Err(self.fail(e)),
                }
            }
            CHUNK_FILE => {
                let Some(progress) = self.receiver.progress() else {
                    return Err(self.fail(UpdateError::NoTransfer));
                };
                let index = u32::from(record);
                let (regs, crc) = match data.len().checked_sub(2) {
                    Some(n) if n > 0 => (&data[..n], &data[n..]),
                    _ => {
                        return Err(self.fail(UpdateError::ChunkLength {
                            index,
                            expected: usize::from(self.chunk_size),
                            got: 0,
                        }));
                    }
                };
                let crc = (u32::from(crc[0]) << 16) | u32::from(crc[1]);
                // The chunk's length is the receiver's to know: the full chunk size, or what
                // is left of the image for the last one.
                let mut buf = [0u8; 244];
                let len = self.chunk_len(index, progress.chunks).min(2 * regs.len());
                if 2 * regs.len() > buf.len() || regs.len() != len.div_ceil(2) {
                    return Err(self.fail(UpdateError::ChunkLength {
                        index,
                        expected: len,
                        got: 2 * regs.len(),
                    }));
                }
                bytes_of(regs, &mut buf[..len]);
                match self
                    .receiver
                    .chunk(&mut self.flash, index, &buf[..len], crc)
                {
                    Ok(_) => Ok(()),
                    Err(e) => Err(self.fail(e)),
                }
            }
            FINISH_FILE => {
                if record != 0 || data != [FINISH_MAGIC] {
                    return Err(Exception::IllegalDataValue);
                }
                match self.receiver.finish(&mut self.flash) {
                    Ok(_) => {
                        self.phase = phase::STAGED;
                        self.last_error = None;
                        Ok(())
                    }
                    Err(e) => Err(self.fail(e)),
                }
            }
            _ => Err(Exception::IllegalDataAddress),
        }
    }

    /// Bytes of chunk `index`: the chunk size, except for the last chunk.
    fn chunk_len(&self, index: u32, chunks: u32) -> usize {
        let size = usize::from(self.chunk_size);
        if index + 1 < chunks {
            return size;
        }
        self.receiver
            .image_len()
            .map(|total| total as usize - (chunks as usize - 1) * size)
            .unwrap_or(size)
    }

    /// Function code 20 on the update files.
    pub fn read_file_record(
        &mut self,
        file: u16,
        record: u16,
        out: &mut [u16],
    ) -> Result<(), Exception> {
        if file != STATUS_FILE || record != 0 || out.len() > STATUS_REGISTERS {
            return Err(Exception::IllegalDataAddress);
        }
        let next = self.receiver.progress().map_or(0, |p| p.next_chunk);
        let status = [
            self.phase,
            (next >> 16) as u16,
            next as u16,
            (self.chunks >> 16) as u16,
            self.chunks as u16,
            self.last_error.as_ref().map_or(0, error_code),
            self.chunk_size,
            0,
        ];
        out.copy_from_slice(&status[..out.len()]);
        Ok(())
    }
}
