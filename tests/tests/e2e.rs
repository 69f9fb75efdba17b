//! End to end, on real traffic: client -> edge (edgeblock attached natively to its ingress
//! veth) -> origin, in namespaces made for the test. Ping and TCP to blocked origins are
//! dropped while the rest flows; re-applying a changed policy under a continuous probe loses
//! nothing for prefixes kept in both policies (and lets nothing through to blocked ones kept
//! in both); detaching restores traffic.

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use edgeblock_tests::{
    Bpffs, Topology, UdpProbe, addr::*, edgeblock_bin, ping, require_root, tcp_echo,
    tcp_echo_server,
};

const ECHO_PORT: u16 = 8080;
const TIMEOUT: Duration = Duration::from_millis(800);

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

struct Edge<'a> {
    topo: &'a Topology,
    bpffs: &'a Bpffs,
}

impl Edge<'_> {
    fn run(&self, args: &[&str]) -> Output {
        let mut c: Command = self.topo.edge.command(edgeblock_bin());
        c.args(self.bpffs.global_args());
        c.args(args)
            .output()
            .expect("run edgeblock in the edge namespace")
    }

    fn ok(&self, args: &[&str]) -> String {
        edgeblock_tests::succeeded(&self.run(args), args)
    }
}

/// (address, reachable under examples/policy.toml)
fn expectations() -> Vec<(IpAddr, bool)> {
    vec![
        (ORIGIN_V4.into(), true),
        (ORIGIN_HIJACKED_V4.into(), false),
        (ORIGIN_EXCEPTION_V4.into(), true),
        (ORIGIN_BLOCKED_V4.into(), false),
        (ORIGIN_V6.into(), true),
        (ORIGIN_EXCEPTION_V6.into(), true),
        (ORIGIN_BLOCKED_V6.into(), false),
    ]
}

/// Every address's ping and TCP result, as "addr ping=.. tcp=.." lines, compared in one go so
/// a failure shows the whole picture.
fn observe(topo: &Topology) -> Vec<(IpAddr, bool, bool)> {
    expectations()
        .into_iter()
        .map(|(a, _)| {
            let p = ping(&topo.client, a, 2, TIMEOUT);
            let t = tcp_echo(&topo.client, SocketAddr::new(a, ECHO_PORT), TIMEOUT).is_ok();
            (a, p, t)
        })
        .collect()
}

fn assert_reachability(topo: &Topology, want: impl Fn(IpAddr, bool) -> bool, what: &str) {
    let seen = observe(topo);
    let wrong: Vec<String> = seen
        .iter()
        .zip(expectations())
        .filter(|((a, p, t), (_, blocked_by_policy))| {
            let w = want(*a, *blocked_by_policy);
            *p != w || *t != w
        })
        .map(|((a, p, t), (_, b))| format!("{a}: ping {p}, tcp {t}, expected {}", want(*a, b)))
        .collect();
    assert!(wrong.is_empty(), "{what}:\n{}", wrong.join("\n"));
}

