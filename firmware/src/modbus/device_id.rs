//! Function 43/14 (0x2B/0x0E), read device identification (Modbus application protocol V1.1b3,
//! section 6.21).
//!
//! Objects come from [`RegisterBank::device_identification`]. They fall in three categories:
//! basic 0x00–0x02 (vendor name, product code, major-minor revision; mandatory), regular
//! 0x03–0x7F (0x03–0x06 are vendor URL, product name, model name, user application name) and
//! extended 0x80–0xFF (private). The conformity level reported is the highest category the bank
//! has any object in, with bit 7 set because individual access (code 04) is supported.
//!
//! Stream access (codes 01–03) sends the objects of the category from the requested one on,
//! as many as fit, and says where to continue ("more follows" 0xFF, next object id). The spec
//! asks two things of a server that this module does:
//! - a stream request whose object id is not a known object of the category restarts at 0;
//! - a request for a category above the device's conformity level is answered at that level.
//!
//! Individual access (code 04) sends one object; an unknown one is exception 02.

use super::pdu::{MAX_PDU_LEN, function};
use super::{Exception, RegisterBank};

/// The read-device-id code of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum ReadDeviceIdCode {
    /// 01: stream the basic objects.
    Basic = 0x01,
    /// 02: stream the basic and regular objects.
    Regular = 0x02,
    /// 03: stream all objects.
    Extended = 0x03,
    /// 04: one object.
    Individual = 0x04,
}

impl ReadDeviceIdCode {
    /// The code for a request byte; other values are exception 03.
    pub const fn from_u8(code: u8) -> Option<Self> {
        match code {
            0x01 => Some(Self::Basic),
            0x02 => Some(Self::Regular),
            0x03 => Some(Self::Extended),
            0x04 => Some(Self::Individual),
            _ => None,
        }
    }

    /// The last object id of the category streamed, for the stream codes.
    const fn last_object(self) -> u8 {
        match self {
            Self::Basic => 0x02,
            Self::Regular => 0x7F,
            Self::Extended | Self::Individual => 0xFF,
        }
    }
}

/// Set in the conformity level when individual access is supported.
pub const INDIVIDUAL_ACCESS: u8 = 0x80;

/// Bytes before the first object: function, MEI type, code, conformity level, more follows,
/// next object id, number of objects.
const HEADER_LEN: usize = 7;

/// The device's conformity level byte: its highest category with individual access.
pub fn conformity_level<B: RegisterBank + ?Sized>(bank: &B) -> u8 {
    let has_any = |ids: core::ops::RangeInclusive<u8>| {
        ids.into_iter()
            .any(|id| bank.device_identification(id).is_some())
    };
    let category = if has_any(0x80..=0xFF) {
        ReadDeviceIdCode::Extended
    } else if has_any(0x03..=0x7F) {
        ReadDeviceIdCode::Regular
    } else {
        ReadDeviceIdCode::Basic
    };
    INDIVIDUAL_ACCESS | category as u8
}

/// Writes the response PDU to a read-device-identification request into `out` and returns its
/// length.
pub fn respond<B: RegisterBank + ?Sized>(
    bank: &B,
    code: ReadDeviceIdCode,
    object_id: u8,
    out: &mut [u8],
) -> Result<usize, Exception> {
    let limit = out.len().min(MAX_PDU_LEN);
    // A header and one object of at least one byte, or there is nothing to say.
    if limit < HEADER_LEN + 3 {
        return Err(Exception::ServerDeviceFailure);
    }
    let out = &mut out[..limit];
    let conformity = conformity_level(bank);
    out[..HEADER_LEN].copy_from_slice(&[
        function::ENCAPSULATED_INTERFACE,
        function::MEI_READ_DEVICE_ID,
        code as u8,
        conformity,
        0x00,
        0x00,
        0x00,
    ]);
    let mut writer = Objects {
        out,
        len: HEADER_LEN,
        count: 0,
    };

    if code == ReadDeviceIdCode::Individual {
        let value = bank
            .device_identification(object_id)
            .ok_or(Exception::IllegalDataAddress)?;
        writer.push(object_id, value);
        return Ok(writer.finish());
    }

    // Never stream a category above the device's own level.
    let level = conformity & !INDIVIDUAL_ACCESS;
    let category = if (code as u8) > level {
        ReadDeviceIdCode::from_u8(level).unwrap_or(ReadDeviceIdCode::Basic)
    } else {
        code
    };
    let last = category.last_object();
    let start = if object_id <= last && bank.device_identification(object_id).is_some() {
        object_id
    } else {
        0
    };
    for id in start..=last {
        let Some(value) = bank.device_identification(id) else {
            continue;
        };
        if writer.count > 0 && !writer.fits(value) {
            writer.out[4] = 0xFF;
            writer.out[5] = id;
            break;
        }
        writer.push(id, value);
    }
    Ok(writer.finish())
}

