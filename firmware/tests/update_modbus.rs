//! A firmware update over Modbus RTU: the gateway's frames (function 21 write file record,
//! function 20 read file record, CRC-16 per frame, CRC-32C per chunk) through the real RTU
//! slave into the node's update files, the receiver and a simulated flash; the node then boots
//! the new image. Includes a cut link mid-image, lost replies, and a refusal read back from the
//! status file.

mod update_support;

use tianzhong_firmware::modbus::{Exception, MAX_ADU_LEN, RegisterBank, RtuSlave, RtuTiming};
use tianzhong_firmware::update::modbus_files::{
    CHUNK_FILE, FINISH_FILE, FINISH_MAGIC, OFFER_FILE, STATUS_FILE, UpdateFiles, phase,
};
use tianzhong_firmware::update::{BootKind, Slot};
use tianzhong_protocol::crc::{FRAME as CRC32C, rtu_crc_bytes};
use update_support::*;

const UNIT: u8 = 7;
const BAUD: u32 = 115_200;
const MODBUS_CHUNK: u16 = 128;

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
    fn read_file_record(
        &mut self,
        file: u16,
        record: u16,
        out: &mut [u16],
    ) -> Result<(), Exception> {
        self.files.read_file_record(file, record, out)
    }
    fn write_file_record(&mut self, file: u16, record: u16, data: &[u16]) -> Result<(), Exception> {
        self.files.write_file_record(file, record, data)
    }
}

/// The RTU line: the gateway's side writes ADUs, the slave answers after t3.5.
struct Line {
    slave: RtuSlave,
    node: Node,
    now_us: u64,
    /// Characters sent both ways, and exchanges made.
    chars: u64,
    exchanges: u64,
    /// Drop the next n requests (a cut link: the node hears nothing).
    drop_requests: u32,
    /// Drop the next n replies (the node acts, the gateway hears nothing).
    drop_replies: u32,
    /// Requests and replies dropped so far.
    lost: (u32, u32),
}

impl Line {
    fn new(flash: Box<Flash>) -> Line {
        Line {
            slave: RtuSlave::new(UNIT, RtuTiming::from_baud(BAUD)).unwrap(),
            node: Node {
                files: UpdateFiles::new(receiver(), Box::leak(flash)),
            },
            now_us: 1_000,
            chars: 0,
            exchanges: 0,
            drop_requests: 0,
            drop_replies: 0,
            lost: (0, 0),
        }
    }

    /// Sends a request PDU; the reply PDU, or `None` on a timeout.
    fn exchange(&mut self, pdu: &[u8]) -> Option<Vec<u8>> {
        let mut adu = vec![UNIT];
        adu.extend_from_slice(pdu);
        let crc = rtu_crc_bytes(&adu);
        adu.extend_from_slice(&crc);
        assert!(adu.len() <= MAX_ADU_LEN);
        self.exchanges += 1;
        self.chars += adu.len() as u64;
        if self.drop_requests > 0 {
            self.drop_requests -= 1;
            self.lost.0 += 1;
            self.now_us += 1_000_000; // the gateway's timeout
            return None;
        }
        self.slave.on_bytes(&adu, self.now_us);
        let deadline = self.slave.next_deadline().unwrap();
        let mut reply = [0u8; MAX_ADU_LEN];
        let len = self
            .slave
            .poll(deadline, &mut self.node, &mut reply)
            .expect("the slave answers a unicast request");
        self.chars += len as u64;
        self.now_us = deadline + 2_000 + len as u64 * 100;
        if self.drop_replies > 0 {
            self.drop_replies -= 1;
            self.lost.1 += 1;
            return None;
        }
        assert_eq!(reply[0], UNIT);
        assert_eq!(
            rtu_crc_bytes(&reply[..len - 2]),
            [reply[len - 2], reply[len - 1]]
        );
        Some(reply[1..len - 2].to_vec())
    }

