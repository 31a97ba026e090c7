//! The maps more than one program uses, and small helpers around them (a
//! map one program alone uses sits next to it, as `SYSCALLS` does).

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::map,
    maps::{Array, HashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use core::intrinsics::{AtomicOrdering, atomic_xadd};

use gapscope_ebpf_common::{
    CACHE_ADDRESS_MASK, CACHE_UNTRACED, GilRange, Log2Hist, MAX_CUDA_PROBES, MAX_SER_PROBES,
    MAX_SERVICES, MAX_TARGETS, MAX_THREADS, OffCpuStats, SYSCALL_SLOTS, TIMELINE_RING_BYTES,
    TargetCache, ThreadState, counter,
};

/// tgid → service id. Filled by user space (scan, exec matching) and by
/// `task_newtask` (children of traced processes); emptied on exit.
#[map]
pub static TARGETS: HashMap<u32, u32> = HashMap::with_max_entries(MAX_TARGETS, 0);

/// See `TargetCache`: one entry per CPU.
#[map]
pub static TARGET_CACHE: PerCpuArray<TargetCache> = PerCpuArray::with_max_entries(1, 0);

/// Generation of `TARGETS` and of traced threads as changed here (see
/// `TargetCache`). A global variable (in `.bss`), so reading it is one load
/// with no map lookup.
static mut KERNEL_GENERATION: u64 = 0;

/// Generation of `TARGETS` as changed by user space, which bumps it after
/// each change. In `.data` (the non-zero start puts it there), alone, so
/// user space can write it without touching anything else.
#[unsafe(no_mangle)]
static mut USER_GENERATION: u64 = 1;

/// tid → what the thread is doing, for threads of traced processes.
#[map]
pub static THREADS: HashMap<u32, ThreadState> = HashMap::with_max_entries(MAX_THREADS, 0);

/// service id → CPU time accounting, per CPU.
#[map]
pub static OFFCPU: PerCpuArray<OffCpuStats> = PerCpuArray::with_max_entries(MAX_SERVICES, 0);

/// tgid → its GIL's address range, for traced Python processes.
#[map]
pub static GIL_RANGES: HashMap<u32, GilRange> = HashMap::with_max_entries(MAX_TARGETS, 0);

/// service id → GIL waits, one observation per contended acquisition.
#[map]
pub static GIL_WAIT: PerCpuArray<Log2Hist> = PerCpuArray::with_max_entries(MAX_SERVICES, 0);

/// (tgid << 32 | probe) → serialization calls the process made while the
/// probe was attached: user space keeps each process within its budget.
#[map]
pub static SER_PROCESS_CALLS: HashMap<u64, u64> = HashMap::with_max_entries(MAX_TARGETS, 0);

/// Long intervals (`Interval`) for the timeline; see `timeline.rs`.
#[map]
pub static TIMELINE: RingBuf = RingBuf::with_byte_size(TIMELINE_RING_BYTES, 0);

/// (tid << 32 | probe) → when the thread entered the probed function.
#[map]
pub static SER_START: HashMap<u64, u64> = HashMap::with_max_entries(MAX_THREADS, 0);

/// service * MAX_SER_PROBES + probe → call durations, per CPU.
#[map]
pub static SER_CALLS: PerCpuArray<Log2Hist> =
    PerCpuArray::with_max_entries(MAX_SERVICES * MAX_SER_PROBES, 0);

/// (tid << 32 | CUDA probe slot) → when the thread entered the call.
#[map]
pub static CUDA_START: HashMap<u64, u64> = HashMap::with_max_entries(MAX_THREADS, 0);

/// `cuda_key(service, slot)` → call durations, per CPU. Not preallocated:
/// a service uses a handful of the entry points.
#[map]
pub static CUDA_CALLS: PerCpuHashMap<u32, Log2Hist> =
    PerCpuHashMap::with_max_entries(MAX_SERVICES * MAX_CUDA_PROBES, BPF_F_NO_PREALLOC);

/// (tgid << 32 | slot) → launches the process made while the probe was
/// attached: user space keeps each process within the launch budget.
#[map]
pub static CUDA_PROCESS_CALLS: HashMap<u64, u64> = HashMap::with_max_entries(MAX_TARGETS, 0);

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

pub(crate) const BPF_F_NO_PREALLOC: u32 = 1;
pub const BPF_NOEXIST: u64 = 1;

/// The current thread's (tgid, tid).
#[inline(always)]
pub fn current_ids() -> (u32, u32) {
    let pid_tgid = bpf_get_current_pid_tgid();
    ((pid_tgid >> 32) as u32, pid_tgid as u32)
}

/// Records a change to `TARGETS` or to a traced process's threads.
#[inline(always)]
pub fn bump_kernel_generation() {
    // SAFETY: a valid, aligned u64. The BPF target has no
    // `AtomicU64::fetch_add` in core, so use the intrinsic (a BPF atomic add).
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut KERNEL_GENERATION, 1) };
}

