//! InfluxDB line protocol for readings.
//!
//! # Schema
//!
//! One reading is one point:
//!
//! | part | name | content | example |
//! |---|---|---|---|
//! | measurement | — | the quantity's key ([`Quantity::key`]) | `combustible_gas` |
//! | tag | `channel` | the channel on its node, `ch` and its index | `ch0` |
//! | tag | `node` | the node id | `cp-gas-07` |
//! | tag | `site` | the site id | `plant-1` |
//! | tag | `unit` | the ASCII symbol of the quantity's canonical unit ([`Unit::symbol`]) | `%LEL`, `ug/m3` |
//! | field | `value` | the value in that unit, a float | `12.5` |
//! | field | `quality` | the HJ 212 data flag ([`Quality::hj212_flag`]), a string | `"N"` |
//! | field | `quality_code` | the same flag as its ASCII code, an unsigned integer (as the node profile's quality register holds it), for databases that keep only numeric fields (VictoriaMetrics, Prometheus-style stores) | `78u` |
//! | field | `seq` | the node's sequence number, an unsigned integer | `42u` |
//! | timestamp | — | milliseconds since the Unix epoch, UTC | `1700000000000` |
//!
//! ```text
//! combustible_gas,channel=ch0,node=cp-gas-07,site=plant-1,unit=%LEL value=12.5,quality="N",quality_code=78u,seq=42u 1700000000000
//! ```
//!
//! Tags are written sorted by key, as InfluxDB recommends for write performance. Timestamps are
//! in milliseconds, so every write carrying these lines must set the precision to
//! [`WRITE_PRECISION`] (`precision=ms` on `/api/v2/write`); without it the database reads them
//! as nanoseconds and files every reading in January 1970.
//!
//! The unit is a tag although it follows from the quantity: a query or a dashboard filtering
//! on it then states what it expects, and a change of canonical unit would start a new series
//! instead of silently mixing scales in one.
//!
//! # Alarm transitions
//!
//! Each transition is a point of measurement `alarm`:
//!
//! | part | name | content |
//! |---|---|---|
//! | tag | `channel`, `node`, `site` | as for readings (`site` is `unknown` for a node not yet seen) |
//! | tag | `condition` | `threshold`, `rate_of_change`, `stale`, `bad_quality` |
//! | field | `level_code` | 0 normal … 4 red, unsigned |
//! | field | `level`, `state`, `cause` | strings: `red`, `active_unacked`, `escalated` … |
//! | field | `value` | the channel's latest value, when it has one |
//! | timestamp | — | the transition's time, ms |
//!
//! ```text
//! alarm,channel=ch0,condition=threshold,node=cp-lel-05,site=plant-b level_code=4u,level="red",state="active_unacked",cause="escalated",value=51.2 1764316800000
//! ```
//!
//! # Point identity and replays
//!
//! InfluxDB identifies a point by its measurement, tag set and timestamp ([`PointId`]); a
//! second write with the same identity overwrites the fields of the first. The durable outbox
//! relies on this: replaying a batch after an unacknowledged write stores each reading once,
//! not twice.
//!
//! The price is that two readings of the same node and channel (and so the same quantity) in
//! the same millisecond collide, and only the last one written survives. `seq` is a field, not
//! a tag, precisely so that it does not split the identity (a replay must overwrite); an
//! auditor comparing the stored `seq` values with the node's sequence sees the gap a collision
//! leaves.
//!
//! # Escaping and refusals
//!
//! Escaping follows the line protocol: a backslash before comma and space in the measurement;
//! before comma, equals sign and space in tag keys, tag values and field keys; before double
//! quote and backslash in string field values. Site and node ids, unit symbols and quantity
//! keys never need it today (ids forbid spaces, commas and `=`), but the encoder does not rely
//! on that.
//!
//! What line protocol cannot carry is refused with an [`EncodeError`] naming the node, the
//! channel and the [`Refusal`]: non-finite values, names or keys starting with `_`, `time` as a
//! tag or field key, empty names and tag values, line breaks and backslashes outside string
//! fields, and timestamps past what InfluxDB stores.

use core::fmt;

use tianzhong_protocol::reading::{ChannelId, Quality, Reading, Timestamp};
use tianzhong_protocol::{NodeId, Quantity, SiteId, Unit};

/// The write precision of the timestamps this module writes; the sink passes it as the
/// `precision` query parameter of every write.
pub const WRITE_PRECISION: &str = "ms";

/// The latest timestamp InfluxDB can store, in milliseconds: it keeps nanoseconds in an `i64`.
pub const MAX_TIMESTAMP_MILLIS: u64 = i64::MAX as u64 / 1_000_000;

