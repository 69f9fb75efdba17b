//! The reference matcher: a second, deliberately plain implementation of what the XDP program
//! does with a frame, kept only as the oracle of the differential tests
//! (`tests/tests/differential.rs`), which compare it with the real program frame by frame.
//!
//! It follows the documented semantics (`docs/policy.md`, the rules restated below), not the
//! eBPF code's structure: safe slice reads with `get`, an offset into the frame, no cursor type
//! and no `unsafe`. Two implementations that share nothing but the specification make a
//! disagreement mean something.
//!
//! # API
//!
//! - [`parse`]`(frame) -> `[`Parsed`]: non-IP, malformed, or the IPv4/IPv6 addresses.
//! - [`evaluate`]`(&Compiled, frame) -> `[`Outcome`]: what decides the frame and which counter
//!   it moves; the address part is [`Compiled::verdict`], the malformed choice is
//!   [`Compiled::malformed`].
//! - [`run`]`(&Compiled, targets, frame) -> (`[`Outcome`]`, `[`Sent`]`)`: the same, and what the
//!   program sends: the frame passed, dropped (and why), a `reject` answer (TCP reset, ICMP or
//!   ICMPv6 unreachable) or a `redirect`ed frame, byte for byte. [`Sent::xdp_action`] is the
//!   XDP return code. Written from docs/policy.md and docs/security.md, not from the eBPF
//!   code: plain `Vec` building and a checksum over the finished bytes.
//!
//! # The parsing rules
//!
//! - Ethernet: a frame shorter than 14 bytes is malformed.
//! - Up to 2 VLAN tags (802.1Q `0x8100` and 802.1ad `0x88a8`, in any order), each 4 bytes that
//!   must all be present. A third tag is malformed.
//! - Any EtherType other than IPv4, IPv6 or a VLAN TPID is non-IP.
//! - IPv4: the 20-byte fixed header must be present, the version must be 4, the IHL at least 5,
//!   the total length at least IHL*4 and at most the bytes from the start of the IP header to
//!   the end of the frame (trailing padding is fine), and the IHL*4-byte header must be present.
//! - IPv6: the 40-byte header must be present, the version must be 6, the payload length at
//!   most the bytes after that header (0, a jumbogram, is allowed). Then up to 8 extension
//!   headers are walked: hop-by-hop (0), routing (43) and destination options (60) are
//!   `(len + 1) * 8` bytes, AH (51) is `(len + 2) * 4` bytes, a fragment header (44) is 8 bytes
//!   and a non-first fragment (fragment offset != 0) ends the walk. Each header must lie in the
//!   frame (not necessarily within the payload length). An extension header still next after 8
//!   is malformed.
//!
//! The program's bounds checks look only at the linear part of a multi-buffer frame while its
//! length checks see the whole frame; this model has one buffer, so it describes frames that
//! fit in the linear part (anything below ~3.5 KB under `BPF_PROG_TEST_RUN`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use filter_common::{NoticeTarget, action, malformed};

use crate::compile::Compiled;

/// What the parser makes of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Not IPv4/IPv6 (ARP, LLDP, ...): passed without a lookup.
    NonIp,
    /// Claims to be IP (or carries a third VLAN tag) but does not hold together.
    Malformed,
    V4 {
        src: Ipv4Addr,
        dst: Ipv4Addr,
    },
    V6 {
        src: Ipv6Addr,
        dst: Ipv6Addr,
    },
}

/// What the program does with a frame, and so which counter moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Rule `index` of [`Compiled::rules`] decided with `action` ([`filter_common::action`]):
    /// its rule counter and the per-action total move.
    Rule { index: usize, action: u8 },
    /// IP, no rule matched: passed, counted as no-match.
    NoMatch,
    /// Not IP: passed, counted as non-IP.
    NonIp,
    /// Counted as malformed, and also as malformed-dropped when `dropped`.
    Malformed { dropped: bool },
}

/// XDP return codes (`enum xdp_action` in the kernel's uapi).
pub mod xdp {
    pub const ABORTED: u32 = 0;
    pub const DROP: u32 = 1;
    pub const PASS: u32 = 2;
    pub const TX: u32 = 3;
    pub const REDIRECT: u32 = 4;
}

/// The whole decision for one frame under `compiled`.
pub fn evaluate(compiled: &Compiled, frame: &[u8]) -> Outcome {
    let (dst, src) = match parse(frame) {
        Parsed::NonIp => return Outcome::NonIp,
        Parsed::Malformed => {
            // The program passes only on an explicit PASS: any other value fails closed.
            return Outcome::Malformed {
                dropped: compiled.malformed != malformed::PASS,
            };
        }
        Parsed::V4 { src, dst } => (IpAddr::V4(dst), IpAddr::V4(src)),
        Parsed::V6 { src, dst } => (IpAddr::V6(dst), IpAddr::V6(src)),
    };
    let verdict = compiled.verdict(dst, src);
    match verdict.rule {
        Some(index) => Outcome::Rule {
            index,
            action: verdict.action,
        },
        None => Outcome::NoMatch,
    }
}

/// The shadow hit of a frame (docs/policy.md, "Shadow mode"): the shadow rule's index and the
/// action it would have taken. The program counts it in the rule's counter and in the shadow
/// total of that action, beside whatever [`evaluate`] says; a frame that is not IP, or is
/// malformed, has none.
pub fn shadow(compiled: &Compiled, frame: &[u8]) -> Option<(usize, u8)> {
    let (dst, src) = match parse(frame) {
        Parsed::NonIp | Parsed::Malformed => return None,
        Parsed::V4 { src, dst } => (IpAddr::V4(dst), IpAddr::V4(src)),
        Parsed::V6 { src, dst } => (IpAddr::V6(dst), IpAddr::V6(src)),
    };
    let v = compiled.shadow(dst, src)?;
    Some((v.rule?, v.action))
}

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const VLAN_HLEN: usize = 4;
const MAX_VLAN_TAGS: usize = 2;

const IPV4_MIN_HLEN: usize = 20;
const IPV6_HLEN: usize = 40;
const MAX_EXT_HDRS: usize = 8;

const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_DSTOPTS: u8 = 60;

/// `N` bytes of `buf` at `at`, or `None` if they are not all there.
fn array<const N: usize>(buf: &[u8], at: usize) -> Option<[u8; N]> {
    buf.get(at..at.checked_add(N)?)?.try_into().ok()
}

fn byte(buf: &[u8], at: usize) -> Option<u8> {
    buf.get(at).copied()
}

fn be16(buf: &[u8], at: usize) -> Option<u16> {
    array(buf, at).map(u16::from_be_bytes)
}

/// Classify a frame and extract the addresses a verdict depends on.
pub fn parse(frame: &[u8]) -> Parsed {
    match layout(frame) {
        // `None` anywhere below means a read past the end: malformed.
        None => Parsed::Malformed,
        Some(None) => Parsed::NonIp,
        Some(Some(ip)) => ip.addrs,
    }
}

