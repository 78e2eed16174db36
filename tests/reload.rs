//! Live reload, applied as a diff, each case with a live session through
//! the real PostgreSQL; and SIGHUP/SIGTERM on the real binary.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// Start a gateway whose config lives in a file, so `POST /v1/reload` can
/// read it again; returns the gateway and the file.
async fn start_with_file(o: Opts) -> (TestGateway, std::path::PathBuf) {
    let gw = start(o).await;
    let path = gw.dir.path().join("jitgate.toml");
    gw.running.gateway.listeners.set_path(path.clone());
    (gw, path)
}

fn write(path: &std::path::Path, gw: &TestGateway, o: &Opts, extra_resources: &str) {
    let text = config_text(o, gw.dir.path()) + extra_resources;
    std::fs::write(path, text).unwrap();
}

async fn reload(gw: &TestGateway) -> (u16, serde_json::Value) {
    gw.api("POST", "/v1/reload", Some(ADMIN_TOKEN), None).await
}

fn pg_at(port: u16) -> tokio_postgres::Config {
    let mut c = tokio_postgres::Config::new();
    c.host("127.0.0.1")
        .port(port)
        .user("postgres")
        .dbname("test");
    c
}

/// A reload that must end exactly one grant, whose session (`conn`) must
/// then be told: the text it was told.
async fn reload_ends_one(gw: &TestGateway, conn: PgConn) -> String {
    let (st, body) = reload(gw).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["grants_ended"], 1, "{body}");
    let end = tokio::time::timeout(Duration::from_secs(5), conn.conn)
        .await
        .expect("the session is cut")
        .unwrap();
    assert!(conn.client.is_closed());
    end.unwrap_err()
}

fn second_resource(name: &str, listen: &str) -> String {
    format!(
        "\n[[resource]]\nname = \"{name}\"\nprotocol = \"postgres\"\nlisten = \"{listen}\"\nbackend = \"{}\"\n",
        pg_backend()
    )
}

#[tokio::test]
async fn an_invalid_file_is_rejected_whole_and_sessions_go_on() {
    let o = Opts::new("rl-invalid");
    let (gw, path) = start_with_file(o).await;
    gw.grant("alice", "postgres", Duration::from_secs(60));
    let c = connect(&gw.pg_config("postgres")).await.unwrap();
    std::fs::write(&path, "[gateway]\nhandshake_timeuot = \"1s\"\n").unwrap();
    let (st, body) = reload(&gw).await;
    assert_eq!(st, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("jitgate.toml:2:1"),
        "{body}"
    );
    gw.wait_audit("config.rejected", |e| {
        e["reason"]
            .as_str()
            .unwrap_or("")
            .contains("handshake_timeuot")
    })
    .await;
    assert!(gw.metric("jitgate_config_reloads_total", &["error"]) >= 1.0);
    c.client
        .simple_query("SELECT 1")
        .await
        .expect("the session goes on");
    assert!(gw.running.gateway.config().resource("rl-invalid").is_some());
}

