//! Images a node must refuse: each is refused with its own reason, the old image stays
//! untouched and is still the one the bootloader chooses.

mod update_support;

use tianzhong_firmware::update::{BootKind, Slot, UpdateError};
use tianzhong_protocol::image::signature::SignatureRefusal;
use tianzhong_protocol::image::{Refusal, signature};
use update_support::*;

/// After a refusal: slot A holds the factory image byte for byte, and the node boots it as
/// the confirmed image.
fn old_firmware_still_runs(f: &mut Flash) {
    let factory = factory_image();
    assert_eq!(slot_bytes(f, Slot::A, factory.len()), &factory[..]);
    let d = reboot(f).unwrap();
    assert_eq!((d.slot, d.kind), (Slot::A, BootKind::Confirmed));
    assert_eq!(d.header.version.to_string(), "1.0.0");
    assert_eq!(d.state.trial, None);
}

#[test]
fn tampered_image_refused_as_altered() {
    let mut f = factory_flash();
    let mut image = new_image();
    image[512 + 1234] ^= 0x20; // one bit of the payload, after signing
    let mut rx = receiver();
    let err = Sender::new(&image).run(&mut rx, &mut f).unwrap_err();
    assert!(
        matches!(err, UpdateError::Refused(Refusal::DigestMismatch { .. })),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "image refused: SHA-256 of header and payload differs from the trailer's: the image was altered or damaged"
    );
    old_firmware_still_runs(&mut f);
}

#[test]
fn wrong_key_refused() {
    let mut f = factory_flash();
    let mut spec = ImageSpec::new((1, 1, 0), 2);
    spec.signer = OTHER_SIGNER;
    let image = spec.build();
    let mut rx = receiver();
    let err = Sender::new(&image).run(&mut rx, &mut f).unwrap_err();
    assert_eq!(err, UpdateError::Refused(Refusal::UnknownKey));
    assert_eq!(
        err.to_string(),
        "image refused: signed with a key this node does not trust"
    );
    old_firmware_still_runs(&mut f);
}

#[test]
fn wrong_key_posing_as_the_right_one_refused_by_signature() {
    // Signed by another key, but the trailer claims the node's key hash.
    let mut f = factory_flash();
    let mut spec = ImageSpec::new((1, 1, 0), 2);
    spec.signer = OTHER_SIGNER;
    let mut image = spec.build();
    let key_hash_at = image.len() - 148 + 12;
    let node_key_hash = signature::key_hash(&signature::public_key(&SIGNER));
    image[key_hash_at..key_hash_at + 32].copy_from_slice(&node_key_hash);
    let mut rx = receiver();
    let err = Sender::new(&image).run(&mut rx, &mut f).unwrap_err();
    assert_eq!(
        err,
        UpdateError::Refused(Refusal::Signature(SignatureRefusal::Invalid))
    );
    old_firmware_still_runs(&mut f);
}

#[test]
fn wrong_hardware_model_refused_before_any_flash_operation() {
    let mut f = factory_flash();
    let mut spec = ImageSpec::new((1, 1, 0), 2);
    spec.model = "TZ-WATER-01";
    let image = spec.build();
    let mut rx = receiver();
    let before = f.operations;
    let err = Sender::new(&image).offer(&mut rx, &mut f).unwrap_err();
    assert!(matches!(
        err,
        UpdateError::Refused(Refusal::WrongHardware { .. })
    ));
    assert_eq!(
        err.to_string(),
        "image refused: wrong hardware: the image is built for TZ-WATER-01 rev 2, this node is TZ-GAS-01 rev 2"
    );
    assert_eq!(f.operations, before, "nothing written or erased");
    old_firmware_still_runs(&mut f);

    // Same model, other hardware revision.
    let mut spec = ImageSpec::new((1, 1, 0), 2);
    spec.revision = 3;
    let image = spec.build();
    let err = Sender::new(&image).offer(&mut rx, &mut f).unwrap_err();
    assert!(matches!(
        err,
        UpdateError::Refused(Refusal::WrongHardware { .. })
    ));
    old_firmware_still_runs(&mut f);
}

