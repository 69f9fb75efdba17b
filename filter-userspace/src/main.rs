//! `edgeblock`: attach the XDP filter, apply policies, and inspect what it does.

mod cli;

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    // Rust ignores SIGPIPE, so `edgeblock stats | head -1` would panic writing to a closed
    // pipe; die quietly like any other command-line tool instead.
    // SAFETY: restoring a signal's default disposition before any thread exists.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
