//! The A/B harness the overhead benchmarks share. Invariant: a claim
//! ("within X %", "at most Y×") is said to hold only when the 95 %
//! bootstrap interval of its median lies inside the bound; an interval
//! that straddles the bound says "not established", never "holds".
//!
//! How a run is laid out:
//! * one warm-up round first (every configuration once), discarded;
//! * then at least [`MIN_ROUNDS`] rounds, each running every
//!   configuration once, the order alternating (forward, then reversed),
//!   so no configuration always runs right after the same other one and
//!   slow drifts of the machine hit all of them alike;
//! * where the benchmark may use at least four CPUs, it and everything it
//!   starts are pinned, from the start of `main`, to those other than CPU 0
//!   (which takes most interrupts and housekeeping); with fewer the run
//!   says it is not pinned. A benchmark that places its own processes
//!   (`taskset`) says so itself.
//!
//! A comparison is a per-round statistic (most often one configuration's
//! figure over another's from the same round, seconds apart); its median
//! over the rounds and a percentile bootstrap interval of that median
//! (10,000 resamples of the rounds, a fixed seed so a run's JSON can be
//! recomputed) are reported with the number of rounds.
//!
//! Every benchmark built on it takes `--rounds N` and `--only a,b` to
//! narrow a run while investigating; such a run prints its table but
//! writes no JSON, as its figures cannot stand for the benchmark.

use std::{collections::BTreeMap, fmt::Write as _, path::PathBuf};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

/// The fewest rounds a run needs to write its JSON.
pub const MIN_ROUNDS: usize = 10;
/// Bootstrap resamples per interval.
pub const RESAMPLES: usize = 10_000;
/// The bootstrap's seed, written into every result.
pub const SEED: u64 = 0x6761_7073_636f_7065;

/// What a claim must satisfy.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Bound {
    AtMost(f64),
    AtLeast(f64),
    /// Inside [lo, hi] ("within 1 %" of a ratio: 0.99, 1.01).
    Within(f64, f64),
    /// Reported without a target.
    None,
}

/// What a comparison's interval says about its bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The whole interval is inside the bound.
    Holds,
    /// The whole interval is outside it.
    Fails,
    /// The interval straddles the bound: more rounds, or a quieter machine.
    NotEstablished,
    /// No bound was given.
    Reported,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Holds => "holds",
            Verdict::Fails => "fails",
            Verdict::NotEstablished => "not established",
            Verdict::Reported => "reported",
        }
    }
}

/// Judges an interval against a bound.
pub fn verdict(interval: (f64, f64), bound: Bound) -> Verdict {
    let (lo, hi) = interval;
    match bound {
        Bound::None => Verdict::Reported,
        Bound::AtMost(b) if hi <= b => Verdict::Holds,
        Bound::AtMost(b) if lo > b => Verdict::Fails,
        Bound::AtLeast(b) if lo >= b => Verdict::Holds,
        Bound::AtLeast(b) if hi < b => Verdict::Fails,
        Bound::Within(a, b) if a <= lo && hi <= b => Verdict::Holds,
        Bound::Within(a, b) if hi < a || lo > b => Verdict::Fails,
        _ => Verdict::NotEstablished,
    }
}

/// The median (the mean of the middle two for an even count). NaNs sort last.
pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// SplitMix64: small, seedable, good enough to resample rounds.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        // Multiply-shift: unbiased enough for n far below 2^32.
        (((self.next() >> 32) * n as u64) >> 32) as usize
    }
}

/// The percentile bootstrap's 95 % interval of the median of `values`.
pub fn bootstrap_median_interval(values: &[f64], resamples: usize, seed: u64) -> (f64, f64) {
    if values.is_empty() || resamples == 0 {
        return (f64::NAN, f64::NAN);
    }
    let mut rng = SplitMix(seed);
    let mut resample = vec![0.0; values.len()];
    let mut medians: Vec<f64> = (0..resamples)
        .map(|_| {
            for slot in resample.iter_mut() {
                *slot = values[rng.below(values.len())];
            }
            median(&resample)
        })
        .collect();
    medians.sort_by(f64::total_cmp);
    // Nearest rank over the resamples: the 2.5th and 97.5th percentiles
    // leave as many medians below the one as above the other.
    let at = |q: f64| medians[((q * (resamples - 1) as f64).round() as usize).min(resamples - 1)];
    (at(0.025), at(0.975))
}

