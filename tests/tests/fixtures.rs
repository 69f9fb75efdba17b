//! The real compiled XDP program, run through BPF_PROG_TEST_RUN on a fixture table: packet in,
//! verdict and counter expected. Each frame runs once (repeat = 1) and must move exactly the
//! expected counters (a rule's and its action's total, or one of no-match, non-IP, malformed)
//! by one packet and its full length in bytes, and nothing else.
//!
//! Frames shorter than an Ethernet header are not in the table: BPF_PROG_TEST_RUN refuses input
//! under 14 bytes (EINVAL), and drivers do not hand XDP runts; `ethernet_runts_never_reach_the_program`
//! pins that down.

mod common;

use std::net::{Ipv4Addr, Ipv6Addr};

use common::{Effect, Harness, XDP_DROP, XDP_PASS};
use edgeblock_tests::packet::{ETH_P_8021AD, ETH_P_8021Q, Ext, Frame, L4};

const POLICY: &str = r#"
malformed = "drop"

[[rule]]
name = "block-origin"
action = "drop"
prefixes = ["203.0.113.0/24", "2001:db8:1::/64"]

[[rule]]
name = "origin-exception"
action = "pass"
prefixes = ["203.0.113.5", "2001:db8:1::5"]

[[rule]]
name = "block-source"
direction = "src"
action = "drop"
prefixes = ["198.51.100.200/32", "2001:db8:bad::/48"]

[[rule]]
name = "trusted-source"
direction = "src"
action = "pass"
prefixes = ["198.51.100.7", "2001:db8:7::7"]
"#;

