//! The configuration file (TOML). Every key is documented in README.md
//! ("Configuration"); unknown keys are errors, not silently ignored.

//!
//! Every section's type is here; `raw` is the file as TOML gives it and
//! `sections` checks each section into its type.

mod raw;
mod sections;

pub use sections::check_gpu_hour_usd;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use regex::Regex;

use crate::{error::UsageError, python::serialization::ProbeSpec};
use raw::RawConfig;
use sections::*;

/// Where the daemon looks when `--config` is not given.
pub const DEFAULT_PATH: &str = "/etc/gapscope/gapscoped.toml";

/// The default listen address: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9478";

#[derive(Debug)]
pub struct Config {
    pub daemon: DaemonConfig,
    pub python: PythonConfig,
    pub timeline: TimelineConfig,
    pub explain: ExplainConfig,
    pub cuda: CudaConfig,
    pub nvml: NvmlConfig,
    pub inject: InjectConfig,
    pub services: Vec<ServiceConfig>,
}

/// CUPTI deep mode's socket.
#[derive(Debug, Clone)]
pub struct InjectConfig {
    pub enabled: bool,
    pub socket: SocketConfig,
    /// How late a record may arrive and still be placed in time: busy
    /// stretches are made final this long after their end.
    pub reorder_window: Duration,
}

/// Where the injection library looks for gapscoped unless told otherwise.
pub const DEFAULT_INJECT_SOCKET: &str = "/run/gapscope/inject.sock";

/// The CUDA API uprobes.
#[derive(Debug, Clone, Copy)]
pub struct CudaConfig {
    pub enabled: bool,
    /// Launches per second, per process and entry point, probed in full:
    /// `launch_budget` (a share of one core) over `probe_cost`.
    pub launch_budget_calls: u64,
}

/// The NVML collector.
#[derive(Debug, Clone)]
pub struct NvmlConfig {
    pub enabled: bool,
    pub interval: Duration,
    /// What the GPU draws with nothing to do, for the idle check; None: the
    /// lowest power seen since gapscoped started.
    pub idle_power_watts: Option<f64>,
    /// The NVML library to load instead of the driver's
    /// `libnvidia-ml.so.1`: a test hook (the NVML stand-in), never needed
    /// on a GPU host.
    pub library: Option<std::path::PathBuf>,
}

/// What gapscoped looks at inside Python processes.
#[derive(Debug)]
pub struct PythonConfig {
    /// Trace the GIL (waits in the kernel, held time sampled).
    pub gil: bool,
    /// Serialization calls per second, per codec function, probed in full;
    /// above it a probe is attached only one second in N.
    pub serialization_budget: u64,
    /// User-defined serialization probes, after the built-in ones.
    pub probes: Vec<ProbeSpec>,
}

/// Which stalls become timeline intervals, and how long they are kept.
#[derive(Debug, Clone, Copy)]
pub struct TimelineConfig {
    /// Shorter stalls are only aggregated in the kernel.
    pub min_interval: Duration,
    pub retention: Duration,
    pub max_intervals: usize,
}

/// `[daemon] bpf_stats`: when the kernel's BPF run-time statistics are on
/// (`bpf::stats`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BpfStats {
    /// `false`: never; `gapscope_bpf_program_run_*` stay at 0.
    Off,
    /// `"sampled"` (the default): on for `window` at the start of every
    /// `period`.
    Sampled { window: Duration, period: Duration },
    /// `true`: all the time.
    On,
}

#[derive(Debug)]
pub struct DaemonConfig {
    pub listen: SocketAddr,
    /// How often /proc is rescanned to catch what events missed.
    pub rescan_interval: Duration,
    /// When the kernel's BPF run-time statistics are on (they cost every
    /// BPF program run on the host two clock reads while on).
    pub bpf_stats: BpfStats,
    /// Give up every capability the daemon no longer needs once its
    /// programs are loaded (see `bpf::caps::kept_after_attach`).
    pub drop_capabilities: bool,
    /// A Prometheus-style web config file (TLS, basic auth) for the HTTP
    /// endpoints; plain HTTP without one.
    pub web_config: Option<std::path::PathBuf>,
    /// What one HTTP client may hold: connections, head and body time.
    pub http: crate::web::serve::Limits,
}

