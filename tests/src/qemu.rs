//! The STM32F405 board under `qemu-system-arm -M netduinoplus2`: building the board binaries
//! once per test process, signing the application with the real signing code, composing the
//! whole 1 MiB flash (bootloader, boot state, slots), and booting it with USART1 on a TCP
//! socket.
//!
//! # Flash as composed
//!
//! | region | content |
//! |---|---|
//! | bootloader, sectors 0–3 | the QEMU bootloader's flat binary (`objcopy -O binary`) |
//! | boot state, sectors 5–6 | records appended by the firmware crate's own [`BootState`] on a host [`RamNorFlash`] with the chip's geometry; erased (`0xFF`) when nothing is staged |
//! | slot A, slot B | signed images (`tianzhong firmware sign`'s code), or erased |
//! | everything else | erased (`0xFF`) |
//!
//! QEMU loads the file at `0x0800_0000` with its generic loader device; the CPU takes its
//! reset vector from the alias at address 0, as the chip does.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use embedded_storage::nor_flash::{
    ErrorType, NorFlash, NorFlashError, NorFlashErrorKind, ReadNorFlash,
};
use tianzhong_firmware::update::{BootState, FlashLayout, Slot};
use tianzhong_gateway::firmware_cli::{self, KeyKind, SignRequest};
use tianzhong_protocol::registers::profile::FirmwareVersion;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// The board crate, from the workspace root.
pub const BOARD: &str = "firmware/boards/stm32f405";
/// What the application prints on USART1 once it receives.
pub const READY: &[u8] = b"TIANZHONG READY\r\n";
/// The QEMU variant's hardware model: what images for it must name.
pub const MODEL: &str = "TZ-NODE-F4-QEMU";
/// Bytes of the chip's flash.
pub const FLASH_LEN: usize = 1024 * 1024;
/// The board's update regions (the board crate's `slots::LAYOUT`; `memory.x` has the map).
pub const LAYOUT: FlashLayout = FlashLayout {
    slots: [0x8_0000, 0xA_0000],
    slot_size: 0x2_0000,
    state: [0x2_0000, 0x4_0000],
    transfer: 0x6_0000,
};
/// Where an image's payload starts in its slot: the vector table's 512-byte alignment.
pub const HEADER_LEN: u16 = 512;

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The TEST signing key the QEMU bootloader trusts when built without `TZ_BOOT_PUBKEY`.
pub fn test_key() -> PathBuf {
    workspace_root().join(BOARD).join("keys/test-signing.key")
}

/// The QEMU variant's three binaries, as built.
#[derive(Clone, Debug)]
pub struct BoardBuild {
    /// The application linked for slot A (ELF).
    pub app_a: PathBuf,
    /// The application linked for slot B (ELF).
    pub app_b: PathBuf,
    /// The bootloader (ELF).
    pub bootloader: PathBuf,
}

/// Builds the QEMU variant (release) once per test process: one cargo run gives the
/// application for both slots and the bootloader.
pub fn build_board() -> &'static BoardBuild {
    static BUILD: OnceLock<BoardBuild> = OnceLock::new();
    BUILD.get_or_init(|| {
        let board = workspace_root().join(BOARD);
        let status = std::process::Command::new(env!("CARGO"))
            .args(["build", "--release", "--features", "qemu"])
            .current_dir(&board)
            // The outer cargo's target settings must not leak into the board's own build.
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("CARGO_BUILD_TARGET")
            .env_remove("TZ_BOOT_PUBKEY")
            .status()
            .expect("run cargo to build the QEMU firmware");
        assert!(status.success(), "building the QEMU firmware failed");
        let out = board.join("target/thumbv7em-none-eabihf/release");
        BoardBuild {
            app_a: out.join("tianzhong-board-stm32f405"),
            app_b: out.join("tianzhong-board-stm32f405-slot-b"),
            bootloader: out.join("tianzhong-bootloader-stm32f405"),
        }
    })
}

/// The flat binary of an ELF from its lowest loaded address: `arm-none-eabi-objcopy -O
/// binary`, what `tianzhong firmware sign` takes as the payload.
pub fn flat_binary(elf: &Path) -> Vec<u8> {
    let out = tempfile_path(elf, "bin");
    let status = std::process::Command::new("arm-none-eabi-objcopy")
        .args(["-O", "binary"])
        .arg(elf)
        .arg(&out)
        .status()
        .expect("arm-none-eabi-objcopy must be installed (Debian package binutils-arm-none-eabi)");
    assert!(status.success(), "objcopy {}", elf.display());
    let bytes = std::fs::read(&out).expect("read the flat binary");
    let _ = std::fs::remove_file(&out);
    bytes
}

