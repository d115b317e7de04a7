//! The gateway's HTTP endpoint, loopback by default.
//!
//! | path | what |
//! |---|---|
//! | `GET /metrics` | Prometheus (OpenMetrics) text |
//! | `GET /healthz` | `ok` while the process serves |
//! | `GET /api/alarms` | annunciated alarms (every state but normal), JSON; filters `node`, `state`, `level` (at least) |
//! | `GET /api/alarms/stream` | every alarm transition as it happens, server-sent events (`event: alarm`, the [`AlarmEvent`] JSON; `event: lagged` when a slow client missed some) |
//! | `POST /api/login` | `{"user","password"}` → `{"token","role"}` |
//! | `POST /api/alarms/ack` | `{"node","ch","condition","comment"}`; operator |
//! | `POST /api/alarms/shelve` | `{"node","ch","condition","minutes","comment"}`; operator |
//! | `POST /api/users` | `{"name","role","password"}`; admin |
//! | `GET /api/audit` | the audit trail, newest first; admin |
//! | `GET /api/me` | who the token belongs to: `{"user","role"}` |
//! | `GET /api/nodes` | every node by site: latest value, unit, quality and alarm colour per channel, health of polled devices |
//! | `GET /api/nodes/{node}` | one node, with its alarms |
//! | `GET /api/nodes/{node}/trend?ch=N&hours=H` | bucket means (at most 1000) of recent hours, from the local store |
//! | `GET /api/stream` | server-sent events: `readings` (each ingested batch) and `alarm` (each transition) |
//! | `GET /api/rules` | the threshold rules in force, their version and the node groups |
//! | `PUT /api/rules/{name}` | `{"base_version","rule","reason"}`: change a rule; engineer |
//! | `POST /api/rules` | `{"base_version","rule","reason"}`: add a rule; engineer |
//! | `DELETE /api/rules/{name}` | `{"base_version","reason"}`: remove a rule; engineer |
//! | `GET /api/rules/history` | rule changes, newest first: who, when, old, new, why |
//! | `GET /api/completeness` | per node: samples received and missing (sequence gaps), readings stored, delivered and dead-lettered per sink, dropped when the outbox was full; the outbox's state |
//! | `GET /api/outbox/dead-letters` | batches a sink refused for good, newest first; engineer |
//! | `GET /api/campaigns` | firmware campaigns, newest first, with counts of nodes by state and of refused requests; engineer |
//! | `POST /api/campaigns` | `{"image_base64", "nodes" or "select", "canary", "waves", "max_failures", "max_failure_ratio", "tcp_parallel", "verify_timeout_s", "reason"}`: check the image and start a campaign; engineer |
//! | `GET /api/campaigns/{id}` | one campaign with each node's state; engineer |
//! | `GET /api/campaigns/{id}/audit` | its audit trail, oldest first; engineer |
//! | `POST /api/campaigns/{id}/halt` | `{"reason"}`; engineer |
//! | `POST /api/campaigns/{id}/resume` | `{"reason", "max_failures"?, "max_failure_ratio"?}`; engineer |
//! | `GET /api/openapi.json` | the OpenAPI 3.1 description of all of this; no token needed |
//!
//! Everything under `/api` but login and the OpenAPI document needs `Authorization: Bearer TOKEN` (401 without or
//! with a wrong one, 403 for a role that may not). Bad input gets a 4xx with
//! `{"error": "..."}` and changes nothing: a body that is not the JSON asked for (400),
//! unknown alarms, nodes, rules or campaigns (404), an action the alarm's or campaign's state
//! does not allow or a rule change made against an older version (409), bodies over 16 KiB
//! (1 MiB for a new campaign, which carries its image) (413), bad query parameters
//! (400, naming the parameter). Every write is audited.

mod campaigns;
mod completeness;
mod nodes;
mod rules;

pub use nodes::{Directory, KnownNode};

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::HeaderMap;
use axum::http::StatusCode;
use axum::http::header::AUTHORIZATION;
use axum::http::header::CONTENT_TYPE;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde_json::json;
use tianzhong_protocol::AlarmLevel;
use tokio::sync::{broadcast, watch};

use crate::alarm::{ActionError, AlarmEvent, AlarmKey, AlarmState, Condition};
use crate::auth::{Principal, Role, Users};
use crate::metrics::Metrics;
use crate::pipeline::{Event, SharedEngine};

