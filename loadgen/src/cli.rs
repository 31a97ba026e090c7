//! Command-line flags, and how they override a workload file.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::{
    error::UsageError,
    plan::{
        Api, ApiKey, BasicAuth, Endpoint, Length, LogNormalName, ModelSpec, Plan, PromptSource,
        Telemetry, TelemetrySource, ThinkTime, parse_duration, parse_phase, parse_sweep,
    },
};

#[derive(Parser, Debug)]
#[command(
    name = "gapscope-loadgen",
    version,
    about = "The three-phase LLM serving workload (Poisson warmup, silent cooldown, closed-loop stress) with token-accurate latency, MFU, energy and cost",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a workload (the default).
    Run(Box<RunArgs>),
    /// Compare two results files as a Markdown table.
    Compare(CompareArgs),
    /// Check published figures for consistency (MFU against throughput).
    Audit(AuditArgs),
}

#[derive(Args, Debug, Default)]
pub struct RunArgs {
    /// Workload file (TOML); flags override it.
    #[arg(long, short = 'w')]
    pub workload: Option<PathBuf>,
    /// The endpoint, e.g. http://127.0.0.1:8000/v1/completions.
    #[arg(long)]
    pub url: Option<String>,
    /// completions, chat or template.
    #[arg(long, value_parser = parse_api)]
    pub api: Option<Api>,
    /// The `model` field of OpenAI requests.
    #[arg(long)]
    pub model: Option<String>,
    /// Ask for whole replies instead of streams.
    #[arg(long)]
    pub no_stream: bool,
    /// Ask for usage in every chunk (vLLM's continuous_usage_stats), so
    /// chunks carrying several tokens are counted exactly.
    #[arg(long)]
    pub continuous_usage: bool,
    /// Extra header, NAME:VALUE (repeatable).
    #[arg(long = "header", value_name = "NAME:VALUE")]
    pub headers: Vec<String>,
    /// Bearer token for the endpoint (default: $OPENAI_API_KEY), sent as
    /// Authorization: Bearer KEY; never written to results or logs.
    #[arg(long, value_name = "KEY")]
    pub api_key: Option<String>,
    /// Seconds a request may take.
    #[arg(long)]
    pub timeout: Option<f64>,
    /// A CA certificate (PEM) to trust for https:// besides the system's
    /// (repeatable); used for the endpoint, gapscoped and telemetry alike.
    #[arg(long, value_name = "FILE")]
    pub cacert: Vec<PathBuf>,
    /// Accept any server certificate (encrypted, not authenticated; a
    /// warning is printed).
    #[arg(long)]
    pub insecure: bool,
    /// A client certificate (PEM chain) for mutual TLS, with --key.
    #[arg(long, value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
    /// Offer only HTTP/1.1 over TLS (by default h2 is offered too, and
    /// used when the server chooses it).
    #[arg(long)]
    pub http1_only: bool,
    /// Phases, replacing the default or the file's (repeatable, in order):
    /// NAME=poisson:RATE:DURATION, NAME=gamma:RATE:BURSTINESS:DURATION,
    /// NAME=constant:RATE:DURATION (each with :cap=N), NAME=silence:DURATION,
    /// NAME=closed:CONCURRENCY:DURATION.
    #[arg(long = "phase", value_name = "SPEC")]
    pub phases: Vec<String>,
    /// A series of loads, each a phase of its own, for the
    /// throughput-latency curve and its knee: closed:1,2,4,8 or
    /// closed:1..64 (concurrencies), poisson:1..32 or poisson:0.5,1,2
    /// (requests/s); a range doubles each step (:x1.5 sets the factor).
    #[arg(long, value_name = "SPEC", conflicts_with = "phases")]
    pub sweep: Option<String>,
    /// Each sweep step's length.
    #[arg(long, value_name = "DURATION", default_value = "20s")]
    pub sweep_step: String,
    /// The silence between sweep steps.
    #[arg(long, value_name = "DURATION", default_value = "2s")]
    pub sweep_gap: String,
    /// Search the Poisson rate with the most goodput (needs an SLO): rates
    /// double from --search-start until goodput stops rising, then the
    /// bracket narrows; each probe is a run of its own in --out.
    #[arg(long, conflicts_with_all = ["phases", "sweep"])]
    pub find_max_goodput: bool,
    /// The search's first rate (requests/s).
    #[arg(long, value_name = "RATE", default_value_t = 1.0)]
    pub search_start: f64,
    /// Each probe's length.
    #[arg(long, value_name = "DURATION", default_value = "30s")]
    pub search_step: String,
    /// The most probes the search runs.
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub search_max_probes: u32,
    /// Multiply every phase duration (0.1 for a quick run).
    #[arg(long)]
    pub time_scale: Option<f64>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Prompt length in tokens: N, MIN-MAX, normal:MEAN:STDDEV or
    /// lognormal:MEAN:STDDEV.
    #[arg(long, value_parser = parse_length)]
    pub input_tokens: Option<Length>,
    /// Output length in tokens: N, MIN-MAX, normal:MEAN:STDDEV or
    /// lognormal:MEAN:STDDEV.
    #[arg(long, value_parser = parse_length)]
    pub max_tokens: Option<Length>,
    /// Ask for exactly max_tokens (ignore_eos, min_tokens); fail the run if
    /// the server does not honour it.
    #[arg(long)]
    pub fixed_output: bool,
    /// A local tokenizer.json: exact prompt lengths, a third output count.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Prompts from a text file, one per line.
    #[arg(long, conflicts_with = "sharegpt")]
    pub prompts_file: Option<PathBuf>,
    /// Prompts from a ShareGPT JSON file.
    #[arg(long)]
    pub sharegpt: Option<PathBuf>,
    /// A shared prefix of N tokens in front of every prompt (a system
    /// message for --api chat), to exercise prefix caching.
    #[arg(long, value_name = "N")]
    pub shared_prefix_tokens: Option<u32>,
    /// K distinct shared prefixes, each request using one at random.
    #[arg(long, value_name = "K")]
    pub prefix_groups: Option<u32>,
    /// Multi-turn conversations of N turns: each turn after the first
    /// carries the conversation so far (prompts and the server's
    /// replies), sent a think time after the reply before it; with
    /// --sharegpt, up to N of each conversation's human turns.
    #[arg(long, value_name = "N")]
    pub turns: Option<u32>,
    /// Think time between a reply and the next turn: 2s, exp:2s
    /// (exponential with that mean) or 1s-3s (uniform).
    #[arg(long, value_name = "TIME", value_parser = parse_think_time)]
    pub think_time: Option<ThinkTime>,
    #[arg(long)]
    pub slo_ttft_ms: Option<f64>,
    #[arg(long)]
    pub slo_tpot_ms: Option<f64>,
    #[arg(long)]
    pub slo_e2e_ms: Option<f64>,
    /// GPU telemetry: gapscoped=URL, dcgm=URL (a /metrics URL) or
    /// prometheus=URL (a Prometheus server).
    #[arg(long, value_name = "KIND=URL")]
    pub telemetry: Option<String>,
    /// Only these GPUs of the telemetry (its `gpu` label), e.g. 0,1:
    /// power, energy, utilization and the GPU count for MFU and cost
    /// come from them alone. Default: every GPU that reports.
    #[arg(long, value_name = "IDS", value_delimiter = ',')]
    pub gpu_ids: Vec<String>,
    /// Only the GPU with this UUID (the `UUID` label); repeatable.
    #[arg(long = "gpu-uuid", value_name = "UUID", value_delimiter = ',')]
    pub gpu_uuids: Vec<String>,
    #[command(flatten)]
    pub mfu: ModelArgs,
    /// Dollars per GPU-hour, for cost per million tokens.
    #[arg(long)]
    pub gpu_hour_usd: Option<f64>,
    /// gapscoped's base URL: phase annotations are posted to it.
    #[arg(long)]
    pub gapscoped: Option<String>,
    /// The gapscoped service (its [[service]] name) this run loads: the
    /// annotations say so, and gapscoped's per-token figures for that
    /// service count this run's tokens only (without it, every run's).
    #[arg(long, value_name = "NAME", requires = "gapscoped")]
    pub gapscoped_service: Option<String>,
    /// Basic auth for gapscoped behind a web config (annotations and
    /// --telemetry gapscoped=…): the user; the password comes from
    /// $GAPSCOPED_PASSWORD and is never written anywhere.
    #[arg(long, value_name = "USER")]
    pub gapscoped_user: Option<String>,
    /// Serve the run's own Prometheus metrics on IP:PORT while it runs
    /// (/metrics: requests, errors by kind, tokens, TTFT/ITL/E2E
    /// histograms by phase).
    #[arg(long, value_name = "IP:PORT")]
    pub metrics_listen: Option<String>,
    /// Keep serving /metrics this long after the run ends, so a last
    /// scrape sees the final counts (e.g. 30s for a 15 s scrape interval).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, requires = "metrics_listen")]
    pub metrics_linger: Option<f64>,
    /// Where results go (default: loadgen-results/RUN_ID).
    #[arg(long, short = 'o')]
    pub out: Option<PathBuf>,
    /// Skip the PNG/SVG plots.
    #[arg(long)]
    pub no_plots: bool,
    /// Worker threads for the client (1: everything on one core).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// No progress bar.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

#[derive(Args, Debug)]
pub struct CompareArgs {
    pub a: PathBuf,
    pub b: PathBuf,
    /// Column names for A and B.
    #[arg(long, default_value = "A,B")]
    pub labels: String,
    /// The phase to compare (default: the last closed-loop phase).
    #[arg(long)]
    pub phase: Option<String>,
    #[arg(long)]
    pub gpu_hour_usd: Option<f64>,
    /// Output tokens a day, for the cost difference.
    #[arg(long, default_value_t = 100e6)]
    pub daily_tokens: f64,
    /// When both runs are sweeps: write their curves overlaid as
    /// sweep_compare.png and .svg into this directory.
    #[arg(long, value_name = "DIR")]
    pub plots: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct AuditArgs {
    /// A published figure: NAME:TOKENS_PER_S[:MFU[:TOKENS_PER_J:WATTS]]
    /// (MFU as a fraction or with %, e.g. 6.8%). Repeatable.
    #[arg(long = "claim", required = true)]
    pub claims: Vec<String>,
    #[command(flatten)]
    pub mfu: ModelArgs,
}

/// The model and GPUs MFU is computed against (run and audit).
#[derive(Args, Debug, Default)]
pub struct ModelArgs {
    /// The model's config.json, for MFU.
    #[arg(long)]
    pub model_config: Option<PathBuf>,
    /// Or its parameter count (8.03e9).
    #[arg(long)]
    pub params: Option<f64>,
    /// GPU name for the peak table (A40, H100-SXM, ...).
    #[arg(long)]
    pub gpu: Option<String>,
    #[arg(long)]
    pub gpus: Option<u32>,
    /// Dense FP16/BF16 TFLOPS of one GPU, overriding the table.
    #[arg(long)]
    pub peak_tflops: Option<f64>,
}

impl ModelArgs {
    /// Overrides what the flags give.
    pub fn apply(&self, m: &mut ModelSpec) {
        if let Some(c) = &self.model_config {
            m.config = Some(c.clone());
        }
        m.params = self.params.or(m.params);
        m.gpu = self.gpu.clone().or(m.gpu.take());
        m.gpus = self.gpus.or(m.gpus);
        m.peak_tflops = self.peak_tflops.or(m.peak_tflops);
    }
}

fn parse_think_time(s: &str) -> Result<ThinkTime, String> {
    ThinkTime::try_from(s.to_string())
}

fn parse_api(s: &str) -> Result<Api, String> {
    match s {
        "completions" => Ok(Api::Completions),
        "chat" => Ok(Api::Chat),
        "template" => Ok(Api::Template),
        _ => Err(format!("{s:?} is not completions, chat or template")),
    }
}

fn parse_length(s: &str) -> Result<Length, String> {
    let bad = || {
        format!(
            "{s:?} is not a token count (256), a range (100-900), normal:MEAN:STDDEV or lognormal:MEAN:STDDEV"
        )
    };
    if let Some((kind, rest)) = s.split_once(':') {
        let (mean, stddev) = rest.split_once(':').ok_or_else(bad)?;
        let mean: f64 = mean.trim().parse().map_err(|_| bad())?;
        let stddev: f64 = stddev.trim().parse().map_err(|_| bad())?;
        return match kind.trim() {
            "normal" => Ok(Length::Normal {
                mean,
                stddev,
                distribution: None,
            }),
            "lognormal" => Ok(Length::LogNormal {
                mean,
                stddev,
                distribution: LogNormalName::Lognormal,
            }),
            _ => Err(bad()),
        };
    }
    match s.split_once('-') {
        Some((a, b)) => Ok(Length::Uniform {
            min: a.trim().parse().map_err(|_| bad())?,
            max: b.trim().parse().map_err(|_| bad())?,
        }),
        None => s.trim().parse().map(Length::Fixed).map_err(|_| bad()),
    }
}

impl RunArgs {
    /// The workload file (or the default plan for --url) with every flag
    /// applied, validated.
    pub fn plan(&self) -> Result<Plan, UsageError> {
        let mut plan = self.base_plan()?;
        self.override_endpoint(&mut plan.endpoint)?;
        if !self.phases.is_empty() {
            plan.phases = self
                .phases
                .iter()
                .map(|p| parse_phase(p))
                .collect::<Result<_, _>>()?;
        }
        if let Some(s) = &self.sweep {
            let (sweep, phases) = parse_sweep(s, &self.sweep_step, &self.sweep_gap)?;
            plan.phases = phases;
            plan.sweep = Some(sweep);
        }
        if let Some(t) = self.time_scale {
            plan.time_scale = t;
        }
        if let Some(s) = self.seed {
            plan.seed = s;
        }
        if let Some(l) = self.input_tokens {
            plan.prompts.input_tokens = l;
        }
        if let Some(l) = self.max_tokens {
            plan.output.max_tokens = l;
        }
        if self.fixed_output {
            plan.output.fixed = true;
        }
        if let Some(t) = &self.tokenizer {
            plan.prompts.tokenizer = Some(t.clone());
        }
        if let Some(p) = &self.prompts_file {
            plan.prompts.source = PromptSource::File;
            plan.prompts.path = Some(p.clone());
        }
        if let Some(p) = &self.sharegpt {
            plan.prompts.source = PromptSource::Sharegpt;
            plan.prompts.path = Some(p.clone());
        }
        if let Some(n) = self.shared_prefix_tokens {
            plan.prompts.shared_prefix_tokens = n;
        }
        if let Some(k) = self.prefix_groups {
            plan.prompts.prefix_groups = k;
        }
        if let Some(n) = self.turns {
            plan.prompts.turns = n;
        }
        if let Some(t) = self.think_time {
            plan.prompts.think_time = t;
        }
        plan.slo.ttft_ms = self.slo_ttft_ms.or(plan.slo.ttft_ms);
        plan.slo.tpot_ms = self.slo_tpot_ms.or(plan.slo.tpot_ms);
        plan.slo.e2e_ms = self.slo_e2e_ms.or(plan.slo.e2e_ms);
        self.override_telemetry(&mut plan)?;
        self.mfu.apply(&mut plan.model);
        plan.cost.gpu_hour_usd = self.gpu_hour_usd.or(plan.cost.gpu_hour_usd);
        plan.gapscoped = self.gapscoped.clone().or(plan.gapscoped);
        plan.gapscoped_service = self.gapscoped_service.clone().or(plan.gapscoped_service);
        self.override_tls(&mut plan)?;
        if self.metrics_linger.is_some_and(|s| s > 3600.0) {
            return Err(UsageError::new(
                "--metrics-linger is over an hour",
                "give a few scrape intervals, e.g. --metrics-linger 30s",
            ));
        }
        if self.threads == 0 || self.threads > 256 {
            return Err(UsageError::new(
                format!("--threads {} is out of range", self.threads),
                "use 1 to 256",
            ));
        }
        plan.validate()?;
        Ok(plan)
    }

