//! What each request asks: the prompt and the output length.
//!
//! Random prompts have an exact token length when a tokenizer is given:
//! they are built from words that are one token each and checked by
//! encoding the result. Without one they are words, about one token each,
//! and the results say the lengths are approximate. ShareGPT files give
//! real prompts (and, with a tokenizer, the original answer's length as
//! the output length); plain files give one prompt per line.
//!
//! A shared prefix (`shared_prefix_tokens`, `prefix_groups`): K prefixes
//! of exactly N tokens (with a tokenizer) are drawn once; each request
//! carries one of them, at random, in front of its own prompt — a system
//! message for the chat API — so a server's prefix cache has the same
//! bytes to find every time.
//!
//! Conversations (`turns` > 1): a conversation's turns are drawn together
//! (random or file prompts one per turn, a ShareGPT conversation's own
//! human turns); the runner sends them in order, each carrying the
//! conversation so far. A turn's whole prompt is the one before it, the
//! server's reply and a blank line, then its own prompt — exactly, so a
//! prefix cache finds every earlier turn.

use std::path::Path;

use rand::{Rng, SeedableRng, rngs::StdRng, seq::SliceRandom};
use rand_distr::{Distribution, LogNormal, Normal};
use tokenizers::Tokenizer;

use crate::{
    error::UsageError,
    plan::{Length, PromptSource, Prompts},
};

/// One request's input.
#[derive(Debug, Clone)]
pub(crate) struct Ask {
    /// The request's own prompt (after the shared prefix, if any).
    pub prompt: String,
    /// The shared prefix this request carries, and its group.
    pub prefix: Option<(u32, std::sync::Arc<str>)>,
    /// The whole prompt's length in tokens (prefix included), when known
    /// exactly.
    pub prompt_tokens: Option<u32>,
    pub max_tokens: u32,
    /// In a conversation: its id and this turn's number (from 1).
    pub conversation: Option<(u64, u32)>,
    /// The turns before this one: (prompt, the server's reply).
    pub history: Vec<(String, String)>,
}

impl Ask {
    /// A prompt of its own: no shared prefix, no conversation yet.
    fn own(prompt: String, prompt_tokens: Option<u32>, max_tokens: u32) -> Ask {
        Ask {
            prompt,
            prefix: None,
            prompt_tokens,
            max_tokens,
            conversation: None,
            history: Vec::new(),
        }
    }
}

/// A conversation's turns, in order (one for single requests).
#[derive(Debug, Clone)]
pub(crate) struct Conversation {
    pub turns: Vec<Ask>,
}

impl Ask {
    /// The prompt as one text: the prefix, then the request's own prompt
    /// (after a blank line unless it starts with whitespace).
    /// In a conversation, the turns before it come first, each its prompt,
    /// the reply and a blank line.
    pub(crate) fn full_prompt(&self) -> String {
        let mut own = String::new();
        for (prompt, reply) in &self.history {
            own.push_str(prompt);
            own.push_str(reply);
            own.push_str("\n\n");
        }
        own.push_str(&self.prompt);
        match &self.prefix {
            None => own,
            Some((_, p)) if own.starts_with(char::is_whitespace) => format!("{p}{own}"),
            Some((_, p)) => format!("{p}\n\n{own}"),
        }
    }
}

/// Words used without a tokenizer: common, short, one token each in most
/// vocabularies.
const WORDS: &[&str] = &[
    "the", "model", "serves", "tokens", "while", "kernel", "waits", "for", "host", "memory",
    "batch", "queue", "graph", "launch", "stream", "thread", "python", "lock", "time", "world",
    "cache", "layer", "head", "value", "input", "output", "answer", "question", "river",
    "mountain", "city", "light", "green", "orange", "power", "energy", "small", "large", "fast",
    "slow", "first", "last", "every", "other", "number", "letter", "story",
];

/// Loads a `tokenizer.json`.
pub(crate) fn load_tokenizer(path: &Path) -> Result<Tokenizer, UsageError> {
    Tokenizer::from_file(path).map_err(|e| {
        UsageError::new(
            format!("cannot load tokenizer {}: {e}", path.display()),
            "give the model's tokenizer.json (Hugging Face tokenizers format)",
        )
    })
}

/// Tokens in `text` as the model counts them (no special tokens added).
pub(crate) fn count_tokens(tok: &Tokenizer, text: &str) -> Option<u32> {
    tok.encode(text, false).ok().map(|e| e.len() as u32)
}

