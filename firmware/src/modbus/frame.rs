//! RTU frame assembly by silent intervals, sans-IO: the caller feeds each received byte with its
//! arrival time and polls; nothing here reads a clock or a UART.
//!
//! Modbus over Serial Line V1.02, section 2.5.1.1: a frame ends after t3.5 of silence; a
//! silence longer than t1.5 between two characters of one frame makes it incomplete, and the
//! receiver discards it. The assembler also discards a frame longer than the 256 bytes an RTU
//! ADU can have. It does not look at the bytes: CRC and address are the slave's business.
//!
//! Times are monotonic microseconds, each byte stamped when it was received. A frame is
//! complete once t3.5 has passed since its last byte, whether or not [`poll`] was called at that
//! moment, so a byte arriving t3.5 or more after the previous one always starts a new frame:
//! the result never depends on how often the caller polls.
//!
//! [`poll`]: FrameAssembler::poll

use heapless::Vec;

use super::timing::RtuTiming;

/// The longest RTU ADU: address, a PDU of at most 253 bytes, and the CRC.
pub const MAX_ADU_LEN: usize = 256;

/// Why a frame was thrown away when it completed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Discard {
    /// A silence longer than t1.5 between two of its characters.
    Corrupt,
    /// More than [`MAX_ADU_LEN`] bytes.
    Overrun,
}

/// What [`FrameAssembler::poll`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Assembled<'a> {
    /// A complete frame, unchecked.
    Frame(&'a [u8]),
    /// A complete frame that was discarded.
    Discarded(Discard),
}

/// What became of a received byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum Pushed {
    /// It continues the frame being received or starts one on a quiet line.
    Accepted,
    /// It starts a new frame while the previous one was complete but never polled: that frame
    /// is lost. Answering it now would collide with the master's next request anyway.
    SupersededUnpolled,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// No frame in progress; the buffer may still hold the last polled frame.
    Idle,
    Receiving {
        last_us: u64,
        corrupt: bool,
        overrun: bool,
    },
}

/// Assembles RTU frames from timestamped bytes.
#[derive(Clone, Debug)]
pub struct FrameAssembler {
    timing: RtuTiming,
    buf: Vec<u8, MAX_ADU_LEN>,
    state: State,
}

impl FrameAssembler {
    /// An assembler for a line with `timing`, assuming the line has been quiet: a node that
    /// starts listening in the middle of someone else's frame assembles its tail, which then
    /// fails the CRC check.
    pub const fn new(timing: RtuTiming) -> Self {
        Self {
            timing,
            buf: Vec::new(),
            state: State::Idle,
        }
    }

    /// The line timing in use.
    pub const fn timing(&self) -> RtuTiming {
        self.timing
    }

    /// Changes the line timing (after a baud-rate change) and drops any frame in progress,
    /// whose gaps were measured against the old timing.
    pub fn set_timing(&mut self, timing: RtuTiming) {
        self.timing = timing;
        self.reset();
    }

    /// Forgets any frame in progress, e.g. after the node's own transmission on a half-duplex
    /// line echoed back into its receiver.
    pub fn reset(&mut self) {
        self.buf.clear();
        self.state = State::Idle;
    }

    /// Takes one received byte, stamped with its arrival time.
    pub fn push(&mut self, byte: u8, now_us: u64) -> Pushed {
        let mut pushed = Pushed::Accepted;
        match &mut self.state {
            State::Receiving {
                last_us,
                corrupt,
                overrun,
            } => {
                // A clock that went backwards counts as no gap rather than a huge one.
                let gap = now_us.saturating_sub(*last_us);
                if gap >= u64::from(self.timing.t3_5_us()) {
                    pushed = Pushed::SupersededUnpolled;
                    self.start(byte, now_us);
                    return pushed;
                }
                // Arrivals are one character apart when the line is busy, so the silence is
                // the gap less one character.
                let silence = gap.saturating_sub(u64::from(self.timing.char_us()));
                if silence > u64::from(self.timing.t1_5_us()) {
                    *corrupt = true;
                }
                *last_us = now_us;
                if self.buf.push(byte).is_err() {
                    *overrun = true;
                }
            }
            State::Idle => self.start(byte, now_us),
        }
        pushed
    }

    fn start(&mut self, byte: u8, now_us: u64) {
        self.buf.clear();
        // The buffer was just cleared, so the first byte always fits.
        let _ = self.buf.push(byte);
        self.state = State::Receiving {
            last_us: now_us,
            corrupt: false,
            overrun: false,
        };
    }

