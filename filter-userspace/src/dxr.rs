//! Building the IPv4 range tables the XDP program searches (`filter_common::dxr`).
//!
//! A table is the whole IPv4 space cut into ranges, each with one result: 0 for "no prefix",
//! or `rule_id + 1` of the longest prefix covering it. Ranges never cross a 2^16 chunk, every
//! chunk's slice starts at the chunk's first address, and neighbours in a chunk with the same
//! result are merged, so a table has at most (2 x prefixes + 65536) ranges. `direct[c]` is the
//! index of chunk `c`'s first range, `direct[65536]` the number of ranges.

use ipnet::Ipv4Net;

use filter_common::dxr;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dxr {
    /// `dxr::DIRECT_LEN` entries.
    pub direct: Vec<u32>,
    /// `dxr::range(start, result)` values, in address order.
    pub ranges: Vec<u64>,
}

impl Dxr {
    /// Builds the table from prefixes in ascending (network, length) order (`BTreeMap` order),
    /// each with its result (`rule_id + 1`, never 0).
    pub fn build(prefixes: impl IntoIterator<Item = (Ipv4Net, u32)>) -> Self {
        let mut b = Builder {
            direct: vec![0; dxr::DIRECT_LEN as usize],
            ranges: Vec::new(),
        };
        // Positions as u64: a range may end at 255.255.255.255.
        let mut cur: u64 = 0;
        // The prefixes covering the sweep position, innermost last: (last address, result).
        let mut open: Vec<(u64, u32)> = Vec::new();
        for (net, result) in prefixes {
            let start = u64::from(u32::from(net.network()));
            let end = u64::from(u32::from(net.broadcast()));
            while let Some(&(last, r)) = open.last() {
                if last >= start {
                    break;
                }
                b.emit(cur, last, r);
                cur = last + 1;
                open.pop();
            }
            if cur < start {
                b.emit(cur, start - 1, open.last().map_or(0, |o| o.1));
                cur = start;
            }
            open.push((end, result));
        }
        while let Some((last, r)) = open.pop() {
            if cur <= last {
                b.emit(cur, last, r);
                cur = last + 1;
            }
        }
        if cur <= u64::from(u32::MAX) {
            b.emit(cur, u64::from(u32::MAX), 0);
        }
        b.direct[dxr::CHUNKS as usize] = b.ranges.len() as u32;
        Self {
            direct: b.direct,
            ranges: b.ranges,
        }
    }

