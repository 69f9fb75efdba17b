//! Address lookup: the only module that knows how prefixes are stored for the data path.
//!
//! DXR-style range tables for both families (see `filter_common::dxr`): a direct table
//! indexed by the top 20 address bits gives the chunk's one result, or (IPv4) its few ranges
//! inline, or the slice of its ranges, where a bounded binary search finds the range; the
//! range names the rule. An IPv4 chunk spans 4096 addresses and its 16-byte entry
//! (`filter_common::Chunk`) holds up to seven ranges, so with a million prefixes almost every
//! lookup reads one cache line of the direct table and the table's small palette, which stays
//! cached: that keeps spread traffic over a million prefixes at one cache miss a packet.
//! An IPv6 chunk holding one prefix of at most 64 bits keeps it in its entry, as IPv4 chunks
//! keep a few ranges, and one of up to eight ranges on /64 boundaries is read as one cache
//! line of their starts (`EB_V6_LINES`) rather than searched.
//! A sparse IPv4 table (a short list) is found through an index of 64-chunk regions
//! (`filter_common::Region`, 256 KiB a table) that stores only the chunks that are not a leaf
//! with their region's result, packed: its chunks then fill a few pages, not one page per
//! prefix, which the TLB cannot hold for ten thousand of them.

use aya_ebpf::{bindings::BPF_F_MMAPABLE, macros::map, maps::Array};
use filter_common::{Chunk, MAX_RULES, Range6, Region, RuleEntry, active, direction, dxr};

/// IPv4 tables' indexes: a `Region` per 64 chunks, saying which are stored and where (read
/// only for a table `EB_ACTIVE` says is indexed).
#[map(name = "EB_V4_INDEX")]
static EB_V4_INDEX: Array<Region> =
    Array::with_max_entries(dxr::TABLES * dxr::V4_REGIONS, BPF_F_MMAPABLE);
/// IPv4 tables' chunks, one `Chunk` each (a slice's first index absolute in the range map of
/// the table's direction, the copy's offset included), from `table * V4_CHUNKS`: every chunk
/// in order, or for an indexed table the ones its index says are stored.
#[map(name = "EB_V4_DIRECT")]
static EB_V4_DIRECT: Array<Chunk> =
    Array::with_max_entries(dxr::TABLES * dxr::V4_CHUNKS, BPF_F_MMAPABLE);
/// Per IPv4 table, the results its inline chunks name by palette index (u64: an mmapable
/// array's elements are 8 bytes apart).
#[map(name = "EB_V4_PALETTE")]
static EB_V4_PALETTE: Array<u64> =
    Array::with_max_entries(dxr::TABLES * dxr::PALETTE, BPF_F_MMAPABLE);
/// Both copies of the destination ranges (the loader may size it: EDGEBLOCK_V4_DST_RANGES).
#[map(name = "EB_V4_RNG_DST")]
static EB_V4_RNG_DST: Array<u64> =
    Array::with_max_entries(2 * dxr::DEFAULT_DST_RANGES, BPF_F_MMAPABLE);
/// Both copies of the source ranges (EDGEBLOCK_V4_SRC_RANGES).
#[map(name = "EB_V4_RNG_SRC")]
static EB_V4_RNG_SRC: Array<u64> =
    Array::with_max_entries(2 * dxr::DEFAULT_SRC_RANGES, BPF_F_MMAPABLE);
/// The IPv6 counterparts (EDGEBLOCK_V6_DST_RANGES, EDGEBLOCK_V6_SRC_RANGES).
#[map(name = "EB_V6_DIRECT")]
static EB_V6_DIRECT: Array<u64> =
    Array::with_max_entries(dxr::TABLES * dxr::V6_CHUNKS, BPF_F_MMAPABLE);
/// Per IPv6 table, the results its inline entries name by palette index.
#[map(name = "EB_V6_PALETTE")]
static EB_V6_PALETTE: Array<u64> =
    Array::with_max_entries(dxr::TABLES * dxr::PALETTE, BPF_F_MMAPABLE);
/// Per IPv6 table, `dxr::V6_LINES` lines: chunks of a few ranges read in one cache line.
#[map(name = "EB_V6_LINES")]
static EB_V6_LINES: Array<[u64; dxr::LINE_RANGES]> =
    Array::with_max_entries(dxr::TABLES * dxr::V6_LINES, BPF_F_MMAPABLE);
#[map(name = "EB_V6_RNG_DST")]
static EB_V6_RNG_DST: Array<Range6> =
    Array::with_max_entries(2 * dxr::DEFAULT_V6_DST_RANGES, BPF_F_MMAPABLE);
#[map(name = "EB_V6_RNG_SRC")]
static EB_V6_RNG_SRC: Array<Range6> =
    Array::with_max_entries(2 * dxr::DEFAULT_V6_SRC_RANGES, BPF_F_MMAPABLE);
