//! The web config end to end: a real gapscoped serving HTTPS with basic
//! auth, checked with curl and scraped by a real Prometheus, and refused
//! without the right credentials or certificate.

use std::{path::Path, process::Command};

use gapscope_testkit::{
    Daemon, gapscoped_bin, loadgen_bin,
    prometheus::Prometheus,
    require_root, serial,
    stream_server::{ServerConfig, StreamServer},
    tls::make_certificates,
};

const SERVICE: &str = "[[service]]\nname = \"none\"\ncmdline = \"^nothing-matches-this$\"\n";
const PASSWORD: &str = "correct horse";

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

    // A connection verified before a reload gets no answer from the
    // router after it (its certificate met the old client CA): a 421 and
    // the connection closes; a new one is served.
    let (pem, key) = (dir.path().join("client.pem"), dir.path().join("client.key"));
    let mut kept = KeptAlive::start(
        daemon.port,
        &dir.path().join("ca.pem"),
        "",
        Some((&pem, &key)),
    );
    let first = kept.reply();
    assert_eq!(first[0], "200", "{first:?}");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(daemon.child.id() as i32, libc::SIGHUP) };
    let reloaded = "gapscope_config_reloads_total{result=\"success\"} 1";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !curl(daemon.port, dir.path(), "/metrics", &args)
        .1
        .contains(reloaded)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the reload never counted"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let second = kept.again();
    assert_eq!(
        second,
        ["421", "close", first[2].as_str()],
        "the connection verified before the reload (status, Connection, local port)"
    );
}

/// gapscope-loadgen against the stream server, posting its phases to the
/// daemon at `gapscoped` with `args`, GAPSCOPED_PASSWORD set to
/// `password`: (exit code, stderr, results.json, every byte it wrote).
fn loadgen_run(
    gapscoped: &str,
    args: &[String],
    password: Option<&str>,
) -> (i32, String, serde_json::Value, String) {
    let server = StreamServer::start(ServerConfig::default());
    let out = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(loadgen_bin());
    cmd.args(["--url", &server.url("/v1/completions")])
        .args([
            "--phase",
            "warm=constant:10:1s",
            "--phase",
            "cooldown=silence:0.5s",
        ])
        .args(["--max-tokens", "4", "--no-plots", "--quiet"])
        .args(["--gapscoped", gapscoped])
        .args(["--telemetry", &format!("gapscoped={gapscoped}")])
        .args(args)
        .arg("--out")
        .arg(out.path())
        .env_remove("GAPSCOPED_PASSWORD");
    if let Some(p) = password {
        cmd.env("GAPSCOPED_PASSWORD", p);
    }
    let o = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    let mut everything = String::from_utf8_lossy(&o.stdout).into_owned() + &stderr;
    for entry in std::fs::read_dir(out.path()).unwrap() {
        everything += &String::from_utf8_lossy(&std::fs::read(entry.unwrap().path()).unwrap());
    }
    let results = std::fs::read_to_string(out.path().join("results.json"))
        .map(|t| serde_json::from_str(&t).unwrap())
        .unwrap_or_default();
    (o.status.code().unwrap_or(-1), stderr, results, everything)
}

