//! Hostile and malformed input on a PostgreSQL listener, written as raw
//! bytes on a TCP socket. Each case checks what the client gets back (an
//! ErrorResponse, or exactly 'N' for an encryption request), that the
//! gateway closes the socket, that nothing was admitted, and that a good
//! tokio-postgres client still works through the same gateway afterwards.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::pgraw::*;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SSL_REQUEST: u32 = 80877103;
const GSSENC_REQUEST: u32 = 80877104;

/// Open a connection, write `bytes` in one write, and read everything the
/// gateway sends until it closes the socket. Panics unless it closes within
/// `limit`. A reset counts as a close.
async fn exchange(addr: SocketAddr, bytes: &[u8], limit: Duration) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    read_until_closed(&mut s, limit).await
}

async fn read_until_closed(s: &mut TcpStream, limit: Duration) -> Vec<u8> {
    let mut out = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
                Err(e) => panic!("read failed: {e}"),
            }
        }
    };
    tokio::time::timeout(limit, read)
        .await
        .expect("the gateway did not close the connection");
    out
}

/// A gateway with a live grant for login `postgres`.
async fn gateway(resource: &str) -> TestGateway {
    let gw = start(Opts::new(resource)).await;
    gw.grant("alice", "postgres", Duration::from_secs(60));
    gw
}

