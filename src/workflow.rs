//! The just-in-time workflow's operations: request, approve, deny, extend,
//! release, and the periodic sweep (request TTL, `grant.expiring`).
//!
//! Every operation evaluates the policy ([`crate::policy::evaluate`]) at the
//! time it runs, writes its audit record before it answers (fail closed),
//! and hands workflow events to the webhook notifier, which never blocks.
//! The grant clock starts at the final approval.

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use ipnet::IpNet;
use serde_json::json;
use uuid::Uuid;

use crate::audit::Event;
use crate::config::HumanDuration;
use crate::ending::EndReason;
use crate::gateway::{Gateway, OpError};
use crate::grants::{GrantId, GrantKind, NewGrant};
use crate::journal::Record;
use crate::policy;
use crate::requests::{Request, RequestError, RequestId, RequestKind, RequestState};

/// What a requester asks for.
#[derive(Debug, Clone)]
pub struct AccessRequest {
    /// The resource.
    pub resource: String,
    /// How long.
    pub duration: Duration,
    /// Why.
    pub reason: String,
    /// Logins (default: all the policy allows the requester).
    pub logins: Option<Vec<String>>,
    /// Source networks: required for ssh/tcp (the API defaults them to the
    /// request's address); a restriction for postgres/mysql.
    pub sources: Vec<IpNet>,
}

/// A created request and what the requester should be told about it.
#[derive(Debug, Clone)]
pub struct Created {
    /// The request.
    pub request: Request,
    /// E.g. "duration capped from 4h to 2h by policy dba-prod".
    pub notes: Vec<String>,
}

impl From<RequestError> for OpError {
    fn from(e: RequestError) -> Self {
        match e {
            RequestError::NotFound(_) => OpError::NotFound(e.to_string()),
            RequestError::Forbidden(m) => OpError::Forbidden(m),
            RequestError::Conflict(m) => OpError::Conflict(m),
        }
    }
}

