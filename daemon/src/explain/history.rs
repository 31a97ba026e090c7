//! What a GPU did over time, in 100 ms buckets: busy time and idle time by
//! cause, and the energy each drew (priced later, as NVML's readings
//! arrive: `energy`). Bounded by age, so memory does not depend on the event rate;
//! queries sum the buckets a window covers (so a window's edges are exact
//! to a bucket).

use std::collections::{HashMap, VecDeque};

use super::{
    attribute::Segment,
    cause::{CAUSES, Cause},
    energy::{Priced, Use},
};

pub const BUCKET_NS: u64 = 100_000_000;

/// Serialization functions told apart (`Split::serialization_ns`): one
/// per probe the kernel side can tell apart.
pub const SER_FUNCTIONS: usize = gapscope_ebpf_common::MAX_SER_PROBES as usize;

/// GIL holders told apart in one `Split` (`gil_holders`): a service's
/// launcher seldom waits on more than a few threads. A window keeps the
/// holders with the most waiting on them; waits on others stay in the
/// cause, unnamed.
pub const GIL_HOLDERS: usize = 8;

/// Busy and idle time in one bucket (or summed over many).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Split {
    pub busy_ns: u64,
    pub idle_ns: [u64; CAUSES],
    /// Of the `serialization` idle time, each probe's (by its index): the
    /// parts sum to the cause.
    pub serialization_ns: [u64; SER_FUNCTIONS],
    /// Of the `gil_wait` idle time, the part spent waiting on each named
    /// holder: (thread id, ns), a thread id of 0 a free slot. The rest of
    /// the cause waited on a holder not known (or beyond the first
    /// `GIL_HOLDERS`).
    pub gil_holders: [(u32, u64); GIL_HOLDERS],
    /// Gaps that ended in the bucket.
    pub gaps: u64,
    /// Of the `unobserved` idle time, what no launching thread was known
    /// for (the rest: one was, but recorded nothing that long).
    pub no_launcher_ns: u64,
    /// Energy drawn while busy, and while idle by cause (micro-joules).
    pub busy_uj: u64,
    pub idle_uj: [u64; CAUSES],
    /// Busy and idle time that NVML's readings priced, and that they
    /// could not (no energy figure); time not yet priced is in neither.
    pub busy_priced_ns: u64,
    pub idle_priced_ns: u64,
    pub unpriced_ns: u64,
}

impl Split {
    pub fn idle_total_ns(&self) -> u64 {
        self.idle_ns.iter().sum()
    }

    pub fn add(&mut self, other: &Split) {
        self.busy_ns += other.busy_ns;
        self.gaps += other.gaps;
        self.no_launcher_ns += other.no_launcher_ns;
        self.busy_uj += other.busy_uj;
        self.busy_priced_ns += other.busy_priced_ns;
        self.idle_priced_ns += other.idle_priced_ns;
        self.unpriced_ns += other.unpriced_ns;
        for (a, b) in self.idle_ns.iter_mut().zip(other.idle_ns.iter()) {
            *a += *b;
        }
        for (a, b) in self
            .serialization_ns
            .iter_mut()
            .zip(other.serialization_ns.iter())
        {
            *a += *b;
        }
        for (a, b) in self.idle_uj.iter_mut().zip(other.idle_uj.iter()) {
            *a += *b;
        }
        for &(tid, ns) in other.gil_holders.iter().filter(|h| h.0 != 0) {
            self.add_gil_holder(tid, ns);
        }
    }

    /// Adds `ns` of GIL waiting on thread `tid`. With `GIL_HOLDERS`
    /// others named, it takes the place of the one with the least waiting
    /// if it has more (that one's waiting becomes unnamed), else is left
    /// unnamed itself.
    fn add_gil_holder(&mut self, tid: u32, ns: u64) {
        if ns == 0 {
            return;
        }
        let slot = self
            .gil_holders
            .iter()
            .position(|h| h.0 == tid)
            .or_else(|| self.gil_holders.iter().position(|h| h.0 == 0));
        match slot {
            Some(i) => self.gil_holders[i] = (tid, self.gil_holders[i].1 + ns),
            None => {
                let least = (0..GIL_HOLDERS)
                    .min_by_key(|&i| self.gil_holders[i].1)
                    .unwrap_or(0);
                if self.gil_holders[least].1 < ns {
                    self.gil_holders[least] = (tid, ns);
                }
            }
        }
    }

    /// Names the holders of `waits` (thread id → ns, summed exactly over
    /// many splits): the `GIL_HOLDERS` with the most waiting.
    fn set_gil_holders(&mut self, waits: HashMap<u32, u64>) {
        let mut top: Vec<(u32, u64)> = waits.into_iter().filter(|h| h.1 > 0).collect();
        top.sort_by_key(|h| (std::cmp::Reverse(h.1), h.0));
        top.truncate(GIL_HOLDERS);
        self.gil_holders = [(0, 0); GIL_HOLDERS];
        self.gil_holders[..top.len()].copy_from_slice(&top);
    }

