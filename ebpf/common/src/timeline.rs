//! The timeline: long stalls sent to user space as intervals, their kinds
//! and the loader's threshold.

/// Kinds of `Interval` (`Interval::kind` holds the number), each with the
/// `kind` label value the timeline's metrics and `/api/v1/intervals` use.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IntervalKind {
    /// A contended GIL acquisition; `detail` is the thread that held the
    /// GIL when the wait began (0: not known).
    GilWait = 1,
    /// A serialization call; `detail` is the probe index.
    Serialization = 2,
    /// A CUDA call in which the CPU waited for the GPU (stream, context or
    /// event synchronization, a synchronous copy); `detail` is the CUDA
    /// probe slot.
    HostSync = 3,
    /// A stretch in which a GPU was busy (kernels, copies, memsets from
    /// CUPTI deep mode, gaps shorter than the threshold bridged);
    /// `detail` is the CUDA device. Not sent by the kernel programs.
    GpuBusy = 4,
    /// A thread off CPU: blocked (the `OffCpuReason`: a syscall family, or
    /// blocked outside a syscall; and the syscall, see `off_cpu_detail`)
    /// or waiting in the run queue (`OffCpuReason::Runqueue`). GIL waits
    /// are `GilWait` instead.
    OffCpu = 5,
    /// A launch call (`detail` is the CUDA probe slot) made after the
    /// thread had launched nothing for the threshold, or one that lasted
    /// that long: where work reached the GPU after a quiet stretch.
    Launch = 6,
    /// A thread on CPU, from the switch that gave it the CPU to the one
    /// that took it away; `detail` is 0. With the stretches off CPU it
    /// says what a launching thread did at every instant longer than the
    /// threshold.
    OnCpu = 7,
}

impl IntervalKind {
    pub const ALL: [IntervalKind; 7] = [
        Self::GilWait,
        Self::Serialization,
        Self::HostSync,
        Self::GpuBusy,
        Self::OffCpu,
        Self::Launch,
        Self::OnCpu,
    ];

    /// The `kind` label value.
    pub const fn label(self) -> &'static str {
        match self {
            Self::GilWait => "gil_wait",
            Self::Serialization => "serialization",
            Self::HostSync => "host_sync",
            Self::GpuBusy => "gpu_busy",
            Self::OffCpu => "off_cpu",
            Self::Launch => "launch",
            Self::OnCpu => "on_cpu",
        }
    }

    /// The kind an `Interval::kind` number stands for.
    pub fn from_raw(raw: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|k| *k as u32 == raw)
    }

    /// The `kind` label value of an `Interval::kind` number (`unknown`
    /// for a number no kind has).
    pub fn label_of(raw: u32) -> &'static str {
        Self::from_raw(raw).map_or("unknown", Self::label)
    }

    /// The kind a `kind` label value names.
    pub fn from_label(label: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.label() == label)
    }
}

/// An `OffCpu` interval's `detail`: the reason in the low 16 bits, and
/// the syscall the thread blocked in, plus one, in the high 16 (0: none,
/// or a number beyond the field).
#[inline(always)]
pub const fn off_cpu_detail(reason: u32, syscall_nr: u32) -> u32 {
    let nr = if syscall_nr < 0xffff {
        syscall_nr + 1
    } else {
        0
    };
    (reason & 0xffff) | (nr << 16)
}

/// The `OffCpuReason` number of an `OffCpu` interval's `detail`.
pub const fn off_cpu_reason(detail: u32) -> u32 {
    detail & 0xffff
}

/// The syscall an `OffCpu` interval's thread blocked in, if any.
pub const fn off_cpu_syscall(detail: u32) -> Option<u32> {
    match detail >> 16 {
        0 => None,
        nr => Some(nr - 1),
    }
}

/// Name of the programs' read-only global holding the shortest interval
/// (ns) sent to user space; set by the loader from `[timeline]`.
pub const LONG_INTERVAL_GLOBAL: &str = "LONG_INTERVAL_NS";

/// The timeline ring buffer's size in bytes.
pub const TIMELINE_RING_BYTES: u32 = 1 << 20;

/// An interval's room in the ring: the record and the ring's 8-byte
/// header.
pub const INTERVAL_RECORD_BYTES: u32 = core::mem::size_of::<Interval>() as u32 + 8;

/// A long stall of one thread, sent through the timeline ring buffer for
/// the attribution work; shorter ones are only aggregated in the kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Interval {
    pub kind: u32,
    pub detail: u32,
    pub service: u32,
    pub tgid: u32,
    pub tid: u32,
    pub _pad: u32,
    /// CLOCK_MONOTONIC (bpf_ktime_get_ns) nanoseconds.
    pub start_ns: u64,
    pub end_ns: u64,
}

impl Interval {
    /// What kind of interval this is (None: a number no kind has).
    pub fn kind(&self) -> Option<IntervalKind> {
        IntervalKind::from_raw(self.kind)
    }

    /// The `kind` label value (`unknown` for a number no kind has).
    pub fn kind_label(&self) -> &'static str {
        IntervalKind::label_of(self.kind)
    }
}
