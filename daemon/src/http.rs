//! The HTTP endpoints: `/metrics`, `/healthz` and a landing page.

use std::sync::Arc;

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::{Html, IntoResponse},
    routing::get,
};

use crate::metrics::Exporter;

pub fn router(exporter: Arc<Exporter>) -> Router {
    Router::new()
        .route("/", get(landing))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
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
         <p><a href=\"/metrics\">Metrics</a> &middot; <a href=\"/healthz\">Health</a></p>\
         </body></html>",
        env!("CARGO_PKG_VERSION")
    ))
}
