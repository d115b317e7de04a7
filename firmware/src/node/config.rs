//! The node's configuration: what the holding registers of the profile's configuration block
//! hold, validated as a whole, with factory defaults per quantity.
//!
//! Default set points come from `shared/reference/gas_thresholds.csv`:
//!
//! | quantity | set point 1 | set point 2 | source |
//! |---|---|---|---|
//! | combustible gas | 25 %LEL (yellow) | 50 %LEL (red) | GB/T 50493-2019 5.5.2: level 1 ≤ 25 %LEL, level 2 ≤ 50 %LEL |
//! | methane | 1.0 %vol (orange) | 1.5 %vol (red) | coal-mine rules: alarm ≥ 1.0 %, power off ≥ 1.5 % at the face (T1) |
//! | H2S | 10 mg/m³ (yellow) | 20 mg/m³ (red) | GB/T 50493-2019 annex-derived table: AL/AH 10/20 mg/m³ |
//! | CO | 20 mg/m³ (yellow) | 40 mg/m³ (red) | same table: AL/AH 20/40 mg/m³ |
//! | SO2, NO2 | 5 mg/m³ (yellow) | 10 mg/m³ (red) | same table: AL/AH 5/10 mg/m³ |
//! | oxygen | below 19.5 %vol (red) | above 23.5 %vol (orange) | GB/T 50493-2019 5.5.2: deficiency 19.5, over-oxygen 23.5 %vol |
//! | CO2 | 5 000 ppm (yellow) | 15 000 ppm (red) | 1.5 % stop-work limit (coal-mine rules); 0.5 % the common 8-hour limit |
//!
//! Other quantities ship with the local alarm disabled: their thresholds are site decisions
//! made in the gateway.

use tianzhong_protocol::registers::profile::{
    self, AlarmFlags, CHANNEL_CONFIG_BLOCK, CONFIG_BLOCK, CONFIG_GENERAL_LEN, CONFIG_STRIDE,
    NodeMode,
};
use tianzhong_protocol::{AlarmLevel, Quantity};

use super::MAX_CHANNELS;

/// Baud rates the node's UART supports, as stored (÷ 100).
pub const BAUD_RATES_DIV100: [u16; 6] = [24, 48, 96, 192, 384, 1152];

/// Longest sampling interval, seconds.
pub const MAX_INTERVAL_S: u16 = 3600;

/// Widest filter window, samples.
pub const MAX_FILTER_WINDOW: u16 = 8;

/// One channel's configuration.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ChannelConfig {
    /// Sampling interval, seconds (1..=3600).
    pub interval_s: u16,
    /// Local alarm flags.
    pub alarm: AlarmFlags,
    /// Set point 1, canonical unit.
    pub set_point_1: f32,
    /// Set point 2, canonical unit.
    pub set_point_2: f32,
    /// Deadband, canonical unit (≥ 0).
    pub hysteresis: f32,
    /// Calibration offset added after scaling.
    pub cal_offset: f32,
    /// Calibration scale.
    pub cal_scale: f32,
    /// Level raised at set point 1.
    pub level_1: AlarmLevel,
    /// Level raised at set point 2.
    pub level_2: AlarmLevel,
    /// Moving-average window, samples (1..=8).
    pub filter_window: u16,
}

/// The whole configuration.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NodeConfig {
    /// Modbus unit address, 1..=247 (applies from the next boot).
    pub unit_address: u16,
    /// Baud rate ÷ 100 (applies from the next boot).
    pub baud_div100: u16,
    /// Parity: 0 none, 1 odd, 2 even (applies from the next boot).
    pub parity: u16,
    /// Operating mode.
    pub mode: NodeMode,
    /// Per-channel configuration; entries past the node's channel count are unused.
    pub channels: [ChannelConfig; MAX_CHANNELS],
}

