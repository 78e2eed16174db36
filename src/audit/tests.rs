//! The writer and the verifier together: real logs written by
//! [`AuditLog`], then tampered with the ways an auditor cares about.

use std::fs;
use std::path::{Path, PathBuf};

use super::chain::{self, ChainHash};
use super::verify::{self, Problem, Verified, VerifyError};
use super::*;

/// A log of `n` events in a fresh directory.
fn log_of(n: usize) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path(), 0).unwrap();
    for i in 0..n {
        let mut e = Event::new("grant.created");
        e.principal = Some("alice".into());
        e.reason = Some(format!("INC-{i}"));
        log.write(e).unwrap();
    }
    let path = log.path().to_path_buf();
    (dir, path)
}

fn lines(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn put(path: &Path, lines: &[String]) {
    let mut text = lines.join("\n");
    text.push('\n');
    fs::write(path, text).unwrap();
}

fn check(files: &[PathBuf]) -> Result<Verified, (u64, Problem, PathBuf)> {
    match verify::verify(files, ChainHash::GENESIS) {
        Ok(v) => Ok(v),
        Err(VerifyError::Broken(b)) => Err((b.at.line, b.problem, b.at.file)),
        Err(e) => panic!("{e}"),
    }
}

fn check_one(path: &Path) -> Result<Verified, (u64, Problem)> {
    check(&[path.to_path_buf()]).map_err(|(l, p, _)| (l, p))
}

fn hash_of(line: &str) -> ChainHash {
    chain::links(line.as_bytes()).unwrap().hash
}

#[test]
fn events_are_json_lines_without_empty_fields() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path(), 0).unwrap();
    let mut e = Event::new("session.denied");
    e.login = Some("alice".into());
    e.resource = Some("pg".into());
    log.write(e).unwrap();
    log.write(Event::new("grant.expired")).unwrap();
    let text = std::fs::read_to_string(log.path()).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["event"], "session.denied");
    assert_eq!(lines[0]["login"], "alice");
    assert!(lines[0]["ts"].as_str().unwrap().ends_with('Z'));
    assert!(lines[0].get("principal").is_none());
    assert_eq!(lines[0]["prev"], "0".repeat(64));
    assert_eq!(lines[1]["prev"], lines[0]["hash"]);
    assert_eq!(lines[1]["event"], "grant.expired");
    assert_eq!(log.health(), Health::Healthy);
}

#[test]
fn a_real_log_verifies() {
    let (_d, path) = log_of(5);
    let v = check_one(&path).unwrap();
    assert_eq!(v.records, 5);
    assert_eq!(v.last, hash_of(&lines(&path)[4]));
    assert!(v.torn_tail.is_none());
}

#[test]
fn an_edited_field_is_named() {
    let (_d, path) = log_of(5);
    let mut l = lines(&path);
    l[2] = l[2].replace("alice", "mallory");
    put(&path, &l);
    assert_eq!(check_one(&path).unwrap_err(), (3, Problem::Edited));
}

#[test]
fn an_edited_and_rehashed_line_breaks_the_next_one() {
    let (_d, path) = log_of(5);
    let mut l = lines(&path);
    // Recompute line 3's own hash after the edit, as a careful forger would.
    let prev = chain::links(l[2].as_bytes()).unwrap().prev;
    let v: serde_json::Value = serde_json::from_str(&l[2].replace("alice", "mallory")).unwrap();
    let mut obj = v.as_object().unwrap().clone();
    obj.remove("prev");
    obj.remove("hash");
    let (line, _) = chain::seal(&serde_json::to_vec(&obj).unwrap(), &prev);
    l[2] = String::from_utf8(line).unwrap().trim_end().to_string();
    put(&path, &l);
    assert_eq!(
        check_one(&path).unwrap_err(),
        (4, Problem::PredecessorMissing)
    );
}

