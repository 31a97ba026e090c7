//! Every way a server can fail is counted in its category and the run goes
//! on; bad input is one line naming the problem and the fix (exit 2);
//! Ctrl-C keeps what was measured (exit 130); a fixed output length that
//! is not honoured fails the run (exit 3).

mod common;

use common::*;

/// Runs a short closed loop against `path` on a fresh test server.
fn against(path: &str, extra: &[&str]) -> Run {
    let server = StreamServer::start(ServerConfig {
        token_ms: 2.0,
        ..ServerConfig::default()
    });
    let url = server.url(path);
    let mut args = vec![
        "--url",
        url.as_str(),
        "--phase",
        "s=closed:2:1s",
        "--max-tokens",
        "6",
    ];
    args.extend_from_slice(extra);
    loadgen(&args)
}

/// The phase's error counts, and the requests it sent.
fn errors(run: &Run) -> (serde_json::Value, u64, u64) {
    let p = run.phase("s");
    (
        p["errors"].clone(),
        p["sent"].as_u64().unwrap(),
        p["failed"].as_u64().unwrap(),
    )
}

#[test]
fn each_failure_lands_in_its_category_and_the_run_goes_on() {
    let _g = serial();
    for (path, category, extra) in [
        ("/fail/status503/v1/completions", "http_status", vec![]),
        ("/fail/close2/v1/completions", "early_close", vec![]),
        ("/fail/nodone/v1/completions", "early_close", vec![]),
        (
            "/fail/malformed2/v1/completions",
            "malformed_stream",
            vec![],
        ),
        ("/fail/badutf8/v1/completions", "malformed_stream", vec![]),
        ("/fail/hugeline/v1/completions", "malformed_stream", vec![]),
        ("/fail/errorevent/v1/completions", "server_error", vec![]),
        (
            "/fail/stall2/v1/completions",
            "timeout",
            vec!["--timeout", "0.3"],
        ),
        (
            "/fail/slowheaders/v1/completions",
            "timeout",
            vec!["--timeout", "0.3"],
        ),
    ] {
        let run = against(path, &extra);
        let (errors, sent, failed) = errors(&run);
        eprintln!("{path}: {sent} sent, errors {errors}");
        assert_eq!(
            run.code, 1,
            "{path}: exit status says there were errors\n{}",
            run.stderr
        );
        assert!(sent >= 2, "{path}: the run went on ({sent} sent)");
        assert_eq!(failed, sent, "{path}: every request failed");
        let example = run.requests()[0]["error"]["detail"].clone();
        assert_eq!(
            errors[category].as_u64(),
            Some(sent),
            "{path}: {errors} (e.g. {example})"
        );
        // The per-request file has every one, with its category.
        let requests = run.requests();
        assert_eq!(requests.len() as u64, sent);
        assert!(requests.iter().all(|r| r["error"]["kind"] == category));
    }
}

