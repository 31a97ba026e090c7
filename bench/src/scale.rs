//! How gapscoped's own cost grows with what it watches. Each point runs a
//! fresh gapscoped (BPF statistics always on, so the programs' kernel
//! time is measured, not sampled) beside `gapscope-workload pace`
//! processes, and measures over a window: gapscoped's CPU (user + system
//! from /proc) as a share of one core, its programs' kernel time as a
//! share, the events it handled a second, its RSS (VmRSS and the peak,
//! VmHWM) and the events dropped.
//!
//! * `services`: 1, 8 and 64 traced services, one process each making
//!   1,000 getppid calls a second;
//! * `threads`: one traced process whose 10, 100 or 1,000 threads make
//!   10,000 calls a second between them, each waking every 100 ms;
//! * `execs`: 100 short-lived processes a second exec'd and exiting under
//!   a traced service (10,000 calls a second beside them), against none;
//! * `rate`: one traced thread at 10 k, 100 k and 1 M calls a second.
//!
//! Targets: RSS at most 64 MiB at every point; gapscoped at most 2 % of one
//! core at 100 k events a second; growth with services and threads no
//! worse than linear (the exponent of CPU against the count, from the
//! smallest to the largest, at most 1).
//!
//! Run as root: `cargo build --release --workspace &&
//! ./target/release/scale [--repeats 3] [--seconds 5]`. Writes
//! bench/results/scale.json (medians of the repeats).

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use gapscope_bench::{
    ab::median,
    host::{cpu_seconds, status_field},
};
use gapscope_testkit::{Daemon, Metrics, Workload, repo_root, require_root};
use serde_json::{Value, json};

/// One point of a dimension.
struct Point {
    dimension: &'static str,
    /// The count that grows (services, threads, execs/s, calls/s).
    x: f64,
    services: usize,
    /// `pace` arguments for each service's process.
    pace: String,
}

fn points() -> Vec<Point> {
    let mut v = Vec::new();
    for n in [1u32, 8, 64] {
        v.push(Point {
            dimension: "services",
            x: f64::from(n),
            services: n as usize,
            pace: "--rate 1000 --threads 1".into(),
        });
    }
    for n in [10, 100, 1000] {
        v.push(Point {
            dimension: "threads",
            x: f64::from(n),
            services: 1,
            pace: format!("--rate 10000 --threads {n} --tick-ms 100"),
        });
    }
    for e in [0, 100] {
        v.push(Point {
            dimension: "execs_per_second",
            x: f64::from(e),
            services: 1,
            pace: format!("--rate 10000 --threads 1 --execs {e}"),
        });
    }
    for r in [10_000, 100_000, 1_000_000] {
        v.push(Point {
            dimension: "calls_per_second",
            x: f64::from(r),
            services: 1,
            pace: format!("--rate {r} --threads 1"),
        });
    }
    v
}

struct Sample {
    daemon_core: f64,
    bpf_core: f64,
    events_per_s: f64,
    dropped: f64,
    rss: f64,
    peak_rss: f64,
    calls_made: f64,
}

fn run(p: &Point, seconds: f64) -> anyhow::Result<Sample> {
    let services: String = (0..p.services)
        .map(|i| format!("[[service]]\nname = \"s{i}\"\ncmdline = \"--tag scale-{i}( |$)\"\n"))
        .collect();
    let daemon = Daemon::start_with(&services, "bpf_stats = true");
    // Long enough for the settle and the window; each prints its calls.
    let span = seconds + 3.0;
    let mut workloads: Vec<Workload> = (0..p.services)
        .map(|i| {
            let args = format!("pace --wait --seconds {span} {} --tag scale-{i}", p.pace);
            Workload::start(&args)
        })
        .collect();
    for i in 0..p.services {
        daemon.wait_processes(&format!("s{i}"), 1.0);
    }
    for w in &mut workloads {
        w.send_go();
    }
    std::thread::sleep(Duration::from_secs(1));
    let pid = daemon.child.id();
    let (m0, c0, t0) = (daemon.scrape(), cpu_seconds(pid), Instant::now());
    std::thread::sleep(Duration::from_secs_f64(seconds));
    let (m1, c1, took) = (
        daemon.scrape(),
        cpu_seconds(pid),
        t0.elapsed().as_secs_f64(),
    );
    let (rss, peak_rss) = (
        status_field(pid, "VmRSS:") * 1024.0,
        status_field(pid, "VmHWM:") * 1024.0,
    );
    let mut calls = 0.0;
    for mut w in workloads {
        let out = w.wait_output();
        calls += out
            .iter()
            .find_map(|l| l.strip_prefix("calls ")?.parse::<f64>().ok())
            .context("pace printed no calls")?;
    }
    let delta = |m0: &Metrics, m1: &Metrics, name: &str| m1.sum(name, &[]) - m0.sum(name, &[]);
    Ok(Sample {
        daemon_core: (c1 - c0) / took,
        bpf_core: delta(&m0, &m1, "gapscope_bpf_program_run_seconds_total") / took,
        events_per_s: delta(&m0, &m1, "gapscope_events_total") / took,
        dropped: delta(&m0, &m1, "gapscope_events_dropped_total"),
        rss,
        peak_rss,
        calls_made: calls,
    })
}

