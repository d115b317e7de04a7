//! The update files on the node's Modbus line: function codes 21 and 20 on files
//! `0xF000`–`0xF004` go to the firmware crate's
//! [`UpdateFiles`](tianzhong_firmware::update::modbus_files) over the update flash, every other
//! request to the node core.
//!
//! | variant | flash the receiver writes | after a finish that stages the image |
//! |---|---|---|
//! | hardware | the chip's flash through the same adapter and [`LAYOUT`] as the bootloader, shared with the configuration store ([`Shared`]) | the reply is sent, then the node resets into the bootloader |
//! | QEMU | [`RamWindows`]: the update regions' first bytes in RAM over the ROM QEMU loaded | the same; the RAM is cleared by the reset, so the bootloader boots the ROM's image again |
//!
//! The receiver writes the slot the boot state does not name as confirmed. That is the slot
//! the node does not run from, except after a fallback boot (the confirmed image failed its
//! check and the bootloader ran the other one): there the receiver would erase the code that
//! is running, so there an offer is refused with exception 04 (and the status keeps its last
//! reason). The same when the application cannot tell which slot it runs from.

use tianzhong_firmware::modbus::{Exception, RegisterBank};
use tianzhong_firmware::update::modbus_files::{OFFER_FILE, STATUS_FILE, UpdateFiles, phase};
use tianzhong_firmware::update::{BootState, Slot, Trust, UpdateReceiver};
use tianzhong_protocol::image::HardwareId;

use embedded_storage::nor_flash::NorFlash;

use crate::slots::{HARDWARE_REVISION, LAYOUT, MODEL};

#[cfg(feature = "qemu")]
pub use ram_windows::RamWindows;
#[cfg(not(feature = "qemu"))]
pub use shared::Shared;

mod trusted_key {
    // The bootloader's key: an image the receiver stages is one the bootloader will run.
    #![allow(dead_code)]
    include!(concat!(env!("OUT_DIR"), "/trusted_key.rs"));
}

/// The update files of this node and the slot it runs from.
pub struct Updates<F> {
    files: UpdateFiles<F>,
    running: Option<Slot>,
}

impl<F: NorFlash> Updates<F> {
    /// The files over `flash`, for an application running from `running`.
    pub fn new(flash: F, running: Option<Slot>) -> Option<Updates<F>> {
        let hardware = HardwareId::new(MODEL, HARDWARE_REVISION).ok()?;
        let trust = Trust {
            public_key: trusted_key::PUBLIC_KEY,
            hardware,
        };
        Some(Updates {
            files: UpdateFiles::new(UpdateReceiver::new(LAYOUT, trust), flash),
            running,
        })
    }

    /// The node core's registers with the update files beside them.
    pub fn bank<'a, B: RegisterBank>(&'a mut self, core: &'a mut B) -> Bank<'a, B, F> {
        Bank { core, update: self }
    }

    /// Whether an image is checked and staged: the node must reset into the bootloader.
    pub fn staged(&mut self) -> bool {
        let mut status = [0u16; 1];
        self.files
            .read_file_record(STATUS_FILE, 0, &mut status)
            .is_ok()
            && status[0] == phase::STAGED
    }

    /// Whether the slot the receiver would write is not the one running.
    fn target_is_idle(&mut self) -> bool {
        let Some(running) = self.running else {
            return false;
        };
        BootState::read(self.files.flash_mut(), &LAYOUT)
            .is_ok_and(|state| state.confirmed.other() != running)
    }
}

/// The node core's registers with the update files beside them.
pub struct Bank<'a, B, F> {
    core: &'a mut B,
    update: &'a mut Updates<F>,
}

impl<B: RegisterBank, F: NorFlash> RegisterBank for Bank<'_, B, F> {
    fn read_input_registers(&mut self, address: u16, out: &mut [u16]) -> Result<(), Exception> {
        self.core.read_input_registers(address, out)
    }

    fn read_holding_registers(&mut self, address: u16, out: &mut [u16]) -> Result<(), Exception> {
        self.core.read_holding_registers(address, out)
    }

    fn write_holding_registers(&mut self, address: u16, values: &[u16]) -> Result<(), Exception> {
        self.core.write_holding_registers(address, values)
    }

    fn device_identification(&self, object_id: u8) -> Option<&str> {
        self.core.device_identification(object_id)
    }

    fn read_file_record(
        &mut self,
        file: u16,
        record: u16,
        out: &mut [u16],
    ) -> Result<(), Exception> {
        self.update.files.read_file_record(file, record, out)
    }

    fn write_file_record(&mut self, file: u16, record: u16, data: &[u16]) -> Result<(), Exception> {
        if file == OFFER_FILE && !self.update.target_is_idle() {
            return Err(Exception::ServerDeviceFailure);
        }
        self.update.files.write_file_record(file, record, data)
    }
}

