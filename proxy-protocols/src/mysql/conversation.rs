//! Whose turn it is in a relayed MySQL conversation, and so which sequence
//! id a packet jitgate injects must carry.
//!
//! Responsibility: follow the commands a client sends and the shape of the
//! server's answers (only the payload heads the [`super::PacketFramer`]
//! reports, never whole payloads) well enough to say, at any payload
//! boundary, what sequence id the client expects next. jitgate's final ERR
//! packet uses it: a client reads an ERR with the wrong id as a protocol
//! error ("packets out of sync") and never shows the reason.
//!
//! The rules ("Command Phase" in the protocol documentation):
//! - every command starts a new exchange with sequence id 0; the answer
//!   continues the count, so while the server answers, the client expects
//!   the id after the last packet it saw;
//! - when an answer is complete, the client is idle: its next command will
//!   be 0 and it will then expect 1, so an ERR given to an idle client
//!   carries 1;
//! - an answer is complete after: an OK or ERR as its first packet; the
//!   EOF (or `0xFE` OK) that ends the rows of the last result set (the first
//!   EOF ends the column definitions unless `CLIENT_DEPRECATE_EOF` is on); an
//!   ERR anywhere; the counted definitions after a COM_STMT_PREPARE OK; the
//!   one string of COM_STATISTICS. COM_STMT_CLOSE, COM_STMT_SEND_LONG_DATA
//!   and COM_QUIT get no answer at all;
//! - in an authentication exchange (the handshake, COM_CHANGE_USER) OK and
//!   ERR end it, an AuthSwitchRequest or AuthMoreData hands the turn to the
//!   client, except the caching_sha2 "fast auth done" byte, after which the
//!   server goes on to its OK.
//!
//! Invariant: only payload *heads* are inspected, and a head this module
//! cannot classify never makes it panic or loop; at worst the id is wrong
//! and the client shows a protocol error instead of the reason.

use super::framer::PayloadHead;
use super::generic::{
    command, end_of_rows_status, ok_status, AUTH_MORE_DATA, EOF_HEADER, ERR_HEADER,
    LOCAL_INFILE_HEADER, OK_HEADER, SERVER_MORE_RESULTS_EXISTS,
};
use super::packet::MAX_PACKET_PAYLOAD;

/// caching_sha2_password's AuthMoreData byte for "fast auth succeeded".
const FAST_AUTH_OK: u8 = 0x03;

/// Who speaks next, and with which sequence id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    /// The client sends next, starting at `next_seq`.
    Client {
        /// The id of the client's next packet.
        next_seq: u8,
    },
    /// The server sends next, with `next_seq`.
    Server {
        /// The id of the server's next packet.
        next_seq: u8,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Authentication (the handshake or a COM_CHANGE_USER).
    Auth,
    /// No command in progress.
    Idle,
    /// Waiting for the first packet of an answer.
    First,
    /// Inside a result set: column definitions and rows.
    Rows { eofs_seen: u8 },
    /// Waiting for the COM_STMT_PREPARE OK.
    PrepareFirst,
    /// This many packets remain of the answer.
    Counted { remaining: u32 },
    /// One packet answers (COM_STATISTICS).
    Single,
}

/// Follows one connection's conversation.
#[derive(Debug, Clone)]
pub struct Conversation {
    deprecate_eof: bool,
    phase: Phase,
    turn: Turn,
}

impl Conversation {
    /// A conversation in its authentication exchange, the server to answer
    /// with `next_server_seq` (2 after a HandshakeResponse). `deprecate_eof`
    /// is whether `CLIENT_DEPRECATE_EOF` was negotiated.
    pub fn in_auth(deprecate_eof: bool, next_server_seq: u8) -> Self {
        Conversation {
            deprecate_eof,
            phase: Phase::Auth,
            turn: Turn::Server {
                next_seq: next_server_seq,
            },
        }
    }

    /// Whose turn it is.
    pub fn turn(&self) -> Turn {
        self.turn
    }

    /// Whether the connection is between commands.
    pub fn idle(&self) -> bool {
        self.phase == Phase::Idle
    }

    /// The sequence id for an ERR packet jitgate sends the client now.
    pub fn farewell_seq(&self) -> u8 {
        match self.turn {
            // The client will send its packet, then read the answer.
            Turn::Client { next_seq } => next_seq.wrapping_add(1),
            Turn::Server { next_seq } => next_seq,
        }
    }

    /// A command is being sent but not yet whole: the client already waits
    /// for the answer to it (used when jitgate refuses it early).
    pub fn command_sent(&mut self) {
        self.phase = Phase::First;
        self.turn = Turn::Server { next_seq: 1 };
    }

