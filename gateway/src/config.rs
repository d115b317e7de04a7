//! The gateway's configuration: one TOML file, checked completely before anything starts.
//!
//! A field gateway is configured once and then left alone on a mast or in a cabinet, so every
//! mistake the file can hold is reported at load time — never as a device that silently never
//! answers — and every report names the file, the line, the dotted key (as the tables nest,
//! e.g. `device.channel.address`) and the reason:
//!
//! ```text
//! /etc/tianzhong/gateway.toml: line 41, key `device.unit`: unit 3 on bus `line-1` is already taken by device `cp-gas-01` (line 33)
//! ```
//!
//! # Schema
//!
//! ```toml
//! [gateway]
//! id = "gw-plant-a"                # an id (letters, digits, '-', '_', '.'; at most 32)
//! data_dir = "/var/lib/tianzhong"  # relative paths are relative to this file's directory
//! http_listen = "127.0.0.1:9480"   # /metrics and /healthz; default 127.0.0.1:9480, "off" for none
//!
//! [pipeline]                       # the ingestion stage; every key optional
//! queue_batches = 256              # batches each stage may hold before its source waits
//! max_skew_s = 300                 # device clocks further off than this are not trusted
//! dedup_window = 256               # sequence numbers remembered per channel
//!
//! [[calibration]]                  # per-channel correction, after unit conversion:
//! node = "cp-gas-01"               #   value = value × scale + offset
//! channel = 0
//! scale = 1.0                      # default 1
//! offset = -0.4                    # default 0
//!
//! [[bus]]                          # one serial line or one TCP endpoint: one scheduler each
//! name = "line-1"
//! kind = "modbus_rtu"              # or "modbus_tcp" with `address = "host:port"`
//! device = "/dev/ttyUSB0"
//! baud = 9600                      # 1200 2400 4800 9600 19200 38400 57600 115200
//! parity = "even"                  # none | odd | even; default even (the serial-line guide's)
//! stop_bits = 1                    # 1 | 2; default 1
//! timeout_ms = 1000                # per request; default 1000
//! retries = 2                      # after the first attempt; default 2
//! max_gap = 8                      # unused registers one read may bridge; default 8
//!
//! [[device]]
//! id = "cp-gas-01"                 # the node id
//! site = "plant-a"
//! bus = "line-1"
//! unit = 1                         # 1..=247, unique on its bus
//! poll_interval_s = 5              # > 0; fractions allowed
//! profile = "tianzhong"            # a Tianzhong node: its map follows from its quantities
//! quantities = ["combustible_gas", "air_temperature"]
//! model = "TZ-GD100"               # optional: the hardware model firmware images must be for
//!
//! [[device]]                       # a third-party device: an inline register map
//! id = "met-01"
//! site = "plant-a"
//! bus = "line-1"
//! unit = 2
//! poll_interval_s = 10
//! [[device.channel]]               # the fields of the protocol crate's `ChannelMap`
//! channel = 0
//! quantity = "air_temperature"
//! unit = "degC"                    # default: the quantity's canonical unit
//! table = "input"                  # input | holding
//! address = 0
//! data_type = "i16"                # u16 | i16 | u32 | i32 | f32
//! word_order = "ABCD"              # ABCD | CDAB | BADC | DCBA; default ABCD
//! scale = 0.1                      # value = raw × scale + offset; default 1
//! offset = 0.0                     # default 0
//! # quality_address = 2            # optional HJ 212 quality-flag register
//!
//! [mqtt_source]
//! broker = "127.0.0.1:1883"
//! client_id = "gw-plant-a-source"  # default "<gateway id>-source"
//! topics = ["tianzhong/v1/+/+/telemetry"]  # default: telemetry, frame, status and alarm
//!
//! [sink.influxdb]
//! url = "http://127.0.0.1:8086"
//! org = "city"
//! bucket = "sensing"
//! token_env = "INFLUXDB_TOKEN"     # or `token = "..."`; see below
//! batch_size = 5000                # points per write; default 5000
//! flush_interval_ms = 1000         # longest a point waits; default 1000
//!
//! [sink.upstream_mqtt]
//! broker = "sensing.example.org:1883"
//! client_id = "gw-plant-a-upstream"  # default "<gateway id>-upstream"
//! topic_prefix = "city/sensing"
//! qos = 1                          # 0..=2; default 1
//!
//! [alarms]                         # alarms evaluated at the edge; on by default, with the
//! enabled = true                   #   shipped rules (GB/T 50493-2019, coal-mine rules, HJ 633)
//! [alarms.groups]                  # node groups, for rules that select by group; a node is
//! "gas-detector" = ["gas-01", "gas-02"]  # in at most one group
//!
//! [outbox]                         # durable store-and-forward between sources and sinks; on
//! enabled = true                   #   by default (see the outbox module for the policy when
//! max_mb = 1024                    #   full); its bound on disk, MiB; default 1024
//! fsync_interval_ms = 20           # longest a batch waits for its group commit; default 20
//! min_free_mb = 32                 # space kept free on its filesystem; below it the bound
//!                                  #   shrinks to what is stored; default max_mb/32, 4..64
//!
//! [firmware]                       # fleet campaigns (POST /api/campaigns); optional
//! trusted_keys = ["fw-signing.key.pub"]  # public key files (`tianzhong firmware keygen`),
//!                                  #   relative to this file; an image must verify under one
//!
//! [sink.local_store]               # readings kept under data_dir (SQLite); on by default
//! enabled = true
//! retention_hours = 48             # older readings are deleted; default 48
//! ```
//!
//! At least one source is required: a `[[bus]]` or `[mqtt_source]`. Unknown keys are refused
//! everywhere, so a misspelt optional key is an error rather than a default taken silently.
//!
//! # The InfluxDB token
//!
//! Resolved once, at load time, in this order:
//!
//! 1. [`INFLUXDB_TOKEN_OVERRIDE`] (`TIANZHONG_INFLUXDB_TOKEN`), when set and not empty, wins
//!    over whatever the file says — a container or a systemd credential can then supply the
//!    token without editing a file that names a host-specific variable. A `token_env` whose
//!    variable is missing is then not an error.
//! 2. `token_env = "NAME"`: the value of environment variable `NAME`; unset or empty is an
//!    error naming `NAME`.
//! 3. `token = "..."`: the literal (fine for a lab, not for a file under version control).
//! 4. Neither: no token is sent (VictoriaMetrics and InfluxDB with authentication disabled
//!    accept that).
//!
//! Giving both `token` and `token_env` is an error: which one was meant cannot be guessed.
//! The resolved token is a [`Secret`], which never prints.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tianzhong_protocol::reading::ChannelId;
use tianzhong_protocol::registers::{
    ChannelMap, DataType, MAX_MAP_CHANNELS, MapError, RegisterMap, RegisterTable, WordOrder,
    profile,
};
use tianzhong_protocol::topic::TopicKind;
use tianzhong_protocol::{NodeId, Quantity, SiteId, Unit};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::sources::modbus::plan::{PlanConfig, PlanError, ReadPlan};

/// Environment variable that, when set and not empty, overrides the InfluxDB token the file
/// gives (see the [module documentation](self)).
pub const INFLUXDB_TOKEN_OVERRIDE: &str = "TIANZHONG_INFLUXDB_TOKEN";

/// The baud rates a Modbus RTU bus may use: the standard serial rates devices offer.
pub const BAUD_RATES: [u32; 8] = [1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200];

/// Request timeout when a bus names none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(1000);
/// Retries after the first attempt when a bus names none.
pub const DEFAULT_RETRIES: u32 = 2;
/// Points per InfluxDB write when the sink names none.
pub const DEFAULT_BATCH_SIZE: usize = 5000;
/// Longest a point waits for its batch when the sink names none.
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_millis(1000);

