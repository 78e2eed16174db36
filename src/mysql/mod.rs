//! A MySQL / MariaDB client connection, from accept to close: jitgate's own
//! greeting, the client's HandshakeResponse, admission, the backend leg and
//! the relay.
//!
//! # How jitgate learns the login before the backend sees anything
//!
//! In this protocol the server speaks first, and the client's auth answer is
//! bound to the scramble in the server's greeting. Two designs can get the
//! user name out of the HandshakeResponse:
//!
//! 1. *Dial first*: connect to the backend, relay its greeting, read the
//!    client's response, check the grant, then forward or refuse. Every
//!    connection, granted or not, costs the backend a connection and a
//!    thread for up to `handshake_timeout`; a flood of unauthenticated
//!    connections exhausts `max_connections` for everyone, every refusal is
//!    an aborted handshake on the backend, and a backend that counts those
//!    (`max_connect_errors`) ends up blocking jitgate's own address, so an
//!    anonymous attacker could lock every user out.
//! 2. *Own greeting* (what jitgate does): jitgate greets the client itself
//!    with a random scramble, reads the HandshakeResponse, and checks the
//!    grant. A refused or stalled client never reaches the backend: a flood
//!    costs jitgate one small task per connection, bounded by
//!    `handshake_timeout`, and the backend nothing. Only an admitted client
//!    makes jitgate dial: it sends the backend a HandshakeResponse41 with the
//!    client's user, database, collation and attributes, an empty auth
//!    answer and an auth plugin name no server has (`jitgate_passthrough`).
//!    The backend then asks for its own plugin with an AuthSwitchRequest
//!    carrying *its* scramble, exactly as it would for a client that started
//!    with the wrong plugin, and jitgate forwards it. The client answers the
//!    backend's scramble and authenticates to the backend directly; the
//!    sequence ids line up (switch request 2, answer 3, OK 4), so from there
//!    on every byte is relayed unchanged. The answer the client computed for
//!    jitgate's scramble is discarded unread.
//!
//! What design 2 costs: one more round trip at connect; the connection id
//! in jitgate's greeting is 0, not the backend's (a client's own
//! `KILL QUERY <id>`, e.g. the mysql CLI's Ctrl-C, then fails harmlessly
//! with "unknown thread id"); and the server version and capabilities in the
//! greeting are the ones learned from this backend's last greeting
//! ([`BackendProfiles`]), a default before the first.
//!
//! # The path of one connection
//! 1. greeting (sequence id 0): capabilities without `CLIENT_COMPRESS` or
//!    `CLIENT_LOCAL_FILES`, with `CLIENT_SSL` only when the resource has
//!    `[resource.tls]`, plugin `mysql_native_password`;
//! 2. the client's first packet, within `handshake_timeout` and 64 KiB,
//!    read with exact-length reads so that nothing after it is consumed:
//!    - an SSLRequest (exactly the 32-byte fixed part with `CLIENT_SSL`)
//!      when TLS is configured: the socket goes to the TLS acceptor as is
//!      (a ClientHello sent in the same segment is still in the socket),
//!      and the HandshakeResponse is read inside TLS with sequence id 2;
//!    - a full response that claims `CLIENT_SSL` in plaintext, an SSLRequest
//!      without TLS configured, a pre-4.1 response, a client without
//!      pluggable auth, a malformed or out-of-order packet, or bytes
//!      pipelined after the response, each get an ERR that says so, and the
//!      connection is closed;
//! 3. the TLS policy of the resource: `require` refuses a plaintext client
//!    (ERR 3159, "Connections using insecure transport are prohibited"),
//!    `identity = "certificate"` refuses a login the client certificate
//!    does not name (ERR 1045);
//! 4. admission ([`crate::admission::admit`]) by the user name: refused →
//!    ERR 1045, SQLSTATE 28000, the PRODUCT text, close — *before any byte
//!    reaches the backend*;
//! 5. the backend leg ([`backend::open`], TLS per `[resource.backend_tls]`);
//! 6. [`crate::relay::run`] with [`wire::MyWire`] until the session ends.
//!
//! Every ERR jitgate writes during the handshake carries the sequence id
//! after the client's last packet: 2 in plaintext, 3 after an SSLRequest.

pub mod backend;
pub mod kill;
pub mod wire;

