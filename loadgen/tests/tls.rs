//! HTTPS endpoints: a test CA trusted with `--cacert`, HTTP/2 chosen by
//! ALPN with many streams on few connections and every token still timed
//! per stream, `--http1-only`, an untrusted certificate refused with the
//! fix named, `--insecure` warned about, and mutual TLS with `--cert`/
//! `--key`. The truth is the server's own log.

mod common;

use std::path::Path;

use common::*;
use gapscope_testkit::{stream_server::ServerTls, tls::make_certificates};

fn tls(dir: &Path, h2: bool, client_ca: bool) -> ServerTls {
    ServerTls {
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
        client_ca: client_ca.then(|| dir.join("ca.pem")),
        h2,
    }
}

fn server(dir: &Path, h2: bool, client_ca: bool) -> StreamServer {
    StreamServer::start(ServerConfig {
        first_token_ms: 20.0,
        token_ms: 5.0,
        tls: Some(tls(dir, h2, client_ca)),
        ..ServerConfig::default()
    })
}

fn run(server: &StreamServer, extra: &[&str]) -> Run {
    let url = server.url("/v1/completions");
    let mut args = vec![
        "--url",
        &url,
        "--phase",
        "s=closed:4:1s",
        "--max-tokens",
        "8",
        "--no-plots",
    ];
    args.extend_from_slice(extra);
    loadgen(&args)
}

fn path(dir: &Path, name: &str) -> String {
    dir.join(name).display().to_string()
}