#[tokio::test]
async fn resources_are_added_removed_and_rebound_while_others_are_untouched() {
    let o = Opts::new("rl-keep");
    let (gw, path) = start_with_file(o).await;
    let o = Opts::new("rl-keep");
    let old_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    write(
        &path,
        &gw,
        &o,
        &second_resource("rl-gone", &format!("127.0.0.1:{old_port}")),
    );
    let (st, body) = reload(&gw).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["added"][0], "rl-gone");
    let gone_addr = gw.running.resource_addr("rl-gone").unwrap();

    // A grant and a live session on each resource.
    let keep = gw.grant("alice", "postgres", Duration::from_secs(60));
    let gone = gw
        .running
        .gateway
        .create_grant(jitgate::grants::NewGrant {
            principal: "alice".into(),
            resource: "rl-gone".into(),
            logins: vec!["postgres".into()],
            sources: vec![],
            duration: Duration::from_secs(60),
            reason: "t".into(),
            actor: "admin".into(),
            kind: jitgate::grants::GrantKind::BreakGlass,
        })
        .unwrap();
    let kept_session = connect(&gw.pg_config("postgres")).await.unwrap();
    let gone_session = connect(&pg_at(gone_addr.port())).await.unwrap();
    gone_session.client.simple_query("SELECT 1").await.unwrap();

    // Move rl-gone to another port: it rebinds.
    let new_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    write(
        &path,
        &gw,
        &o,
        &second_resource("rl-gone", &format!("127.0.0.1:{new_port}")),
    );
    let (st, body) = reload(&gw).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(
        gw.running.resource_addr("rl-gone").unwrap().port(),
        new_port
    );
    assert!(
        tokio::net::TcpStream::connect(gone_addr).await.is_err(),
        "old address closed"
    );
    connect(&pg_at(new_port))
        .await
        .expect("new address admits")
        .client
        .simple_query("SELECT 1")
        .await
        .unwrap();

    // Remove it: its session ends with the reason, its grant is gone.
    write(&path, &gw, &o, "");
    let (st, body) = reload(&gw).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["removed"][0], "rl-gone");
    let end = tokio::time::timeout(Duration::from_secs(3), gone_session.conn)
        .await
        .unwrap()
        .unwrap();
    let text = end.expect_err("cut by the reload");
    assert!(
        text.contains("ended by a configuration change: resource rl-gone was removed"),
        "{text}"
    );
    assert!(gw.running.gateway.grants.get(&gone.id).is_none());
    assert!(tokio::net::TcpStream::connect(("127.0.0.1", new_port))
        .await
        .is_err());
    gw.wait_audit("session.ended", |e| e["outcome"] == "config")
        .await;
    gw.wait_audit("config.reloaded", |_| true).await;

    // The untouched resource, its grant and its session go on.
    kept_session
        .client
        .simple_query("SELECT 1")
        .await
        .expect("untouched");
    assert!(gw.running.gateway.grants.get(&keep.id).is_some());
}

#[tokio::test]
async fn tighter_idle_timeout_and_session_cap_apply_to_live_sessions() {
    let o = Opts::new("rl-limits");
    let (gw, path) = start_with_file(o).await;
    gw.grant("alice", "postgres", Duration::from_secs(120));
    let idle = connect(&gw.pg_config("postgres")).await.unwrap();
    idle.client.simple_query("SELECT 1").await.unwrap();

    let mut o = Opts::new("rl-limits");
    o.idle_timeout = "1s";
    write(&path, &gw, &o, "");
    let t = Instant::now();
    let (st, body) = reload(&gw).await;
    assert_eq!(st, 200, "{body}");
    let end = tokio::time::timeout(Duration::from_secs(5), idle.conn)
        .await
        .expect("idle cut")
        .unwrap();
    assert!(end.unwrap_err().contains("idle for 1s"));
    assert!(idle.client.is_closed());
    assert!(t.elapsed() < Duration::from_secs(4));

    // A busy session under a lowered max_session.
    let mut o = Opts::new("rl-limits");
    o.idle_timeout = "0s";
    write(&path, &gw, &o, "");
    assert_eq!(reload(&gw).await.0, 200);
    let busy = connect(&gw.pg_config("postgres")).await.unwrap();
    busy.client.simple_query("SELECT 1").await.unwrap();
    o.max_session = "2s";
    write(&path, &gw, &o, "");
    assert_eq!(reload(&gw).await.0, 200);
    let err = busy
        .client
        .simple_query("SELECT pg_sleep(10)")
        .await
        .expect_err("capped");
    let (code, msg) = db_error(&err);
    assert_eq!(code, "57P01");
    assert!(msg.contains("session cap of 2s"), "{msg}");
}

