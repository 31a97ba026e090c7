//! Output tokens are counted as tokens, not chunks, and placed where they
//! arrived; both inter-token latencies are exact against the server's own
//! timing; reasoning and answer are told apart; the tokens reach gapscoped
//! as they arrive. The test server knows the truth: how many tokens each
//! chunk carried and when it handed each chunk over.

mod common;

use std::collections::HashMap;

use common::*;
use serde_json::Value;

/// A word-level tokenizer: every whitespace-separated word is one token,
/// and the test server's tokens are each the word "t".
const TOKENIZER: &str = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],"normalizer":null,
  "pre_tokenizer":{"type":"Whitespace"},"post_processor":null,"decoder":null,
  "model":{"type":"WordLevel","unk_token":"[UNK]","vocab":{"[UNK]":0,"t":1,"alpha":2,"bravo":3,"charlie":4,"delta":5,
  "echo":6,"foxtrot":7,"golf":8,"hotel":9,"india":10,"juliet":11,"kilo":12,"lima":13,"mike":14,"november":15,"oscar":16,
  "papa":17,"quebec":18,"romeo":19,"sierra":20,"tango":21}}}"#;

/// 20 tokens in chunks of 1, 2, 3, 4, 1, 2, 3, 4: eight chunks.
const TOKENS: u64 = 20;
const CHUNKS: u64 = 8;

fn server(usage: bool, reasoning: u32) -> StreamServer {
    StreamServer::start(ServerConfig {
        token_ms: 2.0,
        chunk_pattern: vec![1, 2, 3, 4],
        usage,
        reasoning_tokens: reasoning,
        ..ServerConfig::default()
    })
}

/// A closed loop, then a silence long enough for every reply to end, so
/// the two windows hold every token the run received.
fn run(server: &StreamServer, path: &str, extra: &[&str]) -> Run {
    let url = server.url(path);
    let mut args = vec![
        "--url",
        url.as_str(),
        "--phase",
        "s=closed:3:2s",
        "--phase",
        "quiet=silence:1s",
        "--max-tokens",
        "20",
    ];
    args.extend_from_slice(extra);
    let run = loadgen(&args);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    run
}

fn tokenizer_file(dir: &tempfile::TempDir) -> String {
    let path = dir.path().join("tokenizer.json");
    std::fs::write(&path, TOKENIZER).unwrap();
    path.to_str().unwrap().to_string()
}

/// Tokens the two windows counted, from their rates.
fn tokens_in_windows(run: &Run) -> f64 {
    ["s", "quiet"]
        .iter()
        .map(|n| {
            let p = run.phase(n);
            p["throughput"]["output_tokens_per_s"].as_f64().unwrap()
                * p["duration_s"].as_f64().unwrap()
        })
        .sum()
}

