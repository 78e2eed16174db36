//! Grants and requests survive `kill -9`: the real binary, killed during a
//! burst of grant creations, restarted on the same state directory.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use serde_json::json;
use tokio::process::{Child, Command};

const JITGATE: &str = env!("CARGO_BIN_EXE_jitgate");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Gateway {
    child: Child,
    admin: SocketAddr,
}

async fn spawn(config: &std::path::Path, admin: SocketAddr) -> Gateway {
    let child = Command::new(JITGATE)
        .args(["serve", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_until("gateway up", Duration::from_secs(15), || async {
        tokio::net::TcpStream::connect(admin).await.is_ok()
    })
    .await;
    Gateway { child, admin }
}

/// kill -9 the gateway, then start it again on the same state.
async fn restart(mut gw: Gateway, config: &std::path::Path) -> Gateway {
    gw.child.start_kill().unwrap();
    gw.child.wait().await.unwrap();
    spawn(config, gw.admin).await
}

/// carol approves request `id`: status and JSON.
async fn approve(admin: SocketAddr, id: &str) -> (u16, serde_json::Value) {
    http(
        admin,
        "POST",
        &format!("/v1/requests/{id}/approve"),
        Some(CAROL_TOKEN),
        Some("{}"),
    )
    .await
}

fn write_config(dir: &std::path::Path, admin: SocketAddr, pg: u16) -> std::path::PathBuf {
    let mut o = Opts::new("dur-pg");
    o.extra = r#"
[[policy]]
name = "p"
principals = ["alice"]
resources = ["dur-pg"]
max_duration = "1h"
approvals = 1
approvers = ["carol"]
"#
    .into();
    let text = config_text(&o, &dir.join("state"))
        .replace(
            "admin_listen = \"127.0.0.1:0\"",
            &format!("admin_listen = \"{admin}\""),
        )
        .replace(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"127.0.0.1:{pg}\""),
        );
    let path = dir.join("jitgate.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test]
async fn acknowledged_grants_survive_kill_9_and_expired_ones_expire_on_start() {
    let dir = tempfile::tempdir().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let pg = free_port();
    let config = write_config(dir.path(), admin, pg);
    let mut gw = spawn(&config, admin).await;

    // One short grant that will expire while the gateway is down, and one
    // pending request that must still be approvable after the restart.
    let (st, short) = http(
        admin,
        "POST",
        "/v1/grants",
        Some(ADMIN_TOKEN),
        Some(&json!({"principal": "alice", "resource": "dur-pg", "duration": "1s", "reason": "short"}).to_string()),
    )
    .await;
    assert_eq!(st, 201, "{short}");
    let (st, pending) = http(
        admin,
        "POST",
        "/v1/requests",
        Some(ALICE_TOKEN),
        Some(
            &json!({"resource": "dur-pg", "duration": "10m", "reason": "after restart"})
                .to_string(),
        ),
    )
    .await;
    assert_eq!(st, 201, "{pending}");

    // The burst: many concurrent creations; the gateway is killed mid-way.
    let acked = Arc::new(Mutex::new(HashSet::new()));
    let mut tasks = Vec::new();
    for i in 0..400 {
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            let body = json!({"principal": "alice", "resource": "dur-pg", "duration": "1h", "reason": format!("burst-{i}")}).to_string();
            let Ok(mut s) = tokio::net::TcpStream::connect(admin).await else { return };
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let req = format!(
                "POST /v1/grants HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            if s.write_all(req.as_bytes()).await.is_err() {
                return;
            }
            let mut out = Vec::new();
            let _ = s.read_to_end(&mut out).await;
            if String::from_utf8_lossy(&out).starts_with("HTTP/1.1 201") {
                acked.lock().unwrap().insert(format!("burst-{i}"));
            }
        }));
    }
    // Kill once a good part of the burst has been acknowledged.
    wait_until("some grants acknowledged", Duration::from_secs(20), || {
        let acked = acked.clone();
        async move { acked.lock().unwrap().len() >= 40 }
    })
    .await;
    gw.child.start_kill().unwrap();
    gw.child.wait().await.unwrap();
    for t in tasks {
        let _ = t.await;
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 40);
    eprintln!("acknowledged before the kill: {} of 400", acked.len());
    tokio::time::sleep(Duration::from_millis(1200)).await;

    let gw2 = spawn(&config, admin).await;
    let (st, grants) = http(gw2.admin, "GET", "/v1/grants", Some(ADMIN_TOKEN), None).await;
    assert_eq!(st, 200);
    let present: HashSet<String> = grants
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["reason"].as_str().unwrap().to_string())
        .collect();
    for r in &acked {
        assert!(present.contains(r), "acknowledged grant {r} lost");
    }
    for r in &present {
        assert!(r.starts_with("burst-"), "unexpected grant {r}");
    }
    assert!(
        !present.contains("short"),
        "the 1s grant expired while down"
    );
    let audit = std::fs::read_to_string(dir.path().join("state/audit.jsonl")).unwrap();
    let expired_on_start = audit.lines().any(|l| {
        l.contains("\"grant.expired\"")
            && l.contains(short["id"].as_str().unwrap())
            && l.contains("not running")
    });
    assert!(
        expired_on_start,
        "grant.expired for the short grant on start"
    );

    // The pending request came back and can be approved.
    let id = pending["id"].as_str().unwrap();
    let (st, body) = approve(gw2.admin, id).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["state"], "approved");
    let grant_id = body["grant_id"]
        .as_str()
        .expect("the approval's grant")
        .to_string();

    // The approval itself survives the next kill -9: the request comes back
    // approved with its one grant, and approving it again is refused rather
    // than making a second grant.
    let gw2 = restart(gw2, &config).await;
    let (st, list) = http(gw2.admin, "GET", "/v1/requests", Some(ADMIN_TOKEN), None).await;
    assert_eq!(st, 200, "{list}");
    let back = list
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id)
        .unwrap_or_else(|| panic!("request {id} after the restart: {list}"));
    assert_eq!(back["state"], "approved", "{back}");
    assert_eq!(back["grant_id"], grant_id.as_str(), "{back}");
    assert_eq!(
        back["approvals"].as_array().map(Vec::len),
        Some(1),
        "{back}"
    );
    let (st, body) = approve(gw2.admin, id).await;
    assert_eq!(st, 409, "approved twice after a restart: {body}");
    let (_, grants) = http(gw2.admin, "GET", "/v1/grants", Some(ADMIN_TOKEN), None).await;
    let from_request = grants
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["reason"] == "after restart")
        .count();
    assert_eq!(from_request, 1, "{grants}");
    // A grant restored from the journal admits a real client.
    let mut c = tokio_postgres::Config::new();
    c.host("127.0.0.1").port(pg).user("postgres").dbname("test");
    let (client, conn) = c
        .connect(tokio_postgres::NoTls)
        .await
        .expect("admitted by a restored grant");
    tokio::spawn(conn);
    client.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test]
