//! What the CUDA launch probes cost a launch-bound thread, and what the
//! launch budget buys back. The test fixture (`testkit/data/fake_cuda.c`,
//! not CUDA) stands in for libcuda: `cuda_caller busy` calls its
//! `cuLaunchKernel` in a loop, the probes' worst case.
//!
//! * `no_daemon` against `probed` (every launch probed: budget raised),
//!   interleaved in rounds (the A/B harness, `ab.rs`), launches back to
//!   back: the price of one probed launch, with its 95 % interval.
//! * `budgeted`: the default budget (1% of a core at the configured
//!   `probe_cost_us`) over a longer run, with 10 µs of CPU work between
//!   launches (about what a Python serving loop spends per kernel): the
//!   launch rate it leaves the thread against no daemon, and the launch
//!   estimate against the launches made.
//!
//! Run as root: `cargo run --release -p gapscope-bench --bin cuda_probe_cost`.
//! Writes bench/results/cuda_probe_cost.json.

use std::time::{Duration, Instant};

use anyhow::bail;
use gapscope_bench::ab::{Bound, Harness, Report};
use gapscope_testkit::{
    Daemon,
    fake_cuda::{FakeCuda, value},
    require_root,
};

const ROUNDS: usize = 10;
const SHORT_S: u64 = 3;
const BUDGETED_S: u64 = 60;
const WORK_NS: u64 = 10_000;

struct Run {
    rate: f64,
    launches: f64,
    estimated: f64,
    probed: f64,
    ratio: f64,
}

fn run(
    fake: &FakeCuda,
    daemon_config: Option<&str>,
    seconds: u64,
    work_ns: u64,
) -> anyhow::Result<Run> {
    let daemon = daemon_config.map(|extra| {
        Daemon::start_with(
            "[[service]]\nname = \"cost\"\ncmdline = 'cuda_caller \\S*gapscope-cuda-fixture'\n",
            &format!("bpf_stats = false\n{extra}"),
        )
    });
    let mut w = fake.caller(
        "cuda_caller",
        &["busy", &seconds.to_string(), &work_ns.to_string()],
    );
    if let Some(d) = &daemon {
        d.wait_processes("cost", 1.0);
        let deadline = Instant::now() + Duration::from_secs(5);
        while d.scrape().get_or_zero("gapscope_cuda_probed_files", &[]) < 2.0 {
            if Instant::now() > deadline {
                bail!("the CUDA probes never attached");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let out = w.go();
    let launches = value(&out, "launches");
    let rate = launches / value(&out, "seconds");
    let labels = [
        ("service", "cost"),
        ("api", "driver"),
        ("entry", "cuLaunchKernel"),
    ];
    let (estimated, probed, ratio) = daemon.as_ref().map_or((0.0, 0.0, 1.0), |d| {
        let m = d.scrape();
        (
            m.get_or_zero("gapscope_cuda_launches_total", &labels),
            m.get_or_zero("gapscope_cuda_launch_call_duration_seconds_count", &labels),
            m.get_or_zero(
                "gapscope_cuda_launch_sampling_ratio",
                &[("api", "driver"), ("entry", "cuLaunchKernel")],
            ),
        )
    });
    w.finish();
    Ok(Run {
        rate,
        launches,
        estimated,
        probed,
        ratio,
    })
}

fn main() -> anyhow::Result<()> {
    require_root();
    let fake = FakeCuda::build();
    let mut harness = Harness::from_args("cuda_probe_cost", &["no_daemon", "probed"], ROUNDS)?;
    // Every launch probed: a budget far above any rate here.
    let all = "[cuda]\nlaunch_budget = 1.0\nprobe_cost_us = 0.1\n";
    let samples = harness.run("launches/s", |config, _| {
        let r = run(&fake, (config == "probed").then_some(all), SHORT_S, 0)?;
        if config == "probed" && r.probed <= 0.0 {
            bail!("the probed run counted no launch");
        }
        Ok(r.rate)
    })?;
    let mut report = Report::new(&harness, &samples);
    report.compare(
        "ns per probed launch",
        &["no_daemon", "probed"],
        |r| 1e9 / r["probed"] - 1e9 / r["no_daemon"],
        Bound::None,
    );

    let budgeted = run(&fake, Some(""), BUDGETED_S, WORK_NS)?;
    let unprobed = run(&fake, None, BUDGETED_S, WORK_NS)?;
    eprintln!(
        "budgeted {BUDGETED_S} s: {:.0} launches/s vs {:.0} unprobed; estimated {:.0} of {:.0} ({:.0} probed, ratio {})",
        budgeted.rate,
        unprobed.rate,
        budgeted.estimated,
        budgeted.launches,
        budgeted.probed,
        budgeted.ratio
    );
    report
        .extra(
            "workload",
            serde_json::json!("fixture cuLaunchKernel (returns at once) in a C loop: back to back, and with 10 µs of work between launches for the budgeted run"),
        )
        .extra("work_ns_between_launches_budgeted", serde_json::json!(WORK_NS))
        .extra(
            "budgeted",
            serde_json::json!({
                "seconds": BUDGETED_S,
                "launches_per_second": budgeted.rate,
                "launches_per_second_unprobed": unprobed.rate,
                "slowdown": 1.0 - budgeted.rate / unprobed.rate,
                "launches": budgeted.launches,
                "launches_probed": budgeted.probed,
                "launches_estimated": budgeted.estimated,
                "estimate_error": budgeted.estimated / budgeted.launches - 1.0,
                "sampling_ratio_at_end": budgeted.ratio,
            }),
        );
    report.finish()?;
    Ok(())
}
