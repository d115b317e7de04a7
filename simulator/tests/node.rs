//! A virtual node is the firmware's node core reading simulated sensors through the real
//! drivers: what it holds is what the physical signal was, within each sensor's resolution,
//! and faults change what it holds the way a real failure would.

use std::path::Path;

use tianzhong_protocol::registers::profile;
use tianzhong_protocol::{AlarmLevel, NodeId, Quality, Quantity, SiteId};
use tianzhong_simulator::fault::Fault;
use tianzhong_simulator::node::{ChannelSpec, NodeSpec, SensorKind, VirtualNode};
use tianzhong_simulator::signal::Component;

fn constant(q: Quantity, value: f64) -> ChannelSpec {
    ChannelSpec {
        quantity: q,
        signal: vec![Component::Constant { value }],
        clamp: None,
        sensor: None,
    }
}

fn node(channels: Vec<ChannelSpec>) -> VirtualNode {
    let spec = NodeSpec {
        id: NodeId::new("n1").unwrap(),
        site: SiteId::new("s1").unwrap(),
        bus: "b1".into(),
        unit: 3,
        model: "TZ-SIM".into(),
        channels,
    };
    VirtualNode::new(&spec, 7, Path::new(".")).unwrap()
}

#[test]
fn every_sensor_path_returns_the_physical_value_within_its_resolution() {
    // Tolerances: the quantisation of each simulated path — SHT4x and SCD4x ticks (175/65535 °C,
    // 100/65535 %), one count of the 12-bit ADC behind the gas bridge (span 50 %LEL over 1600
    // counts) and behind the 150 Ω shunt (3300/4096/150 mA = 3.4 mm on 0–10 m).
    let cases = [
        (constant(Quantity::AirTemperature, 21.5), 21.5, 0.01),
        (constant(Quantity::RelativeHumidity, 45.0), 45.0, 0.01),
        (constant(Quantity::Co2, 415.0), 415.0, 1.0),
        (constant(Quantity::CombustibleGas, 12.5), 12.5, 0.04),
        (constant(Quantity::WaterLevel, 2.5), 2.5, 0.0034),
        (constant(Quantity::Pm25, 35.0), 35.0, 1e-6),
    ];
    let channels: Vec<ChannelSpec> = cases.iter().map(|c| c.0.clone()).collect();
    let mut n = node(channels);
    let rounds = n.advance_to(0, &[]);
    assert_eq!(rounds.len(), 1, "one round at boot");
    for (ch, (_, expected, tolerance)) in cases.iter().enumerate() {
        let (value, quality, _) = n.core().channel(ch).unwrap();
        assert_eq!(quality, Quality::Good, "channel {ch}");
        assert!(
            (f64::from(value) - expected).abs() <= *tolerance,
            "channel {ch}: {value} vs {expected}"
        );
    }
    assert!(rounds[0].samples.iter().all(|s| s.seq == 1));
}

#[test]
fn rain_intensity_fills_the_tipping_bucket() {
    // 12 mm/h for a minute is 0.2 mm: one tip of the 0.2 mm bucket per minute.
    let mut n = node(vec![constant(Quantity::Rainfall, 12.0)]);
    n.advance_to(0, &[]);
    let rounds = n.advance_to(10 * 60_000, &[]);
    // Sampled every 60 s (factory interval for rainfall): 10 more rounds, 0.2 mm each.
    assert_eq!(rounds.len(), 10);
    let total: f32 = rounds.iter().map(|r| r.samples[0].value).sum();
    assert!(
        (total - 2.0).abs() < 0.21,
        "{total} mm in 10 min at 12 mm/h"
    );
}

#[test]
fn faults_stick_spike_and_break_sensors() {
    let ramp = ChannelSpec {
        quantity: Quantity::CombustibleGas,
        signal: vec![Component::Ramp {
            from_s: 0.0,
            to_s: 100.0,
            delta: 40.0,
            hold: true,
        }],
        clamp: None,
        sensor: Some(SensorKind::GasBridge),
    };
    let mut n = node(vec![ramp, constant(Quantity::AirTemperature, 20.0)]);
    n.advance_to(10_000, &[]);
    let at_10s = n.core().channel(0).unwrap().0;
    assert!((at_10s - 4.0).abs() < 0.05, "{at_10s}");

    // Stuck: the value no longer follows the ramp.
    n.advance_to(30_000, &[Fault::StuckValue { channel: Some(0) }]);
    assert_eq!(n.core().channel(0).unwrap().0, at_10s);

    // Spike: out of the gas range, kept, flagged T, and the local alarm sounds.
    n.advance_to(
        31_000,
        &[Fault::Spike {
            channel: 0,
            value: 110.0,
        }],
    );
    let (value, quality, level) = n.core().channel(0).unwrap();
    assert!(value > 100.0, "{value}");
    assert_eq!(
        (quality, level),
        (
            Quality::Uncertain(tianzhong_protocol::UncertainReason::OutOfRange),
            AlarmLevel::Red
        )
    );

    // Sensor fault: the bridge at a rail and the SHT4x silent on the bus both read as faults
    // (the temperature channel samples every 5 s, next at 35 s).
    n.advance_to(36_000, &[Fault::SensorFault { channel: None }]);
    for ch in 0..2 {
        assert_eq!(
            n.core().channel(ch).unwrap().1.hj212_flag(),
            'D',
            "channel {ch}"
        );
    }
    // And back at the next samples.
    n.advance_to(41_000, &[]);
    assert_eq!(n.core().channel(1).unwrap().1, Quality::Good);
}

#[test]
fn served_over_modbus_with_the_firmware_handler() {
    let mut n = node(vec![constant(Quantity::CombustibleGas, 30.0)]);
    n.advance_to(0, &[]);
    // FC04: status and channel 0.
    let request = [0x04, 0x01, 0x00, 0x00, profile::poll_len(1) as u8];
    let mut out = [0u8; 253];
    let handled = n.modbus(&request, &mut out, 0);
    let tianzhong_firmware::modbus::pdu::Handled::Response(len) = handled else {
        panic!("{handled:?}")
    };
    assert_eq!(usize::from(out[1]), 2 * usize::from(profile::poll_len(1)));
    assert_eq!(len, 2 + usize::from(out[1]));
    // The local alarm (set point 1 = 25 %LEL) shows in the status block's highest-alarm word.
    let highest = u16::from_be_bytes([out[4], out[5]]);
    assert_eq!(highest, u16::from(AlarmLevel::Yellow.code()));
}

#[test]
fn configuration_survives_a_reboot_through_simulated_flash() {
    let mut n = node(vec![constant(Quantity::CombustibleGas, 20.0)]);
    n.advance_to(0, &[]);
    let mut out = [0u8; 253];
    // FC16: set point 1 of channel 0 := 15.0 (0x41700000), then command Reboot.
    let sp1 = profile::channel_config_base(0) + 2;
    let [hi, lo] = sp1.to_be_bytes();
    n.modbus(
        &[0x10, hi, lo, 0x00, 0x02, 0x04, 0x41, 0x70, 0x00, 0x00],
        &mut out,
        0,
    );
    let [chi, clo] = (profile::CONFIG_BLOCK + 3).to_be_bytes();
    let [rhi, rlo] = (profile::Command::Reboot as u16).to_be_bytes();
    n.modbus(&[0x06, chi, clo, rhi, rlo], &mut out, 0);
    n.advance_to(1_000, &[]);
    assert_eq!(
        n.core().status().reset_reason,
        profile::ResetReason::Software
    );
    assert_eq!(
        n.core().config().channels[0].set_point_1,
        15.0,
        "saved before the reboot"
    );
}