// Tag keys in sorted order, which is the order write_series writes them in.
const TAG_CHANNEL: &str = "channel";
const TAG_NODE: &str = "node";
const TAG_SITE: &str = "site";
const TAG_UNIT: &str = "unit";

const FIELD_VALUE: &str = "value";
const FIELD_QUALITY: &str = "quality";
const FIELD_QUALITY_CODE: &str = "quality_code";
const FIELD_SEQ: &str = "seq";

/// Which part of a line a name belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NameKind {
    /// The measurement name.
    Measurement,
    /// A tag key.
    TagKey,
    /// A tag value.
    TagValue,
    /// A field key.
    FieldKey,
}

impl fmt::Display for NameKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NameKind::Measurement => "measurement",
            NameKind::TagKey => "tag key",
            NameKind::TagValue => "tag value",
            NameKind::FieldKey => "field key",
        })
    }
}

/// Why something cannot be written as line protocol.
#[derive(Clone, Debug, PartialEq)]
pub enum Refusal {
    /// The value is NaN or infinite; line protocol floats have no spelling for either.
    NotFinite(f64),
    /// The timestamp lies after [`MAX_TIMESTAMP_MILLIS`].
    TimestampOutOfRange(Timestamp),
    /// A measurement, tag key or field key starts with `_`, which InfluxDB reserves.
    LeadingUnderscore {
        /// Where the name appears.
        kind: NameKind,
        /// The name.
        name: String,
    },
    /// `time` used as a tag or field key; it would clash with the timestamp column.
    TimeKey {
        /// Where the key appears.
        kind: NameKind,
    },
    /// An empty measurement, key or tag value.
    Empty {
        /// What is empty.
        kind: NameKind,
        /// For a tag value, its key.
        key: Option<String>,
    },
    /// A line break or a backslash in a name, key or tag value: a line break ends the line
    /// and there is no escape for it, and a backslash would escape the delimiter after it.
    Unescapable {
        /// Where the name appears.
        kind: NameKind,
        /// The name.
        name: String,
        /// The offending character.
        ch: char,
    },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::NotFinite(v) => write!(
                f,
                "value {v} is not finite; line protocol has no NaN or infinity"
            ),
            Refusal::TimestampOutOfRange(t) => write!(
                f,
                "timestamp {} ms is after {MAX_TIMESTAMP_MILLIS} ms, the last InfluxDB can store",
                t.millis()
            ),
            Refusal::LeadingUnderscore { kind, name } => write!(
                f,
                "{kind} {name:?} starts with '_', which InfluxDB reserves"
            ),
            Refusal::TimeKey { kind } => write!(f, "\"time\" is not allowed as a {kind}"),
            Refusal::Empty {
                kind,
                key: Some(key),
            } => write!(f, "{kind} of {key:?} is empty"),
            Refusal::Empty { kind, key: None } => write!(f, "{kind} is empty"),
            Refusal::Unescapable { kind, name, ch } => write!(
                f,
                "{kind} {name:?} contains {ch:?}, which line protocol cannot escape there"
            ),
        }
    }
}

impl std::error::Error for Refusal {}

/// A reading that cannot be written as line protocol.
#[derive(Clone, Debug, PartialEq)]
pub struct EncodeError {
    /// The node of the refused reading.
    pub node: NodeId,
    /// Its channel.
    pub channel: ChannelId,
    /// Why it was refused.
    pub reason: Refusal,
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "reading of node {} channel {} refused: {}",
            self.node, self.channel, self.reason
        )
    }
}

impl std::error::Error for EncodeError {}

/// A string with line-protocol escapes applied when displayed: write it into the buffer with
/// `write!` and nothing is allocated.
#[derive(Clone, Copy, Debug)]
pub struct Escaped<'a> {
    text: &'a str,
    specials: &'static [u8],
}

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_escaped(f, self.text, self.specials)
    }
}

const MEASUREMENT_SPECIALS: &[u8] = b", ";
const KEY_SPECIALS: &[u8] = b",= ";
const STRING_FIELD_SPECIALS: &[u8] = b"\"\\";

/// A measurement name escaped: backslash before comma and space.
pub fn escape_measurement(text: &str) -> Escaped<'_> {
    Escaped {
        text,
        specials: MEASUREMENT_SPECIALS,
    }
}

/// A tag key, tag value or field key escaped: backslash before comma, equals sign and space.
pub fn escape_key(text: &str) -> Escaped<'_> {
    Escaped {
        text,
        specials: KEY_SPECIALS,
    }
}

/// The content of a string field value escaped (without its quotes): backslash before double
/// quote and backslash.
pub fn escape_string_field(text: &str) -> Escaped<'_> {
    Escaped {
        text,
        specials: STRING_FIELD_SPECIALS,
    }
}

