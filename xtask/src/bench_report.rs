//! The benchmark's results: the types the measurements fill in, and the three renderings of
//! them (the table on stdout, `bench.json`, and `scaling.svg`). Nothing here touches the kernel.

use std::fmt::Write as _;

use super::bench_live::{READ_MIB, reads_filter};
use serde_json::{Value, json};

/// Repeated measurements of one per-packet cost.
#[derive(Clone, Debug, Default)]
pub struct Cost {
    /// The kernel's figure for each call: its average per repetition, in whole ns.
    pub kernel_ns: Vec<u64>,
    /// Each call's wall time divided by its repetitions.
    pub wall_ns: Vec<f64>,
    /// The bare `XDP_DROP` floor measured in turns with each call (`bench_kernel::cost`), its
    /// average per repetition: empty when not measured so.
    pub floor_ns: Vec<u64>,
}

pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

impl Cost {
    /// The headline figure: the median of the kernel's per-repetition averages.
    pub fn ns(&self) -> f64 {
        median(&self.kernel_ns.iter().map(|&n| n as f64).collect::<Vec<_>>())
    }

    pub fn wall(&self) -> f64 {
        median(&self.wall_ns)
    }

    /// The median over calls of each call's cost over the floor measured in turns with it;
    /// None when the floor was not measured so.
    pub fn paired_ratio(&self) -> Option<f64> {
        if self.floor_ns.len() != self.kernel_ns.len() || self.floor_ns.is_empty() {
            return None;
        }
        let ratios: Vec<f64> = (self.kernel_ns.iter().zip(&self.floor_ns))
            .map(|(&k, &f)| k as f64 / f.max(1) as f64)
            .collect();
        Some(median(&ratios))
    }

    /// The cost as a multiple of the floor: paired when measured in turns, else against
    /// `floor_ns`, the floor measured once for the whole table.
    pub fn ratio(&self, floor_ns: Option<f64>) -> Option<f64> {
        self.paired_ratio().or(floor_ns.map(|f| self.ns() / f))
    }

    fn json(&self) -> Value {
        json!({
            "median_ns": self.ns(),
            "median_wall_ns": self.wall(),
            "kernel_ns": self.kernel_ns,
            "wall_ns": self.wall_ns,
            "floor_ns": self.floor_ns,
            "paired_ratio": self.paired_ratio(),
        })
    }
}

/// Kernel memory charged to the maps.
#[derive(Clone, Debug, Default)]
pub struct Memory {
    pub total: u64,
    pub maps: Vec<(String, u64)>,
}

impl Memory {
    fn json(&self) -> Value {
        json!({
            "total_bytes": self.total,
            "maps": self.maps.iter().map(|(n, b)| json!({"name": n, "bytes": b})).collect::<Vec<_>>(),
        })
    }
}

/// The four per-packet cases, in table order.
pub const CASES: [&str; 4] = ["v4 hit", "v4 miss", "v6 hit", "v6 miss"];

#[derive(Clone, Debug)]
pub struct CaseResult {
    pub case: &'static str,
    /// "DROP" or "PASS": what the program returned on every repetition.
    pub verdict: &'static str,
    pub cost: Cost,
}

#[derive(Clone, Debug)]
pub struct SizeResult {
    pub compile_s: f64,
    pub apply_s: f64,
    pub memory: Option<Memory>,
    pub cases: Vec<CaseResult>,
}

/// One row of the scaling table: a policy size and what happened with it.
#[derive(Clone, Debug)]
pub struct SizeRow {
    pub v4: usize,
    pub v6: usize,
    pub result: Result<SizeResult, String>,
}

impl SizeRow {
    pub fn case(&self, case: &str) -> Option<&CaseResult> {
        self.result
            .as_ref()
            .ok()
            .and_then(|r| r.cases.iter().find(|c| c.case == case))
    }
}

/// One live measurement: a filter, the list it holds, a traffic shape.
#[derive(Clone, Debug)]
pub struct LiveRow {
    /// "XDP_DROP floor", "edgeblock", "xdp-filter", "nftables".
    pub filter: String,
    /// Entries the filter holds.
    pub entries: usize,
    /// Length of the list the generator's destinations come from.
    pub list: usize,
    /// "hot" (one address) or "spread" (random entries of the whole list).
    pub shape: &'static str,
    /// Distinct destinations the generator cycles through.
    pub destinations: usize,
    /// Frames per second the filter under test processed, per run.
    pub pps: Vec<f64>,
    /// Frames per second the generator sent, per run.
    pub sent_pps: Vec<f64>,
    /// Frames the filter under test counted over all runs.
    pub counted: u64,
    /// Per run, the share of the time the sender and the receiver's NAPI thread ran.
    pub sender_busy: Vec<f64>,
    pub receiver_busy: Vec<f64>,
    /// The floor's rate measured around this row (same list and shape).
    pub floor_pps: Option<f64>,
    pub note: Option<String>,
    pub error: Option<String>,
    /// Measured in turns with the row of the other filter it is compared with (same list and
    /// shape): run i of each comes from the same round.
    pub paired: bool,
}

/// For two rows measured in turns (`LiveRow::paired`), `a`'s rate over `b`'s in each round
/// (the goal takes their median); None unless both hold the same number of rounds.
pub fn round_ratios(a: &LiveRow, b: &LiveRow) -> Option<Vec<f64>> {
    let ok = |r: &LiveRow| r.paired && r.error.is_none() && !r.pps.is_empty();
    if !ok(a) || !ok(b) || a.pps.len() != b.pps.len() || b.pps.contains(&0.0) {
        return None;
    }
    Some(a.pps.iter().zip(&b.pps).map(|(x, y)| x / y).collect())
}

impl LiveRow {
    pub fn rate(&self) -> f64 {
        median(&self.pps)
    }

    /// The rate as a share of the floor measured around it.
    pub fn ratio(&self) -> Option<f64> {
        self.floor_pps
            .filter(|_| self.error.is_none())
            .map(|f| self.rate() / f)
    }
}

