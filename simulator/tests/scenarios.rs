//! The shipped scenarios: each loads, builds and tells its story inside the node cores (the
//! firmware's own alarm logic, not a check in this file, decides the alarm levels); runs repeat
//! byte for byte with the seed; and broken scenario files are reported by file, line and key.
//!
//! Everything runs in simulated time with no transports: no sockets, no sleeps.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use tianzhong_protocol::{AlarmLevel, BadReason, Quality};
use tianzhong_simulator::clock::SimClock;
use tianzhong_simulator::fleet::Fleet;
use tianzhong_simulator::scenario;
use tianzhong_simulator::spec::{BusKind, FleetSpec};

fn scenarios_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios")
}

fn shipped() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(scenarios_dir())
        .expect("simulator/scenarios exists")
        .map(|e| e.expect("readable directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

fn load(name: &str) -> FleetSpec {
    let path = scenarios_dir().join(format!("{name}.toml"));
    scenario::load(&path).unwrap_or_else(|e| panic!("{e}"))
}

fn build(spec: &FleetSpec, keep_samples: bool) -> Fleet {
    Fleet::build(spec, SimClock::new(0, 1.0), keep_samples).unwrap_or_else(|e| panic!("{e}"))
}

/// A condition on one channel of one node, as the node core sees it.
struct Probe {
    node: &'static str,
    channel: usize,
    holds: Box<dyn Fn(f32, AlarmLevel) -> bool>,
}

fn probe(
    node: &'static str,
    channel: usize,
    holds: impl Fn(f32, AlarmLevel) -> bool + 'static,
) -> Probe {
    Probe {
        node,
        channel,
        holds: Box::new(holds),
    }
}

/// A probe's first hit: simulated second, value and alarm level then.
#[derive(Clone, Copy, Debug)]
struct Hit {
    at_s: u64,
    value: f32,
    level: AlarmLevel,
}

fn reading(fleet: &Fleet, node: &str, channel: usize) -> (f32, Quality, AlarmLevel) {
    let i = fleet
        .index_of(node)
        .unwrap_or_else(|| panic!("no node {node}"));
    fleet
        .node(i)
        .core()
        .channel(channel)
        .unwrap_or_else(|| panic!("{node} has no channel {channel}"))
}

/// Steps `fleet` every `step_s` simulated seconds up to `until_s` and records when each probe
/// first holds; stops early once all have.
fn first_hits(fleet: &Fleet, until_s: u64, step_s: u64, probes: &[Probe]) -> Vec<Option<Hit>> {
    let mut hits: Vec<Option<Hit>> = vec![None; probes.len()];
    let mut t = fleet.stepped_to() / 1000;
    while t < until_s && hits.iter().any(Option::is_none) {
        t = (t + step_s).min(until_s);
        fleet.step_to(t * 1000);
        for (p, hit) in probes.iter().zip(hits.iter_mut()) {
            let (value, _, level) = reading(fleet, p.node, p.channel);
            if hit.is_none() && (p.holds)(value, level) {
                *hit = Some(Hit {
                    at_s: t,
                    value,
                    level,
                });
            }
        }
    }
    hits
}

fn hit(hits: &[Option<Hit>], i: usize, what: &str) -> Hit {
    hits[i].unwrap_or_else(|| panic!("never happened: {what}"))
}

#[test]
fn the_five_scenarios_load_build_and_read_good_values() {
    let names: Vec<String> = shipped()
        .iter()
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    for expected in [
        "air-quality",
        "building-fire",
        "chemical-plant",
        "mine",
        "river-basin",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "missing scenario {expected}: {names:?}"
        );
    }
    let mut kinds = HashSet::new();
    // Ports and serial links in use, by scenario: two scenarios must be able to run at once.
    let mut ports: Vec<(u16, String)> = Vec::new();
    let mut links: Vec<(PathBuf, String)> = Vec::new();
    for path in shipped() {
        let spec = scenario::load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            (5..=40).contains(&spec.nodes.len()),
            "{}: {} nodes",
            spec.name,
            spec.nodes.len()
        );
        let mut mine: Vec<u16> = Vec::new();
        for bus in &spec.buses {
            kinds.insert(std::mem::discriminant(&bus.kind));
            let (addr, count) = match &bus.kind {
                BusKind::ModbusTcp { listen, per_node } => {
                    let on_bus = spec.nodes.iter().filter(|n| n.bus == bus.name).count();
                    (*listen, if *per_node { on_bus } else { 1 })
                }
                BusKind::Mqtt { broker, .. } => (*broker, 1),
                BusKind::ModbusRtu { link, .. } => {
                    if let Some((_, other)) = links.iter().find(|(l, _)| l == link) {
                        panic!("{} and {other} both use {}", spec.name, link.display());
                    }
                    links.push((link.clone(), spec.name.clone()));
                    continue;
                }
            };
            assert!(addr.ip().is_loopback(), "{}: {addr}", spec.name);
            mine.extend((0..count as u16).map(|k| addr.port() + k));
        }
        for port in mine {
            if let Some((_, other)) = ports.iter().find(|(p, n)| *p == port && *n != spec.name) {
                panic!("{} and {other} both use port {port}", spec.name);
            }
            ports.push((port, spec.name.clone()));
        }
        // A minute in, every channel has been sampled at least once and every signal lies in
        // its sensor's range: nothing is flagged bad or uncertain before a fault says so.
        let fleet = build(&spec, false);
        fleet.step_to(60_000);
        assert!(fleet.truth.sample_count() > 0);
        for (i, node) in spec.nodes.iter().enumerate() {
            for ch in 0..node.channels.len() {
                let (value, quality, _) = fleet.node(i).core().channel(ch).unwrap();
                assert_eq!(
                    quality,
                    Quality::Good,
                    "{}: {} ch {ch} reads {value}",
                    spec.name,
                    node.id
                );
            }
        }
    }
    assert_eq!(
        kinds.len(),
        3,
        "the scenarios use Modbus TCP, Modbus RTU and MQTT between them"
    );
}

