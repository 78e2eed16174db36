//! The admin HTTP API (axum): routing, bearer-token authentication, roles
//! and JSON errors. Handlers live in [`routes`].
//!
//! Invariants: `/healthz` and `/metrics` answer without a token (scrapers);
//! every `/v1` route needs one. The caller's address ([`Origin`]) is the TCP
//! peer's; `X-Forwarded-For` is believed only from `trusted_proxies`. Tokens are hashed and compared to every
//! configured hash in constant time. Every error is `{"error": "..."}` with
//! the right status: 400 bad input, 401 no or invalid token, 403 role, 404,
//! 409 conflict, 503 audit log unavailable.

mod routes;
mod workflow_routes;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::accept::Acceptor;

use crate::api::ErrorBody;
use crate::audit::Health;
use crate::config::{Cidr, Role, TokenHash};
use crate::gateway::{Gateway, OpError};

/// Largest request body accepted.
const MAX_BODY: usize = 64 * 1024;

/// Which routes a listener serves.
#[derive(Debug, Clone, Copy)]
pub enum Surface {
    /// The whole API plus `/metrics` and `/healthz`.
    Full,
    /// Only `/metrics` and `/healthz` (the optional `metrics_listen`).
    MetricsOnly,
}

/// The default of `gateway.admin_max_connections`: admin connections served
/// at once; more are closed at accept (counted as
/// `jitgate_limited_total{limit="admin_connections"}`), so a flood on the
/// admin port cannot take the file descriptors the resources need.
pub const MAX_ADMIN_CONNECTIONS: usize = 512;

/// What a connection refused for lack of file descriptors is sent.
fn overloaded() -> Vec<u8> {
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: 42\r\nconnection: close\r\n\r\n{\"error\":\"jitgate: too many connections\"}\n".to_vec()
}

/// Longest a client may take for its TLS handshake on the admin API.
const ADMIN_TLS_HANDSHAKE: Duration = Duration::from_secs(10);

/// Serve the API on `listener` until shutdown, over HTTPS when
/// `[gateway.admin_tls]` is set.
///
/// Every connection is bounded: at most `admin_max_connections` at once;
/// a request's headers must arrive within `admin_request_timeout` (hyper's
/// header timer, which also ends idle keep-alive connections), and its body
/// within that long again, at most [`MAX_BODY`] bytes ([`receive`]). The
/// handler then runs to completion: cutting one off halfway (a reload, a
/// revoke) would leave its work half done.
pub async fn serve(gw: Arc<Gateway>, listener: TcpListener, surface: Surface) {
    let stop = gw.shutdown.clone();
    let tls = match gw.config().gateway.admin_tls.clone() {
        None => None,
        Some(settings) => match crate::tls::ServerTls::new(settings, &[b"http/1.1"]) {
            Ok(tls) => Some(Arc::new(tls)),
            // Checked when the config was loaded; files changed since.
            Err(e) => {
                tracing::error!(error = %e, "admin API not started: TLS material unusable");
                return;
            }
        },
    };
    let app = router(gw.clone(), surface);
    let slots = Arc::new(Semaphore::new(gw.config().gateway.admin_max_connections));
    let plain = tls.is_none();
    let mut acceptor = Acceptor::new(listener, "the admin API");
    loop {
        let (tcp, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            // Out of file descriptors: refused as on the resource ports, with
            // a 503 in plaintext (no plaintext answer fits a TLS listener).
            a = acceptor.next(|| if plain { overloaded() } else { Vec::new() }) => a,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            crate::metrics::limited(crate::limits::Limit::AdminConnections.label());
            tracing::debug!(%peer, "admin API connection refused: too many open");
            drop(tcp);
            continue;
        };
        let timeout = gw.config().gateway.admin_request_timeout.0;
        let (app, tls, stop) = (app.clone(), tls.clone(), stop.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let Some(tls) = tls else {
                serve_connection(tcp, app, peer, timeout, stop).await;
                return;
            };
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.config());
            let handshake = tokio::time::timeout(ADMIN_TLS_HANDSHAKE, acceptor.accept(tcp));
            let stream = tokio::select! {
                _ = stop.cancelled() => return,
                r = handshake => match r {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "admin API TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                },
            };
            serve_connection(stream, app, peer, timeout, stop).await;
        });
    }
}

/// Serve HTTP/1.1 on one connection until the client closes it, a timeout
/// ends it or the gateway stops (requests in flight are finished first,
/// for at most `timeout`).
async fn serve_connection<S>(
    io: S,
    app: Router,
    peer: SocketAddr,
    timeout: Duration,
    stop: tokio_util::sync::CancellationToken,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let app = app.clone();
        async move { Ok::<_, std::convert::Infallible>(receive(app, req, peer, timeout).await) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(timeout);
    let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(io), service);
    tokio::pin!(conn);
    let ended = tokio::select! {
        r = conn.as_mut() => r,
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            match tokio::time::timeout(timeout, conn.as_mut()).await {
                Ok(r) => r,
                Err(_) => return,
            }
        }
    };
    if let Err(e) = ended {
        tracing::debug!(%peer, error = %e, "admin API connection ended");
    }
}

