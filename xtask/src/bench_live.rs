//! Live drop rate: frames made in the kernel by `BPF_PROG_TEST_RUN` with
//! `BPF_F_TEST_XDP_LIVE_FRAMES` (as xdp-trafficgen makes them), sent with XDP_TX out of a veth
//! in one namespace into its peer in another, where the filter under test runs natively.
//!
//! The generator (`xdp_gen` in filter-ebpf's `xdp-drop` object) rewrites each frame's
//! destination from an array of addresses: one address ("hot"), or every entry of the list in
//! a random order ("spread"). The receiving veth's NAPI runs in its own SCHED_FIFO kernel
//! thread pinned to the other CPU, so the filter has a core to itself. What is counted is what
//! the filter under test did: the veth's per-queue XDP counters (`ethtool -S`): drops for the
//! XDP filters (checked against edgeblock's own counters), and for nftables the frames its
//! XDP_PASS front handed to the ingress hook (checked against the rule's counter).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, Map, MapData, PerCpuHashMap, PerCpuValues},
    programs::{TestRun as _, TestRunAttrs, TestRunOptions, Xdp, xdp::XdpMode},
};
use edgeblock::loader::{AttachMode, FLOOR_OBJECT, Filter};
use edgeblock::pins::Pins;
use edgeblock_tests::{Bpffs, Netns, packet::Frame};
use nix::sched::{CpuSet, sched_setaffinity};
use nix::unistd::Pid;

use super::bench_kernel::{self, Cli};
use super::bench_prefixes::{Rng, V4, V4_SRC, V6};
use super::bench_report::{FLOOR, Live, LiveRow, count, median};

/// What to measure.
pub struct Config {
    /// The large list: edgeblock, nftables and the floor.
    pub big: usize,
    /// The small list: what xdp-filter can hold, with edgeblock and nftables beside it.
    pub small: usize,
    /// Length of one measured call.
    pub secs: f64,
    /// Measured calls per row.
    pub runs: usize,
    /// Rounds of edgeblock and xdp-filter measured in turns (one call per shape each).
    pub rounds: usize,
    pub seed: u64,
}

/// Frames per call of the warm-up that sizes the measured calls.
const WARMUP_FRAMES: u32 = 200_000;
/// Frames the kernel makes per batch (the kernel's default is 64; its maximum 256).
const BATCH: u32 = 64;
/// Ethernet frame length without FCS: the smallest Ethernet frame plus 4, as in most pps tests.
const FRAME_LEN: usize = 64;
/// xdp-filter's `MAP_FLAG_DST` (xdp-filter/common_kern_user.h).
const XDPFILT_FLAG_DST: u64 = 1 << 1;
const NFT_TABLE: &str = "ebbench";
/// SCHED_FIFO priority of the receiving NAPI thread: that of threaded IRQ handlers.
const NAPI_PRIORITY: &str = "50";

/// The two namespaces, the veth between them, and the generator.
struct Lab<'a> {
    gen_ns: Netns,
    rx_ns: Netns,
    gen_if: String,
    rx_if: String,
    gen_ifindex: u32,
    generator: Ebpf,
    frame: Vec<u8>,
    /// CPUs for the sender thread and the receiver's NAPI thread, when there are two.
    cpus: Option<(usize, usize)>,
    threaded: bool,
    /// The receiving veth's NAPI kernel threads, once pinned.
    napi_pids: Vec<i32>,

    bpffs: &'a Bpffs,
    cli: Cli<'a>,
    notes: Vec<String>,
}

impl Drop for Lab<'_> {
    fn drop(&mut self) {
        // Deleting one end deletes the pair (and detaches whatever runs on it); the namespaces
        // go when their guards drop right after.
        let _ = Command::new("ip")
            .args(["-n", self.gen_ns.name(), "link", "del", &self.gen_if])
            .output();
    }
}

