//! The Modbus TCP and RTU transports, observed by clients that share no code with them: mbpoll
//! (libmodbus) for reads and the errors a master reports, and raw sockets and a raw
//! pseudo-terminal client for what is on the wire. Expected values come from the node cores,
//! decoded through the node profile (channel n's f32 at input register `0x0110 + 6n`, mbpoll
//! reference = register + 1, high word first = `-B`).
//!
//! Observed with mbpoll 1.4 on libmodbus 3.1.6: over TCP libmodbus sizes a reply by its
//! function code and ignores both the MBAP length field and the unit ID, so a wrong length
//! (the TCP stand-in for a wrong CRC) and a wrong unit are checked on the wire rather than by
//! mbpoll's verdict.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::sys::termios::{
    FlushArg, SetArg, SpecialCharacterIndices, cfmakeraw, tcflush, tcgetattr, tcsetattr,
};
use tianzhong_firmware::modbus::RtuTiming;
use tianzhong_protocol::crc::{check_rtu_adu, rtu_crc_bytes};
use tianzhong_protocol::registers::profile::{self, NodeMode};
use tianzhong_protocol::{NodeId, Quantity, SiteId};
use tianzhong_simulator::clock::SimClock;
use tianzhong_simulator::fault::{Fault, ScheduledFault, Target};
use tianzhong_simulator::fleet::Fleet;
use tianzhong_simulator::node::{ChannelSpec, NodeSpec};
use tianzhong_simulator::signal::Component;
use tianzhong_simulator::spec::{BusKind, BusSpec, FleetSpec};
use tianzhong_simulator::transport::modbus_rtu::{self, ModbusRtuServer};
use tianzhong_simulator::transport::modbus_tcp::{self, ModbusCounts, ModbusTcpServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Generous: the tests share a loaded two-core machine.
const PATIENCE: Duration = Duration::from_secs(60);

// ------------------------------------------------------------------------------------------
// Fleets.
// ------------------------------------------------------------------------------------------

/// A node whose channels measure particulate matter (no sensor model in between, so the core
/// holds exactly the constant), one channel per value.
fn node(id: &str, bus: &str, unit: u8, values: &[f64]) -> NodeSpec {
    NodeSpec {
        id: NodeId::new(id).expect("node id"),
        site: SiteId::new("test-site").expect("site id"),
        bus: bus.into(),
        unit,
        model: "TZ-TEST".into(),
        channels: values
            .iter()
            .map(|v| ChannelSpec {
                quantity: Quantity::Pm25,
                signal: vec![Component::Constant { value: *v }],
                clamp: None,
                sensor: None,
            })
            .collect(),
    }
}

/// Builds the fleet and lets every node sample once.
fn fleet(seed: u64, buses: Vec<BusSpec>, nodes: Vec<NodeSpec>) -> Arc<Fleet> {
    let spec = FleetSpec {
        name: "modbus-transports".into(),
        seed,
        buses,
        nodes,
        faults: vec![],
        base_dir: ".".into(),
    };
    let fleet =
        Fleet::build(&spec, SimClock::new(1_700_000_000_000, 1.0), true).expect("fleet builds");
    assert!(fleet.step_to(60_000) > 0, "the nodes sampled");
    Arc::new(fleet)
}

fn tcp_bus(name: &str, listen: SocketAddr, per_node: bool) -> BusSpec {
    BusSpec {
        name: name.into(),
        kind: BusKind::ModbusTcp { listen, per_node },
    }
}

fn rtu_bus(name: &str, link: &Path, baud: u32, pace: bool) -> BusSpec {
    BusSpec {
        name: name.into(),
        kind: BusKind::ModbusRtu {
            link: link.to_path_buf(),
            baud,
            pace,
        },
    }
}

/// A directory of one test's own, removed when the test is done with it.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A symlink path of this test's own, in a fresh directory.
fn link_path(test: &str) -> (TempDir, PathBuf) {
    let dir = std::env::temp_dir().join(format!("tianzhong-modbus-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let link = dir.join("bus");
    (TempDir(dir), link)
}

fn loopback0() -> SocketAddr {
    "127.0.0.1:0".parse().expect("address")
}

/// Channel `ch`'s value as node `i`'s core holds it.
fn core_value(fleet: &Fleet, i: usize, ch: usize) -> f32 {
    fleet.node(i).core().channel(ch).expect("channel").0
}

fn inject(fleet: &Fleet, node: &str, fault: Fault) -> u64 {
    fleet.faults.add(ScheduledFault {
        fault,
        target: Target::Node(node.into()),
        from_ms: 0,
        until_ms: None,
    })
}

// ------------------------------------------------------------------------------------------
// mbpoll.
// ------------------------------------------------------------------------------------------

struct Polled {
    ok: bool,
    output: String,
    elapsed: Duration,
}

impl Polled {
    /// The values mbpoll printed, as `[reference]: value` lines.
    fn values(&self) -> Vec<(u16, f64)> {
        self.output
            .lines()
            .filter_map(|l| {
                let (reference, value) = l.trim().strip_prefix('[')?.split_once("]:")?;
                Some((reference.parse().ok()?, value.trim().parse().ok()?))
            })
            .collect()
    }

    fn error(&self) -> &str {
        self.output
            .lines()
            .find(|l| l.contains("failed:"))
            .unwrap_or("")
    }
}

async fn mbpoll(args: &[String]) -> Polled {
    let started = Instant::now();
    let run = tokio::process::Command::new("mbpoll")
        .args(args)
        .kill_on_drop(true)
        .output();
    let out = match tokio::time::timeout(PATIENCE, run).await {
        Err(_) => panic!("mbpoll {args:?} did not finish within {PATIENCE:?}"),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "mbpoll is not installed; these tests need it as an independent Modbus master: \
             `apt-get install mbpoll` (the CI script .ci/run installs it)"
        ),
        Ok(Err(e)) => panic!("running mbpoll {args:?}: {e}"),
        Ok(Ok(out)) => out,
    };
    Polled {
        ok: out.status.success(),
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        elapsed: started.elapsed(),
    }
}

/// mbpoll reading channel `ch`'s f32 from `unit` at `target` (TCP `port` or RTU line).
fn float_args(target: &Endpoint, unit: u8, ch: u16, timeout_s: &str) -> Vec<String> {
    let reference = profile::channel_base(ch) + 1;
    let mut args: Vec<String> = match target {
        Endpoint::Tcp(port) => vec!["-m".into(), "tcp".into(), "-p".into(), port.to_string()],
        Endpoint::Rtu(_, baud) => {
            vec![
                "-m".into(),
                "rtu".into(),
                "-b".into(),
                baud.to_string(),
                "-P".into(),
                "none".into(),
            ]
        }
    };
    for a in [
        "-a",
        &unit.to_string(),
        "-t",
        "3:float",
        "-B",
        "-r",
        &reference.to_string(),
        "-c",
        "1",
        "-1",
        "-o",
        timeout_s,
    ] {
        args.push(a.into());
    }
    args.push(match target {
        Endpoint::Tcp(_) => "127.0.0.1".into(),
        Endpoint::Rtu(link, _) => link.display().to_string(),
    });
    args
}

/// Where mbpoll connects.
enum Endpoint {
    Tcp(u16),
    Rtu(PathBuf, u32),
}

/// Reads channel `ch` of `unit` with mbpoll and checks it against node `i`'s core.
async fn assert_reads_core_value(
    target: &Endpoint,
    fleet: &Fleet,
    i: usize,
    unit: u8,
    ch: u16,
) -> Polled {
    let polled = mbpoll(&float_args(target, unit, ch, "5")).await;
    let expected = core_value(fleet, i, usize::from(ch));
    let reference = profile::channel_base(ch) + 1;
    assert!(
        polled.ok,
        "unit {unit} channel {ch}: mbpoll failed:\n{}",
        polled.output
    );
    let values = polled.values();
    assert_eq!(
        values.len(),
        1,
        "unit {unit} channel {ch}: one value expected:\n{}",
        polled.output
    );
    let (got_ref, got) = values[0];
    assert_eq!(got_ref, reference);
    assert!(
        (got - f64::from(expected)).abs() <= f64::from(expected).abs() * 1e-6,
        "unit {unit} channel {ch} (reference {reference}): mbpoll read {got}, the core holds {expected}"
    );
    polled
}

/// mbpoll's verdict on a faulty slave: it fails, and says `expected` (an exception's text, a
/// timeout, a CRC error …).
async fn assert_mbpoll_fails_with(
    target: &Endpoint,
    unit: u8,
    timeout_s: &str,
    expected: &str,
) -> Polled {
    let polled = mbpoll(&float_args(target, unit, 0, timeout_s)).await;
    assert!(
        !polled.ok,
        "mbpoll should fail with {expected:?}:\n{}",
        polled.output
    );
    assert!(
        polled.error().contains(expected),
        "mbpoll should report {expected:?}, reported {:?}:\n{}",
        polled.error(),
        polled.output
    );
    polled
}

// ------------------------------------------------------------------------------------------
// Raw Modbus TCP.
// ------------------------------------------------------------------------------------------

fn mbap(transaction: u16, unit: u8, pdu: &[u8]) -> Vec<u8> {
    let mut adu = transaction.to_be_bytes().to_vec();
    adu.extend_from_slice(&[0, 0]);
    adu.extend_from_slice(&(1 + pdu.len() as u16).to_be_bytes());
    adu.push(unit);
    adu.extend_from_slice(pdu);
    adu
}

/// Read input registers: channel `ch`'s value, two registers.
fn read_value_pdu(ch: u16) -> [u8; 5] {
    let [a0, a1] = profile::channel_base(ch).to_be_bytes();
    [0x04, a0, a1, 0x00, 0x02]
}

/// The response PDU a node holding `value` in the channel owes [`read_value_pdu`].
fn value_response(value: f32) -> Vec<u8> {
    let mut pdu = vec![0x04, 0x04];
    pdu.extend_from_slice(&value.to_bits().to_be_bytes());
    pdu
}

async fn connect(addr: SocketAddr) -> TcpStream {
    tokio::time::timeout(PATIENCE, TcpStream::connect(addr))
        .await
        .expect("connect in time")
        .expect("connect")
}

/// What arrives until the peer closes, `quiet` passes after some bytes, or `PATIENCE` passes
/// with none.
async fn read_until_quiet(stream: &mut TcpStream, quiet: Duration) -> (Vec<u8>, bool) {
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        let wait = if got.is_empty() { PATIENCE } else { quiet };
        match tokio::time::timeout(wait, stream.read(&mut buf)).await {
            Err(_) => return (got, false),
            Ok(Ok(0)) | Ok(Err(_)) => return (got, true),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// One request on a fresh connection; the raw reply and whether the server closed.
async fn tcp_raw(
    addr: SocketAddr,
    transaction: u16,
    unit: u8,
    pdu: &[u8],
    quiet: Duration,
) -> (Vec<u8>, bool) {
    let mut stream = connect(addr).await;
    stream
        .write_all(&mbap(transaction, unit, pdu))
        .await
        .expect("send request");
    read_until_quiet(&mut stream, quiet).await
}

// ------------------------------------------------------------------------------------------
// Raw Modbus RTU on the pseudo-terminal, as a master opens it.
// ------------------------------------------------------------------------------------------

/// What came back for one request.
struct RtuReply {
    bytes: Vec<u8>,
    /// From just before the request was written to when the last byte was read.
    to_last_byte: Duration,
}

/// One exchange as a master that opens the line for it: open the link, discard whatever waits
/// in the receive buffer (as a careful master does before a request), send `request` (an ADU,
/// CRC included), read until `want` bytes, 0.3 s of silence after the first, or `first_within`
/// without any, and close.
async fn rtu_transact(
    link: &Path,
    request: Vec<u8>,
    want: usize,
    first_within: Duration,
) -> RtuReply {
    let link = link.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut line = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(OFlag::O_NOCTTY.bits())
            .open(&link)
            .unwrap_or_else(|e| panic!("opening {}: {e}", link.display()));
        let mut t = tcgetattr(&line).expect("tcgetattr");
        cfmakeraw(&mut t);
        // A read returns what has arrived, or nothing after 0.3 s of silence.
        t.control_chars[SpecialCharacterIndices::VMIN as usize] = 0;
        t.control_chars[SpecialCharacterIndices::VTIME as usize] = 3;
        tcsetattr(&line, SetArg::TCSANOW, &t).expect("tcsetattr");
        tcflush(&line, FlushArg::TCIFLUSH).expect("tcflush");
        let sent = Instant::now();
        line.write_all(&request).expect("write request");
        let mut bytes = Vec::new();
        let mut last = sent;
        let mut buf = [0u8; 512];
        while bytes.len() < want {
            let n = line.read(&mut buf).expect("read reply");
            if n == 0 {
                if !bytes.is_empty() || sent.elapsed() >= first_within {
                    break;
                }
                continue;
            }
            last = Instant::now();
            bytes.extend_from_slice(&buf[..n]);
        }
        RtuReply {
            bytes,
            to_last_byte: last - sent,
        }
    })
    .await
    .expect("raw RTU client")
}

fn rtu_adu(unit: u8, pdu: &[u8]) -> Vec<u8> {
    let mut adu = vec![unit];
    adu.extend_from_slice(pdu);
    let crc = rtu_crc_bytes(&adu);
    adu.extend_from_slice(&crc);
    adu
}

// ------------------------------------------------------------------------------------------
// Modbus TCP.
// ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_per_node_listeners_count_up_from_the_bus_port_and_serve_core_values() {
    // A base port whose two successors are free too; another process may take one in between,
    // so a failed bind is retried on a new base.
    let mut attempt = 0;
    let (fleet, server, base) = loop {
        attempt += 1;
        let base = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("probe")
            .local_addr()
            .expect("addr");
        let bus = tcp_bus("tcp-per-node", base, true);
        let fleet = fleet(
            1,
            vec![bus.clone()],
            vec![
                node("pn-a", "tcp-per-node", 1, &[12.5, 3.25]),
                node("pn-b", "tcp-per-node", 2, &[42.0]),
                node("pn-c", "tcp-per-node", 1, &[-7.75]),
            ],
        );
        match modbus_tcp::start(Arc::clone(&fleet), &bus, 1).await {
            Ok(server) => break (fleet, server, base),
            Err(e) if attempt < 20 && e.kind() == std::io::ErrorKind::AddrInUse => continue,
            Err(e) => panic!("starting the per-node listeners: {e}"),
        }
    };
    let ports: Vec<u16> = server.addrs().iter().map(|a| a.port()).collect();
    assert_eq!(
        ports,
        [base.port(), base.port() + 1, base.port() + 2],
        "in nodes_on_bus order"
    );
    assert_eq!(fleet.nodes_on_bus("tcp-per-node"), [0, 1, 2]);

    for (i, unit, channels) in [(0usize, 1u8, 2u16), (1, 2, 1), (2, 1, 1)] {
        let port = server.addr_of(i).expect("listener of the node").port();
        for ch in 0..channels {
            assert_reads_core_value(&Endpoint::Tcp(port), &fleet, i, unit, ch).await;
        }
    }
    // A Modbus TCP device answers whatever unit ID it is sent, and echoes it.
    let (reply, _) = tcp_raw(
        server.addr_of(1).expect("node b"),
        0x0101,
        0xFF,
        &read_value_pdu(0),
        Duration::from_millis(300),
    )
    .await;
    assert_eq!(
        reply,
        mbap(0x0101, 0xFF, &value_response(core_value(&fleet, 1, 0)))
    );
    let stats = server.stats();
    assert_eq!(
        (stats.requests, stats.replies, stats.malformed),
        (5, 5, 0),
        "{stats:?}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_gateway_routes_by_unit_and_answers_unknown_units_with_0x0b() {
    let bus = tcp_bus("tcp-gw", loopback0(), false);
    let fleet = fleet(
        2,
        vec![bus.clone()],
        vec![
            node("gw-1", "tcp-gw", 1, &[101.5]),
            node("gw-2", "tcp-gw", 2, &[202.25, 0.5]),
            node("gw-17", "tcp-gw", 17, &[1717.75]),
        ],
    );
    let server = modbus_tcp::start(Arc::clone(&fleet), &bus, 2)
        .await
        .expect("gateway starts");
    assert_eq!(server.addrs().len(), 1);
    let port = Endpoint::Tcp(server.addrs()[0].port());
    assert_reads_core_value(&port, &fleet, 0, 1, 0).await;
    assert_reads_core_value(&port, &fleet, 1, 2, 0).await;
    assert_reads_core_value(&port, &fleet, 1, 2, 1).await;
    assert_reads_core_value(&port, &fleet, 2, 17, 0).await;

    // libmodbus's text for exception 0x0B.
    assert_mbpoll_fails_with(&port, 9, "5", "Target device failed to respond").await;
    let (reply, _) = tcp_raw(
        server.addrs()[0],
        7,
        9,
        &read_value_pdu(0),
        Duration::from_millis(300),
    )
    .await;
    assert_eq!(reply, mbap(7, 9, &[0x84, 0x0B]));
    let stats = server.stats();
    assert_eq!(
        (stats.requests, stats.unknown_units, stats.exceptions),
        (6, 2, 2),
        "{stats:?}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_faults_are_seen_by_mbpoll_and_on_the_wire() {
    let bus = tcp_bus("tcp-faults", loopback0(), false);
    let fleet = fleet(
        3,
        vec![bus.clone()],
        vec![
            node("tf-1", "tcp-faults", 1, &[55.5]),
            node("tf-2", "tcp-faults", 2, &[66.25]),
        ],
    );
    let server = modbus_tcp::start(Arc::clone(&fleet), &bus, 3)
        .await
        .expect("starts");
    let addr = server.addrs()[0];
    let port = Endpoint::Tcp(addr.port());
    let good = value_response(core_value(&fleet, 0, 0));
    let quiet = Duration::from_millis(400);
    let mut before = server.stats();
    let mut counted = |what: &str, f: fn(&ModbusCounts) -> u64| {
        let now = server.stats();
        assert_eq!(f(&now), f(&before) + 1, "{what} counted once: {now:?}");
        before = now;
    };

    // Exceptions, in libmodbus's words.
    for (code, text) in [
        (2, "Illegal data address"),
        (4, "Slave device or server failure"),
        (6, "Slave device or server is busy"),
    ] {
        let id = inject(&fleet, "tf-1", Fault::Exception { code });
        assert_mbpoll_fails_with(&port, 1, "5", text).await;
        counted("exception", |c| c.faults.exception);
        fleet.faults.clear(id);
    }

    let id = inject(&fleet, "tf-1", Fault::NoReply);
    assert_mbpoll_fails_with(&port, 1, "0.5", "Connection timed out").await;
    counted("no_reply", |c| c.faults.no_reply);
    fleet.faults.clear(id);

    let id = inject(&fleet, "tf-1", Fault::DropConnection);
    assert_mbpoll_fails_with(&port, 1, "5", "Connection reset by peer").await;
    counted("drop_connection", |c| c.faults.drop_connection);
    let (reply, closed) = tcp_raw(addr, 1, 1, &read_value_pdu(0), quiet).await;
    assert!(
        reply.is_empty() && closed,
        "the server closes without a byte: {reply:02X?}"
    );
    counted("drop_connection", |c| c.faults.drop_connection);
    fleet.faults.clear(id);

    let id = inject(&fleet, "tf-1", Fault::SlowReply { delay_ms: 1200 });
    assert_mbpoll_fails_with(&port, 1, "0.5", "Connection timed out").await;
    counted("slow_reply", |c| c.faults.slow_reply);
    let polled = assert_reads_core_value(&port, &fleet, 0, 1, 0).await;
    assert!(
        polled.elapsed >= Duration::from_millis(1200),
        "answered late: {:?}",
        polled.elapsed
    );
    counted("slow_reply", |c| c.faults.slow_reply);
    fleet.faults.clear(id);

    // The length field claims a byte that never comes.
    let id = inject(&fleet, "tf-1", Fault::WrongCrc);
    let (reply, closed) = tcp_raw(addr, 0x2222, 1, &read_value_pdu(0), quiet).await;
    assert!(!closed);
    assert_eq!(
        reply.len(),
        7 + good.len(),
        "the whole reply came: {reply:02X?}"
    );
    let length = u16::from_be_bytes([reply[4], reply[5]]);
    assert_eq!(
        usize::from(length),
        1 + good.len() + 1,
        "MBAP length does not match the bytes that follow"
    );
    assert_eq!(reply[7..], good[..], "only the length is wrong");
    counted("wrong_crc", |c| c.faults.wrong_crc);
    fleet.faults.clear(id);

    let id = inject(&fleet, "tf-1", Fault::Truncated);
    assert_mbpoll_fails_with(&port, 1, "0.5", "Connection timed out").await;
    counted("truncated", |c| c.faults.truncated);
    let (reply, closed) = tcp_raw(addr, 0x3333, 1, &read_value_pdu(0), quiet).await;
    assert!(!closed);
    let full = mbap(0x3333, 1, &good);
    assert!(
        !reply.is_empty() && reply.len() < full.len(),
        "cut short: {reply:02X?}"
    );
    assert_eq!(reply[..], full[..reply.len()], "a prefix of the real reply");
    counted("truncated", |c| c.faults.truncated);
    fleet.faults.clear(id);

    let id = inject(&fleet, "tf-1", Fault::Garbage);
    let polled = mbpoll(&float_args(&port, 1, 0, "0.5")).await;
    assert!(
        !polled.ok && !polled.error().is_empty(),
        "mbpoll rejects garbage:\n{}",
        polled.output
    );
    counted("garbage", |c| c.faults.garbage);
    let (reply, _) = tcp_raw(addr, 0x4444, 1, &read_value_pdu(0), quiet).await;
    let real = mbap(0x4444, 1, &good);
    assert_eq!(
        reply.len(),
        real.len(),
        "as long as the real reply: {reply:02X?}"
    );
    assert_ne!(
        reply[..4],
        real[..4],
        "neither the transaction nor the protocol id: {reply:02X?}"
    );
    counted("garbage", |c| c.faults.garbage);
    fleet.faults.clear(id);

    let id = inject(&fleet, "tf-1", Fault::WrongUnit);
    let (reply, _) = tcp_raw(addr, 0x5555, 1, &read_value_pdu(0), quiet).await;
    let mut expected = mbap(0x5555, 1, &good);
    expected[6] = 2;
    assert_eq!(reply, expected, "the real reply under unit 2");
    counted("wrong_unit", |c| c.faults.wrong_unit);
    fleet.faults.clear(id);

    // A fault on one node leaves its neighbour behind the gateway alone.
    let id = inject(&fleet, "tf-1", Fault::NoReply);
    assert_reads_core_value(&port, &fleet, 1, 2, 0).await;
    fleet.faults.clear(id);
    // And with every fault cleared the node answers again.
    assert_reads_core_value(&port, &fleet, 0, 1, 0).await;
    assert_eq!(server.stats().malformed, 0);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_malformed_headers_close_only_their_connection() {
    let bus = tcp_bus("tcp-malformed", loopback0(), false);
    let fleet = fleet(
        4,
        vec![bus.clone()],
        vec![node("tm-1", "tcp-malformed", 1, &[8.5])],
    );
    let server = modbus_tcp::start(Arc::clone(&fleet), &bus, 4)
        .await
        .expect("starts");
    let addr = server.addrs()[0];
    let port = Endpoint::Tcp(addr.port());

    // A connection that stays open and well-behaved throughout.
    let mut steady = connect(addr).await;
    let bad_headers: [&[u8]; 3] = [
        // Protocol id 1.
        &[
            0x00, 0x01, 0x00, 0x01, 0x00, 0x06, 0x01, 0x04, 0x01, 0x10, 0x00, 0x02,
        ],
        // Length 0x0200: more than any PDU.
        &[0x00, 0x02, 0x00, 0x00, 0x02, 0x00, 0x01, 0x04],
        // Length 1: a unit id and no function code.
        &[0x00, 0x03, 0x00, 0x00, 0x00, 0x01, 0x01],
    ];
    for (k, header) in bad_headers.iter().enumerate() {
        let mut stream = connect(addr).await;
        stream.write_all(header).await.expect("send");
        let (reply, closed) = read_until_quiet(&mut stream, Duration::from_millis(300)).await;
        assert!(
            closed && reply.is_empty(),
            "header {k}: closed without an answer, got {reply:02X?}"
        );
        assert_eq!(server.stats().malformed, k as u64 + 1);
    }
    steady
        .write_all(&mbap(9, 1, &read_value_pdu(0)))
        .await
        .expect("send");
    let mut reply = vec![0u8; 7 + 6];
    tokio::time::timeout(PATIENCE, steady.read_exact(&mut reply))
        .await
        .expect("in time")
        .expect("reply");
    assert_eq!(reply, mbap(9, 1, &value_response(core_value(&fleet, 0, 0))));
    assert_reads_core_value(&port, &fleet, 0, 1, 0).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_many_connections_at_once_and_a_slow_node_holds_up_no_other() {
    let bus = tcp_bus("tcp-load", loopback0(), false);
    let values = [[11.5], [22.5], [33.5], [44.5]];
    let nodes = (0..4)
        .map(|k| node(&format!("tl-{k}"), "tcp-load", k as u8 + 1, &values[k]))
        .collect();
    let fleet = fleet(5, vec![bus.clone()], nodes);
    let server = modbus_tcp::start(Arc::clone(&fleet), &bus, 5)
        .await
        .expect("starts");
    let addr = server.addrs()[0];
    let expected: Vec<Vec<u8>> = (0..4)
        .map(|k| value_response(core_value(&fleet, k, 0)))
        .collect();

    const CLIENTS: usize = 40;
    const REQUESTS: usize = 10;
    let mut clients = tokio::task::JoinSet::new();
    for c in 0..CLIENTS {
        let expected = expected.clone();
        clients.spawn(async move {
            let mut stream = connect(addr).await;
            for r in 0..REQUESTS {
                let k = (c + r) % 4;
                let transaction = (c * REQUESTS + r) as u16;
                stream
                    .write_all(&mbap(transaction, k as u8 + 1, &read_value_pdu(0)))
                    .await
                    .expect("send");
                let mut reply = vec![0u8; 7 + expected[k].len()];
                tokio::time::timeout(PATIENCE, stream.read_exact(&mut reply))
                    .await
                    .expect("in time")
                    .expect("reply");
                assert_eq!(
                    reply,
                    mbap(transaction, k as u8 + 1, &expected[k]),
                    "client {c} request {r}"
                );
            }
        });
    }
    while let Some(done) = clients.join_next().await {
        done.expect("client");
    }
    let stats = server.stats();
    assert_eq!(stats.connections, CLIENTS as u64);
    assert_eq!(
        (stats.requests, stats.replies),
        ((CLIENTS * REQUESTS) as u64, (CLIENTS * REQUESTS) as u64)
    );

    // While node 1 sits on a slow reply, node 2 answers: the node is not locked across the delay.
    let id = inject(&fleet, "tl-0", Fault::SlowReply { delay_ms: 4000 });
    let slow = tokio::spawn(async move {
        tcp_raw(addr, 1, 1, &read_value_pdu(0), Duration::from_millis(300)).await
    });
    assert_reads_core_value(&Endpoint::Tcp(addr.port()), &fleet, 1, 2, 0).await;
    assert!(
        !slow.is_finished(),
        "the slow reply is still pending when the other node has answered"
    );
    let (reply, _) = slow.await.expect("slow client");
    assert_eq!(reply, mbap(1, 1, &expected[0]), "and comes in the end");
    fleet.faults.clear(id);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_garbage_is_drawn_from_the_fleet_seed() {
    async fn garbage(seed: u64) -> Vec<u8> {
        let bus = tcp_bus("tcp-garbage", loopback0(), false);
        let fleet = fleet(
            seed,
            vec![bus.clone()],
            vec![node("tg-1", "tcp-garbage", 1, &[1.0])],
        );
        inject(&fleet, "tg-1", Fault::Garbage);
        let server = modbus_tcp::start(Arc::clone(&fleet), &bus, seed)
            .await
            .expect("starts");
        let mut stream = connect(server.addrs()[0]).await;
        let mut replies = Vec::new();
        for t in 0..2u16 {
            stream
                .write_all(&mbap(t, 1, &read_value_pdu(0)))
                .await
                .expect("send");
            let mut reply = vec![0u8; 7 + 6];
            tokio::time::timeout(PATIENCE, stream.read_exact(&mut reply))
                .await
                .expect("in time")
                .expect("reply");
            replies.extend_from_slice(&reply);
        }
        assert_eq!(server.stats().faults.garbage, 2);
        server.shutdown().await;
        replies
    }
    let a = garbage(11).await;
    assert_eq!(a, garbage(11).await, "the same seed, the same garbage");
    assert_ne!(a, garbage(12).await, "another seed, other garbage");
    assert_ne!(a[..13], a[13..], "successive replies differ");
}

// ------------------------------------------------------------------------------------------
// Modbus RTU.
// ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtu_several_units_share_one_line() {
    let (_dir, link) = link_path("units");
    let bus = rtu_bus("rtu-units", &link, 9600, false);
    let fleet = fleet(
        6,
        vec![bus.clone()],
        vec![
            node("ru-1", "rtu-units", 1, &[10.25, 20.5]),
            node("ru-5", "rtu-units", 5, &[50.75]),
            node("ru-9", "rtu-units", 9, &[-90.5]),
        ],
    );
    let server = modbus_rtu::start(Arc::clone(&fleet), &bus, 6)
        .await
        .expect("starts");
    assert_eq!(std::fs::read_link(&link).expect("symlink"), server.pty());
    let line = Endpoint::Rtu(link.clone(), 9600);
    assert_reads_core_value(&line, &fleet, 0, 1, 0).await;
    assert_reads_core_value(&line, &fleet, 0, 1, 1).await;
    assert_reads_core_value(&line, &fleet, 1, 5, 0).await;
    assert_reads_core_value(&line, &fleet, 2, 9, 0).await;

    // A unit nobody has: silence, as on a real line.
    assert_mbpoll_fails_with(&line, 3, "0.5", "Connection timed out").await;
    // A raw master sees each reply under its own unit with a good CRC.
    for (i, unit) in [(0usize, 1u8), (1, 5), (2, 9)] {
        let reply = rtu_transact(&link, rtu_adu(unit, &read_value_pdu(0)), 9, PATIENCE).await;
        assert_eq!(
            reply.bytes,
            rtu_adu(unit, &value_response(core_value(&fleet, i, 0)))
        );
    }
    let stats = server.stats();
    assert_eq!(
        (
            stats.requests,
            stats.replies,
            stats.unknown_units,
            stats.malformed
        ),
        (7, 7, 1, 0),
        "{stats:?}"
    );
    server.shutdown().await;
    assert!(
        std::fs::symlink_metadata(&link).is_err(),
        "the symlink goes with the bus"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtu_faults_are_seen_by_mbpoll_and_on_the_wire() {
    let (_dir, link) = link_path("faults");
    let bus = rtu_bus("rtu-faults", &link, 9600, false);
    let fleet = fleet(
        7,
        vec![bus.clone()],
        vec![
            node("rf-1", "rtu-faults", 1, &[77.5]),
            node("rf-2", "rtu-faults", 2, &[88.25]),
        ],
    );
    let server = modbus_rtu::start(Arc::clone(&fleet), &bus, 7)
        .await
        .expect("starts");
    let line = Endpoint::Rtu(link.clone(), 9600);
    let good = rtu_adu(1, &value_response(core_value(&fleet, 0, 0)));
    let request = rtu_adu(1, &read_value_pdu(0));
    let mut before = server.stats();
    let mut counted = |what: &str, f: fn(&ModbusCounts) -> u64, times: u64| {
        let now = server.stats();
        assert_eq!(
            f(&now),
            f(&before) + times,
            "{what} counted {times} times: {now:?}"
        );
        before = now;
    };

    for (code, text) in [
        (2, "Illegal data address"),
        (4, "Slave device or server failure"),
        (6, "Slave device or server is busy"),
    ] {
        let id = inject(&fleet, "rf-1", Fault::Exception { code });
        assert_mbpoll_fails_with(&line, 1, "5", text).await;
        counted("exception", |c| c.faults.exception, 1);
        fleet.faults.clear(id);
    }

    let id = inject(&fleet, "rf-1", Fault::NoReply);
    assert_mbpoll_fails_with(&line, 1, "0.5", "Connection timed out").await;
    counted("no_reply", |c| c.faults.no_reply, 1);
    fleet.faults.clear(id);

    // A serial line has no connection to drop: the request goes unanswered.
    let id = inject(&fleet, "rf-1", Fault::DropConnection);
    assert_mbpoll_fails_with(&line, 1, "0.5", "Connection timed out").await;
    counted("drop_connection", |c| c.faults.drop_connection, 1);
    fleet.faults.clear(id);

    let id = inject(&fleet, "rf-1", Fault::SlowReply { delay_ms: 1200 });
    assert_mbpoll_fails_with(&line, 1, "0.5", "Connection timed out").await;
    // The late reply to the abandoned request must not pass for the answer to the next one.
    let polled = assert_reads_core_value(&line, &fleet, 0, 1, 0).await;
    assert!(
        polled.elapsed >= Duration::from_millis(1200),
        "answered late: {:?}",
        polled.elapsed
    );
    counted("slow_reply", |c| c.faults.slow_reply, 2);
    fleet.faults.clear(id);

    let id = inject(&fleet, "rf-1", Fault::WrongCrc);
    assert_mbpoll_fails_with(&line, 1, "5", "Invalid CRC").await;
    let reply = rtu_transact(&link, request.clone(), good.len(), PATIENCE).await;
    assert_eq!(reply.bytes.len(), good.len());
    assert!(
        check_rtu_adu(&reply.bytes).is_err(),
        "the CRC does not check: {:02X?}",
        reply.bytes
    );
    assert_eq!(
        reply.bytes[..good.len() - 2],
        good[..good.len() - 2],
        "only the CRC is wrong"
    );
    counted("wrong_crc", |c| c.faults.wrong_crc, 2);
    fleet.faults.clear(id);

    let id = inject(&fleet, "rf-1", Fault::WrongUnit);
    assert_mbpoll_fails_with(&line, 1, "5", "Response not from requested slave").await;
    let reply = rtu_transact(&link, request.clone(), good.len(), PATIENCE).await;
    assert_eq!(
        reply.bytes,
        rtu_adu(2, &value_response(core_value(&fleet, 0, 0))),
        "a valid frame from unit 2"
    );
    counted("wrong_unit", |c| c.faults.wrong_unit, 2);
    fleet.faults.clear(id);

    let id = inject(&fleet, "rf-1", Fault::Truncated);
    assert_mbpoll_fails_with(&line, 1, "0.5", "Connection timed out").await;
    let reply = rtu_transact(&link, request.clone(), good.len(), PATIENCE).await;
    assert!(
        !reply.bytes.is_empty() && reply.bytes.len() < good.len(),
        "cut short: {:02X?}",
        reply.bytes
    );
    assert_eq!(
        reply.bytes[..],
        good[..reply.bytes.len()],
        "a prefix of the real reply"
    );
    counted("truncated", |c| c.faults.truncated, 2);
    fleet.faults.clear(id);

    let id = inject(&fleet, "rf-1", Fault::Garbage);
    let polled = mbpoll(&float_args(&line, 1, 0, "0.5")).await;
    assert!(
        !polled.ok && !polled.error().is_empty(),
        "mbpoll rejects garbage:\n{}",
        polled.output
    );
    let reply = rtu_transact(&link, request.clone(), good.len(), PATIENCE).await;
    assert_eq!(reply.bytes.len(), good.len(), "as long as the real reply");
    assert!(
        check_rtu_adu(&reply.bytes).is_err() || reply.bytes[0] != 1,
        "not a frame from unit 1: {:02X?}",
        reply.bytes
    );
    counted("garbage", |c| c.faults.garbage, 2);
    fleet.faults.clear(id);

    // Unit 2 was never faulted, and unit 1 recovers once cleared.
    assert_reads_core_value(&line, &fleet, 1, 2, 0).await;
    assert_reads_core_value(&line, &fleet, 0, 1, 0).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtu_broadcast_writes_reach_every_node_and_get_no_reply() {
    let (_dir, link) = link_path("broadcast");
    let bus = rtu_bus("rtu-broadcast", &link, 19_200, false);
    let fleet = fleet(
        8,
        vec![bus.clone()],
        vec![
            node("rb-1", "rtu-broadcast", 1, &[1.5]),
            node("rb-2", "rtu-broadcast", 2, &[2.5]),
            node("rb-3", "rtu-broadcast", 3, &[3.5]),
        ],
    );
    let server = modbus_rtu::start(Arc::clone(&fleet), &bus, 8)
        .await
        .expect("starts");
    let mode_of = |i: usize| -> NodeMode { fleet.node(i).core().config().mode };
    assert!((0..3).all(|i| mode_of(i) == NodeMode::Normal));

    // Write single register: mode (0x1004) = 1, maintenance, to unit 0.
    let mode_register = profile::CONFIG_BLOCK + 4;
    let [a0, a1] = mode_register.to_be_bytes();
    let reply = rtu_transact(
        &link,
        rtu_adu(0, &[0x06, a0, a1, 0x00, 0x01]),
        1,
        Duration::from_secs(1),
    )
    .await;
    assert!(
        reply.bytes.is_empty(),
        "nobody answers a broadcast: {:02X?}",
        reply.bytes
    );
    assert!(
        (0..3).all(|i| mode_of(i) == NodeMode::Maintenance),
        "every node executed it"
    );
    assert_eq!(server.stats().broadcasts, 1);

    // And each node says so itself, to mbpoll: holding register 0x1004, reference 0x1005.
    for unit in 1..=3u8 {
        let args: Vec<String> = [
            "-m",
            "rtu",
            "-b",
            "19200",
            "-P",
            "none",
            "-a",
            &unit.to_string(),
            "-t",
            "4",
            "-r",
            &(mode_register + 1).to_string(),
            "-c",
            "1",
            "-1",
            "-o",
            "5",
            &link.display().to_string(),
        ]
        .map(String::from)
        .to_vec();
        let polled = mbpoll(&args).await;
        assert!(polled.ok, "unit {unit}:\n{}", polled.output);
        assert_eq!(
            polled.values(),
            [(mode_register + 1, 1.0)],
            "unit {unit} is in maintenance:\n{}",
            polled.output
        );
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtu_paced_replies_keep_the_byte_rate_and_the_t3_5_silence() {
    const BAUD: u32 = 2400;
    let (_dir, link) = link_path("pace");
    let bus = rtu_bus("rtu-pace", &link, BAUD, true);
    let fleet = fleet(
        9,
        vec![bus.clone()],
        vec![node("rp-1", "rtu-pace", 4, &[123.25, 4.5])],
    );
    let server = modbus_rtu::start(Arc::clone(&fleet), &bus, 9)
        .await
        .expect("starts");

    // The identity block: 32 registers, a 69-byte reply.
    let reply = rtu_transact(
        &link,
        rtu_adu(4, &[0x04, 0x00, 0x00, 0x00, 0x20]),
        69,
        PATIENCE,
    )
    .await;
    assert_eq!(reply.bytes.len(), 69);
    let body = check_rtu_adu(&reply.bytes).expect("a good CRC");
    assert_eq!(
        body[..5],
        [4, 0x04, 64, 0x54, 0x5A],
        "unit 4's identity block, magic \"TZ\" first"
    );
    // The reply cannot start before t3.5 of silence after the request, nor its last byte leave
    // before 68 more characters of 11 bits each.
    let timing = RtuTiming::from_baud(BAUD);
    let char_time = Duration::from_secs_f64(11.0 / f64::from(BAUD));
    let least = Duration::from_micros(u64::from(timing.t3_5_us())) + char_time * 68;
    assert!(
        reply.to_last_byte >= least,
        "69 bytes at {BAUD} baud took {:?}, at least {least:?}",
        reply.to_last_byte
    );

    // And a master at that rate reads the channels.
    let line = Endpoint::Rtu(link.clone(), BAUD);
    assert_reads_core_value(&line, &fleet, 0, 4, 0).await;
    assert_reads_core_value(&line, &fleet, 0, 4, 1).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtu_link_replaces_a_stale_symlink_but_never_a_file() {
    let (_dir, link) = link_path("stale");
    std::os::unix::fs::symlink("/dev/pts/does-not-exist", &link).expect("stale symlink");
    let bus = rtu_bus("rtu-stale", &link, 9600, false);
    let fleet = fleet(
        10,
        vec![bus.clone()],
        vec![node("rs-1", "rtu-stale", 1, &[5.5])],
    );
    let server: ModbusRtuServer = modbus_rtu::start(Arc::clone(&fleet), &bus, 10)
        .await
        .expect("starts over a stale link");
    assert_eq!(std::fs::read_link(&link).expect("symlink"), server.pty());
    assert_reads_core_value(&Endpoint::Rtu(link.clone(), 9600), &fleet, 0, 1, 0).await;
    server.shutdown().await;
    assert!(
        std::fs::symlink_metadata(&link).is_err(),
        "removed on shutdown"
    );
    let server = modbus_rtu::start(Arc::clone(&fleet), &bus, 10)
        .await
        .expect("starts again");
    assert_eq!(std::fs::read_link(&link).expect("symlink"), server.pty());
    drop(server);
    assert!(
        std::fs::symlink_metadata(&link).is_err(),
        "removed when the handle is dropped"
    );

    std::fs::write(&link, "not a symlink").expect("plain file");
    let err = modbus_rtu::start(Arc::clone(&fleet), &bus, 10)
        .await
        .expect_err("a plain file is left alone");
    assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
    assert!(
        err.to_string().contains("rtu-stale"),
        "the error names the bus: {err}"
    );
    assert_eq!(
        std::fs::read_to_string(&link).expect("still there"),
        "not a symlink"
    );

    // The wrong kind of bus is refused with its name.
    let tcp: Result<ModbusTcpServer, _> = modbus_tcp::start(Arc::clone(&fleet), &bus, 10).await;
    assert!(
        tcp.expect_err("not a TCP bus")
            .to_string()
            .contains("rtu-stale")
    );
}
