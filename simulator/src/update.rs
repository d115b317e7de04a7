//! Firmware updates on a virtual node: the firmware's real update receiver, boot state and
//! boot decision on simulated NOR flash whose power can be cut at any write or erase.
//!
//! A node gets its update flash on the first file-record request (function 20 or 21) or, for an
//! MQTT node, the first message on its `fwupdate` topic, so a fleet that is never updated costs
//! nothing. Both transports drive the same update session ([`NodeUpdate::mqtt`] runs the
//! firmware's MQTT handler over the session behind the update files). Its slot A then holds a factory image, version
//! 1.0.0, signed with the [simulator's key](SIM_SIGNING_SECRET) for the node's model, hardware
//! revision 1. When an image is staged the node resets into it (as the firmware does after a
//! successful finish), reports the new version in the node profile's identity block (and, over
//! MQTT, in its online status), and confirms it on the gateway's health check: over Modbus the
//! first read of its registers after that boot, over MQTT the gateway's confirm message.
//!
//! # Flash
//!
//! | region | offset | size |
//! |---|---|---|
//! | slot A | 0 | 32 KiB |
//! | slot B | 32 KiB | 32 KiB |
//! | boot state 0, 1 | 64 KiB, 65 KiB | 1 KiB each |
//! | transfer | 66 KiB | 1 KiB |

use tianzhong_firmware::modbus::{Exception, RegisterBank};
use tianzhong_firmware::sim::PowerCutFlash;
pub use tianzhong_firmware::update::BootKind;
use tianzhong_firmware::update::boot::{self, BootDecision};
use tianzhong_firmware::update::modbus_files::UpdateFiles;
use tianzhong_firmware::update::mqtt::{self, Handled};
use tianzhong_firmware::update::session::Phase;
use tianzhong_firmware::update::{BootPolicy, FlashLayout, Trust, UpdateReceiver};
use tianzhong_firmware::update::{TrialLimit, TrialStep, TrialWatch};
use tianzhong_protocol::image::signature;
use tianzhong_protocol::image::{HardwareId, ImageFile, ImageHeader};
use tianzhong_protocol::registers::profile::FirmwareVersion;

/// Bytes of a virtual node's update flash.
pub const SIM_FLASH_LEN: usize = 67 * 1024;
/// The virtual node's update flash.
pub type SimUpdateFlash = PowerCutFlash<SIM_FLASH_LEN>;

/// Where the update regions are.
pub const SIM_LAYOUT: FlashLayout = FlashLayout {
    slots: [0, 32 * 1024],
    slot_size: 32 * 1024,
    state: [64 * 1024, 65 * 1024],
    transfer: 66 * 1024,
};

/// The simulator's firmware signing key (RFC 8032 secret): public, for simulated fleets only.
/// `tianzhong firmware sign` takes it from a key file holding these bytes in hex.
pub const SIM_SIGNING_SECRET: [u8; 32] = *b"tianzhong simulator signing key!";

/// The hardware revision of every virtual node.
pub const SIM_HARDWARE_REVISION: u16 = 1;

/// Trial boots before a virtual node reverts an unconfirmed image.
pub const SIM_POLICY: BootPolicy = BootPolicy { max_attempts: 3 };

/// How long, in simulated time, an image on trial runs before a virtual node that was not
/// polled resets, as the board firmware does ([`tianzhong_firmware::update::trial`]).
pub const SIM_TRIAL_LIMIT: TrialLimit = TrialLimit { seconds: 300 };

/// A signed image of `payload_len` deterministic bytes for `model`, built with the simulator's
/// key: what tests and the simulator's factory flash use.
pub fn sim_image(
    model: &str,
    version: FirmwareVersion,
    security_counter: u32,
    payload_len: usize,
) -> Vec<u8> {
    let header = ImageHeader {
        hardware: HardwareId::new(model, SIM_HARDWARE_REVISION)
            .unwrap_or_else(|_| HardwareId::new("TZ-SIM", SIM_HARDWARE_REVISION).expect("valid")),
        version,
        security_counter,
        image_size: 0,
        header_len: 512,
    };
    let payload: Vec<u8> = (0..payload_len)
        .map(|i| (i as u8).wrapping_mul(31) ^ version.minor ^ version.patch as u8)
        .collect();
    let mut out = vec![0u8; ImageFile::len_for(512, payload.len())];
    // Cannot fail: the buffer is sized for the image and the header's fields are valid.
    let _ = ImageFile::build(&header, &payload, &SIM_SIGNING_SECRET, &mut out);
    out
}

/// The update side of one virtual node.
#[derive(Debug)]
pub struct NodeUpdate {
    files: UpdateFiles<SimUpdateFlash>,
    trust: Trust,
    /// The last boot's decision.
    pub running: BootDecision,
    /// Power cuts that hit this node's flash.
    pub power_cuts: u32,
}

