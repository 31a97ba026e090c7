//! What the attribution costs gapscoped: a synthetic, decode-shaped
//! stream fed to the explainer in-process, as the daemon's loop feeds it —
//! CUPTI busy stretches with a tiny gap between kernels (the launch path)
//! and, every decode step, one long gap in which the launching threads
//! wait for the GIL, serialize, sleep or poll (their timeline intervals).
//! Reports the CPU time per simulated second (the share of one core the
//! attribution would take at that rate), the time per gap, and checks the
//! books: busy + idle by cause = the simulated wall time.
//!
//! `cargo run --release -p gapscope-bench --bin explain_cost` (no root).
//! Writes bench/results/explain_cost.json.

use std::time::Instant;

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

fn main() -> anyhow::Result<()> {
    let mut e = Explainer::new(ExplainConfig {
        window_ns: 30_000 * MS,
        max_states: 200_000,
        no_work_after_ns: 100 * MS,
        resolution_ns: MS,
        history_ns: 900_000 * MS,
        gpu_hour_usd: None,
    });
    let step_ns = 1_000_000_000 / STEPS_PER_S;
    let stall_ns = 4 * MS;
    let kernel_ns = (step_ns - stall_ns) / KERNELS_PER_STEP;
    let tiny_gap_ns = 3_000;
    let mut gaps = 0u64;
    let mut busy_expected = 0u64;
    let started = Instant::now();
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
    let cpu = started.elapsed().as_secs_f64();
    let (_, h) = &e.histories[&(0, "0".to_string())];
    let wall = h.last_ns - h.first_ns.unwrap_or(0);
    let books_balance = h.totals.busy_ns + h.totals.idle_total_ns() == wall;
    let report = serde_json::json!({
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
        "target": "share_of_one_core < 0.01 at 20 k kernels/s",
    });
    let path = repo_root().join("bench/results/explain_cost.json");
    std::fs::create_dir_all(path.parent().unwrap())?;
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    anyhow::ensure!(books_balance, "busy + idle by cause != wall time");
    Ok(())
}
