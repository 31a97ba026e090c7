//! The attribution's counters: GPU idle time by cause and its busy
//! counterpart per (service, device), so that busy + idle by cause is the
//! wall time since the service's GPU work was first seen; and the
//! explainer's own health.

use super::Family;
use crate::explain::Cause;
use crate::state::DaemonState;

pub(super) fn collect(state: &DaemonState) -> Vec<Family> {
    let mut idle = Family::counter(
        "gapscope_gpu_idle_seconds_total",
        "GPU idle time by cause: what the service's launching threads were doing during each idle gap (launch_overhead, host_sync, gil_wait, serialization, python_cpu, unobserved, runqueue, syscall_<family>, blocked_other, no_work); source cupti is exact, uprobes a lower bound (device all). Counted when a gap closes.",
    );
    let mut by_function = Family::counter(
        "gapscope_gpu_idle_serialization_seconds_total",
        "The serialization part of gapscope_gpu_idle_seconds_total by function (codec, op, as gapscope_serialization_duration_seconds names them; probes sharing names are summed): the parts sum to the cause. Every configured function has a series, from 0.",
    );
    let mut busy = Family::counter(
        "gapscope_gpu_timeline_busy_seconds_total",
        "GPU busy time on the attribution's timeline: with gapscope_gpu_idle_seconds_total it adds up to the wall time since the service's GPU work was first seen.",
    );
    let mut gaps = Family::counter("gapscope_gpu_idle_gaps_total", "Idle gaps attributed.");
    let mut idle_energy = Family::counter(
        "gapscope_gpu_idle_energy_joules_total",
        "Energy the GPU drew while idle, by cause: each idle segment priced on NVML's readings (the energy counter's increase between readings, else the power readings). Counted once a reading past the segment arrived; time no reading priced is in gapscope_gpu_energy_unpriced_seconds_total.",
    );
    let mut busy_energy = Family::counter(
        "gapscope_gpu_timeline_busy_energy_joules_total",
        "Energy the GPU drew while busy on the attribution's timeline: with gapscope_gpu_idle_energy_joules_total, the GPU's energy over the priced time.",
    );
    let mut unpriced = Family::counter(
        "gapscope_gpu_energy_unpriced_seconds_total",
        "Busy and idle time on the attribution's timeline that has no energy figure: NVML down or never read, before its first reading, or a CUDA device of a service on several GPUs (the injection library does not send device UUIDs).",
    );
    let mut launchers = Family::gauge(
        "gapscope_explain_launching_threads",
        "Threads seen launching GPU work or waiting on it within [explain] window_s: the threads whose states explain an idle gap.",
    );
    let mut states = Family::counter(
        "gapscope_explain_states_total",
        "Thread states (timeline intervals) the attribution received.",
    );
    let mut stretches = Family::counter(
        "gapscope_explain_stretches_lost_total",
        "CUPTI busy stretches the attribution could not use in full: explainer_behind (the daemon's loop did not take them before a million waited; their gaps are not attributed), attributed_early (too many waited to settle: attributed before late states could arrive).",
    );
    let mut evicted = Family::counter(
        "gapscope_explain_states_evicted_total",
        "Thread states dropped before [explain] window_s to stay within [explain] max_states.",
    );
    let mut open = Family::gauge(
        "gapscope_gpu_idle_open_seconds",
        "How long the GPU has been idle in a gap that has not ended (0 when it has work, or its service has no process): with CUPTI, since the device's last busy stretch with no CUDA call since; with the uprobes alone, since the last host sync returned with nothing launched since. Shown once a gap is 1 s old; gapscoped explain attributes it so far.",
    );
    // Read before the explainer is locked: an open gap counts only while
    // its service has a process.
    let (live, codecs): (Vec<u64>, Vec<(String, String)>) = state
        .targets
        .lock()
        .map(|t| (t.counts(), t.serialization.names()))
        .unwrap_or_default();
    let now = crate::clock::monotonic_ns();
    let e = state
        .explainer
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for ((service, device), (source, h)) in &e.histories {
        let Some(name) = state.exported_service_name(*service) else {
            continue;
        };
        let l = [
            ("service", name.as_str()),
            ("device", device.as_str()),
            ("source", source.label()),
        ];
        for c in Cause::ALL {
            idle.add_counter(
                &[l[0], l[1], l[2], ("cause", c.label())],
                h.totals.idle_ns[c.index()] as f64 / 1e9,
            );
        }
        let mut functions: std::collections::BTreeMap<&(String, String), u64> =
            std::collections::BTreeMap::new();
        for (names, ns) in codecs.iter().zip(h.totals.serialization_ns.iter()) {
            *functions.entry(names).or_default() += ns;
        }
        for ((codec, op), ns) in functions {
            by_function.add_counter(
                &[l[0], l[1], l[2], ("codec", codec), ("op", op)],
                ns as f64 / 1e9,
            );
        }
        for c in Cause::ALL {
            idle_energy.add_counter(
                &[l[0], l[1], l[2], ("cause", c.label())],
                h.totals.idle_uj[c.index()] as f64 / 1e6,
            );
        }
        busy_energy.add_counter(&l, h.totals.busy_uj as f64 / 1e6);
        unpriced.add_counter(&l, h.totals.unpriced_ns as f64 / 1e9);
        busy.add_counter(&l, h.totals.busy_ns as f64 / 1e9);
        let alive = live.get(*service as usize).is_some_and(|n| *n > 0);
        let open_s = e
            .open(*service)
            .iter()
            .find(|g| g.device == *device && g.source == *source)
            .filter(|_| alive)
            .map_or(0.0, |g| now.saturating_sub(g.since_ns) as f64 / 1e9);
        open.add_gauge(&l, open_s);
        gaps.add_counter(&l, h.totals.gaps as f64);
    }
    for (id, s) in state
        .services
        .all()
        .iter()
        .enumerate()
        .filter(|(_, s)| !s.retired)
    {
        launchers.add_gauge(&[("service", &s.name)], e.launchers(id as u32) as f64);
    }
    states.add_counter(&[], e.counters.states as f64);
    let behind = state.cupti.as_ref().map_or(0, |d| {
        d.ingest
            .lock()
            .map(|i| i.stretches_dropped)
            .unwrap_or_default()
    });
    stretches.add_counter(&[("why", "explainer_behind")], behind as f64);
    stretches.add_counter(&[("why", "attributed_early")], e.counters.early as f64);
    evicted.add_counter(&[], e.counters.evicted as f64);
    vec![
        idle,
        by_function,
        busy,
        gaps,
        idle_energy,
        busy_energy,
        unpriced,
        open,
        launchers,
        states,
        evicted,
        stretches,
    ]
}
