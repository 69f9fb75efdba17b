//! Differential testing: the real XDP program, run through BPF_PROG_TEST_RUN, against the
//! reference matcher (`edgeblock::reference`) on random policies and random frames.
//!
//! For every frame both must agree on the XDP verdict, on which counters moved, by how many
//! packets and bytes (a rule counter, by rule name, plus its action's total, plus
//! reject-unanswered or redirect-failed; or no-match, or non-IP, or malformed, plus
//! malformed-dropped when the policy drops malformed frames), and on the bytes that leave: the
//! `reject` answer (TCP reset, ICMP or ICMPv6 unreachable) or the `redirect`ed frame, byte for
//! byte, and a passed frame unchanged. Random policies hold all four actions; redirect rules
//! use one notice target, loaded with the loopback device as `tests/tests/actions.rs` does,
//! and the `reject` rate limit is set out of reach (the reference does not model it).
//!
//! Applying a policy costs thousands of syscalls, so the run is N policies x M frames: the
//! program is loaded once, each random policy is applied with `edgeblock::apply::apply`, and
//! then a proptest runner throws M random frames at it. A disagreement is shrunk by proptest,
//! first the frame (policy fixed), then the policy (that frame fixed), and reported with the
//! frame in hex, its grammar, the policy TOML and the seed.
//!
//! Knobs (environment):
//! - `EDGEBLOCK_DIFF_POLICIES` (default 100) and `EDGEBLOCK_DIFF_FRAMES` (frames per policy,
//!   default 200): the CI-sized run is 20,000 frames in a few seconds. Long runs are meant for
//!   `cargo xtask fuzz` (planned), which sets the same variables.
//! - `EDGEBLOCK_DIFF_SEED` (decimal or 0x-hex u64): a fixed default keeps CI deterministic; any
//!   other value explores elsewhere. The seed is printed so that a failure can be replayed.
//!
//! A failure is also written to `tests/fixtures/differential-failures/seed-<seed>-policy-<n>.txt`;
//! such a file is a finished regression case, to be turned into an entry of the fixture table
//! in `tests/tests/fixtures.rs` (see [`failure_dir`]).
//!
//! Policies are TOML text loaded through `edgeblock::policy::parse`, their prefixes drawn from
//! small pools of anchor addresses and prefix lengths, plus rules carved out of other rules
//! (same direction, opposite action, longer prefixes), so that overlapping prefixes, pass
//! exceptions inside drops, drops inside passes and cross-direction conflicts are common.
//! Frame addresses are drawn from the anchors and from the policy's own prefixes (inside one,
//! a few bits away from one, or anywhere), so that hits, exceptions and misses all happen
//! often. The run prints how often each kind of outcome occurred and, at CI size or more,
//! fails if a kind the grammars are meant to reach never happened.
//!
//! Every generated frame is below 1500 bytes. BPF_PROG_TEST_RUN splits frames larger than
//! about 3.5 KB into a linear part and fragments; the program's bounds checks only see the
//! linear part while its length checks see the whole frame, which the reference (one flat
//! buffer) does not model. Small frames keep the linear part the whole frame.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::Instant;

use common::{Effect, Harness, parse_policy};
use edgeblock::{
    compile::{Compiled, action_name, compile},
    policy::Direction,
    reference::{self, Outcome, Parsed, Sent},
};
use edgeblock_tests::{
    packet::{ETH_P_8021AD, ETH_P_8021Q, Ext, Frame, L3, L4, V4, V6},
    require_root,
};
use filter_common::NoticeTarget;

mod common;
use proptest::{
    bool::weighted,
    collection::vec,
    option,
    prelude::*,
    sample::{Index, select},
    strategy::ValueTree,
    test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner},
};

const DEFAULT_POLICIES: u64 = 100;
const DEFAULT_FRAMES: u64 = 200;
/// Fixed so that CI explores the same cases every run.
const DEFAULT_SEED: u64 = 0xeb_d1ff_2026;
/// Upper bound on a generated frame: far below the ~3.5 KB where BPF_PROG_TEST_RUN starts
/// splitting a frame into fragments (see the module comment).
const MAX_FRAME: usize = 1500;

// ---------------------------------------------------------------------------------------------
// The anchors that policy prefixes are cut from and frame addresses are drawn around.

const V4_ANCHORS: [Ipv4Addr; 9] = [
    Ipv4Addr::new(203, 0, 113, 5),
    Ipv4Addr::new(203, 0, 113, 77),
    Ipv4Addr::new(203, 0, 113, 200),
    Ipv4Addr::new(198, 51, 100, 7),
    Ipv4Addr::new(198, 51, 100, 64),
    Ipv4Addr::new(198, 51, 100, 200),
    Ipv4Addr::new(10, 20, 30, 40),
    Ipv4Addr::new(10, 20, 99, 1),
    Ipv4Addr::new(192, 0, 2, 2),
];

const V6_ANCHORS: [Ipv6Addr; 8] = [
    Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 5),
    Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0xff),
    Ipv6Addr::new(0x2001, 0xdb8, 1, 2, 0, 0, 0, 1),
    Ipv6Addr::new(0x2001, 0xdb8, 0xbad, 0, 0, 0, 0, 1),
    Ipv6Addr::new(0x2001, 0xdb8, 0xbad, 1, 0, 0, 0, 7),
    Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0, 0, 0, 0, 2),
    Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1),
    // IPv4-mapped: must never match the IPv4 tables.
    Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0xcb00, 0x7105),
];

