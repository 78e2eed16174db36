//! Admission, expiry and transparency for MySQL/MariaDB: mysql_async and the
//! `mysql` CLI through the gateway to the real MariaDB.

mod common;

use std::time::{Duration, Instant};

use common::mysql::*;
use common::*;
use mysql_async::prelude::Queryable;
use sha2::Digest;

#[tokio::test]
async fn admitted_with_a_grant_mysql_async_and_cli() {
    setup().await;
    let gw = start(Opts::mysql("my-admit")).await;
    let g = gw.grant("alice", ALICE.0, Duration::from_secs(60));

    let mut c = gw.my_connect(ALICE).await.unwrap();
    let answer: i64 = c.query_first("SELECT 40 + 2").await.unwrap().unwrap();
    assert_eq!(answer, 42);
    let who: String = c
        .query_first("SELECT CURRENT_USER()")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(who, "jg_alice@%");
    let started = gw
        .wait_audit("session.started", |e| e["grant_id"] == g.id.to_string())
        .await;
    assert_eq!(started["login"], "jg_alice");
    assert_eq!(started["protocol"], "mysql");
    assert_eq!(started["principal"], "alice");

    let out = gw
        .cli(ALICE, "SELECT 6 * 7, DATABASE()", Duration::from_secs(10))
        .await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "42\ttest\n");

    assert_eq!(
        gw.metric(
            "jitgate_connections_total",
            &["my-admit", "mysql", "accepted"]
        ),
        2.0
    );
    c.disconnect().await.unwrap();
    let ended = gw
        .wait_audit("session.ended", |e| {
            e["grant_id"] == g.id.to_string() && e["outcome"] == "client"
        })
        .await;
    assert!(ended["bytes_down"].as_u64().unwrap() > 0);
    wait_until("both sessions closed", Duration::from_secs(5), || async {
        gw.running.gateway.sessions.is_empty()
    })
    .await;
}

#[tokio::test]
async fn denied_without_a_grant_before_reaching_the_backend() {
    setup().await;
    let fake = CountingBackend::start().await;
    let mut o = Opts::mysql("my-deny");
    o.backend = fake.addr.to_string();
    let gw = start(o).await;

    let err = gw.my_connect(ALICE).await.expect_err("must be refused");
    let (code, state, message) = server_error(&err);
    assert_eq!((code, state.as_str()), (1045, "28000"));
    assert_eq!(
        message,
        "jitgate: no active access grant for \"jg_alice\" on \"my-deny\""
    );

    let out = gw.cli(ALICE, "SELECT 1", Duration::from_secs(10)).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "ERROR 1045 (28000): jitgate: no active access grant for \"jg_alice\" on \"my-deny\""
        ),
        "{stderr}"
    );

    let denied = gw.wait_audit("session.denied", |_| true).await;
    assert_eq!(denied["login"], "jg_alice");
    assert_eq!(denied["protocol"], "mysql");
    assert_eq!(
        gw.metric("jitgate_connections_total", &["my-deny", "denied"]),
        2.0
    );
    assert!(gw.audit_events("session.started").is_empty());
    assert_eq!(fake.accepted(), 0, "the backend saw a connection");
}

#[tokio::test]
async fn another_users_grant_does_not_admit() {
    setup().await;
    let gw = start(Opts::mysql("my-other")).await;
    gw.grant("bob", BOB.0, Duration::from_secs(60));
    let err = gw.my_connect(ALICE).await.expect_err("must be refused");
    assert_eq!(server_error(&err).0, 1045);
    let mut c = gw.my_connect(BOB).await.unwrap();
    let one: i64 = c.query_first("SELECT 1").await.unwrap().unwrap();
    assert_eq!(one, 1);
}

#[tokio::test]
async fn a_wrong_password_is_the_backends_refusal() {
    setup().await;
    let gw = start(Opts::mysql("my-badpw")).await;
    gw.grant("alice", ALICE.0, Duration::from_secs(60));
    let err = gw
        .my_connect((ALICE.0, "not-the-password"))
        .await
        .expect_err("the backend refuses");
    let (code, _, message) = server_error(&err);
    assert_eq!(code, 1045);
    assert!(
        message.starts_with("Access denied for user 'jg_alice'"),
        "{message}"
    );
}

#[tokio::test]
async fn expiry_during_sleep_ends_the_query_and_closes_the_socket() {
    setup().await;
    let gw = start(Opts::mysql("my-expiry")).await;
    let mut direct = my_direct().await;
    let g = gw.grant("alice", ALICE.0, Duration::from_secs(3));
    let mut c = gw.my_connect(ALICE).await.unwrap();
    let marker = unique_marker("jg_expiry");
    let begun = Instant::now();
    let query = tokio::spawn(async move {
        let r = c
            .query_drop(format!("SELECT SLEEP(60) /* {marker} */"))
            .await;
        (r, c)
    });
    my_wait_running(&mut direct, marker, 1, Duration::from_secs(3)).await;

    let (r, mut c) = tokio::time::timeout(Duration::from_secs(6), query)
        .await
        .expect("the query is cut")
        .unwrap();
    let cut_at = Instant::now();
    let took = begun.elapsed();
    assert!(took < Duration::from_secs(6), "cut after {took:?}");
    let (code, state, message) = server_error(&r.expect_err("the query must fail"));
    assert_eq!((code, state.as_str()), (1927, "70100"));
    assert_eq!(message, "jitgate: access to my-expiry expired");

    // The client socket is closed: the next command cannot even be sent.
    let next = c.query_drop("SELECT 1").await.expect_err("closed");
    assert!(is_closed_error(&next), "{next:?}");

    // Nothing keeps running on the server, within 2 s of the cut.
    my_wait_running(&mut direct, marker, 0, Duration::from_secs(2)).await;
    assert!(cut_at.elapsed() < Duration::from_secs(2));

    let ended = gw
        .wait_audit("session.ended", |e| e["grant_id"] == g.id.to_string())
        .await;
    assert_eq!(ended["outcome"], "expired");
    gw.wait_audit("grant.expired", |e| e["grant_id"] == g.id.to_string())
        .await;
    assert_eq!(
        gw.metric("jitgate_sessions_closed_total", &["my-expiry", "expired"]),
        1.0
    );
    assert!(gw.metric("jitgate_enforcement_lag_seconds_count", &[]) >= 1.0);
}

