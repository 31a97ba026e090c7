//! Gapscope's kernel side.
//!
//! Every program starts the same way: find the current process in `TARGETS`
//! (tgid → service id) and return at once when it is not there, so a process
//! nobody asked to trace pays one hash lookup per event and nothing more.
//!
//! * `syscalls` — raw `sys_enter`/`sys_exit`: count and log2 latency
//!   histogram per (service, syscall), aggregated per CPU.
//! * `sched` — `sched_switch`/`sched_wakeup*`: on-CPU time, off-CPU time by
//!   reason and run-queue latency per service.
//! * `gil` — CPython GIL waits, recognised among the futex waits.
//! * `proc` — `task_newtask`/`sched_process_exec`/`sched_process_exit`:
//!   follows forks in the kernel and tells user space about execs and exits.
//! * `serialization` — uprobe/uretprobe pairs on json, pickle and
//!   user-defined serialization functions.
//! * `cuda` — uprobe/uretprobe pairs on CUDA's launch and host-sync entry
//!   points in libcuda and libcudart.
//! * `timeline` — GIL waits, serialization calls and host syncs longer than a
//!   threshold, sent to user space as intervals.
//!
//! The overhead benchmark's empty programs are a separate object
//! (`src/bin/floor.rs`), not part of this one.
#![cfg_attr(target_arch = "bpf", no_std)]
// The programs and maps are the object's exports, `pub` or not.
#![allow(unreachable_pub)]
#![cfg_attr(target_arch = "bpf", no_main)]
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]

#[cfg(target_arch = "bpf")]
mod cuda;
#[cfg(target_arch = "bpf")]
mod gil;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod proc;
#[cfg(target_arch = "bpf")]
mod sched;
#[cfg(target_arch = "bpf")]
mod serialization;
#[cfg(target_arch = "bpf")]
mod syscalls;
#[cfg(target_arch = "bpf")]
mod timeline;

/// Built for the host (clippy, `cargo build --workspace`) there is nothing
/// to run: the programs only exist for the BPF target.
#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
mod runtime;