#[test]
fn https_with_a_trusted_ca_multiplexes_h2_streams_and_times_each_token() {
    let _g = serial();
    let certs = tempfile::tempdir().unwrap();
    make_certificates(certs.path());
    let server = server(certs.path(), true, false);
    let ca = path(certs.path(), "ca.pem");
    // One stream first, then four at once: HTTP/2 carries them all on the
    // connection the first opened.
    let url = server.url("/v1/completions");
    let r = loadgen(&[
        "--url",
        &url,
        "--phase",
        "w=closed:1:0.3s",
        "--phase",
        "s=closed:4:1s",
        "--max-tokens",
        "8",
        "--no-plots",
        "--cacert",
        &ca,
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);

    let records = r.requests();
    let log = server.log.lock().unwrap();
    assert!(!records.is_empty());
    assert_eq!(
        log.requests.len(),
        records.len(),
        "every request reached it"
    );
    assert!(log.requests.iter().all(|s| s.http_version == "HTTP/2.0"));
    assert!(
        records.iter().all(|q| q["http_version"] == "2"),
        "{records:?}"
    );
    let results = r.results();
    assert_eq!(
        results["run"]["endpoint"]["http_versions"]["2"],
        records.len() as u64
    );
    assert_eq!(results["run"]["endpoint"]["tls"]["cacert"][0], ca.as_str());
    // Four streams at once (five while the warm-up's last one ends) on
    // one connection.
    assert!(log.max_in_flight >= 4);
    assert_eq!(log.connections, 1, "{} requests", records.len());
    // Per stream, each token event follows the chunk the server wrote for
    // it, and carries its tokens: HTTP/2 framing does not merge streams.
    let origin = r.origin();
    for q in &records {
        let id = q["id"].as_str().unwrap();
        let seen = common::seen(&log, id);
        let sent = origin + q["sent_ns"].as_u64().unwrap();
        let events = q["events"].as_array().unwrap();
        assert_eq!(events.len(), seen.chunks_ns.len(), "{q}");
        for (e, (&written, &tokens)) in events
            .iter()
            .zip(seen.chunks_ns.iter().zip(&seen.chunk_tokens))
        {
            assert!(sent + e["at_ns"].as_u64().unwrap() >= written, "{q}");
            assert_eq!(e["tokens"].as_u64().unwrap(), tokens, "{q}");
        }
        assert_eq!(q["output_tokens"]["usage"], 8);
    }
}

#[test]
fn http1_only_or_a_server_without_h2_stays_on_http_1_1() {
    let _g = serial();
    let certs = tempfile::tempdir().unwrap();
    make_certificates(certs.path());
    let ca = path(certs.path(), "ca.pem");
    for (h2, flags) in [(true, vec!["--http1-only"]), (false, vec![])] {
        let server = server(certs.path(), h2, false);
        let mut args = vec!["--cacert", ca.as_str()];
        args.extend(flags);
        let r = run(&server, &args);
        assert_eq!(r.code, 0, "{}", r.stderr);
        let records = r.requests();
        let log = server.log.lock().unwrap();
        assert!(log.requests.iter().all(|s| s.http_version == "HTTP/1.1"));
        assert!(records.iter().all(|q| q["http_version"] == "1.1"));
        // HTTP/1.1 carries one request at a time: at least four
        // connections for four at once (hyper may open a spare while it
        // waits for one to come back to its pool).
        assert_eq!(log.max_in_flight, 4);
        assert!(log.connections >= 4, "h2 offered by the server: {h2}");
    }
}

#[test]
fn an_untrusted_certificate_is_refused_with_the_fix_and_insecure_is_warned_about() {
    let _g = serial();
    let certs = tempfile::tempdir().unwrap();
    make_certificates(certs.path());
    let server = server(certs.path(), true, false);

    let r = run(&server, &[]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let p = r.phase("s");
    assert_eq!(p["ok"], 0, "{p:#}");
    assert!(p["errors"]["connect"].as_u64().unwrap() > 0, "{p:#}");
    let detail = r.requests()[0]["error"]["detail"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        detail.contains("not trusted") && detail.contains("--cacert FILE"),
        "{detail}"
    );
    assert!(server.log.lock().unwrap().requests.is_empty());
    assert!(server.log.lock().unwrap().tls_failures > 0);

    let r = run(&server, &["--insecure"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("warning: --insecure"), "{}", r.stderr);
    assert!(r.phase("s")["ok"].as_u64().unwrap() > 0);
}

#[test]
fn mutual_tls_sends_the_client_certificate_and_bad_files_are_named() {
    let _g = serial();
    let certs = tempfile::tempdir().unwrap();
    make_certificates(certs.path());
    let server = server(certs.path(), true, true);
    let ca = path(certs.path(), "ca.pem");

    let r = run(&server, &["--cacert", &ca]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let detail = r.requests()[0]["error"]["detail"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(detail.contains("--cert FILE --key FILE"), "{detail}");
    assert!(server.log.lock().unwrap().requests.is_empty());

    let (cert, key) = (
        path(certs.path(), "client.pem"),
        path(certs.path(), "client.key"),
    );
    let r = run(&server, &["--cacert", &ca, "--cert", &cert, "--key", &key]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!server.log.lock().unwrap().requests.is_empty());

    // Files that cannot work stop the run before it sends, naming them.
    let missing = path(certs.path(), "missing.pem");
    for (args, expected) in [
        (vec!["--cacert", missing.as_str()], "--cacert"),
        (vec!["--cacert", key.as_str()], "no certificate"),
        (
            vec!["--cacert", &ca, "--cert", &cert, "--key", &cert],
            "--key",
        ),
        (
            vec!["--cacert", &ca, "--cert", &ca, "--key", &key],
            "do not work together",
        ),
    ] {
        let r = run(&server, &args);
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        assert!(r.stderr.contains(expected), "{args:?}: {}", r.stderr);
    }
    let r = run(&server, &["--cert", &cert]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("--key"), "{}", r.stderr);
}

#[test]
fn gapscoped_credentials_go_only_where_they_are_safe() {
    let url = "https://127.0.0.1:9/v1/completions";
    let daemon = "https://127.0.0.1:9";
    let run = |args: &[&str], password: Option<&str>| {
        let mut cmd = std::process::Command::new(gapscope_testkit::loadgen_bin());
        cmd.args(["--url", url])
            .args(args)
            .env_remove("GAPSCOPED_PASSWORD");
        if let Some(p) = password {
            cmd.env("GAPSCOPED_PASSWORD", p);
        }
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let user = ["--gapscoped", daemon, "--gapscoped-user", "prometheus"];
    for (extra, password, expected) in [
        (vec![], Some(""), "GAPSCOPED_PASSWORD is empty"),
        (vec![], None, "GAPSCOPED_PASSWORD is not set"),
        (
            vec!["--insecure"],
            Some("pw"),
            "--insecure with --gapscoped-user",
        ),
        (
            vec!["--telemetry", "gapscoped=http://127.0.0.1:9"],
            Some("pw"),
            "clear text to http://127.0.0.1:9",
        ),
    ] {
        let args: Vec<&str> = user.iter().copied().chain(extra.iter().copied()).collect();
        let (code, stderr) = run(&args, password);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    // Telemetry alone may carry them.
    let (code, stderr) = run(
        &[
            "--gapscoped-user",
            "p",
            "--telemetry",
            "gapscoped=http://127.0.0.1:9",
        ],
        Some("pw"),
    );
    assert_eq!(code, Some(2));
    assert!(stderr.contains("clear text"), "{stderr}");
    // Credentials in a URL would be written into the results.
    for args in [
        vec!["--gapscoped", "https://me:secret@127.0.0.1:9"],
        vec!["--telemetry", "dcgm=http://me:secret@127.0.0.1:9/metrics"],
    ] {
        let (code, stderr) = run(&args, None);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("credentials in it"), "{args:?}: {stderr}");
    }
    let out = std::process::Command::new(gapscope_testkit::loadgen_bin())
        .args(["--url", "https://me:secret@127.0.0.1:9/v1/completions"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("credentials in it"));
}