/// Where things are in an IP frame: what `reject` and `redirect` need besides the addresses.
#[derive(Clone, Copy, Debug)]
struct Layout {
    /// [`Parsed::V4`] or [`Parsed::V6`].
    addrs: Parsed,
    /// Offset of the IP header: after the Ethernet header and its VLAN tags.
    l3: usize,
    /// Offset of the upper-layer header: after the IPv4 options or the IPv6 extension headers.
    l4: usize,
    /// The upper-layer protocol; `None` in a non-first fragment, which carries none.
    upper: Option<u8>,
    /// The datagram's length as its header states it (IPv4 total length; IPv6 40 plus the
    /// payload length).
    datagram_len: usize,
}

/// `None`: malformed; `Some(None)`: not IP.
fn layout(frame: &[u8]) -> Option<Option<Layout>> {
    if frame.len() < ETH_HLEN {
        return None;
    }
    // The EtherType sits in the last two bytes of the Ethernet header, and each VLAN tag ends
    // with the type of what follows it: so the type is always the two bytes before `l3`.
    let mut l3 = ETH_HLEN;
    let mut tags = 0;
    loop {
        let ethertype = be16(frame, l3 - 2)?;
        match ethertype {
            ETH_P_8021Q | ETH_P_8021AD => {
                if tags == MAX_VLAN_TAGS {
                    return None;
                }
                tags += 1;
                l3 += VLAN_HLEN;
                // The whole tag, not just the type field, must be present.
                frame.get(..l3)?;
            }
            ETH_P_IP => return parse_ipv4(frame.get(l3..)?, l3).map(Some),
            ETH_P_IPV6 => return parse_ipv6(frame.get(l3..)?, l3).map(Some),
            _ => return Some(None),
        }
    }
}

/// `ip`: the frame from the first byte of the IPv4 header (at `l3`) to the end.
fn parse_ipv4(ip: &[u8], l3: usize) -> Option<Layout> {
    let fixed: [u8; IPV4_MIN_HLEN] = array(ip, 0)?;
    let version = fixed[0] >> 4;
    let header_len = usize::from(fixed[0] & 0x0f) * 4;
    let total_len = usize::from(be16(&fixed, 2)?);
    let fragment_offset = be16(&fixed, 6)? & 0x1fff;
    let holds_together = version == 4
        && header_len >= IPV4_MIN_HLEN
        && total_len >= header_len
        && total_len <= ip.len()
        && header_len <= ip.len();
    holds_together.then(|| Layout {
        addrs: Parsed::V4 {
            src: Ipv4Addr::from([fixed[12], fixed[13], fixed[14], fixed[15]]),
            dst: Ipv4Addr::from([fixed[16], fixed[17], fixed[18], fixed[19]]),
        },
        l3,
        l4: l3 + header_len,
        upper: (fragment_offset == 0).then_some(fixed[9]),
        datagram_len: total_len,
    })
}

/// `ip`: the frame from the first byte of the IPv6 header (at `l3`) to the end.
fn parse_ipv6(ip: &[u8], l3: usize) -> Option<Layout> {
    let fixed: [u8; IPV6_HLEN] = array(ip, 0)?;
    if fixed[0] >> 4 != 6 {
        return None;
    }
    let payload_len = usize::from(be16(&fixed, 4)?);
    if payload_len > ip.get(IPV6_HLEN..)?.len() {
        return None;
    }
    let done = |at: usize, upper: Option<u8>| Layout {
        addrs: Parsed::V6 {
            src: Ipv6Addr::from(array::<16>(&fixed, 8).unwrap_or_default()),
            dst: Ipv6Addr::from(array::<16>(&fixed, 24).unwrap_or_default()),
        },
        l3,
        l4: l3 + at,
        upper,
        datagram_len: IPV6_HLEN + payload_len,
    };
    let mut next = fixed[6];
    let mut at = IPV6_HLEN;
    let mut walked = 0;
    loop {
        let len = match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                (usize::from(byte(ip, at + 1)?) + 1) * 8
            }
            IPPROTO_AH => (usize::from(byte(ip, at + 1)?) + 2) * 4,
            IPPROTO_FRAGMENT => 8,
            // The upper layer (or "no next header", 59): the walk is done.
            _ => return Some(done(at, Some(next))),
        };
        if walked == MAX_EXT_HDRS {
            return None;
        }
        let header = ip.get(at..at + len)?;
        if next == IPPROTO_FRAGMENT && be16(header, 2)? & 0xfff8 != 0 {
            // A non-first fragment: what follows is the middle of a payload, not a header.
            return Some(done(at, None));
        }
        next = byte(header, 0)?;
        at += len;
        walked += 1;
    }
}

// ---------------------------------------------------------------------------------------------
// What `reject` and `redirect` send (docs/policy.md, "Redirect and reject"; docs/security.md,
// "The reject path").

/// What leaves the program, and which extra counter moves, once the rule counter and the
/// action's total have been counted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sent {
    /// XDP_PASS, the frame as it arrived.
    Passed,
    /// XDP_ABORTED: an action the program does not implement (the policy parser never
    /// produces one).
    Aborted,
    /// XDP_DROP.
    Dropped,
    /// XDP_DROP of a frame a `reject` (or a redirect rule's HTTPS reset) may not answer:
    /// counted as reject-unanswered.
    Unanswered,
    /// XDP_DROP of a frame whose notice target is not configured: counted as redirect-failed.
    RedirectFailed,
    /// XDP_TX: the answer, sent back out of the interface the frame came in on.
    Answered(Vec<u8>),
    /// XDP_REDIRECT to the notice target, the frame rewritten for it.
    Redirected(Vec<u8>),
}

impl Sent {
    /// The XDP return code.
    pub fn xdp_action(&self) -> u32 {
        match self {
            Self::Passed => xdp::PASS,
            Self::Aborted => xdp::ABORTED,
            Self::Dropped | Self::Unanswered | Self::RedirectFailed => xdp::DROP,
            Self::Answered(_) => xdp::TX,
            Self::Redirected(_) => xdp::REDIRECT,
        }
    }

    /// The bytes the program sends, for an answer or a redirect.
    pub fn bytes(&self) -> Option<&[u8]> {
        match self {
            Self::Answered(b) | Self::Redirected(b) => Some(b),
            _ => None,
        }
    }
}

