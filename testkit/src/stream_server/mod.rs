//! A streaming OpenAI-style test server for the load generator's tests and
//! benchmark: exact, logged per-token delays, failure injection, and a
//! dcgm-style `/metrics` with known power and energy.
//!
//! It logs, on CLOCK_MONOTONIC (the load generator's clock), when each
//! request arrived and when each chunk was handed to the connection, and
//! how many requests were in flight at every moment, so tests compare the
//! client's measurements with what the server actually did.
//!
//! Routes: `POST /v1/completions`, `POST /v1/chat/completions` (SSE when
//! `"stream": true`, usage when `stream_options.include_usage`), the same
//! under `/fail/MODE/…` with a failure injected, `POST /raw` (plain text
//! chunks), `POST /api/v1/annotations` (logged), `GET /metrics` (telemetry).
//!
//! Failure modes: `status503`, `close2` (connection cut after two chunks),
//! `nodone` (clean end without a finish reason or `[DONE]`), `malformed2`,
//! `stall2` (nothing after two chunks), `errorevent`, `splitutf8` (valid
//! multi-byte text cut between writes; must succeed), `badutf8`,
//! `hugeline` (a 2 MiB event), `short` (one token fewer than asked),
//! `slowheaders` (headers after 3 s).
//!
//! Token truth: each chunk carries the tokens `chunk_pattern` says (cycled;
//! else `tokens_per_chunk`), every token the text " t", the first
//! `reasoning_tokens` of a chat reply as `delta.reasoning_content`; the log
//! keeps each chunk's token count; `usage = false` never sends usage.

use std::{
    convert::Infallible,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, combinators::BoxBody};
use hyper::{
    Request, Response,
    server::conn::{http1, http2},
    service::service_fn,
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};

pub use gapscope_clock::monotonic_ns;

mod reply;

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub first_token_ms: f64,
    pub token_ms: f64,
    pub tokens_per_chunk: u32,
    /// Tokens per chunk, cycled (e.g. 1, 2, 3, 4); empty: `tokens_per_chunk`.
    pub chunk_pattern: Vec<u32>,
    /// Send `usage` when asked (false: never, as some servers do).
    pub usage: bool,
    /// Chat replies: the first N tokens are reasoning
    /// (`delta.reasoning_content`), the rest the answer.
    pub reasoning_tokens: u32,
    /// Keep a log of every request (off for the benchmark).
    pub log_requests: bool,
    /// `/metrics`: GPU utilization (%), power (W), and the rate at which
    /// the energy counter grows (W; equal to `power_w` when consistent).
    pub utilization_pct: f64,
    pub power_w: f64,
    pub energy_w: f64,
    /// GPUs on `/metrics` (gpu="0".., UUID GPU-…-N), each with the power,
    /// energy and utilization above.
    pub gpus: u32,
    /// Close a kept-alive connection, without a reply or a word, when a
    /// second request arrives on it (what llama-server's HTTP layer does
    /// after a stream).
    pub drop_reused_connections: bool,
    /// Require `Authorization: Bearer TOKEN` on the API routes (401 with
    /// an OpenAI-style error otherwise, 403 for a wrong token).
    pub bearer: Option<String>,
    /// Serve at most this many requests at once; the rest wait, before
    /// their headers, for one to finish (a server whose latency rises past
    /// a known concurrency while its throughput stays flat).
    pub capacity: Option<usize>,
    /// Serve HTTPS (and h2 when `ServerTls::h2` and the client offers it).
    pub tls: Option<ServerTls>,
}

/// HTTPS for the test server: its certificate, an optional client CA it
/// requires certificates from, and whether ALPN may choose h2.
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
    pub h2: bool,
}

