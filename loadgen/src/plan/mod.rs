//! What a run does: the workload file (TOML) and the flags that override
//! it, checked into a `Plan`. Every key is described in README.md
//! ("gapscope-loadgen"); unknown keys are errors.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

use crate::error::UsageError;

mod flags;
mod validate;

pub(crate) use flags::{parse_duration, parse_phase, parse_sweep};

/// The whole run, as read from the workload file and the flags.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// Seed for prompts, lengths and arrivals: the same seed, the same run.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Multiplies every phase duration (0.1 runs the default in 25 s).
    #[serde(default = "one")]
    pub time_scale: f64,
    pub endpoint: Endpoint,
    #[serde(default)]
    pub prompts: Prompts,
    #[serde(default)]
    pub output: Output,
    #[serde(default = "default_phases", rename = "phase")]
    pub phases: Vec<Phase>,
    #[serde(default)]
    pub slo: Slo,
    #[serde(default)]
    pub telemetry: Option<Telemetry>,
    #[serde(default)]
    pub model: ModelSpec,
    #[serde(default)]
    pub cost: Cost,
    /// gapscoped's base URL: phase starts and ends are posted to it.
    #[serde(default)]
    pub gapscoped: Option<String>,
    /// The gapscoped service this run loads: its annotations name it, so
    /// gapscoped counts this run's tokens for that service only.
    #[serde(default)]
    pub gapscoped_service: Option<String>,
    /// gapscoped's basic auth (`--gapscoped-user`, the password from
    /// `GAPSCOPED_PASSWORD`): never serialized.
    #[serde(skip)]
    pub gapscoped_auth: Option<BasicAuth>,
    /// HTTPS: trust, client certificate, HTTP versions (`[tls]`).
    #[serde(default)]
    pub tls: Tls,
    /// `--sweep`: the phases are its steps (and the silences between).
    #[serde(skip)]
    pub sweep: Option<Sweep>,
}

/// A series of loads, each a phase of its own, for the throughput-latency
/// curve (`--sweep`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sweep {
    /// Closed loop (the loads are concurrencies) or open loop (Poisson
    /// rates in requests per second).
    pub kind: PhaseKind,
    pub loads: Vec<f64>,
    /// The step phases' names, one per load.
    pub phases: Vec<String>,
    pub step_s: f64,
    pub gap_s: f64,
}

/// How HTTPS endpoints are trusted and spoken to; plain http:// ignores
/// it.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// CA certificates (PEM) trusted besides the system's.
    #[serde(default)]
    pub cacert: Vec<PathBuf>,
    /// Accept any server certificate (still encrypted, not authenticated).
    #[serde(default)]
    pub insecure: bool,
    /// A client certificate chain and its key (PEM), for mutual TLS.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// Offer only HTTP/1.1 in ALPN (else h2 too, when the server offers it).
    #[serde(default)]
    pub http1_only: bool,
}

/// A user and password for HTTP basic auth.
#[derive(Clone)]
pub struct BasicAuth {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BasicAuth({}, <password>)", self.user)
    }
}

impl BasicAuth {
    /// The `Authorization` header's value.
    pub fn header(&self) -> String {
        let pair = format!("{}:{}", self.user, self.password);
        format!("Basic {}", crate::http::base64(pair.as_bytes()))
    }
}

fn default_seed() -> u64 {
    1
}
fn one() -> f64 {
    1.0
}

/// Which API the server speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Api {
    /// OpenAI `/v1/completions`.
    Completions,
    /// OpenAI `/v1/chat/completions`.
    Chat,
    /// Any JSON API: `body` is a template, the reply is decoded by pointers.
    Template,
}

