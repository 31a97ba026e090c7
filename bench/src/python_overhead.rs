//! What tracing costs a Python server, on two servers:
//!
//! * `json` — `targets/json_server.py` (pyenv's CPython 3.11, a threaded
//!   JSON HTTP server) under 8 keep-alive connections in a closed loop:
//!   requests per second, and the P99 of the requests' latency;
//! * `bentoml` — the demo's real BentoML stack serving the tiny Llama
//!   (`targets/stacks/serve.py bentoml`), driven by gapscope-loadgen in a
//!   closed loop at 8: output tokens per second, and the P99 end-to-end
//!   latency.
//!
//! Each server is started once and stays up; each measurement starts
//! (or not) a gapscoped beside it, waits until it traces the server, lets
//! a second pass, and loads the server. The configurations:
//! * `no_daemon`;
//! * `core` — syscalls, off-CPU and run queue (`[python] gil = false`,
//!   which also leaves out the serialization probes), BPF statistics off;
//! * `everything` — core plus GIL waits and serialization (and the CUDA
//!   probes where a libcuda is mapped), BPF statistics off;
//! * `defaults` — gapscoped as its defaults configure it (BPF statistics
//!   sampled one second a minute: a measurement rarely holds a window, so
//!   this is what the service pays 59 seconds of 60).
//!
//! Rounds, order and intervals: the A/B harness (`ab.rs`). Targets, on the
//! throughput ratio to `no_daemon`: core at least 0.98 (≤ 2 % loss),
//! everything and the defaults at least 0.95 (≤ 5 %); a target holds only
//! when its 95 % interval lies inside it.
//!
//! Run as root: `cargo build --release --workspace &&
//! ./target/release/python_overhead [--server json|bentoml] [--rounds N]`.
//! Writes bench/results/python_overhead.json (both servers in one run).

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpStream,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use gapscope_bench::ab::{self, Bound, Harness, Report, Samples};
use gapscope_testkit::{Daemon, free_port, loadgen_bin, repo_root, require_root, target_python};
use serde_json::{Value, json};

const CONFIGS: [&str; 4] = ["no_daemon", "core", "everything", "defaults"];
const JSON_SECONDS: f64 = 5.0;
const BENTOML_SECONDS: u32 = 10;
const CONNECTIONS: usize = 8;

const BODY: &str = r#"{"items": [{"id": 1, "text": "why is the gpu idle"}, {"id": 2, "text": "the wrapper holds the gil"}, {"id": 3, "text": "serialize every chunk"}, {"id": 4, "text": "wait for the host"}]}"#;

struct Server {
    child: Child,
    port: u16,
    /// The `[[service]]` table that matches it.
    service: &'static str,
}

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: signalling our own child; BentoML stops its workers on SIGTERM.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `program args` and waits for its first stdout line to start with `ready`.
/// How long a server may take to say it is ready (BentoML imports torch).
const READY_WITHIN: Duration = Duration::from_secs(180);

/// Starts `cmd` and waits (at most `READY_WITHIN`) for a stdout line
/// starting with `ready`.
fn start(
    mut cmd: Command,
    ready: &'static str,
    port: u16,
    service: &'static str,
) -> anyhow::Result<Server> {
    let mut child = cmd.stdout(Stdio::piped()).spawn()?;
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let (said, heard) = std::sync::mpsc::channel();
    // Reads until the line, then keeps draining so the server never
    // blocks on a full pipe.
    std::thread::spawn(move || {
        let mut line = String::new();
        loop {
            line.clear();
            match out.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) if line.starts_with(ready) => break,
                Ok(_) => {}
            }
        }
        let _ = said.send(());
        let _ = std::io::copy(&mut out, &mut std::io::sink());
    });
    if heard.recv_timeout(READY_WITHIN).is_err() {
        let _ = child.kill();
        let _ = child.wait();
        bail!("the server did not say {ready:?} within {READY_WITHIN:?} (or exited first)");
    }
    Ok(Server {
        child,
        port,
        service,
    })
}

fn json_server() -> anyhow::Result<Server> {
    let port = free_port();
    let mut cmd = Command::new(target_python());
    cmd.arg(repo_root().join("targets/json_server.py")).args([
        "--port",
        &port.to_string(),
        "--tag",
        "overhead-bench",
    ]);
    start(
        cmd,
        "listening",
        port,
        "[[service]]\nname = \"bench\"\ncmdline = \"json_server.py .*--tag overhead-bench\"\n",
    )
}

