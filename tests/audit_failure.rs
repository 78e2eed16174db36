//! A real audit write failure: `state_dir` on a tiny tmpfs that is then
//! filled. New sessions and grants are refused, the live session goes on,
//! the metric, `/healthz` and the file say so; once space is freed the
//! gateway recovers by itself.
//!
//! Needs root with CAP_SYS_ADMIN (to mount the tmpfs), as CI runs;
//! elsewhere it is skipped with a message on stderr. Alone in its own test binary, so the process-wide
//! `jitgate_audit_healthy` gauge is this gateway's only.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use jitgate::audit::Health;
use jitgate::config::Config;
use serde_json::{json, Value};

/// A tmpfs mounted for the test; lazily unmounted on drop (the gateway may
/// still hold the audit file open), so nothing is left mounted even when
/// the test fails.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Result<Tmpfs, String> {
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(at)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(Tmpfs(at.to_path_buf()))
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

fn audit_lines(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("audit.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn verify_ok(dir: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_jitgate"))
        .args(["audit", "verify"])
        .arg(dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Fill the file system at `dir` with one file, until it is full.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    for _ in 0..10_000 {
        if f.write_all(&chunk).is_err() {
            return path;
        }
    }
    panic!("the tmpfs never filled up");
}

#[tokio::test]
async fn a_full_disk_refuses_new_sessions_and_grants_then_recovers() {
    let base = tempfile::tempdir().unwrap();
    let state = base.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let mount = match Tmpfs::mount(&state, "512k") {
        Ok(m) => m,
        Err(e) => {
            // Not root, or root without CAP_SYS_ADMIN (a default container).
            eprintln!(
                "SKIPPED: cannot mount a tmpfs here (root: {}): {e}",
                is_root()
            );
            return;
        }
    };

    let o = Opts::new("audit-full");
    let config: Config = jitgate::config::parse_str(&config_text(&o, &state), "test.toml").unwrap();
    let running = jitgate::server::start(config).await.unwrap();
    let gw = TestGateway {
        running,
        dir: base,
        resource: o.resource,
    };
    // Re-bound after the gateway so it drops first: unmount, then the
    // temporary directory (an ordinary empty directory again) is removed.
    let mount = mount;
    let audit = &gw.running.gateway.audit;

    // Before: a live session.
    gw.grant("alice", "postgres", Duration::from_secs(600));
    let live = connect(&gw.pg_config("postgres")).await.unwrap();
    live.client.simple_query("SELECT 1").await.unwrap();
    assert_eq!(gw.metric("jitgate_audit_healthy", &[]), 1.0);

    // The disk fills. A file system is full down to the slack in the audit
    // file's last page, so denied logins (real records) use that up until
    // one does not fit; every longer record fails from then on.
    let filler = fill(&state);
    let mut tries = 0;
    while audit.health() == Health::Healthy {
        tries += 1;
        assert!(tries < 100, "the audit log never failed");
        assert!(connect(&gw.pg_config("nobody")).await.is_err());
    }
    let lines_at_failure = audit_lines(&state).len();
    // Nothing of the failed record is in the file, which still verifies.
    assert!(std::fs::read(state.join("audit.jsonl"))
        .unwrap()
        .ends_with(b"\n"));
    verify_ok(&state);

    // A new session is refused with the audit message.
    let err = connect(&gw.pg_config("postgres")).await.err().unwrap();
    let (code, message) = db_error(&err);
    assert_eq!(code, "58000");
    assert_eq!(message, "jitgate: audit log unavailable, access refused");
    // A new grant is refused with 503.
    let body = json!({"principal": "alice", "resource": gw.resource, "duration": "30m", "logins": ["postgres"], "reason": "INC-9"});
    let (status, answer) = gw
        .api("POST", "/v1/grants", Some(ADMIN_TOKEN), Some(&body))
        .await;
    assert_eq!(status, 503, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .starts_with("audit log unavailable, nothing was changed"),
        "{answer}"
    );
    assert_eq!(gw.running.gateway.grants.len(), 1);
    // The live session goes on.
    live.client.simple_query("SELECT 2").await.unwrap();
    // Metrics, health check and the file say so.
    assert_eq!(gw.metric("jitgate_audit_healthy", &[]), 0.0);
    assert!(gw.metric("jitgate_audit_write_errors_total", &[]) >= 3.0);
    let (status, _, health) = http_text(gw.running.admin_addr, "GET", "/healthz", None, None).await;
    assert_eq!(status, 200);
    assert!(
        health.starts_with("degraded: audit log unavailable since "),
        "{health}"
    );
    assert_eq!(audit_lines(&state).len(), lines_at_failure);

    // Space comes back: the gateway recovers by itself (the once-a-second
    // retry), with no new traffic.
    std::fs::remove_file(&filler).unwrap();
    wait_until(
        "the audit log is healthy again",
        Duration::from_secs(5),
        || async { audit.health() == Health::Healthy },
    )
    .await;
    let (_, _, health) = http_text(gw.running.admin_addr, "GET", "/healthz", None, None).await;
    assert_eq!(health.trim(), "ok");
    assert_eq!(gw.metric("jitgate_audit_healthy", &[]), 1.0);
    let lines = audit_lines(&state);
    let resumed = &lines[lines_at_failure];
    assert_eq!(resumed["event"], "audit.resumed");
    assert!(resumed["failed_writes"].as_u64().unwrap() >= 3, "{resumed}");
    assert!(
        resumed["reason"]
            .as_str()
            .unwrap()
            .contains("No space left"),
        "{resumed}"
    );

    // Admitted and granted again.
    let again = connect(&gw.pg_config("postgres")).await.unwrap();
    again.client.simple_query("SELECT 3").await.unwrap();
    let (status, answer) = gw
        .api("POST", "/v1/grants", Some(ADMIN_TOKEN), Some(&body))
        .await;
    assert_eq!(status, 201, "{answer}");
    live.client.simple_query("SELECT 4").await.unwrap();
    let out = verify_ok(&state);
    assert!(
        out.starts_with(&format!("OK: {} records", audit_lines(&state).len())),
        "{out}"
    );

    drop((live, again));
    gw.running.shutdown(Duration::from_secs(5)).await;
    drop(mount);
}
