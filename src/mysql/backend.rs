//! The backend leg of an admitted MySQL session, and what jitgate tells
//! clients about a backend before it has dialled it.
//!
//! [`open`] dials the backend, reads its greeting, and logs in on the
//! client's behalf with an auth plugin name no server has, so that the
//! backend answers with an AuthSwitchRequest carrying its own scramble,
//! which the relay forwards (see the module header of [`crate::mysql`]).
//!
//! Capabilities: jitgate offers clients [`OFFERED`] (no TLS, compression,
//! LOCAL INFILE, query attributes or MariaDB extensions), narrowed to what
//! the backend announced last time ([`BackendProfiles`]). The backend is
//! sent the client's choice narrowed to what it announces now. A capability
//! that changes the wire format after the handshake ([`MUST_AGREE`]) must be
//! on both sides or on neither; if the client chose one the backend lacks
//! (only possible before jitgate had seen this backend, or after it was
//! downgraded), the connection is refused with a message saying to
//! reconnect, and the next greeting offers what the backend has.
//!
//! TLS (`[resource.backend_tls]`): after the greeting, when the mode is not
//! `disable` and the backend announces `CLIENT_SSL`, jitgate sends an
//! SSLRequest carrying the capabilities it will log in with (the client's,
//! narrowed as above, plus `CLIENT_SSL`), runs the TLS handshake
//! ([`crate::tls::backend_tls`]: `verify-full` checks the CA and the name),
//! then sends the HandshakeResponse inside TLS with sequence id 2. A backend
//! without `CLIENT_SSL` is used in plaintext under `prefer` and refused
//! under `require` and `verify-full`.
//!
//! Invariants: every backend read is bounded by [`super::MAX_HANDSHAKE_PACKET`]
//! and by the session's handshake deadline; the client's auth answer (bound
//! to jitgate's scramble) is never sent anywhere.

use std::sync::Arc;

use bytes::BytesMut;
use dashmap::DashMap;
use proxy_protocols::mysql::{self as my, caps, Greeting, HandshakeResponse};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::codes;
use crate::config::{BackendTlsMode, ResourceConfig};
use crate::conn::Conn;
use crate::gateway::Gateway;
use crate::tls::BackendTls;

/// The auth plugin name jitgate puts in the backend's HandshakeResponse: no
/// server has it, so every server asks for its own with an AuthSwitchRequest.
pub const PASSTHROUGH_PLUGIN: &[u8] = b"jitgate_passthrough";

/// Capabilities jitgate offers clients. Left out: `CLIENT_SSL` (added to
/// the greeting only when the resource has `[resource.tls]`), `CLIENT_COMPRESS` and zstd (the relay frames packets), and
/// `CLIENT_LOCAL_FILES` (file data from the client has sequence ids that
/// wrap to 0, which would make COM_CHANGE_USER undetectable; and it lets a
/// server read client files), MySQL 8's query attributes and optional
/// metadata, and MariaDB's extended capabilities (jitgate always sets
/// `CLIENT_LONG_PASSWORD`, so neither side reads them).
pub const OFFERED: u32 = caps::CLIENT_LONG_PASSWORD
    | caps::CLIENT_FOUND_ROWS
    | caps::CLIENT_LONG_FLAG
    | caps::CLIENT_CONNECT_WITH_DB
    | caps::CLIENT_NO_SCHEMA
    | caps::CLIENT_ODBC
    | caps::CLIENT_IGNORE_SPACE
    | caps::CLIENT_PROTOCOL_41
    | caps::CLIENT_INTERACTIVE
    | caps::CLIENT_IGNORE_SIGPIPE
    | caps::CLIENT_TRANSACTIONS
    | caps::CLIENT_SECURE_CONNECTION
    | caps::CLIENT_MULTI_STATEMENTS
    | caps::CLIENT_MULTI_RESULTS
    | caps::CLIENT_PS_MULTI_RESULTS
    | caps::CLIENT_PLUGIN_AUTH
    | caps::CLIENT_CONNECT_ATTRS
    | caps::CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
    | caps::CLIENT_CAN_HANDLE_EXPIRED_PASSWORDS
    | caps::CLIENT_SESSION_TRACK
    | caps::CLIENT_DEPRECATE_EOF;

