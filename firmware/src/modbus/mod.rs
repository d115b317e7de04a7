//! Modbus RTU slave.
//!
//! Hand-written: no maintained `no_std` crate covers an RTU *server* with t3.5 frame assembly,
//! function codes 03, 04, 06, 16, 20, 21 and 43/14, and exception responses. The CRC is the protocol
//! crate's ([`tianzhong_protocol::crc`]).
//!
//! # Module map
//!
//! | module | what |
//! |---|---|
//! | this module | [`RegisterBank`], the slave's view of the node, and [`Exception`] codes |
//! | [`timing`] | t1.5 and t3.5 from the baud rate (fixed above 19200 baud) |
//! | [`frame`] | frame assembly by silent intervals: complete, corrupt (t1.5) or overrun |
//! | [`pdu`] | request parsing, checks and responses for 03, 04, 06, 16; exception responses |
//! | [`device_id`] | 43/14 read device identification: streams, individual access, conformity |
//! | [`file_record`] | 20 read file record and 21 write file record (firmware images travel this way) |
//! | [`slave`] | [`RtuSlave`]: CRC, unit address and broadcast, replies, counters |
//!
//! Everything is sans-IO: the caller stamps received bytes with monotonic microseconds, calls
//! [`RtuSlave::poll`] by [`RtuSlave::next_deadline`], and transmits the reply it gets.
//!
//! ```
//! use tianzhong_firmware::modbus::{Exception, RegisterBank, RtuSlave, RtuTiming, MAX_ADU_LEN};
//!
//! struct Node([u16; 4]);
//! impl RegisterBank for Node {
//!     fn read_input_registers(&mut self, a: u16, out: &mut [u16]) -> Result<(), Exception> {
//!         let a = usize::from(a);
//!         let regs = self.0.get(a..a + out.len()).ok_or(Exception::IllegalDataAddress)?;
//!         out.copy_from_slice(regs);
//!         Ok(())
//!     }
//!     fn read_holding_registers(&mut self, _: u16, _: &mut [u16]) -> Result<(), Exception> {
//!         Err(Exception::IllegalDataAddress)
//!     }
//!     fn write_holding_registers(&mut self, _: u16, _: &[u16]) -> Result<(), Exception> {
//!         Err(Exception::IllegalDataAddress)
//!     }
//!     fn device_identification(&self, _: u8) -> Option<&str> {
//!         None
//!     }
//! }
//!
//! let mut node = Node([10, 20, 30, 40]);
//! let mut slave = RtuSlave::new(1, RtuTiming::from_baud(19_200)).unwrap();
//! // Read input registers 2 and 3 of unit 1, CRC included.
//! slave.on_bytes(&[0x01, 0x04, 0x00, 0x02, 0x00, 0x02, 0xD0, 0x0B], 1_000);
//! let mut reply = [0u8; MAX_ADU_LEN];
//! let deadline = slave.next_deadline().unwrap();
//! assert_eq!(slave.poll(deadline - 1, &mut node, &mut reply), None);
//! let len = slave.poll(deadline, &mut node, &mut reply).unwrap();
//! assert_eq!(reply[..len - 2], [0x01, 0x04, 0x04, 0x00, 30, 0x00, 40]);
//! ```

pub mod device_id;
pub mod file_record;
pub mod frame;
pub mod pdu;
pub mod slave;
pub mod timing;

pub use frame::MAX_ADU_LEN;
pub use slave::{InvalidUnit, RtuSlave, SlaveStats};
pub use timing::RtuTiming;

/// Modbus exception codes a slave answers with (Modbus application protocol, section 7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Exception {
    /// 01: the function code is not supported.
    IllegalFunction = 0x01,
    /// 02: the address range is not (entirely) mapped, or not writable.
    IllegalDataAddress = 0x02,
    /// 03: a value in the request is not acceptable (quantity out of range, an invalid
    /// configuration value).
    IllegalDataValue = 0x03,
    /// 04: an unrecoverable error while performing the action.
    ServerDeviceFailure = 0x04,
}

/// What the Modbus slave serves. The node core implements it; tests implement it over plain
/// arrays.
pub trait RegisterBank {
    /// Fills `out` with the input registers starting at `address` (function code 04).
    fn read_input_registers(&mut self, address: u16, out: &mut [u16]) -> Result<(), Exception>;

    /// Fills `out` with the holding registers starting at `address` (function code 03).
    fn read_holding_registers(&mut self, address: u16, out: &mut [u16]) -> Result<(), Exception>;

    /// Writes `values` to the holding registers starting at `address` (function codes 06, 16).
    /// All or nothing: on error nothing was written.
    fn write_holding_registers(&mut self, address: u16, values: &[u16]) -> Result<(), Exception>;

    /// The value of a device-identification object (function code 43/14), or `None` when the
    /// device does not have it. Objects 0x00 vendor name, 0x01 product code and 0x02
    /// major-minor revision are mandatory (basic conformity).
    fn device_identification(&self, object_id: u8) -> Option<&str>;

    /// Fills `out` with the registers of file `file` from record `record` (function code 20).
    /// By default there are no files and the function is not supported (exception 01).
    fn read_file_record(
        &mut self,
        file: u16,
        record: u16,
        out: &mut [u16],
    ) -> Result<(), Exception> {
        let _ = (file, record, out);
        Err(Exception::IllegalFunction)
    }

    /// Writes `data` to file `file` from record `record` (function code 21). By default there
    /// are no files and the function is not supported (exception 01).
    fn write_file_record(&mut self, file: u16, record: u16, data: &[u16]) -> Result<(), Exception> {
        let _ = (file, record, data);
        Err(Exception::IllegalFunction)
    }
}
