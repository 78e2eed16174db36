//! The gateway's shared state and the operations that change access:
//! creating and revoking grants, killing sessions, recording session ends.
//!
//! Every operation here writes its audit event before it returns, so the
//! admin API acknowledges only what is on record. The root of the
//! cancellation tree (`shutdown`) lives here: process shutdown → grant, and
//! process shutdown → session; a session's clock waits on its grant's token
//! too.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use arc_swap::ArcSwap;

use crate::audit::{AuditLog, Event};
use crate::config::Config;
use crate::ending::EndReason;
use crate::grants::{Grant, GrantId, GrantTable, NewGrant};
use crate::journal::{Journal, JournalError, Record, Replay};
use crate::metrics as m;
use crate::notify::Notifier;
use crate::postgres::cancel::CancelKeys;
use crate::requests::RequestTable;
use crate::sessions::{wait_closed, Session, SessionId, SessionRegistry};

/// How long a revoke or kill waits for sockets to close before answering.
const CLOSE_WAIT: Duration = Duration::from_secs(10);

/// Why the gateway's state could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The audit log.
    #[error("cannot open the audit log in {dir}: {source}")]
    Audit {
        /// The state directory.
        dir: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The journal.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The connection worker threads could not be started.
    #[error("cannot start the connection worker threads: {0}")]
    Workers(std::io::Error),
}

/// Errors of the access operations, mapped to HTTP statuses by the API.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// The request names something that is not there.
    #[error("{0}")]
    NotFound(String),
    /// The request is malformed or not allowed by the configuration.
    #[error("{0}")]
    Invalid(String),
    /// The caller may not do this (policy, approver rules, ownership).
    #[error("{0}")]
    Forbidden(String),
    /// The target is not in a state that allows it.
    #[error("{0}")]
    Conflict(String),
    /// The audit log cannot be written; nothing was done (fail closed).
    #[error("audit log unavailable, nothing was changed: {0}")]
    Audit(#[from] std::io::Error),
    /// The journal cannot be written; nothing was done (fail closed).
    #[error("grant journal unavailable, nothing was changed: {0}")]
    Journal(std::io::Error),
}

/// Everything a connection or an API call needs.
#[derive(Debug)]
pub struct Gateway {
    /// The configuration in force; read it with [`Gateway::config`].
    pub config: ArcSwap<Config>,
    /// Grants.
    pub grants: Arc<GrantTable>,
    /// Live sessions.
    pub sessions: Arc<SessionRegistry>,
    /// Audit log.
    pub audit: AuditLog,
    /// Grant and request journal.
    pub journal: Arc<Journal>,
    /// Connection limits and the admin-API failed-token limit.
    pub limits: crate::limits::Limits,
    /// Per-resource listeners (started, stopped and rebound by reloads).
    pub listeners: crate::reload::Listeners,
    /// PostgreSQL cancel keys.
    pub cancel_keys: Arc<CancelKeys>,
    /// What jitgate has learned of each MySQL backend (version, capabilities).
    pub mysql_profiles: Arc<crate::mysql::BackendProfiles>,
    /// Root of the cancellation tree: cancelled on shutdown.
    pub shutdown: CancellationToken,
    /// Tracks every connection task, so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// The threads that run the connections.
    pub workers: crate::workers::Workers,
    /// Renders `/metrics`.
    pub prometheus: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// Access requests.
    pub requests: RequestTable,
    /// Webhook sinks.
    pub notifier: Notifier,
}

impl Gateway {
    /// Build the state for `config`; opens the audit log.
    pub fn new(config: Config) -> Result<Gateway, OpenError> {
        let dir = config.gateway.state_dir.clone();
        let shutdown = CancellationToken::new();
        // The recorder first, so the audit log's health gauge is recorded.
        let prometheus = m::install();
        let audit = AuditLog::open(&dir, config.gateway.audit_rotate_bytes).map_err(|source| {
            OpenError::Audit {
                dir: dir.display().to_string(),
                source,
            }
        })?;
        let (journal, replay) = Journal::open(&dir)?;
        let tracker = TaskTracker::new();
        let workers = crate::workers::Workers::start(
            config.gateway.worker_threads,
            config.gateway.busy_poll.0,
        )
        .map_err(OpenError::Workers)?;
        let notifier = Notifier::start(&config.notify, &tracker, &shutdown);
        let limits = crate::limits::Limits::new(&config.gateway);
        let gw = Gateway {
            requests: RequestTable::new(),
            notifier,
            grants: Arc::new(GrantTable::new(shutdown.clone())),
            sessions: Arc::new(SessionRegistry::under(shutdown.clone())),
            audit,
            journal: Arc::new(journal),
            listeners: Default::default(),
            limits,
            cancel_keys: Arc::new(CancelKeys::new()),
            mysql_profiles: Arc::default(),
            shutdown,
            tracker,
            workers,
            prometheus,
            config: ArcSwap::from_pointee(config),
        };
        gw.restore(replay)?;
        Ok(gw)
    }

