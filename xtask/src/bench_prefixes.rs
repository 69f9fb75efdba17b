//! The benchmark's prefix lists: random, deterministic for a seed, without duplicates, in a mix
//! of lengths that looks like real block lists (mostly /24 and /32 for IPv4, /48 and /64 for
//! IPv6, a few short prefixes), and kept clear of the ranges the benchmark sends its "miss"
//! probes to and of the special-purpose ranges a host or its gateway is likely to use.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};

/// splitmix64: small, fast, and the same sequence on every machine for a seed.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`); the modulo bias is far below anything measured here.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// An IPv4 prefix: network address (host bits zero) and length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct V4 {
    pub addr: u32,
    pub len: u8,
}

/// An IPv6 prefix: network address (host bits zero) and length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct V6 {
    pub addr: u128,
    pub len: u8,
}

fn mask4(len: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0)
}

fn mask6(len: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0)
}

impl V4 {
    pub fn new(addr: u32, len: u8) -> Self {
        Self {
            addr: addr & mask4(len),
            len,
        }
    }

    pub fn last(self) -> u32 {
        self.addr | !mask4(self.len)
    }

    /// A random address inside the prefix.
    pub fn host(self, rng: &mut Rng) -> Ipv4Addr {
        Ipv4Addr::from(self.addr | (rng.next_u64() as u32 & !mask4(self.len)))
    }

    fn overlaps(self, other: V4) -> bool {
        self.addr <= other.last() && other.addr <= self.last()
    }
}

impl V6 {
    pub fn new(addr: u128, len: u8) -> Self {
        Self {
            addr: addr & mask6(len),
            len,
        }
    }

    pub fn last(self) -> u128 {
        self.addr | !mask6(self.len)
    }

    pub fn host(self, rng: &mut Rng) -> Ipv6Addr {
        let r = (u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64());
        Ipv6Addr::from(self.addr | (r & !mask6(self.len)))
    }

    fn overlaps(self, other: V6) -> bool {
        self.addr <= other.last() && other.addr <= self.last()
    }
}

impl std::fmt::Display for V4 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.addr), self.len)
    }
}

impl std::fmt::Display for V6 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", Ipv6Addr::from(self.addr), self.len)
    }
}

/// Where IPv4 "miss" probes go: 198.18.0.0/15 (RFC 2544, benchmarking), never in a list.
pub const V4_MISS_NET: V4 = V4 {
    addr: u32::from_be_bytes([198, 18, 0, 0]),
    len: 15,
};

/// Where IPv6 "miss" probes go: 2001:db8::/32 (documentation), never in a list.
pub const V6_MISS_NET: V6 = V6 {
    addr: 0x2001_0db8 << 96,
    len: 32,
};

/// The source address of every probe frame: also in the benchmarking range, so that a
/// filter that looks at sources finds nothing there either.
pub const V4_SRC: Ipv4Addr = Ipv4Addr::new(198, 19, 255, 1);
pub const V6_SRC: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 1);

/// IPv4 space the lists never touch: "this network", private, CGN, loopback, link-local,
/// IETF/documentation/benchmarking ranges, multicast and reserved. Real block lists avoid
/// them too (FireHOL's level-1 list aside), and keeping them out means a list never covers
/// this machine's own address or gateway, so `edgeblock apply` has no lockout to refuse.
const V4_EXCLUDED: [V4; 13] = [
    V4 { addr: 0, len: 8 },
    V4 {
        addr: 10 << 24,
        len: 8,
    },
    V4 {
        addr: (100 << 24) | (64 << 16),
        len: 10,
    },
    V4 {
        addr: 127 << 24,
        len: 8,
    },
    V4 {
        addr: (169 << 24) | (254 << 16),
        len: 16,
    },
    V4 {
        addr: (172 << 24) | (16 << 16),
        len: 12,
    },
    V4 {
        addr: 192 << 24,
        len: 24,
    },
    V4 {
        addr: (192 << 24) | (2 << 8),
        len: 24,
    },
    V4 {
        addr: (192 << 24) | (168 << 16),
        len: 16,
    },
    V4_MISS_NET,
    V4 {
        addr: (198 << 24) | (51 << 16) | (100 << 8),
        len: 24,
    },
    V4 {
        addr: (203 << 24) | (113 << 8),
        len: 24,
    },
    V4 {
        addr: 224 << 24,
        len: 3,
    },
];

/// The IPv4 length mix, as (shortest, longest, weight in parts per 10,000). Short prefixes
/// are rare in real lists (and a few hundred random /8../15 would cover a large share of the
/// whole space), so they get a fixed small share.
const V4_MIX: [(u8, u8, u64); 6] = [
    (8, 15, 1),
    (16, 19, 100),
    (20, 23, 900),
    (24, 24, 4000),
    (25, 31, 500),
    (32, 32, 4499),
];

