//! Types shared by the XDP program and the userspace loader.
//!
//! Everything here crosses into a BPF map, so every type is `#[repr(C)]`, made of fixed-size
//! integers and byte arrays only, with no implicit padding; a `const` assertion pins each size.
//! Addresses travel as byte arrays in network order so the fast path never swaps bytes.
#![no_std]

use core::mem::size_of;

/// What a rule does with a matching packet. Stored as a `u8` in [`RuleEntry::action`].
pub mod action {
    /// Let the packet through (an exception carved out of a wider block).
    pub const PASS: u8 = 0;
    /// Drop silently.
    pub const DROP: u8 = 1;
    /// Send to a notice server (XDP_REDIRECT out of the notice target's interface).
    pub const REDIRECT: u8 = 2;
    /// Answer with TCP RST / ICMP unreachable (XDP_TX), rate-limited.
    pub const REJECT: u8 = 3;
    /// Number of actions; per-action counters are indexed by the action value.
    pub const COUNT: u32 = 4;
}

/// Indexes into the `EB_STATS` per-CPU array of [`Counter`]s.
///
/// `0..action::COUNT` are the per-action totals of packets that matched a rule; the rest count
/// what never reached a rule.
pub mod stat {
    use super::action;
    /// IP packets (v4 or v6) that matched no rule and passed.
    pub const NO_MATCH: u32 = action::COUNT;
    /// Frames that are not IPv4/IPv6 (ARP, LLDP, ...), passed.
    pub const NON_IP: u32 = action::COUNT + 1;
    /// Frames that claim to be IP but cannot be parsed; handled per [`Config::malformed_action`].
    pub const MALFORMED: u32 = action::COUNT + 2;
    /// Malformed frames that were dropped (a subset of `MALFORMED`).
    pub const MALFORMED_DROPPED: u32 = action::COUNT + 3;
    /// `reject` matches dropped without a reply: past the rate limit, or never answered (ICMP
    /// errors, TCP resets, broadcast/multicast sources, non-first fragments).
    pub const REJECT_UNANSWERED: u32 = action::COUNT + 4;
    /// `redirect` matches dropped because the notice target was missing or the redirect failed.
    pub const REDIRECT_FAILED: u32 = action::COUNT + 5;
    /// `SHADOW + action`: packets a shadow rule would have decided with that action (see
    /// [`super::rule_flags::SHADOW`]); they were handled by the enforced rules meanwhile.
    pub const SHADOW: u32 = action::COUNT + 6;
    /// Blocked packets copied to the sample ring for `edgeblock tail`.
    pub const SAMPLED: u32 = SHADOW + action::COUNT;
    /// Samples the budget allowed but the ring had no room for (the reader falls behind).
    pub const SAMPLE_LOST: u32 = SAMPLED + 1;
    /// Length of the stats array.
    pub const LEN: u32 = SAMPLE_LOST + 1;
}

/// `RuleEntry::flags` bits.
pub mod rule_flags {
    /// redirect rule: TCP to port 443 is rejected (a reset) instead of redirected.
    pub const HTTPS_REJECT: u8 = 1;
    /// A shadow rule (`mode = "shadow"`): it never decides a packet. Its entry is only ever
    /// named by the shadow half of a range result (see [`super::dxr::SHADOW_SHIFT`]), and its
    /// hits count in its rule counter and in `stat::SHADOW + action`.
    pub const SHADOW: u8 = 2;
}

/// The value stored for every prefix in the address tables.
///
/// `rule_id` indexes the per-rule counters and the rule metadata table; `flags` holds
/// [`rule_flags`]; `target` is the notice target (index into `EB_NOTICE`) of a redirect rule.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RuleEntry {
    pub rule_id: u32,
    pub action: u8,
    pub flags: u8,
    pub target: u16,
}
const _: () = assert!(size_of::<RuleEntry>() == 8);

impl RuleEntry {
    pub const fn new(rule_id: u32, action: u8) -> Self {
        Self {
            rule_id,
            action,
            flags: 0,
            target: 0,
        }
    }
}

/// Packets and bytes; per-CPU in every map that holds it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}
const _: () = assert!(size_of::<Counter>() == 16);

/// `Config::malformed_action` values.
///
/// Zero is `DROP` so that a freshly created (zeroed) config map fails closed.
pub mod malformed {
    pub const DROP: u8 = 0;
    pub const PASS: u8 = 1;
}

