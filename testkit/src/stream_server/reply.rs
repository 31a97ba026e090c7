//! One completion reply, as the test server sends it: whole (no
//! streaming), instant (zero delays: every chunk written at once, the
//! benchmark's server) or timed (each chunk when its last token is due,
//! with the failure a `/fail/MODE/` path asks for). Every chunk's time and
//! token count goes to the request's log entry.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt as _, StreamBody};
use hyper::{Response, body::Frame};
use serde_json::{Value, json};

use super::{Body, InFlight, ServerConfig, State, all_at_once, full, monotonic_ns};

/// What the request asked for, read once.
pub(super) struct Reply {
    /// The request's entry in the log (None: not logging).
    index: Option<usize>,
    chat: bool,
    raw: bool,
    pub stream: bool,
    /// The failure to inject ("" for none).
    mode: String,
    tokens: u64,
    /// Of `tokens`, reasoning (chat only).
    reasoning: u64,
    /// Tokens per chunk.
    sizes: Vec<u64>,
    /// `stream_options.include_usage` (and the server sends usage).
    usage: bool,
    /// vLLM's `continuous_usage_stats`: cumulative usage in every chunk.
    continuous: bool,
    prompt_tokens: usize,
}

impl Reply {
    pub(super) fn new(
        cfg: &ServerConfig,
        body: &Value,
        api: &str,
        mode: String,
        index: Option<usize>,
    ) -> Self {
        let chat = api == "/v1/chat/completions";
        let raw = api == "/raw";
        let max_tokens = body["max_tokens"].as_u64().unwrap_or(16).max(1);
        let tokens = if mode == "short" {
            max_tokens - 1
        } else {
            max_tokens
        };
        let option =
            |key: &str| cfg.usage && body["stream_options"][key].as_bool().unwrap_or(false);
        Reply {
            index,
            chat,
            raw,
            stream: body["stream"].as_bool().unwrap_or(false) || raw,
            mode,
            tokens,
            reasoning: if chat {
                u64::from(cfg.reasoning_tokens)
            } else {
                0
            },
            sizes: chunk_sizes(cfg, tokens),
            usage: option("include_usage"),
            continuous: option("continuous_usage_stats"),
            // Words of the prompt, or of every message (a conversation's
            // whole history counts, as a server's usage does).
            prompt_tokens: match body["prompt"].as_str() {
                Some(p) => p.split_whitespace().count(),
                None => body["messages"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|m| m["content"].as_str())
                    .map(|c| c.split_whitespace().count())
                    .sum(),
            },
        }
    }

    /// Zero delays and nothing special: the whole stream can go at once.
    pub(super) fn instant(&self, cfg: &ServerConfig) -> bool {
        self.mode.is_empty()
            && !self.raw
            && cfg.first_token_ms == 0.0
            && cfg.token_ms == 0.0
            && !self.continuous
            && self.reasoning == 0
    }

    fn usage_event(&self) -> String {
        let u = json!({"choices": [], "usage": usage_of(self.prompt_tokens, self.tokens, self.reasoning)});
        format!("data: {u}\n\n")
    }
}

