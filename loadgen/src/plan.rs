//! What a run does: the workload file (TOML) and the flags that override
//! it, checked into a `Plan`. Every key is described in README.md
//! ("gapscope-loadgen"); unknown keys are errors.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

use crate::error::UsageError;

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

/// A length: fixed, uniform in a range, or normal (clipped at 1).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum Length {
    Fixed(u32),
    Uniform { min: u32, max: u32 },
    Normal { mean: f64, stddev: f64 },
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
pub fn default_phases() -> Vec<Phase> {
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
        }
    }

    /// Checks everything that can be checked before the run starts.
    pub fn validate(&self) -> Result<(), UsageError> {
        let bad = |problem: String, fix: &str| Err(UsageError::new(problem, fix));
        if !(self.time_scale > 0.0 && self.time_scale <= 100.0) {
            return bad(
                format!("time_scale = {} is out of range", self.time_scale),
                "use a factor above 0 and at most 100 (0.1 makes every phase ten times shorter)",
            );
        }
        let url = &self.endpoint.url;
        if !url.starts_with("http://") {
            return bad(
                format!("endpoint url {url:?} is not an http:// URL"),
                "give the full URL, e.g. http://127.0.0.1:8000/v1/completions (https is not supported)",
            );
        }
        if url.parse::<hyper::Uri>().is_err() {
            return bad(
                format!("endpoint url {url:?} does not parse"),
                "check it for typos",
            );
        }
        for (name, value) in [
            ("timeout_s", self.endpoint.timeout_s),
            ("idle_timeout_s", self.endpoint.idle_timeout_s),
            ("connect_timeout_s", self.endpoint.connect_timeout_s),
        ] {
            if !(value > 0.0 && value <= 86_400.0) {
                return bad(
                    format!("endpoint {name} = {value} is out of range"),
                    "use seconds above 0 and at most 86400",
                );
            }
        }
        if self.endpoint.api == Api::Template {
            if self.endpoint.body.is_none() {
                return bad(
                    "endpoint api = \"template\" has no body".into(),
                    "give body = '{\"prompt\": {{prompt}}, \"max_tokens\": {{max_tokens}}}' (placeholders become JSON values)",
                );
            }
            if self.endpoint.framing.is_none() {
                return bad(
                    "endpoint api = \"template\" has no framing".into(),
                    "say how the reply is framed: framing = \"sse\", \"ndjson\", \"raw\" or \"json\"",
                );
            }
            let needs_pointer = !matches!(self.endpoint.framing, Some(Framing::Raw));
            if needs_pointer && self.endpoint.text_pointer.is_none() {
                return bad(
                    "endpoint api = \"template\" has no text_pointer".into(),
                    "give the JSON pointer to the generated text in each event, e.g. text_pointer = \"/text\"",
                );
            }
        } else if self.endpoint.body.is_some() || self.endpoint.framing.is_some() {
            return bad(
                "endpoint body/framing are only for api = \"template\"".into(),
                "remove them, or set api = \"template\"",
            );
        }
        for (name, value) in &self.endpoint.headers {
            if hyper::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return bad(
                    format!("header name {name:?} is not a valid HTTP header name"),
                    "use letters, digits and '-' before the ':', e.g. --header 'Authorization: Bearer TOKEN'",
                );
            }
            if hyper::header::HeaderValue::from_str(value).is_err() {
                return bad(
                    format!(
                        "header {name:?} has a value that cannot be sent (control characters or non-ASCII)"
                    ),
                    "give printable ASCII after the ':'",
                );
            }
        }
        for p in [
            &self.endpoint.text_pointer,
            &self.endpoint.finish_pointer,
            &self.endpoint.usage_pointer,
        ]
        .into_iter()
        .flatten()
        {
            if !p.is_empty() && !p.starts_with('/') {
                return bad(
                    format!("JSON pointer {p:?} does not start with '/'"),
                    "write pointers like \"/choices/0/text\" (RFC 6901)",
                );
            }
        }
        check_length("prompts.input_tokens", self.prompts.input_tokens)?;
        check_length("output.max_tokens", self.output.max_tokens)?;
        if self.prompts.source != PromptSource::Random && self.prompts.path.is_none() {
            return bad(
                format!("prompts.source = {:?} needs a path", self.prompts.source),
                "give prompts.path (or --prompts-file / --sharegpt)",
            );
        }
        if self.phases.is_empty() {
            return bad(
                "no phases".into(),
                "give at least one [[phase]] (or leave them out for the experiment's three)",
            );
        }
        for p in &self.phases {
            check_phase(p)?;
        }
        for (i, p) in self.phases.iter().enumerate() {
            if self.phases[..i].iter().any(|q| q.name == p.name) {
                return bad(
                    format!("phase name {:?} is used twice", p.name),
                    "give every phase its own name",
                );
            }
        }
        for (name, v) in [
            ("slo.ttft_ms", self.slo.ttft_ms),
            ("slo.tpot_ms", self.slo.tpot_ms),
            ("slo.e2e_ms", self.slo.e2e_ms),
        ] {
            if let Some(v) = v
                && v <= 0.0
            {
                return bad(
                    format!("{name} = {v} is not positive"),
                    "use milliseconds above 0",
                );
            }
        }
        if let Some(t) = &self.telemetry {
            if !t.url.starts_with("http://") {
                return bad(
                    format!("telemetry url {:?} is not an http:// URL", t.url),
                    "give e.g. http://127.0.0.1:9400/metrics (dcgm-exporter) or http://127.0.0.1:9090 (Prometheus)",
                );
            }
            if t.url.parse::<hyper::Uri>().is_err() {
                return bad(
                    format!("telemetry url {:?} does not parse", t.url),
                    "check it for typos",
                );
            }
            if !(100..=60_000).contains(&t.interval_ms) {
                return bad(
                    format!("telemetry interval_ms = {} is out of range", t.interval_ms),
                    "use 100 to 60000 (default 1000)",
                );
            }
        }
        if let Some(v) = self.model.peak_tflops
            && v <= 0.0
        {
            return bad(
                format!("model.peak_tflops = {v} is not positive"),
                "give the dense FP16/BF16 TFLOPS of one GPU",
            );
        }
        if let Some(v) = self.cost.gpu_hour_usd
            && v < 0.0
        {
            return bad(
                format!("cost.gpu_hour_usd = {v} is negative"),
                "give dollars per GPU-hour",
            );
        }
        if let Some(g) = &self.gapscoped
            && !g.starts_with("http://")
        {
            return bad(
                format!("gapscoped = {g:?} is not an http:// URL"),
                "give gapscoped's base URL, e.g. http://127.0.0.1:9478",
            );
        }
        Ok(())
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

