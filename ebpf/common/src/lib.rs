//! The contract between Gapscope's BPF programs (`ebpf/programs`) and the
//! daemon (`daemon/`): map key and value layouts, ring-buffer event records
//! and the constants both sides must agree on.
//!
//! Everything here is `#[repr(C)]`, fixed-size and free of pointers, because
//! the same bytes are written by the kernel side and read through `bpf()` by
//! user space.
#![cfg_attr(not(test), no_std)]

pub mod names;

/// Most services a configuration may define. Service ids index per-CPU arrays.
pub const MAX_SERVICES: u32 = 64;

/// Capacity of the tgid → service map: traced processes at once.
pub const MAX_TARGETS: u32 = 16_384;

/// Capacity of the per-thread state map: threads of traced processes at once.
pub const MAX_THREADS: u32 = 65_536;

/// Capacity of the (service, syscall) → histogram map.
pub const MAX_SYSCALL_KEYS: u32 = 8_192;

/// Syscall numbers below this are classified; x86-64 uses fewer than 470.
pub const SYSCALL_SLOTS: u32 = 512;

/// Number of log2 buckets in a latency histogram. Bucket `i` counts
/// durations `d` (in ns) with `2^i <= d < 2^(i+1)` (bucket 0 also holds 0);
/// the last bucket holds everything from `2^(HIST_BUCKETS-1)` ns (~275 s) up.
pub const HIST_BUCKETS: usize = 39;

/// `thread_state.syscall_nr` value meaning "not inside a syscall".
pub const NO_SYSCALL: u32 = u32::MAX;

/// A latency histogram aggregated in the kernel (one copy per CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Log2Hist {
    pub count: u64,
    pub sum_ns: u64,
    pub buckets: [u64; HIST_BUCKETS],
}

impl Log2Hist {
    pub const ZERO: Self = Self {
        count: 0,
        sum_ns: 0,
        buckets: [0; HIST_BUCKETS],
    };

    /// Bucket index for a duration: floor(log2(ns)), clamped to the last
    /// bucket. Written as a fixed sequence of shifts so the BPF verifier sees
    /// straight-line code with no loop.
    #[inline(always)]
    pub fn bucket(ns: u64) -> usize {
        let mut v = ns;
        let mut r: u64 = 0;
        let mut s: u64;
        s = u64::from(v > 0xFFFF_FFFF) << 5;
        v >>= s;
        r |= s;
        s = u64::from(v > 0xFFFF) << 4;
        v >>= s;
        r |= s;
        s = u64::from(v > 0xFF) << 3;
        v >>= s;
        r |= s;
        s = u64::from(v > 0xF) << 2;
        v >>= s;
        r |= s;
        s = u64::from(v > 0x3) << 1;
        v >>= s;
        r |= s;
        r |= v >> 1;
        let r = r as usize;
        if r >= HIST_BUCKETS {
            HIST_BUCKETS - 1
        } else {
            r
        }
    }

    /// Adds one observation.
    #[inline(always)]
    pub fn record(&mut self, ns: u64) {
        self.count += 1;
        self.sum_ns += ns;
        let b = Self::bucket(ns);
        if let Some(slot) = self.buckets.get_mut(b) {
            *slot += 1;
        }
    }

    /// Adds another CPU's copy into this one (user space, at scrape time).
    pub fn merge(&mut self, other: &Self) {
        self.count += other.count;
        self.sum_ns += other.sum_ns;
        for (a, b) in self.buckets.iter_mut().zip(other.buckets.iter()) {
            *a += *b;
        }
    }
}

/// Key of the syscall statistics map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SyscallKey {
    pub service: u32,
    pub nr: u32,
}

/// Why a thread is off CPU. Indexes `OffCpuStats::off_ns`.
///
/// The first six are "blocked inside a syscall of this family" (the family
/// table is filled by user space from the x86-64 syscall table); `Other`
/// is blocked outside any syscall (page fault, exit); `Runqueue` is runnable
/// and waiting for a CPU (preempted, or woken and not yet running);
/// `GilWait` is blocked on a futex inside CPython's GIL (taken out of
/// `SyscallFutex`).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OffCpuReason {
    SyscallFutex = 0,
    SyscallPoll = 1,
    SyscallNet = 2,
    SyscallFile = 3,
    SyscallSleep = 4,
    SyscallOther = 5,
    BlockedOther = 6,
    Runqueue = 7,
    GilWait = 8,
}