/// Not streamed: one JSON reply once every token is due.
pub(super) async fn whole(s: &State, r: &Reply, guard: InFlight) -> Response<Body> {
    let (tokens, reasoning) = (r.tokens, r.reasoning);
    let start = tokio::time::Instant::now();
    let wait = s.cfg.first_token_ms + s.cfg.token_ms * (tokens.saturating_sub(1)) as f64;
    tokio::time::sleep_until(start + Duration::from_secs_f64(wait / 1e3)).await;
    let text: String = (0..tokens.saturating_sub(reasoning))
        .map(|_| " t")
        .collect();
    let thought: String = (0..tokens.min(reasoning)).map(|_| " t").collect();
    let choice = if r.chat && reasoning > 0 {
        json!({"index": 0, "message": {"role": "assistant", "reasoning_content": thought, "content": text}, "finish_reason": "length"})
    } else if r.chat {
        json!({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"})
    } else {
        json!({"index": 0, "text": text, "finish_reason": "length"})
    };
    let now = monotonic_ns();
    if let Some(i) = r.index {
        let mut log = s.log.lock().unwrap();
        log.requests[i].chunks_ns.push(now);
        log.requests[i].chunk_tokens.push(tokens);
        log.requests[i].done_ns = Some(now);
    }
    drop(guard);
    let mut reply = json!({"choices": [choice]});
    if s.cfg.usage {
        reply["usage"] = usage_of(r.prompt_tokens, tokens, reasoning);
    }
    full(200, reply.to_string())
}

/// Zero delay: every chunk is ready at once, so the reply goes out in as
/// few writes as the connection takes (the benchmark's server).
pub(super) fn instant(s: &State, r: &Reply, guard: InFlight) -> Response<Body> {
    let mut body = Vec::with_capacity(r.tokens as usize * 96);
    let mut sent_tokens = 0;
    for &n in &r.sizes {
        sent_tokens += n;
        let text: String = (0..n).map(|_| " t").collect();
        body.extend(event(
            r.chat,
            &text,
            (sent_tokens == r.tokens).then_some("length"),
        ));
    }
    if r.usage {
        body.extend(r.usage_event().into_bytes());
    }
    body.extend(b"data: [DONE]\n\n");
    if let Some(i) = r.index {
        let now = monotonic_ns();
        let mut log = s.log.lock().unwrap();
        log.requests[i].headers_ns = Some(now);
        log.requests[i].chunks_ns = vec![now; r.sizes.len()];
        log.requests[i].chunk_tokens = r.sizes.clone();
        log.requests[i].done_ns = Some(now);
    }
    drop(guard);
    all_at_once(200, "text/event-stream", body)
}

type Frames = tokio::sync::mpsc::Sender<Result<Frame<Bytes>, std::io::Error>>;

/// Streamed on time: each chunk when its last token is due, from a task
/// of its own that holds the in-flight guard until the stream ends.
pub(super) fn timed(s: Arc<State>, r: Reply, guard: InFlight) -> Response<Body> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(16);
    let content_type = if r.raw {
        "text/plain; charset=utf-8"
    } else {
        "text/event-stream"
    };
    let index = r.index;
    let state = s.clone();
    tokio::spawn(async move {
        let _guard = guard;
        send_chunks(&state, &r, &tx).await;
    });
    let stream =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|f| (f, rx)) });
    if let Some(i) = index {
        s.log.lock().unwrap().requests[i].headers_ns = Some(monotonic_ns());
    }
    Response::builder()
        .status(200)
        .header("content-type", content_type)
        .body(StreamBody::new(stream).boxed())
        .unwrap()
}

