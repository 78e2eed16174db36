//! Ending access to live TCP sessions: expiry, revoke, kill, idle timeout,
//! session cap and shutdown. Each case holds an open echo session, checks
//! that the client's socket and the backend's are both closed, how soon,
//! and what the audit log and metrics say.

mod common;

use std::time::{Duration, Instant, SystemTime};

use common::net::{established, read_until_closed, Backend, Mode};
use common::*;
use jitgate::grants::GrantId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LIMIT: Duration = Duration::from_secs(10);

/// Open a session and prove it relays.
async fn echo_session(gw: &TestGateway) -> TcpStream {
    let mut c = TcpStream::connect(gw.addr()).await.unwrap();
    c.write_all(b"ping").await.unwrap();
    let mut got = [0u8; 4];
    tokio::time::timeout(LIMIT, c.read_exact(&mut got))
        .await
        .expect("echo")
        .unwrap();
    assert_eq!(&got, b"ping");
    c
}

/// Both legs are closed: the client sees the end of its stream and the
/// backend's connection is gone.
async fn assert_both_closed(c: &mut TcpStream, backend: &Backend) {
    let (rest, _) = read_until_closed(c, LIMIT).await;
    assert!(rest.is_empty(), "nothing injected into an opaque stream");
    backend.wait_open(0, Duration::from_secs(2)).await;
}

/// A gateway in front of an echo backend, a grant of `grant` for
/// 127.0.0.1, and one live session on it.
async fn session_with_grant(
    name: &str,
    grant: Duration,
    tweak: impl FnOnce(&mut Opts),
) -> (TestGateway, Backend, TcpStream, GrantId, SystemTime) {
    let backend = Backend::start(Mode::Echo).await;
    let mut o = Opts::with_backend(name, "tcp", backend.addr);
    tweak(&mut o);
    let gw = start(o).await;
    let g = gw.grant_sources("alice", &["127.0.0.1/32"], grant);
    let c = echo_session(&gw).await;
    backend.wait_open(1, LIMIT).await;
    let deadline = g.expires_at();
    (gw, backend, c, g.id, deadline)
}

async fn ended(gw: &TestGateway, grant: GrantId) -> serde_json::Value {
    gw.wait_audit("session.ended", |e| e["grant_id"] == grant.to_string())
        .await
}

#[tokio::test]
async fn expiry_closes_both_sockets() {
    let (gw, backend, mut c, g, deadline) =
        session_with_grant("tcp-expiry", Duration::from_secs(2), |_| {}).await;
    assert_both_closed(&mut c, &backend).await;
    let lag = SystemTime::now()
        .duration_since(deadline)
        .unwrap_or_default();
    eprintln!("closed {lag:?} after the deadline");
    assert!(
        lag < Duration::from_secs(5),
        "closed {lag:?} after the deadline"
    );
    assert_eq!(ended(&gw, g).await["outcome"], "expired");
    assert_eq!(
        gw.metric("jitgate_sessions_closed_total", &["tcp-expiry", "expired"]),
        1.0
    );
    assert!(gw.metric("jitgate_enforcement_lag_seconds_count", &[]) >= 1.0);
}

#[tokio::test]
async fn revoke_closes_both_sockets_before_the_api_answers() {
    let (gw, backend, mut c, g, _) =
        session_with_grant("tcp-revoke", Duration::from_secs(300), |_| {}).await;
    let path = format!("/v1/grants/{g}?reason=done");
    let begun = Instant::now();
    let (status, body) = gw.api("DELETE", &path, Some(ADMIN_TOKEN), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["sessions_closed"], 1);
    assert!(gw.running.gateway.sessions.is_empty());
    assert_both_closed(&mut c, &backend).await;
    eprintln!("revoke to both sockets closed: {:?}", begun.elapsed());
    let e = ended(&gw, g).await;
    assert_eq!(e["outcome"], "revoked");
    assert_eq!(e["actor"], "admin");
}

