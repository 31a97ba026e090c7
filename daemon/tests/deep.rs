//! CUPTI deep mode's socket against a sender with known content
//! (`gapscope-wire-sender`: the wire format's sending side, no CUPTI): the
//! records become exact per-service statistics, bad peers are dropped and
//! counted without harm to what was taken or to other peers, and peers
//! are admitted by their credentials.

use std::{os::unix::fs::PermissionsExt as _, process::Command, time::Duration};

use gapscope_testkit::{
    Daemon, Metrics, Workload, http_get, promtool_check, serial, wire_sender_bin,
};

struct Deep {
    daemon: Daemon,
    socket: String,
}

fn start(extra: &str) -> Deep {
    let socket = format!(
        "/tmp/gapscope-deep-{}-{}.sock",
        std::process::id(),
        rand_suffix()
    );
    let daemon = Daemon::start_with(
        "[[service]]\nname = \"deep\"\ncmdline = \"gapscope-wire-sender\"\n",
        &format!("\n[inject]\nsocket = \"{socket}\"\nreorder_window_ms = 100\n{extra}"),
    );
    Deep { daemon, socket }
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
}

fn sender(socket: &str, scenario: &[&str]) -> Workload {
    let mut args = vec![socket];
    args.extend_from_slice(scenario);
    Workload::spawn(&wire_sender_bin(), &args)
}

