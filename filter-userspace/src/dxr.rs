//! Building the range tables the XDP program searches (`filter_common::dxr`), for IPv4 and
//! IPv6 alike.
//!
//! A table is the whole address space cut into ranges, each with one result: 0 for "no prefix",
//! or the reference (`filter_common::dxr::reference`) of the longest prefix covering it. Shadow
//! rules come in shifted by `SHADOW_SHIFT`, and a range's result is then the longest enforced prefix's
//! reference in the low half with, in the high half, the shadow rule whose prefix is the
//! longest of all when there is one (`filter_common::dxr::SHADOW_SHIFT`). Ranges never cross
//! a chunk (the top 20 address bits), every chunk's slice starts at the
//! chunk's first address, and neighbours in a chunk with the same result are merged.
//! `direct[c]` is the index of chunk `c`'s first range, `direct[chunks]` the number of ranges.
//!
//! [`Packed`] is the form the maps hold: a chunk with one result becomes a leaf of the direct
//! table, an IPv4 chunk of a few ranges sits inline in its entry (`filter_common::Chunk`), and
//! only the other chunks store ranges, at most three per prefix.
//!
//! [`patch`] makes the table of a slightly changed policy from the live one: only the chunks
//! the changed prefixes touch are cut again, so a 1% change to a million prefixes costs a
//! fraction of a whole build.

use ipnet::{Ipv4Net, Ipv6Net};

use std::collections::HashMap;

use filter_common::{Chunk, Range6, Region, dxr};

/// A range table of either family, before encoding for its map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dxr {
    /// Address bits: 32 or 128.
    bits: u32,
    /// Address bits that index the direct table.
    direct_bits: u32,
    /// One entry per chunk: the index of its first range; then the number of ranges.
    pub direct: Vec<u32>,
    /// First address of each range, in address order.
    pub starts: Vec<u128>,
    /// Result of each range: 0, or a rule reference (`filter_common::dxr::reference`).
    pub results: Vec<u32>,
}

impl Dxr {
    /// An IPv4 table from prefixes in ascending (network, length) order (`BTreeMap` order),
    /// each with its result (a rule reference, never 0).
    pub fn build(prefixes: impl IntoIterator<Item = (Ipv4Net, u32)>) -> Self {
        Self::of(prefixes)
    }

    /// The IPv6 counterpart of [`Dxr::build`].
    pub fn build_v6(prefixes: impl IntoIterator<Item = (Ipv6Net, u32)>) -> Self {
        Self::of(prefixes)
    }

    /// The table of prefixes of either family, in ascending (network, length) order.
    pub fn of<P: Span>(prefixes: impl IntoIterator<Item = (P, u32)>) -> Self {
        let top = P::top();
        let mut b = Dxr {
            bits: P::BITS,
            direct_bits: P::DIRECT_BITS,
            direct: vec![0; (1 << P::DIRECT_BITS) + 1],
            starts: Vec::new(),
            results: Vec::new(),
        };
        let spans = prefixes.into_iter().map(|(p, r)| {
            let (first, last) = p.span();
            (first, last, r)
        });
        cut(0, top, spans, |from, to, r| b.emit(from, to, r));
        let end = b.chunks();
        b.direct[end] = b.starts.len() as u32;
        b
    }

    /// Chunks of the direct table.
    pub fn chunks(&self) -> usize {
        1 << self.direct_bits
    }

    /// Address bits below the chunk index.
    fn chunk_bits(&self) -> u32 {
        self.bits - self.direct_bits
    }

    /// Addresses `from..=to` have `result`: split at chunk boundaries, merged with the range
    /// before when it is in the same chunk and has the same result.
    fn emit(&mut self, from: u128, to: u128, result: u32) {
        let shift = self.chunk_bits();
        let mask = (1u128 << shift) - 1;
        let mut a = from;
        loop {
            let chunk_start = a & mask == 0;
            if chunk_start {
                self.direct[(a >> shift) as usize] = self.starts.len() as u32;
            }
            if chunk_start || self.results.last() != Some(&result) {
                self.starts.push(a);
                self.results.push(result);
            }
            let chunk_last = a | mask;
            if chunk_last >= to {
                break;
            }
            a = chunk_last + 1;
        }
    }

    /// Number of ranges.
    pub fn len(&self) -> usize {
        self.starts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }

    /// The result for `addr`, searched the way the XDP program does.
    pub fn lookup(&self, addr: u128) -> u32 {
        let c = (addr >> self.chunk_bits()) as usize;
        let (mut lo, mut hi) = (self.direct[c] as usize, self.direct[c + 1] as usize);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if self.starts[mid] <= addr {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        self.results[lo]
    }

    /// The results inline chunks may name (`EB_V4_PALETTE`, `EB_V6_PALETTE`): the
    /// `dxr::PALETTE` most frequent among the chunks that are small enough, most frequent
    /// first, ties to the lower result.
    fn palette(&self) -> Palette {
        let chunks = (self.direct.windows(2)).map(|w| &self.results[w[0] as usize..w[1] as usize]);
        Palette::new(most_frequent(chunks, |_| false, dxr::PALETTE as usize))
    }

    /// The form the maps hold: one-result chunks as leaves, chunks of up to
    /// `dxr::INLINE_BOUNDS + 1` ranges whose results are all in the palette inline, the other
    /// chunks as slices of the ranges stored.
    pub fn pack(&self) -> Packed {
        let palette = self.palette();
        let mut out = Packed {
            chunk_bits: self.chunk_bits(),
            direct: Vec::with_capacity(self.chunks()),
            ..Packed::default()
        };
        let mut slots = Vec::with_capacity(dxr::INLINE_BOUNDS + 1);
        for w in self.direct.windows(2) {
            let (lo, hi) = (w[0] as usize, w[1] as usize);
            out.push_chunk(
                &self.starts[lo..hi],
                &self.results[lo..hi],
                &palette,
                &mut slots,
            );
        }
        out.palette = palette.results;
        out
    }
}

/// Cut `lo..=hi` into ranges from spans `(first, last, result)` that are nested or disjoint,
/// in ascending (first, wider first) order, and each inside `lo..=hi` or holding all of it:
/// the longest span holding an address gives its result, 0 where none does. `emit` gets
/// `(from, to, result)` in address order; neighbours may have the same result.
fn cut(
    lo: u128,
    hi: u128,
    spans: impl Iterator<Item = (u128, u128, u32)>,
    mut emit: impl FnMut(u128, u128, u32),
) {
    // The next address without a range; None once the window is covered.
    let mut cur: Option<u128> = Some(lo);
    // The spans holding the sweep position, innermost last: (last address, result).
    let mut open: Vec<(u128, u32)> = Vec::new();
    for (first, last, result) in spans {
        while let Some(&(end, r)) = open.last() {
            if end >= first {
                break;
            }
            // A span that ends where a nested one ended has nothing left to emit.
            if let Some(c) = cur
                && c <= end
            {
                emit(c, end, r);
                cur = end.checked_add(1);
            }
            open.pop();
        }
        if let Some(c) = cur
            && c < first
        {
            emit(c, first - 1, open.last().map_or(0, |o| o.1));
            cur = Some(first);
        }
        // Nested spans: the innermost decides. An enforced span replaces both halves (it is
        // the longest prefix of all, and the longest enforced one); a shadow span keeps
        // the enforced half of the span around it.
        let inherited = open.last().map_or(0, |o| o.1) & dxr::ENFORCED_MASK;
        let combined = if result > dxr::ENFORCED_MASK {
            (result & !dxr::ENFORCED_MASK) | inherited
        } else {
            result
        };
        open.push((last, combined));
    }
    while let Some((end, r)) = open.pop() {
        let end = end.min(hi);
        if let Some(c) = cur
            && c <= end
        {
            emit(c, end, r);
            cur = end.checked_add(1);
        }
    }
    if let Some(c) = cur
        && c <= hi
    {
        emit(c, hi, 0);
    }
}

/// A prefix of either family, as the range tables see it.
pub trait Span: Copy + Ord {
    /// Address bits: 32 or 128.
    const BITS: u32;
    /// Address bits that index the direct table.
    const DIRECT_BITS: u32;
    /// First and last address.
    fn span(&self) -> (u128, u128);
    fn bits(&self) -> u32;
    /// The prefix of `len` bits at `addr`, host bits kept: a bound for range queries, which
    /// order prefixes by (address, length).
    fn at(addr: u128, len: u8) -> Self;