#[cfg(not(feature = "qemu"))]
mod shared {
    use core::cell::RefCell;

    use embedded_storage::nor_flash::{ErrorType, NorFlash, ReadNorFlash};

    /// One flash, two owners: the configuration store and the update files each hold a
    /// handle. Only the main loop uses either, never from an interrupt, so a borrow never
    /// meets another.
    pub struct Shared<F: 'static>(&'static RefCell<F>);

    impl<F> Clone for Shared<F> {
        fn clone(&self) -> Self {
            *self
        }
    }

    impl<F> Copy for Shared<F> {}

    impl<F> Shared<F> {
        /// Handles to `cell`.
        pub fn new(cell: &'static RefCell<F>) -> Shared<F> {
            Shared(cell)
        }

        /// Runs `f` on the flash.
        pub fn with<R>(&self, f: impl FnOnce(&mut F) -> R) -> R {
            f(&mut self.0.borrow_mut())
        }
    }

    impl<F: ErrorType> ErrorType for Shared<F> {
        type Error = F::Error;
    }

    impl<F: ReadNorFlash> ReadNorFlash for Shared<F> {
        const READ_SIZE: usize = F::READ_SIZE;

        fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), F::Error> {
            self.with(|f| f.read(offset, bytes))
        }

        fn capacity(&self) -> usize {
            self.0.borrow().capacity()
        }
    }

    impl<F: NorFlash> NorFlash for Shared<F> {
        const WRITE_SIZE: usize = F::WRITE_SIZE;
        const ERASE_SIZE: usize = F::ERASE_SIZE;

        fn erase(&mut self, from: u32, to: u32) -> Result<(), F::Error> {
            self.with(|f| f.erase(from, to))
        }

        fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), F::Error> {
            self.with(|f| f.write(offset, bytes))
        }
    }
}

#[cfg(feature = "qemu")]
mod ram_windows {
    use embedded_storage::nor_flash::{
        ErrorType, NorFlash, NorFlashError, NorFlashErrorKind, ReadNorFlash,
    };
    use tianzhong_firmware::update::Slot;

    use crate::flash::{ERASE_SIZE, RomFlash};
    use crate::slots::LAYOUT;

    /// RAM for each boot-state sector: 4 records, where an update appends one or two.
    pub const STATE_WINDOW: usize = 64;
    /// RAM for the transfer sector: the 128-byte manifest area and the progress records of
    /// 8 chunks, which covers [`SLOT_WINDOW`] in the gateway's 128-byte chunks.
    pub const TRANSFER_WINDOW: usize = 128 + 8 * 8;
    /// RAM for the slot being written: the largest image (512-byte header, payload, trailer)
    /// the QEMU node takes, so a payload of at most 364 bytes. Small because the finish's
    /// signature check needs about 12 KiB of stack, and the budget is 16 KiB of RAM.
    pub const SLOT_WINDOW: usize = 1024;

    /// QEMU's flash as the update receiver sees it: the chip's geometry and [`LAYOUT`], read
    /// from the ROM QEMU loaded, except the two boot-state sectors, the transfer sector and the
    /// slot not running, whose first bytes are RAM (copied from the ROM at start) and whose
    /// rest reads erased. Erases and writes reach only those windows; anything else is
    /// refused, so an image larger than [`SLOT_WINDOW`] fails with a flash error. Nothing
    /// survives a reset.
    pub struct RamWindows {
        rom: RomFlash,
        state: [&'static mut [u8; STATE_WINDOW]; 2],
        transfer: &'static mut [u8; TRANSFER_WINDOW],
        slot: &'static mut [u8; SLOT_WINDOW],
        slot_at: u32,
    }

    /// An access the windows do not hold.
    #[derive(Debug)]
    pub struct Outside(NorFlashErrorKind);

    impl NorFlashError for Outside {
        fn kind(&self) -> NorFlashErrorKind {
            self.0
        }
    }

