//! The CUDA entry points gapscoped probes, one slot each. A slot covers
//! an entry point and its variants (`_ptsz`/`_ptds` for the per-thread
//! default stream, `_v2` for the current ABI), which share its label.
//!
//! A runtime call (`cudaLaunchKernel`) reaches the driver through the
//! driver's own functions, so a process using both libraries shows it
//! under both APIs: compare within one `api`, never add them up.

use gapscope_ebpf_common::{MAX_CUDA_PROBES, cuda_cookie};

/// Which library an entry point lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Library {
    /// The driver API, `libcuda.so.1`.
    Driver,
    /// The runtime API, `libcudart.so.N`.
    Runtime,
}

impl Library {
    pub const ALL: [Library; 2] = [Library::Driver, Library::Runtime];

    /// The `api` label.
    pub const fn api(self) -> &'static str {
        match self {
            Library::Driver => "driver",
            Library::Runtime => "runtime",
        }
    }

    /// The start of the library's file name; `libcuda.so` matches
    /// `libcuda.so.1` and `libcuda.so.580.95.05` but not `libcudart.so`.
    pub const fn file_prefix(self) -> &'static str {
        match self {
            Library::Driver => "libcuda.so",
            Library::Runtime => "libcudart.so",
        }
    }

    /// Whether a mapped path is this library.
    pub fn is(self, path: &str) -> bool {
        path.rsplit('/')
            .next()
            .is_some_and(|name| name.starts_with(self.file_prefix()))
    }
}

/// What a call does, which decides how it is probed and exported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A kernel launch: counted within the overhead budget.
    Launch,
    /// A CUDA graph launch: many kernels for one call; budgeted too.
    GraphLaunch,
    /// The CPU waits for the GPU: always probed (it is waiting anyway).
    HostSync,
}

#[derive(Debug, Clone, Copy)]
pub struct EntryPoint {
    /// The label: the entry point's documented name.
    pub name: &'static str,
    pub library: Library,
    pub role: Role,
    /// The exported symbols probed for it.
    pub symbols: &'static [&'static str],
}

impl EntryPoint {
    /// Whether the launch budget applies.
    pub fn budgeted(&self) -> bool {
        self.role != Role::HostSync
    }

    /// The BPF attach cookie for slot `slot`.
    pub fn cookie(&self, slot: usize) -> u64 {
        slot as u64
            | match self.role {
                Role::Launch | Role::GraphLaunch => cuda_cookie::LAUNCH,
                Role::HostSync => cuda_cookie::HOST_SYNC,
            }
    }
}

const fn ep(
    library: Library,
    role: Role,
    name: &'static str,
    symbols: &'static [&'static str],
) -> EntryPoint {
    EntryPoint {
        name,
        library,
        role,
        symbols,
    }
}

use Library::{Driver, Runtime};
use Role::{GraphLaunch, HostSync, Launch};

