//! Function codes 20 (0x14) read file record and 21 (0x15) write file record, after the Modbus
//! application protocol V1.1b3, sections 6.14 and 6.15: how firmware images travel to a node.
//!
//! A request carries one or more sub-requests, each naming a reference type (always 6), a file
//! number (1..=0xFFFF), a record number (0..=0x270F) and a record length in registers. The
//! bank serves them through [`RegisterBank::read_file_record`] and
//! [`RegisterBank::write_file_record`], whose default answer is exception 01: a bank without
//! files does not support these functions.
//!
//! Checks, in the protocol's order: the byte count (03), then each sub-request's reference
//! type, file and record numbers (02), then the bank. Write sub-requests are executed in order;
//! the bank's exception stops the request there. The write response is an echo of the request.

use super::{Exception, RegisterBank};

/// 20: read file record.
pub const READ_FILE_RECORD: u8 = 0x14;
/// 21: write file record.
pub const WRITE_FILE_RECORD: u8 = 0x15;
/// The only reference type the protocol defines.
pub const REFERENCE_TYPE: u8 = 0x06;
/// Highest record number.
pub const MAX_RECORD_NUMBER: u16 = 0x270F;

/// Bytes of a read sub-request.
const READ_SUB_LEN: usize = 7;

fn be(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn check_reference(reference: u8, file: u16, record: u16) -> Result<(), Exception> {
    if reference != REFERENCE_TYPE || file == 0 || record > MAX_RECORD_NUMBER {
        return Err(Exception::IllegalDataAddress);
    }
    Ok(())
}

/// Handles a request PDU with function code 20 or 21, writing the response PDU into `out`
/// (which should hold the 253 bytes of the largest PDU). `None` for other function codes.
pub fn handle<B: RegisterBank + ?Sized>(
    pdu: &[u8],
    bank: &mut B,
    out: &mut [u8],
) -> Option<Result<usize, Exception>> {
    match *pdu.first()? {
        READ_FILE_RECORD => Some(read(pdu, bank, out)),
        WRITE_FILE_RECORD => Some(write(pdu, bank, out)),
        _ => None,
    }
}

fn read<B: RegisterBank + ?Sized>(
    pdu: &[u8],
    bank: &mut B,
    out: &mut [u8],
) -> Result<usize, Exception> {
    let (&count, subs) = pdu[1..].split_first().ok_or(Exception::IllegalDataValue)?;
    let count = usize::from(count);
    if !(0x07..=0xF5).contains(&count) || !count.is_multiple_of(READ_SUB_LEN) || subs.len() != count
    {
        return Err(Exception::IllegalDataValue);
    }
    // The whole response must fit one PDU: code, length, then 2 + 2n per sub-request.
    let mut len = 2usize;
    for s in subs.chunks_exact(READ_SUB_LEN) {
        check_reference(s[0], be(s, 1), be(s, 3))?;
        let n = usize::from(be(s, 5));
        if n == 0 || u32::from(be(s, 3)) + n as u32 > u32::from(MAX_RECORD_NUMBER) + 1 {
            return Err(Exception::IllegalDataAddress);
        }
        len += 2 + 2 * n;
    }
    if len > super::pdu::MAX_PDU_LEN {
        return Err(Exception::IllegalDataValue);
    }
    let out = out.get_mut(..len).ok_or(Exception::ServerDeviceFailure)?;
    out[0] = READ_FILE_RECORD;
    out[1] = (len - 2) as u8;
    let mut at = 2;
    let mut regs = [0u16; 125];
    for s in subs.chunks_exact(READ_SUB_LEN) {
        let n = usize::from(be(s, 5));
        let regs = &mut regs[..n];
        bank.read_file_record(be(s, 1), be(s, 3), regs)?;
        out[at] = (1 + 2 * n) as u8;
        out[at + 1] = REFERENCE_TYPE;
        for (i, r) in regs.iter().enumerate() {
            out[at + 2 + 2 * i..at + 4 + 2 * i].copy_from_slice(&r.to_be_bytes());
        }
        at += 2 + 2 * n;
    }
    Ok(len)
}

fn write<B: RegisterBank + ?Sized>(
    pdu: &[u8],
    bank: &mut B,
    out: &mut [u8],
) -> Result<usize, Exception> {
    let (&count, mut subs) = pdu[1..].split_first().ok_or(Exception::IllegalDataValue)?;
    if !(0x09..=0xFB).contains(&count) || subs.len() != usize::from(count) {
        return Err(Exception::IllegalDataValue);
    }
    // First every sub-request's framing, then the writes: a malformed request writes nothing.
    let mut check = subs;
    while !check.is_empty() {
        let Some((head, rest)) = check.split_first_chunk::<7>() else {
            return Err(Exception::IllegalDataValue);
        };
        let n = usize::from(be(head, 5));
        if n == 0 || rest.len() < 2 * n {
            return Err(Exception::IllegalDataValue);
        }
        check_reference(head[0], be(head, 1), be(head, 3))?;
        if u32::from(be(head, 3)) + n as u32 > u32::from(MAX_RECORD_NUMBER) + 1 {
            return Err(Exception::IllegalDataAddress);
        }
        check = &rest[2 * n..];
    }
    let out = out
        .get_mut(..pdu.len())
        .ok_or(Exception::ServerDeviceFailure)?;
    let mut regs = [0u16; 125];
    while let Some((head, rest)) = subs.split_first_chunk::<7>() {
        let n = usize::from(be(head, 5));
        for (i, r) in regs[..n].iter_mut().enumerate() {
            *r = be(rest, 2 * i);
        }
        bank.write_file_record(be(head, 1), be(head, 3), &regs[..n])?;
        subs = &rest[2 * n..];
    }
    out.copy_from_slice(pdu);
    Ok(pdu.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    /// Files 1..=9 of 10 000 registers each, register value = file * 0x1000 + record at start.
    struct Files {
        written: Vec<(u16, u16, Vec<u16>)>,
        store: std::collections::BTreeMap<(u16, u16), u16>,
    }

    impl RegisterBank for Files {
        fn read_input_registers(&mut self, _: u16, _: &mut [u16]) -> Result<(), Exception> {
            Err(Exception::IllegalDataAddress)
        }
        fn read_holding_registers(&mut self, _: u16, _: &mut [u16]) -> Result<(), Exception> {
            Err(Exception::IllegalDataAddress)
        }
        fn write_holding_registers(&mut self, _: u16, _: &[u16]) -> Result<(), Exception> {
            Err(Exception::IllegalDataAddress)
        }
        fn device_identification(&self, _: u8) -> Option<&str> {
            None
        }
        fn read_file_record(
            &mut self,
            file: u16,
            record: u16,
            out: &mut [u16],
        ) -> Result<(), Exception> {
            if file > 9 {
                return Err(Exception::IllegalDataAddress);
            }
            for (i, r) in out.iter_mut().enumerate() {
                *r = *self.store.get(&(file, record + i as u16)).unwrap_or(&0);
            }
            Ok(())
        }
        fn write_file_record(
            &mut self,
            file: u16,
            record: u16,
            data: &[u16],
        ) -> Result<(), Exception> {
            if file > 9 {
                return Err(Exception::IllegalDataAddress);
            }
            for (i, &v) in data.iter().enumerate() {
                self.store.insert((file, record + i as u16), v);
            }
            self.written.push((file, record, data.to_vec()));
            Ok(())
        }
    }

    fn files() -> Files {
        let mut store = std::collections::BTreeMap::new();
        // The application protocol's example data (section 6.14).
        store.insert((4, 1), 0x0DFE);
        store.insert((4, 2), 0x0020);
        store.insert((3, 9), 0x33CD);
        store.insert((3, 10), 0x0040);
        Files {
            written: Vec::new(),
            store,
        }
    }

    fn run(pdu: &[u8], bank: &mut Files) -> Result<Vec<u8>, Exception> {
        let mut out = [0u8; 253];
        let n = handle(pdu, bank, &mut out).expect("a file-record function")?;
        Ok(out[..n].to_vec())
    }

    #[test]
    fn application_protocol_example_read() {
        // V1.1b3 section 6.14: two groups, file 4 records 1-2 and file 3 records 9-10.
        let req = [
            0x14, 0x0E, 0x06, 0x00, 0x04, 0x00, 0x01, 0x00, 0x02, 0x06, 0x00, 0x03, 0x00, 0x09,
            0x00, 0x02,
        ];
        assert_eq!(
            run(&req, &mut files()),
            Ok(std::vec![
                0x14, 0x0C, 0x05, 0x06, 0x0D, 0xFE, 0x00, 0x20, 0x05, 0x06, 0x33, 0xCD, 0x00, 0x40
            ])
        );
    }

    #[test]
    fn application_protocol_example_write() {
        // V1.1b3 section 6.15: file 4, record 7, three registers; the response is the echo.
        let req = [
            0x15, 0x0D, 0x06, 0x00, 0x04, 0x00, 0x07, 0x00, 0x03, 0x06, 0xAF, 0x04, 0xBE, 0x10,
            0x0D,
        ];
        let mut bank = files();
        assert_eq!(run(&req, &mut bank), Ok(req.to_vec()));
        assert_eq!(
            bank.written,
            std::vec![(4, 7, std::vec![0x06AF, 0x04BE, 0x100D])]
        );
        // And read back with 20.
        let read = [0x14, 0x07, 0x06, 0x00, 0x04, 0x00, 0x07, 0x00, 0x03];
        assert_eq!(
            run(&read, &mut bank),
            Ok(std::vec![
                0x14, 0x08, 0x07, 0x06, 0x06, 0xAF, 0x04, 0xBE, 0x10, 0x0D
            ])
        );
    }

    #[test]
    fn malformed_requests_get_the_protocols_exceptions() {
        let mut bank = files();
        // Byte count not a multiple of 7, or out of 0x07..=0xF5.
        assert_eq!(
            run(&[0x14, 0x06, 6, 0, 4, 0, 1, 0], &mut bank),
            Err(Exception::IllegalDataValue)
        );
        // Reference type 5, file 0, record 0x2710: exception 02.
        for sub in [
            [5, 0, 4, 0, 1, 0, 1],
            [6, 0, 0, 0, 1, 0, 1],
            [6, 0, 4, 0x27, 0x10, 0, 1],
        ] {
            let mut req = std::vec![0x14, 0x07];
            req.extend_from_slice(&sub);
            assert_eq!(run(&req, &mut bank), Err(Exception::IllegalDataAddress));
        }
        // A response longer than a PDU: 03.
        let mut req = std::vec![0x14, 0x0E];
        for _ in 0..2 {
            req.extend_from_slice(&[6, 0, 4, 0, 0, 0, 100]);
        }
        assert_eq!(run(&req, &mut bank), Err(Exception::IllegalDataValue));
        // A write whose record data is shorter than its length: nothing written.
        let req = [
            0x15, 0x0B, 0x06, 0x00, 0x04, 0x00, 0x07, 0x00, 0x03, 0x06, 0xAF, 0x04, 0xBE,
        ];
        assert_eq!(run(&req, &mut bank), Err(Exception::IllegalDataValue));
        assert!(bank.written.is_empty());
        // The bank's own exception is passed on.
        let req = [
            0x15, 0x09, 0x06, 0x00, 0x0A, 0x00, 0x00, 0x00, 0x01, 0x12, 0x34,
        ];
        assert_eq!(run(&req, &mut bank), Err(Exception::IllegalDataAddress));
        // Not a file-record function.
        assert!(handle(&[0x03, 0, 0, 0, 1], &mut bank, &mut [0u8; 253]).is_none());
    }
}
