//! The audit hash chain on logs a real gateway wrote: `jitgate audit verify`
//! (the binary) passes on them and names the line of each kind of
//! tampering; rotation and a restart keep one chain across files.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use common::*;
use jitgate::config::Config;
use serde_json::{json, Value};
use tokio::process::Command;

const JITGATE: &str = env!("CARGO_BIN_EXE_jitgate");

async fn verify(args: &[&Path]) -> Output {
    let mut c = Command::new(JITGATE);
    c.arg("audit").arg("verify").args(args).kill_on_drop(true);
    tokio::time::timeout(Duration::from_secs(30), c.output())
        .await
        .expect("audit verify finished")
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `OK: N records …` on stdout, exit 0; returns N.
fn ok_records(out: &Output) -> u64 {
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "verify failed: {stdout}{}",
        text(&out.stderr)
    );
    let n = stdout
        .strip_prefix("OK: ")
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not an OK line: {stdout:?}"));
    assert!(stdout.contains(" records in "), "{stdout}");
    n
}

/// Exit 1, nothing on stdout, one line on stderr: `FILE:LINE: …`.
fn broken_at(out: &Output, file: &Path, line: usize) -> String {
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}{}", text(&out.stdout));
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    assert_eq!(err.lines().count(), 1, "{err:?}");
    let prefix = format!("{}:{line}: ", file.display());
    assert!(err.starts_with(&prefix), "want {prefix:?}, got {err:?}");
    err
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

/// Drive a gateway through a small real day: a grant over the API, a
/// session, a denied login, a revoke.
async fn a_day_of_events(gw: &TestGateway) {
    let body = json!({"principal": "alice", "resource": gw.resource, "duration": "30m", "logins": ["postgres"], "reason": "INC-7"});
    let (status, grant) = gw
        .api("POST", "/v1/grants", Some(ADMIN_TOKEN), Some(&body))
        .await;
    assert_eq!(status, 201, "{grant}");
    let c = connect(&gw.pg_config("postgres")).await.unwrap();
    c.client.simple_query("SELECT 1").await.unwrap();
    assert!(connect(&gw.pg_config("root")).await.is_err());
    let id = grant["id"].as_str().unwrap();
    let (status, _) = gw
        .api(
            "DELETE",
            &format!("/v1/grants/{id}?reason=done"),
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, 200);
    gw.wait_audit("session.ended", |e| e["grant_id"] == id)
        .await;
}

#[tokio::test]
async fn verify_passes_on_a_real_log_and_names_each_tampered_line() {
    let gw = start(Opts::new("audit-verify")).await;
    a_day_of_events(&gw).await;
    let log = gw.dir.path().join("audit.jsonl");
    let good = lines(&log);
    let events: Vec<String> = good
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["event"].to_string())
        .collect();
    assert!(good.len() >= 5, "{events:?}");
    assert_eq!(ok_records(&verify(&[&log]).await), good.len() as u64);
    // The state directory stands for the whole log.
    assert_eq!(
        ok_records(&verify(&[gw.dir.path()]).await),
        good.len() as u64
    );

    let work = tempfile::tempdir().unwrap();
    let copy = |name: &str, f: &dyn Fn(&mut Vec<String>)| -> PathBuf {
        let mut l = good.clone();
        f(&mut l);
        let p = work.path().join(name);
        write_lines(&p, &l);
        p
    };
    // An edited field: the grant's principal.
    let p = copy("edited.jsonl", &|l| l[0] = l[0].replace("alice", "mallory"));
    let err = broken_at(&verify(&[&p]).await, &p, 1);
    assert!(err.contains("edited"), "{err}");
    // A deleted line.
    let p = copy("deleted.jsonl", &|l| {
        l.remove(1);
    });
    let err = broken_at(&verify(&[&p]).await, &p, 2);
    assert!(err.contains("deleted"), "{err}");
    // A swapped pair.
    let p = copy("swapped.jsonl", &|l| l.swap(1, 2));
    let err = broken_at(&verify(&[&p]).await, &p, 2);
    assert!(err.contains("out of order"), "{err}");
    // A line appended by hand: plausible JSON, no chain.
    let p = copy("appended.jsonl", &|l| {
        l.push(
            r#"{"ts":"2026-11-29T21:00:00.000Z","event":"grant.revoked","actor":"admin"}"#.into(),
        )
    });
    let n = good.len() + 1;
    let err = broken_at(&verify(&[&p]).await, &p, n);
    assert!(err.contains("not a sealed audit record"), "{err}");
    // A line appended by hand: a copy of a real one.
    let p = copy("copied.jsonl", &|l| l.push(l[1].clone()));
    let err = broken_at(&verify(&[&p]).await, &p, n);
    assert!(err.contains("a copy of the record at"), "{err}");
    // A line inserted in the middle.
    let p = copy("inserted.jsonl", &|l| l.insert(2, l[0].clone()));
    broken_at(&verify(&[&p]).await, &p, 3);
    // The original is untouched by all this.
    assert_eq!(ok_records(&verify(&[&log]).await), good.len() as u64);
}

