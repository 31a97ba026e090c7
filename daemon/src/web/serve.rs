//! Serving the router over plain HTTP or TLS, one hyper connection per
//! accepted socket, within bounds no client can stretch:
//!
//! - at most `max_connections` open at once; the next is answered 503 and
//!   closed at once (each connection holds a descriptor the probes need);
//! - a request's head (and, on a kept-alive connection, the next one's)
//!   within `header_timeout`, at most [`MAX_HEAD`] bytes (431 beyond);
//! - a request's body within `body_timeout` ([`body_within`], 408);
//! - on shutdown, open connections get [`SHUTDOWN_GRACE`] to finish the
//!   request in hand, then are dropped, so a client trickling bytes cannot
//!   hold the daemon (and its attached programs) up.
//!
//! Basic auth and the configured headers wrap the router in both cases.
//! A reload (`systemctl reload`: new passwords, a renewed certificate)
//! replaces the [`Front`]: its router serves every request from then on,
//! kept-alive connections included, and its TLS acceptor the next
//! handshake; a TLS connection made before the reload closes after its
//! next reply (`Connection: close`), so its client comes back through the
//! renewed certificate; where client certificates are verified, that
//! reply is a 421 instead (the certificate it showed was checked against
//! the old client CA), so a revoked client never gets another answer on
//! an old connection. A reload never closes a connection by itself: one
//! accepted a moment before, whose request is still on its way, would get
//! no answer (hyper closes a connection that has read nothing yet at once
//! on a graceful shutdown), and a scrape racing a reload would fail.
//!
//! The server runs on a thread and runtime of its own, so a scrape or an
//! explain report never waits for the daemon's event loop to come round
//! (a flood of records keeps that loop busy for as long as it lasts).

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use axum::{
    Router,
    body::Body,
    extract::{Request, State},
    http::{HeaderName, HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse as _, Response},
};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{Semaphore, oneshot, watch},
};

use super::{WebConfig, auth};

/// A TLS handshake that takes longer than this is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long open connections may finish their request once shutdown starts.
pub const SHUTDOWN_GRACE: Duration = Duration::from_millis(500);
/// Most bytes of a request's head (hyper's read buffer; 431 beyond).
pub const MAX_HEAD: usize = 64 * 1024;
/// Most bytes of a request's body (413 beyond).
pub const MAX_BODY: usize = 64 * 1024;

/// What one client may hold of the server (`[daemon] http_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 256,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
        }
    }
}

/// What the server turned away, for `/metrics` (one server per process).
pub struct Stats {
    pub open: AtomicU64,
    pub refused: AtomicU64,
    pub head_timeouts: AtomicU64,
    pub body_timeouts: AtomicU64,
}

pub static STATS: Stats = Stats {
    open: AtomicU64::new(0),
    refused: AtomicU64::new(0),
    head_timeouts: AtomicU64::new(0),
    body_timeouts: AtomicU64::new(0),
};

/// Wraps `router` in what the web config asks for, and the body deadline.
pub fn secure(router: Router, web: Option<&WebConfig>, limits: Limits) -> Router {
    // Layers added later run first: credentials are checked before a body
    // is waited for.
    let mut router = router.layer(axum::middleware::from_fn_with_state(
        limits.body_timeout,
        body_within,
    ));
    let Some(web) = web else {
        return router;
    };
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

/// Reads a request's whole body within `limit` before the handler runs:
/// 408 when it does not arrive in time, 413 when it is too large.
async fn body_within(State(limit): State<Duration>, req: Request, next: Next) -> Response {
    let headers = req.headers();
    let empty = !headers.contains_key(header::TRANSFER_ENCODING)
        && headers
            .get(header::CONTENT_LENGTH)
            .is_none_or(|v| v.as_bytes() == b"0");
    if empty {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    match tokio::time::timeout(limit, axum::body::to_bytes(body, MAX_BODY)).await {
        Ok(Ok(bytes)) => next.run(Request::from_parts(parts, Body::from(bytes))).await,
        Ok(Err(_)) => (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the request's body is larger than {MAX_BODY} bytes or was cut off: send at most {MAX_BODY} bytes\n"
            ),
        )
            .into_response(),
        Err(_) => {
            STATS.body_timeouts.fetch_add(1, Relaxed);
            (
                StatusCode::REQUEST_TIMEOUT,
                [(header::CONNECTION, "close")],
                format!(
                    "the request's body did not arrive within {limit:?} (daemon.http_body_timeout_ms): send it at once\n"
                ),
            )
                .into_response()
        }
    }
}

/// What requests are served with (the secured router) and, for TLS, new
/// connections' acceptor (its certificate and client CA).
#[derive(Clone)]
pub struct Front {
    pub router: Router,
    pub acceptor: Option<tokio_rustls::TlsAcceptor>,
    /// Whether the acceptor verifies client certificates.
    pub client_certs: bool,
}

impl Front {
    pub fn new(
        router: Router,
        tls: Option<Arc<rustls::ServerConfig>>,
        client_certs: bool,
    ) -> Front {
        Front {
            router,
            acceptor: tls.map(tokio_rustls::TlsAcceptor::from),
            client_certs,
        }
    }
}

/// Threads for the server's blocking work (scrapes, reports, bcrypt).
const BLOCKING_THREADS: usize = 16;

/// Starts the server on its own thread (`gapscoped-http`) and runtime;
/// the thread ends when `stop` fires and the grace is over.
pub fn spawn(
    listener: std::net::TcpListener,
    front: watch::Receiver<Front>,
    limits: Limits,
    stop: oneshot::Receiver<()>,
) -> std::io::Result<std::thread::JoinHandle<std::io::Result<()>>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(BLOCKING_THREADS)
        .build()?;
    std::thread::Builder::new()
        .name("gapscoped-http".into())
        .spawn(move || {
            let served = runtime.block_on(async {
                let listener = TcpListener::from_std(listener)?;
                serve(listener, front, limits, stop).await
            });
            // A report still being built holds the state: leave it.
            runtime.shutdown_timeout(Duration::from_millis(100));
            served
        })
}

