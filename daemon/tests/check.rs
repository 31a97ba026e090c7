//! `gapscoped check`: OK on a host that can run the core, MISSING with a
//! fix and a non-zero exit where it cannot.

use std::process::Command;

use gapscope_testkit::{gapscoped_as_nobody, gapscoped_bin, serial};

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
    let out = gapscoped_as_nobody()
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

#[test]
fn check_pid_finds_the_interpreter_and_its_gil() {
    let python = std::path::Path::new("/usr/bin/python3.11");
    let mut child = Command::new(python)
        .args(["-c", "import sys; sys.stdin.read()"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Give the interpreter a moment to create its GIL.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let out = Command::new(gapscoped_bin())
        .args(["check", "--pid", &child.id().to_string()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    drop(child.stdin.take());
    child.wait().unwrap();
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("OK       interpreter      CPython 3.11 in /usr/bin/python3.11"),
        "{text}"
    );
    assert!(text.contains("OK       gil              at 0x"), "{text}");
    // Debian strips its interpreter: the codecs cannot be probed, and the
    // check says so.
    assert!(
        text.contains("MISSING  pickle encode    /usr/bin/python3.11: no symbol _pickle_dumps"),
        "{text}"
    );
}

#[test]
fn check_pid_of_a_non_python_process_says_so() {
    let mut child = Command::new("sleep").arg("5").spawn().unwrap();
    let out = Command::new(gapscoped_bin())
        .args(["check", "--pid", &child.id().to_string()])
        .output()
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("MISSING  interpreter      no CPython interpreter is mapped"),
        "{text}"
    );
}

#[test]
fn check_pid_lists_the_cuda_entry_points_a_process_maps() {
    let fake = gapscope_testkit::fake_cuda::FakeCuda::build();
    let w = fake.caller("cuda_caller", &["busy", "1"]);
    let out = Command::new(gapscoped_bin())
        .args(["check", "--pid", &w.pid().to_string()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    drop(w);
    let line = |prefix: &str| {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} line in\n{text}"))
            .to_string()
    };
    let driver = line("OK       cuda driver");
    assert!(
        driver.contains(
            "libcuda.so.1: cuLaunchKernel, cuLaunchKernelEx, cuGraphLaunch, cuStreamSynchronize"
        ),
        "{driver}"
    );
    let runtime = line("OK       cuda runtime");
    assert!(
        runtime.ends_with(
            "cudaLaunchKernel, cudaGraphLaunch, cudaStreamSynchronize, cudaDeviceSynchronize"
        ),
        "{runtime}"
    );
}