#[test]
fn a_deleted_line_is_named() {
    let (_d, path) = log_of(5);
    let mut l = lines(&path);
    l.remove(2);
    put(&path, &l);
    assert_eq!(
        check_one(&path).unwrap_err(),
        (3, Problem::PredecessorMissing)
    );
}

#[test]
fn a_deleted_first_line_is_a_missing_start() {
    let (_d, path) = log_of(3);
    let mut l = lines(&path);
    let first = l.remove(0);
    put(&path, &l);
    assert_eq!(check_one(&path).unwrap_err(), (1, Problem::StartMissing));
    // Given the hash it should follow, the rest checks out.
    let v = verify::verify(&[path], hash_of(&first)).unwrap();
    assert_eq!(v.records, 2);
}

#[test]
fn a_swapped_pair_is_named() {
    let (_d, path) = log_of(5);
    let mut l = lines(&path);
    l.swap(1, 2);
    put(&path, &l);
    let (line, problem) = check_one(&path).unwrap_err();
    assert_eq!(line, 2);
    match problem {
        Problem::BelongsAfter(p) => assert_eq!(p.line, 3),
        other => panic!("{other:?}"),
    }
}

#[test]
fn lines_appended_by_hand_are_named() {
    let (_d, path) = log_of(3);
    let good = lines(&path);
    // A plausible line without a chain.
    let mut l = good.clone();
    l.push(r#"{"ts":"2026-11-29T21:00:00.000Z","event":"grant.revoked","actor":"admin"}"#.into());
    put(&path, &l);
    assert!(matches!(
        check_one(&path).unwrap_err(),
        (4, Problem::Unsealed(_))
    ));
    // A copy of an earlier record.
    let mut l = good.clone();
    l.push(good[1].clone());
    put(&path, &l);
    match check_one(&path).unwrap_err() {
        (4, Problem::Copy(p)) => assert_eq!(p.line, 2),
        other => panic!("{other:?}"),
    }
    // A sealed line that starts its own chain.
    let (forged, _) = chain::seal(
        br#"{"ts":"2026-11-29T21:00:00.000Z","event":"grant.revoked"}"#,
        &ChainHash::GENESIS,
    );
    let mut l = good.clone();
    l.push(String::from_utf8(forged).unwrap().trim_end().into());
    put(&path, &l);
    assert_eq!(check_one(&path).unwrap_err(), (4, Problem::Restarted));
    // A sealed line with a made-up prev.
    let (forged, _) = chain::seal(
        br#"{"ts":"2026-11-29T21:00:00.000Z","event":"grant.revoked"}"#,
        &ChainHash::of(b"made up"),
    );
    let mut l = good;
    l.push(String::from_utf8(forged).unwrap().trim_end().into());
    put(&path, &l);
    assert_eq!(
        check_one(&path).unwrap_err(),
        (4, Problem::PredecessorMissing)
    );
}

#[test]
fn an_inserted_line_is_named() {
    let (_d, path) = log_of(5);
    let good = lines(&path);
    // Sealed onto line 2, inserted after it: line 3 is fine, line 4 (the
    // old line 3) no longer follows the line before it.
    let (forged, _) = chain::seal(
        br#"{"ts":"2026-11-29T21:00:00.000Z","event":"grant.created","principal":"mallory"}"#,
        &hash_of(&good[1]),
    );
    let mut l = good.clone();
    l.insert(2, String::from_utf8(forged).unwrap().trim_end().into());
    put(&path, &l);
    match check_one(&path).unwrap_err() {
        (4, Problem::FollowsEarlier(p)) => assert_eq!(p.line, 2),
        other => panic!("{other:?}"),
    }
    // An unsealed line inserted.
    let mut l = good;
    l.insert(2, "{}".into());
    put(&path, &l);
    assert!(matches!(
        check_one(&path).unwrap_err(),
        (3, Problem::Unsealed(_))
    ));
    // An empty line.
    let mut l = lines(&path);
    l[2] = String::new();
    put(&path, &l);
    assert!(matches!(
        check_one(&path).unwrap_err(),
        (3, Problem::Unsealed(_))
    ));
}

#[test]
fn reopening_continues_the_chain() {
    let (dir, path) = log_of(3);
    let log = AuditLog::open(dir.path(), 0).unwrap();
    log.write(Event::new("session.started")).unwrap();
    drop(log);
    let log = AuditLog::open(dir.path(), 0).unwrap();
    log.write(Event::new("session.ended")).unwrap();
    assert_eq!(check_one(&path).unwrap().records, 5);
}

#[test]
fn a_torn_tail_is_reported_then_moved_aside_on_open() {
    let (dir, path) = log_of(3);
    let mut text = fs::read(&path).unwrap();
    text.extend_from_slice(br#"{"ts":"2026-11-29T21:00:00.000Z","event":"sess"#);
    fs::write(&path, &text).unwrap();
    // verify: the chain before it is intact; the torn line is not counted.
    let v = check_one(&path).unwrap();
    assert_eq!(v.records, 3);
    assert_eq!(v.torn_tail.unwrap().line, 4);
    // A torn line that is not at the very end is an error.
    let other = dir.path().join("later.jsonl");
    fs::write(&other, b"").unwrap();
    assert_eq!(
        check(&[path.clone(), other]).unwrap_err().1,
        Problem::Incomplete
    );
    // On open it is moved to a side file and the chain goes on.
    let log = AuditLog::open(dir.path(), 0).unwrap();
    log.write(Event::new("session.started")).unwrap();
    assert_eq!(check_one(&path).unwrap().records, 4);
    assert!(fs::read(&path).unwrap().ends_with(b"\n"));
    let side: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("audit.jsonl.torn-"))
        .collect();
    assert_eq!(side.len(), 1, "{side:?}");
    assert_eq!(
        fs::read(dir.path().join(&side[0])).unwrap(),
        br#"{"ts":"2026-11-29T21:00:00.000Z","event":"sess"#
    );
}

#[test]
fn a_log_from_before_the_chain_is_set_aside() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let legacy = "{\"ts\":\"2026-11-29T21:00:00.000Z\",\"event\":\"grant.created\"}\n";
    fs::write(&path, legacy).unwrap();
    let log = AuditLog::open(dir.path(), 0).unwrap();
    log.write(Event::new("session.started")).unwrap();
    let v = check_one(&path).unwrap();
    assert_eq!(v.records, 1);
    let side: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("audit.jsonl.unchained-"))
        .collect();
    assert_eq!(side.len(), 1);
    assert_eq!(fs::read_to_string(&side[0]).unwrap(), legacy);
}

