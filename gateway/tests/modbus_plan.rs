//! The Modbus read planner against the node profile, hand-made maps with holes, devices that
//! refuse reads of missing registers, and random maps.

use proptest::prelude::*;
use tianzhong_gateway::sources::modbus::plan::{
    PlanConfig, PlanError, ReadPlan, ReadRequest, SplitOutcome,
};
use tianzhong_protocol::convert::ReferenceConditions;
use tianzhong_protocol::reading::{ChannelId, Quality, Timestamp};
use tianzhong_protocol::registers::{
    ChannelMap, DataType, DecodeContext, RegisterMap, RegisterTable, profile,
};
use tianzhong_protocol::{NodeId, Quantity};

fn req(table: RegisterTable, start: u16, count: u16) -> ReadRequest {
    ReadRequest {
        table,
        start,
        count,
    }
}

fn input(start: u16, count: u16) -> ReadRequest {
    req(RegisterTable::Input, start, count)
}

fn map_of(channels: &[ChannelMap]) -> RegisterMap {
    RegisterMap::from_channels(channels).expect("test map is valid")
}

fn u16_channel(n: u16, table: RegisterTable, address: u16) -> ChannelMap {
    ChannelMap::new(
        ChannelId(n),
        Quantity::AirTemperature,
        table,
        address,
        DataType::U16,
    )
}

fn ids<'a>(channels: impl Iterator<Item = &'a ChannelMap>) -> Vec<u16> {
    channels.map(|c| c.channel.0).collect()
}

fn profile_map(channels: usize) -> RegisterMap {
    let quantities: Vec<Quantity> = Quantity::ALL
        .iter()
        .copied()
        .cycle()
        .take(channels)
        .collect();
    profile::register_map(&quantities).expect("at most 16 channels")
}

#[test]
fn profile_nodes_are_polled_in_one_input_read_from_0x0110() {
    // From the profile's documented layout: channel n occupies 6 registers from
    // 0x0110 + 6n, of which the f32 value (+0, +1) and the quality flag (+2) are read; the
    // 3 descriptive registers between channels are a gap of 3, under the default 8. So a
    // node with n channels is read from 0x0110 up to the quality register of channel n − 1:
    // 6(n − 1) + 3 registers.
    for (channels, count) in [(1, 3), (8, 45), (16, 93)] {
        let plan = ReadPlan::new(&profile_map(channels), PlanConfig::default()).unwrap();
        assert_eq!(
            plan.requests(),
            &[input(0x0110, count)],
            "{channels} channels"
        );
        assert_eq!(plan.requests()[0].function_code(), 0x04);
        assert_eq!(
            ids(plan.channels_in(&plan.requests()[0])),
            (0..channels as u16).collect::<Vec<_>>()
        );
    }
}

#[test]
fn a_planned_read_decodes_back_into_every_channel_it_covers() {
    let map = profile_map(8);
    let plan = ReadPlan::new(&map, PlanConfig::default()).unwrap();
    let request = plan.requests()[0];
    let conditions = ReferenceConditions::default();

    // The device's answer: each channel's value at its profile offset, quality 'N', and the
    // descriptive registers in between left as garbage the planner must skip.
    let mut block = vec![0xDEAD; usize::from(request.count)];
    for c in plan.channels_in(&request) {
        let at = usize::from(c.address - request.start);
        let value = f64::from(c.channel.0) + 0.5;
        c.encode_value(value, &conditions, &mut block[at..at + 2])
            .unwrap();
        block[at + 2] = Quality::Good.register_code();
    }

    let node = NodeId::new("test-node").unwrap();
    let context = DecodeContext {
        node: &node,
        timestamp: Timestamp(1_700_000_000_000),
        seq: 1,
        conditions: &conditions,
    };
    let mut decoded = 0;
    for c in plan.channels_in(&request) {
        let reading = c
            .decode_from_block(request.start, &block, &context)
            .unwrap();
        assert_eq!(reading.channel, c.channel);
        assert_eq!(reading.value, f64::from(c.channel.0) + 0.5);
        decoded += 1;
    }
    assert_eq!(decoded, 8);
}