/// The IPv6 length mix: mostly /48 (sites) and /64 (subnets), some /32 (allocations) and
/// /128 (hosts).
const V6_MIX: [(u8, u8, u64); 7] = [
    (32, 32, 1000),
    (33, 47, 1000),
    (48, 48, 4000),
    (49, 63, 500),
    (64, 64, 2500),
    (65, 127, 200),
    (128, 128, 800),
];

fn pick_len(rng: &mut Rng, mix: &[(u8, u8, u64)]) -> u8 {
    let total: u64 = mix.iter().map(|m| m.2).sum();
    let mut r = rng.below(total);
    for &(lo, hi, w) in mix {
        if r < w {
            return lo + rng.below(u64::from(hi - lo) + 1) as u8;
        }
        r -= w;
    }
    unreachable!("r < total")
}

/// `n` distinct IPv4 prefixes. The first `k` of `v4_list(seed, n)` are `v4_list(seed, k)`, so
/// the smaller lists of a run are prefixes of the larger ones.
pub fn v4_list(seed: u64, n: usize) -> Vec<V4> {
    let mut rng = Rng::new(seed);
    let mut seen = HashSet::with_capacity(n);
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let len = pick_len(&mut rng, &V4_MIX);
        let p = V4::new(rng.next_u64() as u32, len);
        if V4_EXCLUDED.iter().any(|x| x.overlaps(p)) || !seen.insert(p) {
            continue;
        }
        out.push(p);
    }
    out
}

/// `n` distinct IPv6 prefixes inside 2000::/3 (global unicast), clear of 2001:db8::/32.
pub fn v6_list(seed: u64, n: usize) -> Vec<V6> {
    let mut rng = Rng::new(seed ^ 0x6666_6666_6666_6666);
    let mut seen = HashSet::with_capacity(n);
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let len = pick_len(&mut rng, &V6_MIX);
        let r = (u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64());
        let p = V6::new((0b001 << 125) | (r >> 3), len);
        if V6_MISS_NET.overlaps(p) || !seen.insert(p) {
            continue;
        }
        out.push(p);
    }
    out
}

/// A prefix list file's text: one prefix per line.
pub fn list_text<P: std::fmt::Display>(prefixes: &[P]) -> String {
    let mut s = String::with_capacity(prefixes.len() * 20);
    for p in prefixes {
        // Writing to a String cannot fail.
        let _ = writeln!(s, "{p}");
    }
    s
}

/// The share of each prefix length, for the report: (length, count).
pub fn length_histogram(lens: impl Iterator<Item = u8>) -> Vec<(u8, usize)> {
    let mut counts = [0usize; 129];
    for l in lens {
        counts[usize::from(l)] += 1;
    }
    counts
        .iter()
        .enumerate()
        .filter(|(_, c)| **c > 0)
        .map(|(l, c)| (l as u8, *c))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_deterministic_nested_and_distinct() {
        let a = v4_list(7, 5000);
        assert_eq!(a, v4_list(7, 5000));
        assert_eq!(&a[..1000], &v4_list(7, 1000)[..]);
        assert_ne!(a, v4_list(8, 5000));
        let set: HashSet<_> = a.iter().collect();
        assert_eq!(set.len(), a.len());
        let b = v6_list(7, 3000);
        let set: HashSet<_> = b.iter().collect();
        assert_eq!(set.len(), b.len());
    }

    #[test]
    fn lists_avoid_the_miss_ranges_and_keep_host_bits_clear() {
        for p in v4_list(1, 20_000) {
            assert!(!p.overlaps(V4_MISS_NET), "{p}");
            assert_eq!(p.addr & !mask4(p.len), 0, "{p}");
            assert!((8..=32).contains(&p.len));
        }
        for p in v6_list(1, 20_000) {
            assert!(!p.overlaps(V6_MISS_NET), "{p}");
            assert_eq!(p.addr & !mask6(p.len), 0, "{p}");
            assert!((32..=128).contains(&p.len));
            assert_eq!(p.addr >> 125, 1, "{p} is outside 2000::/3");
        }
    }

    #[test]
    fn mostly_slash_24_and_32() {
        let h = length_histogram(v4_list(3, 100_000).iter().map(|p| p.len));
        let share = |len| h.iter().find(|(l, _)| *l == len).map_or(0, |(_, c)| *c);
        assert!(share(24) + share(32) > 80_000, "{h:?}");
    }

    #[test]
    fn hosts_stay_inside_their_prefix() {
        let mut rng = Rng::new(5);
        for p in v4_list(2, 1000) {
            let h = u32::from(p.host(&mut rng));
            assert!(p.addr <= h && h <= p.last());
        }
        for p in v6_list(2, 1000) {
            let h = u128::from(p.host(&mut rng));
            assert!(p.addr <= h && h <= p.last());
        }
    }

    #[test]
    fn list_text_is_one_prefix_per_line() {
        let text = list_text(&[V4::new(0x0a00_0001, 8), V4::new(0xc000_0201, 32)]);
        assert_eq!(text, "10.0.0.0/8\n192.0.2.1/32\n");
        let text = list_text(&[V6::new(0x2001_0db8 << 96, 32)]);
        assert_eq!(text, "2001:db8::/32\n");
    }
}
