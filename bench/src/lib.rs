//! What Gapscope's benchmarks share. Each benchmark is a binary under
//! `src/` that writes its JSON to `bench/results/`.

pub mod ab;
pub mod host;
