// The application's items, shared by its two crate roots: `main.rs` (linked for slot A) and
// `main_slot_b.rs` (slot B). Kept free of inner attributes and doc comments, which `include!`
// does not take; the crate documentation is in `main.rs`.

#[cfg(not(feature = "qemu"))]
mod board;
mod clock;
mod flash;
mod link;
#[cfg(feature = "qemu")]
mod qemu;
mod sensors;
mod slots;
mod update;

use cortex_m_rt::{entry, exception};
use embedded_storage::nor_flash::NorFlash;
use tianzhong_firmware::modbus::RtuTiming;
use tianzhong_firmware::modbus::slave::RtuSlave;
use tianzhong_firmware::node::config::NodeConfig;
use tianzhong_firmware::node::{BootInfo, NodeCore, NodeIdentity, Sample};
use tianzhong_firmware::update::{BootState, Slot, TrialLimit, TrialStep, TrialWatch, verify};
use tianzhong_protocol::registers::profile::FirmwareVersion;

use clock::{MicroClock, WakeTimer};
use link::{DriverEnable, Link};
use update::Updates;

/// What the main loop needs from a board.
pub trait Board {
    /// The flash holding the boot state and the firmware slots, offsets from its start.
    type UpdateFlash: NorFlash;
    /// The flash the update files write: the boot state, the transfer sector and the slot
    /// not running, as offsets from the start of flash.
    type FilesFlash: NorFlash;

    /// Why and how often the MCU has reset.
    fn boot_info(&self) -> BootInfo;
    /// The configuration stored in flash, if a valid copy exists.
    fn stored_config(&mut self) -> Option<NodeConfig>;
    /// Reads channel `ch`.
    fn sample(&mut self, ch: usize, now_ms: u64) -> Sample;
    /// Drives the relay, buzzer and fault outputs.
    fn set_outputs(&mut self, bits: u16);
    /// Feeds the independent watchdog.
    fn feed_watchdog(&mut self);
    /// Persists the configuration; false when the flash write failed.
    fn save_config(&mut self, config: &NodeConfig) -> bool;
    /// The flash holding the boot state and the firmware slots.
    fn update_flash(&mut self) -> &mut Self::UpdateFlash;
    /// The flash for the update files of an application running from `running`; called once.
    fn files_flash(&mut self, running: Option<Slot>) -> Option<Self::FilesFlash>;
}

/// How long an image on trial may run before the gateway's health poll confirms it. The QEMU
/// variant cannot write its confirm (QEMU's flash is ROM), so every trial there ends at the
/// limit; 3 s lets the boot tests watch that happen.
pub const TRIAL_LIMIT: TrialLimit = if cfg!(feature = "qemu") {
    TrialLimit { seconds: 3 }
} else {
    TrialLimit { seconds: 300 }
};

/// Channels of this node, in register order.
pub const CHANNELS: [tianzhong_protocol::Quantity; 6] = {
    use tianzhong_protocol::Quantity::*;
    [
        CombustibleGas,
        AirTemperature,
        RelativeHumidity,
        Co2,
        WaterLevel,
        Rainfall,
    ]
};

/// The node's identity, running `firmware`.
fn identity(firmware: FirmwareVersion) -> NodeIdentity {
    let text = |s: &str| heapless::String::try_from(s).unwrap_or_default();
    NodeIdentity {
        vendor: text("Tianzhong"),
        model: text(slots::MODEL),
        serial: text(option_env!("TZ_SERIAL").unwrap_or("DEV-0001")),
        firmware,
        hardware_revision: slots::HARDWARE_REVISION,
    }
}

/// The crate's version: what the node reports when its slot holds no readable header.
const BUILD_VERSION: FirmwareVersion = FirmwareVersion {
    major: parse(env!("CARGO_PKG_VERSION_MAJOR")) as u8,
    minor: parse(env!("CARGO_PKG_VERSION_MINOR")) as u8,
    patch: parse(env!("CARGO_PKG_VERSION_PATCH")) as u16,
};

/// Where this image runs from, and what the flash says about it.
struct Running {
    /// Its slot, if it runs from one.
    slot: Option<Slot>,
    /// Its version: its image header's.
    version: FirmwareVersion,
    /// The boot state as the bootloader left it.
    state: BootState,
}

impl Running {
    fn read<F: NorFlash>(flash: &mut F) -> Running {
        // Any function of this image lies in the slot it was linked for.
        let here = (identity as fn(FirmwareVersion) -> NodeIdentity) as usize as u32;
        let slot = slots::LAYOUT.slot_at(here.wrapping_sub(slots::FLASH_BASE));
        let version = slot
            .and_then(|s| verify::read_header(flash, &slots::LAYOUT, s).ok())
            .map_or(BUILD_VERSION, |h| h.version);
        // An unreadable state is read as no trial: the bootloader decides again next reset.
        let state = BootState::read(flash, &slots::LAYOUT).unwrap_or(BootState::FACTORY);
        Running {
            slot,
            version,
            state,
        }
    }
}

