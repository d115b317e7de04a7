//! The trial's time limit: an image on trial confirms itself once the gateway's health poll
//! reaches it, or resets the node when the limit passes first.
//!
//! The bootloader counts boot attempts ([`BootPolicy::max_attempts`](super::BootPolicy)), but
//! an image that boots and then never hears from the gateway (a broken link, a wrong baud
//! rate, a main loop that stalls without tripping the watchdog) would never reset, so the
//! attempt count would never grow and the node would run the unconfirmed image for good.
//! [`TrialWatch`] closes that gap: the application asks it on every pass of its main loop, and a
//! trial not confirmed within [`TrialLimit::seconds`] of boot ends in a reset, which the
//! bootloader counts as one more failed attempt. After N of them it reverts.
//!
//! # What the application does
//!
//! | event | on trial, before the limit | on trial, at or after the limit | not on trial |
//! |---|---|---|---|
//! | a request answered without exception (the health poll) | [`TrialStep::Confirm`]: append *confirm*, then [`TrialWatch::confirmed`] | [`TrialStep::Reset`] | [`TrialStep::Run`] |
//! | a pass of the main loop ([`TrialWatch::tick`]) | [`TrialStep::Run`] | [`TrialStep::Reset`] | [`TrialStep::Run`] |
//!
//! A confirm that fails to write (a flash error) leaves the trial pending: the next answered
//! request tries again, and the limit still applies. Pure: time comes in as milliseconds since
//! boot; nothing here touches flash or hardware.

use super::boot_state::BootState;
use super::layout::Slot;

/// How long an image on trial may run without being confirmed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrialLimit {
    /// Seconds from boot to the reset (at least 1).
    pub seconds: u32,
}

impl Default for TrialLimit {
    /// Five minutes: the gateway polls every node within a poll interval (seconds to a
    /// minute), and its campaign waits for that health poll right after the reset.
    fn default() -> TrialLimit {
        TrialLimit { seconds: 300 }
    }
}

/// What the application does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrialStep {
    /// Carry on.
    Run,
    /// Append *confirm* for the running slot, then call [`TrialWatch::confirmed`].
    Confirm,
    /// Reset now: the trial ran out of time.
    Reset,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Watch {
    NotOnTrial,
    Pending { deadline_ms: u64 },
    Confirmed,
}

/// Whether the running image is on trial, and until when.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrialWatch(Watch);

impl TrialWatch {
    /// The watch for an image running from `running`, booted at `boot_ms`, with the boot
    /// state `state` as the application reads it after the bootloader's hand-off. The image
    /// is on trial when the state's trial slot is the one it runs from (a bootloader that
    /// cannot write its attempt record, as in QEMU, leaves the attempt count at 0: still a
    /// trial).
    pub fn start(state: &BootState, running: Slot, boot_ms: u64, limit: TrialLimit) -> TrialWatch {
        match state.trial {
            Some(t) if t.slot == running => TrialWatch(Watch::Pending {
                deadline_ms: boot_ms
                    .saturating_add(u64::from(limit.seconds.max(1)).saturating_mul(1000)),
            }),
            _ => TrialWatch(Watch::NotOnTrial),
        }
    }

    /// Whether the image is on trial and not confirmed yet.
    pub fn pending(&self) -> bool {
        matches!(self.0, Watch::Pending { .. })
    }

    /// The reset deadline of a pending trial, in milliseconds since boot.
    pub fn deadline_ms(&self) -> Option<u64> {
        match self.0 {
            Watch::Pending { deadline_ms } => Some(deadline_ms),
            _ => None,
        }
    }

    /// The node answered a request without an exception at `now_ms`: the gateway's health
    /// poll reached a working image.
    pub fn answered(&self, now_ms: u64) -> TrialStep {
        match self.0 {
            Watch::Pending { deadline_ms } if now_ms >= deadline_ms => TrialStep::Reset,
            Watch::Pending { .. } => TrialStep::Confirm,
            _ => TrialStep::Run,
        }
    }

