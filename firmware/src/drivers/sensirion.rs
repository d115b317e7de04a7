//! What all Sensirion I²C sensors share: every 16-bit data word on the bus, in either direction,
//! is followed by a CRC-8 of its two bytes; command words are not.
//!
//! The CRC is the one Sensirion's datasheets tabulate (SCD4x datasheet section 3.11, Table 32;
//! the SHT4x datasheet's "Checksum Calculation"): width 8, polynomial 0x31, init 0xFF, no
//! reflection, no final XOR, check value CRC(0xBEEF) = 0x92. That is the `crc` crate's catalogue
//! entry CRC-8/NRSC-5, so the project keeps one implementation of it.

use core::fmt;

use crc::{CRC_8_NRSC_5, Crc};

/// Sensirion's CRC-8 (polynomial 0x31, init 0xFF, no reflection, no final XOR).
pub const CRC8: Crc<u8> = Crc::<u8>::new(&CRC_8_NRSC_5);

/// Bytes on the bus per data word: the word, most significant byte first, then its CRC.
pub const WORD_LEN: usize = 3;

/// The CRC-8 of `bytes` (on the bus: always the two bytes of one word).
pub fn crc8(bytes: &[u8]) -> u8 {
    CRC8.checksum(bytes)
}

/// A data word whose CRC does not hold: the bus corrupted it, or the sensor sent something that
/// is not a response (a floating bus reads 0xFF bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CrcError {
    /// Index of the failing word in the response, from 0.
    pub word: usize,
    /// The CRC byte received after the word.
    pub received: u8,
    /// The CRC the word's two bytes actually have.
    pub computed: u8,
}

impl fmt::Display for CrcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "CRC mismatch on word {}: received {:#04x}, computed {:#04x}",
            self.word, self.received, self.computed
        )
    }
}

impl core::error::Error for CrcError {}

/// One word as it goes on the bus: the word, most significant byte first, and its CRC.
pub fn encode_word(word: u16) -> [u8; WORD_LEN] {
    let [hi, lo] = word.to_be_bytes();
    [hi, lo, crc8(&[hi, lo])]
}

/// A 16-bit command followed by one data word, as a Sensirion "write" sequence sends it
/// (command words carry no CRC; the argument word does, and the sensor rejects it without).
pub fn command_with_word(command: u16, word: u16) -> [u8; 2 + WORD_LEN] {
    let [c_hi, c_lo] = command.to_be_bytes();
    let [w_hi, w_lo, crc] = encode_word(word);
    [c_hi, c_lo, w_hi, w_lo, crc]
}

