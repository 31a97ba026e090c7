//! CPython GIL waits, seen from the syscalls a waiting thread makes.
//!
//! A thread that wants the GIL while another holds it blocks in futex
//! waits on the GIL's condition variable (timed, every 5 ms) and mutex;
//! an uncontended acquisition makes no syscall at all. So instead of a
//! uprobe on every `take_gil` (~13 µs a hit here), the syscall programs
//! recognise futex waits whose address lies inside the process's
//! `_gil_runtime_state` (`GIL_RANGES`, filled by user space) — costs
//! scale with contention, and nothing is paid by threads that never wait.
//!
//! A thread's consecutive GIL waits add up to one acquisition, recorded
//! at its next syscall that is neither a GIL wait nor a wake on one of the
//! GIL's mutexes (a timed condition wait unlocks and relocks its mutex
//! every 5 ms while the thread still waits) — at the latest the wake on
//! `switch_cond` that ends a forced switch, or the wake on `cond` with
//! which the thread later hands the GIL on. Not at preemption: a preempted
//! thread may be in the middle of `take_gil`. A wake finds no waiter at
//! times and makes no syscall; then the thread's next syscall may be its
//! next GIL wait, after it held the GIL and ran Python: a wait that begins
//! more than `NEW_ACQUISITION_GAP_NS` after the last one ended starts a new
//! acquisition (inside one, the gaps are the microseconds it takes to
//! relock a mutex).
//!
//! The competitor is named once per acquisition, at its first wait: the
//! GIL's `last_holder` (the `PyThreadState` that took it last, so while it
//! is held its holder's) is read and the thread id it keeps, and the
//! acquisition's interval carries it as `detail`. A holder that is the
//! waiter itself (a thread forced to hand the GIL over waits inside the
//! GIL too, until another thread took it) names nobody; the next wait
//! tries again.

use aya_ebpf::helpers::{bpf_probe_read_kernel, bpf_probe_read_user};
use gapscope_ebpf_common::{GIL_MUTEX_SIZE, IntervalKind, PT_REGS_SI, ThreadState};

use crate::{
    maps::{GIL_RANGES, GIL_WAIT},
    timeline,
};

/// futex ops that block (after masking FUTEX_PRIVATE_FLAG and
/// FUTEX_CLOCK_REALTIME): WAIT, LOCK_PI, WAIT_BITSET, WAIT_REQUEUE_PI,
/// LOCK_PI2.
#[inline(always)]
fn is_wait_op(op: u64) -> bool {
    matches!(op & 0x7f, 0 | 6 | 9 | 11 | 13)
}

/// What a futex call means for the GIL of its process.
#[derive(PartialEq, Eq)]
pub enum GilFutex {
    /// Not on this process's GIL (or not a Python process).
    Elsewhere,
    /// Blocks waiting for the GIL.
    Wait,
    /// Wakes a waiter on one of the GIL's mutexes: inside an acquisition.
    MutexWake,
    /// Wakes a waiter on one of its condition variables: an acquisition
    /// or a hand-over is complete.
    CondWake,
}

/// Classifies the futex call whose registers are at `regs`, made by a
/// thread of process `tgid`.
#[inline(always)]
pub fn classify(tgid: u32, regs: u64) -> GilFutex {
    // SAFETY: plain value.
    let Some(range) = (unsafe { GIL_RANGES.get(&tgid) }) else {
        return GilFutex::Elsewhere;
    };
    // futex(uaddr = di, op = si, ...); si and di are adjacent in pt_regs.
    // SAFETY: regs is the kernel's pt_regs of the current syscall.
    let Ok([op, uaddr]) =
        (unsafe { bpf_probe_read_kernel((regs + PT_REGS_SI) as *const [u64; 2]) })
    else {
        return GilFutex::Elsewhere;
    };
    if uaddr < range.start || uaddr >= range.end {
        GilFutex::Elsewhere
    } else if is_wait_op(op) {
        GilFutex::Wait
    } else if (uaddr >= range.mutex && uaddr < range.mutex + GIL_MUTEX_SIZE)
        || (uaddr >= range.switch_mutex && uaddr < range.switch_mutex + GIL_MUTEX_SIZE)
    {
        GilFutex::MutexWake
    } else {
        GilFutex::CondWake
    }
}

