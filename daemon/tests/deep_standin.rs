//! CUPTI deep mode end to end without a GPU: a real CPython process drives
//! the simulated device through the fake CUDA libraries; the fake libcuda
//! loads the real `libgapscope_inject.so` from `CUDA_INJECTION64_PATH`; the
//! agent records through the CUPTI stand-in (built against a release's
//! real headers, with a clock 1000 s off CLOCK_MONOTONIC) and streams to
//! gapscoped. What gapscoped exports is checked against what the device
//! did, which the device itself reports: kernels, busy and idle time,
//! the clock offset.

use std::{path::PathBuf, process::Command, time::Duration};

use gapscope_testkit::{
    Daemon, Metrics, Workload, fake_cuda::FakeCuda, inject_library, repo_root, serial,
    target_python,
};

const RELEASE: &str = "cupti-12.9";

struct Rig {
    fixture: FakeCuda,
    cupti: PathBuf,
    socket: String,
    daemon: Daemon,
}

/// gapscoped tracing `gpu_loop.py` as service `sim`, and the fixture; None
/// (a visible skip) without the CUPTI headers.
fn rig() -> Option<Rig> {
    let fixture = FakeCuda::build();
    let cupti = match fixture.cupti(RELEASE) {
        Ok(p) => p,
        Err(why) => {
            gapscope_testkit::skip(&why);
            return None;
        }
    };
    let socket = format!("/tmp/gapscope-standin-{}.sock", std::process::id());
    let daemon = Daemon::start_with(
        "[[service]]\nname = \"sim\"\ncmdline = \"gpu_loop\\\\.py|sim_decode\\\\.py\"\n",
        &format!("\n[inject]\nsocket = \"{socket}\"\nreorder_window_ms = 100\n"),
    );
    Some(Rig {
        fixture,
        cupti,
        socket,
        daemon,
    })
}

impl Rig {
    /// Starts `gpu_loop.py MODE ARGS` under the agent, traced.
    fn host(&self, args: &[&str], env: &[(&str, &str)]) -> Workload {
        self.script("testkit/data/gpu_loop.py", args, env)
    }

    /// Starts a script of the repository on the fixture under the agent,
    /// traced.
    fn script(&self, script: &str, args: &[&str], env: &[(&str, &str)]) -> Workload {
        let mut cmd = Command::new(target_python());
        cmd.arg(repo_root().join(script))
            .arg(self.fixture.path(""))
            .args(args)
            .env("CUDA_INJECTION64_PATH", inject_library())
            .env("GAPSCOPE_CUPTI_PATH", &self.cupti)
            .env("GAPSCOPE_SOCKET", &self.socket)
            .envs(env.iter().copied());
        let w = Workload::spawn_command(cmd);
        self.daemon.wait_traced(w.pid(), "sim");
        w
    }
}

/// The device's own account: "device kernels N copies C busy_ns B
/// first_ns F last_ns L latency_ns T".
struct Device {
    kernels: u64,
    busy_ns: u64,
    first_ns: u64,
    last_ns: u64,
    latency_ns: u64,
    /// Busy stretches that began after the previous one ended.
    idle_gaps: u64,
}

fn device(lines: &[String]) -> Device {
    let line = lines
        .iter()
        .find(|l| l.starts_with("device "))
        .unwrap_or_else(|| panic!("no device line in {lines:?}"));
    let f: Vec<&str> = line.split_whitespace().collect();
    let at = |k: &str| -> u64 {
        let i = f.iter().position(|x| *x == k).unwrap();
        f[i + 1].parse().unwrap()
    };
    Device {
        kernels: at("kernels"),
        busy_ns: at("busy_ns"),
        first_ns: at("first_ns"),
        last_ns: at("last_ns"),
        latency_ns: at("latency_ns"),
        idle_gaps: at("idle_gaps"),
    }
}

const SIM: [(&str, &str); 2] = [("service", "sim"), ("device", "0")];

/// GEMM kernels gapscoped counted for the simulated service.
fn gemm_kernels(m: &Metrics) -> f64 {
    m.get_or_zero(
        "gapscope_gpu_kernel_duration_seconds_count",
        &[SIM[0], SIM[1], ("class", "gemm")],
    )
}