/// Capabilities that change packets after the handshake: client and
/// backend must agree on them.
pub const MUST_AGREE: u32 = caps::CLIENT_PROTOCOL_41
    | caps::CLIENT_SECURE_CONNECTION
    | caps::CLIENT_PLUGIN_AUTH
    | caps::CLIENT_TRANSACTIONS
    | caps::CLIENT_MULTI_RESULTS
    | caps::CLIENT_PS_MULTI_RESULTS
    | caps::CLIENT_SESSION_TRACK
    | caps::CLIENT_DEPRECATE_EOF;

/// What a backend needs for jitgate to log in through it.
const BACKEND_NEEDS: u32 =
    caps::CLIENT_PROTOCOL_41 | caps::CLIENT_SECURE_CONNECTION | caps::CLIENT_PLUGIN_AUTH;

/// Server version shown before jitgate has seen a resource's backend.
pub const DEFAULT_SERVER_VERSION: &[u8] = b"8.0.0-jitgate";

/// utf8mb4_general_ci, the default collation of MariaDB and of MySQL 5.7.
const DEFAULT_COLLATION: u8 = 45;

/// SERVER_STATUS_AUTOCOMMIT.
const STATUS_AUTOCOMMIT: u16 = 0x0002;

/// What jitgate learned of one backend from its last greeting.
#[derive(Debug, Clone)]
struct Profile {
    server_version: Vec<u8>,
    capabilities: u32,
    collation: u8,
    status: u16,
}

/// What jitgate knows of each MySQL resource's backend, by resource name.
#[derive(Debug, Default)]
pub struct BackendProfiles {
    by_resource: DashMap<String, Profile>,
}

impl BackendProfiles {
    /// Remember what `g` says about `resource`'s backend.
    pub fn learn(&self, resource: &str, g: &Greeting) {
        self.by_resource.insert(
            resource.to_string(),
            Profile {
                server_version: g.server_version.clone(),
                capabilities: g.capabilities,
                collation: g.collation,
                status: g.status,
            },
        );
    }

    /// The greeting jitgate sends a client of `resource` (connection id 0:
    /// the backend connection does not exist yet).
    pub fn client_greeting(&self, resource: &str, scramble: Vec<u8>) -> Greeting {
        // Cloned out so no map guard outlives this line.
        let known = self.by_resource.get(resource).map(|p| p.clone());
        let (server_version, capabilities, collation, status) = match known {
            Some(p) => (
                p.server_version,
                p.capabilities,
                p.collation,
                p.status & STATUS_AUTOCOMMIT,
            ),
            None => (
                DEFAULT_SERVER_VERSION.to_vec(),
                OFFERED,
                DEFAULT_COLLATION,
                STATUS_AUTOCOMMIT,
            ),
        };
        Greeting {
            server_version,
            connection_id: 0,
            scramble,
            capabilities: (capabilities & OFFERED) | caps::CLIENT_LONG_PASSWORD | BACKEND_NEEDS,
            collation,
            status,
            mariadb_ext: 0,
            auth_plugin: b"mysql_native_password".to_vec(),
        }
    }
}

/// An open backend leg, logged in as far as jitgate can take it: the
/// backend's AuthSwitchRequest is the next thing it sends.
#[derive(Debug)]
pub struct BackendLeg {
    /// The connection, plaintext or TLS.
    pub stream: Conn,
    /// The sequence id of the backend's next packet (2, or 3 after an
    /// SSLRequest).
    pub next_seq: u8,
    /// The backend's thread id for this connection (for `KILL CONNECTION`).
    pub connection_id: u32,
    /// Whether `CLIENT_DEPRECATE_EOF` is in force.
    pub deprecate_eof: bool,
}

