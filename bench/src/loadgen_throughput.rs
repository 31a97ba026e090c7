//! How much load one core of gapscope-loadgen can generate, against a
//! Python asyncio + aiohttp client written the way common LLM benchmark
//! scripts are (bench/python/aiohttp_client.py), in one run.
//!
//! The server is the zero-delay streaming test server (128 one-token
//! chunks per response) on core 1; each client runs alone on core 0. For
//! each client: completed requests/s and chunks/s at concurrency 50
//! (closed loop), and at open-loop Poisson rates of 200 and 1,000 req/s
//! the achieved rate and the P99 send lag behind the schedule. Targets:
//! at least 10× the Python client's requests/s per core; achieved rate
//! within 1 % of the target; P99 send lag under 1 ms.
//!
//! Run as root or not: `cargo build --release --workspace &&
//! ./target/release/loadgen_throughput`. Writes
//! bench/results/loadgen_throughput.json.

use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Command, Stdio},
};

use anyhow::{Context as _, bail};
use gapscope_testkit::{loadgen_bin, repo_root, target_python};
use serde_json::{Value, json};

const SECONDS: u32 = 10;
const CHUNKS: u32 = 128;

struct Server(Child, u16);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn server() -> anyhow::Result<Server> {
    let bin = loadgen_bin().with_file_name("gapscope-stream-server");
    let mut child = Command::new("taskset")
        .args(["-c", "1"])
        .arg(bin)
        .args(["0", "1", "0", "0", "1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the stream server (is taskset installed?)")?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line)?;
    let port = line
        .trim()
        .strip_prefix("listening ")
        .and_then(|p| p.parse().ok());
    match port {
        Some(p) => Ok(Server(child, p)),
        None => bail!("the server said {line:?}"),
    }
}

/// Runs a client alone on core 0: (stdout, CPU seconds it used).
fn pinned(program: &std::path::Path, args: &[String]) -> anyhow::Result<(String, f64)> {
    use std::io::Read as _;
    let mut child = Command::new("taskset")
        .args(["-c", "0"])
        .arg(program)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let (mut out, mut err) = (String::new(), String::new());
    child.stdout.take().unwrap().read_to_string(&mut out)?;
    child.stderr.take().unwrap().read_to_string(&mut err)?;
    // taskset execs the client, so the child's usage is the client's.
    let mut status = 0;
    // SAFETY: zeroed plain-data struct filled by the kernel.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waiting for our own child with valid pointers.
    if unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) } < 0 {
        bail!("wait4: {}", std::io::Error::last_os_error());
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("{} failed: {err}", program.display());
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok((out, secs(usage.ru_utime) + secs(usage.ru_stime)))
}

/// gapscope-loadgen on core 0 with one phase: that phase's results, and
/// the CPU seconds the client used.
fn rust(url: &str, phase: &str) -> anyhow::Result<(Value, f64)> {
    let dir = tempfile::tempdir()?;
    let args: Vec<String> = [
        "--url",
        url,
        "--phase",
        phase,
        "--max-tokens",
        &CHUNKS.to_string(),
        "--input-tokens",
        "16",
    ]
    .iter()
    .map(std::string::ToString::to_string)
    .chain([
        "--quiet".into(),
        "--no-plots".into(),
        "--out".into(),
        dir.path().display().to_string(),
    ])
    .collect();
    let (_, cpu) = pinned(&loadgen_bin(), &args)?;
    let results: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("results.json"))?)?;
    Ok((results["phases"][0].clone(), cpu))
}

/// The aiohttp client on core 0: its report and CPU seconds.
fn python(url: &str, mode: &str, x: u32) -> anyhow::Result<(Value, f64)> {
    let script = repo_root()
        .join("bench/python/aiohttp_client.py")
        .display()
        .to_string();
    let args = [
        script,
        url.to_string(),
        mode.to_string(),
        x.to_string(),
        SECONDS.to_string(),
        CHUNKS.to_string(),
    ];
    let (out, cpu) = pinned(&target_python(), &args)?;
    Ok((serde_json::from_str(&out)?, cpu))
}

fn p99(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() * 99 / 100).copied().unwrap_or(f64::NAN)
}

