//! Admission and enforcement for PostgreSQL, with tokio-postgres through
//! the gateway to the real server.

mod common;

use std::time::{Duration, Instant};

use common::*;

#[tokio::test]
async fn admitted_with_a_grant() {
    let gw = start(Opts::new("pg-admit")).await;
    let g = gw.grant("alice", "postgres", Duration::from_secs(60));
    let c = connect(&gw.pg_config("postgres")).await.unwrap();
    let row = c.client.query_one("SELECT 40 + 2", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
    let started = gw
        .wait_audit("session.started", |e| e["grant_id"] == g.id.to_string())
        .await;
    assert_eq!(started["login"], "postgres");
    assert_eq!(started["principal"], "alice");
    assert_eq!(
        gw.metric("jitgate_connections_total", &["pg-admit", "accepted"]),
        1.0
    );
    assert_eq!(gw.metric("jitgate_sessions_active", &["pg-admit"]), 1.0);
    drop(c.client);
    let ended = gw
        .wait_audit("session.ended", |e| e["grant_id"] == g.id.to_string())
        .await;
    assert_eq!(ended["outcome"], "client");
    assert!(ended["bytes_down"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn denied_without_a_grant_before_reaching_the_backend() {
    let gw = start(Opts::new("pg-deny")).await;
    let err = connect(&gw.pg_config("postgres"))
        .await
        .err()
        .expect("must be refused");
    let db = err
        .as_db_error()
        .expect("a server error, not a broken socket");
    assert_eq!(db.code().code(), "28000");
    assert_eq!(
        db.message(),
        "jitgate: no active access grant for \"postgres\" on \"pg-deny\""
    );
    assert!(
        db.hint().unwrap().contains("jitgate request pg-deny"),
        "{:?}",
        db.hint()
    );
    let denied = gw.wait_audit("session.denied", |_| true).await;
    assert_eq!(denied["login"], "postgres");
    assert_eq!(denied["resource"], "pg-deny");
    assert_eq!(
        gw.metric("jitgate_connections_total", &["pg-deny", "denied"]),
        1.0
    );
    assert!(gw.audit_events("session.started").is_empty());
}

#[tokio::test]
async fn another_users_grant_does_not_admit() {
    let gw = start(Opts::new("pg-other")).await;
    // bob may use login "root"; alice's login "postgres" stays closed.
    gw.grant("bob", "root", Duration::from_secs(60));
    let err = connect(&gw.pg_config("postgres"))
        .await
        .err()
        .expect("must be refused");
    assert_eq!(err.as_db_error().unwrap().code().code(), "28000");
    let c = connect(&gw.pg_config("root")).await.unwrap();
    c.client.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test]
async fn expiry_ends_a_running_query_and_closes_both_sockets() {
    let gw = start(Opts::new("pg-expiry")).await;
    let direct = direct().await;
    let g = gw.grant("alice", "postgres", Duration::from_secs(3));
    let c = connect(&gw.pg_config("postgres")).await.unwrap();
    let marker = "jitgate_expiry_marker";
    let q = format!("SELECT pg_sleep(60) /* {marker} */");
    let begun = Instant::now();
    let err = c
        .client
        .simple_query(&q)
        .await
        .expect_err("query must be cut");
    let took = begun.elapsed();
    assert!(took < Duration::from_secs(6), "cut after {took:?}");
    let db = err.as_db_error().expect("the client sees the reason");
    assert_eq!(db.code().code(), "57P01");
    assert_eq!(db.message(), "jitgate: access to pg-expiry expired");
    // The client socket is closed: the connection task ends.
    tokio::time::timeout(Duration::from_secs(2), c.conn)
        .await
        .expect("connection closed")
        .unwrap()
        .ok();
    assert!(c.client.is_closed());
    // Nothing keeps running on the server.
    let mut gone = false;
    for _ in 0..20 {
        if running_queries(&direct, marker).await == 0 {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "backend query still running after expiry");
    let ended = gw
        .wait_audit("session.ended", |e| e["grant_id"] == g.id.to_string())
        .await;
    assert_eq!(ended["outcome"], "expired");
    gw.wait_audit("grant.expired", |e| e["grant_id"] == g.id.to_string())
        .await;
    assert_eq!(
        gw.metric("jitgate_sessions_closed_total", &["pg-expiry", "expired"]),
        1.0
    );
    assert!(gw.metric("jitgate_enforcement_lag_seconds_count", &[]) >= 1.0);
}

#[tokio::test]
async fn terminate_ends_the_session_as_the_clients_even_when_the_backend_closes_first() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // libpq sends Terminate and closes; PostgreSQL closes on Terminate too,
    // and its close can reach the gateway first. Here the client keeps its
    // socket open after Terminate, so the server's close always comes
    // first: the session still ended because the client said goodbye.
    let gw = start(Opts::new("pg-terminate")).await;
    gw.grant("alice", "postgres", Duration::from_secs(60));
    let mut s = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    s.write_all(&common::pgraw::startup("postgres"))
        .await
        .unwrap();
    common::pgraw::read_until_ready(&mut s).await;
    s.write_all(b"X\0\0\0\x04").await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
        .await
        .expect("the gateway closes the client's leg")
        .unwrap();
    assert!(rest.is_empty(), "nothing after Terminate: {rest:?}");
    let e = gw.wait_audit("session.ended", |_| true).await;
    assert_eq!(e["outcome"], "client", "{e}");
}