const V4_LENGTHS: [u8; 10] = [8, 16, 20, 24, 25, 26, 28, 30, 31, 32];
const V6_LENGTHS: [u8; 11] = [16, 32, 48, 56, 64, 96, 112, 120, 126, 127, 128];

/// The `bits` low bits set.
fn low_bits_u32(bits: u32) -> u32 {
    u32::MAX.checked_shr(32 - bits).unwrap_or(0)
}

fn low_bits_u128(bits: u32) -> u128 {
    u128::MAX.checked_shr(128 - bits).unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// Policies.

#[derive(Clone, Copy, Debug)]
enum PrefixSpec {
    V4 { anchor: usize, len: u8 },
    V6 { anchor: usize, len: u8 },
}

impl PrefixSpec {
    /// The network: the anchor truncated to `len`.
    fn net(self) -> (IpAddr, u8) {
        match self {
            Self::V4 { anchor, len } => {
                let net = u32::from(V4_ANCHORS[anchor]) & !low_bits_u32(32 - u32::from(len));
                (IpAddr::V4(net.into()), len)
            }
            Self::V6 { anchor, len } => {
                let net = u128::from(V6_ANCHORS[anchor]) & !low_bits_u128(128 - u32::from(len));
                (IpAddr::V6(net.into()), len)
            }
        }
    }

    /// `extra` units longer (bits for IPv4, nibbles for IPv6), at most full length.
    fn longer(self, extra: u8) -> Self {
        match self {
            Self::V4 { anchor, len } => Self::V4 {
                anchor,
                len: len.saturating_add(extra).min(32),
            },
            Self::V6 { anchor, len } => Self::V6 {
                anchor,
                len: len.saturating_add(extra.saturating_mul(4)).min(128),
            },
        }
    }

    /// The prefix as the policy file spells it, a bare address for a full-length prefix.
    fn render(self) -> String {
        match self.net() {
            (IpAddr::V4(net), 32) => net.to_string(),
            (IpAddr::V6(net), 128) => net.to_string(),
            (net, len) => format!("{net}/{len}"),
        }
    }
}

/// A rule's action. `redirect` is for destinations only (the policy refuses it on sources):
/// a source rule drawn with it becomes a `reject`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ActionSpec {
    Pass,
    Drop,
    Reject,
    /// `https_notice`: `https = "notice"` (redirect HTTPS too) rather than the default reset.
    Redirect {
        https_notice: bool,
    },
}

impl ActionSpec {
    fn for_direction(self, src: bool) -> Self {
        match self {
            Self::Redirect { .. } if src => Self::Reject,
            other => other,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Drop => "drop",
            Self::Reject => "reject",
            Self::Redirect { .. } => "redirect",
        }
    }

    /// The rule's lines after `action`.
    fn extra(self) -> &'static str {
        match self {
            Self::Redirect { https_notice: true } => "\nnotice = \"main\"\nhttps = \"notice\"",
            Self::Redirect {
                https_notice: false,
            } => "\nnotice = \"main\"",
            _ => "",
        }
    }
}

/// Blocking actions: drop half the time, so the drop/pass coverage stays what it was.
fn blocking_action() -> impl Strategy<Value = ActionSpec> {
    prop_oneof![
        4 => Just(ActionSpec::Drop),
        2 => Just(ActionSpec::Reject),
        1 => Just(ActionSpec::Redirect { https_notice: false }),
        1 => Just(ActionSpec::Redirect { https_notice: true }),
    ]
}

#[derive(Clone, Debug)]
struct RuleSpec {
    src: bool,
    action: ActionSpec,
    /// `mode = "shadow"`: it must never change a verdict, only count.
    shadow: bool,
    prefixes: Vec<PrefixSpec>,
}

/// A rule carved out of another: the same direction, the opposite action, and longer
/// prefixes of some of its prefixes. It makes pass exceptions inside drops (and drops inside
/// passes) common in both directions rather than a coincidence of independent rules.
#[derive(Clone, Debug)]
struct CarveSpec {
    /// Which of the policy's other rules to carve from.
    base: Index,
    /// (which of its prefixes, how much longer: bits for IPv4, nibbles for IPv6).
    prefixes: Vec<(Index, u8)>,
    /// The action when carving out of a `pass` rule.
    block: ActionSpec,
    shadow: bool,
}

#[derive(Clone, Debug)]
struct PolicySpec {
    /// `None`: the key is left out (the default, drop).
    malformed: Option<&'static str>,
    rules: Vec<RuleSpec>,
    carves: Vec<CarveSpec>,
}

impl PolicySpec {
    /// A small edit of this policy, taking a new prefix from `fresh`: every other rule loses
    /// its last prefix when it has more than one, and the last rule gains `fresh`'s first
    /// prefix. The rules keep their names (their places), so the rest of their prefixes stay
    /// as they were.
    fn edited(&self, fresh: &PolicySpec) -> PolicySpec {
        let mut edit = self.clone();
        for (i, rule) in edit.rules.iter_mut().enumerate() {
            if rule.prefixes.len() > 1 && i % 2 == 0 {
                rule.prefixes.pop();
            }
        }
        let new = fresh.rules.iter().flat_map(|r| r.prefixes.first()).next();
        if let (Some(&p), Some(rule)) = (new, edit.rules.last_mut()) {
            rule.prefixes.push(p);
        }
        edit
    }

