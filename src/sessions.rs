//! The registry of live sessions and their kill switches.
//!
//! Invariants:
//! - A session is registered (and so counted in its grant's tally) *before*
//!   the final grant check of its handshake, and its enforcement clock waits
//!   on its grant's token as well as its own; so a revoke that races the
//!   connect either cancels the grant's token before the check (the check
//!   fails) or after it (the clock sees the cancelled token and ends the
//!   session).
//! - A session's own token (kill) is a child of the process's shutdown
//!   token, not of its grant's: cancelling a grant's token then wakes its
//!   sessions' clocks one batch after another as it goes, where a parent
//!   token first marks every child (thousands of records that may not have
//!   been touched for a while) before it wakes any.
//! - The end reason is set before the token is cancelled (first writer wins).
//! - [`SessionGuard`] is the only owner of a registry entry: dropping it, on
//!   any exit path, removes the entry, updates the gauges and wakes whoever
//!   waits for the sockets to be closed.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use dashmap::DashMap;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::Protocol;
use crate::ending::EndReason;
use crate::grants::{Grant, GrantId};
use crate::metrics as m;

/// A session's id (UUID v7).
pub type SessionId = Uuid;

/// One live session, shared between its task, the registry and the API.
#[derive(Debug)]
pub struct Session {
    /// Unique id.
    pub id: SessionId,
    /// The grant it lives on.
    pub grant: Arc<Grant>,
    /// The login the client presented (postgres/mysql) or empty (ssh/tcp).
    pub login: String,
    /// The resource's name.
    pub resource: String,
    /// The resource's protocol.
    pub protocol: Protocol,
    /// The client's address.
    pub client_addr: SocketAddr,
    /// Wall-clock start.
    pub started_at: SystemTime,
    started: Instant,
    /// The resource's `max_session`, in milliseconds (a reload may lower it).
    max_session_ms: AtomicU64,
    /// The resource's `idle_timeout` in milliseconds, 0 = none (a reload may change it).
    idle_ms: AtomicU64,
    /// Wakes the session's enforcer to re-read its limits and deadline.
    poke: Arc<tokio::sync::Notify>,
    /// Milliseconds after `started` of the last byte in either direction.
    last_active_ms: AtomicU64,
    /// Bytes from client to backend.
    pub bytes_up: AtomicU64,
    /// Bytes from backend to client.
    pub bytes_down: AtomicU64,
    token: CancellationToken,
    end: OnceLock<(EndReason, Instant)>,
    closed: CancellationToken,
}

impl Session {
    /// The session's own token (kill, shutdown); the task also selects on
    /// its grant's (revoke, expiry).
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// Whether the session has been cut: by its own token or its grant's.
    pub fn is_cut(&self) -> bool {
        self.token.is_cancelled() || self.grant.token().is_cancelled()
    }

    /// Record activity now (called by the relay for every chunk).
    pub fn touch(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_active_ms.store(ms, Ordering::Relaxed);
    }

    /// The instant of the last byte in either direction.
    pub fn last_active(&self) -> Instant {
        self.started + Duration::from_millis(self.last_active_ms.load(Ordering::Relaxed))
    }

    /// How long since the last byte.
    pub fn idle_for(&self) -> Duration {
        self.last_active().elapsed()
    }

    /// The session cap's deadline.
    pub fn max_session_deadline(&self) -> SystemTime {
        self.started_at + Duration::from_millis(self.max_session_ms.load(Ordering::Relaxed))
    }

    /// The effective deadline: the grant's or the session cap, whichever is first.
    pub fn deadline(&self) -> SystemTime {
        self.grant.expires_at().min(self.max_session_deadline())
    }

    /// The idle timeout in force.
    pub fn idle_timeout(&self) -> Option<Duration> {
        match self.idle_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }

    /// Apply (new) resource limits and wake the enforcer to use them.
    pub fn set_limits(&self, idle: Option<Duration>, max_session: Duration) {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        self.idle_ms.store(idle.map_or(0, ms), Ordering::Relaxed);
        self.max_session_ms
            .store(ms(max_session), Ordering::Relaxed);
        self.poke();
    }

