//! Shared harness for the integration tests: an in-process gateway on
//! ephemeral ports in front of the real PostgreSQL or MariaDB, plus small
//! clients for the admin API, the audit log and the metrics.
//!
//! PostgreSQL comes from `JITGATE_TEST_PG_ADDR` (default `127.0.0.1:5432`,
//! trust auth, users `postgres` and `root`, database `test`); MariaDB from
//! `JITGATE_TEST_MYSQL_ADDR` (default `127.0.0.1:3306`, `root` with an empty
//! password, database `test`). The MySQL helpers live in [`mysql`]. SSH and
//! TCP tests set `Opts.protocol` and a backend of their own: a real `sshd`
//! ([`sshd`]) or small in-process servers ([`net`]). [`process`] runs the
//! real binary as a child process.
#![allow(dead_code)]

pub mod mysql;
pub mod net;
pub mod pgraw;
pub mod pki;
pub mod process;
pub mod sshd;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jitgate::config::Config;
use jitgate::grants::{Grant, GrantKind, NewGrant};
use jitgate::server::Running;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Token of the `admin` user in every test config.
pub const ADMIN_TOKEN: &str = "test-admin-token";
/// Token of the `alice` user (requester) in every test config.
pub const ALICE_TOKEN: &str = "test-alice-token";

/// Token of the `carol` user (approver).
pub const CAROL_TOKEN: &str = "test-carol-token";
/// Token of the `dave` user (approver).
pub const DAVE_TOKEN: &str = "test-dave-token";

/// The real PostgreSQL the tests go through.
pub fn pg_backend() -> String {
    std::env::var("JITGATE_TEST_PG_ADDR").unwrap_or_else(|_| "127.0.0.1:5432".into())
}

fn sha(t: &str) -> String {
    jitgate::config::TokenHash::of_token(t).to_hex()
}

/// Knobs of a test gateway.
pub struct Opts {
    /// Resource name (unique per test, so metrics can be told apart).
    pub resource: String,
    /// `idle_timeout` of the resource.
    pub idle_timeout: &'static str,
    /// `max_session` of the resource.
    pub max_session: &'static str,
    /// `expiry_warnings`.
    pub warnings: &'static str,
    /// `handshake_timeout`.
    pub handshake_timeout: &'static str,
    /// Backend address.
    pub backend: String,
    /// `request_ttl`.
    pub request_ttl: &'static str,
    /// TOML appended to the config (policies, groups, notify sinks).
    pub extra: String,
    /// TOML placed right after the resource's keys (`[resource.tls]`, ...).
    pub resource_extra: String,
    /// `postgres` or `mysql`.
    pub protocol: &'static str,
    /// `[resource.kill_account]` (user, password), mysql only.
    pub kill_account: Option<(&'static str, &'static str)>,
    /// Extra lines for the `[gateway]` table.
    pub gateway_extra: String,
}

impl Opts {
    /// Defaults for a resource called `name`.
    pub fn new(name: &str) -> Opts {
        Opts {
            resource: name.to_string(),
            idle_timeout: "0s",
            max_session: "8h",
            warnings: "[]",
            handshake_timeout: "2s",
            backend: pg_backend(),
            request_ttl: "1h",
            extra: String::new(),
            resource_extra: String::new(),
            protocol: "postgres",
            kill_account: None,
            gateway_extra: String::new(),
        }
    }

    /// Defaults for a MariaDB resource called `name`, with the test kill
    /// account (see [`mysql::setup`]).
    pub fn mysql(name: &str) -> Opts {
        Opts {
            backend: mysql::backend(),
            protocol: "mysql",
            kill_account: Some((mysql::KILLER.0, mysql::KILLER.1)),
            ..Opts::new(name)
        }
    }

    /// Defaults for a resource called `name` of `protocol` in front of `backend`.
    pub fn with_backend(name: &str, protocol: &'static str, backend: SocketAddr) -> Opts {
        Opts {
            protocol,
            backend: backend.to_string(),
            ..Opts::new(name)
        }
    }
}

/// A gateway running inside the test process.
pub struct TestGateway {
    /// The running gateway.
    pub running: Running,
    /// Its state directory (audit log).
    pub dir: tempfile::TempDir,
    /// The resource name.
    pub resource: String,
}

