//! The plan checked before the run starts: every value a run could not
//! use is a usage error naming it and the fix.

use super::*;

impl Plan {
    /// Checks everything that can be checked before the run starts.
    pub fn validate(&self) -> Result<(), UsageError> {
        let bad = |problem: String, fix: &str| Err(UsageError::new(problem, fix));
        if !(self.time_scale > 0.0 && self.time_scale <= 100.0) {
            return bad(
                format!("time_scale = {} is out of range", self.time_scale),
                "use a factor above 0 and at most 100 (0.1 makes every phase ten times shorter)",
            );
        }
        self.check_endpoint()?;
        self.check_workload()?;
        self.check_measurement()
    }

    /// The URL, timeouts, template, headers and JSON pointers.
    fn check_endpoint(&self) -> Result<(), UsageError> {
        let bad = |problem: String, fix: &str| Err(UsageError::new(problem, fix));
        let url = &self.endpoint.url;
        if !web_url(url) {
            return bad(
                format!("endpoint url {url:?} is not an http:// or https:// URL"),
                "give the full URL, e.g. http://127.0.0.1:8000/v1/completions",
            );
        }
        if url.parse::<hyper::Uri>().is_err() {
            return bad(
                format!("endpoint url {url:?} does not parse"),
                "check it for typos",
            );
        }
        no_userinfo("the endpoint url", url)?;
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
        Ok(())
    }

    /// Prompt and output lengths, prompt source, phases and SLOs.
    fn check_workload(&self) -> Result<(), UsageError> {
        let bad = |problem: String, fix: &str| Err(UsageError::new(problem, fix));
        check_length("prompts.input_tokens", self.prompts.input_tokens)?;
        let p = &self.prompts;
        if u64::from(p.shared_prefix_tokens) * u64::from(p.prefix_groups) > 16_000_000 {
            return Err(UsageError::new(
                format!(
                    "{} prefix groups of {} tokens are over 16 million tokens to build",
                    p.prefix_groups, p.shared_prefix_tokens
                ),
                "give fewer or shorter shared prefixes",
            ));
        }
        if p.shared_prefix_tokens > 131_072 {
            return Err(UsageError::new(
                format!(
                    "shared_prefix_tokens = {} is over 131072",
                    p.shared_prefix_tokens
                ),
                "give a shared prefix a model's context can hold (--shared-prefix-tokens N)",
            ));
        }
        if !(1..=10_000).contains(&p.prefix_groups) {
            return Err(UsageError::new(
                format!("prefix_groups = {} is out of range", p.prefix_groups),
                "use 1 to 10000 distinct prefixes (--prefix-groups K)",
            ));
        }
        if p.prefix_groups > 1 && p.shared_prefix_tokens == 0 {
            return Err(UsageError::new(
                format!("{} prefix groups but no shared prefix", p.prefix_groups),
                "give --shared-prefix-tokens N with --prefix-groups K",
            ));
        }
        if !(1..=1_000).contains(&p.turns) {
            return bad(
                format!("prompts.turns = {} is out of range", p.turns),
                "use 1 to 1000 turns per conversation (--turns N)",
            );
        }
        let think = match p.think_time {
            ThinkTime::Fixed(s) => s,
            ThinkTime::Exponential { mean } => mean,
            ThinkTime::Uniform { max, .. } => max,
        };
        if !(0.0..=3600.0).contains(&think) {
            return bad(
                format!("think time {think} s is out of range"),
                "use 0 to 1 h (--think-time 2s)",
            );
        }
        if think > 0.0 && p.turns == 1 {
            return bad(
                "a think time without conversations".into(),
                "give --turns N (N > 1) with --think-time",
            );
        }
        if p.turns > 1 && self.endpoint.api == Api::Template {
            return bad(
                "multi-turn conversations with the template API".into(),
                "use --api chat (messages) or completions (the conversation as one prompt)",
            );
        }
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
        Ok(())
    }

    /// Telemetry, the model's peak, the cost and gapscoped's URL.
    fn check_measurement(&self) -> Result<(), UsageError> {
        let bad = |problem: String, fix: &str| Err(UsageError::new(problem, fix));
        if let Some(t) = &self.telemetry {
            if !web_url(&t.url) {
                return bad(
                    format!(
                        "telemetry url {:?} is not an http:// or https:// URL",
                        t.url
                    ),
                    "give e.g. http://127.0.0.1:9400/metrics (dcgm-exporter) or http://127.0.0.1:9090 (Prometheus)",
                );
            }
            no_userinfo("the telemetry url", &t.url)?;
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
            && !web_url(g)
        {
            return bad(
                format!("gapscoped = {g:?} is not an http:// or https:// URL"),
                "give gapscoped's base URL, e.g. http://127.0.0.1:9478 (https:// behind a web config)",
            );
        }
        if let Some(g) = &self.gapscoped {
            no_userinfo("the gapscoped url", g)?;
        }
        Ok(())
    }
}

fn web_url(url: &str) -> bool {
    url.starts_with("http://") || url.starts_with("https://")
}

/// Credentials written into a URL (`https://user:pw@host`) would end up in
/// results, logs and metric labels.
fn has_userinfo(url: &str) -> bool {
    url.split_once("://")
        .map(|(_, rest)| rest.split(['/', '?', '#']).next().unwrap_or(""))
        .is_some_and(|authority| authority.contains('@'))
}

fn no_userinfo(what: &str, url: &str) -> Result<(), UsageError> {
    if has_userinfo(url) {
        return Err(UsageError::new(
            format!(
                "{what} has credentials in it (user@host), which would be written into results and logs"
            ),
            "remove them: use --api-key (or OPENAI_API_KEY) for the endpoint, --gapscoped-user with GAPSCOPED_PASSWORD for gapscoped",
        ));
    }
    Ok(())
}

fn check_length(name: &str, l: Length) -> Result<(), UsageError> {
    let ok = match l {
        Length::Fixed(n) => (1..=1_000_000).contains(&n),
        Length::Uniform { min, max } => min >= 1 && min <= max && max <= 1_000_000,
        Length::Normal { mean, stddev, .. } | Length::LogNormal { mean, stddev, .. } => {
            (1.0..=1e6).contains(&mean) && (0.0..=1e6).contains(&stddev)
        }
    };
    if ok {
        Ok(())
    } else {
        Err(UsageError::new(
            format!("{name} = {l:?} is not a usable length"),
            "give a token count (512), a range ({ min = 100, max = 900 }), { mean = 512, stddev = 128 } \
             or { mean = 512, stddev = 256, distribution = \"lognormal\" } (flags: 512, 100-900, \
             normal:512:128, lognormal:512:256)",
        ))
    }
}

pub(super) fn check_phase(p: &Phase) -> Result<(), UsageError> {
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
