//! What the GPU's time cost in energy: NVML's readings of each GPU as a
//! power curve, and every attributed idle segment and busy stretch priced
//! on it.
//!
//! Invariant: a stretch of time is priced once, with measured power only.
//! It waits until a reading at or after its end has arrived (so the power
//! over it is measured, never extrapolated); the part the curve does not
//! reach, or a stretch whose device is unknown or never read, is counted
//! as unpriced time, never guessed.
//!
//! The power between two readings is the GPU's energy counter's increase
//! over the time between them (NVML's total energy, exact on Volta and
//! later), else the later reading's power (a trailing average in NVML).
//!
//! Which GPUs a (service, device label) row is: the GPUs NVML lists the
//! service's processes on (one for a CUDA ordinal, all of them for the
//! uprobes' `all`); on a host with one GPU, that one even when NVML lists
//! no process (containers, some vGPUs). A CUDA device row is first the GPU
//! whose UUID the service's processes gave for that index (deep mode's
//! `Devices` frame: CUDA's indexes follow `CUDA_VISIBLE_DEVICES`, NVML's
//! do not); without one, a service on several GPUs leaves it unpriced.

use std::collections::{BTreeMap, HashMap, VecDeque};

use super::{cause::Cause, engine::ALL_DEVICES};

/// One NVML reading of one GPU.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    /// CLOCK_MONOTONIC when it was read.
    pub monotonic_ns: u64,
    /// The energy counter (since the driver loaded), when the GPU has one.
    pub energy_joules: Option<f64>,
    pub power_watts: Option<f64>,
}

/// Points of the curve kept per GPU (at one reading a second, over a day).
const MAX_POINTS: usize = 100_000;
/// Stretches waiting for a reading; beyond, the oldest are settled
/// unpriced at once.
const MAX_PENDING: usize = 1_000_000;
/// A stretch whose end no reading has reached after this long is unpriced
/// (NVML down, or the GPU lost).
const PENDING_LIMIT_NS: u64 = 30_000_000_000;

/// One GPU's power over time: `(t_i, mean watts over (t_{i-1}, t_i])`.
#[derive(Debug, Default)]
struct Curve {
    points: VecDeque<(u64, f64)>,
    /// The first reading's time: the curve starts there.
    start_ns: Option<u64>,
    last: Option<Reading>,
}

impl Curve {
    fn push(&mut self, r: Reading) {
        let Some(last) = self.last else {
            self.start_ns = Some(r.monotonic_ns);
            self.last = Some(r);
            return;
        };
        if r.monotonic_ns <= last.monotonic_ns {
            return;
        }
        let dt = (r.monotonic_ns - last.monotonic_ns) as f64 / 1e9;
        let from_energy = match (last.energy_joules, r.energy_joules) {
            // A counter that went back (driver reload) says nothing.
            (Some(a), Some(b)) if b >= a => Some((b - a) / dt),
            _ => None,
        };
        let Some(watts) = from_energy.or(r.power_watts) else {
            // Nothing to price this interval with: the curve restarts here.
            self.points.clear();
            self.start_ns = Some(r.monotonic_ns);
            self.last = Some(r);
            return;
        };
        self.points.push_back((r.monotonic_ns, watts));
        self.last = Some(r);
        if self.points.len() > MAX_POINTS {
            let (t, _) = self.points.pop_front().expect("non-empty");
            self.start_ns = Some(t);
        }
    }

    /// Newest instant the curve reaches.
    fn newest_ns(&self) -> Option<u64> {
        self.points.back().map(|(t, _)| *t)
    }

    /// Joules over `[a, b)` and the nanoseconds of it the curve covers.
    fn integrate(&self, a: u64, b: u64) -> (f64, u64) {
        let Some(mut prev) = self.start_ns else {
            return (0.0, 0);
        };
        let (mut joules, mut covered) = (0.0, 0u64);
        // The first point ending after `a`.
        let from = self.points.partition_point(|(t, _)| *t <= a);
        if from > 0 {
            prev = self.points[from - 1].0;
        }
        for &(t, watts) in self.points.range(from..) {
            let lo = a.max(prev);
            let hi = b.min(t);
            if hi > lo {
                joules += watts * (hi - lo) as f64 / 1e9;
                covered += hi - lo;
            }
            if t >= b {
                break;
            }
            prev = t;
        }
        (joules, covered)
    }
}

/// A row's GPUs and the newest instant all their curves reach.
type Reach = (Vec<u32>, u64);

/// What a priced stretch was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    Idle(Cause),
    Busy,
}

/// A stretch waiting for a reading past its end.
#[derive(Debug, Clone)]
struct Pending {
    service: u32,
    device: String,
    what: Use,
    start_ns: u64,
    end_ns: u64,
    /// To be settled unpriced without waiting.
    expired: bool,
}

