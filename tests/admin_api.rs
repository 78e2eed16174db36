//! The admin HTTP API over real HTTP: tokens, roles, input validation,
//! status codes, the JSON shapes of PRODUCT.md §6, and the unauthenticated
//! `/healthz` and `/metrics`.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use common::*;
use serde_json::{json, Value};

const BOB_TOKEN: &str = "test-bob-token";

/// The error body every failure carries: `{"error": "<one line>"}`.
fn error_text(body: &Value) -> &str {
    let text = body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("not a JSON error: {body}"));
    assert!(!text.is_empty() && !text.contains('\n'), "{text:?}");
    text
}

fn time(v: &Value) -> SystemTime {
    let s = v.as_str().unwrap_or_else(|| panic!("not a time: {v}"));
    assert!(s.ends_with('Z'), "not UTC: {s}");
    humantime::parse_rfc3339(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn grant_body(principal: &str, resource: &str) -> Value {
    json!({"principal": principal, "resource": resource, "duration": "30m", "reason": "INC-1"})
}

#[tokio::test]
async fn healthz_and_metrics_answer_without_a_token() {
    let gw = start(Opts::new("api-health")).await;
    gw.grant("alice", "postgres", Duration::from_secs(60));
    let c = connect(&gw.pg_config("postgres")).await.unwrap();
    c.client.simple_query("SELECT 1").await.unwrap();

    let addr = gw.running.admin_addr;
    let (status, _, body) = http_text(addr, "GET", "/healthz", None, None).await;
    assert_eq!(status, 200);
    assert_eq!(body.trim(), "ok");
    // A wrong token does not matter there either.
    let (status, _, _) = http_text(addr, "GET", "/healthz", Some("nope"), None).await;
    assert_eq!(status, 200);

    let (status, head, text) = http_text(addr, "GET", "/metrics", None, None).await;
    assert_eq!(status, 200);
    assert!(head.contains("content-type: text/plain"), "{head}");
    let line = text
        .lines()
        .find(|l| {
            l.starts_with("jitgate_connections_total{")
                && l.contains("resource=\"api-health\"")
                && l.contains("outcome=\"accepted\"")
        })
        .unwrap_or_else(|| panic!("no connections line in:\n{text}"));
    assert!(line.ends_with(" 1"), "{line}");
    assert!(text.contains("jitgate_sessions_active{resource=\"api-health\"} 1"));
    assert!(text.contains("# TYPE jitgate_handshake_seconds histogram"));
    // Labels never carry a user, login or address.
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        assert!(
            !l.contains("alice") && !l.contains("login=") && !l.contains("127.0.0.1"),
            "{l}"
        );
    }
}

#[tokio::test]
async fn a_metrics_only_listener_serves_no_api() {
    let o = Opts::new("api-metrics-only");
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(&o, dir.path()).replace(
        "admin_listen = \"127.0.0.1:0\"",
        "admin_listen = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"",
    );
    let config = jitgate::config::parse_str(&text, "test.toml").unwrap();
    let running = jitgate::server::start(config).await.unwrap();
    let addr: SocketAddr = running.metrics_addr.expect("metrics listener bound");
    assert_ne!(addr, running.admin_addr);
    // One refused connection, so the resource has a metric line.
    let resource = running.resource_addr("api-metrics-only").unwrap();
    let mut pg = tokio_postgres::Config::new();
    pg.host("127.0.0.1")
        .port(resource.port())
        .user("postgres")
        .dbname("test");
    assert!(pg.connect(tokio_postgres::NoTls).await.is_err());
    let (status, _, text) = http_text(addr, "GET", "/metrics", None, None).await;
    assert_eq!(status, 200);
    assert!(
        text.lines()
            .any(|l| l.starts_with("jitgate_connections_total{")
                && l.contains("resource=\"api-metrics-only\"")
                && l.contains("outcome=\"denied\"")),
        "{text}"
    );
    let (status, _, _) = http_text(addr, "GET", "/healthz", None, None).await;
    assert_eq!(status, 200);
    let (status, body) = http(addr, "GET", "/v1/grants", Some(ADMIN_TOKEN), None).await;
    assert_eq!(status, 404);
    error_text(&body);
    running.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn v1_routes_refuse_a_missing_or_wrong_token() {
    let gw = start(Opts::new("api-401")).await;
    let g = gw.grant("alice", "postgres", Duration::from_secs(60));
    let body = grant_body("alice", "api-401");
    let grant_path = format!("/v1/grants/{}", g.id);
    let session_path = format!("/v1/sessions/{}", uuid::Uuid::now_v7());
    let routes: [(&str, &str, Option<&Value>); 5] = [
        ("GET", "/v1/grants", None),
        ("POST", "/v1/grants", Some(&body)),
        ("DELETE", &grant_path, None),
        ("GET", "/v1/sessions", None),
        ("DELETE", &session_path, None),
    ];
    for (method, path, body) in routes {
        for token in [None, Some("wrong-token"), Some(""), Some(" ")] {
            let (status, answer) = gw.api(method, path, token, body).await;
            assert_eq!(status, 401, "{method} {path} with {token:?}: {answer}");
            assert_eq!(error_text(&answer), "missing or invalid token");
        }
        // Not a bearer token at all.
        let (status, _, _) = http_text(
            gw.running.admin_addr,
            method,
            path,
            None,
            body.map(|b| b.to_string()).as_deref(),
        )
        .await;
        assert_eq!(status, 401);
    }
    // Nothing happened.
    assert_eq!(gw.running.gateway.grants.len(), 1);
    assert!(gw.audit_events("grant.revoked").is_empty());
}

#[tokio::test]
async fn a_requester_may_not_grant_revoke_or_kill() {
    let gw = start(Opts::new("api-403")).await;
    let g = gw.grant("alice", "postgres", Duration::from_secs(60));
    let c = connect(&gw.pg_config("postgres")).await.unwrap();
    c.client.simple_query("SELECT 1").await.unwrap();
    let session = gw.running.gateway.sessions.list()[0].id;

    let (status, body) = gw
        .api(
            "POST",
            "/v1/grants",
            Some(ALICE_TOKEN),
            Some(&grant_body("alice", "api-403")),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(error_text(&body).contains("admin"), "{body}");
    // Not even her own grant or her own session.
    let (status, body) = gw
        .api(
            "DELETE",
            &format!("/v1/grants/{}", g.id),
            Some(ALICE_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, 403, "{body}");
    error_text(&body);
    let (status, body) = gw
        .api(
            "DELETE",
            &format!("/v1/sessions/{session}"),
            Some(ALICE_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, 403, "{body}");
    error_text(&body);

    // The grant and the session are untouched.
    assert_eq!(gw.running.gateway.grants.len(), 1);
    c.client.simple_query("SELECT 1").await.unwrap();
    assert!(gw.audit_events("grant.revoked").is_empty());
    assert_eq!(gw.audit_events("grant.created").len(), 1);
}

#[tokio::test]
async fn bad_input_is_a_400_with_a_json_error() {
    let gw = start(Opts::new("api-400")).await;
    let addr = gw.running.admin_addr;
    let post = |body: &'static str| async move {
        http(addr, "POST", "/v1/grants", Some(ADMIN_TOKEN), Some(body)).await
    };

    let cases: [(&str, &str); 11] = [
        (r#"{"principal": "alice", "#, "malformed JSON"),
        ("", "empty body"),
        (
            r#"{"principal":"alice","resource":"api-400","duration":"30m","reason":"x","admin":true}"#,
            "unknown field",
        ),
        (
            r#"{"principal":"alice","resource":"api-400","reason":"x"}"#,
            "missing duration",
        ),
        (
            r#"{"principal":"alice","resource":"api-400","duration":"soon","reason":"x"}"#,
            "bad duration",
        ),
        (
            r#"{"principal":"alice","resource":"api-400","duration":"0s","reason":"x"}"#,
            "zero duration",
        ),
        (
            r#"{"principal":"alice","resource":"api-400","duration":"30m","reason":" "}"#,
            "blank reason",
        ),
        (
            r#"{"principal":"mallory","resource":"api-400","duration":"30m","reason":"x"}"#,
            "unknown principal",
        ),
        (
            r#"{"principal":"alice","resource":"api-400","duration":"30m","reason":"x","logins":["root"]}"#,
            "login not among the user's",
        ),
        (
            r#"{"principal":"admin","resource":"api-400","duration":"30m","reason":"x"}"#,
            "user without logins",
        ),
        (
            r#"{"principal":"alice","resource":"api-400","duration":"30m","reason":"x","sources":["nowhere"]}"#,
            "bad CIDR",
        ),
    ];
    for (body, what) in cases {
        let (status, answer) = post(body).await;
        assert_eq!(status, 400, "{what}: {answer}");
        error_text(&answer);
    }
    let (_, answer) = post(
        r#"{"principal":"alice","resource":"api-400","duration":"30m","reason":"x","logins":["root"]}"#,
    )
    .await;
    assert!(
        error_text(&answer).contains("\"root\""),
        "names the login: {answer}"
    );
    let (_, answer) =
        post(r#"{"principal":"mallory","resource":"api-400","duration":"30m","reason":"x"}"#).await;
    assert!(
        error_text(&answer).contains("mallory"),
        "names the user: {answer}"
    );

    // Ids that are not ids.
    for path in [
        "/v1/grants/not-a-uuid",
        "/v1/sessions/not-a-uuid",
        "/v1/grants/1234",
    ] {
        let (status, answer) = gw.api("DELETE", path, Some(ADMIN_TOKEN), None).await;
        assert_eq!(status, 400, "{path}: {answer}");
        assert!(error_text(&answer).contains("not a valid id"), "{answer}");
    }
    // A reason with a control character.
    let g = gw.grant("alice", "postgres", Duration::from_secs(60));
    let (status, answer) = gw
        .api(
            "DELETE",
            &format!("/v1/grants/{}?reason=a%0Ab", g.id),
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, 400, "{answer}");
    error_text(&answer);

    // Nothing was created or revoked by any of it.
    assert_eq!(gw.running.gateway.grants.len(), 1);
    assert_eq!(gw.audit_events("grant.created").len(), 1);
    assert!(gw.audit_events("grant.revoked").is_empty());
}

#[tokio::test]
async fn unknown_ids_and_routes_are_404() {
    let gw = start(Opts::new("api-404")).await;
    let nobody = uuid::Uuid::now_v7();
    for path in [
        format!("/v1/grants/{nobody}"),
        format!("/v1/sessions/{nobody}"),
    ] {
        let (status, body) = gw.api("DELETE", &path, Some(ADMIN_TOKEN), None).await;
        assert_eq!(status, 404, "{path}: {body}");
        assert!(error_text(&body).contains(&nobody.to_string()), "{body}");
    }
    for path in ["/v1/nope", "/v2/grants", "/"] {
        let (status, body) = gw.api("GET", path, Some(ADMIN_TOKEN), None).await;
        assert_eq!(status, 404, "{path}: {body}");
        error_text(&body);
    }
    // A resource that is not configured.
    let (status, body) = gw
        .api(
            "POST",
            "/v1/grants",
            Some(ADMIN_TOKEN),
            Some(&grant_body("alice", "no-such-resource")),
        )
        .await;
    assert_eq!(status, 404, "{body}");
    assert!(error_text(&body).contains("no-such-resource"), "{body}");
    // The same for a requester asking for it.
    let (status, body) = gw
        .api(
            "POST",
            "/v1/requests",
            Some(ALICE_TOKEN),
            Some(&json!({"resource": "no-such-resource", "duration": "10m", "reason": "x"})),
        )
        .await;
    assert_eq!(status, 404, "{body}");
    assert!(error_text(&body).contains("no-such-resource"), "{body}");
    // A route asked with a method it does not take: 405, a JSON error.
    for (method, path) in [
        ("GET", format!("/v1/grants/{nobody}")),
        ("DELETE", "/v1/requests".to_string()),
    ] {
        let (status, body) = gw.api(method, &path, Some(ADMIN_TOKEN), None).await;
        assert_eq!(status, 405, "{method} {path}: {body}");
        assert!(error_text(&body).contains(method), "{body}");
    }
    // A grant revoked once is gone the second time.
    let g = gw.grant("alice", "postgres", Duration::from_secs(60));
    let path = format!("/v1/grants/{}", g.id);
    let (status, body) = gw.api("DELETE", &path, Some(ADMIN_TOKEN), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["sessions_closed"], 0);
    let (status, body) = gw.api("DELETE", &path, Some(ADMIN_TOKEN), None).await;
    assert_eq!(status, 404, "{body}");
    error_text(&body);
}

#[tokio::test]
async fn an_admin_grant_is_created_with_the_documented_fields() {
    let gw = start(Opts::new("api-201")).await;
    let before = SystemTime::now();
    let (status, g) = gw
        .api(
            "POST",
            "/v1/grants",
            Some(ADMIN_TOKEN),
            Some(&grant_body("alice", "api-201")),
        )
        .await;
    assert_eq!(status, 201, "{g}");
    let id: uuid::Uuid = g["id"].as_str().unwrap().parse().unwrap();
    assert_eq!(g["principal"], "alice");
    assert_eq!(g["resource"], "api-201");
    // Default logins: all of the user's.
    assert_eq!(g["logins"], json!(["postgres"]));
    assert_eq!(g["sources"], json!([]));
    assert_eq!(g["reason"], "INC-1");
    assert_eq!(g["actor"], "admin");
    let created = time(&g["created_at"]);
    let expires = time(&g["expires_at"]);
    assert!(created + Duration::from_secs(1) >= before, "{g}");
    let length = expires.duration_since(created).unwrap();
    assert!(
        length.abs_diff(Duration::from_secs(1800)) < Duration::from_secs(1),
        "{g}"
    );

    // The grant is on record and admits its login.
    let created_ev = gw
        .wait_audit("grant.created", |e| e["grant_id"] == id.to_string())
        .await;
    assert_eq!(created_ev["actor"], "admin");
    assert_eq!(created_ev["principal"], "alice");
    assert_eq!(created_ev["reason"], "INC-1");
    let c = connect(&gw.pg_config("postgres")).await.unwrap();
    c.client.simple_query("SELECT 1").await.unwrap();

    // Explicit logins and sources are kept as given.
    let (status, g2) = gw
        .api(
            "POST",
            "/v1/grants",
            Some(ADMIN_TOKEN),
            Some(&json!({
                "principal": "bob", "resource": "api-201", "duration": "90s",
                "reason": "INC-2", "logins": ["root"], "sources": ["10.0.0.0/8", "192.168.1.7"]
            })),
        )
        .await;
    assert_eq!(status, 201, "{g2}");
    assert_eq!(g2["logins"], json!(["root"]));
    assert_eq!(g2["sources"], json!(["10.0.0.0/8", "192.168.1.7/32"]));
    let length = time(&g2["expires_at"])
        .duration_since(time(&g2["created_at"]))
        .unwrap();
    assert!(length.abs_diff(Duration::from_secs(90)) < Duration::from_secs(1));

    // GET shows the same objects.
    let (status, list) = gw.api("GET", "/v1/grants", Some(ADMIN_TOKEN), None).await;
    assert_eq!(status, 200);
    assert_eq!(list, json!([g, g2]));
}

#[tokio::test]
async fn grant_lists_show_an_admin_everything_and_a_requester_their_own() {
    let gw = start(Opts::new("api-list")).await;
    let a = gw.grant("alice", "postgres", Duration::from_secs(60));
    let b = gw.grant("bob", "root", Duration::from_secs(60));
    let ids = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap_or_else(|| panic!("not an array: {v}"))
            .iter()
            .map(|g| g["id"].as_str().unwrap().to_string())
            .collect()
    };

    let (status, all) = gw.api("GET", "/v1/grants", Some(ADMIN_TOKEN), None).await;
    assert_eq!(status, 200);
    assert_eq!(ids(&all), vec![a.id.to_string(), b.id.to_string()]);
    let (status, alices) = gw.api("GET", "/v1/grants", Some(ALICE_TOKEN), None).await;
    assert_eq!(status, 200);
    assert_eq!(ids(&alices), vec![a.id.to_string()]);
    let (_, bobs) = gw.api("GET", "/v1/grants", Some(BOB_TOKEN), None).await;
    assert_eq!(ids(&bobs), vec![b.id.to_string()]);
    for g in all.as_array().unwrap() {
        for field in [
            "id",
            "principal",
            "resource",
            "logins",
            "sources",
            "created_at",
            "expires_at",
            "reason",
            "actor",
        ] {
            assert!(g.get(field).is_some(), "{field} missing in {g}");
        }
    }

    // Empty lists are empty arrays.
    let (_, none) = gw.api("GET", "/v1/sessions", Some(ALICE_TOKEN), None).await;
    assert_eq!(none, json!([]));
}

#[tokio::test]
async fn sessions_list_has_the_documented_fields_and_respects_roles() {
    let gw = start(Opts::new("api-sessions")).await;
    let a = gw.grant("alice", "postgres", Duration::from_secs(60));
    gw.grant("bob", "root", Duration::from_secs(60));
    let alice = connect(&gw.pg_config("postgres")).await.unwrap();
    alice.client.simple_query("SELECT 1").await.unwrap();
    let bob = connect(&gw.pg_config("root")).await.unwrap();
    bob.client.simple_query("SELECT 1").await.unwrap();

    let (status, all) = gw.api("GET", "/v1/sessions", Some(ADMIN_TOKEN), None).await;
    assert_eq!(status, 200);
    assert_eq!(all.as_array().unwrap().len(), 2, "{all}");
    let (status, mine) = gw.api("GET", "/v1/sessions", Some(ALICE_TOKEN), None).await;
    assert_eq!(status, 200);
    let mine = mine.as_array().unwrap();
    assert_eq!(mine.len(), 1, "{mine:?}");
    let s = &mine[0];
    assert!(s["id"].as_str().unwrap().parse::<uuid::Uuid>().is_ok());
    assert_eq!(s["grant_id"], a.id.to_string());
    assert_eq!(s["principal"], "alice");
    assert_eq!(s["login"], "postgres");
    assert_eq!(s["resource"], "api-sessions");
    let client: SocketAddr = s["client_addr"].as_str().unwrap().parse().unwrap();
    assert!(client.ip().is_loopback(), "{s}");
    let started = time(&s["started_at"]);
    assert!(started <= SystemTime::now());
    // The deadline is the grant's (the session cap is 8 h).
    let deadline = time(&s["deadline"]);
    let grant_end = a.expires_at();
    let diff = deadline
        .duration_since(grant_end)
        .or_else(|_| grant_end.duration_since(deadline))
        .unwrap();
    assert!(diff < Duration::from_secs(1), "{s}");
    assert!(s["idle_ms"].as_u64().unwrap() < 60_000, "{s}");
    assert!(s["bytes_up"].as_u64().unwrap() > 0, "{s}");
    assert!(s["bytes_down"].as_u64().unwrap() > 0, "{s}");
    // The session the admin sees is the same object.
    assert!(all
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x["id"] == s["id"] && x["grant_id"] == s["grant_id"]));
}
