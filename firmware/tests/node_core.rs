//! The node core driven as a board would drive it, with no gateway and no hardware.

use embedded_storage::nor_flash::{
    ErrorType, NorFlash, NorFlashError, NorFlashErrorKind, ReadNorFlash,
};
use tianzhong_firmware::modbus::{Exception, RegisterBank};
use tianzhong_firmware::node::alarm::outputs;
use tianzhong_firmware::node::config::{ChannelConfig, NodeConfig};
use tianzhong_firmware::node::storage::{ConfigSlots, ConfigStore, RECORD_LEN};
use tianzhong_firmware::node::{BootInfo, MODE_TIMEOUT_MS, NodeCore, NodeIdentity, Sample};
use tianzhong_protocol::convert::ReferenceConditions;
use tianzhong_protocol::registers::profile::{
    self, AlarmFlags, Command, FirmwareVersion, Identity, ResetReason, Status, StatusFlags,
};
use tianzhong_protocol::registers::{DecodeContext, RegisterTable};
use tianzhong_protocol::{
    AlarmLevel, BadReason, NodeId, Quality, Quantity, Timestamp, UncertainReason,
};

const GAS_NODE: [Quantity; 3] = [Quantity::CombustibleGas, Quantity::H2s, Quantity::Oxygen];

fn identity() -> NodeIdentity {
    NodeIdentity {
        vendor: "Tianzhong".try_into().unwrap(),
        model: "TZ-GAS-3".try_into().unwrap(),
        serial: "SN-0042".try_into().unwrap(),
        firmware: FirmwareVersion {
            major: 1,
            minor: 2,
            patch: 3,
        },
        hardware_revision: 2,
    }
}

fn boot() -> BootInfo {
    BootInfo {
        reset_reason: ResetReason::PowerOn,
        reset_count: 7,
    }
}

fn gas_node() -> NodeCore {
    NodeCore::new(identity(), &GAS_NODE, None, boot(), 0).unwrap()
}

/// Runs the core for `seconds` of simulated time, sampling every due channel from `signal`
/// (channel, second) → sample, ticking every 100 ms like a board's main loop. Returns the
/// outputs after each second and whether the watchdog was fed every tick.
fn run(
    core: &mut NodeCore,
    start_s: u64,
    seconds: u64,
    signal: impl Fn(usize, u64) -> Sample,
) -> (Vec<u16>, bool) {
    let mut outs = Vec::new();
    let mut fed = true;
    for t in (start_s * 1000..(start_s + seconds) * 1000).step_by(100) {
        let due = core.due(t);
        for ch in 0..core.channel_count() {
            if due & (1 << ch) != 0 {
                core.record(ch, t, signal(ch, t / 1000));
            }
        }
        let actions = core.tick(t);
        fed &= actions.feed_watchdog;
        if t % 1000 == 900 {
            outs.push(actions.outputs);
        }
    }
    (outs, fed)
}

fn normal_air(ch: usize) -> f32 {
    [0.0, 0.0, 20.9][ch]
}

#[test]
fn local_alarm_trips_holds_with_no_gateway_and_clears_only_below_the_deadband() {
    let mut core = gas_node();
    // Combustible gas per GB/T 50493: set point 1 = 25 %LEL, set point 2 = 50 %LEL, factory
    // deadband 2 %LEL. Nothing ever reads the node over Modbus in this test.
    let (outs, fed) = run(&mut core, 0, 10, |ch, _| Sample::Value(normal_air(ch)));
    assert!(outs.iter().all(|o| *o == 0) && fed);

    // The leak: 5 %LEL per second up to 30 %LEL.
    let (outs, fed) = run(&mut core, 10, 6, |ch, s| {
        if ch == 0 {
            Sample::Value(5.0 * (s - 9) as f32)
        } else {
            Sample::Value(normal_air(ch))
        }
    });
    assert!(fed);
    assert_eq!(
        outs,
        [0, 0, 0, 0, outputs::RELAY_1, outputs::RELAY_1],
        "trips at 25 %LEL"
    );
    assert_eq!(core.channel(0).unwrap().2, AlarmLevel::Yellow);

    // Ten minutes at 30 %LEL with no gateway: the relay holds the whole time.
    let (outs, fed) = run(&mut core, 16, 600, |ch, _| {
        Sample::Value(if ch == 0 { 30.0 } else { normal_air(ch) })
    });
    assert!(fed);
    assert!(outs.iter().all(|o| *o == outputs::RELAY_1));

    // Falling back: 24 and 23.0 are inside the deadband (25 − 2), the relay holds; 22.9 clears.
    for (value, expected) in [
        (24.0, outputs::RELAY_1),
        (23.0, outputs::RELAY_1),
        (22.9, 0),
    ] {
        let start = core.next_due_ms() / 1000;
        let (outs, _) = run(&mut core, start, 1, |ch, _| {
            Sample::Value(if ch == 0 { value } else { normal_air(ch) })
        });
        assert_eq!(outs, [expected], "at {value} %LEL");
    }
    assert_eq!(core.channel(0).unwrap().2, AlarmLevel::Normal);
}