/// Number of `OffCpuReason` values.
pub const OFFCPU_REASONS: usize = 9;

impl OffCpuReason {
    pub const ALL: [OffCpuReason; OFFCPU_REASONS] = [
        Self::SyscallFutex,
        Self::SyscallPoll,
        Self::SyscallNet,
        Self::SyscallFile,
        Self::SyscallSleep,
        Self::SyscallOther,
        Self::BlockedOther,
        Self::Runqueue,
        Self::GilWait,
    ];

    /// The `reason` label value exported for this reason.
    pub const fn label(self) -> &'static str {
        match self {
            Self::SyscallFutex => "syscall_futex",
            Self::SyscallPoll => "syscall_poll",
            Self::SyscallNet => "syscall_net",
            Self::SyscallFile => "syscall_file",
            Self::SyscallSleep => "syscall_sleep",
            Self::SyscallOther => "syscall_other",
            Self::BlockedOther => "blocked_other",
            Self::Runqueue => "runqueue",
            Self::GilWait => "gil_wait",
        }
    }
}

/// Per-service CPU time accounting (one copy per CPU, indexed by service id).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct OffCpuStats {
    pub on_cpu_ns: u64,
    pub off_ns: [u64; OFFCPU_REASONS],
    /// Run-queue waits: from being made runnable (preempted or woken) to
    /// running again.
    pub runq: Log2Hist,
}

impl OffCpuStats {
    pub const ZERO: Self = Self {
        on_cpu_ns: 0,
        off_ns: [0; OFFCPU_REASONS],
        runq: Log2Hist::ZERO,
    };

    /// Adds another CPU's copy into this one (user space, at scrape time).
    pub fn merge(&mut self, other: &Self) {
        self.on_cpu_ns += other.on_cpu_ns;
        for (a, b) in self.off_ns.iter_mut().zip(other.off_ns.iter()) {
            *a += *b;
        }
        self.runq.merge(&other.runq);
    }
}

/// A value kept one copy per CPU that user space sums at scrape time.
pub trait PerCpuSum: Copy {
    const ZERO: Self;
    fn merge(&mut self, other: &Self);
}

impl PerCpuSum for Log2Hist {
    const ZERO: Self = Log2Hist::ZERO;
    fn merge(&mut self, other: &Self) {
        Log2Hist::merge(self, other);
    }
}

impl PerCpuSum for OffCpuStats {
    const ZERO: Self = OffCpuStats::ZERO;
    fn merge(&mut self, other: &Self) {
        OffCpuStats::merge(self, other);
    }
}

/// What the kernel remembers about one thread of a traced process.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ThreadState {
    /// The thread's process: a switch-in (where the thread is not
    /// `current`) finds its service through it.
    pub tgid: u32,
    /// Syscall in progress, or `NO_SYSCALL`.
    pub syscall_nr: u32,
    /// `OffCpuReason` recorded when the thread last left the CPU.
    pub off_reason: u32,
    /// 1 while the syscall in progress is a futex wait on the GIL.
    pub in_gil_wait: u32,
    /// When the syscall in progress started (0: none).
    pub syscall_start_ns: u64,
    /// When the thread last got a CPU (0: unknown).
    pub on_cpu_since_ns: u64,
    /// When the thread last left the CPU (0: it is running).
    pub off_cpu_since_ns: u64,
    /// When a blocked thread was woken (0: not yet).
    pub woken_ns: u64,
    /// GIL waiting since the thread last held the GIL: the futex waits of
    /// one acquisition (a contended acquisition is a series of timed waits).
    pub gil_wait_ns: u64,
    /// When the first of those waits started and the last one ended: the
    /// acquisition's interval on the timeline.
    pub gil_wait_first_ns: u64,
    pub gil_wait_last_ns: u64,
    /// When the thread's last launch call returned (0: none yet): a launch
    /// after a quiet stretch goes to the timeline.
    pub last_launch_ns: u64,
    /// 1 once the thread launched since its last host sync: the sync that
    /// follows waits for that work, so it marks where the GPU ran dry.
    pub launched_since_sync: u32,
    pub _pad: u32,
}

