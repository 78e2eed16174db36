//! Tests for the SSH identification exchange: bytes captured from OpenSSH
//! 9.2 (client and server), every split point, hostile lines, the
//! disconnect packet OpenSSH was seen to print, and property tests.

use bytes::BytesMut;
use proptest::prelude::*;

use super::*;

/// What `ssh` (OpenSSH_9.2p1 Debian-2+deb12u10) sent first, captured on the
/// wire: its version line and the start of its KEXINIT packet, which it
/// sends right behind it.
const OPENSSH_CLIENT_FIRST_BYTES: &[u8] = b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u10\r\n\
\x00\x00\x06\x14\x08\x14\x97\x4c\x6a\x19\xc0\xa9\xad\x7e\xe9\x4f\x38\x64\x9d\x66\x66\x30\x00\x00";

/// What `sshd` of the same package sends when a connection opens.
const OPENSSH_SERVER_VERSION: &[u8] = b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u10\r\n";

/// The SSH_MSG_DISCONNECT OpenSSH 9.2's client was seen to print as
/// `Received disconnect from 127.0.0.1 port N:1: jitgate: no active access
/// grant for 127.0.0.1 on "bastion"`: 80 bytes; head and tail.
const DISCONNECT_HEAD: &[u8] = b"\x00\x00\x00\x4c\x04\x01\x00\x00\x00\x01\x00\x00\x00\x3ajitgate";
const DISCONNECT_TAIL: &[u8] = b"bastion\"\x00\x00\x00\x00\x00\x00\x00\x00";

fn decode_all(sender: Sender, bytes: &[u8]) -> (Vec<IdentLine>, Result<(), IdentError>, BytesMut) {
    let mut d = IdentDecoder::new(sender);
    let mut buf = BytesMut::from(bytes);
    let mut lines = Vec::new();
    loop {
        match d.decode(&mut buf) {
            Ok(Some(l @ IdentLine::Version(_))) => {
                lines.push(l);
                return (lines, Ok(()), buf);
            }
            Ok(Some(l)) => lines.push(l),
            Ok(None) => return (lines, Ok(()), buf),
            Err(e) => return (lines, Err(e), buf),
        }
    }
}

fn version(l: &IdentLine) -> &Identification {
    match l {
        IdentLine::Version(v) => v,
        other => panic!("expected a version line, got {other:?}"),
    }
}

#[test]
fn openssh_client_version_leaves_its_kexinit_in_the_buffer() {
    let (lines, res, rest) = decode_all(Sender::Client, OPENSSH_CLIENT_FIRST_BYTES);
    res.unwrap();
    assert_eq!(lines.len(), 1);
    let v = version(&lines[0]);
    assert_eq!(v.line(), "SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u10");
    assert_eq!(v.proto_version(), "2.0");
    assert_eq!(v.software_version(), "OpenSSH_9.2p1");
    assert_eq!(v.comments(), Some("Debian-2+deb12u10"));
    assert_eq!(&rest[..], &OPENSSH_CLIENT_FIRST_BYTES[41..]);
    assert_eq!(rest[5], 0x14, "SSH_MSG_KEXINIT follows");
    let mut again = BytesMut::new();
    v.encode(&mut again);
    assert_eq!(&again[..], &OPENSSH_CLIENT_FIRST_BYTES[..41]);
}

#[test]
fn every_split_point_waits_then_decodes_the_same() {
    for cut in 0..OPENSSH_CLIENT_FIRST_BYTES.len() {
        let mut d = IdentDecoder::new(Sender::Client);
        let mut buf = BytesMut::from(&OPENSSH_CLIENT_FIRST_BYTES[..cut]);
        let first = d.decode(&mut buf).unwrap();
        if cut < 41 {
            assert_eq!(first, None, "cut {cut}");
            assert_eq!(buf.len(), cut, "nothing consumed at cut {cut}");
            buf.extend_from_slice(&OPENSSH_CLIENT_FIRST_BYTES[cut..]);
            let l = d.decode(&mut buf).unwrap().unwrap();
            assert_eq!(version(&l).software_version(), "OpenSSH_9.2p1");
        } else {
            assert!(matches!(first, Some(IdentLine::Version(_))), "cut {cut}");
        }
        assert!(d.is_done());
        assert_eq!(d.decode(&mut buf), Err(IdentError::Done));
    }
}

#[test]
fn server_lines_before_the_version_are_passed_on_as_sent() {
    let mut bytes = Vec::new();
    bytes.extend_from_slice(b"Welcome to the bastion\r\n");
    bytes.extend_from_slice(b"bare LF line\n");
    bytes.extend_from_slice(b"\xc3\xa9t\xc3\xa9 UTF-8\r\n");
    bytes.extend_from_slice(OPENSSH_SERVER_VERSION);
    let (lines, res, rest) = decode_all(Sender::Server, &bytes);
    res.unwrap();
    assert!(rest.is_empty());
    assert_eq!(lines.len(), 4);
    assert_eq!(
        lines[0],
        IdentLine::Other(Bytes::from_static(b"Welcome to the bastion\r\n"))
    );
    assert_eq!(
        lines[1],
        IdentLine::Other(Bytes::from_static(b"bare LF line\n"))
    );
    assert_eq!(
        version(&lines[3]).line(),
        "SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u10"
    );
}