fn bentoml_server() -> anyhow::Result<Server> {
    let root = repo_root();
    let python = root.join("targets/.venv/bin/python");
    if !python.exists() || !root.join(".cache/tiny-llama/hf/config.json").exists() {
        bail!(
            "the BentoML stack is not installed: run `bash scripts/setup.sh` (it makes targets/.venv and .cache/tiny-llama)"
        );
    }
    let port = free_port();
    let mut cmd = Command::new(python);
    cmd.arg(root.join("targets/stacks/serve.py"))
        .args(["bentoml", "--port", &port.to_string(), "--parallel", "8"])
        .current_dir(&root);
    start(
        cmd,
        "ready",
        port,
        "[[service]]\nname = \"bench\"\ncmdline = \"bento_service:LlamaService\"\n",
    )
}

/// The daemon for a configuration, tracing the server once this returns.
fn daemon(config: &str, server: &Server) -> anyhow::Result<Option<Daemon>> {
    let s = server.service;
    let d = match config {
        "no_daemon" => return Ok(None),
        "core" => Daemon::start_with(&format!("[python]\ngil = false\n{s}"), "bpf_stats = false"),
        "everything" => Daemon::start_with(s, "bpf_stats = false"),
        "defaults" => Daemon::start(s),
        _ => bail!("unknown configuration {config}"),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = d.scrape();
        let traced = m.get_or_zero("gapscope_service_processes", &[("service", "bench")]) >= 1.0;
        let python = config == "core"
            || m.get_or_zero("gapscope_python_processes", &[("service", "bench")]) >= 1.0;
        if traced && python {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "gapscoped ({config}) never traced the server (traced {traced}, GIL found {python}):\n{}",
                d.log_text()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(Some(d))
}

/// One keep-alive connection sending requests until `deadline`; latencies in seconds.
fn json_client(port: u16, deadline: Instant) -> anyhow::Result<Vec<f64>> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_nodelay(true)?;
    // A server that stops answering fails the run rather than hanging it.
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let request = format!(
        "POST /work HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{BODY}",
        BODY.len()
    );
    let mut reader = BufReader::new(s.try_clone()?);
    let mut latencies = Vec::new();
    while Instant::now() < deadline {
        let sent = Instant::now();
        s.write_all(request.as_bytes())?;
        let mut length = 0usize;
        let mut status = String::new();
        reader.read_line(&mut status)?;
        if !status.starts_with("HTTP/1.1 200") {
            bail!("server answered {status:?}");
        }
        loop {
            let mut h = String::new();
            reader.read_line(&mut h)?;
            if h == "\r\n" || h.is_empty() {
                break;
            }
            if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse()?;
            }
        }
        let mut body = vec![0u8; length];
        reader.read_exact(&mut body)?;
        latencies.push(sent.elapsed().as_secs_f64());
    }
    Ok(latencies)
}

fn p99(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 * 0.99).ceil() as usize).clamp(1, v.len()) - 1]
}

/// Requests per second and the P99 latency.
fn load_json(port: u16) -> anyhow::Result<(f64, f64)> {
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(JSON_SECONDS);
    let handles: Vec<_> = (0..CONNECTIONS)
        .map(|_| std::thread::spawn(move || json_client(port, deadline)))
        .collect();
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.join().map_err(|_| anyhow::anyhow!("client panicked"))??);
    }
    Ok((all.len() as f64 / start.elapsed().as_secs_f64(), p99(all)))
}

/// Output tokens per second and the P99 end-to-end latency, from
/// gapscope-loadgen's results.
fn load_bentoml(port: u16) -> anyhow::Result<(f64, f64)> {
    let root = repo_root();
    let out = tempfile::tempdir()?;
    let run = Command::new(loadgen_bin())
        .args(["--url", &format!("http://127.0.0.1:{port}/v1/completions")])
        .args(["--model", "tiny-llama", "--tokenizer"])
        .arg(root.join(".cache/tiny-llama/hf/tokenizer.json"))
        .args(["--phase", &format!("stress=closed:8:{BENTOML_SECONDS}s")])
        .args([
            "--max-tokens",
            "32",
            "--input-tokens",
            "64",
            "--quiet",
            "--out",
        ])
        .arg(out.path())
        .output()?;
    if !run.status.success() {
        bail!(
            "gapscope-loadgen failed ({}): {}",
            run.status,
            String::from_utf8_lossy(&run.stderr)
        );
    }
    let doc: Value = serde_json::from_slice(&std::fs::read(out.path().join("results.json"))?)?;
    let stress = &doc["phases"][0];
    if stress["failed"].as_u64() != Some(0) {
        bail!("{} requests failed: {}", stress["failed"], stress["errors"]);
    }
    let tokens = stress["throughput"]["output_tokens_per_s"]
        .as_f64()
        .context("results.json has no output_tokens_per_s")?;
    let e2e = stress["latency"]["e2e"]["p99"].as_f64().unwrap_or(f64::NAN);
    Ok((tokens, e2e))
}

