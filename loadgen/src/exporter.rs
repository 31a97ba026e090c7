//! The run's own Prometheus metrics (`--metrics-listen ADDR`): the
//! client's view — requests, errors by kind, output tokens, TTFT, ITL and
//! E2E histograms, each with the phase as a label — served while the run
//! lasts, so dashboards show it beside gapscoped's on one time axis.
//!
//! Invariant: every figure is taken from the same finished-request
//! records as `results.json` (`record`, called by the collector once per
//! request), with the same definitions (`stats::token_gaps` for ITL), so
//! a final scrape agrees with the results file. Only the in-flight gauge
//! and the active phase are live; tokens count when their request ends.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    fmt::Write as _,
    net::SocketAddr,
    sync::{Arc, Mutex, atomic::Ordering},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;

use crate::{
    error::UsageError,
    live::Live,
    plan::Plan,
    record::{ErrorKind, RequestRecord},
    stats::{chunks, token_gaps},
};

/// Upper bounds (s) of the TTFT and E2E buckets, and of the ITL buckets.
const LATENCY_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];
const ITL_BUCKETS: [f64; 11] = [
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// A cumulative histogram with fixed bounds.
#[derive(Clone)]
struct Histogram {
    bounds: &'static [f64],
    /// Per bucket (not cumulative), plus +Inf.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe_n(&mut self, seconds: f64, n: u64) {
        let i = self.bounds.partition_point(|b| *b < seconds);
        self.counts[i] += n;
        self.sum += seconds * n as f64;
        self.count += n;
    }

    fn render(&self, out: &mut String, name: &str, phase: &str) {
        let mut cumulative = 0;
        for (i, c) in self.counts.iter().enumerate() {
            cumulative += c;
            let le = self
                .bounds
                .get(i)
                .map_or_else(|| "+Inf".to_string(), f64::to_string);
            let _ = writeln!(
                out,
                "{name}_bucket{{phase=\"{phase}\",le=\"{le}\"}} {cumulative}"
            );
        }
        let _ = writeln!(out, "{name}_sum{{phase=\"{phase}\"}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{phase=\"{phase}\"}} {}", self.count);
    }
}

/// One phase's families.
#[derive(Clone)]
struct PhaseFamilies {
    kind: &'static str,
    ok: u64,
    failed: u64,
    errors: BTreeMap<ErrorKind, u64>,
    tokens: u64,
    ttft: Histogram,
    itl: Histogram,
    e2e: Histogram,
}

pub(crate) struct Exporter {
    live: Arc<Live>,
    /// Per phase, in the plan's order (names are unique).
    phases: Mutex<Vec<(String, PhaseFamilies)>>,
    info: String,
}

impl Exporter {
    pub(crate) fn new(plan: &Plan, run_id: &str, live: Arc<Live>) -> Self {
        let fresh = PhaseFamilies {
            kind: "",
            ok: 0,
            failed: 0,
            errors: BTreeMap::new(),
            tokens: 0,
            ttft: Histogram::new(&LATENCY_BUCKETS),
            itl: Histogram::new(&ITL_BUCKETS),
            e2e: Histogram::new(&LATENCY_BUCKETS),
        };
        let phases = plan
            .phases
            .iter()
            .map(|p| {
                let mut f = fresh.clone();
                f.kind = p.kind.name();
                (label(&p.name), f)
            })
            .collect();
        Self {
            live,
            phases: Mutex::new(phases),
            info: format!(
                "gapscope_client_info{{run_id=\"{}\",url=\"{}\",version=\"{}\"}} 1\n",
                label(run_id),
                label(&plan.endpoint.url),
                env!("CARGO_PKG_VERSION")
            ),
        }
    }

    /// Takes one finished request in.
    pub(crate) fn record(&self, r: &RequestRecord) {
        let mut phases = self
            .phases
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some((_, f)) = phases.get_mut(r.phase_index) else {
            return;
        };
        let s = |ns: u64| ns as f64 / 1e9;
        f.tokens += r.events.iter().map(|e| e.tokens).sum::<u64>();
        match &r.error {
            Some(e) => {
                f.failed += 1;
                *f.errors.entry(e.kind).or_default() += 1;
            }
            None => {
                f.ok += 1;
                if let Some(t) = r.ttft_ns() {
                    f.ttft.observe_n(s(t), 1);
                }
                f.e2e.observe_n(s(r.e2e_ns()), 1);
                for (gap, k) in token_gaps(&chunks(r)) {
                    f.itl.observe_n(s(gap), k);
                }
            }
        }
    }

