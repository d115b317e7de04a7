//! Signal models: what the physical world presents to a channel's sensor over time.
//!
//! A channel's signal is the sum of its components, evaluated at simulated time, then clamped
//! when the scenario asks. Components:
//!
//! | kind | contributes |
//! |---|---|
//! | `constant` | `value` |
//! | `diurnal` | `amplitude · cos(2π (hour − peak_hour) / 24)`: a daily cycle peaking at `peak_hour` |
//! | `random_walk` | a walk starting at 0 that moves by a uniform step in `±step` per sample, kept within `±bound` |
//! | `noise` | Gaussian noise of standard deviation `sigma`, new each sample |
//! | `drift` | `per_hour · hours`: a sensor or process drifting |
//! | `step` | `delta` from `at_s` on |
//! | `ramp` | 0 before `from_s`, rising linearly to `delta` at `to_s`, then `delta` (or back to 0 with `hold = false`) |
//! | `replay` | values from a CSV file (`seconds,value` rows), linearly interpolated, held after the last row |
//!
//! Random components draw from a ChaCha8 generator seeded from the scenario seed and the
//! channel's identity, so the same seed gives the same signal.

use std::path::{Path, PathBuf};

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{Rng, SeedableRng};
use serde::Deserialize;

use crate::clock::SimMs;

/// One component of a signal, as written in a scenario.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Component {
    /// A constant.
    Constant {
        /// The value.
        value: f64,
    },
    /// A daily cycle.
    Diurnal {
        /// Half the peak-to-peak swing.
        amplitude: f64,
        /// Hour of the day (0–24, simulated time from midnight) of the maximum.
        #[serde(default = "default_peak_hour")]
        peak_hour: f64,
    },
    /// A bounded random walk.
    RandomWalk {
        /// Largest step per sample.
        step: f64,
        /// Largest distance from 0.
        bound: f64,
    },
    /// Gaussian noise.
    Noise {
        /// Standard deviation.
        sigma: f64,
    },
    /// Linear drift.
    Drift {
        /// Change per simulated hour.
        per_hour: f64,
    },
    /// A step change.
    Step {
        /// When, in simulated seconds.
        at_s: f64,
        /// By how much.
        delta: f64,
    },
    /// A ramp.
    Ramp {
        /// Start, simulated seconds.
        from_s: f64,
        /// End, simulated seconds.
        to_s: f64,
        /// Total change.
        delta: f64,
        /// Whether the change stays after `to_s`.
        #[serde(default = "default_true")]
        hold: bool,
    },
    /// Replay from a CSV file.
    Replay {
        /// The file, relative to the scenario file.
        file: PathBuf,
    },
}

fn default_peak_hour() -> f64 {
    14.0
}

fn default_true() -> bool {
    true
}

/// Why a signal could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    /// A replay file could not be read.
    #[error("replay file {path}: {source}")]
    ReplayIo {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A replay file has a malformed row.
    #[error("replay file {path}, line {line}: expected `seconds,value` with numbers")]
    ReplayRow {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
    },
    /// A parameter is out of its domain.
    #[error("{0}")]
    Invalid(&'static str),
}

#[derive(Clone, Debug)]
enum State {
    Constant(f64),
    Diurnal {
        amplitude: f64,
        peak_hour: f64,
    },
    RandomWalk {
        step: f64,
        bound: f64,
        position: f64,
    },
    Noise {
        sigma: f64,
    },
    Drift {
        per_hour: f64,
    },
    Step {
        at_ms: SimMs,
        delta: f64,
    },
    Ramp {
        from_ms: SimMs,
        to_ms: SimMs,
        delta: f64,
        hold: bool,
    },
    Replay {
        points: Vec<(SimMs, f64)>,
    },
}

/// A channel's signal.
#[derive(Clone, Debug)]
pub struct Signal {
    parts: Vec<State>,
    clamp: Option<(f64, f64)>,
    rng: ChaCha8Rng,
}

const HOUR_MS: f64 = 3_600_000.0;

fn seconds_to_ms(s: f64) -> Result<SimMs, SignalError> {
    if s.is_finite() && s >= 0.0 {
        Ok((s * 1000.0) as SimMs)
    } else {
        Err(SignalError::Invalid(
            "times must be finite and not negative",
        ))
    }
}

fn load_replay(path: &Path) -> Result<Vec<(SimMs, f64)>, SignalError> {
    let text = std::fs::read_to_string(path).map_err(|source| SignalError::ReplayIo {
        path: path.to_owned(),
        source,
    })?;
    let mut points = Vec::new();
    let mut seen_row = false;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        // A header is the first row that is not a comment, if it starts with a name.
        let first = !seen_row;
        seen_row = true;
        if first && line.starts_with(|c: char| c.is_alphabetic()) {
            continue;
        }
        let bad = || SignalError::ReplayRow {
            path: path.to_owned(),
            line: i + 1,
        };
        let (t, v) = line.split_once(',').ok_or_else(bad)?;
        let t: f64 = t.trim().parse().map_err(|_| bad())?;
        let v: f64 = v.trim().parse().map_err(|_| bad())?;
        if !v.is_finite() {
            return Err(bad());
        }
        points.push((seconds_to_ms(t).map_err(|_| bad())?, v));
    }
    if points.is_empty() {
        return Err(SignalError::ReplayRow {
            path: path.to_owned(),
            line: 1,
        });
    }
    points.sort_by_key(|p| p.0);
    Ok(points)
}

