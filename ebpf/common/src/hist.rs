//! Latency histograms aggregated in the kernel, one copy per CPU, and how
//! user space sums the copies.

/// Number of log2 buckets in a latency histogram. Bucket `i` counts
/// durations `d` (in ns) with `2^i <= d < 2^(i+1)` (bucket 0 also holds 0);
/// the last bucket holds everything from `2^(HIST_BUCKETS-1)` ns (~275 s) up.
pub const HIST_BUCKETS: usize = 39;

/// A latency histogram aggregated in the kernel (one copy per CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Log2Hist {
    pub count: u64,
    pub sum_ns: u64,
    pub buckets: [u64; HIST_BUCKETS],
}

impl Log2Hist {
    pub const ZERO: Self = Self {
        count: 0,
        sum_ns: 0,
        buckets: [0; HIST_BUCKETS],
    };

    /// Bucket index for a duration: floor(log2(ns)), clamped to the last
    /// bucket. Written as a fixed sequence of shifts so the BPF verifier sees
    /// straight-line code with no loop.
    #[inline(always)]
    pub fn bucket(ns: u64) -> usize {
        let mut v = ns;
        let mut r: u64 = 0;
        let mut s: u64;
        s = u64::from(v > 0xFFFF_FFFF) << 5;
        v >>= s;
        r |= s;
        s = u64::from(v > 0xFFFF) << 4;
        v >>= s;
        r |= s;
        s = u64::from(v > 0xFF) << 3;
        v >>= s;
        r |= s;
        s = u64::from(v > 0xF) << 2;
        v >>= s;
        r |= s;
        s = u64::from(v > 0x3) << 1;
        v >>= s;
        r |= s;
        r |= v >> 1;
        let r = r as usize;
        if r >= HIST_BUCKETS {
            HIST_BUCKETS - 1
        } else {
            r
        }
    }

    /// Adds one observation.
    #[inline(always)]
    pub fn record(&mut self, ns: u64) {
        self.count += 1;
        self.sum_ns += ns;
        let b = Self::bucket(ns);
        if let Some(slot) = self.buckets.get_mut(b) {
            *slot += 1;
        }
    }

    /// Adds another CPU's copy into this one (user space, at scrape time).
    pub fn merge(&mut self, other: &Self) {
        self.count += other.count;
        self.sum_ns += other.sum_ns;
        for (a, b) in self.buckets.iter_mut().zip(other.buckets.iter()) {
            *a += *b;
        }
    }
}

/// A value kept one copy per CPU that user space sums at scrape time.
pub trait PerCpuSum: Copy {
    const ZERO: Self;
    fn merge(&mut self, other: &Self);
}

impl PerCpuSum for Log2Hist {
    const ZERO: Self = Log2Hist::ZERO;
    fn merge(&mut self, other: &Self) {
        Log2Hist::merge(self, other);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_is_floor_log2() {
        assert_eq!(Log2Hist::bucket(0), 0);
        assert_eq!(Log2Hist::bucket(1), 0);
        assert_eq!(Log2Hist::bucket(2), 1);
        assert_eq!(Log2Hist::bucket(3), 1);
        assert_eq!(Log2Hist::bucket(1023), 9);
        assert_eq!(Log2Hist::bucket(1024), 10);
        for shift in 0..HIST_BUCKETS as u32 {
            let v = 1u64 << shift;
            assert_eq!(Log2Hist::bucket(v), shift as usize);
            if v > 1 {
                assert_eq!(Log2Hist::bucket(v - 1), shift as usize - 1);
            }
        }
        assert_eq!(Log2Hist::bucket(u64::MAX), HIST_BUCKETS - 1);
    }
}
