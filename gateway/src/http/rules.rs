//! Threshold rules: read by anyone, changed by engineers (see [`crate::thresholds`]).

use std::collections::BTreeMap;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{ApiError, ApiState, authorise, body, error, refuse};
use crate::alarm::wire::RuleDoc;
use crate::auth::Role;
use crate::pipeline::Event;
use crate::thresholds::{ChangeError, Edit, Thresholds};

/// How many changes the history returns.
pub const HISTORY_LIMIT: usize = 200;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RuleChange {
    base_version: u64,
    rule: RuleDoc,
    reason: String,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RuleDelete {
    base_version: u64,
    reason: String,
}

fn thresholds(s: &ApiState) -> Result<&Thresholds, ApiError> {
    s.thresholds.as_ref().ok_or_else(|| {
        refuse(
            StatusCode::NOT_FOUND,
            "alarms are disabled in this gateway's configuration",
        )
    })
}

/// `GET /api/rules`.
pub(super) async fn list(State(s): State<ApiState>, headers: HeaderMap) -> Response {
    if let Err(r) = authorise(&s, &headers, Role::Viewer) {
        return r.into_response();
    }
    let t = match thresholds(&s) {
        Ok(t) => t,
        Err(r) => return r.into_response(),
    };
    let (version, rules, set) = t.current();
    let mut groups: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (node, info) in &set.nodes {
        if let Some(g) = &info.group {
            groups.entry(g).or_default().push(node.as_str());
        }
    }
    for nodes in groups.values_mut() {
        nodes.sort_unstable();
    }
    axum::Json(json!({
        "version": version,
        "max_shelve_s": set.max_shelve_ms as f64 / 1000.0,
        "rules": rules,
        "groups": groups,
    }))
    .into_response()
}

async fn apply(
    s: ApiState,
    who: crate::auth::Principal,
    edit: Edit,
    name: String,
    base_version: u64,
    rule: Option<RuleDoc>,
    reason: String,
) -> Response {
    let t = match thresholds(&s) {
        Ok(t) => t.clone(),
        Err(r) => return r.into_response(),
    };
    match t.change(&who, edit, &name, base_version, rule.as_ref(), &reason) {
        Ok(applied) => {
            tracing::info!(
                "alarm rules version {}: {} {edit:?} rule `{name}`: {reason}",
                applied.version,
                who.user
            );
            if !applied.transitions.is_empty() {
                let view = s.view.clone();
                let events = crate::thresholds::events(applied.transitions, |n| {
                    view.node(n).map(|l| l.site)
                });
                let _ = s.events.send(Event::Alarms(events)).await;
            }
            axum::Json(json!({ "version": applied.version })).into_response()
        }
        Err(e) => {
            let status = match &e {
                ChangeError::Conflict { .. } | ChangeError::Exists(_) => StatusCode::CONFLICT,
                ChangeError::Unknown(_) | ChangeError::Disabled => StatusCode::NOT_FOUND,
                ChangeError::Invalid(_) => StatusCode::BAD_REQUEST,
                ChangeError::Storage(_) => StatusCode::INTERNAL_SERVER_ERROR,
            };
            error(status, e.to_string())
        }
    }
}

/// `PUT /api/rules/{name}`.
pub(super) async fn update(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    payload: Result<axum::Json<RuleChange>, JsonRejection>,
) -> Response {
    let who = match authorise(&s, &headers, Role::Engineer) {
        Ok(w) => w,
        Err(r) => return r.into_response(),
    };
    match body(payload) {
        Ok(c) => {
            apply(
                s,
                who,
                Edit::Update,
                name,
                c.base_version,
                Some(c.rule),
                c.reason,
            )
            .await
        }
        Err(r) => r.into_response(),
    }
}

/// `POST /api/rules`.
pub(super) async fn add(
    State(s): State<ApiState>,
    headers: HeaderMap,
    payload: Result<axum::Json<RuleChange>, JsonRejection>,
) -> Response {
    let who = match authorise(&s, &headers, Role::Engineer) {
        Ok(w) => w,
        Err(r) => return r.into_response(),
    };
    match body(payload) {
        Ok(c) => {
            let name = c.rule.name.clone();
            apply(
                s,
                who,
                Edit::Add,
                name,
                c.base_version,
                Some(c.rule),
                c.reason,
            )
            .await
        }
        Err(r) => r.into_response(),
    }
}

/// `DELETE /api/rules/{name}`.
pub(super) async fn delete(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    payload: Result<axum::Json<RuleDelete>, JsonRejection>,
) -> Response {
    let who = match authorise(&s, &headers, Role::Engineer) {
        Ok(w) => w,
        Err(r) => return r.into_response(),
    };
    match body(payload) {
        Ok(c) => apply(s, who, Edit::Delete, name, c.base_version, None, c.reason).await,
        Err(r) => r.into_response(),
    }
}

/// `GET /api/rules/history`.
pub(super) async fn history(State(s): State<ApiState>, headers: HeaderMap) -> Response {
    if let Err(r) = authorise(&s, &headers, Role::Viewer) {
        return r.into_response();
    }
    let t = match thresholds(&s) {
        Ok(t) => t,
        Err(r) => return r.into_response(),
    };
    match t.history(HISTORY_LIMIT) {
        Ok(changes) => axum::Json(json!({ "changes": changes })).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}