    /// The rules in policy order: the independent ones, then the carved ones.
    fn all_rules(&self) -> Vec<RuleSpec> {
        let carved = self.carves.iter().filter_map(|carve| {
            let base = self.rules.get(carve.base.index(self.rules.len().max(1)))?;
            Some(RuleSpec {
                src: base.src,
                action: if base.action == ActionSpec::Pass {
                    carve.block.for_direction(base.src)
                } else {
                    ActionSpec::Pass
                },
                shadow: carve.shadow,
                prefixes: carve
                    .prefixes
                    .iter()
                    .filter_map(|&(which, extra)| {
                        let prefix = base.prefixes.get(which.index(base.prefixes.len().max(1)))?;
                        Some(prefix.longer(extra))
                    })
                    .collect(),
            })
        });
        self.rules.iter().cloned().chain(carved).collect()
    }

    /// The policy file. A prefix already taken by an earlier rule of the same direction is
    /// left out (the parser refuses such duplicates), and a rule left with no prefix is left
    /// out too, so every spec renders to a valid policy. The same prefix twice within one rule
    /// is kept: that is only a note.
    fn to_toml(&self) -> String {
        let mut out = String::new();
        if let Some(m) = self.malformed {
            writeln!(out, "malformed = \"{m}\"").expect("write to a String");
        }
        // A reject rate limit the run never reaches (the reference does not model it), and
        // the notice target redirect rules use (loaded with the NOTICE device).
        out.push_str(
            "reject_rate = 1000000\nreject_burst = 100000\n\
             [notice.main]\ninterface = \"lo\"\nnext_hop = \"192.0.2.254\"\n",
        );
        let mut taken: BTreeSet<(bool, String)> = BTreeSet::new();
        let mut emitted = 0;
        for rule in &self.all_rules() {
            let prefixes: Vec<String> = rule
                .prefixes
                .iter()
                .map(|p| p.render())
                .filter(|p| !taken.contains(&(rule.src, p.clone())))
                .collect();
            if prefixes.is_empty() {
                continue;
            }
            taken.extend(prefixes.iter().map(|p| (rule.src, p.clone())));
            let direction = if rule.src { "src" } else { "dst" };
            let action = rule.action.for_direction(rule.src);
            let name = action.name();
            let mode = if rule.shadow {
                "\nmode = \"shadow\""
            } else {
                ""
            };
            let quoted: Vec<String> = prefixes.iter().map(|p| format!("\"{p}\"")).collect();
            writeln!(
                out,
                "\n[[rule]]\nname = \"r{emitted}-{direction}-{name}\"\ndirection = \
                 \"{direction}\"\naction = \"{name}\"{}{mode}\nprefixes = [{}]",
                action.extra(),
                quoted.join(", ")
            )
            .expect("write to a String");
            emitted += 1;
        }
        out
    }
}

fn prefix_spec() -> impl Strategy<Value = PrefixSpec> {
    // /0 is rare: one in a policy would swallow most misses.
    let v4_len = prop_oneof![1 => Just(0u8), 40 => select(&V4_LENGTHS[..])];
    let v6_len = prop_oneof![1 => Just(0u8), 40 => select(&V6_LENGTHS[..])];
    prop_oneof![
        (0..V4_ANCHORS.len(), v4_len).prop_map(|(anchor, len)| PrefixSpec::V4 { anchor, len }),
        (0..V6_ANCHORS.len(), v6_len).prop_map(|(anchor, len)| PrefixSpec::V6 { anchor, len }),
    ]
}

fn policy_spec() -> impl Strategy<Value = PolicySpec> {
    let action = prop_oneof![Just(ActionSpec::Pass), blocking_action()];
    // Shadow rules are a minority, so the enforced kinds stay common.
    let rule = (
        weighted(0.35),
        action,
        weighted(0.2),
        vec(prefix_spec(), 1..=4),
    )
        .prop_map(|(src, action, shadow, prefixes)| RuleSpec {
            src,
            action: action.for_direction(src),
            shadow,
            prefixes,
        });
    let carve = (
        any::<Index>(),
        vec((any::<Index>(), 1u8..=16), 1..=3),
        blocking_action(),
        weighted(0.2),
    )
        .prop_map(|(base, prefixes, block, shadow)| CarveSpec {
            base,
            prefixes,
            block,
            shadow,
        });
    (
        prop_oneof![Just(None), Just(Some("drop")), Just(Some("pass"))],
        vec(rule, 0..=6),
        vec(carve, 0..=3),
    )
        .prop_map(|(malformed, rules, carves)| PolicySpec {
            malformed,
            rules,
            carves,
        })
}

// ---------------------------------------------------------------------------------------------
// Frame addresses: drawn from the anchors and from the policy's own prefixes.

/// Prefixes (network, length) that frame addresses are drawn from or near.
struct Pools {
    v4: Vec<(Ipv4Addr, u8)>,
    v6: Vec<(Ipv6Addr, u8)>,
}