fn main() -> anyhow::Result<()> {
    require_root();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str, default: f64| -> anyhow::Result<f64> {
        match args.iter().position(|a| a == name) {
            Some(i) => args
                .get(i + 1)
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("{name} takes a number")),
            None => Ok(default),
        }
    };
    let repeats = flag("--repeats", 3.0)? as usize;
    let seconds = flag("--seconds", 5.0)?;
    if repeats == 0 || seconds <= 0.0 {
        bail!("--repeats and --seconds must be positive");
    }
    let points = points();
    // Repeats go round the points, so drifts touch every point alike.
    let mut samples: Vec<Vec<Sample>> = points.iter().map(|_| Vec::new()).collect();
    for r in 0..repeats {
        for (i, p) in points.iter().enumerate() {
            let s = run(p, seconds)?;
            eprintln!(
                "repeat {r}: {} = {}: gapscoped {:.2} % of a core, BPF {:.2} %, {:.0} events/s, RSS {:.1} MiB (peak {:.1}), {} dropped",
                p.dimension,
                p.x,
                100.0 * s.daemon_core,
                100.0 * s.bpf_core,
                s.events_per_s,
                s.rss / 1048576.0,
                s.peak_rss / 1048576.0,
                s.dropped
            );
            samples[i].push(s);
        }
    }
    let pick =
        |s: &[Sample], f: &dyn Fn(&Sample) -> f64| median(&s.iter().map(f).collect::<Vec<_>>());
    let mut table = Vec::new();
    println!(
        "{:<18} {:>9} {:>12} {:>10} {:>12} {:>10} {:>9}",
        "dimension", "x", "gapscoped %", "BPF %", "events/s", "RSS MiB", "dropped"
    );
    for (p, s) in points.iter().zip(&samples) {
        let row = json!({
            "dimension": p.dimension,
            "x": p.x,
            "services": p.services,
            "pace": p.pace,
            "gapscoped_core_share": pick(s, &|s| s.daemon_core),
            "bpf_core_share": pick(s, &|s| s.bpf_core),
            "events_per_second": pick(s, &|s| s.events_per_s),
            "events_dropped": pick(s, &|s| s.dropped),
            "rss_bytes": pick(s, &|s| s.rss),
            "peak_rss_bytes": s.iter().map(|s| s.peak_rss).fold(0.0, f64::max),
            "calls_made": pick(s, &|s| s.calls_made),
        });
        println!(
            "{:<18} {:>9} {:>12.3} {:>10.3} {:>12.0} {:>10.1} {:>9}",
            p.dimension,
            p.x,
            100.0 * row["gapscoped_core_share"].as_f64().unwrap_or(f64::NAN),
            100.0 * row["bpf_core_share"].as_f64().unwrap_or(f64::NAN),
            row["events_per_second"].as_f64().unwrap_or(f64::NAN),
            row["peak_rss_bytes"].as_f64().unwrap_or(f64::NAN) / 1048576.0,
            row["events_dropped"]
        );
        table.push(row);
    }
    let at = |dim: &str, x: f64, key: &str| -> f64 {
        table
            .iter()
            .find(|r| r["dimension"] == dim && r["x"].as_f64() == Some(x))
            .and_then(|r| r[key].as_f64())
            .unwrap_or(f64::NAN)
    };
    // CPU ∝ count^k between the smallest and largest count: k ≤ 1 is linear or better.
    let exponent = |dim: &str, lo: f64, hi: f64| {
        let (a, b) = (
            at(dim, lo, "gapscoped_core_share"),
            at(dim, hi, "gapscoped_core_share"),
        );
        (b / a).ln() / (hi / lo).ln()
    };
    let peak_rss = table
        .iter()
        .filter_map(|r| r["peak_rss_bytes"].as_f64())
        .fold(0.0, f64::max);
    let at_100k = at("calls_per_second", 100_000.0, "gapscoped_core_share");
    let (services_k, threads_k) = (
        exponent("services", 1.0, 64.0),
        exponent("threads", 10.0, 1000.0),
    );
    let verdict = |ok: bool| if ok { "holds" } else { "fails" };
    let targets = json!({
        "peak_rss_at_most_64_mib": {"measured_mib": peak_rss / 1048576.0,
                                    "verdict": verdict(peak_rss <= 64.0 * 1048576.0)},
        "core_share_at_100k_calls_at_most_2_percent": {"measured": at_100k,
                                                       "verdict": verdict(at_100k <= 0.02)},
        "services_growth_exponent_at_most_1": {"measured": services_k, "verdict": verdict(services_k <= 1.0)},
        "threads_growth_exponent_at_most_1": {"measured": threads_k, "verdict": verdict(threads_k <= 1.0)},
    });
    println!("targets: {targets}");
    let doc: Value = json!({
        "benchmark": "scale",
        "repeats": repeats,
        "window_seconds": seconds,
        "method": "a fresh gapscoped a point (bpf_stats = true); repeats go round the points; medians",
        "points": table,
        "targets": targets,
    });
    let path = repo_root().join("bench/results/scale.json");
    std::fs::create_dir_all(path.parent().unwrap())?;
    std::fs::write(&path, serde_json::to_string_pretty(&doc)?)?;
    println!("wrote {}", path.display());
    Ok(())
}
