//! `--metrics-listen`: the run's own Prometheus metrics while it runs.
//! The last scrape (during `--metrics-linger`) must agree with the
//! per-request records the run wrote: requests and tokens per phase
//! exactly, histogram counts and sums to the nanosecond; errors by kind;
//! the exposition passes `promtool check metrics`; bad addresses and bad
//! requests get clear answers.

mod common;

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::*;
use gapscope_testkit::{Metrics, free_port, http_get};

/// Runs gapscope-loadgen with `args` plus `--metrics-listen` on a free
/// port and a linger, scraping while it runs: (run, scrapes in order).
fn run_scraped(args: &[&str]) -> (Run, Vec<Metrics>) {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{port}");
    let mut child = Command::new(gapscope_testkit::loadgen_bin())
        .args(args)
        .args(["--metrics-listen", &listen, "--metrics-linger", "2s"])
        .args(["--quiet", "--no-plots", "--out"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut scrapes = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the run never ended");
        if let Some(text) = http_get(port, "/metrics") {
            scrapes.push(Metrics(text));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let run = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        dir,
    };
    (run, scrapes)
}

/// The last scrape after every phase ended (all `phase_active` 0).
fn final_scrape(scrapes: &[Metrics]) -> &Metrics {
    scrapes
        .iter()
        .rev()
        .find(|m| {
            m.0.contains("gapscope_client_phase_active")
                && m.sum("gapscope_client_phase_active", &[]) == 0.0
                && m.sum("gapscope_client_requests_total", &[]) > 0.0
        })
        .expect("no scrape after the run ended: --metrics-linger did not hold")
}

#[test]
fn the_last_scrape_agrees_with_every_request_record() {
    let _g = serial();
    let server = StreamServer::start(ServerConfig {
        first_token_ms: 15.0,
        token_ms: 3.0,
        chunk_pattern: vec![1, 2, 3],
        ..ServerConfig::default()
    });
    let url = server.url("/v1/completions");
    let (r, scrapes) = run_scraped(&[
        "--url",
        &url,
        "--phase",
        "warm=poisson:20:1s",
        "--phase",
        "quiet=silence:0.5s",
        "--phase",
        "stress=closed:4:1.5s",
        "--max-tokens",
        "12",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    // Live: the stress phase was seen running, with requests in flight
    // (never more than its concurrency and the warm-up's stragglers).
    assert!(scrapes.iter().any(|m| {
        m.get("gapscope_client_phase_active", &[("phase", "stress")]) == Some(1.0)
            && m.get("gapscope_client_requests_in_flight", &[]).unwrap() >= 1.0
    }));
    let m = final_scrape(&scrapes);
    assert_eq!(m.get("gapscope_client_requests_in_flight", &[]), Some(0.0));
    assert_eq!(
        m.get(
            "gapscope_client_phase_active",
            &[("phase", "quiet"), ("kind", "silence")]
        ),
        Some(0.0)
    );

    // Ground truth: the per-request records.
    let mut by_phase: BTreeMap<String, (u64, u64, u64, u64)> = BTreeMap::new();
    for q in r.requests() {
        let e = by_phase
            .entry(q["phase"].as_str().unwrap().into())
            .or_default();
        let tokens: u64 = q["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["tokens"].as_u64().unwrap())
            .sum();
        e.0 += u64::from(q["error"].is_null());
        e.1 += tokens;
        if let Some(first) = q["first_token_ns"].as_u64() {
            e.2 += first - q["sent_ns"].as_u64().unwrap();
        }
        e.3 += q["done_ns"].as_u64().unwrap() - q["sent_ns"].as_u64().unwrap();
    }
    assert_eq!(by_phase.len(), 2, "{by_phase:?}");
    for (phase, (ok, tokens, ttft_ns, e2e_ns)) in &by_phase {
        let l = [("phase", phase.as_str())];
        let ok_label = [("phase", phase.as_str()), ("outcome", "ok")];
        assert_eq!(
            m.get("gapscope_client_requests_total", &ok_label),
            Some(*ok as f64)
        );
        assert_eq!(
            m.get("gapscope_client_output_tokens_total", &l),
            Some(*tokens as f64)
        );
        assert_eq!(
            m.get("gapscope_client_ttft_seconds_count", &l),
            Some(*ok as f64)
        );
        assert_eq!(
            m.get("gapscope_client_e2e_seconds_count", &l),
            Some(*ok as f64)
        );
        let near = |a: f64, ns: u64| (a - ns as f64 / 1e9).abs() < 1e-6;
        assert!(near(
            m.get("gapscope_client_ttft_seconds_sum", &l).unwrap(),
            *ttft_ns
        ));
        assert!(near(
            m.get("gapscope_client_e2e_seconds_sum", &l).unwrap(),
            *e2e_ns
        ));
        // ITL: the same per-token count as the results file's itl_token.
        let itl = &r.phase(phase)["latency"]["itl_token"]["count"];
        assert_eq!(
            m.get("gapscope_client_itl_seconds_count", &l),
            itl.as_f64(),
            "{phase}"
        );
        let inf = [("phase", phase.as_str()), ("le", "+Inf")];
        assert_eq!(
            m.get("gapscope_client_ttft_seconds_bucket", &inf),
            Some(*ok as f64)
        );
    }
    // The silent phase sent nothing, and says so with zeros.
    assert_eq!(
        m.get(
            "gapscope_client_requests_total",
            &[("phase", "quiet"), ("outcome", "ok")]
        ),
        Some(0.0)
    );
    let info =
        m.0.lines()
            .find(|l| l.starts_with("gapscope_client_info{"))
            .unwrap();
    assert!(info.contains(&r.results()["run"]["run_id"].as_str().unwrap().to_string()));

    // The exposition is valid as Prometheus reads it.
    if let Err(report) = gapscope_testkit::promtool_check(&m.0) {
        panic!("promtool: {report}");
    }
}

#[test]
fn errors_are_counted_by_kind_and_bad_requests_and_addresses_are_answered() {
    let _g = serial();
    let server = StreamServer::start(ServerConfig::default());
    let url = server.url("/fail/status503/v1/completions");
    let (r, scrapes) = run_scraped(&["--url", &url, "--phase", "s=constant:20:0.5s"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let m = final_scrape(&scrapes);
    let failed = r.requests().len() as f64;
    assert!(failed > 0.0);
    let error = [("phase", "s"), ("kind", "http_status")];
    assert_eq!(
        m.get("gapscope_client_request_errors_total", &error),
        Some(failed)
    );
    assert_eq!(
        m.get(
            "gapscope_client_requests_total",
            &[("phase", "s"), ("outcome", "error")]
        ),
        Some(failed)
    );
    assert_eq!(
        m.get("gapscope_client_ttft_seconds_count", &[("phase", "s")]),
        Some(0.0)
    );

    // Other paths and methods, while a run serves.
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(gapscope_testkit::loadgen_bin())
        .args([
            "--url",
            &server.url("/v1/completions"),
            "--phase",
            "s=silence:3s",
        ])
        .args([
            "--metrics-listen",
            &listen,
            "--quiet",
            "--no-plots",
            "--out",
        ])
        .arg(dir.path())
        .spawn()
        .unwrap();
    let raw = |request: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                s.write_all(request.as_bytes()).unwrap();
                let mut reply = String::new();
                let _ = s.read_to_string(&mut reply);
                return reply;
            }
            assert!(Instant::now() < deadline, "never listened");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let reply = raw("GET /other HTTP/1.0\r\n\r\n");
    assert!(reply.starts_with("HTTP/1.0 404"), "{reply}");
    let reply = raw("POST /metrics HTTP/1.0\r\nContent-Length: 0\r\n\r\n");
    assert!(reply.starts_with("HTTP/1.0 405"), "{reply}");
    let reply = raw("this is not HTTP\r\n\r\n");
    assert!(!reply.contains("gapscope_client"), "{reply}");
    let reply = raw("GET /metrics HTTP/1.0\r\n\r\n");
    assert!(reply.contains("gapscope_client_phase_active"), "{reply}");

    // The port is taken now: a second run says so before sending.
    let second = loadgen(&[
        "--url",
        &server.url("/v1/completions"),
        "--metrics-listen",
        &listen,
    ]);
    assert_eq!(second.code, 2, "{}", second.stderr);
    assert!(second.stderr.contains("--metrics-listen") && second.stderr.contains("cannot listen"));
    assert!(child.wait().unwrap().success());

    for (bad, expected) in [
        ("localhost", "is not an address"),
        ("127.0.0.1:99999", "is not an address"),
    ] {
        let r = loadgen(&[
            "--url",
            &server.url("/v1/completions"),
            "--metrics-listen",
            bad,
        ]);
        assert_eq!(r.code, 2, "{bad}: {}", r.stderr);
        assert!(r.stderr.contains(expected), "{bad}: {}", r.stderr);
    }
    let r = loadgen(&[
        "--url",
        &server.url("/v1/completions"),
        "--metrics-linger",
        "2s",
    ]);
    assert_eq!(r.code, 2, "{}", r.stderr);
}
