//! The grant journal: grants and requests survive a restart and a `kill -9`.
//!
//! Format (`state_dir/journal.jsonl`), one record per line:
//!
//! ```text
//! <16 hex: first 8 bytes of SHA-256 of JSON> <JSON record>\n
//! ```
//!
//! Records: `grant` (a whole grant), `grant_ended` (revoked, expired,
//! released or removed by reload), `grant_extended` (a new deadline),
//! `request` (the whole request after each change). Replaying them in order
//! rebuilds the tables; the last `request` record of an id wins.
//!
//! Invariants:
//! - [`Journal::append`] returns only after the record is written and
//!   `fdatasync`ed, and callers append before they answer.
//! - On open, a damaged **last** line (torn by a crash or a power loss: no
//!   newline, or a checksum that does not match) is dropped with a warning
//!   and the file is truncated to the last good record; a damaged line
//!   **before** good ones stops start-up with an error naming its byte
//!   offset — grants are never silently dropped.
//! - Compaction writes the live state (snapshot) to a temporary file,
//!   fsyncs it, renames it over the journal and fsyncs the directory, so a
//!   crash at any point leaves either the old or the new journal whole.
//!   The gateway compacts on start and whenever the tail grows past
//!   [`COMPACT_AFTER`] records, so start-up time does not grow with history.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::grants::GrantRecord;
use crate::requests::Request;

/// Records appended since the last compaction before the next one.
pub const COMPACT_AFTER: usize = 10_000;

/// Longest line accepted when reading the journal back.
const MAX_LINE: usize = 1 << 20;

/// One journal record.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Record {
    /// A grant was created.
    Grant(GrantRecord),
    /// A grant ended (revoked, expired, released, removed).
    GrantEnded {
        /// Which.
        id: Uuid,
    },
    /// A grant's deadline moved.
    GrantExtended {
        /// Which.
        id: Uuid,
        /// The new deadline.
        #[serde(with = "crate::timefmt::unix_ms")]
        expires_at: SystemTime,
    },
    /// A request's current state.
    Request(Box<Request>),
}

/// Why the journal could not be read.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// Reading or writing failed.
    #[error("journal {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: io::Error,
    },
    /// A record before the last one is damaged.
    #[error("journal {path} is corrupt at byte offset {offset} (line {line}): {what}; refusing to start rather than lose grants (restore the file from a backup, or move it aside to start empty)")]
    Corrupt {
        /// The file.
        path: String,
        /// Byte offset of the damaged line.
        offset: u64,
        /// Its line number (1-based).
        line: usize,
        /// What is wrong.
        what: String,
    },
}

/// What the journal held.
#[derive(Debug, Default)]
pub struct Replay {
    /// Grants not ended, in creation order (some may have expired since).
    pub grants: Vec<GrantRecord>,
    /// The last state of every request.
    pub requests: Vec<Request>,
    /// Records read.
    pub records: usize,
    /// Whether a torn last record was dropped.
    pub dropped_torn_tail: bool,
}

/// The journal writer.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: Mutex<File>,
    since_compaction: AtomicUsize,
    /// Records of changes already in force in memory (a grant's end, a new
    /// deadline) that the disk refused, oldest first: written again by
    /// [`Journal::retry_unwritten`] and applied by every compaction, so a
    /// revoked grant does not come back at the next start once the disk
    /// works again.
    owed: Mutex<Vec<Record>>,
    /// Held while owed records are written, by a retry or by a new owed
    /// record: they reach the file in the order they were made. Lock order:
    /// `retrying`, then `owed` or the file; the file, then `owed`.
    retrying: Mutex<()>,
    /// Tests: every write fails while set (a full disk, without one).
    #[cfg(test)]
    pub(crate) fail_writes: std::sync::atomic::AtomicBool,
    /// Tests: writes of request records fail while set.
    #[cfg(test)]
    pub(crate) fail_request_writes: std::sync::atomic::AtomicBool,
}

