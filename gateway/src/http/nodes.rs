//! Nodes: what each node last reported, its health, its recent history, and everything live.
//!
//! A node is known from the configuration (a polled device) or from its first reading (an
//! MQTT node). Values come from the [`LiveView`](crate::pipeline::LiveView), health from the
//! per-device Modbus counters, alarm colours from the engine, trends from the local store.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::atomic::Ordering;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tianzhong_protocol::{AlarmLevel, NodeId, QualityLevel, SiteId};
use tokio::sync::broadcast;

use super::{ApiError, ApiState, alarm_item, authorise, error, refuse};
use crate::alarm::AlarmState;
use crate::auth::Role;
use crate::metrics::{DeviceCounters, LATENCY_BUCKETS};
use crate::pipeline::Record;

/// Most points a trend returns: enough for a chart as wide as a screen.
pub const TREND_POINTS: u64 = 1000;

/// Longest trend, hours: a week.
pub const TREND_MAX_HOURS: f64 = 168.0;

/// A node the configuration names.
#[derive(Clone, Debug)]
pub struct KnownNode {
    /// Its site.
    pub site: SiteId,
    /// Its group, if any.
    pub group: Option<String>,
    /// For a polled device: its bus, unit address and row in the device counters.
    pub polled: Option<(String, u8, usize)>,
}

/// Every node the configuration names, and the local store to read trends from.
#[derive(Clone, Debug, Default)]
pub struct Directory {
    /// By node.
    pub nodes: HashMap<NodeId, KnownNode>,
    /// Groups of nodes not polled (MQTT nodes), by node.
    pub groups: HashMap<NodeId, String>,
    /// The local store's file, when it is on.
    pub store: Option<PathBuf>,
}

fn quality_key(level: QualityLevel) -> &'static str {
    match level {
        QualityLevel::Good => "good",
        QualityLevel::Uncertain => "uncertain",
        QualityLevel::Bad => "bad",
    }
}

fn reading_json(r: &Record) -> Value {
    let q = r.reading.quantity;
    let value = r.reading.value;
    json!({
        "site": r.site.as_str(),
        "node": r.reading.node.as_str(),
        "ch": r.reading.channel.0,
        "quantity": q.key(),
        "unit": q.canonical_unit().to_string(),
        "value": if value.is_finite() { Some(value) } else { None },
        "quality": quality_key(r.reading.quality.level()),
        "quality_detail": r.reading.quality.description(),
        "ts": r.reading.timestamp.0,
        "seq": r.reading.seq,
    })
}

fn health(c: &DeviceCounters, bus: &str, unit: u8) -> Value {
    let ok = c.ok.load(Ordering::Relaxed);
    let failed = c.timeouts.load(Ordering::Relaxed)
        + c.exceptions.load(Ordering::Relaxed)
        + c.malformed.load(Ordering::Relaxed)
        + c.errors.load(Ordering::Relaxed);
    let answered: u64 = c.latency.iter().map(|b| b.load(Ordering::Relaxed)).sum();
    let sum_us = c.latency_sum_us.load(Ordering::Relaxed);
    let last_seen = c.last_seen_ms.load(Ordering::Relaxed);
    debug_assert!(c.latency.len() == LATENCY_BUCKETS.len() + 1);
    json!({
        "bus": bus,
        "unit": unit,
        "polls_ok": ok,
        "polls_failed": failed,
        "timeouts": c.timeouts.load(Ordering::Relaxed),
        "exceptions": c.exceptions.load(Ordering::Relaxed),
        "success_ratio": if ok + failed > 0 { Some(ok as f64 / (ok + failed) as f64) } else { None },
        "latency_ms_mean": if answered > 0 { Some(sum_us as f64 / answered as f64 / 1000.0) } else { None },
        "last_answer": if last_seen > 0 { Some(last_seen) } else { None },
        "quarantined": c.quarantined.load(Ordering::Relaxed) != 0,
    })
}

/// Highest active alarm level per (node, channel), from one look at the engine.
fn channel_levels(s: &ApiState) -> HashMap<(NodeId, u16), AlarmLevel> {
    let mut out = HashMap::new();
    let Some(engine) = &s.engine else {
        return out;
    };
    let engine = engine.lock().unwrap_or_else(|e| e.into_inner());
    for (k, st) in engine.alarms() {
        if matches!(
            st.state,
            AlarmState::ActiveUnacked
                | AlarmState::ActiveAcked
                | AlarmState::LatchedUnacked
                | AlarmState::LatchedAcked
        ) {
            let e = out
                .entry((k.node, k.channel.0))
                .or_insert(AlarmLevel::Normal);
            *e = (*e).max(st.level);
        }
    }
    out
}

