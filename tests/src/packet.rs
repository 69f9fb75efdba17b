//! Frames built byte by byte for the BPF_PROG_TEST_RUN fixtures: Ethernet, any VLAN stack,
//! IPv4 with options and fragment fields, IPv6 with any extension-header chain, UDP/TCP/ICMP,
//! and knobs to make each layer lie (bad IHL, short lengths) or be cut short.

use std::net::{Ipv4Addr, Ipv6Addr};

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;

const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

/// An IPv6 extension header.
#[derive(Clone, Debug)]
pub enum Ext {
    /// Hop-by-hop options, `units` extra 8-octet units beyond the first 8 bytes.
    HopByHop { units: u8 },
    /// Routing header (type 0 layout, zero segments left), `units` extra 8-octet units.
    Routing { units: u8 },
    /// Destination options, `units` extra 8-octet units.
    DestOpts { units: u8 },
    /// Fragment header: offset in 8-octet units, more-fragments flag.
    Fragment { offset: u16, more: bool },
    /// Authentication header with `payload_len` (RFC 4302: length in 32-bit words minus 2).
    Ah { payload_len: u8 },
}

impl Ext {
    fn proto(&self) -> u8 {
        match self {
            Self::HopByHop { .. } => 0,
            Self::Routing { .. } => 43,
            Self::DestOpts { .. } => 60,
            Self::Fragment { .. } => 44,
            Self::Ah { .. } => 51,
        }
    }

    fn write(&self, next: u8, out: &mut Vec<u8>) {
        match *self {
            Self::HopByHop { units } | Self::DestOpts { units } => {
                out.extend([next, units]);
                // PadN option filling the rest of the header.
                let pad = 6 + usize::from(units) * 8;
                out.push(1);
                out.push((pad - 2) as u8);
                out.extend(std::iter::repeat_n(0, pad - 2));
            }
            Self::Routing { units } => {
                out.extend([next, units, 0, 0]);
                out.extend(std::iter::repeat_n(0, 4 + usize::from(units) * 8));
            }
            Self::Fragment { offset, more } => {
                let field = (offset << 3) | u16::from(more);
                out.extend([next, 0]);
                out.extend(field.to_be_bytes());
                out.extend(0x1234_5678u32.to_be_bytes());
            }
            Self::Ah { payload_len } => {
                out.extend([next, payload_len, 0, 0]);
                let total = (usize::from(payload_len) + 2) * 4;
                out.extend(std::iter::repeat_n(0xaa, total - 4));
            }
        }
    }
}

/// The upper layer.
#[derive(Clone, Debug)]
pub enum L4 {
    Udp {
        sport: u16,
        dport: u16,
        payload: Vec<u8>,
    },
    TcpSyn {
        sport: u16,
        dport: u16,
    },
    /// Bytes after the IP header(s), announced as `proto`.
    Raw {
        proto: u8,
        bytes: Vec<u8>,
    },
}

impl L4 {
    fn proto(&self) -> u8 {
        match self {
            Self::Udp { .. } => IPPROTO_UDP,
            Self::TcpSyn { .. } => IPPROTO_TCP,
            Self::Raw { proto, .. } => *proto,
        }
    }

    /// The bytes, with the transport checksum over `pseudo` (the pseudo-header sum).
    fn bytes(&self, pseudo: u32) -> Vec<u8> {
        let (mut b, csum_at) = match self {
            Self::Udp {
                sport,
                dport,
                payload,
            } => {
                let mut b = Vec::new();
                b.extend(sport.to_be_bytes());
                b.extend(dport.to_be_bytes());
                b.extend(((8 + payload.len()) as u16).to_be_bytes());
                b.extend([0, 0]);
                b.extend(payload);
                (b, Some(6))
            }
            Self::TcpSyn { sport, dport } => {
                let mut b = Vec::new();
                b.extend(sport.to_be_bytes());
                b.extend(dport.to_be_bytes());
                b.extend(1u32.to_be_bytes()); // seq
                b.extend(0u32.to_be_bytes()); // ack
                b.extend([5 << 4, 0x02]); // data offset 5, SYN
                b.extend(64240u16.to_be_bytes());
                b.extend([0, 0, 0, 0]); // checksum, urgent
                (b, Some(16))
            }
            Self::Raw { bytes, .. } => (bytes.clone(), None),
        };
        if let Some(at) = csum_at {
            let sum = fold(pseudo + sum16(&b) + b.len() as u32);
            let c = !sum;
            let c = if c == 0 && matches!(self, Self::Udp { .. }) {
                0xffff
            } else {
                c
            };
            b[at..at + 2].copy_from_slice(&c.to_be_bytes());
        }
        b
    }
}

fn sum16(b: &[u8]) -> u32 {
    b.chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum()
}