#[test]
fn set_point_two_sounds_the_buzzer_and_oxygen_deficiency_trips_low() {
    let mut core = gas_node();
    let (outs, _) = run(&mut core, 0, 2, |ch, _| {
        Sample::Value([55.0, 0.0, 20.9][ch])
    });
    assert_eq!(outs.last(), Some(&(outputs::RELAY_1 | outputs::RELAY_2)));
    assert_eq!(core.channel(0).unwrap().2, AlarmLevel::Red);
    let mut core = gas_node();
    let (outs, _) = run(&mut core, 0, 2, |ch, _| Sample::Value([0.0, 0.0, 18.0][ch]));
    assert_eq!(outs.last(), Some(&outputs::RELAY_1));
    assert_eq!(
        core.channel(2).unwrap().2,
        AlarmLevel::Red,
        "O2 deficiency below 19.5 %vol"
    );
}

#[test]
fn a_failed_sensor_raises_the_fault_output_and_never_clears_an_alarm() {
    let mut core = gas_node();
    run(&mut core, 0, 2, |ch, _| {
        Sample::Value([30.0, 0.0, 20.9][ch])
    });
    let (outs, fed) = run(&mut core, 2, 5, |ch, _| {
        if ch == 0 {
            Sample::Fault
        } else {
            Sample::Value(normal_air(ch))
        }
    });
    assert_eq!(outs.last(), Some(&(outputs::RELAY_1 | outputs::FAULT)));
    assert!(fed, "a sensor fault is not a hung loop");
    let (value, quality, level) = core.channel(0).unwrap();
    assert_eq!(
        (value, quality, level),
        (
            30.0,
            Quality::Bad(BadReason::SensorFault),
            AlarmLevel::Yellow
        )
    );
    assert!(core.status().flags.has(StatusFlags::SENSOR_FAULT));
}

#[test]
fn the_watchdog_starves_when_sampling_stops() {
    let mut core = gas_node();
    run(&mut core, 0, 2, |ch, _| Sample::Value(normal_air(ch)));
    // Channels sample every second; allowance is 3 intervals + 2 s.
    assert!(core.tick(6_000).feed_watchdog);
    assert!(!core.tick(6_100).feed_watchdog);
}

#[test]
fn register_image_decodes_with_the_protocol_profile() {
    let mut core = gas_node();
    run(&mut core, 0, 3, |ch, _| {
        Sample::Value([12.5, 3.25, 20.9][ch])
    });

    let mut ident = [0u16; profile::IDENTITY_LEN as usize];
    core.read_input_registers(profile::IDENTITY_BLOCK, &mut ident)
        .unwrap();
    let id = Identity::decode(&ident).unwrap();
    assert_eq!(
        (
            id.vendor.as_str(),
            id.model.as_str(),
            id.serial.as_str(),
            id.channels
        ),
        ("Tianzhong", "TZ-GAS-3", "SN-0042", 3)
    );
    assert_eq!(id.firmware.to_string(), "1.2.3");

    // One poll: status and every channel, as a gateway reads it.
    let mut block = vec![0u16; usize::from(profile::poll_len(3))];
    core.read_input_registers(profile::STATUS_BLOCK, &mut block)
        .unwrap();
    let status = Status::decode(&block[..16]).unwrap();
    assert_eq!(
        (
            status.seq,
            status.uptime_s,
            status.reset_count,
            status.reset_reason
        ),
        (3, 2, 7, ResetReason::PowerOn)
    );
    let map = profile::register_map(&GAS_NODE).unwrap();
    let node = NodeId::new("n1").unwrap();
    let conditions = ReferenceConditions::default();
    let ctx = DecodeContext {
        node: &node,
        timestamp: Timestamp(0),
        seq: status.seq,
        conditions: &conditions,
    };
    let values: Vec<(f64, Quality)> = map
        .decode_block(RegisterTable::Input, profile::STATUS_BLOCK, &block, ctx)
        .map(|(_, r)| r.map(|r| (r.value, r.quality)).unwrap())
        .collect();
    assert_eq!(
        values,
        [
            (12.5, Quality::Good),
            (3.25, Quality::Good),
            (20.9, Quality::Good)
        ]
    );

    // Past the last channel, or between blocks: illegal data address.
    let mut one = [0u16; 1];
    assert_eq!(
        core.read_input_registers(profile::channel_base(3), &mut one),
        Err(Exception::IllegalDataAddress)
    );
    assert_eq!(
        core.read_input_registers(0x0050, &mut one),
        Err(Exception::IllegalDataAddress)
    );
    let mut across = vec![0u16; usize::from(profile::poll_len(3)) + 1];
    assert_eq!(
        core.read_input_registers(profile::STATUS_BLOCK, &mut across),
        Err(Exception::IllegalDataAddress)
    );
    assert_eq!(core.device_identification(0x02), Some("1.2.3"));
}