/// One claim: a per-round statistic, its median, interval and verdict.
#[derive(Clone, Debug)]
pub struct Comparison {
    pub name: String,
    pub per_round: Vec<f64>,
    pub median: f64,
    pub interval: (f64, f64),
    pub bound: Bound,
    pub verdict: Verdict,
}

impl Comparison {
    pub fn new(name: impl Into<String>, per_round: Vec<f64>, bound: Bound) -> Self {
        let finite: Vec<f64> = per_round
            .iter()
            .copied()
            .filter(|v| v.is_finite())
            .collect();
        let median = median(&finite);
        let interval = bootstrap_median_interval(&finite, RESAMPLES, SEED);
        // A claim resting on fewer rounds than were run (a round whose
        // statistic was not finite: a zero denominator) is not made.
        let verdict = if bound == Bound::None {
            Verdict::Reported
        } else if finite.len() < 2 || finite.len() < per_round.len() {
            Verdict::NotEstablished
        } else {
            verdict(interval, bound)
        };
        Comparison {
            name: name.into(),
            per_round,
            median,
            interval,
            bound,
            verdict,
        }
    }

    fn to_json(&self) -> Value {
        let bound = match self.bound {
            Bound::AtMost(b) => json!({ "at_most": b }),
            Bound::AtLeast(b) => json!({ "at_least": b }),
            Bound::Within(a, b) => json!({ "at_least": a, "at_most": b }),
            Bound::None => Value::Null,
        };
        json!({
            "name": self.name,
            "median": finite_or_null(self.median),
            "interval_95": [finite_or_null(self.interval.0), finite_or_null(self.interval.1)],
            "rounds": self.per_round.iter().filter(|v| v.is_finite()).count(),
            "per_round": self.per_round.iter().map(|v| finite_or_null(*v)).collect::<Vec<_>>(),
            "bound": bound,
            "verdict": self.verdict.as_str(),
        })
    }
}

fn finite_or_null(v: f64) -> Value {
    if v.is_finite() { json!(v) } else { Value::Null }
}

/// The run's plan, from the benchmark's configurations and its flags.
pub struct Harness {
    pub benchmark: &'static str,
    pub configs: Vec<&'static str>,
    pub rounds: usize,
    /// Every configuration and the full round count: the run may write JSON.
    pub full: bool,
}

impl Harness {
    /// Reads `--rounds N` and `--only a,b` from the command line;
    /// `default_rounds` is at least [`MIN_ROUNDS`].
    pub fn from_args(
        benchmark: &'static str,
        configs: &[&'static str],
        default_rounds: usize,
    ) -> anyhow::Result<Self> {
        let args: Vec<String> = std::env::args().skip(1).collect();
        // Before the benchmark starts anything, so all of it inherits.
        pin();
        Self::from(benchmark, configs, default_rounds, &args)
    }

    pub fn from(
        benchmark: &'static str,
        configs: &[&'static str],
        default_rounds: usize,
        args: &[String],
    ) -> anyhow::Result<Self> {
        let flag = |name: &str| {
            args.iter()
                .position(|a| a == name)
                .map(|i| args.get(i + 1).context(format!("{name} needs a value")))
                .transpose()
        };
        let rounds = match flag("--rounds")? {
            Some(r) => r
                .parse::<usize>()
                .ok()
                .filter(|r| *r >= 1)
                .with_context(|| format!("--rounds {r}: give a whole number of rounds, at least 1 ({MIN_ROUNDS} or more for a result)"))?,
            None => default_rounds.max(MIN_ROUNDS),
        };
        let only: Vec<&'static str> = match flag("--only")? {
            Some(list) => {
                let mut chosen = Vec::new();
                for name in list.split(',') {
                    match configs.iter().find(|c| **c == name) {
                        Some(c) if chosen.contains(c) => {}
                        Some(c) => chosen.push(*c),
                        None => bail!(
                            "--only: unknown configuration {name:?}; choose among {}",
                            configs.join(",")
                        ),
                    }
                }
                chosen
            }
            None => configs.to_vec(),
        };
        let full = rounds >= MIN_ROUNDS && only.len() == configs.len();
        Ok(Harness {
            benchmark,
            configs: only,
            rounds,
            full,
        })
    }

    /// The order of one round: forward on even rounds, reversed on odd.
    pub fn order(&self, round: usize) -> Vec<&'static str> {
        let mut order = self.configs.clone();
        if round % 2 == 1 {
            order.reverse();
        }
        order
    }

