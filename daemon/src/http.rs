//! The HTTP endpoints: `/metrics`, `/healthz`, a landing page and the
//! timeline's intervals (`/api/v1/intervals`).

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
        .map(|s| format!("<li>{}</li>", s.name))
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
/// generator (JSON: phase, event = start|end, and optionally kind, run_id,
/// source, monotonic_ns, unix_ns).
async fn add_annotation(State(ex): State<Arc<Exporter>>, body: axum::body::Bytes) -> Response {
    let added = ex
        .annotations
        .lock()
        .map_err(|_| "poisoned".to_string())
        .and_then(|mut a| a.add(&body, monotonic_ns()));
    match added {
        Ok(a) => {
            let idle_check = (a.kind == "silence")
                .then(|| ex.silence(&a))
                .flatten()
                .map(|c| with_services(&ex, c));
            Json(json!({ "ok": true, "annotation": a, "idle_check": idle_check })).into_response()
        }
        Err(why) => bad_request(
            why,
            "post {\"phase\": \"cooldown\", \"kind\": \"silence\", \"event\": \"start\"} (monotonic_ns optional: CLOCK_MONOTONIC ns)",
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

const INTERVAL_PARAMS: &str = "use service=NAME, kind=gil_wait|serialization|host_sync|gpu_busy, since_ns=CLOCK_MONOTONIC ns, limit=1..100000";

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
                "gil_wait" | "serialization" | "host_sync" | "gpu_busy" => {
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
            let cuda = (i.kind == gapscope_ebpf_common::interval_kind::HOST_SYNC)
                .then(|| ENTRY_POINTS.get(i.detail as usize))
                .flatten();
            IntervalView {
                kind: kind_name(i.kind),
                service: ex.service_name(i.service).unwrap_or("").to_string(),
                codec: spec.map(|s| s.codec.clone()),
                op: spec.map(|s| s.op.clone()),
                api: cuda.map(|e| e.library.api()),
                call: cuda.map(|e| e.name),
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
