//! One request, from its scheduled time to its last byte: what the
//! per-request JSONL holds and what the statistics are computed from.

use serde::Serialize;

/// Why a request failed. The run goes on; the exit status says whether
/// any phase had errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ErrorKind {
    /// No connection: refused, unreachable, connect timeout.
    Connect,
    /// No reply, or no next chunk, in time.
    Timeout,
    /// The server answered with a status other than 200.
    HttpStatus,
    /// The reply broke its protocol: bad JSON, bad UTF-8, an endless line.
    MalformedStream,
    /// The connection closed before the reply said it was complete.
    EarlyClose,
    /// The server sent an error inside the stream.
    ServerError,
    /// Stopped by Ctrl-C.
    Cancelled,
}

impl ErrorKind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::Timeout => "timeout",
            ErrorKind::HttpStatus => "http_status",
            ErrorKind::MalformedStream => "malformed_stream",
            ErrorKind::EarlyClose => "early_close",
            ErrorKind::ServerError => "server_error",
            ErrorKind::Cancelled => "cancelled",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct RequestError {
    pub kind: ErrorKind,
    pub detail: String,
}

/// Output tokens, counted three ways; they should agree.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct OutputTokens {
    /// What the server's `usage` said.
    pub usage: Option<u64>,
    /// Token-bearing events (chunks), each counted as the tokens it
    /// carried when the server said, else one.
    pub counted: u64,
    /// The tokenizer's count of the generated text, when one is given.
    pub tokenizer: Option<u64>,
    /// Of `best()`, the tokens of reasoning (`reasoning_content` /
    /// `reasoning` deltas), by the same provenance; the rest is the answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<u64>,
    /// The server's own split: `usage.completion_tokens_details
    /// .reasoning_tokens`, which `reasoning` takes when given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage_reasoning: Option<u64>,
}

/// Where a request's output token count came from, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum TokenSource {
    /// The server's `usage.completion_tokens`.
    Usage,
    /// The given tokenizer's count of the generated text.
    Tokenizer,
    /// Token-bearing chunks, one token each unless the server said
    /// (approximate).
    Chunks,
}

impl TokenSource {
    pub(crate) fn name(self) -> &'static str {
        match self {
            TokenSource::Usage => "usage",
            TokenSource::Tokenizer => "tokenizer",
            TokenSource::Chunks => "chunks",
        }
    }
}

impl OutputTokens {
    /// The best figure: usage, else the tokenizer, else the count.
    pub(crate) fn best(&self) -> u64 {
        self.usage.or(self.tokenizer).unwrap_or(self.counted)
    }

    /// Which of the three `best()` is.
    pub(crate) fn source(&self) -> TokenSource {
        match (self.usage, self.tokenizer) {
            (Some(_), _) => TokenSource::Usage,
            (None, Some(_)) => TokenSource::Tokenizer,
            (None, None) => TokenSource::Chunks,
        }
    }
}

/// Splits `total` over `weights` in proportion, in whole tokens that sum
/// to `total` exactly (largest remainder; ties to the earlier event). With
/// weights that already sum to `total`, each keeps its own.
pub(crate) fn apportion(weights: &[u64], total: u64) -> Vec<u64> {
    let sum: u64 = weights.iter().sum();
    if weights.is_empty() {
        return Vec::new();
    }
    if sum == total {
        return weights.to_vec();
    }
    // Zero weights everywhere: spread evenly.
    let (w, sum): (Vec<u128>, u128) = if sum == 0 {
        (vec![1; weights.len()], weights.len() as u128)
    } else {
        (
            weights.iter().map(|&x| u128::from(x)).collect(),
            u128::from(sum),
        )
    };
    let total = u128::from(total);
    let mut out: Vec<u64> = w.iter().map(|x| (x * total / sum) as u64).collect();
    let mut left = total as u64 - out.iter().sum::<u64>();
    let mut order: Vec<usize> = (0..w.len()).collect();
    // Largest remainder first; the sort is stable, so ties keep their order.
    order.sort_by_key(|&i| std::cmp::Reverse(w[i] * total % sum));
    for i in order {
        if left == 0 {
            break;
        }
        out[i] += 1;
        left -= 1;
    }
    out
}