    /// The result for `addr`, searched the way the XDP program does.
    pub fn lookup(&self, addr: u32) -> u32 {
        let c = (addr >> 16) as usize;
        let (mut lo, mut hi) = (self.direct[c] as usize, self.direct[c + 1] as usize);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if (self.ranges[mid] >> 32) as u32 <= addr {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        self.ranges[lo] as u32
    }
}

struct Builder {
    direct: Vec<u32>,
    ranges: Vec<u64>,
}

impl Builder {
    /// Addresses `from..=to` have `result`.
    fn emit(&mut self, from: u64, to: u64, result: u32) {
        let mut a = from;
        while a <= to {
            let chunk_last = a | 0xffff;
            let chunk_start = a & 0xffff == 0;
            let same = self.ranges.last().is_some_and(|r| *r as u32 == result);
            if chunk_start {
                self.direct[(a >> 16) as usize] = self.ranges.len() as u32;
                self.ranges.push(dxr::range(a as u32, result));
            } else if !same {
                self.ranges.push(dxr::range(a as u32, result));
            }
            a = chunk_last.min(to) + 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::Ipv4Addr;

    use super::*;

    fn naive(prefixes: &BTreeMap<Ipv4Net, u32>, addr: u32) -> u32 {
        let a = Ipv4Addr::from(addr);
        prefixes
            .iter()
            .filter(|(p, _)| p.contains(&a))
            .max_by_key(|(p, _)| p.prefix_len())
            .map_or(0, |(_, r)| *r)
    }

    fn net(s: &str) -> Ipv4Net {
        s.parse().expect("test prefix")
    }

    /// Edges of every prefix and their neighbours, plus random addresses.
    fn probes(prefixes: &BTreeMap<Ipv4Net, u32>, seed: &mut u64) -> Vec<u32> {
        let mut out = vec![0, 1, u32::MAX, u32::MAX - 1, 0x8000_0000];
        for p in prefixes.keys() {
            let (s, e) = (u32::from(p.network()), u32::from(p.broadcast()));
            out.extend([s, e, s.wrapping_sub(1), e.wrapping_add(1), s / 2 + e / 2]);
        }
        for _ in 0..2000 {
            out.push(next(seed) as u32);
        }
        out
    }

    fn next(seed: &mut u64) -> u64 {
        // xorshift64*: deterministic, good enough to scatter test prefixes.
        *seed ^= *seed >> 12;
        *seed ^= *seed << 25;
        *seed ^= *seed >> 27;
        seed.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn check(prefixes: &BTreeMap<Ipv4Net, u32>, seed: &mut u64) {
        let t = Dxr::build(prefixes.iter().map(|(p, r)| (*p, *r)));
        assert!(t.ranges.len() <= 2 * prefixes.len() + dxr::CHUNKS as usize + 1);
        for c in 0..dxr::CHUNKS as usize {
            let first = t.ranges[t.direct[c] as usize];
            assert_eq!(
                (first >> 32) as u32,
                (c as u32) << 16,
                "chunk {c} starts its slice"
            );
            assert!(t.direct[c] < t.direct[c + 1], "chunk {c} has a range");
        }
        for a in probes(prefixes, seed) {
            assert_eq!(
                t.lookup(a),
                naive(prefixes, a),
                "address {}",
                Ipv4Addr::from(a)
            );
        }
    }

    #[test]
    fn empty_table_has_one_empty_range_per_chunk() {
        let t = Dxr::build([]);
        assert_eq!(t.ranges.len(), dxr::CHUNKS as usize);
        assert_eq!(t.lookup(0x0102_0304), 0);
    }

    #[test]
    fn nested_and_adjacent_prefixes() {
        let prefixes: BTreeMap<Ipv4Net, u32> = [
            (net("0.0.0.0/0"), 1),
            (net("10.0.0.0/8"), 2),
            (net("10.1.0.0/16"), 3),
            (net("10.1.2.0/24"), 4),
            (net("10.1.2.3/32"), 5),
            (net("10.1.2.4/31"), 4),
            (net("10.1.3.0/24"), 6),
            (net("11.0.0.0/8"), 2),
            (net("255.255.255.255/32"), 7),
            (net("203.0.113.0/25"), 8),
            (net("203.0.113.128/25"), 9),
        ]
        .into_iter()
        .collect();
        check(&prefixes, &mut 42);
    }

    #[test]
    fn random_policies_agree_with_a_naive_matcher() {
        let mut seed = 0x9e37_79b9_7f4a_7c15;
        for round in 0..60 {
            let mut prefixes = BTreeMap::new();
            let n = 1 + (next(&mut seed) % 300) as usize;
            // Few anchors: overlaps and nesting are common.
            let anchors: Vec<u32> = (0..4).map(|_| next(&mut seed) as u32).collect();
            for _ in 0..n {
                let len = (next(&mut seed) % 33) as u8;
                let base = anchors[(next(&mut seed) % 4) as usize]
                    ^ (next(&mut seed) as u32 >> (next(&mut seed) % 32));
                let p = Ipv4Net::new(Ipv4Addr::from(base), len)
                    .expect("len <= 32")
                    .trunc();
                prefixes.insert(p, 1 + (next(&mut seed) % 5) as u32);
            }
            check(&prefixes, &mut seed);
            assert!(round < 60);
        }
    }

    #[test]
    fn a_large_table_stays_within_two_ranges_per_prefix_plus_the_chunks() {
        let mut seed = 7;
        let mut prefixes = BTreeMap::new();
        while prefixes.len() < 200_000 {
            let len = [24u8, 24, 24, 32, 32, 16, 20, 28][(next(&mut seed) % 8) as usize];
            let p = Ipv4Net::new(Ipv4Addr::from(next(&mut seed) as u32), len)
                .expect("len")
                .trunc();
            prefixes.insert(p, 1);
        }
        let t = Dxr::build(prefixes.iter().map(|(p, r)| (*p, *r)));
        assert!(t.ranges.len() <= 2 * prefixes.len() + dxr::CHUNKS as usize);
        let mut s = 3;
        for _ in 0..20_000 {
            let a = next(&mut s) as u32;
            assert_eq!(t.lookup(a), naive_fast(&prefixes, a));
        }
    }

    /// Longest match by trying each length: fast enough for big tables.
    fn naive_fast(prefixes: &BTreeMap<Ipv4Net, u32>, addr: u32) -> u32 {
        (0..=32u8)
            .rev()
            .find_map(|len| {
                let p = Ipv4Net::new(Ipv4Addr::from(addr), len)
                    .expect("len")
                    .trunc();
                prefixes.get(&p).copied()
            })
            .unwrap_or(0)
    }
}
