//! The node core served by the real RTU slave on a host pseudo-terminal, polled by mbpoll: the
//! values, identity and exception codes an independent master sees are the ones the node
//! profile promises.

mod support;

use std::collections::BTreeMap;

use support::mbpoll::{BAUD, mbpoll};
use support::serve_on_pty;
use tianzhong_firmware::node::{BootInfo, NodeCore, NodeIdentity, Sample};
use tianzhong_protocol::Quantity;
use tianzhong_protocol::registers::profile::{self, FirmwareVersion, ResetReason};

const UNIT: u8 = 7;

/// A gas node that has sampled 12.5 %LEL, 3.25 mg/m³ H2S and 20.9 %vol O2 once.
fn sampled_core() -> NodeCore {
    let identity = NodeIdentity {
        vendor: "Tianzhong".try_into().unwrap(),
        model: "TZ-GAS-3".try_into().unwrap(),
        serial: "SN-0042".try_into().unwrap(),
        firmware: FirmwareVersion {
            major: 1,
            minor: 2,
            patch: 3,
        },
        hardware_revision: 2,
    };
    let boot = BootInfo {
        reset_reason: ResetReason::PowerOn,
        reset_count: 1,
    };
    let quantities = [Quantity::CombustibleGas, Quantity::H2s, Quantity::Oxygen];
    let mut core = NodeCore::new(identity, &quantities, None, boot, 0).unwrap();
    for (ch, v) in [12.5, 3.25, 20.9].into_iter().enumerate() {
        core.record(ch, 0, Sample::Value(v));
    }
    core.tick(0);
    core
}

/// mbpoll's 1-based reference of a 0-based register address.
fn reference(address: u16) -> String {
    (u32::from(address) + 1).to_string()
}

#[test]
fn mbpoll_reads_identity_and_channel_values_from_the_node_core() {
    let server = serve_on_pty(sampled_core(), UNIT, BAUD).expect("pty");
    let dev = server.path().to_owned();
    let unit = UNIT;

    // Identity: magic "TZ" (0x545A = 21594) and profile version 1.
    let run = mbpoll(&dev, unit, &["-t", "3", "-r", "1", "-c", "2"], &[]);
    assert!(run.success, "{run}");
    let expected: BTreeMap<u32, String> = [(1, "21594"), (2, "1")]
        .map(|(r, v)| (r, v.to_owned()))
        .into();
    assert_eq!(run.values(), expected, "{run}");

    // Channel values as floats, high word first (the profile's ABCD order is mbpoll's -B).
    for (ch, text) in [(0u16, "12.5"), (1, "3.25"), (2, "20.9")] {
        let r = reference(profile::channel_base(ch));
        let run = mbpoll(
            &dev,
            unit,
            &["-t", "3:float", "-B", "-r", &r, "-c", "1"],
            &[],
        );
        assert!(run.success, "{run}");
        assert_eq!(
            run.values().values().next().map(String::as_str),
            Some(text),
            "channel {ch}: {run}"
        );
    }

    // Quality of channel 0 is the HJ 212 flag 'N' (78); its quantity code is combustible gas.
    let r = reference(profile::channel_base(0) + 2);
    let run = mbpoll(&dev, unit, &["-t", "3", "-r", &r, "-c", "3"], &[]);
    let got: Vec<String> = run.values().into_values().collect();
    assert_eq!(
        got,
        ["78", "0", &Quantity::CombustibleGas.code().to_string()],
        "{run}"
    );
    drop(server);
}

#[test]
fn mbpoll_gets_the_node_cores_exceptions_and_writes_configuration() {
    let server = serve_on_pty(sampled_core(), UNIT, BAUD).expect("pty");
    let dev = server.path().to_owned();

    // One register past the last channel: illegal data address (02).
    let past = reference(profile::channel_base(3));
    let run = mbpoll(&dev, UNIT, &["-t", "3", "-r", &past], &[]);
    assert!(
        !run.success && run.stderr.contains("Illegal data address"),
        "{run}"
    );

    // Set point 1 of channel 0 above its set point 2 (50 %LEL): illegal data value (03).
    let sp1 = reference(profile::channel_config_base(0) + 2);
    let run = mbpoll(&dev, UNIT, &["-t", "4:float", "-B", "-r", &sp1], &["60"]);
    assert!(
        !run.success && run.stderr.contains("Illegal data value"),
        "{run}"
    );

    // Half of that float with function code 06: illegal data address (02).
    let run = mbpoll(&dev, UNIT, &["-t", "4", "-r", &sp1], &["16968"]);
    assert!(
        !run.success && run.stderr.contains("Illegal data address"),
        "{run}"
    );

    // A valid set point of 10 %LEL is accepted and read back.
    let run = mbpoll(&dev, UNIT, &["-t", "4:float", "-B", "-r", &sp1], &["10"]);
    assert!(run.success, "{run}");
    let run = mbpoll(
        &dev,
        UNIT,
        &["-t", "4:float", "-B", "-r", &sp1, "-c", "1"],
        &[],
    );
    assert_eq!(
        run.values().values().next().map(String::as_str),
        Some("10"),
        "{run}"
    );

    let (core, stats) = server.stop();
    assert_eq!(core.config().channels[0].set_point_1, 10.0);
    assert_eq!(stats.crc_errors, 0);
}
