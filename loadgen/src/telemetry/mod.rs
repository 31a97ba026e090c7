//! GPU telemetry during the run: utilization, power and the energy
//! counter, read once per interval from gapscoped's or dcgm-exporter's
//! `/metrics`, or from a Prometheus server's query API.
//!
//! Utilization is averaged over the GPUs, power and energy summed, over
//! the GPUs selected (`--gpu-ids`, `--gpu-uuid`; all by default, with a
//! warning when more than one reports: a one-GPU server on an eight-GPU
//! host would otherwise get eight GPUs' power and an MFU 8× too low).
//! Energy comes from the exporter's counter when it moved inside the window
//! (exact) and from integrating power otherwise; the results say which.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use serde::Serialize;

use crate::{
    clock::Clock,
    http::{SideClient, encode_query},
    plan::{Telemetry, TelemetrySource},
};

/// One reading.
#[derive(Debug, Clone, Copy, Serialize, serde::Deserialize)]
pub struct Sample {
    /// Run clock, ns.
    pub t_ns: u64,
    /// 0–1, averaged over GPUs.
    pub utilization: Option<f64>,
    /// Watts, summed over GPUs.
    pub power_w: Option<f64>,
    /// Joules, summed over GPUs, from the energy counter.
    pub energy_j: Option<f64>,
}

/// What the telemetry endpoint told us about itself.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Source {
    pub kind: String,
    pub url: String,
    pub queries: BTreeMap<String, String>,
    /// The GPU model (`modelName` label) and how many GPUs were used.
    pub gpu_model: Option<String>,
    pub gpus: usize,
    /// The GPUs used, as `gpu=ID UUID=…` (exporters); the selection asked
    /// for, if any; every GPU that reported.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub gpus_used: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu_selection: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpus_reporting: Option<usize>,
    pub samples: usize,
    pub failed_scrapes: u64,
    pub last_error: Option<String>,
}

/// Which series to read, and how to scale them to ratio, watts, joules.
struct Queries {
    utilization: (String, f64),
    power: (String, f64),
    energy: (String, f64),
    /// Prometheus: how many GPUs the power query sums.
    gpus: Option<String>,
    /// A GPU selection is in the queries.
    selected: bool,
}