fn checksum(json: &[u8]) -> String {
    let d = Sha256::digest(json);
    hex::encode(d.get(..8).unwrap_or_default())
}

/// Encode one record as its journal line.
pub fn encode(rec: &Record) -> io::Result<Vec<u8>> {
    let json = serde_json::to_vec(rec).map_err(io::Error::other)?;
    let mut line = Vec::with_capacity(json.len() + 18);
    line.extend_from_slice(checksum(&json).as_bytes());
    line.push(b' ');
    line.extend_from_slice(&json);
    line.push(b'\n');
    Ok(line)
}

fn decode(line: &[u8]) -> Result<Record, String> {
    let (sum, json) = match (line.get(..16), line.get(16), line.get(17..)) {
        (Some(s), Some(b' '), Some(j)) => (s, j),
        _ => return Err("malformed line".into()),
    };
    if checksum(json).as_bytes() != sum {
        return Err("checksum mismatch".into());
    }
    serde_json::from_slice(json).map_err(|e| format!("bad record: {e}"))
}

/// The journal lines of a state: each grant, then each request.
fn snapshot(grants: &[GrantRecord], requests: &[Request]) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    for g in grants {
        out.extend(encode(&Record::Grant(g.clone()))?);
    }
    for r in requests {
        out.extend(encode(&Record::Request(Box::new(r.clone())))?);
    }
    Ok(out)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Journal {
    /// Open `dir/journal.jsonl` (creating it), replay it, and drop a torn
    /// last record.
    pub fn open(dir: &Path) -> Result<(Journal, Replay), JournalError> {
        let path = dir.join("journal.jsonl");
        let io_err = |source| JournalError::Io {
            path: path.display().to_string(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io_err)?;
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)
            .map_err(io_err)?;
        let replay = Self::replay(&path, &mut file)?;
        Ok((
            Journal {
                path,
                file: Mutex::new(file),
                since_compaction: AtomicUsize::new(0),
                owed: Mutex::new(Vec::new()),
                retrying: Mutex::new(()),
                #[cfg(test)]
                fail_writes: std::sync::atomic::AtomicBool::new(false),
                #[cfg(test)]
                fail_request_writes: std::sync::atomic::AtomicBool::new(false),
            },
            replay,
        ))
    }

    fn replay(path: &Path, file: &mut File) -> Result<Replay, JournalError> {
        let shown = path.display().to_string();
        let io_err = |source| JournalError::Io {
            path: shown.clone(),
            source,
        };
        file.seek(SeekFrom::Start(0)).map_err(io_err)?;
        let mut reader = BufReader::new(&*file);
        let mut grants: Vec<GrantRecord> = Vec::new();
        let mut requests: std::collections::BTreeMap<Uuid, Request> = Default::default();
        let mut offset = 0u64;
        let mut good_end = 0u64;
        let mut line_no = 0usize;
        let mut bad: Option<(u64, usize, String)> = None;
        let mut records = 0usize;
        let mut buf = Vec::new();
        loop {
            buf.clear();
            let n = io::Read::take(&mut reader, MAX_LINE as u64 + 1)
                .read_until(b'\n', &mut buf)
                .map_err(io_err)?;
            if n == 0 {
                break;
            }
            line_no += 1;
            let complete = buf.last() == Some(&b'\n');
            if let Some((at, line, what)) = bad.take() {
                // A damaged line followed by more data: real corruption.
                return Err(JournalError::Corrupt {
                    path: shown,
                    offset: at,
                    line,
                    what,
                });
            }
            let body = buf.strip_suffix(b"\n").unwrap_or(&buf);
            let parsed = if complete {
                decode(body)
            } else {
                Err("incomplete last line".into())
            };
            match parsed {
                Ok(rec) => {
                    records += 1;
                    match rec {
                        Record::Grant(g) => grants.push(g),
                        Record::GrantEnded { id } => grants.retain(|g| g.id != id),
                        Record::GrantExtended { id, expires_at } => {
                            if let Some(g) = grants.iter_mut().find(|g| g.id == id) {
                                g.expires_at = expires_at;
                            }
                        }
                        Record::Request(r) => {
                            requests.insert(r.id, *r);
                        }
                    }
                    good_end = offset + n as u64;
                }
                Err(what) => bad = Some((offset, line_no, what)),
            }
            offset += n as u64;
        }
        let dropped_torn_tail = bad.is_some();
        if let Some((at, line, what)) = bad {
            tracing::warn!(path = %shown, offset = at, line, reason = %what, "dropping a torn last journal record (crash or power loss while writing it)");
            file.set_len(good_end).map_err(io_err)?;
            file.sync_data().map_err(io_err)?;
        }
        Ok(Replay {
            grants,
            requests: requests.into_values().collect(),
            records,
            dropped_torn_tail,
        })
    }

    /// Append a record and fsync it.
    pub fn append(&self, rec: &Record) -> io::Result<()> {
        self.write(rec, true)
    }

    /// Append a record without waiting for it to reach the disk (the next
    /// synced append, or the kernel, flushes it). For records whose loss a
    /// restart repairs by itself: a grant past its deadline is expired on
    /// replay whether or not its end was recorded.
    pub fn append_unsynced(&self, rec: &Record) -> io::Result<()> {
        self.write(rec, false)
    }

    fn write(&self, rec: &Record, sync: bool) -> io::Result<()> {
        let line = encode(rec)?;
        let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        #[cfg(test)]
        if self.fail_writes.load(Ordering::SeqCst)
            || (matches!(rec, Record::Request(_))
                && self.fail_request_writes.load(Ordering::SeqCst))
        {
            return Err(io::Error::other("injected write failure"));
        }
        let len = f.metadata()?.len();
        let r = f
            .write_all(&line)
            .and_then(|()| if sync { f.sync_data() } else { Ok(()) });
        if let Err(e) = r {
            // Leave no half record behind.
            let _ = f.set_len(len);
            tracing::error!(error = %e, path = %self.path.display(), "journal write failed");
            return Err(e);
        }
        self.since_compaction.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Record that grant `id` ended (fsynced); see [`Journal::append_owed`].
    pub fn append_end(&self, id: Uuid) -> io::Result<()> {
        self.append_owed(Record::GrantEnded { id })
    }

    /// Append `rec` (fsynced), a change already in force in memory (a
    /// grant's end, a grant's new deadline). When it cannot be written it is
    /// owed: kept, written again by [`Journal::retry_unwritten`] and applied
    /// by compaction, and the error returned. While older records are owed
    /// a new one waits behind them: written first, it could be undone by an
    /// older one written later.
    pub fn append_owed(&self, rec: Record) -> io::Result<()> {
        let _turn = self.retrying.lock().unwrap_or_else(|p| p.into_inner());
        {
            let mut owed = self.owed.lock().unwrap_or_else(|p| p.into_inner());
            if !owed.is_empty() {
                owed.push(rec);
                return Err(io::Error::other(
                    "older journal records are still unwritten",
                ));
            }
        }
        let r = self.append(&rec);
        if r.is_err() {
            self.owed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(rec);
        }
        r
    }

    /// Write the records owed, oldest first, up to the first that still
    /// fails; how many are still owed.
    pub fn retry_unwritten(&self) -> usize {
        let _turn = self.retrying.lock().unwrap_or_else(|p| p.into_inner());
        let pending = std::mem::take(&mut *self.owed.lock().unwrap_or_else(|p| p.into_inner()));
        if pending.is_empty() {
            return 0;
        }
        let mut left = pending.into_iter().peekable();
        while let Some(rec) = left.peek() {
            if self.append(rec).is_err() {
                break;
            }
            left.next();
        }
        let mut owed = self.owed.lock().unwrap_or_else(|p| p.into_inner());
        // A compaction may have applied (and dropped) some meanwhile: only
        // what it has not taken goes back, in front of nothing newer (new
        // records wait for this turn).
        let mut back: Vec<Record> = left.collect();
        back.append(&mut owed);
        *owed = back;
        let n = owed.len();
        if n == 0 {
            tracing::info!(path = %self.path.display(), "journal caught up: every owed record is written");
        }
        n
    }

    /// Whether the tail has grown enough to compact.
    pub fn wants_compaction(&self) -> bool {
        self.since_compaction.load(Ordering::Relaxed) >= COMPACT_AFTER
    }

    /// Rewrite the journal as the state it records, read from the file
    /// itself while holding the writer's lock, then renamed into place. A
    /// running gateway compacts this way, not from its tables: a snapshot of
    /// the tables taken before the lock could miss a record appended in
    /// between (a grant created, a grant ended), which the rename would
    /// then drop. Requests finished before `forget_before` are left out;
    /// ends that could not be written are applied.
    pub fn compact_in_place(&self, forget_before: SystemTime) -> Result<(), JournalError> {
        let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let mut state = Self::replay(&self.path, &mut f)?;
        let owed: Vec<Record> = self.owed.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for rec in &owed {
            match rec {
                Record::GrantEnded { id } => state.grants.retain(|g| g.id != *id),
                Record::GrantExtended { id, expires_at } => {
                    if let Some(g) = state.grants.iter_mut().find(|g| g.id == *id) {
                        g.expires_at = *expires_at;
                    }
                }
                Record::Grant(_) | Record::Request(_) => {}
            }
        }
        state.requests.retain(|r| {
            r.state == crate::requests::RequestState::Pending
                || r.expires_at >= forget_before
                || r.created_at >= forget_before
        });
        let io_err = |source| JournalError::Io {
            path: self.path.display().to_string(),
            source,
        };
        let out = snapshot(&state.grants, &state.requests).map_err(io_err)?;
        self.replace(&mut f, &out).map_err(io_err)?;
        // The records applied are in the new file now; any owed since stay.
        let mut now_owed = self.owed.lock().unwrap_or_else(|p| p.into_inner());
        let applied = owed.len().min(now_owed.len());
        now_owed.drain(..applied);
        Ok(())
    }

    /// Replace the journal by a snapshot of the live state. Only where
    /// nothing else writes (at start, before anything is served): a running
    /// gateway uses [`Journal::compact_in_place`].
    pub fn compact(&self, grants: &[GrantRecord], requests: &[Request]) -> io::Result<()> {
        let out = snapshot(grants, requests)?;
        let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        self.replace(&mut f, &out)?;
        self.owed.lock().unwrap_or_else(|p| p.into_inner()).clear();
        Ok(())
    }

    /// Write `out` to a temporary file, sync it and rename it over the
    /// journal; `f` (the writer, locked) is reopened on the new file.
    fn replace(&self, f: &mut File, out: &[u8]) -> io::Result<()> {
        let tmp = self.path.with_extension("jsonl.tmp");
        {
            let mut t = File::create(&tmp)?;
            t.write_all(out)?;
            t.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            sync_dir(dir)?;
        }
        *f = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&self.path)?;
        self.since_compaction.store(0, Ordering::Relaxed);
        Ok(())
    }

    /// The journal file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn grant(n: u8) -> GrantRecord {
        let now = SystemTime::now();
        GrantRecord {
            id: Uuid::now_v7(),
            principal: format!("user{n}"),
            resource: "pg".into(),
            logins: vec!["postgres".into()],
            sources: vec![],
            created_at: now,
            expires_at: now + Duration::from_secs(60),
            reason: "r".into(),
            actor: "admin".into(),
            request_id: None,
        }
    }

    #[test]
    fn replays_creates_ends_and_extensions() {
        let dir = tempfile::tempdir().unwrap();
        let (j, r) = Journal::open(dir.path()).unwrap();
        assert_eq!(r.records, 0);
        let (a, b) = (grant(1), grant(2));
        j.append(&Record::Grant(a.clone())).unwrap();
        j.append(&Record::Grant(b.clone())).unwrap();
        j.append(&Record::GrantEnded { id: a.id }).unwrap();
        let later = b.expires_at + Duration::from_secs(30);
        j.append(&Record::GrantExtended {
            id: b.id,
            expires_at: later,
        })
        .unwrap();
        drop(j);
        let (_, r) = Journal::open(dir.path()).unwrap();
        assert_eq!(r.records, 4);
        assert_eq!(r.grants.len(), 1);
        assert_eq!(r.grants[0].id, b.id);
        assert_eq!(
            r.grants[0]
                .expires_at
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_millis(),
            later
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_millis()
        );
    }

    #[test]
    fn a_torn_tail_is_dropped_and_the_file_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(dir.path()).unwrap();
        let a = grant(1);
        j.append(&Record::Grant(a.clone())).unwrap();
        let good = std::fs::metadata(j.path()).unwrap().len();
        let line = encode(&Record::Grant(grant(2))).unwrap();
        // Half a record, as a crash mid-write leaves it.
        OpenOptions::new()
            .append(true)
            .open(j.path())
            .unwrap()
            .write_all(&line[..line.len() / 2])
            .unwrap();
        drop(j);
        let (j, r) = Journal::open(dir.path()).unwrap();
        assert!(r.dropped_torn_tail);
        assert_eq!(r.grants.len(), 1);
        assert_eq!(std::fs::metadata(j.path()).unwrap().len(), good);
        // A full-length line of garbage at the end is torn too.
        OpenOptions::new()
            .append(true)
            .open(j.path())
            .unwrap()
            .write_all(&[0u8; 40])
            .unwrap();
        OpenOptions::new()
            .append(true)
            .open(j.path())
            .unwrap()
            .write_all(b"\n")
            .unwrap();
        drop(j);
        let (_, r) = Journal::open(dir.path()).unwrap();
        assert!(r.dropped_torn_tail);
        assert_eq!(r.grants.len(), 1);
    }

    #[test]
    fn a_corrupt_middle_record_stops_with_its_offset() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(dir.path()).unwrap();
        j.append(&Record::Grant(grant(1))).unwrap();
        let second_at = std::fs::metadata(j.path()).unwrap().len();
        j.append(&Record::Grant(grant(2))).unwrap();
        j.append(&Record::Grant(grant(3))).unwrap();
        drop(j);
        let mut bytes = std::fs::read(dir.path().join("journal.jsonl")).unwrap();
        // Flip a byte inside the second record's JSON.
        let i = second_at as usize + 30;
        bytes[i] ^= 0x01;
        std::fs::write(dir.path().join("journal.jsonl"), &bytes).unwrap();
        let err = Journal::open(dir.path()).unwrap_err();
        match &err {
            JournalError::Corrupt { offset, line, .. } => {
                assert_eq!(*offset, second_at);
                assert_eq!(*line, 2);
            }
            e => panic!("{e}"),
        }
        assert!(
            err.to_string()
                .contains(&format!("byte offset {second_at}")),
            "{err}"
        );
    }

    #[test]
    fn compaction_keeps_the_live_state_only() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(dir.path()).unwrap();
        let keep = grant(1);
        for i in 0..50u8 {
            let g = grant(i);
            j.append(&Record::Grant(g.clone())).unwrap();
            j.append(&Record::GrantEnded { id: g.id }).unwrap();
        }
        j.append(&Record::Grant(keep.clone())).unwrap();
        let before = std::fs::metadata(j.path()).unwrap().len();
        j.compact(std::slice::from_ref(&keep), &[]).unwrap();
        let after = std::fs::metadata(j.path()).unwrap().len();
        assert!(after < before / 10, "{after} vs {before}");
        // Appends after compaction land in the new file.
        let more = grant(9);
        j.append(&Record::Grant(more.clone())).unwrap();
        drop(j);
        let (_, r) = Journal::open(dir.path()).unwrap();
        let ids: Vec<Uuid> = r.grants.iter().map(|g| g.id).collect();
        assert_eq!(ids, [keep.id, more.id]);
    }

    fn request(state: crate::requests::RequestState, age: Duration) -> Request {
        let at = SystemTime::now() - age;
        Request {
            id: Uuid::now_v7(),
            kind: crate::requests::RequestKind::Access,
            principal: "alice".into(),
            resource: "pg".into(),
            logins: vec!["postgres".into()],
            sources: vec![],
            requested: Duration::from_secs(600),
            duration: Duration::from_secs(600),
            reason: "r".into(),
            policy: "p".into(),
            needed: 1,
            approvers: ["carol".to_string()].into_iter().collect(),
            approvals: vec![],
            state,
            created_at: at,
            expires_at: at + Duration::from_secs(3600),
            denied_by: None,
            deny_reason: None,
            grant_id: None,
        }
    }

    #[test]
    fn compaction_in_place_keeps_what_a_replay_gives() {
        use crate::requests::RequestState;
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(dir.path()).unwrap();
        let (a, b, c) = (grant(1), grant(2), grant(3));
        for g in [&a, &b, &c] {
            j.append(&Record::Grant(g.clone())).unwrap();
        }
        j.append(&Record::GrantEnded { id: b.id }).unwrap();
        let later = c.expires_at + Duration::from_secs(600);
        j.append(&Record::GrantExtended {
            id: c.id,
            expires_at: later,
        })
        .unwrap();
        let pending = request(RequestState::Pending, Duration::from_secs(30 * 86_400));
        let old_done = request(RequestState::Denied, Duration::from_secs(30 * 86_400));
        let new_done = request(RequestState::Approved, Duration::from_secs(60));
        for r in [&pending, &old_done, &new_done] {
            j.append(&Record::Request(Box::new(r.clone()))).unwrap();
        }
        let week_ago = SystemTime::now() - Duration::from_secs(7 * 86_400);
        j.compact_in_place(week_ago).unwrap();
        drop(j);
        let (_, r) = Journal::open(dir.path()).unwrap();
        assert_eq!(r.records, 4, "two grants and two requests, nothing else");
        let ids: Vec<Uuid> = r.grants.iter().map(|g| g.id).collect();
        assert_eq!(ids, [a.id, c.id]);
        let ms = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_millis()
        };
        assert_eq!(ms(r.grants[1].expires_at), ms(later));
        let mut kept: Vec<Uuid> = r.requests.iter().map(|r| r.id).collect();
        kept.sort();
        let mut want = vec![pending.id, new_done.id];
        want.sort();
        assert_eq!(kept, want, "a week-old finished request is forgotten");
    }

    #[test]
    fn compaction_in_place_loses_nothing_appended_while_it_runs() {
        // Writers append grants and end every other one while compactions
        // run back to back: whatever interleaving, the journal must replay
        // to exactly the grants not ended.
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(dir.path()).unwrap();
        let j = std::sync::Arc::new(j);
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let compactor = {
            let (j, done) = (j.clone(), done.clone());
            std::thread::spawn(move || {
                let mut n = 0;
                while !done.load(Ordering::SeqCst) {
                    j.compact_in_place(SystemTime::UNIX_EPOCH).unwrap();
                    n += 1;
                    std::thread::sleep(Duration::from_millis(1));
                }
                n
            })
        };
        let writers: Vec<_> = (0..2u8)
            .map(|w| {
                let j = j.clone();
                std::thread::spawn(move || {
                    let mut live = Vec::new();
                    // Unsynced: what is tested is the lock, not the disk.
                    for i in 0..300u32 {
                        let g = grant(w);
                        j.append_unsynced(&Record::Grant(g.clone())).unwrap();
                        if i % 2 == 0 {
                            j.append_unsynced(&Record::GrantEnded { id: g.id }).unwrap();
                        } else {
                            live.push(g.id);
                        }
                    }
                    live
                })
            })
            .collect();
        let mut want: Vec<Uuid> = writers
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        done.store(true, Ordering::SeqCst);
        let compactions = compactor.join().unwrap();
        assert!(compactions > 1, "compactions ran during the appends");
        drop(j);
        let (_, r) = Journal::open(dir.path()).unwrap();
        let mut got: Vec<Uuid> = r.grants.iter().map(|g| g.id).collect();
        got.sort();
        want.sort();
        assert_eq!(got.len(), 300);
        assert!(
            got == want,
            "a record appended during a compaction was lost"
        );
    }

    #[test]
    fn an_end_the_disk_refused_is_written_later_or_compacted_away() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(dir.path()).unwrap();
        let (a, b) = (grant(1), grant(2));
        j.append(&Record::Grant(a.clone())).unwrap();
        j.append(&Record::Grant(b.clone())).unwrap();
        // The disk fails as a revoke records its end.
        j.fail_writes.store(true, Ordering::SeqCst);
        assert!(j.append_end(a.id).is_err());
        assert_eq!(j.retry_unwritten(), 1, "still failing: still owed");
        // A start now would bring the revoked grant back...
        let (_, r) = Journal::open(dir.path()).unwrap();
        assert!(r.grants.iter().any(|g| g.id == a.id));
        // ...so once the disk works, the next retry writes the end.
        j.fail_writes.store(false, Ordering::SeqCst);
        assert_eq!(j.retry_unwritten(), 0);
        let (_, r) = Journal::open(dir.path()).unwrap();
        let ids: Vec<Uuid> = r.grants.iter().map(|g| g.id).collect();
        assert_eq!(ids, [b.id]);
        // An end still owed when a compaction runs is applied by it.
        j.fail_writes.store(true, Ordering::SeqCst);
        assert!(j.append_end(b.id).is_err());
        j.fail_writes.store(false, Ordering::SeqCst);
        j.compact_in_place(SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(j.retry_unwritten(), 0, "nothing owed after the compaction");
        drop(j);
        let (_, r) = Journal::open(dir.path()).unwrap();
        assert!(r.grants.is_empty(), "{:?}", r.grants);
    }

    #[test]
    fn owed_deadlines_reach_the_file_in_the_order_they_were_made() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(dir.path()).unwrap();
        let a = grant(1);
        j.append(&Record::Grant(a.clone())).unwrap();
        let (t1, t2) = (
            a.expires_at + Duration::from_secs(60),
            a.expires_at - Duration::from_secs(30),
        );
        let ms = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_millis()
        };
        j.fail_writes.store(true, Ordering::SeqCst);
        assert!(j
            .append_owed(Record::GrantExtended {
                id: a.id,
                expires_at: t1
            })
            .is_err());
        j.fail_writes.store(false, Ordering::SeqCst);
        // The disk works again, but the newer deadline waits behind the
        // older one: written first, it would be overwritten by it.
        assert!(j
            .append_owed(Record::GrantExtended {
                id: a.id,
                expires_at: t2
            })
            .is_err());
        assert_eq!(j.retry_unwritten(), 0);
        let (_, r) = Journal::open(dir.path()).unwrap();
        assert_eq!(ms(r.grants[0].expires_at), ms(t2));
        // Owed when a compaction runs: applied by it, in order.
        j.fail_writes.store(true, Ordering::SeqCst);
        let _ = j.append_owed(Record::GrantExtended {
            id: a.id,
            expires_at: t1,
        });
        let _ = j.append_owed(Record::GrantExtended {
            id: a.id,
            expires_at: t2,
        });
        j.fail_writes.store(false, Ordering::SeqCst);
        j.compact_in_place(SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(j.retry_unwritten(), 0);
        drop(j);
        let (_, r) = Journal::open(dir.path()).unwrap();
        assert_eq!(ms(r.grants[0].expires_at), ms(t2));
    }
}