fn tempfile_path(like: &Path, ext: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::env::temp_dir().join(format!(
        "tz-{}-{}-{n}.{ext}",
        std::process::id(),
        like.file_name().and_then(|f| f.to_str()).unwrap_or("image")
    ))
}

/// Signs `payload` for the QEMU board as `version`, with the private key in `key_file`.
pub fn sign(payload: &[u8], version: FirmwareVersion, key_file: &Path) -> Vec<u8> {
    let secret = firmware_cli::read_key(KeyKind::Private, key_file).expect("read the signing key");
    sign_with(payload, version, &secret)
}

/// Signs `payload` for the QEMU board as `version`, with the RFC 8032 secret `secret`.
pub fn sign_with(payload: &[u8], version: FirmwareVersion, secret: &[u8; 32]) -> Vec<u8> {
    let request = SignRequest {
        model: MODEL.into(),
        revision: 1,
        version,
        security_counter: 1,
        header_len: HEADER_LEN,
    };
    firmware_cli::sign(&request, payload, secret).expect("sign the image")
}

/// Host RAM with the STM32F405's flash geometry as the update code sees it: 1 MiB, 128 KiB
/// erase units, byte writes that only clear bits.
#[derive(Clone)]
pub struct RamNorFlash(pub Vec<u8>);

impl Default for RamNorFlash {
    fn default() -> RamNorFlash {
        RamNorFlash(vec![0xFF; FLASH_LEN])
    }
}

/// An access outside the flash or not aligned to its erase units.
#[derive(Debug)]
pub struct RamFlashError(NorFlashErrorKind);

impl NorFlashError for RamFlashError {
    fn kind(&self) -> NorFlashErrorKind {
        self.0
    }
}

impl ErrorType for RamNorFlash {
    type Error = RamFlashError;
}

impl RamNorFlash {
    fn range(&self, offset: u32, len: usize) -> Result<std::ops::Range<usize>, RamFlashError> {
        let start = offset as usize;
        match start.checked_add(len) {
            Some(end) if end <= self.0.len() => Ok(start..end),
            _ => Err(RamFlashError(NorFlashErrorKind::OutOfBounds)),
        }
    }
}

impl ReadNorFlash for RamNorFlash {
    const READ_SIZE: usize = 1;

    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), RamFlashError> {
        let r = self.range(offset, bytes.len())?;
        bytes.copy_from_slice(&self.0[r]);
        Ok(())
    }

    fn capacity(&self) -> usize {
        self.0.len()
    }
}

impl NorFlash for RamNorFlash {
    const WRITE_SIZE: usize = 1;
    const ERASE_SIZE: usize = 128 * 1024;

    fn erase(&mut self, from: u32, to: u32) -> Result<(), RamFlashError> {
        if !(from as usize).is_multiple_of(Self::ERASE_SIZE)
            || !(to as usize).is_multiple_of(Self::ERASE_SIZE)
        {
            return Err(RamFlashError(NorFlashErrorKind::NotAligned));
        }
        let r = self.range(from, to.saturating_sub(from) as usize)?;
        self.0[r].fill(0xFF);
        Ok(())
    }

    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), RamFlashError> {
        let r = self.range(offset, bytes.len())?;
        for (cell, b) in self.0[r].iter_mut().zip(bytes) {
            *cell &= b;
        }
        Ok(())
    }
}

/// The node's whole flash, composed on the host.
pub struct FlashImage {
    flash: RamNorFlash,
}

impl FlashImage {
    /// Erased flash with `bootloader` (a flat binary) at offset 0.
    pub fn with_bootloader(bootloader: &[u8]) -> FlashImage {
        assert!(bootloader.len() <= 64 * 1024, "the bootloader's 64 KiB");
        let mut flash = RamNorFlash::default();
        flash.0[..bootloader.len()].copy_from_slice(bootloader);
        FlashImage { flash }
    }