#[tokio::test]
async fn removed_users_and_tightened_policies_end_or_shorten_grants() {
    let policy = |max: &str| {
        format!(
            "\n[[policy]]\nname = \"p\"\nprincipals = [\"alice\"]\nresources = [\"rl-policy\"]\nmax_duration = \"{max}\"\napprovals = 0\n"
        )
    };
    let mut o = Opts::new("rl-policy");
    o.extra = policy("1h");
    let (gw, path) = start_with_file(o).await;
    // bob's break-glass grant, and alice's auto-approved request grant.
    let bobs = gw.grant("bob", "root", Duration::from_secs(600));
    let (st, req) = gw
        .api(
            "POST",
            "/v1/requests",
            Some(ALICE_TOKEN),
            Some(&serde_json::json!({"resource": "rl-policy", "duration": "1h", "reason": "x"})),
        )
        .await;
    assert_eq!(st, 201, "{req}");
    let alice = connect(&gw.pg_config("postgres")).await.unwrap();
    let bob = connect(&gw.pg_config("root")).await.unwrap();

    // Remove bob, cut the policy to 3s.
    let mut o = Opts::new("rl-policy");
    o.extra = policy("3s");
    let text = config_text(&o, gw.dir.path());
    let bob_block = text.find("name = \"bob\"").unwrap();
    let start = text[..bob_block].rfind("[[user]]").unwrap();
    let end = text[bob_block..].find("[[user]]").unwrap() + bob_block;
    let without_bob = format!("{}{}", &text[..start], &text[end..]);
    std::fs::write(&path, without_bob).unwrap();
    let (st, body) = reload(&gw).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["grants_ended"], 1, "{body}");
    assert_eq!(body["grants_shortened"], 1, "{body}");

    let end = tokio::time::timeout(Duration::from_secs(3), bob.conn)
        .await
        .unwrap()
        .unwrap();
    assert!(end.unwrap_err().contains("user bob was removed"));
    assert!(gw.running.gateway.grants.get(&bobs.id).is_none());
    // alice's grant was made longer than 3s ago? No: it is cut to 3s from its creation.
    let end = tokio::time::timeout(Duration::from_secs(6), alice.conn)
        .await
        .expect("cut to the new max")
        .unwrap();
    assert!(end.unwrap_err().contains("expired"));
    assert!(alice.client.is_closed());
}

