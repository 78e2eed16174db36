//! Ending access to live PostgreSQL sessions: revoke, kill, idle timeout,
//! session cap, expiry warning, shutdown, plus query cancellation through
//! the gateway. tokio-postgres through the gateway to the real server; every
//! ending asserts the reason the client saw *and* that its socket closed.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::NoTls;

#[tokio::test]
async fn revoke_through_the_api_closes_the_session_before_answering() {
    let gw = start(Opts::new("pg-revoke")).await;
    let direct = direct().await;
    let g = gw.grant("alice", "postgres", Duration::from_secs(60));
    let c = connect(&gw.pg_config("postgres")).await.unwrap();
    let client = Arc::new(c.client);
    let marker = "jitgate_revoke_marker";
    let query = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .simple_query(&format!("SELECT pg_sleep(30) /* {marker} */"))
                .await
        }
    });
    wait_running(&direct, marker, 1).await;

    let path = format!("/v1/grants/{}?reason=INC-4411%20closed", g.id);
    let (status, body) = gw.api("DELETE", &path, Some(ADMIN_TOKEN), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["sessions_closed"], 1, "{body}");
    assert_eq!(body["id"], g.id.to_string());
    // The answer came only after the session was torn down.
    assert!(gw.running.gateway.sessions.on_grant(&g.id).is_empty());
    assert_eq!(gw.metric("jitgate_sessions_active", &["pg-revoke"]), 0.0);

    let err = tokio::time::timeout(Duration::from_secs(2), query)
        .await
        .expect("the running query ends with the revoke")
        .unwrap()
        .expect_err("the query must fail");
    assert_eq!(
        db_error(&err),
        (
            "57P01".into(),
            "jitgate: access to pg-revoke was revoked by admin: INC-4411 closed".into()
        )
    );
    conn_end(c.conn, Duration::from_secs(2)).await.ok();
    assert!(client.is_closed());

    // Nothing keeps running on the server, and the backend leg is closed.
    wait_until(
        "the revoked query is gone from pg_stat_activity",
        Duration::from_secs(2),
        || async { running_queries(&direct, marker).await == 0 },
    )
    .await;
    wait_until(
        "the revoked session's backend is gone",
        Duration::from_secs(3),
        || async { backends(&direct, marker).await == 0 },
    )
    .await;

    let revoked = gw
        .wait_audit("grant.revoked", |e| e["grant_id"] == g.id.to_string())
        .await;
    assert_eq!(revoked["actor"], "admin");
    assert_eq!(revoked["reason"], "INC-4411 closed");
    let ended = gw
        .wait_audit("session.ended", |e| e["grant_id"] == g.id.to_string())
        .await;
    assert_eq!(ended["outcome"], "revoked");
    assert_eq!(ended["actor"], "admin");
    assert_eq!(
        gw.metric("jitgate_sessions_closed_total", &["pg-revoke", "revoked"]),
        1.0
    );
    // The grant admits no one any more.
    let err = connect(&gw.pg_config("postgres")).await.err().unwrap();
    assert_eq!(db_error(&err).0, "28000");
}

