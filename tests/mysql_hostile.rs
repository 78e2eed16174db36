//! Hostile and malformed input on a MySQL listener, written as raw bytes on
//! a TCP socket after jitgate's greeting. Each case checks what the client
//! gets back (one ERR packet with sequence id 2, or nothing), that the
//! gateway closes the socket, that nothing was admitted, and that a good
//! mysql_async client still works through the same gateway afterwards.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::mysql::*;
use common::*;
use mysql_async::prelude::Queryable;
use proxy_protocols::mysql::{self as my, caps, HandshakeResponse};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The SSLRequest the mysql CLI (libmariadb 3.3.20) sent to a server that
/// offered TLS, as captured in proxy-protocols' fixtures.
const CLI_SSL_REQUEST: &[u8] = b"\x20\x00\x00\x01\x84\xaa\xbf\x00\x00\x00\x10\x00\x21\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x1d\x00\x00\x00";

/// A gateway with a live grant for alice's login.
async fn gateway(resource: &str) -> TestGateway {
    setup().await;
    let gw = start(Opts::mysql(resource)).await;
    gw.grant("alice", ALICE.0, Duration::from_secs(120));
    gw
}

/// A real client is still served normally.
async fn still_works(gw: &TestGateway) {
    let mut c = gw.my_connect(ALICE).await.unwrap();
    let n: i64 = c.query_first("SELECT 6 * 7").await.unwrap().unwrap();
    assert_eq!(n, 42);
    c.disconnect().await.unwrap();
}

/// Nothing was admitted.
fn nothing_admitted(gw: &TestGateway) {
    assert!(gw.audit_events("session.started").is_empty());
    assert!(gw.running.gateway.sessions.is_empty());
}

/// Read one packet: (sequence id, payload).
async fn read_packet(s: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut head = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut head))
        .await
        .expect("a packet in time")
        .unwrap();
    let len = usize::from(head[0]) | usize::from(head[1]) << 8 | usize::from(head[2]) << 16;
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).await.unwrap();
    (head[3], payload)
}

/// Connect and read jitgate's greeting.
async fn connect(addr: SocketAddr) -> (TcpStream, my::Greeting) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let (seq, payload) = read_packet(&mut s).await;
    assert_eq!(seq, 0);
    (s, my::parse_greeting(&payload).unwrap())
}

/// Everything the gateway sends until it closes; panics unless it closes
/// within `limit`. A reset counts as a close.
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

/// The single ERR packet that makes up `bytes`: (seq, code, SQLSTATE, text).
fn one_err(bytes: &[u8]) -> (u8, u16, Option<String>, String) {
    let mut buf = BytesMut::from(bytes);
    let p = my::decode_packet(&mut buf, 1 << 16)
        .unwrap()
        .unwrap_or_else(|| panic!("expected an ERR packet, got {bytes:?}"));
    assert!(buf.is_empty(), "exactly one packet, then EOF: {bytes:?}");
    let e = my::parse_err(&p.payload).unwrap_or_else(|| panic!("not an ERR: {bytes:?}"));
    (
        p.seq,
        e.code,
        e.sqlstate.map(|s| String::from_utf8(s.to_vec()).unwrap()),
        String::from_utf8(e.message).unwrap(),
    )
}

/// Connect, read the greeting, write `bytes`, and read until closed.
async fn exchange(addr: SocketAddr, bytes: &[u8], limit: Duration) -> Vec<u8> {
    let (mut s, _) = connect(addr).await;
    s.write_all(bytes).await.unwrap();
    read_until_closed(&mut s, limit).await
}

/// A HandshakeResponse41 packet for `user` (no password), sequence id `seq`.
fn response_packet(user: &[u8], seq: u8) -> Vec<u8> {
    let r = HandshakeResponse {
        capabilities: caps::CLIENT_LONG_PASSWORD
            | caps::CLIENT_PROTOCOL_41
            | caps::CLIENT_SECURE_CONNECTION
            | caps::CLIENT_PLUGIN_AUTH
            | caps::CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA,
        max_packet: 1 << 24,
        collation: 45,
        user: user.to_vec(),
        auth_plugin: Some(b"mysql_native_password".to_vec()),
        ..Default::default()
    };
    let mut payload = Vec::new();
    my::encode_handshake_response(&r, &mut payload);
    let mut out = BytesMut::new();
    my::encode_packet(seq, &payload, &mut out);
    out.to_vec()
}

