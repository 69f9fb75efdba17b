//! `edgeblock run` on real traffic: client -> edge (the daemon filters the edge's ingress
//! veth) -> origin, in namespaces made for each test. Policy edits (in place and by rename)
//! follow the valid versions only; expiry to the second; kill -9 and restart under a
//! continuous probe; Prometheus metrics that match the traffic sent; runtime blocks with and
//! without the daemon; repair after someone detaches or removes the pins.

use std::{
    fs,
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpStream},
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use edgeblock_tests::{
    Bpffs, Topology, UdpProbe, addr::*, output_text, require_root, tcp_echo, tcp_echo_server,
};

const ECHO_PORT: u16 = 8080;
const METRICS: &str = "127.0.0.1:9477";
const PROBE_TIMEOUT: Duration = Duration::from_millis(250);

/// The namespaces, the private bpffs and data dir, and echo servers on the origins.
struct Env {
    topo: Topology,
    bpffs: Bpffs,
    policy: PathBuf,
    _servers: Vec<edgeblock_tests::netns::EchoServer>,
}

impl Env {
    fn new() -> Self {
        require_root();
        let topo = Topology::new();
        let bpffs = Bpffs::new();
        let servers = [
            ORIGIN_V4,
            ORIGIN_EXCEPTION_V4,
            ORIGIN_BLOCKED_V4,
            ORIGIN_HIJACKED_V4,
        ]
        .into_iter()
        .map(|a| tcp_echo_server(&topo.origin, SocketAddr::new(a.into(), ECHO_PORT)))
        .collect();
        let policy = bpffs.dir().join("etc").join("policy.toml");
        fs::create_dir_all(policy.parent().expect("parent")).expect("create the policy dir");
        Self {
            topo,
            bpffs,
            policy,
            _servers: servers,
        }
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

    /// Write the policy in place (truncate and write, as `echo >` does).
    fn write_policy(&self, text: &str) {
        fs::write(&self.policy, text).expect("write the policy");
    }

    /// Replace the policy as editors do: write a new file beside it, rename it over.
    fn replace_policy(&self, text: &str) {
        let tmp = self.policy.with_extension("toml.swp");
        fs::write(&tmp, text).expect("write the new policy");
        fs::rename(&tmp, &self.policy).expect("rename it over the policy");
    }

    fn start(&self) -> Daemon {
        self.start_with(&[])
    }

    fn start_with(&self, extra: &[&str]) -> Daemon {
        let log = self.bpffs.dir().join(format!("daemon-{}.log", next_log()));
        let mut c = self.command();
        c.args(["run", "--policy"])
            .arg(&self.policy)
            .args(["--iface", &self.topo.edge_ingress, "--metrics", METRICS])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).expect("create the daemon log"));
        let child = c.spawn().expect("start edgeblock run");
        let daemon = Daemon { child, log };
        // Ready when the metrics answer and the interface is attached.
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(text) = try_scrape(&self.topo)
                && metric(&text, "edgeblock_interface_attached", &[]) == Some(1.0)
            {
                return daemon;
            }
            assert!(
                Instant::now() < deadline,
                "edgeblock run did not become ready in 15 s; its log:\n{}",
                daemon.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn reachable(&self, addr: impl Into<IpAddr>) -> bool {
        tcp_echo(
            &self.topo.client,
            SocketAddr::new(addr.into(), ECHO_PORT),
            PROBE_TIMEOUT,
        )
        .is_ok()
    }

    /// Wait up to `within` for `addr` to become (un)reachable.
    fn await_reachable(&self, addr: impl Into<IpAddr>, want: bool, within: Duration, what: &str) {
        let addr = addr.into();
        let deadline = Instant::now() + within;
        while self.reachable(addr) != want {
            assert!(
                Instant::now() < deadline,
                "{what}: {addr} still {} after {within:?}",
                if want { "blocked" } else { "reachable" }
            );
        }
    }

    fn scrape(&self) -> String {
        try_scrape(&self.topo).expect("the metrics endpoint must answer")
    }

    /// The audit records, oldest first, after checking the chain.
    fn audit(&self) -> Vec<serde_json::Value> {
        self.ok(&["audit", "verify"]);
        self.ok(&["audit", "--json"])
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }
}

fn next_log() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// A running `edgeblock run`; killed (by pid) when dropped.
struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn kill9(&mut self) {
        self.child.kill().expect("kill -9 the daemon");
        self.child.wait().expect("reap the daemon");
    }