#[tokio::test]
async fn a_policy_that_no_longer_allows_a_login_ends_the_grants_that_carry_it() {
    let policy = |logins: &str| {
        format!(
            "\n[[policy]]\nname = \"p\"\nprincipals = [\"alice\"]\nresources = [\"rl-logins\"]\nmax_duration = \"1h\"\napprovals = 0\nlogins = {logins}\n"
        )
    };
    let opts = |logins: &str| {
        let mut o = Opts::new("rl-logins");
        o.extra = policy(logins);
        o
    };
    let (gw, path) = start_with_file(opts(r#"["postgres", "root"]"#)).await;
    let (st, req) = gw
        .api(
            "POST",
            "/v1/requests",
            Some(ALICE_TOKEN),
            Some(&serde_json::json!({"resource": "rl-logins", "duration": "1h", "reason": "x"})),
        )
        .await;
    assert_eq!(st, 201, "{req}");
    let grant_id = req["grant_id"].as_str().unwrap().to_string();
    let alice = connect(&gw.pg_config("postgres")).await.unwrap();

    // A policy that still allows her login keeps the grant and the session.
    write(&path, &gw, &opts(r#"["postgres"]"#), "");
    let (st, body) = reload(&gw).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["grants_ended"], 0, "{body}");
    alice.client.simple_query("SELECT 1").await.unwrap();

    // One that no longer does ends the grant, and the session is told.
    write(&path, &gw, &opts(r#"["root"]"#), "");
    let text = reload_ends_one(&gw, alice).await;
    assert!(
        text.contains("does not let alice use login \"postgres\" on rl-logins any more"),
        "{text}"
    );
    let revoked = gw
        .wait_audit("grant.revoked", |e| e["grant_id"] == grant_id.as_str())
        .await;
    assert_eq!(revoked["actor"], "config", "{revoked}");
    // And the login is refused from now on.
    assert!(connect(&gw.pg_config("postgres")).await.is_err());
}

#[tokio::test]
async fn sighup_reloads_and_sigterm_tells_clients_and_exits_zero() {
    let o = Opts::new("rl-signals");
    let mut gw = common::process::Process::start(&o, &[]).await;
    gw.grant("alice", "rl-signals").await;

    // SIGHUP: a second resource appears.
    let extra_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(
        &gw.config,
        gw.config_with(&second_resource(
            "rl-hup",
            &format!("127.0.0.1:{extra_port}"),
        )),
    )
    .unwrap();
    let pid = gw.pid().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    wait_until(
        "reloaded resource listening",
        Duration::from_secs(10),
        || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", extra_port))
                .await
                .is_ok()
        },
    )
    .await;

    // SIGTERM with a live session: the client is told, the process exits 0.
    let mut c = tokio_postgres::Config::new();
    c.host("127.0.0.1")
        .port(gw.listen.port())
        .user("postgres")
        .dbname("test");
    let conn = connect(&c).await.unwrap();
    conn.client.simple_query("SELECT 1").await.unwrap();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let end = tokio::time::timeout(Duration::from_secs(5), conn.conn)
        .await
        .unwrap()
        .unwrap();
    assert!(end.unwrap_err().contains("gateway is shutting down"));
    let status = tokio::time::timeout(Duration::from_secs(15), gw.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn a_connection_whose_listener_entry_is_gone_is_refused_not_served_plaintext() {
    // The window a reload opens when it removes or moves a resource: a
    // connection accepted by the old listener finds no entry for its TLS
    // policy. It must be refused, not served as if the resource had none.
    let gw = start(Opts::new("rl-ghost-home")).await;
    gw.grant("alice", "postgres", Duration::from_secs(60));
    let ghost_text = format!(
        "[gateway]\nstate_dir = \"{}\"\n[[resource]]\nname = \"rl-ghost\"\nprotocol = \"postgres\"\nlisten = \"127.0.0.1:0\"\nbackend = \"{}\"\n",
        gw.dir.path().display(),
        pg_backend()
    );
    let ghost_config = jitgate::config::parse_str(&ghost_text, "ghost.toml").unwrap();
    let ghost = std::sync::Arc::new(ghost_config.resource("rl-ghost").unwrap().clone());
    for protocol in ["postgres", "mysql"] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, peer) = listener.accept().await.unwrap();
        let handler = match protocol {
            "postgres" => tokio::spawn(jitgate::postgres::handle(
                gw.running.gateway.clone(),
                ghost.clone(),
                server,
                peer,
            )),
            _ => tokio::spawn(jitgate::mysql::handle(
                gw.running.gateway.clone(),
                ghost.clone(),
                server,
                peer,
            )),
        };
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        if protocol == "postgres" {
            // An SSLRequest: a resource without TLS would answer 'N'.
            client
                .write_all(&[0, 0, 0, 8, 4, 210, 22, 47])
                .await
                .unwrap();
        }
        let mut got = Vec::new();
        // Closed (a reset when the request was left unread), not answered.
        let read = tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut got))
            .await
            .expect("closed at once");
        if let Err(e) = read {
            assert_eq!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset,
                "{protocol}: {e}"
            );
        }
        assert!(
            got.is_empty(),
            "{protocol}: not a byte for the client: {got:?}"
        );
        tokio::time::timeout(Duration::from_secs(5), handler)
            .await
            .unwrap()
            .unwrap();
    }
    assert_eq!(
        gw.metric(
            "jitgate_connections_total",
            &["resource=\"rl-ghost\"", "outcome=\"error\""]
        ),
        2.0
    );
}

#[tokio::test]
async fn a_login_taken_from_a_user_ends_their_break_glass_grants_too() {
    let (gw, path) = start_with_file(Opts::new("rl-moved")).await;
    let g = gw.grant("alice", "postgres", Duration::from_secs(600));
    let alice = connect(&gw.pg_config("postgres")).await.unwrap();
    // The login moves from alice to bob: alice's grant must not let bob in
    // as "postgres", recorded as alice.
    let text = config_text(&Opts::new("rl-moved"), gw.dir.path())
        .replacen(r#"logins = ["postgres"]"#, r#"logins = ["alice_ro"]"#, 1)
        .replacen(
            r#"logins = ["root"]"#,
            r#"logins = ["root", "postgres"]"#,
            1,
        );
    std::fs::write(&path, text).unwrap();
    let text = reload_ends_one(&gw, alice).await;
    assert!(
        text.contains("login \"postgres\" is no longer one of alice's logins"),
        "{text}"
    );
    assert!(gw.running.gateway.grants.get(&g.id).is_none());
}
