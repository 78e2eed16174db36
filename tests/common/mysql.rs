//! MySQL helpers for the integration tests: the test accounts on the real
//! MariaDB, mysql_async clients through a gateway or direct, the `mysql`
//! CLI, and PROCESSLIST checks.

use std::net::SocketAddr;
use std::process::Output;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, OptsBuilder};
use tokio::sync::OnceCell;

use super::TestGateway;

/// alice's login (mysql_native_password).
pub const ALICE: (&str, &str) = ("jg_alice", "alice-pw");
/// alice's second login, in the same grant as [`ALICE`].
pub const ALICE_RO: (&str, &str) = ("jg_alice_ro", "alice-ro-pw");
/// bob's login: alice's grant does not admit it.
pub const BOB: (&str, &str) = ("jg_bob", "bob-pw");
/// The kill account (`CONNECTION ADMIN`) the test gateways use.
pub const KILLER: (&str, &str) = ("jg_killer", "killer-pw");

/// Room for the 20 MB result test (the server's default is 16 MiB).
const MAX_ALLOWED_PACKET: u64 = 64 << 20;

/// The real MariaDB the tests go through.
pub fn backend() -> String {
    std::env::var("JITGATE_TEST_MYSQL_ADDR").unwrap_or_else(|_| "127.0.0.1:3306".into())
}

fn backend_addr() -> SocketAddr {
    backend()
        .parse()
        .expect("JITGATE_TEST_MYSQL_ADDR must be ip:port")
}

static SETUP: OnceCell<()> = OnceCell::const_new();

/// Create the test accounts and raise `max_allowed_packet`, once per test
/// process; idempotent across processes and runs.
pub async fn setup() {
    SETUP
        .get_or_init(|| async {
            let mut c = my_direct().await;
            for (user, pass) in [ALICE, ALICE_RO, BOB, KILLER] {
                c.query_drop(format!(
                    "CREATE USER IF NOT EXISTS '{user}'@'%' IDENTIFIED VIA mysql_native_password USING PASSWORD('{pass}')"
                ))
                .await
                .unwrap();
                c.query_drop(format!(
                    "ALTER USER '{user}'@'%' IDENTIFIED VIA mysql_native_password USING PASSWORD('{pass}')"
                ))
                .await
                .unwrap();
            }
            for (user, _) in [ALICE, ALICE_RO, BOB] {
                c.query_drop(format!("GRANT ALL ON test.* TO '{user}'@'%'"))
                    .await
                    .unwrap();
            }
            // MariaDB >= 10.5 splits the right to kill others' threads out
            // of SUPER; older servers only know SUPER.
            if c
                .query_drop(format!("GRANT CONNECTION ADMIN ON *.* TO '{}'@'%'", KILLER.0))
                .await
                .is_err()
            {
                c.query_drop(format!("GRANT SUPER ON *.* TO '{}'@'%'", KILLER.0))
                    .await
                    .unwrap();
            }
            let current: u64 = c
                .query_first("SELECT @@GLOBAL.max_allowed_packet")
                .await
                .unwrap()
                .unwrap();
            if current < MAX_ALLOWED_PACKET {
                c.query_drop(format!("SET GLOBAL max_allowed_packet = {MAX_ALLOWED_PACKET}"))
                    .await
                    .unwrap();
            }
            c.disconnect().await.unwrap();
        })
        .await;
}

/// A direct root connection to the real server.
pub async fn my_direct() -> Conn {
    let addr = backend_addr();
    let opts = OptsBuilder::default()
        .ip_or_hostname(addr.ip().to_string())
        .tcp_port(addr.port())
        .user(Some("root"))
        .db_name(Some("test"))
        .prefer_socket(false);
    Conn::new(opts).await.unwrap()
}