/// The service tracing `tgid`, if any: a lookup in `TARGETS`. Every
/// program starts with this (or with `service_of_current`).
#[inline(always)]
pub fn service_of(tgid: u32) -> Option<u32> {
    // SAFETY: plain u32 value; a concurrent delete can at worst make us
    // read the id of the process that was just removed.
    unsafe { TARGETS.get(&tgid).copied() }
}

/// The service tracing the current thread, whose `pt_regs` the syscall
/// tracepoints pass in: `service_of` behind the per-CPU `TargetCache`.
#[inline(always)]
pub fn service_of_current(regs: u64) -> Option<u32> {
    // Generations are read before the map, so a change that lands after
    // the lookup also lands after these reads and invalidates the entry.
    // SAFETY: aligned u64 globals; other CPUs and user space may change
    // them concurrently, and any value read is either the old or the new.
    let (gen_kernel, gen_user) = unsafe {
        (
            core::ptr::read_volatile(&raw const KERNEL_GENERATION),
            core::ptr::read_volatile(&raw const USER_GENERATION),
        )
    };
    let address = regs & CACHE_ADDRESS_MASK;
    let cache = TARGET_CACHE.get_ptr_mut(0);
    if let Some(c) = cache {
        // SAFETY: this CPU's entry.
        let c = unsafe { &*c };
        if c.regs_service & CACHE_ADDRESS_MASK == address
            && c.gen_kernel == gen_kernel
            && c.gen_user == gen_user
        {
            let service = c.regs_service >> 48;
            return (service != CACHE_UNTRACED).then_some(service as u32);
        }
    }
    bump(counter::TARGET_CACHE_MISSES, 1);
    let (tgid, _) = current_ids();
    let found = service_of(tgid);
    if let Some(c) = cache {
        let service = found.map_or(CACHE_UNTRACED, |s| s as u64);
        let entry = TargetCache {
            regs_service: service << 48 | address,
            gen_kernel,
            gen_user,
        };
        // SAFETY: this CPU's entry.
        unsafe { *c = entry };
    }
    found
}

/// Adds `n` to a per-CPU counter.
#[inline(always)]
pub fn bump(index: u32, n: u64) {
    if let Some(c) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, only this CPU writes it while we run.
        unsafe { *c += n };
    }
}

/// Lives in .rodata, so inserting a new histogram copies from there
/// instead of building 300-odd bytes on the 512-byte BPF stack.
static ZERO_HIST: Log2Hist = Log2Hist::ZERO;

/// This CPU's histogram for `key` in a per-CPU hash map, created empty on
/// first use; None (and `dropped` counted) when the map is full.
#[inline(always)]
pub fn histogram<K>(
    map: &PerCpuHashMap<K, Log2Hist>,
    key: &K,
    dropped: u32,
) -> Option<*mut Log2Hist> {
    if let Some(h) = map.get_ptr_mut(key) {
        return Some(h);
    }
    // Fails harmlessly when another CPU inserted the key first.
    let _ = map.insert(key, &ZERO_HIST, BPF_NOEXIST);
    let h = map.get_ptr_mut(key);
    if h.is_none() {
        bump(dropped, 1);
    }
    h
}

/// A uprobe's attach cookie: which probe (and, for CUDA, which kind of
/// call) fired.
#[inline(always)]
pub fn attach_cookie<C: aya_ebpf::EbpfContext>(ctx: &C) -> u64 {
    // SAFETY: a probe context; the helper only reads the attach cookie.
    unsafe { aya_ebpf::helpers::bpf_get_attach_cookie(ctx.as_ptr()) }
}

/// Adds one call to a per-process counter in a shared hash map.
#[inline(always)]
pub fn count_call(map: &HashMap<u64, u64>, key: u64) {
    match map.get_ptr_mut(&key) {
        // SAFETY: a valid map value; threads on other CPUs may add at the
        // same time, hence the atomic add.
        Some(c) => unsafe {
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(c, 1);
        },
        None => {
            // Another CPU may have inserted it first: that call is lost
            // (a count, not a measurement), never doubled.
            let _ = map.insert(&key, &1, BPF_NOEXIST);
        }
    }
}

/// The thread's state, created empty on first sight.
#[inline(always)]
pub fn thread_state(tid: u32, tgid: u32) -> Option<*mut ThreadState> {
    if let Some(t) = THREADS.get_ptr_mut(&tid) {
        return Some(t);
    }
    let fresh = ThreadState {
        tgid,
        syscall_nr: gapscope_ebpf_common::NO_SYSCALL,
        off_reason: 0,
        in_gil_wait: 0,
        syscall_start_ns: 0,
        on_cpu_since_ns: 0,
        off_cpu_since_ns: 0,
        woken_ns: 0,
        gil_wait_ns: 0,
        gil_wait_first_ns: 0,
        gil_wait_last_ns: 0,
        last_launch_ns: 0,
        launched_since_sync: 0,
        gil_holder_tid: 0,
    };
    if THREADS.insert(&tid, &fresh, BPF_NOEXIST).is_err() {
        bump(counter::THREADS_DROPPED, 1);
        return None;
    }
    THREADS.get_ptr_mut(&tid)
}
