//! A tour of the protocol crate: what a node's registers, frames, topics and payloads look like.
//!
//! `cargo run -p tianzhong-protocol --example tour`
//!
//! It builds the register image of a gas-detector node in the Tianzhong node profile, decodes
//! it back into readings, and shows the same readings as a binary uplink frame and as the MQTT
//! topic and JSON payload a directly connected device would publish.

use tianzhong_protocol::convert::ReferenceConditions;
use tianzhong_protocol::frame::UplinkFrame;
use tianzhong_protocol::payload::{Telemetry, TelemetryValue};
use tianzhong_protocol::registers::profile::{
    self, FirmwareVersion, Identity, Status, StatusFlags,
};
use tianzhong_protocol::registers::{DecodeContext, RegisterTable};
use tianzhong_protocol::topic::{Topic, TopicKind};
use tianzhong_protocol::{AlarmLevel, NodeId, Quality, Quantity, SiteId, Timestamp};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let node = NodeId::new("cp-gas-07")?;
    let site = SiteId::new("chem-plant-1")?;
    let quantities = [Quantity::CombustibleGas, Quantity::H2s, Quantity::Oxygen];
    let map = profile::register_map(&quantities)?;
    let conditions = ReferenceConditions::AMBIENT_25C;

    // The node's side: fill the status and channel blocks as its firmware would.
    let identity = Identity {
        vendor: "Tianzhong".try_into().map_err(|_| "vendor")?,
        model: "TZ-GAS-3".try_into().map_err(|_| "model")?,
        serial: "2026110001".try_into().map_err(|_| "serial")?,
        firmware: FirmwareVersion {
            major: 1,
            minor: 0,
            patch: 0,
        },
        hardware_revision: 2,
        channels: quantities.len() as u16,
    };
    let values = [26.0, 3.1, 20.9];
    let mut block = vec![0u16; usize::from(profile::poll_len(quantities.len() as u16))];
    let status = Status {
        flags: StatusFlags(StatusFlags::LOCAL_ALARM),
        highest_alarm: AlarmLevel::Yellow,
        outputs: 0b01,
        reset_reason: profile::ResetReason::PowerOn,
        uptime_s: 86_400,
        seq: 4711,
        reset_count: 1,
        crc_errors: 0,
        sensor_errors: 0,
    };
    block[..16].copy_from_slice(&status.encode());
    for (n, (channel, value)) in map.channels.iter().zip(values).enumerate() {
        let base = usize::from(profile::channel_base(n as u16) - profile::STATUS_BLOCK);
        channel.encode_value(value, &conditions, &mut block[base..base + 2])?;
        block[base + 2] = Quality::Good.register_code();
        block[base + 3] = u16::from(
            if n == 0 {
                AlarmLevel::Yellow
            } else {
                AlarmLevel::Normal
            }
            .code(),
        );
        block[base + 4] = channel.quantity.code();
        block[base + 5] = channel.quantity.canonical_unit().code();
    }

    println!(
        "Node {node} at site {site}: {} {} serial {}, firmware {}",
        identity.vendor, identity.model, identity.serial, identity.firmware
    );
    println!(
        "\nInput registers 0x{:04X}.. (one FC04 read of {} registers):",
        profile::STATUS_BLOCK,
        block.len()
    );
    for (row, chunk) in block.chunks(8).enumerate() {
        let words: Vec<String> = chunk.iter().map(|r| format!("{r:04X}")).collect();
        println!(
            "  0x{:04X}: {}",
            usize::from(profile::STATUS_BLOCK) + row * 8,
            words.join(" ")
        );
    }

    // The gateway's side: decode the block.
    let status = Status::decode(&block[..16])?;
    println!(
        "\nStatus: highest alarm {} ({}), uptime {} s, sample #{}",
        status.highest_alarm,
        status.highest_alarm.label_zh(),
        status.uptime_s,
        status.seq
    );
    let context = DecodeContext {
        node: &node,
        timestamp: Timestamp(1_764_316_800_000),
        seq: status.seq,
        conditions: &conditions,
    };
    let mut frame = UplinkFrame::new(node.clone());
    let mut telemetry = Telemetry {
        v: 1,
        seq: status.seq,
        ts: Some(context.timestamp.0),
        readings: Default::default(),
    };
    for (channel, reading) in
        map.decode_block(RegisterTable::Input, profile::STATUS_BLOCK, &block, context)
    {
        let reading = reading.map_err(|e| format!("{channel}: {e}"))?;
        println!(
            "  {} {:<16} {:>8.3} {:<6} quality {} ({})",
            reading.channel,
            reading.quantity.key(),
            reading.value,
            reading.quantity.canonical_unit(),
            reading.quality.hj212_flag(),
            reading.quality
        );
        frame.push(&reading).map_err(|_| "frame full")?;
        telemetry
            .readings
            .push(TelemetryValue {
                ch: reading.channel,
                q: reading.quantity,
                value: reading.value,
                unit: None,
                quality: Some(reading.quality),
            })
            .map_err(|_| "payload full")?;
    }

    let mut buf = [0u8; tianzhong_protocol::frame::MAX_FRAME_LEN];
    let bytes = frame.encode(&mut buf)?;
    println!(
        "\nUplink frame ({} bytes, COBS, ends in 00):\n  {}",
        bytes.len(),
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    let back = UplinkFrame::decode(bytes)?;
    assert_eq!(back, frame);

    let mut json = [0u8; 1024];
    let n = telemetry.to_json(&mut json)?;
    println!(
        "\nMQTT {}\n  {}",
        Topic::new(site, node, TopicKind::Telemetry),
        std::str::from_utf8(&json[..n])?
    );
    Ok(())
}
