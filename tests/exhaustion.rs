//! Resource exhaustion on the real binary (a child process, so its memory,
//! CPU time and descriptors can be read from /proc): a client that never
//! reads a large result, and a descriptor limit far below the connections
//! offered.

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

/// How a connection offered during the descriptor shortage ended up.
#[derive(Debug, PartialEq, Eq)]
enum Fate {
    /// Accepted and still open (waiting for its startup).
    Held,
    /// Told it was refused and closed.
    Refused,
    /// Closed without an answer.
    Closed,
}

async fn fate(s: &mut TcpStream) -> Fate {
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        match tokio::time::timeout(Duration::from_millis(1500), s.read(&mut buf)).await {
            Err(_) => return Fate::Held,
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&got);
    if text.contains("53300") && text.contains("jitgate: too many connections (fds)") {
        Fate::Refused
    } else {
        assert!(got.is_empty(), "unexpected answer: {text}");
        Fate::Closed
    }
}

#[tokio::test]
async fn out_of_file_descriptors_the_excess_is_refused_without_spinning_and_service_resumes() {
    let mut o = Opts::new("ex-fds");
    // The connections below wait in their handshake for the whole test,
    // all from one address: only the descriptor limit may stop them.
    o.handshake_timeout = "60s";
    o.gateway_extra = "max_handshakes_per_source = 0".into();
    let mut p = Process::start(&o, &["prlimit", "--nofile=128:128", "--"]).await;
    p.grant("alice", "ex-fds").await;
    let baseline = p.fds();

    // Three times what the limit allows, none of them sending a byte.
    let mut conns = Vec::new();
    for _ in 0..384 {
        conns.push(TcpStream::connect(p.listen).await.unwrap());
    }
    wait_until("the gateway at its descriptor limit", LIMIT, || async {
        p.fds() >= 120
    })
    .await;

    // While at the limit, with more connections arriving, the gateway
    // refuses them and does not spin.
    let cpu_before = p.cpu();
    let begun = Instant::now();
    for _ in 0..40 {
        conns.push(TcpStream::connect(p.listen).await.unwrap());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let fates = futures_util::future::join_all(conns.iter_mut().map(fate)).await;
    let cpu = p.cpu() - cpu_before;
    let wall = begun.elapsed();
    let count = |f: Fate| fates.iter().filter(|x| **x == f).count();
    let (held, refused, closed) = (count(Fate::Held), count(Fate::Refused), count(Fate::Closed));
    eprintln!(
        "baseline {baseline} fds; held {held}, refused {refused}, closed {closed}; CPU {cpu:?} over {wall:?}"
    );
    assert!(p.alive(), "the gateway is still running");
    assert!(held > 64 && held < 128, "held {held}");
    assert!(refused > 250, "refused {refused}");
    assert!(
        cpu < wall / 4,
        "CPU {cpu:?} over {wall:?}: the accept loop spins"
    );
    // One warning for the burst, not one per connection.
    let log = p.log();
    assert_eq!(log.matches("out of file descriptors").count(), 1, "{log}");

    // Once they close, descriptors come back and a granted client works.
    drop(conns);
    wait_until("descriptors back near the baseline", LIMIT, || async {
        p.fds() <= baseline + 4
    })
    .await;
    let mut c = tokio_postgres::Config::new();
    c.host("127.0.0.1")
        .port(p.listen.port())
        .user("postgres")
        .dbname("test");
    let conn = connect(&c).await.expect("a granted client connects");
    conn.client.simple_query("SELECT 1").await.unwrap();
    let limited = p.metric("jitgate_limited_total", &["limit=\"fds\""]).await;
    assert!(limited >= refused as f64, "{limited} < {refused}");
    assert!(log.lines().count() < 20, "{log}");
}
