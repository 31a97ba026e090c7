//! The Grafana dashboards and the alerting rules, proven by query: every
//! panel's PromQL (template variables substituted) runs on a real
//! Prometheus that scrapes a real gapscoped tracing real processes — a
//! Python server under the load generator, a CUDA-calling process on the
//! test fixture libraries, a deep-mode peer sending CUPTI-shaped records —
//! and must return data; the NVML panels read two GPUs through the NVML
//! stand-in (`testkit/data/fake_nvml.c`), and are named and not checked
//! only where its header is missing. Lint rules in the manner of Grafana's dashboard linter check
//! every panel, and promtool tests the alerting rules.

use std::{
    collections::BTreeSet,
    process::Command,
    time::{Duration, Instant, SystemTime},
};

use gapscope_testkit::{
    Daemon, Workload, dashboard_picture, fake_cuda::FakeCuda, fake_nvml::FakeNvml, free_port,
    http_get, loadgen_bin, prometheus::Prometheus, repo_root, serial, target_python,
    wire_sender_bin,
};
use serde_json::{Value, json};

/// Metrics only measured while BPF statistics are on (`bpf::stats`).
const SAMPLED_STATISTICS: [&str; 3] = [
    "gapscope_bpf_program_run_seconds_total",
    "gapscope_bpf_program_runs_total",
    "gapscope_bpf_stats_sampled_seconds_total",
];

fn dashboards() -> Vec<(String, Value)> {
    let dir = repo_root().join("grafana/dashboards");
    let mut out: Vec<(String, Value)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            let v = serde_json::from_str(&std::fs::read_to_string(&p).unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p.file_name().unwrap().to_string_lossy().into_owned(), v)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(out.len() >= 6, "dashboards missing in {}", dir.display());
    out
}

/// (dashboard, panel title, panel) for every panel that is not a row.
fn panels(dashboards: &[(String, Value)]) -> Vec<(String, String, Value)> {
    let mut out = Vec::new();
    for (name, d) in dashboards {
        let mut stack: Vec<Value> = d["panels"].as_array().cloned().unwrap_or_default();
        while let Some(p) = stack.pop() {
            if p["type"] == "row" {
                stack.extend(p["panels"].as_array().cloned().unwrap_or_default());
            } else {
                out.push((
                    name.clone(),
                    p["title"].as_str().unwrap_or("").to_string(),
                    p,
                ));
            }
        }
    }
    out
}

fn exprs(panel: &Value) -> Vec<String> {
    panel["targets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["expr"].as_str().map(str::to_string))
        .collect()
}

/// gapscope metric names a query reads (histogram suffixes included).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(pos) = expr[i..].find("gapscope_") {
        let start = i + pos;
        let preceded =
            start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b':');
        let end = expr[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(expr.len(), |e| start + e);
        if !preceded && !expr[end..].starts_with(':') {
            names.insert(expr[start..end].to_string());
        }
        i = end;
    }
    names
}

/// Metrics only NVML produces: there is no GPU here. (CUPTI deep mode's
/// come from the test sender, the attribution's from it and the CUDA
/// stand-in.)
fn needs_nvml(metric: &str) -> bool {
    const DEEP: [&str; 10] = [
        "gapscope_gpu_idle_seconds_total",
        "gapscope_gpu_timeline_busy_seconds_total",
        "gapscope_gpu_idle_gaps_total",
        "gapscope_gpu_kernel_duration_seconds",
        "gapscope_gpu_busy_seconds_total",
        "gapscope_gpu_idle_gap_seconds",
        "gapscope_gpu_launch_latency_seconds",
        "gapscope_gpu_copy_bytes_total",
        "gapscope_gpu_memset_bytes_total",
        "gapscope_gpu_sync_wait_seconds",
    ];
    metric.starts_with("gapscope_gpu_") && !DEEP.iter().any(|d| metric.starts_with(d))
}

