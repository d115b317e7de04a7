//! CRC-16/MODBUS and register decoding against published vectors.
//!
//! `vectors/modbus_vectors.txt` is a verbatim copy of `shared/reference/modbus_vectors.txt`
//! (frames from simplymodbus.ca, the Modbus application protocol spec and public test suites).
//! Word-order expectations were computed independently with Python's `struct.pack('>f', ...)`
//! and rearranged by hand per the order's definition.

use tianzhong_protocol::crc::{RtuCrcError, check_rtu_adu, modbus_crc16, rtu_crc_bytes};
use tianzhong_protocol::registers::{DataType, DecodeError, WordOrder, decode_raw, encode_raw};

const VECTORS: &str = include_str!("vectors/modbus_vectors.txt");

fn frames() -> Vec<(Vec<u8>, String)> {
    VECTORS
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (hex, comment) = l.split_once('\t').unwrap_or((l, ""));
            let bytes = hex
                .split_whitespace()
                .map(|b| u8::from_str_radix(b, 16).expect("hex byte in vector file"))
                .collect();
            (bytes, comment.to_owned())
        })
        .collect()
}

#[test]
fn crc_check_value() {
    // Catalogue check value of CRC-16/MODBUS (modbus.md).
    assert_eq!(modbus_crc16(b"123456789"), 0x4B37);
}

#[test]
fn every_reference_frame_has_a_valid_crc() {
    let frames = frames();
    assert_eq!(frames.len(), 13, "the vector file lists 13 frames");
    for (frame, comment) in &frames {
        let (body, crc) = frame.split_at(frame.len() - 2);
        assert_eq!(rtu_crc_bytes(body), [crc[0], crc[1]], "{comment}");
        assert_eq!(check_rtu_adu(frame), Ok(body), "{comment}");
        // The CRC over a whole frame including its CRC is zero (modbus.md).
        assert_eq!(modbus_crc16(frame), 0, "{comment}");
    }
}

#[test]
fn a_corrupted_reference_frame_is_refused_with_both_crcs() {
    for (frame, comment) in frames() {
        for i in 0..frame.len() {
            let mut bad = frame.clone();
            bad[i] ^= 0x01;
            match check_rtu_adu(&bad) {
                Err(RtuCrcError::Mismatch { received, computed }) => {
                    assert_ne!(received, computed, "{comment}")
                }
                other => panic!("{comment}: byte {i} flipped gave {other:?}"),
            }
        }
    }
    assert_eq!(
        check_rtu_adu(&[0x01, 0x03, 0x00]),
        Err(RtuCrcError::TooShort { len: 3 })
    );
}

#[test]
fn register_values_in_the_reference_response_decode() {
    // "01 04 02 FF FF B8 80": FC04 response, byte count 2, one register 0xFFFF.
    let (frame, _) = frames()
        .into_iter()
        .find(|(f, _)| f.starts_with(&[0x01, 0x04, 0x02]))
        .expect("the FC04 response vector");
    let body = check_rtu_adu(&frame).unwrap();
    let byte_count = usize::from(body[2]);
    let regs: Vec<u16> = body[3..3 + byte_count]
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect();
    assert_eq!(regs, [0xFFFF]);
    assert_eq!(
        decode_raw(DataType::U16, WordOrder::ABCD, &regs),
        Ok(65535.0)
    );
    assert_eq!(decode_raw(DataType::I16, WordOrder::ABCD, &regs), Ok(-1.0));

    // "11 03 00 6B 00 03 76 87": the application-protocol spec's FC03 request for registers
    // 108..110; its response in the spec carries 0x022B 0x0000 0x0064 (555, 0, 100).
    let response_body = [0x11, 0x03, 0x06, 0x02, 0x2B, 0x00, 0x00, 0x00, 0x64];
    let mut adu = response_body.to_vec();
    adu.extend_from_slice(&rtu_crc_bytes(&response_body));
    let body = check_rtu_adu(&adu).unwrap();
    let regs: Vec<u16> = body[3..]
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect();
    let decoded: Vec<f64> = regs
        .iter()
        .map(|r| decode_raw(DataType::U16, WordOrder::ABCD, &[*r]).unwrap())
        .collect();
    assert_eq!(decoded, [555.0, 0.0, 100.0]);
}

