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
//! | [`STREAM_FILE`] `0xF004` | the first byte's offset in the image / [`STREAM_UNIT`] | 21 write, usually broadcast | 1 + ⌈n / 2⌉ + 2 | the session tag, `n` bytes of the image (an odd last byte padded with `0xFF`), then their CRC-32C, high word first |
//!
//! Bytes go two to a register, the first in the high byte, as in the node profile's strings.
//! A chunk of 128 bytes is the largest power of two that fits one write request (244 bytes of
//! record data); record numbers stop at 9999, so an image has at most about 9900 chunks.
//!
//! # Streaming (file `0xF004`)
//!
//! A write-file-record reply echoes the whole request, so per-chunk writes to `0xF001` use
//! well under half of an RTU line. The stream file is for writes to the broadcast address,
//! which get no reply (Modbus over Serial Line V1.02, 2.2): the gateway sends a window of them
//! back to back, then reads the status (addressed, function 20) to learn the next chunk wanted
//! and goes back to it if a frame was lost (go-back-N).
//!
//! A stream write is not cut to chunks: it carries up to 224 bytes of the image from any
//! offset that is a multiple of [`STREAM_UNIT`], so that one frame holds as much of the image
//! as a request can, whatever the chunk size. The node collects the bytes of the next chunk in
//! RAM and hands each completed chunk to the receiver with a CRC-32C it computes itself, after
//! the write's own CRC-32C (over all its bytes, end to end from the gateway) has matched. The
//! chunk size and the transfer log stay those of the offer, so a transfer may go on in either
//! file after a reset or a change of link.
//!
//! The **session tag** is the first two bytes of the offered SHA-256, high byte first. Every
//! node on the bus hears a broadcast; a node takes a stream write only when it is receiving
//! (phase 1), the tag is its transfer's, its chunk size is a multiple of [`STREAM_UNIT`] of at
//! most [`STREAM_MAX_CHUNK`] bytes, and the write starts where it needs the next byte (or at
//! the start of the next chunk it wants, which drops what it collected of that chunk). Any
//! other stream write is answered, when addressed, with exception 03 and changes nothing: not
//! the status, not the flash. A node receiving the same image takes the same stream, which is
//! harmless: the bytes are its image's.
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
use tianzhong_protocol::crc::FRAME as CRC32C;
use tianzhong_protocol::image::HEADER_LEN;

use super::receiver::{UpdateError, UpdateReceiver};
use super::session::{Phase, UpdateSession, reason_of};
use crate::modbus::Exception;

/// The offer file.
pub const OFFER_FILE: u16 = 0xF000;
/// The chunk file.
pub const CHUNK_FILE: u16 = 0xF001;
/// The finish file.
pub const FINISH_FILE: u16 = 0xF002;
/// The status file.
pub const STATUS_FILE: u16 = 0xF003;
/// The stream file: image bytes by offset, written to the broadcast address.
pub const STREAM_FILE: u16 = 0xF004;
/// Bytes per record number in the stream file: the record of a stream write is the offset of
/// its first byte divided by this. 32 lets 9999 records address 312 KiB of image, and divides
/// every chunk size a stream accepts.
pub const STREAM_UNIT: u32 = 32;
/// The largest chunk size a stream is taken with: the RAM the node gives to the chunk it is
/// collecting.
pub const STREAM_MAX_CHUNK: usize = 256;
/// Image bytes in one stream write: the largest multiple of [`STREAM_UNIT`] that fits a write
/// request (244 bytes of record data) beside the session tag and the CRC-32C.
pub const STREAM_MAX_BYTES: usize = 224;
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

/// The status code of an update error, as register 5 of the status gives it: the code of its
/// [`Reason`](tianzhong_protocol::update::Reason), whose table lists them (codes 1 to 20 are
/// the ones a Modbus transfer meets).
pub fn error_code(e: &UpdateError) -> u16 {
    reason_of(e).code()
}

/// The status register of a phase.
fn phase_register(p: Phase) -> u16 {
    match p {
        Phase::Idle => phase::IDLE,
        Phase::Receiving => phase::RECEIVING,
        Phase::Staged => phase::STAGED,
        Phase::Failed => phase::FAILED,
    }
}

enum StreamOutcome {
    Ignored(StreamIgnored),
    Failed(UpdateError),
}

