//! The gateway configuration: good files parse to the structures they describe, the examples in
//! `deploy/` parse, and every kind of mistake is reported with the file, the line, the key and
//! the reason.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tianzhong_gateway::config::{
    self, BAUD_RATES, Config, ConfigError, DeviceKind, INFLUXDB_TOKEN_OVERRIDE, Link, Parity,
    StopBits,
};
use tianzhong_protocol::reading::ChannelId;
use tianzhong_protocol::registers::{DataType, RegisterTable, WordOrder, profile};
use tianzhong_protocol::topic::TopicKind;
use tianzhong_protocol::{NodeId, Quantity, SiteId, Unit};

const FILE: &str = "/etc/tianzhong/gateway.toml";

/// Two buses and one profile device; the tests append to it or replace lines in it.
const BASE: &str = r#"[gateway]
id = "gw-1"
data_dir = "data"

[[bus]]
name = "rtu-1"
kind = "modbus_rtu"
device = "/dev/ttyS1"
baud = 19200

[[bus]]
name = "tcp-1"
kind = "modbus_tcp"
address = "127.0.0.1:5020"

[[device]]
id = "gas-01"
site = "plant"
bus = "rtu-1"
unit = 1
poll_interval_s = 2
profile = "tianzhong"
quantities = ["methane"]
"#;

fn no_env(_: &str) -> Option<String> {
    None
}

fn parse_with(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
    config::parse(text, Path::new(FILE), env)
}

fn parse_ok(text: &str) -> Config {
    parse_with(text, &no_env).unwrap_or_else(|e| panic!("should parse, got: {e}"))
}

/// The 1-based line of the only line of `text` that contains `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    let hits: Vec<usize> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains(needle))
        .map(|(i, _)| i + 1)
        .collect();
    assert_eq!(hits.len(), 1, "`{needle}` should be on exactly one line");
    hits[0]
}

/// Asserts that `text` fails at the line holding `at`, with `key`, for a reason containing
/// `reason`, and that the message shown names all four.
#[track_caller]
fn assert_fails_with(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
    at: &str,
    key: &str,
    reason: &str,
) {
    let expected_line = line_of(text, at);
    let err = parse_with(text, env).expect_err("should be refused");
    let shown = err.to_string();
    match err {
        ConfigError::Invalid {
            file,
            line,
            key: got_key,
            message,
        } => {
            assert_eq!(file, PathBuf::from(FILE), "{shown}");
            assert_eq!(line, expected_line, "{shown}");
            assert_eq!(got_key, key, "{shown}");
            assert!(
                message.contains(reason),
                "reason `{reason}` not in: {shown}"
            );
            assert_eq!(
                shown,
                format!("{FILE}: line {line}, key `{key}`: {message}")
            );
        }
        ConfigError::Read { .. } => panic!("expected an invalid-file error, got {shown}"),
    }
}

#[track_caller]
fn assert_fails(text: &str, at: &str, key: &str, reason: &str) {
    assert_fails_with(text, &no_env, at, key, reason);
}

fn with(extra: &str) -> String {
    format!("{BASE}{extra}")
}

const FULL: &str = r#"[gateway]
id = "gw-plant-a"
data_dir = "/var/lib/tianzhong"

[[bus]]
name = "line-1"
kind = "modbus_rtu"
device = "/dev/ttyUSB0"
baud = 9600
parity = "odd"
stop_bits = 2
timeout_ms = 250
retries = 5
max_gap = 0

[[bus]]
name = "met"
kind = "modbus_tcp"
address = "[::1]:502"

[[device]]
id = "cp-gas-01"
site = "plant-a"
bus = "line-1"
unit = 17
poll_interval_s = 0.5
profile = "tianzhong"
quantities = ["combustible_gas", "h2s"]

[[device]]
id = "met-01"
site = "plant-a"
bus = "met"
unit = 1
poll_interval_s = 10

[[device.channel]]
channel = 0
quantity = "air_temperature"
unit = "degF"
table = "input"
address = 0
data_type = "i16"
scale = 0.1
offset = -40.0

[[device.channel]]
channel = 3
quantity = "wind_speed"
table = "holding"
address = 10
data_type = "f32"
word_order = "CDAB"
quality_address = 12

[mqtt_source]
broker = "broker.local:1883"
client_id = "src"
topics = ["tianzhong/v1/plant-a/+/telemetry", "tianzhong/v1/#"]

[sink.influxdb]
url = "https://influx.example.org:8086/base"
org = "city"
bucket = "sensing"
token_env = "MY_TOKEN"
batch_size = 100
flush_interval_ms = 250

[sink.upstream_mqtt]
broker = "net.example.org:8883"
client_id = "up"
topic_prefix = "city/sensing"
qos = 0
"#;

