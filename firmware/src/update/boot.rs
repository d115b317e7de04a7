//! The boot decision: which slot to run, as a function of the flash contents alone.
//!
//! [`decide`] only reads; the bootloader then calls [`boot`], which also records the boot
//! attempt when the decision is a trial boot. Every slot is verified (header, hardware,
//! SHA-256, signature) before it is chosen, so the node never runs an image that is not whole
//! and signed, whatever the boot state says.
//!
//! # Decision table
//!
//! | boot state | trial image | confirmed image | boots | recorded |
//! |---|---|---|---|---|
//! | trial in T, attempts < N | valid, counter ≥ confirmed's | — | T ([`BootKind::Trial`]) | attempt(T) |
//! | trial in T, attempts ≥ N | — | valid | confirmed ([`BootKind::Reverted`]) | — |
//! | trial in T | invalid or rolled back | valid | confirmed ([`BootKind::Reverted`]) | — |
//! | no trial | — | valid | confirmed ([`BootKind::Confirmed`]) | — |
//! | any | — | invalid | the other slot if valid ([`BootKind::Fallback`]) | — |
//! | any | — | invalid, other invalid too | nothing: [`BootError::NoValidImage`] | — |
//!
//! N is [`BootPolicy::max_attempts`]. The time limit on a trial (the node confirms within T
//! seconds of boot or resets itself) is the application's, with
//! [`TrialWatch`](super::trial::TrialWatch): its reset is one more failed attempt here. A hang
//! the main loop cannot see is the watchdog's, which resets the node just the same.

use core::fmt;

use embedded_storage::nor_flash::NorFlash;
use tianzhong_protocol::image::ImageHeader;

use super::boot_state::BootState;
use super::flash::FlashError;
use super::layout::{FlashLayout, Slot};
use super::verify::{SlotError, Trust, verify_slot};

/// How many times a trial image may be booted without confirmation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootPolicy {
    /// Boot attempts before the bootloader reverts (at least 1).
    pub max_attempts: u8,
}

impl Default for BootPolicy {
    fn default() -> BootPolicy {
        BootPolicy { max_attempts: 3 }
    }
}

/// Why this boot runs the slot it runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BootKind {
    /// The confirmed image, nothing pending.
    Confirmed,
    /// A new or trial image, attempt `attempt` of the policy's maximum.
    Trial {
        /// This boot's attempt number, from 1.
        attempt: u8,
    },
    /// The confirmed image, because the trial image failed.
    Reverted {
        /// Why the trial image is not run.
        why: RevertReason,
    },
    /// The confirmed image is not valid; the other slot's image is.
    Fallback {
        /// What is wrong with the confirmed image.
        confirmed: SlotError,
    },
}

/// Why a trial image is not booted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RevertReason {
    /// It was booted the maximum number of times without being confirmed.
    NotConfirmed {
        /// Attempts made.
        attempts: u8,
    },
    /// It does not verify.
    Invalid(SlotError),
}

/// What the bootloader does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootDecision {
    /// The slot to run.
    pub slot: Slot,
    /// Why.
    pub kind: BootKind,
    /// The header of the image run.
    pub header: ImageHeader,
    /// The boot state read.
    pub state: BootState,
}

/// Why nothing can be booted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BootError {
    /// Neither slot holds a valid image.
    NoValidImage {
        /// What is wrong with slot A.
        a: SlotError,
        /// What is wrong with slot B.
        b: SlotError,
    },
    /// Reading or writing the boot state failed.
    Flash(FlashError),
}

impl fmt::Display for BootError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BootError::NoValidImage { a, b } => {
                write!(f, "no valid image: slot A: {a}; slot B: {b}")
            }
            BootError::Flash(e) => write!(f, "{e}"),
        }
    }
}

impl From<FlashError> for BootError {
    fn from(e: FlashError) -> BootError {
        BootError::Flash(e)
    }
}

/// Decides which slot to boot. Reads the flash, writes nothing.
// The error carries both slots' reasons by value: there is no heap to box them in, and it is
// returned once per boot.
#[allow(clippy::result_large_err)]
pub fn decide<F: NorFlash>(
    flash: &mut F,
    layout: &FlashLayout,
    trust: &Trust,
    policy: BootPolicy,
) -> Result<BootDecision, BootError> {
    let state = BootState::read(flash, layout)?;
    let confirmed = verify_slot(flash, layout, state.confirmed, trust, 0);
    let decision = |slot, kind, header| BootDecision {
        slot,
        kind,
        header,
        state,
    };
    let mut revert = None;
    if let Some(trial) = state.trial {
        if trial.attempts >= policy.max_attempts.max(1) {
            revert = Some(RevertReason::NotConfirmed {
                attempts: trial.attempts,
            });
        } else {
            // A trial image may not roll the security counter back below the confirmed one's.
            let floor = confirmed
                .as_ref()
                .map(|v| v.header.security_counter)
                .unwrap_or(0);
            match verify_slot(flash, layout, trial.slot, trust, floor) {
                Ok(v) => {
                    let attempt = trial.attempts + 1;
                    return Ok(decision(trial.slot, BootKind::Trial { attempt }, v.header));
                }
                Err(e) => revert = Some(RevertReason::Invalid(e)),
            }
        }
    }
    match confirmed {
        Ok(v) => {
            let kind = match revert {
                Some(why) => BootKind::Reverted { why },
                None => BootKind::Confirmed,
            };
            Ok(decision(state.confirmed, kind, v.header))
        }
        Err(confirmed_error) => {
            let other = state.confirmed.other();
            match verify_slot(flash, layout, other, trust, 0) {
                Ok(v) => Ok(decision(
                    other,
                    BootKind::Fallback {
                        confirmed: confirmed_error,
                    },
                    v.header,
                )),
                Err(other_error) => {
                    let (a, b) = match state.confirmed {
                        Slot::A => (confirmed_error, other_error),
                        Slot::B => (other_error, confirmed_error),
                    };
                    Err(BootError::NoValidImage { a, b })
                }
            }
        }
    }
}

/// What the bootloader runs at reset: [`decide`], then record the attempt of a trial boot.
#[allow(clippy::result_large_err)] // as for `decide`
pub fn boot<F: NorFlash>(
    flash: &mut F,
    layout: &FlashLayout,
    trust: &Trust,
    policy: BootPolicy,
) -> Result<BootDecision, BootError> {
    let mut d = decide(flash, layout, trust, policy)?;
    if let BootKind::Trial { .. } = d.kind {
        d.state.record_attempt(flash, layout, d.slot)?;
    }
    Ok(d)
}
