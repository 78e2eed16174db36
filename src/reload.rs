//! Live reload: apply a new configuration as a diff, and the per-resource
//! listeners it starts, stops and rebinds.
//!
//! A new file is validated whole first ([`crate::config::load_file`]); an
//! invalid one is rejected (`config.rejected` audited,
//! `jitgate_config_reloads_total{result="error"}`), the old configuration
//! stays. A valid one is applied as a diff, serialized by one lock:
//! - a new resource starts listening; a changed `listen` rebinds (new
//!   listeners are bound *before* anything changes, so a bind failure rejects
//!   the reload whole); a removed resource stops listening, its grants are
//!   ended and its sessions closed with reason `config`;
//! - changed `idle_timeout`/`max_session` apply to live sessions at once
//!   (their enforcers are poked to re-arm); other resource settings apply to
//!   new connections;
//! - a removed user's grants are revoked, and so are the grants that carry
//!   a login taken from their user;
//! - a policy that no longer allows a request grant (its principal, one of
//!   its logins or sources, or no sources under a policy with `sources`)
//!   ends it; a tightened `max_duration` cuts request grants longer than it
//!   (from their creation);
//! - unchanged resources and their sessions are untouched.
//!
//! `state_dir`, `admin_listen`, `admin_max_connections`, `worker_threads`,
//! `busy_poll`, `metrics_listen` and `[[notify]]` changes need a restart; a
//! reload logs that they were not applied.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::audit::Event;
use crate::config::{Config, ResourceConfig};
use crate::ending::EndReason;
use crate::gateway::Gateway;
use crate::grants::GrantKind;
use crate::journal::Record;
use crate::metrics as m;
use crate::tls::{BackendTls, ServerTls, TlsError};

/// One resource's listener.
struct Handle {
    /// The bound address.
    addr: SocketAddr,
    /// The resource's settings, swapped in place when they change.
    resource: Arc<ArcSwap<ResourceConfig>>,
    /// Client-leg TLS, if configured.
    tls: arc_swap::ArcSwapOption<ServerTls>,
    /// Backend-leg TLS.
    backend_tls: ArcSwap<BackendTls>,
    stop: CancellationToken,
    done: JoinHandle<()>,
}

/// The live listeners, by resource name.
#[derive(Default)]
pub struct Listeners {
    map: Mutex<BTreeMap<String, Handle>>,
    /// Serializes reloads.
    reload: tokio::sync::Mutex<()>,
    /// The file reloads read.
    path: Mutex<Option<PathBuf>>,
}

impl std::fmt::Debug for Listeners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listeners").finish_non_exhaustive()
    }
}

impl Listeners {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Handle>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The bound address of a resource.
    pub fn addr(&self, name: &str) -> Option<SocketAddr> {
        self.lock().get(name).map(|h| h.addr)
    }

    /// Bound addresses, by resource name.
    pub fn addrs(&self) -> Vec<(String, SocketAddr)> {
        self.lock()
            .iter()
            .map(|(n, h)| (n.clone(), h.addr))
            .collect()
    }

    /// The TLS settings of both legs of a resource, as a connection takes
    /// them when it arrives; `None` when the resource has no listener entry
    /// (a reload is removing it or moving it), where its TLS policy cannot
    /// be known and the connection must be refused, not served in plaintext.
    pub fn tls_state(&self, name: &str) -> Option<TlsState> {
        self.lock().get(name).map(|h| TlsState {
            client: h.tls.load_full(),
            backend: h.backend_tls.load_full(),
        })
    }

    /// Remember the config file reloads read.
    pub fn set_path(&self, path: PathBuf) {
        *self.path.lock().unwrap_or_else(|p| p.into_inner()) = Some(path);
    }

