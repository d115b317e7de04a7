//! Persisting the configuration in flash through embedded-storage's `NorFlash`.
//!
//! Two slots, each its own erase sector, hold alternate copies. A save erases and writes the
//! slot that does not hold the newest valid copy, so a power cut during a save leaves the
//! previous configuration intact; on boot the valid copy with the higher sequence number wins,
//! and with none valid the node runs on factory defaults and says so in its status flags.
//!
//! # Record layout (little-endian)
//!
//! | offset | bytes | content |
//! |---|---|---|
//! | 0 | 4 | magic `TZCF` |
//! | 4 | 2 | layout version (1) |
//! | 6 | 2 | payload length in bytes |
//! | 8 | 4 | sequence number, incremented by each save |
//! | 12 | n | payload: the configuration's holding-register image, u16 each |
//! | 12 + n | 4 | CRC-32C over bytes 0 .. 12 + n |

use embedded_storage::nor_flash::{NorFlash, NorFlashError, NorFlashErrorKind};
use tianzhong_protocol::crc::FRAME as CRC32C;

use super::config::{CONFIG_IMAGE_LEN, ConfigImage, NodeConfig};

const MAGIC: [u8; 4] = *b"TZCF";
const VERSION: u16 = 1;
const HEADER: usize = 12;
const PAYLOAD: usize = CONFIG_IMAGE_LEN * 2;
/// Bytes of one record.
pub const RECORD_LEN: usize = HEADER + PAYLOAD + 4;

/// A flash error while loading or saving.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StorageError(pub NorFlashErrorKind);

/// Where the two slots are.
#[derive(Clone, Copy, Debug)]
pub struct ConfigSlots {
    /// Offset of slot A, aligned to an erase sector.
    pub a: u32,
    /// Offset of slot B, aligned to an erase sector.
    pub b: u32,
}

/// What loading found.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Loaded {
    /// The configuration.
    pub config: NodeConfig,
    /// Its sequence number.
    pub seq: u32,
    /// Which slot it came from (0 = A, 1 = B).
    pub slot: u8,
}

/// The configuration store.
pub struct ConfigStore<F> {
    flash: F,
    slots: ConfigSlots,
    newest: Option<(u8, u32)>,
}

fn err<E: NorFlashError>(e: E) -> StorageError {
    StorageError(e.kind())
}

impl<F: NorFlash> ConfigStore<F> {
    /// A store over `flash` with its two slots.
    pub fn new(flash: F, slots: ConfigSlots) -> ConfigStore<F> {
        ConfigStore {
            flash,
            slots,
            newest: None,
        }
    }

    /// Gives the flash back.
    pub fn release(self) -> F {
        self.flash
    }

    /// The flash, for the other regions that share it (a board's boot state): the store
    /// touches only its two slots, so using the rest in between does not disturb it.
    pub fn flash_mut(&mut self) -> &mut F {
        &mut self.flash
    }

    fn offset(&self, slot: u8) -> u32 {
        if slot == 0 {
            self.slots.a
        } else {
            self.slots.b
        }
    }

    fn read_slot(&mut self, slot: u8) -> Result<Option<(NodeConfig, u32)>, StorageError> {
        let mut buf = [0u8; RECORD_LEN];
        self.flash.read(self.offset(slot), &mut buf).map_err(err)?;
        if buf[0..4] != MAGIC
            || u16::from_le_bytes([buf[4], buf[5]]) != VERSION
            || usize::from(u16::from_le_bytes([buf[6], buf[7]])) != PAYLOAD
        {
            return Ok(None);
        }
        let end = HEADER + PAYLOAD;
        let stored = u32::from_le_bytes([buf[end], buf[end + 1], buf[end + 2], buf[end + 3]]);
        if CRC32C.checksum(&buf[..end]) != stored {
            return Ok(None);
        }
        let seq = u32::from_le_bytes([buf[8], buf[9], buf[10], buf[11]]);
        let mut image: ConfigImage = [0; CONFIG_IMAGE_LEN];
        for (i, r) in image.iter_mut().enumerate() {
            *r = u16::from_le_bytes([buf[HEADER + 2 * i], buf[HEADER + 2 * i + 1]]);
        }
        // A CRC-valid record that no longer validates (written by firmware with other rules)
        // is treated as absent rather than trusted.
        Ok(NodeConfig::from_image(&image).ok().map(|c| (c, seq)))
    }

    /// Loads the newest valid configuration, if any.
    pub fn load(&mut self) -> Result<Option<Loaded>, StorageError> {
        let a = self.read_slot(0)?;
        let b = self.read_slot(1)?;
        let best = match (a, b) {
            (Some((ca, sa)), Some((cb, sb))) => {
                // Sequence numbers compare by wrapping distance so a counter wrap keeps order.
                if sb.wrapping_sub(sa) as i32 > 0 {
                    Some((cb, sb, 1))
                } else {
                    Some((ca, sa, 0))
                }
            }
            (Some((c, s)), None) => Some((c, s, 0)),
            (None, Some((c, s))) => Some((c, s, 1)),
            (None, None) => None,
        };
        self.newest = best.map(|(_, s, slot)| (slot, s));
        Ok(best.map(|(config, seq, slot)| Loaded { config, seq, slot }))
    }

    /// Saves `config` to the slot not holding the newest copy. Call [`ConfigStore::load`]
    /// first after boot so the store knows which that is.
    pub fn save(&mut self, config: &NodeConfig) -> Result<u32, StorageError> {
        let (slot, seq) = match self.newest {
            Some((slot, seq)) => (1 - slot, seq.wrapping_add(1)),
            None => (0, 1),
        };
        let mut buf = [0xFFu8; RECORD_LEN + 8];
        buf[0..4].copy_from_slice(&MAGIC);
        buf[4..6].copy_from_slice(&VERSION.to_le_bytes());
        buf[6..8].copy_from_slice(&(PAYLOAD as u16).to_le_bytes());
        buf[8..12].copy_from_slice(&seq.to_le_bytes());
        for (i, r) in config.to_image().iter().enumerate() {
            buf[HEADER + 2 * i..HEADER + 2 * i + 2].copy_from_slice(&r.to_le_bytes());
        }
        let end = HEADER + PAYLOAD;
        let crc = CRC32C.checksum(&buf[..end]);
        buf[end..end + 4].copy_from_slice(&crc.to_le_bytes());
        // Pad the write to the flash's write granularity with erased bytes.
        let len = RECORD_LEN.div_ceil(F::WRITE_SIZE) * F::WRITE_SIZE;
        if len > buf.len() {
            return Err(StorageError(NorFlashErrorKind::NotAligned));
        }
        let offset = self.offset(slot);
        let erase_end = offset + (len.div_ceil(F::ERASE_SIZE) * F::ERASE_SIZE) as u32;
        self.flash.erase(offset, erase_end).map_err(err)?;
        self.flash.write(offset, &buf[..len]).map_err(err)?;
        self.newest = Some((slot, seq));
        Ok(seq)
    }
}