impl NodeUpdate {
    /// Update flash for a node of `model`, slot A holding the factory image 1.0.0.
    pub fn new(model: &str) -> NodeUpdate {
        let mut flash = SimUpdateFlash::default();
        let factory = sim_image(
            model,
            FirmwareVersion {
                major: 1,
                minor: 0,
                patch: 0,
            },
            1,
            1024,
        );
        flash.bytes_mut()[..factory.len()].copy_from_slice(&factory);
        let trust = Trust {
            public_key: signature::public_key(&SIM_SIGNING_SECRET),
            hardware: ImageFile::parse(&factory)
                .map(|i| i.header.hardware)
                .expect("the factory image parses"),
        };
        let running = boot::boot(&mut flash, &SIM_LAYOUT, &trust, SIM_POLICY)
            .expect("the factory image boots");
        NodeUpdate {
            files: UpdateFiles::new(UpdateReceiver::new(SIM_LAYOUT, trust.clone()), flash),
            trust,
            running,
            power_cuts: 0,
        }
    }

    /// The version of the image running.
    pub fn version(&self) -> FirmwareVersion {
        self.running.header.version
    }

    /// Whether the image on trial, booted at `booted_at_ms`, has gone [`SIM_TRIAL_LIMIT`]
    /// without its health poll at `now_ms`: the node must reset, which the bootloader counts
    /// as a failed attempt.
    pub fn trial_out_of_time(&self, booted_at_ms: u64, now_ms: u64) -> bool {
        let d = &self.running;
        matches!(d.kind, BootKind::Trial { .. })
            && TrialWatch::start(&d.state, d.slot, booted_at_ms, SIM_TRIAL_LIMIT).tick(now_ms)
                == TrialStep::Reset
    }

    /// Arms a power failure at the `k`-th flash write or erase from now.
    pub fn cut_power_at(&mut self, k: u64) {
        self.files.flash_mut().cut_at(k);
    }

    /// Flips a bit of the image received into the slot that is not running (its first
    /// payload byte), as a failing flash cell would: the finish's check then refuses it.
    pub fn damage_received(&mut self) {
        let start = SIM_LAYOUT.slot(self.running.slot.other()) as usize;
        let flash = self.files.flash_mut().bytes_mut();
        let header_len = ImageHeader::parse(&flash[start..])
            .map(|h| usize::from(h.header_len))
            .unwrap_or(512);
        if let Some(b) = flash.get_mut(start + header_len) {
            *b ^= 0x01;
        }
    }

    /// The flash, for inspection.
    pub fn flash(&mut self) -> &mut SimUpdateFlash {
        self.files.flash_mut()
    }

    /// A reset: power back, the bootloader's decision, a fresh receiver (nothing survives but
    /// the flash). Returns the decision.
    pub fn reset(&mut self) -> &BootDecision {
        self.files.reset();
        let flash = self.files.flash_mut();
        flash.restore_power();
        // A node whose flash holds no bootable image keeps its last decision (the drills show
        // that this does not happen).
        if let Ok(d) = boot::boot(flash, &SIM_LAYOUT, &self.trust, SIM_POLICY) {
            self.running = d;
        }
        &self.running
    }

    /// Confirms a trial image: called on the first successful read after a trial boot.
    pub fn confirm_if_trial(&mut self) {
        if let BootKind::Trial { .. } = self.running.kind {
            let slot = self.running.slot;
            let mut state = self.running.state;
            if state
                .confirm(self.files.flash_mut(), &SIM_LAYOUT, slot)
                .is_ok()
            {
                self.running.kind = BootKind::Confirmed;
                self.running.state = state;
            }
        }
    }

    /// The node core's registers `core` with this node's update files beside them.
    pub fn bank<'a, B: RegisterBank>(&'a mut self, core: &'a mut B) -> UpdateBank<'a, B> {
        UpdateBank { core, update: self }
    }

    /// Whether the node must reset now: the power failed, or an image was staged.
    pub fn must_reset(&mut self) -> bool {
        self.power_failed() || self.files.session_mut().phase() == Phase::Staged
    }

    /// Whether the power failed during the last flash operations (the node did not answer).
    pub fn power_failed(&mut self) -> bool {
        self.files.flash_mut().power_failed()
    }

    /// A message from the node's `fwupdate` topic, taken by the firmware's MQTT handler over the
    /// session the update files also drive.
    pub fn mqtt(&mut self, payload: &[u8]) -> Handled {
        mqtt::handle_payload(self.files.session_mut(), &mut self.running, payload)
    }
}

/// The node core's registers with the update files beside them.
pub struct UpdateBank<'a, B> {
    core: &'a mut B,
    update: &'a mut NodeUpdate,
}

impl<B: RegisterBank> RegisterBank for UpdateBank<'_, B> {
    fn read_input_registers(&mut self, address: u16, out: &mut [u16]) -> Result<(), Exception> {
        self.core.read_input_registers(address, out)
    }
    fn read_holding_registers(&mut self, address: u16, out: &mut [u16]) -> Result<(), Exception> {
        self.core.read_holding_registers(address, out)
    }
    fn write_holding_registers(&mut self, address: u16, values: &[u16]) -> Result<(), Exception> {
        self.core.write_holding_registers(address, values)
    }
    fn device_identification(&self, object_id: u8) -> Option<&str> {
        self.core.device_identification(object_id)
    }
    fn read_file_record(
        &mut self,
        file: u16,
        record: u16,
        out: &mut [u16],
    ) -> Result<(), Exception> {
        self.update.files.read_file_record(file, record, out)
    }
    fn write_file_record(&mut self, file: u16, record: u16, data: &[u16]) -> Result<(), Exception> {
        self.update.files.write_file_record(file, record, data)
    }
}
