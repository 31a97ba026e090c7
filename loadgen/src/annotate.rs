//! Phase annotations posted to gapscoped (`POST /api/v1/annotations`), so
//! the daemon knows when the load generator starts and ends each phase —
//! the silent phase is when it checks that the GPU returns to idle.
//! Finished requests ride along (`requests`: id, sent, first token, done,
//! on CLOCK_MONOTONIC), at most `MAX_REQUESTS_PER_POST` a post, for the
//! daemon's traces. Posting never delays the run: each post is its own
//! task, and failures are counted and reported once.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use serde_json::{Value, json};

use crate::{
    clock::{Clock, monotonic_ns, unix_ns},
    http::SideClient,
    live::Live,
    plan::PhaseKind,
    record::RequestRecord,
};

/// Most finished requests one post carries (about 50 KiB, under
/// gapscoped's 64 KiB body limit); the posts come once a second, so
/// beyond this many a second the rest are not annotated (counted).
pub(crate) const MAX_REQUESTS_PER_POST: usize = 400;

pub(crate) struct Annotator {
    url: String,
    run_id: String,
    /// The gapscoped service the run loads, when said.
    service: Option<String>,
    client: SideClient,
    pub posted: Arc<AtomicU64>,
    pub failed: Arc<AtomicU64>,
    warned: Arc<AtomicBool>,
    clock: Clock,
    /// Finished requests waiting for the next post.
    requests: Mutex<Vec<Value>>,
    /// Finished requests not annotated: over `MAX_REQUESTS_PER_POST`
    /// between two posts.
    pub requests_unposted: AtomicU64,
}

impl Annotator {
    pub(crate) fn new(
        base: &str,
        client: SideClient,
        run_id: String,
        service: Option<String>,
        clock: Clock,
    ) -> Self {
        Self {
            url: format!("{}/api/v1/annotations", base.trim_end_matches('/')),
            run_id,
            service,
            client,
            posted: Arc::default(),
            failed: Arc::default(),
            warned: Arc::default(),
            clock,
            requests: Mutex::new(Vec::new()),
            requests_unposted: AtomicU64::new(0),
        }
    }

    /// A request finished: its id and times go with the next post.
    pub(crate) fn request_done(&self, rec: &RequestRecord) {
        let at = |run_ns: u64| self.clock.origin_monotonic_ns + run_ns;
        let mut pending = self
            .requests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if pending.len() >= MAX_REQUESTS_PER_POST {
            self.requests_unposted.fetch_add(1, Ordering::Relaxed);
            return;
        }
        pending.push(json!({
            "id": rec.id,
            "sent_ns": at(rec.sent_ns),
            "first_token_ns": rec.first_token_ns.map(at),
            "done_ns": at(rec.done_ns.max(rec.sent_ns)),
            "ok": rec.ok(),
        }));
    }

    /// Posts the finished requests not posted yet, if any, with a
    /// `progress` event of `phase`.
    pub(crate) fn flush_requests(&self, phase: &str, output_tokens: u64) {
        let waiting = self.requests.lock().is_ok_and(|r| !r.is_empty());
        if waiting {
            self.post(phase, None, "progress", output_tokens);
        }
    }

    /// Posts a `progress` event with the tokens counted so far every
    /// `period`, for the phase running then, until aborted.
    pub(crate) async fn progress_every(self: Arc<Self>, period: Duration, live: Arc<Live>) {
        let mut tick = tokio::time::interval(period);
        tick.tick().await;
        loop {
            tick.tick().await;
            let phase = live.phase.lock().map(|p| p.clone()).unwrap_or_default();
            if !phase.is_empty() {
                self.post(
                    &phase,
                    None,
                    "progress",
                    live.tokens.load(Ordering::Relaxed),
                );
            }
        }
    }

    /// Posts `event` ("start", "end" or "progress") of a phase, in the background,
    /// with the output tokens counted so far in the run (gapscoped turns
    /// the difference between a phase's start and end into per-token
    /// figures: kernels and launches per generated token).
    pub(crate) fn post(
        &self,
        phase: &str,
        kind: Option<PhaseKind>,
        event: &str,
        output_tokens: u64,
    ) {
        let mut body = json!({
            "source": "gapscope-loadgen",
            "run_id": self.run_id,
            "phase": phase,
            "kind": kind,
            "event": event,
            "output_tokens": output_tokens,
            "monotonic_ns": monotonic_ns(),
            "unix_ns": unix_ns(),
        });
        if let Some(service) = &self.service {
            body["service"] = json!(service);
        }
        let requests = std::mem::take(
            &mut *self
                .requests
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        if !requests.is_empty() {
            body["requests"] = Value::Array(requests);
        }
        let body = body.to_string();
        let (client, url) = (self.client.clone(), self.url.clone());
        let fix = if client.authenticates() {
            "gapscoped refused the credentials: check --gapscoped-user and GAPSCOPED_PASSWORD"
        } else {
            "gapscoped's web config wants basic auth: give --gapscoped-user USER and the password in GAPSCOPED_PASSWORD"
        };
        let (posted, failed, warned) = (
            self.posted.clone(),
            self.failed.clone(),
            self.warned.clone(),
        );
        tokio::spawn(async move {
            match client.post_json(&url, body, Duration::from_secs(2)).await {
                Ok((200..=299, _)) => {
                    posted.fetch_add(1, Ordering::Relaxed);
                }
                outcome => {
                    failed.fetch_add(1, Ordering::Relaxed);
                    if !warned.swap(true, Ordering::Relaxed) {
                        let why = match outcome {
                            Ok((401, body)) => format!("HTTP 401: {}; {fix}", body.trim()),
                            Ok((status, body)) => format!("HTTP {status}: {}", body.trim()),
                            Err(e) => e,
                        };
                        eprintln!(
                            "gapscope-loadgen: cannot post phase annotations to gapscoped ({why}); the run goes on"
                        );
                    }
                }
            }
        });
    }
}
