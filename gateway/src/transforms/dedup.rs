//! De-duplication by (node, channel, seq).
//!
//! Duplicates are normal, not errors: MQTT QoS 1 redelivers after a reconnect, and a Modbus
//! poll faster than the node samples reads the same sample twice. Each channel keeps the
//! highest sequence number forwarded and a bitmap of the `window` numbers below it. A number
//! already in the window is a duplicate. One more than `window` below the highest is taken as
//! the node having restarted its count (after a reset or a firmware update) and starts the
//! window again — dropping it would silence a rebooted node until its count caught up.
//!
//! Memory is one entry per channel seen: the bitmap is `window / 64` words.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use tianzhong_protocol::NodeId;
use tianzhong_protocol::reading::ChannelId;

use crate::pipeline::Record;

#[derive(Debug)]
struct Window {
    highest: u32,
    /// Bit `i` set: `highest - i` was seen.
    seen: Box<[u64]>,
}

/// The de-duplication state.
#[derive(Debug)]
pub struct Dedup {
    window: u32,
    channels: HashMap<(NodeId, ChannelId), Window>,
}

impl Dedup {
    /// A de-duplicator remembering `window` sequence numbers per channel (at least 1).
    pub fn new(window: u32) -> Dedup {
        Dedup {
            window: window.max(1),
            channels: HashMap::new(),
        }
    }

    fn words(&self) -> usize {
        (self.window as usize).div_ceil(64)
    }

    /// Whether `r` is new; records it if so.
    pub fn admit(&mut self, r: &Record) -> bool {
        let seq = r.reading.seq;
        let words = self.words();
        let window = self.window;
        let key = (r.reading.node.clone(), r.reading.channel);
        let w = match self.channels.entry(key) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                let mut seen = vec![0; words].into_boxed_slice();
                seen[0] = 1;
                e.insert(Window { highest: seq, seen });
                return true;
            }
        };
        if seq > w.highest {
            let shift = seq - w.highest;
            shift_left(&mut w.seen, shift);
            w.highest = seq;
            w.seen[0] |= 1;
            return true;
        }
        let back = w.highest - seq;
        if back >= window {
            // The node restarted its count.
            w.seen.iter_mut().for_each(|x| *x = 0);
            w.highest = seq;
            w.seen[0] = 1;
            return true;
        }
        let (word, bit) = ((back / 64) as usize, back % 64);
        if w.seen[word] & (1 << bit) != 0 {
            return false;
        }
        w.seen[word] |= 1 << bit;
        true
    }
}

/// Shifts the bitmap towards older numbers by `n` (bit i moves to bit i + n).
fn shift_left(bits: &mut [u64], n: u32) {
    let total = bits.len() as u32 * 64;
    if n >= total {
        bits.iter_mut().for_each(|x| *x = 0);
        return;
    }
    let (words, rest) = ((n / 64) as usize, n % 64);
    for i in (0..bits.len()).rev() {
        let lo = i.checked_sub(words).map_or(0, |j| bits[j]);
        let lower = i.checked_sub(words + 1).map_or(0, |j| bits[j]);
        bits[i] = if rest == 0 {
            lo
        } else {
            (lo << rest) | (lower >> (64 - rest))
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tianzhong_protocol::reading::Timestamp;
    use tianzhong_protocol::{Quantity, Reading, SiteId};

    fn rec(node: &str, ch: u16, seq: u32) -> Record {
        Record {
            site: SiteId::new("s").unwrap(),
            reading: Reading::new(
                NodeId::new(node).unwrap(),
                ChannelId(ch),
                Quantity::CombustibleGas,
                1.0,
                Timestamp(0),
                seq,
                tianzhong_protocol::Quality::Good,
            )
            .unwrap(),
            received_ms: 0,
            device_time: false,
        }
    }

    #[test]
    fn each_sequence_number_passes_once_per_channel_in_any_order() {
        let mut d = Dedup::new(256);
        let order = [5u32, 3, 4, 5, 3, 200, 6, 4, 199, 200, 70, 70];
        let admitted: Vec<u32> = order
            .iter()
            .copied()
            .filter(|s| d.admit(&rec("a", 0, *s)))
            .collect();
        assert_eq!(admitted, vec![5, 3, 4, 200, 6, 199, 70]);
        // Another channel and another node have their own windows.
        assert!(d.admit(&rec("a", 1, 5)));
        assert!(d.admit(&rec("b", 0, 5)));
    }

    #[test]
    fn a_count_far_below_the_window_is_a_restarted_node() {
        let mut d = Dedup::new(64);
        assert!(d.admit(&rec("a", 0, 1000)));
        assert!(d.admit(&rec("a", 0, 1)));
        assert!(!d.admit(&rec("a", 0, 1)));
        assert!(d.admit(&rec("a", 0, 2)));
    }

    #[test]
    fn shifting_across_word_boundaries_keeps_every_bit() {
        for window in [64u32, 128, 256, 1000] {
            let mut d = Dedup::new(window);
            let seqs: Vec<u32> = (0..window).map(|i| i * 7 % window).collect();
            for s in &seqs {
                assert!(d.admit(&rec("a", 0, *s)), "window {window} seq {s}");
            }
            for s in &seqs {
                assert!(!d.admit(&rec("a", 0, *s)), "window {window} dup {s}");
            }
        }
    }
}
