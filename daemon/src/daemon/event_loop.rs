//! The daemon's one event loop: process events as the kernel's ring buffer
//! delivers them, timeline intervals at each settle tick (or when their
//! ring fills up), rescans, per-second bookkeeping, the explainer's settle
//! tick, snapshots, the systemd watchdog and
//! configuration reloads (SIGHUP), until SIGTERM or SIGINT.

use std::time::Duration;

use gapscope_ebpf_common::ProcEvent;
use tokio::signal::unix::{SignalKind, signal};

use super::start::Running;
use crate::{clock::monotonic_ns, explain::feed, notify};

/// How often the CPU-side counters are recorded for windowed explain
/// reports (annotations and explain requests add their own).
const SNAPSHOT_EVERY: Duration = Duration::from_secs(5);

/// Busy stretches settle once the reorder window has passed them; idle
/// gaps are attributed once their states have arrived.
const SETTLE_EVERY: Duration = Duration::from_millis(100);

/// The signals the loop answers, registered before the daemon serves (a
/// signal that came before would take its default action: SIGTERM would
/// end the daemon without its shutdown).
pub(super) struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    /// A test hook (scripts/systemd-check): with GAPSCOPE_TEST_HOOKS=1,
    /// SIGUSR2 hangs the loop, as a bug would, for the watchdog and
    /// `/healthz` to catch.
    hang: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    pub(super) fn register() -> std::io::Result<Signals> {
        let hooks = std::env::var_os("GAPSCOPE_TEST_HOOKS").is_some_and(|v| v == "1");
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
            hang: match hooks {
                true => Some(signal(SignalKind::user_defined2())?),
                false => None,
            },
        })
    }
}

/// Most records read from a ring buffer before the loop's other work (a
/// settle tick, a signal) gets its turn (a settle tick's catch-up reads at
/// most the timeline ring's capacity).
const BATCH: usize = 16_384;

/// Runs until a signal asks the daemon to stop (Ok) or a ring buffer
/// fails (Err).
pub(super) async fn run(running: &mut Running) -> anyhow::Result<()> {
    let state = running.state.clone();
    // A tick that comes late (a long settle under a flood) is not made up
    // for with a burst of ticks: the next one comes a period later.
    let every = |period| {
        let mut i = tokio::time::interval(period);
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        i
    };
    let mut rescan = every(running.rescan_every);
    let mut every_second = every(Duration::from_secs(1));
    let mut every_tenth = every(Duration::from_millis(100));
    let mut every_hundredth = every(Duration::from_millis(10));
    let mut settle = every(SETTLE_EVERY);
    let mut snapshot = every(SNAPSHOT_EVERY);
    let watchdog_every = notify::watchdog_interval();
    let mut watchdog = every(watchdog_every.unwrap_or(Duration::from_secs(3600)));
    let Signals {
        term: mut sigterm,
        int: mut sigint,
        hup: mut sighup,
        mut hang,
    } = running.signals.take().expect("the loop runs once");
    let targets = || {
        state
            .targets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    };

    // Whether a new serialization probe wants `every_tenth` every
    // hundredth of a second; updated wherever the loop holds the targets
    // anyway (attachments happen only there), so no pass takes the lock
    // just to ask.
    let mut trips_soon = false;
    loop {
        state
            .loop_alive_ns
            .store(monotonic_ns(), std::sync::atomic::Ordering::Relaxed);
        tokio::select! {
            _ = sigterm.recv() => { log::info!("SIGTERM: detaching"); return Ok(()); }
            _ = sigint.recv() => { log::info!("SIGINT: detaching"); return Ok(()); }
            _ = sighup.recv() => {
                if let Some(r) = running.reloader.as_mut() {
                    r.reload(&state, &running.front);
                }
                trips_soon = targets().trips_soon();
            }
            _ = rescan.tick() => {
                let mut t = targets();
                t.rescan();
                trips_soon = t.trips_soon();
            }
            _ = every_second.tick() => {
                let mut t = targets();
                t.every_second();
                trips_soon = t.trips_soon();
            }
            _ = every_tenth.tick() => {
                let mut t = targets();
                t.every_tenth();
                trips_soon = t.trips_soon();
            }
            _ = every_hundredth.tick(), if trips_soon => {
                let mut t = targets();
                t.every_tenth();
                trips_soon = t.trips_soon();
            }
            _ = settle.tick() => {
                feed::catch_up(&state);
                feed::settle(&state, monotonic_ns(), running.reorder_ns);
            }
            _ = snapshot.tick() => {
                let state = state.clone();
                tokio::task::spawn_blocking(move || state.snapshot());
            }
            _ = watchdog.tick(), if watchdog_every.is_some() => notify::send("WATCHDOG=1"),
            Some(_) = async { hang.as_mut()?.recv().await }, if hang.is_some() => {
                log::warn!("SIGUSR2 with GAPSCOPE_TEST_HOOKS=1: hanging the event loop (a test of the watchdog)");
                loop {
                    std::thread::sleep(Duration::from_secs(3600));
                }
            }
            guard = running.events.readable_mut() => {
                let mut guard = guard?;
                let ring = guard.get_inner_mut();
                let mut t = targets();
                let mut taken = 0;
                while taken < BATCH && let Some(item) = ring.next() {
                    taken += 1;
                    if item.len() >= std::mem::size_of::<ProcEvent>() {
                        // SAFETY: the kernel wrote a ProcEvent; read unaligned.
                        let ev = unsafe { (item.as_ptr() as *const ProcEvent).read_unaligned() };
                        t.on_event(&ev);
                    }
                }
                trips_soon = t.trips_soon();
                // A full batch leaves the ring ready: the loop comes back
                // to it after the other branches had their turn.
                if taken < BATCH {
                    guard.clear_ready();
                }
            }
            // Only a ring filling up wakes the loop (the settle tick and
            // the readers drain the rest): see ebpf/programs/src/timeline.rs.
            guard = running.intervals.readable() => {
                let mut guard = guard?;
                if feed::drain_intervals(&state, BATCH) < BATCH {
                    guard.clear_ready();
                }
            }
        }
    }
}
