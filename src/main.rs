//! The `jitgate` binary: parses the command line and hands over to
//! [`jitgate::cli`].
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    jitgate::cli::main()
}
