//! What removing stalls would buy: the `what_if` of the explain report.
//!
//! A stall is a cause, one serialization function
//! (`serialization:json.encode`), or the GIL waits on one holder thread
//! (`gil_wait:4312`, by the thread's id). Every second of idle time attributed to
//! one is time the GPU waited on it with nothing else to run (busy time is
//! never attributed), so each lies on the path to the next launch:
//! removed, the next launch and everything after it start that much
//! earlier. Over busy + idle time W with R of it removable, the step (and
//! token) rate of a service that runs steps back to back rises by
//! R / (W − R). The parts of a cause (its functions, its holders) sum to
//! at most the cause, so naming a cause and one of its parts together
//! counts the part once.

use serde::Serialize;

use crate::explain::{Cause, history::Split};

/// Something `what_if` can remove.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stall {
    Cause(Cause),
    /// One serialization function, by the names its probe reports
    /// (`gapscope_serialization_*{codec, op}`).
    Function {
        codec: String,
        op: String,
    },
    /// The GIL waits while thread `tid` held the GIL.
    GilHolder {
        tid: u32,
    },
}

impl Stall {
    /// As `what_if` names it: `serialization`, `serialization:json.encode`.
    pub fn label(&self) -> String {
        match self {
            Stall::Cause(c) => c.label().to_string(),
            Stall::Function { codec, op } => {
                format!("{}:{codec}.{op}", Cause::Serialization.label())
            }
            Stall::GilHolder { tid } => format!("{}:{tid}", Cause::GilWait.label()),
        }
    }
}

/// What removing one or more stalls would buy.
#[derive(Debug, Clone, Serialize)]
pub struct WhatIf {
    /// The stalls, as `what_if` names them.
    pub causes: Vec<String>,
    /// Idle time the GPU would no longer wait.
    pub recoverable_seconds: f64,
    /// The same per idle gap (about per step of a decode loop), in ms.
    pub recoverable_ms_per_gap: Option<f64>,
    /// The predicted rise of the step rate: 0.25 is 25 % more steps (and
    /// tokens) a second.
    pub predicted_speedup: Option<f64>,
    /// GIL holders named that held the GIL during none of the row's idle
    /// time (or are not among the holders it names): they count nothing.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_holders: Vec<String>,
}

/// `what_if=` / `--what-if`: stalls, comma-separated: cause labels (each a
/// recoverable cause), `serialization:CODEC.OP` or `gil_wait:TID`;
/// Err((problem, fix)).
/// Whether a named function is probed is the report's to say
/// (`unknown_functions`).
pub fn parse(value: &str) -> Result<Vec<Stall>, (String, String)> {
    let stalls: Vec<&str> = Cause::ALL
        .iter()
        .filter(|c| c.recoverable())
        .map(|c| c.label())
        .collect();
    let fix = format!(
        "name causes from: {}; or one serialization function as serialization:CODEC.OP (say serialization:json.encode); or the GIL waits on one thread as gil_wait:TID (a holder the report lists under gil_wait)",
        stalls.join(", ")
    );
    let mut out = Vec::new();
    for label in value.split(',').map(str::trim).filter(|l| !l.is_empty()) {
        let stall = match label.split_once(':') {
            Some((cause, tid)) if cause == Cause::GilWait.label() => match tid.parse::<u32>() {
                Ok(tid) if tid > 0 => Stall::GilHolder { tid },
                _ => {
                    return Err((
                        format!("{label}: a GIL holder is named by its thread id, gil_wait:TID"),
                        fix,
                    ));
                }
            },
            Some((cause, function)) => {
                if cause != Cause::Serialization.label() {
                    return Err((
                        format!(
                            "{label}: only serialization's functions (serialization:CODEC.OP) and the GIL's holders (gil_wait:TID) can be named"
                        ),
                        fix,
                    ));
                }
                match function.rsplit_once('.') {
                    Some((codec, op)) if !codec.is_empty() && !op.is_empty() => Stall::Function {
                        codec: codec.to_string(),
                        op: op.to_string(),
                    },
                    _ => {
                        return Err((
                            format!("{label}: a serialization function is CODEC.OP"),
                            fix,
                        ));
                    }
                }
            }
            None => match Cause::from_label(label) {
                Some(c) if c.recoverable() => Stall::Cause(c),
                Some(_) => {
                    return Err((
                        format!(
                            "{label} is not a stall: removing it would not start the GPU's work earlier"
                        ),
                        fix,
                    ));
                }
                None => return Err((format!("what_if names no cause {label:?}"), fix)),
            },
        };
        if !out.contains(&stall) {
            out.push(stall);
        }
    }
    if out.is_empty() {
        return Err(("what_if names no cause".into(), fix));
    }
    Ok(out)
}

