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
//! - [`Outcome::xdp_action`]: the XDP return code the program gives that outcome.
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

use filter_common::{action, malformed};

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
}

impl Outcome {
    /// The XDP action the program returns for this outcome: a rule's action, `PASS` for
    /// no-match and non-IP, `DROP` or `PASS` for a malformed frame. An action the program does
    /// not implement (which the policy parser never produces) is `ABORTED`, as in the program.
    pub fn xdp_action(&self) -> u32 {
        match *self {
            Self::Rule { action, .. } => match action {
                action::PASS => xdp::PASS,
                action::DROP => xdp::DROP,
                _ => xdp::ABORTED,
            },
            Self::NoMatch | Self::NonIp => xdp::PASS,
            Self::Malformed { dropped: true } => xdp::DROP,
            Self::Malformed { dropped: false } => xdp::PASS,
        }
    }
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
    // `None` anywhere below means a read past the end: malformed.
    parse_ethernet(frame).unwrap_or(Parsed::Malformed)
}

fn parse_ethernet(frame: &[u8]) -> Option<Parsed> {
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
            ETH_P_IP => return parse_ipv4(frame.get(l3..)?),
            ETH_P_IPV6 => return parse_ipv6(frame.get(l3..)?),
            _ => return Some(Parsed::NonIp),
        }
    }
}

/// `ip`: the frame from the first byte of the IPv4 header to the end.
fn parse_ipv4(ip: &[u8]) -> Option<Parsed> {
    let fixed: [u8; IPV4_MIN_HLEN] = array(ip, 0)?;
    let version = fixed[0] >> 4;
    let header_len = usize::from(fixed[0] & 0x0f) * 4;
    let total_len = usize::from(be16(&fixed, 2)?);
    let parsed = Parsed::V4 {
        src: Ipv4Addr::from(array::<4>(&fixed, 12)?),
        dst: Ipv4Addr::from(array::<4>(&fixed, 16)?),
    };
    let holds_together = version == 4
        && header_len >= IPV4_MIN_HLEN
        && total_len >= header_len
        && total_len <= ip.len()
        && header_len <= ip.len();
    holds_together.then_some(parsed)
}

/// `ip`: the frame from the first byte of the IPv6 header to the end.
fn parse_ipv6(ip: &[u8]) -> Option<Parsed> {
    let fixed: [u8; IPV6_HLEN] = array(ip, 0)?;
    if fixed[0] >> 4 != 6 {
        return None;
    }
    let payload_len = usize::from(be16(&fixed, 4)?);
    if payload_len > ip.get(IPV6_HLEN..)?.len() {
        return None;
    }
    let parsed = Parsed::V6 {
        src: Ipv6Addr::from(array::<16>(&fixed, 8)?),
        dst: Ipv6Addr::from(array::<16>(&fixed, 24)?),
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
            _ => return Some(parsed),
        };
        if walked == MAX_EXT_HDRS {
            return None;
        }
        let header = ip.get(at..at + len)?;
        if next == IPPROTO_FRAGMENT && be16(header, 2)? & 0xfff8 != 0 {
            // A non-first fragment: what follows is the middle of a payload, not a header.
            return Some(parsed);
        }
        next = byte(header, 0)?;
        at += len;
        walked += 1;
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

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
        assert_eq!(hit.xdp_action(), xdp::DROP);
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
        assert_eq!(hole.xdp_action(), xdp::PASS);
    }

    #[test]
    fn evaluate_no_match_non_ip_and_malformed() {
        let c = compiled(POLICY);
        let mut miss = v4_frame(&[0x0800]);
        miss[26..30].copy_from_slice(&[198, 51, 100, 1]); // source
        miss[30..34].copy_from_slice(&[198, 51, 100, 2]); // destination
        assert_eq!(evaluate(&c, &miss), Outcome::NoMatch);
        assert_eq!(Outcome::NoMatch.xdp_action(), xdp::PASS);
        let arp = eth(&[0x0806]);
        assert_eq!(evaluate(&c, &arp), Outcome::NonIp);
        assert_eq!(Outcome::NonIp.xdp_action(), xdp::PASS);

        let bad = eth(&[0x0800]);
        let dropped = evaluate(&c, &bad);
        assert_eq!(dropped, Outcome::Malformed { dropped: true }, "the default");
        assert_eq!(dropped.xdp_action(), xdp::DROP);
        let c = compiled(&format!("malformed = \"pass\"\n{POLICY}"));
        let passed = evaluate(&c, &bad);
        assert_eq!(passed, Outcome::Malformed { dropped: false });
        assert_eq!(passed.xdp_action(), xdp::PASS);
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
        let o = Outcome::Rule {
            index: 0,
            action: filter_common::action::REJECT,
        };
        assert_eq!(o.xdp_action(), xdp::ABORTED);
    }
}