impl TestGateway {
    /// mysql_async options for `(user, password)` through the gateway.
    pub fn my_opts(&self, login: (&str, &str)) -> Opts {
        OptsBuilder::default()
            .ip_or_hostname("127.0.0.1")
            .tcp_port(self.addr().port())
            .user(Some(login.0))
            .pass(Some(login.1))
            .db_name(Some("test"))
            // Never let the driver reconnect through the server's own
            // socket, around the gateway.
            .prefer_socket(false)
            .into()
    }

    /// Connect with mysql_async through the gateway.
    pub async fn my_connect(&self, login: (&str, &str)) -> mysql_async::Result<Conn> {
        tokio::time::timeout(Duration::from_secs(10), Conn::new(self.my_opts(login)))
            .await
            .expect("connect did not finish in time")
    }

    /// Run the `mysql` CLI through the gateway: `-e sql`, no reconnect,
    /// batch output. Panics unless it exits within `limit`.
    pub async fn cli(&self, login: (&str, &str), sql: &str, limit: Duration) -> Output {
        cli_at(self.addr(), login, sql, limit).await
    }
}

/// Run the `mysql` CLI against `addr` (see [`TestGateway::cli`]).
pub async fn cli_at(addr: SocketAddr, login: (&str, &str), sql: &str, limit: Duration) -> Output {
    let child = tokio::process::Command::new("mysql")
        .args([
            "--protocol=TCP",
            "-h",
            &addr.ip().to_string(),
            "-P",
            &addr.port().to_string(),
            "-u",
            login.0,
            &format!("-p{}", login.1),
            "--skip-reconnect",
            "--batch",
            "--skip-column-names",
            "test",
            "-e",
            sql,
        ])
        .kill_on_drop(true)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the mysql CLI is installed");
    tokio::time::timeout(limit, child.wait_with_output())
        .await
        .expect("the mysql CLI did not exit in time")
        .unwrap()
}

/// The server error of a mysql_async result: (code, SQLSTATE, message).
/// Panics on any other kind of error (a broken socket, a driver error).
pub fn server_error(e: &mysql_async::Error) -> (u16, String, String) {
    match e {
        mysql_async::Error::Server(s) => (s.code, s.state.clone(), s.message.clone()),
        other => panic!("expected a server error, got: {other:?}"),
    }
}

/// Whether a mysql_async error says the connection is gone (not a server
/// error): what the next command on a closed socket gets.
pub fn is_closed_error(e: &mysql_async::Error) -> bool {
    matches!(e, mysql_async::Error::Io(_) | mysql_async::Error::Driver(_))
}

/// Threads on the real server, other than the caller's, whose statement
/// contains `marker`.
pub async fn my_running(direct: &mut Conn, marker: &str) -> u64 {
    direct
        .exec_first(
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO LIKE CONCAT('%', ?, '%') AND ID <> CONNECTION_ID()",
            (marker,),
        )
        .await
        .unwrap()
        .unwrap()
}

/// Wait until the real server runs exactly `want` statements containing
/// `marker`, at most `limit`.
pub async fn my_wait_running(direct: &mut Conn, marker: &str, want: u64, limit: Duration) {
    let begun = std::time::Instant::now();
    loop {
        let n = my_running(direct, marker).await;
        if n == want {
            return;
        }
        assert!(
            begun.elapsed() < limit,
            "{n} statement(s) with {marker} on the server after {limit:?}, expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A TCP listener standing in for a backend: counts the connections it
/// accepts (and closes them). For "nothing reached the backend" checks.
pub struct CountingBackend {
    /// Its address.
    pub addr: SocketAddr,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl CountingBackend {
    /// Listen on an ephemeral loopback port.
    pub async fn start() -> CountingBackend {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let n = accepted.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                drop(s);
            }
        });
        CountingBackend { addr, accepted }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A statement marker unique to this run, so a statement left over by an
/// earlier run can never be mistaken for this one's.
/// (Leaked: a test makes a handful, and spawned queries can hold them.)
pub fn unique_marker(name: &str) -> &'static str {
    Box::leak(format!("{name}_{:08x}", rand::random::<u32>()).into_boxed_str())
}
