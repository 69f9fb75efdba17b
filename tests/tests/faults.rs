//! Faults from outside: an `apply` killed with SIGKILL part-way, pins removed behind
//! edgeblock's back, a pin root that is not on bpffs. Each drives the real `edgeblock` binary
//! on a private bpffs, in throwaway network namespaces, and checks what `status`, `lookup`
//! and the data path (the pinned program under BPF_PROG_TEST_RUN) say afterwards.
//!
//! Two invocations at once are serialised by the lock: `cli.rs`,
//! `a_second_invocation_waits_for_the_lock_then_gives_up_clearly`.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::unix::process::ExitStatusExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant, SystemTime},
};

use aya::programs::{TestRun as _, TestRunOptions};
use edgeblock::{
    compile::{Compiled, action_name, compile, hash_hex},
    loader::Filter,
    maps::Maps,
    pins::Pins,
    policy::{self, Direction},
};
use edgeblock_tests::{
    Bpffs, Netns, edgeblock_bin,
    packet::{Frame, L4},
    ping, require_root,
};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

/// A private bpffs, a dir for policy files, and the namespace edgeblock runs in.
struct Env {
    bpffs: Bpffs,
    dir: PathBuf,
    ns: Netns,
}

impl Env {
    /// `role` names the namespace. It starts with only a loopback, so the lockout check finds
    /// no address of "this host" that a test policy could cover.
    fn new(role: &str) -> Self {
        require_root();
        let bpffs = Bpffs::new();
        let dir = bpffs.dir().join("files");
        std::fs::create_dir_all(&dir).expect("files dir");
        Self {
            bpffs,
            dir,
            ns: Netns::new(role),
        }
    }

    fn file(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.join(name);
        std::fs::write(&p, text).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        p
    }

    /// `edgeblock --pin-root .. --state-dir .. <args>` inside the namespace. `ip netns exec`
    /// execs the program in its own process, so the child's pid is edgeblock's.
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = self.ns.command(edgeblock_bin());
        c.args(self.bpffs.global_args());
        c.args(args);
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run edgeblock")
    }

    fn ok(&self, args: &[&str]) -> String {
        edgeblock_tests::succeeded(&self.run(args), args)
    }

    fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["status", "--json"])).expect("status --json")
    }

    /// What `lookup` says for `addr` as a destination: "drop by rule x (prefix)" or "no rule".
    fn lookup_dst(&self, addr: IpAddr) -> String {
        let out = self.ok(&["lookup", &addr.to_string()]);
        let head = format!("{addr} as destination: ");
        out.lines()
            .find_map(|l| l.strip_prefix(&head))
            .unwrap_or_else(|| panic!("lookup {addr} printed no destination line:\n{out}"))
            .to_owned()
    }

    fn pins(&self) -> Pins {
        Pins::new(self.bpffs.pin_root())
    }
}

use edgeblock_tests::{output_text as text, utf8 as path};

/// A child process that is killed (SIGKILL) and reaped if the test panics before it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// xorshift64*: enough randomness for probe addresses, replayable from the printed seed.
struct Rng(u64);

