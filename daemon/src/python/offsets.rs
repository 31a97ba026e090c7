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
}

/// `struct _gil_runtime_state` has kept one layout from 3.9 to 3.13:
/// (size, locked, switch_number, mutex, switch_mutex).
const GIL_STATE: (u64, u64, u64, u64, u64) = (208, 16, 24, 80, 168);

/// The offsets for CPython `major.minor`, if supported.
pub fn for_version(major: u8, minor: u8) -> Option<Offsets> {
    let gil = match (major, minor) {
        (3, 9) | (3, 10) => GilPath::InRuntime {
            runtime_ceval_gil: 352,
        },
        (3, 11) => GilPath::InRuntime {
            runtime_ceval_gil: 360,
        },
        (3, 12) => GilPath::ViaMainInterpreter {
            interpreters_main: 48,
            interp_ceval_gil: 384,
        },
        (3, 13) => GilPath::ViaMainInterpreter {
            interpreters_main: 640,
            interp_ceval_gil: 16,
        },
        _ => return None,
    };
    let (gil_size, locked, switch_number, mutex, switch_mutex) = GIL_STATE;
    Some(Offsets {
        gil,
        gil_size,
        locked,
        switch_number,
        mutex,
        switch_mutex,
    })
}

/// The versions `for_version` knows.
pub const SUPPORTED: &[(u8, u8)] = &[(3, 9), (3, 10), (3, 11), (3, 12), (3, 13)];
