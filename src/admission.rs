//! Admission: the one place where a connection is let in or refused, for
//! every protocol.
//!
//! Identity is a login (PostgreSQL, MySQL: the grant must list it) or the
//! client's source address (SSH, TCP: one of the grant's `sources` CIDRs
//! must contain it). Either way the grant is found in O(1) or among that
//! resource's grants only (see [`crate::grants`]).
//!
//! Invariants:
//! - Not a byte reaches a backend before [`admit`] returns `Ok`.
//! - The session is registered (and so revocable) *before* the final grant
//!   check; see [`crate::sessions`].
//! - `session.started` is written before any byte is sent to the backend
//!   (PostgreSQL and TCP before it is even dialled; SSH dials it first to
//!   read the server's version line, which the record carries); if the
//!   audit log cannot be written, access is refused (fail closed).
//! - Every refusal is audited (`session.denied`) and counted.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use crate::audit::Event;
use crate::config::ResourceConfig;
use crate::gateway::Gateway;
use crate::grants::Grant;
use crate::metrics::{self as m, Outcome};
use crate::sessions::{NewSession, Session, SessionGuard};

/// Who is connecting, as the protocol tells it.
#[derive(Debug, Clone, Copy)]
pub enum Identity<'a> {
    /// A database login (PostgreSQL `user`, MySQL username).
    Login(&'a str),
    /// The client's address (SSH, TCP: the stream tells nothing else).
    Source(IpAddr),
}

impl Identity<'_> {
    /// The login, for identities that have one.
    fn login(&self) -> Option<&str> {
        match self {
            Identity::Login(l) => Some(l),
            Identity::Source(_) => None,
        }
    }
}

impl fmt::Display for Identity<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Login(l) => f.write_str(l),
            Identity::Source(ip) => write!(f, "{}", ip.to_canonical()),
        }
    }
}

/// Protocol facts recorded in `session.started` beyond the identity.
#[derive(Debug, Clone, Default)]
pub struct Details {
    /// The client's software version (SSH: its identification line).
    pub client_version: Option<String>,
    /// The server's software version (SSH: its identification line).
    pub server_version: Option<String>,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No live grant admits this identity on this resource.
    NoGrant,
    /// The audit log cannot be written.
    AuditUnavailable,
}

/// An admitted connection: its session and the guard that unregisters it.
#[derive(Debug)]
pub struct Admitted {
    /// Owns the registry entry; drop it once both sockets are closed.
    pub guard: SessionGuard,
    /// The session.
    pub session: Arc<Session>,
}

/// The text a refused client is shown (PostgreSQL and MySQL alike).
pub fn no_grant_message(login: &str, resource: &str) -> String {
    format!("jitgate: no active access grant for {login:?} on {resource:?}")
}

/// The hint that goes with [`no_grant_message`].
pub fn no_grant_hint(resource: &str) -> String {
    format!("request access with: jitgate request {resource} --for 30m --reason \"...\"")
}

/// Admit `identity` on `resource`, or refuse it (audited and counted; the
/// caller tells the client in its protocol).
pub fn admit(
    gw: &Gateway,
    resource: &ResourceConfig,
    identity: Identity<'_>,
    peer: SocketAddr,
    accepted: Instant,
) -> Result<Admitted, Refusal> {
    admit_with(gw, resource, identity, peer, accepted, Details::default())
}

fn lookup(
    gw: &Gateway,
    resource: &str,
    identity: Identity<'_>,
    peer: SocketAddr,
) -> Option<Arc<Grant>> {
    match identity {
        Identity::Login(l) => gw.grants.find_login(resource, l, peer.ip()),
        Identity::Source(ip) => gw.grants.find_source(resource, ip),
    }
}

/// Refuse at once, audited and counted, when no live grant admits
/// `identity`. For protocols that know the identity before they need the
/// backend (SSH reads the server's version line before [`admit_with`]), so
/// a client without a grant never makes jitgate dial it. [`admit_with`]
/// checks again.
pub fn precheck(
    gw: &Gateway,
    resource: &ResourceConfig,
    identity: Identity<'_>,
    peer: SocketAddr,
    accepted: Instant,
) -> Result<(), Refusal> {
    match lookup(gw, resource.name(), identity, peer) {
        Some(_) => Ok(()),
        None => Err(refuse(
            gw,
            resource,
            identity,
            peer,
            accepted,
            Refusal::NoGrant,
        )),
    }
}

