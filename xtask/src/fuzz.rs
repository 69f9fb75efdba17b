//! `cargo xtask fuzz`: the libFuzzer targets in `fuzz/` for a while each, then the
//! differential test (the XDP program against the reference matcher) at fifty times its CI
//! size.
//!
//! The targets run with `cargo fuzz` (installed when missing), without a sanitizer: what they
//! exercise is edgeblock's safe Rust and widely used parsing crates, where AddressSanitizer
//! would mostly re-find what Rust's own checks catch (on, overflow checks included: cargo-fuzz
//! builds with debug assertions), at half the speed. That also keeps them on the stable
//! toolchain: `-s none` needs no `-Z` flag. Each target
//! grows its corpus in `fuzz/corpus/<target>` (not in git) from the seeds in
//! `fuzz/seeds/<target>` (in git); crashes land in `fuzz/artifacts/<target>`.

use std::collections::VecDeque;
use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Instant, SystemTime};

use anyhow::{Context as _, Result, bail};
use edgeblock_tests::is_root;

use crate::bootstrap;
use crate::cargo::{cargo, describe, run_checked, run_shown, workspace_root};

/// The cargo-fuzz project, relative to the workspace root.
const FUZZ_DIR: &str = "fuzz";
/// The targets, in `fuzz/fuzz_targets/<name>.rs`.
const TARGETS: [&str; 3] = ["policy_parse", "prefix_list", "compile"];
/// Seconds per target without `--seconds`.
const DEFAULT_SECONDS: u64 = 300;
const CI_SECONDS: u64 = 30;
/// The long differential run: 1,000 policies x 1,000 frames (CI runs 100 x 200).
const DIFF_POLICIES: &str = "1000";
const DIFF_FRAMES: &str = "1000";
/// One input that runs longer than this is a bug (a hang or a blow-up), reported as a crash.
const INPUT_TIMEOUT_SECONDS: u64 = 30;
/// libFuzzer's output lines kept to show when a target fails.
const TAIL_LINES: usize = 60;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// CI size: 30 s per target with -rss_limit_mb=2048, and no long differential run (CI runs
    /// the normal-sized one in `cargo xtask test`).
    #[arg(long)]
    pub ci: bool,
    /// Seconds per fuzz target [default: 300, or 30 with --ci].
    #[arg(long, value_name = "N")]
    pub seconds: Option<u64>,
}

pub fn run(args: &Args) -> Result<()> {
    let start = Instant::now();
    bootstrap::run(&bootstrap::Args::install()).context("bootstrap failed")?;
    let seconds = args
        .seconds
        .unwrap_or(if args.ci { CI_SECONDS } else { DEFAULT_SECONDS });
    let root = workspace_root();

    println!("\n== cargo-fuzz");
    ensure_cargo_fuzz()?;
    // Built once up front, so that each target's time is spent fuzzing.
    run_checked(cargo_fuzz("build").args(["-s", "none"]))
        .context("building the fuzz targets failed")?;

    let mut failed = Vec::new();
    for target in TARGETS {
        println!("\n== fuzz {target} for {seconds}s");
        let took = Instant::now();
        match fuzz_target(target, seconds, args.ci)? {
            Ok(()) => println!("ok: {target} ({:.0?})", took.elapsed()),
            Err(why) => {
                println!("FAILED: {target}: {why}");
                failed.push(target.to_owned());
            }
        }
    }

    if args.ci {
        println!(
            "\n== differential test: not run with --ci (`cargo xtask test` runs it at CI size)"
        );
    } else {
        println!("\n== differential test, long: {DIFF_POLICIES} policies x {DIFF_FRAMES} frames");
        if let Err(why) = long_differential(root) {
            println!("FAILED: {why:#}");
            failed.push("differential".to_owned());
        }
    }

    println!("\n== fuzz: done in {:.0?}", start.elapsed());
    if !failed.is_empty() {
        bail!("failed: {}", failed.join(", "));
    }
    Ok(())
}

/// `cargo fuzz <verb> --fuzz-dir fuzz`, from the workspace root: paths given to it are
/// relative to the root, so the commands shown can be pasted there.
fn cargo_fuzz(verb: &str) -> Command {
    let mut cmd = cargo();
    cmd.current_dir(workspace_root())
        .args(["fuzz", verb, "--fuzz-dir", FUZZ_DIR]);
    cmd
}

