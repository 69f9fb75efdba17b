//! The edgeblock XDP program.
//!
//! One pass over the headers with a bounds-checked cursor (`parse`), one address lookup per
//! direction (`lookup`), one `match` that turns the outcome into an XDP action. Counters are
//! per-CPU; nothing is logged per packet.
#![no_std]
#![no_main]

mod lookup;
mod parse;
mod redirect;
mod reply;
mod sample;

use aya_ebpf::{
    bindings::xdp_action::{XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX},
    macros::{map, xdp},
    maps::{Array, PerCpuArray},
    programs::XdpContext,
};
use filter_common::{
    Config, Counter, MAX_RULES, RuleEntry, TokenBucket, action, malformed, rule_flags, stat,
};

use crate::parse::{Packet, ParseError, ptr_at};

/// Per-rule packets/bytes, indexed by `RuleEntry::rule_id`.
#[map(name = "EB_RULE_STATS")]
static EB_RULE_STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(MAX_RULES, 0);

/// Per-action totals and the counts of what matched no rule; indexed by `filter_common::stat`.
#[map(name = "EB_STATS")]
static EB_STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(stat::LEN, 0);

/// Entry 0: runtime configuration written by `edgeblock apply`.
#[map(name = "EB_CONFIG")]
static EB_CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// Entry 0: this CPU's reject token bucket.
#[map(name = "EB_REJECT_TB")]
static EB_REJECT_TB: PerCpuArray<TokenBucket> = PerCpuArray::with_max_entries(1, 0);