#[derive(Clone, Debug, Default)]
pub struct Live {
    /// How sender and receiver were placed on the CPUs.
    pub setup: String,
    pub frame_len: usize,
    pub rows: Vec<LiveRow>,
    pub notes: Vec<String>,
}

impl Live {
    pub fn find(&self, filter: &str, entries: usize, shape: &str) -> Option<&LiveRow> {
        self.rows.iter().find(|r| {
            r.filter == filter && r.entries == entries && r.shape == shape && r.error.is_none()
        })
    }
}

pub const FLOOR: &str = "XDP_DROP floor";

#[derive(Clone, Debug, Default)]
pub struct Control {
    pub prefixes: usize,
    pub compile_s: f64,
    pub scratch_s: f64,
    /// Each 1% change, timed.
    pub change_s: Vec<f64>,
    pub changed_prefixes: usize,
    pub cli_scratch_s: Option<f64>,
    pub cli_change_s: Option<f64>,
    pub cli_error: Option<String>,
    pub memory: Option<Memory>,
    /// Memory with no policy loaded, to separate fixed from per-prefix cost.
    pub memory_empty: Option<Memory>,
    /// What one lookup per prefix (an address in each, as the spread shape sends) reads of the
    /// IPv4 table: the share of chunks that are leaves, inline, and slices of ranges.
    pub lookup_kinds: Option<[f64; 3]>,
}

#[derive(Clone, Debug, Default)]
pub struct Correctness {
    pub prefixes: usize,
    pub applies: usize,
    pub probes: u64,
    pub wrong: u64,
    pub errors: u64,
    pub probe_addresses: usize,
    pub examples: Vec<String>,
}

/// Publish-to-applied times of the fleet (NATS JetStream, three hosts on loopback veths).
#[derive(Clone, Debug, Default)]
pub struct Fleet {
    pub hosts: usize,
    /// Per round: from just before `publish` until the last host applied the revision.
    pub rounds_ms: Vec<f64>,
}

impl Fleet {
    fn max_ms(&self) -> f64 {
        self.rounds_ms.iter().copied().fold(0.0, f64::max)
    }

    fn median_ms(&self) -> f64 {
        let mut v = self.rounds_ms.clone();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    }
}

/// Everything one run measured.
#[derive(Clone, Debug)]
pub struct Report {
    pub meta: Value,
    pub quick: bool,
    pub repeat: u32,
    pub runs: usize,
    pub floor: Result<Cost, String>,
    pub sizes: Vec<SizeRow>,
    pub live: Result<Live, String>,
    pub control: Result<Control, String>,
    pub correctness: Result<Correctness, String>,
    pub fleet: Result<Fleet, String>,
    /// Nanoseconds per dependent random read, by buffer size in KiB (`bench_memory`).
    pub memory_latency: Result<Vec<(usize, f64)>, String>,
}

fn result_json<T>(r: &Result<T, String>, f: impl FnOnce(&T) -> Value) -> Value {
    match r {
        Ok(v) => f(v),
        Err(e) => json!({ "error": e }),
    }
}

/// A goal from the performance issue and whether this run met it.
#[derive(Clone, Debug)]
pub struct Goal {
    pub goal: String,
    pub measured: String,
    /// `None`: not measured in this run.
    pub met: Option<bool>,
}

/// The size the goals are stated for: 1M IPv4 prefixes (with the IPv6 list).
pub const GOAL_V4: usize = 1_000_000;

impl Report {
    fn floor_ns(&self) -> Option<f64> {
        self.floor.as_ref().ok().map(Cost::ns)
    }

