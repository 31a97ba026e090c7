//! deploy/gapscoped.service against systemd's own tools, and its
//! capability set against the real daemon: started the way the unit starts
//! it (root, that bounding and ambient set, no_new_privs, noroot
//! securebits), gapscoped must still trace processes that start later,
//! through tracepoints and uprobes, and keep nothing more than it says.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use gapscope_testkit::{Daemon, fake_cuda::FakeCuda, gapscoped_bin, repo_root, serial};

fn unit_path() -> PathBuf {
    repo_root().join("deploy/gapscoped.service")
}

/// The values of `key=` lines in the unit.
fn unit_values(key: &str) -> Vec<String> {
    std::fs::read_to_string(unit_path())
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("{key}=")))
        .map(str::to_string)
        .collect()
}

/// The unit with ExecStart pointing at the binary cargo built, in `dir`
/// (systemd-analyze checks that the executable exists).
fn unit_for_this_build(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(unit_path())
        .unwrap()
        .replace("/usr/bin/gapscoped", &gapscoped_bin().display().to_string());
    let path = dir.join("gapscoped.service");
    std::fs::write(&path, text).unwrap();
    path
}

fn systemd_analyze(args: &[&str], unit: &Path) -> Option<(bool, String)> {
    let out = match Command::new("systemd-analyze")
        .args(args)
        .arg(unit)
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            gapscope_testkit::skip(&format!(
                "systemd-analyze cannot run ({e}): apt-get install systemd"
            ));
            return None;
        }
    };
    Some((out.status.success(), gapscope_testkit::output_text(&out)))
}

#[test]
fn the_unit_verifies_without_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_for_this_build(dir.path());
    let Some((ok, out)) = systemd_analyze(&["verify"], &unit) else {
        return;
    };
    assert!(
        ok && out.trim().is_empty(),
        "systemd-analyze verify:\n{out}"
    );
}

#[test]
fn the_unit_is_sandboxed_to_an_exposure_of_at_most_3_5() {
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_for_this_build(dir.path());
    let Some((_, out)) = systemd_analyze(&["security", "--offline=yes"], &unit) else {
        return;
    };
    let exposure: f64 = out
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for gapscoped.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no overall exposure in:\n{out}"));
    println!("systemd-analyze security: exposure {exposure}");
    assert!(exposure <= 3.5, "exposure {exposure} > 3.5:\n{out}");
}

/// `CAP_BPF CAP_SYS_ADMIN` → `+bpf,+sys_admin`, for setpriv.
fn setpriv_caps(list: &str) -> String {
    let caps: Vec<String> = list
        .split_whitespace()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_ascii_lowercase()))
        .collect();
    format!("-all,{}", caps.join(","))
}

/// setpriv arguments that start a program the way the unit does: `caps`
/// as the bounding, inheritable and ambient sets, root without root's
/// privileges (noroot securebits), no_new_privs.
fn started_like_the_unit(caps: &str) -> Vec<String> {
    let caps = setpriv_caps(caps);
    [
        "setpriv",
        "--bounding-set",
        &caps,
        "--inh-caps",
        &caps,
        "--ambient-caps",
        &caps,
        "--securebits",
        "+noroot,+noroot_locked",
        "--no-new-privs",
        "--",
    ]
    .map(str::to_string)
    .to_vec()
}

fn cap_mask(list: &str) -> u64 {
    let number = |name: &str| match name {
        "CAP_CHOWN" => 0,
        "CAP_DAC_READ_SEARCH" => 2,
        "CAP_SYS_PTRACE" => 19,
        "CAP_SYS_ADMIN" => 21,
        "CAP_PERFMON" => 38,
        "CAP_BPF" => 39,
        other => panic!("the test does not know {other}; add its number"),
    };
    list.split_whitespace().map(|c| 1u64 << number(c)).sum()
}

/// Every thread's (CapEff, CapPrm, CapBnd, CapAmb, NoNewPrivs).
fn thread_caps(pid: u32) -> Vec<(u64, u64, u64, u64, bool)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let status = std::fs::read_to_string(task.unwrap().path().join("status")).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(str::trim)
                .unwrap_or_default()
                .to_string()
        };
        let hex = |name: &str| u64::from_str_radix(&field(name), 16).unwrap();
        out.push((
            hex("CapEff:"),
            hex("CapPrm:"),
            hex("CapBnd:"),
            hex("CapAmb:"),
            field("NoNewPrivs:") == "1",
        ));
    }
    out
}