struct Objects<'a> {
    out: &'a mut [u8],
    len: usize,
    count: u8,
}

impl Objects<'_> {
    fn room(&self) -> usize {
        // The object id and length bytes come first.
        self.out.len().saturating_sub(self.len + 2)
    }

    fn fits(&self, value: &str) -> bool {
        value.len() <= self.room()
    }

    /// Appends one object; one too long for the rest of the PDU is cut at a character
    /// boundary: the spec guarantees that an object fits, so only a bank that breaks that
    /// promise gets a shortened value, and a readable one.
    fn push(&mut self, id: u8, value: &str) {
        let mut n = value.len().min(self.room()).min(usize::from(u8::MAX));
        while !value.is_char_boundary(n) {
            n -= 1;
        }
        let bytes = &value.as_bytes()[..n];
        self.out[self.len] = id;
        // n ≤ 255 by the min above.
        self.out[self.len + 1] = n as u8;
        self.out[self.len + 2..self.len + 2 + n].copy_from_slice(bytes);
        self.len += 2 + n;
        self.count += 1;
    }

    fn finish(self) -> usize {
        self.out[6] = self.count;
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Ident(&'static [(u8, &'static str)]);

    impl RegisterBank for Ident {
        fn read_input_registers(&mut self, _: u16, _: &mut [u16]) -> Result<(), Exception> {
            Err(Exception::IllegalDataAddress)
        }
        fn read_holding_registers(&mut self, _: u16, _: &mut [u16]) -> Result<(), Exception> {
            Err(Exception::IllegalDataAddress)
        }
        fn write_holding_registers(&mut self, _: u16, _: &[u16]) -> Result<(), Exception> {
            Err(Exception::IllegalDataAddress)
        }
        fn device_identification(&self, object_id: u8) -> Option<&str> {
            self.0
                .iter()
                .find(|(id, _)| *id == object_id)
                .map(|(_, v)| *v)
        }
    }

    fn ask(bank: &Ident, code: u8, object_id: u8) -> Result<std::vec::Vec<u8>, Exception> {
        let mut out = [0u8; MAX_PDU_LEN];
        let code = ReadDeviceIdCode::from_u8(code).expect("a valid code");
        respond(bank, code, object_id, &mut out).map(|len| out[..len].to_vec())
    }

    /// The objects of the application protocol's example in 6.21.
    const SPEC: Ident = Ident(&[
        (0x00, "Company identification"),
        (0x01, "Product code XX"),
        (0x02, "V2.11"),
    ]);

    fn object(id: u8, value: &str) -> std::vec::Vec<u8> {
        let mut v = std::vec![id, value.len() as u8];
        v.extend_from_slice(value.as_bytes());
        v
    }

    #[test]
    fn the_specs_basic_stream_example() {
        // Modbus application protocol V1.1b3, 6.21, request 2B 0E 01 00, response
        // 2B 0E 01 01 00 00 03 then the three objects. The spec's device has conformity level
        // 01 (basic, stream only); this one supports individual access too, so 0x81.
        let mut expected = std::vec![0x2B, 0x0E, 0x01, 0x81, 0x00, 0x00, 0x03];
        expected.extend(object(0x00, "Company identification"));
        expected.extend(object(0x01, "Product code XX"));
        expected.extend(object(0x02, "V2.11"));
        assert_eq!(
            expected[7..9],
            [0x00, 0x16],
            "length 22 as printed in the spec"
        );
        assert_eq!(ask(&SPEC, 0x01, 0x00), Ok(expected));
    }

    const REGULAR: Ident = Ident(&[
        (0x00, "Tianzhong"),
        (0x01, "TZ-GAS-1"),
        (0x02, "0.1"),
        (0x04, "gas detector node"),
        (0x06, "node"),
    ]);

    #[test]
    fn regular_stream_includes_the_basic_objects_and_reports_level_0x82() {
        let mut expected = std::vec![0x2B, 0x0E, 0x02, 0x82, 0x00, 0x00, 0x05];
        for (id, v) in REGULAR.0 {
            expected.extend(object(*id, v));
        }
        assert_eq!(ask(&REGULAR, 0x02, 0x00), Ok(expected));
    }

    #[test]
    fn a_stream_starts_at_the_requested_object() {
        let mut expected = std::vec![0x2B, 0x0E, 0x02, 0x82, 0x00, 0x00, 0x02];
        expected.extend(object(0x04, "gas detector node"));
        expected.extend(object(0x06, "node"));
        assert_eq!(ask(&REGULAR, 0x02, 0x04), Ok(expected));
    }

    #[test]
    fn an_unknown_start_object_restarts_the_stream_at_0() {
        let from_zero = ask(&REGULAR, 0x02, 0x00);
        // 0x05 is regular but absent; 0x90 is outside the category.
        assert_eq!(ask(&REGULAR, 0x02, 0x05), from_zero);
        assert_eq!(ask(&REGULAR, 0x02, 0x90), from_zero);
        // 0x04 exists but is not basic: a basic stream restarts too.
        assert_eq!(ask(&REGULAR, 0x01, 0x04), ask(&REGULAR, 0x01, 0x00));
    }

    #[test]
    fn a_category_above_the_level_is_answered_at_the_level() {
        // Extended asked of a regular device: the regular objects, the request's code echoed.
        let mut regular = ask(&REGULAR, 0x02, 0x00).unwrap();
        regular[2] = 0x03;
        assert_eq!(ask(&REGULAR, 0x03, 0x00), Ok(regular));
        let mut basic = ask(&SPEC, 0x01, 0x00).unwrap();
        basic[2] = 0x02;
        assert_eq!(ask(&SPEC, 0x02, 0x00), Ok(basic));
    }

    #[test]
    fn individual_access() {
        let mut expected = std::vec![0x2B, 0x0E, 0x04, 0x82, 0x00, 0x00, 0x01];
        expected.extend(object(0x04, "gas detector node"));
        assert_eq!(ask(&REGULAR, 0x04, 0x04), Ok(expected));
        assert_eq!(
            ask(&REGULAR, 0x04, 0x05),
            Err(Exception::IllegalDataAddress)
        );
        assert_eq!(
            ask(&REGULAR, 0x04, 0xFF),
            Err(Exception::IllegalDataAddress)
        );
    }

    const LONG: &str = "0123456789012345678901234567890123456789012345678901234567890123456789\
                        0123456789012345678901234567890123456789012345678901234567890123456789";

    const SPLIT: Ident = Ident(&[
        (0x00, "V"),
        (0x01, "P"),
        (0x02, "1"),
        (0x80, LONG),
        (0x81, LONG),
        (0x82, LONG),
    ]);

    #[test]
    fn a_stream_that_does_not_fit_says_where_to_go_on() {
        // 140-byte objects: the basic three (9 bytes) and one long one (142) fill 7 + 9 + 142
        // = 158 bytes; a second long one would pass 253.
        let first = ask(&SPLIT, 0x03, 0x00).unwrap();
        assert_eq!(first[..7], [0x2B, 0x0E, 0x03, 0x83, 0xFF, 0x81, 0x04]);
        assert_eq!(first.len(), 158);
        let second = ask(&SPLIT, 0x03, first[5]).unwrap();
        assert_eq!(second[..7], [0x2B, 0x0E, 0x03, 0x83, 0xFF, 0x82, 0x01]);
        assert_eq!(second[7..9], [0x81, 140]);
        let third = ask(&SPLIT, 0x03, second[5]).unwrap();
        assert_eq!(third[..7], [0x2B, 0x0E, 0x03, 0x83, 0x00, 0x00, 0x01]);
        assert_eq!(third[7..9], [0x82, 140]);
    }

    #[test]
    fn an_object_too_long_for_any_response_is_cut_at_a_character() {
        struct Huge(std::string::String);
        impl RegisterBank for Huge {
            fn read_input_registers(&mut self, _: u16, _: &mut [u16]) -> Result<(), Exception> {
                Err(Exception::IllegalDataAddress)
            }
            fn read_holding_registers(&mut self, _: u16, _: &mut [u16]) -> Result<(), Exception> {
                Err(Exception::IllegalDataAddress)
            }
            fn write_holding_registers(&mut self, _: u16, _: &[u16]) -> Result<(), Exception> {
                Err(Exception::IllegalDataAddress)
            }
            fn device_identification(&self, object_id: u8) -> Option<&str> {
                (object_id == 0).then_some(self.0.as_str())
            }
        }
        // One ASCII byte, then two-byte characters: the 244 bytes of room (253 - 7 - 2) end
        // in the middle of one, so the value is cut one byte earlier.
        let huge = Huge(std::format!("a{}", "é".repeat(200)));
        let mut out = [0u8; MAX_PDU_LEN];
        let len = respond(&huge, ReadDeviceIdCode::Basic, 0, &mut out).unwrap();
        assert_eq!(out[6..9], [1, 0x00, 243]);
        assert_eq!(len, 7 + 2 + 243);
        assert!(core::str::from_utf8(&out[9..len]).is_ok());
    }
}
