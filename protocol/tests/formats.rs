//! The documented formats: every example in `protocol/README.md` parses to what its prose
//! says, topics follow the scheme, the node profile decodes as its tables say, and bad input is
//! refused with an error that names the problem.

use tianzhong_protocol::convert::ReferenceConditions;
use tianzhong_protocol::frame::{FrameError, UplinkFrame};
use tianzhong_protocol::id::IdError;
use tianzhong_protocol::payload::{
    AlarmEvent, CommandKind, NodeCommand, NodeStatus, PayloadError, Telemetry,
};
use tianzhong_protocol::registers::profile::{self, FirmwareVersion, Identity, ProfileError};
use tianzhong_protocol::registers::{
    DecodeContext, DecodeError, MapError, RegisterMap, RegisterTable,
};
use tianzhong_protocol::topic::{Topic, TopicError, TopicKind};
use tianzhong_protocol::{
    AlarmLevel, BadReason, ChannelId, NodeId, Quality, Quantity, SiteId, Timestamp, UncertainReason,
};

const README: &str = include_str!("../README.md");

/// The body of the fenced block whose info string is `lang tag`.
fn example(lang: &str, tag: &str) -> &'static str {
    let fence = format!("```{lang} {tag}\n");
    let start = README
        .find(&fence)
        .unwrap_or_else(|| panic!("README has no {lang} {tag} block"))
        + fence.len();
    README[start..].split("\n```").next().unwrap().trim()
}

#[test]
fn readme_telemetry_example() {
    let t = Telemetry::from_json(example("json", "telemetry").as_bytes()).unwrap();
    assert_eq!(
        (t.seq, t.ts, t.readings.len()),
        (4711, Some(1_764_316_800_000), 3)
    );
    let node = NodeId::new("cp-gas-07").unwrap();
    let readings: Vec<_> = t
        .readings(&node, Timestamp(0), &ReferenceConditions::AMBIENT_25C)
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(readings[0].quantity, Quantity::CombustibleGas);
    assert_eq!(readings[0].value, 26.0);
    // 2.0 ppm H2S at 25 °C, 101.325 kPa: 2 × 34.076 / 24.465 = 2.786 mg/m³.
    assert!(
        (readings[1].value - 2.786).abs() < 0.001,
        "{}",
        readings[1].value
    );
    assert_eq!(readings[2].quality, Quality::Good);
    assert!(
        readings
            .iter()
            .all(|r| r.seq == 4711 && r.timestamp == Timestamp(1_764_316_800_000))
    );
}

#[test]
fn readme_status_alarm_and_command_examples() {
    let s = NodeStatus::from_json(example("json", "status").as_bytes()).unwrap();
    assert!(s.online);
    assert_eq!(s.fw.as_deref(), Some("1.0.0"));
    assert_eq!(s.alarm, Some(AlarmLevel::Yellow));
    let will = NodeStatus::from_json(example("json", "last-will").as_bytes()).unwrap();
    assert_eq!(will, NodeStatus::last_will());
    let mut buf = [0u8; 64];
    let n = NodeStatus::last_will().to_json(&mut buf).unwrap();
    assert_eq!(&buf[..n], example("json", "last-will").as_bytes());

    let a = AlarmEvent::from_json(example("json", "alarm").as_bytes()).unwrap();
    assert_eq!(
        (a.ch, a.q, a.level, a.value),
        (
            ChannelId(0),
            Quantity::CombustibleGas,
            AlarmLevel::Yellow,
            26.0
        )
    );

    let c = NodeCommand::from_json(example("json", "cmd").as_bytes()).unwrap();
    assert_eq!(
        (c.id, c.cmd, c.ch, c.value),
        (
            42,
            CommandKind::SetSampleInterval,
            Some(ChannelId(0)),
            Some(5.0)
        )
    );
}

#[test]
fn readme_frame_example() {
    let hex = example("hex", "frame");
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    let frame = UplinkFrame::decode(&bytes).unwrap();
    assert_eq!(frame.node.as_str(), "cp-gas-07");
    let got: Vec<_> = frame
        .readings()
        .map(|r| {
            (
                r.channel.0,
                r.quantity,
                r.value,
                r.seq,
                r.timestamp.0,
                r.quality,
            )
        })
        .collect();
    let ts = 1_764_316_800_000;
    assert_eq!(
        got,
        [
            (0, Quantity::CombustibleGas, 26.0, 4711, ts, Quality::Good),
            (1, Quantity::H2s, 3.1, 4711, ts, Quality::Good),
            (2, Quantity::Oxygen, 20.9, 4711, ts, Quality::Good),
        ]
    );
    // The wire format is stable: encoding the decoded frame gives the documented bytes.
    let mut buf = [0u8; tianzhong_protocol::frame::MAX_FRAME_LEN];
    assert_eq!(frame.encode(&mut buf).unwrap(), &bytes[..]);
}

