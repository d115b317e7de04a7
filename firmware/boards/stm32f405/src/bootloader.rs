//! Tianzhong bootloader for the STM32F405: at reset, choose a verified firmware slot and run
//! the image in it in place.
//!
//! # Module map
//!
//! | module | what |
//! |---|---|
//! | `slots` | the flash map (as a table), the board's hardware model |
//! | `flash` | the chip's flash as `NorFlash` (the QEMU variant: read-only) |
//! | `trusted_key` | the public key images must be signed with, put in by `build.rs` |
//!
//! # Boot flow
//!
//! | step | what | on failure |
//! |---|---|---|
//! | 1 | read the boot state (sectors 5–6) | a flash error: halt |
//! | 2 | [`boot::boot`]: verify the slots the state names — header, hardware, security counter, SHA-256, ed25519 signature, all from flash — and pick one by the decision table in [`tianzhong_firmware::update::boot`]; a trial boot is recorded as one more attempt *before* the jump | neither slot valid, or the attempt record cannot be written (a trial that cannot be counted is not run): halt |
//! | 3 | [`handoff::entry`]: the chosen payload's vector table is 512-byte aligned, its stack pointer in RAM, its reset vector in the payload (an image linked for the other slot fails here) | a trial image: reset (the attempt is counted, so after N the state reverts); the confirmed image: halt |
//! | 4 | VTOR := the payload's address, MSP := its first word, branch to its second | — |
//!
//! "Halt" means: nothing is jumped to, the CPU sleeps in WFI with interrupts off, the fault
//! relay stays released (it is energised only by a healthy application), and the watchdog is
//! not started, so the node stays visibly dead instead of resetting in a loop. The QEMU variant
//! also prints each decision on USART1 (`TIANZHONG BOOT …`); the hardware variant prints
//! nothing, because USART1 is the RS-485 Modbus line.
//!
//! The bootloader runs on the reset clock (16 MHz HSI) and leaves the clock tree to the
//! application. Verifying one slot takes about 3.8 million instructions (counted under QEMU),
//! so roughly 0.3 s per verified slot on the board.
//!
//! # Differences of the QEMU variant
//!
//! QEMU models the STM32F405's flash as ROM, so the QEMU bootloader calls
//! [`boot::decide`] (the same decision, without writing the attempt record) and a trial image
//! looks like attempt 1 on every boot.
//!
//! # The trusted key
//!
//! `build.rs` embeds the ed25519 public key from the key file named by `TZ_BOOT_PUBKEY`
//! (`tianzhong firmware keygen` writes one), or the TEST key `keys/test-signing.key.pub`
//! when it is unset, with a build warning for the hardware variant.
#![no_std]
#![no_main]

mod flash;
mod slots;

mod trusted_key {
    include!(concat!(env!("OUT_DIR"), "/trusted_key.rs"));
}

use core::fmt::Write as _;

use cortex_m_rt::entry;
use stm32f4xx_hal::pac;
use tianzhong_firmware::update::boot::{self, BootDecision, RevertReason};
use tianzhong_firmware::update::handoff::{self, Entry, Target};
use tianzhong_firmware::update::{BootKind, BootPolicy, Trust};
use tianzhong_protocol::image::HardwareId;

use slots::{FLASH_BASE, HARDWARE_REVISION, LAYOUT, MODEL};

/// Boot attempts of a trial image before the bootloader reverts.
const POLICY: BootPolicy = BootPolicy { max_attempts: 3 };

/// The STM32F405 as the hand-off sees it: all 128 KiB of main SRAM may hold the stack, and
/// VTOR takes 512-byte aligned tables (98 vectors of 4 bytes, rounded up to a power of two).
const TARGET: Target = Target {
    flash_base: FLASH_BASE,
    ram: 0x2000_0000..0x2002_0000,
    vector_alignment: 512,
};

#[entry]
fn main() -> ! {
    let Some(dp) = pac::Peripherals::take() else {
        halt()
    };
    let mut console = console::open(dp.USART1, dp.GPIOA, dp.RCC);
    let Ok(hardware) = HardwareId::new(MODEL, HARDWARE_REVISION) else {
        halt()
    };
    let trust = Trust {
        public_key: trusted_key::PUBLIC_KEY,
        hardware,
    };
    #[cfg(feature = "qemu")]
    let (mut flash, decision) = {
        let mut flash = flash::RomFlash::new();
        let d = boot::decide(&mut flash, &LAYOUT, &trust, POLICY);
        (flash, d)
    };
    #[cfg(not(feature = "qemu"))]
    let (mut flash, decision) = {
        let mut flash = flash::ChipFlash::new(dp.FLASH);
        let d = boot::boot(&mut flash, &LAYOUT, &trust, POLICY);
        (flash, d)
    };
    let d = match decision {
        Ok(d) => d,
        Err(e) => {
            let _ = writeln!(console, "TIANZHONG BOOT HALT: {e}\r");
            console.close();
            halt()
        }
    };
    report(&mut console, &d);
    match handoff::entry(&mut flash, &LAYOUT, &TARGET, d.slot, &d.header) {
        Ok(entry) => {
            console.close();
            jump(entry)
        }
        Err(e) => {
            let _ = writeln!(
                console,
                "TIANZHONG BOOT cannot enter slot {}: {e}\r",
                d.slot
            );
            console.close();
            if let BootKind::Trial { .. } = d.kind {
                // The attempt is already recorded: resetting spends it, and after the last
                // one the decision reverts to the confirmed image.
                cortex_m::peripheral::SCB::sys_reset()
            }
            halt()
        }
    }
}

