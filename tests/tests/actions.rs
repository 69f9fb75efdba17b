//! `reject` and `redirect` on the real program through BPF_PROG_TEST_RUN: the verdict, the
//! counters, and the bytes of the frame it sends (checksums verified by recomputation, VLAN
//! tags kept on rejects and removed on redirects), for IPv4 and IPv6.

mod common;

use std::net::{Ipv4Addr, Ipv6Addr};

use common::{Effect, Harness, XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX};
use edgeblock_tests::packet::{ETH_P_8021AD, ETH_P_8021Q, Ext, Frame, L4, checksum};
use filter_common::NoticeTarget;

const POLICY: &str = r#"
reject_rate = 1000
reject_burst = 1000

[notice.main]
interface = "lo"
next_hop = "192.0.2.254"

[[rule]]
name = "refuse"
action = "reject"
prefixes = ["203.0.113.0/24", "2001:db8:1::/64"]

[[rule]]
name = "court-order"
action = "redirect"
notice = "main"
prefixes = ["198.51.100.0/24", "2001:db8:2::/64"]

[[rule]]
name = "court-order-https"
action = "redirect"
notice = "main"
https = "notice"
prefixes = ["233.252.0.0/24"]

# Destinations no answer may ever come from: what a reject rule covering them must leave
# unanswered. (233.252.0.0/24 above is multicast too, but a redirect rule's.)
[[rule]]
name = "refuse-groups"
action = "reject"
prefixes = ["0.0.0.0/8", "224.0.0.0/4", "240.0.0.0/4", "ff00::/8", "::/128"]
"#;

/// Where the test's notice target "sends" frames: BPF_PROG_TEST_RUN does not transmit, but
/// bpf_redirect_map needs a real device in the devmap, and loopback always exists.
const NOTICE: NoticeTarget = NoticeTarget {
    ifindex: 1,
    dst_mac: [0x02, 0xee, 0, 0, 0, 0x01],
    src_mac: [0x02, 0xee, 0, 0, 0, 0x02],
};

const CLIENT4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0, 0, 0, 0, 2);
const REJECT4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 9);
const REJECT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 9);

fn harness() -> Harness {
    // One CPU: the reject token bucket is per CPU.
    pin_to_cpu0();
    let mut h = Harness::new();
    h.apply_with_targets(POLICY, &[NOTICE]);
    h
}

fn pin_to_cpu0() {
    let mut set = nix::sched::CpuSet::new();
    set.set(0).expect("cpu 0");
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).expect("pin to cpu 0");
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The transport checksum over a pseudo-header: zero when correct.
fn l4_checksum(src: &[u8], dst: &[u8], proto: u8, l4: &[u8]) -> u16 {
    let mut pseudo = Vec::new();
    pseudo.extend(src);
    pseudo.extend(dst);
    if src.len() == 4 {
        pseudo.extend([0, proto]);
        pseudo.extend((l4.len() as u16).to_be_bytes());
    } else {
        pseudo.extend((l4.len() as u32).to_be_bytes());
        pseudo.extend([0, 0, 0, proto]);
    }
    pseudo.extend(l4);
    checksum(&pseudo)
}

/// Link layer of the answer: addresses swapped, tags unchanged.
fn assert_l2_answer(input: &[u8], out: &[u8], l3: usize) {
    assert_eq!(&out[0..6], &input[6..12], "destination MAC = the sender's");
    assert_eq!(
        &out[6..12],
        &input[0..6],
        "source MAC = the one the sender used"
    );
    assert_eq!(
        &out[12..l3],
        &input[12..l3],
        "VLAN tags and EtherType are kept"
    );
}

