//! The load generator's annotations (`/api/v1/annotations`) and the idle
//! checks its silent phases start (`/api/v1/idle-checks`).

use std::sync::Arc;

use axum::{
    Json,
    extract::State,
    response::{IntoResponse as _, Response},
};
use serde_json::{Value, json};

use super::bad_request;
use crate::{nvml::idle::IdleCheck, state::DaemonState};

/// `POST /api/v1/annotations`: a phase start or end from the load
/// generator, or its progress (JSON: phase, event = start|end|progress,
/// and optionally kind, run_id, source, monotonic_ns, unix_ns,
/// output_tokens).
pub(super) async fn add(
    State(state): State<Arc<DaemonState>>,
    body: axum::body::Bytes,
) -> Response {
    match state.annotate(&body) {
        Ok((a, edge)) => {
            // The counters where the phase starts or ends, for its report
            // (map reads: off the event loop).
            if let Some(at) = edge {
                let snap = state.clone();
                let _ = tokio::task::spawn_blocking(move || snap.snapshot_at(at, false)).await;
            }
            let idle_check = (a.kind == "silence")
                .then(|| state.silence(&a))
                .flatten()
                .map(|c| with_services(&state, c));
            Json(json!({ "ok": true, "annotation": a, "idle_check": idle_check })).into_response()
        }
        Err(why) => bad_request(
            why,
            "post {\"phase\": \"cooldown\", \"kind\": \"silence\", \"event\": \"start\"} (event: start, end or progress; monotonic_ns optional: CLOCK_MONOTONIC ns; output_tokens optional: the run's tokens so far)",
        ),
    }
}

pub(super) async fn list(State(state): State<Arc<DaemonState>>) -> Response {
    let list = state
        .annotations
        .lock()
        .map(|a| a.list())
        .unwrap_or_default();
    Json(json!({ "annotations": list })).into_response()
}

/// `GET /api/v1/idle-checks`: every silent phase checked so far, oldest
/// first, with the service of each process still holding GPU memory.
pub(super) async fn idle_checks(State(state): State<Arc<DaemonState>>) -> Response {
    let (checks, down) = match state.nvml.lock() {
        Ok(g) => (
            g.idle.done().cloned().collect::<Vec<_>>(),
            g.down_reason.clone(),
        ),
        Err(_) => (Vec::new(), None),
    };
    let checks: Vec<Value> = checks
        .into_iter()
        .map(|c| with_services(&state, c))
        .collect();
    Json(json!({ "nvml_down": down, "idle_checks": checks })).into_response()
}

/// An idle check as JSON, each GPU process with the service it belongs to
/// (or null when gapscoped does not trace it).
fn with_services(state: &DaemonState, check: IdleCheck) -> Value {
    let traced = state.targets.lock().map(|t| t.traced()).unwrap_or_default();
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
                .and_then(|s| state.service_name(*s));
            p["service"] = json!(service);
        }
    }
    v
}