#[tokio::test]
async fn killing_one_session_leaves_the_other_on_the_same_grant() {
    let gw = start(Opts::new("pg-kill")).await;
    let g = gw.grant("alice", "postgres", Duration::from_secs(60));
    let first = connect(&gw.pg_config("postgres")).await.unwrap();
    first.client.simple_query("SELECT 1").await.unwrap();
    let (_, sessions) = gw.api("GET", "/v1/sessions", Some(ADMIN_TOKEN), None).await;
    let sessions = sessions.as_array().unwrap().clone();
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    let first_id = sessions[0]["id"].as_str().unwrap().to_string();
    let second = connect(&gw.pg_config("postgres")).await.unwrap();
    second.client.simple_query("SELECT 1").await.unwrap();
    assert_eq!(gw.running.gateway.sessions.on_grant(&g.id).len(), 2);

    let path = format!("/v1/sessions/{first_id}?reason=one%20too%20many");
    let (status, body) = gw.api("DELETE", &path, Some(ADMIN_TOKEN), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["sessions_closed"], 1, "{body}");

    // The killed client was idle: the FATAL arrives on its own and the
    // connection ends with it.
    let end = conn_end(first.conn, Duration::from_secs(2)).await;
    let text = end.expect_err("the killed client is told why");
    assert!(
        text.contains("jitgate: session on pg-kill was killed by admin: one too many"),
        "{text}"
    );
    assert!(first.client.is_closed());

    // The other session and the grant are untouched.
    let row = second.client.query_one("SELECT 7", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 7);
    assert!(!second.client.is_closed());
    let left = gw.running.gateway.sessions.on_grant(&g.id);
    assert_eq!(left.len(), 1);
    assert_ne!(left[0].id.to_string(), first_id);
    assert!(gw.running.gateway.grants.get(&g.id).is_some());

    let ended = gw
        .wait_audit("session.ended", |e| e["session_id"] == first_id.as_str())
        .await;
    assert_eq!(ended["outcome"], "killed");
    assert_eq!(ended["actor"], "admin");
    assert_eq!(ended["reason"], "one too many");
    assert_eq!(
        gw.metric("jitgate_sessions_closed_total", &["pg-kill", "killed"]),
        1.0
    );
    // Killing it again: it is gone.
    let (status, body) = gw.api("DELETE", &path, Some(ADMIN_TOKEN), None).await;
    assert_eq!(status, 404, "{body}");
}

#[tokio::test]
async fn idle_session_is_closed_after_idle_timeout() {
    let mut o = Opts::new("pg-idle");
    o.idle_timeout = "1s";
    let gw = start(o).await;
    let g = gw.grant("alice", "postgres", Duration::from_secs(60));
    let c = connect(&gw.pg_config("postgres")).await.unwrap();
    c.client.simple_query("SELECT 1").await.unwrap();
    let last_activity = Instant::now();

    let text = conn_end(c.conn, Duration::from_secs(5))
        .await
        .expect_err("the idle client is told why");
    let idle_for = last_activity.elapsed();
    assert!(
        text.contains("jitgate: session on pg-idle closed after being idle for 1s"),
        "{text}"
    );
    assert!(c.client.is_closed());
    // Not before the timeout, and not long after it.
    assert!(idle_for >= Duration::from_millis(900), "{idle_for:?}");
    assert!(idle_for < Duration::from_secs(4), "{idle_for:?}");

    let ended = gw
        .wait_audit("session.ended", |e| e["grant_id"] == g.id.to_string())
        .await;
    assert_eq!(ended["outcome"], "idle");
    assert_eq!(
        gw.metric("jitgate_sessions_closed_total", &["pg-idle", "idle"]),
        1.0
    );
    // Idleness ends the session, not the grant.
    let again = connect(&gw.pg_config("postgres")).await.unwrap();
    again.client.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test]
async fn max_session_caps_a_session_on_a_long_grant() {
    let mut o = Opts::new("pg-cap");
    o.max_session = "2s";
    let gw = start(o).await;
    let direct = direct().await;
    let g = gw.grant("alice", "postgres", Duration::from_secs(600));
    let begun = Instant::now();
    let c = connect(&gw.pg_config("postgres")).await.unwrap();
    let marker = "jitgate_cap_marker";
    let err = c
        .client
        .simple_query(&format!("SELECT pg_sleep(30) /* {marker} */"))
        .await
        .expect_err("the cap cuts the query");
    let took = begun.elapsed();
    assert_eq!(
        db_error(&err),
        (
            "57P01".into(),
            "jitgate: session on pg-cap reached its session cap of 2s".into()
        )
    );
    assert!(took >= Duration::from_millis(1800), "cut after {took:?}");
    assert!(took < Duration::from_secs(5), "cut after {took:?}");
    conn_end(c.conn, Duration::from_secs(2)).await.ok();
    assert!(c.client.is_closed());
    wait_until(
        "the capped query is gone from pg_stat_activity",
        Duration::from_secs(2),
        || async { running_queries(&direct, marker).await == 0 },
    )
    .await;

    let ended = gw
        .wait_audit("session.ended", |e| e["grant_id"] == g.id.to_string())
        .await;
    assert_eq!(ended["outcome"], "max_session");
    assert_eq!(
        gw.metric("jitgate_sessions_closed_total", &["pg-cap", "max_session"]),
        1.0
    );
    // The cap is per session: the grant still admits a new one.
    assert!(gw.running.gateway.grants.get(&g.id).is_some());
    let again = connect(&gw.pg_config("postgres")).await.unwrap();
    again.client.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test]
