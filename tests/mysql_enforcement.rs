//! Ending access to live MySQL sessions: revoke, kill, idle timeout, session
//! cap, shutdown, a revoke in the middle of a result set, and COM_CHANGE_USER
//! checked against the grant. mysql_async through the gateway to the real
//! MariaDB; every ending asserts the reason the client saw *and* that its
//! socket closed.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::mysql::*;
use common::*;
use mysql_async::prelude::Queryable;
use mysql_async::ChangeUserOpts;

/// The error the next command on `c` gets once the gateway has closed it:
/// first the reason jitgate wrote, then a closed socket.
async fn reason_then_closed(c: &mut mysql_async::Conn) -> (u16, String, String) {
    let e = c
        .query_drop("SELECT 1")
        .await
        .expect_err("the session ended");
    let reason = server_error(&e);
    let next = c.query_drop("SELECT 1").await.expect_err("closed");
    assert!(is_closed_error(&next), "{next:?}");
    reason
}

#[tokio::test]
async fn revoke_stops_a_cpu_bound_statement_and_closes_the_socket() {
    setup().await;
    let gw = start(Opts::mysql("my-revoke")).await;
    let mut direct = my_direct().await;
    let g = gw.grant("alice", ALICE.0, Duration::from_secs(60));
    let mut c = gw.my_connect(ALICE).await.unwrap();
    // BENCHMARK never looks at its socket: only KILL stops it.
    let marker = unique_marker("jg_revoke");
    let query = tokio::spawn(async move {
        let r = c
            .query_drop(format!(
                "SELECT BENCHMARK(300000000, MD5('x')) /* {marker} */"
            ))
            .await;
        (r, c)
    });
    my_wait_running(&mut direct, marker, 1, Duration::from_secs(5)).await;

    let path = format!("/v1/grants/{}?reason=INC-4411%20closed", g.id);
    let (status, body) = gw.api("DELETE", &path, Some(ADMIN_TOKEN), None).await;
    let revoked = Instant::now();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["sessions_closed"], 1, "{body}");
    assert!(gw.running.gateway.sessions.on_grant(&g.id).is_empty());

    let (r, mut c) = tokio::time::timeout(Duration::from_secs(2), query)
        .await
        .expect("the running query ends with the revoke")
        .unwrap();
    let (code, state, message) = server_error(&r.expect_err("the query must fail"));
    assert_eq!((code, state.as_str()), (1927, "70100"));
    assert_eq!(
        message,
        "jitgate: access to my-revoke was revoked by admin: INC-4411 closed"
    );
    let next = c.query_drop("SELECT 1").await.expect_err("closed");
    assert!(is_closed_error(&next), "{next:?}");
    my_wait_running(&mut direct, marker, 0, Duration::from_secs(2)).await;
    assert!(revoked.elapsed() < Duration::from_secs(3));

    let ended = gw
        .wait_audit("session.ended", |e| e["grant_id"] == g.id.to_string())
        .await;
    assert_eq!(ended["outcome"], "revoked");
    assert_eq!(ended["actor"], "admin");
    assert_eq!(
        gw.metric("jitgate_sessions_closed_total", &["my-revoke", "revoked"]),
        1.0
    );
    let err = gw.my_connect(ALICE).await.expect_err("no grant any more");
    assert_eq!(server_error(&err).0, 1045);
}