/// Per copy, the entry of every rule id (both families).
#[map(name = "EB_RESULTS")]
static EB_RESULTS: Array<RuleEntry> = Array::with_max_entries(2 * MAX_RULES, 0);
/// Entry 0: the copy in use (both families) and which of its tables hold prefixes.
#[map(name = "EB_ACTIVE")]
static EB_ACTIVE: Array<u32> = Array::with_max_entries(1, 0);

/// The result of the range `search` finds in the slice of `count` ranges from `first`, 0
/// when the slice is empty (every chunk holds at least one range: an empty slice is a table
/// not yet written).
#[inline(always)]
fn in_slice<R>(
    ranges: &'static Array<R>,
    (first, count): (u32, u32),
    steps: u32,
    at_or_before: impl Fn(&R) -> bool,
    value: impl Fn(&R) -> u32,
) -> u32 {
    let end = first.wrapping_add(count);
    if end <= first {
        return 0;
    }
    search(ranges, (first, end), steps, at_or_before).map_or(0, value)
}

/// The last range of the slice `[lo, hi)` that starts at or before the address, which
/// `at_or_before` compares. Invariant: the range at `lo` qualifies (each slice starts at its
/// chunk's first address).
#[inline(always)]
fn search<R>(
    ranges: &'static Array<R>,
    (mut lo, mut hi): (u32, u32),
    steps: u32,
    at_or_before: impl Fn(&R) -> bool,
) -> Option<&'static R> {
    for _ in 0..steps {
        if hi - lo <= 1 {
            break;
        }
        let mid = lo + (hi - lo) / 2;
        // Branch-free step: one verifier path per iteration, not two.
        let right = u32::from(at_or_before(ranges.get(mid)?)).wrapping_neg();
        lo = (mid & right) | (lo & !right);
        hi = (hi & right) | (mid & !right);
    }
    ranges.get(lo)
}

/// The result (`dxr::SHADOW_SHIFT`) of the range holding `addr` in one direction's IPv4
/// table of the copy `act` (`EB_ACTIVE`) names, through its index if `act` says it has one; 0
/// when nothing matches.
#[inline(always)]
fn v4(act: u32, dir: u8, ranges: &'static Array<u64>, a: u32) -> u32 {
    let table = (act & active::COPY) * 2 + u32::from(dir);
    let mut at = a >> dxr::BOUND_BITS;
    if act & active::v4_indexed(dir) != 0 {
        let Some(region) = EB_V4_INDEX.get(table * dxr::V4_REGIONS + (at >> dxr::REGION_BITS))
        else {
            return 0;
        };
        match region.stored(at & ((1 << dxr::REGION_BITS) - 1)) {
            Some(stored) => at = stored,
            None => return region.leaf,
        }
    }
    let Some(c) = EB_V4_DIRECT.get(table * dxr::V4_CHUNKS + at) else {
        return 0;
    };
    match c.kind() {
        Chunk::LEAF => c.hi as u32,
        Chunk::INLINE => {
            let slot = c.slot(a & ((1 << dxr::BOUND_BITS) - 1));
            EB_V4_PALETTE
                .get(table * dxr::PALETTE + slot)
                .map_or(0, |&r| r as u32)
        }
        _ => in_slice(
            ranges,
            (c.hi as u32, (c.lo >> 32) as u32),
            dxr::SEARCH_STEPS,
            |r| (*r >> 32) as u32 <= a,
            |r| *r as u32,
        ),
    }
}

/// The IPv6 counterpart of `v4`: a chunk holding one prefix of at most 64 bits is inline in
/// its entry (`dxr::V6_INLINE`), one of a few ranges on /64 boundaries is a line
/// (`dxr::V6_LINE`), both naming palette entries; slices compare 128-bit starts as two 64-bit
/// halves.
#[inline(always)]
fn v6(copy: u32, dir: u8, ranges: &'static Array<Range6>, &[hi, lo]: &[u64; 2]) -> u32 {
    let table = copy * 2 + u32::from(dir);
    let chunk = (hi >> (64 - dxr::V6_DIRECT_BITS)) as u32;
    let Some(&d) = EB_V6_DIRECT.get(table * dxr::V6_CHUNKS + chunk) else {
        return 0;
    };
    if d & dxr::LEAF != 0 {
        return d as u32;
    }
    let slot = if d & dxr::V6_INLINE != 0 {
        dxr::v6_inline_slot(d, hi)
    } else if d & dxr::V6_LINE != 0 {
        let Some(line) = EB_V6_LINES.get(table * dxr::V6_LINES + dxr::v6_line_index(d)) else {
            return 0;
        };
        dxr::v6_line_slot(d, line, hi)
    } else {
        return in_slice(
            ranges,
            (d as u32, (d >> 32) as u32),
            dxr::V6_SEARCH_STEPS,
            |r| r.start_hi < hi || (r.start_hi == hi && r.start_lo <= lo),
            |r| r.value as u32,
        );
    };
    EB_V6_PALETTE
        .get(table * dxr::PALETTE + slot)
        .map_or(0, |&r| r as u32)
}

