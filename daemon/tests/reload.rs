//! SIGHUP reads the configuration again: services added, changed and
//! removed apply at once (processes matched again, counted exactly; a
//! removed service's series gone from /metrics); a
//! file that does not check keeps the running configuration, saying why;
//! other sections are named as needing a restart.

use gapscope_testkit::{Daemon, Metrics, Workload, serial};

fn service(name: &str, tag: &str) -> String {
    format!("[[service]]\nname = \"{name}\"\ncmdline = \"--tag {tag}( |$)\"\n")
}

fn calls(m: &Metrics, service: &str) -> f64 {
    m.get_or_zero(
        "gapscope_syscall_duration_seconds_count",
        &[("service", service), ("syscall", "getppid")],
    )
}

/// Rewrites the daemon's file with `daemon_extra` in `[daemon]` and
/// `services`, keeping the listen address and deep-mode socket of its
/// `original` text, and sends SIGHUP.
fn reload(daemon: &Daemon, original: &str, daemon_extra: &str, services: &str) {
    let path = daemon.config_path();
    let head = original.split("[[service]]").next().unwrap();
    let listen = head.lines().find(|l| l.starts_with("listen")).unwrap();
    let inject = &original[original.find("\n[inject]").unwrap()..];
    std::fs::write(
        path,
        format!("[daemon]\n{listen}\n{daemon_extra}\n{services}{inject}"),
    )
    .unwrap();
    hup(daemon);
}

fn hup(daemon: &Daemon) {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(daemon.child.id() as i32, libc::SIGHUP) };
}

fn reloads(m: &Metrics, result: &str) -> f64 {
    m.get_or_zero("gapscope_config_reloads_total", &[("result", result)])
}

#[test]
fn sighup_applies_services_at_once_and_keeps_a_bad_file_out() {
    let _g = serial();
    let daemon = Daemon::start(&service("a", "alpha"));
    let mut alpha = Workload::start("syscalls --getppid 5 --tag alpha");
    let mut beta = Workload::start("syscalls --getppid 7 --tag beta");
    let mut gamma = Workload::start("syscalls --getppid 11 --tag gamma");
    daemon.wait_processes("a", 1.0);
    let original = std::fs::read_to_string(daemon.config_path()).unwrap();

    // A service added: its running process is traced.
    reload(
        &daemon,
        &original,
        "",
        &(service("a", "alpha") + &service("b", "beta")),
    );
    daemon.wait_processes("b", 1.0);
    let m = daemon.wait_metrics("one reload", |m| reloads(m, "success") == 1.0);
    assert_eq!(
        m.get("gapscope_config_last_reload_successful", &[]),
        Some(1.0)
    );
    assert!(daemon.log_text().contains("services added: b;"));

    // A file that does not check: everything stays as it was.
    std::fs::write(daemon.config_path(), "[daemon]\nlisten = = 3\n").unwrap();
    hup(&daemon);
    let m = daemon.wait_metrics("a refused reload", |m| reloads(m, "failure") == 1.0);
    assert_eq!(
        m.get("gapscope_config_last_reload_successful", &[]),
        Some(0.0)
    );
    assert_eq!(reloads(&m, "success"), 1.0);
    let log = daemon.log_text();
    assert!(
        log.contains("keeping the running configuration")
            && log.contains(&daemon.config_path().display().to_string()),
        "{log}"
    );
    for s in ["a", "b"] {
        assert_eq!(
            m.get("gapscope_service_processes", &[("service", s)]),
            Some(1.0)
        );
    }

    // Service a now matches gamma: alpha is untraced, gamma traced; b
    // goes; a change to [daemon] is named as needing a restart.
    reload(
        &daemon,
        &original,
        "rescan_interval_ms = 1500",
        &service("a", "gamma"),
    );
    daemon.wait_metrics("a second reload", |m| {
        reloads(m, "success") == 2.0
            && m.get_or_zero("gapscope_service_processes", &[("service", "b")]) == 0.0
            && m.get_or_zero(
                "gapscope_service_processes_traced_total",
                &[("service", "a")],
            ) == 2.0
    });
    assert_eq!(
        daemon
            .scrape()
            .get("gapscope_config_last_reload_successful", &[]),
        Some(1.0)
    );
    for w in [&mut alpha, &mut beta, &mut gamma] {
        w.go();
    }
    let m = daemon.scrape();
    // Only gamma's 11 calls count for a; beta's 7 count nowhere.
    assert_eq!(calls(&m, "a"), 11.0);
    assert_eq!(calls(&m, "b"), 0.0);
    for w in [alpha, beta, gamma] {
        w.finish();
    }
    let log = daemon.log_text();
    assert!(
        log.contains("changed (processes matched again): a;"),
        "{log}"
    );
    assert!(
        log.contains("removed (untraced, series dropped): b"),
        "{log}"
    );
    assert!(log.contains("[daemon] changed"), "{log}");
    // A removed service leaves no series behind; a still is exported.
    assert!(!m.0.contains("service=\"b\""), "{}", m.0);
    assert_eq!(
        m.get("gapscope_service_processes", &[("service", "a")]),
        Some(1.0)
    );
    // Added back, b has its id and counters again: beta's 7 calls, made
    // while b was removed, were never counted.
    reload(
        &daemon,
        &original,
        "",
        &(service("a", "gamma") + &service("b", "beta")),
    );
    let m = daemon.wait_metrics("b added back", |m| reloads(m, "success") == 3.0);
    assert_eq!(calls(&m, "b"), 0.0, "{}", m.0);
    assert!(
        m.0.contains("gapscope_service_processes{service=\"b\"}"),
        "a scrape that counts the reload shows what it applied:\n{}\n{}",
        m.0,
        daemon.log_text()
    );
}

