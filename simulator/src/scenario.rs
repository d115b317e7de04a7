//! Scenario files: TOML in, a checked [`FleetSpec`] out.
//!
//! A scenario describes a fleet and the story it lives through: the sites, the buses the nodes
//! are reached on, the nodes with their channels and the physical signals those channels see,
//! and faults scheduled in simulated time. Every mistake is reported with the file, the line and
//! the key, because the people who write scenarios are field engineers editing by hand.
//!
//! # Schema
//!
//! ```toml
//! [scenario]
//! name = "chemical-plant"          # required
//! seed = 20250611                  # optional, 0 by default; `--seed` overrides it
//! description = "a leak at tank farm B spreads to its neighbours"
//!
//! [[site]]
//! id = "plant-b"                   # 1 to 32 of ASCII letters, digits, '-', '_', '.'
//! name = "Tank farm B"             # optional, for people
//!
//! [[bus]]
//! name = "farm-b-tcp"              # unique; follows the id rules
//! kind = "modbus_tcp"              # modbus_tcp | modbus_rtu | mqtt
//! listen = "127.0.0.1:15020"       # modbus_tcp: loopback only
//! per_node = false                 # modbus_tcp: one listener per node, ports counting up
//!
//! [[bus]]
//! name = "farm-b-rtu"
//! kind = "modbus_rtu"
//! link = "/tmp/tianzhong-sim/farm-b-rtu"  # where the master's end of the line appears
//! baud = 9600                      # 2400, 4800, 9600, 19200, 38400 or 115200
//! pace = false                     # reply at the byte rate of `baud`
//!
//! [[bus]]
//! name = "farm-b-mqtt"
//! kind = "mqtt"
//! broker = "127.0.0.1:11883"       # loopback only
//! publish_every_s = 5
//!
//! [[node]]
//! id = "gas-{n}"                   # with `count`, `{n}` becomes 1..=count (zero-padded)
//! count = 4                        # optional: four nodes gas-1..gas-4
//! site = "plant-b"
//! bus = "farm-b-tcp"
//! unit = 1                         # Modbus unit 1..=247; copies take consecutive units
//! model = "TZ-GD100"               # optional
//!
//! [[node.channel]]                 # 1 to 8 per node
//! quantity = "combustible_gas"     # a protocol quantity key
//! sensor = "gas_bridge"            # optional: chosen by quantity when absent
//! clamp = [0.0, 100.0]             # optional bounds of the physical signal
//! signal = [                       # summed; see `signal` for every kind
//!   { kind = "constant", value = 0.5 },
//!   { kind = "noise", sigma = 0.3 },
//!   { kind = "ramp", from_s = 600, to_s = 900, delta = 60.0 },
//! ]
//!
//! [[fault]]
//! node = "gas-2"                   # or bus = "farm-b-tcp"
//! kind = "sensor_fault"            # any `fault::Fault` kind, its parameters beside it
//! channel = 0
//! from_s = 1200                    # optional, 0 by default
//! until_s = 1500                   # optional, for ever by default
//! ```
//!
//! On a Modbus RTU bus, and on a Modbus TCP bus whose nodes share one listener, the unit is the
//! node's address: it is required and unique on the bus, and the copies of a `count` node take
//! consecutive units. On a `per_node` TCP bus and on MQTT every node is reached on its own, so
//! the unit is optional (1 by default) and copies keep the same one.
//!
//! Replay files named by signals are relative to the scenario file, and are read while checking
//! so that a missing or malformed file is reported against the line that names it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::{DeserializeOwned, IgnoredAny};
use tianzhong_firmware::node::MAX_CHANNELS;
use tianzhong_firmware::node::config::BAUD_RATES_DIV100;
use tianzhong_protocol::{NodeId, Quantity, SiteId};
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use crate::fault::{Fault, ScheduledFault, Target};
use crate::node::{ChannelSpec, NodeError, NodeSpec, SensorKind, VirtualNode};
use crate::signal::Component;
use crate::spec::{BusKind, BusSpec, FleetSpec};

/// Why a scenario could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("{}: cannot read the scenario: {source}", file.display())]
    Read {
        /// The scenario file.
        file: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The scenario is malformed or inconsistent.
    #[error("{}: line {line}, key `{key}`: {message}", file.display())]
    Invalid {
        /// The scenario file.
        file: PathBuf,
        /// 1-based line of the offending key or value.
        line: usize,
        /// The dotted key, as the tables nest in the file (e.g. `node.channel.quantity`).
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// Reads and checks the scenario at `path`.
pub fn load(path: &Path) -> Result<FleetSpec, ScenarioError> {
    let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
        file: path.to_owned(),
        source,
    })?;
    parse(&text, path)
}

/// Checks scenario `text`, read from `file` (named in errors; replay files are relative to its
/// directory).
pub fn parse(text: &str, file: &Path) -> Result<FleetSpec, ScenarioError> {
    let ctx = Context { text, file };
    let doc = DeTable::parse(text).map_err(|e| ctx.syntax(&e))?;
    let raw = RawFile::deserialize(toml::de::Deserializer::from(doc.clone()))
        .map_err(|e| ctx.serde(&doc, &e))?;
    let base_dir = match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    };
    Checker {
        ctx,
        doc: &doc,
        base_dir,
    }
    .check(raw)
}