pub use backend::BackendProfiles;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use proxy_protocols::mysql::{
    self as my, caps, ClientFirst, HandshakeError, HandshakeResponse, PacketError,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::admission::{self, Identity, Refusal};
use crate::audit::Event;
use crate::config::{ResourceConfig, TlsIdentity};
use crate::conn::Conn;
use crate::ending::EndReason;
use crate::gateway::Gateway;
use crate::metrics::{self as m, Outcome};
use crate::relay::{self, RelayParams};
use crate::tls::ServerTls;

/// Largest packet accepted during the handshake, either side (a
/// HandshakeResponse with connection attributes is well under 1 KiB; a
/// caching_sha2 public key about 450 bytes).
pub const MAX_HANDSHAKE_PACKET: usize = 64 * 1024;

/// MySQL error numbers and SQLSTATEs of the ERR packets jitgate writes.
pub mod codes {
    /// ER_ACCESS_DENIED_ERROR: no grant (PRODUCT.md §5).
    pub const ACCESS_DENIED: (u16, &str) = (1045, "28000");
    /// ER_SPECIFIC_ACCESS_DENIED_ERROR: a command jitgate never passes on
    /// (replication).
    pub const SPECIFIC_ACCESS_DENIED: (u16, &str) = (1227, "42000");
    /// ER_HANDSHAKE_ERROR: a malformed handshake, TLS asked for, a timeout.
    pub const HANDSHAKE_ERROR: (u16, &str) = (1043, "08S01");
    /// ER_NET_PACKET_TOO_LARGE.
    pub const PACKET_TOO_LARGE: (u16, &str) = (1153, "08S01");
    /// ER_NOT_SUPPORTED_AUTH_MODE: a pre-4.1 client or one without
    /// pluggable authentication; also a backend jitgate cannot speak to.
    pub const NOT_SUPPORTED_AUTH_MODE: (u16, &str) = (1251, "08004");
    /// ER_UNKNOWN_ERROR: the audit log cannot be written.
    pub const UNKNOWN_ERROR: (u16, &str) = (1105, "HY000");
    /// CR_CONN_HOST_ERROR: the backend cannot be reached.
    pub const CONN_HOST_ERROR: (u16, &str) = (2003, "HY000");
    /// CR_SERVER_LOST: the backend failed mid-session (reset, protocol
    /// violation); client libraries treat it as a lost connection.
    pub const SERVER_LOST: (u16, &str) = (2013, "HY000");
    /// ER_SECURE_TRANSPORT_REQUIRED: plaintext on a resource with
    /// `require = true`.
    pub const SECURE_TRANSPORT_REQUIRED: (u16, &str) = (3159, "HY000");
    /// ER_CONNECTION_KILLED: access ended (expiry, revoke, kill, idle, cap,
    /// shutdown).
    pub const CONNECTION_KILLED: (u16, &str) = (1927, "70100");
}

/// Why the client's side of the handshake did not produce a response.
#[derive(Debug, thiserror::Error)]
enum FrontFailure {
    #[error("{0}")]
    TooLong(#[from] PacketError),
    #[error("{0}")]
    Malformed(#[from] HandshakeError),
    #[error("packets out of order: the handshake response must have sequence id 1, not {0}")]
    OutOfOrder(u8),
    #[error("unexpected data after the handshake response")]
    Pipelined,
    #[error(
        "TLS is not available on this listener; connect without TLS (e.g. --ssl=0 or --ssl-mode=DISABLED)"
    )]
    TlsRequested,
    #[error("the handshake response claims TLS (CLIENT_SSL) but was sent in plaintext")]
    TlsClaimedInPlaintext,
    #[error("TLS handshake failed: {0}")]
    Tls(std::io::Error),
    #[error("clients older than MySQL 4.1 are not supported; use a MySQL 4.1 or later client")]
    Pre41,
    #[error(
        "this client does not support pluggable authentication (MySQL 5.5.7+ and MariaDB 5.2+ clients do)"
    )]
    NoPluginAuth,
    #[error("client closed the connection during the handshake")]
    Closed,
    #[error("handshake not completed within the handshake timeout")]
    Timeout,
    #[error("i/o error during the handshake: {0}")]
    Io(#[from] std::io::Error),
}

impl FrontFailure {
    fn code(&self) -> (u16, &'static str) {
        match self {
            FrontFailure::TooLong(_) => codes::PACKET_TOO_LARGE,
            FrontFailure::Pre41 | FrontFailure::NoPluginAuth => codes::NOT_SUPPORTED_AUTH_MODE,
            _ => codes::HANDSHAKE_ERROR,
        }
    }
}

