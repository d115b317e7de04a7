//! End-to-end tests of the whole Tianzhong chain (simulator → gateway → sinks).
//!
//! # Module map
//!
//! No end-to-end test exists yet: there is no gateway to drive. Shared test harness code
//! (starting brokers, fleets and gateways) will live here, the tests under `tests/`.