pub(crate) struct PromptGen {
    source: Source,
    tokenizer: Option<Box<Tokenizer>>,
    /// The shared prefixes (empty: none).
    prefixes: Vec<std::sync::Arc<str>>,
    /// Each prefix's tokens, when a random prompt after it adds exactly
    /// its own (checked once per prefix): then a request's count is the
    /// sum, and a long prefix is not encoded again for every request.
    prefix_tokens: Option<Vec<u32>>,
    input: Length,
    output: Length,
    /// Turns per conversation (1: single requests).
    turns: u32,
    conversations: u64,
    rng: StdRng,
}

type PoolTurn = (String, Option<u32>, Option<u32>);

enum Source {
    Random {
        /// Words that are exactly one token each (with a leading space).
        words: Vec<String>,
    },
    /// Conversations of (prompt, its tokens, the original answer's
    /// tokens) — one turn each but for ShareGPT's — in a shuffled order
    /// that repeats.
    Pool {
        items: Vec<Vec<PoolTurn>>,
        next: usize,
        /// One prompt per item (a plain file): a conversation takes
        /// `turns` items in a row.
        lines: bool,
    },
}

impl PromptGen {
    pub(crate) fn new(p: &Prompts, output: Length, seed: u64) -> Result<Self, UsageError> {
        let tokenizer = p.tokenizer.as_deref().map(load_tokenizer).transpose()?;
        let mut rng = StdRng::seed_from_u64(seed ^ 0x005e_ed0f_70c3);
        let words = || match &tokenizer {
            Some(t) => single_token_words(t),
            None => Ok(WORDS.iter().map(|w| format!(" {w}")).collect()),
        };
        // Drawn first, from a stream of their own: the same seed gives the
        // same prefixes whatever the prompts' source.
        let prefixes = if p.shared_prefix_tokens > 0 {
            let words = words()?;
            let mut prefix_rng = StdRng::seed_from_u64(seed ^ 0x0070_2ef1_0000);
            (0..p.prefix_groups)
                .map(|_| {
                    random_prompt(
                        &words,
                        tokenizer.as_ref(),
                        p.shared_prefix_tokens,
                        &mut prefix_rng,
                    )
                    .into()
                })
                .collect()
        } else {
            Vec::new()
        };
        let prefix_tokens = match (&tokenizer, p.source) {
            (Some(t), PromptSource::Random) if !prefixes.is_empty() => {
                let probe = words()?.first().cloned().unwrap_or_default();
                let counts: Option<Vec<u32>> = prefixes
                    .iter()
                    .map(|x: &std::sync::Arc<str>| {
                        let n = count_tokens(t, x)?;
                        (count_tokens(t, &format!("{x}{probe}")) == Some(n + 1)).then_some(n)
                    })
                    .collect();
                counts
            }
            _ => None,
        };
        let source = match p.source {
            PromptSource::Random => Source::Random { words: words()? },
            PromptSource::Sharegpt | PromptSource::File => {
                let path = p.path.as_deref().unwrap_or(Path::new(""));
                let text = std::fs::read_to_string(path).map_err(|e| {
                    UsageError::new(
                        format!("cannot read prompts file {}: {e}", path.display()),
                        "check the path",
                    )
                })?;
                let mut items = if p.source == PromptSource::Sharegpt {
                    sharegpt(&text, path)?
                } else {
                    text.lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty())
                        .map(|l| vec![(l.to_string(), None)])
                        .collect::<Vec<_>>()
                };
                if items.is_empty() {
                    return Err(UsageError::new(
                        format!("prompts file {} holds no prompts", path.display()),
                        "give a file with one prompt per line, or ShareGPT JSON with human turns",
                    ));
                }
                // A plain file's lines make conversations in the file's
                // order (its next lines are its next turns); otherwise the
                // pool is shuffled.
                if p.source != PromptSource::File || p.turns <= 1 {
                    items.shuffle(&mut rng);
                }
                // Only the turns a conversation will send are counted.
                let keep = p.turns.max(1) as usize;
                let items = items
                    .into_iter()
                    .map(|turns| {
                        turns
                            .into_iter()
                            .take(keep)
                            .map(|(prompt, answer)| {
                                let count = |t: &str| {
                                    tokenizer.as_ref().and_then(|tok| count_tokens(tok, t))
                                };
                                let prompt_tokens = count(&prompt);
                                let answer_tokens =
                                    answer.as_deref().and_then(count).filter(|n| *n > 0);
                                (prompt, prompt_tokens, answer_tokens)
                            })
                            .collect()
                    })
                    .collect();
                Source::Pool {
                    items,
                    next: 0,
                    lines: p.source == PromptSource::File,
                }
            }
        };
        Ok(Self {
            source,
            tokenizer: tokenizer.map(Box::new),
            prefixes,
            prefix_tokens,
            input: p.input_tokens,
            output,
            turns: p.turns.max(1),
            conversations: 0,
            rng,
        })
    }

    /// The next conversation: one ask for single requests; else its turns,
    /// the first drawn as a single request is (its shared prefix kept for
    /// every turn), the rest each a prompt of its own.
    pub(crate) fn next_conversation(&mut self) -> Conversation {
        if self.turns == 1 {
            return Conversation {
                turns: vec![self.next_ask()],
            };
        }
        self.conversations += 1;
        let id = self.conversations;
        let turns = self.turns as usize;
        let pool = match &mut self.source {
            Source::Pool { items, next, lines } => {
                let take = if *lines { turns } else { 1 };
                let conversation: Vec<PoolTurn> = (0..take)
                    .flat_map(|i| items[(*next + i) % items.len()].clone())
                    .collect();
                *next += take;
                Some(conversation)
            }
            Source::Random { .. } => None,
        };
        let mut turns = match pool {
            Some(turns) => turns
                .into_iter()
                .map(|(prompt, own, answer)| {
                    let max_tokens = answer.unwrap_or_else(|| sample(self.output, &mut self.rng));
                    Ask::own(prompt, own, max_tokens)
                })
                .collect::<Vec<_>>(),
            None => (0..self.turns).map(|_| self.own_ask()).collect(),
        };
        if let Some(first) = turns.first_mut()
            && !self.prefixes.is_empty()
        {
            self.add_prefix(first);
        }
        let prefix = turns.first().and_then(|t| t.prefix.clone());
        for (k, t) in turns.iter_mut().enumerate() {
            t.conversation = Some((id, k as u32 + 1));
            if k > 0 {
                // Counted when sent, with the conversation before it.
                t.prefix.clone_from(&prefix);
                t.prompt_tokens = None;
            }
        }
        Conversation { turns }
    }

    /// Whether prompt lengths are exact token counts.
    pub(crate) fn exact(&self) -> bool {
        self.tokenizer.is_some()
    }

    /// The prefixes' share of the prompt tokens sent: N / (N + the mean
    /// prompt of its own), for random prompts; None without a prefix or
    /// when the prompts come from a file (their mean is the file's).
    pub(crate) fn prefix_share(&self, p: &crate::plan::Prompts) -> Option<f64> {
        if self.prefixes.is_empty() || !matches!(self.source, Source::Random { .. }) {
            return None;
        }
        let own = match p.input_tokens {
            Length::Fixed(n) => f64::from(n),
            Length::Uniform { min, max } => (f64::from(min) + f64::from(max)) / 2.0,
            Length::Normal { mean, .. } | Length::LogNormal { mean, .. } => mean,
        };
        let n = f64::from(p.shared_prefix_tokens);
        Some(n / (n + own))
    }

    pub(crate) fn next_ask(&mut self) -> Ask {
        let mut ask = self.own_ask();
        if !self.prefixes.is_empty() {
            self.add_prefix(&mut ask);
        }
        ask
    }

    /// An ask without a shared prefix (a pool's next conversation's first
    /// turn).
    fn own_ask(&mut self) -> Ask {
        let max_tokens = sample(self.output, &mut self.rng);
        match &mut self.source {
            Source::Random { words } => {
                let want = sample(self.input, &mut self.rng);
                let prompt = random_prompt(words, self.tokenizer.as_deref(), want, &mut self.rng);
                let own = self
                    .tokenizer
                    .as_deref()
                    .and_then(|t| count_tokens(t, &prompt));
                Ask::own(prompt, own, max_tokens)
            }
            Source::Pool { items, next, .. } => {
                let (prompt, own, answer) = items[*next % items.len()][0].clone();
                *next += 1;
                Ask::own(prompt, own, answer.unwrap_or(max_tokens))
            }
        }
    }

    /// Gives `ask` one of the shared prefixes, at random, and counts the
    /// whole prompt.
    fn add_prefix(&mut self, ask: &mut Ask) {
        {
            let g = self.rng.random_range(0..self.prefixes.len());
            ask.prefix = Some((g as u32, self.prefixes[g].clone()));
            // The whole prompt's count: the sum where the join was checked
            // to add nothing, else the prompt encoded whole.
            ask.prompt_tokens = match (&self.prefix_tokens, ask.prompt_tokens) {
                (Some(counts), Some(own)) => Some(counts[g] + own),
                _ => self
                    .tokenizer
                    .as_deref()
                    .and_then(|t| count_tokens(t, &ask.full_prompt())),
            };
        }
    }
}