#[test]
fn every_launch_becomes_a_kernel_and_busy_and_idle_time_are_the_devices() {
    let _g = serial();
    let Some(rig) = rig() else { return };
    // 200 steps: two 500 µs kernels launched back to back (the second
    // waits for the first), a sync, then 300 µs of host sleep, so the
    // device idles for that sleep plus Python's own time.
    let mut host = rig.host(
        &["kernels", "200", "500", "300"],
        &[("GAPSCOPE_FAKE_CUPTI_TIMESTAMP", "refuse")],
    );
    let truth = device(&host.go());
    host.finish();
    assert_eq!(truth.kernels, 400);
    let idle = truth.last_ns - truth.first_ns - truth.busy_ns;
    let m = rig
        .daemon
        .wait_metrics("the device's gaps never all settled", |m| {
            gemm_kernels(m) >= 400.0
                && m.get_or_zero("gapscope_gpu_idle_gap_seconds_count", &SIM)
                    >= truth.idle_gaps as f64
        });
    // Exactly: every launch a kernel record, none lost, none twice.
    assert_eq!(gemm_kernels(&m), 400.0, "{}", rig.daemon.log_text());
    let sum = m.get_or_zero(
        "gapscope_gpu_kernel_duration_seconds_sum",
        &[SIM[0], SIM[1], ("class", "gemm")],
    );
    assert!((sum - 0.2).abs() < 1e-9, "kernel seconds {sum}");
    let busy = m.get_or_zero("gapscope_gpu_busy_seconds_total", &SIM);
    assert!(
        (busy - truth.busy_ns as f64 / 1e9).abs() < 1e-9,
        "busy {busy} s, the device says {} ns",
        truth.busy_ns
    );
    // A step's two kernels are one busy stretch, so 199 gaps between 200
    // steps; one more where the host launched a step's second kernel
    // after its first had ended (a preempted host). The device counts its
    // own: exactly those.
    assert!(
        (199..=220).contains(&truth.idle_gaps),
        "the device idled {} times",
        truth.idle_gaps
    );
    assert_eq!(
        m.get_or_zero("gapscope_gpu_idle_gap_seconds_count", &SIM),
        truth.idle_gaps as f64
    );
    let gaps = m.get_or_zero("gapscope_gpu_idle_gap_seconds_sum", &SIM);
    assert!(
        (gaps - idle as f64 / 1e9).abs() < 1e-9,
        "idle {gaps} s, the device says {idle} ns"
    );
    // Launch latency, each kernel joined to its launch by correlation id:
    // the second of a step waited for the first, as the device says.
    assert_eq!(
        m.get_or_zero("gapscope_gpu_launch_latency_seconds_count", &SIM),
        400.0
    );
    let latency = m.get_or_zero("gapscope_gpu_launch_latency_seconds_sum", &SIM);
    assert!(
        truth.latency_ns > 0 && (latency - truth.latency_ns as f64 / 1e9).abs() < 1e-9,
        "launch latency {latency} s, the device says {} ns",
        truth.latency_ns
    );
    // The clock: CUPTI's is CLOCK_MONOTONIC + 1000 s here, and the agent
    // measured the offset by bracketing.
    let log = rig.daemon.log_text();
    let offset: i64 = log
        .split("clock offset (offset ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no clock offset in the log:\n{log}"));
    assert!(
        (offset + 1_000_000_000_000).abs() < 100_000,
        "offset {offset} ns, the stand-in's is -1000 s"
    );
    assert_eq!(
        m.get_or_zero("gapscope_inject_records_dropped_total", &[("by", "sender")]),
        0.0
    );
}

#[test]
fn records_cupti_could_not_buffer_are_counted_exactly_and_the_rest_arrive() {
    let _g = serial();
    let Some(rig) = rig() else { return };
    // The stand-in withholds its first 5 buffers: each time, the record
    // that needed one is dropped and counted by CUPTI, as when a client
    // cannot keep up; the agent reports them.
    let mut host = rig.host(
        &["kernels", "100", "200", "100"],
        &[("GAPSCOPE_FAKE_CUPTI_DECLINE", "5")],
    );
    let truth = device(&host.go());
    host.finish();
    assert_eq!(truth.kernels, 200);
    let dropped =
        |m: &Metrics| m.get_or_zero("gapscope_inject_records_dropped_total", &[("by", "sender")]);
    // Per step: two launches' API records, their two kernels, the sync's
    // record and its API record: 600, less the five CUPTI dropped.
    let records = |m: &Metrics| m.get_or_zero("gapscope_inject_records_total", &[]);
    let m = rig
        .daemon
        .wait_metrics("the records never all arrived", |m| {
            records(m) >= 595.0 && dropped(m) >= 5.0
        });
    assert_eq!(records(&m), 595.0, "records");
    assert_eq!(dropped(&m), 5.0, "{}", m.0);
    // Each withheld buffer cost one record, of any kind: at most five
    // kernels are missing, and every other one arrived.
    let got = gemm_kernels(&m);
    assert!((195.0..=200.0).contains(&got), "kernels {got}");
}