/// Most copies one `[[node]]` with `count` may expand to.
const MAX_COUNT: i64 = 100_000;

/// What a scenario file holds before it is checked. Spans locate semantic errors; the signal
/// and fault tables are read from the document tree itself (see [`Checker::tagged`]), so
/// here they are only required to be present.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    scenario: RawScenario,
    #[serde(default)]
    site: Vec<Spanned<RawSite>>,
    #[serde(default)]
    bus: Vec<Spanned<RawBus>>,
    #[serde(default)]
    node: Vec<Spanned<RawNode>>,
    #[serde(default, rename = "fault")]
    _fault: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    name: Spanned<String>,
    #[serde(default)]
    seed: u64,
    #[serde(default, rename = "description")]
    _description: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSite {
    id: Spanned<String>,
    #[serde(default, rename = "name")]
    _name: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum RawBusKind {
    ModbusTcp,
    ModbusRtu,
    Mqtt,
}

impl RawBusKind {
    fn key(self) -> &'static str {
        match self {
            RawBusKind::ModbusTcp => "modbus_tcp",
            RawBusKind::ModbusRtu => "modbus_rtu",
            RawBusKind::Mqtt => "mqtt",
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBus {
    name: Spanned<String>,
    kind: Spanned<RawBusKind>,
    listen: Option<Spanned<String>>,
    per_node: Option<Spanned<bool>>,
    link: Option<Spanned<String>>,
    baud: Option<Spanned<u32>>,
    pace: Option<Spanned<bool>>,
    broker: Option<Spanned<String>>,
    publish_every_s: Option<Spanned<u32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    id: Spanned<String>,
    site: Spanned<String>,
    bus: Spanned<String>,
    // Read wide so that an out-of-range unit gets a Modbus explanation, not "expected u8".
    unit: Option<Spanned<i64>>,
    model: Option<String>,
    count: Option<Spanned<i64>>,
    #[serde(default)]
    channel: Vec<Spanned<RawChannel>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawChannel {
    quantity: Spanned<String>,
    #[serde(rename = "signal")]
    _signal: IgnoredAny,
    clamp: Option<Spanned<(f64, f64)>>,
    sensor: Option<Spanned<SensorKind>>,
}

/// The fault keys that are not the fault's own parameters.
#[derive(Deserialize)]
struct RawFaultWhen {
    node: Option<Spanned<String>>,
    bus: Option<Spanned<String>>,
    from_s: Option<Spanned<f64>>,
    until_s: Option<Spanned<f64>>,
}

const FAULT_WHEN_KEYS: [&str; 4] = ["node", "bus", "from_s", "until_s"];

/// The file being read, for building errors.
#[derive(Clone, Copy)]
struct Context<'a> {
    text: &'a str,
    file: &'a Path,
}

impl Context<'_> {
    /// The 1-based line of byte `offset`. An offset at the very end (an unterminated construct)
    /// counts as the last line rather than the empty one after the final newline.
    fn line_of(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len().saturating_sub(1));
        1 + self.text.as_bytes()[..end]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
    }

    fn error(&self, span: Range<usize>, key: &str, message: impl Into<String>) -> ScenarioError {
        ScenarioError::Invalid {
            file: self.file.to_owned(),
            line: self.line_of(span.start),
            key: key.to_owned(),
            message: message.into(),
        }
    }

    /// A TOML syntax error. The document tree does not exist yet, so the key is read off the
    /// text: the last `key =` before the error on its line (inline tables hold several), under
    /// the table header above it.
    fn syntax(&self, e: &toml::de::Error) -> ScenarioError {
        let offset = e.span().map_or(0, |s| s.start).min(self.text.len());
        let line = self.line_of(offset);
        let lines: Vec<&str> = self.text.lines().collect();
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
        let line_start = match line {
            1 => 0,
            n => self
                .text
                .match_indices('\n')
                .nth(n - 2)
                .map_or(0, |(i, _)| i + 1),
        };
        let own = lines
            .get(line - 1)
            .filter(|l| !l.trim_start().starts_with(['[', '#']))
            .and_then(|l| {
                // An unclosed array or table is reported at the end of the input; the key is
                // the one that opened it, the line's first.
                let before = l
                    .get(..offset.saturating_sub(line_start))
                    .filter(|p| p.contains('=') && !e.message().starts_with("unclosed"));
                let eq = match before {
                    Some(p) => p.rfind('='),
                    None => l.find('='),
                }?;
                let key = l[..eq].rsplit(['{', ',']).next()?.trim().trim_matches('"');
                (!key.is_empty()).then_some(key)
            });
        let key = match (header, own) {
            (Some(h), Some(k)) if !h.is_empty() => format!("{h}.{k}"),
            (_, Some(k)) => k.to_owned(),
            (Some(h), None) if !h.is_empty() => h.to_owned(),
            _ => "(top level)".to_owned(),
        };
        ScenarioError::Invalid {
            file: self.file.to_owned(),
            line,
            key,
            message: format!("TOML syntax: {}", e.message().trim_end()),
        }
    }

    /// A type or shape error from deserializing the document: the key is the deepest one whose
    /// span holds the error, plus the field a "missing field" or "unknown field" names.
    fn serde(&self, doc: &Spanned<DeTable<'_>>, e: &toml::de::Error) -> ScenarioError {
        let span = e.span().unwrap_or(0..0);
        let mut path = Vec::new();
        locate_in_table(doc.get_ref(), span.start, &mut path);
        let message = e.message();
        if let Some(field) = named_field(message, "missing field") {
            path.push(field);
        } else if let Some(field) = named_field(message, "unknown field")
            && path.last() != Some(&field)
        {
            path.push(field);
        }
        let key = if path.is_empty() {
            "(top level)".to_owned()
        } else {
            path.join(".")
        };
        self.error(span, &key, message)
    }
}

/// The field named in a serde message such as "missing field `unit`".
fn named_field(message: &str, prefix: &str) -> Option<String> {
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
        // A table in an array of tables spans only its header, so an element is searched
        // first and then matched by its own span.
        DeValue::Array(items) => items
            .iter()
            .any(|item| locate(item, at, path) || item.span().contains(&at)),
        _ => false,
    }
}

