//! Range validation. A value outside its quantity's valid range (the protocol crate's
//! `QuantitySpec`) is kept — an operator must see that a detector reads 140 %LEL — but its
//! quality becomes `Uncertain(OutOfRange)` unless the node already said worse.

use tianzhong_protocol::reading::{Quality, UncertainReason};

use crate::pipeline::Record;

/// Flags `r` if out of range; true when it was flagged here.
pub fn apply(r: &mut Record) -> bool {
    if r.reading.quantity.in_range(r.reading.value) || r.reading.quality != Quality::Good {
        return false;
    }
    r.reading.quality = Quality::Uncertain(UncertainReason::OutOfRange);
    true
}
