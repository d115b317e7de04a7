//! The power-cut drill, as MCUboot's simulator runs it: an update is replayed with the power
//! cut at every single flash write and erase in turn. After each cut the node "reboots" (the
//! bootloader's decision over the flash as the cut left it) and must boot a whole, signed
//! image, the old or the new one, byte for byte; then the update is taken up again and must
//! complete, with the transfer resuming instead of starting over.

mod update_support;

use tianzhong_firmware::update::boot::RevertReason;
use tianzhong_firmware::update::{BootKind, Slot, UpdateError};
use update_support::*;

/// The node's whole update life, from the factory state: receive and stage the new image,
/// boot it on trial, confirm it. Stops at the first error (the power cut).
fn update_life(f: &mut Flash, acked: &mut u32) -> Result<(), String> {
    let image = new_image();
    let mut rx = receiver();
    let sender = Sender::new(&image);
    let accepted = sender.offer(&mut rx, f).map_err(|e| e.to_string())?;
    let mut next = accepted.next_chunk;
    while next < sender.chunks() {
        let (bytes, crc) = sender.chunk(next);
        next = rx
            .chunk(f, next, bytes, crc)
            .map_err(|e| e.to_string())?
            .next_chunk;
        *acked = next;
    }
    rx.finish(f).map_err(|e| e.to_string())?;
    let d = boot_now(f).map_err(|e| e.to_string())?;
    let mut state = d.state;
    state
        .confirm(f, &LAYOUT, d.slot)
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// Which image a slot holds, compared byte for byte with the images built independently.
fn which_image(f: &Flash, slot: Slot) -> &'static str {
    let (old, new) = (factory_image(), new_image());
    if slot_bytes(f, slot, old.len()) == &old[..] {
        "old"
    } else if slot_bytes(f, slot, new.len()) == &new[..] {
        "new"
    } else {
        "neither"
    }
}

#[test]
fn power_cut_at_every_flash_operation() {
    // A clean run first, to count the operations to drill.
    let mut clean = factory_flash();
    update_life(&mut clean, &mut 0).unwrap();
    let total = clean.operations;
    let chunks = Sender::new(&new_image()).chunks();
    assert!(total > u64::from(2 * chunks), "{total} operations");
    let d = reboot(&mut clean).unwrap();
    assert_eq!((d.slot, d.kind), (Slot::B, BootKind::Confirmed));

    let chunks_per_sector = 1024 / u32::from(CHUNK);
    let (mut booted_old, mut booted_new, mut resent_total, mut rewinds) = (0, 0, 0u32, 0);
    for k in 1..=total {
        let mut f = factory_flash();
        f.cut_at(k);
        let mut acked = 0;
        let outcome = update_life(&mut f, &mut acked);
        assert!(outcome.is_err(), "cut {k}: the life ran to its end");
        assert!(
            f.power_failed(),
            "cut {k}: failed without a cut: {outcome:?}"
        );

        // Reboot on the flash as the cut left it.
        let d = reboot(&mut f).unwrap_or_else(|e| panic!("cut {k}: no bootable image: {e}"));
        match which_image(&f, d.slot) {
            "old" => booted_old += 1,
            "new" => booted_new += 1,
            _ => panic!("cut {k}: booted slot {} holds neither image", d.slot),
        }
        assert_eq!(f.overwrites, 0, "cut {k}: a write onto unerased flash");

        // Take the update up again until the new image is confirmed.
        let image = new_image();
        let mut rx = receiver();
        let mut sender = Sender::new(&image);
        let mut decision = d;
        for _ in 0..4 {
            match decision.kind {
                BootKind::Confirmed if decision.slot == Slot::B => break,
                BootKind::Trial { .. } => {
                    let mut state = decision.state;
                    state.confirm(&mut *f, &LAYOUT, decision.slot).unwrap();
                }
                _ => {
                    let accepted = sender
                        .offer(&mut rx, &mut f)
                        .unwrap_or_else(|e| panic!("cut {k}: offer after reboot: {e}"));
                    if acked > 0 {
                        // Resumed, not restarted: at worst from the start of the sector the
                        // cut chunk lies in.
                        let floor = acked - acked % chunks_per_sector;
                        assert!(
                            accepted.next_chunk >= floor.min(acked),
                            "cut {k}: {acked} chunks acknowledged, resumed at {}",
                            accepted.next_chunk
                        );
                        if accepted.next_chunk < acked {
                            rewinds += 1;
                        }
                    }
                    resent_total += acked.saturating_sub(accepted.next_chunk);
                    sender
                        .send_from(&mut rx, &mut f, accepted.next_chunk)
                        .unwrap_or_else(|(i, e)| panic!("cut {k}: chunk {i}: {e}"));
                    rx.finish(&mut *f)
                        .unwrap_or_else(|e| panic!("cut {k}: finish after resume: {e}"));
                }
            }
            decision = reboot(&mut f).unwrap_or_else(|e| panic!("cut {k}: {e}"));
            assert_ne!(which_image(&f, decision.slot), "neither", "cut {k}");
        }
        assert_eq!(
            (decision.slot, &decision.kind),
            (Slot::B, &BootKind::Confirmed),
            "cut {k}: the update did not complete"
        );
        assert_eq!(which_image(&f, Slot::B), "new", "cut {k}");
        assert_eq!(f.overwrites, 0, "cut {k}: a write onto unerased flash");
    }
    println!(
        "power-cut drill: {total} flash operations in one update (image of {chunks} chunks), \
         {total} cuts drilled; first boot after the cut ran the old image {booted_old} times \
         and the new one {booted_new} times; every update completed after the cut; {rewinds} \
         resumes rewound to a sector start, {resent_total} chunks re-sent in all"
    );
    assert_eq!(booted_old + booted_new, total);
    assert!(booted_old > 0 && booted_new > 0);
}

