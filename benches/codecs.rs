//! Criterion benchmarks of the PostgreSQL codecs on the per-connection and
//! per-chunk paths: the startup decoder (once per connection) and the
//! backend framer (every chunk of every session).

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use proxy_protocols::postgres as pg;

fn startup_packet() -> BytesMut {
    let msg = pg::StartupMessage {
        version: pg::ProtocolVersion { major: 3, minor: 0 },
        params: vec![
            ("user".into(), "alice".into()),
            ("database".into(), "test".into()),
            ("application_name".into(), "psql".into()),
            ("client_encoding".into(), "UTF8".into()),
        ],
    };
    let mut b = BytesMut::new();
    pg::encode_startup(&msg, &mut b);
    b
}

fn bench_startup(c: &mut Criterion) {
    let packet = startup_packet();
    c.bench_function("postgres/decode_startup", |b| {
        b.iter(|| {
            let mut buf = packet.clone();
            pg::decode_startup(&mut buf).ok().flatten()
        })
    });
}

/// A stream of DataRow-like messages of `size` bytes each.
fn stream(size: usize, total: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(total + size);
    while out.len() < total {
        out.push(b'D');
        out.extend_from_slice(&u32::try_from(size + 4).unwrap_or(u32::MAX).to_be_bytes());
        out.extend(std::iter::repeat_n(b'x', size));
    }
    out
}

fn bench_framer(c: &mut Criterion) {
    let mut g = c.benchmark_group("postgres/framer_8k_chunks");
    for size in [16usize, 200, 4000] {
        let data = stream(size, 1 << 20);
        g.throughput(Throughput::Bytes(data.len() as u64));
        g.bench_with_input(BenchmarkId::from_parameter(size), &data, |b, data| {
            b.iter(|| {
                let mut f = pg::MessageFramer::new();
                let mut ends = 0usize;
                for chunk in data.chunks(8192) {
                    if let Ok(r) = f.feed(chunk) {
                        ends += usize::from(r.last_boundary.is_some());
                    }
                }
                ends
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_startup, bench_framer);
criterion_main!(benches);
