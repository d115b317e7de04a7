//! The real board: an STM32F405 with an 8 MHz crystal.
//!
//! | function | peripheral | pins |
//! |---|---|---|
//! | RS-485 (Modbus RTU) | USART1, driver enable on a GPIO | PA9 TX, PA10 RX, PA8 DE |
//! | SHT4x, SCD4x | I2C1, 100 kHz | PB6 SCL, PB7 SDA |
//! | gas bridge, 4–20 mA shunt | ADC1 channels 1 and 2 | PA1, PA2 |
//! | rain gauge reed switch | TIM5 channel 1 as external clock, input filter on | PA0 |
//! | relay 1, relay 2 / buzzer, fault relay | GPIO outputs | PB12, PB13, PB14 |
//! | watchdog | IWDG, 2 s; 8 s while the flash erases a sector | — |
//! | configuration | flash sectors 10 and 11 (see `memory.x`) | — |
//! | boot state (confirming a trial image) | flash sectors 5 and 6 | — |
//! | update files (receiving an image) | flash sectors 5–9 | — |
//!
//! The fault relay is energised while the node is healthy, so a dead node, a cut wire or a
//! lost supply all read as a fault at the control room.

use core::cell::RefCell;

use stm32f4xx_hal::adc::Adc;
use stm32f4xx_hal::adc::config::{AdcConfig, SampleTime};
use stm32f4xx_hal::gpio::{Analog, Output, Pin, PushPull};
use stm32f4xx_hal::i2c::I2c;
use stm32f4xx_hal::pac::{self, ADC1, I2C1, TIM5};
use stm32f4xx_hal::prelude::*;
use stm32f4xx_hal::rcc::{Config as ClockConfig, Enable, Reset};
use stm32f4xx_hal::serial::Config;
use embedded_storage::nor_flash::{ErrorType, NorFlash, ReadNorFlash};
use stm32f4xx_hal::watchdog::IndependentWatchdog;
use tianzhong_firmware::update::Slot;
use tianzhong_firmware::hal::{AdcChannel, PulseCounter};
use tianzhong_firmware::modbus::RtuTiming;
use tianzhong_firmware::node::alarm::outputs;
use tianzhong_firmware::node::config::NodeConfig;
use tianzhong_firmware::node::storage::{ConfigSlots, ConfigStore};
use tianzhong_firmware::node::{BootInfo, Sample};
use tianzhong_protocol::registers::profile::ResetReason;

use crate::clock::{ClockDelay, MicroClock, WakeTimer};
use crate::flash::ChipFlash;
use crate::link::{DriverEnable, Link};
use crate::sensors::Sensors;
use crate::update::Shared;
use crate::{Board, Parts};

/// Configuration slots: flash sectors 10 and 11, as offsets from the start of flash.
const CONFIG_SLOTS: ConfigSlots = ConfigSlots {
    a: 0x000C_0000,
    b: 0x000E_0000,
};

/// The RS-485 transceiver's driver-enable pin.
pub struct DePin(Pin<'A', 8, Output<PushPull>>);

impl DriverEnable for DePin {
    fn set(&mut self, transmit: bool) {
        self.0.set_state(transmit.into());
    }
}

/// The watchdog period.
const WATCHDOG_MS: u32 = 2000;

/// The watchdog period while a 128 KiB sector erases. The HAL erases with 8-bit parallelism:
/// 2 s typically, 4 s at most (STM32F405 datasheet, t_ERASE128KB), and the CPU stalls
/// throughout, so nothing can feed the watchdog. The IWDG runs from the LSI, which may be as
/// fast as 47 kHz against the nominal 32 kHz: 8 s nominal is still 5.4 s.
const ERASE_WATCHDOG_MS: u32 = 8000;

/// CPU cycles (1 ms at 168 MHz) for a new IWDG reload value to reach the watchdog's clock
/// domain: up to 5 LSI cycles, 0.3 ms at the slowest LSI (17 kHz). A reload before that may
/// still load the old value.
const IWDG_UPDATE_CYCLES: u32 = 168_000;

/// The chip's flash with the watchdog that must not bite while it erases.
pub struct WatchedFlash {
    flash: ChipFlash,
    watchdog: IndependentWatchdog,
}

impl WatchedFlash {
    /// Sets the watchdog to `ms` and reloads it with that period.
    fn set_watchdog(&mut self, ms: u32) {
        self.watchdog.start(ms.millis());
        cortex_m::asm::delay(IWDG_UPDATE_CYCLES);
        self.watchdog.feed();
    }
}

impl ErrorType for WatchedFlash {
    type Error = <ChipFlash as ErrorType>::Error;
}

impl ReadNorFlash for WatchedFlash {
    const READ_SIZE: usize = ChipFlash::READ_SIZE;

    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), Self::Error> {
        self.flash.read(offset, bytes)
    }

    fn capacity(&self) -> usize {
        self.flash.capacity()
    }
}