/// One token-bearing event of a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) struct TokenEvent {
    /// ns after `sent_ns`.
    pub at_ns: u64,
    /// Tokens it carried: exact when the server said (cumulative usage),
    /// else its share of the request's best count.
    pub tokens: u64,
    /// A reasoning delta (`reasoning_content` / `reasoning`), not answer.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub reasoning: bool,
    /// The answer part of a chunk whose reasoning part is the event
    /// before: the same chunk, not a chunk of its own (no ITL between).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub continues: bool,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct RequestRecord {
    /// The `x-request-id` sent.
    pub id: String,
    pub phase: String,
    #[serde(skip)]
    pub phase_index: usize,
    /// Run-clock times (ns since the run started). Open loop: when the
    /// request was due.
    pub scheduled_ns: Option<u64>,
    /// Open loop with `max_concurrency`: how long the request waited for a
    /// free slot.
    pub queue_ns: Option<u64>,
    pub sent_ns: u64,
    pub headers_ns: Option<u64>,
    pub first_token_ns: Option<u64>,
    pub last_token_ns: Option<u64>,
    pub done_ns: u64,
    pub status: Option<u16>,
    pub error: Option<RequestError>,
    pub finish_reason: Option<String>,
    pub max_tokens: u32,
    /// The prompt's tokens: ours (exact with a tokenizer) and the server's.
    pub prompt_tokens: Option<u32>,
    /// The shared prefix it carried (`--prefix-groups`), by index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_group: Option<u32>,
    pub usage_prompt_tokens: Option<u64>,
    pub output_tokens: OutputTokens,
    /// Token-bearing events, in arrival order. Once the request is done
    /// their tokens sum to `output_tokens.best()` (`settle_tokens`).
    /// Written by `write_jsonl`, by hand, last on the line: at a hundred
    /// events a request, serde's work per field was an eighth of the
    /// client's CPU.
    #[serde(skip)]
    pub events: Vec<TokenEvent>,
    /// The first reasoning token and the first answer token (run clock),
    /// for replies that stream both.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_reasoning_ns: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_answer_ns: Option<u64>,
    /// Token-bearing events received: chunks with text. Role-only and
    /// usage-only chunks are not counted.
    pub chunks: u64,
    /// A fixed output length was asked for: was it produced?
    pub length_honoured: Option<bool>,
    /// Sent a second time: the first attempt's kept-alive connection was
    /// closed by the server before any reply (latencies count from the
    /// first attempt).
    #[serde(default)]
    pub resent: u32,
    /// The HTTP version the reply came in ("1.1", or "2" where ALPN chose
    /// h2), once headers arrived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_version: Option<&'static str>,
    /// In a multi-turn conversation: its id and this turn (from 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn: Option<u32>,
    /// The reply's answer text, for the conversation's next turn (not
    /// written out).
    #[serde(skip)]
    pub reply: Option<String>,
}

