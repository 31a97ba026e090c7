//! From a reply's bytes to what the server generated: text deltas, token
//! counts when the server gives them, the finish reason and `usage`.
//!
//! OpenAI replies (completions and chat, streamed as SSE or whole) are
//! read at fixed places; a templated endpoint names its own JSON pointers.
//! The decoder is fed bytes as they arrive and keeps nothing but the
//! unfinished line or event, so memory stays bounded whatever the reply's
//! length (a non-streamed reply is buffered up to a limit).

use serde_json::Value;

use crate::{
    plan::{Api, Endpoint, Framing},
    sse::SseParser,
};

/// Longest SSE line or NDJSON line accepted, and largest whole reply.
pub(crate) const MAX_EVENT_BYTES: usize = 1 << 20;
pub(crate) const MAX_BODY_BYTES: usize = 16 << 20;

/// Something the server said, in order.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Update {
    /// Generated answer text in this event (may be empty).
    pub text: String,
    /// Generated reasoning text (`reasoning_content` or `reasoning` of a
    /// reasoning model), kept apart from the answer.
    pub reasoning: String,
    /// Tokens in this event when the server says (a cumulative
    /// `usage.completion_tokens` in every chunk); None: count it as one.
    pub tokens: Option<u64>,
    pub finish_reason: Option<String>,
    pub usage_completion: Option<u64>,
    pub usage_prompt: Option<u64>,
    /// `usage.completion_tokens_details.reasoning_tokens`, when given.
    pub usage_reasoning: Option<u64>,
}

impl Update {
    /// Empty again (every field, whatever fields there are), keeping the
    /// strings' capacity.
    fn clear(&mut self) {
        let (mut text, mut reasoning) = (
            std::mem::take(&mut self.text),
            std::mem::take(&mut self.reasoning),
        );
        text.clear();
        reasoning.clear();
        *self = Update {
            text,
            reasoning,
            ..Update::default()
        };
    }
}

/// Why a reply could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DecodeError {
    /// Not what the protocol says: bad JSON, bad UTF-8, an endless line.
    Malformed(String),
    /// The server reported an error inside the stream.
    ServerError(String),
}

/// A JSON pointer (RFC 6901), split and unescaped once.
#[derive(Debug, Clone)]
struct Pointer(Vec<String>);

impl Pointer {
    fn new(p: &str) -> Self {
        Self(
            p.split('/')
                .skip(1)
                .map(|t| t.replace("~1", "/").replace("~0", "~"))
                .collect(),
        )
    }

    fn get<'v>(&self, mut v: &'v Value) -> Option<&'v Value> {
        for token in &self.0 {
            v = match v {
                Value::Object(m) => m.get(token)?,
                Value::Array(a) => a.get(token.parse::<usize>().ok()?)?,
                _ => return None,
            };
        }
        Some(v)
    }
}

/// Where things are in one event (or in the whole reply) of a templated
/// endpoint.
#[derive(Debug, Clone)]
struct Pointers {
    text: Vec<Pointer>,
    finish: Option<Pointer>,
    usage_completion: Option<Pointer>,
}

/// Turns one JSON document (an event, a line, a whole reply) into an
/// update.
struct Reader {
    /// None: the OpenAI shape.
    pointers: Option<Pointers>,
    done_marker: Option<String>,
    /// The server sends a cumulative usage in every chunk (vLLM's
    /// `continuous_usage_stats`, asked for with `--continuous-usage`): each
    /// chunk's tokens are the difference; and a whole reply, the one chunk.
    /// Otherwise a usage that rides on a streamed text chunk is the reply's
    /// total, not that chunk's.
    per_chunk_usage: bool,
    last_cumulative: Option<u64>,
    /// The end-of-stream marker or a finish reason was seen.
    complete: bool,
}

pub(crate) struct Decoder {
    framing: Framing,
    reader: Reader,
    sse: SseParser,
    line: Vec<u8>,
    body: Vec<u8>,
    /// Undecoded tail of a raw text stream (an incomplete UTF-8 sequence).
    raw_tail: Vec<u8>,
    /// The update being read: one for the whole reply, emptied before
    /// each document, so a long stream allocates nothing per chunk.
    scratch: Update,
    /// Whether a stream without a marker or finish reason is complete when
    /// the body ends (templated NDJSON and raw streams have no marker).
    end_is_complete: bool,
}