/// Runtime configuration and the identity of the applied policy: entry 0 of `EB_CONFIG`.
///
/// The XDP program reads only `malformed_action`, and only on the malformed path. The rest is
/// written by `apply` and read by `status`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    pub malformed_action: u8,
    pub _pad: [u8; 7],
    /// Incremented by every successful apply.
    pub generation: u64,
    /// Seconds since the Unix epoch of the last successful apply.
    pub applied_unix: u64,
    /// SHA-256 of the compiled policy (rules and prefixes in canonical order).
    pub policy_hash: [u8; 32],
    /// Reject rate limit, a token bucket per CPU counted in nanoseconds of credit: one reply
    /// costs `reject_cost_ns` (1e9 / replies per second); the bucket holds at most
    /// `reject_capacity_ns` (burst x cost). Zero cost: never answer.
    pub reject_cost_ns: u64,
    pub reject_capacity_ns: u64,
}
const _: () = assert!(size_of::<Config>() == 72);

impl Default for Config {
    fn default() -> Self {
        Self {
            malformed_action: malformed::DROP,
            _pad: [0; 7],
            generation: 0,
            applied_unix: 0,
            policy_hash: [0; 32],
            reject_cost_ns: 0,
            reject_capacity_ns: 0,
        }
    }
}

/// Longest rule name stored in the kernel-side rule table.
pub const RULE_NAME_LEN: usize = 64;

/// Userspace-only metadata for a rule id (entry `rule_id` of `EB_RULES`), so that `stats`,
/// `lookup` and the next `apply` can name what the address tables point at.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuleMeta {
    /// UTF-8, NUL-padded.
    pub name: [u8; RULE_NAME_LEN],
    /// 1 when the id is allocated.
    pub in_use: u8,
    pub action: u8,
    /// [`direction`] value.
    pub direction: u8,
    /// [`mode`] value.
    pub mode: u8,
    pub _pad: [u8; 4],
    /// Number of prefixes the rule contributes.
    pub prefixes: u64,
}
const _: () = assert!(size_of::<RuleMeta>() == 80);

impl Default for RuleMeta {
    fn default() -> Self {
        Self {
            name: [0; RULE_NAME_LEN],
            in_use: 0,
            action: 0,
            direction: 0,
            mode: mode::ENFORCE,
            _pad: [0; 4],
            prefixes: 0,
        }
    }
}

/// Where a redirect rule sends traffic: entry `target` of `EB_NOTICE` (the devmap
/// `EB_NOTICE_DEV` holds the same ifindex at the same index).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NoticeTarget {
    /// Egress interface; 0 when the slot is unused.
    pub ifindex: u32,
    /// The next hop's MAC (the notice server, or the router in front of it).
    pub dst_mac: [u8; 6],
    /// The egress interface's MAC.
    pub src_mac: [u8; 6],
}
const _: () = assert!(size_of::<NoticeTarget>() == 16);

/// Notice targets available (size of `EB_NOTICE` and `EB_NOTICE_DEV`).
pub const MAX_NOTICE_TARGETS: u32 = 64;

/// The per-CPU reject token bucket (entry 0 of `EB_REJECT_TB`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenBucket {
    /// Credit in nanoseconds.
    pub tokens: u64,
    /// `bpf_ktime_get_ns` of the last refill.
    pub last_ns: u64,
}
const _: () = assert!(size_of::<TokenBucket>() == 16);

/// `RuleMeta::mode` values.
pub mod mode {
    /// The rule decides what happens to the packets it matches.
    pub const ENFORCE: u8 = 0;
    /// The rule only counts the packets it would decide.
    pub const SHADOW: u8 = 1;
}

/// Which address of the packet a rule matches.
pub mod direction {
    pub const DST: u8 = 0;
    pub const SRC: u8 = 1;
}

/// Bits of `EB_ACTIVE` entry 0, written in one update by `apply` after it has filled the copy
/// it names: which copy the program reads, and which of that copy's tables hold any prefix.
/// The program skips the lookup of an empty table (most policies have no source rules).
pub mod active {
    /// The copy (0 or 1) of every table the program uses.
    pub const COPY: u32 = 1;
    pub const V4_DST: u32 = 1 << 1;
    pub const V4_SRC: u32 = 1 << 2;
    pub const V6_DST: u32 = 1 << 3;
    pub const V6_SRC: u32 = 1 << 4;
    /// The IPv4 destination table is found through its index (`EB_V4_INDEX`, a sparse table);
    /// without this bit its chunks are all stored, chunk `c` at `table * V4_CHUNKS + c`.
    pub const V4_DST_INDEXED: u32 = 1 << 5;
    /// The same for the IPv4 source table.
    pub const V4_SRC_INDEXED: u32 = 1 << 6;

    /// The bit saying that the IPv4 table of `direction` is indexed.
    #[inline(always)]
    pub const fn v4_indexed(direction: u8) -> u32 {
        if direction == super::direction::SRC {
            V4_SRC_INDEXED
        } else {
            V4_DST_INDEXED
        }
    }
}

/// Rule ids available (size of `EB_RULE_STATS` and `EB_RULES`).
pub const MAX_RULES: u32 = 4096;

