//! `/metrics`: every scrape reads the kernel maps and renders the Prometheus
//! text format. Each source is timed, like node_exporter's collectors, and
//! the times are part of the same scrape.

mod cuda;
mod deep;
mod explain;
mod family;
mod gpu;
mod kernel;
mod python;
mod selfmon;
mod timeline;

use std::{
    sync::{Arc, Mutex},
    time::Instant,
};

use prometheus::{Encoder, TextEncoder, proto::MetricFamily};

use crate::{
    annotations::{Annotation, Annotations},
    bpf::KernelMaps,
    bpf::Probes,
    config::ServiceConfig,
    discovery::Targets,
    gpu::GpuState,
    gpu::idle::IdleCheck,
    timeline::Timeline,
};
pub use family::{Family, merged};

/// Everything a scrape reads.
pub struct Exporter {
    pub services: Arc<[ServiceConfig]>,
    pub maps: KernelMaps,
    pub probes: Arc<Mutex<Probes>>,
    pub targets: Arc<Mutex<Targets>>,
    pub timeline: Arc<Mutex<Timeline>>,
    pub annotations: Mutex<Annotations>,
    /// The NVML collector's readings and idle checks.
    pub gpu: Arc<Mutex<GpuState>>,
    /// CUPTI deep mode's socket and what it ingested (None: `[inject]
    /// enabled = false`).
    pub deep: Option<crate::deep::socket::Shared>,
    /// GPU idle time attributed to causes.
    pub explainer: Arc<Mutex<crate::explain::Explainer>>,
    /// CPU-side counters over time, for windowed explain reports.
    pub snapshots: Mutex<crate::explain::snapshot::Snapshots>,
}

type Source = fn(&Exporter) -> Vec<Family>;

/// The sources, by the `collector` label their scrape time is reported under.
const SOURCES: &[(&str, Source)] = &[
    ("kernel", kernel::collect),
    ("python", python::collect),
    ("timeline", timeline::collect),
    ("cuda", cuda::collect),
    ("nvml", gpu::collect),
    ("deep", deep::collect),
    ("explain", explain::collect),
    ("self", selfmon::collect),
];

/// Families in the Prometheus text format (0.0.4); empty ones are left
/// out (the format has no way to write them).
pub fn encode(families: Vec<Family>) -> String {
    let built: Vec<MetricFamily> = families.into_iter().filter_map(Family::build).collect();
    encode_families(&built)
}

fn encode_families(families: &[MetricFamily]) -> String {
    let mut out = Vec::new();
    if let Err(e) = TextEncoder::new().encode(families, &mut out) {
        log::error!("encoding metrics failed: {e}");
    }
    String::from_utf8(out).unwrap_or_default()
}

impl Exporter {
    /// Renders one scrape in the Prometheus text format (0.0.4).
    pub fn render(&self) -> String {
        let mut families: Vec<MetricFamily> = Vec::new();
        let mut durations = Family::gauge(
            "gapscope_scrape_collector_duration_seconds",
            "Time this scrape spent reading each collector's data.",
        );
        for (name, source) in SOURCES {
            let start = Instant::now();
            families.extend(source(self).into_iter().filter_map(Family::build));
            durations.add_gauge(&[("collector", name)], start.elapsed().as_secs_f64());
        }
        families.extend(durations.build());
        encode_families(&families)
    }

    /// Records the CPU-side counters as they are now, for windowed
    /// explain reports (reads the kernel maps: call off the event loop).
    pub fn snapshot(&self) {
        self.snapshot_at(crate::clock::monotonic_ns(), false);
    }

    /// As `snapshot`, filed under `t_ns` (an annotation's own time, a
    /// moment ago, so a phase's counters start where the phase does);
    /// `transient` for one report's "now".
    pub fn snapshot_at(&self, t_ns: u64, transient: bool) {
        let wanted = crate::explain::snapshot::FAMILIES;
        let families: Vec<MetricFamily> = SOURCES
            .iter()
            .filter(|(name, _)| matches!(*name, "kernel" | "python" | "cuda" | "deep"))
            .flat_map(|(_, source)| source(self))
            .filter_map(Family::build)
            .filter(|f| wanted.contains(&f.name()))
            .collect();
        if let Ok(mut s) = self.snapshots.lock() {
            s.take(t_ns, &families, transient);
        }
    }

    pub fn service_id(&self, name: &str) -> Option<u32> {
        self.services
            .iter()
            .position(|s| s.name == name)
            .map(|i| i as u32)
    }

    pub fn service_name(&self, id: u32) -> Option<&str> {
        self.services.get(id as usize).map(|s| s.name.as_str())
    }

    /// A silent phase started or ended: starts or finishes its idle check.
    /// Returns the check when it finished.
    pub fn silence(&self, a: &Annotation) -> Option<IdleCheck> {
        let mut gpu = self.gpu.lock().ok()?;
        if a.event == "start" {
            gpu.idle.start(&a.phase, &a.run_id, a.monotonic_ns);
            return None;
        }
        let down = gpu.down_reason.clone();
        let check = gpu
            .idle
            .end(&a.phase, &a.run_id, a.monotonic_ns, down.as_deref())?
            .clone();
        for g in &check.gpus {
            log::info!("idle check {} on GPU {}: {}", check.phase, g.gpu, g.finding);
        }
        Some(check)
    }
}
