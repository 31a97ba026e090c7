//! The explainer: keeps, per service, a bounded sliding window of what its
//! threads were doing (from the timeline intervals the kernel sends), finds
//! the GPU's idle gaps, splits each among causes (`attribute`) and adds
//! the result to the service's history.
//!
//! Where the idle gaps come from:
//! * **CUPTI deep mode** (`source = "cupti"`): the exact busy stretches of
//!   each device, from the injection library's activity records.
//! * **uprobes only** (`source = "uprobes"`, device `all`): a host sync's
//!   return marks the GPU run dry, and the next launch (or the start of a
//!   sync that had to wait) marks it fed again. Devices cannot be told
//!   apart, kernels may finish before the sync returns and the launch's
//!   own latency is unseen, so these gaps are a lower bound.
//!
//! A service in deep mode ignores its uprobe gaps, so nothing counts twice.
//! A gap is attributed once it is settled: its end is `SETTLE_NS` old, so
//! the states of the thread that ended it have arrived; a launching thread
//! still off CPU then has sent nothing yet, so its wait in progress comes
//! from the kernel's thread state (`Ongoing`). States that arrive later
//! than that, or fall out of the window first, are not seen (the window
//! and the eviction count say how much that could be).

use std::collections::{BTreeMap, HashMap, VecDeque};

use gapscope_ebpf_common::{Interval, IntervalKind, OffCpuReason};

use super::{
    attribute::{self, Context, Segment, ThreadState},
    cause::Cause,
    energy::{Energy, Priced, Use},
    history::{History, Split},
};
use crate::config::ExplainConfig;
use crate::{annotations::Annotation, cupti::busy::Stretch, cupti::ingest::Target};

/// How old a gap's end must be before it is attributed.
pub const SETTLE_NS: u64 = 250_000_000;
/// States at least this long are scanned for every gap; shorter ones are
/// found by their start.
const LONG_STATE_NS: u64 = 10_000_000;
/// A service whose deep-mode stretches reached this close to the start of
/// an uprobe gap (or busy stretch) ignores it: CUPTI saw the same time.
const DEEP_HOLD_NS: u64 = 60_000_000_000;
/// Deep-mode stretches waiting to settle, per service (beyond: the oldest
/// are attributed early).
const MAX_PENDING_STRETCHES: usize = 200_000;

/// An idle stretch is reported open once it is this old: longer than the
/// injection library's flush (100 ms) plus the reorder window, so work
/// handed to the GPU meanwhile has been heard of.
pub const OPEN_AFTER_NS: u64 = 1_000_000_000;

/// Attributed idle segments kept for traces (about 40 bytes each), the
/// newest.
pub const MAX_RECENT_SEGMENTS: usize = 200_000;

/// One attributed piece of an idle gap, kept for traces.
#[derive(Debug, Clone, Copy)]
pub struct RecentSegment {
    pub service: u32,
    /// The CUDA device, or None for the uprobes' `all`.
    pub device: Option<u8>,
    pub source: Source,
    pub segment: Segment,
    /// The gap's first segment: where one gap ends and the next begins.
    pub first: bool,
}

/// The device label of gaps found without CUPTI.
pub const ALL_DEVICES: &str = "all";

/// A launching thread right now, from the kernel's per-thread state.
#[derive(Debug, Clone, Copy)]
pub enum ThreadNow {
    /// On CPU, or runnable since it last ran, since when unknown.
    Running,
    /// On CPU since the instant given (the switch that gave it the CPU).
    OnCpu(u64),
    /// Off CPU, and since when.
    Off(Ongoing),
    /// Exited (the kernel dropped its state): no longer a launching
    /// thread, so its silence cannot claim the gaps that follow.
    Gone,
}

/// A thread off CPU right now, from the kernel's per-thread state.
#[derive(Debug, Clone, Copy)]
pub struct Ongoing {
    /// When it left the CPU.
    pub since_ns: u64,
    /// When it was woken (then it waits in the run queue), if it was.
    pub woken_ns: Option<u64>,
    /// Why it left: an `OffCpuReason`.
    pub reason: u32,
}

