//! The socket the injection library connects to. Only allowed peers get
//! in: the socket file's mode and group are the first gate (`[inject]
//! mode`, 0660, and `group`), the peer's credentials the second
//! (SO_PEERCRED and SO_PEERGROUPS: root, gapscoped's own user,
//! `allowed_uids`, a primary or supplementary group in `allowed_gids` or
//! the socket's `group`). Each
//! peer is bounded:
//! a frame is at most `gapscope_wire::MAX_PAYLOAD` bytes (the header is
//! checked before the payload is waited for), frames beyond
//! `max_frames_per_second` are dropped and counted, and a malformed frame
//! ends that peer's connection — never anyone else's, and never what was
//! already taken from it.

use std::{
    collections::BTreeMap,
    io,
    os::unix::fs::{FileTypeExt as _, PermissionsExt as _},
    sync::{Arc, Mutex},
    time::Instant,
};

use gapscope_wire::{Frame, FrameReader};
use tokio::{io::AsyncReadExt as _, net::UnixStream};

use super::Ingest;
use crate::{config::SocketConfig, discovery::Targets, error::UsageError};

/// At most one line a second from one place in the code, with the count
/// of those not logged: a local process connecting in a loop must not
/// flood the journal (every refusal is counted in the metrics).
struct LogGate {
    last_s: std::sync::atomic::AtomicU64,
    unsaid: std::sync::atomic::AtomicU64,
}

impl LogGate {
    const fn new() -> LogGate {
        LogGate {
            last_s: std::sync::atomic::AtomicU64::new(0),
            unsaid: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn warn(&self, line: std::fmt::Arguments<'_>) {
        use std::sync::atomic::Ordering::Relaxed;
        let now_s = crate::clock::monotonic_ns() / 1_000_000_000 + 1;
        let last = self.last_s.load(Relaxed);
        if now_s != last
            && self
                .last_s
                .compare_exchange(last, now_s, Relaxed, Relaxed)
                .is_ok()
        {
            match self.unsaid.swap(0, Relaxed) {
                0 => log::warn!("{line}"),
                n => log::warn!("{line} ({n} more like it in the last second, not logged)"),
            }
        } else {
            self.unsaid.fetch_add(1, Relaxed);
        }
    }
}

/// `log::warn!` through a `LogGate` of the call site's own.
macro_rules! warn_sparingly {
    ($($arg:tt)*) => {{
        static GATE: LogGate = LogGate::new();
        GATE.warn(format_args!($($arg)*));
    }};
}

/// What the socket has seen, for the metrics.
#[derive(Debug, Default)]
pub struct SocketStats {
    pub accepted: u64,
    /// Connections refused or dropped, by reason.
    pub rejected: BTreeMap<&'static str, u64>,
    pub frames_over_rate: u64,
    pub connected: usize,
}

/// Binds the socket: replaces a stale socket file, refuses to replace
/// anything else or a socket someone still listens on.
pub fn bind(config: &SocketConfig) -> Result<tokio::net::UnixListener, UsageError> {
    let path = config.path.as_path();
    let fix = "set [inject] socket to a path gapscoped may create, or stop what holds it";
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| UsageError::new(format!("cannot create {}: {e}", dir.display()), fix))?;
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(UsageError::new(
                format!("{} exists and is not a socket", path.display()),
                fix,
            ));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(UsageError::new(
                format!("another process already listens on {}", path.display()),
                "stop the other gapscoped, or give this one another [inject] socket",
            ));
        }
        let _ = std::fs::remove_file(path);
    }
    let listener = std::os::unix::net::UnixListener::bind(path)
        .map_err(|e| UsageError::new(format!("cannot listen on {}: {e}", path.display()), fix))?;
    if let Some(gid) = config.group {
        std::os::unix::fs::chown(path, None, Some(gid)).map_err(|e| {
            UsageError::new(
                format!("chgrp {gid} {}: {e}", path.display()),
                "run gapscoped as root (or with CAP_CHOWN), or leave [inject] group out",
            )
        })?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(config.mode))
        .map_err(|e| UsageError::new(format!("chmod {}: {e}", path.display()), fix))?;
    listener
        .set_nonblocking(true)
        .and_then(|()| tokio::net::UnixListener::from_std(listener))
        .map_err(|e| UsageError::new(format!("socket {}: {e}", path.display()), fix))
}