impl Decoder {
    pub(crate) fn new(endpoint: &Endpoint) -> Self {
        let (framing, pointers, done_marker, end_is_complete) = match endpoint.api {
            Api::Completions | Api::Chat => (
                if endpoint.stream {
                    Framing::Sse
                } else {
                    Framing::Json
                },
                None,
                Some("[DONE]".to_string()),
                false,
            ),
            Api::Template => {
                let framing = endpoint.framing.unwrap_or(Framing::Json);
                (
                    framing,
                    Some(Pointers {
                        text: endpoint
                            .text_pointer
                            .iter()
                            .map(|p| Pointer::new(p))
                            .collect(),
                        finish: endpoint.finish_pointer.as_deref().map(Pointer::new),
                        usage_completion: endpoint.usage_pointer.as_deref().map(Pointer::new),
                    }),
                    endpoint.done_marker.clone(),
                    // Without a marker, the end of the body is the end.
                    endpoint.done_marker.is_none() || framing != Framing::Sse,
                )
            }
        };
        Self {
            framing,
            reader: Reader {
                pointers,
                done_marker,
                // A whole reply is one chunk: its usage is that chunk's.
                per_chunk_usage: endpoint.continuous_usage || framing == Framing::Json,
                last_cumulative: None,
                complete: false,
            },
            sse: SseParser::new(MAX_EVENT_BYTES),
            line: Vec::new(),
            body: Vec::new(),
            raw_tail: Vec::new(),
            scratch: Update::default(),
            end_is_complete,
        }
    }

    /// Decodes the next bytes of the body: each update they complete is
    /// passed to `on_update` as soon as it is read, borrowed (valid during
    /// the call). Updates read before an error in the same bytes have been
    /// passed on when the error is returned.
    pub(crate) fn feed(
        &mut self,
        bytes: &[u8],
        mut on_update: impl FnMut(&Update),
    ) -> Result<(), DecodeError> {
        let (reader, u) = (&mut self.reader, &mut self.scratch);
        match self.framing {
            Framing::Sse => {
                let mut failed = None;
                self.sse
                    .feed(bytes, |_, data| {
                        if failed.is_none() {
                            match reader.read(data, u) {
                                Ok(true) => on_update(u),
                                Ok(false) => {}
                                Err(e) => failed = Some(e),
                            }
                        }
                    })
                    .map_err(|e| DecodeError::Malformed(e.to_string()))?;
                if let Some(e) = failed {
                    return Err(e);
                }
            }
            Framing::Ndjson => {
                let mut rest = bytes;
                while let Some(i) = memchr::memchr(b'\n', rest) {
                    self.line.extend_from_slice(&rest[..i]);
                    rest = &rest[i + 1..];
                    let text = std::str::from_utf8(&self.line)
                        .map_err(|_| DecodeError::Malformed("a line is not valid UTF-8".into()))?;
                    if !text.trim().is_empty() && reader.read(text.trim(), u)? {
                        on_update(u);
                    }
                    self.line.clear();
                }
                if self.line.len() + rest.len() > MAX_EVENT_BYTES {
                    return Err(DecodeError::Malformed(format!(
                        "a line is longer than {MAX_EVENT_BYTES} bytes"
                    )));
                }
                self.line.extend_from_slice(rest);
            }
            Framing::Raw => {
                self.raw_tail.extend_from_slice(bytes);
                let valid = match std::str::from_utf8(&self.raw_tail) {
                    Ok(_) => self.raw_tail.len(),
                    // An incomplete sequence at the end waits for the rest;
                    // an invalid one is an error.
                    Err(e) if e.error_len().is_none() => e.valid_up_to(),
                    Err(_) => {
                        return Err(DecodeError::Malformed("the text is not valid UTF-8".into()));
                    }
                };
                if valid > 0 {
                    u.clear();
                    // Checked just above.
                    u.text
                        .push_str(std::str::from_utf8(&self.raw_tail[..valid]).unwrap_or_default());
                    self.raw_tail.drain(..valid);
                    on_update(u);
                }
            }
            Framing::Json => {
                if self.body.len() + bytes.len() > MAX_BODY_BYTES {
                    return Err(DecodeError::Malformed(format!(
                        "the reply is larger than {MAX_BODY_BYTES} bytes"
                    )));
                }
                self.body.extend_from_slice(bytes);
            }
        }
        Ok(())
    }

