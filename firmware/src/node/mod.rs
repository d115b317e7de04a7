//! The sans-IO node core: everything a sensor node decides, with no hardware in it.
//!
//! The MCU board binary and the simulator both drive the same core: they read sensors through
//! the [drivers](crate::drivers) when [`NodeCore::due`] says a channel is due, hand the result
//! to [`NodeCore::record`], call [`NodeCore::tick`] and carry out the [`Actions`] it returns
//! (drive the alarm outputs, feed the watchdog, persist the configuration, reboot), and serve
//! the core to the Modbus slave as its [`RegisterBank`].
//!
//! # Module map
//!
//! | module | what |
//! |---|---|
//! | [`config`] | the configuration (holding registers), its validation and factory defaults |
//! | [`alarm`] | the local fail-safe alarm: set points, hysteresis, latching, outputs |
//! | [`filter`] | per-channel moving average |
//! | [`storage`] | the configuration in flash, two CRC-checked copies |
//!
//! # The watchdog
//!
//! [`Actions::feed_watchdog`] is true only while every channel has been sampled within three
//! of its intervals (plus two seconds): a main loop stuck in a driver stops feeding and the
//! independent watchdog resets the node. A sensor that answers with errors is a sensor fault,
//! reported and alarmed, not a reason to reboot: rebooting would not fix it and would stop the
//! other channels' alarms while the node restarts.

pub mod alarm;
pub mod config;
pub mod filter;
pub mod storage;

use core::fmt::Write as _;

use tianzhong_protocol::registers::profile::{
    self, CHANNEL_BLOCK, CHANNEL_STRIDE, Command, FirmwareVersion, IDENTITY_BLOCK, IDENTITY_LEN,
    Identity, IdentityString, NodeMode, ResetReason, STATUS_BLOCK, STATUS_LEN, Status, StatusFlags,
};
use tianzhong_protocol::{AlarmLevel, BadReason, Quality, Quantity, UncertainReason};

use crate::modbus::{Exception, RegisterBank};
use alarm::{ChannelAlarm, Trip, outputs};
use config::{ConfigImage, NodeConfig, image_index, splits_f32};
use filter::MovingAverage;

/// Most channels this firmware runs (the profile allows 16; 8 keeps the core's RAM small).
pub const MAX_CHANNELS: usize = 8;

/// A configuration change is persisted once no further write has come for this long, so that
/// an engineer writing set points one by one costs one flash erase, not many.
pub const SAVE_SETTLE_MS: u64 = 2_000;

/// Maintenance and calibration modes end on their own after this long.
pub const MODE_TIMEOUT_MS: u64 = 30 * 60 * 1000;

/// Who the node is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeIdentity {
    /// Vendor name.
    pub vendor: IdentityString,
    /// Model (Modbus product code).
    pub model: IdentityString,
    /// Serial number.
    pub serial: IdentityString,
    /// Firmware version.
    pub firmware: FirmwareVersion,
    /// Hardware revision.
    pub hardware_revision: u16,
}

/// What the board knows about this boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootInfo {
    /// Why the MCU reset.
    pub reset_reason: ResetReason,
    /// Resets since manufacture.
    pub reset_count: u16,
}

/// The outcome of reading a sensor.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Sample {
    /// A value in the quantity's canonical unit, before the node's calibration.
    Value(f32),
    /// A value the driver knows lies beyond its instrument's range (a 4–20 mA loop between the
    /// fault limit and the span): kept, flagged out of range.
    OutOfRange(f32),
    /// The sensor failed (bus error, CRC error, loop fault).
    Fault,
}

/// Why a core could not be set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetupError {
    /// No channels, or more than [`MAX_CHANNELS`].
    ChannelCount(usize),
}

/// What the board must do after a tick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Actions {
    /// Alarm output bits ([`alarm::outputs`]).
    pub outputs: u16,
    /// Whether to feed the watchdog.
    pub feed_watchdog: bool,
    /// Whether to persist [`NodeCore::config`] now (then call [`NodeCore::config_saved`]).
    pub save_config: bool,
    /// Whether to reboot (after saving, if asked to save too).
    pub reboot: bool,
}