    /// The goals of the performance issue, evaluated on this run. In a `--quick` run the sizes
    /// are smaller, so the goals are evaluated on the largest size measured and say so.
    pub fn goals(&self) -> Vec<Goal> {
        let mut goals = Vec::new();
        let goal_row = self
            .sizes
            .iter()
            .filter(|r| r.result.is_ok())
            .filter(|r| r.v4 <= GOAL_V4)
            .max_by_key(|r| r.v4);
        let scale = |n: usize| {
            if n == GOAL_V4 {
                String::new()
            } else {
                format!(" [quick: at {}]", count(n))
            }
        };
        for case in CASES {
            let result = goal_row.and_then(|r| r.case(case));
            let (measured, met) =
                match result.and_then(|c| Some((c, c.cost.ratio(self.floor_ns())?))) {
                    Some((c, ratio)) => {
                        let how = if c.cost.paired_ratio().is_some() {
                            format!(
                                " (in turns with the floor, {:.1} ns)",
                                median(
                                    &c.cost
                                        .floor_ns
                                        .iter()
                                        .map(|&n| n as f64)
                                        .collect::<Vec<_>>()
                                )
                            )
                        } else {
                            String::new()
                        };
                        (
                            format!("{:.1} ns = {ratio:.2}x floor{how}", c.cost.ns()),
                            Some(ratio <= 2.0),
                        )
                    }
                    None => ("not measured".into(), None),
                };
            goals.push(Goal {
                goal: format!(
                    "per-packet {case}, 1M v4 + 100k v6 prefixes <= 2x XDP_DROP{}",
                    goal_row.map_or(String::new(), |r| scale(r.v4))
                ),
                measured,
                met,
            });
        }
        match &self.live {
            Ok(live) => {
                let big = live
                    .rows
                    .iter()
                    .filter(|r| r.filter == "edgeblock")
                    .map(|r| r.entries)
                    .max()
                    .unwrap_or(0);
                let vs = |other: &str, entries: usize, factor: f64, what: &str| {
                    let mut parts = Vec::new();
                    let mut met = Some(true);
                    for shape in ["hot", "spread"] {
                        match (
                            live.find("edgeblock", entries, shape),
                            live.find(other, entries, shape),
                        ) {
                            (Some(e), Some(o)) => {
                                // Measured in turns: round by round. Otherwise each against
                                // the floor measured around it, so that drift between the two
                                // measurements cancels.
                                let rounds = round_ratios(e, o);
                                let r = match (&rounds, e.ratio(), o.ratio()) {
                                    (Some(p), _, _) => median(p),
                                    (None, Some(a), Some(b)) => a / b,
                                    _ => e.rate() / o.rate(),
                                };
                                parts.push(match rounds {
                                    Some(p) if p.len() > 1 => format!(
                                        "{shape} {r:.2}x (rounds {:.2}-{:.2}x)",
                                        p.iter().copied().fold(f64::INFINITY, f64::min),
                                        p.iter().copied().fold(0.0, f64::max)
                                    ),
                                    _ => format!("{shape} {r:.2}x"),
                                });
                                if r < factor || (factor == 1.0 && r <= 1.0) {
                                    met = Some(false);
                                }
                            }
                            _ => {
                                parts.push(format!("{shape} n/a"));
                                met = None;
                            }
                        }
                    }
                    Goal {
                        goal: format!("live drop rate {what} ({} entries)", count(entries)),
                        measured: format!("edgeblock/{other}: {}", parts.join(", ")),
                        met,
                    }
                };
                let xf = live
                    .rows
                    .iter()
                    .filter(|r| r.filter == "xdp-filter" && r.error.is_none())
                    .map(|r| r.entries)
                    .max();
                goals.push(match xf {
                    Some(n) => vs("xdp-filter", n, 1.0, "above xdp-filter's"),
                    None => Goal {
                        goal: "live drop rate above xdp-filter's".into(),
                        measured: "not measured".into(),
                        met: None,
                    },
                });
                let nft = live
                    .rows
                    .iter()
                    .filter(|r| r.filter == "nftables" && r.error.is_none())
                    .map(|r| r.entries)
                    .max();
                goals.push(match nft {
                    Some(n) => vs("nftables", n, 5.0, "at least 5x nftables'"),
                    None => Goal {
                        goal: "live drop rate at least 5x nftables'".into(),
                        measured: "not measured".into(),
                        met: None,
                    },
                });
                let (measured, met) = match live
                    .find("edgeblock", big, "spread")
                    .and_then(LiveRow::ratio)
                {
                    Some(r) => (format!("{r:.2}x floor"), Some(r >= 0.5)),
                    None => ("not measured".into(), None),
                };
                // What reading a table of each size alone leaves (`xdp_reads`): the most any
                // structure of that size could reach on this machine.
                let reads: Vec<String> = READ_MIB
                    .iter()
                    .filter(|&&mib| mib > 0)
                    .filter_map(|&mib| {
                        live.find(&reads_filter(mib), big, "spread")
                            .and_then(LiveRow::ratio)
                            .map(|r| format!("{mib} MiB {r:.2}x"))
                    })
                    .collect();
                let measured = if reads.is_empty() {
                    measured
                } else {
                    format!(
                        "{measured}; a program reading a table at random: {}",
                        reads.join(", ")
                    )
                };
                goals.push(Goal {
                    goal: format!(
                        "spread traffic over {} entries >= 0.5x XDP_DROP rate",
                        count(big)
                    ),
                    measured,
                    met,
                });
            }
            Err(e) => goals.push(Goal {
                goal: "live drop-rate goals".into(),
                measured: format!("not measured: {}", first_line(e)),
                met: None,
            }),
        }
        match &self.control {
            Ok(c) => {
                // Judged on the whole `edgeblock apply` (what an operator waits for) when it
                // was measured, on the library's apply otherwise.
                let whole = c.cli_scratch_s;
                goals.push(Goal {
                    goal: format!("apply {} prefixes from scratch < 2 s", count(c.prefixes)),
                    measured: match whole {
                        Some(w) => format!(
                            "`edgeblock apply` {w:.2} s (library apply {:.3} s)",
                            c.scratch_s
                        ),
                        None => format!(
                            "library apply {:.3} s (whole command not measured)",
                            c.scratch_s
                        ),
                    },
                    met: Some(whole.unwrap_or(c.scratch_s) < 2.0),
                });
                let m = median(&c.change_s);
                goals.push(Goal {
                    goal: format!(
                        "apply a 1% change to {} prefixes < 100 ms",
                        count(c.prefixes)
                    ),
                    measured: format!("{:.1} ms (median of {})", m * 1e3, c.change_s.len()),
                    met: Some(m < 0.1),
                });
                goals.push(Goal {
                    goal: "memory stated per million prefixes".into(),
                    measured: memory_summary(c).unwrap_or_else(|| "not measured".into()),
                    met: c.memory.as_ref().map(|_| true),
                });
            }
            Err(e) => goals.push(Goal {
                goal: "control-plane goals".into(),
                measured: format!("not measured: {}", first_line(e)),
                met: None,
            }),
        }
        goals.push(match &self.correctness {
            Ok(c) => Goal {
                goal: "no probe sees a wrong verdict while policies change".into(),
                measured: format!(
                    "{} wrong of {} probes over {} applies",
                    c.wrong + c.errors,
                    c.probes,
                    c.applies
                ),
                met: Some(c.wrong == 0 && c.errors == 0 && c.probes > 0),
            },
            Err(e) => Goal {
                goal: "no probe sees a wrong verdict while policies change".into(),
                measured: format!("not measured: {}", first_line(e)),
                met: None,
            },
        });
        let fleet_goal = "fleet: publish to applied on every host under 1 s (loopback)".to_owned();
        goals.push(match &self.fleet {
            Ok(f) if !f.rounds_ms.is_empty() => Goal {
                goal: fleet_goal,
                measured: format!(
                    "{} hosts, median {:.0} ms, max {:.0} ms over {} revisions",
                    f.hosts,
                    f.median_ms(),
                    f.max_ms(),
                    f.rounds_ms.len()
                ),
                met: Some(f.max_ms() < 1000.0),
            },
            Ok(_) => Goal {
                goal: fleet_goal,
                measured: "not measured: no rounds".into(),
                met: None,
            },
            Err(e) => Goal {
                goal: fleet_goal,
                measured: format!("not measured: {}", first_line(e)),
                met: None,
            },
        });
        goals
    }