/// Address lookup: DXR-style range tables (Zec, Rizzo, Mikuc 2012), for IPv4 and IPv6. The
/// address space is cut into ranges with one result each; a direct table indexed by the top
/// 20 address bits gives the chunk's one result, its few ranges inline (IPv4, [`Chunk`]), or
/// the slice of its ranges in a range map, where a binary search finds the range. Two copies
/// of everything (0 and 1): `apply` writes the inactive copy, then flips `EB_ACTIVE`, so a
/// packet always sees one whole policy, both families.
pub mod dxr {
    /// Address bits that index an IPv4 direct table: 2^20 chunks of 4096 addresses. With a
    /// million prefixes a chunk holds one or two of them, few enough to sit in its 16-byte
    /// entry ([`super::Chunk`]), so a lookup reads one cache line of a table that does not
    /// fit in the cache, which is what spread traffic over a million prefixes needs.
    pub const V4_DIRECT_BITS: u32 = 20;
    /// IPv6 direct tables are indexed by the top 20 bits too: a block list's IPv6 prefixes sit
    /// in a few /3s, and 2^20 chunks keep their slices to a few ranges.
    pub const V6_DIRECT_BITS: u32 = 20;
    /// Chunks (and entries) of one IPv4 direct table.
    pub const V4_CHUNKS: u32 = 1 << V4_DIRECT_BITS;
    /// Chunks per region of an IPv4 table's index (`EB_V4_INDEX`, one [`super::Region`]
    /// each), used when few chunks are more than a leaf (`active::V4_DST_INDEXED`): a chunk
    /// that is a leaf with its region's result is not stored, the others are stored one after
    /// the other in `EB_V4_DIRECT`. A short list then reads a few pages of chunks, not one
    /// page per prefix spread through 16 MiB (more than the TLB holds).
    pub const REGION_BITS: u32 = 6;
    /// Regions of one IPv4 table.
    pub const V4_REGIONS: u32 = V4_CHUNKS >> REGION_BITS;
    /// A table is indexed when at most this many of its chunks are stored (a quarter): with
    /// more, reading the index first costs more than it saves.
    pub const INDEXED_MAX: u32 = V4_CHUNKS / 4;
    /// Chunks (and entries) of one IPv6 direct table.
    pub const V6_CHUNKS: u32 = 1 << V6_DIRECT_BITS;
    /// Direct tables per family: (copy * 2 + direction) * chunks + chunk, in `EB_V4_DIRECT` /
    /// `EB_V6_DIRECT`.
    pub const TABLES: u32 = 4;
    /// An IPv6 direct entry with this bit set is a leaf: the whole chunk has one result, in the
    /// low 32 bits, and no ranges are stored for it. With [`V6_INLINE`] set instead, the chunk
    /// holds one prefix, in the entry. Otherwise the low 32 bits are the index of the chunk's
    /// first range in the range map (the copy's offset included) and bits 32..62 the number of
    /// its ranges. IPv4 direct entries are [`super::Chunk`]s.
    pub const LEAF: u64 = 1 << 63;
    /// An IPv6 direct entry with this bit set ([`v6_inline`]) holds the chunk's one prefix of
    /// 21 to 64 bits (nearly every IPv6 block is a /64 or shorter) and two palette indexes
    /// (`EB_V6_PALETTE`): the result inside the prefix and the result around it. Most chunks
    /// of an IPv6 list hold one prefix, and their lookups then read no range.
    pub const V6_INLINE: u64 = 1 << 62;
    /// Address bits of an inline IPv6 prefix held in its entry: those of the high half below
    /// the chunk index.
    pub const V6_NET_BITS: u32 = 64 - V6_DIRECT_BITS;
    const V6_NET_MASK: u64 = (1 << V6_NET_BITS) - 1;
    const V6_LEN_AT: u32 = V6_NET_BITS;
    const V6_INSIDE_AT: u32 = V6_LEN_AT + 6;
    const V6_OUTSIDE_AT: u32 = V6_INSIDE_AT + PALETTE_BITS;
    const _: () = assert!(V6_OUTSIDE_AT + PALETTE_BITS <= 62);

    /// An inline IPv6 direct entry: the prefix whose high half is `net` and whose length is
    /// `len` (more than `V6_DIRECT_BITS`, at most 64), with the palette indexes of the result
    /// inside it and around it.
    #[inline(always)]
    pub const fn v6_inline(net: u64, len: u8, inside: u8, outside: u8) -> u64 {
        V6_INLINE
            | ((outside as u64 & (PALETTE as u64 - 1)) << V6_OUTSIDE_AT)
            | ((inside as u64 & (PALETTE as u64 - 1)) << V6_INSIDE_AT)
            | (((len as u64).wrapping_sub(V6_DIRECT_BITS as u64) & 63) << V6_LEN_AT)
            | (net & V6_NET_MASK)
    }

