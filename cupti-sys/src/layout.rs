//! Field offsets of the CUPTI activity records Gapscope reads.
//!
//! CUPTI writes the newest version of each struct its release defines
//! (`CUpti_ActivityKernel9` in 12.x, `…Kernel13` in 13.5, `Memcpy5`/`6`/`7`,
//! `Memset4`/`5`, `Synchronization`/`Synchronization2`, `Overhead`/`3`);
//! new versions append fields, so the ones below are at the same offset in
//! all of them. `tests/layout.rs` checks every number here against the
//! headers of CUPTI 12.0, 12.9 and 13.5 (offsetof on the real structs).

/// `CUpti_ActivityKind` values of the records decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum ActivityKind {
    Memcpy = 1,
    Memset = 2,
    Kernel = 3,
    Driver = 4,
    Runtime = 5,
    ConcurrentKernel = 10,
    Overhead = 17,
    Synchronization = 38,
}

impl ActivityKind {
    pub const ALL: [ActivityKind; 8] = [
        Self::Memcpy,
        Self::Memset,
        Self::Kernel,
        Self::Driver,
        Self::Runtime,
        Self::ConcurrentKernel,
        Self::Overhead,
        Self::Synchronization,
    ];

    pub fn from_u32(v: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|k| *k as u32 == v)
    }
}

/// A field: (byte offset, size).
pub type Field = (usize, usize);

/// Every record starts with its `CUpti_ActivityKind`.
pub const KIND: Field = (0, 4);

/// `CUpti_ActivityKernel9` (12.x) / `…Kernel13` (13.5), also for
/// concurrent-kernel records.
pub mod kernel {
    use super::Field;
    pub const START: Field = (16, 8);
    pub const END: Field = (24, 8);
    pub const DEVICE_ID: Field = (40, 4);
    pub const CONTEXT_ID: Field = (44, 4);
    pub const STREAM_ID: Field = (48, 4);
    pub const CORRELATION_ID: Field = (92, 4);
    /// `const char *name`: a pointer into CUPTI's memory, valid while the
    /// buffer is.
    pub const NAME: Field = (104, 8);
    /// The CUDA graph that launched it (0: not a graph launch).
    pub const GRAPH_ID: Field = (156, 4);
}

/// `CUpti_ActivityMemcpy5/6/7`.
pub mod memcpy {
    use super::Field;
    pub const COPY_KIND: Field = (4, 1);
    pub const BYTES: Field = (8, 8);
    pub const START: Field = (16, 8);
    pub const END: Field = (24, 8);
    pub const DEVICE_ID: Field = (32, 4);
    pub const STREAM_ID: Field = (40, 4);
    pub const CORRELATION_ID: Field = (44, 4);
}

/// `CUpti_ActivityMemset4/5`.
pub mod memset {
    use super::Field;
    pub const BYTES: Field = (8, 8);
    pub const START: Field = (16, 8);
    pub const END: Field = (24, 8);
    pub const DEVICE_ID: Field = (32, 4);
    pub const STREAM_ID: Field = (40, 4);
    pub const CORRELATION_ID: Field = (44, 4);
}

/// `CUpti_ActivityAPI` (driver and runtime calls).
pub mod api {
    use super::Field;
    pub const CBID: Field = (4, 4);
    pub const START: Field = (8, 8);
    pub const END: Field = (16, 8);
    pub const PROCESS_ID: Field = (24, 4);
    pub const THREAD_ID: Field = (28, 4);
    pub const CORRELATION_ID: Field = (32, 4);
}

/// `CUpti_ActivitySynchronization` / `…2`.
pub mod sync {
    use super::Field;
    pub const TYPE: Field = (4, 4);
    pub const START: Field = (8, 8);
    pub const END: Field = (16, 8);
    pub const CORRELATION_ID: Field = (24, 4);
    pub const CONTEXT_ID: Field = (28, 4);
    pub const STREAM_ID: Field = (32, 4);
}

/// `CUpti_ActivityOverhead` / `…3`.
pub mod overhead {
    use super::Field;
    pub const KIND: Field = (4, 4);
    pub const START: Field = (24, 8);
    pub const END: Field = (32, 8);
}

/// Whether records from a CUPTI of this `cuptiGetVersion` are laid out as
/// above: CUDA 12.0–12.9 (API 18–28) and 13.0–13.5 (API 130000–130500)
/// were checked. Anything else makes the injection library stand down and
/// say so, rather than guess.
pub fn supported(api_version: u32) -> bool {
    (18..=28).contains(&api_version) || (130_000..=130_599).contains(&api_version)
}

/// Every field, by the name `tests/data/cupti_layout.c` prints.
pub const ALL_FIELDS: &[(&str, Field)] = &[
    ("KERNEL.kind", KIND),
    ("KERNEL.start", kernel::START),
    ("KERNEL.end", kernel::END),
    ("KERNEL.deviceId", kernel::DEVICE_ID),
    ("KERNEL.contextId", kernel::CONTEXT_ID),
    ("KERNEL.streamId", kernel::STREAM_ID),
    ("KERNEL.correlationId", kernel::CORRELATION_ID),
    ("KERNEL.name", kernel::NAME),
    ("KERNEL.graphId", kernel::GRAPH_ID),
    ("MEMCPY.kind", KIND),
    ("MEMCPY.copyKind", memcpy::COPY_KIND),
    ("MEMCPY.bytes", memcpy::BYTES),
    ("MEMCPY.start", memcpy::START),
    ("MEMCPY.end", memcpy::END),
    ("MEMCPY.deviceId", memcpy::DEVICE_ID),
    ("MEMCPY.streamId", memcpy::STREAM_ID),
    ("MEMCPY.correlationId", memcpy::CORRELATION_ID),
    ("MEMSET.kind", KIND),
    ("MEMSET.bytes", memset::BYTES),
    ("MEMSET.start", memset::START),
    ("MEMSET.end", memset::END),
    ("MEMSET.deviceId", memset::DEVICE_ID),
    ("MEMSET.streamId", memset::STREAM_ID),
    ("MEMSET.correlationId", memset::CORRELATION_ID),
    ("API.kind", KIND),
    ("API.cbid", api::CBID),
    ("API.start", api::START),
    ("API.end", api::END),
    ("API.processId", api::PROCESS_ID),
    ("API.threadId", api::THREAD_ID),
    ("API.correlationId", api::CORRELATION_ID),
    ("SYNC.kind", KIND),
    ("SYNC.type", sync::TYPE),
    ("SYNC.start", sync::START),
    ("SYNC.end", sync::END),
    ("SYNC.correlationId", sync::CORRELATION_ID),
    ("SYNC.contextId", sync::CONTEXT_ID),
    ("SYNC.streamId", sync::STREAM_ID),
    ("OVERHEAD.kind", KIND),
    ("OVERHEAD.overheadKind", overhead::KIND),
    ("OVERHEAD.start", overhead::START),
    ("OVERHEAD.end", overhead::END),
];
