//! What a run reports: tokens per joule and MFU from telemetry, the
//! self-audit (which catches inconsistent figures, including the published
//! ones), results that validate against the schema, plots, the comparison
//! table, phase annotations, and exact prompt lengths with a tokenizer.

mod common;

use common::*;
use serde_json::Value;

const LLAMA3_8B: &str = r#"{"hidden_size":4096,"intermediate_size":14336,"num_attention_heads":32,
    "num_hidden_layers":32,"num_key_value_heads":8,"vocab_size":128256,"tie_word_embeddings":false}"#;

fn telemetry_run(server: &StreamServer, extra: &[&str]) -> Run {
    let url = server.url("/v1/completions");
    let metrics = format!("dcgm={}", server.url("/metrics"));
    let mut args = vec![
        "--url",
        &url,
        "--phase",
        "warm=poisson:30:2s",
        "--phase",
        "stress=closed:4:4s",
        "--max-tokens",
        "16",
        "--telemetry",
        &metrics,
        "--params",
        "8.03e9",
        "--gpu-hour-usd",
        "1.2",
    ];
    args.extend_from_slice(extra);
    loadgen(&args)
}

#[test]
fn tokens_per_joule_mfu_and_cost_follow_from_the_telemetry() {
    let _g = serial();
    let server = StreamServer::start(ServerConfig {
        token_ms: 2.0,
        ..ServerConfig::default()
    });
    let run = telemetry_run(&server, &[]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let results = run.results();
    assert_eq!(
        results["model"]["gpu"], "NVIDIA A40",
        "the GPU comes from the exporter's modelName"
    );
    assert_eq!(results["model"]["peak_tflops_per_gpu"], 149.7);
    let p = run.phase("stress");
    let tps = p["throughput"]["output_tokens_per_s"].as_f64().unwrap();
    let window = p["duration_s"].as_f64().unwrap();
    // The exporter's counter grows at exactly 200 W.
    assert_eq!(p["telemetry"]["energy_source"], "counter");
    let energy = p["telemetry"]["energy_j"].as_f64().unwrap();
    assert!(
        (energy / (200.0 * window) - 1.0).abs() < 0.01,
        "energy {energy} J over {window} s"
    );
    let tpj = p["tokens_per_joule"].as_f64().unwrap();
    assert!(
        (tpj * 200.0 / tps - 1.0).abs() < 0.01,
        "{tpj} tok/J at 200 W vs {tps} tok/s"
    );
    // MFU = tok/s x 2N / peak (no layers given: no attention term).
    let mfu = p["mfu"].as_f64().unwrap();
    assert!((mfu - tps * 2.0 * 8.03e9 / 149.7e12).abs() < 1e-9, "{mfu}");
    // $1.2 per GPU-hour.
    let cost = p["cost_per_million_tokens_usd"].as_f64().unwrap();
    assert!((cost - 1.2 / (tps * 3600.0) * 1e6).abs() < 1e-9);
    for c in results["audit"].as_array().unwrap() {
        assert_ne!(c["status"], "fail", "{c}");
    }
    // The counter and the power gauge agree (both 200 W): the audit's
    // one energy check, comparing two readings of the GPU.
    assert!(
        run.stdout
            .contains("audit energy_counter_matches_power PASS     [stress]"),
        "{}",
        run.stdout
    );
    // The run's own MFU and tokens per joule follow from its throughput:
    // no check of them against it, which could not fail.
    for c in ["mfu_scales_with_throughput", "energy_matches_throughput"] {
        assert!(!run.stdout.contains(c), "{}", run.stdout);
    }

    // The results validate against the published schema.
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_file("loadgen/schema/results.v2.schema.json")).unwrap(),
    )
    .unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let problems: Vec<String> = validator
        .iter_errors(&results)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect();
    assert!(problems.is_empty(), "{problems:#?}");
    // And a broken document does not.
    let mut broken = results.clone();
    broken["phases"][0]["kind"] = "teleport".into();
    assert!(!validator.is_valid(&broken));

    // The plots: PNG and SVG, with text drawn from the embedded font.
    for name in ["telemetry", "throughput", "latency_cdf"] {
        let png = std::fs::read(run.path(&format!("{name}.png"))).unwrap();
        assert!(
            png.starts_with(b"\x89PNG") && png.len() > 10_000,
            "{name}.png"
        );
        let svg = std::fs::read_to_string(run.path(&format!("{name}.svg"))).unwrap();
        assert!(svg.contains("<svg"), "{name}.svg");
    }
    let svg = std::fs::read_to_string(run.path("telemetry.svg")).unwrap();
    assert!(
        svg.contains("GPU utilization") && svg.contains("stress (closed loop)"),
        "labels drawn"
    );
}

