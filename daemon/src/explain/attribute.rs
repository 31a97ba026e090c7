//! Splitting one GPU idle gap among causes: what the threads that launch
//! work on the GPU were doing, instant by instant.
//!
//! The gap is cut at every boundary of every state of a launching thread.
//! In each piece, each launching thread is in the highest-precedence state
//! that covers the piece (or, covered by none, in `default`: on CPU
//! running Python); the piece goes to the highest-precedence state among
//! the threads (see `Cause` for the order). From the moment work was
//! handed to the GPU (`handoff`: the start of the first launch call in
//! the gap) to the gap's end, the piece is `launch_overhead` whatever the
//! threads do. Pieces are whole nanoseconds and tile the gap, so the
//! parts of a gap sum exactly to the gap. A state may say more than its
//! cause (`detail`: which serialization function, which thread held the
//! GIL); a piece keeps the
//! detail of the state that won it, so the parts of a cause also sum to
//! the cause.

use super::cause::{CAUSES, Cause};

/// One state of one thread: `[start_ns, end_ns)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThreadState {
    pub tid: u32,
    pub start_ns: u64,
    pub end_ns: u64,
    pub cause: Cause,
    /// For `serialization`, which probe (its index: a codec's function,
    /// under `MAX_SER_PROBES`); for `gil_wait`, the thread that held the
    /// GIL (0: not known); 0 otherwise.
    pub detail: u32,
}

/// A piece of a gap, its cause and the cause's detail (as the state's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub start_ns: u64,
    pub end_ns: u64,
    pub cause: Cause,
    pub detail: u32,
}

/// What one gap's attribution needs besides the gap.
pub struct Context<'a> {
    /// Threads that launch work on the GPU (empty: nobody known; every
    /// piece is `default`).
    pub launchers: &'a [u32],
    /// States of any threads; those of other threads are ignored.
    pub states: &'a [ThreadState],
    /// Start of the first launch call that handed the GPU the work
    /// ending the gap, when known.
    pub handoff_ns: Option<u64>,
    /// What a launching thread no state covers is doing.
    pub default: Cause,
}

/// Splits `[start_ns, end_ns)` into segments, in time order, adjacent
/// segments of one cause merged.
pub fn attribute(start_ns: u64, end_ns: u64, cx: &Context) -> Vec<Segment> {
    if end_ns <= start_ns {
        return Vec::new();
    }
    let relevant: Vec<&ThreadState> = cx
        .states
        .iter()
        .filter(|s| s.start_ns < end_ns && s.end_ns > start_ns && cx.launchers.contains(&s.tid))
        .collect();
    if relevant.is_empty() && cx.handoff_ns.is_none_or(|h| h >= end_ns) {
        // The common case at high kernel rates: nothing recorded, so
        // every launching thread is in `default`.
        return vec![Segment {
            start_ns,
            end_ns,
            cause: cx.default,
            detail: 0,
        }];
    }
    let mut cuts: Vec<u64> = Vec::with_capacity(2 * relevant.len() + 3);
    cuts.extend([start_ns, end_ns]);
    for s in &relevant {
        cuts.push(s.start_ns.clamp(start_ns, end_ns));
        cuts.push(s.end_ns.clamp(start_ns, end_ns));
    }
    if let Some(h) = cx.handoff_ns {
        cuts.push(h.clamp(start_ns, end_ns));
    }
    cuts.sort_unstable();
    cuts.dedup();

    let mut out: Vec<Segment> = Vec::new();
    for w in cuts.windows(2) {
        let (a, b) = (w[0], w[1]);
        let (cause, detail) = if cx.handoff_ns.is_some_and(|h| h <= a) {
            (Cause::LaunchOverhead, 0)
        } else {
            piece_cause(a, b, cx, &relevant)
        };
        match out.last_mut() {
            Some(last) if (last.cause, last.detail) == (cause, detail) => last.end_ns = b,
            _ => out.push(Segment {
                start_ns: a,
                end_ns: b,
                cause,
                detail,
            }),
        }
    }
    out
}

/// The piece's cause and detail: the highest-precedence state among the
/// launching threads (between two of one cause, the lower detail, so the
/// choice does not depend on the order of the threads; a serialization
/// call inside another, a `default=` hook say, goes to the lower probe
/// index, not to the inner call).
fn piece_cause(a: u64, b: u64, cx: &Context, relevant: &[&ThreadState]) -> (Cause, u32) {
    let default = (cx.default, 0);
    let mut best: Option<(Cause, u32)> = None;
    for &tid in cx.launchers {
        let thread = relevant
            .iter()
            .filter(|s| s.tid == tid && s.start_ns <= a && s.end_ns >= b)
            .map(|s| (s.cause, s.detail))
            .min()
            .unwrap_or(default);
        best = Some(best.map_or(thread, |c| c.min(thread)));
    }
    best.unwrap_or(default)
}