    /// The palette index an inline IPv6 entry gives an address whose high half is `hi` (in
    /// the entry's chunk).
    #[inline(always)]
    pub const fn v6_inline_slot(entry: u64, hi: u64) -> u32 {
        // The prefix's bits below the chunk index: V6_NET_BITS less the host bits (64 - len).
        let bits = (entry >> V6_LEN_AT) & 63;
        let host = (V6_NET_BITS as u64).wrapping_sub(bits) & 63;
        let at = if ((hi ^ entry) & V6_NET_MASK) >> host == 0 {
            V6_INSIDE_AT
        } else {
            V6_OUTSIDE_AT
        };
        ((entry >> at) & (PALETTE as u64 - 1)) as u32
    }

    /// An IPv6 direct entry with this bit set ([`v6_line`]) names a line of `EB_V6_LINES`: the
    /// chunk's two to [`LINE_RANGES`] ranges, all starting on a /64 boundary (their starts' low
    /// halves 0), as the high halves of their starts, compared with the address's all at once
    /// ([`v6_line_slot`]); the entry's low 32 bits hold each range's palette index. A chunk of
    /// a few /64-or-shorter prefixes is then read in one cache line, not searched.
    pub const V6_LINE: u64 = 1 << 61;
    /// Most ranges of a line.
    pub const LINE_RANGES: usize = 8;
    /// Lines of each IPv6 table (`EB_V6_LINES` holds `TABLES` times this, 64 bytes each: 16
    /// MiB). A table with more chunks that could be lines leaves the rest as slices.
    pub const V6_LINES: u32 = 1 << 16;
    const _: () = assert!(LINE_RANGES as u32 * PALETTE_BITS <= 32);

    /// The IPv6 direct entry of a chunk read as line `index` of its table, its ranges' palette
    /// indexes in `slots` (range `i` at bits `4 i`).
    #[inline(always)]
    pub const fn v6_line(index: u32, slots: u32) -> u64 {
        V6_LINE | ((index as u64) << 32) | slots as u64
    }

    /// The line a line entry names.
    #[inline(always)]
    pub const fn v6_line_index(entry: u64) -> u32 {
        (entry >> 32) as u32 & (V6_LINES - 1)
    }

    /// The palette index a line entry gives an address whose high half is `hi`: range `i` is
    /// the one whose start is the last at or below it. `line[0]` holds the number of ranges
    /// (the first starts at the chunk's start); `line[i]` for `i` from there on holds
    /// `u64::MAX`, and the entry repeats the last range's index in their slots, so an address
    /// at the very top of the space still finds the last range.
    #[inline(always)]
    pub fn v6_line_slot(entry: u64, line: &[u64; LINE_RANGES], hi: u64) -> u32 {
        // Three halvings of ranges 0..8 (range 0 needs no comparison: it starts the chunk).
        const _: () = assert!(LINE_RANGES == 8);
        let mut i = 0;
        for step in [4, 2, 1] {
            if line[(i + step) & (LINE_RANGES - 1)] <= hi {
                i += step;
            }
        }
        (entry as u32 >> (PALETTE_BITS * i as u32)) & (PALETTE - 1)
    }

    /// An IPv6 direct entry for a chunk with one result.
    #[inline(always)]
    pub const fn leaf(result: u32) -> u64 {
        LEAF | result as u64
    }

    /// An IPv6 direct entry for a chunk whose `count` ranges start at `first`.
    #[inline(always)]
    pub const fn slice(first: u32, count: u32) -> u64 {
        ((count as u64) << 32) | first as u64
    }

    /// Most boundaries (starts of ranges after the chunk's first) an inline [`super::Chunk`]
    /// holds: a chunk of up to seven ranges, three prefixes in it, needs no range map.
    pub const INLINE_BOUNDS: usize = 6;
    /// Bits of one boundary in an inline chunk: an offset in a chunk of 4096 addresses.
    pub const BOUND_BITS: u32 = 32 - V4_DIRECT_BITS;
    /// Entries of each table's palette (`EB_V4_PALETTE`, `EB_V6_PALETTE`): an inline chunk
    /// names its results by their index in its table's palette, which holds the results
    /// inline chunks use most.
    pub const PALETTE: u32 = 1 << PALETTE_BITS;
    /// Bits of a palette index.
    pub const PALETTE_BITS: u32 = 4;

