//! gapscoped's one clock: CLOCK_MONOTONIC nanoseconds, the clock
//! `bpf_ktime_get_ns` reads, so kernel events, NVML readings and the load
//! generator's annotations line up without conversion.

pub use gapscope_clock::monotonic_ns;