/// A key's span and value in a document table.
fn entry<'a, 'i>(
    value: &'a Spanned<DeValue<'i>>,
    key: &str,
) -> Option<(Range<usize>, &'a Spanned<DeValue<'i>>)> {
    match value.get_ref() {
        DeValue::Table(t) => t.get_key_value(key).map(|(k, v)| (k.span(), v)),
        _ => None,
    }
}

/// Element `i` of an array in the document.
fn element<'a, 'i>(value: &'a Spanned<DeValue<'i>>, i: usize) -> Option<&'a Spanned<DeValue<'i>>> {
    match value.get_ref() {
        DeValue::Array(items) => items.get(i),
        _ => None,
    }
}

/// The checks that need the whole file: references between tables, uniqueness, addresses,
/// and the node's own checks, each reported against the span of the key at fault.
struct Checker<'a, 'i> {
    ctx: Context<'a>,
    doc: &'a Spanned<DeTable<'i>>,
    base_dir: PathBuf,
}

/// What the fault checks need to know of a node.
struct NodeInfo {
    channels: usize,
}

/// A bus as checked, with what the node checks need.
struct BusInfo {
    spec: BusSpec,
    /// Whether the unit addresses the node on this bus (RTU, shared TCP listener).
    shared_units: bool,
    listen_span: Option<Range<usize>>,
    name_span: Range<usize>,
}