#[derive(Debug)]
pub struct ServiceConfig {
    pub name: String,
    pub matcher: Matcher,
    /// Processes forked by a matched process belong to the same service.
    pub follow_children: bool,
    /// Removed from the file by a reload: it matches nothing any more,
    /// and keeps its id (and name) until gapscoped restarts.
    pub retired: bool,
}

/// What a process must look like to belong to a service. Every field that
/// is set must match (they are ANDed); at least one must be set.
#[derive(Debug, Default)]
pub struct Matcher {
    pub pids: Vec<u32>,
    pub exe: Option<String>,
    pub cmdline: Option<Regex>,
    pub cgroup: Option<String>,
    pub systemd_unit: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ExplainConfig {
    /// How long thread states are kept.
    pub window_ns: u64,
    /// Most thread states kept per service.
    pub max_states: usize,
    /// A poll, futex or network wait at least this long means no work.
    pub no_work_after_ns: u64,
    /// The timeline's threshold: shorter states are not seen, so a gap
    /// shorter than this with nothing recorded is the launch path.
    pub resolution_ns: u64,
    /// How long the history keeps per-100 ms splits.
    pub history_ns: u64,
    /// Price of one GPU-hour: the report's money per hour lost per cause.
    pub gpu_hour_usd: Option<f64>,
}

/// Who may connect, and how much each may send.
#[derive(Debug, Clone)]
pub struct SocketConfig {
    pub path: PathBuf,
    pub allowed_uids: Vec<u32>,
    pub allowed_gids: Vec<u32>,
    /// The socket file's group (`[inject] group`); its members are
    /// admitted, by their primary or supplementary groups.
    pub group: Option<u32>,
    /// The socket file's mode (`[inject] mode`, 0660 by default).
    pub mode: u32,
    pub max_peers: usize,
    pub max_frames_per_second: u32,
}

const SEE_README: &str = "see README.md, section Configuration";

/// The `section.key` whose value a parse error at the end of `before`
/// points into: the last `key =` since the last table header, if any.
fn key_before(before: &str) -> Option<String> {
    let mut table = None;
    let mut key = None;
    for line in before.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            table = Some(
                line.trim_matches(|c| c == '[' || c == ']')
                    .trim()
                    .to_string(),
            );
            key = None;
        } else if !line.starts_with('#')
            && let Some((k, _)) = line.split_once('=')
        {
            key = Some(k.trim().trim_matches('"').to_string());
        }
    }
    let key = key.filter(|k| !k.is_empty() && k.len() <= 64)?;
    Some(match table {
        Some(t) => format!("{t}.{key}"),
        None => key,
    })
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, UsageError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            UsageError::new(
                format!("cannot read config file {}: {e}", path.display()),
                format!(
                    "create it (an example is in deploy/gapscoped.toml) or pass --config PATH; {SEE_README}"
                ),
            )
        })?;
        Self::parse(&text).map_err(|e| UsageError {
            problem: format!("config file {}: {}", path.display(), e.problem),
            fix: e.fix,
        })
    }

    /// Parses and validates configuration text.
    pub fn parse(text: &str) -> Result<Self, UsageError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let at = match e.span() {
                Some(span) => {
                    let before = &text[..text.floor_char_boundary(span.start)];
                    let line = before.matches('\n').count() + 1;
                    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                    // Only a value's error is about the key before it (an
                    // unknown key's message names that key itself).
                    let on_value = before[before.rfind('\n').map_or(0, |i| i + 1)..].contains('=');
                    let key = key_before(before)
                        .filter(|_| on_value)
                        .map_or(String::new(), |k| format!(" ({k})"));
                    format!("line {line}, column {column}{key}: ")
                }
                None => String::new(),
            };
            UsageError::new(
                format!("{at}{}", e.message().trim().replace('\n', " ")),
                format!("correct the key or value named above; {SEE_README}"),
            )
        })?;
        let daemon = parse_daemon(raw.daemon)?;
        if raw.service.is_empty() {
            return Err(UsageError::new(
                "no [[service]] is defined, so there is nothing to trace",
                format!("add a [[service]] with a name and a matcher; {SEE_README}"),
            ));
        }
        if raw.service.len() > gapscope_ebpf_common::MAX_SERVICES as usize {
            return Err(UsageError::new(
                format!(
                    "{} services are defined, more than the {} supported",
                    raw.service.len(),
                    gapscope_ebpf_common::MAX_SERVICES
                ),
                "merge services that belong together",
            ));
        }
        let mut services = Vec::with_capacity(raw.service.len());
        for s in raw.service {
            if services.iter().any(|o: &ServiceConfig| o.name == s.name) {
                return Err(UsageError::new(
                    format!("service name {:?} is used twice", s.name),
                    "give every [[service]] its own name",
                ));
            }
            services.push(parse_service(s)?);
        }
        let budget = raw.python.serialization_budget.unwrap_or(1000);
        if budget == 0 {
            return Err(UsageError::new(
                "python.serialization_budget = 0 would never probe anything",
                "give the calls per second to probe in full (default 1000)",
            ));
        }
        let python = PythonConfig {
            gil: raw.python.gil.unwrap_or(true),
            serialization_budget: budget,
            probes: parse_probes(raw.python.probe)?,
        };
        Ok(Config {
            daemon,
            python,
            explain: parse_explain(raw.explain, &raw.timeline)?,
            timeline: parse_timeline(raw.timeline)?,
            cuda: parse_cuda(raw.cuda)?,
            nvml: parse_nvml(raw.nvml)?,
            inject: parse_inject(raw.inject)?,
            services,
        })
    }
}

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_config_gets_defaults() {
        let c = Config::parse("[[service]]\nname = \"a\"\ncmdline = \"python\"\n").unwrap();
        assert_eq!(c.daemon.listen.to_string(), DEFAULT_LISTEN);
        assert!(c.daemon.listen.ip().is_loopback());
        assert_eq!(c.services.len(), 1);
        assert!(c.services[0].follow_children);
        // 1% of a core at 3 µs a probed call.
        assert_eq!(c.cuda.launch_budget_calls, 3333);
        assert!(c.cuda.enabled && c.nvml.enabled);
        assert_eq!(c.nvml.interval, Duration::from_secs(1));
    }

    #[test]
    fn bpf_statistics_are_sampled_by_default_and_take_three_modes() {
        let with = |keys: &str| {
            Config::parse(&format!(
                "[daemon]\n{keys}\n[[service]]\nname = \"a\"\ncmdline = \"python\"\n"
            ))
        };
        let sampled = |w, p| BpfStats::Sampled {
            window: Duration::from_millis(w),
            period: Duration::from_secs(p),
        };
        assert_eq!(with("").unwrap().daemon.bpf_stats, sampled(1000, 60));
        assert_eq!(
            with("bpf_stats = \"sampled\"\nbpf_stats_window_ms = 250\nbpf_stats_period_s = 5")
                .unwrap()
                .daemon
                .bpf_stats,
            sampled(250, 5)
        );
        assert_eq!(
            with("bpf_stats = true").unwrap().daemon.bpf_stats,
            BpfStats::On
        );
        assert_eq!(
            with("bpf_stats = false").unwrap().daemon.bpf_stats,
            BpfStats::Off
        );
        for (keys, problem, fix) in [
            (
                "bpf_stats = \"sometimes\"",
                "daemon.bpf_stats = \"sometimes\" is not a mode",
                "\"sampled\"",
            ),
            (
                "bpf_stats = 1",
                "daemon.bpf_stats = an integer is not a mode",
                "true",
            ),
            (
                "bpf_stats_window_ms = 2000\nbpf_stats_period_s = 1",
                "daemon.bpf_stats_window_ms = 2000 is not shorter than bpf_stats_period_s = 1",
                "shorter",
            ),
            (
                "bpf_stats_period_s = 0",
                "daemon.bpf_stats_period_s = 0 is out of range",
                "1 to 86400",
            ),
        ] {
            let e = with(keys).unwrap_err();
            assert_eq!(e.problem, problem, "{keys}");
            assert!(e.fix.contains(fix), "{keys}: {}", e.fix);
        }
    }

    #[test]
    fn the_example_config_parses() {
        let c = Config::parse(include_str!("../../../deploy/gapscoped.toml")).unwrap();
        assert_eq!(c.services.len(), 2);
        assert_eq!(c.cuda.launch_budget_calls, 3333);
    }

    #[test]
    fn cgroup_trailing_slash_is_trimmed() {
        let c = Config::parse("[[service]]\nname = \"a\"\ncgroup = \"/system.slice/x.service/\"\n")
            .unwrap();
        assert_eq!(
            c.services[0].matcher.cgroup.as_deref(),
            Some("/system.slice/x.service")
        );
    }
}
