//! Harness for tests and benchmarks: a real gapscoped (the binary cargo
//! built), real workloads, and scrapes of the real `/metrics` over HTTP.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

/// A finished command's stdout and stderr, one after the other, for
/// assertion messages.
pub fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// One daemon at a time: tests compare timings and program lists.
static SERIAL: Mutex<()> = Mutex::new(());

pub fn serial() -> MutexGuard<'static, ()> {
    require_root();
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub fn require_root() {
    // SAFETY: geteuid cannot fail.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "these tests load and attach BPF programs and must run as root: scripts/test.sh (it runs itself again with sudo when you are not root)"
    );
}

/// A binary cargo built into the same profile directory as the running
/// test or benchmark (`target/<profile>/<name>`).
fn built_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let found = exe
        .ancestors()
        .skip(1)
        .take(3)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file());
    found.unwrap_or_else(|| {
        panic!(
            "{name} not found next to {}: build the workspace first (cargo build --workspace)",
            exe.display()
        )
    })
}

pub fn gapscoped_bin() -> PathBuf {
    built_binary("gapscoped")
}

/// The workload binary, built by cargo next to gapscoped.
pub fn workload_bin() -> PathBuf {
    built_binary("gapscope-workload")
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The Python from targets/.venv (pyenv's CPython 3.11).
pub fn target_python() -> PathBuf {
    let p = repo_root().join("targets/.venv/bin/python");
    assert!(
        p.exists(),
        "{} missing: run scripts/setup.sh to create the targets' venv",
        p.display()
    );
    p
}

/// pyenv's installation of CPython 3.`minor` (any patch release).
pub fn pyenv_prefix(minor: u8) -> PathBuf {
    // The user's pyenv (PYENV_ROOT, passed on by the scripts under sudo),
    // else root's.
    let roots = std::env::var_os("PYENV_ROOT")
        .map(PathBuf::from)
        .into_iter()
        .chain([PathBuf::from("/root/.pyenv")]);
    roots
        .flat_map(|root| std::fs::read_dir(root.join("versions")).ok())
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("3.{minor}.")))
        })
        .unwrap_or_else(|| panic!("pyenv's CPython 3.{minor} is missing: pyenv install 3.{minor}"))
}

/// pyenv's `python3.<minor>` executable.
pub fn pyenv_python(minor: u8) -> PathBuf {
    pyenv_prefix(minor).join(format!("bin/python3.{minor}"))
}

/// gapscoped run as user nobody with no capabilities at all (setpriv,
/// from util-linux).
pub fn gapscoped_as_nobody() -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all",
        "--bounding-set=-all",
    ])
    .arg(gapscoped_bin());
    cmd
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn write_config(text: &str) -> tempfile::TempPath {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f.into_temp_path()
}

/// A running gapscoped.
pub struct Daemon {
    pub child: Child,
    pub port: u16,
    pub log: PathBuf,
    _config: tempfile::TempPath,
}

impl Daemon {
    /// Starts gapscoped with `services` (TOML `[[service]]` tables) and waits
    /// until it serves `/healthz`.
    pub fn start(services: &str) -> Daemon {
        Self::start_with(services, "")
    }

    pub fn start_with(services: &str, daemon_extra: &str) -> Daemon {
        Self::start_checked(services, daemon_extra, |port| {
            http_get(port, "/healthz").is_some()
        })
    }

    /// As `start_with`, ready once `healthy(port)` says so (for a daemon
    /// that serves HTTPS or asks for credentials).
    pub fn start_checked(
        services: &str,
        daemon_extra: &str,
        healthy: impl Fn(u16) -> bool,
    ) -> Daemon {
        Self::launch(services, daemon_extra, &[], healthy)
    }

    /// As `start_with`, run through `wrapper` (a command that execs the
    /// rest of its arguments: `setpriv ... --`).
    pub fn start_wrapped(services: &str, daemon_extra: &str, wrapper: &[String]) -> Daemon {
        Self::launch(services, daemon_extra, wrapper, |port| {
            http_get(port, "/healthz").is_some()
        })
    }

