//! `jitgate audit verify`: the offline check of the audit hash chain. Exit
//! 0 with `OK: N records …`; exit 1 naming the first broken line as
//! `FILE:LINE: what is wrong`; exit 2 when a file cannot be read.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::audit::chain::ChainHash;
use crate::audit::verify::{self, VerifyError};

/// Check `paths` (files, or state directories standing for their rotated
/// files then `audit.jsonl`) as one chain.
pub fn verify(paths: &[PathBuf], after: Option<&str>) -> ExitCode {
    let start = match after {
        None => ChainHash::GENESIS,
        Some(h) => match ChainHash::parse_hex(h.as_bytes()) {
            Some(h) => h,
            None => {
                eprintln!("error: --after must be 64 lowercase hex digits (a record's hash)");
                return ExitCode::from(2);
            }
        },
    };
    let result = verify::expand(paths).and_then(|files| {
        if files.is_empty() {
            eprintln!("error: no audit files found");
            return Ok(None);
        }
        verify::verify(&files, start).map(Some)
    });
    match result {
        Ok(Some(v)) => {
            if let Some(p) = &v.torn_tail {
                eprintln!("note: {p}: incomplete last line not counted (a write in progress, or one cut short by a crash; jitgate moves it aside when it next starts)");
            }
            let records = if v.records == 1 { "record" } else { "records" };
            let files = if v.files == 1 { "file" } else { "files" };
            println!(
                "OK: {} {records} in {} {files}; last hash {}",
                v.records, v.files, v.last
            );
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::from(2),
        Err(VerifyError::Broken(b)) => {
            eprintln!(
                "{}: {} ({} records before it verified)",
                b.at, b.problem, b.verified
            );
            ExitCode::FAILURE
        }
        Err(e @ VerifyError::Io { .. }) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
