//! What the attribution costs gapscoped: a synthetic, decode-shaped
//! stream fed to the explainer in-process, as the daemon's loop feeds it —
//! CUPTI busy stretches with a tiny gap between kernels (the launch path)
//! and, every decode step, one long gap in which the launching threads
//! wait for the GIL, serialize, sleep or poll (their timeline intervals).
//! Reports the CPU time per simulated second (the share of one core the
//! attribution would take at that rate), the time per gap, and checks the
//! books: busy + idle by cause = the simulated wall time.
//!
//! A warm-up run, then three of each, interleaved (the median reported):
//! at the default timeline resolution (1 ms: the stalls alone
//! reach the attribution) and at 100 µs, where each launcher's short
//! stretches on and off CPU during the step come too (`[timeline]
//! min_interval_us = 100`: ~4 000 intervals a second, about what the
//! daemon sends at 100 µs for the simulated decode loop of
//! `resolution_cost`, which measures the whole daemon's cost).
//!
//! `cargo run --release -p gapscope-bench --bin explain_cost` (no root).
//! Writes bench/results/explain_cost.json.

use gapscope_ebpf_common::{Interval, IntervalKind, OffCpuReason};
use gapscope_testkit::repo_root;
use gapscoped::{
    config::ExplainConfig,
    cupti::busy::Stretch,
    explain::{Explainer, ThreadNow},
};

const MS: u64 = 1_000_000;
const SIMULATED_S: u64 = 60;
/// Kernels per decode step and the step rate: 20 k kernels a second.
const KERNELS_PER_STEP: u64 = 400;
const STEPS_PER_S: u64 = 50;
const LAUNCHERS: u32 = 3;

fn interval(kind: u32, detail: u32, tid: u32, start_ns: u64, end_ns: u64) -> Interval {
    Interval {
        kind,
        detail,
        service: 0,
        tgid: 100,
        tid,
        _pad: 0,
        start_ns,
        end_ns,
    }
}

/// The run whose share of a core is the median.
fn median_run(mut runs: Vec<serde_json::Value>) -> serde_json::Value {
    let share = |r: &serde_json::Value| r["share_of_one_core"].as_f64().unwrap_or(f64::MAX);
    runs.sort_by(|a, b| share(a).total_cmp(&share(b)));
    let shares: Vec<f64> = runs.iter().map(share).collect();
    let mut median = runs.swap_remove(runs.len() / 2);
    median["runs_share_of_one_core"] = serde_json::json!(shares);
    median
}

/// This thread's CPU time so far, in seconds.
fn thread_cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// Each launcher's short stretches on and off CPU per step at 100 µs, and
/// how long each lasts.
const SHORT_PER_STEP: u64 = 26;
const SHORT_NS: u64 = 150_000;

fn main() -> anyhow::Result<()> {
    // A warm-up run, discarded (the allocator's first growth, page
    // faults), then three of each, interleaved: the median run of each.
    run(MS, 0)?;
    let (mut at_1ms, mut at_100us) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        at_1ms.push(run(MS, 0)?);
        at_100us.push(run(MS / 10, SHORT_PER_STEP)?);
    }
    let (at_1ms, at_100us) = (median_run(at_1ms), median_run(at_100us));
    let holds = [&at_1ms, &at_100us]
        .iter()
        .all(|r| r["share_of_one_core"].as_f64() < Some(0.01));
    let report = serde_json::json!({
        "resolution_1ms": at_1ms,
        "resolution_100us": at_100us,
        // The 1 ms figures at the top level, as before.
        "share_of_one_core": at_1ms["share_of_one_core"],
        "ns_per_gap": at_1ms["ns_per_gap"],
        "target": "share_of_one_core < 0.01 at 20 k kernels/s, at 1 ms and at 100 µs",
        "holds": holds,
    });
    let path = repo_root().join("bench/results/explain_cost.json");
    std::fs::create_dir_all(path.parent().unwrap())?;
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

