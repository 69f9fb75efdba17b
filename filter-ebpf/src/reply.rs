//! `reject`: turn the frame into its own answer and send it back with XDP_TX.
//!
//! TCP segments (except resets) get a TCP reset; everything else gets ICMP "administratively
//! prohibited" (type 3 code 13) or ICMPv6 (type 1 code 1) quoting the start of the packet.
//! Never answered, so the filter cannot be turned into a reflector or an amplifier: ICMP and
//! ICMPv6 errors, TCP resets, non-first fragments, packets from unspecified, loopback,
//! broadcast or multicast sources, and packets to link-layer group or broadcast addresses or to
//! unspecified, broadcast, multicast or reserved IP destinations. Answers are rate-limited by a per-CPU token bucket.
//!
//! Every builder reads what it needs first, then resizes the frame, then writes with fresh
//! bounds checks (a head or tail adjustment invalidates every earlier one). The Ethernet
//! addresses are swapped and VLAN tags are kept, so the answer leaves the way the packet came.

use aya_ebpf::{
    helpers::generated::{
        bpf_ktime_get_ns, bpf_xdp_adjust_head, bpf_xdp_adjust_tail, bpf_xdp_get_buff_len,
    },
    programs::XdpContext,
};
use filter_common::{Config, TokenBucket};

use crate::parse::{Addrs, L4_NONE, Packet, bytes6, ptr_at};

/// Why no answer was sent; the caller drops the packet and counts it.
pub struct Unanswered;

impl From<crate::parse::ParseError> for Unanswered {
    fn from(_: crate::parse::ParseError) -> Self {
        Unanswered
    }
}

const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_ICMPV6: u8 = 58;
const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;
/// How much of the offending IPv6 packet an ICMPv6 error quotes. RFC 4443 asks for as much as
/// fits in 1280 bytes; 64 (the IPv6 header and the first 24 bytes after it, ports included)
/// keep the checksum loop small enough for the verifier to walk for every header layout.
const MAX_QUOTE_V6: usize = 64;
/// The longest link-layer header: Ethernet plus two VLAN tags.
const MAX_L2: usize = 22;

/// Take a reply token from this CPU's bucket.
#[inline(always)]
pub fn allow(config: Option<&Config>, bucket: Option<*mut TokenBucket>) -> bool {
    let (Some(config), Some(bucket)) = (config, bucket) else {
        return false;
    };
    if config.reject_cost_ns == 0 {
        return false;
    }
    // SAFETY: per-CPU map slot, touched only by this CPU while the program runs.
    let b = unsafe { &mut *bucket };
    // SAFETY: no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let refill = now.wrapping_sub(b.last_ns);
    let tokens = b
        .tokens
        .saturating_add(refill)
        .min(config.reject_capacity_ns);
    b.last_ns = now;
    if tokens >= config.reject_cost_ns {
        b.tokens = tokens - config.reject_cost_ns;
        true
    } else {
        b.tokens = tokens;
        false
    }
}

/// Whether the packet may be answered at all, before a token is spent on it.
#[inline(always)]
pub fn answerable(ctx: &XdpContext, pkt: &Packet) -> Result<(), Unanswered> {
    if pkt.later_fragment || pkt.l4_proto == L4_NONE {
        return Err(Unanswered);
    }
    // A frame sent to a link-layer group (the I/G bit of the first destination octet; the
    // broadcast address has it too) reached every host on the link: answering it would have
    // each of them answer, and the answer would carry a group address as its source. This
    // also covers directed broadcasts (a subnet's last address), which arrive as Ethernet
    // broadcast but cannot be told from the IP address alone. Two-byte read, see below.
    let [eth_dst0, _]: [u8; 2] = read(ctx, 0)?;
    if eth_dst0 & 0x01 != 0 {
        return Err(Unanswered);
    }
    match &pkt.addrs {
        Addrs::V4 { src, dst } => {
            // Sources: 0/8, 127/8, 224/4 (multicast) and 240/4 (incl. broadcast) never get an
            // answer. Destinations: 0/8, multicast, 240/4 and 255.255.255.255 (RFC 1122
            // 3.2.2: no ICMP error about a datagram to a broadcast or multicast address).
            if src[0] == 0 || src[0] == 127 || src[0] >= 224 || dst[0] == 0 || dst[0] >= 224 {
                return Err(Unanswered);
            }
        }
        Addrs::V6 { src, dst } => {
            let (src, dst) = (bytes6(src), bytes6(dst));
            let unspecified_or_loopback = src[..15].iter().all(|b| *b == 0) && src[15] <= 1;
            // A multicast destination (RFC 4443 2.4 (e)) or the unspecified one: no answer.
            let dst_unspecified = dst.iter().all(|b| *b == 0);
            if src[0] == 0xff || unspecified_or_loopback || dst[0] == 0xff || dst_unspecified {
                return Err(Unanswered);
            }
        }
    }
    match pkt.l4_proto {
        // Two-byte reads throughout: LLVM turns a one-byte bounds check into a comparison the
        // verifier cannot use.
        IPPROTO_TCP => {
            let [_, flags]: [u8; 2] = read(ctx, pkt.l4_off + 12)?;
            if flags & TCP_RST != 0 {
                return Err(Unanswered);
            }
        }
        IPPROTO_ICMP => {
            let [ty, _]: [u8; 2] = read(ctx, pkt.l4_off)?;
            // Destination unreachable, source quench, redirect, time exceeded, parameter
            // problem: errors are never answered with errors (RFC 1122 3.2.2).
            if matches!(ty, 3 | 4 | 5 | 11 | 12) {
                return Err(Unanswered);
            }
        }
        IPPROTO_ICMPV6 => {
            let [ty, _]: [u8; 2] = read(ctx, pkt.l4_off)?;
            // Types below 128 are errors (RFC 4443 2.4 (e)).
            if ty < 128 {
                return Err(Unanswered);
            }
        }
        _ => {}
    }
    Ok(())
}

