//! The NVML collector on a host without a GPU (CI): it reports itself
//! down with one clear log line, the rest of the daemon carries on, and
//! `[nvml] enabled = false` turns it off. With a driver (the device check)
//! it reports every GPU with dcgm-exporter's labels.

use gapscope_testkit::{Daemon, serial};

fn daemon(extra: &str) -> Daemon {
    Daemon::start_with(
        "[[service]]\nname = \"none\"\ncmdline = \"^nothing-matches-this$\"\n",
        extra,
    )
}

#[test]
fn no_driver_means_collector_down_and_the_daemon_carries_on() {
    let _g = serial();
    let daemon = daemon("");
    let m = daemon.scrape();
    let up = m.get("gapscope_collector_up", &[("collector", "nvml")]);
    let driver = std::path::Path::new("/dev/nvidiactl").exists();
    if driver {
        gapscope_testkit::not_checked(
            "the no-driver path: an NVIDIA driver is present (checked that GPUs are reported instead)",
        );
        assert_eq!(up, Some(1.0), "{}", daemon.log_text());
        assert!(
            m.get("gapscope_gpu_memory_total_bytes", &[("gpu", "0")])
                .is_some()
        );
        return;
    }
    assert_eq!(up, Some(0.0));
    assert_eq!(
        m.get("gapscope_collector_up", &[("collector", "syscalls")]),
        Some(1.0)
    );
    assert!(!m.0.contains("gapscope_gpu_utilization_ratio{"), "{}", m.0);
    let log = daemon.log_text();
    let down: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("NVML collector down"))
        .collect();
    assert_eq!(down.len(), 1, "{log}");
    assert!(
        down[0].contains("no NVIDIA driver") && down[0].contains("[nvml] enabled = false"),
        "the line names the problem and the fix: {}",
        down[0]
    );
    // Still down, still quiet, a few seconds later.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let log = daemon.log_text();
    assert_eq!(log.matches("NVML").count(), 1, "{log}");
}

#[test]
fn the_collector_can_be_turned_off() {
    let _g = serial();
    let daemon = daemon("[nvml]\nenabled = false\n");
    let m = daemon.scrape();
    assert_eq!(
        m.get("gapscope_collector_up", &[("collector", "nvml")]),
        Some(0.0)
    );
    assert!(!daemon.log_text().contains("NVML collector"));
}
