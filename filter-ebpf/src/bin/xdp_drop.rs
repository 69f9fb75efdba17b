//! Benchmark-only XDP programs (`cargo xtask bench`); never loaded by edgeblock itself.
//!
//! - `xdp_drop`: the floor. Drops every frame and does nothing else, so its cost is the
//!   fixed price of running any XDP program; edgeblock's cost is reported as a ratio to it.
//! - `xdp_pass`: passes every frame. Put on the receiving veth when the filter under test is
//!   not XDP (nftables), because a veth only takes XDP_TX/XDP_REDIRECT frames from its peer
//!   at once when it runs an XDP program.
//! - `xdp_gen`: the traffic generator for the live drop-rate test, run by BPF_PROG_TEST_RUN
//!   with BPF_F_TEST_XDP_LIVE_FRAMES (the way xdp-trafficgen works): it gives each frame the
//!   next destination address from `GEN_DSTS` and sends it out with XDP_TX.
//! - `xdp_reads`: what reading a table of a given size costs spread traffic at the least. It
//!   reads the IPv4 destination, then (unless `READS_MASK` is 0) a word of a first level of
//!   2^16 words indexed by its top 16 bits, then one cache line of a second level of
//!   `READS_MASK` + 1 lines picked by a hash of the destination and the word read before (a
//!   dependent read, as a lookup's second level is), and drops. A lookup structure of that
//!   many bytes, read at random by spread traffic, costs at least this much.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action::{XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX},
    macros::{map, xdp},
    maps::{Array, PerCpuArray},
    programs::XdpContext,
};

#[xdp]
pub fn xdp_drop(_ctx: XdpContext) -> u32 {
    XDP_DROP
}

#[xdp]
pub fn xdp_pass(_ctx: XdpContext) -> u32 {
    XDP_PASS
}

/// Destination addresses to cycle through, as the four address bytes in network order. The
/// loader sizes it to the list it is given.
#[map(name = "GEN_DSTS")]
static GEN_DSTS: Array<[u8; 4]> = Array::with_max_entries(1, 0);

/// Entry 0: how many entries of `GEN_DSTS` are in use.
#[map(name = "GEN_LEN")]
static GEN_LEN: Array<u32> = Array::with_max_entries(1, 0);

/// Entry 0: this CPU's next index into `GEN_DSTS`.
#[map(name = "GEN_NEXT")]
static GEN_NEXT: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// Ethernet header, then the IPv4 header: the generator's own frame, which it built without
/// VLAN tags or IP options, so fixed offsets are right here (unlike in a filter, which must
/// parse what arrives).
const IP: usize = 14;
const IP_LEN: usize = 20;
const IP_CSUM: usize = IP + 10;
const IP_DST: usize = IP + 16;

#[xdp]
pub fn xdp_gen(ctx: XdpContext) -> u32 {
    match try_gen(&ctx) {
        Some(()) => XDP_TX,
        None => XDP_ABORTED,
    }
}

#[inline(always)]
fn try_gen(ctx: &XdpContext) -> Option<()> {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + IP + IP_LEN > end {
        return None;
    }
    let len = *GEN_LEN.get(0)?;
    let next = GEN_NEXT.get_ptr_mut(0)?;
    // SAFETY: a per-CPU array slot that lives as long as the program; only this CPU writes it.
    let i = unsafe { *next };
    let i = if i >= len { 0 } else { i };
    // SAFETY: as above.
    unsafe { *next = i + 1 };
    let dst = *GEN_DSTS.get(i)?;
    let hdr = (start + IP) as *mut [u8; IP_LEN];
    // SAFETY: checked above that the IPv4 header lies inside the frame. Frames come from a
    // recycled page pool and keep what the last run wrote, so every field that changes is
    // rewritten every time: the destination, then the checksum over the whole header.
    let hdr = unsafe { &mut *hdr };
    hdr[IP_DST - IP..IP_DST - IP + 4].copy_from_slice(&dst);
    hdr[IP_CSUM - IP] = 0;
    hdr[IP_CSUM - IP + 1] = 0;
    let mut sum = 0u32;
    for w in 0..IP_LEN / 2 {
        sum += u32::from(u16::from_be_bytes([hdr[2 * w], hdr[2 * w + 1]]));
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    let csum = !(sum as u16);
    hdr[IP_CSUM - IP..IP_CSUM - IP + 2].copy_from_slice(&csum.to_be_bytes());
    Some(())
}

/// `xdp_reads`' tables: the first level (`READS_TOP` words), then the second level, one word
/// read per cache line. The loader sizes it to the second level it measures.
#[map(name = "READS")]
static READS: Array<u64> = Array::with_max_entries(1, 0);

/// Entry 0: the second level's size in cache lines minus one, a power of two minus one; 0
/// reads the destination and no table.
#[map(name = "READS_MASK")]
static READS_MASK: Array<u32> = Array::with_max_entries(1, 0);

/// Words in `xdp_reads`' first level: one per /16, 512 KiB.
const READS_TOP: u32 = 1 << 16;
/// Words per cache line.
const LINE_WORDS: u32 = 8;

#[xdp]
pub fn xdp_reads(ctx: XdpContext) -> u32 {
    try_reads(&ctx).unwrap_or(XDP_ABORTED)
}

#[inline(always)]
fn try_reads(ctx: &XdpContext) -> Option<u32> {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + IP_DST + 4 > end {
        return None;
    }
    // SAFETY: checked above that the destination address lies inside the frame.
    let dst = u32::from_be(unsafe { ((start + IP_DST) as *const u32).read_unaligned() });
    let mask = *READS_MASK.get(0)?;
    if mask == 0 {
        return Some(XDP_DROP);
    }
    let top = *READS.get(dst >> 16)?;
    // Fibonacci hashing spreads the destinations (one inside each listed prefix) over the
    // lines; the word read before goes into the index so that the CPU cannot start this read
    // before that one has finished (it is always 0, the map is never written).
    let line = (dst.wrapping_mul(0x9e37_79b1) ^ top as u32) & mask;
    let word = *READS.get(READS_TOP + line * LINE_WORDS)?;
    // Never true: keeps the read.
    Some(if word == u64::MAX { XDP_PASS } else { XDP_DROP })
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects any program that could reach a panic, so this is never
    // executed.
    unsafe { core::hint::unreachable_unchecked() }
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