async fn expiry_warning_arrives_as_a_notice_before_the_end() {
    let mut o = Opts::new("pg-warn");
    o.warnings = r#"["2s"]"#;
    let gw = start(o).await;
    let g = gw.grant("alice", "postgres", Duration::from_secs(4));
    let granted = Instant::now();
    let mut c = connect(&gw.pg_config("postgres")).await.unwrap();
    c.client.simple_query("SELECT 1").await.unwrap();

    let notice = tokio::time::timeout(Duration::from_secs(5), c.notices.recv())
        .await
        .expect("a warning before the end")
        .unwrap();
    let at = granted.elapsed();
    assert!(
        notice.starts_with("jitgate: access to pg-warn ends in "),
        "{notice}"
    );
    assert!(
        notice.contains(&format!("jitgate extend {} --by", g.id)),
        "{notice}"
    );
    // Due 2 s before the 4 s deadline; never before the lead time.
    assert!(at >= Duration::from_millis(1500), "warned after {at:?}");
    // The session is still usable after the warning.
    c.client.simple_query("SELECT 1").await.unwrap();

    // Then the grant expires and the session ends with the reason.
    let text = conn_end(c.conn, Duration::from_secs(6))
        .await
        .expect_err("the client is told the grant expired");
    assert!(
        text.contains("jitgate: access to pg-warn expired"),
        "{text}"
    );
    assert!(c.client.is_closed());
    // One lead time, one notice.
    assert!(c.notices.try_recv().is_err());
}

#[tokio::test]
async fn cancel_through_the_gateway_cancels_only_the_query() {
    let gw = start(Opts::new("pg-cancel")).await;
    let direct = direct().await;
    gw.grant("alice", "postgres", Duration::from_secs(60));
    let c = connect(&gw.pg_config("postgres")).await.unwrap();
    let client = Arc::new(c.client);
    let marker = "jitgate_cancel_marker";
    let query = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .simple_query(&format!("SELECT pg_sleep(30) /* {marker} */"))
                .await
        }
    });
    wait_running(&direct, marker, 1).await;

    let begun = Instant::now();
    client.cancel_token().cancel_query(NoTls).await.unwrap();
    let err = tokio::time::timeout(Duration::from_secs(5), query)
        .await
        .expect("the query is cancelled")
        .unwrap()
        .expect_err("the query must fail");
    let took = begun.elapsed();
    assert_eq!(db_error(&err).0, "57014", "{err}");
    assert!(took < Duration::from_secs(4), "cancelled after {took:?}");
    wait_running(&direct, marker, 0).await;

    // The session itself lives on.
    let row = client.query_one("SELECT 1", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 1);
    assert!(!client.is_closed());
    assert_eq!(gw.running.gateway.sessions.len(), 1);
}

/// A raw CancelRequest; returns what the gateway answered before closing.
async fn raw_cancel(addr: std::net::SocketAddr, process_id: u32, secret_key: u32) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut msg = Vec::with_capacity(16);
    msg.extend_from_slice(&16u32.to_be_bytes());
    msg.extend_from_slice(&80877102u32.to_be_bytes());
    msg.extend_from_slice(&process_id.to_be_bytes());
    msg.extend_from_slice(&secret_key.to_be_bytes());
    s.write_all(&msg).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut out))
        .await
        .expect("the gateway closes a cancel connection")
        .unwrap();
    out
}

