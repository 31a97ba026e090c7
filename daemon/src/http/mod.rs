//! The HTTP endpoints: `/metrics`, `/healthz`, a landing page, the
//! timeline's intervals (`/api/v1/intervals`), the explain report
//! (`/api/v1/explain`), a service's trace (`/api/v1/trace`), idle
//! checks, kernels and annotations.

//!
//! This module routes; each family of endpoints has its own module.

mod annotations;
mod explain;
mod intervals;
mod trace;

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::State,
    http::{StatusCode, header},
    response::{Html, IntoResponse, Response},
    routing::get,
};
use serde_json::json;

use crate::state::DaemonState;

pub fn router(state: Arc<DaemonState>) -> Router {
    Router::new()
        .route("/", get(landing))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/api/v1/intervals", get(intervals::intervals))
        .route("/api/v1/idle-checks", get(annotations::idle_checks))
        .route("/api/v1/kernels", get(explain::kernels))
        .route("/api/v1/explain", get(explain::explain))
        .route("/api/v1/trace", get(trace::trace))
        .route(
            "/api/v1/annotations",
            get(annotations::list).post(annotations::add),
        )
        .layer(axum::extract::DefaultBodyLimit::max(64 * 1024))
        .with_state(state)
}

async fn metrics(State(state): State<Arc<DaemonState>>) -> impl IntoResponse {
    // Map reads are syscalls; keep them off the event loop.
    let body = tokio::task::spawn_blocking(move || crate::metrics::render(&state))
        .await
        .unwrap_or_default();
    ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], body)
}

/// How long the event loop may go without coming round before
/// `/healthz` calls the daemon unhealthy (a settle tick under a flood
/// takes well under a second).
const LOOP_STALL_NS: u64 = 10_000_000_000;

/// Healthy while the daemon runs (programs are attached before the
/// listener serves) and its event loop comes round: 503 when the loop has
/// hung, for a liveness probe to restart it.
async fn healthz(State(state): State<Arc<DaemonState>>) -> impl IntoResponse {
    let alive = state
        .loop_alive_ns
        .load(std::sync::atomic::Ordering::Relaxed);
    let stalled = crate::clock::monotonic_ns().saturating_sub(alive);
    if stalled > LOOP_STALL_NS {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "unhealthy: the event loop has not come round for {:.1} s (restart gapscoped; its log may say why)\n",
                stalled as f64 / 1e9
            ),
        );
    }
    (StatusCode::OK, "ok\n".to_string())
}

async fn landing(State(state): State<Arc<DaemonState>>) -> Html<String> {
    let services: String = state
        .services
        .all()
        .iter()
        .filter(|s| !s.retired)
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

/// A bad query parameter: the problem and the fix, for `bad_request`.
type BadParam = (String, String);

/// A `service=` parameter: the service's id and name.
fn service_param(state: &DaemonState, value: &str) -> Result<(u32, String), BadParam> {
    state
        .service_id(value)
        .map(|id| (id, value.to_string()))
        .ok_or_else(|| {
            (
                format!("no service named {value:?}"),
                "use a [[service]] name from the configuration".into(),
            )
        })
}

/// A `window=` parameter of at most `limit_ns` (`within` names that
/// limit in the problem; `fix` is the endpoint's parameters).
fn window_param(value: &str, limit_ns: u64, within: &str, fix: &str) -> Result<u64, BadParam> {
    match crate::explain::report::parse_window(value) {
        Some(ns) if ns > 0 && ns <= limit_ns => Ok(ns),
        _ => Err((
            format!("window={value:?} is not a duration within {within}"),
            fix.into(),
        )),
    }
}

/// A 400 answer naming the problem and the fix, as JSON.
fn bad_request(problem: String, fix: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({ "error": problem, "fix": fix })),
    )
        .into_response()
}