#[test]
fn blocks_real_traffic_applies_without_a_gap_and_detaches_cleanly() {
    require_root();
    let topo = Topology::new();
    let bpffs = Bpffs::new();
    let _servers: Vec<_> = expectations()
        .into_iter()
        .map(|(a, _)| tcp_echo_server(&topo.origin, SocketAddr::new(a, ECHO_PORT)))
        .collect();
    let edge = Edge {
        topo: &topo,
        bpffs: &bpffs,
    };

    assert_reachability(&topo, |_, _| true, "before edgeblock everything answers");

    let policy = examples().join("policy.toml");
    let policy = policy.to_str().expect("utf-8 path");
    edge.ok(&["apply", policy]);
    let attached = edge.ok(&["attach", &topo.edge_ingress]);
    assert!(
        attached.contains("native mode"),
        "veth supports native XDP: {attached}"
    );

    assert_reachability(&topo, |_, allowed| allowed, "with examples/policy.toml");

    let stats: serde_json::Value =
        serde_json::from_str(&edge.ok(&["stats", "--json"])).expect("stats json");
    let rule = |name: &str| {
        stats["rules"]
            .as_array()
            .expect("rules")
            .iter()
            .find(|r| r["rule"] == name)
            .unwrap_or_else(|| panic!("rule {name} in stats: {stats}"))
            .clone()
    };
    assert!(
        rule("emergency-origin")["packets"].as_u64() > Some(0),
        "{stats}"
    );
    assert!(
        rule("hijacked-ranges")["packets"].as_u64() > Some(0),
        "{stats}"
    );
    assert!(
        rule("origin-exceptions")["packets"].as_u64() > Some(0),
        "{stats}"
    );
    assert!(
        stats["totals"]["drop"]["packets"].as_u64() > Some(0),
        "{stats}"
    );

    // A second policy: the emergency block and its exceptions stay, the rest changes.
    let other = bpffs.dir().join("other.toml");
    std::fs::write(
        &other,
        r#"
protect = ["192.0.2.0/24", "2001:db8:c::/64"]
[[rule]]
name = "emergency-origin"
action = "drop"
prefixes = ["203.0.113.0/24", "2001:db8:1::/64"]
[[rule]]
name = "origin-exceptions"
action = "pass"
prefixes = ["203.0.113.5", "2001:db8:1::5"]
[[rule]]
name = "new-block"
action = "drop"
prefixes = ["233.252.0.0/24", "198.51.100.128/25"]
"#,
    )
    .expect("write the second policy");
    let other = other.to_str().expect("utf-8 path");

    // Continuous probes through the filter while the two policies alternate.
    let count = 4000;
    let interval = Duration::from_micros(750);
    let kept_pass = UdpProbe::start(
        &topo.client,
        &topo.origin,
        SocketAddr::new(ORIGIN_EXCEPTION_V4.into(), 9001),
        count,
        interval,
    );
    let kept_pass_v6 = UdpProbe::start(
        &topo.client,
        &topo.origin,
        SocketAddr::new(ORIGIN_EXCEPTION_V6.into(), 9002),
        count,
        interval,
    );
    let kept_drop = UdpProbe::start(
        &topo.client,
        &topo.origin,
        SocketAddr::new(ORIGIN_BLOCKED_V4.into(), 9003),
        count,
        interval,
    );
    let mut applies = 0;
    while kept_pass.sent_so_far() < count * 9 / 10 {
        edge.ok(&["apply", if applies % 2 == 0 { other } else { policy }]);
        applies += 1;
    }
    let (pass, pass6, drop) = (
        kept_pass.finish(),
        kept_pass_v6.finish(),
        kept_drop.finish(),
    );
    assert!(
        applies >= 4,
        "the probes must span several applies, got {applies}"
    );
    assert!(
        pass.missing.is_empty(),
        "{applies} applies lost datagrams to 203.0.113.5 (pass in both policies): {:?}",
        pass.loss_runs()
    );
    assert!(
        pass6.missing.is_empty(),
        "{applies} applies lost datagrams to 2001:db8:1::5 (pass in both policies): {:?}",
        pass6.loss_runs()
    );
    assert_eq!(
        drop.received, 0,
        "{applies} applies let datagrams through to 203.0.113.9 (dropped in both policies)"
    );

    let status: serde_json::Value =
        serde_json::from_str(&edge.ok(&["status", "--json"])).expect("status json");
    assert_eq!(
        status["interfaces"][0]["name"],
        topo.edge_ingress.as_str(),
        "{status}"
    );
    assert_eq!(status["interfaces"][0]["healthy"], true, "{status}");

    edge.ok(&["detach", &topo.edge_ingress]);
    assert_reachability(&topo, |_, _| true, "after detach everything answers again");
}
