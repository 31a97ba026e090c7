//! The results document (JSON, versioned schema in
//! `loadgen/schema/results.v2.schema.json`) and the terminal summary.
//!
//! Times are seconds on the run clock (CLOCK_MONOTONIC since the run
//! started; `run.clock_origin_monotonic_ns` gives the origin, so they can be
//! laid next to gapscoped's timeline). Latencies are seconds.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{
    audit::{self, Check, Figures},
    flops::{self, ModelShape},
    plan::{PhaseKind, Plan, ThinkTime},
    record::TokenSource,
    runner::{PhaseRun, RunOutcome},
    stats::{PhaseStats, Summary, TokenAgreement},
    telemetry::{self, Sample, Source, WindowTelemetry},
};

pub(crate) const SCHEMA: &str = "gapscope-loadgen/results";
pub(crate) const SCHEMA_VERSION: u32 = 2;
/// Version 1 named the per-token ITL `itl` and the per-chunk one
/// `inter_chunk`; `compare` still reads it (`latency_aliases`).
pub(crate) const SCHEMA_VERSIONS_READ: [u32; 2] = [1, 2];

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
    /// How each figure is defined, in words (output token count, both
    /// ITLs, goodput, energy): the results say what they mean.
    #[serde(default)]
    pub definitions: BTreeMap<String, String>,
    /// `--sweep`: the throughput–latency curve and its knees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sweep: Option<crate::sweep::SweepResult>,
}

/// Version-1 latency names and what they are now.
pub(crate) fn latency_aliases(latency: &mut BTreeMap<String, Summary>) {
    for (old, new) in [("itl", "itl_token"), ("inter_chunk", "itl_chunk")] {
        if let Some(v) = latency.remove(old) {
            latency.entry(new.to_string()).or_insert(v);
        }
    }
}

/// The definitions written into every results file.
pub(crate) fn definitions() -> BTreeMap<String, String> {
    [
        ("output_tokens", "per request, the best count available: usage.completion_tokens when the server sends it, else the given tokenizer's count of the generated text, else token-bearing chunks (one token each unless the server said; a phase counted so is marked tokens_approximate). Throughput, goodput, MFU, tokens per joule and cost all use this one count."),
        ("tokens_in_time", "a request's tokens are placed where they arrived: its count is spread over its token-bearing chunks in proportion to what each carried (the server's per-chunk usage, else the tokenizer's tokens of each chunk's text, else one per chunk), so per-phase and per-second figures count what arrived inside the window, whichever phase sent it"),
        ("itl_chunk", "inter-token latency per chunk (vLLM bench serve): the time between two successive token-bearing chunks of a reply, whatever they carried"),
        ("itl_token", "inter-token latency per token: the time before a chunk carrying k tokens counts as k gaps of time/k; the tokens of the first chunk have none"),
        ("tpot", "per request, (last token - first token) / (output tokens - 1)"),
        ("ttft_reasoning", "time to the first reasoning token (delta.reasoning_content or delta.reasoning), for reasoning models"),
        ("ttft_answer", "time to the first answer token of a reply that reasoned first"),
        ("goodput", "requests completed in the window that met every SLO, and the tokens that arrived in the window from requests that met every SLO (counted as throughput counts them, so never above it)"),
        ("energy", "the energy counter's increase over the window when the counter moved at least twice in it; else power integrated over the window (a counter that did not move, e.g. dcgm-exporter's 30 s collection, is not trusted)"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
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
    /// The signal that stopped the run early, when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_by: Option<String>,
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
    /// Of `output_tokens`, those of reasoning (reasoning models).
    #[serde(default)]
    pub reasoning_tokens: u64,
    /// Requests whose tokens count (ok, or failed after some arrived) by
    /// where their output count came from: usage, tokenizer or chunks.
    #[serde(default)]
    pub output_token_sources: BTreeMap<String, u64>,
    /// Some request's count came from its chunks alone: every figure built
    /// on output tokens is approximate.
    #[serde(default)]
    pub tokens_approximate: bool,
    pub mean_context_tokens: Option<f64>,
    pub telemetry: Option<WindowTelemetry>,
    pub tokens_per_joule: Option<f64>,
    pub flops_per_token: Option<f64>,
    pub mfu: Option<f64>,
    pub cost_per_million_tokens_usd: Option<f64>,
    /// What the client itself cost while the phase ran.
    #[serde(default)]
    pub client: Option<ClientCost>,
    /// Multi-turn conversations: per turn, TTFT and prompt length, so
    /// prefix-cache effects show as the conversation grows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turns: Option<Vec<TurnResult>>,
}

/// One turn number's requests in a phase.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TurnResult {
    pub turn: u32,
    pub ok: u64,
    pub failed: u64,
    pub ttft: Option<Summary>,
    /// The whole prompt (the conversation so far): ours (with a
    /// tokenizer) and the server's `usage`.
    pub mean_prompt_tokens: Option<f64>,
    pub mean_usage_prompt_tokens: Option<f64>,
}

/// The load generator's own cost in a phase: if it nears its threads'
/// CPU, the client, not the server, may have set the pace.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClientCost {
    pub cpu_s: f64,
    /// CPU per request sent in the phase.
    pub cpu_per_request_us: Option<f64>,
    /// CPU over the phase's duration and the client's worker threads.
    pub cpu_share_of_threads: f64,
    pub threads: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TimeSeries {
    /// Per second of the run: [second, tokens arrived, requests completed,
    /// requests failed].
    pub per_second: Vec<[u64; 4]>,
    pub telemetry: Vec<Sample>,
}

/// Everything `build` needs besides the outcome.
pub(crate) struct Context<'a> {
    pub plan: &'a Plan,
    pub run_id: String,
    pub started_unix_ns: u64,
    pub clock_origin_monotonic_ns: u64,
    pub exact_prompts: bool,
    /// The client's worker threads (`--threads`).
    pub client_threads: usize,
    /// The shared prefix's share of the prompt tokens (random prompts).
    pub prefix_share: Option<f64>,
    pub model: Option<ModelShape>,
    pub telemetry: Option<(Vec<Sample>, Source)>,
    pub requests_jsonl: Option<String>,
}

