//! The `jitgate` binary as operators use it: `check-config`, `token new`,
//! the client commands against an in-process gateway, and `psql` through
//! the gateway (admitted, denied, revoked mid-query, warned before expiry).

mod common;

use std::process::Output;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use tokio::process::Command;

const JITGATE: &str = env!("CARGO_BIN_EXE_jitgate");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The binary, run from the repository root with no client settings
/// inherited from the environment.
fn jitgate() -> Command {
    let mut c = Command::new(JITGATE);
    c.current_dir(ROOT)
        .env_remove("JITGATE_TOKEN")
        .env_remove("JITGATE_ADMIN_URL")
        .env_remove("RUST_LOG")
        .kill_on_drop(true);
    c
}

async fn run(c: &mut Command) -> Output {
    tokio::time::timeout(Duration::from_secs(30), c.output())
        .await
        .expect("jitgate finished")
        .unwrap()
}

/// A client command as the admin, against `gw`.
async fn admin(gw: &TestGateway, args: &[&str]) -> Output {
    let url = gw.admin_url();
    let out = run(jitgate()
        .args(["--admin-url", &url, "--token", ADMIN_TOKEN])
        .args(args))
    .await;
    assert!(
        out.status.success(),
        "jitgate {args:?} failed: {}",
        text(&out.stderr)
    );
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
    out
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(&out.stdout)))
}

/// A failed command: non-zero exit, nothing on stdout, exactly one line
/// on stderr, which is returned.
fn one_line_error(out: &Output) -> String {
    assert!(!out.status.success(), "must fail");
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "one line: {err:?}");
    assert!(err.starts_with("error: "), "{err:?}");
    err.trim_end().to_string()
}

/// `psql` against the gateway, with libpq settings from the environment
/// cleared so only the arguments count.
fn psql(gw: &TestGateway, args: &[&str]) -> Command {
    let mut c = Command::new("psql");
    for v in [
        "PGHOST",
        "PGHOSTADDR",
        "PGPORT",
        "PGUSER",
        "PGDATABASE",
        "PGPASSWORD",
        "PGPASSFILE",
        "PGSERVICE",
        "PGSERVICEFILE",
        "PGSSLMODE",
        "PGOPTIONS",
        "PGAPPNAME",
        "PGTARGETSESSIONATTRS",
        "PSQLRC",
    ] {
        c.env_remove(v);
    }
    // sslmode stays at libpq's default (prefer): jitgate answers 'N'.
    c.env("PGCONNECT_TIMEOUT", "5")
        .env("PGGSSENCMODE", "disable")
        .args(["-X", "-h", "127.0.0.1", "-p"])
        .arg(gw.addr().port().to_string())
        .args(["-U", "postgres", "-d", "test", "-v", "ON_ERROR_STOP=1"])
        .args(args)
        .kill_on_drop(true);
    c
}

#[tokio::test]
async fn check_config_accepts_the_example_and_a_minimal_file() {
    for file in ["config.example.toml", "tests/fixtures/valid-minimal.toml"] {
        let out = run(jitgate().args(["check-config", file])).await;
        assert!(out.status.success(), "{file}: {}", text(&out.stderr));
        assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
        assert!(
            text(&out.stdout).starts_with(&format!("{file}: ok")),
            "{}",
            text(&out.stdout)
        );
    }
}

#[tokio::test]
async fn check_config_reports_every_error_with_file_line_and_column() {
    let cases: [(&str, &[&str]); 3] = [
        (
            "tests/fixtures/invalid-unknown-key.toml",
            &["tests/fixtures/invalid-unknown-key.toml:11:1: unknown field `idle_timout`"],
        ),
        (
            "tests/fixtures/invalid-duplicate.toml",
            &[
                "tests/fixtures/invalid-duplicate.toml:9:8: duplicate resource name \"prod-pg\"",
                "tests/fixtures/invalid-duplicate.toml:19:8: duplicate user name \"alice\"",
                "tests/fixtures/invalid-duplicate.toml:20:16: user \"alice\" shares its token with another user",
            ],
        ),
        (
            "tests/fixtures/invalid-duration.toml",
            &["tests/fixtures/invalid-duration.toml:3:21: invalid duration \"ten seconds\""],
        ),
    ];
    for (file, expected) in cases {
        let out = run(jitgate().args(["check-config", file])).await;
        assert_eq!(out.status.code(), Some(1), "{file}");
        assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
        let err = text(&out.stderr);
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), expected.len(), "{file}:\n{err}");
        for (line, want) in lines.iter().zip(expected) {
            assert!(
                line.starts_with(want),
                "{line:?} should start with {want:?}"
            );
        }
    }
    // An unreadable file is one error line too.
    let out = run(jitgate().args(["check-config", "tests/fixtures/no-such-file.toml"])).await;
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("tests/fixtures/no-such-file.toml: cannot read"),
        "{err}"
    );
}

