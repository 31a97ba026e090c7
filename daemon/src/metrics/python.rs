//! CPython's GIL per service: waits (measured in the kernel, one
//! observation per contended acquisition), time held and hand-overs
//! (sampled from the GIL's own state), and which processes are covered.

use std::collections::BTreeSet;

use gapscope_ebpf_common::MAX_SER_PROBES;

use super::{Family, merged};
use crate::{
    explain::snapshot::{Counter, Key},
    state::DaemonState,
};

pub(super) fn collect(state: &DaemonState) -> Vec<Family> {
    let (processes, unavailable, stats, ser_missing, probed_files, ratios, specs, sites) =
        match state.targets.lock() {
            Ok(t) => (
                t.gil.processes(),
                t.gil.unavailable(),
                t.gil.stats(),
                t.serialization.unavailable(),
                t.serialization.probed_files(),
                t.serialization.sampling_ratios(),
                t.serialization.specs(),
                t.serialization.probe_sites(),
            ),
            Err(_) => return Vec::new(),
        };
    let mut python = Family::gauge(
        "gapscope_python_processes",
        "Traced processes running CPython whose GIL is traced, by interpreter version.",
    );
    for ((service, version), n) in &processes {
        if let Some(name) = state.exported_service_name(*service) {
            python.add_gauge(&[("service", &name), ("version", version)], *n as f64);
        }
    }
    let mut missing = Family::gauge(
        "gapscope_gil_unavailable_processes",
        "Traced Python processes whose GIL cannot be traced, by reason (free_threaded, unsupported_version, no_runtime_symbol, starting); the log says how to fix it.",
    );
    for ((service, reason), n) in &unavailable {
        if let Some(name) = state.exported_service_name(*service) {
            missing.add_gauge(&[("service", &name), ("reason", reason)], *n as f64);
        }
    }

    let mut wait = Family::histogram(
        "gapscope_gil_wait_seconds",
        "Time a thread waited for the GIL, one observation per contended acquisition (uncontended acquisitions cost no wait and are not counted).",
    );
    let mut held = Family::counter(
        "gapscope_gil_held_seconds_total",
        "Time the GIL was held by some thread, summed over the service's processes (sampled every 10 ms).",
    );
    let mut switches = Family::counter(
        "gapscope_gil_switches_total",
        "Times the GIL passed from one thread to another (CPython's own switch_number).",
    );
    let services: BTreeSet<u32> = processes
        .keys()
        .map(|(s, _)| *s)
        .chain(stats.keys().copied())
        .collect();
    for service in services {
        let Some(name) = state.exported_service_name(service) else {
            continue;
        };
        wait.add_log2_histogram(
            &[("service", &name)],
            &merged(&state.maps.gil_wait, service),
        );
        let s = stats.get(&service).copied().unwrap_or_default();
        held.add_counter(&[("service", &name)], s.held_ns as f64 / 1e9);
        switches.add_counter(&[("service", &name)], s.switches as f64);
    }
    let mut calls = Family::histogram(
        "gapscope_serialization_duration_seconds",
        "Time in the C function doing a serialization call, per codec and direction (the _count is the number of calls).",
    );
    let python_services: BTreeSet<u32> = processes.keys().map(|(s, _)| *s).collect();
    for service in &python_services {
        let Some(name) = state.exported_service_name(*service) else {
            continue;
        };
        for (index, spec) in specs.iter().enumerate() {
            let slot = service * MAX_SER_PROBES + index as u32;
            calls.add_log2_histogram(
                &[("service", &name), ("codec", &spec.codec), ("op", &spec.op)],
                &merged(&state.maps.ser_calls, slot),
            );
        }
    }
    let mut ser_unavailable = Family::gauge(
        "gapscope_serialization_unavailable_processes",
        "Traced Python processes whose codec cannot be probed (its functions are not in the symbol table: a stripped build); the log says how to fix it.",
    );
    for ((service, codec), n) in &ser_missing {
        if let Some(name) = state.exported_service_name(*service) {
            ser_unavailable.add_gauge(&[("service", &name), ("codec", codec)], *n as f64);
        }
    }
    let mut files = Family::gauge(
        "gapscope_serialization_probed_files",
        "Library files carrying serialization probes (each attached once, whatever the number of processes using it).",
    );
    files.add_gauge(&[], probed_files as f64);
    let mut sampling = Family::gauge(
        "gapscope_serialization_sampling_ratio",
        "Share of calls a serialization probe sees: 1 within [python] serialization_budget calls per second, 1/N when a busier probe is attached one second in N (divide counts by it to estimate all calls).",
    );
    for (spec, ratio) in specs.iter().zip(&ratios) {
        sampling.add_gauge(&[("codec", &spec.codec), ("op", &spec.op)], *ratio);
    }
    let mut probe_sites = Family::gauge(
        "gapscope_serialization_probe_sites",
        "Serialization probe sites per codec function (attached, or paused by the budget), by the instruction the probe sits on: push, nop, other (unclassified off x86-64); kernels that emulate a probed push or nop do it in the trap, other instructions are single-stepped in a second trap (tens of times the price on a VM); a leading endbr64 followed by a push is stepped over.",
    );
    for ((probe, instruction), n) in &sites {
        if let Some(spec) = specs.get(*probe) {
            probe_sites.add_gauge(
                &[
                    ("codec", &spec.codec),
                    ("op", &spec.op),
                    ("instruction", instruction.name()),
                ],
                *n as f64,
            );
        }
    }
    vec![
        python,
        missing,
        wait,
        held,
        switches,
        calls,
        ser_unavailable,
        files,
        sampling,
        probe_sites,
    ]
}

/// The GIL's and the codecs' counters an explain report differences.
pub(super) fn counters(state: &DaemonState, out: &mut Vec<(Key, f64)>) {
    let (processes, stats, codecs) = match state.targets.lock() {
        Ok(t) => (
            t.gil.processes(),
            t.gil.stats(),
            t.serialization.specs().len() as u32,
        ),
        Err(_) => return,
    };
    let services = state.services.all().len() as u32;
    let python: BTreeSet<u32> = processes.keys().map(|(s, _)| *s).collect();
    for service in python
        .iter()
        .chain(stats.keys())
        .copied()
        .collect::<BTreeSet<_>>()
    {
        if service >= services {
            continue;
        }
        let wait = merged(&state.maps.gil_wait, service);
        out.push((Key::of(service, Counter::GilWaits), wait.count as f64));
        out.push((
            Key::of(service, Counter::GilWaitSeconds),
            wait.sum_ns as f64 / 1e9,
        ));
        let held = stats.get(&service).map_or(0, |s| s.held_ns);
        out.push((Key::of(service, Counter::GilHeldSeconds), held as f64 / 1e9));
    }
    for service in python.into_iter().filter(|s| *s < services) {
        for index in 0..codecs {
            let calls = merged(&state.maps.ser_calls, service * MAX_SER_PROBES + index);
            out.push((
                Key::of(service, Counter::CodecCalls(index)),
                calls.count as f64,
            ));
            let seconds = calls.sum_ns as f64 / 1e9;
            out.push((Key::of(service, Counter::CodecSeconds(index)), seconds));
        }
    }
}
