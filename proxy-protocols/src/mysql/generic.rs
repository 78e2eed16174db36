//! The generic response packets (OK, ERR, EOF), the auth exchange packets a
//! client may meet (AuthSwitchRequest, AuthMoreData) and the few commands
//! jitgate sends or inspects ("Generic Response Packets", "Connection
//! Phase Packets" and "Text Protocol" in the client/server protocol
//! documentation).
//!
//! Responsibility: write the ERR packets jitgate sends itself (a refusal,
//! the end of access), read the status flags of OK and EOF packets (to tell
//! whether more results follow), read a server error, an auth switch and the
//! user name of a COM_CHANGE_USER.
//!
//! Invariants: readers take a whole payload (already bounded by the caller)
//! or, for COM_CHANGE_USER, the part of it seen so far, and slice only
//! through checked accessors; texts jitgate writes are cut to what clients
//! accept (512 bytes).

use super::packet::{read_lenenc_int, split_nul};

/// First byte of an OK packet.
pub const OK_HEADER: u8 = 0x00;
/// First byte of an ERR packet.
pub const ERR_HEADER: u8 = 0xFF;
/// First byte of an EOF packet, an OK packet ending a result set
/// (`CLIENT_DEPRECATE_EOF`) and an AuthSwitchRequest.
pub const EOF_HEADER: u8 = 0xFE;
/// First byte of AuthMoreData.
pub const AUTH_MORE_DATA: u8 = 0x01;
/// First byte of a LOCAL INFILE request (the response to a query).
pub const LOCAL_INFILE_HEADER: u8 = 0xFB;

/// Server status flag: another result set follows this one.
pub const SERVER_MORE_RESULTS_EXISTS: u16 = 0x0008;

/// Longest error message clients keep (`MYSQL_ERRMSG_SIZE`).
pub const MAX_ERROR_MESSAGE: usize = 512;

/// Command bytes (the first byte of a command packet, sequence id 0).
pub mod command {
    /// Close the connection.
    pub const COM_QUIT: u8 = 0x01;
    /// Change the default database.
    pub const COM_INIT_DB: u8 = 0x02;
    /// A text query.
    pub const COM_QUERY: u8 = 0x03;
    /// List a table's columns (deprecated).
    pub const COM_FIELD_LIST: u8 = 0x04;
    /// Server statistics (one string answer).
    pub const COM_STATISTICS: u8 = 0x09;
    /// Kill a thread (deprecated; `KILL` is a query now).
    pub const COM_PROCESS_KILL: u8 = 0x0C;
    /// Log in again as another user on the same connection.
    pub const COM_CHANGE_USER: u8 = 0x11;
    /// Start a binary log stream.
    pub const COM_BINLOG_DUMP: u8 = 0x12;
    /// Register as a replica (before a binary log stream).
    pub const COM_REGISTER_SLAVE: u8 = 0x15;
    /// Prepare a statement.
    pub const COM_STMT_PREPARE: u8 = 0x16;
    /// Execute a prepared statement.
    pub const COM_STMT_EXECUTE: u8 = 0x17;
    /// Send a parameter's data in pieces (no answer).
    pub const COM_STMT_SEND_LONG_DATA: u8 = 0x18;
    /// Close a prepared statement (no answer).
    pub const COM_STMT_CLOSE: u8 = 0x19;
    /// Fetch rows of a cursor.
    pub const COM_STMT_FETCH: u8 = 0x1C;
    /// Start a binary log stream by GTID.
    pub const COM_BINLOG_DUMP_GTID: u8 = 0x1E;
    /// Reset the session, keeping the login.
    pub const COM_RESET_CONNECTION: u8 = 0x1F;
    /// MariaDB 10.2–10.5: several commands in one packet.
    pub const COM_MULTI: u8 = 0xFE;
}

/// A server error, as read from an ERR packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerError {
    /// Error number, e.g. 1045.
    pub code: u16,
    /// SQLSTATE, when the packet has one.
    pub sqlstate: Option<[u8; 5]>,
    /// Message text.
    pub message: Vec<u8>,
}

/// Appends an ERR payload. `sqlstate` is written only when given (a client
/// without `CLIENT_PROTOCOL_41` does not expect one); the message is cut to
/// [`MAX_ERROR_MESSAGE`] bytes on a character boundary.
pub fn encode_err(code: u16, sqlstate: Option<&str>, message: &str, out: &mut Vec<u8>) {
    out.push(ERR_HEADER);
    out.extend_from_slice(&code.to_le_bytes());
    if let Some(state) = sqlstate {
        let mut s = [b'0'; 5];
        for (d, c) in s.iter_mut().zip(state.bytes()) {
            *d = c;
        }
        out.push(b'#');
        out.extend_from_slice(&s);
    }
    let mut end = message.len().min(MAX_ERROR_MESSAGE);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    out.extend_from_slice(message.get(..end).unwrap_or_default().as_bytes());
}