    /// Runs the warm-up round (round 0, discarded), then every round;
    /// `measure(config, round)` returns the configuration's figure.
    pub fn run(
        &mut self,
        unit: &str,
        mut measure: impl FnMut(&'static str, usize) -> anyhow::Result<f64>,
    ) -> anyhow::Result<Samples> {
        for config in self.order(0) {
            let v = measure(config, 0).with_context(|| format!("warm-up, {config}"))?;
            eprintln!("warm-up  {config:<24} {v:12.3} {unit} (discarded)");
        }
        let mut values: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
        for round in 1..=self.rounds {
            for config in self.order(round) {
                let v =
                    measure(config, round).with_context(|| format!("round {round}, {config}"))?;
                eprintln!("round {round:<3} {config:<24} {v:12.3} {unit}");
                values.entry(config).or_default().push(v);
            }
        }
        Ok(Samples {
            unit: unit.to_string(),
            values,
        })
    }

    /// What the JSON says about how the run was laid out.
    pub fn describe(&self) -> Value {
        let p = pinning();
        json!({
            "rounds": self.rounds,
            "warm_up_rounds_discarded": 1,
            "order": "every configuration once a round, forward then reversed",
            "pinned_cpus": p.pinned,
            "cpus": p.cpus,
            "pinning": p.describe(),
            "interval": format!("95 % percentile bootstrap of the median, {RESAMPLES} resamples of the rounds, seed {SEED:#x}"),
            "claim_rule": "a bound holds only when the whole interval lies inside it",
        })
    }
}

/// Where the benchmark process runs (`pin`).
#[derive(Clone, Debug, Default)]
pub struct Pinning {
    /// CPUs the process was allowed when it started.
    pub cpus: usize,
    /// The CPUs it was pinned to, if it was.
    pub pinned: Option<Vec<usize>>,
}

impl Pinning {
    fn describe(&self) -> String {
        match &self.pinned {
            Some(c) => format!("pinned to CPUs {c:?} (all it may use but CPU 0)"),
            None if self.cpus < 4 => format!("not pinned: {} CPUs (pinning needs 4)", self.cpus),
            None => "not pinned: sched_setaffinity failed".to_string(),
        }
    }
}

static PINNING: std::sync::OnceLock<Pinning> = std::sync::OnceLock::new();

fn pinning() -> Pinning {
    PINNING.get().cloned().unwrap_or_else(|| Pinning {
        cpus: std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
        pinned: None,
    })
}

/// Pins the calling thread to the CPUs it may use other than CPU 0, when
/// it may use at least four. Call it first thing in `main`: threads and
/// processes started later inherit it (`Harness::from_args` does). Once
/// per process.
pub fn pin() -> Pinning {
    PINNING
        .get_or_init(|| {
            // SAFETY: zeroed cpu_set_t values, filled and read by libc.
            let allowed: Vec<usize> = unsafe {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0
                {
                    return Pinning::default();
                }
                (0..libc::CPU_SETSIZE as usize)
                    .filter(|c| libc::CPU_ISSET(*c, &set))
                    .collect()
            };
            let cpus = allowed.len();
            if cpus < 4 {
                return Pinning { cpus, pinned: None };
            }
            let chosen: Vec<usize> = allowed.into_iter().filter(|c| *c != 0).collect();
            // SAFETY: as above.
            let ok = unsafe {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                for cpu in &chosen {
                    libc::CPU_SET(*cpu, &mut set);
                }
                libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
            };
            Pinning {
                cpus,
                pinned: ok.then_some(chosen),
            }
        })
        .clone()
}

/// Each configuration's figure, one per round, in round order.
pub struct Samples {
    pub unit: String,
    pub values: BTreeMap<&'static str, Vec<f64>>,
}

impl Samples {
    pub fn rounds(&self) -> usize {
        self.values.values().map(Vec::len).min().unwrap_or(0)
    }