/// Read the whole body (within `timeout`, at most [`MAX_BODY`] bytes),
/// then hand the request to the router with the peer's address as
/// [`ConnectInfo`]. A body too slow gets 408, one too large 413, one that
/// breaks off 400; each closes the connection.
async fn receive(
    app: Router,
    req: Request<Incoming>,
    peer: SocketAddr,
    timeout: Duration,
) -> Response {
    let (mut parts, body) = req.into_parts();
    let read = http_body_util::BodyExt::collect(http_body_util::Limited::new(body, MAX_BODY));
    let body = match tokio::time::timeout(timeout, read).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return closing(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body larger than {MAX_BODY} bytes"),
            ))
        }
        Ok(Err(e)) => {
            return closing(ApiError::bad_request(format!(
                "request body could not be read: {e}"
            )))
        }
        Err(_) => {
            return closing(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "request body not received within {}",
                    crate::config::HumanDuration(timeout)
                ),
            ))
        }
    };
    parts.extensions.insert(ConnectInfo(peer));
    let req = Request::from_parts(parts, axum::body::Body::from(body));
    let service = hyper_util::service::TowerToHyperService::new(app);
    match hyper::service::Service::call(&service, req).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

/// `e` as a response that closes the connection (what is left of the
/// request on it was not read).
fn closing(e: ApiError) -> Response {
    let mut response = e.into_response();
    response.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    response
}

/// The router, for embedding and tests.
pub fn router(gw: Arc<Gateway>, surface: Surface) -> Router {
    let base = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics));
    let app = match surface {
        Surface::MetricsOnly => base,
        Surface::Full => base
            .route(
                "/v1/grants",
                get(routes::list_grants).post(routes::create_grant),
            )
            .route("/v1/grants/{id}", delete(routes::revoke_grant))
            .route("/v1/grants/{id}/extend", post(workflow_routes::extend))
            .route("/v1/grants/{id}/release", post(workflow_routes::release))
            .route(
                "/v1/requests",
                get(workflow_routes::list_requests).post(workflow_routes::create_request),
            )
            .route("/v1/requests/{id}/approve", post(workflow_routes::approve))
            .route("/v1/requests/{id}/deny", post(workflow_routes::deny))
            .route("/v1/policy/explain", get(workflow_routes::explain))
            .route("/v1/reload", post(routes::reload))
            .route("/v1/sessions", get(routes::list_sessions))
            .route("/v1/sessions/{id}", delete(routes::kill_session)),
    };
    app.fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(gw)
}

/// `ok`, or `degraded: …` while the audit log cannot be written. Always
/// 200: the process is alive and its live sessions must go on, so a
/// liveness probe must not restart it; alert on `jitgate_audit_healthy`.
async fn healthz(State(gw): State<Arc<Gateway>>) -> String {
    match gw.audit.health() {
        Health::Healthy => "ok\n".into(),
        Health::Failing {
            since,
            error,
            failed_writes,
        } => format!(
            "degraded: audit log unavailable since {} ({failed_writes} failed writes; {error}): new sessions and grants are refused\n",
            crate::timefmt::rfc3339(since)
        ),
    }
}

async fn metrics(State(gw): State<Arc<Gateway>>) -> Response {
    match &gw.prometheus {
        Some(h) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            h.render(),
        )
            .into_response(),
        None => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics recorder not installed",
        )
        .into_response(),
    }
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such route")
}

/// A route that exists, asked with a method it does not take: JSON like
/// every other error.
async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{} does not take {method}", uri.path()),
    )
}

/// An API error: status and one line.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    /// An error with a status.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    /// 400.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(ErrorBody {
                error: self.message,
            }),
        )
            .into_response()
    }
}

impl From<OpError> for ApiError {
    fn from(e: OpError) -> Self {
        let status = match &e {
            OpError::NotFound(_) => StatusCode::NOT_FOUND,
            OpError::Invalid(_) => StatusCode::BAD_REQUEST,
            OpError::Forbidden(_) => StatusCode::FORBIDDEN,
            OpError::Conflict(_) => StatusCode::CONFLICT,
            OpError::Audit(_) | OpError::Journal(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError::new(status, e.to_string())
    }
}

/// The authenticated caller of a `/v1` route.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The user's name.
    pub name: String,
    roles: Vec<Role>,
}

impl Caller {
    /// Whether the caller holds `role` (admin holds every role).
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role) || self.roles.contains(&Role::Admin)
    }

    /// 403 unless the caller holds `role`.
    pub fn require(&self, role: Role) -> Result<(), ApiError> {
        if self.has(role) {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!("user {:?} lacks the {role:?} role", self.name).to_lowercase(),
            ))
        }
    }

    /// Whether the caller may see everyone's grants and sessions.
    pub fn sees_all(&self) -> bool {
        self.has(Role::Approver)
    }
}