/// A real client is still served normally.
async fn still_works(gw: &TestGateway) {
    let c = connect(&gw.pg_config("postgres")).await.unwrap();
    let row = c.client.query_one("SELECT 6 * 7", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
}

/// `jitgate_connections_total` of this gateway's resource for `outcome`.
fn connections(gw: &TestGateway, outcome: &str) -> f64 {
    gw.metric(
        "jitgate_connections_total",
        &[
            &format!("resource=\"{}\"", gw.resource),
            &format!("outcome=\"{outcome}\""),
        ],
    )
}

/// Nothing was admitted: no session started, no session live.
fn nothing_admitted(gw: &TestGateway) {
    assert!(gw.audit_events("session.started").is_empty());
    assert!(gw.running.gateway.sessions.is_empty());
}

#[tokio::test]
async fn announced_length_of_100000_is_refused_before_reading_it() {
    let gw = gateway("pg-h-huge").await;
    let mut bytes = 100_000u32.to_be_bytes().to_vec();
    bytes.extend_from_slice(&PROTOCOL_3_0.to_be_bytes());
    let out = exchange(gw.addr(), &bytes, Duration::from_secs(2)).await;
    let e = error_response(&out);
    assert_eq!(e[&'S'], "FATAL");
    assert_eq!(e[&'C'], "08P01");
    assert!(
        e[&'M'].contains("invalid length of startup packet: 100000 bytes"),
        "{e:?}"
    );
    nothing_admitted(&gw);
    assert_eq!(connections(&gw, "error"), 1.0);
    still_works(&gw).await;
}

#[tokio::test]
async fn announced_length_below_8_is_refused() {
    let gw = gateway("pg-h-short").await;
    let out = exchange(gw.addr(), &4u32.to_be_bytes(), Duration::from_secs(2)).await;
    let e = error_response(&out);
    assert_eq!(e[&'C'], "08P01");
    assert!(e[&'M'].contains("the minimum is 8"), "{e:?}");
    nothing_admitted(&gw);
    assert_eq!(connections(&gw, "error"), 1.0);
    still_works(&gw).await;
}

#[tokio::test]
async fn random_bytes_are_refused_and_closed() {
    let gw = gateway("pg-h-random").await;
    // An HTTP request on the PostgreSQL port ("GET " as a length is huge).
    let out = exchange(
        gw.addr(),
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(error_response(&out)[&'C'], "08P01");
    // Seeded noise (xorshift), several lengths: whatever the bytes say, the
    // answer is an error or nothing, and the socket is closed by the
    // handshake timeout (2 s) at the latest.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for len in [1usize, 7, 64, 512] {
        let noise: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let out = exchange(gw.addr(), &noise, Duration::from_secs(4)).await;
        assert!(
            out.is_empty() || out[0] == b'E',
            "noise of {len} bytes got {out:?}"
        );
    }
    nothing_admitted(&gw);
    assert_eq!(connections(&gw, "error"), 5.0);
    still_works(&gw).await;
}

#[tokio::test]
async fn bytes_pipelined_after_an_encryption_request_are_refused() {
    // CVE-2021-23214: plaintext injected right behind an SSLRequest, before
    // the server's answer, must never be taken as part of the session.
    let gw = gateway("pg-h-pipelined").await;
    for (code, what) in [(SSL_REQUEST, "SSL"), (GSSENC_REQUEST, "GSSENC")] {
        let mut bytes = packet(code, None);
        bytes.extend_from_slice(&startup("postgres"));
        let out = exchange(gw.addr(), &bytes, Duration::from_secs(2)).await;
        // No 'N' first: the error is the whole answer.
        let e = error_response(&out);
        assert_eq!(e[&'C'], "08P01");
        assert_eq!(
            e[&'M'],
            format!("jitgate: unexpected data after {what} request")
        );
    }
    nothing_admitted(&gw);
    assert_eq!(connections(&gw, "error"), 2.0);
    still_works(&gw).await;
}

#[tokio::test]
async fn a_stalled_startup_is_dropped_after_the_handshake_timeout() {
    let gw = gateway("pg-h-stall").await;
    let begun = Instant::now();
    // Half a StartupMessage, then nothing; and a client that sends nothing.
    let half = &startup("postgres")[..10];
    let (stalled, silent) = tokio::join!(
        exchange(gw.addr(), half, Duration::from_secs(5)),
        exchange(gw.addr(), &[], Duration::from_secs(5)),
    );
    let took = begun.elapsed();
    // handshake_timeout is 2 s in the harness.
    assert!(
        took >= Duration::from_millis(1800),
        "dropped after {took:?}"
    );
    assert!(took < Duration::from_millis(4500), "dropped after {took:?}");
    for out in [stalled, silent] {
        let e = error_response(&out);
        assert_eq!(e[&'C'], "08006");
        assert!(e[&'M'].contains("handshake timeout"), "{e:?}");
    }
    nothing_admitted(&gw);
    assert_eq!(connections(&gw, "error"), 2.0);
    still_works(&gw).await;
}

#[tokio::test]
async fn unknown_protocol_versions_are_refused() {
    let gw = gateway("pg-h-version").await;
    for (code, text) in [
        ((1234 << 16) | 5681, "1234.5681"),
        (2 << 16, "2.0"),
        (4 << 16, "4.0"),
    ] {
        let out = exchange(
            gw.addr(),
            &packet(code, Some(&[("user", "postgres")])),
            Duration::from_secs(2),
        )
        .await;
        let e = error_response(&out);
        // PostgreSQL's own code for this fault: feature_not_supported.
        assert_eq!(e[&'C'], "0A000", "{e:?}");
        assert!(
            e[&'M'].contains(&format!("unsupported frontend protocol {text}")),
            "{e:?}"
        );
    }
    nothing_admitted(&gw);
    assert_eq!(connections(&gw, "error"), 3.0);
    still_works(&gw).await;
}

#[tokio::test]
async fn ssl_request_is_answered_with_exactly_n_then_plaintext_goes_on() {
    let gw = gateway("pg-h-ssl").await;
    let mut s = TcpStream::connect(gw.addr()).await.unwrap();
    s.write_all(&packet(SSL_REQUEST, None)).await.unwrap();
    let mut answer = [0u8; 1];
    tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&answer, b"N");
    // Nothing but that byte: the next thing read is the backend's first
    // answer to the StartupMessage, AuthenticationOk (trust).
    s.write_all(&startup("postgres")).await.unwrap();
    let (tag, body) = read_message(&mut s).await;
    assert_eq!((tag, body.as_slice()), (b'R', &[0u8, 0, 0, 0][..]));
    loop {
        let (tag, _) = read_message(&mut s).await;
        if tag == b'Z' {
            break;
        }
        assert_ne!(tag, b'E');
    }
    // Terminate.
    s.write_all(&[b'X', 0, 0, 0, 4]).await.unwrap();
    read_until_closed(&mut s, Duration::from_secs(2)).await;
    assert_eq!(connections(&gw, "accepted"), 1.0);
    still_works(&gw).await;
}

