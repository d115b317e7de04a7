//! A virtual node: the firmware's node core, with simulated sensor hardware underneath read
//! through the firmware's real drivers, and signal models presenting the physical world.
//!
//! Each channel has its own simulated sensor, chosen by quantity unless the scenario says
//! otherwise:
//!
//! | sensor | quantities | hardware and driver |
//! |---|---|---|
//! | `sht4x_temperature`, `sht4x_humidity` | air temperature, relative humidity | [`SimSht4x`] on I²C, the SHT4x driver |
//! | `scd4x_co2` | CO2 | [`SimScd4x`] on I²C, the SCD4x driver |
//! | `gas_bridge` | combustible gas, methane, H2S, CO, oxygen | a bridge on [`SimAdc`], the gas driver with zero/span calibration |
//! | `current_loop` | water level (0–10 m), air pressure (300–1100 hPa), flow (0–1000 m³/s) | a 4–20 mA transmitter on [`SimAdc`], the loop driver (NAMUR NE 43) |
//! | `rain_gauge` | rainfall | a tipping bucket on a simulated pulse counter, 0.2 mm per tip |
//! | `direct` | everything else | the value handed to the core as the driver would |

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use serde::Deserialize;
use tianzhong_firmware::drivers::gas_adc::{self, Calibration, GasAdc};
use tianzhong_firmware::drivers::loop_input::LoopInput;
use tianzhong_firmware::drivers::rain_gauge::{MM_PER_TIP_0_2, RainGauge};
use tianzhong_firmware::drivers::{scd4x, sht4x};
use tianzhong_firmware::hal::{AdcChannel, PulseCounter};
use tianzhong_firmware::modbus::file_record::{READ_FILE_RECORD, WRITE_FILE_RECORD};
use tianzhong_firmware::modbus::pdu::{self, Handled, Request};
use tianzhong_firmware::node::config::NodeConfig;
use tianzhong_firmware::node::storage::{ConfigSlots, ConfigStore};
use tianzhong_firmware::node::{BootInfo, NodeCore, NodeIdentity, Sample};
use tianzhong_firmware::sim::{SimAdc, SimFlash, SimI2cBus, SimScd4x, SimSht4x};
use tianzhong_firmware::update::modbus_files::{CHUNK_FILE, FINISH_FILE};
use tianzhong_protocol::convert::LoopSpan;
use tianzhong_protocol::payload::{PAYLOAD_VERSION, Telemetry, TelemetryValue};
use tianzhong_protocol::registers::profile::{self, FirmwareVersion, ResetReason};
use tianzhong_protocol::registers::widen_f32;
use tianzhong_protocol::{ChannelId, NodeId, Quantity, SiteId};

use crate::clock::SimMs;
use crate::fault::Fault;
use crate::signal::{Component, Signal, SignalError};
use crate::truth::{GroundTruth, SampleRecord};
use crate::update::NodeUpdate;
use tianzhong_protocol::update::{UpdateMessageError, UpdateReport, UpdateRequest};

/// Which simulated sensor a channel reads.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SensorKind {
    /// Temperature of a Sensirion SHT4x.
    Sht4xTemperature,
    /// Humidity of a Sensirion SHT4x.
    Sht4xHumidity,
    /// CO2 of a Sensirion SCD4x.
    Scd4xCo2,
    /// A catalytic or electrochemical cell on an ADC.
    GasBridge,
    /// A 4–20 mA transmitter.
    CurrentLoop,
    /// A tipping-bucket rain gauge.
    RainGauge,
    /// No hardware model: the value as a driver would deliver it.
    Direct,
}

impl SensorKind {
    /// The sensor a quantity is measured with unless a scenario says otherwise.
    pub fn for_quantity(q: Quantity) -> SensorKind {
        match q {
            Quantity::AirTemperature => SensorKind::Sht4xTemperature,
            Quantity::RelativeHumidity => SensorKind::Sht4xHumidity,
            Quantity::Co2 => SensorKind::Scd4xCo2,
            Quantity::CombustibleGas
            | Quantity::Methane
            | Quantity::H2s
            | Quantity::Co
            | Quantity::Oxygen => SensorKind::GasBridge,
            Quantity::WaterLevel | Quantity::AirPressure | Quantity::Flow => {
                SensorKind::CurrentLoop
            }
            Quantity::Rainfall => SensorKind::RainGauge,
            _ => SensorKind::Direct,
        }
    }
}