/// The host's own account of a `launches` run: (loop ns, peak memory kB).
fn host_line(lines: &[String]) -> (u64, u64) {
    let line = lines
        .iter()
        .find(|l| l.starts_with("host "))
        .unwrap_or_else(|| panic!("no host line in {lines:?}"));
    let f: Vec<&str> = line.split_whitespace().collect();
    (f[2].parse().unwrap(), f[4].parse().unwrap())
}

/// Runs `gpu_loop.py launches N 1` under the agent sending to `socket`,
/// `during` running while it launches: (the device's account, the host's
/// peak memory in kB, what the agent said on stderr).
fn faulted_host(
    fixture: &FakeCuda,
    cupti: &std::path::Path,
    socket: &str,
    n: u32,
    during: impl FnOnce(u32),
) -> (Device, u64, Vec<String>) {
    let err = tempfile::NamedTempFile::new().unwrap();
    let mut cmd = Command::new(target_python());
    cmd.arg(repo_root().join("testkit/data/gpu_loop.py"))
        .arg(fixture.path(""))
        .args(["launches", &n.to_string(), "1"])
        .env("CUDA_INJECTION64_PATH", inject_library())
        .env("GAPSCOPE_CUPTI_PATH", cupti)
        .env("GAPSCOPE_SOCKET", socket)
        .stderr(err.reopen().unwrap());
    let mut host = Workload::spawn_command(cmd);
    host.send_go();
    during(host.pid());
    let lines = host.wait_output();
    host.finish();
    let said: Vec<String> = std::fs::read_to_string(err.path())
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("gapscope-inject:"))
        .map(str::to_string)
        .collect();
    let (launch_ns, hwm) = host_line(&lines);
    eprintln!(
        "{socket}: {n} launches in {:.1} ms ({:.2} µs each), peak memory {hwm} kB",
        launch_ns as f64 / 1e6,
        launch_ns as f64 / 1e3 / f64::from(n)
    );
    (device(&lines), hwm, said)
}

/// The agent's account at exit: (records sent, dropped, still waiting).
fn exit_account(said: &[String]) -> (u64, u64, u64) {
    let exit = said
        .iter()
        .find(|l| l.contains("at exit:"))
        .unwrap_or_else(|| panic!("no exit account: {said:#?}"));
    let n: Vec<u64> = exit
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    (n[0], n[1], n[2])
}

fn said_once(said: &[String], what: &str) {
    let n = said.iter().filter(|l| l.contains(what)).count();
    assert_eq!(n, 1, "{what:?} said {n} times: {said:#?}");
}

