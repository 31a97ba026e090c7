//! Bearer authentication: `--api-key` and `OPENAI_API_KEY` reach a server
//! that requires a token; a missing or refused token is counted as
//! `http_status` with the fix named; the token is in no file the run
//! writes and nowhere on its output.

mod common;

use std::process::Command;

use common::*;

const KEY: &str = "sk-test-5eCr3t-gapscope-0042";

/// gapscope-loadgen against `url` with `args`, OPENAI_API_KEY set to
/// `env_key` (or unset), not quiet: (run, every byte it wrote).
fn run(url: &str, args: &[&str], env_key: Option<&str>) -> (Run, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(gapscope_testkit::loadgen_bin());
    cmd.args([
        "--url",
        url,
        "--phase",
        "s=closed:2:1s",
        "--max-tokens",
        "6",
    ])
    .args(args)
    .arg("--out")
    .arg(dir.path())
    .env_remove("OPENAI_API_KEY");
    if let Some(k) = env_key {
        cmd.env("OPENAI_API_KEY", k);
    }
    let out = cmd.output().unwrap();
    let mut everything = String::from_utf8_lossy(&out.stdout).into_owned();
    everything += &String::from_utf8_lossy(&out.stderr);
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        everything += &String::from_utf8_lossy(&std::fs::read(entry.unwrap().path()).unwrap());
    }
    let run = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        dir,
    };
    (run, everything)
}

#[test]
fn a_bearer_token_reaches_the_server_and_nowhere_else() {
    let _g = serial();
    let server = StreamServer::start(ServerConfig {
        token_ms: 1.0,
        bearer: Some(KEY.into()),
        ..ServerConfig::default()
    });
    let url = server.url("/v1/completions");

    for (args, env_key, source) in [
        (vec!["--api-key", KEY], None, "--api-key"),
        (vec![], Some(KEY), "OPENAI_API_KEY"),
        // The flag wins over the environment.
        (vec!["--api-key", KEY], Some("sk-wrong"), "--api-key"),
    ] {
        let (r, everything) = run(&url, &args, env_key);
        let p = r.phase("s");
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert!(p["ok"].as_u64().unwrap() > 0, "{p:#}");
        assert_eq!(p["failed"], 0, "{p:#}");
        assert!(
            r.stderr.contains(&format!("bearer token from {source}")),
            "{}",
            r.stderr
        );
        // Results, per-request records, plots, stdout and stderr.
        assert!(!everything.contains(KEY), "the key leaked ({source})");
        assert!(!everything.contains("5eCr3t"), "part of the key leaked");
    }

    // No key: 401, counted, the fix named.
    let (r, _) = run(&url, &[], None);
    let p = r.phase("s");
    assert_eq!(p["ok"], 0);
    assert_eq!(p["errors"]["http_status"], p["sent"], "{p:#}");
    let example = p["error_examples"]["http_status"][0].as_str().unwrap();
    assert!(
        example.contains("HTTP 401")
            && example.contains("give --api-key KEY or set OPENAI_API_KEY"),
        "{example}"
    );

    // A wrong key: 403, and which key was refused.
    let (r, everything) = run(&url, &[], Some("sk-not-this-one"));
    let p = r.phase("s");
    assert_eq!(p["errors"]["http_status"], p["sent"], "{p:#}");
    let example = p["error_examples"]["http_status"][0].as_str().unwrap();
    assert!(
        example.contains("HTTP 403") && example.contains("refused the key in OPENAI_API_KEY"),
        "{example}"
    );
    assert!(!everything.contains("sk-not-this-one"));
}

#[test]
fn an_api_key_and_an_authorization_header_together_are_refused() {
    let (r, _) = run(
        "http://127.0.0.1:9/v1/completions",
        &["--api-key", KEY, "--header", "authorization: Bearer x"],
        None,
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("Authorization header and an API key"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains(KEY));
    let (r, _) = run(
        "http://127.0.0.1:9/v1/completions",
        &["--api-key", "Bearer sk-x"],
        None,
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("without 'Bearer '"), "{}", r.stderr);
}

#[test]
fn a_key_sent_in_clear_text_off_this_host_is_warned_about() {
    // This host's own non-loopback address (the source of its default
    // route; nothing is sent to find it), on a closed port: every request
    // is refused at once, and the warning comes before any is sent.
    let probe = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    let Some(ip) = probe
        .connect("192.0.2.1:9")
        .ok()
        .and_then(|()| probe.local_addr().ok())
        .map(|a| a.ip())
        .filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
    else {
        gapscope_testkit::skip("this host has no non-loopback IPv4 address to send to");
        return;
    };
    let url = format!("http://{ip}:9/v1/completions");
    let (r, _) = run(&url, &["--api-key", KEY], None);
    assert!(
        r.stderr.contains("warning: the API key goes in clear text"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains(KEY));
    // Over loopback, no warning.
    let (r, _) = run(
        "http://127.0.0.1:9/v1/completions",
        &["--api-key", KEY],
        None,
    );
    assert!(!r.stderr.contains("clear text"), "{}", r.stderr);
}

/// A key in the environment never overrides an Authorization header the
/// user gave: the header is sent, the environment's key is not.
#[test]
fn an_authorization_header_wins_over_the_environments_key() {
    let _g = serial();
    let server = StreamServer::start(ServerConfig {
        bearer: Some(KEY.into()),
        ..ServerConfig::default()
    });
    let url = server.url("/v1/completions");
    let header = format!("Authorization: Bearer {KEY}");
    let (r, _) = run(
        &url,
        &["--header", header.as_str()],
        Some("sk-from-the-env"),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.phase("s")["failed"], 0);
    assert!(!r.stderr.contains("OPENAI_API_KEY"), "{}", r.stderr);
}