    /// `a`'s figure over `b`'s, round by round.
    pub fn ratio(&self, a: &str, b: &str) -> Vec<f64> {
        self.per_round(|r| r[a] / r[b])
    }

    /// Any statistic of one round's figures, round by round.
    pub fn per_round(&self, f: impl Fn(&BTreeMap<&str, f64>) -> f64) -> Vec<f64> {
        (0..self.rounds())
            .map(|i| {
                let round: BTreeMap<&str, f64> =
                    self.values.iter().map(|(k, v)| (*k, v[i])).collect();
                f(&round)
            })
            .collect()
    }

    pub fn median(&self, config: &str) -> f64 {
        self.values.get(config).map_or(f64::NAN, |v| median(v))
    }

    pub fn has(&self, config: &str) -> bool {
        self.values.contains_key(config)
    }
}

/// A benchmark's result: its samples, claims and anything else it measured.
pub struct Report<'a> {
    harness: &'a Harness,
    samples: &'a Samples,
    comparisons: Vec<Comparison>,
    extra: serde_json::Map<String, Value>,
}

impl<'a> Report<'a> {
    pub fn new(harness: &'a Harness, samples: &'a Samples) -> Self {
        Report {
            harness,
            samples,
            comparisons: Vec::new(),
            extra: serde_json::Map::new(),
        }
    }

    /// Adds a claim when every configuration it needs ran (`--only` may
    /// have left some out).
    pub fn compare(
        &mut self,
        name: &str,
        needs: &[&str],
        stat: impl Fn(&BTreeMap<&str, f64>) -> f64,
        bound: Bound,
    ) -> &mut Self {
        if needs.iter().all(|c| self.samples.has(c)) {
            self.comparisons
                .push(Comparison::new(name, self.samples.per_round(stat), bound));
        }
        self
    }

    /// Adds a claim computed elsewhere (from figures the harness did not take).
    pub fn add(&mut self, comparison: Comparison) -> &mut Self {
        self.comparisons.push(comparison);
        self
    }

    pub fn extra(&mut self, key: &str, value: Value) -> &mut Self {
        self.extra.insert(key.to_string(), value);
        self
    }

    pub fn comparisons(&self) -> &[Comparison] {
        &self.comparisons
    }

    pub fn to_json(&self) -> Value {
        let mut doc = serde_json::Map::new();
        doc.insert("benchmark".into(), json!(self.harness.benchmark));
        doc.insert("harness".into(), self.harness.describe());
        doc.insert("unit".into(), json!(self.samples.unit));
        doc.insert(
            "medians".into(),
            json!(
                self.samples
                    .values
                    .iter()
                    .map(|(k, v)| (*k, finite_or_null(median(v))))
                    .collect::<BTreeMap<_, _>>()
            ),
        );
        doc.insert("samples".into(), json!(self.samples.values));
        doc.insert(
            "comparisons".into(),
            Value::Array(self.comparisons.iter().map(Comparison::to_json).collect()),
        );
        for (k, v) in &self.extra {
            doc.insert(k.clone(), v.clone());
        }
        Value::Object(doc)
    }

