//! The real compiled XDP program, run through BPF_PROG_TEST_RUN on a fixture table: packet in,
//! verdict and counter expected. Each frame runs once (repeat = 1) and must move exactly one
//! counter by one packet and its full length in bytes.

use std::net::{Ipv4Addr, Ipv6Addr};

use aya::programs::{TestRun as _, TestRunOptions};
use edgeblock::{
    apply::apply,
    compile::compile,
    loader::Filter,
    maps::{GlobalStats, decode_name},
    pins::Pins,
    policy,
};
use edgeblock_tests::{
    Bpffs,
    packet::{ETH_P_8021AD, ETH_P_8021Q, Ext, Frame, L4},
    require_root,
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

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

struct Harness {
    _bpffs: Bpffs,
    filter: Filter,
    dir: std::path::PathBuf,
}

impl Harness {
    fn new(policy_text: &str) -> Self {
        require_root();
        let bpffs = Bpffs::new();
        let pins = Pins::new(bpffs.pin_root());
        let filter = Filter::load_or_open(&pins).expect("load the XDP program and maps");
        let dir = bpffs.dir().join("policy");
        std::fs::create_dir_all(&dir).expect("policy dir");
        let mut h = Self {
            _bpffs: bpffs,
            filter,
            dir,
        };
        h.apply(policy_text);
        h
    }

    fn apply(&mut self, text: &str) {
        let path = self.dir.join("policy.toml");
        std::fs::write(&path, text).expect("write policy");
        let policy = policy::load(&path, jiff::Timestamp::now())
            .unwrap_or_else(|e| panic!("fixture policy must be valid:\n{e}"));
        apply(&mut self.filter.maps, &compile(&policy), 1).expect("apply fixture policy");
    }

    fn rule_counters(&self) -> Vec<(String, u64, u64)> {
        let maps = &self.filter.maps;
        maps.rule_metas()
            .expect("rule metadata")
            .into_iter()
            .map(|(id, meta)| {
                let c = maps.rule_counter(id).expect("rule counter");
                (decode_name(&meta.name), c.packets, c.bytes)
            })
            .collect()
    }

    fn run(&self, frame: &[u8]) -> u32 {
        let opts = TestRunOptions {
            data_in: Some(frame),
            repeat: 1,
            ..TestRunOptions::default()
        };
        self.filter
            .program()
            .test_run(opts)
            .unwrap_or_else(|e| {
                panic!(
                    "BPF_PROG_TEST_RUN failed for a {}-byte frame: {e}",
                    frame.len()
                )
            })
            .return_value
    }

    /// Run a fixture and check its verdict and that exactly the expected counters moved.
    fn check(&self, fx: &Fixture, malformed_drops: bool) -> Result<(), String> {
        let g0 = self.filter.maps.global_stats().expect("stats");
        let r0 = self.rule_counters();
        let verdict = self.run(&fx.frame);
        let g1 = self.filter.maps.global_stats().expect("stats");
        let r1 = self.rule_counters();
        let len = fx.frame.len() as u64;
        let mut problems = Vec::new();
        if verdict != fx.verdict {
            problems.push(format!("verdict {verdict}, expected {}", fx.verdict));
        }
        let mut expected = g0;
        let bump = |c: &mut edgeblock::maps::CounterJson| {
            c.packets += 1;
            c.bytes += len;
        };
        let mut expected_rule = None;
        match fx.count {
            Count::Rule(name) => {
                if verdict == XDP_DROP {
                    bump(&mut expected.drop)
                } else {
                    bump(&mut expected.pass)
                }
                expected_rule = Some(name);
            }
            Count::NoMatch => bump(&mut expected.no_match),
            Count::NonIp => bump(&mut expected.non_ip),
            Count::Malformed => {
                bump(&mut expected.malformed);
                if malformed_drops {
                    bump(&mut expected.malformed_dropped);
                }
            }
        }
        if g1 != expected {
            problems.push(format!(
                "global counters {}, expected {}",
                diff(&g0, &g1),
                diff(&g0, &expected)
            ));
        }
        for ((name, p0, b0), (_, p1, b1)) in r0.iter().zip(&r1) {
            let want = if Some(name.as_str()) == expected_rule {
                (1, len)
            } else {
                (0, 0)
            };
            if (p1 - p0, b1 - b0) != want {
                problems.push(format!(
                    "rule {name} moved by {:?}, expected {want:?}",
                    (p1 - p0, b1 - b0)
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(format!("{}: {}", fx.name, problems.join("; ")))
        }
    }
}

fn diff(a: &GlobalStats, b: &GlobalStats) -> String {
    let fields = [
        ("pass", a.pass, b.pass),
        ("drop", a.drop, b.drop),
        ("no_match", a.no_match, b.no_match),
        ("non_ip", a.non_ip, b.non_ip),
        ("malformed", a.malformed, b.malformed),
        (
            "malformed_dropped",
            a.malformed_dropped,
            b.malformed_dropped,
        ),
        ("redirect", a.redirect, b.redirect),
        ("reject", a.reject, b.reject),
    ];
    let moved: Vec<String> = fields
        .iter()
        .filter(|(_, x, y)| x != y)
        .map(|(n, x, y)| format!("{n}+{}/{}B", y.packets - x.packets, y.bytes - x.bytes))
        .collect();
    if moved.is_empty() {
        "unchanged".into()
    } else {
        moved.join(",")
    }
}

#[test]
fn fixture_table() {
    let h = Harness::new(POLICY);
    let failures: Vec<String> = fixtures()
        .iter()
        .filter_map(|fx| h.check(fx, true).err())
        .collect();
    assert!(
        failures.is_empty(),
        "{} fixture(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn malformed_frames_pass_when_the_policy_says_so() {
    let mut h = Harness::new(POLICY);
    h.apply(&POLICY.replace(r#"malformed = "drop""#, r#"malformed = "pass""#));
    let mut failures = Vec::new();
    for mut fx in fixtures()
        .into_iter()
        .filter(|f| matches!(f.count, Count::Malformed))
    {
        fx.verdict = XDP_PASS;
        if let Err(e) = h.check(&fx, false) {
            failures.push(e);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn empty_policy_passes_everything() {
    let h = Harness::new("");
    for fx in fixtures()
        .into_iter()
        .filter(|f| matches!(f.count, Count::Rule(_)))
    {
        let verdict = h.run(&fx.frame);
        assert_eq!(
            verdict, XDP_PASS,
            "{}: nothing is blocked without rules",
            fx.name
        );
    }
}