/// Installs cargo-fuzz unless `cargo fuzz` already answers.
fn ensure_cargo_fuzz() -> Result<()> {
    let present = cargo()
        .args(["fuzz", "--version"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|out| out.status.success());
    if present {
        println!("  ok       cargo-fuzz");
        return Ok(());
    }
    println!("  missing  cargo-fuzz: installing it with `cargo install cargo-fuzz --locked`");
    run_checked(cargo().args(["install", "cargo-fuzz", "--locked"]))
        .context("installing cargo-fuzz failed")
}

/// Runs one target for `seconds`. The outer error is xtask's own (cargo could not be run); the
/// inner one is the target's failure, with its crash files named.
fn fuzz_target(target: &str, seconds: u64, ci: bool) -> Result<Result<(), String>> {
    let corpus = format!("{FUZZ_DIR}/corpus/{target}");
    let seeds = format!("{FUZZ_DIR}/seeds/{target}");
    let artifacts = format!("{FUZZ_DIR}/artifacts/{target}");
    let root = workspace_root();
    std::fs::create_dir_all(root.join(&corpus))
        .with_context(|| format!("cannot create {corpus}"))?;
    let mut cmd = cargo_fuzz("run");
    cmd.args(["-s", "none", target, &corpus, &seeds, "--"])
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-timeout={INPUT_TIMEOUT_SECONDS}"));
    if ci {
        cmd.arg("-rss_limit_mb=2048");
    }
    let started = SystemTime::now();
    let Err(mut why) = run_filtered(&mut cmd)? else {
        return Ok(Ok(()));
    };
    let crashes = new_files(&root.join(&artifacts), started);
    if crashes.is_empty() {
        why.push_str(&format!("; nothing new in {artifacts}"));
    }
    for crash in &crashes {
        let name = crash.file_name().unwrap_or_default().to_string_lossy();
        let saved = format!("{artifacts}/{name}");
        why.push_str(&format!(
            "\n  saved {saved} (in {})\n  replay: cargo fuzz run -s none {target} {saved}\n  \
             shrink: cargo fuzz tmin -s none {target} {saved}",
            root.display()
        ));
    }
    Ok(Err(why))
}

/// Runs `cmd`, showing its output without libFuzzer's running commentary (a few thousand lines
/// a minute) other than its first and last status lines; on failure, shows the last lines in
/// full.
fn run_filtered(cmd: &mut Command) -> Result<Result<(), String>> {
    println!("$ {}", describe(cmd));
    let mut child = cmd
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run `{}`", describe(cmd)))?;
    let mut tail = VecDeque::with_capacity(TAIL_LINES);
    if let Some(stderr) = child.stderr.take() {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            // Progress (`#1234 NEW ...`), new functions reached (`\tNEW_FUNC`) and the
            // recommended dictionary (`"abc" # Uses: 3`).
            let noise = line.starts_with(['#', '\t', '"']);
            if !noise || line.contains("INITED") || line.contains("DONE") {
                println!("{line}");
            }
            if tail.len() == TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(line);
        }
    }
    let status = child.wait().context("waiting for cargo fuzz")?;
    if status.success() {
        return Ok(Ok(()));
    }
    println!("-- last {} lines:", tail.len());
    for line in &tail {
        println!("{line}");
    }
    Ok(Err(format!("cargo fuzz exited with {status}")))
}

/// Files in `dir` modified since `since`: what this run saved.
fn new_files(dir: &Path, since: SystemTime) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| {
            e.metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t >= since)
        })
        .map(|e| e.path())
        .collect();
    found.sort();
    found
}

/// The differential test at 1,000 x 1,000: the same test `cargo xtask test` runs, larger, and
/// from a new seed each time (`EDGEBLOCK_DIFF_SEED` picks one).
fn long_differential(root: &Path) -> Result<()> {
    if !is_root() {
        bail!(
            "it needs root (BPF_PROG_TEST_RUN on the loaded program, a private bpffs): run \
             `sudo -E env \"PATH=$PATH\" cargo xtask fuzz`"
        );
    }
    // CI runs the fixed default seed; a long run explores elsewhere unless told otherwise.
    // The test prints the seed, and how to replay a failure with it.
    let seed = std::env::var("EDGEBLOCK_DIFF_SEED").unwrap_or_else(|_| {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        format!("{:#x}", nanos as u64)
    });
    let took = Instant::now();
    let status = run_shown(
        cargo()
            .current_dir(root)
            .env("EDGEBLOCK_DIFF_SEED", &seed)
            .env("EDGEBLOCK_DIFF_POLICIES", DIFF_POLICIES)
            .env("EDGEBLOCK_DIFF_FRAMES", DIFF_FRAMES)
            .args(["test", "-p", "tests", "--test", "differential"])
            // The run prints the outcomes it reached, and the seed to replay it with.
            .args(["--", "--nocapture"]),
    )?;
    if !status.success() {
        bail!(
            "the program and the reference disagree ({status}); the shrunk case is above and \
             in {}",
            root.join("tests/fixtures/differential-failures").display()
        );
    }
    println!("ok: differential ({:.0?})", took.elapsed());
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn every_target_has_a_source_and_seeds() {
        let fuzz = workspace_root().join(FUZZ_DIR);
        for target in TARGETS {
            let source = fuzz.join("fuzz_targets").join(format!("{target}.rs"));
            assert!(source.is_file(), "{} is missing", source.display());
            let seeds = fuzz.join("seeds").join(target);
            let count = std::fs::read_dir(&seeds)
                .unwrap_or_else(|e| panic!("{}: {e}", seeds.display()))
                .count();
            assert!(count > 0, "{} has no seeds", seeds.display());
        }
    }

    #[test]
    fn fuzz_is_not_a_workspace_member() {
        let manifest = std::fs::read_to_string(workspace_root().join("Cargo.toml"))
            .expect("read the workspace manifest");
        assert!(
            manifest.contains("exclude = [\"fuzz\"]"),
            "the fuzz crate must stay out of the workspace: `cargo test --workspace` and \
             clippy would build libFuzzer and the targets without cargo-fuzz's instrumentation"
        );
    }

    #[test]
    fn new_files_are_those_written_since() {
        let dir = std::env::temp_dir().join(format!("xtask-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let before = SystemTime::now() - Duration::from_secs(1);
        std::fs::write(dir.join("crash-1"), b"x").expect("write");
        assert_eq!(new_files(&dir, before), [dir.join("crash-1")]);
        let later = SystemTime::now() + Duration::from_secs(60);
        assert!(new_files(&dir, later).is_empty());
        assert!(new_files(&dir.join("absent"), before).is_empty());
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