#[test]
fn a_full_configuration_parses_to_what_it_says() {
    let env = |name: &str| (name == "MY_TOKEN").then(|| "s3cret".to_owned());
    let c = parse_with(FULL, &env).unwrap_or_else(|e| panic!("{e}"));

    assert_eq!(c.gateway.id, NodeId::new("gw-plant-a").unwrap());
    assert_eq!(c.gateway.data_dir, PathBuf::from("/var/lib/tianzhong"));

    assert_eq!(c.buses.len(), 2);
    let rtu = &c.buses[0];
    assert_eq!(rtu.name, "line-1");
    assert_eq!(
        rtu.link,
        Link::Rtu {
            device: PathBuf::from("/dev/ttyUSB0"),
            baud: 9600,
            parity: Parity::Odd,
            stop_bits: StopBits::Two,
        }
    );
    assert_eq!(rtu.timeout, Duration::from_millis(250));
    assert_eq!(rtu.retries, 5);
    assert_eq!(rtu.max_gap, 0);
    assert_eq!(
        c.buses[1].link,
        Link::Tcp {
            address: "[::1]:502".to_owned()
        }
    );

    let gas = &c.devices[0];
    assert_eq!(gas.id, NodeId::new("cp-gas-01").unwrap());
    assert_eq!(gas.site, SiteId::new("plant-a").unwrap());
    assert_eq!((gas.bus.as_str(), gas.unit), ("line-1", 17));
    assert_eq!(gas.poll_interval, Duration::from_millis(500));
    let quantities = vec![Quantity::CombustibleGas, Quantity::H2s];
    assert_eq!(
        gas.kind,
        DeviceKind::Tianzhong {
            quantities: quantities.clone()
        }
    );
    assert_eq!(*gas.map, profile::register_map(&quantities).unwrap());

    let met = &c.devices[1];
    assert_eq!(met.kind, DeviceKind::Inline);
    assert_eq!(met.map.channels.len(), 2);
    let t = &met.map.channels[0];
    assert_eq!(t.channel, ChannelId(0));
    assert_eq!(t.quantity, Quantity::AirTemperature);
    assert_eq!(t.unit, Some(Unit::DegreeFahrenheit));
    assert_eq!(t.table, RegisterTable::Input);
    assert_eq!((t.address, t.data_type), (0, DataType::I16));
    assert_eq!(t.word_order, WordOrder::ABCD);
    assert_eq!((t.scale, t.offset), (0.1, -40.0));
    assert_eq!(t.quality_address, None);
    let w = &met.map.channels[1];
    assert_eq!(w.channel, ChannelId(3));
    assert_eq!(w.unit, None);
    assert_eq!(w.table, RegisterTable::Holding);
    assert_eq!((w.address, w.data_type), (10, DataType::F32));
    assert_eq!(w.word_order, WordOrder::CDAB);
    assert_eq!((w.scale, w.offset), (1.0, 0.0));
    assert_eq!(w.quality_address, Some(12));

    let m = c.mqtt_source.as_ref().unwrap();
    assert_eq!(m.broker, "broker.local:1883");
    assert_eq!(m.client_id, "src");
    assert_eq!(
        m.topics,
        ["tianzhong/v1/plant-a/+/telemetry", "tianzhong/v1/#"]
    );

    let i = c.influxdb.as_ref().unwrap();
    assert_eq!(i.url, "https://influx.example.org:8086/base");
    assert_eq!((i.org.as_str(), i.bucket.as_str()), ("city", "sensing"));
    assert_eq!(i.token.as_ref().map(|t| t.expose()), Some("s3cret"));
    assert_eq!(i.batch_size, 100);
    assert_eq!(i.flush_interval, Duration::from_millis(250));

    let u = c.upstream_mqtt.as_ref().unwrap();
    assert_eq!(u.broker, "net.example.org:8883");
    assert_eq!(u.client_id, "up");
    assert_eq!(u.topic_prefix, "city/sensing");
    assert_eq!(u.qos, 0);
}