/// The functions among `stalls` that no probe reports (`codecs`: each
/// probe's (codec, op), by index), as `what_if` named them.
pub fn unknown_functions(stalls: &[Stall], codecs: &[(String, String)]) -> Vec<String> {
    stalls
        .iter()
        .filter(|s| match s {
            Stall::Function { codec, op } => !codecs.iter().any(|(c, o)| c == codec && o == op),
            Stall::Cause(_) | Stall::GilHolder { .. } => false,
        })
        .map(Stall::label)
        .collect()
}

/// What removing `stalls` together would buy on a row; `codecs` names
/// each serialization probe (by index).
pub(super) fn what_if(split: &Split, stalls: &[Stall], codecs: &[(String, String)]) -> WhatIf {
    let wall = split.busy_ns + split.idle_total_ns();
    let whole_serialization = stalls.contains(&Stall::Cause(Cause::Serialization));
    let whole_gil = stalls.contains(&Stall::Cause(Cause::GilWait));
    let mut removed = 0u64;
    for s in stalls {
        match s {
            Stall::GilHolder { .. } if whole_gil => {}
            Stall::GilHolder { tid } => {
                removed += split
                    .gil_holders
                    .iter()
                    .filter(|h| h.0 == *tid)
                    .map(|h| h.1)
                    .sum::<u64>();
            }
            Stall::Cause(c) if c.recoverable() => removed += split.idle_ns[c.index()],
            Stall::Cause(_) => {}
            Stall::Function { .. } if whole_serialization => {}
            Stall::Function { codec, op } => {
                removed += codecs
                    .iter()
                    .zip(split.serialization_ns.iter())
                    .filter(|((c, o), _)| c == codec && o == op)
                    .map(|(_, ns)| *ns)
                    .sum::<u64>();
            }
        }
    }
    WhatIf {
        causes: stalls.iter().map(Stall::label).collect(),
        recoverable_seconds: removed as f64 / 1e9,
        recoverable_ms_per_gap: (split.gaps > 0).then(|| removed as f64 / 1e6 / split.gaps as f64),
        predicted_speedup: (wall > removed).then(|| removed as f64 / (wall - removed) as f64),
        not_holders: stalls
            .iter()
            .filter(|s| match s {
                Stall::GilHolder { tid } => !split.gil_holders.iter().any(|h| h.0 == *tid),
                _ => false,
            })
            .map(Stall::label)
            .collect(),
    }
}

/// The `serialization` idle time of a row by function (codec, op), with
/// its nanoseconds, largest first; probes sharing names are summed.
pub(super) fn functions(
    split: &Split,
    codecs: &[(String, String)],
) -> Vec<((String, String), u64)> {
    let mut out: Vec<((String, String), u64)> = Vec::new();
    for (names, ns) in codecs.iter().zip(split.serialization_ns.iter()) {
        if *ns == 0 {
            continue;
        }
        match out.iter_mut().find(|(n, _)| n == names) {
            Some((_, total)) => *total += ns,
            None => out.push((names.clone(), *ns)),
        }
    }
    out.sort_by_key(|f| std::cmp::Reverse(f.1));
    out
}