    /// Default capacity, in ranges, of each copy of the IPv4 destination table. Only chunks
    /// with too many ranges to be inline store them, at most three per prefix (a prefix alone in
    /// its chunk splits it in three), so this holds a million prefixes whatever their
    /// spread (24 MiB per copy). Set another with EDGEBLOCK_V4_DST_RANGES before the program
    /// is first loaded.
    pub const DEFAULT_DST_RANGES: u32 = 3 << 20;
    /// Default capacity of each copy of the source table (EDGEBLOCK_V4_SRC_RANGES).
    pub const DEFAULT_SRC_RANGES: u32 = 3 << 18;
    /// Steps of the IPv4 binary search: enough for a chunk holding each of its addresses as
    /// a range.
    pub const SEARCH_STEPS: u32 = 32 - V4_DIRECT_BITS + 1;
    /// IPv6 chunks span 2^112 addresses, so a slice is bounded only by the table: enough steps
    /// for 2^24 ranges.
    pub const V6_SEARCH_STEPS: u32 = 24;
    /// Default capacity of each copy of the IPv6 destination table (EDGEBLOCK_V6_DST_RANGES):
    /// at most three ranges per prefix, so this holds about 200k prefixes (14 MiB per copy).
    pub const DEFAULT_V6_DST_RANGES: u32 = (1 << 19) + (1 << 16);
    /// Default capacity of each copy of the IPv6 source table (EDGEBLOCK_V6_SRC_RANGES).
    pub const DEFAULT_V6_SRC_RANGES: u32 = 1 << 17;

    /// The record of the prefixes each copy was built from (`EB_V4_REC_DST`/`_SRC`, written
    /// and read by userspace only, through mmap): per copy, slot 0 holds the count, then one
    /// `record(...)` per prefix in ascending order. It has room for half as many prefixes as
    /// the copy has ranges.
    #[inline(always)]
    pub const fn record(network: u32, len: u8, rule_id: u32) -> u64 {
        ((network as u64) << 32) | ((len as u64) << 24) | (rule_id as u64 & 0xff_ffff)
    }

    /// A range result holds two rule references of 16 bits each, 0 for none (see
    /// [`reference`]): the low half is the enforced rule (the longest enforced prefix: it
    /// decides); the high half, shifted by this, is the shadow rule whose prefix is the longest
    /// of all (enforced and shadow) holding the range, when there is one.
    pub const SHADOW_SHIFT: u32 = 16;
    /// The enforced half of a range result.
    pub const ENFORCED_MASK: u32 = (1 << SHADOW_SHIFT) - 1;
    /// The rule of a reference: n for the rule with id n - 1, whose entry is in `EB_RESULTS`.
    pub const RULE_MASK: u32 = (1 << 13) - 1;
    const _: () = assert!(super::MAX_RULES <= RULE_MASK);
    /// A reference's bit for a shadow rule (only ever set in the shadow half).
    pub const SHADOW_RULE: u32 = 1 << 14;
    /// A reference's bit for a rule that blocks (any action but pass): the program settles
    /// precedence between the two directions from the references alone, and reads the entry
    /// of the one rule that decides.
    pub const BLOCKS: u32 = 1 << 15;
    const _: () = assert!(RULE_MASK < SHADOW_RULE && SHADOW_RULE < BLOCKS);
    const _: () = assert!(BLOCKS <= ENFORCED_MASK);

    /// The reference a range result holds for a rule: in the low half for an enforced rule,
    /// in the high half for a shadow rule. `rule_id < MAX_RULES`.
    #[inline(always)]
    pub const fn reference(rule_id: u32, action: u8, shadow: bool) -> u32 {
        let blocks = if action == super::action::PASS {
            0
        } else {
            BLOCKS
        };
        let r = ((rule_id + 1) & RULE_MASK) | blocks;
        if shadow {
            (r | SHADOW_RULE) << SHADOW_SHIFT
        } else {
            r
        }
    }

    /// A range: its first address in the high half, the result in the low half (see
    /// [`SHADOW_SHIFT`]).
    #[inline(always)]
    pub const fn range(start: u32, result: u32) -> u64 {
        ((start as u64) << 32) | result as u64
    }
}
/// An IPv6 range (`EB_V6_RNG_*`) or record entry (`EB_V6_REC_*`): the first address as two
/// big-endian halves, and the result (ranges: `dxr::SHADOW_SHIFT`) or, in a record,
/// `len << 24 | rule_id`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Range6 {
    pub start_hi: u64,
    pub start_lo: u64,
    pub value: u64,
}
const _: () = assert!(size_of::<Range6>() == 24);