/// Port of `/metrics` when `[gateway] http_listen` names none.
pub const DEFAULT_HTTP_PORT: u16 = 9480;

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read the configuration: {source}", file.display())]
    Read {
        /// The configuration file.
        file: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file is malformed or inconsistent.
    #[error("{}: line {line}, key `{key}`: {message}", file.display())]
    Invalid {
        /// The configuration file.
        file: PathBuf,
        /// 1-based line of the offending key or value.
        line: usize,
        /// The dotted key, as the tables nest in the file (e.g. `device.channel.address`).
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// A checked configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// The `[gateway]` section.
    pub gateway: Gateway,
    /// The `[[bus]]` entries, in file order.
    pub buses: Vec<Bus>,
    /// The `[[device]]` entries, in file order.
    pub devices: Vec<Device>,
    /// The `[mqtt_source]` section, if any.
    pub mqtt_source: Option<MqttSource>,
    /// The `[sink.influxdb]` section, if any.
    pub influxdb: Option<InfluxDbSink>,
    /// The `[sink.upstream_mqtt]` section, if any.
    pub upstream_mqtt: Option<UpstreamMqttSink>,
    /// The `[sink.local_store]` section; `None` when disabled.
    pub local_store: Option<LocalStoreSink>,
    /// The `[pipeline]` section.
    pub pipeline: PipelineSettings,
    /// The `[[calibration]]` entries.
    pub calibrations: Vec<Calibration>,
    /// Whether the alarm engine runs (`[alarms] enabled`, default true).
    pub alarms_enabled: bool,
    /// The durable outbox (`[outbox]`), when on.
    pub outbox: Option<OutboxSettings>,
    /// Node groups (`[alarms.groups]`): group name and its nodes, in file order. A node is in
    /// at most one group.
    pub node_groups: Vec<(String, Vec<NodeId>)>,
    /// Public keys a firmware image must verify under before a campaign sends it
    /// (`[firmware] trusted_keys`); none means no campaign can start.
    pub trusted_keys: Vec<[u8; 32]>,
}

/// The durable outbox's settings.
#[derive(Clone, Debug, PartialEq)]
pub struct OutboxSettings {
    /// Its bound on disk, bytes.
    pub max_bytes: u64,
    /// Longest a batch waits for its group commit.
    pub fsync_interval: Duration,
    /// Space kept free on the outbox's filesystem, bytes; `None` for the outbox's default.
    pub min_free_bytes: Option<u64>,
}

/// How the ingestion stage behaves.
#[derive(Clone, Debug, PartialEq)]
pub struct PipelineSettings {
    /// Batches each channel between stages holds before the stage feeding it waits.
    pub queue_batches: usize,
    /// Device timestamps further than this from the gateway's clock are replaced by the
    /// gateway's time of receipt (and counted).
    pub max_skew: Duration,
    /// Sequence numbers remembered per (node, channel) for de-duplication.
    pub dedup_window: u32,
}

impl Default for PipelineSettings {
    fn default() -> PipelineSettings {
        PipelineSettings {
            queue_batches: 256,
            max_skew: Duration::from_secs(300),
            dedup_window: 256,
        }
    }
}

/// A per-channel correction applied after unit conversion: `value × scale + offset`.
#[derive(Clone, Debug, PartialEq)]
pub struct Calibration {
    /// Node.
    pub node: NodeId,
    /// Channel.
    pub channel: ChannelId,
    /// Factor.
    pub scale: f64,
    /// Offset, in the quantity's canonical unit.
    pub offset: f64,
}

/// The local store of readings under the data directory.
#[derive(Clone, Debug, PartialEq)]
pub struct LocalStoreSink {
    /// Readings older than this are deleted.
    pub retention: Duration,
}

/// The gateway itself.
#[derive(Clone, Debug, PartialEq)]
pub struct Gateway {
    /// Its id, held to the same rules as node ids because it appears in topics and tags.
    pub id: NodeId,
    /// Where it keeps its local store; a relative path in the file is resolved against the
    /// file's directory.
    pub data_dir: PathBuf,
    /// Where `/metrics` and `/healthz` are served; `None` for nowhere.
    pub http_listen: Option<std::net::SocketAddr>,
}

/// One Modbus bus: the unit of scheduling, since requests on it are serialised.
#[derive(Clone, Debug, PartialEq)]
pub struct Bus {
    /// The name devices refer to it by.
    pub name: String,
    /// How it is reached.
    pub link: Link,
    /// Timeout of one request.
    pub timeout: Duration,
    /// Retries after the first attempt.
    pub retries: u32,
    /// Most unused registers one read may bridge (see
    /// [`PlanConfig::max_gap`](crate::sources::modbus::plan::PlanConfig::max_gap)).
    pub max_gap: u16,
}

/// How a bus is reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Link {
    /// Modbus TCP to one endpoint.
    Tcp {
        /// `host:port`.
        address: String,
    },
    /// Modbus RTU on a serial line.
    Rtu {
        /// The serial device, e.g. `/dev/ttyUSB0`.
        device: PathBuf,
        /// One of [`BAUD_RATES`].
        baud: u32,
        /// Parity.
        parity: Parity,
        /// Stop bits.
        stop_bits: StopBits,
    },
}

/// Serial parity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Parity {
    /// No parity bit.
    None,
    /// Odd parity.
    Odd,
    /// Even parity, the Modbus serial-line default.
    Even,
}

/// Serial stop bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopBits {
    /// One stop bit.
    One,
    /// Two stop bits.
    Two,
}

/// One polled device.
#[derive(Clone, Debug, PartialEq)]
pub struct Device {
    /// Its node id.
    pub id: NodeId,
    /// The site it belongs to.
    pub site: SiteId,
    /// The name of its bus, which exists in [`Config::buses`].
    pub bus: String,
    /// Its Modbus unit address, 1..=247, unique on its bus.
    pub unit: u8,
    /// How often it is polled.
    pub poll_interval: Duration,
    /// Where its register map came from.
    pub kind: DeviceKind,
    /// Its register map, checked by [`RegisterMap::validate`] and plannable on its bus.
    /// Shared: a map holds room for 64 channels (some 3 KB) and every Tianzhong node with the
    /// same quantities has the same one, so 10 000 such devices share a handful of maps.
    pub map: Arc<RegisterMap>,
    /// The hardware model firmware images for it must name (`model`), when given.
    pub model: Option<String>,
}

/// Where a device's register map came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    /// A Tianzhong node: the map is the node profile's for these quantities, in channel
    /// order.
    Tianzhong {
        /// The quantity of channel 0, 1, …
        quantities: Vec<Quantity>,
    },
    /// A third-party device with a map given inline in the file.
    Inline,
}

/// The MQTT source: device telemetry in the protocol's topic scheme.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MqttSource {
    /// `host:port`.
    pub broker: String,
    /// The client id on that broker.
    pub client_id: String,
    /// Subscription filters.
    pub topics: Vec<String>,
}

/// The InfluxDB v2 sink.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InfluxDbSink {
    /// Base URL, `http://` or `https://`.
    pub url: String,
    /// Organisation.
    pub org: String,
    /// Bucket.
    pub bucket: String,
    /// API token, resolved as the [module documentation](self) describes; `None` sends none.
    pub token: Option<Secret>,
    /// Points per write.
    pub batch_size: usize,
    /// Longest a point waits for its batch to fill.
    pub flush_interval: Duration,
}

/// The upstream MQTT sink: normalised readings to the sensing network's broker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamMqttSink {
    /// `host:port`.
    pub broker: String,
    /// The client id on that broker.
    pub client_id: String,
    /// Topic levels put before every topic published, without a trailing `/`.
    pub topic_prefix: String,
    /// MQTT QoS, 0..=2.
    pub qos: u8,
}

