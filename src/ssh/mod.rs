//! An SSH client connection, from accept to close. jitgate does not
//! terminate SSH: the client authenticates to the backend's sshd with its
//! own keys, and the stream is encrypted end to end. jitgate reads only the
//! clear-text identification exchange, to refuse properly and to record
//! both sides' software versions.
//!
//! The path of one connection:
//! 1. precheck ([`crate::admission::precheck`]) with the client's address:
//!    no live grant on this resource lists a source network that contains
//!    it → the client is told why (see [`exchange`]: OpenSSH prints
//!    `Received disconnect from ...: jitgate: no active access grant ...`)
//!    and closed, audited as `session.denied`; the backend is never dialled;
//! 2. within `handshake_timeout`: the client's version line (its first line;
//!    at most 255 bytes), then the backend is dialled (with
//!    `send_proxy_protocol`, a PROXY v2 header goes first) and its version
//!    line read, with any text lines it sends before it;
//! 3. admission ([`crate::admission::admit_with`]), which checks the grant
//!    again and writes `session.started` with both version lines; only now
//!    does the backend get the client's bytes and the client the server's;
//! 4. [`crate::relay::run`] with [`Opaque`] relays the encrypted stream.
//!    An enforced end (expiry, revoke, kill, idle, session cap, shutdown)
//!    closes both sockets at once: the stream is encrypted, so jitgate
//!    cannot say why inside it; OpenSSH prints `Connection to HOST closed
//!    by remote host.` and the audit log has the reason.

pub mod exchange;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proxy_protocols::ssh::{DisconnectReason, Sender};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::admission::{self, Details, Identity, Refusal};
use crate::config::{HumanDuration, ResourceConfig};
use crate::ending::EndReason;
use crate::gateway::Gateway;
use crate::metrics::{self as m, Outcome};
use crate::relay::{self, Opaque, RelayParams, FINISH_BUDGET};
use crate::socket::{self, Endpoints};
use exchange::{Ident, ReadError};

/// Why the identification exchange did not complete.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("client: {0}")]
    Client(ReadError),
    #[error("identification exchange not completed within {}", HumanDuration(*.0))]
    Timeout(Duration),
    #[error("backend unreachable: {0}")]
    Unreachable(std::io::Error),
    #[error("backend: {0}")]
    Backend(ReadError),
}

impl Failure {
    /// What to tell the client, if anything can be.
    fn tell_client(&self, resource: &str) -> Option<(DisconnectReason, String)> {
        match self {
            Failure::Client(ReadError::Protocol(e)) => {
                Some((e.disconnect_reason(), format!("jitgate: {e}")))
            }
            Failure::Client(_) => None,
            Failure::Timeout(_) => {
                Some((DisconnectReason::ProtocolError, format!("jitgate: {self}")))
            }
            Failure::Unreachable(_) => Some((
                DisconnectReason::ServiceNotAvailable,
                format!("jitgate: cannot reach the backend of {resource}"),
            )),
            Failure::Backend(_) => Some((
                DisconnectReason::ServiceNotAvailable,
                format!("jitgate: the backend of {resource} did not identify as an SSH server"),
            )),
        }
    }
}

