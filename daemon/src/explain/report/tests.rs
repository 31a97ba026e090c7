use super::*;

#[test]
fn quantiles_and_shares_interpolate_inside_log2_buckets() {
    // 10 kernels in (4, 8] µs, 10 in (8, 16] µs.
    let cdf = [(4e-6, 0.0), (8e-6, 10.0), (16e-6, 20.0)];
    assert!((fraction_below(&cdf, 10e-6, 20.0) - 0.625).abs() < 1e-9);
    assert!((quantile(&cdf, 0.5, 20.0).unwrap() - 8e-6).abs() < 1e-12);
    assert!((quantile(&cdf, 0.75, 20.0).unwrap() - 12e-6).abs() < 1e-12);
    assert_eq!(fraction_below(&cdf, 1.0, 20.0), 1.0);
}

#[test]
fn windows_parse_with_units() {
    assert_eq!(parse_window("60s"), Some(60_000_000_000));
    assert_eq!(parse_window("5m"), Some(300_000_000_000));
    assert_eq!(parse_window("90"), Some(90_000_000_000));
    assert_eq!(parse_window("1.5h"), Some(5_400_000_000_000));
    for bad in ["", "s", "10x", "-5s", "1ms"] {
        assert_eq!(parse_window(bad), None, "{bad}");
    }
}

#[test]
fn tokens_come_from_cumulative_annotation_counts() {
    let a = |t: u64, tokens: u64, run: &str, service: Option<&str>| Annotation {
        source: String::new(),
        run_id: run.into(),
        phase: "stress".into(),
        kind: String::new(),
        event: "start".into(),
        monotonic_ns: t,
        unix_ns: None,
        output_tokens: Some(tokens),
        service: service.map(str::to_string),
    };
    let list = [
        a(10, 100, "r", None),
        a(20, 150, "r", None),
        a(30, 400, "r", None),
    ];
    assert_eq!(tokens_between(&list, "s", 0, 100), Some(300.0));
    assert_eq!(tokens_between(&list, "s", 15, 25), None);
    assert_eq!(tokens_between(&list, "s", 15, 35), Some(250.0));
    // A run that named its service counts for that service only; one that
    // named none counts for every service.
    let named = [
        a(10, 0, "x", Some("other")),
        a(30, 1000, "x", Some("other")),
        a(10, 0, "y", Some("s")),
        a(30, 60, "y", Some("s")),
    ];
    assert_eq!(tokens_between(&named, "s", 0, 100), Some(60.0));
    assert_eq!(tokens_between(&named, "other", 0, 100), Some(1000.0));
    assert_eq!(tokens_between(&named, "third", 0, 100), None);
}

/// The CPU side, codecs, launches and kernels come from the typed
/// counters of the service asked for, differenced between snapshots.
#[test]
fn a_windows_cpu_figures_are_the_typed_counters_increase() {
    use crate::explain::snapshot::Key;
    let at = |scale: f64| -> Vec<(Key, f64)> {
        let mine = |c: Counter, v: f64| (Key::of(1, c), v * scale);
        vec![
            mine(Counter::SyscallCalls(0), 10.0),
            mine(Counter::SyscallSeconds(0), 0.5),
            mine(Counter::SyscallCalls(202), 4.0),
            mine(Counter::SyscallSeconds(202), 2.0),
            mine(Counter::OnCpuSeconds, 3.0),
            mine(Counter::OffCpuSeconds(OffCpuReason::Runqueue as u32), 0.25),
            mine(Counter::GilWaits, 7.0),
            mine(Counter::GilWaitSeconds, 0.7),
            mine(Counter::CodecCalls(1), 5.0),
            mine(Counter::CodecSeconds(1), 0.05),
            mine(Counter::Launches("runtime"), 40.0),
            mine(Counter::Launches("driver"), 50.0),
            mine(Counter::GraphLaunches("driver"), 2.0),
            mine(Counter::Kernels, 100.0),
            // 50 kernels of 4-8 µs, 50 of 8-16 µs.
            mine(Counter::KernelsInBucket(12), 50.0),
            mine(Counter::KernelsInBucket(13), 50.0),
            // Another service's: not this report's.
            (Key::of(0, Counter::OnCpuSeconds), 99.0 * scale),
            (Key::daemon(Counter::EventsDropped("sched")), 2.0 * scale),
            (Key::daemon(Counter::InjectRecordsDropped), 6.0 * scale),
        ]
    };
    let mut snapshots = Snapshots::new(u64::MAX);
    snapshots.take(1_000, &at(1.0), false);
    snapshots.take(2_000, &at(3.0), false);
    let explainer = Explainer::new(crate::config::ExplainConfig {
        window_ns: 30_000_000_000,
        max_states: 1000,
        no_work_after_ns: 100_000_000,
        resolution_ns: 1_000_000,
        history_ns: 900_000_000_000,
        gpu_hour_usd: None,
    });
    let codecs = [
        ("json".to_string(), "encode".to_string()),
        ("pickle".to_string(), "decode".to_string()),
    ];
    let r = build(
        &Inputs {
            service_id: 1,
            service: "b",
            explainer: &explainer,
            snapshots: &snapshots,
            annotations: &[],
            top_kernels: Vec::new(),
            deep_enabled: true,
            codecs: &codecs,
            gpu_hour_usd: None,
            live: true,
            what_if: &[],
        },
        1_500,
        2_500,
    );
    // Every figure doubled between the snapshots (×3 − ×1).
    assert_eq!(r.cpu.on_cpu_seconds, 6.0);
    assert_eq!(r.cpu.off_cpu_seconds["runqueue"], 0.5);
    let top: Vec<_> = r
        .cpu
        .top_syscalls
        .iter()
        .map(|s| (s.syscall.as_str(), s.calls, s.seconds))
        .collect();
    assert_eq!(top, [("futex", 8.0, 4.0), ("read", 20.0, 1.0)]);
    assert_eq!(r.gil.waits, 14.0);
    assert!((r.gil.wait_seconds - 1.4).abs() < 1e-9);
    assert_eq!(r.serialization.len(), 1);
    assert_eq!(
        (
            r.serialization[0].codec.as_str(),
            r.serialization[0].op.as_str()
        ),
        ("pickle", "decode")
    );
    assert_eq!(r.serialization[0].calls, 10.0);
    // The driver's launches where it saw any (a runtime launch reaches
    // it too).
    assert_eq!((r.fusion.launches, r.fusion.graph_launches), (100.0, 4.0));
    assert_eq!(r.fusion.kernels, 200.0);
    assert!((r.fusion.median_kernel_us.unwrap() - 8.192).abs() < 1e-9);
    assert_eq!(r.data_quality.events_dropped["sched"], 4.0);
    assert_eq!(r.data_quality.inject_records_dropped, 12.0);
}
