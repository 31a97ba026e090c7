//! gapscoped: traces LLM serving processes with eBPF and exports, as
//! Prometheus metrics, what their threads do while the GPU waits.
//!
//! From a kernel event to a metric:
//! `ebpf/programs` (aggregates in per-CPU maps) → `bpf` (loads, attaches,
//! owns the maps) → `metrics` (decodes the maps at scrape time) → `http`.
//! `discovery` decides which processes are traced; `python` finds their
//! interpreters and GILs; `cuda` probes the CUDA libraries they map;
//! `gpu` reads the GPUs through NVML; `deep` takes CUPTI records from the
//! injection library.

pub mod annotations;
pub mod bpf;
pub mod check;
pub mod clock;
pub mod config;
pub mod cuda;
pub mod daemon;
pub mod deep;
pub mod discovery;
pub mod error;
pub mod explain;
pub mod gpu;
pub mod http;
pub mod locate;
pub mod metrics;
pub mod notify;
pub mod python;
pub mod state;
pub mod syscall_table;
pub mod timeline;
pub mod web;