    /// Wake the enforcer to re-read the deadline (the grant's moved).
    pub fn poke(&self) {
        self.poke.notify_one();
    }

    /// The notifier the enforcer waits on.
    pub fn poke_handle(&self) -> Arc<tokio::sync::Notify> {
        self.poke.clone()
    }

    /// End the session for `reason`, unless it already ends for another;
    /// `since` is when the cause happened (for the enforcement lag metric).
    pub fn end(&self, reason: EndReason, since: Instant) {
        let _ = self.end.set((reason, since));
        self.token.cancel();
    }

    /// Why the session ends: its own reason, else its grant's, else shutdown.
    pub fn end_reason(&self) -> Option<(EndReason, Option<Instant>)> {
        if let Some((r, at)) = self.end.get() {
            return Some((r.clone(), Some(*at)));
        }
        if let Some((r, at)) = self.grant.ended() {
            return Some((r.clone(), Some(*at)));
        }
        self.is_cut().then_some((EndReason::Shutdown, None))
    }

    /// Completes once the session's sockets are closed.
    pub async fn closed(&self) {
        self.closed.cancelled().await
    }
}

/// Everything needed to register a session.
pub struct NewSession {
    /// The grant the handshake found.
    pub grant: Arc<Grant>,
    /// Login the client presented.
    pub login: String,
    /// Resource name.
    pub resource: String,
    /// Resource protocol.
    pub protocol: Protocol,
    /// Client address.
    pub client_addr: SocketAddr,
    /// The resource's `max_session`.
    pub max_session: Duration,
}

/// All live sessions.
#[derive(Debug, Default)]
pub struct SessionRegistry {
    /// Parent of every session's own token (the process's shutdown).
    shutdown: CancellationToken,
    /// Every live session. Nothing is indexed by grant: a revoke visits no
    /// session (it counts and waits on the grant's `SessionTally`), and
    /// the one walk by grant (a reload that shortens grants) is rare.
    by_id: DashMap<SessionId, Arc<Session>>,
}

impl SessionRegistry {
    /// An empty registry whose sessions end only by kill, revoke or expiry.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty registry whose sessions also end when `shutdown` is
    /// cancelled.
    pub fn under(shutdown: CancellationToken) -> Self {
        Self {
            shutdown,
            ..Self::default()
        }
    }

    /// Register a session under its grant. The returned guard removes it.
    pub fn register(self: &Arc<Self>, new: NewSession) -> SessionGuard {
        let now = SystemTime::now();
        // Counted before its token is derived: see `SessionTally`.
        new.grant.sessions.opened();
        let session = Arc::new(Session {
            id: Uuid::now_v7(),
            token: self.shutdown.child_token(),
            grant: new.grant,
            login: new.login,
            resource: new.resource,
            protocol: new.protocol,
            client_addr: new.client_addr,
            started_at: now,
            started: Instant::now(),
            max_session_ms: AtomicU64::new(
                u64::try_from(new.max_session.as_millis()).unwrap_or(u64::MAX),
            ),
            idle_ms: AtomicU64::new(0),
            poke: Arc::new(tokio::sync::Notify::new()),
            last_active_ms: AtomicU64::new(0),
            bytes_up: AtomicU64::new(0),
            bytes_down: AtomicU64::new(0),
            end: OnceLock::new(),
            closed: CancellationToken::new(),
        });
        self.by_id.insert(session.id, session.clone());
        m::session_opened(&session.resource);
        SessionGuard {
            registry: self.clone(),
            session,
        }
    }

    /// A session by id.
    pub fn get(&self, id: &SessionId) -> Option<Arc<Session>> {
        self.by_id.get(id).map(|s| s.clone())
    }

    /// Every live session, oldest first.
    pub fn list(&self) -> Vec<Arc<Session>> {
        let mut v: Vec<_> = self.by_id.iter().map(|e| e.value().clone()).collect();
        v.sort_by_key(|s| s.id);
        v
    }

