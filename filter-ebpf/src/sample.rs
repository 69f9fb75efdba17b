//! Sampled flows (see `filter_common::sample`): the filter offers a blocked packet, the sampler
//! program copies its first bytes into the ring and hands the packet back.
//!
//! The sampler is its own program, reached by tail call only for packets within the budget, so
//! the filter's verifier states do not grow with the copy, and a filter with no reader pays one
//! array read per blocked packet.

use aya_ebpf::{
    bindings::xdp_action::XDP_DROP,
    helpers::generated::{bpf_ktime_get_ns, bpf_xdp_get_buff_len, bpf_xdp_load_bytes},
    macros::map,
    maps::{Array, PerCpuArray, ProgramArray, RingBuf},
    programs::XdpContext,
};
use filter_common::{
    MAX_RULES, RuleEntry, Sample, SampleBudget, SampleControl, SampleScratch, sample, stat,
};

use crate::{EB_STATS, count};

/// Slot `sample::PROG_MAIN`: the filter; `sample::PROG_SAMPLER`: the sampler. Filled by the
/// loader.
#[map(name = "EB_PROGS")]
static EB_PROGS: ProgramArray = ProgramArray::with_max_entries(sample::PROGS, 0);

#[map(name = "EB_SAMPLES")]
static EB_SAMPLES: RingBuf = RingBuf::with_byte_size(sample::RING_BYTES, 0);

/// Entry 0: the reader's lease (`edgeblock tail`).
#[map(name = "EB_SAMPLE_CTL")]
static EB_SAMPLE_CTL: Array<SampleControl> = Array::with_max_entries(1, 0);

#[map(name = "EB_SAMPLE_SCRATCH")]
static EB_SAMPLE_SCRATCH: PerCpuArray<SampleScratch> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "EB_SAMPLE_BUDGET")]
static EB_SAMPLE_BUDGET: PerCpuArray<SampleBudget> = PerCpuArray::with_max_entries(MAX_RULES, 0);

/// Called by the filter for a packet an enforced rule blocks, before anything is counted. When
/// a reader holds the lease and the rule has budget left this second on this CPU, this
/// tail-calls the sampler and does not return: the sampler brings the packet back to the
/// filter's start. Returns when there is no reader or no budget, when the packet is on its
/// second pass, or when the tail call fails (the packet is then decided unsampled).
#[inline(always)]
pub fn offer(ctx: &XdpContext, entry: &RuleEntry) {
    let Some(ctl) = EB_SAMPLE_CTL.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: a map value; the only write from here is the 8-byte clear below.
    let ctl = unsafe { &mut *ctl };
    if ctl.until_ns == 0 {
        return;
    }
    let Some(scratch) = EB_SAMPLE_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot; XDP programs run to completion on a CPU, one at a time.
    let scratch = unsafe { &mut *scratch };
    if scratch.resumed != 0 {
        scratch.resumed = 0;
        return;
    }
    // SAFETY: no arguments, no side effects.
    let now = unsafe { bpf_ktime_get_ns() };
    if ctl.until_ns <= now {
        // The reader is gone: stop offering. A reader renewing at this moment loses at most
        // one renewal period.
        ctl.until_ns = 0;
        return;
    }
    let Some(budget) = EB_SAMPLE_BUDGET.get_ptr_mut(entry.rule_id) else {
        return;
    };
    // SAFETY: this CPU's slot, as above.
    let budget = unsafe { &mut *budget };
    let second = now / 1_000_000_000;
    if budget.second != second {
        budget.second = second;
        budget.used = 0;
    }
    if budget.used >= ctl.per_cpu {
        return;
    }
    budget.used += 1;
    scratch.time_ns = now;
    scratch.rule_id = entry.rule_id;
    scratch.action = entry.action;
    // SAFETY: the slot holds an XDP program of the same kind (the loader fills it).
    unsafe { EB_PROGS.tail_call(ctx, sample::PROG_SAMPLER) };
}

/// The sampler program's body: copy the packet into the ring, then back to the filter. Should
/// that tail call fail, the packet, which a rule blocks, is dropped.
#[inline(always)]
pub fn sampler(ctx: &XdpContext) -> u32 {
    let Some(scratch) = EB_SAMPLE_SCRATCH.get_ptr_mut(0) else {
        return XDP_DROP;
    };
    // SAFETY: as in `offer`.
    let scratch = unsafe { &mut *scratch };
    emit(ctx, scratch);
    scratch.resumed = 1;
    // SAFETY: as in `offer`.
    unsafe { EB_PROGS.tail_call(ctx, sample::PROG_MAIN) };
    scratch.resumed = 0;
    XDP_DROP
}

/// Copy the packet's first bytes into the ring.
#[inline(always)]
fn emit(ctx: &XdpContext, scratch: &SampleScratch) {
    // SAFETY: ctx.ctx is the xdp_md the kernel passed to this program.
    let len = unsafe { bpf_xdp_get_buff_len(ctx.ctx) };
    let Some(mut entry) = EB_SAMPLES.reserve::<Sample>(0) else {
        count(&EB_STATS, stat::SAMPLE_LOST, len);
        return;
    };
    let s = entry.as_mut_ptr();
    let cap = if len < sample::BYTES as u64 {
        len as u32
    } else {
        sample::BYTES as u32
    };
    // SAFETY: `s` is the ring entry just reserved, size_of::<Sample>() bytes; `cap` is at
    // most the size of `data`.
    let copied = cap > 0
        && unsafe { bpf_xdp_load_bytes(ctx.ctx, 0, (*s).data.as_mut_ptr().cast(), cap) } == 0;
    // SAFETY: as above; every field is written before the entry is submitted.
    unsafe {
        (*s).time_ns = scratch.time_ns;
        (*s).rule_id = scratch.rule_id;
        (*s).ifindex = (*ctx.ctx).ingress_ifindex;
        (*s).len = len as u32;
        (*s).cap = if copied { cap as u16 } else { 0 };
        (*s).action = scratch.action;
        (*s)._pad = 0;
    }
    entry.submit(0);
    count(&EB_STATS, stat::SAMPLED, len);
}