/// Checks and decodes a response of `N` word+CRC triplets.
///
/// Drivers read straight into a `[[u8; 3]; N]` (through `as_flattened_mut`), so the length is
/// right by construction and only the CRCs can fail. The first failing word is reported.
pub fn decode_words<const N: usize>(frames: &[[u8; WORD_LEN]; N]) -> Result<[u16; N], CrcError> {
    let mut words = [0u16; N];
    for (index, ([hi, lo, received], word)) in frames.iter().zip(words.iter_mut()).enumerate() {
        let computed = crc8(&[*hi, *lo]);
        if computed != *received {
            return Err(CrcError {
                word: index,
                received: *received,
                computed,
            });
        }
        *word = u16::from_be_bytes([*hi, *lo]);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    // SCD4x datasheet section 3.11, Table 32 "I2C CRC properties": "Examples: CRC (0xBEEF) =
    // 0x92" (confirmed on the v1.3 datasheet, and the same line in the SGP30 datasheet's
    // Table 13). The catalogue entry must give the datasheet's own check value.
    #[test]
    fn crc_of_0xbeef_is_0x92_per_table_32() {
        assert_eq!(crc8(&[0xBE, 0xEF]), 0x92);
        assert_eq!(encode_word(0xBEEF), [0xBE, 0xEF, 0x92]);
    }

    // Table 32 lists the parameters; CRC-8/NRSC-5 must have exactly those, not merely agree on
    // one input.
    #[test]
    fn catalogue_entry_has_the_table_32_parameters() {
        let algorithm = CRC8.algorithm;
        assert_eq!(algorithm.width, 8);
        assert_eq!(algorithm.poly, 0x31);
        assert_eq!(algorithm.init, 0xFF);
        assert!(!algorithm.refin);
        assert!(!algorithm.refout);
        assert_eq!(algorithm.xorout, 0x00);
    }

    // CRC bytes printed next to words in Sensirion datasheet examples, each confirmed on the
    // datasheet page: SCD4x Table 18 (0x01e0 -> 0xb4, 0x7fce -> 0x7b), Table 19 (0x0001 -> 0xB0),
    // Table 20 (0x0000 -> 0x81), Table 17 (0x03db -> 0x42), Table 24 (serial words), and the
    // SGP40 datasheet Table 10 (0x8000 -> 0xA2, 0x6666 -> 0x93, 0xFFFF -> 0xAC).
    #[test]
    fn crc_matches_the_datasheet_example_words() {
        for (word, crc) in [
            (0x01e0, 0xb4),
            (0x7fce, 0x7b),
            (0x0001, 0xb0),
            (0x0000, 0x81),
            (0x03db, 0x42),
            (0xf896, 0x31),
            (0x9f07, 0xc2),
            (0x3bbe, 0x89),
            (0x8000, 0xa2),
            (0x6666, 0x93),
            (0xffff, 0xac),
        ] {
            assert_eq!(crc8(&u16::to_be_bytes(word)), crc, "CRC of {word:#06x}");
        }
    }

    // SCD4x Table 24 (get_serial_number example, confirmed on the v1.1 datasheet page): the
    // response 0xf896 0x31 0x9f07 0xc2 0x3bbe 0x89 decodes to its three words.
    #[test]
    fn decodes_the_table_24_response_into_words() {
        let frames = [[0xf8, 0x96, 0x31], [0x9f, 0x07, 0xc2], [0x3b, 0xbe, 0x89]];
        assert_eq!(decode_words(&frames), Ok([0xf896, 0x9f07, 0x3bbe]));
    }

    // Section 3.2 of the SCD4x datasheet: each word is followed by its CRC, so a corruption is
    // pinned to the word it hit; the error names that word, and the first one when several fail.
    #[test]
    fn a_corrupted_word_is_reported_by_index() {
        let mut frames = [[0xf8, 0x96, 0x31], [0x9f, 0x07, 0xc2], [0x3b, 0xbe, 0x89]];
        frames[1][1] ^= 0x01;
        let err = decode_words(&frames).unwrap_err();
        assert_eq!(err.word, 1);
        assert_eq!(err.received, 0xc2);
        assert_eq!(err.computed, crc8(&[0x9f, 0x06]));

        frames[2][2] = 0x00;
        assert_eq!(decode_words(&frames).unwrap_err().word, 1);
    }

    // A released bus reads all ones; 0xFFFF's CRC is 0xAC (SGP40 Table 10), so 0xFF 0xFF 0xFF is
    // caught rather than taken for a reading of 0xFFFF.
    #[test]
    fn a_floating_bus_fails_the_crc() {
        let err = decode_words(&[[0xff, 0xff, 0xff]]).unwrap_err();
        assert_eq!(
            err,
            CrcError {
                word: 0,
                received: 0xff,
                computed: 0xac
            }
        );
    }

    // SCD4x Table 18 (perform_forced_recalibration example, confirmed): "Write 0x362f 0x01e0
    // 0xb4" for a 480 ppm reference.
    #[test]
    fn command_with_word_matches_the_table_18_write() {
        assert_eq!(
            command_with_word(0x362f, 480),
            [0x36, 0x2f, 0x01, 0xe0, 0xb4]
        );
    }
}