/// A trial image that never gets confirmed is booted `max_attempts` times, then the node goes
/// back to the confirmed image for good; with the power cut during any of those boots' records
/// as well.
#[test]
fn unconfirmed_trial_reverts_after_max_attempts() {
    let mut f = factory_flash();
    Sender::new(&new_image())
        .run(&mut receiver(), &mut f)
        .unwrap();
    for attempt in 1..=POLICY.max_attempts {
        let d = reboot(&mut f).unwrap();
        assert_eq!((d.slot, d.kind), (Slot::B, BootKind::Trial { attempt }));
    }
    for _ in 0..3 {
        let d = reboot(&mut f).unwrap();
        assert_eq!(d.slot, Slot::A);
        assert_eq!(
            d.kind,
            BootKind::Reverted {
                why: RevertReason::NotConfirmed {
                    attempts: POLICY.max_attempts
                }
            }
        );
        assert_eq!(which_image(&f, Slot::A), "old");
    }
    // A cut during an attempt record: the attempt is not counted, the boot is still valid.
    let mut f = factory_flash();
    Sender::new(&new_image())
        .run(&mut receiver(), &mut f)
        .unwrap();
    f.cut_at(1);
    assert!(boot_now(&mut f).is_err());
    let d = reboot(&mut f).unwrap();
    assert_eq!((d.slot, d.kind), (Slot::B, BootKind::Trial { attempt: 1 }));
    // And the receiver will not overwrite the slot of an image on trial.
    let again = ImageSpec::new((1, 2, 0), 2).build();
    assert_eq!(
        Sender::new(&again).offer(&mut receiver(), &mut f),
        Err(UpdateError::TrialPending { slot: Slot::B })
    );
}

/// Many updates back and forth fill the boot-state sector, which is compacted into the other
/// one; a power cut at every operation of the update that compacts it still leaves a bootable
/// node whose state is what the records said.
#[test]
fn boot_state_compaction_survives_power_cuts() {
    let images: Vec<Vec<u8>> = (0..40u8)
        .map(|i| ImageSpec::new((1, 1 + i, 0), 2).build())
        .collect();
    // Run updates until one of them compacts (the generation goes up).
    let mut f = factory_flash();
    let mut generation = 0;
    let mut compacting = None;
    for (i, image) in images.iter().enumerate() {
        let before = f.clone();
        Sender::new(image).run(&mut receiver(), &mut f).unwrap();
        let d = reboot(&mut f).unwrap();
        let mut state = d.state;
        state.confirm(&mut *f, &LAYOUT, d.slot).unwrap();
        let d = reboot(&mut f).unwrap();
        assert_eq!(d.kind, BootKind::Confirmed);
        assert_eq!(d.header.version.minor, 1 + i as u8);
        if d.state.generation > generation && generation > 0 {
            compacting = Some((before, i));
            break;
        }
        generation = d.state.generation;
    }
    let (before, i) = compacting.expect("no compaction in 40 updates");
    let image = &images[i];
    // Drill that update.
    let mut clean = before.clone();
    let start = clean.operations;
    update_cycle(&mut clean, image).unwrap();
    let total = clean.operations - start;
    for k in 1..=total {
        let mut f = before.clone();
        f.cut_at(k);
        assert!(update_cycle(&mut f, image).is_err());
        let d = reboot(&mut f).unwrap_or_else(|e| panic!("cut {k}: {e}"));
        let running = slot_bytes(&f, d.slot, image.len()) == &image[..];
        let previous = &images[i - 1];
        let was = slot_bytes(&f, d.slot, previous.len()) == &previous[..];
        assert!(running || was, "cut {k}: booted an image that is neither");
    }
    println!("compaction drill: update {i} compacts the boot state; {total} cuts drilled");
}

fn update_cycle(f: &mut Flash, image: &[u8]) -> Result<(), String> {
    Sender::new(image)
        .run(&mut receiver(), f)
        .map_err(|e| e.to_string())?;
    let d = boot_now(f).map_err(|e| e.to_string())?;
    let mut state = d.state;
    state.confirm(f, &LAYOUT, d.slot).map_err(|e| e.to_string())
}
