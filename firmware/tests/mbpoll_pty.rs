//! The RTU slave polled by an independent master: mbpoll (libmodbus underneath) over a host
//! pseudo-terminal, at 19200 baud 8N1. What mbpoll prints is its own decoding of our replies,
//! so a framing, CRC, byte-order or exception mistake shows up as a wrong value or an error.
//!
//! mbpoll must be installed (Debian package `mbpoll`); without it these tests fail rather than
//! pass unchecked.

mod support;

use std::collections::BTreeMap;

use support::bank::MapBank;
use support::mbpoll::{BAUD, mbpoll};
use support::serve_on_pty;

const UNIT: u8 = 1;

/// The two registers of `value` with the high word first (mbpoll's `-B`, "ABCD").
fn words_high_first(value: f32) -> [u16; 2] {
    let bits = value.to_bits();
    [(bits >> 16) as u16, bits as u16]
}

/// mbpoll references start at 1; register addresses at 0.
fn reference(address: u16) -> String {
    (u32::from(address) + 1).to_string()
}

#[test]
fn reads_input_registers() {
    let values = [0, 1, 0x7FFF, 0x8000, 0xFFFF, 4321];
    let server = serve_on_pty(MapBank::new().with_input(0x0100, &values), UNIT, BAUD).unwrap();
    let run = mbpoll(
        server.path(),
        UNIT,
        &["-t", "3", "-r", &reference(0x0100), "-c", "6"],
        &[],
    );
    assert!(run.success, "{run}");
    // mbpoll prints 16-bit registers as unsigned decimals first.
    let expected: BTreeMap<u32, String> =
        (0x0101..).zip(values.iter().map(u16::to_string)).collect();
    assert_eq!(run.values(), expected, "{run}");
    let (_, stats) = server.stop();
    assert_eq!((stats.responses, stats.crc_errors), (1, 0));
}

#[test]
fn reads_holding_registers() {
    let values = [100, 200, 300];
    let server = serve_on_pty(MapBank::new().with_holding(0, &values), UNIT, BAUD).unwrap();
    let run = mbpoll(server.path(), UNIT, &["-t", "4", "-r", "1", "-c", "3"], &[]);
    assert!(run.success, "{run}");
    let expected: BTreeMap<u32, String> = (1..).zip(values.iter().map(u16::to_string)).collect();
    assert_eq!(run.values(), expected, "{run}");
}

#[test]
fn reads_floats_in_both_word_orders() {
    // A pressure in hPa and a gas concentration; both print exactly in mbpoll's %g.
    let (pressure, ppm) = (1013.25_f32, 21.5_f32);
    let [p_hi, p_lo] = words_high_first(pressure);
    let [g_hi, g_lo] = words_high_first(ppm);
    let bank = MapBank::new()
        // High word first at 0x10 ("ABCD", read with -B) ...
        .with_input(0x10, &[p_hi, p_lo, g_hi, g_lo])
        // ... and low word first at 0x20, mbpoll's default word order ("CDAB").
        .with_input(0x20, &[p_lo, p_hi, g_lo, g_hi]);
    let server = serve_on_pty(bank, UNIT, BAUD).unwrap();

    let expected: BTreeMap<u32, String> = [(0x11, "1013.25"), (0x13, "21.5")]
        .into_iter()
        .map(|(r, v)| (r, v.to_owned()))
        .collect();
    let big = mbpoll(
        server.path(),
        UNIT,
        &["-t", "3:float", "-B", "-r", "17", "-c", "2"],
        &[],
    );
    assert!(big.success, "{big}");
    assert_eq!(big.values(), expected, "{big}");

    let expected: BTreeMap<u32, String> = [(0x21, "1013.25"), (0x23, "21.5")]
        .into_iter()
        .map(|(r, v)| (r, v.to_owned()))
        .collect();
    let little = mbpoll(
        server.path(),
        UNIT,
        &["-t", "3:float", "-r", "33", "-c", "2"],
        &[],
    );
    assert!(little.success, "{little}");
    assert_eq!(little.values(), expected, "{little}");

    // The word-order flag matters: the high-word-first registers read without -B are not the
    // pressure.
    let wrong = mbpoll(
        server.path(),
        UNIT,
        &["-t", "3:float", "-r", "17", "-c", "1"],
        &[],
    );
    assert!(wrong.success, "{wrong}");
    assert_ne!(
        wrong.values().get(&0x11).map(String::as_str),
        Some("1013.25"),
        "{wrong}"
    );
}

