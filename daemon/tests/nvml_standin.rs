//! The NVML collector, the idle check, a lost GPU and the load generator's
//! figures from gapscoped's telemetry, end to end against
//! the NVML stand-in (`testkit/data/fake_nvml.c`, compiled against the real
//! `nvml.h`): gapscoped loads it through `[nvml] library` and reads GPUs
//! whose every value a scenario fixes, so each metric is checked against
//! the value the scenario says the driver reported.

use std::time::Duration;

use gapscope_clock::monotonic_ns;
use gapscope_testkit::{
    Metrics, Workload,
    fake_nvml::FakeNvml,
    http_get, http_post, loadgen_bin, serial, skip,
    stream_server::{ServerConfig, StreamServer},
};
use serde_json::{Value, json};

fn stand_in() -> Option<FakeNvml> {
    match FakeNvml::build() {
        Ok(f) => Some(f),
        Err(why) => {
            skip(&why);
            None
        }
    }
}

/// Sleeps until `ms` after `epoch_ns` on CLOCK_MONOTONIC.
fn until(epoch_ns: u64, ms: u64) {
    let at = epoch_ns + ms * 1_000_000;
    let now = monotonic_ns();
    if at > now {
        std::thread::sleep(Duration::from_nanos(at - now));
    }
}

fn gpu<'a>(index: &'a str, uuid: &'a str) -> [(&'a str, &'a str); 2] {
    [("gpu", index), ("UUID", uuid)]
}

