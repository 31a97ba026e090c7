//! The device check's stand-in mode, end to end: `scripts/device_check.py
//! --stand-in` (what `scripts/device-check --stand-in` runs, here on the
//! workspace's own build) runs gapscoped on the NVML stand-in and the
//! simulated device, and must pass every check and write a result that
//! validates against `scripts/device-check.schema.json`.

use std::process::Command;

use gapscope_testkit::{fake_nvml, gapscoped_bin, repo_root, serial, skip, target_python};
use serde_json::Value;

#[test]
fn the_stand_in_device_check_passes_every_check_and_writes_its_schema() {
    let _g = serial();
    if !fake_nvml::header_dir().join("nvml.h").is_file() {
        skip("NVML's header is missing (scripts/setup.sh fetches it)");
        return;
    }
    let bin_dir = gapscoped_bin().parent().unwrap().to_path_buf();
    let out = tempfile::tempdir().unwrap();
    let result = out.path().join("device-check.json");
    let python = target_python();
    let run = Command::new(&python)
        .arg(repo_root().join("scripts/device_check.py"))
        .arg("--stand-in")
        .arg("--bin-dir")
        .arg(&bin_dir)
        .arg("--python")
        .arg(&python)
        .arg("--out")
        .arg(&result)
        .output()
        .expect("running scripts/device_check.py");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let doc: Value = serde_json::from_str(
        &std::fs::read_to_string(&result).unwrap_or_else(|e| panic!("no result ({e}):\n{stdout}")),
    )
    .unwrap();
    let failed: Vec<&Value> = doc["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["pass"] != true)
        .collect();
    assert!(
        run.status.success() && failed.is_empty(),
        "exit {}; failed checks: {failed:#?}\n{stdout}",
        run.status
    );
    assert_eq!(doc["pass"], true);
    assert_eq!(doc["mode"], "stand-in");
    let names: Vec<&str> = doc["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    for expected in [
        "nvml_power",
        "nvml_energy",
        "idle_check",
        "launches_cudaLaunchKernel",
        "deep_kernels",
        "deep_busy",
        "explain_sleep",
        "explain_json",
        "explain_gil",
        "decode_overhead",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }
    // Five runs each way, alternating, summarised by their median.
    assert_eq!(
        doc["overhead"]["paired_losses"].as_array().unwrap().len(),
        5
    );
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("scripts/device-check.schema.json")).unwrap(),
    )
    .unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let problems: Vec<String> = validator
        .iter_errors(&doc)
        .map(|e| format!("{e} at {}", e.instance_path))
        .collect();
    assert!(problems.is_empty(), "{problems:#?}");
    // And the schema can fail: a check without its truth does not pass.
    let mut broken = doc.clone();
    broken["checks"][0].as_object_mut().unwrap().remove("truth");
    assert!(!validator.is_valid(&broken));
}

/// A result is written even when nothing can run: the binaries missing.
#[test]
fn a_device_check_that_cannot_run_says_why_in_its_result() {
    let out = tempfile::tempdir().unwrap();
    let result = out.path().join("device-check.json");
    let run = Command::new(target_python())
        .arg(repo_root().join("scripts/device_check.py"))
        .args(["--bin-dir", "/nonexistent"])
        .arg("--out")
        .arg(&result)
        .output()
        .expect("running scripts/device_check.py");
    assert_eq!(run.status.code(), Some(1));
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&result).unwrap()).unwrap();
    assert_eq!(doc["pass"], false);
    let why = doc["checks"][0]["why"].as_str().unwrap_or_default();
    assert!(
        why.contains("/nonexistent/gapscoped is missing") && why.contains("device-pack"),
        "{doc:#}"
    );
}
