//! A firmware update over MQTT messages: the gateway's requests as encoded payloads through
//! the node's MQTT handler into the update session, the receiver and a simulated flash; the
//! reports read back as the gateway decodes them. Includes lost chunks (the report names the
//! chunk to go back to), a reset mid-image (resumed from flash), the confirm after the reboot,
//! and refusals reported with their reason.

mod update_support;

use tianzhong_firmware::update::boot::BootDecision;
use tianzhong_firmware::update::mqtt::{Handled, handle_payload};
use tianzhong_firmware::update::session::UpdateSession;
use tianzhong_firmware::update::{BootKind, Slot};
use tianzhong_protocol::crc::FRAME as CRC32C;
use tianzhong_protocol::image::HEADER_LEN;
use tianzhong_protocol::registers::profile::FirmwareVersion;
use tianzhong_protocol::update::{
    Answers, MAX_REPORT_LEN, MAX_REQUEST_LEN, MQTT_CHUNK, Phase, Reason, UpdateReport,
    UpdateRequest,
};
use update_support::*;

/// A node: its session over the flash, and what it booted.
struct Node {
    session: UpdateSession<&'static mut Flash>,
    running: BootDecision,
    /// Payloads that were not requests.
    malformed: u32,
}

impl Node {
    fn factory() -> Node {
        let flash = Box::leak(factory_flash());
        let running = boot_now(flash).unwrap();
        Node {
            session: UpdateSession::new(receiver(), flash),
            running,
            malformed: 0,
        }
    }

    /// One request, over the wire both ways.
    fn request(&mut self, request: &UpdateRequest<'_>) -> UpdateReport {
        let mut buf = [0u8; MAX_REQUEST_LEN];
        let payload = request.encode(&mut buf).unwrap();
        self.payload(payload)
    }

    fn payload(&mut self, payload: &[u8]) -> UpdateReport {
        let handled: Handled = handle_payload(&mut self.session, &mut self.running, payload);
        if handled.malformed.is_some() {
            self.malformed += 1;
        }
        let mut out = [0u8; MAX_REPORT_LEN];
        let bytes = handled.report.encode(&mut out).unwrap();
        UpdateReport::decode(bytes).unwrap()
    }

    /// Power off and on: the bootloader decides from the flash, the session starts empty.
    fn reset(&mut self) {
        self.session.reset();
        self.running = reboot(self.session.flash_mut()).unwrap();
    }
}

fn offer(image: &[u8], chunk_size: u16) -> UpdateRequest<'static> {
    let sender = Sender::new(image);
    UpdateRequest::Offer {
        header: image[..HEADER_LEN].try_into().unwrap(),
        digest: sender.digest(),
        chunk_size,
    }
}

fn chunk(image: &[u8], index: u32, size: u16) -> UpdateRequest<'_> {
    let size = usize::from(size);
    let start = index as usize * size;
    let data = &image[start..(start + size).min(image.len())];
    UpdateRequest::Chunk {
        index,
        crc: CRC32C.checksum(data),
        data,
    }
}

fn version(v: (u8, u8, u16)) -> FirmwareVersion {
    FirmwareVersion {
        major: v.0,
        minor: v.1,
        patch: v.2,
    }
}

