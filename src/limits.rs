//! Connection limits, checked at accept time for every protocol, and the
//! rate limit on failed admin-API token checks.
//!
//! Invariants: a connection over a limit is refused before any byte is read
//! from it, with the protocol's own "too many connections" error where the
//! protocol has one (PostgreSQL FATAL 53300, MySQL ERR 1040), and counted in
//! `jitgate_limited_total{limit}`; connections within the limits are never
//! affected. Unauthenticated handshakes are the open connections that have
//! no session yet, so no protocol handler has to report its progress.
//! Per-source rate state is bounded: idle keys are dropped by
//! [`Limits::forget_idle`], called from the once-a-second sweep.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use dashmap::DashMap;

use crate::config::GatewayConfig;

/// Which limit refused a connection or a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// `gateway.max_connections`.
    Connections,
    /// `resource.max_connections`.
    ResourceConnections,
    /// `gateway.max_handshakes`.
    Handshakes,
    /// `gateway.handshake_rate` for one source address.
    HandshakeRate,
    /// `gateway.max_handshakes_per_source`.
    SourceHandshakes,
    /// Failed admin-API token checks from one address.
    AdminAuth,
    /// The process (or system) had no file descriptor left for a new
    /// connection (see [`crate::accept`]).
    Fds,
    /// Admin API connections open at once.
    AdminConnections,
}

impl Limit {
    /// The `limit` label.
    pub fn label(self) -> &'static str {
        match self {
            Limit::Connections => "connections",
            Limit::ResourceConnections => "resource_connections",
            Limit::Handshakes => "handshakes",
            Limit::HandshakeRate => "handshake_rate",
            Limit::SourceHandshakes => "source_handshakes",
            Limit::AdminAuth => "admin_auth",
            Limit::Fds => "fds",
            Limit::AdminConnections => "admin_connections",
        }
    }
}

/// Holds one connection's place in the open counts; dropping it frees it.
#[derive(Debug)]
pub struct ConnGuard {
    open: Arc<AtomicUsize>,
    resource: Arc<AtomicUsize>,
    /// The connection's place among its source's handshakes, held until
    /// it is admitted (see [`HandshakeSlot`]).
    pub handshake: Option<HandshakeSlot>,
}

/// Handshakes (connections not yet admitted) open per source address.
type PerSource = Arc<DashMap<IpAddr, usize>>;

/// A connection's place under `gateway.max_handshakes_per_source`, given
/// back when the connection is admitted (or closes first). The connection
/// task holds it in [`HANDSHAKE`]; admission takes it out through
/// [`handshake_done`], so a source's admitted sessions never count against
/// its handshakes.
#[derive(Debug)]
pub struct HandshakeSlot {
    per_source: PerSource,
    ip: IpAddr,
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        self.per_source.remove_if_mut(&self.ip, |_, n| {
            *n = n.saturating_sub(1);
            *n == 0
        });
    }
}

tokio::task_local! {
    /// The running connection task's handshake slot, until admission.
    pub static HANDSHAKE: std::cell::RefCell<Option<HandshakeSlot>>;
}

