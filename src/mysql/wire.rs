//! What the relay needs to know of MySQL ([`Wire`] for the client/server
//! protocol after jitgate's part of the handshake).
//!
//! - Until the backend's OK (or ERR) ends authentication, its packets are
//!   taken whole (at most 64 KiB each) and forwarded: the
//!   AuthSwitchRequest jitgate provoked, AuthMoreData, then OK. When only
//!   one leg uses TLS, its SSLRequest took one sequence id the other leg
//!   never saw: during authentication the sequence ids are renumbered by
//!   that difference in both directions (the only bytes jitgate changes);
//!   commands start again at 0, so afterwards nothing is renumbered.
//! - After it, both directions are only *framed* ([`PacketFramer`]):
//!   payload boundaries (a payload of 16 MiB or more spans several packets,
//!   and nothing may be placed between them) and each payload's first bytes.
//! - Client → backend: every command starts with sequence id 0, and only
//!   commands can change who the session is. A COM_CHANGE_USER is held until
//!   its user name is known; the new login must be one the session's own
//!   grant admits (and, with `identity = "certificate"`, one the client
//!   certificate names), or the session ends with the reason
//!   [`EndReason::LoginDenied`] and the command never reaches the backend.
//!   COM_MULTI (MariaDB 10.2–10.5, never negotiated here) could carry a
//!   hidden COM_CHANGE_USER and ends the session too. Because jitgate never
//!   offers `CLIENT_LOCAL_FILES`, no client packet with sequence id 0 is
//!   anything but a command. The check also applies during authentication
//!   (a command pipelined before the OK would otherwise slip through).
//! - The final ERR ([`Wire::farewell`]) carries the sequence id the client
//!   expects ([`Conversation`]), error 1927 / SQLSTATE 70100 (1045 / 28000
//!   for a refused login, 2013 / HY000 when the backend failed) and the
//!   reason in the text.
//! - On an enforced end, `KILL CONNECTION` on a side connection stops what
//!   the backend thread was running ([`super::kill`]); on any other end
//!   (the client went away, a protocol error) too, when a command was still
//!   being answered, so no statement outlives its session.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::BytesMut;
use proxy_protocols::mysql::{
    self as my, generic::command, ChangeUserLogin, Conversation, PacketFramer, PayloadHead,
    MAX_HEAD,
};

use super::codes;
use super::kill::{kill_connection, KillTarget};
use crate::ending::{ClientText, EndReason};
use crate::relay::{Boundaries, EndAction, UpVerdict, Wire, WireError};
use crate::sessions::Session;

/// Bytes of each backend payload kept by the framer: enough for an OK
/// packet's status flags.
const DOWN_HEAD: usize = 32;

/// Called when a COM_CHANGE_USER to another login of the same grant is let
/// through (to audit it); an error refuses it (fail closed).
pub type LoginChanged = Box<dyn Fn(&Session, &str) -> std::io::Result<()> + Send>;

/// MySQL's [`Wire`].
pub struct MyWire {
    session: Arc<Session>,
    authed: bool,
    /// The client sent COM_QUIT.
    quit: bool,
    // Boxed: each framer holds the head of the current payload, and the
    // wire is moved into (and kept by) every session's relay task.
    up: Box<PacketFramer>,
    down: Box<PacketFramer>,
    conv: Conversation,
    /// The command in progress was already judged (from its head).
    up_judged: bool,
    kill: Option<KillTarget>,
    /// The end action ran (the backend thread is being killed already).
    kill_started: bool,
    on_login_changed: LoginChanged,
    /// Client sequence id minus backend sequence id during authentication
    /// (wrapping; 0 when both legs or neither use TLS).
    shift: u8,
    up_seq: SeqFix,
    /// With `identity = "certificate"`: the logins the client certificate
    /// names; a COM_CHANGE_USER to any other ends the session.
    cert_names: Option<Vec<String>>,
}

/// Finds the sequence-id byte of each client packet in a byte stream, to
/// renumber it (see the module header).
#[derive(Debug, Default)]
struct SeqFix {
    /// Length bytes of the current header seen so far.
    len: [u8; 3],
    seen: usize,
    /// Payload bytes of the current packet still to come.
    remaining: usize,
}

impl SeqFix {
    /// Walk `bytes`, subtracting `shift` from every sequence id in them.
    fn apply(&mut self, bytes: &mut [u8], shift: u8) {
        for b in bytes {
            if self.remaining > 0 {
                self.remaining -= 1;
            } else if let Some(slot) = self.len.get_mut(self.seen) {
                *slot = *b;
                self.seen += 1;
            } else {
                *b = b.wrapping_sub(shift);
                let [l0, l1, l2] = self.len;
                self.remaining = usize::from(l0) | usize::from(l1) << 8 | usize::from(l2) << 16;
                self.seen = 0;
            }
        }
    }
}

