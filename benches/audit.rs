//! Criterion benchmarks of the audit log: one `session.started` record
//! written through the hash chain (what admission pays per connection),
//! the same bytes written unchained (the cost before the chain), the same
//! with an fdatasync per record (the cost the writer does not pay), and
//! `audit verify` over 100,000 records.

use std::io::Write;
use std::net::SocketAddr;
use std::time::SystemTime;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use jitgate::audit::chain::ChainHash;
use jitgate::audit::{verify, AuditLog, Event};
use uuid::Uuid;

fn session_started() -> Event {
    let mut e = Event::new("session.started");
    e.ts = Some(SystemTime::now());
    e.session_id = Some(Uuid::now_v7());
    e.grant_id = Some(Uuid::now_v7());
    e.principal = Some("alice".into());
    e.login = Some("postgres".into());
    e.resource = Some("prod-pg".into());
    e.protocol = Some("postgres");
    e.client_addr = Some(SocketAddr::from(([127, 0, 0, 1], 51234)));
    e.expires_at = Some(SystemTime::now());
    e
}

fn bench_write(c: &mut Criterion) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let log = AuditLog::open(dir.path(), 0).unwrap();
    c.bench_function("audit/write_chained", |b| {
        b.iter(|| log.write(session_started()).unwrap())
    });
    let mut plain = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.path().join("plain.jsonl"))
        .unwrap();
    c.bench_function("audit/write_unchained", |b| {
        b.iter(|| {
            let mut line = serde_json::to_vec(&session_started()).unwrap();
            line.push(b'\n');
            plain.write_all(&line).unwrap();
        })
    });
    let mut group = c.benchmark_group("audit/slow");
    group.sample_size(20);
    group.bench_function("write_unchained_fdatasync", |b| {
        b.iter(|| {
            let mut line = serde_json::to_vec(&session_started()).unwrap();
            line.push(b'\n');
            plain.write_all(&line).unwrap();
            plain.sync_data().unwrap();
        })
    });
    group.finish();
}

fn bench_verify(c: &mut Criterion) {
    const N: u64 = 100_000;
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let log = AuditLog::open(dir.path(), 0).unwrap();
    for _ in 0..N {
        log.write(session_started()).unwrap();
    }
    let files = vec![log.path().to_path_buf()];
    let bytes = std::fs::metadata(&files[0]).unwrap().len();
    let mut group = c.benchmark_group("audit/verify");
    group.sample_size(10).throughput(Throughput::Bytes(bytes));
    group.bench_function("100k_records", |b| {
        b.iter(|| {
            let v = verify::verify(&files, ChainHash::GENESIS).unwrap();
            assert_eq!(v.records, N);
        })
    });
    group.finish();
}

criterion_group!(benches, bench_write, bench_verify);
criterion_main!(benches);
