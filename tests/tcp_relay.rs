//! Plain TCP resources: admission by source address, an opaque relay with
//! half-close, byte-exact transfer on 100 parallel streams, byte counters.
//! In-process fake backends (echo, banner-then-sink) through the real
//! gateway on loopback.

mod common;

use std::time::Duration;

use common::net::{pattern, read_until_closed, Backend, Ended, Mode};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LIMIT: Duration = Duration::from_secs(10);

async fn gateway(name: &str, mode: Mode) -> (TestGateway, Backend) {
    let backend = Backend::start(mode).await;
    let gw = start(Opts::with_backend(name, "tcp", backend.addr)).await;
    (gw, backend)
}

#[tokio::test]
async fn echo_through_a_source_grant_is_audited_and_counted() {
    let (gw, backend) = gateway("tcp-echo", Mode::Echo).await;
    let g = gw.grant_sources("alice", &["127.0.0.1/32"], Duration::from_secs(60));
    let mut c = TcpStream::connect(gw.addr()).await.unwrap();
    let local = c.local_addr().unwrap();
    c.write_all(b"hello, backend").await.unwrap();
    c.shutdown().await.unwrap();
    let (echo, how) = read_until_closed(&mut c, LIMIT).await;
    assert_eq!(echo, b"hello, backend");
    assert_eq!(how, Ended::Eof);

    let started = gw
        .wait_audit("session.started", |e| e["grant_id"] == g.id.to_string())
        .await;
    assert_eq!(started["protocol"], "tcp");
    assert_eq!(started["principal"], "alice");
    assert_eq!(started["client_addr"], local.to_string());
    assert!(started.get("login").is_none(), "{started}");
    let ended = gw
        .wait_audit("session.ended", |e| e["grant_id"] == g.id.to_string())
        .await;
    assert_eq!(ended["outcome"], "client");
    assert!(ended.get("login").is_none(), "{ended}");
    assert_eq!(ended["bytes_up"], 14);
    assert_eq!(ended["bytes_down"], 14);
    assert_eq!(
        gw.metric(
            "jitgate_connections_total",
            &["tcp-echo", "tcp", "accepted"]
        ),
        1.0
    );
    assert_eq!(
        gw.metric("jitgate_bytes_total", &["tcp-echo", "direction=\"up\""]),
        14.0
    );
    assert_eq!(gw.metric("jitgate_sessions_active", &["tcp-echo"]), 0.0);
    backend.wait_open(0, LIMIT).await;
    let created = gw
        .wait_audit("grant.created", |e| e["grant_id"] == g.id.to_string())
        .await;
    assert_eq!(created["sources"], "127.0.0.1/32");
}

#[tokio::test]
async fn refused_without_a_grant_or_with_a_grant_for_another_network() {
    let (gw, backend) = gateway("tcp-deny", Mode::Echo).await;
    let refused = || async {
        let mut c = TcpStream::connect(gw.addr()).await.unwrap();
        // Whatever the client sends is dropped; the gateway closes cleanly.
        let _ = c.write_all(b"let me in").await;
        let (got, how) = read_until_closed(&mut c, LIMIT).await;
        assert!(got.is_empty());
        assert_eq!(how, Ended::Eof, "closed with end of stream, not a reset");
    };
    refused().await;
    gw.grant_sources("alice", &["10.0.0.0/8", "::1/128"], Duration::from_secs(60));
    refused().await;
    assert_eq!(backend.accepted(), 0, "the backend was never dialled");
    let denied = gw.audit_events("session.denied");
    assert_eq!(denied.len(), 2, "{denied:?}");
    for d in &denied {
        assert_eq!(d["protocol"], "tcp");
        assert_eq!(d["outcome"], "no_grant");
        assert!(d["client_addr"].as_str().unwrap().starts_with("127.0.0.1:"));
        assert!(d.get("login").is_none());
    }
    assert_eq!(
        gw.metric("jitgate_connections_total", &["tcp-deny", "denied"]),
        2.0
    );
    // A grant whose network holds 127.0.0.1 admits.
    gw.grant_sources("bob", &["127.0.0.0/8"], Duration::from_secs(60));
    let mut c = TcpStream::connect(gw.addr()).await.unwrap();
    c.write_all(b"now").await.unwrap();
    c.shutdown().await.unwrap();
    assert_eq!(read_until_closed(&mut c, LIMIT).await.0, b"now");
}