fn f32_regs(v: f32) -> [u16; 2] {
    let b = v.to_be_bytes();
    [
        u16::from_be_bytes([b[0], b[1]]),
        u16::from_be_bytes([b[2], b[3]]),
    ]
}

#[test]
fn set_points_change_over_modbus_at_run_time_and_bad_ones_are_refused() {
    let mut core = gas_node();
    run(&mut core, 0, 2, |ch, _| {
        Sample::Value([20.0, 0.0, 20.9][ch])
    });
    assert_eq!(core.outputs(), 0);
    // Lower set point 1 of channel 0 to 15 %LEL (one FC16 write of the f32).
    let sp1 = profile::channel_config_base(0) + 2;
    core.write_holding_registers(sp1, &f32_regs(15.0)).unwrap();
    run(&mut core, 2, 1, |ch, _| {
        Sample::Value([20.0, 0.0, 20.9][ch])
    });
    assert_eq!(
        core.outputs(),
        outputs::RELAY_1,
        "new set point applies without restart"
    );

    let before = *core.config();
    // Set point 1 above set point 2 (50): refused, nothing changes.
    assert_eq!(
        core.write_holding_registers(sp1, &f32_regs(60.0)),
        Err(Exception::IllegalDataValue)
    );
    // Half of an f32: refused.
    assert_eq!(
        core.write_holding_registers(sp1, &[0x4270]),
        Err(Exception::IllegalDataAddress)
    );
    // Unit address 0 and an unknown command: refused.
    assert_eq!(
        core.write_holding_registers(profile::CONFIG_BLOCK, &[0]),
        Err(Exception::IllegalDataValue)
    );
    assert_eq!(
        core.write_holding_registers(profile::CONFIG_BLOCK + 3, &[0x1234]),
        Err(Exception::IllegalDataValue)
    );
    // Outside the configuration block.
    assert_eq!(
        core.write_holding_registers(0x0100, &[1]),
        Err(Exception::IllegalDataAddress)
    );
    assert_eq!(*core.config(), before);

    let mut back = [0u16; 2];
    core.read_holding_registers(sp1, &mut back).unwrap();
    assert_eq!(back, f32_regs(15.0));
}

#[test]
fn configuration_is_saved_once_writes_settle() {
    let mut core = gas_node();
    core.tick(1_000);
    core.write_holding_registers(profile::channel_config_base(1), &[5])
        .unwrap();
    assert!(!core.tick(2_000).save_config, "settling");
    core.write_holding_registers(profile::channel_config_base(2), &[5])
        .unwrap();
    assert!(
        !core.tick(3_500).save_config,
        "a second write restarts the settling time"
    );
    assert!(core.tick(4_000).save_config);
    core.config_saved();
    assert!(!core.tick(5_000).save_config);
    core.write_holding_registers(profile::CONFIG_BLOCK + 3, &[Command::Save as u16])
        .unwrap();
    assert!(core.tick(5_001).save_config, "save command is immediate");
}

#[test]
fn latches_reset_by_command_and_modes_expire() {
    let mut core = gas_node();
    let flags = profile::channel_config_base(0) + 1;
    core.write_holding_registers(flags, &[AlarmFlags::ENABLED | AlarmFlags::LATCHING])
        .unwrap();
    run(&mut core, 0, 2, |ch, _| {
        Sample::Value([30.0, 0.0, 20.9][ch])
    });
    run(&mut core, 2, 2, |ch, _| Sample::Value(normal_air(ch)));
    assert_eq!(core.outputs(), outputs::RELAY_1, "latched");
    assert!(core.status().flags.has(StatusFlags::ALARM_LATCHED));
    core.write_holding_registers(profile::CONFIG_BLOCK + 3, &[Command::ResetLatches as u16])
        .unwrap();
    assert_eq!(core.outputs(), 0);

    // Calibration mode flags values C and inhibits alarms; it ends by itself after 30 min.
    core.write_holding_registers(profile::CONFIG_BLOCK + 4, &[2])
        .unwrap();
    run(&mut core, 4, 2, |ch, _| {
        Sample::Value([60.0, 0.0, 20.9][ch])
    });
    assert_eq!(
        core.channel(0).unwrap().1,
        Quality::Bad(BadReason::Calibrating)
    );
    assert_eq!(core.outputs(), 0);
    core.tick(4_000 + MODE_TIMEOUT_MS + 1);
    assert_eq!(core.config().mode, profile::NodeMode::Normal);
}

