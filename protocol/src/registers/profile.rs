//! The Tianzhong node profile: the standard register layout of every Tianzhong sensor node.
//!
//! A gateway that knows this profile needs no per-device configuration: it reads the identity
//! block once, then polls status and channels in a single request (`0x0100..0x0170`, 112
//! registers, within the 125-register limit of one read).
//!
//! All multi-register numbers are big-endian (`ABCD`). Strings are ASCII, two characters per
//! register, first character in the high byte, padded with NUL.
//!
//! # Input registers (function code 04)
//!
//! ## Identity block
//!
//! | address | registers | content |
//! |---|---|---|
//! | `0x0000` | 1 | magic `0x545A` (`"TZ"`) |
//! | `0x0001` | 1 | profile version ([`PROFILE_VERSION`]) |
//! | `0x0002` | 8 | vendor, 16 characters |
//! | `0x000A` | 8 | model, 16 characters |
//! | `0x0012` | 8 | serial number, 16 characters |
//! | `0x001A` | 1 | firmware version: major (high byte), minor (low byte) |
//! | `0x001B` | 1 | firmware version: patch |
//! | `0x001C` | 1 | hardware revision |
//! | `0x001D` | 1 | number of channels (at most [`MAX_CHANNELS`]) |
//! | `0x001E` | 2 | reserved, 0 |
//!
//! ## Status and alarm block
//!
//! | address | registers | content |
//! |---|---|---|
//! | `0x0100` | 1 | status flags ([`StatusFlags`]) |
//! | `0x0101` | 1 | highest active alarm level (0 normal … 4 red) |
//! | `0x0102` | 1 | alarm outputs energised, bit n = output n (relay, buzzer) |
//! | `0x0103` | 1 | reason for the last reset ([`ResetReason`]) |
//! | `0x0104` | 2 | uptime in seconds, u32 |
//! | `0x0106` | 2 | sequence number of the latest sample, u32 |
//! | `0x0108` | 1 | reset count (saturating) |
//! | `0x0109` | 1 | Modbus frames dropped for a bad CRC (saturating) |
//! | `0x010A` | 1 | sensor read errors (saturating) |
//! | `0x010B` | 5 | reserved, 0 |
//!
//! ## Channel block
//!
//! Channel `n` (0-based) occupies [`CHANNEL_STRIDE`] registers from `0x0110 + 6·n`:
//!
//! | offset | registers | content |
//! |---|---|---|
//! | +0 | 2 | value, f32, in the quantity's canonical unit |
//! | +2 | 1 | quality: HJ 212 flag as its ASCII code (`'N'` = `0x004E`) |
//! | +3 | 1 | local alarm level (0 normal … 4 red) |
//! | +4 | 1 | quantity code ([`Quantity::code`]) |
//! | +5 | 1 | unit code of the value ([`Unit::code`]), always the canonical unit |
//!
//! # Holding registers (function codes 03, 06, 16)
//!
//! ## Configuration block
//!
//! | address | registers | content |
//! |---|---|---|
//! | `0x1000` | 1 | Modbus unit address, 1–247 |
//! | `0x1001` | 1 | baud rate ÷ 100 (96 = 9600, 1152 = 115 200) |
//! | `0x1002` | 1 | parity: 0 none, 1 odd, 2 even |
//! | `0x1003` | 1 | command: write [`Command`] codes; reads 0 |
//! | `0x1004` | 1 | mode ([`NodeMode`]): 0 normal, 1 maintenance, 2 calibrating |
//!
//! Communication settings (`0x1000`–`0x1002`) take effect at the next boot, so the reply to the
//! write that changes them still reaches the master. 32-bit values must be written whole
//! (function code 16); a write that covers half of one is refused with exception 02.
//!
//! Channel `n`'s configuration occupies [`CONFIG_STRIDE`] registers from `0x1010 + 16·n`:
//!
//! | offset | registers | content |
//! |---|---|---|
//! | +0 | 1 | sampling interval, seconds |
//! | +1 | 1 | local alarm flags ([`AlarmFlags`]) |
//! | +2 | 2 | set point 1, f32, canonical unit |
//! | +4 | 2 | set point 2, f32, canonical unit: ≥ set point 1 for high alarms, ≤ for low ones; for a window alarm set point 1 is the low limit and set point 2 the high one |
//! | +6 | 2 | hysteresis (deadband), f32, canonical unit |
//! | +8 | 2 | calibration offset, f32 (`value = raw × scale + offset`) |
//! | +10 | 2 | calibration scale, f32 |
//! | +12 | 1 | alarm level raised at set point 1 |
//! | +13 | 1 | alarm level raised at set point 2 |
//! | +14 | 1 | filter window: moving average over 1–8 samples (1 = unfiltered) |
//! | +15 | 1 | reserved, 0 |

