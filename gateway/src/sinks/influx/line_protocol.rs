//! InfluxDB line protocol for readings.
