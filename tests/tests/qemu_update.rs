//! A firmware update over the board's own Modbus RTU line, under QEMU: the gateway's real
//! flash code (`tianzhong_gateway::flash::flash_rtu`, what `tianzhong flash` runs over RTU)
//! sends a small signed image to the QEMU variant of the STM32F405 application, booted
//! through its bootloader from slot A. The node takes it with the firmware crate's receiver on
//! the Cortex-M4: offer, chunks with their CRC-32C, the broadcast stream, resume, and the
//! finish's SHA-256 and ed25519 checks, then resets into the bootloader after its reply.
//!
//! QEMU models the flash as ROM, so the QEMU application receives into RAM windows over it
//! (the board crate's `update::RamWindows`, 1 KiB for the slot): the image here is small, and
//! the reset clears what was received, so the bootloader boots slot A again. That the node
//! staged the image is its answer to the finish (the files acknowledge a finish only once the
//! image is checked and staged); that it then reset is the bootloader's line on the serial port.
//!
//! Needs `qemu-system-arm`, `arm-none-eabi-objcopy` and the `thumbv7em-none-eabihf` target.

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use tianzhong_gateway::firmware_cli::{self, KeyKind, SignRequest};
use tianzhong_gateway::flash::{FlashError, RtuMode, flash_rtu};
use tianzhong_gateway::rtu_master::{RtuError, RtuMaster, SerialLine};
use tianzhong_protocol::registers::profile::FirmwareVersion;
use tianzhong_tests::qemu::{self, HEADER_LEN, MODEL, READY, read_until, test_key};

const V1_0_0: FirmwareVersion = FirmwareVersion {
    major: 1,
    minor: 0,
    patch: 0,
};
const V1_1_0: FirmwareVersion = FirmwareVersion {
    major: 1,
    minor: 1,
    patch: 0,
};

/// The QEMU line's nominal rate (the board's `qemu::BAUD`).
const BAUD: u32 = 115_200;

/// Silence between frames: the QEMU node ends a frame after 32 ms of silence (the t3.5 of
/// 1200 baud, so host scheduling gaps do not split one), so back-to-back broadcast writes
/// need more than that between them.
const QEMU_GAP: Duration = Duration::from_millis(50);

/// A 256-byte payload signed for `model` as 1.1.0 with the TEST key the QEMU build trusts:
/// 916 bytes, 8 chunks of 128, inside the QEMU node's 1 KiB slot window.
fn small_image(model: &str) -> Vec<u8> {
    let payload: Vec<u8> = (0..256u32).map(|i| (i * 7 + 3) as u8).collect();
    let secret = firmware_cli::read_key(KeyKind::Private, &test_key()).expect("the TEST key");
    let request = SignRequest {
        model: model.into(),
        revision: 1,
        version: V1_1_0,
        security_counter: 1,
        header_len: HEADER_LEN,
    };
    firmware_cli::sign(&request, &payload, &secret).expect("sign")
}

#[tokio::test]
async fn qemu_node_receives_checks_and_stages_an_image_over_its_rtu_line() {
    let flash = tokio::task::spawn_blocking(|| qemu::factory_flash(V1_0_0))
        .await
        .unwrap();
    let image = small_image(MODEL);
    let wrong_model = small_image("TZ-NODE-F4");
    let (_qemu, mut stream, _) = qemu::boot_to_ready(&flash).await;

    let mut master = RtuMaster::new(
        SerialLine::new(&mut stream, BAUD),
        1,
        BAUD,
        Duration::from_secs(5),
    );
    master.t3_5 = QEMU_GAP;
    master.turnaround = QEMU_GAP;

    // An image for other hardware is refused at the offer, with its reason, before anything
    // is erased.
    let refused = flash_rtu(&mut master, &wrong_model, RtuMode::Plain, |_| {
        ControlFlow::Continue(())
    })
    .await;
    match refused {
        Err(FlashError::Refused { step, code }) => {
            assert_eq!(step, "offer");
            assert_eq!(code, 1, "wrong hardware model or revision");
        }
        other => panic!("a wrong-model image must be refused at the offer: {other:?}"),
    }

    // Chunk by chunk, stopped after 3 chunks: the node keeps what it has.
    let stopped = flash_rtu(&mut master, &image, RtuMode::Plain, |p| {
        if p.done >= 3 * 128 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })
    .await;
    let Err(FlashError::Cancelled { next_chunk }) = stopped else {
        panic!("the first run stops itself: {stopped:?}");
    };
    assert_eq!(next_chunk, 3);

    // A chunk damaged on the way is refused with its reason, and the transfer goes on.
    let bytes = &image[3 * 128..4 * 128];
    let mut regs: Vec<u16> = bytes
        .chunks(2)
        .map(|p| u16::from_be_bytes([p[0], p[1]]))
        .collect();
    let crc = tianzhong_protocol::crc::FRAME.checksum(bytes) ^ 1;
    regs.extend([(crc >> 16) as u16, crc as u16]);
    let damaged = master.write_file(0xF001, 3, &regs).await;
    assert!(
        matches!(damaged, Err(RtuError::Exception(3))),
        "{damaged:?}"
    );
    let status = master.read_file(0xF003, 0, 8).await.expect("status");
    assert_eq!(status[0], 1, "still receiving");
    assert_eq!(status[5], 15, "chunk CRC mismatch");
    assert_eq!((status[1], status[2]), (0, 3), "chunk 3 wanted next");

    // Offered again, the transfer resumes at chunk 3; the rest goes as a broadcast stream, and
    // the finish checks the image's size, SHA-256, key, signature, hardware and counter.
    let started = Instant::now();
    let report = flash_rtu(&mut master, &image, RtuMode::default(), |_| {
        ControlFlow::Continue(())
    })
    .await
    .expect("the node takes, checks and stages the image");
    let took = started.elapsed();
    assert_eq!(report.resumed_at, 3);
    assert_eq!(report.chunks, 8);
    assert!(report.stream_writes > 0, "streamed: {report:?}");
    assert!(!report.fell_back, "{report:?}");
    eprintln!(
        "resumed transfer of {} bytes (chunks 3..8) and finish: {took:?}; {report:?}",
        image.len()
    );

    // The finish was answered, then the node reset: the bootloader speaks, the RAM the image
    // was received into is gone, so it boots the confirmed image in slot A again.
    let text = read_until(&mut stream, READY, Duration::from_secs(30))
        .await
        .unwrap_or_else(|t| panic!("the node did not come back after staging: {t:?}"));
    assert!(
        text.contains("TIANZHONG BOOT slot A confirmed version 1.0.0"),
        "{text:?}"
    );
}