#[test]
fn payload_errors_name_the_problem() {
    let v2 = br#"{"v":2,"seq":1,"readings":[]}"#;
    assert_eq!(
        Telemetry::from_json(v2),
        Err(PayloadError::UnsupportedVersion(2))
    );
    let unknown_quantity = br#"{"v":1,"seq":1,"readings":[{"ch":0,"q":"unobtainium","value":1}]}"#;
    assert!(matches!(
        Telemetry::from_json(unknown_quantity),
        Err(PayloadError::Json(_))
    ));
    let missing_seq = br#"{"v":1,"readings":[]}"#;
    assert!(
        Telemetry::from_json(missing_seq)
            .unwrap_err()
            .to_string()
            .contains("invalid JSON")
    );
    let trailing = br#"{"v":1,"online":true} x"#;
    assert_eq!(
        NodeStatus::from_json(trailing),
        Err(PayloadError::Json(
            serde_json_core::de::Error::TrailingCharacters
        ))
    );
    assert!(NodeStatus::from_json(b"{\"v\":1,\"online\":true}\r\n").is_ok());
    let bad_flag = br#"{"v":1,"seq":1,"readings":[{"ch":0,"q":"co","value":1,"quality":"Z"}]}"#;
    assert!(Telemetry::from_json(bad_flag).is_err());
    // Unknown fields are ignored: a newer device still talks to this gateway.
    let newer = br#"{"v":1,"online":true,"battery_mv":3600}"#;
    assert!(NodeStatus::from_json(newer).unwrap().online);
    // A unit that does not fit the quantity is refused per reading.
    let wrong_unit = br#"{"v":1,"seq":1,"readings":[{"ch":0,"q":"co","value":1,"unit":"m"},{"ch":1,"q":"co","value":1}]}"#;
    let t = Telemetry::from_json(wrong_unit).unwrap();
    let node = NodeId::new("n").unwrap();
    let results: Vec<_> = t
        .readings(&node, Timestamp(5), &ReferenceConditions::default())
        .collect();
    assert!(matches!(
        results[0],
        Err(PayloadError::Conversion { index: 0, .. })
    ));
    assert_eq!(results[1].as_ref().unwrap().timestamp, Timestamp(5));
    // Out-of-range values are kept and flagged, never dropped.
    let over = br#"{"v":1,"seq":1,"readings":[{"ch":0,"q":"combustible_gas","value":130}]}"#;
    let r = Telemetry::from_json(over)
        .unwrap()
        .readings(&node, Timestamp(0), &ReferenceConditions::default())
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(
        (r.value, r.quality),
        (130.0, Quality::Uncertain(UncertainReason::OutOfRange))
    );
}

#[test]
fn frame_errors_name_the_problem() {
    assert_eq!(UplinkFrame::decode(&[]), Err(FrameError::Empty));
    assert_eq!(UplinkFrame::decode(&[0]), Err(FrameError::Empty));
    assert_eq!(
        UplinkFrame::decode(&[0x02, 0x01, 0x00, 0x05]),
        Err(FrameError::Cobs)
    );
    // COBS of [01 02 03 04]: valid COBS, too short for version and CRC.
    assert_eq!(
        UplinkFrame::decode(&[0x05, 1, 2, 3, 4]),
        Err(FrameError::TooShort { len: 4 })
    );
    let mut buf = [0u8; 600];
    let bytes = UplinkFrame::new(NodeId::new("n").unwrap())
        .encode(&mut buf)
        .unwrap()
        .to_vec();
    let mut corrupted = bytes.clone();
    corrupted[3] ^= 0x10;
    assert!(matches!(
        UplinkFrame::decode(&corrupted),
        Err(FrameError::Crc { .. })
    ));
    assert!(
        UplinkFrame::decode(&corrupted)
            .unwrap_err()
            .to_string()
            .contains("CRC-32C")
    );
}

