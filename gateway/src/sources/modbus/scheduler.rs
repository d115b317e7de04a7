//! Per-bus poll scheduling.