/// A log with rotation at 4 KiB and `n` events (about 190 bytes each).
fn rotated_log(n: usize) -> (tempfile::TempDir, Vec<PathBuf>) {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path(), 4096).unwrap();
    for i in 0..n {
        let mut e = Event::new("session.started");
        e.reason = Some(format!("{i}"));
        log.write(e).unwrap();
    }
    let files = verify::expand(&[dir.path().to_path_buf()]).unwrap();
    (dir, files)
}

#[test]
fn rotation_keeps_the_chain_across_files() {
    let (dir, files) = rotated_log(100);
    assert!(files.len() >= 4, "{files:?}");
    assert!(files.last().unwrap().ends_with("audit.jsonl"));
    for f in &files {
        assert!(fs::metadata(f).unwrap().len() <= 4096, "{}", f.display());
    }
    let v = check(&files).unwrap();
    assert_eq!(v.records, 100);
    assert_eq!(v.files, files.len());
    // The directory stands for the same sequence.
    assert_eq!(verify::expand(&[dir.path().to_path_buf()]).unwrap(), files);
    // The current file alone does not start the chain ...
    let current = files.last().unwrap().clone();
    assert_eq!(
        check(std::slice::from_ref(&current)).unwrap_err().1,
        Problem::StartMissing
    );
    // ... but follows the last hash of the files before it.
    let before = check(&files[..files.len() - 1]).unwrap();
    let rest = verify::verify(std::slice::from_ref(&current), before.last).unwrap();
    assert_eq!(before.records + rest.records, 100);
    // Reopening continues the chain in the same sequence.
    let log = AuditLog::open(dir.path(), 4096).unwrap();
    log.write(Event::new("session.ended")).unwrap();
    let files = verify::expand(&[dir.path().to_path_buf()]).unwrap();
    assert_eq!(check(&files).unwrap().records, 101);
}

