//! A plain TCP client connection, from accept to close: admission by source
//! address, the backend leg and an opaque relay with half-close.
//!
//! The path of one connection:
//! 1. admission ([`crate::admission::admit`]) with the client's address
//!    ([`Identity::Source`]): a live grant on this resource must list a
//!    source network that contains it. Otherwise the connection is closed
//!    (end of stream, no reset) and the refusal audited, *before the backend
//!    is dialled*: a TCP stream has no way to carry a reason;
//! 2. the backend is dialled; with `send_proxy_protocol` a PROXY v2 header
//!    naming the client goes first;
//! 3. [`crate::relay::run`] with [`Opaque`] copies bytes both ways: an end
//!    of stream from one side shuts down the other socket's write side and
//!    the other direction carries on (half-close), and every enforced end
//!    (expiry, revoke, kill, idle, session cap, shutdown) closes both
//!    sockets at once; then the end is audited.

use std::sync::Arc;
use std::time::Instant;

use tokio::net::TcpStream;

use crate::admission::{self, Identity};
use crate::config::ResourceConfig;
use crate::ending::EndReason;
use crate::gateway::Gateway;
use crate::metrics::{self as m, Outcome};
use crate::relay::{self, Opaque, RelayParams};
use crate::socket::{self, Endpoints};

/// Serve one client connection on a tcp resource.
pub async fn handle(
    gw: Arc<Gateway>,
    resource: Arc<ResourceConfig>,
    client: TcpStream,
    ends: Endpoints,
) {
    let accepted = Instant::now();
    let name = resource.name();
    let identity = Identity::Source(ends.client.ip());
    let admitted = match admission::admit(&gw, &resource, identity, ends.client, accepted) {
        Ok(a) => a,
        Err(_) => {
            // Audited and counted by admission; TCP has no way to say why.
            socket::close_refused(client).await;
            return;
        }
    };
    let session = admitted.session.clone();
    let backend = match socket::dial_announcing(&gw, &resource, ends).await {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(resource = name, error = %e, "backend unreachable");
            m::connection(name, "tcp", Outcome::Error);
            socket::close_refused(client).await;
            gw.on_session_ended(&session, &EndReason::Backend, None);
            drop(admitted.guard);
            return;
        }
    };
    m::connection(name, "tcp", Outcome::Accepted);
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
