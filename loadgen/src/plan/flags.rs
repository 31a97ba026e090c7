//! The flags that describe phases and durations on the command line
//! (`--phase`, `--duration`, …), parsed into the plan's types.

use super::{validate::check_phase, *};

/// Parses a duration flag: `20s`, `500ms`, `2m`, `1h` or plain seconds.
pub(crate) fn parse_duration(text: &str) -> Result<f64, String> {
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
pub(crate) fn parse_phase(text: &str) -> Result<Phase, UsageError> {
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

/// Parses `--sweep`: `closed:1,2,4,8` or `closed:1..64` (concurrencies),
/// `poisson:0.5,1,2` or `poisson:1..32` (requests per second); a range
/// steps geometrically, ×2 unless `:xF` follows (`poisson:1..32:x1.5`).
/// Each load becomes a phase of `step` (`c4`, `r2.5`), with a silence of
/// `gap` between steps (0: none) in which replies of the step before
/// finish, so they weigh less on the next; an overloaded open-loop step's
/// backlog can outlast it (then its requests count where they arrive).
pub(crate) fn parse_sweep(
    text: &str,
    step: &str,
    gap: &str,
) -> Result<(Sweep, Vec<Phase>), UsageError> {
    let fix = "write --sweep closed:1,2,4,8,16 or closed:1..64, poisson:1,2,4 or poisson:1..32 (a range doubles each step; :x1.5 sets the factor)";
    let bad = |why: &str| UsageError::new(format!("--sweep {text:?}: {why}"), fix);
    let mut parts = text.split(':');
    let kind = match parts.next() {
        Some("closed") => PhaseKind::ClosedLoop,
        Some("poisson") => PhaseKind::OpenLoop,
        _ => return Err(bad("it starts with closed: or poisson:")),
    };
    let loads_text = parts.next().ok_or_else(|| bad("no loads"))?;
    let factor = match parts.next() {
        None => 2.0,
        Some(f) => f
            .strip_prefix('x')
            .and_then(|f| f.parse::<f64>().ok())
            .filter(|f| *f > 1.0 && f.is_finite())
            .ok_or_else(|| bad("the factor is x and a number above 1, e.g. x1.5"))?,
    };
    if parts.next().is_some() {
        return Err(bad("too many ':' parts"));
    }
    let num = |s: &str| {
        s.trim()
            .parse::<f64>()
            .ok()
            .filter(|v| *v > 0.0 && v.is_finite())
            .ok_or_else(|| bad(&format!("{s:?} is not a positive number")))
    };
    let mut loads = match loads_text.split_once("..") {
        Some((a, b)) => {
            let (mut v, end) = (num(a)?, num(b)?);
            if end < v {
                return Err(bad("a range goes up: 1..64"));
            }
            let mut out = Vec::new();
            while v <= end * (1.0 + 1e-9) && out.len() <= 64 {
                out.push(v);
                v *= factor;
            }
            if out.last().is_some_and(|l| (l - end).abs() > 1e-9 * end) {
                out.push(end);
            }
            out
        }
        None => loads_text
            .split(',')
            .map(num)
            .collect::<Result<Vec<_>, _>>()?,
    };
    for l in &mut loads {
        *l = if kind == PhaseKind::ClosedLoop {
            l.round().max(1.0)
        } else {
            // Three decimals: r0.3, not r0.30000000000000004.
            ((*l * 1000.0).round() / 1000.0).max(0.001)
        };
    }
    loads.dedup();
    if loads.windows(2).any(|w| w[1] <= w[0]) {
        return Err(bad("the loads must rise"));
    }
    if loads.len() < 2 || loads.len() > 64 {
        return Err(bad(&format!("{} steps: give 2 to 64", loads.len())));
    }
    let step_s = parse_duration(step).map_err(|e| {
        UsageError::new(
            format!("--sweep-step: {e}"),
            "give each step's length, e.g. --sweep-step 30s",
        )
    })?;
    let gap_s = match gap.trim() {
        "0" | "0s" | "0ms" => 0.0,
        g => parse_duration(g).map_err(|e| {
            UsageError::new(
                format!("--sweep-gap: {e}"),
                "give the silence between steps, e.g. --sweep-gap 2s (or 0)",
            )
        })?,
    };
    let mut phases = Vec::new();
    let mut names = Vec::new();
    for (i, load) in loads.iter().enumerate() {
        if i > 0 && gap_s > 0.0 {
            phases.push(parse_phase(&format!("gap{i}=silence:{gap_s}s"))?);
        }
        let (name, spec) = match kind {
            PhaseKind::ClosedLoop => (format!("c{load}"), format!("closed:{load}:{step_s}s")),
            _ => (format!("r{load}"), format!("poisson:{load}:{step_s}s")),
        };
        phases.push(parse_phase(&format!("{name}={spec}"))?);
        names.push(name);
    }
    let sweep = Sweep {
        kind,
        loads,
        phases: names,
        step_s,
        gap_s,
    };
    Ok((sweep, phases))
}
