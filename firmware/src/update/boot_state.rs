//! The boot state: which slot is confirmed, and whether the other holds an image that is new
//! or on trial, with its boot-attempt count. Derived on every read from the records in two
//! boot-state sectors; nothing is cached across a reset.
//!
//! NOR flash clears bits but sets them only by erasing a whole sector, so the state is an
//! append-only log of fixed-size records, each with its own CRC: a record cut short by a power
//! failure fails its CRC and is skipped, and the state is what the whole records say. When a
//! sector is full, the log is compacted into the other sector as one *snapshot* record with a
//! higher generation; the sector whose first record is the valid snapshot of the highest
//! generation is the current one. The old sector is left as it is until the next compaction
//! erases it, so at every instant one complete log exists.
//!
//! # Record layout ([`RECORD_LEN`] bytes, little-endian)
//!
//! | offset | bytes | content |
//! |---|---|---|
//! | 0 | 1 | kind: `0x01` snapshot, `0x02` stage, `0x03` boot attempt, `0x04` confirm, `0x05` abandon |
//! | 1 | 1 | slot (0 = A, 1 = B); for a snapshot, the confirmed slot |
//! | 2 | 1 | snapshot: the trial slot, or `0xFF` for none; otherwise `0xFF` |
//! | 3 | 1 | snapshot: the trial's boot attempts; otherwise 0 |
//! | 4 | 4 | snapshot: generation; otherwise 0 |
//! | 8 | 4 | magic `TZBS` |
//! | 12 | 4 | CRC-32C over bytes 0..12 |
//!
//! # Sector layout
//!
//! | record | content |
//! |---|---|
//! | 0 | snapshot: the state when the sector was started |
//! | 1 … | stage, attempt, confirm and abandon records in the order they happened; the first all-`0xFF` record ends the log |
//!
//! # What the records do
//!
//! | record | effect |
//! |---|---|
//! | stage(s) | s ≠ confirmed: s holds a verified image, **new** (a trial with 0 attempts) |
//! | attempt(s) | s is the trial: one more boot attempt; the image is on **trial** |
//! | confirm(s) | s is **confirmed**; no trial |
//! | abandon(s) | s is the trial: no trial any more (the receiver is about to overwrite it) |
//!
//! With no valid sector (a factory-fresh flash) slot A is confirmed and there is no trial.

use embedded_storage::nor_flash::NorFlash;
use tianzhong_protocol::crc::FRAME as CRC32C;

use super::flash::{self, FlashError};
use super::layout::{FlashLayout, Slot};

/// Bytes of one record.
pub const RECORD_LEN: usize = 16;

const MAGIC: [u8; 4] = *b"TZBS";
const SNAPSHOT: u8 = 0x01;
const STAGE: u8 = 0x02;
const ATTEMPT: u8 = 0x03;
const CONFIRM: u8 = 0x04;
const ABANDON: u8 = 0x05;
const NONE: u8 = 0xFF;

/// An image waiting for confirmation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trial {
    /// Its slot (never the confirmed one).
    pub slot: Slot,
    /// Boots attempted so far: 0 while the image is new.
    pub attempts: u8,
}

/// The boot state, as the flash says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootState {
    /// The slot of the confirmed image.
    pub confirmed: Slot,
    /// An image that is new or on trial, if any.
    pub trial: Option<Trial>,
    /// Generation of the current sector's snapshot (0 when no sector is valid).
    pub generation: u32,
    /// The current sector (0 or 1), if one is valid.
    sector: Option<usize>,
    /// Index of the first free record in the current sector.
    next: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Record {
    Snapshot {
        confirmed: Slot,
        trial: Option<Trial>,
        generation: u32,
    },
    Stage(Slot),
    Attempt(Slot),
    Confirm(Slot),
    Abandon(Slot),
}

