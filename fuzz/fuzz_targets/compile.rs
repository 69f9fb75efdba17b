//! Valid policies, compiled: the IPv4 range tables built from them must give, for every
//! address, the rule the longest matching prefix names, searched the way the XDP program
//! searches them (at most `dxr::SEARCH_STEPS` steps), and the tables must have the shape the
//! program relies on.
//!
//! Input, read one of two ways:
//! - text: policy text, NUL, the text every include reads, NUL, address bytes (4 per IPv4
//!   address), as the seeds from examples/ are written;
//! - generated, when the text does not parse (most mutations of it): the bytes describe rules
//!   whose prefixes are cut from a few anchor addresses at many lengths, so that nesting,
//!   exceptions and shared chunk boundaries are the common case; the generated policy is
//!   written as TOML and must parse.
//!
//! Either way the policy goes through `edgeblock::policy::parse`. Besides the addresses given,
//! each table's prefixes are probed at their first and last address and one past each end.
#![no_main]

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use edgeblock::{
    compile::{Tables, compile},
    dxr::Dxr,
    policy::{self, Direction},
};
use edgeblock_fuzz::{POLICY_PATH, check_policy, now, split};
use filter_common::dxr;
use ipnet::Ipv4Net;
use libfuzzer_sys::fuzz_target;

/// Prefixes per table whose edges are probed: inputs are small, this is all of them in
/// practice.
const EDGE_PROBES: usize = 256;
/// Addresses taken from the input's tail: a few dozen find what a thousand would, faster.
const GIVEN_PROBES: usize = 64;

fuzz_target!(|data: &[u8]| {
    let [text, include, addrs] = split::<3>(data);
    let text = String::from_utf8_lossy(text);
    let include = String::from_utf8_lossy(include);
    let parse = |text: &str| {
        policy::parse(text, Path::new(POLICY_PATH), now(), |_| {
            Ok(include.clone().into_owned())
        })
    };
    let (policy, addrs) = match parse(&text) {
        Ok(policy) => (policy, addrs),
        Err(_) => {
            let (text, rest) = generate(data);
            let policy = parse(&text)
                .unwrap_or_else(|e| panic!("a generated policy was refused:\n{e}\n---\n{text}"));
            (policy, rest)
        }
    };
    check_policy(&policy);
    let compiled = compile(&policy);
    assert_eq!(compiled, compile(&policy), "compiling is deterministic");
    assert_eq!(compiled.hash, compiled.compute_hash());
    assert_eq!(compiled.rules.len(), policy.rules.len());
    let counted: u64 = compiled.rules.iter().map(|r| r.prefixes).sum();
    assert_eq!(
        counted,
        compiled.tables.len() as u64,
        "rules' prefix counts and the tables"
    );

    let given: Vec<u32> = addrs
        .chunks_exact(4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        .take(GIVEN_PROBES)
        .collect();
    let t = &compiled.tables;
    for (direction, table) in [(Direction::Dst, &t.dst_v4), (Direction::Src, &t.src_v4)] {
        // An empty table is one range per chunk (dxr.rs tests it); building and walking all
        // 65,536 chunks is most of an execution, so only tables with prefixes are.
        if table.is_empty() {
            continue;
        }
        // As `apply` builds them: the result is rule index + 1, 0 for no match.
        let built = Dxr::build(table.iter().map(|(p, &r)| (*p, r as u32 + 1)));
        check_shape(&built, table.len());
        let edges = table.keys().take(EDGE_PROBES).flat_map(|p| {
            let (first, last) = (u32::from(p.network()), u32::from(p.broadcast()));
            [first, last, first.wrapping_sub(1), last.wrapping_add(1)]
        });
        for addr in given.iter().copied().chain(edges) {
            check_chunk(&built, addr);
            let want = naive(table, addr);
            assert_eq!(
                lookup_result(t, direction, addr),
                want,
                "Tables::lookup({direction}, {})",
                Ipv4Addr::from(addr)
            );
            assert_eq!(
                built.lookup(addr),
                want,
                "Dxr::lookup({direction}, {})",
                Ipv4Addr::from(addr)
            );
            assert_eq!(
                like_the_program(&built, addr),
                want,
                "the program's bounded search ({direction}, {})",
                Ipv4Addr::from(addr)
            );
        }
    }
    // IPv6 stays in LPM tries, whose longest match the kernel does; the reference matcher and
    // the notice server use `Tables::lookup` for it, held here to a scan.
    for (direction, table) in [(Direction::Dst, &t.dst_v6), (Direction::Src, &t.src_v6)] {
        for p in table.keys().take(EDGE_PROBES) {
            let (first, last) = (u128::from(p.network()), u128::from(p.broadcast()));
            for addr in [first, last, first.wrapping_sub(1), last.wrapping_add(1)] {
                let a = Ipv6Addr::from(addr);
                let want = table
                    .iter()
                    .filter(|(p, _)| p.contains(&a))
                    .max_by_key(|(p, _)| p.prefix_len())
                    .map(|(_, &r)| r);
                let got = t.lookup(direction, IpAddr::V6(a)).map(|(_, r)| r);
                assert_eq!(got, want, "Tables::lookup({direction}, {a})");
            }
        }
    }
});

/// Reads bytes one at a time; zeros once they run out.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        let (&first, rest) = self.0.split_first().unwrap_or((&0, &[]));
        self.0 = rest;
        first
    }

    fn u32(&mut self) -> u32 {
        u32::from_be_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
}

