//! CUDA API uprobes against ground truth, with a test fixture standing in
//! for libcuda and libcudart (`testkit/data/fake_cuda.c`: the same
//! exported names, known behaviour) and a caller (`cuda_caller.c`) that
//! loads them lazily and calls each entry point a known number of times.

use std::time::{Duration, Instant};

use gapscope_testkit::{
    Daemon, Metrics,
    fake_cuda::{FakeCuda, value},
    http_get,
    objdump::probed_instruction,
    promtool_check, serial,
};

fn daemon(extra: &str) -> Daemon {
    Daemon::start_with(
        r#"[[service]]
name = "cuda"
cmdline = 'cuda_caller \S*gapscope-cuda-fixture'
"#,
        extra,
    )
}

fn wait_until(daemon: &Daemon, what: &str, ready: impl Fn(&Metrics) -> bool) -> Metrics {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let m = daemon.scrape();
        if ready(&m) {
            return m;
        }
        assert!(Instant::now() < deadline, "{what}:\n{}", daemon.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
}

const LAUNCHES: u64 = 500;
const SYNCS: u64 = 20;
const SYNC_US: u64 = 2000;

#[test]
fn launches_and_host_syncs_are_counted_exactly_and_timed() {
    let _g = serial();
    let fixture = FakeCuda::build();
    // A budget no burst here reaches: every launch is counted.
    let daemon = daemon("[cuda]\nlaunch_budget = 1.0\n");
    let args = [
        "exact",
        &LAUNCHES.to_string(),
        &SYNCS.to_string(),
        &SYNC_US.to_string(),
    ]
    .map(std::string::ToString::to_string);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut traced = fixture.caller("cuda_caller", &args);
    daemon.wait_processes("cuda", 1.0);
    // Loaded after the process started: picked up by the next look.
    wait_until(&daemon, "the CUDA libraries were never probed", |m| {
        m.get_or_zero("gapscope_cuda_probed_files", &[]) == 2.0
    });
    // An untraced process calling the same files is not counted.
    let mut untraced = fixture.caller("other_caller", &args);
    untraced.go();
    untraced.finish();

    let lines = traced.go();
    let sync_ns = value(&lines, "sync_ns");
    let m = wait_until(&daemon, "host syncs not all counted", |m| {
        m.get_or_zero(
            "gapscope_cuda_host_sync_wait_seconds_count",
            &[("service", "cuda"), ("call", "cudaDeviceSynchronize")],
        ) == SYNCS as f64
    });
    let s = |extra: &[(&'static str, &'static str)]| {
        let mut l = vec![("service", "cuda")];
        l.extend_from_slice(extra);
        l
    };
    for (api, entry, expected) in [
        // cuLaunchKernel and cuLaunchKernel_ptsz share the slot.
        ("driver", "cuLaunchKernel", 2 * LAUNCHES),
        ("driver", "cuLaunchKernelEx", LAUNCHES),
        ("runtime", "cudaLaunchKernel", LAUNCHES),
    ] {
        let labels = s(&[("api", api), ("entry", entry)]);
        assert_eq!(
            m.get("gapscope_cuda_launches_total", &labels),
            Some(expected as f64),
            "{entry}"
        );
        assert_eq!(
            m.get("gapscope_cuda_launch_call_duration_seconds_count", &labels),
            Some(expected as f64),
            "{entry}"
        );
        assert_eq!(
            m.get(
                "gapscope_cuda_launch_sampling_ratio",
                &[("api", api), ("entry", entry)]
            ),
            Some(1.0)
        );
    }
    for api in ["driver", "runtime"] {
        assert_eq!(
            m.get("gapscope_cuda_graph_launches_total", &s(&[("api", api)])),
            Some(LAUNCHES as f64),
            "{api} graph launches"
        );
    }
    let mut waited = 0.0;
    for (api, call) in [
        ("driver", "cuStreamSynchronize"),
        ("driver", "cuCtxSynchronize"),
        ("driver", "cuEventSynchronize"),
        ("driver", "cuMemcpyDtoH"),
        ("runtime", "cudaStreamSynchronize"),
        ("runtime", "cudaDeviceSynchronize"),
    ] {
        let labels = s(&[("api", api), ("call", call)]);
        assert_eq!(
            m.get("gapscope_cuda_host_sync_wait_seconds_count", &labels),
            Some(SYNCS as f64),
            "{call}"
        );
        waited += m.get_or_zero("gapscope_cuda_host_sync_wait_seconds_sum", &labels);
    }
    let measured = sync_ns / 1e9;
    eprintln!("host-sync waits: {waited:.6} s probed, {measured:.6} s timed by the caller");
    assert!(
        (waited - measured).abs() <= 0.10 * measured,
        "host-sync waits {waited:.4} s vs {measured:.4} s timed by the caller"
    );
    assert_eq!(
        m.get("gapscope_cuda_processes", &s(&[("api", "driver")])),
        Some(1.0)
    );
    // The instruction each probe sits on, against objdump's reading of
    // the same files.
    let truth = probed_instructions(&fixture);
    assert!(!truth.is_empty());
    for ((api, entry, instruction), n) in &truth {
        assert_eq!(
            m.get(
                "gapscope_cuda_probe_sites",
                &[("api", api), ("entry", entry), ("instruction", instruction)]
            ),
            Some(*n as f64),
            "{entry} on {instruction}"
        );
    }
    assert_eq!(
        m.sum("gapscope_cuda_probe_sites", &[]),
        truth.values().sum::<usize>() as f64,
        "sites objdump does not show"
    );
    if let Err(report) = promtool_check(&m.0) {
        panic!("promtool: {report}\n{}", m.0);
    }

    // Every wait is longer than the 1 ms timeline threshold.
    let body = http_get(daemon.port, "/api/v1/intervals?service=cuda&kind=host_sync").unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let intervals = v["intervals"].as_array().unwrap();
    assert_eq!(intervals.len() as u64, 6 * SYNCS, "{body}");
    let streams = intervals
        .iter()
        .filter(|i| i["call"] == "cuStreamSynchronize" && i["api"] == "driver")
        .count();
    assert_eq!(streams as u64, SYNCS);
    let summed: u64 = intervals
        .iter()
        .map(|i| i["duration_ns"].as_u64().unwrap())
        .sum();
    assert!((summed as f64 / 1e9 - waited).abs() < 1e-6 * measured.max(1.0) + 1e-6);

    traced.finish();
    daemon.wait_processes("cuda", 0.0);
    wait_until(
        &daemon,
        "probes stay attached after the processes left",
        |m| m.get_or_zero("gapscope_cuda_probed_files", &[]) == 0.0,
    );
}

/// (api, entry, instruction) → probe sites, read with objdump: each
/// entry point's exported names in the stand-in libraries, one site per
/// address.
fn probed_instructions(
    fixture: &FakeCuda,
) -> std::collections::BTreeMap<(&'static str, &'static str, &'static str), usize> {
    use gapscoped::cuda::{ENTRY_POINTS, Library};
    let mut out = std::collections::BTreeMap::new();
    for (library, file) in [
        (Library::Driver, "libcuda.so.1"),
        (Library::Runtime, "libcudart.so.12"),
    ] {
        for entry in ENTRY_POINTS.iter().filter(|e| e.library == library) {
            let mut addresses = std::collections::HashSet::new();
            for symbol in entry.symbols {
                if let Some((address, instruction)) =
                    probed_instruction(&fixture.path(file), symbol)
                    && addresses.insert(address)
                {
                    *out.entry((library.api(), entry.name, instruction))
                        .or_default() += 1;
                }
            }
        }
    }
    out
}

#[test]
fn launch_probes_over_budget_are_duty_cycled_and_estimated() {
    let _g = serial();
    let fixture = FakeCuda::build();
    // 1% of a core at 20 µs a call: 500 launches/s probed in full.
    let daemon = daemon("[cuda]\nlaunch_budget = 0.01\nprobe_cost_us = 20\n");
    const RATE: u64 = 800;
    let mut w = fixture.caller("cuda_caller", &["paced", &RATE.to_string(), "10"]);
    daemon.wait_processes("cuda", 1.0);
    wait_until(&daemon, "the CUDA libraries were never probed", |m| {
        m.get_or_zero("gapscope_cuda_probed_files", &[]) == 2.0
    });
    // A paused slot keeps its sites: every scrape while the caller runs
    // (its seconds attached and paused) shows cuLaunchKernel's, as
    // objdump reads them.
    let expected: Vec<(&str, usize)> = probed_instructions(&fixture)
        .into_iter()
        .filter(|((api, entry, _), _)| *api == "driver" && *entry == "cuLaunchKernel")
        .map(|((_, _, instruction), n)| (instruction, n))
        .collect();
    assert!(!expected.is_empty());
    let running = std::sync::atomic::AtomicBool::new(true);
    let (truth, (scrapes, wrong)) = std::thread::scope(|scope| {
        let watcher = scope.spawn(|| {
            let (mut scrapes, mut wrong) = (0, Vec::new());
            while running.load(std::sync::atomic::Ordering::Relaxed) {
                let m = daemon.scrape();
                scrapes += 1;
                for (instruction, n) in &expected {
                    let got = m.get(
                        "gapscope_cuda_probe_sites",
                        &[("entry", "cuLaunchKernel"), ("instruction", instruction)],
                    );
                    if got != Some(*n as f64) {
                        wrong.push((scrapes, *instruction, got));
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            (scrapes, wrong)
        });
        let truth = value(&w.go(), "launches");
        running.store(false, std::sync::atomic::Ordering::Relaxed);
        (truth, watcher.join().unwrap())
    });
    assert!(scrapes >= 50, "{scrapes} scrapes in 10 s");
    assert!(wrong.is_empty(), "sites while duty-cycled: {wrong:?}");
    let labels = [
        ("service", "cuda"),
        ("api", "driver"),
        ("entry", "cuLaunchKernel"),
    ];
    let m = daemon.scrape();
    let ratio = m
        .get(
            "gapscope_cuda_launch_sampling_ratio",
            &[("api", "driver"), ("entry", "cuLaunchKernel")],
        )
        .unwrap();
    assert_eq!(ratio, 0.5, "800/s against 500/s: one second in two");
    let seen = m.get_or_zero("gapscope_cuda_launch_call_duration_seconds_count", &labels);
    let estimated = m.get_or_zero("gapscope_cuda_launches_total", &labels);
    assert!(
        seen < 0.75 * truth,
        "{seen} of {truth} launches probed: the probe was not duty-cycled"
    );
    eprintln!("launches: made {truth}, probed {seen}, estimated {estimated}, ratio {ratio}");
    // Off by at most the second not yet sampled (plus the ticks' jitter);
    // unscaled it would be off by half.
    assert!(
        (estimated - truth).abs() <= 1.25 * RATE as f64,
        "estimated {estimated} launches, made {truth} (probed {seen})"
    );
    assert!(daemon.log_text().contains("probing one second in 2"));
    w.finish();
}

#[test]
fn cuda_probes_can_be_turned_off() {
    let _g = serial();
    let daemon = daemon("[cuda]\nenabled = false\n");
    let m = daemon.scrape();
    assert_eq!(
        m.get("gapscope_collector_up", &[("collector", "cuda")]),
        Some(0.0)
    );
    assert!(m.get("gapscope_cuda_probed_files", &[]).is_none());
}
