//! GPU telemetry during the run: utilization, power and the energy
//! counter, read once per interval from gapscoped's or dcgm-exporter's
//! `/metrics`, or from a Prometheus server's query API.
//!
//! Utilization is averaged over the GPUs, power and energy summed. Energy
//! comes from the exporter's counter when there is one (exact) and from
//! integrating power otherwise; the results say which.

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
pub struct Source {
    pub kind: String,
    pub url: String,
    pub queries: BTreeMap<String, String>,
    /// The GPU model (`modelName` label) and how many GPUs were seen.
    pub gpu_model: Option<String>,
    pub gpus: usize,
    pub samples: usize,
    pub failed_scrapes: u64,
    pub last_error: Option<String>,
}

/// Which series to read, and how to scale them to ratio, watts, joules.
struct Queries {
    utilization: (String, f64),
    power: (String, f64),
    energy: (String, f64),
}

fn queries(t: &Telemetry) -> Queries {
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
        // PromQL, already scaled.
        TelemetrySource::Prometheus => (
            "avg(DCGM_FI_DEV_GPU_UTIL) / 100",
            "sum(DCGM_FI_DEV_POWER_USAGE)",
            "sum(DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION) / 1000",
            1.0,
            1.0,
        ),
    };
    Queries {
        utilization: (t.utilization.clone().unwrap_or(u.into()), us),
        power: (t.power.clone().unwrap_or(p.into()), 1.0),
        energy: (t.energy.clone().unwrap_or(e.into()), es),
    }
}

pub struct Scraper {
    pub samples: Arc<Mutex<Vec<Sample>>>,
    pub source: Arc<Mutex<Source>>,
    task: tokio::task::JoinHandle<()>,
}

impl Scraper {
    /// Starts scraping in the background.
    pub fn start(cfg: &Telemetry, clock: Clock) -> Self {
        let q = queries(cfg);
        let source = Arc::new(Mutex::new(Source {
            kind: format!("{:?}", cfg.source).to_lowercase(),
            url: cfg.url.clone(),
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
            let client = SideClient::default();
            let every = Duration::from_millis(cfg.interval_ms);
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tick.tick().await;
                let t_ns = clock.now();
                let result = match cfg.source {
                    TelemetrySource::Prometheus => scrape_api(&client, &cfg.url, &q, every).await,
                    _ => scrape_text(&client, &cfg.url, &q, every).await,
                };
                let mut info = src.lock().unwrap_or_else(|p| p.into_inner());
                match result {
                    Ok((mut sample, model, gpus)) => {
                        sample.t_ns = t_ns;
                        info.samples += 1;
                        if model.is_some() {
                            info.gpu_model = model;
                        }
                        info.gpus = info.gpus.max(gpus);
                        s.lock().unwrap_or_else(|p| p.into_inner()).push(sample);
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
    pub fn stop(self) -> (Vec<Sample>, Source) {
        self.task.abort();
        let samples = self.samples.lock().map(|s| s.clone()).unwrap_or_default();
        let source = self.source.lock().map(|s| s.clone()).unwrap_or_default();
        (samples, source)
    }
}

async fn scrape_text(
    client: &SideClient,
    url: &str,
    q: &Queries,
    timeout: Duration,
) -> Result<(Sample, Option<String>, usize), String> {
    let (status, body) = client.get(url, timeout).await?;
    if status != 200 {
        return Err(format!("HTTP {status}"));
    }
    let series = parse_text(&body);
    let pick = |name: &str| series.iter().filter(|s| s.name == name).collect::<Vec<_>>();
    let util = pick(&q.utilization.0);
    let power = pick(&q.power.0);
    let energy = pick(&q.energy.0);
    if util.is_empty() && power.is_empty() && energy.is_empty() {
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
    let gpus = util.len().max(power.len()).max(energy.len());
    Ok((
        Sample {
            t_ns: 0,
            utilization: mean(&util, q.utilization.1),
            power_w: sum(&power, q.power.1),
            energy_j: sum(&energy, q.energy.1),
        },
        model,
        gpus,
    ))
}

async fn scrape_api(
    client: &SideClient,
    base: &str,
    q: &Queries,
    timeout: Duration,
) -> Result<(Sample, Option<String>, usize), String> {
    let base = base.trim_end_matches('/');
    let mut values = Vec::new();
    for (query, scale) in [&q.utilization, &q.power, &q.energy] {
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
    Ok((
        Sample {
            t_ns: 0,
            utilization: values[0],
            power_w: values[1],
            energy_j: values[2],
        },
        None,
        0,
    ))
}

/// One sample of the Prometheus text format.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parses the Prometheus text exposition format (0.0.4), skipping lines
/// that do not parse.
pub fn parse_text(body: &str) -> Vec<Series> {
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
}

/// Telemetry between run times `start` and `end`.
pub fn window(samples: &[Sample], start: u64, end: u64) -> WindowTelemetry {
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
    let counter: Vec<(u64, f64)> = inside
        .iter()
        .filter_map(|s| Some((s.t_ns, s.energy_j?)))
        .collect();
    if counter.len() >= 2 {
        let (t0, e0) = counter[0];
        let (t1, e1) = counter[counter.len() - 1];
        if e1 >= e0 && t1 > t0 {
            // Scale the counter's increase from its first to last reading
            // to the whole window.
            w.energy_j = Some((e1 - e0) * (end - start) as f64 / (t1 - t0) as f64);
            w.energy_source = Some("counter".into());
        }
    }
    if w.energy_j.is_none()
        && let Some(p) = w.avg_power_w
    {
        w.energy_j = Some(p * (end - start) as f64 / 1e9);
        w.energy_source = Some("power_integral".into());
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_exporter_text_with_labels_and_escapes() {
        let body = "# HELP DCGM_FI_DEV_GPU_UTIL GPU utilization (in %).\n\
            # TYPE DCGM_FI_DEV_GPU_UTIL gauge\n\
            DCGM_FI_DEV_GPU_UTIL{gpu=\"0\",UUID=\"GPU-1\",modelName=\"NVIDIA A40\",Hostname=\"a\\\"b\"} 87\n\
            DCGM_FI_DEV_POWER_USAGE{gpu=\"0\"} 251.5 1700000000000\n\
            up 1\n\
            broken{x=\"1\" 2\n";
        let s = parse_text(body);
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].labels["modelName"], "NVIDIA A40");
        assert_eq!(s[0].labels["Hostname"], "a\"b");
        assert_eq!(s[1].value, 251.5);
        assert_eq!(s[2].name, "up");
    }

    #[test]
    fn energy_from_the_counter_else_from_power() {
        let s = |t: u64, p: f64, e: Option<f64>| Sample {
            t_ns: t * 1_000_000_000,
            utilization: Some(0.5),
            power_w: Some(p),
            energy_j: e,
        };
        let with = [
            s(0, 100.0, Some(1000.0)),
            s(1, 100.0, Some(1100.0)),
            s(2, 100.0, Some(1200.0)),
        ];
        let w = window(&with, 0, 2_000_000_000);
        assert_eq!(
            (w.energy_j, w.energy_source.as_deref()),
            (Some(200.0), Some("counter"))
        );
        let without = [s(0, 100.0, None), s(1, 300.0, None)];
        let w = window(&without, 0, 2_000_000_000);
        assert_eq!(
            (w.energy_j, w.energy_source.as_deref()),
            (Some(400.0), Some("power_integral"))
        );
    }
}
