//! The GIL program's shared items: where a process's GIL lives and how a
//! futex wait's address is read.

/// Where a Python process's GIL lives: the address range of its
/// `struct _gil_runtime_state`. A futex wait on any word inside it (the
/// condition variables and mutexes `take_gil`/`drop_gil` block on) is a
/// GIL wait. Found by user space from `_PyRuntime` and per-version offsets.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GilRange {
    pub start: u64,
    pub end: u64,
    /// The GIL's two mutexes (`mutex`, `switch_mutex`), each
    /// `GIL_MUTEX_SIZE` bytes: a futex wake on them happens in the middle
    /// of an acquisition (a condition wait unlocking its mutex), unlike a
    /// wake on the condition variables, which ends one.
    pub mutex: u64,
    pub switch_mutex: u64,
    /// Where the GIL's holder is named: the address of `last_holder`, a
    /// `PyThreadState *` (0: holders are not named).
    pub last_holder: u64,
    /// Where a `PyThreadState` keeps its thread's id: the offset of
    /// `native_thread_id` (3.11+), or of `thread_id` (3.9, 3.10) when
    /// `pthread_tid_at` is not 0.
    pub holder_tid_at: u64,
    /// When not 0, `holder_tid_at` holds a `pthread_t`, and the thread's id
    /// (an i32) is this many bytes into the `struct pthread` it points to.
    pub pthread_tid_at: u64,
}

/// `sizeof(pthread_mutex_t)` on x86-64 glibc.
pub const GIL_MUTEX_SIZE: u64 = 40;

/// Byte offsets of the first two syscall arguments in x86-64 `struct
/// pt_regs` (`si` then `di`; they are adjacent).
pub const PT_REGS_SI: u64 = 13 * 8;
