//! Checksums: CRC-16/MODBUS for Modbus RTU frames and CRC-32C for uplink frames, both from the
//! `crc` crate's catalogue so there is one implementation of each in the project.

use crc::{CRC_16_MODBUS, CRC_32_ISCSI, Crc};

/// CRC-16/MODBUS: reflected polynomial 0x8005 (0xA001), init 0xFFFF, no final XOR.
pub const MODBUS: Crc<u16> = Crc::<u16>::new(&CRC_16_MODBUS);

/// CRC-32C (Castagnoli), used by [`frame`](crate::frame): better error detection than a 16-bit
/// CRC for frames of a few hundred bytes, and hardware-accelerated on many hosts.
pub const FRAME: Crc<u32> = Crc::<u32>::new(&CRC_32_ISCSI);

/// CRC-16/MODBUS of `bytes`.
pub fn modbus_crc16(bytes: &[u8]) -> u16 {
    MODBUS.checksum(bytes)
}

/// Checks a Modbus RTU ADU (address, PDU, CRC low byte, CRC high byte).
///
/// Returns the ADU without its CRC on success.
pub fn check_rtu_adu(adu: &[u8]) -> Result<&[u8], RtuCrcError> {
    if adu.len() < 4 {
        return Err(RtuCrcError::TooShort { len: adu.len() });
    }
    let (body, crc) = adu.split_at(adu.len() - 2);
    let received = u16::from_le_bytes([crc[0], crc[1]]);
    let computed = modbus_crc16(body);
    if received != computed {
        return Err(RtuCrcError::Mismatch { received, computed });
    }
    Ok(body)
}

/// Appends the CRC-16/MODBUS of `body` (low byte first, as RTU sends it) and returns the
/// two bytes.
pub fn rtu_crc_bytes(body: &[u8]) -> [u8; 2] {
    modbus_crc16(body).to_le_bytes()
}

/// A Modbus RTU frame whose CRC does not hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RtuCrcError {
    /// Shorter than the 4 bytes of address, function code and CRC.
    TooShort {
        /// Its length in bytes.
        len: usize,
    },
    /// The CRC at the end of the frame differs from the one computed over the frame.
    Mismatch {
        /// CRC carried by the frame.
        received: u16,
        /// CRC computed over the frame.
        computed: u16,
    },
}

impl core::fmt::Display for RtuCrcError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            RtuCrcError::TooShort { len } => {
                write!(
                    f,
                    "RTU frame of {len} bytes is shorter than the minimum of 4"
                )
            }
            RtuCrcError::Mismatch { received, computed } => write!(
                f,
                "RTU CRC mismatch: frame carries 0x{received:04X}, computed 0x{computed:04X}"
            ),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for RtuCrcError {}
