//! GPU busy time and idle gaps on one device, from activity intervals
//! (kernels, copies, memsets) that arrive in batches and out of order.
//!
//! Busy time is the length of the *union* of the intervals, so kernels
//! overlapping on concurrent streams are not counted twice. An idle gap is
//! the time between two busy stretches. Neither can be known for a stretch
//! that later intervals might still extend, so intervals wait until the
//! caller's watermark (the newest time no interval can still arrive
//! before, in practice the newest end seen minus the sender's flush
//! period) has passed their end; then they are merged and final.
//! Intervals arriving behind what is already final are clipped to it and
//! counted as late, so a late sender shows instead of skewing the sums.

/// A merged busy stretch, final.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stretch {
    pub start_ns: u64,
    pub end_ns: u64,
    /// The idle gap between the previous stretch and this one: None for
    /// the first, and for one that starts where the previous one ended
    /// (its intervals came after that one was made final; no time was
    /// idle between them).
    pub gap_before_ns: Option<u64>,
}

/// Most intervals waiting for the watermark; beyond it the oldest are
/// made final early (a sender that never advances cannot grow memory).
const MAX_PENDING: usize = 65_536;

#[derive(Debug, Default)]
pub struct BusyTracker {
    pending: Vec<(u64, u64)>,
    /// End of the last final stretch: everything before is settled.
    settled_ns: u64,
    /// Whether any stretch is final yet (the first has no gap before it).
    started: bool,
    pub busy_ns: u64,
    pub late_intervals: u64,
}

impl BusyTracker {
    /// Adds an interval `[start, end)`.
    pub fn add(&mut self, start_ns: u64, end_ns: u64) {
        let start = if self.started {
            start_ns.max(self.settled_ns)
        } else {
            start_ns
        };
        if start != start_ns {
            self.late_intervals += 1;
        }
        if end_ns <= start {
            return;
        }
        self.pending.push((start, end_ns));
    }

    /// Makes final every stretch that ends at or before `watermark_ns`
    /// (and, when too many intervals wait, the oldest regardless), in time
    /// order.
    pub fn advance(&mut self, watermark_ns: u64) -> Vec<Stretch> {
        if self.pending.is_empty() {
            return Vec::new();
        }
        self.pending.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::new();
        for &(s, e) in &self.pending {
            match merged.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        let overflow = merged.len().saturating_sub(MAX_PENDING);
        let mut out = Vec::new();
        let mut keep_from = merged.len();
        for (i, &(s, e)) in merged.iter().enumerate() {
            if e > watermark_ns && i >= overflow {
                keep_from = i;
                break;
            }
            out.push(Stretch {
                start_ns: s,
                end_ns: e,
                gap_before_ns: (self.started && s > self.settled_ns).then(|| s - self.settled_ns),
            });
            self.busy_ns += e - s;
            self.settled_ns = e;
            self.started = true;
        }
        self.pending = merged.split_off(keep_from);
        out
    }

    /// Intervals waiting for the watermark.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stretches(out: &[Stretch]) -> Vec<(u64, u64, Option<u64>)> {
        out.iter()
            .map(|s| (s.start_ns, s.end_ns, s.gap_before_ns))
            .collect()
    }

    #[test]
    fn overlapping_and_nested_intervals_count_once() {
        let mut b = BusyTracker::default();
        // Two streams: [10,30) and [20,40) overlap, [22,25) is nested,
        // [40,45) touches, then a gap to [60,70).
        for (s, e) in [(60, 70), (20, 40), (10, 30), (22, 25), (40, 45)] {
            b.add(s, e);
        }
        let out = b.advance(100);
        assert_eq!(stretches(&out), vec![(10, 45, None), (60, 70, Some(15))]);
        assert_eq!(b.busy_ns, 35 + 10);
        assert_eq!(b.pending(), 0);
    }

    #[test]
    fn stretches_wait_for_the_watermark_and_arrive_out_of_order() {
        let mut b = BusyTracker::default();
        b.add(100, 200);
        b.add(300, 400);
        // [300,400) could still be extended: only the first is final.
        assert_eq!(stretches(&b.advance(350)), vec![(100, 200, None)]);
        // A later batch brings an earlier interval that joins it.
        b.add(250, 320);
        b.add(390, 500);
        assert_eq!(stretches(&b.advance(600)), vec![(250, 500, Some(50))]);
        assert_eq!(b.busy_ns, 100 + 250);
        assert_eq!(b.late_intervals, 0);
    }

    #[test]
    fn late_intervals_are_clipped_and_counted() {
        let mut b = BusyTracker::default();
        b.add(0, 100);
        b.advance(100);
        b.add(50, 80); // entirely behind what is settled
        b.add(90, 150); // partly
        assert_eq!(b.late_intervals, 2);
        assert_eq!(stretches(&b.advance(1000)), vec![(100, 150, None)]);
        assert_eq!(b.busy_ns, 150, "nothing counted twice");
    }

    #[test]
    fn work_that_starts_where_final_work_ended_leaves_no_idle_gap() {
        // A step's second kernel starts when its first ends, but its record
        // comes after the first was made final: no idle time between them,
        // so no gap (an idle gap of 0 s would count a gap that was not).
        let mut b = BusyTracker::default();
        b.add(0, 500);
        assert_eq!(stretches(&b.advance(600)), vec![(0, 500, None)]);
        b.add(500, 1000);
        b.add(1300, 1800);
        assert_eq!(
            stretches(&b.advance(2000)),
            vec![(500, 1000, None), (1300, 1800, Some(300))]
        );
        assert_eq!(b.busy_ns, 1500);
        assert_eq!(b.late_intervals, 0);
    }

    #[test]
    fn empty_and_zero_length_intervals_do_nothing() {
        let mut b = BusyTracker::default();
        assert!(b.advance(10).is_empty());
        b.add(5, 5);
        assert!(b.advance(10).is_empty());
        assert_eq!(b.busy_ns, 0);
    }

    #[test]
    fn too_many_waiting_intervals_are_made_final_early() {
        let mut b = BusyTracker::default();
        for i in 0..(MAX_PENDING as u64 + 10) {
            b.add(i * 10, i * 10 + 5);
        }
        let out = b.advance(0);
        assert_eq!(out.len(), 10);
        assert_eq!(b.pending(), MAX_PENDING);
        assert_eq!(out[1].gap_before_ns, Some(5));
    }
}
