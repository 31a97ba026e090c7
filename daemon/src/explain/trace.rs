//! A timeline people can open: one service over a window as a Chrome
//! trace (the JSON Kineto and the PyTorch profiler write, which
//! ui.perfetto.dev and chrome://tracing open). `gapscoped trace` writes
//! it; `/api/v1/trace` serves it.
//!
//! Invariant: every span is something gapscoped recorded, at the time it
//! recorded it (CLOCK_MONOTONIC, in microseconds), except `unrecorded`,
//! the time between two recorded stretches of a thread (on or off CPU,
//! each at least the timeline's threshold), which says so in its
//! arguments. Nothing is clipped to the window: a span that
//! overlaps it is there whole.
//!
//! Tracks:
//! * each process of the service (its pid), a track per thread: on CPU,
//!   off CPU by reason and `unrecorded` between (complete events, which
//!   never overlap on one thread); GIL waits, serialization calls and CUDA launches and
//!   syncs as async slices on the same thread (they may overlap those);
//! * each GPU (pid `GPU_PID + device`): `idle` with every attributed piece
//!   of every idle gap named by its cause (a gap still open too), and in
//!   deep mode a track per CUDA stream with the kernels;
//! * `gapscope-loadgen` (pid `LOADGEN_PID`): each phase as a span, its
//!   start and end as instant events; on a track of their own, each
//!   request's sending, first token and end as instant events named by
//!   its `x-request-id`.

use std::{borrow::Cow, collections::BTreeMap};

use gapscope_ebpf_common::{Interval, IntervalKind, OffCpuReason, off_cpu_reason, off_cpu_syscall};
use serde::Serialize;
use serde_json::{Value, json};

use super::{
    Cause,
    attribute::Segment,
    engine::{OpenGap, RecentSegment, Source},
};
use crate::{
    annotations::{Annotation, RequestMark},
    cupti::ingest::KernelSpan,
};

/// The GPUs' pids: above Linux's pid_max (2^22) and below 2^32 (viewers
/// read pids and tids as 32-bit numbers).
pub const GPU_PID: u64 = 0xFFFF_0000;
/// The device number of the uprobes' `all` row.
const ALL_DEVICES_ROW: u64 = 255;
pub const LOADGEN_PID: u64 = 0xFFFF_F000;
/// The load generator's track of requests (its phases are on 1).
const REQUESTS_TID: u64 = 2;
/// A GPU's track of idle gaps.
const IDLE_TID: u64 = 1;
/// Above any pid: a GPU's track of one stream of one process is
/// `PID_LIMIT × (stream mod 1000 + 1) + pid`, under 2^32.
const PID_LIMIT: u64 = 1 << 22;

fn stream_tid(pid: u32, stream: u32) -> u64 {
    PID_LIMIT * (u64::from(stream) % 1000 + 1) + u64::from(pid) % PID_LIMIT
}

/// Everything one trace is built from: the service's own, in the window.
pub struct Inputs<'a> {
    pub service: &'a str,
    pub start_ns: u64,
    pub end_ns: u64,
    /// The timeline's intervals of the service.
    pub intervals: &'a [Interval],
    /// (codec, op) of each serialization probe, by its index.
    pub codecs: &'a [(String, String)],
    /// CUDA entry point names, by the launch and sync intervals' detail.
    pub cuda_calls: &'a [&'a str],
    pub gaps: &'a [RecentSegment],
    pub open: &'a [OpenGap],
    pub kernels: &'a [KernelSpan],
    pub annotations: &'a [Annotation],
    /// The load generator's finished requests that overlap the window.
    pub requests: &'a [RequestMark],
    /// Thread and process names (`comm`), where still known.
    pub names: &'a BTreeMap<u32, String>,
    /// The timeline's threshold: shorter stretches are not recorded.
    pub resolution_ns: u64,
    /// Older segments and kernels than the trace holds were let go.
    pub segments_evicted: u64,
    pub kernels_evicted: u64,
    pub requests_evicted: u64,
}

