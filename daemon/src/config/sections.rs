//! Each `[section]` of the configuration checked and turned into its type:
//! a value out of range, a bad regex or path is a usage error naming the
//! key and the fix.

use std::time::Duration;

use regex::Regex;

use super::{raw::*, *};
use crate::{
    error::UsageError,
    python::serialization::{Locate, MAX_PROBES, ProbeSpec, default_specs},
};

/// `key`'s value (`default` when absent), or an error naming it, its value
/// and the fix when it lies outside `range`.
fn in_range<T: PartialOrd + std::fmt::Display + Copy>(
    key: &str,
    value: Option<T>,
    default: T,
    range: std::ops::RangeInclusive<T>,
    fix: &str,
) -> Result<T, UsageError> {
    let v = value.unwrap_or(default);
    if range.contains(&v) {
        Ok(v)
    } else {
        Err(UsageError::new(format!("{key} = {v} is out of range"), fix))
    }
}

pub(super) fn parse_timeline(raw: RawTimeline) -> Result<TimelineConfig, UsageError> {
    let min_us = raw.min_interval_us.unwrap_or(1000);
    if min_us < 10 {
        return Err(UsageError::new(
            format!(
                "timeline.min_interval_us = {min_us} would send nearly every call to user space"
            ),
            "use 10 or more (default 1000, one millisecond)",
        ));
    }
    in_range(
        "timeline.min_interval_us",
        Some(min_us),
        1000,
        10..=10_000_000,
        "use 10 to 10000000 (default 1000, one millisecond)",
    )?;
    let retention_s = in_range(
        "timeline.retention_s",
        raw.retention_s,
        300,
        1..=3600,
        "use 1 to 3600 seconds (default 300)",
    )?;
    let max_intervals = in_range(
        "timeline.max_intervals",
        raw.max_intervals,
        100_000,
        100..=10_000_000,
        "use 100 to 10000000 (default 100000, about 3 MB)",
    )?;
    Ok(TimelineConfig {
        min_interval: Duration::from_micros(min_us),
        retention: Duration::from_secs(retention_s),
        max_intervals,
    })
}

/// `[explain]`: the attribution's window of thread states and history.
pub(super) fn parse_explain(
    raw: RawExplain,
    timeline: &RawTimeline,
) -> Result<ExplainConfig, UsageError> {
    let window_s = in_range(
        "explain.window_s",
        raw.window_s,
        30,
        1..=600,
        "use 1 to 600 seconds (default 30): how long thread states are kept for attribution",
    )?;
    let max_states = in_range(
        "explain.max_states",
        raw.max_states,
        200_000,
        1000..=10_000_000,
        "use 1000 to 10000000 per service (default 200000, about 5 MB)",
    )?;
    let no_work_ms = in_range(
        "explain.no_work_after_ms",
        raw.no_work_after_ms,
        100,
        1..=60_000,
        "use 1 to 60000 (default 100): a poll, futex or network wait this long means no request to serve",
    )?;
    let history_s = in_range(
        "explain.history_s",
        raw.history_s,
        900,
        60..=86_400,
        "use 60 to 86400 seconds (default 900): how far back /api/v1/explain can look",
    )?;
    let gpu_hour_usd = raw
        .gpu_hour_usd
        .map(|usd| {
            check_gpu_hour_usd(usd).map_err(|fix| {
                UsageError::new(format!("explain.gpu_hour_usd = {usd} is out of range"), fix)
            })
        })
        .transpose()?;
    Ok(ExplainConfig {
        gpu_hour_usd,
        window_ns: window_s * 1_000_000_000,
        max_states,
        no_work_after_ns: no_work_ms * 1_000_000,
        resolution_ns: timeline
            .min_interval_us
            .unwrap_or(1000)
            .saturating_mul(1000),
        history_ns: history_s * 1_000_000_000,
    })
}

/// A GPU-hour price is a positive, finite amount of dollars, at most
/// 10000; the error is the fix.
pub fn check_gpu_hour_usd(usd: f64) -> Result<f64, &'static str> {
    if usd.is_finite() && usd > 0.0 && usd <= 10_000.0 {
        Ok(usd)
    } else {
        Err("use the price of one GPU-hour in US dollars, above 0 and at most 10000 (say 2.49)")
    }
}

pub(super) fn parse_cuda(raw: RawCuda) -> Result<CudaConfig, UsageError> {
    let budget = raw.launch_budget.unwrap_or(0.01);
    if !(budget > 0.0 && budget <= 1.0) {
        return Err(UsageError::new(
            format!("cuda.launch_budget = {budget} is not a share of one core"),
            "give a number above 0 and at most 1 (default 0.01: 1% of one core per process)",
        ));
    }
    let cost_us = in_range(
        "cuda.probe_cost_us",
        raw.probe_cost_us,
        DEFAULT_PROBE_COST_US,
        0.1..=1000.0,
        &format!(
            "give the measured cost of one probed call in microseconds, 0.1 to 1000 (default {DEFAULT_PROBE_COST_US}; bench/probe_cost measures it)"
        ),
    )?;
    Ok(CudaConfig {
        enabled: raw.enabled.unwrap_or(true),
        launch_budget_calls: ((budget / (cost_us * 1e-6)).round() as u64).max(1),
    })
}

