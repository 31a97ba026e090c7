//! What a finer timeline costs: the launch-bound simulated serving loop
//! (`targets/sim_decode.py`: six short kernels a step through the real
//! agent and the CUPTI stand-in, a detokenizer thread competing for the
//! GIL, json each step, a client wait every eighth) traced with
//! `[timeline] min_interval_us` at 1000 (the old default) and at 100,
//! interleaved in rounds (the A/B harness, `ab.rs`). For each: gapscoped's CPU time (user + system,
//! from /proc) and the BPF programs' run time (`bpf_stats`) per second of
//! the run as a share of one core, the timeline intervals a second, and
//! the share of the GPU's idle time with a recorded cause (the explain
//! report's coverage). Target: what 100 µs adds over 1 ms (gapscoped and
//! its BPF programs together) at most 1 % of one core, the interval
//! inside the bound.
//!
//! Run as root: `cargo run --release -p gapscope-bench --bin resolution_cost`.
//! Writes bench/results/resolution_cost.json.

use std::{collections::BTreeMap, time::Duration};

use gapscope_bench::{
    ab::{self, Bound, Harness, Report},
    host::{context_switches, cpu_seconds},
};
use gapscope_testkit::{
    Daemon, Workload, fake_cuda::FakeCuda, http_get, pyenv_python, repo_root, require_root,
};
use serde_json::{Value, json};

const ROUNDS: usize = 10;
const SECONDS: u64 = 8;

struct Sample {
    daemon_core: f64,
    bpf_core: f64,
    intervals_per_s: f64,
    switches_per_s: f64,
    observed_share: f64,
    steps_per_s: f64,
}

fn run(fixture: &FakeCuda, cupti: &std::path::Path, threshold_us: u64, round: usize) -> Sample {
    let socket = format!("/tmp/gapscope-resolution-{}.sock", std::process::id());
    let daemon = Daemon::start_with(
        "[[service]]\nname = \"simres\"\ncmdline = 'sim_decode\\.py .*--service simres'\n",
        &format!(
            "bpf_stats = true\n[timeline]\nmin_interval_us = {threshold_us}\n[inject]\nsocket = \"{socket}\"\n"
        ),
    );
    let url = format!("http://127.0.0.1:{}", daemon.port);
    let run_id = format!("r{threshold_us}-{round}");
    let mut cmd = std::process::Command::new(pyenv_python(11));
    cmd.arg(repo_root().join("targets/sim_decode.py"))
        .arg(fixture.path(""))
        .args(["--seconds", &SECONDS.to_string(), "--gapscoped", &url])
        .args(["--run-id", &run_id, "--service", "simres"])
        .env("CUDA_INJECTION64_PATH", gapscope_testkit::inject_library())
        .env("GAPSCOPE_CUPTI_PATH", cupti)
        .env("GAPSCOPE_SOCKET", &socket);
    let mut w = Workload::spawn_command(cmd);
    daemon.wait_processes("simres", 1.0);
    std::thread::sleep(Duration::from_millis(500));
    let m0 = daemon.scrape();
    let cpu0 = cpu_seconds(daemon.child.id());
    let switches0 = context_switches(daemon.child.id());
    let out = w.go();
    let cpu1 = cpu_seconds(daemon.child.id());
    let switches1 = context_switches(daemon.child.id());
    let m1 = daemon.scrape();
    let v: Value = serde_json::from_str(&out[0]).unwrap();
    let seconds = (v["end_ns"].as_u64().unwrap() - v["start_ns"].as_u64().unwrap()) as f64 / 1e9;
    // Settled gaps: a second after the run.
    std::thread::sleep(Duration::from_secs(1));
    let body = http_get(daemon.port, "/api/v1/explain?service=simres&window=2m").unwrap();
    let report: Value = serde_json::from_str(&body).unwrap();
    let phase = report["phases"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["run_id"] == run_id.as_str()))
        .cloned()
        .unwrap_or(Value::Null);
    w.finish();
    let delta = |name: &str| m1.sum(name, &[]) - m0.sum(name, &[]);
    Sample {
        daemon_core: (cpu1 - cpu0) / seconds,
        bpf_core: delta("gapscope_bpf_program_run_seconds_total") / seconds,
        intervals_per_s: delta("gapscope_timeline_intervals_total") / seconds,
        switches_per_s: (switches1 - switches0) / seconds,
        observed_share: phase["gpu"][0]["coverage"]["observed_share"]
            .as_f64()
            .unwrap_or(f64::NAN),
        steps_per_s: v["steps"].as_f64().unwrap() / seconds,
    }
}

const CONFIGS: [&str; 2] = ["min_interval_1000us", "min_interval_100us"];

fn main() -> anyhow::Result<()> {
    require_root();
    let fixture = FakeCuda::build();
    let cupti = fixture
        .cupti("cupti-12.9")
        .map_err(|why| anyhow::anyhow!("the CUPTI stand-in cannot be built: {why}"))?;
    let mut harness = Harness::from_args("resolution_cost", &CONFIGS, ROUNDS)?;
    let mut side: BTreeMap<&str, Vec<Sample>> = BTreeMap::new();
    let samples = harness.run("share of one core (gapscoped + BPF)", |config, round| {
        let t = if config == CONFIGS[0] { 1000 } else { 100 };
        let s = run(&fixture, &cupti, t, round);
        println!(
            "threshold {t:>4} µs: gapscoped {:.2} % of a core, BPF {:.2} %, {:.0} intervals/s, gapscoped {:.0} context switches/s, {:.1} % of idle with a recorded cause, {:.0} steps/s",
            100.0 * s.daemon_core,
            100.0 * s.bpf_core,
            s.intervals_per_s,
            s.switches_per_s,
            100.0 * s.observed_share,
            s.steps_per_s
        );
        let total = s.daemon_core + s.bpf_core;
        if round > 0 {
            side.entry(config)
                .or_default()
                .push(s);
        }
        Ok(total)
    })?;
    let mut report = Report::new(&harness, &samples);
    report
        .compare(
            "extra core share, 100 µs over 1000 µs",
            &CONFIGS,
            |r| r[CONFIGS[1]] - r[CONFIGS[0]],
            Bound::AtMost(0.01),
        )
        .compare(
            "core share at 100 µs (all of it)",
            &[CONFIGS[1]],
            |r| r[CONFIGS[1]],
            Bound::None,
        );
    for (config, s) in &side {
        let pick = |f: &dyn Fn(&Sample) -> f64| ab::median(&s.iter().map(f).collect::<Vec<_>>());
        report.extra(
            config,
            json!({
                "gapscoped_core_share": pick(&|s| s.daemon_core),
                "bpf_core_share": pick(&|s| s.bpf_core),
                "intervals_per_second": pick(&|s| s.intervals_per_s),
                "gapscoped_context_switches_per_second": pick(&|s| s.switches_per_s),
                "observed_idle_share": pick(&|s| s.observed_share),
                "steps_per_second": pick(&|s| s.steps_per_s),
            }),
        );
    }
    report.extra(
        "workload",
        json!(format!(
            "targets/sim_decode.py for {SECONDS} s, deep mode; medians of the rounds"
        )),
    );
    report.finish()?;
    Ok(())
}