fn check_tcp_reset_v4(input: &[u8], out: &[u8], l3: usize) {
    assert_l2_answer(input, out, l3);
    assert_eq!(out.len(), l3 + 40, "Ethernet + IPv4 + TCP, nothing else");
    let ip = &out[l3..l3 + 20];
    assert_eq!(ip[0], 0x45);
    assert_eq!(checksum(ip), 0, "IPv4 header checksum");
    assert_eq!(u16_at(ip, 2), 40);
    assert_eq!(ip[9], 6);
    let in_ihl = usize::from(input[l3] & 0x0f) * 4;
    assert_eq!(
        &ip[12..16],
        &input[l3 + 16..l3 + 20],
        "source = the blocked destination"
    );
    assert_eq!(
        &ip[16..20],
        &input[l3 + 12..l3 + 16],
        "destination = the sender"
    );
    let tcp = &out[l3 + 20..];
    let in_tcp = &input[l3 + in_ihl..];
    assert_eq!(&tcp[0..2], &in_tcp[2..4], "ports swapped");
    assert_eq!(&tcp[2..4], &in_tcp[0..2], "ports swapped");
    assert_eq!(tcp[13], 0x14, "RST|ACK answering a SYN");
    assert_eq!(u32_at(tcp, 4), 0, "seq 0");
    assert_eq!(
        u32_at(tcp, 8),
        u32_at(in_tcp, 4).wrapping_add(1),
        "ack = SYN's seq + 1"
    );
    assert_eq!(
        l4_checksum(&ip[12..16], &ip[16..20], 6, tcp),
        0,
        "TCP checksum"
    );
}

#[test]
fn tcp_syn_gets_a_reset_v4_with_and_without_vlans_and_options() {
    let mut h = harness();
    let syn = || {
        Frame::v4(CLIENT4, REJECT4).l4(L4::TcpSyn {
            sport: 40000,
            dport: 80,
        })
    };
    let cases = [
        ("plain", syn()),
        ("802.1Q", syn().vlan(ETH_P_8021Q, 100)),
        ("QinQ", syn().vlan(ETH_P_8021AD, 10).vlan(ETH_P_8021Q, 20)),
        (
            "IP options",
            syn().with(|f| f.v4_mut().options = vec![1; 12]),
        ),
    ];
    for (name, f) in cases {
        let input = f.build();
        let (verdict, out) = h.run_out(&input);
        assert_eq!(verdict, XDP_TX, "{name}");
        check_tcp_reset_v4(&input, &out, f.l3_offset());
    }
    // Counters: the rule and the reject total, nothing unanswered.
    let input = syn().build();
    let want = Effect::new(XDP_TX, &["rule refuse", "reject"], input.len());
    assert_eq!(h.run(&input), want);
    h.apply_with_targets(POLICY, &[NOTICE]);
}

#[test]
fn tcp_syn_gets_a_reset_v6() {
    let h = harness();
    let f = Frame::v6(CLIENT6, REJECT6)
        .l4(L4::TcpSyn {
            sport: 40001,
            dport: 443,
        })
        .ext(Ext::DestOpts { units: 0 })
        .vlan(ETH_P_8021Q, 7);
    let input = f.build();
    let l3 = f.l3_offset();
    let (verdict, out) = h.run_out(&input);
    assert_eq!(verdict, XDP_TX);
    assert_l2_answer(&input, &out, l3);
    assert_eq!(out.len(), l3 + 60);
    let ip = &out[l3..l3 + 40];
    assert_eq!(ip[0] >> 4, 6);
    assert_eq!(u16_at(ip, 4), 20);
    assert_eq!(ip[6], 6, "next header TCP, extension headers dropped");
    assert_eq!(&ip[8..24], &input[l3 + 24..l3 + 40]);
    assert_eq!(&ip[24..40], &input[l3 + 8..l3 + 24]);
    let tcp = &out[l3 + 40..];
    assert_eq!(u16_at(tcp, 0), 443);
    assert_eq!(u16_at(tcp, 2), 40001);
    assert_eq!(tcp[13], 0x14);
    assert_eq!(
        l4_checksum(&ip[8..24], &ip[24..40], 6, tcp),
        0,
        "TCP checksum"
    );
}

#[test]
fn an_established_segment_gets_a_bare_reset_with_its_ack_as_seq() {
    let h = harness();
    // An ACK segment with 5 bytes of data: RST, seq = the segment's ack.
    let mut f = Frame::v4(CLIENT4, REJECT4).l4(L4::TcpSyn { sport: 1, dport: 2 });
    let mut input = f.build();
    let l4 = f.l3_offset() + 20;
    input[l4 + 8..l4 + 12].copy_from_slice(&7777u32.to_be_bytes());
    input[l4 + 13] = 0x10; // ACK only
    f.pad_to = 0;
    let (verdict, out) = h.run_out(&input);
    assert_eq!(verdict, XDP_TX);
    let tcp = &out[f.l3_offset() + 20..];
    assert_eq!(tcp[13], 0x04, "RST alone");
    assert_eq!(u32_at(tcp, 4), 7777, "seq = the segment's ack");
}

