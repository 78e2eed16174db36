//! A PostgreSQL client connection, from accept to close: the startup loop,
//! admission against the grant table, the backend leg and the relay.
//!
//! The path of one connection:
//! 1. startup loop, bounded by `handshake_timeout` and by the 10,000-byte
//!    startup packet limit: GSSENCRequest and SSLRequest are answered 'N'
//!    (TLS is its own layer; bytes pipelined after either request are a
//!    protocol violation, CVE-2021-23214), CancelRequest is forwarded by key
//!    and the connection closed, StartupMessage ends the loop (bytes read
//!    with it, sent before the server answered, are refused too);
//! 2. admission ([`crate::admission::admit`]): the startup `user` must hold
//!    a live grant on this resource; otherwise FATAL 28000 and close,
//!    *before any byte reaches the backend*;
//! 3. the backend is dialled and sent a clean protocol-3.0 StartupMessage;
//!    authentication is the backend's own (SCRAM, md5, trust);
//! 4. [`crate::relay::run`] with [`wire::PgWire`] carries bytes until the
//!    session ends, then the end is audited.

pub mod cancel;
pub mod wire;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use proxy_protocols::postgres::{self as pg, StartupMessage, StartupRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::admission::{self, Identity, Refusal};
use crate::config::{BackendTlsMode, ResourceConfig, TlsIdentity};
use crate::conn::Conn;
use crate::ending::EndReason;
use crate::gateway::Gateway;
use crate::metrics::{self as m, Outcome};
use crate::relay::{self, RelayParams};
use crate::tls::{BackendTls, ServerTls};

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
    #[error("unexpected data after the startup message, before the server's answer")]
    PipelinedAfterStartup,
    #[error("too many encryption negotiation requests")]
    TooManyNegotiations,
    #[error("client closed the connection during startup")]
    Closed,
    #[error("startup not completed within the handshake timeout")]
    Timeout,
    #[error("i/o error during startup: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Tls(String),
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
    client: TcpStream,
    peer: SocketAddr,
) {
    let accepted = Instant::now();
    let name = resource.name().to_string();
    let timeout = gw.config().gateway.handshake_timeout.0;
    let auth_deadline = tokio::time::Instant::now() + timeout;
    let Some(tls_state) = gw.listeners.tls_state(&name) else {
        // A reload is taking this listener away: fail closed.
        tracing::debug!(%peer, resource = %name, "refused: the resource's listener is being removed");
        m::connection(&name, "postgres", Outcome::Error);
        return;
    };
    let tls = tls_state.client;
    let mut conn = Some(Conn::Plain(client));

    let startup = tokio::select! {
        r = tokio::time::timeout(timeout, read_startup(&gw, tls.as_deref(), &mut conn)) => {
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
            if let Some(c) = conn.as_mut() {
                let _ = send_fatal(c, code, &format!("jitgate: {e}"), None).await;
            }
            return;
        }
    };
    let Some(mut client) = conn else { return };
    let login = msg.user().unwrap_or_default().to_string();

    // A grant opens SQL sessions; a replication connection would stream
    // the whole database (or its WAL) out. Refused, whoever asks.
    if msg.get("replication").is_some_and(|v| {
        !matches!(
            v.to_ascii_lowercase().as_str(),
            "false" | "off" | "no" | "0"
        )
    }) {
        let text = "jitgate: replication connections are not allowed through jitgate";
        admission::deny_by_rule(&gw, &resource, &login, peer, accepted, "replication", text);
        let _ = send_fatal(&mut client, "28000", text, None).await;
        return;
    }

    // TLS policy of the resource, before the grant table is consulted.
    if let Some(t) = &tls {
        let refusal = if t.settings.require && !client.is_tls() {
            Some((
                "tls_required",
                format!("jitgate: {name} requires TLS (connect with sslmode=require)"),
            ))
        } else if t.settings.identity == TlsIdentity::Certificate
            && !certificate_names_login(&client, &login)
        {
            Some((
                "certificate_login",
                format!("jitgate: the client certificate does not name login {login:?}"),
            ))
        } else {
            None
        };
        if let Some((outcome, text)) = refusal {
            admission::deny_by_rule(&gw, &resource, &login, peer, accepted, outcome, &text);
            let _ = send_fatal(&mut client, "28000", &text, None).await;
            return;
        }
    }

    // Admission, before any byte reaches the backend.
    let admitted = match admission::admit(&gw, &resource, Identity::Login(&login), peer, accepted) {
        Ok(a) => a,
        Err(Refusal::NoGrant) => {
            let message = admission::no_grant_message(&login, &name);
            let hint = admission::no_grant_hint(&name);
            let _ = send_fatal(&mut client, "28000", &message, Some(&hint)).await;
            return;
        }
        Err(Refusal::AuditUnavailable) => {
            let _ = send_fatal(
                &mut client,
                "58000",
                "jitgate: audit log unavailable, access refused",
                None,
            )
            .await;
            return;
        }
    };
    let session = admitted.session.clone();

    let backend_tls = tls_state.backend;
    let mut backend = match connect_backend(&gw, &resource, &backend_tls).await {
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
            drop(client);
            gw.on_session_ended(&session, &EndReason::Backend, None);
            drop(admitted.guard);
            return;
        }
    };
    m::connection(&name, "postgres", Outcome::Accepted);

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
    if backend.write_all(&out).await.is_err() || backend.flush().await.is_err() {
        drop((client, backend));
        gw.on_session_ended(&session, &EndReason::Backend, None);
        drop(admitted.guard);
        return;
    }
    if msg.version.minor > 0 || !unrecognized.is_empty() {
        let mut npv = BytesMut::new();
        pg::encode_negotiate_protocol_version(0, &unrecognized, &mut npv);
        if client.write_all(&npv).await.is_err() {
            drop((client, backend));
            gw.on_session_ended(&session, &EndReason::Client, None);
            drop(admitted.guard);
            return;
        }
    }

    let params = RelayParams {
        session: session.clone(),
        idle: resource.idle_timeout(),
        warnings: gw
            .config()
            .gateway
            .expiry_warnings
            .iter()
            .map(|d| d.0)
            .collect(),
        buffer_size: gw.config().gateway.relay_buffer_size,
        handshake_deadline: Some(auth_deadline),
    };
    let wire = wire::PgWire::new(gw.cancel_keys.clone(), resource.backend().to_string());
    let (reason, since) = relay::run(params, wire, client, backend).await;
    gw.on_session_ended(&session, &reason, since);
    drop(admitted.guard);
}

