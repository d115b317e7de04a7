//! The RTU slave: frames from the [`FrameAssembler`], checked by CRC and address, handed to
//! [`pdu`], answered with a CRC of their own. Sans-IO like the assembler: the
//! caller feeds bytes with their arrival times, polls by [`RtuSlave::next_deadline`], and sends
//! the reply `poll` returns.
//!
//! What is never answered (Modbus over Serial Line V1.02, 2.2 and 2.4):
//! - a frame that fails its CRC: its address cannot be trusted, and a reply from the wrong
//!   unit would collide with the right one's;
//! - a frame for another unit;
//! - a broadcast (address 0): writes (06, 16 and 21 write file record) are executed, reads
//!   are ignored since no one could receive their data;
//! - a frame discarded for a t1.5 gap or an overrun.

use tianzhong_protocol::crc::{check_rtu_adu, rtu_crc_bytes};

use super::RegisterBank;
use super::file_record;
use super::frame::{Assembled, Discard, FrameAssembler, MAX_ADU_LEN, Pushed};
use super::pdu::{self, Handled, MAX_PDU_LEN};
use super::timing::RtuTiming;

/// The broadcast address.
pub const BROADCAST: u8 = 0;

/// The unit addresses a slave may have on a serial line.
pub const UNIT_ADDRESSES: core::ops::RangeInclusive<u8> = 1..=247;

/// A unit address outside 1..=247.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvalidUnit(pub u8);

impl core::fmt::Display for InvalidUnit {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Modbus unit address {} is outside 1..=247", self.0)
    }
}

/// Counters for the node's health registers. They follow the serial-line diagnostics of
/// function 08 (bus message, communication error, exception, server message and character
/// overrun counts) so that a master can tell a noisy line from a misaddressed one. Each wraps
/// around rather than stopping.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlaveStats {
    /// Frames with a good CRC, whatever their address.
    pub frames_ok: u32,
    /// Frames whose CRC failed, including ones too short to carry a CRC.
    pub crc_errors: u32,
    /// Good frames addressed to another unit.
    pub not_for_us: u32,
    /// Good frames sent to the broadcast address.
    pub broadcasts: u32,
    /// Normal responses sent.
    pub responses: u32,
    /// Exception responses sent.
    pub exceptions_sent: u32,
    /// Frames discarded for being longer than 256 bytes.
    pub overruns: u32,
    /// Frames discarded for a silence longer than t1.5 inside them.
    pub corrupt: u32,
    /// Complete frames lost because the next frame began before they were polled: the caller
    /// polls too late.
    pub missed: u32,
}

fn bump(counter: &mut u32) {
    *counter = counter.wrapping_add(1);
}

/// A Modbus RTU slave with one unit address.
#[derive(Clone, Debug)]
pub struct RtuSlave {
    unit: u8,
    assembler: FrameAssembler,
    stats: SlaveStats,
}

impl RtuSlave {
    /// A slave answering as `unit` on a line with `timing`.
    pub fn new(unit: u8, timing: RtuTiming) -> Result<Self, InvalidUnit> {
        check_unit(unit)?;
        Ok(Self {
            unit,
            assembler: FrameAssembler::new(timing),
            stats: SlaveStats::default(),
        })
    }

    /// The unit address.
    pub fn unit(&self) -> u8 {
        self.unit
    }

    /// Changes the unit address, e.g. after the master wrote the node's address register.
    /// A frame being received is still judged against the new address.
    pub fn set_unit(&mut self, unit: u8) -> Result<(), InvalidUnit> {
        check_unit(unit)?;
        self.unit = unit;
        Ok(())
    }

    /// The line timing.
    pub fn timing(&self) -> RtuTiming {
        self.assembler.timing()
    }

    /// Changes the line timing after a baud-rate change; a frame being received is dropped.
    pub fn set_timing(&mut self, timing: RtuTiming) {
        self.assembler.set_timing(timing);
    }

    /// Takes one received byte, stamped with its arrival time in monotonic microseconds.
    pub fn on_byte(&mut self, byte: u8, now_us: u64) {
        if self.assembler.push(byte, now_us) == Pushed::SupersededUnpolled {
            bump(&mut self.stats.missed);
        }
    }