/// [`admit`], recording protocol `details` in `session.started`.
pub fn admit_with(
    gw: &Gateway,
    resource: &ResourceConfig,
    identity: Identity<'_>,
    peer: SocketAddr,
    accepted: Instant,
    details: Details,
) -> Result<Admitted, Refusal> {
    let name = resource.name();
    let protocol = resource.protocol().as_str();
    let Some(grant) = lookup(gw, name, identity, peer) else {
        return Err(refuse(
            gw,
            resource,
            identity,
            peer,
            accepted,
            Refusal::NoGrant,
        ));
    };
    let guard = gw.sessions.register(NewSession {
        grant: grant.clone(),
        login: identity.login().unwrap_or_default().to_string(),
        resource: name.to_string(),
        protocol: resource.protocol(),
        client_addr: peer,
        max_session: resource.max_session(),
    });
    let session = guard.session().clone();
    // Final check after registration: a revoke from now on finds the session.
    if !grant.is_live(SystemTime::now()) || session.is_cut() {
        drop(guard);
        return Err(refuse(
            gw,
            resource,
            identity,
            peer,
            accepted,
            Refusal::NoGrant,
        ));
    }
    let mut e = Event::new("session.started");
    e.session_id = Some(session.id);
    e.grant_id = Some(grant.id);
    e.principal = Some(grant.principal.clone());
    e.login = identity.login().map(str::to_string);
    e.resource = Some(name.to_string());
    e.protocol = Some(protocol);
    e.client_addr = Some(peer);
    e.expires_at = Some(session.deadline());
    e.client_version = details.client_version;
    e.server_version = details.server_version;
    if gw.audit.write(e).is_err() {
        drop(guard);
        return Err(refuse(
            gw,
            resource,
            identity,
            peer,
            accepted,
            Refusal::AuditUnavailable,
        ));
    }
    m::handshake(accepted.elapsed());
    tracing::info!(session = %session.id, %peer, resource = name, who = %identity, grant = %grant.id, "session started");
    // Admitted: no longer one of its source's handshakes.
    crate::limits::handshake_done();
    Ok(Admitted { guard, session })
}

/// A connection the resource's own rules refuse before any grant is
/// consulted (its TLS policy; a PostgreSQL replication connection):
/// audited as `session.denied` with `outcome` and the client's `reason`,
/// counted as denied, logged. The caller tells the client.
pub fn deny_by_rule(
    gw: &Gateway,
    resource: &ResourceConfig,
    login: &str,
    peer: SocketAddr,
    accepted: Instant,
    outcome: &'static str,
    reason: &str,
) {
    let name = resource.name();
    let protocol = resource.protocol().as_str();
    let mut e = Event::new("session.denied");
    e.login = (!login.is_empty()).then(|| login.to_string());
    e.resource = Some(name.to_string());
    e.protocol = Some(protocol);
    e.client_addr = Some(peer);
    e.outcome = Some(outcome);
    e.reason = Some(reason.to_string());
    // Counted before the record is written, as every denial is.
    m::connection(name, protocol, Outcome::Denied);
    m::handshake(accepted.elapsed());
    // The client is refused whether or not the record could be written; a
    // failed write is counted and reported by the audit log itself.
    let _ = gw.audit.write(e);
    tracing::info!(%peer, resource = name, login, outcome, reason, "session refused by the resource's rules");
}

fn refuse(
    gw: &Gateway,
    resource: &ResourceConfig,
    identity: Identity<'_>,
    peer: SocketAddr,
    accepted: Instant,
    why: Refusal,
) -> Refusal {
    let name = resource.name();
    let protocol = resource.protocol().as_str();
    if why == Refusal::NoGrant {
        let mut e = Event::new("session.denied");
        e.login = identity.login().map(str::to_string);
        e.resource = Some(name.to_string());
        e.protocol = Some(protocol);
        e.client_addr = Some(peer);
        e.outcome = Some("no_grant");
        // Counted before the record is written, as a session's end is.
        m::connection(name, protocol, Outcome::Denied);
        let _ = gw.audit.write(e);
        tracing::info!(%peer, resource = name, who = %identity, "session denied: no active grant");
    } else {
        m::connection(name, protocol, Outcome::Error);
        tracing::error!(%peer, resource = name, who = %identity, "session refused: audit log unavailable");
    }
    m::handshake(accepted.elapsed());
    why
}
