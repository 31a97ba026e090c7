//! A test fixture standing in for CUDA, not CUDA: `data/fake_cuda.c`
//! built as `libcuda.so.1` and `libcudart.so.12` (the entry points
//! gapscoped probes, with known behaviour), and `data/cuda_caller.c`,
//! which loads them lazily and calls them a known number of times. Built
//! with the system's `cc` into a temporary directory whose name the
//! tests' services match.

use std::{path::PathBuf, process::Command};

use crate::{Workload, repo_root};

/// The part of the fixture directory's name a service can match.
pub const DIR_TAG: &str = "gapscope-cuda-fixture";

pub struct FakeCuda {
    dir: tempfile::TempDir,
}

impl FakeCuda {
    /// Builds the libraries and two copies of the caller: `cuda_caller`
    /// (what tests trace) and `other_caller` (what they do not).
    pub fn build() -> FakeCuda {
        Self::build_in(DIR_TAG)
    }

    /// As [`FakeCuda::build`], in a directory named `prefix…` (the device
    /// check's own, which no test's service matches).
    pub fn build_in(prefix: &str) -> FakeCuda {
        let dir = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
        let data = repo_root().join("testkit/data");
        let cc = |args: &[&str]| {
            let out = Command::new("cc")
                .args(args)
                .output()
                .expect("running cc (scripts/setup.sh installs gcc)");
            assert!(
                out.status.success(),
                "cc {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let lib = data.join("fake_cuda.c");
        let caller = data.join("cuda_caller.c");
        let out = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
        let include = format!("-I{}", data.display());
        // The simulated device, one copy per process, which the CUDA
        // libraries and the CUPTI stand-in share.
        cc(&[
            "-shared",
            "-fPIC",
            "-O2",
            "-pthread",
            "-o",
            &out("libfakegpu.so"),
            data.join("fake_gpu.c").to_str().unwrap(),
        ]);
        for (define, name) in [
            ("-DFAKE_DRIVER", "libcuda.so.1"),
            ("-DFAKE_RUNTIME", "libcudart.so.12"),
        ] {
            // -O0: no two functions folded into one address. On x86-64,
            // built as Ubuntu builds its libraries, with `-fcf-protection`:
            // every function starts with `endbr64`, then `push %rbp`, and
            // the probes go on the push (`bpf/uprobes.rs`, `probe_site`).
            // Other architectures' compilers refuse the flag.
            let (output, library, search) = (
                out(name),
                lib.to_str().unwrap().to_string(),
                format!("-L{}", dir.path().display()),
            );
            let mut args = vec![
                "-shared",
                "-fPIC",
                "-O0",
                "-pthread",
                define,
                &include,
                "-o",
                &output,
                &library,
                &search,
                "-lfakegpu",
                "-ldl",
                "-Wl,-rpath,$ORIGIN",
            ];
            if cfg!(target_arch = "x86_64") {
                args.push("-fcf-protection=full");
            }
            cc(&args);
        }
        for name in ["cuda_caller", "other_caller"] {
            cc(&["-O2", "-o", &out(name), caller.to_str().unwrap(), "-ldl"]);
        }
        FakeCuda { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Keeps the fixture's directory after `self` is gone (the demo
    /// removes it itself); its path.
    pub fn keep(self) -> PathBuf {
        self.dir.keep()
    }

    /// Builds the CUPTI stand-in (`data/fake_cupti.c`) against the real
    /// headers of a CUPTI release (`cupti-12.0`, `cupti-12.9`,
    /// `cupti-13.5`, fetched by scripts/setup.sh into .cache/cuda-headers)
    /// as `libfakecupti-<version>.so` beside the simulated device: what
    /// `GAPSCOPE_CUPTI_PATH` names. Err: why it cannot be built here.
    pub fn cupti(&self, release: &str) -> Result<PathBuf, String> {
        let flags = cupti_flags(release)?;
        let data = repo_root().join("testkit/data");
        let out = self.path(&format!(
            "libfakecupti-{}.so",
            release.trim_start_matches("cupti-")
        ));
        let status = Command::new("cc")
            .args(["-shared", "-fPIC", "-O2", "-pthread"])
            .args(&flags)
            .arg(format!("-I{}", data.display()))
            .arg("-o")
            .arg(&out)
            .arg(data.join("fake_cupti.c"))
            .arg(format!("-L{}", self.dir.path().display()))
            .args(["-lfakegpu", "-Wl,-rpath,$ORIGIN"])
            .output()
            .map_err(|e| format!("running cc: {e}"))?;
        if !status.status.success() {
            return Err(format!(
                "cc fake_cupti.c for {release}: {}",
                String::from_utf8_lossy(&status.stderr)
            ));
        }
        Ok(out)
    }

    /// Starts a caller and has it load the libraries.
    pub fn caller(&self, program: &str, args: &[&str]) -> Workload {
        let dir = self.dir.path().to_str().unwrap();
        let mut all = vec![dir];
        all.extend_from_slice(args);
        let mut w = Workload::spawn(&self.path(program), &all);
        assert_eq!(w.go(), vec!["loaded"]);
        w
    }
}

impl FakeCuda {
    /// Starts a caller as another user, with the fixture directory (mode
    /// 0700) handed to that user: what a serving process in someone's
    /// private virtualenv looks like to gapscoped.
    pub fn caller_as(&self, uid: u32, program: &str, args: &[&str]) -> Workload {
        let dir = self.dir.path();
        let chown = |p: &std::path::Path| {
            let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
            // SAFETY: a valid C string; plain chown(2).
            assert_eq!(
                unsafe { libc::chown(c.as_ptr(), uid, uid) },
                0,
                "chown {}",
                p.display()
            );
        };
        chown(dir);
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        for entry in std::fs::read_dir(dir).unwrap() {
            chown(&entry.unwrap().path());
        }
        let mut cmd = Command::new("setpriv");
        cmd.arg(format!("--reuid={uid}"))
            .arg(format!("--regid={uid}"))
            .arg("--clear-groups")
            .arg(self.path(program))
            .arg(dir)
            .args(args);
        let mut w = Workload::spawn_command(cmd);
        assert_eq!(w.go(), vec!["loaded"]);
        w
    }
}

/// The number after `key` in a caller's output lines.
pub fn value(lines: &[String], key: &str) -> f64 {
    lines
        .iter()
        .find_map(|l| l.strip_prefix(key)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {lines:?}"))
}

/// The compiler flags that build CUPTI code for `release`: its headers and
/// the names of its newest kernel, memcpy and synchronization records (the
/// ones `gapscope-cupti-sys` decodes), as `KERNEL`, `MEMCPY`, `SYNC`.
pub fn cupti_flags(release: &str) -> Result<Vec<String>, String> {
    let (kernel, memcpy, sync) = match release {
        "cupti-12.0" => (
            "CUpti_ActivityKernel9",
            "CUpti_ActivityMemcpy5",
            "CUpti_ActivitySynchronization",
        ),
        "cupti-12.9" => (
            "CUpti_ActivityKernel9",
            "CUpti_ActivityMemcpy6",
            "CUpti_ActivitySynchronization2",
        ),
        "cupti-13.5" => (
            "CUpti_ActivityKernel13",
            "CUpti_ActivityMemcpy7",
            "CUpti_ActivitySynchronization2",
        ),
        _ => return Err(format!("no CUPTI release {release} known to the stand-in")),
    };
    let headers = repo_root()
        .join(".cache/cuda-headers")
        .join(release)
        .join("include");
    if !headers.join("cupti_activity.h").is_file() {
        return Err(format!(
            "{} has no CUPTI headers: run scripts/setup.sh (it fetches NVIDIA's wheels)",
            headers.display()
        ));
    }
    Ok(vec![
        format!("-DKERNEL={kernel}"),
        format!("-DMEMCPY={memcpy}"),
        format!("-DSYNC={sync}"),
        format!("-I{}", headers.display()),
    ])
}