/// Whether the TLS client certificate names `login` (CN or a SAN).
fn certificate_names_login(client: &Conn, login: &str) -> bool {
    let Conn::TlsServer(s) = client else {
        return false;
    };
    s.get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .is_some_and(|leaf| {
            crate::tls::certificate_names(leaf)
                .iter()
                .any(|n| n == login)
        })
}

async fn connect_backend(
    gw: &Gateway,
    resource: &ResourceConfig,
    tls: &BackendTls,
) -> std::io::Result<Conn> {
    let t = gw.config().gateway.backend_connect_timeout.0;
    let fut = async {
        let mut s = TcpStream::connect(resource.backend()).await?;
        s.set_nodelay(true)?;
        if tls.mode == BackendTlsMode::Disable {
            return Ok(Conn::Plain(s));
        }
        // SSLRequest, then 'S' (TLS follows) or 'N' (plaintext only).
        let mut req = BytesMut::new();
        pg::encode_ssl_request(&mut req);
        s.write_all(&req).await?;
        let mut answer = [0u8; 1];
        s.read_exact(&mut answer).await?;
        match (answer[0], tls.mode, &tls.config) {
            (b'S', _, Some(cfg)) => {
                let stream = tokio_rustls::TlsConnector::from(cfg.clone())
                    .connect(tls.server_name.clone(), s)
                    .await?;
                Ok(Conn::TlsClient(Box::new(stream)))
            }
            (b'N', BackendTlsMode::Prefer, _) => Ok(Conn::Plain(s)),
            _ => Err(std::io::Error::other("the backend refused TLS")),
        }
    };
    tokio::time::timeout(t, fut)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))?
}

