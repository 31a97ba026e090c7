//! The GPU's own telemetry, read through NVML: `sample` is what one
//! reading of a GPU holds, `collector` reads them on a timer in a thread of its
//! own (NVML calls block, some for milliseconds), and `idle` turns the
//! readings taken during a phase the load generator marked silent into a
//! measured answer to "did the GPU return to idle?".

pub mod collector;
pub mod idle;
pub mod sample;

pub use idle::IdleChecks;
pub use sample::{GpuSample, GpuState};