/// One server's rounds: its throughput samples, and its P99 latencies by configuration.
fn measure(
    harness: &mut Harness,
    which: &str,
) -> anyhow::Result<(Samples, BTreeMap<&'static str, Vec<f64>>)> {
    let server = match which {
        "json" => json_server()?,
        _ => bentoml_server()?,
    };
    let unit = if which == "json" {
        "requests/s"
    } else {
        "output tokens/s"
    };
    let mut latencies: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
    let samples = harness.run(unit, |config, round| {
        let d = daemon(config, &server)?;
        // The daemon's own start-up (rescan, attaches) settles first.
        std::thread::sleep(Duration::from_secs(1));
        let (throughput, p99) = match which {
            "json" => load_json(server.port)?,
            _ => load_bentoml(server.port)?,
        };
        drop(d);
        if round > 0 {
            latencies.entry(config).or_default().push(p99);
        }
        Ok(throughput)
    })?;
    Ok((samples, latencies))
}

fn report(
    harness: &Harness,
    samples: &Samples,
    latencies: &BTreeMap<&'static str, Vec<f64>>,
    what: &str,
) -> Value {
    let mut r = Report::new(harness, samples);
    for (config, bound) in [("core", 0.98), ("everything", 0.95), ("defaults", 0.95)] {
        r.compare(
            &format!("{config} / no_daemon throughput"),
            &[config, "no_daemon"],
            move |x| x[config] / x["no_daemon"],
            Bound::AtLeast(bound),
        );
    }
    let p99_ratio = |config: &str| -> Option<ab::Comparison> {
        let (a, b) = (latencies.get(config)?, latencies.get("no_daemon")?);
        let per_round = a.iter().zip(b).map(|(a, b)| a / b).collect();
        Some(ab::Comparison::new(
            format!("{config} / no_daemon P99 latency"),
            per_round,
            Bound::None,
        ))
    };
    let extra: Vec<ab::Comparison> = ["core", "everything", "defaults"]
        .iter()
        .filter_map(|c| p99_ratio(c))
        .collect();
    for c in &extra {
        r.add(c.clone());
    }
    r.extra("server", json!(what));
    r.extra(
        "p99_latency_s_median",
        json!(
            latencies
                .iter()
                .map(|(k, v)| (*k, ab::median(v)))
                .collect::<BTreeMap<_, _>>()
        ),
    );
    r.extra("p99_latency_s_samples", json!(latencies));
    print!("{}", r.table());
    r.to_json()
}

fn main() -> anyhow::Result<()> {
    require_root();
    ab::pin();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let servers: Vec<&str> = match args.iter().position(|a| a == "--server") {
        Some(i) => match args.get(i + 1).map(String::as_str) {
            Some(s @ ("json" | "bentoml")) => vec![s],
            other => bail!("--server {other:?}: use json or bentoml (both run by default)"),
        },
        None => vec!["json", "bentoml"],
    };
    let rest: Vec<String> = {
        let mut a = args.clone();
        if let Some(i) = a.iter().position(|a| a == "--server") {
            a.drain(i..(i + 2).min(a.len()));
        }
        a
    };
    let mut doc = serde_json::Map::new();
    let mut full = servers.len() == 2;
    for which in &servers {
        let mut harness = Harness::from("python_overhead", &CONFIGS, ab::MIN_ROUNDS, &rest)?;
        full &= harness.full;
        let (samples, latencies) = measure(&mut harness, which)?;
        let what = match *which {
            "json" => format!(
                "targets/json_server.py, CPython 3.11 (pyenv), {CONNECTIONS} keep-alive connections, {JSON_SECONDS} s a measurement"
            ),
            _ => format!(
                "BentoML + transformers serving the tiny Llama (targets/stacks/serve.py bentoml), gapscope-loadgen closed loop at 8, 32 output tokens, {BENTOML_SECONDS} s a measurement"
            ),
        };
        doc.insert(
            which.to_string(),
            report(&harness, &samples, &latencies, &what),
        );
    }
    doc.insert("benchmark".into(), json!("python_overhead"));
    ab::write("python_overhead", &Value::Object(doc), full)?;
    Ok(())
}