    /// The body ended: what was still buffered goes to `on_update`, or an
    /// error says the reply was cut short.
    pub(crate) fn finish(&mut self, mut on_update: impl FnMut(&Update)) -> Result<(), DecodeError> {
        let (reader, u) = (&mut self.reader, &mut self.scratch);
        match self.framing {
            Framing::Json => {
                let body = std::mem::take(&mut self.body);
                let text = std::str::from_utf8(&body)
                    .map_err(|_| DecodeError::Malformed("the reply is not valid UTF-8".into()))?;
                if reader.read(text, u)? {
                    on_update(u);
                }
                reader.complete = true;
            }
            Framing::Ndjson if !self.line.is_empty() => {
                let line = std::mem::take(&mut self.line);
                let text = String::from_utf8(line)
                    .map_err(|_| DecodeError::Malformed("a line is not valid UTF-8".into()))?;
                if reader.read(text.trim(), u)? {
                    on_update(u);
                }
            }
            Framing::Raw if !self.raw_tail.is_empty() => {
                return Err(DecodeError::Malformed(
                    "the text ends inside a UTF-8 character".into(),
                ));
            }
            Framing::Sse if self.sse.partial() && !reader.complete => {
                return Err(DecodeError::Malformed(
                    "the stream ends inside an event".into(),
                ));
            }
            _ => {}
        }
        Ok(())
    }

    /// Whether the reply said it was complete (or, for framings without a
    /// marker, simply ended).
    pub(crate) fn complete(&self) -> bool {
        self.reader.complete || self.end_is_complete
    }
}

impl Reader {
    /// Reads one document into `u` (emptied first); false: it was the
    /// end-of-stream marker, not an update.
    fn read(&mut self, data: &str, u: &mut Update) -> Result<bool, DecodeError> {
        if self.done_marker.as_deref() == Some(data.trim()) {
            self.complete = true;
            return Ok(false);
        }
        let not_json = |e: serde_json::Error| {
            let shown: String = data.chars().take(80).collect();
            DecodeError::Malformed(format!("not JSON ({e}): {shown:?}"))
        };
        u.clear();
        match &self.pointers {
            None => {
                if let Some(err) = crate::openai::read(data, u).map_err(not_json)? {
                    return Err(server_error(&err));
                }
            }
            Some(p) => {
                let v: Value = serde_json::from_str(data).map_err(not_json)?;
                if let Some(err) = v.get("error").filter(|e| !e.is_null()) {
                    return Err(server_error(err));
                }
                for ptr in &p.text {
                    if let Some(t) = ptr.get(&v).and_then(Value::as_str) {
                        u.text.push_str(t);
                    }
                }
                u.finish_reason = p
                    .finish
                    .as_ref()
                    .and_then(|f| f.get(&v))
                    .and_then(Value::as_str)
                    .map(str::to_string);
                u.usage_completion = p
                    .usage_completion
                    .as_ref()
                    .and_then(|f| f.get(&v))
                    .and_then(Value::as_u64);
            }
        }
        // A chunk that carries text and a cumulative usage: the difference
        // is the number of tokens in this chunk.
        if self.per_chunk_usage
            && let Some(total) = u.usage_completion
            && !(u.text.is_empty() && u.reasoning.is_empty())
        {
            u.tokens = Some(total.saturating_sub(self.last_cumulative.unwrap_or(0)));
            self.last_cumulative = Some(total);
        }
        if u.finish_reason.is_some() {
            self.complete = true;
        }
        Ok(true)
    }
}

