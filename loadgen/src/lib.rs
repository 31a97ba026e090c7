//! gapscope-loadgen: the companion load generator.
//!
//! From a plan to a result:
//! `plan` (workload file and flags) → `runner` (phases on schedule;
//! `arrivals` precomputes open-loop send times, `prompts` makes the
//! requests) → `request` (one HTTP request, every token timed;
//! `decode` and `sse` read the reply) → `stats` (per-phase HDR histograms
//! and windows) → `results` (the JSON document, with `telemetry`, `flops`
//! and `audit`) → `plot` and `compare`.

pub mod annotate;
pub mod app;
pub mod arrivals;
pub mod audit;
pub mod cli;
pub mod clock;
pub mod compare;
pub mod decode;
pub mod error;
pub mod flops;
pub mod http;
pub mod plan;
pub mod plot;
pub mod prompts;
pub mod record;
pub mod request;
pub mod results;
pub mod runner;
pub mod sse;
pub mod stats;
mod summary;
pub mod telemetry;
