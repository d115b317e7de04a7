//! Streaming an image to the stream file (`0xF004`) with broadcast write-file-record
//! requests: the real RTU slave executes them without a reply, the node takes only the bytes of
//! its own transfer that it needs next, and a node that is not receiving, or receiving another
//! image, changes nothing.

mod update_support;

use tianzhong_firmware::modbus::{Exception, MAX_ADU_LEN, RegisterBank, RtuSlave, RtuTiming};
use tianzhong_firmware::update::Slot;
use tianzhong_firmware::update::modbus_files::{
    FINISH_FILE, FINISH_MAGIC, OFFER_FILE, STATUS_FILE, STREAM_FILE, STREAM_MAX_BYTES, STREAM_UNIT,
    StreamIgnored, UpdateFiles, phase,
};
use tianzhong_protocol::crc::{FRAME as CRC32C, rtu_crc_bytes};
use update_support::*;

const UNIT: u8 = 7;
const CHUNK_SIZE: u16 = 128;

struct Node {
    files: UpdateFiles<&'static mut Flash>,
}

impl RegisterBank for Node {
    fn read_input_registers(&mut self, _: u16, _: &mut [u16]) -> Result<(), Exception> {
        Err(Exception::IllegalDataAddress)
    }
    fn read_holding_registers(&mut self, _: u16, _: &mut [u16]) -> Result<(), Exception> {
        Err(Exception::IllegalDataAddress)
    }
    fn write_holding_registers(&mut self, _: u16, _: &[u16]) -> Result<(), Exception> {
        Err(Exception::IllegalDataAddress)
    }
    fn device_identification(&self, _: u8) -> Option<&str> {
        None
    }
    fn read_file_record(&mut self, f: u16, r: u16, out: &mut [u16]) -> Result<(), Exception> {
        self.files.read_file_record(f, r, out)
    }
    fn write_file_record(&mut self, f: u16, r: u16, data: &[u16]) -> Result<(), Exception> {
        self.files.write_file_record(f, r, data)
    }
}

fn node() -> Node {
    Node {
        files: UpdateFiles::new(receiver(), Box::leak(factory_flash())),
    }
}

fn regs(bytes: &[u8]) -> Vec<u16> {
    bytes
        .chunks(2)
        .map(|p| u16::from_be_bytes([p[0], *p.get(1).unwrap_or(&0xFF)]))
        .collect()
}

fn tag_of(image: &[u8]) -> u16 {
    let d = Sender::new(image).digest();
    u16::from_be_bytes([d[0], d[1]])
}

fn offer(node: &mut Node, image: &[u8]) {
    let s = Sender::new(image);
    let mut offer = regs(&s.header());
    offer.extend(regs(&s.digest()));
    offer.push(CHUNK_SIZE);
    node.files.write_file_record(OFFER_FILE, 0, &offer).unwrap();
}

/// The record and registers of a stream write of `image` from byte `offset`.
fn stream_write(image: &[u8], tag: u16, offset: usize) -> (u16, Vec<u16>) {
    let bytes = &image[offset..(offset + STREAM_MAX_BYTES).min(image.len())];
    let crc = CRC32C.checksum(bytes);
    let mut data = vec![tag];
    data.extend(regs(bytes));
    data.extend([(crc >> 16) as u16, crc as u16]);
    ((offset as u32 / STREAM_UNIT) as u16, data)
}

fn status(node: &mut Node) -> [u16; 8] {
    let mut s = [0u16; 8];
    node.files.read_file_record(STATUS_FILE, 0, &mut s).unwrap();
    s
}

fn next_chunk(s: &[u16; 8]) -> u32 {
    (u32::from(s[1]) << 16) | u32::from(s[2])
}

/// The ADU of a write-file-record request to `unit` with one sub-request.
fn fc21_adu(unit: u8, file: u16, record: u16, data: &[u16]) -> Vec<u8> {
    let mut adu = vec![unit, 0x15, (7 + 2 * data.len()) as u8, 0x06];
    for v in [file, record, data.len() as u16].iter().chain(data) {
        adu.extend_from_slice(&v.to_be_bytes());
    }
    let crc = rtu_crc_bytes(&adu);
    adu.extend_from_slice(&crc);
    assert!(adu.len() <= MAX_ADU_LEN);
    adu
}

#[test]
fn a_broadcast_stream_is_executed_without_a_reply_and_stages_the_image() {
    let image = new_image();
    let mut node = node();
    offer(&mut node, &image);
    let mut slave = RtuSlave::new(UNIT, RtuTiming::from_baud(115_200)).unwrap();
    let tag = tag_of(&image);
    let mut now = 1_000u64;
    let mut frames = 0;
    for offset in (0..image.len()).step_by(STREAM_MAX_BYTES) {
        let (record, data) = stream_write(&image, tag, offset);
        let adu = fc21_adu(0, STREAM_FILE, record, &data);
        // Bytes as they arrive at 115200 baud: 95 µs apart.
        for &b in &adu {
            now += 95;
            slave.on_byte(b, now);
        }
        let deadline = slave.next_deadline().unwrap();
        let mut reply = [0u8; MAX_ADU_LEN];
        assert_eq!(
            slave.poll(deadline, &mut node, &mut reply),
            None,
            "no reply to a broadcast"
        );
        now = deadline;
        frames += 1;
    }
    assert_eq!(slave.stats().broadcasts, frames);
    assert_eq!(slave.stats().responses, 0);
    let chunks = image.len().div_ceil(usize::from(CHUNK_SIZE)) as u32;
    let s = status(&mut node);
    assert_eq!((s[0], next_chunk(&s), s[5]), (phase::RECEIVING, chunks, 0));
    node.files
        .write_file_record(FINISH_FILE, 0, &[FINISH_MAGIC])
        .unwrap();
    assert_eq!(status(&mut node)[0], phase::STAGED);
    let flash = node.files.release().1;
    assert_eq!(slot_bytes(flash, Slot::B, image.len()), &image[..]);
}

