//! Stopping what a session was running on the backend when jitgate ends it.
//!
//! Closing the backend socket is not enough on MariaDB (checked on 10.11
//! with `SHOW PROCESSLIST` from a direct root connection): the server does
//! not watch a connection's socket while a statement runs. `SELECT SLEEP(60)`
//! notices the close at its next 5-second check; `SELECT BENCHMARK(...)` or
//! a long scan runs to its end. So on every enforced end jitgate logs in on
//! a side connection as the resource's `kill_account` and runs
//! `KILL CONNECTION <id>`, the id being the backend's thread id from its
//! greeting. That stops the statement, rolls back its transaction and frees
//! its locks and its connection slot.
//!
//! The account needs the right to kill other users' threads (MariaDB ≥ 10.5:
//! `CONNECTION ADMIN`; older MariaDB and MySQL 5.7: `SUPER`; MySQL 8:
//! `CONNECTION_ADMIN`) and `mysql_native_password` (a `caching_sha2_password`
//! account works once the server has cached it; its first login needs TLS or
//! RSA, which this client does not do). There is no credential-free way: a
//! client's own login cannot be replayed (its answer is bound to one
//! scramble), and the protocol has no out-of-band cancel like PostgreSQL's.
//!
//! TLS: the side connection follows the resource's `[resource.backend_tls]`
//! exactly as the session's backend leg does ([`super::backend::tls_wanted`]):
//! SSLRequest, TLS, then the login inside it.
//!
//! Invariants: the whole exchange is bounded by the target's timeout; it runs
//! as a tracked task, so the relay waits for it only up to its finish budget
//! and a slow server gets the KILL all the same; the password is read only
//! to compute the auth answer and never logged; a thread that is already
//! gone is success.

use std::time::Duration;

use bytes::BytesMut;
use proxy_protocols::mysql::{self as my, caps, HandshakeResponse};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::backend::{read_packet, start_tls, tls_wanted, OpenError};
use crate::config::KillAccount;
use crate::conn::Conn;
use crate::tls::BackendTls;

/// ER_NO_SUCH_THREAD: the thread ended on its own already.
const ER_NO_SUCH_THREAD: u16 = 1094;

/// Where and how to kill one session's backend thread.
#[derive(Debug, Clone)]
pub struct KillTarget {
    /// The backend address.
    pub backend: String,
    /// The account to log in as.
    pub account: KillAccount,
    /// The session's backend thread id.
    pub connection_id: u32,
    /// Upper bound for the whole exchange.
    pub timeout: Duration,
    /// TLS towards the backend, as for the session's own leg.
    pub tls: Option<std::sync::Arc<BackendTls>>,
    /// Tracks the kill when it outlives the relay's finish budget (a
    /// loaded server), so shutdown still waits for it.
    pub tracker: tokio_util::task::TaskTracker,
}

