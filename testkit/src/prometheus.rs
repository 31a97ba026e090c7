//! A real Prometheus server (Debian's `prometheus` package) on loopback,
//! for tests that must prove something works with the real scraper.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{free_port, http_get};

pub struct Prometheus {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus with `scrape_configs` (YAML, the list's items
    /// indented by two spaces) and the given rule files, scraping and
    /// evaluating every `interval`, and waits until it answers queries.
    pub fn start(scrape_configs: &str, rule_files: &[PathBuf], interval: &str) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let rules: String = rule_files
            .iter()
            .map(|p| format!("  - {}\n", p.display()))
            .collect();
        let config = format!(
            "global:\n  scrape_interval: {interval}\n  evaluation_interval: {interval}\n\
             rule_files:\n{rules}scrape_configs:\n{scrape_configs}"
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, &config).unwrap();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus (Debian package prometheus) is installed by scripts/setup.sh");
        let mut p = Prometheus { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        while http_get(port, "/-/ready").is_none() {
            if let Ok(Some(status)) = p.child.try_wait() {
                panic!("prometheus exited ({status}):\n{config}\n{}", p.log_text());
            }
            assert!(Instant::now() < deadline, "prometheus never became ready");
            std::thread::sleep(Duration::from_millis(100));
        }
        p
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// An instant query; the whole API response (status, data or error).
    pub fn query(&self, expr: &str) -> Value {
        self.get_json(&format!("/api/v1/query?query={}", url_encode(expr)))
    }

    /// An instant query evaluated at `unix_seconds`.
    pub fn query_at(&self, expr: &str, unix_seconds: f64) -> Value {
        self.get_json(&format!(
            "/api/v1/query?query={}&time={unix_seconds:.3}",
            url_encode(expr)
        ))
    }

    /// A range query: the API response (a matrix on success).
    pub fn query_range(&self, expr: &str, start: f64, end: f64, step: f64) -> Value {
        self.get_json(&format!(
            "/api/v1/query_range?query={}&start={start:.3}&end={end:.3}&step={step}",
            url_encode(expr)
        ))
    }

    /// Any API path's JSON, whatever the HTTP status.
    pub fn get_json(&self, path: &str) -> Value {
        let body = get_any_status(self.port, path);
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
    }

    /// The active targets' health and last scrape error, by job.
    pub fn targets(&self) -> Vec<(String, String, String)> {
        let body = http_get(self.port, "/api/v1/targets?state=active").expect("prometheus answers");
        let v: Value = serde_json::from_str(&body).unwrap();
        v["data"]["activeTargets"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| {
                (
                    t["labels"]["job"].as_str().unwrap_or("").to_string(),
                    t["health"].as_str().unwrap_or("").to_string(),
                    t["lastError"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }

    /// Waits until every target of `job` has been scraped with `health`
    /// ("up" or "down"), and returns the last error.
    pub fn wait_target(&self, job: &str, health: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ts: Vec<_> = self.targets().into_iter().filter(|t| t.0 == job).collect();
            if !ts.is_empty() && ts.iter().all(|t| t.1 == health) {
                return ts[0].2.clone();
            }
            assert!(
                Instant::now() < deadline,
                "job {job} never became {health}: {ts:?}\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Percent-encoding for a query-string value.
pub fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The body of a GET whatever its status (a bad query is a 400 with a JSON
/// error in it).
fn get_any_status(port: u16, path: &str) -> String {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("prometheus answers");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    resp.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}
