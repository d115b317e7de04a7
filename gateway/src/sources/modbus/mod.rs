//! The Modbus source: one task per bus.
//!
//! | module | what |
//! |---|---|
//! | [`plan`] | coalescing a register map into reads, splitting on "illegal data address" |
//! | [`scheduler`] | who gets the bus next: staggering, retries, quarantine (sans-IO) |
//! | [`device`] | what one device reads and how its answers become records (sans-IO) |
//! | [`link`] | the tokio-modbus client over TCP or a serial line, with the timeout it lacks |
//! | [`bus`] | the task that runs a bus: scheduler, link, decoding, metrics, events |
//! | [`lend`] | a serial bus's line lent to firmware transfers between polls: requests, turns |

pub mod bus;
pub mod device;
pub mod lend;
pub mod link;
pub mod plan;
pub mod scheduler;
