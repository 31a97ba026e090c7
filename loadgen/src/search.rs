//! `--find-max-goodput`: the Poisson rate at which the most output tokens
//! arrive from requests within every SLO.
//!
//! Each probe is a whole run of its own (one Poisson phase, `search`, its
//! files in `OUT/probe-NN-rRATE/`), so every figure of a probe is what a
//! plain run at that rate reports. The search first doubles the rate from
//! `--search-start` until goodput stops rising (it brackets the maximum),
//! then narrows the bracket around the best rate (golden-section), never
//! running more than `--search-max-probes` probes. Invariant: the answer
//! is a rate that was measured, with its figures, never an interpolation.

use std::{fmt::Write as _, path::PathBuf};

use serde::Serialize;

use crate::{app, cli::RunArgs, error::UsageError, plan::parse_phase};

/// The bracket is narrow enough at this width over its middle.
const NARROW: f64 = 0.10;

#[derive(Debug, Clone, Serialize)]
struct Probe {
    rate: f64,
    achieved_rate: Option<f64>,
    output_tokens_per_s: f64,
    goodput_tokens_per_s: f64,
    goodput_fraction: f64,
    failed: u64,
    dir: String,
    /// It ran its whole length (false: stopped by a signal).
    complete: bool,
}

#[derive(Debug, Serialize)]
struct Search {
    slo: String,
    step_s: f64,
    probes: Vec<Probe>,
    best: Option<Probe>,
    /// Why the search stopped.
    stopped: String,
}

pub(crate) fn run(args: &RunArgs) -> Result<i32, UsageError> {
    let base = args.plan()?;
    let slo = &base.slo;
    let slo_text: Vec<String> = [
        ("TTFT", slo.ttft_ms),
        ("TPOT", slo.tpot_ms),
        ("E2E", slo.e2e_ms),
    ]
    .into_iter()
    .filter_map(|(n, v)| v.map(|v| format!("{n} ≤ {v} ms")))
    .collect();
    if slo_text.is_empty() {
        return Err(UsageError::new(
            "--find-max-goodput needs an SLO: without one goodput is throughput",
            "give --slo-ttft-ms, --slo-tpot-ms or --slo-e2e-ms",
        ));
    }
    if !(args.search_start > 0.0 && args.search_start.is_finite()) {
        return Err(UsageError::new(
            format!("--search-start {} is not a rate", args.search_start),
            "give requests per second above 0, e.g. --search-start 1",
        ));
    }
    if !(3..=32).contains(&args.search_max_probes) {
        return Err(UsageError::new(
            format!(
                "--search-max-probes {} is out of range",
                args.search_max_probes
            ),
            "give 3 to 32 probes",
        ));
    }
    // The step's length, checked by the phase parser.
    let step_s = parse_phase(&format!("search=silence:{}", args.search_step))
        .map_err(|e| {
            UsageError::new(
                format!("--search-step {:?}: {e}", args.search_step),
                "give each probe's length, e.g. --search-step 30s",
            )
        })?
        .duration_s;
    let out = args.out.clone().unwrap_or_else(|| {
        PathBuf::from("loadgen-results").join(format!("search-{:08x}", rand::random::<u32>()))
    });
    let mut search = Search {
        slo: slo_text.join(", "),
        step_s: step_s * base.time_scale,
        probes: Vec::new(),
        best: None,
        stopped: String::new(),
    };
    let mut code = app::EXIT_OK;
    let mut probe = |rate: f64, search: &mut Search| -> Result<Option<f64>, UsageError> {
        let n = search.probes.len() + 1;
        let dir = out.join(format!("probe-{n:02}-r{}", short(rate)));
        let mut plan = base.clone();
        plan.phases = vec![parse_phase(&format!("search=poisson:{rate}:{step_s}s"))?];
        plan.sweep = None;
        if !args.quiet {
            eprintln!(
                "gapscope-loadgen: probe {n}: Poisson at {} req/s for {step_s} s",
                short(rate)
            );
        }
        let (c, results) = app::run_plan(args, &plan, Some(&dir))?;
        code = code.max(c);
        let Some(p) = results.phases.into_iter().find(|p| p.name == "search") else {
            return Ok(None);
        };
        let complete = c < app::EXIT_SIGNAL_BASE;
        search.probes.push(Probe {
            complete,
            rate,
            achieved_rate: p.achieved_rate,
            output_tokens_per_s: p.throughput.output_tokens_per_s,
            goodput_tokens_per_s: p.goodput.output_tokens_per_s,
            goodput_fraction: p.goodput.fraction,
            failed: p.failed,
            dir: dir.display().to_string(),
        });
        // A signal stops the search with what it has.
        Ok(complete.then_some(p.goodput.output_tokens_per_s))
    };
    // A probe that cannot run (a rate past what a phase allows, an out
    // directory that cannot be written) ends the search; what it found
    // is still written.
    let stop_on = |r: Result<Option<f64>, UsageError>, search: &mut Search| match r {
        Ok(Some(g)) => Some(g),
        Ok(None) => {
            search.stopped = "stopped by a signal".into();
            None
        }
        Err(e) => {
            search.stopped = format!("a probe could not run: {e}");
            None
        }
    };
    let max = args.search_max_probes as usize;
    // 1. Double until goodput stops rising: the maximum is in [lo, hi].
    let mut rate = args.search_start;
    let (mut lo, mut hi) = (0.0, f64::INFINITY);
    let mut best = (0.0, -1.0); // (rate, goodput)
    let mut prev_rate = 0.0;
    loop {
        if search.probes.len() >= max {
            search.stopped = format!(
                "{max} probes, goodput still rising: raise --search-max-probes or --search-start"
            );
            break;
        }
        let r = probe(rate, &mut search);
        let Some(g) = stop_on(r, &mut search) else {
            break;
        };
        if g > best.1 {
            lo = prev_rate;
            best = (rate, g);
            prev_rate = rate;
            rate *= 2.0;
        } else {
            hi = rate;
            break;
        }
    }
    // 2. Golden-section search inside the bracket, around the best rate.
    if hi.is_finite() && search.stopped.is_empty() {
        let golden = 0.381_966;
        while search.probes.len() < max {
            let (left, right) = (best.0 - lo, hi - best.0);
            if (hi - lo) / best.0 <= NARROW {
                search.stopped = format!(
                    "the bracket is within {:.0} % of the best rate",
                    NARROW * 100.0
                );
                break;
            }
            // Probe inside the wider side.
            let next = if right >= left {
                best.0 + golden * right
            } else {
                best.0 - golden * left
            };
            let r = probe(next, &mut search);
            let Some(g) = stop_on(r, &mut search) else {
                break;
            };
            if g > best.1 {
                if next > best.0 {
                    lo = best.0;
                } else {
                    hi = best.0;
                }
                best = (next, g);
            } else if next > best.0 {
                hi = next;
            } else {
                lo = next;
            }
        }
        if search.stopped.is_empty() {
            search.stopped = format!("{max} probes (--search-max-probes)");
        }
    }
    // The best whole probe with any goodput; the first of equals.
    search.best = search
        .probes
        .iter()
        .filter(|p| p.complete && p.goodput_tokens_per_s > 0.0)
        .fold(None::<&Probe>, |b, p| match b {
            Some(b) if b.goodput_tokens_per_s >= p.goodput_tokens_per_s => Some(b),
            _ => Some(p),
        })
        .cloned();
    let path = out.join("search.json");
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&search).unwrap_or_default(),
    )
    .map_err(|e| {
        UsageError::new(
            format!("cannot write {}: {e}", path.display()),
            "give --out a writable directory",
        )
    })?;
    app::out_text(&render(&search, &path));
    Ok(code)
}