impl Signal {
    /// Builds a signal from its components; `seed` feeds its random parts, `base_dir` resolves
    /// replay files; `clamp` bounds the sum.
    pub fn new(
        components: &[Component],
        seed: u64,
        base_dir: &Path,
        clamp: Option<(f64, f64)>,
    ) -> Result<Signal, SignalError> {
        let mut parts = Vec::with_capacity(components.len());
        for c in components {
            parts.push(match c {
                Component::Constant { value } => State::Constant(*value),
                Component::Diurnal {
                    amplitude,
                    peak_hour,
                } => State::Diurnal {
                    amplitude: *amplitude,
                    peak_hour: *peak_hour,
                },
                Component::RandomWalk { step, bound } => {
                    if !(*step >= 0.0 && *bound >= 0.0) {
                        return Err(SignalError::Invalid(
                            "random walk step and bound must be ≥ 0",
                        ));
                    }
                    State::RandomWalk {
                        step: *step,
                        bound: *bound,
                        position: 0.0,
                    }
                }
                Component::Noise { sigma } => {
                    if sigma.is_nan() || *sigma < 0.0 {
                        return Err(SignalError::Invalid("noise sigma must be ≥ 0"));
                    }
                    State::Noise { sigma: *sigma }
                }
                Component::Drift { per_hour } => State::Drift {
                    per_hour: *per_hour,
                },
                Component::Step { at_s, delta } => State::Step {
                    at_ms: seconds_to_ms(*at_s)?,
                    delta: *delta,
                },
                Component::Ramp {
                    from_s,
                    to_s,
                    delta,
                    hold,
                } => {
                    let (from_ms, to_ms) = (seconds_to_ms(*from_s)?, seconds_to_ms(*to_s)?);
                    if to_ms <= from_ms {
                        return Err(SignalError::Invalid("a ramp must end after it starts"));
                    }
                    State::Ramp {
                        from_ms,
                        to_ms,
                        delta: *delta,
                        hold: *hold,
                    }
                }
                Component::Replay { file } => State::Replay {
                    points: load_replay(&base_dir.join(file))?,
                },
            });
        }
        Ok(Signal {
            parts,
            clamp,
            rng: ChaCha8Rng::seed_from_u64(seed),
        })
    }

    /// The value at simulated time `t`. Random parts advance once per call, so call it once
    /// per sample, with non-decreasing times.
    pub fn sample(&mut self, t: SimMs) -> f64 {
        let mut sum = 0.0;
        for part in &mut self.parts {
            sum += match part {
                State::Constant(v) => *v,
                State::Diurnal {
                    amplitude,
                    peak_hour,
                } => {
                    let hour = (t as f64 / HOUR_MS) % 24.0;
                    *amplitude * (std::f64::consts::TAU * (hour - *peak_hour) / 24.0).cos()
                }
                State::RandomWalk {
                    step,
                    bound,
                    position,
                } => {
                    let delta = (unit(&mut self.rng) * 2.0 - 1.0) * *step;
                    *position = (*position + delta).clamp(-*bound, *bound);
                    *position
                }
                State::Noise { sigma } => {
                    // Box–Muller; 1 − u keeps the logarithm finite.
                    let u1 = 1.0 - unit(&mut self.rng);
                    let u2 = unit(&mut self.rng);
                    *sigma * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
                }
                State::Drift { per_hour } => *per_hour * t as f64 / HOUR_MS,
                State::Step { at_ms, delta } => {
                    if t >= *at_ms {
                        *delta
                    } else {
                        0.0
                    }
                }
                State::Ramp {
                    from_ms,
                    to_ms,
                    delta,
                    hold,
                } => {
                    if t < *from_ms {
                        0.0
                    } else if t < *to_ms {
                        *delta * (t - *from_ms) as f64 / (*to_ms - *from_ms) as f64
                    } else if *hold {
                        *delta
                    } else {
                        0.0
                    }
                }
                State::Replay { points } => interpolate(points, t),
            };
        }
        match self.clamp {
            Some((lo, hi)) => sum.clamp(lo, hi),
            None => sum,
        }
    }
}