#[test]
fn another_sessions_tag_is_ignored_and_changes_nothing() {
    let image = new_image();
    let mut node = node();
    offer(&mut node, &image);
    let before = node.files.flash_mut().bytes().to_vec();
    let (record, data) = stream_write(&image, tag_of(&image) ^ 0x0100, 0);
    assert_eq!(
        node.files.stream_check(record, &data),
        Some(StreamIgnored::OtherSession)
    );
    assert_eq!(
        node.files.write_file_record(STREAM_FILE, record, &data),
        Err(Exception::IllegalDataValue),
        "an addressed write is told"
    );
    let s = status(&mut node);
    assert_eq!((s[0], next_chunk(&s), s[5]), (phase::RECEIVING, 0, 0));
    assert_eq!(node.files.flash_mut().bytes(), &before[..]);
}

#[test]
fn out_of_order_bytes_are_ignored_until_the_gateway_goes_back() {
    let image = new_image();
    let tag = tag_of(&image);
    let mut node = node();
    offer(&mut node, &image);
    // Frame 0 (bytes 0..224) is taken: chunk 0 written, 96 bytes of chunk 1 collected.
    let (r, d) = stream_write(&image, tag, 0);
    assert_eq!(node.files.stream_check(r, &d), None);
    assert_eq!(next_chunk(&status(&mut node)), 1);
    // Frame 1 is lost; frame 2 (bytes 448..) does not follow what the node has.
    let (r, d) = stream_write(&image, tag, 2 * STREAM_MAX_BYTES);
    assert_eq!(node.files.stream_check(r, &d), Some(StreamIgnored::NotNext));
    // A repeat of frame 0 is not what it needs either.
    let (r, d) = stream_write(&image, tag, 0);
    assert_eq!(node.files.stream_check(r, &d), Some(StreamIgnored::NotNext));
    assert_eq!(next_chunk(&status(&mut node)), 1);
    // A damaged write (CRC-32C of other bytes) is ignored.
    let (r, mut d) = stream_write(&image, tag, STREAM_MAX_BYTES);
    d[3] ^= 0x0001;
    assert_eq!(
        node.files.stream_check(r, &d),
        Some(StreamIgnored::Malformed)
    );
    // Going back to the start of chunk 1 drops the 96 bytes collected and goes on.
    let (r, d) = stream_write(&image, tag, usize::from(CHUNK_SIZE));
    assert_eq!(node.files.stream_check(r, &d), None);
    // Bytes 128..352: chunk 1 is in, 96 bytes of chunk 2 collected.
    assert_eq!(next_chunk(&status(&mut node)), 2);
    let s = status(&mut node);
    assert_eq!((s[0], s[5]), (phase::RECEIVING, 0), "no refusal recorded");
    // And from the node's place the rest streams in.
    let mut offset = 352;
    while offset < image.len() {
        let (r, d) = stream_write(&image, tag, offset);
        assert_eq!(node.files.stream_check(r, &d), None, "at {offset}");
        offset += STREAM_MAX_BYTES;
    }
    node.files
        .write_file_record(FINISH_FILE, 0, &[FINISH_MAGIC])
        .unwrap();
    assert_eq!(status(&mut node)[0], phase::STAGED);
}

#[test]
fn a_node_not_receiving_ignores_a_broadcast_stream() {
    let image = new_image();
    let mut idle = node();
    let before = idle.files.flash_mut().bytes().to_vec();
    let mut slave = RtuSlave::new(UNIT + 1, RtuTiming::from_baud(115_200)).unwrap();
    let (record, data) = stream_write(&image, tag_of(&image), 0);
    slave.on_bytes(&fc21_adu(0, STREAM_FILE, record, &data), 1_000);
    let deadline = slave.next_deadline().unwrap();
    let mut reply = [0u8; MAX_ADU_LEN];
    assert_eq!(slave.poll(deadline, &mut idle, &mut reply), None);
    assert_eq!(slave.stats().broadcasts, 1);
    assert_eq!(
        idle.files.stream_check(record, &data),
        Some(StreamIgnored::NotReceiving)
    );
    // Phase idle, no reason recorded, flash untouched: it did not act on it.
    assert_eq!(status(&mut idle)[..6], [phase::IDLE, 0, 0, 0, 0, 0]);
    assert_eq!(idle.files.flash_mut().bytes(), &before[..]);
}