#[test]
fn omitted_keys_take_their_documented_defaults() {
    let text = with(
        r#"
[mqtt_source]
broker = "127.0.0.1:1883"

[sink.influxdb]
url = "http://127.0.0.1:8428"
org = "o"
bucket = "b"

[sink.upstream_mqtt]
broker = "127.0.0.1:1884"
topic_prefix = "up"
"#,
    );
    let c = parse_ok(&text);
    let rtu = &c.buses[0];
    assert_eq!(
        rtu.link,
        Link::Rtu {
            device: PathBuf::from("/dev/ttyS1"),
            baud: 19200,
            parity: Parity::Even,
            stop_bits: StopBits::One,
        }
    );
    assert_eq!(rtu.timeout, Duration::from_millis(1000));
    assert_eq!(rtu.retries, 2);
    assert_eq!(rtu.max_gap, 8);
    // A relative data directory is taken relative to the file's own directory.
    assert_eq!(c.gateway.data_dir, PathBuf::from("/etc/tianzhong/data"));

    let m = c.mqtt_source.unwrap();
    assert_eq!(m.client_id, "gw-1-source");
    let defaults: Vec<String> = [
        TopicKind::Telemetry,
        TopicKind::Frame,
        TopicKind::Status,
        TopicKind::Alarm,
    ]
    .iter()
    .map(|k| k.filter().to_owned())
    .collect();
    assert_eq!(m.topics, defaults);

    let i = c.influxdb.unwrap();
    assert_eq!(i.token, None);
    assert_eq!(i.batch_size, 5000);
    assert_eq!(i.flush_interval, Duration::from_millis(1000));

    let u = c.upstream_mqtt.unwrap();
    assert_eq!(u.client_id, "gw-1-upstream");
    assert_eq!(u.qos, 1);
}

#[test]
fn the_same_unit_on_different_buses_is_fine() {
    let text = with(
        r#"
[[device]]
id = "gas-02"
site = "plant"
bus = "tcp-1"
unit = 1
poll_interval_s = 2
profile = "tianzhong"
quantities = ["co"]
"#,
    );
    let c = parse_ok(&text);
    assert_eq!(c.devices.len(), 2);
    assert_eq!((c.devices[1].bus.as_str(), c.devices[1].unit), ("tcp-1", 1));
}

const INFLUX: &str = r#"
[sink.influxdb]
url = "http://127.0.0.1:8086"
org = "o"
bucket = "b"
"#;

fn token_of(extra: &str, env: &dyn Fn(&str) -> Option<String>) -> Option<String> {
    let c = parse_with(&with(&format!("{INFLUX}{extra}")), env).unwrap_or_else(|e| panic!("{e}"));
    c.influxdb.unwrap().token.map(|t| t.expose().to_owned())
}

#[test]
fn the_influxdb_token_resolves_in_the_documented_order() {
    let both = |name: &str| match name {
        INFLUXDB_TOKEN_OVERRIDE => Some("from-override".to_owned()),
        "TOK" => Some("from-named".to_owned()),
        _ => None,
    };
    let named_only = |name: &str| (name == "TOK").then(|| "from-named".to_owned());
    let override_only =
        |name: &str| (name == INFLUXDB_TOKEN_OVERRIDE).then(|| "from-override".to_owned());
    let empty_override = |name: &str| match name {
        INFLUXDB_TOKEN_OVERRIDE => Some(String::new()),
        "TOK" => Some("from-named".to_owned()),
        _ => None,
    };

    // The override wins over `token_env`, over `token`, and even over a missing variable.
    assert_eq!(
        token_of("token_env = \"TOK\"\n", &both).as_deref(),
        Some("from-override")
    );
    assert_eq!(
        token_of("token = \"literal\"\n", &override_only).as_deref(),
        Some("from-override")
    );
    assert_eq!(
        token_of("token_env = \"UNSET\"\n", &override_only).as_deref(),
        Some("from-override")
    );
    assert_eq!(
        token_of("", &override_only).as_deref(),
        Some("from-override")
    );
    // An empty override counts as unset.
    assert_eq!(
        token_of("token_env = \"TOK\"\n", &empty_override).as_deref(),
        Some("from-named")
    );
    assert_eq!(
        token_of("token_env = \"TOK\"\n", &named_only).as_deref(),
        Some("from-named")
    );
    assert_eq!(
        token_of("token = \"literal\"\n", &no_env).as_deref(),
        Some("literal")
    );
    assert_eq!(token_of("", &no_env), None);
}