#[test]
fn chemical_plant_leak_spreads_from_the_leaking_detector() {
    let fleet = build(&load("chemical-plant"), false);
    let at_least = |min: AlarmLevel| move |_: f32, level: AlarmLevel| level >= min;
    let hits = first_hits(
        &fleet,
        1400,
        1,
        &[
            probe("cp-lel-05", 0, at_least(AlarmLevel::Yellow)),
            probe("cp-lel-05", 0, at_least(AlarmLevel::Red)),
            probe("cp-lel-04", 0, at_least(AlarmLevel::Yellow)),
            probe("cp-lel-06", 0, at_least(AlarmLevel::Yellow)),
            probe("cp-h2s-02", 0, at_least(AlarmLevel::Red)),
            probe("cp-o2-02", 0, at_least(AlarmLevel::Red)),
            // The second ring only sees the edge of the cloud: this one must never hit.
            probe("cp-lel-03", 0, at_least(AlarmLevel::Yellow)),
        ],
    );
    let source_yellow = hit(&hits, 0, "cp-lel-05 Yellow");
    let source_red = hit(&hits, 1, "cp-lel-05 Red");
    assert!(source_yellow.value >= 25.0, "{source_yellow:?}");
    assert!(
        source_red.value >= 50.0 && source_red.at_s > source_yellow.at_s,
        "{source_red:?}"
    );
    for (i, node) in [(2, "cp-lel-04"), (3, "cp-lel-06")] {
        let neighbour = hit(&hits, i, node);
        assert!(neighbour.value >= 25.0, "{node}: {neighbour:?}");
        assert!(
            neighbour.at_s > source_yellow.at_s,
            "{node} alarmed before the leak's detector"
        );
    }
    let h2s = hit(&hits, 4, "cp-h2s-02 Red");
    assert!(h2s.value >= 20.0, "{h2s:?}");
    let o2 = hit(&hits, 5, "cp-o2-02 oxygen deficiency");
    assert!(o2.value <= 19.5, "{o2:?}");
    assert!(hits[6].is_none(), "the second ring alarmed: {:?}", hits[6]);
    // The burnt-out bead of cp-lel-10 (a fault from 1200 s to 1500 s) is flagged by its node
    // while the fault lasts, and reads again once the detector head is replaced.
    assert_eq!(fleet.stepped_to(), 1_400_000);
    assert_eq!(
        reading(&fleet, "cp-lel-10", 0).1,
        Quality::Bad(BadReason::SensorFault)
    );
    fleet.step_to(1_510_000);
    assert_eq!(reading(&fleet, "cp-lel-10", 0).1, Quality::Good);
}