/// Why the backend leg could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The backend did not accept the connection.
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    /// Reading or writing failed, or the backend closed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The handshake deadline passed.
    #[error("the backend did not greet within the handshake timeout")]
    Timeout,
    /// The backend sent an ERR packet instead of a greeting (its payload).
    #[error("the backend refused the connection")]
    Refused(Vec<u8>),
    /// The greeting could not be read.
    #[error("bad greeting: {0}")]
    Protocol(String),
    /// The backend lacks what jitgate or this client needs.
    #[error("{0}")]
    Incompatible(String),
    /// TLS to the backend was required and could not be set up.
    #[error("TLS: {0}")]
    Tls(String),
}

impl OpenError {
    /// The backend's own ERR payload, when it refused the connection.
    pub fn server_error(&self) -> Option<&[u8]> {
        match self {
            OpenError::Refused(p) => Some(p),
            _ => None,
        }
    }

    /// The error number and SQLSTATE the client is shown.
    pub fn code(&self) -> (u16, &'static str) {
        match self {
            OpenError::Incompatible(_) => codes::NOT_SUPPORTED_AUTH_MODE,
            _ => codes::CONN_HOST_ERROR,
        }
    }

    /// The text the client is shown for resource `name`.
    pub fn client_text(&self, name: &str) -> String {
        match self {
            OpenError::Incompatible(why) => format!("jitgate: {why}"),
            OpenError::Tls(_) => format!("jitgate: cannot reach the backend of {name} over TLS"),
            _ => format!("jitgate: cannot reach the backend of {name}"),
        }
    }
}

/// Dial `resource`'s backend and send it the client's login.
pub async fn open(
    gw: &Arc<Gateway>,
    resource: &ResourceConfig,
    tls: &BackendTls,
    client: &HandshakeResponse,
    deadline: tokio::time::Instant,
) -> Result<BackendLeg, OpenError> {
    let connect_timeout = gw.config().gateway.backend_connect_timeout.0;
    let mut stream = tokio::time::timeout(connect_timeout, TcpStream::connect(resource.backend()))
        .await
        .map_err(|_| {
            OpenError::Connect(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "connect timed out",
            ))
        })?
        .map_err(OpenError::Connect)?;
    stream.set_nodelay(true)?;
    let packet = tokio::time::timeout_at(deadline, read_packet(&mut stream))
        .await
        .map_err(|_| OpenError::Timeout)??;
    if packet.payload.first() == Some(&0xFF) {
        return Err(OpenError::Refused(packet.payload.to_vec()));
    }
    let greeting =
        my::parse_greeting(&packet.payload).map_err(|e| OpenError::Protocol(e.to_string()))?;
    gw.mysql_profiles.learn(resource.name(), &greeting);
    let (response, deprecate_eof) = backend_response(client, greeting.capabilities)?;
    let mut payload = Vec::with_capacity(256);
    let mut out = BytesMut::with_capacity(512);
    let (stream, next_seq) = match tls_wanted(Some(tls), greeting.capabilities)? {
        Some(t) => {
            let fut = start_tls(stream, t, &response);
            let mut tls = tokio::time::timeout_at(deadline, fut)
                .await
                .map_err(|_| OpenError::Timeout)??;
            my::encode_handshake_response_over_tls(&response, &mut payload);
            my::encode_packet(2, &payload, &mut out);
            tls.write_all(&out).await?;
            tls.flush().await?;
            (tls, 3)
        }
        None => {
            my::encode_handshake_response(&response, &mut payload);
            my::encode_packet(1, &payload, &mut out);
            stream.write_all(&out).await?;
            (Conn::Plain(stream), 2)
        }
    };
    Ok(BackendLeg {
        stream,
        next_seq,
        connection_id: greeting.connection_id,
        deprecate_eof,
    })
}

