//! Property tests: what goes out comes back, and no input makes a decoder panic.

use proptest::prelude::*;

use tianzhong_protocol::convert::ReferenceConditions;
use tianzhong_protocol::frame::{FrameError, MAX_FRAME_LEN, MAX_FRAME_READINGS, UplinkFrame};
use tianzhong_protocol::payload::{AlarmEvent, NodeCommand, NodeStatus, Telemetry, TelemetryValue};
use tianzhong_protocol::reading::ALL_QUALITIES;
use tianzhong_protocol::registers::profile::{self, Identity, Status};
use tianzhong_protocol::registers::{
    ChannelMap, DataType, RegisterTable, WordOrder, decode_raw, encode_raw,
};
use tianzhong_protocol::topic::Topic;
use tianzhong_protocol::{ChannelId, NodeId, Quality, Quantity, Reading, Timestamp, Unit};

fn node_id() -> impl Strategy<Value = NodeId> {
    "[A-Za-z0-9_.-]{1,32}".prop_map(|s| NodeId::new(&s).unwrap())
}

fn quantity() -> impl Strategy<Value = Quantity> {
    prop::sample::select(Quantity::ALL)
}

fn quality() -> impl Strategy<Value = Quality> {
    prop::sample::select(&ALL_QUALITIES[..])
}

fn finite() -> impl Strategy<Value = f64> {
    prop::num::f64::NORMAL | prop::num::f64::SUBNORMAL | prop::num::f64::ZERO
}

prop_compose! {
    fn reading()(node in node_id(), ch in any::<u16>(), q in quantity(), value in finite(),
                 ts in any::<u64>(), seq in any::<u32>(), quality in quality()) -> Reading {
        Reading::new(node, ChannelId(ch), q, value, Timestamp(ts), seq, quality).unwrap()
    }
}

