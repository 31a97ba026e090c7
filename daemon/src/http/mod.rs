//! The HTTP endpoints: `/metrics`, `/healthz`, a landing page, the
//! timeline's intervals (`/api/v1/intervals`), the explain report
//! (`/api/v1/explain`), idle checks, kernels and annotations.

use std::{collections::HashMap, sync::Arc};

use axum::{
    Json, Router,
    extract::{Query, State},
    http::{StatusCode, header},
    response::{Html, IntoResponse, Response},
    routing::get,
};
use serde_json::{Value, json};

use crate::{
    clock::monotonic_ns,
    cuda::ENTRY_POINTS,
    gpu::idle::IdleCheck,
    metrics::Exporter,
    timeline::{IntervalView, kind_name},
};

pub fn router(exporter: Arc<Exporter>) -> Router {
    Router::new()
        .route("/", get(landing))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/api/v1/intervals", get(intervals))
        .route("/api/v1/idle-checks", get(idle_checks))
        .route("/api/v1/kernels", get(kernels))
        .route("/api/v1/explain", get(explain))
        .route(
            "/api/v1/annotations",
            get(list_annotations).post(add_annotation),
        )
        .layer(axum::extract::DefaultBodyLimit::max(64 * 1024))
        .with_state(exporter)
}

async fn metrics(State(ex): State<Arc<Exporter>>) -> impl IntoResponse {
    // Map reads are syscalls; keep them off the event loop.
    let body = tokio::task::spawn_blocking(move || ex.render())
        .await
        .unwrap_or_default();
    ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], body)
}

/// Healthy while the daemon runs: programs are attached before the
/// listener serves.
async fn healthz() -> impl IntoResponse {
    (StatusCode::OK, "ok\n")
}

async fn landing(State(ex): State<Arc<Exporter>>) -> Html<String> {
    let services: String = ex
        .services
        .iter()
        .map(|s| {
            format!(
                "<li>{0} (<a href=\"/api/v1/explain?service={0}\">why is its GPU idle?</a>)</li>",
                s.name
            )
        })
        .collect();
    Html(format!(
        "<!doctype html><html><head><title>gapscoped</title></head><body>\
         <h1>gapscoped {}</h1><p>Why is the GPU idle? Gapscope traces the serving processes below.</p>\
         <ul>{services}</ul>\
         <p><a href=\"/metrics\">Metrics</a> &middot; <a href=\"/api/v1/intervals\">Intervals</a> \
         &middot; <a href=\"/api/v1/idle-checks\">Idle checks</a> \
         &middot; <a href=\"/healthz\">Health</a></p>\
         </body></html>",
        env!("CARGO_PKG_VERSION")
    ))
}

/// `POST /api/v1/annotations`: a phase start or end from the load
/// generator, or its progress (JSON: phase, event = start|end|progress,
/// and optionally kind, run_id, source, monotonic_ns, unix_ns,
/// output_tokens).
async fn add_annotation(State(ex): State<Arc<Exporter>>, body: axum::body::Bytes) -> Response {
    let added = ex
        .annotations
        .lock()
        .map_err(|_| "poisoned".to_string())
        .and_then(|mut a| a.add(&body, monotonic_ns()));
    match added {
        Ok(a) => {
            // The counters where the phase starts or ends, for its report;
            // an annotation from the past or the future gets the present.
            let now = monotonic_ns();
            let at = if a.monotonic_ns <= now && now - a.monotonic_ns < 1_000_000_000 {
                a.monotonic_ns
            } else {
                now
            };
            // A progress event only carries a token count: no boundary
            // to remember, no counters to file.
            if a.event != "progress" {
                if let Ok(mut e) = ex.explainer.lock() {
                    e.phase_event(&a);
                }
                let snap = ex.clone();
                let _ = tokio::task::spawn_blocking(move || snap.snapshot_at(at, false)).await;
            }
            let idle_check = (a.kind == "silence")
                .then(|| ex.silence(&a))
                .flatten()
                .map(|c| with_services(&ex, c));
            Json(json!({ "ok": true, "annotation": a, "idle_check": idle_check })).into_response()
        }
        Err(why) => bad_request(
            why,
            "post {\"phase\": \"cooldown\", \"kind\": \"silence\", \"event\": \"start\"} (event: start, end or progress; monotonic_ns optional: CLOCK_MONOTONIC ns; output_tokens optional: the run's tokens so far)",
        ),
    }
}

async fn list_annotations(State(ex): State<Arc<Exporter>>) -> Response {
    let list = ex.annotations.lock().map(|a| a.list()).unwrap_or_default();
    Json(json!({ "annotations": list })).into_response()
}