    fn write_file(&mut self, file: u16, record: u16, regs: &[u16]) -> Option<Result<(), u8>> {
        let mut pdu = vec![0x15, (7 + 2 * regs.len()) as u8, 0x06];
        for v in [file, record, regs.len() as u16].iter().chain(regs) {
            pdu.extend_from_slice(&v.to_be_bytes());
        }
        let reply = self.exchange(&pdu)?;
        Some(if reply[0] == 0x15 {
            assert_eq!(reply, pdu, "the write response echoes the request");
            Ok(())
        } else {
            assert_eq!(reply[0], 0x95);
            Err(reply[1])
        })
    }

    fn status(&mut self) -> Option<[u16; 8]> {
        let mut pdu = vec![0x14, 0x07, 0x06];
        for v in [STATUS_FILE, 0, 8] {
            pdu.extend_from_slice(&v.to_be_bytes());
        }
        let reply = self.exchange(&pdu)?;
        assert_eq!(&reply[..4], &[0x14, 18, 17, 0x06]);
        let mut s = [0u16; 8];
        for (i, r) in s.iter_mut().enumerate() {
            *r = u16::from_be_bytes([reply[4 + 2 * i], reply[5 + 2 * i]]);
        }
        Some(s)
    }
}

fn regs(bytes: &[u8]) -> Vec<u16> {
    bytes
        .chunks(2)
        .map(|p| u16::from_be_bytes([p[0], *p.get(1).unwrap_or(&0xFF)]))
        .collect()
}

/// The gateway's part: offer, chunks, finish; after a timeout it reads the status and goes on
/// from the chunk the node wants. Returns the chunk writes made.
/// `cut`: at chunk `.0`, the link is down for `.0`'s write and the two status reads after it;
/// at chunk `.1`, the write arrives but its reply is lost.
fn gateway_update(line: &mut Line, image: &[u8], cut: Option<(u32, u32)>) -> (u32, [u16; 8]) {
    let sender = Sender {
        image,
        chunk_size: MODBUS_CHUNK,
        sent: 0,
    };
    let mut offer = regs(&sender.header());
    offer.extend(regs(&sender.digest()));
    offer.push(MODBUS_CHUNK);
    assert_eq!(line.write_file(OFFER_FILE, 0, &offer), Some(Ok(())));
    let mut next = 0u32;
    let mut writes = 0;
    while next < sender.chunks() {
        if let Some((down, lost_reply)) = cut {
            if next == down && line.drop_requests == 0 && writes == next {
                line.drop_requests = 3;
            }
            if next == lost_reply && line.drop_replies == 0 && writes == next + 1 {
                line.drop_replies = 1;
            }
        }
        let (bytes, crc) = sender.chunk(next);
        let mut data = regs(bytes);
        data.extend([(crc >> 16) as u16, crc as u16]);
        writes += 1;
        match line.write_file(CHUNK_FILE, next as u16, &data) {
            Some(Ok(())) => next += 1,
            Some(Err(code)) => panic!("chunk {next} refused with exception {code}"),
            None => {
                // Timeout: ask the node where it is (retrying while the link is down).
                let status = loop {
                    if let Some(s) = line.status() {
                        break s;
                    }
                };
                assert_eq!(status[0], phase::RECEIVING);
                next = (u32::from(status[1]) << 16) | u32::from(status[2]);
            }
        }
    }
    assert_eq!(
        line.write_file(FINISH_FILE, 0, &[FINISH_MAGIC]),
        Some(Ok(()))
    );
    (writes, line.status().unwrap())
}