/// A secret string that never appears in `Debug` output, so a logged configuration does not
/// leak it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Reads and checks the configuration at `path`, resolving secrets from the process
/// environment.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        file: path.to_owned(),
        source,
    })?;
    parse(&text, path, &|name| std::env::var(name).ok())
}

/// Checks configuration `text`, read from `file` (named in errors, and the base of relative
/// paths), resolving environment variables through `env`.
pub fn parse(
    text: &str,
    file: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let newlines: Vec<usize> = text
        .bytes()
        .enumerate()
        .filter(|(_, b)| *b == b'\n')
        .map(|(i, _)| i)
        .collect();
    let ctx = Context {
        text,
        file,
        newlines: &newlines,
    };
    let doc = DeTable::parse(text).map_err(|e| ctx.syntax(&e))?;
    // The document is consumed rather than cloned: with 10 000 devices the parsed tree is
    // tens of megabytes. Only an error needs it again, to locate the key, and then it is
    // parsed anew.
    let raw =
        RawConfig::deserialize(toml::de::Deserializer::from(doc)).map_err(
            |e| match DeTable::parse(text) {
                Ok(doc) => ctx.shape(doc.get_ref(), &e),
                Err(syntax) => ctx.syntax(&syntax),
            },
        )?;
    ctx.check(raw, env)
}

