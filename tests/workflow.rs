//! The just-in-time workflow through the real CLI and API against the real
//! PostgreSQL: request, review, grant, extension, release, policies,
//! webhooks.

mod common;

use std::process::Output;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::process::Command;

const JITGATE: &str = env!("CARGO_BIN_EXE_jitgate");

/// The CLI as the holder of `token`, against `gw`.
async fn cli(gw: &TestGateway, token: &str, args: &[&str]) -> Output {
    let mut c = Command::new(JITGATE);
    c.env_remove("JITGATE_TOKEN")
        .env_remove("JITGATE_ADMIN_URL")
        .args(["--admin-url", &gw.admin_url(), "--token", token])
        .args(args)
        .kill_on_drop(true);
    tokio::time::timeout(Duration::from_secs(30), c.output())
        .await
        .expect("jitgate finished")
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json_out(o: &Output) -> Value {
    assert!(o.status.success(), "failed: {}", stderr(o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(o)))
}

fn policy(name: &str, resource: &str, approvals: u32, approvers: &str, max: &str) -> String {
    format!(
        r#"
[[policy]]
name = "{name}"
principals = ["alice"]
resources = ["{resource}"]
max_duration = "{max}"
approvals = {approvals}
approvers = [{approvers}]
"#
    )
}

/// Start a gateway for `resource` with `policy`, its config in a file that
/// `reload_policy` rewrites.
async fn start_reloadable(resource: &str, policy: String) -> TestGateway {
    let mut o = Opts::new(resource);
    o.extra = policy;
    let gw = start(o).await;
    let path = gw.dir.path().join("jitgate.toml");
    gw.running.gateway.listeners.set_path(path);
    gw
}

/// Rewrite the config of a `start_reloadable` gateway with `policy`, and
/// reload it.
async fn reload_policy(gw: &TestGateway, resource: &str, policy: String) {
    let mut o = Opts::new(resource);
    o.extra = policy;
    std::fs::write(
        gw.dir.path().join("jitgate.toml"),
        config_text(&o, gw.dir.path()),
    )
    .unwrap();
    let (st, body) = gw.api("POST", "/v1/reload", Some(ADMIN_TOKEN), None).await;
    assert_eq!(st, 200, "{body}");
}

/// alice asks for `resource` for `duration`; the request's JSON.
async fn alice_requests(gw: &TestGateway, resource: &str, duration: &str) -> Value {
    let (st, req) = gw
        .api(
            "POST",
            "/v1/requests",
            Some(ALICE_TOKEN),
            Some(&json!({"resource": resource, "duration": duration, "reason": "x"})),
        )
        .await;
    assert_eq!(st, 201, "{req}");
    req
}

/// `token`'s approval of request `id`: status and JSON.
async fn approve_as(gw: &TestGateway, token: &str, id: &str) -> (u16, Value) {
    let path = format!("/v1/requests/{id}/approve");
    gw.api("POST", &path, Some(token), Some(&json!({}))).await
}

async fn denied(gw: &TestGateway) -> bool {
    match connect(&gw.pg_config("postgres")).await {
        Ok(_) => false,
        Err(e) => e.as_db_error().is_some_and(|d| d.code().code() == "28000"),
    }
}

#[tokio::test]
async fn request_is_pending_until_approved_then_admits_until_it_expires() {
    let mut o = Opts::new("wf-story");
    o.extra = policy("dba", "wf-story", 1, r#""carol", "dave""#, "1h");
    let gw = start(o).await;

    let out = cli(
        &gw,
        ALICE_TOKEN,
        &[
            "request", "wf-story", "--for", "3s", "--reason", "INC-4411", "--json",
        ],
    )
    .await;
    let req = json_out(&out);
    assert_eq!(req["state"], "pending");
    assert_eq!(req["approvals_needed"], 1);
    let id = req["id"].as_str().unwrap().to_string();
    // Human output names the state and the approvers.
    let listed = cli(&gw, CAROL_TOKEN, &["requests", "--pending"]).await;
    assert!(stdout(&listed).contains(&id), "{}", stdout(&listed));
    assert!(denied(&gw).await, "a pending request admits nobody");

    let approved = cli(&gw, CAROL_TOKEN, &["approve", &id, "--comment", "ok"]).await;
    assert!(approved.status.success(), "{}", stderr(&approved));
    assert!(
        stdout(&approved).contains("approved: grant"),
        "{}",
        stdout(&approved)
    );

    let c = connect(&gw.pg_config("postgres"))
        .await
        .expect("admitted after approval");
    c.client.simple_query("SELECT 1").await.unwrap();
    let created = gw
        .wait_audit("grant.created", |e| e["request_id"] == id.as_str())
        .await;
    assert_eq!(created["outcome"], "request");
    gw.wait_audit("request.approved", |e| {
        e["request_id"] == id.as_str() && e["actor"] == "carol"
    })
    .await;

    // The grant clock started at approval; the session ends with it.
    let end = tokio::time::timeout(Duration::from_secs(8), c.conn)
        .await
        .expect("session ended")
        .unwrap();
    let text = end.expect_err("ended by jitgate");
    assert!(
        text.contains("jitgate: access to wf-story expired"),
        "{text}"
    );
    assert!(c.client.is_closed());
    assert!(denied(&gw).await);
}

#[tokio::test]
async fn reviewers_are_checked_self_approval_wrong_approver_and_two_distinct() {
    let mut o = Opts::new("wf-review");
    o.extra = policy("two", "wf-review", 2, r#""alice", "carol", "dave""#, "1h");
    let gw = start(o).await;
    let (st, req) = gw
        .api(
            "POST",
            "/v1/requests",
            Some(ALICE_TOKEN),
            Some(&json!({"resource": "wf-review", "duration": "10m", "reason": "x"})),
        )
        .await;
    assert_eq!(st, 201, "{req}");
    let id = req["id"].as_str().unwrap();
    let approve = |token: &'static str| {
        let path = format!("/v1/requests/{id}/approve");
        let gw = &gw;
        async move { gw.api("POST", &path, Some(token), Some(&json!({}))).await }
    };
    // alice is an approver of this policy but never of her own request.
    let (st, body) = approve(ALICE_TOKEN).await;
    assert_eq!(st, 403, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("your own request"),
        "{body}"
    );
    // A requester without the approver role.
    let (st, _) = approve("test-bob-token").await;
    assert_eq!(st, 403);
    // One approval of two: still pending, still denied.
    let (st, body) = approve(CAROL_TOKEN).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["state"], "pending");
    assert!(denied(&gw).await);
    // The same approver twice does not count twice.
    let (st, _) = approve(CAROL_TOKEN).await;
    assert_eq!(st, 409);
    let (st, body) = approve(DAVE_TOKEN).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["state"], "approved");
    assert!(!denied(&gw).await, "two distinct approvals admit");
}

