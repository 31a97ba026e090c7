//! BPF run-time statistics as `[daemon] bpf_stats` asks: sampled (the
//! default), always on, or off. The ground truth is the kernel's own
//! bookkeeping: the test attaches an empty program of its own to
//! `sys_enter` and polls its run count every 2 ms. The kernel counts a
//! program's runs only while the statistics are on (for everyone), and
//! syscalls happen all the time, so the count moving says they are on;
//! gapscoped's counters must agree with it.

use std::time::{Duration, Instant};

use aya::{EbpfLoader, programs::RawTracePoint};
use gapscope_testkit::{Daemon, Metrics, Workload, serial, skip::skip};

/// The test's own observer: an empty program on every syscall.
struct Observer(aya::Ebpf);

impl Observer {
    fn attach() -> Observer {
        let mut ebpf = EbpfLoader::new()
            .load(gapscoped::bpf::FLOOR_OBJECT)
            .expect("loading the empty programs");
        let p: &mut RawTracePoint = ebpf
            .program_mut("gs_floor_enter")
            .unwrap()
            .try_into()
            .unwrap();
        p.load().unwrap();
        p.attach("sys_enter").unwrap();
        Observer(ebpf)
    }

    fn runs(&self) -> u64 {
        let p = self.0.program("gs_floor_enter").unwrap();
        p.info().map_or(0, |i| i.run_count())
    }

    /// Polled for `span`: (seconds on, times turned on, times turned off,
    /// the longest gap between two polls: how far each edge may be off).
    fn watch(&self, span: Duration) -> (f64, u32, u32, f64) {
        let start = Instant::now();
        let (mut on_s, mut ons, mut offs, mut gap) = (0.0, 0, 0, 0.0f64);
        let mut last = (Instant::now(), self.runs(), false);
        while start.elapsed() < span {
            std::thread::sleep(Duration::from_millis(2));
            let (now, runs) = (Instant::now(), self.runs());
            gap = gap.max((now - last.0).as_secs_f64());
            let on = runs > last.1;
            if on {
                on_s += (now - last.0).as_secs_f64();
            }
            match (last.2, on) {
                (false, true) => ons += 1,
                (true, false) => offs += 1,
                _ => {}
            }
            last = (now, runs, on);
        }
        (on_s, ons, offs, gap)
    }
}

/// The observer, attached, when nobody else holds the statistics on (or
/// it would prove nothing: the test skips, saying why).
fn quiet_observer() -> Option<Observer> {
    let observer = Observer::attach();
    let (on_s, ..) = observer.watch(Duration::from_millis(200));
    if on_s > 0.0 {
        skip(
            "BPF run-time statistics are already on (kernel.bpf_stats_enabled=1, or another tool \
             holds them), so the kernel's counts cannot show gapscoped's switching; turn them off \
             (`sysctl kernel.bpf_stats_enabled=0`, stop the other holder) to run this test",
        );
        return None;
    }
    Some(observer)
}

fn sampled_seconds(m: &Metrics) -> f64 {
    m.get_or_zero("gapscope_bpf_stats_sampled_seconds_total", &[])
}

fn run_seconds(m: &Metrics) -> f64 {
    m.sum("gapscope_bpf_program_run_seconds_total", &[])
}

const SERVICE: &str = "[[service]]\nname = \"stats\"\ncmdline = \"--tag bpf-stats( |$)\"\n";

