//! Header parsing with a bounds-checked cursor: never a fixed offset.
//!
//! Ethernet, up to `MAX_VLAN_TAGS` 802.1Q/802.1ad tags in any order, then IPv4 (honouring IHL)
//! or IPv6 (walking up to `MAX_EXT_HDRS` extension headers to reach the upper layer). Anything
//! that claims to be IP but does not hold together is `Malformed`; the caller decides what that
//! means (docs/policy.md `malformed`).

use core::mem::size_of;

use aya_ebpf::{helpers::generated::bpf_xdp_get_buff_len, programs::XdpContext};

pub enum ParseError {
    /// Truncated, inconsistent or deeper than we are willing to walk.
    Malformed,
}

/// The addresses a verdict depends on. IPv6 as two halves each, most significant first, as
/// the lookups read them: only the reply builders need their bytes (`bytes6`), and making
/// them for every packet cost 3-5 ns. `repr(C, u64)`, like `Packet`'s `repr(C)`, keeps every
/// 8-byte field 8-byte aligned on the stack: with Rust's layout LLVM packed them at odd
/// offsets (the object allows misaligned access, for packet data), which the verifier refuses
/// for the stack.
#[repr(C, u64)]
pub enum Addrs {
    V4 { src: [u8; 4], dst: [u8; 4] },
    V6 { src: [u64; 2], dst: [u64; 2] },
}

/// `Packet::l4_proto` when the upper-layer header is not in this packet (a non-first
/// fragment, or not IP). 255 is IANA-reserved, so no real header carries it.
pub const L4_NONE: u8 = 255;

/// What the reply builders need besides the addresses. Every field is always set: a struct
/// with undefined parts can be spilled from a clobbered register, which the verifier rejects.
/// `repr(C)`: see `Addrs`.
#[repr(C)]
pub struct Packet {
    pub addrs: Addrs,
    /// Offset of the IP header: 14 plus 4 per VLAN tag.
    pub l3_off: usize,
    /// Offset of the upper-layer header; meaningful when `l4_proto != L4_NONE`.
    pub l4_off: usize,
    pub l4_proto: u8,
    /// The IP datagram's length as its header states it (IPv6: 40 + payload length).
    pub ip_len: usize,
    /// A fragment other than the first: it carries no upper-layer header.
    pub later_fragment: bool,
}

const ETH_P_IP: [u8; 2] = [0x08, 0x00];
const ETH_P_IPV6: [u8; 2] = [0x86, 0xdd];
const ETH_P_8021Q: [u8; 2] = [0x81, 0x00];
const ETH_P_8021AD: [u8; 2] = [0x88, 0xa8];

/// VLAN tags we look through. A frame with more is malformed rather than passed unexamined.
const MAX_VLAN_TAGS: usize = 2;
/// IPv6 extension headers we walk. A longer chain is malformed: a hostile sender must not be
/// able to hide the upper layer behind a chain we give up on.
const MAX_EXT_HDRS: usize = 8;

const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_DSTOPTS: u8 = 60;

#[repr(C)]
struct EthHdr {
    dst: [u8; 6],
    src: [u8; 6],
    proto: [u8; 2],
}

#[repr(C)]
struct VlanHdr {
    tci: [u8; 2],
    proto: [u8; 2],
}

#[repr(C)]
struct Ipv4Hdr {
    version_ihl: u8,
    tos: u8,
    tot_len: [u8; 2],
    id: [u8; 2],
    frag_off: [u8; 2],
    ttl: u8,
    proto: u8,
    check: [u8; 2],
    src: [u8; 4],
    dst: [u8; 4],
}

#[repr(C)]
struct Ipv6Hdr {
    version_tc_flow: [u8; 4],
    payload_len: [u8; 2],
    next_hdr: u8,
    hop_limit: u8,
    src: [u8; 16],
    dst: [u8; 16],
}

/// The two bytes every generic extension header (and AH) starts with.
#[repr(C)]
struct ExtHdr {
    next_hdr: u8,
    hdr_len: u8,
}

#[repr(C)]
struct FragHdr {
    next_hdr: u8,
    reserved: u8,
    frag_off: [u8; 2],
    id: [u8; 4],
}

/// A read position in the linear part of the frame.
struct Cursor<'a> {
    ctx: &'a XdpContext,
    off: usize,
}

impl<'a> Cursor<'a> {
    #[inline(always)]
    fn new(ctx: &'a XdpContext) -> Self {
        Self { ctx, off: 0 }
    }

