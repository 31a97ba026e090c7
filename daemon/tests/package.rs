//! The Debian package, for real: built with cargo-deb from this build,
//! installed with dpkg, enabled but not started, and purged without a
//! trace. It changes the host (as root in CI, that is the point), so it
//! stands aside when another gapscope package is installed here.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use gapscope_testkit::{repo_root, serial};

fn run(program: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    (out.status.success(), gapscope_testkit::output_text(&out))
}

fn installed() -> bool {
    run("dpkg-query", &["-W", "-f=${Status}", "gapscope"])
        .1
        .contains("install ok installed")
}

/// What the package puts on the system.
const FILES: [&str; 8] = [
    "/usr/bin/gapscoped",
    "/usr/bin/gapscope-loadgen",
    "/usr/lib/gapscope/libgapscope_inject.so",
    "/usr/lib/systemd/system/gapscoped.service",
    "/etc/gapscope/gapscoped.toml",
    "/usr/share/gapscope/grafana/dashboards/gapscope-gpu-idle.json",
    "/usr/share/gapscope/prometheus/gapscope-alerts.yml",
    "/usr/share/doc/gapscope/README.md",
];
const ENABLED: &str = "/etc/systemd/system/multi-user.target.wants/gapscoped.service";

fn build_package(dir: &Path) -> Option<PathBuf> {
    let (ok, version) = run("cargo", &["deb", "--version"]);
    if !ok {
        gapscope_testkit::skip("cargo-deb is missing: run scripts/setup.sh");
        return None;
    }
    println!("{}", version.trim());
    let deb = dir.join("gapscope.deb");
    // From the debug build the tests already made: the same files as a
    // release, built in seconds.
    let out = Command::new("cargo")
        .current_dir(repo_root())
        .args([
            "deb",
            "-p",
            "gapscoped",
            "--no-build",
            "--profile",
            "dev",
            "--fast",
            "-o",
        ])
        .arg(&deb)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cargo deb: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(deb)
}

#[test]
fn the_package_installs_enables_without_starting_and_purges_cleanly() {
    let _g = serial();
    if installed() {
        gapscope_testkit::skip(
            "a gapscope package is installed on this host; this test installs and purges its own and leaves that one alone: dpkg --purge gapscope to run it",
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some(deb) = build_package(dir.path()) else {
        return;
    };
    let (ok, info) = run("dpkg-deb", &["-I", deb.to_str().unwrap()]);
    assert!(ok && info.contains("Package: gapscope"), "{info}");
    assert!(info.contains("conffiles"), "{info}");

    let (ok, out) = run("dpkg", &["-i", deb.to_str().unwrap()]);
    let purge = scopeguard(|| {
        let _ = run("dpkg", &["--purge", "gapscope"]);
    });
    assert!(ok, "dpkg -i:\n{out}");
    assert!(installed());
    for f in FILES {
        assert!(Path::new(f).exists(), "{f} not installed");
    }
    // Enabled (the wants link), not started.
    // (deb-systemd-helper writes /lib/...; on merged /usr that is /usr/lib.)
    let link = std::fs::canonicalize(ENABLED).unwrap_or_else(|e| panic!("{ENABLED}: {e}"));
    assert_eq!(
        link,
        std::fs::canonicalize("/usr/lib/systemd/system/gapscoped.service").unwrap()
    );
    let running = run("pgrep", &["-f", "^/usr/bin/gapscoped"]);
    assert!(!running.0, "the package started gapscoped: {}", running.1);
    // What it installed works together.
    let (ok, out) = run("/usr/bin/gapscoped", &["--version"]);
    assert!(ok && out.contains(env!("CARGO_PKG_VERSION")), "{out}");
    let (ok, out) = run(
        "/usr/bin/gapscoped",
        &["--config", "/etc/gapscope/gapscoped.toml", "check-config"],
    );
    assert!(ok, "the packaged configuration: {out}");
    let (ok, out) = run(
        "systemd-analyze",
        &["verify", "/usr/lib/systemd/system/gapscoped.service"],
    );
    assert!(ok && out.trim().is_empty(), "installed unit: {out}");

    // A changed configuration survives removal, and goes with purge.
    std::fs::write(
        "/etc/gapscope/gapscoped.toml",
        std::fs::read_to_string("/etc/gapscope/gapscoped.toml").unwrap() + "\n# edited\n",
    )
    .unwrap();
    let (ok, out) = run("dpkg", &["--remove", "gapscope"]);
    assert!(ok, "dpkg --remove:\n{out}");
    assert!(!Path::new("/usr/bin/gapscoped").exists());
    assert!(
        Path::new("/etc/gapscope/gapscoped.toml").exists(),
        "conffile kept on remove"
    );
    drop(purge);
    assert!(!installed());
    for f in FILES {
        assert!(!Path::new(f).exists(), "{f} left after purge");
    }
    assert!(
        !Path::new("/etc/gapscope").exists(),
        "/etc/gapscope left after purge"
    );
    assert!(
        std::fs::symlink_metadata(ENABLED).is_err(),
        "{ENABLED} left after purge"
    );
}

/// Runs `f` when dropped: the package is purged even when an assertion fails.
fn scopeguard(f: impl FnOnce()) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}
