//! The hand-off: where the bootloader jumps once [`boot`](super::boot::boot) has chosen a
//! verified slot, and the checks that the jump is into code linked for that slot.
//!
//! A signature proves who built an image, not that it was linked for the slot it landed in:
//! the gateway sends the build for the inactive slot, and the build for the other slot would
//! verify just as well and then crash at its first absolute branch. So before it jumps, the
//! bootloader reads the payload's first two words (a Cortex-M vector table: initial stack
//! pointer, reset vector) and checks them against the slot.
//!
//! # Checks ([`entry`])
//!
//! | check | why | failure |
//! |---|---|---|
//! | payload start (slot address + `header_len`) aligned to the MCU's VTOR alignment | VTOR ignores low address bits: a misaligned table would be read from the wrong place | [`HandoffError::VectorTableMisaligned`] |
//! | initial stack pointer word-aligned, inside RAM (the top of RAM included) | the first push would fault | [`HandoffError::StackOutsideRam`] |
//! | reset vector has the Thumb bit | a Cortex-M faults on an ARM-state branch | [`HandoffError::NotThumb`] |
//! | reset vector inside the payload, past the two words | an image linked for the other slot (or for no slot) points outside | [`HandoffError::ResetOutsideImage`] |
//!
//! All addresses are the CPU's: `flash_base` (0x0800_0000 on an STM32) plus the offsets of
//! [`FlashLayout`].

use core::fmt;
use core::ops::Range;

use embedded_storage::nor_flash::NorFlash;
use tianzhong_protocol::image::ImageHeader;

use super::flash::{self, FlashError};
use super::layout::{FlashLayout, Slot};

/// The MCU the bootloader hands over on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// CPU address of flash offset 0.
    pub flash_base: u32,
    /// Addresses the initial stack pointer may take (its end is the top of RAM, a valid SP).
    pub ram: Range<u32>,
    /// VTOR's alignment: the vector table's size rounded up to a power of two (512 bytes for
    /// an STM32F405's 16 + 82 vectors).
    pub vector_alignment: u32,
}

/// Where to jump.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// CPU address of the image's vector table: what VTOR gets.
    pub vector_table: u32,
    /// Its first word: the main stack pointer.
    pub stack_pointer: u32,
    /// Its second word: the reset handler (Thumb bit set).
    pub reset: u32,
}

/// Why the bootloader does not jump into a verified image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandoffError {
    /// Reading the vector table failed.
    Flash(FlashError),
    /// The payload does not start on VTOR's alignment.
    VectorTableMisaligned {
        /// The payload's CPU address.
        address: u32,
    },
    /// The initial stack pointer is not a word-aligned RAM address.
    StackOutsideRam {
        /// The image's initial stack pointer.
        stack_pointer: u32,
    },
    /// The reset vector is not a Thumb address.
    NotThumb {
        /// The image's reset vector.
        reset: u32,
    },
    /// The reset vector is not in the payload: the image is linked for another address.
    ResetOutsideImage {
        /// The image's reset vector.
        reset: u32,
        /// The payload's CPU address range.
        payload: (u32, u32),
    },
}

impl fmt::Display for HandoffError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandoffError::Flash(e) => write!(f, "{e}"),
            HandoffError::VectorTableMisaligned { address } => {
                write!(f, "vector table at 0x{address:08x} is not aligned for VTOR")
            }
            HandoffError::StackOutsideRam { stack_pointer } => {
                write!(
                    f,
                    "initial stack pointer 0x{stack_pointer:08x} is not in RAM"
                )
            }
            HandoffError::NotThumb { reset } => {
                write!(f, "reset vector 0x{reset:08x} is not a Thumb address")
            }
            HandoffError::ResetOutsideImage { reset, payload } => write!(
                f,
                "reset vector 0x{reset:08x} is outside the payload 0x{:08x}..0x{:08x}: linked for another slot?",
                payload.0, payload.1
            ),
        }
    }
}

impl From<FlashError> for HandoffError {
    fn from(e: FlashError) -> HandoffError {
        HandoffError::Flash(e)
    }
}

/// Checks the first two words `vectors` of the payload of the image `header` in `slot`.
pub fn check_vectors(
    layout: &FlashLayout,
    target: &Target,
    slot: Slot,
    header: &ImageHeader,
    vectors: [u32; 2],
) -> Result<Entry, HandoffError> {
    let start = target
        .flash_base
        .wrapping_add(layout.slot(slot))
        .wrapping_add(u32::from(header.header_len));
    if !start.is_multiple_of(target.vector_alignment.max(1)) {
        return Err(HandoffError::VectorTableMisaligned { address: start });
    }
    let [stack_pointer, reset] = vectors;
    if !stack_pointer.is_multiple_of(4)
        || stack_pointer <= target.ram.start
        || stack_pointer > target.ram.end
    {
        return Err(HandoffError::StackOutsideRam { stack_pointer });
    }
    if reset & 1 == 0 {
        return Err(HandoffError::NotThumb { reset });
    }
    let end = start.saturating_add(header.image_size);
    let code = reset & !1;
    if code < start.saturating_add(8) || code >= end {
        return Err(HandoffError::ResetOutsideImage {
            reset,
            payload: (start, end),
        });
    }
    Ok(Entry {
        vector_table: start,
        stack_pointer,
        reset,
    })
}

