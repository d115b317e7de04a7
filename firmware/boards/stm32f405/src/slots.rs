//! This board's flash map and the images it runs, shared by the bootloader and the
//! application.
//!
//! # Flash map (STM32F405RG, 1 MiB)
//!
//! | sector | address | size | region | [`LAYOUT`] offset |
//! |---|---|---|---|---|
//! | 0–3 | `0x0800_0000` | 4 × 16 KiB | bootloader (`BOOTLOADER` in `memory.x`) | — |
//! | 4 | `0x0801_0000` | 64 KiB | spare | — |
//! | 5 | `0x0802_0000` | 128 KiB | boot state 0 | `state[0]` = `0x2_0000` |
//! | 6 | `0x0804_0000` | 128 KiB | boot state 1 | `state[1]` = `0x4_0000` |
//! | 7 | `0x0806_0000` | 128 KiB | transfer (the image being received) | `transfer` = `0x6_0000` |
//! | 8 | `0x0808_0000` | 128 KiB | firmware slot A (the factory image) | `slots[0]` = `0x8_0000` |
//! | 9 | `0x080A_0000` | 128 KiB | firmware slot B | `slots[1]` = `0xA_0000` |
//! | 10 | `0x080C_0000` | 128 KiB | configuration copy A | — |
//! | 11 | `0x080E_0000` | 128 KiB | configuration copy B | — |
//!
//! # A firmware slot
//!
//! | offset | bytes | content |
//! |---|---|---|
//! | 0 | 64 | image header: hardware [`MODEL`] rev. [`HARDWARE_REVISION`], version, security counter, size |
//! | 64 | 448 | zeros: the header padded to 512 bytes (`tianzhong firmware sign --header-len 512`, the default) |
//! | 512 | ≤ 64 KiB (the budget) | the application as linked for this slot (`SLOT_A`/`SLOT_B` in `memory.x`), vector table first: VTOR needs 512-byte alignment for the F405's 98 vectors |
//! | 512 + size | 148 | trailer: key hash, SHA-256, ed25519 signature |
//! | … | | erased (`0xFF`) |

use tianzhong_firmware::update::FlashLayout;

/// CPU address of flash offset 0.
pub const FLASH_BASE: u32 = 0x0800_0000;
/// Bytes of flash.
#[cfg_attr(not(feature = "qemu"), allow(dead_code))] // the HAL sizes the flash itself
pub const FLASH_LEN: usize = 1024 * 1024;

/// Where the update regions are, as offsets from [`FLASH_BASE`].
pub const LAYOUT: FlashLayout = FlashLayout {
    slots: [0x8_0000, 0xA_0000],
    slot_size: 0x2_0000,
    state: [0x2_0000, 0x4_0000],
    transfer: 0x6_0000,
};

/// The hardware model images for this board must name: the node profile's model.
pub const MODEL: &str = if cfg!(feature = "qemu") {
    "TZ-NODE-F4-QEMU"
} else {
    "TZ-NODE-F4"
};

/// The hardware revision images for this board must name.
pub const HARDWARE_REVISION: u16 = 1;