fn node_json(
    s: &ApiState,
    node: &NodeId,
    levels: &HashMap<(NodeId, u16), AlarmLevel>,
) -> Option<Value> {
    let known = s.directory.nodes.get(node);
    let latest = s.view.node(node);
    if known.is_none() && latest.is_none() {
        return None;
    }
    let site = latest
        .as_ref()
        .map(|l| l.site.clone())
        .or_else(|| known.map(|k| k.site.clone()))?;
    let group = known
        .and_then(|k| k.group.clone())
        .or_else(|| s.directory.groups.get(node).cloned());
    let mut level = AlarmLevel::Normal;
    let channels: Vec<Value> = latest
        .as_ref()
        .map(|l| {
            l.channels
                .values()
                .map(|r| {
                    let q = r.reading.quantity;
                    let spec = q.spec();
                    let ch_level = levels
                        .get(&(node.clone(), r.reading.channel.0))
                        .copied()
                        .unwrap_or_default();
                    level = level.max(ch_level);
                    let mut v = reading_json(r);
                    v["label_en"] = json!(spec.label_en);
                    v["label_zh"] = json!(spec.label_zh);
                    v["level"] = json!(ch_level.key());
                    v
                })
                .collect()
        })
        .unwrap_or_default();
    // Alarms of a channel with no reading (stale, say) still colour the node.
    for ((n, _), l) in levels {
        if n == node {
            level = level.max(*l);
        }
    }
    let health = known
        .and_then(|k| k.polled.as_ref())
        .and_then(|(bus, unit, row)| {
            s.metrics
                .devices
                .rows
                .get(*row)
                .map(|r| health(&r.counters, bus, *unit))
        });
    Some(json!({
        "node": node.as_str(),
        "site": site.as_str(),
        "group": group,
        "source": if known.is_some_and(|k| k.polled.is_some()) { "modbus" } else { "mqtt" },
        "last_seen": latest.as_ref().map(|l| l.last_seen_ms),
        "level": level.key(),
        "health": health,
        "channels": channels,
    }))
}

/// `GET /api/nodes`: every node by site, sites and nodes in name order.
pub(super) async fn list(State(s): State<ApiState>, headers: HeaderMap) -> Response {
    if let Err(r) = authorise(&s, &headers, Role::Viewer) {
        return r.into_response();
    }
    let levels = channel_levels(&s);
    let mut ids: Vec<NodeId> = s.directory.nodes.keys().cloned().collect();
    ids.extend(s.view.snapshot().into_iter().map(|(id, _)| id));
    ids.sort();
    ids.dedup();
    let mut sites: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for id in &ids {
        if let Some(n) = node_json(&s, id, &levels) {
            let site = n["site"].as_str().unwrap_or_default().to_owned();
            sites.entry(site).or_default().push(n);
        }
    }
    let sites: Vec<Value> = sites
        .into_iter()
        .map(|(site, nodes)| json!({ "site": site, "nodes": nodes }))
        .collect();
    axum::Json(json!({ "sites": sites })).into_response()
}

fn parse_node(id: &str) -> Result<NodeId, ApiError> {
    NodeId::new(id).map_err(|e| refuse(StatusCode::BAD_REQUEST, format!("node `{id}`: {e}")))
}

/// `GET /api/nodes/{node}`: one node with its alarms.
pub(super) async fn one(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(node): Path<String>,
) -> Response {
    if let Err(r) = authorise(&s, &headers, Role::Viewer) {
        return r.into_response();
    }
    let node = match parse_node(&node) {
        Ok(n) => n,
        Err(r) => return r.into_response(),
    };
    let levels = channel_levels(&s);
    let Some(mut v) = node_json(&s, &node, &levels) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("no node `{node}` is known here"),
        );
    };
    let alarms: Vec<Value> = s.engine.as_ref().map_or_else(Vec::new, |e| {
        let engine = e.lock().unwrap_or_else(|e| e.into_inner());
        let mut list: Vec<_> = engine
            .alarms()
            .filter(|(k, st)| k.node == node && st.state != AlarmState::Normal)
            .collect();
        list.sort_by_key(|(k, st)| (std::cmp::Reverse(st.level), k.channel.0));
        list.into_iter()
            .map(|(k, st)| alarm_item(&k, &st))
            .collect()
    });
    v["alarms"] = json!(alarms);
    axum::Json(v).into_response()
}