fn wait_for(daemon: &Daemon, what: &str, ready: impl Fn(&Metrics) -> bool) -> Metrics {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let m = daemon.scrape();
        if ready(&m) {
            return m;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}:\n{}\n{}",
            m.0,
            daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

const US: f64 = 1e-6;

/// Sends the `known` scenario and checks every statistic against it.
fn known(d: &Deep) -> Workload {
    let mut w = sender(&d.socket, &["known"]);
    d.daemon.wait_processes("deep", 1.0);
    assert_eq!(w.go(), vec!["sent true"]);
    let s = [("service", "deep"), ("device", "0")];
    let m = wait_for(&d.daemon, "the busy time never settled", |m| {
        m.get_or_zero("gapscope_gpu_busy_seconds_total", &s) > 0.0
    });
    let class = |c: &'static str| [s[0], s[1], ("class", c)];
    let get = |name: &str, l: &[(&str, &str)]| m.get_or_zero(name, l);
    let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
    assert_eq!(
        get("gapscope_gpu_kernel_duration_seconds_count", &class("gemm")),
        50.0
    );
    assert_eq!(
        get("gapscope_gpu_kernel_duration_seconds_count", &class("norm")),
        50.0
    );
    assert!(close(
        get("gapscope_gpu_kernel_duration_seconds_sum", &class("gemm")),
        50.0 * 50.0 * US
    ));
    assert!(close(
        get("gapscope_gpu_kernel_duration_seconds_sum", &class("norm")),
        50.0 * 20.0 * US
    ));
    // Kernels and copies, none overlapping: their sum.
    let busy = get("gapscope_gpu_busy_seconds_total", &s);
    assert!(close(busy, (2500.0 + 1000.0 + 100.0) * US), "busy {busy}");
    // 50 gaps after a gemm (50 µs), 49 after a norm (80 µs), 80 µs to the
    // first copy, 9 between copies (90 µs).
    assert_eq!(get("gapscope_gpu_idle_gap_seconds_count", &s), 109.0);
    let gaps = get("gapscope_gpu_idle_gap_seconds_sum", &s);
    assert!(
        close(gaps, (50.0 * 50.0 + 49.0 * 80.0 + 80.0 + 9.0 * 90.0) * US),
        "gaps {gaps}"
    );
    assert_eq!(get("gapscope_gpu_launch_latency_seconds_count", &s), 100.0);
    assert!(close(
        get("gapscope_gpu_launch_latency_seconds_sum", &s),
        100.0 * 5.0 * US
    ));
    assert_eq!(
        get(
            "gapscope_gpu_copy_bytes_total",
            &[s[0], s[1], ("direction", "device_to_host")]
        ),
        10.0 * 1048576.0
    );
    assert_eq!(get("gapscope_gpu_sync_wait_seconds_count", &s), 1.0);
    assert_eq!(get("gapscope_inject_records_total", &[]), 211.0);
    assert_eq!(
        get("gapscope_inject_records_dropped_total", &[("by", "sender")]),
        3.0
    );
    assert_eq!(
        get("gapscope_inject_frames_total", &[("kind", "records")]),
        1.0
    );
    assert_eq!(
        get(
            "gapscope_inject_clock_mode_connections",
            &[("mode", "offset")]
        ),
        1.0
    );
    assert_eq!(get("gapscope_inject_connections", &[]), 1.0);
    if let Err(report) = promtool_check(&m.0) {
        panic!("promtool: {report}\n{}", m.0);
    }

    let body = http_get(d.daemon.port, "/api/v1/kernels?service=deep").unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let k = v["kernels"].as_array().unwrap();
    assert_eq!(k.len(), 2, "{body}");
    assert_eq!(
        k[0]["name"],
        "ampere_bf16_s16816gemm_bf16_128x128_ldg8_f2f_tn"
    );
    assert_eq!(k[0]["class"], "gemm");
    assert_eq!(k[0]["total_ns"], 2_500_000);
    // Every gap is under the 1 ms timeline threshold: one busy stretch
    // from the first kernel to the last copy.
    let body = http_get(
        d.daemon.port,
        "/api/v1/intervals?service=deep&kind=gpu_busy",
    )
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let i = v["intervals"].as_array().unwrap();
    assert_eq!(i.len(), 1, "{body}");
    assert_eq!(i[0]["duration_ns"], 10_910_000);

    // The attribution books the same stretches: every gap, unbridged.
    // The sender launches through no probed library, so no launching
    // thread is known, and gaps under the 1 ms resolution with nothing
    // recorded are the launch path: all 109 go to launch_overhead.
    let a = [s[0], s[1], ("source", "cupti")];
    let m = wait_for(&d.daemon, "the gaps were never attributed", |m| {
        m.get_or_zero("gapscope_gpu_idle_gaps_total", &a) == 109.0
    });
    let idle = |cause: &str| {
        m.get_or_zero(
            "gapscope_gpu_idle_seconds_total",
            &[a[0], a[1], a[2], ("cause", cause)],
        )
    };
    assert!(close(idle("launch_overhead"), gaps), "{}", m.0);
    assert_eq!(idle("python_cpu"), 0.0);
    let timeline_busy = m.get_or_zero("gapscope_gpu_timeline_busy_seconds_total", &a);
    assert!(close(timeline_busy, busy), "{timeline_busy} vs {busy}");
    // Busy + idle by cause = the wall time from the first kernel's start
    // to the last copy's end.
    assert!(close(
        timeline_busy + idle("launch_overhead"),
        10_910.0 * US
    ));
    let body = http_get(d.daemon.port, "/api/v1/explain?service=deep&window=60s").unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["gpu"][0]["device"], "0", "{body}");
    assert_eq!(v["gpu"][0]["source"], "cupti", "{body}");
    assert_eq!(v["gpu"][0]["gaps"], 109, "{body}");
    // The closed gaps are all launch overhead; once the sender has been
    // quiet for a second, the device's idle stretch since is an open gap,
    // counted in the window too (with no launching thread known:
    // unobserved).
    let by_cause = |cause: &str| {
        v["gpu"][0]["idle_by_cause"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["cause"] == cause)
            .map(|c| c["seconds"].as_f64().unwrap())
            .sum::<f64>()
    };
    assert!(close(by_cause("launch_overhead"), gaps), "{body}");
    let open = v["gpu"][0]["open_gap"]["seconds"].as_f64().unwrap_or(0.0);
    let idle = v["gpu"][0]["idle_seconds"].as_f64().unwrap();
    assert!(
        (idle - by_cause("launch_overhead") - open).abs() < 1e-6,
        "{body}"
    );
    assert_eq!(v["kernels"]["top"][0]["class"], "gemm", "{body}");
    w
}

