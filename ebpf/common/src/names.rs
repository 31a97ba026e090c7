//! Names the BPF object and the daemon share, spelled once: every map the
//! daemon takes out of the object and every program it loads. The kernel
//! side declares statics and functions of exactly these names (aya names a
//! map after its static and a program after its function); the daemon's
//! `bpf` tests check the built object carries each one.

/// Maps, by the name of their static in `ebpf/programs/src/maps.rs`.
pub mod map {
    pub const TARGETS: &str = "TARGETS";
    pub const THREADS: &str = "THREADS";
    pub const SYSCALLS: &str = "SYSCALLS";
    pub const OFFCPU: &str = "OFFCPU";
    pub const GIL_RANGES: &str = "GIL_RANGES";
    pub const GIL_WAIT: &str = "GIL_WAIT";
    pub const SER_PROCESS_CALLS: &str = "SER_PROCESS_CALLS";
    pub const TIMELINE: &str = "TIMELINE";
    pub const SER_CALLS: &str = "SER_CALLS";
    pub const CUDA_CALLS: &str = "CUDA_CALLS";
    pub const CUDA_PROCESS_CALLS: &str = "CUDA_PROCESS_CALLS";
    pub const SYSCALL_FAMILY: &str = "SYSCALL_FAMILY";
    pub const COUNTERS: &str = "COUNTERS";
    pub const PROC_EVENTS: &str = "PROC_EVENTS";

    /// Every map the daemon takes.
    pub const ALL: [&str; 14] = [
        TARGETS,
        THREADS,
        SYSCALLS,
        OFFCPU,
        GIL_RANGES,
        GIL_WAIT,
        SER_PROCESS_CALLS,
        TIMELINE,
        SER_CALLS,
        CUDA_CALLS,
        CUDA_PROCESS_CALLS,
        SYSCALL_FAMILY,
        COUNTERS,
        PROC_EVENTS,
    ];
}

/// Programs, by their function's name in `ebpf/programs/src`.
pub mod program {
    pub const TASK_NEWTASK: &str = "gs_task_newtask";
    pub const PROCESS_EXEC: &str = "gs_process_exec";
    pub const PROCESS_EXIT: &str = "gs_process_exit";
    pub const SYS_ENTER: &str = "gs_sys_enter";
    pub const SYS_EXIT: &str = "gs_sys_exit";
    pub const SCHED_SWITCH: &str = "gs_sched_switch";
    pub const SCHED_WAKEUP: &str = "gs_sched_wakeup";
    pub const SCHED_WAKEUP_NEW: &str = "gs_sched_wakeup_new";
    /// Serialization calls: entry and return uprobes.
    pub const SER_ENTER: &str = "gs_ser_enter";
    pub const SER_EXIT: &str = "gs_ser_exit";
    /// CUDA API calls: entry and return uprobes.
    pub const CUDA_ENTER: &str = "gs_cuda_enter";
    pub const CUDA_EXIT: &str = "gs_cuda_exit";

    /// The uprobe programs, loaded at start and attached per library.
    pub const UPROBES: [&str; 4] = [SER_ENTER, SER_EXIT, CUDA_ENTER, CUDA_EXIT];
}
