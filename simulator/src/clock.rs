//! Simulated time.
//!
//! Every node runs on simulated milliseconds since the scenario's start. The fleet maps them to
//! wall-clock Unix time (`epoch_unix_ms + sim_ms`) for timestamps, and to real time through a
//! speed factor: at `--speed 10` ten simulated seconds pass per real second. Tests may instead
//! step the clock by hand, so nothing in a node depends on when the host scheduled a task.

use std::time::Instant;

/// Milliseconds since the start of the scenario.
pub type SimMs = u64;

/// Maps real time onto simulated time.
#[derive(Clone, Debug)]
pub struct SimClock {
    epoch_unix_ms: u64,
    speed: f64,
    started: Instant,
    offset_ms: SimMs,
}

impl SimClock {
    /// A clock starting at simulated 0 now, running `speed` times real time, whose simulated 0
    /// is `epoch_unix_ms` in Unix time.
    pub fn new(epoch_unix_ms: u64, speed: f64) -> SimClock {
        SimClock {
            epoch_unix_ms,
            speed: speed.max(1e-6),
            started: Instant::now(),
            offset_ms: 0,
        }
    }

    /// A clock whose simulated time starts at `offset_ms` now: a scenario can be entered
    /// just before its interesting part (the fleet steps from 0 to there at once).
    pub fn starting_at(epoch_unix_ms: u64, speed: f64, offset_ms: SimMs) -> SimClock {
        SimClock {
            offset_ms,
            ..SimClock::new(epoch_unix_ms, speed)
        }
    }

    /// Current simulated time.
    pub fn now(&self) -> SimMs {
        self.offset_ms + (self.started.elapsed().as_secs_f64() * 1000.0 * self.speed) as u64
    }

    /// Unix time of simulated instant `t`.
    pub fn unix_ms(&self, t: SimMs) -> u64 {
        self.epoch_unix_ms + t
    }

    /// The speed factor.
    pub fn speed(&self) -> f64 {
        self.speed
    }

    /// Real duration of `sim_ms` simulated milliseconds.
    pub fn real_duration(&self, sim_ms: u64) -> std::time::Duration {
        std::time::Duration::from_secs_f64(sim_ms as f64 / 1000.0 / self.speed)
    }
}
