//! The timeline's own counters: long stalls received per service and
//! kind, and what the window holds. (Intervals the kernel could not send
//! are `gapscope_events_dropped_total{source="timeline"}`.)

use super::Family;
use crate::state::DaemonState;
use gapscope_ebpf_common::IntervalKind;

pub(super) fn collect(state: &DaemonState) -> Vec<Family> {
    let (received, retained, evicted) = match state.timeline.lock() {
        Ok(t) => (t.received().clone(), t.retained(), t.evicted()),
        Err(_) => return Vec::new(),
    };
    let mut intervals = Family::counter(
        "gapscope_timeline_intervals_total",
        "Timeline intervals received: stalls longer than [timeline] min_interval_us (GIL waits, serialization calls, host syncs, stretches off CPU), launches after a quiet stretch and CUPTI busy stretches; served by /api/v1/intervals.",
    );
    for ((service, kind), n) in &received {
        if let Some(name) = state.exported_service_name(*service) {
            intervals.add_counter(
                &[("service", &name), ("kind", IntervalKind::label_of(*kind))],
                *n as f64,
            );
        }
    }
    let mut held = Family::gauge(
        "gapscope_timeline_intervals_retained",
        "Intervals in the timeline window now (bounded by [timeline] retention_s and max_intervals).",
    );
    held.add_gauge(&[], retained as f64);
    let mut lost = Family::counter(
        "gapscope_timeline_intervals_evicted_total",
        "Intervals dropped from the window before retention_s because it held max_intervals.",
    );
    lost.add_counter(&[], evicted as f64);
    let (received, active, tokens) = match state.annotations.lock() {
        Ok(a) => (a.received.clone(), a.active.clone(), a.output_tokens),
        Err(_) => Default::default(),
    };
    let mut output_tokens = Family::counter(
        "gapscope_loadgen_output_tokens_total",
        "Output tokens the load generator counted, from its phase annotations: the denominator of launches and kernels per token.",
    );
    output_tokens.add_counter(&[], tokens as f64);
    let mut notes = Family::counter(
        "gapscope_annotations_total",
        "Phase annotations received from the load generator (POST /api/v1/annotations), by event.",
    );
    for (event, n) in &received {
        notes.add_counter(&[("event", event)], *n as f64);
    }
    let mut phase = Family::gauge(
        "gapscope_loadgen_phase_active",
        "1 while a load generator phase announced by an annotation is running (at most 16 at once).",
    );
    for (phase_name, kind) in active.keys() {
        phase.add_gauge(&[("phase", phase_name), ("kind", kind)], 1.0);
    }
    vec![intervals, held, lost, notes, phase, output_tokens]
}
