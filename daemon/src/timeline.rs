//! The timeline: long stalls (GIL waits, serialization calls, host syncs,
//! stretches off CPU) and launches after a quiet stretch, which the kernel
//! sent as intervals, kept for a bounded time and number so the
//! attribution work can ask what a service's threads were doing during a
//! GPU idle gap. `/api/v1/intervals` serves them as JSON.

use std::collections::{BTreeMap, VecDeque};

use gapscope_ebpf_common::Interval;
use serde::Serialize;

/// A bounded, time-ordered window of intervals from every service.
pub struct Timeline {
    intervals: VecDeque<Interval>,
    capacity: usize,
    retention_ns: u64,
    /// (service, kind) → intervals received since start.
    received: BTreeMap<(u32, u32), u64>,
    /// Intervals dropped to keep within `capacity` before their time.
    evicted: u64,
}

/// One interval as the JSON API shows it.
#[derive(Serialize)]
pub struct IntervalView {
    pub kind: &'static str,
    pub service: String,
    /// Serialization intervals: the codec and direction.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub codec: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub op: Option<String>,
    /// Host-sync intervals: the CUDA API and call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub call: Option<&'static str>,
    /// Off-CPU intervals: why (a syscall family, runqueue, blocked_other).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    /// Off-CPU intervals blocked in a syscall: which.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub syscall: Option<String>,
    /// GIL waits: the thread that held the GIL when the wait began, when
    /// named.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub holder_tid: Option<u32>,
    pub pid: u32,
    pub tid: u32,
    pub start_ns: u64,
    pub end_ns: u64,
    pub duration_ns: u64,
}

impl Timeline {
    pub fn new(capacity: usize, retention_ns: u64) -> Self {
        Self {
            intervals: VecDeque::new(),
            capacity,
            retention_ns,
            received: BTreeMap::new(),
            evicted: 0,
        }
    }

    /// Adds an interval the kernel sent; forgets the oldest ones beyond the
    /// retention time or the capacity.
    pub fn push(&mut self, interval: Interval) {
        *self
            .received
            .entry((interval.service, interval.kind))
            .or_default() += 1;
        let horizon = interval.end_ns.saturating_sub(self.retention_ns);
        while self.intervals.front().is_some_and(|i| i.end_ns < horizon) {
            self.intervals.pop_front();
        }
        if self.intervals.len() >= self.capacity {
            self.intervals.pop_front();
            self.evicted += 1;
        }
        self.intervals.push_back(interval);
    }

    /// Intervals ending at or after `since_ns` that pass `keep`, oldest first.
    pub fn query(&self, since_ns: u64, keep: impl Fn(&Interval) -> bool) -> Vec<Interval> {
        self.intervals
            .iter()
            .filter(|i| i.end_ns >= since_ns && keep(i))
            .copied()
            .collect()
    }

    pub fn received(&self) -> &BTreeMap<(u32, u32), u64> {
        &self.received
    }

    /// How far back the window reaches.
    pub fn retention_ns(&self) -> u64 {
        self.retention_ns
    }

    pub fn retained(&self) -> usize {
        self.intervals.len()
    }

    pub fn evicted(&self) -> u64 {
        self.evicted
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gapscope_ebpf_common::IntervalKind;

    fn at(end_ns: u64) -> Interval {
        Interval {
            kind: IntervalKind::GilWait as u32,
            detail: 0,
            service: 0,
            tgid: 1,
            tid: 1,
            _pad: 0,
            start_ns: end_ns.saturating_sub(5),
            end_ns,
        }
    }

    #[test]
    fn keeps_within_capacity_and_retention() {
        let mut t = Timeline::new(3, 100);
        for end in [10, 20, 30, 40] {
            t.push(at(end));
        }
        assert_eq!(t.retained(), 3);
        assert_eq!(t.evicted(), 1);
        // 200 - 100 retention: everything before 100 goes.
        t.push(at(200));
        assert_eq!(t.retained(), 1);
        assert_eq!(t.received()[&(0, IntervalKind::GilWait as u32)], 5);
        assert_eq!(t.query(150, |_| true).len(), 1);
        assert_eq!(
            t.query(0, |i| i.kind != IntervalKind::GilWait as u32).len(),
            0
        );
    }
}