#[tokio::test]
async fn an_approver_outside_the_policy_is_refused() {
    let mut o = Opts::new("wf-outsider");
    o.extra = policy("p", "wf-outsider", 1, r#""carol""#, "1h");
    let gw = start(o).await;
    let (_, req) = gw
        .api(
            "POST",
            "/v1/requests",
            Some(ALICE_TOKEN),
            Some(&json!({"resource": "wf-outsider", "duration": "10m", "reason": "x"})),
        )
        .await;
    let id = req["id"].as_str().unwrap();
    // dave holds the approver role but is not among this policy's approvers.
    let (st, body) = gw
        .api(
            "POST",
            &format!("/v1/requests/{id}/approve"),
            Some(DAVE_TOKEN),
            Some(&json!({})),
        )
        .await;
    assert_eq!(st, 403, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("not an approver"),
        "{body}"
    );
}

#[tokio::test]
async fn auto_approval_grants_at_once_and_durations_are_capped() {
    let mut o = Opts::new("wf-auto");
    o.extra = policy("auto", "wf-auto", 0, "", "1h");
    let gw = start(o).await;
    let out = cli(
        &gw,
        ALICE_TOKEN,
        &["request", "wf-auto", "--for", "4h", "--reason", "deploy"],
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("note: duration capped from 4h to 1h by policy \"auto\""),
        "{text}"
    );
    assert!(text.contains("auto-approved by policy auto"), "{text}");
    let grants = json_out(&cli(&gw, ALICE_TOKEN, &["grants", "--json"]).await);
    let g = &grants[0];
    assert_eq!(g["kind"], "request");
    let expires = humantime::parse_rfc3339_weak(g["expires_at"].as_str().unwrap()).unwrap();
    let left = expires.duration_since(SystemTime::now()).unwrap();
    assert!(
        left <= Duration::from_secs(3600) && left > Duration::from_secs(3500),
        "{left:?}"
    );
    assert!(!denied(&gw).await);
    assert!(gw.metric("jitgate_requests_total", &["auto_approved"]) >= 1.0);
}

#[tokio::test]
async fn one_pending_request_per_resource_and_ttl_expiry() {
    let mut o = Opts::new("wf-ttl");
    o.request_ttl = "1s";
    o.extra = policy("p", "wf-ttl", 1, r#""carol""#, "1h");
    let gw = start(o).await;
    let body = json!({"resource": "wf-ttl", "duration": "10m", "reason": "x"});
    let (st, req) = gw
        .api("POST", "/v1/requests", Some(ALICE_TOKEN), Some(&body))
        .await;
    assert_eq!(st, 201);
    let id = req["id"].as_str().unwrap().to_string();
    let (st, dup) = gw
        .api("POST", "/v1/requests", Some(ALICE_TOKEN), Some(&body))
        .await;
    assert_eq!(st, 409, "{dup}");
    gw.wait_audit("request.expired", |e| e["request_id"] == id.as_str())
        .await;
    let (st, _) = gw
        .api(
            "POST",
            &format!("/v1/requests/{id}/approve"),
            Some(CAROL_TOKEN),
            Some(&json!({})),
        )
        .await;
    assert_eq!(st, 409, "an expired request cannot be approved");
    let mine = json_out(&cli(&gw, ALICE_TOKEN, &["requests", "--json"]).await);
    assert_eq!(mine[0]["state"], "expired");
    assert!(denied(&gw).await);
}

#[tokio::test]
async fn a_denial_and_its_reason_reach_the_requester() {
    let mut o = Opts::new("wf-deny");
    o.extra = policy("p", "wf-deny", 1, r#""carol""#, "1h");
    let gw = start(o).await;
    let req = json_out(
        &cli(
            &gw,
            ALICE_TOKEN,
            &[
                "request", "wf-deny", "--for", "10m", "--reason", "x", "--json",
            ],
        )
        .await,
    );
    let id = req["id"].as_str().unwrap();
    let out = cli(
        &gw,
        CAROL_TOKEN,
        &["deny", id, "--reason", "use the replica"],
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let mine = cli(&gw, ALICE_TOKEN, &["requests"]).await;
    let text = stdout(&mine);
    assert!(text.contains("denied"), "{text}");
    let j = json_out(&cli(&gw, ALICE_TOKEN, &["requests", "--json"]).await);
    assert_eq!(j[0]["deny_reason"], "use the replica");
    assert_eq!(j[0]["denied_by"], "carol");
    gw.wait_audit("request.denied", |e| e["reason"] == "use the replica")
        .await;
    assert!(denied(&gw).await);
}

#[tokio::test]
async fn an_extension_moves_a_live_sessions_deadline() {
    let mut o = Opts::new("wf-extend");
    o.extra = policy("auto", "wf-extend", 0, "", "1h");
    let gw = start(o).await;
    let req = json_out(
        &cli(
            &gw,
            ALICE_TOKEN,
            &[
                "request",
                "wf-extend",
                "--for",
                "3s",
                "--reason",
                "x",
                "--json",
            ],
        )
        .await,
    );
    let grant = req["grant_id"].as_str().unwrap().to_string();
    let started = Instant::now();
    let c = connect(&gw.pg_config("postgres")).await.unwrap();
    let ext = json_out(
        &cli(
            &gw,
            ALICE_TOKEN,
            &["extend", &grant, "--by", "4s", "--reason", "more", "--json"],
        )
        .await,
    );
    assert_eq!(ext["state"], "approved");
    gw.wait_audit("grant.extended", |e| e["grant_id"] == grant.as_str())
        .await;
    // Past the original deadline, the same session still works.
    tokio::time::sleep_until((started + Duration::from_secs(4)).into()).await;
    c.client
        .simple_query("SELECT 1")
        .await
        .expect("the session outlives its original deadline");
    let end = tokio::time::timeout(Duration::from_secs(8), c.conn)
        .await
        .expect("ends at the new deadline")
        .unwrap();
    let took = started.elapsed();
    assert!(end.unwrap_err().contains("expired"));
    assert!(took >= Duration::from_secs(6), "ended after {took:?}");
}

#[tokio::test]
async fn an_extension_is_decided_by_the_policy_as_a_new_request_is() {
    // An auto-approving policy that gives alice no login here...
    let mut o = Opts::new("wf-ext-login");
    o.extra = policy("auto", "wf-ext-login", 0, "", "1h") + "logins = [\"nobody\"]\n";
    let gw = start(o).await;
    // ...and a break-glass grant an admin gave her for one of her logins:
    // the policy must not prolong what it would not have granted.
    let g = gw.grant("alice", "postgres", Duration::from_secs(600));
    let deadline = g.expires_at();
    let (st, body) = gw
        .api(
            "POST",
            &format!("/v1/grants/{}/extend", g.id),
            Some(ALICE_TOKEN),
            Some(&json!({"by": "1h", "reason": "more"})),
        )
        .await;
    assert_eq!(st, 403, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("does not let alice use login \"postgres\""),
        "{body}"
    );
    assert_eq!(
        gw.running.gateway.grants.get(&g.id).unwrap().expires_at(),
        deadline
    );
    assert!(gw.audit_events("grant.extended").is_empty());
    assert!(gw.audit_events("request.created").is_empty());
}

#[tokio::test]
async fn a_request_the_policy_no_longer_allows_cannot_be_approved() {
    let one = |max: &str, principals: &str| {
        policy("one", "wf-stale", 1, r#""carol""#, max).replace(
            r#"principals = ["alice"]"#,
            &format!("principals = [{principals}]"),
        )
    };
    let gw = start_reloadable("wf-stale", one("1h", r#""alice""#)).await;
    let req = alice_requests(&gw, "wf-stale", "30m").await;
    let id = req["id"].as_str().unwrap();

    // The policy is narrowed to 10 minutes, then alice is taken out of it
    // before carol gets to the request.
    reload_policy(&gw, "wf-stale", one("10m", r#""alice", "bob""#)).await;
    reload_policy(&gw, "wf-stale", one("10m", r#""bob""#)).await;
    let (st, body) = approve_as(&gw, CAROL_TOKEN, id).await;
    assert_eq!(st, 409, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("the policy no longer allows this request"),
        "{body}"
    );
    assert!(gw.audit_events("request.approved").is_empty());
    assert!(gw.audit_events("grant.created").is_empty());
    assert!(denied(&gw).await, "no grant was made");

    // Put back (narrowed to 10 minutes): the approval goes through, capped.
    reload_policy(&gw, "wf-stale", one("10m", r#""alice""#)).await;
    let (st, body) = approve_as(&gw, CAROL_TOKEN, id).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["state"], "approved", "{body}");
    assert_eq!(body["duration"], "10m", "{body}");
    assert!(!denied(&gw).await, "the approval admits");
}

#[tokio::test]
async fn more_approvals_required_since_the_request_are_required_of_it() {
    // One approval from carol at first; two, from carol and dave, after.
    let needing = |n| {
        let approvers = if n == 1 {
            r#""carol""#
        } else {
            r#""carol", "dave""#
        };
        policy("p", "wf-more", n, approvers, "1h")
    };
    let gw = start_reloadable("wf-more", needing(1)).await;
    let req = alice_requests(&gw, "wf-more", "10m").await;
    assert_eq!(req["approvals_needed"], 1);
    let id = req["id"].as_str().unwrap();
    // During an incident the policy is raised to two approvals.
    reload_policy(&gw, "wf-more", needing(2)).await;
    let (st, body) = approve_as(&gw, CAROL_TOKEN, id).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(
        body["state"], "pending",
        "one approval is not enough now: {body}"
    );
    assert_eq!(body["approvals_needed"], 2, "{body}");
    assert!(denied(&gw).await);
    let (st, body) = approve_as(&gw, DAVE_TOKEN, id).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["state"], "approved", "{body}");
    assert!(!denied(&gw).await);
}

#[tokio::test]
async fn release_ends_the_holders_sessions_now() {
    let mut o = Opts::new("wf-release");
    o.extra = policy("auto", "wf-release", 0, "", "1h");
    let gw = start(o).await;
    let req = json_out(
        &cli(
            &gw,
            ALICE_TOKEN,
            &[
                "request",
                "wf-release",
                "--for",
                "10m",
                "--reason",
                "x",
                "--json",
            ],
        )
        .await,
    );
    let grant = req["grant_id"].as_str().unwrap().to_string();
    let c = connect(&gw.pg_config("postgres")).await.unwrap();
    // Only the holder may release.
    let other = cli(&gw, "test-bob-token", &["release", &grant]).await;
    assert!(!other.status.success());
    let out = cli(&gw, ALICE_TOKEN, &["release", &grant]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("1 session(s) closed"),
        "{}",
        stdout(&out)
    );
    let end = tokio::time::timeout(Duration::from_secs(3), c.conn)
        .await
        .unwrap()
        .unwrap();
    assert!(end
        .unwrap_err()
        .contains("revoked by alice: released by its holder"));
    assert!(c.client.is_closed());
    gw.wait_audit("grant.released", |e| e["grant_id"] == grant.as_str())
        .await;
    assert!(denied(&gw).await);
}

/// A UTC window `HH:MM-HH:MM` from `from` to `to` minutes after now.
fn window(from: i64, to: i64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        / 60;
    let hm = |m: i64| {
        let m = (now + m).rem_euclid(1440);
        format!("{:02}:{:02}", m / 60, m % 60)
    };
    format!("{}-{}", hm(from), hm(to))
}

#[tokio::test]
async fn time_window_rules_apply_inside_and_not_outside() {
    let mut o = Opts::new("wf-window");
    // Outside business hours (here: a window that holds now), two approvals and 30m.
    o.extra = format!(
        "{}\n[[policy.when]]\nhours = \"{}\"\nmax_duration = \"30m\"\napprovals = 2\n",
        policy("p", "wf-window", 1, r#""carol", "dave""#, "8h"),
        window(-60, 60)
    );
    let gw = start(o).await;
    let (st, req) = gw
        .api(
            "POST",
            "/v1/requests",
            Some(ALICE_TOKEN),
            Some(&json!({"resource": "wf-window", "duration": "2h", "reason": "x"})),
        )
        .await;
    assert_eq!(st, 201, "{req}");
    assert_eq!(req["approvals_needed"], 2, "the rule applies now");
    assert_eq!(req["duration"], "30m");
    // Three hours from now the window does not hold: the base policy applies.
    let later =
        humantime::format_rfc3339_seconds(SystemTime::now() + Duration::from_secs(3 * 3600))
            .to_string();
    let out = cli(
        &gw,
        CAROL_TOKEN,
        &[
            "policy",
            "explain",
            "alice",
            "wf-window",
            "--at",
            &later,
            "--json",
        ],
    )
    .await;
    let ex = json_out(&out);
    assert_eq!(ex["approvals"], 1, "{ex}");
    assert_eq!(ex["max_duration"], "8h");
    assert!(
        ex["explain"].to_string().contains("rule 1 does not apply"),
        "{ex}"
    );
    let human = cli(
        &gw,
        CAROL_TOKEN,
        &["policy", "explain", "alice", "wf-window"],
    )
    .await;
    assert!(
        stdout(&human).contains("policy \"p\" applies"),
        "{}",
        stdout(&human)
    );
    assert!(
        stdout(&human).contains("rule 1 applies"),
        "{}",
        stdout(&human)
    );
    // Nobody else may request it.
    let nobody = cli(&gw, CAROL_TOKEN, &["policy", "explain", "bob", "wf-window"]).await;
    assert!(!nobody.status.success());
    assert!(stdout(&nobody).contains("no policy lets \"bob\" request \"wf-window\""));
}

#[tokio::test]
async fn a_requester_token_cannot_call_admin_routes() {
    let gw = start(Opts::new("wf-roles")).await;
    let g = gw.grant("alice", "postgres", Duration::from_secs(60));
    let (st, _) = gw
        .api(
            "POST",
            "/v1/grants",
            Some(ALICE_TOKEN),
            Some(&json!({"principal": "alice", "resource": "wf-roles", "duration": "1h", "reason": "x"})),
        )
        .await;
    assert_eq!(st, 403);
    let (st, _) = gw
        .api(
            "DELETE",
            &format!("/v1/grants/{}", g.id),
            Some(ALICE_TOKEN),
            None,
        )
        .await;
    assert_eq!(st, 403);
    let (st, _) = gw
        .api(
            "GET",
            "/v1/policy/explain?principal=bob&resource=wf-roles",
            Some(ALICE_TOKEN),
            None,
        )
        .await;
    assert_eq!(st, 403);
    // No policy covers alice here: her request is refused with the reason.
    let (st, body) = gw
        .api(
            "POST",
            "/v1/requests",
            Some(ALICE_TOKEN),
            Some(&json!({"resource": "wf-roles", "duration": "1h", "reason": "x"})),
        )
        .await;
    assert_eq!(st, 403, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("no policy lets"),
        "{body}"
    );
}

/// A webhook receiver: records each POST body with its signature header.
async fn receiver() -> (
    String,
    tokio::sync::mpsc::UnboundedReceiver<(String, Value)>,
) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", l.local_addr().unwrap());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let n = s.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let len: usize = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse().unwrap())
                            })
                            .unwrap_or(0);
                        if body.len() >= len {
                            let sig = head
                                .lines()
                                .find_map(|l| {
                                    l.to_ascii_lowercase()
                                        .strip_prefix("x-jitgate-signature:")
                                        .map(|v| v.trim().to_string())
                                })
                                .unwrap_or_default();
                            let _ = tx.send((
                                format!("{sig}|{body}"),
                                serde_json::from_str(body).unwrap(),
                            ));
                            let _ = s
                                .write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
                                .await;
                            return;
                        }
                    }
                }
            });
        }
    });
    (url, rx)
}

#[tokio::test]
async fn webhooks_get_signed_events_and_a_dead_sink_never_delays_approval() {
    let (url, mut events) = receiver().await;
    // A sink that accepts connections and never answers.
    let black_hole = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = format!("http://{}/never", black_hole.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut keep = Vec::new();
        while let Ok((s, _)) = black_hole.accept().await {
            keep.push(s);
        }
    });
    let mut o = Opts::new("wf-hooks");
    o.extra = format!(
        "{}\n[[notify]]\nurl = \"{url}\"\nsecret = \"s3cret\"\nevents = [\"request.created\", \"request.approved\"]\n\n[[notify]]\nurl = \"{dead}\"\ntimeout = \"10s\"\n",
        policy("p", "wf-hooks", 1, r#""carol""#, "1h")
    );
    let gw = start(o).await;
    // Fill the dead sink's single worker first, so it is busy for 10 s.
    let (_, first) = gw
        .api(
            "POST",
            "/v1/requests",
            Some(ALICE_TOKEN),
            Some(&json!({"resource": "wf-hooks", "duration": "5m", "reason": "hook test"})),
        )
        .await;
    let id = first["id"].as_str().unwrap();
    let t = Instant::now();
    let (st, body) = gw
        .api(
            "POST",
            &format!("/v1/requests/{id}/approve"),
            Some(CAROL_TOKEN),
            Some(&json!({})),
        )
        .await;
    let took = t.elapsed();
    assert_eq!(st, 200, "{body}");
    assert!(
        took < Duration::from_secs(2),
        "approval took {took:?} with a dead webhook"
    );

    let mut seen = Vec::new();
    for _ in 0..2 {
        let (raw, v) = tokio::time::timeout(Duration::from_secs(5), events.recv())
            .await
            .expect("webhook event")
            .unwrap();
        let (sig, body) = raw.split_once('|').unwrap();
        assert_eq!(
            sig,
            format!(
                "sha256={}",
                jitgate::notify::signature(b"s3cret", body.as_bytes())
            )
        );
        assert!(v["text"].as_str().unwrap().contains("alice"), "{v}");
        seen.push(v["event"].as_str().unwrap().to_string());
    }
    assert_eq!(seen, ["request.created", "request.approved"]);
    held.abort();
}
