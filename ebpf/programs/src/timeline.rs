//! Long stalls as intervals for the timeline: a GIL acquisition, a
//! serialization call, a host sync or a stretch off CPU longer than
//! `LONG_INTERVAL_NS` (and launches after a quiet stretch) go through the
//! `TIMELINE` ring buffer to user space, which keeps a bounded window of
//! them for the attribution work. Everything shorter is only aggregated in
//! the kernel, so the ring buffer's traffic scales with stalls, not calls.
//!
//! A record does not wake user space: the daemon drains the ring on its
//! settle tick and before anything reads the timeline. Only the record
//! that fills the ring past an eighth or a half (`WAKE_AT_BYTES`) wakes it
//! early, so a busy service costs a wake-up a batch, not one an interval,
//! and a daemon behind is not woken again by every record after.

use gapscope_ebpf_common::{INTERVAL_RECORD_BYTES, Interval, TIMELINE_RING_BYTES, counter};

use crate::maps::{TIMELINE, bump};

/// Shortest interval sent, in ns. Read-only data the loader sets from
/// `[timeline] min_interval_us`; `u64::MAX` (never) if it does not.
#[unsafe(no_mangle)]
static LONG_INTERVAL_NS: u64 = u64::MAX;

/// The threshold: the shortest interval worth sending.
#[inline(always)]
pub fn threshold() -> u64 {
    // SAFETY: a plain read of a read-only global; volatile so the compiler
    // does not fold the placeholder value in.
    unsafe { core::ptr::read_volatile(&raw const LONG_INTERVAL_NS) }
}

/// Bytes waiting in `TIMELINE` whose crossing wakes user space: an eighth
/// of the ring (about 2 700 intervals), and a half in case the first
/// crossing fell between two CPUs' records.
const WAKE_AT_BYTES: [u64; 2] = [
    TIMELINE_RING_BYTES as u64 / 8,
    TIMELINE_RING_BYTES as u64 / 2,
];
/// `bpf_ringbuf_query`'s data not yet consumed.
const BPF_RB_AVAIL_DATA: u64 = 0;
/// `bpf_ringbuf_submit`'s flags.
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;

/// Sends `[start, end)` of thread `tid` when it is long enough.
#[inline(always)]
pub fn offer(kind: u32, detail: u32, service: u32, tgid: u32, tid: u32, start: u64, end: u64) {
    if start == 0 || end.saturating_sub(start) < threshold() {
        return;
    }
    send(kind, detail, service, tgid, tid, start, end);
}

/// Sends `[start, end)` of thread `tid` whatever its length: for events
/// that matter because of where they are (a launch after a quiet
/// stretch, the host sync that drains the GPU), not how long they last.
#[inline(always)]
pub fn send(kind: u32, detail: u32, service: u32, tgid: u32, tid: u32, start: u64, end: u64) {
    match TIMELINE.reserve::<Interval>(0) {
        Some(mut entry) => {
            entry.write(Interval {
                kind,
                detail,
                service,
                tgid,
                tid,
                _pad: 0,
                start_ns: start,
                end_ns: end,
            });
            // Waiting data counts this reserved record.
            let waiting = TIMELINE.query(BPF_RB_AVAIL_DATA);
            let crossed = |at: u64| waiting >= at && waiting < at + INTERVAL_RECORD_BYTES as u64;
            let wake = match crossed(WAKE_AT_BYTES[0]) || crossed(WAKE_AT_BYTES[1]) {
                true => BPF_RB_FORCE_WAKEUP,
                false => BPF_RB_NO_WAKEUP,
            };
            entry.submit(wake);
            bump(counter::INTERVALS, 1);
        }
        None => bump(counter::INTERVALS_DROPPED, 1),
    }
}
