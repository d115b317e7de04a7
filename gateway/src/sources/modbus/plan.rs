//! Read planning: which requests read a device's register map.
//!
//! A poll of a device should cost as few round trips as possible: on an RS-485 line at
//! 9600 baud every request pays the turnaround and the t3.5 silence on top of its bytes, and
//! the line is shared by every device on the bus, so one 40-register read beats ten 4-register
//! ones even when some of the registers in between are thrown away. [`ReadPlan::new`]
//! coalesces the channels of a [`RegisterMap`] into reads of at most
//! [`PlanConfig::max_registers`] registers per table (input registers by function code 04,
//! holding registers by 03), bridging holes of at most [`PlanConfig::max_gap`] unused
//! registers, and never cutting one channel's registers (value and quality) across two reads.
//!
//! Bridging holes is a guess: many devices leave holes in their maps and answer a read that
//! covers one with exception 02 (illegal data address). The plan therefore keeps state: on
//! such an answer [`ReadPlan::on_illegal_address`] replaces the request by two smaller ones,
//! cut at the channel boundary that best halves it, so repeated answers narrow the hole down
//! to a single channel's registers; a channel that still fails on its own is given up on and
//! reported in [`ReadPlan::unreadable`] rather than retried on every poll.
//!
//! The planner is pure and synchronous; the bus scheduler owns the I/O, and decodes each
//! answer with [`ChannelMap::decode_from_block`] for the channels [`ReadPlan::channels_in`]
//! names.

use std::fmt;
use std::ops::Range;

use tianzhong_protocol::reading::ChannelId;
use tianzhong_protocol::registers::{ChannelMap, MAX_READ_REGISTERS, RegisterMap, RegisterTable};

/// How reads are coalesced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlanConfig {
    /// Most unused registers one read may span between two channels. 0 reads only registers
    /// that belong to channels.
    pub max_gap: u16,
    /// Most registers one read may cover, 1 to [`MAX_READ_REGISTERS`]; lower it for devices
    /// with small receive buffers.
    pub max_registers: u16,
}

impl Default for PlanConfig {
    fn default() -> Self {
        PlanConfig {
            max_gap: 8,
            max_registers: MAX_READ_REGISTERS,
        }
    }
}

impl PlanConfig {
    /// Checks that `max_registers` is within what one Modbus read allows.
    pub fn validate(&self) -> Result<(), PlanError> {
        if (1..=MAX_READ_REGISTERS).contains(&self.max_registers) {
            Ok(())
        } else {
            Err(PlanError::MaxRegisters(self.max_registers))
        }
    }
}

/// Why a device's register map cannot be planned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlanError {
    /// [`PlanConfig::max_registers`] is outside `1..=125`.
    MaxRegisters(u16),
    /// A channel's registers (value and quality, together with any channel whose registers
    /// interleave with them) need more registers than one read may cover.
    SpanTooLong {
        /// The first channel of the registers concerned.
        channel: ChannelId,
        /// Their table.
        table: RegisterTable,
        /// First register.
        start: u16,
        /// Registers from `start`.
        len: u32,
        /// The most one read may cover.
        max_registers: u16,
    },
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlanError::MaxRegisters(n) => write!(
                f,
                "max_registers is {n}; one Modbus read covers 1 to {MAX_READ_REGISTERS} registers"
            ),
            PlanError::SpanTooLong {
                channel,
                table,
                start,
                len,
                max_registers,
            } => write!(
                f,
                "{} registers 0x{start:04X}..0x{:04X} of {channel} ({len} registers) cannot be \
                 read in one request of at most {max_registers}",
                table_name(*table),
                u32::from(*start) + len,
            ),
        }
    }
}

impl std::error::Error for PlanError {}

fn table_name(table: RegisterTable) -> &'static str {
    match table {
        RegisterTable::Input => "input",
        RegisterTable::Holding => "holding",
    }
}

/// One read: `count` registers of `table` from `start`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ReadRequest {
    /// The table read.
    pub table: RegisterTable,
    /// First register (protocol address, 0-based).
    pub start: u16,
    /// Registers read, 1 to [`MAX_READ_REGISTERS`].
    pub count: u16,
}

