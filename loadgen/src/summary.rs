//! The terminal summary of a run: one table row per phase (the seed's
//! columns), then what each phase's row cannot say — ITL per chunk,
//! approximate token counts, reasoning, the open loop's lag, the closed
//! loop's concurrency, errors, disagreeing counts — then idle power and
//! the audit.

use std::fmt::Write;

use crate::{
    results::{PhaseResult, Results},
    stats::Summary,
};

pub(crate) fn render(results: &Results) -> String {
    let mut o = table(&results.phases);
    let conversations = results.run.prompts["conversations"].is_object();
    for p in &results.phases {
        phase_notes(&mut o, p, conversations);
    }
    if let Some(s) = &results.sweep {
        o.push_str(&s.render());
    }
    let prefix = &results.run.prompts["shared_prefix"];
    if let Some(tokens) = prefix["tokens"].as_u64() {
        let share = prefix["share_of_prompt_tokens"]
            .as_f64()
            .map_or(String::new(), |s| {
                format!(", {:.1} % of prompt tokens", s * 100.0)
            });
        let _ = writeln!(
            o,
            "shared prefix: {tokens} tokens{} in {} group(s){share}",
            if prefix["exact"] == true {
                ""
            } else {
                " (about)"
            },
            prefix["groups"]
        );
    }
    let c = &results.run.prompts["conversations"];
    if c.is_object() {
        let _ = writeln!(
            o,
            "conversations of {} turns (think time {}): {} started, {} completed, {} cut at their phase's end, {} ended by an error",
            c["turns"],
            c["think_time"].as_str().unwrap_or("-"),
            c["started"],
            c["completed"],
            c["cut_at_phase_end"],
            c["ended_by_error"]
        );
    }
    if let Some(t) = &results.telemetry
        && let Some(idle) = t.idle_power_w
    {
        let _ = writeln!(o, "idle power (silent phase): {idle:.1} W");
    }
    for c in &results.audit {
        let _ = writeln!(o, "audit {c}");
    }
    o
}

/// The table: a header and one row per phase.
fn table(phases: &[PhaseResult]) -> String {
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
        "ITLtok p99",
        "E2E p99",
        "MFU",
        "tok/J"
    );
    for p in phases {
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
            ms(p.latency.get("itl_token"), |l| l.p99),
            ms(p.latency.get("e2e"), |l| l.p99),
            p.mfu
                .map(|m| format!("{:.2}%", m * 100.0))
                .unwrap_or_else(|| "-".into()),
            p.tokens_per_joule
                .map(|t| format!("{t:.3}"))
                .unwrap_or_else(|| "-".into()),
        );
    }
    let _ = writeln!(
        o,
        "(latencies in ms; ITLtok is per token, per chunk below; tok/s from usage, else the tokenizer, else chunks)"
    );
    o
}

/// The lines about one phase below the table.
fn phase_notes(o: &mut String, p: &PhaseResult, conversations: bool) {
    if let Some(c) = p.latency.get("itl_chunk") {
        let _ = writeln!(
            o,
            "{}: ITL per chunk p50 {:.1} ms, p99 {:.1} ms",
            p.name,
            c.p50 * 1e3,
            c.p99 * 1e3
        );
    }
    if p.tokens_approximate {
        let _ = writeln!(
            o,
            "{}: approximate: counted chunks (no usage from the server and no --tokenizer) for {} of {} requests; tok/s, goodput, MFU, tok/J and cost count chunks as tokens",
            p.name,
            p.output_token_sources.get("chunks").copied().unwrap_or(0),
            p.output_token_sources.values().sum::<u64>()
        );
    }
    if p.reasoning_tokens > 0 {
        let t = |k: &str| {
            p.latency
                .get(k)
                .map(|l| format!("{:.1} ms", l.p50 * 1e3))
                .unwrap_or("-".into())
        };
        let _ = writeln!(
            o,
            "{}: reasoning {} of {} output tokens; TTFT p50 to reasoning {}, to the answer {}",
            p.name,
            p.reasoning_tokens,
            p.output_tokens,
            t("ttft_reasoning"),
            t("ttft_answer")
        );
    }
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
        // With conversations the schedule starts conversations; their
        // later turns come on their own schedule.
        let unit = if conversations {
            "conversations/s (each turn a request)"
        } else {
            "req/s"
        };
        let _ = writeln!(
            o,
            "{}: open loop at {target} {unit}: sent {achieved:.2} req/s; P99 send lag {lag}; P99 queueing {queue}",
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
    if let Some(c) = &p.client
        && p.sent > 0
    {
        let _ = writeln!(
            o,
            "{}: the client's own CPU: {:.0} µs per request, {:.0} % of its {} thread(s)",
            p.name,
            c.cpu_per_request_us.unwrap_or(0.0),
            c.cpu_share_of_threads * 100.0,
            c.threads
        );
    }
    for t in p.turns.iter().flatten() {
        let prompt = t
            .mean_prompt_tokens
            .or(t.mean_usage_prompt_tokens)
            .map_or("-".into(), |n| format!("{n:.0}"));
        let ttft = |f: fn(&Summary) -> f64| {
            t.ttft
                .as_ref()
                .map_or("-".into(), |l| format!("{:.1}", f(l) * 1e3))
        };
        let _ = writeln!(
            o,
            "{}: turn {}: {} ok, {} failed, prompt {prompt} tokens, TTFT p50 {} ms, p99 {} ms",
            p.name,
            t.turn,
            t.ok,
            t.failed,
            ttft(|l| l.p50),
            ttft(|l| l.p99)
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
