//! Bad input: every malformed configuration, a taken port and missing
//! privileges end with exit status 2 and one message naming the problem
//! and the fix, with nothing left attached.

use std::process::Command;

use gapscope_testkit::{gapscoped_as_nobody, gapscoped_bin, serial, write_config};

/// Runs `gapscoped --config <text>` and returns (exit code, stderr).
fn run_with(text: &str) -> (i32, String) {
    let config = write_config(text);
    let out = Command::new(gapscoped_bin())
        .arg("--config")
        .arg(&*config)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const SERVICE: &str =
    "[[service]]\nname = \"s\"\ncmdline = \"^gapscope-bad-input-matches-nothing$\"\n";

#[test]
fn malformed_configs_exit_2_with_their_message() {
    let cases: &[(&str, String, &str)] = &[
        (
            "unknown top-level key",
            format!("colour = 1\n{SERVICE}"),
            "unknown field `colour`",
        ),
        (
            "unknown daemon key",
            format!("[daemon]\nlisen = \"127.0.0.1:1\"\n{SERVICE}"),
            "unknown field `lisen`",
        ),
        (
            "unknown service key",
            "[[service]]\nname = \"s\"\ncmdlin = \"x\"\n".into(),
            "unknown field `cmdlin`",
        ),
        (
            "unknown python key",
            format!("[python]\ngill = true\n{SERVICE}"),
            "unknown field `gill`",
        ),
        (
            "unusable probe",
            format!(
                "[[python.probe]]\nlibrary = \"/usr/lib/x.so\"\nsymbol = \"f\"\ncodec = \"c\"\n{SERVICE}"
            ),
            "is not usable",
        ),
        (
            "probe label",
            format!(
                "[[python.probe]]\nlibrary = \"x.\"\nsymbol = \"f\"\ncodec = \"a b\"\n{SERVICE}"
            ),
            "cannot be a label value",
        ),
        (
            "probe named two ways",
            format!(
                "[[python.probe]]\nlibrary = \"x.\"\nsymbol = \"f\"\nmethod = \"g\"\ncodec = \"c\"\n{SERVICE}"
            ),
            "must name its function with exactly one non-empty symbol, symbol_pattern or method",
        ),
        (
            "bad symbol pattern",
            format!(
                "[[python.probe]]\nlibrary = \"x.\"\nsymbol_pattern = \"f(\"\ncodec = \"c\"\n{SERVICE}"
            ),
            "is not a regular expression",
        ),
        (
            "timeline threshold too low",
            format!("[timeline]\nmin_interval_us = 1\n{SERVICE}"),
            "timeline.min_interval_us = 1",
        ),
        (
            "explain window out of range",
            format!("[explain]\nwindow_s = 0\n{SERVICE}"),
            "explain.window_s = 0 is out of range",
        ),
        (
            "no-work threshold out of range",
            format!("[explain]\nno_work_after_ms = 0\n{SERVICE}"),
            "explain.no_work_after_ms = 0",
        ),
        (
            "explain history too short",
            format!("[explain]\nhistory_s = 5\n{SERVICE}"),
            "explain.history_s = 5",
        ),
        (
            "unknown timeline key",
            format!("[timeline]\nretention = 5\n{SERVICE}"),
            "unknown field `retention`",
        ),
        (
            "launch budget out of range",
            format!("[cuda]\nlaunch_budget = 0\n{SERVICE}"),
            "cuda.launch_budget = 0 is not a share of one core",
        ),
        (
            "probe cost out of range",
            format!("[cuda]\nprobe_cost_us = 0.0\n{SERVICE}"),
            "cuda.probe_cost_us = 0 is out of range",
        ),
        (
            "NVML interval too short",
            format!("[nvml]\ninterval_ms = 10\n{SERVICE}"),
            "nvml.interval_ms = 10 is out of range",
        ),
        (
            "idle power nonsense",
            format!("[nvml]\nidle_power_watts = -3.0\n{SERVICE}"),
            "nvml.idle_power_watts = -3 is not a power",
        ),
        (
            "NVML library that is not there",
            format!("[nvml]\nlibrary = \"/nonexistent/libnvidia-ml.so.1\"\n{SERVICE}"),
            "nvml.library = \"/nonexistent/libnvidia-ml.so.1\" is not a file",
        ),
        (
            "unknown nvml key",
            format!("[nvml]\nintervall_ms = 10\n{SERVICE}"),
            "unknown field `intervall_ms`",
        ),
        (
            "relative socket path",
            format!("[inject]\nsocket = \"inject.sock\"\n{SERVICE}"),
            "inject.socket = \"inject.sock\" is not usable",
        ),
        (
            "frame rate zero",
            format!("[inject]\nmax_frames_per_second = 0\n{SERVICE}"),
            "inject.max_frames_per_second = 0 is out of range",
        ),
        (
            "reorder window too short",
            format!("[inject]\nreorder_window_ms = 1\n{SERVICE}"),
            "inject.reorder_window_ms = 1 is out of range",
        ),
        (
            "uid not a number",
            format!("[inject]\nallowed_uids = [\"www-data\"]\n{SERVICE}"),
            "invalid type",
        ),
        (
            "bad regex",
            "[[service]]\nname = \"s\"\ncmdline = \"python(\"\n".into(),
            "cmdline regex \"python(\" is invalid",
        ),
        (
            "no services",
            "[daemon]\n".into(),
            "no [[service]] is defined",
        ),
        (
            "service without matcher",
            "[[service]]\nname = \"s\"\n".into(),
            "has no matcher",
        ),
        (
            "duplicate service",
            format!("{SERVICE}{SERVICE}"),
            "is used twice",
        ),
        (
            "bad service name",
            "[[service]]\nname = \"a b\"\ncmdline = \"x\"\n".into(),
            "is not allowed",
        ),
        (
            "bad listen",
            format!("[daemon]\nlisten = \"localhost\"\n{SERVICE}"),
            "is not an IP address and port",
        ),
        (
            "relative exe",
            "[[service]]\nname = \"s\"\nexe = \"python\"\n".into(),
            "is not an absolute path",
        ),
        (
            "relative cgroup",
            "[[service]]\nname = \"s\"\ncgroup = \"system.slice\"\n".into(),
            "does not start with '/'",
        ),
        (
            "bad unit",
            "[[service]]\nname = \"s\"\nsystemd_unit = \"a/b\"\n".into(),
            "is not a unit name",
        ),
        (
            "rescan out of range",
            format!("[daemon]\nrescan_interval_ms = 5\n{SERVICE}"),
            "out of range",
        ),
        (
            "wrong type",
            "[[service]]\nname = \"s\"\npids = \"12\"\n".into(),
            "invalid type",
        ),
        (
            "not TOML",
            "[[service]\nname=".into(),
            "line 1, column 11: unclosed array table",
        ),
    ];
    for (what, text, message) in cases {
        let (code, stderr) = run_with(text);
        assert_eq!(code, 2, "{what}: exit code {code}, stderr: {stderr}");
        assert!(
            stderr.contains(message),
            "{what}: {stderr:?} lacks {message:?}"
        );
        assert!(stderr.contains("fix:"), "{what}: no fix in {stderr:?}");
        assert_eq!(
            stderr.trim().lines().count(),
            1,
            "{what}: one message, got {stderr:?}"
        );
    }
}

#[test]
fn missing_config_file() {
    let out = Command::new(gapscoped_bin())
        .args(["--config", "/nonexistent/gapscoped.toml"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("cannot read config file /nonexistent/gapscoped.toml"),
        "{stderr}"
    );
}

#[test]
fn unknown_flag_exits_2() {
    let out = Command::new(gapscoped_bin())
        .arg("--frobnicate")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--frobnicate"));
}

fn our_programs_loaded() -> usize {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| p.name_as_str().is_some_and(|n| n.starts_with("gs_")))
        .count()
}

#[test]
fn port_in_use_exits_2_and_attaches_nothing() {
    let _g = serial();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let before = our_programs_loaded();
    let (code, stderr) = run_with(&format!(
        "[daemon]\nlisten = \"127.0.0.1:{port}\"\n{SERVICE}"
    ));
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{stderr}"
    );
    assert!(stderr.contains("fix:"), "{stderr}");
    assert_eq!(our_programs_loaded(), before, "nothing left attached");
}

