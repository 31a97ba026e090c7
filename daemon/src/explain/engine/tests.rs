use super::*;
use gapscope_ebpf_common::OffCpuReason;

const MS: u64 = 1_000_000;

fn config() -> ExplainConfig {
    ExplainConfig {
        window_ns: 30_000 * MS,
        max_states: 1000,
        no_work_after_ns: 100 * MS,
        resolution_ns: MS,
        history_ns: 900_000 * MS,
        gpu_hour_usd: None,
    }
}

fn iv(kind: IntervalKind, detail: u32, tid: u32, start_ms: u64, end_ms: u64) -> Interval {
    Interval {
        kind: kind as u32,
        detail,
        service: 0,
        tgid: 1,
        tid,
        _pad: 0,
        start_ns: start_ms * MS,
        end_ns: end_ms * MS,
    }
}

fn idle_ms(e: &Explainer, device: &str, cause: Cause) -> u64 {
    e.histories[&(0, device.to_string())].1.totals.idle_ns[cause.index()] / MS
}

#[test]
fn uprobe_gaps_run_from_a_sync_to_the_next_launch() {
    let mut e = Explainer::new(config());
    // Thread 10: launch, sync, sleep 20 ms, launch, sync, a 300 ms
    // epoll wait, launch. Arrival order is not time order.
    let ivs = [
        iv(IntervalKind::HostSync, 0, 10, 1, 5),
        iv(IntervalKind::Launch, 0, 10, 0, 1),
        iv(
            IntervalKind::OffCpu,
            OffCpuReason::SyscallSleep as u32,
            10,
            5,
            25,
        ),
        iv(IntervalKind::Launch, 0, 10, 25, 26),
        iv(IntervalKind::HostSync, 0, 10, 26, 30),
        iv(
            IntervalKind::OffCpu,
            OffCpuReason::SyscallPoll as u32,
            10,
            31,
            331,
        ),
        iv(IntervalKind::Launch, 0, 10, 332, 333),
        // Another thread's GIL wait is not the launcher's.
        iv(IntervalKind::GilWait, 0, 11, 0, 300),
    ];
    for i in &ivs {
        e.on_interval(i);
    }
    // Nothing is settled yet.
    e.tick(20 * MS, &|_| ThreadNow::Running);
    assert!(e.histories.is_empty());
    e.tick(333 * MS + SETTLE_NS, &|_| ThreadNow::Running);
    let (source, h) = &e.histories[&(0, ALL_DEVICES.to_string())];
    assert_eq!(*source, Source::Uprobes);
    assert_eq!(h.totals.gaps, 2);
    assert_eq!(idle_ms(&e, ALL_DEVICES, Cause::SyscallSleep), 20);
    assert_eq!(idle_ms(&e, ALL_DEVICES, Cause::NoWork), 300);
    assert_eq!(idle_ms(&e, ALL_DEVICES, Cause::Unobserved), 2);
    assert_eq!(idle_ms(&e, ALL_DEVICES, Cause::GilWait), 0);
    // Busy: 0-5 and 25-30; the last launch is still busy (open).
    assert_eq!(h.totals.busy_ns, 10 * MS);
    assert_eq!(
        h.totals.busy_ns + h.totals.idle_total_ns(),
        h.last_ns - h.first_ns.unwrap()
    );
}

#[test]
fn deep_gaps_use_exact_stretches_and_the_launch_handoff() {
    let mut e = Explainer::new(config());
    // The launching thread serializes 10-40 ms, launches at 45 ms; the
    // kernel starts at 48 ms.
    e.on_interval(&iv(IntervalKind::Serialization, 0, 10, 10, 40));
    e.on_interval(&iv(IntervalKind::Launch, 0, 10, 45, 46));
    let st = |s: u64, e: u64, gap: Option<u64>| Stretch {
        start_ns: s * MS,
        end_ns: e * MS,
        gap_before_ns: gap.map(|g| g * MS),
    };
    e.on_stretch(0, 1, st(0, 5, None));
    e.on_stretch(0, 1, st(48, 60, Some(43)));
    // A sub-resolution gap with nothing recorded: the launch path.
    e.on_stretch(
        0,
        1,
        Stretch {
            start_ns: 60 * MS + 400_000,
            end_ns: 61 * MS,
            gap_before_ns: Some(400_000),
        },
    );
    e.tick(2000 * MS, &|_| ThreadNow::Running);
    assert_eq!(idle_ms(&e, "1", Cause::Serialization), 30);
    assert_eq!(idle_ms(&e, "1", Cause::Unobserved), 10);
    let (source, h) = &e.histories[&(0, "1".to_string())];
    assert_eq!(
        h.totals.idle_ns[Cause::LaunchOverhead.index()],
        3 * MS + 400_000
    );
    assert_eq!(*source, Source::Cupti);
    assert_eq!(h.totals.gaps, 2);
    assert_eq!(h.totals.busy_ns, 5 * MS + 12 * MS + 600_000);
    assert_eq!(h.totals.busy_ns + h.totals.idle_total_ns(), 61 * MS);
    // A service in deep mode ignores its uprobe gaps, even one that
    // ends long after the last CUPTI record (an idle minute).
    e.on_interval(&iv(IntervalKind::HostSync, 0, 10, 50, 60));
    e.on_interval(&iv(IntervalKind::Launch, 0, 10, 50_060, 50_061));
    e.tick(60_000 * MS, &|_| ThreadNow::Running);
    assert!(!e.histories.contains_key(&(0, ALL_DEVICES.to_string())));
}