use core::fmt;

use super::{ChannelMap, DataType, RegisterMap, RegisterTable};
use crate::alarm::AlarmLevel;
use crate::quantity::Quantity;
use crate::reading::ChannelId;
use crate::unit::Unit;

/// Version of this layout carried at `0x0001`.
pub const PROFILE_VERSION: u16 = 1;
/// Magic at `0x0000`: `"TZ"`.
pub const MAGIC: u16 = 0x545A;
/// Most channels a node exposes.
pub const MAX_CHANNELS: u16 = 16;

/// First register of the identity block (input registers).
pub const IDENTITY_BLOCK: u16 = 0x0000;
/// Registers in the identity block.
pub const IDENTITY_LEN: u16 = 32;
/// First register of the status and alarm block (input registers).
pub const STATUS_BLOCK: u16 = 0x0100;
/// Registers in the status block.
pub const STATUS_LEN: u16 = 16;
/// First register of the channel block (input registers).
pub const CHANNEL_BLOCK: u16 = 0x0110;
/// Registers per channel in the channel block.
pub const CHANNEL_STRIDE: u16 = 6;
/// First register of the configuration block (holding registers).
pub const CONFIG_BLOCK: u16 = 0x1000;
/// Registers of the general part of the configuration block, from [`CONFIG_BLOCK`].
pub const CONFIG_GENERAL_LEN: u16 = 5;
/// First register of the per-channel configuration (holding registers).
pub const CHANNEL_CONFIG_BLOCK: u16 = 0x1010;
/// Registers per channel in the configuration block.
pub const CONFIG_STRIDE: u16 = 16;

/// Characters in each identity string.
pub const IDENTITY_STRING_LEN: usize = 16;

/// First register of channel `n`'s block.
pub const fn channel_base(n: u16) -> u16 {
    CHANNEL_BLOCK + CHANNEL_STRIDE * n
}

/// First register of channel `n`'s configuration.
pub const fn channel_config_base(n: u16) -> u16 {
    CHANNEL_CONFIG_BLOCK + CONFIG_STRIDE * n
}

/// Registers one poll of status and every channel of a node with `channels` channels reads.
pub const fn poll_len(channels: u16) -> u16 {
    STATUS_LEN + CHANNEL_STRIDE * channels
}

/// The register-map entry of channel `n` of a node profile: f32 value with its quality
/// register.
pub fn channel_map(n: u16, quantity: Quantity) -> ChannelMap {
    let mut map = ChannelMap::new(
        ChannelId(n),
        quantity,
        RegisterTable::Input,
        channel_base(n),
        DataType::F32,
    );
    map.quality_address = Some(channel_base(n) + 2);
    map
}

/// The register map of a profile node whose channels measure `quantities`, in order.
pub fn register_map(quantities: &[Quantity]) -> Result<RegisterMap, ProfileError> {
    if quantities.len() > usize::from(MAX_CHANNELS) {
        return Err(ProfileError::TooManyChannels(quantities.len()));
    }
    let mut map = RegisterMap::default();
    for (n, q) in quantities.iter().enumerate() {
        // Cannot overflow: at most MAX_CHANNELS entries, fewer than the map's capacity.
        let _ = map.channels.push(channel_map(n as u16, *q));
    }
    Ok(map)
}

/// Status flag bits at `0x0100`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatusFlags(pub u16);

