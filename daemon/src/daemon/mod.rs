//! `gapscoped run`: bind, attach, follow processes, serve, and tear down
//! cleanly on SIGTERM/SIGINT.

use std::sync::{Arc, Mutex};

use gapscope_ebpf_common::{Interval, ProcEvent};
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
};

use crate::{
    bpf::{self, caps},
    clock::monotonic_ns,
    config::Config,
    cuda::CudaTracker,
    deep::{self, Ingest},
    discovery::Targets,
    error::UsageError,
    explain::{Explainer, engine::Ongoing, snapshot::Snapshots},
    gpu::{self, GpuState, IdleChecks},
    http,
    metrics::Exporter,
    notify,
    python::{
        GilTracker,
        serialization::{SerializationTracker, default_specs},
    },
    timeline::Timeline,
    web,
};

/// How often the CPU-side counters are recorded for windowed explain
/// reports (annotations and explain requests add their own).
const SNAPSHOT_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Threads for blocking work (scrapes, bcrypt); the unit allows 64 tasks.
const MAX_BLOCKING_THREADS: usize = 16;

pub fn run(config: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        // Scrapes and bcrypt checks run on blocking threads; a bounded pool
        // keeps the daemon within the unit's TasksMax whatever the load.
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .build()?;
    runtime.block_on(serve(config))
}

