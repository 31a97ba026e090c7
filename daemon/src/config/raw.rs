//! The configuration file as TOML gives it: every key optional, unknown
//! keys refused (`deny_unknown_fields`). `sections` turns each into its
//! checked type.

use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub(super) daemon: RawDaemon,
    #[serde(default)]
    pub(super) python: RawPython,
    #[serde(default)]
    pub(super) timeline: RawTimeline,
    #[serde(default)]
    pub(super) explain: RawExplain,
    #[serde(default)]
    pub(super) cuda: RawCuda,
    #[serde(default)]
    pub(super) nvml: RawNvml,
    #[serde(default)]
    pub(super) inject: RawInject,
    #[serde(default)]
    pub(super) service: Vec<RawService>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawInject {
    pub(super) enabled: Option<bool>,
    pub(super) socket: Option<String>,
    #[serde(default)]
    pub(super) allowed_uids: Vec<u32>,
    #[serde(default)]
    pub(super) allowed_gids: Vec<u32>,
    pub(super) group: Option<GroupRef>,
    pub(super) mode: Option<String>,
    pub(super) max_peers: Option<usize>,
    pub(super) max_frames_per_second: Option<u32>,
    pub(super) reorder_window_ms: Option<u64>,
}

/// A group by name (`"gapscope"`) or number (`997`).
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum GroupRef {
    Id(u32),
    Name(String),
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCuda {
    pub(super) enabled: Option<bool>,
    pub(super) launch_budget: Option<f64>,
    pub(super) probe_cost_us: Option<f64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNvml {
    pub(super) enabled: Option<bool>,
    pub(super) interval_ms: Option<u64>,
    pub(super) idle_power_watts: Option<f64>,
    pub(super) library: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPython {
    pub(super) gil: Option<bool>,
    pub(super) serialization_budget: Option<u64>,
    #[serde(default)]
    pub(super) probe: Vec<RawProbe>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawExplain {
    pub(super) window_s: Option<u64>,
    pub(super) max_states: Option<usize>,
    pub(super) no_work_after_ms: Option<u64>,
    pub(super) history_s: Option<u64>,
    pub(super) gpu_hour_usd: Option<f64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTimeline {
    pub(super) min_interval_us: Option<u64>,
    pub(super) retention_s: Option<u64>,
    pub(super) max_intervals: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProbe {
    pub(super) library: String,
    pub(super) symbol: Option<String>,
    pub(super) symbol_pattern: Option<String>,
    pub(super) method: Option<String>,
    pub(super) codec: String,
    pub(super) op: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDaemon {
    pub(super) listen: Option<String>,
    pub(super) rescan_interval_ms: Option<u64>,
    /// true, false or "sampled": checked in `sections` to name the key.
    pub(super) bpf_stats: Option<toml::Value>,
    pub(super) bpf_stats_window_ms: Option<u64>,
    pub(super) bpf_stats_period_s: Option<u64>,
    pub(super) drop_capabilities: Option<bool>,
    pub(super) web_config: Option<String>,
    pub(super) http_max_connections: Option<usize>,
    pub(super) http_header_timeout_ms: Option<u64>,
    pub(super) http_body_timeout_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawService {
    pub(super) name: String,
    #[serde(default)]
    pub(super) pids: Vec<u32>,
    pub(super) exe: Option<String>,
    pub(super) cmdline: Option<String>,
    pub(super) cgroup: Option<String>,
    pub(super) systemd_unit: Option<String>,
    pub(super) follow_children: Option<bool>,
}