/// The annotations a daemon holds for `run_id`, read over HTTPS.
fn annotations_of(port: u16, dir: &Path, auth: &[&str], run_id: &str) -> Vec<String> {
    let (code, text) = curl(port, dir, "/api/v1/annotations", auth);
    assert_eq!(code, 200, "{text}");
    let body = &text[text.find("\r\n\r\n").map_or(0, |i| i + 4)..];
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    v["annotations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["run_id"] == run_id)
        .map(|a| {
            format!(
                "{} {}",
                a["phase"].as_str().unwrap(),
                a["event"].as_str().unwrap()
            )
        })
        .collect()
}

#[test]
fn the_load_generator_reaches_gapscoped_through_its_web_config() {
    require_root();
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    make_certificates(dir.path());
    let p = |f: &str| dir.path().join(f).display().to_string();
    let phases = ["warm start", "warm end", "cooldown start", "cooldown end"];

    // TLS and basic auth, as the README's web config shows.
    let hash = gapscope_testkit::hash_password(PASSWORD, 6);
    let web = format!(
        "tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n\
         basic_auth_users:\n  prometheus: '{hash}'\n"
    );
    let creds = format!("prometheus:{PASSWORD}");
    let daemon = start_daemon(dir.path(), &web, vec!["-u".into(), creds.clone()]);
    let url = format!("https://127.0.0.1:{}", daemon.port);
    let args: Vec<String> = ["--cacert", &p("ca.pem"), "--gapscoped-user", "prometheus"]
        .map(String::from)
        .to_vec();
    let (code, stderr, results, everything) = loadgen_run(&url, &args, Some(PASSWORD));
    assert_eq!(code, 0, "{stderr}");
    let run_id = results["run"]["run_id"].as_str().unwrap();
    assert_eq!(
        annotations_of(daemon.port, dir.path(), &["-u", &creds], run_id),
        phases
    );
    // Telemetry was read through the same door: readings where NVML has
    // them, else the exporter answered and lacked the GPU series.
    let source = &results["telemetry"]["source"];
    assert_eq!(source["url"], format!("{url}/metrics"));
    if source["samples"].as_u64() == Some(0) {
        let e = source["last_error"].as_str().unwrap_or_default();
        assert!(e.contains("gapscope_gpu_power_watts"), "{source}");
    }
    assert!(!everything.contains(PASSWORD), "the password leaked");

    // A wrong password: the run goes on, and says what to fix.
    let (code, stderr, results, _) = loadgen_run(&url, &args, Some("wrong"));
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("HTTP 401") && stderr.contains("--gapscoped-user"),
        "{stderr}"
    );
    let run_id = results["run"]["run_id"].as_str().unwrap();
    assert!(annotations_of(daemon.port, dir.path(), &["-u", &creds], run_id).is_empty());
    // No password at all, or basic auth over plain HTTP, stops it first.
    let (code, stderr, ..) = loadgen_run(&url, &args, None);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("GAPSCOPED_PASSWORD"), "{stderr}");
    let plain = format!("http://127.0.0.1:{}", daemon.port);
    let (code, stderr, ..) = loadgen_run(&plain, &args, Some(PASSWORD));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("clear text"), "{stderr}");
    drop(daemon);

    // Mutual TLS: the client certificate opens the door.
    let web = "tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n  \
               client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.pem\n";
    let cert = ["--cert", &p("client.pem"), "--key", &p("client.key")].map(String::from);
    let daemon = start_daemon(dir.path(), web, cert.to_vec());
    let url = format!("https://127.0.0.1:{}", daemon.port);
    let args: Vec<String> = [&["--cacert".to_string(), p("ca.pem")][..], &cert].concat();
    let (code, stderr, results, _) = loadgen_run(&url, &args, None);
    assert_eq!(code, 0, "{stderr}");
    let run_id = results["run"]["run_id"].as_str().unwrap();
    let auth: Vec<&str> = cert.iter().map(String::as_str).collect();
    assert_eq!(
        annotations_of(daemon.port, dir.path(), &auth, run_id),
        phases
    );
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