impl NorFlash for WatchedFlash {
    const WRITE_SIZE: usize = ChipFlash::WRITE_SIZE;
    const ERASE_SIZE: usize = ChipFlash::ERASE_SIZE;

    fn erase(&mut self, from: u32, to: u32) -> Result<(), Self::Error> {
        // One sector at a time, the watchdog widened for each: `to` may span several.
        let mut sector = from;
        let mut result = Ok(());
        while sector < to && result.is_ok() {
            let end = (sector + Self::ERASE_SIZE as u32).min(to);
            self.set_watchdog(ERASE_WATCHDOG_MS);
            result = self.flash.erase(sector, end);
            self.set_watchdog(WATCHDOG_MS);
            sector = end;
        }
        result
    }

    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), Self::Error> {
        // Byte programming takes 16 µs typically, 100 µs at most: a 128-byte chunk stays far
        // inside the watchdog's period.
        self.flash.write(offset, bytes)
    }
}

/// The flash as the configuration store, the boot state and the update files share it.
pub type BoardFlash = Shared<WatchedFlash>;

type SharedAdc = RefCell<Adc<ADC1>>;

/// One ADC1 input.
pub struct AdcInput<P> {
    adc: &'static SharedAdc,
    pin: P,
}

impl<P> AdcChannel for AdcInput<P>
where
    P: embedded_hal_02::adc::Channel<ADC1, ID = u8>,
{
    type Error = core::convert::Infallible;

    fn reference_mv(&self) -> u32 {
        3300
    }

    fn resolution_bits(&self) -> u8 {
        12
    }

    fn read_counts(&mut self) -> Result<u32, Self::Error> {
        // The longest sampling time: the bridge and shunt are high-impedance sources.
        Ok(u32::from(
            self.adc
                .borrow_mut()
                .convert(&self.pin, SampleTime::Cycles_480),
        ))
    }
}

/// TIM5 counting rain-gauge tips on PA0 (TI1, external clock mode 1), 32 bits wide.
pub struct TipCounter(TIM5);

impl TipCounter {
    fn start(tim: TIM5, rcc: &mut stm32f4xx_hal::rcc::Rcc) -> TipCounter {
        TIM5::enable(rcc);
        TIM5::reset(rcc);
        // TI1 as input with the strongest digital filter (fDTS/32, 8 samples): a reed switch
        // bounces for a few milliseconds and each bounce must not count as a tip.
        tim.ccmr1_input()
            .write(|w| w.cc1s().ti1().ic1f().fdts_div32_n8());
        // Slave mode: external clock mode 1, trigger TI1FP1.
        tim.smcr().write(|w| w.ts().ti1fp1().sms().ext_clock_mode());
        tim.arr().write(|w| w.arr().set(u32::MAX));
        tim.cr1().modify(|_, w| w.cen().set_bit());
        TipCounter(tim)
    }
}

impl PulseCounter for TipCounter {
    type Error = core::convert::Infallible;

    fn count(&mut self) -> Result<u32, Self::Error> {
        Ok(self.0.cnt().read().bits())
    }
}

type HwSensors = Sensors<
    I2c<I2C1>,
    ClockDelay,
    AdcInput<Pin<'A', 1, Analog>>,
    AdcInput<Pin<'A', 2, Analog>>,
    TipCounter,
>;

/// The board's hardware once set up.
pub struct Hardware {
    sensors: HwSensors,
    relay_1: Pin<'B', 12, Output<PushPull>>,
    relay_2: Pin<'B', 13, Output<PushPull>>,
    fault_relay: Pin<'B', 14, Output<PushPull>>,
    flash: BoardFlash,
    store: ConfigStore<BoardFlash>,
    stored: Option<NodeConfig>,
    boot: BootInfo,
}

fn reset_reason(rcc: &pac::RCC) -> ResetReason {
    let csr = rcc.csr().read();
    let reason = if csr.wdgrstf().bit_is_set() || csr.wwdgrstf().bit_is_set() {
        ResetReason::Watchdog
    } else if csr.borrstf().bit_is_set() {
        ResetReason::BrownOut
    } else if csr.porrstf().bit_is_set() {
        ResetReason::PowerOn
    } else if csr.sftrstf().bit_is_set() {
        ResetReason::Software
    } else if csr.padrstf().bit_is_set() {
        ResetReason::Pin
    } else {
        ResetReason::Unknown
    };
    // Clear the flags so the next reset reports only its own cause.
    rcc.csr().modify(|_, w| w.rmvf().set_bit());
    reason
}