#[test]
fn an_image_goes_over_with_lost_chunks_a_reset_and_the_confirm() {
    let image = new_image();
    let chunks = image.len().div_ceil(usize::from(MQTT_CHUNK)) as u32;
    assert!(chunks >= 5, "the image spans several 1 KiB chunks");
    let mut node = Node::factory();

    let r = node.request(&offer(&image, MQTT_CHUNK));
    assert_eq!(
        (r.answers, r.phase, r.next_chunk, r.chunks, r.reason),
        (Answers::Offer, Phase::Receiving, 0, chunks, 0)
    );
    assert_eq!((r.running, r.trial), (version((1, 0, 0)), false));

    // Chunk 0 arrives; chunk 1 is lost; chunk 2 is refused and names chunk 1.
    assert_eq!(node.request(&chunk(&image, 0, MQTT_CHUNK)).next_chunk, 1);
    let r = node.request(&chunk(&image, 2, MQTT_CHUNK));
    assert_eq!(
        (r.phase, r.next_chunk, r.reason()),
        (Phase::Receiving, 1, Some(Reason::OutOfOrder))
    );
    // A damaged chunk 1 is refused and still wanted.
    let UpdateRequest::Chunk { index, crc, data } = chunk(&image, 1, MQTT_CHUNK) else {
        unreachable!()
    };
    let r = node.request(&UpdateRequest::Chunk {
        index,
        crc: crc ^ 1,
        data,
    });
    assert_eq!((r.next_chunk, r.reason()), (1, Some(Reason::ChunkCrc)));
    // Going back to the chunk the report names; a repeat of chunk 0 is acknowledged again.
    assert_eq!(node.request(&chunk(&image, 1, MQTT_CHUNK)).reason, 0);
    let r = node.request(&chunk(&image, 0, MQTT_CHUNK));
    assert_eq!((r.next_chunk, r.reason), (2, 0));
    assert_eq!(node.request(&chunk(&image, 2, MQTT_CHUNK)).next_chunk, 3);

    // The node resets mid-image: an offer of the same image resumes at chunk 3.
    node.reset();
    let r = node.request(&UpdateRequest::Status);
    assert_eq!((r.phase, r.next_chunk), (Phase::Idle, 0));
    let r = node.request(&offer(&image, MQTT_CHUNK));
    assert_eq!((r.phase, r.next_chunk), (Phase::Receiving, 3));
    for i in 3..chunks {
        assert_eq!(
            node.request(&chunk(&image, i, MQTT_CHUNK)).next_chunk,
            i + 1
        );
    }
    let r = node.request(&UpdateRequest::Finish);
    assert_eq!(
        (r.answers, r.phase, r.reason, r.next_chunk),
        (Answers::Finish, Phase::Staged, 0, chunks)
    );
    assert_eq!(
        slot_bytes(node.session.flash_mut(), Slot::B, image.len()),
        &image[..]
    );

    // Reset into the new image: on trial until confirmed.
    node.reset();
    let r = node.request(&UpdateRequest::Status);
    assert_eq!((r.running, r.trial), (version((1, 1, 0)), true));
    // A confirm of another version confirms nothing.
    let r = node.request(&UpdateRequest::Confirm {
        version: version((1, 2, 0)),
    });
    assert_eq!(
        (r.reason(), r.trial),
        (Some(Reason::ConfirmOtherVersion), true)
    );
    let r = node.request(&UpdateRequest::Confirm {
        version: version((1, 1, 0)),
    });
    assert_eq!((r.answers, r.reason, r.trial), (Answers::Confirm, 0, false));
    // Delivered twice (QoS 1): still fine.
    assert_eq!(
        node.request(&UpdateRequest::Confirm {
            version: version((1, 1, 0)),
        })
        .reason,
        0
    );
    // Confirmed in flash: the next boot runs it without a trial.
    node.reset();
    assert_eq!(
        (node.running.slot, &node.running.kind),
        (Slot::B, &BootKind::Confirmed)
    );
    assert_eq!(node.malformed, 0);
}

#[test]
fn an_unconfirmed_trial_falls_back_after_the_policy_s_boots() {
    let image = new_image();
    let chunks = image.len().div_ceil(usize::from(MQTT_CHUNK)) as u32;
    let mut node = Node::factory();
    node.request(&offer(&image, MQTT_CHUNK));
    for i in 0..chunks {
        node.request(&chunk(&image, i, MQTT_CHUNK));
    }
    assert_eq!(node.request(&UpdateRequest::Finish).phase, Phase::Staged);
    // No confirm ever comes: every reset is one more attempt, until the bootloader reverts.
    for _ in 0..=POLICY.max_attempts {
        node.reset();
    }
    assert_eq!(node.running.slot, Slot::A);
    assert!(matches!(node.running.kind, BootKind::Reverted { .. }));
    let r = node.request(&UpdateRequest::Confirm {
        version: version((1, 1, 0)),
    });
    assert_eq!(
        (r.reason(), r.running, r.trial),
        (Some(Reason::ConfirmOtherVersion), version((1, 0, 0)), false)
    );
}