/// What one probed launch (uprobe and uretprobe) cost on the development
/// VM: 2.84 µs measured by `bench/cuda_probe_cost`, rounded up.
const DEFAULT_PROBE_COST_US: f64 = 3.0;

pub(super) fn parse_inject(raw: RawInject) -> Result<InjectConfig, UsageError> {
    let path = raw.socket.unwrap_or_else(|| DEFAULT_INJECT_SOCKET.into());
    if !path.starts_with('/') || path.len() > 100 {
        return Err(UsageError::new(
            format!("inject.socket = {path:?} is not usable"),
            "give an absolute path of at most 100 bytes (a Unix socket's limit is 108)",
        ));
    }
    let max_peers = in_range(
        "inject.max_peers",
        raw.max_peers,
        256,
        1..=4096,
        "use 1 to 4096 (default 256)",
    )?;
    let rate = in_range(
        "inject.max_frames_per_second",
        raw.max_frames_per_second,
        2000,
        1..=1_000_000,
        "use 1 to 1000000 (default 2000; a frame carries up to 26,000 records)",
    )?;
    let window = in_range(
        "inject.reorder_window_ms",
        raw.reorder_window_ms,
        500,
        10..=60_000,
        "use 10 to 60000 (default 500: the injection library flushes every 100 ms)",
    )?;
    let group = raw.group.map(group_id).transpose()?;
    let mode = socket_mode(raw.mode.as_deref().unwrap_or("0660"))?;
    Ok(InjectConfig {
        enabled: raw.enabled.unwrap_or(true),
        socket: SocketConfig {
            path: path.into(),
            allowed_uids: raw.allowed_uids,
            allowed_gids: raw.allowed_gids,
            group,
            mode,
            max_peers,
            max_frames_per_second: rate,
        },
        reorder_window: Duration::from_millis(window),
    })
}

/// `[inject] group`: a group name (looked up through NSS, as `ls -l`
/// does) or number.
fn group_id(group: super::raw::GroupRef) -> Result<u32, UsageError> {
    use super::raw::GroupRef;
    match group {
        GroupRef::Id(gid) => Ok(gid),
        GroupRef::Name(name) => lookup_group(&name).ok_or_else(|| {
            UsageError::new(
                format!("inject.group = {name:?} is not a group on this host"),
                "create it (groupadd --system NAME, then usermod -aG NAME the serving user) or give a group number",
            )
        }),
    }
}

fn lookup_group(name: &str) -> Option<u32> {
    let c_name = std::ffi::CString::new(name).ok()?;
    let mut group: libc::group = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::group = std::ptr::null_mut();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        // SAFETY: every pointer is valid for the call; buf outlives the
        // result, of which only gr_gid (a plain number) is read.
        let rc = unsafe {
            libc::getgrnam_r(
                c_name.as_ptr(),
                &mut group,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut found,
            )
        };
        // A large directory group's members do not fit: a bigger buffer.
        if rc == libc::ERANGE && buf.len() < 16 << 20 {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        return (rc == 0 && !found.is_null()).then_some(group.gr_gid);
    }
}

/// `[inject] mode`: octal, read and write for the owner, no execute or
/// special bits (`"0660"`, `"0600"`, `"0666"`).
fn socket_mode(text: &str) -> Result<u32, UsageError> {
    let fix = "write the socket file's mode in octal: \"0660\" (owner and group, the default), \"0600\" (owner only) or \"0666\" (anyone, then only the credential check stands)";
    let mode = u32::from_str_radix(text.trim_start_matches("0o"), 8).map_err(|_| {
        UsageError::new(format!("inject.mode = {text:?} is not an octal mode"), fix)
    })?;
    if mode & !0o666 != 0 || mode & 0o600 != 0o600 {
        return Err(UsageError::new(
            format!("inject.mode = {text:?} is not a socket file's mode"),
            fix,
        ));
    }
    Ok(mode)
}

pub(super) fn parse_nvml(raw: RawNvml) -> Result<NvmlConfig, UsageError> {
    let interval_ms = in_range(
        "nvml.interval_ms",
        raw.interval_ms,
        1000,
        100..=60_000,
        "use 100 to 60000 milliseconds (default 1000)",
    )?;
    if let Some(w) = raw.idle_power_watts
        && !(w > 0.0 && w < 10_000.0)
    {
        return Err(UsageError::new(
            format!("nvml.idle_power_watts = {w} is not a power a GPU draws at idle"),
            "give the watts the GPU draws with nothing running (nvidia-smi's power.draw), or leave it out to use the lowest power seen",
        ));
    }
    let library = match raw.library {
        None => None,
        Some(path) if path.is_empty() || !std::path::Path::new(&path).is_file() => {
            return Err(UsageError::new(
                format!("nvml.library = {path:?} is not a file"),
                "leave nvml.library out: it is a test hook for the NVML stand-in, and gapscoped loads the driver's libnvidia-ml.so.1 by itself",
            ));
        }
        Some(path) => Some(path.into()),
    };
    Ok(NvmlConfig {
        enabled: raw.enabled.unwrap_or(true),
        interval: Duration::from_millis(interval_ms),
        idle_power_watts: raw.idle_power_watts,
        library,
    })
}

