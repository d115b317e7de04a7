//! Tianzhong sensor node on an STM32F405.
//!
//! # Module map
//!
//! | module | what |
//! |---|---|
//! | `clock` | TIM2 microsecond clock, SysTick wake-up timer |
//! | `link` | RS-485 on USART1: timestamped receive interrupt, transmit with driver enable |
//! | `sensors` | the six channels read through the firmware's drivers |
//! | `board` | the real board: clocks, I2C sensors, ADC inputs, relays, watchdog, flash |
//! | `qemu` | the QEMU `netduinoplus2` variant: simulated sensors, nothing QEMU does not model |
//!
//! The main loop is the same for both: feed received bytes to the Modbus slave and answer it,
//! sample the channels that are due, tick the node core and carry out its actions, then sleep
//! with WFI until a byte arrives or the next deadline (frame end, next sample, next tick).
#![no_std]
#![no_main]

#[cfg(not(feature = "qemu"))]
mod board;
mod clock;
mod link;
#[cfg(feature = "qemu")]
mod qemu;
mod sensors;

use cortex_m_rt::{entry, exception};
use tianzhong_firmware::modbus::RtuTiming;
use tianzhong_firmware::modbus::slave::RtuSlave;
use tianzhong_firmware::node::config::NodeConfig;
use tianzhong_firmware::node::{BootInfo, NodeCore, NodeIdentity, Sample};

use clock::{MicroClock, WakeTimer};
use link::{DriverEnable, Link};

/// What the main loop needs from a board.
pub trait Board {
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
}

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

/// The node's identity.
fn identity() -> NodeIdentity {
    use tianzhong_protocol::registers::profile::FirmwareVersion;
    let text = |s: &str| heapless::String::try_from(s).unwrap_or_default();
    NodeIdentity {
        vendor: text("Tianzhong"),
        model: text(if cfg!(feature = "qemu") {
            "TZ-NODE-F4-QEMU"
        } else {
            "TZ-NODE-F4"
        }),
        serial: text(option_env!("TZ_SERIAL").unwrap_or("DEV-0001")),
        firmware: FirmwareVersion {
            major: parse(env!("CARGO_PKG_VERSION_MAJOR")) as u8,
            minor: parse(env!("CARGO_PKG_VERSION_MINOR")) as u8,
            patch: parse(env!("CARGO_PKG_VERSION_PATCH")) as u16,
        },
        hardware_revision: 1,
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
    let Ok(mut core) = NodeCore::new(identity(), &CHANNELS, stored, boot, now_ms) else {
        panic!("channel table");
    };
    let unit = core.config().unit_address as u8;
    let Ok(mut slave) = RtuSlave::new(unit, parts.timing) else {
        panic!("unit address validated by the configuration");
    };
    let mut reply = [0u8; 256];
    let mut received = heapless::Vec::<(u8, u32), 256>::new();

    loop {
        received.clear();
        parts.link.drain(&mut received);
        let now_us = parts.clock.now_us();
        for (byte, raw) in &received {
            slave.on_byte(*byte, parts.clock.extend(*raw));
        }
        if let Some(n) = slave.poll(now_us, &mut core, &mut reply) {
            parts.link.send(&reply[..n]);
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
        if actions.reboot {
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
