//! Per-phase statistics, built one finished request at a time so memory
//! stays bounded however long the run: HDR histograms for latencies and
//! counters for throughput, errors and token-count agreement.
//!
//! A request's latencies belong to the phase that sent it. Throughput
//! belongs to time: the tokens that *arrived* inside a phase's window, the
//! requests that *finished* inside it, and the requests in flight during
//! it (for Little's law), whichever phase sent them.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::{
    plan::Slo,
    record::{ErrorKind, RequestRecord, TokenSource},
};

/// A latency histogram in ns: 1 µs to 1 h at three significant digits.
pub(crate) struct Latency(Histogram<u64>);

impl Latency {
    fn new() -> Self {
        Self(Histogram::new_with_bounds(1_000, 3_600_000_000_000, 3).expect("valid bounds"))
    }

    pub(crate) fn record(&mut self, ns: u64) {
        self.0.saturating_record(ns.max(1));
    }

    fn record_n(&mut self, ns: u64, n: u64) {
        let _ = self.0.record_n(ns.clamp(1, 3_600_000_000_000), n);
    }

    pub(crate) fn summary(&self) -> Option<Summary> {
        if self.0.is_empty() {
            return None;
        }
        let s = |ns: u64| ns as f64 / 1e9;
        let q = |p: f64| s(self.0.value_at_quantile(p));
        Some(Summary {
            count: self.0.len(),
            mean: self.0.mean() / 1e9,
            p50: q(0.5),
            p90: q(0.9),
            p95: q(0.95),
            p99: q(0.99),
            p999: q(0.999),
            max: s(self.0.max()),
        })
    }

    /// (seconds, cumulative fraction) points for a CDF plot.
    pub(crate) fn cdf(&self, points: usize) -> Vec<(f64, f64)> {
        if self.0.is_empty() {
            return Vec::new();
        }
        (0..=points)
            .map(|i| {
                let q = i as f64 / points as f64;
                (self.0.value_at_quantile(q) as f64 / 1e9, q)
            })
            .collect()
    }
}

/// Percentiles of a latency, in seconds.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Summary {
    pub count: u64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p95: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

/// Requests where the three output-token counts disagree.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct TokenAgreement {
    /// Requests whose reply carried `usage`.
    pub with_usage: u64,
    pub with_tokenizer: u64,
    /// usage.completion_tokens ≠ tokens counted from chunks.
    pub usage_vs_counted: u64,
    /// usage.completion_tokens ≠ the tokenizer's count.
    pub usage_vs_tokenizer: u64,
    /// Our prompt length ≠ usage.prompt_tokens.
    pub prompt_vs_usage: u64,
    /// A fixed output length was asked for and not produced.
    pub length_not_honoured: u64,
}

pub(crate) struct PhaseStats {
    pub start_ns: u64,
    pub end_ns: u64,
    pub ttft: Latency,
    pub ttft_from_schedule: Latency,
    /// Time to the first reasoning token and to the first answer token,
    /// for replies of reasoning models that stream both.
    pub ttft_reasoning: Latency,
    pub ttft_answer: Latency,
    pub tpot: Latency,
    /// Inter-token latency per chunk (vLLM's `bench serve`): the gap
    /// between two successive token-bearing chunks, whatever they carried.
    pub itl_chunk: Latency,
    /// Inter-token latency per token: the gap before a chunk of k tokens
    /// is k gaps of gap/k (the first chunk's tokens have none).
    pub itl_token: Latency,
    pub e2e: Latency,
    pub e2e_from_schedule: Latency,
    pub queue: Latency,
    pub send_lag: Latency,
    pub sent: u64,
    pub ok: u64,
    pub errors: BTreeMap<ErrorKind, u64>,
    /// A sample of error details per kind (the first few).
    pub error_examples: BTreeMap<ErrorKind, Vec<String>>,
    /// Arrived inside this phase's window, from any request.
    pub tokens_in_window: u64,
    pub chunks_in_window: u64,
    pub completed_in_window: u64,
    pub good_in_window: u64,
    /// Tokens that arrived inside the window from requests that met the
    /// SLO: counted as `tokens_in_window` is, so never above it.
    pub good_tokens_in_window: u64,
    /// Request-nanoseconds in flight inside the window.
    pub in_flight_ns: u128,
    /// Latencies of the requests completed inside the window, summed, and
    /// the longest latency of any request in flight in it: Little's law
    /// over the window (`audit`).
    pub e2e_in_window_ns: u128,
    pub longest_in_window_ns: u64,
    pub max_in_flight: usize,
    /// When the last request this phase sent finished.
    pub last_done_ns: u64,
    pub agreement: TokenAgreement,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub reasoning_tokens: u64,
    /// Requests whose tokens count (ok, or failed after some arrived), by
    /// where their output count came from.
    pub token_sources: BTreeMap<TokenSource, u64>,
    /// Sum of (prompt + output/2) over ok requests: the mean context for
    /// the attention term of the FLOPs.
    pub context_tokens: f64,
    /// Multi-turn conversations: per turn number (from 1).
    pub by_turn: BTreeMap<u32, TurnStats>,
}