#[test]
fn a_client_line_before_the_version_is_refused_at_its_first_byte() {
    let (_, res, _) = decode_all(Sender::Client, b"H");
    assert_eq!(res, Err(IdentError::NotSsh));
    let (_, res, _) = decode_all(Sender::Client, b"GET / HTTP/1.1\r\n");
    assert_eq!(res, Err(IdentError::NotSsh));
    // Too short to be a version line.
    let (_, res, _) = decode_all(Sender::Client, b"SS\r\n");
    assert_eq!(res, Err(IdentError::NotSsh));
    // 300 bytes of text before a version line.
    let mut long = vec![b'x'; 300];
    long.extend_from_slice(b"\r\nSSH-2.0-x\r\n");
    let (_, res, _) = decode_all(Sender::Client, &long);
    assert_eq!(res, Err(IdentError::NotSsh));
}

#[test]
fn a_version_line_over_255_bytes_is_refused_before_its_end() {
    let mut line = b"SSH-2.0-x ".to_vec();
    line.resize(255, b'c');
    // 255 bytes without LF: cannot fit a terminator any more.
    let (_, res, _) = decode_all(Sender::Client, &line);
    assert_eq!(res, Err(IdentError::LineTooLong { limit: 255 }));
    // 253 + CR LF = 255: accepted.
    line.truncate(253);
    line.extend_from_slice(b"\r\n");
    let (lines, res, _) = decode_all(Sender::Client, &line);
    res.unwrap();
    assert_eq!(version(&lines[0]).line().len(), 253);
    // No newline at all but short: wait for more.
    let (lines, res, rest) = decode_all(Sender::Client, b"SSH-2.0-stalling");
    res.unwrap();
    assert!(lines.is_empty());
    assert_eq!(rest.len(), 16);
}

#[test]
fn server_limits_on_lines_before_the_version() {
    let line = vec![b'z'; MAX_PRE_VERSION_LINE];
    let (_, res, _) = decode_all(Sender::Server, &line);
    assert_eq!(
        res,
        Err(IdentError::LineTooLong {
            limit: MAX_PRE_VERSION_LINE
        })
    );
    let many = b"junk\r\n".repeat(MAX_PRE_VERSION_LINES + 1);
    let (lines, res, _) = decode_all(Sender::Server, &many);
    assert_eq!(res, Err(IdentError::TooManyLines));
    assert_eq!(lines.len(), MAX_PRE_VERSION_LINES);
    let big = [vec![b'y'; 8000], b"\r\n".to_vec()].concat().repeat(9);
    let (lines, res, _) = decode_all(Sender::Server, &big);
    assert_eq!(res, Err(IdentError::TooManyLines));
    assert_eq!(lines.len(), 8);
    let (_, res, _) = decode_all(Sender::Server, b"nul\0inside\r\n");
    assert!(matches!(res, Err(IdentError::Malformed(_))));
}

#[test]
fn malformed_version_lines() {
    let cases: &[(&[u8], &str)] = &[
        (b"SSH-1.5-OldClient\r\n", "unsupported"),
        (b"SSH-2.0\r\n", "malformed"),
        (b"SSH-2.0-\r\n", "malformed"),
        (b"SSH-2.0- comment\r\n", "malformed"),
        (b"SSH-2.0-x\tTab\r\n", "malformed"),
        (b"SSH-2.0-x\0\r\n", "malformed"),
        (b"SSH-2.0-x\rjunk\r\n", "malformed"),
        (b"SSH-2.0-\xff\r\n", "malformed"),
    ];
    for (bytes, want) in cases {
        let (_, res, _) = decode_all(Sender::Client, bytes);
        let got = match res {
            Err(IdentError::UnsupportedVersion(_)) => "unsupported",
            Err(IdentError::Malformed(_)) => "malformed",
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(bytes)),
        };
        assert_eq!(&got, want, "{:?}", String::from_utf8_lossy(bytes));
    }
    // 1.99 is SSH-2 (a server that also speaks SSH-1); a bare LF and a '-'
    // in the software version are accepted, as real peers send them.
    let (lines, res, _) = decode_all(Sender::Server, b"SSH-1.99-Cisco-1.25\n");
    res.unwrap();
    assert_eq!(version(&lines[0]).proto_version(), "1.99");
    assert_eq!(version(&lines[0]).software_version(), "Cisco-1.25");
    assert_eq!(version(&lines[0]).comments(), None);
    let mut again = BytesMut::new();
    version(&lines[0]).encode(&mut again);
    assert_eq!(&again[..], b"SSH-1.99-Cisco-1.25\n");
    let (lines, res, _) = decode_all(Sender::Client, b"SSH-2.0-JSCH-0.1.54\r\n");
    res.unwrap();
    assert_eq!(version(&lines[0]).software_version(), "JSCH-0.1.54");
}