/// Why a kill did not happen.
#[derive(Debug, thiserror::Error)]
pub enum KillError {
    /// Connecting, reading or writing failed.
    #[error("{0}")]
    Backend(#[from] OpenError),
    /// The exchange took longer than the timeout.
    #[error("timed out")]
    Timeout,
    /// The kill account could not log in.
    #[error("kill account login failed: {0}")]
    Login(String),
    /// The server refused the KILL.
    #[error("KILL refused: {0}")]
    Refused(String),
}

/// Log in as the kill account and run `KILL CONNECTION` on the target.
pub async fn kill_connection(t: &KillTarget) -> Result<(), KillError> {
    tokio::time::timeout(t.timeout, kill_inner(t))
        .await
        .map_err(|_| KillError::Timeout)?
}

async fn kill_inner(t: &KillTarget) -> Result<(), KillError> {
    let s = TcpStream::connect(t.backend.as_str())
        .await
        .map_err(|e| KillError::Backend(OpenError::Connect(e)))?;
    s.set_nodelay(true).map_err(OpenError::Io)?;
    let mut s = login(s, &t.account, t.tls.as_deref()).await?;

    let mut q = Vec::with_capacity(32);
    my::encode_query(&format!("KILL CONNECTION {}", t.connection_id), &mut q);
    send(&mut s, 0, &q).await?;
    let answer = read_packet(&mut s).await?;
    if let Some(e) = my::parse_err(&answer.payload) {
        if e.code != ER_NO_SUCH_THREAD {
            return Err(KillError::Refused(format!(
                "{} {}",
                e.code,
                String::from_utf8_lossy(&e.message)
            )));
        }
    }
    // COM_QUIT; the server closes without answering.
    let _ = send(&mut s, 0, &[my::generic::command::COM_QUIT]).await;
    let _ = s.shutdown().await;
    Ok(())
}

/// The client side of a login with a password: native or caching_sha2
/// fast path, following AuthSwitchRequests; inside TLS when `tls` says so.
async fn login(
    mut tcp: TcpStream,
    account: &KillAccount,
    tls: Option<&BackendTls>,
) -> Result<Conn, KillError> {
    let greeting = read_packet(&mut tcp).await?;
    if let Some(e) = my::parse_err(&greeting.payload) {
        return Err(KillError::Login(String::from_utf8_lossy(&e.message).into()));
    }
    let g = my::parse_greeting(&greeting.payload)
        .map_err(|e| KillError::Login(format!("bad greeting: {e}")))?;
    let plugin = if g.auth_plugin.is_empty() {
        b"mysql_native_password".to_vec()
    } else {
        g.auth_plugin.clone()
    };
    let password = account.password.expose().as_bytes();
    let wanted = caps::CLIENT_LONG_PASSWORD
        | caps::CLIENT_PROTOCOL_41
        | caps::CLIENT_SECURE_CONNECTION
        | caps::CLIENT_PLUGIN_AUTH
        | caps::CLIENT_TRANSACTIONS
        | caps::CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA;
    let response = HandshakeResponse {
        capabilities: wanted & (g.capabilities | caps::CLIENT_LONG_PASSWORD),
        max_packet: 1 << 24,
        collation: 45,
        user: account.user.as_bytes().to_vec(),
        auth_response: auth_answer(&plugin, &g.scramble, password),
        auth_plugin: Some(plugin),
        ..Default::default()
    };
    let mut payload = Vec::with_capacity(64);
    let mut s = match tls_wanted(tls, g.capabilities)? {
        Some(t) => {
            let mut s = start_tls(tcp, t, &response).await?;
            my::encode_handshake_response_over_tls(&response, &mut payload);
            send(&mut s, 2, &payload).await?;
            s
        }
        None => {
            let mut s = Conn::Plain(tcp);
            my::encode_handshake_response(&response, &mut payload);
            send(&mut s, 1, &payload).await?;
            s
        }
    };
    loop {
        let p = read_packet(&mut s).await?;
        match p.payload.first() {
            Some(0x00) => return Ok(s),
            Some(0xFF) => {
                let msg = my::parse_err(&p.payload)
                    .map(|e| String::from_utf8_lossy(&e.message).into_owned())
                    .unwrap_or_default();
                return Err(KillError::Login(msg));
            }
            Some(0xFE) => {
                let (plugin, data) = my::parse_auth_switch(&p.payload)
                    .ok_or_else(|| KillError::Login("bad auth switch".into()))?;
                let answer = auth_answer(plugin, data, password);
                send(&mut s, p.seq.wrapping_add(1), &answer).await?;
            }
            // caching_sha2_password: 3 = fast auth done (OK follows).
            Some(0x01) if p.payload.get(1) == Some(&3) => {}
            _ => {
                return Err(KillError::Login(
                    "the server asked for full caching_sha2_password authentication; \
                     give the kill account mysql_native_password"
                        .into(),
                ))
            }
        }
    }
}

/// The auth answer of `plugin` for `scramble` and `password` (empty for an
/// empty password or a plugin this client does not speak, which the server
/// then refuses or switches).
fn auth_answer(plugin: &[u8], scramble: &[u8], password: &[u8]) -> Vec<u8> {
    match plugin {
        b"mysql_native_password" => my::scramble_native(scramble, password)
            .map(|a| a.to_vec())
            .unwrap_or_default(),
        b"caching_sha2_password" => <&[u8; 20]>::try_from(scramble)
            .ok()
            .and_then(|nonce| my::scramble_sha256(nonce, password))
            .map(|a| a.to_vec())
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

async fn send(s: &mut Conn, seq: u8, payload: &[u8]) -> Result<(), KillError> {
    let mut out = BytesMut::with_capacity(payload.len() + my::HEADER_LEN);
    my::encode_packet(seq, payload, &mut out);
    s.write_all(&out).await.map_err(OpenError::Io)?;
    // TLS may hold the record until flushed.
    s.flush().await.map_err(OpenError::Io)?;
    Ok(())
}