async fn grants_the_configuration_no_longer_allows_end_at_the_start() {
    // What a reload would end, a restart on a changed file ends too: bob is
    // removed, and alice's policy no longer gives her login postgres.
    let dir = tempfile::tempdir().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let pg = free_port();
    let config = write_config(dir.path(), admin, pg);
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("approvals = 1\napprovers = [\"carol\"]", "approvals = 0");
    std::fs::write(&config, &text).unwrap();
    let mut gw = spawn(&config, admin).await;
    let (st, req) = http(
        admin,
        "POST",
        "/v1/requests",
        Some(ALICE_TOKEN),
        Some(&json!({"resource": "dur-pg", "duration": "1h", "reason": "alice's"}).to_string()),
    )
    .await;
    assert_eq!(st, 201, "{req}");
    assert_eq!(req["state"], "approved", "{req}");
    let (st, bobs) = http(
        admin,
        "POST",
        "/v1/grants",
        Some(ADMIN_TOKEN),
        Some(
            &json!({"principal": "bob", "resource": "dur-pg", "duration": "1h", "reason": "bob's"})
                .to_string(),
        ),
    )
    .await;
    assert_eq!(st, 201, "{bobs}");
    let (st, glass) = http(
        admin,
        "POST",
        "/v1/grants",
        Some(ADMIN_TOKEN),
        Some(&json!({"principal": "alice", "resource": "dur-pg", "duration": "1h", "reason": "break-glass"}).to_string()),
    )
    .await;
    assert_eq!(st, 201, "{glass}");
    gw.child.start_kill().unwrap();
    gw.child.wait().await.unwrap();

    // While it is down: bob's [[user]] goes, and the policy's logins exclude
    // postgres.
    let bob_at = text.find("name = \"bob\"").unwrap();
    let start = text[..bob_at].rfind("[[user]]").unwrap();
    let end = text[bob_at..].find("[[user]]").unwrap() + bob_at;
    let changed = format!("{}{}", &text[..start], &text[end..])
        .replace("approvals = 0", "approvals = 0\nlogins = [\"nobody\"]");
    std::fs::write(&config, changed).unwrap();
    let gw = spawn(&config, admin).await;
    let (st, grants) = http(gw.admin, "GET", "/v1/grants", Some(ADMIN_TOKEN), None).await;
    assert_eq!(st, 200, "{grants}");
    let reasons: Vec<&str> = grants
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["reason"].as_str().unwrap())
        .collect();
    // Only the break-glass grant stays: no policy decides it, its user and
    // its login are still configured.
    assert_eq!(reasons, ["break-glass"], "{grants}");
    let audit = std::fs::read_to_string(dir.path().join("state/audit.jsonl")).unwrap();
    let ended = |id: &str, why: &str| {
        audit.lines().any(|l| {
            l.contains("\"grant.revoked\"")
                && l.contains(id)
                && l.contains(why)
                && l.contains("\"actor\":\"config\"")
        })
    };
    assert!(
        ended(bobs["id"].as_str().unwrap(), "user bob was removed"),
        "{audit}"
    );
    assert!(
        ended(
            req["grant_id"].as_str().unwrap(),
            // JSON escapes the quotes around the login.
            r#"does not let alice use login \"postgres\" on dur-pg any more"#
        ),
        "{audit}"
    );
    // The login the policy dropped is refused, whatever the journal held.
    let mut c = tokio_postgres::Config::new();
    c.host("127.0.0.1").port(pg).user("postgres").dbname("test");
    // alice's break-glass grant still admits postgres; bob's root does not.
    let (client, conn) = c
        .connect(tokio_postgres::NoTls)
        .await
        .expect("break-glass admits");
    tokio::spawn(conn);
    client.simple_query("SELECT 1").await.unwrap();
    let mut c = tokio_postgres::Config::new();
    c.host("127.0.0.1").port(pg).user("root").dbname("test");
    assert!(
        c.connect(tokio_postgres::NoTls).await.is_err(),
        "bob's grant is gone"
    );
}