    pub fn json(&self) -> Value {
        let sizes: Vec<Value> = self
            .sizes
            .iter()
            .map(|r| {
                let mut v = json!({ "v4_prefixes": r.v4, "v6_prefixes": r.v6 });
                match &r.result {
                    Ok(s) => {
                        v["compile_s"] = json!(s.compile_s);
                        v["apply_s"] = json!(s.apply_s);
                        v["memory"] = s.memory.as_ref().map_or(Value::Null, Memory::json);
                        v["cases"] = s
                            .cases
                            .iter()
                            .map(|c| {
                                let mut cv = c.cost.json();
                                cv["case"] = json!(c.case);
                                cv["verdict"] = json!(c.verdict);
                                cv["ratio_to_floor"] = json!(c.cost.ratio(self.floor_ns()));
                                cv
                            })
                            .collect();
                    }
                    Err(e) => v["error"] = json!(e),
                }
                v
            })
            .collect();
        let live = result_json(&self.live, |l| {
            json!({
                "setup": l.setup,
                "frame_len": l.frame_len,
                "notes": l.notes,
                "rows": l.rows.iter().map(|r| json!({
                    "filter": r.filter,
                    "entries": r.entries,
                    "list": r.list,
                    "shape": r.shape,
                    "destinations": r.destinations,
                    "median_pps": if r.error.is_none() { json!(r.rate()) } else { Value::Null },
                    "floor_pps": r.floor_pps,
                    "ratio_to_floor": r.ratio(),
                    "counted": r.counted,
                    "sender_busy": r.sender_busy,
                    "receiver_busy": r.receiver_busy,
                    "pps": r.pps,
                    "sent_pps": r.sent_pps,
                    "note": r.note,
                    "error": r.error,
                    "paired": r.paired,
                })).collect::<Vec<_>>(),
            })
        });
        let control = result_json(&self.control, |c| {
            json!({
                "prefixes": c.prefixes,
                "compile_s": c.compile_s,
                "apply_from_scratch_s": c.scratch_s,
                "apply_1pct_change_s": c.change_s,
                "apply_1pct_change_median_s": median(&c.change_s),
                "changed_prefixes_per_change": c.changed_prefixes,
                "cli_apply_from_scratch_s": c.cli_scratch_s,
                "cli_apply_1pct_change_s": c.cli_change_s,
                "cli_error": c.cli_error,
                "memory": c.memory.as_ref().map_or(Value::Null, Memory::json),
                "memory_empty": c.memory_empty.as_ref().map_or(Value::Null, Memory::json),
                "memory_per_million_prefixes_bytes": memory_per_million(c),
                "spread_lookups": c.lookup_kinds.map(|[leaf, inline, slice]| json!({
                    "leaf": leaf, "inline": inline, "slice": slice,
                })),
            })
        });
        let correctness = result_json(&self.correctness, |c| {
            json!({
                "prefixes": c.prefixes,
                "applies": c.applies,
                "probes": c.probes,
                "wrong_verdicts": c.wrong,
                "failed_test_runs": c.errors,
                "probe_addresses": c.probe_addresses,
                "examples": c.examples,
            })
        });
        json!({
            "meta": self.meta,
            "quick": self.quick,
            "per_packet": {
                "repeat": self.repeat,
                "runs": self.runs,
                "floor": result_json(&self.floor, Cost::json),
                "sizes": sizes,
            },
            "live": live,
            "control_plane": control,
            "correctness": correctness,
            "fleet": result_json(&self.fleet, |f| json!({
                "hosts": f.hosts,
                "rounds_ms": f.rounds_ms,
                "median_ms": f.median_ms(),
                "max_ms": f.max_ms(),
            })),
            "memory_latency": result_json(&self.memory_latency, |m| json!(m
                .iter()
                .map(|(kib, ns)| json!({"kib": kib, "ns_per_read": ns}))
                .collect::<Vec<_>>())),
            "goals": self.goals().iter().map(|g| json!({
                "goal": g.goal, "measured": g.measured, "met": g.met,
            })).collect::<Vec<_>>(),
        })
    }