/// A length drawn from its distribution (at least 1).
pub(crate) fn sample(l: Length, rng: &mut StdRng) -> u32 {
    match l {
        Length::Fixed(n) => n,
        Length::Uniform { min, max } => rng.random_range(min..=max),
        Length::Normal { mean, stddev, .. } => {
            let v = Normal::new(mean, stddev)
                .map(|d| d.sample(rng))
                .unwrap_or(mean);
            v.round().clamp(1.0, 1e6) as u32
        }
        Length::LogNormal { mean, stddev, .. } => {
            // The underlying normal's parameters from the lengths' own
            // mean and standard deviation.
            let sigma2 = (1.0 + (stddev / mean).powi(2)).ln();
            let v = LogNormal::new(mean.ln() - sigma2 / 2.0, sigma2.sqrt())
                .map(|d| d.sample(rng))
                .unwrap_or(mean);
            v.round().clamp(1.0, 1e6) as u32
        }
    }
}

/// `want` words, adjusted until the tokenizer counts exactly `want` tokens.
fn random_prompt(words: &[String], tok: Option<&Tokenizer>, want: u32, rng: &mut StdRng) -> String {
    let mut chosen: Vec<&str> = (0..want)
        .map(|_| words[rng.random_range(0..words.len())].as_str())
        .collect();
    let Some(tok) = tok else {
        return chosen.concat().trim_start().to_string();
    };
    for _ in 0..16 {
        let text = chosen.concat();
        let have = count_tokens(tok, &text).unwrap_or(want);
        if have == want {
            return text;
        }
        if have > want {
            chosen.truncate(chosen.len().saturating_sub((have - want) as usize).max(1));
        } else {
            for _ in 0..(want - have) {
                chosen.push(words[rng.random_range(0..words.len())].as_str());
            }
        }
    }
    chosen.concat()
}