/// The whole effect of a frame: [`evaluate`]'s outcome, and what is sent. `targets[i]` is
/// the notice target with index `i` (as `apply` loads them). The `reject` rate limit is not
/// modelled: this answers every packet that may be answered, so callers set a limit they do
/// not reach.
pub fn run(compiled: &Compiled, targets: &[NoticeTarget], frame: &[u8]) -> (Outcome, Sent) {
    let outcome = evaluate(compiled, frame);
    let sent = match outcome {
        Outcome::NoMatch | Outcome::NonIp | Outcome::Malformed { dropped: false } => Sent::Passed,
        Outcome::Malformed { dropped: true } => Sent::Dropped,
        Outcome::Rule { index, action } => {
            let rule = compiled.rules.get(index);
            // A rule matched, so the frame is IP.
            let ip = layout(frame).flatten();
            match (action, ip) {
                (action::PASS, _) => Sent::Passed,
                (action::DROP, _) => Sent::Dropped,
                (action::REJECT, Some(ip)) => answer(frame, &ip),
                (action::REDIRECT, Some(ip)) => {
                    let https_reset = rule
                        .is_some_and(|r| r.flags & filter_common::rule_flags::HTTPS_REJECT != 0);
                    if https_reset && is_https(frame, &ip) {
                        answer(frame, &ip)
                    } else {
                        match rule.and_then(|r| targets.get(usize::from(r.target))) {
                            Some(t) if t.ifindex != 0 => {
                                Sent::Redirected(redirected(frame, &ip, t))
                            }
                            _ => Sent::RedirectFailed,
                        }
                    }
                }
                _ => Sent::Aborted,
            }
        }
    };
    (outcome, sent)
}

const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_ICMPV6: u8 = 58;
/// IANA-reserved: no real upper layer carries it, and the program never answers it.
const IPPROTO_RESERVED: u8 = 255;

/// TCP to port 443 (what a redirect rule's `https = "reject"` resets).
fn is_https(frame: &[u8], ip: &Layout) -> bool {
    ip.upper == Some(IPPROTO_TCP) && be16(frame, ip.l4 + 2) == Some(443)
}

/// Whether a packet may be answered at all (docs/security.md, "Never answered").
fn may_answer(frame: &[u8], ip: &Layout) -> bool {
    let Some(upper) = ip.upper else {
        return false; // a non-first fragment
    };
    if upper == IPPROTO_RESERVED {
        return false;
    }
    // Sent to an Ethernet group (multicast or broadcast): the I/G bit.
    if frame[0] & 1 != 0 {
        return false;
    }
    let addresses_ok = match ip.addrs {
        Parsed::V4 { src, dst } => {
            let bad_src = src.octets()[0] == 0 || src.is_loopback() || src.octets()[0] >= 224;
            let bad_dst = dst.octets()[0] == 0 || dst.octets()[0] >= 224;
            !bad_src && !bad_dst
        }
        Parsed::V6 { src, dst } => {
            !(src.is_multicast()
                || src.is_unspecified()
                || src.is_loopback()
                || dst.is_multicast()
                || dst.is_unspecified())
        }
        Parsed::NonIp | Parsed::Malformed => false,
    };
    if !addresses_ok {
        return false;
    }
    // The upper-layer bytes looked at must be in the frame; errors never answer errors. An
    // ICMP or ICMPv6 error type is refused whichever IP version carries it.
    match upper {
        IPPROTO_TCP => array::<2>(frame, ip.l4 + 12).is_some_and(|[_, flags]| flags & 0x04 == 0),
        IPPROTO_ICMP => {
            array::<2>(frame, ip.l4).is_some_and(|[ty, _]| !matches!(ty, 3 | 4 | 5 | 11 | 12))
        }
        IPPROTO_ICMPV6 => array::<2>(frame, ip.l4).is_some_and(|[ty, _]| ty >= 128),
        _ => true,
    }
}

/// The answer to a rejected packet, or why there is none.
fn answer(frame: &[u8], ip: &Layout) -> Sent {
    if !may_answer(frame, ip) {
        return Sent::Unanswered;
    }
    let reply = if ip.upper == Some(IPPROTO_TCP) {
        tcp_reset(frame, ip)
    } else {
        Some(icmp_unreachable(frame, ip))
    };
    reply.map_or(Sent::Unanswered, Sent::Answered)
}

/// The link-layer header of the answer: the frame's, with the MAC addresses swapped and the
/// VLAN tags kept, so the answer leaves the way the packet came.
fn link_header_back(frame: &[u8], ip: &Layout) -> Vec<u8> {
    let mut l2 = frame[..ip.l3].to_vec();
    l2[..6].copy_from_slice(&frame[6..12]);
    l2[6..12].copy_from_slice(&frame[..6]);
    l2
}

/// RFC 1071: the one's complement of the one's-complement sum of 16-bit words.
fn internet_checksum(parts: &[&[u8]]) -> u16 {
    let bytes: Vec<u8> = parts.concat();
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IP header from `from` to `to` carrying `payload` bytes of `proto`: IPv4 without options,
/// DF set, id 0, TTL 64; IPv6 with hop limit 64, class and flow label 0.
fn ip_header(from: IpAddr, to: IpAddr, proto: u8, payload: usize) -> Vec<u8> {
    match (from, to) {
        (IpAddr::V4(from), IpAddr::V4(to)) => {
            let total = (IPV4_MIN_HLEN + payload) as u16;
            let mut h = vec![0x45, 0];
            h.extend(total.to_be_bytes());
            h.extend([0, 0, 0x40, 0, 64, proto, 0, 0]);
            h.extend(from.octets());
            h.extend(to.octets());
            let c = internet_checksum(&[&h]);
            h[10..12].copy_from_slice(&c.to_be_bytes());
            h
        }
        (IpAddr::V6(from), IpAddr::V6(to)) => {
            let mut h = vec![0x60, 0, 0, 0];
            h.extend((payload as u16).to_be_bytes());
            h.extend([proto, 64]);
            h.extend(from.octets());
            h.extend(to.octets());
            h
        }
        _ => unreachable!("one family per packet"),
    }
}

/// The pseudo-header a TCP or ICMPv6 checksum covers.
fn pseudo_header(from: IpAddr, to: IpAddr, proto: u8, len: usize) -> Vec<u8> {
    let mut p = Vec::new();
    match (from, to) {
        (IpAddr::V4(from), IpAddr::V4(to)) => {
            p.extend(from.octets());
            p.extend(to.octets());
            p.extend([0, proto]);
            p.extend((len as u16).to_be_bytes());
        }
        (IpAddr::V6(from), IpAddr::V6(to)) => {
            p.extend(from.octets());
            p.extend(to.octets());
            p.extend((len as u32).to_be_bytes());
            p.extend([0, 0, 0, proto]);
        }
        _ => unreachable!("one family per packet"),
    }
    p
}

/// The packet's (source, destination).
fn endpoints(ip: &Layout) -> (IpAddr, IpAddr) {
    match ip.addrs {
        Parsed::V4 { src, dst } => (src.into(), dst.into()),
        Parsed::V6 { src, dst } => (src.into(), dst.into()),
        Parsed::NonIp | Parsed::Malformed => unreachable!("a layout is IP"),
    }
}

/// RFC 9293 3.10.7.1: a segment with ACK gets `<SEQ=SEG.ACK><CTL=RST>`; any other gets
/// `<SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>`, where SEG.LEN counts the data and SYN and FIN.
/// Ports swapped, a bare 20-byte header, window 0. `None` when the TCP header is not all
/// there or its data offset is below 5 words or runs past the datagram.
fn tcp_reset(frame: &[u8], ip: &Layout) -> Option<Vec<u8>> {
    let tcp: [u8; 20] = array(frame, ip.l4)?;
    let data_offset = usize::from(tcp[12] >> 4) * 4;
    let ip_header_len = ip.l4 - ip.l3;
    if data_offset < 20 || ip.datagram_len < ip_header_len + data_offset {
        return None;
    }
    let seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
    let ack = u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]);
    let flags = tcp[13];
    let (syn, fin, has_ack) = (flags & 0x02 != 0, flags & 0x01 != 0, flags & 0x10 != 0);
    let (reply_seq, reply_ack, reply_flags) = if has_ack {
        (ack, 0, 0x04)
    } else {
        let data = ip.datagram_len - ip_header_len - data_offset;
        let len = data as u32 + u32::from(syn) + u32::from(fin);
        (0, seq.wrapping_add(len), 0x04 | 0x10)
    };
    let (src, dst) = endpoints(ip);
    let mut seg = Vec::with_capacity(20);
    seg.extend(&tcp[2..4]);
    seg.extend(&tcp[0..2]);
    seg.extend(reply_seq.to_be_bytes());
    seg.extend(reply_ack.to_be_bytes());
    seg.extend([0x50, reply_flags, 0, 0, 0, 0, 0, 0]);
    let c = internet_checksum(&[&pseudo_header(dst, src, IPPROTO_TCP, 20), &seg]);
    seg[16..18].copy_from_slice(&c.to_be_bytes());
    let mut out = link_header_back(frame, ip);
    out.extend(ip_header(dst, src, IPPROTO_TCP, 20));
    out.extend(seg);
    Some(out)
}

