//! An incremental server-sent events parser (the WHATWG event-stream
//! format): bytes in, as the network delivers them, complete events out.
//!
//! It works on bytes and decodes UTF-8 only once an event is complete, so
//! a multi-byte character split across two network chunks is whole again
//! when it is decoded. Lines may end in `\n`, `\r\n` or `\r`; `data:`
//! lines of one event are joined with `\n`; comments (`:`) are skipped. A
//! line longer than the limit is an error rather than unbounded memory.

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SseError {
    LineTooLong(usize),
    NotUtf8,
}

impl std::fmt::Display for SseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SseError::LineTooLong(n) => write!(f, "an event-stream line is longer than {n} bytes"),
            SseError::NotUtf8 => write!(f, "an event is not valid UTF-8"),
        }
    }
}

pub(crate) struct SseParser {
    /// The unfinished line carried over from the previous chunk.
    line: Vec<u8>,
    event: EventState,
    /// The previous chunk ended in `\r`: a `\n` starting the next one
    /// belongs to the same line ending.
    after_cr: bool,
}

/// The event being assembled from its lines.
struct EventState {
    data: Vec<u8>,
    kind: Vec<u8>,
    has_data: bool,
    max_line: usize,
}

impl SseParser {
    pub(crate) fn new(max_line: usize) -> Self {
        Self {
            line: Vec::new(),
            event: EventState {
                data: Vec::new(),
                kind: Vec::new(),
                has_data: false,
                max_line,
            },
            after_cr: false,
        }
    }

    /// Feeds bytes; every event they complete is passed to `on_event` as
    /// (event type, data), borrowed: nothing is allocated per event. A line
    /// that lies whole inside `bytes` is read where it is, not copied.
    pub(crate) fn feed(
        &mut self,
        mut bytes: &[u8],
        mut on_event: impl FnMut(&str, &str),
    ) -> Result<(), SseError> {
        if self.after_cr && bytes.first() == Some(&b'\n') {
            bytes = &bytes[1..];
        }
        self.after_cr = false;
        while let Some(end) = memchr::memchr2(b'\n', b'\r', bytes) {
            if self.line.is_empty() {
                self.event.line(&bytes[..end], &mut on_event)?;
            } else {
                self.push(&bytes[..end])?;
                self.event.line(&self.line, &mut on_event)?;
                // Cleared, not replaced: the buffer keeps its capacity.
                self.line.clear();
            }
            let mut next = end + 1;
            if bytes[end] == b'\r' {
                if next < bytes.len() {
                    if bytes[next] == b'\n' {
                        next += 1;
                    }
                } else {
                    self.after_cr = true;
                }
            }
            bytes = &bytes[next..];
        }
        self.push(bytes)
    }

    /// True when bytes of an unfinished event are buffered (a stream that
    /// ends now was cut in the middle of an event).
    pub(crate) fn partial(&self) -> bool {
        !self.line.is_empty() || self.event.has_data
    }

    fn push(&mut self, bytes: &[u8]) -> Result<(), SseError> {
        if self.line.len() + bytes.len() > self.event.max_line {
            return Err(SseError::LineTooLong(self.event.max_line));
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }
}

impl EventState {
    /// One complete line: a field, a comment, or the blank line that
    /// dispatches the event.
    fn line(&mut self, line: &[u8], on_event: &mut impl FnMut(&str, &str)) -> Result<(), SseError> {
        if line.len() > self.max_line {
            return Err(SseError::LineTooLong(self.max_line));
        }
        if line.is_empty() {
            if self.has_data {
                let d = std::str::from_utf8(&self.data).map_err(|_| SseError::NotUtf8)?;
                let k = std::str::from_utf8(&self.kind).map_err(|_| SseError::NotUtf8)?;
                on_event(k, d);
            }
            self.data.clear();
            self.kind.clear();
            self.has_data = false;
            return Ok(());
        }
        if line[0] == b':' {
            return Ok(());
        }
        let (field, value) = match memchr::memchr(b':', line) {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &[][..]),
        };
        match field {
            b"data" => {
                if self.has_data {
                    self.data.push(b'\n');
                }
                if self.data.len() + value.len() > self.max_line {
                    return Err(SseError::LineTooLong(self.max_line));
                }
                self.data.extend_from_slice(value);
                self.has_data = true;
            }
            b"event" => {
                self.kind.clear();
                self.kind.extend_from_slice(value);
            }
            _ => {} // id, retry and unknown fields do not matter here
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Event {
        kind: String,
        data: String,
    }

    fn parse_in_pieces(input: &[u8], piece: usize) -> Result<Vec<Event>, SseError> {
        let mut p = SseParser::new(1 << 20);
        let mut out = Vec::new();
        for chunk in input.chunks(piece) {
            p.feed(chunk, |kind, data| {
                out.push(Event {
                    kind: kind.into(),
                    data: data.into(),
                });
            })?;
        }
        Ok(out)
    }

    #[test]
    fn events_survive_any_split_including_inside_a_character() {
        let input = "data: {\"text\": \"héllo 世界\"}\r\n\r\n: comment\n\nevent: x\ndata: a\ndata: b\r\rdata: [DONE]\n\n".as_bytes();
        for piece in 1..input.len() {
            let events = parse_in_pieces(input, piece).unwrap();
            assert_eq!(events.len(), 3, "piece {piece}");
            assert_eq!(events[0].data, "{\"text\": \"héllo 世界\"}");
            assert_eq!(
                events[1],
                Event {
                    kind: "x".into(),
                    data: "a\nb".into()
                }
            );
            assert_eq!(events[2].data, "[DONE]");
        }
    }

    #[test]
    fn bad_bytes_and_endless_lines_are_errors() {
        assert_eq!(
            parse_in_pieces(b"data: \xff\xfe\n\n", 3),
            Err(SseError::NotUtf8)
        );
        let mut p = SseParser::new(16);
        assert_eq!(
            p.feed(&[b'a'; 17], |_, _| {}),
            Err(SseError::LineTooLong(16))
        );
        let mut p = SseParser::new(64);
        p.feed(b"data: cut", |_, _| {}).unwrap();
        assert!(p.partial());
    }
}
