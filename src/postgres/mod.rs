//! A PostgreSQL client connection, from accept to close: the startup loop,
//! admission against the grant table, the backend leg and the relay.
//!
//! The path of one connection:
//! 1. startup loop, bounded by `handshake_timeout` and by the 10,000-byte
//!    startup packet limit: GSSENCRequest and SSLRequest are answered 'N'
//!    (TLS is its own layer; bytes pipelined after either request are a
//!    protocol violation, CVE-2021-23214), CancelRequest is forwarded by key
//!    and the connection closed, StartupMessage ends the loop;
//! 2. admission: the startup `user` must hold a live grant on this resource;
//!    otherwise FATAL 28000 and close, *before any byte reaches the backend*;
//! 3. the session is registered (and so revocable) and the grant checked
//!    once more, so a revoke racing the connect cannot slip through;
//! 4. the backend is dialled and sent a clean protocol-3.0 StartupMessage;
//!    authentication is the backend's own (SCRAM, md5, trust);
//! 5. [`relay::run`] carries bytes until the session ends, then the end is
//!    audited.

pub mod cancel;
pub mod relay;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use proxy_protocols::postgres::{self as pg, StartupMessage, StartupRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::audit::Event;
use crate::config::ResourceConfig;
use crate::gateway::Gateway;
use crate::metrics::{self as m, Outcome};
use crate::sessions::NewSession;

/// At most this many SSL/GSSENC negotiation requests before the startup
/// message (libpq sends at most one of each).
const MAX_NEGOTIATIONS: usize = 2;

/// Why a startup did not produce a StartupMessage.
#[derive(Debug, thiserror::Error)]
enum StartupFailure {
    #[error("{0}")]
    Protocol(#[from] pg::StartupError),
    #[error("unexpected data after {0} request")]
    Pipelined(&'static str),
    #[error("too many encryption negotiation requests")]
    TooManyNegotiations,
    #[error("client closed the connection during startup")]
    Closed,
    #[error("startup not completed within the handshake timeout")]
    Timeout,
    #[error("i/o error during startup: {0}")]
    Io(#[from] std::io::Error),
}

enum Startup {
    Message(StartupMessage),
    /// A cancel request was handled; the connection is done.
    Cancelled,
}

/// Serve one client connection on a postgres resource.
pub async fn handle(
    gw: Arc<Gateway>,
    resource: Arc<ResourceConfig>,
    mut client: TcpStream,
    peer: SocketAddr,
) {
    let accepted = Instant::now();
    let name = resource.name().to_string();
    let timeout = gw.config.gateway.handshake_timeout.0;
    let auth_deadline = tokio::time::Instant::now() + timeout;

    let startup = tokio::select! {
        r = tokio::time::timeout(timeout, read_startup(&gw, &mut client)) => {
            r.unwrap_or(Err(StartupFailure::Timeout))
        }
        _ = gw.shutdown.cancelled() => return,
    };
    let msg = match startup {
        Ok(Startup::Message(msg)) => msg,
        Ok(Startup::Cancelled) => return,
        Err(StartupFailure::Closed) => {
            m::connection(&name, "postgres", Outcome::Error);
            return;
        }
        Err(e) => {
            tracing::debug!(%peer, resource = %name, error = %e, "startup failed");
            m::connection(&name, "postgres", Outcome::Error);
            m::handshake(accepted.elapsed());
            // PostgreSQL's own SQLSTATE for the same fault (0A000 for an
            // unsupported version, 28000 for a missing user).
            let code = match &e {
                StartupFailure::Timeout => "08006",
                StartupFailure::Protocol(p) => p.sqlstate(),
                _ => "08P01",
            };
            let _ = send_fatal(&mut client, code, &format!("jitgate: {e}"), None).await;
            return;
        }
    };
    let login = msg.user().unwrap_or_default().to_string();

    // Admission: a live grant for (resource, login), before any backend byte.
    let Some(grant) = gw.grants.find(&name, &login) else {
        deny(&gw, &mut client, &name, &login, peer, accepted).await;
        return;
    };
    let guard = gw.sessions.register(NewSession {
        grant: grant.clone(),
        login: login.clone(),
        resource: name.clone(),
        protocol: resource.protocol(),
        client_addr: peer,
        max_session: resource.max_session(),
    });
    let session = guard.session().clone();
    // Final check after registration: a revoke from now on finds the session.
    if !grant.is_live(std::time::SystemTime::now()) || session.token().is_cancelled() {
        drop(guard);
        deny(&gw, &mut client, &name, &login, peer, accepted).await;
        return;
    }
    let mut e = Event::new("session.started");
    e.session_id = Some(session.id);
    e.grant_id = Some(grant.id);
    e.principal = Some(grant.principal.clone());
    e.login = Some(login.clone());
    e.resource = Some(name.clone());
    e.protocol = Some("postgres");
    e.client_addr = Some(peer);
    e.expires_at = Some(session.deadline());
    if gw.audit.write(e).is_err() {
        // Fail closed: no session without its record.
        m::connection(&name, "postgres", Outcome::Error);
        let _ = send_fatal(
            &mut client,
            "58000",
            "jitgate: audit log unavailable, access refused",
            None,
        )
        .await;
        return;
    }
    m::handshake(accepted.elapsed());
    tracing::info!(session = %session.id, %peer, resource = %name, login = %login, grant = %grant.id, "session started");

    let backend = match connect_backend(&gw, &resource).await {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(resource = %name, error = %e, "backend unreachable");
            m::connection(&name, "postgres", Outcome::Error);
            let _ = send_fatal(
                &mut client,
                "08006",
                &format!("jitgate: cannot reach the backend of {name}"),
                None,
            )
            .await;
            gw.on_session_ended(&session, &crate::ending::EndReason::Backend, None);
            return;
        }
    };
    m::connection(&name, "postgres", Outcome::Accepted);
    let mut backend = backend;

    // A clean 3.0 startup for the backend; `_pq_.` options are ours to refuse.
    let unrecognized: Vec<&str> = msg.protocol_options().collect();
    let forward = StartupMessage {
        version: pg::ProtocolVersion { major: 3, minor: 0 },
        params: msg
            .params
            .iter()
            .filter(|(k, _)| !k.starts_with("_pq_."))
            .cloned()
            .collect(),
    };
    let mut out = BytesMut::new();
    pg::encode_startup(&forward, &mut out);
    if backend.write_all(&out).await.is_err() {
        gw.on_session_ended(&session, &crate::ending::EndReason::Backend, None);
        return;
    }
    if msg.version.minor > 0 || !unrecognized.is_empty() {
        let mut npv = BytesMut::new();
        pg::encode_negotiate_protocol_version(0, &unrecognized, &mut npv);
        if client.write_all(&npv).await.is_err() {
            gw.on_session_ended(&session, &crate::ending::EndReason::Client, None);
            return;
        }
    }

    let params = relay::RelayParams {
        session: session.clone(),
        idle: resource.idle_timeout(),
        warnings: gw
            .config
            .gateway
            .expiry_warnings
            .iter()
            .map(|d| d.0)
            .collect(),
        buffer_size: gw.config.gateway.relay_buffer_size,
        cancel_keys: gw.cancel_keys.clone(),
        backend_addr: resource.backend().to_string(),
        auth_deadline,
    };
    let (reason, since) = relay::run(params, client, backend).await;
    drop(guard);
    gw.on_session_ended(&session, &reason, since);
}

async fn connect_backend(gw: &Gateway, resource: &ResourceConfig) -> std::io::Result<TcpStream> {
    let t = gw.config.gateway.backend_connect_timeout.0;
    let s = tokio::time::timeout(t, TcpStream::connect(resource.backend()))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Refuse a client that holds no live grant: audit, count, FATAL 28000.
async fn deny(
    gw: &Gateway,
    client: &mut TcpStream,
    resource: &str,
    login: &str,
    peer: SocketAddr,
    accepted: Instant,
) {
    let mut e = Event::new("session.denied");
    e.login = Some(login.to_string());
    e.resource = Some(resource.to_string());
    e.protocol = Some("postgres");
    e.client_addr = Some(peer);
    e.outcome = Some("no_grant");
    let _ = gw.audit.write(e);
    m::connection(resource, "postgres", Outcome::Denied);
    m::handshake(accepted.elapsed());
    tracing::info!(%peer, resource, login, "session denied: no active grant");
    let message = format!("jitgate: no active access grant for {login:?} on {resource:?}");
    let hint =
        format!("request access with: jitgate request {resource} --for 30m --reason \"...\"");
    let _ = send_fatal(client, "28000", &message, Some(&hint)).await;
}

async fn send_fatal(
    client: &mut TcpStream,
    code: &str,
    message: &str,
    hint: Option<&str>,
) -> std::io::Result<()> {
    let mut out = BytesMut::new();
    pg::encode_error_response(
        &pg::ErrorFields {
            severity: "FATAL",
            code,
            message,
            detail: None,
            hint,
        },
        &mut out,
    );
    client.write_all(&out).await?;
    client.shutdown().await
}

/// The startup loop. Returns the StartupMessage, or `Cancelled` after
/// forwarding a cancel request.
async fn read_startup(gw: &Gateway, client: &mut TcpStream) -> Result<Startup, StartupFailure> {
    let mut buf = BytesMut::with_capacity(512);
    let mut negotiations = 0usize;
    loop {
        match pg::decode_startup(&mut buf)? {
            None => {
                // decode_startup has checked the announced length, so the
                // buffer never grows past MAX_STARTUP_PACKET_LEN.
                buf.reserve(1024);
                if client.read_buf(&mut buf).await? == 0 {
                    return Err(StartupFailure::Closed);
                }
            }
            Some(req @ (StartupRequest::Ssl | StartupRequest::GssEnc)) => {
                let what = if req == StartupRequest::Ssl {
                    "SSL"
                } else {
                    "GSSENC"
                };
                // CVE-2021-23214: nothing may follow the request before our answer.
                if !buf.is_empty() {
                    return Err(StartupFailure::Pipelined(what));
                }
                negotiations += 1;
                if negotiations > MAX_NEGOTIATIONS {
                    return Err(StartupFailure::TooManyNegotiations);
                }
                client.write_all(&[pg::SSL_NOT_SUPPORTED]).await?;
            }
            Some(StartupRequest::Cancel {
                process_id,
                secret_key,
            }) => {
                if let Some(target) = gw.cancel_keys.lookup(process_id, secret_key) {
                    let t = gw.config.gateway.backend_connect_timeout.0;
                    if let Err(e) = cancel::send_cancel(&target, t).await {
                        tracing::warn!(error = %e, "forwarding a cancel request failed");
                    }
                } else {
                    tracing::debug!("cancel request with an unknown key dropped");
                }
                return Ok(Startup::Cancelled);
            }
            Some(StartupRequest::Startup(msg)) => return Ok(Startup::Message(msg)),
        }
    }
}
