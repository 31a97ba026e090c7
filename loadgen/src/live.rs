//! What a run is doing now, shared by the runner (which counts), the
//! progress line (which shows it) and the annotator (which posts the
//! token count to gapscoped every second).

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicU64, AtomicUsize},
};

/// Live counters for the progress line.
#[derive(Default)]
pub(crate) struct Live {
    pub in_flight: AtomicUsize,
    pub completed: AtomicU64,
    pub failed: AtomicU64,
    /// Output tokens as they arrive (the client counts them), settled to
    /// each request's best count when it ends.
    pub tokens: Arc<AtomicU64>,
    pub phase: Mutex<String>,
}

impl Live {
    /// The phase running now, for the progress line.
    pub(crate) fn set_phase(&self, name: &str) {
        *self
            .phase
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = name.to_string();
    }
}
