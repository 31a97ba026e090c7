//! The daemon's state: everything gapscoped holds while it runs — the
//! kernel maps and the probes that feed them, the traced targets, the
//! timeline, the load generator's annotations, the NVML readings and idle
//! checks, CUPTI deep mode's ingest, the explainer and its snapshots.
//!
//! `daemon` builds it and drives it; `http` and `metrics` only read it
//! (the one exception: an annotation files itself here, `annotate`).

use std::sync::{Arc, Mutex};

use crate::{
    annotations::{Annotation, Annotations},
    bpf::{KernelMaps, Probes},
    config::ServiceConfig,
    cupti,
    discovery::Targets,
    explain::{Explainer, snapshot::Snapshots},
    nvml::{GpuState, idle::IdleCheck},
    timeline::Timeline,
};

/// The configured services, by id (their position). A reload
/// (`daemon::reload`) may change a service's matcher, add services at the
/// end or retire one; an id always keeps its name.
pub struct ServiceTable(std::sync::RwLock<Arc<[ServiceConfig]>>);

impl ServiceTable {
    pub fn new(services: Arc<[ServiceConfig]>) -> Self {
        Self(std::sync::RwLock::new(services))
    }

    /// The services now.
    pub fn all(&self) -> Arc<[ServiceConfig]> {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub fn set(&self, services: Arc<[ServiceConfig]>) {
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = services;
    }
}

pub struct DaemonState {
    pub services: ServiceTable,
    /// What reloads of the configuration came to (SIGHUP).
    pub reloads: crate::daemon::reload::ReloadStats,
    pub maps: KernelMaps,
    pub probes: Arc<Mutex<Probes>>,
    pub targets: Arc<Mutex<Targets>>,
    pub timeline: Arc<Mutex<Timeline>>,
    /// The kernel's timeline ring buffer. Its records wake nobody (but a
    /// ring filling up): the settle tick and every reader of the timeline
    /// or the explainer drain it first (`explain::feed::catch_up`).
    pub interval_ring: Mutex<aya::maps::RingBuf<aya::maps::MapData>>,
    pub annotations: Mutex<Annotations>,
    /// The NVML collector's readings and idle checks.
    pub nvml: Arc<Mutex<GpuState>>,
    /// CUPTI deep mode's socket and what it ingested (None: `[inject]
    /// enabled = false`).
    pub cupti: Option<cupti::socket::Shared>,
    /// GPU idle time attributed to causes.
    pub explainer: Arc<Mutex<Explainer>>,
    /// The explainer's config, readable without waiting for a settle tick
    /// to release the explainer.
    pub explain_config: crate::config::ExplainConfig,
    /// CPU-side counters over time, for windowed explain reports.
    pub snapshots: Mutex<Snapshots>,
    /// When the event loop last came round (`clock::monotonic_ns`): the
    /// HTTP server runs on its own thread, so `/healthz` reads this to
    /// tell a live daemon from one whose loop hangs.
    pub loop_alive_ns: std::sync::atomic::AtomicU64,
}

impl DaemonState {
    /// Records the CPU-side counters as they are now, for windowed
    /// explain reports (reads the kernel maps: call off the event loop).
    pub fn snapshot(&self) {
        self.snapshot_at(crate::clock::monotonic_ns(), false);
    }

    /// As `snapshot`, filed under `t_ns` (an annotation's own time, a
    /// moment ago, so a phase's counters start where the phase does);
    /// `transient` for one report's "now".
    pub fn snapshot_at(&self, t_ns: u64, transient: bool) {
        let counters = crate::metrics::snapshot_counters(self);
        if let Ok(mut s) = self.snapshots.lock() {
            s.take(t_ns, &counters, transient);
        }
    }

    pub fn service_id(&self, name: &str) -> Option<u32> {
        self.services
            .all()
            .iter()
            .position(|s| s.name == name)
            .map(|i| i as u32)
    }

    pub fn service_name(&self, id: u32) -> Option<String> {
        self.services.all().get(id as usize).map(|s| s.name.clone())
    }

    /// The name `/metrics` labels a service's series with; none for a
    /// service a reload removed, so its series leave the exposition at
    /// once (Prometheus marks them stale) rather than linger until a
    /// restart.
    pub fn exported_service_name(&self, id: u32) -> Option<String> {
        self.services
            .all()
            .get(id as usize)
            .filter(|s| !s.retired)
            .map(|s| s.name.clone())
    }

    /// Files an annotation posted by the load generator (JSON, see
    /// `annotations`) and hands a phase's edge to the explainer, in the
    /// order they arrive (cheap: call on the event loop). Returns the
    /// annotation and, for an edge, the moment its counters belong to
    /// (an annotation from the past or the future gets the present).
    pub fn annotate(&self, body: &[u8]) -> Result<(Annotation, Option<u64>), String> {
        let a = self
            .annotations
            .lock()
            .map_err(|_| "poisoned".to_string())
            .and_then(|mut a| a.add(body, crate::clock::monotonic_ns()))?;
        let now = crate::clock::monotonic_ns();
        // A progress event only carries a token count: no boundary to
        // remember, no counters to file.
        if a.event == "progress" {
            return Ok((a, None));
        }
        if let Ok(mut e) = self.explainer.lock() {
            e.phase_event(&a);
        }
        let at = if a.monotonic_ns <= now && now - a.monotonic_ns < 1_000_000_000 {
            a.monotonic_ns
        } else {
            now
        };
        Ok((a, Some(at)))
    }

    /// A silent phase started or ended: starts or finishes its idle check.
    /// Returns the check when it finished.
    pub fn silence(&self, a: &Annotation) -> Option<IdleCheck> {
        let mut gpu = self.nvml.lock().ok()?;
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
