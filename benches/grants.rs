//! Criterion benchmarks of the grant table: the admission lookups (once per
//! connection) and grant creation, with 100,000 and with 1,000,000 login
//! grants in the table, and with 10,000 source grants spread over 100
//! resources or all on one (the shape of `benches/scale.rs`: one /32 grant
//! per client of one tcp resource).

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use jitgate::ending::EndReason;
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

fn host(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0a00_0000u32 + i as u32))
}

/// A source-bound grant (ssh/tcp) for one /32 in 10.0.0.0/8.
fn source_grant(i: usize) -> NewGrant {
    NewGrant {
        logins: vec![],
        sources: vec![host(i).into()],
        ..new_grant(i)
    }
}

/// A table of `n` login grants over 100 resources.
fn login_table(n: usize) -> GrantTable {
    let table = GrantTable::new(CancellationToken::new());
    for i in 0..n {
        table.insert(new_grant(i));
    }
    table
}

/// Time `iters` grant creations, then remove those grants untimed, so the
/// table stays at its size however many iterations criterion runs.
fn insert_at_size(table: &GrantTable, next: &mut usize, iters: u64) -> Duration {
    let mut ids = Vec::with_capacity(iters as usize);
    let t = Instant::now();
    for _ in 0..iters {
        *next += 1;
        ids.push(table.insert(new_grant(*next)).id);
    }
    let took = t.elapsed();
    for id in ids {
        table.remove(&id, EndReason::Expired);
    }
    took
}

fn login_benches(c: &mut Criterion, n: usize, label: &str) {
    let from = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let table = login_table(n);
    let mut i = 0usize;
    c.bench_function(&format!("grants/find_hit_{label}"), |b| {
        b.iter(|| {
            i = (i + 7919) % n;
            table.find_login(&format!("res{}", i % 100), &format!("login{i}"), from)
        })
    });
    c.bench_function(&format!("grants/find_miss_{label}"), |b| {
        b.iter(|| table.find_login("res1", "nobody", from))
    });
    let mut next = n;
    c.bench_function(&format!("grants/insert_into_{label}"), |b| {
        b.iter_custom(|iters| insert_at_size(&table, &mut next, iters))
    });
}

fn bench_100k(c: &mut Criterion) {
    login_benches(c, 100_000, "100k");
}

fn bench_1m(c: &mut Criterion) {
    login_benches(c, 1_000_000, "1m");
}

fn bench_source(c: &mut Criterion) {
    const S: usize = 10_000;
    let from = IpAddr::V4(Ipv4Addr::LOCALHOST);
    // 100 source grants per resource: the lookup checks only that resource's.
    let table = GrantTable::new(CancellationToken::new());
    for i in 0..S {
        table.insert(source_grant(i));
    }
    let mut k = 0usize;
    c.bench_function("grants/find_source_hit_10k", |b| {
        b.iter(|| {
            k = (k + 7919) % S;
            table.find_source(&format!("res{}", k % 100), host(k))
        })
    });
    c.bench_function("grants/find_source_miss_10k", |b| {
        b.iter(|| table.find_source("res1", from))
    });
    drop(table);
    // All 10,000 on one resource (one client address each, as the scale
    // bench has them): found through the (resource, address) index.
    let table = GrantTable::new(CancellationToken::new());
    for i in 0..S {
        table.insert(NewGrant {
            resource: "tcp".into(),
            ..source_grant(i)
        });
    }
    c.bench_function("grants/find_source_hit_10k_one_resource", |b| {
        b.iter(|| {
            k = (k + 7919) % S;
            table.find_source("tcp", host(k))
        })
    });
    c.bench_function("grants/find_source_miss_10k_one_resource", |b| {
        b.iter(|| table.find_source("tcp", from))
    });
    // Create and revoke one more on that resource.
    let mut j = S;
    c.bench_function("grants/insert_remove_source_10k_one_resource", |b| {
        b.iter(|| {
            j += 1;
            let g = table.insert(NewGrant {
                resource: "tcp".into(),
                ..source_grant(j)
            });
            table.remove(&g.id, EndReason::Expired)
        })
    });
}

criterion_group!(benches, bench_100k, bench_1m, bench_source);
criterion_main!(benches);