#[test]
fn the_token_never_shows_in_debug_output() {
    let c = parse_with(&with(&format!("{INFLUX}token = \"hunter2\"\n")), &no_env).unwrap();
    let shown = format!("{c:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(shown.contains("Secret(***)"), "{shown}");
}

fn deploy(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(name)
}

#[test]
fn the_deploy_examples_parse() {
    let example = deploy("gateway.example.toml");
    let text = std::fs::read_to_string(&example).unwrap();
    let env = |name: &str| (name == "INFLUXDB_TOKEN").then(|| "t".to_owned());
    let c = config::parse(&text, &example, &env).unwrap_or_else(|e| panic!("{e}"));
    // The example is meant to show every section.
    assert!(c.buses.iter().any(|b| matches!(b.link, Link::Rtu { .. })));
    assert!(c.buses.iter().any(|b| matches!(b.link, Link::Tcp { .. })));
    assert!(
        c.devices
            .iter()
            .any(|d| matches!(d.kind, DeviceKind::Tianzhong { .. }))
    );
    assert!(c.devices.iter().any(|d| d.kind == DeviceKind::Inline));
    assert!(c.mqtt_source.is_some());
    assert_eq!(
        c.influxdb.unwrap().token.map(|t| t.expose().to_owned()),
        Some("t".to_owned())
    );
    assert!(c.upstream_mqtt.is_some());

    // Without the variable, the example names it.
    let err = config::parse(&text, &example, &no_env).unwrap_err();
    assert!(err.to_string().contains("`INFLUXDB_TOKEN`"), "{err}");

    let c = config::load(&deploy("gateway.minimal.toml")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.buses.len(), 1);
    assert!(matches!(c.buses[0].link, Link::Rtu { baud: 9600, .. }));
    assert_eq!(c.devices.len(), 1);
    assert!(c.mqtt_source.is_none() && c.influxdb.is_none() && c.upstream_mqtt.is_none());
    assert!(c.local_store.is_some());

    let edge = deploy("gateway.mqtt-edge.toml");
    let text = std::fs::read_to_string(&edge).unwrap();
    let c = config::parse(&text, &edge, &env).unwrap_or_else(|e| panic!("{e}"));
    assert!(c.buses.is_empty() && c.mqtt_source.is_some() && c.influxdb.is_some());
    assert_eq!(c.pipeline.max_skew, std::time::Duration::from_secs(3600));
    assert_eq!(
        c.local_store.unwrap().retention,
        std::time::Duration::from_secs(168 * 3600)
    );
}

#[test]
fn a_missing_file_is_reported_with_its_name() {
    let err = config::load(Path::new("/nonexistent/tianzhong.toml")).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }));
    assert!(
        err.to_string()
            .starts_with("/nonexistent/tianzhong.toml: cannot read the configuration"),
        "{err}"
    );
}

// Each test below is one mistake, with the line, key and reason it must be reported with.

#[test]
fn unknown_keys_are_refused_wherever_they_are() {
    let text = BASE.replace("unit = 1\n", "unit = 1\nuntis = 3\n");
    assert_fails(&text, "untis", "device.untis", "unknown field `untis`");

    let text = with("\n[sinks.influxdb]\nurl = \"http://x\"\n");
    assert_fails(&text, "[sinks.influxdb]", "sinks", "unknown field `sinks`");

    let text = with("\n[sink.kafka]\nbrokers = \"x:9092\"\n");
    assert_fails(&text, "[sink.kafka]", "sink.kafka", "unknown field `kafka`");

    let text = with(
        r#"
[[device]]
id = "met-01"
site = "plant"
bus = "tcp-1"
unit = 2
poll_interval_s = 1
[[device.channel]]
channel = 0
quantity = "air_temperature"
table = "input"
address = 0
data_type = "i16"
scael = 0.1
"#,
    );
    assert_fails(
        &text,
        "scael",
        "device.channel.scael",
        "unknown field `scael`",
    );
}

#[test]
fn a_unit_outside_1_to_247_is_refused() {
    for bad in ["0", "248", "-1", "1000"] {
        let text = BASE.replace("unit = 1\n", &format!("unit = {bad}\n"));
        assert_fails(
            &text,
            &format!("unit = {bad}"),
            "device.unit",
            &format!("unit {bad} is not a Modbus unit address: use 1 to 247"),
        );
    }
}

#[test]
fn a_unit_taken_twice_on_one_bus_is_refused() {
    let text = with(
        r#"
[[device]]
id = "gas-02"
site = "plant"
bus = "rtu-1"
unit = 1    # again
poll_interval_s = 2
profile = "tianzhong"
quantities = ["co"]
"#,
    );
    assert_fails(
        &text,
        "# again",
        "device.unit",
        "unit 1 on bus `rtu-1` is already taken by device `gas-01` (line 20)",
    );
}

#[test]
fn a_device_on_an_undefined_bus_is_refused() {
    let text = BASE.replace("bus = \"rtu-1\"", "bus = \"rtu-9\"");
    assert_fails(
        &text,
        "rtu-9",
        "device.bus",
        "device `gas-01` names bus `rtu-9`, which is not defined; buses: rtu-1, tcp-1",
    );
}

const INLINE_DEVICE: &str = r#"
[[device]]
id = "met-01"
site = "plant"
bus = "tcp-1"
unit = 2
poll_interval_s = 1

[[device.channel]]
channel = 0
quantity = "air_temperature"
table = "input"
address = 10     # first
data_type = "f32"

[[device.channel]]
channel = 1
quantity = "relative_humidity"
table = "input"
address = 11     # second
data_type = "u16"
"#;