#[test]
fn lower_security_counter_refused() {
    // The node runs 1.0.0 with counter 1; it is updated to 1.1.0 with counter 2 and confirmed.
    let mut f = factory_flash();
    let new = new_image();
    let mut rx = receiver();
    Sender::new(&new).run(&mut rx, &mut f).unwrap();
    let d = reboot(&mut f).unwrap();
    assert_eq!((d.slot, d.kind), (Slot::B, BootKind::Trial { attempt: 1 }));
    let mut state = d.state;
    state
        .confirm(&mut *f, &update_support::LAYOUT, Slot::B)
        .unwrap();
    // Now 1.0.1 with the old counter 1 (a newer version number, but without the fix).
    let older = ImageSpec::new((1, 0, 1), 1).build();
    let before = f.operations;
    let err = Sender::new(&older).offer(&mut rx, &mut f).unwrap_err();
    assert_eq!(
        err,
        UpdateError::Refused(Refusal::SecurityCounterTooLow {
            current: 2,
            offered: 1
        })
    );
    assert_eq!(
        err.to_string(),
        "image refused: security counter 1 is lower than the running image's 2 (rollback refused)"
    );
    assert_eq!(f.operations, before, "nothing written or erased");
    let d = reboot(&mut f).unwrap();
    assert_eq!((d.slot, d.kind), (Slot::B, BootKind::Confirmed));
    assert_eq!(slot_bytes(&f, Slot::B, new.len()), &new[..]);
    // The same counter is accepted (a version with no security change).
    let same = ImageSpec::new((1, 2, 0), 2).build();
    Sender::new(&same).run(&mut rx, &mut f).unwrap();
}

#[test]
fn header_swapped_after_the_offer_refused() {
    // The offer shows an acceptable header; the chunks carry another one.
    let mut f = factory_flash();
    let good = new_image();
    let other = ImageSpec::new((1, 1, 1), 2).build();
    let mut rx = receiver();
    let sender = Sender::new(&good);
    let accepted = sender.offer(&mut rx, &mut f).unwrap();
    let mut swapped = Sender::new(&other);
    swapped
        .send_from(&mut rx, &mut f, accepted.next_chunk)
        .unwrap();
    assert_eq!(rx.finish(&mut *f), Err(UpdateError::HeaderMismatch));
    old_firmware_still_runs(&mut f);
}

#[test]
fn malformed_chunks_refused_with_reason() {
    let mut f = factory_flash();
    let image = new_image();
    let mut rx = receiver();
    let sender = Sender::new(&image);
    assert_eq!(
        rx.chunk(&mut *f, 0, &image[..256], 0),
        Err(UpdateError::NoTransfer)
    );
    sender.offer(&mut rx, &mut f).unwrap();
    let (bytes, crc) = sender.chunk(0);
    let before = f.operations;
    let err = rx.chunk(&mut *f, 0, bytes, crc ^ 1).unwrap_err();
    assert!(matches!(err, UpdateError::ChunkCrc { index: 0, .. }));
    assert_eq!(
        rx.chunk(&mut *f, 3, sender.chunk(3).0, sender.chunk(3).1),
        Err(UpdateError::OutOfOrder {
            expected: 0,
            got: 3
        })
    );
    assert_eq!(
        rx.chunk(&mut *f, 0, &bytes[..100], crc),
        Err(UpdateError::ChunkLength {
            index: 0,
            expected: 256,
            got: 100
        })
    );
    assert_eq!(
        rx.chunk(&mut *f, 99, bytes, crc),
        Err(UpdateError::NoSuchChunk {
            index: 99,
            chunks: sender.chunks()
        })
    );
    assert_eq!(f.operations, before, "nothing written for a refused chunk");
    assert_eq!(
        rx.finish(&mut *f),
        Err(UpdateError::Incomplete {
            written: 0,
            chunks: sender.chunks()
        })
    );
    for bad in [0u16, 8, 100, 2048] {
        assert_eq!(
            rx.offer(&mut *f, &sender.header(), &sender.digest(), bad),
            Err(UpdateError::BadChunkSize { size: bad })
        );
    }
    let mut garbage = sender.header();
    garbage[0] = 0;
    assert!(matches!(
        rx.offer(&mut *f, &garbage, &sender.digest(), CHUNK),
        Err(UpdateError::Header(_))
    ));
    old_firmware_still_runs(&mut f);
}

#[test]
fn too_large_for_the_slot_refused() {
    let mut f = factory_flash();
    let mut spec = ImageSpec::new((1, 1, 0), 2);
    spec.payload_len = 8 * 1024; // with header and trailer, past the 8 KiB slot
    let image = spec.build();
    let err = Sender::new(&image)
        .offer(&mut receiver(), &mut f)
        .unwrap_err();
    assert_eq!(
        err,
        UpdateError::Refused(Refusal::TooLarge {
            size: 8 * 1024 + 512 + 148,
            capacity: 8 * 1024
        })
    );
    old_firmware_still_runs(&mut f);
}