fn server_error(err: &Value) -> DecodeError {
    let message = err
        .get("message")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| err.to_string());
    DecodeError::ServerError(message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Plan;

    /// Every update `bytes` complete, in order.
    fn feed(d: &mut Decoder, bytes: &[u8]) -> Result<Vec<Update>, DecodeError> {
        let mut all = Vec::new();
        d.feed(bytes, |u| all.push(u.clone()))?;
        Ok(all)
    }

    fn finish(d: &mut Decoder) -> Result<Vec<Update>, DecodeError> {
        let mut all = Vec::new();
        d.finish(|u| all.push(u.clone()))?;
        Ok(all)
    }

    fn endpoint(api: Api, stream: bool) -> Endpoint {
        let mut e = Plan::for_url("http://x/").endpoint;
        e.api = api;
        e.stream = stream;
        e
    }

    #[test]
    fn openai_completions_stream() {
        let mut d = Decoder::new(&endpoint(Api::Completions, true));
        let mut all = feed(&mut d, b"data: {\"choices\":[{\"text\":\" a\",\"finish_reason\":null}]}\n\ndata: {\"choices\":[{\"text\":\" b\",\"finish_reason\":\"length\"}]}\n\n")
            .unwrap()
            .to_vec();
        all.extend(feed(&mut d, b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2}}\n\ndata: [DONE]\n\n").unwrap());
        all.extend(finish(&mut d).unwrap());
        assert!(d.complete());
        assert_eq!(
            all.iter().map(|u| u.text.as_str()).collect::<String>(),
            " a b"
        );
        assert_eq!(all[1].finish_reason.as_deref(), Some("length"));
        assert_eq!(all[2].usage_completion, Some(2));
        assert_eq!(all[2].usage_prompt, Some(5));
    }

    #[test]
    fn chat_stream_with_cumulative_usage_counts_tokens_per_chunk() {
        let mut e = endpoint(Api::Chat, true);
        e.continuous_usage = true;
        let mut d = Decoder::new(&e);
        let u = feed(&mut d, b"data: {\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"ab\"}}],\"usage\":{\"completion_tokens\":2}}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"c\"}}],\"usage\":{\"completion_tokens\":3}}\n\n")
            .unwrap();
        assert_eq!(u[0].text, "");
        assert_eq!((u[1].text.as_str(), u[1].tokens), ("ab", Some(2)));
        assert_eq!((u[2].text.as_str(), u[2].tokens), ("c", Some(1)));
        // Cut before [DONE] or a finish reason: not complete.
        assert!(!d.complete());
        // Without continuous usage, a usage on the last text chunk is the
        // reply's total, not that chunk's.
        let mut d = Decoder::new(&endpoint(Api::Chat, true));
        let u = feed(&mut d, b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"b\"},\"finish_reason\":\"stop\"}],\"usage\":{\"completion_tokens\":7,\"completion_tokens_details\":{\"reasoning_tokens\":4}}}\n\n")
            .unwrap();
        assert_eq!((u[1].tokens, u[1].usage_completion), (None, Some(7)));
        assert_eq!(u[1].usage_reasoning, Some(4));
    }

    #[test]
    fn only_the_first_choice_is_read_and_odd_shapes_are_told() {
        let mut d = Decoder::new(&endpoint(Api::Chat, true));
        let u = feed(&mut d, concat!(
                "data: {\"id\":\"x\",\"choices\":[{\"delta\":{\"content\":\"a\\\"b\\u00e9\"},\"logprobs\":{\"content\":[1,{\"x\":[]}]}},",
                "{\"delta\":{\"content\":\"second\"},\"finish_reason\":\"stop\"}]}\n\n",
                "data: {\"choices\":null,\"usage\":null}\n\n",
                "data: {\"choices\":[{\"delta\":null,\"text\":null,\"finish_reason\":null}]}\n\n",
            ).as_bytes())
            .unwrap()
            .to_vec();
        assert_eq!(u.len(), 3);
        assert_eq!(u[0].text, "a\"bé");
        assert_eq!(u[0].finish_reason, None);
        assert!(!d.complete());
        assert_eq!(u[1], Update::default());
        assert_eq!(u[2], Update::default());
        // The update each event is read into starts empty.
        let u = feed(&mut d, b"data: {\"choices\":[{\"text\":\"c\"}]}\n\n").unwrap();
        assert_eq!(
            u,
            [Update {
                text: "c".into(),
                ..Update::default()
            }]
        );
        // Both reasoning names with the same text: read once.
        let u = feed(&mut d, b"data: {\"choices\":[{\"delta\":{\"reasoning_content\":null,\"reasoning\":\"r\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"reasoning_content\":\"s\",\"reasoning\":\"s\"}}]}\n\n")
            .unwrap();
        assert_eq!(
            (u[0].reasoning.as_str(), u[1].reasoning.as_str()),
            ("r", "s")
        );
        for bad in [
            "data: {\"choices\":{\"text\":\"a\"}}\n\n",
            "data: {\"choices\":[{\"text\":5}]}\n\n",
            "data: [1]\n\n",
            "data: {\"choices\":[]} trailing\n\n",
            "data: {\"error\":{\"message\":\"x\"},\"error\":null}\n\n",
            "data: {\"choices\":[{\"text\":\"a\",\"text\":\"b\"}]}\n\n",
        ] {
            let mut d = Decoder::new(&endpoint(Api::Completions, true));
            assert!(
                matches!(feed(&mut d, bad.as_bytes()), Err(DecodeError::Malformed(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn reasoning_is_read_apart_from_the_answer() {
        let mut d = Decoder::new(&endpoint(Api::Chat, true));
        let u = feed(&mut d, b"data: {\"choices\":[{\"delta\":{\"reasoning_content\":\"hm\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"reasoning\":\" so\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"ok\"}}]}\n\n")
            .unwrap();
        let parts: Vec<(&str, &str)> = u
            .iter()
            .map(|u| (u.reasoning.as_str(), u.text.as_str()))
            .collect();
        assert_eq!(parts, [("hm", ""), (" so", ""), ("", "ok")]);
        let mut d = Decoder::new(&endpoint(Api::Chat, false));
        feed(&mut d, b"{\"choices\":[{\"message\":{\"reasoning_content\":\"think\",\"content\":\"hi\"},\"finish_reason\":\"stop\"}]}").unwrap();
        let u = finish(&mut d).unwrap();
        assert_eq!(
            (u[0].reasoning.as_str(), u[0].text.as_str()),
            ("think", "hi")
        );
    }

    #[test]
    fn errors_in_the_stream_and_garbage_are_told_apart() {
        let mut d = Decoder::new(&endpoint(Api::Completions, true));
        let e = feed(
            &mut d,
            b"data: {\"error\":{\"message\":\"out of memory\"}}\n\n",
        )
        .unwrap_err();
        assert_eq!(e, DecodeError::ServerError("out of memory".into()));
        let mut d = Decoder::new(&endpoint(Api::Completions, true));
        assert!(matches!(
            feed(&mut d, b"data: {not json\n\n"),
            Err(DecodeError::Malformed(_))
        ));
        // The events before a bad one are handed on before the error.
        let mut d = Decoder::new(&endpoint(Api::Completions, true));
        let mut before = Vec::new();
        let e = d.feed(
            b"data: {\"choices\":[{\"text\":\" a\"}]}\n\ndata: {\"choices\":[{\"text\":5}]}\n\ndata: {\"choices\":[{\"text\":\" c\"}]}\n\n",
            |u| before.push(u.text.clone()),
        );
        assert!(matches!(e, Err(DecodeError::Malformed(_))));
        assert_eq!(before, [" a"]);
        let mut d = Decoder::new(&endpoint(Api::Completions, true));
        feed(&mut d, b"data: {\"choi").unwrap();
        assert!(matches!(finish(&mut d), Err(DecodeError::Malformed(_))));
    }

    #[test]
    fn raw_text_keeps_split_characters_whole() {
        let mut e = endpoint(Api::Template, true);
        e.framing = Some(Framing::Raw);
        let mut d = Decoder::new(&e);
        let bytes = "é世".as_bytes();
        let mut text = String::new();
        for b in bytes {
            for u in feed(&mut d, &[*b]).unwrap() {
                text.push_str(&u.text);
            }
        }
        finish(&mut d).unwrap();
        assert_eq!(text, "é世");
        // A whole character, then the first byte of the next: the first
        // goes on at once, the second waits for the rest.
        let mut d = Decoder::new(&e);
        let first = feed(&mut d, b"a\xc3").unwrap();
        assert_eq!(
            first.iter().map(|u| u.text.as_str()).collect::<Vec<_>>(),
            ["a"]
        );
        let rest = feed(&mut d, b"\xa9b").unwrap();
        assert_eq!(
            rest.iter().map(|u| u.text.as_str()).collect::<Vec<_>>(),
            ["éb"]
        );
        finish(&mut d).unwrap();
        assert!(d.complete());
    }

    #[test]
    fn templated_ndjson_and_whole_json_replies() {
        let mut e = endpoint(Api::Template, true);
        e.framing = Some(Framing::Ndjson);
        e.text_pointer = Some("/token/text".into());
        e.usage_pointer = Some("/details/generated_tokens".into());
        let mut d = Decoder::new(&e);
        let u = feed(
            &mut d,
            b"{\"token\":{\"text\":\"x\"}}\n{\"token\":{\"text\":\"y\"}}",
        )
        .unwrap();
        assert_eq!(u.len(), 1);
        let u = finish(&mut d).unwrap();
        assert_eq!(u[0].text, "y");
        let mut d = Decoder::new(&endpoint(Api::Chat, false));
        feed(&mut d, b"{\"choices\":[{\"message\":{\"content\":\"hi\"},\"finish_reason\":\"stop\"}],\"usage\":{\"completion_tokens\":1}}").unwrap();
        let u = finish(&mut d).unwrap();
        assert_eq!((u[0].text.as_str(), u[0].usage_completion), ("hi", Some(1)));
    }
}
