//! Sending one request and timing every token of its reply.
//!
//! Each request carries an `x-request-id` and a W3C `traceparent`, so a
//! server's logs and traces can be joined with the per-request JSONL.
//! Times are taken on the run clock when bytes arrive; every failure ends
//! in one `ErrorKind` and the record keeps what arrived before it.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Uri, body::Incoming, header};
use hyper_util::{
    client::legacy::{Client as HyperClient, connect::HttpConnector},
    rt::TokioExecutor,
};

use crate::tls::{Connector, Transport};
use serde_json::Value;
use tokenizers::Tokenizer;

use crate::{
    clock::Clock,
    decode::{DecodeError, Decoder},
    plan::{Api, Endpoint},
    prompts::Ask,
    record::{ErrorKind, OutputTokens, RequestError, RequestRecord, TokenEvent},
};

/// Generated text kept per request for the tokenizer's count; beyond it
/// the tokenizer count is left out rather than memory growing.
const MAX_TEXT_KEPT: usize = 1 << 20;

/// A request ready to go.
pub(crate) struct Planned {
    pub seq: u64,
    pub phase_index: usize,
    pub phase: String,
    pub scheduled_ns: Option<u64>,
    pub ask: Ask,
}

pub(crate) struct Client {
    http: HyperClient<Connector, Full<Bytes>>,
    /// No pooling: a resend must not land on another dead kept-alive
    /// connection.
    fresh: HyperClient<Connector, Full<Bytes>>,
    endpoint: Arc<Endpoint>,
    uri: Uri,
    /// Ask for exactly `max_tokens` and check it was honoured.
    fixed: bool,
    tokenizer: Option<Arc<Tokenizer>>,
    clock: Clock,
    /// Random per run: request ids and trace ids stay unique across runs.
    run_id: u64,
    /// A client certificate is configured (`--cert`), for error hints.
    client_certificate: bool,
    /// Output tokens of the run so far, counted as they arrive (the
    /// progress line and gapscoped's per-phase token counts read it).
    arrived: Arc<AtomicU64>,
}