    impl RamWindows {
        /// The windows over `rom`, the slot window on the slot `running` does not use; `None`
        /// when their RAM was already taken.
        pub fn new(mut rom: RomFlash, running: Option<Slot>) -> Option<RamWindows> {
            let idle = running.map_or(Slot::B, Slot::other);
            let state0 = cortex_m::singleton!(: [u8; STATE_WINDOW] = [0xFF; STATE_WINDOW])?;
            let state1 = cortex_m::singleton!(: [u8; STATE_WINDOW] = [0xFF; STATE_WINDOW])?;
            let transfer =
                cortex_m::singleton!(: [u8; TRANSFER_WINDOW] = [0xFF; TRANSFER_WINDOW])?;
            let slot = cortex_m::singleton!(: [u8; SLOT_WINDOW] = [0xFF; SLOT_WINDOW])?;
            // Start from what the ROM holds, so the boot state the bootloader read is the one
            // the receiver reads.
            let slot_at = LAYOUT.slot(idle);
            let _ = rom.read(LAYOUT.state[0], &mut state0[..]);
            let _ = rom.read(LAYOUT.state[1], &mut state1[..]);
            let _ = rom.read(LAYOUT.transfer, &mut transfer[..]);
            let _ = rom.read(slot_at, &mut slot[..]);
            let w = RamWindows {
                rom,
                state: [state0, state1],
                transfer,
                slot,
                slot_at,
            };
            Some(w)
        }

        fn bases(&self) -> [u32; 4] {
            [LAYOUT.state[0], LAYOUT.state[1], LAYOUT.transfer, self.slot_at]
        }

        /// The RAM of the windowed sector holding `offset`, and `offset`'s place in it.
        fn window(&mut self, offset: u32) -> Option<(&mut [u8], usize)> {
            let [s0, s1, t, slot] = self.bases();
            let sector = offset - offset % ERASE_SIZE as u32;
            let at = (offset - sector) as usize;
            let ram: &mut [u8] = if sector == s0 {
                &mut self.state[0][..]
            } else if sector == s1 {
                &mut self.state[1][..]
            } else if sector == t {
                &mut self.transfer[..]
            } else if sector == slot {
                &mut self.slot[..]
            } else {
                return None;
            };
            Some((ram, at))
        }
    }

    impl ErrorType for RamWindows {
        type Error = Outside;
    }

    impl ReadNorFlash for RamWindows {
        const READ_SIZE: usize = 1;

        fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), Outside> {
            let mut done = 0;
            while done < bytes.len() {
                let at = offset + done as u32;
                // Up to the end of this sector: a read may span a window's end or a sector's.
                let sector_left = ERASE_SIZE - at as usize % ERASE_SIZE;
                let n = sector_left.min(bytes.len() - done);
                let out = &mut bytes[done..done + n];
                match self.window(at) {
                    Some((ram, i)) => {
                        let held = ram.get(i..).map_or(&[][..], |r| &r[..r.len().min(n)]);
                        out[..held.len()].copy_from_slice(held);
                        out[held.len()..].fill(0xFF);
                    }
                    None => self
                        .rom
                        .read(at, out)
                        .map_err(|_| Outside(NorFlashErrorKind::OutOfBounds))?,
                }
                done += n;
            }
            Ok(())
        }

        fn capacity(&self) -> usize {
            self.rom.capacity()
        }
    }

    impl NorFlash for RamWindows {
        const WRITE_SIZE: usize = 1;
        const ERASE_SIZE: usize = ERASE_SIZE;

        fn erase(&mut self, from: u32, to: u32) -> Result<(), Outside> {
            let erase = ERASE_SIZE as u32;
            if !from.is_multiple_of(erase) || !to.is_multiple_of(erase) {
                return Err(Outside(NorFlashErrorKind::NotAligned));
            }
            let mut sector = from;
            while sector < to {
                let (ram, _) = self
                    .window(sector)
                    .ok_or(Outside(NorFlashErrorKind::Other))?;
                ram.fill(0xFF);
                sector += erase;
            }
            Ok(())
        }

        fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), Outside> {
            let (ram, i) = self
                .window(offset)
                .ok_or(Outside(NorFlashErrorKind::Other))?;
            let cells = i
                .checked_add(bytes.len())
                .and_then(|end| ram.get_mut(i..end))
                .ok_or(Outside(NorFlashErrorKind::OutOfBounds))?;
            // NOR: a write only clears bits.
            for (cell, b) in cells.iter_mut().zip(bytes) {
                *cell &= b;
            }
            Ok(())
        }
    }
}
