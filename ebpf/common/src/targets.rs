//! Which processes are traced: the tgid → service map's sizes, the
//! per-CPU cache in front of it, and the process events sent to user
//! space.

/// Most services a configuration may define. Service ids index per-CPU arrays.
pub const MAX_SERVICES: u32 = 64;

/// Capacity of the tgid → service map: traced processes at once.
pub const MAX_TARGETS: u32 = 16_384;

/// Each CPU's memory of the last thread whose syscall it classified.
///
/// A syscall-heavy thread makes its syscalls in bursts on one CPU, so
/// nearly every syscall hits this one-entry cache. The thread is recognised
/// by its `pt_regs` pointer, which the raw syscall tracepoints pass as an
/// argument (it sits at the top of the thread's kernel stack), so a hit
/// costs no helper call and no hash lookup — for an untraced process that
/// is the whole cost of Gapscope.
///
/// The entry is valid while both generations are unchanged. The kernel
/// bumps its own (`KERNEL_GENERATION`, in `.bss`) whenever a traced process
/// gains or loses a thread or a process (a dead thread's kernel stack, and
/// so its `pt_regs` address, can be reused by a new thread); user space
/// bumps `USER_GENERATION` (alone in `.data`) after every change it makes
/// to `TARGETS`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TargetCache {
    /// The low 48 bits of the `pt_regs` address (kernel addresses differ
    /// only there) and the service id (or `CACHE_UNTRACED`) in the top 16,
    /// one word so an interrupted writer cannot pair one thread with
    /// another's service.
    pub regs_service: u64,
    pub gen_kernel: u64,
    pub gen_user: u64,
}

/// `TargetCache` service value for an untraced thread.
pub const CACHE_UNTRACED: u64 = 0xffff;

/// The bits of a kernel address kept in `TargetCache::regs_service`.
pub const CACHE_ADDRESS_MASK: u64 = (1 << 48) - 1;

/// The map aya creates for the programs' `.data` section, which holds
/// `USER_GENERATION` and nothing else.
pub const USER_GENERATION_MAP: &str = ".data";

/// Kinds of `ProcEvent`.
pub mod proc_event {
    /// A traced process forked a new process (already added in the kernel).
    pub const FORK: u32 = 1;
    /// Any process called exec; user space matches it against the config.
    pub const EXEC: u32 = 2;
    /// A traced process exited (already removed in the kernel).
    pub const EXIT: u32 = 3;
}

/// A process lifecycle event sent through the ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ProcEvent {
    pub kind: u32,
    pub tgid: u32,
    /// For FORK: the parent tgid.
    pub parent_tgid: u32,
    /// Service id when the process is traced, `u32::MAX` otherwise.
    pub service: u32,
}

/// `ProcEvent::service` for a process no service has claimed.
pub const NO_SERVICE: u32 = u32::MAX;