#[test]
fn mine_methane_surge_trips_orange_then_red() {
    let fleet = build(&load("mine"), false);
    let hits = first_hits(
        &fleet,
        1200,
        1,
        &[
            probe("mn-1203-t1", 0, |v, _| v >= 1.0),
            probe("mn-1203-t1", 0, |_, level| level == AlarmLevel::Orange),
            probe("mn-1203-t1", 0, |v, _| v >= 1.5),
            probe("mn-1203-t1", 0, |_, level| level == AlarmLevel::Red),
            probe("mn-1203-t2", 0, |_, level| level >= AlarmLevel::Orange),
        ],
    );
    let over_1 = hit(&hits, 0, "methane at the face over 1.0 %vol");
    let orange = hit(&hits, 1, "face methane alarm Orange");
    let over_1_5 = hit(&hits, 2, "methane at the face over 1.5 %vol");
    let red = hit(&hits, 3, "face methane alarm Red");
    // The node trips on the very sample that crosses each set point.
    assert_eq!(over_1.level, AlarmLevel::Orange, "{over_1:?}");
    assert_eq!(over_1_5.level, AlarmLevel::Red, "{over_1_5:?}");
    assert_eq!((orange.at_s, red.at_s), (over_1.at_s, over_1_5.at_s));
    assert!(orange.value >= 1.0 && orange.value < 1.5, "{orange:?}");
    assert!(red.value >= 1.5, "{red:?}");
    assert!(orange.at_s < red.at_s);
    let return_airway = hit(&hits, 4, "return airway methane alarm");
    assert!(
        return_airway.at_s > red.at_s,
        "the gas reached the return airway before the face"
    );
}

#[test]
fn river_basin_flood_wave_travels_downstream() {
    let spec = load("river-basin");
    let fleet = build(&spec, true);
    fleet.step_to(60_000);
    let gauges = ["rb-wl-01", "rb-wl-02", "rb-wl-03"];
    let before: Vec<f32> = gauges.iter().map(|g| reading(&fleet, g, 0).0).collect();
    let mut probes: Vec<Probe> = gauges
        .iter()
        .zip(&before)
        .map(|(g, base)| {
            let base = *base;
            probe(g, 0, move |v, _| v >= base + 1.0)
        })
        .collect();
    // The warning stages of Shangyuan (upstream) and Xiacheng (the city).
    probes.push(probe("rb-wl-01", 0, |v, _| v >= 3.5));
    probes.push(probe("rb-wl-03", 0, |v, _| v >= 6.5));
    let hits = first_hits(&fleet, 6 * 3600, 5, &probes);
    let rises: Vec<Hit> = gauges
        .iter()
        .enumerate()
        .map(|(i, g)| hit(&hits, i, g))
        .collect();
    assert!(
        rises[0].at_s < rises[1].at_s && rises[1].at_s < rises[2].at_s,
        "the flood wave did not travel downstream: {rises:?}"
    );
    let upstream_warning = hit(&hits, 3, "Shangyuan over its warning stage");
    let city_warning = hit(&hits, 4, "Xiacheng over its warning stage");
    assert!(upstream_warning.at_s < city_warning.at_s);
    // The storm at Shangyuan, as its tipping bucket counted it minute by minute until the rain
    // stopped: over the 100 mm in 3 h of the red rainstorm warning signal.
    fleet.step_to(fleet.stepped_to().max(4 * 3600 * 1000));
    let rain_mm: f64 = fleet
        .truth
        .samples()
        .iter()
        .filter(|s| &*s.node == "rb-rain-01" && s.channel == 0)
        .map(|s| f64::from(s.value))
        .sum();
    assert!(rain_mm >= 100.0, "rb-rain-01 counted {rain_mm} mm");
}