#[derive(Clone, Copy, Debug)]
struct ChannelState {
    quantity: Quantity,
    next_due_ms: u64,
    last_sample_ms: u64,
    filter: MovingAverage,
    value: f32,
    quality: Quality,
    alarm: ChannelAlarm,
}

/// The node core.
pub struct NodeCore {
    identity: NodeIdentity,
    revision: heapless::String<16>,
    channels: heapless::Vec<ChannelState, MAX_CHANNELS>,
    config: NodeConfig,
    boot: BootInfo,
    boot_ms: u64,
    now_ms: u64,
    seq: u32,
    round_open: bool,
    config_defaults: bool,
    dirty_since: Option<u64>,
    save_now: bool,
    reboot_requested: bool,
    mode_since: u64,
    crc_errors: u16,
    sensor_errors: u16,
}

impl NodeCore {
    /// A core for channels measuring `quantities`, running `stored` configuration (from flash)
    /// or factory defaults when there is none. The mode always starts normal.
    pub fn new(
        identity: NodeIdentity,
        quantities: &[Quantity],
        stored: Option<NodeConfig>,
        boot: BootInfo,
        now_ms: u64,
    ) -> Result<NodeCore, SetupError> {
        if quantities.is_empty() || quantities.len() > MAX_CHANNELS {
            return Err(SetupError::ChannelCount(quantities.len()));
        }
        let config_defaults = stored.is_none();
        let mut config = stored.unwrap_or_else(|| NodeConfig::factory(quantities));
        config.mode = NodeMode::Normal;
        let mut revision = heapless::String::new();
        let fw = identity.firmware;
        // Cannot overflow: "255.255.65535" is 13 characters.
        let _ = write!(revision, "{}.{}.{}", fw.major, fw.minor, fw.patch);
        let channels = quantities
            .iter()
            .map(|q| ChannelState {
                quantity: *q,
                next_due_ms: now_ms,
                last_sample_ms: now_ms,
                filter: MovingAverage::default(),
                value: 0.0,
                // Nothing measured yet: the gateway must not take the initial 0 for a value.
                quality: Quality::Bad(BadReason::Stopped),
                alarm: ChannelAlarm::default(),
            })
            .collect();
        Ok(NodeCore {
            identity,
            revision,
            channels,
            config,
            boot,
            boot_ms: now_ms,
            now_ms,
            seq: 0,
            round_open: false,
            config_defaults,
            dirty_since: None,
            save_now: false,
            reboot_requested: false,
            mode_since: now_ms,
            crc_errors: 0,
            sensor_errors: 0,
        })
    }

    /// Number of channels.
    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    /// What channel `ch` measures.
    pub fn quantity(&self, ch: usize) -> Option<Quantity> {
        self.channels.get(ch).map(|c| c.quantity)
    }

    /// The running configuration.
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// Sequence number of the latest sample round.
    pub fn seq(&self) -> u32 {
        self.seq
    }

    /// Channel `ch`'s latest value, quality and alarm level.
    pub fn channel(&self, ch: usize) -> Option<(f32, Quality, AlarmLevel)> {
        let c = self.channels.get(ch)?;
        Some((c.value, c.quality, c.alarm.level(&self.config.channels[ch])))
    }

    /// Bit `n` set when channel `n` is due for sampling at `now_ms`.
    pub fn due(&self, now_ms: u64) -> u16 {
        self.channels
            .iter()
            .enumerate()
            .filter(|(_, c)| now_ms >= c.next_due_ms)
            .fold(0, |mask, (n, _)| mask | 1 << n)
    }

    /// When the next channel falls due: the board may sleep until then.
    pub fn next_due_ms(&self) -> u64 {
        self.channels
            .iter()
            .map(|c| c.next_due_ms)
            .min()
            .unwrap_or(u64::MAX)
    }