/// An IPv4 direct-table entry (`EB_V4_DIRECT`): what the lookup needs of one chunk of 4096
/// addresses, in 16 bytes, so that most lookups read one cache line of the table and nothing
/// else. The low two bits of `lo` give the kind:
///
/// - [`Chunk::LEAF`]: the whole chunk has one result, `hi`'s low 32 bits.
/// - [`Chunk::SLICE`]: the chunk's ranges are `count` (`lo >> 32`) entries of the range map
///   from index `hi` (the copy's offset included). All zero: an empty slice, a table not yet
///   written, which gives no result.
/// - [`Chunk::INLINE`]: up to [`dxr::INLINE_BOUNDS`] + 1 ranges held in the entry. Six
///   16-bit lanes (four in `hi`, two in the top half of `lo`) hold the chunk offsets where
///   ranges start (below 4096), unused lanes 0; seven palette indexes of 4 bits (in `lo` from
///   bit 4) hold the results, right-aligned: the address at `offset` takes the index in slot
///   `6 - (boundaries above offset)`. The lanes are compared with the offset all at once
///   (SWAR: a subtraction per word and a multiplication to add up), without a branch.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Chunk {
    pub lo: u64,
    pub hi: u64,
}
const _: () = assert!(size_of::<Chunk>() == 16);
// Seven slots fit below the two lanes of `lo`; four lanes fill `hi`; a boundary fits a lane
// with its top bit free and offset + 1 never borrows.
const _: () = assert!(
    Chunk::SLOTS_AT + (dxr::INLINE_BOUNDS as u32 + 1) * dxr::PALETTE_BITS <= Chunk::LANES_AT
);
const _: () = assert!(dxr::INLINE_BOUNDS == 6 && dxr::BOUND_BITS < 15);

impl Chunk {
    pub const KIND: u64 = 3;
    pub const SLICE: u64 = 0;
    pub const LEAF: u64 = 1;
    pub const INLINE: u64 = 2;
    /// Userspace only, reading maps back: an IPv6 line entry (`dxr::V6_LINE`) in `hi`, whose
    /// ranges are to be read from its line.
    pub const LINE: u64 = 3;
    /// Where the palette indexes start in `lo`.
    const SLOTS_AT: u32 = 4;
    /// Where the lanes of the fifth and sixth boundaries start in `lo`.
    const LANES_AT: u32 = 32;
    /// One in each 16-bit lane, and each lane's top bit.
    const ONES: u64 = 0x0001_0001_0001_0001;
    const GUARDS: u64 = 0x8000_8000_8000_8000;

    /// A chunk with one result.
    #[inline(always)]
    pub const fn leaf(result: u32) -> Self {
        Self {
            lo: Self::LEAF,
            hi: result as u64,
        }
    }

    /// A chunk whose `count` ranges start at index `first` of the range map.
    #[inline(always)]
    pub const fn slice(first: u64, count: u32) -> Self {
        Self {
            lo: (count as u64) << 32,
            hi: first,
        }
    }

    /// A chunk of `bounds.len() + 1` ranges: the first starts at offset 0, the others at
    /// `bounds` (ascending, each in `1..4096`); `slots[i]` is the palette index of range `i`.
    /// Needs `bounds.len() <= INLINE_BOUNDS`, `slots.len() == bounds.len() + 1`, every slot
    /// below `PALETTE`.
    pub fn inline(bounds: &[u16], slots: &[u8]) -> Self {
        let unused = dxr::INLINE_BOUNDS - bounds.len();
        let mut lo = Self::INLINE;
        let mut hi = 0;
        for (i, &b) in bounds.iter().enumerate() {
            let b = u64::from(b) & ((1 << dxr::BOUND_BITS) - 1);
            if i < 4 {
                hi |= b << (16 * i);
            } else {
                lo |= b << (Self::LANES_AT as usize + 16 * (i - 4));
            }
        }
        for (i, &p) in slots.iter().enumerate() {
            let at = Self::SLOTS_AT + dxr::PALETTE_BITS * (unused + i) as u32;
            lo |= (u64::from(p) & u64::from(dxr::PALETTE - 1)) << at;
        }
        Self { lo, hi }
    }

    #[inline(always)]
    pub const fn kind(&self) -> u64 {
        self.lo & Self::KIND
    }

    /// The palette index an inline chunk gives the address at `offset` (below 4096) in it.
    #[inline(always)]
    pub fn slot(&self, offset: u32) -> u32 {
        // A lane holding 0x8000 + boundary, less offset + 1, keeps its top bit only where the
        // boundary is above the offset (an unused lane, 0, never is), and never borrows from
        // the next lane: 0x8000 + 0 - 4096 is still positive.
        let past = (u64::from(offset) + 1) * Self::ONES;
        let hi = ((self.hi | Self::GUARDS) - past) & Self::GUARDS;
        let lo = (((self.lo >> Self::LANES_AT) | (Self::GUARDS >> 32)) - (past >> 32))
            & (Self::GUARDS >> 32);
        // One bit per lane above the offset; the multiplication adds the lanes up in the top
        // lane (at most six).
        let above = ((hi >> 15) + (lo >> 15)).wrapping_mul(Self::ONES) >> 48;
        let slot = dxr::INLINE_BOUNDS as u64 - above;
        ((self.lo >> (u64::from(Self::SLOTS_AT) + u64::from(dxr::PALETTE_BITS) * slot))
            & u64::from(dxr::PALETTE - 1)) as u32
    }
}