pub fn init() -> Parts<Hardware, DePin> {
    let Some(dp) = pac::Peripherals::take() else {
        panic!("peripherals taken")
    };
    let Some(cp) = cortex_m::Peripherals::take() else {
        panic!("core peripherals taken")
    };
    let reason = reset_reason(&dp.RCC);
    let mut rcc = dp.RCC.freeze(ClockConfig::hse(8.MHz()).sysclk(168.MHz()));
    let clocks = rcc.clocks;

    let mut watchdog = IndependentWatchdog::new(dp.IWDG);
    watchdog.start(WATCHDOG_MS.millis());

    let watched = WatchedFlash {
        flash: ChipFlash::new(dp.FLASH),
        watchdog,
    };
    let Some(cell) = cortex_m::singleton!(: RefCell<WatchedFlash> = RefCell::new(watched)) else {
        panic!("flash singleton")
    };
    let flash = Shared::new(cell);
    let mut store = ConfigStore::new(flash, CONFIG_SLOTS);
    let stored = store.load().ok().flatten().map(|l| l.config);
    let link_config = stored.unwrap_or_else(|| NodeConfig::factory(&crate::CHANNELS));

    let gpioa = dp.GPIOA.split(&mut rcc);
    let gpiob = dp.GPIOB.split(&mut rcc);

    let baud = u32::from(link_config.baud_div100) * 100;
    let serial_config = match link_config.parity {
        1 => Config::default()
            .baudrate(baud.bps())
            .parity_odd()
            .wordlength_9(),
        2 => Config::default()
            .baudrate(baud.bps())
            .parity_even()
            .wordlength_9(),
        _ => Config::default().baudrate(baud.bps()).parity_none(),
    };
    let Ok(serial) = dp
        .USART1
        .serial::<u8>((gpioa.pa9, gpioa.pa10), serial_config, &mut rcc)
    else {
        panic!("USART1 configuration")
    };
    let (tx, rx) = serial.split();
    let link = Link::start(tx, rx, DePin(gpioa.pa8.into_push_pull_output()));

    let clock = MicroClock::start(dp.TIM2, &mut rcc, clocks.timclk1().raw());
    let wake = WakeTimer::new(cp.SYST, clocks.hclk().raw());

    let i2c = dp.I2C1.i2c((gpiob.pb6, gpiob.pb7), 100.kHz(), &mut rcc);
    let adc = Adc::new(dp.ADC1, true, AdcConfig::default(), &mut rcc);
    let Some(adc) = cortex_m::singleton!(: SharedAdc = RefCell::new(adc)) else {
        panic!("ADC singleton")
    };
    let gas = AdcInput {
        adc,
        pin: gpioa.pa1.into_analog(),
    };
    let level = AdcInput {
        adc,
        pin: gpioa.pa2.into_analog(),
    };
    let _rain_input = gpioa.pa0.into_alternate::<2>();
    let tips = TipCounter::start(dp.TIM5, &mut rcc);
    let Ok(sensors) = Sensors::new(i2c, ClockDelay, gas, level, tips) else {
        panic!("sensor setup")
    };

    let hardware = Hardware {
        sensors,
        relay_1: gpiob.pb12.into_push_pull_output(),
        relay_2: gpiob.pb13.into_push_pull_output(),
        fault_relay: gpiob.pb14.into_push_pull_output(),
        flash,
        store,
        stored,
        // Counting resets needs a battery-backed register this board does not wire.
        boot: BootInfo {
            reset_reason: reason,
            reset_count: 0,
        },
    };
    Parts {
        board: hardware,
        link,
        clock,
        wake,
        timing: RtuTiming::from_baud(baud),
    }
}

impl Board for Hardware {
    type UpdateFlash = BoardFlash;
    type FilesFlash = BoardFlash;

    fn boot_info(&self) -> BootInfo {
        self.boot
    }

    fn stored_config(&mut self) -> Option<NodeConfig> {
        self.stored.take()
    }

    fn sample(&mut self, ch: usize, now_ms: u64) -> Sample {
        self.sensors.sample(ch, now_ms)
    }

    fn set_outputs(&mut self, bits: u16) {
        self.relay_1
            .set_state((bits & outputs::RELAY_1 != 0).into());
        self.relay_2
            .set_state((bits & outputs::RELAY_2 != 0).into());
        // Energised when healthy (fail-safe): released on a fault or when the node dies.
        self.fault_relay
            .set_state((bits & outputs::FAULT == 0).into());
    }

    fn feed_watchdog(&mut self) {
        self.flash.with(|f| f.watchdog.feed());
    }

    fn save_config(&mut self, config: &NodeConfig) -> bool {
        self.store.save(config).is_ok()
    }

    fn update_flash(&mut self) -> &mut BoardFlash {
        self.store.flash_mut()
    }

    fn files_flash(&mut self, _running: Option<Slot>) -> Option<BoardFlash> {
        Some(self.flash)
    }
}
