//! Serving the router: plain HTTP through axum, or TLS through rustls with
//! one hyper connection per accepted socket. Basic auth and the configured
//! headers wrap the router in both cases.

use std::{sync::Arc, time::Duration};

use axum::{
    Router,
    http::{HeaderName, HeaderValue},
};
use tokio::{net::TcpListener, sync::oneshot};

use super::{WebConfig, auth};

/// A TLS handshake that takes longer than this is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Wraps `router` in what the web config asks for.
pub fn secure(router: Router, web: &WebConfig) -> Router {
    let mut router = router;
    if !web.users.is_empty() {
        let state = Arc::new(auth::BasicAuth::new(web.users.clone()));
        router = router.layer(axum::middleware::from_fn_with_state(state, auth::require));
    }
    let headers: Vec<(HeaderName, HeaderValue)> = web
        .headers
        .iter()
        .filter_map(|(n, v)| {
            Some((
                HeaderName::from_bytes(n.as_bytes()).ok()?,
                HeaderValue::from_str(v).ok()?,
            ))
        })
        .collect();
    if !headers.is_empty() {
        let headers = Arc::new(headers);
        router = router.layer(axum::middleware::map_response(
            move |mut response: axum::response::Response| {
                let headers = headers.clone();
                async move {
                    for (name, value) in headers.iter() {
                        response.headers_mut().insert(name.clone(), value.clone());
                    }
                    response
                }
            },
        ));
    }
    router
}

/// Serves until `stop` fires.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    stop: oneshot::Receiver<()>,
) -> std::io::Result<()> {
    match tls {
        None => {
            axum::serve(listener, router)
                .with_graceful_shutdown(async {
                    let _ = stop.await;
                })
                .await
        }
        Some(config) => {
            serve_tls(listener, router, config, stop).await;
            Ok(())
        }
    }
}

async fn serve_tls(
    listener: TcpListener,
    router: Router,
    config: Arc<rustls::ServerConfig>,
    mut stop: oneshot::Receiver<()>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off
                        // rather than spin.
                        log::warn!("accepting an HTTPS connection: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let acceptor = acceptor.clone();
                let service = hyper_util::service::TowerToHyperService::new(router.clone());
                connections.spawn(async move {
                    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(e)) => {
                            log::debug!("TLS handshake with {peer} failed: {e}");
                            return;
                        }
                        Err(_) => {
                            log::debug!("TLS handshake with {peer} timed out");
                            return;
                        }
                    };
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
        }
    }
    connections.shutdown().await;
}
