//! A moving average over the last 1–8 samples of a channel.
//!
//! Gas channels ship unfiltered (window 1): an average delays the alarm. Slow quantities
//! (weather, water level) average a few samples to damp sensor noise.

/// Widest window.
pub const MAX_WINDOW: usize = 8;

/// Moving average state. The sum is recomputed from the ring on every push, so no rounding
/// error accumulates over months of running.
#[derive(Clone, Copy, Debug, Default)]
pub struct MovingAverage {
    ring: [f32; MAX_WINDOW],
    next: u8,
    len: u8,
}

impl MovingAverage {
    /// Adds a sample and returns the average over the last `window` samples (fewer right after
    /// a reset).
    pub fn push(&mut self, value: f32, window: usize) -> f32 {
        let window = window.clamp(1, MAX_WINDOW);
        self.ring[usize::from(self.next) % MAX_WINDOW] = value;
        self.next = ((usize::from(self.next) + 1) % MAX_WINDOW) as u8;
        self.len = (usize::from(self.len) + 1).min(MAX_WINDOW) as u8;
        let n = usize::from(self.len).min(window);
        let sum: f32 = (1..=n)
            .map(|back| self.ring[(usize::from(self.next) + MAX_WINDOW - back) % MAX_WINDOW])
            .sum();
        sum / n as f32
    }

    /// Forgets past samples (after a sensor fault or a configuration change).
    pub fn reset(&mut self) {
        *self = MovingAverage::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn averages_the_last_window_samples() {
        let mut f = MovingAverage::default();
        assert_eq!(f.push(4.0, 4), 4.0);
        assert_eq!(f.push(8.0, 4), 6.0);
        assert_eq!(f.push(0.0, 4), 4.0);
        assert_eq!(f.push(4.0, 4), 4.0);
        assert_eq!(f.push(12.0, 4), 6.0); // 8 + 0 + 4 + 12
        assert_eq!(f.push(1.0, 1), 1.0);
        for v in 0..20 {
            f.push(v as f32, 8);
        }
        assert_eq!(f.push(20.0, 8), (13..=20).sum::<i32>() as f32 / 8.0);
    }
}