fn checked(out: std::io::Result<Output>, what: &str) -> Result<String> {
    let out = out.with_context(|| format!("cannot run {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The interface's index in the calling thread's network namespace; 0 when there is none.
fn if_index(name: &str) -> u32 {
    nix::net::if_::if_nametoindex(name).unwrap_or(0)
}

fn pin_to(cpu: usize) -> Result<()> {
    let mut set = CpuSet::new();
    set.set(cpu).context("CPU number out of range")?;
    sched_setaffinity(Pid::from_raw(0), &set).context("sched_setaffinity")?;
    Ok(())
}

impl<'a> Lab<'a> {
    fn new(bpffs: &'a Bpffs, cli: Cli<'a>, dsts: usize) -> Result<Self> {
        let gen_ns = Netns::new("bgen");
        let rx_ns = Netns::new("brx");
        let pid = std::process::id();
        let (gen_if, rx_if) = (format!("bg{pid}"), format!("br{pid}"));
        checked(
            Command::new("ip")
                .args(["-n", gen_ns.name(), "link", "add", &gen_if, "type", "veth"])
                .args(["peer", "name", &rx_if, "netns", rx_ns.name()])
                .output(),
            "creating the veth pair",
        )?;
        let frame = Frame::v4(V4_SRC, std::net::Ipv4Addr::new(198, 18, 0, 1))
            .pad_to(FRAME_LEN)
            .build();
        let mac: Vec<String> = frame[..6].iter().map(|b| format!("{b:02x}")).collect();
        gen_ns.ip(["link", "set", &gen_if, "up"]);
        rx_ns.ip(["link", "set", &rx_if, "address", &mac.join(":")]);
        rx_ns.ip(["link", "set", &rx_if, "up"]);
        let gen_if2 = gen_if.clone();
        let gen_ifindex = gen_ns.run_in(move || if_index(&gen_if2));
        if gen_ifindex == 0 {
            bail!("{gen_if} has no ifindex in {}", gen_ns.name());
        }
        let mut generator = EbpfLoader::new()
            .map_max_entries("GEN_DSTS", dsts.max(1) as u32)
            .load(FLOOR_OBJECT)
            .context("loading the generator (filter-ebpf's xdp-drop object)")?;
        let prog: &mut Xdp = generator
            .program_mut("xdp_gen")
            .context("no xdp_gen in the bench object")?
            .try_into()?;
        prog.load().context("loading xdp_gen (verifier)")?;
        let ncpu = std::thread::available_parallelism().map_or(1, usize::from);
        Ok(Self {
            gen_ns,
            rx_ns,
            gen_if,
            rx_if,
            gen_ifindex,
            generator,
            frame,
            cpus: (ncpu >= 2).then_some((0, 1)),
            threaded: true,
            napi_pids: Vec::new(),

            bpffs,
            cli,
            notes: Vec::new(),
        })
    }

    fn setup(&self) -> String {
        match (self.cpus, self.threaded) {
            (Some((s, r)), true) => format!(
                "generator on CPU {s}, receiving veth's NAPI thread on CPU {r} (SCHED_FIFO)"
            ),
            _ => "generator and receiver on the same CPU".into(),
        }
    }

    /// Fill the generator's destination array.
    fn set_destinations(&mut self, dsts: &[std::net::Ipv4Addr]) -> Result<()> {
        let mut arr: Array<_, [u8; 4]> = Array::try_from(
            self.generator
                .map_mut("GEN_DSTS")
                .context("no GEN_DSTS map")?,
        )?;
        for (i, a) in dsts.iter().enumerate() {
            arr.set(i as u32, a.octets(), 0)
                .context("writing GEN_DSTS")?;
        }
        self.set_len(dsts.len() as u32)
    }

    fn set_len(&mut self, n: u32) -> Result<()> {
        let mut len: Array<_, u32> = Array::try_from(
            self.generator
                .map_mut("GEN_LEN")
                .context("no GEN_LEN map")?,
        )?;
        len.set(0, n, 0).context("writing GEN_LEN")?;
        Ok(())
    }

    /// Give the receiving veth's NAPI its own kernel thread, pinned to the receiver's CPU and
    /// run SCHED_FIFO. A veth has NAPI only while an XDP program runs on it, so this follows
    /// every attach; when it fails, sender and receiver share a CPU and the report says so.
    ///
    /// The real-time class matters: a NAPI thread that empties the veth's ring (256 frames)
    /// sleeps, and if waking it up waits behind other work on that CPU (a scheduler slice is
    /// milliseconds), the sender overflows the ring meanwhile; a cheap receiver then counts
    /// fewer frames than a busy one that never sleeps. SCHED_FIFO wakes it at once, as
    /// softirq NAPI or a threaded IRQ handler would be.
    fn napi_thread(&mut self) {
        let Some((_, cpu)) = self.cpus else {
            self.threaded = false;
            return;
        };
        let out = self.rx_ns.exec(
            "sh",
            [
                "-c",
                &format!("echo 1 > /sys/class/net/{}/threaded", self.rx_if),
            ],
        );
        if !out.status.success() {
            self.threaded = false;
            self.note(format!(
                "threaded NAPI could not be enabled on the receiving veth ({}); sender and \
                 receiver share a CPU",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
            return;
        }
        // Kernel thread names are cut at 15 characters: "napi/<iface>-<id>".
        let want: String = format!("napi/{}-", self.rx_if).chars().take(15).collect();
        self.napi_pids.clear();
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for e in dir.flatten() {
                let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                    continue;
                };
                let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
                if comm.trim_end().starts_with(&want) {
                    let mut set = CpuSet::new();
                    if set.set(cpu).is_ok() && sched_setaffinity(Pid::from_raw(pid), &set).is_ok() {
                        self.napi_pids.push(pid);
                    }
                    let rt = Command::new("chrt")
                        .args(["--fifo", "--pid", NAPI_PRIORITY, &pid.to_string()])
                        .output();
                    if !rt.is_ok_and(|o| o.status.success()) {
                        self.note(format!(
                            "could not make the NAPI thread {pid} SCHED_FIFO (chrt): waking it \
                             may wait behind other work"
                        ));
                    }
                }
            }
        }
        if self.napi_pids.is_empty() {
            self.threaded = false;
            self.note(format!(
                "no NAPI thread named {want}* found to pin; the receiver may share the sender's CPU"
            ));
        }
    }

    fn note(&mut self, note: String) {
        if !self.notes.contains(&note) {
            self.notes.push(note);
        }
    }

    /// The receiving veth's XDP counters: (frames the XDP program saw, frames it dropped).
    fn xdp_counters(&self) -> Result<(u64, u64)> {
        let out = checked(
            self.rx_ns
                .command("ethtool")
                .args(["-S", &self.rx_if])
                .output(),
            "ethtool -S",
        )?;
        let mut seen = 0;
        let mut dropped = 0;
        for line in out.lines() {
            let Some((k, v)) = line.trim().split_once(':') else {
                continue;
            };
            let Ok(v) = v.trim().parse::<u64>() else {
                continue;
            };
            if k.starts_with("rx_queue_") && k.ends_with("_xdp_packets") {
                seen += v;
            } else if k.starts_with("rx_queue_") && k.ends_with("_xdp_drops") {
                dropped += v;
            }
        }
        Ok((seen, dropped))
    }

    fn nft_counter(&self) -> Result<u64> {
        let out = checked(
            self.rx_ns
                .command("nft")
                .args(["list", "counter", "netdev", NFT_TABLE, "dropped"])
                .output(),
            "nft list counter",
        )?;
        let mut words = out.split_whitespace();
        while let Some(w) = words.next() {
            if w == "packets" {
                return words
                    .next()
                    .and_then(|n| n.parse().ok())
                    .context("nft counter without a packet count");
            }
        }
        bail!("no packet count in `nft list counter`: {out}")
    }

    /// One call of the generator: `frames` frames. Returns the wall time.
    fn send(&self, frames: u32) -> Result<Duration> {
        let prog: &Xdp = self
            .generator
            .program("xdp_gen")
            .context("no xdp_gen")?
            .try_into()?;
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex. XDP_TX in live mode sends out of the ingress device.
        let mut ctx = Vec::with_capacity(24);
        for v in [0, self.frame.len() as u32, 0, self.gen_ifindex, 0, 0] {
            ctx.extend_from_slice(&v.to_ne_bytes());
        }
        let start = Instant::now();
        prog.test_run(TestRunOptions {
            data_in: Some(&self.frame),
            ctx_in: Some(&ctx),
            repeat: frames,
            attrs: TestRunAttrs::new().xdp_live_frames(BATCH),
            ..TestRunOptions::default()
        })
        .context("BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES")?;
        Ok(start.elapsed())
    }

    /// Measure a receiver already in place: warm up, then `runs` calls of about `secs` each,
    /// counting with `count` (frames the filter under test dropped so far). The calls are
    /// appended to the row's.
    fn measure(
        &self,
        cfg: &Config,
        count: &(dyn Fn(&Self) -> Result<u64> + Sync),
        row: &mut LiveRow,
    ) -> Result<()> {
        let sender_cpu = self.cpus.map(|c| c.0);
        let this: &Self = self;
        let runs = this.gen_ns.run_in(|| -> Result<Vec<Run>> {
            if let Some(cpu) = sender_cpu {
                pin_to(cpu)?;
            }
            bench_kernel::check_interrupt()?;
            let warm = this.send(WARMUP_FRAMES)?;
            let rate = f64::from(WARMUP_FRAMES) / warm.as_secs_f64();
            let frames = (rate * cfg.secs).clamp(f64::from(WARMUP_FRAMES), 2e9) as u32;
            let mut runs = Vec::new();
            for _ in 0..cfg.runs {
                bench_kernel::check_interrupt()?;
                let before = count(this)?;
                let (sender0, receiver0) = (cpu_time("thread-self"), this.napi_cpu_time());
                let took = this.send(frames)?;
                let (sender1, receiver1) = (cpu_time("thread-self"), this.napi_cpu_time());
                // Let the receiver drain its ring (at most a few hundred frames).
                std::thread::sleep(Duration::from_millis(20));
                let after = count(this)?;
                let busy = |a: Option<f64>, b: Option<f64>| Some((b? - a?) / took.as_secs_f64());
                runs.push(Run {
                    counted: after.saturating_sub(before),
                    frames,
                    took,
                    sender_busy: busy(sender0, sender1),
                    receiver_busy: busy(receiver0, receiver1),
                });
            }
            Ok(runs)
        })?;
        let secs = |r: &Run| r.took.as_secs_f64();
        row.pps
            .extend(runs.iter().map(|r| r.counted as f64 / secs(r)));
        row.sent_pps
            .extend(runs.iter().map(|r| f64::from(r.frames) / secs(r)));
        row.sender_busy
            .extend(runs.iter().filter_map(|r| r.sender_busy));
        row.receiver_busy
            .extend(runs.iter().filter_map(|r| r.receiver_busy));
        let counted: u64 = runs.iter().map(|r| r.counted).sum();
        row.counted += counted;
        if counted == 0 {
            bail!("the filter under test counted no frames: the generator's frames did not arrive");
        }
        Ok(())
    }

    /// CPU time of the receiving veth's NAPI thread, when it has one.
    fn napi_cpu_time(&self) -> Option<f64> {
        if !self.threaded || self.napi_pids.is_empty() {
            return None;
        }
        self.napi_pids
            .iter()
            .map(|pid| cpu_time(&pid.to_string()))
            .sum()
    }

    /// Attach `prog_name` from a fresh copy of the bench object natively to the receiving veth.
    fn attach_bench_prog(&mut self, prog_name: &str) -> Result<Ebpf> {
        let obj = Ebpf::load(FLOOR_OBJECT).context("loading the bench object")?;
        self.attach_loaded(obj, prog_name)
    }

    /// Attach `xdp_reads` with a second level of `lines` cache lines (none: the destination
    /// read alone).
    fn attach_reads(&mut self, lines: u32) -> Result<Ebpf> {
        let words = if lines == 0 {
            1
        } else {
            READS_TOP + lines * LINE_WORDS
        };
        let mut obj = EbpfLoader::new()
            .map_max_entries("READS", words)
            .load(FLOOR_OBJECT)
            .context("loading the bench object")?;
        let mut mask: Array<_, u32> = obj
            .map_mut("READS_MASK")
            .context("no READS_MASK in the bench object")?
            .try_into()?;
        mask.set(0, lines.saturating_sub(1), 0)?;
        self.attach_loaded(obj, "xdp_reads")
    }

    fn attach_loaded(&mut self, mut obj: Ebpf, prog_name: &str) -> Result<Ebpf> {
        let prog: &mut Xdp = obj
            .program_mut(prog_name)
            .with_context(|| format!("no {prog_name} in the bench object"))?
            .try_into()?;
        prog.load()?;
        // The interface name and the ifindex the kernel resolves it to belong to the calling
        // thread's namespace: attach from inside the receiver's.
        let rx_if = self.rx_if.clone();
        self.rx_ns
            .run_in(|| prog.attach(&rx_if, XdpMode::Driver))
            .with_context(|| format!("attaching {prog_name} natively to {}", self.rx_if))?;
        self.napi_thread();
        Ok(obj)
    }
}

/// One measured call of the generator.
struct Run {
    /// Frames the filter under test counted.
    counted: u64,
    /// Frames generated.
    frames: u32,
    took: Duration,
    /// Share of the call's wall time that the sender thread and the receiver's NAPI thread
    /// ran: below 1 for the side that waited, or that other work on the machine displaced.
    sender_busy: Option<f64>,
    receiver_busy: Option<f64>,
}

/// CPU time (user + system) of a task under /proc (`thread-self` or a pid), in seconds.
fn cpu_time(task: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{task}/stat")).ok()?;
    // The command name may hold spaces: fields count from after its closing parenthesis.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / CLOCK_TICKS)
}

/// USER_HZ: the unit of /proc/<pid>/stat times, 100 on every Linux architecture in use.
const CLOCK_TICKS: f64 = 100.0;

/// The shapes, with the generator's destinations for each: the list's first address alone,
/// and every list entry once per cycle in a random order.
fn shapes<'a>() -> [(&'a str, bool); 2] {
    [("hot", true), ("spread", false)]
}

/// One address in each prefix, and the same addresses in a random order with the first one
/// moved to the front (it doubles as the "hot" address).
fn destinations(list: &[V4], seed: u64) -> Vec<std::net::Ipv4Addr> {
    let mut rng = Rng::new(seed ^ 0x11fe);
    let hosts: Vec<_> = list.iter().map(|p| p.host(&mut rng)).collect();
    let mut order = hosts.clone();
    for i in (1..order.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        order.swap(i, j);
    }
    if let Some(pos) = order.iter().position(|a| *a == hosts[0]) {
        order.swap(0, pos);
    }
    order
}

fn row(filter: &str, entries: usize, list: usize, shape: &'static str, dsts: usize) -> LiveRow {
    LiveRow {
        filter: filter.into(),
        entries,
        list,
        shape,
        destinations: dsts,
        pps: vec![],
        sent_pps: vec![],
        counted: 0,
        sender_busy: vec![],
        receiver_busy: vec![],
        floor_pps: None,
        note: None,
        error: None,
        paired: false,
    }
}

/// What a row measures: a filter, the entries it holds, and the generator's list.
struct Subject<'s> {
    filter: &'s str,
    entries: usize,
    /// Length of the list the destinations come from.
    list: usize,
    /// Destinations of the spread shape.
    dsts: usize,
    note: Option<String>,
}