fn events(r: &Value) -> Vec<(u64, u64)> {
    r["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["at_ns"].as_u64().unwrap(), e["tokens"].as_u64().unwrap()))
        .collect()
}

/// Every request's tokens, the windows' and the per-second series'
/// totals, all equal to what the server sent.
fn assert_totals(run: &Run, source: &str) {
    let requests = run.requests();
    assert!(requests.len() >= 3);
    let n = requests.len() as u64;
    for r in &requests {
        let e = events(r);
        assert_eq!(e.len() as u64, CHUNKS, "{r}");
        assert_eq!(e.iter().map(|x| x.1).sum::<u64>(), TOKENS, "{r}");
        assert_eq!(r["chunks"], CHUNKS);
    }
    let p = run.phase("s");
    assert_eq!(p["output_tokens"].as_u64(), Some(TOKENS * n), "{p}");
    assert_eq!(p["output_token_sources"][source].as_u64(), Some(n), "{p}");
    let counted = tokens_in_windows(run);
    assert!(
        (counted - (TOKENS * n) as f64).abs() < 1e-6,
        "{counted} tokens in the windows, {} sent",
        TOKENS * n
    );
    let per_second: u64 = run.results()["timeseries"]["per_second"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s[1].as_u64().unwrap())
        .sum();
    assert_eq!(per_second, TOKENS * n);
    // Tokens per second are 2.5 × chunks per second, not equal to them.
    let t = &p["throughput"];
    let ratio = t["output_tokens_per_s"].as_f64().unwrap() / t["chunks_per_s"].as_f64().unwrap();
    assert!(ratio > 2.0, "tokens/chunks {ratio}: {t}");
}

#[test]
fn usage_counts_tokens_of_multi_token_chunks() {
    let _g = serial();
    let server = server(true, 0);
    let run = run(&server, "/v1/completions", &[]);
    assert_totals(&run, "usage");
    let p = run.phase("s");
    assert_eq!(p["tokens_approximate"], false);
    // Without the chunks' own counts, the 20 tokens are spread evenly over
    // the 8 chunks, where they arrived.
    for r in run.requests() {
        let k: Vec<u64> = events(&r).iter().map(|e| e.1).collect();
        assert_eq!(k, [3, 3, 3, 3, 2, 2, 2, 2]);
    }
}

/// With a tokenizer each chunk gets its own tokens: exactly what the
/// server put in it, request by request; and both ITLs match the server's
/// gaps within what the run itself measured as delivery jitter.
#[test]
fn a_tokenizer_places_every_token_in_its_chunk_and_itls_are_exact() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let tok = tokenizer_file(&dir);
    let server = server(false, 0);
    let run = run(&server, "/v1/completions", &["--tokenizer", &tok]);
    assert_totals(&run, "tokenizer");
    let log = server.log.lock().unwrap();
    let by_id: HashMap<String, _> = log
        .requests
        .iter()
        .map(|s| (s.request_id.clone().unwrap(), s))
        .collect();
    let (mut client_span, mut server_span, mut jitter) = (0u64, 0u64, 0u64);
    for r in run.requests() {
        let seen = by_id[r["id"].as_str().unwrap()];
        let k: Vec<u64> = events(&r).iter().map(|e| e.1).collect();
        assert_eq!(k, seen.chunk_tokens, "{r}");
        let c = r["last_token_ns"].as_u64().unwrap() - r["first_token_ns"].as_u64().unwrap();
        let s = seen.chunks_ns.last().unwrap() - seen.chunks_ns[0];
        client_span += c;
        server_span += s;
        jitter = jitter.max(c.abs_diff(s));
    }
    let n = run.requests().len() as u64;
    let p = run.phase("s");
    let lat = |k: &str, f: &str| p["latency"][k][f].as_f64().unwrap();
    // Per chunk: one gap between each two of the 8 chunks.
    assert_eq!(lat("itl_chunk", "count") as u64, (CHUNKS - 1) * n);
    // Per token: every token after the first chunk's one.
    assert_eq!(lat("itl_token", "count") as u64, (TOKENS - 1) * n);
    // The means are the spans over the gaps, the client's differing from
    // the server's only by delivery jitter (and the histogram's 0.1 %).
    for (key, gaps) in [("itl_chunk", CHUNKS - 1), ("itl_token", TOKENS - 1)] {
        let mean_server = server_span as f64 / (gaps * n) as f64 / 1e9;
        let bound = jitter as f64 / gaps as f64 / 1e9 + 0.002 * mean_server + 1e-6;
        let mean = lat(key, "mean");
        assert!(
            (mean - mean_server).abs() <= bound,
            "{key}: mean {mean} s vs the server's {mean_server} s (bound {bound}; spans {client_span} vs {server_span})"
        );
    }
    // The server makes a token every 2 ms and sends a chunk when its last
    // token is made: 2 ms per token, 5 ms per chunk on average.
    assert!((lat("itl_token", "mean") - 0.002).abs() < 0.001, "{p}");
    assert!(
        lat("itl_chunk", "mean") > 2.0 * lat("itl_token", "mean"),
        "{p}"
    );
}