impl Pools {
    /// Each anchor as a full-length prefix, and every prefix of `policy`, so that addresses
    /// land inside a policy's pass exceptions and just outside its prefixes often.
    fn new(policy: &PolicySpec) -> Self {
        let rules = policy.all_rules();
        let prefixes = || rules.iter().flat_map(|r| r.prefixes.iter().copied());
        Self {
            v4: V4_ANCHORS
                .iter()
                .map(|&a| (a, 32))
                .chain(prefixes().filter_map(|p| match p.net() {
                    (IpAddr::V4(net), len) => Some((net, len)),
                    _ => None,
                }))
                .collect(),
            v6: V6_ANCHORS
                .iter()
                .map(|&a| (a, 128))
                .chain(prefixes().filter_map(|p| match p.net() {
                    (IpAddr::V6(net), len) => Some((net, len)),
                    _ => None,
                }))
                .collect(),
        }
    }
}

/// How many low bits to randomise around a pool entry: mostly a few, sometimes any number.
fn noise_bits(max: u32) -> impl Strategy<Value = u32> {
    prop_oneof![2 => 0..=max.min(12), 1 => 0..=max]
}

/// An address inside a pool prefix, near one (possibly outside it), or anywhere.
fn v4_addr(pools: &Pools) -> impl Strategy<Value = Ipv4Addr> + use<> {
    let pool = pools.v4.clone();
    prop_oneof![
        4 => (select(pool.clone()), any::<u32>()).prop_map(|((net, len), host)| {
            Ipv4Addr::from(u32::from(net) | (host & low_bits_u32(32 - u32::from(len))))
        }),
        2 => (select(pool), noise_bits(32), any::<u32>()).prop_map(|((net, _), bits, noise)| {
            Ipv4Addr::from(u32::from(net) ^ (noise & low_bits_u32(bits)))
        }),
        1 => any::<u32>().prop_map(Ipv4Addr::from),
    ]
}

fn v6_addr(pools: &Pools) -> impl Strategy<Value = Ipv6Addr> + use<> {
    let pool = pools.v6.clone();
    prop_oneof![
        4 => (select(pool.clone()), any::<u128>()).prop_map(|((net, len), host)| {
            Ipv6Addr::from(u128::from(net) | (host & low_bits_u128(128 - u32::from(len))))
        }),
        2 => (select(pool), noise_bits(128), any::<u128>()).prop_map(|((net, _), bits, noise)| {
            Ipv6Addr::from(u128::from(net) ^ (noise & low_bits_u128(bits)))
        }),
        1 => any::<u128>().prop_map(Ipv6Addr::from),
    ]
}

// ---------------------------------------------------------------------------------------------
// Frames.

/// A length field rewritten after the frame is built: the IPv4 total length or the IPv6
/// payload length.
#[derive(Clone, Copy, Debug)]
enum Lie {
    By(i16),
    To(u16),
}

#[derive(Clone, Debug)]
enum Case {
    /// A frame from the grammar, then: a length that lies, a few bytes overwritten (within the
    /// first 128 bytes, where the headers are, or anywhere), and a cut to a shorter length
    /// (never below the 14 bytes BPF_PROG_TEST_RUN insists on).
    Built {
        frame: Frame,
        lie: Option<Lie>,
        patches: Vec<(bool, Index, u8)>,
        cut: Option<Index>,
        /// Sent to an Ethernet group address (the I/G bit set), which `reject` never answers.
        group: bool,
    },
    /// Random bytes behind an Ethernet header with a chosen EtherType.
    Garbage { ethertype: u16, bytes: Vec<u8> },
}

impl Case {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Self::Built {
                frame,
                lie,
                patches,
                cut,
                group,
            } => {
                let mut b = frame.build();
                if *group {
                    b[0] |= 1;
                }
                let field = match frame.l3 {
                    L3::V4(_) => Some(frame.l3_offset() + 2),
                    L3::V6(_) => Some(frame.l3_offset() + 4),
                    L3::Other { .. } => None,
                };
                if let (Some(lie), Some(at)) = (lie, field)
                    && let Some(slot) = b.get_mut(at..at + 2)
                {
                    let honest = u16::from_be_bytes([slot[0], slot[1]]);
                    let told = match *lie {
                        Lie::By(delta) => honest.wrapping_add_signed(delta),
                        Lie::To(value) => value,
                    };
                    slot.copy_from_slice(&told.to_be_bytes());
                }
                for &(headers, at, value) in patches {
                    let span = if headers { b.len().min(128) } else { b.len() };
                    b[at.index(span)] = value;
                }
                if let Some(cut) = cut {
                    let keep = 14 + cut.index(b.len() - 14 + 1);
                    b.truncate(keep);
                }
                b
            }
            Self::Garbage { ethertype, bytes } => {
                let mut b = vec![0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01];
                b.extend(ethertype.to_be_bytes());
                b.extend(bytes);
                b
            }
        }
    }
}

fn ext() -> impl Strategy<Value = Ext> {
    let offset = prop_oneof![2 => Just(0u16), 1 => 1u16..0x2000];
    prop_oneof![
        (0u8..=8).prop_map(|units| Ext::HopByHop { units }),
        (0u8..=8).prop_map(|units| Ext::Routing { units }),
        (0u8..=8).prop_map(|units| Ext::DestOpts { units }),
        (offset, any::<bool>()).prop_map(|(offset, more)| Ext::Fragment { offset, more }),
        (0u8..=16).prop_map(|payload_len| Ext::Ah { payload_len }),
    ]
}