fn s(ns: u64) -> f64 {
    ns as f64 / 1e9
}

pub(crate) fn build(ctx: Context, outcome: &RunOutcome) -> Results {
    let (samples, source) = match &ctx.telemetry {
        Some((s, src)) => (s.clone(), Some(src.clone())),
        None => (Vec::new(), None),
    };
    let (model_info, peak, gpus) = model_info(&ctx, source.as_ref());
    let phases: Vec<PhaseResult> = outcome
        .stats
        .phases
        .iter()
        .zip(&outcome.phases)
        .map(|(st, run)| phase_result(&ctx, st, run, &samples, peak, gpus))
        .collect();

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
    let users_think =
        ctx.plan.prompts.turns > 1 && ctx.plan.prompts.think_time != ThinkTime::Fixed(0.0);
    let checks = audit::audit(&figures(&phases, &outcome.stats.phases, users_think));
    let sweep =
        ctx.plan.sweep.as_ref().map(|s| {
            crate::sweep::build(s, &phases, &ctx.plan.slo, s.step_s * ctx.plan.time_scale)
        });
    let per_second = outcome
        .stats
        .per_second
        .iter()
        .enumerate()
        .map(|(i, (tok, ok, bad))| [i as u64, *tok, *ok, *bad])
        .collect();
    Results {
        schema: SCHEMA.into(),
        schema_version: SCHEMA_VERSION,
        tool: Tool {
            name: "gapscope-loadgen".into(),
            version: env!("CARGO_PKG_VERSION").into(),
        },
        run: run_info(ctx, outcome),
        model: model_info,
        telemetry: telemetry_info,
        phases,
        audit: checks,
        timeseries: TimeSeries {
            per_second,
            telemetry: samples,
        },
        definitions: definitions(),
        sweep,
    }
}

