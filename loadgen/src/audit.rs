//! The self-audit: figures that must agree with each other, checked and
//! printed with every result (and `gapscope-loadgen audit` for figures
//! someone else published).
//!
//! Every check compares figures that were measured (or published)
//! independently; none can pass by construction.
//!
//! * Published figures (`audit --claim`): MFU against the throughput and
//!   the model; MFU / throughput the same in every claim; tokens per joule
//!   × average power = token throughput. A run computes its own MFU and
//!   tokens per joule from its throughput, so these are not run on it.
//! * The energy counter against the power gauge: two readings of the GPU,
//!   compared over each phase when both moved.
//! * Little's law in a closed loop: requests in flight = completion rate ×
//!   mean latency. Separately, a warning when that is well under the
//!   configured concurrency (the client, not the server, set the pace).

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pass,
    Fail,
    /// Not an inconsistency, but the figures mean less than they seem (a
    /// closed loop the client could not keep full).
    Warn,
    Skipped,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Check {
    pub check: String,
    pub phase: Option<String>,
    pub status: Status,
    pub detail: String,
}

impl Check {
    fn new(check: &str, phase: Option<&str>, ok: bool, detail: String) -> Self {
        Self {
            check: check.into(),
            phase: phase.map(str::to_string),
            status: if ok { Status::Pass } else { Status::Fail },
            detail,
        }
    }

    fn skipped(check: &str, phase: Option<&str>, why: &str) -> Self {
        Self {
            check: check.into(),
            phase: phase.map(str::to_string),
            status: Status::Skipped,
            detail: why.into(),
        }
    }
}

/// One line: the check, PASS/FAIL/SKIPPED, the phase and the figures.
impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let status = match self.status {
            Status::Pass => "PASS",
            Status::Fail => "FAIL",
            Status::Warn => "WARN",
            Status::Skipped => "SKIPPED",
        };
        let phase = self
            .phase
            .as_deref()
            .map(|p| format!("[{p}] "))
            .unwrap_or_default();
        write!(f, "{:<28} {status:<8} {phase}{}", self.check, self.detail)
    }
}

/// A phase's figures as the audit sees them (measured or claimed).
#[derive(Debug, Clone, Default)]
pub(crate) struct Figures {
    pub phase: String,
    pub tokens_per_s: f64,
    pub mfu: Option<f64>,
    /// MFU computed from the throughput and the model, to compare a
    /// claimed MFU with.
    pub mfu_expected: Option<f64>,
    pub tokens_per_joule: Option<f64>,
    pub avg_power_w: Option<f64>,
    /// Closed loop: configured concurrency, measured mean in flight,
    /// completions per second and mean latency (s).
    pub concurrency: Option<usize>,
    pub avg_in_flight: Option<f64>,
    pub completions_per_s: Option<f64>,
    pub mean_e2e_s: Option<f64>,
    /// The phase's length (s): a window's edges cut requests in two.
    pub window_s: Option<f64>,
    /// The longest latency of a request in flight in the window (s), when
    /// measured: how far a request cut by the window's end can reach.
    pub longest_e2e_s: Option<f64>,
    /// The window's energy from the counter and from integrated power,
    /// and how often the counter moved in it.
    pub energy_counter_j: Option<f64>,
    pub energy_power_j: Option<f64>,
    pub counter_updates: usize,
    /// The client's CPU over its worker threads in the phase, and how many
    /// threads (a run's own figures only).
    pub client: Option<(f64, usize)>,
    /// Conversations with a think time: a closed loop's users are idle
    /// between turns, so it is not meant to be saturated.
    pub users_think: bool,
}

/// Above this share of its threads' CPU the client may set the pace.
const CLIENT_BUSY: f64 = 0.8;

/// The counter and integrated power agree within this share.
const ENERGY_TOLERANCE: f64 = 0.15;
/// Fewer moves of the counter than this in a window: too coarse to judge.
const MIN_COUNTER_UPDATES: usize = 3;

/// Relative difference of `a` from `b`.
fn off(a: f64, b: f64) -> f64 {
    if b == 0.0 {
        if a == 0.0 { 0.0 } else { f64::INFINITY }
    } else {
        (a - b).abs() / b.abs()
    }
}

