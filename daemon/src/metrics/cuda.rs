//! CUDA API calls per service, from the uprobes on libcuda and libcudart:
//! kernel and graph launches by entry point (estimated when the launch
//! probes are duty-cycled), launch call durations, and host-sync waits.

use super::Family;
use crate::cuda::{ENTRY_POINTS, Role};
use crate::{
    explain::snapshot::{Counter, Key},
    state::DaemonState,
};

pub(super) fn collect(state: &DaemonState) -> Vec<Family> {
    let Ok(t) = state.targets.lock() else {
        return Vec::new();
    };
    let Some(cuda) = &t.cuda else {
        return Vec::new();
    };
    let mut launches = Family::counter(
        "gapscope_cuda_launches_total",
        "Kernel launches per CUDA entry point; estimated (launches seen × N) while the launch probes are attached one second in N (see gapscope_cuda_launch_sampling_ratio). A runtime launch also reaches the driver: compare within one api.",
    );
    let mut graphs = Family::counter(
        "gapscope_cuda_graph_launches_total",
        "CUDA graph launches (each runs many kernels); estimated like gapscope_cuda_launches_total.",
    );
    let mut launch_time = Family::histogram(
        "gapscope_cuda_launch_call_duration_seconds",
        "CPU time inside a launch call, per entry point (a sample of launches when the probes are duty-cycled).",
    );
    let mut sync = Family::histogram(
        "gapscope_cuda_host_sync_wait_seconds",
        "Time the CPU waited for the GPU inside a synchronizing CUDA call (stream, context or event synchronize, a synchronous copy); every call is probed.",
    );
    for c in cuda.slot_calls() {
        let (Some(service), Some(entry)) = (
            state.exported_service_name(c.service),
            ENTRY_POINTS.get(c.slot),
        ) else {
            continue;
        };
        let api = entry.library.api();
        match entry.role {
            Role::Launch => {
                launches.add_counter(
                    &[("service", &service), ("api", api), ("entry", entry.name)],
                    c.estimated.round(),
                );
                launch_time.add_log2_histogram(
                    &[("service", &service), ("api", api), ("entry", entry.name)],
                    &c.hist,
                );
            }
            Role::GraphLaunch => {
                graphs.add_counter(&[("service", &service), ("api", api)], c.estimated.round());
                launch_time.add_log2_histogram(
                    &[("service", &service), ("api", api), ("entry", entry.name)],
                    &c.hist,
                );
            }
            Role::HostSync => sync.add_log2_histogram(
                &[("service", &service), ("api", api), ("call", entry.name)],
                &c.hist,
            ),
        }
    }
    let mut sampling = Family::gauge(
        "gapscope_cuda_launch_sampling_ratio",
        "Share of launches the launch probes see: 1 while within [cuda] launch_budget (exact counts), 1/N while attached one second in N (counts are estimates).",
    );
    for (entry, ratio) in ENTRY_POINTS.iter().zip(cuda.sampling_ratios()) {
        if entry.budgeted() {
            sampling.add_gauge(
                &[("api", entry.library.api()), ("entry", entry.name)],
                ratio,
            );
        }
    }
    let mut processes = Family::gauge(
        "gapscope_cuda_processes",
        "Traced processes mapping a CUDA library, by api (driver: libcuda, runtime: libcudart).",
    );
    for ((service, library), n) in cuda.processes() {
        if let Some(name) = state.exported_service_name(service) {
            processes.add_gauge(&[("service", &name), ("api", library.api())], n as f64);
        }
    }
    let mut unavailable = Family::gauge(
        "gapscope_cuda_unavailable_processes",
        "Traced processes whose CUDA library cannot be probed (it exports none of the entry points, or attaching failed); the log says why.",
    );
    for ((service, library), n) in cuda.unavailable() {
        if let Some(name) = state.exported_service_name(service) {
            unavailable.add_gauge(&[("service", &name), ("api", library.api())], n as f64);
        }
    }
    let mut files = Family::gauge(
        "gapscope_cuda_probed_files",
        "CUDA library files carrying probes (each attached once, whatever the number of processes using it).",
    );
    files.add_gauge(&[], cuda.probed_files() as f64);
    let mut sites = Family::gauge(
        "gapscope_cuda_probe_sites",
        "Probe sites per CUDA entry point (its exported names, in every file a traced process maps; attached, or paused by the launch budget), by the instruction the probe sits on: push, nop, other (unclassified off x86-64). Kernels that emulate a probed push or nop do it in the trap (about 0.5 µs a hit on this project's VM, kernel 6.18); other instructions are single-stepped in a second trap (about 20 µs a hit there). A leading endbr64 followed by a push is stepped over.",
    );
    for ((slot, instruction), n) in cuda.probe_sites() {
        if let Some(entry) = ENTRY_POINTS.get(slot) {
            sites.add_gauge(
                &[
                    ("api", entry.library.api()),
                    ("entry", entry.name),
                    ("instruction", instruction.name()),
                ],
                n as f64,
            );
        }
    }
    vec![
        launches,
        graphs,
        launch_time,
        sync,
        sampling,
        processes,
        unavailable,
        files,
        sites,
    ]
}

/// Kernel and graph launches per service and API, for explain reports.
pub(super) fn counters(state: &DaemonState, out: &mut Vec<(Key, f64)>) {
    let Ok(t) = state.targets.lock() else {
        return;
    };
    let Some(cuda) = &t.cuda else {
        return;
    };
    let mut sums: std::collections::BTreeMap<Key, f64> = std::collections::BTreeMap::new();
    for c in cuda.slot_calls() {
        let Some(entry) = ENTRY_POINTS.get(c.slot) else {
            continue;
        };
        let api = entry.library.api();
        let counter = match entry.role {
            Role::Launch => Counter::Launches(api),
            Role::GraphLaunch => Counter::GraphLaunches(api),
            Role::HostSync => continue,
        };
        *sums.entry(Key::of(c.service, counter)).or_default() += c.estimated.round();
    }
    out.extend(sums);
}
