//! Gapscope's GIL figures next to py-spy's, on the same two-thread
//! workload at the same time: two CPU-bound threads of pyenv's CPython 3.11
//! (targets/.venv) take turns with the GIL for a few seconds while
//! gapscoped traces the process and py-spy samples it twice, once for all
//! stacks (`--idle`) and once only for stacks holding the GIL (`--gil`).
//!
//! py-spy's held fraction per thread = GIL samples / all samples.
//! Gapscope's: the GIL is held `held / wall` of the time in all, and each
//! thread waited `wait / (threads * wall)` on average, so each held it
//! about `(held / wall) / threads`.
//!
//! Run as root: `cargo run --release -p gapscope-bench --bin gil_crosscheck`.
//! Writes bench/results/gil_crosscheck.json.

use std::{
    collections::BTreeMap,
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};
use gapscope_testkit::{Daemon, Workload, repo_root, require_root, target_python};

const SECONDS: u32 = 6;
const SAMPLED_SECONDS: u32 = 4;

/// Samples per thread in a py-spy raw profile.
fn samples_per_thread(raw: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in raw.lines() {
        let Some((stack, count)) = line.rsplit_once(' ') else {
            continue;
        };
        let thread = stack.split(';').next().unwrap_or(stack).to_string();
        *out.entry(thread).or_default() += count.parse::<f64>().unwrap_or(0.0);
    }
    out
}

fn py_spy(pid: u32, gil_only: bool, out: &std::path::Path) -> anyhow::Result<std::process::Child> {
    let py_spy = repo_root().join("targets/.venv/bin/py-spy");
    let mut cmd = Command::new(&py_spy);
    cmd.args([
        "record",
        "--pid",
        &pid.to_string(),
        "--duration",
        &SAMPLED_SECONDS.to_string(),
    ])
    .args([
        "--rate",
        "200",
        "--format",
        "raw",
        "--threads",
        "--nonblocking",
        "-o",
    ])
    .arg(out)
    .arg(if gil_only { "--gil" } else { "--idle" })
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    cmd.spawn()
        .with_context(|| format!("{} (scripts/setup.sh installs it)", py_spy.display()))
}

fn main() -> anyhow::Result<()> {
    require_root();
    let daemon = Daemon::start(
        "[[service]]\nname = \"gil\"\ncmdline = \"gil_probe.py .*--tag gil-bench\"\n",
    );
    let script = repo_root().join("targets/gil_probe.py");
    let seconds = SECONDS.to_string();
    let mut w = Workload::spawn(
        &target_python(),
        &[
            script.to_str().unwrap(),
            "two_cpu",
            "--seconds",
            &seconds,
            "--tag",
            "gil-bench",
        ],
    );
    daemon.wait_processes("gil", 1.0);
    std::thread::sleep(std::time::Duration::from_millis(500));
    let before = daemon.scrape();
    let dir = tempfile::tempdir()?;
    let (all_path, gil_path) = (dir.path().join("all.txt"), dir.path().join("gil.txt"));
    let pid = w.pid();
    let go = std::thread::spawn(move || {
        let out = w.go();
        (w, out)
    });
    // Let the threads start, then sample the middle of the run.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let t0 = std::time::Instant::now();
    let mut all = py_spy(pid, false, &all_path)?;
    let mut gil = py_spy(pid, true, &gil_path)?;
    all.wait()?;
    gil.wait()?;
    let sampled = t0.elapsed().as_secs_f64();
    let (w, out) = go
        .join()
        .map_err(|_| anyhow::anyhow!("workload thread panicked"))?;
    let after = daemon.scrape();
    w.finish();

    let truth: serde_json::Value = serde_json::from_str(out.first().context("no report")?)?;
    let wall = truth["wall"].as_f64().context("wall")?;
    let threads = truth["threads"].as_f64().context("threads")?;
    let l = [("service", "gil")];
    let delta = |name: &str| after.get_or_zero(name, &l) - before.get_or_zero(name, &l);
    let held = delta("gapscope_gil_held_seconds_total");
    let wait = delta("gapscope_gil_wait_seconds_sum");

    let all_samples = samples_per_thread(&std::fs::read_to_string(&all_path)?);
    let gil_samples = samples_per_thread(&std::fs::read_to_string(&gil_path)?);
    if all_samples.is_empty() {
        bail!("py-spy recorded nothing");
    }
    let py_spy_held: BTreeMap<&String, f64> = all_samples
        .iter()
        .filter(|(_, n)| **n > 0.0)
        .map(|(t, n)| (t, gil_samples.get(t).copied().unwrap_or(0.0) / n))
        .collect();
    let py_spy_spinners: Vec<f64> = py_spy_held
        .iter()
        .filter(|(t, _)| t.contains("(spin)"))
        .map(|(_, f)| *f)
        .collect();
    let report = serde_json::json!({
        "benchmark": "gil_crosscheck",
        "workload": "two CPU-bound threads, CPython 3.11 (pyenv)",
        "wall_seconds": wall,
        "py_spy_sampled_seconds": sampled,
        "gapscope": {
            "gil_held_fraction_of_wall": held / wall,
            "gil_held_fraction_per_thread": held / wall / threads,
            "gil_wait_fraction_per_thread": wait / wall / threads,
        },
        "py_spy": {
            "gil_held_fraction_per_thread": py_spy_held,
            "gil_held_fraction_of_wall": py_spy_spinners.iter().sum::<f64>(),
        },
    });
    let path = repo_root().join("bench/results/gil_crosscheck.json");
    std::fs::create_dir_all(path.parent().unwrap())?;
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