fn l3(pools: &Pools) -> impl Strategy<Value = L3> + use<> {
    let v4 = (
        v4_addr(pools),
        v4_addr(pools),
        prop_oneof![3 => Just(vec![]), 1 => vec(any::<u8>(), 1..=40)],
        prop_oneof![3 => Just(0u16), 1 => 0u16..0x2000],
        weighted(0.2),
        option::weighted(0.08, 0u8..16),
    )
        .prop_map(|(src, dst, options, frag_offset, more_fragments, ihl)| {
            L3::V4(V4 {
                src,
                dst,
                options,
                frag_offset,
                more_fragments,
                ihl,
                tot_len: None,
            })
        });
    let v6 = (
        v6_addr(pools),
        v6_addr(pools),
        prop_oneof![3 => vec(ext(), 0..=3), 1 => vec(ext(), 4..=10)],
    )
        .prop_map(|(src, dst, ext)| {
            L3::V6(V6 {
                src,
                dst,
                ext,
                payload_len: None,
            })
        });
    let arp =
        (v4_addr(pools), v4_addr(pools)).prop_map(|(sender, target)| Frame::arp(sender, target).l3);
    let other = (
        prop_oneof![
            select(&[0x0806u16, 0x88cc, 0x8847, 0x8035, 0x0842, 0x22f0, 0x05dc][..]),
            any::<u16>(),
        ],
        vec(any::<u8>(), 0..=64),
    )
        .prop_map(|(ethertype, bytes)| L3::Other { ethertype, bytes });
    prop_oneof![6 => v4, 6 => v6, 1 => arp, 1 => other]
}

fn l4() -> impl Strategy<Value = L4> {
    // Extension-header numbers as the upper layer make the walker read L4 bytes as headers.
    let proto = prop_oneof![
        any::<u8>(),
        select(&[0u8, 43, 44, 51, 60, 59, 58, 6, 17][..]),
    ];
    prop_oneof![
        (any::<u16>(), any::<u16>(), vec(any::<u8>(), 0..=64)).prop_map(
            |(sport, dport, payload)| L4::Udp {
                sport,
                dport,
                payload
            }
        ),
        // Port 443 often: redirect rules reset HTTPS unless they say otherwise.
        (
            any::<u16>(),
            prop_oneof![1 => Just(443u16), 1 => Just(80), 2 => any::<u16>()]
        )
            .prop_map(|(sport, dport)| L4::TcpSyn { sport, dport }),
        (proto, vec(any::<u8>(), 0..=64)).prop_map(|(proto, bytes)| L4::Raw { proto, bytes }),
    ]
}

fn frame(pools: &Pools) -> impl Strategy<Value = Frame> + use<> {
    let tag = (
        prop_oneof![Just(ETH_P_8021Q), Just(ETH_P_8021AD)],
        0u16..4096,
    );
    // Three slots, each tagged with probability 0.35: 0-2 tags mostly, 3 (malformed) ~4%.
    let vlans = [
        option::weighted(0.35, tag.clone()),
        option::weighted(0.35, tag.clone()),
        option::weighted(0.35, tag),
    ]
    .prop_map(|slots| slots.into_iter().flatten().collect::<Vec<_>>());
    let pad_to = prop_oneof![4 => Just(0usize), 1 => 0usize..=128];
    (vlans, l3(pools), l4(), pad_to).prop_map(|(vlans, l3, l4, pad_to)| Frame {
        vlans,
        l3,
        l4,
        pad_to,
        truncate: None,
    })
}

fn case(pools: &Pools) -> impl Strategy<Value = Case> + use<> {
    let lie = prop_oneof![
        (-64i16..=64).prop_map(Lie::By),
        any::<u16>().prop_map(Lie::To)
    ];
    let patches = prop_oneof![
        6 => Just(vec![]),
        1 => vec((weighted(0.8), any::<Index>(), any::<u8>()), 1..=3),
    ];
    let built = (
        frame(pools),
        option::weighted(0.12, lie),
        patches,
        option::weighted(0.12, any::<Index>()),
        weighted(0.03),
    )
        .prop_map(|(frame, lie, patches, cut, group)| Case::Built {
            frame,
            lie,
            patches,
            cut,
            group,
        });
    let garbage = (
        prop_oneof![
            select(&[0x0800u16, 0x86dd, ETH_P_8021Q, ETH_P_8021AD][..]),
            any::<u16>(),
        ],
        vec(any::<u8>(), 0..=150),
    )
        .prop_map(|(ethertype, bytes)| Case::Garbage { ethertype, bytes });
    prop_oneof![12 => built, 1 => garbage]
}

// ---------------------------------------------------------------------------------------------
// What a frame did: the verdict and every counter that moved.