#[test]
fn no_read_exceeds_125_registers() {
    // 64 f32 channels at floor(200·i / 64): 3 or 4 registers apart, registers 0 to 197.
    let channels: Vec<ChannelMap> = (0..64u16)
        .map(|i| {
            ChannelMap::new(
                ChannelId(i),
                Quantity::AirTemperature,
                RegisterTable::Input,
                (u32::from(i) * 200 / 64) as u16,
                DataType::F32,
            )
        })
        .collect();
    let plan = ReadPlan::new(&map_of(&channels), PlanConfig::default()).unwrap();
    // Channel 39 sits at floor(39 · 3.125) = 121 and ends at 123; channel 40 sits at 125 and
    // would end at 127, past 125. So the first read stops after channel 39 and the second
    // runs from 125 to the end of channel 63 at 196 + 2 = 198.
    assert_eq!(plan.requests(), &[input(0, 123), input(125, 73)]);
    assert_eq!(
        ids(plan.channels_in(&plan.requests()[0])),
        (0..40).collect::<Vec<_>>()
    );
    assert_eq!(
        ids(plan.channels_in(&plan.requests()[1])),
        (40..64).collect::<Vec<_>>()
    );

    // A lower limit is honoured the same way: 0..=9 end at 30, 10 would end at 33.
    let small = PlanConfig {
        max_registers: 32,
        ..PlanConfig::default()
    };
    let plan = ReadPlan::new(&map_of(&channels), small).unwrap();
    assert_eq!(plan.requests()[0], input(0, 30));
    assert!(plan.requests().iter().all(|r| r.count <= 32));
}

#[test]
fn max_gap_decides_whether_a_hole_is_read_through() {
    // Registers 0..4 and 9..13 hold channels; 4..9 is a hole of 5.
    let channels: Vec<ChannelMap> = (0..4)
        .map(|i| u16_channel(i, RegisterTable::Input, i))
        .chain((0..4).map(|i| u16_channel(4 + i, RegisterTable::Input, 9 + i)))
        .collect();
    let map = map_of(&channels);
    let plan_with = |max_gap| {
        let config = PlanConfig {
            max_gap,
            ..PlanConfig::default()
        };
        ReadPlan::new(&map, config).unwrap().requests().to_vec()
    };
    assert_eq!(plan_with(0), [input(0, 4), input(9, 4)]);
    assert_eq!(plan_with(4), [input(0, 4), input(9, 4)]);
    assert_eq!(plan_with(5), [input(0, 13)]);
    assert_eq!(plan_with(10), [input(0, 13)]);
}

#[test]
fn input_and_holding_registers_are_never_read_together() {
    // Same and adjacent addresses in both tables: only the table keeps them apart.
    let channels = [
        u16_channel(0, RegisterTable::Holding, 10),
        u16_channel(1, RegisterTable::Input, 10),
        u16_channel(2, RegisterTable::Holding, 11),
        u16_channel(3, RegisterTable::Input, 12),
    ];
    let plan = ReadPlan::new(&map_of(&channels), PlanConfig::default()).unwrap();
    let holding = req(RegisterTable::Holding, 10, 2);
    assert_eq!(plan.requests(), &[input(10, 3), holding]);
    assert_eq!(plan.requests()[0].function_code(), 0x04);
    assert_eq!(holding.function_code(), 0x03);
    assert_eq!(ids(plan.channels_in(&plan.requests()[0])), [1, 3]);
    assert_eq!(ids(plan.channels_in(&holding)), [0, 2]);
}

#[test]
fn exception_02_halves_along_channel_boundaries_down_to_an_unreadable_channel() {
    let mut plan = ReadPlan::new(&profile_map(16), PlanConfig::default()).unwrap();
    let whole = input(0x0110, 93);

    // Halves of 8 channels each: channels 0–7 end with the quality register of channel 7 at
    // 0x0110 + 42 + 2; channels 8–15 start at 0x0110 + 48 = 0x0140.
    let (low, high) = (input(0x0110, 45), input(0x0140, 45));
    assert_eq!(
        plan.on_illegal_address(&whole),
        SplitOutcome::Split(low, high)
    );
    assert_eq!(plan.requests(), &[low, high]);
    assert_eq!(ids(plan.channels_in(&low)), (0..8).collect::<Vec<_>>());
    assert_eq!(ids(plan.channels_in(&high)), (8..16).collect::<Vec<_>>());
    assert_eq!(plan.channels_in(&whole).count(), 0);
    assert_eq!(plan.on_illegal_address(&whole), SplitOutcome::NotInPlan);

    // Keep refusing whatever holds channel 0: 8 → 4 → 2 → 1 channels, then it is given up.
    let expected = [
        (input(0x0110, 21), input(0x0128, 21)),
        (input(0x0110, 9), input(0x011C, 9)),
        (input(0x0110, 3), input(0x0116, 3)),
    ];
    let mut refused = low;
    for (low, high) in expected {
        assert_eq!(
            plan.on_illegal_address(&refused),
            SplitOutcome::Split(low, high)
        );
        refused = low;
    }
    assert_eq!(
        plan.on_illegal_address(&refused),
        SplitOutcome::Unreadable(vec![ChannelId(0)])
    );
    assert_eq!(plan.unreadable(), &[ChannelId(0)]);
    assert!(!plan.requests().contains(&refused));
    assert_eq!(plan.on_illegal_address(&refused), SplitOutcome::NotInPlan);
    assert_eq!(plan.unreadable(), &[ChannelId(0)]);
    // Every other channel is still read.
    let still_read: Vec<u16> = plan
        .requests()
        .iter()
        .flat_map(|r| ids(plan.channels_in(r)))
        .collect();
    assert_eq!(still_read, (1..16).collect::<Vec<_>>());
}