fn main() -> anyhow::Result<()> {
    let s = server()?;
    let url = format!("http://127.0.0.1:{}/v1/completions", s.1);

    let (closed, rust_cpu) = rust(&url, &format!("c=closed:50:{SECONDS}s"))?;
    let rust_rps = closed["throughput"]["requests_per_s"]
        .as_f64()
        .unwrap_or(0.0);
    let rust_closed = json!({
        "requests_per_s": rust_rps,
        "chunks_per_s": closed["throughput"]["chunks_per_s"],
        "cpu_seconds": rust_cpu,
        "requests_per_cpu_second": closed["ok"].as_f64().unwrap_or(0.0) / rust_cpu,
        "failed": closed["failed"],
    });
    eprintln!("gapscope-loadgen closed loop at 50: {rust_closed}");
    let mut rust_open = serde_json::Map::new();
    for rate in [200, 1000] {
        let (p, cpu) = rust(&url, &format!("o=poisson:{rate}:{SECONDS}s"))?;
        let achieved = p["achieved_rate"].as_f64().unwrap_or(0.0);
        let scheduled = p["scheduled"].as_f64().unwrap_or(0.0) / f64::from(SECONDS);
        let entry = json!({
            "target_rate": rate,
            "schedule_rate": scheduled,
            "achieved_rate": achieved,
            "achieved_vs_schedule": achieved / scheduled,
            "p99_send_lag_ms": p["latency"]["send_lag"]["p99"].as_f64().unwrap_or(f64::NAN) * 1e3,
            "max_send_lag_ms": p["latency"]["send_lag"]["max"].as_f64().unwrap_or(f64::NAN) * 1e3,
            "failed": p["failed"],
            "cpu_seconds": cpu,
        });
        eprintln!("gapscope-loadgen open loop at {rate}: {entry}");
        rust_open.insert(rate.to_string(), entry);
    }

    let (py_closed, py_cpu) = python(&url, "closed", 50)?;
    let py_rps = py_closed["completed"].as_f64().unwrap_or(0.0)
        / py_closed["seconds"].as_f64().unwrap_or(1.0);
    let py_cps =
        py_closed["chunks"].as_f64().unwrap_or(0.0) / py_closed["seconds"].as_f64().unwrap_or(1.0);
    eprintln!("aiohttp closed loop at 50: {py_rps:.1} req/s, {py_cps:.0} chunks/s");
    let mut py_open = serde_json::Map::new();
    for rate in [200, 1000] {
        let (p, cpu) = python(&url, "open", rate)?;
        let lags: Vec<f64> = p["lags"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_f64).collect())
            .unwrap_or_default();
        let entry = json!({
            "target_rate": rate,
            "achieved_rate": p["sent"].as_f64().unwrap_or(0.0) / f64::from(SECONDS),
            "completed_per_s": p["completed"].as_f64().unwrap_or(0.0) / p["seconds"].as_f64().unwrap_or(1.0),
            "p99_send_lag_ms": p99(lags) * 1e3,
            "cpu_seconds": cpu,
        });
        eprintln!("aiohttp open loop at {rate}: {entry}");
        py_open.insert(rate.to_string(), entry);
    }

    let report = json!({
        "benchmark": "loadgen_throughput",
        "setup": format!("zero-delay streaming test server ({CHUNKS} one-token chunks per response) on core 1; each client alone on core 0; {SECONDS} s per run"),
        "gapscope_loadgen": { "closed_loop_50": rust_closed, "open_loop": rust_open },
        "python_aiohttp": {
            "closed_loop_50": {
                "requests_per_s": py_rps,
                "chunks_per_s": py_cps,
                "cpu_seconds": py_cpu,
                "requests_per_cpu_second": py_closed["completed"].as_f64().unwrap_or(0.0) / py_cpu,
            },
            "open_loop": py_open,
        },
        "requests_per_s_ratio": rust_rps / py_rps,
        // Per core: requests completed per CPU-second each client used.
        "requests_per_cpu_second_ratio": (closed["ok"].as_f64().unwrap_or(0.0) / rust_cpu)
            / (py_closed["completed"].as_f64().unwrap_or(0.0) / py_cpu),
        "targets": {
            "requests_per_s_ratio_at_least": 10.0,
            "achieved_rate_within": 0.01,
            "p99_send_lag_ms_under": 1.0,
        },
        "note": "with two cores, the single-threaded test server can be the bottleneck of the closed loop; requests per CPU-second compares the clients' cost whatever the server manages",
    });
    let path = repo_root().join("bench/results/loadgen_throughput.json");
    std::fs::create_dir_all(path.parent().unwrap())?;
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
