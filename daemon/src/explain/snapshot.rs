//! The CPU-side counters at points in time (every few seconds, and at
//! every load-generator annotation), so a report can say what happened
//! within a window or a phase: the difference of two snapshots.
//!
//! A snapshot is the counters read from the daemon's state (`Counter`:
//! typed, a syscall by its number, a codec by its probe, an off-CPU
//! reason by its `OffCpuReason`), per service; keys are interned once, so
//! a snapshot costs sixteen bytes a counter. `metrics` reads them where it
//! reads the same maps for a scrape (`metrics::snapshot_counters`).

use std::collections::{BTreeMap, HashMap, VecDeque};

/// What one counter counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Counter {
    /// Calls of syscall `nr`, and seconds in it.
    SyscallCalls(u32),
    SyscallSeconds(u32),
    OnCpuSeconds,
    /// Seconds off CPU for an `OffCpuReason`.
    OffCpuSeconds(u32),
    /// Contended GIL acquisitions and their waits; the GIL held.
    GilWaits,
    GilWaitSeconds,
    GilHeldSeconds,
    /// Calls of serialization probe `index`, and seconds in them.
    CodecCalls(u32),
    CodecSeconds(u32),
    /// Kernel and graph launches through one API (`driver`, `runtime`).
    Launches(&'static str),
    GraphLaunches(&'static str),
    /// Kernels CUPTI recorded, and those in log2 bucket `i` (durations
    /// below 2^(i+1) ns and at least half that).
    Kernels,
    KernelsInBucket(u32),
    /// The daemon's events dropped, by source; records the injection
    /// library lost (both: no service).
    EventsDropped(&'static str),
    InjectRecordsDropped,
}

/// A counter of one service, or of the daemon (`service: None`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub service: Option<u32>,
    pub counter: Counter,
}

impl Key {
    pub fn of(service: u32, counter: Counter) -> Self {
        Key {
            service: Some(service),
            counter,
        }
    }

    pub fn daemon(counter: Counter) -> Self {
        Key {
            service: None,
            counter,
        }
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
    keys: Vec<Key>,
    ids: HashMap<Key, u32>,
    list: VecDeque<Snapshot>,
    keep_ns: u64,
}

/// Counters: the increase between two snapshots.
pub type Delta = BTreeMap<Key, f64>;

impl Snapshots {
    pub fn new(keep_ns: u64) -> Self {
        Self {
            keys: Vec::new(),
            ids: HashMap::new(),
            list: VecDeque::new(),
            keep_ns,
        }
    }

    /// Records the counters as they were at `t_ns`. A `transient` one
    /// (taken for a report) replaces the previous transient one, so
    /// reports cannot grow the list.
    pub fn take(&mut self, t_ns: u64, counters: &[(Key, f64)], transient: bool) {
        if transient {
            self.list.retain(|s| !s.transient);
        }
        let mut values = Vec::with_capacity(counters.len());
        for (key, v) in counters {
            let id = match self.ids.get(key) {
                Some(id) => *id,
                None => {
                    let id = self.keys.len() as u32;
                    self.keys.push(*key);
                    self.ids.insert(*key, id);
                    id
                }
            };
            values.push((id, *v));
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
                out.insert(self.keys[*id as usize], d);
            }
        }
        Some((out, a.t_ns, b.t_ns))
    }
}

/// Sum of one service's counters that `pick` chooses.
pub fn sum(delta: &Delta, service: u32, pick: impl Fn(Counter) -> bool) -> f64 {
    delta
        .iter()
        .filter(|(k, _)| k.service == Some(service) && pick(k.counter))
        .map(|(_, v)| v)
        // From +0: `sum` of no floats is -0.
        .fold(0.0, |a, b| a + b)
}

/// One service's counters, each with its value.
pub fn of_service(delta: &Delta, service: u32) -> impl Iterator<Item = (Counter, f64)> + '_ {
    delta
        .iter()
        .filter(move |(k, _)| k.service == Some(service))
        .map(|(k, v)| (k.counter, *v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters(on_cpu: f64, waits: f64) -> Vec<(Key, f64)> {
        vec![
            (Key::of(0, Counter::OnCpuSeconds), on_cpu),
            (Key::of(0, Counter::GilWaits), waits),
        ]
    }

    #[test]
    fn deltas_between_the_nearest_snapshots() {
        let on_cpu = |c: Counter| c == Counter::OnCpuSeconds;
        let mut s = Snapshots::new(100);
        s.take(10, &counters(1.0, 1.0), false);
        s.take(20, &counters(3.0, 1.0), false);
        s.take(15, &counters(2.0, 1.0), false);
        let (d, a, b) = s.delta(16, 25).unwrap();
        assert_eq!((a, b), (15, 20));
        assert_eq!(sum(&d, 0, on_cpu), 1.0);
        // Unchanged counters are left out.
        assert_eq!(sum(&d, 0, |c| c == Counter::GilWaits), 0.0);
        assert_eq!(of_service(&d, 0).count(), 1);
        let (d, ..) = s.delta(0, 25).unwrap();
        assert_eq!(sum(&d, 0, on_cpu), 2.0);
        // A report's snapshot replaces the previous report's.
        s.take(21, &counters(9.0, 1.0), true);
        s.take(22, &counters(9.0, 1.0), true);
        assert_eq!(s.list.len(), 4);
        // Old snapshots go.
        s.take(500, &counters(0.5, 1.0), false);
        assert_eq!(s.list.front().map(|s| s.t_ns), Some(22));
        // A reset counter counts from zero.
        let (d, ..) = s.delta(20, 500).unwrap();
        assert_eq!(sum(&d, 0, on_cpu), 0.5);
        // Another service's counters are its own.
        assert_eq!(sum(&d, 1, on_cpu), 0.0);
    }
}
