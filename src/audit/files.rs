//! The audit log's files in `state_dir`: the current file, rotated files and
//! side files; opening the current file where the chain left off, and
//! rotating it.
//!
//! - `audit.jsonl`: the file being written.
//! - `audit-YYYYMMDDTHHMMSSmmmZ.jsonl`: rotated files, named by the UTC time
//!   of their rotation, so name order is chain order (a clock that steps
//!   back does not break it: a new name always sorts after the last one).
//! - `audit.jsonl.torn-STAMP`: bytes of an interrupted last write, moved out
//!   of the chain on start.
//! - `audit.jsonl.unchained-STAMP`: a current file whose last line was not a
//!   sealed record (a log from before the chain, or a damaged one), moved
//!   aside whole on start; a new chain begins.
//!
//! Invariant: nothing here deletes audit bytes; what does not fit the chain
//! is moved to a side file and logged.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::chain::{self, ChainHash, LineError};

/// The file being written.
pub const CURRENT: &str = "audit.jsonl";

const ROTATED_PREFIX: &str = "audit-";
const ROTATED_SUFFIX: &str = ".jsonl";
/// `YYYYMMDDTHHMMSSmmmZ`.
const STAMP_LEN: usize = 19;

/// `YYYYMMDDTHHMMSSmmmZ` (UTC, milliseconds): sortable, no `:` in file names.
fn stamp(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t)
        .to_string()
        .chars()
        .filter(|c| !matches!(c, '-' | ':' | '.'))
        .collect()
}

/// The time in a [`stamp`].
fn parse_stamp(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() != STAMP_LEN {
        return None;
    }
    let part = |r: std::ops::Range<usize>| s.get(r);
    let rfc = format!(
        "{}-{}-{}T{}:{}:{}.{}Z",
        part(0..4)?,
        part(4..6)?,
        part(6..8)?,
        part(9..11)?,
        part(11..13)?,
        part(13..15)?,
        part(15..18)?
    );
    humantime::parse_rfc3339(&rfc).ok()
}

/// The stamp of a rotated file's name, if it is one.
fn rotated_stamp(name: &str) -> Option<&str> {
    name.strip_prefix(ROTATED_PREFIX)?
        .strip_suffix(ROTATED_SUFFIX)
        .filter(|s| s.len() == STAMP_LEN && s.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// The rotated files in `dir`, oldest first.
pub fn rotated(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut names: Vec<String> = fs::read_dir(dir)?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| rotated_stamp(n).is_some())
        .collect();
    names.sort();
    Ok(names.into_iter().map(|n| dir.join(n)).collect())
}

/// The current file, opened for appending, with where the chain stands.
#[derive(Debug)]
pub struct Opened {
    /// Open for reading and appending.
    pub file: File,
    /// Its length (complete records only).
    pub len: u64,
    /// The hash the next record follows.
    pub prev: ChainHash,
}

fn open_append(path: &Path, create_new: bool) -> io::Result<File> {
    let mut o = OpenOptions::new();
    o.read(true).append(true);
    if create_new {
        o.create_new(true);
    } else {
        o.create(true);
    }
    o.open(path)
}

/// Open (or create) `dir/audit.jsonl` and find the hash the next record
/// follows: its last line's hash; if it is empty, the last hash of the
/// newest rotated file; with no files at all, 64 zeros (a new chain).
///
/// A torn last line (no line break: a write interrupted by a crash or power
/// loss, never acknowledged) is moved to `audit.jsonl.torn-STAMP` and cut
/// off. A last line that is not a sealed record moves the whole file to
/// `audit.jsonl.unchained-STAMP`. Both are logged.
pub fn open_current(dir: &Path) -> io::Result<Opened> {
    fs::create_dir_all(dir)?;
    let path = dir.join(CURRENT);
    let file = open_append(&path, false)?;
    let len = file.metadata()?.len();
    let tail = match chain::read_tail(&file, len) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::InvalidData => {
            return set_aside(dir, file, &format!("unreadable end ({e})"));
        }
        Err(e) => return Err(e),
    };
    let mut len = len;
    if !tail.torn.is_empty() {
        let side = dir.join(format!("{CURRENT}.torn-{}", stamp(SystemTime::now())));
        let saved = fs::write(&side, &tail.torn);
        file.set_len(tail.complete_len)?;
        file.sync_all()?;
        len = tail.complete_len;
        match saved {
            Ok(()) => {
                tracing::warn!(bytes = tail.torn.len(), moved_to = %side.display(), "audit log ended in an incomplete line (an interrupted write, never acknowledged); moved it out of the chain")
            }
            Err(e) => {
                tracing::warn!(bytes = tail.torn.len(), error = %e, "audit log ended in an incomplete line (an interrupted write, never acknowledged); cut it off, could not save a copy")
            }
        }
    }
    let prev = match tail.last_line {
        Some(line) => match chain::links(&line) {
            Ok(sealed) => {
                if let Err(LineError::HashMismatch { .. }) = chain::open(&line) {
                    tracing::error!(path = %path.display(), "the last audit record's hash does not match its content (edited?); continuing the chain from its written hash; `jitgate audit verify` reports the line");
                }
                sealed.hash
            }
            Err(e) => return set_aside(dir, file, &e.to_string()),
        },
        None if len > 0 => return set_aside(dir, file, "its last line is too long"),
        None => last_rotated_hash(dir),
    };
    Ok(Opened { file, len, prev })
}