    /// The client sent a whole payload.
    pub fn client_payload(&mut self, p: &PayloadHead) {
        let next = p.last_seq.wrapping_add(1);
        if p.seq != 0 {
            // Auth data or LOCAL INFILE data: the server answers.
            self.turn = Turn::Server { next_seq: next };
            return;
        }
        self.phase = match p.first_byte() {
            Some(
                command::COM_STMT_CLOSE | command::COM_STMT_SEND_LONG_DATA | command::COM_QUIT,
            ) => {
                self.phase = Phase::Idle;
                self.turn = Turn::Client { next_seq: 0 };
                return;
            }
            Some(command::COM_CHANGE_USER) => Phase::Auth,
            Some(
                command::COM_STMT_FETCH
                | command::COM_FIELD_LIST
                | command::COM_BINLOG_DUMP
                | command::COM_BINLOG_DUMP_GTID,
            ) => Phase::Rows { eofs_seen: 1 },
            Some(command::COM_STATISTICS) => Phase::Single,
            Some(command::COM_STMT_PREPARE) => Phase::PrepareFirst,
            _ => Phase::First,
        };
        self.turn = Turn::Server { next_seq: next };
    }

    /// The server sent a whole payload.
    pub fn server_payload(&mut self, p: &PayloadHead) {
        let next = p.last_seq.wrapping_add(1);
        let first = p.first_byte();
        let small = p.len < MAX_PACKET_PAYLOAD as u64;
        let done = match (self.phase, first) {
            (_, Some(ERR_HEADER)) => true,
            (Phase::Auth, Some(OK_HEADER)) => true,
            (Phase::Auth, Some(EOF_HEADER)) => {
                // AuthSwitchRequest: the client answers.
                self.turn = Turn::Client { next_seq: next };
                return;
            }
            (Phase::Auth, Some(AUTH_MORE_DATA)) => {
                if p.head() == [AUTH_MORE_DATA, FAST_AUTH_OK] {
                    self.turn = Turn::Server { next_seq: next };
                } else {
                    self.turn = Turn::Client { next_seq: next };
                }
                return;
            }
            (Phase::Auth, _) => false,
            (Phase::First, Some(OK_HEADER)) => !more_results(ok_status(p.head())),
            (Phase::First, Some(LOCAL_INFILE_HEADER)) => {
                // The client sends the file, then the server answers again.
                self.turn = Turn::Client { next_seq: next };
                return;
            }
            (Phase::First, _) => {
                // A column count: column definitions follow.
                self.phase = Phase::Rows { eofs_seen: 0 };
                false
            }
            (Phase::Rows { eofs_seen }, Some(EOF_HEADER)) if small => {
                if !self.deprecate_eof && eofs_seen == 0 {
                    self.phase = Phase::Rows { eofs_seen: 1 };
                    false
                } else if more_results(end_of_rows_status(p.head())) {
                    self.phase = Phase::First;
                    false
                } else {
                    true
                }
            }
            (Phase::Rows { .. }, _) => false,
            (Phase::PrepareFirst, Some(OK_HEADER)) => {
                let remaining = prepare_definitions(p.head(), self.deprecate_eof);
                if remaining == 0 {
                    true
                } else {
                    self.phase = Phase::Counted { remaining };
                    false
                }
            }
            (Phase::PrepareFirst, _) => true,
            (Phase::Counted { remaining }, _) => {
                let left = remaining.saturating_sub(1);
                self.phase = Phase::Counted { remaining: left };
                left == 0
            }
            (Phase::Single, _) => true,
            // Unsolicited (e.g. a server's goodbye): nothing to wait for.
            (Phase::Idle, _) => true,
        };
        if done {
            self.phase = Phase::Idle;
            self.turn = Turn::Client { next_seq: 0 };
        } else {
            self.turn = Turn::Server { next_seq: next };
        }
    }
}

fn more_results(status: Option<u16>) -> bool {
    status.is_some_and(|s| s & SERVER_MORE_RESULTS_EXISTS != 0)
}

/// Packets after a COM_STMT_PREPARE OK (`0x00`, statement id u32, columns
/// u16, parameters u16): the definitions, plus an EOF after each non-empty
/// group unless `CLIENT_DEPRECATE_EOF` is on.
fn prepare_definitions(head: &[u8], deprecate_eof: bool) -> u32 {
    let Some(&[_, _, _, _, _, c0, c1, p0, p1]) = head.first_chunk::<9>() else {
        return 0;
    };
    let cols = u32::from(u16::from_le_bytes([c0, c1]));
    let params = u32::from(u16::from_le_bytes([p0, p1]));
    let eofs = if deprecate_eof {
        0
    } else {
        u32::from(cols > 0) + u32::from(params > 0)
    };
    cols + params + eofs
}

#[cfg(test)]
mod tests;