/// Where a service's gaps came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    Cupti,
    Uprobes,
}

impl Source {
    pub fn label(self) -> &'static str {
        match self {
            Self::Cupti => "cupti",
            Self::Uprobes => "uprobes",
        }
    }
}

/// The uprobe-only view of one service's GPU.
#[derive(Debug, Default)]
struct UprobeView {
    /// A host sync returned here and nothing was launched since.
    idle_since: Option<u64>,
    /// Work was handed over here and no sync has drained it yet.
    busy_since: Option<u64>,
}

/// A launch or a sync, for the uprobe-only view.
#[derive(Debug, Clone, Copy)]
enum Marker {
    Launch { start_ns: u64 },
    Sync { start_ns: u64, end_ns: u64 },
}

impl Marker {
    fn at(&self) -> u64 {
        match self {
            Marker::Launch { start_ns } => *start_ns,
            Marker::Sync { end_ns, .. } => *end_ns,
        }
    }
}

#[derive(Debug, Default)]
struct Service {
    /// Thread states, in order of their ends (ties: arrival).
    states: VecDeque<ThreadState>,
    /// Threads that launched or synchronized, and when last.
    launchers: HashMap<u32, u64>,
    /// Launching threads that exited, and when they last launched or
    /// synchronized: they count for gaps that began before.
    departed: HashMap<u32, u64>,
    markers: Vec<Marker>,
    uprobe_view: UprobeView,
    cupti_seen_ns: Option<u64>,
    stretches: Vec<(u8, Stretch)>,
    /// Newest end of any state: the window's clock.
    newest_ns: u64,
    /// Deep mode: where each device's newest busy stretch ended, and the
    /// newest CUDA API call CUPTI reported that handed it work.
    busy_until: BTreeMap<u8, u64>,
    api_seen_ns: HashMap<u8, u64>,
    /// The oldest kernel launch whose kernel CUPTI has not reported (it
    /// runs, or waits its turn), by likely device: that device has work.
    in_flight_since: HashMap<Target, u64>,
    /// The idle stretches still open at the last tick.
    open: Vec<OpenGap>,
}

/// An idle stretch that has not ended: the GPU has had no work since
/// `since_ns`, and what the launching threads did up to `now_ns`.
#[derive(Debug, Clone)]
pub struct OpenGap {
    pub device: String,
    pub source: Source,
    pub since_ns: u64,
    pub now_ns: u64,
    pub segments: Vec<Segment>,
}

/// What the explainer counted about itself.
#[derive(Debug, Default, Clone)]
pub struct Counters {
    pub states: u64,
    /// States dropped before their time to keep within `max_states`.
    pub evicted: u64,
    /// Deep-mode stretches attributed early because too many waited.
    pub early: u64,
}

/// Phases kept (the newest).
const MAX_PHASES: usize = 64;

/// What the GPU did during one load-generator phase, clipped exactly to
/// the phase's annotations.
#[derive(Debug, Clone)]
pub struct PhaseSplit {
    pub run_id: String,
    pub phase: String,
    pub kind: String,
    pub start_ns: u64,
    /// None while the phase runs.
    pub end_ns: Option<u64>,
    pub splits: BTreeMap<(u32, String), (Source, Split)>,
}

pub struct Explainer {
    config: ExplainConfig,
    services: BTreeMap<u32, Service>,
    /// (service, device label) → what the GPU did.
    pub histories: BTreeMap<(u32, String), (Source, History)>,
    pub phases: VecDeque<PhaseSplit>,
    pub counters: Counters,
    /// The power curves of the GPUs, and the stretches waiting to be
    /// priced on them.
    pub energy: Energy,
    /// The newest attributed idle segments, in attribution order, for
    /// traces; and how many older ones were let go.
    pub recent: VecDeque<RecentSegment>,
    pub recent_evicted: u64,
}