    /// The configuration in force (a reload swaps it).
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// Rebuild the tables from the journal: grants that expired while
    /// jitgate was down are expired (and audited) now; then compact.
    fn restore(&self, replay: Replay) -> Result<(), OpenError> {
        let now = SystemTime::now();
        let (mut live, mut expired) = (0usize, 0usize);
        for rec in replay.grants {
            if rec.expires_at <= now {
                let mut e = Event::new("grant.expired");
                e.grant_id = Some(rec.id);
                e.principal = Some(rec.principal.clone());
                e.resource = Some(rec.resource.clone());
                e.expires_at = Some(rec.expires_at);
                e.reason = Some("expired while jitgate was not running".into());
                let _ = self.audit.write(e);
                expired += 1;
                continue;
            }
            self.grants.restore(rec);
            live += 1;
        }
        // The configuration may have changed while jitgate was down: what it
        // no longer allows ends now, as a reload would end it.
        let refused = crate::reload::end_refused_grants(self, &self.config(), now);
        live -= refused;
        let requests = replay.requests.len();
        for r in replay.requests {
            self.requests.restore(r);
        }
        m::grants_active(self.grants.len());
        self.compact().map_err(|source| {
            OpenError::Journal(JournalError::Io {
                path: self.journal.path().display().to_string(),
                source,
            })
        })?;
        tracing::info!(
            records = replay.records,
            grants = live,
            expired_while_down = expired,
            ended_by_the_configuration = refused,
            requests,
            "state restored from the journal"
        );
        Ok(())
    }

    /// Rewrite the journal as a snapshot of the live state: at start only,
    /// before anything else writes (see [`Journal::compact_in_place`]).
    fn compact(&self) -> std::io::Result<()> {
        // Finished requests are kept for a week of history.
        self.requests
            .forget_finished_before(SystemTime::now() - Duration::from_secs(7 * 86_400));
        let grants: Vec<_> = self.grants.list().iter().map(|g| g.record()).collect();
        self.journal.compact(&grants, &self.requests.list())
    }

