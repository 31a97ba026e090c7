//! The kernel's BPF run-time statistics: off, on, or sampled (the
//! default). Invariant: `gapscope_bpf_program_run_seconds_total` is only
//! ever time the kernel measured, and `gapscope_bpf_stats_sampled_seconds_total`
//! is the wall time it was measuring, so their ratio is the programs'
//! share of a CPU while measured, whatever the mode.
//!
//! While the statistics are on, the kernel reads the clock twice around
//! every BPF program run on the host (ours and everyone's): about 160 ns a
//! traced syscall here. Sampled, they are on for one window (1 s) of every
//! period (60 s), so the host pays a sixtieth of that, and the self-cost
//! read as `rate(run_seconds) / rate(sampled_seconds)` is an estimate that
//! assumes the sampled windows are like the rest of the time. When another
//! holder keeps the statistics on between our windows (our programs' run
//! counts grow while we are off), that stretch counts as sampled too.

use std::{
    os::fd::OwnedFd,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use super::Probes;
use crate::config::BpfStats;

/// Runs counted after we turned the statistics off that still do not mean
/// another holder: programs that were running at that moment, at most one
/// run per program and CPU (two, with a program interrupted by another).
/// A fixed allowance (it was 1,024) swallowed a whole off stretch on a
/// quiet host, where our programs run a thousand times a second: another
/// holder's time then went uncounted and the self-cost read high.
pub fn stragglers(programs: usize, cpus: usize) -> u64 {
    2 * (programs.max(1) * cpus.max(1)) as u64
}

/// Holds the kernel's statistics on while held; counts the time held.
#[derive(Default)]
pub struct StatsSwitch {
    /// Closing it turns the statistics off again (unless another holder,
    /// or `kernel.bpf_stats_enabled`, keeps them on).
    fd: Option<OwnedFd>,
    on_since: Option<Instant>,
    held: Duration,
    /// Why the kernel refused, said once.
    refused: bool,
    /// When the statistics were last turned off, and our programs' runs
    /// counted then: runs counted while off mean another holder (an
    /// administrator's `kernel.bpf_stats_enabled=1`, another tool) kept
    /// them on, and that stretch was measured too.
    pub(super) off_at: Option<(Instant, u64)>,
}

impl StatsSwitch {
    /// Turns the statistics on; false when the kernel refuses (said once
    /// in the log).
    pub fn on(&mut self) -> bool {
        if self.fd.is_some() {
            return true;
        }
        match aya::sys::enable_stats(aya::sys::Stats::RunTime) {
            Ok(fd) => {
                self.fd = Some(fd);
                self.on_since = Some(Instant::now());
                true
            }
            Err(e) => {
                if !std::mem::replace(&mut self.refused, true) {
                    log::warn!(
                        "BPF run-time statistics unavailable ({e}); gapscope_bpf_program_run_* stay at 0. \
                         Needs CAP_SYS_ADMIN (or kernel.bpf_stats_enabled=1 set by an administrator)"
                    );
                }
                false
            }
        }
    }

    pub fn off(&mut self) {
        if let Some(since) = self.on_since.take() {
            self.held += since.elapsed();
        }
        self.fd = None;
    }

    /// On again; when the programs' runs grew while we were off, the
    /// kernel kept measuring all along, and the stretch counts as sampled
    /// (else `rate(run_seconds) / rate(sampled_seconds)` would read high).
    pub fn on_counting(&mut self, runs: u64, stragglers: u64) -> bool {
        // A program already running when we turned off may still count
        // itself (`stragglers`).
        if let Some((at, before)) = self.off_at.take()
            && runs > before + stragglers
        {
            self.held += at.elapsed();
        }
        self.on()
    }

    pub fn is_on(&self) -> bool {
        self.fd.is_some()
    }

    /// Wall time the statistics were on, the current window included.
    pub fn sampled(&self) -> Duration {
        self.held + self.on_since.map_or(Duration::ZERO, |s| s.elapsed())
    }
}

/// Where a sampled switch stands at wall-clock time `now` (since the
/// Unix epoch): (on?, for how much longer). Windows open `offset` after
/// each multiple of `period` of the wall clock, not at the daemon's
/// start, so a restart adds no window: a daemon restarted every few
/// seconds (a crash loop, a rollout) costs the host what one running on
/// does.
pub fn phase(
    now: Duration,
    offset: Duration,
    window: Duration,
    period: Duration,
) -> (bool, Duration) {
    let period_ns = period.as_nanos().max(1);
    let shifted = now.as_nanos() + period_ns - offset.as_nanos() % period_ns;
    let into = Duration::from_nanos((shifted % period_ns) as u64);
    if into < window {
        (true, window - into)
    } else {
        (false, period - into)
    }
}

/// This host's offset of the sampled windows into each period: from
/// `/etc/machine-id` (else the host name), so hosts do not all sample the
/// same second (the first of each minute, when cron jobs start), and
/// stable across restarts.
fn host_offset(period: Duration) -> Duration {
    let id = std::fs::read("/etc/machine-id")
        .or_else(|_| std::fs::read("/proc/sys/kernel/hostname"))
        .unwrap_or_default();
    // FNV-1a: stable across builds, unlike the standard library's hasher.
    let hash = id.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    });
    let period_ms = (period.as_millis() as u64).max(1);
    Duration::from_millis(hash % period_ms)
}

