//! The HTTP server against clients that misbehave, on a real gapscoped:
//! connections beyond `http_max_connections` are answered 503, heads and
//! bodies that never finish are cut off at their deadlines (never
//! earlier), oversized and malformed requests get a clear 4xx, no path
//! leaves the routes, shutdown drops clients that trickle, and a flood of
//! wrong passwords neither queues bcrypt work nor stops a scrape.
//!
//! Every count is exact: the daemon's own counters must equal what the
//! clients saw.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    os::fd::AsRawFd as _,
    time::{Duration, Instant},
};

use gapscope_testkit::{Daemon, Metrics, http_get, http_get_status, serial};

const SERVICE: &str = "[[service]]\nname = \"none\"\ncmdline = \"^nothing-matches-this$\"\n";

/// Room for thousands of sockets in this process: the descriptors it may
/// now hold.
fn raise_fd_limit() -> usize {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit on a local struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut l);
        l.rlim_cur = l.rlim_max.min(65_536);
        libc::setrlimit(libc::RLIMIT_NOFILE, &l);
    }
    l.rlim_cur as usize
}

fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_nodelay(true).unwrap();
    s
}

/// Sends `raw` on a new connection and reads until the server closes it:
/// (status, the whole reply).
fn exchange(port: u16, raw: &[u8]) -> (u16, String) {
    let mut s = connect(port);
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    // The server may answer and close before taking all of a large request.
    let _ = s.write_all(raw);
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply);
    let text = String::from_utf8_lossy(&reply).to_string();
    (status_of(&text).unwrap_or(0), text)
}