fn check_length(name: &str, l: Length) -> Result<(), UsageError> {
    let ok = match l {
        Length::Fixed(n) => (1..=1_000_000).contains(&n),
        Length::Uniform { min, max } => min >= 1 && min <= max && max <= 1_000_000,
        Length::Normal { mean, stddev } => (1.0..=1e6).contains(&mean) && stddev >= 0.0,
    };
    if ok {
        Ok(())
    } else {
        Err(UsageError::new(
            format!("{name} = {l:?} is not a usable length"),
            "give a token count (512), a range ({ min = 100, max = 900 }) or { mean = 512, stddev = 128 }",
        ))
    }
}

fn check_phase(p: &Phase) -> Result<(), UsageError> {
    let bad = |problem: String, fix: &str| Err(UsageError::new(problem, fix));
    if p.name.is_empty()
        || !p
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
    {
        return bad(
            format!("phase name {:?} is not usable", p.name),
            "use letters, digits, '_', '-' and '.'",
        );
    }
    if !(p.duration_s > 0.0 && p.duration_s <= 7.0 * 86_400.0) {
        return bad(
            format!(
                "phase {} duration_s = {} is out of range",
                p.name, p.duration_s
            ),
            "use seconds above 0",
        );
    }
    match p.kind {
        PhaseKind::OpenLoop => {
            let Some(rate) = p.rate else {
                return bad(
                    format!("open-loop phase {} has no rate", p.name),
                    "give rate = requests per second",
                );
            };
            if !(rate > 0.0 && rate <= 1_000_000.0) {
                return bad(
                    format!("phase {} rate = {rate} is out of range", p.name),
                    "use requests per second above 0",
                );
            }
            if p.arrival == Some(Arrival::Gamma) && !p.burstiness.is_some_and(|b| b > 0.0) {
                return bad(
                    format!("gamma phase {} needs burstiness > 0", p.name),
                    "give burstiness (the gamma shape: 1 is Poisson, below 1 burstier)",
                );
            }
            if p.max_concurrency == Some(0) {
                return bad(
                    format!("phase {} max_concurrency = 0", p.name),
                    "leave it out or give at least 1",
                );
            }
            if p.concurrency.is_some() {
                return bad(
                    format!("open-loop phase {} has a concurrency", p.name),
                    "use max_concurrency to cap an open-loop phase; concurrency is for closed_loop",
                );
            }
        }
        PhaseKind::ClosedLoop => {
            if !p.concurrency.is_some_and(|c| (1..=100_000).contains(&c)) {
                return bad(
                    format!("closed-loop phase {} needs concurrency", p.name),
                    "give concurrency = requests in flight (1 to 100000)",
                );
            }
            if p.rate.is_some() || p.arrival.is_some() {
                return bad(
                    format!("closed-loop phase {} has a rate", p.name),
                    "a closed loop sends as fast as replies come back: remove rate/arrival",
                );
            }
        }
        PhaseKind::Silence => {
            if p.rate.is_some() || p.concurrency.is_some() {
                return bad(
                    format!("silent phase {} has a rate or concurrency", p.name),
                    "a silent phase sends nothing: remove them",
                );
            }
        }
    }
    Ok(())
}

