//! The InfluxDB v2 HTTP writer.
