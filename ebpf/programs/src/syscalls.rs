//! Syscall counts and latency histograms per (service, syscall).
//!
//! Raw tracepoints rather than `syscalls:sys_enter_*`: one program pair
//! covers every syscall, and a raw tracepoint skips the perf buffer copy a
//! classic tracepoint makes, which is most of the per-syscall cost.

use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::{map, raw_tracepoint},
    maps::PerCpuHashMap,
    programs::RawTracePointContext,
};
use gapscope_ebpf_common::{
    Log2Hist, MAX_SYSCALL_KEYS, NO_SYSCALL, SYS_FUTEX, SYS_URETPROBE, SyscallKey, counter,
};

use crate::gil;
use crate::maps::{BPF_F_NO_PREALLOC, current_ids, histogram, service_of_current, thread_state};

/// (service, syscall nr) → latency histogram, per CPU: what
/// `gapscope_syscall_duration_seconds` is decoded from. Not preallocated:
/// most services use a few dozen syscalls out of hundreds.
#[map]
pub static SYSCALLS: PerCpuHashMap<SyscallKey, Log2Hist> =
    PerCpuHashMap::with_max_entries(MAX_SYSCALL_KEYS, BPF_F_NO_PREALLOC);

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn gs_sys_enter(ctx: RawTracePointContext) -> i32 {
    // TP_PROTO(struct pt_regs *regs, long id)
    let regs: u64 = ctx.arg(0);
    let Some(service) = service_of_current(regs) else {
        return 0;
    };
    let nr = ctx.arg::<u64>(1) as u32;
    if nr == SYS_URETPROBE {
        return 0;
    }
    let (tgid, tid) = current_ids();
    let Some(t) = thread_state(tid, tgid) else {
        return 0;
    };
    let gil = if nr == SYS_FUTEX {
        gil::classify(tgid, regs)
    } else {
        gil::GilFutex::Elsewhere
    };
    let gil_wait = gil == gil::GilFutex::Wait;
    // SAFETY: a BPF helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if matches!(gil, gil::GilFutex::Elsewhere | gil::GilFutex::CondWake) {
        gil::flush(t, service, tid);
    } else if gil_wait {
        gil::wait_begins(t, service, tid, now);
    }
    // SAFETY: the entry belongs to this thread; only it writes these fields.
    unsafe {
        (*t).syscall_nr = nr;
        (*t).in_gil_wait = gil_wait as u32;
        (*t).syscall_start_ns = now;
    }
    0
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn gs_sys_exit(ctx: RawTracePointContext) -> i32 {
    // TP_PROTO(struct pt_regs *regs, long ret)
    let Some(service) = service_of_current(ctx.arg(0)) else {
        return 0;
    };
    let (_, tid) = current_ids();
    let Some(t) = crate::maps::THREADS.get_ptr_mut(&tid) else {
        return 0;
    };
    // SAFETY: as in gs_sys_enter.
    let (nr, start, gil_wait) = unsafe {
        let nr = (*t).syscall_nr;
        let start = (*t).syscall_start_ns;
        let gil_wait = (*t).in_gil_wait;
        (*t).syscall_nr = NO_SYSCALL;
        (*t).syscall_start_ns = 0;
        (*t).in_gil_wait = 0;
        (nr, start, gil_wait)
    };
    // The thread became traced in the middle of this syscall: no start time.
    if start == 0 {
        return 0;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    let elapsed = now.saturating_sub(start);
    if gil_wait != 0 {
        gil::add_wait(t, start, now);
    }
    let key = SyscallKey { service, nr };
    if let Some(hist) = histogram(&SYSCALLS, &key, counter::SYSCALLS_DROPPED) {
        // SAFETY: per-CPU value; only this CPU writes it while we run.
        unsafe { (*hist).record(elapsed) };
    }
    0
}
