//! Connection limits at accept time and the admin API's failed-token limit:
//! over a limit, a clear protocol error and a metric; within it, service goes on.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Read what the gateway sends until it closes (at most 5 s).
async fn until_closed(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    out
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn limited(gw: &TestGateway, limit: &str) -> f64 {
    gw.metric("jitgate_limited_total", &[&format!("limit=\"{limit}\"")])
}

#[tokio::test]
async fn over_max_connections_a_postgres_client_gets_53300_and_others_go_on() {
    let mut o = Opts::new("lim-max");
    o.gateway_extra = "max_connections = 2".into();
    o.handshake_timeout = "10s";
    let gw = start(o).await;
    gw.grant("alice", "postgres", Duration::from_secs(60));
    let live = connect(&gw.pg_config("postgres")).await.unwrap();
    let _idle = TcpStream::connect(gw.addr()).await.unwrap();
    // Let the gateway accept the idle one before the third arrives.
    wait_until("two open", Duration::from_secs(5), || async {
        gw.running.gateway.limits.open() == 2
    })
    .await;
    let before = limited(&gw, "connections");
    let err = connect(&gw.pg_config("postgres"))
        .await
        .err()
        .expect("refused");
    let db = err.as_db_error().expect("a FATAL, not a reset");
    assert_eq!(db.code().code(), "53300");
    assert_eq!(db.message(), "jitgate: too many connections (connections)");
    assert!(limited(&gw, "connections") > before);
    live.client
        .simple_query("SELECT 1")
        .await
        .expect("within the limit: untouched");
}

#[tokio::test]
async fn a_resource_cap_and_the_handshake_cap_refuse_only_the_excess() {
    let mut o = Opts::new("lim-res");
    o.resource_extra = "max_connections = 1".into();
    let gw = start(o).await;
    gw.grant("alice", "postgres", Duration::from_secs(60));
    let first = connect(&gw.pg_config("postgres")).await.unwrap();
    let err = connect(&gw.pg_config("postgres"))
        .await
        .err()
        .expect("refused");
    assert_eq!(
        err.as_db_error().unwrap().message(),
        "jitgate: too many connections (resource_connections)"
    );
    drop(first);
    wait_until("the first one closed", Duration::from_secs(5), || async {
        gw.running.gateway.limits.open() == 0
    })
    .await;
    connect(&gw.pg_config("postgres"))
        .await
        .expect("room again")
        .client
        .simple_query("SELECT 1")
        .await
        .unwrap();

    let mut o = Opts::new("lim-hs");
    o.gateway_extra = "max_handshakes = 2".into();
    o.handshake_timeout = "10s";
    let gw = start(o).await;
    gw.grant("alice", "postgres", Duration::from_secs(60));
    let a = TcpStream::connect(gw.addr()).await.unwrap();
    let b = TcpStream::connect(gw.addr()).await.unwrap();
    wait_until("two handshakes open", Duration::from_secs(5), || async {
        gw.running.gateway.limits.open() == 2
    })
    .await;
    let mut c = TcpStream::connect(gw.addr()).await.unwrap();
    let out = until_closed(&mut c).await;
    assert!(
        text(&out).contains("too many connections (handshakes)"),
        "{:?}",
        text(&out)
    );
    assert!(limited(&gw, "handshakes") >= 1.0);
    drop((a, b));
    wait_until(
        "stalled handshakes gone",
        Duration::from_secs(5),
        || async { gw.running.gateway.limits.open() == 0 },
    )
    .await;
    connect(&gw.pg_config("postgres"))
        .await
        .expect("served again")
        .client
        .simple_query("SELECT 1")
        .await
        .unwrap();
}

#[tokio::test]
async fn a_flood_from_one_address_is_rate_limited_then_served_again() {
    let mut o = Opts::new("lim-rate");
    o.gateway_extra = "handshake_rate = 5\nhandshake_burst = 5".into();
    let gw = start(o).await;
    gw.grant("alice", "postgres", Duration::from_secs(60));
    let mut refused = 0;
    for _ in 0..20 {
        let mut s = TcpStream::connect(gw.addr()).await.unwrap();
        // An SSLRequest: a gateway within limits answers 'N' and waits.
        s.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
            .await
            .unwrap();
        let mut b = [0u8; 1];
        if s.read_exact(&mut b).await.is_ok() && b[0] == b'E' {
            refused += 1;
        }
    }
    assert!(refused >= 10, "only {refused} of 20 refused");
    assert!(limited(&gw, "handshake_rate") >= 10.0);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    connect(&gw.pg_config("postgres"))
        .await
        .expect("the allowance refills")
        .client
        .simple_query("SELECT 1")
        .await
        .unwrap();
}

#[tokio::test]
async fn guessing_admin_tokens_is_slowed_to_429_but_valid_tokens_work() {
    let gw = start(Opts::new("lim-admin")).await;
    let mut statuses = Vec::new();
    for i in 0..15 {
        let (st, _) = gw
            .api("GET", "/v1/grants", Some(&format!("guess-{i}")), None)
            .await;
        statuses.push(st);
    }
    assert!(statuses.iter().take(10).all(|&s| s == 401), "{statuses:?}");
    assert!(statuses.iter().skip(10).all(|&s| s == 429), "{statuses:?}");
    assert!(limited(&gw, "admin_auth") >= 5.0);
    let (st, _) = gw.api("GET", "/v1/grants", Some(ADMIN_TOKEN), None).await;
    assert_eq!(st, 200);
}

#[tokio::test]
async fn a_mysql_client_over_the_limit_gets_err_1040_first() {
    let mut o = Opts::mysql("lim-my");
    o.gateway_extra = "max_connections = 1".into();
    o.handshake_timeout = "10s";
    let gw = start(o).await;
    let _held = TcpStream::connect(gw.addr()).await.unwrap();
    wait_until("one open", Duration::from_secs(5), || async {
        gw.running.gateway.limits.open() == 1
    })
    .await;
    let mut s = TcpStream::connect(gw.addr()).await.unwrap();
    let out = until_closed(&mut s).await;
    // One packet, sequence id 0: ERR (0xff), code 1040 little-endian, "#08004".
    assert!(out.len() > 13, "{out:?}");
    assert_eq!(out[3], 0);
    assert_eq!(out[4], 0xff);
    assert_eq!(u16::from_le_bytes([out[5], out[6]]), 1040);
    assert_eq!(&out[7..13], b"#08004");
    assert!(text(&out).contains("too many connections"));
}

/// A PostgreSQL session from `source` (a loopback address) through `gw`.
async fn session_from(gw: &TestGateway, source: &str) -> tokio_postgres::Client {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(format!("{source}:0").parse().unwrap()).unwrap();
    let stream = sock.connect(gw.addr()).await.unwrap();
    let (client, connection) = gw
        .pg_config("postgres")
        .connect_raw(stream, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("a session from {source}: {e}"));
    tokio::spawn(connection);
    client.simple_query("SELECT 1").await.unwrap();
    client
}

#[tokio::test]
async fn one_address_cannot_hold_every_handshake_but_its_sessions_do_not_count() {
    let mut o = Opts::new("lim-src");
    o.gateway_extra = "max_handshakes_per_source = 2\nhandshake_rate = 0".into();
    o.handshake_timeout = "10s";
    let gw = start(o).await;
    gw.grant("alice", "postgres", Duration::from_secs(60));
    // Two silent connections from 127.0.0.1 take its two places.
    let a = TcpStream::connect(gw.addr()).await.unwrap();
    let b = TcpStream::connect(gw.addr()).await.unwrap();
    wait_until("two handshakes open", Duration::from_secs(5), || async {
        gw.running.gateway.limits.open() == 2
    })
    .await;
    let mut c = TcpStream::connect(gw.addr()).await.unwrap();
    let out = until_closed(&mut c).await;
    assert!(
        text(&out).contains("53300")
            && text(&out).contains("too many connections (source_handshakes)"),
        "{:?}",
        text(&out)
    );
    assert!(limited(&gw, "source_handshakes") >= 1.0);
    // Another address is served meanwhile.
    let _other = session_from(&gw, "127.0.0.2").await;
    // Once the stallers are gone, 127.0.0.1 opens more sessions than its
    // handshake places: admitted sessions give their place back.
    drop((a, b));
    wait_until("stallers gone", Duration::from_secs(5), || async {
        gw.running.gateway.limits.open() == 1
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(session_from(&gw, "127.0.0.1").await);
    }
    assert_eq!(gw.running.gateway.limits.open(), 5);
}