#[test]
fn an_overlapping_register_map_is_refused_at_the_later_channel() {
    let text = with(INLINE_DEVICE);
    let first = line_of(&text, "# first");
    assert_fails(
        &text,
        "# second",
        "device.channel.address",
        &format!("device `met-01`: registers of ch0 and ch1 overlap (ch0 is on line {first})"),
    );
    // The same addresses in different tables do not overlap.
    let text = text.replace(
        "table = \"input\"\naddress = 11",
        "table = \"holding\"\naddress = 11",
    );
    assert_eq!(parse_ok(&text).devices[1].map.channels.len(), 2);
}

#[test]
fn other_register_map_errors_name_the_device_and_the_entry() {
    let text = with(INLINE_DEVICE).replace("channel = 1\n", "channel = 0   # dup\n");
    assert_fails(
        &text,
        "# dup",
        "device.channel.channel",
        "device `met-01`: channel ch0 is mapped twice (first on line 33)",
    );

    let text = with(INLINE_DEVICE).replace(
        "quantity = \"relative_humidity\"\n",
        "quantity = \"relative_humidity\"\nunit = \"m\"   # wrong\n",
    );
    let text = text.replace("address = 11", "address = 20");
    assert_fails(
        &text,
        "# wrong",
        "device.channel.unit",
        "device `met-01`: ch1: unit cannot be converted",
    );

    let text = with(INLINE_DEVICE)
        .replace("address = 11", "address = 20")
        .replace(
            "data_type = \"u16\"\n",
            "data_type = \"u16\"\nscale = 0.0\n",
        );
    assert_fails(
        &text,
        "scale = 0.0",
        "device.channel.scale",
        "scale must be non-zero and finite",
    );

    let text = with(INLINE_DEVICE)
        .replace(
            "address = 10     # first\n",
            "address = 10     # first\nquality_address = 300\n",
        )
        .replace("address = 11", "address = 20");
    assert_fails(
        &text,
        "quality_address = 300",
        "device.channel.quality_address",
        "device `met-01`: input registers 0x000A..0x012D of ch0 (291 registers) cannot be read in one request of at most 125",
    );

    let text = with(INLINE_DEVICE).replace("address = 10 ", "address = 65535 ");
    assert_fails(
        &text,
        "address = 65535",
        "device.channel.address",
        "run past address 65535",
    );
}

#[test]
fn a_baud_rate_outside_the_standard_set_is_refused() {
    let text = BASE.replace("baud = 19200", "baud = 19000");
    assert_fails(
        &text,
        "baud = 19000",
        "bus.baud",
        &format!("19000 is not a standard baud rate; use one of {BAUD_RATES:?}"),
    );

    let text = BASE.replace("baud = 19200\n", "");
    assert_fails(
        &text,
        "kind = \"modbus_rtu\"",
        "bus.baud",
        "modbus_rtu bus `rtu-1` needs `baud`",
    );
}

#[test]
fn serial_keys_on_a_tcp_bus_are_refused() {
    let text = BASE.replace(
        "address = \"127.0.0.1:5020\"\n",
        "address = \"127.0.0.1:5020\"\nparity = \"none\"\n",
    );
    assert_fails(
        &text,
        "parity",
        "bus.parity",
        "`parity` applies only to modbus_rtu buses; bus `tcp-1` is modbus_tcp",
    );
}

#[test]
fn bad_serial_settings_are_refused() {
    let text = BASE.replace("baud = 19200\n", "baud = 19200\nparity = \"mark\"\n");
    assert_fails(&text, "mark", "bus.parity", "unknown variant `mark`");

    let text = BASE.replace("baud = 19200\n", "baud = 19200\nstop_bits = 3\n");
    assert_fails(
        &text,
        "stop_bits",
        "bus.stop_bits",
        "stop bits are 1 or 2, not 3",
    );

    let text = BASE.replace("kind = \"modbus_rtu\"", "kind = \"modbus_udp\"");
    assert_fails(
        &text,
        "modbus_udp",
        "bus.kind",
        "unknown variant `modbus_udp`",
    );
}

#[test]
fn a_missing_environment_variable_is_named() {
    let text = with(&format!("{INFLUX}token_env = \"PLANT_A_INFLUX\"\n"));
    assert_fails(
        &text,
        "token_env",
        "sink.influxdb.token_env",
        "environment variable `PLANT_A_INFLUX` is not set or is empty",
    );
    // Set but empty is as good as missing: an empty token would only fail later, as a 401.
    let empty = |name: &str| (name == "PLANT_A_INFLUX").then(String::new);
    assert_fails_with(
        &text,
        &empty,
        "token_env",
        "sink.influxdb.token_env",
        "`PLANT_A_INFLUX` is not set or is empty",
    );
}

#[test]
fn a_token_given_twice_is_refused() {
    let text = with(&format!("{INFLUX}token = \"abc\"\ntoken_env = \"TOK\"\n"));
    assert_fails(
        &text,
        "token_env",
        "sink.influxdb.token_env",
        "give either `token` or `token_env`, not both",
    );
}