/// Reads the vector table of the image `header` in `slot` from flash and checks it.
pub fn entry<F: NorFlash>(
    flash: &mut F,
    layout: &FlashLayout,
    target: &Target,
    slot: Slot,
    header: &ImageHeader,
) -> Result<Entry, HandoffError> {
    let mut b = [0u8; 8];
    flash::read(
        flash,
        layout.slot(slot) + u32::from(header.header_len),
        &mut b,
    )?;
    let word = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    check_vectors(layout, target, slot, header, [word(0), word(4)])
}

#[cfg(test)]
mod tests {
    use tianzhong_protocol::image::HardwareId;
    use tianzhong_protocol::registers::profile::FirmwareVersion;

    use super::*;

    /// The STM32F405's map (memory.x of the board crate).
    const LAYOUT: FlashLayout = FlashLayout {
        slots: [0x8_0000, 0xA_0000],
        slot_size: 0x2_0000,
        state: [0x2_0000, 0x4_0000],
        transfer: 0x6_0000,
    };

    fn target() -> Target {
        Target {
            flash_base: 0x0800_0000,
            ram: 0x2000_0000..0x2002_0000,
            vector_alignment: 512,
        }
    }

    fn header(header_len: u16) -> ImageHeader {
        ImageHeader {
            hardware: HardwareId::new("TZ-NODE-F4", 1).unwrap(),
            version: FirmwareVersion {
                major: 1,
                minor: 0,
                patch: 0,
            },
            security_counter: 1,
            image_size: 30_000,
            header_len,
        }
    }

    #[test]
    fn an_image_linked_for_its_slot_is_entered_at_its_reset_vector() {
        let e = check_vectors(
            &LAYOUT,
            &target(),
            Slot::B,
            &header(512),
            [0x2000_4000, 0x080A_0401],
        )
        .unwrap();
        assert_eq!(
            e,
            Entry {
                vector_table: 0x080A_0200,
                stack_pointer: 0x2000_4000,
                reset: 0x080A_0401,
            }
        );
    }

    #[test]
    fn an_image_linked_for_the_other_slot_is_refused() {
        // Slot A's build copied into slot B: it verifies, but its reset vector is in A.
        let e = check_vectors(
            &LAYOUT,
            &target(),
            Slot::B,
            &header(512),
            [0x2000_4000, 0x0808_0401],
        );
        assert_eq!(
            e,
            Err(HandoffError::ResetOutsideImage {
                reset: 0x0808_0401,
                payload: (0x080A_0200, 0x080A_0200 + 30_000),
            })
        );
    }

    #[test]
    fn misaligned_tables_bad_stacks_and_arm_state_are_refused() {
        let t = target();
        let check = |len, v| check_vectors(&LAYOUT, &t, Slot::A, &header(len), v);
        assert_eq!(
            check(256, [0x2000_4000, 0x0808_0401]),
            Err(HandoffError::VectorTableMisaligned {
                address: 0x0808_0100
            })
        );
        for sp in [0x2000_0000, 0x2002_0004, 0x2000_4002, 0xFFFF_FFFF] {
            assert_eq!(
                check(512, [sp, 0x0808_0401]),
                Err(HandoffError::StackOutsideRam { stack_pointer: sp }),
                "{sp:x}"
            );
        }
        assert_eq!(
            check(512, [0x2000_4000, 0x0808_0400]),
            Err(HandoffError::NotThumb { reset: 0x0808_0400 })
        );
        // Erased flash reads as 0xFFFFFFFF twice: refused, whatever the header said.
        assert!(check(512, [u32::MAX, u32::MAX]).is_err());
        // The reset vector may not point at the vector table's own first words.
        assert!(matches!(
            check(512, [0x2000_4000, 0x0808_0201]),
            Err(HandoffError::ResetOutsideImage { .. })
        ));
    }

    #[test]
    fn entry_reads_the_two_words_behind_the_header() {
        use crate::sim::PowerCutFlash;
        // A small map with the same shape: slot A at 4 KiB in an 8 KiB flash at 0x0800_0000.
        let layout = FlashLayout {
            slots: [0x1000, 0x1800],
            slot_size: 0x800,
            state: [0, 0x400],
            transfer: 0x800,
        };
        let mut flash = PowerCutFlash::<0x2000>::default();
        flash.bytes_mut()[0x1200..0x1204].copy_from_slice(&0x2000_4000u32.to_le_bytes());
        flash.bytes_mut()[0x1204..0x1208].copy_from_slice(&0x0800_1235u32.to_le_bytes());
        let mut h = header(512);
        h.image_size = 0x400;
        let e = entry(&mut flash, &layout, &target(), Slot::A, &h).unwrap();
        assert_eq!(
            e,
            Entry {
                vector_table: 0x0800_1200,
                stack_pointer: 0x2000_4000,
                reset: 0x0800_1235,
            }
        );
    }
}
