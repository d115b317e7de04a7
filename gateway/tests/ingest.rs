//! The MQTT source's parsing, the transforms and the upstream payloads, without a broker.
//!
//! Vectors: the protocol README's example payloads and frame (which a test in the protocol
//! crate pins to the README), ppm → mg/m³ at 25 °C and 101.325 kPa (molar volume
//! 24.465 L/mol, H2S 34.08 g/mol), and the quantities' valid ranges.

use std::time::Duration;

use tianzhong_gateway::config::{Calibration, PipelineSettings};
use tianzhong_gateway::metrics::{DeviceTable, Metrics};
use tianzhong_gateway::pipeline::Record;
use tianzhong_gateway::sinks::upstream_mqtt::telemetry_messages;
use tianzhong_gateway::sources::mqtt::{Parsed, parse};
use tianzhong_gateway::transforms::Transforms;
use tianzhong_protocol::payload::Telemetry;
use tianzhong_protocol::reading::{ChannelId, Quality, Timestamp, UncertainReason};
use tianzhong_protocol::{NodeId, Quantity, Reading, SiteId, Unit};

const TELEMETRY: &str = r#"{"v":1,"seq":4711,"ts":1764316800000,"readings":[{"ch":0,"q":"combustible_gas","value":26.0,"quality":"N"},{"ch":1,"q":"h2s","value":2.0,"unit":"ppm"},{"ch":2,"q":"oxygen","value":20.9}]}"#;
const FRAME_HEX: &str = "0d010963702d6761732d303703020d0101010101393a4080c8e7cbac33e724014e010fcdcccccccccc084080c8e7cbac33e724014e02106666666666e6344080c8e7cbac33e724014effd4645000";
const NOW: u64 = 1_764_316_801_000;

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn readings(p: Parsed) -> Vec<Record> {
    match p {
        Parsed::Readings(r) => r,
        other => panic!("expected readings, got {other:?}"),
    }
}

#[test]
fn telemetry_becomes_canonical_readings_with_site_and_node_from_the_topic() {
    let r = readings(
        parse(
            "tianzhong/v1/plant-a/cp-gas-07/telemetry",
            TELEMETRY.as_bytes(),
            NOW,
        )
        .unwrap(),
    );
    assert_eq!(r.len(), 3);
    assert!(r.iter().all(|x| x.site.as_str() == "plant-a"
        && x.reading.node.as_str() == "cp-gas-07"
        && x.reading.seq == 4711
        && x.reading.timestamp == Timestamp(1_764_316_800_000)
        && x.device_time
        && x.received_ms == NOW));
    assert_eq!(r[0].reading.value, 26.0);
    // 2.0 ppm H2S at 25 °C and 101.325 kPa: 2.0 × 34.08 / 24.465 mg/m³ (1 ppm = 1.39 mg/m³
    // in the NIOSH pocket guide).
    let h2s = r[1].reading.value;
    assert!((h2s - 2.0 * 34.08 / 24.465).abs() < 1e-3, "{h2s}");
    assert_eq!(
        r[1].reading.quantity.canonical_unit(),
        Unit::MilligramPerCubicMetre
    );
    assert_eq!(r[2].reading.quality, Quality::Good);
}

