//! Criterion benchmarks of the grant table: the admission lookups (once per
//! connection) with 100,000 login grants and 10,000 source grants in the
//! table, and grant creation.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use jitgate::grants::{GrantKind, GrantTable, NewGrant};
use tokio_util::sync::CancellationToken;

fn new_grant(i: usize) -> NewGrant {
    NewGrant {
        principal: format!("user{i}"),
        resource: format!("res{}", i % 100),
        logins: vec![format!("login{i}")],
        sources: vec![],
        duration: Duration::from_secs(3600),
        reason: "bench".into(),
        actor: "admin".into(),
        kind: GrantKind::BreakGlass,
    }
}

/// A source-bound grant (ssh/tcp) for one /32 in 10.0.0.0/8.
fn source_grant(i: usize) -> NewGrant {
    let host = IpAddr::V4(Ipv4Addr::from(0x0a00_0000u32 + i as u32));
    NewGrant {
        logins: vec![],
        sources: vec![host.into()],
        ..new_grant(i)
    }
}

fn bench_lookup(c: &mut Criterion) {
    const N: usize = 100_000;
    const S: usize = 10_000;
    let from = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let table = GrantTable::new(CancellationToken::new());
    for i in 0..N {
        table.insert(new_grant(i));
    }
    for i in 0..S {
        table.insert(source_grant(i));
    }
    let mut i = 0usize;
    c.bench_function("grants/find_hit_100k", |b| {
        b.iter(|| {
            i = (i + 7919) % N;
            table.find_login(&format!("res{}", i % 100), &format!("login{i}"), from)
        })
    });
    c.bench_function("grants/find_miss_100k", |b| {
        b.iter(|| table.find_login("res1", "nobody", from))
    });
    // 100 source grants per resource: the lookup checks only that resource's.
    let mut k = 0usize;
    c.bench_function("grants/find_source_hit_10k", |b| {
        b.iter(|| {
            k = (k + 7919) % S;
            let ip = IpAddr::V4(Ipv4Addr::from(0x0a00_0000u32 + k as u32));
            table.find_source(&format!("res{}", k % 100), ip)
        })
    });
    c.bench_function("grants/find_source_miss_10k", |b| {
        b.iter(|| table.find_source("res1", from))
    });
    let mut j = N;
    c.bench_function("grants/insert_into_100k", |b| {
        b.iter(|| {
            j += 1;
            table.insert(new_grant(j))
        })
    });
}

criterion_group!(benches, bench_lookup);
criterion_main!(benches);
