//! The grant table: who may reach which resource, as which login, until when.
//!
//! Invariants:
//! - Admission never scans the whole table: a login (postgres, mysql) is an
//!   O(1) lookup by `(resource, login)` through `index`; a source address
//!   (ssh, tcp) is looked up in O(1) among host grants (a /32 or /128
//!   source) through `by_host`, and among that resource's grants for wider
//!   networks through `by_source`, so ten thousand one-address grants on a
//!   resource cost no more per connection than one.
//! - A grant with `sources` admits only peers inside one of them; a
//!   source-bound grant with no sources admits no one (fail closed).
//! - A grant in the table is *live* until its deadline, its revocation, or
//!   process shutdown. Every session that lives on it waits on its
//!   [`CancellationToken`] (the sessions' own tokens are not its children),
//!   so cancelling it ends them all; the reason is set (first writer wins)
//!   *before* the token is cancelled.
//! - Grants expire on their own: [`GrantTable::run_expiry`] removes each one
//!   at its deadline with no traffic needed to notice.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use dashmap::DashMap;
use ipnet::IpNet;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::ending::EndReason;

/// A grant's id: a UUID v7, so ids sort by creation time.
pub type GrantId = Uuid;

/// How a grant came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantKind {
    /// An admin's direct grant, outside the request workflow.
    BreakGlass,
    /// The outcome of an approved (or auto-approved) request.
    Request(Uuid),
}

impl GrantKind {
    /// `break_glass` or `request`, for the API and the audit log.
    pub fn as_str(self) -> &'static str {
        match self {
            GrantKind::BreakGlass => "break_glass",
            GrantKind::Request(_) => "request",
        }
    }

    /// The request behind the grant, if any.
    pub fn request_id(self) -> Option<Uuid> {
        match self {
            GrantKind::BreakGlass => None,
            GrantKind::Request(id) => Some(id),
        }
    }
}

/// What is needed to create a grant.
#[derive(Debug, Clone)]
pub struct NewGrant {
    /// The person the grant is for.
    pub principal: String,
    /// The resource it opens.
    pub resource: String,
    /// Database logins it admits (postgres/mysql).
    pub logins: Vec<String>,
    /// Client source networks it admits: required for ssh/tcp; for
    /// postgres/mysql an optional restriction (empty = any address).
    pub sources: Vec<IpNet>,
    /// How long from now.
    pub duration: Duration,
    /// Why, as the requester or admin wrote it.
    pub reason: String,
    /// Who created it.
    pub actor: String,
    /// How it came to be.
    pub kind: GrantKind,
}

/// A grant as the journal stores it: everything needed to rebuild it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GrantRecord {
    /// Id.
    pub id: GrantId,
    /// Who it is for.
    pub principal: String,
    /// Resource.
    pub resource: String,
    /// Logins.
    pub logins: Vec<String>,
    /// Sources.
    pub sources: Vec<IpNet>,
    /// Creation.
    #[serde(with = "crate::timefmt::unix_ms")]
    pub created_at: SystemTime,
    /// Deadline.
    #[serde(with = "crate::timefmt::unix_ms")]
    pub expires_at: SystemTime,
    /// Why.
    pub reason: String,
    /// Who created it.
    pub actor: String,
    /// The request it came from (none for break-glass grants).
    pub request_id: Option<Uuid>,
}

/// One grant. Shared as `Arc<Grant>` by the table and the sessions on it.
#[derive(Debug)]
pub struct Grant {
    /// Unique id.
    pub id: GrantId,
    /// The person the grant is for.
    pub principal: String,
    /// The resource it opens.
    pub resource: String,
    /// Logins it admits.
    pub logins: Vec<String>,
    /// Source networks it admits.
    pub sources: Vec<IpNet>,
    /// When it was created.
    pub created_at: SystemTime,
    /// Why.
    pub reason: String,
    /// Who created it.
    pub actor: String,
    /// How it came to be.
    pub kind: GrantKind,
    expires: watch::Sender<SystemTime>,
    token: CancellationToken,
    end: OnceLock<(EndReason, Instant)>,
    /// Set once the `grant.expiring` notification went out.
    pub expiring_notified: std::sync::atomic::AtomicBool,
    /// How many sessions live on this grant.
    pub sessions: SessionTally,
}