/// How a templated endpoint's reply is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Framing {
    /// Server-sent events, one JSON document per `data:`.
    Sse,
    /// One JSON document per line.
    Ndjson,
    /// Plain text; every chunk of the body is generated text (a BentoML
    /// streaming `@bentoml.api` returning a generator of strings).
    Raw,
    /// One JSON document for the whole reply (not streamed).
    Json,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    pub url: String,
    #[serde(default = "default_api")]
    pub api: Api,
    /// The `model` field of OpenAI requests.
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default = "yes")]
    pub stream: bool,
    /// Ask for `usage` in every streamed chunk (vLLM's
    /// `continuous_usage_stats`), so a chunk carrying k tokens counts k.
    #[serde(default)]
    pub continuous_usage: bool,
    /// Extra request headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The bearer token (`--api-key` or `OPENAI_API_KEY`): sent as
    /// `Authorization: Bearer …`, marked sensitive, and never serialized,
    /// so no results file, log or workload file holds it.
    #[serde(skip)]
    pub api_key: Option<ApiKey>,
    #[serde(default = "default_timeout")]
    pub timeout_s: f64,
    /// Longest wait for the next chunk of a streamed reply.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_s: f64,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_s: f64,
    /// Template API: the request body, with `{{prompt}}`, `{{max_tokens}}`,
    /// `{{request_id}}` and `{{model}}` replaced by JSON values.
    #[serde(default)]
    pub body: Option<String>,
    #[serde(default)]
    pub framing: Option<Framing>,
    /// Template API: JSON pointers into each event (or the whole reply).
    #[serde(default)]
    pub text_pointer: Option<String>,
    #[serde(default)]
    pub finish_pointer: Option<String>,
    #[serde(default)]
    pub usage_pointer: Option<String>,
    /// Template API, SSE: the `data:` payload that ends the stream.
    #[serde(default)]
    pub done_marker: Option<String>,
}

fn default_api() -> Api {
    Api::Completions
}
fn yes() -> bool {
    true
}
fn default_timeout() -> f64 {
    600.0
}
fn default_idle_timeout() -> f64 {
    60.0
}
fn default_connect_timeout() -> f64 {
    10.0
}

/// A length: fixed, uniform in a range, normal or lognormal (each
/// rounded, at least 1). A lognormal's `mean` and `stddev` are the
/// lengths' own (its long right tail is what real prompt lengths have).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum Length {
    Fixed(u32),
    Uniform {
        min: u32,
        max: u32,
    },
    LogNormal {
        mean: f64,
        stddev: f64,
        distribution: LogNormalName,
    },
    Normal {
        mean: f64,
        stddev: f64,
        /// `distribution = "normal"`, or nothing; any other name fails
        /// both forms, so a typo is an error, not a normal.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        distribution: Option<NormalName>,
    },
}

/// `distribution = "normal"` in a workload file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NormalName {
    Normal,
}

/// `distribution = "lognormal"` in a workload file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogNormalName {
    Lognormal,
}

/// Where prompts come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PromptSource {
    /// Random text of the asked token length (exact with a tokenizer).
    Random,
    /// A ShareGPT-format JSON file: the first human turn of each
    /// conversation.
    Sharegpt,
    /// A plain text file, one prompt per line.
    File,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Prompts {
    #[serde(default = "default_source")]
    pub source: PromptSource,
    #[serde(default)]
    pub path: Option<PathBuf>,
    #[serde(default = "default_input")]
    pub input_tokens: Length,
    /// A local `tokenizer.json` (Hugging Face `tokenizers` format): exact
    /// prompt lengths and a third count of output tokens.
    #[serde(default)]
    pub tokenizer: Option<PathBuf>,
    /// Tokens of a shared prefix in front of every prompt (a system
    /// prompt, so prefix caching has something to cache); 0: none.
    #[serde(default)]
    pub shared_prefix_tokens: u32,
    /// Distinct shared prefixes; each request uses one, drawn at random.
    #[serde(default = "one_group")]
    pub prefix_groups: u32,
    /// Turns per conversation: each turn after the first carries the
    /// conversation so far (its prompts and the server's replies). With
    /// ShareGPT, up to this many of each conversation's human turns.
    #[serde(default = "one_turn")]
    pub turns: u32,
    /// The user's think time between a reply and the next turn.
    #[serde(default)]
    pub think_time: ThinkTime,
}

fn one_group() -> u32 {
    1
}
fn one_turn() -> u32 {
    1
}

/// Seconds between a reply's end and the conversation's next turn:
/// `2s` (fixed), `exp:2s` (exponential with that mean) or `1s-3s`
/// (uniform); in a workload file the same text.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub enum ThinkTime {
    Fixed(f64),
    Exponential { mean: f64 },
    Uniform { min: f64, max: f64 },
}

impl Default for ThinkTime {
    fn default() -> Self {
        ThinkTime::Fixed(0.0)
    }
}

