//! deploy/kubernetes, validated offline: every core object with
//! kubernetes-validate (strict, against Kubernetes 1.30's schemas), the
//! ServiceMonitor against the Prometheus Operator's field schema, and the
//! pieces that must agree with each other and with the daemon: the
//! configuration gapscoped is given, the capabilities (the same as the
//! systemd unit's), the socket and port names.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use gapscope_testkit::{gapscoped_bin, repo_root};
use serde::Deserialize as _;
use serde_yaml::Value;

fn dir() -> PathBuf {
    repo_root().join("deploy/kubernetes")
}

/// The tools venv scripts/setup.sh makes (kubernetes-validate, jsonschema).
fn tools_python() -> Option<PathBuf> {
    let p = repo_root().join(".cache/tools-venv/bin/python");
    if p.exists() {
        Some(p)
    } else {
        gapscope_testkit::skip(&format!("{} missing: run scripts/setup.sh", p.display()));
        None
    }
}

fn yaml(name: &str) -> Value {
    let text = std::fs::read_to_string(dir().join(name)).unwrap();
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn resources() -> Vec<String> {
    yaml("kustomization.yaml")["resources"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

/// kubernetes-validate --strict on `files`: (success, output).
fn kubernetes_validate(python: &Path, files: &[PathBuf]) -> (bool, String) {
    let out = Command::new(python)
        .args(["-m", "kubernetes_validate", "--strict", "-k", "1.30.0"])
        .args(files)
        .output()
        .unwrap();
    (out.status.success(), gapscope_testkit::output_text(&out))
}

#[test]
fn the_kustomization_lists_every_manifest() {
    let listed = resources();
    let mut present: Vec<String> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    present.sort();
    let mut sorted = listed.clone();
    sorted.sort();
    assert_eq!(sorted, present, "kustomization.yaml resources vs files");
    let k = yaml("kustomization.yaml");
    assert_eq!(k["namespace"].as_str(), Some("gapscope"));
    for file in &listed {
        for doc in
            serde_yaml::Deserializer::from_str(&std::fs::read_to_string(dir().join(file)).unwrap())
        {
            let v = Value::deserialize(doc).unwrap();
            let ns = v["metadata"]["namespace"].as_str();
            let kind = v["kind"].as_str().unwrap();
            if kind != "Namespace" {
                assert_eq!(ns, Some("gapscope"), "{file}: {kind} in another namespace");
            }
        }
    }
}

#[test]
fn core_objects_pass_kubernetes_validate_strictly() {
    let Some(python) = tools_python() else { return };
    let core: Vec<PathBuf> = resources()
        .iter()
        .filter(|f| *f != "servicemonitor.yaml")
        .map(|f| dir().join(f))
        .collect();
    let (ok, out) = kubernetes_validate(&python, &core);
    assert!(ok, "{out}");
    assert_eq!(
        out.matches(" passed for resource ").count(),
        core.len(),
        "{out}"
    );
    assert!(!out.contains("Couldn't find schema"), "{out}");

    // Strict means strict: a misspelt optional field fails, where the API
    // server would drop it silently.
    let tmp = tempfile::tempdir().unwrap();
    let broken = tmp.path().join("daemonset.yaml");
    let text = std::fs::read_to_string(dir().join("daemonset.yaml")).unwrap();
    assert!(text.contains("readOnlyRootFilesystem:"));
    std::fs::write(
        &broken,
        text.replace("readOnlyRootFilesystem:", "readOnlyRootFileSystem:"),
    )
    .unwrap();
    let (ok, out) = kubernetes_validate(&python, &[broken]);
    assert!(
        !ok && out.contains("readOnlyRootFileSystem"),
        "a typo passed:\n{out}"
    );
}

#[test]
fn the_servicemonitor_matches_the_operators_schema() {
    let Some(python) = tools_python() else { return };
    let schema = repo_root().join("daemon/tests/data/servicemonitor.schema.json");
    let validate = |document: &Value| -> (bool, String) {
        let mut child = Command::new(&python)
            .args([
                "-c",
                "import json, sys, jsonschema\n\
                 schema = json.load(open(sys.argv[1]))\n\
                 doc = json.load(sys.stdin)\n\
                 errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(doc), key=str)\n\
                 for e in errors: print('/'.join(map(str, e.path)) + ': ' + e.message)\n\
                 sys.exit(1 if errors else 0)",
            ])
            .arg(&schema)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write as _;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(serde_json::to_string(document).unwrap().as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let monitor = yaml("servicemonitor.yaml");
    let (ok, out) = validate(&monitor);
    assert!(ok, "{out}");
    // And the schema refuses what the operator would.
    let mut bad = monitor.clone();
    bad["spec"]["endpoints"][0]["interval"] = Value::from("15 seconds");
    bad["spec"]["endpoints"][0]["scheme"] = Value::from("ftp");
    let (ok, out) = validate(&bad);
    assert!(
        !ok && out.contains("interval") && out.contains("scheme"),
        "{out}"
    );
}

#[test]
fn the_manifests_agree_with_each_other_and_with_the_daemon() {
    let ds = yaml("daemonset.yaml");
    let pod = &ds["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(
        pod["hostPID"].as_bool(),
        Some(true),
        "hostPID: every pod's processes"
    );

    // The same capabilities as the systemd unit.
    let unit = std::fs::read_to_string(repo_root().join("deploy/gapscoped.service")).unwrap();
    let mut unit_caps: Vec<String> = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .unwrap()
        .split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_string())
        .collect();
    let mut pod_caps: Vec<String> = container["securityContext"]["capabilities"]["add"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    unit_caps.sort();
    pod_caps.sort();
    assert_eq!(pod_caps, unit_caps);
    assert_eq!(
        container["securityContext"]["privileged"].as_bool(),
        Some(false)
    );

    // The configuration in the ConfigMap is one gapscoped accepts.
    let cm = yaml("configmap.yaml");
    let toml = cm["data"]["gapscoped.toml"].as_str().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("gapscoped.toml");
    std::fs::write(&config, toml).unwrap();
    let out = Command::new(gapscoped_bin())
        .arg("--config")
        .arg(&config)
        .arg("check-config")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // It listens where the probes and the Service look, and puts its
    // socket on the node's /run/gapscope.
    assert!(toml.contains("listen = \"0.0.0.0:9478\""));
    assert_eq!(container["ports"][0]["containerPort"].as_u64(), Some(9478));
    let mounts = container["volumeMounts"].as_sequence().unwrap();
    assert!(toml.contains("socket = \"/run/gapscope/inject.sock\""));
    assert!(
        mounts
            .iter()
            .any(|m| m["mountPath"].as_str() == Some("/run/gapscope")),
        "the socket's directory is the node's"
    );
    assert!(
        mounts
            .iter()
            .any(|m| m["mountPath"].as_str() == Some("/etc/gapscope")),
        "the ConfigMap is mounted where --config points"
    );
    let port = container["ports"][0]["name"].as_str().unwrap();
    assert_eq!(
        yaml("service.yaml")["spec"]["ports"][0]["targetPort"].as_str(),
        Some(port)
    );
    assert_eq!(
        yaml("servicemonitor.yaml")["spec"]["endpoints"][0]["port"].as_str(),
        yaml("service.yaml")["spec"]["ports"][0]["name"].as_str()
    );
    let selector = &yaml("servicemonitor.yaml")["spec"]["selector"]["matchLabels"];
    let service_labels = &yaml("service.yaml")["metadata"]["labels"];
    for (k, v) in selector.as_mapping().unwrap() {
        assert_eq!(
            &service_labels[k], v,
            "the ServiceMonitor selects the Service"
        );
    }
}
