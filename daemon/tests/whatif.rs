//! What fixing a cause would buy, against an A/B: the same serving loop on
//! the simulated device (`targets/whatif_loop.py`, deep mode through the
//! real agent and the CUPTI stand-in) run with a stall and without it.
//! gapscoped's prediction from the run with the stall (the report's
//! `what_if`) must be within 3 percentage points of the speed-up the
//! loop's own clock measures, for each stall alone, for two together, for
//! one of two serialization functions (json's and pickle's encoders; the
//! loop's clock of that function in the run with both), and for the GIL
//! competitor named as the report names it (`gil_wait:TID`, its thread id
//! and name as the loop reports them).
//! Runs interleave (baseline, then each stall, round after round) and
//! medians are compared, as the machine is noisy.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use gapscope_testkit::{
    Daemon, Workload, fake_cuda::FakeCuda, http_get, pyenv_python, repo_root, serial,
};
use serde_json::Value;

const STEPS: u32 = 100;
const ROUNDS: usize = 3;
/// A step: a 20 ms kernel, then each stall 4 ms (about +20 % to remove
/// one). The stalls' own entry and exit (the Python call, the syscall's
/// time on CPU, under the timeline's threshold) are unobserved, so the
/// prediction falls short of the truth by about their share of a step.
const KERNEL_MS: &str = "20";
const STALL_MS: &str = "4";