/// A PromQL label matcher for the GPU selection (empty: all GPUs).
fn matcher(t: &Telemetry) -> String {
    let mut parts = Vec::new();
    if !t.gpu_ids.is_empty() {
        parts.push(format!("gpu=~\"{}\"", t.gpu_ids.join("|")));
    }
    if !t.gpu_uuids.is_empty() {
        parts.push(format!("UUID=~\"{}\"", t.gpu_uuids.join("|")));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

fn queries(t: &Telemetry) -> Queries {
    let m = matcher(t);
    let (u, p, e, us, es) = match t.source {
        TelemetrySource::Gapscoped => (
            "gapscope_gpu_utilization_ratio",
            "gapscope_gpu_power_watts",
            "gapscope_gpu_energy_joules_total",
            1.0,
            1.0,
        ),
        // dcgm-exporter: percent and millijoules.
        TelemetrySource::Dcgm => (
            "DCGM_FI_DEV_GPU_UTIL",
            "DCGM_FI_DEV_POWER_USAGE",
            "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
            0.01,
            0.001,
        ),
        // PromQL, already scaled; the selection as a label matcher.
        TelemetrySource::Prometheus => {
            return Queries {
                utilization: (
                    t.utilization
                        .clone()
                        .unwrap_or(format!("avg(DCGM_FI_DEV_GPU_UTIL{m}) / 100")),
                    1.0,
                ),
                power: (
                    t.power
                        .clone()
                        .unwrap_or(format!("sum(DCGM_FI_DEV_POWER_USAGE{m})")),
                    1.0,
                ),
                energy: (
                    t.energy.clone().unwrap_or(format!(
                        "sum(DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{m}) / 1000"
                    )),
                    1.0,
                ),
                // The default power series, counted: a custom power query
                // says nothing about how many GPUs it sums.
                gpus: t
                    .power
                    .is_none()
                    .then(|| format!("count(DCGM_FI_DEV_POWER_USAGE{m})")),
                selected: !m.is_empty(),
            };
        }
    };
    Queries {
        utilization: (t.utilization.clone().unwrap_or(u.into()), us),
        power: (t.power.clone().unwrap_or(p.into()), 1.0),
        energy: (t.energy.clone().unwrap_or(e.into()), es),
        gpus: None,
        selected: false,
    }
}

pub(crate) struct Scraper {
    pub samples: Arc<Mutex<Vec<Sample>>>,
    pub source: Arc<Mutex<Source>>,
    task: tokio::task::JoinHandle<()>,
}

impl Scraper {
    /// Starts scraping in the background with `client`.
    pub(crate) fn start(cfg: &Telemetry, clock: Clock, client: SideClient) -> Self {
        let q = queries(cfg);
        let url = cfg.scrape_url();
        let selection = [
            (!cfg.gpu_ids.is_empty()).then(|| format!("gpu in {}", cfg.gpu_ids.join(","))),
            (!cfg.gpu_uuids.is_empty()).then(|| format!("UUID in {}", cfg.gpu_uuids.join(","))),
        ]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>();
        let source = Arc::new(Mutex::new(Source {
            kind: format!("{:?}", cfg.source).to_lowercase(),
            url: url.clone(),
            gpu_selection: (!selection.is_empty()).then(|| selection.join(" and ")),
            queries: [
                ("utilization".to_string(), q.utilization.0.clone()),
                ("power".to_string(), q.power.0.clone()),
                ("energy".to_string(), q.energy.0.clone()),
            ]
            .into(),
            ..Source::default()
        }));
        let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
        let (cfg, s, src) = (cfg.clone(), samples.clone(), source.clone());
        let task = tokio::spawn(async move {
            let every = Duration::from_millis(cfg.interval_ms);
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tick.tick().await;
                let t_ns = clock.now();
                let result = match cfg.source {
                    TelemetrySource::Prometheus => scrape_api(&client, &url, &q, every).await,
                    _ => scrape_text(&client, &url, &q, &cfg, every).await,
                };
                let mut info = src
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                match result {
                    Ok(read) => {
                        let mut sample = read.sample;
                        sample.t_ns = t_ns;
                        info.samples += 1;
                        if read.model.is_some() {
                            info.gpu_model = read.model;
                        }
                        info.gpus = info.gpus.max(read.used.len().max(read.count));
                        for g in read.used {
                            if !info.gpus_used.contains(&g) {
                                info.gpus_used.push(g);
                            }
                        }
                        if let Some(n) = read.reporting {
                            let before = info.gpus_reporting.unwrap_or(0);
                            info.gpus_reporting = Some(before.max(n));
                            if n > 1 && before <= 1 && info.gpu_selection.is_none() {
                                eprintln!(
                                    "gapscope-loadgen: warning: {n} GPUs report to {url}; power, energy and the GPU count for MFU and cost add up all of them (select the server's with --gpu-ids or --gpu-uuid)"
                                );
                            }
                        }
                        s.lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .push(sample);
                    }
                    Err(e) => {
                        if info.failed_scrapes == 0 {
                            eprintln!(
                                "gapscope-loadgen: telemetry from {} failed ({e}); retrying every interval",
                                cfg.url
                            );
                        }
                        info.failed_scrapes += 1;
                        info.last_error = Some(e);
                    }
                }
            }
        });
        Self {
            samples,
            source,
            task,
        }
    }

    /// Stops scraping and returns the readings.
    pub(crate) fn stop(self) -> (Vec<Sample>, Source) {
        self.task.abort();
        let samples = self.samples.lock().map(|s| s.clone()).unwrap_or_default();
        let source = self.source.lock().map(|s| s.clone()).unwrap_or_default();
        (samples, source)
    }
}

/// One scrape's reading and what it says about the GPUs.
struct Reading {
    sample: Sample,
    model: Option<String>,
    /// The GPUs the reading covers (`gpu=ID UUID=…`), when labelled.
    used: Vec<String>,
    /// How many GPUs the reading covers, labelled or not.
    count: usize,
    /// How many GPUs reported before the selection (exporters).
    reporting: Option<usize>,
}

async fn scrape_text(
    client: &SideClient,
    url: &str,
    q: &Queries,
    cfg: &Telemetry,
    timeout: Duration,
) -> Result<Reading, String> {
    let (status, body) = client.get(url, timeout).await?;
    if status != 200 {
        return Err(format!("HTTP {status}"));
    }
    let series = parse_text(&body);
    let label = |s: &Series, k: &str| s.labels.get(k).cloned();
    let id = |s: &Series| {
        format!(
            "gpu={} UUID={}",
            label(s, "gpu").unwrap_or_default(),
            label(s, "UUID").unwrap_or_default()
        )
    };
    fn named<'a>(series: &'a [Series], name: &'a str) -> impl Iterator<Item = &'a Series> {
        series.iter().filter(move |s| s.name == name)
    }
    let reporting: std::collections::BTreeSet<String> = [&q.utilization.0, &q.power.0, &q.energy.0]
        .into_iter()
        .flat_map(|n| named(&series, n).map(id))
        .collect();
    let pick = |name: &String| {
        series
            .iter()
            .filter(|s| &s.name == name)
            .filter(|s| {
                cfg.selects(
                    s.labels.get("gpu").map(String::as_str),
                    s.labels.get("UUID").map(String::as_str),
                )
            })
            .collect::<Vec<_>>()
    };
    let util = pick(&q.utilization.0);
    let power = pick(&q.power.0);
    let energy = pick(&q.energy.0);
    if util.is_empty() && power.is_empty() && energy.is_empty() {
        if !reporting.is_empty() {
            return Err(format!(
                "no GPU there matches the selection ({} report: {})",
                reporting.len(),
                reporting.into_iter().collect::<Vec<_>>().join("; ")
            ));
        }
        return Err(format!(
            "none of {}, {}, {} is exported there",
            q.utilization.0, q.power.0, q.energy.0
        ));
    }
    let mean = |v: &[&Series], scale: f64| {
        (!v.is_empty()).then(|| v.iter().map(|s| s.value).sum::<f64>() / v.len() as f64 * scale)
    };
    let sum = |v: &[&Series], scale: f64| {
        (!v.is_empty()).then(|| v.iter().map(|s| s.value).sum::<f64>() * scale)
    };
    let model = util
        .iter()
        .chain(&power)
        .find_map(|s| s.labels.get("modelName").cloned());
    let used: std::collections::BTreeSet<String> = util
        .iter()
        .chain(&power)
        .chain(&energy)
        .map(|s| id(s))
        .collect();
    Ok(Reading {
        sample: Sample {
            t_ns: 0,
            utilization: mean(&util, q.utilization.1),
            power_w: sum(&power, q.power.1),
            energy_j: sum(&energy, q.energy.1),
        },
        model,
        count: util.len().max(power.len()).max(energy.len()),
        used: used.into_iter().collect(),
        reporting: Some(reporting.len()),
    })
}

async fn scrape_api(
    client: &SideClient,
    base: &str,
    q: &Queries,
    timeout: Duration,
) -> Result<Reading, String> {
    let base = base.trim_end_matches('/');
    let mut values = Vec::new();
    let count = q.gpus.clone().map(|c| (c, 1.0));
    for (query, scale) in [&q.utilization, &q.power, &q.energy]
        .into_iter()
        .chain(count.as_ref())
    {
        let url = format!("{base}/api/v1/query?query={}", encode_query(query));
        let (status, body) = client.get(&url, timeout).await?;
        let v: serde_json::Value =
            serde_json::from_str(&body).map_err(|e| format!("not a Prometheus API reply ({e})"))?;
        if status != 200 || v["status"] != "success" {
            return Err(format!(
                "query {query:?}: HTTP {status}: {}",
                v["error"].as_str().unwrap_or("")
            ));
        }
        let result = v["data"]["result"].as_array().cloned().unwrap_or_default();
        let total: Option<f64> = result
            .iter()
            .filter_map(|r| r["value"][1].as_str()?.parse::<f64>().ok())
            .reduce(|a, b| a + b);
        values.push(total.map(|t| t * scale));
    }
    Ok(Reading {
        sample: Sample {
            t_ns: 0,
            utilization: values[0],
            power_w: values[1],
            energy_j: values[2],
        },
        model: None,
        used: Vec::new(),
        count: values.get(3).copied().flatten().unwrap_or(0.0) as usize,
        // Without a selection the count is every GPU that reports.
        reporting: (q.gpus.is_some() && !q.selected)
            .then(|| values.get(3).copied().flatten().unwrap_or(0.0) as usize),
    })
}

/// One sample of the Prometheus text format.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Series {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parses the Prometheus text exposition format (0.0.4), skipping lines
/// that do not parse.
pub(crate) fn parse_text(body: &str) -> Vec<Series> {
    body.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Series> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let name = line[..name_end].to_string();
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if rest.starts_with('{') {
        rest = &rest[1..];
        loop {
            rest = rest.trim_start_matches([' ', ',']);
            if let Some(r) = rest.strip_prefix('}') {
                rest = r;
                break;
            }
            let eq = rest.find('=')?;
            let key = rest[..eq].trim().to_string();
            rest = rest[eq + 1..].strip_prefix('"')?;
            let mut value = String::new();
            let mut chars = rest.char_indices();
            let end = loop {
                let (i, c) = chars.next()?;
                match c {
                    '\\' => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    '"' => break i,
                    c => value.push(c),
                }
            };
            labels.insert(key, value);
            rest = &rest[end + 1..];
        }
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Series {
        name,
        labels,
        value,
    })
}

/// Averages and energy over a window of the run.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct WindowTelemetry {
    pub samples: usize,
    pub avg_utilization: Option<f64>,
    pub avg_power_w: Option<f64>,
    pub energy_j: Option<f64>,
    /// "counter" (the energy counter's increase) or "power_integral".
    pub energy_source: Option<String>,
    /// Both energies, where each could be had (the audit compares them).
    #[serde(default)]
    pub energy_counter_j: Option<f64>,
    #[serde(default)]
    pub energy_power_j: Option<f64>,
    /// Times the counter moved inside the window.
    #[serde(default)]
    pub counter_updates: usize,
    /// Why the counter was not used, when there was one.
    #[serde(default)]
    pub energy_note: Option<String>,
}

