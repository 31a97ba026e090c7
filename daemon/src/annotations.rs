//! Phase annotations from the load generator (`POST /api/v1/annotations`):
//! when each phase of a run started and ended, on CLOCK_MONOTONIC like
//! every other time in gapscoped. The GPU idle check and the explain
//! report use them to know which stretch was meant to be silent. An
//! annotation may carry the requests that finished since the last one
//! (`requests`: id, sent, first token, done), kept for traces.

use std::collections::{BTreeMap, VecDeque};

use serde::Serialize;
use serde_json::Value;

/// Most annotations kept.
const CAPACITY: usize = 10_000;
/// Most requests kept (the oldest go first), and most one annotation may
/// carry (the HTTP server's 64 KiB body limit holds fewer: gapscope-loadgen
/// keeps its posts under 48 KiB).
pub const REQUESTS_KEPT: usize = 200_000;
const MAX_REQUESTS_PER_ANNOTATION: usize = 1_000;

/// One request the load generator finished: its `x-request-id`, the
/// phase it ran in (else the annotation's), and when it was sent, its
/// first token came and it ended (CLOCK_MONOTONIC), with the run and
/// service of the annotation that carried it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RequestMark {
    pub id: String,
    pub run_id: String,
    pub phase: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    pub sent_ns: u64,
    pub first_token_ns: Option<u64>,
    pub done_ns: u64,
    pub ok: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Annotation {
    pub source: String,
    pub run_id: String,
    pub phase: String,
    pub kind: String,
    /// "start" or "end".
    pub event: String,
    pub monotonic_ns: u64,
    pub unix_ns: Option<u64>,
    /// Output tokens the load generator had counted when it posted this
    /// (cumulative over its run), for the per-token figures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_tokens: Option<u64>,
    /// The service the run loads, when the load generator said
    /// (`--gapscoped-service`): its tokens count for that service only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

#[derive(Default)]
pub struct Annotations {
    list: VecDeque<Annotation>,
    /// (event) → annotations received.
    pub received: BTreeMap<String, u64>,
    /// (phase, kind) of phases started and not yet ended.
    pub active: BTreeMap<(String, String), String>,
    /// Output tokens the load generator reported, summed over its runs
    /// (the increase of each run's cumulative count).
    pub output_tokens: u64,
    /// run id → the last cumulative count seen (the newest runs).
    run_tokens: VecDeque<(String, u64)>,
    /// Finished requests, oldest first, and how many were let go.
    requests: VecDeque<RequestMark>,
    pub requests_evicted: u64,
}

/// Runs whose token counts are remembered.
const RUNS: usize = 64;

/// A label-safe short string.
fn label(v: &Value, key: &str, required: bool) -> Result<String, String> {
    match v.get(key) {
        Some(Value::String(s))
            if !s.is_empty()
                && s.len() <= 64
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c)) =>
        {
            Ok(s.clone())
        }
        None | Some(Value::Null) if !required => Ok(String::new()),
        Some(other) => Err(format!(
            "{key} = {other} is not 1-64 characters of A-Z a-z 0-9 _ - ."
        )),
        None => Err(format!("{key} is missing")),
    }
}

/// The `requests` an annotation carries, checked whole: Err names the
/// first bad one.
fn requests(v: &Value, a: &Annotation) -> Result<Vec<RequestMark>, String> {
    let list = match v.get("requests") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(list)) if list.len() <= MAX_REQUESTS_PER_ANNOTATION => list,
        Some(Value::Array(list)) => {
            return Err(format!(
                "requests holds {} requests, over the {MAX_REQUESTS_PER_ANNOTATION} one annotation may carry",
                list.len()
            ));
        }
        Some(_) => return Err("requests is not a list".into()),
    };
    list.iter()
        .enumerate()
        .map(|(i, r)| {
            let ns = |key: &str| -> Result<Option<u64>, String> {
                match r.get(key) {
                    None | Some(Value::Null) => Ok(None),
                    Some(t) => t.as_u64().map(Some).ok_or_else(|| {
                        format!("requests[{i}].{key} is not a whole number of nanoseconds")
                    }),
                }
            };
            let need = |key: &str| ns(key)?.ok_or_else(|| format!("requests[{i}].{key} is missing"));
            let (sent_ns, done_ns) = (need("sent_ns")?, need("done_ns")?);
            let first_token_ns = ns("first_token_ns")?;
            if done_ns < sent_ns || first_token_ns.is_some_and(|t| t < sent_ns || t > done_ns) {
                return Err(format!(
                    "requests[{i}]: its times are not in order (sent_ns <= first_token_ns <= done_ns)"
                ));
            }
            Ok(RequestMark {
                id: label(r, "id", true).map_err(|e| format!("requests[{i}].{e}"))?,
                run_id: a.run_id.clone(),
                phase: match label(r, "phase", false) {
                    Ok(p) if !p.is_empty() => p,
                    Ok(_) => a.phase.clone(),
                    Err(e) => return Err(format!("requests[{i}].{e}")),
                },
                service: a.service.clone(),
                sent_ns,
                first_token_ns,
                done_ns,
                ok: r.get("ok").and_then(Value::as_bool).unwrap_or(true),
            })
        })
        .collect()
}