/// Serve one client connection on a mysql resource.
pub async fn handle(
    gw: Arc<Gateway>,
    resource: Arc<ResourceConfig>,
    client: TcpStream,
    peer: SocketAddr,
) {
    let accepted = Instant::now();
    let name = resource.name().to_string();
    let timeout = gw.config().gateway.handshake_timeout.0;
    let deadline = tokio::time::Instant::now() + timeout;
    let Some(tls_state) = gw.listeners.tls_state(&name) else {
        // A reload is taking this listener away: fail closed.
        tracing::debug!(%peer, resource = %name, "refused: the resource's listener is being removed");
        m::connection(&name, "mysql", Outcome::Error);
        return;
    };
    let tls = tls_state.client.clone();
    let mut conn = Some(Conn::Plain(client));

    let front = tokio::select! {
        r = tokio::time::timeout(timeout, Box::pin(front_handshake(&gw, &resource, tls.as_deref(), &mut conn))) => {
            r.unwrap_or(Err(FrontFailure::Timeout))
        }
        _ = gw.shutdown.cancelled() => return,
    };
    // Sequence id of jitgate's answer to the client's last packet.
    let seq = if conn.as_ref().is_some_and(Conn::is_tls) {
        3
    } else {
        2
    };
    let response = match front {
        Ok(r) => r,
        Err(FrontFailure::Closed) => {
            m::connection(&name, "mysql", Outcome::Error);
            return;
        }
        Err(e) => {
            tracing::debug!(%peer, resource = %name, error = %e, "handshake failed");
            m::connection(&name, "mysql", Outcome::Error);
            m::handshake(accepted.elapsed());
            let (code, state) = e.code();
            // A pre-4.1 client reads no SQLSTATE in an ERR packet.
            let state = (!matches!(e, FrontFailure::Pre41)).then_some(state);
            if let Some(c) = conn.as_mut() {
                let _ = send_err(c, seq, code, state, &format!("jitgate: {e}")).await;
            }
            return;
        }
    };
    let Some(mut client) = conn else { return };
    // front_handshake checked that the login is UTF-8.
    let login = response.user_str().unwrap_or_default().to_string();

    // With identity = "certificate", the logins the client certificate
    // names: the login now, and any COM_CHANGE_USER later, must be one.
    let cert_names = tls
        .as_ref()
        .filter(|t| t.settings.identity == TlsIdentity::Certificate)
        .map(|_| client_certificate_names(&client));
    // TLS policy of the resource, before the grant table is consulted.
    if let Some(t) = &tls {
        let refusal = if t.settings.require && !client.is_tls() {
            Some((
                "tls_required",
                codes::SECURE_TRANSPORT_REQUIRED,
                format!("jitgate: Connections using insecure transport are prohibited: {name} requires TLS (connect with --ssl or ssl-mode=REQUIRED)"),
            ))
        } else if cert_names
            .as_ref()
            .is_some_and(|names| !names.contains(&login))
        {
            Some((
                "certificate_login",
                codes::ACCESS_DENIED,
                format!("jitgate: the client certificate does not name login {login:?}"),
            ))
        } else {
            None
        };
        if let Some((outcome, (code, state), text)) = refusal {
            admission::deny_by_rule(&gw, &resource, &login, peer, accepted, outcome, &text);
            let _ = send_err(&mut client, seq, code, Some(state), &text).await;
            return;
        }
    }

    // Admission, before any byte reaches the backend.
    let admitted = match admission::admit(&gw, &resource, Identity::Login(&login), peer, accepted) {
        Ok(a) => a,
        Err(Refusal::NoGrant) => {
            let message = admission::no_grant_message(&login, &name);
            let (code, state) = codes::ACCESS_DENIED;
            let _ = send_err(&mut client, seq, code, Some(state), &message).await;
            return;
        }
        Err(Refusal::AuditUnavailable) => {
            let (code, state) = codes::UNKNOWN_ERROR;
            let text = "jitgate: audit log unavailable, access refused";
            let _ = send_err(&mut client, seq, code, Some(state), text).await;
            return;
        }
    };
    let session = admitted.session.clone();

    let leg = Box::pin(backend::open(
        &gw,
        &resource,
        &tls_state.backend,
        &response,
        deadline,
    ))
    .await;
    let leg = match leg {
        Ok(leg) => leg,
        Err(e) => {
            tracing::warn!(resource = %name, error = %e, "backend leg failed");
            m::connection(&name, "mysql", Outcome::Error);
            let _ = match e.server_error() {
                // The backend refused the connection itself ("Too many
                // connections"): the client sees the backend's own error.
                Some(payload) => send_raw(&mut client, seq, payload).await,
                None => {
                    let (code, state) = e.code();
                    send_err(&mut client, seq, code, Some(state), &e.client_text(&name)).await
                }
            };
            drop(client);
            gw.on_session_ended(&session, &EndReason::Backend, None);
            drop(admitted.guard);
            return;
        }
    };
    m::connection(&name, "mysql", Outcome::Accepted);

    let params = RelayParams {
        session: session.clone(),
        idle: resource.idle_timeout(),
        // MySQL has no in-band notice a client would show.
        warnings: Vec::new(),
        buffer_size: gw.config().gateway.relay_buffer_size,
        handshake_deadline: Some(deadline),
    };
    let kill_target = resource.kill_account().map(|account| kill::KillTarget {
        backend: resource.backend().to_string(),
        account: account.clone(),
        connection_id: leg.connection_id,
        timeout: gw.config().gateway.backend_connect_timeout.0,
        tls: Some(tls_state.backend.clone()),
        tracker: gw.tracker.clone(),
    });
    let audit_gw = gw.clone();
    let wire = wire::MyWire::new(
        session.clone(),
        leg.deprecate_eof,
        kill_target,
        Box::new(move |s, login| audit_login_changed(&audit_gw, s, login)),
        (seq, leg.next_seq),
        cert_names,
    );
    let (reason, since) = relay::run(params, wire, client, leg.stream).await;
    if let EndReason::LoginDenied { login } = &reason {
        audit_change_user_denied(&gw, &session, login);
    }
    // Recorded before the guard goes: a revoke answers once every guard
    // is dropped, and by then each session's end is in the audit log.
    gw.on_session_ended(&session, &reason, since);
    drop(admitted.guard);
}

