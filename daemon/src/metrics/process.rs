//! The standard `process_*` metrics of a Prometheus exporter, for
//! gapscoped itself: CPU, memory, descriptors, threads and start time,
//! read from /proc/self at each scrape. A restart shows as a new
//! `process_start_time_seconds` (and counters starting over), as it does
//! for node_exporter.

use super::Family;
use crate::state::DaemonState;

pub(super) fn collect(_: &DaemonState) -> Vec<Family> {
    let Some(stat) = Stat::read() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut one = |f: fn(&str, &str) -> Family, name: &str, help: &str, value: f64| {
        let mut family = f(name, help);
        if name.ends_with("_total") {
            family.add_counter(&[], value);
        } else {
            family.add_gauge(&[], value);
        }
        out.push(family);
    };
    one(
        Family::counter,
        "process_cpu_seconds_total",
        "Total user and system CPU time spent in seconds.",
        stat.cpu_s,
    );
    one(
        Family::gauge,
        "process_resident_memory_bytes",
        "Resident memory size in bytes.",
        stat.rss_bytes,
    );
    one(
        Family::gauge,
        "process_virtual_memory_bytes",
        "Virtual memory size in bytes.",
        stat.vsize_bytes,
    );
    one(
        Family::gauge,
        "process_start_time_seconds",
        "Start time of the process since unix epoch in seconds.",
        stat.start_unix_s,
    );
    one(
        Family::gauge,
        "process_threads",
        "Number of OS threads in the process.",
        stat.threads,
    );
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        one(
            Family::gauge,
            "process_open_fds",
            "Number of open file descriptors.",
            fds.count() as f64,
        );
    }
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid out-pointer to an rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) } == 0 {
        one(
            Family::gauge,
            "process_max_fds",
            "Maximum number of open file descriptors.",
            limit.rlim_cur as f64,
        );
    }
    out
}

/// What /proc/self/stat says, in units.
struct Stat {
    cpu_s: f64,
    rss_bytes: f64,
    vsize_bytes: f64,
    start_unix_s: f64,
    threads: f64,
}

impl Stat {
    fn read() -> Option<Stat> {
        let text = std::fs::read_to_string("/proc/self/stat").ok()?;
        // The command name is in parentheses and may hold spaces: the
        // fields start after its last ')'. Field 3 (state) is [0] here.
        let fields: Vec<&str> = text.rsplit_once(')')?.1.split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3)?.parse::<f64>().ok();
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        // SAFETY: as above.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as f64;
        let boot = std::fs::read_to_string("/proc/stat")
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("btime ")?.trim().parse::<f64>().ok())?;
        Some(Stat {
            cpu_s: (field(14)? + field(15)?) / ticks,
            threads: field(20)?,
            start_unix_s: boot + field(22)? / ticks,
            vsize_bytes: field(23)?,
            rss_bytes: field(24)? * page,
        })
    }
}