    fn top() -> u128 {
        u128::MAX >> (128 - Self::BITS)
    }
}

impl Span for Ipv4Net {
    const BITS: u32 = 32;
    const DIRECT_BITS: u32 = dxr::V4_DIRECT_BITS;
    fn span(&self) -> (u128, u128) {
        (
            u32::from(self.network()).into(),
            u32::from(self.broadcast()).into(),
        )
    }
    fn bits(&self) -> u32 {
        self.prefix_len().into()
    }
    fn at(addr: u128, len: u8) -> Self {
        Ipv4Net::new((addr as u32).into(), len.min(32)).expect("length at most 32")
    }
}

impl Span for Ipv6Net {
    const BITS: u32 = 128;
    const DIRECT_BITS: u32 = dxr::V6_DIRECT_BITS;
    fn span(&self) -> (u128, u128) {
        (self.network().into(), self.broadcast().into())
    }
    fn bits(&self) -> u32 {
        self.prefix_len().into()
    }
    fn at(addr: u128, len: u8) -> Self {
        Ipv6Net::new(addr.into(), len.min(128)).expect("length at most 128")
    }
}

/// The share of chunks (1 in `PATCH_LIMIT`) a change may touch for [`patch`] to rebuild them
/// alone; past it, a whole build costs about the same.
const PATCH_LIMIT: usize = 8;

/// The table of `desired` (sorted by prefix, each once) made from `live`, the packed table of
/// a policy that differs from `desired` only in the prefixes `changed` (added, removed, or with another result): the
/// chunks those prefixes touch are cut again from `desired`, every other chunk is copied, and
/// the ranges are laid out afresh, so nothing a past patch left grows. `wide` lists `desired`'s
/// prefixes of at most `P::DIRECT_BITS` bits (which hold whole chunks) in that order; `result`
/// gives a prefix's result. The palette keeps its results in their slots (unchanged inline
/// chunks name them) and takes new ones while it has room; a chunk whose results are not in
/// it is a slice. `None` when the change touches too many chunks (or `live` is not a table of
/// this family): build the whole table instead.
pub fn patch<P: Span, V>(
    live: &Packed,
    desired: &[(P, V)],
    wide: &[P],
    result: impl Fn(&V) -> u32,
    changed: impl IntoIterator<Item = P>,
) -> Option<Packed> {
    let chunk_bits = P::BITS - P::DIRECT_BITS;
    let chunks = 1usize << P::DIRECT_BITS;
    if live.chunk_bits != chunk_bits || live.direct.len() != chunks {
        return None;
    }
    let mut dirty = Vec::new();
    for p in changed {
        let (first, last) = p.span();
        dirty.extend((first >> chunk_bits) as usize..=(last >> chunk_bits) as usize);
        if dirty.len() > chunks / PATCH_LIMIT {
            // Many changes may share chunks: only distinct chunks count.
            dirty.sort_unstable();
            dirty.dedup();
            if dirty.len() > chunks / PATCH_LIMIT {
                return None;
            }
        }
    }
    dirty.sort_unstable();
    dirty.dedup();

    // Each dirty chunk cut again: the wide prefixes holding it (a stack walked along the
    // ascending chunks), then the prefixes inside it.
    // (chunk, (starts, results))
    let mut cuts = Vec::with_capacity(dirty.len());
    let mut holding: Vec<(u128, u128, u32)> = Vec::new();
    let mut next_wide = wide.iter().peekable();
    for &c in &dirty {
        let lo = (c as u128) << chunk_bits;
        let hi = lo | ((1u128 << chunk_bits) - 1);
        while let Some(p) = next_wide.next_if(|p| p.span().0 <= lo) {
            let (first, last) = p.span();
            while holding.last().is_some_and(|h| h.1 < first) {
                holding.pop();
            }
            let found = desired.binary_search_by(|(q, _)| q.cmp(p)).ok();
            holding.push((first, last, found.map_or(0, |i| result(&desired[i].1))));
        }
        while holding.last().is_some_and(|h| h.1 < lo) {
            holding.pop();
        }
        let (from, to) = (
            P::at(lo, (P::DIRECT_BITS + 1) as u8),
            P::at(hi, P::BITS as u8),
        );
        let inside = desired[desired.partition_point(|(p, _)| *p < from)..]
            .iter()
            .take_while(|(p, _)| *p <= to)
            .map(|(p, v)| {
                let (first, last) = p.span();
                (first, last, result(v))
            });
        let (mut starts, mut results) = (Vec::new(), Vec::new());
        cut(
            lo,
            hi,
            holding.iter().copied().chain(inside),
            |from, _, r| {
                if results.last() != Some(&r) {
                    starts.push(from);
                    results.push(r);
                }
            },
        );
        cuts.push((c, (starts, results)));
    }

    // New results for the palette, most frequent first, while it has room.
    let mut palette = live.palette.clone();
    let known = Palette::new(palette.clone());
    let room = (dxr::PALETTE as usize).saturating_sub(palette.len());
    let cut = cuts.iter().map(|(_, c)| c.1.as_slice());
    palette.extend(most_frequent(cut, |r| known.slot(r).is_some(), room));
    let palette = Palette::new(palette);

    let mut out = Packed {
        chunk_bits,
        direct: Vec::with_capacity(chunks),
        ..Packed::default()
    };
    let mut cuts = cuts.into_iter().peekable();
    let mut slots = Vec::new();
    for (c, chunk) in live.direct.iter().enumerate() {
        if let Some((_, (starts, results))) = cuts.next_if(|(d, _)| *d == c) {
            out.push_chunk(&starts, &results, &palette, &mut slots);
        } else if chunk.kind() == Chunk::SLICE {
            let (first, count) = (chunk.hi as usize, (chunk.lo >> 32) as usize);
            let range = first..first + count;
            out.push_slice(&live.starts[range.clone()], &live.results[range]);
        } else {
            out.direct.push(*chunk);
        }
    }
    out.palette = palette.results;
    Some(out)
}

/// The `n` results most frequent among the chunks (each given as its ranges' results) that
/// could be inline (2 to `dxr::INLINE_BOUNDS + 1` ranges), leaving out those `skip` names;
/// ties to the lower result.
fn most_frequent<'a>(
    chunks: impl Iterator<Item = &'a [u32]>,
    skip: impl Fn(u32) -> bool,
    n: usize,
) -> Vec<u32> {
    let mut counts = ByResult::new(0u32);
    for results in chunks.filter(|r| (2..=dxr::INLINE_BOUNDS + 1).contains(&r.len())) {
        for &r in results.iter().filter(|&&r| !skip(r)) {
            *counts.get_mut(r) += 1;
        }
    }
    let mut ranked = counts.into_vec();
    ranked.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    ranked.into_iter().take(n).map(|(r, _)| r).collect()
}