impl StatusFlags {
    /// At least one sensor reports a fault.
    pub const SENSOR_FAULT: u16 = 1 << 0;
    /// A local alarm is active.
    pub const LOCAL_ALARM: u16 = 1 << 1;
    /// The stored configuration failed its CRC; factory defaults are in use.
    pub const CONFIG_DEFAULTS: u16 = 1 << 2;
    /// A channel is being calibrated.
    pub const CALIBRATING: u16 = 1 << 3;
    /// The node is in maintenance mode.
    pub const MAINTENANCE: u16 = 1 << 4;
    /// A latched alarm output waits for reset.
    pub const ALARM_LATCHED: u16 = 1 << 5;
    /// The running firmware is on trial and not yet confirmed.
    pub const FIRMWARE_TRIAL: u16 = 1 << 6;

    /// Whether `bit` is set.
    pub const fn has(self, bit: u16) -> bool {
        self.0 & bit != 0
    }
}

/// Why the node last reset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum ResetReason {
    /// Unknown.
    Unknown = 0,
    /// Power on.
    PowerOn = 1,
    /// Watchdog timeout.
    Watchdog = 2,
    /// Software-requested reset (command, firmware update).
    Software = 3,
    /// Brown-out.
    BrownOut = 4,
    /// External reset pin.
    Pin = 5,
}

impl ResetReason {
    /// The reason with this code; unknown codes are [`ResetReason::Unknown`].
    pub fn from_code(code: u16) -> ResetReason {
        match code {
            1 => ResetReason::PowerOn,
            2 => ResetReason::Watchdog,
            3 => ResetReason::Software,
            4 => ResetReason::BrownOut,
            5 => ResetReason::Pin,
            _ => ResetReason::Unknown,
        }
    }
}

/// Commands written to `0x1003`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum Command {
    /// Persist the configuration registers to flash.
    Save = 0x5341,
    /// Restore factory defaults (and persist them).
    FactoryDefaults = 0x4644,
    /// Reset latched alarm outputs.
    ResetLatches = 0x524C,
    /// Reboot the node.
    Reboot = 0x5242,
}

impl Command {
    /// The command with this code.
    pub fn from_code(code: u16) -> Option<Command> {
        match code {
            0x5341 => Some(Command::Save),
            0x4644 => Some(Command::FactoryDefaults),
            0x524C => Some(Command::ResetLatches),
            0x5242 => Some(Command::Reboot),
            _ => None,
        }
    }
}

/// Operating mode at `0x1004`; it sets the quality every channel reports. A node leaves
/// maintenance and calibration on its own after 30 minutes, so a forgotten mode cannot keep
/// a gas detector's alarm inhibited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(u16)]
pub enum NodeMode {
    /// Measuring.
    #[default]
    Normal = 0,
    /// Under maintenance: values are reported as uncertain (HJ 212 `M`).
    Maintenance = 1,
    /// Calibration gas applied: values are reported as bad (HJ 212 `C`) and do not raise
    /// local alarms.
    Calibrating = 2,
}

impl NodeMode {
    /// The mode with this code.
    pub fn from_code(code: u16) -> Option<NodeMode> {
        match code {
            0 => Some(NodeMode::Normal),
            1 => Some(NodeMode::Maintenance),
            2 => Some(NodeMode::Calibrating),
            _ => None,
        }
    }
}

/// Local alarm flag bits at channel configuration offset +1.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AlarmFlags(pub u16);

impl AlarmFlags {
    /// The local alarm of this channel is enabled.
    pub const ENABLED: u16 = 1 << 0;
    /// The alarm output stays on after the value returns until reset.
    pub const LATCHING: u16 = 1 << 1;
    /// The alarm is on the low side (e.g. oxygen deficiency): it trips below the set points.
    pub const LOW_SIDE: u16 = 1 << 2;
    /// A window alarm: set point 1 is a low limit and set point 2 a high limit (oxygen:
    /// deficiency below 19.5 %vol, enrichment above 23.5 %vol).
    pub const WINDOW: u16 = 1 << 3;
    /// Every defined bit.
    pub const ALL: u16 = Self::ENABLED | Self::LATCHING | Self::LOW_SIDE | Self::WINDOW;

    /// Whether `bit` is set.
    pub const fn has(self, bit: u16) -> bool {
        self.0 & bit != 0
    }
}