impl Record {
    fn encode(self) -> [u8; RECORD_LEN] {
        let mut b = [0u8; RECORD_LEN];
        b[2] = NONE;
        let (kind, slot) = match self {
            Record::Snapshot {
                confirmed,
                trial,
                generation,
            } => {
                if let Some(t) = trial {
                    b[2] = t.slot.index();
                    b[3] = t.attempts;
                }
                b[4..8].copy_from_slice(&generation.to_le_bytes());
                (SNAPSHOT, confirmed)
            }
            Record::Stage(s) => (STAGE, s),
            Record::Attempt(s) => (ATTEMPT, s),
            Record::Confirm(s) => (CONFIRM, s),
            Record::Abandon(s) => (ABANDON, s),
        };
        b[0] = kind;
        b[1] = slot.index();
        b[8..12].copy_from_slice(&MAGIC);
        let crc = CRC32C.checksum(&b[..12]);
        b[12..16].copy_from_slice(&crc.to_le_bytes());
        b
    }

    fn decode(b: &[u8; RECORD_LEN]) -> Option<Record> {
        let crc = u32::from_le_bytes([b[12], b[13], b[14], b[15]]);
        if b[8..12] != MAGIC || CRC32C.checksum(&b[..12]) != crc {
            return None;
        }
        let slot = Slot::from_index(b[1])?;
        Some(match b[0] {
            SNAPSHOT => Record::Snapshot {
                confirmed: slot,
                trial: match b[2] {
                    NONE => None,
                    t => Some(Trial {
                        slot: Slot::from_index(t)?,
                        attempts: b[3],
                    }),
                },
                generation: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
            },
            STAGE => Record::Stage(slot),
            ATTEMPT => Record::Attempt(slot),
            CONFIRM => Record::Confirm(slot),
            ABANDON => Record::Abandon(slot),
            _ => return None,
        })
    }
}

fn read_record<F: NorFlash>(
    flash: &mut F,
    at: u32,
) -> Result<([u8; RECORD_LEN], Option<Record>), FlashError> {
    let mut b = [0u8; RECORD_LEN];
    flash::read(flash, at, &mut b)?;
    Ok((b, Record::decode(&b)))
}

fn capacity<F: NorFlash>() -> u32 {
    (F::ERASE_SIZE / RECORD_LEN) as u32
}

impl BootState {
    /// The state of a factory-fresh flash: A confirmed, no trial.
    pub const FACTORY: BootState = BootState {
        confirmed: Slot::A,
        trial: None,
        generation: 0,
        sector: None,
        next: 0,
    };

    /// Reads the state from the boot-state sectors.
    pub fn read<F: NorFlash>(flash: &mut F, layout: &FlashLayout) -> Result<BootState, FlashError> {
        let mut best: Option<(usize, Slot, Option<Trial>, u32)> = None;
        for (sector, &offset) in layout.state.iter().enumerate() {
            if let (
                _,
                Some(Record::Snapshot {
                    confirmed,
                    trial,
                    generation,
                }),
            ) = read_record(flash, offset)?
                && best.is_none_or(|(_, _, _, g)| generation > g)
            {
                best = Some((sector, confirmed, trial, generation));
            }
        }
        let Some((sector, confirmed, trial, generation)) = best else {
            return Ok(BootState::FACTORY);
        };
        let mut state = BootState {
            confirmed,
            trial,
            generation,
            sector: Some(sector),
            next: capacity::<F>(),
        };
        let base = layout.state[sector];
        for i in 1..capacity::<F>() {
            let (bytes, record) = read_record(flash, base + i * RECORD_LEN as u32)?;
            if bytes.iter().all(|&b| b == 0xFF) {
                state.next = i;
                break;
            }
            // A record cut short by a power failure: skipped, and the log goes on after it.
            if let Some(r) = record {
                state.apply(r);
            }
        }
        Ok(state)
    }

    fn apply(&mut self, record: Record) {
        match record {
            Record::Snapshot { .. } => {} // only valid as a sector's first record
            Record::Stage(s) if s != self.confirmed => {
                self.trial = Some(Trial {
                    slot: s,
                    attempts: 0,
                })
            }
            Record::Attempt(s) => {
                if let Some(t) = self.trial.as_mut().filter(|t| t.slot == s) {
                    t.attempts = t.attempts.saturating_add(1);
                }
            }
            Record::Confirm(s) => {
                self.confirmed = s;
                self.trial = None;
            }
            Record::Abandon(s) => {
                if self.trial.is_some_and(|t| t.slot == s) {
                    self.trial = None;
                }
            }
            Record::Stage(_) => {}
        }
    }

