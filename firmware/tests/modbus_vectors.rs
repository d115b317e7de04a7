//! The RTU slave against published frames: every frame of the shared Modbus vector file, and
//! the request/response pairs around them in their sources.
//!
//! Sources, named at each check:
//! - [file]: `protocol/tests/vectors/modbus_vectors.txt`, a verbatim copy of the shared
//!   reference;
//! - [mdbus]: the ModbusDecoder README's Mdbus.exe log and its "we are slave" examples, which
//!   are simplymodbus.ca's example frames with their requests (RX) and responses (TX);
//! - [spec]: the Modbus application protocol V1.1b3, section 6, request/response PDU
//!   examples (the ADU is completed with the unit address and a CRC);
//! - [wiki]: the RTU frame example of the Wikipedia Modbus article, cited in the file.
//!
//! Where a source gives only a request, the expected response is built from the spec's
//! layout (unit, function, byte count, big-endian registers; or unit, function | 0x80, code)
//! with the CRC from `tianzhong_protocol::crc`, which the protocol crate checks against the
//! same vector file.

mod support;

use support::bank::MapBank;
use tianzhong_firmware::modbus::pdu::exception_response;
use tianzhong_firmware::modbus::{
    Exception, MAX_ADU_LEN, RegisterBank, RtuSlave, RtuTiming, SlaveStats,
};
use tianzhong_protocol::crc::{check_rtu_adu, rtu_crc_bytes};

const VECTORS: &str = include_str!("../../protocol/tests/vectors/modbus_vectors.txt");

const TIMING: RtuTiming = RtuTiming::from_baud(19_200);

fn hex(text: &str) -> Vec<u8> {
    text.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).expect("hex byte"))
        .collect()
}

fn with_crc(body: &[u8]) -> Vec<u8> {
    let mut adu = body.to_vec();
    adu.extend_from_slice(&rtu_crc_bytes(body));
    adu
}

