//! Running mbpoll, the independent Modbus master the RTU tests check the slave against.

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The line rate every mbpoll test uses (8N1).
pub const BAUD: u32 = 19_200;

/// Longer than any exchange here takes (mbpoll's own time-out is 1 s by default).
const MBPOLL_DEADLINE: Duration = Duration::from_secs(20);

/// What one mbpoll run did.
pub struct Run {
    /// Whether it exited 0.
    pub success: bool,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
}

impl Run {
    /// The `[reference]: value` lines mbpoll prints for what it read. Only the first word of
    /// a value is kept: mbpoll adds the signed reading of registers from 0x8000 on in
    /// parentheses, `65535 (-1)`.
    pub fn values(&self) -> BTreeMap<u32, String> {
        self.stdout
            .lines()
            .filter_map(|line| {
                let rest = line.strip_prefix('[')?;
                let (reference, value) = rest.split_once("]:")?;
                let value = value.split_whitespace().next()?;
                Some((reference.parse().ok()?, value.to_owned()))
            })
            .collect()
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "success: {}\n--- stdout\n{}--- stderr\n{}",
            self.success, self.stdout, self.stderr
        )
    }
}

/// Runs `mbpoll -m rtu -a <unit> -b 19200 -P none -1 <options> <device> <write values>`.
pub fn mbpoll(device: &Path, unit: u8, options: &[&str], values: &[&str]) -> Run {
    let unit = unit.to_string();
    let mut child = match Command::new("mbpoll")
        .args([
            "-m",
            "rtu",
            "-a",
            &unit,
            "-b",
            &BAUD.to_string(),
            "-P",
            "none",
            "-1",
        ])
        .args(options)
        .arg(device)
        .args(values)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) if e.kind() == ErrorKind::NotFound => panic!(
            "mbpoll is not installed: this test needs it as an independent Modbus master \
             (Debian: apt-get install mbpoll)"
        ),
        Err(e) => panic!("cannot start mbpoll: {e}"),
    };
    let started = Instant::now();
    while child.try_wait().expect("waiting for mbpoll").is_none() {
        if started.elapsed() > MBPOLL_DEADLINE {
            let _ = child.kill();
            let out = child.wait_with_output().expect("mbpoll's output");
            panic!(
                "mbpoll {options:?} {values:?} still running after {MBPOLL_DEADLINE:?}\n{}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let out = child.wait_with_output().expect("mbpoll's output");
    Run {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}