#[test]
fn every_gpu_field_is_what_the_driver_reported() {
    let _g = serial();
    let Some(nvml) = stand_in() else { return };
    let w = Workload::start("syscalls --getppid 1 --tag nvml-holder");
    let holder = w.pid();
    let scenario = nvml.scenario(
        "fields",
        &json!({
            "epoch_ns": monotonic_ns(),
            "driver_version": "575.57.08",
            "gpus": [
                {
                    "uuid": "GPU-11111111-2222-3333-4444-555555555555",
                    "name": "NVIDIA H100 80GB HBM3",
                    "memory_total": 85_520_809_984u64,
                    "power_limit_w": 700,
                    "idle": {
                        "utilization": 85, "memory_utilization": 40,
                        "power_w": 250.5, "memory_used": 12_345_678_901u64,
                        "sm_clock_mhz": 1980, "memory_clock_mhz": 2619,
                        "temperature_c": 61, "pcie_tx_kbps": 1000, "pcie_rx_kbps": 2000,
                        "throttle": 5,
                        "processes": [
                            {"pid": holder, "memory": 1_000_000_000u64},
                            {"pid": 4_000_000, "memory": 500_000_000u64}
                        ]
                    }
                },
                {
                    "uuid": "GPU-99999999-8888-7777-6666-555555555555",
                    "name": "NVIDIA A40",
                    "memory_total": 47_697_362_944u64,
                    "power_limit_w": 300,
                    "unsupported": ["pcie", "energy"],
                    "idle": {"utilization": 0, "power_w": 31, "temperature_c": 30}
                }
            ]
        }),
    );
    let daemon = nvml.daemon(
        "[[service]]\nname = \"holder\"\ncmdline = 'gapscope-workload .*--tag nvml-holder'\n",
        100,
        &scenario,
    );
    daemon.wait_processes("holder", 1.0);
    let m = daemon.wait_metrics("both GPUs read, the holder traced", |m| {
        m.get("gapscope_gpu_utilization_ratio", &[("gpu", "1")])
            .is_some()
            && m.get(
                "gapscope_gpu_compute_processes",
                &[("gpu", "0"), ("service", "holder")],
            )
            .is_some()
    });
    let h100 = gpu("0", "GPU-11111111-2222-3333-4444-555555555555");
    let a40 = gpu("1", "GPU-99999999-8888-7777-6666-555555555555");
    let with = |base: &[(&'static str, &'static str)], extra: &[(&'static str, &'static str)]| {
        base.iter().chain(extra).copied().collect::<Vec<_>>()
    };
    let expect = |name: &str, labels: &[(&str, &str)], want: f64| {
        assert_eq!(
            m.get(name, labels),
            Some(want),
            "{name} {labels:?}:\n{}",
            m.0
        );
    };
    let h100_model = with(&h100, &[("modelName", "NVIDIA H100 80GB HBM3")]);
    // NVML's units turned into the exporter's: percent → ratio, mW → W,
    // MHz → Hz, KB/s → bytes/s, mJ → J.
    expect("gapscope_gpu_utilization_ratio", &h100_model, 0.85);
    expect("gapscope_gpu_memory_utilization_ratio", &h100, 0.40);
    expect("gapscope_gpu_power_watts", &h100, 250.5);
    expect("gapscope_gpu_power_limit_watts", &h100, 700.0);
    expect("gapscope_gpu_sm_clock_hertz", &h100, 1.98e9);
    expect("gapscope_gpu_memory_clock_hertz", &h100, 2.619e9);
    expect("gapscope_gpu_temperature_celsius", &h100, 61.0);
    expect("gapscope_gpu_memory_used_bytes", &h100, 12_345_678_901.0);
    expect("gapscope_gpu_memory_total_bytes", &h100, 85_520_809_984.0);
    expect(
        "gapscope_gpu_pcie_throughput_bytes_per_second",
        &with(&h100, &[("direction", "tx")]),
        1_024_000.0,
    );
    expect(
        "gapscope_gpu_pcie_throughput_bytes_per_second",
        &with(&h100, &[("direction", "rx")]),
        2_048_000.0,
    );
    // Bits 0x1 and 0x4: idle and the software power cap, nothing else.
    for (reason, on) in [
        ("gpu_idle", 1.0),
        ("sw_power_cap", 1.0),
        ("hw_slowdown", 0.0),
        ("applications_clocks_setting", 0.0),
        ("hw_thermal_slowdown", 0.0),
    ] {
        expect(
            "gapscope_gpu_throttle_reason",
            &with(&h100, &[("reason", reason)]),
            on,
        );
    }
    // The traced holder by its service; the other process under none.
    expect(
        "gapscope_gpu_compute_processes",
        &with(&h100, &[("service", "holder")]),
        1.0,
    );
    expect(
        "gapscope_gpu_process_memory_bytes",
        &with(&h100, &[("service", "holder")]),
        1e9,
    );
    let untraced =
        m.0.lines()
            .find(|l| {
                l.starts_with("gapscope_gpu_process_memory_bytes{")
                    && l.contains("gpu=\"0\"")
                    && l.contains("service=\"\"")
            })
            .unwrap_or_else(|| panic!("no series for the untraced process:\n{}", m.0));
    assert!(untraced.ends_with(" 500000000"), "{untraced}");
    assert!(!m.0.contains("\"4000000\""), "no pid in any label");
    // The A40: what it supports, and nothing for what it refuses.
    expect("gapscope_gpu_power_watts", &a40, 31.0);
    expect("gapscope_gpu_power_limit_watts", &a40, 300.0);
    for refused in [
        "gapscope_gpu_pcie_throughput_bytes_per_second",
        "gapscope_gpu_energy_joules_total",
    ] {
        assert_eq!(
            m.get(refused, &a40),
            None,
            "{refused} for the A40:\n{}",
            m.0
        );
    }
    for field in ["pcie", "energy"] {
        assert!(
            m.get_or_zero("gapscope_nvml_read_errors_total", &[("field", field)]) >= 1.0,
            "{field} refusals counted:\n{}",
            m.0
        );
    }
    expect("gapscope_collector_up", &[("collector", "nvml")], 1.0);
    assert!(
        daemon
            .log_text()
            .contains("NVML collector up: 2 GPUs, driver 575.57.08"),
        "{}",
        daemon.log_text()
    );
    w.finish();
}

