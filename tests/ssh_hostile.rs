//! Hostile and malformed input on an SSH listener, as raw bytes, from a
//! client that *has* a grant (so the gateway reads its identification). Each
//! case checks what the client is told, that its socket is closed, that
//! the backend (a fake SSH server) was never dialled, and that a good client
//! is served by the same gateway meanwhile and afterwards.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::net::{read_until_closed, Backend, Mode};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LIMIT: Duration = Duration::from_secs(10);

async fn gateway(name: &str) -> (TestGateway, Backend) {
    let backend = Backend::start(Mode::FakeSsh).await;
    let gw = start(Opts::with_backend(name, "ssh", backend.addr)).await;
    gw.grant_sources("alice", &["127.0.0.1/32"], Duration::from_secs(300));
    (gw, backend)
}

/// Send `bytes`, read until the gateway closes; returns what it said.
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(bytes).await;
    let (got, _) = read_until_closed(&mut s, LIMIT).await;
    String::from_utf8_lossy(&got).to_string()
}

/// A well-behaved SSH client gets the backend's version line, and the
/// stream is relayed: the fake backend echoes the client's version line and
/// what follows it.
async fn good_client(addr: SocketAddr) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let hello = b"SSH-2.0-GoodClient_1.0\r\nping";
    s.write_all(hello).await.unwrap();
    let want = [&b"SSH-2.0-FakeSSH_1.0\r\n"[..], hello].concat();
    let mut got = vec![0u8; want.len()];
    tokio::time::timeout(LIMIT, s.read_exact(&mut got))
        .await
        .expect("the good client is served")
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(&want)
    );
}

/// What the gateway tells a refused SSH client: text lines, its version
/// line, then the same reason as SSH_MSG_DISCONNECT.
fn assert_told(said: &str, reason: &str) {
    let first = said.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("jitgate: ") && first.contains(reason),
        "{said:?}"
    );
    assert!(said.contains("\r\nSSH-2.0-jitgate\r\n"), "{said:?}");
}

#[tokio::test]
async fn bad_identifications_are_refused_without_reaching_the_backend() {
    let (gw, backend) = gateway("ssh-bad").await;
    let addr = gw.addr();
    let mut long_line = vec![b'x'; 300];
    long_line.extend_from_slice(b"\r\nSSH-2.0-Late_1.0\r\n");
    let junk = b"junk line\r\n".repeat(100);
    let mut no_newline = b"SSH-2.0-".to_vec();
    no_newline.extend(std::iter::repeat_n(b'A', 10_000));
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "a 300-byte line before the version",
            long_line,
            "invalid SSH identification",
        ),
        ("100 junk lines", junk, "invalid SSH identification"),
        ("no newline at all", no_newline, "longer than 255 bytes"),
        (
            "no newline, not SSH",
            vec![b'B'; 10_000],
            "invalid SSH identification",
        ),
        ("SSH-1", b"SSH-1.5-Old_1.0\r\n".to_vec(), "not supported"),
        (
            "NUL in the version",
            b"SSH-2.0-Nul\0\r\n".to_vec(),
            "printable",
        ),
        (
            "HTTP",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            "invalid SSH identification",
        ),
    ];
    for (what, bytes, reason) in &cases {
        let said = exchange(addr, bytes).await;
        assert_told(&said, reason);
        eprintln!("{what}: told {:?}", said.lines().next().unwrap_or_default());
        good_client(addr).await;
    }
    assert_eq!(
        backend.accepted(),
        cases.len(),
        "only the good clients reached the backend"
    );
    assert_eq!(
        gw.metric("jitgate_connections_total", &["ssh-bad", "error"]),
        cases.len() as f64
    );
    assert!(gw.audit_events("session.denied").is_empty());
    assert_eq!(gw.audit_events("session.started").len(), cases.len());
}

#[tokio::test]
async fn stallers_are_dropped_at_the_handshake_timeout_while_others_are_served() {
    let (gw, backend) = gateway("ssh-stall").await;
    let addr = gw.addr();
    // One sends nothing, one half a version line, one a version line
    // trickled a byte at a time, slower than the timeout allows.
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let mut half = TcpStream::connect(addr).await.unwrap();
    half.write_all(b"SSH-2.0-Hal").await.unwrap();
    let mut trickle = TcpStream::connect(addr).await.unwrap();
    let trickler = tokio::spawn(async move {
        for b in b"SSH-2.0-Trickle_1.0\r\n" {
            if trickle.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        trickle
    });
    let begun = Instant::now();
    // Meanwhile, good clients are served at once.
    for _ in 0..5 {
        good_client(addr).await;
    }
    assert!(begun.elapsed() < Duration::from_secs(1));
    for s in [&mut silent, &mut half] {
        let (got, _) = read_until_closed(s, LIMIT).await;
        let said = String::from_utf8_lossy(&got);
        assert_told(&said, "not completed within 2s");
    }
    let waited = begun.elapsed();
    assert!(
        waited >= Duration::from_millis(1900) && waited < Duration::from_secs(5),
        "dropped after {waited:?} (handshake_timeout is 2s)"
    );
    let mut trickle = trickler.await.unwrap();
    let (got, _) = read_until_closed(&mut trickle, LIMIT).await;
    assert_told(&String::from_utf8_lossy(&got), "not completed within 2s");
    assert_eq!(backend.accepted(), 5);
    good_client(addr).await;
}

#[tokio::test]
async fn a_client_without_a_grant_is_refused_before_it_says_anything() {
    let backend = Backend::start(Mode::FakeSsh).await;
    let gw = start(Opts::with_backend("ssh-nogrant", "ssh", backend.addr)).await;
    // Connect and send nothing: the refusal comes at once.
    let mut s = TcpStream::connect(gw.addr()).await.unwrap();
    let begun = Instant::now();
    let (got, _) = read_until_closed(&mut s, LIMIT).await;
    assert!(begun.elapsed() < Duration::from_secs(2));
    let said = String::from_utf8_lossy(&got);
    assert!(
        said.starts_with("jitgate: no active access grant for \"127.0.0.1\" on \"ssh-nogrant\"\r\nrequest access with: jitgate request ssh-nogrant"),
        "{said:?}"
    );
    assert!(said.contains("\r\nSSH-2.0-jitgate\r\n"));
    assert_eq!(backend.accepted(), 0);
}

#[tokio::test]
async fn an_unreachable_backend_is_reported_to_the_client() {
    // A port nothing listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let gw = start(Opts::with_backend("ssh-dead", "ssh", dead)).await;
    gw.grant_sources("alice", &["127.0.0.1/32"], Duration::from_secs(60));
    let said = exchange(gw.addr(), b"SSH-2.0-Client_1.0\r\n").await;
    assert_told(&said, "cannot reach the backend of ssh-dead");
    assert_eq!(
        gw.metric("jitgate_connections_total", &["ssh-dead", "error"]),
        1.0
    );
}
