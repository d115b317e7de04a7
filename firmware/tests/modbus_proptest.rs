//! Property tests of the RTU slave: byte streams of noise and of valid frames for this unit,
//! others and broadcast, at timings around t1.5 and t3.5, polled at arbitrary moments.
//!
//! An oracle follows the serial-line rules on its own (frames split by t3.5 of silence,
//! spoiled by more than t1.5 inside or by passing 256 bytes) and checks that the slave
//! - never panics;
//! - replies only to a complete, not yet polled, CRC-valid frame addressed to its unit, and
//!   with a reply that carries its unit, the request's function code and a valid CRC;
//! - does reply to such a frame when it is clean and polled in time.

mod support;

use proptest::prelude::*;
use support::bank::MapBank;
use tianzhong_firmware::modbus::{MAX_ADU_LEN, RtuSlave, RtuTiming};
use tianzhong_protocol::crc::{check_rtu_adu, rtu_crc_bytes};

const UNIT: u8 = 17;
const TIMING: RtuTiming = RtuTiming::from_baud(9_600);
const CHAR: u64 = TIMING.char_us() as u64;
const T1_5: u64 = TIMING.t1_5_us() as u64;
const T3_5: u64 = TIMING.t3_5_us() as u64;

#[derive(Clone, Debug)]
enum Step {
    /// A byte arriving `gap_us` after the previous event.
    Byte { byte: u8, gap_us: u64 },
    /// A poll `after_us` after the previous event.
    Poll { after_us: u64 },
    /// A poll exactly at the slave's deadline, as a well-behaved caller does.
    PollAtDeadline,
}

/// Gaps clustered where the rules change: back to back, around t1.5 of silence, around t3.5.
fn gap() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => Just(CHAR),
        1 => 0..=CHAR,
        2 => (CHAR + T1_5 - 20)..=(CHAR + T1_5 + 20),
        2 => (T3_5 - 20)..=(T3_5 + 20),
        1 => 0..50_000u64,
    ]
}

/// Request PDUs of every kind the slave serves, some malformed, plus arbitrary ones.
fn pdu() -> impl Strategy<Value = Vec<u8>> {
    let read =
        (prop_oneof![Just(0x03u8), Just(0x04)], 0..0x90u16, 0..130u16).prop_map(|(fc, a, q)| {
            let mut p = vec![fc];
            p.extend(a.to_be_bytes());
            p.extend(q.to_be_bytes());
            p
        });
    let write_one = (0..0x90u16, any::<u16>()).prop_map(|(a, v)| {
        let mut p = vec![0x06];
        p.extend(a.to_be_bytes());
        p.extend(v.to_be_bytes());
        p
    });
    let write_many =
        (0..0x90u16, prop::collection::vec(any::<u16>(), 0..126)).prop_map(|(a, values)| {
            let mut p = vec![0x10];
            p.extend(a.to_be_bytes());
            p.extend((values.len() as u16).to_be_bytes());
            p.push((values.len() * 2) as u8);
            p.extend(values.iter().flat_map(|v| v.to_be_bytes()));
            p
        });
    let device_id = (0..6u8, any::<u8>()).prop_map(|(code, id)| vec![0x2B, 0x0E, code, id]);
    prop_oneof![
        read,
        write_one,
        write_many,
        device_id,
        prop::collection::vec(any::<u8>(), 1..20),
    ]
}

/// A CRC-valid frame for this unit, broadcast or any other address, sent back to back except,
/// sometimes, for one gap inside it.
fn frame() -> impl Strategy<Value = Vec<Step>> {
    (
        prop_oneof![3 => Just(UNIT), 1 => Just(0u8), 1 => any::<u8>()],
        pdu(),
        gap(),
        prop::option::of((any::<prop::sample::Index>(), gap())),
    )
        .prop_map(|(unit, pdu, first_gap, inner_gap)| {
            let mut adu = vec![unit];
            adu.extend(pdu);
            let crc = rtu_crc_bytes(&adu);
            adu.extend(crc);
            let inner_gap = inner_gap.map(|(at, gap)| (1 + at.index(adu.len() - 1), gap));
            adu.iter()
                .enumerate()
                .map(|(i, &byte)| Step::Byte {
                    byte,
                    gap_us: match inner_gap {
                        _ if i == 0 => first_gap,
                        Some((at, gap)) if at == i => gap,
                        _ => CHAR,
                    },
                })
                .collect()
        })
}

fn noise() -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec((any::<u8>(), gap()), 1..40).prop_map(|bytes| {
        bytes
            .into_iter()
            .map(|(byte, gap_us)| Step::Byte { byte, gap_us })
            .collect()
    })
}

/// A frame long enough to overrun, back to back.
fn flood() -> impl Strategy<Value = Vec<Step>> {
    (MAX_ADU_LEN - 2..MAX_ADU_LEN + 8, any::<u8>()).prop_map(|(n, byte)| {
        (0..n)
            .map(|i| Step::Byte {
                byte: if i == 0 { UNIT } else { byte },
                gap_us: CHAR,
            })
            .collect()
    })
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    let chunk = prop_oneof![
        4 => frame(),
        2 => noise(),
        1 => flood(),
        2 => (0..60_000u64).prop_map(|after_us| vec![Step::Poll { after_us }]),
        3 => Just(vec![Step::PollAtDeadline]),
    ];
    prop::collection::vec(chunk, 1..25).prop_map(|chunks| chunks.concat())
}

