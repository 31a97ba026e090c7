//! CUDA API calls seen from outside the process: a uprobe/uretprobe pair
//! on the entry points of libcuda and libcudart that the serving process
//! maps. One program pair serves every entry point; the attach cookie's
//! low byte is the probe slot and its flags say what the call is:
//!
//! * a launch (`cuLaunchKernel`, `cudaGraphLaunch`, …): counted per
//!   process, so user space can keep the probes within their overhead
//!   budget;
//!   A launch after a quiet stretch (no launch from the thread for the
//!   timeline threshold) goes to the timeline: it is where work reached
//!   an idle GPU again;
//! * a host sync (`cuStreamSynchronize`, a synchronous `cuMemcpy`, …): the
//!   CPU waits for the GPU. Long waits, and the first sync after a
//!   thread's launches (it returns when the GPU has run dry), go to the
//!   timeline.
//!
//! Every call's duration goes into a log2 histogram per (service, slot).

use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use gapscope_ebpf_common::{IntervalKind, counter, cuda_cookie, cuda_key};

use crate::{
    maps::{
        CUDA_CALLS, CUDA_PROCESS_CALLS, CUDA_START, attach_cookie as cookie, count_call,
        current_ids, histogram, service_of, thread_state,
    },
    timeline,
};

#[uprobe]
pub fn gs_cuda_enter(ctx: ProbeContext) -> u32 {
    let (tgid, tid) = current_ids();
    if service_of(tgid).is_none() {
        return 0;
    }
    let key = (tid as u64) << 32 | (cookie(&ctx) & cuda_cookie::SLOT_MASK);
    let now = unsafe { bpf_ktime_get_ns() };
    let _ = CUDA_START.insert(&key, &now, 0);
    0
}

#[uretprobe]
pub fn gs_cuda_exit(ctx: RetProbeContext) -> u32 {
    let (tgid, tid) = current_ids();
    let Some(service) = service_of(tgid) else {
        return 0;
    };
    let c = cookie(&ctx);
    let slot = c & cuda_cookie::SLOT_MASK;
    let key = (tid as u64) << 32 | slot;
    // SAFETY: plain value.
    let Some(start) = (unsafe { CUDA_START.get(&key).copied() }) else {
        return 0;
    };
    let _ = CUDA_START.remove(&key);
    let now = unsafe { bpf_ktime_get_ns() };
    let thread = thread_state(tid, tgid);
    if c & cuda_cookie::LAUNCH != 0 {
        count_call(&CUDA_PROCESS_CALLS, (tgid as u64) << 32 | slot);
        if let Some(t) = thread {
            // SAFETY: only the thread itself writes these fields.
            unsafe {
                let quiet = start.saturating_sub((*t).last_launch_ns);
                if quiet >= timeline::threshold() || now - start >= timeline::threshold() {
                    timeline::send(
                        IntervalKind::Launch as u32,
                        slot as u32,
                        service,
                        tgid,
                        tid,
                        start,
                        now,
                    );
                }
                (*t).last_launch_ns = now;
                (*t).launched_since_sync = 1;
            }
        }
    }
    if c & cuda_cookie::HOST_SYNC != 0 {
        // SAFETY: as above.
        let drains = thread.is_some_and(|t| unsafe { (*t).launched_since_sync != 0 });
        if drains || now - start >= timeline::threshold() {
            timeline::send(
                IntervalKind::HostSync as u32,
                slot as u32,
                service,
                tgid,
                tid,
                start,
                now,
            );
        }
        if let Some(t) = thread {
            // SAFETY: as above.
            unsafe { (*t).launched_since_sync = 0 };
        }
    }
    let key = cuda_key(service, slot as u32);
    if let Some(hist) = histogram(&CUDA_CALLS, &key, counter::CUDA_CALLS_DROPPED) {
        // SAFETY: per-CPU value; only this CPU writes it while we run.
        unsafe { (*hist).record(now.saturating_sub(start)) };
    }
    0
}