// The raw structs mirror the file. Integers are read as i64 so that an out-of-range value gets
// an explanation in the gateway's terms rather than serde's "expected u8"; spans locate the
// checks made after deserializing.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    gateway: RawGateway,
    #[serde(default)]
    bus: Vec<Spanned<RawBus>>,
    #[serde(default)]
    device: Vec<Spanned<RawDevice>>,
    mqtt_source: Option<RawMqttSource>,
    #[serde(default)]
    sink: RawSinks,
    pipeline: Option<RawPipeline>,
    #[serde(default)]
    calibration: Vec<Spanned<RawCalibration>>,
    alarms: Option<RawAlarms>,
    outbox: Option<RawOutbox>,
    firmware: Option<RawFirmware>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFirmware {
    #[serde(default)]
    trusted_keys: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOutbox {
    enabled: Option<bool>,
    max_mb: Option<Spanned<f64>>,
    fsync_interval_ms: Option<Spanned<i64>>,
    min_free_mb: Option<Spanned<f64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAlarms {
    enabled: Option<bool>,
    groups: Option<Spanned<toml::Table>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPipeline {
    queue_batches: Option<Spanned<i64>>,
    max_skew_s: Option<Spanned<f64>>,
    dedup_window: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCalibration {
    node: Spanned<String>,
    channel: Spanned<i64>,
    scale: Option<Spanned<f64>>,
    offset: Option<Spanned<f64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLocalStore {
    enabled: Option<bool>,
    retention_hours: Option<Spanned<f64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGateway {
    id: Spanned<String>,
    data_dir: Spanned<String>,
    http_listen: Option<Spanned<String>>,
}

#[derive(Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum RawBusKind {
    ModbusTcp,
    ModbusRtu,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBus {
    name: Spanned<String>,
    kind: Spanned<RawBusKind>,
    address: Option<Spanned<String>>,
    device: Option<Spanned<String>>,
    baud: Option<Spanned<i64>>,
    parity: Option<Spanned<Parity>>,
    stop_bits: Option<Spanned<i64>>,
    timeout_ms: Option<Spanned<i64>>,
    retries: Option<Spanned<i64>>,
    max_gap: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDevice {
    id: Spanned<String>,
    site: Spanned<String>,
    bus: Spanned<String>,
    unit: Spanned<i64>,
    poll_interval_s: Spanned<f64>,
    profile: Option<Spanned<String>>,
    quantities: Option<Spanned<Vec<Quantity>>>,
    #[serde(default)]
    channel: Vec<Spanned<RawChannel>>,
    model: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawChannel {
    channel: Spanned<u16>,
    quantity: Quantity,
    unit: Option<Spanned<Unit>>,
    table: RegisterTable,
    address: Spanned<u16>,
    data_type: DataType,
    #[serde(default)]
    word_order: WordOrder,
    scale: Option<Spanned<f64>>,
    offset: Option<Spanned<f64>>,
    quality_address: Option<Spanned<u16>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMqttSource {
    broker: Spanned<String>,
    client_id: Option<Spanned<String>>,
    topics: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSinks {
    influxdb: Option<RawInfluxDb>,
    upstream_mqtt: Option<RawUpstreamMqtt>,
    local_store: Option<RawLocalStore>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInfluxDb {
    url: Spanned<String>,
    org: Spanned<String>,
    bucket: Spanned<String>,
    token: Option<Spanned<String>>,
    token_env: Option<Spanned<String>>,
    batch_size: Option<Spanned<i64>>,
    flush_interval_ms: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstreamMqtt {
    broker: Spanned<String>,
    client_id: Option<Spanned<String>>,
    topic_prefix: Spanned<String>,
    qos: Option<Spanned<i64>>,
}

/// The file being read, for building errors.
#[derive(Clone, Copy)]
struct Context<'a> {
    text: &'a str,
    file: &'a Path,
    /// Offsets of every `\n`, so that finding a line is a binary search: a file with 10 000
    /// devices has tens of thousands of lines and a key looked up per device.
    newlines: &'a [usize],
}

impl Context<'_> {
    /// The 1-based line of byte `offset`. An offset at the very end (an unterminated
    /// construct) belongs to the last line, not to the empty one after the final newline.
    fn line_of(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len().saturating_sub(1));
        // Newlines strictly before `end`.
        1 + self.newlines.partition_point(|&n| n < end)
    }

    fn error(&self, span: Range<usize>, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.to_owned(),
            line: self.line_of(span.start),
            key: key.to_owned(),
            message: message.into(),
        }
    }

    /// A TOML syntax error. There is no document tree to search, so the key is read off the
    /// text: the key assigned on the error's line under the nearest table header above it.
    fn syntax(&self, e: &toml::de::Error) -> ConfigError {
        let offset = e.span().map_or(0, |s| s.start).min(self.text.len());
        let line = self.line_of(offset);
        let lines: Vec<&str> = self.text.lines().collect();
        let own = lines.get(line.wrapping_sub(1)).map(|l| l.trim_start());
        let header = lines[..line.min(lines.len())]
            .iter()
            .rev()
            .map(|l| l.trim_start())
            .find(|l| l.starts_with('['))
            .map(|l| {
                l.trim_start_matches('[')
                    .split(']')
                    .next()
                    .unwrap_or("")
                    .trim()
            });
        let assigned = own
            .filter(|l| !l.starts_with(['[', '#']))
            .and_then(|l| l.split_once('='))
            .map(|(k, _)| k.trim().trim_matches(['"', '\'']))
            .filter(|k| !k.is_empty());
        let key = match (header, assigned) {
            (Some(h), Some(k)) if !h.is_empty() => format!("{h}.{k}"),
            (_, Some(k)) => k.to_owned(),
            (Some(h), None) if !h.is_empty() => h.to_owned(),
            _ => "(top level)".to_owned(),
        };
        ConfigError::Invalid {
            file: self.file.to_owned(),
            line,
            key,
            message: format!("TOML syntax: {}", e.message().trim_end()),
        }
    }

    /// A type or shape error from deserializing: the key is the path to the deepest key or
    /// value whose span holds the error, plus the field a "missing field" or "unknown field"
    /// message names.
    fn shape(&self, doc: &DeTable<'_>, e: &toml::de::Error) -> ConfigError {
        let span = e.span().unwrap_or(0..0);
        let mut path = Vec::new();
        locate_in_table(doc, span.start, &mut path);
        let message = e.message().trim_end();
        if let Some(field) = quoted_after(message, "missing field") {
            path.push(field);
        } else if let Some(field) = quoted_after(message, "unknown field") {
            // A header such as `[sinks.influxdb]` spans its subtables too, so the search may
            // have gone past the unknown key; the key reported is the unknown one.
            match path.iter().rposition(|k| *k == field) {
                Some(i) => path.truncate(i + 1),
                None => path.push(field),
            }
        }
        let key = if path.is_empty() {
            "(top level)".to_owned()
        } else {
            path.join(".")
        };
        self.error(span, &key, message)
    }

    fn check(
        &self,
        raw: RawConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let gateway = self.gateway(&raw.gateway)?;
        let buses = self.buses(&raw.bus)?;
        let devices = self.devices(&raw.device, &buses)?;
        let mqtt_source = raw
            .mqtt_source
            .as_ref()
            .map(|m| self.mqtt_source(m, &gateway.id))
            .transpose()?;
        if buses.is_empty() && mqtt_source.is_none() {
            return Err(self.error(
                raw.gateway.id.span(),
                "gateway",
                "the gateway has nothing to read: add a [[bus]] with devices or [mqtt_source]",
            ));
        }
        let influxdb = raw
            .sink
            .influxdb
            .as_ref()
            .map(|s| self.influxdb(s, env))
            .transpose()?;
        let upstream_mqtt = raw
            .sink
            .upstream_mqtt
            .as_ref()
            .map(|s| self.upstream_mqtt(s, &gateway.id))
            .transpose()?;
        let local_store = self.local_store(raw.sink.local_store.as_ref())?;
        let pipeline = self.pipeline(raw.pipeline.as_ref())?;
        let mut calibrations: Vec<Calibration> = Vec::with_capacity(raw.calibration.len());
        for c in &raw.calibration {
            let c = c.get_ref();
            let node = NodeId::new(c.node.get_ref())
                .map_err(|e| self.error(c.node.span(), "calibration.node", e.to_string()))?;
            let channel = u16::try_from(*c.channel.get_ref())
                .ok()
                .filter(|ch| *ch < MAX_MAP_CHANNELS as u16)
                .ok_or_else(|| {
                    self.error(
                        c.channel.span(),
                        "calibration.channel",
                        format!("a channel is 0 to {}", MAX_MAP_CHANNELS - 1),
                    )
                })?;
            let scale = c.scale.as_ref().map_or(1.0, |s| *s.get_ref());
            if !scale.is_finite() || scale == 0.0 {
                let span = c.scale.as_ref().map_or(c.node.span(), Spanned::span);
                return Err(self.error(span, "calibration.scale", "must be finite and not 0"));
            }
            let offset = c.offset.as_ref().map_or(0.0, |s| *s.get_ref());
            if !offset.is_finite() {
                let span = c.offset.as_ref().map_or(c.node.span(), Spanned::span);
                return Err(self.error(span, "calibration.offset", "must be finite"));
            }
            let channel = ChannelId(channel);
            if calibrations
                .iter()
                .any(|k| k.node == node && k.channel == channel)
            {
                return Err(self.error(
                    c.node.span(),
                    "calibration",
                    format!("{node} {channel} is calibrated twice"),
                ));
            }
            calibrations.push(Calibration {
                node,
                channel,
                scale,
                offset,
            });
        }
        let node_groups = self.node_groups(raw.alarms.as_ref())?;
        let outbox = self.outbox(raw.outbox.as_ref())?;
        let trusted_keys = self.trusted_keys(raw.firmware.as_ref())?;
        Ok(Config {
            gateway,
            buses: buses.into_iter().map(|b| b.bus).collect(),
            devices,
            mqtt_source,
            influxdb,
            upstream_mqtt,
            local_store,
            pipeline,
            calibrations,
            alarms_enabled: raw.alarms.as_ref().and_then(|a| a.enabled).unwrap_or(true),
            node_groups,
            outbox,
            trusted_keys,
        })
    }

    fn trusted_keys(&self, raw: Option<&RawFirmware>) -> Result<Vec<[u8; 32]>, ConfigError> {
        let mut keys = Vec::new();
        for path in raw.map(|r| r.trusted_keys.as_slice()).unwrap_or_default() {
            let given = Path::new(path.get_ref());
            let file = match self.file.parent() {
                Some(base) if given.is_relative() && !base.as_os_str().is_empty() => {
                    base.join(given)
                }
                _ => given.to_owned(),
            };
            let key = crate::firmware_cli::read_key(crate::firmware_cli::KeyKind::Public, &file)
                .map_err(|e| self.error(path.span(), "firmware.trusted_keys", e.to_string()))?;
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
        Ok(keys)
    }

    fn outbox(&self, raw: Option<&RawOutbox>) -> Result<Option<OutboxSettings>, ConfigError> {
        let mut settings = OutboxSettings {
            max_bytes: 1 << 30,
            fsync_interval: Duration::from_millis(20),
            min_free_bytes: None,
        };
        let Some(raw) = raw else {
            return Ok(Some(settings));
        };
        if raw.enabled == Some(false) {
            return Ok(None);
        }
        if let Some(mb) = &raw.max_mb {
            let v = *mb.get_ref();
            // Below 16 MiB a single group commit could not fit; above 1 TiB is a typo.
            if !(v.is_finite() && (16.0..=1_048_576.0).contains(&v)) {
                return Err(self.error(
                    mb.span(),
                    "outbox.max_mb",
                    "a size in MiB from 16 to 1048576",
                ));
            }
            settings.max_bytes = (v * 1_048_576.0) as u64;
        }
        if let Some(ms) = &raw.fsync_interval_ms {
            let v = *ms.get_ref();
            if !(0..=10_000).contains(&v) {
                return Err(self.error(
                    ms.span(),
                    "outbox.fsync_interval_ms",
                    "milliseconds from 0 to 10000",
                ));
            }
            settings.fsync_interval = Duration::from_millis(v as u64);
        }
        if let Some(mb) = &raw.min_free_mb {
            let v = *mb.get_ref();
            if !(v.is_finite() && (0.0..=1_048_576.0).contains(&v)) {
                return Err(self.error(
                    mb.span(),
                    "outbox.min_free_mb",
                    "a size in MiB from 0 to 1048576",
                ));
            }
            settings.min_free_bytes = Some((v * 1_048_576.0) as u64);
        }
        Ok(Some(settings))
    }

    fn node_groups(
        &self,
        raw: Option<&RawAlarms>,
    ) -> Result<Vec<(String, Vec<NodeId>)>, ConfigError> {
        let Some(raw) = raw.and_then(|a| a.groups.as_ref()) else {
            return Ok(Vec::new());
        };
        let span = raw.span();
        let mut groups: Vec<(String, Vec<NodeId>)> = Vec::new();
        let mut seen: HashMap<NodeId, String> = HashMap::new();
        for (name, nodes) in raw.get_ref() {
            let key = format!("alarms.groups.{name}");
            if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
                return Err(self.error(
                    span.clone(),
                    &key,
                    "a group name is 1 to 64 printable characters",
                ));
            }
            let Some(list) = nodes.as_array() else {
                return Err(self.error(span.clone(), &key, "must be a list of node ids"));
            };
            let mut members = Vec::with_capacity(list.len());
            for n in list {
                let id = n.as_str().ok_or_else(|| {
                    self.error(span.clone(), &key, "must be a list of node ids (strings)")
                })?;
                let node = NodeId::new(id)
                    .map_err(|e| self.error(span.clone(), &key, format!("`{id}`: {e}")))?;
                if let Some(other) = seen.insert(node.clone(), name.clone()) {
                    return Err(self.error(
                        span.clone(),
                        &key,
                        format!("node {node} is already in group `{other}`; a node is in at most one group"),
                    ));
                }
                members.push(node);
            }
            groups.push((name.clone(), members));
        }
        Ok(groups)
    }

    fn local_store(
        &self,
        raw: Option<&RawLocalStore>,
    ) -> Result<Option<LocalStoreSink>, ConfigError> {
        let default = LocalStoreSink {
            retention: Duration::from_secs(48 * 3600),
        };
        let Some(raw) = raw else {
            return Ok(Some(default));
        };
        if raw.enabled == Some(false) {
            return Ok(None);
        }
        let retention = match &raw.retention_hours {
            None => default.retention,
            Some(h) => {
                let v = *h.get_ref();
                if !(v.is_finite() && v > 0.0 && v <= 24.0 * 3650.0) {
                    return Err(self.error(
                        h.span(),
                        "sink.local_store.retention_hours",
                        "must be more than 0 and at most ten years",
                    ));
                }
                Duration::from_secs_f64(v * 3600.0)
            }
        };
        Ok(Some(LocalStoreSink { retention }))
    }

    fn pipeline(&self, raw: Option<&RawPipeline>) -> Result<PipelineSettings, ConfigError> {
        let mut out = PipelineSettings::default();
        let Some(raw) = raw else {
            return Ok(out);
        };
        if let Some(q) = &raw.queue_batches {
            let v = *q.get_ref();
            if !(1..=65_536).contains(&v) {
                return Err(self.error(q.span(), "pipeline.queue_batches", "must be 1 to 65536"));
            }
            out.queue_batches = v as usize;
        }
        if let Some(s) = &raw.max_skew_s {
            let v = *s.get_ref();
            if !(v.is_finite() && v > 0.0 && v <= 86_400.0 * 365.0) {
                return Err(self.error(
                    s.span(),
                    "pipeline.max_skew_s",
                    "must be more than 0 and at most a year",
                ));
            }
            out.max_skew = Duration::from_secs_f64(v);
        }
        if let Some(w) = &raw.dedup_window {
            let v = *w.get_ref();
            if !(1..=65_536).contains(&v) {
                return Err(self.error(w.span(), "pipeline.dedup_window", "must be 1 to 65536"));
            }
            out.dedup_window = v as u32;
        }
        Ok(out)
    }

    fn gateway(&self, raw: &RawGateway) -> Result<Gateway, ConfigError> {
        let id = NodeId::new(raw.id.get_ref())
            .map_err(|e| self.error(raw.id.span(), "gateway.id", e.to_string()))?;
        let dir = raw.data_dir.get_ref();
        if dir.trim().is_empty() {
            return Err(self.error(
                raw.data_dir.span(),
                "gateway.data_dir",
                "the data directory is empty",
            ));
        }
        let data_dir = match self.file.parent() {
            Some(base) if Path::new(dir).is_relative() && !base.as_os_str().is_empty() => {
                base.join(dir)
            }
            _ => PathBuf::from(dir),
        };
        let http_listen = match &raw.http_listen {
            None => Some(std::net::SocketAddr::from((
                [127, 0, 0, 1],
                DEFAULT_HTTP_PORT,
            ))),
            Some(v) if v.get_ref() == "off" => None,
            Some(v) => Some(v.get_ref().parse().map_err(|_| {
                self.error(
                    v.span(),
                    "gateway.http_listen",
                    format!(
                        "`{}` is not an address:port such as 127.0.0.1:9480 (or \"off\")",
                        v.get_ref()
                    ),
                )
            })?),
        };
        Ok(Gateway {
            id,
            data_dir,
            http_listen,
        })
    }

    fn buses(&self, raw: &[Spanned<RawBus>]) -> Result<Vec<CheckedBus>, ConfigError> {
        let mut out: Vec<CheckedBus> = Vec::with_capacity(raw.len());
        for bus in raw {
            let checked = self.bus(bus.get_ref())?;
            if let Some(first) = out.iter().find(|b| b.bus.name == checked.bus.name) {
                return Err(self.error(
                    bus.get_ref().name.span(),
                    "bus.name",
                    format!(
                        "bus `{}` is already defined on line {}",
                        checked.bus.name, first.line
                    ),
                ));
            }
            // Two schedulers on one line or endpoint would interleave their requests.
            if let Some(first) = out
                .iter()
                .find(|b| b.bus.link.endpoint() == checked.endpoint())
            {
                let (span, key) = checked.endpoint_at.clone();
                return Err(self.error(
                    span,
                    key,
                    format!(
                        "{} is already used by bus `{}` (line {})",
                        checked.endpoint(),
                        first.bus.name,
                        first.line
                    ),
                ));
            }
            out.push(checked);
        }
        Ok(out)
    }

    fn bus(&self, raw: &RawBus) -> Result<CheckedBus, ConfigError> {
        let name = raw.name.get_ref();
        NodeId::new(name).map_err(|e| {
            self.error(
                raw.name.span(),
                "bus.name",
                format!("a bus name follows the id rules: {e}"),
            )
        })?;
        let kind = *raw.kind.get_ref();
        let (own, other) = match kind {
            RawBusKind::ModbusTcp => ("modbus_tcp", "modbus_rtu"),
            RawBusKind::ModbusRtu => ("modbus_rtu", "modbus_tcp"),
        };
        let rtu_only = [
            ("device", raw.device.as_ref().map(Spanned::span)),
            ("baud", raw.baud.as_ref().map(Spanned::span)),
            ("parity", raw.parity.as_ref().map(Spanned::span)),
            ("stop_bits", raw.stop_bits.as_ref().map(Spanned::span)),
        ];
        let tcp_only = [("address", raw.address.as_ref().map(Spanned::span))];
        let foreign: &[(&str, Option<Range<usize>>)] = match kind {
            RawBusKind::ModbusTcp => &rtu_only,
            RawBusKind::ModbusRtu => &tcp_only,
        };
        if let Some((key, Some(span))) = foreign.iter().find(|(_, s)| s.is_some()) {
            return Err(self.error(
                span.clone(),
                &format!("bus.{key}"),
                format!("`{key}` applies only to {other} buses; bus `{name}` is {own}"),
            ));
        }
        let (link, endpoint_at) = match kind {
            RawBusKind::ModbusTcp => {
                let address = raw.address.as_ref().ok_or_else(|| {
                    self.error(
                        raw.kind.span(),
                        "bus.address",
                        format!("modbus_tcp bus `{name}` needs `address = \"host:port\"`"),
                    )
                })?;
                check_host_port(address.get_ref())
                    .map_err(|m| self.error(address.span(), "bus.address", m))?;
                (
                    Link::Tcp {
                        address: address.get_ref().clone(),
                    },
                    (address.span(), "bus.address"),
                )
            }
            RawBusKind::ModbusRtu => {
                let device = raw.device.as_ref().ok_or_else(|| {
                    self.error(
                        raw.kind.span(),
                        "bus.device",
                        format!("modbus_rtu bus `{name}` needs `device`, the serial device path"),
                    )
                })?;
                if device.get_ref().trim().is_empty() {
                    return Err(self.error(
                        device.span(),
                        "bus.device",
                        "the serial device path is empty",
                    ));
                }
                // No default baud: devices ship at 9600 or 19200 about equally often, and a
                // wrong guess shows up only as timeouts.
                let baud = raw.baud.as_ref().ok_or_else(|| {
                    self.error(
                        raw.kind.span(),
                        "bus.baud",
                        format!("modbus_rtu bus `{name}` needs `baud`, one of {BAUD_RATES:?}"),
                    )
                })?;
                let rate = u32::try_from(*baud.get_ref())
                    .ok()
                    .filter(|b| BAUD_RATES.contains(b))
                    .ok_or_else(|| {
                        self.error(
                            baud.span(),
                            "bus.baud",
                            format!(
                                "{} is not a standard baud rate; use one of {BAUD_RATES:?}",
                                baud.get_ref()
                            ),
                        )
                    })?;
                let stop_bits = match raw.stop_bits.as_ref().map(|s| (*s.get_ref(), s.span())) {
                    None | Some((1, _)) => StopBits::One,
                    Some((2, _)) => StopBits::Two,
                    Some((n, span)) => {
                        return Err(self.error(
                            span,
                            "bus.stop_bits",
                            format!("stop bits are 1 or 2, not {n}"),
                        ));
                    }
                };
                (
                    Link::Rtu {
                        device: PathBuf::from(device.get_ref()),
                        baud: rate,
                        parity: raw.parity.as_ref().map_or(Parity::Even, |p| *p.get_ref()),
                        stop_bits,
                    },
                    (device.span(), "bus.device"),
                )
            }
        };
        let timeout_ms = self.positive(raw.timeout_ms.as_ref(), "bus.timeout_ms")?;
        let retries = self.ranged(raw.retries.as_ref(), "bus.retries", 0, u32::MAX.into())?;
        let max_gap = self.ranged(raw.max_gap.as_ref(), "bus.max_gap", 0, u16::MAX.into())?;
        Ok(CheckedBus {
            bus: Bus {
                name: name.clone(),
                link,
                timeout: timeout_ms.map_or(DEFAULT_TIMEOUT, Duration::from_millis),
                retries: retries.map_or(DEFAULT_RETRIES, |r| r as u32),
                max_gap: max_gap.map_or(PlanConfig::default().max_gap, |g| g as u16),
            },
            line: self.line_of(raw.name.span().start),
            endpoint_at,
        })
    }

    /// An optional integer that must be at least 1.
    fn positive(
        &self,
        value: Option<&Spanned<i64>>,
        key: &str,
    ) -> Result<Option<u64>, ConfigError> {
        Ok(self
            .ranged(value, key, 1, i64::MAX)?
            .map(|v| v.unsigned_abs()))
    }

    /// An optional integer within `lo..=hi`.
    fn ranged(
        &self,
        value: Option<&Spanned<i64>>,
        key: &str,
        lo: i64,
        hi: i64,
    ) -> Result<Option<i64>, ConfigError> {
        match value {
            None => Ok(None),
            Some(v) if (lo..=hi).contains(v.get_ref()) => Ok(Some(*v.get_ref())),
            Some(v) => {
                let bounds = if hi == i64::MAX {
                    format!("at least {lo}")
                } else {
                    format!("{lo} to {hi}")
                };
                Err(self.error(
                    v.span(),
                    key,
                    format!("{} is out of range: must be {bounds}", v.get_ref()),
                ))
            }
        }
    }

    fn devices(
        &self,
        raw: &[Spanned<RawDevice>],
        buses: &[CheckedBus],
    ) -> Result<Vec<Device>, ConfigError> {
        let mut ids: HashMap<NodeId, usize> = HashMap::new();
        let mut units: HashMap<(String, u8), (NodeId, usize)> = HashMap::new();
        let mut profile_maps: HashMap<Vec<Quantity>, Arc<RegisterMap>> = HashMap::new();
        let mut out = Vec::with_capacity(raw.len());
        for spanned in raw {
            let d = spanned.get_ref();
            let id = NodeId::new(d.id.get_ref())
                .map_err(|e| self.error(d.id.span(), "device.id", e.to_string()))?;
            let line = self.line_of(d.id.span().start);
            if let Some(first) = ids.insert(id.clone(), line) {
                return Err(self.error(
                    d.id.span(),
                    "device.id",
                    format!("device `{id}` is already defined on line {first}"),
                ));
            }
            let site = SiteId::new(d.site.get_ref())
                .map_err(|e| self.error(d.site.span(), "device.site", e.to_string()))?;
            let bus = buses
                .iter()
                .find(|b| b.bus.name == *d.bus.get_ref())
                .ok_or_else(|| {
                    let known: Vec<&str> = buses.iter().map(|b| b.bus.name.as_str()).collect();
                    self.error(
                        d.bus.span(),
                        "device.bus",
                        format!(
                            "device `{id}` names bus `{}`, which is not defined; buses: {}",
                            d.bus.get_ref(),
                            if known.is_empty() {
                                "none".to_owned()
                            } else {
                                known.join(", ")
                            }
                        ),
                    )
                })?;
            let unit = u8::try_from(*d.unit.get_ref())
                .ok()
                .filter(|u| (1..=247).contains(u))
                .ok_or_else(|| {
                    self.error(
                        d.unit.span(),
                        "device.unit",
                        format!(
                            "unit {} is not a Modbus unit address: use 1 to 247 (0 is \
                             broadcast, 248 to 255 are reserved)",
                            d.unit.get_ref()
                        ),
                    )
                })?;
            let taken = units.insert(
                (bus.bus.name.clone(), unit),
                (id.clone(), self.line_of(d.unit.span().start)),
            );
            if let Some((other, first)) = taken {
                return Err(self.error(
                    d.unit.span(),
                    "device.unit",
                    format!(
                        "unit {unit} on bus `{}` is already taken by device `{other}` (line {first})",
                        bus.bus.name
                    ),
                ));
            }
            let poll_s = *d.poll_interval_s.get_ref();
            let poll_interval = Duration::try_from_secs_f64(poll_s)
                .ok()
                .filter(|p| !p.is_zero())
                .ok_or_else(|| {
                    self.error(
                        d.poll_interval_s.span(),
                        "device.poll_interval_s",
                        format!("poll interval {poll_s} s must be a finite number above 0"),
                    )
                })?;
            let model = match &d.model {
                None => None,
                Some(m) => {
                    tianzhong_protocol::image::HardwareId::new(m.get_ref(), 1).map_err(|e| {
                        self.error(
                            m.span(),
                            "device.model",
                            format!("not a hardware model: {e}"),
                        )
                    })?;
                    Some(m.get_ref().clone())
                }
            };
            let (kind, map) = self.register_map(spanned, &id, bus)?;
            let map = match &kind {
                DeviceKind::Tianzhong { quantities } => Arc::clone(
                    profile_maps
                        .entry(quantities.clone())
                        .or_insert_with(|| Arc::new(map)),
                ),
                DeviceKind::Inline => Arc::new(map),
            };
            out.push(Device {
                id,
                site,
                bus: bus.bus.name.clone(),
                unit,
                poll_interval,
                kind,
                map,
                model,
            });
        }
        Ok(out)
    }

    fn register_map(
        &self,
        spanned: &Spanned<RawDevice>,
        id: &NodeId,
        bus: &CheckedBus,
    ) -> Result<(DeviceKind, RegisterMap), ConfigError> {
        let d = spanned.get_ref();
        let (kind, map) = match (&d.profile, d.channel.is_empty()) {
            (Some(profile), true) => {
                if profile.get_ref() != "tianzhong" {
                    return Err(self.error(
                        profile.span(),
                        "device.profile",
                        format!(
                            "unknown profile `{}`; the one profile is \"tianzhong\" (or give \
                             [[device.channel]] entries instead)",
                            profile.get_ref()
                        ),
                    ));
                }
                let quantities = d.quantities.as_ref().ok_or_else(|| {
                    self.error(
                        profile.span(),
                        "device.quantities",
                        format!(
                            "device `{id}` uses the tianzhong profile and needs `quantities`, \
                             its channels' quantities in order"
                        ),
                    )
                })?;
                if quantities.get_ref().is_empty() {
                    return Err(self.error(
                        quantities.span(),
                        "device.quantities",
                        format!("device `{id}` lists no quantities"),
                    ));
                }
                let map = profile::register_map(quantities.get_ref()).map_err(|e| {
                    self.error(
                        quantities.span(),
                        "device.quantities",
                        format!("device `{id}`: {e}"),
                    )
                })?;
                let kind = DeviceKind::Tianzhong {
                    quantities: quantities.get_ref().clone(),
                };
                (kind, map)
            }
            (Some(profile), false) => {
                return Err(self.error(
                    profile.span(),
                    "device.profile",
                    format!(
                        "device `{id}` gives both `profile` and [[device.channel]] entries; a \
                         profile device's map follows from its quantities"
                    ),
                ));
            }
            (None, false) => {
                if let Some(q) = &d.quantities {
                    return Err(self.error(
                        q.span(),
                        "device.quantities",
                        format!(
                            "`quantities` applies only with `profile = \"tianzhong\"`; device \
                             `{id}` has an inline register map"
                        ),
                    ));
                }
                (DeviceKind::Inline, self.inline_map(&d.channel, id)?)
            }
            (None, true) => {
                return Err(self.error(
                    spanned.span(),
                    "device",
                    format!(
                        "device `{id}` has no register map: give `profile = \"tianzhong\"` with \
                         `quantities`, or [[device.channel]] entries"
                    ),
                ));
            }
        };
        // Planning can still fail on a valid map (a value and its quality register too far
        // apart for one read), and that would otherwise surface only once polling starts.
        let plan = PlanConfig {
            max_gap: bus.bus.max_gap,
            ..PlanConfig::default()
        };
        if let Err(e) = ReadPlan::new(&map, plan) {
            // Only a channel's value and quality registers can be too far apart, so the
            // quality address is the key at fault when there is one.
            let at = match e {
                PlanError::SpanTooLong { channel, .. } => d
                    .channel
                    .iter()
                    .map(Spanned::get_ref)
                    .find(|c| *c.channel.get_ref() == channel.0)
                    .map(|c| match &c.quality_address {
                        Some(q) => (q.span(), "device.channel.quality_address"),
                        None => (c.address.span(), "device.channel.address"),
                    }),
                PlanError::MaxRegisters(_) => None,
            };
            let (span, key) = at.unwrap_or((spanned.span(), "device.channel"));
            return Err(self.error(span, key, format!("device `{id}`: {e}")));
        }
        Ok((kind, map))
    }

    fn inline_map(
        &self,
        raw: &[Spanned<RawChannel>],
        id: &NodeId,
    ) -> Result<RegisterMap, ConfigError> {
        let mut map = RegisterMap::default();
        for c in raw {
            let c = c.get_ref();
            let entry = ChannelMap {
                channel: ChannelId(*c.channel.get_ref()),
                quantity: c.quantity,
                unit: c.unit.as_ref().map(|u| *u.get_ref()),
                table: c.table,
                address: *c.address.get_ref(),
                data_type: c.data_type,
                word_order: c.word_order,
                scale: c.scale.as_ref().map_or(1.0, |s| *s.get_ref()),
                offset: c.offset.as_ref().map_or(0.0, |o| *o.get_ref()),
                quality_address: c.quality_address.as_ref().map(|q| *q.get_ref()),
            };
            if map.channels.push(entry).is_err() {
                return Err(self.error(
                    c.channel.span(),
                    "device.channel",
                    format!("device `{id}`: more than {MAX_MAP_CHANNELS} channels"),
                ));
            }
        }
        map.validate()
            .map_err(|e| self.map_error(raw, id, e))
            .map(|()| map)
    }

    /// Reports a map error at the entry, and the key of that entry, that it concerns. Where
    /// two entries are involved it is the later one, and the message names the earlier one's
    /// line.
    fn map_error(&self, raw: &[Spanned<RawChannel>], id: &NodeId, e: MapError) -> ConfigError {
        let find = |channel: ChannelId, from: usize| {
            raw.iter()
                .enumerate()
                .skip(from)
                .find(|(_, c)| *c.get_ref().channel.get_ref() == channel.0)
        };
        let located = match e {
            MapError::DuplicateChannel(c) => find(c, 0).and_then(|(i, first)| {
                let (_, second) = find(c, i + 1)?;
                Some((
                    second.get_ref().channel.span(),
                    "channel",
                    format!(
                        "{e} (first on line {})",
                        self.line_of(first.get_ref().channel.span().start)
                    ),
                ))
            }),
            MapError::Overlap(a, b) => find(a, 0).and_then(|(i, first)| {
                let (_, second) = find(b, i + 1)?;
                Some((
                    second.get_ref().address.span(),
                    "address",
                    format!(
                        "{e} ({a} is on line {})",
                        self.line_of(first.get_ref().address.span().start)
                    ),
                ))
            }),
            MapError::PastEnd(c) => {
                find(c, 0).map(|(_, x)| (x.get_ref().address.span(), "address", e.to_string()))
            }
            MapError::BadScale(c) => find(c, 0).map(|(_, x)| {
                let x = x.get_ref();
                let span = match (&x.scale, &x.offset) {
                    (Some(s), _) if *s.get_ref() == 0.0 || !s.get_ref().is_finite() => s.span(),
                    (_, Some(o)) => o.span(),
                    _ => x.channel.span(),
                };
                let key = if x.scale.as_ref().is_some_and(|s| s.span() == span) {
                    "scale"
                } else {
                    "offset"
                };
                (span, key, e.to_string())
            }),
            MapError::IncompatibleUnit(c) => find(c, 0).map(|(_, x)| {
                let x = x.get_ref();
                let span = x.unit.as_ref().map_or(x.channel.span(), Spanned::span);
                (span, "unit", e.to_string())
            }),
            MapError::TooManyChannels => None,
        };
        match located {
            Some((span, key, message)) => self.error(
                span,
                &format!("device.channel.{key}"),
                format!("device `{id}`: {message}"),
            ),
            // Not reachable from a map built above, which stops at the capacity first; kept
            // so that a new kind of map error still names the device.
            None => self.error(
                raw.first().map_or(0..0, Spanned::span),
                "device.channel",
                format!("device `{id}`: {e}"),
            ),
        }
    }

    fn mqtt_source(
        &self,
        raw: &RawMqttSource,
        gateway: &NodeId,
    ) -> Result<MqttSource, ConfigError> {
        check_host_port(raw.broker.get_ref())
            .map_err(|m| self.error(raw.broker.span(), "mqtt_source.broker", m))?;
        let client_id = self.client_id(raw.client_id.as_ref(), "mqtt_source", gateway, "source")?;
        let topics = match &raw.topics {
            None => [
                TopicKind::Telemetry,
                TopicKind::Frame,
                TopicKind::Status,
                TopicKind::Alarm,
            ]
            .iter()
            .map(|k| k.filter().to_owned())
            .collect(),
            Some(list) => {
                if list.get_ref().is_empty() {
                    return Err(self.error(
                        list.span(),
                        "mqtt_source.topics",
                        "the list is empty, so the source would subscribe to nothing; leave \
                         `topics` out for the protocol's default filters",
                    ));
                }
                let mut topics = Vec::with_capacity(list.get_ref().len());
                for t in list.get_ref() {
                    check_filter(t.get_ref()).map_err(|m| {
                        self.error(
                            t.span(),
                            "mqtt_source.topics",
                            format!("`{}`: {m}", t.get_ref()),
                        )
                    })?;
                    topics.push(t.get_ref().clone());
                }
                topics
            }
        };
        Ok(MqttSource {
            broker: raw.broker.get_ref().clone(),
            client_id,
            topics,
        })
    }

    fn client_id(
        &self,
        raw: Option<&Spanned<String>>,
        section: &str,
        gateway: &NodeId,
        suffix: &str,
    ) -> Result<String, ConfigError> {
        match raw {
            None => Ok(format!("{gateway}-{suffix}")),
            Some(c) if c.get_ref().trim().is_empty() => Err(self.error(
                c.span(),
                &format!("{section}.client_id"),
                "the client id is empty; leave it out for the default",
            )),
            Some(c) => Ok(c.get_ref().clone()),
        }
    }

    fn influxdb(
        &self,
        raw: &RawInfluxDb,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<InfluxDbSink, ConfigError> {
        check_url(raw.url.get_ref())
            .map_err(|m| self.error(raw.url.span(), "sink.influxdb.url", m))?;
        for (value, key) in [(&raw.org, "org"), (&raw.bucket, "bucket")] {
            if value.get_ref().trim().is_empty() {
                return Err(self.error(
                    value.span(),
                    &format!("sink.influxdb.{key}"),
                    format!("the {key} is empty"),
                ));
            }
        }
        let token = self.token(raw, env)?;
        let batch_size = self.positive(raw.batch_size.as_ref(), "sink.influxdb.batch_size")?;
        let flush_ms = self.positive(
            raw.flush_interval_ms.as_ref(),
            "sink.influxdb.flush_interval_ms",
        )?;
        Ok(InfluxDbSink {
            url: raw.url.get_ref().clone(),
            org: raw.org.get_ref().clone(),
            bucket: raw.bucket.get_ref().clone(),
            token,
            batch_size: batch_size.map_or(DEFAULT_BATCH_SIZE, |b| {
                usize::try_from(b).unwrap_or(usize::MAX)
            }),
            flush_interval: flush_ms.map_or(DEFAULT_FLUSH_INTERVAL, Duration::from_millis),
        })
    }

    fn token(
        &self,
        raw: &RawInfluxDb,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<Secret>, ConfigError> {
        if let (Some(_), Some(named)) = (&raw.token, &raw.token_env) {
            return Err(self.error(
                named.span(),
                "sink.influxdb.token_env",
                "give either `token` or `token_env`, not both",
            ));
        }
        if let Some(value) = env(INFLUXDB_TOKEN_OVERRIDE).filter(|v| !v.is_empty()) {
            return Ok(Some(Secret(value)));
        }
        if let Some(named) = &raw.token_env {
            let name = named.get_ref();
            if name.is_empty() {
                return Err(self.error(
                    named.span(),
                    "sink.influxdb.token_env",
                    "the variable name is empty",
                ));
            }
            return match env(name).filter(|v| !v.is_empty()) {
                Some(value) => Ok(Some(Secret(value))),
                None => Err(self.error(
                    named.span(),
                    "sink.influxdb.token_env",
                    format!(
                        "environment variable `{name}` is not set or is empty (set it, or set \
                         {INFLUXDB_TOKEN_OVERRIDE})"
                    ),
                )),
            };
        }
        match &raw.token {
            Some(t) if t.get_ref().is_empty() => Err(self.error(
                t.span(),
                "sink.influxdb.token",
                "the token is empty; leave it out to send none",
            )),
            Some(t) => Ok(Some(Secret(t.get_ref().clone()))),
            None => Ok(None),
        }
    }

    fn upstream_mqtt(
        &self,
        raw: &RawUpstreamMqtt,
        gateway: &NodeId,
    ) -> Result<UpstreamMqttSink, ConfigError> {
        check_host_port(raw.broker.get_ref())
            .map_err(|m| self.error(raw.broker.span(), "sink.upstream_mqtt.broker", m))?;
        let client_id = self.client_id(
            raw.client_id.as_ref(),
            "sink.upstream_mqtt",
            gateway,
            "upstream",
        )?;
        let prefix = raw.topic_prefix.get_ref();
        let bad_prefix = if prefix.is_empty() {
            Some("the topic prefix is empty")
        } else if prefix.contains(['+', '#']) {
            Some("a topic prefix cannot hold the wildcards `+` or `#`")
        } else if prefix.split('/').any(str::is_empty) {
            Some("a topic prefix has no empty levels: no leading, trailing or doubled `/`")
        } else {
            None
        };
        if let Some(m) = bad_prefix {
            return Err(self.error(
                raw.topic_prefix.span(),
                "sink.upstream_mqtt.topic_prefix",
                m,
            ));
        }
        let qos = self.ranged(raw.qos.as_ref(), "sink.upstream_mqtt.qos", 0, 2)?;
        Ok(UpstreamMqttSink {
            broker: raw.broker.get_ref().clone(),
            client_id,
            topic_prefix: prefix.clone(),
            qos: qos.map_or(1, |q| q as u8),
        })
    }
}

/// A bus as checked, with what the later checks and messages need.
struct CheckedBus {
    bus: Bus,
    line: usize,
    /// Where its address or device path is given, for a duplicate-endpoint error.
    endpoint_at: (Range<usize>, &'static str),
}

impl CheckedBus {
    fn endpoint(&self) -> String {
        self.bus.link.endpoint()
    }
}

impl Link {
    /// What a bus is bound to, for telling whether two buses share it.
    fn endpoint(&self) -> String {
        match self {
            Link::Tcp { address } => format!("address `{address}`"),
            Link::Rtu { device, .. } => format!("serial device `{}`", device.display()),
        }
    }
}

/// The name in a serde message such as "missing field `unit`".
fn quoted_after(message: &str, prefix: &str) -> Option<String> {
    let rest = message.strip_prefix(prefix)?.strip_prefix(" `")?;
    rest.split('`').next().map(str::to_owned)
}

/// Pushes onto `path` the keys leading to the deepest key or value whose span holds `at`.
fn locate_in_table(table: &DeTable<'_>, at: usize, path: &mut Vec<String>) -> bool {
    for (k, v) in table.iter() {
        path.push(k.get_ref().to_string());
        if locate(v, at, path) || k.span().contains(&at) || v.span().contains(&at) {
            return true;
        }
        path.pop();
    }
    false
}

fn locate(value: &Spanned<DeValue<'_>>, at: usize, path: &mut Vec<String>) -> bool {
    match value.get_ref() {
        DeValue::Table(t) => locate_in_table(t, at, path),
        // An element of an array of tables spans only its header, so its keys are searched
        // before its own span is tried.
        DeValue::Array(items) => items
            .iter()
            .any(|item| locate(item, at, path) || item.span().contains(&at)),
        _ => false,
    }
}

/// Checks `host:port` (an IPv6 host in brackets).
fn check_host_port(s: &str) -> Result<(), String> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("`{s}` is not host:port"))?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '/') {
        return Err(format!("`{s}` has no usable host; expected host:port"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!("`{s}`: `{port}` is not a port (1 to 65535)")),
    }
}

/// Checks an HTTP(S) base URL: the scheme, a host, and a numeric port if one is given. Enough
/// to catch the usual slips (no scheme, `htp://`, a stray space) without a URL parser.
fn check_url(s: &str) -> Result<(), String> {
    let rest = s
        .strip_prefix("http://")
        .or_else(|| s.strip_prefix("https://"))
        .ok_or_else(|| format!("`{s}` is not an http:// or https:// URL"))?;
    if s.contains(char::is_whitespace) {
        return Err(format!("`{s}` contains white space"));
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.contains('@') {
        return Err(format!(
            "`{s}` carries credentials; give the token as `token` or `token_env` instead"
        ));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("`{s}` has an unclosed `[` in its host"))?;
        (host, after.strip_prefix(':'))
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(format!("`{s}` has no host"));
    }
    match port.map(str::parse::<u16>) {
        None | Some(Ok(1..)) => Ok(()),
        Some(_) => Err(format!("`{s}` has a port that is not 1 to 65535")),
    }
}

/// Checks an MQTT subscription filter: wildcards only as whole levels, `#` only last.
fn check_filter(f: &str) -> Result<(), &'static str> {
    if f.is_empty() {
        return Err("a topic filter cannot be empty");
    }
    let levels: Vec<&str> = f.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i + 1 != levels.len()) {
            return Err("`#` must be a whole level and the last one");
        }
        if level.contains('+') && *level != "+" {
            return Err("`+` must be a whole level");
        }
    }
    Ok(())
}