/// Reads an ERR payload (protocol 4.1: with `#` and SQLSTATE when present).
pub fn parse_err(payload: &[u8]) -> Option<ServerError> {
    let (&ERR_HEADER, rest) = payload.split_first()? else {
        return None;
    };
    let (code, rest) = rest.split_first_chunk::<2>()?;
    let code = u16::from_le_bytes(*code);
    let (sqlstate, message) = match rest.split_first() {
        Some((b'#', tail)) => {
            let (state, msg) = tail.split_first_chunk::<5>()?;
            (Some(*state), msg)
        }
        _ => (None, rest),
    };
    Some(ServerError {
        code,
        sqlstate,
        message: message.to_vec(),
    })
}

/// The status flags of an OK packet (header `0x00`, or `0xFE` when it ends
/// a result set under `CLIENT_DEPRECATE_EOF`): after the header come the
/// affected rows and last insert id (length-encoded), then the status.
pub fn ok_status(payload: &[u8]) -> Option<u16> {
    let rest = payload.get(1..)?;
    let (_, a) = read_lenenc_int(rest)?;
    let rest = rest.get(a..)?;
    let (_, b) = read_lenenc_int(rest)?;
    let (status, _) = rest.get(b..)?.split_first_chunk::<2>()?;
    Some(u16::from_le_bytes(*status))
}

/// The status flags of a packet that ends a result set: a classic EOF
/// (`0xFE`, warnings, status: 5 bytes) or an OK packet with header `0xFE`.
pub fn end_of_rows_status(payload: &[u8]) -> Option<u16> {
    if payload.len() < 9 {
        let [_, _, _, s0, s1] = *payload.first_chunk::<5>()?;
        Some(u16::from_le_bytes([s0, s1]))
    } else {
        ok_status(payload)
    }
}

/// An AuthSwitchRequest payload (`0xFE`, plugin name, plugin data): the
/// plugin name and its data without the trailing NUL the servers add.
pub fn parse_auth_switch(payload: &[u8]) -> Option<(&[u8], &[u8])> {
    let (&EOF_HEADER, rest) = payload.split_first()? else {
        return None;
    };
    let (plugin, data) = split_nul(rest)?;
    Some((plugin, data.strip_suffix(&[0]).unwrap_or(data)))
}

/// What the start of a COM_CHANGE_USER payload says about its user name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeUserLogin<'a> {
    /// The user name (the bytes after the command byte up to the first NUL).
    User(&'a [u8]),
    /// No NUL yet: more of the payload is needed.
    NeedMore,
    /// The payload ended without a NUL, or is not a COM_CHANGE_USER.
    Malformed,
}

/// Reads the user name from the first bytes of a COM_CHANGE_USER payload;
/// `complete` says whether `head` is the whole payload.
pub fn change_user_login(head: &[u8], complete: bool) -> ChangeUserLogin<'_> {
    match head.split_first() {
        Some((&command::COM_CHANGE_USER, rest)) => match split_nul(rest) {
            Some((user, _)) => ChangeUserLogin::User(user),
            None if complete => ChangeUserLogin::Malformed,
            None => ChangeUserLogin::NeedMore,
        },
        None if !complete => ChangeUserLogin::NeedMore,
        _ => ChangeUserLogin::Malformed,
    }
}

