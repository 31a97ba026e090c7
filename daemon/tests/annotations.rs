//! The load generator announces its phases to gapscoped: a real
//! gapscope-loadgen run posts to the real daemon, which keeps the
//! annotations on its clock and counts them; bad bodies get a 400 naming
//! the problem.

use std::{
    io::{Read, Write},
    process::Command,
};

use gapscope_testkit::{
    Daemon, http_get, loadgen_bin, serial,
    stream_server::{ServerConfig, StreamServer},
};

fn post(port: u16, body: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "POST /api/v1/annotations HTTP/1.0\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    (
        head.split_whitespace().nth(1).unwrap().parse().unwrap(),
        body.to_string(),
    )
}

#[test]
fn a_loadgen_run_leaves_its_phases_in_gapscoped() {
    let _g = serial();
    let daemon =
        Daemon::start("[[service]]\nname = \"none\"\ncmdline = \"^nothing-matches-this$\"\n");
    let server = StreamServer::start(ServerConfig::default());
    let out = tempfile::tempdir().unwrap();
    let status = Command::new(loadgen_bin())
        .args([
            "--url",
            &server.url("/v1/completions"),
            "--phase",
            "warm=constant:10:1s",
            "--phase",
            "cooldown=silence:1s",
        ])
        .args([
            "--max-tokens",
            "4",
            "--quiet",
            "--no-plots",
            "--gapscoped",
            &format!("http://127.0.0.1:{}", daemon.port),
            "--out",
        ])
        .arg(out.path())
        .status()
        .unwrap();
    assert!(status.success());
    let body = http_get(daemon.port, "/api/v1/annotations").unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let list = v["annotations"].as_array().unwrap();
    let seen: Vec<(String, String)> = list
        .iter()
        .map(|a| {
            (
                a["phase"].as_str().unwrap().to_string(),
                a["event"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("warm", "start"),
            ("warm", "end"),
            ("cooldown", "start"),
            ("cooldown", "end")
        ]
        .map(|(p, e)| (p.to_string(), e.to_string()))
    );
    assert!(
        list.iter().all(|a| a["kind"] != ""
            && a["run_id"] != ""
            && a["monotonic_ns"].as_u64().unwrap() > 0)
    );
    // The silence starts when the warmup ends.
    let t = |i: usize| list[i]["monotonic_ns"].as_u64().unwrap();
    assert!(t(2) >= t(1) && t(2) - t(1) < 50_000_000);
    let m = daemon.scrape();
    assert_eq!(
        m.get("gapscope_annotations_total", &[("event", "start")]),
        Some(2.0)
    );
    assert_eq!(
        m.get("gapscope_loadgen_phase_active", &[("phase", "cooldown")]),
        None
    );

    for (body, says) in [
        ("{", "not JSON"),
        ("{\"phase\": \"x\", \"event\": \"pause\"}", "neither"),
        ("{\"event\": \"start\"}", "phase is missing"),
    ] {
        let (status, text) = post(daemon.port, body);
        assert_eq!(status, 400, "{body}: {text}");
        assert!(
            text.contains(says) && text.contains("\"fix\""),
            "{body}: {text}"
        );
    }
    let (status, _) = post(
        daemon.port,
        "{\"phase\": \"stress\", \"kind\": \"closed_loop\", \"event\": \"start\"}",
    );
    assert_eq!(status, 200);
    let m = daemon.scrape();
    assert_eq!(
        m.get(
            "gapscope_loadgen_phase_active",
            &[("phase", "stress"), ("kind", "closed_loop")]
        ),
        Some(1.0)
    );
}
