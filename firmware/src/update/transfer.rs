//! The transfer sector: which image is being received into which slot, and how many of its
//! chunks are written. What lets a transfer resume after a cut link or a reset from the last
//! chunk written rather than from zero.
//!
//! # Sector layout
//!
//! | offset | bytes | content |
//! |---|---|---|
//! | 0 | 108 | the manifest (below), written once when a transfer starts |
//! | 108 | 20 | erased |
//! | 128 | [`PROGRESS_LEN`] each | progress records, appended after each chunk written |
//!
//! # Manifest (little-endian)
//!
//! | offset | bytes | content |
//! |---|---|---|
//! | 0 | 4 | magic `TZTX` |
//! | 4 | 1 | target slot (0 = A, 1 = B) |
//! | 5 | 1 | reserved, 0 |
//! | 6 | 2 | chunk size in bytes |
//! | 8 | 64 | the image header offered |
//! | 72 | 32 | the image's SHA-256 offered |
//! | 104 | 4 | CRC-32C over bytes 0..104 |
//!
//! # Progress record ([`PROGRESS_LEN`] bytes, little-endian)
//!
//! | offset | bytes | content |
//! |---|---|---|
//! | 0 | 4 | next chunk: chunks `0 .. next` are written |
//! | 4 | 4 | CRC-32C over bytes 0..4 |
//!
//! The last whole progress record counts; one cut short fails its CRC and is skipped. A record
//! may go back (a *rewind*, when the receiver finds a chunk's area written but unrecorded and
//! must erase its sector again). When the sector is full, progress is no longer recorded for
//! the rest of the transfer: a reset then resumes from the last record, which is slower but
//! never wrong. At the default sizes (one record per chunk) this does not happen.

use embedded_storage::nor_flash::NorFlash;
use tianzhong_protocol::crc::FRAME as CRC32C;
use tianzhong_protocol::image::HEADER_LEN;

use super::flash::{self, FlashError};
use super::layout::{FlashLayout, Slot};

const MAGIC: [u8; 4] = *b"TZTX";
const MANIFEST_LEN: usize = 108;
const LOG_START: u32 = 128;
/// Bytes of one progress record.
pub const PROGRESS_LEN: usize = 8;

/// What is being received, as offered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Manifest {
    /// The slot written.
    pub slot: Slot,
    /// Bytes per chunk.
    pub chunk_size: u16,
    /// The image header offered (its first 64 bytes).
    pub header: [u8; HEADER_LEN],
    /// The image's SHA-256 (of header and payload) offered.
    pub digest: [u8; 32],
}

impl Manifest {
    fn encode(&self) -> [u8; MANIFEST_LEN] {
        let mut b = [0u8; MANIFEST_LEN];
        b[0..4].copy_from_slice(&MAGIC);
        b[4] = self.slot.index();
        b[6..8].copy_from_slice(&self.chunk_size.to_le_bytes());
        b[8..72].copy_from_slice(&self.header);
        b[72..104].copy_from_slice(&self.digest);
        let crc = CRC32C.checksum(&b[..104]);
        b[104..108].copy_from_slice(&crc.to_le_bytes());
        b
    }

    fn decode(b: &[u8; MANIFEST_LEN]) -> Option<Manifest> {
        let crc = u32::from_le_bytes([b[104], b[105], b[106], b[107]]);
        if b[0..4] != MAGIC || b[5] != 0 || CRC32C.checksum(&b[..104]) != crc {
            return None;
        }
        let mut header = [0u8; HEADER_LEN];
        header.copy_from_slice(&b[8..72]);
        let mut digest = [0u8; 32];
        digest.copy_from_slice(&b[72..104]);
        Some(Manifest {
            slot: Slot::from_index(b[4])?,
            chunk_size: u16::from_le_bytes([b[6], b[7]]),
            header,
            digest,
        })
    }
}

/// A transfer as the sector records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransferLog {
    /// What is received.
    pub manifest: Manifest,
    /// Chunks `0 .. next_chunk` are written.
    pub next_chunk: u32,
    /// Index of the first free progress record.
    free: u32,
}

fn stride<F: NorFlash>() -> u32 {
    PROGRESS_LEN.max(F::WRITE_SIZE) as u32
}

fn capacity<F: NorFlash>() -> u32 {
    (F::ERASE_SIZE as u32 - LOG_START) / stride::<F>()
}

fn encode_progress(next: u32) -> [u8; PROGRESS_LEN] {
    let mut b = [0u8; PROGRESS_LEN];
    b[..4].copy_from_slice(&next.to_le_bytes());
    let crc = CRC32C.checksum(&b[..4]);
    b[4..].copy_from_slice(&crc.to_le_bytes());
    b
}

impl TransferLog {
    /// The transfer recorded in the sector, if its manifest is whole.
    pub fn read<F: NorFlash>(
        flash: &mut F,
        layout: &FlashLayout,
    ) -> Result<Option<TransferLog>, FlashError> {
        let mut m = [0u8; MANIFEST_LEN];
        flash::read(flash, layout.transfer, &mut m)?;
        let Some(manifest) = Manifest::decode(&m) else {
            return Ok(None);
        };
        let mut log = TransferLog {
            manifest,
            next_chunk: 0,
            free: capacity::<F>(),
        };
        for i in 0..capacity::<F>() {
            let mut r = [0u8; PROGRESS_LEN];
            flash::read(
                flash,
                layout.transfer + LOG_START + i * stride::<F>(),
                &mut r,
            )?;
            if r.iter().all(|&b| b == 0xFF) {
                log.free = i;
                break;
            }
            let crc = u32::from_le_bytes([r[4], r[5], r[6], r[7]]);
            if CRC32C.checksum(&r[..4]) == crc {
                log.next_chunk = u32::from_le_bytes([r[0], r[1], r[2], r[3]]);
            }
        }
        Ok(Some(log))
    }

    /// Starts a transfer: erases the sector and writes the manifest.
    pub fn start<F: NorFlash>(
        flash: &mut F,
        layout: &FlashLayout,
        manifest: Manifest,
    ) -> Result<TransferLog, FlashError> {
        flash::erase(
            flash,
            layout.transfer,
            layout.transfer + F::ERASE_SIZE as u32,
        )?;
        flash::write_padded(flash, layout.transfer, &manifest.encode())?;
        Ok(TransferLog {
            manifest,
            next_chunk: 0,
            free: 0,
        })
    }

    /// Records that chunks `0 .. next_chunk` are written. Returns `false`, writing nothing,
    /// when the sector is full.
    pub fn record<F: NorFlash>(
        &mut self,
        flash: &mut F,
        layout: &FlashLayout,
        next_chunk: u32,
    ) -> Result<bool, FlashError> {
        if self.free >= capacity::<F>() {
            self.next_chunk = next_chunk;
            return Ok(false);
        }
        let at = layout.transfer + LOG_START + self.free * stride::<F>();
        flash::write_padded(flash, at, &encode_progress(next_chunk))?;
        self.free += 1;
        self.next_chunk = next_chunk;
        Ok(true)
    }
}