/// One turn number's requests in a phase: TTFT as the conversation grows,
/// and how long its prompts were (ours, exact with a tokenizer; the
/// server's `usage`).
pub(crate) struct TurnStats {
    pub ok: u64,
    pub failed: u64,
    pub ttft: Latency,
    pub prompt_tokens: (u64, u64),
    pub usage_prompt_tokens: (u64, u64),
}

impl PhaseStats {
    pub(crate) fn new(start_ns: u64, end_ns: u64) -> Self {
        Self {
            start_ns,
            end_ns,
            ttft: Latency::new(),
            ttft_from_schedule: Latency::new(),
            ttft_reasoning: Latency::new(),
            ttft_answer: Latency::new(),
            tpot: Latency::new(),
            itl_chunk: Latency::new(),
            itl_token: Latency::new(),
            e2e: Latency::new(),
            e2e_from_schedule: Latency::new(),
            queue: Latency::new(),
            send_lag: Latency::new(),
            sent: 0,
            ok: 0,
            errors: BTreeMap::new(),
            error_examples: BTreeMap::new(),
            tokens_in_window: 0,
            chunks_in_window: 0,
            completed_in_window: 0,
            good_in_window: 0,
            good_tokens_in_window: 0,
            in_flight_ns: 0,
            e2e_in_window_ns: 0,
            longest_in_window_ns: 0,
            max_in_flight: 0,
            last_done_ns: 0,
            agreement: TokenAgreement::default(),
            input_tokens: 0,
            output_tokens: 0,
            reasoning_tokens: 0,
            token_sources: BTreeMap::new(),
            context_tokens: 0.0,
            by_turn: BTreeMap::new(),
        }
    }

    pub(crate) fn window_s(&self) -> f64 {
        self.end_ns.saturating_sub(self.start_ns) as f64 / 1e9
    }

    pub(crate) fn contains(&self, t: u64) -> bool {
        t >= self.start_ns && t < self.end_ns
    }
}

/// Every phase's statistics, plus a per-second time series.
pub(crate) struct RunStats {
    pub phases: Vec<PhaseStats>,
    pub slo: Slo,
    /// Per second of the run: (tokens arrived, requests completed ok,
    /// requests failed).
    pub per_second: Vec<(u64, u64, u64)>,
    /// Replies by the HTTP version they came in ("1.1", "2").
    pub http_versions: BTreeMap<&'static str, u64>,
}

impl RunStats {
    pub(crate) fn new(windows: &[(u64, u64)], slo: Slo) -> Self {
        Self {
            phases: windows
                .iter()
                .map(|(s, e)| PhaseStats::new(*s, *e))
                .collect(),
            slo,
            per_second: Vec::new(),
            http_versions: BTreeMap::new(),
        }
    }

    fn second(&mut self, t: u64) -> &mut (u64, u64, u64) {
        let i = (t / 1_000_000_000) as usize;
        if self.per_second.len() <= i {
            self.per_second.resize(i + 1, (0, 0, 0));
        }
        &mut self.per_second[i]
    }