#[test]
fn without_usage_or_tokenizer_the_count_is_chunks_and_says_so() {
    let _g = serial();
    let server = server(false, 0);
    let run = run(&server, "/v1/completions", &[]);
    let p = run.phase("s");
    let n = run.requests().len() as u64;
    assert_eq!(p["tokens_approximate"], true);
    assert_eq!(p["output_token_sources"]["chunks"].as_u64(), Some(n));
    assert_eq!(p["output_tokens"].as_u64(), Some(CHUNKS * n));
    assert!(
        run.stdout.contains("s: approximate: counted chunks"),
        "{}",
        run.stdout
    );
}

/// A reasoning model's reply: 6 reasoning tokens (chunks of 1, 2, 3) then
/// 14 answer tokens; counted apart, and the first reasoning token comes
/// before the first answer token by what the server took.
#[test]
fn reasoning_and_answer_are_counted_and_timed_apart() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let tok = tokenizer_file(&dir);
    let server = server(true, 6);
    let run = run(
        &server,
        "/v1/chat/completions",
        &["--api", "chat", "--tokenizer", &tok],
    );
    assert_totals(&run, "usage");
    let n = run.requests().len() as u64;
    let p = run.phase("s");
    assert_eq!(p["reasoning_tokens"].as_u64(), Some(6 * n), "{p}");
    for r in run.requests() {
        assert_eq!(r["output_tokens"]["reasoning"], 6, "{r}");
        let reasoning: Vec<bool> = r["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["reasoning"] == true)
            .collect();
        assert_eq!(
            reasoning,
            [true, true, true, false, false, false, false, false]
        );
    }
    let lat = |k: &str| p["latency"][k]["count"].as_u64().unwrap();
    assert_eq!((lat("ttft_reasoning"), lat("ttft_answer")), (n, n));
    // The answer's first chunk (4 tokens) is made 4 tokens after the
    // reasoning's last: at least 8 ms after the first reasoning token.
    let gap = p["latency"]["ttft_answer"]["mean"].as_f64().unwrap()
        - p["latency"]["ttft_reasoning"]["mean"].as_f64().unwrap();
    assert!(
        gap >= 0.008,
        "{gap} s between the first reasoning and answer tokens"
    );
    assert!(
        run.stdout.contains(&format!(
            "s: reasoning {} of {} output tokens",
            6 * n,
            TOKENS * n
        )),
        "{}",
        run.stdout
    );
}

/// Whole (non-streamed) replies of a reasoning model: the reasoning split
/// comes from `usage.completion_tokens_details`, and reasoning and answer
/// of the one reply are one chunk, not two.
#[test]
fn a_whole_reasoning_reply_takes_the_servers_split() {
    let _g = serial();
    let server = server(true, 6);
    let run = run(
        &server,
        "/v1/chat/completions",
        &["--api", "chat", "--no-stream"],
    );
    let n = run.requests().len() as u64;
    let p = run.phase("s");
    assert_eq!(p["output_tokens"].as_u64(), Some(TOKENS * n), "{p}");
    assert_eq!(p["reasoning_tokens"].as_u64(), Some(6 * n), "{p}");
    for r in run.requests() {
        assert_eq!(r["chunks"], 1, "{r}");
        assert_eq!(r["output_tokens"]["reasoning"], 6, "{r}");
    }
    // One chunk per reply: no inter-chunk gap at all.
    assert!(p["latency"]["itl_chunk"].is_null(), "{p}");
}

/// vLLM's continuous usage gives each chunk its own count: every chunk's
/// tokens are what the server put in it, without a tokenizer.
#[test]
fn continuous_usage_counts_each_chunk_exactly() {
    let _g = serial();
    let server = server(true, 0);
    let run = run(&server, "/v1/completions", &["--continuous-usage"]);
    assert_totals(&run, "usage");
    let log = server.log.lock().unwrap();
    for r in run.requests() {
        let seen = log
            .requests
            .iter()
            .find(|s| s.request_id.as_deref() == r["id"].as_str())
            .unwrap();
        let k: Vec<u64> = events(&r).iter().map(|e| e.1).collect();
        assert_eq!(k, seen.chunk_tokens, "{r}");
    }
}

