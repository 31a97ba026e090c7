//! Running the real gapscope-loadgen binary and reading what it wrote.

#![allow(dead_code, unused_imports)]

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use serde_json::Value;

pub(crate) use gapscope_testkit::stream_server::{Seen, ServerConfig, ServerLog, StreamServer};

/// What the server saw of the request with this `x-request-id`.
pub(crate) fn seen<'a>(log: &'a ServerLog, id: &str) -> &'a Seen {
    log.requests
        .iter()
        .find(|s| s.request_id.as_deref() == Some(id))
        .unwrap_or_else(|| panic!("the server never saw {id}"))
}

pub(crate) struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub dir: tempfile::TempDir,
}

impl Run {
    pub(crate) fn results(&self) -> Value {
        let text =
            std::fs::read_to_string(self.dir.path().join("results.json")).unwrap_or_else(|e| {
                panic!(
                    "results.json missing ({e}):\n{}\n{}",
                    self.stdout, self.stderr
                )
            });
        serde_json::from_str(&text).unwrap()
    }

    pub(crate) fn requests(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.path().join("requests.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The run clock's origin on CLOCK_MONOTONIC.
    pub(crate) fn origin(&self) -> u64 {
        self.results()["run"]["clock_origin_monotonic_ns"]
            .as_u64()
            .unwrap()
    }

    /// A phase's window on CLOCK_MONOTONIC.
    pub(crate) fn window(&self, phase: &str) -> (u64, u64) {
        let r = self.results();
        let p = r["phases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == phase)
            .unwrap()
            .clone();
        let o = self.origin();
        let at = |k: &str| o + (p[k].as_f64().unwrap() * 1e9).round() as u64;
        (at("start_s"), at("end_s"))
    }

    pub(crate) fn phase(&self, name: &str) -> Value {
        let r = self.results();
        r["phases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap()
            .clone()
    }
}

/// Runs gapscope-loadgen with `args` (plus --out and --quiet).
pub(crate) fn loadgen(args: &[&str]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let out: Output = Command::new(gapscope_testkit::loadgen_bin())
        .args(args)
        .args(["--quiet", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        dir,
    }
}

pub(crate) fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

/// One load generator run at a time: they measure timing on a small VM.
pub(crate) fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
