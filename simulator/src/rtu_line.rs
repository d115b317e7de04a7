//! A Modbus RTU line on a virtual clock: the gateway's frames reach one or more nodes running
//! the firmware's real RTU slave and update files on simulated flash, and their replies come
//! back, every character taking 11 bits at the line's baud rate in both directions.
//!
//! Sans-IO and timed in nanoseconds rather than by the host's timers: a character at 115200
//! baud lasts 95.5 µs, below the millisecond resolution of tokio's timers, and a paced line on
//! a loaded machine would measure the machine. Here the time a transfer takes is what the line
//! would be busy for, computed from the characters actually sent and received and from the
//! silences the sender keeps, and nothing else; the nodes' slaves see each byte at its arrival
//! time, so they split frames at t3.5 and discard them on t1.5 exactly as on a wire.
//!
//! The gateway's side drives it: [`SimRtuLine::send`] puts a frame on the line from the current
//! time, [`SimRtuLine::recv`] waits (in line time) for reply bytes, [`SimRtuLine::silence`]
//! keeps the line quiet. Frames can be lost on purpose ([`SimRtuLine::lose_frames`]): a lost
//! frame reaches the nodes with a damaged CRC, which they count and ignore.
//!
//! # Node flash
//!
//! | region | offset | size |
//! |---|---|---|
//! | slot A | 0 | 192 KiB |
//! | slot B | 192 KiB | 192 KiB |
//! | boot state 0, 1 | 384 KiB, 385 KiB | 1 KiB each |
//! | transfer | 386 KiB | 1 KiB |
//!
//! Larger slots than a simulated fleet node's ([`crate::update`]) so that images of realistic
//! size fit. The simulated flash programs and erases instantly; see [`NODE_REPLY_LATENCY_US`].

use std::collections::VecDeque;

use embedded_storage::nor_flash::{ErrorType, NorFlash, ReadNorFlash};
use tianzhong_firmware::modbus::{Exception, MAX_ADU_LEN, RegisterBank, RtuSlave, RtuTiming};
use tianzhong_firmware::sim::{PowerCutError, PowerCutFlash};
use tianzhong_firmware::update::boot;
use tianzhong_firmware::update::modbus_files::{STATUS_FILE, UpdateFiles};
use tianzhong_firmware::update::{FlashLayout, Trust, UpdateReceiver};
use tianzhong_protocol::image::{ImageFile, signature};
use tianzhong_protocol::registers::profile::FirmwareVersion;

use crate::update::{SIM_POLICY, SIM_SIGNING_SECRET, sim_image};

/// Bytes of a line node's flash.
pub const LINE_FLASH_LEN: usize = 387 * 1024;

/// Where a line node's update regions are.
pub const LINE_LAYOUT: FlashLayout = FlashLayout {
    slots: [0, 192 * 1024],
    slot_size: 192 * 1024,
    state: [384 * 1024, 385 * 1024],
    transfer: 386 * 1024,
};

/// The model of every line node.
pub const LINE_MODEL: &str = "TZ-GD100";

/// From the end of a request's t3.5 to the first character of the reply: the node's work
/// between polling the frame and starting to transmit. A chunk write programs 32 words, about
/// 0.5 ms on an STM32F4 at 16 µs per word; the simulated flash is instant, so this stands for
/// it. Broadcast writes are programmed while the next frame's bytes are queued by the UART
/// interrupt (as the board's main loop does), so they cost no line time.
pub const NODE_REPLY_LATENCY_US: u64 = 500;

/// The flash of a line node, boxed: 387 KiB is too much for a stack.
#[derive(Debug)]
pub struct LineFlash(pub Box<PowerCutFlash<LINE_FLASH_LEN>>);

impl ErrorType for LineFlash {
    type Error = PowerCutError;
}

impl ReadNorFlash for LineFlash {
    const READ_SIZE: usize = <PowerCutFlash<LINE_FLASH_LEN> as ReadNorFlash>::READ_SIZE;
    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), Self::Error> {
        self.0.read(offset, bytes)
    }
    fn capacity(&self) -> usize {
        self.0.capacity()
    }
}