async fn send_fatal(
    client: &mut Conn,
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

/// The startup loop over `conn` (taken and replaced by its TLS form on an
/// accepted SSLRequest or a direct TLS handshake). Returns the
/// StartupMessage, or `Cancelled` after forwarding a cancel request.
async fn read_startup(
    gw: &Gateway,
    tls: Option<&ServerTls>,
    conn: &mut Option<Conn>,
) -> Result<Startup, StartupFailure> {
    let mut buf = BytesMut::with_capacity(512);
    let mut negotiations = 0usize;
    // PostgreSQL 17 direct TLS: the first byte is a TLS handshake record.
    if let Some(Conn::Plain(tcp)) = conn.as_ref() {
        let mut first = [0u8; 1];
        if tcp.peek(&mut first).await? == 0 {
            return Err(StartupFailure::Closed);
        }
        if first[0] == 0x16 {
            let Some(tls) = tls else {
                return Err(StartupFailure::Tls(
                    "TLS is not configured for this resource".into(),
                ));
            };
            upgrade(conn, tls, true).await?;
        }
    }
    loop {
        let Some(c) = conn.as_mut() else {
            return Err(StartupFailure::Closed);
        };
        match pg::decode_startup(&mut buf)? {
            None => {
                // decode_startup has checked the announced length, so the
                // buffer never grows past MAX_STARTUP_PACKET_LEN.
                buf.reserve(1024);
                if c.read_buf(&mut buf).await? == 0 {
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
                if negotiations > MAX_NEGOTIATIONS || c.is_tls() {
                    return Err(StartupFailure::TooManyNegotiations);
                }
                match (req, tls) {
                    (StartupRequest::Ssl, Some(tls)) => {
                        c.write_all(b"S").await?;
                        upgrade(conn, tls, false).await?;
                    }
                    _ => c.write_all(&[pg::SSL_NOT_SUPPORTED]).await?,
                }
            }
            Some(StartupRequest::Cancel {
                process_id,
                secret_key,
            }) => {
                if let Some(target) = gw.cancel_keys.lookup(process_id, secret_key) {
                    let t = gw.config().gateway.backend_connect_timeout.0;
                    if let Err(e) = cancel::send_cancel(&target, t).await {
                        tracing::warn!(error = %e, "forwarding a cancel request failed");
                    }
                } else {
                    tracing::debug!("cancel request with an unknown key dropped");
                }
                return Ok(Startup::Cancelled);
            }
            // Nothing may come before the server's first answer; bytes read
            // together with the message would otherwise be lost unseen.
            Some(StartupRequest::Startup(_)) if !buf.is_empty() => {
                return Err(StartupFailure::PipelinedAfterStartup)
            }
            Some(StartupRequest::Startup(msg)) => return Ok(Startup::Message(msg)),
        }
    }
}

/// Run the server side of a TLS handshake on the plaintext `conn`.
/// `direct`: PostgreSQL 17 `sslnegotiation=direct`, which requires ALPN
/// `postgresql`.
async fn upgrade(
    conn: &mut Option<Conn>,
    tls: &ServerTls,
    direct: bool,
) -> Result<(), StartupFailure> {
    let Some(Conn::Plain(tcp)) = conn.take() else {
        return Err(StartupFailure::Tls("TLS requested twice".into()));
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.config());
    let stream = acceptor
        .accept(tcp)
        .await
        .map_err(|e| StartupFailure::Tls(format!("TLS handshake failed: {e}")))?;
    if direct && stream.get_ref().1.alpn_protocol() != Some(b"postgresql".as_slice()) {
        return Err(StartupFailure::Tls(
            "direct TLS connections must negotiate ALPN \"postgresql\"".into(),
        ));
    }
    *conn = Some(Conn::TlsServer(Box::new(stream)));
    Ok(())
}
