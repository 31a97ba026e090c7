//! gapscoped: traces LLM serving processes with eBPF and exports, as
//! Prometheus metrics, what their threads do while the GPU waits.
//!
//! From a kernel event to a metric:
//! `ebpf/programs` (aggregates in per-CPU maps) → `bpf` (loads, attaches,
//! owns the maps) → `state` (what the daemon holds) → `metrics` (decodes
//! the maps at scrape time) → `http`. `daemon` starts it all and runs the
//! event loop. Modules are named by where their data comes from:
//! `discovery` decides which processes are traced; `python` finds their
//! interpreters and GILs; `cuda` puts uprobes on the CUDA libraries they
//! map; `nvml` reads the GPUs through NVML; `cupti` takes CUPTI records
//! from the injection library. `explain` turns the timeline and the GPU's
//! busy stretches into idle time by cause.

pub mod annotations;
pub mod bpf;
pub mod check;
pub mod clock;
pub mod config;
pub mod cuda;
pub mod cupti;
pub mod daemon;
pub mod discovery;
pub mod error;
pub mod explain;
pub mod http;
pub mod locate;
pub mod mapped;
pub mod metrics;
pub mod notify;
pub mod nvml;
pub mod python;
pub mod state;
pub mod syscall_table;
pub mod timeline;
pub mod web;
