//! How much load one core of gapscope-loadgen can generate, against
//! oha (the Rust HTTP load generator, which reads each response whole and
//! parses no SSE event) and a Python asyncio + aiohttp client written the
//! way common LLM benchmark scripts are (bench/python/aiohttp_client.py),
//! side by side in one run.
//!
//! The server is the zero-delay streaming test server (128 one-token
//! chunks per response) on core 1; each client runs alone on core 0.
//! * The closed loop at 50, the three clients interleaved in the A/B
//!   harness's rounds (`ab.rs`): requests completed per CPU-second the
//!   client used.
//! * gapscope-loadgen's own TTFT P99 at zero server delay: five closed
//!   loops at concurrency 1 (at 50 the server's queue is most of a TTFT).
//! * Open-loop Poisson rates of 200 and 1,000 req/s, once each: the
//!   achieved rate and the P99 send lag behind the schedule.
//!
//! Targets: at least 10× the Python client's and at least oha's requests
//! per CPU-second (the interval inside the bound); TTFT P99 under 1 ms;
//! achieved rate within 1 % of the target; P99 send lag under 1 ms.
//!
//! Run as root or not: `cargo build --release --workspace &&
//! ./target/release/loadgen_throughput`. Writes
//! bench/results/loadgen_throughput.json.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader},
    process::{Child, Command, Stdio},
};

use anyhow::{Context as _, bail};
use gapscope_bench::ab::{self, Bound, Harness, Report};
use gapscope_testkit::{loadgen_bin, repo_root, target_python};
use serde_json::{Value, json};

const SECONDS: u32 = 10;
const CLOSED_SECONDS: u32 = 5;
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
fn python(url: &str, mode: &str, x: u32, seconds: u32) -> anyhow::Result<(Value, f64)> {
    let script = repo_root()
        .join("bench/python/aiohttp_client.py")
        .display()
        .to_string();
    let args = [
        script,
        url.to_string(),
        mode.to_string(),
        x.to_string(),
        seconds.to_string(),
        CHUNKS.to_string(),
    ];
    let (out, cpu) = pinned(&target_python(), &args)?;
    Ok((serde_json::from_str(&out)?, cpu))
}

fn p99(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() * 99 / 100).copied().unwrap_or(f64::NAN)
}

/// oha (the Rust HTTP load generator) on core 0 in a closed loop at 50:
/// successful requests, and CPU seconds it used. It reads each response
/// to its end without parsing the SSE events.
fn oha(url: &str) -> anyhow::Result<(f64, f64)> {
    let oha = which("oha").context(
        "oha is not installed: `cargo install oha --locked` (or put it on PATH); the comparison needs it",
    )?;
    let body = format!(
        r#"{{"model":"m","prompt":"{}","max_tokens":{CHUNKS},"stream":true}}"#,
        "hello ".repeat(16).trim_end()
    );
    let args: Vec<String> = [
        "-z",
        &format!("{CLOSED_SECONDS}s"),
        "-c",
        "50",
        "-m",
        "POST",
        "-H",
        "content-type: application/json",
        "-d",
        &body,
        "--no-tui",
        "--output-format",
        "json",
        url,
    ]
    .iter()
    .map(std::string::ToString::to_string)
    .collect();
    let (out, cpu) = pinned(&oha, &args)?;
    let doc: Value = serde_json::from_str(&out).context("oha's JSON output")?;
    let ok = doc["statusCodeDistribution"]["200"].as_f64().unwrap_or(0.0);
    Ok((ok, cpu))
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join(program))
            .find(|p| p.is_file())
    })
}

const CLIENTS: [&str; 3] = ["gapscope_loadgen", "oha", "aiohttp"];

fn main() -> anyhow::Result<()> {
    let s = server()?;
    let url = format!("http://127.0.0.1:{}/v1/completions", s.1);

    // The closed loop at 50, each client in turn, in the harness's rounds:
    // requests completed per CPU-second the client used.
    let mut harness = Harness::from_args("loadgen_throughput", &CLIENTS, ab::MIN_ROUNDS)?;
    let mut rates: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let samples = harness.run("requests per CPU-second", |client, round| {
        let (ok, cpu) = match client {
            "gapscope_loadgen" => {
                let (p, cpu) = rust(&url, &format!("c=closed:50:{CLOSED_SECONDS}s"))?;
                if p["failed"].as_u64() != Some(0) {
                    bail!("gapscope-loadgen: {} requests failed", p["failed"]);
                }
                (p["ok"].as_f64().unwrap_or(0.0), cpu)
            }
            "oha" => oha(&url)?,
            _ => {
                let (p, cpu) = python(&url, "closed", 50, CLOSED_SECONDS)?;
                (p["completed"].as_f64().unwrap_or(0.0), cpu)
            }
        };
        if round > 0 {
            rates
                .entry(client)
                .or_default()
                .push(ok / f64::from(CLOSED_SECONDS));
        }
        Ok(ok / cpu)
    })?;
    let mut report = Report::new(&harness, &samples);
    report
        .compare(
            "gapscope_loadgen / aiohttp",
            &["gapscope_loadgen", "aiohttp"],
            |r| r["gapscope_loadgen"] / r["aiohttp"],
            Bound::AtLeast(10.0),
        )
        .compare(
            "gapscope_loadgen / oha",
            &["gapscope_loadgen", "oha"],
            |r| r["gapscope_loadgen"] / r["oha"],
            Bound::AtLeast(1.0),
        );
    // Its own TTFT: one request at a time, so the server answers at once
    // and what is measured is the client's (at 50 in flight the
    // single-threaded server's queue is most of a TTFT).
    let mut ttft_p99 = Vec::new();
    for _ in 0..5 {
        let (p, _) = rust(&url, &format!("c=closed:1:{CLOSED_SECONDS}s"))?;
        ttft_p99.push(p["latency"]["ttft"]["p99"].as_f64().unwrap_or(f64::NAN));
    }
    report.add(ab::Comparison::new(
        "own TTFT P99 at concurrency 1, s",
        ttft_p99,
        Bound::AtMost(0.001),
    ));
    report.extra(
        "requests_per_s_median",
        json!(
            rates
                .iter()
                .map(|(k, v)| (*k, ab::median(v)))
                .collect::<BTreeMap<_, _>>()
        ),
    );

    // The open loop, once per rate: achieved rate and send lag.
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
    let mut py_open = serde_json::Map::new();
    for rate in [200, 1000] {
        let (p, cpu) = python(&url, "open", rate, SECONDS)?;
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
    report
        .extra(
            "setup",
            json!(format!("zero-delay streaming test server ({CHUNKS} one-token chunks per response) on core 1; each client alone on core 0; closed loop at 50 for {CLOSED_SECONDS} s a measurement; open loops {SECONDS} s")),
        )
        .extra(
            "open_loop",
            json!({ "gapscope_loadgen": rust_open, "python_aiohttp": py_open }),
        )
        .extra(
            "open_loop_targets",
            json!({ "achieved_rate_within": 0.01, "p99_send_lag_ms_under": 1.0 }),
        )
        .extra(
            "note",
            json!("with two cores, the single-threaded test server can be the bottleneck of the closed loop; requests per CPU-second compares the clients' cost whatever the server manages; oha reads each response whole and parses no SSE event"),
        );
    report.finish()?;
    Ok(())
}