/// Why a configuration was refused; the Modbus slave answers exception 03 with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigError {
    /// Unit address outside 1..=247.
    UnitAddress,
    /// A baud rate not in [`BAUD_RATES_DIV100`].
    BaudRate,
    /// Parity code above 2.
    Parity,
    /// Mode code unknown.
    Mode,
    /// A channel's sampling interval outside 1..=3600 s.
    Interval(u8),
    /// Unknown alarm flag bits, or both LOW_SIDE and WINDOW.
    AlarmFlags(u8),
    /// Set points in the wrong order for the alarm's side, or not finite.
    SetPoints(u8),
    /// Negative or non-finite hysteresis, or one wider than the gap between the set points of
    /// a window alarm (it could never clear).
    Hysteresis(u8),
    /// Calibration scale outside 0.1..=10 or a non-finite offset.
    Calibration(u8),
    /// Alarm level codes above 4, level 1 of normal on an enabled alarm, or level 2 below
    /// level 1 on a one-sided alarm.
    Levels(u8),
    /// Filter window outside 1..=8.
    FilterWindow(u8),
}

impl core::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ConfigError::UnitAddress => f.write_str("unit address must be 1..=247"),
            ConfigError::BaudRate => f.write_str("unsupported baud rate"),
            ConfigError::Parity => f.write_str("parity must be 0, 1 or 2"),
            ConfigError::Mode => f.write_str("unknown mode"),
            ConfigError::Interval(c) => write!(f, "channel {c}: interval must be 1..=3600 s"),
            ConfigError::AlarmFlags(c) => write!(f, "channel {c}: invalid alarm flags"),
            ConfigError::SetPoints(c) => write!(f, "channel {c}: set points out of order"),
            ConfigError::Hysteresis(c) => write!(f, "channel {c}: invalid hysteresis"),
            ConfigError::Calibration(c) => write!(f, "channel {c}: invalid calibration"),
            ConfigError::Levels(c) => write!(f, "channel {c}: invalid alarm levels"),
            ConfigError::FilterWindow(c) => write!(f, "channel {c}: filter window must be 1..=8"),
        }
    }
}

impl ChannelConfig {
    /// A channel with its local alarm disabled, sampled every second, unfiltered.
    pub const fn plain() -> ChannelConfig {
        ChannelConfig {
            interval_s: 1,
            alarm: AlarmFlags(0),
            set_point_1: 0.0,
            set_point_2: 0.0,
            hysteresis: 0.0,
            cal_offset: 0.0,
            cal_scale: 1.0,
            level_1: AlarmLevel::Normal,
            level_2: AlarmLevel::Normal,
            filter_window: 1,
        }
    }

    /// Factory defaults for a channel measuring `quantity` (see the module table).
    pub fn factory(quantity: Quantity) -> ChannelConfig {
        use AlarmLevel::{Orange, Red, Yellow};
        let alarm = |sp1: f32, sp2: f32, hysteresis: f32, l1, l2, flags: u16| ChannelConfig {
            alarm: AlarmFlags(AlarmFlags::ENABLED | flags),
            set_point_1: sp1,
            set_point_2: sp2,
            hysteresis,
            level_1: l1,
            level_2: l2,
            ..ChannelConfig::plain()
        };
        match quantity {
            Quantity::CombustibleGas => alarm(25.0, 50.0, 2.0, Yellow, Red, 0),
            Quantity::Methane => alarm(1.0, 1.5, 0.1, Orange, Red, 0),
            Quantity::H2s => alarm(10.0, 20.0, 1.0, Yellow, Red, 0),
            Quantity::Co => alarm(20.0, 40.0, 2.0, Yellow, Red, 0),
            Quantity::So2 | Quantity::No2 => alarm(5000.0, 10_000.0, 500.0, Yellow, Red, 0),
            Quantity::Oxygen => alarm(19.5, 23.5, 0.3, Red, Orange, AlarmFlags::WINDOW),
            Quantity::Co2 => alarm(5000.0, 15_000.0, 500.0, Yellow, Red, 0),
            // Weather and hydrology change slowly; a 4-sample average damps sensor noise.
            Quantity::AirTemperature
            | Quantity::RelativeHumidity
            | Quantity::AirPressure
            | Quantity::WindSpeed
            | Quantity::WaterLevel => ChannelConfig {
                interval_s: 5,
                filter_window: 4,
                ..ChannelConfig::plain()
            },
            // A tipping-bucket total over a minute gives a meaningful intensity.
            Quantity::Rainfall | Quantity::RainfallIntensity => ChannelConfig {
                interval_s: 60,
                ..ChannelConfig::plain()
            },
            _ => ChannelConfig::plain(),
        }
    }

