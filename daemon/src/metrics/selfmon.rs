//! Gapscope's own health: build, processes matched, BPF program cost.

use super::Family;
use crate::state::DaemonState;

pub(super) fn collect(state: &DaemonState) -> Vec<Family> {
    let mut build = Family::gauge(
        "gapscope_build_info",
        "Always 1; the labels say which gapscoped this is.",
    );
    build.add_gauge(
        &[
            ("version", env!("CARGO_PKG_VERSION")),
            (
                "revision",
                option_env!("GAPSCOPE_REVISION").unwrap_or("unknown"),
            ),
        ],
        1.0,
    );

    let mut processes = Family::gauge(
        "gapscope_service_processes",
        "Processes currently traced for each service.",
    );
    let counts = state.targets.lock().map(|t| t.counts()).unwrap_or_default();
    for (service, n) in state.services.iter().zip(&counts) {
        processes.add_gauge(&[("service", &service.name)], *n as f64);
    }

    let mut entries = Family::gauge(
        "gapscope_bpf_map_entries",
        "Entries in each of gapscoped's BPF maps (bounded: dead processes and threads are removed).",
    );
    entries.add_gauge(&[("map", "targets")], counts.iter().sum::<u64>() as f64);
    entries.add_gauge(
        &[("map", "threads")],
        state.maps.threads.keys().count() as f64,
    );
    entries.add_gauge(
        &[("map", "syscalls")],
        state.maps.syscalls.keys().count() as f64,
    );

    let mut up = Family::gauge(
        "gapscope_collector_up",
        "1 when the collector is attached and working, 0 when it is not.",
    );
    // Alerts need to tell "turned off" from "broken".
    let mut configured = Family::gauge(
        "gapscope_collector_enabled",
        "1 when the configuration turns the collector on (alert on up == 0 only where this is 1).",
    );
    let flag = |on: bool| if on { 1.0 } else { 0.0 };
    for collector in ["syscalls", "offcpu", "proc"] {
        up.add_gauge(&[("collector", collector)], 1.0);
        configured.add_gauge(&[("collector", collector)], 1.0);
    }
    // The CUDA probes run whenever they are configured on.
    let cuda = state.targets.lock().is_ok_and(|t| t.cuda.is_some());
    up.add_gauge(&[("collector", "cuda")], flag(cuda));
    configured.add_gauge(&[("collector", "cuda")], flag(cuda));
    let (nvml_enabled, nvml_up) = state
        .nvml
        .lock()
        .map(|g| (g.enabled, g.up))
        .unwrap_or_default();
    up.add_gauge(&[("collector", "nvml")], flag(nvml_up));
    configured.add_gauge(&[("collector", "nvml")], flag(nvml_enabled));
    configured.add_gauge(&[("collector", "deep")], flag(state.cupti.is_some()));
    up.add_gauge(&[("collector", "deep")], flag(state.cupti.is_some()));

    let mut stats_on = Family::gauge(
        "gapscope_bpf_stats_enabled",
        "1 when the kernel collects BPF run-time statistics for gapscoped's programs.",
    );
    let (enabled, programs) = match state.probes.lock() {
        Ok(p) => (p.stats_enabled(), p.program_stats()),
        Err(_) => (false, Vec::new()),
    };
    stats_on.add_gauge(&[], if enabled { 1.0 } else { 0.0 });
    let mut run_time = Family::counter(
        "gapscope_bpf_program_run_seconds_total",
        "Time the kernel spent running each BPF program (0 while statistics are off).",
    );
    let mut runs = Family::counter(
        "gapscope_bpf_program_runs_total",
        "Times each BPF program ran (0 while statistics are off).",
    );
    for p in programs {
        run_time.add_counter(&[("program", p.name)], p.run_time_ns as f64 / 1e9);
        runs.add_counter(&[("program", p.name)], p.run_count as f64);
    }
    vec![
        build, processes, entries, up, configured, stats_on, run_time, runs,
    ]
}
