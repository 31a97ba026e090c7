//! The configuration file (TOML). Every key is documented in README.md
//! ("Configuration"); unknown keys are errors, not silently ignored.

use std::{net::SocketAddr, path::Path, time::Duration};

use regex::Regex;
use serde::Deserialize;

use crate::{
    error::UsageError,
    python::serialization::{Locate, MAX_PROBES, ProbeSpec, default_specs},
};

/// Where the daemon looks when `--config` is not given.
pub const DEFAULT_PATH: &str = "/etc/gapscope/gapscoped.toml";

/// The default listen address: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9478";

#[derive(Debug)]
pub struct Config {
    pub daemon: DaemonConfig,
    pub python: PythonConfig,
    pub timeline: TimelineConfig,
    pub explain: crate::explain::ExplainConfig,
    pub cuda: CudaConfig,
    pub nvml: NvmlConfig,
    pub inject: InjectConfig,
    pub services: Vec<ServiceConfig>,
}

/// CUPTI deep mode's socket.
#[derive(Debug, Clone)]
pub struct InjectConfig {
    pub enabled: bool,
    pub socket: crate::deep::socket::SocketConfig,
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
#[derive(Debug, Clone, Copy)]
pub struct NvmlConfig {
    pub enabled: bool,
    pub interval: Duration,
    /// What the GPU draws with nothing to do, for the idle check; None: the
    /// lowest power seen since gapscoped started.
    pub idle_power_watts: Option<f64>,
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

#[derive(Debug)]
pub struct DaemonConfig {
    pub listen: SocketAddr,
    /// How often /proc is rescanned to catch what events missed.
    pub rescan_interval: Duration,
    /// Turn on the kernel's BPF run-time statistics (costs ~20 ns per
    /// program run, host-wide, while on).
    pub bpf_stats: bool,
    /// Give up every capability the daemon no longer needs once its
    /// programs are loaded (see `bpf::caps::kept_after_attach`).
    pub drop_capabilities: bool,
    /// A Prometheus-style web config file (TLS, basic auth) for the HTTP
    /// endpoints; plain HTTP without one.
    pub web_config: Option<std::path::PathBuf>,
}

#[derive(Debug)]
pub struct ServiceConfig {
    pub name: String,
    pub matcher: Matcher,
    /// Processes forked by a matched process belong to the same service.
    pub follow_children: bool,
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    daemon: RawDaemon,
    #[serde(default)]
    python: RawPython,
    #[serde(default)]
    timeline: RawTimeline,
    #[serde(default)]
    explain: RawExplain,
    #[serde(default)]
    cuda: RawCuda,
    #[serde(default)]
    nvml: RawNvml,
    #[serde(default)]
    inject: RawInject,
    #[serde(default)]
    service: Vec<RawService>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawInject {
    enabled: Option<bool>,
    socket: Option<String>,
    #[serde(default)]
    allowed_uids: Vec<u32>,
    #[serde(default)]
    allowed_gids: Vec<u32>,
    max_peers: Option<usize>,
    max_frames_per_second: Option<u32>,
    reorder_window_ms: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCuda {
    enabled: Option<bool>,
    launch_budget: Option<f64>,
    probe_cost_us: Option<f64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawNvml {
    enabled: Option<bool>,
    interval_ms: Option<u64>,
    idle_power_watts: Option<f64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPython {
    gil: Option<bool>,
    serialization_budget: Option<u64>,
    #[serde(default)]
    probe: Vec<RawProbe>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawExplain {
    window_s: Option<u64>,
    max_states: Option<usize>,
    no_work_after_ms: Option<u64>,
    history_s: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTimeline {
    min_interval_us: Option<u64>,
    retention_s: Option<u64>,
    max_intervals: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProbe {
    library: String,
    symbol: Option<String>,
    symbol_pattern: Option<String>,
    method: Option<String>,
    codec: String,
    op: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDaemon {
    listen: Option<String>,
    rescan_interval_ms: Option<u64>,
    bpf_stats: Option<bool>,
    drop_capabilities: Option<bool>,
    web_config: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: String,
    #[serde(default)]
    pids: Vec<u32>,
    exe: Option<String>,
    cmdline: Option<String>,
    cgroup: Option<String>,
    systemd_unit: Option<String>,
    follow_children: Option<bool>,
}

const SEE_README: &str = "see README.md, section Configuration";

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
                    let before = &text[..span.start.min(text.len())];
                    let line = before.matches('\n').count() + 1;
                    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                    format!("line {line}, column {column}: ")
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

fn parse_timeline(raw: RawTimeline) -> Result<TimelineConfig, UsageError> {
    let min_us = raw.min_interval_us.unwrap_or(1000);
    if min_us < 10 {
        return Err(UsageError::new(
            format!(
                "timeline.min_interval_us = {min_us} would send nearly every call to user space"
            ),
            "use 10 or more (default 1000, one millisecond)",
        ));
    }
    let retention_s = raw.retention_s.unwrap_or(300);
    if !(1..=3600).contains(&retention_s) {
        return Err(UsageError::new(
            format!("timeline.retention_s = {retention_s} is out of range"),
            "use 1 to 3600 seconds (default 300)",
        ));
    }
    let max_intervals = raw.max_intervals.unwrap_or(100_000);
    if !(100..=10_000_000).contains(&max_intervals) {
        return Err(UsageError::new(
            format!("timeline.max_intervals = {max_intervals} is out of range"),
            "use 100 to 10000000 (default 100000, about 3 MB)",
        ));
    }
    Ok(TimelineConfig {
        min_interval: Duration::from_micros(min_us),
        retention: Duration::from_secs(retention_s),
        max_intervals,
    })
}

/// `[explain]`: the attribution's window of thread states and history.
fn parse_explain(
    raw: RawExplain,
    timeline: &RawTimeline,
) -> Result<crate::explain::ExplainConfig, UsageError> {
    let window_s = raw.window_s.unwrap_or(30);
    if !(1..=600).contains(&window_s) {
        return Err(UsageError::new(
            format!("explain.window_s = {window_s} is out of range"),
            "use 1 to 600 seconds (default 30): how long thread states are kept for attribution",
        ));
    }
    let max_states = raw.max_states.unwrap_or(200_000);
    if !(1000..=10_000_000).contains(&max_states) {
        return Err(UsageError::new(
            format!("explain.max_states = {max_states} is out of range"),
            "use 1000 to 10000000 per service (default 200000, about 5 MB)",
        ));
    }
    let no_work_ms = raw.no_work_after_ms.unwrap_or(100);
    if !(1..=60_000).contains(&no_work_ms) {
        return Err(UsageError::new(
            format!("explain.no_work_after_ms = {no_work_ms} is out of range"),
            "use 1 to 60000 (default 100): a poll, futex or network wait this long means no request to serve",
        ));
    }
    let history_s = raw.history_s.unwrap_or(900);
    if !(60..=86_400).contains(&history_s) {
        return Err(UsageError::new(
            format!("explain.history_s = {history_s} is out of range"),
            "use 60 to 86400 seconds (default 900): how far back /api/v1/explain can look",
        ));
    }
    Ok(crate::explain::ExplainConfig {
        window_ns: window_s * 1_000_000_000,
        max_states,
        no_work_after_ns: no_work_ms * 1_000_000,
        resolution_ns: timeline.min_interval_us.unwrap_or(1000) * 1000,
        history_ns: history_s * 1_000_000_000,
    })
}

fn parse_cuda(raw: RawCuda) -> Result<CudaConfig, UsageError> {
    let budget = raw.launch_budget.unwrap_or(0.01);
    if !(budget > 0.0 && budget <= 1.0) {
        return Err(UsageError::new(
            format!("cuda.launch_budget = {budget} is not a share of one core"),
            "give a number above 0 and at most 1 (default 0.01: 1% of one core per process)",
        ));
    }
    let cost_us = raw.probe_cost_us.unwrap_or(DEFAULT_PROBE_COST_US);
    if !(0.1..=1000.0).contains(&cost_us) {
        return Err(UsageError::new(
            format!("cuda.probe_cost_us = {cost_us} is out of range"),
            format!(
                "give the measured cost of one probed call in microseconds, 0.1 to 1000 (default {DEFAULT_PROBE_COST_US}; bench/probe_cost measures it)"
            ),
        ));
    }
    Ok(CudaConfig {
        enabled: raw.enabled.unwrap_or(true),
        launch_budget_calls: ((budget / (cost_us * 1e-6)).round() as u64).max(1),
    })
}

/// What one probed launch (uprobe and uretprobe) cost on the development
/// VM: 2.84 µs measured by `bench/cuda_probe_cost`, rounded up.
const DEFAULT_PROBE_COST_US: f64 = 3.0;

fn parse_inject(raw: RawInject) -> Result<InjectConfig, UsageError> {
    let path = raw.socket.unwrap_or_else(|| DEFAULT_INJECT_SOCKET.into());
    if !path.starts_with('/') || path.len() > 100 {
        return Err(UsageError::new(
            format!("inject.socket = {path:?} is not usable"),
            "give an absolute path of at most 100 bytes (a Unix socket's limit is 108)",
        ));
    }
    let max_peers = raw.max_peers.unwrap_or(256);
    if !(1..=4096).contains(&max_peers) {
        return Err(UsageError::new(
            format!("inject.max_peers = {max_peers} is out of range"),
            "use 1 to 4096 (default 256)",
        ));
    }
    let rate = raw.max_frames_per_second.unwrap_or(2000);
    if !(1..=1_000_000).contains(&rate) {
        return Err(UsageError::new(
            format!("inject.max_frames_per_second = {rate} is out of range"),
            "use 1 to 1000000 (default 2000; a frame carries up to 26,000 records)",
        ));
    }
    let window = raw.reorder_window_ms.unwrap_or(500);
    if !(10..=60_000).contains(&window) {
        return Err(UsageError::new(
            format!("inject.reorder_window_ms = {window} is out of range"),
            "use 10 to 60000 (default 500: the injection library flushes every 100 ms)",
        ));
    }
    Ok(InjectConfig {
        enabled: raw.enabled.unwrap_or(true),
        socket: crate::deep::socket::SocketConfig {
            path: path.into(),
            allowed_uids: raw.allowed_uids,
            allowed_gids: raw.allowed_gids,
            max_peers,
            max_frames_per_second: rate,
        },
        reorder_window: Duration::from_millis(window),
    })
}

fn parse_nvml(raw: RawNvml) -> Result<NvmlConfig, UsageError> {
    let interval_ms = raw.interval_ms.unwrap_or(1000);
    if !(100..=60_000).contains(&interval_ms) {
        return Err(UsageError::new(
            format!("nvml.interval_ms = {interval_ms} is out of range"),
            "use 100 to 60000 milliseconds (default 1000)",
        ));
    }
    if let Some(w) = raw.idle_power_watts
        && !(w > 0.0 && w < 10_000.0)
    {
        return Err(UsageError::new(
            format!("nvml.idle_power_watts = {w} is not a power a GPU draws at idle"),
            "give the watts the GPU draws with nothing running (nvidia-smi's power.draw), or leave it out to use the lowest power seen",
        ));
    }
    Ok(NvmlConfig {
        enabled: raw.enabled.unwrap_or(true),
        interval: Duration::from_millis(interval_ms),
        idle_power_watts: raw.idle_power_watts,
    })
}

fn parse_probes(raw: Vec<RawProbe>) -> Result<Vec<ProbeSpec>, UsageError> {
    let room = MAX_PROBES - default_specs().len();
    if raw.len() > room {
        return Err(UsageError::new(
            format!(
                "{} [[python.probe]] tables, more than the {room} allowed",
                raw.len()
            ),
            "keep the probes that matter most",
        ));
    }
    let label_ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 32
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    };
    raw.into_iter()
        .map(|p| {
            let op = p.op.unwrap_or_else(|| "call".into());
            if !label_ok(&p.codec) || !label_ok(&op) {
                return Err(UsageError::new(
                    format!("python.probe codec {:?} / op {op:?} cannot be a label value", p.codec),
                    "use 1-32 characters from A-Z, a-z, 0-9, '_' and '-'",
                ));
            }
            if p.library.is_empty() || p.library.starts_with('/') {
                return Err(UsageError::new(
                    format!("python.probe library {:?} is not usable", p.library),
                    "give the end of the library's path up to its ABI tag (\"orjson/orjson.\", \"libfoo\")",
                ));
            }
            let locate = match (p.symbol, p.symbol_pattern, p.method) {
                (Some(s), None, None) if !s.is_empty() => Locate::Symbol(s),
                (None, Some(s), None) => {
                    regex::Regex::new(&s).map_err(|e| {
                        UsageError::new(
                            format!(
                                "python.probe symbol_pattern {s:?} is not a regular expression: {}",
                                e.to_string().split_whitespace().collect::<Vec<_>>().join(" ")
                            ),
                            "write a Rust regex matching the whole symbol name",
                        )
                    })?;
                    Locate::SymbolPattern(s)
                }
                (None, None, Some(m)) if !m.is_empty() => Locate::Method(m),
                _ => {
                    return Err(UsageError::new(
                        format!("python.probe for {:?} must name its function one way", p.codec),
                        "give exactly one of symbol, symbol_pattern (a regex) or method (a Python method name, for stripped extensions)",
                    ));
                }
            };
            Ok(ProbeSpec {
                codec: p.codec,
                op,
                module: p.library,
                locate,
                builtin_init: None,
            })
        })
        .collect()
}

fn parse_daemon(raw: RawDaemon) -> Result<DaemonConfig, UsageError> {
    let listen_text = raw.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
    let listen = listen_text.parse().map_err(|_| {
        UsageError::new(
            format!("daemon.listen = {listen_text:?} is not an IP address and port"),
            format!("write it like {DEFAULT_LISTEN:?} or \"[::1]:9478\""),
        )
    })?;
    let rescan_ms = raw.rescan_interval_ms.unwrap_or(1000);
    if !(100..=60_000).contains(&rescan_ms) {
        return Err(UsageError::new(
            format!("daemon.rescan_interval_ms = {rescan_ms} is out of range"),
            "use a value from 100 to 60000 (default 1000)",
        ));
    }
    Ok(DaemonConfig {
        listen,
        rescan_interval: Duration::from_millis(rescan_ms),
        bpf_stats: raw.bpf_stats.unwrap_or(true),
        drop_capabilities: raw.drop_capabilities.unwrap_or(true),
        web_config: raw
            .web_config
            .filter(|p| !p.is_empty())
            .map(std::path::PathBuf::from),
    })
}

fn parse_service(s: RawService) -> Result<ServiceConfig, UsageError> {
    let valid_name = !s.name.is_empty()
        && s.name.len() <= 64
        && s.name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !valid_name {
        return Err(UsageError::new(
            format!(
                "service name {:?} is not allowed (it becomes a label value)",
                s.name
            ),
            "use 1-64 characters from A-Z, a-z, 0-9, '_', '-' and '.'",
        ));
    }
    let name = s.name;
    let cmdline = match s.cmdline {
        None => None,
        Some(re) => Some(Regex::new(&re).map_err(|e| {
            UsageError::new(
                format!(
                    "service {name:?}: cmdline regex {re:?} is invalid: {}",
                    e.to_string().replace('\n', " ")
                ),
                "fix the regular expression (Rust regex syntax; escape literal characters like '.' or '(')",
            )
        })?),
    };
    if let Some(exe) = &s.exe
        && !exe.starts_with('/')
    {
        return Err(UsageError::new(
            format!("service {name:?}: exe = {exe:?} is not an absolute path"),
            "give the full path of the executable, as /proc/PID/exe shows it",
        ));
    }
    if let Some(cg) = &s.cgroup
        && !cg.starts_with('/')
    {
        return Err(UsageError::new(
            format!("service {name:?}: cgroup = {cg:?} does not start with '/'"),
            "give the cgroup v2 path as /proc/PID/cgroup shows it, e.g. \"/system.slice/bentoml.service\"",
        ));
    }
    if let Some(unit) = &s.systemd_unit
        && (unit.contains('/') || !unit.contains('.'))
    {
        return Err(UsageError::new(
            format!("service {name:?}: systemd_unit = {unit:?} is not a unit name"),
            "give the unit's full name, e.g. \"bentoml.service\"",
        ));
    }
    let matcher = Matcher {
        pids: s.pids,
        exe: s.exe,
        cmdline,
        cgroup: s.cgroup.map(|c| c.trim_end_matches('/').to_string()),
        systemd_unit: s.systemd_unit,
    };
    if matcher.is_empty() {
        return Err(UsageError::new(
            format!("service {name:?} has no matcher, so it would match no process"),
            "set at least one of pids, exe, cmdline, cgroup, systemd_unit",
        ));
    }
    Ok(ServiceConfig {
        name,
        matcher,
        follow_children: s.follow_children.unwrap_or(true),
    })
}

impl Matcher {
    fn is_empty(&self) -> bool {
        self.pids.is_empty()
            && self.exe.is_none()
            && self.cmdline.is_none()
            && self.cgroup.is_none()
            && self.systemd_unit.is_none()
    }
}

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
    fn the_example_config_parses() {
        let c = Config::parse(include_str!("../../deploy/gapscoped.toml")).unwrap();
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
