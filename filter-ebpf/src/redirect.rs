//! `redirect`: hand the frame, unchanged at L3, to the notice target's interface.
//!
//! The Ethernet header is rewritten for the L2-adjacent next hop (the notice server, or the
//! router in front of it) and VLAN tags are removed: they belong to the link the packet came
//! in on, not to the notice link. The notice server receives packets addressed to the blocked
//! origin and answers the client directly with that address (docs/policy.md).

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_REDIRECT},
    helpers::generated::bpf_xdp_adjust_head,
    macros::map,
    maps::{Array, DevMap},
    programs::XdpContext,
};
use filter_common::{MAX_NOTICE_TARGETS, NoticeTarget};

use crate::parse::{Packet, ptr_at};

/// Per target: egress ifindex and the MACs to write.
#[map(name = "EB_NOTICE")]
static EB_NOTICE: Array<NoticeTarget> = Array::with_max_entries(MAX_NOTICE_TARGETS, 0);

/// Per target: the egress interface, for bpf_redirect_map.
#[map(name = "EB_NOTICE_DEV")]
static EB_NOTICE_DEV: DevMap = DevMap::with_max_entries(MAX_NOTICE_TARGETS, 0);

/// Rewrite and redirect; `None` when the target is not configured or the frame cannot be
/// rewritten (the caller drops and counts it).
#[inline(always)]
pub fn redirect(ctx: &XdpContext, pkt: &Packet, target: u16) -> Option<u32> {
    let target = u32::from(target);
    let t = EB_NOTICE.get(target)?;
    if t.ifindex == 0 {
        return None;
    }
    let tags = pkt.l3_off.checked_sub(14)?;
    if tags > 8 {
        return None;
    }
    if tags > 0 {
        // Dropping the bytes right after the MAC addresses leaves the innermost EtherType at
        // offset 12, where an untagged frame has it; the MACs are rewritten below anyway.
        // SAFETY: ctx.ctx is the xdp_md the kernel passed to this program.
        if unsafe { bpf_xdp_adjust_head(ctx.ctx, tags as i32) } != 0 {
            return None;
        }
    }
    let macs: *mut [u8; 12] = ptr_at(ctx, 0).ok()?;
    let mut m = [0u8; 12];
    m[..6].copy_from_slice(&t.dst_mac);
    m[6..].copy_from_slice(&t.src_mac);
    // SAFETY: checked by ptr_at.
    unsafe { macs.write_unaligned(m) };
    match EB_NOTICE_DEV.redirect(target, u64::from(XDP_DROP)) {
        Ok(action) if action == XDP_REDIRECT => Some(action),
        _ => None,
    }
}