/// The energy counter over a window is the scenario's joules exactly:
/// 320 J before gapscoped started (energy since the driver loaded), then
/// 250 W for 1.5 s: 375 J more.
#[test]
fn the_energy_counter_grows_by_the_scenarios_joules() {
    let _g = serial();
    let Some(nvml) = stand_in() else { return };
    let epoch = monotonic_ns();
    let scenario = nvml.scenario(
        "energy",
        &json!({
            "epoch_ns": epoch,
            "gpus": [{
                "uuid": "GPU-e0e0e0e0-0000-0000-0000-000000000000",
                "name": "NVIDIA H200",
                "idle": {"power_w": 75, "energy_w": 0},
                "spans": [
                    {"from_ms": -5000, "to_ms": -1000, "power_w": 80, "energy_w": 80},
                    {"from_ms": 7000, "to_ms": 8500, "power_w": 250, "energy_w": 250}
                ]
            }]
        }),
    );
    let daemon = nvml.daemon(
        "[[service]]\nname = \"none\"\ncmdline = 'nothing-matches'\n",
        100,
        &scenario,
    );
    let energy = |m: &Metrics| m.get("gapscope_gpu_energy_joules_total", &[("gpu", "0")]);
    let before = daemon.wait_metrics("a first energy reading", |m| energy(m).is_some());
    let read_at_ms = (monotonic_ns() - epoch) / 1_000_000;
    assert!(
        read_at_ms < 6900,
        "gapscoped took {read_at_ms} ms to read the GPU: the window under test had begun"
    );
    assert_eq!(energy(&before), Some(320.0), "{}", before.0);
    until(epoch, 7500);
    let during = daemon.scrape();
    assert_eq!(
        during.get("gapscope_gpu_power_watts", &[("gpu", "0")]),
        Some(250.0)
    );
    // Two sampling periods after the span: the counter is still again.
    until(epoch, 8800);
    let after = daemon.scrape();
    assert_eq!(energy(&after), Some(695.0), "{}", after.0);
    assert_eq!(
        after.get("gapscope_gpu_power_watts", &[("gpu", "0")]),
        Some(75.0)
    );
}

/// A silent phase whose GPU returns to idle power passes the idle check;
/// one where a process keeps memory and power up fails it, naming the pid.
#[test]
fn the_idle_check_passes_a_quiet_gpu_and_names_the_pid_holding_a_busy_one() {
    let _g = serial();
    let Some(nvml) = stand_in() else { return };
    let holder = 4_242_424;
    // Far enough ahead for gapscoped to start on a busy machine.
    let epoch = monotonic_ns() + 5_000_000_000;
    let busy = json!({"utilization": 92, "power_w": 400,
                      "processes": [{"pid": holder, "memory": 20_000_000_000u64}]});
    let mut held = busy.clone();
    held["utilization"] = json!(0);
    held["power_w"] = json!(150);
    let span = |from: u64, to: u64, state: &Value| {
        let mut s = state.clone();
        s["from_ms"] = json!(from);
        s["to_ms"] = json!(to);
        s
    };
    let scenario = nvml.scenario(
        "idle",
        &json!({
            "epoch_ns": epoch,
            "gpus": [{
                "uuid": "GPU-1d1e0000-0000-0000-0000-000000000000",
                "name": "NVIDIA H100 80GB HBM3",
                "idle": {"utilization": 0, "power_w": 62},
                "spans": [
                    span(0, 1000, &busy),
                    span(3000, 4000, &busy),
                    span(4000, 6000, &held)
                ]
            }]
        }),
    );
    let daemon = nvml.daemon(
        "[[service]]\nname = \"none\"\ncmdline = 'nothing-matches'\n",
        100,
        &scenario,
    );
    let post = |phase: &str, event: &str, ms: u64| {
        let body = json!({"phase": phase, "kind": "silence", "event": event,
                          "monotonic_ns": epoch + ms * 1_000_000});
        let (status, reply) = http_post(daemon.port, "/api/v1/annotations", &body.to_string());
        assert_eq!(status, 200, "{reply}");
        serde_json::from_str::<Value>(&reply).unwrap()
    };
    // Quiet: [1000, 3000) at the idle power; busy before and after.
    until(epoch, 1000);
    post("quiet", "start", 1000);
    until(epoch, 3000);
    let quiet = post("quiet", "end", 3000)["idle_check"]["gpus"][0].clone();
    assert_eq!(quiet["idle"], true, "{quiet}");
    assert_eq!(quiet["power_mean_watts"], 62.0, "{quiet}");
    assert_eq!(quiet["power_baseline_watts"], 62.0, "{quiet}");
    assert!(quiet["readings"].as_u64().unwrap() >= 10, "{quiet}");
    // Held: [4000, 6000) with no kernel, 150 W and the holder's memory.
    until(epoch, 4000);
    post("held", "start", 4000);
    until(epoch, 6000);
    let held = post("held", "end", 6000)["idle_check"]["gpus"][0].clone();
    assert_eq!(held["idle"], false, "{held}");
    assert_eq!(held["utilization_max"], 0.0, "{held}");
    assert_eq!(held["power_excess_watts"], 88.0, "{held}");
    assert_eq!(held["processes"][0]["pid"], holder, "{held}");
    let finding = held["finding"].as_str().unwrap();
    assert!(
        finding.contains(&format!("pid {holder} (18.63 GiB)")),
        "{finding}"
    );
    let m = daemon.scrape();
    assert_eq!(
        m.get("gapscope_gpu_idle_check_idle", &[("phase", "quiet")]),
        Some(1.0)
    );
    assert_eq!(
        m.get("gapscope_gpu_idle_check_idle", &[("phase", "held")]),
        Some(0.0)
    );
    assert_eq!(
        m.get("gapscope_gpu_idle_check_processes", &[("phase", "held")]),
        Some(1.0)
    );
    let listed: Value =
        serde_json::from_str(&http_get(daemon.port, "/api/v1/idle-checks").unwrap()).unwrap();
    assert_eq!(
        listed["idle_checks"].as_array().unwrap().len(),
        2,
        "{listed}"
    );
}

