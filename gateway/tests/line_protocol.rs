//! The line-protocol encoding of readings: escaping, exact lines, refusals, point identity,
//! and a round trip through a small parser of line protocol written here from the reference.

use proptest::prelude::*;
use tianzhong_gateway::sinks::influx::line_protocol::{
    EncodeError, MAX_TIMESTAMP_MILLIS, NameKind, Refusal, WRITE_PRECISION, check_field_key,
    check_measurement, check_tag_key, check_tag_value, encode_batch, encode_reading, escape_key,
    escape_measurement, escape_string_field, point_id, series_key,
};
use tianzhong_protocol::reading::ALL_QUALITIES;
use tianzhong_protocol::{
    BadReason, ChannelId, NodeId, Quality, Quantity, Reading, SiteId, Timestamp, UncertainReason,
    Unit,
};

// ---- a parser for what the encoder writes, following the reference's rules ----

#[derive(Clone, Debug, PartialEq)]
enum FieldValue {
    Float(f64),
    Integer(i64),
    Unsigned(u64),
    Str(String),
    Bool(bool),
}

#[derive(Clone, Debug, PartialEq)]
struct Line {
    measurement: String,
    tags: Vec<(String, String)>,
    fields: Vec<(String, FieldValue)>,
    timestamp: Option<i64>,
}

impl Line {
    fn tag(&self, key: &str) -> Option<&str> {
        self.tags
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn field(&self, key: &str) -> Option<&FieldValue> {
        self.fields.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
}

/// Reads up to the first unescaped character of `stops`, undoing backslash escapes of
/// `escapable`; returns the text, the stop character met (`None` at the end) and the rest.
fn token<'a>(s: &'a str, escapable: &[char], stops: &[char]) -> (String, Option<char>, &'a str) {
    let mut out = String::new();
    let mut chars = s.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c == '\\' {
            if let Some(&(_, next)) = chars.peek()
                && escapable.contains(&next)
            {
                out.push(next);
                chars.next();
                continue;
            }
            out.push(c);
        } else if stops.contains(&c) {
            return (out, Some(c), &s[i + c.len_utf8()..]);
        } else {
            out.push(c);
        }
    }
    (out, None, "")
}

fn parse_field_value(raw: &str) -> Result<FieldValue, String> {
    match raw {
        "t" | "T" | "true" | "True" | "TRUE" => return Ok(FieldValue::Bool(true)),
        "f" | "F" | "false" | "False" | "FALSE" => return Ok(FieldValue::Bool(false)),
        _ => {}
    }
    if let Some(digits) = raw.strip_suffix('u') {
        return digits
            .parse()
            .map(FieldValue::Unsigned)
            .map_err(|e| format!("unsigned {raw:?}: {e}"));
    }
    if let Some(digits) = raw.strip_suffix('i') {
        return digits
            .parse()
            .map(FieldValue::Integer)
            .map_err(|e| format!("integer {raw:?}: {e}"));
    }
    raw.parse()
        .map(FieldValue::Float)
        .map_err(|e| format!("float {raw:?}: {e}"))
}