#[test]
fn update_over_modbus_rtu_then_boot_the_new_image() {
    let image = new_image();
    let chunks = image.len().div_ceil(usize::from(MODBUS_CHUNK)) as u32;
    let mut line = Line::new(factory_flash());
    let (writes, status) = gateway_update(&mut line, &image, None);
    assert_eq!(writes, chunks);
    assert_eq!(status[0], phase::STAGED);
    assert_eq!(((status[3] as u32) << 16) | status[4] as u32, chunks);
    let flash = line.node.files.release().1;
    assert_eq!(slot_bytes(flash, Slot::B, image.len()), &image[..]);
    let d = reboot(flash).unwrap();
    assert_eq!((d.slot, d.kind), (Slot::B, BootKind::Trial { attempt: 1 }));
    assert_eq!(d.header.version.to_string(), "1.1.0");

    // Line use, for the record: the characters both ways and two t3.5 gaps per exchange, at
    // 11 bits per character. Function 21's reply echoes the request, so at most half the line
    // carries payload.
    let char_s = 11.0 / f64::from(BAUD);
    let line_s = line.chars as f64 * char_s + line.exchanges as f64 * 2.0 * 0.00175;
    let payload_rate = image.len() as f64 / line_s;
    let raw_rate = f64::from(BAUD) / 11.0;
    println!(
        "Modbus RTU at {BAUD} baud: {} bytes of image in {} exchanges, {} characters, \
         {:.2} s of line time: {:.0} B/s, {:.0} % of the raw line rate ({:.0} B/s)",
        image.len(),
        line.exchanges,
        line.chars,
        line_s,
        payload_rate,
        100.0 * payload_rate / raw_rate,
        raw_rate
    );
}

#[test]
fn link_cut_mid_image_resumes_from_the_nodes_status() {
    let image = new_image();
    let chunks = image.len().div_ceil(usize::from(MODBUS_CHUNK)) as u32;
    let mut line = Line::new(factory_flash());
    let (writes, status) = gateway_update(&mut line, &image, Some((20, 30)));
    assert_eq!(status[0], phase::STAGED);
    // Chunk 20's write never arrived and is sent again; chunk 30 arrived but its reply was
    // lost, and the status shows it written, so it is not sent again: one write beyond the
    // chunk count, and the transfer went on from chunk 20, not from zero.
    println!(
        "link cut at chunk 20 of {chunks}, reply of chunk 30 lost: {writes} chunk writes, {} beyond the chunk count",
        writes - chunks
    );
    assert_eq!(
        line.lost,
        (3, 1),
        "the link was down for 3 requests and lost 1 reply"
    );
    assert_eq!(writes, chunks + 1);
    let flash = line.node.files.release().1;
    let d = reboot(flash).unwrap();
    assert_eq!((d.slot, d.kind), (Slot::B, BootKind::Trial { attempt: 1 }));
}

#[test]
fn refusal_read_back_from_the_status_file() {
    let mut spec = ImageSpec::new((1, 1, 0), 2);
    spec.model = "TZ-RAIN-01";
    let image = spec.build();
    let sender = Sender::new(&image);
    let mut line = Line::new(factory_flash());
    let mut offer = regs(&sender.header());
    offer.extend(regs(&sender.digest()));
    offer.push(MODBUS_CHUNK);
    assert_eq!(line.write_file(OFFER_FILE, 0, &offer), Some(Err(0x03)));
    let status = line.status().unwrap();
    assert_eq!(status[0], phase::FAILED);
    assert_eq!(status[5], 1, "reason 1: wrong hardware");
    // A chunk with a bad CRC mid-transfer: exception 03, reason 15, the transfer goes on.
    let image = new_image();
    let sender = Sender {
        image: &image,
        chunk_size: MODBUS_CHUNK,
        sent: 0,
    };
    let mut offer = regs(&sender.header());
    offer.extend(regs(&sender.digest()));
    offer.push(MODBUS_CHUNK);
    assert_eq!(line.write_file(OFFER_FILE, 0, &offer), Some(Ok(())));
    let (bytes, crc) = sender.chunk(0);
    let mut data = regs(bytes);
    data.extend([(crc >> 16) as u16, (crc as u16) ^ 1]);
    assert_eq!(line.write_file(CHUNK_FILE, 0, &data), Some(Err(0x03)));
    let status = line.status().unwrap();
    assert_eq!((status[0], status[5]), (phase::RECEIVING, 15));
    assert_eq!(CRC32C.checksum(bytes), crc);
    // The old image still boots.
    let flash = line.node.files.release().1;
    let d = reboot(flash).unwrap();
    assert_eq!((d.slot, d.kind), (Slot::A, BootKind::Confirmed));
}
