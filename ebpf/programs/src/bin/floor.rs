//! Programs that do nothing, attached to the same raw tracepoints as the
//! syscall programs by the overhead benchmark (`bench/`): what any program
//! on these hooks costs before it runs a single instruction of its own.
//! A BPF object of their own (`gapscope-floor`), so the daemon's object
//! carries only what it loads.
#![cfg_attr(target_arch = "bpf", no_std)]
// The programs and maps are the object's exports, `pub` or not.
#![allow(unreachable_pub)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod programs {
    use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};

    #[raw_tracepoint(tracepoint = "sys_enter")]
    pub fn gs_floor_enter(_ctx: RawTracePointContext) -> i32 {
        0
    }

    #[raw_tracepoint(tracepoint = "sys_exit")]
    pub fn gs_floor_exit(_ctx: RawTracePointContext) -> i32 {
        0
    }
}

/// Built for the host there is nothing to run.
#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
#[path = "../runtime.rs"]
mod runtime;