impl Annotations {
    /// Adds one annotation from a JSON body; `now_ns` stands in for a
    /// missing `monotonic_ns`.
    pub fn add(&mut self, body: &[u8], now_ns: u64) -> Result<Annotation, String> {
        let v: Value =
            serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
        if !v.is_object() {
            return Err("the body is not a JSON object".into());
        }
        let event = label(&v, "event", true)?;
        if !matches!(event.as_str(), "start" | "end" | "progress") {
            return Err(format!(
                "event = {event:?} is not \"start\", \"end\" or \"progress\""
            ));
        }
        let a = Annotation {
            source: label(&v, "source", false)?,
            run_id: label(&v, "run_id", false)?,
            phase: label(&v, "phase", true)?,
            kind: label(&v, "kind", false)?,
            event,
            monotonic_ns: match v.get("monotonic_ns") {
                None | Some(Value::Null) => now_ns,
                Some(t) => t
                    .as_u64()
                    .ok_or("monotonic_ns is not a whole number of nanoseconds")?,
            },
            unix_ns: v.get("unix_ns").and_then(Value::as_u64),
            output_tokens: match v.get("output_tokens") {
                None | Some(Value::Null) => None,
                Some(t) => Some(
                    t.as_u64()
                        .ok_or("output_tokens is not a whole number of tokens")?,
                ),
            },
            service: match v.get("service") {
                None | Some(Value::Null) => None,
                Some(_) => Some(label(&v, "service", true)?),
            },
        };
        let requests = requests(&v, &a)?;
        *self.received.entry(a.event.clone()).or_default() += 1;
        for r in requests {
            if self.requests.len() >= REQUESTS_KEPT {
                self.requests.pop_front();
                self.requests_evicted += 1;
            }
            self.requests.push_back(r);
        }
        if let Some(t) = a.output_tokens {
            match self.run_tokens.iter_mut().find(|(run, _)| *run == a.run_id) {
                Some((_, last)) => {
                    self.output_tokens += t.saturating_sub(*last);
                    *last = (*last).max(t);
                }
                None => {
                    // A run first seen mid-way counts from here.
                    if self.run_tokens.len() >= RUNS {
                        self.run_tokens.pop_front();
                    }
                    self.run_tokens.push_back((a.run_id.clone(), t));
                }
            }
        }
        if a.event == "progress" {
            // Only carries the token count: not a phase boundary.
            return Ok(a);
        }
        let key = (a.phase.clone(), a.kind.clone());
        if a.event == "start" {
            // Bounded: a client that never ends its phases cannot grow it.
            if self.active.len() < 16 {
                self.active.insert(key, a.run_id.clone());
            }
        } else {
            self.active.remove(&key);
        }
        if self.list.len() >= CAPACITY {
            self.list.pop_front();
        }
        self.list.push_back(a.clone());
        Ok(a)
    }

    /// The requests kept that overlap `[start_ns, end_ns]`, for `service`
    /// (or for any, when their run did not say).
    pub fn requests_between(&self, start_ns: u64, end_ns: u64, service: &str) -> Vec<RequestMark> {
        self.requests
            .iter()
            .filter(|r| {
                r.done_ns >= start_ns
                    && r.sent_ns <= end_ns
                    && r.service.as_deref().is_none_or(|s| s == service)
            })
            .cloned()
            .collect()
    }