fn short(v: f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn render(s: &Search, path: &std::path::Path) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "goodput search ({}; {} s per probe):", s.slo, s.step_s);
    let _ = writeln!(
        o,
        "{:>6} {:>10} {:>10} {:>10} {:>12} {:>9} {:>7}",
        "probe", "rate", "sent/s", "tok/s", "goodput tok/s", "in SLO", "failed"
    );
    for (i, p) in s.probes.iter().enumerate() {
        let _ = writeln!(
            o,
            "{:>6} {:>10} {:>10} {:>10.1} {:>12.1} {:>8.0}% {:>7}",
            i + 1,
            short(p.rate),
            p.achieved_rate.map_or("-".into(), |r| format!("{r:.2}")),
            p.output_tokens_per_s,
            p.goodput_tokens_per_s,
            p.goodput_fraction * 100.0,
            p.failed
        );
    }
    match &s.best {
        Some(b) => {
            let _ = writeln!(
                o,
                "most goodput: {:.1} tok/s at {} req/s ({:.0} % of requests within the SLO); {}",
                b.goodput_tokens_per_s,
                short(b.rate),
                b.goodput_fraction * 100.0,
                s.stopped
            );
        }
        None if s.probes.iter().any(|p| p.complete) => {
            let _ = writeln!(
                o,
                "no rate met the SLO: give a lower --search-start (or check the errors); {}",
                s.stopped
            );
        }
        None => {
            let _ = writeln!(o, "no probe finished; {}", s.stopped);
        }
    }
    let _ = writeln!(o, "wrote {}", path.display());
    o
}