/// Where a Python process's GIL lives: the address range of its
/// `struct _gil_runtime_state`. A futex wait on any word inside it (the
/// condition variables and mutexes `take_gil`/`drop_gil` block on) is a
/// GIL wait. Found by user space from `_PyRuntime` and per-version offsets.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GilRange {
    pub start: u64,
    pub end: u64,
    /// The GIL's two mutexes (`mutex`, `switch_mutex`), each
    /// `GIL_MUTEX_SIZE` bytes: a futex wake on them happens in the middle
    /// of an acquisition (a condition wait unlocking its mutex), unlike a
    /// wake on the condition variables, which ends one.
    pub mutex: u64,
    pub switch_mutex: u64,
}

/// `sizeof(pthread_mutex_t)` on x86-64 glibc.
pub const GIL_MUTEX_SIZE: u64 = 40;

/// Each CPU's memory of the last thread whose syscall it classified.
///
/// A syscall-heavy thread makes its syscalls in bursts on one CPU, so
/// nearly every syscall hits this one-entry cache. The thread is recognised
/// by its `pt_regs` pointer, which the raw syscall tracepoints pass as an
/// argument (it sits at the top of the thread's kernel stack), so a hit
/// costs no helper call and no hash lookup — for an untraced process that
/// is the whole cost of Gapscope.
///
/// The entry is valid while both generations are unchanged. The kernel
/// bumps its own (`KERNEL_GENERATION`, in `.bss`) whenever a traced process
/// gains or loses a thread or a process (a dead thread's kernel stack, and
/// so its `pt_regs` address, can be reused by a new thread); user space
/// bumps `USER_GENERATION` (alone in `.data`) after every change it makes
/// to `TARGETS`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TargetCache {
    /// The low 48 bits of the `pt_regs` address (kernel addresses differ
    /// only there) and the service id (or `CACHE_UNTRACED`) in the top 16,
    /// one word so an interrupted writer cannot pair one thread with
    /// another's service.
    pub regs_service: u64,
    pub gen_kernel: u64,
    pub gen_user: u64,
}

/// `TargetCache` service value for an untraced thread.
pub const CACHE_UNTRACED: u64 = 0xffff;

/// The bits of a kernel address kept in `TargetCache::regs_service`.
pub const CACHE_ADDRESS_MASK: u64 = (1 << 48) - 1;

/// The map aya creates for the programs' `.data` section, which holds
/// `USER_GENERATION` and nothing else.
pub const USER_GENERATION_MAP: &str = ".data";

/// Indexes of the per-CPU `COUNTERS` array: events seen and dropped per source.
pub mod counter {
    /// Context switches of traced threads handled.
    pub const SCHED_SWITCHES: u32 = 0;
    /// Process events (fork, exec, exit) sent to user space.
    pub const PROC_EVENTS: u32 = 1;
    /// Process events lost because the ring buffer was full.
    pub const PROC_EVENTS_DROPPED: u32 = 2;
    /// Syscalls not recorded because the syscall map was full.
    pub const SYSCALLS_DROPPED: u32 = 3;
    /// Thread states not created because the thread map was full.
    pub const THREADS_DROPPED: u32 = 4;
    /// Processes not followed because the target map was full.
    pub const TARGETS_DROPPED: u32 = 5;
    /// Lookups the per-CPU target cache could not answer (hash lookups made).
    pub const TARGET_CACHE_MISSES: u32 = 6;
    /// Long intervals (GIL waits, serialization calls) sent to user space.
    pub const INTERVALS: u32 = 7;
    /// Long intervals lost because the timeline ring buffer was full.
    pub const INTERVALS_DROPPED: u32 = 8;
    /// CUDA API calls not recorded because the CUDA call map was full.
    pub const CUDA_CALLS_DROPPED: u32 = 9;
    pub const COUNT: u32 = 10;
}