impl NorFlash for LineFlash {
    const WRITE_SIZE: usize = <PowerCutFlash<LINE_FLASH_LEN> as NorFlash>::WRITE_SIZE;
    const ERASE_SIZE: usize = <PowerCutFlash<LINE_FLASH_LEN> as NorFlash>::ERASE_SIZE;
    fn erase(&mut self, from: u32, to: u32) -> Result<(), Self::Error> {
        self.0.erase(from, to)
    }
    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), Self::Error> {
        self.0.write(offset, bytes)
    }
}

/// A node on the line: the firmware's RTU slave over its update files.
#[derive(Debug)]
pub struct LineNode {
    /// The node's RTU slave, with its counters.
    pub slave: RtuSlave,
    /// The node's update files.
    pub files: UpdateFiles<LineFlash>,
}

struct Bank<'a>(&'a mut UpdateFiles<LineFlash>);

impl RegisterBank for Bank<'_> {
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
        self.0.read_file_record(f, r, out)
    }
    fn write_file_record(&mut self, f: u16, r: u16, data: &[u16]) -> Result<(), Exception> {
        self.0.write_file_record(f, r, data)
    }
}

impl LineNode {
    /// A node of [`LINE_MODEL`] at `unit`, slot A holding the factory image 1.0.0 signed with
    /// the simulator's key, booted.
    pub fn new(unit: u8, baud: u32) -> LineNode {
        let mut flash = LineFlash(Box::default());
        let factory = sim_image(
            LINE_MODEL,
            FirmwareVersion {
                major: 1,
                minor: 0,
                patch: 0,
            },
            1,
            1024,
        );
        flash.0.bytes_mut()[..factory.len()].copy_from_slice(&factory);
        let trust = Trust {
            public_key: signature::public_key(&SIM_SIGNING_SECRET),
            hardware: ImageFile::parse(&factory)
                .map(|i| i.header.hardware)
                .expect("the factory image parses"),
        };
        boot::boot(&mut flash, &LINE_LAYOUT, &trust, SIM_POLICY).expect("the factory image boots");
        LineNode {
            slave: RtuSlave::new(unit, RtuTiming::from_baud(baud)).expect("a unit in 1..=247"),
            files: UpdateFiles::new(UpdateReceiver::new(LINE_LAYOUT, trust), flash),
        }
    }

    /// The status file's 8 registers.
    pub fn status(&mut self) -> [u16; 8] {
        let mut s = [0u16; 8];
        let _ = self.files.read_file_record(STATUS_FILE, 0, &mut s);
        s
    }

    /// The bytes of `slot`'s region of flash, `len` long.
    pub fn slot_bytes(&mut self, slot: usize, len: usize) -> &[u8] {
        let start = LINE_LAYOUT.slots[slot] as usize;
        &self.files.flash_mut().0.bytes()[start..start + len]
    }
}

/// What went over the line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LineStats {
    /// Frames the gateway sent, lost ones included.
    pub frames_sent: u64,
    /// Of them, to the broadcast address.
    pub broadcasts: u64,
    /// Frames damaged on purpose.
    pub frames_lost: u64,
    /// Characters the gateway sent.
    pub chars_sent: u64,
    /// Characters the nodes sent.
    pub chars_received: u64,
}

/// Decides, by the index of a frame the gateway sends (from 0) and its bytes, whether the
/// line loses it.
pub type LossFn = Box<dyn FnMut(u64, &[u8]) -> bool + Send>;

/// A simulated RTU line between the gateway and `nodes`.
pub struct SimRtuLine {
    char_ns: u64,
    now_ns: u64,
    /// The nodes on the line.
    pub nodes: Vec<LineNode>,
    /// Reply bytes on their way to the gateway, with their arrival times.
    incoming: VecDeque<(u64, u8)>,
    /// The line's counters.
    pub stats: LineStats,
    lose: Option<LossFn>,
}

