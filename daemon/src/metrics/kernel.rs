//! Metrics decoded from the kernel maps: syscalls, CPU time by reason, and
//! the events the programs saw and dropped.

use std::collections::BTreeMap;

use gapscope_ebpf_common::{Log2Hist, OffCpuReason, OffCpuStats, counter};

use super::{Family, merged};
use crate::syscall_table;
use crate::{
    explain::snapshot::{Counter, Key},
    state::DaemonState,
};

pub(super) fn collect(state: &DaemonState) -> Vec<Family> {
    let mut out = syscalls(state);
    out.extend(cpu_time(state));
    out
}

fn syscalls(state: &DaemonState) -> Vec<Family> {
    let mut hist = Family::histogram(
        "gapscope_syscall_duration_seconds",
        "Syscall latency from entry to return, per service and syscall (the _count is the number of calls).",
    );
    let mut seen = 0u64;
    for ((service, nr), h) in &read_syscalls(state) {
        let Some(service) = state.exported_service_name(*service) else {
            continue;
        };
        seen += h.count;
        let name = syscall_table::name(*nr);
        hist.add_log2_histogram(&[("service", &service), ("syscall", &name)], h);
    }

    let count = |index: u32| count(state, index);
    let mut events = Family::counter(
        "gapscope_events_total",
        "Events the BPF programs handled, per source.",
    );
    events.add_counter(&[("source", "syscall")], seen as f64);
    events.add_counter(&[("source", "sched")], count(counter::SCHED_SWITCHES));
    events.add_counter(&[("source", "proc")], count(counter::PROC_EVENTS));
    events.add_counter(&[("source", "timeline")], count(counter::INTERVALS));
    let mut dropped = Family::counter(
        "gapscope_events_dropped_total",
        "Events the BPF programs could not record (a full map or ring buffer), per source.",
    );
    for (source, n) in dropped_by_source(state) {
        dropped.add_counter(&[("source", source)], n);
    }
    let mut misses = Family::counter(
        "gapscope_target_cache_misses_total",
        "Lookups of the current process that the per-CPU cache could not answer and that went to the tgid map.",
    );
    misses.add_counter(&[], count(counter::TARGET_CACHE_MISSES));
    vec![hist, events, dropped, misses]
}

/// The (service, syscall) histograms, summed over the CPUs; sorted, so
/// the output is stable between scrapes.
fn read_syscalls(state: &DaemonState) -> BTreeMap<(u32, u32), Log2Hist> {
    let mut merged: BTreeMap<(u32, u32), Log2Hist> = BTreeMap::new();
    for entry in state.maps.syscalls.iter() {
        let Ok((key, per_cpu)) = entry else { continue };
        let total = merged
            .entry((key.service, key.nr))
            .or_insert(Log2Hist::ZERO);
        for h in per_cpu.iter() {
            total.merge(h);
        }
    }
    merged
}

/// One of the programs' per-CPU counters, summed.
fn count(state: &DaemonState, index: u32) -> f64 {
    state
        .maps
        .counters
        .get(&index, 0)
        .map(|v| v.iter().sum::<u64>() as f64)
        .unwrap_or(0.0)
}

/// Events the programs could not record, by source.
fn dropped_by_source(state: &DaemonState) -> [(&'static str, f64); 4] {
    let count = |index: u32| count(state, index);
    [
        ("syscall", count(counter::SYSCALLS_DROPPED)),
        (
            "sched",
            count(counter::THREADS_DROPPED) + count(counter::SWITCHES_UNSEEN),
        ),
        (
            "proc",
            count(counter::PROC_EVENTS_DROPPED) + count(counter::TARGETS_DROPPED),
        ),
        ("timeline", count(counter::INTERVALS_DROPPED)),
    ]
}

/// The kernel maps' counters an explain report differences: syscalls, CPU
/// time by reason, drops.
pub(super) fn counters(state: &DaemonState, out: &mut Vec<(Key, f64)>) {
    let services = state.services.all().len() as u32;
    for ((service, nr), h) in read_syscalls(state) {
        if service < services {
            out.push((Key::of(service, Counter::SyscallCalls(nr)), h.count as f64));
            out.push((
                Key::of(service, Counter::SyscallSeconds(nr)),
                h.sum_ns as f64 / 1e9,
            ));
        }
    }
    for service in 0..services {
        let total: OffCpuStats = merged(&state.maps.offcpu, service);
        out.push((
            Key::of(service, Counter::OnCpuSeconds),
            total.on_cpu_ns as f64 / 1e9,
        ));
        for reason in OffCpuReason::ALL {
            let seconds = total.off_ns[reason as usize] as f64 / 1e9;
            out.push((
                Key::of(service, Counter::OffCpuSeconds(reason as u32)),
                seconds,
            ));
        }
    }
    for (source, n) in dropped_by_source(state) {
        out.push((Key::daemon(Counter::EventsDropped(source)), n));
    }
}

fn cpu_time(state: &DaemonState) -> Vec<Family> {
    let mut on = Family::counter(
        "gapscope_oncpu_seconds_total",
        "Time the service's threads spent running on a CPU.",
    );
    let mut off = Family::counter(
        "gapscope_offcpu_seconds_total",
        "Time the service's threads spent off CPU, by reason: blocked in a syscall of a family, blocked elsewhere, or runnable and waiting for a CPU (runqueue).",
    );
    let mut runq = Family::histogram(
        "gapscope_runqueue_latency_seconds",
        "How long the service's threads waited for a CPU once runnable.",
    );
    for (id, service) in state
        .services
        .all()
        .iter()
        .enumerate()
        .filter(|(_, s)| !s.retired)
    {
        let total: OffCpuStats = merged(&state.maps.offcpu, id as u32);
        let name = service.name.as_str();
        on.add_counter(&[("service", name)], total.on_cpu_ns as f64 / 1e9);
        for reason in OffCpuReason::ALL {
            off.add_counter(
                &[("service", name), ("reason", reason.label())],
                total.off_ns[reason as usize] as f64 / 1e9,
            );
        }
        runq.add_log2_histogram(&[("service", name)], &total.runq);
    }
    vec![on, off, runq]
}