impl TryFrom<String> for ThinkTime {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        let bad = |why: String| {
            format!(
                "think time {text:?}: {why}; write 2s, exp:2s (exponential, that mean) or 1s-3s (uniform)"
            )
        };
        let secs = |t: &str| match t.trim() {
            "0" | "0s" => Ok(0.0),
            t => flags::parse_duration(t).map_err(&bad),
        };
        let t = text.trim();
        if let Some(mean) = t.strip_prefix("exp:") {
            return Ok(ThinkTime::Exponential { mean: secs(mean)? });
        }
        if let Some((a, b)) = t.split_once('-') {
            let (min, max) = (secs(a)?, secs(b)?);
            if min > max {
                return Err(bad(format!("{min} s is above {max} s")));
            }
            return Ok(ThinkTime::Uniform { min, max });
        }
        Ok(ThinkTime::Fixed(secs(t)?))
    }
}

impl From<ThinkTime> for String {
    fn from(t: ThinkTime) -> String {
        match t {
            ThinkTime::Fixed(s) => format!("{s}s"),
            ThinkTime::Exponential { mean } => format!("exp:{mean}s"),
            ThinkTime::Uniform { min, max } => format!("{min}s-{max}s"),
        }
    }
}

impl ThinkTime {
    /// One think time, in seconds.
    pub fn sample(self, rng: &mut impl rand::Rng) -> f64 {
        match self {
            ThinkTime::Fixed(s) => s,
            ThinkTime::Exponential { mean } if mean > 0.0 => {
                -mean * (1.0 - rng.random::<f64>()).ln()
            }
            ThinkTime::Exponential { .. } => 0.0,
            ThinkTime::Uniform { min, max } => min + (max - min) * rng.random::<f64>(),
        }
    }
}

fn default_source() -> PromptSource {
    PromptSource::Random
}
fn default_input() -> Length {
    Length::Fixed(512)
}

