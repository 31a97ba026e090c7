//! The config parser against hostile text: every key (those of the
//! example config, commented ones included, and the rest) given values of
//! every wrong kind,
//! an unknown key in every table, and thousands of random byte-level
//! mutations. Each parse ends in a config or in one error whose problem
//! is a single line naming the key (where one key is at fault) and whose
//! fix is not empty; none panics.

use super::*;

const EXAMPLE: &str = include_str!("../../../deploy/gapscoped.toml");

/// Every key the example leaves out, in a config that parses.
const THE_REST: &str = r#"[explain]
gpu_hour_usd = 2.49

[[python.probe]]
library = "orjson/orjson."
symbol_pattern = "^orjson_dumps$"
codec = "orjson"
op = "encode"

[[python.probe]]
library = "msgspec/_core."
method = "encode"
codec = "msgspec"

[[service]]
name = "by-exe"
exe = "/usr/bin/python3.11"

[[service]]
name = "by-pid"
pids = [4242]
follow_children = false

[[service]]
name = "by-cgroup"
cgroup = "/system.slice/vllm.service"
"#;

/// Values of every TOML kind, and edge values of the right kinds.
const WRONG: &[&str] = &[
    "\"x\"",
    "\"\"",
    "\"\\u0000\"",
    "\"ü\\u202e\"",
    "-1",
    "0",
    "9223372036854775807",
    "-9223372036854775808",
    "1.5",
    "-0.0",
    "nan",
    "inf",
    "-inf",
    "1e308",
    "true",
    "[]",
    "[1, 2]",
    "[\"a\", \"b\"]",
    "{}",
    "{ a = 1 }",
    "1979-05-27T07:32:00Z",
    "\"/\"",
    "\"../../etc/passwd\"",
];

/// (line index, key, the line without its comment mark) of every
/// `key = value` line of the example, commented or not.
fn key_lines(text: &str) -> Vec<(usize, String, String)> {
    text.lines()
        .enumerate()
        .filter_map(|(i, line)| {
            let bare = line.trim_start_matches(['#', ' ']);
            let (key, _) = bare.split_once(" = ")?;
            let plain = key.chars().all(|c| c.is_ascii_lowercase() || c == '_');
            (plain && !key.is_empty()).then(|| (i, key.to_string(), bare.to_string()))
        })
        .collect()
}

/// Parses without letting a panic escape: Err(message) when it panicked.
fn parse(text: &str) -> Result<Result<Config, UsageError>, String> {
    std::panic::catch_unwind(|| Config::parse(text)).map_err(|p| {
        p.downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(ToString::to_string))
            .unwrap_or_default()
    })
}

fn check_error(e: &UsageError, text: &str) {
    assert!(
        !e.problem.is_empty() && !e.problem.contains('\n'),
        "the problem is one line: {:?}\n{text}",
        e.problem
    );
    assert!(
        !e.fix.trim().is_empty(),
        "no fix for {:?}\n{text}",
        e.problem
    );
}

#[test]
fn every_key_given_every_wrong_kind_of_value_is_named_in_its_error() {
    assert!(
        Config::parse(THE_REST).is_ok(),
        "the rest of the keys parse as given"
    );
    let keys = wrong_values_named(EXAMPLE) + wrong_values_named(THE_REST);
    assert!(keys >= 50, "only {keys} keys tried");
}

/// Each key line of `text` given each wrong value: returns the keys tried.
fn wrong_values_named(text: &str) -> usize {
    let lines: Vec<&str> = text.lines().collect();
    let keys = key_lines(text);
    let (mut cases, mut refused) = (0, 0);
    for (at, key, _) in &keys {
        for value in WRONG {
            let mut edited = lines.clone();
            let line = format!("{key} = {value}");
            edited[*at] = &line;
            let text = edited.join("\n");
            cases += 1;
            match parse(&text) {
                Err(panic) => panic!("{key} = {value}: the parser panicked: {panic}"),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    refused += 1;
                    check_error(&e, &text);
                    assert!(
                        e.problem.contains(key.as_str()),
                        "{key} = {value}: the error does not name the key: {}",
                        e.problem
                    );
                }
            }
        }
    }
    // Most of these are wrong for most keys: a parser that accepted
    // everything would pass the loop above.
    assert!(refused * 10 > cases * 8, "{refused} of {cases} refused");
    keys.len()
}

#[test]
fn an_unknown_key_in_any_table_is_refused_by_name() {
    let lines: Vec<&str> = EXAMPLE.lines().collect();
    let headers: Vec<usize> = (0..lines.len())
        .filter(|i| lines[*i].starts_with('['))
        .collect();
    assert!(headers.len() >= 6);
    let after_a_key = headers.iter().filter_map(|h| {
        (h + 1..lines.len())
            .take_while(|i| !lines[*i].starts_with('['))
            .find(|i| lines[*i].contains(" = ") && !lines[*i].starts_with('#'))
            .map(|i| i + 1)
    });
    for at in std::iter::once(0)
        .chain(headers.iter().map(|h| h + 1))
        .chain(after_a_key)
    {
        let mut edited = lines.clone();
        edited.insert(at, "colour_of_the_sky = 1");
        let text = edited.join("\n");
        let e = parse(&text)
            .unwrap_or_else(|p| panic!("panicked: {p}"))
            .err()
            .unwrap_or_else(|| panic!("an unknown key after line {at} was accepted"));
        check_error(&e, &text);
        assert!(
            e.problem.contains("unknown field `colour_of_the_sky`"),
            "{}",
            e.problem
        );
        // Named as itself, not as the key before it.
        assert!(!e.problem.contains(" ("), "{}", e.problem);
    }
}

#[test]
fn random_mutations_never_panic_and_every_error_is_one_line_with_a_fix() {
    // xorshift64*, seeded: the same cases every run.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    let alphabet = b"[]=\"'#.,{}\n -_0123456789abcxyz\\\xc3\xbc\x00";
    let (mut ok, mut refused) = (0, 0);
    for _ in 0..3000 {
        let mut bytes = EXAMPLE.as_bytes().to_vec();
        for _ in 0..1 + next() % 8 {
            let at = (next() as usize) % bytes.len();
            match next() % 3 {
                0 => bytes[at] = alphabet[(next() as usize) % alphabet.len()],
                1 => {
                    bytes.remove(at);
                }
                _ => bytes.insert(at, alphabet[(next() as usize) % alphabet.len()]),
            }
        }
        // Config files are text: a mutation that breaks UTF-8 is read as
        // the file loader would read it.
        let text = String::from_utf8_lossy(&bytes).into_owned();
        match parse(&text) {
            Err(panic) => panic!("the parser panicked ({panic}) on:\n{text}"),
            Ok(Ok(_)) => ok += 1,
            Ok(Err(e)) => {
                refused += 1;
                check_error(&e, &text);
            }
        }
    }
    assert!(ok > 0 && refused > 0, "{ok} parsed, {refused} refused");
}