    /// Takes bytes that arrived together (a DMA block, a host read), all stamped `now_us`.
    pub fn on_bytes(&mut self, bytes: &[u8], now_us: u64) {
        for &b in bytes {
            self.on_byte(b, now_us);
        }
    }

    /// Drops a frame in progress, e.g. the echo of the node's own reply on a half-duplex line.
    pub fn reset_receiver(&mut self) {
        self.assembler.reset();
    }

    /// Handles the frame completed by `now_us`, if any, and returns the length of the reply
    /// written at the start of `reply`, to be sent as is. `None`: nothing to send (no frame
    /// yet, or one not to be answered); `reply` may have been written to all the same.
    pub fn poll<B: RegisterBank + ?Sized>(
        &mut self,
        now_us: u64,
        bank: &mut B,
        reply: &mut [u8; MAX_ADU_LEN],
    ) -> Option<usize> {
        let stats = &mut self.stats;
        let adu = match self.assembler.poll(now_us)? {
            Assembled::Frame(adu) => adu,
            Assembled::Discarded(Discard::Corrupt) => {
                bump(&mut stats.corrupt);
                return None;
            }
            Assembled::Discarded(Discard::Overrun) => {
                bump(&mut stats.overruns);
                return None;
            }
        };
        let Ok(body) = check_rtu_adu(adu) else {
            bump(&mut stats.crc_errors);
            return None;
        };
        bump(&mut stats.frames_ok);
        // check_rtu_adu guarantees 4 bytes, so address and function code are there.
        let (&address, request) = body.split_first()?;
        let (head, tail) = reply.split_at_mut(1);
        let pdu_out = &mut tail[..MAX_PDU_LEN];

        if address == BROADCAST {
            bump(&mut stats.broadcasts);
            // Function 21 is a write too: executed like the register writes (this is how
            // firmware images stream to a node, file 0xF004), while 20 is a read and ignored.
            if request.first() == Some(&file_record::WRITE_FILE_RECORD) {
                let _ = file_record::handle(request, bank, pdu_out);
            } else if let Ok(parsed) = pdu::parse_request(request)
                && parsed.is_write()
            {
                // No one to tell whether it worked: the outcome is dropped.
                let _ = pdu::respond(&parsed, bank, pdu_out);
            }
            return None;
        }
        if address != self.unit {
            bump(&mut stats.not_for_us);
            return None;
        }

        let len = match pdu::handle(request, bank, pdu_out) {
            Handled::Response(len) => {
                bump(&mut stats.responses);
                len
            }
            Handled::Exception(_) => {
                bump(&mut stats.exceptions_sent);
                2
            }
            // The buffer is MAX_PDU_LEN long, which always holds an exception.
            Handled::NoRoom => return None,
        };
        head[0] = self.unit;
        let crc = rtu_crc_bytes(&reply[..1 + len]);
        reply[1 + len..3 + len].copy_from_slice(&crc);
        Some(3 + len)
    }

    /// When [`poll`](Self::poll) next has something to do, in the caller's microseconds:
    /// `None` while no frame is being received, so the caller can sleep until a byte arrives.
    pub fn next_deadline(&self) -> Option<u64> {
        self.assembler.next_deadline()
    }

    /// The counters.
    pub fn stats(&self) -> &SlaveStats {
        &self.stats
    }

    /// Zeroes the counters (what diagnostics sub-function 0x0A does).
    pub fn clear_stats(&mut self) {
        self.stats = SlaveStats::default();
    }
}

