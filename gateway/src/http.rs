//! The gateway's HTTP endpoint, loopback by default.
//!
//! | path | what |
//! |---|---|
//! | `GET /metrics` | Prometheus (OpenMetrics) text |
//! | `GET /healthz` | `ok` while the process serves |
//! | `GET /api/alarms` | annunciated alarms (every state but normal), JSON; filters `node`, `state`, `level` (at least) |
//! | `GET /api/alarms/stream` | every alarm transition as it happens, server-sent events (`event: alarm`, the [`AlarmEvent`] JSON; `event: lagged` when a slow client missed some) |
//!
//! Read-only so far: acknowledging, shelving and editing thresholds come with users, roles
//! and tokens, since an unauthenticated write to a life-safety alarm list is not acceptable.
//! Bad query parameters get a 400 with a message naming the parameter.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::Stream;
use serde_json::json;
use tianzhong_protocol::AlarmLevel;
use tokio::sync::{broadcast, watch};

use crate::alarm::{AlarmEvent, AlarmState};
use crate::metrics::Metrics;
use crate::pipeline::SharedEngine;

/// What the endpoint serves from.
#[derive(Clone)]
pub struct ApiState {
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The alarm engine, when alarms are on.
    pub engine: Option<SharedEngine>,
    /// Live alarm transitions.
    pub live: broadcast::Sender<Arc<AlarmEvent>>,
}

async fn render_metrics(State(s): State<ApiState>) -> impl IntoResponse {
    (
        [(
            CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.render(),
    )
}

async fn healthz() -> &'static str {
    "ok\n"
}

fn bad_request(message: String) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({ "error": message })),
    )
        .into_response()
}

const STATES: [AlarmState; 8] = [
    AlarmState::Normal,
    AlarmState::ActiveUnacked,
    AlarmState::ActiveAcked,
    AlarmState::ClearedUnacked,
    AlarmState::LatchedUnacked,
    AlarmState::LatchedAcked,
    AlarmState::Shelved,
    AlarmState::OutOfService,
];

async fn alarms(State(s): State<ApiState>, Query(q): Query<HashMap<String, String>>) -> Response {
    let Some(engine) = &s.engine else {
        return (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"error": "alarms are disabled in this gateway's configuration"})),
        )
            .into_response();
    };
    for key in q.keys() {
        if !["node", "state", "level"].contains(&key.as_str()) {
            return bad_request(format!(
                "unknown parameter `{key}`; filters are node, state and level"
            ));
        }
    }
    let state = match q.get("state") {
        None => None,
        Some(v) => match STATES.iter().find(|s| s.key() == v) {
            Some(s) => Some(*s),
            None => {
                return bad_request(format!(
                    "state `{v}` is not one of {}",
                    STATES.map(|s| s.key()).join(", ")
                ));
            }
        },
    };
    let level = match q.get("level") {
        None => None,
        Some(v) => match (1..=4u16)
            .filter_map(AlarmLevel::from_code)
            .find(|l| l.key() == v)
        {
            Some(l) => Some(l),
            None => {
                return bad_request(format!(
                    "level `{v}` is not one of blue, yellow, orange, red (the least to list)"
                ));
            }
        },
    };
    let node = q.get("node");
    let engine = engine.lock().unwrap_or_else(|e| e.into_inner());
    let mut list: Vec<(u8, String, u16, serde_json::Value)> = engine
        .alarms()
        .filter(|(k, st)| {
            st.state != AlarmState::Normal
                && state.is_none_or(|s| st.state == s)
                && level.is_none_or(|l| st.level >= l)
                && node.is_none_or(|n| k.node.as_str() == n)
        })
        .map(|(k, st)| {
            let item = json!({
                "node": k.node.as_str(),
                "ch": k.channel.0,
                "condition": k.condition.key(),
                "state": st.state.key(),
                "level": st.level.key(),
                "side": st.side.map(|x| x.to_string()),
                "shelved_until": st.shelved_until_ms,
            });
            (st.level.code(), k.node.to_string(), k.channel.0, item)
        })
        .collect();
    let version = engine.rules().version;
    drop(engine);
    // Most severe first, then by node and channel.
    list.sort_by(|a, b| (b.0, &a.1, a.2).cmp(&(a.0, &b.1, b.2)));
    let list: Vec<serde_json::Value> = list.into_iter().map(|x| x.3).collect();
    axum::Json(json!({ "rules_version": version, "alarms": list })).into_response()
}

async fn alarm_stream(
    State(s): State<ApiState>,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let rx = s.live.subscribe();
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        let event = match rx.recv().await {
            Ok(e) => SseEvent::default()
                .event("alarm")
                .data(e.to_json().to_string()),
            Err(broadcast::error::RecvError::Lagged(n)) => SseEvent::default()
                .event("lagged")
                .data(json!({ "missed": n }).to_string()),
            Err(broadcast::error::RecvError::Closed) => return None,
        };
        Some((Ok(event), rx))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// The router.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(healthz))
        .route("/api/alarms", get(alarms))
        .route("/api/alarms/stream", get(alarm_stream))
        .with_state(state)
}

/// Binds `addr` and serves until `shutdown` turns true; returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    state: ApiState,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = router(state);
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = shutdown.wait_for(|s| *s).await;
            })
            .await;
    });
    Ok((bound, task))
}