    fn validate(&self, channel: u8) -> Result<(), ConfigError> {
        if self.interval_s == 0 || self.interval_s > MAX_INTERVAL_S {
            return Err(ConfigError::Interval(channel));
        }
        let flags = self.alarm;
        if flags.0 & !AlarmFlags::ALL != 0
            || (flags.has(AlarmFlags::LOW_SIDE) && flags.has(AlarmFlags::WINDOW))
        {
            return Err(ConfigError::AlarmFlags(channel));
        }
        if !(self.set_point_1.is_finite() && self.set_point_2.is_finite()) {
            return Err(ConfigError::SetPoints(channel));
        }
        if !(self.hysteresis.is_finite() && self.hysteresis >= 0.0) {
            return Err(ConfigError::Hysteresis(channel));
        }
        if !(self.cal_scale >= 0.1 && self.cal_scale <= 10.0 && self.cal_offset.is_finite()) {
            return Err(ConfigError::Calibration(channel));
        }
        if !(1..=MAX_FILTER_WINDOW).contains(&self.filter_window) {
            return Err(ConfigError::FilterWindow(channel));
        }
        if !flags.has(AlarmFlags::ENABLED) {
            return Ok(());
        }
        let (sp1, sp2) = (self.set_point_1, self.set_point_2);
        if flags.has(AlarmFlags::WINDOW) {
            if sp1 >= sp2 {
                return Err(ConfigError::SetPoints(channel));
            }
            // Both limits must be able to clear without tripping the other one.
            if 2.0 * self.hysteresis >= sp2 - sp1 {
                return Err(ConfigError::Hysteresis(channel));
            }
            if !(self.level_1.is_alarm() && self.level_2.is_alarm()) {
                return Err(ConfigError::Levels(channel));
            }
        } else {
            let ordered = if flags.has(AlarmFlags::LOW_SIDE) {
                sp2 <= sp1
            } else {
                sp2 >= sp1
            };
            if !ordered {
                return Err(ConfigError::SetPoints(channel));
            }
            if !self.level_1.is_alarm() || self.level_2 < self.level_1 {
                return Err(ConfigError::Levels(channel));
            }
        }
        Ok(())
    }
}

impl NodeConfig {
    /// Factory defaults for a node whose channels measure `quantities` (at most
    /// [`MAX_CHANNELS`]; extra entries are ignored).
    pub fn factory(quantities: &[Quantity]) -> NodeConfig {
        let mut channels = [ChannelConfig::plain(); MAX_CHANNELS];
        for (c, q) in channels.iter_mut().zip(quantities) {
            *c = ChannelConfig::factory(*q);
        }
        NodeConfig {
            unit_address: 1,
            baud_div100: 96,
            parity: 2,
            mode: NodeMode::Normal,
            channels,
        }
    }

    /// Checks every field; the first problem found is returned.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=247).contains(&self.unit_address) {
            return Err(ConfigError::UnitAddress);
        }
        if !BAUD_RATES_DIV100.contains(&self.baud_div100) {
            return Err(ConfigError::BaudRate);
        }
        if self.parity > 2 {
            return Err(ConfigError::Parity);
        }
        for (n, c) in self.channels.iter().enumerate() {
            c.validate(n as u8)?;
        }
        Ok(())
    }
}

/// Registers of the configuration image: the general part, then [`CONFIG_STRIDE`] per
/// channel, contiguous from [`CONFIG_BLOCK`] with the gap up to [`CHANNEL_CONFIG_BLOCK`]
/// included so that an address maps to an index by subtraction.
pub const CONFIG_IMAGE_LEN: usize =
    (CHANNEL_CONFIG_BLOCK - CONFIG_BLOCK) as usize + CONFIG_STRIDE as usize * MAX_CHANNELS;

/// The configuration as holding registers, `CONFIG_BLOCK..CONFIG_BLOCK + CONFIG_IMAGE_LEN`.
pub type ConfigImage = [u16; CONFIG_IMAGE_LEN];

fn put_f32(regs: &mut [u16], v: f32) {
    let b = v.to_be_bytes();
    regs[0] = u16::from_be_bytes([b[0], b[1]]);
    regs[1] = u16::from_be_bytes([b[2], b[3]]);
}