fn ms(d: Duration) -> Option<u64> {
    Some(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn request_event(name: &'static str, r: &Request) -> Event {
    let mut e = Event::new(name);
    e.request_id = Some(r.id);
    e.principal = Some(r.principal.clone());
    e.resource = Some(r.resource.clone());
    e.grant_id = r.grant_id.or(match r.kind {
        RequestKind::Extension(g) => Some(g),
        RequestKind::Access => None,
    });
    e.duration_ms = ms(r.duration);
    e
}

impl Gateway {
    /// A requester asks for access; auto-approved policies grant at once.
    pub fn request_access(&self, principal: &str, ask: AccessRequest) -> Result<Created, OpError> {
        let now = SystemTime::now();
        let config = self.config();
        // 404, as for an admin's grant: a name that is not configured is
        // not a policy question.
        if config.resource(&ask.resource).is_none() {
            return Err(OpError::NotFound(format!(
                "no resource named {:?}",
                ask.resource
            )));
        }
        let decision = policy::evaluate(&config, principal, &ask.resource, now)
            .map_err(|n| OpError::Forbidden(n.explain.last().cloned().unwrap_or_default()))?;
        if ask.duration.is_zero() {
            return Err(OpError::Invalid("duration must be greater than 0s".into()));
        }
        if decision.require_reason && ask.reason.trim().is_empty() {
            return Err(OpError::Invalid(format!(
                "policy {:?} requires a reason (--reason)",
                decision.policy
            )));
        }
        let mut notes = Vec::new();
        let duration = ask.duration.min(decision.max_duration.0);
        if duration < ask.duration {
            notes.push(format!(
                "duration capped from {} to {} by policy {:?}",
                HumanDuration(ask.duration),
                decision.max_duration,
                decision.policy
            ));
        }
        let protocol = config.resource(&ask.resource).map(|r| r.protocol());
        let logins = match ask.logins {
            // ssh/tcp streams carry no login: the source address is the identity.
            _ if protocol.is_some_and(|p| p.identifies_by_source()) => {
                if ask.logins.as_ref().is_some_and(|l| !l.is_empty()) {
                    return Err(OpError::Invalid(format!(
                        "resource {:?} is reached by source address, not by login: give --source CIDR instead of --login",
                        ask.resource
                    )));
                }
                if ask.sources.is_empty() {
                    return Err(OpError::Invalid(format!(
                        "a request for resource {:?} needs at least one source network (--source CIDR)",
                        ask.resource
                    )));
                }
                Vec::new()
            }
            Some(l) => {
                if let Some(bad) = l.iter().find(|x| !decision.logins.contains(x)) {
                    return Err(OpError::Forbidden(format!(
                        "policy {:?} does not let {principal} use login {bad:?} (allowed: {})",
                        decision.policy,
                        decision.logins.join(", ")
                    )));
                }
                l
            }
            None => decision.logins.clone(),
        };
        // The sources (ssh/tcp: the identity) within the policy's networks;
        // a database request that names none gets the policy's own.
        let sources = match (&decision.sources, ask.sources.is_empty()) {
            (Some(nets), true) => nets.clone(),
            _ => ask.sources,
        };
        if let Some(why) = decision.refuses(principal, &logins, &sources) {
            return Err(OpError::Forbidden(why));
        }
        let req = Request {
            id: Uuid::now_v7(),
            kind: RequestKind::Access,
            principal: principal.to_string(),
            resource: ask.resource.clone(),
            logins,
            sources,
            requested: ask.duration,
            duration,
            reason: ask.reason,
            policy: decision.policy.clone(),
            needed: decision.approvals,
            approvers: decision.approvers,
            approvals: Vec::new(),
            state: RequestState::Pending,
            created_at: now,
            expires_at: now + config.gateway.request_ttl.0,
            denied_by: None,
            deny_reason: None,
            grant_id: None,
        };
        let (created, outcome) = self.submit(req)?;
        self.notifier.send(
            "request.created",
            &format!(
                "{} requests {} to {} for {}: {}{}",
                created.principal,
                if created.logins.is_empty() { String::new() } else { format!("login {}", created.logins.join(",")) },
                created.resource,
                HumanDuration(created.duration),
                created.reason,
                if outcome == "auto_approved" { " (auto-approved)" } else { "" }
            ),
            json!({"request_id": created.id, "principal": created.principal, "resource": created.resource, "state": outcome}),
        );
        Ok(Created {
            request: created,
            notes,
        })
    }

    /// Record a new request (audit, journal) and, when the policy
    /// auto-approves, act on it at once; returns it with its outcome label.
    fn submit(&self, req: Request) -> Result<(Request, &'static str), OpError> {
        let created = self.requests.create(req, |r| {
            let mut e = request_event("request.created", r);
            e.reason = Some(r.reason.clone());
            e.outcome = Some(if r.needed == 0 {
                "auto_approved"
            } else {
                "pending"
            });
            self.audit.write(e)?;
            if r.needed == 0 {
                r.state = RequestState::Approved;
                self.grant_for(r)?;
            }
            self.journal_request_or_withdraw(r)?;
            Ok::<(), OpError>(())
        })??;
        let outcome = if created.state == RequestState::Approved {
            "auto_approved"
        } else {
            "pending"
        };
        crate::metrics::request(outcome);
        self.update_pending_gauge();
        Ok((created, outcome))
    }

    /// Create (access) or extend (extension) the grant of an approved request.
    fn grant_for(&self, r: &mut Request) -> Result<(), OpError> {
        match r.kind {
            RequestKind::Access => {
                let g = self.create_grant(NewGrant {
                    principal: r.principal.clone(),
                    resource: r.resource.clone(),
                    logins: r.logins.clone(),
                    sources: r.sources.clone(),
                    duration: r.duration,
                    reason: r.reason.clone(),
                    actor: r
                        .approvals
                        .last()
                        .map_or_else(|| "policy".to_string(), |a| a.by.clone()),
                    kind: GrantKind::Request(r.id),
                })?;
                r.grant_id = Some(g.id);
            }
            RequestKind::Extension(grant_id) => {
                let grant = self
                    .grants
                    .get(&grant_id)
                    .ok_or_else(|| OpError::Conflict(format!("grant {grant_id} has ended")))?;
                let mut e = request_event("grant.extended", r);
                e.grant_id = Some(grant_id);
                e.expires_at = Some(grant.expires_at() + r.duration);
                e.reason = Some(r.reason.clone());
                e.actor = r.approvals.last().map(|a| a.by.clone());
                self.audit.write(e)?;
                self.journal
                    .append(&Record::GrantExtended {
                        id: grant_id,
                        expires_at: grant.expires_at() + r.duration,
                    })
                    .map_err(OpError::Journal)?;
                self.grants
                    .extend(&grant_id, r.duration)
                    .ok_or_else(|| OpError::Conflict(format!("grant {grant_id} has ended")))?;
                grant.expiring_notified.store(false, Ordering::Relaxed);
                r.grant_id = Some(grant_id);
            }
        }
        Ok(())
    }

    /// An approver approves; the last approval needed creates the grant.
    pub fn approve_request(
        &self,
        by: &str,
        id: RequestId,
        comment: &str,
    ) -> Result<Request, OpError> {
        let now = SystemTime::now();
        let config = self.config();
        let r = self.requests.approve(&id, by, comment, now, |r| {
            // The policy as it is now, not as it was when the request
            // was made: a reload since may have taken the principal,
            // the resource or a login out of it. Checked on every
            // approval (after who may approve), so a request the policy
            // no longer allows is never approved into a grant.
            let decision =
                policy::evaluate(&config, &r.principal, &r.resource, now).map_err(|n| {
                    OpError::Conflict(format!(
                        "the policy no longer allows this request: {}",
                        n.explain.last().cloned().unwrap_or_default()
                    ))
                })?;
            if let Some(why) = decision.refuses(&r.principal, &r.logins, &r.sources) {
                return Err(OpError::Conflict(format!(
                    "the policy no longer allows this request: {why}"
                )));
            }
            // More approvals needed now (a reload, a [[policy.when]] rule in
            // force at this hour) are needed of this request too, from the
            // approvers the policy names now as well: with only its old
            // ones it could wait, unapprovable, until it expired.
            if decision.approvals > r.needed {
                r.needed = decision.approvals;
                r.approvers.extend(decision.approvers.iter().cloned());
                if r.approvals.len() < r.needed as usize {
                    r.state = RequestState::Pending;
                }
            }
            // A max_duration tightened since the request caps it, as it
            // would cap a new one.
            if r.state == RequestState::Approved && r.duration > decision.max_duration.0 {
                r.duration = decision.max_duration.0;
            }
            let mut e = request_event("request.approved", r);
            e.actor = Some(by.to_string());
            e.reason = (!comment.is_empty()).then(|| comment.to_string());
            e.outcome = Some(if r.state == RequestState::Approved {
                "final"
            } else {
                "partial"
            });
            self.audit.write(e)?;
            let rest = (|| {
                if r.state == RequestState::Approved {
                    self.grant_for(r)?;
                }
                // Every approval, partial or final, is journaled before the
                // answer: after a restart the request is as approved as it
                // was, and cannot be approved into a second grant.
                self.journal_request_or_withdraw(r)
            })();
            if rest.is_err() {
                self.audit_undone(
                    "request.approved",
                    r,
                    by,
                    "the approval could not be recorded; the request is as it was",
                );
            }
            rest
        })??;
        if r.state == RequestState::Approved {
            crate::metrics::request("approved");
            self.update_pending_gauge();
        }
        self.notifier.send(
            "request.approved",
            &format!(
                "{by} approved {}'s request for {} ({}/{}){}",
                r.principal,
                r.resource,
                r.approvals.len(),
                r.needed,
                if r.state == RequestState::Approved { ": access granted" } else { "" }
            ),
            json!({"request_id": r.id, "principal": r.principal, "resource": r.resource, "actor": by, "state": r.state, "grant_id": r.grant_id}),
        );
        Ok(r)
    }

    /// An approver denies.
    pub fn deny_request(&self, by: &str, id: RequestId, reason: &str) -> Result<Request, OpError> {
        if reason.trim().is_empty() {
            return Err(OpError::Invalid(
                "a reason is required to deny (--reason)".into(),
            ));
        }
        // Audited and journaled under the request table's lock before the
        // answer; if either fails the request stays pending.
        let r = self
            .requests
            .deny(&id, by, reason, SystemTime::now(), |r| {
                let mut e = request_event("request.denied", r);
                e.actor = Some(by.to_string());
                e.reason = Some(reason.to_string());
                self.audit.write(e)?;
                let written = self.journal_request(r);
                if written.is_err() {
                    self.audit_undone(
                        "request.denied",
                        r,
                        by,
                        "the denial could not be journaled; the request is pending again",
                    );
                }
                written
            })??;
        crate::metrics::request("denied");
        self.update_pending_gauge();
        self.notifier.send(
            "request.denied",
            &format!("{by} denied {}'s request for {}: {reason}", r.principal, r.resource),
            json!({"request_id": r.id, "principal": r.principal, "resource": r.resource, "actor": by, "reason": reason}),
        );
        Ok(r)
    }

    /// The holder asks for more time on a live grant; the same policy decides.
    pub fn extend_grant(
        &self,
        principal: &str,
        grant_id: GrantId,
        by: Duration,
        reason: &str,
    ) -> Result<Created, OpError> {
        let grant = self
            .grants
            .get(&grant_id)
            .ok_or_else(|| OpError::NotFound(format!("no live grant {grant_id}")))?;
        if grant.principal != principal {
            return Err(OpError::Forbidden(
                "only the grant's holder can ask to extend it".into(),
            ));
        }
        if by.is_zero() {
            return Err(OpError::Invalid("--by must be greater than 0s".into()));
        }
        let now = SystemTime::now();
        let decision = policy::evaluate(&self.config(), principal, &grant.resource, now)
            .map_err(|n| OpError::Forbidden(n.explain.last().cloned().unwrap_or_default()))?;
        // The policy decides the extension as it would a new request: a
        // grant that carries a login it does not allow (a break-glass grant
        // for a wider login, a policy narrowed since) is not prolonged by it.
        if let Some(why) = decision.refuses(principal, &grant.logins, &grant.sources) {
            return Err(OpError::Forbidden(format!("{why}; ask for a new grant")));
        }
        if decision.require_reason && reason.trim().is_empty() {
            return Err(OpError::Invalid(format!(
                "policy {:?} requires a reason (--reason)",
                decision.policy
            )));
        }
        let mut notes = Vec::new();
        let duration = by.min(decision.max_duration.0);
        if duration < by {
            notes.push(format!(
                "extension capped from {} to {} by policy {:?}",
                HumanDuration(by),
                decision.max_duration,
                decision.policy
            ));
        }
        let req = Request {
            id: Uuid::now_v7(),
            kind: RequestKind::Extension(grant_id),
            principal: principal.to_string(),
            resource: grant.resource.clone(),
            logins: grant.logins.clone(),
            sources: grant.sources.clone(),
            requested: by,
            duration,
            reason: reason.to_string(),
            policy: decision.policy.clone(),
            needed: decision.approvals,
            approvers: decision.approvers,
            approvals: Vec::new(),
            state: RequestState::Pending,
            created_at: now,
            expires_at: now + self.config().gateway.request_ttl.0,
            denied_by: None,
            deny_reason: None,
            grant_id: None,
        };
        let (created, outcome) = self.submit(req)?;
        self.notifier.send(
            "request.created",
            &format!(
                "{} asks to extend access to {} by {}: {}",
                created.principal,
                created.resource,
                HumanDuration(created.duration),
                created.reason
            ),
            json!({"request_id": created.id, "principal": created.principal, "resource": created.resource, "grant_id": grant_id, "state": outcome}),
        );
        Ok(Created {
            request: created,
            notes,
        })
    }

    /// The holder ends their own access now; answers once the sessions are closed.
    pub async fn release_grant(
        &self,
        principal: &str,
        grant_id: GrantId,
    ) -> Result<usize, OpError> {
        let grant = self
            .grants
            .get(&grant_id)
            .ok_or_else(|| OpError::NotFound(format!("no live grant {grant_id}")))?;
        if grant.principal != principal {
            return Err(OpError::Forbidden(
                "only the grant's holder can release it".into(),
            ));
        }
        let mut e = Event::new("grant.released");
        e.grant_id = Some(grant_id);
        e.principal = Some(grant.principal.clone());
        e.resource = Some(grant.resource.clone());
        e.actor = Some(principal.to_string());
        let reason = EndReason::Revoked {
            by: principal.to_string(),
            reason: "released by its holder".into(),
        };
        let grant = self
            .remove_access(e, grant_id, reason)
            .await
            .ok_or_else(|| OpError::NotFound(format!("no live grant {grant_id}")))?;
        Ok(grant
            .sessions
            .closed_since_end(Duration::from_secs(10))
            .await)
    }

    /// Journal a request whose grant may just have been created. If the
    /// record cannot be written the caller undoes the request and the API
    /// answers that nothing changed, so a grant made for it is withdrawn
    /// too: otherwise it would stay live, and a retry would make another.
    fn journal_request_or_withdraw(&self, r: &Request) -> Result<(), OpError> {
        let written = self.journal_request(r);
        if written.is_err() && r.state == RequestState::Approved {
            if let RequestKind::Extension(id) = r.kind {
                self.undo_extension(r, id);
            } else if let Some(id) = r.grant_id {
                crate::reload::withdraw_grant(
                    self,
                    &id,
                    "jitgate",
                    "its request could not be journaled; nothing was granted".into(),
                );
            }
        }
        written
    }

    /// Take back the time an extension just added to grant `id` (its
    /// request could not be journaled, so the API answers that nothing
    /// changed): the old deadline, journaled and audited, and the grant's
    /// sessions told to re-read it.
    fn undo_extension(&self, r: &Request, id: GrantId) {
        let Some(grant) = self.grants.get(&id) else {
            return;
        };
        let back = grant
            .expires_at()
            .checked_sub(r.duration)
            .unwrap_or_else(SystemTime::now);
        let mut e = request_event("grant.extended", r);
        e.grant_id = Some(id);
        e.expires_at = Some(back);
        e.actor = Some("jitgate".into());
        e.outcome = Some("undone");
        e.reason = Some("undone: its request could not be journaled".into());
        let _ = self.audit.write(e);
        // Owed if the disk refuses it too: the journal must not keep an
        // extension the API said was never made.
        let _ = self.journal.append_owed(Record::GrantExtended {
            id,
            expires_at: back,
        });
        if self.grants.set_deadline(&id, back) {
            for s in self.sessions.on_grant(&id) {
                s.poke();
            }
        }
    }

    /// A review already in the audit log (`event` by `by`) was taken back
    /// because it could not be recorded: a second record of it, `outcome`
    /// undone, says so.
    fn audit_undone(&self, event: &'static str, r: &Request, by: &str, why: &str) {
        let mut u = request_event(event, r);
        u.actor = Some(by.to_string());
        u.outcome = Some("undone");
        u.reason = Some(why.into());
        let _ = self.audit.write(u);
    }

    fn journal_request(&self, r: &Request) -> Result<(), OpError> {
        self.journal
            .append(&Record::Request(Box::new(r.clone())))
            .map_err(OpError::Journal)
    }

    fn update_pending_gauge(&self) {
        crate::metrics::requests_pending(self.requests.pending());
    }

    /// Periodic housekeeping: expire pending requests past their TTL and
    /// announce grants that end within the longest expiry warning.
    pub fn sweep(&self, now: SystemTime) {
        self.limits.forget_idle();
        // Ends a failing disk could not take, written again.
        self.journal.retry_unwritten();
        if self.journal.wants_compaction() {
            // Finished requests are kept for a week of history.
            let week_ago = now
                .checked_sub(Duration::from_secs(7 * 86_400))
                .unwrap_or(std::time::UNIX_EPOCH);
            self.requests.forget_finished_before(week_ago);
            if let Err(e) = self.journal.compact_in_place(week_ago) {
                tracing::error!(error = %e, "journal compaction failed; will retry");
            }
        }
        let expired = self.requests.expire_due(now);
        for r in &expired {
            let e = request_event("request.expired", r);
            let _ = self.audit.write(e);
            let _ = self.journal_request(r);
            crate::metrics::request("expired");
            self.notifier.send(
                "request.expired",
                &format!(
                    "{}'s request for {} expired without enough approvals",
                    r.principal, r.resource
                ),
                json!({"request_id": r.id, "principal": r.principal, "resource": r.resource}),
            );
        }
        if !expired.is_empty() {
            self.update_pending_gauge();
        }
        let lead = self
            .config()
            .gateway
            .expiry_warnings
            .iter()
            .map(|d| d.0)
            .max()
            .unwrap_or(Duration::from_secs(300));
        for g in self.grants.list() {
            let left = g.expires_at().duration_since(now).unwrap_or(Duration::ZERO);
            if left <= lead && !g.expiring_notified.swap(true, Ordering::Relaxed) {
                self.notifier.send(
                    "grant.expiring",
                    &format!(
                        "{}'s access to {} ends in {}; extend with: jitgate extend {} --by 30m",
                        g.principal,
                        g.resource,
                        HumanDuration(Duration::from_secs(left.as_secs())),
                        g.id
                    ),
                    json!({"grant_id": g.id, "principal": g.principal, "resource": g.resource, "expires_at": crate::timefmt::rfc3339(g.expires_at())}),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A gateway with its state in `dir`: resource pg, alice (requester),
    /// carol (approver), and a policy for alice needing `approvals`.
    fn gateway(dir: &std::path::Path, approvals: u32) -> Gateway {
        let text = format!(
            r#"
[gateway]
state_dir = "{}"
admin_listen = "127.0.0.1:0"

[[resource]]
name = "pg"
protocol = "postgres"
listen = "127.0.0.1:0"
backend = "127.0.0.1:5432"

[[user]]
name = "alice"
token_sha256 = "{}"
roles = ["requester"]
logins = ["alice"]

[[user]]
name = "carol"
token_sha256 = "{}"
roles = ["approver"]

[[policy]]
name = "p"
principals = ["alice"]
resources = ["pg"]
max_duration = "1h"
approvals = {approvals}
approvers = ["carol"]
"#,
            dir.display(),
            "a".repeat(64),
            "c".repeat(64)
        );
        Gateway::new(crate::config::parse_str(&text, "t.toml").unwrap()).unwrap()
    }

    /// alice asks for pg for ten minutes.
    fn ask() -> AccessRequest {
        AccessRequest {
            resource: "pg".into(),
            duration: Duration::from_secs(600),
            reason: "x".into(),
            logins: None,
            sources: vec![],
        }
    }

    #[tokio::test]
    async fn a_grant_whose_request_cannot_be_journaled_is_withdrawn() {
        let dir = tempfile::tempdir().unwrap();
        let gw = gateway(dir.path(), 0);
        // The grant's record goes through; the request's, just after, does not.
        gw.journal.fail_request_writes.store(true, Ordering::SeqCst);
        let r = gw.request_access("alice", ask());
        assert!(matches!(r, Err(OpError::Journal(_))), "{r:?}");
        // "Nothing was changed": no request, and no grant left behind.
        assert!(gw.requests.list().is_empty());
        assert!(gw.grants.list().is_empty(), "the grant was withdrawn");
        let audit = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
        assert!(audit.contains("\"grant.created\""), "{audit}");
        assert!(
            audit.contains("\"grant.revoked\"")
                && audit.contains("its request could not be journaled"),
            "{audit}"
        );
        // Nor does it come back from the journal.
        gw.journal
            .fail_request_writes
            .store(false, Ordering::SeqCst);
        let (_, replay) = crate::journal::Journal::open(dir.path()).unwrap();
        assert!(replay.grants.is_empty(), "{:?}", replay.grants);
        // With the journal working again, the same request is granted once.
        let made = gw.request_access("alice", ask()).unwrap();
        assert_eq!(gw.grants.list().len(), 1);

        // An auto-approved extension whose request record fails: the grant
        // keeps its deadline, in memory and in the journal.
        let id = made.request.grant_id.unwrap();
        let deadline = gw.grants.get(&id).unwrap().expires_at();
        gw.journal.fail_request_writes.store(true, Ordering::SeqCst);
        let r = gw.extend_grant("alice", id, Duration::from_secs(300), "more");
        assert!(matches!(r, Err(OpError::Journal(_))), "{r:?}");
        assert_eq!(gw.grants.get(&id).unwrap().expires_at(), deadline);
        gw.journal
            .fail_request_writes
            .store(false, Ordering::SeqCst);
        let (_, replay) = crate::journal::Journal::open(dir.path()).unwrap();
        let ms = |t: SystemTime| t.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
        assert_eq!(ms(replay.grants[0].expires_at), ms(deadline));
        let audit = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
        assert!(
            audit.contains("undone: its request could not be journaled"),
            "{audit}"
        );
    }

    #[tokio::test]
    async fn a_denial_that_cannot_be_journaled_is_undone_in_the_audit_log_too() {
        let dir = tempfile::tempdir().unwrap();
        let gw = gateway(dir.path(), 1);
        let id = gw.request_access("alice", ask()).unwrap().request.id;
        gw.journal.fail_request_writes.store(true, Ordering::SeqCst);
        let r = gw.deny_request("carol", id, "no");
        assert!(matches!(r, Err(OpError::Journal(_))), "{r:?}");
        assert_eq!(gw.requests.get(&id).unwrap().state, RequestState::Pending);
        let audit = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
        let denials: Vec<&str> = audit
            .lines()
            .filter(|l| l.contains("\"request.denied\""))
            .collect();
        assert_eq!(denials.len(), 2, "{audit}");
        assert!(denials[1].contains("\"outcome\":\"undone\""), "{audit}");
    }
}
