//! The web config end to end: a real gapscoped serving HTTPS with basic
//! auth, checked with curl and scraped by a real Prometheus, and refused
//! without the right credentials or certificate.

use std::{path::Path, process::Command};

use gapscope_testkit::{Daemon, gapscoped_bin, prometheus::Prometheus, require_root, serial};

const SERVICE: &str = "[[service]]\nname = \"none\"\ncmdline = \"^nothing-matches-this$\"\n";
const PASSWORD: &str = "correct horse";

/// A CA, a server certificate for 127.0.0.1 and a client certificate,
/// made with openssl in `dir`.
fn make_certificates(dir: &Path) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=gapscope test CA",
    ]);
    for (name, ext) in [
        ("server", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
        ("client", "extendedKeyUsage=clientAuth"),
    ] {
        run(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN=gapscope test {name}"),
        ]);
        std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
        run(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
        ]);
    }
}

/// curl's status code and headers+body for an HTTPS request; code 0 when
/// no HTTP answer came (handshake refused).
fn curl(port: u16, dir: &Path, path: &str, extra: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args([
            "-s",
            "-i",
            "--max-time",
            "10",
            "-w",
            "\n%{http_code}",
            "--cacert",
        ])
        .arg(dir.join("ca.pem"))
        .args(extra)
        .arg(format!("https://127.0.0.1:{port}{path}"))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn start_daemon(dir: &Path, web_yaml: &str, healthy_args: Vec<String>) -> Daemon {
    let web = dir.join("web.yml");
    std::fs::write(&web, web_yaml).unwrap();
    let dir = dir.to_path_buf();
    Daemon::start_checked(
        SERVICE,
        &format!("web_config = \"{}\"", web.display()),
        move |port| {
            let args: Vec<&str> = healthy_args.iter().map(String::as_str).collect();
            curl(port, &dir, "/healthz", &args).0 == 200
        },
    )
}

#[test]
fn https_with_basic_auth_is_enforced_and_a_real_prometheus_scrapes_it() {
    require_root();
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    make_certificates(dir.path());
    let hash = gapscope_testkit::hash_password(PASSWORD, 6);
    let web = format!(
        "tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n\
         basic_auth_users:\n  prometheus: '{hash}'\n\
         http_server_config:\n  headers:\n    X-Content-Type-Options: nosniff\n"
    );
    let creds = format!("prometheus:{PASSWORD}");
    let daemon = start_daemon(dir.path(), &web, vec!["-u".into(), creds.clone()]);

    let (code, text) = curl(daemon.port, dir.path(), "/metrics", &["-u", &creds]);
    assert_eq!(code, 200, "{text}");
    assert!(text.contains("gapscope_build_info"), "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("x-content-type-options: nosniff"),
        "{text}"
    );

    let (code, text) = curl(daemon.port, dir.path(), "/metrics", &[]);
    assert_eq!(code, 401, "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("www-authenticate: basic"),
        "{text}"
    );
    assert!(!text.contains("gapscope_build_info"));
    for bad in ["prometheus:wrong", "someone:correct horse", "prometheus:"] {
        let (code, _) = curl(daemon.port, dir.path(), "/metrics", &["-u", bad]);
        assert_eq!(code, 401, "{bad}");
    }
    // Every endpoint is behind the same door, the annotation POST included.
    let (code, _) = curl(
        daemon.port,
        dir.path(),
        "/api/v1/annotations",
        &["-X", "POST", "--data", "{}"],
    );
    assert_eq!(code, 401);
    // Plain HTTP to the TLS port gets no HTTP answer.
    let plain = gapscope_testkit::http_get(daemon.port, "/metrics").unwrap_or_default();
    assert!(
        !plain.contains("200 OK") && !plain.contains("gapscope_"),
        "{plain}"
    );

    let ca = dir.path().join("ca.pem");
    let prom = Prometheus::start(
        &format!(
            "  - job_name: secure\n    scheme: https\n    tls_config:\n      ca_file: {ca}\n\
             \x20   basic_auth:\n      username: prometheus\n      password: '{PASSWORD}'\n\
             \x20   static_configs:\n      - targets: ['127.0.0.1:{port}']\n\
             \x20 - job_name: no_credentials\n    scheme: https\n    tls_config:\n      ca_file: {ca}\n\
             \x20   static_configs:\n      - targets: ['127.0.0.1:{port}']\n\
             \x20 - job_name: unknown_ca\n    scheme: https\n\
             \x20   basic_auth:\n      username: prometheus\n      password: '{PASSWORD}'\n\
             \x20   static_configs:\n      - targets: ['127.0.0.1:{port}']\n",
            ca = ca.display(),
            port = daemon.port
        ),
        &[],
        "500ms",
    );
    prom.wait_target("secure", "up");
    let refused = prom.wait_target("no_credentials", "down");
    assert!(refused.contains("401"), "{refused}");
    let untrusted = prom.wait_target("unknown_ca", "down");
    assert!(untrusted.contains("certificate"), "{untrusted}");
    let r = prom.query("gapscope_build_info{job=\"secure\"}");
    assert_eq!(r["status"], "success", "{r}");
    assert_eq!(r["data"]["result"].as_array().unwrap().len(), 1, "{r}");
    assert!(
        daemon
            .log_text()
            .contains("web config: TLS, basic auth (1 users)")
    );
}

#[test]
fn client_certificates_are_required_and_verified_when_configured() {
    require_root();
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    make_certificates(dir.path());
    let web = "tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n  \
               client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.pem\n  min_version: TLS13\n";
    let with_cert: Vec<String> = ["--cert", "client.pem", "--key", "client.key"]
        .iter()
        .map(|a| {
            if a.starts_with("--") {
                a.to_string()
            } else {
                dir.path().join(a).display().to_string()
            }
        })
        .collect();
    let daemon = start_daemon(dir.path(), web, with_cert.clone());
    let args: Vec<&str> = with_cert.iter().map(String::as_str).collect();
    let (code, text) = curl(daemon.port, dir.path(), "/metrics", &args);
    assert_eq!(code, 200, "{text}");
    let (code, _) = curl(daemon.port, dir.path(), "/metrics", &[]);
    assert_eq!(code, 0, "no client certificate, no HTTP answer");
    // The right certificate over TLS 1.2, below min_version.
    let (code, _) = curl(
        daemon.port,
        dir.path(),
        "/metrics",
        &[&args[..], &["--tls-max", "1.2"]].concat(),
    );
    assert_eq!(code, 0, "TLS 1.2 refused with min_version TLS13");

    let p = |f: &str| dir.path().join(f).display().to_string();
    let prom = Prometheus::start(
        &format!(
            "  - job_name: mtls\n    scheme: https\n    tls_config:\n      ca_file: {}\n      cert_file: {}\n      key_file: {}\n\
             \x20   static_configs:\n      - targets: ['127.0.0.1:{}']\n",
            p("ca.pem"),
            p("client.pem"),
            p("client.key"),
            daemon.port
        ),
        &[],
        "500ms",
    );
    prom.wait_target("mtls", "up");
    assert!(daemon.log_text().contains("client certificates verified"));
}

#[test]
fn a_bad_web_config_stops_the_daemon_before_it_attaches() {
    require_root();
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    make_certificates(dir.path());
    let cases = [
        (
            "basic_auth_users:\n  prometheus: hunter2\n",
            "not a bcrypt hash",
        ),
        (
            "tls_server_config:\n  cert_file: missing.pem\n  key_file: server.key\n",
            "missing.pem",
        ),
        (
            "tls_server_config:\n  cert_file: server.pem\n  key_file: ca.key\n",
            "do not work together",
        ),
        ("tls_server_config: [\n", "invalid web config"),
    ];
    for (yaml, expected) in cases {
        let web = dir.path().join("web.yml");
        std::fs::write(&web, yaml).unwrap();
        let config = gapscope_testkit::write_config(&format!(
            "[daemon]\nlisten = \"127.0.0.1:{}\"\nweb_config = \"{}\"\n{SERVICE}",
            gapscope_testkit::free_port(),
            web.display()
        ));
        for command in [&["check-config"][..], &[]] {
            let out = Command::new(gapscoped_bin())
                .arg("--config")
                .arg(&*config)
                .args(command)
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{yaml}: {stderr}");
            assert!(stderr.contains(expected), "{yaml}: {stderr}");
            assert!(stderr.contains("web.yml"), "names the file: {stderr}");
            assert!(
                !stderr.contains("attached"),
                "attached before failing: {stderr}"
            );
        }
    }
    // And a good one passes check-config, saying what it turns on.
    std::fs::write(
        dir.path().join("web.yml"),
        "tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n",
    )
    .unwrap();
    let config = gapscope_testkit::write_config(&format!(
        "[daemon]\nweb_config = \"{}\"\n{SERVICE}",
        dir.path().join("web.yml").display()
    ));
    let out = Command::new(gapscoped_bin())
        .arg("--config")
        .arg(&*config)
        .arg("check-config")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("web.yml: OK (TLS)"), "{stdout}");
}
