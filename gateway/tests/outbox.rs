//! The durable outbox: encoding, group commit and durability, per-sink cursors and replay,
//! dead letters, the byte bound's policy with exact drop counts, shutdown and a SIGKILL.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tianzhong_gateway::outbox::{
    BatchId, DropReason, Entry, Outbox, OutboxConfig, codec, codec::Decoded,
};
use tianzhong_gateway::pipeline::{Record, StatusEvent};
use tianzhong_protocol::payload::NodeStatus;
use tianzhong_protocol::reading::{BadReason, ChannelId, Quality, Timestamp, UncertainReason};
use tianzhong_protocol::{NodeId, Quantity, Reading, SiteId};

fn dir(name: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let d = std::env::temp_dir().join(format!(
        "tz-outbox-{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn record(node: u32, channel: u16, seq: u32) -> Record {
    let quality = match seq % 5 {
        0 => Quality::Uncertain(UncertainReason::OutOfRange),
        1 => Quality::Bad(BadReason::SensorFault),
        _ => Quality::Good,
    };
    Record {
        site: SiteId::new(if node.is_multiple_of(2) {
            "site-a"
        } else {
            "site-b"
        })
        .unwrap(),
        reading: Reading {
            node: NodeId::new(&format!("node-{node}")).unwrap(),
            channel: ChannelId(channel),
            quantity: Quantity::ALL[(channel as usize) % Quantity::ALL.len()],
            value: seq as f64 * 0.25 - 3.0,
            timestamp: Timestamp(1_700_000_000_000 + seq as u64 * 1000),
            seq,
            quality,
        },
        received_ms: 1_700_000_000_000 + seq as u64 * 1000 + (seq as u64 % 7) * 13,
        device_time: seq.is_multiple_of(3),
    }
}

/// Batch `b`: `n` readings of node `b % nodes`, channels round-robin.
fn batch(b: u32, n: u32, nodes: u32) -> Vec<Record> {
    (0..n)
        .map(|i| record(b % nodes, (i % 8) as u16, b * 1000 + i / 8))
        .collect()
}

fn config(sinks: &[&str]) -> OutboxConfig {
    OutboxConfig {
        sinks: sinks.iter().map(|s| s.to_string()).collect(),
        fsync_interval: Duration::from_millis(5),
        purge_interval: Duration::ZERO,
        ..OutboxConfig::default()
    }
}

fn readings(entry: &Entry) -> &[Record] {
    match entry {
        Entry::Readings(r) => r,
        Entry::Alarm { .. } | Entry::Status(_) => panic!("expected readings"),
    }
}

#[test]
fn codec_round_trips_and_rejects_corruption() {
    let mut records = batch(3, 100, 4);
    records.push(Record {
        received_ms: 0,
        ..record(9, 7, u32::MAX)
    });
    let mut buf = Vec::new();
    codec::encode_readings(&records, &mut buf);
    assert_eq!(
        buf.len(),
        2 + 2 + 3 * (1 + 6) + 4 + 101 * codec::RECORD_BYTES
    );
    // A receive time before the device time by more than ±2^31 ms saturates; 0 is that far.
    let mut expected = records.clone();
    let last = expected.last_mut().unwrap();
    last.received_ms = last.reading.timestamp.0 - (1u64 << 31);
    assert_eq!(codec::decode(&buf), Ok(Decoded::Readings(expected)));
    for cut in [0, 1, 5, buf.len() - 1] {
        assert!(codec::decode(&buf[..cut]).is_err(), "cut at {cut}");
    }
    let mut bad = buf.clone();
    bad[0] = 9;
    assert!(codec::decode(&bad).is_err());
    let node = NodeId::new("gas-7").unwrap();
    codec::encode_alarm(&node, b"{\"state\":\"active\"}", &mut buf);
    assert_eq!(
        codec::decode(&buf),
        Ok(Decoded::Alarm(node, b"{\"state\":\"active\"}".to_vec()))
    );
}

#[tokio::test]
async fn durable_batches_replay_in_order_per_sink_across_reopen() {
    let d = dir("replay");
    let path = d.join("outbox.sqlite");
    let ob = Outbox::open(&path, config(&["influx", "mqtt"])).unwrap();
    let mut tickets = Vec::new();
    for b in 0..20 {
        tickets.push(ob.append_readings(&batch(b, 10, 3)).await.unwrap());
    }
    let alarm = ob
        .append_alarm(&NodeId::new("node-1").unwrap(), b"alarm")
        .await
        .unwrap();
    ob.durable(alarm).await.unwrap();
    assert!(tickets.windows(2).all(|w| w[0] < w[1]));
    assert!(ob.durable_id() >= alarm.0);

    let got = ob.read("influx", 8).await.unwrap();
    assert_eq!(got.len(), 8);
    for (i, b) in got.iter().enumerate() {
        assert_eq!(b.id, tickets[i].0);
        assert_eq!(readings(&b.entry), batch(i as u32, 10, 3).as_slice());
    }
    // Reading again without an ack gives the same batches (at-least-once).
    assert_eq!(ob.read("influx", 8).await.unwrap(), got);
    ob.ack("influx", got[4].id).await.unwrap();
    ob.ack("mqtt", got[1].id).await.unwrap();
    assert!(matches!(
        ob.read("nobody", 1).await,
        Err(tianzhong_gateway::outbox::Error::UnknownSink(_))
    ));
    ob.close().await.unwrap();
    assert!(ob.read("influx", 1).await.is_err());

    // Reopened: each sink continues after its own cursor; nothing lost, nothing repeated.
    let ob = Outbox::open(&path, config(&["influx", "mqtt"])).unwrap();
    let influx = ob.read("influx", 100).await.unwrap();
    let ids: Vec<BatchId> = influx.iter().map(|b| b.id).collect();
    let expected: Vec<BatchId> = tickets[5..].iter().map(|t| t.0).chain([alarm.0]).collect();
    assert_eq!(ids, expected);
    assert_eq!(
        influx.last().unwrap().entry,
        Entry::Alarm {
            node: NodeId::new("node-1").unwrap(),
            payload: b"alarm".to_vec()
        }
    );
    assert_eq!(ob.read("mqtt", 100).await.unwrap().len(), 19);
    // Once both confirmed everything, the batches are deleted.
    ob.ack("influx", alarm.0).await.unwrap();
    ob.ack("mqtt", alarm.0).await.unwrap();
    ob.flush().await.unwrap();
    ob.flush().await.unwrap();
    let stats = ob.stats().await.unwrap();
    assert_eq!(stats.batches, 0, "{stats:?}");
    assert_eq!(stats.bytes, 0);
    // Ids are not reused after everything was deleted.
    let t = ob.append_readings(&batch(0, 1, 1)).await.unwrap();
    assert!(t.0 > alarm.0);
    ob.close().await.unwrap();
    let ob = Outbox::open(&path, config(&["influx", "mqtt", "new"])).unwrap();
    let t2 = ob.append_readings(&batch(0, 1, 1)).await.unwrap();
    assert!(t2 > t);
    ob.durable(t2).await.unwrap();
    // A newly configured sink gets the backlog still stored.
    let new: Vec<BatchId> = ob
        .read("new", 10)
        .await
        .unwrap()
        .iter()
        .map(|b| b.id)
        .collect();
    assert_eq!(new, vec![t.0, t2.0]);
    ob.close().await.unwrap();
    let _ = std::fs::remove_dir_all(d);
}

#[tokio::test]
async fn close_flushes_what_the_interval_has_not_committed() {
    let d = dir("close");
    let path = d.join("outbox.sqlite");
    let cfg = OutboxConfig {
        fsync_interval: Duration::from_secs(3600),
        ..config(&["s"])
    };
    let ob = Outbox::open(&path, cfg.clone()).unwrap();
    for b in 0..5 {
        ob.append_readings(&batch(b, 3, 2)).await.unwrap();
    }
    assert_eq!(ob.durable_id(), BatchId(0));
    ob.close().await.unwrap();
    let ob = Outbox::open(&path, cfg).unwrap();
    assert_eq!(ob.read("s", 10).await.unwrap().len(), 5);
    ob.close().await.unwrap();
    let _ = std::fs::remove_dir_all(d);
}

#[tokio::test]
async fn rejected_and_undecodable_batches_are_dead_lettered_without_blocking() {
    let d = dir("dead");
    let path = d.join("outbox.sqlite");
    let ob = Outbox::open(&path, config(&["a", "b"])).unwrap();
    let mut t = Vec::new();
    for b in 0..4 {
        t.push(ob.append_readings(&batch(b, 2, 2)).await.unwrap());
    }
    ob.durable(t[3]).await.unwrap();
    // Sink a: batch 0 sent, batch 1 rejected, 2 and 3 sent.
    ob.dead_letter("a", t[1].0, "400 bad line").await.unwrap();
    ob.ack("a", t[3].0).await.unwrap();
    assert!(ob.read("a", 10).await.unwrap().is_empty());
    // Sink b rejects the first batch: the cursor moves past it at once.
    ob.dead_letter("b", t[0].0, "schema").await.unwrap();
    let b: Vec<BatchId> = ob
        .read("b", 10)
        .await
        .unwrap()
        .iter()
        .map(|b| b.id)
        .collect();
    assert_eq!(b, vec![t[1].0, t[2].0, t[3].0]);
    // Again: idempotent.
    ob.dead_letter("b", t[0].0, "schema").await.unwrap();
    let dl = ob.dead_letters().await.unwrap();
    assert_eq!(dl.len(), 2);
    assert_eq!(
        (dl[0].sink.as_str(), dl[0].batch, dl[0].reason.as_str()),
        ("a", t[1].0, "400 bad line")
    );
    assert_eq!(
        codec::decode(&dl[0].bytes).unwrap(),
        Decoded::Readings(batch(1, 2, 2))
    );
    assert_eq!((dl[1].sink.as_str(), dl[1].batch), ("b", t[0].0));
    ob.close().await.unwrap();

    // Corrupt batch t[2] on disk: reading it sets it aside for that sink and goes on.
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute(
            "UPDATE batch SET bytes = x'0100ffff' WHERE id = ?1",
            [t[2].0.0 as i64],
        )
        .unwrap();
    }
    let ob = Outbox::open(&path, config(&["a", "b"])).unwrap();
    let b: Vec<BatchId> = ob
        .read("b", 10)
        .await
        .unwrap()
        .iter()
        .map(|b| b.id)
        .collect();
    assert_eq!(b, vec![t[1].0, t[3].0]);
    let dl = ob.dead_letters().await.unwrap();
    assert_eq!(dl.len(), 3);
    assert_eq!(dl[2].batch, t[2].0);
    assert!(dl[2].reason.contains("undecodable"), "{}", dl[2].reason);
    ob.close().await.unwrap();
    let _ = std::fs::remove_dir_all(d);
}

/// Every reading appended is either still stored or counted as dropped, per node; alarms
/// survive; downsampling comes before any drop.
#[tokio::test]
async fn full_outbox_downsamples_then_drops_routine_readings_and_counts_every_one() {
    let d = dir("full");
    let path = d.join("outbox.sqlite");
    let nodes = 5;
    let per_batch = 200u32;
    let cfg = OutboxConfig {
        max_bytes: 2 << 20,
        ..config(&["down"])
    };
    let ob = Outbox::open(&path, cfg.clone()).unwrap();
    let mut appended: BTreeMap<String, u64> = BTreeMap::new();
    let alarm_node = NodeId::new("node-0").unwrap();
    let mut alarm_tickets = Vec::new();
    for i in 0..3 {
        alarm_tickets.push(ob.append_alarm(&alarm_node, &[i]).await.unwrap());
    }
    // Phase 1: just over the bound (the commit that crosses it sheds to 95 %), so only
    // downsampling is needed.
    let mut b = 0;
    while ob.drops().await.unwrap().is_empty() {
        assert!(b < 10_000, "the bound never took effect");
        let records = batch(b, per_batch, nodes);
        *appended
            .entry(records[0].reading.node.to_string())
            .or_default() += per_batch as u64;
        let t = ob.append_readings(&records).await.unwrap();
        ob.durable(t).await.unwrap();
        b += 1;
    }
    let drops = ob.drops().await.unwrap();
    assert!(!drops.is_empty());
    assert!(
        drops.iter().all(|d| d.reason == DropReason::Downsampled),
        "{drops:?}"
    );
    // Phase 2: far over: downsampling alone cannot make room, whole batches go.
    for _ in 0..800 {
        let records = batch(b, per_batch, nodes);
        *appended
            .entry(records[0].reading.node.to_string())
            .or_default() += per_batch as u64;
        ob.append_readings(&records).await.unwrap();
        b += 1;
    }
    ob.flush().await.unwrap();
    let stats = ob.stats().await.unwrap();
    assert!(stats.bytes <= cfg.max_bytes, "{stats:?}");
    let drops = ob.drops().await.unwrap();
    assert!(
        drops.iter().any(|d| d.reason == DropReason::Full),
        "{drops:?}"
    );
    assert!(!drops.iter().any(|d| d.reason == DropReason::FullAlarm));

    // Everything still stored, by node, plus every drop, equals everything appended.
    let mut stored: BTreeMap<String, u64> = BTreeMap::new();
    let mut alarms = Vec::new();
    let mut downsampled = 0;
    let mut last = BatchId(0);
    loop {
        let got = ob.read("down", 64).await.unwrap();
        let Some(end) = got.last().map(|b| b.id) else {
            break;
        };
        for b in got {
            assert!(b.id > last);
            last = b.id;
            downsampled += usize::from(b.downsampled);
            match b.entry {
                Entry::Readings(r) => {
                    for r in r {
                        *stored.entry(r.reading.node.to_string()).or_default() += 1;
                    }
                }
                Entry::Alarm { payload, .. } => alarms.push((b.id, payload)),
                Entry::Status(s) => panic!("no status was appended, read {s:?}"),
            }
        }
        ob.ack("down", end).await.unwrap();
    }
    assert!(downsampled > 0);
    assert_eq!(
        alarms,
        alarm_tickets
            .iter()
            .zip(0u8..)
            .map(|(t, i)| (t.0, vec![i]))
            .collect::<Vec<_>>(),
        "alarms are kept over readings"
    );
    let mut accounted = stored.clone();
    for d in &drops {
        *accounted.entry(d.node.clone()).or_default() += d.count;
    }
    assert_eq!(accounted, appended);
    // The counts survive a reopen.
    ob.close().await.unwrap();
    let ob = Outbox::open(&path, cfg).unwrap();
    assert_eq!(ob.drops().await.unwrap(), drops);
    assert_eq!(
        ob.stats().await.unwrap().dropped,
        drops.iter().map(|d| d.count).sum::<u64>()
    );
    ob.close().await.unwrap();
    let _ = std::fs::remove_dir_all(d);
}

/// With nothing but alarms left to give up, the oldest alarms go, counted.
#[tokio::test]
async fn alarms_are_dropped_last_and_counted() {
    let d = dir("alarms");
    let path = d.join("outbox.sqlite");
    let cfg = OutboxConfig {
        max_bytes: 64 << 10,
        ..config(&["s"])
    };
    let ob = Outbox::open(&path, cfg).unwrap();
    let node = NodeId::new("gas-1").unwrap();
    let payload = vec![7u8; 1000];
    let mut last = None;
    for _ in 0..200 {
        last = Some(ob.append_alarm(&node, &payload).await.unwrap());
    }
    ob.durable(last.unwrap()).await.unwrap();
    let drops = ob.drops().await.unwrap();
    let stats = ob.stats().await.unwrap();
    assert_eq!(drops.len(), 1);
    assert_eq!(
        (drops[0].node.as_str(), drops[0].reason),
        ("gas-1", DropReason::FullAlarm)
    );
    assert_eq!(drops[0].count + stats.batches, 200);
    // The newest are the ones kept.
    let kept = ob.read("s", 1000).await.unwrap();
    assert_eq!(kept.last().unwrap().id, last.unwrap().0);
    ob.close().await.unwrap();
    let _ = std::fs::remove_dir_all(d);
}

/// Node status changes are given up before alarm transitions (and after routine readings),
/// oldest first, counted per node.
#[tokio::test]
async fn status_changes_are_dropped_before_alarms_and_counted() {
    let d = dir("statuses");
    let path = d.join("outbox.sqlite");
    let cfg = OutboxConfig {
        max_bytes: 64 << 10,
        ..config(&["s"])
    };
    let ob = Outbox::open(&path, cfg).unwrap();
    let gas = NodeId::new("gas-1").unwrap();
    let payload = vec![7u8; 1000];
    let status = |i: u64| StatusEvent {
        site: SiteId::new("plant-3").unwrap(),
        node: NodeId::new(if i.is_multiple_of(2) { "wl-1" } else { "wl-2" }).unwrap(),
        status: NodeStatus {
            online: i % 4 < 2,
            ts: Some(1_764_300_000_000 + i),
            ..NodeStatus::last_will()
        },
    };
    // 200 status changes (about 100 bytes each, accounted) and 50 alarm transitions (about
    // 1 KB each): some 74 KB, over the 64 KiB bound, which alarms alone are not.
    let mut last = None;
    for i in 0..200u64 {
        last = Some(ob.append_status(&status(i)).await.unwrap());
        if i % 4 == 3 {
            last = Some(ob.append_alarm(&gas, &payload).await.unwrap());
        }
    }
    ob.durable(last.unwrap()).await.unwrap();
    let drops = ob.drops().await.unwrap();
    assert!(
        drops.iter().all(|d| d.reason == DropReason::FullStatus),
        "{drops:?}"
    );
    let dropped: u64 = drops.iter().map(|d| d.count).sum();
    assert!(dropped > 0, "{drops:?}");
    let kept = ob.read("s", 1000).await.unwrap();
    let alarms = kept
        .iter()
        .filter(|b| matches!(b.entry, Entry::Alarm { .. }))
        .count();
    let statuses: Vec<StatusEvent> = kept
        .iter()
        .filter_map(|b| match &b.entry {
            Entry::Status(s) => Some(s.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(alarms, 50, "every alarm transition kept");
    assert_eq!(statuses.len() as u64 + dropped, 200);
    // The newest are kept, whole and in order.
    let first_kept = 200 - statuses.len() as u64;
    assert_eq!(statuses, (first_kept..200).map(status).collect::<Vec<_>>());
    // Dropped per node: the oldest `dropped`, alternating between the two nodes.
    for node in ["wl-1", "wl-2"] {
        let expected = (0..first_kept)
            .filter(|i| status(*i).node.as_str() == node)
            .count() as u64;
        let counted = drops.iter().find(|d| d.node == node).map_or(0, |d| d.count);
        assert_eq!(counted, expected, "{node}: {drops:?}");
    }
    ob.close().await.unwrap();
    let _ = std::fs::remove_dir_all(d);
}

/// Appends `batches` batches of 200 readings (5 nodes) to an outbox whose file may not grow
/// past `pages` pages and whose sink is away, every 20th waited durable; returns what was appended
/// per node, the outbox's stats and its drops. Panics if a batch is not durable in 30 s: a
/// full file must not stop the outbox committing.
async fn fill_a_limited_file(
    name: &str,
    pages: u32,
    min_free: u64,
    batches: u32,
) -> (
    BTreeMap<String, u64>,
    BTreeMap<String, u64>,
    tianzhong_gateway::outbox::OutboxStats,
    Vec<tianzhong_gateway::outbox::Drop>,
) {
    let d = dir(name);
    let path = d.join("outbox.sqlite");
    let cfg = OutboxConfig {
        max_bytes: 64 << 20,
        max_file_pages: Some(pages),
        min_free_bytes: Some(min_free),
        ..config(&["away"])
    };
    let ob = Outbox::open(&path, cfg).unwrap();
    let mut appended: BTreeMap<String, u64> = BTreeMap::new();
    for b in 0..batches {
        let records = batch(b, 200, 5);
        *appended
            .entry(records[0].reading.node.to_string())
            .or_default() += 200;
        let t = ob.append_readings(&records).await.unwrap();
        if b % 20 == 19 || b + 1 == batches {
            tokio::time::timeout(Duration::from_secs(30), ob.durable(t))
                .await
                .unwrap_or_else(|_| panic!("batch {b} not durable in 30 s: the outbox is wedged"))
                .unwrap();
        }
    }
    let stats = ob.stats().await.unwrap();
    let drops = ob.drops().await.unwrap();
    let mut stored: BTreeMap<String, u64> = BTreeMap::new();
    loop {
        let got = ob.read("away", 256).await.unwrap();
        let Some(end) = got.last().map(|b| b.id) else {
            break;
        };
        for b in &got {
            for r in readings(&b.entry) {
                *stored.entry(r.reading.node.to_string()).or_default() += 1;
            }
        }
        ob.ack("away", end).await.unwrap();
    }
    // Once the sink has everything, the freed pages take new batches.
    let t = ob.append_readings(&batch(batches, 200, 5)).await.unwrap();
    tokio::time::timeout(Duration::from_secs(30), ob.durable(t))
        .await
        .expect("not durable after the sink caught up")
        .unwrap();
    ob.close().await.unwrap();
    let _ = std::fs::remove_dir_all(d);
    (appended, stored, stats, drops)
}

fn accounted(
    stored: &BTreeMap<String, u64>,
    drops: &[tianzhong_gateway::outbox::Drop],
) -> BTreeMap<String, u64> {
    let mut all = stored.clone();
    for d in drops {
        *all.entry(d.node.clone()).or_default() += d.count;
    }
    all
}

/// A file that cannot grow (SQLite's page limit: 4 MiB) long before the 64 MiB bound, with
/// no space kept free: commits fail with `SQLITE_FULL`, and the outbox sheds by its policy
/// and commits again — every batch becomes durable, and every reading is stored or counted.
#[tokio::test]
async fn a_file_that_fills_before_the_bound_sheds_by_the_policy_and_keeps_committing() {
    let (appended, stored, stats, drops) = fill_a_limited_file("filefull", 1024, 0, 1500).await;
    println!("{stats:?}\n{drops:?}");
    assert!(stats.commit_failures > 0, "{stats:?}");
    assert!(stats.bound < 64 << 20, "{stats:?}");
    assert!(
        drops.iter().any(|d| d.reason == DropReason::Full)
            && drops.iter().any(|d| d.reason == DropReason::Downsampled),
        "{drops:?}"
    );
    assert_eq!(accounted(&stored, &drops), appended);
}

/// The same file with 1 MiB kept free: the outbox sees the room running out and sheds
/// before SQLite ever fails a commit.
#[tokio::test]
async fn a_file_short_of_room_sheds_before_a_commit_fails() {
    let (appended, stored, stats, drops) =
        fill_a_limited_file("fileshort", 1024, 1 << 20, 1500).await;
    println!("{stats:?}\n{drops:?}");
    assert_eq!(stats.commit_failures, 0, "{stats:?}");
    assert!(stats.bound < 64 << 20, "{stats:?}");
    assert!(!drops.is_empty());
    assert_eq!(accounted(&stored, &drops), appended);
}

/// Alarm transitions are not given up while routine readings are stored, even when those
/// readings cannot go because a sink holds them unconfirmed: the outbox stays over its bound
/// for that window instead.
#[tokio::test]
async fn alarms_are_kept_while_readings_a_sink_holds_remain() {
    let d = dir("held");
    let path = d.join("outbox.sqlite");
    let cfg = OutboxConfig {
        max_bytes: 64 << 10,
        ..config(&["s"])
    };
    let ob = Outbox::open(&path, cfg.clone()).unwrap();
    // About 20 KB of readings, handed to the sink and not confirmed.
    let mut last = None;
    for b in 0..3 {
        last = Some(ob.append_readings(&batch(b, 200, 1)).await.unwrap());
    }
    ob.durable(last.unwrap()).await.unwrap();
    let handed = ob.read("s", 100).await.unwrap();
    assert_eq!(handed.len(), 3);
    // Then some 100 KB of alarm transitions: over the bound.
    let node = NodeId::new("gas-1").unwrap();
    for _ in 0..100 {
        last = Some(ob.append_alarm(&node, &[7u8; 1000]).await.unwrap());
    }
    ob.durable(last.unwrap()).await.unwrap();
    let drops = ob.drops().await.unwrap();
    assert!(drops.is_empty(), "{drops:?}");
    assert!(ob.stats().await.unwrap().bytes > cfg.max_bytes);
    // Once the sink confirms the readings, the alarms may go (oldest first), counted.
    ob.ack("s", handed.last().unwrap().id).await.unwrap();
    let t = ob.append_alarm(&node, &[7u8; 1000]).await.unwrap();
    ob.durable(t).await.unwrap();
    let drops = ob.drops().await.unwrap();
    assert_eq!(drops.len(), 1, "{drops:?}");
    assert_eq!(drops[0].reason, DropReason::FullAlarm);
    assert!(ob.stats().await.unwrap().bytes <= cfg.max_bytes);
    ob.close().await.unwrap();
    let _ = std::fs::remove_dir_all(d);
}

const CHILD_ENV: &str = "TZ_OUTBOX_CRASH_CHILD";

/// Not a test on its own: the writer the crash test runs as a child and kills.
#[test]
fn crash_child_writer() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let cfg = OutboxConfig {
            fsync_interval: Duration::from_millis(2),
            ..config(&["s"])
        };
        let ob = Outbox::open(std::path::Path::new(&path), cfg).unwrap();
        let mut b = 0u32;
        loop {
            // Several appends in flight, confirmed in order, as the MQTT source would.
            let mut tickets = Vec::new();
            for _ in 0..4 {
                tickets.push((b, ob.append_readings(&batch(b, 50, 7)).await.unwrap()));
                b += 1;
            }
            for (b, t) in tickets {
                ob.durable(t).await.unwrap();
                use std::io::Write as _;
                let mut out = std::io::stdout().lock();
                writeln!(out, "durable {b} {}", t.0.0).unwrap();
                out.flush().unwrap();
            }
        }
    });
}

#[test]
fn sigkill_loses_nothing_confirmed() {
    let d = dir("crash");
    let path = d.join("outbox.sqlite");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "crash_child_writer",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut confirmed: Vec<(u32, u64)> = Vec::new();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    while confirmed.len() < 400 {
        let line = lines.next().expect("child ended early").unwrap();
        if let Some(rest) = line.strip_prefix("durable ") {
            let (b, id) = rest.split_once(' ').unwrap();
            confirmed.push((b.parse().unwrap(), id.parse().unwrap()));
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let ob = Outbox::open(&path, config(&["s"])).unwrap();
        let mut stored = Vec::new();
        loop {
            let got = ob.read("s", 256).await.unwrap();
            let Some(end) = got.last().map(|b| b.id) else {
                break;
            };
            stored.extend(got);
            ob.ack("s", end).await.unwrap();
        }
        // Stored: in order, consecutive from the first, no duplicates — and every confirmed
        // batch among them with exactly its readings.
        assert!(stored.len() >= confirmed.len());
        for (i, s) in stored.iter().enumerate() {
            assert_eq!(s.id, BatchId(i as u64 + 1));
            assert_eq!(readings(&s.entry), batch(i as u32, 50, 7).as_slice());
        }
        for (b, id) in &confirmed {
            assert_eq!(stored[*b as usize].id, BatchId(*id));
        }
        ob.close().await.unwrap();
    });
    let _ = std::fs::remove_dir_all(d);
}