fn sizes_file() -> String {
    format!("/tmp/gapscope-whatif-sizes-{}.json", std::process::id())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One run of the loop: its step rate (steps a second, by its own clock),
/// its JSON line, and the loop itself, alive until finished (its GIL
/// competitor too, idle, so that the report still names it).
fn run(
    daemon: &Daemon,
    fixture: &FakeCuda,
    cupti: &std::path::Path,
    socket: &str,
    stalls: &str,
    run_id: &str,
) -> (f64, Value, Workload) {
    let url = format!("http://127.0.0.1:{}", daemon.port);
    // Ahead of other jobs for the CPU (the suite runs as root): the A/B
    // measures the attribution, not how a saturated CPU is shared. Under
    // a CPU hog at equal priority a CPU-bound stall also makes the loop
    // wait for a CPU, which the prediction counts as runqueue, not as the
    // stall (the README's limitation).
    let mut cmd = std::process::Command::new("nice");
    cmd.args(["-n", "-20"])
        .arg(pyenv_python(11))
        .arg(repo_root().join("targets/whatif_loop.py"))
        .arg(fixture.path(""))
        .args(["--stalls", stalls, "--steps", &STEPS.to_string()])
        .args(["--kernel-ms", KERNEL_MS, "--stall-ms", STALL_MS])
        // One size for each stall's object across the runs: a function's
        // A/B compares two runs that both do the other stall.
        .args(["--sizes", &sizes_file()])
        .args([
            "--gapscoped",
            &url,
            "--run-id",
            run_id,
            "--tag",
            "whatif-test",
        ])
        .env("CUDA_INJECTION64_PATH", gapscope_testkit::inject_library())
        .env("GAPSCOPE_CUPTI_PATH", cupti)
        .env("GAPSCOPE_SOCKET", socket);
    let mut w = Workload::spawn_command(cmd);
    // Traced before it starts: its GIL found, json's and pickle's
    // encoders probed (it imports both).
    daemon.wait_metrics("the loop's Python was never found", |m| {
        m.sum("gapscope_python_processes", &[("service", "whatif")]) >= 1.0
            && m.get_or_zero("gapscope_serialization_probed_files", &[]) >= 2.0
    });
    let out = w.go();
    let v: Value = serde_json::from_str(&out[0]).unwrap();
    let seconds = (v["end_ns"].as_u64().unwrap() - v["start_ns"].as_u64().unwrap()) as f64 / 1e9;
    (f64::from(STEPS) / seconds, v, w)
}

/// The report's row for one run (its phase), once all its gaps settled;
/// `what_if` asked for `causes`.
fn prediction(daemon: &Daemon, run_id: &str, causes: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let body = http_get(
            daemon.port,
            &format!("/api/v1/explain?service=whatif&window=10m&what_if={causes}"),
        )
        .unwrap();
        let report: Value = serde_json::from_str(&body).unwrap();
        let row = report["phases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["run_id"] == run_id)
            .map(|p| p["gpu"][0].clone())
            .unwrap_or(Value::Null);
        if row["gaps"].as_u64() >= Some(u64::from(STEPS)) {
            return row;
        }
        assert!(
            Instant::now() < deadline,
            "run {run_id} never settled: {body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn removing_a_stall_speeds_the_loop_up_as_predicted() {
    let _g = serial();
    let fixture = FakeCuda::build();
    let cupti = match fixture.cupti("cupti-12.9") {
        Ok(p) => p,
        Err(why) => {
            gapscope_testkit::skip(&why);
            return;
        }
    };
    let socket = format!("/tmp/gapscope-whatif-{}.sock", std::process::id());
    let _ = std::fs::remove_file(sizes_file());
    let daemon = Daemon::start_with(
        "[[service]]\nname = \"whatif\"\ncmdline = 'whatif_loop.py .*--tag whatif-test'\n",
        &format!("\n[inject]\nsocket = \"{socket}\"\n[cuda]\nenabled = false\n"),
    );
    // (the loop's stalls, the causes they are attributed to)
    let cases = [
        ("sleep", "syscall_sleep"),
        ("json", "serialization"),
        ("poll", "syscall_poll"),
        ("gil", "gil_wait"),
        ("sleep,json", "syscall_sleep,serialization"),
    ];
    // One serialization function of two, removed: (the run's stalls, the
    // function, the loop's name for its stall).
    let functions = [
        ("json,pickle", "serialization:json.encode", "json"),
        ("json,pickle", "serialization:pickle.encode", "pickle"),
    ];
    let mut rates: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut predicted: BTreeMap<(&str, &str), Vec<f64>> = BTreeMap::new();
    let mut rows: BTreeMap<(&str, &str), Vec<Value>> = BTreeMap::new();
    // Each run's own report: its clock's start and end, its time in each
    // stall.
    let mut outs: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
    // The GIL competitor, removed by its thread id: each round's
    // prediction, and the report's holder entry.
    let mut by_holder: Vec<(f64, Value)> = Vec::new();
    let mut configs: Vec<&str> = vec!["none"];
    for stalls in cases
        .iter()
        .map(|c| c.0)
        .chain(functions.iter().map(|f| f.0))
    {
        if !configs.contains(&stalls) {
            configs.push(stalls);
        }
    }
    let asked = |stalls: &str| -> Vec<&'static str> {
        cases
            .iter()
            .filter(|c| c.0 == stalls)
            .map(|c| c.1)
            .chain(functions.iter().filter(|f| f.0 == stalls).map(|f| f.1))
            .collect()
    };
    for round in 0..ROUNDS {
        for &stalls in &configs {
            let id = format!("{}-{round}", stalls.replace(',', "_"));
            let (rate, out, w) = run(&daemon, &fixture, &cupti, &socket, stalls, &id);
            rates.entry(stalls).or_default().push(rate);
            outs.entry(stalls).or_default().push(out.clone());
            for what in asked(stalls) {
                let row = prediction(&daemon, &id, what);
                predicted
                    .entry((stalls, what))
                    .or_default()
                    .push(row["what_if"]["predicted_speedup"].as_f64().unwrap());
                rows.entry((stalls, what)).or_default().push(row);
            }
            if let Some(tid) = out["competitor_tid"].as_u64().filter(|_| stalls == "gil") {
                let row = prediction(&daemon, &id, &format!("gil_wait:{tid}"));
                let gil = row["idle_by_cause"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|c| c["cause"] == "gil_wait")
                    .cloned()
                    .unwrap_or_else(|| panic!("no gil_wait idle: {row}"));
                let holder = gil["holders"]
                    .as_array()
                    .and_then(|h| h.iter().find(|h| h["tid"] == tid).cloned())
                    .unwrap_or_else(|| panic!("the competitor {tid} is not a holder: {gil}"));
                assert_eq!(holder["thread"], "gil-competitor", "{holder}");
                // Only one thread competes: all the GIL waiting is on it.
                let (part, whole) = (
                    holder["seconds"].as_f64().unwrap(),
                    gil["seconds"].as_f64().unwrap(),
                );
                assert!(
                    part >= 0.95 * whole,
                    "waits on the competitor {part} s of {whole} s: {gil}"
                );
                by_holder.push((
                    row["what_if"]["predicted_speedup"].as_f64().unwrap(),
                    holder,
                ));
            }
            w.finish();
        }
    }
    let rate = |stalls: &str| median(rates[stalls].clone());
    let base = rate("none");
    let mut table = format!("baseline {base:.1} steps/s ({:?})\n", rates["none"]);
    // (the run, what was removed, measured, predicted)
    let mut checks: Vec<(&str, &str, f64, f64)> = Vec::new();
    for (stalls, causes) in cases {
        checks.push((
            stalls,
            causes,
            base / rate(stalls) - 1.0,
            median(predicted[&(stalls, causes)].clone()),
        ));
    }
    // One function of two: the loop's own clock says how long it took in
    // the run with both, so without it a step takes that much less: the
    // rate rises by its time / (wall − its time). Not a run without it:
    // the two functions share the caches, and dropping pickle once made
    // json.dumps 30 % faster (CI: +19.4 % measured against +14.6 %
    // predicted, the prediction being right about pickle's own time).
    for (stalls, function, stall) in functions {
        let own: Vec<f64> = outs[stalls]
            .iter()
            .map(|o| {
                let wall =
                    (o["end_ns"].as_u64().unwrap() - o["start_ns"].as_u64().unwrap()) as f64 / 1e9;
                let t = o["stall_seconds"][stall].as_f64().unwrap();
                t / (wall - t)
            })
            .collect();
        checks.push((
            stalls,
            function,
            median(own),
            median(predicted[&(stalls, function)].clone()),
        ));
    }
    // The competitor by its thread id, against the run without it.
    assert_eq!(
        by_holder.len(),
        ROUNDS,
        "the gil runs never named the competitor"
    );
    let holder_predicted = median(by_holder.iter().map(|h| h.0).collect());
    checks.push((
        "gil",
        "gil_wait:TID",
        base / rate("gil") - 1.0,
        holder_predicted,
    ));
    rows.insert(
        ("gil", "gil_wait:TID"),
        by_holder.iter().map(|h| h.1.clone()).collect(),
    );
    let mut worst = 0.0f64;
    for (stalls, what, measured, predicted) in &checks {
        worst = worst.max((measured - predicted).abs());
        table.push_str(&format!(
            "{stalls:<11} removing {what:<28} measured {:+6.1} %  predicted {:+6.1} %  ({:?} steps/s; predictions {:?})\n",
            100.0 * measured,
            100.0 * predicted,
            rates[stalls],
            predicted_as_pct(&predicted_all(&rows[&(*stalls, *what)])),
        ));
    }
    eprintln!("{table}");
    for (stalls, what, measured, predicted) in &checks {
        // A check that can fail: each stall costs the loop something.
        assert!(
            *measured > 0.05,
            "{stalls}: removing {what} bought nothing?\n{table}"
        );
        assert!(
            (measured - predicted).abs() <= 0.03,
            "{stalls}, removing {what}: predicted {predicted:.3}, measured {measured:.3}\n{table}\n{}",
            serde_json::to_string(&rows[&(*stalls, *what)]).unwrap()
        );
    }
    // The two functions' parts of the serialization idle time, named as
    // the probes name them, sum to the cause.
    let row = &rows[&("json,pickle", "serialization:json.encode")][0];
    let cause = row["idle_by_cause"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["cause"] == "serialization")
        .unwrap_or_else(|| panic!("no serialization idle: {row}"));
    let parts: Vec<(&str, f64)> = cause["functions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["function"].as_str().unwrap(),
                f["seconds"].as_f64().unwrap(),
            )
        })
        .collect();
    let mut names: Vec<&str> = parts.iter().map(|p| p.0).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["serialization:json.encode", "serialization:pickle.encode"],
        "{cause}"
    );
    let sum: f64 = parts.iter().map(|p| p.1).sum();
    assert!(
        (sum - cause["seconds"].as_f64().unwrap()).abs() < 1e-6,
        "the functions' parts sum to the cause: {cause}"
    );
    eprintln!("worst error {:.1} pp", 100.0 * worst);
    let _ = std::fs::remove_file(sizes_file());
}

fn predicted_all(rows: &[Value]) -> Vec<f64> {
    rows.iter()
        .filter_map(|r| r["what_if"]["predicted_speedup"].as_f64())
        .collect()
}

fn predicted_as_pct(v: &[f64]) -> Vec<String> {
    v.iter().map(|x| format!("{:.1}", 100.0 * x)).collect()
}