#[tokio::test]
async fn token_new_prints_a_token_and_the_matching_hash_line() {
    let out = run(jitgate().args(["token", "new", "alice"])).await;
    assert!(out.status.success());
    let stdout = text(&out.stdout);
    let token = stdout
        .lines()
        .find_map(|l| l.strip_prefix("token for alice: "))
        .unwrap_or_else(|| panic!("no token line in:\n{stdout}"))
        .to_string();
    let hash_line = stdout
        .lines()
        .find(|l| l.starts_with("token_sha256 = "))
        .unwrap_or_else(|| panic!("no hash line in:\n{stdout}"));
    let hash = hash_line
        .strip_prefix("token_sha256 = \"")
        .and_then(|h| h.strip_suffix('"'))
        .unwrap();
    assert_eq!(hash.len(), 64);
    assert!(hash
        .chars()
        .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    assert_eq!(hash, jitgate::config::TokenHash::of_token(&token).to_hex());
    // The hash line pastes into a config as-is.
    let config = format!("[[user]]\nname = \"alice\"\n{hash_line}\n");
    let parsed = jitgate::config::parse_str(&config, "pasted.toml").unwrap();
    assert!(parsed.users[0]
        .token_sha256
        .get_ref()
        .ct_eq(&jitgate::config::TokenHash::of_token(&token)));

    // Fresh every time; JSON for scripts.
    let again = run(jitgate().args(["token", "new", "alice", "--json"])).await;
    assert!(again.status.success());
    let v = json(&again);
    assert_eq!(v["name"], "alice");
    let token2 = v["token"].as_str().unwrap();
    assert_ne!(token2, token);
    assert_eq!(
        v["token_sha256"],
        jitgate::config::TokenHash::of_token(token2).to_hex()
    );
}

#[tokio::test]
async fn client_commands_grant_list_kill_and_revoke() {
    let gw = start(Opts::new("cli-ops")).await;
    let res = gw.resource.clone();

    let out = admin(
        &gw,
        &[
            "grant", "alice", &res, "--for", "5m", "--reason", "INC 7", "--json",
        ],
    )
    .await;
    let g = json(&out);
    let id = g["id"].as_str().unwrap().to_string();
    assert_eq!(g["principal"], "alice");
    assert_eq!(g["logins"], serde_json::json!(["postgres"]));
    assert_eq!(g["reason"], "INC 7");
    let out = admin(
        &gw,
        &[
            "grant", "bob", &res, "--for", "5m", "--login", "root", "--reason", "INC 8",
        ],
    )
    .await;
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with("granted "), "{stdout}");
    assert!(stdout.contains("PRINCIPAL"), "{stdout}");
    let bob_id = stdout
        .lines()
        .next()
        .unwrap()
        .strip_prefix("granted ")
        .unwrap()
        .to_string();

    // `grants`: a table for people, the API's array for scripts.
    let table = text(&admin(&gw, &["grants"]).await.stdout);
    assert!(table.lines().next().unwrap().starts_with("ID"), "{table}");
    assert!(table.contains(&id) && table.contains(&bob_id), "{table}");
    let listed = json(&admin(&gw, &["grants", "--json"]).await);
    let (_, api_list) = gw.api("GET", "/v1/grants", Some(ADMIN_TOKEN), None).await;
    assert_eq!(listed, api_list);
    assert_eq!(listed.as_array().unwrap().len(), 2);

    // `sessions`.
    let c = connect(&gw.pg_config("postgres")).await.unwrap();
    c.client.simple_query("SELECT 1").await.unwrap();
    let sessions = json(&admin(&gw, &["sessions", "--json"]).await);
    let sessions = sessions.as_array().unwrap();
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0]["grant_id"], id.as_str());
    assert_eq!(sessions[0]["principal"], "alice");
    let sid = sessions[0]["id"].as_str().unwrap().to_string();
    let table = text(&admin(&gw, &["sessions"]).await.stdout);
    assert!(table.contains(&sid) && table.contains("alice"), "{table}");

    // `kill`: answers after the socket is closed; the client saw why.
    let out = admin(&gw, &["kill", &sid, "--reason", "stop now"]).await;
    assert_eq!(
        text(&out.stdout).trim(),
        format!("killed session {sid}: 1 closed")
    );
    assert!(gw.running.gateway.sessions.is_empty());
    let end = conn_end(c.conn, Duration::from_secs(2))
        .await
        .expect_err("the killed client is told why");
    assert!(
        end.contains("jitgate: session on cli-ops was killed by admin: stop now"),
        "{end}"
    );

    // `revoke`: the grant's live session is closed before it answers.
    let c = connect(&gw.pg_config("postgres")).await.unwrap();
    c.client.simple_query("SELECT 1").await.unwrap();
    let out = admin(&gw, &["revoke", &id, "--reason", "INC 7 done"]).await;
    assert_eq!(
        text(&out.stdout).trim(),
        format!("revoked {id}: 1 session(s) closed")
    );
    let end = conn_end(c.conn, Duration::from_secs(2))
        .await
        .expect_err("the revoked client is told why");
    assert!(
        end.contains("jitgate: access to cli-ops was revoked by admin: INC 7 done"),
        "{end}"
    );
    let listed = json(&admin(&gw, &["grants", "--json"]).await);
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["id"], bob_id.as_str());

    // The admin URL and token also come from the environment.
    let out = run(jitgate()
        .env("JITGATE_ADMIN_URL", gw.admin_url())
        .env("JITGATE_TOKEN", ADMIN_TOKEN)
        .args(["revoke", &bob_id, "--json"]))
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(json(&out)["sessions_closed"], 0);
    assert_eq!(
        text(&admin(&gw, &["grants"]).await.stdout).trim(),
        "no active grants"
    );
}