#[tokio::test]
async fn revoke_in_the_middle_of_a_result_set_ends_it_with_the_reason() {
    setup().await;
    let gw = start(Opts::mysql("my-midstream")).await;
    let g = gw.grant("alice", ALICE.0, Duration::from_secs(60));
    let mut c = gw.my_connect(ALICE).await.unwrap();
    let rows = Arc::new(AtomicU64::new(0));
    let reader = tokio::spawn({
        let rows = rows.clone();
        async move {
            let mut result = c
                .query_iter("SELECT seq, 'some row text' FROM seq_1_to_5000000")
                .await?;
            loop {
                match result.next().await {
                    Ok(Some(_)) => {
                        rows.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(None) => return Ok::<_, mysql_async::Error>(()),
                    Err(e) => return Err(e),
                }
            }
        }
    });
    wait_until("rows flow", Duration::from_secs(10), || {
        let n = rows.load(Ordering::Relaxed);
        async move { n >= 1000 }
    })
    .await;
    let path = format!("/v1/grants/{}?reason=mid-stream", g.id);
    let (status, body) = gw.api("DELETE", &path, Some(ADMIN_TOKEN), None).await;
    assert_eq!(status, 200, "{body}");
    let e = tokio::time::timeout(Duration::from_secs(5), reader)
        .await
        .expect("the reader ends")
        .unwrap()
        .expect_err("the result set is cut");
    // Whole rows up to a payload boundary, then the reason with the
    // sequence id the client expects: a server error, not a protocol one.
    let (code, _, message) = server_error(&e);
    assert_eq!(code, 1927);
    assert_eq!(
        message,
        "jitgate: access to my-midstream was revoked by admin: mid-stream"
    );
    assert!(rows.load(Ordering::Relaxed) < 5_000_000);
}

#[tokio::test]
async fn killing_one_session_leaves_the_other_on_the_same_grant() {
    setup().await;
    let gw = start(Opts::mysql("my-kill")).await;
    let g = gw.grant("alice", ALICE.0, Duration::from_secs(60));
    let mut first = gw.my_connect(ALICE).await.unwrap();
    first.query_drop("SELECT 1").await.unwrap();
    let (_, sessions) = gw.api("GET", "/v1/sessions", Some(ADMIN_TOKEN), None).await;
    let first_id = sessions[0]["id"].as_str().unwrap().to_string();
    assert_eq!(sessions[0]["login"], "jg_alice");
    let mut second = gw.my_connect(ALICE).await.unwrap();
    second.query_drop("SELECT 1").await.unwrap();

    let path = format!("/v1/sessions/{first_id}?reason=one%20too%20many");
    let (status, body) = gw.api("DELETE", &path, Some(ADMIN_TOKEN), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["sessions_closed"], 1, "{body}");

    // The killed client was idle: it reads the reason with its next command.
    let (code, state, message) = reason_then_closed(&mut first).await;
    assert_eq!((code, state.as_str()), (1927, "70100"));
    assert_eq!(
        message,
        "jitgate: session on my-kill was killed by admin: one too many"
    );
    let seven: i64 = second.query_first("SELECT 7").await.unwrap().unwrap();
    assert_eq!(seven, 7);
    assert_eq!(gw.running.gateway.sessions.on_grant(&g.id).len(), 1);
    let ended = gw
        .wait_audit("session.ended", |e| e["session_id"] == first_id.as_str())
        .await;
    assert_eq!(ended["outcome"], "killed");
    assert_eq!(ended["reason"], "one too many");
}

#[tokio::test]
async fn idle_session_is_closed_after_idle_timeout() {
    setup().await;
    let mut o = Opts::mysql("my-idle");
    o.idle_timeout = "1s";
    let gw = start(o).await;
    let g = gw.grant("alice", ALICE.0, Duration::from_secs(60));
    let mut c = gw.my_connect(ALICE).await.unwrap();
    c.query_drop("SELECT 1").await.unwrap();
    let last_activity = Instant::now();
    let ended = gw
        .wait_audit("session.ended", |e| e["grant_id"] == g.id.to_string())
        .await;
    let idle_for = last_activity.elapsed();
    assert_eq!(ended["outcome"], "idle");
    assert!(idle_for >= Duration::from_millis(900), "{idle_for:?}");
    assert!(idle_for < Duration::from_secs(5), "{idle_for:?}");
    let (code, _, message) = reason_then_closed(&mut c).await;
    assert_eq!(code, 1927);
    assert_eq!(
        message,
        "jitgate: session on my-idle closed after being idle for 1s"
    );
    // Idleness ends the session, not the grant.
    let mut again = gw.my_connect(ALICE).await.unwrap();
    again.query_drop("SELECT 1").await.unwrap();
}

#[tokio::test]
async fn max_session_caps_a_running_statement() {
    setup().await;
    let mut o = Opts::mysql("my-cap");
    o.max_session = "2s";
    let gw = start(o).await;
    let mut direct = my_direct().await;
    gw.grant("alice", ALICE.0, Duration::from_secs(600));
    let mut c = gw.my_connect(ALICE).await.unwrap();
    let marker = unique_marker("jg_cap");
    let e = c
        .query_drop(format!("SELECT SLEEP(30) /* {marker} */"))
        .await
        .expect_err("the cap cuts the query");
    let (code, _, message) = server_error(&e);
    assert_eq!(code, 1927);
    assert_eq!(
        message,
        "jitgate: session on my-cap reached its session cap of 2s"
    );
    my_wait_running(&mut direct, marker, 0, Duration::from_secs(2)).await;
    let next = c.query_drop("SELECT 1").await.expect_err("closed");
    assert!(is_closed_error(&next), "{next:?}");
}

#[tokio::test]
async fn shutdown_ends_live_sessions_with_a_reason() {
    setup().await;
    let gw = start(Opts::mysql("my-shutdown")).await;
    let mut direct = my_direct().await;
    gw.grant("alice", ALICE.0, Duration::from_secs(60));
    let mut idle = gw.my_connect(ALICE).await.unwrap();
    idle.query_drop("SELECT 1").await.unwrap();
    let mut busy = gw.my_connect(ALICE).await.unwrap();
    let marker = unique_marker("jg_shutdown");
    let query = tokio::spawn(async move {
        let r = busy
            .query_drop(format!("SELECT SLEEP(30) /* {marker} */"))
            .await;
        (r, busy)
    });
    my_wait_running(&mut direct, marker, 1, Duration::from_secs(5)).await;
    tokio::time::timeout(
        Duration::from_secs(5),
        gw.running.shutdown(Duration::from_secs(3)),
    )
    .await
    .expect("shutdown completes");
    let (r, mut busy) = query.await.unwrap();
    let (code, _, message) = server_error(&r.expect_err("cut"));
    assert_eq!(
        (code, message.as_str()),
        (1927, "jitgate: gateway is shutting down")
    );
    let next = busy.query_drop("SELECT 1").await.expect_err("closed");
    assert!(is_closed_error(&next), "{next:?}");
    let (_, _, message) = reason_then_closed(&mut idle).await;
    assert_eq!(message, "jitgate: gateway is shutting down");
    my_wait_running(&mut direct, marker, 0, Duration::from_secs(2)).await;
}

#[tokio::test]
async fn change_user_to_a_login_without_a_grant_ends_the_session() {
    setup().await;
    let gw = start(Opts::mysql("my-chuser")).await;
    let g = gw.grant("alice", ALICE.0, Duration::from_secs(60));
    // bob holds a grant of his own: it does not lend his login to alice.
    gw.grant("bob", BOB.0, Duration::from_secs(60));
    let mut c = gw.my_connect(ALICE).await.unwrap();
    c.query_drop("SELECT 1").await.unwrap();
    let e = c
        .change_user(
            ChangeUserOpts::default()
                .with_user(Some(BOB.0.into()))
                .with_pass(Some(BOB.1.into())),
        )
        .await
        .expect_err("the change of user is refused");
    let (code, state, message) = server_error(&e);
    assert_eq!((code, state.as_str()), (1045, "28000"));
    assert_eq!(
        message,
        "jitgate: no active access grant for \"jg_bob\" on \"my-chuser\"; the session is closed"
    );
    let next = c.query_drop("SELECT 1").await.expect_err("closed");
    assert!(is_closed_error(&next), "{next:?}");

    let denied = gw
        .wait_audit("session.denied", |e| e["login"] == "jg_bob")
        .await;
    assert_eq!(denied["grant_id"], g.id.to_string());
    let ended = gw
        .wait_audit("session.ended", |e| e["grant_id"] == g.id.to_string())
        .await;
    assert_eq!(ended["outcome"], "denied");
    assert_eq!(
        gw.metric("jitgate_sessions_closed_total", &["my-chuser", "denied"]),
        1.0
    );
}

#[tokio::test]
async fn change_user_within_the_grant_is_let_through_and_audited() {
    setup().await;
    let gw = start(Opts::mysql("my-chuser-ok")).await;
    let mut direct = my_direct().await;
    let g = gw
        .running
        .gateway
        .create_grant(jitgate::grants::NewGrant {
            principal: "alice".into(),
            resource: "my-chuser-ok".into(),
            logins: vec![ALICE.0.into(), ALICE_RO.0.into()],
            sources: vec![],
            duration: Duration::from_secs(60),
            reason: "test".into(),
            actor: "admin".into(),
            kind: jitgate::grants::GrantKind::BreakGlass,
        })
        .unwrap();
    let mut c = gw.my_connect(ALICE).await.unwrap();
    c.change_user(
        ChangeUserOpts::default()
            .with_user(Some(ALICE_RO.0.into()))
            .with_pass(Some(ALICE_RO.1.into())),
    )
    .await
    .unwrap();
    let who: String = c
        .query_first("SELECT CURRENT_USER()")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(who, "jg_alice_ro@%");
    let changed = gw
        .wait_audit("session.login_changed", |e| {
            e["grant_id"] == g.id.to_string()
        })
        .await;
    assert_eq!(changed["login"], "jg_alice_ro");
    // The session still ends with its grant, and its statement with it.
    let marker = unique_marker("jg_chuser");
    let query = tokio::spawn(async move {
        c.query_drop(format!("SELECT SLEEP(30) /* {marker} */"))
            .await
    });
    my_wait_running(&mut direct, marker, 1, Duration::from_secs(5)).await;
    let path = format!("/v1/grants/{}", g.id);
    let (status, _) = gw.api("DELETE", &path, Some(ADMIN_TOKEN), None).await;
    assert_eq!(status, 200);
    let e = query.await.unwrap().expect_err("cut");
    assert_eq!(server_error(&e).0, 1927);
    my_wait_running(&mut direct, marker, 0, Duration::from_secs(2)).await;
}