#[tokio::test]
async fn client_half_close_lets_the_backend_finish_answering() {
    let (gw, backend) = gateway("tcp-half-up", Mode::Echo).await;
    let g = gw.grant_sources("alice", &["127.0.0.1"], Duration::from_secs(60));
    let data = pattern(1, 4 << 20);
    let c = TcpStream::connect(gw.addr()).await.unwrap();
    let (mut r, mut w) = c.into_split();
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&sent).await.unwrap();
        // End of stream from the client: the echo must still come back whole.
        w.shutdown().await.unwrap();
        w
    });
    let mut echo = Vec::new();
    tokio::time::timeout(LIMIT, r.read_to_end(&mut echo))
        .await
        .expect("the echo ends")
        .unwrap();
    let _w = writer.await.unwrap();
    assert_eq!(echo.len(), data.len());
    assert!(echo == data, "echo differs");
    let ended = gw
        .wait_audit("session.ended", |e| e["grant_id"] == g.id.to_string())
        .await;
    assert_eq!(ended["outcome"], "client", "the client closed first");
    assert_eq!(ended["bytes_up"], data.len());
    assert_eq!(ended["bytes_down"], data.len());
    backend.wait_open(0, LIMIT).await;
}

#[tokio::test]
async fn backend_half_close_lets_the_client_keep_sending() {
    let banner = b"ready; send me everything\n".to_vec();
    let (gw, backend) = gateway("tcp-half-down", Mode::BannerThenSink(banner.clone())).await;
    let g = gw.grant_sources("alice", &["127.0.0.1/32"], Duration::from_secs(60));
    let mut c = TcpStream::connect(gw.addr()).await.unwrap();
    // The backend has closed its side: the client sees the banner, then EOF...
    let mut got = Vec::new();
    tokio::time::timeout(LIMIT, c.read_to_end(&mut got))
        .await
        .expect("end of stream from the backend")
        .unwrap();
    assert_eq!(got, banner);
    // ...and may still send, all of it reaching the backend.
    let data = pattern(2, 1 << 20);
    c.write_all(&data).await.unwrap();
    c.shutdown().await.unwrap();
    backend.wait_open(0, LIMIT).await;
    let received = backend.stats.received.lock().unwrap().clone();
    assert_eq!(received.len(), 1);
    assert!(
        received[0] == data,
        "the backend got {} bytes",
        received[0].len()
    );
    let ended = gw
        .wait_audit("session.ended", |e| e["grant_id"] == g.id.to_string())
        .await;
    assert_eq!(ended["outcome"], "backend", "the backend closed first");
}

#[tokio::test]
async fn a_hundred_parallel_streams_are_byte_exact() {
    const STREAMS: u64 = 100;
    const LEN: usize = 256 * 1024;
    let (gw, backend) = gateway("tcp-parallel", Mode::Echo).await;
    gw.grant_sources("alice", &["127.0.0.1/32"], Duration::from_secs(300));
    let addr = gw.addr();
    let mut tasks = Vec::new();
    for i in 0..STREAMS {
        tasks.push(tokio::spawn(async move {
            let data = pattern(100 + i, LEN);
            let c = TcpStream::connect(addr).await.unwrap();
            let (mut r, mut w) = c.into_split();
            let sent = data.clone();
            let writer = tokio::spawn(async move {
                w.write_all(&sent).await.unwrap();
                w.shutdown().await.unwrap();
                w
            });
            let mut echo = Vec::with_capacity(LEN);
            r.read_to_end(&mut echo).await.unwrap();
            let _w = writer.await.unwrap();
            echo == data
        }));
    }
    let all = async {
        let mut exact = 0;
        for t in tasks {
            if t.await.unwrap() {
                exact += 1;
            }
        }
        exact
    };
    let exact = tokio::time::timeout(Duration::from_secs(120), all)
        .await
        .expect("100 streams finish");
    assert_eq!(exact, STREAMS);
    assert_eq!(backend.accepted(), STREAMS as usize);
    backend.wait_open(0, LIMIT).await;
    wait_until("every session ended", LIMIT, || async {
        gw.running.gateway.sessions.is_empty()
    })
    .await;
    let total = (STREAMS as usize * LEN) as f64;
    assert_eq!(
        gw.metric("jitgate_bytes_total", &["tcp-parallel", "direction=\"up\""]),
        total
    );
    assert_eq!(
        gw.metric(
            "jitgate_bytes_total",
            &["tcp-parallel", "direction=\"down\""]
        ),
        total
    );
}