/// A stretch priced: joules, and how much of it was priced.
#[derive(Debug, Clone, PartialEq)]
pub struct Priced {
    pub service: u32,
    pub device: String,
    pub what: Use,
    pub start_ns: u64,
    pub end_ns: u64,
    /// Joules over the priced part (micro-joules, rounded).
    pub microjoules: u64,
    pub priced_ns: u64,
}

#[derive(Debug, Default)]
pub struct Energy {
    curves: BTreeMap<u32, Curve>,
    /// NVML indexes of the GPUs each service's processes are on.
    devices_of: HashMap<u32, Vec<u32>>,
    /// GPUs NVML reports (0: NVML down or absent).
    gpus: usize,
    /// (service, CUDA device label) → the NVML index of the GPU its
    /// processes named by UUID.
    by_uuid: HashMap<(u32, String), u32>,
    pending: VecDeque<Pending>,
    /// Pushed out of `pending`, to be settled unpriced.
    overflowed: Vec<Pending>,
    /// Stretches settled unpriced because too many waited (they are in
    /// the unpriced time too).
    pub overflow: u64,
}

impl Energy {
    /// A reading of GPU `index` (NVML's).
    pub fn reading(&mut self, index: u32, r: Reading) {
        self.curves.entry(index).or_default().push(r);
    }

    /// Which GPUs each service is on now, and how many the host has.
    pub fn placement(&mut self, devices_of: HashMap<u32, Vec<u32>>, gpus: usize) {
        self.devices_of = devices_of;
        self.gpus = gpus;
    }

    /// The NVML GPU of each (service, CUDA device label) row whose
    /// processes named it by UUID.
    pub fn cuda_devices(&mut self, rows: HashMap<(u32, String), u32>) {
        self.by_uuid = rows;
    }

    /// The GPUs a row of `service` stands for, if known.
    fn gpus_of(&self, service: u32, device: &str) -> Option<Vec<u32>> {
        if let Some(gpu) = self.by_uuid.get(&(service, device.to_string())) {
            return Some(vec![*gpu]);
        }
        let listed = self.devices_of.get(&service).filter(|d| !d.is_empty());
        match listed {
            Some(d) if device == ALL_DEVICES || d.len() == 1 => Some(d.clone()),
            Some(_) => None,
            None if self.gpus == 1 => Some(vec![0]),
            None => None,
        }
    }

    /// A stretch to price once a reading reaches its end.
    pub fn add(&mut self, service: u32, device: &str, what: Use, start_ns: u64, end_ns: u64) {
        if end_ns <= start_ns {
            return;
        }
        if self.pending.len() >= MAX_PENDING
            && let Some(mut oldest) = self.pending.pop_front()
        {
            // Settled unpriced at the next settle.
            oldest.expired = true;
            self.overflowed.push(oldest);
            self.overflow += 1;
        }
        self.pending.push_back(Pending {
            service,
            device: device.to_string(),
            what,
            start_ns,
            end_ns,
            expired: false,
        });
    }

