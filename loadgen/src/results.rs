//! The results document (JSON, versioned schema in
//! `loadgen/schema/results.v1.schema.json`) and the terminal summary.
//!
//! Times are seconds on the run clock (CLOCK_MONOTONIC since the run
//! started; `run.clock_origin_monotonic_ns` gives the origin, so they can be
//! laid next to gapscoped's timeline). Latencies are seconds.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{
    audit::{self, Check, Figures},
    flops::{self, ModelShape},
    plan::{PhaseKind, Plan},
    runner::RunOutcome,
    stats::{PhaseStats, Summary, TokenAgreement},
    telemetry::{self, Sample, Source, WindowTelemetry},
};

pub const SCHEMA: &str = "gapscope-loadgen/results";
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Results {
    pub schema: String,
    pub schema_version: u32,
    pub tool: Tool,
    pub run: RunInfo,
    pub model: Option<ModelInfo>,
    pub telemetry: Option<TelemetryInfo>,
    pub phases: Vec<PhaseResult>,
    pub audit: Vec<Check>,
    pub timeseries: TimeSeries,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Tool {
    pub name: String,
    pub version: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunInfo {
    pub run_id: String,
    pub started_unix_ns: u64,
    pub clock_origin_monotonic_ns: u64,
    pub interrupted: bool,
    pub seed: u64,
    pub time_scale: f64,
    pub endpoint: serde_json::Value,
    pub prompts: serde_json::Value,
    pub output: serde_json::Value,
    pub slo: serde_json::Value,
    /// When the last reply finished (s on the run clock).
    pub last_request_done_s: f64,
    pub requests_jsonl: Option<String>,
    /// A fixed output length was asked for: requests where it was not.
    pub fixed_length_violations: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelInfo {
    pub shape: Option<ModelShape>,
    pub gpu: Option<String>,
    pub gpu_source: Option<String>,
    pub peak_tflops_per_gpu: Option<f64>,
    pub gpus: u32,
    pub gpu_hour_usd: Option<f64>,
    /// Every assumption the MFU, energy and cost figures rest on.
    pub assumptions: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TelemetryInfo {
    pub source: serde_json::Value,
    /// Average power during the silent phases, after the last reply of the
    /// phase before finished (plus a second to settle).
    pub idle_power_w: Option<f64>,
    pub idle_utilization: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Throughput {
    pub requests_per_s: f64,
    pub output_tokens_per_s: f64,
    pub chunks_per_s: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Goodput {
    pub requests_per_s: f64,
    pub output_tokens_per_s: f64,
    /// Share of requests completed in the window that met every SLO.
    pub fraction: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PhaseResult {
    pub name: String,
    pub kind: PhaseKind,
    pub start_s: f64,
    pub end_s: f64,
    pub duration_s: f64,
    pub target_rate: Option<f64>,
    /// Open loop: requests sent per second of the window.
    pub achieved_rate: Option<f64>,
    pub scheduled: Option<u64>,
    pub sent: u64,
    pub ok: u64,
    pub failed: u64,
    pub errors: BTreeMap<String, u64>,
    pub error_examples: BTreeMap<String, Vec<String>>,
    pub concurrency: Option<usize>,
    pub max_concurrency: Option<usize>,
    pub max_in_flight: usize,
    pub avg_in_flight: f64,
    pub throughput: Throughput,
    pub goodput: Goodput,
    pub latency: BTreeMap<String, Summary>,
    pub tokens: TokenAgreement,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub mean_context_tokens: Option<f64>,
    pub telemetry: Option<WindowTelemetry>,
    pub tokens_per_joule: Option<f64>,
    pub flops_per_token: Option<f64>,
    pub mfu: Option<f64>,
    pub cost_per_million_tokens_usd: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TimeSeries {
    /// Per second of the run: [second, tokens arrived, requests completed,
    /// requests failed].
    pub per_second: Vec<[u64; 4]>,
    pub telemetry: Vec<Sample>,
}

/// Everything `build` needs besides the outcome.
pub struct Context<'a> {
    pub plan: &'a Plan,
    pub run_id: String,
    pub started_unix_ns: u64,
    pub clock_origin_monotonic_ns: u64,
    pub exact_prompts: bool,
    pub model: Option<ModelShape>,
    pub telemetry: Option<(Vec<Sample>, Source)>,
    pub requests_jsonl: Option<String>,
}

fn s(ns: u64) -> f64 {
    ns as f64 / 1e9
}

pub fn build(ctx: Context, outcome: &RunOutcome) -> Results {
    let plan = ctx.plan;
    let (samples, source) = match &ctx.telemetry {
        Some((s, src)) => (s.clone(), Some(src.clone())),
        None => (Vec::new(), None),
    };
    // The GPU: given, else the telemetry's modelName.
    let (gpu, gpu_source) = match (
        &plan.model.gpu,
        source.as_ref().and_then(|s| s.gpu_model.clone()),
    ) {
        (Some(g), _) => (Some(g.clone()), Some("given".to_string())),
        (None, Some(g)) => (Some(g), Some("telemetry modelName".into())),
        _ => (None, None),
    };
    let peak = plan
        .model
        .peak_tflops
        .or_else(|| gpu.as_deref().and_then(flops::peak_for).map(|p| p.1));
    let gpus = plan
        .model
        .gpus
        .or_else(|| source.as_ref().map(|s| s.gpus as u32).filter(|n| *n > 0))
        .unwrap_or(1);
    let mut assumptions = vec![
        "FLOPs per output token = 2·N + 2·layers·context·hidden (context = prompt + half the output, averaged over the phase's requests)".to_string(),
        "MFU counts output tokens only (decode); prompt processing is not credited".into(),
        format!("peak = dense FP16/BF16 tensor TFLOPS per GPU × {gpus} GPU(s)"),
        "token throughput counts tokens that arrived inside the phase's window, from any request".into(),
    ];
    if let Some(g) = &gpu {
        match (plan.model.peak_tflops, flops::peak_for(g)) {
            (Some(p), _) => assumptions.push(format!("peak {p} TFLOPS given")),
            (None, Some((row, p))) => assumptions.push(format!(
                "peak {p} TFLOPS from the table row {row} for {g:?}"
            )),
            (None, None) => assumptions.push(format!(
                "no peak known for {g:?}: give --peak-tflops for MFU"
            )),
        }
    }
    if let Some(usd) = plan.cost.gpu_hour_usd {
        assumptions.push(format!("cost = ${usd}/GPU-hour × {gpus} GPU(s) / (output tokens/s × 3600) × 1e6 per million tokens"));
    }
    let model_info = (ctx.model.is_some() || gpu.is_some() || plan.cost.gpu_hour_usd.is_some())
        .then(|| ModelInfo {
            shape: ctx.model.clone(),
            gpu: gpu.clone(),
            gpu_source,
            peak_tflops_per_gpu: peak,
            gpus,
            gpu_hour_usd: plan.cost.gpu_hour_usd,
            assumptions: assumptions.clone(),
        });

    let mut phases = Vec::new();
    for (i, (st, run)) in outcome.stats.phases.iter().zip(&outcome.phases).enumerate() {
        let window = st.window_s().max(1e-9);
        let latency: BTreeMap<String, Summary> = [
            ("ttft", &st.ttft),
            ("ttft_from_schedule", &st.ttft_from_schedule),
            ("tpot", &st.tpot),
            ("itl", &st.itl),
            ("inter_chunk", &st.inter_chunk),
            ("e2e", &st.e2e),
            ("e2e_from_schedule", &st.e2e_from_schedule),
            ("queue", &st.queue),
            ("send_lag", &st.send_lag),
        ]
        .into_iter()
        .filter_map(|(k, h)| Some((k.to_string(), h.summary()?)))
        .collect();
        let tokens_per_s = st.tokens_in_window as f64 / window;
        let tw = (!samples.is_empty()).then(|| telemetry::window(&samples, st.start_ns, st.end_ns));
        let tokens_per_joule = tw
            .as_ref()
            .and_then(|t| t.energy_j)
            .filter(|e| *e > 0.0 && st.tokens_in_window > 0)
            .map(|e| st.tokens_in_window as f64 / e);
        let mean_context = (st.ok > 0).then(|| st.context_tokens / st.ok as f64);
        let flops_per_token = ctx
            .model
            .as_ref()
            .map(|m| m.flops_per_token(mean_context.unwrap_or(0.0)));
        let mfu = match (flops_per_token, peak) {
            (Some(f), Some(p)) if st.tokens_in_window > 0 => {
                Some(flops::mfu(tokens_per_s, f, gpus, p))
            }
            _ => None,
        };
        let failed: u64 = st.errors.values().sum();
        phases.push(PhaseResult {
            name: run.name.clone(),
            kind: run.kind,
            start_s: s(st.start_ns),
            end_s: s(st.end_ns),
            duration_s: window,
            target_rate: run.target_rate,
            achieved_rate: (run.kind == PhaseKind::OpenLoop).then(|| st.sent as f64 / window),
            scheduled: (run.kind == PhaseKind::OpenLoop).then_some(run.scheduled),
            sent: st.sent,
            ok: st.ok,
            failed,
            errors: st
                .errors
                .iter()
                .map(|(k, v)| (k.name().to_string(), *v))
                .collect(),
            error_examples: st
                .error_examples
                .iter()
                .map(|(k, v)| (k.name().to_string(), v.clone()))
                .collect(),
            concurrency: run.concurrency,
            max_concurrency: run.max_concurrency,
            max_in_flight: st.max_in_flight,
            avg_in_flight: st.in_flight_ns as f64 / (window * 1e9),
            throughput: Throughput {
                requests_per_s: st.completed_in_window as f64 / window,
                output_tokens_per_s: tokens_per_s,
                chunks_per_s: st.chunks_in_window as f64 / window,
            },
            goodput: Goodput {
                requests_per_s: st.good_in_window as f64 / window,
                output_tokens_per_s: st.good_tokens_in_window as f64 / window,
                fraction: if st.completed_in_window > 0 {
                    st.good_in_window as f64 / st.completed_in_window as f64
                } else {
                    0.0
                },
            },
            latency,
            tokens: st.agreement.clone(),
            input_tokens: st.input_tokens,
            output_tokens: st.output_tokens,
            mean_context_tokens: mean_context,
            telemetry: tw,
            tokens_per_joule,
            flops_per_token,
            mfu,
            cost_per_million_tokens_usd: plan
                .cost
                .gpu_hour_usd
                .and_then(|usd| flops::cost_per_million(tokens_per_s, gpus, usd)),
        });
        let _ = i;
    }

    // Idle: the silent phases, once the replies of the phase before are in.
    let idle = idle_window(&outcome.stats.phases, &outcome.phases).and_then(|(a, b)| {
        let w = telemetry::window(&samples, a, b);
        (w.samples > 0).then_some(w)
    });
    let telemetry_info = source.map(|src| TelemetryInfo {
        source: serde_json::to_value(src).unwrap_or_default(),
        idle_power_w: idle.as_ref().and_then(|w| w.avg_power_w),
        idle_utilization: idle.as_ref().and_then(|w| w.avg_utilization),
    });

    let figures: Vec<Figures> = phases
        .iter()
        .filter(|p| p.output_tokens > 0 || p.throughput.output_tokens_per_s > 0.0)
        .map(|p| Figures {
            phase: p.name.clone(),
            tokens_per_s: p.throughput.output_tokens_per_s,
            mfu: p.mfu,
            mfu_expected: None,
            tokens_per_joule: p.tokens_per_joule,
            avg_power_w: p.telemetry.as_ref().and_then(|t| t.avg_power_w),
            concurrency: (p.kind == PhaseKind::ClosedLoop)
                .then_some(p.concurrency)
                .flatten(),
            avg_in_flight: Some(p.avg_in_flight),
            completions_per_s: Some(p.throughput.requests_per_s),
            mean_e2e_s: p.latency.get("e2e").map(|l| l.mean),
            window_s: Some(p.duration_s),
        })
        .collect();
    let checks = audit::audit(&figures);

    let per_second = outcome
        .stats
        .per_second
        .iter()
        .enumerate()
        .map(|(i, (tok, ok, bad))| [i as u64, *tok, *ok, *bad])
        .collect();
    let violations = outcome
        .stats
        .phases
        .iter()
        .map(|p| p.agreement.length_not_honoured)
        .sum();
    Results {
        schema: SCHEMA.into(),
        schema_version: SCHEMA_VERSION,
        tool: Tool {
            name: "gapscope-loadgen".into(),
            version: env!("CARGO_PKG_VERSION").into(),
        },
        run: RunInfo {
            run_id: ctx.run_id,
            started_unix_ns: ctx.started_unix_ns,
            clock_origin_monotonic_ns: ctx.clock_origin_monotonic_ns,
            interrupted: outcome.interrupted,
            seed: plan.seed,
            time_scale: plan.time_scale,
            endpoint: serde_json::json!({
                "url": plan.endpoint.url,
                "api": plan.endpoint.api,
                "stream": plan.endpoint.stream,
                "model": plan.endpoint.model,
            }),
            prompts: serde_json::json!({
                "source": plan.prompts.source,
                "path": plan.prompts.path,
                "input_tokens": plan.prompts.input_tokens,
                "tokenizer": plan.prompts.tokenizer,
                "exact_lengths": ctx.exact_prompts,
            }),
            output: serde_json::to_value(&plan.output).unwrap_or_default(),
            slo: serde_json::to_value(&plan.slo).unwrap_or_default(),
            last_request_done_s: s(outcome.last_done_ns),
            requests_jsonl: ctx.requests_jsonl,
            fixed_length_violations: violations,
        },
        model: model_info,
        telemetry: telemetry_info,
        phases,
        audit: checks,
        timeseries: TimeSeries {
            per_second,
            telemetry: samples,
        },
    }
}

/// The part of the silent phases where nothing is in flight any more.
fn idle_window(stats: &[PhaseStats], runs: &[crate::runner::PhaseRun]) -> Option<(u64, u64)> {
    for (i, r) in runs.iter().enumerate() {
        if r.kind != PhaseKind::Silence {
            continue;
        }
        let spill = stats[..i].iter().map(|p| p.last_done_ns).max().unwrap_or(0);
        let from = stats[i].start_ns.max(spill + 1_000_000_000);
        if from < stats[i].end_ns {
            return Some((from, stats[i].end_ns));
        }
    }
    None
}

impl Results {
    /// Any request failed in any phase.
    pub fn had_errors(&self) -> bool {
        self.phases.iter().any(|p| p.failed > 0)
    }

    /// The terminal summary.
    pub fn summary(&self) -> String {
        use std::fmt::Write;
        let mut o = String::new();
        let ms = |l: Option<&Summary>, f: fn(&Summary) -> f64| {
            l.map(|l| format!("{:.1}", f(l) * 1e3))
                .unwrap_or_else(|| "-".into())
        };
        let _ = writeln!(
            o,
            "{:<10} {:<11} {:>6} {:>6} {:>5} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7} {:>7}",
            "phase",
            "kind",
            "secs",
            "ok",
            "err",
            "req/s",
            "tok/s",
            "TTFT p50",
            "TTFT p99",
            "ITL p99",
            "E2E p99",
            "MFU",
            "tok/J"
        );
        for p in &self.phases {
            let _ = writeln!(
                o,
                "{:<10} {:<11} {:>6.1} {:>6} {:>5} {:>8.2} {:>9.1} {:>9} {:>9} {:>9} {:>9} {:>7} {:>7}",
                p.name,
                p.kind.name(),
                p.duration_s,
                p.ok,
                p.failed,
                p.throughput.requests_per_s,
                p.throughput.output_tokens_per_s,
                ms(p.latency.get("ttft"), |l| l.p50),
                ms(p.latency.get("ttft"), |l| l.p99),
                ms(p.latency.get("itl"), |l| l.p99),
                ms(p.latency.get("e2e"), |l| l.p99),
                p.mfu
                    .map(|m| format!("{:.2}%", m * 100.0))
                    .unwrap_or_else(|| "-".into()),
                p.tokens_per_joule
                    .map(|t| format!("{t:.3}"))
                    .unwrap_or_else(|| "-".into()),
            );
        }
        let _ = writeln!(o, "(latencies in ms)");
        for p in &self.phases {
            if let (Some(target), Some(achieved)) = (p.target_rate, p.achieved_rate) {
                let lag = p
                    .latency
                    .get("send_lag")
                    .map(|l| format!("{:.3} ms", l.p99 * 1e3))
                    .unwrap_or("-".into());
                let queue = p
                    .latency
                    .get("queue")
                    .map(|l| format!("{:.1} ms", l.p99 * 1e3))
                    .unwrap_or("-".into());
                let _ = writeln!(
                    o,
                    "{}: open loop at {target} req/s: sent {achieved:.2} req/s; P99 send lag {lag}; P99 queueing {queue}",
                    p.name
                );
            }
            if let Some(c) = p.concurrency {
                let _ = writeln!(
                    o,
                    "{}: closed loop at {c}: {:.2} in flight on average, at most {}",
                    p.name, p.avg_in_flight, p.max_in_flight
                );
            }
            for (kind, n) in &p.errors {
                let example = p
                    .error_examples
                    .get(kind)
                    .and_then(|e| e.first())
                    .cloned()
                    .unwrap_or_default();
                let _ = writeln!(o, "{}: {n} {kind} errors (e.g. {example})", p.name);
            }
            let t = &p.tokens;
            if t.usage_vs_counted + t.usage_vs_tokenizer + t.prompt_vs_usage > 0 {
                let _ = writeln!(
                    o,
                    "{}: token counts disagree: usage vs chunks in {} requests, usage vs tokenizer in {}, prompt vs usage in {}",
                    p.name, t.usage_vs_counted, t.usage_vs_tokenizer, t.prompt_vs_usage
                );
            }
        }
        if let Some(t) = &self.telemetry
            && let Some(idle) = t.idle_power_w
        {
            let _ = writeln!(o, "idle power (silent phase): {idle:.1} W");
        }
        for c in &self.audit {
            let _ = writeln!(o, "audit {c}");
        }
        o
    }
}
