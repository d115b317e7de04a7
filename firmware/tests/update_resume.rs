//! A transfer resumes after the link is cut mid-image, without restarting from zero: in the
//! same power cycle (the receiver remembers), after a reset (the transfer sector remembers),
//! and when the acknowledgement of a chunk was lost.

mod update_support;

use tianzhong_firmware::update::{BootKind, Slot};
use update_support::*;

#[test]
fn link_cut_mid_image_resumes_where_it_stopped() {
    let mut f = factory_flash();
    let image = new_image();
    let mut rx = receiver();
    let mut sender = Sender::new(&image);
    let chunks = sender.chunks();
    let accepted = sender.offer(&mut rx, &mut f).unwrap();
    assert_eq!((accepted.slot, accepted.next_chunk), (Slot::B, 0));
    // The link drops after 11 chunks.
    for i in 0..11 {
        let (b, c) = sender.chunk(i);
        sender.sent += 1;
        rx.chunk(&mut *f, i, b, c).unwrap();
    }
    // The gateway reconnects and offers the same image again.
    let accepted = sender.offer(&mut rx, &mut f).unwrap();
    assert_eq!(accepted.next_chunk, 11);
    sender.send_from(&mut rx, &mut f, 11).unwrap();
    rx.finish(&mut *f).unwrap();
    println!(
        "link cut after 11 of {chunks} chunks: {} chunks sent in all, {} re-sent",
        sender.sent,
        sender.sent - chunks
    );
    assert_eq!(sender.sent, chunks, "no chunk re-sent");
    let d = reboot(&mut f).unwrap();
    assert_eq!((d.slot, d.kind), (Slot::B, BootKind::Trial { attempt: 1 }));
}

#[test]
fn node_reset_mid_image_resumes_from_the_transfer_sector() {
    let mut f = factory_flash();
    let image = new_image();
    let mut sender = Sender::new(&image);
    let chunks = sender.chunks();
    {
        let mut rx = receiver();
        sender.offer(&mut rx, &mut f).unwrap();
        for i in 0..13 {
            let (b, c) = sender.chunk(i);
            sender.sent += 1;
            rx.chunk(&mut *f, i, b, c).unwrap();
        }
    } // the receiver is gone: the node reset
    let d = reboot(&mut f).unwrap();
    assert_eq!((d.slot, d.kind), (Slot::A, BootKind::Confirmed));
    let mut rx = receiver();
    let accepted = sender.offer(&mut rx, &mut f).unwrap();
    assert_eq!(accepted.next_chunk, 13);
    sender.send_from(&mut rx, &mut f, 13).unwrap();
    rx.finish(&mut *f).unwrap();
    assert_eq!(sender.sent, chunks, "no chunk re-sent");
}

#[test]
fn lost_acknowledgement_repeats_without_rewriting() {
    let mut f = factory_flash();
    let image = new_image();
    let mut rx = receiver();
    let sender = Sender::new(&image);
    sender.offer(&mut rx, &mut f).unwrap();
    for i in 0..6 {
        let (b, c) = sender.chunk(i);
        rx.chunk(&mut *f, i, b, c).unwrap();
    }
    // The ack of chunk 5 was lost; the gateway sends it again.
    let ops = f.operations;
    let (b, c) = sender.chunk(5);
    let ack = rx.chunk(&mut *f, 5, b, c).unwrap();
    assert!(ack.repeat);
    assert_eq!(ack.next_chunk, 6);
    assert_eq!(f.operations, ops, "a repeated chunk is not written again");
}

#[test]
fn another_image_offered_mid_transfer_starts_over() {
    let mut f = factory_flash();
    let first = new_image();
    let second = ImageSpec::new((1, 2, 0), 2).build();
    let mut rx = receiver();
    let s1 = Sender::new(&first);
    s1.offer(&mut rx, &mut f).unwrap();
    for i in 0..7 {
        let (b, c) = s1.chunk(i);
        rx.chunk(&mut *f, i, b, c).unwrap();
    }
    let mut s2 = Sender::new(&second);
    let accepted = s2.offer(&mut rx, &mut f).unwrap();
    assert_eq!(accepted.next_chunk, 0);
    s2.send_from(&mut rx, &mut f, 0).unwrap();
    let staged = rx.finish(&mut *f).unwrap();
    assert_eq!(staged.version.to_string(), "1.2.0");
    assert_eq!(slot_bytes(&f, Slot::B, second.len()), &second[..]);
    // And a staged (not yet booted) image can be replaced the same way.
    let third = ImageSpec::new((1, 3, 0), 2).build();
    Sender::new(&third).run(&mut rx, &mut f).unwrap();
    let d = reboot(&mut f).unwrap();
    assert_eq!(d.header.version.to_string(), "1.3.0");
}
