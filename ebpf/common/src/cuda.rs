//! The CUDA API probes' shared items: slots and the attach cookie.

/// CUDA API probe slots a daemon can attach (each one entry point and its
/// variants, such as `_ptsz`); the attach cookie's low byte.
pub const MAX_CUDA_PROBES: u32 = 32;

/// Bits of a CUDA probe's attach cookie above the slot.
pub mod cuda_cookie {
    /// The low byte is the slot.
    pub const SLOT_MASK: u64 = 0xff;
    /// A kernel or graph launch: counted per process for the overhead
    /// budget.
    pub const LAUNCH: u64 = 1 << 8;
    /// A call in which the CPU waits for the GPU: long ones go to the
    /// timeline.
    pub const HOST_SYNC: u64 = 1 << 9;
}

/// Key of the CUDA call statistics map: (service, slot).
#[inline(always)]
pub const fn cuda_key(service: u32, slot: u32) -> u32 {
    service << 8 | slot
}
