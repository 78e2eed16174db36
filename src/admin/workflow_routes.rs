//! Handlers of the workflow routes: requests, review, extension, release,
//! policy explain.

use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;

use super::routes::{check_reason, parse_id, parse_sources, sources_or_origin};
use super::{ApiError, Caller, Origin};
use crate::api::{
    ApproveBody, Closed, CreateRequest, DenyBody, ExplainView, ExtendBody, RequestView,
};
use crate::config::Role;
use crate::gateway::Gateway;
use crate::requests::RequestState;
use crate::workflow::{AccessRequest, Created};

fn body<T>(b: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    b.map(|Json(t)| t)
        .map_err(|e| ApiError::bad_request(e.body_text()))
}

fn created_view(c: Created) -> RequestView {
    let mut v = RequestView::from(&c.request);
    v.notes = c.notes;
    v
}

/// `POST /v1/requests`. On an ssh/tcp resource with no `sources`, the
/// request is for the address it came from ([`Origin`]).
pub async fn create_request(
    State(gw): State<Arc<Gateway>>,
    caller: Caller,
    origin: Origin,
    b: Result<Json<CreateRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<RequestView>), ApiError> {
    caller.require(Role::Requester)?;
    let req = body(b)?;
    check_reason(&req.reason)?;
    let sources = sources_or_origin(&gw, &req.resource, parse_sources(&req.sources)?, origin)?;
    let ask = AccessRequest {
        resource: req.resource,
        duration: req.duration.0,
        reason: req.reason,
        logins: req.logins,
        sources,
    };
    let c = gw
        .off_workers(move |gw| gw.request_access(&caller.name, ask))
        .await?;
    Ok((StatusCode::CREATED, Json(created_view(c))))
}

/// `?state=pending` on `GET /v1/requests`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    #[serde(default)]
    state: Option<RequestState>,
}

/// `GET /v1/requests`: approvers see all, requesters their own.
pub async fn list_requests(
    State(gw): State<Arc<Gateway>>,
    caller: Caller,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Vec<RequestView>>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let all = caller.sees_all();
    Ok(Json(
        gw.requests
            .list()
            .iter()
            .filter(|r| all || r.principal == caller.name)
            .filter(|r| q.state.is_none_or(|s| r.state == s))
            .map(RequestView::from)
            .collect(),
    ))
}

/// `POST /v1/requests/{id}/approve`. Who may approve is the policy's
/// `approvers` list (checked by the request table), not a role.
pub async fn approve(
    State(gw): State<Arc<Gateway>>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
    b: Result<Json<ApproveBody>, JsonRejection>,
) -> Result<Json<RequestView>, ApiError> {
    let id = parse_id(id)?;
    let b = body(b)?;
    check_reason(&b.comment)?;
    let r = gw
        .off_workers(move |gw| gw.approve_request(&caller.name, id, &b.comment))
        .await?;
    Ok(Json(RequestView::from(&r)))
}

/// `POST /v1/requests/{id}/deny`: the policy's approvers only.
pub async fn deny(
    State(gw): State<Arc<Gateway>>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
    b: Result<Json<DenyBody>, JsonRejection>,
) -> Result<Json<RequestView>, ApiError> {
    let id = parse_id(id)?;
    let b = body(b)?;
    check_reason(&b.reason)?;
    let r = gw
        .off_workers(move |gw| gw.deny_request(&caller.name, id, &b.reason))
        .await?;
    Ok(Json(RequestView::from(&r)))
}

/// `POST /v1/grants/{id}/extend`: the holder asks for more time.
pub async fn extend(
    State(gw): State<Arc<Gateway>>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
    b: Result<Json<ExtendBody>, JsonRejection>,
) -> Result<(StatusCode, Json<RequestView>), ApiError> {
    caller.require(Role::Requester)?;
    let id = parse_id(id)?;
    let b = body(b)?;
    check_reason(&b.reason)?;
    let c = gw
        .off_workers(move |gw| gw.extend_grant(&caller.name, id, b.by.0, &b.reason))
        .await?;
    Ok((StatusCode::CREATED, Json(created_view(c))))
}

/// `POST /v1/grants/{id}/release`: the holder ends their own access now.
pub async fn release(
    State(gw): State<Arc<Gateway>>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Closed>, ApiError> {
    let id = parse_id(id)?;
    let n = gw.release_grant(&caller.name, id).await?;
    Ok(Json(Closed {
        id,
        sessions_closed: n,
    }))
}

/// `?principal=&resource=&at=` on `GET /v1/policy/explain`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExplainQuery {
    #[serde(default)]
    principal: Option<String>,
    resource: String,
    #[serde(default)]
    at: Option<String>,
}

/// `GET /v1/policy/explain`: approvers and admins may ask about anyone,
/// requesters about themselves.
pub async fn explain(
    State(gw): State<Arc<Gateway>>,
    caller: Caller,
    q: Result<Query<ExplainQuery>, QueryRejection>,
) -> Result<Json<ExplainView>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let principal = q.principal.unwrap_or_else(|| caller.name.clone());
    if principal != caller.name && !caller.sees_all() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "requesters may only explain their own access",
        ));
    }
    let at = match q.at.as_deref() {
        None => SystemTime::now(),
        Some(s) => humantime::parse_rfc3339_weak(s)
            .map_err(|_| ApiError::bad_request(format!("at={s:?} is not an RFC 3339 time")))?,
    };
    let stamp = crate::timefmt::rfc3339_seconds(at);
    let view = match crate::policy::evaluate(&gw.config(), &principal, &q.resource, at) {
        Ok(d) => ExplainView {
            principal,
            resource: q.resource,
            at: stamp,
            allowed: true,
            policy: Some(d.policy),
            max_duration: Some(d.max_duration),
            approvals: Some(d.approvals),
            approvers: d.approvers.into_iter().collect(),
            require_reason: Some(d.require_reason),
            logins: d.logins,
            sources: d
                .sources
                .map(|nets| nets.iter().map(ToString::to_string).collect()),
            explain: d.explain,
        },
        Err(n) => ExplainView {
            principal,
            resource: q.resource,
            at: stamp,
            allowed: false,
            policy: None,
            max_duration: None,
            approvals: None,
            approvers: Vec::new(),
            require_reason: None,
            logins: Vec::new(),
            sources: None,
            explain: n.explain,
        },
    };
    Ok(Json(view))
}