    fn launch(
        services: &str,
        daemon_extra: &str,
        wrapper: &[String],
        healthy: impl Fn(u16) -> bool,
    ) -> Daemon {
        let port = free_port();
        // Each daemon its own deep-mode socket, unless the test sets one.
        let inject = if daemon_extra.contains("[inject]") || services.contains("[inject]") {
            String::new()
        } else {
            format!("\n[inject]\nsocket = \"/tmp/gapscope-test-{port}.sock\"\n")
        };
        let config = write_config(&format!(
            "[daemon]\nlisten = \"127.0.0.1:{port}\"\n{daemon_extra}\n{services}{inject}"
        ));
        let log = std::env::temp_dir().join(format!("gapscoped-test-{port}.log"));
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(gapscoped_bin());
                c
            }
            None => Command::new(gapscoped_bin()),
        };
        let child = command
            .arg("--config")
            .arg(&*config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawning gapscoped");
        let mut d = Daemon {
            child,
            port,
            log,
            _config: config,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !healthy(port) {
            if let Ok(Some(status)) = d.child.try_wait() {
                panic!("gapscoped exited early ({status}):\n{}", d.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "gapscoped never became healthy:\n{}",
                d.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        d
    }

    /// The configuration file it was started with (a test may rewrite it
    /// and send SIGHUP).
    pub fn config_path(&self) -> &std::path::Path {
        &self._config
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn scrape(&self) -> Metrics {
        match http_get(self.port, "/metrics") {
            Some(body) => Metrics(body),
            None => panic!(
                "scraping /metrics: no answer\ngapscoped's log:\n{}",
                self.log_text()
            ),
        }
    }

    /// Waits until gapscoped says it traces `pid` as `service`. Unlike a
    /// process count, this cannot be fooled by another process of the
    /// service leaving at the same moment.
    pub fn wait_traced(&self, pid: u32, service: &str) {
        let line = format!("tracing pid {pid} as service {service}\n");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.log_text().contains(&line) {
            assert!(
                Instant::now() < deadline,
                "gapscoped never traced pid {pid} as {service}:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Scrapes until `ready` holds, at most 10 s (then fails with `what`,
    /// the scrape and the log); the scrape that satisfied it.
    pub fn wait_metrics(&self, what: &str, ready: impl Fn(&Metrics) -> bool) -> Metrics {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let m = self.scrape();
            if ready(&m) {
                return m;
            }
            assert!(
                Instant::now() < deadline,
                "{what}:\n{}\n{}",
                m.0,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until `service` has `n` traced processes.
    pub fn wait_processes(&self, service: &str, n: f64) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let got = self
                .scrape()
                .get("gapscope_service_processes", &[("service", service)]);
            if got == Some(n) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "service {service} has {got:?} processes, expected {n}:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, and the time it took to exit.
    pub fn terminate(&mut self) -> (std::process::ExitStatus, Duration) {
        let start = Instant::now();
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        (status, start.elapsed())
    }

    /// BPF program ids from the "attached ... (BPF program id N)" log lines.
    pub fn program_ids(&self) -> Vec<u32> {
        self.log_text()
            .lines()
            .filter_map(|l| l.split("BPF program id ").nth(1))
            .filter_map(|rest| rest.trim_end_matches(')').parse().ok())
            .collect()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.terminate();
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

/// `gapscoped hash-password --cost COST`, as a user would run it: the
/// bcrypt hash of `password` for a web config.
pub fn hash_password(password: &str, cost: u32) -> String {
    let mut child = Command::new(gapscoped_bin())
        .args(["hash-password", "--cost", &cost.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("running gapscoped hash-password");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(password.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "gapscoped hash-password failed");
    let hash = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(hash.starts_with("$2"), "{hash}");
    hash
}

/// A tiny HTTP/1.0 GET; None when nothing answers.
pub fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let (head, body) = resp.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?;
    (status == "200").then(|| body.to_string())
}

/// A tiny HTTP/1.0 GET: (status, body), whatever the status.
pub fn http_get_status(port: u16, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, body.to_string())
}

/// A tiny HTTP/1.0 POST of a JSON body: (status, body).
pub fn http_post(port: u16, path: &str, body: &str) -> (u16, String) {
    http_post_waiting(port, path, body, Duration::from_secs(10))
}

/// [`http_post`] that waits up to `timeout` for each read (a whole
/// generated reply, say).
pub fn http_post_waiting(port: u16, path: &str, body: &str, timeout: Duration) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(timeout)).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.0\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let resp = String::from_utf8_lossy(&raw);
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    (
        head.split_whitespace().nth(1).unwrap().parse().unwrap(),
        body.to_string(),
    )
}

/// Lints a scrape with `promtool check metrics` (Debian's prometheus
/// package): Err with promtool's report when it finds anything, except
/// the camelCase warning on the GPU families: their `modelName` label is
/// dcgm-exporter's, kept on purpose so dashboards can join the two.
pub fn promtool_check(text: &str) -> Result<(), String> {
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) is installed by scripts/setup.sh");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let dcgm_label = |l: &str| {
        l.starts_with("gapscope_gpu_")
            && l.ends_with("label names should be written in 'snake_case' not 'camelCase'")
    };
    let report: Vec<&str> = report
        .lines()
        .filter(|l| !l.trim().is_empty() && !dcgm_label(l))
        .collect();
    let only_dcgm = !out.status.success() && report.is_empty();
    let report = report.join("\n");
    if (out.status.success() || only_dcgm) && report.is_empty() {
        Ok(())
    } else {
        Err(report)
    }
}

/// A scrape, with lookups by metric name and labels.
pub struct Metrics(pub String);

impl Metrics {
    /// The value of the sample `name` whose labels include all of `labels`.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.0.lines().find_map(|line| {
            if line.starts_with('#') {
                return None;
            }
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, label_text) = match series.split_once('{') {
                Some((m, rest)) => (m, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if metric != name {
                return None;
            }
            let all = labels
                .iter()
                .all(|(k, v)| label_text.contains(&format!("{k}=\"{v}\"")));
            all.then(|| value.parse().ok()).flatten()
        })
    }

    pub fn get_or_zero(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }

    /// The sum of every sample of `name` whose labels include all of
    /// `labels` (0 when none).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                let (metric, label_text) = series.split_once('{').unwrap_or((series, ""));
                (metric == name
                    && labels
                        .iter()
                        .all(|(k, v)| label_text.contains(&format!("{k}=\"{v}\""))))
                .then(|| value.parse::<f64>().ok())
                .flatten()
            })
            .fold(0.0, |a, b| a + b)
    }
}

/// A workload process that waits for "go" on stdin.
pub struct Workload {
    pub child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Workload {
    pub fn spawn(program: &std::path::Path, args: &[&str]) -> Workload {
        let mut cmd = Command::new(program);
        cmd.args(args);
        Self::spawn_command(cmd)
    }

    /// Spawns a prepared command (another user, another environment).
    pub fn spawn_command(mut cmd: Command) -> Workload {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut w = Workload {
            child,
            stdin,
            stdout,
        };
        let line = w.read_line();
        assert!(line.starts_with("ready"), "workload said {line:?}");
        w
    }

    /// Starts `gapscope-workload` with whitespace-separated arguments.
    pub fn start(args: &str) -> Workload {
        let args: Vec<&str> = args.split_whitespace().collect();
        Self::spawn(&workload_bin(), &args)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn read_line(&mut self) -> String {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        line.trim().to_string()
    }

    /// Sends "go" and returns every line printed before "done".
    pub fn go(&mut self) -> Vec<String> {
        self.send_go();
        self.wait_output()
    }

    /// Sends "go" without waiting (to start several workloads together).
    pub fn send_go(&mut self) {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "go").unwrap();
        stdin.flush().unwrap();
    }

    /// Every line printed before "done".
    pub fn wait_output(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            let line = self.read_line();
            if line == "done" || line.is_empty() {
                return lines;
            }
            lines.push(line);
        }
    }

    /// Closes stdin and waits for the process to exit.
    pub fn finish(mut self) {
        drop(self.stdin.take());
        let status = self.child.wait().unwrap();
        assert!(status.success(), "workload exited with {status}");
    }
}

pub use skip::{not_checked, skip};
pub mod dashboard_picture;
pub mod fake_cuda;
pub mod fake_nvml;
pub mod objdump;
pub mod prometheus;
pub mod skip;
pub mod stream_server;
pub mod tls;

/// `libgapscope_inject.so` as the workspace build left it beside the
/// running test or benchmark (in its directory or up to two above).
pub fn inject_library() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.ancestors()
        .skip(1)
        .take(3)
        .map(|d| d.join("libgapscope_inject.so"))
        .find(|p| p.is_file())
        .expect("libgapscope_inject.so beside the tests: cargo build --workspace")
}

/// The deep-mode test sender (`src/bin/wire_sender.rs`).
pub fn wire_sender_bin() -> PathBuf {
    built_binary("gapscope-wire-sender")
}

/// The injection library's transport driver (`inject/src/bin/transport_probe.rs`).
pub fn transport_probe_bin() -> PathBuf {
    built_binary("gapscope-inject-transport-probe")
}

/// The load generator binary, built by cargo next to the tests.
pub fn loadgen_bin() -> PathBuf {
    built_binary("gapscope-loadgen")
}