#[test]
fn udp_gets_icmp_admin_prohibited_quoting_header_and_8_bytes_v4() {
    let h = harness();
    for f in [
        Frame::v4(CLIENT4, REJECT4)
            .vlan(ETH_P_8021AD, 3)
            .vlan(ETH_P_8021Q, 4),
        Frame::v4(CLIENT4, REJECT4).with(|f| f.v4_mut().options = vec![1; 8]),
        Frame::v4(CLIENT4, REJECT4).l4(L4::Raw {
            proto: 1,
            bytes: vec![8, 0, 0, 0, 0, 1, 0, 1, 9, 9],
        }),
    ] {
        let input = f.build();
        let l3 = f.l3_offset();
        let in_ihl = usize::from(input[l3] & 0x0f) * 4;
        let (verdict, out) = h.run_out(&input);
        assert_eq!(verdict, XDP_TX);
        assert_l2_answer(&input, &out, l3);
        let ip = &out[l3..l3 + 20];
        assert_eq!(checksum(ip), 0, "IPv4 header checksum");
        assert_eq!(ip[9], 1, "ICMP");
        assert_eq!(&ip[12..16], &input[l3 + 16..l3 + 20]);
        assert_eq!(&ip[16..20], &input[l3 + 12..l3 + 16]);
        let icmp = &out[l3 + 20..];
        assert_eq!(
            (icmp[0], icmp[1]),
            (3, 13),
            "destination unreachable, administratively prohibited"
        );
        assert_eq!(checksum(icmp), 0, "ICMP checksum");
        let quote = &icmp[8..];
        assert_eq!(
            quote,
            &input[l3..l3 + in_ihl + 8],
            "the offending header and 8 bytes"
        );
        assert_eq!(usize::from(u16_at(ip, 2)), 28 + quote.len());
        assert_eq!(out.len(), l3 + 28 + quote.len());
    }
}

#[test]
fn udp_gets_icmpv6_admin_prohibited_v6() {
    let h = harness();
    for (f, quoted) in [
        (Frame::v6(CLIENT6, REJECT6), None),
        (
            Frame::v6(CLIENT6, REJECT6)
                .vlan(ETH_P_8021Q, 9)
                .ext(Ext::HopByHop { units: 0 }),
            None,
        ),
        // Longer than the quote limit: the first 64 bytes are quoted.
        (
            Frame::v6(CLIENT6, REJECT6).l4(L4::Udp {
                sport: 5,
                dport: 6,
                payload: vec![7; 200],
            }),
            Some(64),
        ),
    ] {
        let input = f.build();
        let l3 = f.l3_offset();
        let (verdict, out) = h.run_out(&input);
        assert_eq!(verdict, XDP_TX);
        assert_l2_answer(&input, &out, l3);
        let ip = &out[l3..l3 + 40];
        assert_eq!(ip[6], 58, "ICMPv6");
        assert_eq!(&ip[8..24], &input[l3 + 24..l3 + 40]);
        assert_eq!(&ip[24..40], &input[l3 + 8..l3 + 24]);
        let icmp = &out[l3 + 40..];
        assert_eq!(usize::from(u16_at(ip, 4)), icmp.len());
        assert_eq!((icmp[0], icmp[1]), (1, 1), "administratively prohibited");
        assert_eq!(
            l4_checksum(&ip[8..24], &ip[24..40], 58, icmp),
            0,
            "ICMPv6 checksum"
        );
        let want = quoted.unwrap_or(input.len() - l3).min(64);
        assert_eq!(
            &icmp[8..],
            &input[l3..l3 + want],
            "the start of the offending packet"
        );
    }
}

