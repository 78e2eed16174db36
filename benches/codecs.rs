//! Criterion benchmarks of the codecs on the per-connection and per-chunk
//! paths: the PostgreSQL startup decoder and MySQL HandshakeResponse parser
//! (once per connection), and the backend framers with MySQL's turn tracker
//! (every chunk of every session).

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

/// A stream of MySQL row packets of `size` bytes each.
fn mysql_stream(size: usize, total: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(total + size);
    let mut seq = 2u8;
    while out.len() < total {
        let [a, b, c, _] = u32::try_from(size).unwrap_or(0).to_le_bytes();
        out.extend_from_slice(&[a, b, c, seq]);
        out.extend(std::iter::repeat_n(b'x', size));
        seq = seq.wrapping_add(1);
    }
    out
}

fn bench_mysql(c: &mut Criterion) {
    use proxy_protocols::mysql as my;
    let r = my::HandshakeResponse {
        capabilities: 0x00bf_a28c,
        max_packet: 1 << 24,
        collation: 33,
        user: b"alice".to_vec(),
        auth_response: vec![7; 20],
        database: Some(b"test".to_vec()),
        auth_plugin: Some(b"mysql_native_password".to_vec()),
        connect_attrs: Some(b"\x03_os\x05Linux\x0c_client_name\x0alibmariadb".to_vec()),
        ..Default::default()
    };
    let mut payload = Vec::new();
    my::encode_handshake_response(&r, &mut payload);
    c.bench_function("mysql/parse_client_first", |b| {
        b.iter(|| my::parse_client_first(&payload).ok())
    });

    let mut g = c.benchmark_group("mysql/framer_and_turns_8k_chunks");
    for size in [16usize, 200, 4000] {
        let data = mysql_stream(size, 1 << 20);
        g.throughput(Throughput::Bytes(data.len() as u64));
        g.bench_with_input(BenchmarkId::from_parameter(size), &data, |b, data| {
            b.iter(|| {
                let mut f = my::PacketFramer::new(32);
                let mut conv = my::Conversation::in_auth(false, 2);
                let mut ends = 0usize;
                for chunk in data.chunks(8192) {
                    let r = f.feed(chunk, |p| conv.server_payload(p));
                    ends += usize::from(r.last.is_some());
                }
                (ends, conv.farewell_seq())
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_startup, bench_framer, bench_mysql);
criterion_main!(benches);