impl RequestRecord {
    /// Appends the record's line of `requests.jsonl` to `out`: every
    /// serialized field, then `events` (the same JSON as `TokenEvent`'s
    /// derived form), then a newline.
    /// On an error `out` is as it was.
    pub(crate) fn write_jsonl(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
        let start = out.len();
        if let Err(e) = serde_json::to_writer(&mut *out, self) {
            out.truncate(start);
            return Err(e);
        }
        // The record is a JSON object with fields (`id` always): reopen
        // it for the events.
        debug_assert!(out.ends_with(b"}") && out.len() > start + 2);
        out.pop();
        out.extend_from_slice(b",\"events\":[");
        let mut n = itoa::Buffer::new();
        for (i, e) in self.events.iter().enumerate() {
            // Every field named: a new one fails to build here rather than
            // going missing from the file.
            let TokenEvent {
                at_ns,
                tokens,
                reasoning,
                continues,
            } = *e;
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"at_ns\":");
            out.extend_from_slice(n.format(at_ns).as_bytes());
            out.extend_from_slice(b",\"tokens\":");
            out.extend_from_slice(n.format(tokens).as_bytes());
            if reasoning {
                out.extend_from_slice(b",\"reasoning\":true");
            }
            if continues {
                out.extend_from_slice(b",\"continues\":true");
            }
            out.push(b'}');
        }
        out.extend_from_slice(b"]}\n");
        Ok(())
    }

    pub(crate) fn ok(&self) -> bool {
        self.error.is_none()
    }

    pub(crate) fn ttft_ns(&self) -> Option<u64> {
        self.first_token_ns.map(|t| t.saturating_sub(self.sent_ns))
    }

    pub(crate) fn e2e_ns(&self) -> u64 {
        self.done_ns.saturating_sub(self.sent_ns)
    }

    /// Gives the request's best output count to its events, where they
    /// arrived: each event's weight is the tokens it carried (as the
    /// server said, else one per chunk, or the tokenizer's count of its
    /// text when `weights` are given), scaled so the events sum to
    /// `output_tokens.best()`. Reasoning tokens are those that fell on
    /// reasoning events. Call it once `done_ns` is set.
    pub(crate) fn settle_tokens(&mut self, weights: Option<&[u64]>) {
        let own: Vec<u64> = match weights {
            Some(w) if w.len() == self.events.len() => w.to_vec(),
            _ => self.events.iter().map(|e| e.tokens).collect(),
        };
        let best = self.output_tokens.best();
        let split = self
            .output_tokens
            .usage_reasoning
            .filter(|r| *r <= best && self.events.iter().any(|e| e.reasoning));
        match split {
            // The server said how many were reasoning: each part gets its
            // own share, spread over its own events.
            Some(reasoning) => {
                for (part, total) in [(true, reasoning), (false, best - reasoning)] {
                    let (index, w): (Vec<usize>, Vec<u64>) = self
                        .events
                        .iter()
                        .enumerate()
                        .filter(|(_, e)| e.reasoning == part)
                        .map(|(i, _)| (i, own[i]))
                        .unzip();
                    for (i, k) in index.into_iter().zip(apportion(&w, total)) {
                        self.events[i].tokens = k;
                    }
                }
            }
            None => {
                for (e, k) in self.events.iter_mut().zip(apportion(&own, best)) {
                    e.tokens = k;
                }
            }
        }
        // A reply with tokens but no text (tool calls, an empty answer):
        // its tokens arrived when it ended.
        if self.events.is_empty() && best > 0 {
            self.events.push(TokenEvent {
                at_ns: self.done_ns.saturating_sub(self.sent_ns),
                tokens: best,
                reasoning: false,
                continues: false,
            });
        }
        if self.events.iter().any(|e| e.reasoning) {
            self.output_tokens.reasoning = Some(
                self.events
                    .iter()
                    .filter(|e| e.reasoning)
                    .map(|e| e.tokens)
                    .sum(),
            );
        }
    }

    /// Time to the first reasoning token / the first answer token.
    pub(crate) fn ttft_reasoning_ns(&self) -> Option<u64> {
        self.first_reasoning_ns
            .map(|t| t.saturating_sub(self.sent_ns))
    }

    pub(crate) fn ttft_answer_ns(&self) -> Option<u64> {
        self.first_answer_ns.map(|t| t.saturating_sub(self.sent_ns))
    }

    /// Time per output token after the first.
    pub(crate) fn tpot_ns(&self) -> Option<u64> {
        let tokens = self.output_tokens.best();
        let (first, last) = (self.first_token_ns?, self.last_token_ns?);
        (tokens > 1).then(|| last.saturating_sub(first) / (tokens - 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jsonl_line_is_the_record_with_its_events() {
        let ev = |at_ns, tokens, reasoning, continues| TokenEvent {
            at_ns,
            tokens,
            reasoning,
            continues,
        };
        let mut rec = RequestRecord {
            id: "glg-\"quoted\"-1".into(),
            phase: "c".into(),
            phase_index: 0,
            scheduled_ns: None,
            queue_ns: Some(7),
            sent_ns: 1,
            headers_ns: Some(2),
            first_token_ns: Some(3),
            last_token_ns: Some(4),
            done_ns: u64::MAX,
            status: Some(200),
            error: None,
            finish_reason: Some("length".into()),
            max_tokens: 4,
            prompt_tokens: None,
            prefix_group: None,
            usage_prompt_tokens: Some(16),
            output_tokens: OutputTokens::default(),
            events: vec![
                ev(0, 1, true, false),
                ev(10, 0, false, true),
                ev(u64::MAX, u64::MAX, false, false),
            ],
            first_reasoning_ns: None,
            first_answer_ns: None,
            chunks: 2,
            length_honoured: Some(false),
            resent: 0,
            http_version: Some("1.1"),
            conversation: None,
            turn: None,
            reply: None,
        };
        for events in [rec.events.clone(), Vec::new()] {
            rec.events = events;
            let mut line = b"left alone\n".to_vec();
            rec.write_jsonl(&mut line).unwrap();
            let line = std::str::from_utf8(&line).unwrap();
            let line = line.strip_prefix("left alone\n").unwrap();
            assert_eq!(line.matches('\n').count(), 1);
            assert!(line.ends_with("}\n"));
            let got: serde_json::Value = serde_json::from_str(line).unwrap();
            let mut want = serde_json::to_value(&rec).unwrap();
            want["events"] = serde_json::to_value(&rec.events).unwrap();
            assert_eq!(got, want);
        }
    }

    #[test]
    fn apportion_keeps_the_total_and_the_shape() {
        assert_eq!(apportion(&[1, 1, 1], 9), vec![3, 3, 3]);
        assert_eq!(apportion(&[2, 1, 3], 6), vec![2, 1, 3]);
        assert_eq!(apportion(&[1, 1, 1], 4), vec![2, 1, 1]);
        assert_eq!(apportion(&[1, 1, 1, 1], 2).iter().sum::<u64>(), 2);
        assert_eq!(apportion(&[0, 0], 3), vec![2, 1]);
        assert_eq!(apportion(&[], 3), Vec::<u64>::new());
        assert_eq!(apportion(&[5, 1], 0), vec![0, 0]);
    }
}
