//! A backend that fails mid-session: a reset, garbage that breaks the
//! protocol's framing, a stall. The faults are injected by a small proxy
//! placed between the gateway and the real PostgreSQL or MariaDB (a real
//! server cannot be made to misbehave on cue); the clients are the real
//! drivers. Each failure ends the session with reason `backend` and tells
//! the client why, in its protocol, when the stream is at a message
//! boundary; a stalled backend never stops a kill.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::mysql::*;
use common::net::{established, read_until_closed};
use common::pgraw::{query, read_until_ready, startup};
use common::*;
use mysql_async::prelude::Queryable;
use proxy_protocols::mysql::PacketFramer;
use proxy_protocols::postgres::MessageFramer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const LIMIT: Duration = Duration::from_secs(10);

/// What the proxy does to the backend → gateway stream.
#[derive(Debug, Clone)]
enum Action {
    /// Close the gateway's socket with a reset (SO_LINGER 0).
    Reset,
    /// Send these bytes instead of the backend's, then forward nothing more.
    Garbage(Vec<u8>),
    /// Stop forwarding in both directions and keep both sockets open.
    Stall,
}

/// Where the stream is cut before the action.
#[derive(Debug, Clone, Copy)]
enum Cut {
    /// Right after a complete message.
    AtBoundary,
    /// Inside a message.
    InsideMessage,
}

#[derive(Debug)]
enum Plan {
    /// Act now (between messages: nothing is being forwarded).
    Now(Action),
    /// Forward `bytes` more backend bytes, then cut and act.
    After {
        bytes: usize,
        cut: Cut,
        action: Action,
    },
}

/// The backend's framing, to find message boundaries.
enum Framer {
    Pg(MessageFramer),
    My(Box<PacketFramer>),
}

impl Framer {
    fn at_boundary(&self) -> bool {
        match self {
            Framer::Pg(f) => f.at_boundary(),
            Framer::My(f) => f.at_boundary(),
        }
    }

    /// Feed bytes; where the first message ended in them.
    fn feed(&mut self, b: &[u8]) -> Option<usize> {
        match self {
            Framer::Pg(f) => f.feed(b).unwrap().first_boundary,
            Framer::My(f) => f.feed(b, |_| {}).first,
        }
    }

    /// With the framer fed up to the start of `chunk`, where in `chunk`
    /// (at or after `from`) to cut; None if not in this chunk (then all of
    /// it has been fed).
    fn cut(&mut self, chunk: &[u8], from: usize, cut: Cut) -> Option<usize> {
        self.feed(&chunk[..from]);
        match cut {
            Cut::AtBoundary if self.at_boundary() => Some(from),
            Cut::AtBoundary => self.feed(&chunk[from..]).map(|f| from + f),
            Cut::InsideMessage if !self.at_boundary() => Some(from),
            // A header is longer than one byte.
            Cut::InsideMessage if from < chunk.len() => Some(from + 1),
            Cut::InsideMessage => None,
        }
    }
}