/// Largest request body the API reads.
pub const MAX_BODY: usize = 16 * 1024;

/// What the endpoint serves from.
#[derive(Clone)]
pub struct ApiState {
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The alarm engine, when alarms are on.
    pub engine: Option<SharedEngine>,
    /// Live alarm transitions.
    pub live: broadcast::Sender<Arc<AlarmEvent>>,
    /// Users and tokens.
    pub users: Arc<std::sync::Mutex<Users>>,
    /// Into the pipeline, for transitions made by operators.
    pub events: tokio::sync::mpsc::Sender<Event>,
    /// Each channel's latest reading and the stream of batches.
    pub view: Arc<crate::pipeline::LiveView>,
    /// Rule changes, when alarms are on.
    pub thresholds: Option<crate::thresholds::Thresholds>,
    /// The nodes the configuration names, and where history is kept.
    pub directory: Arc<Directory>,
    /// Each node's completeness account.
    pub accounts: Arc<crate::pipeline::Accounts>,
    /// The durable outbox, when on.
    pub outbox: Option<Arc<crate::outbox::Outbox>>,
    /// Firmware campaigns.
    pub campaigns: Option<crate::campaign::Campaigns>,
    /// Turns true when the gateway stops: live streams end, so that a connected client does
    /// not hold the shutdown up.
    pub shutdown: watch::Receiver<bool>,
}

/// A refused request: its status and message, rendered as `{"error": message}`.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, axum::Json(json!({ "error": self.1 }))).into_response()
    }
}

fn refuse(status: StatusCode, message: impl Into<String>) -> ApiError {
    ApiError(status, message.into())
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    refuse(status, message).into_response()
}

/// The caller, if their token is valid and their role at least `need`.
fn authorise(s: &ApiState, headers: &HeaderMap, need: Role) -> Result<Principal, ApiError> {
    let token = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            refuse(
                StatusCode::UNAUTHORIZED,
                "missing `Authorization: Bearer TOKEN`; get a token from POST /api/login",
            )
        })?;
    let users = s.users.lock().unwrap_or_else(|e| e.into_inner());
    let who = users
        .authenticate(token.trim())
        .map_err(|e| refuse(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .ok_or_else(|| refuse(StatusCode::UNAUTHORIZED, "unknown or revoked token"))?;
    if who.role < need {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            format!(
                "{} is {}; this needs {} or above",
                who.user,
                who.role.key(),
                need.key()
            ),
        ));
    }
    Ok(who)
}

fn body<T: serde::de::DeserializeOwned>(
    payload: Result<axum::Json<T>, JsonRejection>,
) -> Result<T, ApiError> {
    payload.map(|j| j.0).map_err(|e| {
        let status = if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            StatusCode::PAYLOAD_TOO_LARGE
        } else {
            StatusCode::BAD_REQUEST
        };
        refuse(status, e.body_text())
    })
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Login {
    user: String,
    password: String,
}