/// Records the GIL waiting the thread has accumulated as one acquisition
/// (and, when long, as an interval on the timeline).
#[inline(always)]
pub fn flush(t: *mut ThreadState, service: u32, tid: u32) {
    // SAFETY: the caller's thread entry.
    unsafe {
        let waited = (*t).gil_wait_ns;
        if waited == 0 {
            // A holder named for a wait that recorded nothing (the thread
            // became traced inside it) is not the next acquisition's.
            if (*t).gil_holder_tid != 0 {
                (*t).gil_holder_tid = 0;
            }
            return;
        }
        (*t).gil_wait_ns = 0;
        if let Some(h) = GIL_WAIT.get_ptr_mut(service) {
            (*h).record(waited);
        }
        let (first, last) = ((*t).gil_wait_first_ns, (*t).gil_wait_last_ns);
        let holder = (*t).gil_holder_tid;
        (*t).gil_wait_first_ns = 0;
        (*t).gil_holder_tid = 0;
        timeline::offer(
            IntervalKind::GilWait as u32,
            holder,
            service,
            (*t).tgid,
            tid,
            first,
            last,
        );
    }
}

/// Longer than this between two GIL waits of a thread, it held the GIL in
/// between: the second wait is a new acquisition.
pub const NEW_ACQUISITION_GAP_NS: u64 = 1_000_000;

/// A GIL wait begins at `now`: the acquisition accumulated so far ends
/// first when the thread ran for a while since its last wait.
#[inline(always)]
pub fn wait_begins(t: *mut ThreadState, service: u32, tid: u32, now: u64) {
    // SAFETY: the caller's thread entry.
    let (first, last) = unsafe { ((*t).gil_wait_first_ns, (*t).gil_wait_last_ns) };
    if first != 0 && now.saturating_sub(last) > NEW_ACQUISITION_GAP_NS {
        flush(t, service, tid);
    }
    // SAFETY: the caller's thread entry.
    if unsafe { (*t).gil_holder_tid } == 0 {
        let holder = holder_of(t, tid);
        // SAFETY: as above.
        unsafe { (*t).gil_holder_tid = holder };
    }
}

/// The thread holding the GIL of the waiting thread `tid`'s process, other
/// than `tid` itself (0: not known).
#[inline(always)]
fn holder_of(t: *mut ThreadState, tid: u32) -> u32 {
    // SAFETY: the caller's thread entry; a plain map value.
    let Some(range) = (unsafe { GIL_RANGES.get(&(*t).tgid) }) else {
        return 0;
    };
    if range.last_holder == 0 {
        return 0;
    }
    // SAFETY: user memory of the current process, read with the helper.
    let read = |addr: u64| unsafe { bpf_probe_read_user(addr as *const u64) }.unwrap_or(0);
    let tstate = read(range.last_holder);
    if tstate == 0 {
        return 0;
    }
    let mut id = read(tstate + range.holder_tid_at);
    if range.pthread_tid_at != 0 && id != 0 {
        id = read(id + range.pthread_tid_at);
    }
    // Thread ids are positive i32s; the pthread case read 8 bytes.
    let holder = (id as u32) & 0x7fff_ffff;
    if holder == tid { 0 } else { holder }
}

/// Adds one finished futex wait on the GIL, `[start, end)`.
#[inline(always)]
pub fn add_wait(t: *mut ThreadState, start: u64, end: u64) {
    // SAFETY: the caller's thread entry.
    unsafe {
        (*t).gil_wait_ns += end.saturating_sub(start);
        if (*t).gil_wait_first_ns == 0 {
            (*t).gil_wait_first_ns = start;
        }
        (*t).gil_wait_last_ns = end;
    }
}