/// Everything a connection needs.
#[derive(Clone)]
pub struct Shared {
    pub config: Arc<SocketConfig>,
    pub ingest: Arc<Mutex<Ingest>>,
    pub stats: Arc<Mutex<SocketStats>>,
    pub targets: Arc<Mutex<Targets>>,
}

/// Accepts connections until the listener is dropped.
pub async fn serve(listener: tokio::net::UnixListener, shared: Shared) {
    let mut next_id = 0u64;
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of descriptors, say: let it pass rather than spin.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            continue;
        };
        next_id += 1;
        let shared = shared.clone();
        tokio::spawn(async move { connection(stream, next_id, shared).await });
    }
}

/// Why a peer may not connect, if it may not. `groups`: the peer's
/// supplementary groups at connect time (read only when its uid does not
/// decide).
fn refuse(
    config: &SocketConfig,
    uid: u32,
    gid: u32,
    groups: impl FnOnce() -> Vec<u32>,
) -> Option<&'static str> {
    // SAFETY: geteuid has no preconditions.
    let own = unsafe { libc::geteuid() };
    if uid == 0 || uid == own || config.allowed_uids.contains(&uid) {
        return None;
    }
    let admits = |g: &u32| config.allowed_gids.contains(g) || config.group == Some(*g);
    if admits(&gid) || groups().iter().any(admits) {
        return None;
    }
    Some("peer_credentials")
}

/// The peer's supplementary groups as they were when it connected
/// (SO_PEERGROUPS, Linux 4.13+); None where the kernel cannot say.
fn peer_groups(fd: std::os::fd::RawFd) -> Option<Vec<u32>> {
    let mut len: libc::socklen_t = 0;
    // SAFETY: a size query (null buffer, zero length) on a socket we own;
    // the kernel answers ERANGE with the length it needs, or 0.
    unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERGROUPS,
            std::ptr::null_mut(),
            &mut len,
        )
    };
    let mut groups = vec![0u32; len as usize / 4];
    if groups.is_empty() {
        return Some(groups);
    }
    // SAFETY: the buffer holds `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERGROUPS,
            groups.as_mut_ptr().cast(),
            &mut len,
        )
    };
    (rc == 0).then(|| {
        groups.truncate(len as usize / 4);
        groups
    })
}

/// A process's supplementary groups (`Groups:` of /proc/PID/status), for
/// kernels without SO_PEERGROUPS.
fn supplementary_groups(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Groups:"))
                .map(|g| {
                    g.split_whitespace()
                        .filter_map(|n| n.parse().ok())
                        .collect()
                })
        })
        .unwrap_or_default()
}

fn reject(shared: &Shared, reason: &'static str) {
    let mut s = shared
        .stats
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    *s.rejected.entry(reason).or_default() += 1;
}

async fn connection(mut stream: UnixStream, id: u64, shared: Shared) {
    let Ok(cred) = stream.peer_cred() else {
        return reject(&shared, "peer_credentials");
    };
    let (uid, gid) = (cred.uid(), cred.gid());
    let pid = cred.pid().unwrap_or(0).max(0) as u32;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&stream);
    let groups = || peer_groups(fd).unwrap_or_else(|| supplementary_groups(pid));
    if let Some(reason) = refuse(&shared.config, uid, gid, groups) {
        warn_sparingly!(
            "deep mode: refused pid {pid} (uid {uid}, gid {gid}): not root, not gapscoped's user, not in [inject] allowed_uids, allowed_gids or group"
        );
        return reject(&shared, reason);
    }
    {
        let mut s = shared
            .stats
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if s.connected >= shared.config.max_peers {
            drop(s);
            warn_sparingly!(
                "deep mode: refused pid {pid}: already {} connections ([inject] max_peers)",
                shared.config.max_peers
            );
            return reject(&shared, "too_many_peers");
        }
        s.connected += 1;
        s.accepted += 1;
    }
    let ended = read_frames(&mut stream, id, pid, &shared).await;
    if let Err(reason) = ended {
        reject(&shared, reason);
    }
    shared
        .ingest
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .disconnect(id);
    let mut s = shared
        .stats
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    s.connected = s.connected.saturating_sub(1);
}