/// Nanoseconds per cause of a list of segments.
pub fn totals(segments: &[Segment]) -> [u64; CAUSES] {
    let mut t = [0u64; CAUSES];
    for s in segments {
        t[s.cause.index()] += s.end_ns - s.start_ns;
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use Cause::*;

    fn st(tid: u32, start_ns: u64, end_ns: u64, cause: Cause) -> ThreadState {
        ThreadState {
            tid,
            start_ns,
            end_ns,
            cause,
            detail: 0,
        }
    }

    fn split(
        gap: (u64, u64),
        launchers: &[u32],
        states: &[ThreadState],
        handoff: Option<u64>,
    ) -> Vec<(Cause, u64, u64)> {
        let cx = Context {
            launchers,
            states,
            handoff_ns: handoff,
            default: PythonCpu,
        };
        let segs = attribute(gap.0, gap.1, &cx);
        let sum: u64 = totals(&segs).iter().sum();
        assert_eq!(sum, gap.1 - gap.0, "parts must sum to the gap: {segs:?}");
        segs.iter()
            .map(|s| (s.cause, s.start_ns, s.end_ns))
            .collect()
    }

    #[test]
    fn a_single_cause_fills_its_part_and_the_launch_ends_the_gap() {
        let s = [st(1, 10, 90, SyscallSleep)];
        assert_eq!(
            split((0, 100), &[1], &s, Some(95)),
            vec![
                (PythonCpu, 0, 10),
                (SyscallSleep, 10, 90),
                (PythonCpu, 90, 95),
                (LaunchOverhead, 95, 100)
            ]
        );
        // A state reaching past both ends is clipped to the gap.
        let s = [st(1, 0, 1000, GilWait)];
        assert_eq!(split((100, 200), &[1], &s, None), vec![(GilWait, 100, 200)]);
    }

    #[test]
    fn overlapping_states_of_one_thread_resolve_by_precedence() {
        // Preempted inside a serialization call: still serialization.
        let s = [st(1, 0, 50, Serialization), st(1, 20, 30, Runqueue)];
        assert_eq!(
            split((0, 60), &[1], &s, None),
            vec![(Serialization, 0, 50), (PythonCpu, 50, 60)]
        );
        // A host sync outranks the futex wait inside it.
        let s = [st(1, 0, 40, SyscallFutex), st(1, 0, 40, HostSync)];
        assert_eq!(split((0, 40), &[1], &s, None), vec![(HostSync, 0, 40)]);
    }

    #[test]
    fn several_launching_threads_take_the_most_urgent_state() {
        // Thread 1 sleeps throughout; thread 2 runs Python, then waits
        // for the GIL: the GPU waits on thread 2.
        let s = [st(1, 0, 100, SyscallSleep), st(2, 40, 60, GilWait)];
        assert_eq!(
            split((0, 100), &[1, 2], &s, None),
            vec![(PythonCpu, 0, 40), (GilWait, 40, 60), (PythonCpu, 60, 100)]
        );
        // Both blocked: the run-queue wait outranks the syscall.
        let s = [st(1, 0, 100, SyscallNet), st(2, 0, 100, Runqueue)];
        assert_eq!(split((0, 100), &[1, 2], &s, None), vec![(Runqueue, 0, 100)]);
    }

    #[test]
    fn no_work_only_when_every_launcher_waits() {
        let s = [st(1, 0, 100, NoWork), st(2, 0, 50, NoWork)];
        assert_eq!(
            split((0, 100), &[1, 2], &s, None),
            vec![(NoWork, 0, 50), (PythonCpu, 50, 100)]
        );
    }

    #[test]
    fn other_threads_do_not_count_and_nobody_known_means_default() {
        let s = [st(7, 0, 100, GilWait)];
        assert_eq!(split((0, 100), &[1], &s, None), vec![(PythonCpu, 0, 100)]);
        assert_eq!(split((0, 100), &[], &s, None), vec![(PythonCpu, 0, 100)]);
        // A handoff before the gap: all of it is launch overhead.
        assert_eq!(
            split((50, 100), &[1], &s, Some(10)),
            vec![(LaunchOverhead, 50, 100)]
        );
    }

    #[test]
    fn random_timelines_always_sum_to_the_gap() {
        // A small deterministic generator: no dependency for one test.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |m: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % m
        };
        for _ in 0..2000 {
            let a = next(1000);
            let b = a + 1 + next(1000);
            let states: Vec<ThreadState> = (0..next(12))
                .map(|_| {
                    let s = next(2200);
                    st(
                        1 + next(3) as u32,
                        s,
                        s + next(500),
                        Cause::ALL[next(CAUSES as u64) as usize],
                    )
                })
                .collect();
            let handoff = (next(2) == 0).then(|| next(2200));
            let segs = split((a, b), &[1, 2], &states, handoff);
            // Contiguous, in order, no empty piece.
            assert_eq!(segs.first().unwrap().1, a);
            assert_eq!(segs.last().unwrap().2, b);
            for w in segs.windows(2) {
                assert_eq!(w[0].2, w[1].1);
                assert_ne!(w[0].0, w[1].0);
            }
            assert!(segs.iter().all(|s| s.1 < s.2));
        }
    }

    #[test]
    fn a_piece_keeps_the_function_of_the_state_that_won_it() {
        let ser = |tid, start_ns, end_ns, detail| ThreadState {
            detail,
            ..st(tid, start_ns, end_ns, Serialization)
        };
        // Thread 1 in function 3 then 2; thread 2 in function 1 over the
        // middle, where the lower detail wins; GIL waits beat both.
        let states = [
            ser(1, 0, 40, 3),
            ser(1, 40, 80, 2),
            ser(2, 30, 50, 1),
            st(2, 80, 90, GilWait),
        ];
        let cx = Context {
            launchers: &[1, 2],
            states: &states,
            handoff_ns: Some(95),
            default: PythonCpu,
        };
        let segs: Vec<(Cause, u32, u64, u64)> = attribute(0, 100, &cx)
            .iter()
            .map(|s| (s.cause, s.detail, s.start_ns, s.end_ns))
            .collect();
        assert_eq!(
            segs,
            [
                (Serialization, 3, 0, 30),
                (Serialization, 1, 30, 50),
                (Serialization, 2, 50, 80),
                (GilWait, 0, 80, 90),
                (PythonCpu, 0, 90, 95),
                (LaunchOverhead, 0, 95, 100),
            ]
        );
    }
}
