//! What one probed serialization call costs: a Python loop calling
//! `json.dumps` on a small document as fast as it can (targets/
//! serialization_probe.py `busy`, pyenv's CPython 3.11), with no daemon
//! and with gapscoped probing every call (budget raised so nothing is
//! sampled), interleaved in rounds within one run. The difference in time
//! per call is the price of one uprobe/uretprobe pair and the BPF programs
//! behind it.
//!
//! Run as root: `cargo run --release -p gapscope-bench --bin probe_cost`.
//! Writes bench/results/probe_cost.json.

use std::collections::BTreeMap;

use anyhow::bail;
use gapscope_testkit::{Daemon, Workload, repo_root, require_root, target_python};

const ROUNDS: usize = 5;
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
    let mut rates: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for round in 1..=ROUNDS {
        for (name, probed) in [("no_daemon", false), ("probed", true)] {
            let (rate, counted) = run(probed)?;
            eprintln!("round {round}: {name:<10} {rate:10.0} calls/s ({counted} counted)");
            rates.entry(name).or_default().push(rate);
        }
    }
    let best = |v: &Vec<f64>| v.iter().copied().fold(0.0, f64::max);
    let ns_per_call = |name: &str| 1e9 / best(&rates[name]);
    let pair = ns_per_call("probed") - ns_per_call("no_daemon");
    let report = serde_json::json!({
        "benchmark": "probe_cost",
        "workload": "json.dumps of a two-key dict in a loop, CPython 3.11 (pyenv)",
        "rounds": ROUNDS,
        "calls_per_second_samples": rates,
        "ns_per_call_best": {
            "no_daemon": ns_per_call("no_daemon"),
            "probed": ns_per_call("probed"),
        },
        "ns_per_probed_call": pair,
        "ns_per_uprobe_hit_approx": pair / 2.0,
    });
    let path = repo_root().join("bench/results/probe_cost.json");
    std::fs::create_dir_all(path.parent().unwrap())?;
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
