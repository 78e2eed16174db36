//! SSH resources with real OpenSSH: `ssh` and `scp` through the gateway to
//! a throwaway `sshd` (see `common::sshd`), admission by source address,
//! what a refused user sees, and interactive sessions cut on expiry and on
//! revoke with the lag measured.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use common::net::established;
use common::sshd::Sshd;
use common::*;

const LIMIT: Duration = Duration::from_secs(30);

async fn gateway(name: &str) -> (TestGateway, Sshd) {
    let sshd = Sshd::start();
    let gw = start(Opts::with_backend(name, "ssh", sshd.addr)).await;
    (gw, sshd)
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

async fn run(mut cmd: tokio::process::Command) -> Run {
    let out = tokio::time::timeout(LIMIT, cmd.output())
        .await
        .expect("the client finishes")
        .unwrap();
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).to_string(),
    }
}

#[tokio::test]
async fn ssh_runs_a_command_and_both_versions_are_audited() {
    let (gw, sshd) = gateway("ssh-cmd").await;
    let g = gw.grant_sources("alice", &["127.0.0.1/32"], Duration::from_secs(60));
    let mut cmd = sshd.ssh(gw.addr().port());
    cmd.arg("echo jitgate-$((6 * 7)); uname -s");
    let r = run(cmd).await;
    assert_eq!(
        r.code,
        Some(0),
        "stderr: {}\nsshd: {}",
        r.stderr,
        sshd.log()
    );
    assert_eq!(r.stdout, "jitgate-42\nLinux\n");

    let started = gw
        .wait_audit("session.started", |e| e["grant_id"] == g.id.to_string())
        .await;
    assert_eq!(started["protocol"], "ssh");
    assert!(started.get("login").is_none());
    let client = started["client_version"].as_str().unwrap();
    let server = started["server_version"].as_str().unwrap();
    assert!(client.starts_with("SSH-2.0-OpenSSH_"), "{started}");
    assert!(server.starts_with("SSH-2.0-OpenSSH_"), "{started}");
    let ended = gw
        .wait_audit("session.ended", |e| e["grant_id"] == g.id.to_string())
        .await;
    assert_eq!(ended["outcome"], "client");
    assert!(ended.get("login").is_none(), "{ended}");
    assert!(ended["bytes_up"].as_u64().unwrap() > 1000, "{ended}");
    assert!(ended["bytes_down"].as_u64().unwrap() > 1000, "{ended}");
    assert_eq!(
        gw.metric("jitgate_connections_total", &["ssh-cmd", "ssh", "accepted"]),
        1.0
    );
}

#[tokio::test]
async fn scp_copies_50_mb_byte_exact() {
    let (gw, sshd) = gateway("ssh-scp").await;
    gw.grant_sources("alice", &["127.0.0.1/32"], Duration::from_secs(300));
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("payload.bin");
    let dst = dir.path().join("copy.bin");
    let data = common::net::pattern(50, 50 << 20);
    std::fs::write(&src, &data).unwrap();
    let begun = Instant::now();
    let r = run(sshd.scp(gw.addr().port(), &src, &dst)).await;
    let took = begun.elapsed();
    assert_eq!(
        r.code,
        Some(0),
        "stderr: {}\nsshd: {}",
        r.stderr,
        sshd.log()
    );
    let copy = std::fs::read(&dst).unwrap();
    assert_eq!(copy.len(), data.len());
    assert!(copy == data, "the copy differs");
    eprintln!(
        "scp 50 MB through jitgate: {took:?} ({:.0} MB/s)",
        50.0 / took.as_secs_f64()
    );
    let ended = gw.wait_audit("session.ended", |_| true).await;
    assert!(ended["bytes_up"].as_u64().unwrap() > 50 << 20, "{ended}");
}

#[tokio::test]
async fn refused_without_a_grant_with_the_reason_printed_by_ssh() {
    let (gw, sshd) = gateway("ssh-deny").await;
    let probes = sshd.connections();
    let mut cmd = sshd.ssh(gw.addr().port());
    cmd.arg("true");
    let r = run(cmd).await;
    assert_eq!(r.code, Some(255), "{}", r.stderr);
    // OpenSSH prints a clear-text SSH_MSG_DISCONNECT's text by default.
    let want = "jitgate: no active access grant for \"127.0.0.1\" on \"ssh-deny\"";
    assert!(
        r.stderr.contains(&format!(":1: {want}"))
            && r.stderr.contains("Received disconnect from 127.0.0.1 port"),
        "stderr: {}",
        r.stderr
    );
    // With -v, the text lines before jitgate's version line show too.
    let mut cmd = sshd.ssh(gw.addr().port());
    cmd.args(["-v", "true"]);
    let r = run(cmd).await;
    assert!(
        r.stderr.contains(&format!("banner line 0: {want}"))
            && r.stderr
                .contains("banner line 1: request access with: jitgate request ssh-deny"),
        "stderr: {}",
        r.stderr
    );
    // The backend never saw a connection.
    assert_eq!(sshd.connections(), probes, "{}", sshd.log());
    let denied = gw.audit_events("session.denied");
    assert_eq!(denied.len(), 2);
    assert_eq!(denied[0]["protocol"], "ssh");
    assert_eq!(denied[0]["outcome"], "no_grant");
    assert_eq!(
        gw.metric("jitgate_connections_total", &["ssh-deny", "denied"]),
        2.0
    );
}