/// `EB_ACTIVE`: the copy in use and which of its tables hold prefixes (`filter_common::active`).
#[inline(always)]
pub fn active() -> u32 {
    EB_ACTIVE.get(0).copied().unwrap_or(0)
}

/// `lookup()` when the table holds prefixes, else 0 without touching it.
#[inline(always)]
fn when(active: u32, table: u32, lookup: impl FnOnce() -> u32) -> u32 {
    if active & table != 0 { lookup() } else { 0 }
}

/// The entry a [`Decision`] slot names (0: none; n: entry n - 1 of `EB_RESULTS`).
#[inline(always)]
pub fn entry(slot: u32) -> Option<&'static RuleEntry> {
    if slot == 0 {
        return None;
    }
    EB_RESULTS.get(slot - 1)
}

/// The `EB_RESULTS` slot of a rule reference (`dxr::reference`) in the active copy.
#[inline(always)]
fn slot(copy: u32, reference: u32) -> u32 {
    let rule = reference & dxr::RULE_MASK;
    if rule == 0 {
        0
    } else {
        copy * MAX_RULES + rule
    }
}

/// Whether the rule a reference names blocks (is not pass): a bit of the reference, so
/// precedence costs no map read.
#[inline(always)]
fn blocks(reference: u32) -> bool {
    reference & dxr::BLOCKS != 0
}

/// Precedence between the directions' rule references: a blocking destination match, else a
/// blocking source match, else a pass match (destination first), else nothing.
#[inline(always)]
fn pick(dst: u32, src: u32) -> u32 {
    if blocks(dst) {
        dst
    } else if blocks(src) {
        src
    } else if dst != 0 {
        dst
    } else {
        src
    }
}

/// What the lookups decided for a packet, as `EB_RESULTS` slots ([`entry`]).
///
/// Plain integers rather than references: the verifier then sees one state, not one per
/// combination of null and non-null pointers, when it walks the rest of the headers
/// (`parse::finish`) after the lookups.
pub struct Decision {
    /// The enforced rule that decides, if any.
    pub rule: u32,
    /// The shadow rule that would decide if the shadow rules were enforced, if any.
    pub shadow: u32,
}

/// Precedence (docs/policy.md): each direction resolves its own longest enforced prefix; a
/// blocking destination match decides, else a blocking source match, else a pass match
/// (destination first), else nothing. The source table is not consulted when the destination
/// already blocks and holds no shadow rule.
///
/// Shadow rules (docs/policy.md, "Shadow mode") go through the same precedence with each
/// direction's longest prefix of all rules in place of its longest enforced one; when the
/// rule that wins that way is a shadow rule, it is the shadow hit. The enforced answer never
/// depends on the shadow halves.
#[inline(always)]
fn decide(copy: u32, dst: u32, src: impl FnOnce() -> u32) -> Decision {
    let d = dst & dxr::ENFORCED_MASK;
    let dst_shadow = dst >> dxr::SHADOW_SHIFT;
    if dst_shadow == 0 && blocks(d) {
        return Decision {
            rule: slot(copy, d),
            shadow: 0,
        };
    }
    let src = src();
    let s = src & dxr::ENFORCED_MASK;
    let src_shadow = src >> dxr::SHADOW_SHIFT;
    let rule = slot(copy, pick(d, s));
    if dst_shadow | src_shadow == 0 {
        return Decision { rule, shadow: 0 };
    }
    let wd = if dst_shadow != 0 { dst_shadow } else { d };
    let ws = if src_shadow != 0 { src_shadow } else { s };
    let w = pick(wd, ws);
    let shadow = if w & dxr::SHADOW_RULE != 0 {
        slot(copy, w)
    } else {
        0
    };
    Decision { rule, shadow }
}

#[inline(always)]
pub fn decide_v4(act: u32, src: u32, dst: u32) -> Decision {
    let copy = act & active::COPY;
    decide(
        copy,
        when(act, active::V4_DST, || {
            v4(act, direction::DST, &EB_V4_RNG_DST, dst)
        }),
        || {
            when(act, active::V4_SRC, || {
                v4(act, direction::SRC, &EB_V4_RNG_SRC, src)
            })
        },
    )
}

#[inline(always)]
pub fn decide_v6(act: u32, src: &[u64; 2], dst: &[u64; 2]) -> Decision {
    let copy = act & active::COPY;
    decide(
        copy,
        when(act, active::V6_DST, || {
            v6(copy, direction::DST, &EB_V6_RNG_DST, dst)
        }),
        || {
            when(act, active::V6_SRC, || {
                v6(copy, direction::SRC, &EB_V6_RNG_SRC, src)
            })
        },
    )
}
