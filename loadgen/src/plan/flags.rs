//! The flags that describe phases and durations on the command line
//! (`--phase`, `--duration`, …), parsed into the plan's types.

use super::{validate::check_phase, *};

/// Parses a duration flag: `20s`, `500ms`, `2m`, `1h` or plain seconds.
fn parse_duration(text: &str) -> Result<f64, String> {
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
