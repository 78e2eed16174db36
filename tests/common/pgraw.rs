//! PostgreSQL frontend messages written by hand, for tests that need a
//! client doing what no driver does (sending garbage, never reading).

use std::collections::HashMap;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// Protocol 3.0's version code.
pub const PROTOCOL_3_0: u32 = 3 << 16;

/// A startup packet: length word, version or request code, then `name\0value\0`
/// pairs and the final NUL (the pairs and NUL only when `params` is `Some`).
pub fn packet(code: u32, params: Option<&[(&str, &str)]>) -> Vec<u8> {
    let mut body = Vec::new();
    if let Some(params) = params {
        for (k, v) in params {
            body.extend_from_slice(k.as_bytes());
            body.push(0);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
    }
    let mut out = Vec::new();
    out.extend_from_slice(&(8 + body.len() as u32).to_be_bytes());
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// A protocol 3.0 StartupMessage for `user` on database `test`.
pub fn startup(user: &str) -> Vec<u8> {
    packet(PROTOCOL_3_0, Some(&[("user", user), ("database", "test")]))
}

/// A simple Query message.
pub fn query(sql: &str) -> Vec<u8> {
    let mut out = vec![b'Q'];
    out.extend_from_slice(&((sql.len() + 5) as u32).to_be_bytes());
    out.extend_from_slice(sql.as_bytes());
    out.push(0);
    out
}

/// Read one backend message: (tag, body).
pub async fn read_message(s: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut head = [0u8; 5];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut head))
        .await
        .expect("a message in time")
        .unwrap();
    let len = u32::from_be_bytes(head[1..5].try_into().unwrap()) as usize;
    let mut body = vec![0u8; len - 4];
    s.read_exact(&mut body).await.unwrap();
    (head[0], body)
}

/// Read messages until ReadyForQuery; panics on an ErrorResponse.
pub async fn read_until_ready(s: &mut TcpStream) {
    loop {
        let (tag, body) = read_message(s).await;
        assert_ne!(tag, b'E', "{}", String::from_utf8_lossy(&body));
        if tag == b'Z' {
            return;
        }
    }
}

/// The fields of the single ErrorResponse that makes up `bytes`, by field code.
pub fn error_response(bytes: &[u8]) -> HashMap<char, String> {
    assert_eq!(
        bytes.first(),
        Some(&b'E'),
        "expected an ErrorResponse, got {bytes:?}"
    );
    let len = u32::from_be_bytes(bytes[1..5].try_into().unwrap()) as usize;
    assert_eq!(bytes.len(), 1 + len, "exactly one message, then EOF");
    let mut fields = HashMap::new();
    let mut rest = &bytes[5..];
    while let Some((&code, tail)) = rest.split_first() {
        if code == 0 {
            break;
        }
        let end = tail.iter().position(|&b| b == 0).unwrap();
        fields.insert(
            code as char,
            String::from_utf8(tail[..end].to_vec()).unwrap(),
        );
        rest = &tail[end + 1..];
    }
    fields
}
