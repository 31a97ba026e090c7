//! Multi-turn conversations (`--turns`, `--think-time`, ShareGPT's own
//! turns): each turn carries the conversation so far — the turn before's
//! messages, the reply the server actually streamed, then its own prompt,
//! exactly — a think time after that reply; per-turn TTFT and prompt
//! lengths in the results. The truth is the server's log.

mod common;

use std::collections::BTreeMap;

use common::*;
use serde_json::{Value, json};

/// The server's view of each conversation, in turn order: (turn, body,
/// arrived, done).
type Turns = Vec<(u64, Value, u64, u64)>;

fn conversations(run: &Run, server: &StreamServer) -> BTreeMap<u64, Turns> {
    let log = server.log.lock().unwrap();
    let mut out: BTreeMap<u64, Turns> = BTreeMap::new();
    for q in run.requests() {
        let Some(c) = q["conversation"].as_u64() else {
            panic!("a record without its conversation: {q}");
        };
        let id = q["id"].as_str().unwrap();
        let seen = common::seen(&log, id);
        out.entry(c).or_default().push((
            q["turn"].as_u64().unwrap(),
            seen.body.clone(),
            seen.arrived_ns,
            seen.done_ns.unwrap(),
        ));
    }
    for turns in out.values_mut() {
        turns.sort_by_key(|t| t.0);
    }
    out
}