/// How much of an IPv6 packet an ICMPv6 error quotes (RFC 4443 asks for as much as fits in
/// the minimum MTU; edgeblock keeps its answers small: docs/security.md).
const ICMPV6_QUOTE: usize = 64;

/// ICMP destination unreachable, "communication administratively prohibited" (type 3 code
/// 13), quoting the offending IPv4 header and 8 bytes of its data (RFC 792); or ICMPv6
/// destination unreachable, "communication with destination administratively prohibited"
/// (type 1 code 1), quoting the first 64 bytes of the IPv6 packet.
fn icmp_unreachable(frame: &[u8], ip: &Layout) -> Vec<u8> {
    let (src, dst) = endpoints(ip);
    let datagram = &frame[ip.l3..];
    let (proto, mut message, quote_len) = match ip.addrs {
        Parsed::V4 { .. } => (
            IPPROTO_ICMP,
            vec![3, 13, 0, 0, 0, 0, 0, 0],
            (ip.l4 - ip.l3 + 8).min(ip.datagram_len),
        ),
        _ => (
            IPPROTO_ICMPV6,
            vec![1, 1, 0, 0, 0, 0, 0, 0],
            ip.datagram_len.min(ICMPV6_QUOTE).min(datagram.len()),
        ),
    };
    message.extend(&datagram[..quote_len]);
    let c = if proto == IPPROTO_ICMP {
        internet_checksum(&[&message])
    } else {
        internet_checksum(&[&pseudo_header(dst, src, proto, message.len()), &message])
    };
    message[2..4].copy_from_slice(&c.to_be_bytes());
    let mut out = link_header_back(frame, ip);
    out.extend(ip_header(dst, src, proto, message.len()));
    out.extend(message);
    out
}

