//! The audit log: one sealed JSON object per line in `state_dir/audit.jsonl`,
//! each line chained to the one before by SHA-256 ([`chain`]), rotated by
//! size ([`files`]), checked offline by `jitgate audit verify` ([`verify`]).
//!
//! Invariants:
//! - Every event goes through [`AuditLog::write`], which returns only after
//!   the whole line is handed to the kernel, so an action is acknowledged
//!   only after its record is written. Lines are sealed and written under
//!   one lock, so the chain order is the file order.
//! - A failed write leaves no trace: the file is cut back to its last good
//!   length and the chain does not advance. The error goes to the caller,
//!   which refuses the action (fail closed); the log is marked unhealthy
//!   (`jitgate_audit_healthy` 0, an error line per failed write) until a
//!   write succeeds again. The first record after an outage is
//!   `audit.resumed`, saying since when and how many writes failed.
//! - Nothing that was written is ever deleted or rewritten by jitgate.

pub mod chain;
pub mod files;
pub mod verify;

use std::fs::File;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use uuid::Uuid;

use crate::metrics as m;
use crate::timefmt;
use chain::{ChainHash, MAX_LINE};

/// One audit event. Only the fields that apply are set; the rest are left
/// out of the line.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Event {
    /// When (RFC 3339 UTC, filled in by [`AuditLog::write`]).
    #[serde(serialize_with = "timefmt::ser")]
    pub ts: Option<SystemTime>,
    /// What happened, e.g. `session.started`.
    pub event: &'static str,
    /// The person the event is about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    /// The database login presented.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub login: Option<String>,
    /// Resource name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// Source networks a grant admits, comma-separated (`grant.created`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sources: Option<String>,
    /// Resource protocol.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<&'static str>,
    /// Client address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_addr: Option<SocketAddr>,
    /// Grant id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grant_id: Option<Uuid>,
    /// Request id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<Uuid>,
    /// Session id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<Uuid>,
    /// Who acted (admin, approver, or `jitgate` itself).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// Free text: the requester's or operator's reason, or why jitgate decided.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A duration in milliseconds (grant length, session length).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// Bytes from client to backend.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_up: Option<u64>,
    /// Bytes from backend to client.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_down: Option<u64>,
    /// A bounded outcome word (e.g. the end reason label).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<&'static str>,
    /// The client's software version (SSH identification line), in
    /// `session.started`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_version: Option<String>,
    /// The server's software version (SSH identification line), in
    /// `session.started`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_version: Option<String>,
    /// Grant deadline (grant events).
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "timefmt::ser"
    )]
    pub expires_at: Option<SystemTime>,
    /// Writes that failed during an audit outage (`audit.resumed`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_writes: Option<u64>,
}

impl Event {
    /// An event with only its name set.
    pub fn new(event: &'static str) -> Event {
        Event {
            event,
            ..Event::default()
        }
    }
}

/// Whether the audit log can be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// The last write succeeded.
    Healthy,
    /// Writes fail: new sessions and grants are refused.
    Failing {
        /// When the first write of this outage failed.
        since: SystemTime,
        /// The last error.
        error: String,
        /// Writes that failed so far in this outage.
        failed_writes: u64,
    },
}

/// After a rotation fails, how long writing goes on to the current file
/// before rotation is tried again (so a persistent problem logs once a
/// minute, not on every line).
const ROTATE_RETRY: Duration = Duration::from_secs(60);

#[derive(Debug)]
struct State {
    file: File,
    /// Length of the complete records in `file`.
    len: u64,
    /// Hash of the last record written: the next record's `prev`.
    prev: ChainHash,
    /// A failed write may have left bytes past `len` that could not be cut
    /// off yet; cut them before the next write.
    dirty: bool,
    /// Set while writes fail.
    failing: Option<Failing>,
    /// No rotation before then (after one failed).
    rotate_after: Option<Instant>,
}

#[derive(Debug, Clone)]
struct Failing {
    since: SystemTime,
    error: String,
    failed: u64,
}

/// The audit writer.
#[derive(Debug)]
pub struct AuditLog {
    dir: PathBuf,
    path: PathBuf,
    /// Rotate before a line would take the file past this size; 0 = never.
    rotate_bytes: AtomicU64,
    state: Mutex<State>,
}

impl AuditLog {
    /// Open (create or continue) `dir/audit.jsonl`, creating `dir`; the
    /// chain continues from the last record (see [`files::open_current`]).
    /// The file is rotated before a line would take it past `rotate_bytes`
    /// (0 = never).
    pub fn open(dir: &Path, rotate_bytes: u64) -> io::Result<AuditLog> {
        let opened = files::open_current(dir)?;
        m::audit_healthy(true);
        Ok(AuditLog {
            dir: dir.to_path_buf(),
            path: dir.join(files::CURRENT),
            rotate_bytes: AtomicU64::new(rotate_bytes),
            state: Mutex::new(State {
                file: opened.file,
                len: opened.len,
                prev: opened.prev,
                dirty: false,
                failing: None,
                rotate_after: None,
            }),
        })
    }

    /// The file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Change the rotation size (a reloaded configuration); 0 = never.
    pub fn set_rotate_bytes(&self, bytes: u64) {
        self.rotate_bytes.store(bytes, Ordering::Relaxed);
    }