#[test]
fn split_characters_and_plain_text_streams_are_fine() {
    let _g = serial();
    let run = against("/fail/splitutf8/v1/completions", &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let (_, sent, failed) = errors(&run);
    assert!(sent >= 2);
    assert_eq!(failed, 0);
    // A BentoML-style endpoint: a JSON template in, plain text chunks out.
    let dir = tempfile::tempdir().unwrap();
    let server = StreamServer::start(ServerConfig {
        token_ms: 2.0,
        ..ServerConfig::default()
    });
    let workload = dir.path().join("w.toml");
    std::fs::write(
        &workload,
        format!(
            "[endpoint]\nurl = \"{}\"\napi = \"template\"\nframing = \"raw\"\n\
             body = '{{\"prompt\": {{{{prompt}}}}, \"max_tokens\": {{{{max_tokens}}}}, \"stream\": true}}'\n\
             [output]\nmax_tokens = 5\n[[phase]]\nname = \"s\"\nkind = \"closed_loop\"\nconcurrency = 2\nduration_s = 1\n",
            server.url("/raw")
        ),
    )
    .unwrap();
    let run = loadgen(&["--workload", workload.to_str().unwrap()]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let requests = run.requests();
    assert!(!requests.is_empty());
    for r in &requests {
        assert_eq!(r["chunks"], 5, "{r}");
    }
    let seen = server.log.lock().unwrap();
    assert!(
        seen.requests
            .iter()
            .all(|s| s.body["max_tokens"] == 5 && s.body["prompt"].is_string())
    );
}

/// One phase against a port where nothing listens.
fn against_nothing(phase: &str) -> Run {
    let port = gapscope_testkit::free_port();
    let url = format!("http://127.0.0.1:{port}/v1/completions");
    let run = loadgen(&["--url", &url, "--phase", phase, "--max-tokens", "4"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    run
}

#[test]
fn a_server_that_is_down_is_counted_as_connect_errors() {
    let _g = serial();
    let run = against_nothing("w=constant:20:1s");
    let p = run.phase("w");
    assert_eq!(p["sent"], 20);
    assert_eq!(p["errors"]["connect"], 20, "{p}");
    // Summarised, not a line each.
    assert_eq!(
        run.stdout.matches("connect errors").count(),
        1,
        "{}",
        run.stdout
    );
}

/// Closed-loop workers facing a refused connection back off (10 ms
/// doubling to 1 s, with jitter) instead of spinning: in 2 s each of 4
/// workers tries at most 1 + log2(1 s / 10 ms) + a few times.
#[test]
fn closed_loop_workers_back_off_from_a_server_that_refuses() {
    let _g = serial();
    let run = against_nothing("s=closed:4:2s");
    let p = run.phase("s");
    let sent = p["sent"].as_u64().unwrap();
    assert_eq!(p["errors"]["connect"].as_u64(), Some(sent), "{p}");
    // Jittered steps of at least half of 10, 20, 40, … ms: a worker's
    // tries within 2 s are bounded by the doubling (the bound holds
    // however fast the machine; a spinning worker makes thousands).
    let mut per_worker = 0;
    let mut waited = 0.0;
    let mut step = 0.010_f64;
    while waited < 2.0 {
        per_worker += 1;
        waited += step / 2.0;
        step = (step * 2.0).min(1.0);
    }
    assert!(
        (4..=4 * (per_worker + 1)).contains(&sent),
        "{sent} tries by 4 workers in 2 s (at most {} each)",
        per_worker + 1
    );
}

#[test]
fn a_fixed_length_that_is_not_honoured_fails_the_run() {
    let _g = serial();
    let run = against("/fail/short/v1/completions", &["--fixed-output"]);
    assert_eq!(run.code, 3, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("fixed output length was asked for"),
        "{}",
        run.stderr
    );
    assert!(
        run.results()["run"]["fixed_length_violations"]
            .as_u64()
            .unwrap()
            >= 2
    );
    // And a server that honours it passes.
    let run = against("/v1/completions", &["--fixed-output"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let seen = run.requests();
    assert!(seen.iter().all(|r| r["length_honoured"] == true));
}

#[test]
fn ctrl_c_stops_cleanly_and_keeps_what_was_measured() {
    stops_cleanly_on(libc::SIGINT, "SIGINT");
}

/// A supervisor's stop (systemd, `timeout`, Kubernetes) and a closed
/// terminal stop the run as Ctrl-C does, with the shell's status for them.
#[test]
fn sigterm_and_sighup_stop_like_ctrl_c() {
    stops_cleanly_on(libc::SIGTERM, "SIGTERM");
    stops_cleanly_on(libc::SIGHUP, "SIGHUP");
}

fn stops_cleanly_on(signal: i32, name: &str) {
    let _g = serial();
    let server = StreamServer::start(ServerConfig {
        token_ms: 20.0,
        ..ServerConfig::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let mut command = std::process::Command::new(gapscope_testkit::loadgen_bin());
    // The load generator leaves an ignored SIGHUP ignored (nohup); a test
    // run started under nohup would pass that on. The child starts with
    // the default, as from a terminal.
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut command, || {
            libc::signal(libc::SIGHUP, libc::SIG_DFL);
            Ok(())
        });
    }
    let mut child = command
        .args([
            "--url",
            &server.url("/v1/completions"),
            "--phase",
            "s=closed:4:30s",
            "--max-tokens",
            "20",
            "--quiet",
            "--out",
        ])
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Past the first replies (20 tokens of 20 ms each), at a moment when
    // all four are streaming with at least half of their reply to go:
    // wait on the server's log, not the clock.
    loop {
        let log = server.log.lock().unwrap();
        let done = log.requests.iter().filter(|r| r.done_ns.is_some()).count();
        let young = log
            .requests
            .iter()
            .filter(|r| r.done_ns.is_none() && r.chunks_ns.len() < 10)
            .count();
        if done >= 4 && log.now_in_flight == 4 && young == 4 {
            break;
        }
        drop(log);
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, signal) };
    let status = child.wait().unwrap();
    let lifetime = started.elapsed();
    assert_eq!(status.code(), Some(128 + signal), "{name}");
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("results.json")).unwrap())
            .unwrap();
    assert_eq!(results["run"]["interrupted"], true);
    assert!(
        results["run"]["stopped_by"]
            .as_str()
            .unwrap()
            .contains(name),
        "{}",
        results["run"]
    );
    // Every line of the per-request file is whole, the cancelled ones too.
    let lines = std::fs::read_to_string(dir.path().join("requests.jsonl")).unwrap();
    assert!(lines.ends_with('\n'));
    let cancelled = lines
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["error"]["kind"] == "cancelled")
        .count();
    let p = &results["phases"][0];
    // What the server finished and what it was still streaming when the
    // client went are the client's ok and cancelled, exactly: it stopped
    // at once (did not wait for the 30 s phase, nor for the replies in
    // flight) and kept every request.
    let log = server.log.lock().unwrap();
    let finished = log.requests.iter().filter(|r| r.done_ns.is_some()).count() as u64;
    let cut = log.requests.len() as u64 - finished;
    assert_eq!(p["ok"].as_u64().unwrap(), finished, "{p}");
    assert_eq!(p["errors"]["cancelled"].as_u64().unwrap_or(0), cut, "{p}");
    assert_eq!(cancelled as u64, cut);
    assert!(
        (1..=4).contains(&cut),
        "{cut} in flight at the interruption: {p}"
    );
    // The phase ended no later than the process did.
    let duration = std::time::Duration::from_secs_f64(p["duration_s"].as_f64().unwrap());
    assert!(duration <= lifetime, "{duration:?} > {lifetime:?}");
}

#[test]
fn bad_input_is_one_line_with_the_fix() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let bad_toml = dir.path().join("bad.toml");
    std::fs::write(
        &bad_toml,
        "[endpoint]\nurl = \"http://x/\"\nstreem = true\n",
    )
    .unwrap();
    let bad_phase = dir.path().join("phase.toml");
    std::fs::write(&bad_phase, "[endpoint]\nurl = \"http://x/\"\n[[phase]]\nname = \"a\"\nkind = \"closed_loop\"\nduration_s = 5\n").unwrap();
    let missing = dir.path().join("missing.toml");
    for (args, says) in [
        (vec![], "no endpoint"),
        (
            vec!["--url", "ftp://x/"],
            "is not an http:// or https:// URL",
        ),
        (
            vec!["--url", "http://x/", "--phase", "w=poisson:fast:1s"],
            "is not a number",
        ),
        (
            vec!["--url", "http://x/", "--time-scale", "0"],
            "time_scale = 0",
        ),
        (
            vec!["--url", "http://x/", "--telemetry", "nvml=http://x/"],
            "kind \"nvml\" is unknown",
        ),
        (
            vec!["--url", "http://x/", "--header", "novalue"],
            "has no ':'",
        ),
        (
            vec!["--url", "http://x/", "--header", "X Bad: v"],
            "is not a valid HTTP header name",
        ),
        (
            vec!["--url", "http://x/", "--header", "X-Token: a\u{1}b"],
            "a value that cannot be sent",
        ),
        (
            vec!["--url", "http://x/", "--gpu-ids", "0"],
            "no telemetry is read",
        ),
        (
            vec![
                "--url",
                "http://x/",
                "--telemetry",
                "dcgm=http://x/metrics",
                "--gpu-ids",
                "0,\"1",
            ],
            "is not a GPU index or UUID",
        ),
        (
            vec!["--url", "http://x/", "--telemetry", "dcgm=http://x y/"],
            "does not parse",
        ),
        (
            vec!["--workload", bad_toml.to_str().unwrap()],
            "unknown field `streem`",
        ),
        (
            vec!["--workload", bad_phase.to_str().unwrap()],
            "needs concurrency",
        ),
        (
            vec!["--workload", missing.to_str().unwrap()],
            "cannot read workload file",
        ),
        (
            vec![
                "--url",
                "http://x/",
                "--tokenizer",
                "/nonexistent/tokenizer.json",
            ],
            "cannot load tokenizer",
        ),
        (
            vec!["--url", "http://x/", "--prefix-groups", "4"],
            "4 prefix groups but no shared prefix",
        ),
        (
            vec![
                "--url",
                "http://x/",
                "--shared-prefix-tokens",
                "8",
                "--prefix-groups",
                "0",
            ],
            "prefix_groups = 0 is out of range",
        ),
        (
            vec!["--url", "http://x/", "--max-tokens", "lognormal:0.5:5"],
            "is not a usable length",
        ),
    ] {
        let run = loadgen(&args);
        assert_eq!(run.code, 2, "{args:?}: {}", run.stderr);
        let lines: Vec<&str> = run.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: one line: {}", run.stderr);
        assert!(
            lines[0].contains(says) && lines[0].contains("; fix: "),
            "{args:?}: {}",
            lines[0]
        );
    }
}

#[test]
fn a_request_on_a_connection_the_server_closed_silently_is_resent_once() {
    let _g = serial();
    let server = StreamServer::start(ServerConfig {
        token_ms: 2.0,
        drop_reused_connections: true,
        ..ServerConfig::default()
    });
    let url = server.url("/v1/completions");
    let run = loadgen(&[
        "--url",
        &url,
        "--phase",
        "s=closed:2:1s",
        "--max-tokens",
        "6",
    ]);
    let (errs, sent, failed) = errors(&run);
    let requests = run.requests();
    assert_eq!(failed, 0, "{errs}");
    let resent = requests.iter().filter(|r| r["resent"] == 1).count();
    eprintln!("{sent} requests, {resent} resent");
    // Every connection serves one reply. A pooled connection is reused by
    // the next request, which is cut and resent on a connection of its own
    // (not pooled); the one after opens a new pooled connection: every
    // second request is resent.
    assert!(sent > 10, "{sent}");
    // Exactly the requests the server cut were sent again, and each once.
    let cut = server.log.lock().unwrap().cut_reused;
    assert!(cut > 0, "the server cut no request");
    assert_eq!(
        resent, cut,
        "{resent} of {sent} resent, {cut} cut by the server"
    );
    assert!(requests.iter().all(|r| r["error"].is_null()));
}

/// A length flag that does not parse is refused by the flag parser (exit
/// 2) with every form it accepts named.
#[test]
fn a_length_that_does_not_parse_names_every_form() {
    let run = loadgen(&["--url", "http://x/", "--input-tokens", "lognormal:many:5"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    for form in [
        "(256)",
        "(100-900)",
        "normal:MEAN:STDDEV",
        "lognormal:MEAN:STDDEV",
    ] {
        assert!(run.stderr.contains(form), "{form}: {}", run.stderr);
    }
}