    /// SIGTERM and wait for a clean exit.
    fn terminate(mut self) -> String {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
        let status = self.child.wait().expect("wait for the daemon");
        assert!(
            status.success(),
            "the daemon exited with {status}:\n{}",
            self.log()
        );
        self.log()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// GET /metrics from inside the edge namespace.
fn try_scrape(topo: &Topology) -> Option<String> {
    topo.edge.run_in(|| {
        let addr: SocketAddr = METRICS.parse().expect("metrics address");
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: edge\r\nConnection: close\r\n\r\n")
            .ok()?;
        let mut response = String::new();
        s.read_to_string(&mut response).ok()?;
        let (head, body) = response.split_once("\r\n\r\n")?;
        if !head.starts_with("HTTP/1.1 200") {
            return None;
        }
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: application/openmetrics-text"),
            "{head}"
        );
        check_exposition(body);
        Some(body.to_owned())
    })
}

/// Strict checks of the OpenMetrics text format: every sample belongs to a family declared
/// with # TYPE, names and labels are well formed, values parse, `# EOF` ends it, and counter
/// samples end in `_total`.
fn check_exposition(text: &str) {
    let mut types: std::collections::BTreeMap<String, String> = Default::default();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.last(), Some(&"# EOF"), "must end with # EOF:\n{text}");
    for line in &lines[..lines.len() - 1] {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kind, name, value) = (
                parts.next().unwrap_or(""),
                parts.next().unwrap_or(""),
                parts.next().unwrap_or(""),
            );
            assert!(
                matches!(kind, "HELP" | "TYPE" | "UNIT") && valid_name(name),
                "bad metadata line {line:?}"
            );
            if kind == "TYPE" {
                assert!(
                    matches!(value, "counter" | "gauge" | "info"),
                    "unexpected type in {line:?}"
                );
                types.insert(name.to_owned(), value.to_owned());
            }
            continue;
        }
        let (name, _, value) = parse_sample(line);
        let family = types
            .iter()
            .find(|(f, t)| match t.as_str() {
                "counter" => name == format!("{f}_total") || name == format!("{f}_created"),
                "info" => name == format!("{f}_info"),
                _ => name == **f,
            })
            .unwrap_or_else(|| panic!("sample {line:?} has no # TYPE"));
        assert!(value.is_finite(), "{line:?}");
        if family.1 == "counter" {
            assert!(value >= 0.0, "negative counter {line:?}");
        }
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.chars().enumerate().all(|(i, c)| {
            c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
        })
}

/// (name, labels, value) of one sample line; panics on anything malformed.
fn parse_sample(line: &str) -> (String, Vec<(String, String)>, f64) {
    let (series, value) = line
        .rsplit_once(' ')
        .unwrap_or_else(|| panic!("sample without a value: {line:?}"));
    let value: f64 = value
        .parse()
        .unwrap_or_else(|_| panic!("bad value in {line:?}"));
    let (name, labels) = match series.split_once('{') {
        None => (series, Vec::new()),
        Some((name, rest)) => {
            let body = rest
                .strip_suffix('}')
                .unwrap_or_else(|| panic!("unclosed labels in {line:?}"));
            let mut labels = Vec::new();
            let mut rest = body;
            while !rest.is_empty() {
                let (k, after) = rest
                    .split_once("=\"")
                    .unwrap_or_else(|| panic!("bad label in {line:?}"));
                let end = after
                    .find('"')
                    .unwrap_or_else(|| panic!("unterminated label value in {line:?}"));
                assert!(valid_name(k), "bad label name {k:?} in {line:?}");
                labels.push((k.to_owned(), after[..end].to_owned()));
                rest = after[end + 1..]
                    .strip_prefix(',')
                    .unwrap_or(&after[end + 1..]);
            }
            (name, labels)
        }
    };
    assert!(valid_name(name), "bad metric name in {line:?}");
    (name.to_owned(), labels, value)
}

