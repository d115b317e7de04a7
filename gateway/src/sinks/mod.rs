//! Northbound sinks: each a task reading [`Output`](crate::pipeline::Output) batches from its
//! own bounded channel, so a slow sink holds up the pipeline rather than losing data (the
//! durable outbox, which decouples them, comes next).
//!
//! | module | what |
//! |---|---|
//! | [`influx`] | InfluxDB v2: line protocol, batching by size and time, retries |
//! | [`upstream_mqtt`] | normalised readings and node status to the sensing network's broker |
//! | [`local_store`] | readings kept under the data directory (SQLite) |

pub mod influx;
pub mod local_store;
pub mod upstream_mqtt;