impl ServerTls {
    fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certs = |p: &PathBuf| {
            CertificateDer::pem_file_iter(p)
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap()
        };
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = match &self.client_ca {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in certs(ca) {
                    roots.add(c).unwrap();
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    roots.into(),
                    provider,
                )
                .build()
                .unwrap();
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let key = PrivateKeyDer::from_pem_file(&self.key).unwrap();
        let mut config = builder.with_single_cert(certs(&self.cert), key).unwrap();
        config.alpn_protocols = if self.h2 {
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        } else {
            vec![b"http/1.1".to_vec()]
        };
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            first_token_ms: 0.0,
            token_ms: 0.0,
            tokens_per_chunk: 1,
            chunk_pattern: Vec::new(),
            usage: true,
            reasoning_tokens: 0,
            log_requests: true,
            utilization_pct: 80.0,
            power_w: 200.0,
            energy_w: 200.0,
            gpus: 1,
            drop_reused_connections: false,
            bearer: None,
            capacity: None,
            tls: None,
        }
    }
}

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub arrived_ns: u64,
    pub request_id: Option<String>,
    pub traceparent: Option<String>,
    pub body: Value,
    /// When the response headers were handed over.
    pub headers_ns: Option<u64>,
    /// When each chunk with tokens was handed to the connection.
    pub chunks_ns: Vec<u64>,
    /// How many tokens each of those chunks carried.
    pub chunk_tokens: Vec<u64>,
    /// When the last byte was handed over.
    pub done_ns: Option<u64>,
    /// "HTTP/1.1" or "HTTP/2.0".
    pub http_version: String,
}

#[derive(Debug, Default)]
pub struct ServerLog {
    pub requests: Vec<Seen>,
    pub annotations: Vec<Value>,
    /// (time, requests in flight from then on), at every change.
    pub in_flight: Vec<(u64, usize)>,
    pub now_in_flight: usize,
    pub max_in_flight: usize,
    /// Requests cut without a reply (`drop_reused_connections`).
    pub cut_reused: usize,
    /// Connections accepted (past the TLS handshake, under TLS), and
    /// TLS handshakes that failed.
    pub connections: usize,
    pub tls_failures: usize,
}

impl ServerLog {
    /// Mean requests in flight over [a, b).
    pub fn mean_in_flight(&self, a: u64, b: u64) -> f64 {
        let mut total = 0u128;
        let mut level = 0usize;
        let mut t = a;
        for (at, n) in &self.in_flight {
            if *at > a {
                let until = (*at).min(b);
                if until > t {
                    total += u128::from(until - t) * level as u128;
                    t = until;
                }
            }
            if *at >= b {
                break;
            }
            level = *n;
        }
        if b > t {
            total += u128::from(b - t) * level as u128;
        }
        total as f64 / (b - a) as f64
    }

    /// Most requests in flight at once during [a, b).
    pub fn max_in_flight_between(&self, a: u64, b: u64) -> usize {
        // The level at `a`, then every level reached before `b`.
        let at_start = self
            .in_flight
            .iter()
            .take_while(|(at, _)| *at <= a)
            .last()
            .map_or(0, |(_, n)| *n);
        self.in_flight
            .iter()
            .filter(|(at, _)| *at > a && *at < b)
            .map(|(_, n)| *n)
            .fold(at_start, usize::max)
    }
}

