//! Admission: the one place where a connection is let in or refused, for
//! every protocol.
//!
//! Invariants:
//! - Nothing reaches a backend before [`admit`] returns `Ok`.
//! - The session is registered (and so revocable) *before* the final grant
//!   check; see [`crate::sessions`].
//! - `session.started` is written before the backend is dialled; if the
//!   audit log cannot be written, access is refused (fail closed).
//! - Every refusal is audited (`session.denied`) and counted.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use crate::audit::Event;
use crate::config::ResourceConfig;
use crate::gateway::Gateway;
use crate::metrics::{self as m, Outcome};
use crate::sessions::{NewSession, Session, SessionGuard};

/// Who is connecting, as the protocol tells it.
#[derive(Debug, Clone, Copy)]
pub enum Identity<'a> {
    /// A database login (PostgreSQL `user`, MySQL username).
    Login(&'a str),
}

impl Identity<'_> {
    fn login(&self) -> &str {
        match self {
            Identity::Login(l) => l,
        }
    }
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
    let name = resource.name();
    let protocol = resource.protocol().as_str();
    let login = identity.login();
    let Some(grant) = gw.grants.find(name, login) else {
        return Err(refuse(
            gw,
            resource,
            login,
            peer,
            accepted,
            Refusal::NoGrant,
        ));
    };
    let guard = gw.sessions.register(NewSession {
        grant: grant.clone(),
        login: login.to_string(),
        resource: name.to_string(),
        protocol: resource.protocol(),
        client_addr: peer,
        max_session: resource.max_session(),
    });
    let session = guard.session().clone();
    // Final check after registration: a revoke from now on finds the session.
    if !grant.is_live(SystemTime::now()) || session.token().is_cancelled() {
        drop(guard);
        return Err(refuse(
            gw,
            resource,
            login,
            peer,
            accepted,
            Refusal::NoGrant,
        ));
    }
    let mut e = Event::new("session.started");
    e.session_id = Some(session.id);
    e.grant_id = Some(grant.id);
    e.principal = Some(grant.principal.clone());
    e.login = Some(login.to_string());
    e.resource = Some(name.to_string());
    e.protocol = Some(protocol);
    e.client_addr = Some(peer);
    e.expires_at = Some(session.deadline());
    if gw.audit.write(e).is_err() {
        drop(guard);
        return Err(refuse(
            gw,
            resource,
            login,
            peer,
            accepted,
            Refusal::AuditUnavailable,
        ));
    }
    m::handshake(accepted.elapsed());
    tracing::info!(session = %session.id, %peer, resource = name, login, grant = %grant.id, "session started");
    Ok(Admitted { guard, session })
}

fn refuse(
    gw: &Gateway,
    resource: &ResourceConfig,
    login: &str,
    peer: SocketAddr,
    accepted: Instant,
    why: Refusal,
) -> Refusal {
    let name = resource.name();
    let protocol = resource.protocol().as_str();
    if why == Refusal::NoGrant {
        let mut e = Event::new("session.denied");
        e.login = Some(login.to_string());
        e.resource = Some(name.to_string());
        e.protocol = Some(protocol);
        e.client_addr = Some(peer);
        e.outcome = Some("no_grant");
        let _ = gw.audit.write(e);
        m::connection(name, protocol, Outcome::Denied);
        tracing::info!(%peer, resource = name, login, "session denied: no active grant");
    } else {
        m::connection(name, protocol, Outcome::Error);
        tracing::error!(%peer, resource = name, login, "session refused: audit log unavailable");
    }
    m::handshake(accepted.elapsed());
    why
}
