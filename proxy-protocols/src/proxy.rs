//! The PROXY protocol (HAProxy, versions 1 and 2): the header a load
//! balancer puts in front of a TCP stream to pass on the client's address.
//!
//! Responsibility: decode a header received from a trusted load balancer
//! ([`decode`], both versions) and encode a version 2 header for a backend
//! ([`encode_v2`]). Reference: "The PROXY protocol, Versions 1 & 2",
//! haproxy.org/download/2.9/doc/proxy-protocol.txt.
//!
//! Invariants:
//! - a header is at most [`MAX_V1_LEN`] bytes (version 1, CR LF included) or
//!   16 + [`MAX_V2_BODY`] bytes (version 2); the length is checked before
//!   waiting for more bytes;
//! - [`decode`] consumes exactly the header or nothing; the bytes after it
//!   belong to the proxied stream and stay in the buffer;
//! - [`bytes_wanted`] never asks for a byte past the header's end, so a
//!   caller reading from a socket can read exactly the header and hand the
//!   socket on untouched.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::{Buf, BufMut, BytesMut};

/// Longest version 1 header, CR LF included (the specification's bound).
pub const MAX_V1_LEN: usize = 107;

/// Shortest header of either version (`PROXY UNKNOWN\r\n`).
pub const MIN_LEN: usize = 15;

/// Largest version 2 body (addresses and TLVs) accepted. Load balancers send
/// a few TLVs (AWS: the VPC endpoint id; Azure: the link id); 4 KiB leaves
/// room and bounds what a peer can make us hold.
pub const MAX_V2_BODY: usize = 4096;

/// The 12-byte signature that starts a version 2 header.
pub const V2_SIGNATURE: [u8; 12] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
];

const V2_HEADER: usize = 16;
const V1_PREFIX: &[u8] = b"PROXY ";
const V2_CMD_LOCAL: u8 = 0x20;
const V2_CMD_PROXY: u8 = 0x21;
const FAM_TCP4: u8 = 0x11;
const FAM_TCP6: u8 = 0x21;
const V4_BLOCK: usize = 12;
const V6_BLOCK: usize = 36;

/// What a header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyHeader {
    /// The proxy's own connection (health check, `LOCAL`), or addresses the
    /// proxy does not know (`UNKNOWN`, unspecified or unix family): use the
    /// real endpoints of the connection.
    Local,
    /// A relayed TCP connection.
    Tcp {
        /// The client's address.
        source: SocketAddr,
        /// The address the client connected to.
        destination: SocketAddr,
    },
}

/// Why a header was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyError {
    /// Neither a version 1 nor a version 2 header.
    NotProxy,
    /// A version 1 line without CR LF within 107 bytes, or a version 2 body
    /// over [`MAX_V2_BODY`].
    TooLong,
    /// A header that breaks the specification.
    Malformed(&'static str),
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxyError::NotProxy => f.write_str("no PROXY protocol header"),
            ProxyError::TooLong => f.write_str("PROXY protocol header too long"),
            ProxyError::Malformed(m) => write!(f, "malformed PROXY protocol header: {m}"),
        }
    }
}

impl std::error::Error for ProxyError {}

enum Kind {
    V1,
    V2,
    Unknown,
}

fn kind(buf: &[u8]) -> Result<Kind, ProxyError> {
    let v1 = prefix_state(buf, V1_PREFIX);
    let v2 = prefix_state(buf, &V2_SIGNATURE);
    match (v1, v2) {
        (Some(true), _) => Ok(Kind::V1),
        (_, Some(true)) => Ok(Kind::V2),
        (Some(false), Some(false)) => Err(ProxyError::NotProxy),
        _ => Ok(Kind::Unknown),
    }
}

