//! Serialization probes against ground truth: json and pickle called
//! exactly N times on a known payload under every pyenv CPython 3.9–3.13
//! are counted exactly, and their summed duration is within 20 % of what
//! the script measured around the calls. Debian's stripped python3.11
//! cannot be probed, and says so.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use gapscope_testkit::{Daemon, Metrics, Workload, pyenv_python, repo_root, serial};

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
        let before = daemon.scrape();
        let out = w.go();
        let after = daemon.scrape();
        let truth: serde_json::Value = serde_json::from_str(&out[0]).unwrap();
        for (codec, op) in [
            ("json", "encode"),
            ("json", "decode"),
            ("pickle", "encode"),
            ("pickle", "decode"),
        ] {
            let l = [("service", "ser"), ("codec", codec), ("op", op)];
            let delta = |name: &str| after.get_or_zero(name, &l) - before.get_or_zero(name, &l);
            let calls = delta("gapscope_serialization_duration_seconds_count");
            let seconds = delta("gapscope_serialization_duration_seconds_sum");
            let want = truth[format!("{codec}_{op}")]["ns"].as_f64().unwrap() / 1e9;
            eprintln!(
                "3.{minor} {codec} {op}: {calls} calls, {seconds:.4} s measured by gapscope, {want:.4} s by the script"
            );
            assert_eq!(calls, N as f64, "3.{minor} {codec} {op}: calls");
            assert!(
                (seconds - want).abs() <= 0.20 * want,
                "3.{minor} {codec} {op}: {seconds} s vs {want} s"
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
    assert!(made > 1000.0, "the script was busy: {made} calls");
    assert!(
        ratio < 1.0,
        "the probe went over budget and is sampled: ratio {ratio}"
    );
    assert!(
        counted > 0.0 && counted < 0.5 * made,
        "sampling counted {counted} of {made} calls"
    );
    assert!(daemon.log_text().contains("probing one second in"));
    w.finish();
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