#[tokio::test]
async fn the_greeting_is_jitgates_own_and_offers_no_tls() {
    let gw = gateway("my-h-greeting").await;
    let (_s, g) = connect(gw.addr()).await;
    let (_s2, g2) = connect(gw.addr()).await;
    assert_eq!(g.connection_id, 0);
    assert_eq!(g.scramble.len(), 20);
    assert_ne!(g.scramble, g2.scramble, "a fresh scramble per connection");
    assert_eq!(g.capabilities & caps::CLIENT_SSL, 0);
    assert_eq!(g.capabilities & caps::CLIENT_COMPRESS, 0);
    assert_eq!(g.capabilities & caps::CLIENT_LOCAL_FILES, 0);
    assert_eq!(g.auth_plugin, b"mysql_native_password");
    nothing_admitted(&gw);
}

#[tokio::test]
async fn packet_length_over_the_limit_is_refused_before_reading_it() {
    let gw = gateway("my-h-huge").await;
    for header in [&b"\xff\xff\xff\x01"[..], b"\x01\x00\x01\x01"] {
        let out = exchange(gw.addr(), header, Duration::from_secs(2)).await;
        let (seq, code, state, text) = one_err(&out);
        assert_eq!((seq, code, state.as_deref()), (2, 1153, Some("08S01")));
        assert!(text.contains("exceeds the limit of 65536 bytes"), "{text}");
    }
    nothing_admitted(&gw);
    still_works(&gw).await;
}

#[tokio::test]
async fn truncated_handshake_responses_are_refused() {
    let gw = gateway("my-h-trunc").await;
    let full = response_packet(b"jg_alice", 1);
    let payload = &full[4..];
    // Cut inside the fixed part, and inside the user name (no NUL).
    for cut in [20usize, 36] {
        let mut pkt = vec![cut as u8, 0, 0, 1];
        pkt.extend_from_slice(&payload[..cut]);
        let out = exchange(gw.addr(), &pkt, Duration::from_secs(2)).await;
        let (seq, code, _, text) = one_err(&out);
        assert_eq!((seq, code), (2, 1043));
        assert!(text.starts_with("jitgate: malformed handshake"), "{text}");
    }
    nothing_admitted(&gw);
    still_works(&gw).await;
}

#[tokio::test]
async fn a_response_that_promises_more_and_stalls_times_out() {
    let gw = gateway("my-h-stall-mid").await;
    let full = response_packet(b"jg_alice", 1);
    let begun = Instant::now();
    let out = exchange(gw.addr(), &full[..full.len() - 5], Duration::from_secs(5)).await;
    let took = begun.elapsed();
    let (seq, code, _, text) = one_err(&out);
    assert_eq!((seq, code), (2, 1043));
    assert!(text.contains("within the handshake timeout"), "{text}");
    assert!(took >= Duration::from_millis(1800), "{took:?}");
    nothing_admitted(&gw);
    still_works(&gw).await;
}

#[tokio::test]
async fn a_client_that_stalls_after_the_greeting_is_dropped() {
    let gw = gateway("my-h-stall").await;
    let (mut s, _) = connect(gw.addr()).await;
    let begun = Instant::now();
    let out = read_until_closed(&mut s, Duration::from_secs(5)).await;
    let took = begun.elapsed();
    let (seq, code, _, _) = one_err(&out);
    assert_eq!((seq, code), (2, 1043));
    assert!(took >= Duration::from_millis(1800), "{took:?}");
    assert!(took < Duration::from_secs(4), "{took:?}");
    still_works(&gw).await;
}