#[test]
fn out_of_range_values_are_kept_flagged_and_alarmed() {
    let mut core = gas_node();
    run(&mut core, 0, 2, |ch, _| {
        Sample::Value([120.0, 0.0, 20.9][ch])
    });
    let (value, quality, level) = core.channel(0).unwrap();
    assert_eq!(
        (value, quality, level),
        (
            120.0,
            Quality::Uncertain(UncertainReason::OutOfRange),
            AlarmLevel::Red
        )
    );
}

#[test]
fn node_core_fits_the_ram_budget() {
    // The application's RAM budget is 16 KiB; the core's state must leave room for stacks,
    // the Modbus buffers and the drivers.
    let size = std::mem::size_of::<NodeCore>();
    println!("size_of::<NodeCore>() = {size} bytes");
    assert!(size <= 2048, "NodeCore is {size} bytes");
}

/// RAM-backed NOR flash that can lose power after a given number of written bytes: the rest
/// of that write and everything after it never reach the flash.
struct RamFlash {
    data: Vec<u8>,
    budget: Option<usize>,
}

#[derive(Debug)]
struct PowerCut;
impl NorFlashError for PowerCut {
    fn kind(&self) -> NorFlashErrorKind {
        NorFlashErrorKind::Other
    }
}
impl ErrorType for RamFlash {
    type Error = PowerCut;
}
impl ReadNorFlash for RamFlash {
    const READ_SIZE: usize = 1;
    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), PowerCut> {
        bytes.copy_from_slice(&self.data[offset as usize..offset as usize + bytes.len()]);
        Ok(())
    }
    fn capacity(&self) -> usize {
        self.data.len()
    }
}
impl NorFlash for RamFlash {
    const WRITE_SIZE: usize = 4;
    const ERASE_SIZE: usize = 1024;
    fn erase(&mut self, from: u32, to: u32) -> Result<(), PowerCut> {
        if self.budget == Some(0) {
            return Err(PowerCut);
        }
        self.data[from as usize..to as usize].fill(0xFF);
        Ok(())
    }
    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), PowerCut> {
        for (i, b) in bytes.iter().enumerate() {
            match &mut self.budget {
                Some(0) => return Err(PowerCut),
                Some(n) => *n -= 1,
                None => {}
            }
            // NOR programming only clears bits.
            self.data[offset as usize + i] &= *b;
        }
        Ok(())
    }
}

const SLOTS: ConfigSlots = ConfigSlots { a: 0, b: 1024 };

#[test]
fn configuration_survives_a_power_cut_at_every_byte_of_a_save() {
    let old = NodeConfig::factory(&GAS_NODE);
    let mut new = old;
    new.channels[0] = ChannelConfig {
        set_point_1: 20.0,
        ..old.channels[0]
    };
    let mut store = ConfigStore::new(
        RamFlash {
            data: vec![0xFF; 2048],
            budget: None,
        },
        SLOTS,
    );
    assert_eq!(store.load().unwrap(), None, "blank flash: factory defaults");
    store.save(&old).unwrap();
    store.save(&old).unwrap(); // both slots hold a copy now; the newest is in slot B
    let image = store.release().data;

    for cut in 0..=RECORD_LEN + 1 {
        let mut store = ConfigStore::new(
            RamFlash {
                data: image.clone(),
                budget: Some(cut),
            },
            SLOTS,
        );
        store.load().unwrap();
        let _ = store.save(&new);
        let data = store.release().data;
        let mut rebooted = ConfigStore::new(RamFlash { data, budget: None }, SLOTS);
        let loaded = rebooted.load().unwrap().expect("a valid copy survives");
        // The record is padded to the flash's 4-byte write size; all of it written = saved.
        if cut >= RECORD_LEN.div_ceil(4) * 4 {
            assert_eq!(loaded.config, new, "a completed save wins");
        } else {
            assert_eq!(
                loaded.config, old,
                "an interrupted save at byte {cut} leaves the old copy"
            );
        }
    }
}

#[test]
fn a_corrupted_copy_is_ignored_and_defaults_are_flagged() {
    let config = NodeConfig::factory(&GAS_NODE);
    let mut store = ConfigStore::new(
        RamFlash {
            data: vec![0xFF; 2048],
            budget: None,
        },
        SLOTS,
    );
    store.save(&config).unwrap();
    let mut data = store.release().data;
    data[40] ^= 0x01;
    let mut store = ConfigStore::new(RamFlash { data, budget: None }, SLOTS);
    assert_eq!(store.load().unwrap(), None);
    let core = NodeCore::new(identity(), &GAS_NODE, None, boot(), 0).unwrap();
    assert!(core.status().flags.has(StatusFlags::CONFIG_DEFAULTS));
}
