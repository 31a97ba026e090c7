//! Python processes: which interpreter a traced process runs, where its
//! GIL lives, and the GIL's state sampled over time.

pub mod gil;
pub mod interpreter;
pub mod memory;
pub mod offsets;
pub mod serialization;

pub use gil::{GilStats, GilTracker};
pub use interpreter::Interpreter;
