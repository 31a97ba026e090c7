//! The one clock of Gapscope: CLOCK_MONOTONIC nanoseconds. The kernel's
//! `bpf_ktime_get_ns` reads it, so do gapscoped (NVML readings, deep-mode
//! alignment), the injection library (CUPTI's timestamp callback),
//! gapscope-loadgen (requests, annotations) and the test servers: their
//! times line up without conversion.

/// CLOCK_MONOTONIC now, in nanoseconds. Inlined across crates: the
/// injection library's CUPTI timestamp callback calls it per record.
#[inline]
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid pointer to a timespec; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    #[test]
    fn never_goes_back_and_agrees_with_std() {
        // Instant is CLOCK_MONOTONIC too: the span read here lies within
        // the span Instant saw around it, and covers the sleep.
        let outer = std::time::Instant::now();
        let a = super::monotonic_ns();
        std::thread::sleep(std::time::Duration::from_millis(5));
        let b = super::monotonic_ns();
        let around = outer.elapsed().as_nanos() as u64;
        assert!(b - a >= 5_000_000, "{} ns for a 5 ms sleep", b - a);
        assert!(b - a <= around, "{} ns inside {around} ns", b - a);
    }
}
