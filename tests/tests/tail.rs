//! `edgeblock tail` on real traffic: client -> edge (filtered) -> origin, in namespaces made
//! for each test. Samples name the rule and the flow; under a flood each rule's samples stay
//! within the per-second budget; the pcap file reads back with tcpdump; nothing is sampled
//! without a reader, nor once a killed reader's lease has run out; one reader at a time.

use std::{
    fs,
    io::{BufRead as _, BufReader},
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use edgeblock_tests::{Bpffs, Topology, addr::*, output_text, require_root};
use serde_json::Value;

const HIJACK: Ipv4Addr = ORIGIN_BLOCKED_V4;
const OTHER: Ipv4Addr = ORIGIN_HIJACKED_V4;
const PORT: u16 = 9;

struct Env {
    topo: Topology,
    bpffs: Bpffs,
}

impl Env {
    /// Two drop rules, applied and attached to the edge's ingress.
    fn new() -> Self {
        require_root();
        let env = Self {
            topo: Topology::new(),
            bpffs: Bpffs::new(),
        };
        let policy = env.bpffs.dir().join("policy.toml");
        fs::write(
            &policy,
            format!(
                "protect = [\"192.0.2.0/24\", \"2001:db8:c::/64\"]\n\n\
                 [[rule]]\nname = \"hijack\"\naction = \"drop\"\nprefixes = [\"{HIJACK}/32\"]\n\n\
                 [[rule]]\nname = \"other\"\naction = \"drop\"\nprefixes = [\"{OTHER}/32\"]\n"
            ),
        )
        .expect("write the policy");
        env.ok(&["apply", policy.to_str().expect("utf-8")]);
        env.ok(&["attach", &env.topo.edge_ingress]);
        env
    }

    fn command(&self) -> Command {
        self.bpffs.edgeblock(&self.topo.edge)
    }

    fn cli(&self, args: &[&str]) -> Output {
        self.command()
            .args(args)
            .output()
            .expect("run edgeblock in the edge namespace")
    }

    fn ok(&self, args: &[&str]) -> String {
        edgeblock_tests::succeeded(&self.cli(args), args)
    }

    /// Packets dropped and packets sampled so far, from `stats --json`.
    fn counts(&self) -> (u64, u64) {
        let v: Value = serde_json::from_str(&self.ok(&["stats", "--json"])).expect("stats json");
        let n = |k: &str| {
            v["totals"][k]["packets"]
                .as_u64()
                .unwrap_or_else(|| panic!("stats has no totals.{k}.packets: {v}"))
        };
        (n("drop"), n("sampled"))
    }

    /// UDP from the client to each destination in turn, as fast as it goes, for `time`.
    /// Returns the datagrams sent.
    fn flood(&self, dsts: &[Ipv4Addr], time: Duration) -> u64 {
        let dsts: Vec<SocketAddr> = dsts
            .iter()
            .map(|a| SocketAddr::new((*a).into(), PORT))
            .collect();
        self.topo
            .client
            .spawn_in(move || {
                let socket = UdpSocket::bind((CLIENT_V4, 0))
                    .unwrap_or_else(|e| panic!("bind a UDP socket in the client: {e}"));
                let end = Instant::now() + time;
                let mut sent = 0u64;
                // Bounded by time and by count.
                while Instant::now() < end && sent < 5_000_000 {
                    for dst in &dsts {
                        if socket.send_to(b"edgeblock tail test", dst).is_ok() {
                            sent += 1;
                        }
                    }
                }
                sent
            })
            .join()
            .expect("the flood thread panicked")
    }

    /// Start `edgeblock tail` with `args`, wait until it holds the lease.
    fn tail(&self, args: &[&str]) -> Tail {
        let mut child = self
            .command()
            .arg("tail")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start edgeblock tail");
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = mpsc::channel();
        let err_lines = std::thread::spawn(move || {
            let mut all = Vec::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line.clone());
                all.push(line);
            }
            all.join("\n")
        });
        let out_lines = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .collect::<Vec<_>>()
        });
        let ready = rx.recv_timeout(Duration::from_secs(10));
        let budget = ready.as_deref().ok().and_then(parse_budget);
        Tail {
            child,
            out_lines: Some(out_lines),
            err_lines: Some(err_lines),
            budget,
            first_err: ready.ok(),
        }
    }
}

