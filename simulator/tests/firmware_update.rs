//! A virtual node takes a firmware update over Modbus file records with the firmware's real
//! receiver on simulated flash, resets into the new image, reports the new version in its
//! identity block and confirms it on the gateway's next poll; with the power cut at every
//! flash write and erase of the transfer in turn, it always comes back on a whole signed
//! image and the update then completes.

use std::path::Path;

use tianzhong_firmware::modbus::pdu::Handled;
use tianzhong_firmware::update::BootKind;
use tianzhong_firmware::update::modbus_files::{
    CHUNK_FILE, FINISH_FILE, FINISH_MAGIC, OFFER_FILE, STATUS_FILE, phase,
};
use tianzhong_protocol::crc::FRAME as CRC32C;
use tianzhong_protocol::image::ImageFile;
use tianzhong_protocol::registers::profile::FirmwareVersion;
use tianzhong_protocol::{NodeId, Quantity, SiteId};
use tianzhong_simulator::node::{ChannelSpec, NodeSpec, VirtualNode};
use tianzhong_simulator::signal::Component;
use tianzhong_simulator::update::sim_image;

const MODEL: &str = "TZ-SIM-GAS";
const CHUNK: usize = 128;

fn node() -> VirtualNode {
    let spec = NodeSpec {
        id: NodeId::new("gas-1").unwrap(),
        site: SiteId::new("plant").unwrap(),
        bus: "line-1".into(),
        unit: 5,
        model: MODEL.into(),
        channels: vec![ChannelSpec {
            quantity: Quantity::CombustibleGas,
            signal: vec![Component::Constant { value: 3.0 }],
            clamp: None,
            sensor: None,
        }],
    };
    VirtualNode::new(&spec, 1, Path::new(".")).unwrap()
}

fn v(major: u8, minor: u8, patch: u16) -> FirmwareVersion {
    FirmwareVersion {
        major,
        minor,
        patch,
    }
}

/// Sends a PDU; the response PDU, or the exception code.
fn call(n: &mut VirtualNode, pdu: &[u8]) -> Result<Vec<u8>, u8> {
    let mut out = [0u8; 253];
    match n.modbus(pdu, &mut out, 0) {
        Handled::Response(len) => Ok(out[..len].to_vec()),
        Handled::Exception(e) => Err(e as u8),
        Handled::NoRoom => panic!("no room"),
    }
}

fn write_file(n: &mut VirtualNode, file: u16, record: u16, regs: &[u16]) -> Result<(), u8> {
    let mut pdu = vec![0x15, (7 + 2 * regs.len()) as u8, 0x06];
    for x in [file, record, regs.len() as u16].iter().chain(regs) {
        pdu.extend_from_slice(&x.to_be_bytes());
    }
    call(n, &pdu).map(|r| assert_eq!(r, pdu))
}

fn status(n: &mut VirtualNode) -> [u16; 8] {
    let mut pdu = vec![0x14, 0x07, 0x06];
    for x in [STATUS_FILE, 0, 8] {
        pdu.extend_from_slice(&x.to_be_bytes());
    }
    let r = call(n, &pdu).unwrap();
    std::array::from_fn(|i| u16::from_be_bytes([r[4 + 2 * i], r[5 + 2 * i]]))
}

/// The firmware version in the node profile's identity block (input registers 0x1A, 0x1B).
fn reported_version(n: &mut VirtualNode) -> FirmwareVersion {
    let r = call(n, &[0x04, 0x00, 0x1A, 0x00, 0x02]).unwrap();
    v(r[2], r[3], u16::from_be_bytes([r[4], r[5]]))
}

fn regs(bytes: &[u8]) -> Vec<u16> {
    bytes
        .chunks(2)
        .map(|p| u16::from_be_bytes([p[0], *p.get(1).unwrap_or(&0xFF)]))
        .collect()
}

/// Offer (resuming where the node says), chunks, finish; stops at the first refusal.
fn update(n: &mut VirtualNode, image: &[u8]) -> Result<u32, u8> {
    let mut offer = regs(&image[..64]);
    offer.extend(regs(&ImageFile::parse(image).unwrap().trailer.digest));
    offer.push(CHUNK as u16);
    write_file(n, OFFER_FILE, 0, &offer)?;
    let s = status(n);
    let mut next = (u32::from(s[1]) << 16) | u32::from(s[2]);
    let chunks = image.len().div_ceil(CHUNK) as u32;
    let mut sent = 0;
    while next < chunks {
        let bytes = &image[next as usize * CHUNK..(next as usize * CHUNK + CHUNK).min(image.len())];
        let crc = CRC32C.checksum(bytes);
        let mut data = regs(bytes);
        data.extend([(crc >> 16) as u16, crc as u16]);
        write_file(n, CHUNK_FILE, next as u16, &data)?;
        sent += 1;
        next += 1;
    }
    write_file(n, FINISH_FILE, 0, &[FINISH_MAGIC])?;
    Ok(sent)
}