/// The model, GPU and cost the figures are computed against, with the
/// assumptions made; the peak TFLOPS of one GPU and the GPU count.
fn model_info(ctx: &Context, source: Option<&Source>) -> (Option<ModelInfo>, Option<f64>, u32) {
    let plan = ctx.plan;
    // The GPU: given, else the telemetry's modelName.
    let (gpu, gpu_source) = match (&plan.model.gpu, source.and_then(|s| s.gpu_model.clone())) {
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
        .or_else(|| source.map(|s| s.gpus as u32).filter(|n| *n > 0))
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
                "peak {p} TFLOPS from the table row {row} for {g:?} ({})",
                flops::peak_source(row).unwrap_or("no source noted")
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

    (model_info, peak, gpus)
}

/// One phase's figures from its statistics, its run and the telemetry.
fn phase_result(
    ctx: &Context,
    st: &PhaseStats,
    run: &PhaseRun,
    samples: &[Sample],
    peak: Option<f64>,
    gpus: u32,
) -> PhaseResult {
    let plan = ctx.plan;
    let window = st.window_s().max(1e-9);
    let latency: BTreeMap<String, Summary> = [
        ("ttft", &st.ttft),
        ("ttft_from_schedule", &st.ttft_from_schedule),
        ("ttft_reasoning", &st.ttft_reasoning),
        ("ttft_answer", &st.ttft_answer),
        ("tpot", &st.tpot),
        ("itl_chunk", &st.itl_chunk),
        ("itl_token", &st.itl_token),
        ("e2e", &st.e2e),
        ("e2e_from_schedule", &st.e2e_from_schedule),
        ("queue", &st.queue),
        ("send_lag", &st.send_lag),
    ]
    .into_iter()
    .filter_map(|(k, h)| Some((k.to_string(), h.summary()?)))
    .collect();
    let tokens_per_s = st.tokens_in_window as f64 / window;
    let tw = (!samples.is_empty()).then(|| telemetry::window(samples, st.start_ns, st.end_ns));
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
        (Some(f), Some(p)) if st.tokens_in_window > 0 => Some(flops::mfu(tokens_per_s, f, gpus, p)),
        _ => None,
    };
    let failed: u64 = st.errors.values().sum();
    PhaseResult {
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
        reasoning_tokens: st.reasoning_tokens,
        output_token_sources: st
            .token_sources
            .iter()
            .map(|(k, v)| (k.name().to_string(), *v))
            .collect(),
        tokens_approximate: st.token_sources.contains_key(&TokenSource::Chunks),
        mean_context_tokens: mean_context,
        telemetry: tw,
        tokens_per_joule,
        flops_per_token,
        mfu,
        cost_per_million_tokens_usd: plan
            .cost
            .gpu_hour_usd
            .and_then(|usd| flops::cost_per_million(tokens_per_s, gpus, usd)),
        turns: (!st.by_turn.is_empty()).then(|| {
            let mean = |(sum, n): (u64, u64)| (n > 0).then(|| sum as f64 / n as f64);
            st.by_turn
                .iter()
                .map(|(turn, t)| TurnResult {
                    turn: *turn,
                    ok: t.ok,
                    failed: t.failed,
                    ttft: t.ttft.summary(),
                    mean_prompt_tokens: mean(t.prompt_tokens),
                    mean_usage_prompt_tokens: mean(t.usage_prompt_tokens),
                })
                .collect()
        }),
        client: {
            let cpu_s = run.client_cpu_ns as f64 / 1e9;
            let duration = st.window_s();
            (duration > 0.0).then(|| ClientCost {
                cpu_s,
                cpu_per_request_us: (st.sent > 0).then(|| cpu_s * 1e6 / st.sent as f64),
                // Of the threads the machine can run at once.
                cpu_share_of_threads: cpu_s / duration / usable_threads(ctx.client_threads) as f64,
                threads: ctx.client_threads,
            })
        },
    }
}

/// What the audit compares: each phase's figures measured apart.
fn figures(phases: &[PhaseResult], stats: &[PhaseStats], users_think: bool) -> Vec<Figures> {
    // The run's own MFU and tokens per joule follow from its throughput:
    // the audit compares only what was measured apart. Little's law takes
    // the mean latency of the requests the completion rate counts.
    phases
        .iter()
        .zip(stats)
        .filter(|(p, _)| p.output_tokens > 0 || p.throughput.output_tokens_per_s > 0.0)
        .map(|(p, st)| Figures {
            phase: p.name.clone(),
            tokens_per_s: p.throughput.output_tokens_per_s,
            concurrency: (p.kind == PhaseKind::ClosedLoop)
                .then_some(p.concurrency)
                .flatten(),
            avg_in_flight: Some(p.avg_in_flight),
            completions_per_s: Some(p.throughput.requests_per_s),
            mean_e2e_s: (st.completed_in_window > 0)
                .then(|| st.e2e_in_window_ns as f64 / st.completed_in_window as f64 / 1e9),
            window_s: Some(p.duration_s),
            longest_e2e_s: Some(st.longest_in_window_ns as f64 / 1e9),
            energy_counter_j: p.telemetry.as_ref().and_then(|t| t.energy_counter_j),
            energy_power_j: p.telemetry.as_ref().and_then(|t| t.energy_power_j),
            counter_updates: p.telemetry.as_ref().map_or(0, |t| t.counter_updates),
            // Only phases that sent requests: a silence's CPU is the
            // replies of the phase before.
            client: p
                .client
                .as_ref()
                .filter(|_| p.sent > 0)
                .map(|c| (c.cpu_share_of_threads, c.threads)),
            users_think,
            ..Figures::default()
        })
        .collect()
}