impl Explainer {
    pub fn new(config: ExplainConfig) -> Self {
        Self {
            config,
            services: BTreeMap::new(),
            histories: BTreeMap::new(),
            phases: VecDeque::new(),
            counters: Counters::default(),
            energy: Energy::default(),
            recent: VecDeque::new(),
            recent_evicted: 0,
        }
    }

    pub fn config(&self) -> &ExplainConfig {
        &self.config
    }

    /// A load-generator phase started or ended (an annotation).
    pub fn phase_event(&mut self, a: &Annotation) {
        if a.event == "start" {
            if self.phases.len() >= MAX_PHASES {
                self.phases.pop_front();
            }
            self.phases.push_back(PhaseSplit {
                run_id: a.run_id.clone(),
                phase: a.phase.clone(),
                kind: a.kind.clone(),
                start_ns: a.monotonic_ns,
                end_ns: None,
                splits: BTreeMap::new(),
            });
        } else if a.event == "end"
            && let Some(p) = self
                .phases
                .iter_mut()
                .rev()
                .find(|p| p.end_ns.is_none() && p.phase == a.phase && p.run_id == a.run_id)
        {
            p.end_ns = Some(a.monotonic_ns.max(p.start_ns));
        }
    }

    /// The history of row `key`, made on first use (the key cloned only
    /// then: this runs for every busy stretch and gap).
    fn history(&mut self, key: &(u32, String), source: Source) -> &mut History {
        if !self.histories.contains_key(key) {
            let h = History::new(self.config.history_ns);
            self.histories.insert(key.clone(), (source, h));
        }
        &mut self.histories.get_mut(key).expect("just made").1
    }

    fn account_busy(&mut self, key: &(u32, String), source: Source, start_ns: u64, end_ns: u64) {
        self.history(key, source).busy(start_ns, end_ns);
        self.energy.add(key.0, &key.1, Use::Busy, start_ns, end_ns);
        for p in &mut self.phases {
            let ns = overlap(p, start_ns, end_ns);
            if ns > 0 {
                p.splits
                    .entry(key.clone())
                    .or_insert((source, Split::default()))
                    .1
                    .busy_ns += ns;
            }
        }
    }

    /// `blind`: no launching thread was known for the gap (its
    /// `unobserved` time is for want of one).
    fn account_gap(
        &mut self,
        key: &(u32, String),
        source: Source,
        segments: &[Segment],
        blind: bool,
    ) {
        self.history(key, source).gap(segments, blind);
        let device = key.1.parse::<u8>().ok();
        for (i, seg) in segments.iter().enumerate() {
            if self.recent.len() >= MAX_RECENT_SEGMENTS {
                self.recent.pop_front();
                self.recent_evicted += 1;
            }
            self.recent.push_back(RecentSegment {
                service: key.0,
                device,
                source,
                segment: *seg,
                first: i == 0,
            });
        }
        for seg in segments {
            self.energy.add(
                key.0,
                &key.1,
                Use::Idle(seg.cause),
                seg.start_ns,
                seg.end_ns,
            );
        }
        let Some(end) = segments.last().map(|s| s.end_ns) else {
            return;
        };
        for p in &mut self.phases {
            let mut split = Split::default();
            for seg in segments {
                let ns = overlap(p, seg.start_ns, seg.end_ns);
                split.add_idle(seg, ns);
                if blind && seg.cause == Cause::Unobserved {
                    split.no_launcher_ns += ns;
                }
            }
            if end > p.start_ns && p.end_ns.is_none_or(|e| end <= e) {
                split.gaps = 1;
            }
            if split != Split::default() {
                p.splits
                    .entry(key.clone())
                    .or_insert((source, Split::default()))
                    .1
                    .add(&split);
            }
        }
    }

    /// The cause a thread off CPU for `duration_ns` with `reason` (an
    /// `OffCpuReason`) stands for: a long enough wait for an event is
    /// `no_work`.
    fn wait_cause(&self, reason: u32, duration_ns: u64) -> Option<Cause> {
        let c = if reason == OffCpuReason::GilWait as u32 {
            Cause::GilWait
        } else {
            Cause::of_off_cpu(reason)?
        };
        Some(
            if c.can_mean_no_work() && duration_ns >= self.config.no_work_after_ns {
                Cause::NoWork
            } else {
                c
            },
        )
    }