/// Which counter a frame must move.
#[derive(Clone, Copy, Debug)]
enum Count {
    /// A rule decided: its counter and its action's total.
    Rule(&'static str),
    NoMatch,
    NonIp,
    /// Counted as malformed; dropped or passed per the policy's `malformed`.
    Malformed,
}

struct Fixture {
    name: &'static str,
    frame: Vec<u8>,
    verdict: u32,
    count: Count,
}

fn v4(s: &str) -> Ipv4Addr {
    s.parse().expect("test address")
}

fn v6(s: &str) -> Ipv6Addr {
    s.parse().expect("test address")
}

fn client4() -> Ipv4Addr {
    v4("192.0.2.2")
}

fn client6() -> Ipv6Addr {
    v6("2001:db8:c::2")
}

fn f(name: &'static str, frame: Frame, verdict: u32, count: Count) -> Fixture {
    Fixture {
        name,
        frame: frame.build(),
        verdict,
        count,
    }
}

fn fixtures() -> Vec<Fixture> {
    use Count::*;
    let hit4 = || Frame::v4(client4(), v4("203.0.113.9"));
    let miss4 = || Frame::v4(client4(), v4("198.51.100.10"));
    let hit6 = || Frame::v6(client6(), v6("2001:db8:1::9"));
    let miss6 = || Frame::v6(client6(), v6("2001:db8:2::1"));
    let r = Rule;
    let mut out = vec![
        // Address matching.
        f("v4 hit", hit4(), XDP_DROP, r("block-origin")),
        f("v4 miss", miss4(), XDP_PASS, NoMatch),
        f("v6 hit", hit6(), XDP_DROP, r("block-origin")),
        f("v6 miss", miss6(), XDP_PASS, NoMatch),
        f(
            "v4 tcp syn hit",
            hit4().l4(L4::TcpSyn {
                sport: 40000,
                dport: 443,
            }),
            XDP_DROP,
            r("block-origin"),
        ),
        f(
            "v4 longest-prefix exception",
            Frame::v4(client4(), v4("203.0.113.5")),
            XDP_PASS,
            r("origin-exception"),
        ),
        f(
            "v6 longest-prefix exception",
            Frame::v6(client6(), v6("2001:db8:1::5")),
            XDP_PASS,
            r("origin-exception"),
        ),
        f(
            "v4 neighbour of the exception",
            Frame::v4(client4(), v4("203.0.113.4")),
            XDP_DROP,
            r("block-origin"),
        ),
        f(
            "v4 src block",
            Frame::v4(v4("198.51.100.200"), v4("198.51.100.10")),
            XDP_DROP,
            r("block-source"),
        ),
        f(
            "v6 src block",
            Frame::v6(v6("2001:db8:bad::1"), v6("2001:db8:2::1")),
            XDP_DROP,
            r("block-source"),
        ),
        // Precedence between directions (docs/policy.md).
        f(
            "src block beats dst pass exception",
            Frame::v4(v4("198.51.100.200"), v4("203.0.113.5")),
            XDP_DROP,
            r("block-source"),
        ),
        f(
            "dst block beats src pass",
            Frame::v4(v4("198.51.100.7"), v4("203.0.113.9")),
            XDP_DROP,
            r("block-origin"),
        ),
        f(
            "dst block counted before src block",
            Frame::v4(v4("198.51.100.200"), v4("203.0.113.9")),
            XDP_DROP,
            r("block-origin"),
        ),
        f(
            "dst pass counted before src pass",
            Frame::v4(v4("198.51.100.7"), v4("203.0.113.5")),
            XDP_PASS,
            r("origin-exception"),
        ),
        f(
            "src pass alone",
            Frame::v4(v4("198.51.100.7"), v4("198.51.100.10")),
            XDP_PASS,
            r("trusted-source"),
        ),
        f(
            "v6 src block beats dst pass exception",
            Frame::v6(v6("2001:db8:bad::1"), v6("2001:db8:1::5")),
            XDP_DROP,
            r("block-source"),
        ),
        f(
            "v6 dst block beats src pass",
            Frame::v6(v6("2001:db8:7::7"), v6("2001:db8:1::9")),
            XDP_DROP,
            r("block-origin"),
        ),
        // VLANs.
        f(
            "802.1Q v4 hit",
            hit4().vlan(ETH_P_8021Q, 100),
            XDP_DROP,
            r("block-origin"),
        ),
        f(
            "802.1Q v4 miss",
            miss4().vlan(ETH_P_8021Q, 100),
            XDP_PASS,
            NoMatch,
        ),
        f(
            "QinQ 802.1ad+802.1Q v4 hit",
            hit4().vlan(ETH_P_8021AD, 10).vlan(ETH_P_8021Q, 20),
            XDP_DROP,
            r("block-origin"),
        ),
        f(
            "QinQ 802.1Q+802.1ad v4 hit",
            hit4().vlan(ETH_P_8021Q, 10).vlan(ETH_P_8021AD, 20),
            XDP_DROP,
            r("block-origin"),
        ),
        f(
            "QinQ 802.1Q+802.1Q v6 hit",
            hit6().vlan(ETH_P_8021Q, 10).vlan(ETH_P_8021Q, 20),
            XDP_DROP,
            r("block-origin"),
        ),
        f(
            "802.1ad v6 exception",
            Frame::v6(client6(), v6("2001:db8:1::5")).vlan(ETH_P_8021AD, 7),
            XDP_PASS,
            r("origin-exception"),
        ),
        f(
            "three VLAN tags",
            hit4()
                .vlan(ETH_P_8021AD, 1)
                .vlan(ETH_P_8021Q, 2)
                .vlan(ETH_P_8021Q, 3),
            XDP_DROP,
            Malformed,
        ),
        f(
            "three VLAN tags to an allowed origin",
            miss4()
                .vlan(ETH_P_8021AD, 1)
                .vlan(ETH_P_8021Q, 2)
                .vlan(ETH_P_8021Q, 3),
            XDP_DROP,
            Malformed,
        ),
        // IPv4 options and header lengths.
        f(
            "v4 options (4 bytes) hit",
            hit4().with(|f| f.v4_mut().options = vec![1, 1, 1, 0]),
            XDP_DROP,
            r("block-origin"),
        ),
        f(
            "v4 options (40 bytes, ihl 15) hit",
            hit4().with(|f| f.v4_mut().options = vec![1; 40]),
            XDP_DROP,
            r("block-origin"),
        ),
        f(
            "v4 options miss",
            miss4().with(|f| f.v4_mut().options = vec![1; 12]),
            XDP_PASS,
            NoMatch,
        ),
        f(
            "v4 ihl 4",
            hit4().with(|f| f.v4_mut().ihl = Some(4)),
            XDP_DROP,
            Malformed,
        ),
        f(
            "v4 ihl 0 to an allowed origin",
            miss4().with(|f| f.v4_mut().ihl = Some(0)),
            XDP_DROP,
            Malformed,
        ),
        f(
            "v4 ihl 15 past the end",
            miss4()
                .l4(L4::Raw {
                    proto: 17,
                    bytes: vec![],
                })
                .with(|f| f.v4_mut().ihl = Some(15)),
            XDP_DROP,
            Malformed,
        ),
        f(
            "v4 total length below header",
            miss4().with(|f| f.v4_mut().tot_len = Some(19)),
            XDP_DROP,
            Malformed,
        ),
        f(
            "v4 total length past the frame",
            miss4().with(|f| f.v4_mut().tot_len = Some(1500)),
            XDP_DROP,
            Malformed,
        ),
        f(
            "v4 with Ethernet padding",
            miss4()
                .l4(L4::Raw {
                    proto: 17,
                    bytes: vec![],
                })
                .pad_to(60),
            XDP_PASS,
            NoMatch,
        ),
        // IPv4 fragments.
        f(
            "v4 first fragment hit",
            hit4().with(|f| f.v4_mut().more_fragments = true),
            XDP_DROP,
            r("block-origin"),
        ),
        f(
            "v4 middle fragment hit",
            hit4()
                .l4(L4::Raw {
                    proto: 17,
                    bytes: vec![7; 64],
                })
                .with(|f| {
                    f.v4_mut().frag_offset = 185;
                    f.v4_mut().more_fragments = true;
                }),
            XDP_DROP,
            r("block-origin"),
        ),
        f(
            "v4 last fragment hit",
            hit4()
                .l4(L4::Raw {
                    proto: 17,
                    bytes: vec![7; 64],
                })
                .with(|f| f.v4_mut().frag_offset = 370),
            XDP_DROP,
            r("block-origin"),
        ),
        f(
            "v4 non-first fragment miss",
            miss4()
                .l4(L4::Raw {
                    proto: 17,
                    bytes: vec![7; 64],
                })
                .with(|f| f.v4_mut().frag_offset = 185),
            XDP_PASS,
            NoMatch,
        ),
        // IPv6 extension headers.
        f(
            "v6 hop-by-hop hit",
            hit6().ext(Ext::HopByHop { units: 0 }),
            XDP_DROP,
            r("block-origin"),
        ),
        f(
            "v6 routing hit",
            hit6().ext(Ext::Routing { units: 2 }),
            XDP_DROP,
            r("block-origin"),
        ),
        f(
            "v6 destination options hit",
            hit6().ext(Ext::DestOpts { units: 1 }),
            XDP_DROP,
            r("block-origin"),
        ),
        f(
            "v6 first fragment hit",
            hit6().ext(Ext::Fragment {
                offset: 0,
                more: true,
            }),
            XDP_DROP,
            r("block-origin"),
        ),
        f(
            "v6 AH hit",
            hit6().ext(Ext::Ah { payload_len: 4 }),
            XDP_DROP,
            r("block-origin"),
        ),
        f(
            "v6 chain of six hit",
            hit6()
                .ext(Ext::HopByHop { units: 1 })
                .ext(Ext::DestOpts { units: 0 })
                .ext(Ext::Routing { units: 0 })
                .ext(Ext::Fragment {
                    offset: 0,
                    more: true,
                })
                .ext(Ext::Ah { payload_len: 1 })
                .ext(Ext::DestOpts { units: 3 }),
            XDP_DROP,
            r("block-origin"),
        ),
        f(
            "v6 chain of six miss",
            miss6()
                .ext(Ext::HopByHop { units: 0 })
                .ext(Ext::DestOpts { units: 0 })
                .ext(Ext::Routing { units: 1 })
                .ext(Ext::Fragment {
                    offset: 0,
                    more: true,
                })
                .ext(Ext::Ah { payload_len: 1 })
                .ext(Ext::DestOpts { units: 0 }),
            XDP_PASS,
            NoMatch,
        ),
        f(
            "v6 chain of eight (the limit) miss",
            (0..8).fold(miss6(), |f, _| f.ext(Ext::DestOpts { units: 0 })),
            XDP_PASS,
            NoMatch,
        ),
        f(
            "v6 chain of nine (over the limit)",
            (0..9).fold(miss6(), |f, _| f.ext(Ext::DestOpts { units: 0 })),
            XDP_DROP,
            Malformed,
        ),
        f(
            "v6 non-first fragment hit",
            hit6()
                .l4(L4::Raw {
                    proto: 17,
                    bytes: vec![9; 64],
                })
                .ext(Ext::Fragment {
                    offset: 100,
                    more: true,
                }),
            XDP_DROP,
            r("block-origin"),
        ),
        f(
            "v6 non-first fragment miss",
            miss6()
                .l4(L4::Raw {
                    proto: 17,
                    bytes: vec![9; 64],
                })
                .ext(Ext::Fragment {
                    offset: 100,
                    more: false,
                }),
            XDP_PASS,
            NoMatch,
        ),
        f(
            "v6 icmpv6 miss",
            miss6().l4(L4::Raw {
                proto: 58,
                bytes: vec![128, 0, 0, 0, 0, 1, 0, 1],
            }),
            XDP_PASS,
            NoMatch,
        ),
        // Truncation at every layer.
        f(
            "vlan tag cut short",
            miss4().vlan(ETH_P_8021Q, 5).truncate(16),
            XDP_DROP,
            Malformed,
        ),
        f(
            "v4 header cut short",
            miss4().truncate(14 + 19),
            XDP_DROP,
            Malformed,
        ),
        f(
            "v4 options cut short",
            miss4()
                .with(|f| f.v4_mut().options = vec![1; 8])
                .truncate(14 + 24),
            XDP_DROP,
            Malformed,
        ),
        f(
            "v4 ethertype, no header",
            miss4().truncate(14),
            XDP_DROP,
            Malformed,
        ),
        f(
            "v6 header cut short",
            miss6().truncate(14 + 39),
            XDP_DROP,
            Malformed,
        ),
        f(
            "v6 payload length past the frame",
            miss6().with(|f| f.v6_mut().payload_len = Some(1000)),
            XDP_DROP,
            Malformed,
        ),
        f(
            "v6 extension header cut short",
            miss6()
                .l4(L4::Raw {
                    proto: 59,
                    bytes: vec![],
                })
                .ext(Ext::HopByHop { units: 4 })
                .truncate(14 + 40 + 16)
                .with(|f| f.v6_mut().payload_len = Some(16)),
            XDP_DROP,
            Malformed,
        ),
        f(
            "v6 fragment header cut short",
            miss6()
                .l4(L4::Raw {
                    proto: 59,
                    bytes: vec![],
                })
                .ext(Ext::Fragment {
                    offset: 0,
                    more: true,
                })
                .truncate(14 + 40 + 4)
                .with(|f| f.v6_mut().payload_len = Some(4)),
            XDP_DROP,
            Malformed,
        ),
        // Not IP.
        f(
            "ARP",
            Frame::arp(client4(), v4("203.0.113.9")),
            XDP_PASS,
            NonIp,
        ),
        f(
            "ARP behind 802.1Q",
            Frame::arp(client4(), v4("203.0.113.9")).vlan(ETH_P_8021Q, 3),
            XDP_PASS,
            NonIp,
        ),
        // Jumbo frames: the headers are in the first buffer, the bytes counter sees them all.
        f(
            "v4 jumbo hit",
            hit4().l4(L4::Udp {
                sport: 1,
                dport: 2,
                payload: vec![0x5a; 8958],
            }),
            XDP_DROP,
            r("block-origin"),
        ),
        f(
            "v6 jumbo miss",
            miss6().l4(L4::Udp {
                sport: 1,
                dport: 2,
                payload: vec![0x5a; 8938],
            }),
            XDP_PASS,
            NoMatch,
        ),
    ];
    // A v4 EtherType over a version-6 header: patch the version nibble.
    let mut bad_version = miss4().build();
    bad_version[14] = 0x65;
    out.push(Fixture {
        name: "v4 EtherType, version 6",
        frame: bad_version,
        verdict: XDP_DROP,
        count: Count::Malformed,
    });
    out
}

/// Run a fixture and check its verdict and that exactly the expected counters moved, each by
/// one packet and the frame's length.
fn check(h: &Harness, fx: &Fixture, malformed_drops: bool) -> Result<(), String> {
    let action = if fx.verdict == XDP_DROP {
        "drop"
    } else {
        "pass"
    };
    let rule;
    let counters: Vec<&str> = match fx.count {
        Count::Rule(name) => {
            rule = format!("rule {name}");
            vec![&rule, action]
        }
        Count::NoMatch => vec!["no_match"],
        Count::NonIp => vec!["non_ip"],
        Count::Malformed if malformed_drops => vec!["malformed", "malformed_dropped"],
        Count::Malformed => vec!["malformed"],
    };
    let want = Effect::new(fx.verdict, &counters, fx.frame.len());
    let got = h.run(&fx.frame);
    if got == want {
        Ok(())
    } else {
        Err(format!("{}: got {got}, expected {want}", fx.name))
    }
}

#[test]
fn fixture_table() {
    let mut h = Harness::new();
    h.apply(POLICY);
    let failures: Vec<String> = fixtures()
        .iter()
        .filter_map(|fx| check(&h, fx, true).err())
        .collect();
    assert!(
        failures.is_empty(),
        "{} fixture(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// A multi-buffer frame whose first buffer holds little more than the headers (the program
/// measures short frames by their first buffer, without a helper call): judged and counted
/// whole all the same, IP or not, and a datagram longer than all its buffers is still
/// malformed.
#[test]
fn frames_with_a_short_first_buffer_are_judged_and_counted_whole() {
    let mut h = Harness::new();
    h.apply(POLICY);
    let jumbo: Vec<Fixture> = fixtures()
        .into_iter()
        .filter(|f| f.name.contains("jumbo"))
        .collect();
    assert_eq!(jumbo.len(), 2);
    let mut cut_short = jumbo[0].frame.clone();
    cut_short.truncate(cut_short.len() - 100);
    for (name, frame, verdict, counters) in [
        (
            jumbo[0].name,
            jumbo[0].frame.clone(),
            XDP_DROP,
            vec!["rule block-origin", "drop"],
        ),
        (
            jumbo[1].name,
            jumbo[1].frame.clone(),
            XDP_PASS,
            vec!["no_match"],
        ),
        (
            "v4 jumbo cut short",
            cut_short,
            XDP_DROP,
            vec!["malformed", "malformed_dropped"],
        ),
        (
            "jumbo ARP",
            Frame::arp(client4(), v4("203.0.113.9"))
                .pad_to(9000)
                .build(),
            XDP_PASS,
            vec!["non_ip"],
        ),
    ] {
        let want = Effect::new(verdict, &counters, frame.len());
        for first in [128, 200, 1500] {
            let (got, _) = h.run_split_with_output(&frame, Some(first));
            assert_eq!(got, want, "{name}, first buffer {first} bytes");
        }
    }
}

#[test]
fn malformed_frames_pass_when_the_policy_says_so() {
    let mut h = Harness::new();
    h.apply(&POLICY.replace(r#"malformed = "drop""#, r#"malformed = "pass""#));
    let mut failures = Vec::new();
    for mut fx in fixtures()
        .into_iter()
        .filter(|f| matches!(f.count, Count::Malformed))
    {
        fx.verdict = XDP_PASS;
        if let Err(e) = check(&h, &fx, false) {
            failures.push(e);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn empty_policy_passes_everything() {
    let mut h = Harness::new();
    h.apply("");
    for fx in fixtures()
        .into_iter()
        .filter(|f| matches!(f.count, Count::Rule(_)))
    {
        let verdict = h.verdict(&fx.frame);
        assert_eq!(
            verdict, XDP_PASS,
            "{}: nothing is blocked without rules",
            fx.name
        );
    }
}

#[test]
fn ethernet_runts_never_reach_the_program() {
    use aya::programs::{TestRun as _, TestRunOptions};
    let mut h = Harness::new();
    h.apply(POLICY);
    let frame = [0u8; 13];
    let opts = TestRunOptions {
        data_in: Some(&frame),
        repeat: 1,
        ..TestRunOptions::default()
    };
    let err = h
        .filter
        .program()
        .test_run(opts)
        .expect_err("a 13-byte frame must be refused");
    let source = std::error::Error::source(&err)
        .map(ToString::to_string)
        .unwrap_or_default();
    assert!(source.contains("Invalid argument"), "{err}: {source}");
}

/// Shadow rules (docs/policy.md, "Shadow mode") never change a verdict: each frame here gets
/// the verdict and counters the enforced rules alone give it, plus, when a shadow rule would
/// have decided it, that rule's counter and the shadow total of its action.
#[test]
fn shadow_rules_count_without_deciding() {
    const SHADOW: &str = r#"
[[rule]]
name = "enforced-wide"
action = "drop"
prefixes = ["203.0.0.0/16", "2001:db8::/32"]

[[rule]]
name = "shadow-inside"
action = "drop"
mode = "shadow"
prefixes = ["203.0.113.0/24", "2001:db8:1::/48"]

[[rule]]
name = "shadow-alone"
action = "reject"
mode = "shadow"
prefixes = ["198.51.100.0/24", "2001:db9::/32"]

[[rule]]
name = "enforced-inside-shadow"
action = "drop"
prefixes = ["198.51.100.128/25", "2001:db9:1::/48"]

[[rule]]
name = "shadow-exception"
action = "pass"
mode = "shadow"
prefixes = ["203.0.114.0/24"]

[[rule]]
name = "shadow-source"
direction = "src"
action = "drop"
mode = "shadow"
prefixes = ["192.0.2.0/24"]
"#;
    let mut h = Harness::new();
    h.apply(SHADOW);
    let client = || v4("192.0.2.2");
    let other = || v4("192.0.3.2");
    // (name, frame, verdict, counters moved)
    let cases: Vec<(&str, Frame, u32, Vec<&str>)> = vec![
        (
            "shadow alone passes and counts",
            Frame::v4(other(), v4("198.51.100.9")),
            XDP_PASS,
            vec!["no_match", "rule shadow-alone", "shadow reject"],
        ),
        (
            "shadow alone, v6",
            Frame::v6(v6("2001:db8:c::2"), v6("2001:db9::9")),
            XDP_PASS,
            vec!["no_match", "rule shadow-alone", "shadow reject"],
        ),
        (
            "shadow inside enforced: dropped by the enforced rule, counted by both",
            Frame::v4(other(), v4("203.0.113.9")),
            XDP_DROP,
            vec![
                "rule enforced-wide",
                "drop",
                "rule shadow-inside",
                "shadow drop",
            ],
        ),
        (
            "shadow inside enforced, v6",
            Frame::v6(v6("2001:db8:c::2"), v6("2001:db8:1::9")),
            XDP_DROP,
            vec![
                "rule enforced-wide",
                "drop",
                "rule shadow-inside",
                "shadow drop",
            ],
        ),
        (
            "enforced outside the shadow prefix: no shadow hit",
            Frame::v4(other(), v4("203.0.1.1")),
            XDP_DROP,
            vec!["rule enforced-wide", "drop"],
        ),
        (
            "enforced inside shadow: the longer enforced prefix decides, no shadow hit",
            Frame::v4(other(), v4("198.51.100.200")),
            XDP_DROP,
            vec!["rule enforced-inside-shadow", "drop"],
        ),
        (
            "enforced inside shadow, v6",
            Frame::v6(v6("2001:db8:c::2"), v6("2001:db9:1::1")),
            XDP_DROP,
            vec!["rule enforced-inside-shadow", "drop"],
        ),
        (
            "a shadow pass inside an enforced drop does not weaken it",
            Frame::v4(other(), v4("203.0.114.1")),
            XDP_DROP,
            vec![
                "rule enforced-wide",
                "drop",
                "rule shadow-exception",
                "shadow pass",
            ],
        ),
        (
            "a shadow source rule never adds a drop",
            Frame::v4(client(), v4("198.18.0.1")),
            XDP_PASS,
            vec!["no_match", "rule shadow-source", "shadow drop"],
        ),
        (
            "destination first for shadow hits too",
            Frame::v4(client(), v4("198.51.100.9")),
            XDP_PASS,
            vec!["no_match", "rule shadow-alone", "shadow reject"],
        ),
        (
            "an enforced destination block outranks a shadow source block",
            Frame::v4(client(), v4("203.0.1.1")),
            XDP_DROP,
            vec!["rule enforced-wide", "drop"],
        ),
        (
            "no rule at all",
            Frame::v4(other(), v4("198.18.0.1")),
            XDP_PASS,
            vec!["no_match"],
        ),
    ];
    let failures: Vec<String> = cases
        .into_iter()
        .filter_map(|(name, frame, verdict, counters)| {
            let frame = frame.build();
            let want = Effect::new(verdict, &counters, frame.len());
            let got = h.run(&frame);
            (got != want).then(|| format!("{name}: got {got}, expected {want}"))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} shadow fixture(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// A top-level `mode = "shadow"` puts every rule in shadow mode: nothing is blocked, and
/// what would have been is counted.
#[test]
fn a_shadow_policy_blocks_nothing() {
    let mut h = Harness::new();
    h.apply(&format!("mode = \"shadow\"\n{POLICY}"));
    let frame = Frame::v4(client4(), v4("203.0.113.9")).build();
    let want = Effect::new(
        XDP_PASS,
        &["no_match", "rule block-origin", "shadow drop"],
        frame.len(),
    );
    let got = h.run(&frame);
    assert_eq!(got, want, "got {got}, expected {want}");
}