/// ADC counts of zero gas and of the span gas on every simulated gas bridge: the span reads
/// 1600 counts above zero, which leaves the 12-bit converter room to 2.3 × the span gas.
const GAS_ZERO_COUNTS: u32 = 400;
const GAS_SPAN_COUNTS: u32 = 2000;

/// Span gas per quantity, in its canonical unit (what a field calibration would apply).
fn span_gas(q: Quantity) -> f32 {
    match q {
        Quantity::CombustibleGas => 50.0,
        Quantity::Methane => 2.5,
        Quantity::H2s => 50.0,
        Quantity::Co => 100.0,
        Quantity::Oxygen => 20.9,
        _ => 100.0,
    }
}

/// The transmitter range of a 4–20 mA channel.
fn loop_range(q: Quantity) -> (f32, f32) {
    match q {
        Quantity::AirPressure => (300.0, 1100.0),
        Quantity::Flow => (0.0, 1000.0),
        _ => (0.0, 10.0),
    }
}

const SHUNT_OHMS: f32 = 150.0;
const ADC_MV: f32 = 3300.0;
const ADC_FULL: f32 = 4096.0;

/// An ADC input whose voltage the simulation sets while the driver owns the channel.
#[derive(Clone, Debug, Default)]
struct SharedAdc(Arc<AtomicU32>);

impl SharedAdc {
    fn set_mv(&self, mv: f32) {
        self.0.store(mv.to_bits(), Ordering::Relaxed);
    }
}

impl AdcChannel for SharedAdc {
    type Error = core::convert::Infallible;

    fn reference_mv(&self) -> u32 {
        ADC_MV as u32
    }

    fn resolution_bits(&self) -> u8 {
        12
    }

    fn read_counts(&mut self) -> Result<u32, Self::Error> {
        SimAdc::stm32(f32::from_bits(self.0.load(Ordering::Relaxed))).read_counts()
    }
}

/// A pulse counter the simulation advances while the driver owns it.
#[derive(Clone, Debug, Default)]
struct SharedCounter(Arc<AtomicU32>);

impl PulseCounter for SharedCounter {
    type Error = core::convert::Infallible;

    fn count(&mut self) -> Result<u32, Self::Error> {
        Ok(self.0.load(Ordering::Relaxed))
    }
}

/// How one channel is simulated.
#[derive(Clone, Debug)]
pub struct ChannelSpec {
    /// What it measures.
    pub quantity: Quantity,
    /// The physical signal.
    pub signal: Vec<Component>,
    /// Bounds of the physical signal.
    pub clamp: Option<(f64, f64)>,
    /// The sensor; by quantity when absent.
    pub sensor: Option<SensorKind>,
}

/// What a virtual node is.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    /// Node id.
    pub id: NodeId,
    /// Site id.
    pub site: SiteId,
    /// Name of its bus.
    pub bus: String,
    /// Modbus unit address.
    pub unit: u8,
    /// Model string in its identity block.
    pub model: String,
    /// Its channels.
    pub channels: Vec<ChannelSpec>,
}

/// The hardware under one channel.
enum Hardware {
    Sht4x(SimI2cBus, bool),
    Scd4x(SimI2cBus),
    Gas(GasAdc<SharedAdc>, SharedAdc),
    Loop(LoopInput<SharedAdc>, SharedAdc, (f32, f32)),
    /// The gauge, its counter, rain accumulated (mm) and when it was last updated.
    Rain(RainGauge<SharedCounter>, SharedCounter, f64, SimMs),
    Direct,
}

struct Channel {
    quantity: Quantity,
    signal: Signal,
    hardware: Hardware,
    last_physical: f64,
}

/// What a node did with an MQTT firmware-update message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MqttUpdate {
    /// The report to publish on the node's `fwstatus` topic; `None` when the node lost power.
    pub report: Option<UpdateReport>,
    /// Why the message was not an update request, when it was not.
    pub malformed: Option<UpdateMessageError>,
    /// The node reset (into a staged image, or after a power cut): its connection goes too.
    pub reset: bool,
}

/// A sample round: the values one sampling instant produced.
#[derive(Clone, Debug, PartialEq)]
pub struct Round {
    /// The node's sequence number for the round.
    pub seq: u32,
    /// Simulated time.
    pub time_ms: SimMs,
    /// The samples.
    pub samples: Vec<SampleRecord>,
}

