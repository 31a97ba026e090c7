//! Phase annotations posted to gapscoped (`POST /api/v1/annotations`), so
//! the daemon knows when the load generator starts and ends each phase —
//! the silent phase is when it checks that the GPU returns to idle.
//! Finished requests ride along with the `progress` events (`requests`:
//! id, phase, sent, first token, done, on CLOCK_MONOTONIC), at most
//! `MAX_REQUESTS_PER_POST` a post, for the daemon's traces; a phase's
//! start and end never carry them, so a bad request cannot cost a phase
//! boundary. Posting never delays the run: each post is its own task, and
//! failures are counted and reported once.

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

/// Most finished requests one post carries, and most bytes of them:
/// within gapscoped's 64 KiB body limit however long the phase names.
pub(crate) const MAX_REQUESTS_PER_POST: usize = 400;
const MAX_REQUEST_BYTES_PER_POST: usize = 48 * 1024;
/// Most finished requests waiting for a post (posts come once a second):
/// beyond, they are not annotated (counted).
pub(crate) const MAX_REQUESTS_WAITING: usize = 10_000;

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
    /// Finished requests waiting for the next post, each with its JSON's
    /// length.
    requests: Mutex<Vec<(Value, usize)>>,
    /// Finished requests not annotated: over `MAX_REQUESTS_WAITING`, or
    /// in a post that failed.
    pub requests_unposted: Arc<AtomicU64>,
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
            requests_unposted: Arc::default(),
        }
    }

    /// A request finished: its id and times go with the next post.
    pub(crate) fn request_done(&self, rec: &RequestRecord) {
        let at = |run_ns: u64| self.clock.origin_monotonic_ns + run_ns;
        let mut pending = self
            .requests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if pending.len() >= MAX_REQUESTS_WAITING {
            self.requests_unposted.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mark = json!({
            "id": rec.id,
            "phase": rec.phase,
            "sent_ns": at(rec.sent_ns),
            "first_token_ns": rec.first_token_ns.map(at),
            "done_ns": at(rec.done_ns.max(rec.sent_ns)),
            "ok": rec.ok(),
        });
        let bytes = mark.to_string().len() + 1;
        pending.push((mark, bytes));
    }

    /// Posts every finished request not posted yet, in `progress` events
    /// of `phase` (as many as it takes).
    pub(crate) fn flush_requests(&self, phase: &str, output_tokens: u64) {
        while self.requests.lock().is_ok_and(|r| !r.is_empty()) {
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
        // The oldest waiting requests, with progress events only.
        let requests: Vec<Value> = if event == "progress" {
            let mut waiting = self
                .requests
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            take_for_post(&mut waiting)
        } else {
            Vec::new()
        };
        let carried = requests.len() as u64;
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
        let (posted, failed, warned, unposted) = (
            self.posted.clone(),
            self.failed.clone(),
            self.warned.clone(),
            self.requests_unposted.clone(),
        );
        tokio::spawn(async move {
            match client.post_json(&url, body, Duration::from_secs(2)).await {
                Ok((200..=299, _)) => {
                    posted.fetch_add(1, Ordering::Relaxed);
                }
                outcome => {
                    failed.fetch_add(1, Ordering::Relaxed);
                    unposted.fetch_add(carried, Ordering::Relaxed);
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

/// The oldest waiting requests one post carries: at most
/// `MAX_REQUESTS_PER_POST` and `MAX_REQUEST_BYTES_PER_POST` of them (at
/// least one, whatever its size, so none waits forever).
fn take_for_post(waiting: &mut Vec<(Value, usize)>) -> Vec<Value> {
    let mut bytes = 0;
    let n = waiting
        .iter()
        .take(MAX_REQUESTS_PER_POST)
        .take_while(|(_, len)| {
            bytes += len;
            bytes <= MAX_REQUEST_BYTES_PER_POST
        })
        .count()
        .max(1)
        .min(waiting.len());
    waiting.drain(..n).map(|(mark, _)| mark).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_post_carries_what_fits_and_the_rest_waits() {
        // Long phase names: 48 KiB fills before 400 requests.
        let mark = |k: usize| {
            let v = json!({"id": format!("glg-ffffffff-{k:06}"), "phase": "p".repeat(64),
                           "sent_ns": u64::MAX, "first_token_ns": u64::MAX, "done_ns": u64::MAX, "ok": true});
            let len = v.to_string().len() + 1;
            (v, len)
        };
        let mut waiting: Vec<(Value, usize)> = (0..1000).map(mark).collect();
        let mut posts = Vec::new();
        while !waiting.is_empty() {
            let post = take_for_post(&mut waiting);
            let bytes = Value::Array(post.clone()).to_string().len();
            assert!(bytes <= MAX_REQUEST_BYTES_PER_POST, "{bytes} bytes");
            assert!(!post.is_empty() && post.len() <= MAX_REQUESTS_PER_POST);
            posts.push(post);
        }
        // Every request once, in order.
        let ids: Vec<String> = posts
            .iter()
            .flatten()
            .map(|m| m["id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            ids,
            (0..1000)
                .map(|k| format!("glg-ffffffff-{k:06}"))
                .collect::<Vec<_>>()
        );
        assert!(posts[0].len() < MAX_REQUESTS_PER_POST, "{}", posts[0].len());
        // Short ones: 400 a post.
        let mut short: Vec<(Value, usize)> = (0..500).map(|k| (json!({"id": k}), 10)).collect();
        assert_eq!(take_for_post(&mut short).len(), MAX_REQUESTS_PER_POST);
        assert_eq!(take_for_post(&mut short).len(), 100);
    }
}