async fn login(
    State(s): State<ApiState>,
    payload: Result<axum::Json<Login>, JsonRejection>,
) -> Response {
    let l = match body(payload) {
        Ok(l) => l,
        Err(r) => return r.into_response(),
    };
    let users = s.users.lock().unwrap_or_else(|e| e.into_inner());
    match users.login(&l.user, &l.password) {
        Ok(Some((token, role))) => {
            axum::Json(json!({ "token": token, "role": role.key() })).into_response()
        }
        Ok(None) => error(StatusCode::UNAUTHORIZED, "wrong user or password"),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AlarmAction {
    node: String,
    ch: u16,
    condition: String,
    comment: String,
    #[serde(default)]
    minutes: Option<f64>,
}

fn alarm_key(a: &AlarmAction) -> Result<AlarmKey, ApiError> {
    let node = tianzhong_protocol::NodeId::new(&a.node)
        .map_err(|e| refuse(StatusCode::BAD_REQUEST, format!("node: {e}")))?;
    let condition = Condition::ALL
        .into_iter()
        .find(|c| c.key() == a.condition)
        .ok_or_else(|| {
            refuse(
                StatusCode::BAD_REQUEST,
                format!(
                    "condition `{}` is not one of threshold, rate_of_change, stale, bad_quality",
                    a.condition
                ),
            )
        })?;
    Ok(AlarmKey {
        node,
        channel: tianzhong_protocol::reading::ChannelId(a.ch),
        condition,
    })
}

async fn alarm_action(
    s: ApiState,
    headers: HeaderMap,
    payload: Result<axum::Json<AlarmAction>, JsonRejection>,
    shelve: bool,
) -> Response {
    let who = match authorise(&s, &headers, Role::Operator) {
        Ok(w) => w,
        Err(r) => return r.into_response(),
    };
    let a = match body(payload) {
        Ok(a) => a,
        Err(r) => return r.into_response(),
    };
    let key = match alarm_key(&a) {
        Ok(k) => k,
        Err(r) => return r.into_response(),
    };
    if a.comment.trim().is_empty() {
        return error(StatusCode::BAD_REQUEST, "comment: say why");
    }
    let Some(engine) = &s.engine else {
        return error(
            StatusCode::NOT_FOUND,
            "alarms are disabled in this gateway's configuration",
        );
    };
    let now = crate::pipeline::unix_ms();
    let result = {
        let mut engine = engine.lock().unwrap_or_else(|e| e.into_inner());
        if shelve {
            let Some(minutes) = a.minutes.filter(|m| m.is_finite() && *m > 0.0) else {
                return error(StatusCode::BAD_REQUEST, "minutes: a number above 0");
            };
            engine.shelve(
                &key,
                (minutes * 60_000.0) as u64,
                &who.user,
                &a.comment,
                now,
            )
        } else {
            engine.acknowledge(&key, &who.user, &a.comment, now)
        }
    };
    let transition = match result {
        Ok(t) => t,
        Err(e @ ActionError::UnknownAlarm(_)) => {
            return error(StatusCode::NOT_FOUND, e.to_string());
        }
        Err(e @ ActionError::ShelveDuration { .. }) => {
            return error(StatusCode::BAD_REQUEST, e.to_string());
        }
        Err(e) => return error(StatusCode::CONFLICT, e.to_string()),
    };
    {
        let users = s.users.lock().unwrap_or_else(|e| e.into_inner());
        let action = if shelve {
            "shelve_alarm"
        } else {
            "acknowledge_alarm"
        };
        if let Err(e) = users.audit(
            &who.user,
            action,
            &key.to_string(),
            Some(transition.from.key()),
            Some(transition.to.key()),
            &a.comment,
        ) {
            tracing::error!("audit of {action} {key} by {} failed: {e}", who.user);
        }
    }
    let event = AlarmEvent {
        site: None,
        transition,
    };
    let reply = event.to_json();
    let _ = s.events.send(Event::Alarms(vec![event])).await;
    axum::Json(reply).into_response()
}

async fn acknowledge(
    State(s): State<ApiState>,
    headers: HeaderMap,
    payload: Result<axum::Json<AlarmAction>, JsonRejection>,
) -> Response {
    alarm_action(s, headers, payload, false).await
}

async fn shelve(
    State(s): State<ApiState>,
    headers: HeaderMap,
    payload: Result<axum::Json<AlarmAction>, JsonRejection>,
) -> Response {
    alarm_action(s, headers, payload, true).await
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUser {
    name: String,
    role: String,
    password: String,
}

async fn add_user(
    State(s): State<ApiState>,
    headers: HeaderMap,
    payload: Result<axum::Json<NewUser>, JsonRejection>,
) -> Response {
    let who = match authorise(&s, &headers, Role::Admin) {
        Ok(w) => w,
        Err(r) => return r.into_response(),
    };
    let u = match body(payload) {
        Ok(u) => u,
        Err(r) => return r.into_response(),
    };
    let Some(role) = Role::parse(&u.role) else {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "role `{}` is not one of viewer, operator, engineer, admin",
                u.role
            ),
        );
    };
    if tianzhong_protocol::NodeId::new(&u.name).is_err() {
        return error(
            StatusCode::BAD_REQUEST,
            "name: 1 to 32 of A-Z a-z 0-9 - _ .",
        );
    }
    if u.password.chars().count() < 12 {
        return error(StatusCode::BAD_REQUEST, "password: at least 12 characters");
    }
    let users = s.users.lock().unwrap_or_else(|e| e.into_inner());
    if let Err(e) = users.add_user(&u.name, role, &u.password) {
        return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    }
    let _ = users.audit(
        &who.user,
        "create_user",
        &u.name,
        None,
        Some(role.key()),
        "",
    );
    (
        StatusCode::CREATED,
        axum::Json(json!({ "name": u.name, "role": role.key() })),
    )
        .into_response()
}

async fn audit(State(s): State<ApiState>, headers: HeaderMap) -> Response {
    if let Err(r) = authorise(&s, &headers, Role::Admin) {
        return r.into_response();
    }
    let users = s.users.lock().unwrap_or_else(|e| e.into_inner());
    match users.audit_trail(500) {
        Ok(rows) => axum::Json(json!({
            "audit": rows.into_iter().map(|e| json!({
                "at": e.at_ms, "user": e.user, "action": e.action, "target": e.target,
                "reason": e.reason
            })).collect::<Vec<_>>()
        }))
        .into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
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

/// One alarm as the API lists it.
fn alarm_item(k: &AlarmKey, st: &crate::alarm::AlarmStatus) -> serde_json::Value {
    json!({
        "node": k.node.as_str(),
        "ch": k.channel.0,
        "condition": k.condition.key(),
        "state": st.state.key(),
        "level": st.level.key(),
        "condition_level": st.condition_level.key(),
        "side": st.side.map(|x| x.to_string()),
        "shelved_until": st.shelved_until_ms,
        "changed_ms": st.changed_ms,
    })
}

async fn alarms(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Err(r) = authorise(&s, &headers, Role::Viewer) {
        return r.into_response();
    }
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
            let item = alarm_item(&k, &st);
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

async fn alarm_stream(State(s): State<ApiState>, headers: HeaderMap) -> Response {
    if let Err(r) = authorise(&s, &headers, Role::Viewer) {
        return r.into_response();
    }
    let rx = s.live.subscribe();
    let stream =
        futures_util::stream::unfold((rx, s.shutdown.clone()), |(mut rx, mut stop)| async move {
            let event = tokio::select! {
                e = rx.recv() => e,
                _ = stop.wait_for(|s| *s) => return None,
            };
            let event = match event {
                Ok(e) => SseEvent::default()
                    .event("alarm")
                    .data(e.to_json().to_string()),
                Err(broadcast::error::RecvError::Lagged(n)) => SseEvent::default()
                    .event("lagged")
                    .data(json!({ "missed": n }).to_string()),
                Err(broadcast::error::RecvError::Closed) => return None,
            };
            Some((Ok::<SseEvent, Infallible>(event), (rx, stop)))
        });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// The OpenAPI 3.1 document of this API, kept by hand beside the handlers (a test checks
/// every documented operation against the router, and every route against the document).
pub const OPENAPI: &str = include_str!("http/openapi.json");

async fn openapi() -> Response {
    ([(CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// The router.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(healthz))
        .route("/api/alarms", get(alarms))
        .route("/api/alarms/stream", get(alarm_stream))
        .route("/api/login", post(login))
        .route("/api/alarms/ack", post(acknowledge))
        .route("/api/alarms/shelve", post(shelve))
        .route("/api/users", post(add_user))
        .route("/api/audit", get(audit))
        .route("/api/me", get(nodes::me))
        .route("/api/nodes", get(nodes::list))
        .route("/api/nodes/{node}", get(nodes::one))
        .route("/api/nodes/{node}/trend", get(nodes::trend))
        .route("/api/stream", get(nodes::stream))
        .route("/api/rules", get(rules::list).post(rules::add))
        .route("/api/rules/history", get(rules::history))
        .route(
            "/api/rules/{name}",
            put(rules::update).delete(rules::delete),
        )
        .route("/api/completeness", get(completeness::completeness))
        .route("/api/outbox/dead-letters", get(completeness::dead_letters))
        .route(
            "/api/campaigns",
            get(campaigns::list)
                .post(campaigns::create)
                .layer(DefaultBodyLimit::max(campaigns::MAX_CAMPAIGN_BODY)),
        )
        .route("/api/campaigns/{id}", get(campaigns::one))
        .route("/api/campaigns/{id}/audit", get(campaigns::audit))
        .route("/api/campaigns/{id}/halt", post(campaigns::halt))
        .route("/api/campaigns/{id}/resume", post(campaigns::resume))
        .route("/api/openapi.json", get(openapi))
        .merge(crate::console::routes())
        .layer(DefaultBodyLimit::max(MAX_BODY))
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