impl std::fmt::Debug for SimRtuLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimRtuLine")
            .field("char_ns", &self.char_ns)
            .field("now_ns", &self.now_ns)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl SimRtuLine {
    /// A line at `baud` with `nodes` on it, at time 0.
    pub fn new(baud: u32, nodes: Vec<LineNode>) -> SimRtuLine {
        SimRtuLine {
            // 11 bits per character (start, 8 data, parity or second stop, stop).
            char_ns: 11_000_000_000 / u64::from(baud.max(1)),
            now_ns: 0,
            nodes,
            incoming: VecDeque::new(),
            stats: LineStats::default(),
            lose: None,
        }
    }

    /// Loses the frames `lose` picks from now on.
    pub fn lose_frames(&mut self, lose: LossFn) {
        self.lose = Some(lose);
    }

    /// The line's time, in nanoseconds since it was made.
    pub fn now_ns(&self) -> u64 {
        self.now_ns
    }

    /// One character's time on the line, in nanoseconds.
    pub fn char_ns(&self) -> u64 {
        self.char_ns
    }

    /// Lets the nodes handle every frame they have completed by `t_ns`, queueing their replies.
    fn settle(&mut self, t_ns: u64) {
        for node in &mut self.nodes {
            while let Some(deadline_us) = node.slave.next_deadline() {
                if deadline_us * 1000 > t_ns {
                    break;
                }
                let mut reply = [0u8; MAX_ADU_LEN];
                let mut bank = Bank(&mut node.files);
                if let Some(len) = node.slave.poll(deadline_us, &mut bank, &mut reply) {
                    // The reply starts after the node's latency, and after whatever is still
                    // on its way (one transmitter at a time: a second would collide).
                    let start = (deadline_us + NODE_REPLY_LATENCY_US) * 1000;
                    let start = self.incoming.back().map_or(start, |&(t, _)| t.max(start));
                    for (i, &b) in reply[..len].iter().enumerate() {
                        self.incoming
                            .push_back((start + (i as u64 + 1) * self.char_ns, b));
                    }
                    self.stats.chars_received += len as u64;
                }
            }
        }
    }

    /// Transmits `adu` from now; returns when its last character is on the line.
    pub fn send(&mut self, adu: &[u8]) {
        let first_arrival = self.now_ns + self.char_ns;
        self.settle(first_arrival);
        let index = self.stats.frames_sent;
        self.stats.frames_sent += 1;
        self.stats.chars_sent += adu.len() as u64;
        if adu.first() == Some(&0) {
            self.stats.broadcasts += 1;
        }
        let mut bytes = adu.to_vec();
        if let Some(lose) = self.lose.as_mut()
            && lose(index, adu)
            && let Some(last) = bytes.last_mut()
        {
            // Noise on the line: the CRC fails and the nodes discard the frame.
            *last ^= 0x5A;
            self.stats.frames_lost += 1;
        }
        for (i, &b) in bytes.iter().enumerate() {
            let t = self.now_ns + (i as u64 + 1) * self.char_ns;
            for node in &mut self.nodes {
                node.slave.on_byte(b, t / 1000);
            }
        }
        self.now_ns += bytes.len() as u64 * self.char_ns;
    }

    /// Receives reply bytes into `buf`, at most `at_most` at a time (a serial port hands bytes
    /// over as they come, not by frame): the count, advancing the line's time to the last
    /// one's arrival, or 0 if none arrived within `timeout_ns`, the time then having passed.
    pub fn recv(&mut self, buf: &mut [u8], at_most: usize, timeout_ns: u64) -> usize {
        let until = self.now_ns + timeout_ns;
        self.settle(until);
        let mut n = 0;
        while n < buf.len().min(at_most.max(1)) {
            match self.incoming.front() {
                Some(&(t, b)) if t <= until => {
                    buf[n] = b;
                    self.now_ns = self.now_ns.max(t);
                    self.incoming.pop_front();
                    n += 1;
                }
                _ => break,
            }
        }
        if n == 0 {
            self.now_ns = until;
        }
        n
    }

    /// Keeps the line silent for `ns`.
    pub fn silence(&mut self, ns: u64) {
        self.now_ns += ns;
        self.settle(self.now_ns);
    }
}