#[test]
fn update_reboot_report_new_version_confirm() {
    let mut n = node();
    assert_eq!(reported_version(&mut n), v(1, 0, 0));
    let image = sim_image(MODEL, v(1, 1, 0), 2, 4000);
    let sent = update(&mut n, &image).unwrap();
    assert_eq!(sent as usize, image.len().div_ceil(CHUNK));
    // Staged, so the node reset into the new image, on trial.
    assert_eq!(n.firmware_update().version(), v(1, 1, 0));
    assert_eq!(
        n.firmware_update().running.kind,
        BootKind::Trial { attempt: 1 }
    );
    // The gateway's health poll reads the identity block: the new version, and the read
    // confirms the image.
    assert_eq!(reported_version(&mut n), v(1, 1, 0));
    assert_eq!(n.firmware_update().running.kind, BootKind::Confirmed);
    // A reset later still boots it, confirmed.
    let d = n.firmware_update().reset().clone();
    assert_eq!(
        (d.kind, d.header.version),
        (BootKind::Confirmed, v(1, 1, 0))
    );
}

#[test]
fn wrong_model_refused_and_reported() {
    let mut n = node();
    let image = sim_image("TZ-SIM-WATER", v(1, 1, 0), 2, 1000);
    assert_eq!(update(&mut n, &image), Err(0x03));
    let s = status(&mut n);
    assert_eq!((s[0], s[5]), (phase::FAILED, 1));
    assert_eq!(reported_version(&mut n), v(1, 0, 0));
}

#[test]
fn power_cut_at_every_flash_operation_of_the_transfer() {
    let image = sim_image(MODEL, v(1, 1, 0), 2, 4000);
    let mut clean = node();
    let before = clean.firmware_update().flash().operations;
    update(&mut clean, &image).unwrap();
    // The transfer's operations, without the boot attempt recorded by the reset after it.
    let total = clean.firmware_update().flash().operations - before - 1;
    let (mut old, mut new) = (0, 0);
    for k in 1..=total {
        let mut n = node();
        n.firmware_update().cut_power_at(k);
        let first = update(&mut n, &image);
        assert!(first.is_err(), "cut {k}: the update ran through");
        // The node reset on the cut: it runs a whole signed image, and says which.
        let running = n.firmware_update().version();
        assert_eq!(reported_version(&mut n), running, "cut {k}");
        match running.minor {
            0 => old += 1,
            1 => new += 1,
            _ => panic!("cut {k}: runs {running}"),
        }
        if running == v(1, 0, 0) {
            update(&mut n, &image).unwrap_or_else(|e| panic!("cut {k}: resume refused: {e}"));
        }
        assert_eq!(reported_version(&mut n), v(1, 1, 0), "cut {k}");
        assert_eq!(
            n.firmware_update().running.kind,
            BootKind::Confirmed,
            "cut {k}"
        );
    }
    println!(
        "simulated node: {total} flash operations in the transfer, {total} cuts; back on the \
         old image {old} times, on the new {new} times; every update completed"
    );
    assert_eq!(old + new, total);
}

#[test]
fn a_trial_never_polled_resets_at_the_time_limit_and_reverts_after_three_boots() {
    use tianzhong_simulator::update::SIM_TRIAL_LIMIT;
    let limit_ms = u64::from(SIM_TRIAL_LIMIT.seconds) * 1000;
    let mut n = node();
    let image = sim_image(MODEL, v(1, 1, 0), 2, 4000);
    update(&mut n, &image).unwrap();
    // Reset into the new image at simulated 0, on trial. Nobody polls it (a read would
    // confirm it); only simulated time passes.
    let kind = |n: &mut VirtualNode| n.firmware_update().running.kind.clone();
    assert_eq!(kind(&mut n), BootKind::Trial { attempt: 1 });
    n.advance_to(limit_ms - 1, &[]);
    assert_eq!(kind(&mut n), BootKind::Trial { attempt: 1 });
    // At the limit the node resets: the bootloader boots it again as attempt 2, then 3.
    n.advance_to(limit_ms, &[]);
    assert_eq!(kind(&mut n), BootKind::Trial { attempt: 2 });
    assert_eq!(n.running_firmware(), v(1, 1, 0));
    n.advance_to(2 * limit_ms, &[]);
    assert_eq!(kind(&mut n), BootKind::Trial { attempt: 3 });
    // The third unconfirmed boot runs out too: the bootloader reverts to the confirmed image,
    // which has no limit.
    n.advance_to(3 * limit_ms, &[]);
    assert!(
        matches!(kind(&mut n), BootKind::Reverted { .. }),
        "{:?}",
        kind(&mut n)
    );
    assert_eq!(n.running_firmware(), v(1, 0, 0));
    n.advance_to(10 * limit_ms, &[]);
    assert_eq!(reported_version(&mut n), v(1, 0, 0));
}

