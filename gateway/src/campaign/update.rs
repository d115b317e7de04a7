//! Updating one node: look at what it runs, send the image (`crate::flash`), then wait for it
//! to come back from its reset and read the version it reports.
//!
//! Before the transfer the node's identity block (model, version) and status block (reset
//! count) are read: a node already on the image's version is counted updated without a
//! transfer (so resuming a campaign cut by a restart does not send an image twice), and a
//! node reporting another model is failed without one. After the node staged the image it
//! resets into it; the verification reads the status block until the reset count moved — so a
//! read that reaches the node before it reset is not taken for a rollback — and then the
//! identity block. That read is a register read after the trial boot: the health poll on
//! which the node confirms the image. The new version there means updated; the old one means
//! the node rolled back.
//!
//! On a Modbus RTU bus every request — the reads before and after, and the transfer's — goes
//! through the bus's task, which polls the line and carries them between its polls
//! ([`crate::sources::modbus::lend`]): the gateway holds the serial port, and the bus's other
//! nodes keep being polled while the image goes over. On Modbus TCP the node is reached
//! directly, on a connection of its own.

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use tianzhong_protocol::registers::RegisterTable;
use tianzhong_protocol::registers::profile::{self, FirmwareVersion, Identity, Status};
use tracing::{info, warn};

use super::plan::TargetNode;
use super::state::NodeState;
use crate::flash::{FlashError, FlashReport, RtuMode};
use crate::probe::ProbeTarget;
use crate::sources::modbus::lend::{BusLine, LentFiles};
use crate::sources::modbus::link::{BusLink, ReadResult};
use crate::sources::modbus::plan::ReadRequest;

/// How often a staged node is read while it resets.
pub const VERIFY_POLL: Duration = Duration::from_millis(200);

fn why(r: ReadResult) -> String {
    match r {
        ReadResult::Timeout => "no answer (timeout)".into(),
        ReadResult::Exception(c) => format!("Modbus exception {c:02X}"),
        ReadResult::Malformed(m) => format!("malformed answer: {m}"),
        ReadResult::LinkError(m) => format!("link error: {m}"),
        ReadResult::Data(_) => "no data".into(),
    }
}

/// How the node's registers are read: on a link of the campaign's own, or through the task
/// polling the node's serial bus.
enum Access {
    Own(BusLink),
    Lent(BusLine),
}

impl Access {
    async fn read(&mut self, unit: u8, request: &ReadRequest) -> ReadResult {
        match self {
            Access::Own(link) => link.read(unit, request).await,
            Access::Lent(line) => line.read(unit, *request).await,
        }
    }

    /// After a failed read: a link of its own is remade; a bus task remakes its own.
    async fn reset(&mut self) {
        if let Access::Own(link) = self {
            link.reset().await;
        }
    }
}

async fn identity(link: &mut Access, unit: u8) -> Result<Identity, String> {
    let request = ReadRequest {
        table: RegisterTable::Input,
        start: profile::IDENTITY_BLOCK,
        count: profile::IDENTITY_LEN,
    };
    match link.read(unit, &request).await {
        ReadResult::Data(r) => {
            Identity::decode(&r).map_err(|e| format!("identity block: not a Tianzhong node ({e})"))
        }
        r => Err(format!("identity block: {}", why(r))),
    }
}

async fn reset_count(link: &mut Access, unit: u8) -> Result<u16, String> {
    let request = ReadRequest {
        table: RegisterTable::Input,
        start: profile::STATUS_BLOCK,
        count: profile::STATUS_LEN,
    };
    match link.read(unit, &request).await {
        ReadResult::Data(r) => Status::decode(&r)
            .map(|s| s.reset_count)
            .map_err(|e| format!("status block: {e}")),
        r => Err(format!("status block: {}", why(r))),
    }
}

