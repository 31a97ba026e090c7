//! The maps shared by all programs, and small helpers around them.

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::map,
    maps::{Array, HashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use gapscope_ebpf_common::{
    Log2Hist, MAX_SERVICES, MAX_SYSCALL_KEYS, MAX_TARGETS, MAX_THREADS, OffCpuStats, SYSCALL_SLOTS,
    SyscallKey, ThreadState, counter,
};

/// tgid → service id. Filled by user space (scan, exec matching) and by
/// `task_newtask` (children of traced processes); emptied on exit.
#[map]
pub static TARGETS: HashMap<u32, u32> = HashMap::with_max_entries(MAX_TARGETS, 0);

/// tid → what the thread is doing, for threads of traced processes.
#[map]
pub static THREADS: HashMap<u32, ThreadState> = HashMap::with_max_entries(MAX_THREADS, 0);

/// (service, syscall nr) → latency histogram, per CPU. Not preallocated:
/// most services use a few dozen syscalls out of hundreds.
#[map]
pub static SYSCALLS: PerCpuHashMap<SyscallKey, Log2Hist> =
    PerCpuHashMap::with_max_entries(MAX_SYSCALL_KEYS, BPF_F_NO_PREALLOC);

/// service id → CPU time accounting, per CPU.
#[map]
pub static OFFCPU: PerCpuArray<OffCpuStats> = PerCpuArray::with_max_entries(MAX_SERVICES, 0);

/// syscall nr → `OffCpuReason` of a thread blocked inside it. Filled by user
/// space from the x86-64 syscall table.
#[map]
pub static SYSCALL_FAMILY: Array<u32> = Array::with_max_entries(SYSCALL_SLOTS, 0);

/// Events seen and dropped, per CPU; see `gapscope_ebpf_common::counter`.
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Process lifecycle events for user space.
#[map]
pub static PROC_EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

const BPF_F_NO_PREALLOC: u32 = 1;
pub const BPF_NOEXIST: u64 = 1;

/// The current thread's (tgid, tid).
#[inline(always)]
pub fn current_ids() -> (u32, u32) {
    let pid_tgid = bpf_get_current_pid_tgid();
    ((pid_tgid >> 32) as u32, pid_tgid as u32)
}

/// The service tracing `tgid`, if any. Every program calls this first.
#[inline(always)]
pub fn service_of(tgid: u32) -> Option<u32> {
    // SAFETY: plain u32 value; a concurrent delete can at worst make us
    // read the id of the process that was just removed.
    unsafe { TARGETS.get(&tgid).copied() }
}

/// Adds `n` to a per-CPU counter.
#[inline(always)]
pub fn bump(index: u32, n: u64) {
    if let Some(c) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, only this CPU writes it while we run.
        unsafe { *c += n };
    }
}

/// The thread's state, created empty on first sight.
#[inline(always)]
pub fn thread_state(tid: u32, tgid: u32, service: u32) -> Option<*mut ThreadState> {
    if let Some(t) = THREADS.get_ptr_mut(&tid) {
        return Some(t);
    }
    let fresh = ThreadState {
        tgid,
        service,
        syscall_nr: gapscope_ebpf_common::NO_SYSCALL,
        off_reason: 0,
        syscall_start_ns: 0,
        on_cpu_since_ns: 0,
        off_cpu_since_ns: 0,
        woken_ns: 0,
    };
    if THREADS.insert(&tid, &fresh, BPF_NOEXIST).is_err() {
        bump(counter::THREADS_DROPPED, 1);
        return None;
    }
    THREADS.get_ptr_mut(&tid)
}
