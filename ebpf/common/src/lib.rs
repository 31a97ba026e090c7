//! The contract between Gapscope's BPF programs (`ebpf/programs`) and the
//! daemon (`daemon/`): map key and value layouts, ring-buffer event records
//! and the constants both sides must agree on.
//!
//! Everything here is `#[repr(C)]`, fixed-size and free of pointers, because
//! the same bytes are written by the kernel side and read through `bpf()` by
//! user space.
#![cfg_attr(not(test), no_std)]

mod cuda;
mod gil;
mod hist;
pub mod names;
mod sched;
mod serialization;
mod syscalls;
mod targets;
mod timeline;

pub use cuda::*;
pub use gil::*;
pub use hist::*;
pub use sched::*;
pub use serialization::*;
pub use syscalls::*;
pub use targets::*;
pub use timeline::*;

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
    /// Context switches of traced threads no program saw, found at the
    /// thread's next switch (a switch-in with no switch-out before it, or
    /// the reverse): the kernel ran no program for them. Each may hide
    /// one stretch off CPU.
    pub const SWITCHES_UNSEEN: u32 = 10;
    pub const COUNT: u32 = 11;
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