#[test]
fn the_units_capabilities_are_enough_and_the_daemon_keeps_no_more() {
    let _g = serial();
    let bounding = unit_values("CapabilityBoundingSet").join(" ");
    let ambient = unit_values("AmbientCapabilities").join(" ");
    assert_eq!(bounding, ambient, "the unit grants what it bounds");
    assert_eq!(unit_values("SecureBits"), ["noroot-locked"]);
    assert_eq!(unit_values("NoNewPrivileges"), ["yes"]);
    let wrapper = started_like_the_unit(&bounding);
    let fixture = FakeCuda::build();
    let daemon = Daemon::start_wrapped(
        "[[service]]\nname = \"cuda\"\ncmdline = 'cuda_caller \\S*gapscope-cuda-fixture'\n",
        "[cuda]\nlaunch_budget = 1.0\n",
        &wrapper,
    );
    // CAP_CHOWN gives the deep-mode socket its group at start only: gone
    // from the effective and permitted sets, and with no_new_privs never
    // to come back (the bounding set keeps it: dropping from it takes
    // CAP_SETPCAP, which the unit does not give).
    assert!(bounding.contains("CAP_CHOWN"), "{bounding}");
    let expected = cap_mask(&bounding) & !cap_mask("CAP_CHOWN");
    for (eff, prm, bnd, amb, nnp) in thread_caps(daemon.child.id()) {
        assert_eq!(eff, expected, "effective {eff:#x}:\n{}", daemon.log_text());
        assert_eq!(prm, expected, "permitted {prm:#x}");
        assert_eq!(bnd, cap_mask(&bounding), "bounding {bnd:#x}");
        assert_eq!(amb, 0, "ambient {amb:#x}: nothing passed on");
        assert!(nnp, "no_new_privs");
    }

    // A process that starts after the daemon: its syscalls (tracepoints)
    // and its launches (uprobes attached now, with only these
    // capabilities) are counted exactly.
    const LAUNCHES: u64 = 300;
    let mut traced = fixture.caller("cuda_caller", &["exact", &LAUNCHES.to_string(), "5", "100"]);
    daemon.wait_processes("cuda", 1.0);
    let deadline = Instant::now() + Duration::from_secs(5);
    while daemon
        .scrape()
        .get_or_zero("gapscope_cuda_probed_files", &[])
        != 2.0
    {
        assert!(
            Instant::now() < deadline,
            "uprobes never attached:\n{}",
            daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    traced.go();
    let m = daemon.scrape();
    let launches = m.get_or_zero(
        "gapscope_cuda_launches_total",
        &[
            ("service", "cuda"),
            ("api", "runtime"),
            ("entry", "cudaLaunchKernel"),
        ],
    );
    assert_eq!(launches, LAUNCHES as f64, "{}", daemon.log_text());
    let syscalls: f64 =
        m.0.lines()
            .filter(|l| {
                l.starts_with("gapscope_syscall_duration_seconds_count{")
                    && l.contains("service=\"cuda\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
    assert!(syscalls > 0.0, "no syscalls counted for the traced process");
    traced.finish();
    assert!(
        !daemon.log_text().contains("could not drop capabilities"),
        "{}",
        daemon.log_text()
    );
}

/// Each capability the unit keeps beyond CAP_BPF and CAP_PERFMON is there
/// because tracing fails without it: a process of another user, calling
/// CUDA libraries from its own 0700 directory, is traced exactly with the
/// unit's set and not at all with any one of these taken away.
#[test]
fn each_capability_the_unit_adds_is_needed() {
    let _g = serial();
    let bounding = unit_values("CapabilityBoundingSet").join(" ");
    const NOBODY: u32 = 65534;
    const LAUNCHES: u64 = 200;
    for removed in [
        None,
        Some("CAP_SYS_ADMIN"),
        Some("CAP_SYS_PTRACE"),
        Some("CAP_DAC_READ_SEARCH"),
    ] {
        let caps: String = bounding
            .split_whitespace()
            .filter(|c| Some(*c) != removed)
            .collect::<Vec<_>>()
            .join(" ");
        let wrapper = started_like_the_unit(&caps);
        let fixture = FakeCuda::build();
        let daemon = Daemon::start_wrapped(
            "[[service]]\nname = \"cuda\"\ncmdline = 'cuda_caller \\S*gapscope-cuda-fixture'\n",
            "[cuda]\nlaunch_budget = 1.0\n",
            &wrapper,
        );
        let mut traced = fixture.caller_as(
            NOBODY,
            "cuda_caller",
            &["exact", &LAUNCHES.to_string(), "1", "100"],
        );
        daemon.wait_processes("cuda", 1.0);
        let deadline = Instant::now() + Duration::from_secs(4);
        let probed = loop {
            let n = daemon
                .scrape()
                .get_or_zero("gapscope_cuda_probed_files", &[]);
            if n == 2.0 || Instant::now() > deadline {
                break n;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        traced.go();
        let launches = daemon.scrape().get_or_zero(
            "gapscope_cuda_launches_total",
            &[
                ("service", "cuda"),
                ("api", "runtime"),
                ("entry", "cudaLaunchKernel"),
            ],
        );
        traced.finish();
        println!("without {removed:?}: {probed} files probed, {launches} launches counted");
        match removed {
            None => {
                assert_eq!(probed, 2.0, "{}", daemon.log_text());
                assert_eq!(launches, LAUNCHES as f64, "{}", daemon.log_text());
            }
            Some(cap) => {
                assert_eq!(probed, 0.0, "probed without {cap}:\n{}", daemon.log_text());
                assert_eq!(launches, 0.0, "counted without {cap}");
            }
        }
    }
}