/// One run at `resolution_ns`, each launcher sending `short_per_step`
/// stretches on and off CPU in every step besides its stall.
fn run(resolution_ns: u64, short_per_step: u64) -> anyhow::Result<serde_json::Value> {
    let mut e = Explainer::new(ExplainConfig {
        window_ns: 30_000 * MS,
        max_states: 200_000,
        no_work_after_ns: 100 * MS,
        resolution_ns,
        history_ns: 900_000 * MS,
        gpu_hour_usd: None,
    });
    let step_ns = 1_000_000_000 / STEPS_PER_S;
    let stall_ns = 4 * MS;
    let kernel_ns = (step_ns - stall_ns) / KERNELS_PER_STEP;
    let tiny_gap_ns = 3_000;
    let mut gaps = 0u64;
    let mut busy_expected = 0u64;
    let started = thread_cpu_seconds();
    let mut t = 1_000 * MS;
    let mut prev_end: Option<u64> = None;
    for step in 0..SIMULATED_S * STEPS_PER_S {
        // The stall before the step: each launcher does something known.
        let stall_start = t;
        let kinds = [
            // Waiting on one of three GIL holders (the holder split).
            (IntervalKind::GilWait as u32, 1_000 + (step % 3) as u32),
            (IntervalKind::Serialization as u32, 0),
            (
                IntervalKind::OffCpu as u32,
                OffCpuReason::SyscallSleep as u32,
            ),
            (
                IntervalKind::OffCpu as u32,
                OffCpuReason::SyscallPoll as u32,
            ),
        ];
        for tid in 1..=LAUNCHERS {
            let (kind, detail) = kinds[(step as usize + tid as usize) % kinds.len()];
            e.on_interval(&interval(
                kind,
                detail,
                tid,
                stall_start,
                stall_start + stall_ns / 2,
            ));
        }
        t += stall_ns;
        // At 100 µs: each launcher's short stretches while the step's
        // kernels run, alternately on CPU and blocked in a futex.
        for tid in 1..=LAUNCHERS {
            for k in 0..short_per_step {
                let start = t + (k * 2 + u64::from(tid)) * SHORT_NS;
                let (kind, detail) = if k % 2 == 0 {
                    (IntervalKind::OnCpu as u32, 0)
                } else {
                    (
                        IntervalKind::OffCpu as u32,
                        OffCpuReason::SyscallFutex as u32,
                    )
                };
                e.on_interval(&interval(kind, detail, tid, start, start + SHORT_NS));
            }
        }
        e.on_interval(&interval(
            IntervalKind::Launch as u32,
            0,
            1,
            t - 50_000,
            t - 40_000,
        ));
        // The step's kernels, back to back but for the launch path.
        for _ in 0..KERNELS_PER_STEP {
            let start = t;
            let end = start + kernel_ns - tiny_gap_ns;
            e.on_stretch(
                0,
                0,
                Stretch {
                    start_ns: start,
                    end_ns: end,
                    gap_before_ns: prev_end.map(|p| start - p),
                },
            );
            if prev_end.is_some() {
                gaps += 1;
            }
            busy_expected += end - start;
            prev_end = Some(end);
            t = end + tiny_gap_ns;
        }
        // The daemon ticks every 100 ms.
        if step % (STEPS_PER_S / 10).max(1) == 0 {
            e.tick(t, &|_| ThreadNow::Running);
        }
    }
    e.tick(t + 10_000 * MS, &|_| ThreadNow::Running);
    // CPU time, not wall time: a busy host's preemptions are not the
    // attribution's cost.
    let cpu = thread_cpu_seconds() - started;
    let (_, h) = &e.histories[&(0, "0".to_string())];
    let wall = h.last_ns - h.first_ns.unwrap_or(0);
    let books_balance = h.totals.busy_ns + h.totals.idle_total_ns() == wall;
    let report = serde_json::json!({
        "resolution_us": resolution_ns / 1_000,
        "intervals_per_second": e.counters.states / SIMULATED_S,
        "simulated_seconds": SIMULATED_S,
        "kernels_per_second": KERNELS_PER_STEP * STEPS_PER_S,
        "gaps": gaps,
        "gaps_attributed": h.totals.gaps,
        "cpu_seconds": cpu,
        "share_of_one_core": cpu / SIMULATED_S as f64,
        "ns_per_gap": cpu * 1e9 / gaps as f64,
        "thread_states": e.counters.states,
        "thread_states_retained": e.retained(),
        "busy_matches": h.totals.busy_ns == busy_expected,
        "books_balance": books_balance,
    });
    anyhow::ensure!(
        books_balance,
        "busy + idle by cause != wall time at {} µs",
        resolution_ns / 1_000
    );
    Ok(report)
}