#[test]
fn writes_single_and_multiple_registers() {
    let server = serve_on_pty(MapBank::new().with_holding(0, &[0; 8]), UNIT, BAUD).unwrap();

    // One value goes out as function 06; -v makes libmodbus print the frames, requests in [..]
    // and our replies in <..>.
    let single = mbpoll(
        server.path(),
        UNIT,
        &["-v", "-t", "4", "-r", "2"],
        &["1234"],
    );
    assert!(single.success, "{single}");
    assert!(single.stdout.contains("Written 1 references."), "{single}");
    assert!(
        single.stdout.contains("[01][06][00][01][04][D2]"),
        "{single}"
    );
    assert!(
        single.stdout.contains("<01><06><00><01><04><D2>"),
        "{single}"
    );

    // Several go out as function 16, acknowledged with address and quantity.
    let multiple = mbpoll(
        server.path(),
        UNIT,
        &["-v", "-t", "4", "-r", "5"],
        &["7", "65535", "9"],
    );
    assert!(multiple.success, "{multiple}");
    assert!(
        multiple.stdout.contains("Written 3 references."),
        "{multiple}"
    );
    assert!(
        multiple.stdout.contains("[01][10][00][04][00][03][06]"),
        "{multiple}"
    );
    assert!(
        multiple.stdout.contains("<01><10><00><04><00><03>"),
        "{multiple}"
    );

    // Read back by mbpoll itself, then checked in the bank.
    let read = mbpoll(server.path(), UNIT, &["-t", "4", "-r", "1", "-c", "8"], &[]);
    assert!(read.success, "{read}");
    let expected: BTreeMap<u32, String> = (1..)
        .zip(["0", "1234", "0", "0", "7", "65535", "9", "0"].map(String::from))
        .collect();
    assert_eq!(read.values(), expected, "{read}");
    let (bank, stats) = server.stop();
    assert_eq!(
        bank.holding_at(0, 8),
        [0, 1234, 0, 0, 7, 65535, 9, 0].map(Some)
    );
    assert_eq!((stats.responses, stats.exceptions_sent), (3, 0));
}

#[test]
fn unmapped_addresses_and_read_only_registers_are_illegal_data_address() {
    let mut bank = MapBank::new().with_holding(0, &[1, 2]).with_input(0, &[3]);
    bank.read_only.push(1);
    let server = serve_on_pty(bank, UNIT, BAUD).unwrap();

    let read = mbpoll(server.path(), UNIT, &["-t", "4", "-r", "100"], &[]);
    assert!(!read.success, "{read}");
    assert!(read.stderr.contains("Illegal data address"), "{read}");

    // A read running one register past the map fails whole.
    let read = mbpoll(server.path(), UNIT, &["-t", "3", "-r", "1", "-c", "2"], &[]);
    assert!(!read.success, "{read}");
    assert!(read.stderr.contains("Illegal data address"), "{read}");

    let write = mbpoll(server.path(), UNIT, &["-t", "4", "-r", "2"], &["5"]);
    assert!(!write.success, "{write}");
    assert!(write.stderr.contains("Illegal data address"), "{write}");

    let (bank, stats) = server.stop();
    assert_eq!(bank.holding_at(0, 2), [Some(1), Some(2)], "nothing written");
    assert_eq!((stats.exceptions_sent, stats.responses), (3, 0));
}

#[test]
fn unsupported_functions_are_illegal_function() {
    let server = serve_on_pty(MapBank::new().with_holding(0, &[1]), UNIT, BAUD).unwrap();
    // Coils (01) and report slave id (17, mbpoll's -u) are not served.
    let coils = mbpoll(server.path(), UNIT, &["-t", "0", "-r", "1"], &[]);
    assert!(!coils.success, "{coils}");
    assert!(coils.stderr.contains("Illegal function"), "{coils}");
    let report = mbpoll(server.path(), UNIT, &["-u"], &[]);
    assert!(report.stderr.contains("Illegal function"), "{report}");
    let (_, stats) = server.stop();
    assert_eq!(stats.exceptions_sent, 2);
}

#[test]
fn another_unit_gets_no_answer() {
    let server = serve_on_pty(MapBank::new().with_holding(0, &[1]), UNIT, BAUD).unwrap();
    let run = mbpoll(server.path(), 2, &["-t", "4", "-r", "1", "-o", "0.3"], &[]);
    assert!(!run.success, "{run}");
    assert!(run.stderr.contains("timed out"), "{run}");
    // The slave is still there for its own unit afterwards.
    let run = mbpoll(server.path(), UNIT, &["-t", "4", "-r", "1"], &[]);
    assert!(run.success, "{run}");
    let (_, stats) = server.stop();
    assert_eq!((stats.not_for_us, stats.responses), (1, 1));
}
