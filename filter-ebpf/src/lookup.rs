//! Address lookup: the only module that knows how prefixes are stored.
//!
//! Today: one kernel LPM trie per (direction, family). The structure will change for speed;
//! callers only see `decide_v4` / `decide_v6`.

use aya_ebpf::{
    macros::map,
    maps::{LpmTrie, lpm_trie::Key},
};
use filter_common::{MAX_V4_PREFIXES, MAX_V6_PREFIXES, RuleEntry, action};

#[map(name = "EB_DST_V4")]
static EB_DST_V4: LpmTrie<[u8; 4], RuleEntry> = LpmTrie::with_max_entries(MAX_V4_PREFIXES, 0);
#[map(name = "EB_SRC_V4")]
static EB_SRC_V4: LpmTrie<[u8; 4], RuleEntry> = LpmTrie::with_max_entries(MAX_V4_PREFIXES, 0);
#[map(name = "EB_DST_V6")]
static EB_DST_V6: LpmTrie<[u8; 16], RuleEntry> = LpmTrie::with_max_entries(MAX_V6_PREFIXES, 0);
#[map(name = "EB_SRC_V6")]
static EB_SRC_V6: LpmTrie<[u8; 16], RuleEntry> = LpmTrie::with_max_entries(MAX_V6_PREFIXES, 0);

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
    decide(lpm(&EB_DST_V4, &dst), || lpm(&EB_SRC_V4, &src))
}

#[inline(always)]
pub fn decide_v6(src: &[u8; 16], dst: &[u8; 16]) -> Option<&'static RuleEntry> {
    decide(lpm(&EB_DST_V6, dst), || lpm(&EB_SRC_V6, src))
}
