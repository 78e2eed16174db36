//! Scale benchmark of the real `jitgate` binary: idle sessions, revocation
//! and expiry with thousands of live sessions.
//!
//! ```text
//! cargo bench --bench scale                    # N = 9500 sessions
//! SCALE_SMOKE=1 cargo bench --bench scale      # N = 200, 50 revocations (CI)
//! SCALE_SESSIONS=5000 cargo bench --bench scale
//! ```
//!
//! The bench writes a config with three `tcp` resources to a temporary
//! directory, all in front of one backend listener inside this process
//! (it accepts, counts and echoes), and starts the release binary
//! (`CARGO_BIN_EXE_jitgate`: cargo builds it for the bench). A tcp client
//! is identified by its source address, and all of 127.0.0.0/8 is loopback,
//! so client `i` binds 127.1.x.y before connecting and gets its own /32
//! grant through the admin API. Phases:
//!
//! 1. idle scale (resource `scale-idle`): N /32 grants, then N idle
//!    sessions; RSS per session = (VmRSS after − before) / N, and how fast
//!    they open (until the backend has accepted all N);
//! 2. revocation: with those sessions live, revoke R of their grants one at
//!    a time (`DELETE /v1/grants/{id}`): time from just before the request
//!    to that client's read returning end of stream; then one 127.0.0.0/8
//!    grant on `scale-wide` holding N sessions, revoked: time until the last
//!    client sees the end; then a grant on `scale-wide` whose deadline
//!    passes with N sessions on it: close time − its `expires_at`, as each
//!    client observes it;
//! 3. expiry (`scale-expiry`): N /32 grants whose deadlines are spread over
//!    a few seconds; client-observed close time − the grant's `expires_at`.
//!
//! Server-side figures come from the `jitgate_enforcement_lag_seconds`
//! histogram (its bucket bounds) in `/metrics`, diffed around each phase.
//!
//! File descriptors: this process holds N client and N backend sockets,
//! jitgate 2N; both need 2N + a margin under the soft limit, raised here to
//! the hard one (children inherit it). With a hard limit of 20,000, N is at
//! most about 9,900; the default is 9,500.
//!
//! Results: a table on stdout and flat JSON at `$SCALE_JSON`
//! (default `target/bench-results/scale-<unix-seconds>.json`).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, ensure, Context, Result};
use bytes::Bytes;
use futures_util::stream::{self, StreamExt, TryStreamExt};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::process::{Child, Command};

/// Default number of sessions: 2N sockets per process must fit under the
/// machine's hard limit of 20,000 descriptors.
const DEFAULT_SESSIONS: usize = 9500;
/// Descriptors kept aside for listeners, files, API connections, stdio.
const FD_MARGIN: u64 = 200;
/// Sessions opening at once: connected, not yet through to the backend.
/// Kept under jitgate's listen backlog (128, the std default): a burst over
/// it overflows the accept queue, SYNs are dropped and retried a second
/// later, and a client whose final ACK was dropped believes it is connected
/// while jitgate never sees it.
const OPEN_WINDOW: usize = 64;
/// An admin API connection idle for longer than this is replaced before
/// its next request: half jitgate's default `admin_request_timeout`.
const API_IDLE_REUSE: Duration = Duration::from_secs(5);
/// Concurrent admin API connections while creating grants.
const API_CONCURRENCY: usize = 16;
const RES_IDLE: &str = "scale-idle";
const RES_WIDE: &str = "scale-wide";
const RES_EXPIRY: &str = "scale-expiry";

struct Settings {
    sessions: usize,
    revokes: usize,
    smoke: bool,
    /// Deadlines of phase 3 are spread over this long.
    spread: Duration,
    json_path: PathBuf,
}

impl Settings {
    fn from_env() -> Result<Settings> {
        let smoke = std::env::var("SCALE_SMOKE").is_ok_and(|v| !v.is_empty() && v != "0");
        let sessions = match std::env::var("SCALE_SESSIONS") {
            Ok(v) => v
                .parse()
                .with_context(|| format!("SCALE_SESSIONS={v:?} is not a number"))?,
            Err(_) if smoke => 200,
            Err(_) => DEFAULT_SESSIONS,
        };
        ensure!(sessions > 0, "SCALE_SESSIONS must be at least 1");
        let revokes = if smoke { 50 } else { 1000 }.min(sessions);
        let json_path = match std::env::var("SCALE_JSON") {
            Ok(p) if !p.is_empty() => PathBuf::from(p),
            _ => {
                let ts = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("target/bench-results")
                    .join(format!("scale-{ts}.json"))
            }
        };
        Ok(Settings {
            sessions,
            revokes,
            smoke,
            spread: Duration::from_secs(if smoke { 1 } else { 3 }),
            json_path,
        })
    }
}

/// Raise the soft descriptor limit to the hard one; returns the new soft limit.
fn raise_fd_limit() -> Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            bail!("getrlimit: {}", std::io::Error::last_os_error());
        }
        lim.rlim_cur = lim.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
            bail!("setrlimit: {}", std::io::Error::last_os_error());
        }
    }
    Ok(lim.rlim_cur)
}

