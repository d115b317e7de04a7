//! Request PDUs in, response PDUs out: parsing, the checks the application protocol's state
//! diagrams prescribe, and the calls into the [`RegisterBank`].
//!
//! Supported: 03 read holding registers, 04 read input registers, 06 write single register,
//! 16 (0x10) write multiple registers, 20 and 21 (0x14, 0x15) read and write file record (see
//! [`file_record`](super::file_record), served when the bank has files) and 43/14 (0x2B/0x0E)
//! read device identification (see [`device_id`]). Anything else is exception 01.
//!
//! The order of the checks follows the Modbus application protocol V1.1b3, section 6: the
//! function code (01), then the quantity and byte count (03), then the address range (02), and
//! only then the bank, whose own exception is passed on.

use super::device_id::{self, ReadDeviceIdCode};
use super::{Exception, RegisterBank};

/// The longest PDU: 256-byte RTU ADU less the address and the CRC.
pub const MAX_PDU_LEN: usize = 253;

/// The most registers one read (03, 04) may ask for.
pub const MAX_READ_REGISTERS: u16 = 125;

/// The most registers one write (16) may carry.
pub const MAX_WRITE_REGISTERS: u16 = 123;

/// Function codes this slave knows.
pub mod function {
    /// 03: read holding registers.
    pub const READ_HOLDING_REGISTERS: u8 = 0x03;
    /// 04: read input registers.
    pub const READ_INPUT_REGISTERS: u8 = 0x04;
    /// 06: write single register.
    pub const WRITE_SINGLE_REGISTER: u8 = 0x06;
    /// 16: write multiple registers.
    pub const WRITE_MULTIPLE_REGISTERS: u8 = 0x10;
    /// 43: encapsulated interface transport; only its MEI type 14 is served.
    pub const ENCAPSULATED_INTERFACE: u8 = 0x2B;
    /// The MEI type of read device identification.
    pub const MEI_READ_DEVICE_ID: u8 = 0x0E;
    /// Set in the function code of an exception response.
    pub const EXCEPTION_FLAG: u8 = 0x80;
}

/// Register values as a write request carries them: big-endian, two bytes each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegisterValues<'a> {
    bytes: &'a [u8],
}

impl<'a> RegisterValues<'a> {
    /// The number of registers.
    pub fn len(&self) -> usize {
        self.bytes.len() / 2
    }

    /// Whether there are none (never the case for a parsed request).
    pub fn is_empty(&self) -> bool {
        self.bytes.len() < 2
    }

    /// The values in order.
    pub fn iter(&self) -> impl Iterator<Item = u16> + 'a {
        self.bytes
            .chunks_exact(2)
            .map(|pair| u16::from_be_bytes([pair[0], pair[1]]))
    }
}

/// A request that passed every check that does not need the bank.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request<'a> {
    /// 03.
    ReadHoldingRegisters {
        /// First register.
        address: u16,
        /// 1..=125 registers, all below 0x10000.
        quantity: u16,
    },
    /// 04.
    ReadInputRegisters {
        /// First register.
        address: u16,
        /// 1..=125 registers, all below 0x10000.
        quantity: u16,
    },
    /// 06.
    WriteSingleRegister {
        /// The register.
        address: u16,
        /// Its new value.
        value: u16,
    },
    /// 16.
    WriteMultipleRegisters {
        /// First register.
        address: u16,
        /// 1..=123 values, all below 0x10000.
        values: RegisterValues<'a>,
    },
    /// 43/14.
    ReadDeviceIdentification {
        /// Stream of a category, or one object.
        code: ReadDeviceIdCode,
        /// Where a stream starts, or the object wanted.
        object_id: u8,
    },
}