/// The client's side of the handshake: greeting out, first packet in, and
/// on an SSLRequest the TLS handshake and the response inside it. `conn` is
/// taken and replaced by its TLS form on an upgrade (and left `None` when
/// the TLS handshake fails: there is no channel left to answer on).
async fn front_handshake(
    gw: &Gateway,
    resource: &ResourceConfig,
    tls: Option<&ServerTls>,
    conn: &mut Option<Conn>,
) -> Result<HandshakeResponse, FrontFailure> {
    let mut greeting = gw
        .mysql_profiles
        .client_greeting(resource.name(), new_scramble());
    if tls.is_some() {
        greeting.capabilities |= caps::CLIENT_SSL;
    }
    let mut payload = Vec::with_capacity(128);
    my::encode_greeting(&greeting, &mut payload);
    let mut out = BytesMut::with_capacity(payload.len() + my::HEADER_LEN);
    my::encode_packet(0, &payload, &mut out);
    let Some(client) = conn.as_mut() else {
        return Err(FrontFailure::Closed);
    };
    client.write_all(&out).await?;

    let packet = read_exact_packet(client, 1).await?;
    let response = match my::parse_client_first(&packet.payload)? {
        ClientFirst::SslRequest { .. } => {
            let Some(tls) = tls else {
                return Err(FrontFailure::TlsRequested);
            };
            // A full response with CLIENT_SSL would carry the login (and
            // an auth answer) in the clear: never taken as a TLS request.
            if packet.payload.len() != my::SSL_REQUEST_LEN {
                return Err(FrontFailure::TlsClaimedInPlaintext);
            }
            let Some(Conn::Plain(tcp)) = conn.take() else {
                return Err(FrontFailure::Closed);
            };
            // Nothing past the SSLRequest was read: a ClientHello that came
            // with it is still in the socket for the acceptor.
            let stream = tokio_rustls::TlsAcceptor::from(tls.config())
                .accept(tcp)
                .await
                .map_err(FrontFailure::Tls)?;
            let client = conn.insert(Conn::TlsServer(Box::new(stream)));
            let packet = read_exact_packet(client, 2).await?;
            my::parse_response_over_tls(&packet.payload)?
        }
        ClientFirst::Pre41 { .. } => return Err(FrontFailure::Pre41),
        ClientFirst::Response(r) => r,
    };
    // Grants name logins as text; the backend must authenticate exactly
    // the login that was admitted, so there is no lossy conversion.
    if response.user_str().is_none() {
        return Err(HandshakeError::Malformed("the user name is not valid UTF-8").into());
    }
    let needed = caps::CLIENT_PLUGIN_AUTH | caps::CLIENT_SECURE_CONNECTION;
    if response.capabilities & needed != needed {
        return Err(FrontFailure::NoPluginAuth);
    }
    // The client must wait for the server's answer; bytes sent before it
    // would reach the backend as if they came after authentication. A
    // read that is ready at once means they are there already.
    if let Some(client) = conn.as_mut() {
        let mut probe = [0u8; 1];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::ZERO, client.read(&mut probe)).await {
            if n > 0 {
                return Err(FrontFailure::Pipelined);
            }
        }
    }
    Ok(response)
}