// ---------------------------------------------------------------- backend

/// The backend every resource points at: accepts, counts, holds and echoes.
struct Backend {
    addr: SocketAddr,
    accepted: AtomicUsize,
    open: AtomicUsize,
    /// Sockets whose end has been seen, closed only by `release` between
    /// measurements (see `release`).
    ended: std::sync::Mutex<Vec<TcpStream>>,
}

impl Backend {
    /// Close the sockets held since their end was seen. The benchmark shares
    /// the cores with jitgate: closing 9,500 sockets inside a measured
    /// window would time the benchmark's own teardown too.
    fn release(&self) {
        self.ended.lock().unwrap().clear();
    }
}

async fn start_backend() -> Result<Arc<Backend>> {
    let sock = TcpSocket::new_v4()?;
    sock.bind("127.0.0.1:0".parse()?)?;
    let listener = sock.listen(4096)?;
    let be = Arc::new(Backend {
        addr: listener.local_addr()?,
        accepted: AtomicUsize::new(0),
        open: AtomicUsize::new(0),
        ended: std::sync::Mutex::new(Vec::new()),
    });
    let b = be.clone();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    eprintln!("backend accept: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            b.open.fetch_add(1, Ordering::SeqCst);
            b.accepted.fetch_add(1, Ordering::SeqCst);
            let b = b.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 256];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                b.ended.lock().unwrap().push(s);
                b.open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    Ok(be)
}

// ---------------------------------------------------------------- jitgate

struct Jitgate {
    child: Child,
    admin: SocketAddr,
    ports: BTreeMap<&'static str, SocketAddr>,
    token: String,
    _dir: tempfile::TempDir,
}

fn free_port() -> Result<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?)
}

async fn start_jitgate(backend: SocketAddr) -> Result<Jitgate> {
    // SCALE_STATE_DIR=/dev/shm puts the journal on tmpfs, where fdatasync
    // costs nothing: a comparison that shows what the disk adds.
    let dir = match std::env::var("SCALE_STATE_DIR") {
        Ok(d) if !d.is_empty() => tempfile::tempdir_in(d)?,
        _ => tempfile::tempdir()?,
    };
    let token = format!("scale-bench-{:016x}", rand::random::<u64>());
    let hash = hex::encode(Sha256::digest(token.as_bytes()));
    let admin = free_port()?;
    let mut ports = BTreeMap::new();
    let mut resources = String::new();
    for name in [RES_IDLE, RES_WIDE, RES_EXPIRY] {
        let listen = free_port()?;
        ports.insert(name, listen);
        resources.push_str(&format!(
            "\n[[resource]]\nname = \"{name}\"\nprotocol = \"tcp\"\nlisten = \"{listen}\"\n\
             backend = \"{backend}\"\nidle_timeout = \"0s\"\nmax_session = \"24h\"\n"
        ));
    }
    let config = format!(
        "[gateway]\nstate_dir = \"{}\"\nadmin_listen = \"{admin}\"\n\
         max_connections = 0\nmax_handshakes = 0\nhandshake_rate = 0\nwatch_interval = \"0s\"\n\
         {resources}\n[[user]]\nname = \"admin\"\ntoken_sha256 = \"{hash}\"\nroles = [\"admin\"]\n",
        dir.path().join("data").display()
    );
    let config_path = dir.path().join("jitgate.toml");
    std::fs::write(&config_path, config)?;
    let log = std::fs::File::create(dir.path().join("jitgate.log"))?;
    let child = Command::new(env!("CARGO_BIN_EXE_jitgate"))
        .arg("serve")
        .arg("--config")
        .arg(&config_path)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .context("starting jitgate")?;
    let mut jg = Jitgate {
        child,
        admin,
        ports,
        token,
        _dir: dir,
    };
    let started = Instant::now();
    loop {
        if let Some(st) = jg.child.try_wait()? {
            let log = std::fs::read_to_string(jg._dir.path().join("jitgate.log"))?;
            bail!("jitgate exited at start ({st}):\n{log}");
        }
        if let Ok(mut c) = ApiConn::open(admin, &jg.token).await {
            if let Ok((200, _)) = c.raw("GET", "/healthz", None).await {
                break;
            }
        }
        ensure!(
            started.elapsed() < Duration::from_secs(20),
            "jitgate did not answer /healthz"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(jg)
}

impl Jitgate {
    fn pid(&self) -> Result<u32> {
        self.child.id().ok_or_else(|| anyhow!("jitgate has exited"))
    }

    /// Resident set size in KiB (`VmRSS` of /proc/PID/status).
    fn rss_kib(&self) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?))?;
        let line = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .ok_or_else(|| anyhow!("no VmRSS"))?;
        Ok(line
            .split_whitespace()
            .nth(1)
            .ok_or_else(|| anyhow!("bad VmRSS line {line:?}"))?
            .parse()?)
    }
}

// ---------------------------------------------------------------- admin API

