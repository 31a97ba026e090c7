//! One reading of each GPU, as the collector stores it and the metrics
//! render it. Every field NVML may refuse on some GPU (PCIe counters on a
//! vGPU, energy before Volta) is optional and simply not exported.

use serde::Serialize;

use super::IdleChecks;

/// A compute process holding memory on a GPU.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GpuProcess {
    pub pid: u32,
    /// None when the driver does not say (some vGPU and MIG setups).
    pub memory_bytes: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct GpuSample {
    /// NVML's index, the `gpu` label.
    pub index: u32,
    pub uuid: String,
    pub model: String,
    /// CLOCK_MONOTONIC when it was read.
    pub monotonic_ns: u64,
    /// Share of the last sample period a kernel was running (0-1).
    pub utilization: Option<f64>,
    /// Share of the last sample period device memory was read or written.
    pub memory_utilization: Option<f64>,
    pub power_watts: Option<f64>,
    pub power_limit_watts: Option<f64>,
    /// Energy since the driver was loaded.
    pub energy_joules: Option<f64>,
    pub sm_clock_hz: Option<f64>,
    pub memory_clock_hz: Option<f64>,
    pub temperature_celsius: Option<f64>,
    pub memory_used_bytes: Option<u64>,
    pub memory_total_bytes: Option<u64>,
    pub pcie_tx_bytes_per_second: Option<f64>,
    pub pcie_rx_bytes_per_second: Option<f64>,
    /// NVML's clock throttle reason bits (see `THROTTLE_REASONS`).
    pub throttle_reasons: Option<u64>,
    pub processes: Vec<GpuProcess>,
}

/// NVML's `nvmlClocksThrottleReason*` bits and their `reason` labels.
pub const THROTTLE_REASONS: [(u64, &str); 9] = [
    (0x1, "gpu_idle"),
    (0x2, "applications_clocks_setting"),
    (0x4, "sw_power_cap"),
    (0x8, "hw_slowdown"),
    (0x10, "sync_boost"),
    (0x20, "sw_thermal_slowdown"),
    (0x40, "hw_thermal_slowdown"),
    (0x80, "hw_power_brake_slowdown"),
    (0x100, "display_clock_setting"),
];

/// What the collector knows, shared with the scrape and the annotation
/// endpoint.
#[derive(Debug, Default)]
pub struct GpuState {
    /// False when `[nvml] enabled = false`: down on purpose, not broken.
    pub enabled: bool,
    /// True while NVML answers.
    pub up: bool,
    /// Why the collector is down (shown by `check` and the idle check).
    pub down_reason: Option<String>,
    pub driver_version: Option<String>,
    /// The latest reading of each GPU, by index.
    pub devices: Vec<GpuSample>,
    /// Sampling rounds done, and how long the last one took.
    pub rounds: u64,
    pub last_round_seconds: f64,
    /// Readings NVML refused, by field (a field unsupported on this GPU is
    /// refused every round).
    pub read_errors: std::collections::BTreeMap<&'static str, u64>,
    /// GPUs NVML calls lost (`NVML_ERROR_GPU_IS_LOST`), by index: their
    /// UUID and name as last read.
    pub lost: std::collections::BTreeMap<u32, (String, String)>,
    pub idle: IdleChecks,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_bits_match_nvml() {
        use nvml_wrapper::bitmasks::device::ThrottleReasons as T;
        let nvml = [
            T::GPU_IDLE,
            T::APPLICATIONS_CLOCKS_SETTING,
            T::SW_POWER_CAP,
            T::HW_SLOWDOWN,
            T::SYNC_BOOST,
            T::SW_THERMAL_SLOWDOWN,
            T::HW_THERMAL_SLOWDOWN,
            T::HW_POWER_BRAKE_SLOWDOWN,
            T::DISPLAY_CLOCK_SETTING,
        ];
        for ((bit, _), n) in THROTTLE_REASONS.iter().zip(nvml) {
            assert_eq!(*bit, n.bits());
        }
    }
}
