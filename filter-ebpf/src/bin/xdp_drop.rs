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

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects any program that could reach a panic, so this is never
    // executed.
    unsafe { core::hint::unreachable_unchecked() }
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