/// A virtual node.
pub struct VirtualNode {
    /// Node id, as a shared string for logs.
    pub id: Arc<str>,
    /// Node id.
    pub node_id: NodeId,
    /// Site id.
    pub site: SiteId,
    /// Bus name.
    pub bus: Arc<str>,
    /// Modbus unit address.
    pub unit: u8,
    core: NodeCore,
    channels: Vec<Channel>,
    flash: Option<SimFlash<2048>>,
    identity: NodeIdentity,
    quantities: Vec<Quantity>,
    boots: u16,
    truth: Option<GroundTruth>,
    /// Update flash and receiver, made on the first file-record request.
    update: Option<Box<NodeUpdate>>,
    /// Simulated time of the last boot: when an image on trial started its time limit.
    booted_at: SimMs,
}

const CONFIG_SLOTS: ConfigSlots = ConfigSlots { a: 0, b: 1024 };

/// Why a node could not be built.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A signal is invalid.
    #[error("channel {channel}: {source}")]
    Signal {
        /// Channel index.
        channel: usize,
        /// The error.
        source: SignalError,
    },
    /// The core refused the channel set.
    #[error("a node has 1 to {max} channels, not {0}", max = tianzhong_firmware::node::MAX_CHANNELS)]
    Channels(usize),
    /// A sensor does not fit the quantity.
    #[error("channel {channel}: sensor {sensor:?} cannot measure {quantity}")]
    Sensor {
        /// Channel index.
        channel: usize,
        /// The sensor.
        sensor: SensorKind,
        /// The quantity.
        quantity: Quantity,
    },
}

fn identity_string(s: &str) -> profile::IdentityString {
    let mut out = profile::IdentityString::new();
    for c in s
        .chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(16)
    {
        let _ = out.push(c);
    }
    out
}

impl VirtualNode {
    /// Builds the node at simulated time 0; `seed` is the scenario seed, `base_dir` resolves
    /// replay files.
    pub fn new(spec: &NodeSpec, seed: u64, base_dir: &Path) -> Result<VirtualNode, NodeError> {
        let quantities: Vec<Quantity> = spec.channels.iter().map(|c| c.quantity).collect();
        let mut channels = Vec::with_capacity(spec.channels.len());
        for (n, c) in spec.channels.iter().enumerate() {
            // Each channel's random parts have their own stream, fixed by seed, node and channel.
            let stream = crate::signal::stream_seed(&[
                &seed.to_le_bytes(),
                spec.id.as_bytes(),
                &(n as u64).to_le_bytes(),
            ]);
            let signal = Signal::new(&c.signal, stream, base_dir, c.clamp)
                .map_err(|source| NodeError::Signal { channel: n, source })?;
            let sensor = c.sensor.unwrap_or(SensorKind::for_quantity(c.quantity));
            let mismatch = NodeError::Sensor {
                channel: n,
                sensor,
                quantity: c.quantity,
            };
            let hardware = match sensor {
                SensorKind::Sht4xTemperature | SensorKind::Sht4xHumidity => {
                    let temperature = sensor == SensorKind::Sht4xTemperature;
                    if c.quantity
                        != if temperature {
                            Quantity::AirTemperature
                        } else {
                            Quantity::RelativeHumidity
                        }
                    {
                        return Err(mismatch);
                    }
                    Hardware::Sht4x(
                        SimI2cBus {
                            sht4x: Some(SimSht4x::new(20.0, 50.0)),
                            scd4x: None,
                        },
                        temperature,
                    )
                }
                SensorKind::Scd4xCo2 => {
                    if c.quantity != Quantity::Co2 {
                        return Err(mismatch);
                    }
                    Hardware::Scd4x(SimI2cBus {
                        sht4x: None,
                        scd4x: Some(SimScd4x::new(420, 20.0, 50.0)),
                    })
                }
                SensorKind::GasBridge => {
                    let calibration =
                        Calibration::new(GAS_ZERO_COUNTS, GAS_SPAN_COUNTS, span_gas(c.quantity))
                            .map_err(|_| mismatch)?;
                    let adc = SharedAdc::default();
                    let gas = GasAdc::new(adc.clone(), calibration, span_gas(c.quantity) * 0.04)
                        .map_err(|_| NodeError::Sensor {
                            channel: n,
                            sensor,
                            quantity: c.quantity,
                        })?;
                    Hardware::Gas(gas, adc)
                }
                SensorKind::CurrentLoop => {
                    let (lo, hi) = loop_range(c.quantity);
                    let adc = SharedAdc::default();
                    let input =
                        LoopInput::new(adc.clone(), SHUNT_OHMS, lo, hi).map_err(|_| mismatch)?;
                    Hardware::Loop(input, adc, (lo, hi))
                }
                SensorKind::RainGauge => {
                    if c.quantity != Quantity::Rainfall {
                        return Err(mismatch);
                    }
                    let counter = SharedCounter::default();
                    let gauge =
                        RainGauge::new(counter.clone(), MM_PER_TIP_0_2).map_err(|_| mismatch)?;
                    Hardware::Rain(gauge, counter, 0.0, 0)
                }
                SensorKind::Direct => Hardware::Direct,
            };
            channels.push(Channel {
                quantity: c.quantity,
                signal,
                hardware,
                last_physical: 0.0,
            });
        }
        let identity = NodeIdentity {
            vendor: identity_string("Tianzhong Sim"),
            model: identity_string(&spec.model),
            serial: identity_string(&spec.id),
            firmware: FirmwareVersion {
                major: 1,
                minor: 0,
                patch: 0,
            },
            hardware_revision: 1,
        };
        let boot = BootInfo {
            reset_reason: ResetReason::PowerOn,
            reset_count: 0,
        };
        let mut factory = NodeConfig::factory(&quantities);
        factory.unit_address = u16::from(spec.unit);
        let core = NodeCore::new(identity.clone(), &quantities, Some(factory), boot, 0)
            .map_err(|_| NodeError::Channels(quantities.len()))?;
        Ok(VirtualNode {
            id: Arc::from(spec.id.as_str()),
            node_id: spec.id.clone(),
            site: spec.site.clone(),
            bus: Arc::from(spec.bus.as_str()),
            unit: spec.unit,
            core,
            channels,
            flash: Some(SimFlash::default()),
            identity,
            quantities,
            boots: 0,
            booted_at: 0,
            truth: None,
            update: None,
        })
    }

