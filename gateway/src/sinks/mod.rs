//! Northbound sinks.

pub mod influx;
