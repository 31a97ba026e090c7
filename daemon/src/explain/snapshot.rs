//! The CPU-side counters at points in time (every few seconds, and at
//! every load-generator annotation), so a report can say what happened
//! within a window or a phase: the difference of two snapshots.
//!
//! A snapshot is the scrape's own counters and histograms (syscalls,
//! off-CPU time, GIL, serialization, launches, kernels, drops), flattened
//! to numbers keyed by series; keys are interned once, so a snapshot costs
//! twelve bytes a series.

use crate::metrics::names;
use std::collections::{BTreeMap, HashMap, VecDeque};

use prometheus::proto::{MetricFamily, MetricType};

/// Families a report reads.
pub const FAMILIES: &[&str] = &[
    names::SYSCALL_DURATION,
    names::ONCPU,
    names::OFFCPU,
    names::GIL_WAIT,
    names::GIL_HELD,
    names::SERIALIZATION_DURATION,
    names::CUDA_LAUNCHES,
    names::CUDA_GRAPH_LAUNCHES,
    names::CUDA_HOST_SYNC_WAIT,
    names::GPU_KERNEL_DURATION,
    names::EVENTS,
    names::EVENTS_DROPPED,
    names::INJECT_RECORDS_DROPPED,
];

/// One series: a metric name (with `_count`, `_sum` or `_bucket`) and its
/// labels in the family's order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Series {
    pub name: String,
    pub labels: Vec<(String, String)>,
}

impl Series {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Most snapshots kept, whatever the history (annotations can come fast).
const MAX_SNAPSHOTS: usize = 4096;

#[derive(Debug, Clone)]
struct Snapshot {
    t_ns: u64,
    /// Taken for one report: replaced by the next such snapshot.
    transient: bool,
    /// (series id, value), ids ascending.
    values: Vec<(u32, f64)>,
}

pub struct Snapshots {
    series: Vec<Series>,
    ids: HashMap<Series, u32>,
    list: VecDeque<Snapshot>,
    keep_ns: u64,
}

/// Series values: the increase between two snapshots.
pub type Delta = BTreeMap<Series, f64>;

impl Snapshots {
    pub fn new(keep_ns: u64) -> Self {
        Self {
            series: Vec::new(),
            ids: HashMap::new(),
            list: VecDeque::new(),
            keep_ns,
        }
    }

    /// Records the families as they were at `t_ns`. A `transient` one
    /// (taken for a report) replaces the previous transient one, so
    /// reports cannot grow the list.
    pub fn take(&mut self, t_ns: u64, families: &[MetricFamily], transient: bool) {
        if transient {
            self.list.retain(|s| !s.transient);
        }
        let mut values = Vec::new();
        for f in families {
            for (series, v) in flatten(f) {
                let id = match self.ids.get(&series) {
                    Some(id) => *id,
                    None => {
                        let id = self.series.len() as u32;
                        self.series.push(series.clone());
                        self.ids.insert(series, id);
                        id
                    }
                };
                values.push((id, v));
            }
        }
        values.sort_unstable_by_key(|(id, _)| *id);
        let at = self.list.partition_point(|s| s.t_ns <= t_ns);
        self.list.insert(
            at,
            Snapshot {
                t_ns,
                transient,
                values,
            },
        );
        let horizon = self
            .list
            .back()
            .map_or(0, |s| s.t_ns.saturating_sub(self.keep_ns));
        while self.list.len() > 2
            && (self.list.len() > MAX_SNAPSHOTS
                || self.list.front().is_some_and(|s| s.t_ns < horizon))
        {
            self.list.pop_front();
        }
    }

