//! Signed A/B firmware updates: the node's update receiver, its boot state and the boot
//! decision, all generic over embedded-storage's [`NorFlash`](embedded_storage::nor_flash::NorFlash).
//!
//! Written here rather than taken from embassy-boot because embassy-boot swaps images into one
//! executable partition and keeps its own state format; Tianzhong boots either of two slots in
//! place (MCUboot's "direct-XIP" model: each slot's image is linked for its own address), keeps
//! the gateway's chunked, resumable transfer in flash, and checks the protocol crate's
//! [signed image format](tianzhong_protocol::image). Hashing and signature checks are the
//! protocol crate's (sha2, ed25519-dalek `verify_strict`); nothing cryptographic is ours.
//!
//! # Module map
//!
//! | module | what |
//! |---|---|
//! | [`layout`] | where slots, boot-state sectors and the transfer sector are; [`Slot`] |
//! | [`flash`] | aligned reads, padded writes and erased checks over any `NorFlash` |
//! | [`boot_state`] | the boot-state log: new, trial (with its boot-attempt count), confirmed |
//! | [`verify`] | checking the image in a slot straight from flash: header, hardware, SHA-256, signature |
//! | [`transfer`] | the transfer sector: which image is being received, and the last chunk written |
//! | [`receiver`] | [`UpdateReceiver`]: offer, chunks with CRC, resume, final checks, staging |
//! | [`boot`] | [`decide`](boot::decide): which slot to boot, as a function of flash contents |
//! | [`handoff`] | the bootloader's last checks before it jumps: the chosen image's vector table fits its slot |
//! | [`trial`] | the trial's time limit: confirm on the gateway's health poll, or reset when the limit passes |
//! | [`session`] | what every transport keeps beside the receiver: phase, last refusal and its [reason](tianzhong_protocol::update::Reason) |
//! | [`modbus_files`] | the receiver behind Modbus file records (21 write, 20 read): offer, chunks, finish, status |
//! | [`mqtt`] | the receiver behind MQTT update messages: a request in, a report out, confirm included |
//!
//! # Life of an update
//!
//! 1. The gateway offers an image: its header, its SHA-256 and a chunk size. The receiver
//!    refuses a wrong hardware model, a lower security counter or an image too large for a
//!    slot before it erases anything. It resumes a transfer of the same image from the last
//!    chunk recorded in flash, or starts one in the slot the node does not run from.
//! 2. Chunks arrive in order, each with its CRC-32C. Each is written, then recorded.
//! 3. When all are in, the receiver checks size, hash and signature from flash, and only then
//!    appends *stage* to the boot state: the image is **new**.
//! 4. On the next boot the bootloader's [`decide`](boot::decide) picks the new image, and a
//!    boot attempt is recorded: the image is on **trial**.
//! 5. Once the gateway's health poll of the new image succeeds, the application appends
//!    *confirm*: the image is **confirmed**. An image on trial that is not confirmed within
//!    [`TrialLimit`] of its boot resets the node ([`trial`]), which counts as a failed attempt;
//!    a trial image not confirmed within the policy's boot attempts is abandoned and the node
//!    boots the confirmed image again.
//!
//! A power cut at any flash operation leaves a slot that the bootloader either verifies
//! completely or does not boot, and a boot state whose records are each whole or ignored; the
//! power-cut drill in `tests/update_power_cut.rs` cuts the power at every single write and
//! erase of an update in turn.

pub mod boot;
pub mod boot_state;
pub mod flash;
pub mod handoff;
pub mod layout;
pub mod modbus_files;
pub mod mqtt;
pub mod receiver;
pub mod session;
pub mod transfer;
pub mod trial;
pub mod verify;

pub use boot::{BootDecision, BootError, BootKind, BootPolicy};
pub use boot_state::{BootState, Trial};
pub use handoff::{Entry, HandoffError, Target};
pub use layout::{FlashLayout, LayoutError, Slot};
pub use receiver::{Accepted, ChunkAck, Staged, UpdateError, UpdateReceiver};
pub use trial::{TrialLimit, TrialStep, TrialWatch};
pub use verify::{SlotError, Trust};