/// A peer that has not sent its hello this long after connecting is
/// dropped (the agent sends it at once): an idle connection cannot hold
/// one of `max_peers` for ever.
pub const HELLO_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);

/// Reads until the peer closes (Ok) or breaks the rules (Err: why).
async fn read_frames(
    stream: &mut UnixStream,
    id: u64,
    pid: u32,
    shared: &Shared,
) -> Result<(), &'static str> {
    let mut reader = FrameReader::default();
    let mut buf = vec![0u8; 64 * 1024];
    let mut hello = false;
    let rate = f64::from(shared.config.max_frames_per_second.max(1));
    let mut tokens = rate;
    let mut refilled = Instant::now();
    let mut service = None;
    // Whether this connection already waited for its process's exit news.
    let mut waited = false;
    let hello_by = tokio::time::Instant::now() + HELLO_WITHIN;
    loop {
        let read = if hello {
            stream.read(&mut buf).await
        } else {
            match tokio::time::timeout_at(hello_by, stream.read(&mut buf)).await {
                Ok(read) => read,
                Err(_) => {
                    warn_sparingly!(
                        "deep mode: pid {pid} sent no hello within {HELLO_WITHIN:?}; dropping its connection"
                    );
                    return Err("no_hello");
                }
            }
        };
        let n = match read {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return Ok(()),
        };
        reader.push(&buf[..n]);
        loop {
            let frame = match reader.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    warn_sparingly!(
                        "deep mode: pid {pid} sent a bad frame ({e}); dropping its connection"
                    );
                    return Err("malformed");
                }
            };
            if !hello && !matches!(frame, Frame::Hello(_)) {
                warn_sparingly!(
                    "deep mode: pid {pid} did not start with a hello; dropping its connection"
                );
                return Err("no_hello");
            }
            hello = true;
            let now = Instant::now();
            tokens = (tokens + now.duration_since(refilled).as_secs_f64() * rate).min(rate);
            refilled = now;
            if tokens < 1.0 {
                shared
                    .stats
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .frames_over_rate += 1;
                continue;
            }
            tokens -= 1.0;
            // The process may be matched after it connected (an agent
            // connects at cuInit, often before discovery has seen the
            // exec): look again at every frame until it is, so no record
            // sent after the match counts as untraced. A frame is a batch
            // and frames are rate-limited, so this is one lock per batch.
            if service.is_none() {
                let may_wait = !waited && matches!(frame, Frame::Records(_));
                waited |= may_wait;
                service = service_of(shared, pid, may_wait).await;
            }
            shared
                .ingest
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .frame(id, pid, service, frame);
        }
    }
}

/// How long records of a process that exited wait for gapscoped to learn
/// of its exit (and so of its service) before they count as untraced.
const EXIT_NEWS_WAIT: std::time::Duration = std::time::Duration::from_millis(200);

/// The service of connection `pid`. A process that wrote its last records
/// and exited may be read before the event loop has seen its exit: the
/// kernel has already forgotten it, the departed list does not have it
/// yet. Records from such a peer wait (briefly, once per connection) for
/// that news.
async fn service_of(shared: &Shared, pid: u32, may_wait: bool) -> Option<u32> {
    let lookup = || shared.targets.lock().ok().and_then(|t| t.service_of(pid));
    let found = lookup();
    if found.is_some() || !may_wait || crate::discovery::procfs::is_alive(pid) {
        return found;
    }
    let deadline = Instant::now() + EXIT_NEWS_WAIT;
    while Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        if let Some(service) = lookup() {
            return Some(service);
        }
    }
    None
}