    /// A pass of the main loop at `now_ms`.
    pub fn tick(&self, now_ms: u64) -> TrialStep {
        match self.0 {
            Watch::Pending { deadline_ms } if now_ms >= deadline_ms => TrialStep::Reset,
            _ => TrialStep::Run,
        }
    }

    /// The confirm record is written: no limit any more.
    pub fn confirmed(&mut self) {
        if self.pending() {
            self.0 = Watch::Confirmed;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::boot_state::Trial;
    use super::*;

    fn state(trial: Option<(Slot, u8)>) -> BootState {
        let mut s = BootState::FACTORY;
        s.trial = trial.map(|(slot, attempts)| Trial { slot, attempts });
        s
    }

    const LIMIT: TrialLimit = TrialLimit { seconds: 60 };

    #[test]
    fn a_trial_confirmed_before_the_limit_runs_on() {
        let mut w = TrialWatch::start(&state(Some((Slot::B, 1))), Slot::B, 500, LIMIT);
        assert!(w.pending());
        assert_eq!(w.deadline_ms(), Some(60_500));
        assert_eq!(w.tick(60_499), TrialStep::Run);
        assert_eq!(w.answered(60_499), TrialStep::Confirm);
        w.confirmed();
        assert!(!w.pending());
        assert_eq!(w.tick(10_000_000), TrialStep::Run);
        assert_eq!(w.answered(10_000_000), TrialStep::Run);
    }

    #[test]
    fn a_trial_not_confirmed_in_time_resets() {
        let w = TrialWatch::start(&state(Some((Slot::B, 2))), Slot::B, 0, LIMIT);
        assert_eq!(w.tick(59_999), TrialStep::Run);
        assert_eq!(w.tick(60_000), TrialStep::Reset);
        // A poll that arrives after the limit does not save it: the reset is already due.
        assert_eq!(w.answered(60_001), TrialStep::Reset);
    }

    #[test]
    fn a_failed_confirm_keeps_the_trial_and_its_limit() {
        let w = TrialWatch::start(&state(Some((Slot::A, 1))), Slot::A, 0, LIMIT);
        assert_eq!(w.answered(1_000), TrialStep::Confirm);
        // No `confirmed()`: the write failed. The next answer asks again; the limit stands.
        assert_eq!(w.answered(2_000), TrialStep::Confirm);
        assert_eq!(w.tick(60_000), TrialStep::Reset);
    }

    #[test]
    fn a_new_image_the_bootloader_could_not_count_is_on_trial() {
        let w = TrialWatch::start(&state(Some((Slot::B, 0))), Slot::B, 0, LIMIT);
        assert!(w.pending());
    }

    #[test]
    fn the_confirmed_image_has_no_limit() {
        // Nothing staged.
        let w = TrialWatch::start(&state(None), Slot::A, 0, LIMIT);
        assert!(!w.pending());
        assert_eq!(w.tick(u64::MAX), TrialStep::Run);
        assert_eq!(w.answered(u64::MAX), TrialStep::Run);
        // A trial in the other slot (the bootloader reverted, or the image is still staged)
        // is not this image's business.
        let w = TrialWatch::start(&state(Some((Slot::B, 3))), Slot::A, 0, LIMIT);
        assert!(!w.pending());
        assert_eq!(w.deadline_ms(), None);
    }

    #[test]
    fn a_zero_limit_is_one_second() {
        let w = TrialWatch::start(
            &state(Some((Slot::B, 1))),
            Slot::B,
            0,
            TrialLimit { seconds: 0 },
        );
        assert_eq!(w.deadline_ms(), Some(1_000));
        let w = TrialWatch::start(&state(Some((Slot::B, 1))), Slot::B, u64::MAX - 5, LIMIT);
        assert_eq!(w.deadline_ms(), Some(u64::MAX));
    }
}
