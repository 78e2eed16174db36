//! Socket chores every protocol handler shares: reading the PROXY protocol
//! header a trusted load balancer puts in front of a connection, dialling a
//! backend (optionally announcing the client with a PROXY v2 header), and
//! closing a refused client without a reset.
//!
//! Invariants: an inbound PROXY header is read byte-exactly (never a byte of
//! the proxied stream), bounded in size and time; it is read only from peers
//! in `accept_proxy_protocol_from`, and required from them.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use proxy_protocols::proxy::{self, ProxyError, ProxyHeader};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::ResourceConfig;
use crate::gateway::Gateway;

/// How long a refused client is given to read what it was told and close
/// its side, before its socket is closed anyway.
pub const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// Most bytes read (and dropped) from a refused client while lingering.
const REFUSAL_DRAIN_MAX: usize = 64 * 1024;

/// Why an inbound PROXY protocol header could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ProxyHeaderError {
    /// The header is not valid.
    #[error("{0}")]
    Invalid(#[from] ProxyError),
    /// The peer closed or the socket failed before the header was complete.
    #[error("i/o error reading the PROXY protocol header: {0}")]
    Io(#[from] std::io::Error),
}

/// The endpoints of a client connection as the gateway sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoints {
    /// The client's address (from the PROXY header when one was read).
    pub client: SocketAddr,
    /// The address the client connected to.
    pub local: SocketAddr,
}

/// Read exactly one PROXY protocol header (version 1 or 2) from `stream`
/// and return the endpoints it names; `Local`/`UNKNOWN` keep `real`.
/// The caller bounds the time.
pub async fn read_proxy_header(
    stream: &mut TcpStream,
    real: Endpoints,
) -> Result<Endpoints, ProxyHeaderError> {
    let mut buf = BytesMut::with_capacity(proxy::MIN_LEN);
    loop {
        if let Some(h) = proxy::decode(&mut buf)? {
            return Ok(match h {
                ProxyHeader::Local => real,
                ProxyHeader::Tcp {
                    source,
                    destination,
                } => Endpoints {
                    client: canonical(source),
                    local: canonical(destination),
                },
            });
        }
        // Never read past the header: what follows belongs to the protocol.
        let want = proxy::bytes_wanted(&buf).max(1);
        let start = buf.len();
        buf.resize(start + want, 0);
        let Some(dst) = buf.get_mut(start..) else {
            return Err(ProxyError::TooLong.into());
        };
        stream.read_exact(dst).await?;
    }
}

/// `addr` with an IPv4-mapped IPv6 address written as IPv4.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// Dial `resource`'s backend within `backend_connect_timeout`, with
/// TCP_NODELAY set.
pub async fn dial(gw: &Gateway, resource: &ResourceConfig) -> std::io::Result<TcpStream> {
    let t = gw.config().gateway.backend_connect_timeout.0;
    let s = tokio::time::timeout(t, TcpStream::connect(resource.backend()))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    s.set_nodelay(true)?;
    Ok(s)
}

/// [`dial`], then, when the resource has `send_proxy_protocol`, announce
/// the client with a PROXY protocol v2 header before any other byte.
pub async fn dial_announcing(
    gw: &Gateway,
    resource: &ResourceConfig,
    ends: Endpoints,
) -> std::io::Result<TcpStream> {
    let mut s = dial(gw, resource).await?;
    if resource.send_proxy_protocol() {
        let mut header = BytesMut::new();
        proxy::encode_v2(ends.client, ends.local, &mut header);
        let t = gw.config().gateway.backend_connect_timeout.0;
        tokio::time::timeout(t, s.write_all(&header))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "write timed out"))??;
    }
    Ok(s)
}

/// Close a refused client's socket without a reset: send end of stream,
/// then read (and drop) what it still sends until it closes too or
/// [`REFUSAL_LINGER`] passes. Closing a socket with unread bytes would send
/// a reset, which can destroy what the client was just told.
pub async fn close_refused(mut stream: TcpStream) {
    let _ = stream.shutdown().await;
    let drain = async {
        // On the heap: an array here would sit in every connection task
        // that may refuse, for the task's whole life (4 KiB per session).
        let mut buf = vec![0u8; 4096];
        let mut total = 0usize;
        while total < REFUSAL_DRAIN_MAX {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => total += n,
            }
        }
    };
    let _ = tokio::time::timeout(REFUSAL_LINGER, drain).await;
}
