//! The update receiver behind MQTT: a node that is an MQTT client takes the
//! [update requests](tianzhong_protocol::update) published on its `fwupdate` topic and answers
//! each with a report on its `fwstatus` topic.
//!
//! Transport-neutral: [`handle`] takes a decoded request (or [`handle_payload`] the payload
//! as it came), drives the same [`UpdateSession`] the Modbus files drive, and returns the
//! report to publish. The node's MQTT client, its topics and its QoS are the caller's.
//!
//! | request | what the node does | report's reason when refused |
//! |---|---|---|
//! | offer | [`UpdateSession::offer`]: checks hardware, security counter, size; resumes the same image where its flash says | the refusal: wrong hardware, counter too low, too large, bad chunk size, trial pending… |
//! | chunk | [`UpdateSession::chunk`]: checks the CRC-32C, writes and records; a chunk already written is acknowledged again | damaged, wrong length, out of order (the report names the chunk wanted) |
//! | finish | [`UpdateSession::finish`]: reads the image back, checks size, hash, signature, and stages it | altered, bad signature, incomplete… |
//! | status | nothing | the last refusal |
//! | confirm | appends *confirm* to the boot state if the running image is on trial and is the version named | another version runs: the trial did not boot or was given up |
//!
//! After a report of phase *staged* the node resets into the new image; after it has booted
//! and reconnected, the gateway's health check ends with a confirm.

use embedded_storage::nor_flash::NorFlash;
use tianzhong_protocol::update::{
    Answers, Phase, Reason, UpdateMessageError, UpdateReport, UpdateRequest,
};

use super::boot::{BootDecision, BootKind};
use super::receiver::UpdateError;
use super::session::{UpdateSession, reason_of};

/// A report of the session's state, answering `answers`, with `reason` for this request.
fn report<F: NorFlash>(
    session: &UpdateSession<F>,
    running: &BootDecision,
    answers: Answers,
    reason: u16,
) -> UpdateReport {
    let s = session.status();
    UpdateReport {
        answers,
        phase: s.phase,
        next_chunk: s.next_chunk,
        chunks: s.chunks,
        chunk_size: s.chunk_size,
        reason,
        running: running.header.version,
        trial: matches!(running.kind, BootKind::Trial { .. }),
    }
}

/// Takes one request: drives the session (and, for a confirm, the boot state of the image
/// `running`) and returns the report to publish.
pub fn handle<F: NorFlash>(
    session: &mut UpdateSession<F>,
    running: &mut BootDecision,
    request: &UpdateRequest<'_>,
) -> UpdateReport {
    let answers = request.answers();
    let refused = |e: UpdateError| reason_of(&e).code();
    let reason = match request {
        UpdateRequest::Offer {
            header,
            digest,
            chunk_size,
        } => session
            .offer(header, digest, *chunk_size)
            .err()
            .map_or(0, refused),
        UpdateRequest::Chunk { index, crc, data } => {
            session.chunk(*index, data, *crc).err().map_or(0, refused)
        }
        UpdateRequest::Finish => session.finish().err().map_or(0, refused),
        UpdateRequest::Status => session.status().reason,
        UpdateRequest::Confirm { version } => confirm(session, running, *version),
    };
    report(session, running, answers, reason)
}

/// A confirm: 0 when the image running is (now) confirmed and is `version`.
fn confirm<F: NorFlash>(
    session: &mut UpdateSession<F>,
    running: &mut BootDecision,
    version: tianzhong_protocol::registers::profile::FirmwareVersion,
) -> u16 {
    if running.header.version != version {
        return Reason::ConfirmOtherVersion.code();
    }
    if !matches!(running.kind, BootKind::Trial { .. }) {
        // Already confirmed: a confirm delivered twice (QoS 1) is not an error.
        return 0;
    }
    let layout = *session.receiver().layout();
    let mut state = running.state;
    match state.confirm(session.flash_mut(), &layout, running.slot) {
        Ok(()) => {
            running.kind = BootKind::Confirmed;
            running.state = state;
            0
        }
        Err(_) => Reason::Flash.code(),
    }
}

/// What [`handle_payload`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handled {
    /// The report to publish.
    pub report: UpdateReport,
    /// Why the payload was not a request, when it was not: for the node's counters and log.
    pub malformed: Option<UpdateMessageError>,
}

impl Handled {
    /// Whether the node must now reset into a staged image.
    pub fn staged(&self) -> bool {
        self.report.answers == Answers::Finish && self.report.phase == Phase::Staged
    }
}

/// Decodes a payload from the `fwupdate` topic and takes it. A payload that is not a request
/// changes nothing and is answered with [`Reason::MalformedRequest`], so that the gateway
/// learns at once that the node does not understand it rather than waiting for a timeout.
pub fn handle_payload<F: NorFlash>(
    session: &mut UpdateSession<F>,
    running: &mut BootDecision,
    payload: &[u8],
) -> Handled {
    match UpdateRequest::decode(payload) {
        Ok(request) => Handled {
            report: handle(session, running, &request),
            malformed: None,
        },
        Err(e) => Handled {
            report: report(
                session,
                running,
                Answers::Malformed,
                Reason::MalformedRequest.code(),
            ),
            malformed: Some(e),
        },
    }
}