#[test]
fn malformed_toml_is_reported_at_its_line_and_key() {
    let text = BASE.replace("site = \"plant\"", "site = \"plant");
    assert_fails(&text, "site = \"plant", "device.site", "TOML syntax");

    let text = BASE.replace("poll_interval_s = 2", "poll_interval_s = ");
    assert_fails(
        &text,
        "poll_interval_s",
        "device.poll_interval_s",
        "TOML syntax",
    );

    let text = BASE.replace(
        "[[bus]]\nname = \"tcp-1\"",
        "[[bus]   # unclosed\nname = \"tcp-1\"",
    );
    assert_fails(&text, "# unclosed", "bus", "TOML syntax");
}

#[test]
fn a_value_of_the_wrong_type_is_refused() {
    let text = BASE.replace("unit = 1\n", "unit = \"one\"\n");
    assert_fails(&text, "unit = \"one\"", "device.unit", "invalid type");

    let text = BASE.replace("[\"methane\"]", "[\"methane\", \"unobtainium\"]");
    assert_fails(
        &text,
        "unobtainium",
        "device.quantities",
        "unknown variant `unobtainium`",
    );
}

#[test]
fn ids_are_held_to_the_protocol_rules() {
    let text = BASE.replace("id = \"gas-01\"", "id = \"gas/01\"");
    assert_fails(&text, "gas/01", "device.id", "at byte 3");

    let text = BASE.replace("site = \"plant\"", "site = \"plant a\"");
    assert_fails(&text, "plant a", "device.site", "at byte 5");

    let text = BASE.replace("id = \"gw-1\"", "id = \"\"");
    assert_fails(&text, "id = \"\"", "gateway.id", "id is empty");

    let text = with(
        r#"
[[device]]
id = "gas-01"
site = "plant"
bus = "tcp-1"
unit = 3
poll_interval_s = 2
profile = "tianzhong"
quantities = ["co"]   # twice
"#,
    );
    let text = text.replacen(
        "id = \"gas-01\"\nsite = \"plant\"\nbus = \"tcp-1\"",
        "id = \"gas-01\"  # second\nsite = \"plant\"\nbus = \"tcp-1\"",
        1,
    );
    assert_fails(
        &text,
        "# second",
        "device.id",
        "device `gas-01` is already defined on line 17",
    );
}

#[test]
fn intervals_must_be_above_zero() {
    for bad in ["0", "-2", "0.0"] {
        let text = BASE.replace("poll_interval_s = 2", &format!("poll_interval_s = {bad}"));
        assert_fails(
            &text,
            "poll_interval_s",
            "device.poll_interval_s",
            "must be a finite number above 0",
        );
    }

    let text = BASE.replace("baud = 19200\n", "baud = 19200\ntimeout_ms = 0\n");
    assert_fails(
        &text,
        "timeout_ms",
        "bus.timeout_ms",
        "0 is out of range: must be at least 1",
    );

    let text = with(&format!("{INFLUX}flush_interval_ms = -5\n"));
    assert_fails(
        &text,
        "flush_interval_ms",
        "sink.influxdb.flush_interval_ms",
        "-5 is out of range",
    );
}

#[test]
fn urls_and_brokers_must_be_usable() {
    for (url, reason) in [
        ("ftp://influx:8086", "is not an http:// or https:// URL"),
        ("127.0.0.1:8086", "is not an http:// or https:// URL"),
        ("http://", "has no host"),
        ("http://:8086/", "has no host"),
        ("http://influx:80x6", "port that is not 1 to 65535"),
        ("http://user:pw@influx", "carries credentials"),
        ("http://influx host", "white space"),
    ] {
        let text = with(&INFLUX.replace("http://127.0.0.1:8086", url));
        assert_fails(&text, "url =", "sink.influxdb.url", reason);
    }

    let text = with("\n[mqtt_source]\nbroker = \"localhost\"\n");
    assert_fails(&text, "broker", "mqtt_source.broker", "is not host:port");

    let text = BASE.replace("127.0.0.1:5020", "127.0.0.1:0");
    assert_fails(&text, "127.0.0.1:0", "bus.address", "is not a port");
}

#[test]
fn mqtt_settings_are_checked() {
    let text = with("\n[mqtt_source]\nbroker = \"localhost:1883\"\ntopics = [\"a/#/b\"]\n");
    assert_fails(
        &text,
        "topics",
        "mqtt_source.topics",
        "`#` must be a whole level and the last one",
    );

    let text = with(
        "\n[sink.upstream_mqtt]\nbroker = \"localhost:1883\"\ntopic_prefix = \"city\"\nqos = 3\n",
    );
    assert_fails(
        &text,
        "qos",
        "sink.upstream_mqtt.qos",
        "3 is out of range: must be 0 to 2",
    );

    let text =
        with("\n[sink.upstream_mqtt]\nbroker = \"localhost:1883\"\ntopic_prefix = \"city/\"\n");
    assert_fails(
        &text,
        "topic_prefix",
        "sink.upstream_mqtt.topic_prefix",
        "no empty levels",
    );
}

