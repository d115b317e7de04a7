//! Support for the firmware's integration tests: a map-backed register bank ([`bank`]) and
//! [`serve_on_pty`], which serves any [`RegisterBank`] through the real [`RtuSlave`] on a host
//! pseudo-terminal, so that a master needing a serial device (mbpoll now, the node core's
//! tests later) can poll it.
//!
//! The serving thread plays the MCU's part: it stamps what it reads with `Instant` microseconds,
//! sleeps in `poll(2)` until a byte arrives or the slave's next deadline, and writes replies
//! back. Bytes a master writes in one `write` come out of the pty in one read and share a time
//! stamp, which the slave takes as back-to-back characters.

// Each test binary compiles this module and uses only part of it.
#![allow(dead_code)]

pub mod bank;
pub mod mbpoll;

use std::fs::File;
use std::io::{self, ErrorKind, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Instant;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::pty::openpty;
use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
use nix::unistd::ttyname;
use tianzhong_firmware::modbus::{MAX_ADU_LEN, RegisterBank, RtuSlave, RtuTiming, SlaveStats};

/// How long the serving thread sleeps at most, so that it notices a stop request.
const IDLE_POLL_MS: u16 = 20;

/// A slave served on a pty; stops when dropped.
pub struct PtyServer<B> {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<io::Result<(B, SlaveStats)>>>,
    // The pty's own end of the slave side stays open for the server's life: without it the
    // master side reads EIO (and polls as hung up) whenever no client has the device open,
    // e.g. between two mbpoll runs.
    _slave: OwnedFd,
}

impl<B> PtyServer<B> {
    /// The device path a master opens, e.g. `/dev/pts/3`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops serving and hands back the bank, with whatever masters wrote to it, and the
    /// slave's counters.
    pub fn stop(mut self) -> (B, SlaveStats) {
        self.stop.store(true, Ordering::Relaxed);
        let thread = self
            .thread
            .take()
            .expect("the thread runs until stop or drop");
        thread
            .join()
            .expect("the serving thread panicked")
            .expect("the serving thread failed on the pty")
    }
}

impl<B> Drop for PtyServer<B> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            // Already failing or finishing: the outcome has no one left to go to.
            let _ = thread.join();
        }
    }
}

/// Serves `bank` as Modbus RTU unit `unit` at `baud` (which sets t1.5 and t3.5) on a new
/// pseudo-terminal.
pub fn serve_on_pty<B: RegisterBank + Send + 'static>(
    bank: B,
    unit: u8,
    baud: u32,
) -> io::Result<PtyServer<B>> {
    let slave_rtu = RtuSlave::new(unit, RtuTiming::from_baud(baud))
        .map_err(|e| io::Error::new(ErrorKind::InvalidInput, e.to_string()))?;
    let pty = openpty(None, None).map_err(io::Error::from)?;
    // Raw before any client opens it: in the default cooked mode the line discipline would echo
    // the replies back into the slave as requests and translate CR and NL bytes.
    let mut termios = tcgetattr(&pty.slave).map_err(io::Error::from)?;
    cfmakeraw(&mut termios);
    tcsetattr(&pty.slave, SetArg::TCSANOW, &termios).map_err(io::Error::from)?;
    let path = ttyname(&pty.slave).map_err(io::Error::from)?;

    let stop = Arc::new(AtomicBool::new(false));
    let thread = {
        let stop = Arc::clone(&stop);
        let master = File::from(pty.master);
        std::thread::Builder::new()
            .name(format!("modbus-pty-unit-{unit}"))
            .spawn(move || run(master, slave_rtu, bank, &stop))?
    };
    Ok(PtyServer {
        path,
        stop,
        thread: Some(thread),
        _slave: pty.slave,
    })
}

fn run<B: RegisterBank>(
    mut master: File,
    mut slave: RtuSlave,
    mut bank: B,
    stop: &AtomicBool,
) -> io::Result<(B, SlaveStats)> {
    let epoch = Instant::now();
    let now_us = || u64::try_from(epoch.elapsed().as_micros()).unwrap_or(u64::MAX);
    let mut rx = [0u8; 512];
    let mut reply = [0u8; MAX_ADU_LEN];
    while !stop.load(Ordering::Relaxed) {
        let wait_ms = match slave.next_deadline() {
            // Rounded up: waking before the deadline only costs another turn of the loop.
            Some(deadline) => deadline.saturating_sub(now_us()).div_ceil(1_000),
            None => u64::from(IDLE_POLL_MS),
        };
        let wait = PollTimeout::from(
            u16::try_from(wait_ms)
                .unwrap_or(IDLE_POLL_MS)
                .min(IDLE_POLL_MS),
        );
        let mut fds = [PollFd::new(master.as_fd(), PollFlags::POLLIN)];
        let ready = match poll(&mut fds, wait) {
            Ok(n) => n > 0,
            Err(nix::errno::Errno::EINTR) => false,
            Err(e) => return Err(e.into()),
        };
        if ready {
            match master.read(&mut rx) {
                Ok(n) => slave.on_bytes(&rx[..n], now_us()),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if let Some(len) = slave.poll(now_us(), &mut bank, &mut reply) {
            master.write_all(&reply[..len])?;
        }
    }
    Ok((bank, *slave.stats()))
}
