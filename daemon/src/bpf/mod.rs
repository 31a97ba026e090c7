//! Loading, attaching and owning the BPF programs and their maps.
//!
//! The object is built by `build.rs` and embedded in the binary. `Probes`
//! owns the programs (dropping it detaches and unloads them); `KernelMaps`
//! holds the maps the rest of the daemon reads.

pub mod attach;
pub mod caps;
pub mod tracefs;
pub mod uprobes;

pub use attach::{Attached, KernelMaps, Probes, attach_all};

/// The BPF object built from `ebpf/programs`.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gapscope"));

/// What each program attaches to, in attach order: process following first,
/// so nothing forked between the /proc scan and the attach is missed.
pub const PROGRAMS: &[(&str, Hook)] = &[
    ("gs_task_newtask", Hook::Tracepoint("task", "task_newtask")),
    (
        "gs_process_exec",
        Hook::Tracepoint("sched", "sched_process_exec"),
    ),
    (
        "gs_process_exit",
        Hook::Tracepoint("sched", "sched_process_exit"),
    ),
    ("gs_sys_enter", Hook::RawTracepoint("sys_enter")),
    ("gs_sys_exit", Hook::RawTracepoint("sys_exit")),
    ("gs_sched_switch", Hook::Tracepoint("sched", "sched_switch")),
    ("gs_sched_wakeup", Hook::Tracepoint("sched", "sched_wakeup")),
    (
        "gs_sched_wakeup_new",
        Hook::Tracepoint("sched", "sched_wakeup_new"),
    ),
];

/// Where a program attaches.
#[derive(Debug, Clone, Copy)]
pub enum Hook {
    /// A classic tracepoint: (category, event).
    Tracepoint(&'static str, &'static str),
    /// A raw tracepoint by name.
    RawTracepoint(&'static str),
}

/// Raises RLIMIT_MEMLOCK for kernels that still charge BPF memory to it
/// (before 5.11). Failing is fine: newer kernels charge the memory cgroup.
pub fn raise_memlock() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid pointer.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        log::debug!(
            "could not raise RLIMIT_MEMLOCK ({}); fine on kernels >= 5.11",
            std::io::Error::last_os_error()
        );
    }
}