#[test]
fn late_states_count_until_the_gap_settles_and_never_twice() {
    let mut e = Explainer::new(config());
    e.on_interval(&iv(IntervalKind::HostSync, 0, 10, 0, 10));
    e.on_interval(&iv(IntervalKind::Launch, 0, 10, 50, 51));
    // Not settled yet (the gap ended at 50 ms): a late state still counts.
    e.tick(100 * MS, &|_| ThreadNow::Running);
    assert!(e.histories.is_empty());
    e.on_interval(&iv(IntervalKind::Serialization, 0, 10, 20, 40));
    e.tick(50 * MS + SETTLE_NS, &|_| ThreadNow::Running);
    assert_eq!(idle_ms(&e, ALL_DEVICES, Cause::Serialization), 20);
    assert_eq!(idle_ms(&e, ALL_DEVICES, Cause::Unobserved), 20);
    // Once attributed, a state arriving later changes nothing.
    e.on_interval(&iv(IntervalKind::GilWait, 0, 10, 10, 20));
    e.tick(2000 * MS, &|_| ThreadNow::Running);
    assert_eq!(idle_ms(&e, ALL_DEVICES, Cause::GilWait), 0);
    let (_, h) = &e.histories[&(0, ALL_DEVICES.to_string())];
    assert_eq!(h.totals.gaps, 1);
    assert_eq!(h.totals.idle_total_ns(), 40 * MS);
}

#[test]
fn a_wait_still_in_progress_covers_the_gap() {
    let mut e = Explainer::new(config());
    // Thread 10 launches and syncs; thread 11 (a launcher too) has sat
    // in epoll since 5 ms and still does; thread 10 then waits on a
    // socket 20-40 ms before launching again.
    e.on_interval(&iv(IntervalKind::HostSync, 0, 11, 0, 4));
    e.on_interval(&iv(IntervalKind::HostSync, 0, 10, 0, 10));
    e.on_interval(&iv(
        IntervalKind::OffCpu,
        OffCpuReason::SyscallNet as u32,
        10,
        20,
        40,
    ));
    e.on_interval(&iv(IntervalKind::Launch, 0, 10, 50, 51));
    let in_epoll = |tid: u32| match tid {
        11 => ThreadNow::Off(Ongoing {
            since_ns: 5 * MS,
            woken_ns: None,
            reason: OffCpuReason::SyscallPoll as u32,
        }),
        _ => ThreadNow::Running,
    };
    e.tick(50 * MS + SETTLE_NS, &in_epoll);
    // Without the ongoing wait thread 11 would count as running
    // Python and hide thread 10's network wait.
    assert_eq!(idle_ms(&e, ALL_DEVICES, Cause::SyscallNet), 20);
    assert_eq!(idle_ms(&e, ALL_DEVICES, Cause::Unobserved), 20);
    assert_eq!(idle_ms(&e, ALL_DEVICES, Cause::NoWork), 0);
}

