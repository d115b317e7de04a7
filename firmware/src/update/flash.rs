//! Flash access the update modules share: reads at any offset and length whatever the flash's
//! read unit, writes padded with erased bytes to its write unit, and erased checks.

use core::fmt;

use embedded_storage::nor_flash::{NorFlash, NorFlashError, NorFlashErrorKind, ReadNorFlash};

use super::layout::MAX_UNIT;

/// A flash operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlashError(pub NorFlashErrorKind);

impl fmt::Display for FlashError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "flash operation failed: {:?}", self.0)
    }
}

fn kind<E: NorFlashError>(e: E) -> FlashError {
    FlashError(e.kind())
}

/// Reads `out.len()` bytes at `offset`, both of any alignment.
pub fn read<F: ReadNorFlash>(flash: &mut F, offset: u32, out: &mut [u8]) -> Result<(), FlashError> {
    let unit = F::READ_SIZE as u32;
    if unit <= 1 {
        return flash.read(offset, out).map_err(kind);
    }
    // Through one read unit at a time: slow, but only flashes with a read unit above one byte
    // pay for it.
    let mut scratch = [0u8; MAX_UNIT];
    let mut done = 0usize;
    while done < out.len() {
        let at = offset + done as u32;
        let base = at - at % unit;
        let skip = (at - base) as usize;
        flash
            .read(base, &mut scratch[..unit as usize])
            .map_err(kind)?;
        let n = (unit as usize - skip).min(out.len() - done);
        out[done..done + n].copy_from_slice(&scratch[skip..skip + n]);
        done += n;
    }
    Ok(())
}

/// Writes `data` at `offset` (aligned to the write unit), padding the last unit with `0xFF`.
pub fn write_padded<F: NorFlash>(
    flash: &mut F,
    offset: u32,
    data: &[u8],
) -> Result<(), FlashError> {
    let unit = F::WRITE_SIZE;
    let whole = data.len() - data.len() % unit;
    if whole > 0 {
        flash.write(offset, &data[..whole]).map_err(kind)?;
    }
    if whole < data.len() {
        let mut tail = [0xFFu8; MAX_UNIT];
        tail[..data.len() - whole].copy_from_slice(&data[whole..]);
        flash
            .write(offset + whole as u32, &tail[..unit])
            .map_err(kind)?;
    }
    Ok(())
}

/// Erases `[from, to)`, both aligned to erase sectors.
pub fn erase<F: NorFlash>(flash: &mut F, from: u32, to: u32) -> Result<(), FlashError> {
    flash.erase(from, to).map_err(kind)
}

/// Whether `len` bytes at `offset` all read `0xFF`.
pub fn is_erased<F: ReadNorFlash>(
    flash: &mut F,
    offset: u32,
    len: u32,
) -> Result<bool, FlashError> {
    let mut buf = [0u8; 64];
    let mut done = 0u32;
    while done < len {
        let n = (len - done).min(buf.len() as u32) as usize;
        read(flash, offset + done, &mut buf[..n])?;
        if buf[..n].iter().any(|&b| b != 0xFF) {
            return Ok(false);
        }
        done += n as u32;
    }
    Ok(true)
}