/// What the entry point does with a frame, decided by `try_filter`. The shadow rule, when
/// there is one, is only counted: it never changes the verdict.
enum Outcome {
    /// Not IPv4/IPv6: ARP, LLDP, ...
    NonIp,
    /// IP, no enforced rule matched either address.
    NoMatch(Option<&'static RuleEntry>),
    /// An enforced rule decided.
    Rule(&'static RuleEntry, Option<&'static RuleEntry>, Packet),
}

// `frags`: the program copes with multi-buffer frames (it only reads headers from the linear
// part, and counts every buffer's bytes: `parse::frame_len`), so it can sit on jumbo-MTU
// interfaces.
#[xdp(frags)]
pub fn edgeblock(ctx: XdpContext) -> u32 {
    // Once per packet: the parser and every counter use it. Bytes counted are those of the
    // packet as it arrived, before any rewrite.
    let mut len = parse::frame_len(&ctx) as u64;
    // Once per packet: the table copy and which of its tables to search.
    let act = lookup::active();
    match try_filter(&ctx, act, &mut len) {
        Ok(Outcome::NonIp) => {
            // `len` may be the first buffer's alone; this path is rare enough to measure all.
            count(&EB_STATS, stat::NON_IP, parse::whole_len(&ctx) as u64);
            XDP_PASS
        }
        Ok(Outcome::NoMatch(shadow)) => {
            count(&EB_STATS, stat::NO_MATCH, len);
            if let Some(s) = shadow {
                count_shadow(s, len);
            }
            XDP_PASS
        }
        Ok(Outcome::Rule(entry, shadow, pkt)) => {
            if entry.action != action::PASS {
                // With a reader subscribed, does not return: the sampler brings the packet
                // back here, and it is counted and decided then.
                sample::offer(&ctx, entry);
            }
            count(&EB_RULE_STATS, entry.rule_id, len);
            count(&EB_STATS, u32::from(entry.action), len);
            if let Some(s) = shadow {
                count_shadow(s, len);
            }
            match entry.action {
                action::PASS => XDP_PASS,
                action::DROP => XDP_DROP,
                _ => rewrite(&ctx, entry, &pkt, len),
            }
        }
        Err(ParseError::Malformed) => {
            // As for NonIp.
            let len = parse::whole_len(&ctx) as u64;
            count(&EB_STATS, stat::MALFORMED, len);
            // Only the malformed path pays for the config lookup.
            let pass = EB_CONFIG
                .get(0)
                .is_some_and(|c| c.malformed_action == malformed::PASS);
            if pass {
                XDP_PASS
            } else {
                count(&EB_STATS, stat::MALFORMED_DROPPED, len);
                XDP_DROP
            }
        }
    }
}

/// The sampler (`sample`), reached from `edgeblock` by tail call; never attached itself. Its
/// `frags` must match the filter's: the kernel only tail-calls between programs that agree.
#[xdp(frags)]
pub fn edgeblock_sample(ctx: XdpContext) -> u32 {
    sample::sampler(&ctx)
}

/// Reject and redirect: the actions that rewrite the frame.
#[inline(always)]
fn rewrite(ctx: &XdpContext, entry: &RuleEntry, pkt: &Packet, len: u64) -> u32 {
    // One call of the reply builders for both ways to a reset: the verifier walks the largest
    // part of the program once per call site.
    let rejects = match entry.action {
        action::REJECT => true,
        action::REDIRECT => entry.flags & rule_flags::HTTPS_REJECT != 0 && is_https(ctx, pkt),
        _ => false,
    };
    if rejects {
        return reject(ctx, pkt, len);
    }
    match entry.action {
        action::REDIRECT => match redirect::redirect(ctx, pkt, entry.target) {
            Some(verdict) => verdict,
            None => {
                count(&EB_STATS, stat::REDIRECT_FAILED, len);
                XDP_DROP
            }
        },
        // Userspace never writes another action: a value we do not know is a bug,
        // made visible through the xdp:xdp_exception tracepoint.
        _ => XDP_ABORTED,
    }
}

/// Headers, lookups, then the rest of the headers (the IPv6 extension-header walk): a packet
/// whose headers do not hold together is malformed whatever its addresses match. `len` is
/// the frame's length, made whole if the IP header shows it reaches past the first buffer.
#[inline(always)]
fn try_filter(ctx: &XdpContext, act: u32, len: &mut u64) -> Result<Outcome, ParseError> {
    let fixed = parse::headers(ctx, *len as usize)?;
    *len = fixed.len as u64;
    let decision = match fixed.family {
        parse::FAMILY_V4 => lookup::decide_v4(act, fixed.src4(), fixed.dst4()),
        parse::FAMILY_V6 => lookup::decide_v6(act, &fixed.src, &fixed.dst),
        _ => return Ok(Outcome::NonIp),
    };
    let pkt = parse::finish(ctx, &fixed)?;
    let shadow = lookup::entry(decision.shadow);
    Ok(match lookup::entry(decision.rule) {
        Some(e) => Outcome::Rule(e, shadow, pkt),
        None => Outcome::NoMatch(shadow),
    })
}

/// A shadow rule's hit: its rule counter and the shadow total of its action. It never
/// changes the verdict.
#[inline(always)]
fn count_shadow(s: &RuleEntry, len: u64) {
    count(&EB_RULE_STATS, s.rule_id, len);
    count(&EB_STATS, stat::SHADOW + u32::from(s.action & 3), len);
}

/// Answer the packet (TCP reset, ICMP unreachable) if it may be answered and the rate limit
/// allows; otherwise drop it.
#[inline(always)]
fn reject(ctx: &XdpContext, pkt: &Packet, len: u64) -> u32 {
    let answered = reply::answerable(ctx, pkt).is_ok()
        && reply::allow(EB_CONFIG.get(0), EB_REJECT_TB.get_ptr_mut(0))
        && reply::build(ctx, pkt).is_ok();
    if answered {
        XDP_TX
    } else {
        count(&EB_STATS, stat::REJECT_UNANSWERED, len);
        XDP_DROP
    }
}

/// TCP to port 443, for redirect rules that reject HTTPS.
#[inline(always)]
fn is_https(ctx: &XdpContext, pkt: &Packet) -> bool {
    const IPPROTO_TCP: u8 = 6;
    // A later fragment (L4_NONE) has no ports: it goes to the notice server like the rest.
    if pkt.l4_proto != IPPROTO_TCP {
        return false;
    }
    ptr_at::<[u8; 4]>(ctx, pkt.l4_off).is_ok_and(|ports| {
        // SAFETY: checked by ptr_at.
        let ports = unsafe { ports.read_unaligned() };
        ports[2..4] == 443u16.to_be_bytes()
    })
}

#[inline(always)]
fn count(map: &PerCpuArray<Counter>, index: u32, len: u64) {
    if let Some(c) = map.get_ptr_mut(index) {
        // SAFETY: a per-CPU array slot is only touched by this CPU while the program runs,
        // and XDP programs are not preempted by another XDP program on the same CPU.
        let c = unsafe { &mut *c };
        c.packets += 1;
        c.bytes += len;
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects any program that could reach a panic (no unbounded
    // indexing or arithmetic survives to the object), so this is never executed.
    unsafe { core::hint::unreachable_unchecked() }
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