#[test]
fn building_fire_smoke_then_heat_then_spread() {
    let fleet = build(&load("building-fire"), false);
    // UL 268's window ends at 4 %/ft (12.5 %/m); EN 54-5 class A1 responds from 54 C.
    let smoke = |v: f32, _: AlarmLevel| v >= 12.5;
    let hits = first_hits(
        &fleet,
        1200,
        1,
        &[
            probe("bf-f3-305", 1, smoke),
            probe("bf-f3-305", 0, |v, _| v >= 54.0),
            probe("bf-f3-corr", 1, smoke),
            probe("bf-f4-stair", 1, smoke),
            probe("bf-f3-305", 2, |_, level| level == AlarmLevel::Red),
            // Quiet floors: the lower end of the window is never reached.
            probe("bf-f1-1", 1, |v, _| v >= 1.6),
            probe("bf-f6-3", 1, |v, _| v >= 1.6),
        ],
    );
    let origin_smoke = hit(&hits, 0, "smoke in 305");
    let origin_heat = hit(&hits, 1, "heat in 305");
    let corridor = hit(&hits, 2, "smoke in the third-floor corridor");
    let upstairs = hit(&hits, 3, "smoke in the fourth-floor stairwell");
    hit(&hits, 4, "CO Red in 305");
    assert!(
        origin_smoke.at_s < origin_heat.at_s,
        "a smouldering fire smokes before it heats"
    );
    assert!(origin_smoke.at_s < corridor.at_s && corridor.at_s < upstairs.at_s);
    assert!(
        hits[5].is_none() && hits[6].is_none(),
        "a quiet floor saw smoke: {hits:?}"
    );
}

#[test]
fn air_quality_episode_takes_pm25_past_iaqi_100() {
    let fleet = build(&load("air-quality"), false);
    // HJ 633-2012: 75 ug/m3 of PM2.5 is IAQI 100, the edge of "lightly polluted".
    let hits = first_hits(&fleet, 2 * 3600, 10, &[probe("aq-01", 0, |v, _| v > 75.0)]);
    let crossed = hit(&hits, 0, "PM2.5 over 75 ug/m3 at aq-01");
    assert!(
        crossed.at_s > 900,
        "the night started polluted: {crossed:?}"
    );
    let (background, _, _) = reading(&fleet, "aq-07", 0);
    assert!(
        background < 75.0,
        "the background station is in the episode too: {background}"
    );
}

#[test]
fn the_seed_alone_decides_the_samples() {
    // Every scenario over its first ten minutes, and the chemical plant over the half hour of
    // its leak; longer runs would only slow the test down.
    let minutes = |name: &str| if name == "chemical-plant" { 30 } else { 10 };
    let run = |spec: &FleetSpec| {
        let fleet = build(spec, true);
        for s in 1..=minutes(&spec.name) * 60 {
            fleet.step_to(s * 1000);
        }
        fleet.truth.samples_csv()
    };
    for path in shipped() {
        let spec = scenario::load(&path).unwrap_or_else(|e| panic!("{e}"));
        let first = run(&spec);
        assert!(
            first.lines().count() > 1000,
            "{}: {} lines",
            spec.name,
            first.lines().count()
        );
        assert!(
            first == run(&spec),
            "{}: the same seed gave different samples",
            spec.name
        );
        // As `--seed` does: only the seed changes.
        let mut reseeded = spec.clone();
        reseeded.seed = spec.seed.wrapping_add(1);
        assert!(
            first != run(&reseeded),
            "{}: another seed gave the same samples",
            spec.name
        );
    }
}

// --- Bad scenarios --------------------------------------------------------------------------

const GOOD: &str = r#"[scenario]
name = "test"
seed = 1

[[site]]
id = "s1"

[[bus]]
name = "rtu"
kind = "modbus_rtu"
link = "/tmp/tianzhong-sim/test-rtu"

[[bus]]
name = "mq"
kind = "mqtt"
broker = "127.0.0.1:18899"

[[node]]
id = "n1"
site = "s1"
bus = "rtu"
unit = 1
[[node.channel]]
quantity = "methane"
signal = [{ kind = "constant", value = 0.3 }, { kind = "noise", sigma = 0.01 }]
"#;