/// `Some(true)`: `buf` starts with `prefix`; `Some(false)`: it cannot;
/// `None`: too short to tell.
fn prefix_state(buf: &[u8], prefix: &[u8]) -> Option<bool> {
    let n = buf.len().min(prefix.len());
    if buf.get(..n) != prefix.get(..n) {
        Some(false)
    } else if n == prefix.len() {
        Some(true)
    } else {
        None
    }
}

/// How many more bytes may be read from the stream without reading past the
/// header's end; 0 once [`decode`] would not answer `Ok(None)`.
pub fn bytes_wanted(buf: &[u8]) -> usize {
    if buf.len() < MIN_LEN {
        return MIN_LEN - buf.len();
    }
    match kind(buf) {
        Ok(Kind::V2) => {
            let Some(&[hi, lo]) = buf.get(14..16) else {
                return V2_HEADER.saturating_sub(buf.len());
            };
            let body = usize::from(u16::from_be_bytes([hi, lo]));
            if body > MAX_V2_BODY {
                return 0;
            }
            (V2_HEADER + body).saturating_sub(buf.len())
        }
        // A version 1 line's end is only known when it arrives.
        Ok(Kind::V1) if !buf.contains(&b'\n') && buf.len() < MAX_V1_LEN => 1,
        _ => 0,
    }
}

/// Decode a header at the start of `buf`: `Ok(None)` when it is incomplete
/// (nothing consumed), otherwise the header, consumed from `buf`.
pub fn decode(buf: &mut BytesMut) -> Result<Option<ProxyHeader>, ProxyError> {
    match kind(buf)? {
        Kind::Unknown => Ok(None),
        Kind::V1 => decode_v1(buf),
        Kind::V2 => decode_v2(buf),
    }
}

fn decode_v1(buf: &mut BytesMut) -> Result<Option<ProxyHeader>, ProxyError> {
    let window = buf.get(..buf.len().min(MAX_V1_LEN)).unwrap_or_default();
    let Some(nl) = window.iter().position(|&b| b == b'\n') else {
        if buf.len() >= MAX_V1_LEN {
            return Err(ProxyError::TooLong);
        }
        return Ok(None);
    };
    let line = window
        .get(..nl)
        .and_then(|l| l.strip_suffix(b"\r"))
        .ok_or(ProxyError::Malformed("version 1 line must end in CR LF"))?;
    let line = std::str::from_utf8(line).map_err(|_| ProxyError::Malformed("not ASCII"))?;
    let mut parts = line.split(' ');
    let _proxy = parts.next();
    let header = match parts.next() {
        Some("UNKNOWN") => ProxyHeader::Local,
        Some(proto @ ("TCP4" | "TCP6")) => {
            let v6 = proto == "TCP6";
            let src = parse_ip(parts.next(), v6)?;
            let dst = parse_ip(parts.next(), v6)?;
            let sport = parse_port(parts.next())?;
            let dport = parse_port(parts.next())?;
            if parts.next().is_some() {
                return Err(ProxyError::Malformed("extra fields"));
            }
            ProxyHeader::Tcp {
                source: SocketAddr::new(src, sport),
                destination: SocketAddr::new(dst, dport),
            }
        }
        _ => return Err(ProxyError::Malformed("unknown protocol")),
    };
    buf.advance(nl + 1);
    Ok(Some(header))
}

fn parse_ip(s: Option<&str>, v6: bool) -> Result<IpAddr, ProxyError> {
    let s = s.ok_or(ProxyError::Malformed("missing address"))?;
    let ip = if v6 {
        s.parse::<Ipv6Addr>().map(IpAddr::V6)
    } else {
        s.parse::<Ipv4Addr>().map(IpAddr::V4)
    };
    ip.map_err(|_| ProxyError::Malformed("bad address"))
}

fn parse_port(s: Option<&str>) -> Result<u16, ProxyError> {
    let s = s.ok_or(ProxyError::Malformed("missing port"))?;
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ProxyError::Malformed("bad port"));
    }
    s.parse().map_err(|_| ProxyError::Malformed("bad port"))
}