/// Our programs' runs counted so far, and how many programs there are.
fn runs(p: &Probes) -> (u64, usize) {
    let stats = p.program_stats();
    (stats.iter().map(|s| s.run_count).sum(), stats.len())
}

/// Off, noting the runs counted then (`on_counting` tells another holder
/// by them).
fn off(p: &mut Probes) {
    p.stats.off();
    p.stats.off_at = Some((Instant::now(), runs(p).0));
}

/// Starts what `mode` asks: on at once for `On`; for `Sampled`, a task
/// turning them on for the window at every period of the wall clock
/// (`phase`, at this host's offset; the first figures come within a
/// period of the start). A kernel that refuses at the start is said once
/// and not asked again; a refusal later (out of descriptors, say) leaves
/// that window out and the next is tried.
pub fn start(mode: BpfStats, probes: &Arc<Mutex<Probes>>) {
    let turn_on = || probes.lock().is_ok_and(|mut p| p.stats.on());
    match mode {
        BpfStats::Off => {}
        BpfStats::On => {
            turn_on();
        }
        BpfStats::Sampled { window, period } => {
            let wall = || {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
            };
            let offset = host_offset(period);
            // Asked once now, so a refusal is said at the start, not up
            // to a period later; off again at once outside a window.
            if !turn_on() {
                return;
            }
            let cpus = aya::util::nr_cpus().unwrap_or(1);
            let mut on = true;
            if !phase(wall(), offset, window, period).0
                && let Ok(mut p) = probes.lock()
            {
                off(&mut p);
                on = false;
            }
            let probes = probes.clone();
            tokio::spawn(async move {
                loop {
                    let (want, lasts) = phase(wall(), offset, window, period);
                    if want != on {
                        let Ok(mut p) = probes.lock() else { return };
                        if want {
                            // Read while still off.
                            let (now, programs) = runs(&p);
                            on = p.stats.on_counting(now, stragglers(programs, cpus));
                        } else {
                            off(&mut p);
                            on = false;
                        }
                    }
                    // Never a busy loop at a boundary the timer rounds. A
                    // loop that wakes it a whole window late (a flood) leaves
                    // that window out: samples are lost, the ratio holds.
                    tokio::time::sleep(lasts.max(Duration::from_millis(1))).await;
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sampled_switch_is_on_for_the_window_of_every_period_of_the_wall_clock() {
        let (w, p) = (Duration::from_secs(1), Duration::from_secs(60));
        let at = |s: f64| phase(Duration::from_secs_f64(s), Duration::ZERO, w, p);
        // A minute's first second, whenever the daemon started.
        assert_eq!(at(1_800_000_000.0), (true, w));
        assert_eq!(at(1_800_000_000.25), (true, Duration::from_millis(750)));
        assert_eq!(at(1_800_000_001.0), (false, Duration::from_secs(59)));
        assert_eq!(at(1_800_000_059.5), (false, Duration::from_millis(500)));
        // At this host's offset: 17 s into each minute.
        let off = Duration::from_secs(17);
        let at = |s: f64| phase(Duration::from_secs_f64(s), off, w, p);
        assert_eq!(at(1_800_000_017.0), (true, w));
        assert_eq!(at(1_800_000_016.5), (false, Duration::from_millis(500)));
        assert_eq!(at(1_800_000_018.0), (false, Duration::from_secs(59)));
        let offset = host_offset(p);
        assert!(offset < p && offset == host_offset(p));
        // Whatever the moments of the looks, the time on adds up to a
        // window a period.
        let mut t = Duration::from_secs(1_800_000_000) + Duration::from_millis(437);
        let end = t + 10 * p;
        let mut held = Duration::ZERO;
        while t < end {
            let (on, lasts) = phase(t, Duration::ZERO, w, p);
            let lasts = lasts.min(end - t);
            if on {
                held += lasts;
            }
            t += lasts;
        }
        assert_eq!(held, 10 * w);
    }

    #[test]
    fn runs_counted_while_off_count_the_stretch_as_sampled() {
        let mut s = StatsSwitch {
            off_at: Some((Instant::now() - Duration::from_millis(400), 100)),
            ..StatsSwitch::default()
        };
        s.on_counting(100, stragglers(8, 2));
        assert!(
            s.sampled() < Duration::from_millis(100),
            "nothing ran: not sampled"
        );
        s.off();
        s.off_at = Some((Instant::now() - Duration::from_millis(400), 100));
        s.on_counting(100 + stragglers(8, 2) + 1, stragglers(8, 2));
        assert!(
            s.sampled() >= Duration::from_millis(400),
            "{:?}",
            s.sampled()
        );
    }

    #[test]
    fn time_held_adds_up_across_windows() {
        // Without the kernel (unprivileged test runs), on() may be refused;
        // the bookkeeping is what is tested here.
        let mut s = StatsSwitch {
            on_since: Some(Instant::now() - Duration::from_millis(300)),
            ..StatsSwitch::default()
        };
        s.off();
        s.on_since = Some(Instant::now() - Duration::from_millis(200));
        let sampled = s.sampled();
        assert!(
            sampled >= Duration::from_millis(500) && sampled < Duration::from_millis(900),
            "{sampled:?}"
        );
        s.off();
        let after = s.sampled();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(s.sampled(), after, "nothing accrues while off");
    }
}
