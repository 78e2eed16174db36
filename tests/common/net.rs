//! Small in-process TCP backends for the tcp and ssh tests, and socket
//! helpers: read until the peer closes, count established sockets.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use proxy_protocols::proxy::{self, ProxyHeader};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What a fake backend does with each connection.
#[derive(Debug, Clone)]
pub enum Mode {
    /// Echo every byte; at end of stream, shut down its write side.
    Echo,
    /// Send this, shut down its write side, then read until end of stream.
    BannerThenSink(Vec<u8>),
    /// Send an SSH version line, then echo.
    FakeSsh,
    /// Read a PROXY protocol header (recorded), then echo.
    ProxyThenEcho,
}

/// What a fake backend saw.
#[derive(Debug, Default)]
pub struct Stats {
    /// Connections accepted.
    pub accepted: AtomicUsize,
    /// Connections open now.
    pub open: AtomicUsize,
    /// Bytes received on each finished connection, in order of finishing.
    pub received: Mutex<Vec<Vec<u8>>>,
    /// PROXY headers read (ProxyThenEcho).
    pub headers: Mutex<Vec<ProxyHeader>>,
}

/// A fake backend on an ephemeral loopback port.
pub struct Backend {
    /// Where it listens.
    pub addr: SocketAddr,
    /// What it saw.
    pub stats: Arc<Stats>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Backend {
    /// Start one.
    pub async fn start(mode: Mode) -> Backend {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let stats = Arc::new(Stats::default());
        let st = stats.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((s, _)) = l.accept().await else { return };
                st.accepted.fetch_add(1, Ordering::SeqCst);
                st.open.fetch_add(1, Ordering::SeqCst);
                let st = st.clone();
                let mode = mode.clone();
                tokio::spawn(async move {
                    let got = serve(s, &mode, &st).await;
                    st.received.lock().unwrap().push(got);
                    st.open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Backend { addr, stats, task }
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.stats.open.load(Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.stats.accepted.load(Ordering::SeqCst)
    }

    /// Wait (at most `limit`) until `n` connections are open.
    pub async fn wait_open(&self, n: usize, limit: Duration) {
        super::wait_until(
            &format!("{n} backend connection(s) open"),
            limit,
            || async { self.open() == n },
        )
        .await;
    }
}

async fn serve(mut s: TcpStream, mode: &Mode, st: &Stats) -> Vec<u8> {
    let mut got = Vec::new();
    match mode {
        Mode::Echo => echo(&mut s, &mut got).await,
        Mode::FakeSsh => {
            if s.write_all(b"SSH-2.0-FakeSSH_1.0\r\n").await.is_ok() {
                echo(&mut s, &mut got).await;
            }
        }
        Mode::ProxyThenEcho => {
            let mut buf = BytesMut::new();
            loop {
                match proxy::decode(&mut buf) {
                    Ok(Some(h)) => {
                        st.headers.lock().unwrap().push(h);
                        break;
                    }
                    Ok(None) => {}
                    Err(_) => return got,
                }
                let mut b = vec![0u8; proxy::bytes_wanted(&buf).max(1)];
                if s.read_exact(&mut b).await.is_err() {
                    return got;
                }
                buf.extend_from_slice(&b);
            }
            echo(&mut s, &mut got).await;
        }
        Mode::BannerThenSink(banner) => {
            if s.write_all(banner).await.is_ok() && s.shutdown().await.is_ok() {
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    got.extend_from_slice(&buf[..n]);
                }
            }
        }
    }
    got
}

/// Echo until end of stream (then shut down the write side) or an error.
async fn echo(s: &mut TcpStream, got: &mut Vec<u8>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match s.read(&mut buf).await {
            Ok(0) => {
                let _ = s.shutdown().await;
                return;
            }
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                if s.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
            Err(_) => return,
        }
    }
}

/// How a stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// End of stream (FIN).
    Eof,
    /// Connection reset.
    Reset,
}

/// Read until the peer closes; panics if it does not within `limit`.
pub async fn read_until_closed(s: &mut TcpStream, limit: Duration) -> (Vec<u8>, Ended) {
    let mut out = Vec::new();
    let read = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match s.read(&mut buf).await {
                Ok(0) => return Ended::Eof,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ended::Reset,
                Err(e) => panic!("read failed: {e}"),
            }
        }
    };
    let how = tokio::time::timeout(limit, read)
        .await
        .expect("the peer did not close the connection in time");
    (out, how)
}

/// Established TCP sockets (IPv4 and IPv6) whose local or remote port is
/// `port`, from /proc/net/tcp*: both ends of a loopback connection count.
pub fn established(port: u16) -> usize {
    let mut n = 0;
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 4 || f[3] != "01" {
                continue;
            }
            let port_of = |a: &str| {
                a.rsplit(':')
                    .next()
                    .and_then(|p| u16::from_str_radix(p, 16).ok())
            };
            if port_of(f[1]) == Some(port) || port_of(f[2]) == Some(port) {
                n += 1;
            }
        }
    }
    n
}

/// Deterministic pseudo-random bytes (xorshift), different per `seed`.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}