    /// Takes a timeline interval the kernel sent.
    pub fn on_interval(&mut self, i: &Interval) {
        let Some(kind) = i.kind() else { return };
        let cause = match kind {
            IntervalKind::GilWait => Cause::GilWait,
            IntervalKind::Serialization => Cause::Serialization,
            IntervalKind::HostSync => Cause::HostSync,
            IntervalKind::Launch => Cause::LaunchOverhead,
            IntervalKind::OffCpu => match self.wait_cause(
                gapscope_ebpf_common::off_cpu_reason(i.detail),
                i.end_ns - i.start_ns,
            ) {
                Some(c) => c,
                None => return,
            },
            IntervalKind::OnCpu => Cause::PythonCpu,
            IntervalKind::GpuBusy => return,
        };
        let s = self.services.entry(i.service).or_default();
        match kind {
            IntervalKind::Launch => {
                s.launchers.insert(i.tid, i.end_ns);
                s.markers.push(Marker::Launch {
                    start_ns: i.start_ns,
                });
            }
            IntervalKind::HostSync => {
                s.launchers.insert(i.tid, i.end_ns);
                s.markers.push(Marker::Sync {
                    start_ns: i.start_ns,
                    end_ns: i.end_ns,
                });
            }
            _ => {}
        }
        s.newest_ns = s.newest_ns.max(i.end_ns);
        let horizon = s.newest_ns.saturating_sub(self.config.window_ns);
        while s.states.front().is_some_and(|f| f.end_ns < horizon) {
            s.states.pop_front();
        }
        if s.states.len() >= self.config.max_states {
            s.states.pop_front();
            self.counters.evicted += 1;
        }
        s.launchers.retain(|_, last| *last >= horizon);
        s.departed.retain(|_, last| *last >= horizon);
        // Kept in order of their ends (they arrive nearly so: a stretch is
        // sent when it ends), so a batch of gaps finds the states that
        // reach it without looking at the whole window.
        let state = ThreadState {
            tid: i.tid,
            start_ns: i.start_ns,
            end_ns: i.end_ns,
            cause,
            // Which serialization probe (below MAX_SER_PROBES: the kernel
            // side checks the index), which thread held the GIL; the other
            // kinds' details (an off-CPU reason) are in the cause already.
            detail: match cause {
                Cause::Serialization | Cause::GilWait => i.detail,
                _ => 0,
            },
        };
        let at = s.states.len()
            - s.states
                .iter()
                .rev()
                .take_while(|st| st.end_ns > state.end_ns)
                .count();
        s.states.insert(at, state);
        self.counters.states += 1;
    }

    /// A thread CUPTI saw launching or waiting for GPU work (its API
    /// records' thread id): a launching thread, whose states explain the
    /// gaps, even where no uprobe on libcuda saw it (a statically linked
    /// or stripped CUDA).
    pub fn on_launching_thread(&mut self, service: u32, tid: u32, at_ns: u64) {
        let last = self
            .services
            .entry(service)
            .or_default()
            .launchers
            .entry(tid)
            .or_default();
        *last = (*last).max(at_ns);
    }

    /// The kernel launches awaiting their kernel, per service and likely
    /// device (the oldest launch's start); a service absent has none.
    pub fn on_in_flight(&mut self, in_flight: &HashMap<(u32, Target), u64>) {
        for s in self.services.values_mut() {
            s.in_flight_since.clear();
        }
        for (&(id, target), &since) in in_flight {
            if let Some(s) = self.services.get_mut(&id) {
                s.in_flight_since.insert(target, since);
            }
        }
    }

