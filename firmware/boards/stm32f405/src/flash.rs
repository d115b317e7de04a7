//! The chip's flash as embedded-storage's `NorFlash`, offsets from the start of flash: what
//! the configuration store, the boot state and the bootloader's slot checks all go through.
//!
//! The STM32F405's sectors are 16, 64 and 128 KiB; the adapter reports a uniform 128 KiB erase
//! unit, which holds for every region the update and configuration code erase (sectors 5-11,
//! see `memory.x`). Sectors 0-4 (the bootloader) are never erased through it.

#[cfg(not(feature = "qemu"))]
pub use chip::ChipFlash;
#[cfg(feature = "qemu")]
pub use rom::RomFlash;

/// Bytes of one erase unit: sectors 5-11.
pub const ERASE_SIZE: usize = 128 * 1024;

#[cfg(not(feature = "qemu"))]
mod chip {
    use embedded_storage::nor_flash::{ErrorType, NorFlash, ReadNorFlash};
    use stm32f4xx_hal::flash::{self, FlashExt, LockedFlash};

    /// The flash through the HAL, unlocked only for the duration of each erase or write.
    pub struct ChipFlash(LockedFlash);

    impl ChipFlash {
        /// The flash behind the FLASH peripheral.
        pub fn new(flash: stm32f4xx_hal::pac::FLASH) -> ChipFlash {
            ChipFlash(LockedFlash::new(flash))
        }
    }

    impl ErrorType for ChipFlash {
        type Error = flash::Error;
    }

    impl ReadNorFlash for ChipFlash {
        const READ_SIZE: usize = 1;

        fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), flash::Error> {
            ReadNorFlash::read(&mut self.0, offset, bytes)
        }

        fn capacity(&self) -> usize {
            self.0.len()
        }
    }

    impl NorFlash for ChipFlash {
        const WRITE_SIZE: usize = 1;
        const ERASE_SIZE: usize = super::ERASE_SIZE;

        fn erase(&mut self, from: u32, to: u32) -> Result<(), flash::Error> {
            NorFlash::erase(&mut self.0.unlocked(), from, to)
        }

        fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), flash::Error> {
            NorFlash::write(&mut self.0.unlocked(), offset, bytes)
        }
    }
}

#[cfg(feature = "qemu")]
mod rom {
    use embedded_storage::nor_flash::{
        ErrorType, NorFlash, NorFlashError, NorFlashErrorKind, ReadNorFlash,
    };

    use crate::slots::{FLASH_BASE, FLASH_LEN};

    /// QEMU's flash: readable as memory, not programmable. netduinoplus2 models the flash as
    /// ROM and the flash interface not at all, so erases and writes are refused: the QEMU
    /// bootloader decides without recording boot attempts, and the QEMU application's confirm
    /// fails (its trial then ends at the time limit).
    pub struct RomFlash(&'static [u8]);

    impl RomFlash {
        /// The memory-mapped flash.
        pub fn new() -> RomFlash {
            // Read straight from memory: the HAL's reader sizes the flash from the device
            // signature at 0x1FFF7A22, which QEMU does not map.
            #[allow(unsafe_code)]
            // SAFETY: FLASH_LEN bytes from FLASH_BASE are the chip's flash, always mapped and
            // readable; QEMU never changes them while the firmware runs (they are ROM), so a
            // shared 'static slice over them is sound.
            let bytes = unsafe { core::slice::from_raw_parts(FLASH_BASE as *const u8, FLASH_LEN) };
            RomFlash(bytes)
        }
    }

    /// What the flash says to an erase or write.
    #[derive(Debug)]
    pub struct ReadOnly(NorFlashErrorKind);

    impl NorFlashError for ReadOnly {
        fn kind(&self) -> NorFlashErrorKind {
            self.0
        }
    }

    impl ErrorType for RomFlash {
        type Error = ReadOnly;
    }

    impl ReadNorFlash for RomFlash {
        const READ_SIZE: usize = 1;

        fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), ReadOnly> {
            let start = offset as usize;
            let src = start
                .checked_add(bytes.len())
                .and_then(|end| self.0.get(start..end))
                .ok_or(ReadOnly(NorFlashErrorKind::OutOfBounds))?;
            bytes.copy_from_slice(src);
            Ok(())
        }

        fn capacity(&self) -> usize {
            self.0.len()
        }
    }

    impl NorFlash for RomFlash {
        const WRITE_SIZE: usize = 1;
        const ERASE_SIZE: usize = super::ERASE_SIZE;

        fn erase(&mut self, _from: u32, _to: u32) -> Result<(), ReadOnly> {
            Err(ReadOnly(NorFlashErrorKind::Other))
        }

        fn write(&mut self, _offset: u32, _bytes: &[u8]) -> Result<(), ReadOnly> {
            Err(ReadOnly(NorFlashErrorKind::Other))
        }
    }
}