#[test]
fn phases_get_exactly_their_part() {
    let mut e = Explainer::new(config());
    let note = |event: &str, t_ms: u64| Annotation {
        source: String::new(),
        run_id: "r".into(),
        phase: "stress".into(),
        kind: "closed".into(),
        event: event.into(),
        monotonic_ns: t_ms * MS,
        unix_ns: None,
        output_tokens: None,
        service: None,
    };
    e.phase_event(&note("start", 15));
    e.on_interval(&iv(IntervalKind::HostSync, 0, 10, 0, 10));
    e.on_interval(&iv(
        IntervalKind::OffCpu,
        OffCpuReason::SyscallSleep as u32,
        10,
        10,
        30,
    ));
    e.on_interval(&iv(IntervalKind::Launch, 0, 10, 30, 31));
    e.phase_event(&note("end", 25));
    e.tick(1000 * MS, &|_| ThreadNow::Running);
    let p = &e.phases[0];
    let (_, split) = &p.splits[&(0, ALL_DEVICES.to_string())];
    // The gap 10-30 ms is all sleep; the phase holds 15-25 ms of it.
    assert_eq!(split.idle_ns[Cause::SyscallSleep.index()], 10 * MS);
    assert_eq!(split.idle_total_ns(), 10 * MS);
    assert_eq!(split.gaps, 0, "the gap ended after the phase");
}

#[test]
fn the_window_is_bounded_and_evictions_are_counted() {
    let mut e = Explainer::new(ExplainConfig {
        max_states: 10,
        window_ns: 100 * MS,
        ..config()
    });
    for t in 0..50 {
        e.on_interval(&iv(IntervalKind::GilWait, 0, 1, t, t + 1));
    }
    assert_eq!(e.retained(), 10);
    assert_eq!(e.counters.evicted, 40);
    // Far later: everything older than the window goes, uncounted.
    e.on_interval(&iv(IntervalKind::GilWait, 0, 1, 10_000, 10_001));
    assert_eq!(e.retained(), 1);
    assert_eq!(e.counters.evicted, 40);
}

#[test]
fn a_launching_thread_that_exited_claims_no_later_gap() {
    let mut e = Explainer::new(config());
    // Thread 20 launched and synced once, in a process that has since
    // exited; thread 10 then syncs, sleeps 20-40 ms and launches at 50.
    e.on_interval(&iv(IntervalKind::HostSync, 0, 20, 0, 2));
    e.on_interval(&iv(IntervalKind::HostSync, 0, 10, 0, 10));
    e.on_interval(&iv(
        IntervalKind::OffCpu,
        OffCpuReason::SyscallSleep as u32,
        10,
        20,
        40,
    ));
    e.on_interval(&iv(IntervalKind::Launch, 0, 10, 50, 51));
    let exited = |tid: u32| match tid {
        20 => ThreadNow::Gone,
        _ => ThreadNow::Running,
    };
    e.tick(50 * MS + SETTLE_NS, &exited);
    // Alive but silent, thread 20 would count as running Python through
    // the whole gap and hide thread 10's sleep.
    assert_eq!(idle_ms(&e, ALL_DEVICES, Cause::SyscallSleep), 20);
    assert_eq!(idle_ms(&e, ALL_DEVICES, Cause::Unobserved), 20);
    assert_eq!(e.launchers(0), 1);
}

#[test]
fn an_exited_launcher_counts_only_for_the_gaps_before_its_last_launch() {
    let mut e = Explainer::new(config());
    // Thread 20 (another process of the service) syncs at 0-2 ms and at
    // 40-42 ms, then exits. Thread 10 syncs at 0-10 ms, sleeps 20-40 ms,
    // launches at 50, syncs 50-60 ms, sleeps 70-90 ms, launches at 100.
    // Both gaps settle in one batch.
    e.on_interval(&iv(IntervalKind::HostSync, 0, 20, 0, 2));
    e.on_interval(&iv(IntervalKind::HostSync, 0, 20, 40, 42));
    e.on_interval(&iv(IntervalKind::HostSync, 0, 10, 0, 10));
    let sleep = OffCpuReason::SyscallSleep as u32;
    e.on_interval(&iv(IntervalKind::OffCpu, sleep, 10, 20, 40));
    e.on_interval(&iv(IntervalKind::Launch, 0, 10, 50, 51));
    e.on_interval(&iv(IntervalKind::HostSync, 0, 10, 50, 60));
    e.on_interval(&iv(IntervalKind::OffCpu, sleep, 10, 70, 90));
    e.on_interval(&iv(IntervalKind::Launch, 0, 10, 100, 101));
    let exited = |tid: u32| match tid {
        20 => ThreadNow::Gone,
        _ => ThreadNow::Running,
    };
    e.tick(100 * MS + SETTLE_NS, &exited);
    // The gaps before thread 20's last sync (10-40 and 42-50 ms) count
    // its silence as running Python, which outranks the sleep. The last
    // (60-100 ms) began after it: thread 10's sleep is there.
    assert_eq!(idle_ms(&e, ALL_DEVICES, Cause::SyscallSleep), 20);
    assert_eq!(idle_ms(&e, ALL_DEVICES, Cause::Unobserved), 30 + 8 + 20);
}

