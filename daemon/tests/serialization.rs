//! Serialization probes against ground truth: json and pickle called
//! exactly N times on a known payload under every pyenv CPython 3.9–3.13
//! are counted exactly, and their summed duration is within 20 % of what
//! the script measured around the calls. Debian's stripped python3.11
//! cannot be probed, and says so.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use gapscope_testkit::{
    Daemon, Metrics, Workload, objdump::probed_instruction, pyenv_python, repo_root, serial,
    target_python,
};

const N: u64 = 40;

fn start(daemon: &Daemon, python: &Path) -> Workload {
    let script = repo_root().join("targets/serialization_probe.py");
    let w = Workload::spawn(
        python,
        &[
            script.to_str().unwrap(),
            &N.to_string(),
            "--tag",
            "ser-test",
        ],
    );
    daemon.wait_processes("ser", 1.0);
    w
}

fn service() -> Daemon {
    Daemon::start(
        "[[service]]\nname = \"ser\"\ncmdline = \"serialization_probe.py .*--tag ser-test\"\n",
    )
}

/// The file CPython `python` loads `module` from.
fn module_file(python: &Path, module: &str) -> PathBuf {
    let out = std::process::Command::new(python)
        .args(["-c", &format!("import {module}; print({module}.__file__)")])
        .output()
        .unwrap();
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// Waits until `ready` says the probes (or their absence) are settled.
fn wait_until(daemon: &Daemon, what: &str, ready: impl Fn(&Metrics) -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !ready(&daemon.scrape()) {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}:\n{}",
            daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn json_and_pickle_calls_are_counted_exactly_and_timed() {
    let _g = serial();
    let daemon = service();
    for minor in 9..=13 {
        let mut w = start(&daemon, &pyenv_python(minor));
        // Probed once the rescan has seen the modules the script imported.
        wait_until(&daemon, "json and pickle probes never attached", |m| {
            m.get_or_zero("gapscope_serialization_probed_files", &[]) >= 2.0
        });
        let after = run_and_compare(&daemon, &mut w, &["json", "pickle"], &format!("3.{minor}"));
        // Each probe's instruction, as objdump reads the module's function.
        for (codec, op, module, function) in [
            ("json", "encode", "_json", "encoder_call"),
            ("json", "decode", "_json", "scanner_call"),
            ("pickle", "encode", "_pickle", "_pickle_dumps"),
            ("pickle", "decode", "_pickle", "_pickle_loads"),
        ] {
            let file = module_file(&pyenv_python(minor), module);
            let (_, instruction) = probed_instruction(&file, function)
                .unwrap_or_else(|| panic!("objdump finds no {function} in {}", file.display()));
            assert_eq!(
                after.get(
                    "gapscope_serialization_probe_sites",
                    &[("codec", codec), ("op", op), ("instruction", instruction)]
                ),
                Some(1.0),
                "3.{minor}: {function} on {instruction}"
            );
        }
        // The kernel's return-probe trampoline is ours, not the program's.
        assert_eq!(
            after.get_or_zero(
                "gapscope_syscall_duration_seconds_count",
                &[("service", "ser"), ("syscall", "uretprobe")]
            ),
            0.0,
            "3.{minor}: uretprobe syscalls counted"
        );
        w.finish();
        daemon.wait_processes("ser", 0.0);
    }
    // Nothing is left probing once the processes are gone.
    wait_until(
        &daemon,
        "probes stay attached after the processes left",
        |m| m.get_or_zero("gapscope_serialization_probed_files", &[]) == 0.0,
    );
}

/// Lets the script make its calls and checks that gapscoped counted
/// exactly N per codec and direction, with summed durations no longer than
/// the script's own timing around each call and short of it by at most
/// 20 % plus the time the process waited for a CPU meanwhile (a thread
/// preempted in the Python around the call stretches only the script's
/// timing). Returns the scrape taken after the calls.
fn run_and_compare(daemon: &Daemon, w: &mut Workload, codecs: &[&str], what: &str) -> Metrics {
    let before = daemon.scrape();
    let out = w.go();
    let after = daemon.scrape();
    let truth: serde_json::Value = serde_json::from_str(&out[0]).unwrap();
    let runq = after.get_or_zero(
        "gapscope_runqueue_latency_seconds_sum",
        &[("service", "ser")],
    ) - before.get_or_zero(
        "gapscope_runqueue_latency_seconds_sum",
        &[("service", "ser")],
    );
    for codec in codecs {
        for op in ["encode", "decode"] {
            let l = [("service", "ser"), ("codec", codec), ("op", op)];
            let delta = |name: &str| after.get_or_zero(name, &l) - before.get_or_zero(name, &l);
            let calls = delta("gapscope_serialization_duration_seconds_count");
            let seconds = delta("gapscope_serialization_duration_seconds_sum");
            let want = truth[format!("{codec}_{op}")]["ns"].as_f64().unwrap() / 1e9;
            eprintln!(
                "{what} {codec} {op}: {calls} calls, {seconds:.4} s measured by gapscope, {want:.4} s by the script"
            );
            assert_eq!(calls, N as f64, "{what} {codec} {op}: calls");
            assert!(
                seconds <= want * 1.01 + 1e-4,
                "{what} {codec} {op}: {seconds} s measured, more than the script's {want} s around the calls"
            );
            assert!(
                want - seconds <= 0.20 * want + runq,
                "{what} {codec} {op}: {seconds} s vs {want} s (run-queue wait {runq:.4} s)"
            );
        }
    }
    after
}

#[test]
fn third_party_codecs_are_found_and_counted_exactly() {
    let _g = serial();
    let daemon = service();
    let script = repo_root().join("targets/serialization_probe.py");
    let mut w = Workload::spawn(
        &target_python(),
        &[
            script.to_str().unwrap(),
            "libraries",
            &N.to_string(),
            "--tag",
            "ser-test",
        ],
    );
    daemon.wait_processes("ser", 1.0);
    // orjson, msgpack, protobuf's upb and pydantic-core: four wheels, each
    // probed once a rescan has seen it; json and pickle are imported too
    // (by the libraries) and add files of their own, so a count of files
    // can be reached before the last wheel's probes are attached: wait for
    // each codec's probes by name.
    let codecs = ["orjson", "msgpack", "protobuf", "pydantic"];
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let log = daemon.log_text();
        let attached = |codec: &str| {
            ["encode", "decode"]
                .iter()
                .all(|op| log.contains(&format!("probing {codec} {op} at")))
        };
        if codecs.iter().all(|c| attached(c)) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "third-party probes never attached:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    run_and_compare(&daemon, &mut w, &codecs, "venv 3.11");
    let log = daemon.log_text();
    assert!(
        log.contains("probing pydantic encode") && log.contains("method \"to_json\""),
        "pydantic-core found through its method table:\n{log}"
    );
    w.finish();
}

#[test]
fn a_stripped_interpreter_says_its_codecs_cannot_be_probed() {
    let _g = serial();
    let daemon = service();
    let mut w = start(&daemon, &PathBuf::from("/usr/bin/python3.11"));
    wait_until(&daemon, "the stripped codecs were never reported", |m| {
        ["json", "pickle"].iter().all(|codec| {
            m.get_or_zero(
                "gapscope_serialization_unavailable_processes",
                &[("service", "ser"), ("codec", codec)],
            ) == 1.0
        })
    });
    let log = daemon.log_text();
    assert!(
        log.contains("cannot probe json") && log.contains("cannot probe pickle"),
        "{log}"
    );
    w.go();
    w.finish();
}

#[test]
fn a_busy_probe_is_sampled_within_its_budget_and_says_so() {
    let _g = serial();
    let daemon = Daemon::start(
        "[python]\nserialization_budget = 50\n\
         [[service]]\nname = \"ser\"\ncmdline = \"serialization_probe.py .*--tag ser-test\"\n",
    );
    let script = repo_root().join("targets/serialization_probe.py");
    let mut w = Workload::spawn(
        &pyenv_python(11),
        &[script.to_str().unwrap(), "busy", "4", "--tag", "ser-test"],
    );
    daemon.wait_processes("ser", 1.0);
    wait_until(&daemon, "json probes never attached", |m| {
        m.get_or_zero("gapscope_serialization_probed_files", &[]) >= 1.0
    });
    let out = w.go();
    let m = daemon.scrape();
    let truth: serde_json::Value = serde_json::from_str(&out[0]).unwrap();
    let made = truth["json_encode"]["calls"].as_f64().unwrap();
    let l = [("service", "ser"), ("codec", "json"), ("op", "encode")];
    let counted = m.get_or_zero("gapscope_serialization_duration_seconds_count", &l);
    let ratio = m.get_or_zero(
        "gapscope_serialization_sampling_ratio",
        &[("codec", "json"), ("op", "encode")],
    );
    eprintln!("busy json.dumps: {made} calls made, {counted} counted, sampling ratio {ratio}");
    assert!(
        ratio < 1.0,
        "the probe went over budget and is sampled: ratio {ratio}"
    );
    assert!(
        counted > 0.0 && counted < 0.5 * made,
        "sampling counted {counted} of {made} calls"
    );
    // The probes were attached while the script idled (no json calls),
    // and it starts well within 10 s of that, so they are still fresh when
    // it gets busy: paused within about a tenth of a second of going over
    // the budget (`trip_early`; a hundredth in a probe's first second),
    // not at the next whole second. Waiting for
    // that second counted about 12 % of the calls of this 4 s run here
    // (1 in 5 runs would fall under 5 % by the luck of when the second
    // ends); a tenth of a second, 1.4 %. Busy enough that a tenth of a
    // second's calls dwarf the budget's 51.
    assert!(made > 50_000.0, "the script was busy: {made} calls");
    assert!(
        counted < 0.05 * made,
        "the busy probe was paused late: {counted} of {made} calls counted"
    );
    assert!(daemon.log_text().contains("probing one second in"));
    w.finish();
}

#[test]
fn the_budget_is_per_process() {
    let _g = serial();
    // Two processes at 200 calls/s each: 400 together, over a budget of
    // 300, but each within it, so both are probed in full.
    let daemon = Daemon::start(
        "[python]\nserialization_budget = 300\n\
         [[service]]\nname = \"ser\"\ncmdline = \"serialization_probe.py .*--tag ser-test\"\n",
    );
    let script = repo_root().join("targets/serialization_probe.py");
    let args = [
        script.to_str().unwrap(),
        "paced",
        "200",
        "3",
        "--tag",
        "ser-test",
    ];
    let mut a = Workload::spawn(&pyenv_python(11), &args);
    let mut b = Workload::spawn(&pyenv_python(11), &args);
    daemon.wait_processes("ser", 2.0);
    wait_until(&daemon, "json probes never attached", |m| {
        m.get_or_zero("gapscope_serialization_probed_files", &[]) >= 1.0
    });
    let before = daemon.scrape();
    // Both start together; `go` waits for each to finish.
    a.send_go();
    b.send_go();
    let made: f64 = [a.wait_output(), b.wait_output()]
        .iter()
        .map(|out| {
            serde_json::from_str::<serde_json::Value>(&out[0]).unwrap()["json_encode"]["calls"]
                .as_f64()
                .unwrap()
        })
        .sum();
    let after = daemon.scrape();
    let l = [("service", "ser"), ("codec", "json"), ("op", "encode")];
    let counted = after.get_or_zero("gapscope_serialization_duration_seconds_count", &l)
        - before.get_or_zero("gapscope_serialization_duration_seconds_count", &l);
    let ratio = after.get_or_zero(
        "gapscope_serialization_sampling_ratio",
        &[("codec", "json"), ("op", "encode")],
    );
    eprintln!("two paced processes: {made} calls made, {counted} counted, ratio {ratio}");
    assert_eq!(ratio, 1.0);
    assert_eq!(counted, made);
    assert!(!daemon.log_text().contains("probing one second in"));
    a.finish();
    b.finish();
}

#[test]
fn a_user_defined_probe_counts_its_function() {
    let _g = serial();
    let daemon = Daemon::start(
        "[[python.probe]]\nlibrary = \"_json.\"\nsymbol = \"py_encode_basestring_ascii\"\n\
         codec = \"json_str\"\nop = \"encode\"\n\
         [[service]]\nname = \"ser\"\ncmdline = \"serialization_probe.py .*--tag ser-test\"\n",
    );
    let script = repo_root().join("targets/serialization_probe.py");
    let mut w = Workload::spawn(
        &pyenv_python(11),
        &[
            script.to_str().unwrap(),
            "strings",
            "500",
            "--tag",
            "ser-test",
        ],
    );
    daemon.wait_processes("ser", 1.0);
    wait_until(&daemon, "json probes never attached", |m| {
        m.get_or_zero("gapscope_serialization_probed_files", &[]) >= 1.0
    });
    w.go();
    let m = daemon.scrape();
    let l = [("service", "ser"), ("codec", "json_str"), ("op", "encode")];
    assert_eq!(
        m.get_or_zero("gapscope_serialization_duration_seconds_count", &l),
        500.0,
        "{}",
        m.0
    );
    w.finish();
}

/// The intervals `/api/v1/intervals` returns for `query`.
fn intervals(daemon: &Daemon, query: &str) -> Vec<serde_json::Value> {
    let body = gapscope_testkit::http_get(daemon.port, &format!("/api/v1/intervals?{query}"))
        .expect("GET /api/v1/intervals");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["intervals"].as_array().unwrap().clone()
}

#[test]
fn long_calls_become_timeline_intervals() {
    let _g = serial();
    // Every call here takes far more than 10 µs: each becomes an interval,
    // with exactly the duration the histogram recorded.
    let daemon = Daemon::start(
        "[timeline]\nmin_interval_us = 10\n\
         [[service]]\nname = \"ser\"\ncmdline = \"serialization_probe.py .*--tag ser-test\"\n",
    );
    let mut w = start(&daemon, &pyenv_python(11));
    wait_until(&daemon, "json and pickle probes never attached", |m| {
        m.get_or_zero("gapscope_serialization_probed_files", &[]) >= 2.0
    });
    let after = run_and_compare(&daemon, &mut w, &["json", "pickle"], "3.11");
    let all = intervals(&daemon, "service=ser&kind=serialization");
    for codec in ["json", "pickle"] {
        for op in ["encode", "decode"] {
            let mine: Vec<_> = all
                .iter()
                .filter(|i| i["codec"] == codec && i["op"] == op)
                .collect();
            assert_eq!(mine.len() as u64, N, "{codec} {op} intervals");
            assert!(mine.iter().all(|i| i["pid"] == w.pid()));
            let summed: u64 = mine
                .iter()
                .map(|i| i["duration_ns"].as_u64().unwrap())
                .sum();
            let l = [("service", "ser"), ("codec", codec), ("op", op)];
            let hist = after.get_or_zero("gapscope_serialization_duration_seconds_sum", &l);
            assert!(
                (summed as f64 / 1e9 - hist).abs() < 1e-6,
                "{codec} {op}: intervals sum to {summed} ns, histogram {hist} s"
            );
        }
    }
    assert_eq!(
        after.get_or_zero(
            "gapscope_timeline_intervals_total",
            &[("service", "ser"), ("kind", "serialization")]
        ),
        4.0 * N as f64
    );
    w.finish();
    drop(daemon);

    // Over a one-second threshold, none of them is long.
    let daemon = Daemon::start(
        "[timeline]\nmin_interval_us = 1000000\n\
         [[service]]\nname = \"ser\"\ncmdline = \"serialization_probe.py .*--tag ser-test\"\n",
    );
    let mut w = start(&daemon, &pyenv_python(11));
    wait_until(&daemon, "json and pickle probes never attached", |m| {
        m.get_or_zero("gapscope_serialization_probed_files", &[]) >= 2.0
    });
    run_and_compare(&daemon, &mut w, &["json", "pickle"], "3.11");
    assert_eq!(intervals(&daemon, "kind=serialization").len(), 0);
    w.finish();
}
