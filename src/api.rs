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
    /// How it came to be (`break_glass`).
    pub kind: crate::grants::GrantKind,
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
            kind: g.kind,
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
