//! Fixtures for the update tests: a flash with a factory image in slot A, signed images, and
//! the gateway's side of a transfer (offer, chunks with CRC-32C).

// Each test binary compiles this module and uses only part of it.
#![allow(dead_code)]
// BootError carries both slots' reasons by value (the firmware has no heap to box them in).
#![allow(clippy::result_large_err)]

use tianzhong_firmware::sim::PowerCutFlash;
use tianzhong_firmware::update::boot::{self, BootDecision, BootError};
use tianzhong_firmware::update::{
    Accepted, BootPolicy, FlashLayout, Slot, Trust, UpdateError, UpdateReceiver,
};
use tianzhong_protocol::crc::FRAME as CRC32C;
use tianzhong_protocol::image::{HEADER_LEN, HardwareId, ImageFile, ImageHeader, signature};
use tianzhong_protocol::registers::profile::FirmwareVersion;

/// 19 KiB: two 8 KiB slots, two boot-state sectors, one transfer sector.
pub const FLASH_LEN: usize = 19 * 1024;
pub type Flash = PowerCutFlash<FLASH_LEN>;

pub const LAYOUT: FlashLayout = FlashLayout {
    slots: [0, 8 * 1024],
    slot_size: 8 * 1024,
    state: [16 * 1024, 17 * 1024],
    transfer: 18 * 1024,
};

pub const SIGNER: [u8; 32] = [0x11; 32];
pub const OTHER_SIGNER: [u8; 32] = [0x22; 32];
pub const MODEL: &str = "TZ-GAS-01";
pub const REVISION: u16 = 2;
pub const CHUNK: u16 = 256;
pub const POLICY: BootPolicy = BootPolicy { max_attempts: 3 };

pub fn hardware() -> HardwareId {
    HardwareId::new(MODEL, REVISION).unwrap()
}

pub fn trust() -> Trust {
    Trust {
        public_key: signature::public_key(&SIGNER),
        hardware: hardware(),
    }
}

pub fn receiver() -> UpdateReceiver {
    UpdateReceiver::new(LAYOUT, trust())
}

/// A payload of `len` bytes that differs per version.
pub fn payload(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1] ^ seed)
        .collect()
}

pub struct ImageSpec {
    pub model: &'static str,
    pub revision: u16,
    pub version: (u8, u8, u16),
    pub security_counter: u32,
    pub payload_len: usize,
    pub signer: [u8; 32],
    /// 64, or 512 as the STM32F405's images (vector-table alignment).
    pub header_len: u16,
}

impl ImageSpec {
    pub fn new(version: (u8, u8, u16), security_counter: u32) -> ImageSpec {
        ImageSpec {
            model: MODEL,
            revision: REVISION,
            version,
            security_counter,
            payload_len: 5000,
            signer: SIGNER,
            header_len: 512,
        }
    }

    pub fn build(&self) -> Vec<u8> {
        let header = ImageHeader {
            hardware: HardwareId::new(self.model, self.revision).unwrap(),
            version: FirmwareVersion {
                major: self.version.0,
                minor: self.version.1,
                patch: self.version.2,
            },
            security_counter: self.security_counter,
            image_size: 0,
            header_len: self.header_len,
        };
        let payload = payload(self.payload_len, self.version.1);
        let mut out = vec![0u8; ImageFile::len_for(self.header_len, payload.len())];
        ImageFile::build(&header, &payload, &self.signer, &mut out).unwrap();
        out
    }
}

/// The image the node left the factory with: 1.0.0, security counter 1.
pub fn factory_image() -> Vec<u8> {
    ImageSpec::new((1, 0, 0), 1).build()
}

/// The update: 1.1.0, security counter 2.
pub fn new_image() -> Vec<u8> {
    ImageSpec::new((1, 1, 0), 2).build()
}

/// A flash as programmed at the factory: the factory image in slot A, everything else erased.
pub fn factory_flash() -> Box<Flash> {
    let mut f = Box::<Flash>::default();
    let image = factory_image();
    f.bytes_mut()[..image.len()].copy_from_slice(&image);
    f
}

/// The bytes of the image in `slot`, `len` long.
pub fn slot_bytes(f: &Flash, slot: Slot, len: usize) -> &[u8] {
    let start = LAYOUT.slot(slot) as usize;
    &f.bytes()[start..start + len]
}

/// The gateway's side of a transfer.
pub struct Sender<'a> {
    pub image: &'a [u8],
    pub chunk_size: u16,
    /// Chunks sent, repeats included.
    pub sent: u32,
}

impl<'a> Sender<'a> {
    pub fn new(image: &'a [u8]) -> Sender<'a> {
        Sender {
            image,
            chunk_size: CHUNK,
            sent: 0,
        }
    }

    pub fn chunks(&self) -> u32 {
        self.image.len().div_ceil(usize::from(self.chunk_size)) as u32
    }

    pub fn header(&self) -> [u8; HEADER_LEN] {
        self.image[..HEADER_LEN].try_into().unwrap()
    }

    /// The digest the gateway announces: the trailer's.
    pub fn digest(&self) -> [u8; 32] {
        ImageFile::parse(self.image).unwrap().trailer.digest
    }

    pub fn offer(&self, rx: &mut UpdateReceiver, f: &mut Flash) -> Result<Accepted, UpdateError> {
        rx.offer(f, &self.header(), &self.digest(), self.chunk_size)
    }

    pub fn chunk(&self, i: u32) -> (&'a [u8], u32) {
        let size = usize::from(self.chunk_size);
        let start = i as usize * size;
        let bytes = &self.image[start..(start + size).min(self.image.len())];
        (bytes, CRC32C.checksum(bytes))
    }

    /// Sends chunks from `from` to the end; returns the chunk count acknowledged.
    pub fn send_from(
        &mut self,
        rx: &mut UpdateReceiver,
        f: &mut Flash,
        from: u32,
    ) -> Result<u32, (u32, UpdateError)> {
        let mut next = from;
        while next < self.chunks() {
            let (bytes, crc) = self.chunk(next);
            self.sent += 1;
            next = rx
                .chunk(f, next, bytes, crc)
                .map_err(|e| (next, e))?
                .next_chunk;
        }
        Ok(next)
    }

    /// Offer, every chunk from where the node says, finish.
    pub fn run(
        &mut self,
        rx: &mut UpdateReceiver,
        f: &mut Flash,
    ) -> Result<tianzhong_firmware::update::Staged, UpdateError> {
        let accepted = self.offer(rx, f)?;
        self.send_from(rx, f, accepted.next_chunk)
            .map_err(|(_, e)| e)?;
        rx.finish(f)
    }
}

/// A reset: power back on, then the bootloader's decision over the flash as it is, attempt
/// recorded.
pub fn reboot(f: &mut Flash) -> Result<BootDecision, BootError> {
    f.restore_power();
    boot_now(f)
}

/// The bootloader's decision and attempt record, with whatever power failure is armed still
/// armed.
pub fn boot_now(f: &mut Flash) -> Result<BootDecision, BootError> {
    boot::boot(f, &LAYOUT, &trust(), POLICY)
}
