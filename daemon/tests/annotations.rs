//! The load generator announces its phases to gapscoped: a real
//! gapscope-loadgen run posts to the real daemon, which keeps the
//! annotations on its clock and counts them; bad bodies get a 400 naming
//! the problem.

use std::process::Command;

use gapscope_testkit::{
    Daemon, http_get, http_post, loadgen_bin, serial,
    stream_server::{ServerConfig, StreamServer},
};

fn post(port: u16, body: &str) -> (u16, String) {
    http_post(port, "/api/v1/annotations", body)
}

#[test]
fn a_loadgen_run_leaves_its_phases_in_gapscoped() {
    let _g = serial();
    let daemon =
        Daemon::start("[[service]]\nname = \"none\"\ncmdline = \"^nothing-matches-this$\"\n");
    let server = StreamServer::start(ServerConfig::default());
    let out = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let status = Command::new(loadgen_bin())
        .args([
            "--url",
            &server.url("/v1/completions"),
            "--phase",
            "warm=constant:10:1s",
            "--phase",
            "cooldown=silence:1s",
        ])
        .args([
            "--max-tokens",
            "4",
            "--quiet",
            "--no-plots",
            "--gapscoped",
            &format!("http://127.0.0.1:{}", daemon.port),
            // The README's GPU recipe: gapscoped's base URL for telemetry.
            "--telemetry",
            &format!("gapscoped=http://127.0.0.1:{}", daemon.port),
            "--out",
        ])
        .arg(out.path())
        .status()
        .unwrap();
    let lifetime = started.elapsed().as_nanos() as u64;
    assert!(status.success());
    let body = http_get(daemon.port, "/api/v1/annotations").unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let list = v["annotations"].as_array().unwrap();
    let seen: Vec<(String, String)> = list
        .iter()
        .map(|a| {
            (
                a["phase"].as_str().unwrap().to_string(),
                a["event"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("warm", "start"),
            ("warm", "end"),
            ("cooldown", "start"),
            ("cooldown", "end")
        ]
        .map(|(p, e)| (p.to_string(), e.to_string()))
    );
    assert!(
        list.iter().all(|a| a["kind"] != ""
            && a["run_id"] != ""
            && a["monotonic_ns"].as_u64().unwrap() > 0)
    );
    // In order on one clock, each stamped no earlier than the boundary the
    // load generator scheduled for it (its results give the schedule on the
    // same clock), and the silence lies within the run's lifetime. The
    // start of the silence may be stamped late when the warmup's last
    // request overran it: the scheduled end does not move.
    let t = |i: usize| list[i]["monotonic_ns"].as_u64().unwrap();
    assert!((1..4).all(|i| t(i) >= t(i - 1)), "{body}");
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("results.json")).unwrap())
            .unwrap();
    let origin = results["run"]["clock_origin_monotonic_ns"]
        .as_u64()
        .unwrap();
    let at = |phase: usize, edge: &str| {
        origin + (results["phases"][phase][edge].as_f64().unwrap() * 1e9).round() as u64
    };
    // (The schedule is written in seconds as floats: a microsecond of slack.)
    for (i, (phase, edge)) in [(0, "start_s"), (0, "end_s"), (1, "start_s"), (1, "end_s")]
        .into_iter()
        .enumerate()
    {
        assert!(t(i) + 1_000 >= at(phase, edge), "{i}: {body} {results}");
    }
    assert_eq!(
        at(1, "end_s") - at(1, "start_s"),
        1_000_000_000,
        "{results}"
    );
    let silence = t(3) - t(2);
    assert!(silence < lifetime, "{silence} ns of {lifetime}");
    // Telemetry went to gapscoped's /metrics, not its landing page: with
    // NVML it has readings; without, the scrape found the exporter and
    // says which series it lacks.
    let source = &results["telemetry"]["source"];
    assert_eq!(
        source["url"],
        format!("http://127.0.0.1:{}/metrics", daemon.port)
    );
    if source["samples"].as_u64() == Some(0) {
        assert!(
            source["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("gapscope_gpu_power_watts")),
            "{source}"
        );
    }
    let m = daemon.scrape();
    assert_eq!(
        m.get("gapscope_annotations_total", &[("event", "start")]),
        Some(2.0)
    );
    // The silent phase was checked: with readings on a GPU host, with the
    // reason there are none here.
    let checks: serde_json::Value =
        serde_json::from_str(&http_get(daemon.port, "/api/v1/idle-checks").unwrap()).unwrap();
    let check = &checks["idle_checks"][0];
    assert_eq!(check["phase"], "cooldown", "{checks}");
    assert_eq!(checks["idle_checks"].as_array().unwrap().len(), 1);
    // The check spans exactly the silence its annotations announced.
    assert_eq!(check["start_ns"].as_u64(), Some(t(2)), "{checks}");
    assert_eq!(check["end_ns"].as_u64(), Some(t(3)), "{checks}");
    if checks["nvml_down"].is_null() {
        assert!(!check["gpus"].as_array().unwrap().is_empty(), "{checks}");
    } else {
        gapscope_testkit::not_checked(
            "the idle check's GPU readings: no NVIDIA driver (it only says why it has none)",
        );
        assert!(check["gpus"].as_array().unwrap().is_empty());
        assert_eq!(check["unavailable"], checks["nvml_down"], "{checks}");
    }
    assert_eq!(
        m.get("gapscope_loadgen_phase_active", &[("phase", "cooldown")]),
        None
    );
    // Each request rode along with an annotation: the trace marks when it
    // was sent, got its first token and ended, under its x-request-id, at
    // the times the load generator recorded (its run clock plus origin).
    let trace: serde_json::Value = serde_json::from_str(
        &http_get(daemon.port, "/api/v1/trace?service=none&window=5m").unwrap(),
    )
    .unwrap();
    let jsonl = std::fs::read_to_string(out.path().join("requests.jsonl")).unwrap();
    let requests: Vec<serde_json::Value> = jsonl
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(requests.len(), 10, "{jsonl}");
    let events = trace["traceEvents"].as_array().unwrap();
    for r in &requests {
        let id = r["id"].as_str().unwrap();
        for (what, key) in [
            ("request sent", "sent_ns"),
            ("first token", "first_token_ns"),
            ("request done", "done_ns"),
        ] {
            let name = format!("{what} {id}");
            let found: Vec<&serde_json::Value> =
                events.iter().filter(|e| e["name"] == name).collect();
            assert_eq!(found.len(), 1, "{name}: {found:?}");
            let want_us = (origin + r[key].as_u64().unwrap()) as f64 / 1e3;
            let ts = found[0]["ts"].as_f64().unwrap();
            assert!(
                (ts - want_us).abs() < 1.0,
                "{name}: at {ts} µs, recorded {want_us} µs"
            );
            assert_eq!(found[0]["args"]["request_id"], id);
            assert_eq!(found[0]["args"]["phase"], "warm");
        }
    }

    for (body, says) in [
        ("{", "not JSON"),
        (
            "{\"phase\": \"x\", \"event\": \"pause\"}",
            "is not \\\"start\\\"",
        ),
        ("{\"event\": \"start\"}", "phase is missing"),
    ] {
        let (status, text) = post(daemon.port, body);
        assert_eq!(status, 400, "{body}: {text}");
        assert!(
            text.contains(says) && text.contains("\"fix\""),
            "{body}: {text}"
        );
    }
    let (status, _) = post(
        daemon.port,
        "{\"phase\": \"stress\", \"kind\": \"closed_loop\", \"event\": \"start\"}",
    );
    assert_eq!(status, 200);
    let m = daemon.scrape();
    assert_eq!(
        m.get(
            "gapscope_loadgen_phase_active",
            &[("phase", "stress"), ("kind", "closed_loop")]
        ),
        Some(1.0)
    );
}