#[test]
fn what_must_never_be_answered_is_dropped_and_counted() {
    let h = harness();
    let cases = [
        ("TCP reset", {
            let f = Frame::v4(CLIENT4, REJECT4).l4(L4::TcpSyn { sport: 1, dport: 2 });
            let mut b = f.build();
            b[f.l3_offset() + 20 + 13] = 0x04;
            b
        }),
        (
            "ICMP error",
            Frame::v4(CLIENT4, REJECT4)
                .l4(L4::Raw {
                    proto: 1,
                    bytes: vec![3, 1, 0, 0, 0, 0, 0, 0],
                })
                .build(),
        ),
        (
            "ICMPv6 error",
            Frame::v6(CLIENT6, REJECT6)
                .l4(L4::Raw {
                    proto: 58,
                    bytes: vec![1, 4, 0, 0, 0, 0, 0, 0],
                })
                .build(),
        ),
        (
            "broadcast source",
            Frame::v4(Ipv4Addr::BROADCAST, REJECT4).build(),
        ),
        (
            "multicast source",
            Frame::v4(Ipv4Addr::new(239, 1, 2, 3), REJECT4).build(),
        ),
        (
            "unspecified v6 source",
            Frame::v6(Ipv6Addr::UNSPECIFIED, REJECT6).build(),
        ),
        (
            "multicast v6 source",
            Frame::v6("ff02::1".parse().unwrap(), REJECT6).build(),
        ),
        (
            "non-first v4 fragment",
            Frame::v4(CLIENT4, REJECT4)
                .l4(L4::Raw {
                    proto: 17,
                    bytes: vec![0; 32],
                })
                .with(|f| f.v4_mut().frag_offset = 100)
                .build(),
        ),
        (
            "non-first v6 fragment",
            Frame::v6(CLIENT6, REJECT6)
                .l4(L4::Raw {
                    proto: 17,
                    bytes: vec![0; 32],
                })
                .ext(Ext::Fragment {
                    offset: 100,
                    more: false,
                })
                .build(),
        ),
    ];
    for (name, input) in cases {
        let want = Effect::new(
            XDP_DROP,
            &["rule refuse", "reject", "reject_unanswered"],
            input.len(),
        );
        assert_eq!(h.run(&input), want, "{name}");
    }
}

#[test]
fn packets_to_group_broadcast_or_reserved_destinations_are_never_answered() {
    let h = harness();
    let to_group_mac = |mac: [u8; 6], f: Frame| {
        let mut b = f.build();
        b[..6].copy_from_slice(&mac);
        b
    };
    let syn = L4::TcpSyn {
        sport: 40000,
        dport: 80,
    };
    let cases = [
        // Ethernet group and broadcast destinations, to an address a reject rule covers.
        (
            "Ethernet broadcast",
            "refuse",
            to_group_mac([0xff; 6], Frame::v4(CLIENT4, REJECT4)),
        ),
        (
            "Ethernet multicast (IPv4 group MAC)",
            "refuse",
            to_group_mac(
                [0x01, 0x00, 0x5e, 0, 0, 1],
                Frame::v4(CLIENT4, REJECT4).l4(syn.clone()),
            ),
        ),
        (
            "Ethernet multicast (IPv6 group MAC)",
            "refuse",
            to_group_mac([0x33, 0x33, 0, 0, 0, 1], Frame::v6(CLIENT6, REJECT6)),
        ),
        // IP destinations.
        (
            "v4 limited broadcast",
            "refuse-groups",
            Frame::v4(CLIENT4, Ipv4Addr::BROADCAST).build(),
        ),
        (
            "v4 multicast",
            "refuse-groups",
            Frame::v4(CLIENT4, Ipv4Addr::new(224, 0, 0, 251)).build(),
        ),
        (
            "v4 multicast TCP",
            "refuse-groups",
            Frame::v4(CLIENT4, Ipv4Addr::new(239, 255, 255, 250))
                .l4(syn.clone())
                .build(),
        ),
        (
            "v4 reserved 240/4",
            "refuse-groups",
            Frame::v4(CLIENT4, Ipv4Addr::new(240, 0, 0, 1)).build(),
        ),
        (
            "v4 this network 0/8",
            "refuse-groups",
            Frame::v4(CLIENT4, Ipv4Addr::new(0, 1, 2, 3)).build(),
        ),
        (
            "v6 multicast",
            "refuse-groups",
            Frame::v6(CLIENT6, "ff02::1".parse().unwrap()).build(),
        ),
        (
            "v6 multicast TCP",
            "refuse-groups",
            Frame::v6(CLIENT6, "ff05::1:3".parse().unwrap())
                .l4(syn)
                .build(),
        ),
        (
            "v6 unspecified",
            "refuse-groups",
            Frame::v6(CLIENT6, Ipv6Addr::UNSPECIFIED).build(),
        ),
    ];
    for (name, rule, input) in cases {
        let rule = format!("rule {rule}");
        let want = Effect::new(
            XDP_DROP,
            &[rule.as_str(), "reject", "reject_unanswered"],
            input.len(),
        );
        assert_eq!(h.run(&input), want, "{name}");
    }
}