/// A proxy in front of a real server. The first connection it accepts
/// obeys the plans sent to it; later ones (cancel requests, KILL side
/// connections) are forwarded untouched.
struct FaultProxy {
    addr: SocketAddr,
    plans: mpsc::UnboundedSender<Plan>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultProxy {
    async fn start(backend: &str, mysql: bool) -> FaultProxy {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let backend: SocketAddr = backend.parse().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let mut rx = Some(rx);
            let mut conns = Vec::new();
            while let Ok((gw, _)) = l.accept().await {
                let framer = if mysql {
                    Framer::My(Box::new(PacketFramer::new(4)))
                } else {
                    Framer::Pg(MessageFramer::new())
                };
                // Tasks end with the proxy (aborted on drop).
                conns.push(AbortOnDrop(tokio::spawn(relay(
                    gw,
                    backend,
                    rx.take(),
                    framer,
                ))));
            }
        });
        FaultProxy {
            addr,
            plans: tx,
            task,
        }
    }

    fn plan(&self, p: Plan) {
        self.plans.send(p).unwrap();
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Wait until the peer has acknowledged every byte written to `s`.
async fn delivered(s: &TcpStream) {
    use std::os::fd::AsRawFd;
    let begun = std::time::Instant::now();
    loop {
        let mut queued: libc::c_int = 0;
        // SAFETY: TIOCOUTQ (SIOCOUTQ on a socket) writes one c_int to the
        // pointer, which points at a live c_int; the fd is open (s is borrowed).
        let r = unsafe { libc::ioctl(s.as_raw_fd(), libc::TIOCOUTQ, &mut queued) };
        assert_eq!(r, 0, "SIOCOUTQ: {}", std::io::Error::last_os_error());
        if queued == 0 {
            return;
        }
        assert!(
            begun.elapsed() < Duration::from_secs(10),
            "the gateway did not take {queued} forwarded bytes"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn relay(
    mut gw: TcpStream,
    backend: SocketAddr,
    mut plans: Option<mpsc::UnboundedReceiver<Plan>>,
    mut framer: Framer,
) {
    let Ok(mut be) = TcpStream::connect(backend).await else {
        return;
    };
    let (mut up, mut down) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
    // (bytes still to forward before the cut, the cut, the action)
    let mut armed: Option<(usize, Cut, Action)> = None;
    let action = loop {
        let next_plan = async {
            match plans.as_mut() {
                Some(rx) => rx.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            p = next_plan => match p {
                Some(Plan::Now(a)) => break (a, Vec::new()),
                Some(Plan::After { bytes, cut, action }) => armed = Some((bytes, cut, action)),
                None => plans = None,
            },
            r = gw.read(&mut up) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if be.write_all(&up[..n]).await.is_err() {
                        return;
                    }
                }
            },
            r = be.read(&mut down) => match r {
                Ok(0) | Err(_) => {
                    let _ = gw.shutdown().await;
                    return;
                }
                Ok(n) => {
                    let chunk = &down[..n];
                    let Some((left, cut, action)) = armed.as_mut() else {
                        framer.feed(chunk);
                        if gw.write_all(chunk).await.is_err() {
                            return;
                        }
                        continue;
                    };
                    let from = (*left).min(n);
                    *left -= from;
                    match framer.cut(chunk, from, *cut) {
                        Some(at) if *left == 0 => break (action.clone(), chunk[..at].to_vec()),
                        _ => {
                            if gw.write_all(chunk).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            },
        }
    };
    let (action, head) = action;
    if gw.write_all(&head).await.is_err() {
        return;
    }
    match action {
        Action::Reset => {
            // An abortive close discards what the send queue still holds
            // (the gateway's window may be full while it writes to a slow
            // client), which would move the cut: reset only once the
            // gateway's kernel has everything forwarded.
            delivered(&gw).await;
            gw.set_zero_linger().unwrap();
            drop(gw);
        }
        Action::Garbage(bytes) => {
            let _ = gw.write_all(&bytes).await;
            // Wait for the gateway to close its side.
            let mut sink = vec![0u8; 4096];
            while matches!(gw.read(&mut sink).await, Ok(n) if n > 0) {}
        }
        Action::Stall => {
            std::future::pending::<()>().await;
        }
    }
    drop(be);
}

/// A PostgreSQL gateway (resource `name`) whose backend is a fault proxy.
async fn pg_gateway(name: &str) -> (TestGateway, FaultProxy) {
    let proxy = FaultProxy::start(&pg_backend(), false).await;
    let mut o = Opts::new(name);
    o.backend = proxy.addr.to_string();
    let gw = start(o).await;
    gw.grant("alice", "postgres", Duration::from_secs(60));
    (gw, proxy)
}

/// The session ended with reason `backend`: audit and metric.
async fn ended_by_backend(gw: &TestGateway) {
    gw.wait_audit("session.ended", |e| e["outcome"] == "backend")
        .await;
    assert_eq!(
        gw.metric(
            "jitgate_sessions_closed_total",
            &[gw.resource.as_str(), "reason=\"backend\""]
        ),
        1.0
    );
}

fn names_the_backend(message: &str, resource: &str) {
    assert_eq!(
        message,
        format!("jitgate: lost the connection to the backend of {resource}; the session is closed")
    );
}

#[tokio::test]
async fn a_backend_reset_during_a_statement_is_a_fatal_08006_and_the_statement_is_cancelled() {
    let (gw, proxy) = pg_gateway("bf-pg-reset").await;
    let direct = direct().await;
    let c = connect(&gw.pg_config("postgres")).await.unwrap();
    let marker = "bf_pg_reset_sleep";
    let client = c.client;
    let query = tokio::spawn(async move {
        let r = client
            .simple_query(&format!("SELECT pg_sleep(30) /* {marker} */"))
            .await;
        (r, client)
    });
    wait_running(&direct, marker, 1).await;
    // Nothing is in flight from the backend: the stream is at a boundary.
    proxy.plan(Plan::Now(Action::Reset));
    let (r, client) = tokio::time::timeout(LIMIT, query).await.unwrap().unwrap();
    let (code, message) = db_error(&r.expect_err("the statement fails"));
    assert_eq!(code, "08006");
    names_the_backend(&message, "bf-pg-reset");
    conn_end(c.conn, LIMIT).await.ok();
    assert!(client.is_closed());
    ended_by_backend(&gw).await;
    // The statement was running when the session ended: it is cancelled
    // (the cancel request goes through the proxy as its own connection).
    wait_running(&direct, marker, 0).await;
}

#[tokio::test]
async fn a_reset_mid_result_at_a_boundary_delivers_the_rows_read_then_the_error() {
    let (gw, proxy) = pg_gateway("bf-pg-midrow").await;
    let c = connect(&gw.pg_config("postgres")).await.unwrap();
    c.client.simple_query("SELECT 1").await.unwrap();
    proxy.plan(Plan::After {
        bytes: 50_000,
        cut: Cut::AtBoundary,
        action: Action::Reset,
    });
    let e = c
        .client
        .simple_query("SELECT repeat('x', 100) FROM generate_series(1, 100000)")
        .await
        .expect_err("the result is cut");
    let (code, message) = db_error(&e);
    assert_eq!(code, "08006");
    names_the_backend(&message, "bf-pg-midrow");
    ended_by_backend(&gw).await;
}

#[tokio::test]
async fn a_reset_inside_a_message_closes_the_client_without_a_split_message() {
    let (gw, proxy) = pg_gateway("bf-pg-split").await;
    let c = connect(&gw.pg_config("postgres")).await.unwrap();
    c.client.simple_query("SELECT 1").await.unwrap();
    proxy.plan(Plan::After {
        bytes: 50_000,
        cut: Cut::InsideMessage,
        action: Action::Reset,
    });
    let e = c
        .client
        .simple_query("SELECT repeat('x', 100) FROM generate_series(1, 100000)")
        .await
        .expect_err("the result is cut");
    // Nothing may follow half a message: the client sees a closed socket,
    // not an error message spliced into a row.
    assert!(e.as_db_error().is_none(), "{e}");
    assert!(c.client.is_closed());
    ended_by_backend(&gw).await;
}

#[tokio::test]
async fn garbage_from_the_backend_ends_the_session_with_a_fatal_and_cancels_the_statement() {
    let (gw, proxy) = pg_gateway("bf-pg-garbage").await;
    let direct = direct().await;
    let c = connect(&gw.pg_config("postgres")).await.unwrap();
    let marker = "bf_pg_garbage_sleep";
    let client = c.client;
    let query = tokio::spawn(async move {
        client
            .simple_query(&format!("SELECT pg_sleep(30) /* {marker} */"))
            .await
    });
    wait_running(&direct, marker, 1).await;
    // A message whose length word is below 4: no framing can follow it.
    proxy.plan(Plan::Now(Action::Garbage(
        b"D\x00\x00\x00\x01junk".to_vec(),
    )));
    let r = tokio::time::timeout(LIMIT, query).await.unwrap().unwrap();
    let (code, message) = db_error(&r.expect_err("the statement fails"));
    assert_eq!(code, "08006");
    names_the_backend(&message, "bf-pg-garbage");
    ended_by_backend(&gw).await;
    wait_running(&direct, marker, 0).await;
}

#[tokio::test]
async fn a_kill_ends_a_session_whose_backend_stalls_and_whose_client_reads_nothing() {
    let (gw, proxy) = pg_gateway("bf-pg-stall").await;
    let mut s = TcpStream::connect(gw.addr()).await.unwrap();
    s.write_all(&startup("postgres")).await.unwrap();
    read_until_ready(&mut s).await;
    let id = gw.running.gateway.sessions.list()[0].id;
    // Some of the result (less than the client's socket buffer holds), then
    // the backend stops mid-message; the client reads nothing.
    proxy.plan(Plan::After {
        bytes: 20_000,
        cut: Cut::InsideMessage,
        action: Action::Stall,
    });
    s.write_all(&query(
        "SELECT repeat('x', 1000) FROM generate_series(1, 200000)",
    ))
    .await
    .unwrap();
    // Let the gateway pass those bytes on and wait on the stalled backend.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        established(proxy.addr.port()),
        2,
        "one gateway → proxy connection"
    );

    let begun = std::time::Instant::now();
    let (status, body) = gw
        .api(
            "DELETE",
            &format!("/v1/sessions/{id}"),
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    gw.wait_audit("session.ended", |e| e["outcome"] == "killed")
        .await;
    // The gateway gave up on the stalled backend and the full client
    // within its finish budget, and closed both sockets.
    assert!(
        begun.elapsed() < Duration::from_secs(5),
        "{:?}",
        begun.elapsed()
    );
    wait_until("gateway → proxy socket closed", LIMIT, || async {
        established(proxy.addr.port()) == 0
    })
    .await;
    // The client, once it reads, finds its stream ended.
    read_until_closed(&mut s, LIMIT).await;
    assert_eq!(gw.metric("jitgate_sessions_active", &["bf-pg-stall"]), 0.0);
}

#[tokio::test]
async fn mysql_a_backend_reset_during_a_statement_is_err_2013_and_the_statement_is_killed() {
    setup().await;
    let proxy = FaultProxy::start(&backend(), true).await;
    let mut o = Opts::mysql("bf-my-reset");
    o.backend = proxy.addr.to_string();
    let gw = start(o).await;
    gw.grant("alice", ALICE.0, Duration::from_secs(60));
    let mut direct = my_direct().await;
    let mut c = gw.my_connect(ALICE).await.unwrap();
    c.query_drop("SELECT 1").await.unwrap();
    let marker = unique_marker("bf_my_reset");
    let query = tokio::spawn(async move {
        let r = c
            .query_drop(format!("SELECT SLEEP(30) /* {marker} */"))
            .await;
        (r, c)
    });
    my_wait_running(&mut direct, marker, 1, LIMIT).await;
    proxy.plan(Plan::Now(Action::Reset));
    let (r, mut c) = tokio::time::timeout(LIMIT, query).await.unwrap().unwrap();
    let (code, state, message) = server_error(&r.expect_err("the statement fails"));
    assert_eq!((code, state.as_str()), (2013, "HY000"));
    names_the_backend(&message, "bf-my-reset");
    let next = c.query_drop("SELECT 1").await.expect_err("closed");
    assert!(is_closed_error(&next), "{next:?}");
    ended_by_backend(&gw).await;
    // The statement outlived its connection on the server: KILLed.
    my_wait_running(&mut direct, marker, 0, LIMIT).await;
}

#[tokio::test]
async fn tcp_a_backend_reset_closes_the_client() {
    // A backend that answers once, then resets.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).await.unwrap();
        s.write_all(b"world").await.unwrap();
        s.read_exact(&mut buf).await.unwrap();
        s.set_zero_linger().unwrap();
    });
    let gw = start(Opts::with_backend("bf-tcp-reset", "tcp", addr)).await;
    gw.grant_sources("alice", &["127.0.0.1/32"], Duration::from_secs(60));
    let mut c = TcpStream::connect(gw.addr()).await.unwrap();
    c.write_all(b"hello").await.unwrap();
    let mut got = [0u8; 5];
    c.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"world");
    c.write_all(b"again").await.unwrap();
    let (rest, _) = read_until_closed(&mut c, LIMIT).await;
    assert!(rest.is_empty(), "{rest:?}");
    ended_by_backend(&gw).await;
}