/// Goodput counts tokens as throughput does: when every request meets the
/// SLO they are equal, never above.
#[test]
fn goodput_counts_tokens_as_throughput_does() {
    let _g = serial();
    let server = server(true, 0);
    let run = run(&server, "/v1/completions", &["--slo-e2e-ms", "60000"]);
    let p = run.phase("s");
    assert_eq!(
        p["goodput"]["output_tokens_per_s"], p["throughput"]["output_tokens_per_s"],
        "{p}"
    );
    let strict = loadgen(&[
        "--url",
        &server.url("/v1/completions"),
        "--phase",
        "s=closed:3:1s",
        "--max-tokens",
        "20",
        "--slo-ttft-ms",
        "0.001",
    ]);
    let p = strict.phase("s");
    assert_eq!(p["goodput"]["output_tokens_per_s"], 0.0, "{p}");
}

/// gapscoped learns the tokens as they arrive: a progress annotation at
/// least once a second, never decreasing, and the run's every token by the
/// end of the silence.
#[test]
fn annotations_carry_tokens_as_they_arrive() {
    let _g = serial();
    let server = server(true, 0);
    let run = run(
        &server,
        "/v1/completions",
        &["--gapscoped", &server.url("")],
    );
    let n = run.requests().len() as u64;
    let log = server.log.lock().unwrap();
    // Each post is its own task: order them by when they were made.
    let mut a = log.annotations.clone();
    a.sort_by_key(|x| x["monotonic_ns"].as_u64().unwrap());
    let at = |phase: &str, event: &str| {
        a.iter()
            .find(|x| x["phase"] == phase && x["event"] == event)
            .unwrap_or_else(|| panic!("no {phase} {event}: {a:?}"))["monotonic_ns"]
            .as_u64()
            .unwrap()
    };
    let progress: Vec<&Value> = a.iter().filter(|x| x["event"] == "progress").collect();
    let tokens: Vec<u64> = progress
        .iter()
        .map(|x| x["output_tokens"].as_u64().unwrap())
        .collect();
    assert!(tokens.windows(2).all(|w| w[1] >= w[0]), "{tokens:?}");
    // Once a second: within the 2 s phase, then within the 1 s silence.
    let (start, end) = (at("s", "start"), at("s", "end"));
    let in_s: Vec<&&Value> = progress.iter().filter(|x| x["phase"] == "s").collect();
    assert!(!in_s.is_empty(), "{a:?}");
    let first = in_s[0]["monotonic_ns"].as_u64().unwrap();
    assert!(first > start && first < end, "{a:?}");
    assert!(in_s[0]["output_tokens"].as_u64().unwrap() > 0, "{a:?}");
    assert!(progress.len() >= 2, "{a:?}");
    let last = a.iter().rev().find(|x| x["event"] == "end").unwrap();
    assert_eq!(last["phase"], "quiet");
    assert_eq!(last["output_tokens"].as_u64(), Some(TOKENS * n), "{last}");
}

