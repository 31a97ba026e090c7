//! When an open-loop phase sends its requests: absolute offsets from the
//! phase start, computed before the phase begins so that a slow client can
//! fall behind the schedule (and say by how much) but never compress it
//! into a burst to catch up.

use rand::{Rng, SeedableRng, rngs::StdRng};
use rand_distr::{Distribution, Exp, Gamma};

use crate::plan::Arrival;

/// Send offsets (ns from the phase start) for `rate` requests per second
/// over `duration_ns`.
pub fn schedule(
    arrival: Arrival,
    rate: f64,
    burstiness: f64,
    duration_ns: u64,
    seed: u64,
) -> Vec<u64> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mean_gap_s = 1.0 / rate;
    let gap = move |rng: &mut StdRng| -> f64 {
        match arrival {
            Arrival::Constant => mean_gap_s,
            // Exponential gaps: a Poisson process.
            Arrival::Poisson => Exp::new(rate).map(|d| d.sample(rng)).unwrap_or(mean_gap_s),
            // Gamma gaps with shape k and mean 1/rate: k = 1 is Poisson,
            // k < 1 clusters arrivals into bursts.
            Arrival::Gamma => Gamma::new(burstiness, mean_gap_s / burstiness)
                .map(|d| d.sample(rng))
                .unwrap_or(mean_gap_s),
        }
    };
    let mut out = Vec::with_capacity((rate * duration_ns as f64 / 1e9 * 1.2) as usize + 1);
    if arrival == Arrival::Constant {
        // Exactly i / rate: no drift from adding up rounded gaps.
        let n = (duration_ns as f64 / 1e9 * rate).ceil() as u64;
        return (0..n)
            .map(|i| (i as f64 * 1e9 / rate).round() as u64)
            .filter(|t| *t < duration_ns)
            .collect();
    }
    // A random phase starts after its first gap, like every later request.
    let mut t = gap(&mut rng);
    while (t * 1e9) < duration_ns as f64 {
        out.push((t * 1e9) as u64);
        t += gap(&mut rng);
    }
    // Keeps the generator's state independent of how many gaps were drawn.
    let _ = rng.random::<u64>();
    out
}

/// The Kolmogorov–Smirnov statistic of `gaps` (seconds) against an
/// exponential distribution with `rate`: the largest distance between the
/// empirical and the theoretical CDF.
pub fn ks_exponential(gaps: &[f64], rate: f64) -> f64 {
    let mut sorted = gaps.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len() as f64;
    sorted
        .iter()
        .enumerate()
        .map(|(i, x)| {
            // No mass below zero (a reordered pair's gap can be negative).
            let cdf = (1.0 - (-rate * x).exp()).max(0.0);
            let above = (i as f64 + 1.0) / n - cdf;
            let below = cdf - i as f64 / n;
            above.max(below)
        })
        .fold(0.0, f64::max)
}

/// The KS critical value at significance 0.01 for `n` samples.
pub fn ks_critical_1pct(n: usize) -> f64 {
    1.628 / (n as f64).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poisson_gaps_are_exponential_with_the_asked_rate() {
        let sends = schedule(Arrival::Poisson, 200.0, 1.0, 60_000_000_000, 7);
        let rate = sends.len() as f64 / 60.0;
        assert!((rate / 200.0 - 1.0).abs() < 0.03, "rate {rate}");
        let gaps: Vec<f64> = sends
            .windows(2)
            .map(|w| (w[1] - w[0]) as f64 / 1e9)
            .collect();
        let d = ks_exponential(&gaps, 200.0);
        assert!(d < ks_critical_1pct(gaps.len()), "KS {d}");
    }

    #[test]
    fn a_negative_gap_counts_as_zero_not_below_the_cdf() {
        // Two requests that reached the server out of order.
        let with_negative = ks_exponential(&[-0.004, 0.01, 0.02], 100.0);
        let with_zero = ks_exponential(&[0.0, 0.01, 0.02], 100.0);
        assert!(
            (with_negative - with_zero).abs() < 1e-12,
            "{with_negative} {with_zero}"
        );
    }

    #[test]
    fn constant_and_gamma_keep_the_mean_rate() {
        let c = schedule(Arrival::Constant, 10.0, 1.0, 10_000_000_000, 1);
        assert_eq!(c.len(), 100);
        assert_eq!(c[1] - c[0], 100_000_000);
        let g = schedule(Arrival::Gamma, 100.0, 0.25, 100_000_000_000, 3);
        let rate = g.len() as f64 / 100.0;
        assert!((rate / 100.0 - 1.0).abs() < 0.1, "rate {rate}");
        // Burstier than Poisson: the gaps' coefficient of variation is
        // 1/sqrt(shape) = 2.
        let gaps: Vec<f64> = g.windows(2).map(|w| (w[1] - w[0]) as f64).collect();
        let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
        let sd = (gaps.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / gaps.len() as f64).sqrt();
        assert!((sd / mean - 2.0).abs() < 0.3, "cv {}", sd / mean);
    }

    #[test]
    fn the_same_seed_gives_the_same_schedule() {
        let a = schedule(Arrival::Poisson, 5.0, 1.0, 10_000_000_000, 9);
        let b = schedule(Arrival::Poisson, 5.0, 1.0, 10_000_000_000, 9);
        assert_eq!(a, b);
        assert!(a.windows(2).all(|w| w[0] <= w[1]));
    }
}
