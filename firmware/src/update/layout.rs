//! Where the update's regions are in flash.
//!
//! # Regions
//!
//! | region | size | content |
//! |---|---|---|
//! | slot A | `slot_size` | an image: header, payload, trailer ([`tianzhong_protocol::image`]), then erased or stale bytes |
//! | slot B | `slot_size` | the same |
//! | boot state 0 | one erase sector | the boot-state log ([`boot_state`](super::boot_state)) |
//! | boot state 1 | one erase sector | the same, alternating with boot state 0 on compaction |
//! | transfer | one erase sector | the image being received and the chunks written ([`transfer`](super::transfer)) |
//!
//! All offsets are relative to the [`NorFlash`] given, aligned to its erase sectors, and the
//! regions do not overlap. The board's `memory.x` shows where they sit on the STM32F405.
//!
//! The slots are executed in place: the bootloader jumps into the chosen slot, so each slot's
//! image is linked for that slot's address (the gateway sends the build for the inactive
//! slot). Slot A holds the factory image; with no boot-state record, A is the confirmed slot.

use core::fmt;

use embedded_storage::nor_flash::NorFlash;

/// One of the two firmware slots.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Slot {
    /// Slot A: the factory image's.
    A,
    /// Slot B.
    B,
}

impl Slot {
    /// The other slot.
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    /// 0 for A, 1 for B: the byte stored in boot-state records.
    pub fn index(self) -> u8 {
        match self {
            Slot::A => 0,
            Slot::B => 1,
        }
    }

    /// The slot stored as `byte`, if any.
    pub fn from_index(byte: u8) -> Option<Slot> {
        match byte {
            0 => Some(Slot::A),
            1 => Some(Slot::B),
            _ => None,
        }
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Slot::A => "A",
            Slot::B => "B",
        })
    }
}

/// The regions, as offsets into the flash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlashLayout {
    /// Offsets of slot A and slot B.
    pub slots: [u32; 2],
    /// Bytes of each slot: the largest image (header, payload, trailer) it takes.
    pub slot_size: u32,
    /// Offsets of the two boot-state sectors.
    pub state: [u32; 2],
    /// Offset of the transfer sector.
    pub transfer: u32,
}

/// Why a layout does not fit a flash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayoutError {
    /// A region does not start on an erase-sector boundary, or a slot is not a whole number
    /// of sectors.
    NotSectorAligned {
        /// The offending offset or size.
        value: u32,
    },
    /// A region runs past the end of the flash.
    OutOfFlash {
        /// Its end.
        end: u32,
    },
    /// Two regions overlap.
    Overlap,
    /// The flash's write or read unit is larger than this module's records handle (16 bytes
    /// writes, a power of two, and 16 bytes reads), or the erase sector smaller than 256 bytes.
    UnsupportedGeometry,
}

impl fmt::Display for LayoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LayoutError::NotSectorAligned { value } => {
                write!(f, "0x{value:x} is not aligned to the flash's erase sectors")
            }
            LayoutError::OutOfFlash { end } => {
                write!(f, "a region ends at 0x{end:x}, past the end of the flash")
            }
            LayoutError::Overlap => write!(f, "two update regions overlap"),
            LayoutError::UnsupportedGeometry => write!(
                f,
                "flash geometry not supported: write and read units must be at most 16 bytes, sectors at least 256"
            ),
        }
    }
}

/// Largest write or read unit supported.
pub const MAX_UNIT: usize = 16;

impl FlashLayout {
    /// Offset of `slot`.
    pub fn slot(&self, slot: Slot) -> u32 {
        self.slots[usize::from(slot.index())]
    }

    /// The slot whose region holds flash offset `offset`, if any: how an application executed
    /// in place finds the slot it runs from (the address of its own code, less the flash's base).
    pub fn slot_at(&self, offset: u32) -> Option<Slot> {
        [Slot::A, Slot::B].into_iter().find(|&s| {
            let start = self.slot(s);
            offset >= start && offset - start < self.slot_size
        })
    }

    /// Checks the layout against a flash of type `F` holding `capacity` bytes.
    pub fn check<F: NorFlash>(&self, capacity: usize) -> Result<(), LayoutError> {
        let erase = F::ERASE_SIZE as u32;
        if F::WRITE_SIZE > MAX_UNIT
            || !F::WRITE_SIZE.is_power_of_two()
            || F::READ_SIZE > MAX_UNIT
            || F::ERASE_SIZE < 256
            || !F::ERASE_SIZE.is_multiple_of(F::WRITE_SIZE)
        {
            return Err(LayoutError::UnsupportedGeometry);
        }
        if self.slot_size == 0 || !self.slot_size.is_multiple_of(erase) {
            return Err(LayoutError::NotSectorAligned {
                value: self.slot_size,
            });
        }
        let regions = [
            (self.slots[0], self.slot_size),
            (self.slots[1], self.slot_size),
            (self.state[0], erase),
            (self.state[1], erase),
            (self.transfer, erase),
        ];
        for (i, &(start, len)) in regions.iter().enumerate() {
            if !start.is_multiple_of(erase) {
                return Err(LayoutError::NotSectorAligned { value: start });
            }
            let end = start
                .checked_add(len)
                .ok_or(LayoutError::OutOfFlash { end: u32::MAX })?;
            if end as usize > capacity {
                return Err(LayoutError::OutOfFlash { end });
            }
            for &(other, other_len) in &regions[i + 1..] {
                if start < other + other_len && other < end {
                    return Err(LayoutError::Overlap);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_at_finds_the_slot_holding_an_offset() {
        let layout = FlashLayout {
            slots: [0x8_0000, 0xA_0000],
            slot_size: 0x2_0000,
            state: [0x2_0000, 0x4_0000],
            transfer: 0x6_0000,
        };
        assert_eq!(layout.slot_at(0x8_0000), Some(Slot::A));
        assert_eq!(layout.slot_at(0x9_FFFF), Some(Slot::A));
        assert_eq!(layout.slot_at(0xA_0200), Some(Slot::B));
        assert_eq!(layout.slot_at(0xB_FFFF), Some(Slot::B));
        for outside in [0, 0x7_FFFF, 0xC_0000, u32::MAX] {
            assert_eq!(layout.slot_at(outside), None, "{outside:x}");
        }
    }
}