pub(super) fn parse_probes(raw: Vec<RawProbe>) -> Result<Vec<ProbeSpec>, UsageError> {
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
                        format!("python.probe for {:?} must name its function with exactly one non-empty symbol, symbol_pattern or method", p.codec),
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

pub(super) fn parse_daemon(raw: RawDaemon) -> Result<DaemonConfig, UsageError> {
    let listen_text = raw.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
    let listen = listen_text.parse().map_err(|_| {
        UsageError::new(
            format!("daemon.listen = {listen_text:?} is not an IP address and port"),
            format!("write it like {DEFAULT_LISTEN:?} or \"[::1]:9478\""),
        )
    })?;
    let rescan_ms = in_range(
        "daemon.rescan_interval_ms",
        raw.rescan_interval_ms,
        1000,
        100..=60_000,
        "use a value from 100 to 60000 (default 1000)",
    )?;
    let defaults = crate::web::serve::Limits::default();
    let http = crate::web::serve::Limits {
        max_connections: in_range(
            "daemon.http_max_connections",
            raw.http_max_connections,
            defaults.max_connections,
            1..=65_536,
            "use a value from 1 to 65536 (default 256); each connection holds a file descriptor",
        )?,
        header_timeout: Duration::from_millis(in_range(
            "daemon.http_header_timeout_ms",
            raw.http_header_timeout_ms,
            defaults.header_timeout.as_millis() as u64,
            100..=600_000,
            "use a value from 100 to 600000 (default 10000); it also closes idle kept-alive connections",
        )?),
        body_timeout: Duration::from_millis(in_range(
            "daemon.http_body_timeout_ms",
            raw.http_body_timeout_ms,
            defaults.body_timeout.as_millis() as u64,
            100..=600_000,
            "use a value from 100 to 600000 (default 10000)",
        )?),
    };
    Ok(DaemonConfig {
        listen,
        http,
        rescan_interval: Duration::from_millis(rescan_ms),
        bpf_stats: parse_bpf_stats(&raw)?,
        drop_capabilities: raw.drop_capabilities.unwrap_or(true),
        web_config: raw
            .web_config
            .filter(|p| !p.is_empty())
            .map(std::path::PathBuf::from),
    })
}

/// `bpf_stats` with its window and period.
fn parse_bpf_stats(raw: &RawDaemon) -> Result<BpfStats, UsageError> {
    let window_ms = in_range(
        "daemon.bpf_stats_window_ms",
        raw.bpf_stats_window_ms,
        1000,
        10..=600_000,
        "use a value from 10 to 600000 (default 1000): how long each sample keeps the statistics on",
    )?;
    let period_s = in_range(
        "daemon.bpf_stats_period_s",
        raw.bpf_stats_period_s,
        60,
        1..=86_400,
        "use a value from 1 to 86400 (default 60): how often a sample starts",
    )?;
    let (window, period) = (
        Duration::from_millis(window_ms),
        Duration::from_secs(period_s),
    );
    match &raw.bpf_stats {
        None => {}
        Some(toml::Value::Boolean(true)) => return Ok(BpfStats::On),
        Some(toml::Value::Boolean(false)) => return Ok(BpfStats::Off),
        Some(toml::Value::String(s)) if s == "sampled" => {}
        Some(other) => {
            let what = match other {
                toml::Value::String(s) => format!("{s:?}"),
                v => match v.type_str() {
                    t @ ("integer" | "array") => format!("an {t}"),
                    t => format!("a {t}"),
                },
            };
            return Err(UsageError::new(
                format!("daemon.bpf_stats = {what} is not a mode"),
                "use true (always on), false (off) or \"sampled\" (the default: on for \
                 bpf_stats_window_ms of every bpf_stats_period_s)",
            ));
        }
    }
    if window >= period {
        return Err(UsageError::new(
            format!(
                "daemon.bpf_stats_window_ms = {window_ms} is not shorter than bpf_stats_period_s = {period_s}"
            ),
            "make the window shorter than the period, or set bpf_stats = true to keep them on",
        ));
    }
    Ok(BpfStats::Sampled { window, period })
}

pub(super) fn parse_service(s: RawService) -> Result<ServiceConfig, UsageError> {
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
            format!(
                "service {name:?} has no matcher (pids, exe, cmdline, cgroup or systemd_unit), so it would match no process"
            ),
            "set at least one of pids, exe, cmdline, cgroup, systemd_unit",
        ));
    }
    Ok(ServiceConfig {
        name,
        matcher,
        follow_children: s.follow_children.unwrap_or(true),
        retired: false,
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
