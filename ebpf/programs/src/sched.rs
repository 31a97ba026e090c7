//! On-CPU time, off-CPU time by reason and run-queue latency per service.
//!
//! A traced thread leaving the CPU records when and why (`sched_switch`,
//! prev side); a wakeup records when it became runnable again
//! (`sched_wakeup*`); getting the CPU back (`sched_switch`, next side)
//! splits the gap into "blocked for <reason>" (switch-out → wakeup) and
//! "run-queue wait" (wakeup → switch-in). A preempted thread never blocked,
//! so its whole gap is run-queue wait. Either part longer than the
//! timeline threshold also goes to the timeline, for the attribution of
//! GPU idle time.
//!
//! Classic tracepoints: their records carry the pids we need
//! (`sched_switch` has `next_pid`), whereas the raw ones only pass
//! `task_struct` pointers whose layout differs between kernels.

use aya_ebpf::{
    EbpfContext, helpers::bpf_ktime_get_ns, macros::tracepoint, programs::TracePointContext,
};
use gapscope_ebpf_common::{
    IntervalKind, OffCpuReason, ThreadState, counter, off_cpu_detail,
    tp_offsets::{SWITCH_NEXT_PID, SWITCH_PREV_STATE, WAKEUP_PID},
};

use crate::{
    maps::{OFFCPU, SYSCALL_FAMILY, THREADS, bump, current_ids, service_of, thread_state},
    timeline,
};

/// `prev_state` bits that mean "blocked"; 0 (or only the preempt bit 0x100)
/// means the thread was still runnable when it lost the CPU.
const TASK_BLOCKED_MASK: i64 = 0xff;

#[inline(always)]
fn field<T: Copy>(ctx: &TracePointContext, offset: usize) -> T {
    // SAFETY: tracepoint programs may read their record directly; offsets
    // are within the record (checked against the format file at load).
    unsafe { *(ctx.as_ptr().add(offset) as *const T) }
}

#[tracepoint(category = "sched", name = "sched_switch")]
pub fn gs_sched_switch(ctx: TracePointContext) -> i32 {
    let now = unsafe { bpf_ktime_get_ns() };
    switch_out(&ctx, now);
    let next: i32 = field(&ctx, SWITCH_NEXT_PID);
    switch_in(next as u32, now);
    0
}

/// The current task (`prev`) leaves the CPU.
#[inline(always)]
fn switch_out(ctx: &TracePointContext, now: u64) {
    let (tgid, tid) = current_ids();
    if tid == 0 {
        return;
    }
    let Some(service) = service_of(tgid) else {
        return;
    };
    let Some(t) = thread_state(tid, tgid) else {
        return;
    };
    let prev_state: i64 = field(ctx, SWITCH_PREV_STATE);
    // SAFETY: only the thread itself (now, on this CPU) writes these fields.
    unsafe {
        // Off CPU already: the switch-in between was not seen. (Both zero:
        // the thread's first switch since tracing began.)
        if (*t).on_cpu_since_ns == 0 && (*t).off_cpu_since_ns != 0 {
            bump(counter::SWITCHES_UNSEEN, 1);
        }
        let on_since = (*t).on_cpu_since_ns;
        if on_since != 0
            && let Some(stats) = OFFCPU.get_ptr_mut(service)
        {
            (*stats).on_cpu_ns += now.saturating_sub(on_since);
        }
        // The stretch on CPU that ends here, when long enough.
        timeline::offer(
            IntervalKind::OnCpu as u32,
            0,
            service,
            tgid,
            tid,
            on_since,
            now,
        );
        (*t).on_cpu_since_ns = 0;
        (*t).off_cpu_since_ns = now;
        (*t).woken_ns = 0;
        (*t).off_reason = if prev_state & TASK_BLOCKED_MASK == 0 {
            OffCpuReason::Runqueue as u32
        } else if (*t).in_gil_wait != 0 {
            OffCpuReason::GilWait as u32
        } else if (*t).syscall_start_ns != 0 {
            match SYSCALL_FAMILY.get((*t).syscall_nr) {
                Some(r) => *r,
                None => OffCpuReason::SyscallOther as u32,
            }
        } else {
            OffCpuReason::BlockedOther as u32
        };
    }
    bump(counter::SCHED_SWITCHES, 1);
}