/// How many sessions live on a grant, so that ending the grant can count
/// its sessions and wait for their sockets to close without visiting each
/// one. Thousands of sessions on one grant are thousands of records spread
/// over memory that an idle gateway has not touched for a while; listing
/// them before the cut delayed every client's farewell by that walk.
///
/// The grant's end takes the count ([`SessionTally::at_end`]) just before
/// it cancels the grant's token, so every session counted is cut (or was
/// already closing on its own) and none has been closed by the cut yet. A
/// session registered in between is cut but not counted.
#[derive(Debug, Default)]
pub struct SessionTally {
    live: std::sync::atomic::AtomicUsize,
    at_end: OnceLock<usize>,
    drained: Notify,
}

impl SessionTally {
    /// A session on the grant is registered.
    pub(crate) fn opened(&self) {
        self.live.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// A session counted by [`opened`](Self::opened) has closed its
    /// sockets.
    pub(crate) fn closed(&self) {
        let before = self.live.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        debug_assert!(before > 0, "a session closed that was never counted");
        if before == 1 {
            self.drained.notify_waiters();
        }
    }

    /// The grant is ending: keep the count of its live sessions.
    fn end(&self) {
        let _ = self.at_end.set(self.live());
    }

    /// How many sessions the grant held when it ended, once it has.
    pub fn at_end(&self) -> Option<usize> {
        self.at_end.get().copied()
    }

    /// Sessions live on the grant now.
    pub fn live(&self) -> usize {
        self.live.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Wait until no session lives on the grant, at most `limit`; returns
    /// how many still do.
    pub async fn drained(&self, limit: Duration) -> usize {
        let all = async {
            loop {
                let notified = self.drained.notified();
                tokio::pin!(notified);
                // Registered before the check, so a last close between the
                // check and the await is not missed.
                notified.as_mut().enable();
                if self.live() == 0 {
                    return;
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout(limit, all).await;
        self.live()
    }

    /// Of the sessions counted when the grant ended ([`at_end`](Self::at_end)),
    /// how many have closed their sockets once the grant has none left,
    /// or after `limit`. Zero if the grant has not ended.
    pub async fn closed_since_end(&self, limit: Duration) -> usize {
        let Some(at_end) = self.at_end() else {
            return 0;
        };
        at_end.saturating_sub(self.drained(limit).await)
    }
}

impl Grant {
    /// The current deadline.
    pub fn expires_at(&self) -> SystemTime {
        *self.expires.borrow()
    }

    /// A receiver that sees deadline changes (extensions).
    pub fn subscribe_deadline(&self) -> watch::Receiver<SystemTime> {
        self.expires.subscribe()
    }

    /// The grant's token, cancelled when the grant ends (revoke, release,
    /// expiry, a reload that removes it) or on shutdown; every session on
    /// the grant waits on it.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// Why the grant ended, once it has.
    pub fn end_reason(&self) -> Option<&EndReason> {
        self.end.get().map(|(r, _)| r)
    }

    /// Why the grant ended and when that was decided.
    pub fn ended(&self) -> Option<&(EndReason, Instant)> {
        self.end.get()
    }

    /// The grant as the journal stores it.
    pub fn record(&self) -> GrantRecord {
        GrantRecord {
            id: self.id,
            principal: self.principal.clone(),
            resource: self.resource.clone(),
            logins: self.logins.clone(),
            sources: self.sources.clone(),
            created_at: self.created_at,
            expires_at: self.expires_at(),
            reason: self.reason.clone(),
            actor: self.actor.clone(),
            request_id: self.kind.request_id(),
        }
    }

    /// Live: not ended and deadline in the future.
    pub fn is_live(&self, now: SystemTime) -> bool {
        !self.token.is_cancelled() && self.expires_at() > now
    }

    /// Whether a connection from `ip` falls inside the grant's sources;
    /// no sources admit any address.
    fn admits_from(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.sources.is_empty() || self.sources.iter().any(|n| n.contains(&ip))
    }

    /// Whether the grant is bound to source addresses rather than logins.
    pub fn is_source_bound(&self) -> bool {
        self.logins.is_empty()
    }

    /// End the grant for `reason` (first reason wins) and cancel every
    /// session on it.
    fn end(&self, reason: EndReason) {
        let _ = self.end.set((reason, Instant::now()));
        self.sessions.end();
        self.token.cancel();
    }
}

type IndexKey = (String, String);

/// Where a source-bound grant is indexed: the single addresses among its
/// sources (for `by_host`), and whether it has a wider network (for
/// `by_source`).
fn source_keys(grant: &Grant) -> (Vec<IpAddr>, bool) {
    let mut hosts = Vec::new();
    let mut wide = false;
    for n in &grant.sources {
        if n.prefix_len() == n.max_prefix_len() {
            hosts.push(n.addr());
        } else {
            wide = true;
        }
    }
    hosts.sort_unstable();
    hosts.dedup();
    (hosts, wide)
}

/// The in-memory grant table.
#[derive(Debug)]
pub struct GrantTable {
    by_id: DashMap<GrantId, Arc<Grant>>,
    /// `(resource, login)` → grants that admit that login.
    index: DashMap<IndexKey, Vec<Arc<Grant>>>,
    /// resource → its source-bound grants (no logins; ssh/tcp) with a
    /// source wider than one address.
    by_source: DashMap<String, Vec<Arc<Grant>>>,
    /// `(resource, address)` → source-bound grants with that one address
    /// (a /32 or /128) among their sources.
    by_host: DashMap<(String, IpAddr), Vec<Arc<Grant>>>,
    /// Deadlines, for the expiry task.
    deadlines: Mutex<BTreeSet<(SystemTime, GrantId)>>,
    wake: Notify,
    root: CancellationToken,
}

impl GrantTable {
    /// An empty table whose grants live under `root` (process shutdown).
    pub fn new(root: CancellationToken) -> Self {
        GrantTable {
            by_id: DashMap::new(),
            index: DashMap::new(),
            by_source: DashMap::new(),
            by_host: DashMap::new(),
            deadlines: Mutex::new(BTreeSet::new()),
            wake: Notify::new(),
            root,
        }
    }

    /// The record of a grant from now for `new.duration`, with a fresh id,
    /// not yet in the table (so it can be journaled first).
    pub fn prepare(new: NewGrant) -> GrantRecord {
        let now = SystemTime::now();
        GrantRecord {
            id: Uuid::now_v7(),
            principal: new.principal,
            resource: new.resource,
            logins: new.logins,
            sources: new.sources,
            created_at: now,
            expires_at: now + new.duration,
            reason: new.reason,
            actor: new.actor,
            request_id: new.kind.request_id(),
        }
    }

    /// Create a grant from now for `new.duration`.
    pub fn insert(&self, new: NewGrant) -> Arc<Grant> {
        self.restore(Self::prepare(new))
    }

    /// Put a grant in the table from its record (new or read back from the
    /// journal).
    pub fn restore(&self, rec: GrantRecord) -> Arc<Grant> {
        let (expires, _) = watch::channel(rec.expires_at);
        let grant = Arc::new(Grant {
            id: rec.id,
            principal: rec.principal,
            resource: rec.resource,
            logins: rec.logins,
            sources: rec.sources,
            created_at: rec.created_at,
            reason: rec.reason,
            actor: rec.actor,
            kind: match rec.request_id {
                Some(r) => GrantKind::Request(r),
                None => GrantKind::BreakGlass,
            },
            expires,
            token: self.root.child_token(),
            end: OnceLock::new(),
            expiring_notified: std::sync::atomic::AtomicBool::new(false),
            sessions: SessionTally::default(),
        });
        for login in &grant.logins {
            self.index
                .entry((grant.resource.clone(), login.clone()))
                .or_default()
                .push(grant.clone());
        }
        if grant.is_source_bound() {
            let (hosts, wide) = source_keys(&grant);
            for ip in hosts {
                self.by_host
                    .entry((grant.resource.clone(), ip))
                    .or_default()
                    .push(grant.clone());
            }
            if wide {
                self.by_source
                    .entry(grant.resource.clone())
                    .or_default()
                    .push(grant.clone());
            }
        }
        self.by_id.insert(grant.id, grant.clone());
        self.schedule(rec.expires_at, grant.id);
        grant
    }

    fn schedule(&self, at: SystemTime, id: GrantId) {
        let earliest = {
            let mut d = self.deadlines.lock().unwrap_or_else(|p| p.into_inner());
            d.insert((at, id));
            d.first().map(|(t, _)| *t) == Some(at)
        };
        if earliest {
            self.wake.notify_one();
        }
    }

    /// The live grant that admits `login` on `resource` from `from` (its
    /// sources, if it has any, must contain that address); the one that
    /// lasts longest when several do.
    pub fn find_login(&self, resource: &str, login: &str, from: IpAddr) -> Option<Arc<Grant>> {
        let now = SystemTime::now();
        // The guard is dropped at the end of this expression.
        self.index
            .get(&(resource.to_string(), login.to_string()))?
            .iter()
            .filter(|g| g.is_live(now) && g.admits_from(from))
            .max_by_key(|g| g.expires_at())
            .cloned()
    }

    /// The live source-bound grant on `resource` whose sources contain
    /// `from`; the one that lasts longest when several do.
    pub fn find_source(&self, resource: &str, from: IpAddr) -> Option<Arc<Grant>> {
        let now = SystemTime::now();
        let pick = |gs: &[Arc<Grant>]| {
            gs.iter()
                .filter(|g| g.is_live(now) && !g.sources.is_empty() && g.admits_from(from))
                .max_by_key(|g| g.expires_at())
                .cloned()
        };
        // Each guard is dropped at the end of its statement.
        let host = self
            .by_host
            .get(&(resource.to_string(), from))
            .and_then(|gs| pick(&gs));
        let wide = self.by_source.get(resource).and_then(|gs| pick(&gs));
        match (host, wide) {
            (Some(h), Some(w)) => Some(if w.expires_at() > h.expires_at() {
                w
            } else {
                h
            }),
            (h, w) => h.or(w),
        }
    }

    /// A grant by id.
    pub fn get(&self, id: &GrantId) -> Option<Arc<Grant>> {
        self.by_id.get(id).map(|g| g.clone())
    }

    /// Every grant in the table, oldest first.
    pub fn list(&self) -> Vec<Arc<Grant>> {
        let mut v: Vec<_> = self.by_id.iter().map(|e| e.value().clone()).collect();
        v.sort_by_key(|g| g.id);
        v
    }

    /// Number of grants in the table.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Set a live grant's deadline (a reload that tightens a policy);
    /// false if the grant is not live. The caller pokes its sessions.
    pub fn set_deadline(&self, id: &GrantId, at: SystemTime) -> bool {
        let Some(grant) = self.get(id) else {
            return false;
        };
        if !grant.is_live(SystemTime::now()) {
            return false;
        }
        let mut d = self.deadlines.lock().unwrap_or_else(|p| p.into_inner());
        d.remove(&(grant.expires_at(), grant.id));
        d.insert((at, grant.id));
        grant.expires.send_replace(at);
        drop(d);
        self.wake.notify_one();
        true
    }

    /// Move a live grant's deadline `by` later; returns the new deadline.
    /// Sessions on it notice when their timer next fires (see
    /// [`crate::enforce`]).
    pub fn extend(&self, id: &GrantId, by: Duration) -> Option<SystemTime> {
        let grant = self.get(id)?;
        if !grant.is_live(SystemTime::now()) {
            return None;
        }
        let mut d = self.deadlines.lock().unwrap_or_else(|p| p.into_inner());
        let old = grant.expires_at();
        let new = old + by;
        d.remove(&(old, grant.id));
        d.insert((new, grant.id));
        grant.expires.send_replace(new);
        Some(new)
    }

    /// Remove a grant and end it for `reason`; `None` if it was not there.
    pub fn remove(&self, id: &GrantId, reason: EndReason) -> Option<Arc<Grant>> {
        let (_, grant) = self.by_id.remove(id)?;
        for login in &grant.logins {
            let key = (grant.resource.clone(), login.clone());
            // Drop the entry if it becomes empty; the guard lives only in this call.
            self.index.remove_if_mut(&key, |_, v| {
                v.retain(|g| g.id != grant.id);
                v.is_empty()
            });
        }
        if grant.is_source_bound() {
            let (hosts, wide) = source_keys(&grant);
            for ip in hosts {
                self.by_host
                    .remove_if_mut(&(grant.resource.clone(), ip), |_, v| {
                        v.retain(|g| g.id != grant.id);
                        v.is_empty()
                    });
            }
            if wide {
                self.by_source.remove_if_mut(&grant.resource, |_, v| {
                    v.retain(|g| g.id != grant.id);
                    v.is_empty()
                });
            }
        }
        self.deadlines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(grant.expires_at(), grant.id));
        grant.end(reason);
        Some(grant)
    }

    /// Remove every grant whose deadline is at or before `now`; returns them.
    pub fn expire_due(&self, now: SystemTime) -> Vec<Arc<Grant>> {
        let due: Vec<GrantId> = {
            let mut d = self.deadlines.lock().unwrap_or_else(|p| p.into_inner());
            let mut due = Vec::new();
            while let Some(&(t, id)) = d.first() {
                if t > now {
                    break;
                }
                d.pop_first();
                due.push(id);
            }
            due
        };
        due.iter()
            .filter_map(|id| self.remove(id, EndReason::Expired))
            .collect()
    }

    fn next_deadline(&self) -> Option<SystemTime> {
        self.deadlines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .first()
            .map(|(t, _)| *t)
    }

    /// The expiry task: sleeps until the next deadline, removes what is due
    /// and hands each expired grant to `on_expired` (audit, metrics). Ends
    /// when `stop` is cancelled.
    pub async fn run_expiry(&self, stop: CancellationToken, on_expired: impl Fn(&Grant)) {
        loop {
            // Register interest before reading the deadline so an insert
            // between the two still wakes us.
            let notified = self.wake.notified();
            let wait = match self.next_deadline() {
                Some(t) => t
                    .duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO),
                None => Duration::from_secs(3600),
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = notified => {}
                _ = tokio::time::sleep(wait) => {
                    for g in self.expire_due(SystemTime::now()) {
                        on_expired(&g);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(resource: &str, login: &str, secs: u64) -> NewGrant {
        NewGrant {
            principal: "alice".into(),
            resource: resource.into(),
            logins: vec![login.into()],
            sources: vec![],
            duration: Duration::from_secs(secs),
            reason: "test".into(),
            actor: "admin".into(),
            kind: GrantKind::BreakGlass,
        }
    }

    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn source_grant(resource: &str, sources: &[&str], secs: u64) -> NewGrant {
        NewGrant {
            logins: vec![],
            sources: sources.iter().map(|s| s.parse().unwrap()).collect(),
            ..new(resource, "unused", secs)
        }
    }

    #[test]
    fn find_by_resource_and_login_only() {
        let t = GrantTable::new(CancellationToken::new());
        let g = t.insert(new("pg", "alice", 60));
        assert_eq!(t.find_login("pg", "alice", LOCAL).map(|g| g.id), Some(g.id));
        assert!(t.find_login("pg", "bob", LOCAL).is_none());
        assert!(t.find_login("other", "alice", LOCAL).is_none());
        assert!(
            t.find_source("pg", LOCAL).is_none(),
            "a login grant is not source-bound"
        );
    }

    #[test]
    fn a_login_grant_with_sources_admits_only_from_them() {
        let t = GrantTable::new(CancellationToken::new());
        let g = t.insert(NewGrant {
            sources: vec!["10.1.0.0/16".parse().unwrap()],
            ..new("pg", "alice", 60)
        });
        assert_eq!(
            t.find_login("pg", "alice", ip("10.1.2.3")).map(|g| g.id),
            Some(g.id)
        );
        assert!(t.find_login("pg", "alice", ip("10.2.0.1")).is_none());
        assert!(t.find_login("pg", "alice", LOCAL).is_none());
    }

    #[test]
    fn find_source_matches_cidrs_of_that_resource_only() {
        let t = GrantTable::new(CancellationToken::new());
        let net = t.insert(source_grant(
            "ssh",
            &["192.168.0.0/24", "2001:db8::/32"],
            60,
        ));
        let host = t.insert(source_grant("ssh", &["192.168.0.7/32"], 3600));
        let other = t.insert(source_grant("tcp", &["127.0.0.1/32"], 60));
        // The longest-lasting of two matching grants wins.
        assert_eq!(
            t.find_source("ssh", ip("192.168.0.7")).map(|g| g.id),
            Some(host.id)
        );
        assert_eq!(
            t.find_source("ssh", ip("192.168.0.8")).map(|g| g.id),
            Some(net.id)
        );
        assert_eq!(
            t.find_source("ssh", ip("2001:db8::1")).map(|g| g.id),
            Some(net.id)
        );
        // IPv4-mapped IPv6 peers (a dual-stack listener) match IPv4 networks.
        assert_eq!(
            t.find_source("ssh", ip("::ffff:192.168.0.9")).map(|g| g.id),
            Some(net.id)
        );
        assert!(t.find_source("ssh", ip("192.168.1.1")).is_none());
        assert!(
            t.find_source("ssh", LOCAL).is_none(),
            "another resource's grant"
        );
        assert_eq!(t.find_source("tcp", LOCAL).map(|g| g.id), Some(other.id));
        assert!(t.find_login("ssh", "unused", LOCAL).is_none());
    }

    #[test]
    fn host_and_network_sources_are_both_found_and_the_longest_wins() {
        let t = GrantTable::new(CancellationToken::new());
        // Many one-address grants, as one per client.
        let hosts: Vec<_> = (1..=200u8)
            .map(|i| t.insert(source_grant("ssh", &[&format!("10.0.0.{i}/32")], 60)))
            .collect();
        let wide = t.insert(source_grant("ssh", &["10.0.0.0/24"], 30));
        let mixed = t.insert(source_grant("ssh", &["10.9.0.7/32", "10.8.0.0/16"], 90));
        let find = |a: &str| t.find_source("ssh", ip(a)).map(|g| g.id);
        // The host grant outlives the /24: it is the one chosen.
        assert_eq!(find("10.0.0.7"), Some(hosts[6].id));
        // Only the /24 covers .250 (and .0).
        assert_eq!(find("10.0.0.250"), Some(wide.id));
        // One grant reached through its host entry and its network entry.
        assert_eq!(find("10.9.0.7"), Some(mixed.id));
        assert_eq!(find("10.8.3.4"), Some(mixed.id));
        assert_eq!(find("10.9.0.8"), None);
        assert!(t.find_source("tcp", ip("10.0.0.7")).is_none());
        // A longer /24 grant wins over the host grant.
        let longer = t.insert(source_grant("ssh", &["10.0.0.0/24"], 120));
        assert_eq!(find("10.0.0.7"), Some(longer.id));
        // Removal unindexes both kinds.
        t.remove(&longer.id, EndReason::Client);
        t.remove(&hosts[6].id, EndReason::Client);
        assert_eq!(find("10.0.0.7"), Some(wide.id));
        t.remove(&mixed.id, EndReason::Client);
        assert_eq!(find("10.9.0.7"), None);
        assert_eq!(find("10.8.3.4"), None);
        assert!(!t.by_host.contains_key(&("ssh".to_string(), ip("10.9.0.7"))));
    }

    #[test]
    fn a_source_bound_grant_without_sources_admits_no_one() {
        let t = GrantTable::new(CancellationToken::new());
        t.insert(source_grant("ssh", &[], 60));
        assert!(t.find_source("ssh", LOCAL).is_none());
    }

    #[test]
    fn removing_and_expiring_source_grants_unindexes_them() {
        let t = GrantTable::new(CancellationToken::new());
        let a = t.insert(source_grant("ssh", &["127.0.0.0/8"], 1));
        let b = t.insert(source_grant("ssh", &["127.0.0.0/8"], 3600));
        t.remove(&b.id, EndReason::Expired);
        assert_eq!(t.find_source("ssh", LOCAL).map(|g| g.id), Some(a.id));
        let gone = t.expire_due(SystemTime::now() + Duration::from_secs(2));
        assert_eq!(gone.len(), 1);
        assert!(t.find_source("ssh", LOCAL).is_none());
        assert!(t.by_source.is_empty());
        assert!(t.is_empty());
    }

    #[test]
    fn remove_ends_the_grant_and_unindexes_it() {
        let t = GrantTable::new(CancellationToken::new());
        let g = t.insert(new("pg", "alice", 60));
        let child = g.token().child_token();
        let removed = t
            .remove(
                &g.id,
                EndReason::Revoked {
                    by: "carol".into(),
                    reason: "done".into(),
                },
            )
            .unwrap();
        assert!(child.is_cancelled());
        assert!(matches!(
            removed.end_reason(),
            Some(EndReason::Revoked { .. })
        ));
        assert!(t.find_login("pg", "alice", LOCAL).is_none());
        assert!(t.is_empty());
        assert!(t.index.is_empty());
    }

    #[test]
    fn extend_moves_the_deadline_and_the_expiry() {
        let t = GrantTable::new(CancellationToken::new());
        let g = t.insert(new("pg", "a", 1));
        let before = g.expires_at();
        let after = t.extend(&g.id, Duration::from_secs(60)).unwrap();
        assert_eq!(after, before + Duration::from_secs(60));
        assert_eq!(g.expires_at(), after);
        assert!(t.expire_due(before + Duration::from_secs(2)).is_empty());
        assert_eq!(t.expire_due(after).len(), 1);
        assert!(t.extend(&g.id, Duration::from_secs(1)).is_none());
    }

    #[test]
    fn expire_due_removes_only_past_deadlines() {
        let t = GrantTable::new(CancellationToken::new());
        let short = t.insert(new("pg", "a", 1));
        let long = t.insert(new("pg", "b", 3600));
        let later = SystemTime::now() + Duration::from_secs(2);
        let gone = t.expire_due(later);
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].id, short.id);
        assert!(matches!(short.end_reason(), Some(EndReason::Expired)));
        assert!(t.get(&long.id).is_some());
    }

    #[tokio::test]
    async fn expiry_task_expires_without_traffic() {
        let t = Arc::new(GrantTable::new(CancellationToken::new()));
        let stop = CancellationToken::new();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let task = {
            let t = t.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                t.run_expiry(stop, move |g| {
                    let _ = tx.send(g.id);
                })
                .await
            })
        };
        let mut g = new("pg", "a", 0);
        g.duration = Duration::from_millis(200);
        let g = t.insert(g);
        let expired = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap();
        assert_eq!(expired, Some(g.id));
        assert!(g.token().is_cancelled());
        assert!(t.find_login("pg", "a", LOCAL).is_none());
        stop.cancel();
        task.await.unwrap();
    }
}
