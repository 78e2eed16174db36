//! `jitgate audit verify`: check one hash chain across a sequence of files,
//! offline (no gateway needed), and name the first line that breaks it.
//!
//! Invariants: files are read as a stream, one bounded line at a time
//! (memory does not grow with the log); the first broken line stops the
//! check. Only then is a second pass made, looking for the line whose hash
//! the broken line names as its `prev`, to say *how* it broke: edited,
//! deleted, inserted or reordered.

use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::PathBuf;

use super::chain::{self, ChainHash, LineError, Sealed, MAX_LINE};
use super::files;

/// A line in one of the files checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// Index of the file in the sequence.
    pub index: usize,
    /// The file.
    pub file: PathBuf,
    /// 1-based line number in that file.
    pub line: u64,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

impl Position {
    fn before(&self, other: &Position) -> bool {
        (self.index, self.line) < (other.index, other.line)
    }
}

/// A chain that checked out.
#[derive(Debug)]
pub struct Verified {
    /// Records checked.
    pub records: u64,
    /// Files checked.
    pub files: usize,
    /// The hash of the last record (the `prev` the next record must carry;
    /// give it as `--after` to check later files on their own).
    pub last: ChainHash,
    /// An incomplete last line at the very end, left out of the count: a
    /// write in progress or one interrupted by a crash (jitgate drops it on
    /// its next start). Nothing before it is affected.
    pub torn_tail: Option<Position>,
}

/// What is wrong with the first broken line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// Not a sealed record: not JSON, or no `prev`/`hash` at its end.
    Unsealed(String),
    /// Its hash does not match its content.
    Edited,
    /// Longer than any line jitgate writes.
    TooLong,
    /// A line without a line break that is not at the very end.
    Incomplete,
    /// The first record does not start a chain (and no `--after` was given).
    StartMissing,
    /// The first record does not follow the `--after` hash.
    NotAfter,
    /// A record that starts a new chain, in the middle of one.
    Restarted,
    /// The record follows an earlier record than the line before it.
    FollowsEarlier(Position),
    /// The record's predecessor comes later in the files.
    BelongsAfter(Position),
    /// No record given has the hash this record follows.
    PredecessorMissing,
    /// The same record as another line (same hash): copied in by hand.
    Copy(Position),
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Unsealed(why) => write!(
                f,
                "not a sealed audit record ({why}): added or rewritten by hand, or damaged"
            ),
            Problem::Edited => f.write_str("edited: the line's hash does not match its content"),
            Problem::TooLong => f.write_str("a line longer than 1 MiB: not written by jitgate"),
            Problem::Incomplete => {
                f.write_str("an incomplete line (no line break) before the end of the chain")
            }
            Problem::StartMissing => f.write_str(
                "the chain does not start here (prev is not 64 zeros): earlier records or files \
                 are missing; give the rotated files first, oldest first, or --after HASH",
            ),
            Problem::NotAfter => f.write_str("the first record does not follow the --after hash"),
            Problem::Restarted => f.write_str(
                "a new chain starts here (prev is 64 zeros): this line was inserted, or the \
                 log before it was replaced",
            ),
            Problem::FollowsEarlier(p) => write!(
                f,
                "inserted or moved: this record follows {p} in the chain, so the line(s) after \
                 {p} and before this one do not belong there"
            ),
            Problem::BelongsAfter(p) => {
                write!(f, "out of order: this record belongs after {p}")
            }
            Problem::Copy(p) => write!(f, "a copy of the record at {p}"),
            Problem::PredecessorMissing => f.write_str(
                "does not follow the line before it, and no line given has the hash it follows: \
                 records before it were deleted, or the line before it was rewritten, or this \
                 line was inserted",
            ),
        }
    }
}

/// The first broken line.
#[derive(Debug)]
pub struct Broken {
    /// Where.
    pub at: Position,
    /// What.
    pub problem: Problem,
    /// Records that checked out before it.
    pub verified: u64,
}

/// Why verification did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// A file could not be read.
    #[error("{}: {source}", file.display())]
    Io {
        /// The file.
        file: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The chain is broken.
    #[error("{}: {}", .0.at, .0.problem)]
    Broken(Broken),
}

/// Expand the arguments: a directory stands for its rotated files (oldest
/// first) followed by its `audit.jsonl`; a file stands for itself.
pub fn expand(paths: &[PathBuf]) -> Result<Vec<PathBuf>, VerifyError> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let io = |source| VerifyError::Io {
                file: p.clone(),
                source,
            };
            out.extend(files::rotated(p).map_err(io)?);
            let current = p.join(files::CURRENT);
            if current.exists() {
                out.push(current);
            }
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

/// How one read line ended.
#[derive(Debug, Clone, Copy)]
enum Read {
    /// With a line break.
    Complete,
    /// At the end of the file, without one.
    Torn,
    /// Over [`MAX_LINE`] (the rest is not read).
    TooLong,
}

