//! One polled device: what to read and how its answers become records. Sans-IO — the bus
//! task does the reading — so decoding is tested without a wire.
//!
//! A Tianzhong node is read in one request, status block and channels together
//! (`0x0100 .. 0x0110 + 6·n`, at most 112 registers), because the status block holds the
//! sequence number of the sample the channel registers belong to: reading them apart could
//! pair one sample's values with the next sample's number. A third-party device is read by
//! its [`ReadPlan`]; it has no sequence number, so the gateway numbers its polls.

use std::time::Duration;

use tianzhong_protocol::convert::ReferenceConditions;
use tianzhong_protocol::reading::Timestamp;
use tianzhong_protocol::registers::profile::{self, Status};
use tianzhong_protocol::registers::{DecodeContext, RegisterMap, RegisterTable};
use tianzhong_protocol::{NodeId, SiteId};

use super::plan::{PlanConfig, PlanError, ReadPlan, ReadRequest};
use crate::config::{Device, DeviceKind};
use crate::pipeline::Record;

/// How a device's registers are read.
#[derive(Clone, Debug)]
pub enum Reads {
    /// A Tianzhong node with this many channels: one read of status and channels.
    Profile {
        /// Channels.
        channels: u16,
    },
    /// A third-party device: its read plan.
    Plan(ReadPlan),
}

/// A device as its bus task keeps it.
#[derive(Clone, Debug)]
pub struct PolledDevice {
    /// Index in the configuration's device list (and the metrics table).
    pub index: usize,
    /// Node id.
    pub id: NodeId,
    /// Site.
    pub site: SiteId,
    /// Modbus unit id.
    pub unit: u8,
    /// Poll interval.
    pub interval: Duration,
    /// Register map (shared with the configuration).
    pub map: std::sync::Arc<RegisterMap>,
    /// How to read it.
    pub reads: Reads,
    /// Polls so far; the sequence number of a device without its own.
    pub polls: u32,
    /// Whether the device was answering at the last change (None: not yet known).
    pub online: Option<bool>,
    /// The highest local alarm a Tianzhong node last reported.
    pub alarm: tianzhong_protocol::AlarmLevel,
}

/// A block of registers read from a device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Block {
    /// The request that read it.
    pub request: ReadRequest,
    /// Its registers.
    pub registers: Vec<u16>,
}

/// What decoding an answer gave.
#[derive(Debug, Default)]
pub struct Decoded {
    /// Records, one per channel that decoded.
    pub records: Vec<Record>,
    /// Channels that did not, with the reason and the register range they came from, for the
    /// log and the malformed counter.
    pub errors: Vec<String>,
}

impl PolledDevice {
    /// The device of configuration entry `index`.
    pub fn new(index: usize, device: &Device, plan: PlanConfig) -> Result<PolledDevice, PlanError> {
        let reads = match &device.kind {
            DeviceKind::Tianzhong { quantities } => Reads::Profile {
                channels: quantities.len() as u16,
            },
            DeviceKind::Inline => Reads::Plan(ReadPlan::new(&device.map, plan)?),
        };
        Ok(PolledDevice {
            index,
            id: device.id.clone(),
            site: device.site.clone(),
            unit: device.unit,
            interval: device.poll_interval,
            map: device.map.clone(),
            reads,
            polls: 0,
            online: None,
            alarm: tianzhong_protocol::AlarmLevel::Normal,
        })
    }

    /// The requests of one poll, in order.
    pub fn requests(&self) -> Vec<ReadRequest> {
        match &self.reads {
            Reads::Profile { channels } => vec![ReadRequest {
                table: RegisterTable::Input,
                start: profile::STATUS_BLOCK,
                count: profile::poll_len(*channels),
            }],
            Reads::Plan(plan) => plan.requests().to_vec(),
        }
    }

    /// Decodes the blocks of one answered poll, received at `now_ms` (Unix ms).
    pub fn decode(&mut self, blocks: &[Block], now_ms: u64) -> Decoded {
        self.polls = self.polls.wrapping_add(1);
        let mut out = Decoded::default();
        let seq = match &self.reads {
            Reads::Profile { .. } => {
                let Some(first) = blocks.first() else {
                    return out;
                };
                match Status::decode(&first.registers) {
                    Ok(status) => {
                        self.alarm = status.highest_alarm;
                        status.seq
                    }
                    Err(e) => {
                        out.errors
                            .push(format!("status block {}: {e}", first.request));
                        return out;
                    }
                }
            }
            Reads::Plan(_) => self.polls,
        };
        let conditions = ReferenceConditions::default();
        let context = DecodeContext {
            node: &self.id,
            timestamp: Timestamp(now_ms),
            seq,
            conditions: &conditions,
        };
        for block in blocks {
            let r = &block.request;
            for (channel, result) in
                self.map
                    .decode_block(r.table, r.start, &block.registers, context)
            {
                match result {
                    Ok(reading) => out.records.push(Record {
                        site: self.site.clone(),
                        reading,
                        received_ms: now_ms,
                        device_time: false,
                    }),
                    Err(e) => out.errors.push(format!("{channel} in {r}: {e}")),
                }
            }
        }
        out
    }
}