// All specials are ASCII, so splitting at their byte offsets keeps UTF-8 intact; copying the
// runs between them whole keeps the common case (nothing to escape) one write.
fn write_escaped<W: fmt::Write>(out: &mut W, text: &str, specials: &[u8]) -> fmt::Result {
    let mut start = 0;
    for (i, b) in text.bytes().enumerate() {
        if specials.contains(&b) {
            out.write_str(&text[start..i])?;
            out.write_char('\\')?;
            start = i;
        }
    }
    out.write_str(&text[start..])
}

fn check_chars(kind: NameKind, name: &str) -> Result<(), Refusal> {
    match name.chars().find(|c| matches!(c, '\n' | '\r' | '\\')) {
        Some(ch) => Err(Refusal::Unescapable {
            kind,
            name: name.to_owned(),
            ch,
        }),
        None => Ok(()),
    }
}

fn check_name(kind: NameKind, name: &str) -> Result<(), Refusal> {
    if name.is_empty() {
        return Err(Refusal::Empty { kind, key: None });
    }
    if name.starts_with('_') {
        return Err(Refusal::LeadingUnderscore {
            kind,
            name: name.to_owned(),
        });
    }
    if kind != NameKind::Measurement && name == "time" {
        return Err(Refusal::TimeKey { kind });
    }
    check_chars(kind, name)
}

/// Whether `name` can be written as a measurement.
pub fn check_measurement(name: &str) -> Result<(), Refusal> {
    check_name(NameKind::Measurement, name)
}

/// Whether `key` can be written as a tag key.
pub fn check_tag_key(key: &str) -> Result<(), Refusal> {
    check_name(NameKind::TagKey, key)
}

/// Whether `key` can be written as a field key.
pub fn check_field_key(key: &str) -> Result<(), Refusal> {
    check_name(NameKind::FieldKey, key)
}

/// Whether `value` can be written as the value of tag `key`. InfluxDB would drop a tag with
/// an empty value, but every tag of this schema is part of a point's identity, so an empty
/// one is refused rather than let two series merge.
pub fn check_tag_value(key: &str, value: &str) -> Result<(), Refusal> {
    if value.is_empty() {
        return Err(Refusal::Empty {
            kind: NameKind::TagValue,
            key: Some(key.to_owned()),
        });
    }
    check_chars(NameKind::TagValue, value)
}

/// Measurement and tag set of a reading: the series it belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SeriesKey {
    /// The measurement.
    pub quantity: Quantity,
    /// Tag `channel`.
    pub channel: ChannelId,
    /// Tag `node`.
    pub node: NodeId,
    /// Tag `site`.
    pub site: SiteId,
    /// Tag `unit`.
    pub unit: Unit,
}

/// Renders the series key as it starts each of its lines (measurement and tags, escaped).
impl fmt::Display for SeriesKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_series(
            f,
            self.quantity,
            self.channel,
            &self.node,
            &self.site,
            self.unit,
        )
    }
}

/// What InfluxDB identifies a point by: a second write with the same id overwrites the first.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PointId {
    /// Measurement and tag set.
    pub series: SeriesKey,
    /// The timestamp, in [`WRITE_PRECISION`].
    pub timestamp: Timestamp,
}

/// The series a reading from `site` is written to.
pub fn series_key(site: &SiteId, reading: &Reading) -> SeriesKey {
    SeriesKey {
        quantity: reading.quantity,
        channel: reading.channel,
        node: reading.node.clone(),
        site: site.clone(),
        unit: reading.quantity.canonical_unit(),
    }
}

/// The identity of the point a reading from `site` is written as; see the
/// [module documentation](self) for what a collision means.
pub fn point_id(site: &SiteId, reading: &Reading) -> PointId {
    PointId {
        series: series_key(site, reading),
        timestamp: reading.timestamp,
    }
}

fn write_series<W: fmt::Write>(
    out: &mut W,
    quantity: Quantity,
    channel: ChannelId,
    node: &NodeId,
    site: &SiteId,
    unit: Unit,
) -> fmt::Result {
    write!(out, "{}", escape_measurement(quantity.key()))?;
    // ChannelId displays as `ch` and digits, which never need escaping.
    write!(out, ",{}={channel}", escape_key(TAG_CHANNEL))?;
    write!(out, ",{}={}", escape_key(TAG_NODE), escape_key(node))?;
    write!(out, ",{}={}", escape_key(TAG_SITE), escape_key(site))?;
    write!(
        out,
        ",{}={}",
        escape_key(TAG_UNIT),
        escape_key(unit.symbol())
    )
}