    /// Create a grant (audited as `grant.created`).
    pub fn create_grant(&self, new: NewGrant) -> Result<Arc<Grant>, OpError> {
        let config = self.config();
        let resource = config
            .resource(&new.resource)
            .ok_or_else(|| OpError::NotFound(format!("no resource named {:?}", new.resource)))?;
        if new.duration.is_zero() {
            return Err(OpError::Invalid("duration must be greater than 0s".into()));
        }
        if new.duration > Duration::from_secs(366 * 24 * 3600) {
            return Err(OpError::Invalid("duration must be at most one year".into()));
        }
        if new.reason.trim().is_empty() && new.kind == crate::grants::GrantKind::BreakGlass {
            return Err(OpError::Invalid("a reason is required".into()));
        }
        let user = config.user(&new.principal).ok_or_else(|| {
            OpError::Invalid(format!(
                "no user named {:?} in the configuration",
                new.principal
            ))
        })?;
        let protocol = resource.protocol();
        if protocol.identifies_by_source() {
            // ssh/tcp streams carry no login: the source address is the identity.
            if !new.logins.is_empty() {
                return Err(OpError::Invalid(format!(
                    "{} resource {:?} is reached by source address, not by login: give --source CIDR instead of --login",
                    protocol.as_str(),
                    new.resource
                )));
            }
            if new.sources.is_empty() {
                return Err(OpError::Invalid(format!(
                    "a grant on {} resource {:?} needs at least one source network (--source CIDR)",
                    protocol.as_str(),
                    new.resource
                )));
            }
        } else if new.logins.is_empty() {
            return Err(OpError::Invalid(format!(
                "no login to grant: give --login or list logins for user {:?}",
                new.principal
            )));
        }
        if let Some(l) = new.logins.iter().find(|l| !user.logins.contains(l)) {
            return Err(OpError::Invalid(format!(
                "login {l:?} is not among the logins of user {:?}",
                new.principal
            )));
        }
        // The record is written before the grant can admit anyone.
        let mut e = Event::new("grant.created");
        e.principal = Some(new.principal.clone());
        e.resource = Some(new.resource.clone());
        e.actor = Some(new.actor.clone());
        e.reason = Some(new.reason.clone());
        e.duration_ms = Some(u64::try_from(new.duration.as_millis()).unwrap_or(u64::MAX));
        if !new.logins.is_empty() {
            e.login = Some(new.logins.join(","));
        }
        if !new.sources.is_empty() {
            let sources: Vec<String> = new.sources.iter().map(ToString::to_string).collect();
            e.sources = Some(sources.join(","));
        }
        let kind = new.kind;
        let rec = GrantTable::prepare(new);
        e.grant_id = Some(rec.id);
        e.expires_at = Some(rec.expires_at);
        e.outcome = Some(kind.as_str());
        e.request_id = kind.request_id();
        // Journal (durable), then audit, then the table: nothing admits
        // anyone before it is on record.
        self.journal
            .append(&Record::Grant(rec.clone()))
            .map_err(OpError::Journal)?;
        if let Err(err) = self.audit.write(e) {
            let _ = self.journal.append_end(rec.id);
            return Err(err.into());
        }
        let grant = self.grants.restore(rec);
        m::grants_active(self.grants.len());
        tracing::info!(grant = %grant.id, principal = %grant.principal, resource = %grant.resource, "grant created");
        Ok(grant)
    }

    /// Revoke a grant: end it, close every session on it, and answer with
    /// the number of sessions closed once their sockets are closed.
    pub async fn revoke_grant(
        &self,
        id: GrantId,
        by: &str,
        reason: &str,
    ) -> Result<usize, OpError> {
        let grant = self
            .grants
            .get(&id)
            .ok_or_else(|| OpError::NotFound(format!("no live grant {id}")))?;
        let mut e = Event::new("grant.revoked");
        e.grant_id = Some(id);
        e.principal = Some(grant.principal.clone());
        e.resource = Some(grant.resource.clone());
        e.actor = Some(by.to_string());
        e.reason = Some(reason.to_string());
        let reason_text = reason.to_string();
        let reason = EndReason::Revoked {
            by: by.to_string(),
            reason: reason.to_string(),
        };
        let Some(grant) = self.remove_access(e, id, reason).await else {
            // Expired or revoked between the lookup and now.
            return Err(OpError::NotFound(format!("no live grant {id}")));
        };
        self.notifier.send(
            "grant.revoked",
            &format!("{by} revoked {}'s access to {}: {reason_text}", grant.principal, grant.resource),
            serde_json::json!({"grant_id": grant.id, "principal": grant.principal, "resource": grant.resource, "actor": by}),
        );
        let closed = grant.sessions.closed_since_end(CLOSE_WAIT).await;
        tracing::info!(grant = %id, by, sessions = closed, "grant revoked");
        Ok(closed)
    }

    /// Journal the end of a grant (fsynced) on a blocking thread, logging
    /// (not failing) when it cannot be written.
    async fn journal_removal(&self, id: GrantId) {
        let journal = self.journal.clone();
        let r = tokio::task::spawn_blocking(move || journal.append_end(id))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        if let Err(err) = r {
            tracing::error!(grant = %id, error = %err, "grant ended in memory but not yet in the journal: written again every second until it is (a start before that would bring the grant back)");
        }
    }

