//! NOR flash in RAM that can lose power in the middle of any write or erase: what the update
//! power-cut drill and the simulator's nodes run the real update code on.

use embedded_storage::nor_flash::{
    ErrorType, NorFlash, NorFlashError, NorFlashErrorKind, ReadNorFlash,
};

/// A [`PowerCutFlash`] error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PowerCutError {
    /// Outside the flash, or not aligned to its read, write or erase unit.
    Access(NorFlashErrorKind),
    /// A write to bytes that are not erased: NOR flash would store the AND of old and new,
    /// which is never what the caller means. Counted in [`PowerCutFlash::overwrites`].
    NotErased {
        /// Offset of the first such byte.
        offset: u32,
    },
    /// The power failed during this operation, or is off.
    PowerCut,
}

impl NorFlashError for PowerCutError {
    fn kind(&self) -> NorFlashErrorKind {
        match self {
            PowerCutError::Access(k) => *k,
            PowerCutError::NotErased { .. } | PowerCutError::PowerCut => NorFlashErrorKind::Other,
        }
    }
}

/// `N` bytes of NOR flash in 1 KiB erase sectors, programmed in 4-byte words (as the
/// STM32F4 at x32 parallelism).
///
/// Erase sets bytes to `0xFF`; a write may only program erased bytes. [`cut_at`] arms a power
/// failure at the k-th write or erase from now: that operation is half done (the first half of
/// a write's words programmed, the first half of an erase's bytes erased) and fails, and every
/// access after it fails until [`restore_power`], as on a board that browned out and reset.
///
/// [`cut_at`]: PowerCutFlash::cut_at
/// [`restore_power`]: PowerCutFlash::restore_power
#[derive(Clone, Debug)]
pub struct PowerCutFlash<const N: usize> {
    data: [u8; N],
    /// Writes and erases since creation.
    pub operations: u64,
    /// Writes attempted onto bytes that were not erased.
    pub overwrites: u64,
    cut_at: Option<u64>,
    powered: bool,
}

impl<const N: usize> Default for PowerCutFlash<N> {
    fn default() -> Self {
        PowerCutFlash {
            data: [0xFF; N],
            operations: 0,
            overwrites: 0,
            cut_at: None,
            powered: true,
        }
    }
}

impl<const N: usize> PowerCutFlash<N> {
    /// Arms a power failure during the `k`-th write or erase from now (`k` ≥ 1).
    pub fn cut_at(&mut self, k: u64) {
        self.cut_at = Some(self.operations + k.max(1));
    }

    /// Disarms any pending failure and turns the power back on.
    pub fn restore_power(&mut self) {
        self.cut_at = None;
        self.powered = true;
    }

    /// Whether the power failed.
    pub fn power_failed(&self) -> bool {
        !self.powered
    }

    /// The bytes, for inspection.
    pub fn bytes(&self) -> &[u8; N] {
        &self.data
    }

    /// The bytes, for corrupting on purpose.
    pub fn bytes_mut(&mut self) -> &mut [u8; N] {
        &mut self.data
    }

    fn range(&self, offset: u32, len: usize) -> Result<core::ops::Range<usize>, PowerCutError> {
        let start = offset as usize;
        match start.checked_add(len) {
            Some(end) if end <= N => Ok(start..end),
            _ => Err(PowerCutError::Access(NorFlashErrorKind::OutOfBounds)),
        }
    }

    /// Counts a mutating operation; `Some(keep)` when the power fails during it.
    fn begin(&mut self) -> Result<bool, PowerCutError> {
        if !self.powered {
            return Err(PowerCutError::PowerCut);
        }
        self.operations += 1;
        Ok(self.cut_at == Some(self.operations))
    }
}

impl<const N: usize> ErrorType for PowerCutFlash<N> {
    type Error = PowerCutError;
}

impl<const N: usize> ReadNorFlash for PowerCutFlash<N> {
    const READ_SIZE: usize = 1;

    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), PowerCutError> {
        if !self.powered {
            return Err(PowerCutError::PowerCut);
        }
        let r = self.range(offset, bytes.len())?;
        bytes.copy_from_slice(&self.data[r]);
        Ok(())
    }

    fn capacity(&self) -> usize {
        N
    }
}

impl<const N: usize> NorFlash for PowerCutFlash<N> {
    const WRITE_SIZE: usize = 4;
    const ERASE_SIZE: usize = 1024;

    fn erase(&mut self, from: u32, to: u32) -> Result<(), PowerCutError> {
        let e = Self::ERASE_SIZE as u32;
        if !from.is_multiple_of(e) || !to.is_multiple_of(e) || to < from {
            return Err(PowerCutError::Access(NorFlashErrorKind::NotAligned));
        }
        let r = self.range(from, (to - from) as usize)?;
        let cut = self.begin()?;
        if cut {
            let half = r.start + r.len() / 2;
            self.data[r.start..half].fill(0xFF);
            self.powered = false;
            return Err(PowerCutError::PowerCut);
        }
        self.data[r].fill(0xFF);
        Ok(())
    }

    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), PowerCutError> {
        let w = Self::WRITE_SIZE;
        if !(offset as usize).is_multiple_of(w) || !bytes.len().is_multiple_of(w) {
            return Err(PowerCutError::Access(NorFlashErrorKind::NotAligned));
        }
        let r = self.range(offset, bytes.len())?;
        if let Some(i) = self.data[r.clone()].iter().position(|&b| b != 0xFF) {
            self.overwrites += 1;
            return Err(PowerCutError::NotErased {
                offset: offset + i as u32,
            });
        }
        let cut = self.begin()?;
        let len = if cut {
            bytes.len() / w / 2 * w
        } else {
            bytes.len()
        };
        self.data[r.start..r.start + len].copy_from_slice(&bytes[..len]);
        if cut {
            self.powered = false;
            return Err(PowerCutError::PowerCut);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nor_rules_and_power_cuts() {
        let mut f = PowerCutFlash::<2048>::default();
        f.write(0, &[1, 2, 3, 4, 5, 6, 7, 8]).unwrap();
        assert_eq!(
            f.write(4, &[0; 4]),
            Err(PowerCutError::NotErased { offset: 4 })
        );
        assert_eq!(f.overwrites, 1);
        assert_eq!(
            f.write(2, &[0; 4]),
            Err(PowerCutError::Access(NorFlashErrorKind::NotAligned))
        );
        // Cut during the second operation from now: a write of 16 bytes keeps 8.
        f.cut_at(2);
        f.erase(1024, 2048).unwrap();
        assert_eq!(f.write(1024, &[0xAA; 16]), Err(PowerCutError::PowerCut));
        assert!(f.power_failed());
        let mut b = [0u8; 4];
        assert_eq!(f.read(0, &mut b), Err(PowerCutError::PowerCut));
        f.restore_power();
        assert!(f.bytes()[1024..1032].iter().all(|&x| x == 0xAA));
        assert!(f.bytes()[1032..1040].iter().all(|&x| x == 0xFF));
        // A cut erase leaves the second half as it was.
        f.cut_at(1);
        assert_eq!(f.erase(0, 1024), Err(PowerCutError::PowerCut));
        f.restore_power();
        assert!(f.bytes()[..8].iter().all(|&x| x == 0xFF));
        assert_eq!(f.operations, 4);
    }
}
