//! The InfluxDB v2 sink.
//!
//! | module | what |
//! |---|---|
//! | [`line_protocol`] | the schema and the encoder |
//! | [`writer`] | one HTTP write, its outcomes, retries with backoff and `Retry-After` |
//! | [`sink`] | the task: batches by size and time, writes, counts |

pub mod line_protocol;
pub mod sink;
pub mod writer;