#[test]
fn an_idle_stretch_that_has_not_ended_is_open_and_attributed_so_far() {
    // Uprobes: launch, sync returns at 5 ms, then the thread waits in
    // epoll; nothing is launched again.
    let mut e = Explainer::new(config());
    e.on_interval(&iv(IntervalKind::Launch, 0, 10, 0, 1));
    e.on_interval(&iv(IntervalKind::HostSync, 0, 10, 1, 5));
    let polling = |_| {
        ThreadNow::Off(Ongoing {
            since_ns: 6 * MS,
            woken_ns: None,
            reason: OffCpuReason::SyscallPoll as u32,
        })
    };
    // Younger than OPEN_AFTER_NS: not yet.
    e.tick(900 * MS, &polling);
    assert!(e.open(0).is_empty());
    e.tick(5005 * MS, &polling);
    let open = e.open(0);
    assert_eq!(open.len(), 1);
    assert_eq!(
        (open[0].device.as_str(), open[0].source),
        (ALL_DEVICES, Source::Uprobes)
    );
    assert_eq!(open[0].since_ns, 5 * MS);
    // 5-6 ms on CPU, then the wait in progress: no work.
    let t = attribute::totals(&open[0].segments);
    assert_eq!(t[Cause::Unobserved.index()], MS);
    assert_eq!(t[Cause::NoWork.index()], 4999 * MS);
    // A launch arriving (not yet settled) closes it at once.
    e.on_interval(&iv(IntervalKind::Launch, 0, 10, 5006, 5007));
    e.tick(5008 * MS, &|_| ThreadNow::Running);
    assert!(e.open(0).is_empty());

    // Deep mode: the device's last stretch ended at 20 ms; a CUDA call
    // CUPTI reports afterwards means work was handed over.
    let mut e = Explainer::new(config());
    let st = |s: u64, end: u64| Stretch {
        start_ns: s * MS,
        end_ns: end * MS,
        gap_before_ns: None,
    };
    e.on_launching_thread(0, 10, 2 * MS);
    // The launch that made the kernel.
    e.on_api_call(0, 0, 9 * MS);
    e.on_stretch(0, 0, st(10, 20));
    e.tick(3000 * MS, &|_| ThreadNow::Running);
    let open = e.open(0);
    assert_eq!(open.len(), 1);
    assert_eq!((open[0].device.as_str(), open[0].since_ns), ("0", 20 * MS));
    assert_eq!(
        attribute::totals(&open[0].segments)[Cause::Unobserved.index()],
        2980 * MS
    );
    e.on_api_call(0, 0, 3001 * MS);
    e.tick(3100 * MS, &|_| ThreadNow::Running);
    assert!(e.open(0).is_empty());

    // A kernel launched while the last stretch ran, still running (its
    // record comes when it ends): not open.
    let mut e = Explainer::new(config());
    e.on_api_call(0, 0, 9 * MS);
    e.on_stretch(0, 0, st(10, 20));
    e.on_api_call(0, 0, 15 * MS);
    e.on_in_flight(&HashMap::from([((0, None), 15 * MS)]));
    e.tick(3000 * MS, &|_| ThreadNow::Running);
    assert!(e.open(0).is_empty());
    // Its kernel reported: the gap is open after all.
    e.on_in_flight(&HashMap::new());
    e.tick(3100 * MS, &|_| ThreadNow::Running);
    assert_eq!(e.open(0).len(), 1);

    // Two devices: a thread keeps launching on device 0 while device 1
    // went idle at 20 ms. Launches and in-flight kernels whose device is
    // known (the thread's earlier kernels all ran on 0) keep only device
    // 0 from reading open; one in flight whose device is not known keeps
    // both, until its kernel says where it went.
    let mut e = Explainer::new(config());
    e.on_stretch(0, 0, st(10, 20));
    e.on_stretch(0, 1, st(10, 20));
    e.on_api_call(0, 0, 2990 * MS);
    e.on_in_flight(&HashMap::from([((0, Some(0)), 2990 * MS)]));
    e.tick(3000 * MS, &|_| ThreadNow::Running);
    let open: Vec<&str> = e.open(0).iter().map(|g| g.device.as_str()).collect();
    assert_eq!(open, ["1"]);
    e.on_in_flight(&HashMap::from([((0, None), 2995 * MS)]));
    e.tick(3100 * MS, &|_| ThreadNow::Running);
    assert!(e.open(0).is_empty());
    e.on_in_flight(&HashMap::new());
    e.on_api_call(0, 0, 2995 * MS);
    e.tick(3200 * MS, &|_| ThreadNow::Running);
    let open: Vec<&str> = e.open(0).iter().map(|g| g.device.as_str()).collect();
    assert_eq!(open, ["1"]);
}