/// `(data type, order, registers, value)`; registers from Python `struct.pack`, rearranged.
const WORD_ORDER_CASES: &[(DataType, WordOrder, [u16; 2], f64)] = &[
    // f32 123.456 = 0x42F6E979
    (DataType::F32, WordOrder::ABCD, [0x42F6, 0xE979], 123.456),
    (DataType::F32, WordOrder::CDAB, [0xE979, 0x42F6], 123.456),
    (DataType::F32, WordOrder::BADC, [0xF642, 0x79E9], 123.456),
    (DataType::F32, WordOrder::DCBA, [0x79E9, 0xF642], 123.456),
    // f32 -0.5 = 0xBF000000
    (DataType::F32, WordOrder::CDAB, [0x0000, 0xBF00], -0.5),
    // i32 -123456789 = 0xF8A432EB
    (
        DataType::I32,
        WordOrder::ABCD,
        [0xF8A4, 0x32EB],
        -123_456_789.0,
    ),
    (
        DataType::I32,
        WordOrder::CDAB,
        [0x32EB, 0xF8A4],
        -123_456_789.0,
    ),
    (
        DataType::I32,
        WordOrder::BADC,
        [0xA4F8, 0xEB32],
        -123_456_789.0,
    ),
    (
        DataType::I32,
        WordOrder::DCBA,
        [0xEB32, 0xA4F8],
        -123_456_789.0,
    ),
    // u32 3000000000 = 0xB2D05E00
    (
        DataType::U32,
        WordOrder::ABCD,
        [0xB2D0, 0x5E00],
        3_000_000_000.0,
    ),
    (
        DataType::U32,
        WordOrder::CDAB,
        [0x5E00, 0xB2D0],
        3_000_000_000.0,
    ),
    (
        DataType::U32,
        WordOrder::BADC,
        [0xD0B2, 0x005E],
        3_000_000_000.0,
    ),
    (
        DataType::U32,
        WordOrder::DCBA,
        [0x005E, 0xD0B2],
        3_000_000_000.0,
    ),
];

#[test]
fn word_orders_decode_and_encode_independent_cases() {
    for &(data_type, order, regs, value) in WORD_ORDER_CASES {
        let decoded = decode_raw(data_type, order, &regs).unwrap();
        if data_type == DataType::F32 {
            assert_eq!(decoded as f32, value as f32, "{data_type:?} {order:?}");
        } else {
            assert_eq!(decoded, value, "{data_type:?} {order:?}");
        }
        let mut out = [0u16; 2];
        encode_raw(data_type, order, value, &mut out).unwrap();
        assert_eq!(out, regs, "encode {data_type:?} {order:?}");
    }
}

#[test]
fn single_register_byte_orders() {
    // i16 -2 = 0xFFFE; byte-swapped orders read 0xFEFF.
    assert_eq!(
        decode_raw(DataType::I16, WordOrder::ABCD, &[0xFFFE]),
        Ok(-2.0)
    );
    assert_eq!(
        decode_raw(DataType::I16, WordOrder::BADC, &[0xFEFF]),
        Ok(-2.0)
    );
    assert_eq!(
        decode_raw(DataType::U16, WordOrder::DCBA, &[0x3412]),
        Ok(f64::from(0x1234u16))
    );
}

#[test]
fn malformed_registers_give_typed_errors() {
    assert_eq!(
        decode_raw(DataType::F32, WordOrder::ABCD, &[0x42F6]),
        Err(DecodeError::WrongLength {
            expected: 2,
            got: 1
        })
    );
    // f32 NaN 0x7FC00000 and +inf 0x7F800000: devices use them to flag a failed sensor.
    assert_eq!(
        decode_raw(DataType::F32, WordOrder::ABCD, &[0x7FC0, 0x0000]),
        Err(DecodeError::NotFinite)
    );
    assert_eq!(
        decode_raw(DataType::F32, WordOrder::ABCD, &[0x7F80, 0x0000]),
        Err(DecodeError::NotFinite)
    );
    let mut out = [0u16; 1];
    assert_eq!(
        encode_raw(DataType::U16, WordOrder::ABCD, 70_000.0, &mut out),
        Err(DecodeError::DoesNotFit)
    );
    assert_eq!(
        encode_raw(DataType::I16, WordOrder::ABCD, -40_000.0, &mut out),
        Err(DecodeError::DoesNotFit)
    );
}
