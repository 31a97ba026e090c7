//! The HTTP surface: `/metrics` passes `promtool check metrics`, names
//! follow the project's conventions, and the landing page links the rest.

use gapscope_testkit::{Daemon, Workload, http_get, promtool_check, serial};

#[test]
fn metrics_pass_promtool_and_conventions() {
    let _g = serial();
    let daemon = Daemon::start("[[service]]\nname = \"lint\"\ncmdline = \"--tag lint( |$)\"\n");
    let mut w = Workload::start("syscalls --getppid 10 --nanosleep 3 --tag lint");
    daemon.wait_processes("lint", 1.0);
    w.go();
    let text = daemon.scrape().0;
    w.finish();

    if let Err(report) = promtool_check(&text) {
        panic!("promtool: {report}\n{text}");
    }

    for line in text.lines().filter(|l| l.starts_with("# TYPE")) {
        let mut parts = line.split_whitespace().skip(2);
        let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
        // The exporter conventions' process_* metrics, else the prefix.
        assert!(
            name.starts_with("gapscope_") || name.starts_with("process_"),
            "{name} lacks the prefix"
        );
        assert_eq!(
            name.ends_with("_total"),
            kind == "counter",
            "{name} is a {kind}"
        );
    }
    assert!(!text.contains("pid="), "no pid labels");
    for must in [
        "gapscope_build_info",
        "gapscope_service_processes",
        "gapscope_events_total",
        "gapscope_events_dropped_total",
        "gapscope_bpf_program_run_seconds_total",
        "gapscope_bpf_program_runs_total",
        "gapscope_bpf_program_misses_total",
        "gapscope_scrape_collector_duration_seconds",
        "gapscope_oncpu_seconds_total",
        "gapscope_offcpu_seconds_total",
        "gapscope_runqueue_latency_seconds_bucket",
        "gapscope_syscall_duration_seconds_bucket",
        "gapscope_service_processes_traced_total",
    ] {
        assert!(text.contains(must), "{must} missing from /metrics");
    }
    // The process metrics are gapscoped's own, as /proc tells them.
    let m = daemon.scrape();
    let status = std::fs::read_to_string(format!("/proc/{}/status", daemon.child.id())).unwrap();
    let field = |k: &str| -> f64 {
        let line = status.lines().find(|l| l.starts_with(k)).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    let threads = m.get("process_threads", &[]).unwrap();
    assert_eq!(threads, field("Threads:"), "{status}");
    let rss = m.get("process_resident_memory_bytes", &[]).unwrap();
    let rss_now = field("VmRSS:") * 1024.0;
    assert!(
        (rss / rss_now - 1.0).abs() < 0.25,
        "{rss} against {rss_now}"
    );
    let fds = std::fs::read_dir(format!("/proc/{}/fd", daemon.child.id()))
        .unwrap()
        .count() as f64;
    let open = m.get("process_open_fds", &[]).unwrap();
    assert!((open - fds).abs() <= 2.0, "{open} open fds against {fds}");
    let started = m.get("process_start_time_seconds", &[]).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        started <= now && started > now - 120.0,
        "{started} vs {now}"
    );
    assert!(m.get("process_cpu_seconds_total", &[]).unwrap() > 0.0);
    assert!(m.get("process_max_fds", &[]).unwrap() >= fds);
}

#[test]
fn landing_page_and_healthz() {
    let _g = serial();
    let daemon = Daemon::start("[[service]]\nname = \"web\"\ncmdline = \"nothing-matches\"\n");
    let page = http_get(daemon.port, "/").unwrap();
    assert!(page.contains("href=\"/metrics\"") && page.contains("href=\"/healthz\""));
    assert!(page.contains("<li>web (<a href=\"/api/v1/explain?service=web\">"));
    assert_eq!(http_get(daemon.port, "/healthz").unwrap(), "ok\n");
    assert!(http_get(daemon.port, "/nope").is_none());
}
