//! Tests for the turn tracker: the real MariaDB login and result set, and
//! hand-built answers for every shape the rules name.

use proptest::prelude::*;

use super::*;
use crate::mysql::fixtures::{
    CLI_QUERY_SELECT_1, CLI_QUIT, MARIADB_AUTH_SWITCH_PACKET, MARIADB_CHANGE_USER_OK,
    MARIADB_CHANGE_USER_SWITCH, MARIADB_OK_AFTER_AUTH_PACKET, MARIADB_RESULT_SET,
    MARIADB_RESULT_SET_DEPRECATE_EOF, MYSQL_ASYNC_CHANGE_USER, MYSQL_ASYNC_CHANGE_USER_ANSWER,
    MYSQL_ASYNC_SELECT_1,
};
use crate::mysql::PacketFramer;

fn head(seq: u8, payload: &[u8]) -> PayloadHead {
    PayloadHead::from_payload(seq, payload)
}

/// Feed a server stream through a framer; the farewell id after each payload.
fn server_stream(c: &mut Conversation, stream: &[u8]) -> Vec<u8> {
    let mut f = PacketFramer::new(32);
    let mut ids = Vec::new();
    f.feed(stream, |p| {
        c.server_payload(p);
        ids.push(c.farewell_seq());
    });
    ids
}

fn query(c: &mut Conversation) {
    c.client_payload(&head(0, b"\x03SELECT 1"));
    assert_eq!(c.farewell_seq(), 1);
}

#[test]
fn login_with_an_auth_switch() {
    let mut c = Conversation::in_auth(false, 2);
    assert_eq!(c.farewell_seq(), 2, "the client waits for the server's 2");
    assert_eq!(server_stream(&mut c, MARIADB_AUTH_SWITCH_PACKET), [4]);
    assert_eq!(c.turn(), Turn::Client { next_seq: 3 });
    c.client_payload(&head(3, &[7; 20]));
    assert_eq!(c.farewell_seq(), 4);
    assert_eq!(server_stream(&mut c, MARIADB_OK_AFTER_AUTH_PACKET), [1]);
    assert!(c.idle());
}

#[test]
fn real_result_set_without_deprecate_eof() {
    let mut c = Conversation::in_auth(false, 2);
    c.server_payload(&head(2, b"\x00\x00\x00\x02\x00\x00\x00"));
    query(&mut c);
    // count, def, def, EOF, row: the client expects the next id; after the
    // final EOF it is idle.
    assert_eq!(
        server_stream(&mut c, MARIADB_RESULT_SET),
        [2, 3, 4, 5, 6, 1]
    );
    assert!(c.idle());
}

#[test]
fn deprecate_eof_result_set_ends_with_an_fe_ok() {
    let mut c = Conversation::in_auth(true, 2);
    c.server_payload(&head(2, b"\x00\x00\x00\x02\x00\x00\x00"));
    query(&mut c);
    c.server_payload(&head(1, b"\x01"));
    c.server_payload(&head(2, b"\x03def\x00\x00\x00\x01a"));
    c.server_payload(&head(3, b"\x011"));
    assert_eq!(c.farewell_seq(), 4);
    c.server_payload(&head(4, b"\xfe\x00\x00\x02\x00\x00\x00"));
    assert!(c.idle());
    assert_eq!(c.farewell_seq(), 1);
}

#[test]
fn more_results_keep_the_answer_open() {
    let mut c = Conversation::in_auth(false, 2);
    c.server_payload(&head(2, b"\x00\x00\x00\x02\x00\x00\x00"));
    query(&mut c);
    // OK with SERVER_MORE_RESULTS_EXISTS, then a result set whose final EOF
    // also says more results, then a last OK.
    c.server_payload(&head(1, b"\x00\x01\x00\x0a\x00\x00\x00"));
    assert_eq!(c.farewell_seq(), 2);
    c.server_payload(&head(2, b"\x01"));
    c.server_payload(&head(3, b"\x03def"));
    c.server_payload(&head(4, b"\xfe\x00\x00\x0a\x00"));
    c.server_payload(&head(5, b"\x011"));
    c.server_payload(&head(6, b"\xfe\x00\x00\x0a\x00"));
    assert!(!c.idle());
    assert_eq!(c.farewell_seq(), 7);
    c.server_payload(&head(7, b"\x00\x00\x00\x02\x00\x00\x00"));
    assert!(c.idle());
}

#[test]
fn an_error_ends_any_answer() {
    let mut c = Conversation::in_auth(false, 2);
    c.server_payload(&head(2, b"\x00\x00\x00\x02\x00\x00\x00"));
    query(&mut c);
    c.server_payload(&head(1, b"\x01"));
    c.server_payload(&head(2, b"\x03def"));
    c.server_payload(&head(
        3,
        b"\xff\x25\x05#70100Query execution was interrupted",
    ));
    assert!(c.idle());
}

#[test]
fn a_huge_row_starting_with_fe_is_not_an_eof() {
    let mut c = Conversation::in_auth(true, 2);
    c.server_payload(&head(2, b"\x00\x00\x00\x02\x00\x00\x00"));
    query(&mut c);
    c.server_payload(&head(1, b"\x01"));
    c.server_payload(&head(2, b"\x03def"));
    let mut row = head(3, b"\xfe\x00\x00\x40\x01\x00\x00\x00\x00");
    row.len = 20_000_009;
    row.last_seq = 4;
    c.server_payload(&row);
    assert!(!c.idle());
    assert_eq!(c.farewell_seq(), 5);
}

