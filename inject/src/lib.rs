//! `libgapscope_inject.so`: loaded into a serving process by CUDA when
//! `CUDA_INJECTION64_PATH` names it, it records the GPU's activity with
//! CUPTI and streams it to gapscoped (`[inject] socket`, or
//! `GAPSCOPE_SOCKET`).
//!
//! * `agent` — `InitializeInjection`: CUPTI, its clock, its buffers.
//! * `cupti_api` — the CUPTI functions, from the libcupti the process maps.
//! * `devices` — which GPU, by UUID, each CUDA device index is.
//! * `transport` — the way to gapscoped, which never blocks the host.
//!
//! The record layouts and their decoding live in `gapscope-cupti-sys`,
//! the frames in `gapscope-wire`.

pub mod agent;
pub mod cupti_api;
pub mod devices;
pub mod transport;

pub use transport::{Transport, TransportConfig, TransportStats};

/// CUDA's injection entry point. Always returns 1 (success): Gapscope
/// never makes CUDA's initialization fail; when it cannot work it says so
/// on stderr, once, and stays out of the way.
#[unsafe(no_mangle)]
pub extern "C" fn InitializeInjection() -> std::ffi::c_int {
    // Once per process: a second call (CUDA's driver and a runtime both
    // honouring CUDA_INJECTION64_PATH) finds the agent running.
    static CALLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if CALLED.swap(true, std::sync::atomic::Ordering::SeqCst) {
        return 1;
    }
    let line = match std::panic::catch_unwind(agent::initialize) {
        Ok(Ok(active)) => active,
        Ok(Err(why)) => format!("standing down: {why}"),
        Err(_) => "standing down after an internal error".to_string(),
    };
    eprintln!("gapscope-inject: {line}");
    1
}
