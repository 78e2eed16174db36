//! Configuration loading: any text must give a config or errors with
//! positions, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(errs) = jitgate::config::parse_str(text, "fuzz.toml") {
            let _ = errs.to_string();
        }
    }
});