fn frame() -> impl Strategy<Value = UplinkFrame> {
    (
        node_id(),
        prop::collection::vec(reading(), 0..=MAX_FRAME_READINGS),
    )
        .prop_map(|(node, rs)| {
            let mut f = UplinkFrame::new(node.clone());
            for r in rs {
                f.push(&Reading {
                    node: node.clone(),
                    ..r
                })
                .unwrap();
            }
            f
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn readings_round_trip_through_postcard(r in reading()) {
        let bytes = postcard::to_allocvec(&r).unwrap();
        let back: Reading = postcard::from_bytes(&bytes).unwrap();
        prop_assert_eq!(back, r);
    }

    #[test]
    fn frames_round_trip_and_hold_no_zero_before_the_end(f in frame()) {
        let mut buf = [0u8; MAX_FRAME_LEN];
        let bytes = f.encode(&mut buf).unwrap();
        prop_assert_eq!(bytes.last(), Some(&0));
        prop_assert!(!bytes[..bytes.len() - 1].contains(&0));
        let back = UplinkFrame::decode(bytes).unwrap();
        let readings: Vec<Reading> = back.readings().collect();
        let original: Vec<Reading> = f.readings().collect();
        prop_assert_eq!(readings, original);
        prop_assert_eq!(back, f);
    }

    #[test]
    fn a_flipped_bit_in_a_frame_is_always_caught(f in frame(), at in any::<prop::sample::Index>(), bit in 0u8..8) {
        let mut buf = [0u8; MAX_FRAME_LEN];
        let mut bytes = f.encode(&mut buf).unwrap().to_vec();
        let last = bytes.len() - 1; // keep the delimiter; corrupt the frame itself
        bytes[at.index(last)] ^= 1 << bit;
        prop_assert!(UplinkFrame::decode(&bytes).is_err());
    }

    #[test]
    fn arbitrary_bytes_never_panic_a_frame_decoder(bytes in prop::collection::vec(any::<u8>(), 0..700)) {
        if let Err(e) = UplinkFrame::decode(&bytes) {
            prop_assert!(!e.to_string().is_empty());
        }
    }

    #[test]
    fn arbitrary_cobs_wrapped_bytes_reach_the_crc_check_or_body_check(raw in prop::collection::vec(any::<u8>(), 0..600)) {
        // Valid COBS around junk: the decoder must get past COBS and say what else is wrong.
        let mut enc = vec![0u8; cobs::max_encoding_length(raw.len())];
        let n = cobs::encode(&raw, &mut enc);
        match UplinkFrame::decode(&enc[..n]) {
            Ok(_) => {}
            Err(FrameError::Cobs) => prop_assert!(false, "valid COBS refused"),
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    #[test]
    fn telemetry_round_trips_through_json(seq in any::<u32>(), ts in prop::option::of(any::<u64>()),
            values in prop::collection::vec((any::<u16>(), quantity(), finite(), prop::option::of(quality())), 0..8)) {
        let readings = values.iter().map(|&(ch, q, value, quality)| TelemetryValue {
            ch: ChannelId(ch), q, value, unit: Some(q.canonical_unit()), quality,
        }).collect();
        let t = Telemetry { v: 1, seq, ts, readings };
        let mut buf = vec![0u8; 4096];
        let n = t.to_json(&mut buf).unwrap();
        let back = Telemetry::from_json(&buf[..n]).unwrap();
        prop_assert_eq!(&back, &t);
        // Through to readings: canonical units pass unchanged.
        let node = NodeId::new("n1").unwrap();
        let conditions = ReferenceConditions::default();
        for (r, v) in back.readings(&node, Timestamp(0), &conditions).zip(&t.readings) {
            let r = r.unwrap();
            prop_assert_eq!(r.value, v.value);
            prop_assert_eq!(r.seq, seq);
            prop_assert_eq!(r.timestamp, Timestamp(ts.unwrap_or(0)));
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_json_decoders(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        for msg in [
            Telemetry::from_json(&bytes).err().map(|e| e.to_string()),
            NodeStatus::from_json(&bytes).err().map(|e| e.to_string()),
            AlarmEvent::from_json(&bytes).err().map(|e| e.to_string()),
            NodeCommand::from_json(&bytes).err().map(|e| e.to_string()),
        ].into_iter().flatten() {
            prop_assert!(!msg.is_empty());
        }
    }

    #[test]
    fn json_like_junk_never_panics(s in r#"\{("[a-z]{1,4}":(-?[0-9.e]{1,8}|"[A-Za-z_%/0-9]{0,12}"|\[\{.{0,20}\}\]|true|null),?){0,6}\}"#) {
        let _ = Telemetry::from_json(s.as_bytes());
        let _ = NodeStatus::from_json(s.as_bytes());
    }

    #[test]
    fn arbitrary_topics_never_panic(s in ".{0,120}") {
        if let Ok(t) = Topic::parse(&s) {
            prop_assert_eq!(t.to_string(), s);
        }
    }

    #[test]
    fn raw_registers_round_trip(
        data_type in prop::sample::select(&[DataType::U16, DataType::I16, DataType::U32, DataType::I32, DataType::F32][..]),
        order in prop::sample::select(&[WordOrder::ABCD, WordOrder::CDAB, WordOrder::BADC, WordOrder::DCBA][..]),
        regs in prop::array::uniform2(any::<u16>()),
    ) {
        let regs = &regs[..usize::from(data_type.registers())];
        match decode_raw(data_type, order, regs) {
            Ok(value) => {
                let mut out = [0u16; 2];
                let out = &mut out[..regs.len()];
                encode_raw(data_type, order, value, out).unwrap();
                if data_type == DataType::F32 {
                    // -0.0 and 0.0 compare equal but differ in bits; compare values.
                    prop_assert_eq!(decode_raw(data_type, order, out).unwrap(), value);
                } else {
                    prop_assert_eq!(&*out, regs);
                }
            }
            Err(e) => prop_assert!(data_type == DataType::F32 && !e.to_string().is_empty()),
        }
    }

    #[test]
    fn arbitrary_register_blocks_never_panic_profile_decoders(regs in prop::collection::vec(any::<u16>(), 0..40)) {
        let _ = Identity::decode(&regs).map_err(|e| e.to_string());
        let _ = Status::decode(&regs).map_err(|e| e.to_string());
    }

    #[test]
    fn scaled_channels_round_trip_within_one_step(value in -3000.0f64..3000.0, scale_exp in 0u32..3) {
        // A water level reported in cm as i16 with scale 10^-e: decode(encode(v)) is within
        // half a step of v.
        let scale = 10f64.powi(-(scale_exp as i32));
        let mut map = ChannelMap::new(ChannelId(0), Quantity::WaterLevel, RegisterTable::Holding, 0, DataType::I32);
        map.unit = Some(Unit::Centimetre);
        map.scale = scale;
        let conditions = ReferenceConditions::default();
        let mut regs = [0u16; 2];
        map.encode_value(value, &conditions, &mut regs).unwrap();
        let back = map.decode_value(&regs, &conditions).unwrap();
        prop_assert!((back - value).abs() <= scale / 100.0 / 2.0 + 1e-12, "{} -> {}", value, back);
    }

    #[test]
    fn profile_blocks_round_trip(uptime in any::<u32>(), seq in any::<u32>(), flags in any::<u16>(), level in 0u16..5) {
        let status = Status {
            flags: profile::StatusFlags(flags),
            highest_alarm: tianzhong_protocol::AlarmLevel::from_code(level).unwrap(),
            outputs: flags.rotate_left(3),
            reset_reason: profile::ResetReason::Watchdog,
            uptime_s: uptime, seq, reset_count: 3, crc_errors: 4, sensor_errors: 5,
        };
        prop_assert_eq!(Status::decode(&status.encode()).unwrap(), status);
    }
}
