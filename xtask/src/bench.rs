//! `cargo xtask bench`: the performance benchmark of docs/performance.md.
//!
//! Per-packet cost with `BPF_PROG_TEST_RUN` at growing policy sizes against a bare XDP_DROP
//! program, the live drop rate against xdp-filter and nftables, the control plane (apply time,
//! map memory) and correctness while policies change. It drives edgeblock only through its
//! public library and its CLI, so it measures whatever lookup structure is in place.
//!
//! The measuring code needs edgeblock's library (and so bpf-linker) and must be optimised, so
//! `cargo xtask bench` re-runs xtask as `cargo run --release --features bench -- bench ...`;
//! the rest of xtask builds without either.

use std::path::PathBuf;

use anyhow::Result;

#[cfg(feature = "bench")]
#[path = "bench_kernel.rs"]
mod bench_kernel;
#[cfg(feature = "bench")]
#[path = "bench_live.rs"]
mod bench_live;
#[cfg(feature = "bench")]
#[path = "bench_memory.rs"]
mod bench_memory;
#[cfg(feature = "bench")]
#[path = "bench_prefixes.rs"]
mod bench_prefixes;
#[cfg(feature = "bench")]
#[path = "bench_report.rs"]
mod bench_report;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A small run (seconds, not minutes) through every part of the benchmark, for CI: smaller
    /// lists, fewer repetitions. Its numbers are not comparable with a full run's.
    #[arg(long)]
    pub quick: bool,
    /// Directory for bench.json and scaling.svg [default: <cargo target dir>/bench].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Seed of the generated prefix lists (the same seed gives the same lists).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Run only these parts (repeatable); the others are reported as skipped. For working on
    /// one part: a full run is what docs/performance.md quotes.
    #[arg(long, value_enum)]
    pub only: Vec<Part>,
}

/// The parts of a run, for `--only`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// Per-packet cost (BPF_PROG_TEST_RUN) against the floor, at every size.
    Cost,
    /// Apply times and map memory.
    Control,
    /// Wrong verdicts while a large policy changes (needs `control`).
    Correctness,
    /// Live drop rates against xdp-filter and nftables.
    Live,
    /// Time from `publish` to applied on three hosts through NATS JetStream.
    Fleet,
    /// This machine's latency of random reads by buffer size: what a cache miss costs.
    Memory,
}

impl Args {
    /// Whether this run includes `part`.
    #[cfg_attr(
        not(feature = "bench"),
        expect(dead_code, reason = "only the bench build runs the parts")
    )]
    fn runs(&self, part: Part) -> bool {
        self.only.is_empty() || self.only.contains(&part)
    }
}

pub fn run(args: &Args) -> Result<()> {
    #[cfg(all(feature = "bench", not(debug_assertions)))]
    return imp::run(args);
    #[cfg(not(all(feature = "bench", not(debug_assertions))))]
    reexec(args)
}

/// Re-run xtask optimised and with the `bench` feature, passing the arguments on.
#[cfg(not(all(feature = "bench", not(debug_assertions))))]
fn reexec(args: &Args) -> Result<()> {
    use anyhow::Context as _;

    use crate::cargo::{cargo, run_checked, workspace_root};

    let out = match &args.out {
        Some(out) => out.clone(),
        None => target_dir()?.join("bench"),
    };
    let mut cmd = cargo();
    cmd.args(["run", "--release", "--quiet", "--package", "xtask"])
        .args(["--features", "bench", "--", "bench"])
        .arg("--out")
        .arg(&out)
        .arg("--seed")
        .arg(args.seed.to_string())
        .current_dir(workspace_root());
    if args.quick {
        cmd.arg("--quick");
    }
    for part in &args.only {
        let name = clap::ValueEnum::to_possible_value(part).context("a part has a name")?;
        cmd.arg("--only").arg(name.get_name());
    }
    run_checked(&mut cmd).context("the benchmark failed")
}

