//! `cargo xtask`: what cargo cannot do alone for edgeblock.
//!
//! Installing the toolchain pieces the eBPF build and the tests need, running the privileged
//! test suite, and the end-to-end demo in throwaway network namespaces.

mod bench;
mod bootstrap;
mod cargo;
mod demo;
mod fuzz;
mod interrupt;
mod test;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Development tasks for edgeblock.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Check and install what the build and the tests need: LLVM 22 dev packages, rust-src,
    /// bpf-linker, test tools (ping, nft, xdp-tools, curl), and a bpffs at /sys/fs/bpf.
    ///
    /// Idempotent: prints each check and installs only what is missing. Installing needs root.
    Bootstrap(bootstrap::Args),
    /// Run bootstrap, the unit tests, then the privileged integration tests (needs root).
    ///
    /// Arguments after `--` go to both test runs, e.g. `cargo xtask test -- --nocapture`.
    Test(test::Args),
    /// Show edgeblock end to end: build it, attach it in a throwaway client/edge/origin
    /// topology, apply examples/policy.toml and probe which origins still answer; then add a
    /// notice server beside the edge and show redirect, reject, drop and pass side by side
    /// with examples/notice-policy.toml (needs root).
    Demo(demo::Args),
    /// Fuzz the policy parser, the prefix-list importer and the compiler (cargo-fuzz, installed
    /// when missing) for --seconds each, then run the differential test at 1,000 policies x
    /// 1,000 frames (needs root). Crashes are saved under fuzz/artifacts/<target>.
    ///
    /// --ci: 30 s per target with -rss_limit_mb=2048, and no long differential run.
    Fuzz(fuzz::Args),
    /// Measure edgeblock (needs root): per-packet cost against a bare XDP_DROP up to millions
    /// of prefixes, live drop rate against xdp-filter and nftables, apply time, map memory and
    /// correctness while policies change. See docs/performance.md.
    ///
    /// Prints one table and writes bench.json and scaling.svg to --out.
    Bench(bench::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Task::Bootstrap(args) => bootstrap::run(&args),
        Task::Test(args) => test::run(&args),
        Task::Demo(args) => demo::run(&args),
        Task::Fuzz(args) => fuzz::run(&args),
        Task::Bench(args) => bench::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn test_passes_trailing_args_through() {
        let cli = Cli::try_parse_from(["xtask", "test", "--", "--nocapture", "some_test"])
            .expect("parse");
        let Task::Test(args) = cli.command else {
            panic!("parsed as {:?}", cli.command);
        };
        assert_eq!(args.test_args, ["--nocapture", "some_test"]);
    }
}
