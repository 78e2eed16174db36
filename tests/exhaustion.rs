//! Resource exhaustion on the real binary (a child process, so its memory
//! can be read from /proc): a client that never reads a large result.

mod common;

use std::time::{Duration, Instant};

use common::mysql::{setup, ALICE};
use common::net::read_until_closed;
use common::pgraw::{query, read_until_ready, startup};
use common::process::Process;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LIMIT: Duration = Duration::from_secs(10);
/// Growth of the gateway's resident memory allowed while a client stalls
/// on a 200 MB result: a few socket and relay buffers, not the result.
const RSS_GROWTH_KIB: u64 = 6 * 1024;

/// The largest resident size seen over `period`, sampled every 100 ms.
async fn max_rss_over(p: &Process, period: Duration) -> u64 {
    let begun = Instant::now();
    let mut max = 0;
    while begun.elapsed() < period {
        max = max.max(p.rss_kib());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    max
}

/// Revoke `grant` through the API; how long the call took (it returns once
/// the sessions' sockets are closed).
async fn revoke(p: &Process, grant: &str) -> Duration {
    let begun = Instant::now();
    let (st, body) = http(
        p.admin,
        "DELETE",
        &format!("/v1/grants/{grant}"),
        Some(ADMIN_TOKEN),
        None,
    )
    .await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["sessions_closed"], 1, "{body}");
    begun.elapsed()
}

#[tokio::test]
async fn a_postgres_client_that_never_reads_a_large_result_costs_bounded_memory() {
    let p = Process::start(&Opts::new("ex-slow-pg"), &[]).await;
    let grant = p.grant("alice", "ex-slow-pg").await;
    let direct = direct().await;
    let mut s = TcpStream::connect(p.listen).await.unwrap();
    s.write_all(&startup("postgres")).await.unwrap();
    read_until_ready(&mut s).await;
    let before = max_rss_over(&p, Duration::from_millis(500)).await;

    // About 200 MB of rows; the client reads none of them.
    let marker = "ex_slow_pg_rows";
    s.write_all(&query(&format!(
        "SELECT repeat('x', 1000) FROM generate_series(1, 200000) /* {marker} */"
    )))
    .await
    .unwrap();
    wait_running(&direct, marker, 1).await;
    let during = max_rss_over(&p, Duration::from_secs(3)).await;
    let (_, sessions) = http(p.admin, "GET", "/v1/sessions", Some(ADMIN_TOKEN), None).await;
    let relayed = sessions[0]["bytes_down"].as_u64().unwrap();
    eprintln!(
        "RSS before {before} KiB, while stalled {during} KiB; relayed {} KiB of ~200 MB",
        relayed / 1024
    );
    assert!(
        during < before + RSS_GROWTH_KIB,
        "RSS grew from {before} KiB to {during} KiB"
    );
    assert!(
        relayed < 64 << 20,
        "{relayed} bytes relayed to a client that reads nothing"
    );

    // A revoke still ends it promptly, and the statement is cancelled.
    let took = revoke(&p, &grant).await;
    assert!(took < Duration::from_secs(5), "revoke took {took:?}");
    read_until_closed(&mut s, LIMIT).await;
    wait_running(&direct, marker, 0).await;
}

#[tokio::test]
async fn a_mysql_client_that_never_reads_a_large_result_costs_bounded_memory() {
    setup().await;
    let p = Process::start(&Opts::mysql("ex-slow-my"), &[]).await;
    let grant = p.grant("alice", "ex-slow-my").await;
    let before = max_rss_over(&p, Duration::from_millis(500)).await;
    // The mysql CLI with --quick reads rows as it prints them; nobody reads
    // its output, so once the pipe is full it stops reading the socket.
    let mut cli = tokio::process::Command::new("mysql")
        .args([
            "--protocol=TCP",
            "-h",
            "127.0.0.1",
            "-P",
            &p.listen.port().to_string(),
            "-u",
            ALICE.0,
            &format!("-p{}", ALICE.1),
            "--quick",
            "--batch",
            "test",
            "-e",
            "SELECT REPEAT('x', 1000) FROM seq_1_to_200000",
        ])
        .kill_on_drop(true)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the session is open", LIMIT, || async {
        let (_, s) = http(p.admin, "GET", "/v1/sessions", Some(ADMIN_TOKEN), None).await;
        s.as_array().is_some_and(|a| a.len() == 1)
    })
    .await;
    let during = max_rss_over(&p, Duration::from_secs(3)).await;
    let (_, sessions) = http(p.admin, "GET", "/v1/sessions", Some(ADMIN_TOKEN), None).await;
    let relayed = sessions[0]["bytes_down"].as_u64().unwrap();
    eprintln!(
        "RSS before {before} KiB, while stalled {during} KiB; relayed {} KiB of ~200 MB",
        relayed / 1024
    );
    assert!(
        during < before + RSS_GROWTH_KIB,
        "RSS grew from {before} KiB to {during} KiB"
    );
    assert!(
        relayed < 64 << 20,
        "{relayed} bytes relayed to a client that reads nothing"
    );
    let took = revoke(&p, &grant).await;
    assert!(took < Duration::from_secs(5), "revoke took {took:?}");
    // The CLI, once its output is drained, sees the connection end.
    let mut out = cli.stdout.take().unwrap();
    tokio::spawn(async move {
        let mut sink = vec![0u8; 1 << 16];
        while matches!(out.read(&mut sink).await, Ok(n) if n > 0) {}
    });
    let status = tokio::time::timeout(LIMIT, cli.wait())
        .await
        .expect("the CLI ends once its session is revoked")
        .unwrap();
    assert!(!status.success());
}