    /// Records the outcome of sampling channel `ch` at `now_ms`.
    pub fn record(&mut self, ch: usize, now_ms: u64, sample: Sample) {
        let mode = self.config.mode;
        let Some(c) = self.channels.get_mut(ch) else {
            return;
        };
        let cfg = &self.config.channels[ch];
        if !self.round_open {
            self.seq = self.seq.wrapping_add(1);
            self.round_open = true;
        }
        c.last_sample_ms = now_ms;
        // Schedule from the due time, not from now, so the sampling grid does not drift.
        // A loop that fell behind by more than an interval skips the missed slots.
        let interval = u64::from(cfg.interval_s) * 1000;
        let next = c.next_due_ms.saturating_add(interval);
        c.next_due_ms = if next > now_ms {
            next
        } else {
            now_ms.saturating_add(interval)
        };
        let (raw, mut quality) = match sample {
            Sample::Fault => {
                self.sensor_errors = self.sensor_errors.saturating_add(1);
                c.filter.reset();
                // Keep the last value and the alarm state: a failed sensor proves nothing.
                c.quality = Quality::Bad(BadReason::SensorFault);
                return;
            }
            Sample::Value(v) => (v, Quality::Good),
            Sample::OutOfRange(v) => (v, Quality::Uncertain(UncertainReason::OutOfRange)),
        };
        if !raw.is_finite() {
            self.sensor_errors = self.sensor_errors.saturating_add(1);
            c.quality = Quality::Bad(BadReason::SensorFault);
            return;
        }
        let calibrated = raw * cfg.cal_scale + cfg.cal_offset;
        let value = c.filter.push(calibrated, usize::from(cfg.filter_window));
        if quality == Quality::Good && !c.quantity.in_range(f64::from(value)) {
            quality = Quality::Uncertain(UncertainReason::OutOfRange);
        }
        quality = match mode {
            NodeMode::Normal => quality,
            NodeMode::Maintenance => Quality::Uncertain(UncertainReason::Maintenance),
            NodeMode::Calibrating => Quality::Bad(BadReason::Calibrating),
        };
        c.value = value;
        c.quality = quality;
        if quality.level() != tianzhong_protocol::QualityLevel::Bad {
            c.alarm.evaluate(value, cfg);
        }
    }

    /// Tells the core how many Modbus frames the link dropped for a bad CRC.
    pub fn set_crc_errors(&mut self, count: u32) {
        self.crc_errors = u16::try_from(count).unwrap_or(u16::MAX);
    }

    /// The alarm outputs the current state calls for.
    pub fn outputs(&self) -> u16 {
        let mut bits = 0;
        for (c, cfg) in self.channels.iter().zip(&self.config.channels) {
            match c.alarm.effective(cfg) {
                Trip::None => {}
                Trip::SetPoint1 => bits |= outputs::RELAY_1,
                Trip::SetPoint2 => bits |= outputs::RELAY_1 | outputs::RELAY_2,
            }
            if c.quality == Quality::Bad(BadReason::SensorFault) {
                bits |= outputs::FAULT;
            }
        }
        bits
    }

    /// Advances time: closes the sample round, expires modes, decides on saving, rebooting and
    /// feeding the watchdog.
    pub fn tick(&mut self, now_ms: u64) -> Actions {
        self.now_ms = now_ms;
        self.round_open = false;
        if self.config.mode != NodeMode::Normal
            && now_ms.saturating_sub(self.mode_since) >= MODE_TIMEOUT_MS
        {
            self.config.mode = NodeMode::Normal;
        }
        let settled = self
            .dirty_since
            .is_some_and(|t| now_ms.saturating_sub(t) >= SAVE_SETTLE_MS);
        let save_config =
            self.dirty_since.is_some() && (settled || self.save_now || self.reboot_requested);
        let alive = self
            .channels
            .iter()
            .zip(&self.config.channels)
            .all(|(c, cfg)| {
                let allowance = 3 * u64::from(cfg.interval_s) * 1000 + 2000;
                now_ms.saturating_sub(c.last_sample_ms) <= allowance
            });
        Actions {
            outputs: self.outputs(),
            feed_watchdog: alive,
            save_config,
            reboot: self.reboot_requested,
        }
    }

