//! Time for the node: TIM2 as a free-running 1 MHz counter extended to 64 bits, and SysTick as
//! a one-shot wake-up timer so the main loop can sleep (WFI) until its next deadline.
//!
//! Written against the PAC rather than the HAL's timers because the prescaler depends on the
//! timer's input clock, which the board layer knows: the HAL derives it from a configured
//! clock tree, and QEMU, which has none, clocks its timers at 1 GHz.

use cortex_m::peripheral::SYST;
use cortex_m::peripheral::syst::SystClkSource;
use stm32f4xx_hal::pac::TIM2;
use stm32f4xx_hal::rcc::{Enable, Rcc, Reset};

/// Microseconds since boot.
pub struct MicroClock {
    tim: TIM2,
    high: u64,
    last: u32,
}

impl MicroClock {
    /// Starts TIM2 counting microseconds; `timer_clock_hz` is its input clock.
    pub fn start(tim: TIM2, rcc: &mut Rcc, timer_clock_hz: u32) -> MicroClock {
        TIM2::enable(rcc);
        TIM2::reset(rcc);
        tim.psc()
            .write(|w| w.psc().set((timer_clock_hz / 1_000_000 - 1) as u16));
        tim.arr().write(|w| w.arr().set(u32::MAX));
        // Load the prescaler now rather than at the first overflow.
        tim.egr().write(|w| w.ug().set_bit());
        tim.cr1().modify(|_, w| w.cen().set_bit());
        MicroClock {
            tim,
            high: 0,
            last: 0,
        }
    }

    /// The raw 32-bit counter (for interrupt handlers timestamping bytes).
    pub fn raw(tim: &TIM2) -> u32 {
        tim.cnt().read().bits()
    }

    /// The 64-bit time of a raw reading taken before the latest [`MicroClock::now_us`] call
    /// and less than one wrap (71 minutes) earlier.
    pub fn extend(&self, raw: u32) -> u64 {
        let now = self.high | u64::from(self.last);
        now.saturating_sub(u64::from(self.last.wrapping_sub(raw)))
    }

    /// Microseconds since boot; must be called at least once per 71 minutes.
    pub fn now_us(&mut self) -> u64 {
        let raw = Self::raw(&self.tim);
        if raw < self.last {
            self.high += 1 << 32;
        }
        self.last = raw;
        self.high | u64::from(raw)
    }
}

/// A one-shot wake-up from SysTick, the core's own timer: present on every Cortex-M and
/// modelled faithfully by QEMU (whose STM32 timer model ignores the prescaler when it schedules
/// update interrupts). Its 24-bit reload caps one sleep at 2^24 core cycles (0.1 s at 168 MHz),
/// after which the loop simply sleeps again.
pub struct WakeTimer {
    syst: SYST,
    cycles_per_us: u32,
}

impl WakeTimer {
    /// Takes SysTick, counting core cycles at `core_clock_hz`.
    pub fn new(mut syst: SYST, core_clock_hz: u32) -> WakeTimer {
        syst.set_clock_source(SystClkSource::Core);
        syst.disable_counter();
        syst.enable_interrupt();
        WakeTimer {
            syst,
            cycles_per_us: (core_clock_hz / 1_000_000).max(1),
        }
    }

    /// Arms the timer to fire in `us` microseconds (at least one cycle, at most the reload
    /// limit).
    pub fn arm(&mut self, us: u32) {
        let cycles = us.saturating_mul(self.cycles_per_us).clamp(1, 0x00FF_FFFF);
        self.syst.disable_counter();
        self.syst.set_reload(cycles);
        self.syst.clear_current();
        self.syst.enable_counter();
    }
}

/// Stops SysTick after it fired, so a short reload does not keep interrupting.
pub fn on_systick(syst: &mut SYST) {
    syst.disable_counter();
}

/// A busy-wait delay on the TIM2 microsecond counter, for the drivers' datasheet waits (a few
/// milliseconds at most, from the main loop only).
pub struct ClockDelay;

impl embedded_hal::delay::DelayNs for ClockDelay {
    fn delay_ns(&mut self, ns: u32) {
        // Only TIM2's counter is read; MicroClock owns the timer's configuration.
        #[allow(unsafe_code)]
        let tim = unsafe { TIM2::steal() };
        let start = MicroClock::raw(&tim);
        let us = ns.div_ceil(1000);
        while MicroClock::raw(&tim).wrapping_sub(start) < us {}
    }
}