/// Build the answer in place. The caller has checked `answerable` and taken a token.
#[inline(always)]
pub fn build(ctx: &XdpContext, pkt: &Packet) -> Result<(), Unanswered> {
    // Bound the offsets for the verifier (the parser guarantees them; this makes it visible).
    if pkt.l3_off > MAX_L2 || pkt.l4_off > 4096 {
        return Err(Unanswered);
    }
    match (&pkt.addrs, pkt.l4_proto) {
        (Addrs::V4 { src, dst }, IPPROTO_TCP) => tcp_reset(ctx, pkt, Ip::V4(*src, *dst)),
        (Addrs::V6 { src, dst }, IPPROTO_TCP) => {
            tcp_reset(ctx, pkt, Ip::V6(bytes6(src), bytes6(dst)))
        }
        (Addrs::V4 { src, dst }, _) => icmp4(ctx, pkt, *src, *dst),
        (Addrs::V6 { src, dst }, _) => icmp6(ctx, pkt, &bytes6(src), &bytes6(dst)),
    }
}

/// Source and destination of a reply. Owned arrays, not references: an enum mixing pointers
/// and plain bytes lets LLVM load one variant's pointer as the other's bytes, which the
/// verifier rejects as pointer arithmetic.
enum Ip {
    V4([u8; 4], [u8; 4]),
    V6([u8; 16], [u8; 16]),
}

/// One's-complement sum of big-endian 16-bit words.
#[inline(always)]
fn sum<const N: usize>(acc: u64, bytes: &[u8; N]) -> u64 {
    let mut acc = acc;
    let mut i = 0;
    while i + 1 < N {
        acc += u64::from(u16::from_be_bytes([bytes[i], bytes[i + 1]]));
        i += 2;
    }
    if N % 2 == 1 {
        acc += u64::from(bytes[N - 1]) << 8;
    }
    acc
}

#[inline(always)]
fn fold(mut acc: u64) -> u16 {
    acc = (acc & 0xffff_ffff) + (acc >> 32);
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    !(acc as u16)
}

/// Sum `len` bytes of the packet from `off` (at most `MAX` bytes), for a quoted payload.
/// The bytes right before `off` must be in the packet (the reply's own header is).
#[inline(always)]
fn sum_packet<const MAX: usize>(
    ctx: &XdpContext,
    off: usize,
    len: usize,
    acc: u64,
) -> Result<u64, Unanswered> {
    let mut acc = acc;
    for i in 0..MAX / 2 {
        let at = i * 2;
        if at + 1 < len {
            let word: [u8; 2] = read(ctx, off + at)?;
            acc += u64::from(u16::from_be_bytes(word));
        } else {
            if at < len {
                // The odd last byte, padded with a zero; read as the second byte of a pair
                // (two-byte reads only, see `answerable`).
                let [_, last]: [u8; 2] = read(ctx, off + at - 1)?;
                acc += u64::from(last) << 8;
            }
            break;
        }
    }
    Ok(acc)
}

