//! The idle check: while the load generator says a phase is silent
//! (`kind = "silence"` on the annotation endpoint), every GPU reading is
//! kept; when the phase ends they become a measured answer to "did the
//! GPU return to idle, and does anything keep it busy?": utilization,
//! power against the GPU's idle baseline, and the processes still holding
//! GPU memory.
//!
//! The first readings of a silent phase still show the work before it
//! (NVML's utilization covers the last sample period, and requests in
//! flight finish after the phase starts), so the check skips a settling
//! time: a quarter of the phase, at most two seconds.

use std::collections::{BTreeMap, VecDeque};

use serde::Serialize;

use super::{GpuSample, sample::GpuProcess};

/// Checks kept after they end.
const KEPT: usize = 64;
/// Readings kept per GPU in one open check (an hour at 1 s).
const MAX_READINGS: usize = 3600;
/// At most this long of the start of a phase is skipped.
const MAX_SETTLE_NS: u64 = 2_000_000_000;
/// Utilization at or below this counts as no kernel running.
pub const IDLE_UTILIZATION: f64 = 0.01;
/// Power within baseline × (1 + this) or baseline + `POWER_MARGIN_WATTS`
/// (whichever is larger) counts as idle power.
pub const POWER_MARGIN_RATIO: f64 = 0.15;
pub const POWER_MARGIN_WATTS: f64 = 10.0;

#[derive(Debug, Clone, Copy)]
struct Reading {
    t_ns: u64,
    utilization: Option<f64>,
    memory_utilization: Option<f64>,
    power_watts: Option<f64>,
}

#[derive(Debug, Default)]
struct GpuReadings {
    index: u32,
    model: String,
    readings: Vec<Reading>,
    processes: Vec<GpuProcess>,
}

#[derive(Debug)]
struct Open {
    phase: String,
    run_id: String,
    start_ns: u64,
    gpus: BTreeMap<String, GpuReadings>,
}

/// What one GPU did during a silent phase.
#[derive(Debug, Clone, Serialize)]
pub struct GpuIdle {
    pub gpu: u32,
    #[serde(rename = "UUID")]
    pub uuid: String,
    #[serde(rename = "modelName")]
    pub model: String,
    /// Readings inside the settled part of the phase.
    pub readings: usize,
    pub utilization_mean: Option<f64>,
    pub utilization_max: Option<f64>,
    pub memory_utilization_max: Option<f64>,
    pub power_mean_watts: Option<f64>,
    pub power_baseline_watts: Option<f64>,
    /// "configured" ([nvml] idle_power_watts) or "lowest_seen" (the lowest
    /// power this GPU drew since gapscoped started).
    pub baseline: &'static str,
    pub power_excess_watts: Option<f64>,
    /// Compute processes holding GPU memory at the phase's end.
    pub processes: Vec<GpuProcess>,
    /// No kernel ran (utilization at most 1%) and the power stayed within
    /// the margin of the baseline.
    pub idle: bool,
    /// Why not, in words.
    pub finding: String,
}

/// One silent phase, checked.
#[derive(Debug, Clone, Serialize)]
pub struct IdleCheck {
    pub phase: String,
    pub run_id: String,
    pub start_ns: u64,
    pub end_ns: u64,
    /// Nanoseconds skipped at the start.
    pub settle_ns: u64,
    pub gpus: Vec<GpuIdle>,
    /// Why there is nothing to say (no GPU readings), when so.
    pub unavailable: Option<String>,
}

#[derive(Debug, Default)]
pub struct IdleChecks {
    open: Vec<Open>,
    done: VecDeque<IdleCheck>,
    /// Lowest power each GPU has drawn, by UUID.
    lowest_power: BTreeMap<String, f64>,
    configured_baseline: Option<f64>,
}

impl IdleChecks {
    pub fn new(configured_baseline: Option<f64>) -> Self {
        Self {
            configured_baseline,
            ..Self::default()
        }
    }

    /// A silent phase started.
    pub fn start(&mut self, phase: &str, run_id: &str, t_ns: u64) {
        // A second start of the same phase restarts it.
        self.open
            .retain(|o| !(o.phase == phase && o.run_id == run_id));
        if self.open.len() >= 16 {
            self.open.remove(0);
        }
        self.open.push(Open {
            phase: phase.into(),
            run_id: run_id.into(),
            start_ns: t_ns,
            gpus: BTreeMap::new(),
        });
    }