#[test]
fn channels_sharing_a_quality_register_are_never_cut_apart() {
    // Two u16 values at 0 and 2 share the quality register at 1.
    let mut a = u16_channel(0, RegisterTable::Input, 0);
    let mut b = u16_channel(1, RegisterTable::Input, 2);
    a.quality_address = Some(1);
    b.quality_address = Some(1);
    let mut plan = ReadPlan::new(
        &map_of(&[a, b]),
        PlanConfig {
            max_gap: 0,
            ..PlanConfig::default()
        },
    )
    .unwrap();
    assert_eq!(plan.requests(), &[input(0, 3)]);
    assert_eq!(
        plan.on_illegal_address(&input(0, 3)),
        SplitOutcome::Unreadable(vec![ChannelId(0), ChannelId(1)])
    );
    assert!(plan.requests().is_empty());
}

#[test]
fn configuration_and_oversized_spans_are_refused_with_the_register_range() {
    let map = profile_map(1);
    for bad in [0, 126, u16::MAX] {
        let config = PlanConfig {
            max_registers: bad,
            ..PlanConfig::default()
        };
        assert_eq!(
            ReadPlan::new(&map, config).unwrap_err(),
            PlanError::MaxRegisters(bad)
        );
    }
    for good in [1, 125] {
        let config = PlanConfig {
            max_registers: good,
            ..PlanConfig::default()
        };
        assert!(config.validate().is_ok());
    }

    // A value at 0x0010 whose quality register sits 200 registers further on.
    let mut far = u16_channel(3, RegisterTable::Holding, 0x0010);
    far.quality_address = Some(0x0010 + 200);
    let err = ReadPlan::new(&map_of(&[far]), PlanConfig::default()).unwrap_err();
    assert_eq!(
        err,
        PlanError::SpanTooLong {
            channel: ChannelId(3),
            table: RegisterTable::Holding,
            start: 0x0010,
            len: 201,
            max_registers: 125,
        }
    );
    assert_eq!(
        err.to_string(),
        "holding registers 0x0010..0x00D9 of ch3 (201 registers) cannot be read in one \
         request of at most 125"
    );
}

/// Polls `plan` against a device that answers exception 02 to any read touching one of
/// `missing`, until every remaining read succeeds. Returns how many reads were refused.
fn settle(plan: &mut ReadPlan, missing: &[(RegisterTable, u16)]) -> usize {
    let refuses = |r: &ReadRequest| {
        missing
            .iter()
            .any(|&(t, a)| t == r.table && r.start <= a && u32::from(a) < r.end())
    };
    let mut refused = 0;
    while let Some(r) = plan.requests().iter().copied().find(refuses) {
        assert_ne!(plan.on_illegal_address(&r), SplitOutcome::NotInPlan);
        refused += 1;
        assert!(refused <= 2 * 64 + 1, "splitting does not terminate");
    }
    refused
}

#[test]
fn a_device_with_a_missing_register_loses_only_the_channel_that_needs_it() {
    // The map says channel 5 has a quality register at 0x0110 + 32, which this device lacks.
    let map = profile_map(16);
    let mut plan = ReadPlan::new(&map, PlanConfig::default()).unwrap();
    let refused = settle(&mut plan, &[(RegisterTable::Input, 0x0110 + 6 * 5 + 2)]);
    assert_eq!(plan.unreadable(), &[ChannelId(5)]);
    // 16 → 8 → 4 (ch4–7) → 2 (ch4–5) → 1 (ch5): four splits and the final refusal.
    assert_eq!(refused, 5);
}

/// A channel of a random map: its table, how many unused registers precede it, its data type
/// and whether a quality register follows the value.
type Spec = (bool, u16, DataType, bool);

fn spec() -> impl Strategy<Value = Spec> {
    let data_type = prop_oneof![
        Just(DataType::U16),
        Just(DataType::I16),
        Just(DataType::U32),
        Just(DataType::I32),
        Just(DataType::F32),
    ];
    (any::<bool>(), 0u16..30, data_type, any::<bool>())
}