/// A shared prefix is sent exactly: K distinct prefixes of exactly N
/// tokens (the word-level tokenizer's count), each request carrying one
/// of them in front of its own prompt (the system message for chat), our
/// count of each whole prompt exact, and the share reported.
#[test]
fn shared_prefixes_are_sent_exactly_and_their_share_reported() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let tok = tokenizer_file(&dir);
    for (path, chat) in [("/v1/completions", false), ("/v1/chat/completions", true)] {
        let server = server(true, 0);
        let url = server.url(path);
        let mut args = vec![
            "--url",
            url.as_str(),
            "--phase",
            "s=closed:3:1s",
            "--max-tokens",
            "4",
            "--input-tokens",
            "10",
            "--tokenizer",
            tok.as_str(),
            "--shared-prefix-tokens",
            "30",
            "--prefix-groups",
            "3",
        ];
        if chat {
            args.extend(["--api", "chat"]);
        }
        let run = loadgen(&args);
        assert_eq!(run.code, 0, "{}", run.stderr);
        let words = |t: &str| t.split_whitespace().count();
        let mut prefixes = std::collections::BTreeSet::new();
        let seen = server.log.lock().unwrap().requests.clone();
        assert!(seen.len() > 10, "{} requests", seen.len());
        for r in &seen {
            let (prefix, own) = if chat {
                let m = r.body["messages"].as_array().unwrap();
                assert_eq!(m[0]["role"], "system", "{}", r.body);
                (
                    m[0]["content"].as_str().unwrap().to_string(),
                    m[1]["content"].as_str().unwrap().to_string(),
                )
            } else {
                let p = r.body["prompt"].as_str().unwrap();
                // 30 words of prefix, then the request's own 10.
                let cut = p.match_indices(' ').nth(30).map_or(p.len(), |(i, _)| i);
                (p[..cut].to_string(), p[cut..].to_string())
            };
            assert_eq!(words(&prefix), 30, "{prefix:?}");
            assert_eq!(words(&own), 10, "{own:?}");
            prefixes.insert(prefix);
        }
        assert_eq!(prefixes.len(), 3, "{prefixes:#?}");
        // Every request's record names its group, and ours counts 40.
        for r in run.requests() {
            assert!(r["prefix_group"].as_u64().unwrap() < 3, "{r}");
            assert_eq!(r["prompt_tokens"], 40, "{r}");
        }
        let shared = &run.results()["run"]["prompts"]["shared_prefix"];
        assert_eq!(shared["tokens"], 30);
        assert_eq!(shared["groups"], 3);
        assert_eq!(shared["share_of_prompt_tokens"], 0.75);
        assert!(
            run.stderr.is_empty() || !run.stderr.contains("error"),
            "{}",
            run.stderr
        );
    }
}

/// Lengths drawn from a lognormal reach the server as drawn: every prompt
/// the test server received has the word count (the tokenizer's count)
/// its record states, the lengths vary, and their mean is the asked one;
/// output lengths drawn the same way are what each reply carried.
#[test]
fn lognormal_prompt_and_output_lengths_are_sent_as_recorded() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let tok = tokenizer_file(&dir);
    let server = server(true, 0);
    let url = server.url("/v1/completions");
    let run = loadgen(&[
        "--url",
        url.as_str(),
        "--phase",
        "s=closed:4:2s",
        "--input-tokens",
        "lognormal:40:20",
        "--max-tokens",
        "lognormal:12:6",
        "--fixed-output",
        "--tokenizer",
        tok.as_str(),
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let mut sent: Vec<u64> = server
        .log
        .lock()
        .unwrap()
        .requests
        .iter()
        .map(|r| {
            r.body["prompt"]
                .as_str()
                .unwrap()
                .split_whitespace()
                .count() as u64
        })
        .collect();
    let records = run.requests();
    let mut recorded: Vec<u64> = records
        .iter()
        .map(|r| r["prompt_tokens"].as_u64().unwrap())
        .collect();
    sent.sort_unstable();
    recorded.sort_unstable();
    assert_eq!(sent, recorded, "prompt lengths sent vs recorded");
    assert!(sent.len() >= 40, "{} requests", sent.len());
    let mean = sent.iter().sum::<u64>() as f64 / sent.len() as f64;
    assert!((mean / 40.0 - 1.0).abs() < 0.3, "mean prompt {mean}");
    assert!(sent.first() != sent.last(), "every prompt the same length");
    // Each reply carried the output length its record asked for.
    for r in &records {
        assert_eq!(r["output_tokens"]["usage"], r["max_tokens"], "{r}");
    }
    let asked: std::collections::BTreeSet<u64> = records
        .iter()
        .map(|r| r["max_tokens"].as_u64().unwrap())
        .collect();
    assert!(asked.len() > 3, "output lengths {asked:?}");
}
