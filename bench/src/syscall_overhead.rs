//! What tracing costs a process, per syscall, on a tight `getppid` loop.
//!
//! Every configuration runs in each round, interleaved, so machine noise
//! hits them alike; the medians and the ratios between them are written to
//! `bench/results/syscall_overhead.json`.
//!
//! * `baseline` — nothing attached.
//! * `floor` — empty programs on the same raw tracepoints gapscoped uses:
//!   what any program there costs before it runs an instruction.
//! * `gapscoped` — the process traced by gapscoped (BPF statistics off,
//!   as they cost every program on the host while on).
//! * `gapscoped_bpf_stats` — the same with BPF statistics on (the default).
//! * `untraced` — an untraced process while gapscoped (statistics off)
//!   traces another: the
//!   early exit on the tgid map should be all it pays.
//! * `bpftrace` — Debian's bpftrace doing the equivalent: a per-thread count
//!   and a latency histogram, filtered to the pid.
//!
//! Run as root: `cargo run --release -p gapscope-bench --bin syscall_overhead`.
//! Targets: gapscoped's overhead at most half of bpftrace's; the untraced
//! process's overhead within 10 % of the floor's.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail};
use aya::{EbpfLoader, programs::RawTracePoint};
use gapscope_testkit::{Daemon, Workload, require_root};

const CALLS: u64 = 1_000_000;
const ROUNDS: usize = 11;
const CONFIGS: [&str; 6] = [
    "baseline",
    "floor",
    "gapscoped",
    "gapscoped_bpf_stats",
    "untraced",
    "bpftrace",
];

/// Runs the spin loop in a fresh process once it may start; ns per call.
fn spin(w: &mut Workload) -> anyhow::Result<f64> {
    let lines = w.go();
    let line = lines.iter().find_map(|l| l.strip_prefix("ns_per_call "));
    line.context("spin printed no ns_per_call")?
        .parse()
        .context("parsing ns_per_call")
}

fn spinner(tag: &str) -> Workload {
    Workload::start(&format!("spin --wait --getppid {CALLS} --tag {tag}"))
}

/// Spin once and let the process exit.
fn measure(tag: &str, before_go: impl FnOnce(&Workload)) -> anyhow::Result<f64> {
    let mut w = spinner(tag);
    before_go(&w);
    let ns = spin(&mut w);
    w.finish();
    ns
}

fn baseline() -> anyhow::Result<f64> {
    measure("bench-baseline", |_| {})
}

fn floor() -> anyhow::Result<f64> {
    let mut ebpf = EbpfLoader::new().load(gapscoped::bpf::FLOOR_OBJECT)?;
    for (name, tp) in [
        ("gs_floor_enter", "sys_enter"),
        ("gs_floor_exit", "sys_exit"),
    ] {
        let p: &mut RawTracePoint = ebpf.program_mut(name).context(name)?.try_into()?;
        p.load()?;
        p.attach(tp)?;
    }
    let ns = measure("bench-floor", |_| {});
    drop(ebpf);
    ns
}

fn traced(bpf_stats: bool) -> anyhow::Result<(f64, f64)> {
    let daemon = Daemon::start_with(
        "[[service]]\nname = \"bench\"\ncmdline = \"--tag bench-traced( |$)\"\n",
        &format!("bpf_stats = {bpf_stats}"),
    );
    let ns = measure("bench-traced", |_| daemon.wait_processes("bench", 1.0))?;
    let counted = daemon.scrape().get_or_zero(
        "gapscope_syscall_duration_seconds_count",
        &[("service", "bench"), ("syscall", "getppid")],
    );
    Ok((ns, counted))
}

fn untraced() -> anyhow::Result<f64> {
    let daemon = Daemon::start_with(
        "[[service]]\nname = \"other\"\ncmdline = \"--tag bench-other( |$)\"\n",
        "bpf_stats = false",
    );
    // Something is traced, so the maps are not empty.
    let other = spinner("bench-other");
    daemon.wait_processes("other", 1.0);
    let ns = measure("bench-untraced", |_| {});
    other.finish();
    ns
}

fn bpftrace() -> anyhow::Result<f64> {
    let mut w = spinner("bench-bpftrace");
    let pid = w.pid();
    let script = format!(
        "tracepoint:raw_syscalls:sys_enter /pid == {pid}/ {{ @start[tid] = nsecs; }}\n\
         tracepoint:raw_syscalls:sys_exit /pid == {pid} && @start[tid]/ {{\n\
           @calls[tid] = count(); @latency = hist(nsecs - @start[tid]); delete(@start[tid]);\n\
         }}"
    );
    let mut bt = Command::new("bpftrace")
        .args(["-e", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("bpftrace (Debian package bpftrace) is installed by scripts/setup.sh")?;
    let mut out = BufReader::new(bt.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line)?;
    if !line.starts_with("Attaching") {
        bail!("bpftrace did not attach: {line:?}");
    }
    std::thread::sleep(Duration::from_millis(300));
    let ns = spin(&mut w);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(bt.id() as i32, libc::SIGINT) };
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut out, &mut rest);
    bt.wait()?;
    w.finish();
    if !rest.contains("@calls[") {
        bail!("bpftrace counted nothing; its output: {rest}");
    }
    ns
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}

fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

fn main() -> anyhow::Result<()> {
    require_root();
    // `--rounds N` and `--only a,b` narrow a run down while investigating;
    // the JSON is written only for a full run.
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
    };
    let rounds: usize = match flag("--rounds") {
        Some(r) => r.parse().context("--rounds takes a number")?,
        None => ROUNDS,
    };
    let only: Vec<&str> = flag("--only").map_or(CONFIGS.to_vec(), |o| o.split(',').collect());
    if let Some(bad) = only.iter().find(|c| !CONFIGS.contains(c)) {
        bail!(
            "--only: unknown configuration {bad}; use some of {}",
            CONFIGS.join(",")
        );
    }
    let mut samples: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut counted = Vec::new();
    for round in 1..=rounds {
        for config in CONFIGS.into_iter().filter(|c| only.contains(c)) {
            let ns = match config {
                "baseline" => baseline()?,
                "floor" => floor()?,
                "gapscoped" => {
                    let (ns, n) = traced(false)?;
                    counted.push(n);
                    ns
                }
                "gapscoped_bpf_stats" => traced(true)?.0,
                "untraced" => untraced()?,
                "bpftrace" => bpftrace()?,
                _ => unreachable!(),
            };
            eprintln!("round {round}: {config:<20} {ns:8.1} ns/syscall");
            samples.entry(config).or_default().push(ns);
        }
    }
    if only.len() < CONFIGS.len() {
        return Ok(());
    }
    // The fastest run of each configuration is its cost: on a shared VM,
    // noise only ever adds time. Medians, and ratios taken within each
    // round, are reported beside it.
    let best: BTreeMap<&str, f64> = samples.iter().map(|(k, v)| (*k, min(v))).collect();
    let med: BTreeMap<&str, f64> = samples.iter().map(|(k, v)| (*k, median(v))).collect();
    let overhead = |c: &str| best[c] - best["baseline"];
    let overhead_median = |c: &str| med[c] - med["baseline"];
    // Runs of one round follow each other within seconds, so a ratio
    // taken inside each round cancels the machine's slower drifts.
    let paired = |a: &str, b: &str| -> f64 {
        let ratios: Vec<f64> = (0..rounds)
            .map(|r| {
                let base = samples["baseline"][r];
                (samples[a][r] - base) / (samples[b][r] - base)
            })
            .collect();
        median(&ratios)
    };
    let report = serde_json::json!({
        "benchmark": "syscall_overhead",
        "calls_per_run": CALLS,
        "rounds": ROUNDS,
        "ns_per_syscall_best": best,
        "ns_per_syscall_median": med,
        "ns_per_syscall_samples": samples,
        "overhead_ns": {
            "floor": overhead("floor"),
            "gapscoped": overhead("gapscoped"),
            "gapscoped_bpf_stats": overhead("gapscoped_bpf_stats"),
            "untraced": overhead("untraced"),
            "bpftrace": overhead("bpftrace"),
        },
        "ratios": {
            "gapscoped_over_bpftrace": overhead("gapscoped") / overhead("bpftrace"),
            "gapscoped_bpf_stats_over_bpftrace": overhead("gapscoped_bpf_stats") / overhead("bpftrace"),
            "untraced_over_floor": overhead("untraced") / overhead("floor"),
        },
        "ratios_of_medians": {
            "gapscoped_over_bpftrace": overhead_median("gapscoped") / overhead_median("bpftrace"),
            "untraced_over_floor": overhead_median("untraced") / overhead_median("floor"),
        },
        "median_of_per_round_ratios": {
            "gapscoped_over_bpftrace": paired("gapscoped", "bpftrace"),
            "untraced_over_floor": paired("untraced", "floor"),
        },
        "targets": {
            "gapscoped_over_bpftrace_at_most": 0.5,
            "untraced_over_floor_at_most": 1.1,
        },
        "gapscoped_counted_exactly": counted.iter().all(|n| *n == CALLS as f64),
    });
    let dir = gapscope_testkit::repo_root().join("bench/results");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("syscall_overhead.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    eprintln!("wrote {}", path.display());
    Ok(())
}