/// Move the current file aside (its last line is not a sealed record) and
/// start a new one after the newest rotated file (or a new chain).
fn set_aside(dir: &Path, file: File, why: &str) -> io::Result<Opened> {
    drop(file);
    let path = dir.join(CURRENT);
    let side = dir.join(format!("{CURRENT}.unchained-{}", stamp(SystemTime::now())));
    fs::rename(&path, &side)?;
    tracing::warn!(moved_to = %side.display(), reason = why, "the audit log's last line is not a sealed record (a log from before the hash chain, or damaged); moved it aside and started a new file");
    let file = open_append(&path, true)?;
    sync_dir(dir);
    Ok(Opened {
        file,
        len: 0,
        prev: last_rotated_hash(dir),
    })
}

/// The hash of the last record in the newest rotated file; 64 zeros if
/// there is none (or it cannot be read, which is logged).
fn last_rotated_hash(dir: &Path) -> ChainHash {
    let newest = match rotated(dir) {
        Ok(files) => files.into_iter().next_back(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot list rotated audit files; starting a new chain");
            return ChainHash::GENESIS;
        }
    };
    let Some(newest) = newest else {
        return ChainHash::GENESIS;
    };
    let last = File::open(&newest).and_then(|f| {
        let len = f.metadata()?.len();
        chain::read_tail(&f, len)
    });
    match last.map(|t| t.last_line.map(|l| chain::links(&l))) {
        Ok(Some(Ok(sealed))) => sealed.hash,
        other => {
            tracing::warn!(file = %newest.display(), problem = ?other.map(|o| o.map(|r| r.err())), "cannot continue the chain from the newest rotated audit file; starting a new chain");
            ChainHash::GENESIS
        }
    }
}

/// Rotate: make `file` (the current file) durable, rename it to
/// `audit-STAMP.jsonl`, and open a new, empty current file. On failure the
/// old file stays current (renamed back if it had been renamed).
pub fn rotate(dir: &Path, file: &File) -> io::Result<(File, PathBuf)> {
    file.sync_all()?;
    let current = dir.join(CURRENT);
    // A name that sorts after every existing one, whatever the clock does.
    let newest = rotated(dir)?
        .last()
        .and_then(|p| p.file_name()?.to_str().and_then(rotated_stamp))
        .and_then(parse_stamp);
    let mut t = SystemTime::now();
    if let Some(n) = newest {
        t = t.max(n + Duration::from_millis(1));
    }
    let target = dir.join(format!("{ROTATED_PREFIX}{}{ROTATED_SUFFIX}", stamp(t)));
    if target.exists() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists", target.display()),
        ));
    }
    fs::rename(&current, &target)?;
    match open_append(&current, true) {
        Ok(f) => {
            sync_dir(dir);
            Ok((f, target))
        }
        Err(e) => {
            if let Err(back) = fs::rename(&target, &current) {
                tracing::error!(error = %back, file = %target.display(), "could not rename the audit file back after a failed rotation; writing on to it under its rotated name");
            }
            Err(e)
        }
    }
}

/// Make renames and creations in `dir` durable (best effort: logged).
fn sync_dir(dir: &Path) {
    if let Err(e) = File::open(dir).and_then(|d| d.sync_all()) {
        tracing::warn!(error = %e, dir = %dir.display(), "fsync of the state directory failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_sort_and_parse_back() {
        let t = humantime::parse_rfc3339("2026-11-29T21:30:00.123Z").unwrap();
        let s = stamp(t);
        assert_eq!(s, "20261129T213000123Z");
        assert_eq!(parse_stamp(&s), Some(t));
        assert!(stamp(t) < stamp(t + Duration::from_millis(1)));
        assert_eq!(
            rotated_stamp("audit-20261129T213000123Z.jsonl"),
            Some("20261129T213000123Z")
        );
        for other in [
            "audit.jsonl",
            "audit.jsonl.torn-20261129T213000123Z",
            "audit-x.jsonl",
            "audit-20261129T213000123Z.jsonl.bak",
        ] {
            assert_eq!(rotated_stamp(other), None, "{other}");
        }
    }
}
