//! The syscall programs' shared items: the (service, syscall) key, the
//! syscall numbers they treat apart and the table sizes.

/// Capacity of the (service, syscall) → histogram map.
pub const MAX_SYSCALL_KEYS: u32 = 8_192;

/// Syscall numbers below this are classified; x86-64 uses fewer than 470.
pub const SYSCALL_SLOTS: u32 = 512;

/// `thread_state.syscall_nr` value meaning "not inside a syscall".
pub const NO_SYSCALL: u32 = u32::MAX;

/// Key of the syscall statistics map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SyscallKey {
    pub service: u32,
    pub nr: u32,
}

/// x86-64 `futex` syscall number.
pub const SYS_FUTEX: u32 = 202;

/// x86-64 `uretprobe` syscall number: the kernel's own trampoline for
/// return probes (Linux 6.11+), i.e. Gapscope's serialization probes. Not
/// the traced program's doing, so not counted.
pub const SYS_URETPROBE: u32 = 335;