/// The `gil_wait` idle time of a row by the thread that held the GIL
/// (thread id, ns), largest first; the rest of the cause is unnamed.
pub(super) fn holders(split: &Split) -> Vec<(u32, u64)> {
    let mut out: Vec<(u32, u64)> = split
        .gil_holders
        .iter()
        .copied()
        .filter(|h| h.0 != 0 && h.1 > 0)
        .collect();
    out.sort_by_key(|h| std::cmp::Reverse(h.1));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<(String, String)> {
        [("json", "encode"), ("json", "decode"), ("pickle", "encode")]
            .iter()
            .map(|(c, o)| (c.to_string(), o.to_string()))
            .collect()
    }

    #[test]
    fn functions_parse_and_sum_once_with_their_cause() {
        let stalls = parse("serialization:json.encode, syscall_sleep").unwrap();
        assert_eq!(
            stalls,
            [
                Stall::Function {
                    codec: "json".into(),
                    op: "encode".into()
                },
                Stall::Cause(Cause::SyscallSleep)
            ]
        );
        let mut split = Split {
            busy_ns: 60,
            ..Split::default()
        };
        split.idle_ns[Cause::Serialization.index()] = 30;
        split.serialization_ns[0] = 20;
        split.serialization_ns[2] = 10;
        split.idle_ns[Cause::SyscallSleep.index()] = 10;
        let codecs = names();
        let w = what_if(&split, &stalls, &codecs);
        assert_eq!(w.causes, ["serialization:json.encode", "syscall_sleep"]);
        // 30 of 100 removable: 30 / 70.
        assert!((w.predicted_speedup.unwrap() - 30.0 / 70.0).abs() < 1e-12);
        let both = parse("serialization,serialization:pickle.encode").unwrap();
        assert_eq!(what_if(&split, &both, &codecs).recoverable_seconds, 30e-9);
        assert_eq!(
            functions(&split, &codecs),
            [
                (("json".into(), "encode".into()), 20),
                (("pickle".into(), "encode".into()), 10)
            ]
        );
        assert_eq!(
            unknown_functions(&parse("serialization:orjson.encode").unwrap(), &codecs),
            ["serialization:orjson.encode"]
        );
    }

    #[test]
    fn gil_holders_parse_and_sum_once_with_their_cause() {
        let stalls = parse("gil_wait:4312").unwrap();
        assert_eq!(stalls, [Stall::GilHolder { tid: 4312 }]);
        assert_eq!(stalls[0].label(), "gil_wait:4312");
        let mut split = Split {
            busy_ns: 50,
            ..Split::default()
        };
        split.idle_ns[Cause::GilWait.index()] = 50;
        split.gil_holders[0] = (99, 10);
        split.gil_holders[1] = (4312, 30);
        let w = what_if(&split, &stalls, &[]);
        assert_eq!(w.recoverable_seconds, 30e-9);
        assert!((w.predicted_speedup.unwrap() - 30.0 / 70.0).abs() < 1e-12);
        let both = parse("gil_wait,gil_wait:4312").unwrap();
        assert_eq!(what_if(&split, &both, &[]).recoverable_seconds, 50e-9);
        // A thread that held nothing in the row buys nothing, and is said.
        let absent = parse("gil_wait:7,gil_wait:4312").unwrap();
        let w = what_if(&split, &absent, &[]);
        assert_eq!(w.recoverable_seconds, 30e-9);
        assert_eq!(w.not_holders, ["gil_wait:7"]);
        assert_eq!(holders(&split), [(4312, 30), (99, 10)]);
    }

    #[test]
    fn bad_names_say_what_is_wrong() {
        for (bad, says) in [
            ("gil_wait:", "by its thread id"),
            ("gil_wait:0", "by its thread id"),
            ("gil_wait:main", "by its thread id"),
            ("syscall_sleep:x.y", "only serialization's functions"),
            ("serialization:json", "CODEC.OP"),
            ("serialization:.encode", "CODEC.OP"),
            ("no_work", "not a stall"),
            ("sleepy", "names no cause"),
            (" , ", "names no cause"),
        ] {
            let (problem, fix) = parse(bad).unwrap_err();
            assert!(problem.contains(says), "{bad}: {problem}");
            assert!(fix.contains("serialization:json.encode"), "{fix}");
        }
    }
}