    fn append<F: NorFlash>(
        &mut self,
        flash: &mut F,
        layout: &FlashLayout,
        record: Record,
    ) -> Result<(), FlashError> {
        let mut after = *self;
        after.apply(record);
        match self.sector {
            Some(sector) if self.next < capacity::<F>() => {
                let at = layout.state[sector] + self.next * RECORD_LEN as u32;
                flash::write_padded(flash, at, &record.encode())?;
                after.next = self.next + 1;
            }
            _ => {
                // Compaction: the other sector starts over with a snapshot of the state after
                // this record, one generation up. Until its snapshot is whole, the current
                // sector remains the valid one.
                let target = match self.sector {
                    Some(s) => 1 - s,
                    None => 0,
                };
                let offset = layout.state[target];
                flash::erase(flash, offset, offset + F::ERASE_SIZE as u32)?;
                let generation = self.generation.wrapping_add(1);
                let snapshot = Record::Snapshot {
                    confirmed: after.confirmed,
                    trial: after.trial,
                    generation,
                };
                flash::write_padded(flash, offset, &snapshot.encode())?;
                after.generation = generation;
                after.sector = Some(target);
                after.next = 1;
            }
        }
        *self = after;
        Ok(())
    }

    /// Records that `slot` holds a verified image, new. Ignored for the confirmed slot.
    pub fn stage<F: NorFlash>(
        &mut self,
        flash: &mut F,
        layout: &FlashLayout,
        slot: Slot,
    ) -> Result<(), FlashError> {
        self.append(flash, layout, Record::Stage(slot))
    }

    /// Records one more boot attempt of the trial image in `slot`.
    pub fn record_attempt<F: NorFlash>(
        &mut self,
        flash: &mut F,
        layout: &FlashLayout,
        slot: Slot,
    ) -> Result<(), FlashError> {
        self.append(flash, layout, Record::Attempt(slot))
    }

    /// Records that the image in `slot` is confirmed: the application calls this once the
    /// gateway's health poll of the new image succeeded.
    pub fn confirm<F: NorFlash>(
        &mut self,
        flash: &mut F,
        layout: &FlashLayout,
        slot: Slot,
    ) -> Result<(), FlashError> {
        if self.confirmed == slot && self.trial.is_none() {
            return Ok(()); // nothing to record; keeps the log short on every boot
        }
        self.append(flash, layout, Record::Confirm(slot))
    }

    /// Records that the trial image in `slot` is given up (it is about to be overwritten).
    pub fn abandon<F: NorFlash>(
        &mut self,
        flash: &mut F,
        layout: &FlashLayout,
        slot: Slot,
    ) -> Result<(), FlashError> {
        if !self.trial.is_some_and(|t| t.slot == slot) {
            return Ok(());
        }
        self.append(flash, layout, Record::Abandon(slot))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_bytes_by_hand() {
        let b = Record::Stage(Slot::B).encode();
        assert_eq!(
            &b[..12],
            &[0x02, 0x01, 0xFF, 0, 0, 0, 0, 0, b'T', b'Z', b'B', b'S']
        );
        let b = Record::Snapshot {
            confirmed: Slot::A,
            trial: Some(Trial {
                slot: Slot::B,
                attempts: 2,
            }),
            generation: 0x0102_0304,
        }
        .encode();
        assert_eq!(&b[..8], &[0x01, 0x00, 0x01, 0x02, 0x04, 0x03, 0x02, 0x01]);
        for kind in [SNAPSHOT, STAGE, ATTEMPT, CONFIRM, ABANDON] {
            let mut r = Record::Confirm(Slot::A).encode();
            r[0] = kind;
            let crc = CRC32C.checksum(&r[..12]);
            r[12..16].copy_from_slice(&crc.to_le_bytes());
            assert!(Record::decode(&r).is_some());
        }
        // Erased, or any single flipped bit: not a record.
        assert_eq!(Record::decode(&[0xFF; RECORD_LEN]), None);
        let good = Record::Attempt(Slot::B).encode();
        for bit in 0..RECORD_LEN * 8 {
            let mut r = good;
            r[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(Record::decode(&r), None, "bit {bit}");
        }
    }
}