/// A profile block that could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProfileError {
    /// The block is shorter than its layout.
    TooShort {
        /// Registers needed.
        expected: u16,
        /// Registers given.
        got: usize,
    },
    /// The magic at `0x0000` is not `0x545A`: the device does not speak this profile.
    NotAProfileNode {
        /// What was found.
        magic: u16,
    },
    /// A profile version this code does not know.
    UnsupportedVersion(u16),
    /// More channels than the profile allows.
    TooManyChannels(usize),
    /// An identity string is not ASCII.
    NotAscii,
    /// An alarm-level register holds a code above 4.
    BadAlarmLevel(u16),
}

impl fmt::Display for ProfileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProfileError::TooShort { expected, got } => {
                write!(f, "block needs {expected} registers, got {got}")
            }
            ProfileError::NotAProfileNode { magic } => {
                write!(
                    f,
                    "register 0x0000 holds 0x{magic:04X}, not the Tianzhong magic 0x545A"
                )
            }
            ProfileError::UnsupportedVersion(v) => write!(f, "unsupported profile version {v}"),
            ProfileError::TooManyChannels(n) => {
                write!(f, "{n} channels; the profile allows at most {MAX_CHANNELS}")
            }
            ProfileError::NotAscii => f.write_str("identity string is not printable ASCII"),
            ProfileError::BadAlarmLevel(c) => write!(f, "alarm level code {c} is not 0..=4"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for ProfileError {}

/// An identity string of up to 16 ASCII characters.
pub type IdentityString = heapless::String<IDENTITY_STRING_LEN>;

/// A firmware version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FirmwareVersion {
    /// Major.
    pub major: u8,
    /// Minor.
    pub minor: u8,
    /// Patch.
    pub patch: u16,
}

impl fmt::Display for FirmwareVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// The identity block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// Vendor.
    pub vendor: IdentityString,
    /// Model.
    pub model: IdentityString,
    /// Serial number.
    pub serial: IdentityString,
    /// Firmware version.
    pub firmware: FirmwareVersion,
    /// Hardware revision.
    pub hardware_revision: u16,
    /// Number of channels.
    pub channels: u16,
}

fn check_len(regs: &[u16], expected: u16) -> Result<(), ProfileError> {
    if regs.len() < usize::from(expected) {
        return Err(ProfileError::TooShort {
            expected,
            got: regs.len(),
        });
    }
    Ok(())
}

fn decode_string(regs: &[u16]) -> Result<IdentityString, ProfileError> {
    let mut s = IdentityString::new();
    for byte in regs.iter().flat_map(|r| r.to_be_bytes()) {
        if byte == 0 {
            break;
        }
        if !(byte.is_ascii_graphic() || byte == b' ') {
            return Err(ProfileError::NotAscii);
        }
        // Cannot overflow: 8 registers hold exactly 16 bytes.
        let _ = s.push(char::from(byte));
    }
    Ok(s)
}

fn encode_string(s: &str, out: &mut [u16]) {
    let bytes = s.as_bytes();
    for (i, reg) in out.iter_mut().enumerate() {
        let hi = bytes.get(2 * i).copied().unwrap_or(0);
        let lo = bytes.get(2 * i + 1).copied().unwrap_or(0);
        *reg = u16::from_be_bytes([hi, lo]);
    }
}

impl Identity {
    /// Decodes the identity block (at least [`IDENTITY_LEN`] registers from `0x0000`).
    pub fn decode(regs: &[u16]) -> Result<Identity, ProfileError> {
        check_len(regs, IDENTITY_LEN)?;
        if regs[0] != MAGIC {
            return Err(ProfileError::NotAProfileNode { magic: regs[0] });
        }
        if regs[1] != PROFILE_VERSION {
            return Err(ProfileError::UnsupportedVersion(regs[1]));
        }
        let channels = regs[0x1D];
        if channels > MAX_CHANNELS {
            return Err(ProfileError::TooManyChannels(usize::from(channels)));
        }
        let [major, minor] = regs[0x1A].to_be_bytes();
        Ok(Identity {
            vendor: decode_string(&regs[0x02..0x0A])?,
            model: decode_string(&regs[0x0A..0x12])?,
            serial: decode_string(&regs[0x12..0x1A])?,
            firmware: FirmwareVersion {
                major,
                minor,
                patch: regs[0x1B],
            },
            hardware_revision: regs[0x1C],
            channels,
        })
    }

