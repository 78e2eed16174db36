//! The audit hash chain: how a line is sealed, and how a sealed line is read
//! back. Pure functions over bytes; no file I/O except [`read_tail`].
//!
//! The canonical line `C` of a record is the event's compact JSON object
//! (serde_json, fields in [`super::Event`] declaration order, absent fields
//! left out) with `"prev":"P"` added as its last member, where `P` is the
//! previous record's hash (64 zeros, [`ChainHash::GENESIS`], for the first
//! record of a chain). The record's hash is `H = SHA-256(C)` as 64 lowercase
//! hex digits. The line written to the file is `C` with its closing `}`
//! replaced by `,"hash":"H"}`, then `\n`:
//!
//! ```text
//! C    = {"ts":"…","event":"grant.created",…,"prev":"P"}
//! line = {"ts":"…","event":"grant.created",…,"prev":"P","hash":"H"}\n
//! ```
//!
//! So a verifier needs no JSON canonicalisation: it cuts the fixed-length
//! `,"hash":"H"}` suffix off the line's bytes, puts back `}`, and hashes.
//! Invariant: a line is accepted as sealed only if it ends with
//! `,"prev":"P","hash":"H"}` exactly, both 64 lowercase hex digits, and is
//! a JSON object with `ts` and `event` and no duplicated `prev` or `hash`.

use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use serde::de::IgnoredAny;
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// The longest line jitgate writes or `audit verify` reads (1 MiB). Request
/// bodies are capped at 64 KiB, so a real record is far below it.
pub const MAX_LINE: usize = 1 << 20;

const HASH_PREFIX: &[u8] = b",\"hash\":\"";
const PREV_PREFIX: &[u8] = b",\"prev\":\"";
/// `,"hash":"` + 64 hex + `"}`.
const HASH_SUFFIX_LEN: usize = 9 + 64 + 2;
/// `,"prev":"` + 64 hex + `"`.
const PREV_MEMBER_LEN: usize = 9 + 64 + 1;
/// What [`seal`] adds to an object: the `prev` and `hash` members and `\n`
/// (the object's `}` moves to the end of the hash suffix).
pub const SEAL_LEN: usize = PREV_MEMBER_LEN + HASH_SUFFIX_LEN;

/// A SHA-256 link of the chain.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChainHash(pub [u8; 32]);

impl ChainHash {
    /// The `prev` of the first record of a chain: 64 zeros.
    pub const GENESIS: ChainHash = ChainHash([0; 32]);

    /// SHA-256 of `bytes`.
    pub fn of(bytes: &[u8]) -> ChainHash {
        ChainHash(Sha256::digest(bytes).into())
    }

    /// Parse 64 lowercase hex digits (uppercase is refused: the written
    /// form is lowercase, and one spelling keeps lines byte-comparable).
    pub fn parse_hex(s: &[u8]) -> Option<ChainHash> {
        if s.len() != 64 || !s.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return None;
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(ChainHash(out))
    }

    /// 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for ChainHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ChainHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChainHash({})", self.to_hex())
    }
}

/// Seal a compact JSON object `object` (as serde_json writes it: `{` …
/// `}`, no whitespace around) onto the chain after `prev`. Returns the line
/// to write (with its `\n`) and its hash.
pub fn seal(object: &[u8], prev: &ChainHash) -> (Vec<u8>, ChainHash) {
    // `{}` has no member to follow; any other object gets a comma.
    let body = match object.strip_suffix(b"}") {
        Some(b"{") | None => &b"{"[..],
        Some(b) => b,
    };
    let comma = if body == b"{" { &b""[..] } else { &b","[..] };
    let mut canonical = Vec::with_capacity(body.len() + PREV_MEMBER_LEN + HASH_SUFFIX_LEN + 2);
    canonical.extend_from_slice(body);
    canonical.extend_from_slice(comma);
    canonical.extend_from_slice(b"\"prev\":\"");
    canonical.extend_from_slice(prev.to_hex().as_bytes());
    canonical.extend_from_slice(b"\"}");
    let hash = ChainHash::of(&canonical);
    let mut line = canonical;
    line.pop(); // the closing brace
    line.extend_from_slice(HASH_PREFIX);
    line.extend_from_slice(hash.to_hex().as_bytes());
    line.extend_from_slice(b"\"}\n");
    (line, hash)
}

/// A sealed line as read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sealed {
    /// Its `prev`.
    pub prev: ChainHash,
    /// Its `hash` as written.
    pub hash: ChainHash,
}

/// Why a line is not a valid sealed record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    /// The line does not have the sealed shape (no `prev`/`hash` at its
    /// end, not JSON, missing `ts`/`event`): written by hand or by
    /// something other than jitgate, or damaged.
    #[error("not a sealed audit record ({0})")]
    Unsealed(String),
    /// Well-formed, but its hash is not the SHA-256 of its content: the
    /// line was changed after it was written.
    #[error("its hash does not match its content")]
    HashMismatch {
        /// The links as written.
        sealed: Sealed,
    },
}