/// Appends a COM_QUERY payload.
pub fn encode_query(sql: &str, out: &mut Vec<u8>) {
    out.push(command::COM_QUERY);
    out.extend_from_slice(sql.as_bytes());
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::mysql::fixtures::{
        MARIADB_ACCESS_DENIED_PACKET, MARIADB_AUTH_SWITCH_PACKET, MARIADB_OK_AFTER_AUTH_PACKET,
        MYSQL_ASYNC_CHANGE_USER,
    };

    #[test]
    fn err_round_trip_and_mysql_common_agrees() {
        let mut out = Vec::new();
        encode_err(1045, Some("28000"), "jitgate: no", &mut out);
        assert_eq!(out, b"\xff\x15\x04#28000jitgate: no");
        let e = parse_err(&out).unwrap();
        assert_eq!(
            (e.code, e.sqlstate, &e.message[..]),
            (1045, Some(*b"28000"), &b"jitgate: no"[..])
        );

        use mysql_common::packets::ErrPacket;
        use mysql_common::proto::MyDeserialize;
        let caps = mysql_common::constants::CapabilityFlags::CLIENT_PROTOCOL_41;
        let mut buf = mysql_common::io::ParseBuf(&out);
        let p = ErrPacket::deserialize(caps, &mut buf).unwrap();
        let ErrPacket::Error(se) = p else {
            panic!("not an error")
        };
        assert_eq!(se.error_code(), 1045);
        assert_eq!(se.message_str(), "jitgate: no");
    }

    #[test]
    fn err_without_sqlstate_for_old_clients_and_long_texts_are_cut() {
        let mut out = Vec::new();
        encode_err(1251, None, "old", &mut out);
        assert_eq!(out, b"\xff\xe3\x04old");
        let long = "é".repeat(400);
        let mut out = Vec::new();
        encode_err(1, Some("HY000"), &long, &mut out);
        assert_eq!(out.len(), 9 + 512);
        assert!(std::str::from_utf8(&out[9..]).is_ok());
    }

    #[test]
    fn real_server_packets() {
        let e = parse_err(&MARIADB_ACCESS_DENIED_PACKET[4..]).unwrap();
        assert_eq!(e.code, 1045);
        assert_eq!(e.sqlstate, Some(*b"28000"));
        assert!(e.message.starts_with(b"Access denied for user 'jg_alice'"));
        let (plugin, data) = parse_auth_switch(&MARIADB_AUTH_SWITCH_PACKET[4..]).unwrap();
        assert_eq!(plugin, b"mysql_native_password");
        assert_eq!(data.len(), 20);
        // OK after authentication with session tracking: status autocommit.
        assert_eq!(ok_status(&MARIADB_OK_AFTER_AUTH_PACKET[4..]), Some(0x4002));
    }

    #[test]
    fn end_of_rows_status_reads_both_forms() {
        assert_eq!(end_of_rows_status(b"\xfe\x00\x00\x0a\x00"), Some(0x000a));
        assert_eq!(
            end_of_rows_status(b"\xfe\x00\x00\x02\x00\x00\x00\x00\x00"),
            Some(0x0002)
        );
        assert_eq!(end_of_rows_status(b"\xfe\x00"), None);
    }

    #[test]
    fn mysql_async_change_user() {
        let payload = &MYSQL_ASYNC_CHANGE_USER[4..];
        assert_eq!(MYSQL_ASYNC_CHANGE_USER[3], 0, "a command: sequence id 0");
        assert_eq!(
            change_user_login(payload, true),
            ChangeUserLogin::User(b"jg_alice_ro")
        );
        // Already known from the first 13 bytes.
        assert_eq!(
            change_user_login(&payload[..13], false),
            ChangeUserLogin::User(b"jg_alice_ro")
        );
        assert_eq!(
            change_user_login(&payload[..12], false),
            ChangeUserLogin::NeedMore
        );
    }

    #[test]
    fn change_user_login_needs_the_nul() {
        assert_eq!(
            change_user_login(b"\x11bob\0rest", false),
            ChangeUserLogin::User(b"bob")
        );
        assert_eq!(
            change_user_login(b"\x11bo", false),
            ChangeUserLogin::NeedMore
        );
        assert_eq!(
            change_user_login(b"\x11bo", true),
            ChangeUserLogin::Malformed
        );
        assert_eq!(change_user_login(b"", false), ChangeUserLogin::NeedMore);
        assert_eq!(
            change_user_login(b"\x03x\0", true),
            ChangeUserLogin::Malformed
        );
    }

    proptest! {
        #[test]
        fn readers_never_panic(input in prop::collection::vec(any::<u8>(), 0..40), complete: bool) {
            let _ = parse_err(&input);
            let _ = ok_status(&input);
            let _ = end_of_rows_status(&input);
            let _ = parse_auth_switch(&input);
            let _ = change_user_login(&input, complete);
        }

        #[test]
        fn err_round_trips(code: u16, msg in "[a-zA-Z0-9 é:]{0,600}") {
            let mut out = Vec::new();
            encode_err(code, Some("HY000"), &msg, &mut out);
            let e = parse_err(&out).unwrap();
            prop_assert_eq!(e.code, code);
            prop_assert!(msg.as_bytes().starts_with(&e.message));
            prop_assert!(e.message.len() <= MAX_ERROR_MESSAGE);
        }
    }
}
