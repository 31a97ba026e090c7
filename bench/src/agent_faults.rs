//! What CUPTI deep mode's agent costs a launch-bound Python host when
//! gapscoped is healthy, absent, killed mid-run or not reading. The host is
//! `testkit/data/gpu_loop.py launches` on the simulated device (no GPU: the
//! CUPTI stand-in records every launch in the host's process, as CUPTI
//! does), under the real `libgapscope_inject.so`.
//!
//! * `no_agent`: no `CUDA_INJECTION64_PATH`, nothing records: the floor.
//! * `healthy`: the agent sending to a gapscoped that traces nothing else.
//! * `absent`, `killed` (SIGKILL once the first records arrived),
//!   `stalled` (a peer that accepts and never reads): the faults.
//!
//! Interleaved in rounds; the report gives each configuration's launches
//! per second (median, min, max) and each fault's median rate against
//! `healthy` (target: within 1 %), and `healthy` against `no_agent` (what
//! recording costs here, the stand-in's share included).
//!
//! Run as root: `cargo build --release --workspace && ./target/release/agent_faults`.
//! Writes bench/results/agent_faults.json.

use std::{
    collections::BTreeMap,
    io::Write as _,
    os::unix::net::UnixListener,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use gapscope_testkit::{Daemon, fake_cuda::FakeCuda, repo_root, require_root, target_python};

const ROUNDS: usize = 5;
const LAUNCHES: u32 = 400_000;
const CONFIGS: [&str; 5] = ["no_agent", "healthy", "absent", "killed", "stalled"];

fn inject_library() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    exe.parent()
        .map(|d| d.join("libgapscope_inject.so"))
        .filter(|p| p.is_file())
        .context("libgapscope_inject.so beside this benchmark: cargo build --release --workspace")
}

/// One host run: its launches per second.
fn host(
    fixture: &FakeCuda,
    cupti: &Path,
    agent: Option<(&Path, &str)>,
    during: impl FnOnce(),
) -> anyhow::Result<f64> {
    let mut cmd = Command::new(target_python());
    cmd.arg(repo_root().join("testkit/data/gpu_loop.py"))
        .arg(fixture.path(""))
        .args(["launches", &LAUNCHES.to_string(), "1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some((library, socket)) = agent {
        cmd.env("CUDA_INJECTION64_PATH", library)
            .env("GAPSCOPE_CUPTI_PATH", cupti)
            .env("GAPSCOPE_SOCKET", socket);
    }
    let mut child = cmd.spawn()?;
    let mut stdin = child.stdin.take().context("stdin")?;
    writeln!(stdin, "go")?;
    during();
    drop(stdin);
    let out = child.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let ns: f64 = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("host launch_ns ")?
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
        .with_context(|| format!("no host line in {text}"))?;
    Ok(f64::from(LAUNCHES) / (ns / 1e9))
}

fn run(config: &str, fixture: &FakeCuda, cupti: &Path, library: &Path) -> anyhow::Result<f64> {
    let socket = format!(
        "/tmp/gapscope-agent-faults-{}-{config}.sock",
        std::process::id()
    );
    let _ = std::fs::remove_file(&socket);
    let daemon = || {
        Daemon::start_with(
            "[[service]]\nname = \"none\"\ncmdline = '^gapscope-agent-faults-nothing$'\n",
            &format!("\n[inject]\nsocket = \"{socket}\"\n"),
        )
    };
    let rate = match config {
        "no_agent" => host(fixture, cupti, None, || {})?,
        "healthy" => {
            let _running = daemon();
            host(fixture, cupti, Some((library, &socket)), || {})?
        }
        "absent" => host(fixture, cupti, Some((library, &socket)), || {})?,
        "killed" => {
            let d = daemon();
            host(fixture, cupti, Some((library, &socket)), || {
                let deadline = Instant::now() + Duration::from_secs(10);
                while d.scrape().get_or_zero("gapscope_inject_records_total", &[]) == 0.0
                    && Instant::now() < deadline
                {
                    std::thread::sleep(Duration::from_millis(5));
                }
                // SAFETY: kill(2) of the daemon this benchmark started.
                unsafe { libc::kill(d.child.id() as i32, libc::SIGKILL) };
            })?
        }
        "stalled" => {
            let listener = UnixListener::bind(&socket)?;
            let held = std::thread::spawn(move || listener.accept().map(|(c, _)| c));
            let rate = host(fixture, cupti, Some((library, &socket)), || {})?;
            drop(held.join());
            rate
        }
        other => bail!("no configuration {other}"),
    };
    let _ = std::fs::remove_file(&socket);
    Ok(rate)
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}

fn main() -> anyhow::Result<()> {
    require_root();
    let library = inject_library()?;
    let fixture = FakeCuda::build();
    let cupti = fixture
        .cupti("cupti-12.9")
        .map_err(|why| anyhow::anyhow!(why))?;
    let mut rates: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for round in 1..=ROUNDS {
        for config in CONFIGS {
            let r = run(config, &fixture, &cupti, &library)?;
            eprintln!("round {round}: {config:<9} {r:10.0} launches/s");
            rates.entry(config).or_default().push(r);
        }
    }
    let summary: BTreeMap<&str, serde_json::Value> = rates
        .iter()
        .map(|(k, v)| {
            let min = v.iter().copied().fold(f64::INFINITY, f64::min);
            let max = v.iter().copied().fold(0.0, f64::max);
            (
                *k,
                serde_json::json!({"median": median(v), "min": min, "max": max}),
            )
        })
        .collect();
    let healthy = median(&rates["healthy"]);
    let against_healthy: BTreeMap<&str, f64> = ["absent", "killed", "stalled"]
        .iter()
        .map(|f| (*f, median(&rates[f]) / healthy - 1.0))
        .collect();
    let report = serde_json::json!({
        "benchmark": "agent_faults",
        "workload": "gpu_loop.py launches: 400 000 cuLaunchKernel calls from Python through ctypes on the simulated device, each a 1 µs kernel, with the CUPTI stand-in recording them in the host",
        "rounds": ROUNDS,
        "launches_per_second_samples": rates,
        "launches_per_second": summary,
        "fault_rate_change_against_healthy": against_healthy,
        "target": "each fault within 1 % of healthy",
        "healthy_against_no_agent": healthy / median(&rates["no_agent"]) - 1.0,
    });
    let path = repo_root().join("bench/results/agent_faults.json");
    std::fs::create_dir_all(path.parent().unwrap())?;
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