    /// The config file reloads read.
    pub fn path(&self) -> Option<PathBuf> {
        self.path.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// ALPN protocol ids offered on a resource's client leg.
fn alpn(r: &ResourceConfig) -> &'static [&'static [u8]] {
    match r.protocol() {
        // PostgreSQL 17 direct TLS requires ALPN "postgresql".
        crate::config::Protocol::Postgres => &[b"postgresql"],
        _ => &[],
    }
}

/// The TLS material of a resource: client leg (if any) and backend leg.
pub fn tls_material(
    r: &ResourceConfig,
) -> Result<(Option<Arc<ServerTls>>, Arc<BackendTls>), TlsError> {
    let server = match &r.tls {
        Some(t) => Some(Arc::new(ServerTls::new(t.clone(), alpn(r))?)),
        None => None,
    };
    let backend = Arc::new(crate::tls::backend_tls(
        r.backend_tls.as_ref(),
        r.backend(),
    )?);
    Ok((server, backend))
}

/// A resource's TLS settings for one connection ([`Listeners::tls_state`]).
#[derive(Debug, Clone)]
pub struct TlsState {
    /// The client leg (`[resource.tls]`), if it has TLS.
    pub client: Option<Arc<ServerTls>>,
    /// The backend leg (`[resource.backend_tls]`).
    pub backend: Arc<BackendTls>,
}

/// Start serving `listener` for `resource`.
pub fn spawn_listener(
    gw: &Arc<Gateway>,
    resource: ResourceConfig,
    listener: TcpListener,
) -> Result<(), TlsError> {
    let (tls, backend_tls) = tls_material(&resource)?;
    let addr = listener.local_addr().unwrap_or_else(|_| resource.listen());
    tracing::info!(resource = resource.name(), protocol = resource.protocol().as_str(), listen = %addr, backend = resource.backend(), "resource listening");
    let name = resource.name().to_string();
    let shared = Arc::new(ArcSwap::from_pointee(resource));
    let stop = gw.shutdown.child_token();
    // Spawned under the map's lock and entered before it is released: a
    // connection the loop accepts at once finds its entry (without one it
    // would be refused, see `tls_state`).
    let mut listeners = gw.listeners.lock();
    let done = tokio::spawn(crate::server::accept_loop(
        gw.clone(),
        shared.clone(),
        listener,
        stop.clone(),
    ));
    listeners.insert(
        name,
        Handle {
            addr,
            resource: shared,
            tls: arc_swap::ArcSwapOption::new(tls),
            backend_tls: ArcSwap::new(backend_tls),
            stop,
            done,
        },
    );
    Ok(())
}

async fn stop_listener(h: Handle) {
    h.stop.cancel();
    let _ = h.done.await;
}

/// What a reload changed.
#[derive(Debug, Default, serde::Serialize)]
pub struct Summary {
    /// Resources that started listening.
    pub added: Vec<String>,
    /// Resources removed.
    pub removed: Vec<String>,
    /// Resources whose settings changed.
    pub changed: Vec<String>,
    /// Grants ended by the reload.
    pub grants_ended: usize,
    /// Grants whose deadline was brought forward.
    pub grants_shortened: usize,
    /// Settings that need a restart.
    pub needs_restart: Vec<String>,
}

/// Why a reload was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file is invalid.
    #[error("{0}")]
    Invalid(#[from] crate::config::ConfigErrors),
    /// A new listener could not be bound.
    #[error("cannot listen on {addr} for resource {resource}: {source}")]
    Bind {
        /// The resource.
        resource: String,
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// No file to read (the gateway was started without one).
    #[error("no configuration file to reload")]
    NoFile,
    /// TLS material could not be loaded.
    #[error("resource {resource}: {source}")]
    Tls {
        /// The resource.
        resource: String,
        /// The cause.
        source: TlsError,
    },
}

/// Read the config file again and apply it.
pub async fn reload_file(gw: &Arc<Gateway>) -> Result<Summary, ReloadError> {
    let Some(path) = gw.listeners.path() else {
        return Err(ReloadError::NoFile);
    };
    match crate::config::load_file(&path) {
        Ok(c) => apply(gw, c).await,
        Err(errs) => {
            reject(gw, &path, &errs.to_string());
            Err(errs.into())
        }
    }
}

fn reject(gw: &Gateway, path: &Path, why: &str) {
    let mut e = Event::new("config.rejected");
    e.reason = Some(why.to_string());
    e.outcome = Some("error");
    let _ = gw.audit.write(e);
    m::config_reload(false);
    tracing::error!(path = %path.display(), errors = %why, "configuration rejected; the old one stays in force");
}

/// End a grant because of the reload.
fn end_grant(gw: &Gateway, id: &uuid::Uuid, why: String) -> bool {
    withdraw_grant(gw, id, "config", why)
}

/// End a grant that no one revoked but jitgate itself (`actor`: `config`
/// for a configuration that no longer allows it, `jitgate` for a grant
/// whose request could not be recorded): audited as `grant.revoked`, its
/// end journaled (owed if the disk refuses it), its sessions closed with
/// reason `config`. Whether it was still there.
pub(crate) fn withdraw_grant(gw: &Gateway, id: &uuid::Uuid, actor: &str, why: String) -> bool {
    let mut e = Event::new("grant.revoked");
    e.grant_id = Some(*id);
    e.actor = Some(actor.into());
    e.reason = Some(why.clone());
    if let Some(g) = gw.grants.get(id) {
        e.principal = Some(g.principal.clone());
        e.resource = Some(g.resource.clone());
        e.request_id = g.kind.request_id();
    }
    let _ = gw.audit.write(e);
    let _ = gw.journal.append_end(*id);
    let ended = gw.grants.remove(id, EndReason::Config(why)).is_some();
    m::grants_active(gw.grants.len());
    ended
}

/// End the grants `config` no longer allows, and say how many ended: those
/// whose principal is no longer a user, that carry a login no longer among
/// the user's, or whose resource is gone, and request grants whose policy
/// no longer lets their holder use the resource, one of their logins or
/// one of their sources (or none, under a policy with `sources`). A reload
/// runs it on the new configuration; the start runs it on the grants read
/// back from the journal, so a change made while jitgate was down takes
/// effect as a reload's would.
pub(crate) fn end_refused_grants(gw: &Gateway, config: &Config, at: SystemTime) -> usize {
    let mut ended = 0;
    for g in gw.grants.list() {
        let user = config.user(&g.principal);
        // A login taken from the user (perhaps given to another) ends
        // every grant that carries it, break-glass ones too.
        let lost_login = user.and_then(|u| g.logins.iter().find(|l| !u.logins.contains(l)));
        let why = if user.is_none() {
            Some(format!("user {} was removed", g.principal))
        } else if let Some(login) = lost_login {
            Some(format!(
                "login {login:?} is no longer one of {}'s logins",
                g.principal
            ))
        } else if config.resource(&g.resource).is_none() {
            Some(format!("resource {} was removed", g.resource))
        } else if matches!(g.kind, GrantKind::Request(_)) {
            match crate::policy::evaluate(config, &g.principal, &g.resource, at) {
                Err(_) => Some(format!(
                    "no policy lets {} use {} any more",
                    g.principal, g.resource
                )),
                Ok(d) => d
                    .refuses(&g.principal, &g.logins, &g.sources)
                    .map(|why| format!("{why} on {} any more", g.resource)),
            }
        } else {
            None
        };
        if let Some(why) = why {
            ended += usize::from(end_grant(gw, &g.id, why));
        }
    }
    ended
}

/// Apply a validated configuration as a diff.
pub async fn apply(gw: &Arc<Gateway>, new: Config) -> Result<Summary, ReloadError> {
    let _serial = gw.listeners.reload.lock().await;
    let old = gw.config();
    let mut sum = Summary::default();
    let path = gw.listeners.path().unwrap_or_default();

    for (what, changed) in [
        (
            "gateway.state_dir",
            old.gateway.state_dir != new.gateway.state_dir,
        ),
        (
            "gateway.admin_listen",
            old.gateway.admin_listen != new.gateway.admin_listen,
        ),
        (
            "gateway.admin_max_connections",
            old.gateway.admin_max_connections != new.gateway.admin_max_connections,
        ),
        (
            "gateway.worker_threads",
            old.gateway.worker_threads != new.gateway.worker_threads,
        ),
        (
            "gateway.busy_poll",
            old.gateway.busy_poll != new.gateway.busy_poll,
        ),
        (
            "gateway.metrics_listen",
            old.gateway.metrics_listen != new.gateway.metrics_listen,
        ),
        (
            "notify",
            old.notify
                .iter()
                .map(|n| n.url.get_ref())
                .ne(new.notify.iter().map(|n| n.url.get_ref())),
        ),
    ] {
        if changed {
            sum.needs_restart.push(what.to_string());
        }
    }

    // 1. Bind what is new or moved before touching anything.
    let mut bound: Vec<(ResourceConfig, TcpListener)> = Vec::new();
    for r in &new.resources {
        let moved = match old.resource(r.name()) {
            None => true,
            Some(o) => o.listen() != r.listen() || o.protocol() != r.protocol(),
        };
        if let Err(source) = tls_material(r) {
            let err = ReloadError::Tls {
                resource: r.name().to_string(),
                source,
            };
            reject(gw, &path, &err.to_string());
            return Err(err);
        }
        if moved {
            match crate::server::listen(r.listen()) {
                Ok(l) => bound.push((r.clone(), l)),
                Err(source) => {
                    let err = ReloadError::Bind {
                        resource: r.name().to_string(),
                        addr: r.listen(),
                        source,
                    };
                    reject(gw, &path, &err.to_string());
                    return Err(err);
                }
            }
        }
    }

    // 2. Swap the configuration: from here on, new connections and API
    // calls see it.
    let new = Arc::new(new);
    gw.config.store(new.clone());
    gw.audit.set_rotate_bytes(new.gateway.audit_rotate_bytes);

    // 3. Removed and moved resources stop listening; removed ones lose their
    // grants and sessions.
    let now = Instant::now();
    for o in &old.resources {
        let name = o.name();
        let kept = new.resource(name);
        let moved = kept.is_none_or(|n| n.listen() != o.listen() || n.protocol() != o.protocol());
        if moved {
            let h = gw.listeners.lock().remove(name);
            if let Some(h) = h {
                stop_listener(h).await;
            }
        }
        if kept.is_none() {
            sum.removed.push(name.to_string());
            let why = format!("resource {name} was removed");
            for g in gw.grants.list().iter().filter(|g| g.resource == name) {
                sum.grants_ended += usize::from(end_grant(gw, &g.id, why.clone()));
            }
            for s in gw.sessions.on_resource(name) {
                s.end(EndReason::Config(why.clone()), now);
            }
        }
    }
    for (r, l) in bound {
        if old.resource(r.name()).is_none() {
            sum.added.push(r.name().to_string());
        } else {
            sum.changed.push(r.name().to_string());
        }
        if let Err(e) = spawn_listener(gw, r, l) {
            // Checked above; files changed in between.
            tracing::error!(error = %e, "resource not started: TLS material unusable");
        }
    }

    // 4. Changed settings of kept resources: swap in place; limits apply to
    // live sessions.
    for r in &new.resources {
        let Some(o) = old.resource(r.name()) else {
            continue;
        };
        let limits_changed =
            o.idle_timeout() != r.idle_timeout() || o.max_session() != r.max_session();
        let tls_changed = o.tls != r.tls || o.backend_tls != r.backend_tls;
        let other_changed =
            o.backend() != r.backend() || o.sensitivity != r.sensitivity || tls_changed;
        if let Some(h) = gw.listeners.lock().get(r.name()) {
            h.resource.store(Arc::new(r.clone()));
            if tls_changed {
                if let Ok((tls, backend)) = tls_material(r) {
                    h.tls.store(tls);
                    h.backend_tls.store(backend);
                }
            }
        }
        if limits_changed {
            for s in gw.sessions.on_resource(r.name()) {
                s.set_limits(r.idle_timeout(), r.max_session());
            }
        }
        if (limits_changed || other_changed) && !sum.changed.iter().any(|c| c == r.name()) {
            sum.changed.push(r.name().to_string());
        }
    }

    // 5. Grants the new configuration refuses end: removed users', and
    // request grants whose policy is gone or no longer allows one of their
    // logins or sources (a grant is not narrowed in place: the holder asks
    // again).
    let at = SystemTime::now();
    sum.grants_ended += end_refused_grants(gw, &new, at);

    // 6. A tighter max_duration cuts the request grants left back to it,
    // counted from the grant's creation.
    let mut shortened = std::collections::HashSet::new();
    for g in gw.grants.list() {
        if !matches!(g.kind, GrantKind::Request(_)) {
            continue;
        }
        let before = crate::policy::evaluate(&old, &g.principal, &g.resource, at);
        let Ok(d) = crate::policy::evaluate(&new, &g.principal, &g.resource, at) else {
            continue;
        };
        let tighter = before
            .as_ref()
            .map_or(true, |b| d.max_duration < b.max_duration);
        let cut = g.created_at + d.max_duration.0;
        if tighter && cut < g.expires_at() {
            let _ = gw.journal.append_owed(Record::GrantExtended {
                id: g.id,
                expires_at: cut,
            });
            if gw.grants.set_deadline(&g.id, cut) {
                sum.grants_shortened += 1;
                shortened.insert(g.id);
            }
        }
    }
    // Their sessions' clocks re-read the deadline: one walk over the live
    // sessions for all the shortened grants.
    if !shortened.is_empty() {
        for s in gw.sessions.on_grants(&shortened) {
            s.poke();
        }
    }
    m::grants_active(gw.grants.len());

    let mut e = Event::new("config.reloaded");
    e.outcome = Some("ok");
    e.reason = Some(serde_json::to_string(&sum).unwrap_or_default());
    let _ = gw.audit.write(e);
    m::config_reload(true);
    if !sum.needs_restart.is_empty() {
        tracing::warn!(settings = ?sum.needs_restart, "configuration reloaded, but these settings take effect only after a restart");
    }
    tracing::info!(added = ?sum.added, removed = ?sum.removed, changed = ?sum.changed, grants_ended = sum.grants_ended, grants_shortened = sum.grants_shortened, "configuration reloaded");
    Ok(sum)
}
