//! The PROXY protocol on both legs: a trusted load balancer in front of
//! jitgate names the real client (`accept_proxy_protocol_from`), and a
//! backend behind it is told who the client is (`send_proxy_protocol`).
//! Fake load balancers write the headers HAProxy writes; a fake backend
//! reads and records the header jitgate sends.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use common::net::{read_until_closed, Backend, Ended, Mode};
use common::*;
use proxy_protocols::proxy::{self, ProxyHeader};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const LIMIT: Duration = Duration::from_secs(10);

/// Connect, send `prefix` then `payload`, half-close, return the echo.
async fn echo_via(addr: SocketAddr, prefix: &[u8], payload: &[u8]) -> (Vec<u8>, Ended, SocketAddr) {
    let mut c = TcpStream::connect(addr).await.unwrap();
    let local = c.local_addr().unwrap();
    // A refused connection may be closed before these complete.
    let _ = c.write_all(&[prefix, payload].concat()).await;
    let _ = c.shutdown().await;
    let (got, how) = read_until_closed(&mut c, LIMIT).await;
    (got, how, local)
}

#[tokio::test]
async fn the_backend_is_told_the_client_address_in_a_v2_header() {
    let backend = Backend::start(Mode::ProxyThenEcho).await;
    let mut o = Opts::with_backend("pp-send", "tcp", backend.addr);
    o.resource_extra = "send_proxy_protocol = true".into();
    let gw = start(o).await;
    gw.grant_sources("alice", &["127.0.0.1/32"], Duration::from_secs(60));
    let (echo, _, local) = echo_via(gw.addr(), b"", b"after the header").await;
    assert_eq!(echo, b"after the header", "the header is not relayed back");
    let headers = backend.stats.headers.lock().unwrap().clone();
    assert_eq!(
        headers,
        vec![ProxyHeader::Tcp {
            source: local,
            destination: gw.addr()
        }]
    );
}

#[tokio::test]
async fn a_trusted_balancer_names_the_client_that_grants_are_matched_against() {
    let backend = Backend::start(Mode::ProxyThenEcho).await;
    let mut o = Opts::with_backend("pp-accept", "tcp", backend.addr);
    o.gateway_extra = "accept_proxy_protocol_from = [\"127.0.0.0/8\"]".into();
    o.resource_extra = "send_proxy_protocol = true".into();
    let gw = start(o).await;
    // The balancer's own address (127.0.0.1) has no grant; the client's has.
    let g = gw.grant_sources("alice", &["198.51.100.0/24"], Duration::from_secs(60));
    let gw_port = gw.addr().port();
    let v1 = format!("PROXY TCP4 198.51.100.7 127.0.0.1 40001 {gw_port}\r\n");
    let (echo, _, _) = echo_via(gw.addr(), v1.as_bytes(), b"v1 client").await;
    assert_eq!(echo, b"v1 client");
    let mut v2 = BytesMut::new();
    proxy::encode_v2("198.51.100.8:40002".parse().unwrap(), gw.addr(), &mut v2);
    let (echo, _, _) = echo_via(gw.addr(), &v2, b"v2 client").await;
    assert_eq!(echo, b"v2 client");
    // The real client's address goes on to the backend and into the audit log.
    let headers = backend.stats.headers.lock().unwrap().clone();
    assert_eq!(
        headers,
        vec![
            ProxyHeader::Tcp {
                source: "198.51.100.7:40001".parse().unwrap(),
                destination: gw.addr()
            },
            ProxyHeader::Tcp {
                source: "198.51.100.8:40002".parse().unwrap(),
                destination: gw.addr()
            },
        ]
    );
    let started = gw.audit_events("session.started");
    assert_eq!(started.len(), 2);
    assert_eq!(started[0]["client_addr"], "198.51.100.7:40001");
    assert_eq!(started[0]["grant_id"], g.id.to_string());
    // A client from a network without a grant is refused, and so is the
    // balancer's own health check (LOCAL: its own address is used).
    let other = format!("PROXY TCP4 203.0.113.9 127.0.0.1 40003 {gw_port}\r\n");
    let (echo, _, _) = echo_via(gw.addr(), other.as_bytes(), b"nope").await;
    assert!(echo.is_empty());
    let mut local = proxy::V2_SIGNATURE.to_vec();
    local.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
    let (echo, _, _) = echo_via(gw.addr(), &local, b"health").await;
    assert!(echo.is_empty());
    let denied = gw.audit_events("session.denied");
    assert_eq!(denied.len(), 2);
    assert_eq!(denied[0]["client_addr"], "203.0.113.9:40003");
    assert!(denied[1]["client_addr"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    assert_eq!(backend.accepted(), 2);
}

#[tokio::test]
async fn a_trusted_peer_without_a_header_is_dropped() {
    let backend = Backend::start(Mode::Echo).await;
    let mut o = Opts::with_backend("pp-missing", "tcp", backend.addr);
    o.gateway_extra = "accept_proxy_protocol_from = [\"127.0.0.1\"]".into();
    let gw = start(o).await;
    gw.grant_sources("alice", &["127.0.0.1/32"], Duration::from_secs(60));
    // Not a header: dropped at its first bytes.
    let (echo, _, _) = echo_via(gw.addr(), b"", b"hello without a header").await;
    assert!(echo.is_empty());
    // A header that never completes: dropped at the handshake timeout (2s).
    let mut c = TcpStream::connect(gw.addr()).await.unwrap();
    c.write_all(b"PROXY TCP4 198.51.100.7").await.unwrap();
    let begun = std::time::Instant::now();
    let (got, _) = read_until_closed(&mut c, LIMIT).await;
    assert!(got.is_empty());
    assert!(
        begun.elapsed() >= Duration::from_millis(1900),
        "{:?}",
        begun.elapsed()
    );
    assert_eq!(backend.accepted(), 0);
    assert_eq!(
        gw.metric("jitgate_connections_total", &["pp-missing", "error"]),
        2.0
    );
    // A resource can turn the gateway's list off for itself.
    let mut o = Opts::with_backend("pp-off", "tcp", backend.addr);
    o.gateway_extra = "accept_proxy_protocol_from = [\"127.0.0.1\"]".into();
    o.resource_extra = "accept_proxy_protocol_from = []".into();
    let gw = start(o).await;
    gw.grant_sources("alice", &["127.0.0.1/32"], Duration::from_secs(60));
    let (echo, _, _) = echo_via(gw.addr(), b"", b"plain").await;
    assert_eq!(echo, b"plain");
}