    /// CUPTI saw the service start a CUDA call that hands `device` work
    /// (a launch or a copy) at `start_ns`: if its last stretch ended
    /// before, it has work coming, so its gap is not open.
    pub fn on_api_call(&mut self, service: u32, device: u8, start_ns: u64) {
        let s = self.services.entry(service).or_default();
        let seen = s.api_seen_ns.entry(device).or_default();
        *seen = (*seen).max(start_ns);
    }

    /// Takes a settled busy stretch of `device` from CUPTI deep mode.
    pub fn on_stretch(&mut self, service: u32, device: u8, stretch: Stretch) {
        let s = self.services.entry(service).or_default();
        s.cupti_seen_ns = Some(s.cupti_seen_ns.unwrap_or(0).max(stretch.end_ns));
        let until = s.busy_until.entry(device).or_default();
        *until = (*until).max(stretch.end_ns);
        s.stretches.push((device, stretch));
    }

    /// Attributes every gap settled by `now_ns`. `now` says what a thread
    /// is doing right now (the kernel's thread state): a wait still in
    /// progress has sent no interval yet, but it covers the gap; a thread
    /// that exited stops being a launching thread.
    pub fn tick(&mut self, now_ns: u64, now: &dyn Fn(u32) -> ThreadNow) {
        let horizon = now_ns.saturating_sub(SETTLE_NS);
        let ids: Vec<u32> = self.services.keys().copied().collect();
        for id in ids {
            let s = self.services.get_mut(&id).expect("listed");
            // One look at each launching thread per tick (a map read in
            // the kernel each).
            let seen: HashMap<u32, ThreadNow> =
                s.launchers.keys().map(|&tid| (tid, now(tid))).collect();
            for (&tid, state) in &seen {
                if matches!(state, ThreadNow::Gone)
                    && let Some(last) = s.launchers.remove(&tid)
                {
                    s.departed.insert(tid, last);
                }
            }
            let ongoing = |tid| seen.get(&tid).copied();
            let ongoing: &dyn Fn(u32) -> Option<ThreadNow> = &ongoing;
            let extra = self.ongoing_states(id, now_ns, ongoing);
            self.deep_gaps(id, horizon, &extra);
            self.uprobe_gaps(id, horizon, &extra);
            self.open_gaps(id, now_ns, &extra);
        }
        for p in self.energy.settle(now_ns) {
            self.account_energy(p);
        }
    }

    /// Adds a priced stretch to its row's history and the phases it
    /// overlaps.
    fn account_energy(&mut self, mut p: Priced) {
        let key = (p.service, std::mem::take(&mut p.device));
        let p = &p;
        if let Some((_, h)) = self.histories.get_mut(&key) {
            h.priced(p);
        }
        for phase in &mut self.phases {
            if let Some((_, split)) = phase.splits.get_mut(&key) {
                split.add_priced(p, phase.start_ns, phase.end_ns.unwrap_or(u64::MAX));
            }
        }
    }

    /// The launching threads' waits and stretches on CPU in progress, as
    /// states up to now.
    fn ongoing_states(
        &self,
        id: u32,
        now_ns: u64,
        ongoing: &dyn Fn(u32) -> Option<ThreadNow>,
    ) -> Vec<ThreadState> {
        let Some(s) = self.services.get(&id) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for &tid in s.launchers.keys() {
            let o = match ongoing(tid) {
                Some(ThreadNow::Off(o)) => o,
                Some(ThreadNow::OnCpu(since)) if since != 0 && since < now_ns => {
                    out.push(ThreadState {
                        tid,
                        start_ns: since,
                        end_ns: now_ns,
                        cause: Cause::PythonCpu,
                        detail: 0,
                    });
                    continue;
                }
                _ => continue,
            };
            if o.since_ns == 0 || o.since_ns >= now_ns {
                continue;
            }
            let blocked_until = o.woken_ns.filter(|w| *w > o.since_ns && *w <= now_ns);
            let Some(cause) = self.wait_cause(o.reason, now_ns - o.since_ns) else {
                continue;
            };
            let end = blocked_until.unwrap_or(now_ns);
            out.push(ThreadState {
                tid,
                start_ns: o.since_ns,
                end_ns: end,
                cause,
                detail: 0,
            });
            if end < now_ns {
                out.push(ThreadState {
                    tid,
                    start_ns: end,
                    end_ns: now_ns,
                    cause: Cause::Runqueue,
                    detail: 0,
                });
            }
        }
        out
    }