/// Serves until `stop` fires, then gives open connections the grace.
async fn serve(
    listener: TcpListener,
    front: watch::Receiver<Front>,
    limits: Limits,
    mut stop: oneshot::Receiver<()>,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let (closing, closing_seen) = watch::channel(false);
    let lingering = Arc::new(Semaphore::new(LINGERING));
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
                        log::warn!("accepting an HTTP connection: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                // Marked seen with the very front whose acceptor it gets: a
                // reload after this read is a change the connection sees.
                let mut seen = front.clone();
                let acceptor = seen.borrow_and_update().acceptor.clone();
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    refuse(tcp, acceptor.is_none(), limits.max_connections, &lingering);
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let connection = Connection {
                    front: seen,
                    peer: peer.ip(),
                    tls: acceptor.is_some(),
                    limits,
                    closing: closing_seen.clone(),
                };
                connections.spawn(async move {
                    STATS.open.fetch_add(1, Relaxed);
                    match acceptor {
                        None => connection.run(hyper_util::rt::TokioIo::new(tcp)).await,
                        Some(acceptor) => {
                            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                                Ok(Ok(tls)) => connection.run(hyper_util::rt::TokioIo::new(tls)).await,
                                Ok(Err(e)) => log::debug!("TLS handshake with {peer} failed: {e}"),
                                Err(_) => log::debug!("TLS handshake with {peer} timed out"),
                            }
                        }
                    }
                    STATS.open.fetch_sub(1, Relaxed);
                    drop(slot);
                });
            }
        }
    }
    drop(listener);
    let _ = closing.send(true);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await
    .is_ok();
    if !drained {
        let left = connections.len();
        log::info!(
            "dropping {left} HTTP connection(s) still open {SHUTDOWN_GRACE:?} into shutdown"
        );
        connections.shutdown().await;
        STATS.open.fetch_sub(left as u64, Relaxed);
    }
    Ok(())
}

/// Refused connections whose request is read and dropped for a moment
/// after their 503 (beyond these, a refused socket is closed at once).
const LINGERING: usize = 64;

/// Over the connection limit: a plain-HTTP client is told why in one
/// write that never waits (the socket's send buffer is empty); then, so
/// that closing with its request unread does not reset the connection
/// before it reads the 503, the request is read and dropped for up to a
/// second by one of `LINGERING` tasks. A TLS client's socket is closed.
fn refuse(tcp: TcpStream, plain: bool, limit: usize, lingering: &Arc<Semaphore>) {
    STATS.refused.fetch_add(1, Relaxed);
    if !plain {
        return;
    }
    let body = format!(
        "gapscoped serves at most {limit} HTTP connections at once (daemon.http_max_connections): close idle ones or raise the limit\n"
    );
    let reply = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\nRetry-After: 1\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = tcp.try_write(reply.as_bytes());
    let Ok(slot) = lingering.clone().try_acquire_owned() else {
        return;
    };
    tokio::spawn(async move {
        use tokio::io::AsyncReadExt as _;
        let mut tcp = tcp;
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut tcp).await;
        let mut sink = [0u8; 4096];
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while matches!(tcp.read(&mut sink).await, Ok(n) if n > 0) {}
        })
        .await;
        drop(slot);
    });
}

/// The reply to a request on a TLS connection whose client certificate
/// was verified against a client CA a reload has since replaced: 421, and
/// the connection closes; a new one is verified against the current CA.
fn stale_client_certificate() -> Response {
    (
        StatusCode::MISDIRECTED_REQUEST,
        [(header::CONNECTION, "close")],
        "the TLS settings were reloaded after this connection's handshake and client \
         certificates are verified: connect again, so that yours is verified against the \
         current client CA\n",
    )
        .into_response()
}

/// One accepted connection's serving.
struct Connection {
    /// The current front (its router serves each request); marked seen at
    /// accept, so a change means a reload since.
    front: watch::Receiver<Front>,
    /// The client's address, for each request (per-address limits on
    /// credential checks).
    peer: std::net::IpAddr,
    /// Whether the connection went through the TLS acceptor of its time.
    tls: bool,
    limits: Limits,
    closing: watch::Receiver<bool>,
}

impl Connection {
    async fn run<I>(mut self, io: I)
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let (front, peer, tls) = (self.front.clone(), self.peer, self.tls);
        let service = hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
            use tower::ServiceExt as _;
            req.extensions_mut().insert(auth::Peer(peer));
            // Served through a handshake a reload has since replaced.
            let stale = tls && front.has_changed().unwrap_or(false);
            let (router, client_certs) = {
                let f = front.borrow();
                (f.router.clone(), f.client_certs)
            };
            async move {
                if stale && client_certs {
                    return Ok(stale_client_certificate());
                }
                let Ok(mut response) = router.oneshot(req).await;
                if stale {
                    response
                        .headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                Ok::<_, std::convert::Infallible>(response)
            }
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(self.limits.header_timeout)
            .max_header_size(MAX_HEAD)
            .max_buf_size(MAX_HEAD);
        let conn = builder.serve_connection(io, service);
        tokio::pin!(conn);
        let result = tokio::select! {
            r = conn.as_mut() => r,
            _ = self.closing.changed() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(e) = result
            && e.is_timeout()
        {
            STATS.head_timeouts.fetch_add(1, Relaxed);
        }
    }
}