#[test]
fn a_device_needs_exactly_one_kind_of_register_map() {
    let text = BASE.replace("profile = \"tianzhong\"\nquantities = [\"methane\"]\n", "");
    assert_fails(
        &text,
        "[[device]]",
        "device",
        "device `gas-01` has no register map",
    );

    let text = with(
        "[[device.channel]]\nchannel = 0\nquantity = \"methane\"\ntable = \"input\"\naddress = 0\ndata_type = \"f32\"\n",
    );
    assert_fails(
        &text,
        "profile",
        "device.profile",
        "gives both `profile` and [[device.channel]] entries",
    );

    let text = BASE.replace("profile = \"tianzhong\"", "profile = \"acme\"");
    assert_fails(&text, "acme", "device.profile", "unknown profile `acme`");

    let text = BASE.replace("quantities = [\"methane\"]", "quantities = []");
    assert_fails(
        &text,
        "quantities",
        "device.quantities",
        "lists no quantities",
    );
}

#[test]
fn structural_mistakes_are_refused() {
    let text = BASE.replace("[gateway]\nid = \"gw-1\"\ndata_dir = \"data\"\n", "");
    let err = parse_with(&text, &no_env).unwrap_err();
    assert!(
        matches!(&err, ConfigError::Invalid { key, message, .. }
            if key == "gateway" && message.contains("missing field `gateway`")),
        "{err}"
    );

    let text = BASE.replace("site = \"plant\"\n", "");
    assert_fails(&text, "[[device]]", "device.site", "missing field `site`");

    let text = BASE.replace("name = \"tcp-1\"", "name = \"rtu-1\"   # taken");
    assert_fails(
        &text,
        "# taken",
        "bus.name",
        "bus `rtu-1` is already defined on line 6",
    );

    let text = with(
        "\n[[bus]]\nname = \"rtu-2\"\nkind = \"modbus_rtu\"\ndevice = \"/dev/ttyS1\"   # shared\nbaud = 9600\n",
    );
    assert_fails(
        &text,
        "# shared",
        "bus.device",
        "serial device `/dev/ttyS1` is already used by bus `rtu-1` (line 6)",
    );

    let text = "[gateway]\nid = \"gw-1\"   # alone\ndata_dir = \"/d\"\n";
    assert_fails(
        text,
        "# alone",
        "gateway",
        "the gateway has nothing to read",
    );
}

#[test]
fn pipeline_calibration_store_and_http_settings_are_checked() {
    let c = parse_ok(&with(
        "\n[pipeline]\nqueue_batches = 8\nmax_skew_s = 60\ndedup_window = 64\n\n[[calibration]]\nnode = \"gas-01\"\nchannel = 0\nscale = 1.02\noffset = -0.4\n\n[sink.local_store]\nretention_hours = 12\n",
    ));
    assert_eq!(c.pipeline.queue_batches, 8);
    assert_eq!(c.pipeline.max_skew, std::time::Duration::from_secs(60));
    assert_eq!(c.pipeline.dedup_window, 64);
    assert_eq!(c.calibrations.len(), 1);
    assert_eq!(
        (c.calibrations[0].scale, c.calibrations[0].offset),
        (1.02, -0.4)
    );
    assert_eq!(
        c.local_store.unwrap().retention,
        std::time::Duration::from_secs(12 * 3600)
    );
    // Defaults: metrics on loopback, the local store on.
    let c = parse_ok(BASE);
    assert_eq!(
        c.gateway.http_listen,
        Some("127.0.0.1:9480".parse().unwrap())
    );
    assert!(c.local_store.is_some());
    let c = parse_ok(&with("\n[sink.local_store]\nenabled = false\n"));
    assert!(c.local_store.is_none());
    let off = BASE.replace(
        "data_dir = \"data\"",
        "data_dir = \"data\"\nhttp_listen = \"off\"",
    );
    assert_eq!(parse_ok(&off).gateway.http_listen, None);

    let bad_http = BASE.replace(
        "data_dir = \"data\"",
        "data_dir = \"data\"\nhttp_listen = \"localhost\"",
    );
    assert_fails(
        &bad_http,
        "http_listen",
        "gateway.http_listen",
        "not an address:port",
    );
    assert_fails(
        &with("\n[pipeline]\nqueue_batches = 0\n"),
        "queue_batches",
        "pipeline.queue_batches",
        "1 to 65536",
    );
    assert_fails(
        &with("\n[pipeline]\nmax_skew_s = -1\n"),
        "max_skew_s",
        "pipeline.max_skew_s",
        "more than 0",
    );
    assert_fails(
        &with("\n[[calibration]]\nnode = \"gas-01\"\nchannel = 0\nscale = 0\n"),
        "scale = 0",
        "calibration.scale",
        "not 0",
    );
    assert_fails(
        &with("\n[[calibration]]\nnode = \"gas-01\"\nchannel = 99\n"),
        "channel = 99",
        "calibration.channel",
        "a channel is 0 to 63",
    );
    assert_fails(
        &with("\n[sink.local_store]\nretention_hours = 0\n"),
        "retention_hours",
        "sink.local_store.retention_hours",
        "more than 0",
    );
}

