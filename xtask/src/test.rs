//! `cargo xtask test`: bootstrap, unit tests, then the privileged integration tests.

use std::io::BufRead as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use edgeblock_tests::{EDGEBLOCK_BIN_ENV, is_root, remove_stale_namespaces};

use crate::bootstrap;
use crate::cargo::{Profile, build_edgeblock, cargo, describe, workspace_root};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Passed to both test runs after their `--` (test name filters, `--nocapture`, ...).
    #[arg(last = true)]
    pub test_args: Vec<String>,
}

/// Totals from libtest's `test result:` lines.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counts {
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl std::ops::AddAssign for Counts {
    fn add_assign(&mut self, other: Self) {
        self.passed += other.passed;
        self.failed += other.failed;
        self.ignored += other.ignored;
    }
}

/// Parses `test result: ok. 10 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; ...`.
fn parse_result_line(line: &str) -> Option<Counts> {
    let rest = line.trim().strip_prefix("test result: ")?;
    let mut counts = Counts::default();
    for part in rest.split(';') {
        // The first part carries the verdict: "ok. 10 passed".
        let part = part.rsplit(". ").next()?.trim();
        let (n, what) = part.split_once(' ')?;
        let Ok(n) = n.parse() else { continue };
        match what {
            "passed" => counts.passed = n,
            "failed" => counts.failed = n,
            "ignored" => counts.ignored = n,
            _ => {}
        }
    }
    Some(counts)
}

/// One line of the summary.
struct Step {
    name: &'static str,
    outcome: Result<(), String>,
    took: Duration,
}

/// Runs a `cargo test` command, echoing its output, and adds up its `test result:` lines.
fn run_cargo_test(cmd: &mut Command, counts: &mut Counts) -> Result<(), String> {
    println!("$ {}", describe(cmd));
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if let Some(stdout) = child.stdout.take() {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            println!("{line}");
            if let Some(c) = parse_result_line(&line) {
                *counts += c;
            }
        }
    }
    let status = child
        .wait()
        .map_err(|e| format!("waiting for cargo: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("cargo test failed ({status})"))
    }
}

fn timed(name: &'static str, f: impl FnOnce() -> Result<(), String>) -> Step {
    println!("\n== {name}");
    let start = Instant::now();
    let outcome = f();
    Step {
        name,
        outcome,
        took: start.elapsed(),
    }
}

pub fn run(args: &Args) -> Result<()> {
    let start = Instant::now();
    bootstrap::run(&bootstrap::Args::install()).context("bootstrap failed")?;
    let root = workspace_root();
    let mut counts = Counts::default();
    let mut steps = Vec::new();

    steps.push(timed("unit tests", || {
        run_cargo_test(
            cargo()
                .current_dir(root)
                .args(["test", "--workspace", "--no-fail-fast"])
                // tests: the privileged suite, run below as root. filter-ebpf: builds only for
                // bpfel-unknown-none and has no host tests.
                .args(["--exclude", "tests", "--exclude", "filter-ebpf"])
                .arg("--")
                .args(&args.test_args),
            &mut counts,
        )
    }));

    if is_root() {
        for name in remove_stale_namespaces() {
            println!("removed namespace {name}, left by a test run that was killed");
        }
        let mut bin = None;
        steps.push(timed("build the edgeblock binary", || {
            let path = build_edgeblock(Profile::Dev).map_err(|e| format!("{e:#}"))?;
            println!("edgeblock: {}", path.display());
            bin = Some(path);
            Ok(())
        }));
        if let Some(bin) = bin {
            steps.push(timed("integration tests (root)", || {
                run_cargo_test(
                    cargo()
                        .current_dir(root)
                        .args(["test", "--package", "tests", "--no-fail-fast"])
                        .env(EDGEBLOCK_BIN_ENV, &bin)
                        // They share one host, and some measure timing: one at a time.
                        .args(["--", "--test-threads=1"])
                        .args(&args.test_args),
                    &mut counts,
                )
            }));
        }
    } else {
        println!("\n== integration tests (root)");
        steps.push(Step {
            name: "integration tests (root)",
            outcome: Err(
                "not run: they need root (CAP_NET_ADMIN, CAP_BPF, CAP_SYS_ADMIN for namespaces, \
                 XDP and bpffs); run `sudo -E env \"PATH=$PATH\" cargo xtask test`"
                    .to_owned(),
            ),
            took: Duration::ZERO,
        });
    }

    summarize(&steps, counts, start.elapsed());
    let failed: Vec<_> = steps
        .iter()
        .filter(|s| s.outcome.is_err())
        .map(|s| s.name)
        .collect();
    if !failed.is_empty() {
        bail!("failed: {}", failed.join(", "));
    }
    Ok(())
}

fn summarize(steps: &[Step], counts: Counts, took: Duration) {
    println!("\n== summary ({:.0?})", took);
    for step in steps {
        let (mark, detail) = match &step.outcome {
            Ok(()) => ("ok", String::new()),
            Err(e) => ("FAILED", format!(": {e}")),
        };
        println!("  {mark:<7} {:<28} {:>6.1?}{detail}", step.name, step.took);
    }
    // Last, and in the plain form CI reads: the totals over both test runs.
    println!(
        "tests: {} passed, {} failed, {} skipped",
        counts.passed, counts.failed, counts.ignored
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_libtest_summaries() {
        let ok = "test result: ok. 10 passed; 0 failed; 2 ignored; 0 measured; 0 filtered out; \
                  finished in 0.06s";
        assert_eq!(
            parse_result_line(ok),
            Some(Counts {
                passed: 10,
                failed: 0,
                ignored: 2
            })
        );
        let failed = "test result: FAILED. 3 passed; 1 failed; 0 ignored; 0 measured; 0 filtered \
                      out; finished in 1.00s";
        assert_eq!(
            parse_result_line(failed),
            Some(Counts {
                passed: 3,
                failed: 1,
                ignored: 0
            })
        );
        assert_eq!(parse_result_line("running 3 tests"), None);
        assert_eq!(parse_result_line("test foo ... ok"), None);
    }

    #[test]
    fn counts_add_up() {
        let mut total = Counts::default();
        total += Counts {
            passed: 1,
            failed: 2,
            ignored: 3,
        };
        total += Counts {
            passed: 10,
            failed: 0,
            ignored: 1,
        };
        assert_eq!(
            total,
            Counts {
                passed: 11,
                failed: 2,
                ignored: 4
            }
        );
    }
}