    /// Encodes the identity block.
    pub fn encode(&self) -> [u16; IDENTITY_LEN as usize] {
        let mut regs = [0u16; IDENTITY_LEN as usize];
        regs[0] = MAGIC;
        regs[1] = PROFILE_VERSION;
        encode_string(&self.vendor, &mut regs[0x02..0x0A]);
        encode_string(&self.model, &mut regs[0x0A..0x12]);
        encode_string(&self.serial, &mut regs[0x12..0x1A]);
        regs[0x1A] = u16::from_be_bytes([self.firmware.major, self.firmware.minor]);
        regs[0x1B] = self.firmware.patch;
        regs[0x1C] = self.hardware_revision;
        regs[0x1D] = self.channels;
        regs
    }
}

/// The status and alarm block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status {
    /// Status flags.
    pub flags: StatusFlags,
    /// Highest active local alarm level.
    pub highest_alarm: AlarmLevel,
    /// Alarm outputs energised.
    pub outputs: u16,
    /// Why the node last reset.
    pub reset_reason: ResetReason,
    /// Uptime in seconds.
    pub uptime_s: u32,
    /// Sequence number of the latest sample.
    pub seq: u32,
    /// Resets since manufacture (saturating).
    pub reset_count: u16,
    /// Modbus frames dropped for a bad CRC (saturating).
    pub crc_errors: u16,
    /// Sensor read errors (saturating).
    pub sensor_errors: u16,
}

fn u32_at(regs: &[u16], i: usize) -> u32 {
    (u32::from(regs[i]) << 16) | u32::from(regs[i + 1])
}

fn level(code: u16) -> Result<AlarmLevel, ProfileError> {
    AlarmLevel::from_code(code).ok_or(ProfileError::BadAlarmLevel(code))
}

impl Status {
    /// Decodes the status block (at least [`STATUS_LEN`] registers from `0x0100`).
    pub fn decode(regs: &[u16]) -> Result<Status, ProfileError> {
        check_len(regs, STATUS_LEN)?;
        Ok(Status {
            flags: StatusFlags(regs[0]),
            highest_alarm: level(regs[1])?,
            outputs: regs[2],
            reset_reason: ResetReason::from_code(regs[3]),
            uptime_s: u32_at(regs, 4),
            seq: u32_at(regs, 6),
            reset_count: regs[8],
            crc_errors: regs[9],
            sensor_errors: regs[10],
        })
    }

    /// Encodes the status block.
    pub fn encode(&self) -> [u16; STATUS_LEN as usize] {
        let mut regs = [0u16; STATUS_LEN as usize];
        regs[0] = self.flags.0;
        regs[1] = u16::from(self.highest_alarm.code());
        regs[2] = self.outputs;
        regs[3] = self.reset_reason as u16;
        regs[4] = (self.uptime_s >> 16) as u16;
        regs[5] = self.uptime_s as u16;
        regs[6] = (self.seq >> 16) as u16;
        regs[7] = self.seq as u16;
        regs[8] = self.reset_count;
        regs[9] = self.crc_errors;
        regs[10] = self.sensor_errors;
        regs
    }
}

/// The descriptive registers of one channel (offsets +3 to +5), besides its value and quality.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelDescriptor {
    /// Local alarm level.
    pub alarm: AlarmLevel,
    /// What the channel measures; `None` for a code this version does not know.
    pub quantity: Option<Quantity>,
    /// Unit of the value; `None` for a code this version does not know.
    pub unit: Option<Unit>,
}

impl ChannelDescriptor {
    /// Decodes offsets +3 to +5 of a channel from its [`CHANNEL_STRIDE`] registers.
    pub fn decode(regs: &[u16]) -> Result<ChannelDescriptor, ProfileError> {
        check_len(regs, CHANNEL_STRIDE)?;
        Ok(ChannelDescriptor {
            alarm: level(regs[3])?,
            quantity: Quantity::from_code(regs[4]),
            unit: Unit::from_code(regs[5]),
        })
    }
}
