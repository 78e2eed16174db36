//! Start and stop the gateway: bind every listener, run the accept loops,
//! the grant expiry task and the admin API under one cancellation root.
//!
//! Shutdown cancels the root token: every grant's token and every
//! session's token (both are its children) is cancelled, each session
//! tells its client why and closes both sockets, and [`Running::shutdown`]
//! waits for the tracked tasks.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::accept::Acceptor;
use crate::config::{Cidr, Config, Protocol, ResourceConfig};
use crate::gateway::Gateway;
use crate::limits::Limit;
use crate::metrics::{self as m, Outcome};
use crate::socket::{self, Endpoints};

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The state directory, audit log or journal could not be opened.
    #[error(transparent)]
    State(#[from] crate::gateway::OpenError),
    /// TLS material could not be loaded.
    #[error("resource {resource}: {source}")]
    Tls {
        /// The resource.
        resource: String,
        /// The cause.
        source: crate::tls::TlsError,
    },
    /// A listener could not be bound.
    #[error("cannot listen on {addr} for {what}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// What the listener is for.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// A running gateway.
pub struct Running {
    /// Shared state.
    pub gateway: Arc<Gateway>,
    /// The bound admin API address.
    pub admin_addr: SocketAddr,
    /// The bound metrics-only address, if configured.
    pub metrics_addr: Option<SocketAddr>,
}

impl Running {
    /// The bound address of a resource.
    pub fn resource_addr(&self, name: &str) -> Option<SocketAddr> {
        self.gateway.listeners.addr(name)
    }

    /// Stop: end every session (reason `shutdown`), stop listening, and
    /// wait up to `grace` for the connection tasks.
    pub async fn shutdown(&self, grace: Duration) {
        self.gateway.shutdown.cancel();
        self.gateway.tracker.close();
        if tokio::time::timeout(grace, self.gateway.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("some connections did not close within the shutdown grace");
            // Their tasks are dropped with the worker threads' runtimes,
            // which closes their sockets.
            self.gateway.workers.stop();
        }
        // Journal records are fsynced as they are written; the audit log is
        // flushed here so a clean stop loses nothing even on power loss.
        if let Err(e) = self.gateway.audit.sync() {
            tracing::error!(error = %e, "could not flush the audit log at shutdown");
        }
    }

    /// Resolves when shutdown has been requested.
    pub async fn stopped(&self) {
        self.gateway.shutdown.cancelled().await
    }
}

async fn bind(addr: SocketAddr, what: &str) -> Result<TcpListener, StartError> {
    listen(addr).map_err(|source| StartError::Bind {
        addr,
        what: what.to_string(),
        source,
    })
}

/// Connections the kernel may queue before jitgate accepts them (capped
/// by `net.core.somaxconn`). The standard library's 128 overflows when
/// thousands of clients connect at once (a reconnect storm after a
/// restart), and an overflowing queue drops SYNs, which clients retry only
/// after a second.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Bind a listener with [`LISTEN_BACKLOG`] (and `SO_REUSEADDR`, as the
/// standard library sets it on Unix, so a restart can bind again at once).
pub(crate) fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Bind everything and start serving.
pub async fn start(config: Config) -> Result<Running, StartError> {
    let gw = Arc::new(Gateway::new(config)?);

    // Bind all listeners before serving any, so a bad address fails start-up whole.
    let mut listeners = Vec::new();
    for r in &gw.config().resources {
        let l = bind(r.listen(), &format!("resource {}", r.name())).await?;
        listeners.push((r.clone(), l));
    }
    let admin = bind(gw.config().gateway.admin_listen, "the admin API").await?;
    let metrics = match gw.config().gateway.metrics_listen {
        Some(a) => Some(bind(a, "metrics").await?),
        None => None,
    };

    let admin_addr = admin.local_addr().map_err(|source| StartError::Bind {
        addr: gw.config().gateway.admin_listen,
        what: "the admin API".into(),
        source,
    })?;
    tracing::info!(addr = %admin_addr, "admin API listening (also /metrics and /healthz)");
    gw.tracker.spawn(crate::admin::serve(
        gw.clone(),
        admin,
        crate::admin::Surface::Full,
    ));
    let mut metrics_addr = None;
    if let Some(l) = metrics {
        let a = l.local_addr().ok();
        metrics_addr = a;
        tracing::info!(addr = ?a, "metrics listening");
        gw.tracker.spawn(crate::admin::serve(
            gw.clone(),
            l,
            crate::admin::Surface::MetricsOnly,
        ));
    }

    for (r, l) in listeners {
        let name = r.name().to_string();
        crate::reload::spawn_listener(&gw, r, l).map_err(|source| StartError::Tls {
            resource: name,
            source,
        })?;
    }

    {
        let gw2 = gw.clone();
        gw.tracker.spawn(async move {
            let stop = gw2.shutdown.clone();
            gw2.grants
                .run_expiry(stop, |g| gw2.on_grant_expired(g))
                .await;
        });
    }

    {
        // Request TTLs, `grant.expiring` notices and the audit log's
        // recovery: a once-a-second sweep (second precision is what they need).
        let gw2 = gw.clone();
        gw.tracker.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = gw2.shutdown.cancelled() => return,
                    _ = tick.tick() => {
                        gw2.sweep(std::time::SystemTime::now());
                        // Recover from an audit outage with no traffic too.
                        gw2.audit.retry();
                    }
                }
            }
        });
    }

    Ok(Running {
        gateway: gw,
        admin_addr,
        metrics_addr,
    })
}

