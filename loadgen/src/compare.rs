//! `gapscope-loadgen compare A.json B.json`: the experiment's table —
//! throughput, MFU, tokens per joule, P99 latency and B's relative impact —
//! as Markdown, with the cost difference at a daily token volume and the
//! formula it comes from.

use std::{fmt::Write, path::Path};

use crate::{
    error::UsageError,
    flops,
    plan::PhaseKind,
    results::{PhaseResult, Results, SCHEMA, SCHEMA_VERSIONS_READ, latency_aliases},
};

/// Reads a results file and checks its schema.
pub fn load(path: &Path) -> Result<Results, UsageError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        UsageError::new(
            format!("cannot read {}: {e}", path.display()),
            "give a results.json written by gapscope-loadgen",
        )
    })?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        UsageError::new(
            format!("{} is not JSON: {e}", path.display()),
            "give a results.json written by gapscope-loadgen",
        )
    })?;
    let readable = value["schema_version"]
        .as_u64()
        .is_some_and(|v| SCHEMA_VERSIONS_READ.contains(&(v as u32)));
    if value["schema"] != SCHEMA || !readable {
        return Err(UsageError::new(
            format!(
                "{} is not a gapscope-loadgen results file of schema version {SCHEMA_VERSIONS_READ:?} (schema {}, version {})",
                path.display(),
                value["schema"],
                value["schema_version"]
            ),
            "compare results written by this version of gapscope-loadgen",
        ));
    }
    let mut results: Results = serde_json::from_value(value).map_err(|e| {
        UsageError::new(
            format!("{} does not match the results schema: {e}", path.display()),
            "regenerate it with gapscope-loadgen",
        )
    })?;
    for p in &mut results.phases {
        latency_aliases(&mut p.latency);
    }
    Ok(results)
}

/// The phase to compare: the named one, else the last closed-loop phase,
/// else the last phase with output.
pub fn pick<'a>(
    r: &'a Results,
    name: Option<&str>,
    path: &Path,
) -> Result<&'a PhaseResult, UsageError> {
    if let Some(n) = name {
        return r.phases.iter().find(|p| p.name == n).ok_or_else(|| {
            UsageError::new(
                format!("{} has no phase {n:?}", path.display()),
                format!(
                    "use one of: {}",
                    r.phases
                        .iter()
                        .map(|p| p.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        });
    }
    r.phases
        .iter()
        .rev()
        .find(|p| p.kind == PhaseKind::ClosedLoop)
        .or_else(|| r.phases.iter().rev().find(|p| p.output_tokens > 0))
        .ok_or_else(|| {
            UsageError::new(
                format!("{} has no phase with output", path.display()),
                "compare runs that completed requests",
            )
        })
}

/// Why a run has no MFU: what the load generator was not told.
fn mfu_absent(r: &Results) -> Option<String> {
    let Some(model) = &r.model else {
        return Some(
            "no model shape and no GPU peak (--model-config or --params, and --gpu)".into(),
        );
    };
    if model.shape.is_none() {
        return Some("no model shape (--model-config or --params)".into());
    }
    if model.peak_tflops_per_gpu.is_none() {
        return Some(match &model.gpu {
            Some(gpu) => format!("no peak FLOPS known for GPU {gpu:?} (--peak-tflops)"),
            None => "no GPU named and none seen by telemetry: MFU needs a GPU's peak (--gpu or --peak-tflops)".into(),
        });
    }
    None
}

/// Why a phase has no energy figures: no telemetry, or no power readings.
fn energy_absent(r: &Results, p: &PhaseResult) -> Option<String> {
    if r.telemetry.is_none() {
        return Some(
            "no GPU telemetry (--telemetry gapscoped=URL, dcgm=URL or prometheus=URL)".into(),
        );
    }
    match &p.telemetry {
        None => Some("the telemetry source returned no samples in the phase".into()),
        Some(t) if t.avg_power_w.is_none() && t.energy_j.is_none() => {
            Some("the telemetry source has no GPU power readings (no NVIDIA driver there?)".into())
        }
        Some(_) => None,
    }
}

pub struct Options<'a> {
    pub labels: (String, String),
    pub phase: Option<&'a str>,
    pub gpu_hour_usd: Option<f64>,
    pub daily_tokens: f64,
    /// Where the overlaid sweep curves go (both runs sweeps).
    pub plots: Option<&'a Path>,
}

pub fn markdown(a_path: &Path, b_path: &Path, opts: &Options) -> Result<String, UsageError> {
    let (ra, rb) = (load(a_path)?, load(b_path)?);
    let (a, b) = (
        pick(&ra, opts.phase, a_path)?,
        pick(&rb, opts.phase, b_path)?,
    );
    let (la, lb) = (&opts.labels.0, &opts.labels.1);
    let mut o = String::new();
    let _ = writeln!(o, "| metric | {la} | {lb} | {lb} vs {la} |");
    let _ = writeln!(o, "|---|---:|---:|---:|");
    // A figure neither run has gets the reason in its row, not a blank.
    let absent = |name: &str| match name {
        "MFU" => Some(mfu_absent(&ra).or_else(|| mfu_absent(&rb))?),
        "tokens per joule" | "average power" => {
            Some(energy_absent(&ra, a).or_else(|| energy_absent(&rb, b))?)
        }
        _ => None,
    };
    for row in ROWS {
        let (va, vb) = ((row.value)(a), (row.value)(b));
        let rel = match (va, vb) {
            (None, None) => absent(row.name).map_or("-".into(), |why| format!("absent: {why}")),
            (Some(x), Some(y)) => relative(x, y, row.higher_better),
            _ => "-".into(),
        };
        let show = |v: Option<f64>| v.map(row.show).unwrap_or_else(|| "-".into());
        let _ = writeln!(o, "| {} | {} | {} | {rel} |", row.name, show(va), show(vb));
    }
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "Phases compared: {la} `{}` ({:.0} s), {lb} `{}` ({:.0} s).",
        a.name, a.duration_s, b.name, b.duration_s
    );
    for (label, p) in [(la, a), (lb, b)] {
        if p.tokens_approximate {
            let _ = writeln!(
                o,
                "{label}: approximate: counted chunks (the server sent no usage and no --tokenizer was given); its token figures count chunks as tokens."
            );
        }
    }
    cost_section(&mut o, (&ra, a), (&rb, b), opts);
    sweep_section(&mut o, &ra, &rb, opts)?;
    Ok(o)
}

