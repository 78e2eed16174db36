//! Criterion benchmarks of the grant table: the admission lookup (once per
//! connection) with 100,000 grants in the table, and grant creation.

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

fn bench_lookup(c: &mut Criterion) {
    const N: usize = 100_000;
    let table = GrantTable::new(CancellationToken::new());
    for i in 0..N {
        table.insert(new_grant(i));
    }
    let mut i = 0usize;
    c.bench_function("grants/find_hit_100k", |b| {
        b.iter(|| {
            i = (i + 7919) % N;
            table.find(&format!("res{}", i % 100), &format!("login{i}"))
        })
    });
    c.bench_function("grants/find_miss_100k", |b| {
        b.iter(|| table.find("res1", "nobody"))
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