    /// A pointer to a `T` at the cursor, after checking that all of it lies in the packet.
    #[inline(always)]
    fn peek<T>(&self) -> Result<*const T, ParseError> {
        Ok(ptr_at::<T>(self.ctx, self.off)?.cast_const())
    }

    /// `peek`, then move past the `T`.
    #[inline(always)]
    fn take<T>(&mut self) -> Result<*const T, ParseError> {
        let p = self.peek::<T>()?;
        self.off += size_of::<T>();
        Ok(p)
    }

    /// Move `len` bytes on, which must all lie in the linear part of the packet.
    #[inline(always)]
    fn skip(&mut self, len: usize) -> Result<(), ParseError> {
        if self.ctx.data() + self.off + len > self.ctx.data_end() {
            return Err(ParseError::Malformed);
        }
        self.off += len;
        Ok(())
    }
}

/// The single bounds-checked accessor: `offset..offset + size_of::<T>()` must lie within
/// `data..data_end`, which is also what the verifier needs to see. The reply builders use it
/// too, after every head or tail adjustment (which invalidates earlier checks).
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Result<*mut T, ParseError> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return Err(ParseError::Malformed);
    }
    Ok((start + offset) as *mut T)
}

/// What the first pass over the headers found: the link layer and the fixed part of the IP
/// header. The addresses come out before the IPv6 extension headers are walked, so that the
/// lookups run first and the verifier checks them once per VLAN depth rather than once for
/// every way the walk can end. A flat struct with every field always set: an enum here would
/// carry undefined bytes in its smaller variant, and moving it trips the verifier.
pub struct Fixed {
    /// `FAMILY_V4`, `FAMILY_V6`, or `FAMILY_NONE` (not IP).
    pub family: u8,
    /// The addresses as numbers, the form the lookups compare: IPv6 as two halves, the most
    /// significant first; IPv4 in the low 32 bits of the first (the second is 0).
    pub src: [u64; 2],
    pub dst: [u64; 2],
    l3_off: usize,
    /// IPv4: after the options; IPv6: after the fixed header.
    next_off: usize,
    /// IPv4: the protocol; IPv6: the next header.
    next: u8,
    ip_len: usize,
    later_fragment: bool,
    /// The frame's length: `frame_len`'s, or for an IP datagram that reaches past the first
    /// buffer, every buffer's (`fits`).
    pub len: usize,
}

pub const FAMILY_NONE: u8 = 0;
pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

impl Fixed {
    #[inline(always)]
    pub fn src4(&self) -> u32 {
        self.src[0] as u32
    }

    #[inline(always)]
    pub fn dst4(&self) -> u32 {
        self.dst[0] as u32
    }
}

/// The bytes of an IPv6 address held as two halves (`Fixed::src`).
#[inline(always)]
pub fn bytes6(a: &[u64; 2]) -> [u8; 16] {
    ((u128::from(a[0]) << 64) | u128::from(a[1])).to_be_bytes()
}

/// An IPv6 address in the packet as two halves, most significant first.
///
/// # Safety
/// `p` must point at 16 readable bytes (checked against `data_end`).
#[inline(always)]
unsafe fn halves(p: *const [u8; 16]) -> [u64; 2] {
    // Two 64-bit loads rather than sixteen byte loads: the object is linked with misaligned
    // access allowed (filter-ebpf/build.rs), which the kernel permits for packet pointers on
    // architectures with efficient unaligned access (x86-64, arm64).
    // SAFETY: the caller's; read_unaligned has no alignment requirement.
    let w = unsafe { p.cast::<[u64; 2]>().read_unaligned() };
    [u64::from_be(w[0]), u64::from_be(w[1])]
}

/// `off` unchanged, but to the verifier an offset whose bits 2..=4 are unknown: the link-layer
/// lengths 14, 18 and 22 all become the same range. `unknown` is any value the verifier
/// cannot know (the frame length); black_box keeps LLVM from folding the two XORs away.
#[inline(always)]
fn blur(off: usize, unknown: usize) -> usize {
    let m = unknown & 0x1c;
    core::hint::black_box(off ^ m) ^ m
}

/// A frame whose linear part is shorter than this is taken to be whole, not the first buffer
/// of several: a driver that splits a frame fills its first buffer (for veth and generic XDP,
/// a page less head- and tailroom) before starting the next. No verdict rests on that: an IP
/// datagram longer than the first buffer is measured whole (`fits`), and frames that are not
/// IP or are malformed are measured whole anyway; only bytes behind a complete datagram in a
/// later buffer would go uncounted if a driver did otherwise.
pub const WHOLE_BELOW: usize = 2048;