/// Two sweeps' curves side by side, load by load, with each run's knees;
/// and, with `--plots`, the curves overlaid.
fn sweep_section(
    o: &mut String,
    ra: &Results,
    rb: &Results,
    opts: &Options,
) -> Result<(), UsageError> {
    let (Some(sa), Some(sb)) = (&ra.sweep, &rb.sweep) else {
        if opts.plots.is_some() {
            let _ = writeln!(o, "\n(No sweep overlay: both runs need a --sweep.)");
        }
        return Ok(());
    };
    if sa.kind != sb.kind {
        let _ = writeln!(
            o,
            "\n(No sweep curves: one sweep is of concurrencies, the other of rates; their loads do not compare.)"
        );
        return Ok(());
    }
    let (la, lb) = (&opts.labels.0, &opts.labels.1);
    let mut loads: Vec<f64> = sa.steps.iter().chain(&sb.steps).map(|s| s.load).collect();
    loads.sort_by(f64::total_cmp);
    loads.dedup();
    let _ = writeln!(o, "\n**Sweep curves**\n");
    let _ = writeln!(
        o,
        "| load | {la} tok/s | {lb} tok/s | {la} P99 TTFT | {lb} P99 TTFT | {la} P99 E2E | {lb} P99 E2E |"
    );
    let _ = writeln!(o, "|---:|---:|---:|---:|---:|---:|---:|");
    let at =
        |s: &crate::sweep::SweepResult, l: f64| s.steps.iter().find(|st| st.load == l).cloned();
    let fmt = |v: Option<f64>, unit: &str| v.map_or("-".to_string(), |v| format!("{v:.1}{unit}"));
    for l in &loads {
        let (a, b) = (at(sa, *l), at(sb, *l));
        let _ = writeln!(
            o,
            "| {l} | {} | {} | {} | {} | {} | {} |",
            fmt(a.as_ref().map(|s| s.output_tokens_per_s), ""),
            fmt(b.as_ref().map(|s| s.output_tokens_per_s), ""),
            fmt(a.as_ref().and_then(|s| s.p99_ttft_ms), " ms"),
            fmt(b.as_ref().and_then(|s| s.p99_ttft_ms), " ms"),
            fmt(a.as_ref().and_then(|s| s.p99_e2e_ms), " ms"),
            fmt(b.as_ref().and_then(|s| s.p99_e2e_ms), " ms"),
        );
    }
    for (label, s) in [(la, sa), (lb, sb)] {
        let k = &s.knee;
        let _ = writeln!(
            o,
            "\n{label}: knee within the SLO {}; throughput stops rising at {}; most {:.1} tok/s at {}.",
            k.slo_load.map_or("-".into(), |l| l.to_string()),
            k.saturation_load
                .map_or("- (still rising)".into(), |l| l.to_string()),
            k.max_output_tokens_per_s,
            k.max_throughput_load
        );
    }
    if let Some(dir) = opts.plots {
        let files = crate::plot::sweep_compare(dir, (la, sa), (lb, sb)).map_err(|e| {
            UsageError::new(
                format!("cannot draw the sweep overlay into {}: {e}", dir.display()),
                "give --plots an existing, writable directory",
            )
        })?;
        for f in files {
            let _ = writeln!(o, "wrote {}", f.display());
        }
    }
    Ok(())
}

/// One row of the comparison: a figure of a phase, how it is shown, and
/// which way is better.
struct Row {
    name: &'static str,
    value: fn(&PhaseResult) -> Option<f64>,
    show: fn(f64) -> String,
    higher_better: bool,
}

fn ms(v: f64) -> String {
    format!("{:.1} ms", v * 1e3)
}