/// The frames of the vector file, as written there (hex, before the comment).
fn file_frames() -> Vec<String> {
    VECTORS
        .lines()
        .map(|line| line.split('#').next().unwrap_or("").trim())
        .filter(|frame| !frame.is_empty())
        .map(|frame| frame.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

/// Sends `request` to a slave whose unit is the request's address, at 19200 baud with the
/// bytes back to back, and returns its reply once t3.5 has passed.
fn exchange<B: RegisterBank>(bank: &mut B, request: &[u8]) -> (Option<Vec<u8>>, SlaveStats) {
    let mut slave = RtuSlave::new(request[0], TIMING).expect("a unit address in 1..=247");
    let mut t = 1_000;
    for &b in request {
        t += u64::from(TIMING.char_us());
        slave.on_byte(b, t);
    }
    let deadline = slave.next_deadline().expect("a frame in progress");
    let mut reply = [0u8; MAX_ADU_LEN];
    assert_eq!(
        slave.poll(deadline - 1, bank, &mut reply),
        None,
        "no reply before t3.5"
    );
    let reply = slave
        .poll(deadline, bank, &mut reply)
        .map(|len| reply[..len].to_vec());
    (reply, *slave.stats())
}

fn reply(bank: &mut MapBank, request: &[u8]) -> Vec<u8> {
    let (reply, stats) = exchange(bank, request);
    let reply = reply.unwrap_or_else(|| panic!("no reply to {request:02X?}: {stats:?}"));
    assert!(check_rtu_adu(&reply).is_ok(), "reply CRC: {reply:02X?}");
    reply
}

fn exception(unit: u8, function: u8, code: Exception) -> Vec<u8> {
    let mut body = vec![unit];
    body.extend_from_slice(&exception_response(function, code));
    with_crc(&body)
}

/// The register values of a read response ADU (unit, function, byte count, data, CRC).
fn registers_of(response: &[u8]) -> Vec<u16> {
    assert_eq!(usize::from(response[2]), response.len() - 5, "byte count");
    response[3..response.len() - 2]
        .chunks_exact(2)
        .map(|pair| u16::from_be_bytes([pair[0], pair[1]]))
        .collect()
}

#[test]
fn every_frame_of_the_vector_file() {
    let frames = file_frames();
    assert_eq!(
        frames.len(),
        13,
        "the file changed: give new frames an expectation below"
    );
    for frame in &frames {
        let bytes = hex(frame);
        assert!(check_rtu_adu(&bytes).is_ok(), "[file] {frame}: CRC");
        check_file_frame(frame, &bytes);
    }
}

fn check_file_frame(frame: &str, bytes: &[u8]) {
    let empty = || MapBank::new();
    match frame {
        // [file]/[mdbus] read coils and read discrete inputs requests: not served, 01.
        "11 01 00 13 00 25 0E 84" | "11 02 00 C4 00 16 BA A9" => {
            let reply = reply(&mut empty(), bytes);
            assert_eq!(reply, exception(0x11, bytes[1], Exception::IllegalFunction));
            assert_eq!(reply[1], bytes[1] | 0x80);
        }
        // [file]/[mdbus] write single coil: not served, 01 (a coil slave would echo it).
        "11 05 00 AC FF 00 4E 8B" => {
            let reply = reply(&mut empty(), bytes);
            assert_eq!(reply, exception(0x11, 0x05, Exception::IllegalFunction));
        }
        // [file] the write multiple coils *response*; as a request, and the [mdbus] request
        // it answers, both unsupported: 01.
        "11 0F 00 13 00 0A 26 99" => {
            let expected = exception(0x11, 0x0F, Exception::IllegalFunction);
            assert_eq!(reply(&mut empty(), bytes), expected);
            let request = hex("11 0F 00 13 00 0A 02 CD 01 BF 0B");
            assert_eq!(reply(&mut empty(), &request), expected);
        }
        // [file]/[mdbus] read holding registers 108..110 of unit 17 (the spec's example
        // request): simplymodbus's register values give its published response exactly.
        "11 03 00 6B 00 03 76 87" => {
            let published = hex("11 03 06 AE 41 56 52 43 40 49 AD");
            let mut bank = MapBank::new().with_holding(0x6B, &registers_of(&published));
            assert_eq!(reply(&mut bank, bytes), published);
            // [spec] 6.3 with its own values: response PDU 03 06 02 2B 00 00 00 64.
            let mut bank = MapBank::new().with_holding(0x6B, &[0x022B, 0x0000, 0x0064]);
            assert_eq!(
                reply(&mut bank, bytes),
                with_crc(&hex("11 03 06 02 2B 00 00 00 64"))
            );
        }
        // [file]/[mdbus] read input register 9 of unit 17; [spec] 6.4 has the same request
        // PDU and the value 10, which [mdbus] publishes as 11 04 02 00 0A F8 F4.
        "11 04 00 08 00 01 B2 98" => {
            let mut bank = MapBank::new().with_input(0x08, &[0x000A]);
            assert_eq!(reply(&mut bank, bytes), hex("11 04 02 00 0A F8 F4"));
        }
        // [file]/[mdbus] write single register: the response is the request, byte for byte.
        "01 06 00 00 04 35 4B 1D" => {
            let mut bank = MapBank::new().with_holding(0, &[0]);
            assert_eq!(reply(&mut bank, bytes), bytes);
            assert_eq!(bank.holding_at(0, 1), [Some(0x0435)]);
        }
        // [file] the write multiple registers *response*; [mdbus] gives the request: 16
        // registers from 0x5B, 32 data bytes.
        "01 10 00 5B 00 10 B0 16" => {
            let request = hex(
                "01 10 00 5B 00 10 20 00 00 3F 80 00 00 3F 80 CC CD 42 0C CC CD 41 DC 51 EC \
                 41 2C 1E B8 40 B5 CC CD 40 F4 E1 48 40 FA FB DB",
            );
            let mut bank = MapBank::new().with_holding(0x5B, &[0; 16]);
            assert_eq!(reply(&mut bank, &request), bytes);
            let written: Vec<u16> = request[7..request.len() - 2]
                .chunks_exact(2)
                .map(|p| u16::from_be_bytes([p[0], p[1]]))
                .collect();
            assert_eq!(
                bank.holding_at(0x5B, 16),
                written.into_iter().map(Some).collect::<Vec<_>>()
            );
            // As a request itself it lacks the byte count and values: 03.
            let mut bank = MapBank::new().with_holding(0x5B, &[0; 16]);
            assert_eq!(
                reply(&mut bank, bytes),
                exception(0x01, 0x10, Exception::IllegalDataValue)
            );
        }
        // [file] read one holding register of unit 1 (CRC test of mbserver): no published
        // response, so the spec's layout.
        "01 03 00 00 00 01 84 0A" => {
            let mut bank = MapBank::new().with_holding(0, &[0xBEEF]);
            assert_eq!(reply(&mut bank, bytes), with_crc(&hex("01 03 02 BE EF")));
        }
        // [file]/[wiki] a read input registers *response* carrying 0xFFFF: produced exactly by
        // a one-register read of a register holding 0xFFFF.
        "01 04 02 FF FF B8 80" => {
            let request = with_crc(&hex("01 04 00 00 00 01"));
            let mut bank = MapBank::new().with_input(0, &[0xFFFF]);
            assert_eq!(reply(&mut bank, &request), bytes);
            // As a request, its PDU is one byte short of a read: 03.
            assert_eq!(
                reply(&mut bank, bytes),
                exception(0x01, 0x04, Exception::IllegalDataValue)
            );
        }
        // [file] a request the slave of a C test answers with an exception: registers from
        // 0x016B that this bank does not map, so 02.
        "12 03 01 6B 00 03 77 48" => {
            let mut bank = MapBank::new().with_holding(0x6B, &[1, 2, 3]);
            assert_eq!(
                reply(&mut bank, bytes),
                exception(0x12, 0x03, Exception::IllegalDataAddress)
            );
        }
        // [file]/[mdbus] read 44 holding registers of unit 1: its published 93-byte response.
        "01 03 00 00 00 2C 44 17" => {
            let published = hex(
                "01 03 58 01 14 00 00 46 82 62 00 45 47 F0 00 44 EF 00 00 42 47 99 9A 47 26 C9 \
                 00 47 1D 38 00 47 1D 3A 00 47 27 F8 00 43 99 33 33 3F B4 7A E1 43 50 33 33 00 \
                 00 00 00 00 00 00 00 00 00 00 00 45 59 70 00 00 00 00 00 00 00 00 00 00 00 00 \
                 00 43 CA 00 00 41 4C CC CD 41 49 99 9A 2E 20",
            );
            let mut bank = MapBank::new().with_holding(0, &registers_of(&published));
            assert_eq!(reply(&mut bank, bytes), published);
        }
        // [file]/[mdbus] read 8 input registers from 3000 of unit 1: the log's three responses
        // to it, each from the register values it carries.
        "01 04 0B B8 00 08 73 CD" => {
            for published in [
                "01 04 10 51 24 45 B7 19 71 3F 5F 19 F9 43 0B 59 D1 45 D2 70 B9",
                "01 04 10 4F FA 45 B7 19 3F 3F 5F 19 F9 43 0B 58 AA 45 D2 B7 85",
                "01 04 10 4E 9E 45 B7 19 82 3F 5F 19 F9 43 0B 56 DB 45 D2 2D A3",
            ] {
                let published = hex(published);
                let mut bank = MapBank::new().with_input(3000, &registers_of(&published));
                assert_eq!(reply(&mut bank, bytes), published);
            }
        }
        other => panic!("[file] {other}: no expectation; add one with its source"),
    }
}

#[test]
fn unit_2_of_the_mdbus_log() {
    // [mdbus] the same poll of unit 2 and its two responses.
    let request = hex("02 04 0B B8 00 08 73 FE");
    for published in [
        "02 04 10 99 3F 45 9B 89 D2 3F 5C 99 57 43 06 9E 44 45 B4 4B E2",
        "02 04 10 B0 BB 45 9B 8B 11 3F 5C 99 46 43 06 B8 81 45 B4 00 FB",
    ] {
        let published = hex(published);
        let mut bank = MapBank::new().with_input(3000, &registers_of(&published));
        assert_eq!(reply(&mut bank, &request), published);
    }
}

#[test]
fn the_200_byte_read_and_100_byte_write_of_the_mdbus_readme() {
    // [mdbus] "FC 0x03 - 200 bytes": a response to a 100-register read (its request is not
    // given; any start address gives the same response).
    let published = hex(&format!(
        "01 03 C8 {} 46 AF 2A 00 45 23 10 00 42 A4 33 33 44 D6 E0 00 47 26 B0 00 47 26 B0 00 \
         47 1C 2E 00 47 1C 2E 00 00 00 00 00 00 00 00 00 3F CA 3D 71 44 BF 5C CD {} 66 94",
        "00 ".repeat(128),
        "00 ".repeat(24),
    ));
    assert_eq!(published.len(), 3 + 200 + 2);
    let mut bank = MapBank::new().with_holding(0x0400, &registers_of(&published));
    let request = with_crc(&hex("01 03 04 00 00 64"));
    assert_eq!(reply(&mut bank, &request), published);

    // [mdbus] "FC 0x10 - 100 bytes": 50 registers written from 0x64; the response is the
    // request's first six bytes with their own CRC.
    let request = hex(
        "01 10 00 64 00 32 64 48 9C 1C B6 48 94 27 C8 48 98 95 47 48 87 F7 BD 42 AC 07 2B 42 AE \
         57 91 42 AC 89 5E 42 AF DE 29 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 \
         00 00 00 00 00 00 00 00 00 00 00 00 00 00 45 C9 F0 4D 45 CA 95 4D 45 C9 23 FE 45 C9 \
         64 DF 42 0A 66 66 42 0C CC CD 42 13 33 33 42 11 33 33 42 9E CC CD 9D A4",
    );
    assert!(check_rtu_adu(&request).is_ok());
    let mut bank = MapBank::new().with_holding(0x64, &[0; 50]);
    assert_eq!(reply(&mut bank, &request), with_crc(&request[..6]));
    assert_eq!(bank.holding_at(0x64, 2), [Some(0x489C), Some(0x1CB6)]);
    assert_eq!(bank.holding_at(0x64 + 48, 2), [Some(0x429E), Some(0xCCCD)]);
}

#[test]
fn exception_frames_have_the_published_layout() {
    // [mdbus] "Exception example": 0A 81 02 B0 53, unit 10, function 01, code 02. The slave
    // does not serve 01 (it would answer 01 rather than 02), so the frame is built the way the
    // slave builds its exceptions.
    let mut body = vec![0x0A];
    body.extend_from_slice(&exception_response(0x01, Exception::IllegalDataAddress));
    assert_eq!(with_crc(&body), hex("0A 81 02 B0 53"));
}

#[test]
fn the_specs_write_examples_as_rtu_frames() {
    // [spec] 6.6 write register 2 := 3, echoed.
    let request = with_crc(&hex("11 06 00 01 00 03"));
    let mut bank = MapBank::new().with_holding(0, &[0, 0, 0]);
    assert_eq!(reply(&mut bank, &request), request);
    // [spec] 6.12 registers 2 and 3 := 0x000A, 0x0102; response PDU 10 00 01 00 02.
    let request = with_crc(&hex("11 10 00 01 00 02 04 00 0A 01 02"));
    assert_eq!(
        reply(&mut bank, &request),
        with_crc(&hex("11 10 00 01 00 02"))
    );
    assert_eq!(bank.holding_at(0, 3), [Some(0), Some(0x000A), Some(0x0102)]);
}

#[test]
fn the_specs_device_identification_example_as_an_rtu_frame() {
    // [spec] 6.21: request 2B 0E 01 00; response 2B 0E 01 01 00 00 03, then objects 00
    // "Company identification", 01 "Product code XX", 02 "V2.11". The spec's device is
    // basic-level without individual access (conformity 01); this slave has individual access,
    // so 81.
    let mut bank = MapBank::new()
        .with_object(0x00, "Company identification")
        .with_object(0x01, "Product code XX")
        .with_object(0x02, "V2.11");
    let mut expected = hex("11 2B 0E 01 81 00 00 03 00 16");
    expected.extend_from_slice(b"Company identification");
    expected.extend_from_slice(&[0x01, 0x0F]);
    expected.extend_from_slice(b"Product code XX");
    expected.extend_from_slice(&[0x02, 0x05]);
    expected.extend_from_slice(b"V2.11");
    let expected = with_crc(&expected);
    assert_eq!(
        reply(&mut bank, &with_crc(&hex("11 2B 0E 01 00"))),
        expected
    );
    // An unknown read-device-id code is 03; an unknown object asked for individually, 02.
    assert_eq!(
        reply(&mut bank, &with_crc(&hex("11 2B 0E 05 00"))),
        exception(0x11, 0x2B, Exception::IllegalDataValue)
    );
    assert_eq!(
        reply(&mut bank, &with_crc(&hex("11 2B 0E 04 03"))),
        exception(0x11, 0x2B, Exception::IllegalDataAddress)
    );
}