    /// Adds one finished request.
    pub(crate) fn add(&mut self, r: &RequestRecord) {
        let meets_slo = self.meets_slo(r);
        if let Some(v) = r.http_version {
            *self.http_versions.entry(v).or_default() += 1;
        }
        {
            let p = &mut self.phases[r.phase_index];
            p.sent += 1;
            p.last_done_ns = p.last_done_ns.max(r.done_ns);
            if let Some(s) = r.scheduled_ns {
                let queued = r.queue_ns.unwrap_or(0);
                if r.queue_ns.is_some() {
                    p.queue.record(queued);
                }
                // The client's own lag behind the schedule, queueing aside.
                p.send_lag.record(r.sent_ns.saturating_sub(s + queued));
            }
            if let Some(turn) = r.turn {
                let t = p.by_turn.entry(turn).or_insert_with(|| TurnStats {
                    ok: 0,
                    failed: 0,
                    ttft: Latency::new(),
                    prompt_tokens: (0, 0),
                    usage_prompt_tokens: (0, 0),
                });
                if r.ok() {
                    t.ok += 1;
                    if let Some(ttft) = r.ttft_ns() {
                        t.ttft.record(ttft);
                    }
                    if let Some(n) = r.prompt_tokens {
                        t.prompt_tokens.0 += u64::from(n);
                        t.prompt_tokens.1 += 1;
                    }
                    if let Some(n) = r.usage_prompt_tokens {
                        t.usage_prompt_tokens.0 += n;
                        t.usage_prompt_tokens.1 += 1;
                    }
                } else {
                    t.failed += 1;
                }
            }
            // Every request whose tokens count, failed ones too.
            if r.ok() || !r.events.is_empty() {
                *p.token_sources.entry(r.output_tokens.source()).or_default() += 1;
            }
            match &r.error {
                Some(e) => {
                    *p.errors.entry(e.kind).or_default() += 1;
                    let ex = p.error_examples.entry(e.kind).or_default();
                    if ex.len() < 3 {
                        ex.push(format!("{}: {}", r.id, e.detail));
                    }
                }
                None => {
                    p.ok += 1;
                    record_latencies(p, r);
                }
            }
        }
        // Time-based figures, in whichever window they fall.
        for p in &mut self.phases {
            for e in &r.events {
                if p.contains(r.sent_ns + e.at_ns) {
                    p.tokens_in_window += e.tokens;
                    p.chunks_in_window += u64::from(!e.continues);
                    if meets_slo {
                        p.good_tokens_in_window += e.tokens;
                    }
                }
            }
            if r.ok() && p.contains(r.done_ns) {
                p.completed_in_window += 1;
                p.e2e_in_window_ns += u128::from(r.done_ns.saturating_sub(r.sent_ns));
                if meets_slo {
                    p.good_in_window += 1;
                }
            }
            let (a, b) = (r.sent_ns.max(p.start_ns), r.done_ns.min(p.end_ns));
            if b > a {
                p.in_flight_ns += u128::from(b - a);
                p.longest_in_window_ns = p
                    .longest_in_window_ns
                    .max(r.done_ns.saturating_sub(r.sent_ns));
            }
        }
        for e in &r.events {
            self.second(r.sent_ns + e.at_ns).0 += e.tokens;
        }
        let done = self.second(r.done_ns);
        if r.ok() {
            done.1 += 1;
        } else {
            done.2 += 1;
        }
    }

    fn meets_slo(&self, r: &RequestRecord) -> bool {
        if !r.ok() {
            return false;
        }
        let within = |limit: Option<f64>, value: Option<u64>| match (limit, value) {
            (None, _) => true,
            (Some(ms), Some(ns)) => ns as f64 / 1e6 <= ms,
            (Some(_), None) => false,
        };
        within(self.slo.ttft_ms, r.ttft_ns())
            && within(self.slo.tpot_ms, r.tpot_ns().or(Some(0)))
            && within(self.slo.e2e_ms, Some(r.e2e_ns()))
    }
}

/// A request's chunks as (time, tokens): an answer that continues its
/// chunk's reasoning is part of that chunk, not a chunk of its own.
pub(crate) fn chunks(r: &RequestRecord) -> Vec<(u64, u64)> {
    let mut chunks: Vec<(u64, u64)> = Vec::with_capacity(r.events.len());
    for e in &r.events {
        match chunks.last_mut() {
            Some(last) if e.continues => last.1 += e.tokens,
            _ => chunks.push((e.at_ns, e.tokens)),
        }
    }
    chunks
}

/// Inter-token latencies as (gap per token, tokens): a chunk of k tokens
/// after a gap g gives k tokens of g/k. Only chunks that carry tokens (a
/// chunk given none of the request's count, e.g. a byte of a split
/// character, merges its gap into the next).
pub(crate) fn token_gaps(chunks: &[(u64, u64)]) -> impl Iterator<Item = (u64, u64)> + '_ {
    let mut last = None;
    chunks
        .iter()
        .filter(|c| c.1 > 0)
        .filter_map(move |&(at, k)| {
            let gap = last.map(|before: u64| (at.saturating_sub(before) / k, k));
            last = Some(at);
            gap
        })
}