pub struct StreamServer {
    pub port: u16,
    /// Serving HTTPS.
    pub tls: bool,
    pub log: Arc<Mutex<ServerLog>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for StreamServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

type Body = BoxBody<Bytes, std::io::Error>;

struct State {
    cfg: ServerConfig,
    log: Arc<Mutex<ServerLog>>,
    started_ns: u64,
    /// `capacity`'s permits.
    slots: Option<Arc<tokio::sync::Semaphore>>,
}

/// Counts a request in flight until dropped (when its body is done or the
/// connection goes), holding its capacity permit as long.
struct InFlight {
    state: Arc<State>,
    _permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl InFlight {
    fn new(s: Arc<State>, permit: Option<tokio::sync::OwnedSemaphorePermit>) -> Self {
        {
            let mut log = s.log.lock().unwrap();
            log.now_in_flight += 1;
            log.max_in_flight = log.max_in_flight.max(log.now_in_flight);
            let n = log.now_in_flight;
            log.in_flight.push((monotonic_ns(), n));
        }
        Self {
            state: s,
            _permit: permit,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut log = self.state.log.lock().unwrap();
        log.now_in_flight -= 1;
        let n = log.now_in_flight;
        log.in_flight.push((monotonic_ns(), n));
    }
}

impl StreamServer {
    /// Starts on a free loopback port, on its own thread and runtime.
    pub fn start(cfg: ServerConfig) -> StreamServer {
        Self::start_on(cfg, 0, 2)
    }

    pub fn start_on(cfg: ServerConfig, port: u16, threads: usize) -> StreamServer {
        let listener =
            std::net::TcpListener::bind(("127.0.0.1", port)).expect("binding the test server");
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let log: Arc<Mutex<ServerLog>> = Arc::default();
        let slots = cfg
            .capacity
            .map(|n| Arc::new(tokio::sync::Semaphore::new(n)));
        let state = Arc::new(State {
            cfg,
            log: log.clone(),
            started_ns: monotonic_ns(),
            slots,
        });
        let acceptor = state.cfg.tls.as_ref().map(ServerTls::acceptor);
        let acceptor_given = acceptor.is_some();
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let (stream, _) = tokio::select! {
                        a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
                        _ = &mut stop_rx => return,
                    };
                    let _ = stream.set_nodelay(true);
                    let state = state.clone();
                    let acceptor = acceptor.clone();
                    tokio::spawn(async move {
                        if let Some(acceptor) = acceptor {
                            match acceptor.accept(stream).await {
                                Ok(tls) => {
                                    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                                    state.log.lock().unwrap().connections += 1;
                                    serve(state, tls, h2).await;
                                }
                                Err(_) => state.log.lock().unwrap().tls_failures += 1,
                            }
                            return;
                        }
                        state.log.lock().unwrap().connections += 1;
                        serve(state, stream, false).await;
                    });
                }
            });
        });
        StreamServer {
            port,
            tls: acceptor_given,
            log,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    pub fn url(&self, path: &str) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}{path}", self.port)
    }
}

/// Serves one connection: HTTP/2 when ALPN chose it, else HTTP/1.1 (where
/// `drop_reused_connections` may cut it).
async fn serve<IO>(state: Arc<State>, io: IO, h2: bool)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let drop_reused = state.cfg.drop_reused_connections;
    let cut = Arc::new(tokio::sync::Notify::new());
    let served = std::sync::atomic::AtomicU32::new(0);
    let svc = {
        let cut = cut.clone();
        service_fn(move |req| {
            let before = served.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let cutting = drop_reused && before > 0;
            if cutting {
                state.log.lock().unwrap().cut_reused += 1;
                cut.notify_one();
            }
            let state = state.clone();
            async move {
                if cutting {
                    // No reply at all: the connection goes.
                    std::future::pending::<()>().await;
                }
                handle(state, req).await
            }
        })
    };
    if h2 {
        let _ = http2::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(io), svc)
            .await;
        return;
    }
    let conn = http1::Builder::new().serve_connection(TokioIo::new(io), svc);
    tokio::select! {
        _ = conn => {}
        _ = cut.notified() => {}
    }
}