impl Client {
    pub(crate) fn new(
        transport: &Transport,
        endpoint: Arc<Endpoint>,
        fixed: bool,
        tokenizer: Option<Arc<Tokenizer>>,
        clock: Clock,
        run_id: u64,
        arrived: Arc<AtomicU64>,
    ) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs_f64(endpoint.connect_timeout_s)));
        let connector = transport.connector(connector);
        let http = HyperClient::builder(TokioExecutor::new())
            .pool_max_idle_per_host(usize::MAX)
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector.clone());
        let fresh = HyperClient::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build(connector);
        let uri = endpoint.url.parse().unwrap_or_default();
        Self {
            http,
            fresh,
            endpoint,
            uri,
            fixed,
            tokenizer,
            clock,
            run_id,
            arrived,
            client_certificate: transport.client_certificate(),
        }
    }

    /// The run's tokenizer, when given.
    pub(crate) fn tokenizer(&self) -> Option<Arc<Tokenizer>> {
        self.tokenizer.clone()
    }

    pub(crate) fn request_id(&self, seq: u64) -> String {
        format!("glg-{:08x}-{seq:06}", self.run_id as u32)
    }

    /// The JSON body for `ask`.
    pub(crate) fn body(&self, ask: &Ask, request_id: &str) -> String {
        let e = &self.endpoint;
        let model = e.model.clone().unwrap_or_else(|| "default".into());
        match e.api {
            Api::Completions | Api::Chat => {
                // The shared prefix as the system message, then the
                // conversation so far, then this turn.
                let messages = (e.api == Api::Chat).then(|| {
                    let mut m = Vec::with_capacity(2 + 2 * ask.history.len());
                    if let Some((_, p)) = &ask.prefix {
                        m.push(ChatMessage::new("system", p));
                    }
                    for (prompt, reply) in &ask.history {
                        m.push(ChatMessage::new("user", prompt));
                        m.push(ChatMessage::new("assistant", reply));
                    }
                    m.push(ChatMessage::new("user", &ask.prompt));
                    m
                });
                let body = OpenAiBody {
                    // vLLM, SGLang and LMDeploy honour these; others
                    // ignore them, and the run says so.
                    ignore_eos: self.fixed.then_some(true),
                    max_tokens: ask.max_tokens,
                    prompt: messages.is_none().then(|| ask.full_prompt()),
                    messages,
                    min_tokens: self.fixed.then_some(ask.max_tokens),
                    model: &model,
                    stream: e.stream,
                    stream_options: e.stream.then_some(StreamOptions {
                        continuous_usage_stats: e.continuous_usage.then_some(true),
                        include_usage: true,
                    }),
                };
                serde_json::to_string(&body).unwrap_or_default()
            }
            Api::Template => e
                .body
                .as_deref()
                .unwrap_or("{}")
                .replace("{{prompt}}", &Value::String(ask.full_prompt()).to_string())
                .replace("{{max_tokens}}", &ask.max_tokens.to_string())
                .replace(
                    "{{request_id}}",
                    &Value::String(request_id.into()).to_string(),
                )
                .replace("{{model}}", &Value::String(model).to_string()),
        }
    }

    /// The POST for one attempt at a request.
    fn request(
        &self,
        body: Bytes,
        id: &str,
        trace: &str,
    ) -> Result<Request<Full<Bytes>>, hyper::http::Error> {
        let mut builder = Request::post(self.uri.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(
                header::ACCEPT,
                if self.endpoint.stream {
                    "text/event-stream, application/json"
                } else {
                    "application/json"
                },
            )
            .header("x-request-id", id)
            .header("traceparent", trace);
        for (k, v) in &self.endpoint.headers {
            builder = builder.header(k.as_str(), v.as_str());
        }
        if let Some(key) = &self.endpoint.api_key
            && let Ok(mut value) = header::HeaderValue::from_str(&format!("Bearer {}", key.token))
        {
            value.set_sensitive(true);
            builder = builder.header(header::AUTHORIZATION, value);
        }
        builder.body(Full::new(body))
    }

    /// Sends `p` and reads the whole reply; `cancel` ends it early.
    pub(crate) async fn send(
        &self,
        p: Planned,
        queue_ns: Option<u64>,
        mut cancel: tokio::sync::watch::Receiver<bool>,
    ) -> RequestRecord {
        let id = self.request_id(p.seq);
        let body = self.body(&p.ask, &id);
        let prompt_tokens = p.ask.prompt_tokens;
        let mut rec = RequestRecord {
            id,
            phase: p.phase,
            phase_index: p.phase_index,
            scheduled_ns: p.scheduled_ns,
            queue_ns,
            sent_ns: 0,
            headers_ns: None,
            first_token_ns: None,
            last_token_ns: None,
            done_ns: 0,
            status: None,
            error: None,
            finish_reason: None,
            max_tokens: p.ask.max_tokens,
            prompt_tokens,
            prefix_group: p.ask.prefix.as_ref().map(|(g, _)| *g),
            usage_prompt_tokens: None,
            output_tokens: OutputTokens::default(),
            events: Vec::new(),
            first_reasoning_ns: None,
            first_answer_ns: None,
            chunks: 0,
            length_honoured: None,
            resent: 0,
            http_version: None,
            conversation: p.ask.conversation.map(|(c, _)| c),
            turn: p.ask.conversation.map(|(_, t)| t),
            // A conversation's next turn carries this reply.
            reply: p.ask.conversation.map(|_| String::new()),
        };
        let trace = format!(
            "00-{:016x}{:016x}-{:016x}-01",
            self.run_id,
            p.seq,
            rand::random::<u64>() | 1
        );
        let body = Bytes::from(body);
        rec.sent_ns = self.clock.now();
        let total = Duration::from_secs_f64(self.endpoint.timeout_s);
        let deadline = tokio::time::Instant::now() + total;
        let response = loop {
            let request = match self.request(body.clone(), &rec.id, &trace) {
                Ok(r) => r,
                Err(e) => {
                    return self.fail(
                        rec,
                        ErrorKind::MalformedStream,
                        format!("cannot build the request: {e}"),
                    );
                }
            };
            let http = if rec.resent == 0 {
                &self.http
            } else {
                &self.fresh
            };
            let result = tokio::select! {
                r = tokio::time::timeout_at(deadline, http.request(request)) => r,
                _ = cancel.changed() => return self.fail(rec, ErrorKind::Cancelled, "stopped before the reply".into()),
            };
            match result {
                Err(_) => {
                    return self.fail(
                        rec,
                        ErrorKind::Timeout,
                        format!("no reply within {total:?}"),
                    );
                }
                Ok(Err(e)) => {
                    let kind = classify_client_error(&e);
                    // A server that closes a kept-alive connection after a
                    // stream without saying so (llama-server does) fails the
                    // next request sent on it before any reply: send it once
                    // more on a fresh connection, and record that it was.
                    // Not an HTTP/2 stream reset or GOAWAY: the server chose
                    // to end that stream (hyper itself retries streams the
                    // server refused unprocessed).
                    let chain = error_chain(&e);
                    if kind == ErrorKind::EarlyClose && rec.resent == 0 && !http2_reset(&chain) {
                        rec.resent = 1;
                        continue;
                    }
                    let mut hint = crate::tls::hint(&chain);
                    // Under TLS 1.3 a server refuses a missing client
                    // certificate after the handshake: the client sees the
                    // connection close before any reply.
                    if hint.is_empty()
                        && kind == ErrorKind::EarlyClose
                        && self.endpoint.url.starts_with("https://")
                        && !self.client_certificate
                    {
                        hint = " (the server closed the TLS connection before replying: if it requires a client certificate, give --cert FILE --key FILE)";
                    }
                    return self.fail(rec, kind, format!("{chain}{hint}"));
                }
                Ok(Ok(r)) => break r,
            }
        };
        rec.headers_ns = Some(self.clock.now());
        rec.http_version = Some(match response.version() {
            hyper::Version::HTTP_2 => "2",
            hyper::Version::HTTP_10 => "1.0",
            _ => "1.1",
        });
        let status = response.status().as_u16();
        rec.status = Some(status);
        if status != 200 {
            let text = read_some(response.into_body(), 512).await;
            let hint = match (status, &self.endpoint.api_key) {
                (401 | 403, None) => {
                    " (the endpoint wants credentials: give --api-key KEY or set OPENAI_API_KEY)"
                }
                (401 | 403, Some(k)) => match k.source {
                    "--api-key" => " (the endpoint refused the key given with --api-key)",
                    _ => " (the endpoint refused the key in OPENAI_API_KEY)",
                },
                _ => "",
            };
            return self.fail(
                rec,
                ErrorKind::HttpStatus,
                format!("HTTP {status}: {text}{hint}"),
            );
        }
        self.read_reply(rec, response.into_body(), deadline, &mut cancel)
            .await
    }

    async fn read_reply(
        &self,
        mut rec: RequestRecord,
        mut body: Incoming,
        deadline: tokio::time::Instant,
        cancel: &mut tokio::sync::watch::Receiver<bool>,
    ) -> RequestRecord {
        let mut decoder = Decoder::new(&self.endpoint);
        let idle = Duration::from_secs_f64(self.endpoint.idle_timeout_s);
        let mut text = self.tokenizer.as_ref().map(|_| Generated::default());
        loop {
            let wait = (tokio::time::Instant::now() + idle).min(deadline);
            let frame = tokio::select! {
                f = tokio::time::timeout_at(wait, body.frame()) => f,
                _ = cancel.changed() => return self.fail(rec, ErrorKind::Cancelled, "stopped while streaming".into()),
            };
            let now = self.clock.now();
            let mut on_update = |u: &crate::decode::Update| self.apply(&mut rec, u, now, &mut text);
            match frame {
                Err(_) => {
                    let why = if wait == deadline {
                        "the reply took longer than timeout_s"
                    } else {
                        "no chunk within idle_timeout_s"
                    };
                    return self.fail(rec, ErrorKind::Timeout, why.into());
                }
                Ok(None) => {
                    if let Err(e) = decoder.finish(&mut on_update) {
                        return self.decode_failed(rec, e);
                    }
                    if !decoder.complete() {
                        return self.fail(
                            rec,
                            ErrorKind::EarlyClose,
                            "the stream ended without [DONE] or a finish reason".into(),
                        );
                    }
                    break;
                }
                Ok(Some(Err(e))) => {
                    let kind = if connection_lost(&e) {
                        ErrorKind::EarlyClose
                    } else {
                        ErrorKind::MalformedStream
                    };
                    return self.fail(rec, kind, error_chain(&e));
                }
                Ok(Some(Ok(frame))) => {
                    let Ok(data) = frame.into_data() else {
                        continue; // trailers
                    };
                    if let Err(e) = decoder.feed(&data, &mut on_update) {
                        return self.decode_failed(rec, e);
                    }
                }
            }
        }
        rec.done_ns = self.clock.now();
        let mut weights = None;
        if let (Some(tok), Some(text)) = (&self.tokenizer, &text)
            && text.text.len() < MAX_TEXT_KEPT
            && let Some(per_event) = text.tokens_per_event(tok)
        {
            rec.output_tokens.tokenizer = Some(per_event.iter().sum());
            weights = Some(per_event);
        }
        // The server's own per-chunk counts beat the tokenizer's split.
        if self.endpoint.continuous_usage {
            weights = None;
        }
        self.settle(&mut rec, weights.as_deref());
        let best = rec.output_tokens.best();
        if self.fixed {
            rec.length_honoured = Some(best == u64::from(rec.max_tokens));
        }
        rec
    }

    /// Records one update of the reply, which arrived at time `now`.
    fn apply(
        &self,
        rec: &mut RequestRecord,
        u: &crate::decode::Update,
        now: u64,
        text: &mut Option<Generated>,
    ) {
        if let Some(n) = u.usage_completion {
            rec.output_tokens.usage = Some(n);
        }
        if let Some(n) = u.usage_prompt {
            rec.usage_prompt_tokens = Some(n);
        }
        if let Some(n) = u.usage_reasoning {
            rec.output_tokens.usage_reasoning = Some(n);
        }
        if u.finish_reason.is_some() {
            rec.finish_reason.clone_from(&u.finish_reason);
        }
        // Reasoning first: a chunk carrying both is the end of the
        // reasoning and the start of the answer. The server's own count
        // for the chunk goes to the part that carries text, the answer
        // when both do.
        let parts = [(true, &u.reasoning), (false, &u.text)];
        let with_text = parts.iter().filter(|(_, t)| !t.is_empty()).count();
        if with_text > 0 {
            rec.chunks += 1;
        }
        for (i, (reasoning, part)) in parts.into_iter().enumerate() {
            if part.is_empty() {
                continue;
            }
            let tokens = match u.tokens {
                Some(n) if with_text == 1 || i == 1 => n,
                Some(_) => 0,
                None => 1,
            };
            rec.output_tokens.counted += tokens;
            rec.first_token_ns.get_or_insert(now);
            rec.last_token_ns = Some(now);
            if reasoning {
                rec.first_reasoning_ns.get_or_insert(now);
            } else {
                rec.first_answer_ns.get_or_insert(now);
            }
            if rec.events.capacity() == 0 {
                // A capacity hint, once a reply streams: about an
                // event a token, so the vector rarely grows and copies.
                rec.events.reserve(rec.max_tokens.clamp(16, 1024) as usize);
            }
            rec.events.push(TokenEvent {
                at_ns: now.saturating_sub(rec.sent_ns),
                tokens,
                reasoning,
                continues: with_text == 2 && !reasoning,
            });
            self.arrived.fetch_add(tokens, Ordering::Relaxed);
            if let Some(t) = text {
                t.push(part);
            }
            if !reasoning
                && let Some(r) = &mut rec.reply
                && r.len() < MAX_TEXT_KEPT
            {
                r.push_str(part);
            }
        }
    }

    fn decode_failed(&self, rec: RequestRecord, e: DecodeError) -> RequestRecord {
        match e {
            DecodeError::Malformed(why) => self.fail(rec, ErrorKind::MalformedStream, why),
            DecodeError::ServerError(why) => self.fail(rec, ErrorKind::ServerError, why),
        }
    }

    /// Settles the request's tokens (`RequestRecord::settle_tokens`); the
    /// live count, which took each chunk as it came, takes the difference.
    fn settle(&self, rec: &mut RequestRecord, weights: Option<&[u64]>) {
        let sum = |rec: &RequestRecord| rec.events.iter().map(|e| e.tokens).sum::<u64>();
        let counted = sum(rec);
        rec.settle_tokens(weights);
        let settled = sum(rec);
        if settled >= counted {
            self.arrived.fetch_add(settled - counted, Ordering::Relaxed);
        } else {
            self.arrived.fetch_sub(counted - settled, Ordering::Relaxed);
        }
    }

    /// Ends a request that failed; what arrived before stays, its tokens
    /// settled as far as the reply told them (usage, if it came, else the
    /// chunks: approximate, and the phase says so).
    fn fail(&self, mut rec: RequestRecord, kind: ErrorKind, detail: String) -> RequestRecord {
        rec.done_ns = self.clock.now();
        self.settle(&mut rec, None);
        rec.error = Some(RequestError { kind, detail });
        rec
    }
}