#[tokio::test]
async fn cancel_with_a_wrong_key_is_dropped_silently() {
    let gw = start(Opts::new("pg-badcancel")).await;
    let direct = direct().await;
    gw.grant("alice", "postgres", Duration::from_secs(60));
    let c = connect(&gw.pg_config("postgres")).await.unwrap();
    let client = Arc::new(c.client);
    // The backend's real pid: a client can learn it, but it is not a key.
    let backend_pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let marker = "jitgate_badcancel_marker";
    let query = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .simple_query(&format!("SELECT pg_sleep(2) /* {marker} */"))
                .await
        }
    });
    wait_running(&direct, marker, 1).await;

    let pid = u32::try_from(backend_pid).unwrap();
    for (p, k) in [(0x1234_5678, 0x9abc_def0), (pid, 0), (pid, 1)] {
        assert!(
            raw_cancel(gw.addr(), p, k).await.is_empty(),
            "no answer to a cancel request"
        );
    }
    // The query was not cancelled: it runs to its end and succeeds.
    let rows = tokio::time::timeout(Duration::from_secs(6), query)
        .await
        .expect("the query finishes")
        .unwrap()
        .expect("a wrong cancel key must not cancel the query");
    assert!(!rows.is_empty());
    assert!(!client.is_closed());
    // Cancel connections are neither sessions nor errors.
    assert!(gw.audit_events("session.denied").is_empty());
    assert_eq!(gw.audit_events("session.started").len(), 1);
}

#[tokio::test]
async fn shutdown_ends_live_sessions_with_a_reason() {
    let gw = start(Opts::new("pg-shutdown")).await;
    let direct = direct().await;
    let g = gw.grant("alice", "postgres", Duration::from_secs(60));
    let idle = connect(&gw.pg_config("postgres")).await.unwrap();
    idle.client.simple_query("SELECT 1").await.unwrap();
    let busy = connect(&gw.pg_config("postgres")).await.unwrap();
    let busy_client = Arc::new(busy.client);
    let marker = "jitgate_shutdown_marker";
    let query = tokio::spawn({
        let client = busy_client.clone();
        async move {
            client
                .simple_query(&format!("SELECT pg_sleep(30) /* {marker} */"))
                .await
        }
    });
    wait_running(&direct, marker, 1).await;

    tokio::time::timeout(
        Duration::from_secs(5),
        gw.running.shutdown(Duration::from_secs(3)),
    )
    .await
    .expect("shutdown completes");

    let text = conn_end(idle.conn, Duration::from_secs(2))
        .await
        .expect_err("the idle client is told why");
    assert!(text.contains("jitgate: gateway is shutting down"), "{text}");
    assert!(idle.client.is_closed());
    let err = tokio::time::timeout(Duration::from_secs(2), query)
        .await
        .unwrap()
        .unwrap()
        .expect_err("the running query is cut");
    assert_eq!(
        db_error(&err),
        ("57P01".into(), "jitgate: gateway is shutting down".into())
    );
    conn_end(busy.conn, Duration::from_secs(2)).await.ok();
    assert!(busy_client.is_closed());
    wait_running(&direct, marker, 0).await;

    let ended: Vec<_> = gw
        .audit_events("session.ended")
        .into_iter()
        .filter(|e| e["grant_id"] == g.id.to_string())
        .collect();
    assert_eq!(ended.len(), 2, "{ended:#?}");
    assert!(
        ended.iter().all(|e| e["outcome"] == "shutdown"),
        "{ended:#?}"
    );
    // The listener is gone with the gateway.
    assert!(TcpStream::connect(gw.addr()).await.is_err());
}