/// The frame as it goes to the notice target: its MAC addresses, and no VLAN tags (they
/// belong to the link the frame came in on); the IP packet and any padding unchanged.
fn redirected(frame: &[u8], ip: &Layout, target: &NoticeTarget) -> Vec<u8> {
    let mut out = target.dst_mac.to_vec();
    out.extend(target.src_mac);
    out.extend(&frame[ip.l3 - 2..]);
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use filter_common::NoticeTarget;
    use filter_common::action::{DROP, PASS};

    use super::*;
    use crate::compile::compile;

    const SRC4: [u8; 4] = [192, 0, 2, 2];
    const DST4: [u8; 4] = [203, 0, 113, 9];

    fn v4_addrs() -> Parsed {
        Parsed::V4 {
            src: SRC4.into(),
            dst: DST4.into(),
        }
    }

    fn src6() -> Ipv6Addr {
        "2001:db8:c::2".parse().unwrap()
    }

    fn dst6() -> Ipv6Addr {
        "2001:db8:1::9".parse().unwrap()
    }

    fn v6_addrs() -> Parsed {
        Parsed::V6 {
            src: src6(),
            dst: dst6(),
        }
    }

    /// Ethernet header with the given type stack (outermost first), each TPID followed by a
    /// 2-byte TCI in the frame.
    fn eth(types: &[u16]) -> Vec<u8> {
        let mut f = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1];
        for (i, t) in types.iter().enumerate() {
            if i > 0 {
                f.extend([0x00, 0x05]); // TCI of the preceding tag
            }
            f.extend(t.to_be_bytes());
        }
        f
    }

    /// An IPv4 header with `options` (a multiple of 4 bytes) and `payload` bytes behind it,
    /// with honest IHL and total length.
    fn ipv4(options: &[u8], payload: usize) -> Vec<u8> {
        let hlen = 20 + options.len();
        let mut h = vec![0x40 | (hlen / 4) as u8, 0];
        h.extend(((hlen + payload) as u16).to_be_bytes());
        h.extend([0, 0, 0, 0, 64, 17, 0, 0]);
        h.extend(SRC4);
        h.extend(DST4);
        h.extend(options);
        h.extend(std::iter::repeat_n(0xee, payload));
        h
    }

    fn v4_frame(types: &[u16]) -> Vec<u8> {
        let mut f = eth(types);
        f.extend(ipv4(&[], 8));
        f
    }

    fn set_be16(f: &mut [u8], at: usize, v: u16) {
        f[at..at + 2].copy_from_slice(&v.to_be_bytes());
    }

    /// An IPv6 header announcing `next` with `rest` behind it and an honest payload length.
    fn ipv6(next: u8, rest: &[u8]) -> Vec<u8> {
        let mut h = vec![0x60, 0, 0, 0];
        h.extend((rest.len() as u16).to_be_bytes());
        h.extend([next, 64]);
        h.extend(src6().octets());
        h.extend(dst6().octets());
        h.extend(rest);
        h
    }

    fn v6_frame(next: u8, rest: &[u8]) -> Vec<u8> {
        let mut f = eth(&[0x86dd]);
        f.extend(ipv6(next, rest));
        f
    }

    /// A generic extension header (hop-by-hop, routing, destination options) of
    /// `(units + 1) * 8` bytes.
    fn generic(next: u8, units: u8) -> Vec<u8> {
        let mut h = vec![next, units];
        h.resize((usize::from(units) + 1) * 8, 0);
        h
    }

    fn fragment(next: u8, offset: u16, more: bool) -> Vec<u8> {
        let mut h = vec![next, 0];
        h.extend(((offset << 3) | u16::from(more)).to_be_bytes());
        h.extend([0xde, 0xad, 0xbe, 0xef]);
        h
    }

    const UDP: u8 = 17;
    const NO_NEXT: u8 = 59;

    #[test]
    fn ethernet_shorter_than_14_bytes_is_malformed() {
        for len in 0..14 {
            assert_eq!(
                parse(&v4_frame(&[0x0800])[..len]),
                Parsed::Malformed,
                "{len}"
            );
        }
    }

    #[test]
    fn non_ip_ethertypes_pass_unexamined() {
        assert_eq!(parse(&eth(&[0x0806])), Parsed::NonIp, "ARP, no body");
        for t in [0x0806, 0x88cc, 0x8847, 0x0000, 0x05dc, 0xffff] {
            let mut f = eth(&[t]);
            f.extend([0; 28]);
            assert_eq!(parse(&f), Parsed::NonIp, "{t:#06x}");
        }
    }

    #[test]
    fn ip_ethertype_with_nothing_behind_it_is_malformed() {
        assert_eq!(parse(&eth(&[0x0800])), Parsed::Malformed);
        assert_eq!(parse(&eth(&[0x86dd])), Parsed::Malformed);
    }

    #[test]
    fn one_or_two_vlan_tags_of_either_kind_are_looked_through() {
        for types in [
            &[0x8100, 0x0800][..],
            &[0x88a8, 0x0800],
            &[0x88a8, 0x8100, 0x0800],
            &[0x8100, 0x88a8, 0x0800],
            &[0x8100, 0x8100, 0x0800],
            &[0x88a8, 0x88a8, 0x0800],
        ] {
            assert_eq!(parse(&v4_frame(types)), v4_addrs(), "{types:x?}");
        }
        let mut f = eth(&[0x8100, 0x88a8, 0x86dd]);
        f.extend(ipv6(UDP, &[0; 8]));
        assert_eq!(parse(&f), v6_addrs());
        let mut arp = eth(&[0x8100, 0x0806]);
        arp.extend([0; 28]);
        assert_eq!(parse(&arp), Parsed::NonIp);
    }

    #[test]
    fn a_third_vlan_tag_is_malformed_whatever_follows() {
        for types in [
            &[0x8100, 0x8100, 0x8100, 0x0800][..],
            &[0x88a8, 0x8100, 0x88a8, 0x0806],
        ] {
            assert_eq!(parse(&v4_frame(types)), Parsed::Malformed, "{types:x?}");
        }
        // Even with nothing after the third TPID.
        let f = eth(&[0x8100, 0x8100, 0x8100]);
        assert_eq!(parse(&f), Parsed::Malformed);
    }

    #[test]
    fn a_vlan_tag_cut_short_is_malformed() {
        let f = v4_frame(&[0x8100, 0x0800]);
        // The tag is bytes 14..18; its inner type is 16..18.
        for len in 14..18 {
            assert_eq!(parse(&f[..len]), Parsed::Malformed, "{len}");
        }
        // A complete tag with an unknown inner type and nothing behind it.
        let f = eth(&[0x8100, 0x1234]);
        assert_eq!(f.len(), 18);
        assert_eq!(parse(&f), Parsed::NonIp);
    }

    #[test]
    fn ipv4_minimal_header() {
        assert_eq!(parse(&v4_frame(&[0x0800])), v4_addrs());
        let mut f = eth(&[0x0800]);
        f.extend(ipv4(&[], 0));
        assert_eq!(f.len(), 34);
        assert_eq!(
            parse(&f),
            v4_addrs(),
            "tot_len 20, nothing after the header"
        );
    }

    #[test]
    fn ipv4_fixed_header_cut_short_is_malformed() {
        let f = v4_frame(&[0x0800]);
        for len in 14..34 {
            assert_eq!(parse(&f[..len]), Parsed::Malformed, "{len}");
        }
    }

    #[test]
    fn ipv4_version_must_be_4() {
        for version in [0u8, 5, 6, 15] {
            let mut f = v4_frame(&[0x0800]);
            f[14] = (version << 4) | 5;
            assert_eq!(parse(&f), Parsed::Malformed, "version {version}");
        }
    }

    #[test]
    fn ipv4_ihl_below_5_is_malformed() {
        for ihl in 0..5u8 {
            let mut f = v4_frame(&[0x0800]);
            f[14] = 0x40 | ihl;
            assert_eq!(parse(&f), Parsed::Malformed, "ihl {ihl}");
        }
    }

    #[test]
    fn ipv4_options_are_part_of_the_header() {
        let mut f = eth(&[0x0800]);
        f.extend(ipv4(&[1; 40], 4));
        assert_eq!(parse(&f), v4_addrs(), "ihl 15");
        let mut f = eth(&[0x0800]);
        f.extend(ipv4(&[1; 4], 0));
        assert_eq!(parse(&f), v4_addrs(), "ihl 6, nothing after the options");
        // Options cut short: the total length then also overshoots, as it must.
        let cut = f.len() - 1;
        assert_eq!(parse(&f[..cut]), Parsed::Malformed);
    }

    #[test]
    fn ipv4_header_must_be_present_even_if_total_length_agrees() {
        // IHL 15 (60 bytes) with only 20 bytes of header and a total length of 20: caught by
        // tot_len < ihl*4, and by the header not being there either way.
        let mut f = eth(&[0x0800]);
        f.extend(ipv4(&[], 0));
        f[14] = 0x4f;
        assert_eq!(parse(&f), Parsed::Malformed);
        // Total length honest for IHL 15, but the frame ends after the fixed header.
        set_be16(&mut f, 16, 60);
        assert_eq!(parse(&f), Parsed::Malformed);
    }

    #[test]
    fn ipv4_total_length_bounds() {
        let base = v4_frame(&[0x0800]); // 20 + 8 bytes of IP
        let with = |tot: u16| {
            let mut f = base.clone();
            set_be16(&mut f, 16, tot);
            parse(&f)
        };
        assert_eq!(with(19), Parsed::Malformed, "below the header");
        assert_eq!(with(0), Parsed::Malformed);
        assert_eq!(with(20), v4_addrs(), "header only, the rest is padding");
        assert_eq!(with(28), v4_addrs(), "exactly the frame");
        assert_eq!(with(29), Parsed::Malformed, "one past the frame");
        assert_eq!(with(u16::MAX), Parsed::Malformed);
        // Counted from the IP header, not the frame start, behind VLAN tags too.
        let mut f = v4_frame(&[0x8100, 0x88a8, 0x0800]);
        set_be16(&mut f, 24, 28);
        assert_eq!(parse(&f), v4_addrs());
        set_be16(&mut f, 24, 29);
        assert_eq!(parse(&f), Parsed::Malformed);
    }

    #[test]
    fn ipv4_fragments_are_matched_on_their_addresses() {
        for frag in [0x2000u16, 0x00b9, 0x20b9, 0x1fff, 0x4000, 0xffff] {
            let mut f = v4_frame(&[0x0800]);
            set_be16(&mut f, 20, frag);
            assert_eq!(parse(&f), v4_addrs(), "{frag:#06x}");
        }
    }

    #[test]
    fn ipv6_minimal_header() {
        assert_eq!(parse(&v6_frame(UDP, &[0; 8])), v6_addrs());
        assert_eq!(parse(&v6_frame(NO_NEXT, &[])), v6_addrs(), "no payload");
    }

    #[test]
    fn ipv6_header_cut_short_is_malformed() {
        let f = v6_frame(NO_NEXT, &[]);
        for len in 14..f.len() {
            assert_eq!(parse(&f[..len]), Parsed::Malformed, "{len}");
        }
    }

    #[test]
    fn ipv6_version_must_be_6() {
        for version in [0u8, 4, 7, 15] {
            let mut f = v6_frame(UDP, &[0; 8]);
            f[14] = version << 4;
            assert_eq!(parse(&f), Parsed::Malformed, "version {version}");
        }
    }

    #[test]
    fn ipv6_payload_length_bounds() {
        let base = v6_frame(UDP, &[0; 8]);
        let with = |len: u16| {
            let mut f = base.clone();
            set_be16(&mut f, 18, len);
            parse(&f)
        };
        assert_eq!(with(8), v6_addrs());
        assert_eq!(with(4), v6_addrs(), "shorter than the frame: padding");
        assert_eq!(with(0), v6_addrs(), "a jumbogram's 0");
        assert_eq!(with(9), Parsed::Malformed, "one past the frame");
        assert_eq!(with(u16::MAX), Parsed::Malformed);
    }

    #[test]
    fn ipv6_extension_header_sizes() {
        for next in [IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_DSTOPTS] {
            // 1 unit = 16 bytes, then UDP.
            let f = v6_frame(next, &generic(UDP, 1));
            assert_eq!(parse(&f), v6_addrs(), "{next}");
            let f = v6_frame(next, &generic(UDP, 1)[..15]);
            assert_eq!(parse(&f), Parsed::Malformed, "{next} cut short");
        }
        // AH payload length 1: (1 + 2) * 4 = 12 bytes.
        let mut ah = vec![UDP, 1];
        ah.resize(12, 0xaa);
        assert_eq!(parse(&v6_frame(IPPROTO_AH, &ah)), v6_addrs());
        assert_eq!(parse(&v6_frame(IPPROTO_AH, &ah[..11])), Parsed::Malformed);
        // AH with length 0 is 8 bytes.
        assert_eq!(
            parse(&v6_frame(IPPROTO_AH, &[UDP, 0, 0, 0, 0, 0, 0, 0])),
            v6_addrs()
        );
        // The length byte itself missing.
        assert_eq!(parse(&v6_frame(IPPROTO_DSTOPTS, &[UDP])), Parsed::Malformed);
    }

    #[test]
    fn ipv6_extension_headers_need_only_lie_in_the_frame() {
        // Payload length 0 (not a real jumbogram: no option says so), header in the frame.
        let mut f = v6_frame(IPPROTO_HOPOPTS, &generic(NO_NEXT, 0));
        set_be16(&mut f, 18, 0);
        assert_eq!(parse(&f), v6_addrs());
    }

    #[test]
    fn ipv6_the_chain_is_followed() {
        // hop-by-hop -> routing -> fragment (first) -> AH -> dest-opts -> UDP
        let mut rest = generic(IPPROTO_ROUTING, 0);
        rest.extend(generic(IPPROTO_FRAGMENT, 2));
        rest.extend(fragment(IPPROTO_AH, 0, true));
        rest.extend([IPPROTO_DSTOPTS, 0, 0, 0, 0, 0, 0, 0]);
        rest.extend(generic(UDP, 0));
        rest.extend([0; 8]);
        assert_eq!(parse(&v6_frame(IPPROTO_HOPOPTS, &rest)), v6_addrs());
        // Cut into the last extension header.
        let f = v6_frame(IPPROTO_HOPOPTS, &rest[..rest.len() - 9]);
        assert_eq!(parse(&f), Parsed::Malformed);
    }

    fn chain(n: usize, last: u8) -> Vec<u8> {
        let mut rest = Vec::new();
        for i in 0..n {
            let next = if i + 1 == n { last } else { IPPROTO_DSTOPTS };
            rest.extend(generic(next, 0));
        }
        rest
    }

    #[test]
    fn ipv6_eight_extension_headers_is_the_limit() {
        assert_eq!(
            parse(&v6_frame(IPPROTO_DSTOPTS, &chain(8, UDP))),
            v6_addrs()
        );
        assert_eq!(
            parse(&v6_frame(IPPROTO_DSTOPTS, &chain(8, NO_NEXT))),
            v6_addrs()
        );
        // A ninth, of any kind, even a non-first fragment, even one cut short.
        for (proto, ninth) in [
            (IPPROTO_DSTOPTS, generic(UDP, 0)),
            (IPPROTO_AH, vec![UDP, 0, 0, 0, 0, 0, 0, 0]),
            (IPPROTO_FRAGMENT, fragment(UDP, 100, false)),
            (IPPROTO_FRAGMENT, fragment(UDP, 0, true)),
            (IPPROTO_ROUTING, vec![]),
        ] {
            let mut rest = chain(8, proto);
            rest.extend(&ninth);
            assert_eq!(
                parse(&v6_frame(IPPROTO_DSTOPTS, &rest)),
                Parsed::Malformed,
                "ninth: {proto}"
            );
        }
    }

    #[test]
    fn ipv6_a_non_first_fragment_ends_the_walk() {
        // What follows a non-first fragment header is payload, whatever it claims.
        for offset in [1u16, 100, 0x1fff] {
            let mut rest = fragment(IPPROTO_DSTOPTS, offset, true);
            rest.extend([IPPROTO_DSTOPTS, 200]); // would be a 1608-byte header
            assert_eq!(
                parse(&v6_frame(IPPROTO_FRAGMENT, &rest)),
                v6_addrs(),
                "offset {offset}"
            );
        }
        // The 8th header being a non-first fragment with more headers announced after it.
        let mut rest = chain(7, IPPROTO_FRAGMENT);
        rest.extend(fragment(IPPROTO_DSTOPTS, 7, false));
        assert_eq!(parse(&v6_frame(IPPROTO_DSTOPTS, &rest)), v6_addrs());
    }

    #[test]
    fn ipv6_a_first_fragment_is_walked_through() {
        // Offset 0, with and without M: the next header follows and must be complete.
        for more in [false, true] {
            let mut rest = fragment(IPPROTO_DSTOPTS, 0, more);
            rest.extend([IPPROTO_DSTOPTS, 200]);
            assert_eq!(parse(&v6_frame(IPPROTO_FRAGMENT, &rest)), Parsed::Malformed);
        }
        // Only the offset counts: the reserved bits 1-2 and M are masked off.
        let mut rest = fragment(UDP, 0, true);
        rest[3] |= 0x06;
        rest.extend([0; 8]);
        assert_eq!(parse(&v6_frame(IPPROTO_FRAGMENT, &rest)), v6_addrs());
        // A fragment header cut short.
        let f = v6_frame(IPPROTO_FRAGMENT, &fragment(UDP, 0, true)[..7]);
        assert_eq!(parse(&f), Parsed::Malformed);
        let f = v6_frame(IPPROTO_FRAGMENT, &fragment(UDP, 3, true)[..7]);
        assert_eq!(parse(&f), Parsed::Malformed, "even a non-first one");
    }

    #[test]
    fn ipv6_upper_layer_protocols_end_the_walk() {
        for next in [UDP, 6, 58, NO_NEXT, 50, 135, 255] {
            assert_eq!(parse(&v6_frame(next, &[])), v6_addrs(), "{next}");
        }
    }

    fn compiled(text: &str) -> Compiled {
        let now = "2026-06-01T00:00:00Z".parse().unwrap();
        let policy = crate::policy::parse(text, Path::new("policy.toml"), now, |p| {
            Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no include {} in this test", p.display()),
            ))
        })
        .unwrap_or_else(|e| panic!("policy should parse:\n{e}"));
        compile(&policy)
    }

    const POLICY: &str = r#"
        [[rule]]
        name = "block"
        action = "drop"
        prefixes = ["203.0.113.0/24", "2001:db8:1::/64"]

        [[rule]]
        name = "hole"
        action = "pass"
        prefixes = ["203.0.113.9"]

        [[rule]]
        name = "bad-source"
        direction = "src"
        action = "drop"
        prefixes = ["192.0.2.0/24"]
    "#;

    #[test]
    fn evaluate_uses_the_policy_precedence() {
        let c = compiled(POLICY);
        // dst 203.0.113.9 is a pass hole, but the source is blocked: the source rule decides.
        let v4 = v4_frame(&[0x0800]);
        assert_eq!(
            evaluate(&c, &v4),
            Outcome::Rule {
                index: 2,
                action: DROP
            }
        );
        // dst 2001:db8:1::9 is blocked.
        let v6 = v6_frame(UDP, &[0; 8]);
        let hit = evaluate(&c, &v6);
        assert_eq!(
            hit,
            Outcome::Rule {
                index: 0,
                action: DROP
            }
        );
        assert_eq!(run(&c, &[], &v6).1, Sent::Dropped);
        // Without the source rule the hole decides.
        let c = compiled(&POLICY.replace("192.0.2.0/24", "198.51.100.0/24"));
        let hole = evaluate(&c, &v4);
        assert_eq!(
            hole,
            Outcome::Rule {
                index: 1,
                action: PASS
            }
        );
        assert_eq!(run(&c, &[], &v4).1, Sent::Passed);
    }

    #[test]
    fn evaluate_no_match_non_ip_and_malformed() {
        let c = compiled(POLICY);
        let mut miss = v4_frame(&[0x0800]);
        miss[26..30].copy_from_slice(&[198, 51, 100, 1]); // source
        miss[30..34].copy_from_slice(&[198, 51, 100, 2]); // destination
        assert_eq!(evaluate(&c, &miss), Outcome::NoMatch);
        assert_eq!(run(&c, &[], &miss).1.xdp_action(), xdp::PASS);
        let arp = eth(&[0x0806]);
        assert_eq!(evaluate(&c, &arp), Outcome::NonIp);
        assert_eq!(run(&c, &[], &arp).1.xdp_action(), xdp::PASS);

        let bad = eth(&[0x0800]);
        let dropped = evaluate(&c, &bad);
        assert_eq!(dropped, Outcome::Malformed { dropped: true }, "the default");
        assert_eq!(run(&c, &[], &bad).1.xdp_action(), xdp::DROP);
        let c = compiled(&format!("malformed = \"pass\"\n{POLICY}"));
        let passed = evaluate(&c, &bad);
        assert_eq!(passed, Outcome::Malformed { dropped: false });
        assert_eq!(run(&c, &[], &bad).1.xdp_action(), xdp::PASS);
    }

    #[test]
    fn evaluate_ipv4_mapped_ipv6_is_not_ipv4() {
        let c = compiled(POLICY);
        let mut f = eth(&[0x86dd]);
        let mut ip = ipv6(UDP, &[0; 8]);
        let mapped: Ipv6Addr = "::ffff:203.0.113.1".parse().unwrap();
        ip[24..40].copy_from_slice(&mapped.octets());
        f.extend(ip);
        assert_eq!(evaluate(&c, &f), Outcome::NoMatch);
    }

    #[test]
    fn unknown_actions_abort_like_the_program() {
        let mut c = compiled(POLICY);
        c.rules[0].action = 9;
        let v6 = v6_frame(UDP, &[0; 8]);
        assert_eq!(run(&c, &[], &v6).1, Sent::Aborted);
        assert_eq!(Sent::Aborted.xdp_action(), xdp::ABORTED);
    }

    const REJECTING: &str = r#"
