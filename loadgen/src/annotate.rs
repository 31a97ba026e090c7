//! Phase annotations posted to gapscoped (`POST /api/v1/annotations`), so
//! the daemon knows when the load generator starts and ends each phase —
//! the silent phase is when it checks that the GPU returns to idle.
//! Posting never delays the run: each post is its own task, and failures
//! are counted and reported once.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use serde_json::json;

use crate::{
    clock::{Clock, monotonic_ns, unix_ns},
    http::SideClient,
    plan::PhaseKind,
};

pub struct Annotator {
    url: String,
    run_id: String,
    client: SideClient,
    pub posted: Arc<AtomicU64>,
    pub failed: Arc<AtomicU64>,
    warned: Arc<AtomicBool>,
    _clock: Clock,
}

impl Annotator {
    pub fn new(base: &str, run_id: String, clock: Clock) -> Self {
        Self {
            url: format!("{}/api/v1/annotations", base.trim_end_matches('/')),
            run_id,
            client: SideClient::default(),
            posted: Arc::default(),
            failed: Arc::default(),
            warned: Arc::default(),
            _clock: clock,
        }
    }

    /// Posts `event` ("start" or "end") of a phase, in the background.
    pub fn post(&self, phase: &str, kind: PhaseKind, event: &str) {
        let body = json!({
            "source": "gapscope-loadgen",
            "run_id": self.run_id,
            "phase": phase,
            "kind": kind,
            "event": event,
            "monotonic_ns": monotonic_ns(),
            "unix_ns": unix_ns(),
        })
        .to_string();
        let (client, url) = (self.client.clone(), self.url.clone());
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
