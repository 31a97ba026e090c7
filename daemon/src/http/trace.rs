//! `GET /api/v1/trace?service=NAME&window=30s`: one service over the
//! window as a Chrome/Perfetto trace (`explain::trace`), served as a file
//! to save.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use axum::{
    extract::{Query, State},
    http::{StatusCode, header},
    response::{IntoResponse as _, Response},
};
use gapscope_ebpf_common::IntervalKind;

use super::{bad_request, service_param, window_param};
use crate::{clock::monotonic_ns, cuda::ENTRY_POINTS, explain::trace, state::DaemonState};

const TRACE_PARAMS: &str = "use service=NAME (a [[service]] name) and window=DURATION (30s by default; s, m or h, at most [timeline] retention_s)";

pub(super) async fn trace(
    State(state): State<Arc<DaemonState>>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let retention_ns = state
        .timeline
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .retention_ns();
    let mut service = None;
    let mut window_ns = 30_000_000_000u64.min(retention_ns);
    for (key, value) in &params {
        match key.as_str() {
            "service" => match service_param(&state, value) {
                Ok(found) => service = Some(found),
                Err((problem, fix)) => return bad_request(problem, &fix),
            },
            "window" => match window_param(
                value,
                retention_ns,
                "the timeline's retention",
                TRACE_PARAMS,
            ) {
                Ok(ns) => window_ns = ns,
                Err((problem, fix)) => return bad_request(problem, &fix),
            },
            _ => return bad_request(format!("unknown parameter {key:?}"), TRACE_PARAMS),
        }
    }
    let Some((id, name)) = service else {
        return bad_request("service is missing".into(), TRACE_PARAMS);
    };
    let built = tokio::task::spawn_blocking(move || build(&state, id, &name, window_ns)).await;
    match built {
        Ok((text, file)) => (
            [
                (header::CONTENT_TYPE, "application/json".to_string()),
                (
                    header::CONTENT_DISPOSITION,
                    format!("attachment; filename=\"{file}\""),
                ),
            ],
            text,
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("building the trace failed: {e}\n"),
        )
            .into_response(),
    }
}

/// The trace text and a file name for it.
fn build(state: &DaemonState, id: u32, name: &str, window_ns: u64) -> (String, String) {
    crate::explain::feed::catch_up(state);
    let end_ns = monotonic_ns();
    let start_ns = end_ns.saturating_sub(window_ns);
    let intervals = state
        .timeline
        .lock()
        .map(|t| {
            t.query(start_ns, |i| {
                i.service == id && i.start_ns <= end_ns && i.kind() != Some(IntervalKind::GpuBusy)
            })
        })
        .unwrap_or_default();
    let codecs: Vec<(String, String)> = state
        .targets
        .lock()
        .map(|t| t.serialization.names())
        .unwrap_or_default();
    let cuda_calls: Vec<&str> = ENTRY_POINTS.iter().map(|e| e.name).collect();
    let (kernels, kernels_evicted) = state
        .cupti
        .as_ref()
        .and_then(|d| d.ingest.lock().ok())
        .map(|i| {
            let k: Vec<_> = i
                .recent
                .iter()
                .filter(|k| k.service == id && k.end_ns >= start_ns && k.start_ns <= end_ns)
                .cloned()
                .collect();
            (k, i.recent_evicted)
        })
        .unwrap_or_default();
    let (requests, requests_evicted) = state
        .annotations
        .lock()
        .map(|a| {
            (
                a.requests_between(start_ns, end_ns, name),
                a.requests_evicted,
            )
        })
        .unwrap_or_default();
    let annotations: Vec<_> = state
        .annotations
        .lock()
        .map(|a| a.list())
        .unwrap_or_default()
        .into_iter()
        .filter(|a| {
            a.monotonic_ns >= start_ns
                && a.monotonic_ns <= end_ns
                && a.service.as_deref().is_none_or(|s| s == name)
        })
        .collect();
    let mut names = BTreeMap::new();
    for i in &intervals {
        for (key, path) in [
            (i.tid, format!("/proc/{}/task/{}/comm", i.tgid, i.tid)),
            (i.tgid, format!("/proc/{}/comm", i.tgid)),
        ] {
            if !names.contains_key(&key)
                && let Ok(comm) = std::fs::read_to_string(&path)
            {
                names.insert(key, comm.trim_end().to_string());
            }
        }
    }
    let live = state
        .targets
        .lock()
        .map(|t| t.counts().get(id as usize).is_some_and(|n| *n > 0))
        .unwrap_or(false);
    // Copies, so the trace is built with no lock held (the event loop
    // takes the explainer's every 100 ms).
    let (gaps, open, resolution_ns, segments_evicted) = {
        let explainer = state
            .explainer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let gaps: Vec<_> = explainer
            .recent
            .iter()
            .filter(|g| {
                g.service == id && g.segment.end_ns >= start_ns && g.segment.start_ns <= end_ns
            })
            .copied()
            .collect();
        let open = if live {
            explainer.open(id).to_vec()
        } else {
            Vec::new()
        };
        (
            gaps,
            open,
            explainer.config().resolution_ns,
            explainer.recent_evicted,
        )
    };
    let text = trace::build(&trace::Inputs {
        service: name,
        start_ns,
        end_ns,
        intervals: &intervals,
        codecs: &codecs,
        cuda_calls: &cuda_calls,
        gaps: &gaps,
        open: &open,
        kernels: &kernels,
        annotations: &annotations,
        requests: &requests,
        names: &names,
        resolution_ns,
        segments_evicted,
        kernels_evicted,
        requests_evicted,
    });
    (text, format!("gapscope-{name}-{end_ns}.json"))
}