/// Read one line into `buf` (without its `\n`), never holding more than
/// [`MAX_LINE`] bytes. `None` at the end of the file.
fn read_line(r: &mut impl BufRead, buf: &mut Vec<u8>) -> io::Result<Option<Read>> {
    buf.clear();
    loop {
        let avail = r.fill_buf()?;
        if avail.is_empty() {
            return Ok((!buf.is_empty()).then_some(Read::Torn));
        }
        let (chunk, found) = match avail.iter().position(|&b| b == b'\n') {
            Some(i) => (avail.split_at(i).0, true),
            None => (avail, false),
        };
        if buf.len() + chunk.len() > MAX_LINE {
            return Ok(Some(Read::TooLong));
        }
        buf.extend_from_slice(chunk);
        let used = chunk.len() + usize::from(found);
        r.consume(used);
        if found {
            return Ok(Some(Read::Complete));
        }
    }
}

/// Every line of `files` in order, with its position; stops at the first
/// I/O error or when `f` returns `Some`.
fn each_line<T>(
    files: &[PathBuf],
    mut f: impl FnMut(Position, Read, &[u8], bool) -> Option<T>,
) -> Result<Option<T>, VerifyError> {
    let mut buf = Vec::new();
    for (index, file) in files.iter().enumerate() {
        let io = |source| VerifyError::Io {
            file: file.clone(),
            source,
        };
        let mut r = BufReader::with_capacity(64 * 1024, File::open(file).map_err(io)?);
        let mut line = 0;
        while let Some(read) = read_line(&mut r, &mut buf).map_err(io)? {
            line += 1;
            let at_end = matches!(read, Read::Torn) && index + 1 == files.len();
            let pos = Position {
                index,
                file: file.clone(),
                line,
            };
            if let Some(t) = f(pos, read, &buf, at_end) {
                return Ok(Some(t));
            }
            if matches!(read, Read::TooLong) {
                break; // the rest of an over-long line would read as lines
            }
        }
    }
    Ok(None)
}

/// Check that `files`, in order, hold one unbroken chain whose first record
/// follows `start` (64 zeros for a log from its beginning).
pub fn verify(files: &[PathBuf], start: ChainHash) -> Result<Verified, VerifyError> {
    let mut expected = start;
    let mut records = 0u64;
    let mut torn_tail = None;
    let mut previous: Option<Position> = None;
    // First pass: stream, stop at the first broken line.
    let broken = each_line(files, |pos, read, line, at_end| {
        let sealed = match read {
            Read::TooLong => return Some((pos, Problem::TooLong, None)),
            Read::Torn if at_end => {
                torn_tail = Some(pos);
                return None;
            }
            Read::Torn => return Some((pos, Problem::Incomplete, None)),
            Read::Complete if line.is_empty() => {
                return Some((pos, Problem::Unsealed("empty line".into()), None))
            }
            Read::Complete => match chain::open(line) {
                Ok(s) => s,
                Err(LineError::Unsealed(why)) => return Some((pos, Problem::Unsealed(why), None)),
                Err(LineError::HashMismatch { .. }) => return Some((pos, Problem::Edited, None)),
            },
        };
        if sealed.prev != expected {
            return Some((pos, Problem::PredecessorMissing, Some(sealed)));
        }
        expected = sealed.hash;
        records += 1;
        previous = Some(pos);
        None
    })?;
    let Some((at, problem, prev)) = broken else {
        return Ok(Verified {
            records,
            files: files.len(),
            last: expected,
            torn_tail,
        });
    };
    let problem = match prev {
        Some(sealed) => diagnose(files, &at, sealed, previous.is_none(), start)?,
        None => problem,
    };
    Err(VerifyError::Broken(Broken {
        at,
        problem,
        verified: records,
    }))
}

/// Second pass: why the record at `at` does not follow the line before it.
fn diagnose(
    files: &[PathBuf],
    at: &Position,
    sealed: Sealed,
    first: bool,
    start: ChainHash,
) -> Result<Problem, VerifyError> {
    let mut predecessor = None;
    let mut twin = None;
    each_line(files, |pos, read, line, _| {
        if let (Read::Complete, Ok(s), true) = (read, chain::links(line), pos != *at) {
            if s.hash == sealed.prev && predecessor.is_none() {
                predecessor = Some(pos.clone());
            }
            if s.hash == sealed.hash && twin.is_none() {
                twin = Some(pos);
            }
        }
        None::<()>
    })?;
    Ok(match (twin, predecessor) {
        (Some(t), _) => Problem::Copy(t),
        (None, Some(p)) if p.before(at) => Problem::FollowsEarlier(p),
        (None, Some(p)) => Problem::BelongsAfter(p),
        (None, None) if first && start == ChainHash::GENESIS => Problem::StartMissing,
        (None, None) if first => Problem::NotAfter,
        (None, None) if sealed.prev == ChainHash::GENESIS => Problem::Restarted,
        (None, None) => Problem::PredecessorMissing,
    })
}