#[test]
fn the_readme_frame_decodes_to_its_three_readings() {
    let r = readings(parse("tianzhong/v1/plant-a/cp-gas-07/frame", &hex(FRAME_HEX), NOW).unwrap());
    let got: Vec<(u16, Quantity, f64, u32)> = r
        .iter()
        .map(|x| {
            (
                x.reading.channel.0,
                x.reading.quantity,
                x.reading.value,
                x.reading.seq,
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (0, Quantity::CombustibleGas, 26.0, 4711),
            (1, Quantity::H2s, 3.1, 4711),
            (2, Quantity::Oxygen, 20.9, 4711),
        ]
    );
}

#[test]
fn firmware_update_traffic_is_passed_by_not_refused() {
    // A source subscribed with a wide filter (`tianzhong/#`) sees a flash's requests and the
    // node's reports: binary, not readings, and not malformed either.
    for topic in [
        "tianzhong/v1/plant-a/cp-gas-07/fwupdate",
        "tianzhong/v1/plant-a/cp-gas-07/fwstatus",
    ] {
        assert!(
            matches!(parse(topic, &[0x01, 0xAC, 0x02], NOW), Ok(Parsed::Ignored)),
            "{topic}"
        );
    }
}

#[test]
fn every_kind_of_bad_message_is_refused_with_its_reason() {
    let cases: [(&str, Vec<u8>, &str); 9] = [
        (
            "tianzhong/v1/bad site/n/telemetry",
            TELEMETRY.into(),
            "topic",
        ),
        ("tianzhong/v2/s/n/telemetry", TELEMETRY.into(), "topic"),
        (
            "tianzhong/v1/s/n/telemetry",
            b"{\"v\":1,\"seq\":".to_vec(),
            "json",
        ),
        (
            "tianzhong/v1/s/n/telemetry",
            TELEMETRY.replace("\"v\":1", "\"v\":2").into_bytes(),
            "version",
        ),
        (
            "tianzhong/v1/s/n/telemetry",
            TELEMETRY.replace("26.0", "1e999").into_bytes(),
            "not_finite",
        ),
        (
            "tianzhong/v1/s/n/telemetry",
            TELEMETRY.replace("\"ppm\"", "\"degC\"").into_bytes(),
            "unit",
        ),
        (
            "tianzhong/v1/s/n/frame",
            {
                let mut f = hex(FRAME_HEX);
                f[20] ^= 0x40;
                f
            },
            "frame",
        ),
        (
            "tianzhong/v1/s/other-node/frame",
            hex(FRAME_HEX),
            "frame_node",
        ),
        (
            "tianzhong/v1/s/n/status",
            b"{\"online\":true}".to_vec(),
            "json",
        ),
    ];
    for (topic, payload, reason) in cases {
        let r = parse(topic, &payload, NOW);
        match r {
            Err(refused) => assert_eq!(refused.reason, reason, "{topic}: {}", refused.message),
            Ok(p) => panic!("{topic} accepted: {p:?}"),
        }
    }
}

fn record(
    node: &str,
    ch: u16,
    q: Quantity,
    value: f64,
    seq: u32,
    ts: u64,
    device_time: bool,
) -> Record {
    Record {
        site: SiteId::new("site-1").unwrap(),
        reading: Reading::new(
            NodeId::new(node).unwrap(),
            ChannelId(ch),
            q,
            value,
            Timestamp(ts),
            seq,
            Quality::Good,
        )
        .unwrap(),
        received_ms: NOW,
        device_time,
    }
}

#[test]
fn transforms_restamp_skewed_clocks_calibrate_flag_range_and_drop_duplicates() {
    let metrics = Metrics::new(DeviceTable::default());
    let settings = PipelineSettings {
        max_skew: Duration::from_secs(300),
        ..PipelineSettings::default()
    };
    let calibration = Calibration {
        node: NodeId::new("gas-1").unwrap(),
        channel: ChannelId(0),
        scale: 1.0,
        offset: -0.4,
    };
    let mut t = Transforms::new(&settings, &[calibration]);
    let mut batch = vec![
        // Calibrated: 12.4 - 0.4.
        record("gas-1", 0, Quantity::CombustibleGas, 12.4, 1, NOW, true),
        // A clock from 2000: restamped to the gateway's receipt time.
        record("gas-1", 1, Quantity::Oxygen, 20.9, 1, 946_684_800_000, true),
        // 140 %LEL is past the 0–100 range: kept, flagged.
        record("gas-2", 0, Quantity::CombustibleGas, 140.0, 7, NOW, false),
        // The same (node, channel, seq) again: dropped.
        record("gas-2", 0, Quantity::CombustibleGas, 140.0, 7, NOW, false),
    ];
    let counts = t.apply(&mut batch, &metrics);
    assert_eq!(batch.len(), 3);
    assert!((batch[0].reading.value - 12.0).abs() < 1e-12);
    assert_eq!(batch[1].reading.timestamp, Timestamp(NOW));
    assert!(!batch[1].device_time);
    assert_eq!(
        batch[2].reading.quality,
        Quality::Uncertain(UncertainReason::OutOfRange)
    );
    assert_eq!(
        (counts.restamped, counts.out_of_range, counts.duplicates),
        (1, 1, 1)
    );
    assert_eq!(metrics.dropped("duplicate"), 1);
    let text = metrics.render();
    assert!(
        text.contains("tianzhong_readings_flagged_total{reason=\"clock_skew\"} 1"),
        "{text}"
    );
    // A second pass: the duplicate is remembered across batches, a new seq passes.
    let mut again = vec![
        record("gas-2", 0, Quantity::CombustibleGas, 1.0, 7, NOW, false),
        record("gas-2", 0, Quantity::CombustibleGas, 1.0, 8, NOW, false),
    ];
    t.apply(&mut again, &metrics);
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].reading.seq, 8);
}

#[test]
fn upstream_payloads_group_one_sample_each_and_parse_back_identically() {
    let batch = vec![
        record("gas-1", 0, Quantity::CombustibleGas, 12.5, 10, NOW, false),
        record("gas-1", 1, Quantity::H2s, 3.1, 10, NOW, false),
        record(
            "gas-1",
            0,
            Quantity::CombustibleGas,
            12.6,
            11,
            NOW + 1000,
            false,
        ),
        record("gas-2", 0, Quantity::Oxygen, 20.9, 10, NOW, false),
    ];
    let messages = telemetry_messages("city/sensing", &batch);
    let topics: Vec<&str> = messages.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        topics,
        vec![
            "city/sensing/tianzhong/v1/site-1/gas-1/telemetry",
            "city/sensing/tianzhong/v1/site-1/gas-1/telemetry",
            "city/sensing/tianzhong/v1/site-1/gas-2/telemetry",
        ]
    );
    // What the platform reads back is what the gateway forwarded.
    let mut back = Vec::new();
    for (topic, payload) in &messages {
        let t = Telemetry::from_json(payload).unwrap();
        assert!(
            t.readings
                .iter()
                .all(|r| r.unit.is_some() && r.quality.is_some())
        );
        let inner = topic.strip_prefix("city/sensing/").unwrap();
        back.extend(readings(parse(inner, payload, NOW).unwrap()));
    }
    let key = |r: &Record| {
        (
            r.reading.node.clone(),
            r.reading.channel,
            r.reading.seq,
            r.reading.value.to_bits(),
            r.reading.timestamp,
        )
    };
    assert_eq!(
        back.iter().map(key).collect::<Vec<_>>(),
        batch.iter().map(key).collect::<Vec<_>>()
    );
}