/// What the reference says `outcome` and `sent` do to a `len`-byte frame.
fn expected(
    compiled: &Compiled,
    outcome: Outcome,
    shadow: Option<(usize, u8)>,
    sent: &Sent,
    len: usize,
) -> Effect {
    let one = (1, len as u64);
    let mut moved = BTreeMap::new();
    if let Some((index, action)) = shadow {
        let name = compiled
            .rules
            .get(index)
            .map_or("<no such rule>", |r| r.name.as_str());
        moved.insert(format!("rule {name}"), one);
        moved.insert(format!("shadow {}", action_name(action)), one);
    }
    match outcome {
        Outcome::Rule { index, action } => {
            let name = compiled
                .rules
                .get(index)
                .map_or("<no such rule>", |r| r.name.as_str());
            moved.insert(format!("rule {name}"), one);
            moved.insert(action_name(action).to_owned(), one);
        }
        Outcome::NoMatch => {
            moved.insert("no_match".to_owned(), one);
        }
        Outcome::NonIp => {
            moved.insert("non_ip".to_owned(), one);
        }
        Outcome::Malformed { dropped } => {
            moved.insert("malformed".to_owned(), one);
            if dropped {
                moved.insert("malformed_dropped".to_owned(), one);
            }
        }
    }
    match sent {
        Sent::Unanswered => {
            moved.insert("reject_unanswered".to_owned(), one);
        }
        Sent::RedirectFailed => {
            moved.insert("redirect_failed".to_owned(), one);
        }
        _ => {}
    }
    Effect {
        verdict: sent.xdp_action(),
        moved,
    }
}

/// Where redirect rules send frames: BPF_PROG_TEST_RUN does not transmit, but the device map
/// needs a real device, and loopback always exists.
const NOTICE: NoticeTarget = NoticeTarget {
    ifindex: 1,
    dst_mac: [0x02, 0xee, 0, 0, 0, 0x01],
    src_mac: [0x02, 0xee, 0, 0, 0, 0x02],
};

/// Apply a policy, with [`NOTICE`] for each notice target it uses; the targets as loaded.
fn apply(harness: &mut Harness, text: &str) -> (Compiled, Vec<NoticeTarget>) {
    let used = compile(&parse_policy(text, "test.toml")).notices.len();
    let targets = vec![NOTICE; used];
    (harness.apply_with_targets(text, &targets), targets)
}

/// Run one frame through the program and the reference; what happened if they agree on the
/// verdict, the counters and the bytes sent (also: a passed frame is left as it was).
fn check(
    harness: &Harness,
    (compiled, targets): &(Compiled, Vec<NoticeTarget>),
    case: &Case,
) -> Result<(Outcome, Sent), TestCaseError> {
    let frame = case.bytes();
    if frame.len() >= MAX_FRAME {
        return Err(TestCaseError::fail(format!(
            "the grammar made a {}-byte frame; keep frames below {MAX_FRAME} bytes",
            frame.len()
        )));
    }
    let (outcome, sent) = reference::run(compiled, targets, &frame);
    let shadow = reference::shadow(compiled, &frame);
    let want = expected(compiled, outcome, shadow, &sent, frame.len());
    let (got, out) = harness.run_with_output(&frame);
    let want_bytes = match &sent {
        Sent::Passed => Some(frame.as_slice()),
        other => other.bytes(),
    };
    let bytes_agree = want_bytes.is_none_or(|w| w == out.as_slice());
    if got == want && bytes_agree {
        Ok((outcome, sent))
    } else {
        let bytes = match want_bytes {
            Some(w) if w != out.as_slice() => format!(
                "\n  the frames sent differ:\n  program ({} bytes):\n{}  reference ({} bytes):\n{}",
                out.len(),
                hex_dump(&out),
                w.len(),
                hex_dump(w)
            ),
            _ => String::new(),
        };
        Err(TestCaseError::fail(format!(
            "the program and the reference disagree\n  program:   {got}\n  reference: {want}\n  \
             reference outcome: {outcome:?}, parsed as {:?}{bytes}",
            reference::parse(&frame)
        )))
    }
}

// ---------------------------------------------------------------------------------------------
// Coverage: how often each kind of outcome happened.

fn classify(compiled: &Compiled, frame: &[u8], outcome: Outcome, sent: &Sent) -> String {
    let (family, dst, src) = match reference::parse(frame) {
        Parsed::V4 { src, dst } => ("v4", IpAddr::V4(dst), IpAddr::V4(src)),
        Parsed::V6 { src, dst } => ("v6", IpAddr::V6(dst), IpAddr::V6(src)),
        Parsed::NonIp => return "non-IP".into(),
        Parsed::Malformed => {
            return match outcome {
                Outcome::Malformed { dropped: true } => "malformed, dropped".into(),
                _ => "malformed, passed".into(),
            };
        }
    };
    let Outcome::Rule { action, .. } = outcome else {
        return format!("{family} no match");
    };
    let verdict = compiled.verdict(dst, src);
    let direction = verdict.direction.unwrap_or_default();
    let what = action_name(action);
    let mut kind = format!("{family} {what} by {direction}");
    // Longest prefix at work: a wider prefix of the same direction says the opposite.
    let nested = verdict.prefix.is_some_and(|p| {
        compiled
            .tables
            .overlapping(direction, p)
            .iter()
            .any(|(q, rule)| {
                q.prefix_len() < p.prefix_len()
                    && compiled
                        .rules
                        .get(*rule)
                        .is_some_and(|r| r.action != action)
            })
    });
    if nested {
        let other = if what == "pass" { "block" } else { "pass" };
        kind.push_str(&format!(", inside a wider {other}"));
    }
    // Precedence at work: a source block that beats a destination pass.
    if direction == Direction::Src && compiled.resolve(Direction::Dst, dst).rule.is_some() {
        kind.push_str(", over a dst pass");
    }
    match sent {
        Sent::Answered(_) => kind.push_str(", answered"),
        Sent::Unanswered => kind.push_str(", unanswered"),
        Sent::Redirected(_) => kind.push_str(", redirected"),
        Sent::RedirectFailed => kind.push_str(", redirect failed"),
        Sent::Passed | Sent::Dropped | Sent::Aborted => {}
    }
    kind
}