/// The backend TLS to use with a backend announcing `backend_caps`: `None`
/// for plaintext (mode `disable`, or `prefer` and no `CLIENT_SSL`), an
/// error when `require`/`verify-full` meet a backend without `CLIENT_SSL`.
pub fn tls_wanted(
    tls: Option<&BackendTls>,
    backend_caps: u32,
) -> Result<Option<&BackendTls>, OpenError> {
    match tls {
        Some(t) if t.mode == BackendTlsMode::Disable => Ok(None),
        Some(t) if backend_caps & caps::CLIENT_SSL != 0 => Ok(Some(t)),
        Some(t) if t.mode == BackendTlsMode::Prefer => Ok(None),
        Some(_) => Err(OpenError::Tls(
            "the backend does not offer TLS (CLIENT_SSL); backend_tls mode is not \"prefer\""
                .into(),
        )),
        None => Ok(None),
    }
}

/// Send an SSLRequest (sequence id 1) with the capabilities of `response`
/// plus `CLIENT_SSL`, and run the client side of the TLS handshake. The
/// caller sends `response` inside it with sequence id 2.
pub async fn start_tls(
    mut stream: TcpStream,
    t: &BackendTls,
    response: &HandshakeResponse,
) -> Result<Conn, OpenError> {
    let mut payload = Vec::with_capacity(my::SSL_REQUEST_LEN);
    my::encode_ssl_request(response, &mut payload);
    let mut out = BytesMut::with_capacity(payload.len() + my::HEADER_LEN);
    my::encode_packet(1, &payload, &mut out);
    stream.write_all(&out).await?;
    let Some(config) = t.config.clone() else {
        return Err(OpenError::Tls("no client configuration".into()));
    };
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(t.server_name.clone(), stream)
        .await
        .map_err(|e| OpenError::Tls(format!("handshake failed: {e}")))?;
    Ok(Conn::TlsClient(Box::new(tls)))
}

/// The HandshakeResponse41 for a backend announcing `backend_caps`, on
/// behalf of `client`, and whether `CLIENT_DEPRECATE_EOF` is in force.
pub fn backend_response(
    client: &HandshakeResponse,
    backend_caps: u32,
) -> Result<(HandshakeResponse, bool), OpenError> {
    if backend_caps & BACKEND_NEEDS != BACKEND_NEEDS {
        return Err(OpenError::Incompatible(
            "the backend does not speak the MySQL 4.1 protocol with pluggable authentication"
                .into(),
        ));
    }
    let wanted = client.capabilities & OFFERED;
    if wanted & MUST_AGREE & !backend_caps != 0 {
        return Err(OpenError::Incompatible(
            "the backend lacks a protocol feature jitgate offered this client; connect again"
                .into(),
        ));
    }
    let capabilities = (wanted & backend_caps) | caps::CLIENT_LONG_PASSWORD | BACKEND_NEEDS;
    let with_db = capabilities & caps::CLIENT_CONNECT_WITH_DB != 0;
    let with_attrs = capabilities & caps::CLIENT_CONNECT_ATTRS != 0;
    let response = HandshakeResponse {
        capabilities,
        max_packet: client.max_packet,
        collation: client.collation,
        mariadb_ext: 0,
        user: client.user.clone(),
        auth_response: Vec::new(),
        database: client.database.clone().filter(|_| with_db),
        auth_plugin: Some(PASSTHROUGH_PLUGIN.to_vec()),
        connect_attrs: client.connect_attrs.clone().filter(|_| with_attrs),
    };
    Ok((response, capabilities & caps::CLIENT_DEPRECATE_EOF != 0))
}

