//! Measuring the fleet: nodes served per core at 1 Hz, and memory per node.
//!
//! The numbers come from the process's own accounting in `/proc/self`: CPU time (user +
//! system, all threads) and resident memory. A load generator, when there is one, runs in a
//! separate process so its work is not counted against the simulator.

pub mod mqtt;

use std::time::{Duration, Instant};

/// CPU time and resident memory of this process.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProcessUsage {
    /// User + system CPU time of all threads, seconds.
    pub cpu_s: f64,
    /// Resident set size, bytes.
    pub rss_bytes: u64,
}

/// Reads this process's usage from `/proc/self/stat` and `/proc/self/statm`.
pub fn process_usage() -> std::io::Result<ProcessUsage> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // USER_HZ is 100 on every Linux ABI; /proc reports in it whatever the kernel's HZ.
    let cpu_s = (ticks(11) + ticks(12)) as f64 / 100.0;
    let statm = std::fs::read_to_string("/proc/self/statm")?;
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    Ok(ProcessUsage {
        cpu_s,
        rss_bytes: pages * 4096,
    })
}

/// What a benchmark run measured.
#[derive(Clone, Debug)]
pub struct BenchReport {
    /// What was measured (transport and settings).
    pub label: String,
    /// Nodes in the fleet.
    pub nodes: usize,
    /// Real seconds measured.
    pub wall_s: f64,
    /// CPU seconds the simulator process used in that time.
    pub cpu_s: f64,
    /// Resident memory before the fleet was built.
    pub rss_before: u64,
    /// Resident memory at the end.
    pub rss_after: u64,
    /// Requests answered or messages published per second, all nodes together.
    pub operations_per_s: f64,
}

impl BenchReport {
    /// Fraction of one core used.
    pub fn core_fraction(&self) -> f64 {
        self.cpu_s / self.wall_s.max(1e-9)
    }

    /// Nodes one core could serve at 1 Hz, at the measured cost per node.
    pub fn nodes_per_core(&self) -> f64 {
        self.nodes as f64 / self.core_fraction().max(1e-9)
    }

    /// Resident bytes per node.
    pub fn bytes_per_node(&self) -> f64 {
        self.rss_after.saturating_sub(self.rss_before) as f64 / self.nodes.max(1) as f64
    }
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} nodes, {:.0} ops/s over {:.1} s; CPU {:.1} % of one core -> {:.0} nodes per core at 1 Hz; \
             RSS {:.1} MB ({:.0} bytes per node)",
            self.label,
            self.nodes,
            self.operations_per_s,
            self.wall_s,
            100.0 * self.core_fraction(),
            self.nodes_per_core(),
            self.rss_after as f64 / 1e6,
            self.bytes_per_node()
        )
    }
}

/// Measures `work` over `duration` of real time: returns (wall seconds, CPU seconds).
pub fn measure<F: FnMut()>(duration: Duration, mut work: F) -> (f64, f64) {
    let before = process_usage().map(|u| u.cpu_s).unwrap_or(0.0);
    let start = Instant::now();
    while start.elapsed() < duration {
        work();
    }
    let after = process_usage().map(|u| u.cpu_s).unwrap_or(0.0);
    (start.elapsed().as_secs_f64(), after - before)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_usage_reads_proc() {
        let u = process_usage().unwrap();
        assert!(u.rss_bytes > 1_000_000, "{u:?}");
        // Burn a little CPU and see it counted.
        let (wall, cpu) = measure(Duration::from_millis(300), || {
            std::hint::black_box((0..10_000u64).sum::<u64>());
        });
        assert!(wall >= 0.3 && cpu > 0.1, "wall {wall} cpu {cpu}");
    }
}