    fn deep_gaps(&mut self, id: u32, horizon: u64, extra: &[ThreadState]) {
        let s = self.services.get_mut(&id).expect("listed");
        if s.stretches.is_empty() {
            return;
        }
        s.stretches.sort_by_key(|(_, st)| st.start_ns);
        let overflow = s.stretches.len().saturating_sub(MAX_PENDING_STRETCHES);
        let ready = s
            .stretches
            .iter()
            .enumerate()
            .take_while(|(i, (_, st))| st.start_ns <= horizon || *i < overflow)
            .count();
        self.counters.early += overflow as u64;
        let batch: Vec<(u8, Stretch)> = s.stretches.drain(..ready).collect();
        let Some(lo) = batch
            .iter()
            .map(|(_, st)| st.start_ns - st.gap_before_ns.unwrap_or(0))
            .min()
        else {
            return;
        };
        let hi = batch.iter().map(|(_, st)| st.start_ns).max().unwrap_or(lo);
        let index = StateIndex::new(s, extra, lo, hi);
        let mut done = Vec::with_capacity(batch.len());
        for (device, st) in &batch {
            let segments = st.gap_before_ns.map(|gap| {
                let (a, b) = (st.start_ns - gap, st.start_ns);
                index.attribute(a, b, &self.config, true)
            });
            done.push((device.to_string(), *st, segments));
        }
        for (device, st, segments) in done {
            let key = (id, device);
            if let Some((segments, blind)) = segments {
                self.account_gap(&key, Source::Cupti, &segments, blind);
            }
            self.account_busy(&key, Source::Cupti, st.start_ns, st.end_ns);
        }
    }

    fn uprobe_gaps(&mut self, id: u32, horizon: u64, extra: &[ThreadState]) {
        let s = self.services.get_mut(&id).expect("listed");
        if s.markers.is_empty() {
            return;
        }
        s.markers.sort_by_key(Marker::at);
        let ready = s.markers.partition_point(|m| m.at() <= horizon);
        let batch: Vec<Marker> = s.markers.drain(..ready).collect();
        if batch.is_empty() {
            return;
        }
        let deep_seen = s.cupti_seen_ns;
        let in_deep_mode =
            |t: u64| deep_seen.is_some_and(|seen| t <= seen.saturating_add(DEEP_HOLD_NS));
        let lo = s.uprobe_view.idle_since.unwrap_or(batch[0].at());
        let index = StateIndex::new(s, extra, lo, batch[batch.len() - 1].at());
        let resolution = self.config.resolution_ns;
        let mut gaps = Vec::new();
        let mut busy = Vec::new();
        let zt = &mut s.uprobe_view;
        let fed = |zt: &mut UprobeView, at: u64, gaps: &mut Vec<(u64, u64)>| {
            if let Some(idle) = zt.idle_since.take()
                && at > idle
            {
                gaps.push((idle, at));
            }
            zt.busy_since.get_or_insert(at);
        };
        for m in &batch {
            match *m {
                Marker::Launch { start_ns } => fed(zt, start_ns, &mut gaps),
                Marker::Sync { start_ns, end_ns } => {
                    // A sync that had to wait means work was queued, even
                    // if its launches went unseen (duty-cycled probes).
                    if end_ns - start_ns >= resolution {
                        fed(zt, start_ns, &mut gaps);
                    }
                    if let Some(b) = zt.busy_since.take() {
                        busy.push((b, end_ns.max(b)));
                    }
                    if zt.idle_since.is_none() {
                        zt.idle_since = Some(end_ns);
                    }
                }
            }
        }
        let mut out = Vec::new();
        // Judged at the start: a long idle stretch after deep-mode work is
        // CUPTI's to count, however long it lasts.
        for (a, b) in gaps {
            if !in_deep_mode(a) {
                out.push(index.attribute(a, b, &self.config, false));
            }
        }
        busy.retain(|(b, _)| !in_deep_mode(*b));
        if out.is_empty() && busy.is_empty() {
            return;
        }
        let key = (id, ALL_DEVICES.to_string());
        for (segments, blind) in &out {
            self.account_gap(&key, Source::Uprobes, segments, *blind);
        }
        for (b, e) in busy {
            self.account_busy(&key, Source::Uprobes, b, e);
        }
    }