    /// Prices every stretch a reading has reached (or that waited longer
    /// than `PENDING_LIMIT_NS` before `now_ns`: unpriced), in order.
    pub fn settle(&mut self, now_ns: u64) -> Vec<Priced> {
        // Per row: its GPUs and the newest instant all their curves reach.
        let mut rows: Vec<(u32, String, Option<Reach>)> = Vec::new();
        let mut out = Vec::new();
        let mut keep = VecDeque::with_capacity(self.pending.len());
        let mut queue = std::mem::take(&mut self.pending);
        for p in self.overflowed.drain(..).rev() {
            queue.push_front(p);
        }
        while let Some(p) = queue.pop_front() {
            let row = match rows
                .iter()
                .position(|(s, d, _)| *s == p.service && *d == p.device)
            {
                Some(i) => i,
                None => {
                    let known = self.gpus_of(p.service, &p.device).and_then(|g| {
                        let reach = g
                            .iter()
                            .map(|i| self.curves.get(i).and_then(Curve::newest_ns))
                            .collect::<Option<Vec<u64>>>()?
                            .into_iter()
                            .min()?;
                        Some((g, reach))
                    });
                    rows.push((p.service, p.device.clone(), known));
                    rows.len() - 1
                }
            };
            let gpus = rows[row].2.as_ref();
            let reached = gpus.is_some_and(|(_, reach)| *reach >= p.end_ns);
            // With NVML down (no GPU read) waiting is pointless.
            let expired =
                p.expired || self.gpus == 0 || now_ns.saturating_sub(p.end_ns) > PENDING_LIMIT_NS;
            if !reached && !expired {
                keep.push_back(p);
                continue;
            }
            let (mut joules, mut priced_ns) = (0.0, 0);
            if let Some((gpus, _)) = gpus.filter(|_| reached) {
                priced_ns = u64::MAX;
                for i in gpus {
                    let (j, ns) = self.curves[i].integrate(p.start_ns, p.end_ns);
                    joules += j;
                    // Priced only where every GPU of the row is.
                    priced_ns = priced_ns.min(ns);
                }
            }
            out.push(Priced {
                service: p.service,
                device: p.device,
                what: p.what,
                start_ns: p.start_ns,
                end_ns: p.end_ns,
                microjoules: (joules * 1e6).round() as u64,
                priced_ns,
            });
        }
        self.pending = keep;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn r(t_s: f64, energy: Option<f64>, power: Option<f64>) -> Reading {
        Reading {
            monotonic_ns: (t_s * 1e9) as u64,
            energy_joules: energy,
            power_watts: power,
        }
    }

    #[test]
    fn the_energy_counter_prices_exactly_and_power_fills_in_without_one() {
        let mut c = Curve::default();
        // 100 W for 2 s, then 300 W for 1 s; the power field says
        // otherwise, but the counter is the truth.
        c.push(r(10.0, Some(5000.0), Some(1.0)));
        c.push(r(12.0, Some(5200.0), Some(1.0)));
        c.push(r(13.0, Some(5500.0), Some(1.0)));
        let (j, ns) = c.integrate(11 * S, 12 * S + S / 2);
        assert!((j - (100.0 + 150.0)).abs() < 1e-9, "{j}");
        assert_eq!(ns, 3 * S / 2);
        // Before the first reading, or after the last: not covered.
        let (j, ns) = c.integrate(9 * S, 14 * S);
        assert!((j - 500.0).abs() < 1e-9);
        assert_eq!(ns, 3 * S);
        // No counter: the later reading's power.
        let mut c = Curve::default();
        c.push(r(0.0, None, Some(50.0)));
        c.push(r(1.0, None, Some(70.0)));
        assert!((c.integrate(0, S).0 - 70.0).abs() < 1e-9);
        // A counter that went back falls back to power; nothing at all
        // restarts the curve.
        c.push(r(2.0, Some(10.0), Some(80.0)));
        c.push(r(3.0, Some(5.0), None));
        assert_eq!(c.integrate(0, 3 * S), (0.0, 0));
    }

    #[test]
    fn stretches_wait_for_a_reading_past_their_end_and_rows_map_to_gpus() {
        let mut e = Energy::default();
        e.placement(HashMap::from([(1, vec![0, 1]), (2, vec![1])]), 2);
        e.reading(0, r(0.0, Some(0.0), None));
        e.reading(1, r(0.0, Some(0.0), None));
        e.reading(0, r(1.0, Some(100.0), None));
        e.reading(1, r(1.0, Some(200.0), None));
        e.add(1, ALL_DEVICES, Use::Idle(Cause::GilWait), S / 2, S);
        e.add(2, "0", Use::Busy, 0, S);
        // An ordinal of a service on two GPUs: unknown, priced at expiry.
        e.add(1, "0", Use::Idle(Cause::NoWork), 0, S);
        e.add(2, "0", Use::Idle(Cause::NoWork), S, 2 * S);
        let done = e.settle(S + S / 10);
        assert_eq!(done.len(), 2);
        // `all`: both GPUs, half a second each.
        assert_eq!(
            (done[0].microjoules, done[0].priced_ns),
            (150_000_000, S / 2)
        );
        assert_eq!((done[1].microjoules, done[1].priced_ns), (200_000_000, S));
        // The one past the last reading waits; a reading prices it.
        e.reading(1, r(2.0, Some(260.0), None));
        let done = e.settle(2 * S);
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].microjoules, 60_000_000);
        // The unmappable one goes unpriced once it has waited too long.
        let done = e.settle(40 * S);
        assert_eq!(done.len(), 1);
        assert_eq!((done[0].microjoules, done[0].priced_ns), (0, 0));
        // One GPU on the host: a service NVML lists on none is on it.
        let mut e = Energy::default();
        e.placement(HashMap::new(), 1);
        e.reading(0, r(0.0, None, Some(40.0)));
        e.reading(0, r(1.0, None, Some(40.0)));
        e.add(7, "0", Use::Idle(Cause::PythonCpu), 0, S);
        assert_eq!(e.settle(S)[0].microjoules, 40_000_000);
    }

    #[test]
    fn a_cuda_device_named_by_uuid_is_priced_on_that_gpu() {
        // The service is on both GPUs; its processes said CUDA device 0 is
        // NVML's GPU 1 (CUDA_VISIBLE_DEVICES=1,0, say).
        let mut e = Energy::default();
        e.placement(HashMap::from([(1, vec![0, 1])]), 2);
        e.cuda_devices(HashMap::from([((1, "0".to_string()), 1)]));
        for (gpu, joules) in [(0, 100.0), (1, 300.0)] {
            e.reading(gpu, r(0.0, Some(0.0), None));
            e.reading(gpu, r(1.0, Some(joules), None));
        }
        e.add(1, "0", Use::Idle(Cause::GilWait), 0, S);
        // CUDA device 1 was not named: unpriced, as before.
        e.add(1, "1", Use::Idle(Cause::GilWait), 0, S);
        let done = e.settle(S);
        assert_eq!(done.len(), 1);
        assert_eq!((done[0].microjoules, done[0].priced_ns), (300_000_000, S));
    }
}
