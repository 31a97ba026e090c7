//! A test fixture standing in for the NVIDIA driver's NVML, not NVML:
//! `data/fake_nvml.c` built as `libnvidia-ml.so.1` against the real
//! `nvml.h` (which `scripts/setup.sh` fetches from NVIDIA's
//! nvidia-nvml-dev wheel), answering from a scenario file. Every other
//! function the header declares is exported too and answers
//! `NVML_ERROR_NOT_SUPPORTED`, as a driver does for a feature a GPU lacks
//! (stubs generated from the header). gapscoped loads it through `[nvml]
//! library` and finds the scenario in `$GAPSCOPE_FAKE_NVML_SCENARIO`.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;

use crate::{Daemon, repo_root};

/// The environment variable naming the scenario file.
pub const SCENARIO_ENV: &str = "GAPSCOPE_FAKE_NVML_SCENARIO";

/// Where `scripts/setup.sh` puts NVML's header.
pub fn header_dir() -> PathBuf {
    repo_root().join(".cache/cuda-headers/nvml-12.9/include")
}

pub struct FakeNvml {
    dir: tempfile::TempDir,
}

impl FakeNvml {
    /// Builds the stand-in; Err(why) when NVML's header is missing (the
    /// caller skips, naming the fix).
    pub fn build() -> Result<FakeNvml, String> {
        let include = header_dir();
        if !include.join("nvml.h").is_file() {
            return Err(format!(
                "NVML's header is missing from {} (scripts/setup.sh fetches it)",
                include.display()
            ));
        }
        let dir = tempfile::Builder::new()
            .prefix("gapscope-nvml-fixture")
            .tempdir()
            .unwrap();
        let source = repo_root().join("testkit/data/fake_nvml.c");
        let stubs = dir.path().join("fake_nvml_stubs.c");
        std::fs::write(
            &stubs,
            not_supported_stubs(
                &std::fs::read_to_string(include.join("nvml.h")).unwrap(),
                &std::fs::read_to_string(&source).unwrap(),
            ),
        )
        .unwrap();
        let out = Command::new("cc")
            .args(["-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-pthread"])
            .arg(format!("-I{}", include.display()))
            .arg("-o")
            .arg(dir.path().join("libnvidia-ml.so.1"))
            .arg(&source)
            .arg(&stubs)
            .output()
            .expect("running cc (scripts/setup.sh installs gcc)");
        assert!(
            out.status.success(),
            "cc fake_nvml.c: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(FakeNvml { dir })
    }

    /// Keeps the directory (the caller removes it).
    pub fn keep(self) -> PathBuf {
        self.dir.keep()
    }

    /// The library, for `[nvml] library`.
    pub fn library(&self) -> PathBuf {
        self.dir.path().join("libnvidia-ml.so.1")
    }

    /// Writes `scenario` (see `data/fake_nvml.c` for its fields) to a file
    /// of its own and returns the path.
    pub fn scenario(&self, name: &str, scenario: &Value) -> PathBuf {
        let path = self.dir.path().join(format!("{name}.json"));
        std::fs::write(&path, serde_json::to_vec_pretty(scenario).unwrap()).unwrap();
        path
    }

    /// gapscoped reading its GPUs from the stand-in as `scenario` scripts
    /// them, sampling every `interval_ms`.
    pub fn daemon(&self, services: &str, interval_ms: u64, scenario: &Path) -> Daemon {
        self.daemon_with("", services, interval_ms, scenario)
    }

    /// As `daemon`, with `daemon_keys` in the `[daemon]` table.
    pub fn daemon_with(
        &self,
        daemon_keys: &str,
        services: &str,
        interval_ms: u64,
        scenario: &Path,
    ) -> Daemon {
        let extra = format!(
            "{daemon_keys}\n[nvml]\nlibrary = \"{}\"\ninterval_ms = {interval_ms}\n",
            self.library().display()
        );
        let env = format!("{SCENARIO_ENV}={}", scenario.display());
        Daemon::start_wrapped(services, &extra, &["env".to_string(), env])
    }
}

/// C for every `nvmlReturn_t` function `header` declares that `source`
/// does not define: each returns `NVML_ERROR_NOT_SUPPORTED` (3). Compiled
/// apart from `nvml.h`, so each takes no arguments: on the x86-64 and
/// AArch64 calling conventions a caller passing some is still served.
pub fn not_supported_stubs(header: &str, source: &str) -> String {
    const DECLARED: &str = "nvmlReturn_t DECLDIR ";
    let defined = |name: &str| source.contains(&format!("nvmlReturn_t {name}("));
    let mut names: Vec<&str> = header
        .match_indices(DECLARED)
        .filter_map(|(at, _)| {
            let rest = &header[at + DECLARED.len()..];
            let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))?;
            rest[end..].starts_with('(').then(|| &rest[..end])
        })
        .filter(|name| !defined(name))
        .collect();
    names.sort_unstable();
    names.dedup();
    let mut c =
        String::from("/* Generated from nvml.h: what the NVML stand-in does not implement. */\n");
    for name in names {
        c.push_str(&format!("int {name}(void) {{ return 3; }}\n"));
    }
    c
}