/// The config text for `o`, with state in `dir`.
pub fn config_text(o: &Opts, dir: &std::path::Path) -> String {
    // Each user's logins on this protocol: alice has two on MySQL (to test a
    // COM_CHANGE_USER inside her grant), bob one she does not have.
    let (alice_logins, bob_logins) = if o.protocol == "mysql" {
        (r#"["jg_alice", "jg_alice_ro"]"#, r#"["jg_bob"]"#)
    } else {
        (r#"["postgres"]"#, r#"["root"]"#)
    };
    let kill = o
        .kill_account
        .map(|(u, p)| format!("\n[resource.kill_account]\nuser = \"{u}\"\npassword = \"{p}\"\n"))
        .unwrap_or_default();
    format!(
        r#"
[gateway]
state_dir = "{dir}"
admin_listen = "127.0.0.1:0"
handshake_timeout = "{hs}"
expiry_warnings = {warn}
request_ttl = "{ttl}"
{gateway_extra}

[[resource]]
name = "{name}"
protocol = "{protocol}"
listen = "127.0.0.1:0"
backend = "{backend}"
idle_timeout = "{idle}"
max_session = "{max}"
{resource_extra}

{kill}
[[user]]
name = "admin"
token_sha256 = "{admin}"
roles = ["admin"]

[[user]]
name = "alice"
token_sha256 = "{alice}"
roles = ["requester"]
logins = {alice_logins}

[[user]]
name = "bob"
token_sha256 = "{bob}"
roles = ["requester"]
logins = {bob_logins}

[[user]]
name = "carol"
token_sha256 = "{carol}"
roles = ["approver"]

[[user]]
name = "dave"
token_sha256 = "{dave}"
roles = ["approver"]
{extra}
"#,
        dir = dir.display(),
        hs = o.handshake_timeout,
        warn = o.warnings,
        name = o.resource,
        protocol = o.protocol,
        backend = o.backend,
        idle = o.idle_timeout,
        max = o.max_session,
        gateway_extra = o.gateway_extra,
        admin = sha(ADMIN_TOKEN),
        alice = sha(ALICE_TOKEN),
        bob = sha("test-bob-token"),
        carol = sha(CAROL_TOKEN),
        dave = sha(DAVE_TOKEN),
        ttl = o.request_ttl,
        extra = o.extra,
        resource_extra = o.resource_extra,
    )
}

/// Start a gateway for `o`.
pub async fn start(o: Opts) -> TestGateway {
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(&o, dir.path());
    let config: Config = jitgate::config::parse_str(&text, "test.toml").unwrap();
    let running = jitgate::server::start(config).await.unwrap();
    TestGateway {
        running,
        dir,
        resource: o.resource,
    }
}

impl TestGateway {
    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.running.resource_addr(&self.resource).unwrap()
    }

    /// A break-glass grant for `principal` with `login`, made directly
    /// (the API path is tested on its own).
    pub fn grant(&self, principal: &str, login: &str, dur: Duration) -> Arc<Grant> {
        self.running
            .gateway
            .create_grant(NewGrant {
                principal: principal.into(),
                resource: self.resource.clone(),
                logins: vec![login.into()],
                sources: vec![],
                duration: dur,
                reason: "test".into(),
                actor: "admin".into(),
                kind: GrantKind::BreakGlass,
            })
            .unwrap()
    }

    /// A break-glass grant for `principal` admitting clients from `sources`
    /// (CIDRs), for ssh/tcp resources.
    pub fn grant_sources(&self, principal: &str, sources: &[&str], dur: Duration) -> Arc<Grant> {
        self.running
            .gateway
            .create_grant(NewGrant {
                principal: principal.into(),
                resource: self.resource.clone(),
                logins: vec![],
                sources: sources
                    .iter()
                    .map(|s| s.parse::<jitgate::config::Cidr>().unwrap().0)
                    .collect(),
                duration: dur,
                reason: "test".into(),
                actor: "admin".into(),
                kind: GrantKind::BreakGlass,
            })
            .unwrap()
    }

    /// The admin API's base URL.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.running.admin_addr)
    }

    /// One admin API call; returns status and JSON body (Null if empty).
    pub async fn api(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> (u16, Value) {
        http(
            self.running.admin_addr,
            method,
            path,
            token,
            body.map(|b| b.to_string()).as_deref(),
        )
        .await
    }

    /// Every audit line so far.
    pub fn audit(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(self.dir.path().join("audit.jsonl")).unwrap_or_default();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Audit lines of one event kind.
    pub fn audit_events(&self, event: &str) -> Vec<Value> {
        self.audit()
            .into_iter()
            .filter(|e| e["event"] == event)
            .collect()
    }

    /// Wait (up to 5 s) until an audit event of `event` matching `pred` exists.
    pub async fn wait_audit(&self, event: &str, pred: impl Fn(&Value) -> bool) -> Value {
        for _ in 0..100 {
            if let Some(e) = self.audit_events(event).into_iter().find(|e| pred(e)) {
                return e;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no {event} audit event matched; log: {:#?}", self.audit());
    }

    /// The Prometheus text.
    pub fn metrics(&self) -> String {
        self.running.gateway.prometheus.as_ref().unwrap().render()
    }

    /// The value of one metric line whose name and labels contain all of `parts`.
    pub fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        self.metrics()
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| l.starts_with(name) && labels.iter().all(|p| l.contains(p)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// tokio-postgres config for `user` through the gateway.
    pub fn pg_config(&self, user: &str) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.host("127.0.0.1")
            .port(self.addr().port())
            .user(user)
            .dbname("test")
            .connect_timeout(Duration::from_secs(10));
        c
    }
}

/// A connected tokio-postgres client whose connection task forwards notices.
pub struct PgConn {
    /// The client.
    pub client: tokio_postgres::Client,
    /// Notices (NoticeResponse messages) in arrival order.
    pub notices: tokio::sync::mpsc::UnboundedReceiver<String>,
    /// Resolves with the connection's end (error text if it failed).
    pub conn: tokio::task::JoinHandle<Result<(), String>>,
}

/// Connect through a gateway with tokio-postgres, keeping notices.
pub async fn connect(config: &tokio_postgres::Config) -> Result<PgConn, tokio_postgres::Error> {
    let (client, mut connection) = config.connect(tokio_postgres::NoTls).await?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let conn = tokio::spawn(async move {
        use futures_util::StreamExt;
        let mut stream = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(m) = stream.next().await {
            match m {
                Ok(tokio_postgres::AsyncMessage::Notice(n)) => {
                    let _ = tx.send(n.message().to_string());
                }
                Ok(_) => {}
                Err(e) => {
                    return Err(format!(
                        "{e}: {}",
                        e.as_db_error().map(|d| d.message()).unwrap_or("")
                    ))
                }
            }
        }
        Ok(())
    });
    Ok(PgConn {
        client,
        notices: rx,
        conn,
    })
}

/// A direct connection to the real PostgreSQL (for pg_stat_activity checks).
pub async fn direct() -> tokio_postgres::Client {
    let addr: SocketAddr = pg_backend().parse().unwrap();
    let mut c = tokio_postgres::Config::new();
    c.host(addr.ip().to_string())
        .port(addr.port())
        .user("postgres")
        .dbname("test");
    let (client, conn) = c.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    client
}

/// Count backends on the real server *running* a query that contains
/// `marker` (`pg_stat_activity.query` keeps an idle backend's last query,
/// so only `state = 'active'` counts).
pub async fn running_queries(direct: &tokio_postgres::Client, marker: &str) -> i64 {
    let row = direct
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%' || $1 || '%' AND pid <> pg_backend_pid()",
            &[&marker],
        )
        .await
        .unwrap();
    row.get(0)
}

/// Count backends on the real server, in any state, whose current or last
/// query contains `marker`: 0 once their connections are gone.
pub async fn backends(direct: &tokio_postgres::Client, marker: &str) -> i64 {
    let row = direct
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%' || $1 || '%' AND pid <> pg_backend_pid()",
            &[&marker],
        )
        .await
        .unwrap();
    row.get(0)
}

/// A minimal HTTP/1.1 client (Connection: close), enough for the admin API.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, Value) {
    let (status, _, text) = http_text(addr, method, path, token, body).await;
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    (status, json)
}

/// Like [`http`], but returns the status, the lowercased response head and
/// the body as text (for `/metrics` and `/healthz`).
pub async fn http_text(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let body = body.unwrap_or("");
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).to_string();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    let rest = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    (status, head.to_ascii_lowercase(), rest)
}

fn dechunk(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&tail[..n]);
        rest = &tail[n + 2..];
    }
    out
}