/// A GPU that falls off the bus: one clear log line, gapscope_gpu_lost,
/// its series gone, and everything else still served.
#[test]
fn a_lost_gpu_is_said_once_and_the_rest_keeps_serving() {
    let _g = serial();
    let Some(nvml) = stand_in() else { return };
    let scenario = nvml.scenario(
        "lost",
        &json!({
            "epoch_ns": monotonic_ns(),
            "gpus": [
                {"uuid": "GPU-a0a0a0a0-0000-0000-0000-000000000000", "name": "NVIDIA H100 80GB HBM3",
                 "idle": {"utilization": 50, "power_w": 300}},
                {"uuid": "GPU-b1b1b1b1-0000-0000-0000-000000000000", "name": "NVIDIA H100 80GB HBM3",
                 "lost_after_ms": 6000, "idle": {"utilization": 70, "power_w": 350}}
            ]
        }),
    );
    let daemon = nvml.daemon(
        "[[service]]\nname = \"none\"\ncmdline = 'nothing-matches'\n",
        100,
        &scenario,
    );
    let first = daemon.wait_metrics("both GPUs read", |m| {
        m.get("gapscope_gpu_power_watts", &[("gpu", "1")]).is_some()
    });
    assert_eq!(
        first.get("gapscope_gpu_power_watts", &[("gpu", "1")]),
        Some(350.0)
    );
    let lost = daemon.wait_metrics("GPU 1 reported lost", |m| {
        m.get("gapscope_gpu_lost", &[("gpu", "1")]) == Some(1.0)
    });
    assert_eq!(
        lost.get(
            "gapscope_gpu_lost",
            &[("UUID", "GPU-b1b1b1b1-0000-0000-0000-000000000000")]
        ),
        Some(1.0),
        "the lost GPU keeps its last known UUID:\n{}",
        lost.0
    );
    assert_eq!(lost.get("gapscope_gpu_lost", &[("gpu", "0")]), None);
    assert_eq!(
        lost.get("gapscope_gpu_power_watts", &[("gpu", "1")]),
        None,
        "no stale readings of a lost GPU"
    );
    assert_eq!(
        lost.get("gapscope_gpu_power_watts", &[("gpu", "0")]),
        Some(300.0)
    );
    // Still sampling, still serving the rest.
    let rounds = |m: &Metrics| m.get_or_zero("gapscope_nvml_samples_total", &[]);
    let r0 = rounds(&lost);
    let later = daemon.wait_metrics("more rounds after the loss", |m| rounds(m) >= r0 + 3.0);
    assert_eq!(
        later.get("gapscope_collector_up", &[("collector", "nvml")]),
        Some(1.0)
    );
    assert!(later.0.contains("gapscope_build_info"));
    assert_eq!(http_get(daemon.port, "/healthz").as_deref(), Some("ok\n"));
    let log = daemon.log_text();
    let said = log.matches("GPU 1 (GPU-b1b1b1b1").count();
    assert_eq!(said, 1, "said once:\n{log}");
    assert!(
        log.contains("NVML_ERROR_GPU_IS_LOST") && log.contains("Xid"),
        "the line names the error and where to look:\n{log}"
    );
    assert_eq!(
        later.get_or_zero(
            "gapscope_nvml_read_errors_total",
            &[("field", "utilization")]
        ),
        0.0,
        "a lost GPU is not a field it does not support:\n{}",
        later.0
    );
}

