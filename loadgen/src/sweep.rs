//! The throughput–latency curve of a `--sweep`, and its knee.
//!
//! Each step is a phase of its own; this module reads the steps' figures
//! back out of the phase results (nothing is measured twice) and names two
//! loads: the largest one whose P99 latencies stay within every SLO given
//! (the last step before the first that breaks one), and the one where
//! throughput stops rising (the next step adds less than `STILL_RISING`
//! of what its added load would: 10 % for a doubling). A step cut short
//! (the run was stopped) is shown but judges no knee. Invariant: every
//! figure of a step is its phase's.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::{
    plan::{PhaseKind, Slo, Sweep},
    results::PhaseResult,
};

/// A next step that adds less than this share of throughput: saturated.
const STILL_RISING: f64 = 0.10;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepResult {
    /// `closed_loop` (loads are concurrencies) or `open_loop` (Poisson
    /// rates, requests/s).
    pub kind: PhaseKind,
    pub steps: Vec<Step>,
    pub knee: Knee,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Step {
    pub phase: String,
    pub load: f64,
    pub output_tokens_per_s: f64,
    pub requests_per_s: f64,
    pub goodput_tokens_per_s: f64,
    pub p50_ttft_ms: Option<f64>,
    pub p99_ttft_ms: Option<f64>,
    pub p99_itl_ms: Option<f64>,
    pub p99_e2e_ms: Option<f64>,
    pub failed: u64,
    /// Within every SLO given, at P99 (None: no SLO was given).
    pub within_slo: Option<bool>,
    /// It ran its whole length (false: the run was stopped in it).
    pub complete: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Knee {
    /// The largest load before the first step that breaks an SLO at P99;
    /// None when no SLO was given or the first step breaks one.
    pub slo_load: Option<f64>,
    /// Which SLOs were held (e.g. "TTFT ≤ 500 ms, E2E ≤ 10000 ms").
    pub slo: Option<String>,
    /// The load after which throughput rises by less than 10 % a step;
    /// None when it still rises at the largest load.
    pub saturation_load: Option<f64>,
    /// The step with the most output tokens per second.
    pub max_throughput_load: f64,
    pub max_output_tokens_per_s: f64,
    /// What the knees mean, in words, for the reader of the JSON.
    pub note: String,
}

fn ms(p: &PhaseResult, key: &str, q: fn(&crate::stats::Summary) -> f64) -> Option<f64> {
    p.latency.get(key).map(|l| q(l) * 1e3)
}

/// The curve and its knees from the sweep's phases; `step_s`: a step's
/// planned length (after --time-scale).
pub(crate) fn build(sweep: &Sweep, phases: &[PhaseResult], slo: &Slo, step_s: f64) -> SweepResult {
    let slos: Vec<(&str, &str, f64)> = [
        ("TTFT", "ttft", slo.ttft_ms),
        ("TPOT", "tpot", slo.tpot_ms),
        ("E2E", "e2e", slo.e2e_ms),
    ]
    .into_iter()
    .filter_map(|(name, key, v)| v.map(|v| (name, key, v)))
    .collect();
    let steps: Vec<Step> = sweep
        .phases
        .iter()
        .zip(&sweep.loads)
        .filter_map(|(name, load)| {
            let p = phases.iter().find(|p| &p.name == name)?;
            let within = (!slos.is_empty()).then(|| {
                slos.iter()
                    .all(|(_, key, limit)| ms(p, key, |l| l.p99).is_some_and(|v| v <= *limit))
                    && p.failed == 0
            });
            Some(Step {
                phase: name.clone(),
                load: *load,
                output_tokens_per_s: p.throughput.output_tokens_per_s,
                requests_per_s: p.throughput.requests_per_s,
                goodput_tokens_per_s: p.goodput.output_tokens_per_s,
                p50_ttft_ms: ms(p, "ttft", |l| l.p50),
                p99_ttft_ms: ms(p, "ttft", |l| l.p99),
                p99_itl_ms: ms(p, "itl_token", |l| l.p99),
                p99_e2e_ms: ms(p, "e2e", |l| l.p99),
                failed: p.failed,
                within_slo: within,
                complete: p.duration_s >= 0.95 * step_s,
            })
        })
        .collect();
    let judged: Vec<&Step> = steps.iter().filter(|s| s.complete).collect();
    let slo_load = if slos.is_empty() {
        None
    } else {
        judged
            .iter()
            .take_while(|s| s.within_slo == Some(true))
            .last()
            .map(|s| s.load)
    };
    // Saturated: the next step adds under STILL_RISING of the throughput
    // its added load would add if throughput followed load.
    let saturation_load = judged
        .windows(2)
        .find(|w| {
            let gain = w[1].output_tokens_per_s / w[0].output_tokens_per_s.max(1e-9) - 1.0;
            gain < STILL_RISING * (w[1].load / w[0].load - 1.0)
        })
        .map(|w| w[0].load)
        .filter(|_| judged.iter().any(|s| s.output_tokens_per_s > 0.0));
    // The first of equals: the smallest load that gives the most.
    let best = judged.iter().copied().fold(None::<&Step>, |b, s| match b {
        Some(b) if b.output_tokens_per_s >= s.output_tokens_per_s => Some(b),
        _ => Some(s),
    });
    let slo_text = (!slos.is_empty()).then(|| {
        slos.iter()
            .map(|(name, _, v)| format!("{name} ≤ {v} ms"))
            .collect::<Vec<_>>()
            .join(", ")
    });
    SweepResult {
        kind: sweep.kind,
        knee: Knee {
            slo_load,
            slo: slo_text,
            saturation_load,
            max_throughput_load: best.map_or(0.0, |s| s.load),
            max_output_tokens_per_s: best.map_or(0.0, |s| s.output_tokens_per_s),
            note: format!(
                "slo_load: the largest load before the first step whose P99 breaks an SLO (or that had failures); \
                 saturation_load: the load after which the next step adds less than {:.0} % of the throughput \
                 its added load would (10 % for a doubling); steps cut short judge neither",
                STILL_RISING * 100.0
            ),
        },
        steps,
    }
}

impl SweepResult {
    fn unit(&self) -> &'static str {
        if self.kind == PhaseKind::ClosedLoop {
            "C="
        } else {
            "req/s "
        }
    }

    /// The terminal table and the knees.
    pub(crate) fn render(&self) -> String {
        let mut o = String::new();
        let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
        let _ = writeln!(
            o,
            "sweep ({}): {:>8} {:>9} {:>8} {:>10} {:>9} {:>9} {:>9} {:>9}",
            if self.kind == PhaseKind::ClosedLoop {
                "closed loop"
            } else {
                "Poisson"
            },
            "load",
            "tok/s",
            "req/s",
            "good tok/s",
            "TTFT p50",
            "TTFT p99",
            "ITL p99",
            "E2E p99"
        );
        for s in &self.steps {
            let _ = writeln!(
                o,
                "{:<20} {:>8} {:>9.1} {:>8.2} {:>10.1} {:>9} {:>9} {:>9} {:>9}{}",
                s.phase,
                s.load,
                s.output_tokens_per_s,
                s.requests_per_s,
                s.goodput_tokens_per_s,
                f(s.p50_ttft_ms),
                f(s.p99_ttft_ms),
                f(s.p99_itl_ms),
                f(s.p99_e2e_ms),
                match s.within_slo {
                    Some(false) => "  over the SLO",
                    _ => "",
                }
            );
        }
        let k = &self.knee;
        let u = self.unit();
        if self.steps.iter().any(|s| !s.complete) {
            let _ = writeln!(o, "(steps cut short by the stop judge no knee)");
        }
        if self.steps.iter().all(|s| s.output_tokens_per_s == 0.0) {
            let _ = writeln!(o, "knee: no step produced tokens (see the errors above)");
            return o;
        }
        // The step that ended the run within the SLO, and whether its
        // failures did.
        let why = match self
            .steps
            .iter()
            .filter(|s| s.complete)
            .find(|s| s.within_slo == Some(false))
        {
            Some(b) if b.failed > 0 => format!(" ({u}{} had {} failed requests)", b.load, b.failed),
            _ => String::new(),
        };
        let _ = match (&k.slo, k.slo_load) {
            (None, _) => writeln!(
                o,
                "knee: give --slo-ttft-ms, --slo-tpot-ms or --slo-e2e-ms for the largest load within them"
            ),
            (Some(slo), Some(l)) => {
                writeln!(
                    o,
                    "knee: {u}{l} is the largest load within {slo} at P99{why}"
                )
            }
            (Some(slo), None) => writeln!(o, "knee: even the first load breaks {slo} at P99{why}"),
        };
        let _ = match k.saturation_load {
            Some(l) => writeln!(
                o,
                "throughput stops rising at {u}{l} (the next step adds under {:.0} % of what its load would); most: {:.1} tok/s at {u}{}",
                STILL_RISING * 100.0,
                k.max_output_tokens_per_s,
                k.max_throughput_load
            ),
            None => writeln!(
                o,
                "throughput still rises at the largest load ({:.1} tok/s at {u}{}): sweep further",
                k.max_output_tokens_per_s, k.max_throughput_load
            ),
        };
        o
    }
}
