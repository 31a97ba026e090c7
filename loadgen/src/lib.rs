//! gapscope-loadgen: the companion load generator.
//!
//! From a plan to a result:
//! `plan` (workload file and flags) → `runner` (phases on schedule;
//! `arrivals` precomputes open-loop send times, `prompts` makes the
//! requests and conversations) → `request` (one HTTP request, every token
//! timed, over `tls`'s connector; `decode` and `sse` read the reply) →
//! `stats` (per-phase HDR histograms and windows) → `results` (the JSON
//! document, with `telemetry`, `flops` and `audit`; `summary` prints it)
//! → `plot` and `compare`. `live` is what the run is doing now (progress
//! line, `annotate`'s posts to gapscoped); `exporter` serves the run's
//! own Prometheus metrics.
//!
//! Modules are private (oha's habit) but for what the binary uses (`app`,
//! `cli`, `compare`, `error`) and the arrival statistics the timing tests
//! check (`arrivals`).

mod annotate;
pub mod app;
pub mod arrivals;
mod audit;
pub mod cli;
mod clock;
pub mod compare;
mod decode;
pub mod error;
mod exporter;
mod flops;
mod http;
mod live;
mod openai;
mod plan;
mod plot;
mod prompts;
mod record;
mod request;
mod results;
mod runner;
mod search;
mod sse;
mod stats;
mod summary;
mod sweep;
mod telemetry;
mod tls;
