//! Northbound sinks: each a task reading [`Output`](crate::pipeline::Output) batches from its
//! own bounded channel, so a slow sink holds up the pipeline rather than losing data (the
//! durable outbox, which decouples them, comes next).
//!
//! | module | what |
//! |---|---|
//! | [`influx`] | InfluxDB v2: line protocol, batching by size and time, retries |
//! | [`upstream_mqtt`] | normalised readings and node status to the sensing network's broker |
//! | [`local_store`] | readings and the alarm history kept under the data directory (SQLite) |
//! | [`alarm_audit`] | every alarm transition appended to a JSON-lines log, synced |

pub mod alarm_audit;
pub mod influx;
pub mod local_store;
pub mod upstream_mqtt;
