//! Everything before the daemon's first event, in an order that leaves
//! nothing behind when a step fails: privileges, the web config, the port
//! and the deep-mode socket are checked before any program is attached;
//! capabilities are dropped before any other thread starts.

use std::{
    os::fd::{AsFd as _, OwnedFd},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use tokio::io::{Interest, unix::AsyncFd};

use crate::{
    bpf::{self, caps},
    config::Config,
    cuda::CudaTracker,
    cupti::{self, Ingest},
    discovery::Targets,
    error::UsageError,
    explain::{Explainer, snapshot::Snapshots},
    http, notify,
    nvml::{self, GpuState, IdleChecks},
    python::{
        GilTracker,
        serialization::{SerializationTracker, default_specs},
    },
    state::DaemonState,
    timeline::Timeline,
    web,
};

/// A started daemon: its state, what its loop reads, and what its
/// shutdown closes.
pub(super) struct Running {
    pub state: Arc<DaemonState>,
    pub events: AsyncFd<RingBuf<MapData>>,
    /// The timeline ring buffer's fd (the ring is in the state): ready
    /// when the kernel wakes the daemon, a ring filling up.
    pub intervals: AsyncFd<OwnedFd>,
    pub collector: Option<nvml::collector::Collector>,
    pub stop_http: tokio::sync::oneshot::Sender<()>,
    /// The HTTP server's thread (`web::serve::spawn`).
    pub server: std::thread::JoinHandle<std::io::Result<()>>,
    /// The deep-mode socket's path, removed at shutdown.
    pub deep_socket: Option<PathBuf>,
    pub rescan_every: Duration,
    pub reorder_ns: u64,
    /// Taken by the event loop.
    pub signals: Option<super::event_loop::Signals>,
    /// Reads the configuration again on SIGHUP.
    pub reloader: Option<super::reload::Reloader>,
    /// What the HTTP server serves requests (its router) and handshakes
    /// (its TLS acceptor) with; a reload of the web config replaces it.
    pub front: tokio::sync::watch::Sender<web::serve::Front>,
    /// What protects the endpoints as started.
    pub protection: web::Protection,
}

/// Whether this process is in the initial PID namespace, whose pids the
/// BPF programs see (its inode is fixed: PROC_PID_INIT_INO). True when
/// the kernel does not say.
fn in_the_hosts_pid_namespace() -> bool {
    use std::os::unix::fs::MetadataExt as _;
    const PROC_PID_INIT_INO: u64 = 0xEFFF_FFFC;
    std::fs::metadata("/proc/self/ns/pid").map_or(true, |m| m.ino() == PROC_PID_INIT_INO)
}

/// The checks that must pass before anything is attached.
struct Bound {
    web: Option<web::Prepared>,
    listener: std::net::TcpListener,
    inject_listener: Option<tokio::net::UnixListener>,
}

pub(super) async fn start(config: Config) -> anyhow::Result<Running> {
    let bound = bind(&config)?;
    if !in_the_hosts_pid_namespace() {
        log::warn!(
            "gapscoped runs in a PID namespace of its own (a container without the host's PIDs): \
             the kernel's events carry the host's pids and /proc here shows others, so no process will be \
             matched to a service; run it in the host's PID namespace (hostPID: true, docker run --pid=host, \
             or as a host service)"
        );
    }
    let attached = bpf::attach_all(config.timeline.min_interval.as_nanos() as u64)?;
    // Before any other thread starts: capabilities are per thread, and
    // every thread started later inherits these.
    if config.daemon.drop_capabilities {
        drop_capabilities();
    }
    let rescan_every = config.daemon.rescan_interval;
    let reorder_ns = config.inject.reorder_window.as_nanos() as u64;
    let listen = config.daemon.listen;
    let limits = config.daemon.http;
    let deep_socket = bound
        .inject_listener
        .is_some()
        .then(|| config.inject.socket.path.clone());
    // The loop watches a duplicate of the timeline ring's fd for the
    // kernel's wake-ups; the ring itself goes into the state, for every
    // reader to drain.
    let intervals = attached.intervals.as_fd().try_clone_to_owned().map_err(|e| {
        anyhow::anyhow!("duplicating the timeline ring buffer's fd: {e} (raise the open-file limit, LimitNOFILE=)")
    })?;
    let (state, collector, events) = build_state(config, attached, bound.inject_listener);
    let (stop_http, stopped) = tokio::sync::oneshot::channel::<()>();
    let router = web::serve::secure(
        http::router(state.clone()),
        bound.web.as_ref().map(|w| &w.config),
        limits,
    );
    let mut tls = None;
    let mut scheme = "http";
    if let Some(web) = &bound.web {
        tls = web.tls.clone();
        scheme = web.config.scheme();
        log::info!("web config: {}", web.describe());
    }
    let signals = super::event_loop::Signals::register()?;
    let protection = web::Prepared::protection(bound.web.as_ref());
    let (front, front_seen) = tokio::sync::watch::channel(web::serve::Front::new(
        router,
        tls,
        protection.client_auth > 0,
    ));
    let server = web::serve::spawn(bound.listener, front_seen, limits, stopped)?;
    log::info!("listening on {scheme}://{listen}/metrics");
    notify::send("READY=1");

    // SAFETY: the ring buffer owns its map fd and keeps it open, unchanged,
    // for as long as it lives, which is as long as the AsyncFd.
    let events = unsafe { AsyncFd::register_with_interest(events, Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("watching the process event ring buffer: {e}"))?;
    // SAFETY: the AsyncFd owns the duplicate fd and closes it when it goes.
    let intervals = unsafe { AsyncFd::register_with_interest(intervals, Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("watching the timeline ring buffer: {e}"))?;
    Ok(Running {
        state,
        events,
        intervals,
        collector,
        stop_http,
        server,
        deep_socket,
        rescan_every,
        reorder_ns,
        signals: Some(signals),
        reloader: None,
        front,
        protection,
    })
}

/// Privileges, the web config, the port and the deep-mode socket: each a
/// usage error naming its fix, before anything is attached.
fn bind(config: &Config) -> anyhow::Result<Bound> {
    if !caps::can_trace() {
        return Err(UsageError::new(
            "gapscoped lacks the privileges to load BPF programs (needs CAP_BPF and CAP_PERFMON, or root)",
            "run it as root, through deploy/gapscoped.service, or grant them: \
             setcap cap_bpf,cap_perfmon,cap_sys_ptrace+ep $(command -v gapscoped)",
        )
        .into());
    }
    let web = web::Prepared::load(config.daemon.web_config.as_deref())?;
    let listener = std::net::TcpListener::bind(config.daemon.listen).map_err(|e| {
        UsageError::new(
            format!("cannot listen on {}: {e}", config.daemon.listen),
            "stop whatever holds the port or set daemon.listen to a free address",
        )
    })?;
    listener.set_nonblocking(true)?;
    let inject_listener = if config.inject.enabled {
        Some(cupti::socket::bind(&config.inject.socket)?)
    } else {
        None
    };
    Ok(Bound {
        web,
        listener,
        inject_listener,
    })
}

fn drop_capabilities() {
    let before = caps::effective();
    match caps::drop_all_but(caps::kept_after_attach()) {
        Ok(after) => log::info!(
            "programs attached; capabilities kept: {} (dropped: {})",
            caps::names(after),
            caps::names(before & !after)
        ),
        Err(e) => log::warn!(
            "could not drop capabilities after attaching ({e}); carrying on with {}",
            caps::names(before)
        ),
    }
}

type Built = (
    Arc<DaemonState>,
    Option<nvml::collector::Collector>,
    RingBuf<MapData>,
);

/// The state from the attached programs and the configuration; starts the
/// NVML collector and the deep-mode socket's task.
fn build_state(
    config: Config,
    attached: bpf::Attached,
    inject_listener: Option<tokio::net::UnixListener>,
) -> Built {
    let bpf::Attached {
        probes,
        maps,
        targets,
        generation,
        events,
        intervals,
        ser_process_calls,
        cuda_process_calls,
        cuda_calls,
        gil_ranges,
    } = attached;
    let services: Arc<[_]> = config.services.into();
    let service_table = crate::state::ServiceTable::new(services.clone());
    let probes = Arc::new(Mutex::new(probes));
    bpf::stats::start(config.daemon.bpf_stats, &probes);
    let targets = Arc::new(Mutex::new(Targets::new(
        targets,
        generation,
        GilTracker::new(gil_ranges, config.python.gil),
        SerializationTracker::new(
            probes.clone(),
            default_specs()
                .into_iter()
                .chain(config.python.probes)
                .collect(),
            config.python.serialization_budget,
            ser_process_calls,
        ),
        config.cuda.enabled.then(|| {
            CudaTracker::new(
                probes.clone(),
                config.cuda.launch_budget_calls,
                cuda_process_calls,
                cuda_calls,
            )
        }),
        services.clone(),
    )));
    targets
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .rescan();

    let timeline = Arc::new(Mutex::new(Timeline::new(
        config.timeline.max_intervals,
        config.timeline.retention.as_nanos() as u64,
    )));
    let nvml = Arc::new(Mutex::new(GpuState {
        enabled: config.nvml.enabled,
        idle: IdleChecks::new(config.nvml.idle_power_watts),
        ..GpuState::default()
    }));
    // Says itself, in the state and the log, when it cannot run.
    let collector = if config.nvml.enabled {
        Some(nvml::collector::start(&config.nvml, nvml.clone()))
    } else {
        nvml.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .down_reason = Some("disabled by [nvml] enabled = false".into());
        None
    };
    let cupti = inject_listener.map(|listener| {
        let shared = cupti::socket::Shared {
            config: Arc::new(config.inject.socket.clone()),
            ingest: Arc::new(Mutex::new(Ingest::new(
                config.timeline.min_interval.as_nanos() as u64,
            ))),
            stats: Default::default(),
            targets: targets.clone(),
        };
        log::info!(
            "deep mode: listening on {} for the injection library",
            config.inject.socket.path.display()
        );
        tokio::spawn(cupti::socket::serve(listener, shared.clone()));
        shared
    });
    let state = Arc::new(DaemonState {
        services: service_table,
        reloads: Default::default(),
        maps,
        probes,
        targets,
        timeline,
        interval_ring: Mutex::new(intervals),
        annotations: Default::default(),
        nvml,
        cupti,
        explainer: Arc::new(Mutex::new(Explainer::new(config.explain.clone()))),
        explain_config: config.explain.clone(),
        loop_alive_ns: crate::clock::monotonic_ns().into(),
        snapshots: Mutex::new(Snapshots::new(config.explain.history_ns)),
    });
    (state, collector, events)
}