/// Every check over every phase's figures.
pub(crate) fn audit(phases: &[Figures]) -> Vec<Check> {
    let mut out = mfu_checks(phases);
    for f in phases {
        energy_checks(&mut out, f);
        closed_loop_checks(&mut out, f);
        client_check(&mut out, f);
    }
    out
}

/// Whether the client had CPU to spare: a load generator at its threads'
/// limit measures itself (a warning, as the figures may still be right).
fn client_check(out: &mut Vec<Check>, f: &Figures) {
    let Some((share, threads)) = f.client else {
        return;
    };
    let busy = share >= CLIENT_BUSY;
    out.push(Check {
        check: "client_not_the_bottleneck".into(),
        phase: Some(f.phase.clone()),
        status: if busy { Status::Warn } else { Status::Pass },
        detail: format!(
            "the client used {:.0} % of its {threads} thread(s)' CPU{}",
            share * 100.0,
            if busy {
                ": it, not the server, may have set the pace; give --threads more or a less busy machine"
            } else {
                ""
            }
        ),
    });
}

/// MFU against the model's FLOPs for the claimed throughput, and MFU per
/// token the same in every phase.
fn mfu_checks(phases: &[Figures]) -> Vec<Check> {
    let mut out = Vec::new();
    for f in phases {
        if let (Some(claimed), Some(expected)) = (f.mfu, f.mfu_expected) {
            out.push(Check::new(
                "mfu_matches_throughput",
                Some(&f.phase),
                off(claimed, expected) <= 0.05,
                format!(
                    "{:.0} tok/s is {:.2} % MFU for this model and GPU; the MFU given is {:.2} %",
                    f.tokens_per_s,
                    expected * 100.0,
                    claimed * 100.0
                ),
            ));
        }
    }
    // MFU / throughput is the same in every phase.
    let with_mfu: Vec<&Figures> = phases
        .iter()
        .filter(|f| f.mfu.is_some_and(|m| m > 0.0) && f.tokens_per_s > 0.0)
        .collect();
    if with_mfu.len() >= 2 {
        let base = with_mfu[0];
        let per_token = |f: &Figures| f.mfu.unwrap_or(0.0) / f.tokens_per_s;
        for f in &with_mfu[1..] {
            let ratio = per_token(f) / per_token(base);
            out.push(Check::new(
                "mfu_scales_with_throughput",
                Some(&f.phase),
                (ratio - 1.0).abs() <= 0.10,
                format!(
                    "throughput {:.0} vs {:.0} tok/s ({:.2}×) but MFU {:.2} % vs {:.2} % ({:.2}×)",
                    f.tokens_per_s,
                    base.tokens_per_s,
                    f.tokens_per_s / base.tokens_per_s,
                    f.mfu.unwrap_or(0.0) * 100.0,
                    base.mfu.unwrap_or(0.0) * 100.0,
                    f.mfu.unwrap_or(0.0) / base.mfu.unwrap_or(1.0)
                ),
            ));
        }
    } else if phases.iter().any(|f| f.mfu.is_some()) {
        out.push(Check::skipped(
            "mfu_scales_with_throughput",
            None,
            "fewer than two phases with an MFU",
        ));
    }
    out
}