    /// Logs this node's samples and served reads to `truth`.
    pub fn set_truth(&mut self, truth: GroundTruth) {
        self.truth = Some(truth);
    }

    /// The node core (for inspection).
    pub fn core(&self) -> &NodeCore {
        &self.core
    }

    /// When the node next needs to run.
    pub fn next_due_ms(&self) -> SimMs {
        self.core.next_due_ms()
    }

    /// Runs the node up to simulated time `t` under a fixed set of faults (see
    /// [`VirtualNode::advance_with`]).
    pub fn advance_to(&mut self, t: SimMs, faults: &[Fault]) -> Vec<Round> {
        self.advance_with(t, |_| faults.to_vec())
    }

    /// Runs the node up to simulated time `t`, sampling at every due instant in between, and
    /// returns the rounds it sampled. `faults_at` gives the faults in force at a sampling
    /// instant: looked up per sample, so a fault that starts between two steps of the fleet
    /// applies from its start and not before, however the fleet happens to be stepped.
    pub fn advance_with(
        &mut self,
        t: SimMs,
        faults_at: impl Fn(SimMs) -> Vec<Fault>,
    ) -> Vec<Round> {
        let mut rounds = Vec::new();
        loop {
            let due_at = self.core.next_due_ms();
            if due_at > t {
                break;
            }
            let faults = faults_at(due_at);
            let faults = faults.as_slice();
            let mask = self.core.due(due_at);
            let mut samples = Vec::new();
            for ch in 0..self.channels.len() {
                if mask & (1 << ch) == 0 {
                    continue;
                }
                let sample = self.read(ch, due_at, faults);
                self.core.record(ch, due_at, sample);
                if let Some((value, quality, _)) = self.core.channel(ch) {
                    samples.push(SampleRecord {
                        node: Arc::clone(&self.id),
                        channel: ch as u16,
                        seq: self.core.seq(),
                        time_ms: due_at,
                        value,
                        quality: quality.hj212_flag(),
                    });
                }
            }
            self.tick(due_at);
            if let Some(truth) = &self.truth {
                truth.record_samples(samples.iter().cloned());
            }
            rounds.push(Round {
                seq: self.core.seq(),
                time_ms: due_at,
                samples,
            });
        }
        self.tick(t);
        rounds
    }