    /// Adds `ns` of idle time to the cause of `seg` (and to its
    /// serialization function, or the GIL holder waited on).
    pub fn add_idle(&mut self, seg: &Segment, ns: u64) {
        self.idle_ns[seg.cause.index()] += ns;
        match seg.cause {
            Cause::Serialization => {
                if let Some(f) = self.serialization_ns.get_mut(seg.detail as usize) {
                    *f += ns;
                }
            }
            Cause::GilWait if seg.detail != 0 => self.add_gil_holder(seg.detail, ns),
            _ => {}
        }
    }

    /// Adds the part of a priced stretch that lies in `[lo, hi)`, in
    /// proportion to time (all of it when the stretch lies inside).
    pub fn add_priced(&mut self, p: &Priced, lo: u64, hi: u64) {
        let (a, b) = (p.start_ns.max(lo), p.end_ns.min(hi));
        if b <= a {
            return;
        }
        let (part, whole) = (u128::from(b - a), u128::from(p.end_ns - p.start_ns));
        let uj = (u128::from(p.microjoules) * part / whole) as u64;
        let priced = (u128::from(p.priced_ns) * part / whole) as u64;
        self.unpriced_ns += (b - a).saturating_sub(priced);
        match p.what {
            Use::Busy => {
                self.busy_uj += uj;
                self.busy_priced_ns += priced;
            }
            Use::Idle(c) => {
                self.idle_uj[c.index()] += uj;
                self.idle_priced_ns += priced;
            }
        }
    }

    pub fn priced_ns(&self) -> u64 {
        self.busy_priced_ns + self.idle_priced_ns
    }

    pub fn idle_uj_total(&self) -> u64 {
        self.idle_uj.iter().sum()
    }
}

#[derive(Debug)]
pub struct History {
    /// (bucket index, split), oldest first, indexes increasing.
    buckets: VecDeque<(u64, Split)>,
    keep_ns: u64,
    /// Everything since the start (the Prometheus counters).
    pub totals: Split,
    /// First and last instant accounted: busy + idle = last - first.
    pub first_ns: Option<u64>,
    pub last_ns: u64,
}

impl History {
    pub fn new(keep_ns: u64) -> Self {
        Self {
            buckets: VecDeque::new(),
            keep_ns,
            totals: Split::default(),
            first_ns: None,
            last_ns: 0,
        }
    }

    /// Adds busy time `[start, end)`.
    pub fn busy(&mut self, start_ns: u64, end_ns: u64) {
        self.spread(start_ns, end_ns, |s, ns| s.busy_ns += ns);
        self.totals.busy_ns += end_ns.saturating_sub(start_ns);
        self.seen(start_ns, end_ns);
    }

    /// Adds one attributed gap; `blind` when no launching thread was
    /// known for it.
    pub fn gap(&mut self, segments: &[Segment], blind: bool) {
        let (Some(first), Some(last)) = (segments.first(), segments.last()) else {
            return;
        };
        for seg in segments {
            let no_launcher = blind && seg.cause == Cause::Unobserved;
            self.spread(seg.start_ns, seg.end_ns, |s, ns| {
                s.add_idle(seg, ns);
                if no_launcher {
                    s.no_launcher_ns += ns;
                }
            });
            self.totals.add_idle(seg, seg.end_ns - seg.start_ns);
            if no_launcher {
                self.totals.no_launcher_ns += seg.end_ns - seg.start_ns;
            }
        }
        self.bucket(last.end_ns.saturating_sub(1)).gaps += 1;
        self.totals.gaps += 1;
        self.seen(first.start_ns, last.end_ns);
    }

    /// Adds a priced stretch's energy, spread over its buckets by time;
    /// the totals take all of it.
    pub fn priced(&mut self, p: &Priced) {
        self.totals.add_priced(p, 0, u64::MAX);
        let horizon = self.last_ns.saturating_sub(self.keep_ns) / BUCKET_NS;
        let mut t = p.start_ns.max(horizon * BUCKET_NS);
        while t < p.end_ns {
            let upto = ((t / BUCKET_NS + 1) * BUCKET_NS).min(p.end_ns);
            self.bucket(t).add_priced(p, t, upto);
            t = upto;
        }
    }

    fn seen(&mut self, start_ns: u64, end_ns: u64) {
        self.first_ns = Some(self.first_ns.map_or(start_ns, |f| f.min(start_ns)));
        self.last_ns = self.last_ns.max(end_ns);
        let horizon = self.last_ns.saturating_sub(self.keep_ns) / BUCKET_NS;
        while self.buckets.front().is_some_and(|(i, _)| *i < horizon) {
            self.buckets.pop_front();
        }
    }

    fn spread(&mut self, start_ns: u64, end_ns: u64, mut add: impl FnMut(&mut Split, u64)) {
        let mut t = start_ns;
        while t < end_ns {
            let edge = (t / BUCKET_NS + 1) * BUCKET_NS;
            let upto = edge.min(end_ns);
            add(self.bucket(t), upto - t);
            t = upto;
        }
    }