/// `GET /api/nodes/{node}/trend?ch=N&hours=H`: bucket means from the local store.
pub(super) async fn trend(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(node): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Err(r) = authorise(&s, &headers, Role::Viewer) {
        return r.into_response();
    }
    let node = match parse_node(&node) {
        Ok(n) => n,
        Err(r) => return r.into_response(),
    };
    for key in q.keys() {
        if !["ch", "hours"].contains(&key.as_str()) {
            return error(
                StatusCode::BAD_REQUEST,
                format!("unknown parameter `{key}`; give ch and hours"),
            );
        }
    }
    let Some(ch) = q.get("ch") else {
        return error(StatusCode::BAD_REQUEST, "ch: which channel (a number)");
    };
    let Ok(ch) = ch.parse::<u16>() else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("ch `{ch}` is not a channel number"),
        );
    };
    let hours = match q.get("hours").map(|h| h.parse::<f64>()) {
        None => 6.0,
        Some(Ok(h)) if h > 0.0 && h <= TREND_MAX_HOURS => h,
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("hours: a number above 0 and at most {TREND_MAX_HOURS}"),
            );
        }
    };
    let Some(path) = s.directory.store.clone() else {
        return error(
            StatusCode::NOT_FOUND,
            "no history: the local store is disabled in this gateway's configuration",
        );
    };
    let latest = s.view.node(&node);
    let known = s.directory.nodes.contains_key(&node);
    if latest.is_none() && !known {
        return error(
            StatusCode::NOT_FOUND,
            format!("no node `{node}` is known here"),
        );
    }
    let to = crate::pipeline::unix_ms();
    let from = to.saturating_sub((hours * 3_600_000.0) as u64);
    let bucket = ((to - from) / TREND_POINTS).max(1);
    let n = node.to_string();
    let rows = tokio::task::spawn_blocking(move || -> rusqlite::Result<_> {
        let conn = rusqlite::Connection::open_with_flags(
            &path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(2))?;
        let meta: Option<(String, String)> = conn
            .query_row(
                "SELECT quantity, unit FROM reading WHERE node = ?1 AND channel = ?2
                 ORDER BY ts_ms DESC LIMIT 1",
                rusqlite::params![n, ch],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map(Some)
            .or_else(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => Ok(None),
                e => Err(e),
            })?;
        let mut stmt = conn.prepare(
            "SELECT (ts_ms - ?3) / ?4 AS b, CAST(AVG(ts_ms) AS INTEGER), AVG(value), MIN(value),
                    MAX(value), COUNT(*)
             FROM reading WHERE node = ?1 AND channel = ?2 AND ts_ms >= ?3 AND ts_ms <= ?5
             GROUP BY b ORDER BY b",
        )?;
        let points = stmt
            .query_map(
                rusqlite::params![n, ch, from as i64, bucket as i64, to as i64],
                |r| {
                    Ok(json!([
                        r.get::<_, i64>(1)?,
                        r.get::<_, f64>(2)?,
                        r.get::<_, f64>(3)?,
                        r.get::<_, f64>(4)?,
                        r.get::<_, i64>(5)?
                    ]))
                },
            )?
            .collect::<Result<Vec<_>, _>>()?;
        Ok((meta, points))
    })
    .await;
    let (meta, points) = match rows {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("reading the local store: {e}"),
            );
        }
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let live = latest.as_ref().and_then(|l| l.channels.get(&ch));
    let (quantity, unit) = match (meta, live) {
        (_, Some(r)) => (
            r.reading.quantity.key().to_owned(),
            r.reading.quantity.canonical_unit().to_string(),
        ),
        (Some(m), None) => m,
        (None, None) => {
            return error(
                StatusCode::NOT_FOUND,
                format!("node `{node}` has no channel {ch} with readings"),
            );
        }
    };
    axum::Json(json!({
        "node": node.as_str(),
        "ch": ch,
        "quantity": quantity,
        "unit": unit,
        "from": from,
        "to": to,
        "bucket_ms": bucket,
        "columns": ["ts", "mean", "min", "max", "count"],
        "points": points,
    }))
    .into_response()
}

/// `GET /api/stream`: readings and alarm transitions as they happen.
pub(super) async fn stream(State(s): State<ApiState>, headers: HeaderMap) -> Response {
    if let Err(r) = authorise(&s, &headers, Role::Viewer) {
        return r.into_response();
    }
    let state = (s.view.subscribe(), s.live.subscribe(), s.shutdown.clone());
    let stream =
        futures_util::stream::unfold(state, |(mut readings, mut alarms, mut stop)| async move {
            let event = tokio::select! {
                r = readings.recv() => match r {
                    Ok(batch) => SseEvent::default()
                        .event("readings")
                        .data(Value::Array(batch.iter().map(reading_json).collect()).to_string()),
                    Err(broadcast::error::RecvError::Lagged(n)) => SseEvent::default()
                        .event("lagged")
                        .data(json!({ "missed_batches": n }).to_string()),
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
                a = alarms.recv() => match a {
                    Ok(e) => SseEvent::default().event("alarm").data(e.to_json().to_string()),
                    Err(broadcast::error::RecvError::Lagged(n)) => SseEvent::default()
                        .event("lagged")
                        .data(json!({ "missed_alarms": n }).to_string()),
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
                _ = stop.wait_for(|s| *s) => return None,
            };
            Some((Ok::<SseEvent, Infallible>(event), (readings, alarms, stop)))
        });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// `GET /api/me`: who the token belongs to.
pub(super) async fn me(State(s): State<ApiState>, headers: HeaderMap) -> Response {
    match authorise(&s, &headers, Role::Viewer) {
        Ok(who) => axum::Json(json!({ "user": who.user, "role": who.role.key() })).into_response(),
        Err(r) => r.into_response(),
    }
}