/// One keep-alive HTTP/1.1 connection to the admin API.
struct ApiConn {
    tx: SendRequest<Full<Bytes>>,
    addr: SocketAddr,
    token: String,
    /// When the last answer arrived (see `raw`).
    last_used: Instant,
}

impl ApiConn {
    async fn open(addr: SocketAddr, token: &str) -> Result<ApiConn> {
        Ok(ApiConn {
            tx: Self::connect(addr).await?,
            addr,
            token: token.to_string(),
            last_used: Instant::now(),
        })
    }

    async fn connect(addr: SocketAddr) -> Result<SendRequest<Full<Bytes>>> {
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(tx)
    }

    async fn raw(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Bytes)> {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "jitgate")
            .header("authorization", format!("Bearer {}", self.token))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))?;
        // jitgate closes a keep-alive connection idle for
        // admin_request_timeout (10 s), which the expiry phase can exceed.
        // A connection idle for half that is replaced before it is used: a
        // request sent as the server's close is under way would fail
        // ("connection error"), and retrying a DELETE is not safe.
        if self.last_used.elapsed() > API_IDLE_REUSE
            || self.tx.is_closed()
            || self.tx.ready().await.is_err()
        {
            self.tx = Self::connect(self.addr).await?;
            self.tx.ready().await?;
        }
        let resp = self.tx.send_request(req).await?;
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await?.to_bytes();
        self.last_used = Instant::now();
        Ok((status, bytes))
    }

    async fn json(&mut self, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        let (st, bytes) = self.raw(method, path, body).await?;
        ensure!(
            (200..300).contains(&st),
            "{method} {path}: {st} {}",
            String::from_utf8_lossy(&bytes)
        );
        Ok(serde_json::from_slice(&bytes)?)
    }

    async fn metrics(&mut self) -> Result<Metrics> {
        let (st, bytes) = self.raw("GET", "/metrics", None).await?;
        ensure!(st == 200, "GET /metrics: {st}");
        Ok(Metrics::parse(&String::from_utf8_lossy(&bytes)))
    }
}

/// A grant to create: a resource, its source CIDR and how long.
struct GrantSpec {
    resource: &'static str,
    source: String,
    duration: Duration,
}

/// A created grant: its id and its deadline as the API reported it.
#[derive(Clone)]
struct Created {
    id: String,
    expires_at: SystemTime,
}

/// Create `specs` through `API_CONCURRENCY` connections; results in order.
async fn create_grants(jg: &Jitgate, specs: Vec<GrantSpec>) -> Result<Vec<Created>> {
    let specs = Arc::new(specs);
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..API_CONCURRENCY.min(specs.len()) {
        let mut api = ApiConn::open(jg.admin, &jg.token).await?;
        let (specs, next) = (specs.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(s) = specs.get(i) else {
                    return Ok::<_, anyhow::Error>(out);
                };
                let body = json!({
                    "principal": "admin",
                    "resource": s.resource,
                    "duration": format!("{}ms", s.duration.as_millis()),
                    "sources": [s.source],
                    "reason": "scale benchmark",
                });
                let v = api.json("POST", "/v1/grants", Some(&body)).await?;
                let id = v["id"]
                    .as_str()
                    .ok_or_else(|| anyhow!("no id in {v}"))?
                    .to_string();
                let exp = v["expires_at"]
                    .as_str()
                    .ok_or_else(|| anyhow!("no expires_at in {v}"))?;
                let expires_at =
                    humantime::parse_rfc3339(exp).with_context(|| format!("expires_at {exp:?}"))?;
                out.push((i, Created { id, expires_at }));
            }
        }));
    }
    let mut all = Vec::with_capacity(specs.len());
    for w in workers {
        all.extend(w.await??);
    }
    all.sort_by_key(|(i, _)| *i);
    ensure!(all.len() == specs.len(), "lost grants");
    Ok(all.into_iter().map(|(_, c)| c).collect())
}

// ---------------------------------------------------------------- metrics

/// Samples of a Prometheus text page.
struct Metrics(Vec<(String, BTreeMap<String, String>, f64)>);