    /// The one table printed at the end of a run.
    pub fn table(&self) -> String {
        let mut rows: Vec<[String; 4]> = Vec::new();
        let section = |rows: &mut Vec<[String; 4]>, title: &str| {
            rows.push([
                format!("== {title}"),
                String::new(),
                String::new(),
                String::new(),
            ]);
        };
        let floor = self.floor_ns();
        section(
            &mut rows,
            &format!(
                "per packet, BPF_PROG_TEST_RUN (median of {} runs x {} repeats)",
                self.runs, self.repeat
            ),
        );
        match &self.floor {
            Ok(c) => rows.push([
                "XDP_DROP floor".into(),
                format!("{:.1} ns", c.ns()),
                "1.00x".into(),
                "DROP".into(),
            ]),
            Err(e) => rows.push([
                "XDP_DROP floor".into(),
                "error".into(),
                String::new(),
                e.clone(),
            ]),
        }
        for r in &self.sizes {
            let label = format!("{} v4 + {} v6", count(r.v4), count(r.v6));
            match &r.result {
                Ok(s) => {
                    for c in &s.cases {
                        rows.push([
                            format!("{label}: {}", c.case),
                            format!("{:.1} ns", c.cost.ns()),
                            c.cost
                                .ratio(floor)
                                .map_or("-".into(), |r| format!("{r:.2}x")),
                            c.verdict.to_string(),
                        ]);
                    }
                    rows.push([
                        format!("{label}: apply, memory"),
                        format!("{:.2} s", s.apply_s),
                        String::new(),
                        s.memory.as_ref().map_or("-".into(), |m| {
                            format!("maps {:.1} MiB", m.total as f64 / MIB)
                        }),
                    ]);
                }
                Err(e) => rows.push([label, "error".into(), String::new(), first_line(e)]),
            }
        }
        match &self.live {
            Ok(l) => {
                section(
                    &mut rows,
                    &format!("live drop rate, {}-byte frames ({})", l.frame_len, l.setup),
                );
                for r in &l.rows {
                    let label = format!("{} {} {}", r.filter, count(r.entries), r.shape);
                    match &r.error {
                        None => rows.push([
                            label,
                            format!("{:.2} Mpps", r.rate() / 1e6),
                            r.ratio().map_or("-".into(), |x| format!("{x:.2}x")),
                            format!(
                                "sent {:.2} Mpps{}{}",
                                median(&r.sent_pps) / 1e6,
                                if r.sender_busy.is_empty() || r.receiver_busy.is_empty() {
                                    String::new()
                                } else {
                                    format!(
                                        ", cpu busy sender {:.0}% receiver {:.0}%",
                                        median(&r.sender_busy) * 100.0,
                                        median(&r.receiver_busy) * 100.0
                                    )
                                },
                                r.note.as_ref().map_or(String::new(), |n| format!("; {n}"))
                            ),
                        ]),
                        Some(e) => rows.push([label, "error".into(), String::new(), first_line(e)]),
                    }
                }
            }
            Err(e) => {
                section(&mut rows, "live drop rate");
                rows.push([
                    "not measured".into(),
                    String::new(),
                    String::new(),
                    first_line(e),
                ]);
            }
        }
        section(&mut rows, "control plane");
        match &self.control {
            Ok(c) => {
                let n = count(c.prefixes);
                rows.push([
                    format!("parse + compile {n} prefixes"),
                    format!("{:.3} s", c.compile_s),
                    String::new(),
                    String::new(),
                ]);
                rows.push([
                    format!("apply {n} from scratch (library)"),
                    format!("{:.3} s", c.scratch_s),
                    String::new(),
                    String::new(),
                ]);
                rows.push([
                    format!(
                        "apply 1% change ({} out, {} in)",
                        c.changed_prefixes, c.changed_prefixes
                    ),
                    format!("{:.1} ms", median(&c.change_s) * 1e3),
                    String::new(),
                    format!("median of {}", c.change_s.len()),
                ]);
                match (c.cli_scratch_s, c.cli_change_s, &c.cli_error) {
                    (Some(s), Some(ch), _) => {
                        rows.push([
                            format!("`edgeblock apply` {n} from scratch"),
                            format!("{s:.3} s"),
                            String::new(),
                            "whole command: load, parse, lockout check, apply".into(),
                        ]);
                        rows.push([
                            "`edgeblock apply` 1% change".into(),
                            format!("{:.3} s", ch),
                            String::new(),
                            "whole command".into(),
                        ]);
                    }
                    (_, _, Some(e)) => rows.push([
                        "`edgeblock apply`".into(),
                        "error".into(),
                        String::new(),
                        first_line(e),
                    ]),
                    _ => {}
                }
                if let Some([leaf, inline, slice]) = c.lookup_kinds {
                    rows.push([
                        format!("lookups of {n} spread addresses: inline"),
                        format!("{:.1}%", inline * 100.0),
                        String::new(),
                        format!(
                            "leaf {:.1}%, slice of ranges {:.1}% (one cache line more)",
                            leaf * 100.0,
                            slice * 100.0
                        ),
                    ]);
                }
                if let Some(m) = &c.memory {
                    rows.push([
                        format!("map memory with {n}"),
                        format!("{:.1} MiB", m.total as f64 / MIB),
                        String::new(),
                        memory_summary(c).unwrap_or_default(),
                    ]);
                }
            }
            Err(e) => rows.push([
                "not measured".into(),
                String::new(),
                String::new(),
                first_line(e),
            ]),
        }
        section(&mut rows, "correctness under change");
        match &self.correctness {
            Ok(c) => rows.push([
                format!(
                    "{} applies of 1% changes to {}",
                    c.applies,
                    count(c.prefixes)
                ),
                format!("{} wrong", c.wrong + c.errors),
                String::new(),
                format!("of {} probes to {} addresses", c.probes, c.probe_addresses),
            ]),
            Err(e) => rows.push([
                "not measured".into(),
                String::new(),
                String::new(),
                first_line(e),
            ]),
        }
        section(
            &mut rows,
            "memory latency (dependent random reads, 4 KiB pages)",
        );
        match &self.memory_latency {
            Ok(m) => {
                for (kib, ns) in m {
                    rows.push([
                        format!("random read in {}", size_kib(*kib)),
                        format!("{ns:.1} ns"),
                        String::new(),
                        String::new(),
                    ]);
                }
            }
            Err(e) => rows.push([
                "not measured".into(),
                String::new(),
                String::new(),
                first_line(e),
            ]),
        }
        section(&mut rows, "goals (performance issue)");
        for g in self.goals() {
            rows.push([
                g.goal,
                match g.met {
                    Some(true) => "PASS".into(),
                    Some(false) => "FAIL".into(),
                    None => "-".into(),
                },
                String::new(),
                g.measured,
            ]);
        }
        render_table(&["measurement", "value", "x floor", "detail"], &rows)
    }
}

const MIB: f64 = 1024.0 * 1024.0;

fn size_kib(kib: usize) -> String {
    if kib >= 1024 && kib.is_multiple_of(1024) {
        format!("{} MiB", kib / 1024)
    } else {
        format!("{kib} KiB")
    }
}

/// Memory per million prefixes: what the maps grew by from empty to loaded, scaled to a
/// million prefixes (0 for maps allocated in full up front); the whole total scaled when the
/// empty maps were not measured.
pub fn memory_per_million(c: &Control) -> Option<f64> {
    let m = c.memory.as_ref()?;
    if c.prefixes == 0 {
        return None;
    }
    let base = c.memory_empty.as_ref().map_or(0, |e| e.total);
    Some(m.total.saturating_sub(base) as f64 / (c.prefixes as f64 / 1e6))
}