    /// The increase of every series from the snapshot nearest before
    /// `from_ns` (the oldest, if none is) to the one nearest before
    /// `to_ns`, and the times of the two snapshots used.
    pub fn delta(&self, from_ns: u64, to_ns: u64) -> Option<(Delta, u64, u64)> {
        let pick = |t: u64| {
            let i = self.list.partition_point(|s| s.t_ns <= t);
            self.list.get(i.saturating_sub(1))
        };
        let (a, b) = (pick(from_ns)?, pick(to_ns)?);
        let before: HashMap<u32, f64> = a.values.iter().copied().collect();
        let mut out = Delta::new();
        for (id, v) in &b.values {
            // A counter that went down was reset (a process left and its
            // slot was reused): count from zero.
            let was = before.get(id).copied().unwrap_or(0.0);
            let d = if *v >= was { v - was } else { *v };
            if d > 0.0 {
                out.insert(self.series[*id as usize].clone(), d);
            }
        }
        Some((out, a.t_ns, b.t_ns))
    }
}

fn flatten(f: &MetricFamily) -> Vec<(Series, f64)> {
    let name = f.name();
    let mut out = Vec::new();
    for m in f.get_metric() {
        let labels: Vec<(String, String)> = m
            .get_label()
            .iter()
            .map(|l| (l.name().to_string(), l.value().to_string()))
            .collect();
        let series = |suffix: &str, extra: Option<(&str, String)>| {
            let mut labels = labels.clone();
            if let Some((k, v)) = extra {
                labels.push((k.to_string(), v));
            }
            Series {
                name: format!("{name}{suffix}"),
                labels,
            }
        };
        match f.get_field_type() {
            MetricType::COUNTER => out.push((series("", None), m.get_counter().get_value())),
            MetricType::HISTOGRAM => {
                let h = m.get_histogram();
                out.push((series("_count", None), h.get_sample_count() as f64));
                out.push((series("_sum", None), h.get_sample_sum()));
                for b in h.get_bucket() {
                    out.push((
                        series("_bucket", Some(("le", b.upper_bound().to_string()))),
                        b.cumulative_count() as f64,
                    ));
                }
            }
            _ => {}
        }
    }
    out
}

/// Sum of the series of `name` whose labels include all of `with`.
pub fn sum(delta: &Delta, name: &str, with: &[(&str, &str)]) -> f64 {
    delta
        .iter()
        .filter(|(s, _)| s.name == name && with.iter().all(|(k, v)| s.label(k) == Some(*v)))
        .map(|(_, v)| v)
        // From +0: `sum` of no floats is -0.
        .fold(0.0, |a, b| a + b)
}

/// Sums of the series of `name` matching `with`, grouped by label `by`.
pub fn sum_by(delta: &Delta, name: &str, with: &[(&str, &str)], by: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for (s, v) in delta {
        if s.name == name && with.iter().all(|(k, val)| s.label(k) == Some(*val)) {
            *out.entry(s.label(by).unwrap_or("").to_string())
                .or_default() += v;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Family;

    fn families(calls: f64, ns: u64) -> Vec<MetricFamily> {
        let mut c = Family::counter("gapscope_oncpu_seconds_total", "h");
        c.add_counter(&[("service", "a")], calls);
        let mut h = Family::histogram("gapscope_gil_wait_seconds", "h");
        let mut l = gapscope_ebpf_common::Log2Hist::ZERO;
        l.record(ns);
        h.add_log2_histogram(&[("service", "a")], &l);
        vec![c.build().unwrap(), h.build().unwrap()]
    }

    #[test]
    fn deltas_between_the_nearest_snapshots() {
        let mut s = Snapshots::new(100);
        s.take(10, &families(1.0, 1000), false);
        s.take(20, &families(3.0, 1000), false);
        s.take(15, &families(2.0, 1000), false);
        let (d, a, b) = s.delta(16, 25).unwrap();
        assert_eq!((a, b), (15, 20));
        assert_eq!(
            sum(&d, "gapscope_oncpu_seconds_total", &[("service", "a")]),
            1.0
        );
        // Unchanged series are left out.
        assert_eq!(sum(&d, "gapscope_gil_wait_seconds_count", &[]), 0.0);
        let (d, ..) = s.delta(0, 25).unwrap();
        assert_eq!(sum(&d, "gapscope_oncpu_seconds_total", &[]), 2.0);
        // A report's snapshot replaces the previous report's.
        s.take(21, &families(9.0, 1000), true);
        s.take(22, &families(9.0, 1000), true);
        assert_eq!(s.list.len(), 4);
        // Old snapshots go.
        s.take(500, &families(0.5, 1000), false);
        assert_eq!(s.list.front().map(|s| s.t_ns), Some(22));
        // A reset counter counts from zero.
        let (d, ..) = s.delta(20, 500).unwrap();
        assert_eq!(sum(&d, "gapscope_oncpu_seconds_total", &[]), 0.5);
    }
}
