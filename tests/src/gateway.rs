//! Starting a gateway in-process from configuration text, and reading its metrics.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tianzhong_gateway::gateway::Gateway;

/// Checks `toml` as the file `file` and starts a gateway from it (no environment variables).
pub async fn start(toml: &str, file: &Path) -> anyhow::Result<Gateway> {
    let config = tianzhong_gateway::config::parse(toml, file, &|_| None)
        .with_context(|| format!("the generated configuration:\n{toml}"))?;
    Gateway::start(config).await
}

/// One sample of the OpenMetrics text.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Metric name as written (counters end in `_total`).
    pub name: String,
    /// Labels.
    pub labels: Vec<(String, String)>,
    /// Value.
    pub value: f64,
}

/// Parses the samples of an OpenMetrics text exposition (comments skipped).
pub fn parse_samples(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (head, value) = match line.rsplit_once(' ') {
            Some(hv) => hv,
            None => continue,
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = match head.split_once('{') {
            Some((name, rest)) => (name, parse_labels(rest.trim_end_matches('}'))),
            None => (head, Vec::new()),
        };
        out.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    out
}

fn parse_labels(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, e)) = chars.next() {
                        value.push(e);
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        out.push((key.trim_start_matches(',').trim().to_owned(), value));
        rest = &after[end..];
    }
    out
}

/// The sum of every sample of `name` whose labels include all of `labels`.
pub fn sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    parse_samples(text)
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.iter().any(|(sk, sv)| sk == k && sv == v))
        })
        .map(|s| s.value)
        .sum()
}

/// `sum` over the gateway's current metrics.
pub fn metric(gateway: &Gateway, name: &str, labels: &[(&str, &str)]) -> f64 {
    sum(&gateway.metrics().render(), name, labels)
}

/// Polls `done` every 50 ms until it holds; false when `timeout` passes first.
pub async fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Logs to the test output when `RUST_LOG` says so (e.g. `RUST_LOG=tianzhong_gateway=debug`).
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error,tokio_modbus=off")),
        )
        .with_test_writer()
        .try_init();
}