/// "59.5 MiB at 1M prefixes = 59.5 MiB empty + 0.0 MiB per million".
fn memory_summary(c: &Control) -> Option<String> {
    let m = c.memory.as_ref()?;
    let per = memory_per_million(c)?;
    Some(match &c.memory_empty {
        Some(e) => format!(
            "{:.1} MiB at {} prefixes = {:.1} MiB empty + {:.1} MiB per million",
            m.total as f64 / MIB,
            count(c.prefixes),
            e.total as f64 / MIB,
            per / MIB
        ),
        None => format!("{:.1} MiB per million", per / MIB),
    })
}

fn first_line(s: &str) -> String {
    let line = s.lines().next().unwrap_or("");
    if line.len() > 110 {
        format!("{}...", &line[..line.floor_char_boundary(107)])
    } else {
        line.to_owned()
    }
}

/// 0, 10k, 100k, 1M, 5M, 1.5M.
pub fn count(n: usize) -> String {
    match n {
        0 => "0".into(),
        n if n >= 1_000_000 && n % 1_000_000 == 0 => format!("{}M", n / 1_000_000),
        n if n >= 1_000_000 => format!("{:.1}M", n as f64 / 1e6),
        n if n >= 1000 && n % 1000 == 0 => format!("{}k", n / 1000),
        n => n.to_string(),
    }
}