/// Sends one HTTP/1.1 request on `s` and reads its reply (by
/// Content-Length): the status, or None when the connection closed first.
fn request_on(s: &mut std::net::TcpStream, path: &str) -> Option<u16> {
    use std::io::{BufRead as _, BufReader, Read as _, Write as _};
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").ok()?;
    let mut r = BufReader::new(s.try_clone().ok()?);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let status = line.split_whitespace().nth(1)?.parse().ok()?;
    let mut length = 0;
    loop {
        line.clear();
        r.read_line(&mut line).ok()?;
        if line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            length = v.trim().parse().ok()?;
        }
    }
    let mut body = vec![0; length];
    r.read_exact(&mut body).ok()?;
    Some(status)
}

#[test]
fn a_reload_drops_no_connection_with_a_request_on_its_way() {
    let _g = serial();
    let daemon = Daemon::start(&service("a", "alpha"));
    let connect = || {
        let s = std::net::TcpStream::connect(("127.0.0.1", daemon.port)).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        s
    };
    // One connection that has sent nothing yet, one kept alive after a
    // first reply. The server has accepted both before the reload: it
    // answered the second, and accepts in the order of connecting.
    let mut fresh = connect();
    let mut kept = connect();
    assert_eq!(request_on(&mut kept, "/metrics"), Some(200));
    let original = std::fs::read_to_string(daemon.config_path()).unwrap();
    reload(
        &daemon,
        &original,
        "",
        &(service("a", "alpha") + &service("b", "beta")),
    );
    daemon.wait_metrics("the reload", |m| reloads(m, "success") == 1.0);
    // Each is served after the reload: a scrape racing a reload is
    // answered, not dropped.
    assert_eq!(
        request_on(&mut fresh, "/metrics"),
        Some(200),
        "a connection accepted before the reload, its request sent after, got no answer:\n{}",
        daemon.log_text()
    );
    assert_eq!(
        request_on(&mut kept, "/metrics"),
        Some(200),
        "a kept-alive connection was closed by the reload:\n{}",
        daemon.log_text()
    );
}