/// "sampling at most 2 packets per rule per second on each of 2 CPUs; ..." -> 4.
fn parse_budget(line: &str) -> Option<u64> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let per_cpu: u64 = words.get(3)?.parse().ok()?;
    let at = words.iter().position(|w| *w == "of")?;
    let cpus: u64 = words.get(at + 1)?.parse().ok()?;
    Some(per_cpu * cpus)
}

struct Tail {
    child: Child,
    out_lines: Option<std::thread::JoinHandle<Vec<String>>>,
    err_lines: Option<std::thread::JoinHandle<String>>,
    /// Samples per rule per second, all CPUs together, as tail announced it.
    budget: Option<u64>,
    first_err: Option<String>,
}

impl Tail {
    fn budget(&self) -> u64 {
        self.budget.unwrap_or_else(|| {
            panic!(
                "tail did not announce its budget; its first stderr line: {:?}",
                self.first_err
            )
        })
    }

    /// Stop it as Ctrl-C would, and return its stdout lines.
    fn stop(self) -> Vec<String> {
        // A child this test started and has not reaped: the pid is still its own.
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)
            .unwrap_or_else(|e| panic!("SIGTERM to tail: {e}"));
        self.finish()
    }

    /// Wait for it to exit by itself (within 20 s), and return its stdout lines.
    fn finish(mut self) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("wait for tail") {
                break s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("tail did not exit within 20 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let err = self
            .err_lines
            .take()
            .expect("joined once")
            .join()
            .expect("stderr");
        assert!(status.success(), "tail failed ({status}): {err}");
        self.out_lines
            .take()
            .expect("joined once")
            .join()
            .expect("stdout")
    }

    /// kill -9, and reap it (a zombie would still count as a live reader).
    fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn samples(lines: &[String]) -> Vec<Value> {
    lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[test]
fn tail_shows_blocked_packets_within_the_budget_under_a_flood() {
    let env = Env::new();
    // No reader: nothing is sampled.
    env.flood(&[HIJACK], Duration::from_millis(300));
    let (dropped_before, sampled_before) = env.counts();
    assert!(dropped_before > 0, "the flood was not dropped");
    assert_eq!(sampled_before, 0, "sampled with no reader");

    let pcap: PathBuf = env.bpffs.dir().join("samples.pcap");
    let tail = env.tail(&[
        "--json",
        "--rate",
        "4",
        "--pcap",
        pcap.to_str().expect("utf-8"),
    ]);
    let budget = tail.budget();
    let flood = Duration::from_secs(3);
    let sent = env.flood(&[HIJACK, OTHER], flood);
    // Let the last samples reach the reader.
    std::thread::sleep(Duration::from_millis(700));
    let lines = tail.stop();
    let got = samples(&lines);
    let (dropped, sampled) = env.counts();
    let dropped = dropped - dropped_before;

    eprintln!(
        "flood: {sent} sent, {dropped} dropped; {} samples, sampled counter {}; budget {budget}/s per rule",
        got.len(),
        sampled
    );
    // Each sample names its rule and the flow that rule blocks.
    for s in &got {
        let (rule, dst) = (s["rule"].as_str(), s["dst"].as_str());
        let want = match rule {
            Some("hijack") => HIJACK,
            Some("other") => OTHER,
            _ => panic!("sample of an unexpected rule: {s}"),
        };
        assert_eq!(dst, Some(want.to_string().as_str()), "{s}");
        assert_eq!(s["src"], CLIENT_V4.to_string(), "{s}");
        assert_eq!(s["proto"], "udp", "{s}");
        assert_eq!(s["dst_port"], PORT, "{s}");
        assert_eq!(s["action"], "drop", "{s}");
        assert!(s["len"].as_u64().is_some_and(|l| l >= 42), "{s}");
    }
    // Both rules are sampled (one rule's flood does not use up another's budget), and
    // neither beyond its budget: at most `budget` in each second the flood touched.
    let seconds = flood.as_secs() + 2;
    for rule in ["hijack", "other"] {
        let n = got.iter().filter(|s| s["rule"] == rule).count() as u64;
        assert!(n >= 1, "no sample of {rule} in a {flood:?} flood");
        assert!(
            n <= budget * seconds,
            "{n} samples of {rule} in a {flood:?} flood, budget {budget}/s"
        );
    }
    assert!(
        dropped >= 20 * got.len() as u64 && sent >= dropped,
        "the flood ({sent} sent, {dropped} dropped) was not much larger than the samples ({})",
        got.len()
    );
    // The reader got every sample the program wrote.
    assert_eq!(
        sampled,
        got.len() as u64,
        "sampled counter vs samples shown"
    );

    // The pcap file reads back with tcpdump: one UDP packet per sample, to the blocked
    // addresses.
    let out = Command::new("tcpdump")
        .args(["-nn", "-r"])
        .arg(&pcap)
        .output()
        .expect("run tcpdump (the bootstrap installs it)");
    assert!(out.status.success(), "tcpdump -r: {}", output_text(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    let packets: Vec<&str> = text.lines().collect();
    assert_eq!(packets.len(), got.len(), "pcap packets vs samples:\n{text}");
    for p in &packets {
        let to_blocked = [HIJACK, OTHER]
            .iter()
            .any(|a| p.contains(&format!("{CLIENT_V4}.")) && p.contains(&format!("> {a}.{PORT}:")));
        assert!(
            to_blocked && p.contains("UDP"),
            "unexpected pcap packet: {p}"
        );
    }

    // The reader is gone and gave its lease back: nothing is sampled.
    env.flood(&[HIJACK], Duration::from_millis(300));
    assert_eq!(env.counts().1, sampled, "sampled after the reader left");
}

#[test]
fn tail_filters_by_rule_and_stops_after_count() {
    let env = Env::new();
    let mut tail = env.tail(&["--rule", "other", "--count", "2"]);
    let bad = env.cli(&["tail", "--rule", "no-such-rule"]);
    assert!(!bad.status.success());
    assert!(
        output_text(&bad).contains("no rule named \"no-such-rule\""),
        "{}",
        output_text(&bad)
    );
    // The budget is a few per second: two seconds of flood give at least two samples.
    let deadline = Instant::now() + Duration::from_secs(10);
    while tail.child_running() && Instant::now() < deadline {
        env.flood(&[HIJACK, OTHER], Duration::from_millis(500));
    }
    let lines = tail.finish();
    assert_eq!(lines.len(), 2, "{lines:?}");
    for l in &lines {
        assert!(
            l.contains("rule=other") && l.contains(&format!("> {OTHER}:{PORT}")),
            "{l}"
        );
        assert!(l.contains("action=drop") && l.contains(" udp "), "{l}");
    }
}

#[test]
fn one_reader_at_a_time_and_a_killed_reader_stops_sampling() {
    let env = Env::new();
    let first = env.tail(&["--json"]);
    first.budget();
    let second = env.tail(&["--json"]);
    let err = second
        .err_lines_now()
        .unwrap_or_else(|| "(nothing on stderr)".into());
    assert!(
        err.contains("another reader"),
        "a second reader was not refused: {err}"
    );
    first.kill9();
    // Its lease runs out after a few seconds; the program then stops sampling.
    std::thread::sleep(Duration::from_millis(3500));
    env.flood(&[HIJACK], Duration::from_millis(300));
    let (_, sampled) = env.counts();
    env.flood(&[HIJACK], Duration::from_millis(500));
    assert_eq!(env.counts().1, sampled, "sampling went on with no reader");
    // A new reader takes over from the dead one, and sees only new samples.
    let mut third = env.tail(&["--json", "--count", "1"]);
    third.budget();
    let deadline = Instant::now() + Duration::from_secs(10);
    while third.child_running() && Instant::now() < deadline {
        env.flood(&[HIJACK], Duration::from_millis(300));
    }
    let lines = third.finish();
    assert_eq!(samples(&lines)[0]["rule"], "hijack", "{lines:?}");
}

impl Tail {
    fn child_running(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_none()
    }

    /// Everything it wrote on stderr, once it has exited (within 10 s).
    fn err_lines_now(mut self) -> Option<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut text = self.first_err.take().unwrap_or_default();
        if let Some(rest) = self.err_lines.take().and_then(|h| h.join().ok()) {
            text = rest;
        }
        Some(text)
    }
}