/// An OpenAI completions or chat request, serialized straight from the
/// ask; keys in alphabetical order, as a `serde_json::Map` has them while
/// nothing in the build turns on serde_json's `preserve_order` (the test
/// comparing the two would then fail, with both bodies still valid).
#[derive(serde::Serialize)]
struct OpenAiBody<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    ignore_eos: Option<bool>,
    max_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    messages: Option<Vec<ChatMessage<'a>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    min_tokens: Option<u32>,
    model: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    prompt: Option<String>,
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<StreamOptions>,
}

#[derive(serde::Serialize)]
struct ChatMessage<'a> {
    content: &'a str,
    role: &'static str,
}

impl<'a> ChatMessage<'a> {
    fn new(role: &'static str, content: &'a str) -> Self {
        Self { content, role }
    }
}

#[derive(serde::Serialize)]
struct StreamOptions {
    #[serde(skip_serializing_if = "Option::is_none")]
    continuous_usage_stats: Option<bool>,
    include_usage: bool,
}

/// The generated text kept for the tokenizer, with where each
/// token-bearing event ended in it.
#[derive(Default)]
struct Generated {
    text: String,
    /// Byte offset just past each event's text, in event order.
    ends: Vec<usize>,
}

impl Generated {
    fn push(&mut self, part: &str) {
        if self.text.len() < MAX_TEXT_KEPT {
            self.text.push_str(part);
        }
        self.ends.push(self.text.len());
    }