#[tokio::test]
async fn gssenc_then_ssl_requests_are_refused_with_n_and_a_third_is_an_error() {
    let gw = gateway("pg-h-gssenc").await;
    let mut s = TcpStream::connect(gw.addr()).await.unwrap();
    let mut answer = [0u8; 1];
    for code in [GSSENC_REQUEST, SSL_REQUEST] {
        s.write_all(&packet(code, None)).await.unwrap();
        tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut answer))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&answer, b"N");
    }
    // libpq asks at most once for each; a third request is not a client.
    s.write_all(&packet(SSL_REQUEST, None)).await.unwrap();
    let out = read_until_closed(&mut s, Duration::from_secs(2)).await;
    let e = error_response(&out);
    assert_eq!(e[&'C'], "08P01");
    assert!(e[&'M'].contains("too many"), "{e:?}");
    nothing_admitted(&gw);
    assert_eq!(connections(&gw, "error"), 1.0);
    still_works(&gw).await;
}

#[tokio::test]
async fn a_startup_without_user_is_refused() {
    let gw = gateway("pg-h-nouser").await;
    let out = exchange(
        gw.addr(),
        &packet(PROTOCOL_3_0, Some(&[("database", "test")])),
        Duration::from_secs(2),
    )
    .await;
    let e = error_response(&out);
    // As PostgreSQL: invalid_authorization_specification.
    assert_eq!(e[&'C'], "28000", "{e:?}");
    assert!(
        e[&'M'].contains("no PostgreSQL user name specified in startup packet"),
        "{e:?}"
    );
    // An empty user is no user either.
    let out = exchange(
        gw.addr(),
        &packet(PROTOCOL_3_0, Some(&[("user", ""), ("database", "test")])),
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(error_response(&out)[&'C'], "28000");
    nothing_admitted(&gw);
    assert!(gw.audit_events("session.denied").is_empty());
    assert_eq!(connections(&gw, "error"), 2.0);
    still_works(&gw).await;
}

#[tokio::test]
async fn a_startup_for_a_login_without_grant_is_denied_and_audited() {
    let gw = gateway("pg-h-nogrant").await;
    // Valid framing, but `root` holds no grant here: refused before any
    // backend byte, and that decision is on record.
    let out = exchange(gw.addr(), &startup("root"), Duration::from_secs(2)).await;
    let e = error_response(&out);
    assert_eq!(e[&'C'], "28000");
    assert_eq!(
        e[&'M'],
        "jitgate: no active access grant for \"root\" on \"pg-h-nogrant\""
    );
    let denied = gw.wait_audit("session.denied", |_| true).await;
    assert_eq!(denied["login"], "root");
    nothing_admitted(&gw);
    assert_eq!(connections(&gw, "denied"), 1.0);
    assert_eq!(connections(&gw, "error"), 0.0);
    still_works(&gw).await;
}

#[tokio::test]
async fn replication_connections_are_refused_even_with_a_grant() {
    let gw = gateway("pg-h-repl").await;
    for mode in ["true", "database", "on"] {
        let bytes = packet(
            PROTOCOL_3_0,
            Some(&[
                ("user", "postgres"),
                ("database", "test"),
                ("replication", mode),
            ]),
        );
        let out = exchange(gw.addr(), &bytes, Duration::from_secs(5)).await;
        let e = error_response(&out);
        assert_eq!(e[&'C'], "28000", "{mode}");
        assert!(
            e[&'M'].contains("replication connections are not allowed"),
            "{mode}: {e:?}"
        );
    }
    nothing_admitted(&gw);
    // Each refusal is a decision, and audited as one.
    gw.wait_audit("session.denied", |e| e["outcome"] == "replication")
        .await;
    let denied = gw.audit_events("session.denied");
    assert_eq!(denied.len(), 3, "{denied:?}");
    for e in &denied {
        assert_eq!(e["outcome"], "replication", "{e}");
        assert_eq!(e["login"], "postgres", "{e}");
        assert!(
            e["reason"]
                .as_str()
                .unwrap()
                .contains("replication connections"),
            "{e}"
        );
    }
    // `replication=false` is an ordinary session.
    let mut c = gw.pg_config("postgres");
    c.options("-c application_name=not_replication");
    connect(&c)
        .await
        .unwrap()
        .client
        .simple_query("SELECT 1")
        .await
        .unwrap();
    still_works(&gw).await;
}
