//! What the event loop hands the explainer: timeline intervals as the
//! kernel's ring buffer delivers them, and, every settle tick, deep mode's
//! settled busy stretches and the launching threads' waits still in
//! progress (from the kernel's thread map).
//!
//! Every interval the ring delivers reaches both the explainer and the
//! timeline; every stretch the ingest settles reaches the explainer once.

use aya::maps::{MapData, RingBuf};
use gapscope_ebpf_common::Interval;

use super::engine::Ongoing;
use crate::state::DaemonState;

/// Drains the timeline ring buffer into the explainer and the timeline.
pub fn drain_intervals(state: &DaemonState, ring: &mut RingBuf<MapData>) {
    let mut timeline = state
        .timeline
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut explain = state
        .explainer
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    while let Some(item) = ring.next() {
        if item.len() >= std::mem::size_of::<Interval>() {
            // SAFETY: the kernel wrote an Interval; read unaligned.
            let i = unsafe { (item.as_ptr() as *const Interval).read_unaligned() };
            explain.on_interval(&i);
            timeline.push(i);
        }
    }
}

/// One settle tick at `now_ns`: deep-mode records older than the reorder
/// window become busy stretches (for the explainer) and intervals (for the
/// timeline); gaps whose states have arrived are attributed.
pub fn settle(state: &DaemonState, now_ns: u64, reorder_ns: u64) {
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
    }
    // A launching thread's wait still in progress, from the kernel's
    // thread map (one lookup per launching thread).
    let threads = &state.maps.threads;
    explain.tick(now_ns, &|tid| {
        let t = threads.get(&tid, 0).ok()?;
        (t.off_cpu_since_ns != 0).then_some(Ongoing {
            since_ns: t.off_cpu_since_ns,
            woken_ns: (t.woken_ns != 0).then_some(t.woken_ns),
            reason: t.off_reason,
        })
    });
}