fn parse_line(line: &str) -> Result<Line, String> {
    const MEASUREMENT_ESC: &[char] = &[',', ' '];
    const KEY_ESC: &[char] = &[',', '=', ' '];
    if line.contains('\n') {
        return Err("line break inside a line".into());
    }
    let (measurement, mut stop, mut rest) = token(line, MEASUREMENT_ESC, &[',', ' ']);
    if measurement.is_empty() {
        return Err("empty measurement".into());
    }
    let mut tags = Vec::new();
    while stop == Some(',') {
        let (key, s, r) = token(rest, KEY_ESC, &['=']);
        if s != Some('=') {
            return Err(format!("tag {key:?} without '='"));
        }
        let (value, s, r) = token(r, KEY_ESC, &[',', ' ']);
        tags.push((key, value));
        (stop, rest) = (s, r);
    }
    if stop != Some(' ') {
        return Err("no field set".into());
    }
    let mut fields = Vec::new();
    loop {
        let (key, s, r) = token(rest, KEY_ESC, &['=']);
        if s != Some('=') {
            return Err(format!("field {key:?} without '='"));
        }
        let (value, after) = if let Some(quoted) = r.strip_prefix('"') {
            let (text, s, r) = token(quoted, &['"', '\\'], &['"']);
            if s != Some('"') {
                return Err(format!("unterminated string field {key:?}"));
            }
            (FieldValue::Str(text), r)
        } else {
            let end = r.find([',', ' ']).unwrap_or(r.len());
            (parse_field_value(&r[..end])?, &r[end..])
        };
        fields.push((key, value));
        match after.chars().next() {
            Some(',') => rest = &after[1..],
            Some(' ') => {
                let ts = &after[1..];
                let timestamp = ts.parse().map_err(|e| format!("timestamp {ts:?}: {e}"))?;
                return Ok(Line {
                    measurement,
                    tags,
                    fields,
                    timestamp: Some(timestamp),
                });
            }
            None => {
                return Ok(Line {
                    measurement,
                    tags,
                    fields,
                    timestamp: None,
                });
            }
            Some(c) => return Err(format!("{c:?} after field {:?}", fields.last())),
        }
    }
}

// ---- helpers ----

fn site(s: &str) -> SiteId {
    SiteId::new(s).unwrap()
}

fn reading(node: &str, channel: u16, quantity: Quantity, value: f64, ms: u64, seq: u32) -> Reading {
    Reading {
        node: NodeId::new(node).unwrap(),
        channel: ChannelId(channel),
        quantity,
        value,
        timestamp: Timestamp(ms),
        seq,
        quality: Quality::Good,
    }
}

fn encode(site: &SiteId, reading: &Reading) -> Result<String, EncodeError> {
    let mut buf = String::new();
    encode_reading(&mut buf, site, reading)?;
    Ok(buf)
}

fn value_of(line: &str) -> f64 {
    match parse_line(line.trim_end_matches('\n'))
        .unwrap()
        .field("value")
    {
        Some(FieldValue::Float(v)) => *v,
        other => panic!("value field is {other:?} in {line:?}"),
    }
}

// ---- escaping ----

