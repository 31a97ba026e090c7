//! The GPUs, as NVML last read them, with dcgm-exporter's labels (`gpu`,
//! `UUID`, `modelName`) so dashboards can join the two on `UUID`; the
//! compute processes on each GPU by service (never by pid); and the idle
//! check of each silent phase.

use std::collections::BTreeMap;

use super::Family;
use crate::nvml::{GpuSample, GpuState, sample::THROTTLE_REASONS};
use crate::state::DaemonState;

pub(super) fn collect(state: &DaemonState) -> Vec<Family> {
    let traced = state.targets.lock().map(|t| t.traced()).unwrap_or_default();
    let service_of = |pid: u32| {
        traced
            .get(&pid)
            .and_then(|s| state.exported_service_name(*s))
    };
    match state.nvml.lock() {
        Ok(state) => families(&state, &service_of),
        Err(_) => Vec::new(),
    }
}

/// A per-GPU gauge read from one field of the sample.
struct Field {
    name: &'static str,
    help: &'static str,
    value: fn(&GpuSample) -> Option<f64>,
}

const FIELDS: &[Field] = &[
    Field {
        name: "gapscope_gpu_utilization_ratio",
        help: "Share of the last sample period in which a kernel was running on the GPU (NVML; dcgm-exporter's DCGM_FI_DEV_GPU_UTIL / 100).",
        value: |s| s.utilization,
    },
    Field {
        name: "gapscope_gpu_memory_utilization_ratio",
        help: "Share of the last sample period in which device memory was read or written.",
        value: |s| s.memory_utilization,
    },
    Field {
        name: "gapscope_gpu_power_watts",
        help: "Power the GPU draws.",
        value: |s| s.power_watts,
    },
    Field {
        name: "gapscope_gpu_power_limit_watts",
        help: "Power limit the driver enforces.",
        value: |s| s.power_limit_watts,
    },
    Field {
        name: "gapscope_gpu_sm_clock_hertz",
        help: "SM clock.",
        value: |s| s.sm_clock_hz,
    },
    Field {
        name: "gapscope_gpu_memory_clock_hertz",
        help: "Memory clock.",
        value: |s| s.memory_clock_hz,
    },
    Field {
        name: "gapscope_gpu_temperature_celsius",
        help: "GPU die temperature.",
        value: |s| s.temperature_celsius,
    },
    Field {
        name: "gapscope_gpu_memory_used_bytes",
        help: "Device memory allocated.",
        value: |s| s.memory_used_bytes.map(|b| b as f64),
    },
    Field {
        name: "gapscope_gpu_memory_total_bytes",
        help: "Device memory installed.",
        value: |s| s.memory_total_bytes.map(|b| b as f64),
    },
];

/// The GPU families from the collector's state; `service_of` names the
/// service tracing a pid.
pub(super) fn families(
    state: &GpuState,
    service_of: &dyn Fn(u32) -> Option<String>,
) -> Vec<Family> {
    let mut out = Vec::new();
    for field in FIELDS {
        let mut f = Family::gauge(field.name, field.help);
        for s in &state.devices {
            if let Some(v) = (field.value)(s) {
                add(&mut f, &labels(s), &[], v);
            }
        }
        out.push(f);
    }
    out.extend(device_families(state, service_of));
    out.extend(idle_check_families(state));
    out.extend(collector_families(state));
    out
}