impl Metrics {
    fn parse(text: &str) -> Metrics {
        let mut v = Vec::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let Some((head, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let (name, labels) = match head.split_once('{') {
                Some((n, rest)) => {
                    let inner = rest.trim_end_matches('}');
                    let labels = inner
                        .split(',')
                        .filter_map(|kv| kv.split_once('='))
                        .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
                        .collect();
                    (n.to_string(), labels)
                }
                None => (head.to_string(), BTreeMap::new()),
            };
            v.push((name, labels, value));
        }
        Metrics(v)
    }

    /// Sum of the samples of `name` whose labels include `with`.
    fn sum(&self, name: &str, with: &[(&str, &str)]) -> f64 {
        self.0
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && with
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, _, v)| v)
            .sum()
    }

    fn histogram(&self, name: &str) -> Hist {
        let bucket = format!("{name}_bucket");
        let mut buckets: Vec<(f64, f64)> = self
            .0
            .iter()
            .filter(|(n, _, _)| *n == bucket)
            .filter_map(|(_, l, v)| {
                let le = l.get("le")?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((le, *v))
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        Hist {
            buckets,
            sum: self.sum(&format!("{name}_sum"), &[]),
            count: self.sum(&format!("{name}_count"), &[]),
        }
    }
}

/// A cumulative histogram (seconds).
struct Hist {
    buckets: Vec<(f64, f64)>,
    sum: f64,
    count: f64,
}

impl Hist {
    /// `self − before` (both cumulative with the same bounds).
    fn since(&self, before: &Hist) -> Hist {
        let buckets = self
            .buckets
            .iter()
            .map(|(le, c)| {
                let b = before
                    .buckets
                    .iter()
                    .find(|(l, _)| l == le)
                    .map_or(0.0, |x| x.1);
                (*le, c - b)
            })
            .collect();
        Hist {
            buckets,
            sum: self.sum - before.sum,
            count: self.count - before.count,
        }
    }

    /// The upper bound (ms) of the bucket holding quantile `q`.
    fn quantile_le_ms(&self, q: f64) -> Option<f64> {
        if self.count < 1.0 {
            return None;
        }
        let rank = (q * self.count).ceil().max(1.0);
        self.buckets
            .iter()
            .find(|(_, c)| *c >= rank)
            .map(|(le, _)| le * 1e3)
    }

    fn json(&self) -> Value {
        let le = |q| self.quantile_le_ms(q).filter(|v: &f64| v.is_finite());
        json!({
            "p50_le": le(0.5),
            "p99_le": le(0.99),
            "max_le": le(1.0),
            "mean": if self.count > 0.0 { Some(self.sum / self.count * 1e3) } else { None },
            "n": self.count as u64,
        })
    }

    fn describe(&self) -> String {
        let f = |q| match self.quantile_le_ms(q) {
            Some(v) if v.is_finite() => format!("≤{v}"),
            Some(_) => ">10000".to_string(),
            None => "-".to_string(),
        };
        let mean = if self.count > 0.0 {
            format!("{:.2}", self.sum / self.count * 1e3)
        } else {
            "-".into()
        };
        format!(
            "p50 {} / p99 {} / max {} ms, mean {mean} ms (n={})",
            f(0.5),
            f(0.99),
            f(1.0),
            self.count
        )
    }
}

const LAG: &str = "jitgate_enforcement_lag_seconds";

// ---------------------------------------------------------------- clients

/// The source address of client `i`: 127.1.0.1 onwards, skipping .0 and .255.
fn client_ip(i: usize) -> Ipv4Addr {
    let base = u32::from(Ipv4Addr::new(127, 1, 0, 0));
    let i = i as u32;
    Ipv4Addr::from(base + (i / 254) * 256 + i % 254 + 1)
}

async fn connect_from(ip: Ipv4Addr, to: SocketAddr) -> Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    // Let connect() choose the port knowing the destination, so it never
    // picks one whose connection to it is still in TIME_WAIT.
    let one: libc::c_int = 1;
    // SAFETY: a valid socket and an int option of the right size.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&s),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            std::ptr::addr_of!(one).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    ensure!(
        rc == 0,
        "IP_BIND_ADDRESS_NO_PORT: {}",
        std::io::Error::last_os_error()
    );
    s.bind(SocketAddr::new(IpAddr::V4(ip), 0))
        .with_context(|| format!("bind {ip}"))?;
    let c = s
        .connect(to)
        .await
        .with_context(|| format!("connect from {ip}"))?;
    c.set_nodelay(true)?;
    Ok(c)
}