#[test]
fn python_cpu_is_recorded_time_on_cpu_and_the_rest_is_unobserved() {
    let mut e = Explainer::new(config());
    // Thread 10 syncs until 5 ms, is on CPU 5-45 ms (recorded), then does
    // nothing long enough to record until its launch at 60 ms.
    e.on_interval(&iv(IntervalKind::Launch, 0, 10, 0, 1));
    e.on_interval(&iv(IntervalKind::HostSync, 0, 10, 1, 5));
    e.on_interval(&iv(IntervalKind::OnCpu, 0, 10, 5, 45));
    e.on_interval(&iv(IntervalKind::Launch, 0, 10, 60, 61));
    e.tick(61 * MS + SETTLE_NS, &|_| ThreadNow::Running);
    assert_eq!(idle_ms(&e, ALL_DEVICES, Cause::PythonCpu), 40);
    assert_eq!(idle_ms(&e, ALL_DEVICES, Cause::Unobserved), 15);
    let h = &e.histories[&(0, ALL_DEVICES.to_string())].1;
    assert_eq!(h.totals.no_launcher_ns, 0);
    // A stretch on CPU still in progress at the tick counts up to now.
    e.on_interval(&iv(IntervalKind::HostSync, 0, 10, 61, 70));
    e.on_interval(&iv(IntervalKind::Launch, 0, 10, 100, 101));
    e.tick(101 * MS + SETTLE_NS, &|tid| {
        assert_eq!(tid, 10);
        ThreadNow::OnCpu(72 * MS)
    });
    assert_eq!(idle_ms(&e, ALL_DEVICES, Cause::PythonCpu), 40 + 28);
    assert_eq!(idle_ms(&e, ALL_DEVICES, Cause::Unobserved), 15 + 2);

    // No launching thread known (CUPTI's thread ids unusable): the whole
    // gap is unobserved, for want of a launcher.
    let mut e = Explainer::new(config());
    let st = |s: u64, end: u64, gap: Option<u64>| Stretch {
        start_ns: s * MS,
        end_ns: end * MS,
        gap_before_ns: gap.map(|g| g * MS),
    };
    e.on_stretch(0, 0, st(0, 10, None));
    e.on_stretch(0, 0, st(30, 40, Some(20)));
    e.tick(2000 * MS, &|_| ThreadNow::Running);
    assert_eq!(idle_ms(&e, "0", Cause::Unobserved), 20);
    let h = &e.histories[&(0, "0".to_string())].1;
    assert_eq!(h.totals.no_launcher_ns, 20 * MS);
}

#[test]
fn serialization_idle_is_split_by_function_and_sums_to_the_cause() {
    let mut e = Explainer::new(config());
    // Thread 10: launch, sync, json (probe 0) for 10 ms, pickle (probe 2)
    // for 6 ms, launch.
    let ivs = [
        iv(IntervalKind::Launch, 0, 10, 0, 1),
        iv(IntervalKind::HostSync, 0, 10, 1, 5),
        iv(IntervalKind::Serialization, 0, 10, 5, 15),
        iv(IntervalKind::Serialization, 2, 10, 15, 21),
        iv(IntervalKind::Launch, 0, 10, 21, 22),
    ];
    for i in &ivs {
        e.on_interval(i);
    }
    e.tick(22 * MS + SETTLE_NS, &|_| ThreadNow::Running);
    let h = &e.histories[&(0, ALL_DEVICES.to_string())].1;
    assert_eq!(idle_ms(&e, ALL_DEVICES, Cause::Serialization), 16);
    assert_eq!(h.totals.serialization_ns[0], 10 * MS);
    assert_eq!(h.totals.serialization_ns[2], 6 * MS);
    assert_eq!(
        h.totals.serialization_ns.iter().sum::<u64>(),
        h.totals.idle_ns[Cause::Serialization.index()]
    );
    // Windows of the history say the same.
    let w = h.window(0, 100 * MS);
    assert_eq!(w.serialization_ns[0], 10 * MS);
    assert_eq!(w.serialization_ns[2], 6 * MS);
}
