//! gapscoped's one clock: CLOCK_MONOTONIC nanoseconds, the clock
//! `bpf_ktime_get_ns` reads, so kernel events, NVML readings and the load
//! generator's annotations line up without conversion.

/// CLOCK_MONOTONIC now, in nanoseconds.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
