//! The parts of the benchmark that drive edgeblock through its public library: build a policy
//! from generated lists, apply it to real maps, time `BPF_PROG_TEST_RUN` on the loaded program,
//! and probe it while policies change.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use aya::programs::{TestRun as _, TestRunOptions, Xdp};
use edgeblock::{apply, compile::Compiled, loader::Filter, pins::Pins, policy};

use super::bench_prefixes::{V4, V6};
use super::bench_report::{Cost, Memory};

pub use crate::interrupt::{catch as catch_interrupts, check as check_interrupt};

/// XDP return values (`enum xdp_action`).
pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;

pub fn action_name(a: u32) -> &'static str {
    match a {
        XDP_ABORTED => "ABORTED",
        XDP_DROP => "DROP",
        XDP_PASS => "PASS",
        3 => "TX",
        4 => "REDIRECT",
        _ => "?",
    }
}

pub const V4_LIST: &str = "v4.list";
pub const V6_LIST: &str = "v6.list";

/// The policy the benchmark loads: one drop rule per family, each including its list file, the
/// way a large block list is usually wired in. A family with no prefixes gets no rule.
pub fn policy_text(v4: usize, v6: usize) -> String {
    let mut s = String::from("# written by `cargo xtask bench`\n");
    for (n, name, list) in [(v4, "bench-v4", V4_LIST), (v6, "bench-v6", V6_LIST)] {
        if n > 0 {
            s.push_str(&format!(
                "\n[[rule]]\nname = \"{name}\"\naction = \"drop\"\ninclude = [\"{list}\"]\n"
            ));
        }
    }
    s
}

/// Parse and compile the policy for these lists through `policy::parse` (the list files are
/// served from memory), as `edgeblock apply` would. Returns the time it took.
pub fn compile(v4: &[V4], v6: &[V6]) -> Result<(Compiled, Duration)> {
    let lists: HashMap<&str, String> = [
        (V4_LIST, super::bench_prefixes::list_text(v4)),
        (V6_LIST, super::bench_prefixes::list_text(v6)),
    ]
    .into_iter()
    .collect();
    let text = policy_text(v4.len(), v6.len());
    let start = Instant::now();
    let policy = policy::parse(
        &text,
        Path::new("bench/policy.toml"),
        jiff::Timestamp::now(),
        |p| {
            p.file_name()
                .and_then(|f| f.to_str())
                .and_then(|f| lists.get(f))
                .cloned()
                .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no such list"))
        },
    )
    .map_err(|e| anyhow::anyhow!("the generated policy does not validate:\n{e}"))?;
    let compiled = edgeblock::compile::compile(&policy);
    Ok((compiled, start.elapsed()))
}

/// Write the policy and its list files into `dir`, for the CLI.
pub fn write_policy(dir: &Path, v4: &[V4], v6: &[V6]) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let write = |name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
    };
    write(V4_LIST, super::bench_prefixes::list_text(v4))?;
    write(V6_LIST, super::bench_prefixes::list_text(v6))?;
    write("policy.toml", policy_text(v4.len(), v6.len()))?;
    Ok(dir.join("policy.toml"))
}

fn now_unix() -> u64 {
    jiff::Timestamp::now().as_second().max(0) as u64
}

/// `apply::apply` on the live maps, timed. The apply error is returned as is, so that a
/// policy that does not fit can be reported rather than abort the run.
pub fn apply(filter: &mut Filter, compiled: &Compiled) -> Result<Duration, apply::ApplyError> {
    let start = Instant::now();
    apply::apply(&mut filter.maps, compiled, &[], now_unix())?;
    Ok(start.elapsed())
}

/// `runs` calls of `BPF_PROG_TEST_RUN` with `repeat` repetitions each; every call must return
/// `expect`. Records the kernel's average per repetition (whole ns) and the wall time of the
/// call divided by `repeat` (sub-ns resolution, plus the call's fixed cost spread thin).
///
/// With `floor` (the bare `XDP_DROP` program), each run also calls the floor with the same
/// frame and repetitions, right before or right after (the order swaps every run), so that
/// each run's ratio compares two moments seconds apart at most: this machine's speed changes
/// by half for tens of seconds at a time, and a floor measured once at the start of the
/// scaling table compared moments minutes apart.
pub fn cost(
    prog: &Xdp,
    frame: &[u8],
    expect: u32,
    repeat: u32,
    runs: usize,
    floor: Option<&Xdp>,
) -> Result<Cost> {
    let mut c = Cost::default();
    for run in 0..runs {
        let floor_first = run % 2 == 1;
        if floor_first && let Some(f) = floor {
            c.floor_ns.push(once(f, frame, XDP_DROP, repeat)?.0);
        }
        let (kernel, wall) = once(prog, frame, expect, repeat)?;
        c.kernel_ns.push(kernel);
        c.wall_ns.push(wall);
        if !floor_first && let Some(f) = floor {
            c.floor_ns.push(once(f, frame, XDP_DROP, repeat)?.0);
        }
    }
    Ok(c)
}