    /// Writes a signed image into `slot`.
    pub fn put(&mut self, slot: Slot, image: &[u8]) -> &mut FlashImage {
        assert!(image.len() <= LAYOUT.slot_size as usize);
        let at = LAYOUT.slot(slot);
        self.flash.write(at, image).expect("write the slot");
        self
    }

    /// Appends *stage* for `slot` to the boot state, with the firmware's own boot-state code.
    pub fn stage(&mut self, slot: Slot) -> &mut FlashImage {
        let mut state = BootState::read(&mut self.flash, &LAYOUT).expect("read the boot state");
        state
            .stage(&mut self.flash, &LAYOUT, slot)
            .expect("stage the slot");
        self
    }

    /// Flips one bit of the byte at `offset` in `slot` (a failing cell, or tampering).
    pub fn flip(&mut self, slot: Slot, offset: u32) -> &mut FlashImage {
        let at = (LAYOUT.slot(slot) + offset) as usize;
        self.flash.0[at] ^= 0x01;
        self
    }

    /// The flash as the node's boot would see it.
    pub fn flash(&mut self) -> &mut RamNorFlash {
        &mut self.flash
    }

    /// Writes the whole flash to a temporary file for QEMU's loader.
    pub fn write_file(&self) -> PathBuf {
        let path = tempfile_path(Path::new("flash"), "bin");
        std::fs::write(&path, &self.flash.0).expect("write the flash file");
        path
    }
}

/// A QEMU process, killed when dropped, and its flash file, removed.
pub struct Qemu {
    child: Child,
    flash_file: PathBuf,
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_file(&self.flash_file);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Powers up a node whose flash is `flash`, with USART1 on a TCP server socket (nodelay, or
/// QEMU batches each exchange for ~44 ms). Returns the connected stream: nothing is lost, as
/// QEMU waits for the connection before it starts the CPU.
pub async fn power_up(flash: &FlashImage) -> (Qemu, TcpStream) {
    let flash_file = flash.write_file();
    let port = free_port();
    let child = Command::new("qemu-system-arm")
        .args([
            "-M",
            "netduinoplus2",
            "-display",
            "none",
            "-monitor",
            "none",
            "-serial",
        ])
        .arg(format!("tcp:127.0.0.1:{port},server=on,wait=on,nodelay=on"))
        .arg("-device")
        .arg(format!(
            "loader,file={},addr=0x08000000",
            flash_file.display()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("qemu-system-arm must be installed (Debian package qemu-system-arm)");
    let qemu = Qemu { child, flash_file };
    for _ in 0..200 {
        if let Ok(s) = TcpStream::connect(("127.0.0.1", port)).await {
            s.set_nodelay(true).unwrap();
            return (qemu, s);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("QEMU's serial socket never opened");
}

/// Reads the serial line until it ends with `marker`, for at most `limit`; returns what was
/// read, or `Err` with what was read when the time ran out.
pub async fn read_until(
    stream: &mut TcpStream,
    marker: &[u8],
    limit: Duration,
) -> Result<String, String> {
    let mut seen = Vec::new();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(limit, async {
        while !seen.ends_with(marker) {
            if stream.read_exact(&mut byte).await.is_err() {
                return;
            }
            seen.push(byte[0]);
        }
    })
    .await;
    let text = String::from_utf8_lossy(&seen).into_owned();
    match read {
        Ok(()) if seen.ends_with(marker) => Ok(text),
        _ => Err(text),
    }
}

/// Powers up `flash` and waits for the application's ready marker (QEMU drops what the USART
/// receives before the firmware enables it). Returns the serial text before it too: the
/// bootloader's line.
pub async fn boot_to_ready(flash: &FlashImage) -> (Qemu, TcpStream, String) {
    let (qemu, mut stream) = power_up(flash).await;
    match read_until(&mut stream, READY, Duration::from_secs(30)).await {
        Ok(text) => (qemu, stream, text),
        Err(text) => panic!("no ready marker from the firmware within 30 s; serial: {text:?}"),
    }
}

/// A node with the QEMU application signed as `version` in slot A, nothing staged: what
/// `qemu_node` runs.
pub fn factory_flash(version: FirmwareVersion) -> FlashImage {
    let build = build_board();
    let mut flash = FlashImage::with_bootloader(&flat_binary(&build.bootloader));
    let image = sign(&flat_binary(&build.app_a), version, &test_key());
    flash.put(Slot::A, &image);
    flash
}