/// Read exactly one packet, which must have sequence id `seq`: the header,
/// then exactly the length it announces (bounded by
/// [`MAX_HANDSHAKE_PACKET`] before anything is allocated for it), so no
/// byte after it leaves the socket.
async fn read_exact_packet(client: &mut Conn, seq: u8) -> Result<my::Packet, FrontFailure> {
    let mut header = [0u8; my::HEADER_LEN];
    read_all(client, &mut header).await?;
    // Checks the announced length (a whole packet only if it is empty).
    my::decode_packet(&mut BytesMut::from(&header[..]), MAX_HANDSHAKE_PACKET)?;
    let (len, _) = my::parse_header(header);
    let mut buf = BytesMut::zeroed(my::HEADER_LEN + len);
    if let Some(h) = buf.get_mut(..my::HEADER_LEN) {
        h.copy_from_slice(&header);
    }
    if let Some(rest) = buf.get_mut(my::HEADER_LEN..) {
        read_all(client, rest).await?;
    }
    let p = my::decode_packet(&mut buf, MAX_HANDSHAKE_PACKET)?.ok_or(FrontFailure::Closed)?;
    if p.seq != seq {
        return Err(FrontFailure::OutOfOrder(p.seq));
    }
    Ok(p)
}

/// `read_exact`, with a close mapped to [`FrontFailure::Closed`].
async fn read_all(client: &mut Conn, buf: &mut [u8]) -> Result<(), FrontFailure> {
    match client.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(FrontFailure::Closed),
        Err(e) => Err(e.into()),
    }
}

/// The names (CN, SANs) of the client's TLS certificate; none in plaintext
/// or without a certificate.
fn client_certificate_names(client: &Conn) -> Vec<String> {
    let Conn::TlsServer(s) = client else {
        return Vec::new();
    };
    s.get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(crate::tls::certificate_names)
        .unwrap_or_default()
}

/// 20 random scramble bytes, printable and never NUL (the greeting
/// NUL-terminates its second part).
fn new_scramble() -> Vec<u8> {
    let raw: [u8; 20] = rand::random();
    raw.iter().map(|b| 0x21 + b % 94).collect()
}

/// Write one ERR packet with sequence id `seq` and close the socket.
async fn send_err(
    client: &mut Conn,
    seq: u8,
    code: u16,
    sqlstate: Option<&str>,
    message: &str,
) -> std::io::Result<()> {
    let mut payload = Vec::with_capacity(message.len() + 9);
    my::encode_err(code, sqlstate, message, &mut payload);
    send_raw(client, seq, &payload).await
}

/// Write one packet with sequence id `seq` around `payload` and close.
async fn send_raw(client: &mut Conn, seq: u8, payload: &[u8]) -> std::io::Result<()> {
    let mut out = BytesMut::with_capacity(payload.len() + my::HEADER_LEN);
    my::encode_packet(seq, payload, &mut out);
    client.write_all(&out).await?;
    client.shutdown().await
}

/// Audit an admitted COM_CHANGE_USER to another login of the same grant.
fn audit_login_changed(
    gw: &Gateway,
    s: &crate::sessions::Session,
    login: &str,
) -> std::io::Result<()> {
    let mut e = Event::new("session.login_changed");
    e.session_id = Some(s.id);
    e.grant_id = Some(s.grant.id);
    e.principal = Some(s.grant.principal.clone());
    e.login = Some(login.to_string());
    e.resource = Some(s.resource.clone());
    e.protocol = Some(s.protocol.as_str());
    e.client_addr = Some(s.client_addr);
    e.reason = Some(format!("COM_CHANGE_USER from {:?}", s.login));
    gw.audit.write(e)?;
    tracing::info!(session = %s.id, login, "login changed within the grant");
    Ok(())
}

/// Audit a COM_CHANGE_USER refused for want of a grant (the session ends).
fn audit_change_user_denied(gw: &Gateway, s: &crate::sessions::Session, login: &str) {
    let mut e = Event::new("session.denied");
    e.session_id = Some(s.id);
    e.grant_id = Some(s.grant.id);
    e.principal = Some(s.grant.principal.clone());
    e.login = Some(login.to_string());
    e.resource = Some(s.resource.clone());
    e.protocol = Some(s.protocol.as_str());
    e.client_addr = Some(s.client_addr);
    e.outcome = Some("no_grant");
    e.reason = Some(format!(
        "COM_CHANGE_USER from {:?} to a login the grant does not admit",
        s.login
    ));
    let _ = gw.audit.write(e);
    tracing::info!(session = %s.id, login, "change of user refused: no grant");
}