/// Tokens per joule against power and throughput; the energy counter
/// against the integrated power gauge.
fn energy_checks(out: &mut Vec<Check>, f: &Figures) {
    match (f.tokens_per_joule, f.avg_power_w) {
        (Some(tpj), Some(p)) if f.tokens_per_s > 0.0 => out.push(Check::new(
            "energy_matches_throughput",
            Some(&f.phase),
            off(tpj * p, f.tokens_per_s) <= 0.05,
            format!(
                "{tpj:.3} tok/J × {p:.1} W = {:.1} tok/s; measured {:.1} tok/s",
                tpj * p,
                f.tokens_per_s
            ),
        )),
        (Some(_), None) | (None, Some(_)) => out.push(Check::skipped(
            "energy_matches_throughput",
            Some(&f.phase),
            "needs both tokens per joule and power",
        )),
        _ => {}
    }
    match (f.energy_counter_j, f.energy_power_j) {
        (Some(counter), Some(power)) if f.counter_updates >= MIN_COUNTER_UPDATES => {
            out.push(Check::new(
                "energy_counter_matches_power",
                Some(&f.phase),
                off(counter, power) <= ENERGY_TOLERANCE,
                format!(
                    "energy counter {counter:.1} J; power gauge integrated {power:.1} J ({:+.1} %, tolerance {:.0} %)",
                    (counter / power - 1.0) * 100.0,
                    ENERGY_TOLERANCE * 100.0
                ),
            ));
        }
        (None, None) => {}
        _ => out.push(Check::skipped(
            "energy_counter_matches_power",
            Some(&f.phase),
            &format!(
                "needs the energy counter (moving at least {MIN_COUNTER_UPDATES} times in the phase; it moved {}) and the power gauge",
                f.counter_updates
            ),
        )),
    }
}

/// Little's law and saturation of a closed loop.
fn closed_loop_checks(out: &mut Vec<Check>, f: &Figures) {
    if let (Some(c), Some(inflight), Some(rate), Some(w)) = (
        f.concurrency,
        f.avg_in_flight,
        f.completions_per_s,
        f.mean_e2e_s,
    ) {
        let little = rate * w;
        // Little's law holds over a long window; the requests still in
        // flight when a window ends count in flight but not completed. Up
        // to `c` of them are cut, each by at most the longest latency
        // measured (a run's own figures), else about a mean latency (a
        // claim's); that share of the window moves the product.
        let edge = f
            .window_s
            .filter(|t| *t > 0.0)
            .map_or(0.0, |t| match f.longest_e2e_s {
                Some(longest) => c as f64 * longest / (t * inflight.max(1e-9)),
                None => w / t,
            });
        let tolerance = 0.10 + edge;
        out.push(Check::new(
            "littles_law",
            Some(&f.phase),
            off(little, inflight) <= tolerance,
            format!(
                "completion rate {rate:.2}/s × mean latency {w:.3} s = {little:.2} in flight; measured {inflight:.2}; configured {c}; tolerance {:.0} %",
                tolerance * 100.0
            ),
        ));
        if f.users_think {
            out.push(Check::skipped(
                "closed_loop_saturated",
                Some(&f.phase),
                "the users think between turns (--think-time): the loop is not meant to be saturated",
            ));
            return;
        }
        let full = inflight >= 0.9 * c as f64;
        out.push(Check {
            check: "closed_loop_saturated".into(),
            phase: Some(f.phase.clone()),
            status: if full { Status::Pass } else { Status::Warn },
            detail: format!(
                "{inflight:.2} of {c} requests in flight on average{}",
                if full {
                    ""
                } else {
                    ": replies are short next to the client's turnaround, or the client is the bottleneck"
                }
            ),
        });
    }
}