#[tokio::test]
async fn revoking_a_grant_held_by_many_sessions_closes_them_all_with_every_end_on_record() {
    // Enough sessions that the revoke wakes them as a wave on the workers
    // (each one's teardown then waits behind the others' ends).
    const N: usize = 200;
    let (gw, backend, first, g, _) =
        session_with_grant("tcp-revoke-many", Duration::from_secs(300), |_| {}).await;
    let mut clients = vec![first];
    for _ in 1..N {
        clients.push(echo_session(&gw).await);
    }
    backend.wait_open(N, LIMIT).await;
    let path = format!("/v1/grants/{g}?reason=done");
    let (status, body) = gw.api("DELETE", &path, Some(ADMIN_TOKEN), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["sessions_closed"], N);
    assert!(gw.running.gateway.sessions.is_empty());
    for c in &mut clients {
        let (rest, _) = read_until_closed(c, LIMIT).await;
        assert!(rest.is_empty(), "nothing injected into an opaque stream");
    }
    backend.wait_open(0, Duration::from_secs(2)).await;
    assert_eq!(
        gw.metric(
            "jitgate_sessions_closed_total",
            &["tcp-revoke-many", "revoked"]
        ),
        N as f64
    );
}

#[tokio::test]
async fn kill_closes_both_sockets() {
    let (gw, backend, mut c, g, _) =
        session_with_grant("tcp-kill", Duration::from_secs(300), |_| {}).await;
    let id = gw.running.gateway.sessions.list()[0].id;
    let (status, body) = gw
        .api(
            "DELETE",
            &format!("/v1/sessions/{id}"),
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_both_closed(&mut c, &backend).await;
    assert_eq!(ended(&gw, g).await["outcome"], "killed");
}

#[tokio::test]
async fn idle_timeout_closes_both_sockets() {
    let (gw, backend, mut c, g, _) =
        session_with_grant("tcp-idle", Duration::from_secs(300), |o| {
            o.idle_timeout = "1s"
        })
        .await;
    let begun = Instant::now();
    assert_both_closed(&mut c, &backend).await;
    let after = begun.elapsed();
    assert!(
        after >= Duration::from_millis(800) && after < Duration::from_secs(4),
        "closed after {after:?} idle"
    );
    assert_eq!(ended(&gw, g).await["outcome"], "idle");
}

#[tokio::test]
async fn traffic_keeps_an_idle_timeout_away() {
    let (gw, backend, mut c, _, _) =
        session_with_grant("tcp-busy", Duration::from_secs(300), |o| {
            o.idle_timeout = "1s"
        })
        .await;
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        c.write_all(b"tick").await.unwrap();
        let mut got = [0u8; 4];
        c.read_exact(&mut got).await.unwrap();
    }
    assert_eq!(backend.open(), 1);
    assert_eq!(gw.running.gateway.sessions.len(), 1);
}

#[tokio::test]
async fn session_cap_closes_both_sockets() {
    let (gw, backend, mut c, g, _) = session_with_grant("tcp-cap", Duration::from_secs(300), |o| {
        o.max_session = "2s"
    })
    .await;
    assert_both_closed(&mut c, &backend).await;
    assert_eq!(ended(&gw, g).await["outcome"], "max_session");
}

#[tokio::test]
async fn shutdown_closes_both_sockets() {
    let (gw, backend, mut c, g, _) =
        session_with_grant("tcp-shutdown", Duration::from_secs(300), |_| {}).await;
    gw.running.shutdown(Duration::from_secs(5)).await;
    assert_both_closed(&mut c, &backend).await;
    assert_eq!(ended(&gw, g).await["outcome"], "shutdown");
}

#[tokio::test]
async fn a_half_closed_session_is_still_enforced() {
    // The client has finished sending; the backend has not answered yet.
    let backend = Backend::start(Mode::BannerThenSink(Vec::new())).await;
    let gw = start(Opts::with_backend("tcp-half-kill", "tcp", backend.addr)).await;
    let g = gw.grant_sources("alice", &["127.0.0.1/32"], Duration::from_secs(2));
    let mut c = TcpStream::connect(gw.addr()).await.unwrap();
    // The backend closed its side at once; the client keeps its side open.
    let (got, _) = read_until_closed(&mut c, LIMIT).await;
    assert!(got.is_empty());
    backend.wait_open(1, LIMIT).await;
    // At expiry both legs close: the backend's, still open for the
    // client's bytes, and the client's, still open for sending.
    backend.wait_open(0, Duration::from_secs(5)).await;
    wait_until(
        "the client leg is closed",
        Duration::from_secs(2),
        || async { established(gw.addr().port()) == 0 },
    )
    .await;
    assert_eq!(ended(&gw, g.id).await["outcome"], "expired");
}