    /// The workload file's plan, else the experiment's for `--url`.
    fn base_plan(&self) -> Result<Plan, UsageError> {
        Ok(match (&self.workload, &self.url) {
            (Some(path), _) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    UsageError::new(
                        format!("cannot read workload file {}: {e}", path.display()),
                        "check the path given to --workload",
                    )
                })?;
                Plan::from_toml(&text, &path.display().to_string())?
            }
            (None, Some(url)) => Plan::for_url(url),
            (None, None) => {
                return Err(UsageError::new(
                    "no endpoint",
                    "give --url http://HOST:PORT/v1/completions or --workload FILE (see --help)",
                ));
            }
        })
    }

    /// The endpoint flags over the file's endpoint.
    fn override_endpoint(&self, e: &mut Endpoint) -> Result<(), UsageError> {
        if let Some(u) = &self.url {
            e.url = u.clone();
        }
        if let Some(a) = self.api {
            e.api = a;
        }
        if let Some(m) = &self.model {
            e.model = Some(m.clone());
        }
        if self.no_stream {
            e.stream = false;
        }
        if self.continuous_usage {
            e.continuous_usage = true;
        }
        if let Some(t) = self.timeout {
            e.timeout_s = t;
        }
        for h in &self.headers {
            let (k, v) = h.split_once(':').ok_or_else(|| {
                UsageError::new(
                    format!("--header {h:?} has no ':'"),
                    "write --header 'Authorization: Bearer TOKEN'",
                )
            })?;
            e.headers.insert(k.trim().to_string(), v.trim().to_string());
        }
        let from_env = || {
            std::env::var("OPENAI_API_KEY")
                .ok()
                .filter(|k| !k.trim().is_empty())
        };
        let has_authorization = e
            .headers
            .keys()
            .any(|k| k.eq_ignore_ascii_case("authorization"));
        e.api_key = match (&self.api_key, from_env()) {
            (Some(k), _) => Some(ApiKey {
                token: k.trim().to_string(),
                source: "--api-key",
            }),
            // The environment's key only where no Authorization header
            // is given: an explicit header wins, silently.
            (None, Some(k)) if !has_authorization => Some(ApiKey {
                token: k.trim().to_string(),
                source: "OPENAI_API_KEY",
            }),
            (None, _) => None,
        };
        if let Some(key) = &e.api_key {
            if key.token.is_empty() || key.token.chars().any(|c| c.is_control() || c == ' ') {
                return Err(UsageError::new(
                    format!(
                        "the API key from {} is empty or has spaces or control characters",
                        key.source
                    ),
                    "give the token alone, e.g. --api-key sk-… (without 'Bearer ')",
                ));
            }
            if e.headers
                .keys()
                .any(|k| k.eq_ignore_ascii_case("authorization"))
            {
                return Err(UsageError::new(
                    format!(
                        "an Authorization header and an API key (from {}) are both given",
                        key.source
                    ),
                    "keep one: --api-key KEY sends Authorization: Bearer KEY",
                ));
            }
        }
        Ok(())
    }

    /// The TLS flags over the file's `[tls]`, and gapscoped's basic auth.
    fn override_tls(&self, plan: &mut Plan) -> Result<(), UsageError> {
        let tls = &mut plan.tls;
        tls.cacert.extend(self.cacert.iter().cloned());
        tls.insecure |= self.insecure;
        tls.http1_only |= self.http1_only;
        if self.cert.is_some() {
            tls.cert.clone_from(&self.cert);
            tls.key.clone_from(&self.key);
        }
        if let Some(user) = &self.gapscoped_user {
            let password = std::env::var("GAPSCOPED_PASSWORD").map_err(|_| {
                UsageError::new(
                    "--gapscoped-user is given but GAPSCOPED_PASSWORD is not set",
                    "export GAPSCOPED_PASSWORD with the user's password (it is never written to results or logs)",
                )
            })?;
            if user.is_empty() || user.contains(':') {
                return Err(UsageError::new(
                    format!("--gapscoped-user {user:?} is empty or has a ':'"),
                    "give the user name alone; the password goes in GAPSCOPED_PASSWORD",
                ));
            }
            if password.is_empty() {
                return Err(UsageError::new(
                    "GAPSCOPED_PASSWORD is empty",
                    "export the user's password in GAPSCOPED_PASSWORD",
                ));
            }
            // Every URL the password goes to: annotations and gapscoped's
            // telemetry.
            let telemetry = plan
                .telemetry
                .as_ref()
                .filter(|t| t.source == TelemetrySource::Gapscoped)
                .map(|t| t.url.as_str());
            let targets: Vec<&str> = plan
                .gapscoped
                .as_deref()
                .into_iter()
                .chain(telemetry)
                .collect();
            if targets.is_empty() {
                return Err(UsageError::new(
                    "--gapscoped-user is given but nothing goes to gapscoped",
                    "give --gapscoped https://HOST:PORT and/or --telemetry gapscoped=https://HOST:PORT",
                ));
            }
            if let Some(plain) = targets.iter().find(|u| !u.starts_with("https://")) {
                return Err(UsageError::new(
                    format!("--gapscoped-user would send the password in clear text to {plain}"),
                    "give gapscoped's URLs as https:// (the daemon's web config serves TLS)",
                ));
            }
            if plan.tls.insecure {
                return Err(UsageError::new(
                    "--insecure with --gapscoped-user would send the password to a server whose certificate is not checked",
                    "trust gapscoped's CA with --cacert FILE instead of --insecure",
                ));
            }
            plan.gapscoped_auth = Some(BasicAuth {
                user: user.clone(),
                password,
            });
        }
        Ok(())
    }

    /// `--telemetry` and the GPU selection over the file's telemetry.
    fn override_telemetry(&self, plan: &mut Plan) -> Result<(), UsageError> {
        if let Some(t) = &self.telemetry {
            let (kind, url) = t.split_once('=').ok_or_else(|| {
                UsageError::new(format!("--telemetry {t:?} has no KIND="), "write --telemetry dcgm=http://HOST:9400/metrics (or gapscoped=…, prometheus=…)")
            })?;
            let source = match kind {
                "gapscoped" => TelemetrySource::Gapscoped,
                "dcgm" => TelemetrySource::Dcgm,
                "prometheus" => TelemetrySource::Prometheus,
                _ => {
                    return Err(UsageError::new(
                        format!("--telemetry kind {kind:?} is unknown"),
                        "use gapscoped=URL, dcgm=URL or prometheus=URL",
                    ));
                }
            };
            plan.telemetry = Some(Telemetry {
                source,
                url: url.to_string(),
                interval_ms: plan
                    .telemetry
                    .as_ref()
                    .map(|t| t.interval_ms)
                    .unwrap_or(1000),
                utilization: None,
                power: None,
                energy: None,
                gpu_ids: Vec::new(),
                gpu_uuids: Vec::new(),
            });
        }
        if !self.gpu_ids.is_empty() || !self.gpu_uuids.is_empty() {
            let Some(t) = plan.telemetry.as_mut() else {
                return Err(UsageError::new(
                    "--gpu-ids/--gpu-uuid select telemetry series, and no telemetry is read",
                    "add --telemetry dcgm=http://HOST:9400/metrics (or gapscoped=…, prometheus=…)",
                ));
            };
            if let Some(bad) = self.gpu_ids.iter().chain(&self.gpu_uuids).find(|g| {
                let g = g.trim();
                g.is_empty()
                    || !g
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            }) {
                return Err(UsageError::new(
                    format!(
                        "GPU selection {bad:?} is not a GPU index or UUID (letters, digits, '-' and '_' only)"
                    ),
                    "write --gpu-ids 0,1 or --gpu-uuid GPU-…",
                ));
            }
            t.gpu_ids = self.gpu_ids.iter().map(|g| g.trim().to_string()).collect();
            t.gpu_uuids = self
                .gpu_uuids
                .iter()
                .map(|g| g.trim().to_string())
                .collect();
        }
        Ok(())
    }
}