/// One `BPF_PROG_TEST_RUN` call: the kernel's average per repetition (whole ns) and the wall
/// time per repetition.
fn once(prog: &Xdp, frame: &[u8], expect: u32, repeat: u32) -> Result<(u64, f64)> {
    let start = Instant::now();
    let r = prog
        .test_run(TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..TestRunOptions::default()
        })
        .context("BPF_PROG_TEST_RUN")?;
    let wall = start.elapsed();
    if r.return_value != expect {
        bail!(
            "the program returned {} where {} was expected",
            action_name(r.return_value),
            action_name(expect)
        );
    }
    Ok((
        r.duration.as_nanos() as u64,
        wall.as_nanos() as f64 / f64::from(repeat),
    ))
}

/// An `edgeblock` CLI invocation on a private pin root, state dir and data dir (under the
/// state dir: the audit log, the recorded policy and the runtime blocks of the host's
/// /var/lib/edgeblock must neither be written nor merged into what is measured).
pub struct Cli<'a> {
    pub bin: &'a Path,
    pub pin_root: PathBuf,
    pub state_dir: &'a Path,
}

impl Cli<'_> {
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(self.bin);
        cmd.arg("--pin-root")
            .arg(&self.pin_root)
            .arg("--state-dir")
            .arg(self.state_dir)
            .env("EDGEBLOCK_DATA_DIR", self.state_dir.join("data"));
        cmd
    }

    /// Run with `args`, timed; an unsuccessful exit is an error carrying its stderr.
    pub fn run(&self, args: &[&str]) -> Result<(String, Duration)> {
        let mut cmd = self.command();
        cmd.args(args);
        let start = Instant::now();
        let out = cmd
            .output()
            .with_context(|| format!("running {}", self.bin.display()))?;
        let took = start.elapsed();
        if !out.status.success() {
            bail!(
                "`edgeblock {}` failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok((String::from_utf8_lossy(&out.stdout).into_owned(), took))
    }

    /// Kernel memory of the maps, from `edgeblock status --json`.
    pub fn memory(&self) -> Result<Memory> {
        let (out, _) = self.run(&["status", "--json"])?;
        let v: serde_json::Value =
            serde_json::from_str(&out).context("parsing `edgeblock status --json`")?;
        let total = v["map_memory_bytes"]
            .as_u64()
            .context("`edgeblock status --json` has no map_memory_bytes")?;
        let maps = v["maps"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|m| Some((m["name"].as_str()?.to_owned(), m["bytes"].as_u64()?)))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Memory { total, maps })
    }
}

/// A private pin root under the bench's bpffs.
pub fn pins(bpffs: &edgeblock_tests::Bpffs, name: &str) -> Pins {
    Pins::new(bpffs.pin_root().join(name))
}

/// One probe frame and the verdict the policy must give it.
pub struct Probe {
    pub label: &'static str,
    pub frame: Vec<u8>,
    pub expect: u32,
}

/// What the probe thread saw.
#[derive(Debug, Default, Clone)]
pub struct ProbeReport {
    pub probes: u64,
    pub wrong: u64,
    pub errors: u64,
    /// The first few wrong answers, for the report.
    pub examples: Vec<String>,
}

/// Run `probes` round-robin through `BPF_PROG_TEST_RUN` (one repetition each) until `stop`.
pub fn probe_loop(prog: &Xdp, probes: &[Probe], stop: &AtomicBool) -> ProbeReport {
    let mut r = ProbeReport::default();
    let mut i = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let p = &probes[i % probes.len()];
        i += 1;
        match prog.test_run(TestRunOptions {
            data_in: Some(&p.frame),
            repeat: 1,
            ..TestRunOptions::default()
        }) {
            Ok(res) => {
                r.probes += 1;
                if res.return_value != p.expect {
                    r.wrong += 1;
                    if r.examples.len() < 5 {
                        r.examples.push(format!(
                            "{}: {} instead of {}",
                            p.label,
                            action_name(res.return_value),
                            action_name(p.expect)
                        ));
                    }
                }
            }
            Err(e) => {
                r.errors += 1;
                if r.examples.len() < 5 {
                    r.examples
                        .push(format!("{}: test run failed: {e}", p.label));
                }
            }
        }
    }
    r
}