    fn tick(&mut self, t: SimMs) {
        let actions = self.core.tick(t);
        if actions.save_config {
            let saved = self.flash.take().map(|flash| {
                let mut store = ConfigStore::new(flash, CONFIG_SLOTS);
                let _ = store.load();
                let ok = store.save(self.core.config()).is_ok();
                (store.release(), ok)
            });
            if let Some((flash, ok)) = saved {
                self.flash = Some(flash);
                if ok {
                    self.core.config_saved();
                }
            }
        }
        if actions.reboot {
            self.reboot(t);
        }
        // An image on trial that no health poll reached within its limit resets the node.
        let booted_at = self.booted_at;
        if let Some(update) = self
            .update
            .as_mut()
            .filter(|u| u.trial_out_of_time(booted_at, t))
        {
            self.identity.firmware = update.reset().header.version;
            self.reboot(t);
        }
    }

    /// Restarts the core from its stored configuration, as a reset would.
    fn reboot(&mut self, t: SimMs) {
        let stored = self.flash.take().and_then(|flash| {
            let mut store = ConfigStore::new(flash, CONFIG_SLOTS);
            let loaded = store.load().ok().flatten().map(|l| l.config);
            self.flash = Some(store.release());
            loaded
        });
        self.boots = self.boots.saturating_add(1);
        self.booted_at = t;
        let boot = BootInfo {
            reset_reason: ResetReason::Software,
            reset_count: self.boots,
        };
        if let Ok(core) = NodeCore::new(self.identity.clone(), &self.quantities, stored, boot, t) {
            self.core = core;
        }
    }

    fn read(&mut self, ch: usize, t: SimMs, faults: &[Fault]) -> Sample {
        let channel = &mut self.channels[ch];
        let mut physical = channel.signal.sample(t);
        let mut sensor_fault = false;
        for f in faults {
            match f {
                Fault::StuckValue { channel: c } if c.is_none_or(|c| usize::from(c) == ch) => {
                    physical = channel.last_physical;
                }
                Fault::Spike { channel: c, value } if usize::from(*c) == ch => physical = *value,
                Fault::SensorFault { channel: c } if c.is_none_or(|c| usize::from(c) == ch) => {
                    sensor_fault = true
                }
                _ => {}
            }
        }
        channel.last_physical = physical;
        let q = channel.quantity;
        let v = physical as f32;
        match &mut channel.hardware {
            Hardware::Sht4x(bus, temperature) => {
                match bus.sht4x.as_mut() {
                    Some(dev) if *temperature => dev.temperature_c = v,
                    Some(dev) => dev.humidity_pct = v,
                    None => {}
                }
                let mut bus = if sensor_fault {
                    SimI2cBus::default()
                } else {
                    bus.clone()
                };
                match sht4x::Sht4x::new(&mut bus, NoDelay, sht4x::DEFAULT_ADDRESS)
                    .measure(sht4x::Precision::High)
                {
                    Ok(m) if *temperature => Sample::Value(m.temperature_c),
                    Ok(m) => Sample::Value(m.humidity_pct),
                    Err(_) => Sample::Fault,
                }
            }
            Hardware::Scd4x(bus) => {
                if let Some(dev) = bus.scd4x.as_mut() {
                    dev.co2_ppm = physical.clamp(0.0, 40_000.0) as u16;
                }
                let mut bus = if sensor_fault {
                    SimI2cBus::default()
                } else {
                    bus.clone()
                };
                let mut scd = scd4x::Scd4x::new(&mut bus, NoDelay);
                let reading = scd
                    .start_periodic_measurement()
                    .and_then(|_| scd.read_measurement());
                reading.map_or(Sample::Fault, |m| Sample::Value(m.co2_ppm))
            }
            Hardware::Gas(gas, adc) => {
                let slope = (GAS_SPAN_COUNTS - GAS_ZERO_COUNTS) as f32 / span_gas(q);
                let counts = GAS_ZERO_COUNTS as f32 + v * slope;
                // A failed cell or broken bridge drives the input to a rail.
                adc.set_mv(if sensor_fault {
                    0.0
                } else {
                    counts * ADC_MV / ADC_FULL
                });
                match gas.read() {
                    Ok(x) => Sample::Value(x),
                    Err(gas_adc::Error::BelowZero { concentration }) => {
                        Sample::OutOfRange(concentration)
                    }
                    Err(_) => Sample::Fault,
                }
            }
            Hardware::Loop(input, adc, (lo, hi)) => {
                // A broken loop carries no current: NE 43 low fault.
                let ma = if sensor_fault {
                    0.0
                } else {
                    4.0 + 16.0 * (v - *lo) / (*hi - *lo)
                };
                adc.set_mv(ma * SHUNT_OHMS);
                match input.read() {
                    Ok(r) if r.span == LoopSpan::Within => Sample::Value(r.value),
                    Ok(r) => Sample::OutOfRange(r.value),
                    Err(_) => Sample::Fault,
                }
            }
            Hardware::Rain(gauge, counter, total_mm, last_ms) => {
                // The signal is the rain intensity in mm/h; the bucket tips every 0.2 mm.
                let hours = t.saturating_sub(*last_ms) as f64 / 3_600_000.0;
                *total_mm += physical.max(0.0) * hours;
                *last_ms = t;
                counter.0.store(
                    (*total_mm / f64::from(MM_PER_TIP_0_2)) as u32,
                    Ordering::Relaxed,
                );
                if sensor_fault {
                    return Sample::Fault;
                }
                match gauge.read(t) {
                    Ok(Some(r)) => Sample::Value(r.amount_mm),
                    // The first read only sets the counter's baseline: no rain counted yet.
                    Ok(None) => Sample::Value(0.0),
                    Err(_) => Sample::Fault,
                }
            }
            Hardware::Direct => {
                if sensor_fault {
                    Sample::Fault
                } else {
                    Sample::Value(v)
                }
            }
        }
    }
}