#[test]
fn the_dashboards_are_what_the_generator_writes() {
    let out = Command::new("python3")
        .arg(repo_root().join("grafana/generate.py"))
        .arg("--check")
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The rules of Grafana's dashboard linter that apply, and ours.
#[test]
fn every_panel_passes_the_lint_rules() {
    let ds = repo_root().join("grafana/dashboards");
    let all = dashboards();
    let mut problems = Vec::new();
    for (name, d) in &all {
        let vars = d["templating"]["list"].as_array().unwrap();
        let datasource = vars.iter().find(|v| v["name"] == "datasource");
        if datasource.is_none_or(|v| v["type"] != "datasource" || v["query"] != "prometheus") {
            problems.push(format!("{name}: no Prometheus datasource variable"));
        }
        for v in vars.iter().filter(|v| v["type"] == "query") {
            if v["datasource"]["uid"] != "${datasource}" {
                problems.push(format!(
                    "{name}: variable {} ignores $datasource",
                    v["name"]
                ));
            }
        }
        if !vars.iter().any(|v| v["name"] == "instance") {
            problems.push(format!("{name}: no instance variable"));
        }
        if d["uid"]
            .as_str()
            .is_none_or(|u| u.is_empty() || u.len() > 40)
        {
            problems.push(format!("{name}: a stable uid of at most 40 characters"));
        }
        let mut titles = BTreeSet::new();
        let mut ids = BTreeSet::new();
        for (_, title, p) in panels(&[(name.clone(), d.clone())]) {
            let at = format!("{name} / {title}");
            if !titles.insert(title.clone()) {
                problems.push(format!("{at}: title used twice"));
            }
            if !ids.insert(p["id"].as_u64().unwrap_or(0)) {
                problems.push(format!("{at}: id used twice"));
            }
            if p["datasource"]["uid"] != "${datasource}" {
                problems.push(format!("{at}: datasource is not $datasource"));
            }
            if p["fieldConfig"]["defaults"]["unit"]
                .as_str()
                .is_none_or(str::is_empty)
            {
                problems.push(format!("{at}: no unit"));
            }
            if p["description"].as_str().is_none_or(|s| s.len() < 10) {
                problems.push(format!("{at}: no description"));
            }
            let targets = p["targets"].as_array().cloned().unwrap_or_default();
            if targets.is_empty() {
                problems.push(format!("{at}: no query"));
            }
            for t in targets {
                let expr = t["expr"].as_str().unwrap_or("");
                if t["datasource"]["uid"] != "${datasource}" {
                    problems.push(format!("{at}: a query ignores $datasource"));
                }
                for f in ["rate(", "irate(", "increase("] {
                    for (i, _) in expr.match_indices(f) {
                        let rest = &expr[i..];
                        let window = rest.find('[').map(|s| &rest[s..]);
                        // BPF run-time statistics are sampled one second a
                        // minute by default: their rates need a window
                        // that holds samples, whatever the scrape interval.
                        let metric = &rest[f.len()..];
                        let sampled = SAMPLED_STATISTICS.iter().any(|m| metric.starts_with(m));
                        let fixed_ok = sampled && window.is_some_and(|w| w.starts_with("[5m]"));
                        if !fixed_ok && !window.is_some_and(|w| w.starts_with("[$__rate_interval]"))
                        {
                            problems
                                .push(format!("{at}: {f}...) without [$__rate_interval]: {expr}"));
                        }
                    }
                }
                // Every selector filters by host, so one dashboard serves a
                // fleet: gapscoped's by $instance, the load generator's own
                // metrics by $client.
                for m in metric_names(expr) {
                    let host = if m.starts_with("gapscope_client_") {
                        "instance=~\"$client\""
                    } else {
                        "instance=~\"$instance\""
                    };
                    let filtered = expr.match_indices(&m).all(|(i, _)| {
                        expr[i + m.len()..].starts_with('{')
                            && expr[i + m.len()..]
                                .split('}')
                                .next()
                                .unwrap()
                                .contains(host)
                    });
                    if !filtered {
                        problems.push(format!("{at}: {m} not filtered by $instance"));
                    }
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "in {}:\n{}",
        ds.display(),
        problems.join("\n")
    );
}

#[test]
fn the_alerting_rules_pass_promtool() {
    let dir = repo_root().join("grafana/prometheus");
    for args in [
        &["check", "rules", "gapscope-alerts.yml"][..],
        &["test", "rules", "gapscope-alerts.test.yml"],
        &["check", "config", "prometheus.yml"],
    ] {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("promtool (Debian package prometheus) is installed by scripts/setup.sh");
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}",
            gapscope_testkit::output_text(&out)
        );
    }
}

/// Pictures of every dashboard from this run's data (the README shows
/// them): `target/dashboard-pictures/`, or `$GAPSCOPE_DASHBOARD_PICTURES`.
fn draw_pictures(
    prom: &Prometheus,
    all: &[(String, Value)],
    range: (f64, f64),
    with_nvml: bool,
    failures: &mut Vec<String>,
) {
    // A relative path is the repository's (tests run in daemon/).
    let dir = std::env::var_os("GAPSCOPE_DASHBOARD_PICTURES")
        .map(|d| repo_root().join(d))
        .unwrap_or_else(|| repo_root().join("target/dashboard-pictures"));
    std::fs::create_dir_all(&dir).unwrap();
    // Finer rates than the proof's 30 s window: the curves show the phases.
    let substitute = |q: &str| substitute(&q.replace("$__rate_interval", "5s"));
    let note = |panel: &Value| {
        if exprs(panel)
            .iter()
            .flat_map(|q| metric_names(q))
            .any(|m| needs_nvml(&m))
        {
            "no data: NVML needs an NVIDIA GPU (or its stand-in), and this host has none"
                .to_string()
        } else {
            "no data in this run".to_string()
        }
    };
    for (name, d) in all {
        // SVG: small in the repository, sharp in the README.
        let png = dir.join(name.replace(".json", ".svg"));
        match dashboard_picture::draw(d, prom, range, &substitute, &note, &png) {
            Ok(drawn) => {
                let size = std::fs::metadata(&png).map(|m| m.len()).unwrap_or(0);
                let with_data = drawn.iter().filter(|p| p.series > 0).count();
                println!(
                    "{}: {with_data}/{} panels with data, {size} bytes",
                    png.display(),
                    drawn.len()
                );
                // Only the NVML dashboard may be empty, and only without
                // the NVML stand-in.
                let expected_empty = !with_nvml && name == "gapscope-gpu.json";
                if (with_data == 0 && !expected_empty) || (with_data > 0 && size < 20_000) {
                    failures.push(format!("{name}: the picture is empty"));
                }
            }
            Err(e) => failures.push(format!("{name}: drawing failed: {e}")),
        }
    }
}

/// A server process that goes when the test does, passing or failing.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Replaces Grafana's variables the way Grafana would for "All" and the
/// given services.
fn substitute(expr: &str) -> String {
    expr.replace("$__rate_interval", "30s")
        .replace("$instance", ".*")
        .replace("$client", ".*")
        .replace("$service_a", "stack")
        .replace("$service_b", "stack")
        .replace("$service", ".*")
        .replace("$gpu", ".*")
}

#[test]
fn every_panel_query_returns_data_from_a_real_prometheus() {
    let _g = serial();
    let fixture = FakeCuda::build();
    // BPF statistics sampled as by default, but every 2 s rather than
    // every minute, so a test this short holds several samples.
    const SAMPLE_OFTEN: &str = "bpf_stats_window_ms = 500\nbpf_stats_period_s = 2";
    // One serving stack as the dashboards see it: the Python server, the
    // process calling CUDA and the deep-mode peer all belong to it. An idle
    // second service shows that the variables list more than one.
    let services = "[[service]]\nname = \"stack\"\n\
         cmdline = 'toy_server.py|cuda_caller \\S*gapscope-cuda-fixture|gapscope-wire-sender'\n\
         [[service]]\nname = \"other\"\ncmdline = '^nothing-matches-this$'\n";
    // Two GPUs through the NVML stand-in, when its header is here: one
    // serving (a process holds memory and power stays up, so its idle
    // check fails), one idle (its idle check passes).
    let nvml = FakeNvml::build();
    let daemon = match &nvml {
        Ok(nvml) => {
            let holder = json!([{"pid": 4_000_001, "memory": 60_000_000_000u64}]);
            let scenario = nvml.scenario(
                "dashboards",
                &json!({
                    "epoch_ns": gapscope_clock::monotonic_ns(),
                    "gpus": [
                        {"uuid": "GPU-da5b0a2d-0000-0000-0000-000000000000",
                         "name": "NVIDIA H100 80GB HBM3", "power_limit_w": 700,
                         "idle": {"power_w": 72, "temperature_c": 35, "sm_clock_mhz": 345,
                                  "memory_clock_mhz": 2619, "throttle": 1},
                         "spans": [{"from_ms": 0, "to_ms": 600_000, "utilization": 78,
                                    "memory_utilization": 35, "power_w": 410,
                                    "memory_used": 61_000_000_000u64, "sm_clock_mhz": 1755,
                                    "temperature_c": 64, "pcie_tx_kbps": 250_000,
                                    "pcie_rx_kbps": 900_000, "throttle": 4,
                                    "processes": holder}]},
                        {"uuid": "GPU-da5b0a2d-0000-0000-0000-000000000001",
                         "name": "NVIDIA H100 80GB HBM3", "power_limit_w": 700,
                         "idle": {"power_w": 70, "temperature_c": 33, "sm_clock_mhz": 345,
                                  "memory_clock_mhz": 2619, "memory_used": 600_000_000u64,
                                  "pcie_tx_kbps": 10, "pcie_rx_kbps": 10, "throttle": 1}}
                    ]
                }),
            );
            nvml.daemon_with(SAMPLE_OFTEN, services, 200, &scenario)
        }
        Err(_) => Daemon::start_with(services, SAMPLE_OFTEN),
    };
    let socket = format!("/tmp/gapscope-test-{}.sock", daemon.port);
    let rules = repo_root().join("grafana/prometheus/gapscope-alerts.yml");
    // The load generator serves its own metrics too (the GPU idle
    // dashboard's client row).
    let client_port = free_port();
    let prom = Prometheus::start(
        &format!(
            "  - job_name: gapscoped\n    static_configs:\n      - targets: ['127.0.0.1:{}']\n\
             \x20 - job_name: loadgen\n    static_configs:\n      - targets: ['127.0.0.1:{client_port}']\n",
            daemon.port
        ),
        &[rules],
        "1s",
    );
    prom.wait_target("gapscoped", "up");

    // The Python server under the load generator's three phases (which
    // also announces them to gapscoped for the phase annotations).
    let server_port = free_port();
    let server = KillOnDrop(
        Command::new(target_python())
            .arg(repo_root().join("targets/toy_server.py"))
            .args(["--port", &server_port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("starting targets/toy_server.py"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while http_get(server_port, "/health").is_none() {
        assert!(Instant::now() < deadline, "toy_server never became healthy");
        std::thread::sleep(Duration::from_millis(100));
    }
    let start = unix_now();
    let loadgen = {
        let url = format!("http://127.0.0.1:{server_port}/v1/completions");
        let gapscoped = format!("http://127.0.0.1:{}", daemon.port);
        let out = tempfile::tempdir().unwrap();
        std::thread::spawn(move || {
            let result = Command::new(loadgen_bin())
                .args(["--url", &url, "--phase", "warmup=poisson:4:3s"])
                .args([
                    "--phase",
                    "cooldown=silence:1s",
                    "--phase",
                    "stress=closed:4:6s",
                ])
                .args(["--max-tokens", "24", "--quiet", "--gapscoped", &gapscoped])
                .args(["--metrics-listen", &format!("127.0.0.1:{client_port}")])
                .arg("--out")
                .arg(out.path())
                .output()
                .expect("gapscope-loadgen");
            (result, out)
        })
    };

    // CUDA launches and host syncs (uprobes), and CUPTI-shaped records on
    // the deep-mode socket, while the load runs.
    for round in 1..=3 {
        let mut caller = fixture.caller("cuda_caller", &["exact", "300", "5", "2000"]);
        let deadline = Instant::now() + Duration::from_secs(5);
        while daemon
            .scrape()
            .get_or_zero("gapscope_cuda_probed_files", &[])
            < 2.0
        {
            assert!(Instant::now() < deadline, "{}", daemon.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
        caller.go();
        caller.finish();
        // Records count once gapscoped traces the sender.
        let mut sender = Workload::spawn(&wire_sender_bin(), &[&socket, "known"]);
        daemon.wait_traced(sender.child.id(), "stack");
        sender.go();
        sender.finish();
        // Each `known` sends 50 gemm kernels: wait until gapscoped has
        // counted them (a busy machine reads the socket late), so the
        // kernel panels have data however slow the run.
        let kernels = [("service", "stack"), ("class", "gemm")];
        let deadline = Instant::now() + Duration::from_secs(30);
        while daemon
            .scrape()
            .get_or_zero("gapscope_gpu_kernel_duration_seconds_count", &kernels)
            < 50.0 * f64::from(round)
        {
            assert!(
                Instant::now() < deadline,
                "round {round}: gemm kernels never counted\n{}\n{}",
                daemon
                    .scrape()
                    .0
                    .lines()
                    .filter(|l| l.contains("kernel_duration_seconds_count") || l.contains("inject"))
                    .collect::<Vec<_>>()
                    .join("\n"),
                daemon.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let (result, _out) = loadgen.join().unwrap();
    assert!(
        result.status.code().is_some_and(|c| c <= 1),
        "gapscope-loadgen: {}",
        String::from_utf8_lossy(&result.stderr)
    );
    // Mid-stress: every phase, process and record is inside the 30 s window.
    // A slow machine may have sent the deep-mode records late for that
    // instant: a query with no data then is asked again at the end, when
    // every record is inside its window.
    let at = start + 8.0;
    std::thread::sleep(Duration::from_secs(3));
    let end = unix_now() - 1.0;
    let exposed = daemon.scrape().0;
    drop(server);

    let nvml_absent = nvml.as_ref().err();
    let all = dashboards();
    let gpu_source =
        std::fs::read_to_string(repo_root().join("daemon/src/metrics/nvml.rs")).unwrap();
    let mut failures = Vec::new();
    let mut proven = 0;
    let mut skipped = Vec::new();
    for (name, title, panel) in panels(&all) {
        let queries = exprs(&panel);
        let nvml: BTreeSet<String> = queries
            .iter()
            .flat_map(|q| metric_names(q))
            .filter(|m| needs_nvml(m))
            .collect();
        if !nvml.is_empty() && nvml_absent.is_some() {
            // Not exported here, but it must at least be a metric the
            // NVML collector declares.
            for m in &nvml {
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|suffix| m.strip_suffix(suffix))
                    .unwrap_or(m);
                if !gpu_source.contains(&format!("\"{family}\"")) {
                    failures.push(format!(
                        "{name} / {title}: {m} is not a metric the NVML collector exports"
                    ));
                }
            }
            skipped.push(format!(
                "{name} / {title} (reads {})",
                nvml.into_iter().collect::<Vec<_>>().join(", ")
            ));
            continue;
        }
        for q in queries {
            // The load generator's metrics are proven by the query alone
            // (it has exited by now).
            for m in metric_names(&q)
                .into_iter()
                .filter(|m| !m.starts_with("gapscope_client_"))
            {
                let present = exposed
                    .lines()
                    .any(|l| l.starts_with(&format!("{m}{{")) || l.starts_with(&format!("{m} ")));
                if !present {
                    failures.push(format!("{name} / {title}: {m} is not in /metrics"));
                }
            }
            let expr = substitute(&q);
            let mut r = prom.query_at(&expr, at);
            if r["data"]["result"]
                .as_array()
                .is_none_or(std::vec::Vec::is_empty)
            {
                r = prom.query_at(&expr, end);
            }
            if r["status"] != "success" {
                failures.push(format!("{name} / {title}: {expr}: {}", r["error"]));
            } else if r["data"]["result"]
                .as_array()
                .is_none_or(std::vec::Vec::is_empty)
            {
                failures.push(format!("{name} / {title}: no data for {expr}"));
            } else {
                proven += 1;
            }
        }
    }
    // The phase annotations every dashboard shows.
    let annotation = all[0].1["annotations"]["list"][0]["expr"].as_str().unwrap();
    let r = prom.query_at(&substitute(annotation), at);
    if r["data"]["result"]
        .as_array()
        .is_none_or(std::vec::Vec::is_empty)
    {
        // A failed scrape (up 0) marks every series stale: say so.
        let seen = prom.query_range("gapscope_loadgen_phase_active", start, end, 0.5);
        let up = prom.query_range("up", start, end, 1.0);
        failures.push(format!(
            "phase annotation: no data for {annotation} at start+8 s: {r}\n\
             phases seen: {seen}\nscrapes (up): {up}"
        ));
    }
    // Query variables list the services.
    let r = prom.get_json("/api/v1/label/service/values?match[]=gapscope_service_processes");
    let services: Vec<&str> = r["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(services, ["other", "stack"], "{r}");
    // Every alerting and recording rule evaluates without an error.
    let rules = prom.get_json("/api/v1/rules");
    for group in rules["data"]["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            if rule["health"] != "ok" {
                failures.push(format!(
                    "rule {}: {} {}",
                    rule["name"], rule["health"], rule["lastError"]
                ));
            }
        }
    }
    for s in &skipped {
        gapscope_testkit::not_checked(&format!(
            "panel {s}: needs NVML ({})",
            nvml_absent.map_or("", String::as_str)
        ));
    }
    draw_pictures(
        &prom,
        &all,
        (start - 3.0, unix_now()),
        nvml_absent.is_none(),
        &mut failures,
    );
    println!(
        "{proven} panel queries returned data; {} panels skipped",
        skipped.len()
    );
    assert!(
        failures.is_empty(),
        "{}\n\ngapscoped's log:\n{}",
        failures.join("\n"),
        daemon.log_text()
    );
    assert!(proven >= 50, "only {proven} queries proven");
}