/// One region of an IPv4 table's index: 2^[`dxr::REGION_BITS`] chunks. Bit `i` of `present`
/// set: chunk `i` of the region is stored, at `base` plus the number of present chunks before
/// it, counted from the table's start in `EB_V4_DIRECT`. Bit clear: the chunk is a leaf with
/// result `leaf`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Region {
    pub present: u64,
    pub base: u32,
    pub leaf: u32,
}
const _: () = assert!(size_of::<Region>() == 16 && dxr::REGION_BITS == 6);

impl Region {
    /// Where chunk `bit` (below 64) of the region is stored, relative to the table's start;
    /// `None` for a leaf with the region's result.
    #[inline(always)]
    pub const fn stored(&self, bit: u32) -> Option<u32> {
        let mask = 1u64 << (bit & 63);
        if self.present & mask == 0 {
            return None;
        }
        Some(self.base + ones(self.present & (mask - 1)))
    }
}

/// The number of set bits, without a branch or a loop (eBPF has no population count
/// instruction; the verifier sees straight-line code).
#[inline(always)]
pub const fn ones(x: u64) -> u32 {
    let x = x - ((x >> 1) & 0x5555_5555_5555_5555);
    let x = (x & 0x3333_3333_3333_3333) + ((x >> 2) & 0x3333_3333_3333_3333);
    let x = (x + (x >> 4)) & 0x0f0f_0f0f_0f0f_0f0f;
    (x.wrapping_mul(0x0101_0101_0101_0101) >> 56) as u32
}

/// Most IPv4 prefixes a table can ever be given; the loaded program's own capacity (see
/// `dxr::DEFAULT_DST_RANGES`) is usually smaller and is checked by `apply`.
pub const MAX_V4_PREFIXES: u32 = 1 << 24;
/// Most IPv6 prefixes a table can ever be given; the loaded program's own capacity
/// (`dxr::DEFAULT_V6_DST_RANGES`) is checked by `apply`.
pub const MAX_V6_PREFIXES: u32 = 1 << 22;

/// Version of what userspace and the program must agree on: map layouts, the range and rule
/// reference encodings, stat indices. Bump it with any such change. The loader records it in
/// [`maps::ABI`] when it loads the program, and every later `edgeblock` refuses to work on a
/// program pinned with another: writing one encoding into maps a program reads as another
/// would turn blocks into passes without an error.
pub const ABI: u32 = 7;

/// Map names, shared so the loader and the program cannot disagree.
pub mod maps {
    pub const RULE_STATS: &str = "EB_RULE_STATS";
    pub const STATS: &str = "EB_STATS";
    pub const CONFIG: &str = "EB_CONFIG";
    /// Per table, every chunk in order, or for a table `ACTIVE` says is indexed, the chunks
    /// its index (`V4_INDEX`) says are stored, one after the other.
    pub const V4_DIRECT: &str = "EB_V4_DIRECT";
    /// Per table (copy * 2 + direction), a [`super::Region`] per 64 chunks.
    pub const V4_INDEX: &str = "EB_V4_INDEX";
    /// Per table (copy * 2 + direction), the results inline IPv4 chunks name by index.
    pub const V4_PALETTE: &str = "EB_V4_PALETTE";
    pub const V4_RANGES_DST: &str = "EB_V4_RNG_DST";
    pub const V4_RANGES_SRC: &str = "EB_V4_RNG_SRC";
    pub const V6_DIRECT: &str = "EB_V6_DIRECT";
    /// Per table (copy * 2 + direction), the results inline IPv6 entries name by index.
    pub const V6_PALETTE: &str = "EB_V6_PALETTE";
    /// Per table (copy * 2 + direction), `dxr::V6_LINES` lines of `dxr::LINE_RANGES` starts.
    pub const V6_LINES: &str = "EB_V6_LINES";
    pub const V6_RANGES_DST: &str = "EB_V6_RNG_DST";
    pub const V6_RANGES_SRC: &str = "EB_V6_RNG_SRC";
    /// Per copy, the `RuleEntry` of every rule id: copy * MAX_RULES + rule_id.
    pub const RESULTS: &str = "EB_RESULTS";
    /// Entry 0: which copy (0 or 1) of the tables the program uses.
    pub const ACTIVE: &str = "EB_ACTIVE";
    /// Created by userspace; the program never reads them.
    pub const V4_RECORD_DST: &str = "EB_V4_REC_DST";
    pub const V4_RECORD_SRC: &str = "EB_V4_REC_SRC";
    pub const V6_RECORD_DST: &str = "EB_V6_REC_DST";
    pub const V6_RECORD_SRC: &str = "EB_V6_REC_SRC";
    pub const NOTICE: &str = "EB_NOTICE";
    pub const NOTICE_DEV: &str = "EB_NOTICE_DEV";
    pub const REJECT_TB: &str = "EB_REJECT_TB";
    /// Created by userspace; the program never reads it.
    pub const RULES: &str = "EB_RULES";
    /// Created by userspace, entry 0: the [`super::ABI`] of the pinned program.
    pub const ABI: &str = "EB_ABI";
    /// Program array of the tail calls: `sample::PROG_MAIN`, `sample::PROG_SAMPLER`.
    pub const PROGS: &str = "EB_PROGS";
    /// Ring buffer of [`super::Sample`]s.
    pub const SAMPLES: &str = "EB_SAMPLES";
    /// Entry 0: [`super::SampleControl`], the reader's lease.
    pub const SAMPLE_CTL: &str = "EB_SAMPLE_CTL";
    /// Per CPU, entry 0: [`super::SampleScratch`], handed from the filter to the sampler.
    pub const SAMPLE_SCRATCH: &str = "EB_SAMPLE_SCRATCH";
    /// Per CPU, per rule id: [`super::SampleBudget`].
    pub const SAMPLE_BUDGET: &str = "EB_SAMPLE_BUDGET";
}

