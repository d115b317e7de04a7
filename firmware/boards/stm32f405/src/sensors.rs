//! The node's sensors, read through the firmware's drivers. Shared by the real board and the
//! QEMU variant: only the hardware underneath (a real I²C bus and ADC, or the firmware's
//! simulated ones) differs.
//!
//! | channel | quantity | sensor |
//! |---|---|---|
//! | 0 | combustible gas, %LEL | catalytic bead bridge on an ADC input, zero/span calibrated |
//! | 1 | air temperature, °C | Sensirion SHT4x on I²C |
//! | 2 | relative humidity, % | the same SHT4x measurement |
//! | 3 | CO2, ppm | Sensirion SCD4x on I²C, periodic mode (new value every 5 s) |
//! | 4 | water level, m | 4–20 mA level transmitter, 0–10 m, across a 150 Ω shunt |
//! | 5 | rainfall, mm | tipping-bucket gauge, 0.2 mm per tip, on a pulse counter |

use embedded_hal::delay::DelayNs;
use embedded_hal::i2c::I2c;
use tianzhong_firmware::drivers::gas_adc::{self, GasAdc};
use tianzhong_firmware::drivers::loop_input::LoopInput;
use tianzhong_firmware::drivers::rain_gauge::{MM_PER_TIP_0_2, RainGauge};
use tianzhong_firmware::drivers::{scd4x, sht4x};
use tianzhong_firmware::hal::{AdcChannel, PulseCounter};
use tianzhong_firmware::node::Sample;
use tianzhong_protocol::convert::LoopSpan;

/// Shunt across which the loop current is measured.
pub const SHUNT_OHMS: f32 = 150.0;
/// Level transmitter range: 4 mA = 0 m, 20 mA = 10 m.
pub const LEVEL_RANGE_M: (f32, f32) = (0.0, 10.0);
/// Gas bridge factory calibration: counts at zero gas and at the span gas.
pub const GAS_CALIBRATION: (u32, u32, f32) = (800, 3000, 50.0);
/// Readings below zero by less than this are zero-drift noise.
pub const GAS_ZERO_BAND: f32 = 2.0;
/// An SHT4x measurement younger than this serves both the temperature and humidity channel.
const CLIMATE_REUSE_MS: u64 = 500;
/// A CO2 value older than three SCD4x periods means the sensor stopped delivering.
const CO2_STALE_MS: u64 = 15_000;

/// The sensors.
pub struct Sensors<I2C, D, GA, LA, PC> {
    i2c: I2C,
    delay: D,
    gas: GasAdc<GA>,
    level: LoopInput<LA>,
    rain: RainGauge<PC>,
    climate: Option<(u64, sht4x::Measurement)>,
    co2: Option<(u64, f32)>,
    co2_started: bool,
}

/// A sensor whose driver refused the board's configuration.
#[derive(Clone, Copy, Debug)]
pub enum SetupError {
    /// The gas sensor or its calibration.
    Gas,
    /// The 4–20 mA input.
    Level,
    /// The rain gauge.
    Rain,
}

impl<I2C, D, GA, LA, PC> Sensors<I2C, D, GA, LA, PC>
where
    I2C: I2c,
    D: DelayNs,
    GA: AdcChannel,
    LA: AdcChannel,
    PC: PulseCounter,
{
    /// Wires the drivers to their hardware.
    pub fn new(
        i2c: I2C,
        delay: D,
        gas_adc: GA,
        level_adc: LA,
        counter: PC,
    ) -> Result<Self, SetupError> {
        let (zero, span, span_gas) = GAS_CALIBRATION;
        let calibration =
            gas_adc::Calibration::new(zero, span, span_gas).map_err(|_| SetupError::Gas)?;
        let gas = GasAdc::new(gas_adc, calibration, GAS_ZERO_BAND).map_err(|_| SetupError::Gas)?;
        let level = LoopInput::new(level_adc, SHUNT_OHMS, LEVEL_RANGE_M.0, LEVEL_RANGE_M.1)
            .map_err(|_| SetupError::Level)?;
        let rain = RainGauge::new(counter, MM_PER_TIP_0_2).map_err(|_| SetupError::Rain)?;
        Ok(Sensors {
            i2c,
            delay,
            gas,
            level,
            rain,
            climate: None,
            co2: None,
            co2_started: false,
        })
    }

    /// Reads channel `ch` (see the module table).
    pub fn sample(&mut self, ch: usize, now_ms: u64) -> Sample {
        match ch {
            0 => match self.gas.read() {
                Ok(v) => Sample::Value(v),
                // Zero drift beyond the band: still a reading, flagged, and a reason to recalibrate.
                Err(gas_adc::Error::BelowZero { concentration }) => {
                    Sample::OutOfRange(concentration)
                }
                Err(_) => Sample::Fault,
            },
            1 | 2 => match self.climate(now_ms) {
                Some(m) if ch == 1 => Sample::Value(m.temperature_c),
                Some(m) => Sample::Value(m.humidity_pct),
                None => Sample::Fault,
            },
            3 => self.co2(now_ms).map_or(Sample::Fault, Sample::Value),
            4 => match self.level.read() {
                Ok(r) if r.span == LoopSpan::Within => Sample::Value(r.value),
                Ok(r) => Sample::OutOfRange(r.value),
                Err(_) => Sample::Fault,
            },
            5 => match self.rain.read(now_ms) {
                Ok(Some(r)) => Sample::Value(r.amount_mm),
                // The very first read only sets the counter's baseline: no rain counted yet.
                Ok(None) => Sample::Value(0.0),
                Err(_) => Sample::Fault,
            },
            _ => Sample::Fault,
        }
    }

    fn climate(&mut self, now_ms: u64) -> Option<sht4x::Measurement> {
        if let Some((at, m)) = self.climate
            && now_ms.saturating_sub(at) < CLIMATE_REUSE_MS
        {
            return Some(m);
        }
        let m = sht4x::Sht4x::new(&mut self.i2c, &mut self.delay, sht4x::DEFAULT_ADDRESS)
            .measure(sht4x::Precision::High)
            .ok()?;
        self.climate = Some((now_ms, m));
        Some(m)
    }

    fn co2(&mut self, now_ms: u64) -> Option<f32> {
        let mut scd = scd4x::Scd4x::new(&mut self.i2c, &mut self.delay);
        if !self.co2_started {
            self.co2_started = scd.start_periodic_measurement().is_ok();
        }
        if scd.data_ready().unwrap_or(false)
            && let Ok(m) = scd.read_measurement()
        {
            self.co2 = Some((now_ms, m.co2_ppm));
        }
        match self.co2 {
            Some((at, v)) if now_ms.saturating_sub(at) <= CO2_STALE_MS => Some(v),
            _ => None,
        }
    }
}