#[tokio::test]
async fn client_command_errors_are_one_line_and_a_nonzero_exit() {
    let gw = start(Opts::new("cli-errors")).await;
    let url = gw.admin_url();
    let g = gw.grant("alice", "postgres", Duration::from_secs(60));
    let gid = g.id.to_string();
    let nobody = uuid::Uuid::now_v7().to_string();
    let api = |token: &'static str| {
        let mut c = jitgate();
        c.args(["--admin-url", &url, "--token", token]);
        c
    };

    let err = one_line_error(&run(api("wrong-token").arg("grants")).await);
    assert_eq!(err, "error: missing or invalid token (HTTP 401)");
    let err = one_line_error(&run(api(ADMIN_TOKEN).args(["revoke", &nobody])).await);
    assert_eq!(err, format!("error: no live grant {nobody} (HTTP 404)"));
    let err = one_line_error(&run(api(ALICE_TOKEN).args(["revoke", &gid])).await);
    assert!(err.ends_with("(HTTP 403)"), "{err}");
    let err = one_line_error(
        &run(api(ADMIN_TOKEN).args([
            "grant",
            "mallory",
            "cli-errors",
            "--for",
            "5m",
            "--reason",
            "x",
        ]))
        .await,
    );
    assert!(
        err.contains("mallory") && err.ends_with("(HTTP 400)"),
        "{err}"
    );
    let err = one_line_error(&run(api(ADMIN_TOKEN).args(["kill", "x;y"])).await);
    assert!(err.contains("is not a valid id"), "{err}");
    let err = one_line_error(&run(jitgate().args(["--admin-url", &url, "grants"])).await);
    assert!(err.contains("no API token"), "{err}");
    let err = one_line_error(
        &run(jitgate().args([
            "--admin-url",
            "http://127.0.0.1:1",
            "--token",
            ADMIN_TOKEN,
            "grants",
        ]))
        .await,
    );
    assert!(err.contains("cannot reach the admin API"), "{err}");

    // None of it changed anything.
    assert!(gw.running.gateway.grants.get(&g.id).is_some());
    assert_eq!(gw.running.gateway.grants.len(), 1);
}