/// Vocabulary words that encode to exactly one token with a leading space.
fn single_token_words(tok: &Tokenizer) -> Result<Vec<String>, UsageError> {
    let mut vocab: Vec<(String, u32)> = tok.get_vocab(false).into_iter().collect();
    vocab.sort_by_key(|(_, id)| *id);
    let mut words = Vec::new();
    for (_, id) in vocab {
        let Ok(text) = tok.decode(&[id], true) else {
            continue;
        };
        let w = text.trim();
        if w.len() < 2 || w.len() > 12 || !w.chars().all(|c| c.is_ascii_lowercase()) {
            continue;
        }
        let spaced = format!(" {w}");
        if count_tokens(tok, &spaced) == Some(1)
            && count_tokens(tok, &format!("{spaced}{spaced}")) == Some(2)
        {
            words.push(spaced);
        }
        if words.len() >= 4096 {
            break;
        }
    }
    if words.len() < 16 {
        return Err(UsageError::new(
            "the tokenizer has too few plain words to build random prompts of exact length",
            "use prompts from a file (--prompts-file) or a different tokenizer.json",
        ));
    }
    Ok(words)
}

/// ShareGPT JSON: [{"conversations": [{"from": "human", "value": …},
/// {"from": "gpt", "value": …}, …]}, …] → per conversation, its human
/// turns from the first, each with the answer after it. A conversation
/// whose first human turn is empty is left out; later empty turns are
/// skipped.
type SharegptTurns = Vec<(String, Option<String>)>;