#[test]
fn measurement_escapes_comma_and_space_only() {
    assert_eq!(
        escape_measurement(r#"a b,c=d"e\f"#).to_string(),
        r#"a\ b\,c=d"e\f"#
    );
    assert_eq!(escape_measurement(" ,").to_string(), r"\ \,");
}

#[test]
fn keys_and_tag_values_escape_comma_equals_and_space_only() {
    assert_eq!(
        escape_key(r#"a b,c=d"e\f"#).to_string(),
        r#"a\ b\,c\=d"e\f"#
    );
    assert_eq!(escape_key("==,, ").to_string(), r"\=\=\,\,\ ");
}

#[test]
fn string_fields_escape_double_quote_and_backslash_only() {
    assert_eq!(
        escape_string_field(r#"a b,c=d"e\f"#).to_string(),
        r#"a b,c=d\"e\\f"#
    );
    assert_eq!(escape_string_field(r#"\""#).to_string(), r#"\\\""#);
}

#[test]
fn escaping_keeps_multibyte_text_intact() {
    assert_eq!(escape_key("温度 µg/m³").to_string(), r"温度\ µg/m³");
    assert_eq!(escape_measurement("天,中").to_string(), r"天\,中");
}

#[test]
fn unit_symbols_and_quantity_keys_pass_through_unchanged() {
    for unit in Unit::ALL {
        assert_eq!(escape_key(unit.symbol()).to_string(), unit.symbol());
        assert!(check_tag_value("unit", unit.symbol()).is_ok(), "{unit:?}");
    }
    for q in Quantity::ALL {
        assert_eq!(escape_measurement(q.key()).to_string(), q.key());
        assert!(check_measurement(q.key()).is_ok(), "{q}");
    }
    for symbol in ["%LEL", "ug/m3", "%/m", "m3/s"] {
        assert_eq!(escape_key(symbol).to_string(), symbol);
    }
}

#[test]
fn ids_pass_through_unchanged_because_they_cannot_hold_delimiters() {
    assert!(SiteId::new("plant 1").is_err());
    assert!(SiteId::new("plant,1").is_err());
    assert!(NodeId::new("gas=1").is_err());
    let line = encode(
        &site("Plant_1.east-2"),
        &reading("cp.gas_07-b", 0, Quantity::CombustibleGas, 1.0, 0, 0),
    )
    .unwrap();
    assert!(
        line.contains(",node=cp.gas_07-b,site=Plant_1.east-2,"),
        "{line}"
    );
}

// ---- exact lines ----

#[test]
fn the_module_doc_example_is_what_the_encoder_writes() {
    let line = encode(
        &site("plant-1"),
        &reading(
            "cp-gas-07",
            0,
            Quantity::CombustibleGas,
            12.5,
            1_700_000_000_000,
            42,
        ),
    )
    .unwrap();
    assert_eq!(
        line,
        "combustible_gas,channel=ch0,node=cp-gas-07,site=plant-1,unit=%LEL \
         value=12.5,quality=\"N\",quality_code=78u,seq=42u 1700000000000\n"
    );
    assert_eq!(WRITE_PRECISION, "ms");
}

#[test]
fn full_lines_for_other_quantities_and_qualities() {
    let mut r = reading(
        "aq-03",
        12,
        Quantity::Pm25,
        100.0,
        1_718_000_000_123,
        u32::MAX,
    );
    r.quality = Quality::Uncertain(UncertainReason::OutOfRange);
    assert_eq!(
        encode(&site("haze.station"), &r).unwrap(),
        "pm2_5,channel=ch12,node=aq-03,site=haze.station,unit=ug/m3 \
         value=100,quality=\"T\",quality_code=84u,seq=4294967295u 1718000000123\n"
    );

    let mut r = reading("river_9", 65535, Quantity::Flow, -0.25, 0, 0);
    r.quality = Quality::Bad(BadReason::CommunicationFailure);
    assert_eq!(
        encode(&site("basin"), &r).unwrap(),
        "flow,channel=ch65535,node=river_9,site=basin,unit=m3/s \
         value=-0.25,quality=\"B\",quality_code=66u,seq=0u 0\n"
    );
}

#[test]
fn tags_are_written_sorted_by_key() {
    let line = encode(&site("s"), &reading("n", 1, Quantity::Methane, 0.5, 1, 1)).unwrap();
    let parsed = parse_line(line.trim_end()).unwrap();
    let keys: Vec<&str> = parsed.tags.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["channel", "node", "site", "unit"]);
    assert!(keys.is_sorted());
}

// ---- buffer ----

#[test]
fn lines_append_and_a_cleared_buffer_is_reused_without_growing() {
    let s = site("plant-1");
    let batch: Vec<Reading> = (0..100)
        .map(|i| {
            reading(
                "cp-gas-07",
                i % 4,
                Quantity::CombustibleGas,
                f64::from(i) / 7.0,
                1_000 + u64::from(i),
                u32::from(i),
            )
        })
        .collect();
    let mut buf = String::from("kept\n");
    let outcome = encode_batch(&mut buf, batch.iter().map(|r| (&s, r)));
    assert_eq!(outcome.lines, 100);
    assert!(outcome.refused.is_empty());
    assert!(buf.starts_with("kept\n"));
    assert_eq!(buf.lines().count(), 101);

    buf.clear();
    let (capacity, ptr) = (buf.capacity(), buf.as_ptr());
    let outcome = encode_batch(&mut buf, batch.iter().map(|r| (&s, r)));
    assert_eq!(outcome.lines, 100);
    assert_eq!(buf.capacity(), capacity, "a reused buffer must not grow");
    assert_eq!(buf.as_ptr(), ptr, "a reused buffer must not be reallocated");
}

// ---- refusals ----

#[test]
fn non_finite_values_are_refused_naming_node_and_channel() {
    let s = site("plant-1");
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let r = reading("cp-gas-07", 3, Quantity::CombustibleGas, bad, 1, 1);
        let mut buf = String::from("before\n");
        let err = encode_reading(&mut buf, &s, &r).unwrap_err();
        assert_eq!(err.node.as_str(), "cp-gas-07");
        assert_eq!(err.channel, ChannelId(3));
        assert!(matches!(err.reason, Refusal::NotFinite(v) if v.to_bits() == bad.to_bits()));
        let message = err.to_string();
        assert!(
            message.contains("cp-gas-07") && message.contains("ch3"),
            "{message}"
        );
        assert!(message.contains("not finite"), "{message}");
        assert_eq!(
            buf, "before\n",
            "a refused reading must leave the buffer alone"
        );
    }
}

#[test]
fn timestamps_beyond_influxdb_are_refused() {
    let s = site("plant-1");
    let ok = reading("n", 0, Quantity::Tilt, 1.0, MAX_TIMESTAMP_MILLIS, 0);
    let line = encode(&s, &ok).unwrap();
    assert!(line.ends_with(" 9223372036854\n"), "{line}");
    // The ms timestamp in nanoseconds must still fit InfluxDB's i64.
    assert!(i64::try_from(MAX_TIMESTAMP_MILLIS * 1_000_000).is_ok());
    assert!(i64::try_from((MAX_TIMESTAMP_MILLIS + 1) * 1_000_000).is_err());

    let late = reading("n", 0, Quantity::Tilt, 1.0, MAX_TIMESTAMP_MILLIS + 1, 0);
    let err = encode(&s, &late).unwrap_err();
    assert_eq!(
        err.reason,
        Refusal::TimestampOutOfRange(Timestamp(MAX_TIMESTAMP_MILLIS + 1))
    );
}

#[test]
fn a_batch_sets_refused_readings_aside_and_writes_the_rest() {
    let s = site("plant-1");
    let batch = [
        reading("a", 0, Quantity::Oxygen, 20.9, 10, 1),
        reading("b", 1, Quantity::Oxygen, f64::NAN, 10, 1),
        reading("c", 2, Quantity::Oxygen, 19.5, 10, 1),
    ];
    let mut buf = String::new();
    let outcome = encode_batch(&mut buf, batch.iter().map(|r| (&s, r)));
    assert_eq!(outcome.lines, 2);
    assert_eq!(outcome.refused.len(), 1);
    assert_eq!(outcome.refused[0].node.as_str(), "b");
    assert_eq!(outcome.refused[0].channel, ChannelId(1));
    let nodes: Vec<String> = buf
        .lines()
        .map(|l| parse_line(l).unwrap().tag("node").unwrap().to_owned())
        .collect();
    assert_eq!(nodes, ["a", "c"]);
}

#[test]
fn reserved_and_empty_names_are_refused() {
    assert_eq!(
        check_measurement("_internal"),
        Err(Refusal::LeadingUnderscore {
            kind: NameKind::Measurement,
            name: "_internal".into()
        })
    );
    assert!(matches!(
        check_tag_key("_site"),
        Err(Refusal::LeadingUnderscore {
            kind: NameKind::TagKey,
            ..
        })
    ));
    assert!(matches!(
        check_field_key("_value"),
        Err(Refusal::LeadingUnderscore {
            kind: NameKind::FieldKey,
            ..
        })
    ));
    assert_eq!(
        check_tag_key("time"),
        Err(Refusal::TimeKey {
            kind: NameKind::TagKey
        })
    );
    assert_eq!(
        check_field_key("time"),
        Err(Refusal::TimeKey {
            kind: NameKind::FieldKey
        })
    );
    // `time` is only reserved as a key; a measurement of that name is legal.
    assert!(check_measurement("time").is_ok());
    assert!(check_tag_key("times").is_ok());
    let empty = check_tag_value("site", "").unwrap_err();
    assert_eq!(
        empty,
        Refusal::Empty {
            kind: NameKind::TagValue,
            key: Some("site".into())
        }
    );
    assert_eq!(empty.to_string(), "tag value of \"site\" is empty");
    assert!(matches!(
        check_measurement(""),
        Err(Refusal::Empty {
            kind: NameKind::Measurement,
            key: None
        })
    ));
    // A leading underscore is reserved for names and keys, not for tag values.
    assert!(check_tag_value("node", "_spare").is_ok());
}

#[test]
fn line_breaks_and_backslashes_are_refused_outside_string_fields() {
    for (text, ch) in [("a\nb", '\n'), ("a\rb", '\r'), ("a\\", '\\')] {
        assert_eq!(
            check_tag_value("node", text),
            Err(Refusal::Unescapable {
                kind: NameKind::TagValue,
                name: text.into(),
                ch
            })
        );
        assert!(matches!(
            check_measurement(text),
            Err(Refusal::Unescapable {
                kind: NameKind::Measurement,
                ..
            })
        ));
    }
}

// ---- point identity ----

#[test]
fn the_series_key_is_the_start_of_the_line() {
    let s = site("plant-1");
    let r = reading("cp-gas-07", 2, Quantity::H2s, 3.25, 99, 7);
    let key = series_key(&s, &r);
    assert_eq!(
        key.to_string(),
        "h2s,channel=ch2,node=cp-gas-07,site=plant-1,unit=mg/m3"
    );
    assert!(encode(&s, &r).unwrap().starts_with(&format!("{key} ")));
    assert_eq!(key.unit, Unit::MilligramPerCubicMetre);
}

#[test]
fn readings_of_one_channel_in_one_millisecond_share_a_point_id() {
    let s = site("plant-1");
    let first = reading("cp-gas-07", 0, Quantity::CombustibleGas, 12.0, 5_000, 41);
    let mut same_ms = reading("cp-gas-07", 0, Quantity::CombustibleGas, 13.0, 5_000, 42);
    same_ms.quality = Quality::Bad(BadReason::SensorFault);
    assert_eq!(
        point_id(&s, &first),
        point_id(&s, &same_ms),
        "a collision overwrites"
    );
    // What tells the two apart after the fact is the seq field, which is not in the id.
    let seqs: Vec<FieldValue> = [&first, &same_ms]
        .iter()
        .map(|r| {
            let line = encode(&s, r).unwrap();
            parse_line(line.trim_end())
                .unwrap()
                .field("seq")
                .unwrap()
                .clone()
        })
        .collect();
    assert_eq!(seqs, [FieldValue::Unsigned(41), FieldValue::Unsigned(42)]);

    let next_ms = reading("cp-gas-07", 0, Quantity::CombustibleGas, 12.0, 5_001, 41);
    assert_ne!(point_id(&s, &first), point_id(&s, &next_ms));
    let other_channel = reading("cp-gas-07", 1, Quantity::CombustibleGas, 12.0, 5_000, 41);
    assert_ne!(series_key(&s, &first), series_key(&s, &other_channel));
    assert_ne!(series_key(&s, &first), series_key(&site("plant-2"), &first));
}

// ---- floats ----

#[test]
fn floats_round_trip_bit_for_bit() {
    let s = site("plant-1");
    for v in [
        0.0,
        -0.0,
        0.1,
        1.0 / 3.0,
        -273.15,
        123_456_789.123,
        1e300,
        -1e-300,
        5e-324,
        f64::MIN_POSITIVE,
        f64::MAX,
        f64::MIN,
        f64::EPSILON,
    ] {
        let line = encode(&s, &reading("n", 0, Quantity::Flow, v, 1, 1)).unwrap();
        assert_eq!(value_of(&line).to_bits(), v.to_bits(), "{v:e} in {line}");
        let raw = line
            .split(" value=")
            .nth(1)
            .unwrap()
            .split(',')
            .next()
            .unwrap();
        assert!(
            !raw.contains(['e', 'E', 'i', 'u']),
            "floats are written plain: {raw}"
        );
    }
}

// ---- properties ----

fn finite_f64() -> impl Strategy<Value = f64> {
    use proptest::num::f64::{NEGATIVE, NORMAL, POSITIVE, SUBNORMAL, ZERO};
    POSITIVE | NEGATIVE | NORMAL | SUBNORMAL | ZERO
}

fn id() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._-]{1,32}"
}

fn arb_reading() -> impl Strategy<Value = (SiteId, Reading)> {
    (
        id(),
        id(),
        any::<u16>(),
        proptest::sample::select(Quantity::ALL),
        finite_f64(),
        0..=MAX_TIMESTAMP_MILLIS,
        any::<u32>(),
        proptest::sample::select(ALL_QUALITIES.to_vec()),
    )
        .prop_map(|(site, node, channel, quantity, value, ms, seq, quality)| {
            let reading = Reading {
                node: NodeId::new(&node).unwrap(),
                channel: ChannelId(channel),
                quantity,
                value,
                timestamp: Timestamp(ms),
                seq,
                quality,
            };
            (SiteId::new(&site).unwrap(), reading)
        })
}

fn assert_parses_back(line: &str, site: &SiteId, r: &Reading) {
    let parsed = parse_line(line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
    assert_eq!(parsed.measurement, r.quantity.key());
    let channel = r.channel.to_string();
    let tags = [
        ("channel", channel.as_str()),
        ("node", r.node.as_str()),
        ("site", site.as_str()),
        ("unit", r.quantity.canonical_unit().symbol()),
    ];
    let expected: Vec<(String, String)> = tags
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(parsed.tags, expected);
    match parsed.field("value") {
        Some(FieldValue::Float(v)) => assert_eq!(v.to_bits(), r.value.to_bits(), "{line}"),
        other => panic!("value is {other:?} in {line}"),
    }
    let flag = r.quality.hj212_flag().to_string();
    assert_eq!(parsed.field("quality"), Some(&FieldValue::Str(flag)));
    assert_eq!(
        parsed.field("seq"),
        Some(&FieldValue::Unsigned(u64::from(r.seq)))
    );
    assert_eq!(
        parsed.field("quality_code"),
        Some(&FieldValue::Unsigned(u64::from(
            r.quality.hj212_flag() as u8
        )))
    );
    assert_eq!(parsed.fields.len(), 4);
    assert_eq!(
        parsed.timestamp,
        Some(i64::try_from(r.timestamp.millis()).unwrap())
    );
    assert!(line.starts_with(&format!("{} ", series_key(site, r))));
}

proptest! {
    #[test]
    fn every_reading_encodes_to_one_line_that_parses_back(
        batch in proptest::collection::vec(arb_reading(), 1..20)
    ) {
        let mut buf = String::new();
        let outcome = encode_batch(&mut buf, batch.iter().map(|(s, r)| (s, r)));
        prop_assert_eq!(outcome.lines, batch.len());
        prop_assert!(outcome.refused.is_empty());
        prop_assert!(buf.ends_with('\n'));
        prop_assert_eq!(buf.matches('\n').count(), batch.len());
        prop_assert!(!buf.contains('\r'));
        for (line, (site, r)) in buf.split_terminator('\n').zip(&batch) {
            assert_parses_back(line, site, r);
        }
    }

    #[test]
    fn non_finite_values_are_always_refused(
        (site, mut r) in arb_reading(),
        bad in prop_oneof![Just(f64::NAN), Just(f64::INFINITY), Just(f64::NEG_INFINITY)],
    ) {
        r.value = bad;
        let mut buf = String::new();
        let err = encode_reading(&mut buf, &site, &r).unwrap_err();
        prop_assert_eq!(&err.node, &r.node);
        prop_assert_eq!(err.channel, r.channel);
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn escaped_text_parses_back_as_one_token(text in "[^\\\\\n]{0,24}") {
        let key = escape_key(&text).to_string();
        let (back, stop, _) = token(&key, &[',', '=', ' '], &[',', '=', ' ']);
        prop_assert_eq!(&back, &text);
        prop_assert_eq!(stop, None);

        let measurement = escape_measurement(&text).to_string();
        let (back, stop, _) = token(&measurement, &[',', ' '], &[',', ' ']);
        prop_assert_eq!(&back, &text);
        prop_assert_eq!(stop, None);
    }

    #[test]
    fn any_string_field_content_parses_back(text in any::<String>()) {
        let quoted = format!("\"{}\"", escape_string_field(&text));
        let (back, stop, rest) = token(&quoted[1..], &['"', '\\'], &['"']);
        prop_assert_eq!(back, text);
        prop_assert_eq!(stop, Some('"'));
        prop_assert_eq!(rest, "");
    }
}
