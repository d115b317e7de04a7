//! The simulated sensor fleet: virtual nodes running the firmware's node core on simulated
//! sensor hardware, driven by signal models on simulated time, speaking Modbus TCP, Modbus RTU
//! and MQTT, with faults to provoke and a ground-truth log to check against.
//!
//! # Module map
//!
//! | module | what |
//! |---|---|
//! | [`bench`](mod@bench) | measuring CPU and memory per node |
//! | [`clock`] | simulated time and its mapping to real time |
//! | [`signal`] | signal models: constant, diurnal, random walk, noise, drift, steps, ramps, CSV replay |
//! | [`node`] | a virtual node: the firmware core, simulated hardware, the real drivers |
//! | [`rtu_line`] | a Modbus RTU line on a virtual clock, 11 bits per character both ways, to nodes running the real RTU slave and update files |
//! | [`fleet`] | the fleet: every node of a scenario, stepped through simulated time |
//! | [`fault`] | faults by node or bus, scheduled or switched at run time |
//! | [`spec`] | a checked fleet description: buses, nodes, faults |
//! | [`scenario`] | scenario files: TOML in, a checked fleet description out |
//! | [`transport`] | Modbus TCP, Modbus RTU and MQTT |
//! | [`control`] | the control interface: HTTP on loopback, and an in-process handle |
//! | [`truth`] | ground truth: every sample taken, served and published |
//! | [`update`] | firmware updates on a node: the real receiver and boot decision on simulated flash with power cuts |

pub mod bench;
pub mod clock;
pub mod control;
pub mod fault;
pub mod fleet;
pub mod node;
pub mod rtu_line;
pub mod scenario;
pub mod signal;
pub mod spec;
pub mod transport;
pub mod truth;
pub mod update;
