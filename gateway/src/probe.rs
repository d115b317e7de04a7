//! `tianzhong probe`: read one device from the command line, as an engineer would with
//! mbpoll, but decoded into quantities and units.
//!
//! A Tianzhong node describes itself: the probe reads its identity block, learns how many
//! channels it has and, from each channel's quantity-code register, what they measure, so
//! `tianzhong probe --tcp 192.0.2.7:502 --unit 3` needs nothing else. A third-party device is
//! read through its register map from a gateway configuration (`--config FILE --device ID`).

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use tianzhong_protocol::registers::profile::{self, Identity, Status};
use tianzhong_protocol::registers::{RegisterMap, RegisterTable};
use tianzhong_protocol::{NodeId, Quantity, SiteId};

use crate::config::{Config, Device, DeviceKind, Link};
use crate::pipeline::unix_ms;
use crate::sources::modbus::device::{Block, PolledDevice};
use crate::sources::modbus::link::{BusLink, ReadResult};
use crate::sources::modbus::plan::{PlanConfig, ReadRequest};

/// What to probe.
#[derive(Clone, Debug)]
pub struct ProbeTarget {
    /// The link.
    pub link: Link,
    /// Unit id.
    pub unit: u8,
    /// Request timeout.
    pub timeout: Duration,
    /// The device's map when it is not a self-describing Tianzhong node.
    pub device: Option<Device>,
}

impl ProbeTarget {
    /// The target of device `id` in `config`.
    pub fn from_config(config: &Config, id: &str) -> Result<ProbeTarget, String> {
        let device = config
            .devices
            .iter()
            .find(|d| d.id.as_str() == id)
            .ok_or_else(|| format!("no device `{id}` in the configuration"))?;
        let bus = config
            .buses
            .iter()
            .find(|b| b.name == device.bus)
            .ok_or_else(|| format!("device `{id}`: bus `{}` missing", device.bus))?;
        Ok(ProbeTarget {
            link: bus.link.clone(),
            unit: device.unit,
            timeout: bus.timeout,
            device: Some(device.clone()),
        })
    }
}

fn fail(what: &str, request: &ReadRequest, unit: u8, result: ReadResult) -> String {
    let why = match result {
        ReadResult::Timeout => "no answer (timeout)".to_owned(),
        ReadResult::Exception(c) => format!("exception {c:02X}"),
        ReadResult::Malformed(m) => format!("malformed answer: {m}"),
        ReadResult::LinkError(m) => format!("link error: {m}"),
        ReadResult::Data(_) => "no data".to_owned(),
    };
    format!("unit {unit}, {what} ({request}): {why}")
}

/// Reads the target and returns the report to print.
pub async fn probe(target: ProbeTarget) -> Result<String, String> {
    let mut link = BusLink::new(target.link.clone(), target.timeout);
    let unit = target.unit;
    let mut out = String::new();
    let _ = writeln!(out, "{} unit {unit}", link.endpoint());
    let device = match target.device {
        Some(d) if matches!(d.kind, DeviceKind::Inline) => d,
        other => {
            let id = ReadRequest {
                table: RegisterTable::Input,
                start: profile::IDENTITY_BLOCK,
                count: profile::IDENTITY_LEN,
            };
            let regs = match link.read(unit, &id).await {
                ReadResult::Data(r) => r,
                r => return Err(fail("identity block", &id, unit, r)),
            };
            let identity = Identity::decode(&regs).map_err(|e| {
                format!("unit {unit}: not a Tianzhong node ({e}); give --config and --device for a third-party device")
            })?;
            let _ = writeln!(
                out,
                "  {} {} serial {} firmware {} hardware rev {}, {} channels",
                identity.vendor.as_str(),
                identity.model.as_str(),
                identity.serial.as_str(),
                identity.firmware,
                identity.hardware_revision,
                identity.channels
            );
            // Each channel's quantity code, from the device itself.
            let n = identity.channels.min(profile::MAX_CHANNELS);
            let block = ReadRequest {
                table: RegisterTable::Input,
                start: profile::CHANNEL_BLOCK,
                count: profile::CHANNEL_STRIDE * n.max(1),
            };
            let regs = match link.read(unit, &block).await {
                ReadResult::Data(r) => r,
                r => return Err(fail("channel block", &block, unit, r)),
            };
            let mut quantities = Vec::with_capacity(usize::from(n));
            for c in 0..usize::from(n) {
                let code = regs[c * usize::from(profile::CHANNEL_STRIDE) + 4];
                quantities.push(Quantity::from_code(code).ok_or_else(|| {
                    format!("unit {unit}: channel {c} has unknown quantity code {code}")
                })?);
            }
            let map = profile::register_map(&quantities).map_err(|e| format!("{e}"))?;
            let (id, site) = match other {
                Some(d) => (d.id, d.site),
                None => (
                    NodeId::new(&format!("unit-{unit}")).expect("valid id"),
                    SiteId::new("probe").expect("valid id"),
                ),
            };
            Device {
                id,
                site,
                bus: "probe".into(),
                unit,
                poll_interval: Duration::from_secs(1),
                kind: DeviceKind::Tianzhong { quantities },
                map: map.into(),
                model: Some(identity.model.as_str().to_owned()),
            }
        }
    };
    let mut polled =
        PolledDevice::new(0, &device, PlanConfig::default()).map_err(|e| e.to_string())?;
    let started = Instant::now();
    let mut blocks = Vec::new();
    for request in polled.requests() {
        match link.read(unit, &request).await {
            ReadResult::Data(registers) => {
                let _ = writeln!(out, "  read {request}");
                blocks.push(Block { request, registers });
            }
            r => return Err(fail("poll", &request, unit, r)),
        }
    }
    let latency = started.elapsed();
    if let (DeviceKind::Tianzhong { .. }, Some(b)) = (&device.kind, blocks.first())
        && let Ok(s) = Status::decode(&b.registers)
    {
        let _ = writeln!(
            out,
            "  status: seq {} uptime {} s, highest local alarm {:?}, flags 0x{:04X}, resets {}, CRC errors {}, sensor errors {}",
            s.seq,
            s.uptime_s,
            s.highest_alarm,
            s.flags.0,
            s.reset_count,
            s.crc_errors,
            s.sensor_errors
        );
    }
    let decoded = polled.decode(&blocks, unix_ms());
    let _ = writeln!(
        out,
        "  {} readings in {:.1} ms:",
        decoded.records.len(),
        latency.as_secs_f64() * 1000.0
    );
    let map: &RegisterMap = &device.map;
    for r in &decoded.records {
        let q = &r.reading;
        let source = map
            .channels
            .iter()
            .find(|c| c.channel == q.channel)
            .map(|c| format!("0x{:04X} {:?}", c.address, c.data_type))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "    {:<5} {:<22} {:>14} {:<8} quality {} ({})   [{source}]",
            q.channel.to_string(),
            q.quantity.key(),
            format!("{}", q.value),
            q.quantity.canonical_unit().symbol(),
            q.quality.hj212_flag(),
            q.quality,
        );
    }
    for e in &decoded.errors {
        let _ = writeln!(out, "    error: {e}");
    }
    Ok(out)
}
