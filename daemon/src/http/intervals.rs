//! The timeline's long stalls (`/api/v1/intervals`), each named by what
//! it was: codec and op, CUDA call, off-CPU reason.

use std::{collections::HashMap, sync::Arc};

use axum::{
    Json,
    extract::{Query, State},
    response::{IntoResponse as _, Response},
};
use gapscope_ebpf_common::{IntervalKind, OffCpuReason, off_cpu_reason, off_cpu_syscall};
use serde_json::json;

use super::bad_request;
use crate::{cuda::ENTRY_POINTS, state::DaemonState, timeline::IntervalView};

/// The fix for a bad query: every parameter, the kinds by their labels.
fn interval_params() -> String {
    let kinds: Vec<&str> = IntervalKind::ALL.iter().map(|k| k.label()).collect();
    format!(
        "use service=NAME, kind={}, since_ns=CLOCK_MONOTONIC ns, limit=1..100000",
        kinds.join("|")
    )
}

/// `GET /api/v1/intervals?service=&kind=&since_ns=&limit=`: the long stalls
/// in the timeline window, oldest first (the newest `limit` when more).
pub(super) async fn intervals(
    State(state): State<Arc<DaemonState>>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let mut service = None;
    let mut kind = None;
    let mut since_ns = 0u64;
    let mut limit = 10_000usize;
    for (key, value) in &params {
        match key.as_str() {
            "service" => match state.services.all().iter().position(|s| &s.name == value) {
                Some(id) => service = Some(id as u32),
                None => {
                    return bad_request(
                        format!("no service named {value:?}"),
                        "use a [[service]] name from the configuration",
                    );
                }
            },
            "kind" => match IntervalKind::from_label(value) {
                Some(k) => kind = Some(k),
                None => return bad_request(format!("unknown kind {value:?}"), &interval_params()),
            },
            "since_ns" => match value.parse() {
                Ok(v) => since_ns = v,
                Err(_) => {
                    return bad_request(
                        format!("since_ns={value:?} is not a number"),
                        &interval_params(),
                    );
                }
            },
            "limit" => match value.parse() {
                Ok(v) if (1..=100_000).contains(&v) => limit = v,
                _ => {
                    return bad_request(
                        format!("limit={value:?} is out of range"),
                        &interval_params(),
                    );
                }
            },
            _ => return bad_request(format!("unknown parameter {key:?}"), &interval_params()),
        }
    }
    // Draining the ring takes the explainer's lock: off the HTTP thread.
    let views = tokio::task::spawn_blocking(move || {
        crate::explain::feed::catch_up(&state);
        let found = state
            .timeline
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .query(since_ns, |i| {
                service.is_none_or(|s| s == i.service) && kind.is_none_or(|k| i.kind() == Some(k))
            });
        let specs = state.targets.lock().map(|t| t.serialization.specs()).ok();
        let skip = found.len().saturating_sub(limit);
        let views: Vec<IntervalView> = found[skip..]
            .iter()
            .map(|i| {
                let spec = (i.kind() == Some(IntervalKind::Serialization))
                    .then(|| specs.as_ref().and_then(|s| s.get(i.detail as usize)))
                    .flatten();
                let cuda = matches!(
                    i.kind(),
                    Some(IntervalKind::HostSync | IntervalKind::Launch)
                )
                .then(|| ENTRY_POINTS.get(i.detail as usize))
                .flatten();
                let off_cpu = i.kind() == Some(IntervalKind::OffCpu);
                let reason = off_cpu
                    .then(|| {
                        OffCpuReason::ALL
                            .get(off_cpu_reason(i.detail) as usize)
                            .map(|r| r.label())
                    })
                    .flatten();
                let syscall = off_cpu
                    .then(|| off_cpu_syscall(i.detail).map(crate::syscall_table::name))
                    .flatten();
                IntervalView {
                    kind: i.kind_label(),
                    service: state.service_name(i.service).unwrap_or_default(),
                    codec: spec.map(|s| s.codec.clone()),
                    op: spec.map(|s| s.op.clone()),
                    api: cuda.map(|e| e.library.api()),
                    call: cuda.map(|e| e.name),
                    reason,
                    syscall,
                    holder_tid: (i.kind() == Some(IntervalKind::GilWait) && i.detail != 0)
                        .then_some(i.detail),
                    pid: i.tgid,
                    tid: i.tid,
                    start_ns: i.start_ns,
                    end_ns: i.end_ns,
                    duration_ns: i.end_ns.saturating_sub(i.start_ns),
                }
            })
            .collect();
        (skip > 0, views)
    })
    .await;
    let Ok((truncated, views)) = views else {
        return (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "reading the timeline failed (see gapscoped's log)\n",
        )
            .into_response();
    };
    Json(json!({ "truncated": truncated, "intervals": views })).into_response()
}