impl Request<'_> {
    /// The function code the request came with.
    pub fn function(&self) -> u8 {
        match self {
            Request::ReadHoldingRegisters { .. } => function::READ_HOLDING_REGISTERS,
            Request::ReadInputRegisters { .. } => function::READ_INPUT_REGISTERS,
            Request::WriteSingleRegister { .. } => function::WRITE_SINGLE_REGISTER,
            Request::WriteMultipleRegisters { .. } => function::WRITE_MULTIPLE_REGISTERS,
            Request::ReadDeviceIdentification { .. } => function::ENCAPSULATED_INTERFACE,
        }
    }

    /// Whether it changes the node: only these are executed when broadcast.
    pub fn is_write(&self) -> bool {
        matches!(
            self,
            Request::WriteSingleRegister { .. } | Request::WriteMultipleRegisters { .. }
        )
    }
}

/// Parses a request PDU (function code and data, without address or CRC).
///
/// A PDU whose length does not match its function is answered with 03, as for a quantity that
/// does not match its byte count: the application protocol has no better code for it.
pub fn parse_request(pdu: &[u8]) -> Result<Request<'_>, Exception> {
    let (&code, data) = pdu.split_first().ok_or(Exception::IllegalFunction)?;
    match code {
        function::READ_HOLDING_REGISTERS | function::READ_INPUT_REGISTERS => {
            let [a0, a1, q0, q1] = *exactly::<4>(data)?;
            let address = u16::from_be_bytes([a0, a1]);
            let quantity = u16::from_be_bytes([q0, q1]);
            if !(1..=MAX_READ_REGISTERS).contains(&quantity) {
                return Err(Exception::IllegalDataValue);
            }
            check_range(address, quantity)?;
            Ok(if code == function::READ_HOLDING_REGISTERS {
                Request::ReadHoldingRegisters { address, quantity }
            } else {
                Request::ReadInputRegisters { address, quantity }
            })
        }
        function::WRITE_SINGLE_REGISTER => {
            let [a0, a1, v0, v1] = *exactly::<4>(data)?;
            Ok(Request::WriteSingleRegister {
                address: u16::from_be_bytes([a0, a1]),
                value: u16::from_be_bytes([v0, v1]),
            })
        }
        function::WRITE_MULTIPLE_REGISTERS => {
            let (header, bytes) = data
                .split_first_chunk::<5>()
                .ok_or(Exception::IllegalDataValue)?;
            let [a0, a1, q0, q1, byte_count] = *header;
            let address = u16::from_be_bytes([a0, a1]);
            let quantity = u16::from_be_bytes([q0, q1]);
            if !(1..=MAX_WRITE_REGISTERS).contains(&quantity)
                || usize::from(byte_count) != 2 * usize::from(quantity)
                || bytes.len() != usize::from(byte_count)
            {
                return Err(Exception::IllegalDataValue);
            }
            check_range(address, quantity)?;
            Ok(Request::WriteMultipleRegisters {
                address,
                values: RegisterValues { bytes },
            })
        }
        function::ENCAPSULATED_INTERFACE => {
            let (&mei, rest) = data.split_first().ok_or(Exception::IllegalDataValue)?;
            if mei != function::MEI_READ_DEVICE_ID {
                // Other MEI types (13, CANopen) are other functions, and this slave has none.
                return Err(Exception::IllegalFunction);
            }
            let [code, object_id] = *exactly::<2>(rest)?;
            let code = ReadDeviceIdCode::from_u8(code).ok_or(Exception::IllegalDataValue)?;
            Ok(Request::ReadDeviceIdentification { code, object_id })
        }
        _ => Err(Exception::IllegalFunction),
    }
}

fn exactly<const N: usize>(data: &[u8]) -> Result<&[u8; N], Exception> {
    data.try_into().map_err(|_| Exception::IllegalDataValue)
}

/// The last register addressed must exist: starting address + quantity ≤ 0x10000.
fn check_range(address: u16, quantity: u16) -> Result<(), Exception> {
    if u32::from(address) + u32::from(quantity) > 0x1_0000 {
        Err(Exception::IllegalDataAddress)
    } else {
        Ok(())
    }
}