    /// Whether writes currently succeed.
    pub fn health(&self) -> Health {
        match &self.lock().failing {
            None => Health::Healthy,
            Some(f) => Health::Failing {
                since: f.since,
                error: f.error.clone(),
                failed_writes: f.failed,
            },
        }
    }

    /// Flush what was written to stable storage (shutdown). Writes are
    /// handed to the kernel one by one, which a crash of jitgate cannot
    /// lose; this also covers a crash of the machine.
    pub fn sync(&self) -> io::Result<()> {
        self.lock().file.sync_data()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Write one event. Returns once the line is written to the file; on
    /// error nothing of it is in the file and the caller must refuse the
    /// action it records.
    pub fn write(&self, mut event: Event) -> io::Result<()> {
        let now = SystemTime::now();
        event.ts = Some(now);
        let object = serde_json::to_vec(&event).map_err(io::Error::other)?;
        if object.len() + chain::SEAL_LEN > MAX_LINE {
            // Refused before it touches the log: not a fault of the log.
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "audit record longer than 1 MiB",
            ));
        }
        let mut st = self.lock();
        let mut r = Ok(());
        if let Some(f) = st.failing.clone() {
            r = self.resume(&mut st, &f, now);
        }
        if r.is_ok() {
            r = self.append(&mut st, &object);
        }
        match r {
            Ok(()) => Ok(()),
            Err(e) => {
                self.failed(&mut st, &e, event.event, now);
                Err(e)
            }
        }
    }

    /// While writes fail, try to write `audit.resumed` (called once a
    /// second), so the log turns healthy again when the fault is gone even
    /// if nothing else is written. A failed retry is not a failed record:
    /// it is neither counted nor logged as one.
    pub fn retry(&self) {
        let mut st = self.lock();
        if let Some(f) = st.failing.clone() {
            if let Err(e) = self.resume(&mut st, &f, SystemTime::now()) {
                tracing::debug!(error = %e, "audit log still cannot be written");
            }
        }
    }

    /// The first write after an outage: `audit.resumed`, then healthy.
    fn resume(&self, st: &mut State, f: &Failing, now: SystemTime) -> io::Result<()> {
        let outage = now.duration_since(f.since).unwrap_or_default();
        let mut e = Event::new("audit.resumed");
        e.ts = Some(now);
        e.actor = Some("jitgate".into());
        e.reason = Some(format!(
            "audit log writes failed from {} until now; last error: {}",
            timefmt::rfc3339(f.since),
            f.error
        ));
        e.duration_ms = Some(u64::try_from(outage.as_millis()).unwrap_or(u64::MAX));
        e.failed_writes = Some(f.failed);
        let object = serde_json::to_vec(&e).map_err(io::Error::other)?;
        self.append(st, &object)?;
        st.failing = None;
        m::audit_healthy(true);
        tracing::warn!(
            path = %self.path.display(),
            failed_writes = f.failed,
            outage_ms = e.duration_ms,
            "audit log writable again; new sessions and grants are accepted"
        );
        Ok(())
    }

    /// Seal `object` onto the chain and append it, or leave the file and
    /// the chain as they were.
    fn append(&self, st: &mut State, object: &[u8]) -> io::Result<()> {
        let (line, hash) = chain::seal(object, &st.prev);
        if st.dirty {
            st.file.set_len(st.len)?;
            st.dirty = false;
        }
        self.maybe_rotate(st, line.len() as u64);
        if let Err(e) = st.file.write_all(&line) {
            // Part of the line may be in the file: cut it off, so the file
            // holds complete records only (retried before the next write).
            if let Err(te) = st.file.set_len(st.len) {
                st.dirty = true;
                tracing::error!(error = %te, path = %self.path.display(), "cannot cut a partly written audit line off; will retry before the next write");
            }
            return Err(e);
        }
        st.len += line.len() as u64;
        st.prev = hash;
        Ok(())
    }

    /// Rotate if `next` more bytes would take the file past the limit.
    /// A failed rotation is logged and writing goes on to the current file.
    fn maybe_rotate(&self, st: &mut State, next: u64) {
        let limit = self.rotate_bytes.load(Ordering::Relaxed);
        if limit == 0 || st.len == 0 || st.len.saturating_add(next) <= limit {
            return;
        }
        if st.rotate_after.is_some_and(|t| Instant::now() < t) {
            return;
        }
        match files::rotate(&self.dir, &st.file) {
            Ok((file, rotated)) => {
                tracing::info!(rotated = %rotated.display(), bytes = st.len, "audit log rotated; the chain continues in a new file");
                st.file = file;
                st.len = 0;
                st.rotate_after = None;
            }
            Err(e) => {
                tracing::error!(error = %e, path = %self.path.display(), "audit log rotation failed; writing on to the current file");
                st.rotate_after = Some(Instant::now() + ROTATE_RETRY);
            }
        }
    }

    /// Record a failed write: unhealthy, counted, logged.
    fn failed(&self, st: &mut State, e: &io::Error, event: &str, now: SystemTime) {
        m::audit_write_error();
        match &mut st.failing {
            Some(f) => {
                f.failed += 1;
                f.error = e.to_string();
            }
            None => {
                st.failing = Some(Failing {
                    since: now,
                    error: e.to_string(),
                    failed: 1,
                });
                m::audit_healthy(false);
            }
        }
        tracing::error!(error = %e, path = %self.path.display(), event, "audit log write failed: new sessions and grants are refused until it can be written again");
    }
}

#[cfg(test)]
mod tests;