/// dcgm-exporter's labels of one GPU.
fn labels(s: &GpuSample) -> [(&'static str, String); 3] {
    [
        ("gpu", s.index.to_string()),
        ("UUID", s.uuid.clone()),
        ("modelName", s.model.clone()),
    ]
}

/// One series of `f`: a GPU's labels, then `extra`.
fn add(f: &mut Family, gpu: &[(&'static str, String)], extra: &[(&'static str, &str)], v: f64) {
    let mut all: Vec<(&str, &str)> = gpu.iter().map(|(k, v)| (*k, v.as_str())).collect();
    all.extend_from_slice(extra);
    f.add(&all, v);
}

/// Energy, PCIe, throttle reasons and the compute processes by service.
fn device_families(state: &GpuState, service_of: &dyn Fn(u32) -> Option<String>) -> [Family; 5] {
    let mut energy = Family::counter(
        "gapscope_gpu_energy_joules_total",
        "Energy the GPU used since the driver was loaded (NVML's total energy counter).",
    );
    let mut pcie = Family::gauge(
        "gapscope_gpu_pcie_throughput_bytes_per_second",
        "PCIe traffic over the last 20 ms the driver measured, by direction (tx: GPU to host).",
    );
    let mut throttle = Family::gauge(
        "gapscope_gpu_throttle_reason",
        "1 while the GPU's clocks are held down for this reason (NVML's clock throttle reasons).",
    );
    let mut processes = Family::gauge(
        "gapscope_gpu_compute_processes",
        "Compute processes using the GPU, by the service tracing them (no service label: processes gapscoped does not trace).",
    );
    let mut process_memory = Family::gauge(
        "gapscope_gpu_process_memory_bytes",
        "GPU memory held by compute processes, by the service tracing them.",
    );
    for s in &state.devices {
        let l = labels(s);
        if let Some(j) = s.energy_joules {
            add(&mut energy, &l, &[], j);
        }
        for (direction, v) in [
            ("tx", s.pcie_tx_bytes_per_second),
            ("rx", s.pcie_rx_bytes_per_second),
        ] {
            if let Some(v) = v {
                add(&mut pcie, &l, &[("direction", direction)], v);
            }
        }
        if let Some(bits) = s.throttle_reasons {
            for (bit, reason) in THROTTLE_REASONS {
                let on = if bits & bit != 0 { 1.0 } else { 0.0 };
                add(&mut throttle, &l, &[("reason", reason)], on);
            }
        }
        let mut by_service: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for p in &s.processes {
            let e = by_service
                .entry(service_of(p.pid).unwrap_or_default())
                .or_default();
            e.0 += 1;
            e.1 += p.memory_bytes.unwrap_or(0);
        }
        for (service, (n, bytes)) in &by_service {
            // An empty label value is the same as no label.
            add(&mut processes, &l, &[("service", service)], *n as f64);
            add(
                &mut process_memory,
                &l,
                &[("service", service)],
                *bytes as f64,
            );
        }
    }
    [energy, pcie, throttle, processes, process_memory]
}

/// The last idle check of each silent phase, per GPU.
fn idle_check_families(state: &GpuState) -> [Family; 4] {
    let mut idle = Family::gauge(
        "gapscope_gpu_idle_check_idle",
        "1 when the GPU was idle during the last silent phase of this name (no kernel ran, power near the idle baseline), 0 when not; /api/v1/idle-checks says why.",
    );
    let mut idle_util = Family::gauge(
        "gapscope_gpu_idle_check_utilization_max_ratio",
        "Highest GPU utilization read during the settled part of the last silent phase of this name.",
    );
    let mut idle_power = Family::gauge(
        "gapscope_gpu_idle_check_power_excess_watts",
        "Mean power during the last silent phase of this name above the GPU's idle baseline.",
    );
    let mut idle_holders = Family::gauge(
        "gapscope_gpu_idle_check_processes",
        "Compute processes still holding GPU memory at the end of the last silent phase of this name.",
    );
    for (phase, check) in state.idle.latest_by_phase() {
        for g in &check.gpus {
            let l = [
                ("gpu", g.gpu.to_string()),
                ("UUID", g.uuid.clone()),
                ("modelName", g.model.clone()),
            ];
            let extra = [("phase", phase)];
            add(&mut idle, &l, &extra, if g.idle { 1.0 } else { 0.0 });
            if let Some(u) = g.utilization_max {
                add(&mut idle_util, &l, &extra, u);
            }
            if let Some(w) = g.power_excess_watts {
                add(&mut idle_power, &l, &extra, w);
            }
            add(&mut idle_holders, &l, &extra, g.processes.len() as f64);
        }
    }
    [idle, idle_util, idle_power, idle_holders]
}

/// The NVML collector's own rounds, their time, the refused readings and
/// the GPUs lost.
fn collector_families(state: &GpuState) -> [Family; 4] {
    let mut rounds = Family::counter(
        "gapscope_nvml_samples_total",
        "Rounds of NVML readings taken (every GPU each round).",
    );
    let mut round_time = Family::gauge(
        "gapscope_nvml_sample_duration_seconds",
        "How long the last round of NVML readings took.",
    );
    let mut refused = Family::counter(
        "gapscope_nvml_read_errors_total",
        "NVML readings refused, by field (a field this GPU does not support is refused every round and not exported).",
    );
    let mut lost = Family::gauge(
        "gapscope_gpu_lost",
        "1 while NVML says the GPU fell off the bus or became inaccessible (NVML_ERROR_GPU_IS_LOST); its other series are gone until it answers again.",
    );
    for (index, (uuid, model)) in &state.lost {
        let l = [
            ("gpu", index.to_string()),
            ("UUID", uuid.clone()),
            ("modelName", model.clone()),
        ];
        add(&mut lost, &l, &[], 1.0);
    }
    if state.up {
        rounds.add_counter(&[], state.rounds as f64);
        round_time.add_gauge(&[], state.last_round_seconds);
        for (field, n) in &state.read_errors {
            refused.add_counter(&[("field", field)], *n as f64);
        }
    }
    [rounds, round_time, refused, lost]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nvml::sample::GpuProcess;

    #[test]
    fn constructed_readings_render_with_dcgm_labels() {
        let mut state = GpuState {
            up: true,
            rounds: 3,
            ..GpuState::default()
        };
        state.devices.push(GpuSample {
            index: 0,
            uuid: "GPU-abc".into(),
            model: "NVIDIA A40".into(),
            utilization: Some(0.87),
            memory_utilization: Some(0.5),
            power_watts: Some(245.5),
            energy_joules: Some(123_456.789),
            sm_clock_hz: Some(1.74e9),
            memory_used_bytes: Some(40 << 30),
            pcie_tx_bytes_per_second: Some(2048.0),
            pcie_rx_bytes_per_second: Some(1024.0),
            throttle_reasons: Some(0x4 | 0x20),
            processes: vec![
                GpuProcess {
                    pid: 10,
                    memory_bytes: Some(30 << 30),
                },
                GpuProcess {
                    pid: 11,
                    memory_bytes: Some(8 << 30),
                },
                GpuProcess {
                    pid: 99,
                    memory_bytes: Some(1 << 30),
                },
            ],
            ..GpuSample::default()
        });
        let service_of = |pid: u32| (pid < 20).then(|| "vllm".to_string());
        let text = super::super::encode(families(&state, &service_of));
        let l = r#"gpu="0",UUID="GPU-abc",modelName="NVIDIA A40""#;
        for line in [
            format!("gapscope_gpu_utilization_ratio{{{l}}} 0.87"),
            format!("gapscope_gpu_power_watts{{{l}}} 245.5"),
            format!("gapscope_gpu_energy_joules_total{{{l}}} 123456.789"),
            format!("gapscope_gpu_sm_clock_hertz{{{l}}} 1740000000"),
            format!("gapscope_gpu_memory_used_bytes{{{l}}} 42949672960"),
            format!("gapscope_gpu_pcie_throughput_bytes_per_second{{{l},direction=\"tx\"}} 2048"),
            format!("gapscope_gpu_throttle_reason{{{l},reason=\"sw_power_cap\"}} 1"),
            format!("gapscope_gpu_throttle_reason{{{l},reason=\"sw_thermal_slowdown\"}} 1"),
            format!("gapscope_gpu_throttle_reason{{{l},reason=\"gpu_idle\"}} 0"),
            format!("gapscope_gpu_compute_processes{{{l},service=\"vllm\"}} 2"),
            format!("gapscope_gpu_process_memory_bytes{{{l},service=\"vllm\"}} 40802189312"),
            format!("gapscope_gpu_compute_processes{{{l},service=\"\"}} 1"),
            "gapscope_nvml_samples_total 3".to_string(),
        ] {
            assert!(
                text.lines().any(|x| x == line),
                "missing {line:?} in\n{text}"
            );
        }
        // Unread fields are not exported as zeros.
        assert!(
            !text.contains("gapscope_gpu_temperature_celsius{"),
            "{text}"
        );
        assert!(text.contains("# TYPE gapscope_gpu_energy_joules_total counter"));
        if let Err(report) = gapscope_testkit::promtool_check(&text) {
            panic!("promtool: {report}\n{text}");
        }
    }

    #[test]
    fn a_down_collector_exports_no_gpu_series() {
        let text = super::super::encode(families(
            &GpuState {
                down_reason: Some("no driver".into()),
                ..GpuState::default()
            },
            &|_| None,
        ));
        assert!(!text.contains("gapscope_gpu_"), "{text}");
        assert!(!text.contains("gapscope_nvml_samples_total"), "{text}");
    }
}