mod over_mqtt {
    //! The same node over MQTT messages: the firmware's MQTT handler on the same session and
    //! flash, with the simulator's update faults.

    use super::*;
    use tianzhong_protocol::update::{
        MAX_REQUEST_LEN, MQTT_CHUNK, Phase, Reason, UpdateReport, UpdateRequest,
    };
    use tianzhong_simulator::fault::Fault;
    use tianzhong_simulator::node::MqttUpdate;

    fn send(n: &mut VirtualNode, request: &UpdateRequest<'_>, faults: &[Fault]) -> MqttUpdate {
        let mut buf = [0u8; MAX_REQUEST_LEN];
        n.mqtt_update(request.encode(&mut buf).unwrap(), 0, faults)
    }

    fn report(n: &mut VirtualNode, request: &UpdateRequest<'_>) -> UpdateReport {
        send(n, request, &[])
            .report
            .expect("a powered node answers")
    }

    fn offer(image: &[u8]) -> UpdateRequest<'static> {
        UpdateRequest::Offer {
            header: image[..64].try_into().unwrap(),
            digest: ImageFile::parse(image).unwrap().trailer.digest,
            chunk_size: MQTT_CHUNK,
        }
    }

    fn chunk(image: &[u8], index: u32) -> UpdateRequest<'_> {
        let size = usize::from(MQTT_CHUNK);
        let start = index as usize * size;
        let data = &image[start..(start + size).min(image.len())];
        UpdateRequest::Chunk {
            index,
            crc: CRC32C.checksum(data),
            data,
        }
    }

    #[test]
    fn a_power_cut_resets_the_node_without_an_answer_and_the_offer_resumes() {
        let mut n = node();
        let image = sim_image(MODEL, v(1, 1, 0), 2, 20 * 1024);
        let chunks = report(&mut n, &offer(&image)).chunks;
        assert!(chunks > 10, "{chunks}");
        let cut = [Fault::UpdatePowerCut];
        for i in 0..8 {
            let done = send(&mut n, &chunk(&image, i), &cut);
            assert_eq!(done.report.map(|r| r.next_chunk), Some(i + 1));
            assert!(!done.reset);
        }
        // From chunk 8 the power fails at the chunk's first flash operation: no answer, a reset.
        let done = send(&mut n, &chunk(&image, 8), &cut);
        assert_eq!((done.report, done.reset), (None, true));
        assert_eq!(n.running_firmware(), v(1, 0, 0));
        let r = report(&mut n, &UpdateRequest::Status);
        assert_eq!((r.phase, r.next_chunk), (Phase::Idle, 0));
        // Chunks before the reset are not offered again: the flash says where the transfer was.
        let r = report(&mut n, &offer(&image));
        assert_eq!((r.phase, r.next_chunk), (Phase::Receiving, 8));
        for i in 8..chunks {
            assert_eq!(report(&mut n, &chunk(&image, i)).next_chunk, i + 1);
        }
        let done = send(&mut n, &UpdateRequest::Finish, &[]);
        assert!(done.reset);
        assert_eq!(done.report.map(|r| r.phase), Some(Phase::Staged));
        assert_eq!(n.running_firmware(), v(1, 1, 0));
        // On trial until the gateway's confirm; register reads do not confirm an MQTT update.
        assert!(report(&mut n, &UpdateRequest::Status).trial);
        let r = report(
            &mut n,
            &UpdateRequest::Confirm {
                version: v(1, 1, 0),
            },
        );
        assert_eq!((r.reason, r.trial), (0, false));
        assert_eq!(n.firmware_update().running.kind, BootKind::Confirmed);
    }

    #[test]
    fn a_new_image_that_crashes_before_its_confirm_is_given_up() {
        let mut n = node();
        let image = sim_image(MODEL, v(1, 1, 0), 2, 6 * 1024);
        let chunks = report(&mut n, &offer(&image)).chunks;
        for i in 0..chunks {
            report(&mut n, &chunk(&image, i));
        }
        let done = send(&mut n, &UpdateRequest::Finish, &[Fault::UpdateRollback]);
        assert!(done.reset);
        // Staged, then rebooted until the bootloader gave the trial up.
        assert_eq!(done.report.map(|r| r.phase), Some(Phase::Staged));
        assert_eq!(n.running_firmware(), v(1, 0, 0));
        let r = report(
            &mut n,
            &UpdateRequest::Confirm {
                version: v(1, 1, 0),
            },
        );
        assert_eq!(
            (r.reason(), r.running, r.trial),
            (Some(Reason::ConfirmOtherVersion), v(1, 0, 0), false)
        );
    }
}