/// Run every shape against the receiver in place, appending rows.
fn measure_shapes(
    lab: &mut Lab<'_>,
    cfg: &Config,
    s: &Subject<'_>,
    count: &(dyn Fn(&Lab<'_>) -> Result<u64> + Sync),
    rows: &mut Vec<LiveRow>,
) {
    let mut new = shape_rows(lab, s);
    measure_into(lab, cfg, s, count, &mut new);
    rows.extend(new);
}

/// The subject's rows, one per shape (`shapes()`), not measured yet.
fn shape_rows(lab: &Lab<'_>, s: &Subject<'_>) -> Vec<LiveRow> {
    shapes()
        .into_iter()
        .map(|(shape, hot)| {
            let mut r = row(
                s.filter,
                s.entries,
                s.list,
                shape,
                if hot { 1 } else { s.dsts },
            );
            r.note = s.note.clone();
            if lab.cpus.is_some() && !lab.threaded {
                r.note = Some(format!(
                    "{}receiver shared the sender's CPU",
                    s.note.as_ref().map_or(String::new(), |n| format!("{n}; "))
                ));
            }
            r
        })
        .collect()
}

/// Measure the receiver in place for each of `rows` (from `shape_rows`), appending the calls
/// to each; a row that fails keeps its error and is not measured again.
fn measure_into(
    lab: &mut Lab<'_>,
    cfg: &Config,
    s: &Subject<'_>,
    count: &(dyn Fn(&Lab<'_>) -> Result<u64> + Sync),
    rows: &mut [LiveRow],
) {
    for r in rows.iter_mut().filter(|r| r.error.is_none()) {
        let hot = r.shape == "hot";
        let res = lab
            .set_len(if hot { 1 } else { s.dsts as u32 })
            .and_then(|()| lab.measure(cfg, count, r));
        if let Err(e) = res {
            r.error = Some(format!("{e:#}"));
        }
        eprintln!(
            "  live {} {} {}: {}",
            s.filter,
            s.entries,
            r.shape,
            r.error.clone().unwrap_or_else(|| {
                let last = &r.pps[r.pps.len() - cfg.runs.min(r.pps.len())..];
                format!("{:.2} Mpps", median(last) / 1e6)
            })
        );
    }
}

/// Load edgeblock on its own pins and apply `list` (and the IPv6 list), not attached yet.
fn edgeblock_load(pins: &Pins, list: &[V4], v6: &[V6]) -> Result<()> {
    let mut filter = Filter::load_or_open(pins).context("loading edgeblock")?;
    let (compiled, _) = bench_kernel::compile(list, v6)?;
    bench_kernel::apply(&mut filter, &compiled).context("applying the policy")?;
    Ok(())
}

/// Attach the loaded edgeblock natively to the receiving veth.
fn edgeblock_attach(lab: &mut Lab<'_>, pins: &Pins) -> Result<()> {
    // Attach from inside the receiver's namespace, where the interface name means something;
    // a `Filter` stays on the thread that opened it, so open one there.
    let rx_if = lab.rx_if.clone();
    lab.rx_ns
        .run_in(|| -> Result<()> {
            Filter::open(pins)?.attach(&rx_if, AttachMode::Native)?;
            Ok(())
        })
        .context("attaching edgeblock natively")?;
    lab.napi_thread();
    Ok(())
}

fn edgeblock_detach(lab: &Lab<'_>, pins: &Pins) {
    let rx_if = lab.rx_if.clone();
    let _ = lab.rx_ns.run_in(|| -> Result<()> {
        Filter::open(pins)?.detach(&rx_if)?;
        Ok(())
    });
}

/// edgeblock's drop counter and the veth's XDP drop counter, read together.
fn drop_counts(lab: &Lab<'_>, pins_name: &str) -> Option<(u64, u64)> {
    Some((edgeblock_drops(lab, pins_name).ok()?, xdp_drops(lab).ok()?))
}

/// Cross-check: edgeblock's own drop counter against the veth's over the spans it was
/// attached (warm-ups included), as (edgeblock's, the veth's) drops.
fn cross_check(notes: &mut Vec<String>, n: usize, (own, veth): (u64, u64)) {
    notes.push(format!(
        "edgeblock {}: its own counters saw {own} drops, the veth's XDP counters {veth}",
        count(n),
    ));
}

/// Add the drops between two `drop_counts` readings to `sum`.
fn add_drops(sum: &mut Option<(u64, u64)>, before: Option<(u64, u64)>, after: Option<(u64, u64)>) {
    if let (Some(b), Some(a)) = (before, after) {
        let s = sum.get_or_insert((0, 0));
        s.0 += a.0 - b.0;
        s.1 += a.1 - b.1;
    }
}

/// edgeblock and xdp-filter on the small list, measured in turns: `cfg.rounds` rounds, each one
/// call per shape of either filter, the one that goes first swapped every round. The machine's
/// speed drifts by 2x within a minute (the sender's own rate with it), so two filters measured
/// in blocks a minute apart compare two moments as much as two filters; run i of each row
/// comes from the same round, and the report compares them round by round.
struct Turns<'t> {
    pins: &'t Pins,
    pins_name: &'t str,
    eb: &'t Subject<'t>,
    /// Why edgeblock could not load or take the policy, if it could not.
    load_error: Option<String>,
    dsts: &'t [std::net::Ipv4Addr],
}

impl Turns<'_> {
    fn run(
        &self,
        lab: &mut Lab<'_>,
        cfg: &Config,
        rows: &mut Vec<LiveRow>,
        notes: &mut Vec<String>,
    ) {
        let one = Config { runs: 1, ..*cfg };
        let n = self.eb.entries;
        let xf = Subject {
            filter: "xdp-filter",
            entries: self.dsts.len(),
            list: n,
            dsts: self.dsts.len(),
            note: Some("exact addresses, one per prefix; in turns with edgeblock".into()),
        };
        let eb = Subject {
            note: Some(format!(
                "{}; in turns with xdp-filter",
                self.eb.note.as_deref().unwrap_or_default()
            )),
            ..*self.eb
        };
        let mut eb_rows = shape_rows(lab, &eb);
        let mut xf_rows = shape_rows(lab, &xf);
        if let Some(e) = &self.load_error {
            for r in &mut eb_rows {
                r.error = Some(e.clone());
            }
        }
        let mut drops = None;
        for round in 0..cfg.rounds {
            for edgeblock in [round % 2 == 0, round % 2 == 1] {
                if edgeblock {
                    if eb_rows.iter().all(|r| r.error.is_some()) {
                        continue;
                    }
                    match edgeblock_attach(lab, self.pins) {
                        Ok(()) => {
                            let before = drop_counts(lab, self.pins_name);
                            measure_into(lab, &one, &eb, &xdp_drops, &mut eb_rows);
                            add_drops(&mut drops, before, drop_counts(lab, self.pins_name));
                            edgeblock_detach(lab, self.pins);
                        }
                        Err(e) => {
                            for r in &mut eb_rows {
                                r.error = Some(format!("{e:#}"));
                            }
                        }
                    }
                } else {
                    if xf_rows.iter().all(|r| r.error.is_some()) {
                        continue;
                    }
                    match xdp_filter_load(lab, self.dsts) {
                        Ok((loaded, note)) => {
                            if round == 0 {
                                notes.extend(note);
                            }
                            for r in &mut xf_rows {
                                r.entries = loaded;
                                r.destinations = if r.shape == "hot" {
                                    1
                                } else {
                                    loaded.min(self.dsts.len())
                                };
                            }
                            let xf = Subject {
                                entries: loaded,
                                dsts: loaded.min(self.dsts.len()),
                                note: None,
                                ..xf
                            };
                            measure_into(lab, &one, &xf, &xdp_drops, &mut xf_rows);
                        }
                        Err(e) => {
                            for r in &mut xf_rows {
                                r.error = Some(format!("{e:#}"));
                            }
                        }
                    }
                    xdp_filter_unload(lab);
                }
            }
        }
        if let Some(d) = drops {
            cross_check(notes, n, d);
        }
        for r in eb_rows.iter_mut().chain(&mut xf_rows) {
            r.paired = true;
        }
        rows.extend(eb_rows);
        rows.extend(xf_rows);
    }
}

fn xdp_drops(lab: &Lab<'_>) -> Result<u64> {
    lab.xdp_counters().map(|(_, d)| d)
}

fn xdp_seen(lab: &Lab<'_>) -> Result<u64> {
    lab.xdp_counters().map(|(s, _)| s)
}

fn failed_rows(rows: &mut Vec<LiveRow>, filter: &str, entries: usize, e: &anyhow::Error) {
    for (shape, _) in shapes() {
        let mut r = row(filter, entries, entries, shape, 0);
        r.error = Some(format!("{e:#}"));
        eprintln!("  live {filter} {entries} {shape}: {e:#}");
        rows.push(r);
    }
}

/// Measure the floor program with the generator's current destinations.
fn floor_rows(lab: &mut Lab<'_>, cfg: &Config, n: usize, dsts: usize, rows: &mut Vec<LiveRow>) {
    match lab.attach_bench_prog("xdp_drop") {
        Ok(obj) => {
            let subject = Subject {
                filter: FLOOR,
                entries: n,
                list: n,
                dsts,
                note: None,
            };
            measure_shapes(lab, cfg, &subject, &xdp_drops, rows);
            drop(obj);
        }
        Err(e) => failed_rows(rows, FLOOR, n, &e),
    }
}

/// Second-level sizes `xdp_reads` is measured with, in MiB; 0 reads the destination alone.
pub const READ_MIB: [u32; 6] = [0, 1, 2, 4, 8, 16];
/// `xdp_reads`' first level, in words, and the words of a cache line (as in the program).
const READS_TOP: u32 = 1 << 16;
const LINE_WORDS: u32 = 8;

/// The row name of `xdp_reads` with a second level of `mib` MiB.
pub fn reads_filter(mib: u32) -> String {
    if mib == 0 {
        "destination read".into()
    } else {
        format!("reads of {mib} MiB")
    }
}

/// What the spread shape costs a program that does nothing but read a table of each size at
/// random (`xdp_reads`): the least any lookup structure of that size can cost it here. The
/// machine's caches, not a layout, decide these rows; they say how small a structure must be
/// for a goal on spread traffic to be within reach.
fn read_bounds(lab: &mut Lab<'_>, cfg: &Config, n: usize, dsts: usize, rows: &mut Vec<LiveRow>) {
    for mib in READ_MIB {
        let filter = reads_filter(mib);
        let subject = Subject {
            filter: &filter,
            entries: n,
            list: n,
            dsts,
            note: Some(if mib == 0 {
                "reads the destination address and drops, no table".into()
            } else {
                format!(
                    "reads the destination, a 512 KiB first level and one cache line of a {mib} \
                     MiB second level at random, and drops"
                )
            }),
        };
        let mut new: Vec<LiveRow> = shape_rows(lab, &subject)
            .into_iter()
            .filter(|r| r.shape == "spread")
            .collect();
        match lab.attach_reads((mib << 20) / (LINE_WORDS * 8)) {
            Ok(obj) => {
                measure_into(lab, cfg, &subject, &xdp_drops, &mut new);
                drop(obj);
            }
            Err(e) => {
                for r in &mut new {
                    r.error = Some(format!("{e:#}"));
                }
            }
        }
        rows.extend(new);
    }
}

/// The whole live section. The floor is measured before and after every filter, and each
/// filter's rate is compared with the floor measured around it: the machine's speed drifts
/// (other work, the hypervisor), and a ratio between neighbours drifts far less than either.
pub fn run(cfg: &Config, bpffs: &Bpffs, cli: Cli<'_>, v4: &[V4], v6: &[V6]) -> Result<Live> {
    let big = &v4[..cfg.big.min(v4.len())];
    let small = &v4[..cfg.small.min(v4.len())];
    let big_dsts = destinations(big, cfg.seed);
    let small_dsts = destinations(small, cfg.seed);
    let mut lab = Lab::new(bpffs, cli, big_dsts.len().max(small_dsts.len()))?;
    let mut rows = Vec::new();
    let mut notes = Vec::new();

    for (list, dsts) in [(big, &big_dsts), (small, &small_dsts)] {
        let n = list.len();
        lab.set_destinations(dsts)?;
        eprintln!("live: {} destinations", dsts.len());
        floor_rows(&mut lab, cfg, n, dsts.len(), &mut rows);

        // edgeblock, with the IPv6 list beside the IPv4 one as in the per-packet goal.
        let pins_name = format!("live-{n}");
        let pins = bench_kernel::pins(bpffs, &pins_name);
        let eb = Subject {
            filter: "edgeblock",
            entries: n,
            list: n,
            dsts: dsts.len(),
            note: Some(format!("+{} v6 prefixes", count(v6.len()))),
        };
        let loaded = edgeblock_load(&pins, list, v6);
        if n == small.len() {
            // xdp-filter (only exact addresses, and at most as many as its map holds) in
            // turns with edgeblock.
            let turns = Turns {
                pins: &pins,
                pins_name: &pins_name,
                eb: &eb,
                load_error: loaded.as_ref().err().map(|e| format!("{e:#}")),
                dsts,
            };
            turns.run(&mut lab, cfg, &mut rows, &mut notes);
        } else {
            match loaded.and_then(|()| edgeblock_attach(&mut lab, &pins)) {
                Ok(()) => {
                    let before = drop_counts(&lab, &pins_name);
                    measure_shapes(&mut lab, cfg, &eb, &xdp_drops, &mut rows);
                    let mut drops = None;
                    add_drops(&mut drops, before, drop_counts(&lab, &pins_name));
                    if let Some(d) = drops {
                        cross_check(&mut notes, n, d);
                    }
                    edgeblock_detach(&lab, &pins);
                }
                Err(e) => failed_rows(&mut rows, "edgeblock", n, &e),
            }
        }
        floor_rows(&mut lab, cfg, n, dsts.len(), &mut rows);
        if n == big.len() {
            read_bounds(&mut lab, cfg, n, dsts.len(), &mut rows);
            floor_rows(&mut lab, cfg, n, dsts.len(), &mut rows);
        }

        // nftables: netdev ingress on the receiving veth, with an XDP_PASS program in front
        // so that the veth takes the generator's frames at once. The rate is what the XDP
        // program passed: the ingress hook runs in the same NAPI poll, frame by frame, so
        // that is what nftables got through; its own counter (slow to read with a large set:
        // `nft` fetches every element) is read once at the end, as a check that it dropped them.
        match nft_load(&mut lab, list) {
            Ok((took, pass)) => {
                let before = xdp_seen(&lab);
                measure_shapes(
                    &mut lab,
                    cfg,
                    &Subject {
                        filter: "nftables",
                        entries: n,
                        list: n,
                        dsts: dsts.len(),
                        note: Some("interval set, netdev ingress".into()),
                    },
                    &xdp_seen,
                    &mut rows,
                );
                let seen = match (before, xdp_seen(&lab)) {
                    (Ok(b), Ok(a)) => (a - b).to_string(),
                    _ => "?".into(),
                };
                let check = match lab.nft_counter() {
                    Ok(dropped) => {
                        format!("its counter says {dropped} dropped of {seen} passed to it")
                    }
                    Err(e) => format!("its counter could not be read: {e:#}"),
                };
                notes.push(format!(
                    "nftables {}: `nft -f` loaded the set in {:.1} s; {check}",
                    count(n),
                    took.as_secs_f64()
                ));
                drop(pass);
                let _ = lab
                    .rx_ns
                    .command("nft")
                    .args(["delete", "table", "netdev", NFT_TABLE])
                    .output();
            }
            Err(e) => failed_rows(&mut rows, "nftables", n, &e),
        }
        floor_rows(&mut lab, cfg, n, dsts.len(), &mut rows);
        if big.len() == small.len() {
            break;
        }
    }
    reference_floors(&mut rows);
    notes.extend(lab.notes.iter().cloned());
    Ok(Live {
        setup: lab.setup(),
        frame_len: FRAME_LEN,
        rows,
        notes,
    })
}

/// Give each filter's row the floor measured around it: the mean of the nearest floor rows
/// before and after it with the same list and shape.
fn reference_floors(rows: &mut [LiveRow]) {
    let floors: Vec<(usize, usize, &'static str, f64)> = rows
        .iter()
        .enumerate()
        .filter(|(_, r)| r.filter == FLOOR && r.error.is_none())
        .map(|(i, r)| (i, r.entries, r.shape, r.rate()))
        .collect();
    for (i, r) in rows.iter_mut().enumerate() {
        let same = |f: &&(usize, usize, &str, f64)| f.1 == r.list && f.2 == r.shape;
        let before = floors.iter().filter(same).rfind(|f| f.0 < i);
        let after = floors.iter().filter(same).find(|f| f.0 > i);
        r.floor_pps = match (r.filter == FLOOR, before, after) {
            (true, _, _) => Some(r.rate()),
            (false, Some(b), Some(a)) => Some((b.3 + a.3) / 2.0),
            (false, Some(f), None) | (false, None, Some(f)) => Some(f.3),
            (false, None, None) => None,
        };
    }
}

fn edgeblock_drops(lab: &Lab<'_>, pins_name: &str) -> Result<u64> {
    let cli = Cli {
        bin: lab.cli.bin,
        pin_root: lab.bpffs.pin_root().join(pins_name),
        state_dir: lab.cli.state_dir,
    };
    let (out, _) = cli.run(&["stats", "--json"])?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    find_drop_packets(&v).context("no drop packet count in `edgeblock stats --json`")
}

/// `edgeblock stats --json`: the per-action totals' drop packets, wherever they sit.
fn find_drop_packets(v: &serde_json::Value) -> Option<u64> {
    match v {
        serde_json::Value::Object(m) => {
            if let Some(p) = m
                .get("drop")
                .and_then(|d| d.get("packets"))
                .and_then(|p| p.as_u64())
            {
                return Some(p);
            }
            m.values().find_map(find_drop_packets)
        }
        serde_json::Value::Array(a) => a.iter().find_map(find_drop_packets),
        _ => None,
    }
}

/// Where xdp-filter keeps its pins: a directory on the bench's own bpffs, bind-mounted over
/// /sys/fs/bpf for each xdp-filter command. Without that, xdp-filter (inside `ip netns exec`,
/// which mounts a fresh /sys) picks the first bpffs in the mount table, which may belong to
/// someone else.
fn xdp_filter_dir(lab: &Lab<'_>) -> PathBuf {
    lab.bpffs.pin_root().join("xdp-filter-root")
}

fn xdp_filter(lab: &Lab<'_>, args: &[&str]) -> Result<String> {
    let dir = xdp_filter_dir(lab);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    checked(
        lab.rx_ns
            .command("sh")
            .arg("-c")
            .arg(r#"mount --bind "$0" /sys/fs/bpf && exec xdp-filter "$@""#)
            .arg(&dir)
            .args(args)
            .output(),
        &format!("xdp-filter {}", args.join(" ")),
    )
}

fn xdp_filter_unload(lab: &Lab<'_>) {
    let _ = xdp_filter(lab, &["unload", "--all"]);
}

/// Load xdp-filter natively and give it `dsts` as destination addresses. The first goes in
/// through `xdp-filter ip` (so its own tool defines the map format); the rest are written
/// straight into its pinned map in the same format, since one process per address would take
/// minutes. Returns how many it holds and a note when that is fewer than asked.
fn xdp_filter_load(
    lab: &mut Lab<'_>,
    dsts: &[std::net::Ipv4Addr],
) -> Result<(usize, Option<String>)> {
    xdp_filter(
        lab,
        &[
            "load",
            &lab.rx_if,
            "--mode",
            "native",
            "--features",
            "ipv4,ipv6",
        ],
    )?;
    lab.napi_thread();
    let first = dsts.first().context("no destinations")?;
    xdp_filter(lab, &["ip", &first.to_string(), "--mode", "dst"])?;
    let path = xdp_filter_dir(lab).join("xdp-filter").join("filter_ipv4");
    let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    let max = data.info()?.max_entries() as usize;
    let mut map: PerCpuHashMap<_, u32, u64> = PerCpuHashMap::try_from(Map::PerCpuHashMap(data))?;
    let key = |a: &std::net::Ipv4Addr| u32::from_ne_bytes(a.octets());
    let got = map
        .get(&key(first), 0)
        .context("the address xdp-filter added is not in its map under the expected key")?;
    if got.iter().any(|v| *v & XDPFILT_FLAG_DST == 0) {
        bail!(
            "xdp-filter's map value for a dst address is {:?}, not the expected flag",
            &*got
        );
    }
    let ncpu = aya::util::nr_cpus().map_err(|(p, e)| anyhow::anyhow!("{p}: {e}"))?;
    let take = dsts.len().min(max);
    for a in &dsts[1..take] {
        let values = PerCpuValues::try_from(vec![XDPFILT_FLAG_DST; ncpu])?;
        map.insert(key(a), values, 0)
            .with_context(|| format!("adding {a} to xdp-filter's map"))?;
    }
    let note = (take < dsts.len()).then(|| {
        format!(
            "xdp-filter holds at most {max} IPv4 addresses (a per-CPU hash map of that size in \
             xdp-tools 1.3.1) and only exact addresses: it got one address per prefix of the \
             first {take} prefixes"
        )
    });
    Ok((take, note))
}

/// Load the nftables table with `list` as an interval set, and attach an XDP_PASS program.
fn nft_load(lab: &mut Lab<'_>, list: &[V4]) -> Result<(Duration, Ebpf)> {
    let mut text = String::with_capacity(list.len() * 20 + 512);
    let _ = write!(
        text,
        "table netdev {NFT_TABLE} {{\n  counter dropped {{ }}\n  set blocked {{\n    type ipv4_addr\n    flags interval\n    auto-merge\n    elements = {{\n"
    );
    for (i, p) in list.iter().enumerate() {
        let sep = if i + 1 == list.len() { "" } else { "," };
        let _ = writeln!(text, "      {p}{sep}");
    }
    let _ = write!(
        text,
        "    }}\n  }}\n  chain ingress {{\n    type filter hook ingress device \"{}\" priority 0; policy accept;\n    ip daddr @blocked counter name \"dropped\" drop\n  }}\n}}\n",
        lab.rx_if
    );
    let path = lab.bpffs.dir().join("nft-bench.nft");
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    let start = Instant::now();
    let res = checked(
        lab.rx_ns.command("nft").arg("-f").arg(&path).output(),
        "nft -f",
    );
    let took = start.elapsed();
    let _ = std::fs::remove_file(&path);
    res?;
    let pass = lab.attach_bench_prog("xdp_pass")?;
    Ok((took, pass))
}
