//! End-to-end tests of the whole Tianzhong chain.
//!
//! # Module map
//!
//! | test | what it runs |
//! |---|---|
//! | `tests/qemu_node.rs` | the STM32F405 firmware under `qemu-system-arm -M netduinoplus2` (bootloader and signed slot-A image), polled over Modbus RTU from the host with tokio-modbus |
//! | `tests/qemu_boot.rs` | the STM32F405 bootloader under QEMU on composed flash: the confirmed image, a staged image, a tampered one, one signed with another key, one linked for the other slot, no valid image |
//! | `tests/gateway_alarms.rs` | the chemical-plant scenario (entered at 11:00 simulated, 5x) → the gateway's alarm engine: yellow, then red, at the detectors whose gas crossed the set points, within a poll interval plus 1 s of simulated time, and nowhere else |
//! | `tests/gateway_e2e.rs` | simulated fleets (Modbus TCP, Modbus RTU on pseudo-terminals, MQTT via mosquitto) → the gateway → VictoriaMetrics and an upstream mosquitto, checked against the simulator's ground truth; a dead RTU node, a broker restart, malformed input |
//! | `tests/drill_sinks.rs` | fault drills against the sinks, on sped-up simulated time: VictoriaMetrics stopped for minutes and started again (every reading once, the backlog drained in order); an InfluxDB stub answering 503/429 with `Retry-After`, 500, a hang and 400 for one poisoned batch (dead-lettered, the queue not blocked); a device flapping for an hour |
//! | `tests/drill_disk.rs` | the outbox on a small tmpfs while the sink is down: the bound's policy (downsampled, then dropped, alarms kept), every reading written or counted against its node; ignored until the gateway is fixed: the counts exact, and a filesystem that fills before the bound |
//! | `tests/drill_crash.rs` | fault drills against the `tianzhong` binary: SIGKILLed 10 times at seeded random moments under 1,000 MQTT nodes and restarted on the same data directory; the upstream broker stopped and restarted — every reading in VictoriaMetrics and upstream exactly once (`TIANZHONG_SOAK=1` for the long variants) |
//! | `tests/flash_campaign.rs` | firmware campaigns through the API over 100 simulated Modbus TCP nodes with the real update receiver: 5 % injected failures halt the campaign at its threshold, each node's state checked against the version it really runs, every step in the audit trail; without failures (halted and resumed by an engineer) every node updates; a campaign cut by a gateway stop resumes after the restart |
//! | `tests/console_campaigns.rs` | the console's campaign page in headless Chromium: an engineer sees each node's state (en, zh), a viewer sees why not |
//! | `tests/console_browser.rs` | the operator console in headless Chromium (WebDriver): an operator sees a red alarm arrive live and acknowledges it, an engineer edits a threshold, a viewer is refused; zh/en; screenshots of each step |
//!
//! Shared harness code:
//!
//! | module | what |
//! |---|---|
//! | [`services`] | mosquitto and VictoriaMetrics started per test on free loopback ports, in temporary directories, killed when dropped |
//! | [`fleet`] | simulated fleets built programmatically, run on real time, and the gateway configuration that matches them |
//! | [`gateway`] | starting a gateway in-process from configuration text; reading its metrics |
//! | [`check`] | joining VictoriaMetrics series and upstream MQTT messages into readings and comparing them with the ground truth |
//! | [`stub`] | for the drills: an HTTP stub of InfluxDB's write endpoint (scripted failures, a poisoned batch, going down and up, forwarding as a tap), line protocol parsed back, a VictoriaMetrics that stops and starts, a fleet on sped-up time, a tmpfs mount |
//! | [`drill`] | the gateway as a child process (built by cargo, SIGKILLed, restarted), a subscriber with a persistent session, a seeded random source, accounting of sinks' copies against the ground truth |
//! | [`qemu`] | the STM32F405 board binaries built once, signed with the real signing code, the whole flash composed (boot state by the firmware's own code) and booted under QEMU |
//! | [`api`] | a running gateway's HTTP API: log in, calls with a token, a campaign followed until it settles |
//! | [`browser`] | chromedriver and headless Chromium started per test on a free loopback port, offline, with a fresh profile; the screenshot folder |

pub mod api;
pub mod browser;
pub mod check;
pub mod drill;
pub mod fleet;
pub mod gateway;
pub mod qemu;
pub mod services;
pub mod stub;