#[test]
fn the_host_carries_on_when_gapscoped_is_absent_killed_or_not_reading() {
    let _g = serial();
    let fixture = FakeCuda::build();
    let cupti = match fixture.cupti(RELEASE) {
        Ok(p) => p,
        Err(why) => {
            gapscope_testkit::skip(&why);
            return;
        }
    };
    // 400 000 launches: 800 000 records, 38 MB on the wire, which an
    // unbounded buffer would hold for a reader that never reads.
    const N: u32 = 400_000;

    // No gapscoped at all: every launch runs, the agent says so once.
    let absent = format!("/tmp/gapscope-absent-{}.sock", std::process::id());
    let (device_absent, hwm_absent, said) = faulted_host(&fixture, &cupti, &absent, N, |_| {});
    assert_eq!(device_absent.kernels, u64::from(N));
    said_once(&said, "gapscoped is not listening");
    // None sent; every record dropped or (a busy machine's transport
    // thread not through its queue at exit) still waiting: exactly all.
    let total = 2 * u64::from(N) + 2;
    let (sent, dropped, waiting) = exit_account(&said);
    assert_eq!((sent, dropped + waiting), (0, total), "{said:#?}");
    assert_eq!(said.len(), 3, "{said:#?}");

    // Killed while the host launches: the host goes on; said once.
    let socket = format!("/tmp/gapscope-killed-{}.sock", std::process::id());
    let daemon = Daemon::start_with(
        "[[service]]\nname = \"sim\"\ncmdline = \"gpu_loop\\\\.py\"\n",
        &format!("\n[inject]\nsocket = \"{socket}\"\n"),
    );
    let (device_killed, _, said) = faulted_host(&fixture, &cupti, &socket, N, |_| {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while daemon
            .scrape()
            .get_or_zero("gapscope_inject_records_total", &[])
            == 0.0
        {
            assert!(
                std::time::Instant::now() < deadline,
                "{}",
                daemon.log_text()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        // SAFETY: a plain kill(2) of the daemon this test started.
        unsafe { libc::kill(daemon.child.id() as i32, libc::SIGKILL) };
    });
    assert_eq!(device_killed.kernels, u64::from(N));
    said_once(&said, "gapscoped closed the connection");
    drop(daemon);

    // A peer that accepts and never reads: records past the transport's
    // buffer are dropped, memory stays bounded, the host is told once.
    let stalled = format!("/tmp/gapscope-stalled-{}.sock", std::process::id());
    let _ = std::fs::remove_file(&stalled);
    let listener = std::os::unix::net::UnixListener::bind(&stalled).unwrap();
    let held = std::thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        conn
    });
    let (device_stalled, hwm_stalled, said) = faulted_host(&fixture, &cupti, &stalled, N, |_| {});
    assert_eq!(device_stalled.kernels, u64::from(N));
    said_once(&said, "gapscoped is not reading");
    // The agent's own account at exit: every record it was given was
    // sent, dropped or still waiting (400 000 launches and their kernels,
    // the final sync and its call), and what waited for the socket never
    // passed the transport's 8 MiB by more than one frame (1 MiB).
    let (sent, dropped, waiting) = exit_account(&said);
    assert_eq!(sent + dropped + waiting, total, "{said:#?}");
    assert!(dropped > 0, "{said:#?}");
    let peak = said
        .iter()
        .find_map(|l| {
            l.split("at most ")
                .nth(1)?
                .split(' ')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .unwrap();
    assert!(peak <= (9 << 20) + 64, "{said:#?}");
    eprintln!("peak memory {hwm_stalled} kB with a stalled reader, {hwm_absent} kB with none");
    drop(held.join());
    let _ = std::fs::remove_file(&stalled);
}

#[test]
fn kernel_classes_and_kernels_per_token_are_exact() {
    let _g = serial();
    let Some(rig) = rig() else { return };
    // 300 decode steps of six kernels (four GEMMs, attention, a norm), one
    // token each, announced as a loadgen run with its token count.
    let url = format!("http://127.0.0.1:{}", rig.daemon.port);
    let mut host = rig.script(
        "targets/sim_decode.py",
        &["--steps", "300", "--gapscoped", &url],
        &[],
    );
    let out = host.go();
    host.finish();
    let truth: serde_json::Value = serde_json::from_str(&out[0]).unwrap();
    assert_eq!(truth["kernels"], 1800);
    let class = |m: &Metrics, c: &str| {
        m.get_or_zero(
            "gapscope_gpu_kernel_duration_seconds_count",
            &[SIM[0], SIM[1], ("class", c)],
        )
    };
    let m = rig
        .daemon
        .wait_metrics("the kernels never all arrived", |m| {
            ["gemm", "attention", "norm"]
                .iter()
                .map(|c| class(m, c))
                .sum::<f64>()
                >= 1800.0
        });
    assert_eq!(class(&m, "gemm"), 1200.0);
    assert_eq!(class(&m, "attention"), 300.0);
    assert_eq!(class(&m, "norm"), 300.0);
    // Durations are the device's: 120 + 80 + 200 + 180 µs of GEMM a step.
    let gemm_s = m.get_or_zero(
        "gapscope_gpu_kernel_duration_seconds_sum",
        &[SIM[0], SIM[1], ("class", "gemm")],
    );
    assert!((gemm_s - 300.0 * 580e-6).abs() < 1e-9, "gemm {gemm_s} s");
    assert_eq!(
        m.get_or_zero("gapscope_loadgen_output_tokens_total", &[]),
        300.0
    );
    let body = gapscope_testkit::http_get(rig.daemon.port, "/api/v1/explain?service=sim&window=5m")
        .unwrap();
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    let fusion = &report["fusion"];
    assert_eq!(fusion["kernels"], 1800.0, "{body}");
    assert_eq!(fusion["tokens"], 300.0, "{body}");
    assert_eq!(fusion["kernels_per_token"], 6.0, "{body}");
}