/// Sampled flows: blocked packets copied to a ring buffer for `edgeblock tail`.
///
/// The filter never copies packets itself: that would double its verifier states. When a reader
/// holds the lease ([`SampleControl::until_ns`] non-zero and not past), the filter checks the
/// rule's budget for this second ([`SampleBudget`]), and only a packet within it is handed to
/// a separate sampler program by tail call, with its rule in the per-CPU [`SampleScratch`].
/// The sampler copies the first [`sample::BYTES`] bytes into the ring, marks the scratch
/// `resumed` and tail-calls the filter again, which then decides the packet as usual without
/// offering it a second time. With no reader, a blocked packet costs one array read more; with
/// one, a clock read and a budget check more, and the few sampled packets two tail calls.
pub mod sample {
    /// Bytes of each packet copied into a sample (Ethernet, IP and transport headers).
    pub const BYTES: usize = 128;
    /// Slots of [`super::maps::PROGS`].
    pub const PROG_MAIN: u32 = 0;
    pub const PROG_SAMPLER: u32 = 1;
    pub const PROGS: u32 = 2;
    /// Ring size: about 6,900 samples, several seconds of the largest budget.
    pub const RING_BYTES: u32 = 1 << 20;
    /// How long a lease lasts unless renewed (the reader renews it every second).
    pub const LEASE_NS: u64 = 3_000_000_000;
}

/// One sampled packet, as the sampler writes it to the ring.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    /// CLOCK_MONOTONIC (bpf_ktime_get_ns).
    pub time_ns: u64,
    pub rule_id: u32,
    pub ifindex: u32,
    /// The packet's length on the wire (all fragments of a multi-buffer frame).
    pub len: u32,
    /// Bytes of `data` that hold the packet's first bytes.
    pub cap: u16,
    pub action: u8,
    pub _pad: u8,
    pub data: [u8; sample::BYTES],
}
const _: () = assert!(size_of::<Sample>() == 24 + sample::BYTES);

/// The sample reader's lease, written by `edgeblock tail`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SampleControl {
    /// CLOCK_MONOTONIC ns until which a reader is subscribed; 0: none. The sampler clears an
    /// expired lease, so a reader that died costs the filter nothing after one packet.
    pub until_ns: u64,
    /// Samples per rule per second on each CPU.
    pub per_cpu: u32,
    /// Process id of the reader, so another one can tell a live lease from a dead one.
    pub owner: u32,
}
const _: () = assert!(size_of::<SampleControl>() == 16);

/// What the filter hands the sampler (per CPU, entry 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SampleScratch {
    /// When the filter offered the packet (bpf_ktime_get_ns).
    pub time_ns: u64,
    pub rule_id: u32,
    pub action: u8,
    /// Set by the sampler before it tail-calls the filter back: the filter's next offer on
    /// this CPU (the same packet) is declined and the flag cleared.
    pub resumed: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<SampleScratch>() == 16);

/// A rule's sampling budget on one CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SampleBudget {
    /// The second (of CLOCK_MONOTONIC) `used` counts in.
    pub second: u64,
    pub used: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<SampleBudget>() == 16);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: each type is #[repr(C)], made only of integers and byte arrays, with no padding
    // (the size assertions above prove it), so every bit pattern is a valid value.
    unsafe impl aya::Pod for super::RuleEntry {}
    unsafe impl aya::Pod for super::Counter {}
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::RuleMeta {}
    unsafe impl aya::Pod for super::NoticeTarget {}
    unsafe impl aya::Pod for super::TokenBucket {}
    unsafe impl aya::Pod for super::Range6 {}
    unsafe impl aya::Pod for super::Chunk {}
    unsafe impl aya::Pod for super::Region {}
    unsafe impl aya::Pod for super::Sample {}
    unsafe impl aya::Pod for super::SampleControl {}
    unsafe impl aya::Pod for super::SampleScratch {}
    unsafe impl aya::Pod for super::SampleBudget {}
}