/// A gateway like [`start`], with `extra` added to `[gateway]` and state in `dir`.
async fn start_in(o: Opts, dir: tempfile::TempDir, extra: &str) -> TestGateway {
    let text =
        config_text(&o, dir.path()).replacen("[gateway]\n", &format!("[gateway]\n{extra}\n"), 1);
    let config: Config = jitgate::config::parse_str(&text, "test.toml").unwrap();
    let running = jitgate::server::start(config).await.unwrap();
    TestGateway {
        running,
        dir,
        resource: o.resource,
    }
}

fn audit_files(dir: &Path) -> Vec<PathBuf> {
    let mut rotated: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.starts_with("audit-") && n.ends_with(".jsonl")
        })
        .collect();
    rotated.sort();
    rotated.push(dir.join("audit.jsonl"));
    rotated
}

fn records(files: &[PathBuf]) -> usize {
    files.iter().map(|f| lines(f).len()).sum()
}

#[tokio::test]
async fn rotation_and_restart_keep_one_chain_across_files() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start_in(Opts::new("audit-rotate"), dir, "audit_rotate_bytes = 4096").await;
    // Denied logins: about 250 bytes of audit each, no grant needed.
    for i in 0..40 {
        let err = connect(&gw.pg_config(&format!("nobody{i}"))).await.err();
        assert!(err.is_some());
    }
    let files = audit_files(gw.dir.path());
    assert!(files.len() >= 3, "{files:?}");
    for f in &files {
        assert!(
            std::fs::metadata(f).unwrap().len() <= 4096,
            "{}",
            f.display()
        );
    }
    let n = records(&files);
    assert!(n >= 40);
    let refs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    assert_eq!(ok_records(&verify(&refs).await), n as u64);

    // A rotated file left out: the first line of the next one is named.
    let gap: Vec<&Path> = refs
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 1)
        .map(|(_, p)| *p)
        .collect();
    let err = broken_at(&verify(&gap).await, refs[2], 1);
    assert!(err.contains("deleted"), "{err}");
    // Files out of order.
    let mut swapped = refs.clone();
    swapped.swap(0, 1);
    let err = broken_at(&verify(&swapped).await, refs[1], 1);
    assert!(err.contains("out of order"), "{err}");

    // Restart on the same directory: the chain continues.
    gw.running.shutdown(Duration::from_secs(5)).await;
    let TestGateway { running, dir, .. } = gw;
    drop(running);
    let gw = start_in(Opts::new("audit-rotate"), dir, "audit_rotate_bytes = 4096").await;
    for i in 0..5 {
        let _ = connect(&gw.pg_config(&format!("after-restart{i}"))).await;
    }
    gw.wait_audit("session.denied", |e| e["login"] == "after-restart4")
        .await;
    let files = audit_files(gw.dir.path());
    assert_eq!(
        ok_records(&verify(&[gw.dir.path()]).await),
        records(&files) as u64
    );
    assert_eq!(records(&files), n + 5);
}