    /// Run an operation that journals (an fsync before it returns) on a
    /// blocking thread, so the async workers keep relaying while the disk
    /// flushes: an fsync on a worker would stall every session it drives.
    pub async fn off_workers<T: Send + 'static>(
        self: &Arc<Self>,
        op: impl FnOnce(&Gateway) -> Result<T, OpError> + Send + 'static,
    ) -> Result<T, OpError> {
        let gw = self.clone();
        tokio::task::spawn_blocking(move || op(&gw))
            .await
            .unwrap_or_else(|e| Err(OpError::Journal(std::io::Error::other(e))))
    }

    /// End grant `id` now for `reason` (revoke, release): audit `e`, cut
    /// the sessions, then journal the end; returns the grant (wait for its
    /// sessions with `grant.sessions.closed_since_end`), or `None` if it
    /// was no longer live.
    ///
    /// Removing access never waits on storage: an outage (a full disk,
    /// perhaps filled on purpose) must not keep anyone connected. The audit
    /// record is written first (the kernel has it: no fsync), the sessions
    /// are cut, and only then is the journal synced, off the async workers.
    /// Nothing here visits the grant's sessions one by one: the cut is the
    /// grant token's cancellation, and the count is the grant's tally,
    /// taken as the grant ends.
    pub(crate) async fn remove_access(
        &self,
        e: Event,
        id: GrantId,
        reason: EndReason,
    ) -> Option<Arc<Grant>> {
        if let Err(err) = self.audit.write(e) {
            tracing::error!(grant = %id, error = %err, "access removed without its audit record (audit log unavailable)");
        }
        let grant = self.grants.remove(&id, reason)?;
        self.journal_removal(id).await;
        m::grants_active(self.grants.len());
        Some(grant)
    }

    /// Kill one session; answers once its sockets are closed.
    pub async fn kill_session(
        &self,
        id: SessionId,
        by: &str,
        reason: &str,
    ) -> Result<usize, OpError> {
        let s = self
            .sessions
            .get(&id)
            .ok_or_else(|| OpError::NotFound(format!("no live session {id}")))?;
        s.end(
            EndReason::Killed {
                by: by.to_string(),
                reason: reason.to_string(),
            },
            Instant::now(),
        );
        let closed = wait_closed(&[s], CLOSE_WAIT).await;
        tracing::info!(session = %id, by, "session killed");
        Ok(closed)
    }

    /// Audit and count a grant that expired.
    pub fn on_grant_expired(&self, g: &Grant) {
        // Best effort, not synced: a grant past its deadline is expired on
        // replay anyway, and an fsync per grant here would hold up the
        // expiry of every grant due at the same moment.
        let _ = self
            .journal
            .append_unsynced(&Record::GrantEnded { id: g.id });
        let mut e = Event::new("grant.expired");
        e.grant_id = Some(g.id);
        e.principal = Some(g.principal.clone());
        e.resource = Some(g.resource.clone());
        e.expires_at = Some(g.expires_at());
        let _ = self.audit.write(e);
        m::grants_active(self.grants.len());
        self.notifier.send(
            "grant.expired",
            &format!("{}'s access to {} expired", g.principal, g.resource),
            serde_json::json!({"grant_id": g.id, "principal": g.principal, "resource": g.resource}),
        );
        tracing::info!(grant = %g.id, principal = %g.principal, resource = %g.resource, "grant expired");
    }

    /// Record a session's end: audit `session.ended`, metrics.
    pub fn on_session_ended(
        &self,
        s: &Session,
        reason: &EndReason,
        since: Option<std::time::Instant>,
    ) {
        let mut e = Event::new("session.ended");
        e.session_id = Some(s.id);
        e.grant_id = Some(s.grant.id);
        e.principal = Some(s.grant.principal.clone());
        // SSH and TCP sessions have no login (docs/operations.md).
        e.login = (!s.login.is_empty()).then(|| s.login.clone());
        e.resource = Some(s.resource.clone());
        e.protocol = Some(s.protocol.as_str());
        e.client_addr = Some(s.client_addr);
        e.outcome = Some(reason.label());
        e.actor = reason.actor().map(str::to_string);
        e.reason = reason.detail().map(str::to_string);
        let lived = SystemTime::now()
            .duration_since(s.started_at)
            .unwrap_or_default();
        e.duration_ms = Some(u64::try_from(lived.as_millis()).unwrap_or(u64::MAX));
        e.bytes_up = Some(s.bytes_up.load(std::sync::atomic::Ordering::Relaxed));
        e.bytes_down = Some(s.bytes_down.load(std::sync::atomic::Ordering::Relaxed));
        // Counted before the record is written: whoever has read a
        // `session.ended` record finds the end in the metrics too.
        m::session_ended(&s.resource, reason.label());
        if reason.is_enforced() {
            if let Some(since) = since {
                m::enforcement_lag(since.elapsed());
            }
        }
        let _ = self.audit.write(e);
        tracing::info!(session = %s.id, resource = %s.resource, reason = reason.label(), "session ended");
    }
}
