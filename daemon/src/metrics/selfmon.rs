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
    let mut started = Family::counter(
        "gapscope_service_processes_traced_total",
        "Processes that started being traced for each service: matched (at exec or a rescan) or followed from a traced parent at fork.",
    );
    let (counts, starts) = state
        .targets
        .lock()
        .map(|t| (t.counts(), t.started().to_vec()))
        .unwrap_or_default();
    for ((service, n), s) in state.services.all().iter().zip(&counts).zip(&starts) {
        if service.retired {
            continue;
        }
        processes.add_gauge(&[("service", &service.name)], *n as f64);
        started.add_counter(&[("service", &service.name)], *s as f64);
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
        "1 while the kernel collects BPF run-time statistics for gapscoped's programs \
         (with [daemon] bpf_stats = \"sampled\", one window of every period).",
    );
    let mut sampled = Family::counter(
        "gapscope_bpf_stats_sampled_seconds_total",
        "Wall time the BPF run-time statistics were on. rate(gapscope_bpf_program_run_seconds_total) \
         / rate(this) estimates the programs' share of a CPU, sampled or not.",
    );
    let (enabled, sampled_s, programs) = match state.probes.lock() {
        Ok(p) => (
            p.stats.is_on(),
            p.stats.sampled().as_secs_f64(),
            p.program_stats(),
        ),
        Err(_) => (false, 0.0, Vec::new()),
    };
    stats_on.add_gauge(&[], if enabled { 1.0 } else { 0.0 });
    sampled.add_counter(&[], sampled_s);
    let mut run_time = Family::counter(
        "gapscope_bpf_program_run_seconds_total",
        "Time the kernel measured running each BPF program while the statistics were on \
         (see gapscope_bpf_stats_sampled_seconds_total).",
    );
    let mut runs = Family::counter(
        "gapscope_bpf_program_runs_total",
        "Times each BPF program ran while the statistics were on.",
    );
    let mut misses = Family::counter(
        "gapscope_bpf_program_misses_total",
        "Times the kernel skipped a BPF program because its CPU was already inside BPF (another \
         program, or a BPF map syscall whose thread was preempted): events gapscoped never saw. \
         Counted whether or not statistics are on; absent before Linux 6.7 for tracepoints.",
    );
    for p in programs {
        run_time.add_counter(&[("program", p.name)], p.run_time_ns as f64 / 1e9);
        runs.add_counter(&[("program", p.name)], p.run_count as f64);
        if let Some(n) = p.misses {
            misses.add_counter(&[("program", p.name)], n as f64);
        }
    }
    let mut families = vec![
        build, processes, started, entries, up, configured, stats_on, sampled, run_time, runs,
        misses,
    ];
    families.extend(http());
    families
}

/// What the HTTP server turned away (`web::serve`, `web::auth`).
fn http() -> Vec<Family> {
    use std::sync::atomic::Ordering::Relaxed;

    use crate::web::{auth, serve::STATS};
    let mut open = Family::gauge(
        "gapscope_http_connections_open",
        "HTTP connections open now (at most daemon.http_max_connections).",
    );
    open.add_gauge(&[], STATS.open.load(Relaxed) as f64);
    let mut refused = Family::counter(
        "gapscope_http_connections_refused_total",
        "HTTP connections answered 503 and closed because daemon.http_max_connections were open.",
    );
    refused.add_counter(&[], STATS.refused.load(Relaxed) as f64);
    let mut timeouts = Family::counter(
        "gapscope_http_timeouts_total",
        "HTTP connections closed for want of a request head within daemon.http_header_timeout_ms \
         (idle kept-alive ones included; phase=head), and requests answered 408 for want of \
         their body within daemon.http_body_timeout_ms (phase=body).",
    );
    timeouts.add_counter(
        &[("phase", "head")],
        STATS.head_timeouts.load(Relaxed) as f64,
    );
    timeouts.add_counter(
        &[("phase", "body")],
        STATS.body_timeouts.load(Relaxed) as f64,
    );
    let mut auth_refused = Family::counter(
        "gapscope_http_auth_refused_total",
        "Requests refused by basic auth: wrong or missing credentials (401), or new credentials \
         left unchecked while every bcrypt slot was busy (429).",
    );
    for (reason, n) in auth::REFUSED_REASONS.iter().zip(&auth::REFUSED) {
        auth_refused.add_counter(&[("reason", reason)], n.load(Relaxed) as f64);
    }
    vec![open, refused, timeouts, auth_refused]
}