#[test]
fn each_chat_turn_carries_the_conversation_so_far_exactly() {
    let _g = serial();
    let server = StreamServer::start(ServerConfig {
        token_ms: 1.0,
        ..ServerConfig::default()
    });
    let r = loadgen(&[
        "--url",
        &server.url("/v1/chat/completions"),
        "--api",
        "chat",
        "--phase",
        "s=closed:3:3s",
        "--turns",
        "3",
        "--think-time",
        "0.2s",
        "--input-tokens",
        "5",
        "--max-tokens",
        "4",
        "--shared-prefix-tokens",
        "6",
        "--prefix-groups",
        "2",
        "--no-plots",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let all = conversations(&r, &server);
    let mut complete = 0;
    for (c, turns) in &all {
        // Turns 1, 2, … with none missing.
        let numbers: Vec<u64> = turns.iter().map(|t| t.0).collect();
        assert_eq!(numbers, (1..=turns.len() as u64).collect::<Vec<_>>(), "{c}");
        complete += usize::from(turns.len() == 3);
        let first = turns[0].1["messages"].as_array().unwrap();
        assert_eq!(first.len(), 2, "system prefix and the first prompt");
        assert_eq!(first[0]["role"], "system");
        for w in turns.windows(2) {
            let (before, after) = (&w[0], &w[1]);
            let old = before.1["messages"].as_array().unwrap();
            let new = after.1["messages"].as_array().unwrap();
            // Everything sent before, then the reply the server streamed
            // (4 tokens of " t"), then one new user prompt of 5 words.
            assert_eq!(&new[..old.len()], &old[..], "{c}");
            assert_eq!(
                new[old.len()],
                json!({"role": "assistant", "content": " t t t t"}),
                "{c}"
            );
            assert_eq!(new[old.len() + 1]["role"], "user");
            let words = new[old.len() + 1]["content"].as_str().unwrap();
            assert_eq!(words.split_whitespace().count(), 5, "{c}");
            assert_eq!(new.len(), old.len() + 2);
            // Sent no sooner than the think time after the reply ended.
            assert!(after.2 >= before.3 + 200_000_000, "{c}");
        }
    }
    assert!(
        complete >= 3,
        "{complete} conversations got all three turns"
    );

    // The results: how the conversations ended, and per turn the prompt
    // the server counted growing by the reply and the new prompt.
    let results = r.results();
    let c = &results["run"]["prompts"]["conversations"];
    assert_eq!(c["started"].as_u64().unwrap(), all.len() as u64, "{c}");
    assert_eq!(c["completed"].as_u64().unwrap(), complete as u64, "{c}");
    assert_eq!(c["ended_by_error"], 0, "{c}");
    assert_eq!(
        c["started"].as_u64().unwrap(),
        c["completed"].as_u64().unwrap() + c["cut_at_phase_end"].as_u64().unwrap()
    );
    assert_eq!(c["think_time"], "0.2s");
    // Users who think are not a saturated loop: that check stands aside.
    let saturated = results["audit"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["check"] == "closed_loop_saturated")
        .unwrap();
    assert_eq!(saturated["status"], "skipped", "{saturated}");
    let turns = r.phase("s")["turns"].as_array().unwrap().clone();
    assert_eq!(turns.len(), 3, "{turns:?}");
    for (k, t) in turns.iter().enumerate() {
        let sent = all.values().filter(|c| c.len() > k).count() as u64;
        assert_eq!(t["turn"], k as u64 + 1);
        assert_eq!(t["ok"].as_u64().unwrap(), sent, "{t}");
        assert!(t["ttft"]["p50"].as_f64().unwrap() > 0.0);
        // 6 (system) + 5 per prompt + 4 per reply, as the server counts.
        let words = (6 + 5 + 9 * k) as f64;
        assert_eq!(
            t["mean_usage_prompt_tokens"].as_f64().unwrap(),
            words,
            "{t}"
        );
    }
}

#[test]
fn an_open_loops_cap_holds_requests_not_thinking_users() {
    let _g = serial();
    let server = StreamServer::start(ServerConfig {
        first_token_ms: 5.0,
        token_ms: 1.0,
        ..ServerConfig::default()
    });
    let r = loadgen(&[
        "--url",
        &server.url("/v1/completions"),
        "--phase",
        "s=constant:8:2s:cap=1",
        "--turns",
        "3",
        "--think-time",
        "0.3s",
        "--max-tokens",
        "4",
        "--input-tokens",
        "4",
        "--no-plots",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let log = server.log.lock().unwrap();
    assert_eq!(log.max_in_flight, 1, "the cap holds");
    drop(log);
    // Another conversation's turn ran while one's user was thinking: the
    // cap was not held through the think time.
    let all = conversations(&r, &server);
    let firsts: Vec<u64> = all.values().map(|t| t[0].2).collect();
    let interleaved = all.values().any(|turns| {
        turns.windows(2).any(|w| {
            let (done, next) = (w[0].3, w[1].2);
            firsts.iter().any(|&a| a > done && a < next)
        })
    });
    assert!(interleaved, "{all:?}");
}

#[test]
fn completions_turns_grow_by_prefix_and_sharegpt_sends_its_own_turns() {
    let _g = serial();
    let server = StreamServer::start(ServerConfig::default());
    let dir = tempfile::tempdir().unwrap();
    let sharegpt = dir.path().join("sg.json");
    std::fs::write(
        &sharegpt,
        json!([
            {"conversations": [
                {"from": "human", "value": "alpha one"}, {"from": "gpt", "value": "x"},
                {"from": "human", "value": "alpha two"}, {"from": "gpt", "value": "y"},
                {"from": "human", "value": "alpha three"}, {"from": "gpt", "value": "z"},
                {"from": "human", "value": "alpha four"}]},
            {"conversations": [{"from": "human", "value": "beta only"}]},
        ])
        .to_string(),
    )
    .unwrap();
    let r = loadgen(&[
        "--url",
        &server.url("/v1/completions"),
        "--phase",
        "s=closed:1:1s",
        "--sharegpt",
        sharegpt.to_str().unwrap(),
        "--turns",
        "3",
        "--max-tokens",
        "2",
        "--no-plots",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let all = conversations(&r, &server);
    let prompts = |turns: &Turns| -> Vec<String> {
        turns
            .iter()
            .map(|t| t.1["prompt"].as_str().unwrap().to_string())
            .collect()
    };
    let mut seen = BTreeMap::new();
    for turns in all.values() {
        let p = prompts(turns);
        // Each prompt is the one before, the reply (" t t"), a blank line,
        // then the next human turn: a prefix cache finds all of it.
        for w in p.windows(2) {
            assert!(w[1].starts_with(&format!("{} t t\n\n", w[0])), "{p:?}");
        }
        *seen.entry(p[0].clone()).or_insert(0) += 1;
        *seen.entry(format!("{} turns", p.len())).or_insert(0) += 1;
        if p[0] == "alpha one" {
            // At most three of the four human turns, in order.
            let expected = [
                "alpha one",
                "alpha one t t\n\nalpha two",
                "alpha one t t\n\nalpha two t t\n\nalpha three",
            ];
            assert_eq!(p, expected[..p.len()], "{p:?}");
        } else {
            assert_eq!(p, ["beta only"]);
        }
    }
    assert!(
        seen.contains_key("alpha one")
            && seen.contains_key("beta only")
            && seen.contains_key("3 turns"),
        "both conversations were sent, the first with three turns: {seen:?}"
    );

    // A prompts file gives a conversation its lines in a row, one a turn.
    let lines = dir.path().join("lines.txt");
    std::fs::write(&lines, "first line\nsecond line\nthird line\n").unwrap();
    let before = server.log.lock().unwrap().requests.len();
    let r = loadgen(&[
        "--url",
        &server.url("/v1/completions"),
        "--phase",
        "s=closed:1:0.5s",
        "--prompts-file",
        lines.to_str().unwrap(),
        "--turns",
        "2",
        "--max-tokens",
        "1",
        "--no-plots",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let all = conversations(&r, &server);
    assert!(server.log.lock().unwrap().requests.len() > before);
    let two: Vec<Vec<String>> = all.values().map(prompts).filter(|p| p.len() == 2).collect();
    assert!(!two.is_empty());
    for p in two {
        let first = &p[0];
        let i = ["first line", "second line", "third line"]
            .iter()
            .position(|l| l == first)
            .unwrap();
        let next = ["first line", "second line", "third line"][(i + 1) % 3];
        assert_eq!(p[1], format!("{first} t\n\n{next}"));
    }

    // Bad conversation flags are named with the fix.
    for (args, expected) in [
        (vec!["--turns", "0"], "turns = 0"),
        (vec!["--think-time", "2s"], "--turns N"),
        (vec!["--turns", "2", "--think-time", "soon"], "think time"),
        (vec!["--turns", "2", "--think-time", "3s-1s"], "above"),
    ] {
        let mut all_args = vec!["--url", "http://127.0.0.1:9/v1/completions"];
        all_args.extend(args.iter());
        let r = loadgen(&all_args);
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        assert!(r.stderr.contains(expected), "{args:?}: {}", r.stderr);
    }
}