/// Updates `node` to `image` (built for `model` revision `revision`, version `version`),
/// calling `report` at each step and chunk; through `line`, the line its bus task lends, on a
/// serial bus. The version the node runs afterwards, or why it failed.
pub async fn update_node(
    node: &TargetNode,
    line: Option<BusLine>,
    image: &[u8],
    (model, revision): (&str, u16),
    version: FirmwareVersion,
    verify_timeout: Duration,
    mut report: impl FnMut(NodeState),
) -> Result<String, String> {
    let (id, bus, unit) = (&node.id, &node.bus, node.unit);
    let access = || match &line {
        Some(l) if node.rtu() => Access::Lent(l.clone()),
        _ => Access::Own(BusLink::new(node.link.clone(), node.timeout)),
    };
    let mut link = access();
    let before = identity(&mut link, unit)
        .await
        .map_err(|e| format!("before the transfer: {e}"))?;
    if before.firmware == version {
        info!(node = %id, bus = %bus, unit, %version, "campaign: the node already runs the image's version; nothing sent");
        return Ok(version.to_string());
    }
    if before.model.as_str() != model || before.hardware_revision != revision {
        return Err(format!(
            "the node reports hardware {} revision {}; the image is built for {model} revision \
             {revision}; nothing sent",
            before.model.as_str(),
            before.hardware_revision
        ));
    }
    let resets = reset_count(&mut link, unit)
        .await
        .map_err(|e| format!("before the transfer: {e}"))?;
    // A link of its own lets go before the transfer opens its own connection.
    drop(link);
    let lent = line.is_some() && node.rtu();
    info!(node = %id, bus = %bus, unit, from = %before.firmware, to = %version, bytes = image.len(), lent, "campaign: transfer starts");
    report(NodeState::Transferring {
        done: 0,
        total: image.len(),
    });
    let started = Instant::now();
    let progress = |p: &crate::flash::Progress| {
        report(NodeState::Transferring {
            done: p.done,
            total: p.total,
        });
        ControlFlow::Continue(())
    };
    let sent: Result<FlashReport, FlashError> = match &line {
        Some(l) if node.rtu() => {
            let _slot = l.transfer_slot().await;
            let mut files = LentFiles {
                line: l.clone(),
                unit,
            };
            crate::flash::flash_rtu(&mut files, image, RtuMode::default(), progress).await
        }
        _ => {
            let target = ProbeTarget {
                link: node.link.clone(),
                unit,
                timeout: node.timeout,
                device: None,
            };
            crate::flash::flash(&target, image, progress).await
        }
    };
    match &sent {
        Ok(r) => {
            let took = started.elapsed().as_secs_f64();
            info!(
                node = %id, bus = %bus, unit, lent, bytes = image.len(),
                seconds = format!("{took:.2}"),
                bytes_per_s = (image.len() as f64 / took.max(1e-3)) as u64,
                stream_writes = r.stream_writes, chunk_writes = r.chunk_writes,
                go_backs = r.go_backs, status_reads = r.status_reads,
                recovered_timeouts = r.recovered_timeouts,
                "campaign: image sent and staged"
            );
        }
        Err(e) => {
            warn!(node = %id, bus = %bus, unit, lent, "campaign: transfer failed: {e}");
            return Err(format!("transfer over bus {bus} to unit {unit}: {e}"));
        }
    }
    report(NodeState::Staged);
    report(NodeState::Verifying);
    let started = Instant::now();
    let mut link = access();
    let mut last = String::from("no answer yet");
    while started.elapsed() < verify_timeout {
        match reset_count(&mut link, unit).await {
            Ok(n) if n != resets => match identity(&mut link, unit).await {
                Ok(now) if now.firmware == version => {
                    info!(node = %id, bus = %bus, unit, %version, "campaign: the node runs the new image");
                    return Ok(version.to_string());
                }
                Ok(now) => {
                    warn!(node = %id, bus = %bus, unit, running = %now.firmware, wanted = %version, "campaign: the node rolled back");
                    return Err(format!(
                        "rolled back: the node came back on {} after staging {version}",
                        now.firmware
                    ));
                }
                Err(e) => last = e,
            },
            Ok(_) => last = "the node has not reset yet".into(),
            Err(e) => {
                last = e;
                link.reset().await;
            }
        }
        tokio::time::sleep(VERIFY_POLL).await;
    }
    Err(format!(
        "timeout: the node did not come back with a new boot within {:.0} s of staging ({last})",
        verify_timeout.as_secs_f64()
    ))
}
