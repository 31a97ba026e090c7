//! Loading, attaching and owning the BPF programs and their maps.
//!
//! The object is built by `build.rs` and embedded in the binary. `Probes`
//! owns the programs (dropping it detaches and unloads them); `KernelMaps`
//! holds the maps the rest of the daemon reads.

pub mod attach;
pub mod caps;
mod reaper;
pub mod stats;
pub mod tracefs;
pub mod uprobes;

pub use attach::{Attached, KernelMaps, Probes, attach_all};
use gapscope_ebpf_common::names::program;

/// The BPF object built from `ebpf/programs`.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gapscope"));

/// The overhead benchmark's empty programs (`gs_floor_enter`,
/// `gs_floor_exit`), an object of their own; the daemon never loads it.
#[doc(hidden)]
pub static FLOOR_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gapscope-floor"));

/// What each program attaches to, in attach order: process following first,
/// so nothing forked between the /proc scan and the attach is missed.
pub const PROGRAMS: &[(&str, Hook)] = &[
    (
        program::TASK_NEWTASK,
        Hook::Tracepoint("task", "task_newtask"),
    ),
    (
        program::PROCESS_EXEC,
        Hook::Tracepoint("sched", "sched_process_exec"),
    ),
    (
        program::PROCESS_EXIT,
        Hook::Tracepoint("sched", "sched_process_exit"),
    ),
    (program::SYS_ENTER, Hook::RawTracepoint("sys_enter")),
    (program::SYS_EXIT, Hook::RawTracepoint("sys_exit")),
    (
        program::SCHED_SWITCH,
        Hook::Tracepoint("sched", "sched_switch"),
    ),
    (
        program::SCHED_WAKEUP,
        Hook::Tracepoint("sched", "sched_wakeup"),
    ),
    (
        program::SCHED_WAKEUP_NEW,
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

#[cfg(test)]
mod tests {
    use gapscope_ebpf_common::names::{map, program};
    use object::{Object as _, ObjectSymbol as _};

    /// Every map the daemon takes and every program it loads is in the
    /// built object under the name `ebpf/common` spells.
    #[test]
    fn the_object_carries_every_shared_name() {
        let file = object::File::parse(super::OBJECT).expect("the BPF object is ELF");
        let symbols: std::collections::HashSet<&str> =
            file.symbols().filter_map(|s| s.name().ok()).collect();
        let programs = super::PROGRAMS.iter().map(|(name, _)| *name);
        for name in map::ALL.into_iter().chain(programs).chain(program::UPROBES) {
            assert!(symbols.contains(name), "{name} missing from the BPF object");
        }
        assert!(
            !symbols.contains("gs_floor_enter"),
            "the benchmark's programs ship"
        );
    }

    #[test]
    fn the_benchmark_floor_is_an_object_of_its_own() {
        let file = object::File::parse(super::FLOOR_OBJECT).expect("the floor object is ELF");
        let names: Vec<&str> = file.symbols().filter_map(|s| s.name().ok()).collect();
        assert!(names.contains(&"gs_floor_enter") && names.contains(&"gs_floor_exit"));
    }
}
