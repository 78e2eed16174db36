//! The admin API's JSON shapes, shared by the server and the CLI so the two
//! can never disagree. Times are RFC 3339 UTC strings; durations humantime.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::config::HumanDuration;
use crate::grants::Grant;
use crate::sessions::Session;
use crate::timefmt::rfc3339;

/// A grant as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct GrantView {
    /// Grant id.
    pub id: Uuid,
    /// Who it is for.
    pub principal: String,
    /// Resource name.
    pub resource: String,
    /// Logins it admits.
    pub logins: Vec<String>,
    /// Source networks it admits.
    pub sources: Vec<String>,
    /// Creation time.
    pub created_at: String,
    /// Deadline.
    pub expires_at: String,
    /// Why.
    pub reason: String,
    /// Who created it.
    pub actor: String,
    /// How it came to be: `break_glass` or `request`.
    pub kind: String,
    /// The request it came from, for `kind = "request"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<Uuid>,
}

impl From<&Grant> for GrantView {
    fn from(g: &Grant) -> Self {
        GrantView {
            id: g.id,
            principal: g.principal.clone(),
            resource: g.resource.clone(),
            logins: g.logins.clone(),
            sources: g.sources.iter().map(ToString::to_string).collect(),
            created_at: rfc3339(g.created_at),
            expires_at: rfc3339(g.expires_at()),
            reason: g.reason.clone(),
            actor: g.actor.clone(),
            kind: g.kind.as_str().to_string(),
            request_id: g.kind.request_id(),
        }
    }
}

/// A live session as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SessionView {
    /// Session id.
    pub id: Uuid,
    /// The grant it lives on.
    pub grant_id: Uuid,
    /// Who.
    pub principal: String,
    /// Login presented.
    pub login: String,
    /// Resource name.
    pub resource: String,
    /// Protocol.
    pub protocol: String,
    /// Client address.
    pub client_addr: String,
    /// Start time.
    pub started_at: String,
    /// Effective deadline (grant or session cap).
    pub deadline: String,
    /// Milliseconds since the last byte either way.
    pub idle_ms: u64,
    /// Bytes client → backend.
    pub bytes_up: u64,
    /// Bytes backend → client.
    pub bytes_down: u64,
}

impl From<&Session> for SessionView {
    fn from(s: &Session) -> Self {
        use std::sync::atomic::Ordering::Relaxed;
        SessionView {
            id: s.id,
            grant_id: s.grant.id,
            principal: s.grant.principal.clone(),
            login: s.login.clone(),
            resource: s.resource.clone(),
            protocol: s.protocol.as_str().to_string(),
            client_addr: s.client_addr.to_string(),
            started_at: rfc3339(s.started_at),
            deadline: rfc3339(s.deadline()),
            idle_ms: u64::try_from(s.idle_for().as_millis()).unwrap_or(u64::MAX),
            bytes_up: s.bytes_up.load(Relaxed),
            bytes_down: s.bytes_down.load(Relaxed),
        }
    }
}

/// `POST /v1/grants`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateGrant {
    /// Who it is for (a configured user).
    pub principal: String,
    /// Resource name.
    pub resource: String,
    /// How long (`30m`).
    pub duration: HumanDuration,
    /// Logins (postgres/mysql); default: all of the user's configured logins.
    #[serde(default)]
    pub logins: Option<Vec<String>>,
    /// Source networks (CIDR or address). Required for ssh/tcp, where the
    /// default is the address the request came from; an optional
    /// restriction for postgres/mysql (default: any address).
    #[serde(default)]
    pub sources: Vec<String>,
    /// Why (required).
    pub reason: String,
}

/// The answer to a revoke or kill.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Closed {
    /// What was revoked or killed.
    pub id: Uuid,
    /// Sessions whose sockets were closed before the answer.
    pub sessions_closed: usize,
}

/// Every API error.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// One clear line.
    pub error: String,
}

/// One approval of a request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ApprovalView {
    /// Who approved.
    pub by: String,
    /// When.
    pub at: String,
    /// Their comment.
    #[serde(default)]
    pub comment: String,
}

