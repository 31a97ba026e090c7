//! CUPTI deep mode: what the GPU did for each service, from the records
//! the injection library streams (kernels by class, busy time, idle gaps,
//! launch latency, copies, synchronization), and the socket's own health.
//! `device` is the CUDA device ordinal the process saw (with
//! CUDA_VISIBLE_DEVICES it need not be NVML's `gpu` index);
//! `gapscope_cuda_device_info` names its GPU by `UUID`, NVML's label.

use super::Family;
use crate::cupti::ingest::IngestCounters;
use crate::{
    explain::snapshot::{Counter, Key},
    state::DaemonState,
};

pub(super) fn collect(state: &DaemonState) -> Vec<Family> {
    let Some(deep) = &state.cupti else {
        return Vec::new();
    };
    let mut kernels = Family::histogram(
        "gapscope_gpu_kernel_duration_seconds",
        "Kernel durations on the GPU by class (gemm, attention, norm, elementwise, reduce, copy, communication, other; the _count is the kernels); exact names: /api/v1/kernels.",
    );
    let mut busy = Family::counter(
        "gapscope_gpu_busy_seconds_total",
        "Time the device ran the service's kernels, copies or memsets: the union of their intervals, so overlapping streams count once.",
    );
    let mut gaps = Family::histogram(
        "gapscope_gpu_idle_gap_seconds",
        "Idle gaps between the service's busy stretches on the device.",
    );
    let mut latency = Family::histogram(
        "gapscope_gpu_launch_latency_seconds",
        "From the CUDA API call that launched a kernel to the kernel's start on the GPU.",
    );
    let mut copies = Family::counter(
        "gapscope_gpu_copy_bytes_total",
        "Bytes copied by CUDA memcpy, by direction.",
    );
    let mut memset = Family::counter(
        "gapscope_gpu_memset_bytes_total",
        "Bytes set by CUDA memset.",
    );
    let mut sync = Family::histogram(
        "gapscope_gpu_sync_wait_seconds",
        "CUDA synchronizations CUPTI recorded (stream, event, context waits).",
    );
    let mut info = Family::gauge(
        "gapscope_cuda_device_info",
        "1 for each GPU (UUID, as NVML's series label it) the service's processes said a CUDA device ordinal is: join deep mode's series to NVML's on it. Two UUIDs for one ordinal: processes with different CUDA_VISIBLE_DEVICES.",
    );
    let mut late = Family::counter(
        "gapscope_inject_late_intervals_total",
        "Activity intervals that arrived after their time was already settled (clipped; a sender flushing slower than [inject] reorder_window_ms).",
    );
    let counters = {
        let ingest = deep
            .ingest
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for ((service, device), s) in &ingest.stats {
            let Some(name) = state.exported_service_name(*service) else {
                continue;
            };
            let device = device.to_string();
            let l = [("service", name.as_str()), ("device", device.as_str())];
            for (class, h) in &s.kernels {
                kernels.add_log2_histogram(&[l[0], l[1], ("class", class)], h);
            }
            busy.add_counter(&l, s.busy.busy_ns as f64 / 1e9);
            gaps.add_log2_histogram(&l, &s.idle_gaps);
            latency.add_log2_histogram(&l, &s.launch_latency);
            for (direction, bytes) in &s.copy_bytes {
                copies.add_counter(&[l[0], l[1], ("direction", direction)], *bytes as f64);
            }
            memset.add_counter(&l, s.memset_bytes as f64);
            sync.add_log2_histogram(&l, &s.sync_wait);
            late.add_counter(&l, s.busy.late_intervals as f64);
        }
        for ((service, device), uuids) in &ingest.device_uuids {
            let Some(name) = state.exported_service_name(*service) else {
                continue;
            };
            let device = device.to_string();
            for uuid in uuids {
                info.add_gauge(
                    &[
                        ("service", name.as_str()),
                        ("device", device.as_str()),
                        ("UUID", uuid.as_str()),
                    ],
                    1.0,
                );
            }
        }
        ingest.counters.clone()
    };
    let mut out = vec![
        kernels, busy, gaps, latency, copies, memset, sync, late, info,
    ];
    out.extend(socket_families(deep, &counters));
    out
}