/// The run: its identity, settings and how it ended.
fn run_info(ctx: Context, outcome: &RunOutcome) -> RunInfo {
    let plan = ctx.plan;
    let violations = outcome
        .stats
        .phases
        .iter()
        .map(|p| p.agreement.length_not_honoured)
        .sum();
    RunInfo {
        run_id: ctx.run_id,
        started_unix_ns: ctx.started_unix_ns,
        clock_origin_monotonic_ns: ctx.clock_origin_monotonic_ns,
        interrupted: outcome.interrupted.is_some(),
        stopped_by: outcome
            .interrupted
            .map(|s| crate::runner::signal_name(s).to_string()),
        seed: plan.seed,
        time_scale: plan.time_scale,
        endpoint: serde_json::json!({
            "url": plan.endpoint.url,
            "api": plan.endpoint.api,
            "stream": plan.endpoint.stream,
            "model": plan.endpoint.model,
            "tls": plan.endpoint.url.starts_with("https://").then(|| serde_json::json!({
                "cacert": plan.tls.cacert,
                "insecure": plan.tls.insecure,
                "client_certificate": plan.tls.cert,
                "http1_only": plan.tls.http1_only,
            })),
            "http_versions": outcome.stats.http_versions,
        }),
        prompts: serde_json::json!({
            "source": plan.prompts.source,
            "path": plan.prompts.path,
            "input_tokens": plan.prompts.input_tokens,
            "tokenizer": plan.prompts.tokenizer,
            "exact_lengths": ctx.exact_prompts,
            "shared_prefix": (plan.prompts.shared_prefix_tokens > 0).then(|| serde_json::json!({
                "tokens": plan.prompts.shared_prefix_tokens,
                "groups": plan.prompts.prefix_groups,
                "share_of_prompt_tokens": ctx.prefix_share,
                "exact": ctx.exact_prompts,
            })),
            "conversations": outcome.conversations.as_ref().map(|c| serde_json::json!({
                "turns": plan.prompts.turns,
                "think_time": plan.prompts.think_time,
                "started": c.started,
                "completed": c.completed,
                "cut_at_phase_end": c.cut_at_phase_end,
                "ended_by_error": c.ended_by_error,
            })),
        }),
        output: serde_json::to_value(&plan.output).unwrap_or_default(),
        slo: serde_json::to_value(&plan.slo).unwrap_or_default(),
        last_request_done_s: s(outcome.last_done_ns),
        requests_jsonl: ctx.requests_jsonl,
        fixed_length_violations: violations,
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

    /// The terminal summary (`summary::render`).
    pub fn summary(&self) -> String {
        crate::summary::render(self)
    }
}

/// The client's threads that can run at once: `--threads`, at most the
/// CPUs this process may use.
fn usable_threads(threads: usize) -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    threads.clamp(1, cpus)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_1_latency_names_are_read_as_their_version_2_names() {
        let s = |p50: f64| Summary {
            count: 1,
            mean: p50,
            p50,
            p90: p50,
            p95: p50,
            p99: p50,
            p999: p50,
            max: p50,
        };
        let mut latency: BTreeMap<String, Summary> = [
            ("itl".to_string(), s(0.002)),
            ("inter_chunk".to_string(), s(0.006)),
        ]
        .into();
        latency_aliases(&mut latency);
        assert_eq!(latency["itl_token"].p50, 0.002);
        assert_eq!(latency["itl_chunk"].p50, 0.006);
        assert!(!latency.contains_key("itl") && !latency.contains_key("inter_chunk"));
    }
}
