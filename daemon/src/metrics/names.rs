//! The metric names more than one module refers to: the collectors render
//! them, `explain::snapshot` keeps them over time and `explain::report`
//! reads them back. Every other name is spelled once, where its family is
//! made.

pub const SYSCALL_DURATION: &str = "gapscope_syscall_duration_seconds";
pub const ONCPU: &str = "gapscope_oncpu_seconds_total";
pub const OFFCPU: &str = "gapscope_offcpu_seconds_total";
pub const GIL_WAIT: &str = "gapscope_gil_wait_seconds";
pub const GIL_HELD: &str = "gapscope_gil_held_seconds_total";
pub const SERIALIZATION_DURATION: &str = "gapscope_serialization_duration_seconds";
pub const CUDA_LAUNCHES: &str = "gapscope_cuda_launches_total";
pub const CUDA_GRAPH_LAUNCHES: &str = "gapscope_cuda_graph_launches_total";
pub const CUDA_HOST_SYNC_WAIT: &str = "gapscope_cuda_host_sync_wait_seconds";
pub const GPU_KERNEL_DURATION: &str = "gapscope_gpu_kernel_duration_seconds";
pub const EVENTS: &str = "gapscope_events_total";
pub const EVENTS_DROPPED: &str = "gapscope_events_dropped_total";
pub const INJECT_RECORDS_DROPPED: &str = "gapscope_inject_records_dropped_total";
pub const NVML_SAMPLES: &str = "gapscope_nvml_samples_total";

/// A histogram's observation count series (`NAME_count`).
pub fn count(histogram: &str) -> String {
    format!("{histogram}_count")
}

/// A histogram's sum series (`NAME_sum`).
pub fn sum(histogram: &str) -> String {
    format!("{histogram}_sum")
}

/// A histogram's bucket series (`NAME_bucket`).
pub fn bucket(histogram: &str) -> String {
    format!("{histogram}_bucket")
}
