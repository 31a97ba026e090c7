//! What tracing costs a Python server: a threaded JSON HTTP server
//! (targets/json_server.py, pyenv's CPython 3.11) under a fixed
//! closed-loop load, requests per second with no daemon, with core tracing
//! only (`[python] gil = false`, which also leaves out serialization
//! probes), with everything (GIL tracing and json probes on the server's
//! two json calls a request; BPF run-time statistics off), and with the
//! defaults (everything, statistics on), interleaved in rounds within one
//! run. Target: under 5 %
//! throughput loss with everything on.
//!
//! The cost of one probed call alone is measured by `probe_cost`.
//!
//! Run as root: `cargo run --release -p gapscope-bench --bin python_overhead`.
//! Writes bench/results/python_overhead.json.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpStream,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use gapscope_testkit::{Daemon, free_port, repo_root, require_root, target_python};

const ROUNDS: usize = 3;
const SECONDS: f64 = 5.0;
const CONNECTIONS: usize = 8;
const CONFIGS: [&str; 4] = ["no_daemon", "core", "everything", "everything_bpf_stats"];

const BODY: &str = r#"{"items": [{"id": 1, "text": "why is the gpu idle"}, {"id": 2, "text": "the wrapper holds the gil"}, {"id": 3, "text": "serialize every chunk"}, {"id": 4, "text": "wait for the host"}]}"#;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_server(port: u16) -> anyhow::Result<Server> {
    let mut child = Command::new(target_python())
        .arg(repo_root().join("targets/json_server.py"))
        .args(["--port", &port.to_string(), "--tag", "overhead-bench"])
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line)?;
    if !line.starts_with("listening") {
        bail!("server said {line:?}");
    }
    Ok(Server(child))
}

/// One keep-alive connection sending requests until `deadline`.
fn client(port: u16, deadline: Instant, done: &AtomicU64) -> anyhow::Result<()> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_nodelay(true)?;
    let request = format!(
        "POST /work HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{BODY}",
        BODY.len()
    );
    let mut reader = BufReader::new(s.try_clone()?);
    while Instant::now() < deadline {
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
        done.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

fn load(port: u16) -> anyhow::Result<f64> {
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(SECONDS);
    let handles: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let done = done.clone();
            std::thread::spawn(move || client(port, deadline, &done))
        })
        .collect();
    for h in handles {
        h.join().map_err(|_| anyhow::anyhow!("client panicked"))??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}

/// Requests per second, and probed serialization calls per second.
fn run(config: &str) -> anyhow::Result<(f64, f64)> {
    let service =
        "[[service]]\nname = \"json\"\ncmdline = \"json_server.py .*--tag overhead-bench\"\n";
    let daemon = match config {
        "no_daemon" => None,
        "core" => Some(Daemon::start_with(
            &format!("[python]\ngil = false\n{service}"),
            "bpf_stats = false",
        )),
        "everything" => Some(Daemon::start_with(service, "bpf_stats = false")),
        _ => Some(Daemon::start(service)),
    };
    let port = free_port();
    let _server = start_server(port)?;
    if let Some(d) = &daemon {
        d.wait_processes("json", 1.0);
        if config.starts_with("everything") {
            let deadline = Instant::now() + Duration::from_secs(5);
            while d
                .scrape()
                .get_or_zero("gapscope_python_processes", &[("service", "json")])
                < 1.0
            {
                if Instant::now() > deadline {
                    bail!("the server's GIL was never found");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    let before = daemon.as_ref().map(probed_calls);
    let rps = load(port).context(config.to_string())?;
    let mut calls_per_second = 0.0;
    if let (Some(d), Some(before)) = (&daemon, before) {
        calls_per_second = (probed_calls(d) - before) / SECONDS;
        eprintln!(
            "    {config}: {calls_per_second:.0} probed serialization calls/s ({:.0} uprobe hits/s)",
            2.0 * calls_per_second
        );
    }
    Ok((rps, calls_per_second))
}

/// Serialization calls the daemon has counted for the server so far.
fn probed_calls(d: &Daemon) -> f64 {
    d.scrape()
        .0
        .lines()
        .filter(|l| l.starts_with("gapscope_serialization_duration_seconds_count{service=\"json\""))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

fn main() -> anyhow::Result<()> {
    require_root();
    let mut samples: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut hits: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for round in 1..=ROUNDS {
        for config in CONFIGS {
            let (rps, calls) = run(config)?;
            eprintln!("round {round}: {config:<14} {rps:8.1} requests/s");
            samples.entry(config).or_default().push(rps);
            // A probed call is two hits: the uprobe and the uretprobe.
            hits.entry(config).or_default().push(2.0 * calls);
        }
    }
    let median = |v: &Vec<f64>| {
        let mut s = v.clone();
        s.sort_by(f64::total_cmp);
        s[s.len() / 2]
    };
    let med: BTreeMap<&str, f64> = samples.iter().map(|(k, v)| (*k, median(v))).collect();
    let loss = |c: &str| 1.0 - med[c] / med["no_daemon"];
    let report = serde_json::json!({
        "benchmark": "python_overhead",
        "server": "targets/json_server.py, CPython 3.11 (pyenv), ThreadingHTTPServer",
        "connections": CONNECTIONS,
        "seconds_per_run": SECONDS,
        "rounds": ROUNDS,
        "requests_per_second_median": med,
        "requests_per_second_samples": samples,
        "uprobe_hits_per_second_median": hits.iter().map(|(k, v)| (*k, median(v))).collect::<BTreeMap<_, _>>(),
        "throughput_loss": {
            "core": loss("core"),
            "everything": loss("everything"),
            "everything_bpf_stats": loss("everything_bpf_stats"),
        },
        "target_loss_at_most": 0.05,
    });
    let path = repo_root().join("bench/results/python_overhead.json");
    std::fs::create_dir_all(path.parent().unwrap())?;
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