/// The members every sealed line must carry exactly once (serde refuses a
/// duplicated known field, which a `Map` would silently collapse).
#[derive(Deserialize)]
#[allow(dead_code)] // read only to check presence and uniqueness
struct Required {
    ts: IgnoredAny,
    event: IgnoredAny,
    prev: IgnoredAny,
    hash: IgnoredAny,
}

/// The links of `line` (without its `\n`) as written, checking only the
/// shape, not the hash. Used to continue a chain from a file's last line.
pub fn links(line: &[u8]) -> Result<Sealed, LineError> {
    let unsealed = |why: &str| LineError::Unsealed(why.to_string());
    let n = line.len();
    let tail_start = n
        .checked_sub(HASH_SUFFIX_LEN + PREV_MEMBER_LEN)
        .ok_or_else(|| unsealed("too short"))?;
    let (_, tail) = line.split_at(tail_start);
    let (prev_member, hash_member) = tail.split_at(PREV_MEMBER_LEN);
    let prev_hex = prev_member
        .strip_prefix(PREV_PREFIX)
        .and_then(|r| r.strip_suffix(b"\""))
        .ok_or_else(|| unsealed("\"prev\" is not the last member before \"hash\""))?;
    let hash_hex = hash_member
        .strip_prefix(HASH_PREFIX)
        .and_then(|r| r.strip_suffix(b"\"}"))
        .ok_or_else(|| unsealed("no \"hash\" member at the end of the line"))?;
    let prev = ChainHash::parse_hex(prev_hex)
        .ok_or_else(|| unsealed("\"prev\" is not 64 lowercase hex digits"))?;
    let hash = ChainHash::parse_hex(hash_hex)
        .ok_or_else(|| unsealed("\"hash\" is not 64 lowercase hex digits"))?;
    Ok(Sealed { prev, hash })
}

/// Read back a sealed line (without its `\n`): its shape, that it is a JSON
/// object with the required members, and that its hash matches.
pub fn open(line: &[u8]) -> Result<Sealed, LineError> {
    let sealed = links(line)?;
    if let Err(e) = serde_json::from_slice::<Required>(line) {
        return Err(LineError::Unsealed(format!("invalid JSON: {e}")));
    }
    let body_len = line.len().saturating_sub(HASH_SUFFIX_LEN);
    let (body, _) = line.split_at(body_len);
    let mut canonical = Vec::with_capacity(body_len + 1);
    canonical.extend_from_slice(body);
    canonical.push(b'}');
    if ChainHash::of(&canonical) != sealed.hash {
        return Err(LineError::HashMismatch { sealed });
    }
    Ok(sealed)
}

/// The end of a file, as found by [`read_tail`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Tail {
    /// Length up to and including the last `\n` (0 if none).
    pub complete_len: u64,
    /// The last complete line, without its `\n` (`None` if the file has no
    /// complete line, or that line is longer than [`MAX_LINE`]).
    pub last_line: Option<Vec<u8>>,
    /// Bytes after the last `\n`: a write that did not finish.
    pub torn: Vec<u8>,
}