/// `GET /api/v1/idle-checks`: every silent phase checked so far, oldest
/// first, with the service of each process still holding GPU memory.
async fn idle_checks(State(ex): State<Arc<Exporter>>) -> Response {
    let (checks, down) = match ex.gpu.lock() {
        Ok(g) => (
            g.idle.done().cloned().collect::<Vec<_>>(),
            g.down_reason.clone(),
        ),
        Err(_) => (Vec::new(), None),
    };
    let checks: Vec<Value> = checks.into_iter().map(|c| with_services(&ex, c)).collect();
    Json(json!({ "nvml_down": down, "idle_checks": checks })).into_response()
}

/// `GET /api/v1/kernels?service=NAME&limit=N`: the kernels CUPTI deep mode
/// recorded for a service, by total GPU time, with their exact names
/// (which metric labels never carry).
async fn kernels(
    State(ex): State<Arc<Exporter>>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let fix = "use service=NAME (a [[service]] name) and optionally limit=1..1000";
    let Some(name) = params.get("service") else {
        return bad_request("service is missing".into(), fix);
    };
    let Some(service) = ex.services.iter().position(|s| &s.name == name) else {
        return bad_request(format!("no service named {name:?}"), fix);
    };
    let limit = match params.get("limit").map(|l| l.parse::<usize>()) {
        None => 20,
        Some(Ok(n)) if (1..=1000).contains(&n) => n,
        Some(_) => return bad_request("limit is out of range".into(), fix),
    };
    if let Some(unknown) = params.keys().find(|k| *k != "service" && *k != "limit") {
        return bad_request(format!("unknown parameter {unknown:?}"), fix);
    }
    let top = match &ex.deep {
        Some(d) => d
            .ingest
            .lock()
            .map(|i| i.top_kernels(service as u32, limit))
            .unwrap_or_default(),
        None => Vec::new(),
    };
    let list: Vec<Value> = top
        .into_iter()
        .map(|(name, t)| {
            json!({ "name": name, "class": t.class, "count": t.count, "total_ns": t.total_ns })
        })
        .collect();
    Json(json!({ "service": name, "deep_mode": ex.deep.is_some(), "kernels": list }))
        .into_response()
}

/// An idle check as JSON, each GPU process with the service it belongs to
/// (or null when gapscoped does not trace it).
fn with_services(ex: &Exporter, check: IdleCheck) -> Value {
    let traced = ex.targets.lock().map(|t| t.traced()).unwrap_or_default();
    let mut v = serde_json::to_value(&check).unwrap_or_default();
    if let Some(gpus) = v.get_mut("gpus").and_then(Value::as_array_mut) {
        for p in gpus
            .iter_mut()
            .filter_map(|g| g.get_mut("processes").and_then(Value::as_array_mut))
            .flatten()
        {
            let service = p
                .get("pid")
                .and_then(Value::as_u64)
                .and_then(|pid| traced.get(&(pid as u32)))
                .and_then(|s| ex.service_name(*s));
            p["service"] = json!(service);
        }
    }
    v
}

/// A 400 answer naming the problem and the fix, as JSON.
fn bad_request(problem: String, fix: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({ "error": problem, "fix": fix })),
    )
        .into_response()
}

const EXPLAIN_PARAMS: &str = "use service=NAME (a [[service]] name) and window=DURATION (60s by default; s, m or h, at most [explain] history_s)";

/// `GET /api/v1/explain?service=NAME&window=60s`: where the GPU's time
/// went over the window and each load-generator phase in it, what the CPU
/// side did, and the data's quality (see `explain::report`).
async fn explain(
    State(ex): State<Arc<Exporter>>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let mut service = None;
    let mut window_ns = 60_000_000_000u64;
    let history_ns = ex
        .explainer
        .lock()
        .map(|e| e.config().history_ns)
        .unwrap_or(0);
    for (key, value) in &params {
        match key.as_str() {
            "service" => match ex.service_id(value) {
                Some(id) => service = Some((id, value.clone())),
                None => {
                    return bad_request(
                        format!("no service named {value:?}"),
                        "use a [[service]] name from the configuration",
                    );
                }
            },
            "window" => match crate::explain::report::parse_window(value) {
                Some(ns) if ns > 0 && ns <= history_ns => window_ns = ns,
                _ => {
                    return bad_request(
                        format!("window={value:?} is not a duration within the history"),
                        EXPLAIN_PARAMS,
                    );
                }
            },
            _ => return bad_request(format!("unknown parameter {key:?}"), EXPLAIN_PARAMS),
        }
    }
    let Some((id, name)) = service else {
        return bad_request("service is missing".into(), EXPLAIN_PARAMS);
    };
    let report = tokio::task::spawn_blocking(move || {
        let now = monotonic_ns();
        ex.snapshot_at(now, true);
        let annotations = ex.annotations.lock().map(|a| a.list()).unwrap_or_default();
        let top_kernels = ex
            .deep
            .as_ref()
            .map(|d| {
                d.ingest
                    .lock()
                    .map(|i| i.top_kernels(id, 10))
                    .unwrap_or_default()
            })
            .unwrap_or_default();
        let explainer = ex.explainer.lock().unwrap_or_else(|p| p.into_inner());
        let snapshots = ex.snapshots.lock().unwrap_or_else(|p| p.into_inner());
        crate::explain::report::build(
            &crate::explain::report::Inputs {
                service_id: id,
                service: &name,
                explainer: &explainer,
                snapshots: &snapshots,
                annotations: &annotations,
                top_kernels,
                deep_enabled: ex.deep.is_some(),
            },
            now.saturating_sub(window_ns),
            now,
        )
    })
    .await;
    match report {
        Ok(r) => Json(r).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({ "error": format!("building the report failed: {e}") })),
        )
            .into_response(),
    }
}