/// Whether every check passed or was skipped.
pub(crate) fn all_passed(checks: &[Check]) -> bool {
    checks.iter().all(|c| c.status != Status::Fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_near_its_threads_cpu_is_warned_about() {
        let f = |share| Figures {
            phase: "stress".into(),
            client: Some((share, 2)),
            ..Figures::default()
        };
        let status = |share| {
            audit(&[f(share)])
                .into_iter()
                .find(|c| c.check == "client_not_the_bottleneck")
                .unwrap()
        };
        assert_eq!(status(0.3).status, Status::Pass);
        let busy = status(0.93);
        assert_eq!(busy.status, Status::Warn);
        assert!(
            busy.detail.contains("93 % of its 2 thread(s)") && busy.detail.contains("--threads")
        );
        // A claim (no client figures) gets no such check.
        assert!(
            audit(&[Figures::default()])
                .iter()
                .all(|c| c.check != "client_not_the_bottleneck")
        );
    }

    #[test]
    fn the_published_figures_are_caught() {
        // 870 tok/s at 6.8 % and 1,515 tok/s at 16.2 %, Llama-3-8B on an
        // A40: the MFUs do not scale with the throughputs.
        let f = |phase: &str, tps: f64, mfu: f64| Figures {
            phase: phase.into(),
            tokens_per_s: tps,
            mfu: Some(mfu),
            ..Figures::default()
        };
        let checks = audit(&[f("bentoml", 870.0, 0.068), f("lmdeploy", 1515.0, 0.162)]);
        let scale = checks
            .iter()
            .find(|c| c.check == "mfu_scales_with_throughput")
            .unwrap();
        assert_eq!(scale.status, Status::Fail, "{}", scale.detail);
        assert!(!all_passed(&checks));
        // Consistent figures pass.
        let checks = audit(&[f("a", 870.0, 0.0934), f("b", 1515.0, 0.1626)]);
        assert!(all_passed(&checks), "{checks:?}");
    }

    #[test]
    fn a_claimed_mfu_is_checked_against_its_throughput() {
        let f = Figures {
            phase: "bentoml".into(),
            tokens_per_s: 870.0,
            mfu: Some(0.068),
            mfu_expected: Some(0.0934),
            ..Figures::default()
        };
        let checks = audit(&[f]);
        let c = checks
            .iter()
            .find(|c| c.check == "mfu_matches_throughput")
            .unwrap();
        assert_eq!(c.status, Status::Fail, "{}", c.detail);
    }

    #[test]
    fn the_energy_counter_is_checked_against_the_power_gauge() {
        let f = |counter: f64, updates: usize| Figures {
            phase: "stress".into(),
            tokens_per_s: 100.0,
            energy_counter_j: Some(counter),
            energy_power_j: Some(1000.0),
            counter_updates: updates,
            ..Figures::default()
        };
        let status = |f: Figures| {
            audit(&[f])
                .into_iter()
                .find(|c| c.check == "energy_counter_matches_power")
                .unwrap()
                .status
        };
        assert_eq!(status(f(1050.0, 10)), Status::Pass);
        assert_eq!(status(f(2000.0, 10)), Status::Fail);
        // A counter that barely moved is not judged.
        assert_eq!(status(f(2000.0, 2)), Status::Skipped);
    }

    #[test]
    fn littles_law_and_energy() {
        let good = Figures {
            phase: "stress".into(),
            tokens_per_s: 1000.0,
            tokens_per_joule: Some(4.0),
            avg_power_w: Some(250.0),
            concurrency: Some(50),
            avg_in_flight: Some(49.8),
            completions_per_s: Some(10.0),
            mean_e2e_s: Some(4.97),
            ..Figures::default()
        };
        assert!(
            audit(std::slice::from_ref(&good))
                .iter()
                .all(|c| c.status != Status::Fail)
        );
        let bad = Figures {
            tokens_per_joule: Some(2.0),
            avg_in_flight: Some(30.0),
            ..good
        };
        let checks = audit(&[bad]);
        // Energy and Little's law (30 in flight against 10/s x 4.97 s)
        // fail; 30 of 50 in flight is a warning, not a failure.
        let count = |s: Status| checks.iter().filter(|c| c.status == s).count();
        assert_eq!((count(Status::Fail), count(Status::Warn)), (2, 1));
        assert!(all_passed(&checks[checks.len() - 1..]));
    }

    #[test]
    fn a_runs_own_littles_law_allows_for_requests_cut_by_the_window() {
        // 4 in flight over a 4 s window; 99 completed at 0.16 s each
        // (λW = 3.96). The longest request in flight was 3.4 s: four such,
        // cut by the window's end, may add up to 3.4 in flight.
        let own = |inflight: f64| Figures {
            phase: "stress".into(),
            concurrency: Some(4),
            avg_in_flight: Some(inflight),
            completions_per_s: Some(99.0 / 4.0),
            mean_e2e_s: Some(0.16),
            window_s: Some(4.0),
            longest_e2e_s: Some(3.4),
            ..Figures::default()
        };
        let little = |f: Figures| audit(&[f]).into_iter().find(|c| c.check == "littles_law");
        assert_eq!(little(own(3.99)).unwrap().status, Status::Pass);
        // A long window leaves no such room: 600 s, the same cut requests.
        let long = Figures {
            window_s: Some(600.0),
            ..own(2.0)
        };
        assert_eq!(little(long).unwrap().status, Status::Fail);
    }
}