    /// The board persisted the configuration.
    pub fn config_saved(&mut self) {
        self.dirty_since = None;
        self.save_now = false;
        self.config_defaults = false;
    }

    /// The status block.
    pub fn status(&self) -> Status {
        let mut flags = 0;
        let mut highest = AlarmLevel::Normal;
        let mut latched = false;
        for (c, cfg) in self.channels.iter().zip(&self.config.channels) {
            highest = highest.max(c.alarm.level(cfg));
            latched |=
                c.alarm.latched > c.alarm.trip && cfg.alarm.has(profile::AlarmFlags::LATCHING);
            if c.quality == Quality::Bad(BadReason::SensorFault) {
                flags |= StatusFlags::SENSOR_FAULT;
            }
        }
        if highest.is_alarm() {
            flags |= StatusFlags::LOCAL_ALARM;
        }
        if latched {
            flags |= StatusFlags::ALARM_LATCHED;
        }
        if self.config_defaults {
            flags |= StatusFlags::CONFIG_DEFAULTS;
        }
        match self.config.mode {
            NodeMode::Normal => {}
            NodeMode::Maintenance => flags |= StatusFlags::MAINTENANCE,
            NodeMode::Calibrating => flags |= StatusFlags::CALIBRATING,
        }
        Status {
            flags: StatusFlags(flags),
            highest_alarm: highest,
            outputs: self.outputs(),
            reset_reason: self.boot.reset_reason,
            uptime_s: (self.now_ms.saturating_sub(self.boot_ms) / 1000) as u32,
            seq: self.seq,
            reset_count: self.boot.reset_count,
            crc_errors: self.crc_errors,
            sensor_errors: self.sensor_errors,
        }
    }

    fn identity_block(&self) -> [u16; IDENTITY_LEN as usize] {
        Identity {
            vendor: self.identity.vendor.clone(),
            model: self.identity.model.clone(),
            serial: self.identity.serial.clone(),
            firmware: self.identity.firmware,
            hardware_revision: self.identity.hardware_revision,
            channels: self.channels.len() as u16,
        }
        .encode()
    }

    fn channel_register(&self, n: usize, offset: u16) -> u16 {
        let c = &self.channels[n];
        let value = c.value.to_be_bytes();
        match offset {
            0 => u16::from_be_bytes([value[0], value[1]]),
            1 => u16::from_be_bytes([value[2], value[3]]),
            2 => c.quality.register_code(),
            3 => u16::from(c.alarm.level(&self.config.channels[n]).code()),
            4 => c.quantity.code(),
            _ => c.quantity.canonical_unit().code(),
        }
    }

    fn apply_command(&mut self, code: u16) -> Result<(), Exception> {
        match Command::from_code(code).ok_or(Exception::IllegalDataValue)? {
            Command::Save => {
                self.save_now = true;
                self.dirty_since.get_or_insert(self.now_ms);
            }
            Command::FactoryDefaults => {
                let quantities: heapless::Vec<Quantity, MAX_CHANNELS> =
                    self.channels.iter().map(|c| c.quantity).collect();
                let mut defaults = NodeConfig::factory(&quantities);
                // Keep the link settings: a node reset over the bus must stay reachable.
                defaults.unit_address = self.config.unit_address;
                defaults.baud_div100 = self.config.baud_div100;
                defaults.parity = self.config.parity;
                self.replace_config(defaults);
                self.save_now = true;
            }
            Command::ResetLatches => self.channels.iter_mut().for_each(|c| c.alarm.reset_latch()),
            Command::Reboot => self.reboot_requested = true,
        }
        Ok(())
    }

