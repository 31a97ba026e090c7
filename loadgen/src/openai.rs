//! One OpenAI completion or chat chunk (or whole reply), read straight
//! into an `Update`.
//!
//! Invariant: nothing is built in between. Text is appended to the
//! update's strings as the parser meets it (borrowed from the event where
//! it needs no unescaping, in the order the chunk gives it), only the
//! first element of `choices` is read (a streamed reply with several
//! choices sends each as the first of its own chunk: they are not told
//! apart), and no struct of optional strings is moved around per chunk:
//! at 128 chunks a reply, that copying was a fifth of the client's CPU
//! time. As serde's derived readers did, a key given twice is an error;
//! `choices`, `delta` and `message` may also be null.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use crate::decode::Update;

/// Reads `data` into `u` (which must be empty); the server's `error`
/// object, when the chunk carries one that is not null.
pub(crate) fn read(data: &str, u: &mut Update) -> Result<Option<Value>, serde_json::Error> {
    let mut d = serde_json::Deserializer::from_str(data);
    let error = Chunk(u).deserialize(&mut d)?;
    d.end()?;
    Ok(error)
}

/// The top level: `choices`, `usage`, `error`.
struct Chunk<'u>(&'u mut Update);

impl<'de> DeserializeSeed<'de> for Chunk<'_> {
    type Value = Option<Value>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Chunk<'_> {
    type Value = Option<Value>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an OpenAI chunk (a JSON object)")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        const KEYS: &[&str] = &["choices", "usage", "error"];
        let mut error = None;
        let mut seen = Seen::default();
        while let Some(k) = map.next_key_seed(Key(KEYS))? {
            seen.first(k, KEYS)?;
            match k {
                0 => map.next_value_seed(Choices(&mut *self.0))?,
                1 => {
                    if let Some(usage) = map.next_value::<Option<Usage>>()? {
                        self.0.usage_completion = usage.completion_tokens;
                        self.0.usage_prompt = usage.prompt_tokens;
                        self.0.usage_reasoning = usage
                            .completion_tokens_details
                            .and_then(|d| d.reasoning_tokens);
                    }
                }
                2 => error = map.next_value::<Option<Value>>()?.filter(|e| !e.is_null()),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(error)
    }
}

/// `choices`: the first one is read, the others (`n` > 1) skipped; null
/// is no choice.
struct Choices<'u>(&'u mut Update);

impl<'de> DeserializeSeed<'de> for Choices<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Choices<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of choices")
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<(), S::Error> {
        seq.next_element_seed(Choice(self.0))?;
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(())
    }
}

/// One choice: `text` (completions), `delta` (streamed chat), `message`
/// (a whole chat reply), `finish_reason`.
struct Choice<'u>(&'u mut Update);

impl<'de> DeserializeSeed<'de> for Choice<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Choice<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a choice (a JSON object)")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        const KEYS: &[&str] = &["text", "delta", "message", "finish_reason"];
        let u = self.0;
        let mut seen = Seen::default();
        while let Some(k) = map.next_key_seed(Key(KEYS))? {
            seen.first(k, KEYS)?;
            match k {
                0 => {
                    map.next_value_seed(Append(&mut u.text))?;
                }
                1 | 2 => map.next_value_seed(Message(&mut *u))?,
                3 => u.finish_reason = map.next_value()?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

/// A chat message or delta: `content`, and reasoning text under either
/// name (`reasoning_content`: DeepSeek, vLLM; `reasoning`: newer vLLM,
/// OpenRouter). Null is an empty message.
struct Message<'u>(&'u mut Update);

impl<'de> DeserializeSeed<'de> for Message<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Message<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a message (a JSON object)")
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        const KEYS: &[&str] = &["content", "reasoning_content", "reasoning"];
        let u = self.0;
        let mut seen = Seen::default();
        // Servers that send both reasoning names send the same text twice:
        // the first that carries text is read, the other skipped.
        let mut reasoned = false;
        while let Some(k) = map.next_key_seed(Key(KEYS))? {
            seen.first(k, KEYS)?;
            match k {
                0 => {
                    map.next_value_seed(Append(&mut u.text))?;
                }
                1 | 2 if !reasoned => reasoned = map.next_value_seed(Append(&mut u.reasoning))?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

/// A string value appended to a buffer (true), or null (false).
struct Append<'s>(&'s mut String);

impl<'de> DeserializeSeed<'de> for Append<'_> {
    type Value = bool;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Append<'_> {
    type Value = bool;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string or null")
    }
    fn visit_str<E>(self, v: &str) -> Result<bool, E> {
        self.0.push_str(v);
        Ok(true)
    }
    fn visit_unit<E>(self) -> Result<bool, E> {
        Ok(false)
    }
}

/// The keys of one object read so far: a key given twice is an error, as
/// serde's derived readers make it.
#[derive(Default)]
struct Seen(u32);

impl Seen {
    fn first<E: de::Error>(&mut self, key: usize, names: &'static [&'static str]) -> Result<(), E> {
        let Some(name) = names.get(key) else {
            return Ok(()); // a key not read: skipped, however often
        };
        if self.0 & 1 << key != 0 {
            return Err(E::duplicate_field(name));
        }
        self.0 |= 1 << key;
        Ok(())
    }
}

/// An object key, as its index in a list of the names wanted
/// (`usize::MAX`: another key, to be skipped). Keys are compared where
/// they lie, never copied.
#[derive(Clone, Copy)]
struct Key(&'static [&'static str]);

impl<'de> DeserializeSeed<'de> for Key {
    type Value = usize;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<usize, D::Error> {
        d.deserialize_identifier(self)
    }
}

impl Visitor<'_> for Key {
    type Value = usize;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<usize, E> {
        Ok(self.0.iter().position(|k| *k == v).unwrap_or(usize::MAX))
    }
}

#[derive(serde::Deserialize)]
struct Usage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens_details: Option<CompletionDetails>,
}

#[derive(serde::Deserialize)]
struct CompletionDetails {
    reasoning_tokens: Option<u64>,
}