fn check(site: &SiteId, reading: &Reading) -> Result<(), Refusal> {
    if !reading.value.is_finite() {
        return Err(Refusal::NotFinite(reading.value));
    }
    if reading.timestamp.millis() > MAX_TIMESTAMP_MILLIS {
        return Err(Refusal::TimestampOutOfRange(reading.timestamp));
    }
    check_measurement(reading.quantity.key())?;
    for key in [TAG_CHANNEL, TAG_NODE, TAG_SITE, TAG_UNIT] {
        check_tag_key(key)?;
    }
    for key in [FIELD_VALUE, FIELD_QUALITY, FIELD_SEQ] {
        check_field_key(key)?;
    }
    check_tag_value(TAG_NODE, &reading.node)?;
    check_tag_value(TAG_SITE, site)?;
    check_tag_value(TAG_UNIT, reading.quantity.canonical_unit().symbol())
}

fn write_line<W: fmt::Write>(out: &mut W, site: &SiteId, reading: &Reading) -> fmt::Result {
    let Reading {
        node,
        channel,
        quantity,
        value,
        timestamp,
        seq,
        quality,
    } = reading;
    write_series(
        out,
        *quantity,
        *channel,
        node,
        site,
        quantity.canonical_unit(),
    )?;
    // f64's Display is the shortest decimal that parses back to the same bits and never uses
    // an exponent, so it is a plain line-protocol float; integral values print without a
    // point (`42`), which line protocol still reads as a float because there is no suffix.
    write!(out, " {}={value}", escape_key(FIELD_VALUE))?;
    let mut flag = [0u8; 4];
    let flag = Quality::hj212_flag(*quality).encode_utf8(&mut flag);
    write!(
        out,
        ",{}=\"{}\"",
        escape_key(FIELD_QUALITY),
        escape_string_field(flag)
    )?;
    write!(
        out,
        ",{}={}u",
        escape_key(FIELD_QUALITY_CODE),
        quality.register_code()
    )?;
    write!(out, ",{}={seq}u", escape_key(FIELD_SEQ))?;
    writeln!(out, " {}", timestamp.millis())
}

/// Appends the line for one reading from `site`, ending in a newline, to `buf`. Nothing is
/// allocated beyond the growth of `buf`; a refused reading leaves `buf` as it was.
pub fn encode_reading(
    buf: &mut String,
    site: &SiteId,
    reading: &Reading,
) -> Result<(), EncodeError> {
    check(site, reading).map_err(|reason| EncodeError {
        node: reading.node.clone(),
        channel: reading.channel,
        reason,
    })?;
    write_line(buf, site, reading).expect("fmt::Write for String never fails");
    Ok(())
}

/// What [`encode_batch`] did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BatchOutcome {
    /// Lines appended.
    pub lines: usize,
    /// Readings refused, in batch order.
    pub refused: Vec<EncodeError>,
}

/// Appends a line for every reading of `batch` that line protocol can carry to `buf`, and
/// reports the rest. One unwritable reading must not hold back the others: retrying would
/// refuse it again, so it is set aside for the caller to count and log.
///
/// `buf` is meant to be reused: clear it after each write and its capacity carries over, so a
/// steady stream of batches allocates nothing.
pub fn encode_batch<'a, I>(buf: &mut String, batch: I) -> BatchOutcome
where
    I: IntoIterator<Item = (&'a SiteId, &'a Reading)>,
{
    let mut outcome = BatchOutcome::default();
    for (site, reading) in batch {
        match encode_reading(buf, site, reading) {
            Ok(()) => outcome.lines += 1,
            Err(e) => outcome.refused.push(e),
        }
    }
    outcome
}

/// Appends the line of one alarm transition (see the [module documentation](self)).
pub fn encode_alarm(buf: &mut String, event: &crate::alarm::AlarmEvent) -> fmt::Result {
    use fmt::Write as _;
    let t = &event.transition;
    let site = event.site.as_ref().map_or("unknown", |s| s.as_str());
    let (cause, ..) = crate::alarm::event::cause_parts(&t.cause);
    write!(
        buf,
        "alarm,channel={},condition={},node={},site={} level_code={}u,level=\"{}\",state=\"{}\",cause=\"{}\"",
        escape_key(&t.key.channel.to_string()),
        escape_key(t.key.condition.key()),
        escape_key(t.key.node.as_str()),
        escape_key(site),
        t.level.code(),
        t.level.key(),
        t.to.key(),
        cause
    )?;
    if t.value.is_finite() {
        write!(buf, ",value={}", t.value)?;
    }
    writeln!(buf, " {}", t.at_ms)
}
