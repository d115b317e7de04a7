//! Firmware in the loop: the STM32F405 board binary (QEMU variant: the same node core and
//! USART path, simulated sensors) boots under `qemu-system-arm -M netduinoplus2` through its
//! bootloader, as the signed factory image in slot A, and the host reads and writes its
//! registers over Modbus RTU with tokio-modbus, an independent master.
//!
//! Needs `qemu-system-arm`, `arm-none-eabi-objcopy` (Debian packages) and the
//! `thumbv7em-none-eabihf` target; the test builds the firmware itself (see
//! [`tianzhong_tests::qemu`]).

use std::time::Duration;

use tianzhong_protocol::convert::ReferenceConditions;
use tianzhong_protocol::registers::profile::{self, Identity, Status, StatusFlags};
use tianzhong_protocol::registers::{DecodeContext, RegisterTable};
use tianzhong_protocol::{NodeId, Quality, Quantity, Timestamp};
use tianzhong_tests::qemu;
use tokio_modbus::prelude::*;

/// The channels the board firmware declares, in register order.
const CHANNELS: [Quantity; 6] = [
    Quantity::CombustibleGas,
    Quantity::AirTemperature,
    Quantity::RelativeHumidity,
    Quantity::Co2,
    Quantity::WaterLevel,
    Quantity::Rainfall,
];

/// The physical values the QEMU board's simulated hardware presents to the drivers
/// (firmware/boards/stm32f405/src/qemu.rs), and how close each must come back through driver,
/// node core, registers and the protocol decoder: the quantity's resolution, or the hardware's
/// quantisation where that is coarser (one step of the 12-bit ADC across the 150 Ω shunt is
/// 3300 mV / 4096 / 150 Ω = 5.4 µA, i.e. 3.4 mm on the 0–10 m level transmitter).
const SIMULATED: [(Quantity, f64, f64); 6] = [
    (Quantity::CombustibleGas, 12.5, 0.1),
    (Quantity::AirTemperature, 21.5, 0.1),
    (Quantity::RelativeHumidity, 45.0, 0.1),
    (Quantity::Co2, 415.0, 1.0),
    (Quantity::WaterLevel, 2.5, 0.0034),
    (Quantity::Rainfall, 0.0, 0.1),
];

async fn with_timeout<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .unwrap_or_else(|_| panic!("{what}: no reply within 10 s"))
}

#[tokio::test]
async fn qemu_firmware_answers_modbus_rtu_with_identity_and_channel_values() {
    let version = profile::FirmwareVersion {
        major: 1,
        minor: 0,
        patch: 0,
    };
    let flash = tokio::task::spawn_blocking(move || qemu::factory_flash(version))
        .await
        .unwrap();
    let (_qemu, stream, _) = qemu::boot_to_ready(&flash).await;
    let mut ctx = tokio_modbus::client::rtu::attach_slave(stream, Slave(1));

    // Identity block, decoded with the protocol crate's profile.
    let regs = with_timeout(
        "identity",
        ctx.read_input_registers(profile::IDENTITY_BLOCK, profile::IDENTITY_LEN),
    )
    .await
    .expect("transport")
    .expect("no exception");
    let identity = Identity::decode(&regs).expect("a Tianzhong profile node");
    assert_eq!(identity.vendor.as_str(), "Tianzhong");
    assert_eq!(identity.model.as_str(), "TZ-NODE-F4-QEMU");
    assert_eq!(identity.firmware, version, "the signed header's version");
    assert_eq!(usize::from(identity.channels), CHANNELS.len());

    // Let every channel be sampled at least once (the slowest samples every 60 s but takes its
    // first sample at boot), then read status and all channels in one request.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let len = profile::poll_len(identity.channels);
    let block = with_timeout("poll", ctx.read_input_registers(profile::STATUS_BLOCK, len))
        .await
        .expect("transport")
        .expect("no exception");
    let status = Status::decode(&block[..16]).unwrap();
    assert!(status.seq >= 1, "sampled at least once");
    assert!(
        status.flags.has(StatusFlags::CONFIG_DEFAULTS),
        "no stored configuration in QEMU"
    );
    let map = profile::register_map(&CHANNELS).unwrap();
    let node = NodeId::new("qemu-node").unwrap();
    let conditions = ReferenceConditions::default();
    let context = DecodeContext {
        node: &node,
        timestamp: Timestamp(0),
        seq: status.seq,
        conditions: &conditions,
    };
    let readings: Vec<_> = map
        .decode_block(RegisterTable::Input, profile::STATUS_BLOCK, &block, context)
        .map(|(ch, r)| r.unwrap_or_else(|e| panic!("{ch}: {e}")))
        .collect();
    assert_eq!(readings.len(), CHANNELS.len());
    for (r, (quantity, value, tolerance)) in readings.iter().zip(SIMULATED) {
        assert_eq!(r.quantity, quantity);
        assert_eq!(r.quality, Quality::Good, "{quantity}");
        assert!(
            (r.value - value).abs() <= tolerance,
            "{quantity}: {} vs {value} ± {tolerance}",
            r.value
        );
    }

    // An unmapped address is an exception, not silence.
    let err = with_timeout("exception", ctx.read_input_registers(0x0050, 1))
        .await
        .expect("transport");
    assert_eq!(err, Err(ExceptionCode::IllegalDataAddress));

    // Configuration over holding registers: lower the gas channel's set point 1 and read it back.
    let sp1 = profile::channel_config_base(0) + 2;
    let regs = [0x4120u16, 0x0000]; // 10.0 as f32
    with_timeout("write", ctx.write_multiple_registers(sp1, &regs))
        .await
        .expect("transport")
        .expect("accepted");
    let back = with_timeout("read back", ctx.read_holding_registers(sp1, 2))
        .await
        .expect("transport")
        .expect("no exception");
    assert_eq!(back, regs);
    // 12.5 %LEL is now above set point 1: the local alarm trips on the next sample.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let status = with_timeout(
        "status",
        ctx.read_input_registers(profile::STATUS_BLOCK, 16),
    )
    .await
    .unwrap()
    .unwrap();
    let status = Status::decode(&status).unwrap();
    assert!(status.flags.has(StatusFlags::LOCAL_ALARM));
    assert_eq!(status.outputs & 1, 1, "relay 1 energised");
    // A set point above set point 2 is refused with exception 03.
    let bad = with_timeout(
        "bad write",
        ctx.write_multiple_registers(sp1, &[0x4270, 0x0000]),
    )
    .await
    .expect("transport");
    assert_eq!(bad, Err(ExceptionCode::IllegalDataValue));
}
