//! RTU character timing: the t1.5 and t3.5 silent intervals that delimit frames.
//!
//! Modbus over Serial Line V1.02, section 2.5.1.1: a character is 11 bits on the wire (start,
//! 8 data, parity or a second stop bit, stop), so t3.5 = 3.5 × 11 / baud seconds and t1.5 =
//! 1.5 × 11 / baud. Above 19200 baud the guide fixes t1.5 = 750 µs and t3.5 = 1750 µs, because
//! at high rates the computed intervals are shorter than a UART interrupt's latency.
//!
//! The intervals are *silences*, from the end of one character to the start of the next. A
//! receiver sees a byte when its last bit has arrived, so two arrivals are one character time
//! further apart than the silence between them; [`RtuTiming::char_us`] lets the frame assembler
//! take that out.

/// Baud rates above this use the fixed intervals.
pub const FIXED_TIMING_ABOVE_BAUD: u32 = 19_200;

/// t1.5 above [`FIXED_TIMING_ABOVE_BAUD`], in microseconds.
pub const FIXED_T1_5_US: u32 = 750;

/// t3.5 above [`FIXED_TIMING_ABOVE_BAUD`], in microseconds.
pub const FIXED_T3_5_US: u32 = 1_750;

/// Bits per RTU character, whatever the parity setting (the guide counts 11 in every case).
pub const BITS_PER_CHAR: u32 = 11;

/// The two silent intervals of an RTU line at one baud rate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RtuTiming {
    char_us: u32,
    t1_5_us: u32,
    t3_5_us: u32,
}

impl RtuTiming {
    /// The intervals for `baud` bits per second.
    ///
    /// The computed intervals are rounded up: a receiver that waits a fraction of a microsecond
    /// too long only delays its reply, one that waits too little splits a frame. A baud rate of
    /// 0 is taken as 1 so that a misconfigured node gets very long intervals, not a panic.
    pub const fn from_baud(baud: u32) -> Self {
        let baud = if baud == 0 { 1 } else { baud as u64 };
        // Rounded down, unlike the intervals: it is subtracted from a gap, and a shorter
        // character time errs towards calling a gap too long, never towards missing one.
        let char_us = clamp_u32(BITS_PER_CHAR as u64 * 1_000_000 / baud);
        if baud > FIXED_TIMING_ABOVE_BAUD as u64 {
            return Self {
                char_us,
                t1_5_us: FIXED_T1_5_US,
                t3_5_us: FIXED_T3_5_US,
            };
        }
        // Half characters are counted in tenths to stay in integers:
        // 1.5 × 11 × 10^6 = 16.5 × 10^6 and 3.5 × 11 × 10^6 = 38.5 × 10^6.
        let t1_5 = (15 * BITS_PER_CHAR as u64 * 1_000_000).div_ceil(10 * baud);
        let t3_5 = (35 * BITS_PER_CHAR as u64 * 1_000_000).div_ceil(10 * baud);
        Self {
            char_us,
            t1_5_us: clamp_u32(t1_5),
            t3_5_us: clamp_u32(t3_5),
        }
    }

    /// The same intervals without the inter-character check: a gap inside a frame no longer
    /// makes it corrupt, only a silence of t3.5 ends it, and the CRC still rejects a damaged
    /// frame. For transports that deliver bytes with gaps that have nothing to do with the
    /// wire — USB-to-RS-485 adapters, serial-over-TCP servers, emulators — where the t1.5 rule
    /// would throw away good frames. FreeModbus, the most deployed embedded slave, never
    /// enforces t1.5 at all.
    pub const fn without_inter_char_check(self) -> Self {
        Self {
            t1_5_us: self.t3_5_us,
            ..self
        }
    }

    /// The time one 11-bit character takes on the wire.
    pub const fn char_us(&self) -> u32 {
        self.char_us
    }

    /// The inter-character limit: a longer gap inside a frame makes it corrupt.
    pub const fn t1_5_us(&self) -> u32 {
        self.t1_5_us
    }

    /// The inter-frame silence: after it a frame is complete and the next byte starts another.
    pub const fn t3_5_us(&self) -> u32 {
        self.t3_5_us
    }
}

#[cfg(test)]
mod lenient_tests {
    use super::*;

    #[test]
    fn without_inter_char_check_keeps_t3_5_and_lifts_t1_5_to_it() {
        let t = RtuTiming::from_baud(1200).without_inter_char_check();
        assert_eq!(t.t3_5_us(), RtuTiming::from_baud(1200).t3_5_us());
        assert_eq!(t.t1_5_us(), t.t3_5_us());
        let mut a = crate::modbus::frame::FrameAssembler::new(t);
        // A 20 ms hole inside a frame at 1200 baud (t1.5 = 13.75 ms, t3.5 = 32.1 ms).
        let _ = a.push(0x01, 0);
        let _ = a.push(0x03, 20_000);
        assert!(matches!(
            a.poll(20_000 + u64::from(t.t3_5_us())),
            Some(crate::modbus::frame::Assembled::Frame(&[0x01, 0x03]))
        ));
    }
}

const fn clamp_u32(value: u64) -> u32 {
    if value > u32::MAX as u64 {
        u32::MAX
    } else {
        value as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn computed_below_and_at_19200_baud() {
        // 9600 baud: 11 bits last 1145.83 µs, so t1.5 = 1718.75 µs and t3.5 = 4010.42 µs.
        let t = RtuTiming::from_baud(9_600);
        assert_eq!((t.t1_5_us(), t.t3_5_us()), (1_719, 4_011));
        // 19200 is still computed, not fixed: 859.375 µs and 2005.21 µs.
        let t = RtuTiming::from_baud(19_200);
        assert_eq!((t.t1_5_us(), t.t3_5_us()), (860, 2_006));
        // 1200 baud, the slowest rate mbpoll offers: 13750 µs and 32083.3 µs.
        let t = RtuTiming::from_baud(1_200);
        assert_eq!((t.t1_5_us(), t.t3_5_us()), (13_750, 32_084));
    }

    #[test]
    fn fixed_above_19200_baud() {
        for baud in [19_201, 38_400, 115_200, 921_600] {
            let t = RtuTiming::from_baud(baud);
            assert_eq!((t.t1_5_us(), t.t3_5_us()), (750, 1_750), "{baud} baud");
        }
    }

    #[test]
    fn zero_baud_does_not_divide_by_zero() {
        let t = RtuTiming::from_baud(0);
        assert_eq!((t.t1_5_us(), t.t3_5_us()), (16_500_000, 38_500_000));
    }

    #[test]
    fn character_time_is_eleven_bit_times() {
        // 11 / 9600 s = 1145.83 µs; 11 / 115200 s = 95.49 µs, still real above 19200 baud.
        assert_eq!(RtuTiming::from_baud(9_600).char_us(), 1_145);
        assert_eq!(RtuTiming::from_baud(115_200).char_us(), 95);
    }

    #[test]
    fn a_gap_between_t1_5_and_t3_5_exists_at_every_rate() {
        // The assembler marks a frame corrupt when arrivals are more than t1.5 + one character
        // apart, and splits it at t3.5: without room between the two, corruption could never be
        // seen. The widest character above 19200 baud (573 µs at 19201) still leaves room.
        for baud in [1_200, 9_600, 19_200, 19_201, 115_200, 921_600] {
            let t = RtuTiming::from_baud(baud);
            assert!(
                t.t1_5_us() + t.char_us() < t.t3_5_us(),
                "{baud} baud: {t:?}"
            );
        }
    }
}