async fn serve(config: Config) -> anyhow::Result<()> {
    if !caps::can_trace() {
        return Err(UsageError::new(
            "gapscoped lacks the privileges to load BPF programs (needs CAP_BPF and CAP_PERFMON, or root)",
            "run it as root, through deploy/gapscoped.service, or grant them: \
             setcap cap_bpf,cap_perfmon,cap_sys_ptrace+ep $(command -v gapscoped)",
        )
        .into());
    }
    // Read before attaching: a bad certificate must leave nothing behind.
    let web = web::Prepared::load(config.daemon.web_config.as_deref())?;
    // Bind before attaching: a taken port must leave nothing behind.
    let listener = std::net::TcpListener::bind(config.daemon.listen).map_err(|e| {
        UsageError::new(
            format!("cannot listen on {}: {e}", config.daemon.listen),
            "stop whatever holds the port or set daemon.listen to a free address",
        )
    })?;
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let inject_listener = if config.inject.enabled {
        Some(deep::socket::bind(&config.inject.socket.path)?)
    } else {
        None
    };

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
    } = bpf::attach_all(
        config.daemon.bpf_stats,
        config.timeline.min_interval.as_nanos() as u64,
    )?;
    // Before any other thread starts: capabilities are per thread, and
    // every thread started later inherits these.
    if config.daemon.drop_capabilities {
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
    let services: Arc<[_]> = config.services.into();
    let probes = Arc::new(Mutex::new(probes));
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
    lock(&targets).rescan();

    let timeline = Arc::new(Mutex::new(Timeline::new(
        config.timeline.max_intervals,
        config.timeline.retention.as_nanos() as u64,
    )));
    let gpu = Arc::new(Mutex::new(GpuState {
        enabled: config.nvml.enabled,
        idle: IdleChecks::new(config.nvml.idle_power_watts),
        ..GpuState::default()
    }));
    // Says itself, in the state and the log, when it cannot run.
    let collector = if config.nvml.enabled {
        Some(gpu::nvml::start(config.nvml.interval, gpu.clone()))
    } else {
        lock_gpu(&gpu).down_reason = Some("disabled by [nvml] enabled = false".into());
        None
    };
    let deep = inject_listener.map(|listener| {
        let shared = deep::socket::Shared {
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
        tokio::spawn(deep::socket::serve(listener, shared.clone()));
        shared
    });
    let explainer = Arc::new(Mutex::new(Explainer::new(config.explain.clone())));
    let exporter = Arc::new(Exporter {
        services,
        maps,
        probes,
        targets: targets.clone(),
        timeline: timeline.clone(),
        annotations: Default::default(),
        gpu,
        deep: deep.clone(),
        explainer: explainer.clone(),
        snapshots: Mutex::new(Snapshots::new(config.explain.history_ns)),
    });
    let (stop_http, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut router = http::router(exporter.clone());
    let mut tls = None;
    let mut scheme = "http";
    if let Some(web) = &web {
        router = web::serve::secure(router, &web.config);
        tls = web.tls.clone();
        scheme = web.config.scheme();
        log::info!("web config: {}", web.describe());
    }
    let server = tokio::spawn(web::serve::serve(listener, router, tls, stopped));

    log::info!("listening on {scheme}://{}/metrics", config.daemon.listen);
    notify::send("READY=1");

    // SAFETY: the ring buffer owns its map fd and keeps it open, unchanged,
    // for as long as it lives, which is as long as the AsyncFd.
    let mut events = unsafe { AsyncFd::register_with_interest(events, Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("watching the process event ring buffer: {e}"))?;
    // SAFETY: as above.
    let mut intervals = unsafe { AsyncFd::register_with_interest(intervals, Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("watching the timeline ring buffer: {e}"))?;
    let mut rescan = tokio::time::interval(config.daemon.rescan_interval);
    let mut every_second = tokio::time::interval(std::time::Duration::from_secs(1));
    // Busy stretches settle once the reorder window has passed them; idle
    // gaps are attributed once their states have arrived.
    let mut settle = tokio::time::interval(std::time::Duration::from_millis(100));
    let mut snapshot = tokio::time::interval(SNAPSHOT_EVERY);
    let reorder_ns = config.inject.reorder_window.as_nanos() as u64;
    let watchdog_every = notify::watchdog_interval();
    let mut watchdog =
        tokio::time::interval(watchdog_every.unwrap_or(std::time::Duration::from_secs(3600)));
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;

    loop {
        tokio::select! {
            _ = sigterm.recv() => { log::info!("SIGTERM: detaching"); break; }
            _ = sigint.recv() => { log::info!("SIGINT: detaching"); break; }
            _ = rescan.tick() => lock(&targets).rescan(),
            _ = every_second.tick() => lock(&targets).every_second(),
            _ = settle.tick() => {
                let now = monotonic_ns();
                let mut explain = explainer.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(d) = &deep {
                    let mut ingest = d.ingest.lock().unwrap_or_else(|p| p.into_inner());
                    ingest.advance(now.saturating_sub(reorder_ns));
                    if !ingest.timeline.is_empty() {
                        let mut t = timeline.lock().unwrap_or_else(|p| p.into_inner());
                        for i in ingest.timeline.drain(..) {
                            t.push(i);
                        }
                    }
                    for (service, device, stretch) in ingest.stretches.drain(..) {
                        explain.on_stretch(service, device, stretch);
                    }
                }
                // A launching thread's wait still in progress, from the
                // kernel's thread map (one lookup per launching thread).
                let threads = &exporter.maps.threads;
                explain.tick(now, &|tid| {
                    let t = threads.get(&tid, 0).ok()?;
                    (t.off_cpu_since_ns != 0).then_some(Ongoing {
                        since_ns: t.off_cpu_since_ns,
                        woken_ns: (t.woken_ns != 0).then_some(t.woken_ns),
                        reason: t.off_reason,
                    })
                });
            }
            _ = snapshot.tick() => {
                let ex = exporter.clone();
                tokio::task::spawn_blocking(move || ex.snapshot());
            }
            _ = watchdog.tick(), if watchdog_every.is_some() => notify::send("WATCHDOG=1"),
            guard = events.readable_mut() => {
                let mut guard = guard?;
                let ring = guard.get_inner_mut();
                let mut t = lock(&targets);
                while let Some(item) = ring.next() {
                    if item.len() >= std::mem::size_of::<ProcEvent>() {
                        // SAFETY: the kernel wrote a ProcEvent; read unaligned.
                        let ev = unsafe { (item.as_ptr() as *const ProcEvent).read_unaligned() };
                        t.on_event(&ev);
                    }
                }
                guard.clear_ready();
            }
            guard = intervals.readable_mut() => {
                let mut guard = guard?;
                let ring = guard.get_inner_mut();
                let mut t = timeline.lock().unwrap_or_else(|p| p.into_inner());
                let mut explain = explainer.lock().unwrap_or_else(|p| p.into_inner());
                while let Some(item) = ring.next() {
                    if item.len() >= std::mem::size_of::<Interval>() {
                        // SAFETY: the kernel wrote an Interval; read unaligned.
                        let i = unsafe { (item.as_ptr() as *const Interval).read_unaligned() };
                        explain.on_interval(&i);
                        t.push(i);
                    }
                }
                guard.clear_ready();
            }
        }
    }

    notify::send("STOPPING=1");
    let stopping = std::time::Instant::now();
    let _ = stop_http.send(());
    let _ = server.await;
    let http_stopped = stopping.elapsed();
    drop(events);
    drop(intervals);
    drop(targets);
    drop(collector);
    if deep.is_some() {
        let _ = std::fs::remove_file(&config.inject.socket.path);
    }
    drop(deep);
    // The exporter owns the programs; the HTTP server held the only other
    // reference and has stopped, so this drop detaches and unloads them.
    match Arc::try_unwrap(exporter) {
        Ok(ex) => drop(ex),
        Err(_) => log::warn!("metrics still referenced at shutdown; programs go with the process"),
    }
    log::info!(
        "all programs detached ({:?} after the signal, HTTP stopped after {http_stopped:?}); exiting",
        stopping.elapsed()
    );
    Ok(())
}

fn lock_gpu(g: &Mutex<GpuState>) -> std::sync::MutexGuard<'_, GpuState> {
    g.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn lock(t: &Mutex<Targets>) -> std::sync::MutexGuard<'_, Targets> {
    t.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