/// The frame's length, every buffer of a multi-buffer frame included, as far as it can be
/// known before the headers are read. `bpf_xdp_get_buff_len` is a helper call, 4-9 ns a
/// packet on the AMD EPYC guest of docs/performance.md (a fifth of a bare `XDP_DROP`), so a
/// frame shorter than `WHOLE_BELOW` (every frame of a flood) is measured by its linear part.
/// Should a first buffer that short have more behind it, the IP header says so, and `fits`
/// measures the whole frame; frames that are not IP, or are malformed, are counted by
/// `whole_len` (rare paths). Only bytes behind a complete datagram, in a later buffer of such
/// a frame, would go uncounted.
#[inline(always)]
pub fn frame_len(ctx: &XdpContext) -> usize {
    let linear = ctx.data_end() - ctx.data();
    if linear < WHOLE_BELOW {
        linear
    } else {
        whole_len(ctx)
    }
}

/// The frame's length, every buffer included, by helper call.
#[inline(always)]
pub fn whole_len(ctx: &XdpContext) -> usize {
    // SAFETY: ctx.ctx is the xdp_md the kernel passed to the program.
    unsafe { bpf_xdp_get_buff_len(ctx.ctx) as usize }
}

/// The frame's length if an IP datagram of `ip_len` bytes at `l3_off` fits in it (trailing
/// Ethernet padding is fine, a datagram cut short is not), else None. `len` is `frame_len`'s,
/// which may be the first buffer alone: a datagram that seems longer is measured against
/// every buffer before it counts as cut short, and then that is the frame's length.
#[inline(always)]
fn fits(ctx: &XdpContext, len: usize, l3_off: usize, ip_len: usize) -> Option<usize> {
    if ip_len <= len.saturating_sub(l3_off) {
        return Some(len);
    }
    let whole = whole_len(ctx);
    (ip_len <= whole.saturating_sub(l3_off)).then_some(whole)
}

/// Ethernet, VLAN tags, and the fixed part of the IP header. `len` is the frame's length
/// from `frame_len`.
#[inline(always)]
pub fn headers(ctx: &XdpContext, len: usize) -> Result<Fixed, ParseError> {
    let mut c = Cursor::new(ctx);
    let eth: *const EthHdr = c.take()?;
    // SAFETY: `take` checked that the whole header lies in the packet.
    let mut proto = unsafe { (*eth).proto };
    for _ in 0..MAX_VLAN_TAGS {
        if proto != ETH_P_8021Q && proto != ETH_P_8021AD {
            break;
        }
        let vlan: *const VlanHdr = c.take()?;
        // SAFETY: checked by `take`.
        proto = unsafe { (*vlan).proto };
    }
    // Each tag depth reaches here with its own constant offset (14, 18 or 22), and the
    // verifier would walk everything after this once per depth. As one range for all three
    // it walks it once (a third of the load time).
    c.off = blur(c.off, len);
    match proto {
        ETH_P_IP => ipv4(&mut c, len),
        ETH_P_IPV6 => ipv6(&mut c, len),
        ETH_P_8021Q | ETH_P_8021AD => Err(ParseError::Malformed),
        _ => Ok(Fixed {
            family: FAMILY_NONE,
            src: [0; 2],
            dst: [0; 2],
            l3_off: c.off,
            next_off: c.off,
            next: L4_NONE,
            ip_len: 0,
            later_fragment: false,
            len,
        }),
    }
}

/// An IPv4 address in the form of `Fixed::src`.
#[inline(always)]
fn wide(a: [u8; 4]) -> [u64; 2] {
    [u64::from(u32::from_be_bytes(a)), 0]
}

#[inline(always)]
fn ipv4(c: &mut Cursor<'_>, len: usize) -> Result<Fixed, ParseError> {
    let l3_off = c.off;
    let ip: *const Ipv4Hdr = c.peek()?;
    // SAFETY: `peek` checked that the fixed 20-byte header lies in the packet.
    let (version_ihl, tot_len, frag_off, proto, src, dst) = unsafe {
        (
            (*ip).version_ihl,
            (*ip).tot_len,
            (*ip).frag_off,
            (*ip).proto,
            (*ip).src,
            (*ip).dst,
        )
    };
    if version_ihl >> 4 != 4 {
        return Err(ParseError::Malformed);
    }
    let ihl = usize::from(version_ihl & 0x0f) * 4;
    if ihl < size_of::<Ipv4Hdr>() {
        return Err(ParseError::Malformed);
    }
    let tot_len = usize::from(u16::from_be_bytes(tot_len));
    // The datagram must hold its own header and fit in the frame.
    if tot_len < ihl {
        return Err(ParseError::Malformed);
    }
    let len = fits(c.ctx, len, l3_off, tot_len).ok_or(ParseError::Malformed)?;
    // Options included: the whole header must be present.
    c.skip(ihl)?;
    let later_fragment = u16::from_be_bytes(frag_off) & 0x1fff != 0;
    Ok(Fixed {
        family: FAMILY_V4,
        src: wide(src),
        dst: wide(dst),
        l3_off,
        next_off: c.off,
        next: if later_fragment { L4_NONE } else { proto },
        ip_len: tot_len,
        later_fragment,
        len,
    })
}