/// One connect or query of the race test: (what, begun at, succeeded).
type Attempt = (&'static str, Instant, bool);

/// 20 clients connect and query in a loop while the grant is revoked: once
/// the revoke has answered, no connection through the grant is admitted and
/// no query sent through it succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_racing_concurrent_connects_lets_nothing_through() {
    let gw = start(Opts::new("pg-race")).await;
    let g = gw.grant("alice", "postgres", Duration::from_secs(60));
    let config = gw.pg_config("postgres");
    let log: Arc<Mutex<Vec<Attempt>>> = Arc::default();
    let successes = Arc::new(AtomicUsize::new(0));
    let attempts = Arc::new(AtomicUsize::new(0));
    let stop = tokio_util::sync::CancellationToken::new();
    let mut loops = Vec::new();
    for _ in 0..20 {
        let (config, log, successes, attempts, stop) = (
            config.clone(),
            log.clone(),
            successes.clone(),
            attempts.clone(),
            stop.clone(),
        );
        loops.push(tokio::spawn(async move {
            while !stop.is_cancelled() {
                attempts.fetch_add(1, Ordering::Relaxed);
                let began = Instant::now();
                let c = connect(&config).await;
                log.lock().unwrap().push(("connect", began, c.is_ok()));
                let Ok(c) = c else { continue };
                for _ in 0..3 {
                    let sent = Instant::now();
                    let ok = c.client.simple_query("SELECT 1").await.is_ok();
                    log.lock().unwrap().push(("query", sent, ok));
                    if !ok {
                        break;
                    }
                    successes.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    wait_until(
        "queries flow through the grant",
        Duration::from_secs(10),
        || {
            let n = successes.load(Ordering::Relaxed);
            async move { n >= 40 }
        },
    )
    .await;

    let path = format!("/v1/grants/{}?reason=race", g.id);
    let (status, body) = gw.api("DELETE", &path, Some(ADMIN_TOKEN), None).await;
    let revoked = Instant::now();
    assert_eq!(status, 200, "{body}");
    assert!(gw.running.gateway.sessions.on_grant(&g.id).is_empty());

    // Keep hammering for a while after the revoke.
    let after = attempts.load(Ordering::Relaxed);
    wait_until("clients keep trying", Duration::from_secs(10), || {
        let n = attempts.load(Ordering::Relaxed);
        async move { n >= after + 60 }
    })
    .await;
    stop.cancel();
    for l in loops {
        tokio::time::timeout(Duration::from_secs(10), l)
            .await
            .unwrap()
            .unwrap();
    }

    let log = log.lock().unwrap();
    let late: Vec<_> = log.iter().filter(|(_, at, _)| *at > revoked).collect();
    let late_ok: Vec<_> = late.iter().filter(|(_, _, ok)| *ok).collect();
    assert!(
        late_ok.is_empty(),
        "{} of {} connects/queries begun after the revoke answered succeeded",
        late_ok.len(),
        late.len()
    );
    assert!(
        late.len() >= 40,
        "only {} attempts after the revoke",
        late.len()
    );
    assert!(log
        .iter()
        .any(|(what, at, ok)| *what == "query" && *at < revoked && *ok));
    assert!(gw.running.gateway.sessions.is_empty());
    assert_eq!(gw.metric("jitgate_sessions_active", &["pg-race"]), 0.0);
    assert!(gw.metric("jitgate_connections_total", &["pg-race", "denied"]) >= 40.0);
}

#[tokio::test]
async fn a_vanished_clients_running_query_is_cancelled() {
    let gw = start(Opts::new("pg-vanish")).await;
    gw.grant("alice", "postgres", Duration::from_secs(60));
    let direct = direct().await;
    let c = connect(&gw.pg_config("postgres")).await.unwrap();
    let marker = "jitgate_vanish_marker";
    let q = format!("SELECT pg_sleep(60) /* {marker} */");
    let client = c.client;
    let running = tokio::spawn(async move {
        let _ = client.simple_query(&q).await;
    });
    wait_running(&direct, marker, 1).await;
    // The client disappears: its task and connection are dropped.
    running.abort();
    c.conn.abort();
    wait_until(
        "the vanished client's query is gone",
        Duration::from_secs(5),
        || async { running_queries(&direct, marker).await == 0 },
    )
    .await;
    gw.wait_audit("session.ended", |e| e["outcome"] == "client")
        .await;
}