#[test]
fn a_missing_or_misordered_rotated_file_is_named() {
    let (_dir, files) = rotated_log(100);
    // A file left out: the first line of the next one breaks.
    let mut gap = files.clone();
    gap.remove(1);
    let (line, problem, file) = check(&gap).unwrap_err();
    assert_eq!((line, &file), (1, &files[2]));
    assert_eq!(problem, Problem::PredecessorMissing);
    // Two files in the wrong order.
    let mut swapped = files.clone();
    swapped.swap(1, 2);
    let (line, problem, file) = check(&swapped).unwrap_err();
    assert_eq!((line, &file), (1, &files[2]));
    match problem {
        Problem::BelongsAfter(p) => assert_eq!(p.file, files[1]),
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_empty_current_file_after_rotation_continues_from_the_rotated_one() {
    let (dir, files) = rotated_log(30);
    // As if jitgate stopped right after a rotation: the current file is empty.
    let current = dir.path().join("audit.jsonl");
    let last_rotated = files[files.len() - 2].clone();
    let mut all = fs::read(&last_rotated).unwrap();
    all.extend(fs::read(&current).unwrap());
    fs::write(&last_rotated, all).unwrap();
    fs::write(&current, b"").unwrap();
    let log = AuditLog::open(dir.path(), 0).unwrap();
    log.write(Event::new("session.started")).unwrap();
    let files = verify::expand(&[dir.path().to_path_buf()]).unwrap();
    assert_eq!(check(&files).unwrap().records, 31);
}

#[test]
fn rotated_names_sort_after_the_newest_even_if_the_clock_stepped_back() {
    let (dir, _) = rotated_log(0);
    // A rotated file from the future.
    fs::write(dir.path().join("audit-29991231T235959999Z.jsonl"), b"").unwrap();
    let log = AuditLog::open(dir.path(), 4096).unwrap();
    for _ in 0..40 {
        log.write(Event::new("session.started")).unwrap();
    }
    let names: Vec<String> = files::rotated(dir.path())
        .unwrap()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names[0], "audit-29991231T235959999Z.jsonl");
    assert!(names.len() >= 2);
    assert!(names[1].starts_with("audit-3"), "{names:?}");
}

#[test]
fn a_new_rotation_size_applies_from_the_next_record() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path(), 0).unwrap();
    for _ in 0..40 {
        log.write(Event::new("session.started")).unwrap();
    }
    assert!(files::rotated(dir.path()).unwrap().is_empty());
    log.set_rotate_bytes(4096);
    log.write(Event::new("session.started")).unwrap();
    assert_eq!(files::rotated(dir.path()).unwrap().len(), 1);
    let files = verify::expand(&[dir.path().to_path_buf()]).unwrap();
    assert_eq!(check(&files).unwrap().records, 41);
}

#[test]
fn an_over_long_record_is_refused_without_harming_the_log() {
    let (dir, path) = log_of(2);
    let log = AuditLog::open(dir.path(), 0).unwrap();
    let mut e = Event::new("grant.created");
    e.reason = Some("x".repeat(chain::MAX_LINE));
    let err = log.write(e).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    assert_eq!(log.health(), Health::Healthy);
    log.write(Event::new("session.started")).unwrap();
    assert_eq!(check_one(&path).unwrap().records, 3);
}
