//! The unit under a real systemd: `scripts/systemd-check` boots a Debian
//! tree as PID 1 of a systemd-nspawn container, installs the package built
//! from this build in it and checks readiness, the sandbox, journald's
//! fields, the watchdog, Restart=on-failure, detaching on stop and the
//! purge. A host that cannot boot the container skips, saying why.

use std::process::Command;

use gapscope_testkit::{gapscoped_bin, repo_root, serial, skip};
use serde_json::Value;

#[test]
fn the_unit_runs_under_a_real_systemd() {
    let _g = serial();
    let out = tempfile::tempdir().unwrap();
    let result = out.path().join("systemd-check.json");
    let run = Command::new(repo_root().join("scripts/systemd-check"))
        .arg("--out")
        .arg(&result)
        .env("GAPSCOPE_BIN_DIR", gapscoped_bin().parent().unwrap())
        .output()
        .expect("running scripts/systemd-check");
    let stdout = String::from_utf8_lossy(&run.stdout);
    if run.status.code() == Some(77) {
        let why = stdout
            .lines()
            .find_map(|l| l.strip_prefix("SKIP: "))
            .unwrap_or("scripts/systemd-check cannot run here");
        skip(why);
        return;
    }
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&result).unwrap_or_else(|e| {
        panic!(
            "no result ({e}):\n{stdout}\n{}",
            String::from_utf8_lossy(&run.stderr)
        )
    }))
    .unwrap();
    println!("{stdout}");
    assert!(run.status.success() && doc["pass"] == true, "{stdout}");
    let names: Vec<&str> = doc["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "install",
            "enabled_not_started",
            "start_ready_after_attach",
            "sandbox_capabilities",
            "finds_another_users_process",
            "journal_fields",
            "watchdog_restarts_a_hung_daemon",
            "restarts_after_sigkill",
            "reload_applies_the_config",
            "bad_reload_keeps_the_config",
            "stop_detaches",
            "purge_leaves_nothing",
        ]
    );
}