fn decode_v2(buf: &mut BytesMut) -> Result<Option<ProxyHeader>, ProxyError> {
    let Some(&[ver_cmd, fam, hi, lo]) = buf.get(12..16) else {
        return Ok(None);
    };
    if ver_cmd >> 4 != 2 {
        return Err(ProxyError::Malformed(
            "version 2 header with another version",
        ));
    }
    if ver_cmd != V2_CMD_LOCAL && ver_cmd != V2_CMD_PROXY {
        return Err(ProxyError::Malformed("unknown command"));
    }
    let body_len = usize::from(u16::from_be_bytes([hi, lo]));
    if body_len > MAX_V2_BODY {
        return Err(ProxyError::TooLong);
    }
    let Some(body) = buf.get(V2_HEADER..V2_HEADER + body_len) else {
        return Ok(None);
    };
    let header = if ver_cmd == V2_CMD_LOCAL {
        ProxyHeader::Local
    } else {
        match fam {
            FAM_TCP4 => {
                let b = body
                    .get(..V4_BLOCK)
                    .ok_or(ProxyError::Malformed("address block too short"))?;
                let ip = |o: usize| -> IpAddr {
                    let mut a = [0u8; 4];
                    a.copy_from_slice(b.get(o..o + 4).unwrap_or(&[0; 4]));
                    IpAddr::V4(Ipv4Addr::from(a))
                };
                ProxyHeader::Tcp {
                    source: SocketAddr::new(ip(0), port_at(b, 8)),
                    destination: SocketAddr::new(ip(4), port_at(b, 10)),
                }
            }
            FAM_TCP6 => {
                let b = body
                    .get(..V6_BLOCK)
                    .ok_or(ProxyError::Malformed("address block too short"))?;
                let ip = |o: usize| -> IpAddr {
                    let mut a = [0u8; 16];
                    a.copy_from_slice(b.get(o..o + 16).unwrap_or(&[0; 16]));
                    IpAddr::V6(Ipv6Addr::from(a))
                };
                ProxyHeader::Tcp {
                    source: SocketAddr::new(ip(0), port_at(b, 32)),
                    destination: SocketAddr::new(ip(16), port_at(b, 34)),
                }
            }
            // UNSPEC, UNIX, and datagram families: the specification says
            // to use the real connection endpoints.
            _ => ProxyHeader::Local,
        }
    };
    buf.advance(V2_HEADER + body_len);
    Ok(Some(header))
}

fn port_at(b: &[u8], at: usize) -> u16 {
    match b.get(at..at + 2) {
        Some(&[hi, lo]) => u16::from_be_bytes([hi, lo]),
        _ => 0,
    }
}

/// Append a version 2 `PROXY` header for a TCP connection from `source` to
/// `destination`. Both are sent as IPv4 when both are IPv4 (IPv4-mapped
/// IPv6 addresses count as IPv4), otherwise as IPv6.
pub fn encode_v2(source: SocketAddr, destination: SocketAddr, out: &mut BytesMut) {
    let (s, d) = (source.ip().to_canonical(), destination.ip().to_canonical());
    out.put_slice(&V2_SIGNATURE);
    out.put_u8(V2_CMD_PROXY);
    match (s, d) {
        (IpAddr::V4(s4), IpAddr::V4(d4)) => {
            out.put_u8(FAM_TCP4);
            out.put_u16(V4_BLOCK as u16);
            out.put_slice(&s4.octets());
            out.put_slice(&d4.octets());
        }
        _ => {
            out.put_u8(FAM_TCP6);
            out.put_u16(V6_BLOCK as u16);
            out.put_slice(&to_v6(s).octets());
            out.put_slice(&to_v6(d).octets());
        }
    }
    out.put_u16(source.port());
    out.put_u16(destination.port());
}

fn to_v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(a) => a.to_ipv6_mapped(),
        IpAddr::V6(a) => a,
    }
}

#[cfg(test)]
mod tests;