fn check_unit(unit: u8) -> Result<(), InvalidUnit> {
    if UNIT_ADDRESSES.contains(&unit) {
        Ok(())
    } else {
        Err(InvalidUnit(unit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modbus::Exception;
    use std::vec::Vec;

    // 19200 baud: a character lasts 572 µs, t1.5 = 860 µs, t3.5 = 2006 µs.
    const TIMING: RtuTiming = RtuTiming::from_baud(19_200);
    const CHAR: u64 = TIMING.char_us() as u64;
    const T1_5: u64 = TIMING.t1_5_us() as u64;
    const T3_5: u64 = TIMING.t3_5_us() as u64;

    /// Ten holding registers, all readable and writable.
    #[derive(Default)]
    struct Bank {
        holding: [u16; 10],
        writes: usize,
    }

    impl RegisterBank for Bank {
        fn read_input_registers(&mut self, address: u16, out: &mut [u16]) -> Result<(), Exception> {
            self.read_holding_registers(address, out)
        }
        fn read_holding_registers(
            &mut self,
            address: u16,
            out: &mut [u16],
        ) -> Result<(), Exception> {
            let a = usize::from(address);
            let regs = self
                .holding
                .get(a..a + out.len())
                .ok_or(Exception::IllegalDataAddress)?;
            out.copy_from_slice(regs);
            Ok(())
        }
        fn write_holding_registers(
            &mut self,
            address: u16,
            values: &[u16],
        ) -> Result<(), Exception> {
            let a = usize::from(address);
            let regs = self
                .holding
                .get_mut(a..a + values.len())
                .ok_or(Exception::IllegalDataAddress)?;
            regs.copy_from_slice(values);
            self.writes += 1;
            Ok(())
        }
        fn device_identification(&self, _object_id: u8) -> Option<&str> {
            None
        }
    }

    fn adu(unit: u8, pdu: &[u8]) -> Vec<u8> {
        let mut frame = std::vec![unit];
        frame.extend_from_slice(pdu);
        let crc = rtu_crc_bytes(&frame);
        frame.extend_from_slice(&crc);
        frame
    }

    /// Bytes back to back from `start_us`; returns the arrival time of the last.
    fn send(slave: &mut RtuSlave, bytes: &[u8], start_us: u64) -> u64 {
        let mut t = start_us;
        for &b in bytes {
            t += CHAR;
            slave.on_byte(b, t);
        }
        t
    }

    fn reply_to(slave: &mut RtuSlave, bank: &mut Bank, at_us: u64) -> Option<Vec<u8>> {
        let mut reply = [0u8; MAX_ADU_LEN];
        slave
            .poll(at_us, bank, &mut reply)
            .map(|len| reply[..len].to_vec())
    }

    const READ_2: [u8; 5] = [0x03, 0x00, 0x00, 0x00, 0x02];

    #[test]
    fn unit_addresses_are_1_to_247() {
        assert_eq!(RtuSlave::new(0, TIMING).err(), Some(InvalidUnit(0)));
        assert_eq!(RtuSlave::new(248, TIMING).err(), Some(InvalidUnit(248)));
        let mut slave = RtuSlave::new(247, TIMING).unwrap();
        assert_eq!(slave.set_unit(255), Err(InvalidUnit(255)));
        assert_eq!(slave.unit(), 247);
        assert_eq!(slave.set_unit(1), Ok(()));
        assert_eq!(slave.unit(), 1);
    }

    #[test]
    fn answers_once_t3_5_has_passed() {
        let mut slave = RtuSlave::new(1, TIMING).unwrap();
        let mut bank = Bank::default();
        bank.holding[..2].copy_from_slice(&[0x1234, 0xABCD]);
        let last = send(&mut slave, &adu(1, &READ_2), 0);
        assert_eq!(slave.next_deadline(), Some(last + T3_5));
        assert_eq!(reply_to(&mut slave, &mut bank, last + T3_5 - 1), None);
        let reply = reply_to(&mut slave, &mut bank, last + T3_5).expect("a reply");
        assert_eq!(reply, adu(1, &[0x03, 0x04, 0x12, 0x34, 0xAB, 0xCD]));
        assert_eq!(slave.next_deadline(), None);
        assert_eq!(
            *slave.stats(),
            SlaveStats {
                frames_ok: 1,
                responses: 1,
                ..SlaveStats::default()
            }
        );
    }

    #[test]
    fn t3_5_splits_back_to_back_requests() {
        let mut slave = RtuSlave::new(1, TIMING).unwrap();
        let mut bank = Bank::default();
        let last = send(&mut slave, &adu(1, &READ_2), 0);
        assert!(reply_to(&mut slave, &mut bank, last + T3_5).is_some());
        // The second request starts right at the end of the silence.
        let last = send(&mut slave, &adu(1, &READ_2), last + T3_5 - CHAR);
        assert!(reply_to(&mut slave, &mut bank, last + T3_5).is_some());
        assert_eq!(slave.stats().responses, 2);
    }

    #[test]
    fn a_request_cut_by_t3_5_is_two_bad_frames() {
        let mut slave = RtuSlave::new(1, TIMING).unwrap();
        let mut bank = Bank::default();
        let frame = adu(1, &READ_2);
        let t = send(&mut slave, &frame[..4], 0);
        assert_eq!(reply_to(&mut slave, &mut bank, t + T3_5), None);
        let t = send(&mut slave, &frame[4..], t + T3_5);
        assert_eq!(reply_to(&mut slave, &mut bank, t + T3_5), None);
        assert_eq!(slave.stats().crc_errors, 2);
        assert_eq!(slave.stats().frames_ok, 0);
    }

    #[test]
    fn a_t1_5_gap_discards_even_a_frame_with_a_good_crc() {
        let mut slave = RtuSlave::new(1, TIMING).unwrap();
        let mut bank = Bank::default();
        let frame = adu(1, &[0x06, 0x00, 0x00, 0x00, 0x07]);
        let t = send(&mut slave, &frame[..3], 0);
        // Silence of t1.5 + 1 µs: arrival one character plus that later.
        let t = send(&mut slave, &frame[3..], t + T1_5 + 1);
        assert_eq!(reply_to(&mut slave, &mut bank, t + T3_5), None);
        assert_eq!((bank.writes, bank.holding[0]), (0, 0), "not executed");
        assert_eq!(slave.stats().corrupt, 1);
        assert_eq!(slave.stats().frames_ok, 0);

        // The same frame with a silence of exactly t1.5 is fine.
        let t = send(&mut slave, &frame[..3], t + T3_5);
        let t = send(&mut slave, &frame[3..], t + T1_5);
        assert_eq!(reply_to(&mut slave, &mut bank, t + T3_5), Some(frame));
        assert_eq!(bank.holding[0], 7);
    }

    #[test]
    fn an_overrun_is_discarded() {
        let mut slave = RtuSlave::new(1, TIMING).unwrap();
        let mut bank = Bank::default();
        // A valid request followed, without a pause, by enough bytes to pass 256.
        let mut bytes = adu(1, &READ_2);
        bytes.resize(MAX_ADU_LEN + 1, 0x55);
        let t = send(&mut slave, &bytes, 0);
        assert_eq!(reply_to(&mut slave, &mut bank, t + T3_5), None);
        assert_eq!(slave.stats().overruns, 1);
        assert_eq!(slave.stats().frames_ok, 0);
    }

    #[test]
    fn a_wrong_crc_is_counted_and_not_answered() {
        let mut slave = RtuSlave::new(1, TIMING).unwrap();
        let mut bank = Bank::default();
        for flip in [0usize, 1, 5, 6, 7] {
            let mut frame = adu(1, &[0x06, 0x00, 0x00, 0x00, 0x07]);
            frame[flip] ^= 0x01;
            let t = send(&mut slave, &frame, u64::from(flip as u32) * 100_000);
            assert_eq!(reply_to(&mut slave, &mut bank, t + T3_5), None);
        }
        // Too short to hold a CRC.
        let t = send(&mut slave, &[0x01, 0x03, 0x00], 1_000_000);
        assert_eq!(reply_to(&mut slave, &mut bank, t + T3_5), None);
        assert_eq!(slave.stats().crc_errors, 6);
        assert_eq!(bank.writes, 0);
    }

    #[test]
    fn other_units_are_ignored() {
        let mut slave = RtuSlave::new(17, TIMING).unwrap();
        let mut bank = Bank::default();
        for unit in [1, 16, 18, 247, 248, 255] {
            let t = send(&mut slave, &adu(unit, &[0x06, 0x00, 0x00, 0x00, 0x07]), 0);
            assert_eq!(reply_to(&mut slave, &mut bank, t + T3_5), None);
        }
        assert_eq!(slave.stats().not_for_us, 6);
        assert_eq!(slave.stats().frames_ok, 6);
        assert_eq!(bank.writes, 0);
    }

    #[test]
    fn a_broadcast_write_is_executed_without_a_reply() {
        let mut slave = RtuSlave::new(1, TIMING).unwrap();
        let mut bank = Bank::default();
        let t = send(&mut slave, &adu(0, &[0x06, 0x00, 0x03, 0x12, 0x34]), 0);
        assert_eq!(reply_to(&mut slave, &mut bank, t + T3_5), None);
        assert_eq!(bank.holding[3], 0x1234);
        let write_2 = [0x10, 0x00, 0x04, 0x00, 0x02, 0x04, 0xAA, 0xAA, 0xBB, 0xBB];
        let t = send(&mut slave, &adu(0, &write_2), t + T3_5);
        assert_eq!(reply_to(&mut slave, &mut bank, t + T3_5), None);
        assert_eq!(bank.holding[4..6], [0xAAAA, 0xBBBB]);
        // Neither a failed write nor a read, nor an unsupported function, gets an answer.
        for pdu in [
            &[0x06, 0x00, 0x63, 0x00, 0x01][..],
            &READ_2,
            &[0x01, 0, 0, 0, 1],
        ] {
            let t = send(&mut slave, &adu(0, pdu), t + T3_5);
            assert_eq!(reply_to(&mut slave, &mut bank, t + T3_5), None);
        }
        assert_eq!(bank.writes, 2);
        assert_eq!(
            *slave.stats(),
            SlaveStats {
                frames_ok: 5,
                broadcasts: 5,
                ..SlaveStats::default()
            }
        );
    }

    #[test]
    fn exceptions_carry_the_unit_and_a_crc() {
        let mut slave = RtuSlave::new(9, TIMING).unwrap();
        let mut bank = Bank::default();
        let t = send(&mut slave, &adu(9, &[0x03, 0x00, 0x09, 0x00, 0x02]), 0);
        assert_eq!(
            reply_to(&mut slave, &mut bank, t + T3_5),
            Some(adu(9, &[0x83, 0x02]))
        );
        let t = send(
            &mut slave,
            &adu(9, &[0x05, 0x00, 0x00, 0xFF, 0x00]),
            t + T3_5,
        );
        assert_eq!(
            reply_to(&mut slave, &mut bank, t + T3_5),
            Some(adu(9, &[0x85, 0x01]))
        );
        assert_eq!(slave.stats().exceptions_sent, 2);
    }

    #[test]
    fn a_frame_not_polled_before_the_next_is_counted_missed() {
        let mut slave = RtuSlave::new(1, TIMING).unwrap();
        let mut bank = Bank::default();
        let t = send(&mut slave, &adu(1, &READ_2), 0);
        let t = send(&mut slave, &adu(1, &READ_2), t + T3_5);
        assert!(reply_to(&mut slave, &mut bank, t + T3_5).is_some());
        assert_eq!((slave.stats().missed, slave.stats().responses), (1, 1));
        slave.clear_stats();
        assert_eq!(*slave.stats(), SlaveStats::default());
    }

    #[test]
    fn a_unit_change_applies_to_the_next_frame() {
        let mut slave = RtuSlave::new(1, TIMING).unwrap();
        let mut bank = Bank::default();
        slave.set_unit(2).unwrap();
        let t = send(&mut slave, &adu(1, &READ_2), 0);
        assert_eq!(reply_to(&mut slave, &mut bank, t + T3_5), None);
        let t = send(&mut slave, &adu(2, &READ_2), t + T3_5);
        assert_eq!(
            reply_to(&mut slave, &mut bank, t + T3_5).map(|r| r[0]),
            Some(2)
        );
    }
}