/// One line per boot: which slot, why, which version.
fn report(console: &mut console::Console, d: &BootDecision) {
    let _ = write!(console, "TIANZHONG BOOT slot {} ", d.slot);
    let _ = match &d.kind {
        BootKind::Confirmed => write!(console, "confirmed"),
        BootKind::Trial { attempt } => write!(console, "trial attempt {attempt}"),
        BootKind::Reverted {
            why: RevertReason::NotConfirmed { attempts },
        } => write!(console, "reverted: not confirmed after {attempts} boots"),
        BootKind::Reverted {
            why: RevertReason::Invalid(e),
        } => write!(console, "reverted: trial image {e}"),
        BootKind::Fallback { confirmed } => {
            write!(console, "fallback: confirmed image {confirmed}")
        }
    };
    let key = if trusted_key::IS_TEST_KEY {
        " (TEST key)"
    } else {
        ""
    };
    let _ = writeln!(console, " version {}{key}\r", d.header.version);
}

/// Runs the image: VTOR, then MSP and the reset vector from its table.
fn jump(entry: Entry) -> ! {
    let Some(cp) = cortex_m::Peripherals::take() else {
        halt()
    };
    #[allow(unsafe_code)]
    // SAFETY: `entry` passed handoff::entry: the vector table lies in a slot whose image was
    // verified (hash and signature) this boot, at a 512-byte aligned address as VTOR needs;
    // its stack pointer is a word-aligned SRAM address and its reset vector a Thumb address
    // inside the same verified payload. Nothing of the bootloader is used after the branch
    // (MSP is reloaded, so its stack is abandoned), and nothing of it can interrupt the
    // application: no NVIC line was enabled and SysTick never started, and the peripherals the
    // QEMU variant touched (USART1, GPIOA) were reset. PRIMASK is left clear, as after a
    // reset, because the application's startup code relies on it.
    unsafe {
        cp.SCB.vtor.write(entry.vector_table);
        cortex_m::asm::dsb();
        cortex_m::asm::isb();
        cortex_m::asm::bootload(entry.vector_table as *const u32)
    }
}

/// Stops for good: interrupts off, sleep.
fn halt() -> ! {
    cortex_m::interrupt::disable();
    loop {
        cortex_m::asm::wfi();
    }
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    // Nothing was jumped to: stay down rather than loop through resets.
    halt()
}

/// Where the bootloader's messages go.
#[cfg(feature = "qemu")]
mod console {
    use core::fmt;

    use embedded_hal_nb::serial::Write as _;
    use stm32f4xx_hal::pac::{GPIOA, RCC, USART1};
    use stm32f4xx_hal::prelude::*;
    use stm32f4xx_hal::rcc::{Rcc, Reset};
    use stm32f4xx_hal::serial::{Config, Tx};

    /// USART1, as the application's QEMU variant uses it.
    pub struct Console {
        tx: Tx<USART1, u8>,
        rcc: Rcc,
    }

    pub fn open(usart: USART1, gpioa: GPIOA, rcc: RCC) -> Console {
        let mut rcc = rcc.constrain();
        let pins = gpioa.split(&mut rcc);
        let serial = usart
            .serial::<u8>(
                (pins.pa9, pins.pa10),
                Config::default().baudrate(115_200.bps()),
                &mut rcc,
            )
            .unwrap_or_else(|_| super::halt());
        let (tx, _rx) = serial.split();
        Console { tx, rcc }
    }

    impl Console {
        /// Waits for the last byte to leave, then returns USART1 and GPIOA to their reset
        /// state, so the application configures them as from a cold start.
        pub fn close(mut self) {
            let _ = nb::block!(self.tx.flush());
            USART1::reset(&mut self.rcc);
            GPIOA::reset(&mut self.rcc);
        }
    }

    impl fmt::Write for Console {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            self.tx.write_str(s)
        }
    }
}

/// Where the bootloader's messages go: nowhere on the real board, whose USART1 is the RS-485
/// Modbus line.
#[cfg(not(feature = "qemu"))]
mod console {
    use core::fmt;

    use stm32f4xx_hal::pac::{GPIOA, RCC, USART1};

    pub struct Console;

    pub fn open(_usart: USART1, _gpioa: GPIOA, _rcc: RCC) -> Console {
        Console
    }

    impl Console {
        pub fn close(self) {}
    }

    impl fmt::Write for Console {
        fn write_str(&mut self, _s: &str) -> fmt::Result {
            Ok(())
        }
    }
}
