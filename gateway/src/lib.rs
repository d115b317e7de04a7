//! Tianzhong gateway: polls Modbus nodes, takes MQTT readings, evaluates alarms and forwards
//! readings durably to the unified sensing network.
//!
//! # Module map
//!
//! | module | what |
//! |---|---|
//! | [`config`] | the gateway's TOML configuration, validated up front |
//! | [`pipeline`] | records, events and the ingestion stage that connects sources to sinks |
//! | [`sources`] | southbound: Modbus buses (planning, scheduling, polling) and the MQTT source |
//! | [`transforms`] | timestamps, calibration, range validation, de-duplication |
//! | [`alarm`] | the alarm engine: rules, ISA-18.2 life cycle, shipped defaults |
//! | [`thresholds`] | threshold rules changed at run time: validated, versioned, saved, audited |
//! | [`sinks`] | northbound: InfluxDB, upstream MQTT, the local store |
//! | [`outbox`] | the durable outbox: batches on disk until every sink confirmed them |
//! | [`metrics`] | Prometheus metrics |
//! | [`auth`] | users, roles (viewer, operator, engineer, admin), Argon2 passwords, API tokens, the audit trail |
//! | [`http`] | `/metrics`, `/healthz` and the API: alarms (list, live stream, acknowledge, shelve), login, users, audit |
//! | [`console`] | the operator console (single-page app embedded in the binary), served at `/` and `/console/…` |
//! | [`gateway`] | assembling and running a gateway from its configuration |
//! | [`probe`] | reading one device from the command line |
//! | [`rtu_master`] | a Modbus RTU master for function 20 and 21 (and broadcasts), framing replies by their length: the flash path over serial lines |
//! | [`campaign`] | firmware campaigns over a fleet: canaries, waves, a halt threshold, per-node state, audited |
//! | [`flash`] | `tianzhong flash`: a signed image to one node over Modbus file records, resumable, with progress |
//! | [`flash_mqtt`] | `tianzhong flash --mqtt`: a signed image to an MQTT-connected node as update messages, windowed, resumable, confirmed |
//! | [`flash_via`] | `tianzhong flash --user`: the same through the running gateway, as a one-node campaign |
//! | [`firmware_cli`] | `tianzhong firmware`: signing keys, signing and inspecting node firmware images |
//! | [`demo`] | broker, simulated fleet and gateway in one process |

pub mod alarm;
pub mod auth;
pub mod campaign;
pub mod config;
pub mod console;
pub mod demo;
pub mod firmware_cli;
pub mod flash;
pub mod flash_mqtt;
pub mod flash_via;
pub mod gateway;
pub mod http;
pub mod metrics;
pub mod outbox;
pub mod pipeline;
pub mod probe;
pub mod rtu_master;
pub mod sinks;
pub mod sources;
pub mod thresholds;
pub mod transforms;
