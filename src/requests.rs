//! Access requests and their review: the state machine of the
//! just-in-time workflow.
//!
//! ```text
//!            approve (n < needed)
//!              ┌────┐
//!              ▼    │
//! create ──► pending ──approve (n = needed)──► approved ──► grant created
//!   │          │  │
//!   │          │  └──deny──► denied
//!   │          └──request_ttl passes──► expired
//!   └──(needed = 0)──► approved at once (auto-approve)
//! ```
//!
//! Invariants: transitions happen under one lock, so two approvals racing
//! for the last slot create one grant; the requester never approves their
//! own request; N approvals come from N distinct approvers from the
//! snapshot of the policy's approvers taken at creation; at most one
//! pending request per principal and resource (and per grant for
//! extensions).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use ipnet::IpNet;
use uuid::Uuid;

/// A request's id (UUID v7).
pub type RequestId = Uuid;

/// Where a request is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RequestState {
    /// Waiting for approvals.
    Pending,
    /// Fully approved; a grant was created (or extended).
    Approved,
    /// Denied by an approver.
    Denied,
    /// Not fully approved within `request_ttl`.
    Expired,
}

/// What is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestKind {
    /// A new grant.
    Access,
    /// More time on an existing grant.
    Extension(Uuid),
}

/// One approval.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Approval {
    /// Who approved.
    pub by: String,
    /// When.
    #[serde(with = "crate::timefmt::unix_ms")]
    pub at: SystemTime,
    /// Their comment.
    pub comment: String,
}

/// One access request. Serialized as is into the journal.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Request {
    /// Id.
    pub id: RequestId,
    /// New access or extension.
    pub kind: RequestKind,
    /// Who asks.
    pub principal: String,
    /// For which resource.
    pub resource: String,
    /// Logins the grant will carry.
    pub logins: Vec<String>,
    /// Source networks the grant will carry.
    pub sources: Vec<IpNet>,
    /// The duration asked for.
    #[serde(with = "crate::timefmt::duration_ms")]
    pub requested: Duration,
    /// The duration that will be granted (capped by policy).
    #[serde(with = "crate::timefmt::duration_ms")]
    pub duration: Duration,
    /// Why.
    pub reason: String,
    /// The policy that applied.
    pub policy: String,
    /// Approvals needed.
    pub needed: u32,
    /// Who may approve (snapshot at creation).
    pub approvers: BTreeSet<String>,
    /// Approvals so far.
    pub approvals: Vec<Approval>,
    /// State.
    pub state: RequestState,
    /// Creation time.
    #[serde(with = "crate::timefmt::unix_ms")]
    pub created_at: SystemTime,
    /// A pending request expires then.
    #[serde(with = "crate::timefmt::unix_ms")]
    pub expires_at: SystemTime,
    /// Who denied it.
    pub denied_by: Option<String>,
    /// Their reason.
    pub deny_reason: Option<String>,
    /// The grant created (or extended) on approval.
    pub grant_id: Option<Uuid>,
}

/// Why a transition was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// No such request.
    #[error("no request {0}")]
    NotFound(RequestId),
    /// The caller may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// The request is not in a state that allows it.
    #[error("{0}")]
    Conflict(String),
}

/// All requests, in memory.
#[derive(Debug, Default)]
pub struct RequestTable {
    inner: Mutex<BTreeMap<RequestId, Request>>,
}