#[test]
fn prepare_counts_its_definitions() {
    let mut c = Conversation::in_auth(false, 2);
    c.server_payload(&head(2, b"\x00\x00\x00\x02\x00\x00\x00"));
    c.client_payload(&head(0, b"\x16SELECT ?, ?"));
    // statement 1, 1 column, 2 parameters: 2 + EOF + 1 + EOF.
    c.server_payload(&head(
        1,
        b"\x00\x01\x00\x00\x00\x01\x00\x02\x00\x00\x00\x00",
    ));
    for seq in 2..6 {
        assert!(!c.idle());
        c.server_payload(&head(seq, b"\x03def"));
    }
    c.server_payload(&head(6, b"\xfe\x00\x00\x02\x00"));
    assert!(c.idle());
    // Closing it gets no answer: the client is idle at once.
    c.client_payload(&head(0, b"\x19\x01\x00\x00\x00"));
    assert!(c.idle());
    assert_eq!(c.farewell_seq(), 1);
}

#[test]
fn change_user_exchange() {
    let mut c = Conversation::in_auth(false, 2);
    c.server_payload(&head(2, b"\x00\x00\x00\x02\x00\x00\x00"));
    c.client_payload(&head(0, b"\x11bob\x00"));
    assert_eq!(c.farewell_seq(), 1);
    c.server_payload(&head(1, b"\xfemysql_native_password\x00abc"));
    assert_eq!(c.turn(), Turn::Client { next_seq: 2 });
    assert_eq!(c.farewell_seq(), 3);
    c.client_payload(&head(2, &[1; 20]));
    c.server_payload(&head(3, b"\x00\x00\x00\x02\x00\x00\x00"));
    assert!(c.idle());
}

#[test]
fn caching_sha2_fast_and_full_paths() {
    let mut c = Conversation::in_auth(true, 2);
    c.server_payload(&head(2, b"\xfecaching_sha2_password\x00abc"));
    c.client_payload(&head(3, &[1; 32]));
    c.server_payload(&head(4, b"\x01\x03"));
    assert_eq!(c.turn(), Turn::Server { next_seq: 5 });
    c.server_payload(&head(5, b"\x00\x00\x00\x02\x00\x00\x00"));
    assert!(c.idle());

    let mut c = Conversation::in_auth(true, 2);
    c.server_payload(&head(2, b"\x01\x04"));
    assert_eq!(c.turn(), Turn::Client { next_seq: 3 });
}

/// Feed a client stream through a framer.
fn client_stream(c: &mut Conversation, stream: &[u8]) {
    let mut f = PacketFramer::new(MAX_HEAD_FOR_TESTS);
    f.feed(stream, |p| c.client_payload(p));
}

const MAX_HEAD_FOR_TESTS: usize = crate::mysql::MAX_HEAD;

#[test]
fn real_cli_commands() {
    let mut c = Conversation::in_auth(false, 2);
    c.server_payload(&head(2, b"\x00\x00\x00\x02\x00\x00\x00"));
    client_stream(&mut c, CLI_QUERY_SELECT_1);
    assert_eq!(c.turn(), Turn::Server { next_seq: 1 });
    c.server_payload(&head(1, b"\x00\x00\x00\x02\x00\x00\x00"));
    client_stream(&mut c, CLI_QUIT);
    assert!(c.idle());
}

#[test]
fn real_mysql_async_query_and_change_of_user() {
    let mut c = Conversation::in_auth(true, 2);
    c.server_payload(&head(2, b"\x00\x00\x00\x02\x00\x00\x00"));
    client_stream(&mut c, MYSQL_ASYNC_SELECT_1);
    assert_eq!(
        server_stream(&mut c, MARIADB_RESULT_SET_DEPRECATE_EOF),
        [2, 3, 4, 1]
    );
    client_stream(&mut c, MYSQL_ASYNC_CHANGE_USER);
    assert_eq!(c.farewell_seq(), 1);
    assert_eq!(server_stream(&mut c, MARIADB_CHANGE_USER_SWITCH), [3]);
    client_stream(&mut c, MYSQL_ASYNC_CHANGE_USER_ANSWER);
    assert_eq!(c.farewell_seq(), 3);
    assert_eq!(server_stream(&mut c, MARIADB_CHANGE_USER_OK), [1]);
    assert!(c.idle());
}

#[test]
fn a_command_refused_before_it_is_whole_still_expects_1() {
    let mut c = Conversation::in_auth(false, 2);
    c.server_payload(&head(2, b"\x00\x00\x00\x02\x00\x00\x00"));
    c.command_sent();
    assert_eq!(c.farewell_seq(), 1);
}

proptest! {
    #[test]
    fn any_sequence_of_heads_is_handled(
        deprecate: bool,
        events in prop::collection::vec((any::<bool>(), any::<u8>(), prop::collection::vec(any::<u8>(), 0..24), any::<u64>()), 0..40),
    ) {
        let mut c = Conversation::in_auth(deprecate, 2);
        for (from_client, seq, bytes, len) in events {
            let mut h = head(seq, &bytes);
            h.len = len.max(bytes.len() as u64);
            if from_client { c.client_payload(&h) } else { c.server_payload(&h) }
            let _ = c.farewell_seq();
        }
    }
}