fn socket_families(deep: &crate::cupti::socket::Shared, c: &IngestCounters) -> Vec<Family> {
    let stats = deep
        .stats
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut connections = Family::gauge(
        "gapscope_inject_connections",
        "Processes connected to the deep-mode socket now.",
    );
    connections.add_gauge(&[], stats.connected as f64);
    let mut accepted = Family::counter(
        "gapscope_inject_connections_total",
        "Connections the deep-mode socket accepted.",
    );
    accepted.add_counter(&[], stats.accepted as f64);
    let mut rejected = Family::counter(
        "gapscope_inject_rejected_total",
        "Connections refused or dropped, by reason: peer_credentials, too_many_peers, malformed (a bad frame), no_hello (records before a hello, or no hello within 5 s).",
    );
    // Every reason from the start, so rate() and alerts see a 0, not nothing.
    for reason in REJECT_REASONS {
        let n = stats.rejected.get(reason).copied().unwrap_or(0);
        rejected.add_counter(&[("reason", reason)], n as f64);
    }
    let mut over_rate = Family::counter(
        "gapscope_inject_frames_over_rate_total",
        "Frames dropped because a peer sent more than [inject] max_frames_per_second.",
    );
    over_rate.add_counter(&[], stats.frames_over_rate as f64);
    let mut frames = Family::counter(
        "gapscope_inject_frames_total",
        "Frames taken from the injection library, by kind.",
    );
    for (kind, n) in &c.frames {
        frames.add_counter(&[("kind", kind)], *n as f64);
    }
    let mut records = Family::counter(
        "gapscope_inject_records_total",
        "Activity records taken from the injection library.",
    );
    records.add_counter(&[], c.records as f64);
    let mut dropped = Family::counter(
        "gapscope_inject_records_dropped_total",
        "Records lost: by=sender (the injection library's buffers were full or the daemon slow), by=untraced (from a process no service traces).",
    );
    dropped.add_counter(&[("by", "sender")], c.sender_dropped_records as f64);
    dropped.add_counter(&[("by", "untraced")], c.untraced_records as f64);
    let mut clocks = Family::gauge(
        "gapscope_inject_clock_mode_connections",
        "Connections by how their timestamps reach CLOCK_MONOTONIC: callback (CUPTI's timestamp callback) or offset (a measured offset).",
    );
    for (mode, n) in &c.clock_modes {
        clocks.add_gauge(&[("mode", mode)], *n as f64);
    }
    vec![
        connections,
        accepted,
        rejected,
        over_rate,
        frames,
        records,
        dropped,
        clocks,
    ]
}

/// The reasons `deep::socket` refuses or drops a peer for.
const REJECT_REASONS: [&str; 4] = [
    "peer_credentials",
    "too_many_peers",
    "malformed",
    "no_hello",
];

/// Kernels per service (all classes and devices, by log2 bucket) and the
/// records the injection library lost, for explain reports.
pub(super) fn counters(state: &DaemonState, out: &mut Vec<(Key, f64)>) {
    let Some(deep) = &state.cupti else {
        return;
    };
    let ingest = deep
        .ingest
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut kernels: std::collections::BTreeMap<u32, gapscope_ebpf_common::Log2Hist> =
        std::collections::BTreeMap::new();
    for ((service, _device), s) in &ingest.stats {
        let all = kernels
            .entry(*service)
            .or_insert(gapscope_ebpf_common::Log2Hist::ZERO);
        for h in s.kernels.values() {
            all.merge(h);
        }
    }
    for (service, h) in kernels {
        out.push((Key::of(service, Counter::Kernels), h.count as f64));
        for (i, n) in h.buckets.iter().enumerate().filter(|(_, n)| **n > 0) {
            out.push((
                Key::of(service, Counter::KernelsInBucket(i as u32)),
                *n as f64,
            ));
        }
    }
    let lost = ingest.counters.sender_dropped_records as f64;
    out.push((Key::daemon(Counter::InjectRecordsDropped), lost));
}