#[tokio::test]
async fn expiry_is_shown_by_the_mysql_cli() {
    setup().await;
    let gw = start(Opts::mysql("my-cli-expiry")).await;
    let mut direct = my_direct().await;
    gw.grant("alice", ALICE.0, Duration::from_secs(3));
    // The CLI strips comments, so the marker is a string literal.
    let marker = unique_marker("jg_cli_expiry");
    let begun = Instant::now();
    let out = gw
        .cli(
            ALICE,
            &format!("SELECT SLEEP(60), '{marker}'"),
            Duration::from_secs(10),
        )
        .await;
    let took = begun.elapsed();
    assert!(!out.status.success());
    assert!(
        took < Duration::from_secs(7),
        "the CLI exited after {took:?}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("ERROR 1927 (70100)")
            && stderr.contains("jitgate: access to my-cli-expiry expired"),
        "{stderr}"
    );
    my_wait_running(&mut direct, marker, 0, Duration::from_secs(2)).await;
}

#[tokio::test]
async fn a_20_mb_result_passes_byte_exact_across_the_16_mib_packet_limit() {
    setup().await;
    let gw = start(Opts::mysql("my-big")).await;
    gw.grant("alice", ALICE.0, Duration::from_secs(120));
    let mut c = gw.my_connect(ALICE).await.unwrap();
    // 20 MiB in one value: a row payload of 20 MiB + 4 bytes, so packets of
    // 0xFFFFFF bytes and a continuation; varied bytes so a shifted or
    // dropped byte shows. The server computes the digest of what it sent.
    let sql = "SELECT v, SHA2(v, 256) FROM (SELECT REPEAT(CONCAT('0123456789abcdef', CHAR(0), CHAR(255), 'xyz'), 1048576) AS v) t";
    let rows: Vec<(Vec<u8>, String)> = c.query(sql).await.unwrap();
    assert_eq!(rows.len(), 1);
    let (v, server_digest) = &rows[0];
    assert_eq!(v.len(), 21 * 1_048_576);
    assert!(v.len() > 0xFF_FFFF);
    let digest = hex::encode(sha2::Sha256::digest(v));
    assert_eq!(&digest, server_digest);
    // Two such rows and a normal one in one result set, then the session
    // goes on.
    let sql = "SELECT LENGTH(v), SHA2(v, 256) = SHA2(w, 256) FROM (SELECT REPEAT('ab', 10000000) AS v, REPEAT('ab', 10000000) AS w) t";
    let (len, same): (u64, bool) = c.query_first(sql).await.unwrap().unwrap();
    assert_eq!((len, same), (20_000_000, true));
    let rows: Vec<Vec<u8>> = c
        .query("SELECT REPEAT('z', 17000000) UNION ALL SELECT REPEAT('y', 17000000) UNION ALL SELECT 'end'")
        .await
        .unwrap();
    assert_eq!(rows.len(), 3);
    assert!(rows[0].iter().all(|&b| b == b'z') && rows[0].len() == 17_000_000);
    assert!(rows[1].iter().all(|&b| b == b'y') && rows[1].len() == 17_000_000);
    assert_eq!(rows[2], b"end");
    let one: i64 = c.query_first("SELECT 1").await.unwrap().unwrap();
    assert_eq!(one, 1);
    // The client can send such a payload too.
    let big = "q".repeat(17_000_000);
    let n: u64 = c
        .exec_first("SELECT LENGTH(?)", (big,))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 17_000_000);
}

#[tokio::test]
async fn load_data_local_infile_is_not_negotiated_and_the_session_goes_on() {
    setup().await;
    let gw = start(Opts::mysql("my-infile")).await;
    gw.grant("alice", ALICE.0, Duration::from_secs(60));
    let mut c = gw.my_connect(ALICE).await.unwrap();
    c.query_drop("CREATE TABLE IF NOT EXISTS jg_infile (v TEXT)")
        .await
        .unwrap();
    let e = c
        .query_drop("LOAD DATA LOCAL INFILE '/etc/hostname' INTO TABLE jg_infile")
        .await
        .expect_err("LOCAL INFILE is refused");
    let (code, _, message) = server_error(&e);
    // ER_LOAD_INFILE_CAPABILITY_DISABLED (MariaDB 10.5+), ER_NOT_ALLOWED_COMMAND before.
    assert!([4166, 1148].contains(&code), "{code} {message}");
    let one: i64 = c.query_first("SELECT 1").await.unwrap().unwrap();
    assert_eq!(one, 1);
}
