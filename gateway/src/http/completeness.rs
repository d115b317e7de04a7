//! Where the data went: each node's account from source to every sink, the outbox's state,
//! drops when it was full, and the batches set aside as dead letters.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{ApiState, authorise, error};
use crate::auth::Role;
use crate::outbox::codec;

/// How many dead letters the API lists (newest).
pub const DEAD_LETTERS_SHOWN: usize = 100;

/// `GET /api/completeness`.
pub(super) async fn completeness(State(s): State<ApiState>, headers: HeaderMap) -> Response {
    if let Err(r) = authorise(&s, &headers, Role::Viewer) {
        return r.into_response();
    }
    let mut dropped: BTreeMap<String, BTreeMap<&'static str, u64>> = BTreeMap::new();
    let mut outbox = Value::Null;
    if let Some(o) = &s.outbox {
        match (o.stats().await, o.drops().await) {
            (Ok(stats), Ok(drops)) => {
                for d in drops {
                    *dropped
                        .entry(d.node)
                        .or_default()
                        .entry(d.reason.as_str())
                        .or_default() += d.count;
                }
                outbox = json!({
                    "batches": stats.batches,
                    "bytes": stats.bytes,
                    "file_bytes": stats.file_bytes,
                    "durable_batch": stats.durable.0,
                    "pending_bytes": stats.pending_bytes,
                    "dead_letters": stats.dead_letters,
                    "dropped_readings": stats.dropped,
                    "bound_bytes": stats.bound,
                    "commit_failures": stats.commit_failures,
                    "sinks": stats.sinks.iter().map(|k| json!({
                        "sink": k.name, "confirmed_batch": k.acked.0, "behind_batches": k.behind,
                    })).collect::<Vec<_>>(),
                });
            }
            (Err(e), _) | (_, Err(e)) => {
                return error(StatusCode::INTERNAL_SERVER_ERROR, format!("outbox: {e}"));
            }
        }
    }
    let nodes: Vec<Value> = s
        .accounts
        .snapshot()
        .into_iter()
        .map(|(node, a)| {
            let mut v = serde_json::to_value(&a).unwrap_or(Value::Null);
            v["node"] = json!(node.as_str());
            v["dropped"] = json!(dropped.remove(node.as_str()).unwrap_or_default());
            v
        })
        .collect();
    axum::Json(json!({
        "nodes": nodes,
        // Nodes with drops but no account since this start (dropped before a restart).
        "dropped_other": dropped,
        "outbox": outbox,
    }))
    .into_response()
}

/// `GET /api/outbox/dead-letters`: the newest dead letters, decoded where possible.
pub(super) async fn dead_letters(State(s): State<ApiState>, headers: HeaderMap) -> Response {
    if let Err(r) = authorise(&s, &headers, Role::Engineer) {
        return r.into_response();
    }
    let Some(o) = &s.outbox else {
        return error(
            StatusCode::NOT_FOUND,
            "the outbox is disabled in this gateway's configuration",
        );
    };
    let letters = match o.dead_letters().await {
        Ok(l) => l,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, format!("outbox: {e}")),
    };
    let list: Vec<Value> = letters
        .iter()
        .rev()
        .take(DEAD_LETTERS_SHOWN)
        .map(|d| {
            let (nodes, readings) = match codec::decode(&d.bytes) {
                Ok(codec::Decoded::Readings(r)) => {
                    let mut nodes: Vec<&str> = r.iter().map(|x| x.reading.node.as_str()).collect();
                    nodes.sort_unstable();
                    nodes.dedup();
                    (json!(nodes), json!(r.len()))
                }
                Ok(codec::Decoded::Alarm(node, _)) => (json!([node.as_str()]), json!(1)),
                Ok(codec::Decoded::Status(s)) => (json!([s.node.as_str()]), json!(1)),
                Err(e) => (json!([]), json!(format!("undecodable: {e}"))),
            };
            json!({
                "sink": d.sink, "batch": d.batch.0, "reason": d.reason, "at": d.at_ms,
                "bytes": d.bytes.len(), "nodes": nodes, "readings": readings,
            })
        })
        .collect();
    axum::Json(json!({ "dead_letters": list, "total": letters.len() })).into_response()
}