/// Lays the channels out in each table one after the other from `base`.
fn random_map(base: u16, specs: &[Spec]) -> RegisterMap {
    let mut next = [base, base];
    let channels: Vec<ChannelMap> = specs
        .iter()
        .enumerate()
        .map(|(i, &(holding, gap, data_type, quality))| {
            let table = if holding {
                RegisterTable::Holding
            } else {
                RegisterTable::Input
            };
            let cursor = &mut next[usize::from(holding)];
            let address = *cursor + gap;
            let mut c = ChannelMap::new(
                ChannelId(i as u16),
                Quantity::AirTemperature,
                table,
                address,
                data_type,
            );
            *cursor = address + data_type.registers();
            if quality {
                c.quality_address = Some(*cursor);
                *cursor += 1;
            }
            c
        })
        .collect();
    map_of(&channels)
}

/// The plan's invariants, checked from the map and the requests alone.
fn check_plan(map: &RegisterMap, plan: &ReadPlan, config: PlanConfig) {
    let requests = plan.requests();
    for r in requests {
        assert!(r.count >= 1 && r.count <= config.max_registers, "{r}");
        assert_eq!(r.function_code(), r.table.read_function_code());
    }
    for (i, a) in requests.iter().enumerate() {
        for b in &requests[i + 1..] {
            let overlap =
                a.table == b.table && u32::from(a.start) < b.end() && u32::from(b.start) < a.end();
            assert!(!overlap, "{a} and {b} overlap");
        }
    }
    for c in &map.channels {
        if plan.unreadable().contains(&c.channel) {
            continue;
        }
        let (lo, n) = c.span();
        let hi = u32::from(lo) + u32::from(n);
        let holders: Vec<&ReadRequest> = requests
            .iter()
            .filter(|r| r.table == c.table && r.start <= lo && hi <= r.end())
            .collect();
        assert_eq!(holders.len(), 1, "{} is read by {holders:?}", c.channel);
        assert!(plan.channels_in(holders[0]).any(|m| m.channel == c.channel));
        let cut = requests.iter().any(|r| {
            r.table == c.table
                && u32::from(r.start) < hi
                && u32::from(lo) < r.end()
                && !(r.start <= lo && hi <= r.end())
        });
        assert!(!cut, "a read cuts {}'s registers", c.channel);
    }
    for r in requests {
        let mut spans: Vec<(u32, u32)> = plan
            .channels_in(r)
            .map(|c| {
                let (lo, n) = c.span();
                (u32::from(lo), u32::from(lo) + u32::from(n))
            })
            .collect();
        assert!(!spans.is_empty(), "{r} reads no channel");
        spans.sort_unstable();
        // Tight: no unused registers at either edge.
        assert_eq!(spans[0].0, u32::from(r.start), "{r}");
        assert_eq!(spans.iter().map(|s| s.1).max(), Some(r.end()), "{r}");
        let mut covered_to = spans[0].1;
        for &(lo, hi) in &spans[1..] {
            let gap = lo.saturating_sub(covered_to);
            assert!(
                gap <= u32::from(config.max_gap),
                "{r}: gap of {gap} at {lo}"
            );
            covered_to = covered_to.max(hi);
        }
    }
}

proptest! {
    #[test]
    fn random_maps_are_covered_exactly_once_within_the_limits(
        base in 0u16..60_000,
        specs in prop::collection::vec(spec(), 0..=64),
        max_gap in 0u16..40,
        max_registers in 3u16..=125,
    ) {
        let map = random_map(base, &specs);
        let config = PlanConfig { max_gap, max_registers };
        let plan = ReadPlan::new(&map, config).unwrap();
        check_plan(&map, &plan, config);
        prop_assert_eq!(plan.requests().is_empty(), specs.is_empty());
        // As few reads as possible: no two neighbours of a table could have been one read.
        for pair in plan.requests().windows(2) {
            let (a, b) = (pair[0], pair[1]);
            if a.table == b.table {
                let gap = u32::from(b.start) - a.end();
                let merged = b.end() - u32::from(a.start);
                prop_assert!(
                    gap > u32::from(max_gap) || merged > u32::from(max_registers),
                    "{} and {} could be one read", a, b
                );
            }
        }
    }

    #[test]
    fn refusals_narrow_down_to_the_channel_whose_register_is_missing(
        base in 0u16..60_000,
        specs in prop::collection::vec(spec(), 1..=64),
        max_gap in 0u16..40,
        max_registers in 3u16..=125,
        victim in any::<prop::sample::Index>(),
    ) {
        let map = random_map(base, &specs);
        let config = PlanConfig { max_gap, max_registers };
        let mut plan = ReadPlan::new(&map, config).unwrap();
        let lost = map.channels[victim.index(map.channels.len())];
        settle(&mut plan, &[(lost.table, lost.address)]);
        prop_assert_eq!(plan.unreadable(), &[lost.channel]);
        check_plan(&map, &plan, config);
    }
}