const FILE: &str = "scenarios/broken.toml";

fn error_of(text: &str) -> String {
    match scenario::parse(text, Path::new(FILE)) {
        Ok(_) => panic!("accepted a bad scenario:\n{text}"),
        Err(e) => e.to_string(),
    }
}

/// The 1-based line of the first line of `text` containing `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no `{needle}`"))
        + 1
}

/// The 1-based line of the `n`th (from 0) line of `text` that is exactly `line`.
fn nth_line_of(text: &str, line: &str, n: usize) -> usize {
    let found = text.lines().enumerate().filter(|(_, l)| *l == line).nth(n);
    found.unwrap_or_else(|| panic!("no {n}th `{line}`")).0 + 1
}

/// Asserts that `text` is refused with a message naming the file, the line holding `at`, the
/// key and `what`.
fn refused(text: &str, at: &str, key: &str, what: &str) {
    let message = error_of(text);
    let line = line_of(text, at);
    assert!(
        message.starts_with(&format!("{FILE}: line {line}, key `{key}`: ")),
        "{message}"
    );
    assert!(message.contains(what), "{message}");
}

fn with_node(extra: &str) -> String {
    format!("{GOOD}\n{extra}")
}

#[test]
fn the_base_of_the_broken_scenarios_is_good() {
    let spec = scenario::parse(GOOD, Path::new(FILE)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(spec.nodes.len(), 1);
    assert_eq!(spec.base_dir, Path::new("scenarios"));
}

#[test]
fn syntax_errors_name_the_line_and_key() {
    let text = GOOD.replace("name = \"test\"", "name = \"test");
    assert_eq!(line_of(&text, "name = \"test"), 2);
    let message = error_of(&text);
    assert!(
        message.starts_with("scenarios/broken.toml: line 2, key `scenario.name`:"),
        "{message}"
    );
    assert!(message.contains("TOML syntax"), "{message}");

    let text = GOOD.replace("unit = 1", "unit = = 1");
    refused(&text, "unit = = 1", "node.unit", "TOML syntax");

    // In an inline table, the key just before the error.
    let text = GOOD.replace("sigma = 0.01", "sigma = 0.0.1");
    refused(&text, "sigma = 0.0.1", "node.channel.sigma", "TOML syntax");

    // An array left open on the last line: reported on that line, under its key.
    let text = GOOD.replace("0.01 }]", "0.01 }");
    refused(&text, "signal = [", "node.channel.signal", "unclosed array");
}

#[test]
fn the_schema_example_in_the_module_docs_is_a_valid_scenario() {
    let source = include_str!("../src/scenario.rs");
    let example: String = source
        .lines()
        .skip_while(|l| *l != "//! ```toml")
        .skip(1)
        .take_while(|l| *l != "//! ```")
        .map(|l| {
            format!(
                "{}\n",
                l.trim_start_matches("//!").strip_prefix(' ').unwrap_or("")
            )
        })
        .collect();
    assert!(example.contains("[[node.channel]]"), "no example found");
    let spec =
        scenario::parse(&example, Path::new("example.toml")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(spec.nodes.len(), 4);
    assert_eq!(spec.buses.len(), 3);
    assert_eq!(spec.faults.len(), 1);
    build(&spec, false).step_to(1000);
}

#[test]
fn unknown_fields_and_wrong_types_name_the_line_and_key() {
    // A typo of `unit`: line 22 of the file.
    let text = GOOD.replace("unit = 1", "uint = 1");
    assert_eq!(line_of(&text, "uint = 1"), 22);
    let message = error_of(&text);
    assert!(
        message
            .starts_with("scenarios/broken.toml: line 22, key `node.uint`: unknown field `uint`"),
        "{message}"
    );

    refused(
        &GOOD.replace("unit = 1", "unit = \"one\""),
        "unit = \"one\"",
        "node.unit",
        "invalid type",
    );
    refused(
        &GOOD.replace("seed = 1", "seed = -1"),
        "seed = -1",
        "scenario.seed",
        "-1",
    );
    refused(
        &GOOD.replace("kind = \"mqtt\"", "kind = \"amqp\""),
        "kind = \"amqp\"",
        "bus.kind",
        "amqp",
    );
    let message = error_of(&GOOD.replace("[scenario]\nname = \"test\"\nseed = 1\n", ""));
    assert!(
        message.starts_with(&format!(
            "{FILE}: line 1, key `scenario`: missing field `scenario`"
        )),
        "{message}"
    );
    refused(
        &GOOD.replace("id = \"n1\"\n", ""),
        "[[node]]",
        "node.id",
        "missing field `id`",
    );
    // Inside a signal component: the offending key of the component, on its own line.
    let text = GOOD.replace(
        "signal = [{ kind = \"constant\", value = 0.3 }, { kind = \"noise\", sigma = 0.01 }]",
        "signal = [\n  { kind = \"constant\", value = 0.3 },\n  { kind = \"noise\", sigma = \"low\" },\n]",
    );
    refused(
        &text,
        "sigma = \"low\"",
        "node.channel.signal.sigma",
        "invalid type",
    );
    let text = GOOD.replace("kind = \"noise\"", "kind = \"noize\"");
    refused(
        &text,
        "noize",
        "node.channel.signal.kind",
        "unknown variant `noize`",
    );
    let text = GOOD.replace("sigma = 0.01", "sigma = 0.01, mean = 0.0");
    refused(
        &text,
        "mean = 0.0",
        "node.channel.signal.mean",
        "unknown field `mean`",
    );
    let text = GOOD.replace(
        "quantity = \"methane\"",
        "quantity = \"methane\"\nclamp = [0.0]",
    );
    refused(
        &text,
        "clamp = [0.0]",
        "node.channel.clamp",
        "invalid length",
    );
}

#[test]
fn references_to_unknown_sites_buses_and_quantities_are_refused() {
    refused(
        &GOOD.replace("site = \"s1\"", "site = \"s2\""),
        "site = \"s2\"",
        "node.site",
        "no [[site]] has id `s2`",
    );
    refused(
        &GOOD.replace("bus = \"rtu\"", "bus = \"rs485\""),
        "bus = \"rs485\"",
        "node.bus",
        "no [[bus]] is named `rs485`",
    );
    refused(
        &GOOD.replace("quantity = \"methane\"", "quantity = \"methan\""),
        "quantity = \"methan\"",
        "node.channel.quantity",
        "unknown quantity `methan`",
    );
    refused(
        &GOOD.replace(
            "quantity = \"methane\"",
            "quantity = \"methane\"\nsensor = \"rain_gauge\"",
        ),
        "sensor = \"rain_gauge\"",
        "node.channel.sensor",
        "cannot measure methane",
    );
    refused(
        &GOOD.replace(
            "{ kind = \"constant\", value = 0.3 }",
            "{ kind = \"replay\", file = \"no-such.csv\" }",
        ),
        "signal = [",
        "node.channel.signal",
        "no-such.csv",
    );
}

#[test]
fn ids_and_units_are_checked() {
    refused(
        &GOOD.replace("id = \"n1\"", "id = \"gas detector 1\""),
        "gas detector 1",
        "node.id",
        "invalid node id",
    );
    refused(
        &GOOD.replace("id = \"s1\"", "id = \"site/1\""),
        "site/1",
        "site.id",
        "invalid site id",
    );
    refused(
        &GOOD.replace("unit = 1", "unit = 0"),
        "unit = 0",
        "node.unit",
        "outside the Modbus unit addresses 1..=247",
    );
    refused(
        &GOOD.replace("unit = 1", "unit = 248"),
        "unit = 248",
        "node.unit",
        "1..=247",
    );
    let duplicate_id = with_node(
        "[[node]]\nid = \"n1\"\nsite = \"s1\"\nbus = \"rtu\"\nunit = 2\n[[node.channel]]\nquantity = \"co\"\nsignal = [{ kind = \"constant\", value = 1.0 }]\n",
    );
    let message = error_of(&duplicate_id);
    let second = nth_line_of(&duplicate_id, "id = \"n1\"", 1);
    assert!(
        message.contains(&format!("line {second}, key `node.id`")),
        "{message}"
    );
    assert!(
        message.contains(&format!(
            "already used on line {}",
            line_of(&duplicate_id, "id = \"n1\"")
        )),
        "{message}"
    );
    let duplicate_unit = with_node(
        "[[node]]\nid = \"n2\"\nsite = \"s1\"\nbus = \"rtu\"\nunit = 1 # clash\n[[node.channel]]\nquantity = \"co\"\nsignal = [{ kind = \"constant\", value = 1.0 }]\n",
    );
    refused(
        &duplicate_unit,
        "unit = 1 # clash",
        "node.unit",
        "unit 1 on bus `rtu` is already taken by node `n1`",
    );
    // On MQTT the unit addresses nothing, so nodes need none and may share one.
    let mqtt = with_node(
        "[[node]]\nid = \"m{n}\"\ncount = 3\nsite = \"s1\"\nbus = \"mq\"\n[[node.channel]]\nquantity = \"co\"\nsignal = [{ kind = \"constant\", value = 1.0 }]\n",
    );
    scenario::parse(&mqtt, Path::new(FILE)).unwrap_or_else(|e| panic!("{e}"));
    let missing_unit = with_node(
        "[[node]]\nid = \"n2\"\nsite = \"s1\"\nbus = \"rtu\"\n[[node.channel]]\nquantity = \"co\"\nsignal = [{ kind = \"constant\", value = 1.0 }]\n",
    );
    let message = error_of(&missing_unit);
    let header = nth_line_of(&missing_unit, "[[node]]", 1);
    assert!(
        message.starts_with(&format!("{FILE}: line {header}, key `node.unit`: ")),
        "{message}"
    );
    assert!(message.contains("need a `unit`"), "{message}");
}

#[test]
fn a_node_has_one_to_eight_channels() {
    let channel =
        "[[node.channel]]\nquantity = \"co\"\nsignal = [{ kind = \"constant\", value = 1.0 }]\n";
    let eight_more = with_node(&channel.repeat(8));
    let ninth = nth_line_of(&eight_more, "[[node.channel]]", 8);
    let message = error_of(&eight_more);
    assert!(
        message.starts_with(&format!("{FILE}: line {ninth}, key `node.channel`: ")),
        "{message}"
    );
    assert!(message.contains("at most 8 channels"), "{message}");
    let none = GOOD.split("[[node.channel]]").next().unwrap().to_owned();
    refused(&none, "[[node]]", "node.channel", "at least one");
    scenario::parse(&with_node(&channel.repeat(7)), Path::new(FILE))
        .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn only_loopback_addresses_are_accepted() {
    refused(
        &GOOD.replace("127.0.0.1:18899", "10.0.0.5:1883"),
        "10.0.0.5:1883",
        "bus.broker",
        "not a loopback address",
    );
    refused(
        &GOOD.replace("127.0.0.1:18899", "0.0.0.0:1883"),
        "0.0.0.0:1883",
        "bus.broker",
        "not a loopback",
    );
    refused(
        &GOOD.replace("127.0.0.1:18899", "localhost:1883"),
        "localhost:1883",
        "bus.broker",
        "not an IP address",
    );
    let tcp = format!(
        "{GOOD}\n[[bus]]\nname = \"tcp\"\nkind = \"modbus_tcp\"\nlisten = \"192.168.1.10:502\"\n"
    );
    refused(
        &tcp,
        "192.168.1.10:502",
        "bus.listen",
        "not a loopback address",
    );
    let clash = format!(
        "{GOOD}\n[[bus]]\nname = \"tcp\"\nkind = \"modbus_tcp\"\nlisten = \"127.0.0.1:18899\"\n"
    );
    refused(
        &clash,
        "listen = \"127.0.0.1:18899\"",
        "bus.listen",
        "bus `mq` uses",
    );
    let v6 = format!(
        "{GOOD}\n[[bus]]\nname = \"tcp\"\nkind = \"modbus_tcp\"\nlisten = \"[::1]:15999\"\n"
    );
    scenario::parse(&v6, Path::new(FILE)).unwrap_or_else(|e| panic!("{e}"));
    let misplaced = GOOD.replace(
        "broker = \"127.0.0.1:18899\"",
        "broker = \"127.0.0.1:18899\"\nlink = \"/dev/ttyS0\"",
    );
    refused(
        &misplaced,
        "link = \"/dev/ttyS0\"",
        "bus.link",
        "`link` belongs to modbus_rtu buses",
    );
}

#[test]
fn faults_must_name_a_known_node_or_bus() {
    let fault = |body: &str| format!("{GOOD}\n[[fault]]\n{body}\n");
    refused(
        &fault("node = \"n9\"\nkind = \"no_reply\""),
        "node = \"n9\"",
        "fault.node",
        "no node has id `n9`",
    );
    refused(
        &fault("bus = \"can\"\nkind = \"no_reply\""),
        "bus = \"can\"",
        "fault.bus",
        "no [[bus]] is named `can`",
    );
    refused(
        &fault("node = \"n1\"\nkind = \"slow_reply\""),
        "[[fault]]",
        "fault.delay_ms",
        "missing field `delay_ms`",
    );
    refused(
        &fault("node = \"n1\"\nkind = \"slow_reply\"\ndelay_ms = \"long\""),
        "delay_ms = \"long\"",
        "fault.delay_ms",
        "invalid type",
    );
    // A parameter of another kind of fault (here slow_reply's) is not silently dropped.
    refused(
        &fault("node = \"n1\"\nkind = \"no_reply\"\ndelay_ms = 500"),
        "delay_ms = 500",
        "fault.delay_ms",
        "a no_reply fault takes no such parameter",
    );
    refused(
        &fault("node = \"n1\"\nkind = \"meltdown\""),
        "kind = \"meltdown\"",
        "fault.kind",
        "unknown variant",
    );
    refused(
        &fault("node = \"n1\"\nkind = \"spike\"\nchannel = 3\nvalue = 9.0"),
        "channel = 3",
        "fault.channel",
        "channel 3 does not exist",
    );
    refused(
        &fault("node = \"n1\"\nkind = \"no_reply\"\nfrom_s = 60\nuntil_s = 30"),
        "until_s = 30",
        "fault.until_s",
        "must come after",
    );
    let spec = scenario::parse(
        &fault("node = \"n1\"\nkind = \"stuck_value\"\nchannel = 0\nfrom_s = 1.5\nuntil_s = 90"),
        Path::new(FILE),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let f = &spec.faults[0];
    assert_eq!((f.from_ms, f.until_ms), (1500, Some(90_000)));
}

#[test]
fn count_expands_ids_and_units() {
    let text = with_node(
        "[[node]]\nid = \"gas-{n}\"\ncount = 12\nsite = \"s1\"\nbus = \"rtu\"\nunit = 10\n[[node.channel]]\nquantity = \"co\"\nsignal = [{ kind = \"constant\", value = 1.0 }]\n",
    );
    let spec = scenario::parse(&text, Path::new(FILE)).unwrap_or_else(|e| panic!("{e}"));
    let copies: Vec<(&str, u8)> = spec
        .nodes
        .iter()
        .filter(|n| n.id.starts_with("gas-"))
        .map(|n| (n.id.as_str(), n.unit))
        .collect();
    let expected: Vec<(String, u8)> = (1..=12u8).map(|k| (format!("gas-{k:02}"), 9 + k)).collect();
    assert_eq!(
        copies,
        expected
            .iter()
            .map(|(id, u)| (id.as_str(), *u))
            .collect::<Vec<_>>()
    );

    let past_247 = text.replace("unit = 10", "unit = 240");
    refused(&past_247, "unit = 240", "node.unit", "run past unit 247");
    let no_placeholder = text.replace("gas-{n}", "gas");
    refused(&no_placeholder, "id = \"gas\"", "node.id", "needs `{n}`");
    let no_count = text.replace("count = 12\n", "");
    refused(&no_count, "gas-{n}", "node.id", "only with `count`");
}

#[test]
fn a_missing_file_is_named() {
    let path = scenarios_dir().join("no-such-scenario.toml");
    let message = scenario::load(&path).unwrap_err().to_string();
    assert!(
        message.contains("no-such-scenario.toml") && message.contains("cannot read"),
        "{message}"
    );
}