/// The timed stream's body: its chunks, the failure, usage and `[DONE]`.
async fn send_chunks(state: &State, r: &Reply, tx: &Frames) {
    let cfg = &state.cfg;
    let start = tokio::time::Instant::now();
    let mut sent_tokens = 0u64;
    let stamp = |n: u64, last: bool| {
        let now = monotonic_ns();
        if let Some(i) = r.index {
            let mut log = state.log.lock().unwrap();
            log.requests[i].chunks_ns.push(now);
            log.requests[i].chunk_tokens.push(n);
            if last {
                log.requests[i].done_ns = Some(now);
            }
        }
    };
    for (c, &n) in r.sizes.iter().enumerate() {
        // A chunk goes when its last token is made: the first token at
        // first_token_ms, each next one token_ms later.
        let due = cfg.first_token_ms + (sent_tokens + n - 1) as f64 * cfg.token_ms;
        if due > 0.0 {
            tokio::time::sleep_until(start + Duration::from_secs_f64(due / 1e3)).await;
        }
        // Reasoning tokens and answer tokens never share a chunk.
        let thinking = sent_tokens < r.reasoning;
        sent_tokens += n;
        let last = sent_tokens == r.tokens;
        for f in frames(r, c, n, sent_tokens, last, thinking) {
            if tx.send(Ok(Frame::data(Bytes::from(f)))).await.is_err() {
                return;
            }
            // Separate writes, so the client sees separate reads.
            if r.mode == "splitutf8" {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        stamp(n, last && r.raw);
        if c + 1 == 2 {
            match r.mode.as_str() {
                "close2" => {
                    let _ = tx.send(Err(std::io::Error::other("cut"))).await;
                    return;
                }
                "stall2" => {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    return;
                }
                _ => {}
            }
        }
    }
    if r.raw || r.mode == "nodone" {
        return;
    }
    if r.usage {
        let _ = tx.send(Ok(Frame::data(Bytes::from(r.usage_event())))).await;
    }
    let _ = tx
        .send(Ok(Frame::data(Bytes::from_static(b"data: [DONE]\n\n"))))
        .await;
    if let Some(i) = r.index {
        state.log.lock().unwrap().requests[i].done_ns = Some(monotonic_ns());
    }
}

/// The writes of chunk `c` (`n` tokens, `sent_tokens` so far with it):
/// usually one event; the failure mode's at chunk 2; UTF-8 cut in three.
fn frames(
    r: &Reply,
    c: usize,
    n: u64,
    sent_tokens: u64,
    last: bool,
    thinking: bool,
) -> Vec<Vec<u8>> {
    let text: String = (0..n).map(|_| " t").collect();
    let finish = if last { Some("length") } else { None };
    match r.mode.as_str() {
        _ if r.raw => vec![text.into_bytes()],
        "malformed2" if c == 2 => vec![b"data: {not json\n\n".to_vec()],
        "errorevent" if c == 2 => {
            vec![b"data: {\"error\": {\"message\": \"boom\"}}\n\n".to_vec()]
        }
        "badutf8" if c == 2 => {
            vec![b"data: {\"choices\":[{\"text\":\"\xff\xfe\"}]}\n\n".to_vec()]
        }
        "hugeline" if c == 2 => vec![
            format!(
                "data: {{\"choices\":[{{\"text\":\"{}\"}}]}}\n\n",
                "x".repeat(2 << 20)
            )
            .into_bytes(),
        ],
        "splitutf8" => {
            let ev = event(r.chat, " é世界", finish);
            // Cut inside the multi-byte characters.
            let cut = ev.iter().position(|b| *b >= 0x80).unwrap_or(1) + 1;
            vec![
                ev[..cut].to_vec(),
                ev[cut..cut + 2].to_vec(),
                ev[cut + 2..].to_vec(),
            ]
        }
        "nodone" => vec![event(r.chat, &text, None)],
        _ if thinking => vec![reasoning_event(&text)],
        _ => {
            let mut ev = event(r.chat, &text, finish);
            if r.continuous {
                // vLLM's continuous usage: cumulative counts in every chunk.
                let mut v: Value = serde_json::from_slice(&ev[6..ev.len() - 2]).unwrap();
                v["usage"] =
                    json!({"prompt_tokens": r.prompt_tokens, "completion_tokens": sent_tokens});
                ev = format!("data: {v}\n\n").into_bytes();
            }
            vec![ev]
        }
    }
}

/// How many tokens each chunk of a `tokens`-token reply carries: the
/// pattern cycled (or `tokens_per_chunk`), the last chunk cut to fit, and
/// no chunk across the end of the reasoning.
fn chunk_sizes(cfg: &ServerConfig, tokens: u64) -> Vec<u64> {
    let pattern: Vec<u64> = if cfg.chunk_pattern.is_empty() {
        vec![u64::from(cfg.tokens_per_chunk.max(1))]
    } else {
        cfg.chunk_pattern
            .iter()
            .map(|&k| u64::from(k.max(1)))
            .collect()
    };
    let reasoning = u64::from(cfg.reasoning_tokens);
    let mut sizes = Vec::new();
    let mut sent = 0;
    while sent < tokens {
        let mut n = pattern[sizes.len() % pattern.len()].min(tokens - sent);
        if sent < reasoning {
            n = n.min(reasoning - sent);
        }
        sizes.push(n);
        sent += n;
    }
    sizes
}

/// `usage`, with OpenAI's reasoning split when the reply reasoned.
fn usage_of(prompt: usize, tokens: u64, reasoning: u64) -> Value {
    let mut u = json!({"prompt_tokens": prompt, "completion_tokens": tokens});
    if reasoning > 0 {
        u["completion_tokens_details"] = json!({"reasoning_tokens": reasoning.min(tokens)});
    }
    u
}

fn reasoning_event(text: &str) -> Vec<u8> {
    let choice = json!({"index": 0, "delta": {"reasoning_content": text}, "finish_reason": null});
    format!(
        "data: {}\n\n",
        json!({"object": "chunk", "choices": [choice]})
    )
    .into_bytes()
}

fn event(chat: bool, text: &str, finish: Option<&str>) -> Vec<u8> {
    let choice = if chat {
        json!({"index": 0, "delta": {"content": text}, "finish_reason": finish})
    } else {
        json!({"index": 0, "text": text, "finish_reason": finish})
    };
    format!(
        "data: {}\n\n",
        json!({"object": "chunk", "choices": [choice]})
    )
    .into_bytes()
}