    /// A silent phase ended: check it. `unavailable` says why there are no
    /// readings when the collector is down. None when it was never started.
    pub fn end(
        &mut self,
        phase: &str,
        run_id: &str,
        t_ns: u64,
        unavailable: Option<&str>,
    ) -> Option<&IdleCheck> {
        let at = self
            .open
            .iter()
            .position(|o| o.phase == phase && o.run_id == run_id)?;
        let open = self.open.remove(at);
        let check = self.check(open, t_ns, unavailable);
        if self.done.len() >= KEPT {
            self.done.pop_front();
        }
        self.done.push_back(check);
        self.done.back()
    }

    /// A round of readings, one per GPU.
    pub fn observe(&mut self, devices: &[GpuSample]) {
        for d in devices {
            if let Some(p) = d.power_watts {
                let low = self.lowest_power.entry(d.uuid.clone()).or_insert(p);
                *low = low.min(p);
            }
            for o in &mut self.open {
                if d.monotonic_ns < o.start_ns {
                    continue;
                }
                let g = o.gpus.entry(d.uuid.clone()).or_default();
                g.index = d.index;
                g.model.clone_from(&d.model);
                g.processes.clone_from(&d.processes);
                if g.readings.len() < MAX_READINGS {
                    g.readings.push(Reading {
                        t_ns: d.monotonic_ns,
                        utilization: d.utilization,
                        memory_utilization: d.memory_utilization,
                        power_watts: d.power_watts,
                    });
                }
            }
        }
    }

    fn check(&self, open: Open, end_ns: u64, unavailable: Option<&str>) -> IdleCheck {
        let settle_ns = (end_ns.saturating_sub(open.start_ns) / 4).min(MAX_SETTLE_NS);
        let from = open.start_ns + settle_ns;
        let gpus: Vec<GpuIdle> = open
            .gpus
            .into_iter()
            .map(|(uuid, g)| {
                let settled: Vec<&Reading> = g
                    .readings
                    .iter()
                    .filter(|r| r.t_ns >= from && r.t_ns <= end_ns)
                    .collect();
                let values = |f: fn(&Reading) -> Option<f64>| -> Vec<f64> {
                    settled.iter().filter_map(|r| f(r)).collect()
                };
                let util = values(|r| r.utilization);
                let mem = values(|r| r.memory_utilization);
                let power = values(|r| r.power_watts);
                let (baseline, source) = match self.configured_baseline {
                    Some(w) => (Some(w), "configured"),
                    None => (self.lowest_power.get(&uuid).copied(), "lowest_seen"),
                };
                let power_mean = mean(&power);
                let excess = power_mean.zip(baseline).map(|(p, b)| p - b);
                let utilization_max = max(&util);
                let (idle, mut finding) = verdict(settled.len(), utilization_max, excess, baseline);
                if !idle && !g.processes.is_empty() {
                    finding.push_str(&holders(&g.processes));
                }
                GpuIdle {
                    gpu: g.index,
                    uuid,
                    model: g.model,
                    readings: settled.len(),
                    utilization_mean: mean(&util),
                    utilization_max,
                    memory_utilization_max: max(&mem),
                    power_mean_watts: power_mean,
                    power_baseline_watts: baseline,
                    baseline: source,
                    power_excess_watts: excess,
                    processes: g.processes,
                    idle,
                    finding,
                }
            })
            .collect();
        let unavailable = match (gpus.is_empty(), unavailable) {
            (true, Some(why)) => Some(why.to_string()),
            (true, None) => Some(
                "no GPU reading fell inside the phase (shorter than [nvml] interval_ms?)".into(),
            ),
            _ => None,
        };
        IdleCheck {
            phase: open.phase,
            run_id: open.run_id,
            start_ns: open.start_ns,
            end_ns,
            settle_ns,
            gpus,
            unavailable,
        }
    }

    /// Checks done, oldest first.
    pub fn done(&self) -> impl Iterator<Item = &IdleCheck> {
        self.done.iter()
    }

    /// The latest check of each phase name.
    pub fn latest_by_phase(&self) -> BTreeMap<&str, &IdleCheck> {
        self.done.iter().map(|c| (c.phase.as_str(), c)).collect()
    }
}

fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

fn max(v: &[f64]) -> Option<f64> {
    v.iter().copied().reduce(f64::max)
}

/// The processes holding GPU memory, for a finding: the first suspects.
fn holders(processes: &[GpuProcess]) -> String {
    let each: Vec<String> = processes
        .iter()
        .map(|p| match p.memory_bytes {
            Some(b) => format!("pid {} ({:.2} GiB)", p.pid, b as f64 / (1u64 << 30) as f64),
            None => format!("pid {}", p.pid),
        })
        .collect();
    format!("; GPU memory still held by {}", each.join(", "))
}