#[inline(always)]
fn write<T>(ctx: &XdpContext, off: usize, value: T) -> Result<(), Unanswered> {
    let p: *mut T = ptr_at(ctx, off)?;
    // SAFETY: checked by ptr_at; packet memory has no alignment guarantee.
    unsafe { p.write_unaligned(value) };
    Ok(())
}

#[inline(always)]
fn read<T>(ctx: &XdpContext, off: usize) -> Result<T, Unanswered> {
    let p: *const T = ptr_at::<T>(ctx, off)?.cast_const();
    // SAFETY: checked by ptr_at; packet memory has no alignment guarantee.
    Ok(unsafe { p.read_unaligned() })
}

/// The link-layer header with the Ethernet addresses swapped (VLAN tags as they were).
#[inline(always)]
fn swapped_l2(ctx: &XdpContext, at: usize) -> Result<[u8; MAX_L2], Unanswered> {
    let mut l2: [u8; MAX_L2] = read(ctx, at)?;
    for i in 0..6 {
        l2.swap(i, i + 6);
    }
    Ok(l2)
}

/// Grow (positive) or shrink (negative) the frame at its tail.
#[inline(always)]
fn resize_tail(ctx: &XdpContext, want: usize) -> Result<(), Unanswered> {
    // SAFETY: ctx.ctx is the xdp_md the kernel passed to this program.
    let have = unsafe { bpf_xdp_get_buff_len(ctx.ctx) } as i64;
    let delta = want as i64 - have;
    // SAFETY: as above; the helper validates the delta.
    if delta != 0 && unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta as i32) } != 0 {
        return Err(Unanswered);
    }
    Ok(())
}

#[inline(always)]
fn ipv4_header(total_len: usize, proto: u8, src: [u8; 4], dst: [u8; 4]) -> [u8; 20] {
    let len = (total_len as u16).to_be_bytes();
    let mut h = [
        0x45, 0, len[0], len[1], 0, 0, 0x40, 0, 64, proto, 0, 0, src[0], src[1], src[2], src[3],
        dst[0], dst[1], dst[2], dst[3],
    ];
    let c = fold(sum(0, &h)).to_be_bytes();
    h[10] = c[0];
    h[11] = c[1];
    h
}

#[inline(always)]
fn ipv6_header(payload_len: usize, next: u8, src: &[u8; 16], dst: &[u8; 16]) -> [u8; 40] {
    let mut h = [0u8; 40];
    h[0] = 0x60;
    let len = (payload_len as u16).to_be_bytes();
    h[4] = len[0];
    h[5] = len[1];
    h[6] = next;
    h[7] = 64;
    h[8..24].copy_from_slice(src);
    h[24..40].copy_from_slice(dst);
    h
}

/// Pseudo-header sum for the transport checksum.
#[inline(always)]
fn pseudo(ip: &Ip, proto: u8, len: usize) -> u64 {
    let base = u64::from(proto) + len as u64;
    match ip {
        Ip::V4(src, dst) => sum(sum(base, src), dst),
        Ip::V6(src, dst) => sum(sum(base, src), dst),
    }
}

#[inline(always)]
fn tcp_reset(ctx: &XdpContext, pkt: &Packet, ip: Ip) -> Result<(), Unanswered> {
    let tcp: [u8; 20] = read(ctx, pkt.l4_off)?;
    let flags = tcp[13];
    let doff = usize::from(tcp[12] >> 4) * 4;
    let ip_hdr = pkt.l4_off - pkt.l3_off;
    if doff < 20 || pkt.ip_len < ip_hdr + doff {
        return Err(Unanswered);
    }
    let seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
    let ack = u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]);
    // RFC 9293 3.10.7.1: answer an ACK with seq = its ack; anything else with an ACK of what
    // it occupied (data plus SYN and FIN).
    let (reply_seq, reply_ack, reply_flags) = if flags & TCP_ACK != 0 {
        (ack, 0, TCP_RST)
    } else {
        let occupied = (pkt.ip_len - ip_hdr - doff) as u32
            + u32::from(flags & TCP_SYN != 0)
            + u32::from(flags & TCP_FIN != 0);
        (0, seq.wrapping_add(occupied), TCP_RST | TCP_ACK)
    };
    let (s, a) = (reply_seq.to_be_bytes(), reply_ack.to_be_bytes());
    let mut out = [
        tcp[2],
        tcp[3],
        tcp[0],
        tcp[1],
        s[0],
        s[1],
        s[2],
        s[3],
        a[0],
        a[1],
        a[2],
        a[3],
        0x50,
        reply_flags,
        0,
        0,
        0,
        0,
        0,
        0,
    ];
    // Addresses swap: the reply goes from the packet's destination to its source.
    let reply_ip = match ip {
        Ip::V4(src, dst) => Ip::V4(dst, src),
        Ip::V6(src, dst) => Ip::V6(dst, src),
    };
    let c = fold(sum(pseudo(&reply_ip, IPPROTO_TCP, 20), &out)).to_be_bytes();
    out[16] = c[0];
    out[17] = c[1];

    let l2 = swapped_l2(ctx, 0)?;
    let l3 = pkt.l3_off;
    match reply_ip {
        // The 22-byte link-layer write may spill into the IP header's place when there are
        // fewer than two VLAN tags; the IP header is written after it.
        Ip::V4(src, dst) => {
            resize_tail(ctx, l3 + 40)?;
            write(ctx, 0, l2)?;
            write(ctx, l3, ipv4_header(40, IPPROTO_TCP, src, dst))?;
            write(ctx, l3 + 20, out)
        }
        Ip::V6(src, dst) => {
            resize_tail(ctx, l3 + 60)?;
            write(ctx, 0, l2)?;
            write(ctx, l3, ipv6_header(20, IPPROTO_TCP, &src, &dst))?;
            write(ctx, l3 + 40, out)
        }
    }
}