/// Kinds of `ProcEvent`.
pub mod proc_event {
    /// A traced process forked a new process (already added in the kernel).
    pub const FORK: u32 = 1;
    /// Any process called exec; user space matches it against the config.
    pub const EXEC: u32 = 2;
    /// A traced process exited (already removed in the kernel).
    pub const EXIT: u32 = 3;
}

/// A process lifecycle event sent through the ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ProcEvent {
    pub kind: u32,
    pub tgid: u32,
    /// For FORK: the parent tgid.
    pub parent_tgid: u32,
    /// Service id when the process is traced, `u32::MAX` otherwise.
    pub service: u32,
}

/// Byte offsets of the fields the programs read in classic tracepoint
/// records. The daemon compares each with the running kernel's
/// `/sys/kernel/tracing/events/<category>/<name>/format` before attaching.
pub mod tp_offsets {
    /// (category, event, field, offset, size)
    pub type Field = (&'static str, &'static str, &'static str, usize, usize);

    pub const SWITCH_PREV_STATE: usize = 32;
    pub const SWITCH_NEXT_PID: usize = 56;
    pub const WAKEUP_PID: usize = 24;
    pub const NEWTASK_PID: usize = 8;
    pub const NEWTASK_CLONE_FLAGS: usize = 32;

    pub const ALL: [Field; 6] = [
        ("sched", "sched_switch", "prev_state", SWITCH_PREV_STATE, 8),
        ("sched", "sched_switch", "next_pid", SWITCH_NEXT_PID, 4),
        ("sched", "sched_wakeup", "pid", WAKEUP_PID, 4),
        ("sched", "sched_wakeup_new", "pid", WAKEUP_PID, 4),
        ("task", "task_newtask", "pid", NEWTASK_PID, 4),
        (
            "task",
            "task_newtask",
            "clone_flags",
            NEWTASK_CLONE_FLAGS,
            8,
        ),
    ];
}

/// Serialization probes (uprobe/uretprobe pairs) a daemon can attach; the
/// probe's index is its BPF attach cookie and indexes per-service slots.
pub const MAX_SER_PROBES: u32 = 16;

/// Byte offsets of the first two syscall arguments in x86-64 `struct
/// pt_regs` (`si` then `di`; they are adjacent).
pub const PT_REGS_SI: u64 = 13 * 8;

/// x86-64 `futex` syscall number.
pub const SYS_FUTEX: u32 = 202;

/// x86-64 `uretprobe` syscall number: the kernel's own trampoline for
/// return probes (Linux 6.11+), i.e. Gapscope's serialization probes. Not
/// the traced program's doing, so not counted.
pub const SYS_URETPROBE: u32 = 335;

/// Kinds of `Interval` (`Interval::kind` holds the number), each with the
/// `kind` label value the timeline's metrics and `/api/v1/intervals` use.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IntervalKind {
    /// A contended GIL acquisition; `detail` is 0.
    GilWait = 1,
    /// A serialization call; `detail` is the probe index.
    Serialization = 2,
    /// A CUDA call in which the CPU waited for the GPU (stream, context or
    /// event synchronization, a synchronous copy); `detail` is the CUDA
    /// probe slot.
    HostSync = 3,
    /// A stretch in which a GPU was busy (kernels, copies, memsets from
    /// CUPTI deep mode, gaps shorter than the threshold bridged);
    /// `detail` is the CUDA device. Not sent by the kernel programs.
    GpuBusy = 4,
    /// A thread off CPU: blocked (`detail` is the `OffCpuReason`: a
    /// syscall family, or blocked outside a syscall) or waiting in the run
    /// queue (`OffCpuReason::Runqueue`). GIL waits are `GilWait` instead.
    OffCpu = 5,
    /// A launch call (`detail` is the CUDA probe slot) made after the
    /// thread had launched nothing for the threshold, or one that lasted
    /// that long: where work reached the GPU after a quiet stretch.
    Launch = 6,
}