/// Thread `tid` gets the CPU.
#[inline(always)]
fn switch_in(tid: u32, now: u64) {
    if tid == 0 {
        return;
    }
    let Some(t) = THREADS.get_ptr_mut(&tid) else {
        return;
    };
    // SAFETY: the thread is not running anywhere else right now; a racing
    // wakeup can only set `woken_ns`, which we read once.
    unsafe {
        let tgid = (*t).tgid;
        let Some(service) = service_of(tgid) else {
            return;
        };
        let off_since = (*t).off_cpu_since_ns;
        let on_since = (*t).on_cpu_since_ns;
        (*t).on_cpu_since_ns = now;
        (*t).off_cpu_since_ns = 0;
        if off_since == 0 {
            // On CPU already: the switch-out between was not seen, and
            // with it whatever stretch off CPU followed.
            if on_since != 0 {
                bump(counter::SWITCHES_UNSEEN, 1);
            }
            return;
        }
        let Some(stats) = OFFCPU.get_ptr_mut(service) else {
            return;
        };
        let reason = (*t).off_reason;
        let runnable_since = if reason == OffCpuReason::Runqueue as u32 {
            off_since
        } else {
            let woken = (*t).woken_ns;
            let blocked_until = if woken > off_since && woken <= now {
                woken
            } else {
                now
            };
            if let Some(slot) = (*stats).off_ns.get_mut(reason as usize) {
                *slot += blocked_until - off_since;
            }
            // GIL waits reach the timeline whole, from the GIL probes.
            if reason != OffCpuReason::GilWait as u32 {
                // Still inside the syscall it blocked in, if any.
                timeline::offer(
                    IntervalKind::OffCpu as u32,
                    off_cpu_detail(reason, (*t).syscall_nr),
                    service,
                    tgid,
                    tid,
                    off_since,
                    blocked_until,
                );
            }
            blocked_until
        };
        let waited = now - runnable_since;
        (*stats).off_ns[OffCpuReason::Runqueue as usize] += waited;
        (*stats).runq.record(waited);
        timeline::offer(
            IntervalKind::OffCpu as u32,
            OffCpuReason::Runqueue as u32,
            service,
            tgid,
            tid,
            runnable_since,
            now,
        );
    }
}

#[tracepoint(category = "sched", name = "sched_wakeup")]
pub fn gs_sched_wakeup(ctx: TracePointContext) -> i32 {
    woken(field::<i32>(&ctx, WAKEUP_PID) as u32);
    0
}

#[tracepoint(category = "sched", name = "sched_wakeup_new")]
pub fn gs_sched_wakeup_new(ctx: TracePointContext) -> i32 {
    woken(field::<i32>(&ctx, WAKEUP_PID) as u32);
    0
}

/// Thread `tid` became runnable after blocking.
///
/// The one program that does not start from `TARGETS`: the woken thread is
/// not the current one, so its tgid is unknown here. `THREADS` only holds
/// threads of traced processes, and the switch-in that consumes `woken_ns`
/// checks `TARGETS` itself.
#[inline(always)]
fn woken(tid: u32) {
    let Some(t) = THREADS.get_ptr_mut(&tid) else {
        return;
    };
    let t: *mut ThreadState = t;
    // SAFETY: a racing switch-in resets off_cpu_since_ns; the worst case is
    // a stale woken_ns, which switch_in bounds by the switch-in time.
    unsafe {
        if (*t).off_cpu_since_ns != 0 && (*t).woken_ns == 0 {
            (*t).woken_ns = bpf_ktime_get_ns();
        }
    }
}
