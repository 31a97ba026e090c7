//! One request, from its scheduled time to its last byte: what the
//! per-request JSONL holds and what the statistics are computed from.

use serde::Serialize;

/// Why a request failed. The run goes on; the exit status says whether
/// any phase had errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
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
    pub const ALL: [ErrorKind; 7] = [
        ErrorKind::Connect,
        ErrorKind::Timeout,
        ErrorKind::HttpStatus,
        ErrorKind::MalformedStream,
        ErrorKind::EarlyClose,
        ErrorKind::ServerError,
        ErrorKind::Cancelled,
    ];

    pub fn name(self) -> &'static str {
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
pub struct RequestError {
    pub kind: ErrorKind,
    pub detail: String,
}

/// Output tokens, counted three ways; they should agree.
#[derive(Debug, Clone, Default, Serialize)]
pub struct OutputTokens {
    /// What the server's `usage` said.
    pub usage: Option<u64>,
    /// Token-bearing events (chunks), each counted as the tokens it
    /// carried when the server said, else one.
    pub counted: u64,
    /// The tokenizer's count of the generated text, when one is given.
    pub tokenizer: Option<u64>,
}

impl OutputTokens {
    /// The best figure: usage, else the tokenizer, else the count.
    pub fn best(&self) -> u64 {
        self.usage.or(self.tokenizer).unwrap_or(self.counted)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RequestRecord {
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
    pub usage_prompt_tokens: Option<u64>,
    pub output_tokens: OutputTokens,
    /// Token-bearing events: (ns after `sent_ns`, tokens).
    pub events: Vec<(u64, u64)>,
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
}

impl RequestRecord {
    pub fn ok(&self) -> bool {
        self.error.is_none()
    }

    pub fn ttft_ns(&self) -> Option<u64> {
        self.first_token_ns.map(|t| t.saturating_sub(self.sent_ns))
    }

    pub fn e2e_ns(&self) -> u64 {
        self.done_ns.saturating_sub(self.sent_ns)
    }

    /// Time per output token after the first.
    pub fn tpot_ns(&self) -> Option<u64> {
        let tokens = self.output_tokens.best();
        let (first, last) = (self.first_token_ns?, self.last_token_ns?);
        (tokens > 1).then(|| last.saturating_sub(first) / (tokens - 1))
    }
}