    /// Every annotation kept, in time order (by `monotonic_ns`; a load
    /// generator posts in the background, so they may arrive out of order
    /// on a busy machine: a phase's end after the next phase's start).
    pub fn list(&self) -> Vec<Annotation> {
        let mut all: Vec<Annotation> = self.list.iter().cloned().collect();
        all.sort_by_key(|a| a.monotonic_ns);
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_and_ends_track_the_active_phase() {
        let mut a = Annotations::default();
        a.add(
            br#"{"phase":"cooldown","kind":"silence","event":"start","monotonic_ns":5}"#,
            1,
        )
        .unwrap();
        assert_eq!(a.active.len(), 1);
        a.add(br#"{"phase":"cooldown","kind":"silence","event":"end"}"#, 9)
            .unwrap();
        assert!(a.active.is_empty());
        for (run, tokens) in [("r1", 0), ("r1", 40), ("r2", 500), ("r1", 100), ("r2", 520)] {
            let body = format!(
                r#"{{"phase":"p","event":"end","run_id":"{run}","output_tokens":{tokens}}}"#
            );
            a.add(body.as_bytes(), 0).unwrap();
        }
        assert_eq!(a.output_tokens, 100 + 20);
        // A missing monotonic_ns is the time of arrival; the list is in
        // time order whatever the order of arrival.
        let list = a.list();
        let end = list
            .iter()
            .find(|x| x.phase == "cooldown" && x.event == "end");
        assert_eq!(end.map(|x| x.monotonic_ns), Some(9));
        assert!(
            list.windows(2)
                .all(|w| w[0].monotonic_ns <= w[1].monotonic_ns)
        );
        assert_eq!(list.last().map(|x| x.monotonic_ns), Some(9));
        // Requests ride along, checked whole.
        a.add(
            br#"{"phase":"p","event":"progress","run_id":"r1","requests":[
                {"id":"glg-1-000001","sent_ns":10,"first_token_ns":12,"done_ns":20,"ok":true},
                {"id":"glg-1-000002","phase":"stress","sent_ns":15,"done_ns":40,"ok":false}]}"#,
            0,
        )
        .unwrap();
        let got = a.requests_between(30, 50, "svc");
        assert_eq!(got.len(), 1);
        assert_eq!(
            (got[0].id.as_str(), got[0].run_id.as_str(), got[0].ok),
            ("glg-1-000002", "r1", false)
        );
        // The phase it ran in, else the annotation's.
        let all = a.requests_between(0, 100, "svc");
        let phases: Vec<&str> = all.iter().map(|r| r.phase.as_str()).collect();
        assert_eq!(phases, ["p", "stress"]);
        // More than one annotation may carry is refused, whole.
        let entry = |k: usize| format!(r#"{{"id":"glg-1-{k:06}","sent_ns":1,"done_ns":2}}"#);
        let body = |n: usize| {
            let list: Vec<String> = (0..n).map(entry).collect();
            format!(
                r#"{{"phase":"p","event":"progress","requests":[{}]}}"#,
                list.join(",")
            )
        };
        let kept = a.requests_between(0, 100, "svc").len();
        a.add(body(MAX_REQUESTS_PER_ANNOTATION).as_bytes(), 0)
            .unwrap();
        let e = a
            .add(body(MAX_REQUESTS_PER_ANNOTATION + 1).as_bytes(), 0)
            .unwrap_err();
        assert!(e.contains("over the 1000"), "{e}");
        assert_eq!(
            a.requests_between(0, 100, "svc").len(),
            kept + MAX_REQUESTS_PER_ANNOTATION
        );
        for (body, says) in [
            (&b"nope"[..], "not JSON"),
            (
                br#"{"phase":"a","event":"progress","requests":{"id":"x"}}"#,
                "not a list",
            ),
            (
                br#"{"phase":"a","event":"progress","requests":[{"id":"x","sent_ns":5}]}"#,
                "requests[0].done_ns is missing",
            ),
            (
                br#"{"phase":"a","event":"progress","requests":[{"id":"x","sent_ns":5,"done_ns":4}]}"#,
                "not in order",
            ),
            (
                br#"{"phase":"a","event":"progress","requests":[{"id":"a b","sent_ns":1,"done_ns":4}]}"#,
                "requests[0].id",
            ),
            (br#"[1]"#, "not a JSON object"),
            (br#"{"phase":"a"}"#, "event is missing"),
            (br#"{"phase":"a","event":"pause"}"#, "is not"),
            (br#"{"phase":"a b","event":"start"}"#, "is not 1-64"),
            (
                br#"{"phase":"a","event":"start","monotonic_ns":-1}"#,
                "whole number",
            ),
            (
                br#"{"phase":"a","event":"end","output_tokens":"many"}"#,
                "output_tokens",
            ),
        ] {
            let e = a.add(body, 0).unwrap_err();
            assert!(e.contains(says), "{e}");
        }
    }
}