fn record_latencies(p: &mut PhaseStats, r: &RequestRecord) {
    if let Some(t) = r.ttft_ns() {
        p.ttft.record(t);
    }
    if let (Some(first), Some(s)) = (r.first_token_ns, r.scheduled_ns) {
        p.ttft_from_schedule.record(first.saturating_sub(s));
    }
    if let Some(t) = r.tpot_ns() {
        p.tpot.record(t);
    }
    p.e2e.record(r.e2e_ns());
    if let Some(s) = r.scheduled_ns {
        p.e2e_from_schedule.record(r.done_ns.saturating_sub(s));
    }
    if let Some(t) = r.ttft_reasoning_ns() {
        p.ttft_reasoning.record(t);
    }
    if r.first_reasoning_ns.is_some()
        && let Some(t) = r.ttft_answer_ns()
    {
        p.ttft_answer.record(t);
    }
    let chunks = chunks(r);
    for w in chunks.windows(2) {
        p.itl_chunk.record(w[1].0.saturating_sub(w[0].0));
    }
    for (gap, k) in token_gaps(&chunks) {
        p.itl_token.record_n(gap, k);
    }
    let out = &r.output_tokens;
    let a = &mut p.agreement;
    if let Some(u) = out.usage {
        a.with_usage += 1;
        a.usage_vs_counted += u64::from(u != out.counted);
        if let Some(t) = out.tokenizer {
            a.usage_vs_tokenizer += u64::from(u != t);
        }
    }
    a.with_tokenizer += u64::from(out.tokenizer.is_some());
    if let (Some(ours), Some(theirs)) = (r.prompt_tokens, r.usage_prompt_tokens) {
        a.prompt_vs_usage += u64::from(u64::from(ours) != theirs);
    }
    a.length_not_honoured += u64::from(r.length_honoured == Some(false));
    let input = r
        .usage_prompt_tokens
        .or(r.prompt_tokens.map(u64::from))
        .unwrap_or(0);
    p.input_tokens += input;
    p.output_tokens += out.best();
    p.reasoning_tokens += out.reasoning.unwrap_or(0);
    p.context_tokens += input as f64 + out.best() as f64 / 2.0;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{OutputTokens, TokenEvent};

    fn rec(phase: usize, sent: u64, events: Vec<(u64, u64)>, done: u64) -> RequestRecord {
        let counted = events.iter().map(|e| e.1).sum();
        let events: Vec<TokenEvent> = events
            .into_iter()
            .map(|(at_ns, tokens)| TokenEvent {
                at_ns,
                tokens,
                reasoning: false,
                continues: false,
            })
            .collect();
        RequestRecord {
            id: "r".into(),
            phase: "p".into(),
            phase_index: phase,
            scheduled_ns: None,
            queue_ns: None,
            sent_ns: sent,
            headers_ns: None,
            first_token_ns: events.first().map(|e| sent + e.at_ns),
            last_token_ns: events.last().map(|e| sent + e.at_ns),
            done_ns: done,
            status: Some(200),
            error: None,
            finish_reason: None,
            max_tokens: 4,
            prompt_tokens: None,
            prefix_group: None,
            usage_prompt_tokens: None,
            output_tokens: OutputTokens {
                usage: Some(counted),
                counted,
                tokenizer: None,
                reasoning: None,
                usage_reasoning: None,
            },
            events,
            first_reasoning_ns: None,
            first_answer_ns: None,
            chunks: 0,
            length_honoured: None,
            resent: 0,
            http_version: None,
            conversation: None,
            turn: None,
            reply: None,
        }
    }

    #[test]
    fn itl_counts_every_token_and_windows_split_by_time() {
        let mut s = RunStats::new(
            &[(0, 1_000_000_000), (1_000_000_000, 2_000_000_000)],
            Slo::default(),
        );
        // Four tokens: the first at 100 ms, then a chunk of three 300 ms
        // later, which lands in the second window.
        s.add(&rec(
            0,
            800_000_000,
            vec![(100_000_000, 1), (400_000_000, 3)],
            1_300_000_000,
        ));
        let (a, b) = (&s.phases[0], &s.phases[1]);
        assert_eq!(a.itl_token.summary().unwrap().count, 3);
        assert!((a.itl_token.summary().unwrap().p50 - 0.1).abs() < 0.001);
        assert_eq!(a.itl_chunk.summary().unwrap().count, 1);
        assert!((a.itl_chunk.summary().unwrap().p50 - 0.3).abs() < 0.001);
        assert!((a.tpot.summary().unwrap().mean - 0.1).abs() < 0.001);
        assert_eq!((a.tokens_in_window, b.tokens_in_window), (1, 3));
        assert_eq!((a.completed_in_window, b.completed_in_window), (0, 1));
        assert_eq!(a.in_flight_ns, 200_000_000);
        assert_eq!(b.in_flight_ns, 300_000_000);
    }
}