/// Find the last complete line and any torn bytes after it, reading at most
/// `2 * MAX_LINE + 2` bytes from the end of `file` (of length `len`).
pub fn read_tail(file: &File, len: u64) -> io::Result<Tail> {
    let window = len.min(2 * MAX_LINE as u64 + 2);
    let start = len - window;
    let mut buf = vec![0u8; usize::try_from(window).map_err(io::Error::other)?];
    file.read_exact_at(&mut buf, start)?;
    let Some(last_nl) = buf.iter().rposition(|&b| b == b'\n') else {
        // No newline in the window: everything read is torn, unless the
        // window does not reach the start (then the torn part is too long
        // to be a line jitgate wrote, and the file is damaged).
        if start == 0 {
            return Ok(Tail {
                complete_len: 0,
                last_line: None,
                torn: buf,
            });
        }
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "no line break in the last 2 MiB",
        ));
    };
    let (complete, torn) = buf.split_at(last_nl + 1);
    let torn = torn.to_vec();
    let complete = complete.strip_suffix(b"\n").unwrap_or(complete);
    let line_start = complete.iter().rposition(|&b| b == b'\n').map(|p| p + 1);
    let last_line = match line_start {
        Some(p) => complete.get(p..).map(<[u8]>::to_vec),
        // The whole window up to the break is one line: only if it starts
        // at the beginning of the file do we have all of it.
        None if start == 0 => Some(complete.to_vec()),
        None => None,
    };
    let last_line = last_line.filter(|l| l.len() <= MAX_LINE);
    Ok(Tail {
        complete_len: start + last_nl as u64 + 1,
        last_line,
        torn,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn obj(event: &str) -> Vec<u8> {
        format!(r#"{{"ts":"2026-11-29T21:00:00.000Z","event":"{event}"}}"#).into_bytes()
    }

    #[test]
    fn a_sealed_line_opens_and_links() {
        let (l1, h1) = seal(&obj("grant.created"), &ChainHash::GENESIS);
        let (l2, h2) = seal(&obj("session.started"), &h1);
        assert!(l1.ends_with(b"\"}\n"));
        let s1 = open(l1.strip_suffix(b"\n").unwrap()).unwrap();
        let s2 = open(l2.strip_suffix(b"\n").unwrap()).unwrap();
        assert_eq!(s1.prev, ChainHash::GENESIS);
        assert_eq!(s1.hash, h1);
        assert_eq!(s2.prev, h1);
        assert_eq!(s2.hash, h2);
        // The line is plain JSON with prev and hash as members.
        let v: serde_json::Value = serde_json::from_slice(&l2).unwrap();
        assert_eq!(v["prev"], h1.to_hex());
        assert_eq!(v["hash"], h2.to_hex());
        assert_eq!(v["event"], "session.started");
    }

    #[test]
    fn the_hash_is_sha256_of_the_line_without_its_hash_member() {
        let (line, h) = seal(&obj("grant.created"), &ChainHash::GENESIS);
        let text = String::from_utf8(line).unwrap();
        let canonical = format!(
            r#"{{"ts":"2026-11-29T21:00:00.000Z","event":"grant.created","prev":"{}"}}"#,
            "0".repeat(64)
        );
        assert_eq!(h, ChainHash::of(canonical.as_bytes()));
        let body = canonical.strip_suffix('}').unwrap();
        assert_eq!(text, format!("{body},\"hash\":\"{h}\"}}\n"));
    }

    #[test]
    fn an_edited_byte_is_a_hash_mismatch() {
        let (line, _) = seal(&obj("grant.created"), &ChainHash::GENESIS);
        let edited = String::from_utf8(line)
            .unwrap()
            .replace("grant.created", "grant.creatEd");
        let e = open(edited.trim_end().as_bytes()).unwrap_err();
        assert!(matches!(e, LineError::HashMismatch { .. }), "{e:?}");
    }

    #[test]
    fn unsealed_shapes_are_refused() {
        let (line, h) = seal(&obj("x"), &ChainHash::GENESIS);
        let line = String::from_utf8(line).unwrap();
        let line = line.trim_end();
        for bad in [
            r#"{"ts":"2026-11-29T21:00:00.000Z","event":"x"}"#.to_string(),
            String::new(),
            "not json at all".into(),
            line.to_uppercase(),
            line.replace(&h.to_hex(), &h.to_hex().to_uppercase()),
            // hash first, prev last
            format!(
                r#"{{"ts":"t","event":"x","hash":"{h}","prev":"{}"}}"#,
                "0".repeat(64)
            ),
            // a duplicated prev earlier in the object
            line.replacen("{", &format!(r#"{{"prev":"{h}","#), 1),
            // no ts
            line.replacen(r#""ts":"2026-11-29T21:00:00.000Z","#, "", 1),
        ] {
            match open(bad.as_bytes()) {
                Err(LineError::Unsealed(_)) => {}
                other => panic!("{bad:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn seal_adds_seal_len_bytes() {
        let o = obj("x");
        assert_eq!(seal(&o, &ChainHash::GENESIS).0.len(), o.len() + SEAL_LEN);
    }

    #[test]
    fn hex_is_lowercase_64_digits_only() {
        assert_eq!(
            ChainHash::parse_hex("0".repeat(64).as_bytes()),
            Some(ChainHash::GENESIS)
        );
        assert!(ChainHash::parse_hex("0".repeat(63).as_bytes()).is_none());
        assert!(ChainHash::parse_hex("A".repeat(64).as_bytes()).is_none());
        assert!(ChainHash::parse_hex("g".repeat(64).as_bytes()).is_none());
    }

    fn tail_of(bytes: &[u8]) -> Tail {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(bytes).unwrap();
        read_tail(&f, bytes.len() as u64).unwrap()
    }

    #[test]
    fn tail_finds_the_last_line_and_torn_bytes() {
        assert_eq!(tail_of(b""), Tail::default());
        let t = tail_of(b"one\ntwo\n");
        assert_eq!(t.complete_len, 8);
        assert_eq!(t.last_line.as_deref(), Some(&b"two"[..]));
        assert!(t.torn.is_empty());
        let t = tail_of(b"one\ntwo\nthr");
        assert_eq!(t.complete_len, 8);
        assert_eq!(t.last_line.as_deref(), Some(&b"two"[..]));
        assert_eq!(t.torn, b"thr");
        let t = tail_of(b"only\n");
        assert_eq!(t.last_line.as_deref(), Some(&b"only"[..]));
        let t = tail_of(b"partial");
        assert_eq!(t.complete_len, 0);
        assert_eq!(t.last_line, None);
        assert_eq!(t.torn, b"partial");
    }
}