/// The update files of a node: its receiver and the flash it writes.
#[derive(Debug)]
pub struct UpdateFiles<F> {
    session: UpdateSession<F>,
    /// The session tag of the transfer offered (first two bytes of its SHA-256).
    tag: u16,
    /// The bytes of chunk `next_chunk` collected from stream writes so far.
    stream: [u8; STREAM_MAX_CHUNK],
    stream_len: usize,
    /// The chunk whose bytes `stream` holds: a chunk taken meanwhile by another path (the
    /// chunk file, or MQTT on the same session) makes them stale.
    stream_chunk: u32,
}

/// Why a stream write was not taken; none of these changes the node's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamIgnored {
    /// No transfer is being received.
    NotReceiving,
    /// The session tag is another transfer's.
    OtherSession,
    /// The chunk size is not one a stream can carry.
    ChunkSize,
    /// Not the bytes the node needs next.
    NotNext,
    /// Malformed: length, or CRC-32C mismatch.
    Malformed,
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
            session: UpdateSession::new(receiver, flash),
            tag: 0,
            stream: [0; STREAM_MAX_CHUNK],
            stream_len: 0,
            stream_chunk: 0,
        }
    }

    /// A reset of the node: the receiver forgets everything the flash does not hold.
    pub fn reset(&mut self) {
        self.session.reset();
        self.tag = 0;
        self.stream_len = 0;
    }

    /// The flash, e.g. for the bootloader's decision after a reset.
    pub fn flash_mut(&mut self) -> &mut F {
        self.session.flash_mut()
    }

    /// The session behind the files, for another transport of the same node (MQTT).
    pub fn session_mut(&mut self) -> &mut UpdateSession<F> {
        &mut self.session
    }

    /// Gives back receiver and flash.
    pub fn release(self) -> (UpdateReceiver, F) {
        self.session.release()
    }

    /// The last refusal or failure, with its full reason.
    pub fn last_error(&self) -> Option<&UpdateError> {
        self.session.last_error()
    }

    /// The exception answering a refusal the session has recorded.
    fn exception(e: UpdateError) -> Exception {
        match e {
            UpdateError::Flash(_) => Exception::ServerDeviceFailure,
            _ => Exception::IllegalDataValue,
        }
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
                self.stream_len = 0;
                self.session
                    .offer(&header, &digest, chunk_size)
                    .map_err(Self::exception)?;
                self.tag = u16::from_be_bytes([digest[0], digest[1]]);
                Ok(())
            }
            CHUNK_FILE => {
                if self.session.receiver().progress().is_none() {
                    return Err(Self::exception(
                        self.session.refuse(UpdateError::NoTransfer),
                    ));
                }
                let index = u32::from(record);
                let (regs, crc) = match data.len().checked_sub(2) {
                    Some(n) if n > 0 => (&data[..n], &data[n..]),
                    _ => {
                        let expected = self.session.chunk_len(index);
                        return Err(Self::exception(self.session.refuse(
                            UpdateError::ChunkLength {
                                index,
                                expected,
                                got: 0,
                            },
                        )));
                    }
                };
                let crc = (u32::from(crc[0]) << 16) | u32::from(crc[1]);
                // The chunk's length is the receiver's to know: the full chunk size, or what
                // is left of the image for the last one.
                let mut buf = [0u8; 244];
                let len = self.session.chunk_len(index).min(2 * regs.len());
                if 2 * regs.len() > buf.len() || regs.len() != len.div_ceil(2) {
                    return Err(Self::exception(self.session.refuse(
                        UpdateError::ChunkLength {
                            index,
                            expected: len,
                            got: 2 * regs.len(),
                        },
                    )));
                }
                bytes_of(regs, &mut buf[..len]);
                // A chunk written here makes what a stream collected of it stale.
                self.stream_len = 0;
                self.session
                    .chunk(index, &buf[..len], crc)
                    .map(|_| ())
                    .map_err(Self::exception)
            }
            STREAM_FILE => match self.stream_write(record, data) {
                Ok(()) => Ok(()),
                Err(StreamOutcome::Ignored(_)) => Err(Exception::IllegalDataValue),
                Err(StreamOutcome::Failed(e)) => Err(Self::exception(e)),
            },
            FINISH_FILE => {
                if record != 0 || data != [FINISH_MAGIC] {
                    return Err(Exception::IllegalDataValue);
                }
                self.session.finish().map(|_| ()).map_err(Self::exception)
            }
            _ => Err(Exception::IllegalDataAddress),
        }
    }

    /// A write to the stream file: takes the bytes if they are the ones this node needs next,
    /// handing every chunk they complete to the receiver.
    fn stream_write(&mut self, record: u16, data: &[u16]) -> Result<(), StreamOutcome> {
        use StreamIgnored::*;
        let ignored = |why| Err(StreamOutcome::Ignored(why));
        let Some(progress) = self.session.receiver().progress() else {
            return ignored(NotReceiving);
        };
        if self.session.phase() != Phase::Receiving {
            return ignored(NotReceiving);
        }
        let (Some((&tag, rest)), Some(total)) =
            (data.split_first(), self.session.receiver().image_len())
        else {
            return ignored(Malformed);
        };
        if tag != self.tag {
            return ignored(OtherSession);
        }
        let chunk_size = self.session.status().chunk_size;
        let size = usize::from(chunk_size);
        if size > STREAM_MAX_CHUNK || !(size as u32).is_multiple_of(STREAM_UNIT) {
            return ignored(ChunkSize);
        }
        let Some(n_regs) = rest.len().checked_sub(2).filter(|&n| n > 0) else {
            return ignored(Malformed);
        };
        let (regs, crc) = rest.split_at(n_regs);
        let crc = (u32::from(crc[0]) << 16) | u32::from(crc[1]);
        let offset = u32::from(record) * STREAM_UNIT;
        if self.stream_chunk != progress.next_chunk {
            self.stream_len = 0;
        }
        let chunk_start = progress.next_chunk * u32::from(chunk_size);
        let expected = chunk_start + self.stream_len as u32;
        // At the start of the chunk wanted the gateway has gone back: start that chunk over.
        let collected = if offset == chunk_start {
            0
        } else if offset == expected {
            self.stream_len
        } else {
            return ignored(NotNext);
        };
        let remaining = (total - offset.min(total)) as usize;
        let carried = 2 * regs.len();
        let n = carried.min(remaining);
        // Every write but the image's last is full to its registers; the last may pad one byte.
        if n == 0
            || carried > STREAM_MAX_BYTES + 1
            || carried - n > 1
            || (carried > n && n != remaining)
        {
            return ignored(Malformed);
        }
        let mut bytes = [0u8; STREAM_MAX_BYTES + 1];
        bytes_of(regs, &mut bytes[..n]);
        let bytes = &bytes[..n];
        if CRC32C.checksum(bytes) != crc {
            return ignored(Malformed);
        }
        self.stream_len = collected;
        let mut next = progress.next_chunk;
        let mut bytes = bytes;
        while !bytes.is_empty() {
            let want = self.session.chunk_len(next);
            let take = (want - self.stream_len).min(bytes.len());
            self.stream[self.stream_len..self.stream_len + take].copy_from_slice(&bytes[..take]);
            self.stream_len += take;
            bytes = &bytes[take..];
            if self.stream_len < want {
                break;
            }
            let chunk = &self.stream[..want];
            // The write's CRC-32C already covered these bytes end to end; the receiver's check
            // of a CRC computed here only guards the copy into this buffer.
            let chunk_crc = CRC32C.checksum(chunk);
            self.stream_len = 0;
            match self.session.chunk(next, chunk, chunk_crc) {
                Ok(ack) => next = ack.next_chunk,
                Err(e) => return Err(StreamOutcome::Failed(e)),
            }
            if next >= progress.chunks {
                break;
            }
        }
        self.stream_chunk = next;
        Ok(())
    }

    /// Why the last stream write was not taken, for tests and diagnostics: `None` if taken.
    pub fn stream_check(&mut self, record: u16, data: &[u16]) -> Option<StreamIgnored> {
        match self.stream_write(record, data) {
            Err(StreamOutcome::Ignored(why)) => Some(why),
            // The session has recorded the failure.
            Err(StreamOutcome::Failed(_)) => None,
            Ok(()) => None,
        }
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
        let s = self.session.status();
        let status = [
            phase_register(s.phase),
            (s.next_chunk >> 16) as u16,
            s.next_chunk as u16,
            (s.chunks >> 16) as u16,
            s.chunks as u16,
            s.reason,
            s.chunk_size,
            0,
        ];
        out.copy_from_slice(&status[..out.len()]);
        Ok(())
    }
}
