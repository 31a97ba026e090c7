//! `gapscoped check`: OK on a host that can run the core, MISSING with a
//! fix and a non-zero exit where it cannot.

use std::process::Command;

use gapscope_testkit::{gapscoped_bin, serial};

#[test]
fn check_passes_as_root_and_loads_the_programs() {
    let _g = serial();
    let out = Command::new(gapscoped_bin()).arg("check").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for item in [
        "kernel",
        "btf",
        "tracefs",
        "capabilities",
        "bpf()",
        "ring buffer",
        "perf_event_open",
        "uprobes",
        "programs",
    ] {
        assert!(
            text.lines()
                .any(|l| l.starts_with("OK") && l.contains(item)),
            "{item} not OK:\n{text}"
        );
    }
    assert!(text.contains("all 8 programs load and attach"), "{text}");
}

#[test]
fn check_without_privileges_says_what_is_missing_and_fails() {
    let _g = serial();
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ])
        .arg(gapscoped_bin())
        .arg("check")
        .output()
        .expect("setpriv (util-linux) runs the check as nobody");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("MISSING") && l.contains("capabilities")),
        "{text}"
    );
    assert!(text.contains("(required) fix: run as root"), "{text}");
    assert!(text.contains("cannot run on this host"), "{text}");
}