impl FromRequestParts<Arc<Gateway>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, gw: &Arc<Gateway>) -> Result<Self, ApiError> {
        let unauthorized = || ApiError::new(StatusCode::UNAUTHORIZED, "missing or invalid token");
        let value = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(unauthorized)?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(unauthorized)?;
        let presented = TokenHash::of_token(token);
        // Compare against every user, in constant time, without stopping
        // at the first match.
        let mut found = None;
        let config = gw.config();
        for u in &config.users {
            if u.token_sha256.get_ref().ct_eq(&presented) {
                found = Some(u);
            }
        }
        let Some(u) = found else {
            // Guessing tokens is slowed per address: after a burst of
            // failures, 429 until the allowance refills.
            if let Some(ConnectInfo(peer)) = parts.extensions.get::<ConnectInfo<SocketAddr>>() {
                if !gw
                    .limits
                    .admin_auth_failed(crate::socket::canonical(*peer).ip())
                {
                    crate::metrics::limited(crate::limits::Limit::AdminAuth.label());
                    return Err(ApiError::new(
                        StatusCode::TOO_MANY_REQUESTS,
                        "too many failed token checks from this address; retry later",
                    ));
                }
            }
            return Err(unauthorized());
        };
        Ok(Caller {
            name: u.name().to_string(),
            roles: u.roles.clone(),
        })
    }
}

/// The address an API request came from: the TCP peer's, or, when the peer
/// is one of `trusted_proxies`, the client named in `X-Forwarded-For`.
/// `None` only when the router runs without connection info.
#[derive(Debug, Clone, Copy)]
pub struct Origin(pub Option<IpAddr>);

impl FromRequestParts<Arc<Gateway>> for Origin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, gw: &Arc<Gateway>) -> Result<Self, ApiError> {
        let Some(ConnectInfo(peer)) = parts.extensions.get::<ConnectInfo<SocketAddr>>() else {
            return Ok(Origin(None));
        };
        let forwarded = parts
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok());
        Ok(Origin(Some(forwarded_client(
            peer.ip(),
            forwarded,
            &gw.config().gateway.trusted_proxies,
        ))))
    }
}

/// The client behind `peer`: `peer` itself unless it is trusted; otherwise
/// the `X-Forwarded-For` entries are walked from the right (the hop nearest
/// to us) past every trusted proxy, and the first untrusted address is the
/// client. An entry that is not an address stops the walk: what is left of
/// it could have been written by anyone.
pub fn forwarded_client<'a>(
    peer: IpAddr,
    headers: impl Iterator<Item = &'a str>,
    trusted: &[Cidr],
) -> IpAddr {
    let mut client = peer.to_canonical();
    if !Cidr::any_contains(trusted, client) {
        return client;
    }
    let entries: Vec<&str> = headers.flat_map(|h| h.split(',')).map(str::trim).collect();
    for entry in entries.iter().rev() {
        let Some(ip) = parse_forwarded_ip(entry) else {
            return client;
        };
        client = ip.to_canonical();
        if !Cidr::any_contains(trusted, client) {
            return client;
        }
    }
    client
}

/// An `X-Forwarded-For` entry: an address, possibly with a port
/// (`192.0.2.1:1234`, `[2001:db8::1]:1234`).
fn parse_forwarded_ip(entry: &str) -> Option<IpAddr> {
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip);
    }
    entry.parse::<SocketAddr>().ok().map(|a| a.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn nets(v: &[&str]) -> Vec<Cidr> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_peers() {
        let trusted = nets(&["10.0.0.0/8"]);
        // An untrusted peer: its header is ignored.
        assert_eq!(
            forwarded_client(ip("192.0.2.9"), ["198.51.100.1"].into_iter(), &trusted),
            ip("192.0.2.9")
        );
        // A trusted peer: the nearest untrusted hop is the client.
        assert_eq!(
            forwarded_client(ip("10.0.0.1"), ["198.51.100.1"].into_iter(), &trusted),
            ip("198.51.100.1")
        );
        // A client-forged left part does not win over the hop our proxy added.
        assert_eq!(
            forwarded_client(
                ip("10.0.0.1"),
                ["6.6.6.6, 198.51.100.1", "10.0.0.2"].into_iter(),
                &trusted
            ),
            ip("198.51.100.1")
        );
        // Garbage stops the walk at the last good hop.
        assert_eq!(
            forwarded_client(
                ip("10.0.0.1"),
                ["1.2.3.4, junk, 10.0.0.3"].into_iter(),
                &trusted
            ),
            ip("10.0.0.3")
        );
        // Ports and IPv4-mapped peers.
        assert_eq!(
            forwarded_client(
                ip("::ffff:10.0.0.1"),
                ["[2001:db8::1]:443"].into_iter(),
                &trusted
            ),
            ip("2001:db8::1")
        );
        // No header from a trusted peer: the peer.
        assert_eq!(
            forwarded_client(ip("10.0.0.1"), std::iter::empty(), &trusted),
            ip("10.0.0.1")
        );
        // Nothing trusted: never read.
        assert_eq!(
            forwarded_client(ip("10.0.0.1"), ["1.2.3.4"].into_iter(), &[]),
            ip("10.0.0.1")
        );
    }
}
