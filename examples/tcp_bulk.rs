//! Bulk TCP throughput load generator for `benches/tcp.sh`.
//!
//! ```text
//! tcp_bulk serve ADDR                         # the backend
//! tcp_bulk run ADDR up|down STREAMS SECONDS   # the client; prints one JSON line
//! ```
//!
//! `up`: each stream sends for SECONDS, shuts down its write side, and
//! waits for the backend to answer with the byte count it received, so
//! only bytes that crossed every hop count. `down`: each stream asks for
//! data, reads for SECONDS and closes. Throughput is the bytes moved by
//! all streams over the wall time, in MB/s (10^6 bytes).

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const CHUNK: usize = 64 * 1024;

fn usage() -> ! {
    eprintln!("usage: tcp_bulk serve ADDR | tcp_bulk run ADDR up|down STREAMS SECONDS");
    std::process::exit(2)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["serve", addr] => serve(addr).await,
        ["run", addr, mode, streams, secs] => {
            let streams: usize = streams.parse().unwrap_or_else(|_| usage());
            let secs: f64 = secs.parse().unwrap_or_else(|_| usage());
            run(addr, mode, streams, Duration::from_secs_f64(secs)).await
        }
        _ => usage(),
    }
}

async fn serve(addr: &str) {
    let l = TcpListener::bind(addr).await.expect("bind");
    loop {
        let Ok((s, _)) = l.accept().await else {
            continue;
        };
        let _ = s.set_nodelay(true);
        tokio::spawn(async move {
            let _ = serve_one(s).await;
        });
    }
}

async fn serve_one(mut s: TcpStream) -> std::io::Result<()> {
    let mut mode = [0u8; 1];
    s.read_exact(&mut mode).await?;
    let mut buf = vec![0u8; CHUNK];
    match mode[0] {
        b'U' => {
            let mut total: u64 = 0;
            loop {
                let n = s.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                total += n as u64;
            }
            s.write_all(&total.to_be_bytes()).await?;
            s.shutdown().await
        }
        b'D' => loop {
            s.write_all(&buf).await?;
        },
        _ => Ok(()),
    }
}

async fn run(addr: &str, mode: &str, streams: usize, dur: Duration) {
    let up = match mode {
        "up" => true,
        "down" => false,
        _ => usage(),
    };
    let begun = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..streams {
        let addr = addr.to_string();
        tasks.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(&addr).await.expect("connect");
            s.set_nodelay(true).expect("nodelay");
            if up {
                upload(&mut s, dur).await
            } else {
                download(&mut s, dur).await
            }
        }));
    }
    let mut bytes: u64 = 0;
    for t in tasks {
        bytes += t.await.expect("stream task");
    }
    let secs = begun.elapsed().as_secs_f64();
    println!(
        "{{\"mode\":\"{mode}\",\"streams\":{streams},\"bytes\":{bytes},\"seconds\":{secs:.3},\"mb_per_s\":{:.1}}}",
        bytes as f64 / secs / 1e6
    );
}

async fn upload(s: &mut TcpStream, dur: Duration) -> u64 {
    let buf = vec![0x5au8; CHUNK];
    s.write_all(b"U").await.expect("write");
    let end = Instant::now() + dur;
    while Instant::now() < end {
        s.write_all(&buf).await.expect("write");
    }
    s.shutdown().await.expect("shutdown");
    let mut count = [0u8; 8];
    s.read_exact(&mut count).await.expect("the backend's count");
    u64::from_be_bytes(count)
}

async fn download(s: &mut TcpStream, dur: Duration) -> u64 {
    let mut buf = vec![0u8; CHUNK];
    s.write_all(b"D").await.expect("write");
    let end = Instant::now() + dur;
    let mut total: u64 = 0;
    while Instant::now() < end {
        let n = s.read(&mut buf).await.expect("read");
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    total
}