/// Parses a duration flag: `20s`, `500ms`, `2m`, `1h` or plain seconds.
pub fn parse_duration(text: &str) -> Result<f64, String> {
    let t = text.trim();
    let (number, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = t.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (t, 1.0)
    };
    match number.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v * scale),
        _ => Err(format!("{text:?} is not a duration (20s, 500ms, 2m)")),
    }
}

/// Parses a `--phase` flag: `NAME=poisson:RATE:DURATION[:cap=N]`,
/// `NAME=gamma:RATE:BURSTINESS:DURATION[:cap=N]`,
/// `NAME=constant:RATE:DURATION[:cap=N]`, `NAME=silence:DURATION` or
/// `NAME=closed:CONCURRENCY:DURATION`.
pub fn parse_phase(text: &str) -> Result<Phase, UsageError> {
    let fix = "write NAME=poisson:RATE:DURATION, NAME=gamma:RATE:BURSTINESS:DURATION, NAME=constant:RATE:DURATION (each with an optional :cap=N), NAME=silence:DURATION or NAME=closed:CONCURRENCY:DURATION";
    let bad = |why: &str| UsageError::new(format!("--phase {text:?}: {why}"), fix);
    let (name, spec) = text.split_once('=').ok_or_else(|| bad("no NAME="))?;
    let mut parts: Vec<&str> = spec.split(':').collect();
    let mut cap = None;
    if let Some(last) = parts.last()
        && let Some(n) = last.strip_prefix("cap=")
    {
        cap = Some(n.parse().map_err(|_| bad("cap is not a number"))?);
        parts.pop();
    }
    let num = |s: &str| {
        s.parse::<f64>()
            .map_err(|_| bad(&format!("{s:?} is not a number")))
    };
    let dur = |s: &str| parse_duration(s).map_err(|e| bad(&e));
    let mut phase = Phase {
        name: name.to_string(),
        kind: PhaseKind::OpenLoop,
        duration_s: 0.0,
        rate: None,
        arrival: None,
        burstiness: None,
        max_concurrency: cap,
        concurrency: None,
    };
    match parts.as_slice() {
        ["poisson", rate, d] | ["constant", rate, d] => {
            phase.arrival = Some(if parts[0] == "poisson" {
                Arrival::Poisson
            } else {
                Arrival::Constant
            });
            phase.rate = Some(num(rate)?);
            phase.duration_s = dur(d)?;
        }
        ["gamma", rate, b, d] => {
            phase.arrival = Some(Arrival::Gamma);
            phase.rate = Some(num(rate)?);
            phase.burstiness = Some(num(b)?);
            phase.duration_s = dur(d)?;
        }
        ["silence", d] if cap.is_none() => {
            phase.kind = PhaseKind::Silence;
            phase.duration_s = dur(d)?;
        }
        ["closed", c, d] if cap.is_none() => {
            phase.kind = PhaseKind::ClosedLoop;
            phase.concurrency = Some(
                c.parse()
                    .map_err(|_| bad("concurrency is not a whole number"))?,
            );
            phase.duration_s = dur(d)?;
        }
        _ => return Err(bad("unknown phase form")),
    }
    check_phase(&phase)?;
    Ok(phase)
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
