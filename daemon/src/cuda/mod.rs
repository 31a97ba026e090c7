//! What a serving process asks of CUDA, seen from outside: uprobes on the
//! launch and host-sync entry points of the libcuda and libcudart each
//! traced process maps (conda and pip ship private copies, so each file
//! is found through `/proc/PID/maps`, not the system's library path).
//!
//! `entry_points` lists what is probed; `tracker` finds the libraries,
//! attaches (through `bpf::uprobes`), keeps the launch probes within their
//! overhead budget and scales what they saw into launch estimates.

pub mod entry_points;
pub mod tracker;

pub use entry_points::{ENTRY_POINTS, EntryPoint, Library, Role};
pub use tracker::CudaTracker;