    /// The tokenizer's tokens of the whole text, each given to the event
    /// in which its first byte arrived (a token that spans two chunks
    /// counts where it began).
    fn tokens_per_event(&self, tok: &Tokenizer) -> Option<Vec<u64>> {
        let encoding = tok.encode(self.text.as_str(), false).ok()?;
        let mut per_event = vec![0u64; self.ends.len()];
        let Some(last) = per_event.len().checked_sub(1) else {
            return Some(per_event);
        };
        for &(start, _) in encoding.get_offsets() {
            let i = self.ends.partition_point(|&end| end <= start);
            per_event[i.min(last)] += 1;
        }
        Some(per_event)
    }
}

fn classify_client_error(e: &hyper_util::client::legacy::Error) -> ErrorKind {
    if e.is_connect() {
        return ErrorKind::Connect;
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(h) = s.downcast_ref::<hyper::Error>() {
            if h.is_parse() || h.is_parse_status() {
                return ErrorKind::MalformedStream;
            }
            if h.is_timeout() {
                return ErrorKind::Timeout;
            }
            return ErrorKind::EarlyClose;
        }
        source = s.source();
    }
    ErrorKind::EarlyClose
}

/// Whether a body error means the connection went away (rather than the
/// bytes breaking HTTP).
fn connection_lost(e: &hyper::Error) -> bool {
    use std::io::ErrorKind as K;
    if e.is_incomplete_message() || e.is_canceled() || e.is_body_write_aborted() {
        return true;
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                K::UnexpectedEof | K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe
            );
        }
        source = s.source();
    }
    false
}

