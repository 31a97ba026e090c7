//! What one probed serialization call costs: a Python loop calling
//! `json.dumps` on a small document as fast as it can (targets/
//! serialization_probe.py `busy`, pyenv's CPython 3.11), with no daemon
//! and with gapscoped probing every call (budget raised so nothing is
//! sampled), interleaved in rounds within one run (the A/B harness,
//! `ab.rs`: the per-round difference's median and 95 % interval). The difference in time
//! per call is the price of one uprobe/uretprobe pair and the BPF programs
//! behind it.
//!
//! Run as root: `cargo run --release -p gapscope-bench --bin probe_cost`.
//! Writes bench/results/probe_cost.json.

use anyhow::bail;
use gapscope_bench::ab::{Bound, Harness, Report};
use gapscope_testkit::{Daemon, Workload, repo_root, require_root, target_python};

const ROUNDS: usize = 10;
const SECONDS: &str = "3";

/// json.dumps calls per second.
fn run(probed: bool) -> anyhow::Result<(f64, f64)> {
    let daemon = probed.then(|| {
        Daemon::start_with(
            "[python]\nserialization_budget = 100000000\n\
             [[service]]\nname = \"cost\"\ncmdline = \"serialization_probe.py .*--tag cost-bench\"\n",
            "bpf_stats = false",
        )
    });
    let script = repo_root().join("targets/serialization_probe.py");
    let mut w = Workload::spawn(
        &target_python(),
        &[
            script.to_str().unwrap(),
            "busy",
            SECONDS,
            "--tag",
            "cost-bench",
        ],
    );
    let label = [("service", "cost"), ("codec", "json"), ("op", "encode")];
    if let Some(d) = &daemon {
        d.wait_processes("cost", 1.0);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while d
            .scrape()
            .get_or_zero("gapscope_serialization_probed_files", &[])
            < 1.0
        {
            if std::time::Instant::now() > deadline {
                bail!("the json probe never attached");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
    let out = w.go();
    let truth: serde_json::Value = serde_json::from_str(&out[0])?;
    let made = truth["json_encode"]["calls"].as_f64().unwrap_or(0.0);
    let counted = daemon.as_ref().map_or(0.0, |d| {
        d.scrape()
            .get_or_zero("gapscope_serialization_duration_seconds_count", &label)
    });
    w.finish();
    Ok((made / SECONDS.parse::<f64>()?, counted))
}

fn main() -> anyhow::Result<()> {
    require_root();
    let mut harness = Harness::from_args("probe_cost", &["no_daemon", "probed"], ROUNDS)?;
    let mut counted_all = true;
    let samples = harness.run("json.dumps calls/s", |config, _| {
        let (rate, counted) = run(config == "probed")?;
        if config == "probed" && counted <= 0.0 {
            counted_all = false;
        }
        Ok(rate)
    })?;
    let mut report = Report::new(&harness, &samples);
    report
        .compare(
            "ns per probed call",
            &["no_daemon", "probed"],
            |r| 1e9 / r["probed"] - 1e9 / r["no_daemon"],
            Bound::None,
        )
        .compare(
            "ns per uprobe hit (half a call's pair)",
            &["no_daemon", "probed"],
            |r| (1e9 / r["probed"] - 1e9 / r["no_daemon"]) / 2.0,
            Bound::None,
        )
        .extra(
            "workload",
            serde_json::json!("json.dumps of a two-key dict in a loop, CPython 3.11 (pyenv)"),
        )
        .extra(
            "every_probed_run_counted_calls",
            serde_json::json!(counted_all),
        );
    report.finish()?;
    Ok(())
}
