//! The NVML collector: a thread that reads every GPU on a timer and
//! stores the readings in the shared `GpuState`, then feeds them to the
//! open idle checks.
//!
//! No driver, no GPU or no permission: the collector says so once, in the
//! log and as `gapscope_collector_up{collector="nvml"} 0`, and the rest of
//! the daemon carries on.

use std::{
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

use nvml_wrapper::{
    Device, Nvml,
    enum_wrappers::device::{Clock, PcieUtilCounter, TemperatureSensor},
    enums::device::UsedGpuMemory,
    error::NvmlError,
};

use super::{GpuSample, GpuState, sample::GpuProcess};
use crate::{clock::monotonic_ns, config::NvmlConfig};

/// Stops the collector thread when dropped.
pub struct Collector {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Collector {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Why NVML cannot be used, and what to do about it, in one line.
pub fn explain(e: &NvmlError) -> String {
    match e {
        NvmlError::LibloadingError(_) => "libnvidia-ml.so.1 cannot be loaded: no NVIDIA driver on this host (install the driver, or set [nvml] enabled = false)".into(),
        NvmlError::DriverNotLoaded => "the NVIDIA kernel driver is not loaded (load it: modprobe nvidia, or set [nvml] enabled = false)".into(),
        NvmlError::NoPermission => "NVML refused access (run gapscoped as root or as a user allowed to open /dev/nvidia*)".into(),
        other => format!("NVML failed to start: {other} (check nvidia-smi works on this host)"),
    }
}

/// Starts the collector. The state says at once whether it is up; when it
/// is down the thread is not started.
pub fn start(config: &NvmlConfig, state: Arc<Mutex<GpuState>>) -> Collector {
    let interval = config.interval;
    let idle = Collector {
        stop: None,
        thread: None,
    };
    let opened = match &config.library {
        Some(path) => {
            log::info!("NVML from {} ([nvml] library, a test hook)", path.display());
            Nvml::builder().lib_path(path.as_os_str()).init()
        }
        None => Nvml::init(),
    };
    let nvml = match opened {
        Ok(n) => n,
        Err(e) => {
            let why = explain(&e);
            log::warn!("NVML collector down: {why}");
            lock(&state).down_reason = Some(why);
            return idle;
        }
    };
    match nvml.device_count() {
        Ok(0) => {
            let why = "NVML found no NVIDIA GPU on this host".to_string();
            log::warn!("NVML collector down: {why}");
            lock(&state).down_reason = Some(why);
            return idle;
        }
        Err(e) => {
            let why = format!("NVML cannot count GPUs: {e}");
            log::warn!("NVML collector down: {why}");
            lock(&state).down_reason = Some(why);
            return idle;
        }
        Ok(n) => log::info!(
            "NVML collector up: {n} GPU{}, driver {}, every {interval:?}",
            if n == 1 { "" } else { "s" },
            nvml.sys_driver_version().unwrap_or_default()
        ),
    }
    {
        let mut s = lock(&state);
        s.up = true;
        s.driver_version = nvml.sys_driver_version().ok();
    }
    let (stop, stopped) = mpsc::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("gapscope-nvml".into())
        .spawn(move || run(nvml, interval, state, stopped))
        .ok();
    Collector {
        stop: Some(stop),
        thread,
    }
}

fn run(nvml: Nvml, interval: Duration, state: Arc<Mutex<GpuState>>, stopped: mpsc::Receiver<()>) {
    let count = nvml.device_count().unwrap_or(0);
    // Each GPU's name as last read, for the log and the lost GPU's labels.
    let mut known: Vec<(String, String)> = vec![Default::default(); count as usize];
    loop {
        let started = Instant::now();
        let mut errors = Vec::new();
        let mut devices = Vec::new();
        let mut lost = Vec::new();
        for i in 0..count {
            let mut own = Vec::new();
            let sample = match nvml.device_by_index(i) {
                Ok(d) => Some(read(i, &d, &mut own)),
                Err(e) => {
                    own.push(("device", e));
                    None
                }
            };
            // A GPU off the bus answers nothing; its fields are not
            // "unsupported", and a reading of it would be all gaps.
            if own.iter().any(|(_, e)| matches!(e, NvmlError::GpuLost)) {
                lost.push(i);
                continue;
            }
            errors.extend(own);
            if let Some(s) = sample {
                known[i as usize] = (s.uuid.clone(), s.model.clone());
                devices.push(s);
            }
        }
        {
            let mut s = lock(&state);
            for (field, _) in &errors {
                *s.read_errors.entry(field).or_default() += 1;
            }
            for &i in &lost {
                let (uuid, model) = &known[i as usize];
                if !s.lost.contains_key(&i) {
                    log::error!(
                        "GPU {i} ({uuid}, {model}) is lost: NVML_ERROR_GPU_IS_LOST, it fell off the bus \
                         or became inaccessible; its readings are no longer exported \
                         (gapscope_gpu_lost is 1). Look for an Xid error in the kernel log (dmesg; Xid 79 is \
                         \"fallen off the bus\"); a GPU reset (nvidia-smi -r) or a reboot brings it back"
                    );
                }
                s.lost.insert(i, (uuid.clone(), model.clone()));
            }
            let back: Vec<u32> = s
                .lost
                .keys()
                .filter(|i| !lost.contains(i))
                .copied()
                .collect();
            for i in back {
                log::warn!("GPU {i} answers NVML again");
                s.lost.remove(&i);
            }
            s.idle.observe(&devices);
            s.devices = devices;
            s.rounds += 1;
            s.last_round_seconds = started.elapsed().as_secs_f64();
            if s.rounds == 1 {
                for (field, e) in &errors {
                    log::info!("NVML: {field} unavailable on this host ({e}); not exported");
                }
            }
        }
        match stopped.recv_timeout(interval.saturating_sub(started.elapsed())) {
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            _ => return,
        }
    }
}

/// One reading of one GPU. Fields the GPU refuses are left out and
/// recorded in `errors`; a GPU off the bus is asked once per round (on a
/// real driver each call to a lost GPU may wait for a timeout, and the
/// other GPUs' readings would go stale meanwhile).
fn read(index: u32, d: &Device, errors: &mut Vec<(&'static str, NvmlError)>) -> GpuSample {
    let rates = match d.utilization_rates() {
        Err(NvmlError::GpuLost) => {
            errors.push(("utilization", NvmlError::GpuLost));
            return GpuSample {
                index,
                ..GpuSample::default()
            };
        }
        r => r,
    };
    let (utilization, memory_utilization) = match rates {
        Ok(u) => (
            Some(f64::from(u.gpu) / 100.0),
            Some(f64::from(u.memory) / 100.0),
        ),
        Err(e) => {
            errors.push(("utilization", e));
            (None, None)
        }
    };
    let (memory_used, memory_total) = match d.memory_info() {
        Ok(m) => (Some(m.used as f64), Some(m.total as f64)),
        Err(e) => {
            errors.push(("memory", e));
            (None, None)
        }
    };
    let mut field = |name: &'static str, r: Result<f64, NvmlError>| match r {
        Ok(v) => Some(v),
        Err(e) => {
            errors.push((name, e));
            None
        }
    };
    let watts = |mw: u32| f64::from(mw) / 1000.0;
    let hertz = |mhz: u32| f64::from(mhz) * 1e6;
    let per_second = |kb: u32| f64::from(kb) * 1024.0;
    let mut s = GpuSample {
        index,
        monotonic_ns: monotonic_ns(),
        utilization,
        memory_utilization,
        power_watts: field("power", d.power_usage().map(watts)),
        power_limit_watts: field("power_limit", d.enforced_power_limit().map(watts)),
        energy_joules: field(
            "energy",
            d.total_energy_consumption().map(|mj| mj as f64 / 1000.0),
        ),
        sm_clock_hz: field("sm_clock", d.clock_info(Clock::SM).map(hertz)),
        memory_clock_hz: field("memory_clock", d.clock_info(Clock::Memory).map(hertz)),
        temperature_celsius: field(
            "temperature",
            d.temperature(TemperatureSensor::Gpu).map(f64::from),
        ),
        memory_used_bytes: memory_used.map(|v| v as u64),
        memory_total_bytes: memory_total.map(|v| v as u64),
        pcie_tx_bytes_per_second: field(
            "pcie",
            d.pcie_throughput(PcieUtilCounter::Send).map(per_second),
        ),
        pcie_rx_bytes_per_second: field(
            "pcie",
            d.pcie_throughput(PcieUtilCounter::Receive).map(per_second),
        ),
        // Exact below 2^53: the bits NVML defines are far below.
        throttle_reasons: field(
            "throttle_reasons",
            d.current_throttle_reasons().map(|r| r.bits() as f64),
        )
        .map(|b| b as u64),
        ..GpuSample::default()
    };
    s.uuid = d.uuid().unwrap_or_else(|_| format!("unknown-{index}"));
    s.model = d.name().unwrap_or_else(|_| "unknown".into());
    match d.running_compute_processes() {
        Ok(ps) => {
            s.processes = ps
                .into_iter()
                .map(|p| GpuProcess {
                    pid: p.pid,
                    memory_bytes: match p.used_gpu_memory {
                        UsedGpuMemory::Used(b) => Some(b),
                        UsedGpuMemory::Unavailable => None,
                    },
                })
                .collect();
        }
        Err(e) => errors.push(("processes", e)),
    }
    s
}

fn lock(state: &Mutex<GpuState>) -> std::sync::MutexGuard<'_, GpuState> {
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