/// One trace event; fields a phase does not use are left out.
#[derive(Serialize)]
struct Event<'a> {
    name: Cow<'a, str>,
    #[serde(skip_serializing_if = "str::is_empty")]
    cat: &'static str,
    ph: &'static str,
    /// Microseconds.
    ts: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    dur: Option<f64>,
    pid: u64,
    tid: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<u64>,
    /// Instant events: their scope.
    #[serde(skip_serializing_if = "Option::is_none")]
    s: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cname: Option<&'static str>,
    #[serde(skip_serializing_if = "Value::is_null")]
    args: Value,
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1e3
}

impl<'a> Event<'a> {
    fn span(
        name: impl Into<Cow<'a, str>>,
        cat: &'static str,
        pid: u64,
        tid: u64,
        a: u64,
        b: u64,
    ) -> Self {
        Event {
            name: name.into(),
            cat,
            ph: "X",
            ts: us(a),
            dur: Some(us(b.saturating_sub(a))),
            pid,
            tid,
            id: None,
            s: None,
            cname: None,
            args: Value::Null,
        }
    }

    fn meta(what: &'static str, pid: u64, tid: u64, args: Value) -> Self {
        Event {
            name: what.into(),
            cat: "",
            ph: "M",
            ts: 0.0,
            dur: None,
            pid,
            tid,
            id: None,
            s: None,
            cname: None,
            args,
        }
    }

    /// Adds `args` (an object) to the event's arguments.
    fn with(mut self, args: Value) -> Self {
        match (&mut self.args, args) {
            (Value::Object(mine), Value::Object(more)) => mine.extend(more),
            (mine, more) => *mine = more,
        }
        self
    }

    fn colour(mut self, cname: &'static str) -> Self {
        self.cname = Some(cname);
        self
    }
}

/// The trace viewers' reserved colour names, by what a stretch was.
fn colour_of(label: &str) -> &'static str {
    match label {
        "on_cpu" | "python_cpu" => "thread_state_running",
        "unobserved" => "grey",
        "runqueue" => "thread_state_runnable",
        "gil_wait" => "terrible",
        "serialization" => "bad",
        "no_work" => "rail_idle",
        "launch_overhead" | "host_sync" => "rail_load",
        "syscall_file" | "blocked_other" => "thread_state_iowait",
        _ => "thread_state_sleeping",
    }
}

/// A piece of an idle gap on GPU `row`'s idle track, named and coloured
/// by its cause (serialization's with its function, when `codecs` names
/// it).
fn idle_span(row: u64, seg: &Segment, codecs: &[(String, String)]) -> Event<'static> {
    let cause = seg.cause.label();
    let span = Event::span(
        cause,
        "idle",
        GPU_PID + row,
        IDLE_TID,
        seg.start_ns,
        seg.end_ns,
    )
    .colour(colour_of(cause));
    match codecs.get(seg.detail as usize) {
        Some((codec, op)) if seg.cause == Cause::Serialization => {
            // As `what_if=` names it, to paste there.
            span.with(
                json!({ "function": format!("{}:{codec}.{op}", Cause::Serialization.label()) }),
            )
        }
        _ => span,
    }
}