#[test]
fn inconsistent_telemetry_fails_the_audit() {
    let _g = serial();
    // The energy counter says 400 W while the power gauge says 200 W.
    let server = StreamServer::start(ServerConfig {
        token_ms: 2.0,
        energy_w: 400.0,
        ..ServerConfig::default()
    });
    let run = telemetry_run(&server, &[]);
    assert_eq!(run.code, 3, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("self-audit found inconsistent figures"),
        "{}",
        run.stderr
    );
    let audit = run.results()["audit"].as_array().unwrap().clone();
    assert!(
        audit
            .iter()
            .any(|c| c["check"] == "energy_counter_matches_power" && c["status"] == "fail"),
        "{audit:?}"
    );
}

#[test]
fn the_audit_catches_the_published_figures() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.json");
    std::fs::write(&config, LLAMA3_8B).unwrap();
    let out = std::process::Command::new(gapscope_testkit::loadgen_bin())
        .args([
            "audit",
            "--claim",
            "bentoml:870:6.8%",
            "--claim",
            "lmdeploy:1515:16.2%",
            "--model-config",
        ])
        .arg(&config)
        .args(["--gpu", "A40"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{text}");
    let line = |check: &str, phase: &str| {
        text.lines()
            .find(|l| l.starts_with(check) && l.contains(&format!("[{phase}]")))
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        line("mfu_matches_throughput", "bentoml").contains("FAIL"),
        "{text}"
    );
    assert!(
        line("mfu_matches_throughput", "bentoml").contains("9.33 %"),
        "{text}"
    );
    assert!(
        line("mfu_matches_throughput", "lmdeploy").contains("PASS"),
        "{text}"
    );
    assert!(
        line("mfu_scales_with_throughput", "lmdeploy").contains("FAIL"),
        "{text}"
    );
}

#[test]
fn compare_prints_the_table_and_the_cost_formula() {
    let _g = serial();
    let slow = StreamServer::start(ServerConfig {
        token_ms: 4.0,
        ..ServerConfig::default()
    });
    let fast = StreamServer::start(ServerConfig {
        token_ms: 2.0,
        ..ServerConfig::default()
    });
    let a = telemetry_run(&slow, &[]);
    let b = telemetry_run(&fast, &[]);
    assert_eq!((a.code, b.code), (0, 0), "{}\n{}", a.stderr, b.stderr);
    let out = std::process::Command::new(gapscope_testkit::loadgen_bin())
        .arg("compare")
        .arg(a.path("results.json"))
        .arg(b.path("results.json"))
        .args(["--labels", "bentoml,lmdeploy", "--daily-tokens", "1e9"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("| metric | bentoml | lmdeploy | lmdeploy vs bentoml |"),
        "{text}"
    );
    let (ta, tb) = (
        a.phase("stress")["throughput"]["output_tokens_per_s"]
            .as_f64()
            .unwrap(),
        b.phase("stress")["throughput"]["output_tokens_per_s"]
            .as_f64()
            .unwrap(),
    );
    assert!(
        text.contains(&format!("| output tokens/s | {ta:.1} | {tb:.1} |")),
        "{text}"
    );
    assert!(
        text.contains(&format!("better, {:.2}×)", tb / ta)),
        "{text}"
    );
    assert!(text.contains("Formula: $/M tokens = $/GPU-hour"), "{text}");
    assert!(text.contains("1.0 billion output tokens a day"), "{text}");
    // A file that is not a results document is refused with the fix.
    let out = std::process::Command::new(gapscope_testkit::loadgen_bin())
        .arg("compare")
        .arg(a.path("requests.jsonl"))
        .arg(b.path("results.json"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("; fix: "));
}

#[test]
fn phases_are_announced_to_gapscoped() {
    let _g = serial();
    let server = StreamServer::start(ServerConfig::default());
    let run = loadgen(&[
        "--url",
        &server.url("/v1/completions"),
        "--phase",
        "warm=constant:10:1s",
        "--phase",
        "quiet=silence:1s",
        "--max-tokens",
        "4",
        "--gapscoped",
        &server.url(""),
        "--gapscoped-service",
        "stack-a",
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    // Start and end of each phase, and the tokens once a second, each
    // naming the service the run loads.
    let log = server.log.lock().unwrap();
    assert!(
        log.annotations.iter().all(|n| n["service"] == "stack-a"),
        "{:?}",
        log.annotations
    );
    assert!(
        run.stdout.contains(&format!(
            "phase annotations posted to gapscoped: {} (0 failed)",
            log.annotations.len()
        )),
        "{}",
        run.stdout
    );
    let edges = log
        .annotations
        .iter()
        .filter(|n| n["event"] != "progress")
        .count();
    assert_eq!(edges, 4);
    for phase in ["warm", "quiet"] {
        let (a, b) = run.window(phase);
        for (event, at) in [("start", a), ("end", b)] {
            let note = log
                .annotations
                .iter()
                .find(|n| n["phase"] == phase && n["event"] == event)
                .expect("annotation posted");
            let t = note["monotonic_ns"].as_u64().unwrap();
            assert!(t.abs_diff(at) < 20_000_000, "{phase} {event}: {t} vs {at}");
            assert_eq!(note["run_id"], run.results()["run"]["run_id"]);
        }
    }
    // The output tokens counted so far ride along: none before the run,
    // all of them once the silent phase has let the last replies finish.
    let tokens = |phase: &str, event: &str| {
        log.annotations
            .iter()
            .find(|n| n["phase"] == phase && n["event"] == event)
            .unwrap()["output_tokens"]
            .as_u64()
            .unwrap()
    };
    let results = run.results();
    let total: u64 = results["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["output_tokens"].as_u64().unwrap())
        .sum();
    assert_eq!(tokens("warm", "start"), 0);
    assert!(total > 0);
    assert_eq!(tokens("quiet", "end"), total, "{results}");
}

/// A word-level tokenizer: every whitespace-separated word is one token.
const TOKENIZER: &str = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],"normalizer":null,
  "pre_tokenizer":{"type":"Whitespace"},"post_processor":null,"decoder":null,
  "model":{"type":"WordLevel","unk_token":"[UNK]","vocab":{"[UNK]":0,"t":1,"alpha":2,"bravo":3,"charlie":4,"delta":5,
  "echo":6,"foxtrot":7,"golf":8,"hotel":9,"india":10,"juliet":11,"kilo":12,"lima":13,"mike":14,"november":15,"oscar":16,
  "papa":17,"quebec":18,"romeo":19,"sierra":20,"tango":21}}}"#;

#[test]
fn a_tokenizer_makes_prompt_lengths_exact_and_counts_output() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let tok = dir.path().join("tokenizer.json");
    std::fs::write(&tok, TOKENIZER).unwrap();
    let server = StreamServer::start(ServerConfig::default());
    let run = loadgen(&[
        "--url",
        &server.url("/v1/completions"),
        "--phase",
        "s=closed:2:1s",
        "--max-tokens",
        "5",
        "--input-tokens",
        "40-60",
        "--tokenizer",
        tok.to_str().unwrap(),
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.results()["run"]["prompts"]["exact_lengths"], true);
    let requests = run.requests();
    for r in &requests {
        let n = r["prompt_tokens"].as_u64().unwrap();
        assert!((40..=60).contains(&n));
        // The server counts words: the same number.
        assert_eq!(r["usage_prompt_tokens"], n);
        assert_eq!(r["output_tokens"]["tokenizer"], 5);
    }
    let t = &run.phase("s")["tokens"];
    assert_eq!(
        (
            t["prompt_vs_usage"].as_u64(),
            t["usage_vs_tokenizer"].as_u64()
        ),
        (Some(0), Some(0))
    );
    assert_eq!(t["with_tokenizer"].as_u64(), Some(requests.len() as u64));
}

/// A real Prometheus (Debian's package) scraping the test exporter every
/// 500 ms; the load generator reads telemetry through its query API.
#[test]
fn telemetry_through_a_real_prometheus_server() {
    let _g = serial();
    let server = StreamServer::start(ServerConfig {
        token_ms: 2.0,
        ..ServerConfig::default()
    });
    let prometheus = gapscope_testkit::prometheus::Prometheus::start(
        &format!(
            "  - job_name: dcgm\n    static_configs:\n      - targets: ['127.0.0.1:{}']\n",
            server.port
        ),
        &[],
        "500ms",
    );
    let port = prometheus.port;
    // Ready once it has scraped the exporter at least twice.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let v = prometheus.query("count_over_time(DCGM_FI_DEV_POWER_USAGE[10s])");
        let n = v["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(0.0);
        if n >= 2.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "prometheus never scraped the exporter"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let run = loadgen(&[
        "--url",
        &server.url("/v1/completions"),
        "--phase",
        "stress=closed:4:4s",
        "--max-tokens",
        "16",
        "--telemetry",
        &format!("prometheus=http://127.0.0.1:{port}"),
        "--params",
        "8.03e9",
        "--gpu",
        "A40",
    ]);
    drop(prometheus);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let p = run.phase("stress");
    let t = &p["telemetry"];
    assert!(t["samples"].as_u64().unwrap() >= 3, "{t}");
    assert_eq!(t["avg_power_w"], 200.0);
    assert!((t["avg_utilization"].as_f64().unwrap() - 0.8).abs() < 1e-9);
    // The counter as Prometheus last scraped it: within a scrape interval.
    assert_eq!(t["energy_source"], "counter");
    let energy = t["energy_j"].as_f64().unwrap();
    let window = p["duration_s"].as_f64().unwrap();
    assert!(
        (energy / (200.0 * window) - 1.0).abs() < 0.15,
        "{energy} J in {window} s"
    );
}

/// A one-GPU server on a four-GPU host: `--gpu-ids` reads its GPU alone
/// (power 200 W, not 800 W; MFU and cost for one GPU); without it, all four
/// are summed and the run warns.
#[test]
fn telemetry_reads_the_selected_gpus_alone() {
    let _g = serial();
    let server = StreamServer::start(ServerConfig {
        token_ms: 2.0,
        gpus: 4,
        ..ServerConfig::default()
    });
    let one = telemetry_run(&server, &["--gpu-ids", "2", "--gpu", "A40"]);
    assert_eq!(one.code, 0, "{}\n{}", one.stdout, one.stderr);
    let all = telemetry_run(&server, &["--gpu", "A40"]);
    assert_eq!(all.code, 0, "{}\n{}", all.stdout, all.stderr);
    let (r1, r4) = (one.results(), all.results());
    let source = &r1["telemetry"]["source"];
    assert_eq!(source["gpus"], 1, "{source}");
    assert_eq!(source["gpus_reporting"], 4, "{source}");
    assert_eq!(source["gpu_selection"], "gpu in 2", "{source}");
    assert_eq!(
        source["gpus_used"],
        serde_json::json!(["gpu=2 UUID=GPU-00000000-test-2"])
    );
    assert_eq!(r1["model"]["gpus"], 1);
    assert_eq!(r4["model"]["gpus"], 4);
    assert!(!one.stderr.contains("GPUs report"), "{}", one.stderr);
    assert!(
        all.stderr.contains("4 GPUs report to") && all.stderr.contains("--gpu-ids"),
        "{}",
        all.stderr
    );
    let power = |r: &Value| r["phases"][1]["telemetry"]["avg_power_w"].as_f64().unwrap();
    assert_eq!((power(&r1), power(&r4)), (200.0, 800.0));
    // MFU per GPU: the same throughput on one GPU is 4× the MFU on four.
    let mfu_per_tps = |r: &Value| {
        let p = &r["phases"][1];
        p["mfu"].as_f64().unwrap() / p["throughput"]["output_tokens_per_s"].as_f64().unwrap()
    };
    assert!((mfu_per_tps(&r1) / mfu_per_tps(&r4) - 4.0).abs() < 1e-9);
    // A selection that matches nothing says what does report.
    let none = telemetry_run(&server, &["--gpu-uuid", "GPU-nope"]);
    let error = none.results()["telemetry"]["source"]["last_error"].clone();
    assert!(
        error.as_str().unwrap().contains("no GPU there matches")
            && error.as_str().unwrap().contains("GPU-00000000-test-3"),
        "{error}"
    );
}

/// An exporter's base URL (as gapscoped's is usually written) means its
/// `/metrics`.
#[test]
fn telemetry_takes_an_exporters_base_url() {
    let _g = serial();
    let server = StreamServer::start(ServerConfig {
        token_ms: 2.0,
        ..ServerConfig::default()
    });
    let url = server.url("/v1/completions");
    let base = format!("dcgm={}", server.url(""));
    let run = loadgen(&[
        "--url",
        &url,
        "--phase",
        "s=closed:2:2s",
        "--max-tokens",
        "8",
        "--telemetry",
        &base,
    ]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let source = &run.results()["telemetry"]["source"];
    assert_eq!(source["url"], server.url("/metrics"));
    assert_eq!(source["failed_scrapes"], 0, "{source}");
    assert!(source["samples"].as_u64().unwrap() >= 2, "{source}");
}

/// The client's own CPU per phase against the kernel's account of the
/// whole process (wait4's rusage): the phases' CPU is part of it, and most
/// of it (the phases are most of a run without a tokenizer); per request
/// it is the phase's CPU over the requests it sent, and the audit says
/// whether the client had CPU to spare.
#[test]
fn the_clients_own_cpu_is_reported_per_phase_against_the_kernels_account() {
    let _g = serial();
    let server = StreamServer::start(ServerConfig::default());
    let dir = tempfile::tempdir().unwrap();
    #[expect(
        clippy::zombie_processes,
        reason = "reaped by wait4 below, for its rusage"
    )]
    let child = std::process::Command::new(gapscope_testkit::loadgen_bin())
        .args(["--url", &server.url("/v1/completions")])
        .args(["--phase", "a=closed:8:2s", "--phase", "b=poisson:200:1s"])
        .args(["--max-tokens", "32", "--quiet", "--out"])
        .arg(dir.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 fills it for our child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = child.id() as libc::pid_t;
    // SAFETY: valid pointers; the child is ours and not yet reaped.
    assert_eq!(
        unsafe { libc::wait4(pid, &raw mut status, 0, &raw mut usage) },
        pid
    );
    assert_eq!(libc::WEXITSTATUS(status), 0);
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    let total = secs(usage.ru_utime) + secs(usage.ru_stime);
    let results: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("results.json")).unwrap())
            .unwrap();
    let mut in_phases = 0.0;
    for p in results["phases"].as_array().unwrap() {
        let c = &p["client"];
        let cpu = c["cpu_s"].as_f64().unwrap();
        in_phases += cpu;
        let sent = p["sent"].as_f64().unwrap();
        assert!(sent > 0.0, "{p:#}");
        let per = c["cpu_per_request_us"].as_f64().unwrap();
        assert!((per - cpu * 1e6 / sent).abs() < 1e-6 * per.max(1.0), "{c}");
        let share = c["cpu_share_of_threads"].as_f64().unwrap();
        let window = p["duration_s"].as_f64().unwrap();
        assert!(
            (share - cpu / window).abs() < 1e-9,
            "{c} over {window} s, 1 thread"
        );
        assert_eq!(c["threads"], 1);
        let check = results["audit"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["check"] == "client_not_the_bottleneck" && a["phase"] == p["name"])
            .unwrap_or_else(|| panic!("no client check for {}", p["name"]));
        assert_eq!(
            check["status"],
            if share >= 0.8 { "warn" } else { "pass" },
            "{check}"
        );
    }
    eprintln!("phases {in_phases:.3} s of the process's {total:.3} s CPU");
    assert!(
        in_phases <= total + 0.01,
        "phases {in_phases} s > process {total} s"
    );
    assert!(
        in_phases >= 0.5 * total,
        "phases {in_phases} s of {total} s"
    );
}
