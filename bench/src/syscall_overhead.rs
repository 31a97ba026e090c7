//! What tracing costs a process, per syscall, on a tight `getppid` loop.
//!
//! Every configuration runs in each round, interleaved, so machine noise
//! hits them alike; the medians, the ratios between them and their
//! intervals are written to `bench/results/syscall_overhead.json`.
//!
//! * `baseline` — nothing attached.
//! * `floor` — empty programs on the same raw tracepoints gapscoped uses:
//!   what any program there costs before it runs an instruction.
//! * `gapscoped` — the process traced by gapscoped (BPF statistics off,
//!   as they cost every program on the host while on).
//! * `gapscoped_bpf_stats` — the same with BPF statistics always on
//!   (`bpf_stats = true`; the default samples them one second a minute).
//! * `untraced` — an untraced process while gapscoped (statistics off)
//!   traces another: the
//!   early exit on the tgid map should be all it pays.
//! * `bpftrace` — Debian's bpftrace doing the equivalent: a per-thread count
//!   and a latency histogram, filtered to the pid.
//!
//! Run as root: `cargo run --release -p gapscope-bench --bin syscall_overhead`
//! (`--rounds N`, `--only a,b` to investigate; rounds and intervals: the A/B
//! harness, `ab.rs`). Targets, on overheads over the same round's
//! baseline: gapscoped's at most half of bpftrace's and at most twice the
//! floor's; the untraced process's within 10 % of the floor's.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail};
use aya::{EbpfLoader, programs::RawTracePoint};
use gapscope_bench::ab::{Bound, Harness, Report};
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

/// ns per traced syscall, getppid calls counted, and (with statistics
/// on) the kernel's ns per run of the syscall programs over the spin.
fn traced(bpf_stats: bool) -> anyhow::Result<(f64, f64, BTreeMap<String, f64>)> {
    let daemon = Daemon::start_with(
        "[[service]]\nname = \"bench\"\ncmdline = \"--tag bench-traced( |$)\"\n",
        &format!("bpf_stats = {bpf_stats}"),
    );
    let before = daemon.scrape();
    let ns = measure("bench-traced", |_| daemon.wait_processes("bench", 1.0))?;
    let after = daemon.scrape();
    let counted = after.get_or_zero(
        "gapscope_syscall_duration_seconds_count",
        &[("service", "bench"), ("syscall", "getppid")],
    );
    let mut per_run = BTreeMap::new();
    if bpf_stats {
        for program in ["gs_sys_enter", "gs_sys_exit"] {
            let d = |name: &str| {
                after.get_or_zero(name, &[("program", program)])
                    - before.get_or_zero(name, &[("program", program)])
            };
            let runs = d("gapscope_bpf_program_runs_total");
            per_run.insert(
                program.to_string(),
                d("gapscope_bpf_program_run_seconds_total") * 1e9 / runs.max(1.0),
            );
        }
    }
    Ok((ns, counted, per_run))
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

fn main() -> anyhow::Result<()> {
    require_root();
    let mut harness = Harness::from_args("syscall_overhead", &CONFIGS, ROUNDS)?;
    let mut counted = Vec::new();
    let mut program_ns: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let samples = harness.run("ns/syscall", |config, round| {
        Ok(match config {
            "baseline" => baseline()?,
            "floor" => floor()?,
            "gapscoped" => {
                let (ns, n, _) = traced(false)?;
                if round > 0 {
                    counted.push(n);
                }
                ns
            }
            "gapscoped_bpf_stats" => {
                let (ns, _, per_run) = traced(true)?;
                if round > 0 {
                    for (program, v) in per_run {
                        program_ns.entry(program).or_default().push(v);
                    }
                }
                ns
            }
            "untraced" => untraced()?,
            "bpftrace" => bpftrace()?,
            _ => bail!("unknown configuration {config}"),
        })
    })?;
    // Overheads are taken against the baseline of the same round, seconds
    // apart, which cancels the machine's slower drifts.
    let over = |r: &BTreeMap<&str, f64>, c: &str| r[c] - r["baseline"];
    // A ratio over an overhead that noise made zero or negative says
    // nothing: the round gives no figure (and the claim is not made).
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
    let mut report = Report::new(&harness, &samples);
    report
        .compare(
            "gapscoped / bpftrace (overhead)",
            &["baseline", "gapscoped", "bpftrace"],
            |r| ratio(over(r, "gapscoped"), over(r, "bpftrace")),
            Bound::AtMost(0.5),
        )
        .compare(
            "gapscoped / floor (overhead)",
            &["baseline", "gapscoped", "floor"],
            |r| ratio(over(r, "gapscoped"), over(r, "floor")),
            Bound::AtMost(2.0),
        )
        .compare(
            "untraced / floor (overhead)",
            &["baseline", "untraced", "floor"],
            |r| ratio(over(r, "untraced"), over(r, "floor")),
            Bound::AtMost(1.10),
        );
    for c in CONFIGS.iter().filter(|c| **c != "baseline") {
        report.compare(
            &format!("{c} overhead, ns"),
            &["baseline", c],
            |r| over(r, c),
            Bound::None,
        );
    }
    let best: BTreeMap<&str, f64> = samples
        .values
        .iter()
        .map(|(k, v)| (*k, v.iter().copied().fold(f64::INFINITY, f64::min)))
        .collect();
    report
        .extra("calls_per_run", serde_json::json!(CALLS))
        .extra("ns_per_syscall_best", serde_json::json!(best))
        .extra(
            "kernel_ns_per_program_run_median",
            serde_json::json!(
                program_ns
                    .iter()
                    .map(|(k, v)| (k.clone(), gapscope_bench::ab::median(v)))
                    .collect::<BTreeMap<_, _>>()
            ),
        )
        .extra(
            "gapscoped_counted_exactly",
            serde_json::json!(counted.iter().all(|n| *n == CALLS as f64)),
        );
    report.finish()?;
    Ok(())
}