/// A 64-bit seed for one random stream, from the scenario seed and the stream's identity (node,
/// channel, purpose): FNV-1a over the parts, each closed by a separator byte so that `["ab",
/// "c"]` and `["a", "bc"]` differ.
pub(crate) fn stream_seed(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in *p {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A uniform draw from [0, 1) with the generator's top 53 bits.
fn unit(rng: &mut ChaCha8Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

fn interpolate(points: &[(SimMs, f64)], t: SimMs) -> f64 {
    let i = points.partition_point(|p| p.0 <= t);
    match (i.checked_sub(1).map(|j| points[j]), points.get(i)) {
        (None, Some(first)) => first.1,
        (Some(last), None) => last.1,
        (Some((t0, v0)), Some((t1, v1))) => v0 + (v1 - v0) * (t - t0) as f64 / (t1 - t0) as f64,
        (None, None) => 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signal(components: &[Component], seed: u64) -> Signal {
        Signal::new(components, seed, Path::new("."), None).unwrap()
    }

    #[test]
    fn deterministic_components() {
        let mut s = signal(
            &[
                Component::Constant { value: 20.0 },
                Component::Diurnal {
                    amplitude: 5.0,
                    peak_hour: 14.0,
                },
                Component::Ramp {
                    from_s: 100.0,
                    to_s: 200.0,
                    delta: 10.0,
                    hold: true,
                },
                Component::Step {
                    at_s: 300.0,
                    delta: -1.0,
                },
                Component::Drift { per_hour: 0.5 },
            ],
            1,
        );
        // Midnight: diurnal at its minimum (peak at 14:00 → 02:00 is +cos(−12/24·2π)... at 0 h it is cos(−14/24·2π)).
        let expected_0 = 20.0 + 5.0 * (std::f64::consts::TAU * (0.0 - 14.0) / 24.0).cos();
        assert!((s.sample(0) - expected_0).abs() < 1e-12);
        // Half-way up the ramp, 150 s in.
        let diurnal = |t: f64| 5.0 * (std::f64::consts::TAU * (t / 3600.0 - 14.0) / 24.0).cos();
        let v = s.sample(150_000);
        assert!((v - (20.0 + diurnal(150.0) + 5.0 + 0.5 * 150.0 / 3600.0)).abs() < 1e-9);
        let v = s.sample(400_000);
        assert!((v - (20.0 + diurnal(400.0) + 10.0 - 1.0 + 0.5 * 400.0 / 3600.0)).abs() < 1e-9);
    }

    #[test]
    fn random_parts_repeat_with_the_seed_and_differ_without_it() {
        let parts = [
            Component::RandomWalk {
                step: 1.0,
                bound: 3.0,
            },
            Component::Noise { sigma: 2.0 },
        ];
        let run = |seed| {
            let mut s = signal(&parts, seed);
            (0..1000).map(|i| s.sample(i * 1000)).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
        // The walk stays in bounds; the noise has roughly its sigma.
        let mut walk = signal(
            &[Component::RandomWalk {
                step: 1.0,
                bound: 3.0,
            }],
            3,
        );
        assert!((0..10_000).all(|i| walk.sample(i).abs() <= 3.0));
        let mut noise = signal(&[Component::Noise { sigma: 2.0 }], 3);
        let xs: Vec<f64> = (0..20_000).map(|i| noise.sample(i)).collect();
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        let sd = (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64).sqrt();
        assert!(
            mean.abs() < 0.05 && (sd - 2.0).abs() < 0.05,
            "mean {mean} sd {sd}"
        );
    }

    #[test]
    fn replay_interpolates_and_reports_bad_rows() {
        let dir = std::env::temp_dir().join(format!("tz-replay-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("ok.csv"), "seconds,value\n0,1.0\n10,3.0\n").unwrap();
        let mut s = Signal::new(
            &[Component::Replay {
                file: "ok.csv".into(),
            }],
            0,
            &dir,
            None,
        )
        .unwrap();
        assert_eq!(s.sample(5_000), 2.0);
        assert_eq!(s.sample(60_000), 3.0);
        std::fs::write(dir.join("bad.csv"), "0,1\n5,x\n").unwrap();
        let err = Signal::new(
            &[Component::Replay {
                file: "bad.csv".into(),
            }],
            0,
            &dir,
            None,
        )
        .unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
    }
}
