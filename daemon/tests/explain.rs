//! Explain end to end on this machine: a Python thread launches "GPU"
//! work through the CUDA stand-in (`testkit/data/fake_cuda.c`, probed by
//! the zero-touch uprobes like the real libcuda) and stalls in a known way
//! before each next launch (`targets/stall_probe.py`); gapscoped must
//! attribute each phase's idle time to the stall it made, in amounts the
//! script measured itself.

use std::time::{Duration, Instant};

use gapscope_testkit::{
    Daemon, Metrics, Workload, fake_cuda::FakeCuda, fake_nvml::FakeNvml, gapscoped_bin, http_get,
    output_text, promtool_check, pyenv_python, repo_root, serial,
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

/// Time the hypervisor ran something else on this machine's vCPUs, in ms
/// (`steal` of /proc/stat's `cpu` line, in USER_HZ ticks of 10 ms).
fn steal_ms() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    stat.lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(8))
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(0, |ticks| ticks * 10)
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
    let switches_missed = || {
        daemon.scrape().get_or_zero(
            "gapscope_bpf_program_misses_total",
            &[("program", "gs_sched_switch")],
        )
    };
    let missed_before = switches_missed();
    let steal_before = steal_ms();
    // What the kernel sent and dropped, and what gapscoped took in: says
    // on which side a missing stretch was lost.
    let flow = || {
        let m = daemon.scrape();
        [
            m.get_or_zero("gapscope_events_total", &[("source", "timeline")]),
            m.get_or_zero("gapscope_events_dropped_total", &[("source", "timeline")]),
            m.get_or_zero(
                "gapscope_timeline_intervals_total",
                &[("service", "sleeper"), ("kind", "off_cpu")],
            ),
            m.get_or_zero("gapscope_events_dropped_total", &[("source", "sched")]),
        ]
    };
    let flow_before = flow();
    let out = w.go();
    // Ground truth from the kernel's own accounting, independent of
    // gapscoped: each sleep's window on CLOCK_MONOTONIC (the clock of the
    // intervals) and the thread's context switches during it. A sleep
    // blocked when its voluntary switches rose; one that did not block
    // (its vCPU stolen by the hypervisor, or preempted through the whole
    // sleep) let the timer expire while the thread was still runnable:
    // seen once in CI, a 3 ms sleep with no switch at all.
    let windows: Vec<(u64, u64, i64, i64)> = out
        .iter()
        .find_map(|l| l.strip_prefix("sleeps "))
        .expect("the workload reports each sleep's window")
        .split(' ')
        .map(|w| {
            let f: Vec<u64> = w.split(':').map(|f| f.parse().unwrap()).collect();
            (f[0], f[1], f[2] as i64, f[3] as i64)
        })
        .collect();
    assert_eq!(windows.len(), M);
    let blocked = windows.iter().filter(|w| w.2 > 0).count();
    // The ring buffer is drained on the daemon's loop: ask until every
    // sleep that blocked is there (30 s only keeps a broken run from
    // waiting forever).
    let sleeps_in = |v: &Value| -> usize {
        v["intervals"].as_array().map_or(0, |a| {
            a.iter()
                .filter(|i| {
                    (i["reason"] == "syscall_sleep" || i["reason"] == "runqueue")
                        && i["pid"] == w.pid()
                })
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
        if sleeps_in(&v) >= blocked || Instant::now() > deadline {
            break (body, v);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let of_pid = |reason: &str| -> Vec<(u64, u64)> {
        v["intervals"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["reason"] == reason && i["pid"] == w.pid())
            .map(|i| {
                (
                    i["start_ns"].as_u64().unwrap(),
                    i["end_ns"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    let sleeps = of_pid("syscall_sleep");
    let runqueue = of_pid("runqueue");
    // Each blocked stretch names the syscall it was blocked in: the
    // workload calls nanosleep(2) itself, and reads its stdin between
    // steps; run-queue stretches name none.
    for i in v["intervals"].as_array().unwrap() {
        if i["pid"] == w.pid() {
            match i["reason"].as_str() {
                Some("syscall_sleep") => assert_eq!(i["syscall"], "nanosleep", "{i}"),
                Some("syscall_file") => assert_eq!(i["syscall"], "read", "{i}"),
                // Blocked in some other syscall: it is named.
                Some(r) if r.starts_with("syscall_") => {
                    assert!(i["syscall"].is_string(), "{i}");
                }
                _ => assert!(i["syscall"].is_null(), "{i}"),
            }
        }
    }
    // The kernel runs one BPF program per CPU at a time, and a BPF map
    // syscall holds that slot even while its thread is preempted: a
    // context switch then runs no program (seen under a CPU hog, about
    // once in 30 runs: a blocked sleep with no stretch at all), and the
    // kernel counts it (`recursion_misses`). Under a CPU hog a switch is
    // also skipped, about once in 40 runs, with no miss counted;
    // gapscoped finds each such switch at the thread's next one (a
    // switch-in with no switch-out before it, or the reverse) and counts
    // it as dropped. A sleep may go missing only for a skip reported
    // either way.
    let flow_after = flow();
    let unseen_switches = (flow_after[3] - flow_before[3]) as usize;
    let skipped = (switches_missed() - missed_before) as usize + unseen_switches;
    let within = |(s, e): (u64, u64), w: &(u64, u64, i64, i64)| s >= w.0 && e <= w.1;
    let detail = || {
        format!(
            "{} sleep intervals and {} run-queue stretches; {blocked} of {M} sleeps blocked, \
             {skipped} context switches skipped by the kernel ({unseen_switches} found unpaired), host steal {} ms; \
             the kernel sent {} intervals and dropped {}, gapscoped took {} off-CPU ones of the service \
             (windows start:end:voluntary:involuntary {windows:?}); {body}",
            sleeps.len(),
            runqueue.len(),
            steal_ms() - steal_before,
            flow_after[0] - flow_before[0],
            flow_after[1] - flow_before[1],
            flow_after[2] - flow_before[2],
        )
    };
    // A check of something: most sleeps block on any machine.
    assert!(blocked >= M / 2, "most sleeps never blocked: {}", detail());
    // Each blocked stretch gapscoped saw lies inside one sleep that
    // blocked, one per sleep.
    let mut unseen = Vec::new();
    for w in &windows {
        let inside = sleeps.iter().filter(|&&i| within(i, w)).count();
        let preempted = runqueue.iter().any(|&i| within(i, w));
        if w.2 == 0 {
            assert_eq!(
                inside,
                0,
                "a sleep that never blocked has a blocked stretch: {}",
                detail()
            );
        } else {
            // Blocked for its 3 ms, unless preempted first: then the
            // blocked stretch may fall under the 1 ms threshold, and the
            // run-queue stretch is over it.
            assert!(
                inside <= 1,
                "sleep {w:?}: {inside} blocked stretches: {}",
                detail()
            );
            if inside == 0 && !(preempted && w.3 > 0) {
                unseen.push(*w);
            }
        }
    }
    // A blocked sleep with no stretch over 1 ms blocked under 1 ms and
    // waited under 1 ms: the rest of its window passed on a vCPU the
    // hypervisor had stolen, which no guest tracepoint sees (under a CPU
    // hog, about once in 20 runs, windows of 7 and 9 ms; the host's steal
    // time rose). Such a window is longer than asked by over a
    // millisecond; any other unseen sleep needs a skip gapscoped reported.
    let unexplained = unseen.iter().filter(|w| w.1 - w.0 < 4_000_000).count();
    eprintln!(
        "{blocked} of {M} sleeps blocked; {} unseen ({unexplained} in windows under 4 ms), \
         {skipped} context switches skipped by the kernel, host steal {} ms",
        unseen.len(),
        steal_ms() - steal_before
    );
    assert!(
        unexplained <= skipped,
        "blocked sleeps with no stretch {unseen:?}: {}",
        detail()
    );
    let outside = sleeps
        .iter()
        .filter(|&&i| !windows.iter().any(|w| within(i, w)))
        .count();
    assert_eq!(
        outside,
        0,
        "blocked stretches outside every sleep: {}",
        detail()
    );
    // A sleep that blocked once and was never preempted is blocked from
    // the switch after the timer was armed to the wake-up: the 3 ms asked
    // less the time between arming the timer and switching out, and
    // within the workload's own time asleep. That time is usually a few
    // µs, but the kernel may balance load or take interrupts in between:
    // a clean-clone run measured 61 µs once (2,939,093 ns blocked). Half
    // a millisecond still tells a whole sleep from a fragment of one.
    for w in windows
        .iter()
        .filter(|w| w.2 == 1 && w.3 == 0 && !unseen.contains(w))
    {
        let (s, e) = *sleeps
            .iter()
            .find(|&&i| within(i, w))
            .expect("checked above");
        assert!(
            e - s >= 2_500_000,
            "sleep {w:?} blocked {} ns, under the 3 ms asked: {}",
            e - s,
            detail()
        );
    }
    w.finish();
}

#[test]
fn idle_gaps_are_attributed_to_the_stalls_that_caused_them() {
    stalls_are_attributed(Source::Uprobes);
}

/// The same stalls on the simulated device, seen through CUPTI deep mode:
/// the real agent in the Python process, the CUPTI stand-in recording the
/// device's kernels, so the gaps are the device's own. NVML's stand-in
/// reports two GPUs, and the process on the second: its idle time is
/// priced on that GPU's energy counter (250 W), not its power readings
/// (500 W) nor the other GPU (60 W).
#[test]
fn idle_gaps_seen_by_cupti_deep_mode_are_attributed_to_the_same_stalls() {
    stalls_are_attributed(Source::Cupti);
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Source {
    Uprobes,
    Cupti,
}

/// One phase's energy, priced on GPU 1's counter: 250 W whatever the
/// state, each cause's joules its seconds' worth.
fn phase_energy(name: &str, gpu: &Value, table: &str) {
    let e = &gpu["energy"];
    let near = |got: Option<f64>, want: f64, tol: f64| got.is_some_and(|g| (g - want).abs() <= tol);
    assert!(
        near(e["idle_watts"].as_f64(), 250.0, 2.5),
        "{name}: {e}\n{table}"
    );
    assert!(
        near(e["busy_watts"].as_f64(), 250.0, 2.5),
        "{name}: {e}\n{table}"
    );
    let causes = gpu["idle_by_cause"].as_array().unwrap();
    let joules: f64 = causes.iter().map(|c| c["joules"].as_f64().unwrap()).sum();
    let idle_joules = e["idle_joules"].as_f64().unwrap();
    assert!(
        near(Some(joules), idle_joules, 1e-3 * idle_joules.max(1.0)),
        "{name}: {gpu}"
    );
    let priced = e["priced_share"].as_f64().unwrap();
    for c in causes {
        let seconds = c["seconds"].as_f64().unwrap();
        // Priced share is over the phase; a cause's own may differ by
        // what is still unpriced (at most 1 %).
        assert!(
            near(
                c["joules"].as_f64(),
                250.0 * seconds * priced,
                0.02 * 250.0 * seconds + 1e-3
            ),
            "{name}: {c} ({priced} priced)\n{table}"
        );
    }
}

/// After its last phase the probe lives on with the GPU idle: the gap is
/// open, counted while it lasts, from the last phase's final sync.
fn open_gap_is_counted(daemon: &Daemon, phases: &[Value], device: &str, source: &str) {
    let last_end = phases[5]["end_ns"].as_u64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let (body, gpu) = loop {
        let body = http_get(daemon.port, "/api/v1/explain?service=stalls&window=5m").unwrap();
        let report: Value = serde_json::from_str(&body).unwrap();
        let gpu = report["gpu"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["device"] == device && g["source"] == source)
            .cloned()
            .unwrap_or(Value::Null);
        if gpu["open_gap"]["seconds"].as_f64() >= Some(1.5) || Instant::now() > deadline {
            break (body, gpu);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let open = &gpu["open_gap"];
    let since = open["since_ns"]
        .as_u64()
        .unwrap_or_else(|| panic!("no open gap: {body}\n{}", daemon.log_text()));
    // The final kernel ended (its sync returned) just before the phase's
    // end was read.
    assert!(
        since <= last_end && since + 50_000_000 >= last_end,
        "open since {since}, last phase ended {last_end}: {open}"
    );
    let seconds = open["seconds"].as_f64().unwrap();
    let parts: f64 = open["idle_by_cause"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["seconds"].as_f64().unwrap())
        .sum();
    assert!((parts - seconds).abs() < 1e-6, "{open}");
    let m = daemon.scrape();
    let now_open = m.get_or_zero(
        "gapscope_gpu_idle_open_seconds",
        &[
            ("service", "stalls"),
            ("device", device),
            ("source", source),
        ],
    );
    assert!(
        now_open >= seconds,
        "gauge {now_open} s, report {seconds} s"
    );
}

/// `gapscoped trace` of the run, read by an independent reader
/// (`testkit/data/trace_check.py`: the trace event format's schema, async
/// slices paired, complete events nested, every track named), holds the
/// workload phase by phase: one idle gap per step, each stall as the
/// span it was, the kernels (deep mode), the phases.
fn trace_holds_the_workload(
    daemon: &Daemon,
    url: &str,
    launcher: u32,
    phases: &[Value],
    source: Source,
) {
    let python = repo_root().join(".cache/tools-venv/bin/python");
    if !python.is_file() {
        gapscope_testkit::skip(&format!(
            "the trace's independent reader needs {} (scripts/setup.sh makes it)",
            python.display()
        ));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("trace.json");
    let out = std::process::Command::new(gapscoped_bin())
        .args([
            "trace",
            "--service",
            "stalls",
            "--window",
            "2m",
            "--url",
            url,
            "--out",
        ])
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    // GAPSCOPE_KEEP_TRACE=DIR keeps the trace (the README's picture is
    // drawn from one: scripts/trace_picture.py).
    if let Some(dir) = std::env::var_os("GAPSCOPE_KEEP_TRACE") {
        let name = match source {
            Source::Uprobes => "trace-uprobes.json",
            Source::Cupti => "trace-cupti.json",
        };
        std::fs::copy(&file, std::path::Path::new(&dir).join(name)).unwrap();
    }
    let bytes = std::fs::metadata(&file).unwrap().len();
    let first = phases[0]["start_ns"].as_u64().unwrap();
    let last = phases[5]["end_ns"].as_u64().unwrap();
    eprintln!(
        "trace: {bytes} bytes for a {:.1} s run, {:.0} kB per second",
        (last - first) as f64 / 1e9,
        bytes as f64 / 1e3 / ((last - first) as f64 / 1e9)
    );
    let ranges: Vec<String> = phases
        .iter()
        .map(|p| format!("{}:{}", p["start_ns"], p["end_ns"]))
        .collect();
    let checked = std::process::Command::new(&python)
        .arg(repo_root().join("testkit/data/trace_check.py"))
        .arg(&file)
        .arg(repo_root().join("testkit/data/chrome-trace.schema.json"))
        // The stalls run on the probe's main thread, and last 20 ms (300
        // for idle), the stand-in's syncs 2 ms: stretches over 15 ms are
        // the stalls.
        .args(["--thread", &launcher.to_string(), "--long-us", "15000"])
        .args(&ranges)
        .output()
        .unwrap();
    assert!(checked.status.success(), "{}", output_text(&checked));
    let counts: Value = serde_json::from_slice(&checked.stdout).unwrap();
    // Stretches off CPU the kernel ran no program for are reported; a
    // sleep may be missing from the trace only for one of them.
    let lost = daemon
        .scrape()
        .get_or_zero("gapscope_events_dropped_total", &[("source", "sched")]) as u64;
    let mut table = String::new();
    for (truth, got) in phases.iter().zip(counts["ranges"].as_array().unwrap()) {
        let name = truth["phase"].as_str().unwrap();
        let steps = truth["steps"].as_u64().unwrap();
        let n = |section: &str, key: &str| got[section][key].as_u64().unwrap_or(0);
        table.push_str(&format!("{name} ({steps} steps): {got}\n"));
        assert_eq!(got["gaps"].as_u64(), Some(steps), "{name} gaps:\n{table}");
        if source == Source::Cupti {
            // Each step's kernel, and the one that opened the phase
            // unless it ended before the phase's start was read (the
            // thread waited for the GIL or a CPU meanwhile).
            let kernels: u64 = got["spans"]
                .as_object()
                .unwrap()
                .iter()
                .filter(|(k, _)| k.starts_with("kernel/"))
                .map(|(_, v)| v.as_u64().unwrap())
                .sum();
            assert!(
                kernels == steps || kernels == steps + 1,
                "{name}: {kernels} kernels:\n{table}"
            );
        }
        let within = |have: u64, want: u64| have <= want && have + lost >= want;
        match name {
            "sleep" => assert!(within(n("long", "off_cpu/syscall_sleep"), steps), "{table}"),
            "json" => assert_eq!(
                n("async", "python/serialization json.encode"),
                steps,
                "{table}"
            ),
            "poll" | "idle" => {
                assert!(within(n("long", "off_cpu/syscall_poll"), steps), "{table}");
            }
            "gil" => assert!(n("async", "python/gil_wait") >= 1, "{table}"),
            _ => {}
        }
        assert_eq!(n("spans", &format!("loadgen/{name}")), 1, "{table}");
    }
    eprintln!("{table}");
}

fn stalls_are_attributed(source: Source) {
    let _g = serial();
    let fixture = FakeCuda::build();
    let cupti = match source {
        Source::Uprobes => None,
        Source::Cupti => match fixture.cupti("cupti-12.9") {
            Ok(p) => Some(p),
            Err(why) => {
                gapscope_testkit::skip(&why);
                return;
            }
        },
    };
    let socket = format!("/tmp/gapscope-explain-{}.sock", std::process::id());
    // Power from NVML's stand-in, with deep mode.
    let nvml = match source {
        Source::Cupti => match FakeNvml::build() {
            Ok(n) => Some(n),
            Err(why) => {
                gapscope_testkit::skip(&format!("the energy checks: {why}"));
                None
            }
        },
        Source::Uprobes => None,
    };
    let pid_file =
        std::env::temp_dir().join(format!("gapscope-explain-{}.pid", std::process::id()));
    let _ = std::fs::remove_file(&pid_file);
    let mut extra = format!(
        "\n[inject]\nsocket = \"{socket}\"\n{}",
        // Deep mode alone: no uprobe on libcuda, so the launching
        // thread is known only from CUPTI's API records.
        if source == Source::Cupti {
            "[cuda]\nenabled = false\n"
        } else {
            ""
        }
    );
    let mut wrapper = Vec::new();
    if let Some(nvml) = &nvml {
        let scenario = nvml.scenario(
            "two-gpus",
            &serde_json::json!({
                "epoch_ns": 0,
                "gpus": [
                    { "uuid": "GPU-0", "idle": { "power_w": 60 } },
                    { "uuid": "GPU-1", "idle": { "power_w": 500, "energy_w": 250,
                      "processes": [ { "pid_file": pid_file, "memory": 1_000_000_000u64 } ] } }
                ]
            }),
        );
        extra.push_str(&format!(
            "[nvml]\nlibrary = \"{}\"\ninterval_ms = 100\n",
            nvml.library().display()
        ));
        wrapper = vec![
            "env".to_string(),
            format!(
                "{}={}",
                gapscope_testkit::fake_nvml::SCENARIO_ENV,
                scenario.display()
            ),
        ];
    }
    let daemon = Daemon::start_wrapped(
        "[[service]]\nname = \"stalls\"\ncmdline = 'stall_probe.py .*--tag explain-test'\n\
         [[service]]\nname = \"quiet\"\ncmdline = 'never-started-explain-test'\n",
        &extra,
        &wrapper,
    );
    let script = repo_root().join("targets/stall_probe.py");
    let url = format!("http://127.0.0.1:{}", daemon.port);
    let mut cmd = std::process::Command::new(pyenv_python(11));
    cmd.arg(&script)
        .arg(fixture.path(""))
        .args(["--tag", "explain-test", "--gapscoped", &url]);
    if let Some(cupti) = &cupti {
        cmd.arg("--simulate")
            .env("CUDA_INJECTION64_PATH", gapscope_testkit::inject_library())
            .env("GAPSCOPE_CUPTI_PATH", cupti)
            .env("GAPSCOPE_SOCKET", &socket);
    }
    let mut w = Workload::spawn_command(cmd);
    std::fs::write(&pid_file, w.pid().to_string()).unwrap();
    let (device, source_name) = match source {
        Source::Uprobes => ("all", "uprobes"),
        Source::Cupti => ("0", "cupti"),
    };
    if source == Source::Uprobes {
        wait_until(&daemon, "the CUDA stand-in was never probed", |m| {
            m.get_or_zero("gapscope_cuda_probed_files", &[]) >= 1.0
        });
    }
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
    // With NVML, until every phase's time is priced too.
    let all_attributed = |report: &Value| {
        phases.iter().all(|truth| {
            report["phases"].as_array().is_some_and(|reported| {
                reported.iter().any(|p| {
                    p["phase"] == truth["phase"]
                        && p["gpu"][0]["gaps"].as_u64() >= truth["steps"].as_u64()
                        && (nvml.is_none()
                            || p["gpu"][0]["energy"]["priced_share"].as_f64() >= Some(0.99))
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
        assert_eq!(gpu["device"], device, "{gpu}");
        assert_eq!(gpu["source"], source_name);
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
        // A stall's wall time includes what the thread waited for a CPU
        // when another job had it, and a gap also holds the waits for a
        // CPU just before and after the stall, which the script's clock
        // does not: gapscoped reports both as runqueue. So the stall's
        // own cause is at most the stall (10 % slack), and with the
        // waits for a CPU at least it.
        let runq = cause(gpu, "runqueue");
        // And what went unrecorded because another job kept taking the
        // thread's CPU (each involuntary switch the probe counted can
        // leave up to two stretches under the 1 ms threshold) may be
        // missing from it.
        let preempted = truth["preempted"].as_f64().unwrap();
        let unobserved = gpu["coverage"]["unobserved_seconds"].as_f64().unwrap();
        let unrecorded = unobserved.min((0.05 * idle).max(2e-3 * preempted));
        let covers =
            |named: f64| named <= 1.10 * measured && named + runq + unrecorded >= 0.90 * measured;
        table.push_str(&format!(
            "{name}: measured {measured:.4} s, reported {gpu}\n"
        ));
        match name {
            "sleep" => assert!(covers(cause(gpu, "syscall_sleep")), "{table}"),
            "json" => {
                let ser = cause(gpu, "serialization");
                assert!(ser >= 0.8 * (measured - runq), "{table}");
                assert!(covers(ser + cause(gpu, "python_cpu")), "{table}");
            }
            "cpu" => {
                let cpu = cause(gpu, "python_cpu");
                assert!(covers(cpu), "{table}");
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
            "poll" => assert!(covers(cause(gpu, "syscall_poll")), "{table}"),
            "idle" => assert!(covers(cause(gpu, "no_work")), "{table}"),
            "gil" => {
                let top = &gpu["idle_by_cause"][0];
                assert_eq!(top["cause"], "gil_wait", "{table}");
                assert!(top["share"].as_f64().unwrap() >= 0.6, "{table}");
            }
            other => panic!("unexpected phase {other}"),
        }
        // The honest residual: nearly all of it has a recorded cause,
        // unless another job kept taking the thread's CPU: each time it
        // did (the probe counts its own involuntary switches) up to two
        // stretches shorter than the 1 ms threshold go unrecorded.
        assert!(
            unobserved <= (0.05 * idle).max(2e-3 * preempted),
            "{name}: {unobserved} s unobserved of {idle} s, {preempted} involuntary switches\n{table}"
        );
        if nvml.is_some() {
            phase_energy(name, gpu, &table);
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
    let launches: u64 = phases
        .iter()
        .map(|p| p["steps"].as_u64().unwrap() + 1)
        .sum();
    match source {
        Source::Uprobes => assert!(
            report["fusion"]["launches"].as_f64().unwrap() >= 200.0,
            "{body}"
        ),
        // Every launch's kernel, exactly, from the device's records.
        Source::Cupti => assert_eq!(
            report["fusion"]["kernels"].as_f64().unwrap(),
            launches as f64,
            "{body}"
        ),
    }

    // The counters add up: busy + idle by cause is the wall time covered.
    let m = daemon.scrape();
    let l = [
        ("service", "stalls"),
        ("device", device),
        ("source", source_name),
    ];
    let idle: f64 = [
        "gil_wait",
        "serialization",
        "python_cpu",
        "unobserved",
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
    if nvml.is_some() {
        // The counters price the same time: 250 J a second, busy or idle,
        // for all of it but what waits for the next reading.
        let idle_j = m.sum("gapscope_gpu_idle_energy_joules_total", &l);
        let busy_j = m.get_or_zero("gapscope_gpu_timeline_busy_energy_joules_total", &l);
        let unpriced = m.get_or_zero("gapscope_gpu_energy_unpriced_seconds_total", &l);
        let priced_s = (idle_j + busy_j) / 250.0;
        assert!(
            unpriced < 0.5
                && priced_s <= busy + idle + 1e-3
                && priced_s >= busy + idle - unpriced - 0.6,
            "{idle_j} J idle + {busy_j} J busy for {busy} s busy + {idle} s idle, {unpriced} s unpriced"
        );
    }

    if source == Source::Cupti {
        // Every launch became a kernel the device ran for 2 ms.
        let kernels = m.get_or_zero(
            "gapscope_gpu_kernel_duration_seconds_count",
            &[l[0], ("device", "0"), ("class", "other")],
        );
        assert_eq!(kernels, launches as f64, "{}", daemon.log_text());
        // The one launching thread, known from CUPTI's thread ids alone.
        assert_eq!(report["data_quality"]["launching_threads"], 1, "{body}");
        open_gap_is_counted(&daemon, &phases, device, source_name);
        trace_holds_the_workload(&daemon, &url, w.pid(), &phases, source);
        w.finish();
        return;
    }
    open_gap_is_counted(&daemon, &phases, device, source_name);
    trace_holds_the_workload(&daemon, &url, w.pid(), &phases, source);
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
        "of the idle time has a recorded cause",
        "what fixing each would buy:",
        "removing syscall_sleep: −",
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
    // What each cause loses per hour at a GPU-hour price: its share of
    // the GPU's time times the price.
    let out = std::process::Command::new(gapscoped_bin())
        .args([
            "explain",
            "stalls",
            "--window",
            "5m",
            "--url",
            &url,
            "--json",
            "--gpu-hour-usd",
            "2.5",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    let priced: Value = serde_json::from_slice(&out.stdout).unwrap();
    let gpu = &priced["gpu"][0];
    let wall = gpu["busy_seconds"].as_f64().unwrap() + gpu["idle_seconds"].as_f64().unwrap();
    for c in gpu["idle_by_cause"].as_array().unwrap() {
        let want = 2.5 * c["seconds"].as_f64().unwrap() / wall;
        let got = c["usd_per_hour"].as_f64().unwrap();
        assert!((got - want).abs() <= 1e-9 + 1e-6 * want, "{c} vs {want}");
    }
    let out = std::process::Command::new(gapscoped_bin())
        .args(["explain", "stalls", "--url", &url, "--gpu-hour-usd=-1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("price of one GPU-hour"),
        "{}",
        output_text(&out)
    );
    let (status, body) = gapscope_testkit::http_get_status(
        daemon.port,
        "/api/v1/explain?service=stalls&gpu_hour_usd=lots",
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("gpu_hour_usd"), "{body}");
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

/// A CUDA device is priced on the GPU its UUID names, not by its index:
/// the loop runs on CUDA device 1 of a process that sees NVML's two GPUs
/// in the other order (`CUDA_VISIBLE_DEVICES=1,0`), and NVML lists the
/// process on both. The injection library tells gapscoped each index's
/// UUID; without it, the row's GPU is unknown and nothing is priced.
#[test]
fn a_cuda_device_is_priced_on_the_gpu_its_uuid_names() {
    let _g = serial();
    let fixture = FakeCuda::build();
    let (cupti, nvml) = match (fixture.cupti("cupti-12.9"), FakeNvml::build()) {
        (Ok(c), Ok(n)) => (c, n),
        (Err(why), _) | (_, Err(why)) => {
            gapscope_testkit::skip(&why);
            return;
        }
    };
    let pid_file = std::env::temp_dir().join(format!("gapscope-uuid-{}.pid", std::process::id()));
    let _ = std::fs::remove_file(&pid_file);
    let (a, b) = (
        "GPU-aaaaaaaa-1111-2222-3333-000000000000",
        "GPU-bbbbbbbb-1111-2222-3333-000000000001",
    );
    // Different draws, so a row priced on the wrong GPU shows.
    let on_both = serde_json::json!([{ "pid_file": pid_file, "memory": 1_000_000_000u64 }]);
    let scenario = nvml.scenario(
        "uuids",
        &serde_json::json!({
            "epoch_ns": 0,
            "gpus": [
                { "uuid": a, "idle": { "power_w": 100, "energy_w": 100, "processes": on_both } },
                { "uuid": b, "idle": { "power_w": 300, "energy_w": 300, "processes": on_both } }
            ]
        }),
    );
    let socket = format!("/tmp/gapscope-uuid-{}.sock", std::process::id());
    let daemon = nvml.daemon_with(
        &format!("[inject]\nsocket = \"{socket}\"\n[cuda]\nenabled = false"),
        "[[service]]\nname = \"uuid\"\ncmdline = 'whatif_loop.py .*--tag uuid-test'\n",
        100,
        &scenario,
    );
    let mut cmd = std::process::Command::new(pyenv_python(11));
    cmd.arg(repo_root().join("targets/whatif_loop.py"))
        .arg(fixture.path(""))
        .args(["--stalls", "sleep", "--steps", "100", "--kernel-ms", "10"])
        .args(["--stall-ms", "5", "--tag", "uuid-test"])
        .env("CUDA_INJECTION64_PATH", gapscope_testkit::inject_library())
        .env("GAPSCOPE_CUPTI_PATH", &cupti)
        .env("GAPSCOPE_SOCKET", &socket)
        // CUDA's index 0 is NVML's GPU 1, index 1 NVML's GPU 0.
        .env("FAKE_CUDA_UUIDS", format!("{b},{a}"))
        .env("FAKE_CUDA_DEVICE", "1");
    let mut w = Workload::spawn_command(cmd);
    std::fs::write(&pid_file, w.pid().to_string()).unwrap();
    daemon.wait_processes("uuid", 1.0);
    w.go();
    // Priced once a reading passed the run's end.
    let deadline = Instant::now() + Duration::from_secs(20);
    let row = loop {
        let body = http_get(daemon.port, "/api/v1/explain?service=uuid&window=5m").unwrap();
        let report: Value = serde_json::from_str(&body).unwrap();
        let row = report["gpu"]
            .as_array()
            .and_then(|rows| rows.iter().find(|g| g["device"] == "1").cloned())
            .unwrap_or(Value::Null);
        if row["gaps"].as_u64() >= Some(100) && row["energy"]["priced_share"].as_f64() >= Some(0.99)
        {
            break row;
        }
        assert!(
            Instant::now() < deadline,
            "CUDA device 1 was never priced: {body}\n{}",
            daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let e = &row["energy"];
    eprintln!("CUDA device 1: {e}");
    // The mapping, for joining deep mode's series to NVML's.
    let m = daemon.scrape();
    for (device, uuid) in [("0", b), ("1", a)] {
        let l = [("service", "uuid"), ("device", device), ("UUID", uuid)];
        assert_eq!(m.get("gapscope_cuda_device_info", &l), Some(1.0), "{l:?}");
    }
    for watts in ["idle_watts", "busy_watts"] {
        let w = e[watts].as_f64().unwrap();
        assert!(
            (w - 100.0).abs() < 1.0,
            "{watts} {w}: priced on NVML's GPU 1 (300 W), not on GPU 0 (100 W), which its UUID names: {row}"
        );
    }
    w.finish();
    let _ = std::fs::remove_file(&pid_file);
}

/// In deep mode each device's idle stretch reads as open on its own: one
/// process keeps launching on CUDA device 0 while another, of the same
/// service, ran one kernel on device 1 and went idle. Device 1's gap is
/// open while device 0's launches go on (they go to device 0: the
/// launching thread's kernels all ran there); device 0 has none.
#[test]
fn a_device_left_idle_reads_open_while_another_keeps_working() {
    let _g = serial();
    let fixture = FakeCuda::build();
    let cupti = match fixture.cupti("cupti-12.9") {
        Ok(c) => c,
        Err(why) => {
            gapscope_testkit::skip(&why);
            return;
        }
    };
    let socket = format!("/tmp/gapscope-open-{}.sock", std::process::id());
    let daemon = Daemon::start_with(
        "[[service]]\nname = \"two\"\ncmdline = 'whatif_loop.py .*--tag open-test'\n",
        &format!("\n[inject]\nsocket = \"{socket}\"\n[cuda]\nenabled = false\n"),
    );
    let loop_on = |device: &str, steps: &str| {
        let mut cmd = std::process::Command::new(pyenv_python(11));
        cmd.arg(repo_root().join("targets/whatif_loop.py"))
            .arg(fixture.path(""))
            .args(["--stalls", "sleep", "--steps", steps, "--kernel-ms", "10"])
            .args(["--stall-ms", "2", "--tag", "open-test"])
            .env("CUDA_INJECTION64_PATH", gapscope_testkit::inject_library())
            .env("GAPSCOPE_CUPTI_PATH", &cupti)
            .env("GAPSCOPE_SOCKET", &socket)
            .env("FAKE_CUDA_DEVICE", device);
        Workload::spawn_command(cmd)
    };
    let mut idle = loop_on("1", "5");
    let mut busy = loop_on("0", "400");
    daemon.wait_processes("two", 2.0);
    let idle_out: Value = serde_json::from_str(&idle.go()[0]).unwrap();
    let went_idle = idle_out["end_ns"].as_u64().unwrap();
    // Device 0 works for about 5 s from here.
    busy.send_go();
    let started = Instant::now();
    let mut seen: Option<(f64, Value)> = None;
    while started.elapsed() < Duration::from_secs(4) {
        let body = http_get(daemon.port, "/api/v1/explain?service=two&window=5m").unwrap();
        let report: Value = serde_json::from_str(&body).unwrap();
        let rows = report["gpu"].as_array().cloned().unwrap_or_default();
        let row = |d: &str| rows.iter().find(|g| g["device"] == d).cloned();
        if let (Some(zero), Some(one)) = (row("0"), row("1"))
            && zero["busy_seconds"].as_f64() > Some(1.0)
        {
            // Device 0 is working: never open.
            assert!(zero["open_gap"].is_null(), "device 0 reads open: {zero}");
            if let Some(s) = one["open_gap"]["seconds"].as_f64() {
                seen = Some((s, one["open_gap"].clone()));
                if s >= 1.5 {
                    break;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let (seconds, open) = seen.unwrap_or_else(|| {
        panic!(
            "device 1's idle stretch never read open while device 0 worked\n{}",
            daemon.log_text()
        )
    });
    let since = open["since_ns"].as_u64().unwrap();
    eprintln!("device 1 open for {seconds:.2} s while device 0 worked: {open}");
    assert!(seconds >= 1.5, "device 1 open only {seconds} s: {open}");
    // From its last kernel's end, just before the loop read its clock.
    assert!(
        since <= went_idle && since + 50_000_000 >= went_idle,
        "open since {since}, went idle at {went_idle}: {open}"
    );
    let gauge = daemon.scrape().get_or_zero(
        "gapscope_gpu_idle_open_seconds",
        &[("service", "two"), ("device", "1"), ("source", "cupti")],
    );
    assert!(gauge >= seconds, "gauge {gauge} s, report {seconds} s");
    busy.wait_output();
    busy.finish();
    idle.finish();
}