    /// Finds the service's idle stretches still open at `now_ns` and
    /// attributes them so far.
    fn open_gaps(&mut self, id: u32, now_ns: u64, extra: &[ThreadState]) {
        let s = self.services.get(&id).expect("listed");
        let mut open: Vec<(String, Source, u64)> = Vec::new();
        // Deep mode: a device whose last busy stretch ended long ago, with
        // no launch begun since, no kernel launched and not yet reported
        // (a long one still running) and no stretch waiting to be taken.
        // A launch in flight counts for its likely device, and one whose
        // device is not known yet for every device.
        for (&device, &until) in &s.busy_until {
            let running = [Some(device), None]
                .iter()
                .any(|t| s.in_flight_since.contains_key(t));
            let fed = s.api_seen_ns.get(&device).is_some_and(|seen| *seen > until);
            let pending = s.stretches.iter().any(|(d, _)| *d == device);
            if !running && !fed && !pending && now_ns.saturating_sub(until) >= OPEN_AFTER_NS {
                open.push((device.to_string(), Source::Cupti, until));
            }
        }
        // Uprobes: a host sync returned, and nothing was launched since
        // (the settled view, and the launches and syncs still settling).
        // Judged at the gap's start, as closed gaps are: an idle stretch
        // that began in deep mode is CUPTI's however long it lasts.
        let deep_at = |t: u64| {
            s.cupti_seen_ns
                .is_some_and(|seen| t <= seen.saturating_add(DEEP_HOLD_NS))
        };
        if let Some(since) = s.uprobe_view.idle_since
            && !deep_at(since)
            && now_ns.saturating_sub(since) >= OPEN_AFTER_NS
        {
            // Any sync sent since means work: a short one is sent only
            // when launches came before it (the launches themselves only
            // after a quiet stretch).
            let fed = s.markers.iter().any(|m| match *m {
                Marker::Launch { start_ns } | Marker::Sync { start_ns, .. } => start_ns >= since,
            });
            if !fed {
                open.push((ALL_DEVICES.to_string(), Source::Uprobes, since));
            }
        }
        let gaps = match open.iter().map(|(_, _, since)| *since).min() {
            Some(lo) => {
                let index = StateIndex::new(s, extra, lo, now_ns);
                open.into_iter()
                    .map(|(device, source, since)| OpenGap {
                        segments: index.attribute(since, now_ns, &self.config, false).0,
                        device,
                        source,
                        since_ns: since,
                        now_ns,
                    })
                    .collect()
            }
            None => Vec::new(),
        };
        self.services.get_mut(&id).expect("listed").open = gaps;
    }

    /// The service's idle stretches still open at the last tick.
    pub fn open(&self, service: u32) -> &[OpenGap] {
        self.services.get(&service).map_or(&[], |s| &s.open)
    }

    /// Threads currently counted as launching work, per service.
    pub fn launchers(&self, service: u32) -> usize {
        self.services.get(&service).map_or(0, |s| s.launchers.len())
    }

    /// Thread states held now, all services.
    pub fn retained(&self) -> usize {
        self.services.values().map(|s| s.states.len()).sum()
    }
}

/// How much of `[start, end)` falls in the phase.
fn overlap(p: &PhaseSplit, start_ns: u64, end_ns: u64) -> u64 {
    let lo = start_ns.max(p.start_ns);
    let hi = end_ns.min(p.end_ns.unwrap_or(u64::MAX));
    hi.saturating_sub(lo)
}