/// Every slot, in cookie order.
pub const ENTRY_POINTS: &[EntryPoint] = &[
    ep(
        Driver,
        Launch,
        "cuLaunchKernel",
        &["cuLaunchKernel", "cuLaunchKernel_ptsz"],
    ),
    ep(
        Driver,
        Launch,
        "cuLaunchKernelEx",
        &["cuLaunchKernelEx", "cuLaunchKernelEx_ptsz"],
    ),
    ep(
        Driver,
        GraphLaunch,
        "cuGraphLaunch",
        &["cuGraphLaunch", "cuGraphLaunch_ptsz"],
    ),
    ep(
        Runtime,
        Launch,
        "cudaLaunchKernel",
        &["cudaLaunchKernel", "cudaLaunchKernel_ptsz"],
    ),
    ep(
        Runtime,
        Launch,
        "cudaLaunchKernelExC",
        &["cudaLaunchKernelExC", "cudaLaunchKernelExC_ptsz"],
    ),
    ep(
        Runtime,
        GraphLaunch,
        "cudaGraphLaunch",
        &["cudaGraphLaunch", "cudaGraphLaunch_ptsz"],
    ),
    ep(
        Driver,
        HostSync,
        "cuStreamSynchronize",
        &["cuStreamSynchronize", "cuStreamSynchronize_ptsz"],
    ),
    ep(
        Driver,
        HostSync,
        "cuCtxSynchronize",
        &["cuCtxSynchronize", "cuCtxSynchronize_v2"],
    ),
    ep(
        Driver,
        HostSync,
        "cuEventSynchronize",
        &["cuEventSynchronize"],
    ),
    ep(
        Driver,
        HostSync,
        "cuMemcpy",
        &[
            "cuMemcpy",
            "cuMemcpy_ptds",
            "cuMemcpyPeer",
            "cuMemcpyPeer_ptds",
            "cuMemcpy2D_v2",
            "cuMemcpy2D_v2_ptds",
            "cuMemcpy3D_v2",
            "cuMemcpy3D_v2_ptds",
        ],
    ),
    ep(
        Driver,
        HostSync,
        "cuMemcpyHtoD",
        &["cuMemcpyHtoD", "cuMemcpyHtoD_v2", "cuMemcpyHtoD_v2_ptds"],
    ),
    ep(
        Driver,
        HostSync,
        "cuMemcpyDtoH",
        &["cuMemcpyDtoH", "cuMemcpyDtoH_v2", "cuMemcpyDtoH_v2_ptds"],
    ),
    ep(
        Driver,
        HostSync,
        "cuMemcpyDtoD",
        &["cuMemcpyDtoD", "cuMemcpyDtoD_v2", "cuMemcpyDtoD_v2_ptds"],
    ),
    ep(
        Runtime,
        HostSync,
        "cudaStreamSynchronize",
        &["cudaStreamSynchronize", "cudaStreamSynchronize_ptsz"],
    ),
    ep(
        Runtime,
        HostSync,
        "cudaDeviceSynchronize",
        &["cudaDeviceSynchronize"],
    ),
    ep(
        Runtime,
        HostSync,
        "cudaEventSynchronize",
        &["cudaEventSynchronize"],
    ),
    ep(
        Runtime,
        HostSync,
        "cudaMemcpy",
        &[
            "cudaMemcpy",
            "cudaMemcpy_ptds",
            "cudaMemcpy2D",
            "cudaMemcpy2D_ptds",
            "cudaMemcpyPeer",
        ],
    ),
];

const _: () = assert!(ENTRY_POINTS.len() <= MAX_CUDA_PROBES as usize);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn library_names_match_only_their_own_files() {
        assert!(Library::Driver.is("/usr/lib/x86_64-linux-gnu/libcuda.so.580.95.05"));
        assert!(Library::Driver.is("/opt/conda/lib/libcuda.so.1"));
        assert!(!Library::Driver.is("/opt/conda/lib/libcudart.so.12"));
        assert!(!Library::Driver.is("/opt/libcuda.so/other.so"));
        assert!(Library::Runtime.is("/x/nvidia/cuda_runtime/lib/libcudart.so.12"));
        assert!(!Library::Runtime.is("/x/libcudadebugger.so.1"));
    }

    #[test]
    fn names_are_unique_and_cookies_carry_the_role() {
        let mut names: Vec<_> = ENTRY_POINTS.iter().map(|e| e.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), ENTRY_POINTS.len());
        for (slot, e) in ENTRY_POINTS.iter().enumerate() {
            let cookie = e.cookie(slot);
            assert_eq!(cookie & cuda_cookie::SLOT_MASK, slot as u64);
            assert_eq!(cookie & cuda_cookie::LAUNCH != 0, e.budgeted());
            assert_eq!(
                cookie & cuda_cookie::HOST_SYNC != 0,
                e.role == Role::HostSync
            );
        }
    }
}