impl Default for Prompts {
    fn default() -> Self {
        Self {
            source: default_source(),
            path: None,
            input_tokens: default_input(),
            tokenizer: None,
            shared_prefix_tokens: 0,
            prefix_groups: one_group(),
            turns: one_turn(),
            think_time: ThinkTime::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Output {
    #[serde(default = "default_output")]
    pub max_tokens: Length,
    /// Ask the server to produce exactly `max_tokens` (`ignore_eos`,
    /// `min_tokens`) and fail the run when it does not.
    #[serde(default)]
    pub fixed: bool,
}

fn default_output() -> Length {
    Length::Fixed(256)
}

impl Default for Output {
    fn default() -> Self {
        Self {
            max_tokens: default_output(),
            fixed: false,
        }
    }
}

/// How an open-loop phase spaces its requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Arrival {
    Poisson,
    /// Gamma-distributed gaps: `burstiness` < 1 is burstier than Poisson.
    Gamma,
    Constant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PhaseKind {
    OpenLoop,
    Silence,
    ClosedLoop,
}

impl PhaseKind {
    pub fn name(self) -> &'static str {
        match self {
            PhaseKind::OpenLoop => "open_loop",
            PhaseKind::Silence => "silence",
            PhaseKind::ClosedLoop => "closed_loop",
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Phase {
    pub name: String,
    pub kind: PhaseKind,
    pub duration_s: f64,
    /// Open loop: requests per second.
    #[serde(default)]
    pub rate: Option<f64>,
    #[serde(default)]
    pub arrival: Option<Arrival>,
    /// Gamma arrivals: the shape (1 = Poisson).
    #[serde(default)]
    pub burstiness: Option<f64>,
    /// Open loop: at most this many in flight; the rest queue (and their
    /// queueing time is reported).
    #[serde(default)]
    pub max_concurrency: Option<usize>,
    /// Closed loop: requests in flight at all times.
    #[serde(default)]
    pub concurrency: Option<usize>,
}

/// The published experiment: Poisson warmup, silent cooldown, closed-loop
/// stress at 50 concurrent requests.
pub(crate) fn default_phases() -> Vec<Phase> {
    vec![
        Phase {
            name: "warmup".into(),
            kind: PhaseKind::OpenLoop,
            duration_s: 20.0,
            rate: Some(2.0),
            arrival: Some(Arrival::Poisson),
            burstiness: None,
            max_concurrency: None,
            concurrency: None,
        },
        Phase {
            name: "cooldown".into(),
            kind: PhaseKind::Silence,
            duration_s: 10.0,
            rate: None,
            arrival: None,
            burstiness: None,
            max_concurrency: None,
            concurrency: None,
        },
        Phase {
            name: "stress".into(),
            kind: PhaseKind::ClosedLoop,
            duration_s: 220.0,
            rate: None,
            arrival: None,
            burstiness: None,
            max_concurrency: None,
            concurrency: Some(50),
        },
    ]
}

/// Service-level objectives for goodput; a request meets them when every
/// one that is set holds.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Slo {
    pub ttft_ms: Option<f64>,
    pub tpot_ms: Option<f64>,
    pub e2e_ms: Option<f64>,
}

/// What kind of endpoint telemetry is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TelemetrySource {
    /// gapscoped's `/metrics`.
    Gapscoped,
    /// dcgm-exporter's `/metrics`.
    Dcgm,
    /// A Prometheus server's HTTP API (`/api/v1/query`).
    Prometheus,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Telemetry {
    pub source: TelemetrySource,
    /// The `/metrics` URL, or the Prometheus server's base URL.
    pub url: String,
    #[serde(default = "default_interval")]
    pub interval_ms: u64,
    /// Metric names (exporters) or PromQL (Prometheus); each source has
    /// defaults.
    #[serde(default)]
    pub utilization: Option<String>,
    #[serde(default)]
    pub power: Option<String>,
    #[serde(default)]
    pub energy: Option<String>,
    /// Only these GPUs (the exporter's `gpu` label, its index); empty: all.
    #[serde(default)]
    pub gpu_ids: Vec<String>,
    /// Only these GPUs (the `UUID` label); empty: all.
    #[serde(default)]
    pub gpu_uuids: Vec<String>,
}

impl Telemetry {
    /// The URL to scrape: an exporter's base URL (`http://host:9400`, as
    /// gapscoped's is usually written) means its `/metrics`.
    pub fn scrape_url(&self) -> String {
        if self.source == TelemetrySource::Prometheus {
            return self.url.clone();
        }
        match self.url.parse::<hyper::Uri>() {
            Ok(u) if matches!(u.path(), "" | "/") && u.query().is_none() => {
                format!("{}/metrics", self.url.trim_end_matches('/'))
            }
            _ => self.url.clone(),
        }
    }

    /// Whether a series' labels pass the GPU selection.
    pub fn selects(&self, gpu: Option<&str>, uuid: Option<&str>) -> bool {
        (self.gpu_ids.is_empty() || gpu.is_some_and(|g| self.gpu_ids.iter().any(|x| x == g)))
            && (self.gpu_uuids.is_empty()
                || uuid.is_some_and(|u| self.gpu_uuids.iter().any(|x| x == u)))
    }
}

fn default_interval() -> u64 {
    1000
}

/// The model and hardware MFU is computed against.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// The model's Hugging Face `config.json`.
    pub config: Option<PathBuf>,
    /// Or the figures themselves.
    pub params: Option<f64>,
    pub layers: Option<u32>,
    pub hidden: Option<u32>,
    /// GPU name for the peak table (`A40`, `H100-SXM`, …); taken from the
    /// telemetry's `modelName` label when not given.
    pub gpu: Option<String>,
    /// Dense FP16/BF16 peak per GPU, overriding the table.
    pub peak_tflops: Option<f64>,
    /// GPUs serving the model.
    pub gpus: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Cost {
    /// Price of one GPU for an hour, in dollars.
    pub gpu_hour_usd: Option<f64>,
}

impl Plan {
    /// Reads a workload file.
    pub fn from_toml(text: &str, path: &str) -> Result<Plan, UsageError> {
        toml::from_str(text).map_err(|e| {
            let at = e
                .span()
                .map(|s| {
                    let before = &text[..s.start.min(text.len())];
                    format!(" (line {})", before.matches('\n').count() + 1)
                })
                .unwrap_or_default();
            UsageError::new(
                format!(
                    "workload file {path}{at}: {}",
                    e.message().trim().replace('\n', " ")
                ),
                "correct the key or value named above; see README.md, section gapscope-loadgen",
            )
        })
    }

    /// A plan with only an endpoint URL: the experiment's phases.
    pub fn for_url(url: &str) -> Plan {
        Plan {
            seed: default_seed(),
            time_scale: 1.0,
            endpoint: Endpoint {
                url: url.into(),
                api: default_api(),
                model: None,
                stream: true,
                continuous_usage: false,
                headers: BTreeMap::new(),
                api_key: None,
                timeout_s: default_timeout(),
                idle_timeout_s: default_idle_timeout(),
                connect_timeout_s: default_connect_timeout(),
                body: None,
                framing: None,
                text_pointer: None,
                finish_pointer: None,
                usage_pointer: None,
                done_marker: None,
            },
            prompts: Prompts::default(),
            output: Output::default(),
            phases: default_phases(),
            slo: Slo::default(),
            telemetry: None,
            model: ModelSpec::default(),
            cost: Cost::default(),
            gapscoped: None,
            gapscoped_service: None,
            gapscoped_auth: None,
            tls: Tls::default(),
            sweep: None,
        }
    }

    /// A phase's duration after `time_scale`.
    pub fn duration(&self, phase: &Phase) -> Duration {
        Duration::from_secs_f64(phase.duration_s * self.time_scale)
    }

    /// The whole run's planned length.
    pub fn total(&self) -> Duration {
        self.phases.iter().map(|p| self.duration(p)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_the_experiment() {
        let plan = Plan::for_url("http://127.0.0.1:1/v1/completions");
        plan.validate().unwrap();
        let kinds: Vec<_> = plan.phases.iter().map(|p| (p.kind, p.duration_s)).collect();
        assert_eq!(
            kinds,
            [
                (PhaseKind::OpenLoop, 20.0),
                (PhaseKind::Silence, 10.0),
                (PhaseKind::ClosedLoop, 220.0)
            ]
        );
        assert_eq!(plan.phases[2].concurrency, Some(50));
        assert_eq!(plan.total(), Duration::from_secs(250));
    }

    #[test]
    fn phase_flags_parse_and_bad_ones_say_why() {
        let p = parse_phase("w=poisson:5:20s:cap=8").unwrap();
        assert_eq!(
            (p.rate, p.duration_s, p.max_concurrency),
            (Some(5.0), 20.0, Some(8))
        );
        let p = parse_phase("g=gamma:5:0.5:1m").unwrap();
        assert_eq!((p.burstiness, p.duration_s), (Some(0.5), 60.0));
        let p = parse_phase("s=closed:50:220s").unwrap();
        assert_eq!(p.concurrency, Some(50));
        assert_eq!(parse_phase("q=silence:500ms").unwrap().duration_s, 0.5);
        for (bad, says) in [
            ("nope", "no NAME="),
            ("x=poisson:fast:20s", "is not a number"),
            ("x=poisson:5:soon", "is not a duration"),
            ("x=closed:0:10s", "needs concurrency"),
            ("x=gamma:5:0:10s", "burstiness"),
            ("x=teleport:1", "unknown phase form"),
        ] {
            let e = parse_phase(bad).unwrap_err();
            assert!(e.problem.contains(says), "{bad}: {}", e.problem);
        }
    }

    #[test]
    fn workload_files_reject_unknown_keys_and_bad_values() {
        let e = Plan::from_toml("[endpoint]\nurl = \"http://x/\"\nstreem = true\n", "w.toml")
            .unwrap_err();
        assert!(
            e.problem.contains("unknown field `streem`"),
            "{}",
            e.problem
        );
        let plan = Plan::from_toml(
            "[endpoint]\nurl = \"http://x/\"\napi = \"template\"\n",
            "w.toml",
        )
        .unwrap();
        assert!(plan.validate().unwrap_err().problem.contains("has no body"));
        let plan = Plan::from_toml(
            "[endpoint]\nurl = \"http://x/\"\n[output]\nmax_tokens = { min = 9, max = 3 }\n",
            "w.toml",
        )
        .unwrap();
        assert!(
            plan.validate()
                .unwrap_err()
                .problem
                .contains("output.max_tokens")
        );
    }
}

/// A bearer token and where it came from. Its Debug form hides the token,
/// so no `{:?}` of the plan can print it.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub token: String,
    /// `--api-key` or `OPENAI_API_KEY`.
    pub source: &'static str,
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ApiKey(from {}, {} characters)",
            self.source,
            self.token.len()
        )
    }
}