impl RequestTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<RequestId, Request>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Add a new request, unless an equivalent one is pending. `commit` runs
    /// under the lock with the request (audit, grant for auto-approval) and
    /// may fill in `state`/`grant_id`; if it fails the request is not kept.
    pub fn create<E>(
        &self,
        req: Request,
        commit: impl FnOnce(&mut Request) -> Result<(), E>,
    ) -> Result<Result<Request, E>, RequestError> {
        let mut map = self.lock();
        let dup = map.values().find(|r| {
            r.state == RequestState::Pending
                && r.principal == req.principal
                && r.kind == req.kind
                && (r.resource == req.resource || matches!(r.kind, RequestKind::Extension(_)))
        });
        if let Some(d) = dup {
            return Err(RequestError::Conflict(format!(
                "{} already has a pending request {} for {}",
                req.principal, d.id, d.resource
            )));
        }
        let mut req = req;
        match commit(&mut req) {
            Ok(()) => {
                map.insert(req.id, req.clone());
                Ok(Ok(req))
            }
            Err(e) => Ok(Err(e)),
        }
    }

    /// A request by id.
    pub fn get(&self, id: &RequestId) -> Option<Request> {
        self.lock().get(id).cloned()
    }

    /// Every request, oldest first.
    pub fn list(&self) -> Vec<Request> {
        self.lock().values().cloned().collect()
    }

    /// Pending requests.
    pub fn pending(&self) -> usize {
        self.lock()
            .values()
            .filter(|r| r.state == RequestState::Pending)
            .count()
    }

    fn pending_mut<'a>(
        map: &'a mut BTreeMap<RequestId, Request>,
        id: &RequestId,
        now: SystemTime,
    ) -> Result<&'a mut Request, RequestError> {
        let r = map.get_mut(id).ok_or(RequestError::NotFound(*id))?;
        if r.state == RequestState::Pending && now >= r.expires_at {
            // Expired but not yet swept: the sweep reports it.
            return Err(RequestError::Conflict(format!("request {id} has expired")));
        }
        if r.state != RequestState::Pending {
            let state = format!("{:?}", r.state).to_lowercase();
            return Err(RequestError::Conflict(format!(
                "request {id} is {state}, not pending"
            )));
        }
        Ok(r)
    }

    /// Record `by`'s approval. `record` runs under the lock with the
    /// updated request (state `Approved` when this was the last approval
    /// needed): it audits, and on the last approval creates or extends the
    /// grant. If it fails, the approval is undone.
    pub fn approve<E>(
        &self,
        id: &RequestId,
        by: &str,
        comment: &str,
        now: SystemTime,
        record: impl FnOnce(&mut Request) -> Result<(), E>,
    ) -> Result<Result<Request, E>, RequestError> {
        let mut map = self.lock();
        let r = Self::pending_mut(&mut map, id, now)?;
        if r.principal == by {
            return Err(RequestError::Forbidden(
                "you cannot approve your own request".into(),
            ));
        }
        if !r.approvers.contains(by) {
            return Err(RequestError::Forbidden(format!(
                "{by} is not an approver of policy {:?} (approvers: {})",
                r.policy,
                r.approvers.iter().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
        if r.approvals.iter().any(|a| a.by == by) {
            return Err(RequestError::Conflict(format!(
                "{by} has already approved request {id}"
            )));
        }
        // Whatever `record` changes (state, the grant it made, a capped
        // duration, a raised count of approvals) is undone with the approval.
        let before = r.clone();
        r.approvals.push(Approval {
            by: by.to_string(),
            at: now,
            comment: comment.to_string(),
        });
        if r.approvals.len() >= r.needed as usize {
            r.state = RequestState::Approved;
        }
        if let Err(e) = record(r) {
            *r = before;
            return Ok(Err(e));
        }
        Ok(Ok(r.clone()))
    }

    /// Deny a pending request.
    ///
    /// `record` runs under the lock with the denied request: it audits and
    /// journals. If it fails, the request is pending again, as if the
    /// denial had never been asked for.
    pub fn deny<E>(
        &self,
        id: &RequestId,
        by: &str,
        reason: &str,
        now: SystemTime,
        record: impl FnOnce(&Request) -> Result<(), E>,
    ) -> Result<Result<Request, E>, RequestError> {
        let mut map = self.lock();
        let r = Self::pending_mut(&mut map, id, now)?;
        if r.principal == by {
            return Err(RequestError::Forbidden(
                "you cannot review your own request (withdraw it by letting it expire)".into(),
            ));
        }
        if !r.approvers.contains(by) {
            return Err(RequestError::Forbidden(format!(
                "{by} is not an approver of policy {:?}",
                r.policy
            )));
        }
        let before = r.clone();
        r.state = RequestState::Denied;
        r.denied_by = Some(by.to_string());
        r.deny_reason = Some(reason.to_string());
        if let Err(e) = record(r) {
            *r = before;
            return Ok(Err(e));
        }
        Ok(Ok(r.clone()))
    }

    /// Put back a request read from the journal (replaces one with the same id).
    pub fn restore(&self, r: Request) {
        self.lock().insert(r.id, r);
    }

    /// Drop finished requests that ended before `before` (journal compaction
    /// keeps the history bounded).
    pub fn forget_finished_before(&self, before: SystemTime) {
        self.lock().retain(|_, r| {
            r.state == RequestState::Pending || r.expires_at >= before || r.created_at >= before
        });
    }

    /// Expire every pending request whose time is up; returns them.
    pub fn expire_due(&self, now: SystemTime) -> Vec<Request> {
        let mut map = self.lock();
        let mut out = Vec::new();
        for r in map.values_mut() {
            if r.state == RequestState::Pending && now >= r.expires_at {
                r.state = RequestState::Expired;
                out.push(r.clone());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(needed: u32) -> Request {
        let now = SystemTime::now();
        Request {
            id: Uuid::now_v7(),
            kind: RequestKind::Access,
            principal: "alice".into(),
            resource: "pg".into(),
            logins: vec!["postgres".into()],
            sources: vec![],
            requested: Duration::from_secs(3600),
            duration: Duration::from_secs(1800),
            reason: "r".into(),
            policy: "p".into(),
            needed,
            approvers: ["alice", "carol", "dave"]
                .into_iter()
                .map(String::from)
                .collect(),
            approvals: vec![],
            state: RequestState::Pending,
            created_at: now,
            expires_at: now + Duration::from_secs(3600),
            denied_by: None,
            deny_reason: None,
            grant_id: None,
        }
    }

    fn ok(_: &mut Request) -> Result<(), ()> {
        Ok(())
    }

    #[test]
    fn two_approvals_need_two_distinct_approvers_and_never_the_requester() {
        let t = RequestTable::new();
        let r = t.create(req(2), ok).unwrap().unwrap();
        let now = SystemTime::now();
        assert!(matches!(
            t.approve(&r.id, "alice", "", now, ok),
            Err(RequestError::Forbidden(_))
        ));
        assert!(matches!(
            t.approve(&r.id, "mallory", "", now, ok),
            Err(RequestError::Forbidden(_))
        ));
        let one = t.approve(&r.id, "carol", "ok", now, ok).unwrap().unwrap();
        assert_eq!(one.state, RequestState::Pending);
        assert!(matches!(
            t.approve(&r.id, "carol", "", now, ok),
            Err(RequestError::Conflict(_))
        ));
        let mut finals = 0;
        let two = t
            .approve(&r.id, "dave", "ok", now, |r| {
                finals += usize::from(r.state == RequestState::Approved);
                Ok::<(), ()>(())
            })
            .unwrap()
            .unwrap();
        assert_eq!(two.state, RequestState::Approved);
        assert_eq!(finals, 1);
        assert!(matches!(
            t.deny(&r.id, "carol", "x", now, |_| Ok::<(), ()>(())),
            Err(RequestError::Conflict(_))
        ));
    }

    #[test]
    fn a_failed_final_step_leaves_the_request_pending() {
        let t = RequestTable::new();
        let r = t.create(req(1), ok).unwrap().unwrap();
        // The final step changed the request (a grant made, the duration
        // capped, more approvals asked) before it failed.
        let failed = t
            .approve(&r.id, "carol", "", SystemTime::now(), |r| {
                r.grant_id = Some(Uuid::now_v7());
                r.duration = Duration::from_secs(60);
                r.needed = 3;
                Err("audit down")
            })
            .unwrap();
        assert_eq!(failed.unwrap_err(), "audit down");
        let again = t.get(&r.id).unwrap();
        assert_eq!(again.state, RequestState::Pending);
        assert!(again.approvals.is_empty());
        assert_eq!(
            (again.grant_id, again.duration, again.needed),
            (r.grant_id, r.duration, r.needed),
            "all of it undone"
        );
    }

    #[test]
    fn a_denial_that_cannot_be_recorded_leaves_the_request_pending() {
        let t = RequestTable::new();
        let r = t.create(req(1), ok).unwrap().unwrap();
        let mut seen = None;
        let failed = t
            .deny(&r.id, "carol", "no", SystemTime::now(), |r| {
                seen = Some(r.state);
                Err("audit down")
            })
            .unwrap();
        assert_eq!(failed.unwrap_err(), "audit down");
        // The record saw the denial it was asked to write...
        assert_eq!(seen, Some(RequestState::Denied));
        // ...and the request is as it was, still open to a review.
        let again = t.get(&r.id).unwrap();
        assert_eq!(again.state, RequestState::Pending);
        assert_eq!((again.denied_by, again.deny_reason), (None, None));
        let denied = t
            .deny(
                &r.id,
                "carol",
                "no",
                SystemTime::now(),
                |_| Ok::<(), ()>(()),
            )
            .unwrap()
            .unwrap();
        assert_eq!(denied.state, RequestState::Denied);
        assert_eq!(denied.denied_by.as_deref(), Some("carol"));
    }

    #[test]
    fn one_pending_request_per_principal_and_resource_and_ttl_expiry() {
        let t = RequestTable::new();
        let r = t.create(req(1), ok).unwrap().unwrap();
        assert!(matches!(
            t.create(req(1), ok),
            Err(RequestError::Conflict(_))
        ));
        let later = r.expires_at + Duration::from_secs(1);
        assert!(matches!(
            t.approve(&r.id, "carol", "", later, ok),
            Err(RequestError::Conflict(_))
        ));
        let gone = t.expire_due(later);
        assert_eq!(gone.len(), 1);
        assert_eq!(t.get(&r.id).unwrap().state, RequestState::Expired);
        // Once expired, a new request may be made.
        assert!(t.create(req(1), ok).unwrap().is_ok());
        assert_eq!(t.pending(), 1);
    }
}