/// A stretch on or off CPU: start, end, what it was, the syscall it was
/// blocked in.
type CpuState = (u64, u64, &'static str, Option<u32>);

/// The trace as JSON text.
pub fn build(inp: &Inputs) -> String {
    let mut events: Vec<Event> = Vec::new();
    let mut threads: BTreeMap<u32, u32> = BTreeMap::new();
    let mut next_id = 1u64;
    let mut counts: BTreeMap<&'static str, u64> = BTreeMap::new();

    // Threads: on CPU, off CPU by reason, and what was not recorded.
    let mut cpu: BTreeMap<(u32, u32), Vec<CpuState>> = BTreeMap::new();
    for i in inp.intervals {
        let Some(kind) = i.kind() else { continue };
        if kind != IntervalKind::GpuBusy {
            threads.insert(i.tid, i.tgid);
        }
        let pid = u64::from(i.tgid);
        let tid = u64::from(i.tid);
        match kind {
            IntervalKind::OffCpu => {
                let reason = OffCpuReason::ALL
                    .get(off_cpu_reason(i.detail) as usize)
                    .map_or("off_cpu", |r| r.label());
                cpu.entry((i.tgid, i.tid)).or_default().push((
                    i.start_ns,
                    i.end_ns,
                    reason,
                    off_cpu_syscall(i.detail),
                ));
            }
            IntervalKind::OnCpu => {
                cpu.entry((i.tgid, i.tid))
                    .or_default()
                    .push((i.start_ns, i.end_ns, "on_cpu", None));
            }
            IntervalKind::GilWait
            | IntervalKind::Serialization
            | IntervalKind::HostSync
            | IntervalKind::Launch => {
                let (name, cat): (Cow<str>, &'static str) = match kind {
                    IntervalKind::GilWait => ("gil_wait".into(), "python"),
                    IntervalKind::Serialization => (
                        inp.codecs.get(i.detail as usize).map_or_else(
                            || "serialization".into(),
                            |(codec, op)| format!("serialization {codec}.{op}").into(),
                        ),
                        "python",
                    ),
                    _ => (
                        inp.cuda_calls
                            .get(i.detail as usize)
                            .map_or("cuda", |n| *n)
                            .into(),
                        "cuda",
                    ),
                };
                *counts.entry(kind.label()).or_default() += 1;
                let colour = colour_of(kind.label());
                // The competitor a GIL wait waited on, when named.
                let args = if kind == IntervalKind::GilWait && i.detail != 0 {
                    serde_json::json!({ "holder_tid": i.detail })
                } else {
                    Value::Null
                };
                for (ph, at) in [("b", i.start_ns), ("e", i.end_ns)] {
                    events.push(Event {
                        name: name.clone(),
                        cat,
                        ph,
                        ts: us(at),
                        dur: None,
                        pid,
                        tid,
                        id: Some(next_id),
                        s: None,
                        cname: Some(colour),
                        args: if ph == "b" { args.clone() } else { Value::Null },
                    });
                }
                next_id += 1;
            }
            IntervalKind::GpuBusy => {}
        }
    }
    for ((tgid, tid), mut spans) in cpu {
        spans.sort_unstable();
        let (pid, tid) = (u64::from(tgid), u64::from(tid));
        let mut last_end: Option<u64> = None;
        for (a, b, reason, syscall) in spans {
            if let Some(e) = last_end.filter(|e| a > *e) {
                events.push(
                    Event::span("unrecorded", "unrecorded", pid, tid, e, a)
                        .colour("grey")
                        .with(json!({ "note": "between two recorded stretches: on and off CPU in stretches shorter than the timeline's threshold" })),
                );
                *counts.entry("unrecorded").or_default() += 1;
            }
            let cat = if reason == "on_cpu" {
                "on_cpu"
            } else {
                "off_cpu"
            };
            let mut span = Event::span(reason, cat, pid, tid, a, b).colour(colour_of(reason));
            if let Some(nr) = syscall {
                // Blocked in this syscall for the whole stretch.
                span = span.with(json!({ "syscall": crate::syscall_table::name(nr) }));
            }
            events.push(span);
            *counts.entry(cat).or_default() += 1;
            last_end = Some(last_end.map_or(b, |e| e.max(b)));
        }
    }

    // GPUs: idle gaps by cause, kernels by stream.
    let mut gpus: BTreeMap<u64, Source> = BTreeMap::new();
    let mut gap_index = 0u64;
    for g in inp.gaps {
        let row = g.device.map_or(ALL_DEVICES_ROW, u64::from);
        gpus.insert(row, g.source);
        if g.first {
            gap_index += 1;
            *counts.entry("gaps").or_default() += 1;
        }
        events.push(idle_span(row, &g.segment, inp.codecs).with(json!({ "gap": gap_index })));
        *counts.entry("idle_segments").or_default() += 1;
    }
    for g in inp.open {
        let row = g.device.parse::<u64>().unwrap_or(ALL_DEVICES_ROW);
        gpus.insert(row, g.source);
        for seg in &g.segments {
            events.push(idle_span(row, seg, inp.codecs).with(
                json!({ "open": true, "note": "a gap that has not ended, attributed so far" }),
            ));
        }
        *counts.entry("open_gaps").or_default() += 1;
    }
    let mut streams: BTreeMap<u64, Vec<(u32, u32)>> = BTreeMap::new();
    for k in inp.kernels {
        let row = u64::from(k.device);
        gpus.entry(row).or_insert(Source::Cupti);
        let on = streams.entry(row).or_default();
        if !on.contains(&(k.pid, k.stream)) {
            on.push((k.pid, k.stream));
        }
        events.push(
            Event::span(
                k.name.as_deref().unwrap_or("(unnamed kernel)"),
                "kernel",
                GPU_PID + row,
                stream_tid(k.pid, k.stream),
                k.start_ns,
                k.end_ns,
            )
            .with(json!({ "correlation": k.correlation, "stream": k.stream, "pid": k.pid })),
        );
        *counts.entry("kernels").or_default() += 1;
    }

    // The load generator's phases.
    let mut started: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    for a in inp.annotations {
        let args = json!({ "run_id": a.run_id, "phase": a.phase, "kind": a.kind, "output_tokens": a.output_tokens });
        events.push(Event {
            name: format!("{} {}", a.phase, a.event).into(),
            cat: "loadgen",
            ph: "i",
            ts: us(a.monotonic_ns),
            dur: None,
            pid: LOADGEN_PID,
            tid: 1,
            id: None,
            s: Some("g"),
            cname: None,
            args,
        });
        *counts.entry("annotations").or_default() += 1;
        match a.event.as_str() {
            "start" => {
                started.insert((&a.run_id, &a.phase), a.monotonic_ns);
            }
            "end" => {
                if let Some(s) = started.remove(&(a.run_id.as_str(), a.phase.as_str())) {
                    events.push(
                        Event::span(
                            a.phase.as_str(),
                            "loadgen",
                            LOADGEN_PID,
                            1,
                            s,
                            a.monotonic_ns,
                        )
                        .with(json!({ "run_id": a.run_id, "kind": a.kind })),
                    );
                }
            }
            _ => {}
        }
    }

    // The load generator's requests: when each was sent, got its first
    // token and ended, as instants on a track of their own.
    for r in inp.requests {
        let args = json!({ "request_id": r.id, "run_id": r.run_id, "phase": r.phase, "ok": r.ok });
        let marks = [
            ("request sent", Some(r.sent_ns)),
            ("first token", r.first_token_ns),
            ("request done", Some(r.done_ns)),
        ];
        for (what, at) in marks {
            let Some(at) = at.filter(|t| (inp.start_ns..=inp.end_ns).contains(t)) else {
                continue;
            };
            events.push(Event {
                name: format!("{what} {}", r.id).into(),
                cat: "loadgen",
                ph: "i",
                ts: us(at),
                dur: None,
                pid: LOADGEN_PID,
                tid: REQUESTS_TID,
                id: None,
                s: Some("t"),
                cname: None,
                args: args.clone(),
            });
        }
        *counts.entry("requests").or_default() += 1;
    }

    // Names and order: GPUs first, then the service's processes.
    let mut meta = Vec::new();
    for (row, source) in &gpus {
        let pid = GPU_PID + row;
        let device = if *row == ALL_DEVICES_ROW {
            "all".to_string()
        } else {
            row.to_string()
        };
        meta.push(Event::meta(
            "process_name",
            pid,
            0,
            json!({ "name": format!("GPU {device} of {} ({})", inp.service, source.label()) }),
        ));
        meta.push(Event::meta(
            "process_sort_index",
            pid,
            0,
            json!({ "sort_index": -10 + *row as i64 % 1000 }),
        ));
        meta.push(Event::meta(
            "thread_name",
            pid,
            IDLE_TID,
            json!({ "name": "idle gaps by cause" }),
        ));
        for (process, stream) in streams.get(row).into_iter().flatten() {
            meta.push(Event::meta(
                "thread_name",
                pid,
                stream_tid(*process, *stream),
                json!({ "name": format!("stream {stream} of pid {process}") }),
            ));
        }
    }
    let mut processes: BTreeMap<u32, ()> = BTreeMap::new();
    for (tid, tgid) in &threads {
        processes.insert(*tgid, ());
        let name = inp
            .names
            .get(tid)
            .cloned()
            .unwrap_or_else(|| format!("thread {tid}"));
        meta.push(Event::meta(
            "thread_name",
            u64::from(*tgid),
            u64::from(*tid),
            json!({ "name": name }),
        ));
    }
    for tgid in processes.keys() {
        let comm = inp.names.get(tgid).map_or("", String::as_str);
        meta.push(Event::meta(
            "process_name",
            u64::from(*tgid),
            0,
            json!({ "name": format!("{} {comm} (pid {tgid})", inp.service) }),
        ));
    }
    if !inp.annotations.is_empty() || !inp.requests.is_empty() {
        meta.push(Event::meta(
            "process_name",
            LOADGEN_PID,
            0,
            json!({ "name": "gapscope-loadgen" }),
        ));
        meta.push(Event::meta(
            "thread_name",
            LOADGEN_PID,
            1,
            json!({ "name": "phases" }),
        ));
    }
    if !inp.requests.is_empty() {
        meta.push(Event::meta(
            "thread_name",
            LOADGEN_PID,
            REQUESTS_TID,
            json!({ "name": "requests" }),
        ));
    }
    meta.extend(events);

    let mut notes = vec![format!(
        "stretches on or off CPU shorter than {} µs are not recorded ([timeline] min_interval_us); `unrecorded` is the time between two recorded stretches of a thread",
        inp.resolution_ns / 1000
    )];
    if inp.segments_evicted > 0 || inp.kernels_evicted > 0 {
        notes.push(format!(
            "gapscoped keeps the newest {} idle segments and {} kernels: {} and {} older ones were let go, so the window's start may lack them",
            super::engine::MAX_RECENT_SEGMENTS,
            crate::cupti::ingest::MAX_RECENT_KERNELS,
            inp.segments_evicted,
            inp.kernels_evicted
        ));
    }
    if inp.requests_evicted > 0 {
        notes.push(format!(
            "gapscoped keeps the load generator's newest {} requests: {} older ones were let go, so the window's start may lack them",
            crate::annotations::REQUESTS_KEPT,
            inp.requests_evicted
        ));
    }
    let trace = json!({
        "displayTimeUnit": "ns",
        "otherData": {
            "generator": "gapscoped",
            "service": inp.service,
            "clock": "CLOCK_MONOTONIC, microseconds",
            "window_start_ns": inp.start_ns,
            "window_end_ns": inp.end_ns,
            "counts": counts,
            "notes": notes,
        },
    });
    // The events are serialized straight into the text, not through a
    // JSON tree: a busy service's trace holds hundreds of thousands.
    let mut text = serde_json::to_string(&trace).expect("plain JSON");
    text.pop();
    text.push_str(",\"traceEvents\":");
    text.push_str(&serde_json::to_string(&meta).expect("plain JSON"));
    text.push('}');
    text
}
