//! Serialization calls (json, pickle, user-defined): a uprobe on the C
//! function that does the work and a uretprobe on its return. One program
//! pair serves every probe; the attach cookie says which probe fired.
//! The probes are attached once per library file (any process), so the
//! programs start from `TARGETS` like every other.

use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use gapscope_ebpf_common::{IntervalKind, MAX_SER_PROBES};

use crate::maps::{
    SER_CALLS, SER_PROCESS_CALLS, SER_START, attach_cookie as cookie, count_call, current_ids,
    service_of,
};

#[uprobe]
pub fn gs_ser_enter(ctx: ProbeContext) -> u32 {
    let (tgid, tid) = current_ids();
    if service_of(tgid).is_none() {
        return 0;
    }
    let key = (tid as u64) << 32 | cookie(&ctx);
    let now = unsafe { bpf_ktime_get_ns() };
    let _ = SER_START.insert(&key, &now, 0);
    0
}

#[uretprobe]
pub fn gs_ser_exit(ctx: RetProbeContext) -> u32 {
    let (tgid, tid) = current_ids();
    let Some(service) = service_of(tgid) else {
        return 0;
    };
    let probe = cookie(&ctx);
    if probe >= MAX_SER_PROBES as u64 {
        return 0;
    }
    let key = (tid as u64) << 32 | probe;
    // SAFETY: plain value.
    let Some(start) = (unsafe { SER_START.get(&key).copied() }) else {
        return 0;
    };
    let _ = SER_START.remove(&key);
    count_call(&SER_PROCESS_CALLS, (tgid as u64) << 32 | probe);
    let now = unsafe { bpf_ktime_get_ns() };
    let elapsed = now.saturating_sub(start);
    crate::timeline::offer(
        IntervalKind::Serialization as u32,
        probe as u32,
        service,
        tgid,
        tid,
        start,
        now,
    );
    let slot = service * MAX_SER_PROBES + probe as u32;
    if let Some(h) = SER_CALLS.get_ptr_mut(slot) {
        // SAFETY: per-CPU value; only this CPU writes it while we run.
        unsafe { (*h).record(elapsed) };
    }
    0
}