#[tokio::test]
async fn an_ssl_request_when_tls_is_not_offered_gets_a_clear_error() {
    let gw = gateway("my-h-ssl").await;
    // The SSLRequest, then what a TLS client sends at once: a ClientHello.
    let mut bytes = CLI_SSL_REQUEST.to_vec();
    bytes.extend_from_slice(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03");
    let out = exchange(gw.addr(), &bytes, Duration::from_secs(2)).await;
    let (seq, code, _, text) = one_err(&out);
    assert_eq!((seq, code), (2, 1043));
    assert!(text.contains("TLS is not available"), "{text}");
    nothing_admitted(&gw);
    still_works(&gw).await;
}

#[tokio::test]
async fn mysql_async_insisting_on_tls_fails_at_once_not_hangs() {
    let gw = gateway("my-h-tls-client").await;
    let opts = mysql_async::OptsBuilder::from_opts(gw.my_opts(ALICE))
        .ssl_opts(mysql_async::SslOpts::default());
    let begun = Instant::now();
    let e = tokio::time::timeout(Duration::from_secs(5), mysql_async::Conn::new(opts))
        .await
        .expect("no hang")
        .expect_err("TLS is not offered");
    assert!(begun.elapsed() < Duration::from_secs(2));
    assert!(matches!(e, mysql_async::Error::Driver(_)), "{e:?}");
    // The mysql CLI told to verify the server's certificate.
    let out = tokio::process::Command::new("mysql")
        .args(["--protocol=TCP", "-h", "127.0.0.1", "-P"])
        .arg(gw.addr().port().to_string())
        .args(["-u", ALICE.0, &format!("-p{}", ALICE.1)])
        .args(["--ssl-verify-server-cert", "-e", "SELECT 1"])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(5), out)
        .await
        .expect("no hang")
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ERROR 2026"), "{stderr}");
    nothing_admitted(&gw);
    still_works(&gw).await;
}

#[tokio::test]
async fn a_pre_4_1_client_is_refused_in_its_own_dialect() {
    let gw = gateway("my-h-old").await;
    // HandshakeResponse320: capabilities without CLIENT_PROTOCOL_41.
    let payload = b"\x85\xa0\xff\xff\xffjg_alice\0ABCDEFGH";
    let mut pkt = vec![payload.len() as u8, 0, 0, 1];
    pkt.extend_from_slice(payload);
    let out = exchange(gw.addr(), &pkt, Duration::from_secs(2)).await;
    let (seq, code, state, text) = one_err(&out);
    assert_eq!(
        (seq, code, state),
        (2, 1251, None),
        "no SQLSTATE before 4.1"
    );
    assert!(text.contains("older than MySQL 4.1"), "{text}");
    nothing_admitted(&gw);
    still_works(&gw).await;
}

#[tokio::test]
async fn wrong_sequence_ids_pipelined_bytes_and_bad_user_names_are_refused() {
    let gw = gateway("my-h-misc").await;
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (response_packet(b"jg_alice", 3), "sequence id 1"),
        (
            [
                response_packet(b"jg_alice", 1),
                b"\x09\x00\x00\x00\x03SELECT 1".to_vec(),
            ]
            .concat(),
            "unexpected data after the handshake response",
        ),
        (response_packet(b"jg_\xffalice", 1), "not valid UTF-8"),
    ];
    for (bytes, want) in cases {
        let out = exchange(gw.addr(), &bytes, Duration::from_secs(2)).await;
        let (seq, code, _, text) = one_err(&out);
        assert_eq!((seq, code), (2, 1043), "{text}");
        assert!(text.contains(want), "{text}");
    }
    nothing_admitted(&gw);
    still_works(&gw).await;
}

#[tokio::test]
async fn random_bytes_are_answered_with_at_most_one_error_then_a_close() {
    let gw = gateway("my-h-noise").await;
    // xorshift64: deterministic noise, different per round.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for round in 0..12 {
        let len = 1 + (round * 37) % 300;
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let out = exchange(gw.addr(), &bytes, Duration::from_secs(4)).await;
        if !out.is_empty() {
            let (seq, code, _, _) = one_err(&out);
            assert_eq!(seq, 2, "round {round}");
            assert!(
                [1043, 1153, 1251, 1045].contains(&code),
                "round {round}: {code}"
            );
        }
    }
    nothing_admitted(&gw);
    still_works(&gw).await;
}

#[tokio::test]
async fn a_flood_of_unauthenticated_connections_never_reaches_the_backend() {
    setup().await;
    let fake = CountingBackend::start().await;
    let mut o = Opts::mysql("my-h-flood");
    o.backend = fake.addr.to_string();
    let gw = start(o).await;
    let mut conns = Vec::new();
    for i in 0..200u32 {
        let (mut s, _) = connect(gw.addr()).await;
        if i % 2 == 0 {
            // Half of them log in as someone without a grant.
            s.write_all(&response_packet(b"jg_alice", 1)).await.unwrap();
        }
        conns.push(s);
    }
    for mut s in conns {
        read_until_closed(&mut s, Duration::from_secs(5)).await;
    }
    assert_eq!(fake.accepted(), 0);
    assert_eq!(
        gw.metric("jitgate_connections_total", &["my-h-flood", "denied"]),
        100.0
    );
    nothing_admitted(&gw);
}

