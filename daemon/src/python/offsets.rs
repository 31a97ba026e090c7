//! Where the GIL sits in each CPython version this project supports.
//!
//! Computed with `offsetof` against each version's internal headers
//! (`Py_BUILD_CORE`, `internal/pycore_runtime.h`, `pycore_interp.h`,
//! `pycore_gil.h`); `daemon/tests/python_offsets.rs` recompiles that
//! program against the headers pyenv installs and compares.

/// How to get from `_PyRuntime` to the GIL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GilPath {
    /// 3.9–3.11: the GIL is a struct inside `_PyRuntime.ceval`.
    InRuntime { runtime_ceval_gil: u64 },
    /// 3.12+: each interpreter points to its GIL;
    /// `_PyRuntime.interpreters.main->ceval.gil`.
    ViaMainInterpreter {
        interpreters_main: u64,
        interp_ceval_gil: u64,
    },
}

/// The layout facts for one CPython minor version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offsets {
    pub gil: GilPath,
    /// `sizeof(struct _gil_runtime_state)`: every futex inside is the GIL's.
    pub gil_size: u64,
    /// `offsetof(struct _gil_runtime_state, locked)` (an int).
    pub locked: u64,
    /// `offsetof(struct _gil_runtime_state, switch_number)` (an unsigned long).
    pub switch_number: u64,
    /// `offsetof(struct _gil_runtime_state, mutex)` and `switch_mutex`.
    pub mutex: u64,
    pub switch_mutex: u64,
    /// `offsetof(struct _gil_runtime_state, last_holder)`: the
    /// `PyThreadState *` that took the GIL last, while it is held the
    /// holder's.
    pub last_holder: u64,
    /// Where a `PyThreadState` keeps its thread's id.
    pub thread_id: ThreadId,
}

/// Where a `PyThreadState` keeps the id of its thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadId {
    /// 3.11+: `native_thread_id`, the kernel's thread id.
    Native { tstate_native_thread_id: u64 },
    /// 3.9, 3.10: only `thread_id`, the `pthread_t`; on glibc the pointer
    /// to the thread's `struct pthread`, whose `tid` is at
    /// `GLIBC_PTHREAD_TID` on x86-64.
    Pthread { tstate_thread_id: u64 },
}

/// `offsetof(struct pthread, tid)` in x86-64 glibc (unchanged since
/// glibc 2.3; checked against a live thread in the daemon's GIL tests).
pub const GLIBC_PTHREAD_TID: u64 = 720;

/// `struct _gil_runtime_state` has kept one layout from 3.9 to 3.13:
/// (size, last_holder, locked, switch_number, mutex, switch_mutex).
const GIL_STATE: (u64, u64, u64, u64, u64, u64) = (208, 8, 16, 24, 80, 168);

/// The offsets for CPython `major.minor`, if supported.
pub fn for_version(major: u8, minor: u8) -> Option<Offsets> {
    let pthread = ThreadId::Pthread {
        tstate_thread_id: 176,
    };
    let native = |tstate_native_thread_id| ThreadId::Native {
        tstate_native_thread_id,
    };
    let (gil, thread_id) = match (major, minor) {
        (3, 9) | (3, 10) => (
            GilPath::InRuntime {
                runtime_ceval_gil: 352,
            },
            pthread,
        ),
        (3, 11) => (
            GilPath::InRuntime {
                runtime_ceval_gil: 360,
            },
            native(160),
        ),
        (3, 12) => (
            GilPath::ViaMainInterpreter {
                interpreters_main: 48,
                interp_ceval_gil: 384,
            },
            native(144),
        ),
        (3, 13) => (
            GilPath::ViaMainInterpreter {
                interpreters_main: 640,
                interp_ceval_gil: 16,
            },
            native(160),
        ),
        _ => return None,
    };
    let (gil_size, last_holder, locked, switch_number, mutex, switch_mutex) = GIL_STATE;
    Some(Offsets {
        gil,
        gil_size,
        locked,
        switch_number,
        mutex,
        switch_mutex,
        last_holder,
        thread_id,
    })
}

/// The versions `for_version` knows.
pub const SUPPORTED: &[(u8, u8)] = &[(3, 9), (3, 10), (3, 11), (3, 12), (3, 13)];