#[test]
fn topics_follow_the_scheme() {
    let t = Topic::parse("tianzhong/v1/chem-plant-1/cp-gas-07/telemetry").unwrap();
    assert_eq!(
        t,
        Topic::new(
            SiteId::new("chem-plant-1").unwrap(),
            NodeId::new("cp-gas-07").unwrap(),
            TopicKind::Telemetry
        )
    );
    assert_eq!(
        t.to_string(),
        "tianzhong/v1/chem-plant-1/cp-gas-07/telemetry"
    );
    assert_eq!(t.to_heapless().as_str(), t.to_string());
    for kind in TopicKind::ALL {
        let name = format!("tianzhong/v1/s/n/{}", kind.key());
        assert_eq!(Topic::parse(&name).unwrap().kind, kind);
        assert_eq!(kind.filter(), format!("tianzhong/v1/+/+/{}", kind.key()));
    }
    assert_eq!(
        Topic::parse("spBv1.0/g/NDATA/n"),
        Err(TopicError::WrongRoot)
    );
    assert_eq!(
        Topic::parse("tianzhong/v2/s/n/telemetry"),
        Err(TopicError::UnsupportedVersion)
    );
    assert_eq!(
        Topic::parse("tianzhong/v1/s/n"),
        Err(TopicError::TooFewLevels)
    );
    assert_eq!(
        Topic::parse("tianzhong/v1/s/n/telemetry/x"),
        Err(TopicError::TooManyLevels)
    );
    assert_eq!(
        Topic::parse("tianzhong/v1/s/n/readings"),
        Err(TopicError::UnknownKind)
    );
    assert_eq!(
        Topic::parse("tianzhong/v1//n/status"),
        Err(TopicError::Site(IdError::Empty))
    );
    assert_eq!(
        Topic::parse("tianzhong/v1/s/n+/status"),
        Err(TopicError::Node(IdError::InvalidChar { at: 1 }))
    );
}

#[test]
fn node_profile_identity_and_channel_block() {
    let identity = Identity {
        vendor: "Tianzhong".try_into().unwrap(),
        model: "TZ-GAS-3".try_into().unwrap(),
        serial: "SN0001".try_into().unwrap(),
        firmware: FirmwareVersion {
            major: 1,
            minor: 2,
            patch: 300,
        },
        hardware_revision: 2,
        channels: 3,
    };
    let regs = identity.encode();
    // Per the identity table: magic "TZ", version 1, "Ti" "an" … in the vendor registers.
    assert_eq!(&regs[..4], &[0x545A, 0x0001, 0x5469, 0x616E]);
    assert_eq!(regs[0x1A], 0x0102);
    assert_eq!(Identity::decode(&regs).unwrap(), identity);
    let mut not_ours = regs;
    not_ours[0] = 0x1234;
    assert_eq!(
        Identity::decode(&not_ours),
        Err(ProfileError::NotAProfileNode { magic: 0x1234 })
    );
    assert_eq!(
        Identity::decode(&regs[..10]),
        Err(ProfileError::TooShort {
            expected: 32,
            got: 10
        })
    );

    // One poll block of a 2-channel node, written by hand from the channel table:
    // ch0 combustible gas 12.5 %LEL (0x41480000), flag 'N'; ch1 oxygen 18.0 %vol (0x41900000),
    // flag 'D' (sensor fault).
    let mut block = vec![0u16; usize::from(profile::poll_len(2))];
    block[16..22].copy_from_slice(&[
        0x4148,
        0x0000,
        u16::from(b'N'),
        1,
        Quantity::CombustibleGas.code(),
        90,
    ]);
    block[22..28].copy_from_slice(&[
        0x4190,
        0x0000,
        u16::from(b'D'),
        0,
        Quantity::Oxygen.code(),
        82,
    ]);
    let map = profile::register_map(&[Quantity::CombustibleGas, Quantity::Oxygen]).unwrap();
    let node = NodeId::new("n1").unwrap();
    let conditions = ReferenceConditions::default();
    let ctx = DecodeContext {
        node: &node,
        timestamp: Timestamp(7),
        seq: 9,
        conditions: &conditions,
    };
    let readings: Vec<_> = map
        .decode_block(RegisterTable::Input, profile::STATUS_BLOCK, &block, ctx)
        .collect();
    assert_eq!(readings.len(), 2);
    let r0 = readings[0].1.as_ref().unwrap();
    assert_eq!((r0.value, r0.quality, r0.seq), (12.5, Quality::Good, 9));
    let r1 = readings[1].1.as_ref().unwrap();
    assert_eq!(
        (r1.value, r1.quality),
        (18.0, Quality::Bad(BadReason::SensorFault))
    );
    let d = profile::ChannelDescriptor::decode(&block[16..22]).unwrap();
    assert_eq!(
        (d.alarm, d.quantity),
        (AlarmLevel::Blue, Some(Quantity::CombustibleGas))
    );
    // A garbage quality register fails that channel only.
    block[24] = 0x0000;
    let results: Vec<_> = map
        .decode_block(RegisterTable::Input, profile::STATUS_BLOCK, &block, ctx)
        .collect();
    assert!(results[0].1.is_ok());
    assert!(matches!(results[1].1, Err(DecodeError::Quality(_))));
    // A block that stops short of a channel skips it rather than reading past the end.
    assert_eq!(
        map.decode_block(
            RegisterTable::Input,
            profile::STATUS_BLOCK,
            &block[..24],
            ctx
        )
        .count(),
        1
    );
}