#[test]
fn node_groups_parse_and_a_node_in_two_groups_is_refused() {
    let ok = parse_ok(&with(
        "[alarms]\n[alarms.groups]\n\"gas-detector\" = [\"gas-01\", \"gas-02\"]\n\"coal-t2\" = [\"mine-07\"]\n",
    ));
    let groups: Vec<(&str, Vec<&str>)> = ok
        .node_groups
        .iter()
        .map(|(g, n)| (g.as_str(), n.iter().map(|n| n.as_str()).collect()))
        .collect();
    assert_eq!(
        groups,
        vec![
            ("coal-t2", vec!["mine-07"]),
            ("gas-detector", vec!["gas-01", "gas-02"])
        ]
    );
    assert!(parse_ok(&with("")).node_groups.is_empty());
    assert_fails(
        &with("[alarms.groups]\n\"a\" = [\"gas-01\"]\n\"b\" = [\"gas-01\"]\n"),
        "[alarms.groups]",
        "alarms.groups.b",
        "already in group `a`",
    );
    assert_fails(
        &with("[alarms.groups]\n\"a\" = \"gas-01\"\n"),
        "[alarms.groups]",
        "alarms.groups.a",
        "list of node ids",
    );
    assert_fails(
        &with("[alarms.groups]\n\"a\" = [\"bad id with spaces\"]\n"),
        "[alarms.groups]",
        "alarms.groups.a",
        "bad id with spaces",
    );
}

#[test]
fn firmware_keys_and_device_models_are_read_and_checked() {
    use tianzhong_gateway::firmware_cli::{KeyKind, encode_key};
    let dir = tempfile::tempdir().unwrap();
    let key = [7u8; 32];
    let path = dir.path().join("fw.key.pub");
    std::fs::write(&path, encode_key(KeyKind::Public, &key)).unwrap();
    let private = dir.path().join("fw.key");
    std::fs::write(&private, encode_key(KeyKind::Private, &key)).unwrap();
    let text = format!(
        "{}model = \"TZ-GD100\"\n\n[firmware]\ntrusted_keys = [\"{}\", \"{}\"]\n",
        BASE,
        path.display(),
        path.display()
    );
    let c = parse_ok(&text);
    assert_eq!(c.trusted_keys, vec![key], "the same key once");
    assert_eq!(c.devices[0].model.as_deref(), Some("TZ-GD100"));
    assert!(parse_ok(BASE).trusted_keys.is_empty());
    assert_eq!(parse_ok(BASE).devices[0].model, None);

    let missing = format!("{BASE}\n[firmware]\ntrusted_keys = [\"/nonexistent/k.pub\"]\n");
    assert_fails(
        &missing,
        "trusted_keys",
        "firmware.trusted_keys",
        "/nonexistent/k.pub",
    );
    let wrong_kind = format!(
        "{BASE}\n[firmware]\ntrusted_keys = [\"{}\"]\n",
        private.display()
    );
    assert_fails(
        &wrong_kind,
        "trusted_keys",
        "firmware.trusted_keys",
        "holds a private key",
    );
    let bad_model = format!("{BASE}model = \"TZ GD100 with a very long name\"\n");
    assert_fails(
        &bad_model,
        "model =",
        "device.model",
        "not a hardware model",
    );
}

#[test]
fn the_outbox_keeps_the_free_space_it_is_told_to() {
    let c = parse_ok(&with("\n[outbox]\nmax_mb = 64\nmin_free_mb = 8\n"));
    let o = c.outbox.expect("outbox on");
    assert_eq!(o.max_bytes, 64 << 20);
    assert_eq!(o.min_free_bytes, Some(8 << 20));
    // Unset: the outbox's own default (1/32 of the bound, 4 to 64 MiB) applies.
    let c = parse_ok(&with("\n[outbox]\nmax_mb = 64\n"));
    assert_eq!(c.outbox.expect("outbox on").min_free_bytes, None);
    let text = with("\n[outbox]\nmin_free_mb = -1\n");
    assert_fails(
        &text,
        "min_free_mb = -1",
        "outbox.min_free_mb",
        "a size in MiB from 0 to 1048576",
    );
}
