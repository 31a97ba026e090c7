//! Programs that do nothing, attached to the same raw tracepoints as the
//! syscall programs by the overhead benchmark (`bench/`): what any program
//! on these hooks costs before it runs a single instruction of its own.
//! The daemon never loads them.

use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn gs_floor_enter(_ctx: RawTracePointContext) -> i32 {
    0
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn gs_floor_exit(_ctx: RawTracePointContext) -> i32 {
    0
}