    fn replace_config(&mut self, new: NodeConfig) {
        for (n, c) in self.channels.iter_mut().enumerate() {
            let (old_cfg, new_cfg) = (&self.config.channels[n], &new.channels[n]);
            if old_cfg.cal_scale != new_cfg.cal_scale
                || old_cfg.cal_offset != new_cfg.cal_offset
                || old_cfg.filter_window != new_cfg.filter_window
            {
                c.filter.reset();
            }
            if old_cfg.interval_s != new_cfg.interval_s {
                c.next_due_ms = self.now_ms;
            }
        }
        if new.mode != self.config.mode {
            self.mode_since = self.now_ms;
        }
        self.config = new;
        self.dirty_since = Some(self.now_ms);
    }
}

impl RegisterBank for NodeCore {
    fn read_input_registers(&mut self, address: u16, out: &mut [u16]) -> Result<(), Exception> {
        let channels_end = CHANNEL_BLOCK + CHANNEL_STRIDE * self.channels.len() as u16;
        let mut identity = None;
        let mut status = None;
        for (i, reg) in out.iter_mut().enumerate() {
            let addr = address
                .checked_add(i as u16)
                .ok_or(Exception::IllegalDataAddress)?;
            *reg = if (IDENTITY_BLOCK..IDENTITY_BLOCK + IDENTITY_LEN).contains(&addr) {
                identity.get_or_insert_with(|| self.identity_block())
                    [usize::from(addr - IDENTITY_BLOCK)]
            } else if (STATUS_BLOCK..STATUS_BLOCK + STATUS_LEN).contains(&addr) {
                status.get_or_insert_with(|| self.status().encode())
                    [usize::from(addr - STATUS_BLOCK)]
            } else if (CHANNEL_BLOCK..channels_end).contains(&addr) {
                let rel = addr - CHANNEL_BLOCK;
                self.channel_register(usize::from(rel / CHANNEL_STRIDE), rel % CHANNEL_STRIDE)
            } else {
                return Err(Exception::IllegalDataAddress);
            };
        }
        Ok(())
    }

    fn read_holding_registers(&mut self, address: u16, out: &mut [u16]) -> Result<(), Exception> {
        let image = self.config.to_image();
        for (i, reg) in out.iter_mut().enumerate() {
            let addr = address
                .checked_add(i as u16)
                .ok_or(Exception::IllegalDataAddress)?;
            let index = image_index(addr).ok_or(Exception::IllegalDataAddress)?;
            *reg = image[index];
        }
        Ok(())
    }

    fn write_holding_registers(&mut self, address: u16, values: &[u16]) -> Result<(), Exception> {
        let command_addr = profile::CONFIG_BLOCK + 3;
        let mut image: ConfigImage = self.config.to_image();
        let mut command = None;
        for (i, v) in values.iter().enumerate() {
            let addr = address
                .checked_add(i as u16)
                .ok_or(Exception::IllegalDataAddress)?;
            let index = image_index(addr).ok_or(Exception::IllegalDataAddress)?;
            if addr == command_addr {
                command = Some(*v);
            } else {
                image[index] = *v;
            }
        }
        if splits_f32(address, values.len()) {
            return Err(Exception::IllegalDataAddress);
        }
        if let Some(code) = command {
            Command::from_code(code).ok_or(Exception::IllegalDataValue)?;
        }
        let new = NodeConfig::from_image(&image).map_err(|_| Exception::IllegalDataValue)?;
        if new != self.config {
            self.replace_config(new);
        }
        if let Some(code) = command {
            self.apply_command(code)?;
        }
        Ok(())
    }

    fn device_identification(&self, object_id: u8) -> Option<&str> {
        match object_id {
            0x00 => Some(self.identity.vendor.as_str()),
            0x01 => Some(self.identity.model.as_str()),
            0x02 => Some(self.revision.as_str()),
            0x04 => Some("Tianzhong sensor node"),
            0x05 => Some(self.identity.model.as_str()),
            // Private object: the serial number, readable by individual access.
            0x80 => Some(self.identity.serial.as_str()),
            _ => None,
        }
    }
}