/// A policy of up to 8 rules of up to 8 prefixes each, as TOML, and the bytes left over.
/// Prefixes are anchor addresses (four from the input, and two at the ends of the address
/// space) truncated to a length from the input, or now and then an IPv6 prefix; a prefix
/// already in a rule of the same direction is left out, and so is a rule left without any.
fn generate(data: &[u8]) -> (String, &[u8]) {
    const ACTIONS: [&str; 4] = ["drop", "pass", "reject", "pass"];
    let mut b = Bytes(data);
    let anchors = [b.u32(), b.u32(), b.u32(), b.u32(), 0, u32::MAX];
    let mut seen = std::collections::BTreeSet::new();
    let mut out = String::from("malformed = \"pass\"\n");
    let rules = 1 + b.u8() % 8;
    for i in 0..rules {
        let flags = b.u8();
        let src = flags & 1 != 0;
        let mut prefixes = Vec::new();
        for _ in 0..=(flags >> 3) % 8 {
            let pick = b.u8();
            let len = b.u8();
            let net: ipnet::IpNet = if pick % 16 == 15 {
                let addr = Ipv6Addr::from(u128::from(b.u32()) << 96);
                ipnet::Ipv6Net::new(addr, len % 129)
                    .expect("length in range")
                    .trunc()
                    .into()
            } else {
                let addr = Ipv4Addr::from(anchors[usize::from(pick) % anchors.len()]);
                Ipv4Net::new(addr, len % 33)
                    .expect("length in range")
                    .trunc()
                    .into()
            };
            if seen.insert((src, net)) {
                prefixes.push(format!("\"{net}\""));
            }
        }
        if prefixes.is_empty() {
            continue;
        }
        out.push_str(&format!(
            "\n[[rule]]\nname = \"r{i}\"\ndirection = \"{}\"\naction = \"{}\"\nprefixes = [{}]\n",
            if src { "src" } else { "dst" },
            ACTIONS[usize::from(flags >> 1) % 4],
            prefixes.join(", "),
        ));
    }
    (out, b.0)
}

/// The longest prefix holding `addr`, by scanning every entry: rule index + 1, or 0.
fn naive(table: &BTreeMap<Ipv4Net, usize>, addr: u32) -> u32 {
    let a = Ipv4Addr::from(addr);
    table
        .iter()
        .filter(|(p, _)| p.contains(&a))
        .max_by_key(|(p, _)| p.prefix_len())
        .map_or(0, |(_, &r)| r as u32 + 1)
}

fn lookup_result(t: &Tables, direction: Direction, addr: u32) -> u32 {
    t.lookup(direction, IpAddr::V4(Ipv4Addr::from(addr)))
        .map_or(0, |(_, r)| r as u32 + 1)
}

/// `filter-ebpf/src/lookup.rs`, `v4()`: an empty slice is no match, and the search stops after
/// `SEARCH_STEPS` steps whether or not it has narrowed to one range.
fn like_the_program(t: &Dxr, addr: u32) -> u32 {
    let chunk = (addr >> 16) as usize;
    let (mut lo, mut hi) = (t.direct[chunk], t.direct[chunk + 1]);
    if hi <= lo {
        return 0;
    }
    for _ in 0..dxr::SEARCH_STEPS {
        if hi - lo <= 1 {
            break;
        }
        let mid = lo + (hi - lo) / 2;
        if (t.ranges[mid as usize] >> 32) as u32 <= addr {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    t.ranges[lo as usize] as u32
}

/// What the program and `apply`'s capacity check assume of a table (`edgeblock::dxr`), and of
/// the slice of the chunk each probed address falls in. (Walking all 65,536 chunks on every
/// execution would cost most of it under the fuzzer's instrumentation; chunks without a probe
/// come from the same code as those with one.)
fn check_shape(t: &Dxr, prefixes: usize) {
    assert_eq!(t.direct.len(), dxr::DIRECT_LEN as usize);
    assert_eq!(t.direct[0], 0);
    assert_eq!(t.direct[dxr::CHUNKS as usize] as usize, t.ranges.len());
    assert!(
        t.ranges.len() <= 2 * prefixes + dxr::CHUNKS as usize,
        "{} ranges for {prefixes} prefixes",
        t.ranges.len()
    );
}

fn check_chunk(t: &Dxr, addr: u32) {
    let chunk = (addr >> 16) as usize;
    let (lo, hi) = (t.direct[chunk] as usize, t.direct[chunk + 1] as usize);
    assert!(lo < hi, "chunk {chunk} has no range");
    assert!(
        hi - lo <= 1 << dxr::SEARCH_STEPS,
        "chunk {chunk}: {} ranges are more than the search reaches",
        hi - lo
    );
    let slice = &t.ranges[lo..hi];
    assert_eq!(
        (slice[0] >> 32) as u32,
        (chunk as u32) << 16,
        "chunk {chunk} starts elsewhere"
    );
    for pair in slice.windows(2) {
        assert!(pair[0] >> 32 < pair[1] >> 32, "chunk {chunk} out of order");
        assert_ne!(
            pair[0] as u32, pair[1] as u32,
            "chunk {chunk}: neighbours with one result are merged"
        );
    }
}
