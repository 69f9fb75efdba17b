//! The IPv6 direct-table encodings the program reads (a prefix inline in its chunk's entry, a
//! line of starts, a slice of ranges) as `apply` writes them, as the program judges them, and
//! as a later apply reads them back to patch them.
//!
//! Needs root; run through `cargo xtask test`.

mod common;

use std::net::Ipv6Addr;

use common::{Harness, XDP_DROP, XDP_PASS};
use edgeblock::dxr::Packed;
use edgeblock_tests::packet::Frame;
use filter_common::{active, direction, dxr};

/// A /48 alone in its chunk (inline); three prefixes of at most 64 bits in one chunk (a line);
/// a /64 beside a /128 (a slice: the /128 does not start on a /64 boundary).
const PREFIXES: [&str; 6] = [
    "2001:1234:5678::/48",
    "2001:3000::/48",
    "2001:3000:1::/48",
    "2001:3000:2::/56",
    "2001:5000::/64",
    "2001:5000:1::1/128",
];

fn policy(prefixes: &[&str]) -> String {
    let list: Vec<String> = prefixes.iter().map(|p| format!("\"{p}\"")).collect();
    format!(
        "[[rule]]\nname = \"v6\"\naction = \"drop\"\nprefixes = [{}]\n",
        list.join(", ")
    )
}

fn a(s: &str) -> Ipv6Addr {
    s.parse().expect("address")
}

/// Addresses in each prefix and around it, with whether a prefix holds them.
fn probes(prefixes: &[&str]) -> Vec<(Ipv6Addr, bool)> {
    let nets: Vec<ipnet::Ipv6Net> = prefixes.iter().map(|p| p.parse().expect("net")).collect();
    let mut out = Vec::new();
    for n in &nets {
        let (first, last) = (u128::from(n.network()), u128::from(n.broadcast()));
        for x in [first - 1, first, first + (last - first) / 2, last, last + 1] {
            let x = Ipv6Addr::from(x);
            out.push((x, nets.iter().any(|n| n.contains(&x))));
        }
    }
    out
}

/// The raw direct entry of the chunk holding `addr` in the active copy's destination table.
fn entry(h: &Harness, addr: Ipv6Addr) -> u64 {
    let maps = &h.filter.maps;
    let copy = maps.active_word().expect("EB_ACTIVE") & active::COPY;
    let chunk = (u128::from(addr) >> (128 - dxr::V6_DIRECT_BITS)) as usize;
    let table = (copy * 2 + u32::from(direction::DST)) as usize;
    maps.v6.direct.as_slice()[table * dxr::V6_CHUNKS as usize + chunk]
}

/// How the chunk holding `addr` is stored.
fn kind(h: &Harness, addr: &str) -> &'static str {
    let e = entry(h, a(addr));
    if e & dxr::LEAF != 0 {
        "leaf"
    } else if e & dxr::V6_INLINE != 0 {
        "inline"
    } else if e & dxr::V6_LINE != 0 {
        "line"
    } else {
        "slice"
    }
}

fn read_back(h: &Harness) -> Packed {
    let maps = &h.filter.maps;
    let copy = maps.active_word().expect("EB_ACTIVE") & active::COPY;
    maps.v6
        .read(copy, direction::DST, false)
        .expect("the table reads back")
}

fn check(h: &Harness, prefixes: &[&str]) {
    let table = read_back(h);
    for (addr, listed) in probes(prefixes) {
        let frame = Frame::v6(a("2001:db8::1"), addr).build();
        let want = if listed { XDP_DROP } else { XDP_PASS };
        assert_eq!(h.verdict(&frame), want, "the program, {addr}");
        let found = table.lookup(u128::from(addr), dxr::V6_SEARCH_STEPS);
        assert_eq!(
            found != 0,
            listed,
            "the table read back, {addr}: {found:#x}"
        );
    }
}

#[test]
fn ipv6_inline_entries_lines_and_slices_are_judged_and_read_back_as_written() {
    let mut h = Harness::new();
    h.apply(&policy(&PREFIXES));
    assert_eq!(kind(&h, "2001:1234:5678::1"), "inline");
    assert_eq!(kind(&h, "2001:3000::1"), "line");
    assert_eq!(kind(&h, "2001:5000::1"), "slice");
    assert_eq!(kind(&h, "2001:7000::1"), "leaf");
    check(&h, &PREFIXES);

    // A small change is patched into the tables read back: a fourth prefix in the line's
    // chunk, the /128 gone (its chunk becomes inline), a second prefix beside the inline one.
    let changed = [
        "2001:1234:5678::/48",
        "2001:1234:9999::/48",
        "2001:3000::/48",
        "2001:3000:1::/48",
        "2001:3000:2::/56",
        "2001:3000:ffff::/64",
        "2001:5000::/64",
    ];
    h.apply(&policy(&changed));
    assert_eq!(kind(&h, "2001:1234:5678::1"), "line");
    assert_eq!(kind(&h, "2001:3000::1"), "line");
    assert_eq!(kind(&h, "2001:5000::1"), "inline");
    check(&h, &changed);
}