    /// The exposition text (format 0.0.4).
    pub(crate) fn render(&self) -> String {
        let phases = self
            .phases
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let active = self
            .live
            .phase
            .lock()
            .map(|p| p.clone())
            .unwrap_or_default();
        let mut out = String::with_capacity(8192);
        let head = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        head(
            &mut out,
            "gapscope_client_info",
            "gauge",
            "The run: its id, endpoint and gapscope-loadgen's version.",
        );
        out.push_str(&self.info);
        head(
            &mut out,
            "gapscope_client_phase_active",
            "gauge",
            "1 for the phase running now, 0 for the others.",
        );
        for (name, f) in &phases {
            let on = u8::from(*name == label(&active));
            let _ = writeln!(
                out,
                "gapscope_client_phase_active{{phase=\"{name}\",kind=\"{}\"}} {on}",
                f.kind
            );
        }
        head(
            &mut out,
            "gapscope_client_requests_in_flight",
            "gauge",
            "Requests sent and not yet finished.",
        );
        let _ = writeln!(
            out,
            "gapscope_client_requests_in_flight {}",
            self.live.in_flight.load(Ordering::Relaxed)
        );
        head(
            &mut out,
            "gapscope_client_requests_total",
            "counter",
            "Finished requests by the phase that sent them and outcome (ok, error).",
        );
        for (name, f) in &phases {
            for (outcome, n) in [("ok", f.ok), ("error", f.failed)] {
                let _ = writeln!(
                    out,
                    "gapscope_client_requests_total{{phase=\"{name}\",outcome=\"{outcome}\"}} {n}"
                );
            }
        }
        head(
            &mut out,
            "gapscope_client_request_errors_total",
            "counter",
            "Failed requests by phase and kind (connect, timeout, http_status, malformed_stream, early_close, server_error, cancelled).",
        );
        for (name, f) in &phases {
            for (kind, n) in &f.errors {
                let _ = writeln!(
                    out,
                    "gapscope_client_request_errors_total{{phase=\"{name}\",kind=\"{}\"}} {n}",
                    kind.name()
                );
            }
        }
        head(
            &mut out,
            "gapscope_client_output_tokens_total",
            "counter",
            "Output tokens received, by the phase that sent the request, counted when the request ends (failed requests' tokens too).",
        );
        for (name, f) in &phases {
            let _ = writeln!(
                out,
                "gapscope_client_output_tokens_total{{phase=\"{name}\"}} {}",
                f.tokens
            );
        }
        for (family, help, pick) in [
            (
                "gapscope_client_ttft_seconds",
                "Time to first token of successful requests, from the send.",
                (|f: &PhaseFamilies| &f.ttft) as fn(&PhaseFamilies) -> &Histogram,
            ),
            (
                "gapscope_client_itl_seconds",
                "Inter-token latency, per token (a chunk of k tokens after a gap g counts k tokens of g/k).",
                |f| &f.itl,
            ),
            (
                "gapscope_client_e2e_seconds",
                "End-to-end latency of successful requests, from the send to the last byte.",
                |f| &f.e2e,
            ),
        ] {
            head(&mut out, family, "histogram", help);
            for (name, f) in &phases {
                pick(f).render(&mut out, family, name);
            }
        }
        out
    }
}

/// A label value escaped for the exposition format.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Binds `addr` now (so a taken port is a usage error before the run).
pub(crate) fn bind(addr: &str) -> Result<std::net::TcpListener, UsageError> {
    let parsed: SocketAddr = addr.parse().map_err(|_| {
        UsageError::new(
            format!("--metrics-listen {addr:?} is not an address"),
            "give IP:PORT, e.g. 127.0.0.1:9479 (0.0.0.0:9479 for every interface)",
        )
    })?;
    let listener = std::net::TcpListener::bind(parsed).map_err(|e| {
        UsageError::new(
            format!("--metrics-listen {addr}: cannot listen ({e})"),
            "choose a free port, or an address of this machine",
        )
    })?;
    listener.set_nonblocking(true).map_err(|e| {
        UsageError::new(
            format!("--metrics-listen {addr}: {e}"),
            "choose another address",
        )
    })?;
    Ok(listener)
}

/// Serves `/metrics` on `listener` until the task is aborted. Anything
/// else gets a 404 (a 405 for methods other than GET and HEAD).
pub(crate) fn serve(
    exporter: Arc<Exporter>,
    listener: std::net::TcpListener,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
            return;
        };
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                // Out of descriptors, say: wait rather than spin.
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            };
            let exporter = exporter.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let exporter = exporter.clone();
                    async move { Ok::<_, Infallible>(answer(&exporter, &req)) }
                });
                let conn = http1::Builder::new()
                    .header_read_timeout(std::time::Duration::from_secs(10))
                    .timer(hyper_util::rt::TokioTimer::new())
                    .serve_connection(TokioIo::new(stream), svc);
                let _ = conn.await;
            });
        }
    })
}

fn answer<B>(exporter: &Exporter, req: &Request<B>) -> Response<Full<Bytes>> {
    let reply = |status: u16, kind: &str, body: String| {
        Response::builder()
            .status(status)
            .header("content-type", kind)
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_default()
    };
    let text = "text/plain; charset=utf-8";
    if req.uri().path() != "/metrics" {
        return reply(404, text, "gapscope-loadgen serves /metrics only\n".into());
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(405, text, "use GET /metrics\n".into());
    }
    reply(
        200,
        "text/plain; version=0.0.4; charset=utf-8",
        exporter.render(),
    )
}
