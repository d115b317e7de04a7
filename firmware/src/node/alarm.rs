//! The local fail-safe alarm: set points stored on the node drive its relay and buzzer outputs,
//! with hysteresis and latching, whether or not any gateway is listening.
//!
//! Each channel is in one of three trip states. For a high-side alarm:
//!
//! | state | entered when | left when |
//! |---|---|---|
//! | [`Trip::None`] | — | value ≥ set point 1 (or ≥ set point 2) |
//! | [`Trip::SetPoint1`] | value ≥ set point 1 | value < set point 1 − hysteresis, or ≥ set point 2 |
//! | [`Trip::SetPoint2`] | value ≥ set point 2 | value < set point 2 − hysteresis |
//!
//! A low-side alarm mirrors this (≤ to trip, > set point + hysteresis to clear). A window
//! alarm trips `SetPoint1` at or below its low limit and `SetPoint2` at or above its high limit.
//!
//! A bad value (sensor fault, calibration gas) never clears a trip: a detector that fails while
//! in alarm stays in alarm, and its fault output says why. A latching alarm keeps its output
//! until reset by command, and a reset cannot clear a trip whose condition still holds.

use tianzhong_protocol::AlarmLevel;
use tianzhong_protocol::registers::profile::AlarmFlags;

use super::config::ChannelConfig;

/// A channel's alarm state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum Trip {
    /// No alarm.
    #[default]
    None,
    /// Set point 1 (or a window alarm's low limit) reached.
    SetPoint1,
    /// Set point 2 (or a window alarm's high limit) reached.
    SetPoint2,
}

/// Output bits, as in the status block's outputs register.
pub mod outputs {
    /// Alarm relay 1: some channel has tripped.
    pub const RELAY_1: u16 = 1 << 0;
    /// Alarm relay 2 / buzzer: some channel has tripped at set point 2 (or a window alarm's
    /// high limit).
    pub const RELAY_2: u16 = 1 << 1;
    /// Fault output: some channel's sensor has failed. Boards wire the fault relay
    /// energised-when-healthy, so a dead node also shows a fault.
    pub const FAULT: u16 = 1 << 2;
}

/// Per-channel alarm state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChannelAlarm {
    /// The current trip state, from the latest value.
    pub trip: Trip,
    /// The highest trip since the last reset, for latching alarms.
    pub latched: Trip,
}

impl ChannelAlarm {
    /// Evaluates a new good or uncertain value.
    pub fn evaluate(&mut self, value: f32, cfg: &ChannelConfig) {
        if !cfg.alarm.has(AlarmFlags::ENABLED) {
            *self = ChannelAlarm::default();
            return;
        }
        self.trip = next_trip(self.trip, value, cfg);
        self.latched = self.latched.max(self.trip);
    }

    /// The trip that drives the outputs: the latched one on a latching alarm.
    pub fn effective(&self, cfg: &ChannelConfig) -> Trip {
        if cfg.alarm.has(AlarmFlags::LATCHING) {
            self.latched.max(self.trip)
        } else {
            self.trip
        }
    }

    /// The alarm level to report.
    pub fn level(&self, cfg: &ChannelConfig) -> AlarmLevel {
        match self.effective(cfg) {
            Trip::None => AlarmLevel::Normal,
            Trip::SetPoint1 => cfg.level_1,
            Trip::SetPoint2 => cfg.level_2,
        }
    }

    /// Resets the latch down to what the current value still justifies.
    pub fn reset_latch(&mut self) {
        self.latched = self.trip;
    }
}