fn render_table(header: &[&str; 4], rows: &[[String; 4]]) -> String {
    let mut w = header.map(str::len);
    for r in rows.iter().filter(|r| !r[0].starts_with("== ")) {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: [&str; 4]| {
        let _ = writeln!(
            out,
            "{:<w0$}  {:>w1$}  {:>w2$}  {}",
            cells[0],
            cells[1],
            cells[2],
            cells[3],
            w0 = w[0],
            w1 = w[1],
            w2 = w[2]
        );
    };
    line(&mut out, *header);
    for r in rows {
        if r[0].starts_with("== ") {
            let _ = writeln!(out, "{}", r[0]);
        } else {
            line(&mut out, [&r[0], &r[1], &r[2], &r[3]]);
        }
    }
    out
}

/// The scaling plot: per-packet cost against the number of IPv4 prefixes (log scale), one line
/// per case, the XDP_DROP floor and the 2x-floor goal as horizontal lines. Hand-written SVG.
pub fn scaling_svg(r: &Report) -> String {
    const W: f64 = 800.0;
    const H: f64 = 440.0;
    const L: f64 = 70.0;
    const R: f64 = 200.0;
    const T: f64 = 40.0;
    const B: f64 = 60.0;
    let floor = r.floor_ns();
    let points: Vec<(usize, &'static str, f64)> = r
        .sizes
        .iter()
        .flat_map(|row| {
            CASES
                .iter()
                .filter_map(move |c| row.case(c).map(|cr| (row.v4, *c, cr.cost.ns())))
        })
        .collect();
    let ymax_data = points
        .iter()
        .map(|p| p.2)
        .chain(floor.map(|f| 2.0 * f))
        .fold(1.0f64, f64::max);
    let ymax = nice_ceiling(ymax_data * 1.1);
    // x: log10 of the prefix count; 0 prefixes sits one decade left of the smallest size.
    let sizes: Vec<usize> = r.sizes.iter().map(|s| s.v4).collect();
    let min_pos = sizes
        .iter()
        .copied()
        .filter(|&n| n > 0)
        .min()
        .unwrap_or(10_000);
    let max_pos = sizes
        .iter()
        .copied()
        .max()
        .unwrap_or(1_000_000)
        .max(min_pos * 10);
    let lx = |n: usize| -> f64 {
        if n == 0 {
            (min_pos as f64).log10() - 1.0
        } else {
            (n as f64).log10()
        }
    };
    let (x0, x1) = (lx(0) - 0.2, (max_pos as f64).log10() + 0.2);
    let px = |n: usize| L + (lx(n) - x0) / (x1 - x0) * (W - L - R);
    let py = |v: f64| H - B - v / ymax * (H - T - B);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15">edgeblock per-packet cost vs. IPv4 prefixes (+{} IPv6), BPF_PROG_TEST_RUN</text>"#,
        (L + W - R) / 2.0,
        r.sizes.first().map_or("0".into(), |s| count(s.v6))
    );
    // Axes and grid.
    for i in 0..=5 {
        let v = ymax * f64::from(i) / 5.0;
        let y = py(v);
        let _ = writeln!(
            s,
            r##"<line x1="{L}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            W - R,
            L - 6.0,
            y + 4.0,
            trim_float(v)
        );
    }
    for &n in &sizes {
        let x = px(n);
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{T}" x2="{x:.1}" y2="{:.1}" stroke="#eee"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            H - B,
            H - B + 18.0,
            count(n)
        );
    }
    let _ = writeln!(
        s,
        r##"<line x1="{L}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#333"/><line x1="{L}" y1="{T}" x2="{L}" y2="{:.1}" stroke="#333"/>"##,
        H - B,
        W - R,
        H - B,
        H - B
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">IPv4 prefixes in the policy (log scale)</text>"#,
        (L + W - R) / 2.0,
        H - 18.0
    );
    let _ = writeln!(
        s,
        r#"<text x="18" y="{:.1}" text-anchor="middle" transform="rotate(-90 18 {:.1})">ns per packet (kernel average)</text>"#,
        (T + H - B) / 2.0,
        (T + H - B) / 2.0
    );
    let mut legend: Vec<(String, &str, &str)> = Vec::new();
    if let Some(f) = floor {
        for (v, color, dash, name) in [
            (f, "#000", "", format!("XDP_DROP floor {f:.1} ns")),
            (2.0 * f, "#c00", "6,4", "goal: 2x floor".to_string()),
        ] {
            let _ = writeln!(
                s,
                r#"<line x1="{L}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{color}" stroke-width="1.5" stroke-dasharray="{dash}"/>"#,
                W - R,
                y = py(v)
            );
            legend.push((name, color, dash));
        }
    }
    let colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd"];
    for (case, color) in CASES.iter().zip(colors) {
        let pts: Vec<(f64, f64)> = points
            .iter()
            .filter(|p| p.1 == *case)
            .map(|p| (px(p.0), py(p.2)))
            .collect();
        if pts.is_empty() {
            continue;
        }
        let path: Vec<String> = pts.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
        let _ = writeln!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"/>"#,
            path.join(" ")
        );
        for (x, y) in &pts {
            let _ = writeln!(
                s,
                r#"<circle cx="{x:.1}" cy="{y:.1}" r="3.5" fill="{color}"/>"#
            );
        }
        legend.push(((*case).to_string(), color, ""));
    }
    for row in r.sizes.iter().filter(|row| row.result.is_err()) {
        let x = px(row.v4);
        let _ = writeln!(
            s,
            r##"<text x="{x:.1}" y="{:.1}" text-anchor="middle" fill="#c00">{}: not loaded</text>"##,
            H - B - 8.0,
            count(row.v4)
        );
    }
    for (i, (name, color, dash)) in legend.iter().enumerate() {
        let y = T + 10.0 + 20.0 * i as f64;
        let x = W - R + 12.0;
        let _ = writeln!(
            s,
            r#"<line x1="{x:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{color}" stroke-width="2" stroke-dasharray="{dash}"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            x + 22.0,
            x + 28.0,
            y + 4.0,
            escape(name)
        );
    }
    s.push_str("</svg>\n");
    s
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn trim_float(v: f64) -> String {
    if v.fract().abs() < 1e-9 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// The smallest of 1, 2, 2.5, 5 x 10^k at or above `v`.
fn nice_ceiling(v: f64) -> f64 {
    let p = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if m * p >= v {
            return m * p;
        }
    }
    10.0 * p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cost(ns: u64) -> Cost {
        Cost {
            kernel_ns: vec![ns; 5],
            wall_ns: vec![ns as f64; 5],
            floor_ns: Vec::new(),
        }
    }

    fn sample() -> Report {
        let cases = |ns: u64| SizeResult {
            compile_s: 0.1,
            apply_s: 0.2,
            memory: Some(Memory {
                total: 3 << 20,
                maps: vec![("EB_X".into(), 3 << 20)],
            }),
            cases: CASES
                .iter()
                .map(|c| CaseResult {
                    case: c,
                    verdict: "DROP",
                    cost: cost(ns),
                })
                .collect(),
        };
        Report {
            meta: json!({}),
            quick: false,
            repeat: 1000,
            runs: 5,
            floor: Ok(cost(6)),
            sizes: vec![
                SizeRow {
                    v4: 0,
                    v6: 100_000,
                    result: Ok(cases(10)),
                },
                SizeRow {
                    v4: 1_000_000,
                    v6: 100_000,
                    result: Ok(cases(11)),
                },
                SizeRow {
                    v4: 5_000_000,
                    v6: 100_000,
                    result: Err("table would need 5000000 entries".into()),
                },
            ],
            live: Ok(Live {
                setup: "test".into(),
                frame_len: 64,
                rows: ["hot", "spread"]
                    .into_iter()
                    .flat_map(|shape| {
                        [
                            (FLOOR, 1_000_000, 10e6),
                            ("edgeblock", 1_000_000, 8e6),
                            ("nftables", 1_000_000, 1e6),
                            ("edgeblock", 10_000, 9e6),
                            ("xdp-filter", 10_000, 8.5e6),
                        ]
                        .map(|(f, n, pps)| LiveRow {
                            filter: f.into(),
                            entries: n,
                            list: n,
                            counted: 0,
                            sender_busy: vec![],
                            receiver_busy: vec![],
                            floor_pps: Some(10e6),
                            shape,
                            destinations: n,
                            pps: vec![pps; 3],
                            sent_pps: vec![12e6; 3],
                            note: None,
                            error: None,
                            paired: false,
                        })
                    })
                    .collect(),
                notes: vec![],
            }),
            control: Ok(Control {
                prefixes: 1_000_000,
                compile_s: 1.0,
                scratch_s: 1.5,
                change_s: vec![0.05, 0.06, 0.04],
                changed_prefixes: 10_000,
                memory: Some(Memory {
                    total: 40 << 20,
                    maps: vec![],
                }),
                memory_empty: Some(Memory {
                    total: 8 << 20,
                    maps: vec![],
                }),
                lookup_kinds: Some([0.1, 0.85, 0.05]),
                ..Control::default()
            }),
            correctness: Err("skipped".into()),
            fleet: Ok(Fleet {
                hosts: 3,
                rounds_ms: vec![80.0, 60.0, 1200.0],
            }),
            memory_latency: Ok(vec![(256, 7.0), (16384, 150.0)]),
        }
    }

    #[test]
    fn goals_are_judged_from_the_numbers() {
        let goals = sample().goals();
        let met = |needle: &str| {
            goals
                .iter()
                .find(|g| g.goal.contains(needle))
                .unwrap_or_else(|| panic!("no goal {needle}: {goals:?}"))
                .met
        };
        assert_eq!(met("per-packet v4 hit"), Some(true), "11 ns <= 2 x 6 ns");
        assert_eq!(met("above xdp-filter"), Some(true));
        assert_eq!(met("5x nftables"), Some(true));
        assert_eq!(met("spread traffic"), Some(true), "0.8x >= 0.5x");
        assert_eq!(met("from scratch"), Some(true));
        assert_eq!(met("1% change"), Some(true), "median 50 ms");
        assert_eq!(met("wrong verdict"), None, "not measured");
        assert_eq!(met("fleet"), Some(false), "one round took 1.2 s");
    }

    #[test]
    fn the_spread_goal_shows_what_reading_a_table_alone_leaves() {
        let mut r = sample();
        let Ok(live) = &mut r.live else { panic!() };
        let spread = live
            .rows
            .iter()
            .find(|r| r.filter == "edgeblock" && r.entries == 1_000_000 && r.shape == "spread")
            .unwrap()
            .clone();
        for (mib, pps) in [(4, 6e6), (16, 3e6)] {
            live.rows.push(LiveRow {
                filter: reads_filter(mib),
                pps: vec![pps; 3],
                ..spread.clone()
            });
        }
        let goals = r.goals();
        let g = goals
            .iter()
            .find(|g| g.goal.contains("spread traffic"))
            .unwrap();
        assert_eq!(
            g.measured,
            "0.80x floor; a program reading a table at random: 4 MiB 0.60x, 16 MiB 0.30x"
        );
        assert_eq!(g.met, Some(true), "judged on edgeblock's row alone");
    }

    #[test]
    fn rows_measured_in_turns_are_compared_round_by_round() {
        let mut r = sample();
        let Ok(live) = &mut r.live else { panic!() };
        // Round by round edgeblock is ahead (1.25x, 1.2x, 0.33x: median 1.2x), but over the
        // whole run the medians are equal (5 Mpps each), which is not above: the machine was
        // slow in the third round's edgeblock turn and fast in xdp-filter's.
        for row in &mut live.rows {
            let pps = match (row.filter.as_str(), row.entries) {
                ("edgeblock", 10_000) => [5e6, 6e6, 3e6],
                ("xdp-filter", _) => [4e6, 5e6, 9e6],
                _ => continue,
            };
            row.pps = pps.to_vec();
            row.floor_pps = Some(10e6);
        }
        let measured = |r: &Report| {
            let goals = r.goals();
            let g = goals.iter().find(|g| g.goal.contains("above xdp-filter"));
            g.map(|g| (g.measured.clone(), g.met)).unwrap()
        };
        let (text, met) = measured(&r);
        assert_eq!(met, Some(false), "unpaired: 0.5x / 0.5x floor: {text}");
        let Ok(live) = &mut r.live else { panic!() };
        for row in &mut live.rows {
            row.paired = matches!(
                (row.filter.as_str(), row.entries),
                ("edgeblock", 10_000) | ("xdp-filter", _)
            );
        }
        let (text, met) = measured(&r);
        assert_eq!(met, Some(true), "{text}");
        assert!(
            text.contains("hot 1.20x (rounds 0.33-1.25x), spread 1.20x (rounds 0.33-1.25x)"),
            "{text}"
        );
        // A row that lost a round is not paired with one that did not.
        let Ok(live) = &mut r.live else { panic!() };
        let (eb, xf) = (3, 4);
        assert_eq!(
            (
                live.rows[eb].filter.as_str(),
                live.rows[eb].entries,
                live.rows[xf].filter.as_str()
            ),
            ("edgeblock", 10_000, "xdp-filter")
        );
        assert!(round_ratios(&live.rows[eb], &live.rows[xf]).is_some());
        live.rows[xf].pps.pop();
        assert_eq!(round_ratios(&live.rows[eb], &live.rows[xf]), None);
    }

    #[test]
    fn per_packet_costs_measured_in_turns_are_judged_against_their_own_floor() {
        let mut r = sample();
        let judged = |r: &Report| {
            let goals = r.goals();
            let g = goals.iter().find(|g| g.goal.contains("per-packet v4 hit"));
            g.map(|g| (g.measured.clone(), g.met)).unwrap()
        };
        let Ok(row) = &mut r.sizes[1].result else {
            panic!()
        };
        // 13 ns against the table's floor of 6 ns is 2.17x, but each call ran while the
        // machine was slow, with its own floor measured beside it at 7-8 ns: at most 1.86x.
        row.cases[0].cost.kernel_ns = vec![13, 13, 13, 14, 14];
        let (text, met) = judged(&r);
        assert_eq!(met, Some(false), "{text}");
        let Ok(row) = &mut r.sizes[1].result else {
            panic!()
        };
        row.cases[0].cost.floor_ns = vec![7, 7, 8, 8, 8];
        let (text, met) = judged(&r);
        assert_eq!(met, Some(true), "{text}");
        assert!(
            text.contains("1.75x floor (in turns with the floor, 8.0 ns)"),
            "{text}"
        );
        // A run without its floor is not paired.
        let Ok(row) = &mut r.sizes[1].result else {
            panic!()
        };
        row.cases[0].cost.floor_ns.pop();
        assert_eq!(row.cases[0].cost.paired_ratio(), None);
    }

    #[test]
    fn memory_per_million_subtracts_the_empty_maps() {
        let r = sample();
        let Ok(c) = &r.control else { panic!() };
        assert_eq!(memory_per_million(c), Some((32u64 << 20) as f64));
    }

    #[test]
    fn table_json_and_plot_render_every_section() {
        let r = sample();
        let t = r.table();
        for needle in [
            "XDP_DROP floor",
            "1M v4 + 100k v6: v4 hit",
            "5M v4 + 100k v6",
            "nftables 1M spread",
            "apply 1% change",
            "random read in 16 MiB",
            "spread addresses: inline",
            "PASS",
        ] {
            assert!(t.contains(needle), "{needle} missing from\n{t}");
        }
        let j = r.json();
        assert_eq!(
            j["per_packet"]["sizes"][2]["error"],
            "table would need 5000000 entries"
        );
        assert_eq!(
            j["per_packet"]["sizes"][1]["cases"][0]["ratio_to_floor"],
            11.0 / 6.0
        );
        let svg = scaling_svg(&r);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("5M: not loaded"));
        assert_eq!(svg.matches("<polyline").count(), 4);
    }

    #[test]
    fn medians_and_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
        assert_eq!(count(0), "0");
        assert_eq!(count(10_000), "10k");
        assert_eq!(count(5_000_000), "5M");
        assert_eq!(count(1_500_000), "1.5M");
        assert_eq!(count(123), "123");
        assert_eq!(nice_ceiling(13.0), 20.0);
        assert_eq!(nice_ceiling(0.9), 1.0);
    }
}