/// The states of a service's launching threads that can touch a batch of
/// gaps, arranged so each gap finds its own quickly.
struct StateIndex {
    /// Every launching thread whose states matter to the batch, sorted.
    launchers: Vec<u32>,
    /// Of those, the threads that exited, and their last launch or sync:
    /// each counts only for the gaps that began before.
    departed: Vec<(u32, u64)>,
    /// Shorter than `LONG_STATE_NS`, sorted by start.
    short: Vec<ThreadState>,
    long: Vec<ThreadState>,
}

impl StateIndex {
    fn new(s: &Service, extra: &[ThreadState], lo: u64, hi: u64) -> Self {
        // Threads that exited count for the gaps that began before their
        // last launch or sync.
        let mut launchers: Vec<u32> = s
            .launchers
            .keys()
            .copied()
            .chain(
                s.departed
                    .iter()
                    .filter(|(_, last)| **last > lo)
                    .map(|(tid, _)| *tid),
            )
            .collect();
        launchers.sort_unstable();
        let (mut short, mut long) = (Vec::new(), Vec::new());
        // `states` is in order of their ends: those ending by `lo` are
        // skipped without a look.
        let from = s.states.partition_point(|st| st.end_ns <= lo);
        for st in s.states.range(from..).chain(extra) {
            if st.end_ns <= lo || st.start_ns >= hi || launchers.binary_search(&st.tid).is_err() {
                continue;
            }
            if st.end_ns - st.start_ns >= LONG_STATE_NS {
                long.push(*st);
            } else {
                short.push(*st);
            }
        }
        short.sort_unstable_by_key(|st| st.start_ns);
        let departed = s
            .departed
            .iter()
            .filter(|(_, last)| **last > lo)
            .map(|(tid, last)| (*tid, *last))
            .collect();
        Self {
            launchers,
            departed,
            short,
            long,
        }
    }

    /// Splits `[a, b)`; `exact` when the gap came from CUPTI, so a launch
    /// call in it is the handoff of its work. Also says whether no
    /// launching thread was known for it.
    fn attribute(
        &self,
        a: u64,
        b: u64,
        config: &ExplainConfig,
        exact: bool,
    ) -> (Vec<attribute::Segment>, bool) {
        let from = self
            .short
            .partition_point(|st| st.start_ns + LONG_STATE_NS <= a);
        let mut states: Vec<ThreadState> = self.short[from..]
            .iter()
            .take_while(|st| st.start_ns < b)
            .chain(self.long.iter())
            .filter(|st| st.end_ns > a && st.start_ns < b)
            .copied()
            .collect();
        states.sort_unstable_by_key(|st| st.start_ns);
        let handoff_ns = exact
            .then(|| {
                states
                    .iter()
                    .filter(|st| st.cause == Cause::LaunchOverhead)
                    .map(|st| st.start_ns.max(a))
                    .min()
            })
            .flatten();
        // A gap too short for a recorded stretch is the launch path; in a
        // longer one, a launching thread nothing covers was not observed.
        let default = if b - a < config.resolution_ns {
            Cause::LaunchOverhead
        } else {
            Cause::Unobserved
        };
        // A batch spans many gaps: a thread that exited within it counts
        // for its gaps up to its last launch, not for those after.
        let gone_by_now: Vec<u32> = self
            .departed
            .iter()
            .filter(|(_, last)| *last <= a)
            .map(|(tid, _)| *tid)
            .collect();
        let launchers: std::borrow::Cow<'_, [u32]> = if gone_by_now.is_empty() {
            std::borrow::Cow::Borrowed(&self.launchers)
        } else {
            self.launchers
                .iter()
                .copied()
                .filter(|tid| !gone_by_now.contains(tid))
                .collect()
        };
        let segments = attribute::attribute(
            a,
            b,
            &Context {
                launchers: &launchers,
                states: &states,
                handoff_ns,
                default,
            },
        );
        (segments, launchers.is_empty())
    }
}

#[cfg(test)]
mod tests;