fn next_trip(current: Trip, v: f32, cfg: &ChannelConfig) -> Trip {
    let (sp1, sp2, h) = (cfg.set_point_1, cfg.set_point_2, cfg.hysteresis);
    if cfg.alarm.has(AlarmFlags::WINDOW) {
        return match current {
            _ if v >= sp2 => Trip::SetPoint2,
            _ if v <= sp1 => Trip::SetPoint1,
            Trip::SetPoint2 if v >= sp2 - h => Trip::SetPoint2,
            Trip::SetPoint1 if v <= sp1 + h => Trip::SetPoint1,
            _ => Trip::None,
        };
    }
    // Mirror a low-side alarm onto the high side so one rule serves both.
    let (v, sp1, sp2) = if cfg.alarm.has(AlarmFlags::LOW_SIDE) {
        (-v, -sp1, -sp2)
    } else {
        (v, sp1, sp2)
    };
    let raised = if v >= sp2 {
        Trip::SetPoint2
    } else if v >= sp1 {
        Trip::SetPoint1
    } else {
        Trip::None
    };
    let held = match current {
        Trip::SetPoint2 if v >= sp2 - h => Trip::SetPoint2,
        Trip::SetPoint2 | Trip::SetPoint1 if v >= sp1 - h => Trip::SetPoint1,
        _ => Trip::None,
    };
    raised.max(held)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn high(sp1: f32, sp2: f32, h: f32, flags: u16) -> ChannelConfig {
        ChannelConfig {
            alarm: AlarmFlags(AlarmFlags::ENABLED | flags),
            set_point_1: sp1,
            set_point_2: sp2,
            hysteresis: h,
            level_1: AlarmLevel::Yellow,
            level_2: AlarmLevel::Red,
            ..ChannelConfig::plain()
        }
    }

    /// Feeds values and returns the trip after each.
    fn run(cfg: &ChannelConfig, values: &[f32]) -> std::vec::Vec<Trip> {
        let mut a = ChannelAlarm::default();
        values
            .iter()
            .map(|v| {
                a.evaluate(*v, cfg);
                a.trip
            })
            .collect()
    }

    #[test]
    fn high_side_with_hysteresis() {
        // GB/T 50493 combustible gas: 25 / 50 %LEL, deadband 2.
        let cfg = high(25.0, 50.0, 2.0, 0);
        use Trip::*;
        assert_eq!(
            run(
                &cfg,
                &[
                    10.0, 25.0, 24.0, 23.1, 23.0, 22.9, 50.0, 48.5, 48.0, 47.9, 10.0
                ]
            ),
            [
                None, SetPoint1, SetPoint1, SetPoint1, SetPoint1, None, SetPoint2, SetPoint2,
                SetPoint2, SetPoint1, None
            ]
        );
    }

    #[test]
    fn low_side_and_window() {
        use Trip::*;
        let low = high(19.5, 18.0, 0.3, AlarmFlags::LOW_SIDE);
        assert_eq!(
            run(&low, &[20.9, 19.5, 19.8, 19.81, 18.0, 18.2, 18.31]),
            [
                None, SetPoint1, SetPoint1, None, SetPoint2, SetPoint2, SetPoint1
            ]
        );
        // Oxygen window 19.5 / 23.5 %vol with 0.3 deadband.
        let window = high(19.5, 23.5, 0.3, AlarmFlags::WINDOW);
        assert_eq!(
            run(&window, &[20.9, 19.4, 19.7, 19.9, 23.6, 23.3, 23.1, 20.9]),
            [
                None, SetPoint1, SetPoint1, None, SetPoint2, SetPoint2, None, None
            ]
        );
    }

    #[test]
    fn latching_holds_until_reset_and_reset_cannot_clear_a_live_alarm() {
        let cfg = high(25.0, 50.0, 2.0, AlarmFlags::LATCHING);
        let mut a = ChannelAlarm::default();
        a.evaluate(55.0, &cfg);
        a.evaluate(30.0, &cfg);
        assert_eq!(a.trip, Trip::SetPoint1);
        assert_eq!(a.level(&cfg), AlarmLevel::Red, "latched at set point 2");
        a.reset_latch();
        assert_eq!(a.level(&cfg), AlarmLevel::Yellow, "still above set point 1");
        a.evaluate(5.0, &cfg);
        assert_eq!(a.level(&cfg), AlarmLevel::Yellow, "latched at set point 1");
        a.reset_latch();
        assert_eq!(a.level(&cfg), AlarmLevel::Normal);
    }

    #[test]
    fn a_disabled_alarm_never_trips() {
        let mut cfg = high(25.0, 50.0, 2.0, 0);
        cfg.alarm = AlarmFlags(0);
        assert_eq!(run(&cfg, &[100.0]), [Trip::None]);
    }
}