#[tokio::test]
async fn a_grant_for_another_network_does_not_admit() {
    let (gw, sshd) = gateway("ssh-other").await;
    gw.grant_sources(
        "alice",
        &["10.0.0.0/8", "192.168.0.0/16"],
        Duration::from_secs(60),
    );
    let probes = sshd.connections();
    let mut cmd = sshd.ssh(gw.addr().port());
    cmd.arg("true");
    let r = run(cmd).await;
    assert_eq!(r.code, Some(255));
    assert!(r.stderr.contains("no active access grant"), "{}", r.stderr);
    assert_eq!(sshd.connections(), probes, "{}", sshd.log());
    // Adding the right network admits.
    gw.grant_sources("alice", &["127.0.0.0/8"], Duration::from_secs(60));
    let mut cmd = sshd.ssh(gw.addr().port());
    cmd.arg("echo in");
    let r = run(cmd).await;
    assert_eq!(r.stdout, "in\n", "{}", r.stderr);
}

/// Whether a process whose command line is exactly `cmdline` runs.
fn running(cmdline: &str) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return false;
    };
    dir.flatten().any(|e| {
        std::fs::read(e.path().join("cmdline"))
            .map(|c| {
                c.split(|&b| b == 0)
                    .filter(|p| !p.is_empty())
                    .collect::<Vec<_>>()
                    .join(&b' ')
                    == cmdline.as_bytes()
            })
            .unwrap_or(false)
    })
}

/// Start `ssh -tt ... sleep SECS` through the gateway and wait until its
/// session is live and the remote command runs.
async fn interactive(gw: &TestGateway, sshd: &Sshd, secs: u32) -> tokio::process::Child {
    let mut cmd = sshd.ssh(gw.addr().port());
    cmd.args(["-tt", &format!("sleep {secs}")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    let what = format!("sleep {secs}");
    wait_until("the remote command runs", LIMIT, || async {
        running(&what)
    })
    .await;
    assert_eq!(gw.running.gateway.sessions.len(), 1);
    child
}

/// Wait for `child` to exit; returns its exit code and stderr.
async fn exited(child: tokio::process::Child) -> (Option<i32>, String) {
    let out = tokio::time::timeout(LIMIT, child.wait_with_output())
        .await
        .expect("ssh exits once the gateway closes its connection")
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// Every socket of the session is closed: none established on the gateway's
/// port (client leg) or on sshd's (backend leg), and the remote command is
/// gone with its session.
async fn assert_all_closed(gw: &TestGateway, sshd: &Sshd, remote: &str) {
    wait_until("both legs closed", Duration::from_secs(5), || async {
        established(gw.addr().port()) == 0 && established(sshd.addr.port()) == 0
    })
    .await;
    assert!(gw.running.gateway.sessions.is_empty());
    wait_until(
        "the remote command is gone",
        Duration::from_secs(10),
        || async { !running(remote) },
    )
    .await;
}

#[tokio::test]
async fn an_interactive_session_is_closed_when_the_grant_expires() {
    let (gw, sshd) = gateway("ssh-expiry").await;
    let g = gw.grant_sources("alice", &["127.0.0.1/32"], Duration::from_secs(4));
    let child = interactive(&gw, &sshd, 601).await;
    let (code, stderr) = exited(child).await;
    let lag = SystemTime::now()
        .duration_since(g.expires_at())
        .unwrap_or_default();
    eprintln!("ssh -tt exited {lag:?} after the grant's deadline; it printed: {stderr:?}");
    assert!(lag < Duration::from_secs(5), "exited {lag:?} after expiry");
    assert_eq!(code, Some(255));
    assert!(stderr.contains("closed by remote host"), "{stderr}");
    assert_all_closed(&gw, &sshd, "sleep 601").await;
    let ended = gw
        .wait_audit("session.ended", |e| e["grant_id"] == g.id.to_string())
        .await;
    assert_eq!(ended["outcome"], "expired");
    assert_eq!(
        gw.metric("jitgate_sessions_closed_total", &["ssh-expiry", "expired"]),
        1.0
    );
}

#[tokio::test]
async fn an_interactive_session_is_closed_when_the_grant_is_revoked() {
    let (gw, sshd) = gateway("ssh-revoke").await;
    let g = gw.grant_sources("alice", &["127.0.0.1/32"], Duration::from_secs(300));
    let child = interactive(&gw, &sshd, 602).await;
    let begun = Instant::now();
    let path = format!("/v1/grants/{}?reason=leaving%20now", g.id);
    let (status, body) = gw.api("DELETE", &path, Some(ADMIN_TOKEN), None).await;
    let answered = begun.elapsed();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["sessions_closed"], 1);
    let (code, stderr) = exited(child).await;
    let lag = begun.elapsed();
    eprintln!("revoke answered in {answered:?}; ssh -tt exited {lag:?} after the request; it printed: {stderr:?}");
    assert!(
        lag < Duration::from_secs(5),
        "exited {lag:?} after the revoke"
    );
    assert_eq!(code, Some(255));
    assert_all_closed(&gw, &sshd, "sleep 602").await;
    let ended = gw
        .wait_audit("session.ended", |e| e["grant_id"] == g.id.to_string())
        .await;
    assert_eq!(ended["outcome"], "revoked");
    assert_eq!(ended["reason"], "leaving now");
    // The grant admits no one any more.
    let mut cmd = sshd.ssh(gw.addr().port());
    cmd.arg("true");
    let r = run(cmd).await;
    assert!(r.stderr.contains("no active access grant"), "{}", r.stderr);
}