/// Accept connections for one resource until `stop` (reload removed or
/// moved it, or shutdown). Each connection gets the resource's settings as
/// they are when it is accepted.
pub(crate) async fn accept_loop(
    gw: Arc<Gateway>,
    resource: Arc<ArcSwap<ResourceConfig>>,
    listener: TcpListener,
    stop: CancellationToken,
) {
    let open_here = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let name = resource.load().name().to_string();
    let mut acceptor = Acceptor::new(listener, format!("resource {name}"));
    loop {
        let protocol = resource.load().protocol();
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            a = acceptor.next(|| refusal(protocol, Limit::Fds).to_vec()) => a,
        };
        let resource = resource.load_full();
        let config = gw.config();
        let ip = socket::canonical(peer).ip();
        // A trusted load balancer speaks for many clients: its address is
        // not one source, so the per-source handshake cap does not apply.
        let balancer = Cidr::any_contains(resource.accept_proxy_protocol_from(&config.gateway), ip);
        let place = gw.limits.admit(
            &config.gateway,
            &open_here,
            resource.max_connections,
            ip,
            !balancer,
            gw.sessions.len(),
        );
        let guard = match place {
            Ok(g) => g,
            Err(limit) => {
                m::limited(limit.label());
                m::connection(
                    resource.name(),
                    resource.protocol().as_str(),
                    Outcome::Error,
                );
                tracing::debug!(%peer, resource = resource.name(), limit = limit.label(), "connection refused by a limit");
                gw.tracker
                    .spawn(refuse_over_limit(resource.protocol(), stream, limit));
                continue;
            }
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(%peer, error = %e, "set_nodelay failed");
        }
        let gw2 = gw.clone();
        let r = resource.clone();
        let mut guard = guard;
        // Given back by admission (or when the connection ends first).
        let slot = std::cell::RefCell::new(guard.handshake.take());
        gw.workers
            .spawn(&gw.tracker, stream, move |stream| async move {
                crate::limits::HANDSHAKE
                    .scope(slot, dispatch(gw2, r, stream, peer))
                    .await;
                drop(guard);
            });
    }
}

/// Tell a client refused by a limit why, in its protocol where it has a
/// way, and close. Bounded: a client that does not read is dropped.
async fn refuse_over_limit(protocol: Protocol, mut stream: TcpStream, limit: Limit) {
    use tokio::io::AsyncWriteExt;
    let out = refusal(protocol, limit);
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        if !out.is_empty() {
            stream.write_all(&out).await?;
        }
        stream.shutdown().await
    })
    .await;
}