#[test]
fn disconnect_matches_the_packet_openssh_printed() {
    let mut out = BytesMut::new();
    encode_disconnect(
        DisconnectReason::HostNotAllowedToConnect,
        "jitgate: no active access grant for 127.0.0.1 on \"bastion\"",
        &mut out,
    );
    assert_eq!(out.len(), 80);
    assert!(out.starts_with(DISCONNECT_HEAD), "{out:?}");
    assert!(out.ends_with(DISCONNECT_TAIL), "{out:?}");
}

#[test]
fn disconnect_is_padded_to_the_block_size_and_cut_to_400_bytes() {
    for len in 0..40 {
        let mut out = BytesMut::new();
        encode_disconnect(DisconnectReason::ByApplication, &"d".repeat(len), &mut out);
        assert_eq!(out.len() % 8, 0, "len {len}");
        let packet_len = u32::from_be_bytes([out[0], out[1], out[2], out[3]]) as usize;
        assert_eq!(packet_len + 4, out.len());
        let padding = out[4] as usize;
        assert!(
            (4..4 + 8).contains(&padding),
            "len {len}: padding {padding}"
        );
        assert_eq!(out[5], 1);
    }
    let mut out = BytesMut::new();
    encode_disconnect(DisconnectReason::ProtocolError, &"é".repeat(300), &mut out);
    let desc_len = u32::from_be_bytes([out[10], out[11], out[12], out[13]]) as usize;
    assert_eq!(desc_len, 400);
    assert!(std::str::from_utf8(&out[14..14 + desc_len]).is_ok());
}

#[test]
fn text_lines_cannot_pose_as_a_version_or_break_lines() {
    let mut out = BytesMut::new();
    encode_text_line("SSH-2.0-evil\r\nmore", &mut out);
    assert_eq!(&out[..], b" SSH-2.0-evil  more\r\n");
    let mut out = BytesMut::new();
    encode_text_line(&"x".repeat(2000), &mut out);
    assert_eq!(out.len(), 512);
    let (lines, res, _) = decode_all(Sender::Server, &out);
    res.unwrap();
    assert!(matches!(lines[0], IdentLine::Other(_)));
}

#[test]
fn our_identification_decodes() {
    let mut out = BytesMut::new();
    encode_identification("jitgate-0.1 beta", &mut out);
    assert_eq!(&out[..], b"SSH-2.0-jitgate_0.1_beta\r\n");
    let (lines, res, _) = decode_all(Sender::Server, &out);
    res.unwrap();
    assert_eq!(version(&lines[0]).software_version(), "jitgate_0.1_beta");
}

/// Whatever the input: no panic, and either nothing is consumed, or exactly
/// one line (ending in LF) is.
fn check_contract(sender: Sender, input: &[u8]) {
    let mut d = IdentDecoder::new(sender);
    let mut buf = BytesMut::from(input);
    let mut consumed = 0;
    for _ in 0..input.len() + 1 {
        let before = buf.len();
        match d.decode(&mut buf) {
            Ok(Some(l)) => {
                let used = before - buf.len();
                assert!(used > 0);
                assert_eq!(input[consumed + used - 1], b'\n');
                if let IdentLine::Other(b) = &l {
                    assert_eq!(b.len(), used);
                }
                consumed += used;
                if matches!(l, IdentLine::Version(_)) {
                    return;
                }
            }
            Ok(None) | Err(_) => {
                assert_eq!(buf.len(), before);
                return;
            }
        }
    }
}

fn ident_like() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b"SSH-".to_vec()),
        Just(b"2.0-".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"\n".to_vec()),
        Just(b" ".to_vec()),
        prop::collection::vec(any::<u8>(), 0..8),
        prop::collection::vec(b'a'..=b'z', 0..300),
    ];
    prop::collection::vec(piece, 0..12).prop_map(|v| v.concat())
}

proptest! {
    #[test]
    fn decode_never_panics_on_arbitrary_bytes(input in prop::collection::vec(any::<u8>(), 0..600)) {
        check_contract(Sender::Client, &input);
        check_contract(Sender::Server, &input);
    }

    #[test]
    fn decode_never_panics_on_identification_like_bytes(input in ident_like()) {
        check_contract(Sender::Client, &input);
        check_contract(Sender::Server, &input);
    }

    #[test]
    fn encoded_identifications_round_trip(sw in "[ -~]{1,80}") {
        let mut out = BytesMut::new();
        encode_identification(&sw, &mut out);
        let (lines, res, rest) = decode_all(Sender::Client, &out);
        prop_assert!(res.is_ok());
        prop_assert!(rest.is_empty());
        prop_assert_eq!(lines.len(), 1);
    }

    #[test]
    fn disconnect_packets_are_well_formed(desc in "\\PC{0,500}") {
        let mut out = BytesMut::new();
        encode_disconnect(DisconnectReason::HostNotAllowedToConnect, &desc, &mut out);
        prop_assert_eq!(out.len() % 8, 0);
        let packet_len = u32::from_be_bytes([out[0], out[1], out[2], out[3]]) as usize;
        prop_assert_eq!(packet_len + 4, out.len());
    }
}