/// Telemetry between run times `start` and `end`.
///
/// The energy counter is read where it *moved*: the first reading that
/// shows each new value. Between its first and last move it measured what
/// the GPU used, scaled then to the window. A counter that moved fewer
/// than twice (dcgm-exporter collects every 30 s by default) says nothing
/// about the window, and power integrated over it stands in.
pub(crate) fn window(samples: &[Sample], start: u64, end: u64) -> WindowTelemetry {
    let inside: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.t_ns >= start && s.t_ns <= end)
        .collect();
    let avg = |f: &dyn Fn(&Sample) -> Option<f64>| {
        let v: Vec<f64> = inside.iter().filter_map(|s| f(s)).collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    };
    let mut w = WindowTelemetry {
        samples: inside.len(),
        avg_utilization: avg(&|s| s.utilization),
        avg_power_w: avg(&|s| s.power_w),
        ..WindowTelemetry::default()
    };
    let span = (end - start) as f64;
    w.energy_power_j = w.avg_power_w.map(|p| p * span / 1e9);
    // The counter's readings in the window, after the last one before it
    // (so a move at the window's first reading counts).
    let before = samples
        .iter()
        .rev()
        .find(|s| s.t_ns < start && s.energy_j.is_some());
    let counter: Vec<(u64, f64)> = before
        .into_iter()
        .chain(inside.iter().copied())
        .filter_map(|s| Some((s.t_ns, s.energy_j?)))
        .collect();
    let moves: Vec<(u64, f64)> = counter
        .windows(2)
        .filter(|p| p[1].1 != p[0].1)
        .map(|p| p[1])
        .collect();
    w.counter_updates = moves.len();
    if moves.len() >= 2 {
        let ((t0, e0), (t1, e1)) = (moves[0], moves[moves.len() - 1]);
        if e1 > e0 && t1 > t0 {
            w.energy_counter_j = Some((e1 - e0) * span / (t1 - t0) as f64);
        } else {
            w.energy_note = Some("the energy counter went backwards (reset?)".into());
        }
    } else if !counter.is_empty() {
        w.energy_note = Some(format!(
            "the energy counter moved {} time(s) in {} readings: too coarse or lagging for this window",
            moves.len(),
            inside.iter().filter(|s| s.energy_j.is_some()).count()
        ));
    }
    (w.energy_j, w.energy_source) = match (w.energy_counter_j, w.energy_power_j) {
        (Some(e), _) => (Some(e), Some("counter".into())),
        (None, Some(e)) => (Some(e), Some("power_integral".into())),
        (None, None) => (None, None),
    };
    w
}

#[cfg(test)]
mod tests;