/// Serve one client connection on an ssh resource.
pub async fn handle(
    gw: Arc<Gateway>,
    resource: Arc<ResourceConfig>,
    mut client: TcpStream,
    ends: Endpoints,
) {
    let accepted = Instant::now();
    let name = resource.name().to_string();
    let peer = ends.client;
    let identity = Identity::Source(peer.ip());
    let no_grant = || {
        (
            admission::no_grant_message(&identity.to_string(), &name),
            admission::no_grant_hint(&name),
        )
    };

    // Refuse a client without a grant before anything else: no backend dial.
    if admission::precheck(&gw, &resource, identity, peer, accepted).is_err() {
        let (text, hint) = no_grant();
        let why = DisconnectReason::HostNotAllowedToConnect;
        exchange::refuse(client, why, &text, Some(&hint)).await;
        return;
    }

    let timeout = gw.config().gateway.handshake_timeout.0;
    let identified = tokio::select! {
        r = tokio::time::timeout(timeout, identify(&gw, &resource, &mut client, ends)) => {
            r.unwrap_or(Err(Failure::Timeout(timeout)))
        }
        _ = gw.shutdown.cancelled() => return,
    };
    let (client_ident, mut backend, server_ident) = match identified {
        Ok(v) => v,
        Err(f) => {
            m::connection(&name, "ssh", Outcome::Error);
            m::handshake(accepted.elapsed());
            match &f {
                Failure::Unreachable(_) | Failure::Backend(_) => {
                    tracing::warn!(%peer, resource = %name, error = %f, "ssh identification failed");
                }
                _ => {
                    tracing::debug!(%peer, resource = %name, error = %f, "ssh identification failed")
                }
            }
            match f.tell_client(&name) {
                Some((why, text)) => exchange::refuse(client, why, &text, None).await,
                None => socket::close_refused(client).await,
            }
            return;
        }
    };

    let details = Details {
        client_version: Some(client_ident.version.line().to_string()),
        server_version: Some(server_ident.version.line().to_string()),
    };
    let admitted = match admission::admit_with(&gw, &resource, identity, peer, accepted, details) {
        Ok(a) => a,
        Err(Refusal::NoGrant) => {
            // The grant ended while the versions were exchanged.
            let (text, hint) = no_grant();
            let why = DisconnectReason::HostNotAllowedToConnect;
            exchange::refuse(client, why, &text, Some(&hint)).await;
            return;
        }
        Err(Refusal::AuditUnavailable) => {
            let text = "jitgate: audit log unavailable, access refused";
            exchange::refuse(client, DisconnectReason::ByApplication, text, None).await;
            return;
        }
    };
    let session = admitted.session.clone();

    // Admitted: each side now gets what the other sent so far.
    let up = client_ident.wire_bytes();
    let down = server_ident.wire_bytes();
    let forwarded = tokio::time::timeout(FINISH_BUDGET, async {
        backend
            .write_all(&up)
            .await
            .map_err(|_| EndReason::Backend)?;
        client.write_all(&down).await.map_err(|_| EndReason::Client)
    })
    .await
    .unwrap_or(Err(EndReason::Error));
    let (bytes_up, bytes_down) = m::byte_counters(&name);
    session
        .bytes_up
        .fetch_add(up.len() as u64, Ordering::Relaxed);
    session
        .bytes_down
        .fetch_add(down.len() as u64, Ordering::Relaxed);
    bytes_up.increment(up.len() as u64);
    bytes_down.increment(down.len() as u64);
    if let Err(reason) = forwarded {
        m::connection(&name, "ssh", Outcome::Error);
        drop((client, backend));
        gw.on_session_ended(&session, &reason, None);
        drop(admitted.guard);
        return;
    }
    m::connection(&name, "ssh", Outcome::Accepted);

    let params = RelayParams {
        session: session.clone(),
        idle: resource.idle_timeout(),
        warnings: Vec::new(),
        buffer_size: gw.config().gateway.relay_buffer_size,
        handshake_deadline: None,
    };
    let (reason, since) = relay::run(params, Opaque, client, backend).await;
    gw.on_session_ended(&session, &reason, since);
    drop(admitted.guard);
}

/// The client's version line, then the backend dialled and its version line.
async fn identify(
    gw: &Gateway,
    resource: &ResourceConfig,
    client: &mut TcpStream,
    ends: Endpoints,
) -> Result<(Ident, TcpStream, Ident), Failure> {
    let client_ident = exchange::read_ident(client, Sender::Client)
        .await
        .map_err(Failure::Client)?;
    let mut backend = socket::dial_announcing(gw, resource, ends)
        .await
        .map_err(Failure::Unreachable)?;
    let server_ident = exchange::read_ident(&mut backend, Sender::Server)
        .await
        .map_err(Failure::Backend)?;
    Ok((client_ident, backend, server_ident))
}