#[tokio::test]
async fn a_refusal_is_one_err_1045_with_sequence_id_2() {
    let gw = gateway("my-h-deny").await;
    let out = exchange(
        gw.addr(),
        &response_packet(b"jg_bob", 1),
        Duration::from_secs(2),
    )
    .await;
    let (seq, code, state, text) = one_err(&out);
    assert_eq!((seq, code, state.as_deref()), (2, 1045, Some("28000")));
    assert_eq!(
        text,
        "jitgate: no active access grant for \"jg_bob\" on \"my-h-deny\""
    );
    still_works(&gw).await;
}

/// Log in as alice with raw packets up to the backend's AuthSwitchRequest;
/// returns the socket and the auth answer packet (sequence id 3) to send.
async fn raw_login_until_switch(addr: SocketAddr) -> (TcpStream, Vec<u8>) {
    let (mut s, _) = connect(addr).await;
    s.write_all(&response_packet(ALICE.0.as_bytes(), 1))
        .await
        .unwrap();
    let (seq, switch) = read_packet(&mut s).await;
    assert_eq!(seq, 2, "the backend's AuthSwitchRequest, relayed as is");
    let (plugin, scramble) = my::parse_auth_switch(&switch).expect("an auth switch");
    assert_eq!(plugin, b"mysql_native_password");
    let answer = my::scramble_native(scramble, ALICE.1.as_bytes()).unwrap();
    let mut out = BytesMut::new();
    my::encode_packet(3, &answer, &mut out);
    (s, out.to_vec())
}

/// A COM_CHANGE_USER packet (sequence id 0) for `user`.
fn change_user_packet(user: &[u8]) -> Vec<u8> {
    let mut payload = vec![0x11];
    payload.extend_from_slice(user);
    payload.extend_from_slice(b"\0\0test\0");
    let mut out = BytesMut::new();
    my::encode_packet(0, &payload, &mut out);
    out.to_vec()
}

#[tokio::test]
async fn a_change_of_user_pipelined_before_the_login_ends_is_still_checked() {
    let gw = gateway("my-h-pipe-chuser").await;
    let (mut s, answer) = raw_login_until_switch(gw.addr()).await;
    // The auth answer and, in the same write, a COM_CHANGE_USER to bob.
    s.write_all(&[answer, change_user_packet(BOB.0.as_bytes())].concat())
        .await
        .unwrap();
    let out = read_until_closed(&mut s, Duration::from_secs(3)).await;
    // Maybe the login's OK (sequence id 4), then exactly jitgate's refusal.
    let mut buf = BytesMut::from(&out[..]);
    let mut packets = Vec::new();
    while let Some(p) = my::decode_packet(&mut buf, 1 << 16).unwrap() {
        packets.push(p);
    }
    assert!(buf.is_empty(), "{out:?}");
    let last = packets.pop().expect("a refusal");
    let e = my::parse_err(&last.payload).expect("an ERR");
    assert_eq!(e.code, 1045);
    assert!(
        String::from_utf8_lossy(&e.message)
            .starts_with("jitgate: no active access grant for \"jg_bob\""),
        "{e:?}"
    );
    for p in packets {
        assert_eq!(
            (p.seq, p.payload.first()),
            (4, Some(&0u8)),
            "only the login's OK"
        );
    }
    gw.wait_audit("session.denied", |e| e["login"] == "jg_bob")
        .await;
    let ended = gw.wait_audit("session.ended", |_| true).await;
    assert_eq!(ended["outcome"], "denied");
    still_works(&gw).await;
}

#[tokio::test]
async fn com_multi_which_could_hide_a_change_of_user_ends_the_session() {
    let gw = gateway("my-h-multi").await;
    let (mut s, answer) = raw_login_until_switch(gw.addr()).await;
    s.write_all(&answer).await.unwrap();
    let (seq, ok) = read_packet(&mut s).await;
    assert_eq!((seq, ok.first()), (4, Some(&0u8)));
    // COM_MULTI wrapping a COM_CHANGE_USER to bob.
    let inner = change_user_packet(BOB.0.as_bytes());
    let mut payload = vec![0xFE];
    payload.extend_from_slice(&inner);
    let mut out = BytesMut::new();
    my::encode_packet(0, &payload, &mut out);
    s.write_all(&out).await.unwrap();
    read_until_closed(&mut s, Duration::from_secs(3)).await;
    let ended = gw.wait_audit("session.ended", |_| true).await;
    assert_eq!(ended["outcome"], "error");
    still_works(&gw).await;
}

