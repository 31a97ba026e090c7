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
        let dir = tempfile::Builder::new().prefix(DIR_TAG).tempdir().unwrap();
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
        for (define, name) in [
            ("-DFAKE_DRIVER", "libcuda.so.1"),
            ("-DFAKE_RUNTIME", "libcudart.so.12"),
        ] {
            // -O0: no two functions folded into one address.
            cc(&[
                "-shared",
                "-fPIC",
                "-O0",
                define,
                "-o",
                &out(name),
                lib.to_str().unwrap(),
            ]);
        }
        for name in ["cuda_caller", "other_caller"] {
            cc(&["-O2", "-o", &out(name), caller.to_str().unwrap(), "-ldl"]);
        }
        FakeCuda { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
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
