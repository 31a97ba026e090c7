//! The explain report (`GET /api/v1/explain`): for one service and a
//! window (and each load-generator phase in it), where the GPU's time
//! went, what the CPU side did, and how much of that the data can vouch
//! for.

use std::collections::BTreeMap;

use gapscope_ebpf_common::{HIST_BUCKETS, OffCpuReason};

use serde::Serialize;

use super::{
    engine::{Explainer, Source},
    history::{Split, by_cause},
    snapshot::{self, Counter, Delta, Snapshots},
};
use crate::{annotations::Annotation, cupti::ingest::KernelTotals};

mod whatif;
pub use whatif::{Stall, WhatIf, parse as parse_what_if, unknown_functions};

/// Kernels shorter than this are "tiny" in the fusion diagnostics.
pub const TINY_KERNEL_S: f64 = 10e-6;

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub service: String,
    pub window: Window,
    pub gpu: Vec<GpuSplit>,
    pub cpu: CpuSide,
    pub gil: Gil,
    pub serialization: Vec<Codec>,
    pub kernels: Kernels,
    pub fusion: Fusion,
    pub phases: Vec<Phase>,
    pub data_quality: DataQuality,
}

#[derive(Debug, Clone, Serialize)]
pub struct Window {
    pub start_ns: u64,
    pub end_ns: u64,
    pub seconds: f64,
    /// The CPU-side numbers come from snapshots at these times (every
    /// 5 s and at every annotation), so their window may be a little
    /// wider or narrower.
    pub cpu_start_ns: Option<u64>,
    pub cpu_end_ns: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct GpuSplit {
    /// CUDA device ordinal, or "all" when only the uprobes saw the GPU.
    pub device: String,
    pub source: &'static str,
    pub precision: &'static str,
    pub busy_seconds: f64,
    pub idle_seconds: f64,
    /// Busy share of busy + idle.
    pub busy_ratio: Option<f64>,
    pub gaps: u64,
    /// Largest first.
    pub idle_by_cause: Vec<CauseShare>,
    /// How much of the idle time a recorded state explains.
    pub coverage: Coverage,
    /// What the row's time drew, from NVML (absent when none of it was
    /// priced).
    pub energy: Option<EnergySplit>,
    /// The price of one GPU-hour the money figures use
    /// (`gpu_hour_usd`), when given.
    pub gpu_hour_usd: Option<f64>,
    /// An idle gap that has not ended (its part in the window is in the
    /// idle figures above, attributed so far).
    pub open_gap: Option<OpenGapReport>,
    /// Removing the causes asked for together (`what_if=`), when asked.
    pub what_if: Option<WhatIf>,
    /// Why the predictions may not show as more tokens a second.
    pub what_if_note: Option<&'static str>,
}

#[derive(Debug, Clone, Serialize)]
pub struct OpenGapReport {
    /// When the GPU last had work.
    pub since_ns: u64,
    /// How long it has been idle, up to the last attribution tick.
    pub seconds: f64,
    /// Largest first, over the whole gap so far.
    pub idle_by_cause: Vec<CauseShare>,
}

/// The honest residual: idle time no recorded state of a launching
/// thread covers (`unobserved`), and why.
#[derive(Debug, Clone, Serialize)]
pub struct Coverage {
    /// Share of the idle time that went to a named, recorded cause.
    pub observed_share: Option<f64>,
    pub unobserved_seconds: f64,
    /// No launching thread was known (no launch or sync seen from the
    /// uprobes, no usable thread id from CUPTI).
    pub no_launcher_seconds: f64,
    /// A launching thread was known but recorded nothing as long as the
    /// timeline's threshold (`[timeline] min_interval_us`): many short
    /// stretches on and off CPU.
    pub below_threshold_seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct EnergySplit {
    pub busy_joules: f64,
    pub idle_joules: f64,
    /// Mean power while idle and while busy, over the priced time.
    pub idle_watts: Option<f64>,
    pub busy_watts: Option<f64>,
    /// Share of the row's busy + idle time that NVML's readings priced
    /// (time still waiting for a reading, or unpriceable, is not).
    pub priced_share: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct CauseShare {
    pub cause: &'static str,
    pub seconds: f64,
    /// Share of the idle time.
    pub share: f64,
    /// Energy the GPU drew while idle for this cause (when priced).
    pub joules: Option<f64>,
    /// Money this cause loses per hour of the row's time: its share of
    /// busy + idle time times the price of a GPU-hour (`gpu_hour_usd`).
    pub usd_per_hour: Option<f64>,
    /// What removing this cause would buy (None for `no_work` and
    /// `unobserved`, which are not stalls).
    pub what_if: Option<WhatIf>,
    /// For `serialization`: its idle time by function, largest first
    /// (the parts sum to the cause).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub functions: Vec<FunctionShare>,
    /// For `gil_wait`: its idle time by the thread that held the GIL,
    /// largest first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub holders: Vec<HolderShare>,
    /// For `gil_wait`: the part waiting on a holder not named (CPython
    /// before 3.11 without glibc, a thread state not readable at the
    /// moment, or beyond the first few holders).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub holders_unnamed_seconds: Option<f64>,
}

/// One GIL holder's part of the `gil_wait` idle time: the launching
/// threads waited for the GIL while this thread held it.
#[derive(Debug, Clone, Serialize)]
pub struct HolderShare {
    /// As `what_if` names it: `gil_wait:4312`.
    pub holder: String,
    pub tid: u32,
    /// The thread's name (`/proc/TID/comm`) while it exists.
    pub thread: Option<String>,
    pub seconds: f64,
    /// Share of the idle time (all causes).
    pub share: f64,
    /// What removing the waits on this thread alone would buy.
    pub what_if: WhatIf,
}

/// One serialization function's part of the `serialization` idle time.
#[derive(Debug, Clone, Serialize)]
pub struct FunctionShare {
    /// As `what_if` names it: `serialization:json.encode`.
    pub function: String,
    pub codec: String,
    pub op: String,
    pub seconds: f64,
    /// Share of the idle time (all causes).
    pub share: f64,
    /// What removing this function alone would buy.
    pub what_if: WhatIf,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct CpuSide {
    pub on_cpu_seconds: f64,
    pub off_cpu_seconds: BTreeMap<String, f64>,
    pub top_syscalls: Vec<Syscall>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Syscall {
    pub syscall: String,
    pub calls: f64,
    pub seconds: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Gil {
    pub waits: f64,
    pub wait_seconds: f64,
    pub held_seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Codec {
    pub codec: String,
    pub op: String,
    pub calls: f64,
    pub seconds: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Kernels {
    /// Exact names, by total time since the processes connected (deep
    /// mode only).
    pub top: Vec<TopKernel>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TopKernel {
    pub name: String,
    pub class: &'static str,
    pub count: u64,
    pub total_seconds: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Fusion {
    /// Kernels the GPU ran (deep mode).
    pub kernels: f64,
    /// Kernel launch calls (uprobes; estimated when duty-cycled).
    pub launches: f64,
    pub graph_launches: f64,
    /// Output tokens the load generator counted (its annotations).
    pub tokens: Option<f64>,
    pub kernels_per_token: Option<f64>,
    pub launches_per_token: Option<f64>,
    /// Share of kernels shorter than 10 µs.
    pub tiny_kernel_share: Option<f64>,
    pub median_kernel_us: Option<f64>,
    /// Graph launches among all launches.
    pub graph_launch_share: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    pub phase: String,
    pub kind: String,
    pub run_id: String,
    pub start_ns: u64,
    pub end_ns: u64,
    pub gpu: Vec<GpuSplit>,
    pub fusion: Fusion,
    pub gil: Gil,
    pub serialization_seconds: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct DataQuality {
    /// Where the GPU timeline came from, per device.
    pub gpu_timeline: BTreeMap<String, &'static str>,
    /// Threads counted as launching GPU work now.
    pub launching_threads: usize,
    /// Events lost in the window, by source.
    pub events_dropped: BTreeMap<String, f64>,
    /// Records the injection library lost in the window, from every
    /// process it runs in (daemon-wide, like `events_dropped`).
    pub inject_records_dropped: f64,
    /// Thread states dropped from the window before their time, since start.
    pub states_evicted: u64,
    pub notes: Vec<String>,
}

/// Everything a report is built from.
pub struct Inputs<'a> {
    pub service_id: u32,
    pub service: &'a str,
    pub explainer: &'a Explainer,
    pub snapshots: &'a Snapshots,
    pub annotations: &'a [Annotation],
    pub top_kernels: Vec<(String, KernelTotals)>,
    pub deep_enabled: bool,
    /// (codec, op) of each serialization probe, by its index.
    pub codecs: &'a [(String, String)],
    /// Price of one GPU-hour, for the money figures.
    pub gpu_hour_usd: Option<f64>,
    /// Whether the service has a process now (an open gap counts only
    /// then).
    pub live: bool,
    /// Stalls to predict the removal of together (`what_if=`).
    pub what_if: &'a [Stall],
}

pub fn build(inp: &Inputs, start_ns: u64, end_ns: u64) -> Report {
    let gpu = gpu_split(inp, start_ns, end_ns);
    let cpu_delta = inp.snapshots.delta(start_ns, end_ns);
    let (delta, cpu_start, cpu_end) = match &cpu_delta {
        Some((d, a, b)) => (Some(d), Some(*a), Some(*b)),
        None => (None, None, None),
    };
    let empty = Delta::new();
    let d = delta.unwrap_or(&empty);
    let tokens = tokens_between(inp.annotations, inp.service, start_ns, end_ns);

    let mut quality = DataQuality {
        launching_threads: inp.explainer.launchers(inp.service_id),
        events_dropped: d
            .iter()
            .filter_map(|(k, v)| match k.counter {
                Counter::EventsDropped(source) if k.service.is_none() => {
                    Some((source.to_string(), *v))
                }
                _ => None,
            })
            .collect(),
        inject_records_dropped: d
            .iter()
            .filter(|(k, _)| k.service.is_none() && k.counter == Counter::InjectRecordsDropped)
            .map(|(_, v)| *v)
            // A float sum of nothing is -0.0.
            .fold(0.0, |a, b| a + b),
        states_evicted: inp.explainer.counters.evicted,
        ..DataQuality::default()
    };
    for g in &gpu {
        quality.gpu_timeline.insert(g.device.clone(), g.source);
    }
    if gpu.is_empty() {
        quality.notes.push(if inp.deep_enabled {
            "no GPU timeline: no idle gap closed in the window (no CUDA launches and host syncs seen by the uprobes, no records from the injection library)".into()
        } else {
            "no GPU timeline: no idle gap closed in the window ([inject] is off, and the uprobes saw no CUDA launches and host syncs)".into()
        });
    }
    if delta.is_none() {
        quality
            .notes
            .push("no CPU-side snapshot covers the window yet".into());
    }
    if tokens.is_none() {
        quality.notes.push(
            "no token counts: per-token figures need gapscope-loadgen --gapscoped (its phase annotations carry output tokens)".into(),
        );
    }

    let phases = phases(inp, start_ns, end_ns);
    Report {
        service: inp.service.to_string(),
        window: Window {
            start_ns,
            end_ns,
            seconds: (end_ns - start_ns) as f64 / 1e9,
            cpu_start_ns: cpu_start,
            cpu_end_ns: cpu_end,
        },
        gpu,
        cpu: cpu_side(d, inp.service_id),
        gil: gil(d, inp.service_id),
        serialization: codecs(d, inp.service_id, inp.codecs),
        kernels: Kernels {
            top: inp
                .top_kernels
                .iter()
                .map(|(name, t)| TopKernel {
                    name: name.clone(),
                    class: t.class,
                    count: t.count,
                    total_seconds: t.total_ns as f64 / 1e9,
                })
                .collect(),
        },
        fusion: fusion(d, inp.service_id, tokens),
        phases,
        data_quality: quality,
    }
}

fn gpu_split(inp: &Inputs, start_ns: u64, end_ns: u64) -> Vec<GpuSplit> {
    let open = if inp.live {
        inp.explainer.open(inp.service_id)
    } else {
        &[]
    };
    let mut rows: BTreeMap<(String, Source), Split> = BTreeMap::new();
    for ((service, device), (source, history)) in &inp.explainer.histories {
        if *service == inp.service_id {
            rows.insert((device.clone(), *source), history.window(start_ns, end_ns));
        }
    }
    // An open gap's part in the window counts as idle, attributed so far.
    for g in open {
        let split = rows.entry((g.device.clone(), g.source)).or_default();
        for seg in &g.segments {
            let ns = seg
                .end_ns
                .min(end_ns)
                .saturating_sub(seg.start_ns.max(start_ns));
            split.add_idle(seg, ns);
        }
    }
    let mut out = Vec::new();
    for ((device, source), split) in rows {
        if split == Split::default() {
            continue;
        }
        let mut row = describe(&device, source, &split, inp, inp.gpu_hour_usd, inp.what_if);
        row.open_gap = open
            .iter()
            .find(|g| g.device == device && g.source == source)
            .map(|g| {
                // As of the window's end, like the window's idle: the
                // explainer may have settled the gap a little past it
                // while the report was being made.
                let until = g.now_ns.min(end_ns).max(g.since_ns);
                let mut whole = Split::default();
                for seg in &g.segments {
                    whole.add_idle(seg, seg.end_ns.min(until).saturating_sub(seg.start_ns));
                }
                OpenGapReport {
                    since_ns: g.since_ns,
                    seconds: until.saturating_sub(g.since_ns) as f64 / 1e9,
                    idle_by_cause: describe(&device, source, &whole, inp, None, &[]).idle_by_cause,
                }
            });
        out.push(row);
    }
    out
}

fn describe(
    device: &str,
    source: Source,
    split: &Split,
    inp: &Inputs,
    gpu_hour_usd: Option<f64>,
    asked: &[Stall],
) -> GpuSplit {
    use crate::explain::Cause;
    let idle = split.idle_total_ns();
    let wall = split.busy_ns + idle;
    let priced = split.priced_ns() > 0;
    let codecs = inp.codecs;
    let mut causes: Vec<CauseShare> = by_cause(split)
        .into_iter()
        .map(|(c, ns)| CauseShare {
            cause: c.label(),
            seconds: ns as f64 / 1e9,
            share: ns as f64 / idle.max(1) as f64,
            joules: priced.then(|| split.idle_uj[c.index()] as f64 / 1e6),
            usd_per_hour: gpu_hour_usd
                .filter(|_| wall > 0)
                .map(|usd| usd * ns as f64 / wall as f64),
            what_if: c
                .recoverable()
                .then(|| whatif::what_if(split, &[Stall::Cause(c)], codecs)),
            functions: match c {
                Cause::Serialization => whatif::functions(split, codecs)
                    .into_iter()
                    .map(|((codec, op), ns)| {
                        let stall = Stall::Function {
                            codec: codec.clone(),
                            op: op.clone(),
                        };
                        FunctionShare {
                            function: stall.label(),
                            codec,
                            op,
                            seconds: ns as f64 / 1e9,
                            share: ns as f64 / idle.max(1) as f64,
                            what_if: whatif::what_if(split, &[stall], codecs),
                        }
                    })
                    .collect(),
                _ => Vec::new(),
            },
            holders: match c {
                Cause::GilWait => whatif::holders(split)
                    .into_iter()
                    .map(|(tid, ns)| {
                        let stall = Stall::GilHolder { tid };
                        HolderShare {
                            holder: stall.label(),
                            tid,
                            thread: thread_name(tid),
                            seconds: ns as f64 / 1e9,
                            share: ns as f64 / idle.max(1) as f64,
                            what_if: whatif::what_if(split, &[stall], codecs),
                        }
                    })
                    .collect(),
                _ => Vec::new(),
            },
            holders_unnamed_seconds: (c == Cause::GilWait).then(|| {
                let named: u64 = split.gil_holders.iter().map(|h| h.1).sum();
                ns.saturating_sub(named) as f64 / 1e9
            }),
        })
        .collect();
    causes.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
    let energy = priced.then(|| {
        let watts = |uj: u64, ns: u64| (ns > 0).then(|| uj as f64 / 1e6 / (ns as f64 / 1e9));
        EnergySplit {
            busy_joules: split.busy_uj as f64 / 1e6,
            idle_joules: split.idle_uj_total() as f64 / 1e6,
            idle_watts: watts(split.idle_uj_total(), split.idle_priced_ns),
            busy_watts: watts(split.busy_uj, split.busy_priced_ns),
            priced_share: (split.priced_ns() as f64 / wall.max(1) as f64).min(1.0),
        }
    });
    GpuSplit {
        device: device.to_string(),
        source: source.label(),
        precision: match source {
            Source::Cupti => {
                "exact GPU busy intervals from CUPTI; CPU states shorter than [timeline] min_interval_us are not seen (short gaps without one are launch overhead)"
            }
            Source::Uprobes => {
                "no CUPTI: a gap runs from a host sync's return to the next launch, all devices together; a lower bound on idle time"
            }
        },
        busy_seconds: split.busy_ns as f64 / 1e9,
        idle_seconds: idle as f64 / 1e9,
        busy_ratio: (wall > 0).then(|| split.busy_ns as f64 / wall as f64),
        gaps: split.gaps,
        idle_by_cause: causes,
        coverage: {
            let unobserved = split.idle_ns[crate::explain::Cause::Unobserved.index()];
            Coverage {
                observed_share: (idle > 0).then(|| 1.0 - unobserved as f64 / idle as f64),
                unobserved_seconds: unobserved as f64 / 1e9,
                no_launcher_seconds: split.no_launcher_ns as f64 / 1e9,
                below_threshold_seconds: unobserved.saturating_sub(split.no_launcher_ns) as f64
                    / 1e9,
            }
        },
        energy,
        gpu_hour_usd,
        open_gap: None,
        what_if: (!asked.is_empty()).then(|| whatif::what_if(split, asked, codecs)),
        what_if_note: (split.idle_ns[crate::explain::Cause::NoWork.index()] as f64
            > 0.05 * wall as f64)
            .then_some(
                "the service waited for requests (no_work) over 5 % of the time: it is not saturated, so a removed stall shows first as lower latency, and as more tokens a second only under more load",
            ),
    }
}

/// A thread's name, while it exists.
fn thread_name(tid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{tid}/comm"))
        .ok()
        .map(|n| n.trim_end().to_string())
}

fn cpu_side(d: &Delta, service: u32) -> CpuSide {
    let mut syscalls: BTreeMap<u32, (f64, f64)> = BTreeMap::new();
    let mut off_cpu = BTreeMap::new();
    for (counter, v) in snapshot::of_service(d, service) {
        match counter {
            Counter::SyscallCalls(nr) => syscalls.entry(nr).or_default().0 += v,
            Counter::SyscallSeconds(nr) => syscalls.entry(nr).or_default().1 += v,
            Counter::OffCpuSeconds(r) => {
                if let Some(reason) = OffCpuReason::ALL.get(r as usize) {
                    *off_cpu.entry(reason.label().to_string()).or_default() += v;
                }
            }
            _ => {}
        }
    }
    let mut top: Vec<Syscall> = syscalls
        .into_iter()
        .filter(|(_, (_, seconds))| *seconds > 0.0)
        .map(|(nr, (calls, seconds))| Syscall {
            syscall: crate::syscall_table::name(nr),
            calls,
            seconds,
        })
        .collect();
    top.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
    top.truncate(10);
    CpuSide {
        on_cpu_seconds: snapshot::sum(d, service, |c| c == Counter::OnCpuSeconds),
        off_cpu_seconds: off_cpu,
        top_syscalls: top,
    }
}

fn gil(d: &Delta, service: u32) -> Gil {
    Gil {
        waits: snapshot::sum(d, service, |c| c == Counter::GilWaits),
        wait_seconds: snapshot::sum(d, service, |c| c == Counter::GilWaitSeconds),
        held_seconds: snapshot::sum(d, service, |c| c == Counter::GilHeldSeconds),
    }
}

fn codecs(d: &Delta, service: u32, names: &[(String, String)]) -> Vec<Codec> {
    let mut out: BTreeMap<(String, String), (f64, f64)> = BTreeMap::new();
    for (counter, v) in snapshot::of_service(d, service) {
        let (index, is_calls) = match counter {
            Counter::CodecCalls(i) => (i, true),
            Counter::CodecSeconds(i) => (i, false),
            _ => continue,
        };
        let key = names.get(index as usize).cloned().unwrap_or_default();
        let entry = out.entry(key).or_default();
        if is_calls {
            entry.0 += v;
        } else {
            entry.1 += v;
        }
    }
    let mut v: Vec<Codec> = out
        .into_iter()
        .map(|((codec, op), (calls, seconds))| Codec {
            codec,
            op,
            calls,
            seconds,
        })
        .collect();
    v.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
    v
}

fn fusion(d: &Delta, service: u32, tokens: Option<f64>) -> Fusion {
    // A runtime launch also reaches the driver: count one API's launches,
    // the driver's where it saw any.
    let one_api = |graphs: bool| {
        let by_api = |api: &str| {
            snapshot::sum(d, service, |c| match c {
                Counter::Launches(a) => !graphs && a == api,
                Counter::GraphLaunches(a) => graphs && a == api,
                _ => false,
            })
        };
        Some(by_api("driver"))
            .filter(|n| *n > 0.0)
            .unwrap_or_else(|| by_api("runtime"))
    };
    let launches = one_api(false);
    let graph_launches = one_api(true);
    let kernels = snapshot::sum(d, service, |c| c == Counter::Kernels);
    // Kernel durations over every class and device: (upper bound s,
    // cumulative), the buckets /metrics shows, from the first that grew.
    let mut buckets = [0u64; HIST_BUCKETS];
    for (counter, v) in snapshot::of_service(d, service) {
        if let Counter::KernelsInBucket(i) = counter
            && let Some(b) = buckets.get_mut(i as usize)
        {
            *b += v as u64;
        }
    }
    let cdf: Vec<(f64, f64)> = crate::metrics::log2_buckets(&buckets)
        .into_iter()
        .filter(|(_, cumulative)| *cumulative > 0)
        .map(|(le, cumulative)| (le, cumulative as f64))
        .collect();
    let per = |n: f64| tokens.filter(|t| *t > 0.0).map(|t| n / t);
    let all_launches = launches + graph_launches;
    Fusion {
        kernels,
        launches,
        graph_launches,
        tokens,
        kernels_per_token: (kernels > 0.0).then(|| per(kernels)).flatten(),
        launches_per_token: (all_launches > 0.0).then(|| per(all_launches)).flatten(),
        tiny_kernel_share: (kernels > 0.0).then(|| fraction_below(&cdf, TINY_KERNEL_S, kernels)),
        median_kernel_us: (kernels > 0.0)
            .then(|| quantile(&cdf, 0.5, kernels).map(|s| s * 1e6))
            .flatten(),
        graph_launch_share: (all_launches > 0.0).then(|| graph_launches / all_launches),
    }
}

/// Share of observations below `x`, interpolating inside the bucket that
/// holds it (log2 buckets: `(le/2, le]`).
fn fraction_below(cdf: &[(f64, f64)], x: f64, total: f64) -> f64 {
    let mut below_prev = 0.0;
    let mut lower = 0.0;
    for &(le, cum) in cdf {
        if x <= le {
            let within = if le > lower {
                (x - lower) / (le - lower)
            } else {
                1.0
            };
            return ((below_prev + (cum - below_prev) * within.clamp(0.0, 1.0)) / total).min(1.0);
        }
        below_prev = cum;
        lower = le;
    }
    (below_prev / total).min(1.0)
}

/// The `q` quantile, interpolated inside its bucket.
fn quantile(cdf: &[(f64, f64)], q: f64, total: f64) -> Option<f64> {
    let rank = q * total;
    let mut prev = 0.0;
    let mut lower = 0.0;
    for &(le, cum) in cdf {
        if cum >= rank && cum > prev {
            return Some(lower + (le - lower) * (rank - prev) / (cum - prev));
        }
        prev = cum;
        lower = le;
    }
    None
}

/// Output tokens the load generator counted between two instants for
/// `service`: the difference of the cumulative counts its annotations
/// carry, from runs that named this service or named none.
fn tokens_between(
    annotations: &[Annotation],
    service: &str,
    start_ns: u64,
    end_ns: u64,
) -> Option<f64> {
    let inside: Vec<&Annotation> = annotations
        .iter()
        .filter(|a| {
            a.output_tokens.is_some()
                && a.monotonic_ns >= start_ns
                && a.monotonic_ns <= end_ns
                && a.service.as_deref().is_none_or(|s| s == service)
        })
        .collect();
    let mut by_run: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for a in inside {
        let t = a.output_tokens.unwrap_or(0);
        let e = by_run.entry(a.run_id.as_str()).or_insert((t, t));
        e.0 = e.0.min(t);
        e.1 = e.1.max(t);
    }
    let total: u64 = by_run.values().map(|(lo, hi)| hi - lo).sum();
    (total > 0).then_some(total as f64)
}

/// The phases the window holds (ended inside it), each with its own
/// split, clipped exactly to its annotations.
fn phases(inp: &Inputs, start_ns: u64, end_ns: u64) -> Vec<Phase> {
    let mut out = Vec::new();
    for p in &inp.explainer.phases {
        let Some(e) = p.end_ns else {
            continue;
        };
        let s = p.start_ns;
        if s < start_ns || e > end_ns {
            continue;
        }
        let token_count = |event: &str, t: u64| {
            inp.annotations
                .iter()
                .find(|a| {
                    a.event == event
                        && a.phase == p.phase
                        && a.run_id == p.run_id
                        && a.monotonic_ns == t
                })
                .and_then(|a| a.output_tokens)
        };
        let delta = inp
            .snapshots
            .delta(s, e)
            .map(|(d, ..)| d)
            .unwrap_or_default();
        let tokens = match (token_count("start", s), token_count("end", e)) {
            (Some(x), Some(y)) if y > x => Some((y - x) as f64),
            _ => None,
        };
        out.push(Phase {
            phase: p.phase.clone(),
            kind: p.kind.clone(),
            run_id: p.run_id.clone(),
            start_ns: s,
            end_ns: e,
            gpu: p
                .splits
                .iter()
                .filter(|((service, _), _)| *service == inp.service_id)
                .map(|((_, device), (source, split))| {
                    describe(device, *source, split, inp, inp.gpu_hour_usd, inp.what_if)
                })
                .collect(),
            fusion: fusion(&delta, inp.service_id, tokens),
            gil: gil(&delta, inp.service_id),
            serialization_seconds: snapshot::sum(&delta, inp.service_id, |c| {
                matches!(c, Counter::CodecSeconds(_))
            }),
        });
    }
    out
}

/// A window such as `60s`, `5m`, `1h` or `90` (seconds), in ns.
pub fn parse_window(text: &str) -> Option<u64> {
    let t = text.trim();
    let (num, unit) = match t.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => (&t[..i], &t[i..]),
        None => (t, "s"),
    };
    let n: f64 = num.parse().ok()?;
    let scale = match unit {
        "ms" => 1e6,
        "s" => 1e9,
        "m" => 60e9,
        "h" => 3600e9,
        _ => return None,
    };
    let ns = n * scale;
    (ns.is_finite() && ns >= 1e8).then_some(ns as u64)
}

#[cfg(test)]
mod tests;