async fn handle(
    s: Arc<State>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Body>, Infallible> {
    let arrived = monotonic_ns();
    let path = req.uri().path().to_string();
    let header = |n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let (request_id, traceparent) = (header("x-request-id"), header("traceparent"));
    let http_version = format!("{:?}", req.version());
    if req.method() == hyper::Method::GET && path == "/metrics" {
        return Ok(metrics(&s));
    }
    if let Some(token) = &s.cfg.bearer
        && path != "/api/v1/annotations"
    {
        let refused = match header("authorization") {
            None => Some((401, "no API key: send Authorization: Bearer KEY")),
            Some(v) if v.strip_prefix("Bearer ") != Some(token.as_str()) => {
                Some((403, "the API key is not valid"))
            }
            Some(_) => None,
        };
        if let Some((status, message)) = refused {
            let body = json!({"error": {"message": message, "type": "invalid_request_error"}});
            return Ok(full(status, body.to_string()));
        }
    }
    let bytes = req
        .into_body()
        .collect()
        .await
        .map(http_body_util::Collected::to_bytes)
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if path == "/api/v1/annotations" {
        s.log.lock().unwrap().annotations.push(body);
        return Ok(full(200, "{}".into()));
    }
    let (mode, api) = match path.strip_prefix("/fail/") {
        Some(rest) => match rest.split_once('/') {
            Some((m, api)) => (m.to_string(), format!("/{api}")),
            None => (rest.to_string(), String::new()),
        },
        None => (String::new(), path.clone()),
    };
    if !matches!(
        api.as_str(),
        "/v1/completions" | "/v1/chat/completions" | "/raw"
    ) {
        return Ok(full(
            404,
            json!({"error": {"message": format!("no route {path}")}}).to_string(),
        ));
    }
    let index = s.cfg.log_requests.then(|| {
        let mut log = s.log.lock().unwrap();
        log.requests.push(Seen {
            path: path.clone(),
            arrived_ns: arrived,
            request_id,
            traceparent,
            body: body.clone(),
            headers_ns: None,
            chunks_ns: Vec::new(),
            chunk_tokens: Vec::new(),
            done_ns: None,
            http_version,
        });
        log.requests.len() - 1
    });
    if mode == "status503" {
        return Ok(full(
            503,
            json!({"error": {"message": "overloaded"}}).to_string(),
        ));
    }
    if mode == "slowheaders" {
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let permit = match &s.slots {
        Some(slots) => slots.clone().acquire_owned().await.ok(),
        None => None,
    };
    let r = reply::Reply::new(&s.cfg, &body, &api, mode, index);
    let guard = InFlight::new(s.clone(), permit);
    Ok(if !r.stream {
        reply::whole(&s, &r, guard).await
    } else if r.instant(&s.cfg) {
        reply::instant(&s, &r, guard)
    } else {
        reply::timed(s, r, guard)
    })
}

pub(super) fn full(status: u16, body: String) -> Response<Body> {
    all_at_once(status, "application/json", body.into_bytes())
}

/// A reply whose body is all here: one write.
pub(super) fn all_at_once(status: u16, content_type: &str, body: Vec<u8>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(
            Full::new(Bytes::from(body))
                .map_err(|never: Infallible| match never {})
                .boxed(),
        )
        .unwrap()
}

/// dcgm-exporter-style telemetry: `gpus` GPUs, constant utilization and
/// power, an energy counter (mJ) growing at `energy_w`, each.
fn metrics(s: &State) -> Response<Body> {
    let elapsed = (monotonic_ns() - s.started_ns) as f64 / 1e9;
    let c = &s.cfg;
    let mut text = String::new();
    for (name, help, kind, value) in [
        (
            "DCGM_FI_DEV_GPU_UTIL",
            "GPU utilization (in %).",
            "gauge",
            c.utilization_pct,
        ),
        (
            "DCGM_FI_DEV_POWER_USAGE",
            "Power draw (in W).",
            "gauge",
            c.power_w,
        ),
        (
            "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
            "Total energy consumption since boot (in mJ).",
            "counter",
            (1e9 + c.energy_w * elapsed * 1000.0).round(),
        ),
    ] {
        text.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for g in 0..c.gpus.max(1) {
            text.push_str(&format!(
                "{name}{{gpu=\"{g}\",UUID=\"GPU-00000000-test-{g}\",modelName=\"NVIDIA A40\"}} {value}\n"
            ));
        }
    }
    all_at_once(200, "text/plain; version=0.0.4", text.into_bytes())
}
