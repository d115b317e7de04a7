//! Firmware campaigns (see [`crate::campaign`]): engineers and admins only; viewers and
//! operators get 403.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{ApiError, ApiState, authorise, body, refuse};
use crate::auth::{Principal, Role};
use crate::campaign::plan::NewCampaign;
use crate::campaign::state::Threshold;
use crate::campaign::{CampaignError, Campaigns};

/// Largest `POST /api/campaigns` body: a firmware slot's worth of image in base64, and room.
pub const MAX_CAMPAIGN_BODY: usize = 1024 * 1024;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Halt {
    reason: String,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Resume {
    reason: String,
    max_failures: Option<usize>,
    max_failure_ratio: Option<f64>,
}

fn campaigns(s: &ApiState) -> Result<&Campaigns, ApiError> {
    s.campaigns.as_ref().ok_or_else(|| {
        refuse(
            StatusCode::NOT_FOUND,
            "campaigns are not available in this gateway",
        )
    })
}

fn refused(e: CampaignError) -> Response {
    let status = match e {
        CampaignError::Bad(_) => StatusCode::BAD_REQUEST,
        CampaignError::NotFound(_) => StatusCode::NOT_FOUND,
        CampaignError::Conflict(_) => StatusCode::CONFLICT,
        CampaignError::Storage(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    refuse(status, e.to_string()).into_response()
}

fn campaign_id(raw: &str, c: &Campaigns) -> Result<u64, ApiError> {
    raw.parse().map_err(|_| {
        c.count_bad_request();
        refuse(
            StatusCode::BAD_REQUEST,
            format!("`{raw}` is not a campaign id (a number)"),
        )
    })
}

/// A body that does not parse is a refused request like any other: counted.
fn counted<T: serde::de::DeserializeOwned>(
    c: &Campaigns,
    payload: Result<axum::Json<T>, JsonRejection>,
) -> Result<T, ApiError> {
    body(payload).inspect_err(|_| c.count_bad_request())
}

/// The start of every campaign route: an engineer (or admin), and the gateway's campaigns.
fn engineer<'a>(
    s: &'a ApiState,
    headers: &HeaderMap,
) -> Result<(Principal, &'a Campaigns), ApiError> {
    let who = authorise(s, headers, Role::Engineer)?;
    Ok((who, campaigns(s)?))
}

/// A handler's outcome: a refusal on the way is the response.
fn reply(r: Result<Response, ApiError>) -> Response {
    r.unwrap_or_else(IntoResponse::into_response)
}

/// What a campaign operation returned, as a response with `ok`'s status.
fn outcome<T: serde::Serialize>(ok: StatusCode, r: Result<T, CampaignError>) -> Response {
    match r {
        Ok(v) => (ok, axum::Json(v)).into_response(),
        Err(e) => refused(e),
    }
}

/// `POST /api/campaigns`.
pub(super) async fn create(
    State(s): State<ApiState>,
    headers: HeaderMap,
    payload: Result<axum::Json<NewCampaign>, JsonRejection>,
) -> Response {
    reply((|| {
        let (who, c) = engineer(&s, &headers)?;
        let req = counted(c, payload)?;
        Ok(outcome(StatusCode::CREATED, c.create(&who, req)))
    })())
}

/// `GET /api/campaigns`: summaries, newest first (nodes left out), and refused requests.
pub(super) async fn list(State(s): State<ApiState>, headers: HeaderMap) -> Response {
    let c = match engineer(&s, &headers) {
        Ok((_, c)) => c,
        Err(r) => return r.into_response(),
    };
    let list: Vec<serde_json::Value> = c
        .list()
        .into_iter()
        .map(|v| {
            let mut j = serde_json::to_value(&v).unwrap_or_default();
            if let Some(o) = j.as_object_mut() {
                o.remove("nodes");
            }
            j
        })
        .collect();
    let r = c.refused();
    let n = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    axum::Json(json!({
        "campaigns": list,
        "refused": {
            "bad_request": n(&r.bad_request),
            "not_found": n(&r.not_found),
            "conflict": n(&r.conflict),
        }
    }))
    .into_response()
}

/// `GET /api/campaigns/{id}`: the campaign with each node's state.
pub(super) async fn one(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    reply((|| {
        let (_, c) = engineer(&s, &headers)?;
        let id = campaign_id(&id, c)?;
        Ok(outcome(StatusCode::OK, c.get(id)))
    })())
}

/// `GET /api/campaigns/{id}/audit`: the campaign's audit trail, oldest first.
pub(super) async fn audit(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    reply((|| {
        let (_, c) = engineer(&s, &headers)?;
        let id = campaign_id(&id, c)?;
        Ok(match c.audit(id) {
            Ok(rows) => axum::Json(json!({
                "audit": rows.into_iter().map(|e| json!({
                    "at": e.at_ms, "user": e.user, "action": e.action, "target": e.target,
                    "old": e.old, "new": e.new, "reason": e.reason
                })).collect::<Vec<_>>()
            }))
            .into_response(),
            Err(e) => refused(e),
        })
    })())
}

/// `POST /api/campaigns/{id}/halt`.
pub(super) async fn halt(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    payload: Result<axum::Json<Halt>, JsonRejection>,
) -> Response {
    reply((|| {
        let (who, c) = engineer(&s, &headers)?;
        let id = campaign_id(&id, c)?;
        let h = counted(c, payload)?;
        Ok(outcome(StatusCode::OK, c.halt(&who, id, &h.reason)))
    })())
}

/// `POST /api/campaigns/{id}/resume`.
pub(super) async fn resume(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    payload: Result<axum::Json<Resume>, JsonRejection>,
) -> Response {
    reply((|| {
        let (who, c) = engineer(&s, &headers)?;
        let id = campaign_id(&id, c)?;
        let r = counted(c, payload)?;
        let threshold =
            (r.max_failures.is_some() || r.max_failure_ratio.is_some()).then_some(Threshold {
                max_failures: r.max_failures,
                max_failure_ratio: r.max_failure_ratio,
            });
        Ok(outcome(
            StatusCode::OK,
            c.resume(&who, id, &r.reason, threshold),
        ))
    })())
}