    /// Live sessions on one resource.
    pub fn on_resource(&self, resource: &str) -> Vec<Arc<Session>> {
        self.by_id
            .iter()
            .filter(|e| e.value().resource == resource)
            .map(|e| e.value().clone())
            .collect()
    }

    /// Live sessions on one grant. Walks every live session: for rare
    /// operations, never on a revoke's path.
    pub fn on_grant(&self, grant: &GrantId) -> Vec<Arc<Session>> {
        self.on_grants(&std::collections::HashSet::from([*grant]))
    }

    /// Live sessions on any of `grants`, in one walk over every live
    /// session (a reload that shortens many grants).
    pub fn on_grants(&self, grants: &std::collections::HashSet<GrantId>) -> Vec<Arc<Session>> {
        self.by_id
            .iter()
            .filter(|e| grants.contains(&e.value().grant.id))
            .map(|e| e.value().clone())
            .collect()
    }

    /// Number of live sessions.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether no session is live.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

/// Wait until every session in `sessions` has closed its sockets, at most
/// `limit`; returns how many did.
pub async fn wait_closed(sessions: &[Arc<Session>], limit: Duration) -> usize {
    let all = async {
        for s in sessions {
            s.closed().await;
        }
    };
    let _ = tokio::time::timeout(limit, all).await;
    sessions.iter().filter(|s| s.closed.is_cancelled()).count()
}

/// Owns a registry entry; dropping it unregisters the session.
#[derive(Debug)]
pub struct SessionGuard {
    registry: Arc<SessionRegistry>,
    session: Arc<Session>,
}

impl SessionGuard {
    /// The session.
    pub fn session(&self) -> &Arc<Session> {
        &self.session
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.registry.by_id.remove(&self.session.id);
        m::session_closed(&self.session.resource);
        self.session.closed.cancel();
        self.session.grant.sessions.closed();
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::grants::{GrantKind, GrantTable, NewGrant};

    /// A 60 s grant for alice on `pg` (shared with other modules' tests).
    pub(crate) fn grant(t: &GrantTable) -> Arc<Grant> {
        t.insert(NewGrant {
            principal: "alice".into(),
            resource: "pg".into(),
            logins: vec!["alice".into()],
            sources: vec![],
            duration: Duration::from_secs(60),
            reason: "r".into(),
            actor: "admin".into(),
            kind: GrantKind::BreakGlass,
        })
    }

    /// A session on `g` with a 10 s `max_session`.
    pub(crate) fn new_session(g: &Arc<Grant>) -> NewSession {
        NewSession {
            grant: g.clone(),
            login: "alice".into(),
            resource: "pg".into(),
            protocol: Protocol::Postgres,
            client_addr: "127.0.0.1:1".parse().unwrap(),
            max_session: Duration::from_secs(10),
        }
    }

    #[tokio::test]
    async fn revoking_the_grant_cancels_its_sessions_with_its_reason() {
        let t = GrantTable::new(CancellationToken::new());
        let reg = Arc::new(SessionRegistry::new());
        let g = grant(&t);
        let guard = reg.register(new_session(&g));
        let s = guard.session().clone();
        assert_eq!(reg.on_grant(&g.id).len(), 1);
        t.remove(
            &g.id,
            EndReason::Revoked {
                by: "carol".into(),
                reason: "x".into(),
            },
        );
        assert!(s.is_cut() && !s.token().is_cancelled());
        assert_eq!(s.end_reason().unwrap().0.label(), "revoked");
        // Closed only once the guard is dropped.
        let waiter = tokio::spawn({
            let s = s.clone();
            async move { wait_closed(&[s], Duration::from_secs(5)).await }
        });
        drop(guard);
        assert_eq!(waiter.await.unwrap(), 1);
        assert!(reg.is_empty());
    }

    #[tokio::test]
    async fn a_revoke_counts_the_sessions_live_at_the_cut_and_waits_for_them_to_close() {
        let t = GrantTable::new(CancellationToken::new());
        let reg = Arc::new(SessionRegistry::new());
        let g = grant(&t);
        let other = grant(&t);
        let mut held: Vec<_> = (0..3).map(|_| reg.register(new_session(&g))).collect();
        let elsewhere = reg.register(new_session(&other));
        assert_eq!((g.sessions.live(), other.sessions.live()), (3, 1));
        t.remove(&g.id, EndReason::Expired);
        assert_eq!(g.sessions.at_end(), Some(3));
        // Registered after the cut: born cancelled, not in the count, and
        // still waited for (it holds sockets until its guard drops).
        let late = reg.register(new_session(&g));
        assert!(late.session().is_cut());
        let waiter = tokio::spawn({
            let g = g.clone();
            async move { g.sessions.closed_since_end(Duration::from_secs(120)).await }
        });
        // Two of the three close; the waiter keeps waiting for the rest.
        held.truncate(1);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiter.is_finished(), "answered with sessions still open");
        // The counted ones are all closed; the late one still holds sockets.
        drop(held);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            !waiter.is_finished(),
            "answered before the late session closed"
        );
        drop(late);
        // Woken by the last close, long before its limit.
        let closed = tokio::time::timeout(Duration::from_secs(60), waiter)
            .await
            .expect("the last close did not wake the waiter");
        assert_eq!(closed.unwrap(), 3);
        assert_eq!(g.sessions.live(), 0);
        // The other grant's session is not counted or waited for.
        assert_eq!(other.sessions.live(), 1);
        drop(elsewhere);
        assert_eq!(other.sessions.live(), 0);
    }