fn p99(p: &PhaseResult, k: &str) -> Option<f64> {
    p.latency.get(k).map(|l| l.p99)
}

const ROWS: &[Row] = &[
    Row {
        name: "output tokens/s",
        value: |p| Some(p.throughput.output_tokens_per_s),
        show: |v| format!("{v:.1}"),
        higher_better: true,
    },
    Row {
        name: "requests/s",
        value: |p| Some(p.throughput.requests_per_s),
        show: |v| format!("{v:.2}"),
        higher_better: true,
    },
    Row {
        name: "MFU",
        value: |p| p.mfu,
        show: |v| format!("{:.2} %", v * 100.0),
        higher_better: true,
    },
    Row {
        name: "tokens per joule",
        value: |p| p.tokens_per_joule,
        show: |v| format!("{v:.3}"),
        higher_better: true,
    },
    Row {
        name: "average power",
        value: |p| p.telemetry.as_ref().and_then(|t| t.avg_power_w),
        show: |v| format!("{v:.1} W"),
        higher_better: false,
    },
    Row {
        name: "P99 TTFT",
        value: |p| p99(p, "ttft"),
        show: ms,
        higher_better: false,
    },
    Row {
        name: "P99 inter-token latency (per token)",
        value: |p| p99(p, "itl_token"),
        show: ms,
        higher_better: false,
    },
    Row {
        name: "P99 inter-token latency (per chunk)",
        value: |p| p99(p, "itl_chunk"),
        show: ms,
        higher_better: false,
    },
    Row {
        name: "P99 end-to-end latency",
        value: |p| p99(p, "e2e"),
        show: ms,
        higher_better: false,
    },
    Row {
        name: "failed requests",
        value: |p| Some(p.failed as f64),
        show: |v| format!("{v:.0}"),
        higher_better: false,
    },
];

/// The second run against the first: "same", or the change in percent,
/// better or worse, and the ratio.
fn relative(x: f64, y: f64, higher_better: bool) -> String {
    if x == 0.0 {
        return "-".into();
    }
    let change = (y / x - 1.0) * 100.0;
    let better = if (change > 0.0) == higher_better {
        "better"
    } else {
        "worse"
    };
    if change.abs() < 0.05 {
        "same".to_string()
    } else {
        format!("{change:+.1} % ({better}, {:.2}×)", y / x)
    }
}

/// What each run's throughput costs a day at the GPU-hour price, with the
/// formula and its numbers.
fn cost_section(
    o: &mut String,
    (ra, a): (&Results, &PhaseResult),
    (rb, b): (&Results, &PhaseResult),
    opts: &Options,
) {
    let (la, lb) = (&opts.labels.0, &opts.labels.1);
    let usd = opts
        .gpu_hour_usd
        .or(ra.model.as_ref().and_then(|m| m.gpu_hour_usd));
    let gpus = |r: &Results| r.model.as_ref().map(|m| m.gpus).unwrap_or(1);
    if let Some(usd) = usd {
        let (ta, tb) = (
            a.throughput.output_tokens_per_s,
            b.throughput.output_tokens_per_s,
        );
        if let (Some(ca), Some(cb)) = (
            flops::cost_per_million(ta, gpus(ra), usd),
            flops::cost_per_million(tb, gpus(rb), usd),
        ) {
            let millions = opts.daily_tokens / 1e6;
            let (da, db) = (ca * millions, cb * millions);
            let _ = writeln!(o);
            let _ = writeln!(
                o,
                "Cost at ${usd:.2} per GPU-hour and {} output tokens a day:",
                human(opts.daily_tokens)
            );
            let _ = writeln!(o);
            let _ = writeln!(o, "| | {la} | {lb} |");
            let _ = writeln!(o, "|---|---:|---:|");
            let _ = writeln!(o, "| $ per million tokens | {ca:.4} | {cb:.4} |");
            let _ = writeln!(o, "| $ per day | {da:.2} | {db:.2} |");
            let _ = writeln!(o);
            let _ = writeln!(
                o,
                "{lb} costs ${:.2} a day {} than {la} (${:.0} a year).",
                (db - da).abs(),
                if db < da { "less" } else { "more" },
                (db - da).abs() * 365.0
            );
            let _ = writeln!(o);
            let _ = writeln!(
                o,
                "Formula: $/M tokens = $/GPU-hour × GPUs ÷ (output tokens/s × 3600) × 10⁶; $/day = $/M tokens × daily tokens ÷ 10⁶. \
                 {la}: {usd} × {} ÷ ({ta:.1} × 3600) × 10⁶ = {ca:.4}; {lb}: {usd} × {} ÷ ({tb:.1} × 3600) × 10⁶ = {cb:.4}.",
                gpus(ra),
                gpus(rb)
            );
        }
    } else {
        let _ = writeln!(o);
        let _ = writeln!(o, "(No cost: give --gpu-hour-usd.)");
    }
}

fn human(n: f64) -> String {
    if n >= 1e9 {
        format!("{:.1} billion", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.1} million", n / 1e6)
    } else {
        format!("{n:.0}")
    }
}