fn sharegpt(text: &str, path: &Path) -> Result<Vec<SharegptTurns>, UsageError> {
    let bad = |why: String| {
        UsageError::new(
            format!("{} is not ShareGPT JSON: {why}", path.display()),
            "give a JSON array of {\"conversations\": [{\"from\": \"human\", \"value\": …}, …]}",
        )
    };
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
    let list = v.as_array().ok_or_else(|| bad("not an array".into()))?;
    let mut out = Vec::new();
    for item in list {
        let Some(turns) = item.get("conversations").and_then(|c| c.as_array()) else {
            continue;
        };
        fn from(t: &serde_json::Value) -> &str {
            t.get("from").and_then(|f| f.as_str()).unwrap_or("")
        }
        let value = |t: &serde_json::Value| {
            t.get("value")
                .and_then(|f| f.as_str())
                .unwrap_or("")
                .to_string()
        };
        let human = |t: &serde_json::Value| matches!(from(t), "human" | "user");
        let Some(first) = turns.iter().position(human) else {
            continue;
        };
        if value(&turns[first]).trim().is_empty() {
            continue;
        }
        let conversation: SharegptTurns = (first..turns.len())
            .filter(|&i| human(&turns[i]) && !value(&turns[i]).trim().is_empty())
            .map(|i| {
                let answer = turns
                    .get(i + 1)
                    .filter(|t| matches!(from(t), "gpt" | "assistant"))
                    .map(value);
                (value(&turns[i]), answer)
            })
            .collect();
        out.push(conversation);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Prompts;

    #[test]
    fn lognormal_lengths_have_the_asked_mean_and_spread_and_a_right_tail() {
        let l = Length::LogNormal {
            mean: 300.0,
            stddev: 150.0,
            distribution: crate::plan::LogNormalName::Lognormal,
        };
        let mut rng = StdRng::seed_from_u64(7);
        let v: Vec<f64> = (0..40_000)
            .map(|_| f64::from(sample(l, &mut rng)))
            .collect();
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let sd = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64).sqrt();
        assert!((mean / 300.0 - 1.0).abs() < 0.02, "mean {mean}");
        assert!((sd / 150.0 - 1.0).abs() < 0.05, "stddev {sd}");
        let mut sorted = v.clone();
        sorted.sort_by(f64::total_cmp);
        let median = sorted[sorted.len() / 2];
        assert!(
            median < mean * 0.95,
            "median {median} below the mean {mean}: skewed right"
        );
        assert!(v.iter().all(|x| *x >= 1.0));
    }

    #[test]
    fn lengths_parse_from_workload_files_in_every_form() {
        #[derive(serde::Deserialize)]
        struct T {
            a: Length,
            b: Length,
            c: Length,
            d: Length,
        }
        let t: T = toml::from_str(
            "a = 5\nb = { min = 1, max = 9 }\nc = { mean = 50, stddev = 5 }\n\
             d = { mean = 50, stddev = 25, distribution = \"lognormal\" }\n",
        )
        .unwrap();
        assert_eq!(t.a, Length::Fixed(5));
        assert_eq!(t.b, Length::Uniform { min: 1, max: 9 });
        assert_eq!(
            t.c,
            Length::Normal {
                mean: 50.0,
                stddev: 5.0,
                distribution: None,
            }
        );
        // A misspelt distribution is an error, not a normal.
        assert!(
            toml::from_str::<T>(
                "a = 5\nb = 5\nc = 5\nd = { mean = 50, stddev = 25, distribution = \"lognorml\" }\n"
            )
            .is_err()
        );
        assert!(matches!(
            t.d,
            Length::LogNormal {
                mean: 50.0,
                stddev: 25.0,
                ..
            }
        ));
    }

    #[test]
    fn random_prompts_without_a_tokenizer_have_the_asked_word_count() {
        let mut g = PromptGen::new(&Prompts::default(), Length::Fixed(7), 1).unwrap();
        let a = g.next_ask();
        assert_eq!(a.prompt.split_whitespace().count(), 512);
        assert_eq!(a.max_tokens, 7);
        assert!(!g.exact());
    }

    #[test]
    fn sharegpt_takes_the_first_human_turn_and_its_answer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sg.json");
        std::fs::write(
            &path,
            r#"[{"conversations":[{"from":"human","value":"hi there"},{"from":"gpt","value":"hello"}]},
                {"conversations":[{"from":"gpt","value":"orphan"}]},
                {"id":"no conversations"}]"#,
        )
        .unwrap();
        let p = Prompts {
            source: PromptSource::Sharegpt,
            path: Some(path),
            ..Prompts::default()
        };
        let mut g = PromptGen::new(&p, Length::Fixed(9), 1).unwrap();
        let a = g.next_ask();
        assert_eq!(a.prompt, "hi there");
        // No tokenizer: the answer's length is unknown; the default holds.
        assert_eq!(a.max_tokens, 9);
        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, "{}").unwrap();
        let p = Prompts {
            source: PromptSource::Sharegpt,
            path: Some(bad),
            ..Prompts::default()
        };
        assert!(
            PromptGen::new(&p, Length::Fixed(9), 1)
                .err()
                .unwrap()
                .problem
                .contains("not ShareGPT")
        );
    }
}