impl IntervalKind {
    pub const ALL: [IntervalKind; 6] = [
        Self::GilWait,
        Self::Serialization,
        Self::HostSync,
        Self::GpuBusy,
        Self::OffCpu,
        Self::Launch,
    ];

    /// The `kind` label value.
    pub const fn label(self) -> &'static str {
        match self {
            Self::GilWait => "gil_wait",
            Self::Serialization => "serialization",
            Self::HostSync => "host_sync",
            Self::GpuBusy => "gpu_busy",
            Self::OffCpu => "off_cpu",
            Self::Launch => "launch",
        }
    }

    /// The kind an `Interval::kind` number stands for.
    pub fn from_raw(raw: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|k| *k as u32 == raw)
    }

    /// The kind a `kind` label value names.
    pub fn from_label(label: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.label() == label)
    }
}

/// CUDA API probe slots a daemon can attach (each one entry point and its
/// variants, such as `_ptsz`); the attach cookie's low byte.
pub const MAX_CUDA_PROBES: u32 = 32;

/// Bits of a CUDA probe's attach cookie above the slot.
pub mod cuda_cookie {
    /// The low byte is the slot.
    pub const SLOT_MASK: u64 = 0xff;
    /// A kernel or graph launch: counted per process for the overhead
    /// budget.
    pub const LAUNCH: u64 = 1 << 8;
    /// A call in which the CPU waits for the GPU: long ones go to the
    /// timeline.
    pub const HOST_SYNC: u64 = 1 << 9;
}

/// Key of the CUDA call statistics map: (service, slot).
#[inline(always)]
pub const fn cuda_key(service: u32, slot: u32) -> u32 {
    service << 8 | slot
}

/// Name of the programs' read-only global holding the shortest interval
/// (ns) sent to user space; set by the loader from `[timeline]`.
pub const LONG_INTERVAL_GLOBAL: &str = "LONG_INTERVAL_NS";

/// A long stall of one thread, sent through the timeline ring buffer for
/// the attribution work; shorter ones are only aggregated in the kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Interval {
    pub kind: u32,
    pub detail: u32,
    pub service: u32,
    pub tgid: u32,
    pub tid: u32,
    pub _pad: u32,
    /// CLOCK_MONOTONIC (bpf_ktime_get_ns) nanoseconds.
    pub start_ns: u64,
    pub end_ns: u64,
}

impl Interval {
    /// What kind of interval this is (None: a number no kind has).
    pub fn kind(&self) -> Option<IntervalKind> {
        IntervalKind::from_raw(self.kind)
    }

    /// The `kind` label value (`unknown` for a number no kind has).
    pub fn kind_label(&self) -> &'static str {
        self.kind().map_or("unknown", IntervalKind::label)
    }
}

/// `ProcEvent::service` for a process no service has claimed.
pub const NO_SERVICE: u32 = u32::MAX;

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are repr(C), Copy, contain only integers and have
    // no padding the kernel could leave uninitialised.
    unsafe impl aya::Pod for Log2Hist {}
    unsafe impl aya::Pod for SyscallKey {}
    unsafe impl aya::Pod for OffCpuStats {}
    unsafe impl aya::Pod for ThreadState {}
    unsafe impl aya::Pod for ProcEvent {}
    unsafe impl aya::Pod for TargetCache {}
    unsafe impl aya::Pod for GilRange {}
    unsafe impl aya::Pod for Interval {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_is_floor_log2() {
        assert_eq!(Log2Hist::bucket(0), 0);
        assert_eq!(Log2Hist::bucket(1), 0);
        assert_eq!(Log2Hist::bucket(2), 1);
        assert_eq!(Log2Hist::bucket(3), 1);
        assert_eq!(Log2Hist::bucket(1023), 9);
        assert_eq!(Log2Hist::bucket(1024), 10);
        for shift in 0..HIST_BUCKETS as u32 {
            let v = 1u64 << shift;
            assert_eq!(Log2Hist::bucket(v), shift as usize);
            if v > 1 {
                assert_eq!(Log2Hist::bucket(v - 1), shift as usize - 1);
            }
        }
        assert_eq!(Log2Hist::bucket(u64::MAX), HIST_BUCKETS - 1);
    }
}