    fn bucket(&mut self, t_ns: u64) -> &mut Split {
        let index = t_ns / BUCKET_NS;
        // Nearly always the newest bucket or one just before it.
        let pos = self.buckets.iter().rposition(|(i, _)| *i <= index);
        match pos {
            Some(p) if self.buckets[p].0 == index => &mut self.buckets[p].1,
            Some(p) => {
                self.buckets.insert(p + 1, (index, Split::default()));
                &mut self.buckets[p + 1].1
            }
            None => {
                self.buckets.push_front((index, Split::default()));
                &mut self.buckets[0].1
            }
        }
    }

    /// Sum of the buckets from `start_ns` to `end_ns` (bucket-aligned);
    /// the GIL holders summed exactly, the largest named.
    pub fn window(&self, start_ns: u64, end_ns: u64) -> Split {
        let (from, to) = (start_ns / BUCKET_NS, end_ns.div_ceil(BUCKET_NS));
        let mut total = Split::default();
        let mut holders: HashMap<u32, u64> = HashMap::new();
        for (i, s) in &self.buckets {
            if *i >= from && *i < to {
                total.add(s);
                for &(tid, ns) in s.gil_holders.iter().filter(|h| h.0 != 0) {
                    *holders.entry(tid).or_default() += ns;
                }
            }
        }
        total.set_gil_holders(holders);
        total
    }
}

/// Idle seconds by cause label, leaving out causes with none.
pub fn by_cause(split: &Split) -> Vec<(Cause, u64)> {
    Cause::ALL
        .iter()
        .map(|c| (*c, split.idle_ns[c.index()]))
        .filter(|(_, ns)| *ns > 0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_over_buckets_sums_exactly_and_forgets_old_ones() {
        let mut h = History::new(10 * BUCKET_NS);
        h.busy(50_000_000, 250_000_000);
        h.gap(
            &[
                Segment {
                    start_ns: 250_000_000,
                    end_ns: 260_000_000,
                    cause: Cause::GilWait,
                    detail: 0,
                },
                Segment {
                    start_ns: 260_000_000,
                    end_ns: 400_000_000,
                    cause: Cause::NoWork,
                    detail: 0,
                },
            ],
            false,
        );
        let all = h.window(0, 1_000_000_000);
        assert_eq!(all.busy_ns, 200_000_000);
        assert_eq!(all.idle_ns[Cause::GilWait.index()], 10_000_000);
        assert_eq!(all.idle_ns[Cause::NoWork.index()], 140_000_000);
        assert_eq!(all, h.totals);
        assert_eq!(
            h.totals.busy_ns + h.totals.idle_total_ns(),
            h.last_ns - h.first_ns.unwrap()
        );
        // The bucket 200-300 ms holds 50 ms busy and 50 ms idle.
        let b = h.window(200_000_000, 300_000_000);
        assert_eq!((b.busy_ns, b.idle_total_ns()), (50_000_000, 50_000_000));
        // Out of order: an earlier bucket is inserted in place.
        h.busy(0, 10_000_000);
        assert_eq!(h.window(0, BUCKET_NS).busy_ns, 60_000_000);
        // GIL waits on named holders: each holder's part, the rest unnamed.
        let wait = |start_ns, end_ns, detail| Segment {
            start_ns,
            end_ns,
            cause: Cause::GilWait,
            detail,
        };
        h.gap(
            &[
                wait(400_000_000, 420_000_000, 7),
                wait(420_000_000, 430_000_000, 0),
            ],
            false,
        );
        h.gap(&[wait(430_000_000, 435_000_000, 7)], false);
        let w = h.window(0, 1_000_000_000);
        assert_eq!(w.gil_holders[0], (7, 25_000_000));
        assert_eq!(w.gil_holders[1], (0, 0));
        assert_eq!(w.idle_ns[Cause::GilWait.index()], 45_000_000);
        // Over many buckets the window names the largest holders: ten
        // threads, one 1 ms wait each, one bucket apart, then thread 20
        // waits 5 ms in a later bucket; the window names 20 first and
        // seven others, the rest unnamed.
        let mut many = History::new(100 * BUCKET_NS);
        for k in 0..10u64 {
            let at = k * BUCKET_NS;
            many.gap(&[wait(at, at + 1_000_000, 10 + k as u32)], false);
        }
        many.gap(
            &[wait(20 * BUCKET_NS, 20 * BUCKET_NS + 5_000_000, 20)],
            false,
        );
        let w = many.window(0, 30 * BUCKET_NS);
        assert_eq!(w.gil_holders[0], (20, 5_000_000));
        assert_eq!(
            w.gil_holders.iter().filter(|g| g.0 != 0).count(),
            GIL_HOLDERS
        );
        assert_eq!(w.gil_holders.iter().map(|g| g.1).sum::<u64>(), 12_000_000);
        // Far later: the old buckets go, the totals stay.
        h.busy(5_000_000_000, 5_100_000_000);
        assert_eq!(h.window(0, 1_000_000_000), Split::default());
        assert_eq!(h.totals.busy_ns, 310_000_000);
    }
}
