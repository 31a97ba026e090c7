//! What the GPU's time went to: the explain report (`/api/v1/explain`)
//! and the kernels deep mode recorded (`/api/v1/kernels`).

use std::{collections::HashMap, sync::Arc};

use axum::{
    Json,
    extract::{Query, State},
    http::StatusCode,
    response::{IntoResponse as _, Response},
};
use serde_json::{Value, json};

use super::{bad_request, service_param, window_param};
use crate::{clock::monotonic_ns, state::DaemonState};

const EXPLAIN_PARAMS: &str = "use service=NAME (a [[service]] name), window=DURATION (60s by default; s, m or h, at most [explain] history_s), gpu_hour_usd=PRICE (by default [explain] gpu_hour_usd) and what_if=CAUSE,CAUSE (causes to predict the removal of together; serialization:CODEC.OP names one serialization function)";

/// `GET /api/v1/explain?service=NAME&window=60s`: where the GPU's time
/// went over the window and each load-generator phase in it, what the CPU
/// side did, and the data's quality (see `explain::report`).
pub(super) async fn explain(
    State(state): State<Arc<DaemonState>>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let mut service = None;
    let mut window_ns = 60_000_000_000u64;
    let mut what_if = Vec::new();
    let (history_ns, mut gpu_hour_usd) = (
        state.explain_config.history_ns,
        state.explain_config.gpu_hour_usd,
    );
    for (key, value) in &params {
        match key.as_str() {
            "service" => match service_param(&state, value) {
                Ok(found) => service = Some(found),
                Err((problem, fix)) => return bad_request(problem, &fix),
            },
            "window" => match window_param(value, history_ns, "the history", EXPLAIN_PARAMS) {
                Ok(ns) => window_ns = ns,
                Err((problem, fix)) => return bad_request(problem, &fix),
            },
            "what_if" => match crate::explain::report::parse_what_if(value) {
                Ok(stalls) => what_if = stalls,
                Err((problem, fix)) => return bad_request(problem, &fix),
            },
            "gpu_hour_usd" => match value
                .parse::<f64>()
                .map_err(|_| "")
                .and_then(|usd| crate::config::check_gpu_hour_usd(usd))
            {
                Ok(usd) => gpu_hour_usd = Some(usd),
                Err(_) => {
                    return bad_request(
                        format!("gpu_hour_usd={value:?} is not a price"),
                        "use the price of one GPU-hour in US dollars, above 0 and at most 10000 (say 2.49)",
                    );
                }
            },
            _ => return bad_request(format!("unknown parameter {key:?}"), EXPLAIN_PARAMS),
        }
    }
    let Some((id, name)) = service else {
        return bad_request("service is missing".into(), EXPLAIN_PARAMS);
    };
    // Functions are named as configured: checked before any work.
    let codecs: Vec<(String, String)> = state
        .targets
        .lock()
        .map(|t| t.serialization.names())
        .unwrap_or_default();
    let unknown = crate::explain::report::unknown_functions(&what_if, &codecs);
    if !unknown.is_empty() {
        // Probes may share a name: each once.
        let known: std::collections::BTreeSet<String> = codecs
            .iter()
            .map(|(c, o)| format!("serialization:{c}.{o}"))
            .collect();
        return bad_request(
            format!(
                "what_if names {}, which no configured probe reports",
                unknown.join(", ")
            ),
            &format!(
                "name one of: {} (or add it with a [[python.probe]])",
                known.into_iter().collect::<Vec<_>>().join(", ")
            ),
        );
    }
    let report = tokio::task::spawn_blocking(move || {
        crate::explain::feed::catch_up(&state);
        let now = monotonic_ns();
        let live = state
            .targets
            .lock()
            .map(|t| t.counts().get(id as usize).is_some_and(|n| *n > 0))
            .unwrap_or(false);
        state.snapshot_at(now, true);
        let annotations = state
            .annotations
            .lock()
            .map(|a| a.list())
            .unwrap_or_default();
        let top_kernels = state
            .cupti
            .as_ref()
            .map(|d| {
                d.ingest
                    .lock()
                    .map(|i| i.top_kernels(id, 10))
                    .unwrap_or_default()
            })
            .unwrap_or_default();
        let explainer = state
            .explainer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let snapshots = state
            .snapshots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        crate::explain::report::build(
            &crate::explain::report::Inputs {
                service_id: id,
                service: &name,
                explainer: &explainer,
                snapshots: &snapshots,
                annotations: &annotations,
                top_kernels,
                deep_enabled: state.cupti.is_some(),
                codecs: &codecs,
                gpu_hour_usd,
                live,
                what_if: &what_if,
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

/// `GET /api/v1/kernels?service=NAME&limit=N`: the kernels CUPTI deep mode
/// recorded for a service, by total GPU time, with their exact names
/// (which metric labels never carry).
pub(super) async fn kernels(
    State(state): State<Arc<DaemonState>>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let fix = "use service=NAME (a [[service]] name) and optionally limit=1..1000";
    let Some(name) = params.get("service") else {
        return bad_request("service is missing".into(), fix);
    };
    let Some(service) = state.services.all().iter().position(|s| &s.name == name) else {
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
    let top = match &state.cupti {
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
    Json(json!({ "service": name, "deep_mode": state.cupti.is_some(), "kernels": list }))
        .into_response()
}
