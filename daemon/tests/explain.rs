//! Explain end to end on this machine: a Python thread launches "GPU"
//! work through the CUDA stand-in (`testkit/data/fake_cuda.c`, probed by
//! the zero-touch uprobes like the real libcuda) and stalls in a known way
//! before each next launch (`targets/stall_probe.py`); gapscoped must
//! attribute each phase's idle time to the stall it made, in amounts the
//! script measured itself.

use std::time::{Duration, Instant};

use gapscope_testkit::{
    Daemon, Metrics, Workload, fake_cuda::FakeCuda, gapscoped_bin, http_get, output_text,
    promtool_check, pyenv_python, repo_root, serial,
};
use serde_json::Value;

fn wait_until(daemon: &Daemon, what: &str, ready: impl Fn(&Metrics) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ready(&daemon.scrape()) {
        assert!(Instant::now() < deadline, "{what}:\n{}", daemon.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Idle seconds of `cause` in a report's GPU split.
fn cause(gpu: &Value, cause: &str) -> f64 {
    gpu["idle_by_cause"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["cause"] == cause)
        .map(|c| c["seconds"].as_f64().unwrap())
        .sum()
}

#[test]
fn every_long_sleep_reaches_the_timeline_as_an_off_cpu_interval() {
    let _g = serial();
    let daemon = Daemon::start(
        "[[service]]\nname = \"sleeper\"\ncmdline = 'gapscope-workload .*--tag offcpu-timeline'\n",
    );
    const M: usize = 50;
    let mut w = Workload::start(&format!(
        "syscalls --nanosleep {M} --sleep-us 3000 --tag offcpu-timeline"
    ));
    daemon.wait_processes("sleeper", 1.0);
    let out = w.go();
    let asleep_ns: f64 = out
        .iter()
        .find_map(|l| l.strip_prefix("asleep_ns "))
        .and_then(|v| v.parse().ok())
        .expect("the workload reports its time asleep");
    // The ring buffer is drained on the daemon's loop: ask until all M are
    // there (30 s only keeps a broken run from waiting forever).
    let sleeps_in = |v: &Value| -> usize {
        v["intervals"].as_array().map_or(0, |a| {
            a.iter()
                .filter(|i| i["reason"] == "syscall_sleep" && i["pid"] == w.pid())
                .count()
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let (body, v) = loop {
        let body = http_get(
            daemon.port,
            "/api/v1/intervals?service=sleeper&kind=off_cpu",
        )
        .unwrap();
        let v: Value = serde_json::from_str(&body).unwrap();
        if sleeps_in(&v) >= M || Instant::now() > deadline {
            break (body, v);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let sleeps: Vec<&Value> = v["intervals"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["reason"] == "syscall_sleep" && i["pid"] == w.pid())
        .collect();
    // Each 3 ms sleep is one stretch blocked in the sleep family, over the
    // 1 ms threshold; nothing else the workload does blocks that long.
    assert_eq!(sleeps.len(), M, "{body}");
    let blocked: f64 = sleeps
        .iter()
        .map(|i| i["duration_ns"].as_f64().unwrap())
        .sum();
    // Blocked from the switch after the timer was armed to the wake-up:
    // within the workload's own time asleep, and each at least the 3 ms
    // asked less the few µs between arming the timer and switching out.
    let asked = M as f64 * 2_950_000.0;
    assert!(
        blocked <= asleep_ns && blocked >= asked,
        "blocked {blocked} ns vs {asleep_ns} ns asleep by the workload's clock ({asked} ns at least)"
    );
    w.finish();
}

#[test]
fn idle_gaps_are_attributed_to_the_stalls_that_caused_them() {
    let _g = serial();
    let fixture = FakeCuda::build();
    let daemon = Daemon::start(
        "[[service]]\nname = \"stalls\"\ncmdline = 'stall_probe.py .*--tag explain-test'\n\
         [[service]]\nname = \"quiet\"\ncmdline = 'never-started-explain-test'\n",
    );
    let script = repo_root().join("targets/stall_probe.py");
    let url = format!("http://127.0.0.1:{}", daemon.port);
    let mut w = Workload::spawn(
        &pyenv_python(11),
        &[
            script.to_str().unwrap(),
            fixture.path("").to_str().unwrap(),
            "--tag",
            "explain-test",
            "--gapscoped",
            &url,
        ],
    );
    wait_until(&daemon, "the CUDA stand-in was never probed", |m| {
        m.get_or_zero("gapscope_cuda_probed_files", &[]) >= 1.0
    });
    wait_until(&daemon, "the GIL was never found", |m| {
        m.get_or_zero(
            "gapscope_python_processes",
            &[("service", "stalls"), ("version", "3.11")],
        ) >= 1.0
    });
    wait_until(&daemon, "json was never probed", |m| {
        m.get_or_zero("gapscope_serialization_probed_files", &[]) >= 1.0
    });
    let phases: Vec<Value> = w
        .go()
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(phases.len(), 6);
    // Gaps are attributed a quarter second after they close: wait until
    // every phase has as many as it had steps (the assertions below say
    // which one is short), however slow the machine.
    let all_attributed = |report: &Value| {
        phases.iter().all(|truth| {
            report["phases"].as_array().is_some_and(|reported| {
                reported.iter().any(|p| {
                    p["phase"] == truth["phase"]
                        && p["gpu"][0]["gaps"].as_u64() >= truth["steps"].as_u64()
                })
            })
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let (body, report) = loop {
        let body = http_get(daemon.port, "/api/v1/explain?service=stalls&window=5m").unwrap();
        let report: Value = serde_json::from_str(&body).unwrap();
        if all_attributed(&report) || Instant::now() > deadline {
            break (body, report);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let reported = report["phases"].as_array().unwrap();
    let mut table = String::new();
    for truth in &phases {
        let name = truth["phase"].as_str().unwrap();
        let p = reported
            .iter()
            .find(|p| p["phase"] == name)
            .unwrap_or_else(|| panic!("phase {name} missing from {body}"));
        let gpu = &p["gpu"][0];
        assert_eq!(gpu["device"], "all", "{gpu}");
        assert_eq!(gpu["source"], "uprobes");
        let idle = gpu["idle_seconds"].as_f64().unwrap();
        let parts: f64 = gpu["idle_by_cause"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["seconds"].as_f64().unwrap())
            .sum();
        assert!(
            (parts - idle).abs() < 1e-6,
            "{name}: parts {parts} != idle {idle}"
        );
        let measured = truth["stall_ns"].as_f64().unwrap() / 1e9;
        let within = |got: f64, want: f64| (got - want).abs() <= 0.10 * want;
        // A stall's wall time includes what the thread waited for a CPU
        // when another job had it: gapscoped reports that part as
        // runqueue, rightly, so each phase's cause is checked with it.
        let runq = cause(gpu, "runqueue");
        table.push_str(&format!(
            "{name}: measured {measured:.4} s, reported {gpu}\n"
        ));
        match name {
            "sleep" => assert!(
                within(cause(gpu, "syscall_sleep") + runq, measured),
                "{table}"
            ),
            "json" => {
                let ser = cause(gpu, "serialization");
                assert!(ser >= 0.8 * (measured - runq), "{table}");
                assert!(
                    within(ser + cause(gpu, "python_cpu") + runq, measured),
                    "{table}"
                );
            }
            "cpu" => {
                let cpu = cause(gpu, "python_cpu");
                assert!(within(cpu + runq, measured), "{table}");
                // Apart from waiting for a CPU, the time went to Python.
                let others = gpu["idle_by_cause"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|c| c["cause"] != "python_cpu" && c["cause"] != "runqueue");
                for c in others {
                    assert!(c["seconds"].as_f64().unwrap() < cpu, "{table}");
                }
            }
            "poll" => assert!(
                within(cause(gpu, "syscall_poll") + runq, measured),
                "{table}"
            ),
            "idle" => assert!(within(cause(gpu, "no_work") + runq, measured), "{table}"),
            "gil" => {
                let top = &gpu["idle_by_cause"][0];
                assert_eq!(top["cause"], "gil_wait", "{table}");
                assert!(top["share"].as_f64().unwrap() >= 0.6, "{table}");
            }
            other => panic!("unexpected phase {other}"),
        }
        // Every step's gap, plus the one the final launch closes.
        let steps = truth["steps"].as_u64().unwrap();
        assert_eq!(gpu["gaps"].as_u64().unwrap(), steps, "{name}: {table}");
    }
    eprintln!("{table}");

    // The window's CPU side: the GIL waits and json calls are there.
    assert!(report["gil"]["waits"].as_f64().unwrap() > 0.0, "{body}");
    assert!(
        report["serialization"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["codec"] == "json" && c["op"] == "encode"),
        "{body}"
    );
    assert!(
        report["fusion"]["launches"].as_f64().unwrap() >= 200.0,
        "{body}"
    );

    // The counters add up: busy + idle by cause is the wall time covered.
    let m = daemon.scrape();
    let l = [
        ("service", "stalls"),
        ("device", "all"),
        ("source", "uprobes"),
    ];
    let idle: f64 = [
        "gil_wait",
        "serialization",
        "python_cpu",
        "syscall_sleep",
        "syscall_poll",
        "no_work",
        "launch_overhead",
        "host_sync",
        "runqueue",
        "syscall_futex",
        "syscall_net",
        "syscall_file",
        "syscall_other",
        "blocked_other",
    ]
    .iter()
    .map(|c| {
        m.get_or_zero(
            "gapscope_gpu_idle_seconds_total",
            &[l[0], l[1], l[2], ("cause", c)],
        )
    })
    .sum();
    let busy = m.get_or_zero("gapscope_gpu_timeline_busy_seconds_total", &l);
    let first = phases[0]["start_ns"].as_f64().unwrap();
    let last = phases[5]["end_ns"].as_f64().unwrap();
    assert!(
        busy + idle >= (last - first) / 1e9 * 0.95 && busy + idle <= (last - first) / 1e9 + 1.0,
        "busy {busy} + idle {idle} vs {} s run",
        (last - first) / 1e9
    );
    if let Err(report) = promtool_check(&m.0) {
        panic!("promtool: {report}");
    }

    // The terminal report and the side-by-side comparison.
    let out = std::process::Command::new(gapscoped_bin())
        .args(["explain", "stalls", "--window", "5m", "--url", &url])
        .output()
        .unwrap();
    let text = output_text(&out);
    assert!(out.status.success(), "{text}");
    for want in [
        "service stalls",
        "syscall_sleep",
        "no_work",
        "gil_wait",
        "Phases",
        "idle (test",
    ] {
        assert!(text.contains(want), "{want:?} missing:\n{text}");
    }
    let out = std::process::Command::new(gapscoped_bin())
        .args(["explain", "--compare", "stalls", "quiet", "--url", &url])
        .output()
        .unwrap();
    let text = output_text(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("idle: syscall_sleep"), "{text}");
    // Bad input is named.
    let out = std::process::Command::new(gapscoped_bin())
        .args(["explain", "nosuch", "--url", &url])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(output_text(&out).contains("no service named \"nosuch\""));
    let (status, body) = gapscope_testkit::http_post(daemon.port, "/api/v1/annotations", "{}");
    assert_eq!(status, 400, "{body}");
    w.finish();
}
