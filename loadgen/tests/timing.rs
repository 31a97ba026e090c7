//! The load generator's clock against the server's: every token's time,
//! TTFT and end-to-end latency within a millisecond of what the server did;
//! open-loop arrivals that are Poisson at the asked rate; a silence with
//! no request; a closed loop that is full and never over-full.

mod common;

use common::*;

#[test]
fn token_times_match_what_the_server_did_within_a_millisecond() {
    let _g = serial();
    let server = StreamServer::start(ServerConfig {
        first_token_ms: 40.0,
        token_ms: 7.0,
        tokens_per_chunk: 2,
        ..ServerConfig::default()
    });
    let run = loadgen(&[
        "--url",
        &server.url("/v1/completions"),
        "--phase",
        "stress=closed:3:2s",
        "--max-tokens",
        "12",
        "--input-tokens",
        "32",
        "--continuous-usage",
    ]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let log = server.log.lock().unwrap();
    let requests = run.requests();
    assert!(requests.len() >= 6, "{} requests", requests.len());
    let origin = run.origin();
    // Client minus server: each chunk's gap to the one before (the ITL
    // the client measures against the one the server produced), and each
    // request's TTFT and end-to-end latency.
    let (mut gap_d, mut ttft_d, mut e2e_d) = (Vec::new(), Vec::new(), Vec::new());
    let mut arrival = Vec::new();
    for r in &requests {
        let id = r["id"].as_str().unwrap();
        let seen = log
            .requests
            .iter()
            .find(|s| s.request_id.as_deref() == Some(id))
            .expect("the server saw the request id");
        assert!(
            seen.traceparent
                .as_deref()
                .is_some_and(|t| t.len() == 55 && t.starts_with("00-"))
        );
        let sent = origin + r["sent_ns"].as_u64().unwrap();
        let events = r["events"].as_array().unwrap();
        // 12 tokens, two per chunk: six chunks, each counted as 2 tokens.
        assert_eq!(events.len(), 6);
        assert_eq!(r["output_tokens"]["usage"], 12);
        assert_eq!(r["output_tokens"]["counted"], 12);
        let client: Vec<i64> = events
            .iter()
            .map(|e| (sent + e[0].as_u64().unwrap()) as i64)
            .collect();
        let server: Vec<i64> = seen.chunks_ns.iter().map(|t| *t as i64).collect();
        for i in 0..client.len() {
            arrival.push(client[i] - server[i]);
            if i > 0 {
                gap_d.push((client[i] - client[i - 1]) - (server[i] - server[i - 1]));
            }
        }
        assert!(seen.chunks_ns[0] - seen.arrived_ns >= 40_000_000);
        // Each worker's first request also opens its connection: the
        // client's latencies include that, the server's cannot.
        if ["-000000", "-000001", "-000002"]
            .iter()
            .any(|s| id.ends_with(s))
        {
            continue;
        }
        // From the response headers on, both sides time the same thing.
        let client = |k: &str| r[k].as_u64().unwrap() - r["headers_ns"].as_u64().unwrap();
        let headers = seen.headers_ns.unwrap();
        ttft_d.push(client("first_token_ns") as i64 - (seen.chunks_ns[0] - headers) as i64);
        e2e_d.push(client("done_ns") as i64 - (seen.done_ns.unwrap() - headers) as i64);
    }
    arrival.sort();
    eprintln!(
        "chunks reach the client {:.3} ms (median) after the server hands them over",
        arrival[arrival.len() / 2] as f64 / 1e6
    );
    assert!(
        arrival[0] >= 0,
        "the client saw a chunk before the server sent it"
    );
    // Gaps cancel the delivery time, so they test the client's clock
    // alone; TTFT and E2E also carry the loopback round trip, which on a
    // small VM with idle virtual CPUs is itself 0.5-1 ms.
    for (what, d, median_max, p95_max) in [
        ("inter-chunk gap", &mut gap_d, 500_000, 1_000_000),
        ("TTFT", &mut ttft_d, 1_000_000, 1_500_000),
        ("E2E", &mut e2e_d, 1_000_000, 1_500_000),
    ] {
        d.sort_by_key(|v| v.abs());
        let at = |q: usize| d[(d.len() * q / 100).min(d.len() - 1)].abs();
        eprintln!(
            "{what}: |client - server| over {} samples: median {:.3} ms, P95 {:.3} ms, P99 {:.3} ms, max {:.3} ms",
            d.len(),
            at(50) as f64 / 1e6,
            at(95) as f64 / 1e6,
            at(99) as f64 / 1e6,
            d[d.len() - 1].abs() as f64 / 1e6
        );
        assert!(at(50) < median_max, "{what}: median {} ns", at(50));
        assert!(at(95) < p95_max, "{what}: P95 {} ns", at(95));
    }
    // The summary agrees: ITL is per token, 14 ms chunks of two tokens.
    let p = run.phase("stress");
    let itl = p["latency"]["itl"]["p50"].as_f64().unwrap();
    assert!((itl - 0.007).abs() < 0.001, "ITL p50 {itl}");
    let chunk = p["latency"]["inter_chunk"]["p50"].as_f64().unwrap();
    assert!((chunk - 0.014).abs() < 0.001, "inter-chunk p50 {chunk}");
}

#[test]
fn poisson_arrivals_have_the_rate_and_pass_kolmogorov_smirnov() {
    let _g = serial();
    let server = StreamServer::start(ServerConfig::default());
    let run = loadgen(&[
        "--url",
        &server.url("/v1/completions"),
        "--phase",
        "warm=poisson:100:15s",
        "--max-tokens",
        "4",
        "--input-tokens",
        "8",
    ]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let (a, b) = run.window("warm");
    let log = server.log.lock().unwrap();
    let mut arrivals: Vec<u64> = log
        .requests
        .iter()
        .map(|s| s.arrived_ns)
        .filter(|t| *t >= a && *t < b)
        .collect();
    arrivals.sort();
    let rate = arrivals.len() as f64 / ((b - a) as f64 / 1e9);
    let gaps: Vec<f64> = arrivals
        .windows(2)
        .map(|w| (w[1] - w[0]) as f64 / 1e9)
        .collect();
    let d = gapscope_loadgen::arrivals::ks_exponential(&gaps, 100.0);
    let critical = gapscope_loadgen::arrivals::ks_critical_1pct(gaps.len());
    let p = run.phase("warm");
    let lag = p["latency"]["send_lag"]["p99"].as_f64().unwrap();
    eprintln!(
        "server saw {rate:.1} req/s; KS D = {d:.4} (critical {critical:.4}); client P99 send lag {:.3} ms",
        lag * 1e3
    );
    assert!((rate / 100.0 - 1.0).abs() < 0.03, "rate {rate}");
    assert!(d < critical, "KS D {d} >= {critical}");
    assert_eq!(p["sent"], p["scheduled"]);
}

#[test]
fn the_server_sees_no_request_during_the_silence() {
    let _g = serial();
    let server = StreamServer::start(ServerConfig {
        token_ms: 5.0,
        ..ServerConfig::default()
    });
    let run = loadgen(&[
        "--url",
        &server.url("/v1/completions"),
        "--phase",
        "warm=poisson:40:1s",
        "--phase",
        "quiet=silence:1500ms",
        "--phase",
        "stress=closed:4:1s",
        "--max-tokens",
        "8",
    ]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let (a, b) = run.window("quiet");
    let log = server.log.lock().unwrap();
    let during: Vec<u64> = log
        .requests
        .iter()
        .map(|s| s.arrived_ns)
        .filter(|t| *t >= a && *t < b)
        .collect();
    assert!(
        during.is_empty(),
        "{} requests arrived during the silence",
        during.len()
    );
    assert!(
        log.requests.iter().any(|s| s.arrived_ns < a)
            && log.requests.iter().any(|s| s.arrived_ns >= b)
    );
    assert_eq!(run.phase("quiet")["sent"], 0);
}

#[test]
fn a_closed_loop_is_full_and_never_over_full() {
    let _g = serial();
    let server = StreamServer::start(ServerConfig {
        first_token_ms: 20.0,
        token_ms: 10.0,
        ..ServerConfig::default()
    });
    let run = loadgen(&[
        "--url",
        &server.url("/v1/chat/completions"),
        "--api",
        "chat",
        "--phase",
        "stress=closed:8:3s",
        "--max-tokens",
        "10",
    ]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let (a, b) = run.window("stress");
    let log = server.log.lock().unwrap();
    let max = log.max_in_flight_between(a, b);
    // Skip the first 50 ms: the workers start together.
    let mean = log.mean_in_flight(a + 50_000_000, b);
    let p = run.phase("stress");
    eprintln!(
        "server: at most {max} in flight, {mean:.2} on average; client: {} and {:.2}",
        p["max_in_flight"], p["avg_in_flight"]
    );
    assert!(max <= 8, "{max} in flight");
    // Between one reply's end and the next request, a worker is briefly
    // idle: about 0.1 ms here, against 110 ms requests.
    assert!(mean > 0.95 * 8.0, "the loop is not saturated: {mean}");
    assert!(p["max_in_flight"].as_u64().unwrap() <= 8);
    // Little's law holds, and the audit says so.
    let audit = run.results()["audit"].as_array().unwrap().clone();
    let little = audit.iter().find(|c| c["check"] == "littles_law").unwrap();
    assert_eq!(little["status"], "pass", "{little}");
}