/// The current connection has been admitted: give its source's handshake
/// place back. Does nothing outside a connection task.
pub fn handshake_done() {
    let _ = HANDSHAKE.try_with(|slot| slot.borrow_mut().take());
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        self.resource.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The gateway's limits.
pub struct Limits {
    open: Arc<AtomicUsize>,
    per_source: PerSource,
    rate: Option<DefaultKeyedRateLimiter<IpAddr>>,
    admin_auth: DefaultKeyedRateLimiter<IpAddr>,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits")
            .field("open", &self.open.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// Failed token checks allowed per address: a burst of 10, then one every 6 s.
const ADMIN_AUTH_BURST: u32 = 10;

impl Limits {
    /// Limits from the gateway settings (the rate quota is fixed at start).
    pub fn new(g: &GatewayConfig) -> Limits {
        let rate = NonZeroU32::new(g.handshake_rate).map(|per_second| {
            let burst =
                NonZeroU32::new(g.handshake_burst.max(g.handshake_rate)).unwrap_or(per_second);
            RateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst))
        });
        // 10 per minute with a burst of 10; NonZeroU32 literals are checked.
        let admin_quota = NonZeroU32::new(ADMIN_AUTH_BURST)
            .map(|n| Quota::per_minute(n).allow_burst(n))
            .unwrap_or_else(|| Quota::per_minute(NonZeroU32::MIN));
        Limits {
            open: Arc::new(AtomicUsize::new(0)),
            per_source: Arc::new(DashMap::new()),
            rate,
            admin_auth: RateLimiter::keyed(admin_quota),
        }
    }

    /// Connections open now (admitted or not).
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Take a place for a new connection from `ip` on a resource whose open
    /// count is `resource` (limit `resource_max`, 0 = none), given
    /// `sessions` live sessions gateway-wide; `one_source` is false for a
    /// trusted PROXY-protocol peer, which the per-source handshake cap
    /// does not apply to.
    pub fn admit(
        &self,
        g: &GatewayConfig,
        resource: &Arc<AtomicUsize>,
        resource_max: usize,
        ip: IpAddr,
        one_source: bool,
        sessions: usize,
    ) -> Result<ConnGuard, Limit> {
        let open = self.open.fetch_add(1, Ordering::Relaxed);
        let on_resource = resource.fetch_add(1, Ordering::Relaxed);
        let mut guard = ConnGuard {
            open: self.open.clone(),
            resource: resource.clone(),
            handshake: None,
        };
        if g.max_connections > 0 && open >= g.max_connections {
            return Err(Limit::Connections);
        }
        if resource_max > 0 && on_resource >= resource_max {
            return Err(Limit::ResourceConnections);
        }
        if g.max_handshakes > 0 && open.saturating_sub(sessions) >= g.max_handshakes {
            return Err(Limit::Handshakes);
        }
        if one_source && g.max_handshakes_per_source > 0 {
            let before = {
                let mut n = self.per_source.entry(ip).or_insert(0);
                *n += 1;
                *n - 1
            };
            // Taken (and given back on drop) whether or not it fits.
            guard.handshake = Some(HandshakeSlot {
                per_source: self.per_source.clone(),
                ip,
            });
            if before >= g.max_handshakes_per_source {
                return Err(Limit::SourceHandshakes);
            }
        }
        if let Some(rate) = &self.rate {
            if rate.check_key(&ip).is_err() {
                return Err(Limit::HandshakeRate);
            }
        }
        Ok(guard)
    }

    /// Record a failed token check from `ip`; false once it is over its
    /// allowance (the caller answers 429).
    pub fn admin_auth_failed(&self, ip: IpAddr) -> bool {
        self.admin_auth.check_key(&ip).is_ok()
    }

    /// Drop rate state of addresses that have been quiet.
    pub fn forget_idle(&self) {
        if let Some(r) = &self.rate {
            r.retain_recent();
        }
        self.admin_auth.retain_recent();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(max: usize, handshakes: usize, rate: u32) -> GatewayConfig {
        GatewayConfig {
            max_connections: max,
            max_handshakes: handshakes,
            handshake_rate: rate,
            handshake_burst: rate,
            ..GatewayConfig::default()
        }
    }

    #[test]
    fn limits_refuse_over_and_free_on_drop() {
        let g = cfg(2, 0, 0);
        let l = Limits::new(&g);
        let r = Arc::new(AtomicUsize::new(0));
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let a = l.admit(&g, &r, 0, ip, true, 0).unwrap();
        let _b = l.admit(&g, &r, 0, ip, true, 0).unwrap();
        assert_eq!(
            l.admit(&g, &r, 0, ip, true, 0).unwrap_err(),
            Limit::Connections
        );
        drop(a);
        let _c = l.admit(&g, &r, 0, ip, true, 0).unwrap();
        // b and c; the refused one gave its place back.
        assert_eq!(l.open(), 2);
    }

    #[test]
    fn handshakes_count_only_connections_without_a_session() {
        let g = cfg(0, 1, 0);
        let l = Limits::new(&g);
        let r = Arc::new(AtomicUsize::new(0));
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let _a = l.admit(&g, &r, 0, ip, true, 0).unwrap();
        assert_eq!(
            l.admit(&g, &r, 0, ip, true, 0).unwrap_err(),
            Limit::Handshakes
        );
        // Once the first one has a session, another handshake may start.
        assert!(l.admit(&g, &r, 0, ip, true, 1).is_ok());
    }

    #[test]
    fn the_rate_is_per_source_and_resource_caps_apply() {
        let g = cfg(0, 0, 2);
        let l = Limits::new(&g);
        let r = Arc::new(AtomicUsize::new(0));
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let _g1 = l.admit(&g, &r, 0, a, true, 0).unwrap();
        let _g2 = l.admit(&g, &r, 0, a, true, 0).unwrap();
        assert_eq!(
            l.admit(&g, &r, 0, a, true, 0).unwrap_err(),
            Limit::HandshakeRate
        );
        let _g3 = l.admit(&g, &r, 0, b, true, 0).unwrap();
        let g = cfg(0, 0, 0);
        let r2 = Arc::new(AtomicUsize::new(0));
        let _x = l.admit(&g, &r2, 1, b, true, 0).unwrap();
        assert_eq!(
            l.admit(&g, &r2, 1, b, true, 0).unwrap_err(),
            Limit::ResourceConnections
        );
    }

    #[test]
    fn one_source_holds_at_most_its_handshakes_until_admitted() {
        let g = GatewayConfig {
            max_handshakes_per_source: 2,
            handshake_rate: 0,
            ..GatewayConfig::default()
        };
        let l = Limits::new(&g);
        let r = Arc::new(AtomicUsize::new(0));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let mut g1 = l.admit(&g, &r, 0, a, true, 0).unwrap();
        let _g2 = l.admit(&g, &r, 0, a, true, 0).unwrap();
        assert_eq!(
            l.admit(&g, &r, 0, a, true, 0).unwrap_err(),
            Limit::SourceHandshakes
        );
        // Another source, and a trusted balancer, are not held back.
        assert!(l.admit(&g, &r, 0, b, true, 0).is_ok());
        assert!(l.admit(&g, &r, 0, a, false, 0).is_ok());
        // Admission gives the place back while the connection stays open.
        drop(g1.handshake.take());
        let _g3 = l.admit(&g, &r, 0, a, true, 0).unwrap();
        assert_eq!(
            l.admit(&g, &r, 0, a, true, 0).unwrap_err(),
            Limit::SourceHandshakes
        );
        drop((g1, _g2, _g3));
        assert!(l.per_source.is_empty(), "counts are dropped at zero");
    }
}