/// Executes `request` against `bank` and writes the response PDU into `out`, returning its
/// length. On error nothing useful is in `out` and the caller answers with the exception.
///
/// `out` should hold [`MAX_PDU_LEN`] bytes; a smaller one that cannot take the response gives
/// [`Exception::ServerDeviceFailure`] rather than a panic.
pub fn respond<B: RegisterBank + ?Sized>(
    request: &Request<'_>,
    bank: &mut B,
    out: &mut [u8],
) -> Result<usize, Exception> {
    match *request {
        Request::ReadHoldingRegisters { address, quantity } => {
            read_response(request.function(), quantity, out, |regs| {
                bank.read_holding_registers(address, regs)
            })
        }
        Request::ReadInputRegisters { address, quantity } => {
            read_response(request.function(), quantity, out, |regs| {
                bank.read_input_registers(address, regs)
            })
        }
        Request::WriteSingleRegister { address, value } => {
            let out = out.get_mut(..5).ok_or(Exception::ServerDeviceFailure)?;
            bank.write_holding_registers(address, &[value])?;
            // The normal response is an echo of the request.
            out[0] = function::WRITE_SINGLE_REGISTER;
            out[1..3].copy_from_slice(&address.to_be_bytes());
            out[3..5].copy_from_slice(&value.to_be_bytes());
            Ok(5)
        }
        Request::WriteMultipleRegisters { address, values } => {
            let out = out.get_mut(..5).ok_or(Exception::ServerDeviceFailure)?;
            let mut buf = [0u16; MAX_WRITE_REGISTERS as usize];
            let n = values.len();
            for (slot, value) in buf.iter_mut().zip(values.iter()) {
                *slot = value;
            }
            bank.write_holding_registers(address, &buf[..n])?;
            out[0] = function::WRITE_MULTIPLE_REGISTERS;
            out[1..3].copy_from_slice(&address.to_be_bytes());
            // n ≤ 123 was checked when parsing.
            out[3..5].copy_from_slice(&(n as u16).to_be_bytes());
            Ok(5)
        }
        Request::ReadDeviceIdentification { code, object_id } => {
            device_id::respond(&*bank, code, object_id, out)
        }
    }
}

fn read_response(
    code: u8,
    quantity: u16,
    out: &mut [u8],
    read: impl FnOnce(&mut [u16]) -> Result<(), Exception>,
) -> Result<usize, Exception> {
    let n = usize::from(quantity);
    let len = 2 + 2 * n;
    let out = out.get_mut(..len).ok_or(Exception::ServerDeviceFailure)?;
    let mut regs = [0u16; MAX_READ_REGISTERS as usize];
    let regs = regs.get_mut(..n).ok_or(Exception::IllegalDataValue)?;
    read(regs)?;
    out[0] = code;
    // n ≤ 125, so the byte count fits.
    out[1] = (2 * n) as u8;
    for (chunk, reg) in out[2..].chunks_exact_mut(2).zip(regs.iter()) {
        chunk.copy_from_slice(&reg.to_be_bytes());
    }
    Ok(len)
}

/// The exception response PDU to a request with function code `function`.
pub const fn exception_response(function: u8, exception: Exception) -> [u8; 2] {
    [function | function::EXCEPTION_FLAG, exception as u8]
}

/// Parses and executes a request PDU, writing either its response or its exception response
/// into `out`.
pub fn handle<B: RegisterBank + ?Sized>(pdu: &[u8], bank: &mut B, out: &mut [u8]) -> Handled {
    let result = match super::file_record::handle(pdu, bank, out) {
        Some(result) => result,
        None => parse_request(pdu).and_then(|request| respond(&request, bank, out)),
    };
    match result {
        Ok(len) => Handled::Response(len),
        Err(exception) => {
            let code = pdu.first().copied().unwrap_or(0);
            let response = exception_response(code, exception);
            match out.get_mut(..2) {
                Some(slot) => {
                    slot.copy_from_slice(&response);
                    Handled::Exception(exception)
                }
                None => Handled::NoRoom,
            }
        }
    }
}