#[test]
fn a_file_where_the_socket_goes_exits_2_and_attaches_nothing() {
    let _g = serial();
    let file = tempfile::NamedTempFile::new().unwrap();
    let before = our_programs_loaded();
    let (code, stderr) = run_with(&format!(
        "[daemon]\nlisten = \"127.0.0.1:{}\"\n[inject]\nsocket = \"{}\"\n{SERVICE}",
        gapscope_testkit::free_port(),
        file.path().display()
    ));
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("exists and is not a socket") && stderr.contains("fix:"),
        "{stderr}"
    );
    assert!(file.path().is_file(), "the file is left alone");
    assert_eq!(our_programs_loaded(), before, "nothing left attached");
}

#[test]
fn no_privileges_exits_2() {
    let _g = serial();
    let port = gapscope_testkit::free_port();
    let config = write_config(&format!(
        "[daemon]\nlisten = \"127.0.0.1:{port}\"\n{SERVICE}"
    ));
    // Config readable by the unprivileged user.
    std::fs::set_permissions(
        &*config,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let out = gapscoped_as_nobody()
        .arg("--config")
        .arg(&*config)
        .output()
        .expect("setpriv (util-linux) runs the daemon as nobody");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("lacks the privileges to load BPF programs"),
        "{stderr}"
    );
    assert!(stderr.contains("fix:"), "{stderr}");
}

