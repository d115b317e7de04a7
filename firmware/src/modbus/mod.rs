//! Modbus RTU slave.
//!
//! Hand-written: no maintained `no_std` crate covers an RTU *server* with t3.5 frame assembly,
//! function codes 03, 04, 06, 16 and 43/14, and exception responses. The CRC is the protocol
//! crate's ([`tianzhong_protocol::crc`]).
//!
//! # Module map
//!
//! | module | what |
//! |---|---|
//! | this module | [`RegisterBank`], the slave's view of the node, and [`Exception`] codes |

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
}