/// Make room for `extra` bytes of new headers between the link layer and the offending IP
/// packet, which becomes the quote: [l2][new headers][original IP packet...].
#[inline(always)]
fn open_gap(ctx: &XdpContext, extra: usize) -> Result<(), Unanswered> {
    let l2 = swapped_l2(ctx, 0)?;
    // SAFETY: ctx.ctx is the xdp_md the kernel passed to this program.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(extra as i32)) } != 0 {
        return Err(Unanswered);
    }
    // All 22 bytes: what lands past the real link-layer header is overwritten by the new IP
    // header, written next.
    write(ctx, 0, l2)
}

#[inline(always)]
fn icmp4(ctx: &XdpContext, pkt: &Packet, src: [u8; 4], dst: [u8; 4]) -> Result<(), Unanswered> {
    const EXTRA: usize = 20 + 8;
    let l3 = pkt.l3_off;
    let ip_hdr = pkt.l4_off - pkt.l3_off;
    // RFC 792: the offending header and the first 8 bytes of its data, as far as they exist
    // in this buffer.
    // Kept whole: with a variable l3 LLVM would otherwise add -l3 to data_end first, pointer
    // arithmetic on pkt_end that the verifier refuses.
    let linear = core::hint::black_box(ctx.data_end() - ctx.data());
    let quote = (ip_hdr + 8).min(pkt.ip_len).min(linear - l3);
    open_gap(ctx, EXTRA)?;
    let total = EXTRA + quote;
    write(ctx, l3, ipv4_header(total, IPPROTO_ICMP, dst, src))?;
    let mut icmp = [3u8, 13, 0, 0, 0, 0, 0, 0];
    let acc = sum_packet::<68>(ctx, l3 + EXTRA, quote, sum(0, &icmp))?;
    let c = fold(acc).to_be_bytes();
    icmp[2] = c[0];
    icmp[3] = c[1];
    write(ctx, l3 + 20, icmp)?;
    resize_tail(ctx, l3 + total)
}

#[inline(always)]
fn icmp6(ctx: &XdpContext, pkt: &Packet, src: &[u8; 16], dst: &[u8; 16]) -> Result<(), Unanswered> {
    const EXTRA: usize = 40 + 8;
    let l3 = pkt.l3_off;
    // Kept whole: with a variable l3 LLVM would otherwise add -l3 to data_end first, pointer
    // arithmetic on pkt_end that the verifier refuses.
    let linear = core::hint::black_box(ctx.data_end() - ctx.data());
    let quote = pkt.ip_len.min(MAX_QUOTE_V6).min(linear - l3);
    open_gap(ctx, EXTRA)?;
    let payload = 8 + quote;
    write(ctx, l3, ipv6_header(payload, IPPROTO_ICMPV6, dst, src))?;
    let mut icmp = [1u8, 1, 0, 0, 0, 0, 0, 0];
    let acc = pseudo(&Ip::V6(*dst, *src), IPPROTO_ICMPV6, payload);
    let acc = sum_packet::<MAX_QUOTE_V6>(ctx, l3 + EXTRA, quote, sum(acc, &icmp))?;
    let c = fold(acc).to_be_bytes();
    icmp[2] = c[0];
    icmp[3] = c[1];
    write(ctx, l3 + 40, icmp)?;
    resize_tail(ctx, l3 + EXTRA + quote)
}