    /// The frame completed by `now_us`, if any. Each frame is reported once.
    pub fn poll(&mut self, now_us: u64) -> Option<Assembled<'_>> {
        let State::Receiving {
            last_us,
            corrupt,
            overrun,
        } = self.state
        else {
            return None;
        };
        if now_us.saturating_sub(last_us) < u64::from(self.timing.t3_5_us()) {
            return None;
        }
        self.state = State::Idle;
        Some(if overrun {
            Assembled::Discarded(Discard::Overrun)
        } else if corrupt {
            Assembled::Discarded(Discard::Corrupt)
        } else {
            Assembled::Frame(&self.buf)
        })
    }

    /// When the frame being received completes, if one is: the time of the next useful
    /// [`poll`](Self::poll). Until then an MCU can sleep (WFI) unless a byte arrives.
    pub fn next_deadline(&self) -> Option<u64> {
        match self.state {
            State::Receiving { last_us, .. } => {
                Some(last_us.saturating_add(u64::from(self.timing.t3_5_us())))
            }
            State::Idle => None,
        }
    }

    /// Whether a frame is being received.
    pub fn is_receiving(&self) -> bool {
        matches!(self.state, State::Receiving { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // 19200 baud: a character lasts 572 µs, t1.5 = 860 µs, t3.5 = 2006 µs.
    const TIMING: RtuTiming = RtuTiming::from_baud(19_200);
    const CHAR: u64 = TIMING.char_us() as u64;
    const T1_5: u64 = TIMING.t1_5_us() as u64;
    const T3_5: u64 = TIMING.t3_5_us() as u64;

    fn feed_back_to_back(a: &mut FrameAssembler, bytes: &[u8], start_us: u64) -> u64 {
        let mut t = start_us;
        for &b in bytes {
            t += CHAR;
            assert_eq!(a.push(b, t), Pushed::Accepted);
        }
        t
    }

    #[test]
    fn a_frame_completes_exactly_t3_5_after_its_last_byte() {
        let mut a = FrameAssembler::new(TIMING);
        assert_eq!(a.next_deadline(), None);
        let last = feed_back_to_back(&mut a, &[1, 2, 3], 1_000);
        assert_eq!(a.next_deadline(), Some(last + T3_5));
        assert_eq!(a.poll(last + T3_5 - 1), None);
        assert_eq!(a.poll(last + T3_5), Some(Assembled::Frame(&[1, 2, 3])));
        assert_eq!(a.poll(last + T3_5 + 1), None, "reported once");
        assert_eq!(a.next_deadline(), None);
    }

    #[test]
    fn t3_5_of_silence_splits_two_frames_even_without_a_poll_between() {
        let mut a = FrameAssembler::new(TIMING);
        let last = feed_back_to_back(&mut a, &[1, 2], 0);
        // Not polled in time: the first frame is lost, and the second must not absorb it.
        assert_eq!(a.push(9, last + T3_5), Pushed::SupersededUnpolled);
        assert_eq!(a.poll(last + 2 * T3_5), Some(Assembled::Frame(&[9])));
    }

    #[test]
    fn polled_frames_separated_by_t3_5_are_both_delivered() {
        let mut a = FrameAssembler::new(TIMING);
        let last = feed_back_to_back(&mut a, &[1, 2], 0);
        assert_eq!(a.poll(last + T3_5), Some(Assembled::Frame(&[1, 2])));
        let last = feed_back_to_back(&mut a, &[3, 4, 5], last + T3_5);
        assert_eq!(a.poll(last + T3_5), Some(Assembled::Frame(&[3, 4, 5])));
    }

    #[test]
    fn a_silence_just_over_t1_5_corrupts_the_frame() {
        let mut a = FrameAssembler::new(TIMING);
        let t = feed_back_to_back(&mut a, &[1, 2], 0);
        // Silence of t1.5 exactly is still allowed.
        assert_eq!(a.push(3, t + CHAR + T1_5), Pushed::Accepted);
        let t = t + CHAR + T1_5;
        assert_eq!(a.poll(t + T3_5), Some(Assembled::Frame(&[1, 2, 3])));

        let t = feed_back_to_back(&mut a, &[1, 2], t + T3_5);
        assert_eq!(a.push(3, t + CHAR + T1_5 + 1), Pushed::Accepted);
        let t = t + CHAR + T1_5 + 1;
        assert_eq!(
            a.poll(t + T3_5 - 1),
            None,
            "a corrupt frame still waits for t3.5"
        );
        assert_eq!(
            a.poll(t + T3_5),
            Some(Assembled::Discarded(Discard::Corrupt))
        );
    }

    #[test]
    fn the_257th_byte_is_an_overrun() {
        let mut a = FrameAssembler::new(TIMING);
        let full = [0xA5; MAX_ADU_LEN];
        let t = feed_back_to_back(&mut a, &full, 0);
        assert_eq!(a.poll(t + T3_5), Some(Assembled::Frame(&full[..])));

        let t = feed_back_to_back(&mut a, &[0xA5; MAX_ADU_LEN + 1], t + T3_5);
        assert_eq!(
            a.poll(t + T3_5),
            Some(Assembled::Discarded(Discard::Overrun))
        );
    }

    #[test]
    fn reset_drops_the_frame_in_progress() {
        let mut a = FrameAssembler::new(TIMING);
        let t = feed_back_to_back(&mut a, &[1, 2], 0);
        a.reset();
        assert_eq!(a.next_deadline(), None);
        assert_eq!(a.poll(t + T3_5), None);
    }

    #[test]
    fn a_clock_going_backwards_is_no_gap() {
        let mut a = FrameAssembler::new(TIMING);
        assert_eq!(a.push(1, 10_000), Pushed::Accepted);
        assert_eq!(a.push(2, 9_000), Pushed::Accepted);
        assert_eq!(a.poll(9_000 + T3_5), Some(Assembled::Frame(&[1, 2])));
    }
}
