//! `InitializeInjection` in a host process with no GPU (CI): loaded the
//! way CUDA loads it (dlopen, then the entry point), it must return
//! success to CUDA, say in one line why it stands down, and leave the
//! host running — with no libcupti at all, and with the real libcupti of
//! CUDA 12.9 and 13.5 (from NVIDIA's wheels, fetched by scripts/setup.sh),
//! which load but find no driver.

use std::{path::PathBuf, process::Command};

/// Runs a host (Python, through ctypes) that loads the library, calls
/// `InitializeInjection` and goes on: (its stdout, its stderr).
fn host(cupti: Option<PathBuf>) -> (String, String) {
    let mut cmd = Command::new("python3");
    cmd.args([
        "-c",
        "import ctypes, sys; l = ctypes.CDLL(sys.argv[1]); print('returned', l.InitializeInjection()); print('host still running')",
    ])
    .arg(gapscope_testkit::inject_library())
    .env("GAPSCOPE_SOCKET", "/nonexistent/gapscope.sock");
    match cupti {
        Some(p) => cmd.env("GAPSCOPE_CUPTI_PATH", p),
        None => cmd.env_remove("GAPSCOPE_CUPTI_PATH"),
    };
    let out = cmd.output().expect("running python3");
    assert!(out.status.success(), "{out:?}");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn cupti(release: &str, file: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../.cache/cuda-headers")
        .join(release)
        .join("lib")
        .join(file);
    assert!(p.is_file(), "{} missing: run scripts/setup.sh", p.display());
    p
}

#[test]
fn no_libcupti_means_standing_down_with_the_fix() {
    if std::path::Path::new("/dev/nvidiactl").exists() {
        gapscope_testkit::skip(
            "an NVIDIA driver is present: this host is checked by scripts/device-check instead",
        );
        return;
    }
    let (out, err) = host(None);
    assert_eq!(out, "returned 1\nhost still running\n");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].starts_with("gapscope-inject: standing down: no libcupti found")
            && lines[0].contains("GAPSCOPE_CUPTI_PATH"),
        "{err}"
    );
}

#[test]
fn a_real_libcupti_without_a_driver_stands_down_cleanly() {
    if std::path::Path::new("/dev/nvidiactl").exists() {
        gapscope_testkit::skip(
            "an NVIDIA driver is present: this host is checked by scripts/device-check instead",
        );
        return;
    }
    for (release, file) in [
        ("cupti-12.9", "libcupti.so.12"),
        ("cupti-13.5", "libcupti.so.13"),
    ] {
        let (out, err) = host(Some(cupti(release, file)));
        assert_eq!(out, "returned 1\nhost still running\n", "{release}");
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 1, "{release}: {err}");
        assert!(
            lines[0].starts_with("gapscope-inject: standing down: cupti"),
            "{release}: CUPTI's own refusal, named: {err}"
        );
    }
}