/// The simulated sensors answer at once; the drivers' datasheet waits would only slow the
/// fleet down.
struct NoDelay;

impl embedded_hal::delay::DelayNs for NoDelay {
    fn delay_ns(&mut self, _ns: u32) {}
}

impl VirtualNode {
    /// Serves one Modbus request PDU with the firmware's own PDU handler, as the node's slave
    /// would, and logs reads of the channel block as served.
    pub fn modbus(&mut self, request: &[u8], out: &mut [u8], now: SimMs) -> Handled {
        self.modbus_faulted(request, out, now, &[])
    }

    /// As [`VirtualNode::modbus`], with the firmware-update failures among `faults`
    /// ([`Fault::UpdateDamaged`], [`Fault::UpdatePowerCut`], [`Fault::UpdateRollback`])
    /// applied to the file-record requests of an update.
    pub fn modbus_faulted(
        &mut self,
        request: &[u8],
        out: &mut [u8],
        now: SimMs,
        faults: &[Fault],
    ) -> Handled {
        if let Some(&(READ_FILE_RECORD | WRITE_FILE_RECORD)) = request.first() {
            let failure = faults.iter().find(|f| f.is_update_failure());
            return self.modbus_update(request, out, now, failure);
        }
        let handled = pdu::handle(request, &mut self.core, out);
        if let (Handled::Response(_), Some(update)) = (&handled, self.update.as_mut()) {
            // A successful read after a trial boot is the gateway's health poll.
            update.confirm_if_trial();
        }
        if let (Handled::Response(_), Ok(Request::ReadInputRegisters { address, quantity })) =
            (&handled, pdu::parse_request(request))
        {
            let end = u32::from(address) + u32::from(quantity);
            let channels_end = u32::from(profile::channel_base(self.channels.len() as u16));
            if u32::from(address) < channels_end && end > u32::from(profile::CHANNEL_BLOCK) {
                truth_served(self, now);
            }
        }
        handled
    }

    /// The node's firmware update side (its flash made on first use): for power cuts and
    /// inspection. See [`crate::update`].
    pub fn firmware_update(&mut self) -> &mut NodeUpdate {
        let model = self.identity.model.clone();
        self.update
            .get_or_insert_with(|| Box::new(NodeUpdate::new(&model)))
    }