#[inline(always)]
fn ipv6(c: &mut Cursor<'_>, len: usize) -> Result<Fixed, ParseError> {
    let l3_off = c.off;
    let ip: *const Ipv6Hdr = c.take()?;
    // SAFETY: `take` checked that the 40-byte header lies in the packet.
    let (vtc, payload_len, next, src, dst) = unsafe {
        (
            (*ip).version_tc_flow[0],
            (*ip).payload_len,
            (*ip).next_hdr,
            halves(&raw const (*ip).src),
            halves(&raw const (*ip).dst),
        )
    };
    if vtc >> 4 != 6 {
        return Err(ParseError::Malformed);
    }
    let payload_len = usize::from(u16::from_be_bytes(payload_len));
    // payload_len 0 is a jumbogram (RFC 2675): the length is in a hop-by-hop option.
    let len = fits(c.ctx, len, l3_off, size_of::<Ipv6Hdr>() + payload_len)
        .ok_or(ParseError::Malformed)?;
    Ok(Fixed {
        family: FAMILY_V6,
        src,
        dst,
        l3_off,
        next_off: c.off,
        next,
        ip_len: size_of::<Ipv6Hdr>() + payload_len,
        later_fragment: false,
        len,
    })
}

/// The whole packet: for IPv6, walk the extension headers to the upper layer. Only called for
/// IP (`family` V4 or V6).
#[inline(always)]
pub fn finish(ctx: &XdpContext, h: &Fixed) -> Result<Packet, ParseError> {
    if h.family == FAMILY_V4 {
        return Ok(Packet {
            addrs: Addrs::V4 {
                src: h.src4().to_be_bytes(),
                dst: h.dst4().to_be_bytes(),
            },
            l3_off: h.l3_off,
            l4_off: h.next_off,
            l4_proto: h.next,
            ip_len: h.ip_len,
            later_fragment: h.later_fragment,
        });
    }
    ipv6_upper(ctx, h)
}

/// Walk the extension headers after the fixed IPv6 header to the upper layer.
#[inline(always)]
fn ipv6_upper(ctx: &XdpContext, h: &Fixed) -> Result<Packet, ParseError> {
    let mut c = Cursor {
        ctx,
        off: h.next_off,
    };
    let mut next = h.next;
    let packet = |l4_off: usize, l4_proto: u8, later_fragment: bool| Packet {
        addrs: Addrs::V6 {
            src: h.src,
            dst: h.dst,
        },
        l3_off: h.l3_off,
        l4_off,
        l4_proto,
        ip_len: h.ip_len,
        later_fragment,
    };
    for _ in 0..MAX_EXT_HDRS {
        match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_AH => {
                let h: *const ExtHdr = c.peek()?;
                // SAFETY: checked by `peek`.
                let (nh, hdr_len) = unsafe { ((*h).next_hdr, usize::from((*h).hdr_len)) };
                let len = if next == IPPROTO_AH {
                    (hdr_len + 2) * 4 // RFC 4302: in 32-bit words, minus 2
                } else {
                    (hdr_len + 1) * 8 // RFC 8200: in 8-octet units, not counting the first 8
                };
                c.skip(len)?;
                next = nh;
            }
            IPPROTO_FRAGMENT => {
                let f: *const FragHdr = c.take()?;
                // SAFETY: checked by `take`.
                let (nh, frag_off) = unsafe { ((*f).next_hdr, (*f).frag_off) };
                // A non-first fragment carries no upper-layer header; its addresses are all
                // we need, and they are in the fixed header.
                if u16::from_be_bytes(frag_off) & 0xfff8 != 0 {
                    return Ok(packet(0, L4_NONE, true));
                }
                next = nh;
            }
            _ => return Ok(packet(c.off, next, false)),
        }
    }
    match next {
        IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_AH | IPPROTO_FRAGMENT => {
            Err(ParseError::Malformed)
        }
        _ => Ok(packet(c.off, next, false)),
    }
}