/// Poll `cond` every 50 ms until it holds; panic with `what` after `limit`.
pub async fn wait_until<F, Fut>(what: &str, limit: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let begun = Instant::now();
    loop {
        if cond().await {
            return;
        }
        assert!(begun.elapsed() < limit, "timed out after {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Wait until the real server runs exactly `want` queries containing `marker`.
pub async fn wait_running(direct: &tokio_postgres::Client, marker: &str, want: i64) {
    wait_until(
        &format!("{want} backend(s) running {marker}"),
        Duration::from_secs(5),
        || async { running_queries(direct, marker).await == want },
    )
    .await;
}

/// Wait (at most `limit`) for a tokio-postgres connection task to end, i.e.
/// for the gateway to have closed the client socket. Returns how it ended:
/// `Err(text)` when the server sent an error outside any query (the text
/// then holds the message), `Ok(())` on a plain close.
pub async fn conn_end(
    conn: tokio::task::JoinHandle<Result<(), String>>,
    limit: Duration,
) -> Result<(), String> {
    tokio::time::timeout(limit, conn)
        .await
        .expect("the gateway did not close the client connection in time")
        .unwrap()
}

/// The SQLSTATE and message of a tokio-postgres error that came from the
/// server (panics on a broken socket or a client-side error).
pub fn db_error(e: &tokio_postgres::Error) -> (String, String) {
    let db = e
        .as_db_error()
        .unwrap_or_else(|| panic!("expected a server error, got: {e}"));
    (db.code().code().to_string(), db.message().to_string())
}