impl MyWire {
    /// A wire for `session`, whose backend has been sent the login and will
    /// answer with sequence id `backend_next` (2, or 3 over TLS), while the
    /// client expects `client_next` (likewise).
    pub fn new(
        session: Arc<Session>,
        deprecate_eof: bool,
        kill: Option<KillTarget>,
        on_login_changed: LoginChanged,
        (client_next, backend_next): (u8, u8),
        cert_names: Option<Vec<String>>,
    ) -> Self {
        MyWire {
            session,
            authed: false,
            quit: false,
            up: Box::new(PacketFramer::new(MAX_HEAD)),
            down: Box::new(PacketFramer::new(DOWN_HEAD)),
            conv: Conversation::in_auth(deprecate_eof, client_next),
            up_judged: false,
            kill,
            kill_started: false,
            on_login_changed,
            shift: client_next.wrapping_sub(backend_next),
            up_seq: SeqFix::default(),
            cert_names,
        }
    }
}

/// What a client payload (whole or begun) means for the session.
enum Judgement {
    Pass,
    Wait,
    End(EndReason),
}

/// Judge a client payload from its head. `complete`: the head is all of
/// the payload there will be (the payload ended, or its head is full).
fn judge(
    session: &Session,
    on_login_changed: &LoginChanged,
    cert_names: Option<&[String]>,
    p: &PayloadHead,
    complete: bool,
) -> Judgement {
    if p.seq != 0 {
        return Judgement::Pass;
    }
    match p.first_byte() {
        None if complete => Judgement::Pass,
        None => Judgement::Wait,
        Some(command::COM_MULTI) => Judgement::End(EndReason::Error),
        // Replication through a grant would stream every change on the
        // server out; refused whoever asks, as PostgreSQL's is.
        Some(
            command::COM_REGISTER_SLAVE | command::COM_BINLOG_DUMP | command::COM_BINLOG_DUMP_GTID,
        ) => Judgement::End(EndReason::Refused("replication (binary log streaming)")),
        Some(command::COM_CHANGE_USER) => match my::change_user_login(p.head(), complete) {
            ChangeUserLogin::NeedMore => Judgement::Wait,
            ChangeUserLogin::Malformed => Judgement::End(EndReason::Error),
            ChangeUserLogin::User(user) => {
                let login = String::from_utf8_lossy(user);
                let grant = &session.grant;
                let admitted = std::str::from_utf8(user).is_ok()
                    && grant.logins.iter().any(|l| *l == login)
                    && cert_names.is_none_or(|names| names.iter().any(|n| *n == login))
                    && grant.is_live(SystemTime::now());
                if !admitted {
                    return Judgement::End(EndReason::LoginDenied {
                        login: login.into_owned(),
                    });
                }
                if login != session.login {
                    if let Err(e) = on_login_changed(session, &login) {
                        tracing::error!(session = %session.id, error = %e, "audit log unavailable: change of user refused");
                        return Judgement::End(EndReason::Error);
                    }
                }
                Judgement::Pass
            }
        },
        Some(_) => Judgement::Pass,
    }
}

impl Wire for MyWire {
    fn in_handshake(&self) -> bool {
        !self.authed
    }

    fn handshake_down(
        &mut self,
        input: &mut BytesMut,
        out: &mut BytesMut,
    ) -> Result<(), WireError> {
        while !self.authed {
            let Some(p) = my::decode_packet(input, super::MAX_HANDSHAKE_PACKET)
                .map_err(|e| WireError(format!("authentication packet: {e}")))?
            else {
                break;
            };
            let seq = p.seq.wrapping_add(self.shift);
            self.conv
                .server_payload(&PayloadHead::from_payload(seq, &p.payload));
            my::encode_packet(seq, &p.payload, out);
            // OK or ERR ends the exchange; what follows is framed raw.
            self.authed = self.conv.idle();
        }
        Ok(())
    }

    fn feed_down(&mut self, chunk: &[u8]) -> Result<Boundaries, WireError> {
        let conv = &mut self.conv;
        let b = self.down.feed(chunk, |p| conv.server_payload(p));
        Ok(Boundaries {
            first: b.first,
            last: b.last,
        })
    }

    fn down_at_boundary(&self) -> bool {
        self.down.at_boundary()
    }

    fn inspect_up(&mut self, pending: &[u8], new: usize) -> UpVerdict {
        self.judge_up(pending, new)
    }

    fn client_ended(&self) -> bool {
        self.quit
    }

    fn rewrite_up(&mut self, new: &mut [u8]) {
        // After judging: the conversation follows the client's own ids.
        if self.shift != 0 && !self.authed {
            self.up_seq.apply(new, self.shift);
        }
    }