#[test]
fn register_maps_load_from_configuration_and_are_checked() {
    // A third-party water-level transmitter: i16 centimetres ×0.1 at holding 40001 (address 0),
    // a float rain counter in CDAB at 2.
    let toml_like = r#"[
        {"channel":0,"quantity":"water_level","unit":"cm","table":"holding","address":0,"data_type":"i16","scale":0.1},
        {"channel":1,"quantity":"rainfall","table":"holding","address":2,"data_type":"f32","word_order":"CDAB"}
    ]"#;
    let (map, _): (RegisterMap, _) = serde_json_core::from_str(toml_like).unwrap();
    map.validate().unwrap();
    let conditions = ReferenceConditions::default();
    // 1234 → 123.4 cm → 1.234 m.
    assert_eq!(
        map.channels[0].decode_value(&[1234], &conditions).unwrap(),
        1.234
    );
    let overlapping = r#"[
        {"channel":0,"quantity":"flow","table":"input","address":10,"data_type":"f32"},
        {"channel":1,"quantity":"flow","table":"input","address":11,"data_type":"u16"}
    ]"#;
    let (map, _): (RegisterMap, _) = serde_json_core::from_str(overlapping).unwrap();
    assert_eq!(
        map.validate(),
        Err(MapError::Overlap(ChannelId(0), ChannelId(1)))
    );
    let wrong_unit = r#"[{"channel":0,"quantity":"pm2_5","unit":"ppm","table":"input","address":0,"data_type":"u16"}]"#;
    let (map, _): (RegisterMap, _) = serde_json_core::from_str(wrong_unit).unwrap();
    assert_eq!(
        map.validate(),
        Err(MapError::IncompatibleUnit(ChannelId(0)))
    );
    let past_end =
        r#"[{"channel":0,"quantity":"flow","table":"input","address":65535,"data_type":"u32"}]"#;
    let (map, _): (RegisterMap, _) = serde_json_core::from_str(past_end).unwrap();
    assert_eq!(map.validate(), Err(MapError::PastEnd(ChannelId(0))));
}

fn unhex(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn readme_firmware_update_examples() {
    use tianzhong_protocol::crc::FRAME as CRC32C;
    use tianzhong_protocol::update::{Answers, Phase, Reason, UpdateReport, UpdateRequest};

    let chunk = unhex(example("hex", "fwupdate-chunk"));
    let UpdateRequest::Chunk { index, crc, data } = UpdateRequest::decode(&chunk).unwrap() else {
        panic!("not a chunk");
    };
    assert_eq!((index, data), (300, &[0xDE, 0xAD][..]));
    assert_eq!(crc, CRC32C.checksum(data));
    assert_eq!(crc, 0x23c8_d151);

    let report = UpdateReport::decode(&unhex(example("hex", "fwstatus"))).unwrap();
    assert_eq!(
        (
            report.answers,
            report.phase,
            report.next_chunk,
            report.chunks
        ),
        (Answers::Chunk, Phase::Receiving, 5, 40)
    );
    assert_eq!(
        (report.chunk_size, report.reason(), report.trial),
        (1024, Some(Reason::OutOfOrder), false)
    );
    assert_eq!(report.running.to_string(), "1.2.300");
}
