//! Address lookup: the only module that knows how prefixes are stored for the data path.
//!
//! IPv4: DXR-style range tables (see `filter_common::dxr`): a direct table indexed by the top
//! 16 address bits gives the slice of ranges in that chunk, a bounded binary search finds the
//! range, and the range names the rule. The hot part (the direct table, 512 KiB per table and
//! copy) stays in cache, and a lookup touches a handful of cache lines however many prefixes
//! there are. IPv6: one kernel LPM trie per direction.

use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    macros::map,
    maps::{Array, LpmTrie, lpm_trie::Key},
};
use filter_common::{MAX_RULES, MAX_V6_PREFIXES, RuleEntry, action, direction, dxr};

/// Direct tables: start of each chunk's slice of ranges, as an absolute index into the range
/// map of the table's direction (the copy's offset included).
#[map(name = "EB_V4_DIRECT")]
static EB_V4_DIRECT: Array<u64> =
    Array::with_max_entries(dxr::TABLES * dxr::DIRECT_LEN, BPF_F_MMAPABLE);
/// Both copies of the destination ranges (the loader may size it: EDGEBLOCK_V4_DST_RANGES).
#[map(name = "EB_V4_RNG_DST")]
static EB_V4_RNG_DST: Array<u64> =
    Array::with_max_entries(2 * dxr::DEFAULT_DST_RANGES, BPF_F_MMAPABLE);
/// Both copies of the source ranges (EDGEBLOCK_V4_SRC_RANGES).
#[map(name = "EB_V4_RNG_SRC")]
static EB_V4_RNG_SRC: Array<u64> =
    Array::with_max_entries(2 * dxr::DEFAULT_SRC_RANGES, BPF_F_MMAPABLE);
/// Per copy, the entry of every rule id.
#[map(name = "EB_V4_RESULTS")]
static EB_V4_RESULTS: Array<RuleEntry> = Array::with_max_entries(2 * MAX_RULES, 0);
/// Entry 0: the copy in use.
#[map(name = "EB_V4_ACTIVE")]
static EB_V4_ACTIVE: Array<u32> = Array::with_max_entries(1, 0);

#[map(name = "EB_DST_V6")]
static EB_DST_V6: LpmTrie<[u8; 16], RuleEntry> = LpmTrie::with_max_entries(MAX_V6_PREFIXES, 0);
#[map(name = "EB_SRC_V6")]
static EB_SRC_V6: LpmTrie<[u8; 16], RuleEntry> = LpmTrie::with_max_entries(MAX_V6_PREFIXES, 0);

/// The rule of the range holding `addr` in one direction's IPv4 table.
#[inline(always)]
fn v4(dir: u8, ranges: &'static Array<u64>, addr: [u8; 4]) -> Option<&'static RuleEntry> {
    // Ranges compare as integers: one byte swap per lookup.
    let a = u32::from_be_bytes(addr);
    let copy = *EB_V4_ACTIVE.get(0)? & 1;
    let base = (copy * 2 + u32::from(dir)) * dxr::DIRECT_LEN + (a >> 16);
    let mut lo = *EB_V4_DIRECT.get(base)? as u32;
    let mut hi = *EB_V4_DIRECT.get(base + 1)? as u32;
    if hi <= lo {
        // Every chunk holds at least one range: an empty slice is a table not yet written.
        return None;
    }
    // Invariant: the range at `lo` starts at or before `a` (each slice starts at its chunk's
    // first address); the answer is the last such range in [lo, hi).
    for _ in 0..dxr::SEARCH_STEPS {
        if hi - lo <= 1 {
            break;
        }
        let mid = lo + (hi - lo) / 2;
        if (*ranges.get(mid)? >> 32) as u32 <= a {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let result = *ranges.get(lo)? as u32;
    if result == 0 {
        return None;
    }
    EB_V4_RESULTS.get(copy * MAX_RULES + (result - 1))
}

#[inline(always)]
fn lpm<const N: usize>(
    map: &'static LpmTrie<[u8; N], RuleEntry>,
    addr: &[u8; N],
) -> Option<&'static RuleEntry> {
    map.get(Key::new((N * 8) as u32, *addr))
}

/// Precedence (docs/policy.md): each direction resolves its own longest prefix; a blocking
/// (non-pass) destination match decides, else a blocking source match, else a pass match
/// (destination first), else nothing. The source table is not consulted when the destination
/// already blocks.
///
/// References, not copies, all the way: an `Option<RuleEntry>` by value has undefined padding
/// in its `None` form, which LLVM may spill from a clobbered register and the verifier rejects.
#[inline(always)]
fn decide(
    dst: Option<&'static RuleEntry>,
    src: impl FnOnce() -> Option<&'static RuleEntry>,
) -> Option<&'static RuleEntry> {
    match dst {
        Some(d) if d.action != action::PASS => Some(d),
        _ => match src() {
            Some(s) if s.action != action::PASS => Some(s),
            s => dst.or(s),
        },
    }
}

#[inline(always)]
pub fn decide_v4(src: [u8; 4], dst: [u8; 4]) -> Option<&'static RuleEntry> {
    decide(v4(direction::DST, &EB_V4_RNG_DST, dst), || {
        v4(direction::SRC, &EB_V4_RNG_SRC, src)
    })
}

#[inline(always)]
pub fn decide_v6(src: &[u8; 16], dst: &[u8; 16]) -> Option<&'static RuleEntry> {
    decide(lpm(&EB_DST_V6, dst), || lpm(&EB_SRC_V6, src))
}