/// An error and its causes on one line.
/// An HTTP/2 stream or connection error (RST_STREAM, GOAWAY), as h2
/// describes it.
fn http2_reset(chain: &str) -> bool {
    chain.contains("stream error") || chain.contains("connection error") || chain.contains("GOAWAY")
}

pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Up to `limit` bytes of a body, as text (for error details).
async fn read_some(mut body: Incoming, limit: usize) -> String {
    let mut out = Vec::new();
    let read = async {
        while out.len() < limit {
            match body.frame().await {
                Some(Ok(f)) => {
                    if let Ok(d) = f.into_data() {
                        out.extend_from_slice(&d);
                    }
                }
                _ => break,
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), read).await;
    out.truncate(limit);
    String::from_utf8_lossy(&out).trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Plan, Tls};
    use serde_json::json;

    fn client(api: Api, stream: bool, continuous: bool, fixed: bool) -> Client {
        let mut e = Plan::for_url("http://127.0.0.1:1/v1/x").endpoint;
        (e.api, e.stream, e.continuous_usage) = (api, stream, continuous);
        let insecure = Tls {
            insecure: true,
            ..Tls::default()
        };
        Client::new(
            &Transport::new(&insecure).unwrap(),
            Arc::new(e),
            fixed,
            None,
            crate::clock::Clock::start(),
            1,
            Arc::default(),
        )
    }

    /// The body as a `serde_json::Value` would have it (sorted keys).
    fn want(api: Api, stream: bool, continuous: bool, fixed: bool, ask: &Ask) -> String {
        let mut body = json!({"model": "default", "max_tokens": ask.max_tokens, "stream": stream});
        if api == Api::Chat {
            let mut messages = Vec::new();
            if let Some((_, p)) = &ask.prefix {
                messages.push(json!({"role": "system", "content": &**p}));
            }
            for (prompt, reply) in &ask.history {
                messages.push(json!({"role": "user", "content": prompt}));
                messages.push(json!({"role": "assistant", "content": reply}));
            }
            messages.push(json!({"role": "user", "content": ask.prompt}));
            body["messages"] = Value::Array(messages);
        } else {
            body["prompt"] = Value::String(ask.full_prompt());
        }
        if stream {
            body["stream_options"] = json!({"include_usage": true});
            if continuous {
                body["stream_options"]["continuous_usage_stats"] = Value::Bool(true);
            }
        }
        if fixed {
            body["ignore_eos"] = Value::Bool(true);
            body["min_tokens"] = json!(ask.max_tokens);
        }
        body.to_string()
    }

    #[test]
    fn openai_bodies_are_byte_for_byte_what_a_json_map_writes() {
        let ask = Ask {
            prompt: "say \"hi\"\n".into(),
            prefix: Some((3, "You are terse.".into())),
            prompt_tokens: None,
            max_tokens: 128,
            conversation: Some((1, 2)),
            history: vec![("first".into(), "reply é".into())],
        };
        let bare = Ask {
            prefix: None,
            history: Vec::new(),
            ..ask.clone()
        };
        for api in [Api::Completions, Api::Chat] {
            for flags in 0..8 {
                let (stream, continuous, fixed) = (flags & 1 != 0, flags & 2 != 0, flags & 4 != 0);
                let c = client(api, stream, continuous, fixed);
                for a in [&ask, &bare] {
                    assert_eq!(
                        c.body(a, "id"),
                        want(api, stream, continuous, fixed, a),
                        "{api:?} {flags}"
                    );
                }
            }
        }
    }
}