#[tokio::test]
async fn psql_is_admitted_with_a_grant() {
    let gw = start(Opts::new("cli-psql-ok")).await;
    gw.grant("alice", "postgres", Duration::from_secs(60));
    let out = run(&mut psql(&gw, &["-A", "-t", "-c", "select 40 + 2"])).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "42");
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
    gw.wait_audit("session.ended", |e| e["outcome"] == "client")
        .await;
}

#[tokio::test]
async fn psql_is_denied_without_a_grant_with_the_reason_and_a_hint() {
    let gw = start(Opts::new("cli-psql-deny")).await;
    let out = run(&mut psql(&gw, &["-c", "select 1"])).await;
    assert_eq!(out.status.code(), Some(2), "psql's connection failure code");
    assert!(out.stdout.is_empty());
    let err = text(&out.stderr);
    assert!(
        err.contains(
            "FATAL:  jitgate: no active access grant for \"postgres\" on \"cli-psql-deny\""
        ),
        "{err}"
    );
    assert!(
        err.contains("HINT:  request access with: jitgate request cli-psql-deny --for 30m"),
        "{err}"
    );
    gw.wait_audit("session.denied", |e| e["login"] == "postgres")
        .await;
}

#[tokio::test]
async fn psql_mid_query_is_ended_by_a_cli_revoke() {
    let gw = start(Opts::new("cli-psql-revoke")).await;
    let direct = direct().await;
    let g = gw.grant("alice", "postgres", Duration::from_secs(60));
    let marker = "jitgate_cli_revoke_marker";
    let child = psql(&gw, &["-c", &format!("select pg_sleep(30) as {marker}")])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let psql_done = tokio::spawn(child.wait_with_output());
    wait_running(&direct, marker, 1).await;

    let begun = Instant::now();
    let out = admin(
        &gw,
        &["revoke", &g.id.to_string(), "--reason", "INC-9 closed"],
    )
    .await;
    assert_eq!(
        text(&out.stdout).trim(),
        format!("revoked {}: 1 session(s) closed", g.id)
    );
    let out = tokio::time::timeout(Duration::from_secs(5), psql_done)
        .await
        .expect("psql exits after the revoke")
        .unwrap()
        .unwrap();
    let took = begun.elapsed();
    assert!(took < Duration::from_secs(5), "psql ended after {took:?}");
    // psql's code for "the connection to the server went bad".
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains(
            "FATAL:  jitgate: access to cli-psql-revoke was revoked by admin: INC-9 closed"
        ),
        "{err}"
    );
    wait_running(&direct, marker, 0).await;
    let ended = gw
        .wait_audit("session.ended", |e| e["grant_id"] == g.id.to_string())
        .await;
    assert_eq!(ended["outcome"], "revoked");
}

#[tokio::test]
async fn psql_prints_the_expiry_warning() {
    let mut o = Opts::new("cli-psql-warn");
    // The warning falls inside the 3 s query, which ends well before the grant.
    o.warnings = r#"["4s"]"#;
    let gw = start(o).await;
    let g = gw.grant("alice", "postgres", Duration::from_secs(6));
    let out = run(&mut psql(
        &gw,
        &["-A", "-t", "-c", "select pg_sleep(3)", "-c", "select 1"],
    ))
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    let warning = err
        .lines()
        .find(|l| l.starts_with("WARNING:  jitgate: access to cli-psql-warn ends in "))
        .unwrap_or_else(|| panic!("no warning in psql's output:\n{err}"));
    assert!(
        warning.ends_with(&format!("extend with: jitgate extend {} --by 30m", g.id)),
        "{warning}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    // The session went on after the warning.
    assert_eq!(text(&out.stdout).trim(), "1");
}