#[test]
fn replies_are_rate_limited_per_cpu() {
    let mut h = harness();
    h.apply_with_targets(
        &POLICY
            .replace("reject_rate = 1000", "reject_rate = 1")
            .replace("reject_burst = 1000", "reject_burst = 3"),
        &[NOTICE],
    );
    let input = Frame::v4(CLIENT4, REJECT4)
        .l4(L4::TcpSyn { sport: 9, dport: 9 })
        .build();
    let verdicts: Vec<u32> = (0..6).map(|_| h.run_out(&input).0).collect();
    let answered = verdicts.iter().filter(|v| **v == XDP_TX).count();
    assert!(
        (3..=4).contains(&answered),
        "a burst of 3 at 1/s, got {verdicts:?}"
    );
    assert!(
        verdicts[4..].iter().all(|v| *v == XDP_DROP),
        "past the burst: dropped, {verdicts:?}"
    );
    let e = h.run(&input);
    assert!(e.moved.contains_key("reject_unanswered"), "{e}");
}

#[test]
fn redirect_rewrites_ethernet_strips_vlans_and_keeps_l3() {
    let h = harness();
    let v4 = Frame::v4(CLIENT4, Ipv4Addr::new(198, 51, 100, 20)).l4(L4::TcpSyn {
        sport: 3,
        dport: 80,
    });
    let v6 = Frame::v6(CLIENT6, "2001:db8:2::20".parse().unwrap());
    for f in [
        v4.clone(),
        v4.clone().vlan(ETH_P_8021Q, 5),
        v4.vlan(ETH_P_8021AD, 5).vlan(ETH_P_8021Q, 6),
        v6.clone(),
        v6.vlan(ETH_P_8021Q, 8),
    ] {
        let input = f.build();
        let (verdict, out) = h.run_out(&input);
        assert_eq!(verdict, XDP_REDIRECT);
        assert_eq!(&out[0..6], &NOTICE.dst_mac);
        assert_eq!(&out[6..12], &NOTICE.src_mac);
        assert_eq!(
            &out[12..],
            &input[f.l3_offset() - 2..],
            "untagged, L3 and above unchanged"
        );
        let want = Effect::new(XDP_REDIRECT, &["rule court-order", "redirect"], input.len());
        assert_eq!(h.run(&input), want);
    }
}

#[test]
fn https_is_reset_by_default_or_redirected_when_the_rule_says_notice() {
    let h = harness();
    let syn = |dst: Ipv4Addr, dport| {
        Frame::v4(CLIENT4, dst).l4(L4::TcpSyn {
            sport: 50000,
            dport,
        })
    };
    let (v, out) = h.run_out(&syn(Ipv4Addr::new(198, 51, 100, 20), 443).build());
    assert_eq!(v, XDP_TX, "https = reject (the default): a reset");
    assert_eq!(out[14 + 20 + 13], 0x14);
    assert_eq!(
        h.run_out(&syn(Ipv4Addr::new(198, 51, 100, 20), 80).build())
            .0,
        XDP_REDIRECT
    );
    assert_eq!(
        h.run_out(&syn(Ipv4Addr::new(233, 252, 0, 1), 443).build())
            .0,
        XDP_REDIRECT,
        "https = notice"
    );
}

#[test]
fn a_missing_notice_target_drops_and_counts() {
    let mut h = harness();
    // Same policy, but the target slot says "no interface": redirects fail closed.
    h.apply_with_targets(
        POLICY,
        &[NoticeTarget {
            ifindex: 0,
            ..NOTICE
        }],
    );
    let input = Frame::v4(CLIENT4, Ipv4Addr::new(198, 51, 100, 20)).build();
    let want = Effect::new(
        XDP_DROP,
        &["rule court-order", "redirect", "redirect_failed"],
        input.len(),
    );
    assert_eq!(h.run(&input), want);
    let pass = Frame::v4(CLIENT4, Ipv4Addr::new(192, 0, 2, 99)).build();
    assert_eq!(h.run(&pass).verdict, XDP_PASS);
}