/// An access request as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RequestView {
    /// Request id.
    pub id: Uuid,
    /// `access` or `extension`.
    pub kind: String,
    /// Who asks.
    pub principal: String,
    /// Resource name.
    pub resource: String,
    /// pending | approved | denied | expired.
    pub state: crate::requests::RequestState,
    /// The duration that will be (or was) granted.
    pub duration: HumanDuration,
    /// The duration asked for (larger when capped by policy).
    pub requested_duration: HumanDuration,
    /// Why.
    pub reason: String,
    /// The policy that applied.
    pub policy: String,
    /// Approvals so far.
    pub approvals: Vec<ApprovalView>,
    /// Approvals needed.
    pub approvals_needed: u32,
    /// Who may approve.
    pub approvers: Vec<String>,
    /// Logins the grant carries.
    pub logins: Vec<String>,
    /// Sources the grant carries.
    pub sources: Vec<String>,
    /// Creation time.
    pub created_at: String,
    /// A pending request expires then.
    pub expires_at: String,
    /// The grant created or extended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant_id: Option<Uuid>,
    /// Who denied it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub denied_by: Option<String>,
    /// Why it was denied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deny_reason: Option<String>,
    /// What the requester should know (e.g. the duration was capped).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

impl From<&crate::requests::Request> for RequestView {
    fn from(r: &crate::requests::Request) -> Self {
        use crate::requests::RequestKind;
        RequestView {
            id: r.id,
            kind: match r.kind {
                RequestKind::Access => "access".into(),
                RequestKind::Extension(_) => "extension".into(),
            },
            principal: r.principal.clone(),
            resource: r.resource.clone(),
            state: r.state,
            duration: HumanDuration(r.duration),
            requested_duration: HumanDuration(r.requested),
            reason: r.reason.clone(),
            policy: r.policy.clone(),
            approvals: r
                .approvals
                .iter()
                .map(|a| ApprovalView {
                    by: a.by.clone(),
                    at: rfc3339(a.at),
                    comment: a.comment.clone(),
                })
                .collect(),
            approvals_needed: r.needed,
            approvers: r.approvers.iter().cloned().collect(),
            logins: r.logins.clone(),
            sources: r.sources.iter().map(ToString::to_string).collect(),
            created_at: rfc3339(r.created_at),
            expires_at: rfc3339(r.expires_at),
            grant_id: r.grant_id.or(match r.kind {
                RequestKind::Extension(g) => Some(g),
                RequestKind::Access => None,
            }),
            denied_by: r.denied_by.clone(),
            deny_reason: r.deny_reason.clone(),
            notes: Vec::new(),
        }
    }
}

/// `POST /v1/requests`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    /// Resource name.
    pub resource: String,
    /// How long.
    pub duration: HumanDuration,
    /// Why (required when the policy says so).
    #[serde(default)]
    pub reason: String,
    /// Logins; default: all the policy allows.
    #[serde(default)]
    pub logins: Option<Vec<String>>,
    /// Source networks (CIDR or address). Required for ssh/tcp, where the
    /// default is the address the request came from; an optional
    /// restriction for postgres/mysql (default: any address).
    #[serde(default)]
    pub sources: Vec<String>,
}

/// `POST /v1/requests/{id}/approve`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApproveBody {
    /// A comment for the audit log.
    #[serde(default)]
    pub comment: String,
}

/// `POST /v1/requests/{id}/deny`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DenyBody {
    /// Why (required, shown to the requester).
    pub reason: String,
}

/// `POST /v1/grants/{id}/extend`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtendBody {
    /// How much longer.
    pub by: HumanDuration,
    /// Why.
    #[serde(default)]
    pub reason: String,
}

/// `GET /v1/policy/explain`: which policy applies and what it demands.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExplainView {
    /// Who would ask.
    pub principal: String,
    /// For what.
    pub resource: String,
    /// At what time the policy was evaluated.
    pub at: String,
    /// Whether any policy lets the principal request the resource.
    pub allowed: bool,
    /// The policy that applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// The longest grant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_duration: Option<HumanDuration>,
    /// Approvals needed (0 = auto-approve).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approvals: Option<u32>,
    /// Who may approve.
    #[serde(default)]
    pub approvers: Vec<String>,
    /// Whether a reason is required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_reason: Option<bool>,
    /// Logins a grant may carry.
    #[serde(default)]
    pub logins: Vec<String>,
    /// Networks a grant's sources must lie within (absent: any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sources: Option<Vec<String>>,
    /// How the answer was reached, step by step.
    pub explain: Vec<String>,
}