const fn parse(s: &str) -> u32 {
    let b = s.as_bytes();
    let mut i = 0;
    let mut n = 0;
    while i < b.len() {
        n = n * 10 + (b[i] - b'0') as u32;
        i += 1;
    }
    n
}

/// The parts a board hands the main loop.
pub struct Parts<B, DE> {
    board: B,
    link: Link<DE>,
    clock: MicroClock,
    wake: WakeTimer,
    timing: RtuTiming,
}

#[entry]
fn main() -> ! {
    #[cfg(feature = "qemu")]
    let parts = qemu::init();
    #[cfg(not(feature = "qemu"))]
    let parts = board::init();
    run(parts)
}

fn run<B: Board, DE: DriverEnable>(mut parts: Parts<B, DE>) -> ! {
    let boot = parts.board.boot_info();
    let stored = parts.board.stored_config();
    let now_ms = parts.clock.now_us() / 1000;
    let mut running = Running::read(parts.board.update_flash());
    let mut trial = match running.slot {
        Some(slot) => TrialWatch::start(&running.state, slot, now_ms, TRIAL_LIMIT),
        None => TrialWatch::start(&BootState::FACTORY, Slot::A, now_ms, TRIAL_LIMIT),
    };
    let Ok(mut core) = NodeCore::new(identity(running.version), &CHANNELS, stored, boot, now_ms)
    else {
        panic!("channel table");
    };
    let unit = core.config().unit_address as u8;
    let Ok(mut slave) = RtuSlave::new(unit, parts.timing) else {
        panic!("unit address validated by the configuration");
    };
    let mut updates = parts
        .board
        .files_flash(running.slot)
        .and_then(|flash| Updates::new(flash, running.slot));
    let mut reply = [0u8; 256];

    loop {
        // Counted before the clock is read: `extend` takes only times from before `now_us`.
        let pending = parts.link.pending();
        let now_us = parts.clock.now_us();
        for _ in 0..pending {
            if let Some((byte, raw)) = parts.link.pop() {
                slave.on_byte(byte, parts.clock.extend(raw));
            }
        }
        let answer = match updates.as_mut() {
            Some(u) => slave.poll(now_us, &mut u.bank(&mut core), &mut reply),
            None => slave.poll(now_us, &mut core, &mut reply),
        };
        if let Some(n) = answer {
            parts.link.send(&reply[..n]);
            // Function code without the exception bit: a request served, the health poll.
            if n > 1 && reply[1] & 0x80 == 0 {
                match (trial.answered(now_us / 1000), running.slot) {
                    (TrialStep::Confirm, Some(slot)) => {
                        let flash = parts.board.update_flash();
                        if running.state.confirm(flash, &slots::LAYOUT, slot).is_ok() {
                            trial.confirmed();
                        }
                    }
                    (TrialStep::Reset, _) => cortex_m::peripheral::SCB::sys_reset(),
                    _ => {}
                }
            }
        }
        // A finish that staged an image was answered above (its last stop bit has left):
        // reset into the bootloader, which boots the image on trial.
        if updates.as_mut().is_some_and(|u| u.staged()) {
            cortex_m::peripheral::SCB::sys_reset();
        }
        core.set_crc_errors(slave.stats().crc_errors);

        let now_ms = now_us / 1000;
        let due = core.due(now_ms);
        for ch in 0..core.channel_count() {
            if due & (1 << ch) != 0 {
                let sample = parts.board.sample(ch, now_ms);
                core.record(ch, now_ms, sample);
            }
        }
        let actions = core.tick(now_ms);
        parts.board.set_outputs(actions.outputs);
        if actions.save_config && parts.board.save_config(core.config()) {
            core.config_saved();
        }
        if actions.feed_watchdog {
            parts.board.feed_watchdog();
        }
        // A trial out of time resets like a crash would: the bootloader counts the attempt.
        if actions.reboot || trial.tick(now_ms) == TrialStep::Reset {
            cortex_m::peripheral::SCB::sys_reset();
        }

        // Sleep until the next deadline or the next received byte. Interrupts are masked
        // while deciding, so a byte that arrives in between still ends the WFI.
        let next_us = slave
            .next_deadline()
            .unwrap_or(u64::MAX)
            .min(core.next_due_ms().saturating_mul(1000))
            .min(now_us + 1_000_000);
        let wait = next_us
            .saturating_sub(parts.clock.now_us())
            .min(u64::from(u32::MAX)) as u32;
        if wait > 0 {
            parts.wake.arm(wait);
            critical_section::with(|cs| {
                if !Link::<DE>::has_input(cs) {
                    cortex_m::asm::wfi();
                }
            });
        }
    }
}

#[exception]
fn SysTick() {
    // Only the counter enable is touched here; the main loop owns SysTick to arm it.
    #[allow(unsafe_code)]
    let mut syst = unsafe { cortex_m::Peripherals::steal() }.SYST;
    clock::on_systick(&mut syst);
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    // A node that stops is a gas detector that cannot alarm: reset and come back.
    cortex_m::peripheral::SCB::sys_reset()
}