    #[tokio::test]
    async fn a_session_that_never_closes_is_left_out_of_the_count_after_the_limit() {
        let t = GrantTable::new(CancellationToken::new());
        let reg = Arc::new(SessionRegistry::new());
        let g = grant(&t);
        let closes = reg.register(new_session(&g));
        let _stuck = reg.register(new_session(&g));
        t.remove(&g.id, EndReason::Expired);
        drop(closes);
        let started = Instant::now();
        let limit = Duration::from_millis(200);
        assert_eq!(g.sessions.closed_since_end(limit).await, 1);
        assert!(started.elapsed() >= limit, "answered before the limit");
    }

    #[test]
    fn a_grant_lists_its_own_sessions_and_forgets_closed_ones() {
        let t = GrantTable::new(CancellationToken::new());
        let reg = Arc::new(SessionRegistry::new());
        let (a, b) = (grant(&t), grant(&t));
        let a1 = reg.register(new_session(&a));
        let a2 = reg.register(new_session(&a));
        let b1 = reg.register(new_session(&b));
        let mut on_a: Vec<_> = reg.on_grant(&a.id).iter().map(|s| s.id).collect();
        on_a.sort();
        let mut want = vec![a1.session().id, a2.session().id];
        want.sort();
        assert_eq!(on_a, want);
        assert_eq!(reg.on_grant(&b.id)[0].id, b1.session().id);
        drop(a1);
        assert_eq!(reg.on_grant(&a.id)[0].id, a2.session().id);
        drop(a2);
        drop(b1);
        assert!(reg.on_grant(&a.id).is_empty() && reg.on_grant(&b.id).is_empty());
        assert!(reg.is_empty());
    }

    #[test]
    fn registering_on_a_revoked_grant_is_born_cut() {
        let t = GrantTable::new(CancellationToken::new());
        let reg = Arc::new(SessionRegistry::new());
        let g = grant(&t);
        t.remove(&g.id, EndReason::Expired);
        let guard = reg.register(new_session(&g));
        assert!(guard.session().is_cut());
    }

    #[test]
    fn session_reason_beats_grant_reason_and_deadline_is_capped() {
        let t = GrantTable::new(CancellationToken::new());
        let reg = Arc::new(SessionRegistry::new());
        let g = grant(&t);
        let guard = reg.register(new_session(&g));
        let s = guard.session();
        assert!(s.deadline() <= SystemTime::now() + Duration::from_secs(10));
        s.end(
            EndReason::Killed {
                by: "carol".into(),
                reason: String::new(),
            },
            Instant::now(),
        );
        t.remove(&g.id, EndReason::Expired);
        assert_eq!(s.end_reason().unwrap().0.label(), "killed");
    }
}