/// Offers `image` and sends all of it; the last report.
fn send_all(node: &mut Node, image: &[u8]) -> UpdateReport {
    let r = node.request(&offer(image, MQTT_CHUNK));
    if r.reason != 0 {
        return r;
    }
    for i in r.next_chunk..r.chunks {
        let r = node.request(&chunk(image, i, MQTT_CHUNK));
        assert_eq!(r.reason, 0);
    }
    node.request(&UpdateRequest::Finish)
}

/// After a refusal the factory image is intact and boots as the confirmed one.
fn factory_still_runs(node: &mut Node) {
    let factory = factory_image();
    assert_eq!(
        slot_bytes(node.session.flash_mut(), Slot::A, factory.len()),
        &factory[..]
    );
    node.reset();
    assert_eq!(
        (node.running.slot, &node.running.kind),
        (Slot::A, &BootKind::Confirmed)
    );
}

#[test]
fn a_tampered_image_is_refused_at_the_finish_with_its_reason() {
    let mut image = new_image();
    image[512 + 1234] ^= 0x20; // one bit of the payload, after signing
    let mut node = Node::factory();
    let r = send_all(&mut node, &image);
    assert_eq!(
        (r.answers, r.phase, r.reason()),
        (Answers::Finish, Phase::Failed, Some(Reason::DigestMismatch))
    );
    // A status request reads the same reason back.
    assert_eq!(
        node.request(&UpdateRequest::Status).reason(),
        Some(Reason::DigestMismatch)
    );
    factory_still_runs(&mut node);
}

#[test]
fn a_wrong_model_is_refused_at_the_offer() {
    let mut spec = ImageSpec::new((1, 1, 0), 2);
    spec.model = "TZ-CO2-09";
    let mut node = Node::factory();
    let r = send_all(&mut node, &spec.build());
    assert_eq!(
        (r.answers, r.phase, r.reason()),
        (Answers::Offer, Phase::Failed, Some(Reason::WrongHardware))
    );
    factory_still_runs(&mut node);
}

#[test]
fn a_lower_security_counter_is_refused_at_the_offer() {
    // The factory image has counter 1; this one has 0: a rollback.
    let image = ImageSpec::new((1, 1, 0), 0).build();
    let mut node = Node::factory();
    let r = send_all(&mut node, &image);
    assert_eq!(
        (r.answers, r.phase, r.reason()),
        (
            Answers::Offer,
            Phase::Failed,
            Some(Reason::SecurityCounterTooLow)
        )
    );
    factory_still_runs(&mut node);
}

#[test]
fn a_malformed_payload_changes_nothing_and_is_answered() {
    let image = new_image();
    let mut node = Node::factory();
    node.request(&offer(&image, MQTT_CHUNK));
    node.request(&chunk(&image, 0, MQTT_CHUNK));
    // Truncated chunk, unknown tag, trailing bytes after a finish, nothing at all.
    let mut buf = [0u8; MAX_REQUEST_LEN];
    let whole = chunk(&image, 1, MQTT_CHUNK).encode(&mut buf).unwrap().len();
    let truncated = buf[..whole - 10].to_vec();
    for payload in [&truncated[..], &[7u8][..], &[2, 0][..], &[][..]] {
        let r = node.payload(payload);
        assert_eq!(
            (r.answers, r.phase, r.next_chunk, r.reason()),
            (
                Answers::Malformed,
                Phase::Receiving,
                1,
                Some(Reason::MalformedRequest)
            )
        );
    }
    assert_eq!(node.malformed, 4);
    // The transfer goes on where it was.
    assert_eq!(node.request(&chunk(&image, 1, MQTT_CHUNK)).next_chunk, 2);
}

#[test]
fn a_chunk_size_the_flash_cannot_take_is_refused() {
    // 2048 does not divide the 1 KiB erase sector of this flash.
    let mut node = Node::factory();
    let r = node.request(&offer(&new_image(), 2048));
    assert_eq!(
        (r.phase, r.reason()),
        (Phase::Failed, Some(Reason::BadChunkSize))
    );
}