/// Cargo's target directory, from `cargo metadata` (it honours CARGO_TARGET_DIR and config).
#[cfg(not(all(feature = "bench", not(debug_assertions))))]
fn target_dir() -> Result<PathBuf> {
    use anyhow::Context as _;

    use crate::cargo::{cargo, workspace_root};

    let out = cargo()
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .current_dir(workspace_root())
        .output()
        .context("running cargo metadata")?;
    anyhow::ensure!(out.status.success(), "cargo metadata failed");
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("parsing cargo metadata")?;
    v["target_directory"]
        .as_str()
        .map(PathBuf::from)
        .context("cargo metadata has no target_directory")
}

#[cfg(feature = "bench")]
#[cfg_attr(
    debug_assertions,
    expect(
        dead_code,
        reason = "an unoptimised build re-runs itself in release mode"
    )
)]
mod imp {
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::panic::AssertUnwindSafe;
    use std::process::Command;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};

    use anyhow::{Context as _, Result, bail};
    use aya::{Ebpf, programs::Xdp};
    use edgeblock::loader::{FLOOR_OBJECT, Filter};
    use edgeblock_tests::{Bpffs, packet::Frame};
    use serde_json::json;

    use super::Args;
    use super::bench_kernel::{self as k, Cli, Probe, XDP_DROP, XDP_PASS, action_name};
    use super::bench_live;
    use super::bench_prefixes::{self as p, Rng, V4, V4_MISS_NET, V4_SRC, V6, V6_MISS_NET, V6_SRC};
    use super::bench_report::{
        CASES, CaseResult, Control, Correctness, Report, SizeResult, SizeRow, count, scaling_svg,
    };
    use crate::cargo::{Profile, build_edgeblock, workspace_root};

    /// Sizes and durations of a run.
    struct Plan {
        v4_sizes: Vec<usize>,
        v6: usize,
        repeat: u32,
        runs: usize,
        /// Prefixes of the control-plane and correctness policies.
        control: usize,
        /// Timed 1% changes without the probe, then changes under the probe.
        timed_changes: usize,
        probed_changes: usize,
        /// The probe runs at least this long.
        probe_min: Duration,
        live: bench_live::Config,
    }

    impl Plan {
        fn new(args: &Args) -> Self {
            if args.quick {
                Self {
                    v4_sizes: vec![0, 1_000, 10_000],
                    v6: 1_000,
                    repeat: 20_000,
                    runs: 5,
                    control: 10_000,
                    timed_changes: 3,
                    probed_changes: 3,
                    probe_min: Duration::from_millis(300),
                    live: bench_live::Config {
                        big: 10_000,
                        small: 1_000,
                        secs: 0.2,
                        runs: 3,
                        rounds: 3,
                        seed: args.seed,
                    },
                }
            } else {
                Self {
                    v4_sizes: vec![0, 10_000, 100_000, 1_000_000, 5_000_000],
                    v6: 100_000,
                    repeat: 1_000_000,
                    runs: 7,
                    control: 1_000_000,
                    timed_changes: 5,
                    probed_changes: 5,
                    probe_min: Duration::from_secs(3),
                    live: bench_live::Config {
                        big: 1_000_000,
                        small: 10_000,
                        secs: 2.0,
                        runs: 3,
                        rounds: 7,
                        seed: args.seed,
                    },
                }
            }
        }

        /// Prefixes to generate: the largest size, and room for the control plane's changes.
        fn v4_needed(&self) -> usize {
            let changes = self.timed_changes + self.probed_changes + 1;
            let largest = self.v4_sizes.iter().copied().max().unwrap_or(0);
            largest.max(self.control + changes * self.control / 100)
        }
    }

    /// Run `f`, turning an error or a panic (the namespace harness panics) into a message, so
    /// that one failed part of the benchmark is reported and the others still run. Guards
    /// (namespaces, bpffs mounts) are dropped while the panic unwinds.
    fn section<T>(
        args: &Args,
        part: super::Part,
        name: &str,
        f: impl FnOnce() -> Result<T>,
    ) -> Result<T, String> {
        if !args.runs(part) {
            eprintln!("== {name}: skipped (--only)");
            return Err("skipped (--only)".into());
        }
        eprintln!("== {name}");
        let start = Instant::now();
        let f = || {
            k::check_interrupt()?;
            f()
        };
        let r = match std::panic::catch_unwind(AssertUnwindSafe(f)) {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(format!("{e:#}")),
            Err(panic) => Err(panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "panicked".into())),
        };
        match &r {
            Ok(_) => eprintln!("   {name}: done in {:.1} s", start.elapsed().as_secs_f64()),
            Err(e) => eprintln!("   {name}: FAILED: {e}"),
        }
        r
    }

    fn v4_frame(dst: Ipv4Addr) -> Vec<u8> {
        Frame::v4(V4_SRC, dst).pad_to(64).build()
    }

    fn v6_frame(dst: Ipv6Addr) -> Vec<u8> {
        Frame::v6(V6_SRC, dst).pad_to(64).build()
    }

    fn v4_miss(rng: &mut Rng) -> Ipv4Addr {
        V4_MISS_NET.host(rng)
    }

    fn v6_miss(rng: &mut Rng) -> Ipv6Addr {
        V6_MISS_NET.host(rng)
    }

    fn command_line(cmd: &str, args: &[&str]) -> Option<String> {
        let out = Command::new(cmd).args(args).output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// What the report says about the machine and the code measured.
    fn meta(args: &Args, plan: &Plan, v4: &[V4], v6: &[V6]) -> serde_json::Value {
        let lscpu = command_line("lscpu", &[]).unwrap_or_default();
        let field = |name: &str| {
            lscpu
                .lines()
                .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
        };
        let root = workspace_root();
        let root = root.to_string_lossy();
        let dirty = command_line(
            "git",
            &[
                "-C",
                &root,
                "--no-optional-locks",
                "status",
                "--porcelain",
                "--untracked-files=no",
            ],
        )
        .map(|s| s.lines().count());
        let hist = |h: Vec<(u8, usize)>| {
            h.into_iter()
                .map(|(l, c)| json!({"len": l, "count": c}))
                .collect::<Vec<_>>()
        };
        let largest = plan.v4_sizes.iter().copied().max().unwrap_or(0);
        json!({
            "when": jiff::Timestamp::now().to_string(),
            "kernel": command_line("uname", &["-r"]),
            "cpu": field("Model name:"),
            "cpus": field("CPU(s):"),
            "l1d": field("L1d cache:"),
            "l2": field("L2 cache:"),
            "l3": field("L3 cache:"),
            "hypervisor": field("Hypervisor vendor:"),
            "git_head": command_line("git", &["-C", &root, "rev-parse", "HEAD"]),
            "git_modified_files": dirty,
            "seed": args.seed,
            "v4_length_mix": hist(p::length_histogram(v4[..largest.min(v4.len())].iter().map(|x| x.len))),
            "v6_length_mix": hist(p::length_histogram(v6.iter().map(|x| x.len))),
        })
    }

    fn load_floor() -> Result<Ebpf> {
        let mut obj = Ebpf::load(FLOOR_OBJECT).context("loading filter-ebpf's xdp-drop object")?;
        let prog: &mut Xdp = obj
            .program_mut("xdp_drop")
            .context("no xdp_drop program in the object")?
            .try_into()?;
        prog.load().context("loading xdp_drop (verifier)")?;
        Ok(obj)
    }

    fn floor_prog(obj: &Ebpf) -> Result<&Xdp> {
        Ok(obj
            .program("xdp_drop")
            .context("no xdp_drop program")?
            .try_into()?)
    }

    /// The probe frames of the per-packet table, with the verdict each must get.
    struct CaseFrames {
        v4_hit: (usize, Ipv4Addr),
        v4_miss: Ipv4Addr,
        v6_hit: Ipv6Addr,
        v6_miss: Ipv6Addr,
    }

    fn size_row(
        filter: &mut Filter,
        cli: &Cli<'_>,
        plan: &Plan,
        v4: &[V4],
        v6: &[V6],
        frames: &CaseFrames,
        floor: &Xdp,
    ) -> Result<SizeResult> {
        k::check_interrupt()?;
        let (compiled, compile) = k::compile(v4, v6)?;
        let apply = k::apply(filter, &compiled).map_err(|e| anyhow::anyhow!("apply: {e}"))?;
        let memory = cli.memory().ok();
        let prog = filter.program();
        let v4_hit_expect = if frames.v4_hit.0 < v4.len() {
            XDP_DROP
        } else {
            XDP_PASS
        };
        let v6_hit_expect = if v6.is_empty() { XDP_PASS } else { XDP_DROP };
        let cases = [
            (v4_frame(frames.v4_hit.1), v4_hit_expect),
            (v4_frame(frames.v4_miss), XDP_PASS),
            (v6_frame(frames.v6_hit), v6_hit_expect),
            (v6_frame(frames.v6_miss), XDP_PASS),
        ];
        let mut out = Vec::new();
        for (case, (frame, expect)) in CASES.iter().zip(cases) {
            let cost = k::cost(prog, &frame, expect, plan.repeat, plan.runs, Some(floor))
                .with_context(|| case.to_string())?;
            out.push(CaseResult {
                case,
                verdict: action_name(expect),
                cost,
            });
        }
        Ok(SizeResult {
            compile_s: compile.as_secs_f64(),
            apply_s: apply.as_secs_f64(),
            memory,
            cases: out,
        })
    }

    /// The control-plane policies: the base list, then each step takes 1% out (from the first
    /// half) and puts 1% of new prefixes in.
    struct Changes<'a> {
        all: &'a [V4],
        n: usize,
        step: usize,
    }

    impl Changes<'_> {
        fn policy(&self, k: usize) -> Vec<V4> {
            let removed = self.step * k;
            let mut v: Vec<V4> = self.all[removed..self.n].to_vec();
            v.extend_from_slice(&self.all[self.n..self.n + removed]);
            v
        }
    }

    fn control(
        bpffs: &Bpffs,
        cli_bin: &std::path::Path,
        plan: &Plan,
        v4: &[V4],
    ) -> Result<(Control, Filter)> {
        let n = plan.control;
        let changes = Changes {
            all: v4,
            n,
            step: n / 100,
        };
        let cli = Cli {
            bin: cli_bin,
            pin_root: bpffs.pin_root().join("control"),
            state_dir: bpffs.state_dir(),
        };
        let mut filter =
            Filter::load_or_open(&k::pins(bpffs, "control")).context("loading edgeblock")?;
        let memory_empty = cli.memory().ok();
        let (compiled, compile) = k::compile(changes.policy(0).as_slice(), &[])?;
        eprintln!(
            "   compiled {} prefixes in {:.2} s",
            count(n),
            compile.as_secs_f64()
        );
        let scratch = k::apply(&mut filter, &compiled).context("applying from scratch")?;
        eprintln!("   applied from scratch in {:.3} s", scratch.as_secs_f64());
        let memory = cli.memory().ok();
        let mut change_s = Vec::new();
        for step in 1..=plan.timed_changes {
            k::check_interrupt()?;
            let (c, _) = k::compile(&changes.policy(step), &[])?;
            let took = k::apply(&mut filter, &c).context("applying a 1% change")?;
            eprintln!("   1% change {step}: {:.1} ms", took.as_secs_f64() * 1e3);
            change_s.push(took.as_secs_f64());
        }
        // The CLI on its own pins, as an operator would run it on a list file.
        let cli_res = (|| -> Result<(f64, f64)> {
            let dir = bpffs.dir().join("cli-policy");
            let cli = Cli {
                bin: cli_bin,
                pin_root: bpffs.pin_root().join("cli"),
                state_dir: bpffs.state_dir(),
            };
            let policy = k::write_policy(&dir, &changes.policy(0), &[])?;
            let policy = policy.to_string_lossy().into_owned();
            // --force: the lists keep clear of special-purpose ranges, but a public address of
            // this machine could still fall in one; nothing here is attached to a real
            // interface, so there is nothing to lock out.
            let (_, scratch) = cli.run(&["apply", "--force", &policy])?;
            k::write_policy(&dir, &changes.policy(1), &[])?;
            let (_, change) = cli.run(&["apply", "--force", &policy])?;
            Ok((scratch.as_secs_f64(), change.as_secs_f64()))
        })();
        let (cli_scratch_s, cli_change_s, cli_error) = match cli_res {
            Ok((s, c)) => (Some(s), Some(c), None),
            Err(e) => (None, None, Some(format!("{e:#}"))),
        };
        Ok((
            Control {
                prefixes: n,
                compile_s: compile.as_secs_f64(),
                scratch_s: scratch.as_secs_f64(),
                change_s,
                changed_prefixes: changes.step,
                cli_scratch_s,
                cli_change_s,
                cli_error,
                memory,
                memory_empty,
                lookup_kinds: Some(lookup_kinds(&changes.policy(0), plan.live.seed)),
            },
            filter,
        ))
    }

    /// The share of leaf, inline and slice chunks that one lookup per prefix of `list` meets,
    /// from the table `apply` would build (one rule).
    fn lookup_kinds(list: &[V4], seed: u64) -> [f64; 3] {
        use edgeblock::dxr::Dxr;
        use filter_common::{Chunk, dxr};

        let mut sorted: Vec<V4> = list.to_vec();
        sorted.sort_unstable();
        let reference = dxr::reference(0, filter_common::action::DROP, false);
        let table = Dxr::build(sorted.iter().map(|p| {
            let net = ipnet::Ipv4Net::new(Ipv4Addr::from(p.addr), p.len).expect("length <= 32");
            (net, reference)
        }))
        .pack();
        let mut rng = Rng::new(seed);
        let mut kinds = [0usize; 3];
        for p in list {
            let a = u32::from(p.host(&mut rng));
            let kind = table.direct[(a >> dxr::BOUND_BITS) as usize].kind();
            kinds[match kind {
                Chunk::LEAF => 0,
                Chunk::INLINE => 1,
                _ => 2,
            }] += 1;
        }
        kinds.map(|k| k as f64 / list.len().max(1) as f64)
    }

    /// Keep re-applying 1% changes while another thread probes the program with frames whose
    /// verdict every one of those policies agrees on.
    fn correctness(
        bpffs: &Bpffs,
        mut filter: Filter,
        plan: &Plan,
        v4: &[V4],
        seed: u64,
    ) -> Result<Correctness> {
        let n = plan.control;
        let changes = Changes {
            all: v4,
            n,
            step: n / 100,
        };
        let first = plan.timed_changes + 1;
        let last = plan.timed_changes + plan.probed_changes;
        if changes.step * (last + 1) >= n / 2 {
            bail!("too many changes for the probe addresses to stay in every policy");
        }
        // Kept in every policy: the second half of the base list is never taken out.
        let mut rng = Rng::new(seed ^ 0x00c0_ffee);
        let mut probes = Vec::new();
        for _ in 0..48 {
            let pfx = v4[n / 2 + rng.below((n - n / 2) as u64) as usize];
            probes.push(Probe {
                label: "v4 kept",
                frame: v4_frame(pfx.host(&mut rng)),
                expect: XDP_DROP,
            });
        }
        for _ in 0..12 {
            probes.push(Probe {
                label: "v4 never listed",
                frame: v4_frame(v4_miss(&mut rng)),
                expect: XDP_PASS,
            });
        }
        for _ in 0..4 {
            probes.push(Probe {
                label: "v6 never listed",
                frame: v6_frame(v6_miss(&mut rng)),
                expect: XDP_PASS,
            });
        }
        // The policies, compiled before the clock starts so the probe sees applies back to back.
        let mut policies = Vec::new();
        for step in first..=last {
            policies.push(k::compile(&changes.policy(step), &[])?.0);
        }
        let pins = k::pins(bpffs, "control");
        let stop = AtomicBool::new(false);
        let ready = std::sync::Barrier::new(2);
        let (report, applies) = std::thread::scope(|s| -> Result<_> {
            // The probe opens its own handle on the program: a `Filter` stays on its thread.
            let prober = s.spawn(|| -> Result<k::ProbeReport> {
                let probe_filter = Filter::open(&pins);
                ready.wait();
                let probe_filter = probe_filter.context("opening edgeblock for the probe")?;
                Ok(k::probe_loop(probe_filter.program(), &probes, &stop))
            });
            ready.wait();
            let start = Instant::now();
            let mut applies = 0;
            let res = (|| -> Result<()> {
                for c in &policies {
                    k::apply(&mut filter, c).context("applying a 1% change")?;
                    applies += 1;
                }
                while start.elapsed() < plan.probe_min {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Ok(())
            })();
            stop.store(true, Ordering::Relaxed);
            let report = prober
                .join()
                .map_err(|_| anyhow::anyhow!("the probe thread panicked"))??;
            res?;
            Ok((report, applies))
        })?;
        Ok(Correctness {
            prefixes: n,
            applies,
            probes: report.probes,
            wrong: report.wrong,
            errors: report.errors,
            probe_addresses: probes.len(),
            examples: report.examples,
        })
    }

    pub fn run(args: &Args) -> Result<()> {
        if !edgeblock_tests::is_root() {
            bail!(
                "the benchmark needs root: it loads XDP programs (CAP_BPF, CAP_NET_ADMIN), \
                 mounts a private bpffs and creates network namespaces"
            );
        }
        k::catch_interrupts()?;
        let started = Instant::now();
        let plan = Plan::new(args);
        let out_dir = args
            .out
            .clone()
            .context("--out is set by `cargo xtask bench`")?;
        let cli_bin = build_edgeblock(Profile::Release)?;
        eprintln!(
            "generating {} IPv4 and {} IPv6 prefixes",
            count(plan.v4_needed()),
            count(plan.v6)
        );
        let v4 = p::v4_list(args.seed, plan.v4_needed());
        let v6 = p::v6_list(args.seed, plan.v6);
        let mut meta = meta(args, &plan, &v4, &v6);
        let bpffs = Bpffs::new();

        let floor_obj = load_floor()?;
        let mut rng = Rng::new(args.seed ^ 0xf00d);
        let smallest = plan
            .v4_sizes
            .iter()
            .copied()
            .filter(|&n| n > 0)
            .min()
            .unwrap_or(1);
        let hit_index = rng.below(smallest as u64) as usize;
        let v6_hit_index = rng.below(v6.len() as u64) as usize;
        let frames = CaseFrames {
            v4_hit: (hit_index, v4[hit_index].host(&mut rng)),
            v4_miss: v4_miss(&mut rng),
            v6_hit: v6[v6_hit_index].host(&mut rng),
            v6_miss: v6_miss(&mut rng),
        };
        // The probes, to look them up again (`edgeblock lookup`) when a case stands out.
        let probes = serde_json::json!({
            "v4 hit": format!("{} in {}", frames.v4_hit.1, v4[hit_index]),
            "v4 miss": frames.v4_miss.to_string(),
            "v6 hit": format!("{} in {}", frames.v6_hit, v6[v6_hit_index]),
            "v6 miss": frames.v6_miss.to_string(),
        });
        eprintln!("probes: {probes}");
        meta["probes"] = probes;

        let floor = section(args, super::Part::Cost, "per-packet floor", || {
            k::cost(
                floor_prog(&floor_obj)?,
                &v4_frame(frames.v4_hit.1),
                XDP_DROP,
                plan.repeat,
                plan.runs,
                None,
            )
        });
        let mut sizes = Vec::new();
        let scaling = section(args, super::Part::Cost, "per-packet scaling", || {
            let cli = Cli {
                bin: &cli_bin,
                pin_root: bpffs.pin_root().join("scaling"),
                state_dir: bpffs.state_dir(),
            };
            // The default tables hold about a million IPv4 prefixes; the largest size needs
            // more (each prefix makes at most three ranges). Only this filter is
            // loaded that large: the control-plane part reports the default's memory.
            let largest = plan.v4_sizes.iter().copied().max().unwrap_or(0);
            let ranges = 3 * largest;
            let sized = ranges > filter_common::dxr::DEFAULT_DST_RANGES as usize;
            if sized {
                // SAFETY: this process runs no other thread (the interrupt handler is a
                // signal handler, not a thread), so nothing reads the environment meanwhile.
                unsafe { std::env::set_var("EDGEBLOCK_V4_DST_RANGES", ranges.to_string()) };
            }
            let filter = Filter::load_or_open(&k::pins(&bpffs, "scaling"));
            if sized {
                // SAFETY: as above.
                unsafe { std::env::remove_var("EDGEBLOCK_V4_DST_RANGES") };
            }
            let mut filter = filter.context("loading edgeblock")?;
            for &n in &plan.v4_sizes {
                let result = size_row(
                    &mut filter,
                    &cli,
                    &plan,
                    &v4[..n],
                    &v6,
                    &frames,
                    floor_prog(&floor_obj)?,
                )
                .map_err(|e| format!("{e:#}"));
                match &result {
                    Ok(r) => eprintln!(
                        "   {} v4: {}",
                        count(n),
                        r.cases
                            .iter()
                            .map(|c| format!("{} {:.1} ns", c.case, c.cost.ns()))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    Err(e) => eprintln!("   {} v4: {e}", count(n)),
                }
                sizes.push(SizeRow {
                    v4: n,
                    v6: v6.len(),
                    result,
                });
            }
            Ok(())
        });
        if let Err(e) = scaling {
            for &n in plan.v4_sizes.iter().skip(sizes.len()) {
                sizes.push(SizeRow {
                    v4: n,
                    v6: v6.len(),
                    result: Err(e.clone()),
                });
            }
        }
        let mut control_filter = None;
        let control = section(args, super::Part::Control, "control plane", || {
            let (c, f) = control(&bpffs, &cli_bin, &plan, &v4)?;
            control_filter = Some(f);
            Ok(c)
        });
        let correctness = section(
            args,
            super::Part::Correctness,
            "correctness under change",
            || match control_filter.take() {
                Some(f) => correctness(&bpffs, f, &plan, &v4, args.seed),
                None => {
                    bail!("the control-plane part failed, so there is no loaded policy to change")
                }
            },
        );
        let live = section(args, super::Part::Live, "live drop rate", || {
            let cli = Cli {
                bin: &cli_bin,
                pin_root: bpffs.pin_root().join("live"),
                state_dir: bpffs.state_dir(),
            };
            bench_live::run(&plan.live, &bpffs, cli, &v4, &v6)
        });
        let fleet = section(args, super::Part::Fleet, "fleet convergence", || {
            let mut fleet = edgeblock_tests::fleet::Fleet::new(cli_bin.clone());
            fleet.start_on(edgeblock_tests::fleet::BLOCK_A);
            let rounds = fleet.convergence(if args.quick { 5 } else { 20 });
            Ok(super::bench_report::Fleet {
                hosts: fleet.hosts.len(),
                rounds_ms: rounds.iter().map(|d| d.as_secs_f64() * 1e3).collect(),
            })
        });
        let memory_latency = section(args, super::Part::Memory, "memory latency", || {
            super::bench_memory::latency(if args.quick { 200_000 } else { 2_000_000 })
        });
        drop(floor_obj);
        drop(bpffs);

        meta["took_s"] = json!(started.elapsed().as_secs_f64());
        let report = Report {
            meta,
            quick: args.quick,
            repeat: plan.repeat,
            runs: plan.runs,
            floor,
            sizes,
            live,
            control,
            correctness,
            fleet,
            memory_latency,
        };
        std::fs::create_dir_all(&out_dir)
            .with_context(|| format!("creating {}", out_dir.display()))?;
        let json_path = out_dir.join("bench.json");
        std::fs::write(&json_path, serde_json::to_string_pretty(&report.json())?)
            .with_context(|| format!("writing {}", json_path.display()))?;
        let svg_path = out_dir.join("scaling.svg");
        std::fs::write(&svg_path, scaling_svg(&report))
            .with_context(|| format!("writing {}", svg_path.display()))?;
        println!("{}", report.table());
        println!(
            "raw numbers: {}\nplot: {}\ntook {:.0} s",
            json_path.display(),
            svg_path.display(),
            started.elapsed().as_secs_f64()
        );
        if let Ok(live) = &report.live {
            for n in &live.notes {
                println!("note: {n}");
            }
        }
        k::check_interrupt().context("the report above is incomplete")
    }
}