impl Rng {
    fn from_env_or_clock() -> Self {
        let seed = std::env::var("EDGEBLOCK_FAULTS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            })
            | 1;
        eprintln!("faults: seed {seed} (EDGEBLOCK_FAULTS_SEED to replay)");
        Self(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `[0, n)`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

// ---------------------------------------------------------------------------------------------
// kill -9 in the middle of an apply.

/// IPv4 prefixes in the big list: every other /24 from 10.0.0.0.
const BIG_V4: u32 = 100_000;
/// IPv6 prefixes in the big list: /48s from 2a00::.
const BIG_V6: u32 = 200_000;

fn big_v4(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(0x0a00_0000 + i * 512)
}

fn big_v6(i: u32) -> Ipv6Addr {
    Ipv6Addr::new(0x2a00, (i >> 16) as u16, i as u16, 0, 0, 0, 0, 0)
}

fn big_list() -> String {
    let mut s = String::with_capacity(8 << 20);
    s.push_str("# 300,000 prefixes for faults.rs\n");
    for i in 0..BIG_V4 {
        writeln!(s, "{}/24", big_v4(i)).expect("write to a String");
    }
    for i in 0..BIG_V6 {
        writeln!(s, "{}/48", big_v6(i)).expect("write to a String");
    }
    s
}

/// The policy in force before: `origin` drops the probe prefixes.
const OLD: &str = r#"
reject_rate = 1000000
reject_burst = 100000

[[rule]]
name = "origin"
action = "drop"
prefixes = ["203.0.113.0/24", "2001:db8:1::/64"]

[[rule]]
name = "shared"
action = "drop"
prefixes = ["198.51.100.0/24", "2001:db8:5::/48"]
"#;

/// The policy the killed applies bring in: the same probe prefixes, now in `origin-moved`,
/// which rejects (XDP_TX, distinct from the old XDP_DROP and from "no rule", XDP_PASS); the
/// `shared` prefixes unchanged; and 300,000 new prefixes. The reject rate is far above what
/// the probes send, so a reject is always answered.
const NEW: &str = r#"
reject_rate = 1000000
reject_burst = 100000

[[rule]]
name = "shared"
action = "drop"
prefixes = ["198.51.100.0/24", "2001:db8:5::/48"]

[[rule]]
name = "origin-moved"
action = "reject"
prefixes = ["203.0.113.0/24", "2001:db8:1::/64"]

[[rule]]
name = "big"
action = "drop"
include = ["big.netset"]
"#;

const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0, 0, 0, 0, 2);

/// An address whose frames the data path is watched on, and the verdicts it may give.
struct Probe {
    name: &'static str,
    addr: IpAddr,
    /// (verdict under the old policy, under the new one).
    verdicts: (u32, u32),
}

fn probes() -> [Probe; 6] {
    let v4 = |s: &str| IpAddr::V4(s.parse().expect("v4"));
    let v6 = |s: &str| IpAddr::V6(s.parse().expect("v6"));
    [
        Probe {
            name: "moved v4",
            addr: v4("203.0.113.9"),
            verdicts: (XDP_DROP, XDP_TX),
        },
        Probe {
            name: "moved v6",
            addr: v6("2001:db8:1::9"),
            verdicts: (XDP_DROP, XDP_TX),
        },
        Probe {
            name: "shared v4",
            addr: v4("198.51.100.7"),
            verdicts: (XDP_DROP, XDP_DROP),
        },
        Probe {
            name: "shared v6",
            addr: v6("2001:db8:5::7"),
            verdicts: (XDP_DROP, XDP_DROP),
        },
        Probe {
            name: "big v4",
            addr: IpAddr::V4(Ipv4Addr::from(u32::from(big_v4(1)) + 1)),
            verdicts: (XDP_PASS, XDP_DROP),
        },
        Probe {
            name: "big v6",
            addr: IpAddr::V6(Ipv6Addr::from(u128::from(big_v6(1)) + 1)),
            verdicts: (XDP_PASS, XDP_DROP),
        },
    ]
}

/// A TCP SYN from the client to `dst`: rejected, it is answered (XDP_TX).
fn syn_to(dst: IpAddr) -> Vec<u8> {
    let frame = match dst {
        IpAddr::V4(d) => Frame::v4(CLIENT_V4, d),
        IpAddr::V6(d) => Frame::v6(CLIENT_V6, d),
    };
    frame
        .l4(L4::TcpSyn {
            sport: 40000,
            dport: 80,
        })
        .build()
}

/// Runs the probe frames through the pinned program, over and over, until stopped; returns
/// how often each (probe, verdict) happened.
fn watch_data_path(pins: Pins, stop: Arc<AtomicBool>) -> BTreeMap<(&'static str, u32), u64> {
    let filter = Filter::open(&pins).unwrap_or_else(|e| panic!("open the pinned program: {e}"));
    let frames: Vec<(&'static str, Vec<u8>)> =
        probes().iter().map(|p| (p.name, syn_to(p.addr))).collect();
    let mut seen = BTreeMap::new();
    while !stop.load(Ordering::Relaxed) {
        for (name, frame) in &frames {
            let opts = TestRunOptions {
                data_in: Some(frame),
                repeat: 1,
                ..TestRunOptions::default()
            };
            let verdict = filter
                .program()
                .test_run(opts)
                .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN: {e}"))
                .return_value;
            *seen.entry((*name, verdict)).or_default() += 1;
        }
        // A few thousand frames a second: plenty, without taking a CPU from the applies.
        thread::sleep(Duration::from_micros(500));
    }
    seen
}

/// What a killed apply did, judged from `status` before and after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Left {
    /// Nothing: killed before its first write.
    Unchanged,
    /// Some of the new policy written, not all (the hash is written last).
    Partial,
    /// The new policy in full: killed after it finished.
    New,
}

/// The parts of `status --json` an apply changes.
fn policy_state(status: &serde_json::Value) -> (String, u64, String) {
    (
        status["policy"]["hash"].as_str().unwrap_or("?").to_owned(),
        status["rules"].as_u64().unwrap_or(u64::MAX),
        status["entries"].to_string(),
    )
}

fn compiled(path: &Path) -> Compiled {
    let now = jiff::Timestamp::now();
    let policy = policy::load(path, now).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    compile(&policy)
}

/// What `lookup` must print for `addr` as a destination under `c`.
fn expected_dst(c: &Compiled, addr: IpAddr) -> String {
    match c.tables.lookup(Direction::Dst, addr) {
        None => "no rule".to_owned(),
        Some((prefix, rule)) => {
            let r = &c.rules[rule];
            format!("{} by rule {} ({prefix})", action_name(r.action), r.name)
        }
    }
}

#[test]
fn an_apply_killed_part_way_leaves_old_or_new_and_the_next_apply_converges() {
    let env = Env::new("kill");
    let mut rng = Rng::from_env_or_clock();
    env.file("big.netset", &big_list());
    let old = env.file("old.toml", OLD);
    let new = env.file("new.toml", NEW);
    let (want_old, want_new) = (compiled(&old), compiled(&new));

    env.ok(&["apply", path(&old)]);
    let old_state = policy_state(&env.status());
    assert_eq!(
        old_state.0,
        hash_hex(&want_old.hash),
        "the old policy's hash"
    );
    let probes = probes();
    let old_lookups: Vec<String> = probes.iter().map(|p| env.lookup_dst(p.addr)).collect();

    // How long a whole apply of the new policy takes here: kills aim inside it.
    let start = Instant::now();
    env.ok(&["apply", path(&new)]);
    let full = start.elapsed();
    let new_lookups: Vec<String> = probes.iter().map(|p| env.lookup_dst(p.addr)).collect();
    env.ok(&["apply", path(&old)]);
    assert_eq!(
        policy_state(&env.status()),
        old_state,
        "back to the old policy"
    );
    eprintln!("faults: an apply of the new policy takes {full:.2?}");
    for (i, p) in probes.iter().enumerate() {
        assert_eq!(
            old_lookups[i],
            expected_dst(&want_old, p.addr),
            "{}",
            p.name
        );
        assert_eq!(
            new_lookups[i],
            expected_dst(&want_new, p.addr),
            "{}",
            p.name
        );
    }

    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (pins, stop) = (env.pins(), Arc::clone(&stop));
        thread::spawn(move || watch_data_path(pins, stop))
    };
    // Stop the watcher even if an assertion below fails, so that the panic is reported
    // rather than the test hanging on a thread that never ends.
    struct StopOnDrop(Arc<AtomicBool>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let stopper = StopOnDrop(Arc::clone(&stop));

    // One `apply` of the new policy, SIGKILLed part-way; checked with `lookup`.
    let kill_apply = |attempt: u32| -> Left {
        let before = policy_state(&env.status());
        let mut child = Running(
            env.cmd(&["apply", path(&new)])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn edgeblock apply"),
        );
        // Killed as soon as its first write shows (the metadata of the rules it adds, written
        // before the tables): the kill then lands while it writes the tables.
        let started = Instant::now();
        let maps = Maps::open(&env.pins()).unwrap_or_else(|e| panic!("open the maps: {e}"));
        let metas = maps.rule_metas().expect("read the rule metadata");
        while matches!(child.0.try_wait(), Ok(None))
            && maps.rule_metas().expect("read the rule metadata") == metas
        {
            thread::yield_now();
        }
        let wait = started.elapsed();
        // Not reaped yet, so the pid is still this child's even if it has exited.
        let _ = kill(Pid::from_raw(child.0.id() as i32), Signal::SIGKILL);
        let exit = child.0.wait().expect("wait for edgeblock apply");
        let how = if exit.signal() == Some(Signal::SIGKILL as i32) {
            "killed"
        } else {
            "had finished"
        };
        let state = policy_state(&env.status());
        let now = if state == before {
            Left::Unchanged
        } else if state.0 == hash_hex(&want_new.hash) {
            Left::New
        } else {
            Left::Partial
        };
        eprintln!("faults: attempt {attempt}: after {wait:.2?} ({how}): {now:?}");
        // `lookup` reads what the data path reads: each probe shows the old or the new
        // policy, never nothing and never a third answer.
        for (i, p) in probes.iter().enumerate() {
            let got = env.lookup_dst(p.addr);
            assert!(
                got == old_lookups[i] || got == new_lookups[i],
                "after a kill ({now:?}), {} ({}) shows {got:?}; expected {:?} or {:?}",
                p.name,
                p.addr,
                old_lookups[i],
                new_lookups[i]
            );
        }
        now
    };

    // The first partial state is applied back to the old policy, the second is killed into
    // once more and then left for the final apply to converge from.
    let mut outcomes = Vec::new();
    for attempt in 1..=8 {
        let now = kill_apply(attempt);
        outcomes.push(now);
        match now {
            Left::Partial if outcomes.iter().filter(|o| **o == Left::Partial).count() >= 2 => {
                break;
            }
            Left::Partial => {
                env.ok(&["apply", path(&old)]);
                assert_eq!(
                    policy_state(&env.status()),
                    old_state,
                    "from part of the new policy, an apply of the old one converges too"
                );
            }
            Left::New => {
                env.ok(&["apply", path(&old)]);
            }
            Left::Unchanged => {}
        }
    }
    assert!(
        outcomes.iter().filter(|o| **o == Left::Partial).count() >= 2,
        "no two kills landed while the apply was writing ({outcomes:?}, a whole apply took \
         {full:.2?}): the test proves too little, look at its timing"
    );
    kill_apply(outcomes.len() as u32 + 1);
    drop(stopper);
    let seen = watcher.join().expect("the data-path watcher panicked");

    // The data path, all along: one of the two policies for each probe, at every frame.
    let mut report = String::new();
    for p in &probes {
        for ((name, verdict), n) in seen.iter().filter(|((name, _), _)| *name == p.name) {
            writeln!(report, "  {name}: verdict {verdict} x {n}").expect("write to a String");
            assert!(
                *verdict == p.verdicts.0 || *verdict == p.verdicts.1,
                "{name}: the program gave verdict {verdict} during the killed applies; only \
                 {} (old policy) or {} (new) are possible",
                p.verdicts.0,
                p.verdicts.1
            );
        }
    }
    eprintln!("faults: data path during the killed applies:\n{report}");
    assert!(!seen.is_empty(), "the watcher ran no frame");

    // The next apply converges: exactly the new policy, in the maps and on the data path.
    // (The last killed apply may have finished already; it too started from a partial state.)
    env.ok(&["apply", path(&new)]);
    let status = env.status();
    let t = &want_new.tables;
    assert_eq!(
        status["policy"]["hash"],
        hash_hex(&want_new.hash),
        "{status}"
    );
    assert_eq!(
        status["entries"],
        serde_json::json!({
            "dst_v4": t.dst_v4.len(),
            "src_v4": t.src_v4.len(),
            "dst_v6": t.dst_v6.len(),
            "src_v6": t.src_v6.len(),
        }),
        "{status}"
    );
    assert_eq!(status["rules"], want_new.rules.len(), "{status}");
    assert!(
        env.ok(&["apply", path(&new)]).contains("nothing to do"),
        "a second apply finds nothing left to do"
    );
    let mut sample: Vec<IpAddr> = probes.iter().map(|p| p.addr).collect();
    for _ in 0..8 {
        let i = rng.below(u64::from(BIG_V4)) as u32;
        let inside = u32::from(big_v4(i)) + rng.below(256) as u32;
        // The /24 after each listed one is not listed.
        sample.extend([inside, inside + 256].map(|a| IpAddr::V4(Ipv4Addr::from(a))));
    }
    for _ in 0..3 {
        let i = rng.below(u64::from(BIG_V6)) as u32;
        sample.push(IpAddr::V6(Ipv6Addr::from(
            u128::from(big_v6(i)) + u128::from(rng.next()),
        )));
    }
    for addr in sample {
        assert_eq!(
            env.lookup_dst(addr),
            expected_dst(&want_new, addr),
            "{addr}"
        );
    }
    let filter = Filter::open(&env.pins()).expect("open the pinned program");
    for p in &probes {
        let frame = syn_to(p.addr);
        let opts = TestRunOptions {
            data_in: Some(&frame),
            repeat: 1,
            ..TestRunOptions::default()
        };
        let verdict = filter
            .program()
            .test_run(opts)
            .expect("test run")
            .return_value;
        assert_eq!(verdict, p.verdicts.1, "{} after convergence", p.name);
    }
}

// ---------------------------------------------------------------------------------------------
// Pins removed by someone else.

/// Blocks everything the peer sends: the peer's pings to the edge fail exactly while the
/// filter runs on the edge's interface.
const BLOCK_PEER: &str = r#"
[[rule]]
name = "block-peer"
direction = "src"
action = "drop"
prefixes = ["198.51.100.2/32"]
"#;

const EDGE_ADDR: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);

/// Whether the peer's pings to the edge are dropped (and counted to `block-peer`).
fn filtering(env: &Env, peer: &Netns) -> bool {
    let counted = || -> u64 {
        let stats: serde_json::Value =
            serde_json::from_str(&env.ok(&["stats", "--json"])).expect("stats --json");
        stats["rules"]
            .as_array()
            .and_then(|rules| rules.iter().find(|r| r["rule"] == "block-peer"))
            .and_then(|r| r["packets"].as_u64())
            .unwrap_or_else(|| panic!("no block-peer counter in {stats}"))
    };
    let before = counted();
    let answered = ping(peer, IpAddr::V4(EDGE_ADDR), 1, Duration::from_secs(1));
    let dropped = counted() - before;
    assert!(
        answered == (dropped == 0),
        "the ping was {} but the filter counted {dropped} dropped packets",
        if answered { "answered" } else { "not answered" }
    );
    !answered
}

/// What `status` says about the interfaces: (name, healthy) from `--json`, and the text.
fn interfaces(env: &Env) -> (Vec<(String, bool)>, String) {
    let status = env.status();
    let list = status["interfaces"]
        .as_array()
        .expect("interfaces array")
        .iter()
        .map(|i| {
            (
                i["name"].as_str().unwrap_or("?").to_owned(),
                i["healthy"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    (list, env.ok(&["status"]))
}

/// An edge namespace with `ebp0`, a peer namespace with `ebp1` on the other end, and the
/// `block-peer` policy applied (not attached): the peer's pings reach the edge.
fn edge_and_peer(edge: &str, peer_role: &str) -> (Env, Netns, PathBuf) {
    let env = Env::new(edge);
    let peer = Netns::new(peer_role);
    env.ns.ip([
        "link",
        "add",
        "ebp0",
        "type",
        "veth",
        "peer",
        "name",
        "ebp1",
        "netns",
        peer.name(),
    ]);
    env.ns.ip(["addr", "add", "198.51.100.1/24", "dev", "ebp0"]);
    env.ns.ip(["link", "set", "ebp0", "up"]);
    peer.ip(["addr", "add", "198.51.100.2/24", "dev", "ebp1"]);
    peer.ip(["link", "set", "ebp1", "up"]);
    let policy = env.file("block-peer.toml", BLOCK_PEER);
    env.ok(&["apply", path(&policy)]);
    // Before attaching: the peer reaches the edge (waiting for the link, and filling ARP).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ping(&peer, IpAddr::V4(EDGE_ADDR), 1, Duration::from_secs(1)) {
        assert!(Instant::now() < deadline, "the veth link never came up");
    }
    assert!(
        !filtering(&env, &peer),
        "not attached yet: nothing is filtered"
    );
    (env, peer, policy)
}

#[test]
fn a_removed_program_pin_is_reported_and_attach_pins_the_running_program_again() {
    let (env, peer, policy) = edge_and_peer("progedge", "progpeer");
    env.ok(&["attach", "ebp0"]);
    let program_id = env.status()["program_id"].as_u64().expect("program_id");
    assert!(
        filtering(&env, &peer),
        "attached: the peer's pings are dropped"
    );
    let prog = env.pins().prog();
    let pinged = || ping(&peer, IpAddr::V4(EDGE_ADDR), 1, Duration::from_secs(1));

    // The program pin removed: the link keeps the program running. Status says so, and what
    // to do, instead of "not loaded".
    std::fs::remove_file(&prog).unwrap_or_else(|e| panic!("rm {}: {e}", prog.display()));
    assert!(!pinged(), "the link still filters without the program pin");
    let out = env.run(&["status"]);
    assert!(!out.status.success(), "status must not pretend all is well");
    for needle in [
        "is missing, but edgeblock still filters ebp0",
        &format!("program id {program_id}"),
        "edgeblock attach ebp0",
    ] {
        assert!(
            text(&out).contains(needle),
            "status lacks {needle:?}: {}",
            text(&out)
        );
    }
    // attach pins the running program again: same id, nothing reattached.
    let out = env.ok(&["attach", "ebp0"]);
    assert!(out.contains("already attached to ebp0"), "{out}");
    assert!(prog.exists(), "attach must pin the program again");
    assert_eq!(env.status()["program_id"].as_u64(), Some(program_id));
    assert_eq!(interfaces(&env).0, [("ebp0".to_owned(), true)]);
    assert!(
        filtering(&env, &peer),
        "still filtering, counted by the same maps"
    );

    // The same with `apply` first: it pins the running program too, rather than loading a
    // second one beside it.
    std::fs::remove_file(&prog).unwrap_or_else(|e| panic!("rm {}: {e}", prog.display()));
    env.ok(&["apply", path(&policy)]);
    assert_eq!(env.status()["program_id"].as_u64(), Some(program_id));
    assert_eq!(interfaces(&env).0, [("ebp0".to_owned(), true)]);

    // What an older edgeblock left behind: the link runs the old program while a new one is
    // pinned (here made by hiding the link pin while `apply` loads). Status names the mismatch;
    // attach swaps the link to the pinned program atomically.
    let link = env.pins().links_dir().join("ebp0@native");
    let hidden = env.bpffs.pin_root().join("hidden-link");
    std::fs::remove_file(&prog).unwrap_or_else(|e| panic!("rm {}: {e}", prog.display()));
    std::fs::rename(&link, &hidden).expect("hide the link pin");
    env.ok(&["apply", path(&policy)]);
    std::fs::rename(&hidden, &link).expect("restore the link pin");
    let new_id = env.status()["program_id"].as_u64().expect("program_id");
    assert_ne!(new_id, program_id, "apply loaded a second program");
    let (list, status) = interfaces(&env);
    assert_eq!(list, [("ebp0".to_owned(), false)]);
    assert!(
        status.contains(&format!("RUNS PROGRAM id {program_id}, not the pinned one"))
            && status.contains("edgeblock attach ebp0"),
        "{status}"
    );
    assert!(
        filtering(&env, &peer),
        "the old program still filters, with the same maps"
    );
    let out = env.ok(&["attach", "ebp0"]);
    assert!(
        out.contains(&format!("ebp0 ran program id {program_id}"))
            && out.contains(&format!("switched it to program id {new_id}")),
        "{out}"
    );
    assert_eq!(interfaces(&env).0, [("ebp0".to_owned(), true)]);
    assert!(filtering(&env, &peer), "filtering after the switch");
    env.ok(&["detach", "ebp0"]);
    assert!(!filtering(&env, &peer), "detached");
}

#[test]
fn removed_link_pins_are_reported_and_attach_restores_filtering() {
    let (env, peer, _policy) = edge_and_peer("pinedge", "pinpeer");
    let attach = || {
        let out = env.ok(&["attach", "ebp0"]);
        assert!(out.contains("attached to ebp0 in native mode"), "{out}");
    };
    attach();
    assert_eq!(interfaces(&env).0, [("ebp0".to_owned(), true)]);
    assert!(
        filtering(&env, &peer),
        "attached: the peer's pings are dropped"
    );

    // Someone tries the old netlink way: the bpf_link refuses to be replaced.
    let out = env
        .ns
        .exec("ip", ["link", "set", "dev", "ebp0", "xdp", "off"]);
    assert!(
        !out.status.success(),
        "`ip link set dev ebp0 xdp off` detached a bpf_link: {}",
        text(&out)
    );
    assert!(filtering(&env, &peer), "still filtering after `xdp off`");

    // The link's pin removed: it was the last reference, so the program is detached. Status
    // shows no interface, and says it is not filtering.
    let link = env.pins().links_dir().join("ebp0@native");
    std::fs::remove_file(&link).unwrap_or_else(|e| panic!("rm {}: {e}", link.display()));
    let (list, status) = interfaces(&env);
    assert!(list.is_empty(), "{list:?}");
    assert!(
        status.contains("interfaces: none (not filtering)"),
        "{status}"
    );
    assert!(!filtering(&env, &peer), "the pin is gone: so is the filter");
    attach();
    assert!(filtering(&env, &peer), "attach restores filtering");

    // The whole links/ directory removed, entries and all.
    let links = env.pins().links_dir();
    std::fs::remove_dir_all(&links).unwrap_or_else(|e| panic!("rm -r {}: {e}", links.display()));
    let (list, status) = interfaces(&env);
    assert!(list.is_empty(), "{list:?}");
    assert!(
        status.contains("interfaces: none (not filtering)"),
        "{status}"
    );
    assert!(!filtering(&env, &peer), "links/ is gone: so is the filter");
    attach();
    assert_eq!(interfaces(&env).0, [("ebp0".to_owned(), true)]);
    assert!(filtering(&env, &peer), "attach restores filtering");
    env.ok(&["detach", "ebp0"]);
}

// ---------------------------------------------------------------------------------------------
// bpffs not mounted.

#[test]
fn a_pin_root_off_bpffs_is_explained_and_left_untouched() {
    let env = Env::new("nobpf");
    let policy = env.file("policy.toml", BLOCK_PEER);
    let plain = env.bpffs.dir().join("plain");
    std::fs::create_dir(&plain).expect("plain dir");
    // An existing plain dir, and one that does not exist yet inside it: the hint names the
    // directory to mount on, the nearest one that exists.
    for (pin_root, mount_on) in [(plain.clone(), &plain), (plain.join("a/b"), &plain)] {
        for args in [&["apply", path(&policy)][..], &["attach", "eb-nosuch0"]] {
            let out = env
                .ns
                .command(edgeblock_bin())
                .arg("--pin-root")
                .arg(&pin_root)
                .arg("--state-dir")
                .arg(env.bpffs.state_dir())
                .arg("--data-dir")
                .arg(env.bpffs.data_dir())
                .arg("--trusted-dir")
                .arg(env.bpffs.trusted_dir())
                .args(args)
                .output()
                .expect("run edgeblock");
            let all = text(&out);
            assert!(!out.status.success(), "{args:?} must fail: {all}");
            for needle in [
                format!("{} is not on a bpf filesystem", pin_root.display()),
                format!("mount -t bpf bpf {}", mount_on.display()),
                "--pin-root".to_owned(),
            ] {
                assert!(all.contains(&needle), "{args:?}: lacks {needle:?}:\n{all}");
            }
        }
    }
    let left: Vec<_> = std::fs::read_dir(&plain)
        .expect("read plain dir")
        .map(|e| e.map(|e| e.file_name()))
        .collect();
    assert!(left.is_empty(), "nothing is created off bpffs: {left:?}");
}

#[test]
fn a_missing_bpffs_at_sys_fs_bpf_is_mounted() {
    let env = Env::new("mountbpf");
    let policy = env.file("policy.toml", BLOCK_PEER);
    // A private mount namespace with nothing on /sys/fs/bpf (unmounting there does not touch
    // the host's), in which edgeblock must mount bpffs itself. It all goes when the shell
    // exits, the pins with it.
    let script = r#"
        set -e
        while mountpoint -q /sys/fs/bpf; do umount /sys/fs/bpf; done
        [ "$(stat -f -c %T /sys/fs/bpf)" != bpf_fs ]
        "$EB" --pin-root /sys/fs/bpf/edgeblock-faults --state-dir "$STATE" --data-dir "$STATE/data" --trusted-dir "$STATE/trusted" apply "$POLICY"
        stat -f -c %T /sys/fs/bpf
        "$EB" --pin-root /sys/fs/bpf/edgeblock-faults --state-dir "$STATE" --data-dir "$STATE/data" --trusted-dir "$STATE/trusted" status
    "#;
    let out = env
        .ns
        .command("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", script])
        .env("EB", edgeblock_bin())
        .env("STATE", env.bpffs.state_dir())
        .env("POLICY", &policy)
        .output()
        .expect("run unshare (util-linux)");
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(all.contains("bpf_fs"), "bpffs is mounted afterwards: {all}");
    assert!(
        all.contains("generation 1"),
        "the policy was applied: {all}"
    );
}