fn status_of(reply: &str) -> Option<u16> {
    reply
        .strip_prefix("HTTP/1.")?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Waits (poll(2)) until each socket is readable, or `deadline`: for each,
/// Some(when it became readable) or None.
fn readable_times(sockets: &[&TcpStream], deadline: Duration) -> Vec<Option<Instant>> {
    let start = Instant::now();
    let mut at = vec![None; sockets.len()];
    while at.iter().any(Option::is_none) && start.elapsed() < deadline {
        let waiting: Vec<usize> = (0..sockets.len()).filter(|i| at[*i].is_none()).collect();
        let mut fds: Vec<libc::pollfd> = waiting
            .iter()
            .map(|i| libc::pollfd {
                fd: sockets[*i].as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: fds is a valid array of pollfd for its length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 100) };
        if n <= 0 {
            continue;
        }
        let now = Instant::now();
        for (k, fd) in fds.iter().enumerate() {
            if fd.revents != 0 {
                at[waiting[k]] = Some(now);
            }
        }
    }
    at
}

/// Everything a readable socket holds, up to the server's close.
fn drain(s: &mut TcpStream) -> String {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).to_string()
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Scrapes until `ready`, through a connection of its own.
fn wait_scrape(port: u16, what: &str, ready: impl Fn(&Metrics) -> bool) -> Metrics {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(text) = http_get(port, "/metrics") {
            let m = Metrics(text);
            if ready(&m) {
                return m;
            }
            assert!(Instant::now() < deadline, "never {what}:\n{}", m.0);
        }
        assert!(
            Instant::now() < deadline,
            "never {what}: no scrape answered"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn connections_beyond_the_limit_are_refused_at_once_with_the_reason() {
    let _g = serial();
    let fds = raise_fd_limit();
    const LIMIT: usize = 64;
    // Ten thousand connections at once, where this process may hold them.
    let beyond = (10_000 - LIMIT).min(fds.saturating_sub(LIMIT + 256));
    if beyond < 10_000 - LIMIT {
        gapscope_testkit::not_checked(&format!(
            "connections_beyond_the_limit: {} connections, not 10,000 (RLIMIT_NOFILE {fds})",
            LIMIT + beyond
        ));
    }
    let daemon = Daemon::start_with(
        SERVICE,
        &format!("http_max_connections = {LIMIT}\nhttp_header_timeout_ms = 600000"),
    );
    let pid = daemon.child.id();
    // Only the scrape itself is open: every earlier connection has ended.
    wait_scrape(daemon.port, "one connection open", |m| {
        m.get("gapscope_http_connections_open", &[]) == Some(1.0)
    });
    let fds_before = open_fds(pid);
    let rss = || {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap()
            * 1024
    };
    let rss_before = rss();

    // Half-open requests hold every slot.
    let mut held: Vec<TcpStream> = (0..LIMIT)
        .map(|_| {
            let mut s = connect(daemon.port);
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
                .unwrap();
            s
        })
        .collect();
    let extra: Vec<TcpStream> = (0..beyond).map(|_| connect(daemon.port)).collect();
    let all: Vec<&TcpStream> = held.iter().chain(&extra).collect();
    let readable = readable_times(&all, Duration::from_secs(60));
    let fds_full = open_fds(pid);

    let answered = readable.iter().filter(|t| t.is_some()).count();
    assert_eq!(
        answered, beyond,
        "exactly the connections beyond the limit are answered"
    );
    assert!(
        readable[..LIMIT].iter().all(Option::is_none),
        "the first {LIMIT} connections are held, not answered"
    );
    for mut s in extra {
        let reply = drain(&mut s);
        assert_eq!(status_of(&reply), Some(503), "{reply}");
        assert!(
            reply.contains("daemon.http_max_connections") && reply.contains("Retry-After: 1"),
            "{reply}"
        );
    }
    assert!(
        fds_full <= fds_before + LIMIT,
        "gapscoped held {fds_full} descriptors with {LIMIT} connections open ({fds_before} before)"
    );
    // Refusing costs no memory per refused client: the held connections'
    // buffers are all it keeps (64 KiB heads at most, each).
    let grown = rss().saturating_sub(rss_before);
    assert!(
        grown < (LIMIT as u64) * 64 * 1024 + (16 << 20),
        "gapscoped grew by {grown} bytes refusing {beyond} connections"
    );

    // Slots free as clients leave (a scrape before the daemon has seen
    // them go is refused too); the daemon counted what it refused.
    held.truncate(LIMIT - 10);
    let mut scrapes_refused = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    let m = loop {
        let (code, body) = http_get_status(daemon.port, "/metrics");
        if code == 503 {
            scrapes_refused += 1;
        } else {
            assert_eq!(code, 200, "{body}");
            let m = Metrics(body);
            if m.get("gapscope_http_connections_open", &[]) == Some((LIMIT - 10 + 1) as f64) {
                break m;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the freed slots were never reused"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(
        m.get("gapscope_http_connections_refused_total", &[]),
        Some((beyond + scrapes_refused) as f64)
    );
}

#[test]
fn stalled_heads_idle_connections_and_trickled_bodies_are_cut_off_at_their_deadlines() {
    let _g = serial();
    let daemon = Daemon::start_with(
        SERVICE,
        "http_header_timeout_ms = 1500\nhttp_body_timeout_ms = 1500",
    );
    let port = daemon.port;
    let limit = Duration::from_millis(1500);
    // (socket, when it last sent anything)
    let mut heads = Vec::new();
    // Each deadline runs from a moment after the one taken here: the
    // server's accept, its reply, its reading of the body.
    for _ in 0..20 {
        let before = Instant::now();
        let mut s = connect(port);
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .unwrap();
        heads.push((s, before));
    }
    let silent: Vec<(TcpStream, Instant)> = (0..20)
        .map(|_| {
            let before = Instant::now();
            (connect(port), before)
        })
        .collect();
    let mut kept_alive = Vec::new();
    for _ in 0..10 {
        let mut s = connect(port);
        let before = Instant::now();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut head = [0u8; 512];
        let n = s.read(&mut head).unwrap();
        let reply = String::from_utf8_lossy(&head[..n]).to_string();
        assert_eq!(status_of(&reply), Some(200), "{reply}");
        assert!(reply.ends_with("ok\n"), "one whole reply: {reply}");
        kept_alive.push((s, before));
    }
    let mut bodies = Vec::new();
    for _ in 0..5 {
        let before = Instant::now();
        let mut s = connect(port);
        s.write_all(
            b"POST /api/v1/annotations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"event\":",
        )
        .unwrap();
        bodies.push((s, before));
    }

    let stalled: Vec<&TcpStream> = heads
        .iter()
        .chain(&silent)
        .chain(&kept_alive)
        .map(|(s, _)| s)
        .collect();
    let closed = readable_times(&stalled, Duration::from_secs(60));
    let sent: Vec<Instant> = heads
        .iter()
        .chain(&silent)
        .chain(&kept_alive)
        .map(|(_, t)| *t)
        .collect();
    for (i, (at, since)) in closed.iter().zip(&sent).enumerate() {
        let at = at.unwrap_or_else(|| panic!("stalled connection {i} never closed"));
        assert!(
            at.duration_since(*since) >= limit,
            "connection {i} closed {:?} after its last byte, before the {limit:?} deadline",
            at.duration_since(*since)
        );
    }
    for (mut s, _) in heads.into_iter().chain(silent).chain(kept_alive) {
        let rest = drain(&mut s);
        assert!(
            rest.is_empty() || status_of(&rest) == Some(408),
            "a stalled head gets nothing or a 408: {rest}"
        );
    }

    let waiting: Vec<&TcpStream> = bodies.iter().map(|(s, _)| s).collect();
    let answered = readable_times(&waiting, Duration::from_secs(60));
    for ((s, since), at) in bodies.iter_mut().zip(answered) {
        let at = at.expect("a trickled body is answered");
        assert!(at.duration_since(*since) >= limit);
        let reply = drain(s);
        assert_eq!(status_of(&reply), Some(408), "{reply}");
        assert!(reply.contains("daemon.http_body_timeout_ms"), "{reply}");
    }

    let m = daemon.scrape();
    assert_eq!(
        m.get("gapscope_http_timeouts_total", &[("phase", "head")]),
        Some(50.0),
        "20 stalled heads, 20 silent connections and 10 idle kept-alive ones"
    );
    assert_eq!(
        m.get("gapscope_http_timeouts_total", &[("phase", "body")]),
        Some(5.0)
    );
    // Nothing the trickled bodies carried was filed.
    let (code, list) = http_get_status(port, "/api/v1/annotations");
    assert_eq!(code, 200);
    assert!(!list.contains("\"event\""), "{list}");
}

#[test]
fn oversized_malformed_and_escaping_requests_get_a_clear_4xx() {
    let _g = serial();
    let daemon = Daemon::start(SERVICE);
    let port = daemon.port;

    let big_header = format!(
        "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    let (code, reply) = exchange(port, big_header.as_bytes());
    assert_eq!(code, 431, "{reply}");

    let big_body = format!(
        "POST /api/v1/annotations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        200 * 1024,
        "x".repeat(200 * 1024)
    );
    let (code, reply) = exchange(port, big_body.as_bytes());
    assert_eq!(code, 413, "{reply}");
    assert!(reply.contains("65536 bytes"), "{reply}");

    let (code, reply) = exchange(port, b"NOT HTTP AT ALL\r\n\r\n");
    assert_eq!(code, 400, "{reply}");

    // No path reaches a file, however it is spelled.
    for path in [
        "/../../../../etc/passwd",
        "/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/metrics/../../../etc/passwd",
        "/api/v1/explain/..%2f..%2f..%2fetc%2fpasswd",
        "//etc/passwd",
        "/api/v1/trace/../../../../etc/shadow",
        "/healthz/%00",
        "/api/v1/annotations/..;/..;/etc/passwd",
    ] {
        let (code, reply) = exchange(
            port,
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        assert!(code == 404 || code == 400, "{path}: {code}\n{reply}");
        assert!(!reply.contains("root:"), "{path}: {reply}");
    }

    // Malformed parameters: a 400 whose JSON names the problem and the fix.
    for query in [
        "/api/v1/explain?service=%ff%fe&window=60s",
        "/api/v1/explain?service=none&window=-5s",
        "/api/v1/explain?service=none&window=1e309s",
        "/api/v1/explain?service=none&window=99999999999999999999h",
        "/api/v1/explain?service=none&what_if=%00",
        "/api/v1/explain?service=none&gpu_hour_usd=NaN",
        "/api/v1/explain?service=none&service=none&bogus=1",
        "/api/v1/trace?service=none&window=0s",
        "/api/v1/trace?service=%27%3B%20DROP",
        "/api/v1/intervals?since_ns=abc",
        "/api/v1/intervals?limit=-1",
        "/api/v1/intervals?kind=%ff",
        "/api/v1/kernels?service=none&limit=0",
    ] {
        let (code, body) = http_get_status(port, query);
        assert_eq!(code, 400, "{query}: {body}");
        let v: serde_json::Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{query}: {e}: {body}"));
        assert!(
            v["error"].as_str().is_some_and(|e| !e.is_empty())
                && v["fix"].as_str().is_some_and(|f| !f.is_empty()),
            "{query}: {v}"
        );
    }
    assert!(http_get(port, "/healthz").is_some(), "still serving");
}

#[test]
fn shutdown_drops_clients_that_trickle_instead_of_waiting_for_them() {
    let _g = serial();
    let mut daemon = Daemon::start_with(
        SERVICE,
        "http_header_timeout_ms = 600000\nhttp_body_timeout_ms = 600000",
    );
    let port = daemon.port;
    // A body of 1000 bytes at 10 bytes a second would take 100 s.
    let trickler = std::thread::spawn(move || {
        let mut s = connect(port);
        s.write_all(
            b"POST /api/v1/annotations HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n",
        )
        .unwrap();
        for sent in 0..1000 {
            if s.write_all(b"x").is_err() {
                return sent;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        1000
    });
    let mut head = connect(port);
    head.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    // Both held, and the scrape that sees them.
    wait_scrape(port, "both clients held", |m| {
        m.get("gapscope_http_connections_open", &[]) == Some(3.0)
    });

    let (status, _) = daemon.terminate();
    assert!(status.success(), "{}", daemon.log_text());
    let sent = trickler.join().unwrap();
    assert!(
        sent < 1000,
        "the trickling client was dropped, not waited for"
    );
    assert_eq!(drain(&mut head), "", "the stalled head was dropped");
    let log = daemon.log_text();
    assert!(
        log.contains("dropping 2 HTTP connection(s) still open"),
        "{log}"
    );
    assert!(log.contains("all programs detached"), "{log}");
}

/// GET with basic auth: (status, body).
fn get_as(port: u16, path: &str, user_password: &str) -> (u16, String) {
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode(user_password);
    let (code, reply) = exchange(
        port,
        format!("GET {path} HTTP/1.0\r\nHost: x\r\nAuthorization: Basic {auth}\r\n\r\n").as_bytes(),
    );
    (code, reply)
}

/// A gapscoped whose web config has these users (bcrypt cost 12: each
/// check takes a good part of a second, long enough for a flood's
/// requests to find every slot taken), ready once the first user's
/// credentials work (and so are remembered).
fn with_users(users: &[(&str, &str)]) -> (Daemon, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let web = dir.path().join("web.yml");
    let entries: String = users
        .iter()
        .map(|(user, password)| {
            format!(
                "  {user}: '{}'\n",
                gapscope_testkit::hash_password(password, 12)
            )
        })
        .collect();
    std::fs::write(&web, format!("basic_auth_users:\n{entries}")).unwrap();
    let first = format!("{}:{}", users[0].0, users[0].1);
    let daemon = Daemon::start_checked(
        SERVICE,
        &format!("web_config = \"{}\"", web.display()),
        move |port| {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
                && get_as(port, "/healthz", &first).0 == 200
        },
    );
    (daemon, dir)
}

#[test]
fn a_flood_of_wrong_passwords_queues_no_bcrypt_and_scrapes_go_on() {
    let _g = serial();
    let (daemon, _dir) = with_users(&[("prometheus", "right")]);
    let port = daemon.port;
    const FLOOD: usize = 40;
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(FLOOD + 1));
    let flood: Vec<_> = (0..FLOOD)
        .map(|i| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                get_as(port, "/metrics", &format!("prometheus:wrong{i}"))
            })
        })
        .collect();
    barrier.wait();
    let scrapes: Vec<(u16, String)> = (0..20)
        .map(|_| get_as(port, "/metrics", "prometheus:right"))
        .collect();
    let refused: Vec<u16> = flood.into_iter().map(|t| t.join().unwrap().0).collect();

    for (code, reply) in &scrapes {
        assert_eq!(*code, 200, "a scrape with remembered credentials: {reply}");
        assert!(reply.contains("gapscope_build_info"));
    }
    assert!(
        refused.iter().all(|c| *c == 401 || *c == 429),
        "{refused:?}"
    );
    let busy = refused.iter().filter(|c| **c == 429).count();
    assert!(
        busy > 0,
        "no wrong password found the bcrypt slots busy: {refused:?}"
    );
    let (_, text) = get_as(port, "/metrics", "prometheus:right");
    let body = text.split_once("\r\n\r\n").unwrap().1.to_string();
    let m = Metrics(body);
    assert_eq!(
        m.get("gapscope_http_auth_refused_total", &[("reason", "busy")]),
        Some(busy as f64)
    );
    assert_eq!(
        m.get(
            "gapscope_http_auth_refused_total",
            &[("reason", "credentials")]
        ),
        Some((FLOOD - busy) as f64)
    );
}

/// A connection to 127.0.0.1:`port` from the local address `from` (any
/// 127.x.y.z is this machine): another client host, as the server sees it.
fn connect_from(from: std::net::Ipv4Addr, port: u16) -> TcpStream {
    use std::os::fd::FromRawFd as _;
    let sockaddr = |ip: std::net::Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: a new socket bound and connected with valid sockaddr_in
    // structs; on success its descriptor is owned by the TcpStream.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let local = sockaddr(from, 0);
        let remote = sockaddr(std::net::Ipv4Addr::LOCALHOST, port);
        assert_eq!(
            libc::bind(fd, (&raw const local).cast(), len),
            0,
            "bind {from}: {}",
            std::io::Error::last_os_error()
        );
        assert_eq!(
            libc::connect(fd, (&raw const remote).cast(), len),
            0,
            "connect from {from}: {}",
            std::io::Error::last_os_error()
        );
        TcpStream::from_raw_fd(fd)
    }
}

#[test]
fn a_password_flood_from_one_host_leaves_new_credentials_from_another_their_turn() {
    use base64::Engine as _;
    let _g = serial();
    let (daemon, _dir) = with_users(&[("prometheus", "right"), ("grafana", "other")]);
    let port = daemon.port;
    // Sixteen clients on one host send wrong passwords back to back:
    // without a limit per address their checks would queue for longer
    // than new credentials wait.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood: Vec<_> = (0..16)
        .map(|i| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut codes = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    codes.push(get_as(port, "/metrics", &format!("prometheus:wrong{i}")));
                }
                codes
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    // New credentials (never checked before) from another host.
    let auth = base64::engine::general_purpose::STANDARD.encode("grafana:other");
    let mut s = connect_from(std::net::Ipv4Addr::new(127, 0, 0, 2), port);
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(
        format!("GET /metrics HTTP/1.0\r\nHost: x\r\nAuthorization: Basic {auth}\r\n\r\n")
            .as_bytes(),
    )
    .unwrap();
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let codes: Vec<(u16, String)> = flood.into_iter().flat_map(|t| t.join().unwrap()).collect();
    assert_eq!(status_of(&reply), Some(200), "{reply}");
    assert!(reply.contains("gapscope_build_info"));
    // The flood's host got one check at a time: the rest were turned away
    // at once, saying why.
    let busy: Vec<&String> = codes.iter().filter(|c| c.0 == 429).map(|c| &c.1).collect();
    assert!(!busy.is_empty(), "the flood was never turned away");
    assert!(busy.iter().all(|r| r.contains("from this address")));
    assert!(codes.iter().all(|c| c.0 == 401 || c.0 == 429));
}

#[test]
fn healthz_fails_when_the_event_loop_hangs_while_metrics_still_answer() {
    let _g = serial();
    // The test hook: SIGUSR2 hangs the event loop, as a bug would.
    let daemon =
        Daemon::start_wrapped(SERVICE, "", &["env".into(), "GAPSCOPE_TEST_HOOKS=1".into()]);
    let port = daemon.port;
    assert_eq!(http_get_status(port, "/healthz").0, 200);
    let hung = Instant::now();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(daemon.child.id() as i32, libc::SIGUSR2) };
    let deadline = Instant::now() + Duration::from_secs(60);
    let (code, body) = loop {
        let (code, body) = http_get_status(port, "/healthz");
        if code != 200 {
            break (code, body);
        }
        assert!(Instant::now() < deadline, "/healthz never failed");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("event loop has not come round"), "{body}");
    assert!(
        hung.elapsed() >= Duration::from_secs(10),
        "not before the 10 s stall"
    );
    // The server is not the loop: scrapes still answer.
    assert!(http_get(port, "/metrics").is_some());
    assert!(daemon.log_text().contains("hanging the event loop"));
    // A hung loop answers no SIGTERM: what a watchdog does.
    let mut daemon = daemon;
    let _ = daemon.child.kill();
    let _ = daemon.child.wait();
}
