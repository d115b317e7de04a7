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
//! - reads its boot state and image header from the flash QEMU loaded (ROM: a trial image's
//!   confirm cannot be written, so its trial ends at the time limit);
//! - receives updates into RAM windows over that ROM (`update::RamWindows`): the boot-state and
//!   transfer sectors and the first 1 KiB of the slot not running, enough for the whole
//!   transfer (offer, chunks, resume, the finish's hash and signature check) on a small image;
//!   a reset clears them;
//! - prints `TIANZHONG READY` on USART1 once receiving is enabled: QEMU drops bytes sent to a
//!   USART before it is enabled, so the host waits for the marker before polling.

use core::fmt::Write as _;

use stm32f4xx_hal::pac;
use stm32f4xx_hal::prelude::*;
use stm32f4xx_hal::serial::Config;
use tianzhong_firmware::modbus::RtuTiming;
use tianzhong_firmware::node::config::NodeConfig;
use tianzhong_firmware::node::{BootInfo, Sample};
use tianzhong_protocol::registers::profile::ResetReason;

use tianzhong_firmware::update::Slot;

use tianzhong_firmware::sim::{SimAdc, SimCounter, SimI2cBus, SimScd4x, SimSht4x};

use crate::clock::{ClockDelay, MicroClock, WakeTimer};
use crate::flash::RomFlash;
use crate::link::{DriverEnable, Link};
use crate::sensors::{self, Sensors};
use crate::update::RamWindows;
use crate::{Board, Parts};

/// QEMU's STM32 timers count at 1 GHz whatever the (unmodelled) clock tree says.
const QEMU_TIMER_CLOCK_HZ: u32 = 1_000_000_000;

/// netduinoplus2's core clock as QEMU models it for SysTick.
const QEMU_CORE_CLOCK_HZ: u32 = 168_000_000;

/// The serial line's nominal rate. QEMU does no baud pacing, and on a loaded host it hands
/// bytes to the USART with gaps of milliseconds; see [`timing`].
pub const BAUD: u32 = 115_200;

/// RTU timing for QEMU's serial line: the t3.5 of 1200 baud (32 ms), so host scheduling gaps
/// do not split a frame, and no t1.5 check, so they do not void one. The CRC still guards it.
fn timing() -> RtuTiming {
    RtuTiming::from_baud(1200).without_inter_char_check()
}

/// No transceiver in QEMU.
pub struct NoDriverEnable;

impl DriverEnable for NoDriverEnable {
    fn set(&mut self, _transmit: bool) {}
}

/// What the simulated hardware presents (the end-to-end test checks these come back).
pub const GAS_LEL: f32 = 12.5;
/// Air temperature, °C.
pub const AIR_TEMPERATURE_C: f32 = 21.5;
/// Relative humidity, %.
pub const HUMIDITY_PCT: f32 = 45.0;
/// CO2, ppm.
pub const CO2_PPM: u16 = 415;
/// Water level, m.
pub const WATER_LEVEL_M: f32 = 2.5;

type SimSensors = Sensors<SimI2cBus, ClockDelay, SimAdc, SimAdc, SimCounter>;

/// The simulated board.
pub struct QemuBoard {
    sensors: SimSensors,
    outputs: u16,
    saved: Option<NodeConfig>,
    flash: RomFlash,
}

/// The ADC input a gas bridge at `lel` presents, from the board's factory calibration.
fn gas_input_mv(lel: f32) -> f32 {
    let (zero, span, span_gas) = sensors::GAS_CALIBRATION;
    let counts = zero as f32 + lel * (span - zero) as f32 / span_gas;
    counts * 3300.0 / 4096.0
}

/// The shunt voltage of a level transmitter reading `metres`.
fn level_input_mv(metres: f32) -> f32 {
    let (lo, hi) = sensors::LEVEL_RANGE_M;
    let ma = 4.0 + 16.0 * (metres - lo) / (hi - lo);
    ma * sensors::SHUNT_OHMS
}

pub fn init() -> Parts<QemuBoard, NoDriverEnable> {
    let Some(dp) = pac::Peripherals::take() else {
        panic!("peripherals taken")
    };
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
    let Some(cp) = cortex_m::Peripherals::take() else {
        panic!("core peripherals taken")
    };
    let wake = WakeTimer::new(cp.SYST, QEMU_CORE_CLOCK_HZ);
    let _ = tx.write_str("TIANZHONG READY\r\n");
    let link = Link::start(tx, rx, NoDriverEnable);
    let bus = SimI2cBus {
        sht4x: Some(SimSht4x::new(AIR_TEMPERATURE_C, HUMIDITY_PCT)),
        scd4x: Some(SimScd4x::new(CO2_PPM, AIR_TEMPERATURE_C, HUMIDITY_PCT)),
    };
    let Ok(sensors) = Sensors::new(
        bus,
        ClockDelay,
        SimAdc::stm32(gas_input_mv(GAS_LEL)),
        SimAdc::stm32(level_input_mv(WATER_LEVEL_M)),
        SimCounter::default(),
    ) else {
        panic!("sensor setup")
    };
    Parts {
        board: QemuBoard {
            sensors,
            outputs: 0,
            saved: None,
            flash: RomFlash::new(),
        },
        link,
        clock,
        wake,
        timing: timing(),
    }
}

impl Board for QemuBoard {
    type UpdateFlash = RomFlash;
    type FilesFlash = RamWindows;

    fn boot_info(&self) -> BootInfo {
        BootInfo {
            reset_reason: ResetReason::PowerOn,
            reset_count: 0,
        }
    }

    fn stored_config(&mut self) -> Option<NodeConfig> {
        None
    }

    fn sample(&mut self, ch: usize, now_ms: u64) -> Sample {
        self.sensors.sample(ch, now_ms)
    }

    fn set_outputs(&mut self, bits: u16) {
        self.outputs = bits;
    }

    fn feed_watchdog(&mut self) {}

    fn save_config(&mut self, config: &NodeConfig) -> bool {
        self.saved = Some(*config);
        true
    }

    fn update_flash(&mut self) -> &mut RomFlash {
        &mut self.flash
    }

    fn files_flash(&mut self, running: Option<Slot>) -> Option<RamWindows> {
        RamWindows::new(RomFlash::new(), running)
    }
}