#[test]
fn bad_interval_queries_get_400_naming_the_problem() {
    let _g = serial();
    let daemon = gapscope_testkit::Daemon::start(SERVICE);
    for (query, says) in [
        ("kind=bogus", "unknown kind \\\"bogus\\\""),
        ("service=nope", "no service named \\\"nope\\\""),
        ("since_ns=yesterday", "is not a number"),
        ("limit=0", "out of range"),
        ("colour=red", "unknown parameter \\\"colour\\\""),
    ] {
        let (status, body) =
            gapscope_testkit::http_get_status(daemon.port, &format!("/api/v1/intervals?{query}"));
        assert_eq!(status, 400, "{query}: {body}");
        assert!(
            body.contains(says) && body.contains("\"fix\""),
            "{query}: {body}"
        );
    }
    let (status, body) =
        gapscope_testkit::http_get_status(daemon.port, "/api/v1/intervals?service=s&limit=5");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"intervals\":[]"), "{body}");

    for (query, says) in [
        ("", "service is missing"),
        ("service=nope", "no service named \\\"nope\\\""),
        (
            "service=s&window=soon",
            "window=\\\"soon\\\" is not a duration",
        ),
        ("service=s&window=2d", "is not a duration"),
        ("service=s&window=5h", "within the history"),
        ("service=s&colour=red", "unknown parameter"),
        ("service=s&gpu_hour_usd=0", "is not a price"),
        ("service=s&gpu_hour_usd=NaN", "is not a price"),
        ("service=s&what_if=no_work", "no_work is not a stall"),
        (
            "service=s&what_if=lunch",
            "what_if names no cause \\\"lunch\\\"",
        ),
        ("service=s&what_if=,", "what_if names no cause"),
        (
            "service=s&what_if=serialization:json",
            "a serialization function is CODEC.OP",
        ),
        (
            "service=s&what_if=runqueue:json.encode",
            "only serialization's functions (serialization:CODEC.OP) and the GIL's holders (gil_wait:TID) can be named",
        ),
        (
            "service=s&what_if=gil_wait:main",
            "a GIL holder is named by its thread id, gil_wait:TID",
        ),
        // Well formed, but no probe reports it: the fix names the probed.
        (
            "service=s&what_if=serialization:yaml.encode",
            "serialization:yaml.encode, which no configured probe reports",
        ),
    ] {
        let (status, body) =
            gapscope_testkit::http_get_status(daemon.port, &format!("/api/v1/explain?{query}"));
        assert_eq!(status, 400, "{query}: {body}");
        assert!(
            body.contains(says) && body.contains("\"fix\""),
            "{query}: {body}"
        );
        if query.contains("yaml") {
            assert!(body.contains("serialization:json.encode"), "{body}");
        }
    }
    // A service with nothing to show says why, rather than inventing numbers.
    let (status, body) =
        gapscope_testkit::http_get_status(daemon.port, "/api/v1/explain?service=s&window=30s");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["gpu"], serde_json::json!([]), "{body}");
    let notes = v["data_quality"]["notes"].to_string();
    assert!(notes.contains("no GPU timeline"), "{body}");

    // The trace: the same rules, the window within the timeline's
    // retention.
    for (query, says) in [
        ("", "service is missing"),
        ("service=nope", "no service named"),
        ("service=s&window=1h", "within the timeline's retention"),
        ("service=s&window=-3s", "is not a duration"),
        ("service=s&format=pb", "unknown parameter"),
    ] {
        let (status, body) =
            gapscope_testkit::http_get_status(daemon.port, &format!("/api/v1/trace?{query}"));
        assert_eq!(status, 400, "{query}: {body}");
        assert!(
            body.contains(says) && body.contains("\"fix\""),
            "{query}: {body}"
        );
    }
    // Nothing recorded yet: an empty trace that still opens.
    let (status, body) =
        gapscope_testkit::http_get_status(daemon.port, "/api/v1/trace?service=s&window=10s");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["traceEvents"], serde_json::json!([]), "{body}");
    assert_eq!(v["otherData"]["service"], "s", "{body}");
    // The command names a bad window and an unwritable file.
    let url = format!("http://127.0.0.1:{}", daemon.port);
    for (args, says) in [
        (
            vec!["--window", "soon", "--out", "/tmp/t.json"],
            "is not a duration",
        ),
        (
            vec!["--out", "/nonexistent-dir/t.json"],
            "cannot write /nonexistent-dir/t.json",
        ),
    ] {
        let out = std::process::Command::new(gapscope_testkit::gapscoped_bin())
            .args(["trace", "--service", "s", "--url", &url])
            .args(&args)
            .output()
            .unwrap();
        let text = gapscope_testkit::output_text(&out);
        assert_eq!(out.status.code(), Some(2), "{text}");
        assert!(text.contains(says), "{args:?}: {text}");
    }
}