/// A value per result: in an array for enforced references alone (below 2^16, nearly every
/// result), in a hash for the others. Hashing a million prefixes' results would take much of
/// the time a 1% change may.
struct ByResult<V> {
    narrow: Vec<V>,
    wide: HashMap<u32, V>,
    /// The value of a result never set.
    unset: V,
}

impl<V: Copy + PartialEq> ByResult<V> {
    const NARROW: usize = 1 << 16;

    fn new(unset: V) -> Self {
        Self {
            narrow: vec![unset; Self::NARROW],
            wide: HashMap::new(),
            unset,
        }
    }

    fn get(&self, r: u32) -> V {
        match self.narrow.get(r as usize) {
            Some(&v) => v,
            None => self.wide.get(&r).copied().unwrap_or(self.unset),
        }
    }

    fn get_mut(&mut self, r: u32) -> &mut V {
        match self.narrow.get_mut(r as usize) {
            Some(v) => v,
            None => self.wide.entry(r).or_insert(self.unset),
        }
    }

    /// Every result set, with its value.
    fn into_vec(self) -> Vec<(u32, V)> {
        let unset = self.unset;
        let narrow = self.narrow.into_iter().enumerate();
        narrow
            .map(|(r, v)| (r as u32, v))
            .chain(self.wide)
            .filter(|&(_, v)| v != unset)
            .collect()
    }
}

/// A table's palette and the index of each result in it.
struct Palette {
    results: Vec<u32>,
    index: ByResult<u8>,
}

impl Palette {
    fn new(results: Vec<u32>) -> Self {
        let mut index = ByResult::new(u8::MAX);
        for (i, &r) in results.iter().enumerate() {
            *index.get_mut(r) = i as u8;
        }
        Self { results, index }
    }

    fn is_empty(&self) -> bool {
        self.results.is_empty()
    }

    fn slot(&self, r: u32) -> Option<u8> {
        Some(self.index.get(r)).filter(|&i| i != u8::MAX)
    }
}

/// A table as its maps hold it: the direct entries (`Chunk`s; a slice's first index relative
/// to the copy's start; IPv6 tables hold leaves and slices only), the palette inline chunks
/// name their results in, and the ranges of the chunks that are slices. The default is the
/// table of nothing, with no chunk: every lookup gives 0.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Packed {
    chunk_bits: u32,
    pub direct: Vec<Chunk>,
    /// At most `dxr::PALETTE` results.
    pub palette: Vec<u32>,
    pub starts: Vec<u128>,
    pub results: Vec<u32>,
    /// The most ranges of any chunk: the search must reach the end of it.
    pub longest: usize,
}

impl Packed {
    /// A table read back from its maps: `direct` with slices indexing `starts`/`results`
    /// (relative to the copy), `palette` the results inline chunks name.
    pub fn from_parts(
        chunk_bits: u32,
        direct: Vec<Chunk>,
        palette: Vec<u32>,
        starts: Vec<u128>,
        results: Vec<u32>,
    ) -> Self {
        let longest = direct
            .iter()
            .filter(|c| c.kind() == Chunk::SLICE)
            .map(|c| (c.lo >> 32) as usize)
            .max()
            .unwrap_or(0);
        Self {
            chunk_bits,
            direct,
            palette,
            starts,
            results,
            longest,
        }
    }

    /// Append the chunk of ranges `starts` (the first at the chunk's first address) with
    /// `results`: a leaf when it has one, inline when it has few and the palette names them
    /// all (IPv6: when they are one prefix of at most 64 bits and what is around it), else a
    /// slice. `slots` is scratch space.
    fn push_chunk(
        &mut self,
        starts: &[u128],
        results: &[u32],
        palette: &Palette,
        slots: &mut Vec<u8>,
    ) {
        if starts.len() == 1 {
            self.direct.push(Chunk::leaf(results[0]));
            return;
        }
        if self.chunk_bits > dxr::BOUND_BITS {
            match v6_inline(starts, results, self.chunk_bits, palette) {
                Some(entry) => self.direct.push(Chunk {
                    lo: Chunk::INLINE,
                    hi: entry,
                }),
                None => self.push_slice(starts, results),
            }
            return;
        }
        slots.clear();
        if starts.len() <= dxr::INLINE_BOUNDS + 1 && !palette.is_empty() {
            slots.extend(results.iter().map_while(|&r| palette.slot(r)));
        }
        if slots.len() == starts.len() {
            let mut bounds = [0u16; dxr::INLINE_BOUNDS];
            for (b, &s) in bounds.iter_mut().zip(&starts[1..]) {
                *b = (s - starts[0]) as u16;
            }
            self.direct
                .push(Chunk::inline(&bounds[..starts.len() - 1], slots));
        } else {
            self.push_slice(starts, results);
        }
    }

    /// Append a chunk stored as a slice of ranges.
    fn push_slice(&mut self, starts: &[u128], results: &[u32]) {
        self.direct
            .push(Chunk::slice(self.starts.len() as u64, starts.len() as u32));
        self.starts.extend_from_slice(starts);
        self.results.extend_from_slice(results);
        self.longest = self.longest.max(starts.len());
    }

    /// Ranges stored.
    pub fn len(&self) -> usize {
        self.starts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }

    /// The result for `addr`, exactly as the XDP program finds it: a leaf, an inline chunk's
    /// palette entry, or at most `steps` halvings of the chunk's slice.
    pub fn lookup(&self, addr: u128, steps: u32) -> u32 {
        let Some(&c) = self.direct.get((addr >> self.chunk_bits) as usize) else {
            return 0;
        };
        match c.kind() {
            Chunk::LEAF => return c.hi as u32,
            Chunk::INLINE if self.chunk_bits > dxr::BOUND_BITS => {
                let slot = dxr::v6_inline_slot(c.hi, (addr >> 64) as u64);
                return self.palette.get(slot as usize).copied().unwrap_or(0);
            }
            Chunk::INLINE => {
                let offset = (addr & ((1u128 << self.chunk_bits) - 1)) as u32;
                return self
                    .palette
                    .get(c.slot(offset) as usize)
                    .copied()
                    .unwrap_or(0);
            }
            _ => {}
        }
        let mut lo = c.hi as usize;
        let mut hi = lo + (c.lo >> 32) as usize;
        if hi <= lo {
            return 0;
        }
        for _ in 0..steps {
            if hi - lo <= 1 {
                break;
            }
            let mid = lo + (hi - lo) / 2;
            if self.starts[mid] <= addr {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        self.results[lo]
    }

    /// The ranges as `EB_V4_RNG_*` holds them.
    pub fn encode_v4(&self) -> Vec<u64> {
        self.starts
            .iter()
            .zip(&self.results)
            .map(|(s, r)| dxr::range(*s as u32, *r))
            .collect()
    }

    /// The ranges as `EB_V6_RNG_*` holds them.
    pub fn encode_v6(&self) -> Vec<Range6> {
        self.starts
            .iter()
            .zip(&self.results)
            .map(|(s, r)| Range6 {
                start_hi: (s >> 64) as u64,
                start_lo: *s as u64,
                value: u64::from(*r),
            })
            .collect()
    }
}

/// The inline entry (`dxr::v6_inline`) of an IPv6 chunk whose two or three ranges are one
/// prefix of at most 64 bits and what is around it (which has one result), both results in
/// the palette; None for any other chunk.
fn v6_inline(starts: &[u128], results: &[u32], chunk_bits: u32, palette: &Palette) -> Option<u64> {
    let last = starts[0] | ((1u128 << chunk_bits) - 1);
    // (first address, last address, result) of the prefix; the result around it.
    let ((lo, hi, inside), outside) = match (starts, results) {
        (&[_, s1], &[r0, r1]) if (last - s1 + 1).is_power_of_two() => ((s1, last, r1), r0),
        (&[s0, s1], &[r0, r1]) => ((s0, s1 - 1, r0), r1),
        (&[_, s1, s2], &[r0, r1, r2]) if r0 == r2 => ((s1, s2 - 1, r1), r0),
        _ => return None,
    };
    let size = hi - lo + 1;
    // A prefix: a power of two of addresses, aligned; at most 64 bits: at least 2^64 of them.
    if !size.is_power_of_two() || lo % size != 0 || size.trailing_zeros() < 64 {
        return None;
    }
    let len = 128 - size.trailing_zeros();
    let (inside, outside) = (palette.slot(inside)?, palette.slot(outside)?);
    Some(dxr::v6_inline(
        (lo >> 64) as u64,
        len as u8,
        inside,
        outside,
    ))
}

/// The line (`dxr::v6_line`, `EB_V6_LINES`) of an IPv6 chunk of 2 to `dxr::LINE_RANGES`
/// ranges that all start on a /64 boundary, each result in `palette`: the line, and the
/// palette indexes for its entry. None for any other chunk.
pub fn line(
    starts: &[u128],
    results: &[u32],
    palette: &[u32],
) -> Option<([u64; dxr::LINE_RANGES], u32)> {
    if !(2..=dxr::LINE_RANGES).contains(&starts.len()) || starts.iter().any(|&s| s as u64 != 0) {
        return None;
    }
    let mut line = [u64::MAX; dxr::LINE_RANGES];
    line[0] = starts.len() as u64;
    let (mut slots, mut slot) = (0, 0);
    for i in 0..dxr::LINE_RANGES {
        if let Some(&r) = results.get(i) {
            let at = palette.iter().position(|&p| p == r)?;
            slot = u32::try_from(at).ok().filter(|&i| i < dxr::PALETTE)?;
            if i > 0 {
                line[i] = (starts[i] >> 64) as u64;
            }
        }
        // Past the last range, its index again (`dxr::v6_line_slot`).
        slots |= slot << (dxr::PALETTE_BITS * i as u32);
    }
    Some((line, slots))
}

/// The ranges of the line `line` read back, with the chunk's first address and its entry's
/// palette indexes: `line`'s inverse. None when the line does not hold one.
pub fn unline(
    first: u128,
    line: &[u64; dxr::LINE_RANGES],
    slots: u32,
    palette: &[u32],
) -> Option<(Vec<u128>, Vec<u32>)> {
    let n = usize::try_from(line[0])
        .ok()
        .filter(|n| (2..=dxr::LINE_RANGES).contains(n))?;
    let starts = (0..n)
        .map(|i| {
            if i == 0 {
                first
            } else {
                u128::from(line[i]) << 64
            }
        })
        .collect();
    let results = (0..n)
        .map(|i| {
            let slot = (slots >> (dxr::PALETTE_BITS * i as u32)) & (dxr::PALETTE - 1);
            palette.get(slot as usize).copied()
        })
        .collect::<Option<Vec<u32>>>()?;
    Some((starts, results))
}

/// The index of an IPv4 table's chunks (`EB_V4_INDEX`, one `Region` per 64 chunks) and the
/// chunks it says are stored, in order: every chunk but the leaves with their region's result,
/// which is the result most of the region's leaves have (ties to the first).
pub fn index(direct: &[Chunk]) -> (Vec<Region>, Vec<Chunk>) {
    let per = 1usize << dxr::REGION_BITS;
    let mut regions = Vec::with_capacity(direct.len() / per);
    let mut stored = Vec::new();
    let mut counts: Vec<(u32, u32)> = Vec::with_capacity(per);
    for chunks in direct.chunks(per) {
        counts.clear();
        for c in chunks.iter().filter(|c| c.kind() == Chunk::LEAF) {
            let r = c.hi as u32;
            match counts.iter_mut().find(|(x, _)| *x == r) {
                Some((_, n)) => *n += 1,
                None => counts.push((r, 1)),
            }
        }
        // The first of the most frequent: `max_by_key` keeps the last of equals.
        let leaf = counts
            .iter()
            .rev()
            .max_by_key(|&&(_, n)| n)
            .map_or(0, |&(r, _)| r);
        let mut region = Region {
            present: 0,
            base: stored.len() as u32,
            leaf,
        };
        for (bit, c) in chunks.iter().enumerate() {
            if *c != Chunk::leaf(leaf) {
                region.present |= 1 << bit;
                stored.push(*c);
            }
        }
        regions.push(region);
    }
    (regions, stored)
}

/// The chunks of a table back from its index (`index`); `stored(i)` gives stored chunk `i`.
/// `None` when the index names a chunk `stored` does not have.
pub fn unindex(regions: &[Region], stored: impl Fn(usize) -> Option<Chunk>) -> Option<Vec<Chunk>> {
    let per = 1u32 << dxr::REGION_BITS;
    let mut direct = Vec::with_capacity(regions.len() * per as usize);
    for r in regions {
        for bit in 0..per {
            direct.push(match r.stored(bit) {
                Some(at) => stored(at as usize)?,
                None => Chunk::leaf(r.leaf),
            });
        }
    }
    Some(direct)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::Ipv4Addr;

    use super::*;

    /// The longest enforced prefix's result, with the longest prefix's in the high half when
    /// that one is a shadow result (results above `ENFORCED_MASK`).
    fn naive(prefixes: &BTreeMap<Ipv4Net, u32>, addr: u32) -> u32 {
        let a = Ipv4Addr::from(addr);
        let holding = || prefixes.iter().filter(|(p, _)| p.contains(&a));
        let enforced = holding()
            .filter(|(_, r)| **r <= dxr::ENFORCED_MASK)
            .max_by_key(|(p, _)| p.prefix_len())
            .map_or(0, |(_, r)| *r);
        match holding().max_by_key(|(p, _)| p.prefix_len()) {
            Some((_, r)) if *r > dxr::ENFORCED_MASK => (r & !dxr::ENFORCED_MASK) | enforced,
            _ => enforced,
        }
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

    const V4_CHUNK_BITS: u32 = 32 - dxr::V4_DIRECT_BITS;

    fn check(prefixes: &BTreeMap<Ipv4Net, u32>, seed: &mut u64) {
        let t = Dxr::build(prefixes.iter().map(|(p, r)| (*p, *r)));
        assert!(t.len() <= 2 * prefixes.len() + dxr::V4_CHUNKS as usize + 1);
        for c in 0..dxr::V4_CHUNKS as usize {
            let first = t.starts[t.direct[c] as usize];
            assert_eq!(
                first,
                (c as u128) << V4_CHUNK_BITS,
                "chunk {c} starts its slice"
            );
            assert!(t.direct[c] < t.direct[c + 1], "chunk {c} has a range");
        }
        for i in 1..t.len() {
            assert!(
                t.starts[i - 1] < t.starts[i],
                "ranges ascend strictly at {i}"
            );
            let same_chunk = t.starts[i] & ((1 << V4_CHUNK_BITS) - 1) != 0;
            assert!(
                !same_chunk || t.results[i - 1] != t.results[i],
                "neighbours with one result are merged at {i}"
            );
        }
        let packed = t.pack();
        assert!(
            packed.len() <= 3 * prefixes.len(),
            "at most three ranges per prefix"
        );
        assert!(packed.longest <= 1 << dxr::SEARCH_STEPS);
        for a in probes(prefixes, seed) {
            let want = naive(prefixes, a);
            let addr = Ipv4Addr::from(a);
            assert_eq!(t.lookup(u128::from(a)), want, "address {addr}");
            assert_eq!(
                packed.lookup(u128::from(a), dxr::SEARCH_STEPS),
                want,
                "packed, address {addr}"
            );
        }
    }

    #[test]
    fn shadow_halves_hold_the_longest_prefix_when_it_is_a_shadow_rule() {
        let shadow = |r: u32| r << dxr::SHADOW_SHIFT;
        let t = Dxr::build([
            (net("10.0.0.0/8"), 1),
            (net("10.1.0.0/16"), shadow(2)),
            (net("10.1.1.0/24"), 3),
            (net("10.1.1.128/25"), shadow(4)),
            (net("192.168.0.0/16"), shadow(5)),
        ]);
        let at = |a: &str| t.lookup(u128::from(u32::from(a.parse::<Ipv4Addr>().expect("addr"))));
        assert_eq!(at("10.9.0.1"), 1);
        assert_eq!(at("10.1.9.1"), 1 | shadow(2), "enforced /8, shadow /16");
        assert_eq!(at("10.1.1.1"), 3, "the enforced /24 is longest: no shadow");
        assert_eq!(at("10.1.1.200"), 3 | shadow(4));
        assert_eq!(at("192.168.3.3"), shadow(5), "shadow alone");
        assert_eq!(at("172.16.0.1"), 0);
    }

    #[test]
    fn chunks_of_up_to_seven_ranges_pack_inline_without_ranges() {
        let shadow = |r: u32| r << dxr::SHADOW_SHIFT;
        let prefixes: BTreeMap<Ipv4Net, u32> = [
            // Alone in chunk 10.0.0.0/20: three ranges.
            (net("10.0.1.0/24"), 7),
            // At a chunk's end: two ranges.
            (net("10.0.31.0/24"), 8),
            // Inside a wider prefix: the wider one's result around it.
            (net("172.16.0.0/12"), 2),
            (net("172.16.4.4/32"), 9),
            // Three intervals in one chunk, one of them a shadow rule's: seven ranges.
            (net("192.0.2.0/28"), 3),
            (net("192.0.2.64/28"), 4),
            (net("192.0.2.128/32"), shadow(5)),
            // Four intervals: nine ranges, a slice.
            (net("198.51.100.0/30"), 3),
            (net("198.51.100.8/30"), 3),
            (net("198.51.100.16/30"), 3),
            (net("198.51.100.24/30"), 3),
        ]
        .into_iter()
        .collect();
        let packed = Dxr::build(prefixes.iter().map(|(p, r)| (*p, *r))).pack();
        let entry = |a: &str| {
            let a = u32::from(a.parse::<Ipv4Addr>().expect("addr"));
            packed.direct[(a >> V4_CHUNK_BITS) as usize]
        };
        let kind = |a: &str| kind_name(entry(a));
        for a in ["10.0.1.1", "10.0.31.1", "172.16.4.4", "192.0.2.1"] {
            assert_eq!(kind(a), "inline", "{a}");
        }
        assert_eq!(kind("198.51.100.1"), "slice");
        assert_eq!(kind("172.17.0.1"), "leaf");
        // The palette holds each result inline chunks name, the most frequent first.
        assert_eq!(packed.palette[0], 0);
        let mut named = packed.palette.clone();
        named.sort_unstable();
        assert_eq!(named, [0, 2, 3, 4, 7, 8, 9, shadow(5)]);
        // Only the slice stores ranges.
        assert_eq!(packed.len(), 9);
        check(&prefixes, &mut 7);
    }

    #[test]
    fn results_beyond_the_palette_make_slices() {
        // One prefix per chunk, each with its own result: the palette takes the most frequent
        // (ties to the lower result), and chunks naming the others keep their ranges.
        let n = dxr::PALETTE + 10;
        let prefixes: BTreeMap<Ipv4Net, u32> = (0..n)
            .map(|i| {
                let a = Ipv4Addr::from((i + 1) << V4_CHUNK_BITS | 0x100);
                (Ipv4Net::new(a, 24).expect("len"), i + 1)
            })
            .collect();
        let packed = Dxr::build(prefixes.iter().map(|(p, r)| (*p, *r))).pack();
        assert_eq!(packed.palette.len(), dxr::PALETTE as usize);
        let inline = packed
            .direct
            .iter()
            .filter(|c| c.kind() == Chunk::INLINE)
            .count();
        // 0 takes a slot: the others fill the rest.
        assert_eq!(inline, dxr::PALETTE as usize - 1);
        assert_eq!(packed.len(), 3 * (n as usize - inline));
        check(&prefixes, &mut 11);
    }

    #[test]
    fn inline_entries_give_each_offset_its_range() {
        // Every number of boundaries, at the edges of the offsets they can take.
        for k in 0..=dxr::INLINE_BOUNDS {
            let bounds: Vec<u16> = (0..k as u16)
                .map(|i| 1 + i * 800 + (i == 5) as u16 * 94)
                .collect();
            let slots: Vec<u8> = (0..=k as u8).map(|i| dxr::PALETTE as u8 - 1 - i).collect();
            let c = Chunk::inline(&bounds, &slots);
            assert_eq!(c.kind(), Chunk::INLINE);
            for offset in 0..(1 << dxr::BOUND_BITS) {
                let range = bounds.iter().filter(|&&b| u32::from(b) <= offset).count();
                assert_eq!(
                    c.slot(offset),
                    u32::from(slots[range]),
                    "k {k} offset {offset}"
                );
            }
        }
    }

    #[test]
    fn empty_table_has_one_empty_range_per_chunk_and_packs_to_leaves() {
        let t = Dxr::build([]);
        assert_eq!(t.len(), dxr::V4_CHUNKS as usize);
        assert_eq!(t.lookup(0x0102_0304), 0);
        let p = t.pack();
        assert!(p.is_empty());
        assert!(p.direct.iter().all(|&d| d == Chunk::leaf(0)));
        let t6 = Dxr::build_v6([]);
        assert_eq!(t6.len(), dxr::V6_CHUNKS as usize);
        assert_eq!(t6.lookup(u128::MAX), 0);
        assert!(t6.pack().is_empty());
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

    /// Found by the compile fuzz target: spans nested so that they end on the same address
    /// used to leave a spurious range behind the inner one.
    #[test]
    fn nested_prefixes_ending_together() {
        let prefixes: BTreeMap<Ipv4Net, u32> = [
            (net("10.0.0.0/8"), 1),
            (net("10.255.0.0/16"), 2),
            (net("10.255.255.0/24"), 3),
            (net("10.255.255.255/32"), 3),
            (net("11.0.0.0/8"), 3),
        ]
        .into_iter()
        .collect();
        check(&prefixes, &mut 5);
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
    fn the_branch_free_count_of_ones_is_count_ones() {
        let mut seed = 11;
        for x in [0, 1, u64::MAX, 1 << 63, 0x5555_5555_5555_5555]
            .into_iter()
            .chain((0..10_000).map(|_| next(&mut seed) >> (next(&mut seed) % 64)))
        {
            assert_eq!(filter_common::ones(x), x.count_ones(), "{x:#x}");
        }
    }

    /// Every chunk of `direct` as the program finds it through `index`'s regions.
    fn through_the_index(direct: &[Chunk]) -> (usize, Vec<Chunk>) {
        let (regions, stored) = index(direct);
        assert_eq!(regions.len() << dxr::REGION_BITS, direct.len());
        let found = (0..direct.len() as u32)
            .map(|c| {
                let r = regions[(c >> dxr::REGION_BITS) as usize];
                match r.stored(c & ((1 << dxr::REGION_BITS) - 1)) {
                    Some(at) => stored[at as usize],
                    None => Chunk::leaf(r.leaf),
                }
            })
            .collect();
        let back = unindex(&regions, |i| stored.get(i).copied()).expect("in range");
        assert_eq!(back, direct, "unindex gives the table back");
        if !stored.is_empty() {
            assert_eq!(unindex(&regions, |_| None), None, "a stored chunk missing");
        }
        (stored.len(), found)
    }

    #[test]
    fn an_index_stores_only_chunks_other_than_their_regions_leaf() {
        let mut seed = 5;
        // Short lists under covering prefixes of other results: regions whose leaf is not 0.
        for round in 0..20 {
            let mut prefixes = random_policy(&mut seed, 1 + round * 20, &[1, 2, 3]);
            prefixes.insert(net("10.0.0.0/8"), 4);
            prefixes.insert(net("10.64.0.0/10"), 0);
            prefixes.insert(net("172.16.0.0/12"), 5);
            let packed = Dxr::build(prefixes.iter().map(|(p, r)| (*p, *r))).pack();
            let (stored, found) = through_the_index(&packed.direct);
            assert_eq!(found, packed.direct, "round {round}");
            assert!(
                stored
                    <= packed
                        .direct
                        .iter()
                        .filter(|c| **c != Chunk::leaf(0))
                        .count(),
                "no more stored than chunks other than an empty leaf"
            );
        }
        // An empty table stores nothing; a table of one leaf everywhere neither.
        let empty = Dxr::build(std::iter::empty()).pack();
        assert_eq!(through_the_index(&empty.direct).0, 0);
        let everywhere = Dxr::build([(net("0.0.0.0/0"), 7)]).pack();
        assert_eq!(through_the_index(&everywhere.direct).0, 0);
        // A region whose 64 chunks all differ stores 63 of them, in order: the first becomes
        // its leaf.
        let mut dense = vec![Chunk::leaf(0); dxr::V4_CHUNKS as usize];
        for (i, c) in dense.iter_mut().enumerate().take(64) {
            *c = Chunk::leaf(i as u32);
        }
        let (stored, found) = through_the_index(&dense);
        assert_eq!((stored, found), (63, dense), "one of the 64 is the leaf");
    }

    #[test]
    fn a_large_table_packs_to_at_most_three_ranges_per_prefix() {
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
        assert!(t.len() <= 2 * prefixes.len() + dxr::V4_CHUNKS as usize);
        let packed = t.pack();
        assert!(packed.len() <= 3 * prefixes.len());
        let mut s = 3;
        for _ in 0..20_000 {
            let a = next(&mut s) as u32;
            let want = naive_fast(&prefixes, a);
            assert_eq!(t.lookup(a.into()), want);
            assert_eq!(packed.lookup(a.into(), dxr::SEARCH_STEPS), want);
        }
    }

    #[test]
    fn ipv6_tables_agree_with_a_naive_matcher() {
        use std::net::Ipv6Addr;
        let mut seed = 0x1234_5678;
        for _ in 0..40 {
            let anchors: Vec<u128> = (0..3)
                .map(|_| u128::from(next(&mut seed)) << 64 | u128::from(next(&mut seed)))
                .collect();
            let mut prefixes: BTreeMap<Ipv6Net, u32> = BTreeMap::new();
            prefixes.insert("::/0".parse().expect("net"), 9);
            for _ in 0..(1 + next(&mut seed) % 200) {
                let len = (next(&mut seed) % 129) as u8;
                let base = anchors[(next(&mut seed) % 3) as usize]
                    ^ (u128::from(next(&mut seed)) >> (next(&mut seed) % 64));
                let p = Ipv6Net::new(Ipv6Addr::from(base), len)
                    .expect("len")
                    .trunc();
                prefixes.insert(p, 1 + (next(&mut seed) % 4) as u32);
            }
            let t = Dxr::build_v6(prefixes.iter().map(|(p, r)| (*p, *r)));
            let mut probes = vec![0u128, u128::MAX, 1 << 127];
            for p in prefixes.keys() {
                let (s, e) = (u128::from(p.network()), u128::from(p.broadcast()));
                probes.extend([s, e, s.wrapping_sub(1), e.wrapping_add(1)]);
            }
            for _ in 0..500 {
                probes.push(anchors[(next(&mut seed) % 3) as usize] ^ u128::from(next(&mut seed)));
            }
            let packed = t.pack();
            for a in probes {
                let want = prefixes
                    .iter()
                    .filter(|(p, _)| p.contains(&Ipv6Addr::from(a)))
                    .max_by_key(|(p, _)| p.prefix_len())
                    .map_or(0, |(_, r)| *r);
                assert_eq!(t.lookup(a), want, "address {}", Ipv6Addr::from(a));
                assert_eq!(
                    packed.lookup(a, dxr::V6_SEARCH_STEPS),
                    want,
                    "packed, address {}",
                    Ipv6Addr::from(a)
                );
            }
        }
    }

    #[test]
    fn ipv6_chunks_holding_one_prefix_of_at_most_64_bits_are_inline() {
        use std::net::Ipv6Addr;
        let net = |s: &str| s.parse::<Ipv6Net>().expect("net");
        let kind = |packed: &Packed, a: &str| {
            let a = u128::from(a.parse::<Ipv6Addr>().expect("addr"));
            kind_name(packed.direct[(a >> (128 - dxr::V6_DIRECT_BITS)) as usize])
        };
        // In 2001:1000::/20: a /48 mid-chunk. At the start of 2001:2000::/20: a /32. At the
        // end of 2001:3000::/20: a /64. In 2001:4000::/20, a /65: too long. In
        // 2001:5000::/20, two prefixes. Under a covering /16 (result 2 around): a /40.
        let prefixes: BTreeMap<Ipv6Net, u32> = [
            (net("2001:1234:5678::/48"), 1),
            (net("2001:2000::/32"), 1),
            (net("2001:3fff:ffff:ffff::/64"), 1),
            (net("2001:4000::/65"), 1),
            (net("2001:5000::/32"), 1),
            (net("2001:5001::/32"), 3),
            (net("2002::/16"), 2),
            (net("2002:1:200::/40"), 1),
        ]
        .into_iter()
        .collect();
        let t = Dxr::build_v6(prefixes.iter().map(|(p, r)| (*p, *r)));
        let packed = t.pack();
        for (a, want) in [
            ("2001:1234:5678::1", "inline"),
            ("2001:2000::1", "inline"),
            ("2001:3fff:ffff:ffff::1", "inline"),
            ("2001:4000::1", "slice"),
            ("2001:5000::1", "slice"),
            ("2002:1:200::1", "inline"),
            ("2002:1000::", "leaf"),
        ] {
            assert_eq!(kind(&packed, a), want, "{a}");
        }
        // Each prefix's edges and middle, against the table it was packed from.
        for p in prefixes.keys() {
            let (s, e) = (u128::from(p.network()), u128::from(p.broadcast()));
            for a in [s, e, s.wrapping_sub(1), e.wrapping_add(1), s + (e - s) / 2] {
                assert_eq!(
                    packed.lookup(a, dxr::V6_SEARCH_STEPS),
                    t.lookup(a),
                    "{}",
                    Ipv6Addr::from(a)
                );
            }
        }
        // A result the palette does not hold keeps its chunk a slice: 0, around the /48.
        let chunk = 0x20012;
        let (lo, hi) = (t.direct[chunk] as usize, t.direct[chunk + 1] as usize);
        let mut one = Packed {
            chunk_bits: 128 - dxr::V6_DIRECT_BITS,
            ..Packed::default()
        };
        for palette in [vec![1, 0], vec![1]] {
            one.push_chunk(
                &t.starts[lo..hi],
                &t.results[lo..hi],
                &Palette::new(palette),
                &mut Vec::new(),
            );
        }
        assert_eq!(one.direct[0].kind(), Chunk::INLINE);
        assert_eq!(
            one.direct[1].kind(),
            Chunk::SLICE,
            "0 is not in the palette"
        );
    }

    #[test]
    fn ipv6_lines_give_every_address_its_range_and_read_back_whole() {
        use std::net::Ipv6Addr;
        let mut seed = 0x6c69_6e65;
        let mut lines = 0;
        for round in 0..60 {
            // A few chunks (the last of the space among them), each with a few prefixes of
            // 21-64 bits, some nested, some longer than 64 bits (no line then).
            let chunks = [0x20010_u128, 0x3ffff, 0xfffff, 0x2a001];
            let mut prefixes: BTreeMap<Ipv6Net, u32> = BTreeMap::new();
            for _ in 0..(1 + next(&mut seed) % 6) {
                let chunk = chunks[(next(&mut seed) % 4) as usize];
                let len = if round % 5 == 0 && next(&mut seed).is_multiple_of(4) {
                    65 + (next(&mut seed) % 64) as u8
                } else {
                    21 + (next(&mut seed) % 44) as u8
                };
                let low = (u128::from(next(&mut seed)) << 64 | u128::from(next(&mut seed))) >> 20;
                let p = Ipv6Net::new(Ipv6Addr::from(chunk << 108 | low), len)
                    .expect("len")
                    .trunc();
                prefixes.insert(p, 1 + (next(&mut seed) % 3) as u32);
            }
            let t = Dxr::build_v6(prefixes.iter().map(|(p, r)| (*p, *r)));
            let packed = t.pack();
            for &chunk in &chunks {
                let c = packed.direct[chunk as usize];
                if c.kind() != Chunk::SLICE {
                    continue;
                }
                let range = c.hi as usize..c.hi as usize + (c.lo >> 32) as usize;
                let (starts, results) = (&packed.starts[range.clone()], &packed.results[range]);
                let Some((line, slots)) = line(starts, results, &packed.palette) else {
                    let long = starts.iter().any(|&s| s as u64 != 0);
                    assert!(long || starts.len() > dxr::LINE_RANGES, "{starts:x?}");
                    continue;
                };
                lines += 1;
                let first = chunk << 108;
                assert_eq!(
                    unline(first, &line, slots, &packed.palette),
                    Some((starts.to_vec(), results.to_vec()))
                );
                let entry = dxr::v6_line(7, slots);
                let last = first | ((1u128 << 108) - 1);
                let mut probes = vec![first, last];
                for &s in starts {
                    probes.extend([s, s.saturating_sub(1).max(first), s | ((1 << 64) - 1)]);
                }
                for a in probes {
                    let slot = dxr::v6_line_slot(entry, &line, (a >> 64) as u64);
                    assert_eq!(
                        packed.palette[slot as usize],
                        t.lookup(a),
                        "{}",
                        Ipv6Addr::from(a)
                    );
                }
            }
        }
        assert!(lines > 20, "only {lines} chunks were lines");
    }

    /// How a packed chunk is stored, for assertions.
    fn kind_name(c: Chunk) -> &'static str {
        match c.kind() {
            Chunk::LEAF => "leaf",
            Chunk::INLINE => "inline",
            _ => "slice",
        }
    }

    /// A random policy over a few anchors (nesting is common), results from `results`.
    fn random_policy(seed: &mut u64, n: usize, results: &[u32]) -> BTreeMap<Ipv4Net, u32> {
        let anchors: Vec<u32> = (0..4).map(|_| next(seed) as u32).collect();
        let mut prefixes = BTreeMap::new();
        for _ in 0..n {
            prefixes.insert(random_prefix(seed, &anchors), pick(seed, results));
        }
        prefixes
    }

    fn random_prefix(seed: &mut u64, anchors: &[u32]) -> Ipv4Net {
        let len = (next(seed) % 33) as u8;
        let base = anchors[(next(seed) % anchors.len() as u64) as usize]
            ^ (next(seed) as u32 >> (next(seed) % 32));
        Ipv4Net::new(Ipv4Addr::from(base), len)
            .expect("len <= 32")
            .trunc()
    }

    fn pick(seed: &mut u64, results: &[u32]) -> u32 {
        results[(next(seed) % results.len() as u64) as usize]
    }

    /// A map's entries as the sorted slice `patch` takes.
    fn sorted<P: Copy, V: Copy>(map: &BTreeMap<P, V>) -> Vec<(P, V)> {
        map.iter().map(|(p, v)| (*p, *v)).collect()
    }

    /// Patch `live` (the table of `before`) into the table of `after`, and check it against
    /// a naive matcher and a whole build at the edges of every prefix of both.
    fn patched(
        live: &Packed,
        before: &BTreeMap<Ipv4Net, u32>,
        after: &BTreeMap<Ipv4Net, u32>,
        seed: &mut u64,
    ) -> Option<Packed> {
        let mut changed: Vec<Ipv4Net> = before
            .iter()
            .filter(|(p, r)| after.get(p) != Some(r))
            .map(|(p, _)| *p)
            .collect();
        changed.extend(after.keys().filter(|p| !before.contains_key(p)));
        let wide: Vec<Ipv4Net> = after
            .keys()
            .filter(|p| p.prefix_len() <= dxr::V4_DIRECT_BITS as u8)
            .copied()
            .collect();
        let table = patch(live, &sorted(after), &wide, |r| *r, changed)?;
        let whole = Dxr::build(after.iter().map(|(p, r)| (*p, *r))).pack();
        let mut addrs = probes(after, seed);
        addrs.extend(probes(before, seed));
        for a in addrs {
            let want = naive(after, a);
            let addr = Ipv4Addr::from(a);
            assert_eq!(table.lookup(a.into(), 32), want, "patched, address {addr}");
            assert_eq!(whole.lookup(a.into(), 32), want, "whole, address {addr}");
        }
        assert!(table.palette.len() <= dxr::PALETTE as usize);
        Some(table)
    }

    #[test]
    fn patched_tables_agree_with_whole_builds_over_many_changes() {
        let mut seed = 0x05ee_d0f7_a7c4;
        let shadow = |r: u32| r << dxr::SHADOW_SHIFT;
        let results = [1, 2, 3, shadow(4), shadow(5), 0x8000 | 6];
        let mut patches = 0;
        for _ in 0..12 {
            let n = 1 + (next(&mut seed) % 200) as usize;
            let mut before = random_policy(&mut seed, n, &results);
            let mut live = Dxr::build(before.iter().map(|(p, r)| (*p, *r))).pack();
            let anchors: Vec<u32> = (0..4).map(|_| next(&mut seed) as u32).collect();
            // Each round patches the last round's patched table, not a fresh build: what a
            // patch leaves behind must be as good as a build.
            for _ in 0..8 {
                let mut after = before.clone();
                for _ in 0..(next(&mut seed) % 12) {
                    match next(&mut seed) % 3 {
                        0 => {
                            after.insert(
                                random_prefix(&mut seed, &anchors),
                                pick(&mut seed, &results),
                            );
                        }
                        1 => {
                            let k = after
                                .keys()
                                .nth((next(&mut seed) as usize) % after.len().max(1))
                                .copied();
                            k.map(|k| after.remove(&k));
                        }
                        _ => {
                            let k = after
                                .keys()
                                .nth((next(&mut seed) as usize) % after.len().max(1))
                                .copied();
                            k.map(|k| after.insert(k, pick(&mut seed, &results)));
                        }
                    }
                }
                // A change over too many chunks is left to a whole build.
                live = match patched(&live, &before, &after, &mut seed) {
                    Some(table) => {
                        patches += 1;
                        table
                    }
                    None => Dxr::build(after.iter().map(|(p, r)| (*p, *r))).pack(),
                };
                before = after;
            }
        }
        assert!(patches >= 48, "most changes patch ({patches} of 96)");
    }

    #[test]
    fn a_full_palette_leaves_new_results_to_slices() {
        let mut seed = 99;
        let results: Vec<u32> = (1..=40).collect();
        let before = random_policy(&mut seed, 300, &results[..20]);
        let live = Dxr::build(before.iter().map(|(p, r)| (*p, *r))).pack();
        assert_eq!(
            live.palette.len(),
            dxr::PALETTE as usize,
            "20 results fill the palette"
        );
        let mut after = before.clone();
        for (i, (p, v)) in after.iter_mut().enumerate() {
            if i % 3 == 0 && p.prefix_len() >= 16 {
                *v = results[20 + i % 20];
            }
        }
        let table = patched(&live, &before, &after, &mut seed).expect("a small change patches");
        assert_eq!(
            table.palette[..],
            live.palette[..],
            "slots in use keep their results"
        );
    }

    #[test]
    fn a_change_over_too_many_chunks_is_left_to_a_whole_build() {
        let before: BTreeMap<Ipv4Net, u32> = [(net("10.0.0.0/8"), 1)].into();
        let live = Dxr::build(before.iter().map(|(p, r)| (*p, *r))).pack();
        let after: BTreeMap<Ipv4Net, u32> = [(net("0.0.0.0/1"), 1)].into();
        let wide: Vec<Ipv4Net> = after.keys().copied().collect();
        let after = sorted(&after);
        assert!(patch(&live, &after, &wide, |r| *r, [net("0.0.0.0/1")]).is_none());
        assert!(
            patch(
                &Packed::default(),
                &after,
                &wide,
                |r| *r,
                [net("10.0.0.0/8")]
            )
            .is_none()
        );
    }

    #[test]
    fn patched_ipv6_tables_agree_with_a_naive_matcher() {
        use std::net::Ipv6Addr;
        let mut seed = 0xabc;
        let anchor = u128::from(next(&mut seed)) << 64 | u128::from(next(&mut seed));
        let random = |seed: &mut u64| {
            let len = (next(seed) % 129) as u8;
            let base = anchor ^ (u128::from(next(seed)) << (next(seed) % 64));
            Ipv6Net::new(Ipv6Addr::from(base), len)
                .expect("len")
                .trunc()
        };
        let mut before: BTreeMap<Ipv6Net, u32> = BTreeMap::new();
        for _ in 0..150 {
            let p = random(&mut seed);
            before.insert(p, 1 + (next(&mut seed) % 4) as u32);
        }
        let mut live = Dxr::build_v6(before.iter().map(|(p, r)| (*p, *r))).pack();
        for _ in 0..6 {
            let mut after = before.clone();
            let mut changed = Vec::new();
            for _ in 0..5 {
                let p = random(&mut seed);
                if p.prefix_len() > 20 {
                    after.insert(p, 1 + (next(&mut seed) % 4) as u32);
                    changed.push(p);
                }
                if let Some(k) = after
                    .keys()
                    .nth((next(&mut seed) as usize) % after.len())
                    .copied()
                {
                    after.remove(&k);
                    changed.push(k);
                }
            }
            let wide: Vec<Ipv6Net> = after
                .keys()
                .filter(|p| p.prefix_len() <= 20)
                .copied()
                .collect();
            live = patch(&live, &sorted(&after), &wide, |r| *r, changed).expect("small change");
            let mut probes = vec![0u128, u128::MAX, anchor];
            for p in after.keys().chain(before.keys()) {
                let (s, e) = (u128::from(p.network()), u128::from(p.broadcast()));
                probes.extend([s, e, s.wrapping_sub(1), e.wrapping_add(1)]);
            }
            for a in probes {
                let want = after
                    .iter()
                    .filter(|(p, _)| p.contains(&Ipv6Addr::from(a)))
                    .max_by_key(|(p, _)| p.prefix_len())
                    .map_or(0, |(_, r)| *r);
                assert_eq!(live.lookup(a, 128), want, "address {}", Ipv6Addr::from(a));
            }
            before = after;
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