    /// Function codes 20 and 21 on the update files. After a staged image or a power cut the
    /// node resets: it boots what the bootloader decides, reports that image's version in its
    /// identity block, and starts its core afresh. (A real node that loses power does not
    /// answer; this one answers 04, server device failure.)
    fn modbus_update(
        &mut self,
        request: &[u8],
        out: &mut [u8],
        now: SimMs,
        failure: Option<&Fault>,
    ) -> Handled {
        let core = &mut self.core;
        let model = self.identity.model.clone();
        let update = self
            .update
            .get_or_insert_with(|| Box::new(NodeUpdate::new(&model)));
        // The first sub-request of a write-file-record: byte count, reference type 6, file,
        // record (the gateway sends one sub-request per request).
        let write =
            (request.first() == Some(&WRITE_FILE_RECORD) && request.len() >= 7).then(|| {
                (
                    u16::from_be_bytes([request[3], request[4]]),
                    u16::from_be_bytes([request[5], request[6]]),
                )
            });
        match (failure, write) {
            (Some(Fault::UpdateDamaged), Some((FINISH_FILE, _))) => update.damage_received(),
            (Some(Fault::UpdatePowerCut), Some((CHUNK_FILE, record))) if record >= 8 => {
                update.cut_power_at(1)
            }
            _ => {}
        }
        let handled = pdu::handle(request, &mut update.bank(core), out);
        self.reset_after_update(failure, now);
        handled
    }

    /// A message from the node's MQTT `fwupdate` topic, with the firmware-update failures among
    /// `faults` applied as over Modbus ([`Fault::UpdatePowerCut`] from chunk 8,
    /// [`Fault::UpdateDamaged`] at the finish, [`Fault::UpdateRollback`] after the reset).
    /// After a staged image or a power cut the node resets, as over Modbus.
    pub fn mqtt_update(&mut self, payload: &[u8], now: SimMs, faults: &[Fault]) -> MqttUpdate {
        let failure = faults.iter().find(|f| f.is_update_failure());
        let model = self.identity.model.clone();
        let update = self
            .update
            .get_or_insert_with(|| Box::new(NodeUpdate::new(&model)));
        match (failure, UpdateRequest::decode(payload)) {
            (Some(Fault::UpdateDamaged), Ok(UpdateRequest::Finish)) => update.damage_received(),
            (Some(Fault::UpdatePowerCut), Ok(UpdateRequest::Chunk { index, .. })) if index >= 8 => {
                update.cut_power_at(1)
            }
            _ => {}
        }
        let handled = update.mqtt(payload);
        // A node whose power failed sends nothing.
        let powered = !update.power_failed();
        let reset = update.must_reset();
        self.reset_after_update(failure, now);
        MqttUpdate {
            report: powered.then_some(handled.report),
            malformed: handled.malformed,
            reset,
        }
    }

    /// After an update request: if an image was staged or the power failed, the node resets
    /// and boots what the bootloader decides, reports that image's version in its identity
    /// block, and starts its core afresh.
    fn reset_after_update(&mut self, failure: Option<&Fault>, now: SimMs) {
        let Some(update) = self.update.as_mut() else {
            return;
        };
        if update.must_reset() {
            update.reset();
            if failure == Some(&Fault::UpdateRollback) {
                // The new image crashes before the health check confirms it: the node resets
                // again and again until the bootloader gives up on the trial and reverts.
                for _ in 0..8 {
                    if !matches!(update.running.kind, crate::update::BootKind::Trial { .. }) {
                        break;
                    }
                    update.reset();
                    self.boots = self.boots.saturating_add(1);
                }
            }
            self.identity.firmware = update.running.header.version;
            self.reboot(now);
        }
    }

    /// The firmware version the node runs and reports in its identity block: the simulator's
    /// ground truth for update campaigns.
    pub fn running_firmware(&self) -> FirmwareVersion {
        self.identity.firmware
    }

    /// Whether the node ever received a firmware-update request (its update flash exists).
    pub fn update_touched(&self) -> bool {
        self.update.is_some()
    }

    /// The telemetry payload of the node's latest values, as a directly connected node would
    /// publish it; `unix_ms` stamps it.
    pub fn telemetry(&self, unix_ms: Option<u64>) -> Telemetry {
        let mut readings = heapless::Vec::new();
        for (ch, c) in self.channels.iter().enumerate() {
            if let Some((value, quality, _)) = self.core.channel(ch) {
                let _ = readings.push(TelemetryValue {
                    ch: ChannelId(ch as u16),
                    q: c.quantity,
                    value: widen_f32(value),
                    unit: None,
                    quality: Some(quality),
                });
            }
        }
        Telemetry {
            v: PAYLOAD_VERSION,
            seq: self.core.seq(),
            ts: unix_ms,
            readings,
        }
    }
}

fn truth_served(node: &VirtualNode, now: SimMs) {
    if let Some(truth) = &node.truth {
        truth.record_served(Arc::clone(&node.id), node.core.seq(), now);
    }
}