    /// The one table a run prints.
    pub fn table(&self) -> String {
        let h = self.harness;
        let mut t = String::new();
        let _ = writeln!(
            t,
            "{}: {} rounds after 1 discarded warm-up, order alternating, {}",
            h.benchmark,
            self.samples.rounds(),
            h.describe()["pinning"].as_str().unwrap_or("")
        );
        let _ = writeln!(
            t,
            "{:<34} {:>14}",
            "configuration",
            format!("median {}", self.samples.unit)
        );
        for (k, v) in &self.samples.values {
            let _ = writeln!(t, "{k:<34} {:>14.3}", median(v));
        }
        if !self.comparisons.is_empty() {
            let _ = writeln!(
                t,
                "{:<34} {:>10} {:>22} {:>12}  verdict",
                "claim", "median", "95 % interval", "bound"
            );
            for c in &self.comparisons {
                let bound = match c.bound {
                    Bound::AtMost(b) => format!("<= {b}"),
                    Bound::AtLeast(b) => format!(">= {b}"),
                    Bound::Within(a, b) => format!("{a}..{b}"),
                    Bound::None => "-".into(),
                };
                let _ = writeln!(
                    t,
                    "{:<34} {:>10.4} {:>22} {:>12}  {}",
                    c.name,
                    c.median,
                    format!("[{:.4}, {:.4}]", c.interval.0, c.interval.1),
                    bound,
                    c.verdict.as_str()
                );
            }
        }
        t
    }

    /// Prints the table and, for a full run, writes
    /// `bench/results/<benchmark>.json`; returns the path written.
    pub fn finish(&self) -> anyhow::Result<Option<PathBuf>> {
        print!("{}", self.table());
        write(self.harness.benchmark, &self.to_json(), self.harness.full)
    }
}