/// gapscope-loadgen reading gapscoped's NVML telemetry: a GPU drawing a
/// constant 300 W (and its energy counter growing at 300 W) at 80 %
/// utilization makes every phase's average power 300 W, its energy 300 W
/// times its window, its tokens per joule its throughput over 300 W, and
/// its MFU its throughput times 2N over the H100's peak.
#[test]
fn the_load_generator_reads_power_energy_and_the_gpu_from_gapscoped() {
    let _g = serial();
    let Some(nvml) = stand_in() else { return };
    let scenario = nvml.scenario(
        "loadgen",
        &json!({
            "epoch_ns": monotonic_ns(),
            "gpus": [{
                "uuid": "GPU-10ad0000-0000-0000-0000-000000000000",
                "name": "NVIDIA H100 80GB HBM3",
                "idle": {"utilization": 80, "power_w": 300, "energy_w": 300}
            }]
        }),
    );
    let daemon = nvml.daemon(
        "[[service]]\nname = \"none\"\ncmdline = 'nothing-matches'\n",
        100,
        &scenario,
    );
    daemon.wait_metrics("a first GPU reading", |m| {
        m.get("gapscope_gpu_energy_joules_total", &[("gpu", "0")])
            .is_some()
    });
    let server = StreamServer::start(ServerConfig {
        token_ms: 2.0,
        ..ServerConfig::default()
    });
    let out = tempfile::tempdir().unwrap();
    let telemetry = format!("gapscoped=http://127.0.0.1:{}/metrics", daemon.port);
    let run = std::process::Command::new(loadgen_bin())
        .args(["--url", &server.url("/v1/completions")])
        .args([
            "--phase",
            "warm=poisson:20:2s",
            "--phase",
            "stress=closed:4:3s",
        ])
        .args(["--max-tokens", "16", "--params", "8.03e9", "--quiet"])
        .args(["--telemetry", &telemetry])
        .arg("--out")
        .arg(out.path())
        .output()
        .expect("gapscope-loadgen");
    assert!(
        run.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    let results: Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("results.json")).unwrap())
            .unwrap();
    assert_eq!(
        results["model"]["gpu"], "NVIDIA H100 80GB HBM3",
        "from modelName"
    );
    assert_eq!(results["model"]["peak_tflops_per_gpu"], 989.4);
    for phase in results["phases"].as_array().unwrap() {
        let name = &phase["name"];
        let t = &phase["telemetry"];
        let window = phase["duration_s"].as_f64().unwrap();
        assert_eq!(t["avg_power_w"], 300.0, "{name}: {t}");
        // A mean of readings of 0.8 (to the float's last bit).
        let util = t["avg_utilization"].as_f64().unwrap();
        assert!((util - 0.8).abs() < 1e-12, "{name}: {t}");
        assert_eq!(t["energy_source"], "counter", "{name}: {t}");
        // The counter's growth between the readings inside the window,
        // scaled to the window: 300 W × window, within the sampling's
        // rounding (readings every 100 ms, the counter in mJ).
        let energy = t["energy_j"].as_f64().unwrap();
        assert!(
            (energy / (300.0 * window) - 1.0).abs() < 0.02,
            "{name}: {energy} J over {window} s at 300 W"
        );
        let tps = phase["throughput"]["output_tokens_per_s"].as_f64().unwrap();
        let tpj = phase["tokens_per_joule"].as_f64().unwrap();
        assert!(
            (tpj * 300.0 / tps - 1.0).abs() < 0.02,
            "{name}: {tpj} tok/J at 300 W vs {tps} tok/s"
        );
        let mfu = phase["mfu"].as_f64().unwrap();
        assert!(
            (mfu - tps * 2.0 * 8.03e9 / 989.4e12).abs() < 1e-9,
            "{name}: MFU {mfu}"
        );
    }
    let png = std::fs::read(out.path().join("telemetry.png")).unwrap();
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000);
    let svg = std::fs::read_to_string(out.path().join("telemetry.svg")).unwrap();
    assert!(
        svg.contains("GPU utilization") && svg.contains("stress (closed loop)"),
        "the phases are drawn"
    );
}