#[test]
fn known_records_become_exact_statistics() {
    let _g = serial();
    let d = start("");
    let meta = std::fs::metadata(&d.socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    known(&d).finish();
    wait_for(&d.daemon, "the connection was never closed", |m| {
        m.get_or_zero("gapscope_inject_connections", &[]) == 0.0
    });
}

#[test]
fn bad_peers_are_dropped_without_harm() {
    let _g = serial();
    let d = start("max_frames_per_second = 100\n");
    let good = known(&d);
    for (scenario, reason) in [("garbage", "malformed"), ("no-hello", "no_hello")] {
        let mut w = sender(&d.socket, &[scenario]);
        w.go();
        wait_for(&d.daemon, scenario, |m| {
            m.get_or_zero("gapscope_inject_rejected_total", &[("reason", reason)]) == 1.0
        });
        w.finish();
    }
    let mut w = sender(&d.socket, &["truncated"]);
    w.go();
    w.finish();
    let mut w = sender(&d.socket, &["flood", "5000"]);
    w.go();
    let m = wait_for(&d.daemon, "the flood was not limited", |m| {
        m.get_or_zero("gapscope_inject_frames_over_rate_total", &[]) >= 4000.0
    });
    w.finish();
    // What the good peer sent is all still there, and it is still connected.
    let s = [("service", "deep"), ("device", "0"), ("class", "gemm")];
    assert_eq!(
        m.get_or_zero("gapscope_gpu_kernel_duration_seconds_count", &s),
        50.0
    );
    assert!(m.get_or_zero("gapscope_inject_connections", &[]) >= 1.0);
    drop(good);
    let log = d.daemon.log_text();
    assert!(
        log.contains("sent a bad frame (not a gapscope frame"),
        "{log}"
    );
    assert!(log.contains("did not start with a hello"), "{log}");
}

#[test]
fn peers_are_admitted_by_their_credentials() {
    let _g = serial();
    let d = start("");
    // Open the file to anyone, so only the credential check stands.
    std::fs::set_permissions(&d.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let as_nobody = |socket: &str| {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(wire_sender_bin())
            .args([socket, "known"]);
        cmd
    };
    let mut w = Workload::spawn_command(as_nobody(&d.socket));
    w.go();
    wait_for(&d.daemon, "nobody was not refused", |m| {
        m.get_or_zero(
            "gapscope_inject_rejected_total",
            &[("reason", "peer_credentials")],
        ) == 1.0
    });
    w.finish();
    assert!(d.daemon.log_text().contains("uid 65534"));
    drop(d);

    let d = start("allowed_uids = [65534]\n");
    std::fs::set_permissions(&d.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let mut w = Workload::spawn_command(as_nobody(&d.socket));
    w.go();
    wait_for(&d.daemon, "an allowed uid was not admitted", |m| {
        m.get_or_zero("gapscope_inject_records_total", &[]) == 211.0
    });
    w.finish();
}

#[test]
fn a_live_socket_is_not_taken_over_and_a_stale_one_is() {
    let _g = serial();
    let d = start("");
    let config = gapscope_testkit::write_config(&format!(
        "[daemon]\nlisten = \"127.0.0.1:{}\"\n[inject]\nsocket = \"{}\"\n[[service]]\nname = \"x\"\ncmdline = \"^none$\"\n",
        gapscope_testkit::free_port(),
        d.socket
    ));
    let second = Command::new(gapscope_testkit::gapscoped_bin())
        .arg("--config")
        .arg(&*config)
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(2));
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("another process already listens on"), "{err}");
    // Killed without cleanup: its socket file stays, and the next start
    // replaces it.
    let socket = d.socket.clone();
    let mut daemon = d.daemon;
    let _ = daemon.child.kill();
    let _ = daemon.child.wait();
    assert!(std::path::Path::new(&socket).exists());
    let again = Daemon::start_with(
        "[[service]]\nname = \"deep\"\ncmdline = \"gapscope-wire-sender\"\n",
        &format!("\n[inject]\nsocket = \"{socket}\"\n"),
    );
    assert!(again.log_text().contains("deep mode: listening on"));
}

// The injection library's transport (inject/src/transport.rs) against the
// real daemon: it must never block its caller, account for every record
// (sent or dropped), and find the daemon again whenever it comes back.

struct Probe {
    w: Workload,
}

impl Probe {
    fn start(socket: &str, records: u64, rate: u64) -> Probe {
        let w = Workload::spawn(
            &gapscope_testkit::transport_probe_bin(),
            &[socket, &records.to_string(), &rate.to_string()],
        );
        Probe { w }
    }

    /// Sends "go" (the sending starts).
    fn go(&mut self) {
        self.w.send_go();
    }

    /// Waits for the end and returns its counts.
    fn counts(&mut self) -> std::collections::HashMap<String, u64> {
        let counts = self
            .w
            .wait_output()
            .iter()
            .filter_map(|l| {
                let (k, v) = l.split_once(' ')?;
                Some((k.to_string(), v.parse().ok()?))
            })
            .collect();
        eprintln!("transport: {counts:?}");
        counts
    }
}

fn probe_daemon(socket: &str) -> Daemon {
    Daemon::start_with(
        "[[service]]\nname = \"deep\"\ncmdline = \"gapscope-inject-transport-probe\"\n",
        &format!("\n[inject]\nsocket = \"{socket}\"\nreorder_window_ms = 100\n"),
    )
}

fn records_in(d: &Daemon) -> f64 {
    d.scrape().get_or_zero("gapscope_inject_records_total", &[])
}

#[test]
fn transport_waits_quietly_for_a_daemon_that_starts_late() {
    let _g = serial();
    let socket = format!("/tmp/gapscope-late-{}.sock", rand_suffix());
    let mut p = Probe::start(&socket, 3000, 1500);
    p.go();
    std::thread::sleep(Duration::from_millis(600));
    let d = probe_daemon(&socket);
    let c = p.counts();
    assert_eq!(
        c["sent"] + c["dropped"] + c["buffered"],
        c["made"],
        "every record accounted: {c:?}"
    );
    assert!(c["dropped"] > 0 && c["sent"] > 0, "{c:?}");
    assert_eq!(c["connects"], 1, "{c:?}");
    assert!(c["slowest_call_us"] < 20_000, "a send call blocked: {c:?}");
    // The daemon took exactly what was sent, and heard about the rest.
    wait_for(&d, "the daemon did not get what was sent", |m| {
        m.get_or_zero("gapscope_inject_records_total", &[]) == c["sent"] as f64
    });
    let m = d.scrape();
    assert_eq!(
        m.get_or_zero("gapscope_inject_records_dropped_total", &[("by", "sender")]),
        c["dropped"] as f64
    );
    p.w.finish();
}

#[test]
fn transport_outlives_ten_daemon_restarts_and_says_so_once_each() {
    const RESTARTS: usize = 10;
    let _g = serial();
    let socket = format!("/tmp/gapscope-restart-{}.sock", rand_suffix());
    let mut daemon = probe_daemon(&socket);
    // 75 s of records: time for ten restarts on a slow machine (each
    // takes a daemon start and the sender's reconnect backoff).
    let mut cmd = Command::new(gapscope_testkit::transport_probe_bin());
    cmd.args([socket.as_str(), "150000", "2000"])
        .stderr(std::process::Stdio::piped());
    let mut p = Probe {
        w: Workload::spawn_command(cmd),
    };
    daemon.wait_processes("deep", 1.0);
    p.go();
    for round in 0..=RESTARTS {
        // Each daemon hears from the sender before it goes.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while records_in(&daemon) == 0.0 {
            assert!(
                std::time::Instant::now() < deadline,
                "daemon {round} got nothing:\n{}",
                daemon.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        if round == RESTARTS {
            break;
        }
        // Long enough for the sender to count the connection as lasting
        // (200 ms), as a daemon that ran for a while would be.
        std::thread::sleep(Duration::from_millis(500));
        let _ = daemon.child.kill();
        let _ = daemon.child.wait();
        daemon = probe_daemon(&socket);
    }
    let c = p.counts();
    assert_eq!(c["sent"] + c["dropped"] + c["buffered"], c["made"], "{c:?}");
    assert!(
        c["disconnects"] >= RESTARTS as u64 && c["connects"] > RESTARTS as u64,
        "{c:?}"
    );
    assert!(c["slowest_call_us"] < 20_000, "a send call blocked: {c:?}");
    let mut stderr = p.w.child.stderr.take().unwrap();
    p.w.finish();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut err).unwrap();
    // A line when a daemon goes, one while none listens and one when the
    // next has lasted 200 ms: never a line per record or per retry. (A
    // SIGKILL can give two disconnects: the dying listener still accepts
    // for a moment; that short connection is not news.)
    let closed = err.matches("closed the connection").count() as u64;
    let absent = err.matches("is not listening").count() as u64;
    let back = err.matches("again; ").count() as u64;
    assert!(
        closed >= RESTARTS as u64 && closed <= c["disconnects"],
        "{closed} lines for {} disconnects:\n{err}",
        c["disconnects"]
    );
    assert!(absent <= closed, "{err}");
    assert_eq!(back, closed, "{err}");
}

#[test]
fn transport_drops_and_counts_when_the_daemon_stalls() {
    let _g = serial();
    let socket = format!("/tmp/gapscope-stall-{}.sock", rand_suffix());
    let d = probe_daemon(&socket);
    // 600,000 records (24 MB) in 3 s while the daemon is stopped: more
    // than the socket and the 8 MiB buffer hold.
    let mut p = Probe::start(&socket, 600_000, 200_000);
    d.wait_processes("deep", 1.0);
    std::thread::sleep(Duration::from_millis(300));
    let pid = d.child.id() as i32;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    p.go();
    let c = p.counts();
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    assert_eq!(c["sent"] + c["dropped"] + c["buffered"], c["made"], "{c:?}");
    assert!(c["dropped"] > 0, "nothing dropped while stalled: {c:?}");
    assert!(c["slowest_call_us"] < 20_000, "a send call blocked: {c:?}");
    assert!(c["buffered"] > 0, "{c:?}");
    // What was written, and what waited, reaches the daemon once it runs
    // again: nothing more is lost.
    wait_for(&d, "the daemon lost written records", |m| {
        m.get_or_zero("gapscope_inject_records_total", &[]) == (c["sent"] + c["buffered"]) as f64
    });
    p.w.finish();
}

/// A throwaway group with one member and one outsider, removed on drop.
struct Accounts {
    group: String,
    member: String,
    outsider: String,
}

impl Accounts {
    /// None when this host cannot add users (no useradd).
    fn create() -> Option<Accounts> {
        let tag = std::process::id();
        let a = Accounts {
            group: format!("gs-inj-{tag}"),
            member: format!("gs-inj-m-{tag}"),
            outsider: format!("gs-inj-o-{tag}"),
        };
        let run = |args: &[&str]| {
            Command::new(args[0])
                .args(&args[1..])
                .status()
                .is_ok_and(|s| s.success())
        };
        if !run(&["groupadd", "--system", &a.group]) {
            return None;
        }
        let user = |name: &str, extra: &[&str]| {
            let mut args = vec![
                "useradd",
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                "--user-group",
            ];
            args.extend_from_slice(extra);
            args.push(name);
            run(&args)
        };
        let made = user(&a.member, &["--groups", &a.group]) && user(&a.outsider, &[]);
        made.then_some(a)
    }

    /// `wire_sender SOCKET known` as `user` with its groups, stderr kept.
    fn sender_as(user: &str, socket: &str) -> Command {
        let mut cmd = Command::new("setpriv");
        cmd.args([
            &format!("--reuid={user}"),
            &format!("--regid={user}"),
            "--init-groups",
        ])
        .arg(wire_sender_bin())
        .args([socket, "known"])
        .stderr(std::process::Stdio::piped());
        cmd
    }
}

impl Drop for Accounts {
    fn drop(&mut self) {
        for user in [&self.member, &self.outsider] {
            let _ = Command::new("userdel").arg(user).status();
        }
        let _ = Command::new("groupdel").arg(&self.group).status();
    }
}

#[test]
fn a_non_root_member_of_the_socket_group_connects_and_an_outsider_cannot() {
    use std::os::unix::fs::MetadataExt as _;
    let _g = serial();
    let Some(accounts) = Accounts::create() else {
        gapscope_testkit::skip("groupadd/useradd cannot add a throwaway group and users here");
        return;
    };
    let d = start(&format!("group = \"{}\"\n", accounts.group));
    let meta = std::fs::metadata(&d.socket).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o660, "the default mode");
    let group_line = std::fs::read_to_string("/etc/group").unwrap();
    let gid: u32 = group_line
        .lines()
        .find(|l| l.starts_with(&format!("{}:", accounts.group)))
        .and_then(|l| l.split(':').nth(2))
        .and_then(|g| g.parse().ok())
        .unwrap();
    assert_eq!(meta.gid(), gid, "the socket file belongs to [inject] group");

    // The member's primary group is its own: it gets in by the
    // supplementary one, through the file and the credential check both.
    let mut w = Workload::spawn_command(Accounts::sender_as(&accounts.member, &d.socket));
    w.go();
    wait_for(&d.daemon, "the group's member was not admitted", |m| {
        m.get_or_zero("gapscope_inject_records_total", &[]) == 211.0
    });
    w.finish();

    // The outsider is stopped by the file's mode before gapscoped sees it.
    let mut w = Workload::spawn_command(Accounts::sender_as(&accounts.outsider, &d.socket));
    w.send_go();
    let status = w.child.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut w.child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success());
    assert!(err.contains("Permission denied"), "{err}");
    let m = d.daemon.scrape();
    assert_eq!(m.get_or_zero("gapscope_inject_records_total", &[]), 211.0);
    assert_eq!(
        m.get_or_zero(
            "gapscope_inject_rejected_total",
            &[("reason", "peer_credentials")]
        ),
        0.0
    );

    // With the file open to anyone, the credential check alone refuses him.
    std::fs::set_permissions(&d.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let mut w = Workload::spawn_command(Accounts::sender_as(&accounts.outsider, &d.socket));
    w.go();
    wait_for(&d.daemon, "the outsider was not refused", |m| {
        m.get_or_zero(
            "gapscope_inject_rejected_total",
            &[("reason", "peer_credentials")],
        ) == 1.0
    });
    w.finish();
}