[notice.main]
interface = "lo"
next_hop = "192.0.2.254"

[[rule]]
name = "refuse"
action = "reject"
prefixes = ["203.0.113.0/24", "2001:db8:1::/64"]

[[rule]]
name = "notice"
action = "redirect"
notice = "main"
prefixes = ["198.51.100.0/24"]
"#;

    const TARGET: NoticeTarget = NoticeTarget {
        ifindex: 1,
        dst_mac: [0x02, 0xee, 0, 0, 0, 1],
        src_mac: [0x02, 0xee, 0, 0, 0, 2],
    };

    /// A frame with one 802.1Q tag and an IPv4 TCP segment (`flags`) from SRC4 to `dst`.
    fn tcp4(dst: [u8; 4], flags: u8, data: usize) -> Vec<u8> {
        let mut f = eth(&[0x8100, 0x0800]);
        let mut ip = ipv4(&[], 20 + data);
        ip[9] = IPPROTO_TCP;
        ip[16..20].copy_from_slice(&dst);
        f.extend(ip[..20].iter());
        let mut tcp = vec![0x9c, 0x40, 0x01, 0xbb]; // 40000 -> 443
        tcp.extend(1000u32.to_be_bytes());
        tcp.extend(7u32.to_be_bytes());
        tcp.extend([0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
        tcp.extend(std::iter::repeat_n(0xaa, data));
        f.extend(tcp);
        f
    }

    #[test]
    fn a_syn_gets_a_reset_acknowledging_it_with_tags_kept_and_macs_swapped() {
        let c = compiled(REJECTING);
        let syn = tcp4(DST4, 0x02, 0);
        let (outcome, sent) = run(&c, &[TARGET], &syn);
        assert_eq!(
            outcome,
            Outcome::Rule {
                index: 0,
                action: filter_common::action::REJECT
            }
        );
        let Sent::Answered(out) = sent else {
            panic!("a SYN to a reject rule must be answered: {sent:?}")
        };
        assert_eq!(out.len(), 18 + 40);
        assert_eq!(&out[..6], &syn[6..12], "MACs swapped");
        assert_eq!(&out[6..12], &syn[..6]);
        assert_eq!(&out[12..18], &syn[12..18], "the tag is kept");
        let ip = &out[18..38];
        assert_eq!(&ip[12..16], &DST4, "from the blocked destination");
        assert_eq!(&ip[16..20], &SRC4);
        assert_eq!(internet_checksum(&[ip]), 0, "IPv4 header checksum");
        let tcp = &out[38..];
        assert_eq!(&tcp[..4], &[0x01, 0xbb, 0x9c, 0x40], "ports swapped");
        assert_eq!(&tcp[4..8], &0u32.to_be_bytes());
        assert_eq!(&tcp[8..12], &1001u32.to_be_bytes(), "acknowledges the SYN");
        assert_eq!(tcp[13], 0x14, "RST|ACK");
        let pseudo = pseudo_header(DST4.into(), SRC4.into(), IPPROTO_TCP, 20);
        assert_eq!(internet_checksum(&[&pseudo, tcp]), 0, "TCP checksum");
        // An ACK gets a bare RST with its ack number as sequence number; data and FIN count
        // towards the acknowledgement of anything else.
        let Sent::Answered(out) = run(&c, &[], &tcp4(DST4, 0x10, 5)).1 else {
            panic!("an ACK must be answered")
        };
        assert_eq!((&out[42..46], out[51]), (&7u32.to_be_bytes()[..], 0x04));
        let Sent::Answered(out) = run(&c, &[], &tcp4(DST4, 0x01, 5)).1 else {
            panic!("a FIN must be answered")
        };
        assert_eq!(&out[46..50], &1006u32.to_be_bytes());
        // A reset is never answered.
        assert_eq!(run(&c, &[], &tcp4(DST4, 0x04, 0)).1, Sent::Unanswered);
    }

    #[test]
    fn udp_gets_icmp_quoting_the_header_and_8_bytes() {
        let c = compiled(REJECTING);
        let mut f = eth(&[0x0800]);
        let mut ip = ipv4(&[1, 1, 1, 0], 30); // 4 bytes of options
        ip[16..20].copy_from_slice(&DST4);
        f.extend(&ip);
        let Sent::Answered(out) = run(&c, &[], &f).1 else {
            panic!("UDP to a reject rule must be answered")
        };
        let quote = &ip[..24 + 8];
        assert_eq!(out.len(), 14 + 20 + 8 + quote.len());
        assert_eq!(&out[14 + 28..], quote);
        assert_eq!(&out[34..36], &[3, 13]);
        assert_eq!(internet_checksum(&[&out[34..]]), 0, "ICMP checksum");
        assert_eq!(u16::from_be_bytes([out[16], out[17]]), 28 + 32);
    }

    #[test]
    fn ipv6_gets_icmpv6_quoting_at_most_64_bytes() {
        let c = compiled(REJECTING);
        let f = v6_frame(UDP, &[0x55; 100]);
        let Sent::Answered(out) = run(&c, &[], &f).1 else {
            panic!("IPv6 to a reject rule must be answered")
        };
        assert_eq!(out.len(), 14 + 48 + 64);
        assert_eq!(&out[62..], &f[14..14 + 64]);
        assert_eq!(&out[54..56], &[1, 1]);
        let pseudo = pseudo_header(dst6().into(), src6().into(), IPPROTO_ICMPV6, 72);
        assert_eq!(
            internet_checksum(&[&pseudo, &out[54..]]),
            0,
            "ICMPv6 checksum"
        );
    }

    #[test]
    fn never_answered_destinations_and_sources() {
        let c =
            compiled("[[rule]]\nname = \"r\"\naction = \"reject\"\nprefixes = [\"0.0.0.0/0\"]\n");
        let udp_to = |src: [u8; 4], dst: [u8; 4]| {
            let mut f = v4_frame(&[0x0800]);
            f[26..30].copy_from_slice(&src);
            f[30..34].copy_from_slice(&dst);
            f
        };
        assert!(matches!(
            run(&c, &[], &udp_to(SRC4, DST4)).1,
            Sent::Answered(_)
        ));
        for (src, dst) in [
            (SRC4, [255, 255, 255, 255]),
            (SRC4, [224, 0, 0, 1]),
            (SRC4, [240, 0, 0, 1]),
            (SRC4, [0, 0, 0, 1]),
            ([127, 0, 0, 1], DST4),
            ([239, 1, 1, 1], DST4),
        ] {
            assert_eq!(
                run(&c, &[], &udp_to(src, dst)).1,
                Sent::Unanswered,
                "{src:?} -> {dst:?}"
            );
        }
        let mut group = udp_to(SRC4, DST4);
        group[0] = 0x01;
        assert_eq!(run(&c, &[], &group).1, Sent::Unanswered, "Ethernet group");
    }

    #[test]
    fn redirect_rewrites_the_macs_and_strips_the_tags() {
        let c = compiled(REJECTING);
        let mut f = tcp4([198, 51, 100, 9], 0x02, 0);
        f[38 + 2..38 + 4].copy_from_slice(&80u16.to_be_bytes());
        let (_, sent) = run(&c, &[TARGET], &f);
        let mut want = TARGET.dst_mac.to_vec();
        want.extend(TARGET.src_mac);
        want.extend(&f[16..]);
        assert_eq!(sent, Sent::Redirected(want));
        assert_eq!(run(&c, &[], &f).1, Sent::RedirectFailed, "no target loaded");
        // HTTPS is reset by default.
        let https = tcp4([198, 51, 100, 9], 0x02, 0);
        assert!(matches!(run(&c, &[TARGET], &https).1, Sent::Answered(_)));
    }
}
