//! `--sweep` finds the knee of a server whose truth is known: the test
//! server serves at most 2 requests at once (the rest wait), each reply 10
//! tokens at 20 ms (200 ms, so the client's own turnaround is under 1 %),
//! so throughput doubles from 1 to 2 concurrent requests and then stays
//! flat while latency doubles with every step.

mod common;

use common::*;
use serde_json::Value;

/// A closed-loop sweep of 1, 2, 4, 8 against a server of `capacity`,
/// 200 ms replies, E2E SLO 300 ms: (the run, the server's largest number
/// of requests served at once).
fn capacity_sweep(capacity: usize) -> (Run, usize) {
    let server = StreamServer::start(ServerConfig {
        token_ms: 20.0,
        capacity: Some(capacity),
        ..ServerConfig::default()
    });
    let url = server.url("/v1/completions");
    let run = loadgen(&[
        "--url",
        url.as_str(),
        "--sweep",
        "closed:1..8",
        "--sweep-step",
        "2s",
        "--sweep-gap",
        "300ms",
        "--max-tokens",
        "10",
        "--fixed-output",
        "--slo-e2e-ms",
        "300",
    ]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let most = server.log.lock().unwrap().max_in_flight;
    (run, most)
}

#[test]
fn a_closed_loop_sweep_finds_the_knee_of_a_server_with_known_capacity() {
    let _g = serial();
    let (run, most) = capacity_sweep(2);
    let r = run.results();
    let sweep = &r["sweep"];
    let steps = sweep["steps"].as_array().unwrap();
    let loads: Vec<f64> = steps.iter().map(|s| s["load"].as_f64().unwrap()).collect();
    assert_eq!(loads, [1.0, 2.0, 4.0, 8.0]);
    // Each step's figures are its phase's.
    for s in steps {
        let p = run.phase(s["phase"].as_str().unwrap());
        assert_eq!(
            s["output_tokens_per_s"],
            p["throughput"]["output_tokens_per_s"]
        );
        assert_eq!(p["concurrency"], s["load"].as_f64().unwrap() as u64);
    }
    let tput = |i: usize| steps[i]["output_tokens_per_s"].as_f64().unwrap();
    let e2e = |i: usize| steps[i]["p99_e2e_ms"].as_f64().unwrap();
    // The truth: 50 tok/s at 1, 100 at 2 and after; 200 ms, then 400, 800.
    assert!(tput(1) > 1.6 * tput(0), "{steps:#?}");
    assert!(
        tput(2) < 1.1 * tput(1) && tput(3) < 1.1 * tput(1),
        "{steps:#?}"
    );
    assert!(
        e2e(1) < 300.0 && e2e(2) > 300.0 && e2e(3) > 1.5 * e2e(2),
        "{steps:#?}"
    );
    let knee = &sweep["knee"];
    assert_eq!(knee["slo_load"], 2.0, "{knee:#}");
    assert_eq!(knee["saturation_load"], 2.0, "{knee:#}");
    assert_eq!(knee["slo"], "E2E ≤ 300 ms");
    assert!(steps[2]["within_slo"] == false && steps[1]["within_slo"] == true);
    // The server never served more than its capacity.
    assert!(most <= 2, "{most} served at once");
    // Told on the terminal, drawn, and valid against the schema.
    assert!(
        run.stdout
            .contains("knee: C=2 is the largest load within E2E ≤ 300 ms at P99")
            && run.stdout.contains("throughput stops rising at C=2"),
        "{}",
        run.stdout
    );
    assert!(run.path("sweep.png").is_file() && run.path("sweep.svg").is_file());
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_file("loadgen/schema/results.v2.schema.json")).unwrap(),
    )
    .unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let problems: Vec<String> = validator
        .iter_errors(&r)
        .map(|e| format!("{e} at {}", e.instance_path))
        .collect();
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn a_poisson_sweep_steps_geometrically_and_bad_sweeps_name_the_fix() {
    let _g = serial();
    let server = StreamServer::start(ServerConfig::default());
    let url = server.url("/v1/completions");
    let run = loadgen(&[
        "--url",
        url.as_str(),
        "--sweep",
        "poisson:10..40:x2",
        "--sweep-step",
        "1s",
        "--sweep-gap",
        "200ms",
        "--max-tokens",
        "4",
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let r = run.results();
    let steps = r["sweep"]["steps"].as_array().unwrap();
    let names: Vec<&str> = steps.iter().map(|s| s["phase"].as_str().unwrap()).collect();
    assert_eq!(names, ["r10", "r20", "r40"]);
    for s in steps {
        let p = run.phase(s["phase"].as_str().unwrap());
        assert_eq!(p["target_rate"], s["load"]);
    }
    // No SLO: no SLO knee, and the terminal says how to get one.
    assert!(r["sweep"]["knee"]["slo_load"].is_null());
    assert!(run.stdout.contains("give --slo-ttft-ms"), "{}", run.stdout);

    for (sweep, says) in [
        ("closed:8..2", "a range goes up"),
        ("closed:4", "1 steps: give 2 to 64"),
        ("steady:1,2", "starts with closed: or poisson:"),
        ("poisson:1..8:x0.5", "the factor is x and a number above 1"),
        ("closed:4,2", "the loads must rise"),
    ] {
        let run = loadgen(&["--url", "http://x/", "--sweep", sweep]);
        assert_eq!(run.code, 2, "{sweep}: {}", run.stderr);
        assert!(
            run.stderr.contains(says) && run.stderr.contains("; fix: "),
            "{sweep}: {}",
            run.stderr
        );
    }
    let run = loadgen(&[
        "--url",
        "http://x/",
        "--sweep",
        "closed:1,2",
        "--phase",
        "a=silence:1s",
    ]);
    assert_eq!(run.code, 2, "{}", run.stderr);
}

/// `compare` of two sweeps: the curves load by load, each run's knees,
/// and the overlay drawn with `--plots`. Servers of capacity 2 and 4: the
/// second's throughput keeps rising one step further.
#[test]
fn compare_sets_two_sweeps_side_by_side_and_overlays_their_curves() {
    let _g = serial();
    let (two, four) = (capacity_sweep(2).0, capacity_sweep(4).0);
    assert_eq!(four.results()["sweep"]["knee"]["saturation_load"], 4.0);
    let plots = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(gapscope_testkit::loadgen_bin())
        .arg("compare")
        .arg(two.path("results.json"))
        .arg(four.path("results.json"))
        .args(["--labels", "cap2,cap4", "--plots"])
        .arg(plots.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("**Sweep curves**"), "{text}");
    for load in ["| 1 |", "| 2 |", "| 4 |", "| 8 |"] {
        assert!(text.contains(load), "{load}: {text}");
    }
    assert!(
        text.contains("cap2: knee within the SLO 2; throughput stops rising at 2;")
            && text.contains("cap4: knee within the SLO 4; throughput stops rising at 4;"),
        "{text}"
    );
    for f in ["sweep_compare.png", "sweep_compare.svg"] {
        assert!(plots.path().join(f).is_file(), "{f}");
    }
}

/// `--find-max-goodput` against a server that serves 10 requests/s at
/// most (2 at once, 200 ms each): the rates double from 2 until goodput
/// stops rising, then the bracket narrows; the best rate is at or below
/// the capacity and its goodput within what the server can give.
#[test]
fn find_max_goodput_brackets_then_narrows_to_the_servers_capacity() {
    let _g = serial();
    let server = StreamServer::start(ServerConfig {
        token_ms: 20.0,
        capacity: Some(2),
        log_requests: false,
        ..ServerConfig::default()
    });
    let url = server.url("/v1/completions");
    let run = loadgen(&[
        "--url",
        url.as_str(),
        "--find-max-goodput",
        "--search-start",
        "2",
        "--search-step",
        "2s",
        "--search-max-probes",
        "6",
        "--max-tokens",
        "10",
        "--slo-e2e-ms",
        "600",
        "--timeout",
        "30",
    ]);
    assert!(run.code <= 1, "{}\n{}", run.stdout, run.stderr);
    eprintln!(
        "{}",
        run.stdout
            .lines()
            .filter(|l| !l.starts_with("audit") && !l.starts_with("wrote"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let search: Value =
        serde_json::from_str(&std::fs::read_to_string(run.path("search.json")).unwrap()).unwrap();
    let probes = search["probes"].as_array().unwrap();
    assert!(probes.len() >= 4 && probes.len() <= 6, "{search:#}");
    let rates: Vec<f64> = probes.iter().map(|p| p["rate"].as_f64().unwrap()).collect();
    assert_eq!(rates[..3], [2.0, 4.0, 8.0], "doubling first: {rates:?}");
    for p in probes {
        let dir = std::path::Path::new(p["dir"].as_str().unwrap());
        assert!(dir.join("results.json").is_file(), "{p}");
        assert_eq!(p["complete"], true);
    }
    let best = &search["best"];
    let rate = best["rate"].as_f64().unwrap();
    let goodput = best["goodput_tokens_per_s"].as_f64().unwrap();
    assert!((3.0..=11.0).contains(&rate), "best rate {rate}: {search:#}");
    // At most 10 requests/s × 10 tokens can come back.
    assert!(goodput <= 110.0 && goodput > 20.0, "{search:#}");
    assert!(
        run.stdout.contains("most goodput:") && run.stdout.contains("req/s"),
        "{}",
        run.stdout
    );
    // Without an SLO there is nothing to search for.
    let run = loadgen(&["--url", url.as_str(), "--find-max-goodput"]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("needs an SLO"), "{}", run.stderr);
}