/// The value of the sample `name` whose labels include `want`.
fn metric(text: &str, name: &str, want: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(parse_sample)
        .find(|(n, labels, _)| {
            n == name
                && want
                    .iter()
                    .all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|(_, _, v)| v)
}

fn policy_blocking(rules: &[(&str, &str)]) -> String {
    let mut text = String::from("protect = [\"192.0.2.0/24\", \"2001:db8:c::/64\"]\n");
    for (name, prefix) in rules {
        text.push_str(&format!(
            "\n[[rule]]\nname = \"{name}\"\naction = \"drop\"\nprefixes = [\"{prefix}\"]\n"
        ));
    }
    text
}

#[test]
fn policy_edits_follow_the_valid_versions_only() {
    let env = Env::new();
    env.write_policy(&policy_blocking(&[("one", "203.0.113.9/32")]));
    let daemon = env.start();
    assert!(!env.reachable(ORIGIN_BLOCKED_V4), "v1 blocks .9");
    assert!(env.reachable(ORIGIN_EXCEPTION_V4), "v1 leaves .5 alone");
    let generation = |text: &str| metric(text, "edgeblock_policy_generation", &[]).unwrap_or(0.0);
    let g1 = generation(&env.scrape());

    // v2, written in place: .5 blocked instead of .9.
    env.write_policy(&policy_blocking(&[("two", "203.0.113.5/32")]));
    env.await_reachable(
        ORIGIN_EXCEPTION_V4,
        false,
        Duration::from_secs(3),
        "v2 in place",
    );
    env.await_reachable(
        ORIGIN_BLOCKED_V4,
        true,
        Duration::from_secs(3),
        "v2 in place",
    );
    let m = env.scrape();
    assert!(generation(&m) > g1, "{m}");
    assert_eq!(
        metric(&m, "edgeblock_reload_errors_total", &[]),
        Some(0.0),
        "{m}"
    );

    // An invalid version, by rename: nothing changes, the error is counted and logged with
    // file:line.
    env.replace_policy(
        "[[rule]]\nname = \"broken\"\naction = \"drop\"\nprefixes = [\"203.0.113.300/32\"]\n",
    );
    let deadline = Instant::now() + Duration::from_secs(3);
    let m = loop {
        let m = env.scrape();
        if metric(&m, "edgeblock_reload_errors_total", &[]) == Some(1.0) {
            break m;
        }
        assert!(
            Instant::now() < deadline,
            "the invalid version was not counted:\n{m}\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        metric(&m, "edgeblock_last_reload_success", &[]),
        Some(0.0),
        "{m}"
    );
    let line = format!("{}:4", env.policy.display());
    assert!(
        daemon.log().contains(&line),
        "the log must name {line}:\n{}",
        daemon.log()
    );
    for _ in 0..3 {
        assert!(
            !env.reachable(ORIGIN_EXCEPTION_V4),
            "the invalid version changed nothing: .5 stays blocked"
        );
        assert!(
            env.reachable(ORIGIN_BLOCKED_V4),
            "the invalid version changed nothing: .9 stays open"
        );
    }
    assert_eq!(generation(&env.scrape()), generation(&m));

    // v3, by rename: both blocked.
    env.replace_policy(&policy_blocking(&[
        ("two", "203.0.113.5/32"),
        ("three", "203.0.113.9/32"),
    ]));
    env.await_reachable(
        ORIGIN_BLOCKED_V4,
        false,
        Duration::from_secs(3),
        "v3 by rename",
    );
    assert!(!env.reachable(ORIGIN_EXCEPTION_V4), "v3 keeps .5 blocked");
    assert!(env.reachable(ORIGIN_V4), "v3 leaves the origin alone");
    let m = env.scrape();
    assert_eq!(
        metric(&m, "edgeblock_last_reload_success", &[]),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, "edgeblock_reload_errors_total", &[]),
        Some(1.0),
        "{m}"
    );

    // SIGHUP reloads too (same content: applied, unchanged).
    let pid = nix::unistd::Pid::from_raw(daemon.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).expect("SIGHUP");
    // A reload is a whole apply: give it time on a slow machine, poll to see it done.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !daemon.log().contains("trigger=\"sighup\"") {
        assert!(
            Instant::now() < deadline,
            "no SIGHUP reload:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = daemon.terminate();
    assert!(log.contains("fail-static"), "{log}");
    // Fail-static: the filter outlives the daemon.
    assert!(
        !env.reachable(ORIGIN_BLOCKED_V4),
        "after SIGTERM the filter stays"
    );

    // The audit trail: the start, each applied version, the refused one (naming its
    // file:line), and nothing for the SIGHUP that changed nothing.
    let records = env.audit();
    let actions: Vec<&str> = records
        .iter()
        .map(|r| r["action"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(
        actions,
        ["attach", "apply", "apply", "refused", "apply"],
        "{records:#?}"
    );
    assert!(
        records[3]["detail"]
            .as_str()
            .is_some_and(|d| d.contains(&line)),
        "{:#}",
        records[3]
    );
    assert_eq!(
        records[2]["policy_hash_before"],
        records[1]["policy_hash_after"]
    );
    assert_eq!(
        records[4]["policy_hash_before"],
        records[2]["policy_hash_after"]
    );
    let three = records[4]["rules"]
        .as_array()
        .and_then(|r| r.iter().find(|c| c["rule"] == "three"))
        .unwrap_or_else(|| panic!("v3 adds rule three: {:#}", records[4]));
    assert_eq!(three["added"]["first"][0], "203.0.113.9/32", "{three}");
}

/// With trusted keys, the daemon applies only versions signed by one of them: an unsigned
/// edit is refused (and audited) and the signed version before it stays in force.
#[test]
fn with_trusted_keys_the_daemon_applies_only_signed_versions() {
    let env = Env::new();
    let key = env.bpffs.dir().join("keys").join("alice");
    env.ok(&["keygen", "--out", key.to_str().expect("utf-8")]);
    fs::copy(
        key.with_extension("pub"),
        env.bpffs.trusted_dir().join("alice.pub"),
    )
    .expect("trust alice");
    let sign = || {
        env.ok(&[
            "sign",
            env.policy.to_str().expect("utf-8"),
            "--key",
            key.with_extension("key").to_str().expect("utf-8"),
        ])
    };
    env.write_policy(&policy_blocking(&[("one", "203.0.113.9/32")]));
    sign();
    let daemon = env.start();
    assert!(!env.reachable(ORIGIN_BLOCKED_V4), "the signed v1 blocks .9");

    // Unsigned v2 (the old signature no longer matches): refused, v1 stays.
    env.replace_policy(&policy_blocking(&[("two", "203.0.113.5/32")]));
    let deadline = Instant::now() + Duration::from_secs(3);
    while metric(&env.scrape(), "edgeblock_reload_errors_total", &[]) != Some(1.0) {
        assert!(
            Instant::now() < deadline,
            "the unsigned version was not refused:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!env.reachable(ORIGIN_BLOCKED_V4), "v1 stays in force");
    assert!(
        env.reachable(ORIGIN_EXCEPTION_V4),
        "the unsigned v2 changed nothing"
    );

    // Signed v2: applied.
    sign();
    env.await_reachable(
        ORIGIN_EXCEPTION_V4,
        false,
        Duration::from_secs(3),
        "signed v2",
    );
    assert!(env.reachable(ORIGIN_BLOCKED_V4), "signed v2 replaced v1");
    drop(daemon);

    let records = env.audit();
    let refused = records
        .iter()
        .find(|r| r["action"] == "refused")
        .unwrap_or_else(|| panic!("a refused record: {records:#?}"));
    assert!(
        refused["detail"]
            .as_str()
            .is_some_and(|d| d.contains("altered after it was signed")),
        "{refused:#}"
    );
    let last = records.last().expect("records");
    assert_eq!(last["action"], "apply", "{records:#?}");
    assert!(
        last["signers"].as_array().is_some_and(|s| !s.is_empty()),
        "{last:#}"
    );
}

#[test]
fn a_rule_leaves_at_its_expiry_to_the_second() {
    let env = Env::new();
    let now = jiff::Timestamp::now();
    let expires = jiff::Timestamp::from_second(now.as_second() + 4).expect("time");
    env.write_policy(&format!(
        "{}\n[[rule]]\nname = \"temporary\"\naction = \"drop\"\nprefixes = [\"203.0.113.9/32\"]\nexpires = \"{expires}\"\n",
        policy_blocking(&[("kept", "203.0.113.5/32")])
    ));
    let daemon = env.start();
    let expires_at = std::time::SystemTime::UNIX_EPOCH
        + Duration::from_secs(u64::try_from(expires.as_second()).expect("positive"));
    loop {
        let attempt = std::time::SystemTime::now();
        let open = env.reachable(ORIGIN_BLOCKED_V4);
        if open {
            let late = attempt.duration_since(expires_at).unwrap_or_else(|e| {
                panic!(
                    "{ORIGIN_BLOCKED_V4} answered {:?} before the rule expired",
                    e.duration()
                )
            });
            assert!(
                late < Duration::from_secs(1),
                "the rule left {late:?} after its expiry"
            );
            break;
        }
        assert!(
            std::time::SystemTime::now() < expires_at + Duration::from_secs(2),
            "the rule was still blocking 2 s after its expiry:\n{}",
            daemon.log()
        );
    }
    assert!(
        !env.reachable(ORIGIN_EXCEPTION_V4),
        "the rule without expiry stays"
    );
    let log = daemon.log();
    assert!(
        log.contains("rule expired") && log.contains("temporary"),
        "{log}"
    );
}

#[test]
fn kill_9_and_restart_let_nothing_through_and_keep_runtime_blocks() {
    let env = Env::new();
    env.write_policy(&policy_blocking(&[("policy-block", "203.0.113.9/32")]));
    let mut daemon = env.start();
    env.ok(&[
        "block",
        "203.0.113.5",
        "--reason",
        "incident 7",
        "--operator",
        "alice",
    ]);
    env.await_reachable(
        ORIGIN_EXCEPTION_V4,
        false,
        Duration::from_secs(2),
        "runtime block",
    );

    let count = 3000;
    let interval = Duration::from_millis(1);
    let probe = |addr: std::net::Ipv4Addr, port| {
        UdpProbe::start(
            &env.topo.client,
            &env.topo.origin,
            SocketAddr::new(addr.into(), port),
            count,
            interval,
        )
    };
    let (blocked, runtime, open) = (
        probe(ORIGIN_BLOCKED_V4, 9101),
        probe(ORIGIN_EXCEPTION_V4, 9102),
        probe(ORIGIN_V4, 9103),
    );
    std::thread::sleep(Duration::from_millis(300));
    daemon.kill9();
    std::thread::sleep(Duration::from_millis(300));
    let daemon = env.start();
    let (blocked, runtime, open) = (blocked.finish(), runtime.finish(), open.finish());
    assert_eq!(
        blocked.received, 0,
        "a policy-blocked datagram got through around the restart"
    );
    assert_eq!(
        runtime.received, 0,
        "a runtime-blocked datagram got through around the restart"
    );
    assert!(
        open.missing.is_empty(),
        "traffic to an open origin was disturbed: {:?}",
        open.loss_runs()
    );
    assert!(daemon.log().contains("adopted"), "{}", daemon.log());
    assert!(
        !env.reachable(ORIGIN_EXCEPTION_V4),
        "the runtime block came back"
    );
    let list = env.ok(&["list"]);
    assert!(
        list.contains("203.0.113.5/32") && list.contains("alice") && list.contains("incident 7"),
        "{list}"
    );
    let m = env.scrape();
    assert_eq!(
        metric(&m, "edgeblock_runtime_blocks", &[]),
        Some(1.0),
        "{m}"
    );
}

#[test]
fn metrics_match_the_traffic_sent() {
    let env = Env::new();
    env.write_policy(&policy_blocking(&[("blocked-host", "203.0.113.9/32")]));
    let _daemon = env.start();
    let sent = 57;
    let report = UdpProbe::start(
        &env.topo.client,
        &env.topo.origin,
        SocketAddr::new(ORIGIN_BLOCKED_V4.into(), 9200),
        sent,
        Duration::from_millis(2),
    )
    .finish();
    assert_eq!(report.received, 0);
    let m = env.scrape();
    let rule = [("rule", "blocked-host"), ("action", "drop")];
    assert_eq!(
        metric(&m, "edgeblock_rule_packets_total", &rule),
        Some(f64::from(sent)),
        "{m}"
    );
    // Ethernet 14 + IPv4 20 + UDP 8 + the probe's 12-byte payload.
    assert_eq!(
        metric(&m, "edgeblock_rule_bytes_total", &rule),
        Some(f64::from(sent * 54)),
        "{m}"
    );
    assert!(
        metric(&m, "edgeblock_action_packets_total", &[("action", "drop")])
            >= Some(f64::from(sent)),
        "{m}"
    );
    assert_eq!(
        metric(&m, "edgeblock_table_entries", &[("table", "dst_v4")]),
        Some(1.0),
        "{m}"
    );
    assert!(
        metric(
            &m,
            "edgeblock_map_memory_bytes",
            &[("map", "EB_RULE_STATS")]
        ) > Some(0.0)
    );
    let status: serde_json::Value =
        serde_json::from_str(&env.ok(&["status", "--json"])).expect("status json");
    let hash = status["policy"]["hash"].as_str().expect("hash");
    assert_eq!(
        metric(&m, "edgeblock_policy_info", &[("hash", hash)]),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, "edgeblock_policy_generation", &[]),
        status["policy"]["generation"].as_f64(),
        "{m}"
    );
    for name in [
        "edgeblock_malformed_packets_total",
        "edgeblock_non_ip_packets_total",
        "edgeblock_last_reload_timestamp_seconds",
        "edgeblock_repairs_total",
    ] {
        assert!(metric(&m, name, &[]).is_some(), "{name} missing:\n{m}");
    }
}

#[test]
fn runtime_blocks_work_with_and_without_the_daemon() {
    let env = Env::new();
    env.write_policy(&policy_blocking(&[("policy-block", "203.0.113.9/32")]));
    let policy = env.policy.to_str().expect("utf-8").to_owned();
    // Without the daemon: apply + attach, then block and unblock by hand.
    env.ok(&["apply", &policy]);
    env.ok(&["attach", &env.topo.edge_ingress]);
    assert!(env.reachable(ORIGIN_EXCEPTION_V4));
    let out = env.ok(&[
        "block",
        "203.0.113.5",
        "--ttl",
        "1h",
        "--reason",
        "ticket 42",
        "--operator",
        "bob",
    ]);
    assert!(out.contains("blocked"), "{out}");
    assert!(
        !env.reachable(ORIGIN_EXCEPTION_V4),
        "blocked without the daemon"
    );
    let list: serde_json::Value =
        serde_json::from_str(&env.ok(&["list", "--json"])).expect("list json");
    assert_eq!(list[0]["prefix"], "203.0.113.5/32", "{list}");
    assert_eq!(list[0]["who"], "bob", "{list}");
    assert_eq!(list[0]["reason"], "ticket 42", "{list}");
    assert!(list[0]["expires"].is_string(), "{list}");
    // Re-applying the policy keeps the runtime layer.
    env.ok(&["apply", &policy]);
    assert!(
        !env.reachable(ORIGIN_EXCEPTION_V4),
        "apply keeps runtime blocks"
    );
    // Lockout protection: blocking the client network is refused and changes nothing.
    let refused = env.cli(&[
        "block",
        "192.0.2.0/24",
        "--direction",
        "src",
        "--reason",
        "oops",
    ]);
    assert!(!refused.status.success(), "{}", output_text(&refused));
    assert!(
        output_text(&refused).contains("protected"),
        "{}",
        output_text(&refused)
    );
    assert!(
        env.ok(&["list"]).lines().count() == 2,
        "the refused block was not recorded"
    );
    env.ok(&["unblock", "203.0.113.5"]);
    assert!(
        env.reachable(ORIGIN_EXCEPTION_V4),
        "unblocked without the daemon"
    );
    assert!(!env.cli(&["unblock", "203.0.113.5"]).status.success());
    // Each change by hand is audited: who, why, and the prefixes it moved; so is the refusal.
    let records = env.audit();
    let blocks: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| ["block", "unblock", "refused"].contains(&r["action"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(
        blocks
            .iter()
            .map(|r| r["action"].as_str().unwrap_or("?"))
            .collect::<Vec<_>>(),
        ["block", "refused", "unblock"],
        "{records:#?}"
    );
    assert_eq!(blocks[0]["operator"], "bob", "{:#}", blocks[0]);
    assert!(
        blocks[0]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("ticket 42")),
        "{:#}",
        blocks[0]
    );
    assert!(
        blocks[0].to_string().contains("203.0.113.5/32"),
        "the diff names the prefix: {:#}",
        blocks[0]
    );
    assert!(
        blocks[1]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("lockout")),
        "{:#}",
        blocks[1]
    );

    // With the daemon: the CLI changes the maps, the daemon takes the layer as its own and
    // expires a --ttl block by itself.
    let daemon = env.start();
    env.ok(&[
        "block",
        "203.0.113.5",
        "--ttl",
        "3s",
        "--reason",
        "short",
        "--operator",
        "carol",
    ]);
    assert!(
        !env.reachable(ORIGIN_EXCEPTION_V4),
        "blocked with the daemon running"
    );
    let deadline = Instant::now() + Duration::from_secs(2);
    while metric(&env.scrape(), "edgeblock_runtime_blocks", &[]) != Some(1.0) {
        assert!(
            Instant::now() < deadline,
            "the daemon did not pick up the block:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    env.await_reachable(
        ORIGIN_EXCEPTION_V4,
        true,
        Duration::from_secs(5),
        "--ttl 3s",
    );
    assert!(env.ok(&["list"]).contains("no runtime blocks"));
    let log = daemon.log();
    assert!(
        log.contains("runtime block added") && log.contains("carol"),
        "{log}"
    );
    assert!(log.contains("runtime block expired"), "{log}");
    assert!(!env.reachable(ORIGIN_BLOCKED_V4), "the policy stays");
}

#[test]
fn repairs_a_detached_interface_and_removed_pins() {
    let env = Env::new();
    env.write_policy(&policy_blocking(&[("policy-block", "203.0.113.9/32")]));
    let daemon = env.start();
    assert!(!env.reachable(ORIGIN_BLOCKED_V4));
    let repairs = || metric(&env.scrape(), "edgeblock_repairs_total", &[]).unwrap_or(-1.0);
    assert_eq!(repairs(), 0.0);

    env.ok(&["detach", &env.topo.edge_ingress]);
    let detached = Instant::now();
    env.await_reachable(
        ORIGIN_BLOCKED_V4,
        false,
        Duration::from_secs(3),
        "re-attach after detach",
    );
    assert!(detached.elapsed() < Duration::from_secs(3));
    assert!(repairs() >= 1.0);
    assert!(daemon.log().contains("attached to"), "{}", daemon.log());

    // Remove every pin: the link (which detaches), the program and the maps.
    let root = env.bpffs.pin_root();
    for dir in ["links", "maps"] {
        for entry in fs::read_dir(root.join(dir)).expect("read pins") {
            fs::remove_file(entry.expect("entry").path()).expect("remove a pin");
        }
    }
    fs::remove_file(root.join("prog")).expect("remove the program pin");
    let removed = Instant::now();
    env.await_reachable(
        ORIGIN_BLOCKED_V4,
        false,
        Duration::from_secs(3),
        "repair after rm",
    );
    let deadline = removed + Duration::from_secs(3);
    // The program and maps come back first, the link pin after them: wait for all three.
    while !(root.join("prog").exists()
        && fs::read_dir(root.join("maps")).is_ok_and(|d| d.count() >= 16)
        && fs::read_dir(root.join("links")).is_ok_and(|mut d| d.next().is_some()))
    {
        assert!(
            Instant::now() < deadline,
            "pins not restored:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The CLI works on the restored pins, and they are the daemon's maps.
    let status: serde_json::Value =
        serde_json::from_str(&env.ok(&["status", "--json"])).expect("status json");
    assert_eq!(status["interfaces"][0]["healthy"], true, "{status}");
    assert_eq!(status["entries"]["dst_v4"], 1, "{status}");
    assert!(repairs() >= 3.0, "{}", daemon.log());
    assert!(daemon.log().contains("pinned"), "{}", daemon.log());
}
