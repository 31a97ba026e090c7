//! The device check's stand-in mode, end to end: `scripts/device_check.py
//! --stand-in --experiment` (what `scripts/device-check --stand-in
//! --experiment` runs, here on the workspace's own build) runs gapscoped on
//! the NVML stand-in and the simulated device, then the seed's experiment at
//! the tiny shape (BentoML against the PyTorch engine, both traced, three
//! phases each, compare and explain), and must pass every check and write a
//! result that validates against `scripts/device-check.schema.json`.

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
        .arg("--experiment")
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
        "experiment_python_wrapper_served",
        "experiment_python_wrapper_exact_tokens",
        "experiment_compiled_engine_served",
        "experiment_compiled_engine_exact_tokens",
        "experiment_explain",
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
    // Where each CUDA probe sits: the stand-in is built as Ubuntu builds
    // (`endbr64`, then `push %rbp`), so on x86-64 every site is a push.
    let sites = doc["host"]["cuda_probe_sites"].as_object().unwrap();
    assert!(sites.contains_key("driver/cuLaunchKernel"), "{sites:?}");
    if cfg!(target_arch = "x86_64") {
        for (entry, kinds) in sites {
            let kinds: Vec<&String> = kinds.as_object().unwrap().keys().collect();
            assert_eq!(kinds, ["push"], "{entry}");
        }
    }
    experiment_is_complete(&doc, out.path());
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

/// The experiment's section: both stacks served by what they should be,
/// every figure sourced, the files beside the result.
fn experiment_is_complete(doc: &Value, dir: &std::path::Path) {
    let exp = &doc["experiment"];
    assert_eq!(exp["shape"], "tiny", "{exp:#}");
    assert_eq!(exp["stacks"]["python-wrapper"]["server"], "bentoml");
    assert_eq!(exp["stacks"]["compiled-engine"]["server"], "torch-engine");
    assert_eq!(
        exp["stacks"]["compiled-engine"]["about"]["stack"],
        "compiled-engine"
    );
    let figures = exp["figures"].as_array().unwrap();
    let figure = |stack: &str, name: &str| -> Option<f64> {
        figures
            .iter()
            .find(|f| f["stack"] == stack && f["name"] == name)
            .unwrap_or_else(|| panic!("no figure {name} of {stack}"))["value"]
            .as_f64()
    };
    for stack in ["python-wrapper", "compiled-engine"] {
        assert!(figure(stack, "output_tokens_per_s").unwrap() > 0.0);
        assert!(figure(stack, "p99_ttft_ms").unwrap() > 0.0);
        assert_eq!(figure(stack, "requests_failed"), Some(0.0));
        // The NVML stand-in's steady 70 W gives an energy figure.
        assert!(figure(stack, "tokens_per_joule").unwrap() > 0.0);
    }
    // The wrapper's GIL waits are traced (the targets' Python keeps its
    // symbols); the engine's single engine thread has next to none.
    assert!(figure("python-wrapper", "gil_wait_s").is_some());
    for f in figures {
        assert!(f["source"].as_str().is_some_and(|s| !s.is_empty()), "{f}");
    }
    // The ratio itself is the batching test's (stacks.rs); here, that it is there.
    assert!(exp["speedup"]["value"].as_f64().unwrap() > 0.0, "{exp:#}");
    let files = dir.join("experiment");
    for f in [
        "compare.md",
        "explain.txt",
        "explain-python-wrapper.json",
        "python-wrapper/results.json",
        "compiled-engine/results.json",
    ] {
        assert!(files.join(f).is_file(), "{f} missing in {files:?}");
    }
    let pngs = std::fs::read_dir(files.join("compiled-engine"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "png")
        })
        .count();
    assert!(pngs > 0, "no plots");
    let table = std::fs::read_to_string(files.join("compare.md")).unwrap();
    assert!(
        table.contains("python-wrapper") && table.contains("compiled-engine"),
        "{table}"
    );
}