fn get_f32(regs: &[u16]) -> f32 {
    let [a, b] = regs[0].to_be_bytes();
    let [c, d] = regs[1].to_be_bytes();
    f32::from_be_bytes([a, b, c, d])
}

const GENERAL: usize = 0;
const CHANNELS: usize = (CHANNEL_CONFIG_BLOCK - CONFIG_BLOCK) as usize;
const STRIDE: usize = CONFIG_STRIDE as usize;

/// Offsets within a channel's configuration where an f32 starts; a write may not split one.
pub const F32_OFFSETS: [u16; 5] = [2, 4, 6, 8, 10];

impl NodeConfig {
    /// Encodes into the holding-register image (the command register reads 0).
    pub fn to_image(&self) -> ConfigImage {
        let mut img = [0u16; CONFIG_IMAGE_LEN];
        img[GENERAL] = self.unit_address;
        img[GENERAL + 1] = self.baud_div100;
        img[GENERAL + 2] = self.parity;
        img[GENERAL + 4] = self.mode as u16;
        for (n, c) in self.channels.iter().enumerate() {
            let r = &mut img[CHANNELS + n * STRIDE..CHANNELS + (n + 1) * STRIDE];
            r[0] = c.interval_s;
            r[1] = c.alarm.0;
            put_f32(&mut r[2..4], c.set_point_1);
            put_f32(&mut r[4..6], c.set_point_2);
            put_f32(&mut r[6..8], c.hysteresis);
            put_f32(&mut r[8..10], c.cal_offset);
            put_f32(&mut r[10..12], c.cal_scale);
            r[12] = u16::from(c.level_1.code());
            r[13] = u16::from(c.level_2.code());
            r[14] = c.filter_window;
        }
        img
    }

    /// Decodes and validates a holding-register image.
    pub fn from_image(img: &ConfigImage) -> Result<NodeConfig, ConfigError> {
        let mut channels = [ChannelConfig::plain(); MAX_CHANNELS];
        for (n, c) in channels.iter_mut().enumerate() {
            let r = &img[CHANNELS + n * STRIDE..CHANNELS + (n + 1) * STRIDE];
            let level = |code| AlarmLevel::from_code(code).ok_or(ConfigError::Levels(n as u8));
            *c = ChannelConfig {
                interval_s: r[0],
                alarm: AlarmFlags(r[1]),
                set_point_1: get_f32(&r[2..4]),
                set_point_2: get_f32(&r[4..6]),
                hysteresis: get_f32(&r[6..8]),
                cal_offset: get_f32(&r[8..10]),
                cal_scale: get_f32(&r[10..12]),
                level_1: level(r[12])?,
                level_2: level(r[13])?,
                filter_window: r[14],
            };
        }
        let config = NodeConfig {
            unit_address: img[GENERAL],
            baud_div100: img[GENERAL + 1],
            parity: img[GENERAL + 2],
            mode: NodeMode::from_code(img[GENERAL + 4]).ok_or(ConfigError::Mode)?,
            channels,
        };
        config.validate()?;
        Ok(config)
    }
}

/// Whether holding register `address` lies in the configuration image.
pub fn image_index(address: u16) -> Option<usize> {
    let i = usize::from(address.checked_sub(CONFIG_BLOCK)?);
    let general = usize::from(CONFIG_GENERAL_LEN);
    if i < general || (CHANNELS..CONFIG_IMAGE_LEN).contains(&i) {
        Some(i)
    } else {
        None
    }
}

/// Whether a write to `address..address + len` would cover only half of an f32.
pub fn splits_f32(address: u16, len: usize) -> bool {
    let Some(start) = usize::from(address).checked_sub(usize::from(profile::CHANNEL_CONFIG_BLOCK))
    else {
        return false;
    };
    let end = start + len;
    (0..MAX_CHANNELS).any(|n| {
        F32_OFFSETS.iter().any(|off| {
            let hi = n * STRIDE + usize::from(*off); // first register of the f32
            let lo = hi + 1; // second register
            let covers = |r: usize| r >= start && r < end;
            covers(hi) != covers(lo)
        })
    })
}