/// Whether a GPU was idle during the settled part of a silent phase, and
/// the finding in words.
fn verdict(
    readings: usize,
    utilization_max: Option<f64>,
    excess: Option<f64>,
    baseline: Option<f64>,
) -> (bool, String) {
    if readings == 0 {
        return (false, "no reading after the settling time".into());
    }
    let busy = utilization_max.is_some_and(|u| u > IDLE_UTILIZATION);
    let margin = baseline.map_or(POWER_MARGIN_WATTS, |b| {
        (b * POWER_MARGIN_RATIO).max(POWER_MARGIN_WATTS)
    });
    let hot = excess.is_some_and(|e| e > margin);
    match (busy, hot) {
        (false, false) => (
            true,
            format!("idle: no kernel ran and power stayed within {margin:.0} W of the baseline"),
        ),
        (true, _) => (
            false,
            format!(
                "busy: kernels ran during the silence (utilization up to {:.0}%): something still submits work",
                utilization_max.unwrap_or(0.0) * 100.0
            ),
        ),
        (false, true) => (
            false,
            format!(
                "no kernel ran, but power stayed {:.0} W above the baseline (clocks not yet down, or work the utilization counter misses)",
                excess.unwrap_or(0.0)
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(t_s: f64, util: f64, power: f64, pids: &[u32]) -> GpuSample {
        GpuSample {
            index: 0,
            uuid: "GPU-1".into(),
            model: "Test GPU".into(),
            monotonic_ns: (t_s * 1e9) as u64,
            utilization: Some(util),
            memory_utilization: Some(util / 2.0),
            power_watts: Some(power),
            processes: pids
                .iter()
                .map(|p| GpuProcess {
                    pid: *p,
                    memory_bytes: Some(1 << 30),
                })
                .collect(),
            ..GpuSample::default()
        }
    }

    #[test]
    fn a_quiet_phase_is_idle_after_it_settles() {
        let mut c = IdleChecks::new(None);
        c.observe(&[reading(1.0, 0.0, 60.0, &[])]);
        c.start("cooldown", "r1", 10_000_000_000);
        // The first second still shows the work before the silence.
        c.observe(&[reading(10.5, 0.9, 300.0, &[7])]);
        for t in 11..=17 {
            c.observe(&[reading(f64::from(t) + 0.5, 0.0, 65.0, &[7])]);
        }
        let check = c.end("cooldown", "r1", 18_000_000_000, None).unwrap();
        assert_eq!(check.settle_ns, 2_000_000_000);
        let g = &check.gpus[0];
        assert_eq!(g.readings, 6, "12.5 .. 17.5");
        assert_eq!(g.utilization_max, Some(0.0));
        assert_eq!(g.power_mean_watts, Some(65.0));
        assert_eq!(g.power_baseline_watts, Some(60.0));
        assert_eq!(g.power_excess_watts, Some(5.0));
        assert_eq!(g.processes.len(), 1, "the server still holds its weights");
        assert!(g.idle, "{}", g.finding);
    }

    #[test]
    fn kernels_or_power_during_the_silence_are_findings() {
        let mut c = IdleChecks::new(Some(70.0));
        c.start("q", "", 0);
        for t in 0..8 {
            c.observe(&[reading(
                f64::from(t),
                if t == 5 { 0.3 } else { 0.0 },
                75.0,
                &[],
            )]);
        }
        let g = &c.end("q", "", 8_000_000_000, None).unwrap().gpus[0];
        assert!(!g.idle);
        assert!(g.finding.starts_with("busy"), "{}", g.finding);
        assert_eq!(g.baseline, "configured");

        c.start("q", "", 10_000_000_000);
        for t in 10..18 {
            c.observe(&[reading(f64::from(t), 0.0, 120.0, &[])]);
        }
        let g = &c.end("q", "", 18_000_000_000, None).unwrap().gpus[0];
        assert!(!g.idle);
        assert!(g.finding.contains("50 W above"), "{}", g.finding);
        assert_eq!(c.latest_by_phase()["q"].start_ns, 10_000_000_000);
    }

    #[test]
    fn no_readings_say_why() {
        let mut c = IdleChecks::new(None);
        assert!(c.end("never-started", "", 5, None).is_none());
        c.start("q", "", 0);
        let check = c
            .end("q", "", 5, Some("NVML collector down: no driver"))
            .unwrap();
        assert!(check.gpus.is_empty());
        assert_eq!(
            check.unavailable.as_deref(),
            Some("NVML collector down: no driver")
        );
    }
}