/// What [`handle`] wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handled {
    /// A normal response of this many bytes.
    Response(usize),
    /// A two-byte exception response with this code.
    Exception(Exception),
    /// Nothing: `out` could not hold even an exception response.
    NoRoom,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 0x0000..0x0100 holding and input registers, holding writable below 0x0080; everything
    /// else unmapped.
    struct Bank {
        holding: [u16; 0x100],
        input: [u16; 0x100],
        writes: usize,
    }

    impl Bank {
        fn new() -> Self {
            let mut input = [0; 0x100];
            for (i, r) in input.iter_mut().enumerate() {
                *r = 0x4000 + i as u16;
            }
            Self {
                holding: [0; 0x100],
                input,
                writes: 0,
            }
        }
    }

    fn window(len: usize, address: u16, n: usize) -> Result<core::ops::Range<usize>, Exception> {
        let start = usize::from(address);
        if start + n > len {
            Err(Exception::IllegalDataAddress)
        } else {
            Ok(start..start + n)
        }
    }

    impl RegisterBank for Bank {
        fn read_input_registers(&mut self, address: u16, out: &mut [u16]) -> Result<(), Exception> {
            out.copy_from_slice(&self.input[window(0x100, address, out.len())?]);
            Ok(())
        }
        fn read_holding_registers(
            &mut self,
            address: u16,
            out: &mut [u16],
        ) -> Result<(), Exception> {
            out.copy_from_slice(&self.holding[window(0x100, address, out.len())?]);
            Ok(())
        }
        fn write_holding_registers(
            &mut self,
            address: u16,
            values: &[u16],
        ) -> Result<(), Exception> {
            let range = window(0x80, address, values.len())?;
            if values.contains(&0xDEAD) {
                return Err(Exception::IllegalDataValue);
            }
            self.holding[range].copy_from_slice(values);
            self.writes += 1;
            Ok(())
        }
        fn device_identification(&self, _object_id: u8) -> Option<&str> {
            None
        }
    }

    fn run(pdu: &[u8], bank: &mut Bank) -> Result<std::vec::Vec<u8>, Exception> {
        let mut out = [0u8; MAX_PDU_LEN];
        match handle(pdu, bank, &mut out) {
            Handled::Response(len) => Ok(out[..len].to_vec()),
            Handled::Exception(e) => {
                assert_eq!(out[..2], [pdu[0] | 0x80, e as u8], "exception PDU layout");
                Err(e)
            }
            Handled::NoRoom => panic!("a full-size buffer always has room"),
        }
    }

    #[test]
    fn application_protocol_examples() {
        // Modbus application protocol V1.1b3, 6.3: read holding registers 108..110.
        let mut bank = Bank::new();
        bank.holding[107..110].copy_from_slice(&[0x022B, 0x0000, 0x0064]);
        assert_eq!(
            run(&[0x03, 0x00, 0x6B, 0x00, 0x03], &mut bank),
            Ok(std::vec![0x03, 0x06, 0x02, 0x2B, 0x00, 0x00, 0x00, 0x64])
        );
        // 6.4: read input register 9, value 10.
        bank.input[8] = 0x000A;
        assert_eq!(
            run(&[0x04, 0x00, 0x08, 0x00, 0x01], &mut bank),
            Ok(std::vec![0x04, 0x02, 0x00, 0x0A])
        );
        // 6.6: write 3 to register 2; the response echoes the request.
        let req = [0x06, 0x00, 0x01, 0x00, 0x03];
        assert_eq!(run(&req, &mut bank), Ok(req.to_vec()));
        assert_eq!(bank.holding[1], 3);
        // 6.12: write 0x000A and 0x0102 to registers 2 and 3.
        let req = [0x10, 0x00, 0x01, 0x00, 0x02, 0x04, 0x00, 0x0A, 0x01, 0x02];
        assert_eq!(
            run(&req, &mut bank),
            Ok(std::vec![0x10, 0x00, 0x01, 0x00, 0x02])
        );
        assert_eq!(bank.holding[1..3], [0x000A, 0x0102]);
    }

    #[test]
    fn unsupported_functions_are_exception_01() {
        let mut bank = Bank::new();
        // 01, 02, 05, 15 with the application protocol's own request PDUs; then 0x00, 0x11,
        // 0x17, a code with bit 7 set, and MEI type 13 of function 43.
        for pdu in [
            &[0x01, 0x00, 0x13, 0x00, 0x13][..],
            &[0x02, 0x00, 0xC4, 0x00, 0x16],
            &[0x05, 0x00, 0xAC, 0xFF, 0x00],
            &[0x0F, 0x00, 0x13, 0x00, 0x0A, 0x02, 0xCD, 0x01],
            &[0x00],
            &[0x11],
            &[
                0x17, 0x00, 0x03, 0x00, 0x06, 0x00, 0x0E, 0x00, 0x03, 0x06, 0, 0xFF, 0, 0xFF, 0,
                0xFF,
            ],
            &[0x83, 0x00, 0x00, 0x00, 0x01],
            &[0x2B, 0x0D, 0x00],
        ] {
            assert_eq!(
                run(pdu, &mut bank),
                Err(Exception::IllegalFunction),
                "{pdu:02X?}"
            );
        }
    }

    #[test]
    fn read_quantity_limits() {
        let mut bank = Bank::new();
        for fc in [0x03, 0x04] {
            assert_eq!(
                run(&[fc, 0, 0, 0, 0], &mut bank),
                Err(Exception::IllegalDataValue)
            );
            assert_eq!(
                run(&[fc, 0, 0, 0, 126], &mut bank),
                Err(Exception::IllegalDataValue)
            );
            assert_eq!(
                run(&[fc, 0, 0, 0xFF, 0xFF], &mut bank),
                Err(Exception::IllegalDataValue)
            );
            let full = run(&[fc, 0, 0, 0, 125], &mut bank).expect("125 registers is the limit");
            assert_eq!((full.len(), full[1]), (252, 250));
        }
    }

    #[test]
    fn quantity_is_checked_before_the_address() {
        let mut bank = Bank::new();
        // Both wrong: the state diagram tests the quantity first.
        assert_eq!(
            run(&[0x03, 0xFF, 0xFF, 0x00, 0x00], &mut bank),
            Err(Exception::IllegalDataValue)
        );
    }

    #[test]
    fn ranges_past_0xffff_are_exception_02() {
        let mut bank = Bank::new();
        assert_eq!(
            run(&[0x03, 0xFF, 0xFF, 0x00, 0x02], &mut bank),
            Err(Exception::IllegalDataAddress)
        );
        assert_eq!(
            run(&[0x04, 0xFF, 0x84, 0x00, 0x7D], &mut bank),
            Err(Exception::IllegalDataAddress)
        );
        assert_eq!(
            run(&[0x10, 0xFF, 0xFF, 0x00, 0x02, 0x04, 0, 1, 0, 2], &mut bank),
            Err(Exception::IllegalDataAddress)
        );
        // Ending exactly at 0xFFFF is a valid range; this bank just does not map it.
        assert_eq!(
            parse_request(&[0x03, 0xFF, 0xFF, 0x00, 0x01]),
            Ok(Request::ReadHoldingRegisters {
                address: 0xFFFF,
                quantity: 1
            })
        );
    }

    #[test]
    fn write_multiple_limits_and_byte_count() {
        let mut bank = Bank::new();
        let write = |quantity: u16, byte_count: u8, data_len: usize| {
            let mut pdu = std::vec![0x10, 0x00, 0x00];
            pdu.extend_from_slice(&quantity.to_be_bytes());
            pdu.push(byte_count);
            pdu.resize(pdu.len() + data_len, 0);
            pdu
        };
        assert_eq!(
            run(&write(0, 0, 0), &mut bank),
            Err(Exception::IllegalDataValue)
        );
        assert_eq!(
            run(&write(124, 248, 248), &mut bank),
            Err(Exception::IllegalDataValue)
        );
        assert_eq!(
            run(&write(2, 3, 3), &mut bank),
            Err(Exception::IllegalDataValue)
        );
        assert_eq!(
            run(&write(2, 4, 3), &mut bank),
            Err(Exception::IllegalDataValue)
        );
        assert_eq!(
            run(&write(2, 4, 5), &mut bank),
            Err(Exception::IllegalDataValue)
        );
        assert_eq!(bank.writes, 0);
        // 123 registers is the limit: the parser takes them, this bank refuses those past 0x7F.
        let mut pdu = std::vec![0x10, 0x00, 0x06, 0x00, 0x7B, 0xF6];
        pdu.extend((0..123u16).flat_map(|v| v.to_be_bytes()));
        assert_eq!(run(&pdu, &mut bank), Err(Exception::IllegalDataAddress));
        pdu[2] = 0x05;
        assert_eq!(
            run(&pdu, &mut bank),
            Ok(std::vec![0x10, 0x00, 0x05, 0x00, 0x7B])
        );
        assert_eq!(bank.holding[5], 0);
        assert_eq!(bank.holding[5 + 122], 122);
    }

    #[test]
    fn malformed_requests_are_exception_03() {
        let mut bank = Bank::new();
        for pdu in [
            &[0x03, 0x00, 0x00, 0x00][..],
            &[0x04, 0x00, 0x00, 0x00, 0x01, 0x00],
            &[0x06, 0x00, 0x00],
            &[0x06, 0x00, 0x00, 0x00, 0x01, 0x00],
            &[0x10, 0x00, 0x00, 0x00, 0x01],
            &[0x2B],
            &[0x2B, 0x0E, 0x01],
            &[0x2B, 0x0E, 0x01, 0x00, 0x00],
            // Read-device-id codes other than 01..04.
            &[0x2B, 0x0E, 0x00, 0x00],
            &[0x2B, 0x0E, 0x05, 0x00],
            &[0x2B, 0x0E, 0xFF, 0x00],
        ] {
            assert_eq!(
                run(pdu, &mut bank),
                Err(Exception::IllegalDataValue),
                "{pdu:02X?}"
            );
        }
    }

    #[test]
    fn the_banks_exception_is_passed_on_and_nothing_is_written() {
        let mut bank = Bank::new();
        assert_eq!(
            run(&[0x03, 0x01, 0x00, 0x00, 0x01], &mut bank),
            Err(Exception::IllegalDataAddress)
        );
        assert_eq!(
            run(&[0x06, 0x00, 0x00, 0xDE, 0xAD], &mut bank),
            Err(Exception::IllegalDataValue)
        );
        assert_eq!(
            run(
                &[0x10, 0x00, 0x00, 0x00, 0x02, 0x04, 0x00, 0x01, 0xDE, 0xAD],
                &mut bank
            ),
            Err(Exception::IllegalDataValue)
        );
        assert_eq!((bank.writes, bank.holding[0], bank.holding[1]), (0, 0, 0));
    }

    #[test]
    fn a_short_buffer_is_a_device_failure_not_a_panic() {
        let mut bank = Bank::new();
        let mut out = [0u8; 9];
        assert_eq!(
            handle(&[0x03, 0x00, 0x00, 0x00, 0x04], &mut bank, &mut out),
            Handled::Exception(Exception::ServerDeviceFailure)
        );
        assert_eq!(out[..2], [0x83, 0x04]);
        assert_eq!(
            handle(&[0x03, 0x00, 0x00, 0x00, 0x04], &mut bank, &mut [0u8; 1]),
            Handled::NoRoom
        );
    }
}