/// Open `n` clients to `to` and wait until the backend has accepted them all.
/// Returns the clients (in order) and the time it took.
async fn open_sessions(
    n: usize,
    to: SocketAddr,
    backend: &Backend,
) -> Result<(Vec<TcpStream>, Duration)> {
    let base = backend.accepted.load(Ordering::SeqCst);
    let t0 = Instant::now();
    let timed: Vec<(TcpStream, Duration)> = stream::iter(0..n)
        .map(|i| async move {
            // Start connect i once all but OPEN_WINDOW of the earlier ones
            // have reached the backend.
            while i >= backend.accepted.load(Ordering::SeqCst) - base + OPEN_WINDOW {
                // Refused connections never reach the backend: give up
                // rather than wait for them forever.
                ensure!(
                    t0.elapsed() < Duration::from_secs(60),
                    "only {} of {n} sessions reached the backend in 60 s (were connections refused?)",
                    backend.accepted.load(Ordering::SeqCst) - base
                );
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let t = Instant::now();
            let c = connect_from(client_ip(i), to).await?;
            Ok::<_, anyhow::Error>((c, t.elapsed()))
        })
        .buffered(OPEN_WINDOW)
        .try_collect()
        .await?;
    let connected = t0.elapsed();
    let slow = timed
        .iter()
        .filter(|(_, d)| *d > Duration::from_millis(500))
        .count();
    if slow > 0 {
        // A dropped SYN is retried after 1 s: the accept queue overflowed.
        eprintln!("  {slow} of {n} connects took over 500 ms (SYN retransmitted)");
    }
    let clients: Vec<TcpStream> = timed.into_iter().map(|(c, _)| c).collect();
    wait_for(
        Duration::from_secs(60),
        "the backend to accept every session",
        || backend.accepted.load(Ordering::SeqCst) >= base + n,
    )
    .await
    .with_context(|| {
        format!(
            "{n} clients connected in {connected:?}; the backend accepted {}",
            backend.accepted.load(Ordering::SeqCst) - base
        )
    })?;
    Ok((clients, t0.elapsed()))
}

async fn wait_for(limit: Duration, what: &str, mut ok: impl FnMut() -> bool) -> Result<()> {
    let t0 = Instant::now();
    while !ok() {
        ensure!(t0.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// Wait until jitgate reports no live sessions and the backend holds none,
/// closing the backend's ended sockets meanwhile.
async fn wait_drained(api: &mut ApiConn, backend: &Backend) -> Result<()> {
    let t0 = Instant::now();
    loop {
        // A session the client closed is half-closed (tcp resources pass
        // the FIN on): it ends when the backend closes its end too.
        backend.release();
        let live = api.metrics().await?.sum("jitgate_sessions_active", &[]);
        if live == 0.0 && backend.open.load(Ordering::SeqCst) == 0 {
            backend.release();
            return Ok(());
        }
        ensure!(
            t0.elapsed() < Duration::from_secs(60),
            "sessions did not drain: jitgate {live}, backend {}",
            backend.open.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Wait until jitgate has counted `n` sessions of `resource` ended for
/// `reason` (it counts just after closing the sockets), then return the
/// metrics.
async fn ended(api: &mut ApiConn, resource: &str, reason: &str, n: usize) -> Result<Metrics> {
    let t0 = Instant::now();
    loop {
        let m = api.metrics().await?;
        let c = m.sum(
            "jitgate_sessions_closed_total",
            &[("resource", resource), ("reason", reason)],
        );
        if c as usize == n {
            // The lag histogram is recorded right after the counter.
            tokio::time::sleep(Duration::from_millis(100)).await;
            return api.metrics().await;
        }
        ensure!(
            t0.elapsed() < Duration::from_secs(10),
            "{c} sessions of {resource} ended as {reason}, expected {n}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Wait for each client to see its end; returns how late each saw it
/// after its deadline (ms, negative if early) and the sockets, which the
/// caller closes after its figures are taken (see `Backend::release`).
async fn lateness(
    clients: Vec<TcpStream>,
    deadlines: impl Iterator<Item = SystemTime>,
    limit: Duration,
) -> Result<(Vec<f64>, Vec<TcpStream>)> {
    let readers: Vec<_> = clients
        .into_iter()
        .zip(deadlines)
        .map(|(mut c, deadline)| {
            tokio::spawn(async move {
                let r = read_end(&mut c).await;
                (r, diff_ms(SystemTime::now(), deadline), c)
            })
        })
        .collect();
    let mut late = Vec::with_capacity(readers.len());
    let mut seen_end = Vec::with_capacity(readers.len());
    for h in readers {
        let (r, l, c) = tokio::time::timeout(limit, h)
            .await
            .context("a session outlived its deadline")??;
        r?;
        late.push(l);
        seen_end.push(c);
    }
    Ok((late, seen_end))
}

/// Read until end of stream or reset; an error if data arrives instead.
async fn read_end(c: &mut TcpStream) -> Result<()> {
    let mut buf = [0u8; 64];
    match c.read(&mut buf).await {
        Ok(0) => Ok(()),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            ) =>
        {
            Ok(())
        }
        Ok(n) => bail!("unexpected {n} bytes on an idle session"),
        Err(e) => Err(e.into()),
    }
}

// ---------------------------------------------------------------- stats

/// Nearest-rank percentiles of `v` (ms).
fn pct(v: &mut [f64], qs: &[f64]) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    qs.iter()
        .map(|q| {
            let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
            v[rank - 1]
        })
        .collect()
}

fn summary(v: &mut [f64]) -> Value {
    let p = pct(v, &[0.5, 0.99, 1.0]);
    json!({"p50": round3(p[0]), "p99": round3(p[1]), "max": round3(p[2]), "n": v.len()})
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Signed `a − b` in ms.
fn diff_ms(a: SystemTime, b: SystemTime) -> f64 {
    match a.duration_since(b) {
        Ok(d) => ms(d),
        Err(e) => -ms(e.duration()),
    }
}

// ---------------------------------------------------------------- main

fn main() -> Result<()> {
    let fd_limit = raise_fd_limit()?;
    let s = Settings::from_env()?;
    let need = 2 * s.sessions as u64 + FD_MARGIN;
    ensure!(
        need <= fd_limit,
        "{} sessions need about {need} descriptors per process (2 per session + {FD_MARGIN}); \
         the limit is {fd_limit}: lower SCALE_SESSIONS",
        s.sessions
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run(s, fd_limit))
}

async fn run(s: Settings, fd_limit: u64) -> Result<()> {
    let n = s.sessions;
    eprintln!(
        "scale: {n} sessions, {} revocations{}; descriptor limit {fd_limit} per process \
         (each side needs 2 per session)",
        s.revokes,
        if s.smoke { " (smoke)" } else { "" }
    );
    let backend = start_backend().await?;
    let jg = start_jitgate(backend.addr).await?;
    eprintln!("load average at start: {}", loadavg());
    let res = phases(&s, fd_limit, &backend, &jg).await;
    if res.is_err() {
        diagnose(&jg, &backend).await;
    }
    res
}

/// What jitgate says after a failure: its counters and the end of its log.
async fn diagnose(jg: &Jitgate, backend: &Backend) {
    eprintln!(
        "backend: {} accepted, {} open",
        backend.accepted.load(Ordering::SeqCst),
        backend.open.load(Ordering::SeqCst)
    );
    if let Ok(mut api) = ApiConn::open(jg.admin, &jg.token).await {
        if let Ok((_, text)) = api.raw("GET", "/metrics", None).await {
            for l in String::from_utf8_lossy(&text).lines() {
                if l.starts_with("jitgate_connections_total")
                    || l.starts_with("jitgate_limited_total")
                    || l.starts_with("jitgate_sessions_")
                {
                    eprintln!("  {l}");
                }
            }
        }
    }
    if let Ok(log) = std::fs::read_to_string(jg._dir.path().join("jitgate.log")) {
        let lines: Vec<&str> = log.lines().collect();
        eprintln!("jitgate log (last lines):");
        for l in &lines[lines.len().saturating_sub(20)..] {
            eprintln!("  {l}");
        }
    }
}

async fn phases(s: &Settings, fd_limit: u64, backend: &Arc<Backend>, jg: &Jitgate) -> Result<()> {
    let n = s.sessions;
    let load_start = loadavg();
    let mut api = ApiConn::open(jg.admin, &jg.token).await?;
    let port = |r: &str| jg.ports[r];

    // 1. idle scale
    eprintln!("[1/3] creating {n} /32 grants on {RES_IDLE}");
    let t0 = Instant::now();
    let specs = (0..n)
        .map(|i| GrantSpec {
            resource: RES_IDLE,
            source: format!("{}/32", client_ip(i)),
            duration: Duration::from_secs(3600),
        })
        .collect();
    let idle_grants = create_grants(jg, specs).await?;
    let grant_secs = t0.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = jg.rss_kib()?;
    eprintln!(
        "[1/3] {n} grants in {grant_secs:.1} s; opening {n} sessions (RSS before {rss_before} KiB)"
    );
    let (mut clients, open) = open_sessions(n, port(RES_IDLE), backend).await?;
    let m = api.metrics().await?;
    let live = m.sum("jitgate_sessions_active", &[("resource", RES_IDLE)]);
    ensure!(
        live as usize == n,
        "jitgate reports {live} live sessions, expected {n}"
    );
    ensure!(
        backend.open.load(Ordering::SeqCst) == n,
        "backend holds the wrong count"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after = jg.rss_kib()?;
    let rss_per = (rss_after as f64 - rss_before as f64) / n as f64;
    // The sessions relay: a few echo through (after the RSS reading).
    for i in (0..n).step_by((n / 10).max(1)) {
        let c = &mut clients[i];
        c.write_all(b"ping").await?;
        let mut b = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut b))
            .await
            .context("echo timed out")??;
        ensure!(&b == b"ping", "echo through session {i} came back wrong");
    }
    eprintln!(
        "[1/3] {n} sessions in {:.2} s; RSS {rss_before} → {rss_after} KiB",
        open.as_secs_f64()
    );

    // 2a. revoke one at a time
    let r = s.revokes;
    eprintln!("[2/3] revoking {r} grants one at a time");
    let lag0 = api.metrics().await?.histogram(LAG);
    let mut eof_ms = Vec::with_capacity(r);
    let mut http_ms = Vec::with_capacity(r);
    for k in 0..r {
        let i = k * n / r;
        let path = format!("/v1/grants/{}?reason=bench", idle_grants[i].id);
        let c = &mut clients[i];
        let t = Instant::now();
        let (resp, closed) = tokio::time::timeout(Duration::from_secs(10), async {
            tokio::join!(
                async {
                    let v = api.json("DELETE", &path, None).await;
                    (v, t.elapsed())
                },
                async {
                    let r = read_end(c).await;
                    (r, t.elapsed())
                }
            )
        })
        .await
        .context("revocation timed out")?;
        let (v, http) = resp;
        v?;
        closed.0?;
        eof_ms.push(ms(closed.1));
        http_ms.push(ms(http));
    }
    let m = ended(&mut api, RES_IDLE, "revoked", r).await?;
    let revoke_server = m.histogram(LAG).since(&lag0);
    backend.release();
    let revoke_one = summary(&mut eof_ms);
    let revoke_http = summary(&mut http_ms);

    // 2b. one grant holding N sessions
    drop(clients);
    wait_drained(&mut api, backend).await?;
    eprintln!("[2/3] one 127.0.0.0/8 grant on {RES_WIDE} holding {n} sessions");
    let wide = api
        .json(
            "POST",
            "/v1/grants",
            Some(
                &json!({"principal": "admin", "resource": RES_WIDE, "duration": "1h",
                         "sources": ["127.0.0.0/8"], "reason": "scale benchmark"}),
            ),
        )
        .await?;
    let wide_id = wide["id"]
        .as_str()
        .ok_or_else(|| anyhow!("no id"))?
        .to_string();
    let (clients, open_wide) = open_sessions(n, port(RES_WIDE), backend).await?;
    eprintln!(
        "[2/3] {n} sessions on one grant in {:.2} s",
        open_wide.as_secs_f64()
    );
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                let r = read_end(&mut c).await;
                // The socket is handed back, to be closed after the
                // measurement (see Backend::release).
                (r, Instant::now(), c)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let lag0 = api.metrics().await?.histogram(LAG);
    let t = Instant::now();
    let v = api
        .json(
            "DELETE",
            &format!("/v1/grants/{wide_id}?reason=bench"),
            None,
        )
        .await?;
    let wide_http = t.elapsed();
    // Not checked: the count leaves out sessions that closed before the
    // revoke listed them (see benches/README.md); the clients are checked.
    let wide_reported = v["sessions_closed"].as_u64().unwrap_or(0);
    let mut last = t;
    let mut seen_end = Vec::with_capacity(n);
    let mut eof_ms = Vec::with_capacity(n);
    for h in readers {
        let (r, at, c) = tokio::time::timeout(Duration::from_secs(30), h)
            .await
            .context("a client never saw the end")??;
        r?;
        last = last.max(at);
        eof_ms.push(ms(at.saturating_duration_since(t)));
        seen_end.push(c);
    }
    let revoke_all_ms = ms(last - t);
    // When the first client saw its end: what the request, the lookup and
    // the cancels cost before any farewell; the rest is the farewells.
    let revoke_all_first_ms = eof_ms.iter().copied().fold(f64::INFINITY, f64::min);
    let revoke_all_eof = summary(&mut eof_ms);
    let m = ended(&mut api, RES_WIDE, "revoked", n).await?;
    let revoke_all_server = m.histogram(LAG).since(&lag0);
    drop(seen_end);
    backend.release();
    wait_drained(&mut api, backend).await?;

    // 2c. one grant holding N sessions reaches its deadline: every
    // session's own timer fires at the same instant on its worker.
    let margin_all = Duration::from_secs_f64(1.5 * open_wide.as_secs_f64() + 2.0);
    eprintln!(
        "[2/3] one grant on {RES_WIDE} for {n} sessions, expiring in {:.1} s",
        margin_all.as_secs_f64()
    );
    let wide = api
        .json(
            "POST",
            "/v1/grants",
            Some(&json!({"principal": "admin", "resource": RES_WIDE,
                         "duration": format!("{}ms", margin_all.as_millis()),
                         "sources": ["127.0.0.0/8"], "reason": "scale benchmark"})),
        )
        .await?;
    let exp = wide["expires_at"]
        .as_str()
        .ok_or_else(|| anyhow!("no expires_at in {wide}"))?;
    let wide_deadline =
        humantime::parse_rfc3339(exp).with_context(|| format!("expires_at {exp:?}"))?;
    let (clients, _) = open_sessions(n, port(RES_WIDE), backend).await?;
    ensure!(
        SystemTime::now() < wide_deadline,
        "the sessions opened after the grant's deadline; the margin was too small"
    );
    let lag0 = api.metrics().await?.histogram(LAG);
    let deadlines = std::iter::repeat(wide_deadline);
    let (mut all_late, seen_end) =
        lateness(clients, deadlines, margin_all + Duration::from_secs(30)).await?;
    let m = ended(&mut api, RES_WIDE, "expired", n).await?;
    let expire_all_server = m.histogram(LAG).since(&lag0);
    drop(seen_end);
    backend.release();
    wait_drained(&mut api, backend).await?;
    let expire_all = summary(&mut all_late);

    // 3. expiry
    // Leave time to create the grants and open the sessions before the first
    // deadline: phase 1's pace, with room to spare.
    let margin = Duration::from_secs_f64(1.5 * (grant_secs + open.as_secs_f64()) + 2.0);
    eprintln!(
        "[3/3] {n} grants on {RES_EXPIRY} expiring over {:?}, from {:.1} s from now",
        s.spread,
        margin.as_secs_f64()
    );
    let first = SystemTime::now() + margin;
    let targets: Vec<SystemTime> = (0..n)
        .map(|i| first + s.spread.mul_f64(i as f64 / n as f64))
        .collect();
    let now = SystemTime::now();
    let specs = targets
        .iter()
        .enumerate()
        .map(|(i, at)| GrantSpec {
            resource: RES_EXPIRY,
            source: format!("{}/32", client_ip(i)),
            // Relative to the request; the real deadline is read back.
            duration: at.duration_since(now).unwrap_or(Duration::from_millis(1)),
        })
        .collect();
    let exp_grants = create_grants(jg, specs).await?;
    let (clients, open_exp) = open_sessions(n, port(RES_EXPIRY), backend).await?;
    eprintln!(
        "[3/3] {n} sessions on their own grants in {:.2} s",
        open_exp.as_secs_f64()
    );
    let earliest = exp_grants
        .iter()
        .map(|g| g.expires_at)
        .min()
        .ok_or_else(|| anyhow!("no grants"))?;
    ensure!(
        SystemTime::now() < earliest,
        "the sessions opened after the first deadline; the margin was too small"
    );
    let lag0 = api.metrics().await?.histogram(LAG);
    let deadlines = exp_grants.iter().map(|g| g.expires_at);
    let (mut late, seen_end) = lateness(
        clients,
        deadlines,
        margin + s.spread + Duration::from_secs(30),
    )
    .await?;
    let m = ended(&mut api, RES_EXPIRY, "expired", n).await?;
    let expiry_server = m.histogram(LAG).since(&lag0);
    drop(seen_end);
    backend.release();
    let expiry_late = summary(&mut late);

    let out = json!({
        "sessions": n,
        "smoke": s.smoke,
        "fd_limit": fd_limit,
        "loadavg_start": load_start,
        "loadavg_end": loadavg(),
        "idle_rss_kib_per_session": round3(rss_per),
        "rss_before_kib": rss_before,
        "rss_after_kib": rss_after,
        "grant_create_per_sec": round3(n as f64 / grant_secs),
        "open_secs": round3(open.as_secs_f64()),
        "open_per_sec": round3(n as f64 / open.as_secs_f64()),
        "open_one_grant_per_sec": round3(n as f64 / open_wide.as_secs_f64()),
        "revoke_one_ms": revoke_one,
        "revoke_one_http_ms": revoke_http,
        "revoke_one_server_ms": revoke_server.json(),
        "revoke_all_ms": round3(revoke_all_ms),
        "revoke_all_first_eof_ms": round3(revoke_all_first_ms),
        "revoke_all_eof_ms": revoke_all_eof,
        "revoke_all_http_ms": round3(ms(wide_http)),
        "revoke_all_reported_closed": wide_reported,
        "revoke_all_server_ms": revoke_all_server.json(),
        "expiry_late_ms": expiry_late,
        "expire_all_late_ms": expire_all,
        "expire_all_server_ms": expire_all_server.json(),
        "expiry_server_ms": expiry_server.json(),
    });
    print_table(
        &out,
        &revoke_server,
        &revoke_all_server,
        &expire_all_server,
        &expiry_server,
    );
    if let Some(dir) = s.json_path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&s.json_path, serde_json::to_string_pretty(&out)? + "\n")?;
    println!("JSON: {}", s.json_path.display());
    Ok(())
}

/// The 1-minute load average (the machine's other work skews every figure).
fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

fn print_table(o: &Value, revoke: &Hist, all: &Hist, expire_all: &Hist, expiry: &Hist) {
    let p = |v: &Value| {
        format!(
            "p50 {} / p99 {} / max {} ms (n={})",
            v["p50"], v["p99"], v["max"], v["n"]
        )
    };
    println!();
    println!(
        "jitgate scale, {} sessions (descriptor limit {} per process, 2 per session on each side); \
         load average {} → {}",
        o["sessions"], o["fd_limit"], o["loadavg_start"], o["loadavg_end"]
    );
    println!("{:-<100}", "");
    let rows = [
        (
            "idle RSS per session",
            format!(
                "{} KiB ({} → {} KiB)",
                o["idle_rss_kib_per_session"], o["rss_before_kib"], o["rss_after_kib"]
            ),
        ),
        (
            "open sessions",
            format!("{} s, {} sessions/s", o["open_secs"], o["open_per_sec"]),
        ),
        (
            "open, all on one grant",
            format!("{} sessions/s", o["open_one_grant_per_sec"]),
        ),
        (
            "grant creation",
            format!("{} grants/s", o["grant_create_per_sec"]),
        ),
        ("revoke one → client EOF", p(&o["revoke_one_ms"])),
        ("revoke one: DELETE answered", p(&o["revoke_one_http_ms"])),
        ("revoke one: server lag", revoke.describe()),
        (
            "revoke all → last EOF",
            format!(
                "{} ms (DELETE answered after {} ms, reporting {} closed)",
                o["revoke_all_ms"], o["revoke_all_http_ms"], o["revoke_all_reported_closed"]
            ),
        ),
        (
            "revoke all → each client EOF",
            format!(
                "first {} ms, {}",
                o["revoke_all_first_eof_ms"],
                p(&o["revoke_all_eof_ms"])
            ),
        ),
        ("revoke all: server lag", all.describe()),
        ("expire all: close − deadline", p(&o["expire_all_late_ms"])),
        ("expire all: server lag", expire_all.describe()),
        ("expiry: close − deadline", p(&o["expiry_late_ms"])),
        ("expiry: server lag", expiry.describe()),
    ];
    for (k, v) in rows {
        println!("{k:<30} {v}");
    }
    println!("{:-<100}", "");
}