/// The oracle's view of the frame being received.
#[derive(Default)]
struct Segment {
    bytes: Vec<u8>,
    last_us: Option<u64>,
    spoiled: bool,
    polled: bool,
}

impl Segment {
    fn byte(&mut self, byte: u8, now_us: u64) {
        match self.last_us {
            Some(last) if now_us - last < T3_5 => {
                if (now_us - last).saturating_sub(CHAR) > T1_5 {
                    self.spoiled = true;
                }
            }
            _ => *self = Segment::default(),
        }
        self.bytes.push(byte);
        if self.bytes.len() > MAX_ADU_LEN {
            self.spoiled = true;
        }
        self.last_us = Some(now_us);
    }

    /// Whether a poll at `now_us` finds this frame complete and not yet reported.
    fn completes_at(&mut self, now_us: u64) -> bool {
        let complete = !self.polled && self.last_us.is_some_and(|last| now_us - last >= T3_5);
        if complete {
            self.polled = true;
        }
        complete
    }

    fn is_request_for_us(&self) -> bool {
        check_rtu_adu(&self.bytes).is_ok() && self.bytes[0] == UNIT
    }
}

fn bank() -> MapBank {
    MapBank::new()
        .with_holding(0, &[0; 0x40])
        .with_input(0, &(0..0x80).collect::<Vec<u16>>())
        .with_object(0, "Tianzhong")
        .with_object(1, "TZ")
        .with_object(2, "0.1")
}

fn poll(
    slave: &mut RtuSlave,
    bank: &mut MapBank,
    segment: &mut Segment,
    now_us: u64,
    replies: &mut u32,
) -> Result<(), TestCaseError> {
    let mut reply = [0u8; MAX_ADU_LEN];
    let got = slave.poll(now_us, bank, &mut reply);
    let complete = segment.completes_at(now_us);
    let Some(len) = got else {
        prop_assert!(
            !(complete && segment.is_request_for_us() && !segment.spoiled),
            "no reply to a clean request for us: {:02X?}",
            segment.bytes
        );
        return Ok(());
    };
    *replies += 1;
    prop_assert!(complete, "a reply without a newly complete frame");
    prop_assert!(
        segment.is_request_for_us(),
        "a reply to a frame that is not a valid request for us: {:02X?}",
        segment.bytes
    );
    prop_assert!(!segment.spoiled, "a reply to a spoiled frame");
    let reply = &reply[..len];
    prop_assert!(check_rtu_adu(reply).is_ok(), "reply CRC: {:02X?}", reply);
    prop_assert_eq!(reply[0], UNIT);
    prop_assert_eq!(reply[1] & 0x7F, segment.bytes[1] & 0x7F);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn replies_only_to_valid_requests_for_the_unit(
        start_us in 0..u64::MAX / 4,
        steps in steps(),
    ) {
        let mut slave = RtuSlave::new(UNIT, TIMING).unwrap();
        let mut bank = bank();
        let mut segment = Segment::default();
        let mut now = start_us;
        let mut replies = 0u32;
        for step in steps {
            match step {
                Step::Byte { byte, gap_us } => {
                    now += gap_us;
                    segment.byte(byte, now);
                    slave.on_byte(byte, now);
                }
                Step::Poll { after_us } => {
                    now += after_us;
                    poll(&mut slave, &mut bank, &mut segment, now, &mut replies)?;
                }
                Step::PollAtDeadline => {
                    if let Some(deadline) = slave.next_deadline() {
                        now = now.max(deadline);
                        poll(&mut slave, &mut bank, &mut segment, now, &mut replies)?;
                    }
                }
            }
        }
        if let Some(deadline) = slave.next_deadline() {
            poll(&mut slave, &mut bank, &mut segment, deadline.max(now), &mut replies)?;
        }
        prop_assert_eq!(slave.next_deadline(), None);
        let stats = slave.stats();
        prop_assert_eq!(stats.responses + stats.exceptions_sent, replies);
    }

    #[test]
    fn arbitrary_bytes_at_arbitrary_times_never_panic(
        start_us in any::<u64>(),
        events in prop::collection::vec((any::<u8>(), any::<u16>(), any::<bool>()), 0..600),
    ) {
        let mut slave = RtuSlave::new(UNIT, TIMING).unwrap();
        let mut bank = bank();
        let mut reply = [0u8; MAX_ADU_LEN];
        let mut now = start_us;
        for (byte, gap, poll_after) in events {
            // Saturating: the clock may start anywhere, up to u64::MAX.
            now = now.saturating_add(u64::from(gap));
            slave.on_byte(byte, now);
            let polled_at = now.saturating_add(u64::from(gap));
            if poll_after
                && let Some(len) = slave.poll(polled_at, &mut bank, &mut reply)
            {
                prop_assert!(check_rtu_adu(&reply[..len]).is_ok());
                prop_assert_eq!(reply[0], UNIT);
            }
        }
    }
}