impl<'i> Checker<'_, 'i> {
    fn root(&self) -> Spanned<DeValue<'i>> {
        Spanned::new(self.doc.span(), DeValue::Table(self.doc.get_ref().clone()))
    }

    fn check(&self, raw: RawFile) -> Result<FleetSpec, ScenarioError> {
        let ctx = self.ctx;
        let name = raw.scenario.name;
        if name.get_ref().trim().is_empty() {
            return Err(ctx.error(name.span(), "scenario.name", "the scenario needs a name"));
        }
        let seed = raw.scenario.seed;

        let mut sites: HashMap<String, Range<usize>> = HashMap::new();
        for site in &raw.site {
            let id = &site.get_ref().id;
            SiteId::new(id.get_ref()).map_err(|e| {
                ctx.error(
                    id.span(),
                    "site.id",
                    format!("invalid site id `{}`: {e}", id.get_ref()),
                )
            })?;
            if let Some(first) = sites.insert(id.get_ref().clone(), id.span()) {
                return Err(ctx.error(
                    id.span(),
                    "site.id",
                    format!(
                        "site `{}` is already defined on line {}",
                        id.get_ref(),
                        ctx.line_of(first.start)
                    ),
                ));
            }
        }

        let mut buses: Vec<BusInfo> = Vec::with_capacity(raw.bus.len());
        for bus in &raw.bus {
            let info = self.bus(bus.get_ref())?;
            if let Some(first) = buses.iter().find(|b| b.spec.name == info.spec.name) {
                return Err(ctx.error(
                    bus.get_ref().name.span(),
                    "bus.name",
                    format!(
                        "bus `{}` is already defined on line {}",
                        info.spec.name,
                        ctx.line_of(first.name_span.start)
                    ),
                ));
            }
            buses.push(info);
        }

        let root = self.root();
        let node_tables = entry(&root, "node").map(|(_, v)| v);
        let mut nodes: Vec<NodeSpec> = Vec::new();
        let mut infos: HashMap<String, NodeInfo> = HashMap::new();
        let mut id_spans: HashMap<String, Range<usize>> = HashMap::new();
        let mut units: HashMap<(String, u8), (String, Range<usize>)> = HashMap::new();
        for (i, raw_node) in raw.node.iter().enumerate() {
            let table = node_tables.and_then(|v| element(v, i));
            let expanded = self.node(raw_node, table, &sites, &buses, seed)?;
            let node = raw_node.get_ref();
            let unit_span = node.unit.as_ref().map_or(raw_node.span(), |u| u.span());
            let shared = buses
                .iter()
                .any(|b| b.spec.name == *node.bus.get_ref() && b.shared_units);
            for spec in expanded {
                if let Some(first) = id_spans.insert(spec.id.to_string(), node.id.span()) {
                    return Err(ctx.error(
                        node.id.span(),
                        "node.id",
                        format!(
                            "node id `{}` is already used on line {}",
                            spec.id,
                            ctx.line_of(first.start)
                        ),
                    ));
                }
                if shared {
                    let slot = (spec.bus.clone(), spec.unit);
                    if let Some((other, span)) = units.get(&slot) {
                        return Err(ctx.error(
                            unit_span,
                            "node.unit",
                            format!(
                                "unit {} on bus `{}` is already taken by node `{other}` (line {})",
                                spec.unit,
                                spec.bus,
                                ctx.line_of(span.start)
                            ),
                        ));
                    }
                    units.insert(slot, (spec.id.to_string(), unit_span.clone()));
                }
                infos.insert(
                    spec.id.to_string(),
                    NodeInfo {
                        channels: spec.channels.len(),
                    },
                );
                nodes.push(spec);
            }
        }

        for bus in &buses {
            if let (
                BusKind::ModbusTcp {
                    listen,
                    per_node: true,
                },
                Some(span),
            ) = (&bus.spec.kind, &bus.listen_span)
            {
                let count = nodes.iter().filter(|n| n.bus == bus.spec.name).count();
                let last = u32::from(listen.port()) + count.saturating_sub(1) as u32;
                if listen.port() != 0 && last > u32::from(u16::MAX) {
                    return Err(ctx.error(
                        span.clone(),
                        "bus.listen",
                        format!(
                            "{count} nodes listening from port {} would run past port 65535",
                            listen.port()
                        ),
                    ));
                }
            }
        }
        self.check_listeners(&buses, &nodes)?;

        let faults = self.faults(&infos, &buses)?;
        Ok(FleetSpec {
            name: name.into_inner(),
            seed,
            buses: buses.into_iter().map(|b| b.spec).collect(),
            nodes,
            faults,
            base_dir: self.base_dir.clone(),
        })
    }

    fn bus(&self, bus: &RawBus) -> Result<BusInfo, ScenarioError> {
        let ctx = self.ctx;
        let name = bus.name.get_ref();
        // Bus names show up in control URLs and logs, so they follow the id rules.
        NodeId::new(name).map_err(|e| {
            ctx.error(
                bus.name.span(),
                "bus.name",
                format!("invalid bus name `{name}`: {e}"),
            )
        })?;
        let kind = *bus.kind.get_ref();
        let applies = [
            (
                "listen",
                bus.listen.as_ref().map(|s| s.span()),
                RawBusKind::ModbusTcp,
            ),
            (
                "per_node",
                bus.per_node.as_ref().map(|s| s.span()),
                RawBusKind::ModbusTcp,
            ),
            (
                "link",
                bus.link.as_ref().map(|s| s.span()),
                RawBusKind::ModbusRtu,
            ),
            (
                "baud",
                bus.baud.as_ref().map(|s| s.span()),
                RawBusKind::ModbusRtu,
            ),
            (
                "pace",
                bus.pace.as_ref().map(|s| s.span()),
                RawBusKind::ModbusRtu,
            ),
            (
                "broker",
                bus.broker.as_ref().map(|s| s.span()),
                RawBusKind::Mqtt,
            ),
            (
                "publish_every_s",
                bus.publish_every_s.as_ref().map(|s| s.span()),
                RawBusKind::Mqtt,
            ),
        ];
        for (key, span, owner) in applies {
            if let Some(span) = span
                && owner != kind
            {
                return Err(ctx.error(
                    span,
                    &format!("bus.{key}"),
                    format!(
                        "`{key}` belongs to {} buses; bus `{name}` is {}",
                        owner.key(),
                        kind.key()
                    ),
                ));
            }
        }
        let missing = |key: &str| {
            ctx.error(
                bus.kind.span(),
                &format!("bus.{key}"),
                format!("a {} bus needs `{key}`", kind.key()),
            )
        };
        let (spec_kind, shared_units, listen_span) = match kind {
            RawBusKind::ModbusTcp => {
                let listen = bus.listen.as_ref().ok_or_else(|| missing("listen"))?;
                let per_node = bus.per_node.as_ref().is_some_and(|p| *p.get_ref());
                let addr = self.loopback(listen, "bus.listen")?;
                (
                    BusKind::ModbusTcp {
                        listen: addr,
                        per_node,
                    },
                    !per_node,
                    Some(listen.span()),
                )
            }
            RawBusKind::ModbusRtu => {
                let link = bus.link.as_ref().ok_or_else(|| missing("link"))?;
                if link.get_ref().trim().is_empty() {
                    return Err(ctx.error(link.span(), "bus.link", "the link path is empty"));
                }
                let baud = bus.baud.as_ref().map_or(9600, |b| *b.get_ref());
                if !BAUD_RATES_DIV100
                    .iter()
                    .any(|b| u32::from(*b) * 100 == baud)
                {
                    let span = bus.baud.as_ref().map_or(bus.kind.span(), |b| b.span());
                    let rates: Vec<String> = BAUD_RATES_DIV100
                        .iter()
                        .map(|b| (u32::from(*b) * 100).to_string())
                        .collect();
                    return Err(ctx.error(
                        span,
                        "bus.baud",
                        format!(
                            "baud {baud} is not one the node supports ({})",
                            rates.join(", ")
                        ),
                    ));
                }
                let pace = bus.pace.as_ref().is_some_and(|p| *p.get_ref());
                let link = PathBuf::from(link.get_ref());
                (BusKind::ModbusRtu { link, baud, pace }, true, None)
            }
            RawBusKind::Mqtt => {
                let broker = bus.broker.as_ref().ok_or_else(|| missing("broker"))?;
                let addr = self.loopback(broker, "bus.broker")?;
                let every = bus.publish_every_s.as_ref().map_or(5, |p| *p.get_ref());
                if every == 0 {
                    let span = bus.publish_every_s.as_ref().map_or(0..0, |p| p.span());
                    return Err(ctx.error(
                        span,
                        "bus.publish_every_s",
                        "nodes must publish at least every so many seconds; 0 is not an interval",
                    ));
                }
                (
                    BusKind::Mqtt {
                        broker: addr,
                        publish_every_s: every,
                    },
                    false,
                    None,
                )
            }
        };
        Ok(BusInfo {
            spec: BusSpec {
                name: name.clone(),
                kind: spec_kind,
            },
            shared_units,
            listen_span,
            name_span: bus.name.span(),
        })
    }

    /// Tests and demos must never reach beyond this host, so every address is loopback.
    fn loopback(&self, addr: &Spanned<String>, key: &str) -> Result<SocketAddr, ScenarioError> {
        let parsed: SocketAddr = addr.get_ref().parse().map_err(|_| {
            self.ctx.error(
                addr.span(),
                key,
                format!(
                    "`{}` is not an IP address and port such as 127.0.0.1:15020",
                    addr.get_ref()
                ),
            )
        })?;
        if !parsed.ip().is_loopback() {
            return Err(self.ctx.error(
                addr.span(),
                key,
                format!(
                    "{parsed} is not a loopback address; scenarios may only use 127.0.0.0/8 or ::1"
                ),
            ));
        }
        Ok(parsed)
    }

    /// Two Modbus TCP buses may not listen on the same port of the same address, nor on the
    /// port of a broker the scenario's MQTT nodes expect to find there.
    fn check_listeners(&self, buses: &[BusInfo], nodes: &[NodeSpec]) -> Result<(), ScenarioError> {
        let mut taken: Vec<(std::net::IpAddr, u32, u32, &str)> = buses
            .iter()
            .filter_map(|b| match &b.spec.kind {
                BusKind::Mqtt { broker, .. } if broker.port() != 0 => {
                    let port = u32::from(broker.port());
                    Some((broker.ip(), port, port, b.spec.name.as_str()))
                }
                _ => None,
            })
            .collect();
        for bus in buses {
            let (BusKind::ModbusTcp { listen, per_node }, Some(span)) =
                (&bus.spec.kind, &bus.listen_span)
            else {
                continue;
            };
            if listen.port() == 0 {
                continue;
            }
            let count = if *per_node {
                nodes
                    .iter()
                    .filter(|n| n.bus == bus.spec.name)
                    .count()
                    .max(1) as u32
            } else {
                1
            };
            let (lo, hi) = (
                u32::from(listen.port()),
                u32::from(listen.port()) + count - 1,
            );
            if let Some((_, _, _, other)) = taken
                .iter()
                .find(|(ip, a, b, _)| *ip == listen.ip() && lo <= *b && *a <= hi)
            {
                return Err(self.ctx.error(
                    span.clone(),
                    "bus.listen",
                    format!(
                        "bus `{}` would listen on a port that bus `{other}` uses",
                        bus.spec.name
                    ),
                ));
            }
            taken.push((listen.ip(), lo, hi, &bus.spec.name));
        }
        Ok(())
    }

    /// Checks one `[[node]]` and expands it into its nodes.
    fn node(
        &self,
        raw: &Spanned<RawNode>,
        table: Option<&Spanned<DeValue<'i>>>,
        sites: &HashMap<String, Range<usize>>,
        buses: &[BusInfo],
        seed: u64,
    ) -> Result<Vec<NodeSpec>, ScenarioError> {
        let ctx = self.ctx;
        let node = raw.get_ref();
        let site = node.site.get_ref();
        if !sites.contains_key(site) {
            let known: Vec<&str> = sites.keys().map(String::as_str).collect();
            return Err(ctx.error(
                node.site.span(),
                "node.site",
                format!("no [[site]] has id `{site}` (known: {})", list(known)),
            ));
        }
        let site = SiteId::new(site).map_err(|e| {
            ctx.error(
                node.site.span(),
                "node.site",
                format!("invalid site id `{site}`: {e}"),
            )
        })?;
        let bus_name = node.bus.get_ref();
        let Some(bus) = buses.iter().find(|b| b.spec.name == *bus_name) else {
            let known: Vec<&str> = buses.iter().map(|b| b.spec.name.as_str()).collect();
            return Err(ctx.error(
                node.bus.span(),
                "node.bus",
                format!("no [[bus]] is named `{bus_name}` (known: {})", list(known)),
            ));
        };

        let copies = match &node.count {
            None => 1,
            Some(count) => {
                let n = *count.get_ref();
                if !(1..=MAX_COUNT).contains(&n) {
                    return Err(ctx.error(
                        count.span(),
                        "node.count",
                        format!("count {n} is outside 1..={MAX_COUNT}"),
                    ));
                }
                if !node.id.get_ref().contains("{n}") {
                    return Err(ctx.error(
                        node.id.span(),
                        "node.id",
                        "with `count`, the id needs `{n}` where each copy's number goes",
                    ));
                }
                n
            }
        };

        let first_unit = match &node.unit {
            Some(unit) => {
                let u = *unit.get_ref();
                if !(1..=247).contains(&u) {
                    return Err(ctx.error(
                        unit.span(),
                        "node.unit",
                        format!("unit {u} is outside the Modbus unit addresses 1..=247"),
                    ));
                }
                let last = u + if bus.shared_units { copies - 1 } else { 0 };
                if last > 247 {
                    return Err(ctx.error(
                        unit.span(),
                        "node.unit",
                        format!("{copies} nodes from unit {u} would run past unit 247 (to {last})"),
                    ));
                }
                u as u8
            }
            None if bus.shared_units => {
                return Err(ctx.error(
                    raw.span(),
                    "node.unit",
                    format!(
                        "nodes on bus `{bus_name}` share its address space and need a `unit` (1..=247)"
                    ),
                ));
            }
            None => 1,
        };

        let channels = self.channels(raw, table)?;
        let width = copies.to_string().len();
        let mut out = Vec::with_capacity(copies as usize);
        for k in 0..copies {
            let id = if node.count.is_some() {
                node.id
                    .get_ref()
                    .replace("{n}", &format!("{:0width$}", k + 1))
            } else {
                node.id.get_ref().clone()
            };
            let id = NodeId::new(&id).map_err(|e| {
                let hint = if id.contains("{n}") {
                    " (`{n}` is expanded only with `count`)"
                } else {
                    ""
                };
                ctx.error(
                    node.id.span(),
                    "node.id",
                    format!("invalid node id `{id}`: {e}{hint}"),
                )
            })?;
            let unit = if bus.shared_units {
                first_unit + k as u8
            } else {
                first_unit
            };
            out.push(NodeSpec {
                id,
                site: site.clone(),
                bus: bus_name.clone(),
                unit,
                model: node.model.clone().unwrap_or_else(|| "TZ-SIM".to_owned()),
                channels: channels.clone(),
            });
        }

        // Build the first copy as the fleet will: the node's own checks (sensor against
        // quantity, signal parameters, replay files) are then reported against this file.
        // The copies differ only in id and unit, which those checks do not look at.
        if let Some(first) = out.first() {
            VirtualNode::new(first, seed, &self.base_dir)
                .map_err(|e| self.node_error(raw, table, e))?;
        }
        Ok(out)
    }

    fn node_error(
        &self,
        raw: &Spanned<RawNode>,
        table: Option<&Spanned<DeValue<'i>>>,
        e: NodeError,
    ) -> ScenarioError {
        let ctx = self.ctx;
        let channels = &raw.get_ref().channel;
        match e {
            NodeError::Signal { channel, source } => {
                let span = table
                    .and_then(|t| entry(t, "channel"))
                    .and_then(|(_, v)| element(v, channel))
                    .and_then(|c| entry(c, "signal"))
                    .map_or(raw.span(), |(k, _)| k);
                ctx.error(span, "node.channel.signal", source.to_string())
            }
            NodeError::Sensor {
                channel,
                sensor,
                quantity,
            } => {
                let c = channels.get(channel).map(|c| c.get_ref());
                let (span, key) = match c.and_then(|c| c.sensor.as_ref()) {
                    Some(s) => (s.span(), "node.channel.sensor"),
                    None => (
                        c.map_or(raw.span(), |c| c.quantity.span()),
                        "node.channel.quantity",
                    ),
                };
                ctx.error(
                    span,
                    key,
                    format!("a {sensor:?} sensor cannot measure {quantity}"),
                )
            }
            NodeError::Channels(n) => ctx.error(
                raw.span(),
                "node.channel",
                format!("a node has 1 to {MAX_CHANNELS} channels, not {n}"),
            ),
        }
    }

    fn channels(
        &self,
        raw: &Spanned<RawNode>,
        table: Option<&Spanned<DeValue<'i>>>,
    ) -> Result<Vec<ChannelSpec>, ScenarioError> {
        let ctx = self.ctx;
        let channels = &raw.get_ref().channel;
        if channels.is_empty() {
            return Err(ctx.error(
                raw.span(),
                "node.channel",
                "a node needs at least one [[node.channel]]",
            ));
        }
        if channels.len() > MAX_CHANNELS {
            return Err(ctx.error(
                channels[MAX_CHANNELS].span(),
                "node.channel",
                format!(
                    "a node runs at most {MAX_CHANNELS} channels (the firmware's limit); this is channel {}",
                    MAX_CHANNELS + 1
                ),
            ));
        }
        let tables = table.and_then(|t| entry(t, "channel")).map(|(_, v)| v);
        let mut out = Vec::with_capacity(channels.len());
        for (j, c) in channels.iter().enumerate() {
            let c = c.get_ref();
            let key = c.quantity.get_ref();
            let quantity = Quantity::from_key(key).ok_or_else(|| {
                let known: Vec<&str> = Quantity::ALL.iter().map(|q| q.key()).collect();
                ctx.error(
                    c.quantity.span(),
                    "node.channel.quantity",
                    format!("unknown quantity `{key}` (known: {})", known.join(", ")),
                )
            })?;
            let clamp = match &c.clamp {
                None => None,
                Some(clamp) => {
                    let (lo, hi) = *clamp.get_ref();
                    if !(lo.is_finite() && hi.is_finite() && lo < hi) {
                        return Err(ctx.error(
                            clamp.span(),
                            "node.channel.clamp",
                            format!(
                                "clamp [{lo}, {hi}] must be two finite numbers, low before high"
                            ),
                        ));
                    }
                    Some((lo, hi))
                }
            };
            let signal = tables
                .and_then(|t| element(t, j))
                .and_then(|t| entry(t, "signal"))
                .ok_or_else(|| {
                    ctx.error(
                        raw.span(),
                        "node.channel.signal",
                        "the channel has no signal",
                    )
                })?;
            out.push(ChannelSpec {
                quantity,
                signal: self.signal(signal)?,
                clamp,
                sensor: c.sensor.as_ref().map(|s| *s.get_ref()),
            });
        }
        Ok(out)
    }

    fn signal(
        &self,
        (key_span, value): (Range<usize>, &Spanned<DeValue<'i>>),
    ) -> Result<Vec<Component>, ScenarioError> {
        const KEY: &str = "node.channel.signal";
        let DeValue::Array(items) = value.get_ref() else {
            return Err(self.ctx.error(
                value.span(),
                KEY,
                "a signal is an array of components, e.g. [{ kind = \"constant\", value = 0.0 }]",
            ));
        };
        if items.is_empty() {
            return Err(self
                .ctx
                .error(key_span, KEY, "a signal needs at least one component"));
        }
        items
            .iter()
            .map(|item| self.tagged::<Component>(item, KEY))
            .collect()
    }

    /// Reads a table tagged by `kind` (a signal component, a fault). Serde reads such tables
    /// through a buffer that forgets where each value was, so the offending key is found
    /// again here: the one a message names, or else the one whose removal makes the error
    /// become "missing field" for it (or go away).
    fn tagged<T: DeserializeOwned>(
        &self,
        item: &Spanned<DeValue<'i>>,
        key: &str,
    ) -> Result<T, ScenarioError> {
        let DeValue::Table(table) = item.get_ref() else {
            return Err(self.ctx.error(
                item.span(),
                key,
                format!(
                    "expected a table with a `kind`, found a {}",
                    item.get_ref().type_str()
                ),
            ));
        };
        let read = |t: &DeTable<'i>| {
            T::deserialize(ValueDeserializer::from(Spanned::new(
                item.span(),
                DeValue::Table(t.clone()),
            )))
        };
        let e = match read(table) {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let message = e.message();
        let field = named_field(message, "unknown field")
            .or_else(|| named_field(message, "missing field"))
            .or_else(|| {
                message
                    .starts_with("unknown variant")
                    .then(|| "kind".to_owned())
            })
            .or_else(|| {
                table
                    .keys()
                    .map(|k| k.get_ref().to_string())
                    .filter(|k| k != "kind")
                    .find(|k| {
                        let mut without = table.clone();
                        without.remove(k.as_str());
                        match read(&without) {
                            Ok(_) => true,
                            Err(e) => {
                                named_field(e.message(), "missing field").as_deref() == Some(k)
                            }
                        }
                    })
            });
        let span = field
            .as_deref()
            .and_then(|f| table.get_key_value(f))
            .map_or(item.span(), |(k, _)| k.span());
        let key = match &field {
            Some(f) => format!("{key}.{f}"),
            None => key.to_owned(),
        };
        Err(self.ctx.error(span, &key, message))
    }

    fn faults(
        &self,
        nodes: &HashMap<String, NodeInfo>,
        buses: &[BusInfo],
    ) -> Result<Vec<ScheduledFault>, ScenarioError> {
        let ctx = self.ctx;
        let root = self.root();
        let Some((fault_key, list)) = entry(&root, "fault") else {
            return Ok(Vec::new());
        };
        let DeValue::Array(items) = list.get_ref() else {
            return Err(ctx.error(fault_key, "fault", "faults are written as [[fault]] tables"));
        };
        let mut out = Vec::with_capacity(items.len());
        for item in items.iter() {
            if !matches!(item.get_ref(), DeValue::Table(_)) {
                return Err(ctx.error(
                    item.span(),
                    "fault",
                    "faults are written as [[fault]] tables",
                ));
            }
            let when = RawFaultWhen::deserialize(ValueDeserializer::from(item.clone()))
                .map_err(|e| ctx.serde(self.doc, &e))?;
            let mut params = match item.get_ref() {
                DeValue::Table(t) => t.clone(),
                _ => DeTable::new(),
            };
            for k in FAULT_WHEN_KEYS {
                params.remove(k);
            }
            let fault: Fault = self.tagged(
                &Spanned::new(item.span(), DeValue::Table(params.clone())),
                "fault",
            )?;
            self.fault_params(&fault, &params)?;
            let target = match (&when.node, &when.bus) {
                (Some(node), None) => {
                    let Some(info) = nodes.get(node.get_ref()) else {
                        return Err(ctx.error(
                            node.span(),
                            "fault.node",
                            format!("no node has id `{}`", node.get_ref()),
                        ));
                    };
                    self.fault_channel(item, &fault, info)?;
                    Target::Node(node.get_ref().clone())
                }
                (None, Some(bus)) => {
                    if !buses.iter().any(|b| b.spec.name == *bus.get_ref()) {
                        return Err(ctx.error(
                            bus.span(),
                            "fault.bus",
                            format!("no [[bus]] is named `{}`", bus.get_ref()),
                        ));
                    }
                    Target::Bus(bus.get_ref().clone())
                }
                (Some(_), Some(bus)) => {
                    return Err(ctx.error(
                        bus.span(),
                        "fault.bus",
                        "a fault targets either a `node` or a `bus`, not both",
                    ));
                }
                (None, None) => {
                    return Err(ctx.error(
                        item.span(),
                        "fault.node",
                        "a fault needs a target: `node = \"…\"` or `bus = \"…\"`",
                    ));
                }
            };
            let from_s = when.from_s.as_ref().map_or(0.0, |s| *s.get_ref());
            if let Some(s) = &when.from_s
                && !(from_s.is_finite() && from_s >= 0.0)
            {
                return Err(ctx.error(
                    s.span(),
                    "fault.from_s",
                    format!("from_s {from_s} must be a time ≥ 0 s"),
                ));
            }
            let until_ms = match &when.until_s {
                None => None,
                Some(u) => {
                    let until_s = *u.get_ref();
                    if !(until_s.is_finite() && until_s > from_s) {
                        return Err(ctx.error(
                            u.span(),
                            "fault.until_s",
                            format!("until_s {until_s} must come after from_s {from_s}"),
                        ));
                    }
                    Some(seconds_to_ms(until_s))
                }
            };
            out.push(ScheduledFault {
                fault,
                target,
                from_ms: seconds_to_ms(from_s),
                until_ms,
            });
        }
        Ok(out)
    }

    /// Serde ignores extra keys beside the tag of a parameterless kind (`no_reply`, …), so a
    /// parameter given to the wrong kind would pass unnoticed: every key must be one the fault
    /// writes back when serialized.
    fn fault_params(&self, fault: &Fault, params: &DeTable<'i>) -> Result<(), ScenarioError> {
        let Ok(known) = toml::Table::try_from(fault) else {
            return Ok(());
        };
        match params
            .keys()
            .find(|k| !known.contains_key(k.get_ref().as_ref()))
        {
            Some(k) => Err(self.ctx.error(
                k.span(),
                &format!("fault.{}", k.get_ref()),
                format!(
                    "unknown field `{}`: a {} fault takes no such parameter",
                    k.get_ref(),
                    known.get("kind").and_then(|v| v.as_str()).unwrap_or("this")
                ),
            )),
            None => Ok(()),
        }
    }

    /// A channel fault on a node must name one of its channels.
    fn fault_channel(
        &self,
        item: &Spanned<DeValue<'i>>,
        fault: &Fault,
        node: &NodeInfo,
    ) -> Result<(), ScenarioError> {
        let channel = match fault {
            Fault::StuckValue { channel } | Fault::SensorFault { channel } => *channel,
            Fault::Spike { channel, .. } => Some(*channel),
            _ => None,
        };
        match channel {
            Some(c) if usize::from(c) >= node.channels => {
                let span = entry(item, "channel").map_or(item.span(), |(k, _)| k);
                Err(self.ctx.error(
                    span,
                    "fault.channel",
                    format!(
                        "channel {c} does not exist; the node has channels 0..={}",
                        node.channels - 1
                    ),
                ))
            }
            _ => Ok(()),
        }
    }
}

fn seconds_to_ms(s: f64) -> u64 {
    (s * 1000.0).round() as u64
}

fn list(mut names: Vec<&str>) -> String {
    if names.is_empty() {
        return "none".to_owned();
    }
    names.sort_unstable();
    names.join(", ")
}