#[test]
fn the_socket_group_and_mode_are_checked_at_start() {
    let _g = serial();
    for (inject, problem) in [
        (
            "group = \"no-such-group-gapscope\"",
            "inject.group = \"no-such-group-gapscope\" is not a group on this host",
        ),
        (
            "mode = \"0755\"",
            "inject.mode = \"0755\" is not a socket file's mode",
        ),
        (
            "mode = \"0440\"",
            "inject.mode = \"0440\" is not a socket file's mode",
        ),
        (
            "mode = \"rw-rw----\"",
            "inject.mode = \"rw-rw----\" is not an octal mode",
        ),
        ("group = 1.5", "inject"),
    ] {
        let config = gapscope_testkit::write_config(&format!(
            "[inject]\nsocket = \"/tmp/gapscope-mode-{}.sock\"\n{inject}\n[[service]]\nname = \"x\"\ncmdline = \"^none$\"\n",
            std::process::id()
        ));
        let out = Command::new(gapscope_testkit::gapscoped_bin())
            .arg("check-config")
            .arg("--config")
            .arg(&*config)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{inject}: {err}");
        assert!(err.contains(problem), "{inject}: {err}");
    }
}

#[test]
fn silent_peers_are_dropped_after_the_hello_deadline_and_connect_bursts_leave_nothing() {
    use std::{io::Read as _, os::unix::net::UnixStream};
    let _g = serial();
    let d = start("max_peers = 8\n");
    // Eight silent peers take every slot; a ninth is refused.
    let connected = std::time::Instant::now();
    let mut silent: Vec<UnixStream> = (0..8)
        .map(|_| UnixStream::connect(&d.socket).unwrap())
        .collect();
    wait_for(&d.daemon, "the silent peers were not counted", |m| {
        m.get_or_zero("gapscope_inject_connections", &[]) == 8.0
    });
    let mut ninth = UnixStream::connect(&d.socket).unwrap();
    let mut byte = [0u8; 1];
    assert_eq!(
        ninth.read(&mut byte).unwrap(),
        0,
        "the ninth is closed at once"
    );
    // Each silent one is closed by the daemon, never before the deadline.
    for s in &mut silent {
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        assert_eq!(s.read(&mut byte).unwrap(), 0);
    }
    assert!(connected.elapsed() >= Duration::from_secs(5));
    let m = wait_for(&d.daemon, "the slots were not freed", |m| {
        m.get_or_zero("gapscope_inject_connections", &[]) == 0.0
    });
    let rejected = |m: &Metrics, reason| {
        m.get_or_zero("gapscope_inject_rejected_total", &[("reason", reason)])
    };
    assert_eq!(rejected(&m, "no_hello"), 8.0);
    assert_eq!(rejected(&m, "too_many_peers"), 1.0);
    assert!(d.daemon.log_text().contains("sent no hello within 5s"));

    // A thousand connects as fast as they go, each closed at once: all
    // accepted, none left behind, and a real sender still gets in.
    let accepted = m.get_or_zero("gapscope_inject_connections_total", &[]);
    for _ in 0..1000 {
        drop(UnixStream::connect(&d.socket).unwrap());
    }
    wait_for(
        &d.daemon,
        "the burst was not all accepted and closed",
        |m| {
            m.get_or_zero("gapscope_inject_connections_total", &[]) - accepted
                + m.get_or_zero(
                    "gapscope_inject_rejected_total",
                    &[("reason", "too_many_peers")],
                )
                - 1.0
                == 1000.0
                && m.get_or_zero("gapscope_inject_connections", &[]) == 0.0
        },
    );
    let mut w = sender(&d.socket, &["known"]);
    w.go();
    wait_for(&d.daemon, "a sender after the burst was not served", |m| {
        m.get_or_zero("gapscope_inject_records_total", &[]) == 211.0
    });
    w.finish();
}