fn fold(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// The Internet checksum of `b`.
pub fn checksum(b: &[u8]) -> u16 {
    !fold(sum16(b))
}

#[derive(Clone, Debug)]
pub struct V4 {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    /// Option bytes (padded with EOL to a multiple of 4).
    pub options: Vec<u8>,
    /// Fragment offset in 8-octet units.
    pub frag_offset: u16,
    pub more_fragments: bool,
    /// Write this IHL instead of the true one.
    pub ihl: Option<u8>,
    /// Write this total length instead of the true one.
    pub tot_len: Option<u16>,
}

#[derive(Clone, Debug)]
pub struct V6 {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub ext: Vec<Ext>,
    /// Write this payload length instead of the true one.
    pub payload_len: Option<u16>,
}

#[derive(Clone, Debug)]
pub enum L3 {
    V4(V4),
    V6(V6),
    /// Any other EtherType, e.g. ARP.
    Other {
        ethertype: u16,
        bytes: Vec<u8>,
    },
}

/// A frame under construction.
#[derive(Clone, Debug)]
pub struct Frame {
    /// (TPID, VLAN id), outermost first.
    pub vlans: Vec<(u16, u16)>,
    pub l3: L3,
    pub l4: L4,
    /// Pad the finished frame with zeros to this many bytes (Ethernet padding, jumbo frames).
    pub pad_to: usize,
    /// Cut the finished frame to this many bytes.
    pub truncate: Option<usize>,
}

impl Frame {
    fn new(l3: L3) -> Self {
        Self {
            vlans: vec![],
            l3,
            l4: L4::Udp {
                sport: 40000,
                dport: 53,
                payload: b"edgeblock".to_vec(),
            },
            pad_to: 0,
            truncate: None,
        }
    }

    pub fn v4(src: Ipv4Addr, dst: Ipv4Addr) -> Self {
        Self::new(L3::V4(V4 {
            src,
            dst,
            options: vec![],
            frag_offset: 0,
            more_fragments: false,
            ihl: None,
            tot_len: None,
        }))
    }

    pub fn v6(src: Ipv6Addr, dst: Ipv6Addr) -> Self {
        Self::new(L3::V6(V6 {
            src,
            dst,
            ext: vec![],
            payload_len: None,
        }))
    }

    /// An ARP request (who-has `target` tell `sender`).
    pub fn arp(sender: Ipv4Addr, target: Ipv4Addr) -> Self {
        let mut b = vec![0, 1, 8, 0, 6, 4, 0, 1];
        b.extend(SRC_MAC);
        b.extend(sender.octets());
        b.extend([0; 6]);
        b.extend(target.octets());
        let mut f = Self::new(L3::Other {
            ethertype: ETH_P_ARP,
            bytes: b,
        });
        f.l4 = L4::Raw {
            proto: 0,
            bytes: vec![],
        };
        f
    }

    pub fn vlan(mut self, tpid: u16, id: u16) -> Self {
        self.vlans.push((tpid, id));
        self
    }

    pub fn l4(mut self, l4: L4) -> Self {
        self.l4 = l4;
        self
    }

    pub fn v4_mut(&mut self) -> &mut V4 {
        match &mut self.l3 {
            L3::V4(v4) => v4,
            _ => panic!("not an IPv4 frame"),
        }
    }

    pub fn v6_mut(&mut self) -> &mut V6 {
        match &mut self.l3 {
            L3::V6(v6) => v6,
            _ => panic!("not an IPv6 frame"),
        }
    }

    pub fn with(mut self, f: impl FnOnce(&mut Self)) -> Self {
        f(&mut self);
        self
    }

    pub fn ext(mut self, ext: Ext) -> Self {
        self.v6_mut().ext.push(ext);
        self
    }

    pub fn pad_to(mut self, len: usize) -> Self {
        self.pad_to = len;
        self
    }

    pub fn truncate(mut self, len: usize) -> Self {
        self.truncate = Some(len);
        self
    }

    /// Byte offset of the L3 header.
    pub fn l3_offset(&self) -> usize {
        14 + 4 * self.vlans.len()
    }

    pub fn build(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        out.extend(DST_MAC);
        out.extend(SRC_MAC);
        let ethertype = match &self.l3 {
            L3::V4(_) => ETH_P_IP,
            L3::V6(_) => ETH_P_IPV6,
            L3::Other { ethertype, .. } => *ethertype,
        };
        // Ethernet's type field holds the first TPID; each tag then carries the next type.
        let mut types: Vec<u16> = self.vlans.iter().map(|(t, _)| *t).collect();
        types.push(ethertype);
        out.extend(types[0].to_be_bytes());
        for (i, (_, id)) in self.vlans.iter().enumerate() {
            out.extend(id.to_be_bytes());
            out.extend(types[i + 1].to_be_bytes());
        }
        match &self.l3 {
            L3::V4(v4) => self.write_v4(v4, &mut out),
            L3::V6(v6) => self.write_v6(v6, &mut out),
            L3::Other { bytes, .. } => out.extend(bytes),
        }
        if out.len() < self.pad_to {
            out.resize(self.pad_to, 0);
        }
        if let Some(n) = self.truncate {
            out.truncate(n);
        }
        out
    }

    fn write_v4(&self, v4: &V4, out: &mut Vec<u8>) {
        let mut options = v4.options.clone();
        while !options.len().is_multiple_of(4) {
            options.push(0);
        }
        let hlen = 20 + options.len();
        // Only the first fragment carries the transport header's checksum meaningfully; all
        // fragments here carry the same bytes, which is all the filter looks at.
        let pseudo = sum16(&v4.src.octets()) + sum16(&v4.dst.octets()) + u32::from(self.l4.proto());
        let l4 = self.l4.bytes(pseudo);
        let tot_len = v4.tot_len.unwrap_or((hlen + l4.len()) as u16);
        let ihl = v4.ihl.unwrap_or((hlen / 4) as u8);
        let frag = (u16::from(v4.more_fragments) << 13) | v4.frag_offset;
        let start = out.len();
        out.push(0x40 | (ihl & 0x0f));
        out.push(0);
        out.extend(tot_len.to_be_bytes());
        out.extend(0x4242u16.to_be_bytes());
        out.extend(frag.to_be_bytes());
        out.push(64);
        out.push(self.l4.proto());
        out.extend([0, 0]);
        out.extend(v4.src.octets());
        out.extend(v4.dst.octets());
        out.extend(&options);
        let c = checksum(&out[start..start + hlen]);
        out[start + 10..start + 12].copy_from_slice(&c.to_be_bytes());
        out.extend(l4);
    }

    fn write_v6(&self, v6: &V6, out: &mut Vec<u8>) {
        let pseudo = sum16(&v6.src.octets()) + sum16(&v6.dst.octets()) + u32::from(self.l4.proto());
        let l4 = self.l4.bytes(pseudo);
        let mut payload = Vec::new();
        for (i, e) in v6.ext.iter().enumerate() {
            let next = v6.ext.get(i + 1).map_or(self.l4.proto(), Ext::proto);
            e.write(next, &mut payload);
        }
        payload.extend(l4);
        let first = v6.ext.first().map_or(self.l4.proto(), Ext::proto);
        out.extend([0x60, 0, 0, 0]);
        out.extend(v6.payload_len.unwrap_or(payload.len() as u16).to_be_bytes());
        out.push(first);
        out.push(64);
        out.extend(v6.src.octets());
        out.extend(v6.dst.octets());
        out.extend(payload);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_header_checksum_verifies() {
        let f = Frame::v4(
            "192.0.2.1".parse().unwrap(),
            "198.51.100.1".parse().unwrap(),
        )
        .build();
        assert_eq!(checksum(&f[14..34]), 0, "a correct header sums to zero");
        assert_eq!(f.len(), 14 + 20 + 8 + 9);
    }

    #[test]
    fn vlan_stack_is_written_outermost_first() {
        let f = Frame::v4(
            "192.0.2.1".parse().unwrap(),
            "198.51.100.1".parse().unwrap(),
        )
        .vlan(ETH_P_8021AD, 100)
        .vlan(ETH_P_8021Q, 200)
        .build();
        assert_eq!(&f[12..14], &ETH_P_8021AD.to_be_bytes());
        assert_eq!(&f[14..16], &100u16.to_be_bytes());
        assert_eq!(&f[16..18], &ETH_P_8021Q.to_be_bytes());
        assert_eq!(&f[18..20], &200u16.to_be_bytes());
        assert_eq!(&f[20..22], &ETH_P_IP.to_be_bytes());
        assert_eq!(f[22] >> 4, 4);
    }

    #[test]
    fn ipv6_chain_links_next_headers() {
        let f = Frame::v6(
            "2001:db8::1".parse().unwrap(),
            "2001:db8::2".parse().unwrap(),
        )
        .ext(Ext::HopByHop { units: 0 })
        .ext(Ext::Fragment {
            offset: 0,
            more: true,
        })
        .build();
        assert_eq!(f[14 + 6], 0, "first next-header is hop-by-hop");
        assert_eq!(f[54], 44, "hop-by-hop points at the fragment header");
        assert_eq!(f[62], IPPROTO_UDP, "fragment header points at UDP");
        let payload_len = u16::from_be_bytes([f[18], f[19]]) as usize;
        assert_eq!(payload_len, f.len() - 54);
    }
}
