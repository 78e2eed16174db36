//! Handlers of the `/v1` routes: parse, check the caller's role, call the
//! gateway operation, answer JSON.

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use uuid::Uuid;

use super::{ApiError, Caller, Origin};
use crate::api::{Closed, CreateGrant, GrantView, SessionView};
use crate::config::{Cidr, Role};
use crate::gateway::Gateway;
use crate::grants::{GrantKind, NewGrant};

/// Longest free-text reason accepted.
const MAX_REASON: usize = 1024;

/// `?reason=` on revoke and kill.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReasonQuery {
    #[serde(default)]
    reason: Option<String>,
}

pub(super) fn parse_id(p: Result<Path<String>, PathRejection>) -> Result<Uuid, ApiError> {
    let Path(s) = p.map_err(|e| ApiError::bad_request(e.body_text()))?;
    Uuid::parse_str(&s).map_err(|_| ApiError::bad_request(format!("{s:?} is not a valid id")))
}

fn reason_of(q: Result<Query<ReasonQuery>, QueryRejection>) -> Result<String, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let r = q.reason.unwrap_or_default();
    check_reason(&r)?;
    Ok(r)
}

pub(super) fn check_reason(r: &str) -> Result<(), ApiError> {
    if r.len() > MAX_REASON {
        return Err(ApiError::bad_request(format!(
            "reason is longer than {MAX_REASON} bytes"
        )));
    }
    if r.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "reason must not contain control characters",
        ));
    }
    Ok(())
}

/// Parse CIDRs (a bare address means that one host).
pub(super) fn parse_sources(sources: &[String]) -> Result<Vec<ipnet::IpNet>, ApiError> {
    sources
        .iter()
        .map(|s| {
            s.parse::<Cidr>()
                .map(|c| c.0)
                .map_err(|_| ApiError::bad_request(format!("{s:?} is not a CIDR")))
        })
        .collect()
}

/// The sources of a grant or request: as given, or, on an ssh/tcp resource
/// with none given, the address the request came from ([`Origin`]).
pub(super) fn sources_or_origin(
    gw: &Gateway,
    resource: &str,
    sources: Vec<ipnet::IpNet>,
    origin: Origin,
) -> Result<Vec<ipnet::IpNet>, ApiError> {
    let by_source = gw
        .config()
        .resource(resource)
        .is_some_and(|r| r.protocol().identifies_by_source());
    if !by_source || !sources.is_empty() {
        return Ok(sources);
    }
    let ip = origin.0.ok_or_else(|| {
        ApiError::bad_request("cannot tell the address of this request: give sources")
    })?;
    Ok(vec![ipnet::IpNet::from(ip)])
}

/// `GET /v1/grants`.
pub async fn list_grants(State(gw): State<Arc<Gateway>>, caller: Caller) -> Json<Vec<GrantView>> {
    let all = caller.sees_all();
    Json(
        gw.grants
            .list()
            .iter()
            .filter(|g| all || g.principal == caller.name)
            .map(|g| GrantView::from(g.as_ref()))
            .collect(),
    )
}

/// `POST /v1/grants` (admin): a break-glass grant. On an ssh/tcp resource
/// with no `sources`, the grant admits the address the request came from
/// ([`Origin`]); on a postgres/mysql resource with no `logins`, all of the
/// user's logins.
pub async fn create_grant(
    State(gw): State<Arc<Gateway>>,
    caller: Caller,
    origin: Origin,
    body: Result<Json<CreateGrant>, JsonRejection>,
) -> Result<(StatusCode, Json<GrantView>), ApiError> {
    caller.require(Role::Admin)?;
    let Json(req) = body.map_err(|e| ApiError::bad_request(e.body_text()))?;
    check_reason(&req.reason)?;
    let sources = sources_or_origin(&gw, &req.resource, parse_sources(&req.sources)?, origin)?;
    let by_source = gw
        .config()
        .resource(&req.resource)
        .is_some_and(|r| r.protocol().identifies_by_source());
    let logins = match req.logins {
        Some(l) => l,
        None if by_source => Vec::new(),
        None => gw
            .config()
            .user(&req.principal)
            .map(|u| u.logins.clone())
            .unwrap_or_default(),
    };
    let new = NewGrant {
        principal: req.principal,
        resource: req.resource,
        logins,
        sources,
        duration: req.duration.0,
        reason: req.reason,
        actor: caller.name,
        kind: GrantKind::BreakGlass,
    };
    let grant = gw.off_workers(move |gw| gw.create_grant(new)).await?;
    Ok((StatusCode::CREATED, Json(GrantView::from(grant.as_ref()))))
}

/// `DELETE /v1/grants/{id}` (admin): revoke; answers after the sockets are closed.
pub async fn revoke_grant(
    State(gw): State<Arc<Gateway>>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
    q: Result<Query<ReasonQuery>, QueryRejection>,
) -> Result<Json<Closed>, ApiError> {
    caller.require(Role::Admin)?;
    let id = parse_id(id)?;
    let reason = reason_of(q)?;
    let n = gw.revoke_grant(id, &caller.name, &reason).await?;
    Ok(Json(Closed {
        id,
        sessions_closed: n,
    }))
}

/// `GET /v1/sessions`.
pub async fn list_sessions(
    State(gw): State<Arc<Gateway>>,
    caller: Caller,
) -> Json<Vec<SessionView>> {
    let all = caller.sees_all();
    Json(
        gw.sessions
            .list()
            .iter()
            .filter(|s| all || s.grant.principal == caller.name)
            .map(|s| SessionView::from(s.as_ref()))
            .collect(),
    )
}

/// `DELETE /v1/sessions/{id}` (admin): kill; answers after the sockets are closed.
pub async fn kill_session(
    State(gw): State<Arc<Gateway>>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
    q: Result<Query<ReasonQuery>, QueryRejection>,
) -> Result<Json<Closed>, ApiError> {
    caller.require(Role::Admin)?;
    let id = parse_id(id)?;
    let reason = reason_of(q)?;
    let n = gw.kill_session(id, &caller.name, &reason).await?;
    Ok(Json(Closed {
        id,
        sessions_closed: n,
    }))
}

/// `POST /v1/reload` (admin): read the config file again and apply it.
pub async fn reload(
    State(gw): State<Arc<Gateway>>,
    caller: Caller,
) -> Result<Json<crate::reload::Summary>, ApiError> {
    caller.require(Role::Admin)?;
    crate::reload::reload_file(&gw)
        .await
        .map(Json)
        .map_err(|e| {
            ApiError::bad_request(format!("configuration rejected, the old one stays: {e}"))
        })
}