#[tokio::test]
async fn replication_commands_are_refused_whoever_asks() {
    // COM_REGISTER_SLAVE, COM_BINLOG_DUMP and COM_BINLOG_DUMP_GTID: the
    // first bytes of each are enough to refuse it; the rest is padding.
    for (i, command) in [0x15u8, 0x12, 0x1E].into_iter().enumerate() {
        let gw = gateway(&format!("my-h-binlog-{i}")).await;
        let (mut s, answer) = raw_login_until_switch(gw.addr()).await;
        s.write_all(&answer).await.unwrap();
        let (seq, ok) = read_packet(&mut s).await;
        assert_eq!((seq, ok.first()), (4, Some(&0u8)));
        let mut payload = vec![command];
        payload.extend_from_slice(&[0u8; 10]);
        let mut out = BytesMut::new();
        my::encode_packet(0, &payload, &mut out);
        s.write_all(&out).await.unwrap();
        let out = read_until_closed(&mut s, Duration::from_secs(3)).await;
        let mut buf = BytesMut::from(&out[..]);
        let p = my::decode_packet(&mut buf, 1 << 16)
            .unwrap()
            .unwrap_or_else(|| panic!("{command:#x}: no answer: {out:?}"));
        assert!(buf.is_empty(), "{command:#x}: only the refusal: {out:?}");
        let e = my::parse_err(&p.payload).expect("an ERR");
        assert_eq!(e.code, 1227, "{command:#x}: {e:?}");
        let message = String::from_utf8_lossy(&e.message).into_owned();
        assert!(
            message.starts_with("jitgate: replication (binary log streaming) is not allowed"),
            "{command:#x}: {message}"
        );
        let ended = gw.wait_audit("session.ended", |_| true).await;
        assert_eq!(ended["outcome"], "denied", "{ended}");
        assert_eq!(
            ended["reason"], "replication (binary log streaming)",
            "{ended}"
        );
        still_works(&gw).await;
    }
}

#[tokio::test]
async fn a_client_that_vanishes_mid_statement_leaves_nothing_running() {
    let gw = gateway("my-h-vanish").await;
    let mut direct = my_direct().await;
    let (mut s, answer) = raw_login_until_switch(gw.addr()).await;
    s.write_all(&answer).await.unwrap();
    let (seq, ok) = read_packet(&mut s).await;
    assert_eq!((seq, ok.first()), (4, Some(&0u8)));
    let marker = unique_marker("jg_vanish");
    let mut q = Vec::new();
    my::encode_query(&format!("SELECT SLEEP(30) /* {marker} */"), &mut q);
    let mut out = BytesMut::new();
    my::encode_packet(0, &q, &mut out);
    s.write_all(&out).await.unwrap();
    my_wait_running(&mut direct, marker, 1, Duration::from_secs(5)).await;
    // The client goes away without a word while the statement runs: the
    // server alone would run it to its end, past the session.
    drop(s);
    my_wait_running(&mut direct, marker, 0, Duration::from_secs(2)).await;
    let ended = gw.wait_audit("session.ended", |_| true).await;
    assert_eq!(ended["outcome"], "client");
}

#[tokio::test]
async fn com_quit_ends_the_session_as_the_clients_even_when_the_backend_closes_first() {
    // The mysql CLI sends COM_QUIT and closes; the server closes on
    // COM_QUIT too, and its close can reach the gateway first. Here the
    // client keeps its socket open after COM_QUIT, so the server's close
    // always comes first: the session still ended because the client quit.
    let gw = gateway("my-h-quit").await;
    let (mut s, answer) = raw_login_until_switch(gw.addr()).await;
    s.write_all(&answer).await.unwrap();
    let (seq, ok) = read_packet(&mut s).await;
    assert_eq!((seq, ok.first()), (4, Some(&0x00)), "the login's OK");
    let mut quit = BytesMut::new();
    my::encode_packet(0, &[0x01], &mut quit);
    s.write_all(&quit).await.unwrap();
    let rest = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(rest.is_empty(), "nothing after COM_QUIT: {rest:?}");
    let e = gw.wait_audit("session.ended", |_| true).await;
    assert_eq!(e["outcome"], "client", "{e}");
}