    fn farewell(&mut self, session: &Session, reason: &EndReason) -> Option<Vec<u8>> {
        let text = ClientText {
            reason,
            resource: &session.resource,
        }
        .to_string();
        let (code, state) = match reason {
            EndReason::LoginDenied { .. } => codes::ACCESS_DENIED,
            EndReason::Refused(_) => codes::SPECIFIC_ACCESS_DENIED,
            EndReason::Backend => codes::SERVER_LOST,
            _ => codes::CONNECTION_KILLED,
        };
        let mut payload = Vec::with_capacity(text.len() + 9);
        my::encode_err(code, Some(state), &text, &mut payload);
        let mut out = BytesMut::with_capacity(payload.len() + my::HEADER_LEN);
        my::encode_packet(self.conv.farewell_seq(), &payload, &mut out);
        Some(out.to_vec())
    }

    fn end_action(&mut self) -> Option<EndAction> {
        let done = self.spawn_kill()?;
        Some(Box::pin(async move {
            let _ = done.await;
        }))
    }
}

impl MyWire {
    /// [`Wire::inspect_up`] before any renumbering.
    fn judge_up(&mut self, pending: &[u8], new: usize) -> UpVerdict {
        let chunk = pending
            .get(pending.len().saturating_sub(new)..)
            .unwrap_or_default();
        let mut ended: Option<EndReason> = None;
        let (session, hook, names, conv, judged, quit) = (
            &self.session,
            &self.on_login_changed,
            self.cert_names.as_deref(),
            &mut self.conv,
            &mut self.up_judged,
            &mut self.quit,
        );
        self.up.feed(chunk, |p| {
            conv.client_payload(p);
            // A command (sequence id 0) of one byte: COM_QUIT.
            if p.seq == 0 && p.len == 1 && p.first_byte() == Some(my::generic::command::COM_QUIT) {
                *quit = true;
            }
            if ended.is_none() && !*judged {
                if let Judgement::End(r) = judge(session, hook, names, p, true) {
                    ended = Some(r);
                }
            }
            *judged = false;
        });
        if let Some(r) = ended {
            return UpVerdict::End(r);
        }
        // A payload still arriving: judge it as soon as its head allows.
        if let Some(p) = self.up.current() {
            if !self.up_judged {
                let full = p.head().len() >= MAX_HEAD;
                let names = self.cert_names.as_deref();
                match judge(&self.session, &self.on_login_changed, names, p, full) {
                    Judgement::Pass => self.up_judged = true,
                    Judgement::Wait => return UpVerdict::Hold,
                    Judgement::End(r) => {
                        // The client has sent the command and waits for
                        // its answer, which will be the farewell.
                        self.conv.command_sent();
                        return UpVerdict::End(r);
                    }
                }
            }
        }
        UpVerdict::Pass
    }
}

impl MyWire {
    /// Start `KILL CONNECTION` for the session's backend thread, once.
    /// Spawned, not just awaited: if the relay's finish budget runs out
    /// first (a loaded server), the KILL still happens.
    fn spawn_kill(&mut self) -> Option<tokio::task::JoinHandle<()>> {
        if self.kill_started {
            return None;
        }
        let t = self.kill.clone()?;
        self.kill_started = true;
        let session = self.session.id;
        Some(t.tracker.clone().spawn(async move {
            match kill_connection(&t).await {
                Ok(()) => {
                    tracing::debug!(%session, thread = t.connection_id, "backend thread killed")
                }
                Err(e) => {
                    tracing::warn!(%session, thread = t.connection_id, error = %e, "could not kill the backend thread")
                }
            }
        }))
    }
}

impl Drop for MyWire {
    /// A session that ends while the backend is still answering a command
    /// (the client went away mid-statement, or jitgate dropped it for a
    /// protocol error) gets its statement killed too: the server would run
    /// it to its end, past the session and even past the grant.
    fn drop(&mut self) {
        if !self.conv.idle() && tokio::runtime::Handle::try_current().is_ok() {
            drop(self.spawn_kill());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::SeqFix;

    #[test]
    fn sequence_ids_are_renumbered_across_split_headers_and_payloads() {
        // Two client packets (ids 4 and 6, payloads of 3 and 0 bytes),
        // renumbered by a shift of 1, fed in awkward pieces.
        let mut bytes = b"\x03\x00\x00\x04abc\x00\x00\x00\x06".to_vec();
        let mut fix = SeqFix::default();
        let (a, rest) = bytes.split_at_mut(2);
        fix.apply(a, 1);
        let (b, c) = rest.split_at_mut(4);
        fix.apply(b, 1);
        fix.apply(c, 1);
        assert_eq!(bytes, b"\x03\x00\x00\x03abc\x00\x00\x00\x05");
        // A shift the other way (the backend is ahead) wraps correctly.
        let mut more = b"\x01\x00\x00\xffz".to_vec();
        fix.apply(&mut more, 0u8.wrapping_sub(1));
        assert_eq!(more, b"\x01\x00\x00\x00z");
    }
}