/// The shadow side of a frame, when it has a shadow hit: whether the enforced rules passed or
/// blocked it meanwhile.
fn classify_shadow(compiled: &Compiled, frame: &[u8], outcome: Outcome) -> Option<String> {
    let family = match reference::parse(frame) {
        Parsed::V4 { .. } => "v4",
        Parsed::V6 { .. } => "v6",
        Parsed::NonIp | Parsed::Malformed => return None,
    };
    let (_, action) = reference::shadow(compiled, frame)?;
    let would = if action == filter_common::action::PASS {
        "pass"
    } else {
        "block"
    };
    let enforced = match outcome {
        Outcome::Rule { action, .. } if action != filter_common::action::PASS => "blocked",
        _ => "passed",
    };
    Some(format!("{family} shadow {would}, {enforced}"))
}

/// Kinds the grammar must reach in a run of a few thousand frames or more.
const MUST_SEE: &[&str] = &[
    "non-IP",
    "malformed, dropped",
    "malformed, passed",
    "v4 no match",
    "v4 drop by dst",
    "v4 drop by dst, inside a wider pass",
    "v4 drop by src",
    "v4 drop by src, over a dst pass",
    "v4 pass by dst",
    "v4 pass by dst, inside a wider block",
    "v4 pass by src",
    "v4 pass by src, inside a wider block",
    "v6 no match",
    "v6 drop by dst",
    "v6 drop by dst, inside a wider pass",
    "v6 drop by src",
    "v6 drop by src, over a dst pass",
    "v6 pass by dst",
    "v6 pass by dst, inside a wider block",
    "v6 pass by src",
    "v6 pass by src, inside a wider block",
    "v4 reject by dst, answered",
    "v4 reject by dst, unanswered",
    "v4 reject by src, answered",
    "v6 reject by dst, answered",
    "v6 reject by dst, unanswered",
    "v6 reject by src, answered",
    "v4 redirect by dst, redirected",
    "v4 redirect by dst, answered",
    "v6 redirect by dst, redirected",
    "v6 redirect by dst, answered",
    "v4 shadow block, passed",
    "v4 shadow block, blocked",
    "v4 shadow pass, blocked",
    "v6 shadow block, passed",
    "v6 shadow block, blocked",
    "v6 shadow pass, blocked",
];
// ---------------------------------------------------------------------------------------------
// The run.

struct Settings {
    policies: u64,
    frames: u64,
    seed: u64,
}

fn env_u64(name: &str, default: u64) -> u64 {
    let Ok(text) = std::env::var(name) else {
        return default;
    };
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.unwrap_or_else(|e| panic!("{name}={text:?} is not a number ({e})"))
}

impl Settings {
    fn from_env() -> Self {
        Self {
            policies: env_u64("EDGEBLOCK_DIFF_POLICIES", DEFAULT_POLICIES),
            frames: env_u64("EDGEBLOCK_DIFF_FRAMES", DEFAULT_FRAMES),
            seed: env_u64("EDGEBLOCK_DIFF_SEED", DEFAULT_SEED),
        }
    }
}

fn runner_config(cases: u64) -> Config {
    Config {
        cases: u32::try_from(cases).unwrap_or(u32::MAX),
        // Failures are written to tests/fixtures/differential-failures instead.
        failure_persistence: None,
        max_shrink_iters: 10_000,
        max_shrink_time: 120_000,
        ..Config::default()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex_dump(bytes: &[u8]) -> String {
    bytes
        .chunks(16)
        .enumerate()
        .map(|(i, row)| {
            let cells: Vec<String> = row.iter().map(|b| format!("{b:02x}")).collect();
            format!("{:04x}  {}\n", i * 16, cells.join(" "))
        })
        .collect()
}

/// Where failing cases are written. Each file is a finished regression case: turn it into an
/// entry of the fixture table in tests/tests/fixtures.rs (the frame, the verdict the docs call
/// for, the counter it must move), fix the program or the reference, then delete the file.
fn failure_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/differential-failures")
}

fn report_failure(settings: &Settings, index: u64, why: &str, case: &Case, policy: &str) -> ! {
    let frame = case.bytes();
    let policy = if policy.is_empty() {
        "(empty: no rules, malformed frames dropped by default)\n"
    } else {
        policy
    };
    let report = format!(
        "differential failure: seed {seed:#x}, policy {number} of {policies}\n\
         replay: EDGEBLOCK_DIFF_SEED={seed:#x} EDGEBLOCK_DIFF_POLICIES={number} \
         EDGEBLOCK_DIFF_FRAMES={frames} cargo test -p tests --test differential (as root)\n\
         \n{why}\n\
         \n--- frame ({len} bytes, shrunk), hex:\n{hex}\n\
         \n{dump}\
         \n--- frame grammar:\n{case:#?}\n\
         \n--- policy:\n{policy}",
        seed = settings.seed,
        number = index + 1,
        policies = settings.policies,
        frames = settings.frames,
        len = frame.len(),
        hex = hex(&frame),
        dump = hex_dump(&frame),
    );
    let dir = failure_dir();
    let path = dir.join(format!(
        "seed-{:#x}-policy-{}.txt",
        settings.seed,
        index + 1
    ));
    let saved = std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(&path, &report))
        .map_or_else(
            |e| format!("(could not save it to {}: {e})", path.display()),
            |()| format!("(saved to {})", path.display()),
        );
    panic!("{report}\n{saved}");
}