const INTERVAL_PARAMS: &str = "use service=NAME, kind=gil_wait|serialization|host_sync|gpu_busy|off_cpu|launch, since_ns=CLOCK_MONOTONIC ns, limit=1..100000";

/// `GET /api/v1/intervals?service=&kind=&since_ns=&limit=`: the long stalls
/// in the timeline window, oldest first (the newest `limit` when more).
async fn intervals(
    State(ex): State<Arc<Exporter>>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let mut service = None;
    let mut kind = None;
    let mut since_ns = 0u64;
    let mut limit = 10_000usize;
    for (key, value) in &params {
        match key.as_str() {
            "service" => match ex.services.iter().position(|s| &s.name == value) {
                Some(id) => service = Some(id as u32),
                None => {
                    return bad_request(
                        format!("no service named {value:?}"),
                        "use a [[service]] name from the configuration",
                    );
                }
            },
            "kind" => match value.as_str() {
                "gil_wait" | "serialization" | "host_sync" | "gpu_busy" | "off_cpu" | "launch" => {
                    kind = Some(value.clone())
                }
                _ => return bad_request(format!("unknown kind {value:?}"), INTERVAL_PARAMS),
            },
            "since_ns" => match value.parse() {
                Ok(v) => since_ns = v,
                Err(_) => {
                    return bad_request(
                        format!("since_ns={value:?} is not a number"),
                        INTERVAL_PARAMS,
                    );
                }
            },
            "limit" => match value.parse() {
                Ok(v) if (1..=100_000).contains(&v) => limit = v,
                _ => {
                    return bad_request(
                        format!("limit={value:?} is out of range"),
                        INTERVAL_PARAMS,
                    );
                }
            },
            _ => return bad_request(format!("unknown parameter {key:?}"), INTERVAL_PARAMS),
        }
    }
    let found = match ex.timeline.lock() {
        Ok(t) => t.query(since_ns, |i| {
            service.is_none_or(|s| s == i.service)
                && kind.as_deref().is_none_or(|k| k == kind_name(i.kind))
        }),
        Err(_) => Vec::new(),
    };
    let specs = ex.targets.lock().map(|t| t.serialization.specs()).ok();
    let skip = found.len().saturating_sub(limit);
    let views: Vec<IntervalView> = found[skip..]
        .iter()
        .map(|i| {
            let spec = (i.kind == gapscope_ebpf_common::interval_kind::SERIALIZATION)
                .then(|| specs.as_ref().and_then(|s| s.get(i.detail as usize)))
                .flatten();
            let cuda = matches!(
                i.kind,
                gapscope_ebpf_common::interval_kind::HOST_SYNC
                    | gapscope_ebpf_common::interval_kind::LAUNCH
            )
            .then(|| ENTRY_POINTS.get(i.detail as usize))
            .flatten();
            let reason = (i.kind == gapscope_ebpf_common::interval_kind::OFF_CPU)
                .then(|| {
                    gapscope_ebpf_common::OffCpuReason::ALL
                        .get(i.detail as usize)
                        .map(|r| r.label())
                })
                .flatten();
            IntervalView {
                kind: kind_name(i.kind),
                service: ex.service_name(i.service).unwrap_or("").to_string(),
                codec: spec.map(|s| s.codec.clone()),
                op: spec.map(|s| s.op.clone()),
                api: cuda.map(|e| e.library.api()),
                call: cuda.map(|e| e.name),
                reason,
                pid: i.tgid,
                tid: i.tid,
                start_ns: i.start_ns,
                end_ns: i.end_ns,
                duration_ns: i.end_ns.saturating_sub(i.start_ns),
            }
        })
        .collect();
    Json(json!({ "truncated": skip > 0, "intervals": views })).into_response()
}
