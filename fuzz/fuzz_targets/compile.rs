//! Valid policies, compiled: the range tables built from them must give, for every address,
//! the rule the longest matching prefix names, searched the way the XDP program searches them
//! (a leaf, or at most `dxr::SEARCH_STEPS` / `V6_SEARCH_STEPS` halvings of the chunk's slice),
//! and the tables must have the shape the program relies on.
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
    dxr::{Dxr, Packed},
    policy::{self, Direction},
};
use edgeblock_fuzz::{POLICY_PATH, check_policy, now, split};
use filter_common::{Chunk, dxr};
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
        // An empty table is one leaf per chunk (dxr.rs tests it); building and packing all
        // the chunks is most of an execution, so only tables with prefixes are.
        if table.is_empty() {
            continue;
        }
        // As `apply` builds them: the result is rule index + 1, 0 for no match.
        let built = Dxr::build(table.iter().map(|(p, &r)| (*p, r as u32 + 1)));
        let packed = built.pack();
        check_shape(&packed, table.len(), dxr::SEARCH_STEPS);
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
                built.lookup(addr.into()),
                want,
                "Dxr::lookup({direction}, {})",
                Ipv4Addr::from(addr)
            );
            assert_eq!(
                packed.lookup(addr.into(), dxr::SEARCH_STEPS),
                want,
                "the program's bounded search ({direction}, {})",
                Ipv4Addr::from(addr)
            );
        }
    }
    // IPv6: the same, with `Tables::lookup` and the packed table held to a scan.
    for (direction, table) in [(Direction::Dst, &t.dst_v6), (Direction::Src, &t.src_v6)] {
        if table.is_empty() {
            continue;
        }
        let packed = Dxr::build_v6(table.iter().map(|(p, &r)| (*p, r as u32 + 1))).pack();
        check_shape(&packed, table.len(), dxr::V6_SEARCH_STEPS);
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
                assert_eq!(
                    packed.lookup(addr, dxr::V6_SEARCH_STEPS),
                    want.map_or(0, |r| r as u32 + 1),
                    "the program's bounded search ({direction}, {a})"
                );
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

/// What the program and `apply`'s capacity check assume of a packed table: at most three
/// ranges per prefix, no slice longer than the search reaches, and a leaf or a slice in its
/// range for every chunk.
fn check_shape(t: &Packed, prefixes: usize, steps: u32) {
    assert!(
        t.len() <= 3 * prefixes,
        "{} ranges for {prefixes} prefixes",
        t.len()
    );
    assert!(
        t.longest <= 1 << steps,
        "a chunk of {} ranges is more than the search reaches",
        t.longest
    );
    for c in &t.direct {
        match c.kind() {
            Chunk::SLICE => {
                let (first, count) = (c.hi as usize, (c.lo >> 32) as usize);
                assert!(count >= 2, "a one-range chunk is a leaf");
                assert!(first + count <= t.len(), "slice out of the table");
            }
            Chunk::INLINE => assert!(!t.palette.is_empty(), "an inline chunk without a palette"),
            _ => {}
        }
    }
    assert!(t.palette.len() <= dxr::PALETTE as usize, "palette too long");
}

/// The chunk of a probed address, unpacked: it starts at the chunk's first address, its
/// ranges ascend, and neighbours with one result are merged.
fn check_chunk(t: &Dxr, addr: u32) {
    let shift = 32 - dxr::V4_DIRECT_BITS;
    let chunk = (addr >> shift) as usize;
    let (lo, hi) = (t.direct[chunk] as usize, t.direct[chunk + 1] as usize);
    assert!(lo < hi, "chunk {chunk} has no range");
    assert_eq!(
        t.starts[lo],
        (chunk as u128) << shift,
        "chunk {chunk} starts elsewhere"
    );
    for i in lo + 1..hi {
        assert!(t.starts[i - 1] < t.starts[i], "chunk {chunk} out of order");
        assert_ne!(
            t.results[i - 1],
            t.results[i],
            "chunk {chunk}: neighbours with one result are merged"
        );
    }
}