/// Waits until a scrape through `dir`'s CA with `creds` shows `reloads`
/// reloads with `result`; the scrape.
fn wait_reloads(port: u16, dir: &Path, creds: &str, result: &str, reloads: f64) -> String {
    let line = format!("gapscope_config_reloads_total{{result=\"{result}\"}} {reloads}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (code, text) = curl(port, dir, "/metrics", &["-u", creds]);
        if code == 200 && text.contains(&line) {
            return text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no `{line}` through {}: {code}\n{text}",
            dir.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A kept-alive HTTPS client: one request with `user:password` (none when
/// empty; a client certificate and key when given), then, at a line on
/// its stdin, another on the same connection; for each it prints the
/// status, the Connection header and its local port.
const KEPT_ALIVE_CLIENT: &str = r#"
import base64, http.client, ssl, sys
port, ca, creds = int(sys.argv[1]), sys.argv[2], sys.argv[3]
ctx = ssl.create_default_context(cafile=ca)
if len(sys.argv) > 5:
    ctx.load_cert_chain(sys.argv[4], sys.argv[5])
c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
auth = {"Authorization": "Basic " + base64.b64encode(creds.encode()).decode()} if creds else {}
for i in range(2):
    if i:
        sys.stdin.readline()
    c.request("GET", "/metrics", headers=auth)
    local = c.sock.getsockname()[1]
    r = c.getresponse()
    r.read()
    print(r.status, r.getheader("Connection") or "-", local, flush=True)
"#;

/// `KEPT_ALIVE_CLIENT` running: each reply as (status, Connection
/// header, local port).
struct KeptAlive {
    child: std::process::Child,
    replies: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
}

impl KeptAlive {
    /// Connects to `port` through `ca` with `creds` (and `cert`, a
    /// certificate and its key) and makes the first request.
    fn start(port: u16, ca: &Path, creds: &str, cert: Option<(&Path, &Path)>) -> KeptAlive {
        let mut command = Command::new(gapscope_testkit::pyenv_python(11));
        command
            .args(["-c", KEPT_ALIVE_CLIENT, &port.to_string()])
            .arg(ca)
            .arg(creds);
        if let Some((pem, key)) = cert {
            command.arg(pem).arg(key);
        }
        let mut child = command
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let replies =
            std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
        KeptAlive { child, replies }
    }

    fn reply(&mut self) -> Vec<String> {
        let line = self.replies.next().unwrap().unwrap();
        line.split(' ').map(String::from).collect()
    }

    /// The second request, on the same connection.
    fn again(mut self) -> Vec<String> {
        std::io::Write::write_all(self.child.stdin.as_mut().unwrap(), b"\n").unwrap();
        let reply = self.reply();
        self.child.wait().unwrap();
        reply
    }
}

#[test]
fn a_reload_rotates_the_certificate_and_the_passwords_for_new_connections() {
    require_root();
    let _g = serial();
    let (old, new) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    make_certificates(old.path());
    make_certificates(new.path());
    let web = |hash: &str| {
        format!(
            "tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n\
             basic_auth_users:\n  prometheus: '{hash}'\n"
        )
    };
    let (first, second) = ("first password", "second password");
    let daemon = start_daemon(
        old.path(),
        &web(&gapscope_testkit::hash_password(first, 4)),
        vec!["-u".into(), format!("prometheus:{first}")],
    );
    let (before, after) = (
        format!("prometheus:{first}"),
        format!("prometheus:{second}"),
    );
    assert_eq!(
        curl(daemon.port, old.path(), "/metrics", &["-u", &before]).0,
        200
    );
    let hup = || {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(daemon.child.id() as i32, libc::SIGHUP) };
    };
    // A client kept alive across the reload, with the old password.
    let mut kept = KeptAlive::start(daemon.port, &old.path().join("ca.pem"), &before, None);
    let first_reply = kept.reply();
    assert_eq!(first_reply[0], "200", "{first_reply:?}");

    // A renewed certificate (from another CA) and a new password, as a
    // certificate robot and an operator would leave them; then a reload.
    for f in ["server.pem", "server.key"] {
        std::fs::copy(new.path().join(f), old.path().join(f)).unwrap();
    }
    std::fs::write(
        old.path().join("web.yml"),
        web(&gapscope_testkit::hash_password(second, 4)),
    )
    .unwrap();
    hup();
    wait_reloads(daemon.port, new.path(), &after, "success", 1.0);
    // On the connection made before it, the old password is refused at
    // once, and the connection closes (its handshake showed the old
    // certificate).
    let second_reply = kept.again();
    assert_eq!(
        second_reply,
        ["401", "close", first_reply[2].as_str()],
        "the kept-alive connection, after the reload (status, Connection, local port)"
    );
    let (code, text) = curl(daemon.port, old.path(), "/metrics", &["-u", &after]);
    assert_eq!(code, 0, "the old CA no longer verifies the server: {text}");
    let (code, _) = curl(daemon.port, new.path(), "/metrics", &["-u", &before]);
    assert_eq!(code, 401, "the old password is refused");
    assert!(
        daemon
            .log_text()
            .contains("web config read again: TLS, basic auth (1 users)")
    );

    // A web config that does not load keeps the running one.
    std::fs::write(
        old.path().join("web.yml"),
        "basic_auth_users:\n  prometheus: hunter2\n",
    )
    .unwrap();
    hup();
    wait_reloads(daemon.port, new.path(), &after, "failure", 1.0);
    assert!(
        daemon.log_text().contains("not a bcrypt hash"),
        "{}",
        daemon.log_text()
    );
    // Nor may a reload weaken the protection: TLS off, or basic auth off.
    std::fs::write(
        old.path().join("web.yml"),
        format!(
            "basic_auth_users:\n  prometheus: '{}'\n",
            gapscope_testkit::hash_password(second, 4)
        ),
    )
    .unwrap();
    hup();
    wait_reloads(daemon.port, new.path(), &after, "failure", 2.0);
    std::fs::write(
        old.path().join("web.yml"),
        "tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n",
    )
    .unwrap();
    hup();
    let text = wait_reloads(daemon.port, new.path(), &after, "failure", 3.0);
    assert!(
        text.contains("gapscope_config_last_reload_successful 0"),
        "{text}"
    );
    let log = daemon.log_text();
    assert!(
        log.contains("would change TLS off; a reload never weakens"),
        "{log}"
    );
    assert!(log.contains("would change basic auth off;"), "{log}");
    // The running protection stands: no credentials, no entry.
    assert_eq!(curl(daemon.port, new.path(), "/metrics", &[]).0, 401);
    assert_eq!(
        curl(daemon.port, new.path(), "/metrics", &["-u", &after]).0,
        200
    );
}