impl ReadRequest {
    /// The Modbus function code of this read: 04 for input, 03 for holding registers.
    pub const fn function_code(&self) -> u8 {
        self.table.read_function_code()
    }

    /// One past the last register read.
    pub fn end(&self) -> u32 {
        u32::from(self.start) + u32::from(self.count)
    }
}

impl fmt::Display for ReadRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "FC{:02} {} registers 0x{:04X}..0x{:04X} ({})",
            self.function_code(),
            table_name(self.table),
            self.start,
            self.end(),
            self.count
        )
    }
}

/// What [`ReadPlan::on_illegal_address`] did with a refused request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SplitOutcome {
    /// The request was replaced in the plan by these two, lower addresses first.
    Split(ReadRequest, ReadRequest),
    /// The request held registers that cannot be split further; it was dropped from the plan
    /// and these channels are now [`ReadPlan::unreadable`].
    Unreadable(Vec<ChannelId>),
    /// The request is not in the plan (already split or dropped by an earlier answer, as can
    /// happen when answers to a stale plan arrive late); nothing changed.
    NotInPlan,
}

/// Registers that must be read together: one channel's span, or several channels whose spans
/// interleave (a shared quality register, a quality register placed among other channels'
/// values), which no read may cut.
#[derive(Clone, Debug)]
struct Unit {
    table: RegisterTable,
    start: u16,
    /// One past the last register; `u32` because a span may end at 0x10000.
    end: u32,
    /// Indices into [`ReadPlan::channels`], in address order.
    channels: Vec<usize>,
}

/// The reads that poll one device, and what they have learnt from its exceptions.
#[derive(Clone, Debug)]
pub struct ReadPlan {
    channels: Vec<ChannelMap>,
    /// Sorted by table, then address; requests cover contiguous runs of them.
    units: Vec<Unit>,
    requests: Vec<ReadRequest>,
    /// For each request, the units it covers.
    covers: Vec<Range<usize>>,
    unreadable: Vec<ChannelId>,
}

/// A channel's span with its length widened: `ChannelMap::span` reports a span of all 65 536
/// registers (value at the top, quality at 0) as a count of 0.
fn span(channel: &ChannelMap) -> (u16, u32) {
    let (start, count) = channel.span();
    let len = if count == 0 {
        0x1_0000
    } else {
        u32::from(count)
    };
    (start, len)
}

impl ReadPlan {
    /// Plans the reads of `map`.
    ///
    /// The map is taken as it is: checking it for duplicate channels or overlapping values is
    /// [`RegisterMap::validate`]'s job, and neither stops the planner from reading every
    /// register a channel needs.
    pub fn new(map: &RegisterMap, config: PlanConfig) -> Result<ReadPlan, PlanError> {
        config.validate()?;
        let channels: Vec<ChannelMap> = map.channels.iter().copied().collect();
        let units = group_units(&channels);
        if let Some(u) = units
            .iter()
            .find(|u| u.end - u32::from(u.start) > u32::from(config.max_registers))
        {
            return Err(PlanError::SpanTooLong {
                channel: channels[u.channels[0]].channel,
                table: u.table,
                start: u.start,
                len: u.end - u32::from(u.start),
                max_registers: config.max_registers,
            });
        }

        // Greedy left to right is optimal here: among all ways of cutting the sorted units
        // into runs, extending the current run as far as the limits allow leaves every later
        // run at least as much room, so no cut yields fewer reads.
        let mut covers: Vec<Range<usize>> = Vec::new();
        for (i, u) in units.iter().enumerate() {
            if let Some(run) = covers.last_mut() {
                let first = &units[run.start];
                let last = &units[run.end - 1];
                let fits = u.table == first.table
                    && u32::from(u.start) - last.end <= u32::from(config.max_gap)
                    && u.end - u32::from(first.start) <= u32::from(config.max_registers);
                if fits {
                    run.end = i + 1;
                    continue;
                }
            }
            covers.push(i..i + 1);
        }

        let mut plan = ReadPlan {
            channels,
            units,
            requests: Vec::with_capacity(covers.len()),
            covers: Vec::new(),
            unreadable: Vec::new(),
        };
        plan.requests = covers.iter().map(|r| plan.request_for(r.clone())).collect();
        plan.covers = covers;
        Ok(plan)
    }