/// Writes `bench/results/<name>.json` when `full`; otherwise says why not.
pub fn write(name: &str, doc: &Value, full: bool) -> anyhow::Result<Option<PathBuf>> {
    if !full {
        println!(
            "not written: a result needs every configuration (and server) and at least {MIN_ROUNDS} rounds"
        );
        return Ok(None);
    }
    let dir = gapscope_testkit::repo_root().join("bench/results");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_string_pretty(doc)?)?;
    println!("wrote {}", path.display());
    Ok(Some(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn verdicts_need_the_whole_interval() {
        assert_eq!(verdict((0.97, 0.99), Bound::AtMost(1.0)), Verdict::Holds);
        assert_eq!(
            verdict((0.99, 1.01), Bound::AtMost(1.0)),
            Verdict::NotEstablished
        );
        assert_eq!(verdict((1.01, 1.02), Bound::AtMost(1.0)), Verdict::Fails);
        assert_eq!(verdict((0.98, 0.99), Bound::AtLeast(0.98)), Verdict::Holds);
        assert_eq!(
            verdict((0.97, 0.99), Bound::AtLeast(0.98)),
            Verdict::NotEstablished
        );
        assert_eq!(verdict((0.90, 0.97), Bound::AtLeast(0.98)), Verdict::Fails);
        assert_eq!(verdict((0.0, 9.0), Bound::None), Verdict::Reported);
        let within = Bound::Within(0.99, 1.01);
        assert_eq!(verdict((0.995, 1.004), within), Verdict::Holds);
        assert_eq!(verdict((0.98, 1.0), within), Verdict::NotEstablished);
        assert_eq!(verdict((1.02, 1.03), within), Verdict::Fails);
    }

    #[test]
    fn a_round_without_a_figure_leaves_the_claim_unmade() {
        let mut v = vec![0.9; 10];
        v[3] = f64::INFINITY;
        let c = Comparison::new("x", v, Bound::AtMost(1.0));
        assert_eq!(c.verdict, Verdict::NotEstablished);
    }

    #[test]
    fn identical_rounds_give_a_point_interval() {
        let c = Comparison::new("same", vec![1.5; 12], Bound::AtMost(1.5));
        assert_eq!(c.median, 1.5);
        assert_eq!(c.interval, (1.5, 1.5));
        assert_eq!(c.verdict, Verdict::Holds);
    }

    #[test]
    fn the_interval_lies_within_the_data_and_around_the_median() {
        let v: Vec<f64> = (0..15).map(|i| 1.0 + f64::from(i) * 0.01).collect();
        let (lo, hi) = bootstrap_median_interval(&v, RESAMPLES, SEED);
        assert!(lo >= 1.0 && hi <= 1.14, "{lo} {hi}");
        assert!(lo < median(&v) && median(&v) < hi, "{lo} {hi}");
        // The same seed gives the same interval.
        assert_eq!((lo, hi), bootstrap_median_interval(&v, RESAMPLES, SEED));
    }

    /// Drawn from a known distribution, the interval covers the true
    /// median in about 95 % of runs (the percentile bootstrap of a median
    /// from 15 rounds is a little liberal or conservative, not far off).
    #[test]
    fn the_interval_covers_the_true_median_about_95_percent_of_the_time() {
        let mut rng = SplitMix(7);
        let mut uniform = || (rng.next() >> 11) as f64 / (1u64 << 53) as f64;
        let trials: u32 = 400;
        let mut covered = 0;
        for t in 0..trials {
            // Exponential with median ln 2: skewed, as timing noise is.
            let v: Vec<f64> = (0..15).map(|_| -(1.0 - uniform()).ln()).collect();
            let (lo, hi) = bootstrap_median_interval(&v, 2_000, u64::from(t));
            if lo <= std::f64::consts::LN_2 && std::f64::consts::LN_2 <= hi {
                covered += 1;
            }
        }
        let share = f64::from(covered) / f64::from(trials);
        assert!((0.88..=0.995).contains(&share), "coverage {share}");
    }

    #[test]
    fn rounds_alternate_their_order() {
        let h = Harness::from("t", &["a", "b", "c"], 10, &[]).unwrap();
        assert_eq!(h.order(0), ["a", "b", "c"]);
        assert_eq!(h.order(1), ["c", "b", "a"]);
        assert_eq!(h.order(2), ["a", "b", "c"]);
    }

    #[test]
    fn flags_narrow_a_run_and_a_narrow_run_writes_nothing() {
        let args = |s: &str| s.split_whitespace().map(String::from).collect::<Vec<_>>();
        let h = Harness::from("t", &["a", "b"], 3, &[]).unwrap();
        assert_eq!(h.rounds, MIN_ROUNDS, "fewer than the minimum are raised");
        assert!(h.full);
        let h = Harness::from("t", &["a", "b"], 10, &args("--rounds 3")).unwrap();
        assert!(!h.full);
        let h = Harness::from("t", &["a", "b"], 10, &args("--only b")).unwrap();
        assert_eq!(h.configs, ["b"]);
        assert!(!h.full);
        let h = Harness::from("t", &["a", "b"], 10, &args("--only a,a")).unwrap();
        assert_eq!(h.configs, ["a"], "a configuration named twice runs once");
        assert!(!h.full);
        let e = Harness::from("t", &["a", "b"], 10, &args("--only c"))
            .err()
            .unwrap();
        assert!(e.to_string().contains("choose among a,b"), "{e}");
        let e = Harness::from("t", &["a"], 10, &args("--rounds x"))
            .err()
            .unwrap();
        assert!(e.to_string().contains("--rounds x"), "{e}");
        let e = Harness::from("t", &["a"], 10, &args("--rounds"))
            .err()
            .unwrap();
        assert!(e.to_string().contains("--rounds needs a value"), "{e}");
    }

    #[test]
    fn a_run_measures_every_round_and_discards_the_warm_up() {
        let mut h = Harness::from("t", &["a", "b"], 10, &[]).unwrap();
        let mut calls = Vec::new();
        let s = h
            .run("x", |c, r| {
                calls.push((c.to_string(), r));
                Ok(if c == "a" { 1.0 } else { 2.0 } + r as f64)
            })
            .unwrap();
        assert_eq!(calls.len(), 2 * 11);
        assert_eq!(calls[0], ("a".into(), 0));
        assert_eq!(calls[2], ("b".into(), 1), "round 1 runs reversed");
        assert_eq!(s.rounds(), 10);
        assert_eq!(s.values["a"][0], 2.0, "round 0 was discarded");
        let mut r = Report::new(&h, &s);
        r.compare("b-a", &["a", "b"], |r| r["b"] - r["a"], Bound::AtMost(1.0));
        r.compare("missing", &["c"], |_| 0.0, Bound::None);
        assert_eq!(r.comparisons().len(), 1);
        assert_eq!(r.comparisons()[0].verdict, Verdict::Holds);
        let doc = r.to_json();
        assert_eq!(doc["comparisons"][0]["rounds"], 10);
        assert_eq!(doc["harness"]["warm_up_rounds_discarded"], 1);
        assert!(r.table().contains("b-a"));
    }
}