/// The stand-in's ABI as nvml-wrapper meets it, and beyond: calls before
/// nvmlInit are refused, a function it does not implement is there and
/// answers NVML_ERROR_NOT_SUPPORTED (as a driver does for a feature the
/// GPU lacks), and a lost GPU's handle is refused too.
#[test]
fn the_stand_in_answers_like_a_driver_where_it_does_not_implement() {
    // Alone: it sets this process's environment.
    let _g = serial();
    let Some(nvml) = stand_in() else { return };
    let scenario = nvml.scenario(
        "abi",
        &json!({"epoch_ns": monotonic_ns(), "gpus": [
            {"uuid": "GPU-0", "name": "NVIDIA H100 80GB HBM3", "idle": {}},
            {"uuid": "GPU-1", "name": "NVIDIA H100 80GB HBM3", "lost_after_ms": 0, "idle": {}}
        ]}),
    );
    // SAFETY: this test's own environment, set before anything reads it.
    unsafe { std::env::set_var(gapscope_testkit::fake_nvml::SCENARIO_ENV, &scenario) };
    let path = std::ffi::CString::new(nvml.library().to_str().unwrap()).unwrap();
    // SAFETY: loading the stand-in and calling its functions with the
    // signatures nvml.h declares.
    unsafe {
        let lib = libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL);
        assert!(!lib.is_null());
        let sym = |name: &str| {
            let n = std::ffi::CString::new(name).unwrap();
            let p = libc::dlsym(lib, n.as_ptr());
            assert!(!p.is_null(), "{name} is not exported");
            p
        };
        type Count = unsafe extern "C" fn(*mut u32) -> i32;
        type Init = unsafe extern "C" fn() -> i32;
        type Handle = unsafe extern "C" fn(u32, *mut *mut libc::c_void) -> i32;
        type Fan = unsafe extern "C" fn(*mut libc::c_void, u32, *mut u32) -> i32;
        let count: Count = std::mem::transmute(sym("nvmlDeviceGetCount_v2"));
        let mut n = 0u32;
        assert_eq!(count(&mut n), 1, "NVML_ERROR_UNINITIALIZED before init");
        let init: Init = std::mem::transmute(sym("nvmlInit_v2"));
        assert_eq!(init(), 0);
        assert_eq!(count(&mut n), 0);
        assert_eq!(n, 2);
        let handle: Handle = std::mem::transmute(sym("nvmlDeviceGetHandleByIndex_v2"));
        let mut dev = std::ptr::null_mut();
        assert_eq!(handle(0, &mut dev), 0);
        let mut lost = std::ptr::null_mut();
        assert_eq!(handle(1, &mut lost), 15, "NVML_ERROR_GPU_IS_LOST");
        // Not implemented here: generated from nvml.h.
        let fan: Fan = std::mem::transmute(sym("nvmlDeviceGetFanSpeed_v2"));
        let mut speed = 0u32;
        assert_eq!(fan(dev, 0, &mut speed), 3, "NVML_ERROR_NOT_SUPPORTED");
        let shutdown: Init = std::mem::transmute(sym("nvmlShutdown"));
        assert_eq!(shutdown(), 0);
        libc::dlclose(lib);
    }
}