/// The protocol's "too many connections" answer for `limit` (empty for
/// SSH and TCP, which are simply closed).
fn refusal(protocol: Protocol, limit: Limit) -> bytes::BytesMut {
    let text = format!("jitgate: too many connections ({})", limit.label());
    let mut out = bytes::BytesMut::new();
    match protocol {
        Protocol::Postgres => proxy_protocols::postgres::encode_error_response(
            &proxy_protocols::postgres::ErrorFields {
                severity: "FATAL",
                code: "53300",
                message: &text,
                detail: None,
                hint: None,
            },
            &mut out,
        ),
        Protocol::Mysql => {
            // The server speaks first: an ERR as the first packet is how
            // MySQL itself refuses with 1040.
            let mut payload = Vec::new();
            proxy_protocols::mysql::encode_err(1040, Some("08004"), &text, &mut payload);
            proxy_protocols::mysql::encode_packet(0, &payload, &mut out);
        }
        Protocol::Ssh | Protocol::Tcp => {}
    }
    out
}

async fn dispatch(
    gw: Arc<Gateway>,
    resource: Arc<ResourceConfig>,
    mut stream: TcpStream,
    peer: SocketAddr,
) {
    let peer = socket::canonical(peer);
    let real = Endpoints {
        client: peer,
        local: stream
            .local_addr()
            .map(socket::canonical)
            .unwrap_or_else(|_| resource.listen()),
    };
    // A trusted load balancer names the real client in a PROXY header.
    let ends = if Cidr::any_contains(
        resource.accept_proxy_protocol_from(&gw.config().gateway),
        peer.ip(),
    ) {
        let t = gw.config().gateway.handshake_timeout.0;
        let read = tokio::select! {
            r = tokio::time::timeout(t, socket::read_proxy_header(&mut stream, real)) => r,
            _ = gw.shutdown.cancelled() => return,
        };
        match read {
            Ok(Ok(ends)) => ends,
            Ok(Err(e)) => {
                tracing::warn!(%peer, resource = resource.name(), error = %e, "bad PROXY protocol header from a trusted peer");
                m::connection(
                    resource.name(),
                    resource.protocol().as_str(),
                    Outcome::Error,
                );
                return;
            }
            Err(_) => {
                tracing::warn!(%peer, resource = resource.name(), "no PROXY protocol header from a trusted peer within the handshake timeout");
                m::connection(
                    resource.name(),
                    resource.protocol().as_str(),
                    Outcome::Error,
                );
                return;
            }
        }
    } else {
        real
    };
    // Each protocol's task state goes on the heap, sized for that protocol
    // alone: a TCP session does not carry MySQL's handshake state.
    match resource.protocol() {
        Protocol::Postgres => {
            Box::pin(crate::postgres::handle(gw, resource, stream, ends.client)).await
        }
        Protocol::Mysql => Box::pin(crate::mysql::handle(gw, resource, stream, ends.client)).await,
        Protocol::Ssh => Box::pin(crate::ssh::handle(gw, resource, stream, ends)).await,
        Protocol::Tcp => Box::pin(crate::tcp::handle(gw, resource, stream, ends)).await,
    }
}

#[cfg(test)]
mod task_size {
    //! Every connection task's state is allocated for the task's whole life,
    //! so its size is memory per idle session: a 4 KiB array once sat in
    //! every TCP task. These bounds hold in debug and release builds.

    /// The size of the future an async function of four arguments returns.
    fn future_of<A, B, C, D, F>(_: fn(A, B, C, D) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    #[test]
    fn connection_tasks_stay_small() {
        let dispatch = future_of(super::dispatch);
        let handlers = [
            ("postgres", future_of(crate::postgres::handle)),
            ("mysql", future_of(crate::mysql::handle)),
            ("ssh", future_of(crate::ssh::handle)),
            ("tcp", future_of(crate::tcp::handle)),
        ];
        eprintln!("dispatch {dispatch} bytes; {handlers:?}");
        assert!(dispatch <= 1024, "dispatch future is {dispatch} bytes");
        for (name, size) in handlers {
            assert!(size <= 4096, "{name} connection future is {size} bytes");
        }
    }
}