#[test]
fn sampled_statistics_are_on_one_window_a_period_and_counted_as_the_kernel_shows() {
    let _g = serial();
    let Some(observer) = quiet_observer() else {
        return;
    };
    let daemon = Daemon::start_with(SERVICE, "bpf_stats_window_ms = 300\nbpf_stats_period_s = 1");
    // A traced process making syscalls the whole time (killed at the
    // end), so the programs run.
    let mut w = Workload::start("spin --wait --getppid 1000000000 --tag bpf-stats");
    daemon.wait_processes("stats", 1.0);
    w.send_go();
    let (t0, before) = (Instant::now(), daemon.scrape());
    let watched = Instant::now();
    let (on_s, ons, offs, gap) = observer.watch(Duration::from_secs(4));
    let (t1, after) = (Instant::now(), daemon.scrape());
    let counted = sampled_seconds(&after) - sampled_seconds(&before);
    eprintln!(
        "over 4 s the kernel counted runs for {on_s:.3} s, turned on {ons} times and off {offs}; \
         gapscoped counted {counted:.3} s"
    );
    // Sampled, not always on: switched on and off again and again (four
    // periods of 1 s; a loaded machine may stretch them), and off for
    // most of the time (300 ms windows).
    assert!(
        ons >= 2 && offs >= 2,
        "turned on {ons} and off {offs} times in 4 s"
    );
    assert!(on_s < 2.0, "on {on_s:.3} s of 4: not sampling");
    // The counter is gapscoped's clock around its own switching, the
    // kernel's counts polled: they agree to within the longest poll gap at
    // each edge, plus the time the scrapes took outside the watch.
    let outside = (watched - t0).as_secs_f64() + ((t1 - watched).as_secs_f64() - 4.0).max(0.0);
    let slack = 2.0 * gap * f64::from(ons + offs + 2) + outside;
    assert!(
        (counted - on_s).abs() <= slack + 0.01,
        "gapscoped counted {counted:.3} s, the kernel showed {on_s:.3} s (slack {slack:.3} s)"
    );
    assert!(
        run_seconds(&after) > run_seconds(&before),
        "programs measured while on"
    );

    // Off means off: across two scrapes inside one off stretch, nothing
    // is measured though the traced process keeps making syscalls.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        assert!(Instant::now() < deadline, "never caught a quiet stretch");
        let (runs, a) = (observer.runs(), daemon.scrape());
        std::thread::sleep(Duration::from_millis(100));
        let b = daemon.scrape();
        if observer.runs() != runs {
            continue; // a window was open
        }
        let ran = run_seconds(&b) - run_seconds(&a);
        let events = b.sum("gapscope_events_total", &[("source", "syscall")])
            - a.sum("gapscope_events_total", &[("source", "syscall")]);
        assert!(events > 0.0, "the traced process kept making syscalls");
        assert_eq!(
            ran, 0.0,
            "nothing measured while off ({events} syscalls traced)"
        );
        assert_eq!(b.get_or_zero("gapscope_bpf_stats_enabled", &[]), 0.0);
        break;
    }
    let _ = w.child.kill();
    let _ = w.child.wait();
    drop(daemon);
    let (on_s, ..) = observer.watch(Duration::from_millis(1500));
    assert_eq!(on_s, 0.0, "the statistics stay off once gapscoped is gone");
}

#[test]
fn always_on_and_off_mean_what_they_say() {
    let _g = serial();
    let Some(observer) = quiet_observer() else {
        return;
    };
    let daemon = Daemon::start_with(SERVICE, "bpf_stats = true");
    let (t0, before) = (Instant::now(), daemon.scrape());
    let (on_s, ons, offs, gap) = observer.watch(Duration::from_secs(1));
    let after = daemon.scrape();
    let elapsed = t0.elapsed().as_secs_f64();
    assert!(
        on_s >= 1.0 - 2.0 * gap && offs == 0,
        "always on: {on_s} s on, turned off {offs} times ({ons} on)"
    );
    // Between the two scrapes: at most from the first's start to the
    // second's end, at least the watch.
    let counted = sampled_seconds(&after) - sampled_seconds(&before);
    assert!(
        counted <= elapsed + 0.01 && counted >= 0.99,
        "always on counts wall time: {counted} s over {elapsed} s"
    );
    drop(daemon);

    let daemon = Daemon::start_with(SERVICE, "bpf_stats = false");
    let (on_s, ..) = observer.watch(Duration::from_millis(500));
    assert_eq!(on_s, 0.0, "off never turns them on");
    let m = daemon.scrape();
    assert_eq!(sampled_seconds(&m), 0.0);
    assert_eq!(run_seconds(&m), 0.0);
}

/// Another holder (here the test itself, as bpftop would) keeps the
/// statistics on between gapscoped's windows: the kernel measured all of
/// that time, so it all counts as sampled, or the self-cost would read
/// sixty times too high.
#[test]
fn another_holder_keeping_them_on_counts_as_sampled() {
    let _g = serial();
    if quiet_observer().is_none() {
        return;
    }
    let daemon = Daemon::start_with(SERVICE, "bpf_stats_window_ms = 300\nbpf_stats_period_s = 1");
    let held = aya::sys::enable_stats(aya::sys::Stats::RunTime).expect("enabling BPF statistics");
    let (t0, before) = (Instant::now(), daemon.scrape());
    std::thread::sleep(Duration::from_millis(3500));
    let after = daemon.scrape();
    let elapsed = t0.elapsed().as_secs_f64();
    drop(held);
    let counted = sampled_seconds(&after) - sampled_seconds(&before);
    // Every off stretch that ended in the span counts (the last may not
    // have ended yet): at least two of the three full periods, where
    // gapscoped alone would count 0.3 s a period.
    assert!(
        counted >= 2.0 && counted <= elapsed + 0.01,
        "sampled {counted:.3} s over {elapsed:.3} s with the statistics held on throughout"
    );
}