#[test]
fn program_agrees_with_the_reference() {
    require_root();
    let settings = Settings::from_env();
    eprintln!(
        "differential: seed {:#x}, {} policies x {} frames (EDGEBLOCK_DIFF_SEED, \
         EDGEBLOCK_DIFF_POLICIES, EDGEBLOCK_DIFF_FRAMES)",
        settings.seed, settings.policies, settings.frames
    );
    let started = Instant::now();
    let harness = RefCell::new(Harness::new());
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&settings.seed.to_le_bytes());
    let mut policies = TestRunner::new_with_rng(
        runner_config(1),
        TestRng::from_seed(RngAlgorithm::ChaCha, &seed),
    );
    let seen: RefCell<BTreeMap<String, u64>> = RefCell::new(BTreeMap::new());
    let mut before: Option<PolicySpec> = None;
    for index in 0..settings.policies {
        let tree = policy_spec()
            .new_tree(&mut policies)
            .unwrap_or_else(|e| panic!("cannot generate a policy: {e}"));
        // Every third policy is a small edit of the one before it: most of the tables then
        // stay as they were, which is what `apply` patches rather than builds (`dxr::patch`).
        let edit = match &before {
            Some(last) if index % 3 == 2 => Some(last.edited(&tree.current())),
            _ => None,
        };
        let spec = edit.clone().unwrap_or_else(|| tree.current());
        let previous = before.replace(spec.clone());
        // Two policies with the IPv4 tables found through their index (how a short list is
        // laid out), two with every chunk stored (a long one): some edits then read a table
        // laid out one way and write it the other.
        let indexed = index % 4 < 2;
        harness.borrow_mut().filter.maps.v4.index_max = if indexed {
            filter_common::dxr::INDEXED_MAX as usize
        } else {
            0
        };
        let applied = apply(&mut harness.borrow_mut(), &spec.to_toml());
        let frames = case(&Pools::new(&spec));
        let mut runner =
            TestRunner::new_with_rng(runner_config(settings.frames), policies.new_rng());
        let result = runner.run(&frames, |case| {
            let (outcome, sent) = check(&harness.borrow(), &applied, &case)?;
            let frame = case.bytes();
            let kind = classify(&applied.0, &frame, outcome, &sent);
            *seen.borrow_mut().entry(kind).or_default() += 1;
            if let Some(kind) = classify_shadow(&applied.0, &frame, outcome) {
                *seen.borrow_mut().entry(kind).or_default() += 1;
            }
            Ok(())
        });
        let (why, case) = match result {
            Ok(()) => continue,
            Err(TestError::Abort(why)) => panic!("proptest gave up: {why}"),
            Err(TestError::Fail(why, case)) => (why, case),
        };
        let why = format!(
            "{why}\n(IPv4 tables {})",
            if indexed {
                "indexed where sparse"
            } else {
                "never indexed: every chunk stored"
            }
        );
        // An edit's tables came from those of the policy before it: it is reported whole,
        // with that policy, as shrinking either alone would lose the failure.
        if let (Some(edit), Some(previous)) = (&edit, &previous) {
            report_failure(
                &settings,
                index,
                &format!(
                    "{why}\n(applied as an edit of this policy, applied just before it:)\n{}",
                    previous.to_toml()
                ),
                &case,
                &edit.to_toml(),
            )
        }
        // The frame is as small as proptest could make it under this policy; now make the
        // policy as small as possible under that frame (the harness then holds whatever was
        // applied last, which no longer matters: the test fails here).
        let mut shrinker = TestRunner::new_with_rng(runner_config(1), policies.new_rng());
        let shrunk = shrinker.run_one(tree, |spec| {
            let applied = apply(&mut harness.borrow_mut(), &spec.to_toml());
            check(&harness.borrow(), &applied, &case).map(drop)
        });
        match shrunk {
            Err(TestError::Fail(why, spec)) => {
                report_failure(&settings, index, &why.to_string(), &case, &spec.to_toml())
            }
            _ => report_failure(
                &settings,
                index,
                &format!("{why}\n(did not fail again when replayed, so the policy is not shrunk)"),
                &case,
                &spec.to_toml(),
            ),
        }
    }
    let elapsed = started.elapsed();
    let seen = seen.into_inner();
    let total: u64 = seen.values().sum();
    let mut table = String::new();
    for (kind, n) in &seen {
        writeln!(
            table,
            "  {n:>7}  {:>5.1}%  {kind}",
            100.0 * *n as f64 / total.max(1) as f64
        )
        .expect("write to a String");
    }
    eprintln!(
        "differential: {total} frames under {} policies agreed in {:.1?}:\n{table}",
        settings.policies, elapsed
    );
    // Only a run of CI size or more is sure to reach every kind; a short one just reports.
    if settings.policies >= 50 && total >= 10_000 {
        let missing: Vec<&str> = MUST_SEE
            .iter()
            .copied()
            .filter(|k| !seen.contains_key(*k))
            .collect();
        assert!(
            missing.is_empty(),
            "the frame and policy grammars never produced: {missing:?}; they have drifted away \
             from what they are meant to cover"
        );
    }
}
