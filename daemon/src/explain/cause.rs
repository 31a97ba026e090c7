//! Why a GPU sat idle: the fixed set of causes an idle gap is split into,
//! in precedence order. When several things happen at once (two launching
//! threads, or one thread inside a serialization call and off CPU), the
//! cause listed first wins, so every nanosecond of a gap has exactly one
//! cause and the parts of a gap sum to the gap.
//!
//! The order reads as "closest to handing the GPU work wins": a launch in
//! progress beats a thread waiting on the GPU, which beats a thread
//! waiting for the GIL, which beats serialization and other Python work
//! on CPU, which beat a thread nothing was recorded of (`unobserved`: it
//! may have been working), which beats a thread waiting for a CPU, which
//! beats one blocked in a syscall; `no_work` (every launching thread
//! idle-waiting for requests) only applies when nothing else does.

use gapscope_ebpf_common::{IntervalKind, OffCpuReason};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// Inside a launch API call, or between the call and the kernel's start.
    LaunchOverhead,
    /// A launching thread waits in a CUDA synchronization (the return
    /// from a sync after the GPU ran dry).
    HostSync,
    GilWait,
    Serialization,
    /// On CPU for a recorded stretch (at least the timeline's
    /// threshold), not launching: running Python (or the engine's own
    /// code), GIL held.
    PythonCpu,
    /// Nothing recorded: no launching thread known, or a launching thread
    /// neither on nor off CPU for a stretch as long as the timeline's
    /// threshold (many short ones) — the honest residual.
    Unobserved,
    Runqueue,
    SyscallFutex,
    SyscallPoll,
    SyscallNet,
    SyscallFile,
    SyscallSleep,
    SyscallOther,
    /// Blocked outside any syscall (a page fault, exiting).
    BlockedOther,
    /// Every launching thread waits for an event (poll, futex or network
    /// family) for at least `[explain] no_work_after_ms`: no request to
    /// serve.
    NoWork,
}

/// Number of causes.
pub const CAUSES: usize = 15;

impl Cause {
    pub const ALL: [Cause; CAUSES] = [
        Self::LaunchOverhead,
        Self::HostSync,
        Self::GilWait,
        Self::Serialization,
        Self::PythonCpu,
        Self::Unobserved,
        Self::Runqueue,
        Self::SyscallFutex,
        Self::SyscallPoll,
        Self::SyscallNet,
        Self::SyscallFile,
        Self::SyscallSleep,
        Self::SyscallOther,
        Self::BlockedOther,
        Self::NoWork,
    ];

    /// The `cause` label and JSON key. A cause that is an off-CPU reason
    /// or an interval kind is spelled as that one is (`gapscope-ebpf-common`).
    pub const fn label(self) -> &'static str {
        match self {
            Self::LaunchOverhead => "launch_overhead",
            Self::HostSync => IntervalKind::HostSync.label(),
            Self::GilWait => IntervalKind::GilWait.label(),
            Self::Serialization => IntervalKind::Serialization.label(),
            Self::PythonCpu => "python_cpu",
            Self::Unobserved => "unobserved",
            Self::Runqueue => OffCpuReason::Runqueue.label(),
            Self::SyscallFutex => OffCpuReason::SyscallFutex.label(),
            Self::SyscallPoll => OffCpuReason::SyscallPoll.label(),
            Self::SyscallNet => OffCpuReason::SyscallNet.label(),
            Self::SyscallFile => OffCpuReason::SyscallFile.label(),
            Self::SyscallSleep => OffCpuReason::SyscallSleep.label(),
            Self::SyscallOther => OffCpuReason::SyscallOther.label(),
            Self::BlockedOther => OffCpuReason::BlockedOther.label(),
            Self::NoWork => "no_work",
        }
    }

    /// The cause a label names.
    pub fn from_label(label: &str) -> Option<Cause> {
        Self::ALL.into_iter().find(|c| c.label() == label)
    }

    /// Whether removing what this cause stands for would let the GPU
    /// start its next work earlier: everything but `no_work` (waiting for
    /// requests is not a stall) and `unobserved` (nothing is known).
    pub fn recoverable(self) -> bool {
        !matches!(self, Self::NoWork | Self::Unobserved)
    }

    pub fn index(self) -> usize {
        self as usize
    }

    /// The cause a stretch off CPU stands for. `None` for GIL waits,
    /// which the timeline carries as their own intervals.
    pub fn of_off_cpu(reason: u32) -> Option<Cause> {
        let r = OffCpuReason::ALL.get(reason as usize)?;
        Some(match r {
            OffCpuReason::SyscallFutex => Self::SyscallFutex,
            OffCpuReason::SyscallPoll => Self::SyscallPoll,
            OffCpuReason::SyscallNet => Self::SyscallNet,
            OffCpuReason::SyscallFile => Self::SyscallFile,
            OffCpuReason::SyscallSleep => Self::SyscallSleep,
            OffCpuReason::SyscallOther => Self::SyscallOther,
            OffCpuReason::BlockedOther => Self::BlockedOther,
            OffCpuReason::Runqueue => Self::Runqueue,
            OffCpuReason::GilWait => return None,
        })
    }

    /// Whether a long wait of this kind means "waiting for work": the
    /// ways a server waits for its next request (an event loop's epoll, a
    /// queue's condition variable, a blocking accept or recv).
    pub fn can_mean_no_work(self) -> bool {
        matches!(
            self,
            Self::SyscallPoll | Self::SyscallFutex | Self::SyscallNet
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_in_precedence_order_and_labels_are_unique() {
        for (i, c) in Cause::ALL.iter().enumerate() {
            assert_eq!(c.index(), i);
        }
        let mut labels: Vec<_> = Cause::ALL.iter().map(|c| c.label()).collect();
        labels.sort();
        labels.dedup();
        assert_eq!(labels.len(), CAUSES);
        assert_eq!(
            Cause::of_off_cpu(OffCpuReason::Runqueue as u32),
            Some(Cause::Runqueue)
        );
        assert_eq!(Cause::of_off_cpu(OffCpuReason::GilWait as u32), None);
        assert_eq!(Cause::of_off_cpu(99), None);
    }
}