/// Read one whole packet (at most [`super::MAX_HANDSHAKE_PACKET`]).
pub async fn read_packet(stream: &mut (impl AsyncRead + Unpin)) -> Result<my::Packet, OpenError> {
    let mut buf = BytesMut::with_capacity(256);
    loop {
        match my::decode_packet(&mut buf, super::MAX_HANDSHAKE_PACKET) {
            Ok(Some(p)) => return Ok(p),
            Ok(None) => {}
            Err(e) => return Err(OpenError::Protocol(e.to_string())),
        }
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(OpenError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(capabilities: u32) -> HandshakeResponse {
        HandshakeResponse {
            capabilities,
            max_packet: 1 << 24,
            collation: 33,
            user: b"jg_alice".to_vec(),
            auth_response: vec![1; 20],
            database: Some(b"test".to_vec()),
            auth_plugin: Some(b"mysql_native_password".to_vec()),
            connect_attrs: Some(b"\x03_os\x05Linux".to_vec()),
            ..Default::default()
        }
    }

    const MARIADB_CAPS: u32 = 0x81ff_f7fe;
    const MYSQL_CLI_CAPS: u32 = 0x00bf_a28c;

    #[test]
    fn the_backend_gets_the_clients_login_without_its_answer() {
        let (r, deprecate_eof) = backend_response(&client(MYSQL_CLI_CAPS), MARIADB_CAPS).unwrap();
        assert_eq!(r.user, b"jg_alice");
        assert!(r.auth_response.is_empty());
        assert_eq!(r.auth_plugin.as_deref(), Some(PASSTHROUGH_PLUGIN));
        assert_eq!(r.database.as_deref(), Some(&b"test"[..]));
        assert_eq!(r.collation, 33);
        assert!(r.connect_attrs.is_some());
        assert!(!deprecate_eof, "the mysql CLI does not ask for it");
        // No LOCAL INFILE, no MariaDB extensions, never TLS.
        assert_eq!(r.capabilities & caps::CLIENT_LOCAL_FILES, 0);
        assert_ne!(r.capabilities & caps::CLIENT_LONG_PASSWORD, 0);
        assert_eq!(r.capabilities & caps::CLIENT_SSL, 0);
    }

    #[test]
    fn a_format_capability_the_backend_lacks_is_refused() {
        let old_backend = MARIADB_CAPS & !caps::CLIENT_DEPRECATE_EOF;
        let e = backend_response(&client(OFFERED), old_backend).unwrap_err();
        assert!(matches!(e, OpenError::Incompatible(_)), "{e}");
        // A harmless one is just dropped.
        let no_attrs = MARIADB_CAPS & !caps::CLIENT_CONNECT_ATTRS;
        let (r, _) = backend_response(&client(OFFERED), no_attrs).unwrap();
        assert_eq!(r.connect_attrs, None);
    }

    #[test]
    fn greetings_offer_the_learned_backend_minus_what_jitgate_refuses() {
        let p = BackendProfiles::default();
        let g = p.client_greeting("r", vec![b'a'; 20]);
        assert_eq!(g.server_version, DEFAULT_SERVER_VERSION);
        assert_eq!(g.capabilities, OFFERED);
        assert_eq!(g.connection_id, 0);
        p.learn(
            "r",
            &Greeting {
                server_version: b"5.5.5-10.11.19-MariaDB".to_vec(),
                connection_id: 9,
                scramble: vec![],
                capabilities: MARIADB_CAPS | caps::CLIENT_SSL | caps::CLIENT_COMPRESS,
                collation: 8,
                status: 0x4002,
                mariadb_ext: 0x1d,
                auth_plugin: vec![],
            },
        );
        let g = p.client_greeting("r", vec![b'a'; 20]);
        assert_eq!(g.server_version, b"5.5.5-10.11.19-MariaDB");
        assert_eq!(
            g.capabilities & (caps::CLIENT_SSL | caps::CLIENT_COMPRESS),
            0
        );
        assert_ne!(g.capabilities & caps::CLIENT_LONG_PASSWORD, 0);
        assert_eq!(g.mariadb_ext, 0);
        assert_eq!((g.collation, g.status), (8, 0x0002));
    }
}
