//! The scheduler programs' shared items: why a thread is off CPU, the
//! per-service CPU time accounting and the per-thread state.

use crate::{Log2Hist, PerCpuSum};

/// Capacity of the per-thread state map: threads of traced processes at once.
pub const MAX_THREADS: u32 = 65_536;

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
    /// The thread that held the GIL when this acquisition's first wait
    /// began (0: not known): the competitor the thread waited for.
    pub gil_holder_tid: u32,
}
