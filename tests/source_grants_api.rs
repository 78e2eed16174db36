//! Grants on ssh/tcp resources through the admin API and the CLI's
//! request shape: the default source is the address the API saw the
//! request come from (X-Forwarded-For believed only from `trusted_proxies`),
//! logins are refused, and a grant needs a source.

mod common;

use common::net::{Backend, Mode};
use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// POST /v1/grants as admin with extra header lines; status and JSON.
async fn post_grant(gw: &TestGateway, body: &Value, extra_headers: &str) -> (u16, Value) {
    let mut s = TcpStream::connect(gw.running.admin_addr).await.unwrap();
    let body = body.to_string();
    let req = format!(
        "POST /v1/grants HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n{extra_headers}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).to_string();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, serde_json::from_str(rest).unwrap_or(Value::Null))
}

fn body(resource: &str) -> Value {
    json!({"principal": "alice", "resource": resource, "duration": "10m", "reason": "INC-7"})
}

#[tokio::test]
async fn an_ssh_tcp_grant_defaults_to_the_requests_address() {
    let backend = Backend::start(Mode::Echo).await;
    let gw = start(Opts::with_backend("api-src", "tcp", backend.addr)).await;
    let (status, g) = post_grant(&gw, &body("api-src"), "").await;
    assert_eq!(status, 201, "{g}");
    assert_eq!(g["sources"], json!(["127.0.0.1/32"]));
    assert_eq!(g["logins"], json!([]), "no logins on a tcp grant");
    // An X-Forwarded-For from an untrusted peer is ignored.
    let (status, g) = post_grant(&gw, &body("api-src"), "X-Forwarded-For: 198.51.100.7\r\n").await;
    assert_eq!(status, 201, "{g}");
    assert_eq!(g["sources"], json!(["127.0.0.1/32"]));
    // Explicit sources are kept; logins are refused.
    let mut b = body("api-src");
    b["sources"] = json!(["10.0.0.0/8"]);
    let (status, g) = post_grant(&gw, &b, "").await;
    assert_eq!(status, 201, "{g}");
    assert_eq!(g["sources"], json!(["10.0.0.0/8"]));
    let mut b = body("api-src");
    b["logins"] = json!(["postgres"]);
    let (status, e) = post_grant(&gw, &b, "").await;
    assert_eq!(status, 400, "{e}");
    assert!(e["error"].as_str().unwrap().contains("--source"), "{e}");
    // The default grant admits this machine.
    let mut c = TcpStream::connect(gw.addr()).await.unwrap();
    c.write_all(b"x").await.unwrap();
    let mut one = [0u8; 1];
    c.read_exact(&mut one).await.unwrap();
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_forwarded_client_is_the_default_source() {
    let backend = Backend::start(Mode::Echo).await;
    let mut o = Opts::with_backend("api-xff", "ssh", backend.addr);
    o.gateway_extra = "trusted_proxies = [\"127.0.0.1/32\"]".into();
    let gw = start(o).await;
    let (status, g) = post_grant(
        &gw,
        &body("api-xff"),
        "X-Forwarded-For: 6.6.6.6, 198.51.100.7\r\n",
    )
    .await;
    assert_eq!(status, 201, "{g}");
    assert_eq!(g["sources"], json!(["198.51.100.7/32"]));
    let created = gw.wait_audit("grant.created", |_| true).await;
    assert_eq!(created["sources"], "198.51.100.7/32");
    assert!(created.get("login").is_none());
}

#[tokio::test]
async fn a_postgres_grant_keeps_its_login_default_and_sources_restrict_it() {
    let gw = start(Opts::new("api-pg-src")).await;
    let mut b = body("api-pg-src");
    b["sources"] = json!(["10.9.9.9"]);
    let (status, g) = post_grant(&gw, &b, "").await;
    assert_eq!(status, 201, "{g}");
    assert_eq!(g["logins"], json!(["postgres"]));
    assert_eq!(g["sources"], json!(["10.9.9.9/32"]));
    // This machine is not 10.9.9.9: refused.
    let err = connect(&gw.pg_config("postgres")).await.err().unwrap();
    assert_eq!(db_error(&err).0, "28000");
}

/// POST /v1/requests as alice; status and JSON.
async fn post_request(gw: &TestGateway, body: &Value) -> (u16, Value) {
    gw.api("POST", "/v1/requests", Some(ALICE_TOKEN), Some(body))
        .await
}

#[tokio::test]
async fn a_request_on_a_tcp_resource_is_for_the_requesters_address() {
    let backend = Backend::start(Mode::Echo).await;
    let mut o = Opts::with_backend("req-src", "tcp", backend.addr);
    o.extra = r#"
[[policy]]
name = "auto"
principals = ["alice"]
resources = ["req-src"]
max_duration = "1h"
approvals = 0
"#
    .into();
    let gw = start(o).await;
    let ask = json!({"resource": "req-src", "duration": "10m", "reason": "deploy"});
    let (status, r) = post_request(&gw, &ask).await;
    assert_eq!(status, 201, "{r}");
    assert_eq!(r["sources"], json!(["127.0.0.1/32"]));
    assert_eq!(
        r["logins"],
        json!([]),
        "the policy's logins do not apply to tcp"
    );
    assert_eq!(r["state"], "approved", "{r}");
    // The auto-approved grant admits this machine.
    let mut c = TcpStream::connect(gw.addr()).await.unwrap();
    c.write_all(b"y").await.unwrap();
    let mut one = [0u8; 1];
    c.read_exact(&mut one).await.unwrap();
    assert_eq!(&one, b"y");
    // A login on a tcp resource is refused with a pointer to --source.
    let mut bad = ask.clone();
    bad["logins"] = json!(["postgres"]);
    let (status, e) = post_request(&gw, &bad).await;
    assert_eq!(status, 400, "{e}");
    assert!(e["error"].as_str().unwrap().contains("--source"), "{e}");
}

#[tokio::test]
async fn a_policys_sources_bound_the_networks_a_request_may_name() {
    let backend = Backend::start(Mode::Echo).await;
    let mut o = Opts::with_backend("req-net", "tcp", backend.addr);
    o.extra = r#"
[[policy]]
name = "auto"
principals = ["alice"]
resources = ["req-net"]
max_duration = "1h"
approvals = 0
sources = ["127.0.0.0/8"]
"#
    .into();
    let gw = start(o).await;
    // Auto-approved, so nothing but the policy stands between a requester
    // and the networks they name: the whole Internet, or someone else's.
    for wide in ["0.0.0.0/0", "10.1.2.3/32", "127.0.0.0/7"] {
        let ask =
            json!({"resource": "req-net", "duration": "10m", "reason": "x", "sources": [wide]});
        let (status, e) = post_request(&gw, &ask).await;
        assert_eq!(status, 403, "{wide}: {e}");
        assert!(
            e["error"].as_str().unwrap().contains(&format!(
                "does not let alice connect from {wide} (allowed: 127.0.0.0/8)"
            )),
            "{e}"
        );
    }
    assert!(gw.running.gateway.grants.list().is_empty());
    // Within them, as the default (the requester's own address) is.
    let ask = json!({"resource": "req-net", "duration": "10m", "reason": "x"});
    let (status, r) = post_request(&gw, &ask).await;
    assert_eq!(status, 201, "{r}");
    assert_eq!(r["state"], "approved", "{r}");
    assert_eq!(r["sources"], json!(["127.0.0.1/32"]));
    // `policy explain` says so.
    let (status, x) = gw
        .api(
            "GET",
            "/v1/policy/explain?resource=req-net",
            Some(ALICE_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, 200, "{x}");
    assert_eq!(x["sources"], json!(["127.0.0.0/8"]), "{x}");
    assert!(
        x["explain"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l == "sources must lie within 127.0.0.0/8"),
        "{x}"
    );
}

#[tokio::test]
async fn a_database_request_under_a_policy_with_sources_gets_them() {
    let mut o = Opts::new("req-net-pg");
    o.extra = r#"
[[policy]]
name = "auto"
principals = ["alice"]
resources = ["req-net-pg"]
max_duration = "1h"
approvals = 0
sources = ["127.0.0.0/8"]
"#
    .into();
    let gw = start(o).await;
    // Naming no source would mean any address: the policy's networks are
    // the grant's, not nothing.
    let ask = json!({"resource": "req-net-pg", "duration": "10m", "reason": "x"});
    let (status, r) = post_request(&gw, &ask).await;
    assert_eq!(status, 201, "{r}");
    assert_eq!(r["sources"], json!(["127.0.0.0/8"]), "{r}");
    let grant = gw
        .running
        .gateway
        .grants
        .get(&r["grant_id"].as_str().unwrap().parse().unwrap())
        .unwrap();
    assert_eq!(grant.sources.len(), 1);
    // A break-glass grant with no sources is not prolonged by that policy.
    let g = gw.grant("alice", "postgres", std::time::Duration::from_secs(600));
    let (status, e) = gw
        .api(
            "POST",
            &format!("/v1/grants/{}/extend", g.id),
            Some(ALICE_TOKEN),
            Some(&json!({"by": "10m", "reason": "more"})),
        )
        .await;
    assert_eq!(status, 403, "{e}");
    assert!(
        e["error"]
            .as_str()
            .unwrap()
            .contains("a grant without sources would admit any address"),
        "{e}"
    );
}
