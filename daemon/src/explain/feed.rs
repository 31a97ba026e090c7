//! What the event loop hands the explainer: timeline intervals from the
//! kernel's ring buffer (drained by the settle tick, by every reader of the
//! timeline or the explainer, and when the ring fills up), and, every
//! settle tick, deep mode's
//! settled busy stretches, the launching threads' waits still in progress
//! (from the kernel's thread map) and NVML's latest readings with the GPUs
//! each service's processes are on (to price time in energy).
//!
//! Every interval the ring delivers reaches both the explainer and the
//! timeline; every stretch the ingest settles reaches the explainer once.

use aya::maps::MapError;
use gapscope_ebpf_common::{INTERVAL_RECORD_BYTES, Interval, NO_SERVICE, TIMELINE_RING_BYTES};

use std::collections::HashMap;

use super::{
    energy::Reading,
    engine::{Ongoing, ThreadNow},
};
use crate::state::DaemonState;

/// Reads at most `most` intervals from the timeline ring buffer into the
/// explainer and the timeline; returns how many it read.
///
/// Locks are taken in one order everywhere: ring, explainer, ingest,
/// timeline.
pub fn drain_intervals(state: &DaemonState, most: usize) -> usize {
    let mut ring = state
        .interval_ring
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut explain = state
        .explainer
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut timeline = state
        .timeline
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut taken = 0;
    while taken < most
        && let Some(item) = ring.next()
    {
        taken += 1;
        if item.len() >= std::mem::size_of::<Interval>() {
            // SAFETY: the kernel wrote an Interval; read unaligned.
            let i = unsafe { (item.as_ptr() as *const Interval).read_unaligned() };
            explain.on_interval(&i);
            timeline.push(i);
        }
    }
    taken
}

/// Records the timeline ring holds at most: a catch-up reads what was
/// there when it began and stops, however fast the kernel keeps writing.
const RING_RECORDS: usize = (TIMELINE_RING_BYTES / INTERVAL_RECORD_BYTES) as usize + 1;

/// What the kernel sent so far, into the explainer and the timeline:
/// called before reading either, as its records do not wake the loop.
pub fn catch_up(state: &DaemonState) {
    drain_intervals(state, RING_RECORDS);
}

/// One settle tick at `now_ns`: deep-mode records older than the reorder
/// window become busy stretches (for the explainer) and intervals (for the
/// timeline); gaps whose states have arrived are attributed.
///
/// Call `catch_up` first, then read the clock: every interval the ring
/// held ends before `now_ns`.
pub fn settle(state: &DaemonState, now_ns: u64, reorder_ns: u64) {
    let power = power_inputs(state);
    let mut explain = state
        .explainer
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(d) = &state.cupti {
        let mut ingest = d
            .ingest
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        ingest.advance(now_ns.saturating_sub(reorder_ns));
        if !ingest.timeline.is_empty() {
            let mut t = state
                .timeline
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for i in ingest.timeline.drain(..) {
                t.push(i);
            }
        }
        for (service, device, stretch) in ingest.stretches.drain(..) {
            explain.on_stretch(service, device, stretch);
        }
        for ((service, tid), at_ns) in ingest.api_threads.drain() {
            explain.on_launching_thread(service, tid, at_ns);
        }
        for ((service, target), start_ns) in ingest.api_calls.drain() {
            explain.on_api_call(service, target, start_ns);
        }
        explain.on_in_flight(&ingest.in_flight(now_ns));
        if let Some(p) = &power {
            // A CUDA device row whose processes all named one GPU that
            // NVML lists: that GPU, whatever NVML's index for it.
            let rows = ingest
                .device_uuids
                .iter()
                .filter_map(|(&(service, device), uuids)| {
                    let [uuid] = Vec::from_iter(uuids).try_into().ok()?;
                    Some(((service, device.to_string()), *p.by_uuid.get(uuid)?))
                })
                .collect();
            explain.energy.cuda_devices(rows);
        }
    }
    if let Some(p) = power {
        let gpus = p.readings.len();
        for (index, r) in p.readings {
            explain.energy.reading(index, r);
        }
        explain.energy.placement(p.placement, gpus);
    }
    // A launching thread's wait still in progress, from the kernel's
    // thread map (one lookup per launching thread).
    let threads = &state.maps.threads;
    explain.tick(now_ns, &|tid| match threads.get(&tid, 0) {
        // The kernel drops a thread's state when it exits.
        Err(MapError::KeyNotFound) => ThreadNow::Gone,
        Err(_) => ThreadNow::Running,
        Ok(t) if t.off_cpu_since_ns == 0 && t.on_cpu_since_ns != 0 => {
            ThreadNow::OnCpu(t.on_cpu_since_ns)
        }
        Ok(t) if t.off_cpu_since_ns == 0 => ThreadNow::Running,
        Ok(t) => ThreadNow::Off(Ongoing {
            since_ns: t.off_cpu_since_ns,
            woken_ns: (t.woken_ns != 0).then_some(t.woken_ns),
            reason: t.off_reason,
        }),
    });
}

/// What pricing needs from NVML: each GPU's latest reading, the GPUs each
/// service's processes hold memory on, and each GPU's index by UUID.
struct PowerInputs {
    readings: Vec<(u32, Reading)>,
    placement: HashMap<u32, Vec<u32>>,
    by_uuid: HashMap<String, u32>,
}

/// NVML's latest readings and where the services are; None while NVML is
/// down.
fn power_inputs(state: &DaemonState) -> Option<PowerInputs> {
    let (readings, holders, by_uuid) = {
        let g = state
            .nvml
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !g.up || g.devices.is_empty() {
            return None;
        }
        let readings: Vec<(u32, Reading)> = g
            .devices
            .iter()
            .map(|d| {
                (
                    d.index,
                    Reading {
                        monotonic_ns: d.monotonic_ns,
                        energy_joules: d.energy_joules,
                        power_watts: d.power_watts,
                    },
                )
            })
            .collect();
        let holders: Vec<(u32, u32)> = g
            .devices
            .iter()
            .flat_map(|d| d.processes.iter().map(move |p| (p.pid, d.index)))
            .collect();
        let by_uuid = g
            .devices
            .iter()
            .map(|d| (d.uuid.clone(), d.index))
            .collect();
        (readings, holders, by_uuid)
    };
    let mut placement: HashMap<u32, Vec<u32>> = HashMap::new();
    if !holders.is_empty() {
        let targets = state
            .targets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (pid, index) in holders {
            if let Some(service) = targets.service_of(pid).filter(|s| *s != NO_SERVICE) {
                let on = placement.entry(service).or_default();
                if !on.contains(&index) {
                    on.push(index);
                }
            }
        }
    }
    for on in placement.values_mut() {
        on.sort_unstable();
    }
    Some(PowerInputs {
        readings,
        placement,
        by_uuid,
    })
}