    /// The reads that poll the device, by table (input first) and address.
    pub fn requests(&self) -> &[ReadRequest] {
        &self.requests
    }

    /// The channels whose registers `request` reads, in address order; none when the request
    /// is not in the plan. Decode each from the answer with
    /// [`ChannelMap::decode_from_block`]`(request.start, registers, context)`.
    pub fn channels_in(&self, request: &ReadRequest) -> impl Iterator<Item = &ChannelMap> + '_ {
        let units = self
            .position(request)
            .map_or(0..0, |i| self.covers[i].clone());
        self.units[units]
            .iter()
            .flat_map(|u| u.channels.iter().map(|&c| &self.channels[c]))
    }

    /// Takes the device's exception 02 (illegal data address) to `request` into account.
    ///
    /// A request covering several channels is cut in two at the channel boundary that makes
    /// the halves' register counts closest, so the unused registers that most likely caused
    /// the refusal end up in fewer and fewer reads. A request that covers one channel (or
    /// channels whose registers interleave) cannot be cut: it is dropped and its channels are
    /// reported as unreadable, so the device is not asked for them on every poll.
    pub fn on_illegal_address(&mut self, request: &ReadRequest) -> SplitOutcome {
        let Some(i) = self.position(request) else {
            return SplitOutcome::NotInPlan;
        };
        let cover = self.covers[i].clone();
        if cover.len() == 1 {
            self.requests.remove(i);
            self.covers.remove(i);
            let lost: Vec<ChannelId> = self.units[cover.start]
                .channels
                .iter()
                .map(|&c| self.channels[c].channel)
                .collect();
            self.unreadable.extend_from_slice(&lost);
            return SplitOutcome::Unreadable(lost);
        }

        let start = u32::from(self.units[cover.start].start);
        let end = self.units[cover.end - 1].end;
        let imbalance = |cut: usize| {
            let left = self.units[cut - 1].end - start;
            let right = end - u32::from(self.units[cut].start);
            left.abs_diff(right)
        };
        // `min_by_key` keeps the first of equal keys: ties cut nearer the start.
        let cut = (cover.start + 1..cover.end)
            .min_by_key(|&cut| imbalance(cut))
            .unwrap_or(cover.start + 1);
        let (low, high) = (cover.start..cut, cut..cover.end);
        let (low_request, high_request) = (
            self.request_for(low.clone()),
            self.request_for(high.clone()),
        );
        self.requests.splice(i..=i, [low_request, high_request]);
        self.covers.splice(i..=i, [low, high]);
        SplitOutcome::Split(low_request, high_request)
    }

    /// Channels given up on because the device refused even a read of their own registers,
    /// in the order they were given up on.
    pub fn unreadable(&self) -> &[ChannelId] {
        &self.unreadable
    }

    fn position(&self, request: &ReadRequest) -> Option<usize> {
        self.requests.iter().position(|r| r == request)
    }

    /// The read covering `units`, a non-empty run of one table whose length was checked
    /// against `max_registers` when the run was formed.
    fn request_for(&self, units: Range<usize>) -> ReadRequest {
        let first = &self.units[units.start];
        let last = &self.units[units.end - 1];
        ReadRequest {
            table: first.table,
            start: first.start,
            // Cannot truncate: runs are at most `max_registers` (≤ 125) long.
            count: (last.end - u32::from(first.start)) as u16,
        }
    }
}

/// Groups channels into [`Unit`]s: spans sorted by table and address, merged where they
/// overlap.
fn group_units(channels: &[ChannelMap]) -> Vec<Unit> {
    let mut order: Vec<usize> = (0..channels.len()).collect();
    order.sort_by_key(|&i| (channels[i].table, span(&channels[i]).0, channels[i].address));
    let mut units: Vec<Unit> = Vec::new();
    for i in order {
        let c = &channels[i];
        let (start, len) = span(c);
        let end = u32::from(start) + len;
        match units.last_mut() {
            Some(u) if u.table == c.table && u32::from(start) < u.end => {
                u.end = u.end.max(end);
                u.channels.push(i);
            }
            _ => units.push(Unit {
                table: c.table,
                start,
                end,
                channels: vec![i],
            }),
        }
    }
    units
}
