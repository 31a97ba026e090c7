//! `gapscoped run`: start (bind, attach, build the state, serve), loop
//! (follow processes, feed the explainer, keep the watchdog), and shut
//! down cleanly on SIGTERM/SIGINT.
//!
//! * `start`: everything before the first event, in the order that leaves
//!   nothing behind when a step fails (web config, port, socket, then
//!   programs);
//! * `event_loop`: the one task that reads the process events and ticks
//!   (readers of the timeline drain its ring too: `explain::feed`);
//! * here: the runtime and the teardown, which detaches every program.

mod event_loop;
pub mod reload;
mod start;

use std::sync::Arc;

/// Threads for blocking work (snapshots); the unit allows 64 tasks, and
/// the HTTP server's runtime has its own (`web::serve`).
pub(crate) const MAX_BLOCKING_THREADS: usize = 16;

/// Runs the daemon with `config`, read from `path` (read again on
/// SIGHUP).
pub fn run(config: crate::config::Config, path: std::path::PathBuf) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        // A bounded pool keeps the daemon within the unit's TasksMax
        // whatever the load.
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .build()?;
    runtime.block_on(async {
        let reloader = reload::Reloader::new(path, &config);
        let mut running = start::start(config).await?;
        // The protection a reload may not weaken is what start loaded.
        running.reloader = Some(reloader.protected_by(running.protection));
        let ended = event_loop::run(&mut running).await;
        shutdown(running).await;
        ended
    })
}

/// Stops HTTP and detaches the programs at once, closes the ring buffers
/// and the NVML collector, removes the deep-mode socket, and drops the
/// state last (it owns the maps and the programs' objects).
async fn shutdown(running: start::Running) {
    crate::notify::send("STOPPING=1");
    let stopping = std::time::Instant::now();
    let start::Running {
        state,
        events,
        intervals,
        collector,
        stop_http,
        server,
        deep_socket,
        ..
    } = running;
    let _ = stop_http.send(());
    // Detach while the server gives its clients their grace: a slow
    // client cannot hold the programs attached.
    state
        .probes
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .detach_all();
    // The server's thread ends within its shutdown grace.
    let _ = tokio::task::spawn_blocking(move || server.join()).await;
    let http_stopped = stopping.elapsed();
    drop(events);
    drop(intervals);
    drop(collector);
    if let Some(path) = deep_socket {
        let _ = std::fs::remove_file(path);
    }
    // The HTTP server held the only other reference and has stopped.
    match Arc::try_unwrap(state) {
        Ok(state) => drop(state),
        Err(_) => log::warn!("state still referenced at shutdown; programs go with the process"),
    }
    log::info!(
        "all programs detached ({:?} after the signal, HTTP stopped after {http_stopped:?}); exiting",
        stopping.elapsed()
    );
}
